# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Host tuning modules on real kernel objects: a veth pair in network
namespaces created here (erbt-*), the host's /proc/irq and cpufreq sysfs.
Needs root (CI runs as root); nothing here skips."""

import os
import re
import shlex
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'unit', 'tune'))
from erb_tune_modrun import read, run_module  # noqa: E402

NS_A, NS_B = 'erbt-tune-a', 'erbt-tune-b'
DEV_A, DEV_B = 'erbt-tv0', 'erbt-tv1'


def sh(*cmd, ns=None, check=True):
    if ns:
        cmd = ('ip', 'netns', 'exec', ns) + cmd
    return subprocess.run(cmd, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)


def in_ns(ns, path):
    """Read a sysfs file as seen from inside the namespace."""
    return sh('cat', path, ns=ns).stdout.strip()


def cleanup():
    for ns in (NS_A, NS_B):
        sh('ip', 'netns', 'del', ns, check=False)


@pytest.fixture
def veth():
    assert os.geteuid() == 0, 'the veth tests need root (CI runs them as root)'
    cleanup()
    sh('ip', 'netns', 'add', NS_A)
    sh('ip', 'netns', 'add', NS_B)
    try:
        sh('ip', 'link', 'add', DEV_A, 'netns', NS_A, 'type', 'veth', 'peer', 'name', DEV_B, 'netns', NS_B)
        sh('ip', 'link', 'set', DEV_A, 'up', ns=NS_A)
        sh('ip', 'link', 'set', DEV_B, 'up', ns=NS_B)
        yield
    finally:
        cleanup()


def q(name, queue, attr):
    return '/sys/class/net/%s/queues/%s/%s' % (name, queue, attr)


def channels(ns, name):
    out = sh('ethtool', '-l', name, ns=ns).stdout
    cur = out.split('Current hardware settings:')[1]
    return dict((k.lower(), v) for k, v in re.findall(r'^(RX|TX):\s+(\S+)', cur, re.M))


def test_veth_channels_xps_rps_persist_restore(veth, tmp_path):
    state = str(tmp_path / 'state')
    before_ch = channels(NS_A, DEV_A)
    assert before_ch == {'rx': '1', 'tx': '1'}
    ch = dict(name=DEV_A, rx=2, tx=2, state_dir=state)

    r = run_module('nic_channels', ch, check=True, netns=NS_A, fakes=False)
    assert r['changed'] and channels(NS_A, DEV_A) == before_ch, r         # check mode changes nothing
    r = run_module('nic_channels', ch, netns=NS_A, fakes=False)
    assert r['_rc'] == 0 and r['changed'] and channels(NS_A, DEV_A) == {'rx': '2', 'tx': '2'}, r
    assert run_module('nic_channels', ch, netns=NS_A, fakes=False)['changed'] is False

    keys = [('rx-0', 'rps_cpus'), ('rx-1', 'rps_cpus'), ('tx-0', 'xps_cpus'), ('tx-1', 'xps_cpus')]
    before = [in_ns(NS_A, q(DEV_A, *k)) for k in keys]
    pa = dict(persist=True, udev_rules_dir=str(tmp_path / 'rules.d'),
              helper_path=str(tmp_path / 'sbin' / 'erb-tune-apply'), persist_dir=str(tmp_path / 'conf'),
              ifup_hook_dir=str(tmp_path / 'if-up.d'))
    xr = dict(name=DEV_A, rps_cpus=['1', '0'], xps_cpus=['0', '1'], state_dir=state, **pa)
    r = run_module('xps_rps', xr, check=True, netns=NS_A, fakes=False)
    assert r['changed'] and [in_ns(NS_A, q(DEV_A, *k)) for k in keys] == before, r
    assert not os.path.exists(pa['udev_rules_dir'])
    r = run_module('xps_rps', xr, netns=NS_A, fakes=False)
    assert r['changed'], r
    want = [int(in_ns(NS_A, q(DEV_A, *k)).replace(',', ''), 16) for k in keys]
    assert want == [2, 1, 1, 2]
    assert run_module('xps_rps', xr, netns=NS_A, fakes=False)['changed'] is False

    # bounce: link down/up keeps the masks; re-creating the queues (channel
    # change, as a driver reconfiguration or reload does) loses them
    sh('ip', 'link', 'set', DEV_A, 'down', ns=NS_A)
    sh('ip', 'link', 'set', DEV_A, 'up', ns=NS_A)
    assert [int(in_ns(NS_A, q(DEV_A, *k)), 16) for k in keys] == [2, 1, 1, 2]
    sh('ethtool', '-L', DEV_A, 'rx', '1', 'tx', '1', ns=NS_A)
    sh('ethtool', '-L', DEV_A, 'rx', '2', 'tx', '2', ns=NS_A)
    assert int(in_ns(NS_A, q(DEV_A, 'rx-1', 'rps_cpus')), 16) == 0
    assert int(in_ns(NS_A, q(DEV_A, 'tx-1', 'xps_cpus')), 16) == 0
    # what udev runs for the re-created queues
    rule = read(os.path.join(pa['udev_rules_dir'], '99-erb-xps-rps-%s.rules' % DEV_A))
    assert 'ACTION=="add", SUBSYSTEM=="queues", KERNELS=="%s"' % DEV_A in rule
    run = re.findall(r'RUN\+="([^"]+)"', rule)
    assert len(set(run)) == 1
    sh(*shlex.split(run[0]), ns=NS_A)
    assert [int(in_ns(NS_A, q(DEV_A, *k)), 16) for k in keys] == [2, 1, 1, 2]
    # the ifup hook does the same
    sh('ethtool', '-L', DEV_A, 'rx', '1', 'tx', '1', ns=NS_A)
    sh('ethtool', '-L', DEV_A, 'rx', '2', 'tx', '2', ns=NS_A)
    sh('env', 'IFACE=%s' % DEV_A, os.path.join(pa['ifup_hook_dir'], 'erb-xps-rps-%s' % DEV_A), ns=NS_A)
    assert [int(in_ns(NS_A, q(DEV_A, *k)), 16) for k in keys] == [2, 1, 1, 2]

    # restored gives back the exact previous values, then the channel counts
    r = run_module('xps_rps', dict(name=DEV_A, state='restored', state_dir=state), netns=NS_A, fakes=False)
    assert r['changed'], r
    assert [in_ns(NS_A, q(DEV_A, *k)) for k in keys] == before
    assert not os.listdir(pa['udev_rules_dir']) and not os.path.exists(pa['helper_path'])
    assert run_module('xps_rps', dict(name=DEV_A, state='restored', state_dir=state),
                      netns=NS_A, fakes=False)['changed'] is False
    r = run_module('nic_channels', dict(name=DEV_A, state='restored', state_dir=state), netns=NS_A, fakes=False)
    assert r['changed'] and channels(NS_A, DEV_A) == before_ch, r
    assert not os.listdir(os.path.join(state, 'tune'))


def test_veth_refusals(veth, tmp_path):
    state = str(tmp_path / 'state')
    r = run_module('nic_channels', dict(name=DEV_A, combined=2, state_dir=state), netns=NS_A, fakes=False)
    assert r.get('failed') and "no 'combined' channels" in r['msg'], r
    r = run_module('nic_channels', dict(name=DEV_A, rx=64, state_dir=state), netns=NS_A, fakes=False)
    assert r.get('failed') and 'exceeds the maximum' in r['msg'], r
    r = run_module('nic_rss', dict(name=DEV_A, equal=1, state_dir=state), netns=NS_A, fakes=False)
    assert r.get('failed') and 'no RSS indirection table' in r['msg'], r
    r = run_module('irq_affinity', dict(name=DEV_A, cpus='0', state_dir=state), netns=NS_A, fakes=False)
    assert r.get('failed') and 'no queue IRQs found' in r['msg'], r
    r = run_module('xps_rps', dict(name=DEV_A, xps_cpus=['0', '1'], state_dir=state), netns=NS_A, fakes=False)
    assert r.get('failed') and 'has 1 tx queues' in r['msg'], r
    assert not os.path.exists(os.path.join(state, 'tune')) or not os.listdir(os.path.join(state, 'tune'))


def host_queue_irq():
    """The first host interface whose queue IRQs the module recognises."""
    for name in sorted(os.listdir('/sys/class/net')):
        if not os.path.exists('/sys/class/net/%s/device' % name):
            continue
        r = run_module('irq_affinity', dict(name=name, cpus='0', state_dir='/nonexistent'), check=True, fakes=False)
        if r['_rc'] == 0 and r['irqs']:
            return name, r['irqs']
    raise AssertionError('no host NIC with recognisable queue IRQs in /proc/interrupts: this test needs a '
                         'machine with a multiqueue NIC driver (virtio_net, mlx5, ixgbe, i40e, ice, ena)')


def test_proc_irq_affinity_real(tmp_path):
    """Reads and writes /proc/irq of a real NIC queue IRQ, then restores it."""
    assert os.geteuid() == 0
    online = read('/sys/devices/system/cpu/online')
    name, irqs = host_queue_irq()
    orig = dict((i['irq'], read('/proc/irq/%d/smp_affinity_list' % i['irq'])) for i in irqs)
    last = int(re.split('[-,]', online)[-1])
    state = str(tmp_path / 'state')
    try:
        a = dict(name=name, cpus=str(last), state_dir=state)
        r = run_module('irq_affinity', a, fakes=False)
        assert r['_rc'] == 0, r
        for i in irqs:
            assert read('/proc/irq/%d/smp_affinity_list' % i['irq']) == str(last)
        assert r['changed'] == any(v != str(last) for v in orig.values())
        assert run_module('irq_affinity', a, fakes=False)['changed'] is False
        r = run_module('irq_affinity', dict(name=name, state='restored', state_dir=state), fakes=False)
        assert r['_rc'] == 0, r
        assert dict((irq, read('/proc/irq/%d/smp_affinity_list' % irq)) for irq in orig) == orig
    finally:
        for irq, v in orig.items():
            with open('/proc/irq/%d/smp_affinity_list' % irq, 'w') as f:
                f.write(v)


def test_cpu_governor_real_sysfs(tmp_path):
    state = str(tmp_path / 'state')
    r = run_module('cpu_governor', dict(governor='performance', state_dir=state), check=True, fakes=False)
    assert r['_rc'] == 0, r
    if not os.path.exists('/sys/devices/system/cpu/cpu0/cpufreq'):
        # this machine has no cpufreq: reported cleanly, fails only when required
        assert r['supported'] is False and r['changed'] is False
        r = run_module('cpu_governor', dict(governor='performance', required=True, state_dir=state),
                       fakes=False)
        assert r.get('failed') and 'cpufreq is not available' in r['msg'], r
    else:
        assert r['supported'] is True and 'performance' in r['available_governors']
