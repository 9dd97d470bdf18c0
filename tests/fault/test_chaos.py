# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Chaos test: ERB under segment loss, duplication and reordering, side by side with Redis
alone under the very same faults, in one run.

Fleet host 1 (erb-r1) gets ERB the default way (playbooks/deploy.yml: GET answers, the SET
fast path and the I/O agent); host 2 (erb-r2) is Redis alone. The fault harness
(fault_harness.py) impairs both client links identically. For each fault mix, the chaos
workload (chaos_workload.py: redis-py clients, a pipelining client and redis-cli, each
modelling every reply of its own keys) runs against both hosts at the same time for
ERB_CHAOS_SECONDS (default 20); then the faults stop, ERB's I/O path catches up and every
key is compared with Redis over its unix socket.

Throughput is compared apart from that run, in alternating windows (ERB_CHAOS_WINDOWS rounds
of A B B A / B A A B, ERB_CHAOS_WINDOW seconds each, defaults 2 and 4): one host under the
workload at a time, both links under the mix's faults. At once, the two hosts' clients, Redis
servers and softirqs compete for this machine's two cores, and one window each is at the
mercy of its spells (Redis alone's ops in the duplication mix were 113,050 in one CI run and
256,716 in the one before); the medians of alternating windows are not.

Per mix, ERB must show: no wrong reply, no error, no lost acknowledged write (in every
window too), no request slower than Redis alone's slowest x 2 + one RTO (200 ms, Linux's
minimum), and a median of operations per window at least Redis alone's. Redis alone must
show no wrong reply, error or lost write either (else the workload or its model is wrong). Results go to the test output and to
tests/output/chaos/ (one JSON per mix and table.md; with ERB_CHAOS_PCAP=1 also a tcpdump
capture of each client end per mix).

test_chaos_heavy then runs every fault at once at 5% (ERB_CHAOS_HEAVY_RATE), both hosts at
once for ERB_CHAOS_HEAVY_SECONDS (default 15), with the same checks and no speed bound: more of
the rare recovery paths per second (tests/output/chaos/heavy.json).

Run it alone:  .venv/bin/python -m pytest tests/fault/test_chaos.py -s
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from erb_conftest import REPO, wait_for
from chaos_run import (RTO, details, lost_writes, mixes, redis_values, run_windows, run_workloads, stall_medians,
                       table, totals, window_medians, window_order)
from chaos_workload import MAX_DETAILS, SLOW_DETAIL
from fault_harness import Faults, nstat_values

sys.path.insert(0, str(REPO / 'tests' / 'integration'))
from erb_itest import deploy_default  # noqa: E402
from erb_settest import role_agent_file, seqs  # noqa: E402

pytestmark = [pytest.mark.fleet, pytest.mark.bpf, pytest.mark.slow]

OUT = REPO / 'tests' / 'output' / 'chaos'
SECONDS = float(os.environ.get('ERB_CHAOS_SECONDS', '20'))
WINDOW = float(os.environ.get('ERB_CHAOS_WINDOW', '4'))
WINDOWS = int(os.environ.get('ERB_CHAOS_WINDOWS', '2'))    # rounds of four windows
RATE = float(os.environ.get('ERB_CHAOS_RATE', '0.02'))
MIXES = mixes(RATE)
# fault counters each mix must have moved on both hosts, both ways (else it tested nothing)
EXPECT = {'loss': ('dropped',), 'dup': ('duplicated',), 'reorder': ('detoured', 'returned'),
          'all': ('dropped', 'duplicated', 'detoured', 'returned')}

PCAP = os.environ.get('ERB_CHAOS_PCAP') == '1'  # capture both hosts' client ends per mix

RESULTS = {}


def start_pcaps(hosts, mix):
    """tcpdump on each client end (erbc<i>, headers and 64 bytes of payload) into
    tests/output/chaos/<mix>-<client ns>.pcap. Receive taps run before the fault programs'
    ingress hook: segments the harness drops towards the client are in the capture too."""
    if not shutil.which('tcpdump'):
        pytest.fail('ERB_CHAOS_PCAP=1 needs tcpdump (apt-get install tcpdump)')
    procs = []
    for h in hosts:
        path = OUT / ('%s-%s.pcap' % (mix, h.client_ns))
        procs.append(subprocess.Popen(['ip', 'netns', 'exec', h.client_ns, 'tcpdump', '-i', h.client_iface, '-s', '128',
                                       '-U', '-w', str(path), 'tcp port 6379'],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1)
    dead = [p for p in procs if p.poll() is not None]
    if dead:
        stop_pcaps(procs)
        pytest.fail('tcpdump exited at once (rc %s): no capture for mix %s' % (dead[0].returncode, mix))
    return procs


def stop_pcaps(procs):
    for p in procs:
        p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def host_nstat(h):
    return {h.ns: nstat_values(h.ns), h.client_ns: nstat_values(h.client_ns)}


def nstat_delta(after, before):
    return {ns: {k: v - before[ns].get(k, 0) for k, v in vals.items() if v - before[ns].get(k, 0)}
            for ns, vals in after.items()}


def dict_delta(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if isinstance(v, int) and v - before.get(k, 0)}


def fault_delta(after, before):
    return {i: {d: dict_delta(after[i][d], before[i][d]) for d in after[i]} for i in after}


AGENT_KEYS = ('applied', 'parked', 'replayed', 'replay_expired', 'replay_copies', 'replay_dropped')


def agent_stats(h):
    """The stats the role's erb-agent writes on host h ({} when it has written none)."""
    try:
        return json.loads(role_agent_file(h, 'json').read_text())
    except (OSError, ValueError):
        return {}


@pytest.fixture(scope='module')
def chaos(fleet, ansible_playbook):
    erb, alone = fleet.hosts[0], fleet.hosts[1]
    if alone.has_xdp():  # left by another test: this one must be Redis alone
        rb = ansible_playbook('rollback.yml', limit=alone.name)
        assert rb.rc == 0, rb.output[-4000:]
    att = deploy_default(ansible_playbook, erb)
    assert not alone.has_xdp()
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        with Faults([erb.index, alone.index]) as faults:
            yield erb, alone, att, faults
    finally:
        try:
            info = att.info()
            print('\nerb.booster.bpf_info (%s) at the end: %s' % (erb.name, json.dumps(info.get('counters'))))
            print('INFO erbredis (%s) at the end: %s' % (erb.name, erb.redis_cli_local('INFO', 'erbredis')
                                                         .replace('\r\n', ' ').replace('\n', ' ')))
        except Exception as e:  # printed; the rollback still runs
            print('erb.booster.bpf_info failed: %s' % e)
        if RESULTS:
            (OUT / 'table.md').write_text(table(RESULTS))
            print('\n' + table(RESULTS))
        rb = ansible_playbook('rollback.yml', limit=erb.name)
        assert rb.rc == 0, rb.output[-4000:]


def wait_applied(att):
    """Whether ERB's I/O path applies every acknowledged SET within 30 s."""
    def caught_up():
        write_seq, applied_seq = seqs(att)
        return write_seq == applied_seq

    try:
        wait_for(caught_up, timeout=30, interval=0.05, what='ERB to apply every acknowledged SET')
        return True
    except AssertionError:
        return False


def compare_with_redis(hosts, w):
    """Every key of each host's workload read from its Redis (unix socket) against the model:
    ({index: totals with 'lost'}, {index: the keys that differ})."""
    t, lost = {}, {}
    for h in hosts:
        model = w[h.index]['model']
        lost[h.index] = lost_writes(model, redis_values(h.socket, model))
        t[h.index] = dict(totals(w[h.index]), lost=len(lost[h.index]))
    return t, lost


def run_problems(hosts, expect, fd, sd, t, w, lost, applied, att):
    """What fails a run of the workload on both hosts at once (hosts: ERB's, then Redis
    alone's): a fault counter of expect that did not move both ways on a host (the run tested
    nothing), the delay line overflowing, ERB answering no SET or no GET in XDP, on either side
    a wrong reply, a failed request, a key that differs from the model, a hung client, and ERB's
    I/O path not caught up (applied: wait_applied())."""
    problems = []
    for h in hosts:
        for what in expect:
            for d in ('c2s', 's2c'):
                if not fd[h.index][d].get(what):
                    problems.append('harness: %s %s did not move on %s' % (d, what, h.client_ns))
        if fd[h.index]['c2s'].get('overflow'):
            problems.append('harness: the delay line of %s overflowed (%d frames lost unplanned)'
                            % (h.client_ns, fd[h.index]['c2s']['overflow']))
    if not sd.get('set_fast') or not sd.get('hit'):
        problems.append('ERB answered no SET (%s) or no GET (%s) in XDP: this mix did not test it'
                        % (sd.get('set_fast'), sd.get('hit')))
    for label, h in (('Redis alone', hosts[1]), ('ERB', hosts[0])):
        x, i = t[h.index], h.index
        if x['wrong']:
            problems.append('%s: %d wrong replies, first: %s' % (label, x['wrong'], details(w[i], 'wrong')[:3]))
        if x['errors']:
            problems.append('%s: %d failed requests, first: %s' % (label, x['errors'], details(w[i], 'error')[:3]))
        if x['lost']:
            problems.append('%s: %d keys differ from the model in Redis (lost or wrong writes), first: %s'
                            % (label, x['lost'], lost[i][:3]))
        if x['hung']:
            problems.append('%s: clients still hung at the end: %s' % (label, x['hung']))
    if not applied:
        problems.append('ERB: the I/O path did not apply every acknowledged SET within 30 s (%s)' % (seqs(att),))
    return problems


# Every mix must show no wrong reply, no failed or unanswered request, no lost acknowledged
# write, and the I/O path caught up: those fail the test. The speed bounds (slowest request,
# throughput) end it as an expected failure when missed, with the figures in the reason.
SPEED = ('speed bounds not met yet: under loss and reordering the clients spend most of their time waiting out the '
         'faults (a lost segment\'s retransmission timeout, a reordered one\'s 10 ms hold: the windows\' stall '
         'share, printed above, is the same for both hosts), so ERB\'s saving, in the rest of the time, is a few '
         'per cent of the total and the medians\' order moves from run to run; where none dominates (duplication) '
         'the 2-vCPU machine is CPU-bound and every passed command pays the BPF parse and sequence mapping, which '
         'the ~0.25 commands per operation answered in XDP only just pay back (bench/README.md)')


def throughput_windows(erb, alone, mix):
    """The workload on one host at a time (chaos_run.run_windows), the faults of mix already set."""
    hosts = {'erb': (erb.index, erb.client_ns, erb.server_ip), 'alone': (alone.index, alone.client_ns, alone.server_ip)}
    return run_windows(hosts, mix, WINDOWS, WINDOW, OUT)


@pytest.mark.parametrize('mix', list(MIXES))
def test_chaos(chaos, mix):
    erb, alone, att, faults = chaos
    hosts = (erb, alone)
    faults.set()
    f0, s0, n0, a0 = faults.stats(), att.stats(), {}, agent_stats(erb)
    for h in hosts:
        n0.update(host_nstat(h))
    pcaps = start_pcaps(hosts, mix) if PCAP else []
    faults.set(**MIXES[mix])
    try:
        w = run_workloads([(h.index, h.client_ns, h.server_ip) for h in hosts], mix, SECONDS, OUT)
        f_mid = faults.stats()
        win = throughput_windows(erb, alone, mix)
    finally:
        faults.set()
        stop_pcaps(pcaps)
    f1, s1, n1 = faults.stats(), att.stats(), {}
    for h in hosts:
        n1.update(host_nstat(h))
    applied = wait_applied(att)
    t, lost = compare_with_redis(hosts, w)
    for label, h in (('erb', erb), ('alone', alone)):
        for x in win[label]:
            x['lost'] = lost_writes(x['model'], redis_values(h.socket, x['model']))[:3]
            del x['model']
    median = window_medians(win)
    stalls = stall_medians(win)
    te, ta = t[erb.index], t[alone.index]
    fd, sd, nd = fault_delta(f1, f0), dict_delta(s1, s0), nstat_delta(n1, n0)
    a1 = agent_stats(erb)
    # this mix's counts; the apply delays are the agent's since it started
    ad = dict(dict_delta({k: a1.get(k, 0) for k in AGENT_KEYS}, a0), apply_delay_us=a1.get('apply_delay_us'))
    RESULTS[mix] = {'erb': te, 'alone': ta, 'windows': {k: [x['ops'] for x in v] for k, v in win.items()},
                    'median': median}
    report = {'mix': mix, 'faults': MIXES[mix], 'seconds': SECONDS, 'erb': te, 'alone': ta,
              'windows': {'seconds': WINDOW, 'order': window_order(WINDOWS), 'erb': win['erb'],
                          'alone': win['alone'], 'median_ops': median, 'stalls': stalls,
                          'fault_counters': fault_delta(f1, f_mid)},
              'erb_wrong': details(w[erb.index], 'wrong'), 'erb_errors': details(w[erb.index], 'error'),
              'alone_wrong': details(w[alone.index], 'wrong'), 'alone_errors': details(w[alone.index], 'error'),
              'erb_slow': details(w[erb.index], 'slow'), 'alone_slow': details(w[alone.index], 'slow'),
              'lost': lost, 'applied': applied, 'erb_seqs': seqs(att), 'fault_counters': fd,
              'erb_counters': sd, 'agent': ad, 'nstat': nd,
              'per_client': {i: {n: {k: v for k, v in c.items() if not k.endswith('_details')}
                                 for n, c in w[i]['clients'].items()} for i in w}}
    (OUT / ('%s.json' % mix)).write_text(json.dumps(report, indent=1, default=str))
    print('\n=== chaos mix %s: %s, %.0f s ===' % (mix, json.dumps(MIXES[mix]), SECONDS))
    for label, x in (('Redis alone', ta), ('ERB', te)):
        print('%-11s ops %6d  req/s %6.0f  wrong %d  errors %d  lost %d  slowest %.3f s (%s)  p99 %.4f s'
              % (label, x['ops'], x['requests'] / x['seconds'], x['wrong'], x['errors'], x['lost'],
                 x['slowest'], x['slowest_what'], x['p99']))
    for label, x in (('Redis alone', ta), ('ERB', te)):
        print('%-11s latency [requests, seconds] by bucket: %s' % (label, json.dumps(x['slow'])))
    print('throughput windows (%g s each, one host at a time, order %s): Redis alone ops %s, median %.0f; '
          'ERB ops %s, median %.0f; ERB / Redis alone %.3f'
          % (WINDOW, ' '.join('A' if x == 'erb' else 'B' for x in window_order(WINDOWS)),
             [x['ops'] for x in win['alone']], median['alone'], [x['ops'] for x in win['erb']], median['erb'],
             median['erb'] / max(1, median['alone'])))
    print('in those windows, client time spent in requests over 10 ms (waiting out the faults), median: Redis '
          'alone %.1f%%, ERB %.1f%%; ops per client-second outside them: Redis alone %.0f, ERB %.0f (%.3f)'
          % (100 * stalls['alone']['stalled'], 100 * stalls['erb']['stalled'], stalls['alone']['ops_per_free_s'],
             stalls['erb']['ops_per_free_s'], stalls['erb']['ops_per_free_s'] / max(1, stalls['alone']['ops_per_free_s'])))
    print('fault counters (this mix): %s' % json.dumps(fd))
    print('ERB counters (%s, this mix): %s' % (erb.name, json.dumps(sd)))
    print('erb-agent (%s, this mix): %s' % (erb.name, json.dumps(ad)))
    for ns in sorted(nd):
        print('nstat -az %s (this mix, non-zero): %s' % (ns, ' '.join('%s=%d' % kv for kv in sorted(nd[ns].items()))))
    for label, i in (('Redis alone', alone.index), ('ERB', erb.index)):
        slow_list = sorted(details(w[i], 'slow'), key=lambda d: -d['after_s'])
        if slow_list:
            print('%s: %d requests over %.2f s (up to %d per client), slowest first: %s' % (
                label, len(slow_list), SLOW_DETAIL, MAX_DETAILS, json.dumps(slow_list[:8])))
    for d in report['erb_wrong'][:10] + report['erb_errors'][:10]:
        print('ERB: %s' % json.dumps(d))

    problems = run_problems(hosts, EXPECT[mix], fd, sd, t, w, lost, applied, att)
    for label, name in (('alone', 'Redis alone'), ('erb', 'ERB')):
        for n, x in enumerate(win[label]):
            if x['wrong'] or x['errors'] or x['lost'] or x['hung']:
                problems.append('%s, throughput window %d: %d wrong, %d failed, lost %s, hung %s; first: %s'
                                % (name, n, x['wrong'], x['errors'], x['lost'], x['hung'],
                                   (x['wrong_details'] + x['error_details'])[:3]))
    assert not problems, 'chaos mix %s:\n- %s' % (mix, '\n- '.join(problems))
    # the speed bounds ERB does not meet under every mix yet (see SPEED below)
    slow = []
    bound = 2 * ta['slowest'] + RTO
    if te['slowest'] > bound:
        slow.append('ERB: slowest request %.3f s (%s) > Redis alone slowest %.3f s x 2 + RTO = %.3f s'
                    % (te['slowest'], te['slowest_what'], ta['slowest'], bound))
    if median['erb'] < median['alone']:
        slow.append('ERB: median %.0f ops per %g s window < Redis alone %.0f under the same faults (ERB %s, '
                    'Redis alone %s)' % (median['erb'], WINDOW, median['alone'], [x['ops'] for x in win['erb']],
                                         [x['ops'] for x in win['alone']]))
    if slow:
        pytest.xfail('%s (issue 10): chaos mix %s: %s' % (SPEED, mix, '; '.join(slow)))


HEAVY_RATE = float(os.environ.get('ERB_CHAOS_HEAVY_RATE', '0.05'))
HEAVY_SECONDS = float(os.environ.get('ERB_CHAOS_HEAVY_SECONDS', '15'))


def test_chaos_heavy(chaos):
    """Loss, duplication and reordering at once at HEAVY_RATE (default 5%, each way), ERB and
    Redis alone side by side for HEAVY_SECONDS: correctness only, the checks of test_chaos's run
    (no wrong reply, no failed request, no lost write, no hung client, the I/O path caught up).
    The speed bounds are the issue's at 2% (test_chaos); at 5% a client spends most of its time
    in retransmission timeouts. What this adds is more of the rare paths per second: answers
    lost twice, segments held and parked, kept out-of-order bytes, late copies of a SYN."""
    erb, alone, att, faults = chaos
    hosts = (erb, alone)
    mix = mixes(HEAVY_RATE)['all']
    faults.set()
    f0, s0, a0 = faults.stats(), att.stats(), agent_stats(erb)
    faults.set(**mix)
    try:
        w = run_workloads([(h.index, h.client_ns, h.server_ip) for h in hosts], 'heavy', HEAVY_SECONDS, OUT)
    finally:
        faults.set()
    fd, sd = fault_delta(faults.stats(), f0), dict_delta(att.stats(), s0)
    applied = wait_applied(att)
    t, lost = compare_with_redis(hosts, w)
    a1 = agent_stats(erb)
    ad = dict_delta({k: a1.get(k, 0) for k in AGENT_KEYS}, a0)
    (OUT / 'heavy.json').write_text(json.dumps({
        'faults': mix, 'seconds': HEAVY_SECONDS, 'erb': t[erb.index], 'alone': t[alone.index],
        'erb_wrong': details(w[erb.index], 'wrong'), 'erb_errors': details(w[erb.index], 'error'),
        'lost': lost, 'applied': applied, 'erb_seqs': seqs(att), 'fault_counters': fd, 'erb_counters': sd,
        'agent': ad}, indent=1, default=str))
    print('\n=== chaos, every fault at %g%%: %s, %.0f s ===' % (100 * HEAVY_RATE, json.dumps(mix), HEAVY_SECONDS))
    for label, h in (('Redis alone', alone), ('ERB', erb)):
        x = t[h.index]
        print('%-11s ops %6d  wrong %d  errors %d  lost %d  slowest %.3f s (%s)  latency by bucket %s'
              % (label, x['ops'], x['wrong'], x['errors'], x['lost'], x['slowest'], x['slowest_what'],
                 json.dumps(x['slow'])))
    print('fault counters: %s' % json.dumps(fd))
    print('ERB counters (%s): %s' % (erb.name, json.dumps(sd)))
    print('erb-agent (%s): %s' % (erb.name, json.dumps(ad)))
    problems = run_problems(hosts, EXPECT['all'], fd, sd, t, w, lost, applied, att)
    assert not problems, 'chaos, every fault at %g%%:\n- %s' % (100 * HEAVY_RATE, '\n- '.join(problems))
