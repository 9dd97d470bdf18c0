# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""bench/chaos_cpu.py's accounting: CPU time and context switches of real tasks, grouped by
their network namespace and name, and the per-operation arithmetic of its table."""

import os
import subprocess
import sys
import time

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(REPO, 'bench'))
import chaos_cpu  # noqa: E402

SPIN = 'import time\nt = time.process_time()\nwhile time.process_time() - t < %s: pass\ntime.sleep(%s)\n'


@pytest.fixture
def netns():
    name = 'erb-tcpu%d' % os.getpid()
    subprocess.run(['ip', 'netns', 'add', name], check=True)
    try:
        yield name
    finally:
        subprocess.run(['ip', 'netns', 'del', name], check=False)


def test_cpu_of_a_task_in_the_client_namespace_is_the_clients(netns):
    cns = chaos_cpu.netns_inode('/run/netns/' + netns)
    here = chaos_cpu.netns_inode('/proc/self/ns/net')
    assert cns and here and cns != here
    # one process spinning 0.6 s inside the namespace, one outside (not counted)
    inside = subprocess.Popen(['ip', 'netns', 'exec', netns, sys.executable, '-c', SPIN % (0.6, 1.5)])
    outside = subprocess.Popen([sys.executable, '-c', SPIN % (0.6, 1.5)])
    try:
        time.sleep(0.3)   # both started (not yet spun much)
        t0 = chaos_cpu.tasks()
        time.sleep(1.0)   # both have spun their 0.6 s and sleep
        t1 = chaos_cpu.tasks()
    finally:
        inside.wait(10)
        outside.wait(10)
    got = chaos_cpu.usage(t0, t1, server_ns=here, client_ns=cns)
    assert set(got) == {'clients'}, got   # a task not named chaos-<client>: no kind
    cpu, switches = got['clients']
    assert 0.2 <= cpu <= 0.8, got
    assert switches >= 1, got


def test_server_tasks_are_grouped_by_name():
    assert chaos_cpu.group('redis-server', 7, 7, 9) == 'redis-server'
    assert chaos_cpu.group('erb-agent', 7, 7, 9) == 'erb-agent'
    assert chaos_cpu.group('python3', 7, 7, 9) is None       # another task in the server's namespace
    assert chaos_cpu.group('redis-server', 8, 7, 9) is None  # another host's Redis
    assert chaos_cpu.group('redis-cli', 9, 7, 9) == 'clients'


def test_per_operation_figures_and_medians():
    # 2 s at 1,000 ops/s: 2,000 ops
    r = chaos_cpu.per_op({'clients': [0.1, 10], 'erb-agent': [0.02, 500]},
                         {'user': 0.08, 'system': 0.04, 'softirq': 0.01, 'idle': 0.01}, 2.0, 1000)
    assert r['cpu_us'] == {'clients': 50.0, 'erb-agent': 10.0}
    assert r['switches'] == {'clients': 0.005, 'erb-agent': 0.25}
    assert r['machine_us'] == {'user': 40.0, 'system': 20.0, 'softirq': 5.0}
    assert r['busy_us'] == 65.0
    assert r['idle_share'] == pytest.approx(0.01 / 0.14, abs=1e-4)
    runs = [dict(r, ops_per_s=1000), dict(r, ops_per_s=3000, busy_us=75.0), dict(r, ops_per_s=2000, busy_us=70.0)]
    m = chaos_cpu.medians(runs)
    assert m['ops_per_s'] == 2000 and m['busy_us'] == 70.0 and m['cpu_us']['clients'] == 50.0
    text = chaos_cpu.table({'median': {'erb': dict(m, commands={'hit': 0.1, 'set_fast': 0.2, 'cmds_passed': 0.7}),
                                       'alone': dict(m, busy_us=60.0)}})
    assert '| CPU per op, busy (us) | 60.0 | 70.0 | +10.0 |' in text
    assert '| erb-agent: context switches per op | 0.250 | 0.250 | +0.000 |' in text
    assert 'answered in XDP 0.300' in text


def test_the_clients_cpu_per_kind_and_per_own_operation(netns):
    cns = chaos_cpu.netns_inode('/run/netns/' + netns)
    here = chaos_cpu.netns_inode('/proc/self/ns/net')
    named = 'import ctypes\nctypes.CDLL(None).prctl(15, b"chaos-pipe", 0, 0, 0)\n' + SPIN % (0.5, 1.5)
    p = subprocess.Popen(['ip', 'netns', 'exec', netns, sys.executable, '-c', named])
    try:
        time.sleep(0.3)
        t0 = chaos_cpu.tasks()
        time.sleep(1.0)
        t1 = chaos_cpu.tasks()
    finally:
        p.wait(10)
    got = chaos_cpu.usage(t0, t1, server_ns=here, client_ns=cns)
    assert set(got) == {'clients', 'clients:pipe'}, got
    assert got['clients'] == got['clients:pipe']
    # 1,000 pipe ops/s over 2 s: CPU seconds / 2,000 ops
    cost = chaos_cpu.own_op_costs(got, 2.0, {'pipe': 1000, 'py': 500})
    assert set(cost) == {'pipe'}
    assert cost['pipe'] == pytest.approx(got['clients:pipe'][0] / 2000 * 1e6, rel=0.01)
    assert chaos_cpu.client_kind('chaos-py3') == 'py' and chaos_cpu.client_kind('redis-cli') == 'cli'
    assert chaos_cpu.client_kind('python3') is None
