# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Running the chaos workload (chaos_workload.py) side by side on fleet hosts and judging
it; shared by tests/fault/test_chaos.py and bench/chaos.py.

- MIXES(rate): the fault mixes (loss only, duplication only, reordering only, all three).
- run_workloads(hosts, tag, seconds, out_dir): the workload against every host at once,
  each from its client namespace; {index: the workload's JSON}.
- redis_values(socket, keys): the keys' values read from Redis over its unix socket.
- lost_writes(model, values): keys whose value in Redis the model does not allow.
- totals(workload JSON): ops, requests, wrong, errors, slowest, p99 of all clients.
- window_order(rounds): which host takes each window of a throughput comparison;
  run_windows(...) runs them, window_medians(...) sums them up, stall_medians(...) says how
  much of the clients' time went on waiting out the faults in them.
"""

import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from chaos_workload import SLOW_BUCKETS

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / 'chaos_workload.py'
RTO = 0.2  # Linux's TCP_RTO_MIN: one retransmission timeout on a sub-millisecond path


def mixes(rate=0.02):
    every = {'loss': rate, 'dup': rate, 'reorder': rate}
    return {
        'loss': dict(c2s={'loss': rate}, s2c={'loss': rate}),
        'dup': dict(c2s={'dup': rate}, s2c={'dup': rate}),
        'reorder': dict(c2s={'reorder': rate}, s2c={'reorder': rate}),
        'all': dict(c2s=dict(every), s2c=dict(every)),
    }


def run_workloads(hosts, tag, seconds, out_dir, python=None):
    """hosts: [(index, client namespace, server address)]. Runs the workload against all
    of them at once; returns {index: its JSON}. Keys are prefixed chaos:<tag>:<time>."""
    procs, outs = {}, {}
    stamp = '%d' % time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for n, (index, ns, addr) in enumerate(hosts):
        out = out_dir / ('%s-r%d.workload.json' % (tag, index))
        if out.exists():
            out.unlink()
        outs[index] = out
        procs[index] = subprocess.Popen(
            ['ip', 'netns', 'exec', ns, python or sys.executable, str(WORKLOAD), '--host', addr,
             '--prefix', 'chaos:%s:%s' % (tag, stamp), '--seconds', str(seconds), '--seed', str(n + 1),
             '--out', str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    res, failed = {}, []
    for i, p in procs.items():
        try:
            text, _unused = p.communicate(timeout=seconds + 120)
        except subprocess.TimeoutExpired:
            p.kill()
            text, _unused = p.communicate()
        if p.returncode != 0 or not outs[i].exists():
            failed.append('chaos workload against host %d failed (rc %s):\n%s' % (i, p.returncode, text[-4000:]))
        else:
            res[i] = json.loads(outs[i].read_text())
    if failed:
        raise RuntimeError('\n'.join(failed))
    return res


def window_order(rounds):
    """The labels ('erb', 'alone') of the windows of a throughput comparison: A B B A, then
    B A A B, and so on, so that neither side takes more of the machine's early or late spells."""
    out = []
    for r in range(rounds):
        out += ['erb', 'alone', 'alone', 'erb'] if r % 2 == 0 else ['alone', 'erb', 'erb', 'alone']
    return out


def run_windows(hosts, tag, rounds, seconds, out_dir, python=None):
    """Throughput apart from any concurrent run: the workload on one host at a time, for
    seconds each, in window_order(rounds). hosts: {'erb': (index, client namespace, server
    address), 'alone': (...)}, the faults already set. Returns, per label, each window's
    ops, requests, wrong replies, errors, hung clients, clients, seconds, stalled_s
    (stalled_seconds()), model (its keys, to compare with Redis at the end) and the first
    wrong replies and errors."""
    out = {'erb': [], 'alone': []}
    for n, label in enumerate(window_order(rounds)):
        index = hosts[label][0]
        w = run_workloads([hosts[label]], '%s-w%d' % (tag, n), seconds, out_dir, python)[index]
        t = totals(w)
        out[label].append({'ops': t['ops'], 'requests': t['requests'], 'wrong': t['wrong'], 'errors': t['errors'],
                           'hung': t['hung'], 'clients': len(w['clients']), 'seconds': seconds,
                           'stalled_s': stalled_seconds(t['slow']), 'model': w['model'], 'wrong_details': details(w, 'wrong')[:3],
                           'error_details': details(w, 'error')[:3]})
    return out


def window_medians(win):
    """{label: median ops per window} of run_windows()' result."""
    return {label: statistics.median(x['ops'] for x in runs) for label, runs in win.items()}


def stalled_seconds(slow):
    """Seconds the clients spent in requests over 10 ms (slow: a merge_slow() histogram): on
    this sub-millisecond path, waiting out a fault (a reordered segment's hold, a
    retransmission timeout), which costs both hosts alike."""
    return round(sum(t for k, (_n, t) in slow.items() if k != SLOW_BUCKETS[0]), 3)


def stall_medians(win):
    """Per label of run_windows()' result, medians per window of: 'stalled', the share of the
    clients' time spent in requests over 10 ms; 'ops_per_free_s', operations per client-second
    outside them (where a host's own speed shows; the faults' stalls are the same for both)."""
    out = {}
    for label, runs in win.items():
        share, free = [], []
        for x in runs:
            total = x['clients'] * x['seconds']
            share.append(x['stalled_s'] / total)
            free.append(x['ops'] / max(total - x['stalled_s'], 1e-3))
        out[label] = {'stalled': statistics.median(share), 'ops_per_free_s': statistics.median(free)}
    return out


def _read_reply(f):
    line = f.readline()
    if line.startswith(b'$'):
        n = int(line[1:])
        if n < 0:
            return None
        return f.read(n + 2)[:-2].decode()
    raise RuntimeError('unexpected reply to GET: %r' % line)


def redis_values(sock_path, keys, timeout=10.0):
    """{key: value or None} read with GET over Redis's unix socket (pipelined)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(sock_path))
    try:
        f = s.makefile('rb')
        keys = list(keys)
        out = {}
        for i in range(0, len(keys), 100):
            chunk = keys[i:i + 100]
            s.sendall(b''.join(b'*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n' % (len(k.encode()), k.encode()) for k in chunk))
            for k in chunk:
                out[k] = _read_reply(f)
        return out
    finally:
        s.close()


def lost_writes(model, values):
    return [{'key': k, 'redis': values[k], 'model': cands} for k, cands in model.items() if values[k] not in cands]


def totals(w):
    cl = list(w['clients'].values())
    slowest = max(cl, key=lambda c: c['slowest'])
    return {'ops': sum(c['ops'] for c in cl), 'requests': sum(c['requests'] for c in cl),
            'wrong': sum(c['wrong'] for c in cl), 'errors': sum(c['errors'] for c in cl),
            'slowest': max(c['slowest'] for c in cl), 'slowest_what': slowest['slowest_what'],
            'p99': max((c['p99'] or 0) for c in cl), 'hung': w['hung'], 'seconds': w['seconds'],
            'slow': merge_slow(c.get('slow', {}) for c in cl)}


def merge_slow(hists):
    """The sum of the clients' slow-request histograms ({bucket: [requests, seconds]})."""
    out = {}
    for h in hists:
        for k, (n, t) in h.items():
            a = out.setdefault(k, [0, 0.0])
            a[0] += n
            a[1] = round(a[1] + t, 3)
    return {k: out[k] for k in SLOW_BUCKETS if k in out}


def details(w, what):
    """The wrong replies (what='wrong') or errors ('error') of every client, and crashes;
    or (what='slow') its requests slower than chaos_workload.SLOW_DETAIL."""
    out = []
    for name, c in w['clients'].items():
        for d in c.get(what + '_details', ()):
            out.append(dict(d, client=name))
        if what != 'slow' and c.get('crash'):
            out.append({'client': name, 'crash': c['crash']})
    return out


def table(results, erb='ERB'):
    """Markdown table of {mix: {'alone': totals, 'erb': totals}} (totals with 'lost'); erb names
    the side under test (bench/chaos.py --control: a second host without ERB)."""
    lines = ['| mix | host | ops | req/s | wrong | errors | lost writes | slowest (s) | p99 (s) |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for mix, r in results.items():
        for label in ('alone', 'erb'):
            t = r[label]
            lines.append('| %s | %s | %d | %.0f | %d | %d | %d | %.3f | %.4f |' % (
                mix, 'Redis alone' if label == 'alone' else erb, t['ops'], t['requests'] / t['seconds'],
                t['wrong'], t['errors'], t.get('lost', 0), t['slowest'], t['p99']))
    if any('median' in r for r in results.values()):
        lines += ['', '| mix | Redis alone ops per window (median) | %s ops per window (median) | %s / Redis alone |'
                  % (erb, erb),
                  '| --- | --- | --- | --- |']
        for mix, r in results.items():
            if 'median' in r:
                m = r['median']
                lines.append('| %s | %s (%.0f) | %s (%.0f) | %.3f |' % (
                    mix, ', '.join(map(str, r['windows']['alone'])), m['alone'],
                    ', '.join(map(str, r['windows']['erb'])), m['erb'], m['erb'] / max(1, m['alone'])))
    return '\n'.join(lines) + '\n'
