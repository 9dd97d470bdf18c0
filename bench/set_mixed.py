# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""SET and 50/50 SET/GET throughput and latency with ERB (SET fast path + I/O agent) vs
the same Redis without it.

One run, side by side, on the local fleet (inventory/local), with the placement of
bench/get_throughput.py (its Placement: Redis and the server veth's threaded NAPI on
the last CPU, redis-benchmark on the others). Rounds alternate ERB / plain; the report
is the median of each side and their ratio.

- SET: redis-benchmark -t set, random keys over a keyspace of --keys ("key:NNNN..."),
  --value-byte values, --clients connections.
- mix: two redis-benchmark processes started together on the same keyspace, one
  `-t set` and one `-t get` with --clients/2 connections each and the same number of
  requests: 50/50 SET/GET, concurrently. Throughput = both processes' requests over
  the longer one's duration; p99 is reported per command.
- ERB side: playbooks/deploy.yml (erb_set_fast_path true, the agent started by the
  role); the agent's apply delay percentiles are read from its stats file after each
  ERB round (the agent starts afresh at each deploy), with ERB's counters (set_fast,
  hold, set_pass_*) and Redis's SET calls (the agent's applies).

    .venv/bin/python bench/set_mixed.py [--rounds 3] [--requests 100000] [--clients 50]

Writes bench/results/set_mixed.json and .png.
"""
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import get_throughput as gt  # noqa: E402  (Placement, playbooks, fleet names)
import benchplot  # noqa: E402

REPO = gt.REPO
RESULTS = gt.RESULTS
AGENT_STATS = '/run/erb/fleet/r1/run/agent-erbs1.json'
PIN_DIR = '/run/erb/bpffs/erb/erb-r1/erbs1'


def loader():
    p = os.path.join(REPO, '.ansible', 'collections')
    if p not in sys.path:
        sys.path.insert(0, p)
    from ansible_collections.erb.booster.plugins.module_utils import erb_loader
    return erb_loader


def erb_counters():
    L = loader()
    fd = L.open_pinned(os.path.join(PIN_DIR, 'map_erb_stats'))
    if fd is None:
        return {}
    try:
        return L.read_stats(fd)
    finally:
        os.close(fd)


def erb_seqs():
    L = loader()
    fd = L.open_pinned(os.path.join(PIN_DIR, 'map_erb_global'))
    if fd is None:
        return None
    try:
        g = L.read_global(fd)
        return int(g.write_seq), int(g.applied_seq)
    finally:
        os.close(fd)


def wait_applied(timeout=60):
    """ERB: wait until the agent applied every acknowledged SET (no-op when plain)."""
    deadline = time.time() + timeout
    while True:
        s = erb_seqs()
        if s is None or s[0] == s[1]:
            return
        if time.time() > deadline:
            raise SystemExit('the agent did not catch up within %d s: write_seq/applied_seq %s' % (timeout, s))
        time.sleep(0.05)


def agent_stats():
    try:
        with open(AGENT_STATS) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cmd_calls():
    out = gt.in_client(['redis-cli', '-h', gt.SERVER, 'info', 'commandstats'])
    calls = {}
    for line in out.splitlines():
        if line.startswith('cmdstat_'):
            name, rest = line[len('cmdstat_'):].split(':', 1)
            calls[name] = int(rest.split('calls=')[1].split(',')[0])
    return calls


PIPE = 'set_P%d' % gt.PIPELINE
PYPIPE = 'set_redis_py_P%d' % gt.PIPELINE
CASES = ('set', 'mix', PIPE, PYPIPE)


def bench_cmd(args, test, clients, requests, value=None):
    return ['taskset', '-c', gt.PLACEMENT.client_cpus, 'redis-benchmark', '-h', gt.SERVER, '-p', '6379',
            '-t', test, '-n', str(requests), '-c', str(clients), '-r', str(args.keys),
            '-d', str(args.value if value is None else value), '--csv']


def parse(out, test):
    rows = [r for r in csv.DictReader(io.StringIO(out)) if r.get('test') == test.upper()]
    if len(rows) != 1:
        raise SystemExit('unexpected redis-benchmark output:\n' + out)
    row = rows[0]
    return {'rps': float(row['rps']), 'p50_ms': float(row['p50_latency_ms']),
            'p99_ms': float(row['p99_latency_ms']), 'avg_ms': float(row['avg_latency_ms'])}


def bench_set(args):
    return parse(gt.in_client(bench_cmd(args, 'set', args.clients, args.requests)), 'set')


def bench_mix(args):
    """SET and GET redis-benchmark processes started together (clients/2 each)."""
    n = args.requests // 2
    out = {}

    def one(test):
        t0 = time.time()
        p = subprocess.run(['ip', 'netns', 'exec', gt.CLIENT_NS] + bench_cmd(args, test, args.clients // 2, n),
                           check=True, text=True, capture_output=True)
        out[test] = parse(p.stdout, test)
        out[test]['wall_s'] = time.time() - t0

    threads = [threading.Thread(target=one, args=(t,)) for t in ('set', 'get')]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if set(out) != {'set', 'get'}:
        raise SystemExit('a redis-benchmark of the mix failed')
    dur = max(n / out['set']['rps'], n / out['get']['rps'])
    return {'rps': 2 * n / dur, 'set_rps': out['set']['rps'], 'get_rps': out['get']['rps'],
            'set_p99_ms': out['set']['p99_ms'], 'get_p99_ms': out['get']['p99_ms'],
            'p99_ms': max(out['set']['p99_ms'], out['get']['p99_ms']),
            'set_p50_ms': out['set']['p50_ms'], 'get_p50_ms': out['get']['p50_ms']}


def side(args, attached):
    if attached and not gt.erb_attached():
        gt.playbook('deploy.yml')
    if not attached and gt.erb_attached():
        gt.playbook('rollback.yml')
    gt.PLACEMENT.apply()  # the NAPI thread may be new after an attach or detach
    gt.warm(args.keys, args.value)
    wait_applied()
    res = {'erb': attached}
    c0, k0 = cmd_calls(), erb_counters()
    res['set'] = bench_set(args)
    wait_applied()
    res['mix'] = bench_mix(args)
    wait_applied()
    # pipelined SETs: redis-benchmark -P, and a redis-py pipeline
    res[PIPE] = parse(gt.in_client(bench_cmd(args, 'set', args.clients, args.requests, args.pipeline_value) +
                                   ['-P', str(gt.PIPELINE)]), 'set')
    wait_applied()
    res[PYPIPE] = gt.pypipe(args, 'set', args.pipeline_value)
    wait_applied()
    c1, k1 = cmd_calls(), erb_counters()
    res['redis_calls'] = {k: c1.get(k, 0) - c0.get(k, 0) for k in ('set', 'get')}
    if attached:
        res['erb_counters'] = {k: k1.get(k, 0) - k0.get(k, 0)
                               for k in ('set_fast', 'hit', 'miss', 'hold', 'set_pass_busy', 'set_pass_queue_full',
                                         'pipelined', 'pipelined_cmds')}
        time.sleep(1.2)  # the agent writes its stats once a second
        a = agent_stats() or {}
        res['agent'] = {k: a.get(k) for k in ('applied', 'batches', 'records_per_batch', 'lag_records',
                                              'apply_delay_us', 'errors', 'retries', 'reconnects')}
    return res


def plot(result, path):
    plt = benchplot.pyplot()
    if plt is None:
        return
    med, ratio = result['median'], result['ratio']
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.5))
    names = ['Redis', 'Redis + ERB']
    colors = ['grey', 'tab:green']
    for ax, (w, label) in zip(axes[:2], (('set', 'SET'), ('mix', '50/50 SET/GET'))):
        ax.bar(names, [med['plain'][w]['rps'] / 1000, med['erb'][w]['rps'] / 1000], color=colors)
        ax.set_ylabel('kRPS')
        ax.set_title('%s throughput (x%.2f)' % (label, ratio[w]['rps']))
    for ax, (w, label) in zip(axes[2:], (('set', 'SET'), ('mix', 'mix (worse of SET/GET)'))):
        ax.bar(names, [med['plain'][w]['p99_ms'], med['erb'][w]['p99_ms']], color=colors)
        ax.set_ylabel('p99 (ms)')
        ax.set_title('%s p99 (%.2fx lower)' % (label, ratio[w]['p99']))
    ad = result.get('apply_delay_us_median') or {}
    fig.suptitle('%d clients, %d-byte values, %d keys, %s; agent apply delay p50 %s us, p99 %s us, p999 %s us'
                 % (result['clients'], result['value_bytes'], result['keys'], result['machine'],
                    ad.get('p50'), ad.get('p99'), ad.get('p999')))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    args = gt.parse_args(__doc__)
    gt.PLACEMENT = gt.Placement()
    runs = []
    try:
        for r in range(args.rounds):
            for attached in (True, False):
                t0 = time.time()
                res = side(args, attached)
                res['round'] = r
                runs.append(res)
                s, m = res['set'], res['mix']
                print('round %d %-5s SET %8.0f rps p99 %.3f ms | mix %8.0f rps (SET p99 %.3f, GET p99 %.3f ms)'
                      ' | Redis SET calls %d GET calls %d%s (%.0fs)'
                      % (r + 1, 'erb' if attached else 'plain', s['rps'], s['p99_ms'], m['rps'], m['set_p99_ms'],
                         m['get_p99_ms'], res['redis_calls']['set'], res['redis_calls']['get'],
                         ('  %s  apply delay us %s' % (res['erb_counters'], res['agent']['apply_delay_us']))
                         if attached else '', time.time() - t0), flush=True)
    finally:
        gt.PLACEMENT.undo()
    report(args, runs)


def report(args, runs):
    med = {}
    for name, attached in (('erb', True), ('plain', False)):
        rs = [x for x in runs if x['erb'] == attached]
        med[name] = {w: {k: statistics.median(x[w][k] for x in rs) for k in rs[0][w]} for w in CASES}
    ratio = {w: {'rps': med['erb'][w]['rps'] / med['plain'][w]['rps'],
                 'p99': med['plain'][w]['p99_ms'] / med['erb'][w]['p99_ms']} for w in CASES}
    delays = [x['agent']['apply_delay_us'] for x in runs if x['erb'] and x['agent'].get('apply_delay_us')]
    ad = {k: statistics.median(d[k] for d in delays) for k in ('p50', 'p99', 'p999', 'max')} if delays else None
    result = {'benchmark': 'SET, 50/50 SET/GET, pipelined SET', 'clients': args.clients, 'requests': args.requests,
              'keys': args.keys, 'value_bytes': args.value, 'key_bytes': 16,
              'pipeline': gt.PIPELINE, 'pipeline_value_bytes': args.pipeline_value,
              'machine': '%d cores, veth in netns' % os.cpu_count(),
              'placement': {'server_cpu': gt.PLACEMENT.server_cpu, 'client_cpus': gt.PLACEMENT.client_cpus},
              'runs': runs, 'median': med, 'ratio': ratio, 'apply_delay_us_median': ad,
              'when': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, 'set_mixed.json'), 'w') as f:
        json.dump(result, f, indent=2)
    plot(result, os.path.join(RESULTS, 'set_mixed.png'))
    for w, label in (('set', 'SET'), ('mix', '50/50'), (PIPE, 'SET -P %d' % gt.PIPELINE),
                     (PYPIPE, 'SET redis-py pipeline of %d' % gt.PIPELINE)):
        print('\n%-5s median plain %.0f rps p99 %.3f ms | erb %.0f rps p99 %.3f ms | throughput x%.2f, p99 plain/erb %.2f'
              % (label, med['plain'][w]['rps'], med['plain'][w]['p99_ms'], med['erb'][w]['rps'],
                 med['erb'][w]['p99_ms'], ratio[w]['rps'], ratio[w]['p99']), end='')
    print('\nagent apply delay (median over ERB rounds, us): %s' % ad)
    for x in runs:
        if x['erb']:
            print('  round %d agent: %s' % (x['round'] + 1, x['agent']))
    # leave the host as we found it: ERB attached (the demo's state)
    if not gt.erb_attached():
        gt.playbook('deploy.yml')


if __name__ == '__main__':
    main()
