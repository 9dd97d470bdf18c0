# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""irq_affinity, xps_rps and cpu_governor against fake sysfs/procfs trees
modelled on real drivers (mlx5, ixgbe, i40e, virtio_net)."""

import os
import subprocess


from erb_tune_modrun import FakeHost, read, refuse_writes, run_module, write

MLX5 = 'pci0000:3a/0000:3a:00.0/0000:3b:00.0'
MLX5_B = 'pci0000:3a/0000:3a:00.0/0000:3b:00.1'


def mlx5_host(tmp_path):
    """Two mlx5 ports; queue IRQs mlx5_comp<N>@pci:<addr>, plus async/ctrl IRQs."""
    h = FakeHost(tmp_path, ncpus=8)
    h.add_netdev('ens1f0np0', MLX5, rx=4, tx=4, driver='mlx5_core')
    h.add_netdev('ens1f1np1', MLX5_B, rx=4, tx=4, driver='mlx5_core')
    h.add_irq(60, 'mlx5_async0@pci:0000:3b:00.0')
    for q in range(4):
        h.add_irq(61 + q, 'mlx5_comp%d@pci:0000:3b:00.0' % q)
    h.add_msi(MLX5, range(60, 65))
    h.add_irq(70, 'mlx5_async0@pci:0000:3b:00.1')
    for q in range(4):
        h.add_irq(71 + q, 'mlx5_comp%d@pci:0000:3b:00.1' % q)
    h.add_msi(MLX5_B, range(70, 75))
    return h


def irq_args(h, **kw):
    return h.args(procfs_root=h.proc, **kw)


def test_irq_mlx5_pins_only_its_queues(tmp_path):
    h = mlx5_host(tmp_path)
    a = irq_args(h, name='ens1f0np0', cpus='2-3')
    r = run_module('irq_affinity', a)
    assert r['_rc'] == 0 and r['changed'], r
    assert [(i['irq'], i['queue'], i['cpus']) for i in r['irqs']] == [
        (61, 0, '2'), (62, 1, '3'), (63, 2, '2'), (64, 3, '3')]
    assert [h.affinity(i) for i in (61, 62, 63, 64)] == ['2', '3', '2', '3']
    assert h.affinity(60) == '0-7'                                 # async IRQ untouched
    assert [h.affinity(i) for i in (71, 72, 73, 74)] == ['0-7'] * 4  # other port untouched
    assert r['diff']['before'] == dict(('mlx5_comp%d@pci:0000:3b:00.0' % q, '0-7') for q in range(4))
    assert run_module('irq_affinity', a)['changed'] is False
    r = run_module('irq_affinity', irq_args(h, name='ens1f0np0', state='restored'))
    assert r['changed'] and [h.affinity(i) for i in (61, 62, 63, 64)] == ['0-7'] * 4, r
    assert h.state_files() == []


def test_irq_check_mode_and_list_order(tmp_path):
    h = mlx5_host(tmp_path)
    r = run_module('irq_affinity', irq_args(h, name='ens1f0np0', cpus=[5, 1]), check=True)
    assert r['changed'] and [i['cpus'] for i in r['irqs']] == ['5', '1', '5', '1']
    assert [h.affinity(i) for i in (61, 62, 63, 64)] == ['0-7'] * 4 and h.state_files() == []


def test_irq_ixgbe_i40e_virtio_naming(tmp_path):
    h = FakeHost(tmp_path, ncpus=4)
    h.add_netdev('eth1', 'pci0000:00/0000:00:1c.0/0000:05:00.0', driver='ixgbe')
    h.add_irq(90, 'eth1')                          # link/other vector
    for q in range(2):
        h.add_irq(91 + q, 'eth1-TxRx-%d' % q)
    h.add_msi('pci0000:00/0000:00:1c.0/0000:05:00.0', range(90, 93))
    h.add_netdev('eth2', 'pci0000:00/0000:00:1d.0/0000:06:00.0', driver='i40e')
    h.add_irq(100, 'i40e-0000:06:00.0:misc')
    for q in range(2):
        h.add_irq(101 + q, 'i40e-eth2-TxRx-%d' % q)
    h.add_msi('pci0000:00/0000:00:1d.0/0000:06:00.0', range(100, 103))
    h.add_netdev('eth0', 'pci0000:00/0000:00:03.0/virtio2', driver='virtio_net')
    h.add_irq(37, 'virtio2-config')
    h.add_irq(38, 'virtio2-input.0')
    h.add_irq(39, 'virtio2-output.0')
    h.add_irq(40, 'virtio2-input.1')
    h.add_irq(41, 'virtio2-output.1')
    h.add_msi('pci0000:00/0000:00:03.0', range(37, 42))     # msi_irqs sits on the PCI parent
    r = run_module('irq_affinity', irq_args(h, name='eth1', cpus='1-2'))
    assert [(i['name'], i['cpus']) for i in r['irqs']] == [('eth1-TxRx-0', '1'), ('eth1-TxRx-1', '2')], r
    assert h.affinity(90) == '0-3'
    r = run_module('irq_affinity', irq_args(h, name='eth2', cpus='3'))
    assert [i['name'] for i in r['irqs']] == ['i40e-eth2-TxRx-0', 'i40e-eth2-TxRx-1'], r
    assert h.affinity(100) == '0-3'
    r = run_module('irq_affinity', irq_args(h, name='eth0', cpus='0-1'))
    assert sorted((i['irq'], i['cpus']) for i in r['irqs']) == [(38, '0'), (39, '0'), (40, '1'), (41, '1')], r
    assert h.affinity(37) == '0-3'


def test_irq_none_found_and_offline_cpu(tmp_path):
    h = mlx5_host(tmp_path)
    h.add_netdev('veth0')
    r = run_module('irq_affinity', irq_args(h, name='veth0', cpus='0'))
    assert r.get('failed') and 'no queue IRQs found' in r['msg'] and 'irq_pattern' in r['msg'], r
    r = run_module('irq_affinity', irq_args(h, name='ens1f0np0', cpus='0-9'))
    assert r.get('failed') and 'not online' in r['msg'], r


def test_irq_custom_pattern(tmp_path):
    h = FakeHost(tmp_path, ncpus=2)
    h.add_netdev('eth9', 'pci0000:00/0000:00:09.0', driver='foo')
    h.add_irq(50, 'foo-eth9-q0')
    h.add_irq(51, 'foo-eth9-q1')
    r = run_module('irq_affinity', irq_args(h, name='eth9', cpus='0-1', irq_pattern=r'foo-{ifname}-q(\d+)'))
    assert r['changed'] and h.affinity(50) == '0' and h.affinity(51) == '1', r


def test_irq_refused_write_rolls_back(tmp_path):
    """A kernel-managed IRQ refuses the write: the IRQs already moved go back."""
    h = mlx5_host(tmp_path)
    with refuse_writes(os.path.join(h.proc, 'irq/63/smp_affinity_list')):
        r = run_module('irq_affinity', irq_args(h, name='ens1f0np0', cpus='2-3'))
    assert r.get('failed') and 'mlx5_comp2@pci:0000:3b:00.0' in r['msg'], r
    assert r['rolled_back'] == ['mlx5_comp1@pci:0000:3b:00.0', 'mlx5_comp0@pci:0000:3b:00.0']
    assert 'nothing was changed' in r['msg']
    assert [h.affinity(i) for i in (61, 62, 63, 64)] == ['0-7'] * 4
    assert h.state_files() == []


def test_irq_restore_and_persist_survive_renumbering(tmp_path):
    """Driver reload: IRQs come back with other numbers and default affinity.
    The udev rule's command re-applies by name; restored finds them by name."""
    h = mlx5_host(tmp_path)
    rules = os.path.join(h.root, 'etc/udev/rules.d')
    pa = dict(persist=True, udev_rules_dir=rules, helper_path=os.path.join(h.root, 'sbin/erb-tune-apply'),
              persist_dir=os.path.join(h.root, 'etc/erb/tune'))
    r = run_module('irq_affinity', irq_args(h, name='ens1f0np0', cpus='4-7', **pa))
    assert r['changed'] and len(r['persist_files']) == 3, r
    assert run_module('irq_affinity', irq_args(h, name='ens1f0np0', cpus='4-7', **pa))['changed'] is False
    rule = read(os.path.join(rules, '99-erb-irq-affinity-ens1f0np0.rules'))
    assert 'ACTION=="add", SUBSYSTEM=="net", KERNEL=="ens1f0np0"' in rule
    cmd = rule.split('RUN+="')[1].split('"')[0].split()
    for q in range(4):
        h.move_irq(61 + q, 161 + q)
    assert [h.affinity(i) for i in (161, 162, 163, 164)] == ['0-7'] * 4
    subprocess.run(cmd, check=True, env=dict(os.environ, ERB_PROCFS_ROOT=h.proc))
    assert [h.affinity(i) for i in (161, 162, 163, 164)] == ['4', '5', '6', '7']
    r = run_module('irq_affinity', irq_args(h, name='ens1f0np0', state='restored'))
    assert r['changed'] and [h.affinity(i) for i in (161, 162, 163, 164)] == ['0-7'] * 4, r
    assert not os.path.exists(os.path.join(rules, '99-erb-irq-affinity-ens1f0np0.rules'))
    assert not os.path.exists(pa['helper_path']) and h.state_files() == []


def test_irqbalance_warn_and_stop(tmp_path):
    h = mlx5_host(tmp_path)
    proc_ib = os.path.join(h.proc, '4242')
    write(os.path.join(proc_ib, 'comm'), 'irqbalance\n')
    log = os.path.join(h.root, 'systemctl.log')
    env = {'FAKE_SYSTEMCTL_LOG': log, 'FAKE_IRQBALANCE_PROC': proc_ib}
    r = run_module('irq_affinity', irq_args(h, name='ens1f0np0', cpus='0', irqbalance='ignore'), check=True, env=env)
    assert r['irqbalance_running'] and not r.get('warnings')
    r = run_module('irq_affinity', irq_args(h, name='ens1f0np0', cpus='0', irqbalance='warn'), check=True, env=env)
    assert any('irqbalance is running' in w for w in r['warnings']), r
    r = run_module('irq_affinity', irq_args(h, name='ens1f0np0', cpus='0', irqbalance='stop'), env=env)
    assert r['changed'] and read(log) == 'stop irqbalance.service' and not os.path.exists(proc_ib), r
    r = run_module('irq_affinity', irq_args(h, name='ens1f0np0', state='restored'), env=env)
    assert r['changed'] and read(log).splitlines()[-1] == 'start irqbalance.service', r
    assert os.path.exists(proc_ib)


# ---------------------------------------------------------------- xps_rps

def masks(h, name, keys):
    return [read(h.queue_file(name, *k.split('/'))) for k in keys]


KEYS = ['rx-0/rps_cpus', 'rx-1/rps_cpus', 'tx-0/xps_cpus', 'tx-1/xps_cpus']


def test_xps_rps_present_idempotent_restore(tmp_path):
    h = FakeHost(tmp_path, ncpus=8)
    h.add_netdev('eth1', 'pci0000:00/0000:05:00.0', rx=2, tx=2, driver='ixgbe')
    write(h.queue_file('eth1', 'rx-1', 'rps_cpus'), '0f\n')
    a = h.args(name='eth1', rps_cpus='none', xps_cpus=['0', '1-2'])
    r = run_module('xps_rps', a, check=True)
    assert r['changed'] and masks(h, 'eth1', KEYS) == ['00', '0f', '00', '00'] and h.state_files() == []
    r = run_module('xps_rps', a)
    assert r['changed'] and r['diff'] == {'before': {'rx-1/rps_cpus': 'f', 'tx-0/xps_cpus': '0',
                                                     'tx-1/xps_cpus': '0'},
                                          'after': {'rx-1/rps_cpus': '0', 'tx-0/xps_cpus': '1',
                                                    'tx-1/xps_cpus': '6'}}, r
    # rx-0 already had no RPS CPU ('00'): masks are compared as CPU sets, not rewritten
    assert masks(h, 'eth1', KEYS) == ['00', '0', '1', '6']
    assert run_module('xps_rps', a)['changed'] is False
    r = run_module('xps_rps', h.args(name='eth1', state='restored'))
    assert r['changed'] and masks(h, 'eth1', KEYS) == ['00', 'f', '0', '0'] and h.state_files() == [], r


def test_xps_rps_errors(tmp_path):
    h = FakeHost(tmp_path, ncpus=2)
    h.add_netdev('eth1', 'pci0000:00/0000:05:00.0', rx=2, tx=2, driver='ixgbe')
    r = run_module('xps_rps', h.args(name='eth1', xps_cpus=['0', '1', '0']))
    assert r.get('failed') and 'has 2 tx queues' in r['msg'], r
    r = run_module('xps_rps', h.args(name='eth1', xps_cpus='3'))
    assert r.get('failed') and 'not online' in r['msg'], r
    r = run_module('xps_rps', h.args(name='eth1', rps_cpus='x'))
    assert r.get('failed') and 'invalid CPU list' in r['msg'], r


def test_xps_rps_partial_failure_rolls_back(tmp_path):
    h = FakeHost(tmp_path, ncpus=4)
    h.add_netdev('eth1', 'pci0000:00/0000:05:00.0', rx=2, tx=2, driver='ixgbe')
    with refuse_writes(h.queue_file('eth1', 'tx-1', 'xps_cpus')):
        r = run_module('xps_rps', h.args(name='eth1', rps_cpus='2-3', xps_cpus=['0', '1']))
    assert r.get('failed') and 'tx-1/xps_cpus' in r['msg'] and 'rolled back' in r['msg'], r
    assert r['rolled_back'] == ['tx-0/xps_cpus', 'rx-1/rps_cpus', 'rx-0/rps_cpus']
    assert masks(h, 'eth1', KEYS) == ['0', '0', '0', '00']
    assert h.state_files() == []


# ---------------------------------------------------------------- cpu_governor

def test_governor_present_idempotent_restore(tmp_path):
    h = FakeHost(tmp_path, ncpus=4)
    h.add_cpufreq(range(4))
    write(os.path.join(h.sys, 'devices/system/cpu/cpu3/cpufreq/scaling_governor'), 'powersave\n')
    r = run_module('cpu_governor', h.args(governor='performance', cpus='1-3'))
    assert r['changed'] and r['supported'] and r['diff']['before'] == {
        'cpu1': 'schedutil', 'cpu2': 'schedutil', 'cpu3': 'powersave'}, r
    assert [h.governor(c) for c in range(4)] == ['schedutil', 'performance', 'performance', 'performance']
    assert run_module('cpu_governor', h.args(governor='performance', cpus='1-3'))['changed'] is False
    r = run_module('cpu_governor', h.args(governor='performance'), check=True)
    assert r['changed'] and r['diff']['after'] == {'cpu0': 'performance'} and h.governor(0) == 'schedutil'
    r = run_module('cpu_governor', h.args(state='restored'))
    assert r['changed'] and [h.governor(c) for c in range(4)] == ['schedutil', 'schedutil', 'schedutil',
                                                                  'powersave'], r
    assert h.state_files() == []


def test_governor_unsupported_vs_required(tmp_path):
    h = FakeHost(tmp_path, ncpus=2)          # no cpufreq at all, like this test machine
    r = run_module('cpu_governor', h.args(governor='performance'))
    assert r['_rc'] == 0 and r['changed'] is False and r['supported'] is False, r
    assert r['unsupported_cpus'] == '0-1' and 'cpufreq is not available' in r['msg']
    r = run_module('cpu_governor', h.args(governor='performance', required=True))
    assert r.get('failed') and 'required: false' in r['msg'] and 'cpufreq driver' in r['msg'], r
    assert h.state_files() == []


def test_governor_not_available_and_refused(tmp_path):
    h = FakeHost(tmp_path, ncpus=4)
    h.add_cpufreq(range(4), governor='powersave', available='performance powersave')   # intel_pstate
    r = run_module('cpu_governor', h.args(governor='schedutil'))
    assert r.get('failed') and 'available: performance, powersave' in r['msg'], r
    with refuse_writes(os.path.join(h.sys, 'devices/system/cpu/cpu2/cpufreq/scaling_governor')):
        r = run_module('cpu_governor', h.args(governor='performance'))
    assert r.get('failed') and 'cpu2' in r['msg'] and r['rolled_back'] == ['cpu1', 'cpu0'], r
    assert [h.governor(c) for c in range(4)] == ['powersave'] * 4 and h.state_files() == []


def test_governor_missing_cpu(tmp_path):
    h = FakeHost(tmp_path, ncpus=2)
    h.add_cpufreq(range(2))
    r = run_module('cpu_governor', h.args(governor='performance', cpus=[0, 5]))
    assert r.get('failed') and 'do not exist' in r['msg'], r
