# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""module_utils/erb_tune: notations, ethtool parsers on recorded outputs,
state file, rollback of partially applied changes."""

import json
import os
import subprocess
import sys

import pytest

from erb_tune_modrun import FIXTURES, channels, collections_dir, fake_bin

sys.path.insert(0, collections_dir())
from ansible_collections.erb.booster.plugins.module_utils import erb_tune as T  # noqa: E402


def fixture(name):
    with open(os.path.join(FIXTURES, 'ethtool', name)) as f:
        return f.read()


def test_cpulist_roundtrip():
    assert T.parse_cpulist('0-3,8,10-11') == [0, 1, 2, 3, 8, 10, 11]
    assert T.format_cpulist([11, 0, 1, 2, 3, 8, 10]) == '0-3,8,10-11'
    assert T.parse_cpulist('0-7:2/4') == [0, 1, 4, 5]
    assert T.parse_cpulist('') == []
    with pytest.raises(T.TuneError):
        T.parse_cpulist('3-1')
    with pytest.raises(T.TuneError):
        T.parse_cpulist('a')


def test_masks_in_kernel_notation():
    assert T.parse_mask('00000000,00000003') == 3
    assert T.format_mask(3) == '3'
    assert T.format_mask(0) == '0'
    assert T.format_mask(1 << 40) == '100,00000000'
    assert T.parse_mask(T.format_mask(1 << 40 | 5)) == 1 << 40 | 5
    assert T.mask_to_cpus(T.cpus_to_mask([0, 5, 33])) == [0, 5, 33]
    assert T.cpus_from_value(['0-1', 4], 'x') == [0, 1, 4]
    assert T.cpus_from_value('none', 'x') == []
    assert T.cpus_from_value(3, 'x') == [3]


@pytest.mark.parametrize('name,maxc,cur', [
    ('veth-l.txt', dict(rx=2, tx=2, other=None, combined=None), dict(rx=1, tx=1, other=None, combined=None)),
    ('virtio_net-l.txt', dict(rx=None, tx=None, other=None, combined=1),
     dict(rx=None, tx=None, other=None, combined=1)),
    ('mlx5_core-l.txt', dict(rx=None, tx=None, other=None, combined=63),
     dict(rx=None, tx=None, other=None, combined=8)),
    ('ixgbe-l.txt', dict(rx=None, tx=None, other=1, combined=63), dict(rx=None, tx=None, other=1, combined=12)),
])
def test_parse_channels_recorded(name, maxc, cur):
    c = T.parse_channels(fixture(name))
    assert c['max'] == maxc
    assert c['current'] == cur


def test_parse_channels_garbage():
    with pytest.raises(T.TuneError):
        T.parse_channels('netlink error: Operation not supported\n')


def test_parse_rxfh_recorded():
    x = T.parse_rxfh(fixture('mlx5_core-x.txt'))
    assert x['rings'] == 8 and x['table'] == [i % 8 for i in range(128)]
    x = T.parse_rxfh(fixture('i40e-x.txt'))
    assert x['rings'] == 16 and len(x['table']) == 512
    assert x['table'] == T.rss_fill_weights(512, [4, 2, 1, 1])
    x = T.parse_rxfh(fixture('virtio_net-x.txt'))
    assert x == {'rings': 1, 'table': []}


def test_rss_restore_args():
    assert T.rss_restore_args([i % 8 for i in range(128)], 8) == ['default']
    assert T.rss_restore_args([i % 4 for i in range(128)], 8) == ['equal', '4']
    assert T.rss_restore_args(T.rss_fill_weights(512, [4, 2, 1, 1]), 16) == ['weight', '256', '128', '64', '64']
    assert T.rss_fill_weights(512, [256, 128, 64, 64]) == T.rss_fill_weights(512, [4, 2, 1, 1])
    odd = [i % 8 for i in range(128)]
    odd[5] = 7
    assert T.rss_restore_args(odd, 8) is None
    with pytest.raises(T.TuneError):
        T.rss_fill_weights(8, [5, 5])


def test_fake_ethtool_matches_recorded_output(tmp_path):
    """The test double prints exactly what the real ethtool printed here."""
    st = tmp_path / 'e.json'
    st.write_text(json.dumps({'ifaces': {
        'erbt-d1': {'driver': 'veth', 'channels': channels((2, 2, None, None), (1, 1, None, None))},
        'eth0': {'driver': 'virtio_net', 'channels': channels((None, None, None, 1), (None, None, None, 1))},
    }}))
    env = dict(os.environ, FAKE_ETHTOOL_STATE=str(st))
    for ifname, name in (('erbt-d1', 'veth-l.txt'), ('eth0', 'virtio_net-l.txt')):
        out = subprocess.run([os.path.join(fake_bin(), 'ethtool'), '-l', ifname], env=env,
                             stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
        assert out == fixture(name)


def test_state_file_keeps_oldest_value_and_is_atomic(tmp_path):
    sf = T.StateFile(str(tmp_path), 'xps_rps', 'eth0')
    assert sf.load() is None
    d = sf.new()
    T.merge_before(d, {'tx-0/xps_cpus': '0'})
    sf.save(d)
    d = sf.load()
    T.merge_before(d, {'tx-0/xps_cpus': '1', 'tx-1/xps_cpus': '0'})
    sf.save(d)
    assert sf.load()['before'] == {'tx-0/xps_cpus': '0', 'tx-1/xps_cpus': '0'}
    assert os.listdir(os.path.dirname(sf.path)) == ['xps_rps-eth0.json']   # no temp files left
    assert oct(os.stat(sf.path).st_mode & 0o777) == '0o600'
    with open(sf.path, 'w') as f:
        f.write('{broken')
    with pytest.raises(T.TuneError, match='corrupt'):
        sf.load()


class Box(object):
    def __init__(self, fail_on=None, fail_restore=None):
        self.v = {}
        self.fail_on = fail_on or set()
        self.fail_restore = fail_restore or set()

    def step(self, key, before, after):
        self.v[key] = before

        def apply(val):
            if val == after and key in self.fail_on:
                raise T.TuneError('refused')
            if val == before and key in self.fail_restore:
                raise OSError(5, 'Input/output error')
            self.v[key] = val
        return T.Step(key, before, after, apply, lambda: self.v[key])


def test_apply_steps_rolls_back_what_was_applied():
    b = Box(fail_on={'c'})
    steps = [b.step(k, 0, 1) for k in 'abcd']
    r = T.apply_steps(steps)
    assert not r['ok'] and r['failed']['key'] == 'c'
    assert r['rolled_back'] == ['b', 'a'] and r['rollback_failed'] == []
    assert b.v == {'a': 0, 'b': 0, 'c': 0, 'd': 0}
    assert 'nothing was changed' in T.failure_message('x', r)


def test_apply_steps_reports_failed_rollback():
    b = Box(fail_on={'c'}, fail_restore={'a'})
    r = T.apply_steps([b.step(k, 0, 1) for k in 'abcd'])
    assert r['rolled_back'] == ['b'] and r['rollback_failed'][0]['key'] == 'a'
    assert b.v['a'] == 1
    msg = T.failure_message('x', r)
    assert 'still changed' in msg and 'a (' in msg
