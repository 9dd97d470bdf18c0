# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nic_channels and nic_rss against the ethtool test double (driver models:
mlx5 combined channels, ixgbe, i40e, veth rx/tx, virtio without RSS)."""

import json
import sys

import pytest

from erb_tune_modrun import FakeHost, channels, collections_dir, run_module

sys.path.insert(0, collections_dir())
from ansible_collections.erb.booster.plugins.module_utils.erb_tune import rss_fill_weights  # noqa: E402

N = None


def mlx5(tmp_path, table=None):
    h = FakeHost(tmp_path)
    h.add_netdev('ens1f0np0', 'pci0000:3a/0000:3a:00.0/0000:3b:00.0', rx=8, tx=8, driver='mlx5_core',
                 channels=channels((N, N, N, 63), (N, N, N, 8)),
                 rss={'table': table or [i % 8 for i in range(128)], 'configured': False})
    return h


def calls(h):
    return h.ethtool()['calls']


def test_channels_max_then_idempotent_then_restore(tmp_path):
    h = mlx5(tmp_path)
    a = h.args(name='ens1f0np0', combined='max')
    r = run_module('nic_channels', a, env=h.env())
    assert r['_rc'] == 0 and r['changed'] is True, r
    assert r['diff'] == {'before': {'combined': 8}, 'after': {'combined': 63}}
    assert r['driver'] == 'mlx5_core'
    assert h.ethtool()['ifaces']['ens1f0np0']['channels']['current']['combined'] == 63
    sets = [c for c in calls(h) if c['argv'][0] == '-L']
    assert sets == [{'argv': ['-L', 'ens1f0np0', 'combined', '63'], 'LANG': 'C'}]
    assert all(c['LANG'] == 'C' for c in calls(h))
    # second run: nothing to do
    r = run_module('nic_channels', a, env=h.env())
    assert r['changed'] is False, r
    # a second change keeps the original before-value
    r = run_module('nic_channels', h.args(name='ens1f0np0', combined=16), env=h.env())
    assert r['changed'] is True
    with open(r['state_file']) as f:
        assert json.load(f)['before'] == {'combined': 8}
    r = run_module('nic_channels', h.args(name='ens1f0np0', state='restored'), env=h.env())
    assert r['changed'] is True and r['restored'] == ['combined'], r
    assert h.ethtool()['ifaces']['ens1f0np0']['channels']['current']['combined'] == 8
    assert h.state_files() == []
    r = run_module('nic_channels', h.args(name='ens1f0np0', state='restored'), env=h.env())
    assert r['changed'] is False and 'nothing to restore' in r['msg']


def test_channels_check_mode_changes_nothing(tmp_path):
    h = mlx5(tmp_path)
    r = run_module('nic_channels', h.args(name='ens1f0np0', combined=4), env=h.env(), check=True)
    assert r['changed'] is True and r['channels']['combined'] == 4
    assert h.ethtool()['ifaces']['ens1f0np0']['channels']['current']['combined'] == 8
    assert not [c for c in calls(h) if c['argv'][0] == '-L']
    assert h.state_files() == []


@pytest.mark.parametrize('args,msg', [
    (dict(rx=2), "no 'rx' channels"),
    (dict(combined=64), 'exceeds the maximum of 63'),
    (dict(combined='lots'), "integer or 'max'"),
    (dict(), 'nothing to set'),
])
def test_channels_bad_requests_fail_before_touching(tmp_path, args, msg):
    h = mlx5(tmp_path)
    r = run_module('nic_channels', h.args(name='ens1f0np0', **args), env=h.env())
    assert r.get('failed') and msg in r['msg'], r
    assert not [c for c in calls(h) if c['argv'][0] == '-L']


def test_channels_driver_refuses(tmp_path):
    h = mlx5(tmp_path)
    e = h.ethtool()
    e['ifaces']['ens1f0np0']['refuse'] = {'-L': 'netlink error: Device or resource busy'}
    h.set_ethtool(e)
    r = run_module('nic_channels', h.args(name='ens1f0np0', combined=4), env=h.env())
    assert r.get('failed') and 'Device or resource busy' in r['msg'] and 'Nothing was changed' in r['msg'], r
    assert 'XDP' in r['msg']
    assert h.state_files() == []     # the write-ahead state was withdrawn


def test_channels_refused_by_user_rss_table(tmp_path):
    h = mlx5(tmp_path)
    e = h.ethtool()
    e['ifaces']['ens1f0np0']['rss']['configured'] = True
    h.set_ethtool(e)
    r = run_module('nic_channels', h.args(name='ens1f0np0', combined=4), env=h.env())
    assert r.get('failed') and 'indirection table' in r['msg'] and 'nic_rss' in r['msg'], r


def test_channels_driver_applies_then_errors(tmp_path):
    """Half-applied: the driver changed the count but returned an error. The
    module says so and keeps the before-value for state=restored."""
    h = mlx5(tmp_path)
    e = h.ethtool()
    e['ifaces']['ens1f0np0']['apply_then_fail'] = ['-L']
    h.set_ethtool(e)
    r = run_module('nic_channels', h.args(name='ens1f0np0', combined=4), env=h.env())
    assert r.get('failed') and 'changed' in r['msg'] and 'state=restored' in r['msg'], r
    e = h.ethtool()
    e['ifaces']['ens1f0np0']['apply_then_fail'] = []
    h.set_ethtool(e)
    r = run_module('nic_channels', h.args(name='ens1f0np0', state='restored'), env=h.env())
    assert r['changed'] and h.ethtool()['ifaces']['ens1f0np0']['channels']['current']['combined'] == 8


def test_channels_driver_clamps(tmp_path):
    h = mlx5(tmp_path)
    e = h.ethtool()
    e['ifaces']['ens1f0np0']['clamp'] = {'combined': 12}
    h.set_ethtool(e)
    r = run_module('nic_channels', h.args(name='ens1f0np0', combined=16), env=h.env())
    assert r.get('failed') and 'now reports' in r['msg'] and 'put back' in r['msg'], r
    assert h.ethtool()['ifaces']['ens1f0np0']['channels']['current']['combined'] == 8


def test_channels_veth_rx_tx(tmp_path):
    h = FakeHost(tmp_path)
    h.add_netdev('veth0', rx=1, tx=1, channels=channels((2, 2, N, N), (1, 1, N, N)))
    r = run_module('nic_channels', h.args(name='veth0', rx=2, tx='max'), env=h.env())
    assert r['changed'] and r['channels'] == {'rx': 2, 'tx': 2, 'other': None, 'combined': None}, r
    r = run_module('nic_channels', h.args(name='veth0', combined=2), env=h.env())
    assert r.get('failed') and "no 'combined' channels" in r['msg']


def test_channels_unknown_interface(tmp_path):
    h = mlx5(tmp_path)
    r = run_module('nic_channels', h.args(name='nope0', combined=2), env=h.env())
    assert r.get('failed') and 'not found' in r['msg'] and 'namespace' in r['msg']


# ---------------------------------------------------------------- nic_rss

def rss_table(h, name):
    return h.ethtool()['ifaces'][name]['rss']['table']


def test_rss_equal_idempotent_restore_default(tmp_path):
    h = mlx5(tmp_path)
    a = h.args(name='ens1f0np0', equal=4)
    r = run_module('nic_rss', a, env=h.env())
    assert r['changed'] and r['command'] == ['-X', 'ens1f0np0', 'equal', '4'], r
    assert rss_table(h, 'ens1f0np0') == [i % 4 for i in range(128)]
    assert r['diff']['after']['table'] == r['table']
    assert run_module('nic_rss', a, env=h.env())['changed'] is False
    r = run_module('nic_rss', h.args(name='ens1f0np0', state='restored'), env=h.env())
    assert r['changed'] and r['command'] == ['-X', 'ens1f0np0', 'default'], r
    assert rss_table(h, 'ens1f0np0') == [i % 8 for i in range(128)]
    assert h.ethtool()['ifaces']['ens1f0np0']['rss']['configured'] is False
    assert h.state_files() == []


def test_rss_weights_on_i40e_restores_previous_weights(tmp_path):
    h = FakeHost(tmp_path)
    before = rss_fill_weights(512, [4, 2, 1, 1])
    h.add_netdev('eth2', 'pci0000:00/0000:00:02.0/0000:3d:00.0', rx=16, tx=16, driver='i40e',
                 channels=channels((N, N, 1, 64), (N, N, 1, 16)), rss={'table': before, 'configured': True})
    r = run_module('nic_rss', h.args(name='eth2', weights=[1, 1, 2]), env=h.env())
    assert r['changed'] and rss_table(h, 'eth2') == rss_fill_weights(512, [1, 1, 2]), r
    assert run_module('nic_rss', h.args(name='eth2', weights=[1, 1, 2]), env=h.env())['changed'] is False
    r = run_module('nic_rss', h.args(name='eth2', state='restored'), env=h.env())
    assert r['changed'] and rss_table(h, 'eth2') == before, r


def test_rss_check_mode(tmp_path):
    h = mlx5(tmp_path)
    r = run_module('nic_rss', h.args(name='ens1f0np0', equal=2), env=h.env(), check=True)
    assert r['changed'] and r['table'] == [i % 2 for i in range(128)]
    assert rss_table(h, 'ens1f0np0') == [i % 8 for i in range(128)]
    assert not [c for c in calls(h) if c['argv'][0] == '-X'] and h.state_files() == []


def test_rss_unreproducible_table_is_refused(tmp_path):
    t = [i % 8 for i in range(128)]
    t[3] = 0
    h = mlx5(tmp_path, table=t)
    r = run_module('nic_rss', h.args(name='ens1f0np0', equal=2), env=h.env())
    assert r.get('failed') and 'allow_unrestorable' in r['msg'], r
    assert rss_table(h, 'ens1f0np0') == t
    r = run_module('nic_rss', h.args(name='ens1f0np0', equal=2, allow_unrestorable=True), env=h.env())
    assert r['changed']
    r = run_module('nic_rss', h.args(name='ens1f0np0', state='restored'), env=h.env())
    assert r['changed'] and any('could not be reproduced' in w for w in r.get('warnings', [])), r


def test_rss_too_many_queues_and_unsupported_driver(tmp_path):
    h = mlx5(tmp_path)
    r = run_module('nic_rss', h.args(name='ens1f0np0', equal=9), env=h.env())
    assert r.get('failed') and '8 RX rings' in r['msg']
    h.add_netdev('eth0', 'pci0000:00/0000:00:03.0/virtio2', driver='virtio_net',
                 channels=channels((N, N, N, 1), (N, N, N, 1)), rss=None)
    r = run_module('nic_rss', h.args(name='eth0', equal=1), env=h.env())
    assert r.get('failed') and 'no RSS indirection table' in r['msg'], r


def test_rss_driver_refuses(tmp_path):
    h = mlx5(tmp_path)
    e = h.ethtool()
    e['ifaces']['ens1f0np0']['refuse'] = {'-X': 'Cannot set RX flow hash configuration: Operation not supported'}
    h.set_ethtool(e)
    r = run_module('nic_rss', h.args(name='ens1f0np0', equal=2), env=h.env())
    assert r.get('failed') and 'Nothing was changed' in r['msg'] and 'Operation not supported' in r['msg'], r
    assert h.state_files() == []
