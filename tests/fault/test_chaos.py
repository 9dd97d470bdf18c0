# -*- coding: utf-8 -*-
"""Chaos test: ERB under segment loss, duplication and reordering, side by side with Redis
alone under the very same faults, in one run.

Fleet host 1 (erb-r1) gets ERB the default way (playbooks/deploy.yml: GET answers, the SET
fast path and the I/O agent); host 2 (erb-r2) is Redis alone. The fault harness
(fault_harness.py) impairs both client links identically. For each fault mix, the chaos
workload (chaos_workload.py: redis-py clients, a pipelining client and redis-cli, each
modelling every reply of its own keys) runs against both hosts at the same time for
ERB_CHAOS_SECONDS (default 20); then the faults stop, ERB's I/O path catches up and every
key is compared with Redis over its unix socket.

Per mix, ERB must show: no wrong reply, no error, no lost acknowledged write, no request
slower than Redis alone's slowest x 2 + one RTO (200 ms, Linux's minimum), and at least
Redis alone's throughput. Redis alone must show no wrong reply, error or lost write either
(else the workload or its model is wrong). Results go to the test output and to
tests/output/chaos/ (one JSON per mix and table.md).

Run it alone:  flock /tmp/erb-heavy.lock .venv/bin/python -m pytest tests/fault/test_chaos.py -s
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from erb_conftest import REPO, netns_run, wait_for
from fault_harness import Faults, nstat_values

sys.path.insert(0, str(REPO / 'tests' / 'integration'))
from erb_itest import ErbAttachment, RespConn  # noqa: E402
from erb_settest import seqs  # noqa: E402

pytestmark = [pytest.mark.fleet, pytest.mark.bpf, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / 'chaos_workload.py'
OUT = REPO / 'tests' / 'output' / 'chaos'
SECONDS = float(os.environ.get('ERB_CHAOS_SECONDS', '20'))
RATE = float(os.environ.get('ERB_CHAOS_RATE', '0.02'))
RTO = 0.2  # Linux's TCP_RTO_MIN: one retransmission timeout on a sub-millisecond path

MIXES = {
    'loss': dict(c2s={'loss': RATE}, s2c={'loss': RATE}),
    'dup': dict(c2s={'dup': RATE}, s2c={'dup': RATE}),
    'reorder': dict(c2s={'reorder': RATE}, s2c={'reorder': RATE}),
    'all': dict(c2s={'loss': RATE, 'dup': RATE, 'reorder': RATE},
                s2c={'loss': RATE, 'dup': RATE, 'reorder': RATE}),
}
# fault counters each mix must have moved on both hosts (else it tested nothing)
EXPECT = {'loss': ('dropped',), 'dup': ('duplicated',), 'reorder': ('detoured', 'returned'),
          'all': ('dropped', 'duplicated', 'detoured', 'returned')}
RESULTS = {}


def host_nstat(h):
    return {h.ns: nstat_values(h.ns), h.client_ns: nstat_values(h.client_ns)}


def delta(after, before):
    return {ns: {k: v - before[ns].get(k, 0) for k, v in vals.items() if v - before[ns].get(k, 0)}
            for ns, vals in after.items()}


def dict_delta(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if isinstance(v, int) and v - before.get(k, 0)}


def fault_delta(after, before):
    return {i: {d: dict_delta(after[i][d], before[i][d]) for d in after[i]} for i in after}


def erb_seqs(att):
    """(write_seq, applied_seq) of ERB's SET fast path."""
    return seqs(att)


def has_xdp(h):
    link = json.loads(h.run(['ip', '-j', '-d', 'link', 'show', h.iface]).stdout)[0]
    return bool(link.get('xdp'))


@pytest.fixture(scope='module')
def chaos(fleet, ansible_playbook):
    erb, alone = fleet.hosts[0], fleet.hosts[1]
    if has_xdp(alone):  # left by another test: this one must be Redis alone
        rb = ansible_playbook('rollback.yml', limit=alone.name)
        assert rb.rc == 0, rb.output[-4000:]
    dep = ansible_playbook('deploy.yml', limit=erb.name)
    assert dep.rc == 0, 'deploy.yml on %s failed:\n%s' % (erb.name, dep.output[-6000:])
    assert has_xdp(erb) and not has_xdp(alone)
    att = ErbAttachment(erb)
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        with Faults([erb.index, alone.index]) as faults:
            yield erb, alone, att, faults
    finally:
        try:
            info = att.info()
            print('\nerb.booster.info (%s) at the end: counters %s' % (erb.name, json.dumps(info.get('counters'))))
        except Exception as e:  # printed, the rollback still runs
            print('erb.booster.info failed: %s' % e)
        write_table()
        rb = ansible_playbook('rollback.yml', limit=erb.name)
        assert rb.rc == 0, rb.output[-4000:]


def run_workloads(hosts, mix, seconds):
    """The chaos workload against each host at once; {host index: its JSON}."""
    procs, outs = {}, {}
    stamp = '%d' % time.time()
    for n, h in enumerate(hosts):
        out = OUT / ('%s-%s.workload.json' % (mix, h.name))
        if out.exists():
            out.unlink()
        outs[h.index] = out
        procs[h.index] = subprocess.Popen(
            ['ip', 'netns', 'exec', h.client_ns, sys.executable, str(WORKLOAD), '--host', h.server_ip,
             '--prefix', 'chaos:%s:%s' % (mix, stamp), '--seconds', str(seconds), '--seed', str(n + 1),
             '--out', str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    res = {}
    for i, p in procs.items():
        try:
            text, _ = p.communicate(timeout=seconds + 120)
        except subprocess.TimeoutExpired:
            p.kill()
            text, _ = p.communicate()
        assert p.returncode == 0 and outs[i].exists(), \
            'chaos workload against host %d failed (rc %s):\n%s' % (i, p.returncode, text[-4000:])
        res[i] = json.loads(outs[i].read_text())
    return res


def compare_with_redis(h, model):
    """Keys whose value in Redis (unix socket) is not one the model allows: lost or wrong writes."""
    c = RespConn.unix(h.socket)
    bad = []
    try:
        for key, cands in model.items():
            r = c.cmd('GET', key)
            if r.startswith(b'$-1'):
                v = None
            else:
                v = r.split(b'\r\n', 1)[1][:-2].decode()
            if v not in cands:
                bad.append({'key': key, 'redis': v, 'model': cands})
    finally:
        c.close()
    return bad


def totals(w):
    cl = w['clients'].values()
    slowest = max(cl, key=lambda c: c['slowest'])
    return {'ops': sum(c['ops'] for c in cl), 'requests': sum(c['requests'] for c in cl),
            'wrong': sum(c['wrong'] for c in cl), 'errors': sum(c['errors'] for c in cl),
            'slowest': max(c['slowest'] for c in cl), 'slowest_what': slowest['slowest_what'],
            'hung': w['hung'], 'seconds': w['seconds']}


def details(w, what):
    out = []
    for name, c in w['clients'].items():
        for d in c[what + '_details']:
            out.append(dict(d, client=name))
        if c.get('crash'):
            out.append({'client': name, 'crash': c['crash']})
    return out


def write_table():
    if not RESULTS:
        return
    lines = ['| mix | host | ops | req/s | wrong | errors | lost writes | slowest (s) | p99 (s) |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for mix, r in RESULTS.items():
        for label in ('alone', 'erb'):
            t = r[label]
            lines.append('| %s | %s | %d | %.0f | %d | %d | %d | %.3f | %s |' % (
                mix, 'Redis alone' if label == 'alone' else 'ERB', t['ops'], t['requests'] / t['seconds'],
                t['wrong'], t['errors'], t['lost'], t['slowest'], t['p99']))
    text = '\n'.join(lines) + '\n'
    (OUT / 'table.md').write_text(text)
    print('\n' + text)


@pytest.mark.parametrize('mix', list(MIXES))
def test_chaos(chaos, mix):
    erb, alone, att, faults = chaos
    hosts = (erb, alone)
    faults.set()
    f0, s0 = faults.stats(), att.stats()
    n0 = {}
    for h in hosts:
        n0.update(host_nstat(h))
    faults.set(**MIXES[mix])
    try:
        w = run_workloads(hosts, mix, SECONDS)
    finally:
        faults.set()
    f1, s1 = faults.stats(), att.stats()
    n1 = {}
    for h in hosts:
        n1.update(host_nstat(h))
    applied = True
    try:
        wait_for(lambda: (lambda ws: ws[0] == ws[1])(erb_seqs(att)), timeout=30, interval=0.05,
                 what='ERB to apply every acknowledged SET')
    except AssertionError:
        applied = False
    lost = {h.index: compare_with_redis(h, w[h.index]['model']) for h in hosts}
    t = {h.index: totals(w[h.index]) for h in hosts}
    for h in hosts:
        cl = w[h.index]['clients'].values()
        t[h.index]['lost'] = len(lost[h.index])
        t[h.index]['p99'] = max((c['p99'] or 0) for c in cl)
    te, ta = t[erb.index], t[alone.index]
    fd = fault_delta(f1, f0)
    sd = dict_delta(s1, s0)
    nd = delta(n1, n0)
    RESULTS[mix] = {'erb': te, 'alone': ta}
    report = {'mix': mix, 'faults': MIXES[mix], 'seconds': SECONDS, 'erb': te, 'alone': ta,
              'erb_wrong': details(w[erb.index], 'wrong'), 'erb_errors': details(w[erb.index], 'error'),
              'alone_wrong': details(w[alone.index], 'wrong'), 'alone_errors': details(w[alone.index], 'error'),
              'lost': lost, 'applied': applied, 'erb_seqs': erb_seqs(att), 'fault_counters': fd,
              'erb_counters': sd, 'nstat': nd,
              'per_client': {i: {n: {k: v for k, v in c.items() if not k.endswith('_details')}
                                 for n, c in w[i]['clients'].items()} for i in w}}
    (OUT / ('%s.json' % mix)).write_text(json.dumps(report, indent=1, default=str))
    print('\n=== chaos mix %s (%s each way, %.0f s) ===' % (mix, MIXES[mix], SECONDS))
    for label, x in (('Redis alone', ta), ('ERB', te)):
        print('%-11s ops %6d  req/s %6.0f  wrong %d  errors %d  lost %d  slowest %.3f s (%s)  p99 %.4f'
              % (label, x['ops'], x['requests'] / x['seconds'], x['wrong'], x['errors'], x['lost'],
                 x['slowest'], x['slowest_what'], x['p99']))
    print('fault counters: %s' % json.dumps(fd))
    print('ERB counters (%s, this mix): %s' % (erb.name, json.dumps(sd)))
    for ns in sorted(nd):
        print('nstat -az %s (this mix): %s' % (ns, ' '.join('%s=%d' % kv for kv in sorted(nd[ns].items()))))
    for d in report['erb_wrong'][:10] + report['erb_errors'][:10]:
        print('ERB: %s' % json.dumps(d))

    problems = []
    for i, h in ((erb.index, erb), (alone.index, alone)):
        for what in EXPECT[mix]:
            for d in ('c2s', 's2c'):
                if not fd[i][d].get(what):
                    problems.append('harness: %s %s %s did not move on %s' % (mix, d, what, h.client_ns))
    if not sd.get('set_fast') or not sd.get('hit'):
        problems.append('ERB answered no SET (%s) or no GET (%s) in XDP: this mix did not test it'
                        % (sd.get('set_fast'), sd.get('hit')))
    for label, x, i in (('Redis alone', ta, alone.index), ('ERB', te, erb.index)):
        if x['wrong']:
            problems.append('%s: %d wrong replies, first: %s' % (label, x['wrong'],
                                                                  details(w[i], 'wrong')[:3]))
        if x['errors']:
            problems.append('%s: %d failed requests, first: %s' % (label, x['errors'],
                                                                    details(w[i], 'error')[:3]))
        if x['lost']:
            problems.append('%s: %d keys differ from the model in Redis (lost or wrong writes), first: %s'
                            % (label, x['lost'], lost[i][:3]))
        if x['hung']:
            problems.append('%s: clients still hung at the end: %s' % (label, x['hung']))
    if not applied:
        problems.append('ERB: the I/O path did not apply every acknowledged SET within 30 s (%s)'
                        % (erb_seqs(att),))
    bound = 2 * ta['slowest'] + RTO
    if te['slowest'] > bound:
        problems.append('ERB: slowest request %.3f s (%s) > Redis alone slowest %.3f s x 2 + RTO = %.3f s'
                        % (te['slowest'], te['slowest_what'], ta['slowest'], bound))
    if te['ops'] < ta['ops']:
        problems.append('ERB: %d ops < Redis alone %d ops under the same faults' % (te['ops'], ta['ops']))
    assert not problems, 'chaos mix %s:\n- %s' % (mix, '\n- '.join(problems))
