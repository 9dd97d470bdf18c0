# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""ERB vs Redis alone under network faults, side by side in one run.

On the local fleet: host erb-r1 with ERB (deployed with playbooks/deploy.yml if it is not
attached), host erb-r2 as Redis alone (ERB must not be attached there). The fault harness
(tests/fault/fault_harness.py) gives both client links the same faults; for each mix the
chaos workload (tests/fault/chaos_workload.py: redis-py, a pipelining client, redis-cli,
every reply checked against a model) runs against both hosts at once (wrong replies, failed
requests, writes lost, slowest request and p99 under contention), then on one host at a time
in alternating windows (--windows rounds of A B B A / B A A B, --window seconds each, as
tests/fault/test_chaos.py does): throughput is the median of each side's windows, and the
ratio ERB / Redis alone is of those medians (when both run at once, whichever side wins the
two vCPUs wins the window). Mix `none` (no fault) is the baseline: `--mixes none,loss,dup`.

    .venv/bin/python bench/chaos.py [--seconds 20] [--rate 0.02] [--mixes loss,dup,reorder,all]
                   [--windows 2] [--window 4] [--delay-ms 0] [--jitter-ms 0] [--control]

--control runs the same procedure with ERB rolled back on erb-r1 (it refuses to run while ERB is
attached there): two plain Redis hosts, so its ratio (written to chaos-control.json and .png) is
what the method reads when there is no difference to find. On this 2-vCPU machine that spread is
wide (README, "Under the chaos workload"): judge an ERB ratio against it, measured in the same
session.

--delay-ms adds a fixed delay each way on top of every mix (without reordering, which the
harness cannot combine with a fixed delay: the reorder mixes then use jitter instead).
Needs root and the fleet up (scripts/demo, or inventory/local/fleet.sh up). Writes
bench/results/chaos.json and chaos.png.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests', 'fault'))

from chaos_run import (lost_writes, mixes, redis_values, run_windows, run_workloads, stall_medians,  # noqa: E402
                       table, totals, window_medians, window_order)
from fault_harness import Faults  # noqa: E402
import benchplot  # noqa: E402

RESULTS = os.path.join(REPO, 'bench', 'results')
ERB, ALONE = 1, 2
FLEET = '/run/erb/fleet'


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def erb_attached(i):
    return 'prog/xdp' in run(['ip', 'netns', 'exec', 'erb-r%d' % i, 'ip', '-d', 'link', 'show', 'erbs%d' % i])


def deploy(i):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'))
    venv = os.path.join(REPO, '.venv', 'bin', 'ansible-playbook')
    subprocess.run([venv if os.path.exists(venv) else 'ansible-playbook', '-i', os.path.join(REPO, 'inventory', 'local'),
                    '--limit', 'erb-r%d' % i, os.path.join(REPO, 'playbooks', 'deploy.yml')],
                   check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)


def with_delay(mix, delay_ms, jitter_ms):
    if not delay_ms:
        return mix
    out = {}
    for d, knobs in mix.items():
        k = dict(knobs)
        if k.pop('reorder', 0):
            k['jitter_ms'] = max(jitter_ms, 2 * delay_ms)
        else:
            k['jitter_ms'] = jitter_ms
        k['delay_ms'] = delay_ms
        out[d] = k
    return out


def plot(result, path):
    plt = benchplot.pyplot()
    if plt is None:
        return
    names = list(result['mixes'])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    x = range(len(names))
    for off, label, color in ((-0.2, 'alone', 'grey'), (0.2, 'erb', 'tab:green')):
        rates = [result['mixes'][n]['median'][label] / result['window'] for n in names]
        a.bar([i + off for i in x], rates, 0.4, color=color,
              label='Redis alone' if label == 'alone' else
              'erb-r1, Redis alone (control)' if result.get('control') else 'Redis + ERB')
        b.bar([i + off for i in x], [result['mixes'][n][label]['slowest'] for n in names], 0.4, color=color)
    for ax, title in ((a, 'ops/s (median of alternating windows)'), (b, 'slowest request (s), both at once')):
        ax.set_xticks(list(x))
        ax.set_xticklabels(names)
        ax.set_title(title)
    a.legend()
    fig.suptitle('faults at %g each way, %d s per mix, %s' % (result['rate'], result['seconds'], result['machine']))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--seconds', type=float, default=20)
    ap.add_argument('--rate', type=float, default=0.02)
    ap.add_argument('--mixes', default='loss,dup,reorder,all', help='of none (no fault), loss, dup, reorder, all')
    ap.add_argument('--windows', type=int, default=2, help='rounds of four alternating windows (default 2)')
    ap.add_argument('--window', type=float, default=4, help='seconds per window (default 4)')
    ap.add_argument('--delay-ms', type=float, default=0)
    ap.add_argument('--jitter-ms', type=float, default=0)
    ap.add_argument('--control', action='store_true',
                    help='A/A: erb-r1 without ERB against erb-r2 (roll ERB back on erb-r1 first)')
    args = ap.parse_args()
    if args.windows < 1 or args.window <= 0 or args.seconds <= 0:
        raise SystemExit('--windows must be at least 1, --window and --seconds more than 0')
    if os.geteuid() != 0:
        raise SystemExit('run as root (network namespaces, BPF)')
    if erb_attached(ALONE):
        raise SystemExit('ERB is attached on erb-r2, which must be Redis alone: ansible-playbook -i inventory/local '
                         '--limit erb-r2 playbooks/rollback.yml')
    if args.control:
        if erb_attached(ERB):
            raise SystemExit('--control compares two hosts without ERB: roll it back on erb-r1 first '
                             '(ansible-playbook -i inventory/local --limit erb-r1 playbooks/rollback.yml)')
    elif not erb_attached(ERB):
        deploy(ERB)
    name = 'chaos-control' if args.control else 'chaos'
    side = 'erb-r1 (no ERB)' if args.control else 'ERB'
    all_mixes = dict(none={}, **mixes(args.rate))
    chosen = [m.strip() for m in args.mixes.split(',') if m.strip()]
    unknown = set(chosen) - set(all_mixes)
    if unknown:
        raise SystemExit('unknown mix(es): %s (known: %s)' % (', '.join(sorted(unknown)), ', '.join(all_mixes)))
    hosts = [(i, 'erb-c%d' % i, '10.250.%d.1' % i) for i in (ERB, ALONE)]
    by_label = {'erb': hosts[0], 'alone': hosts[1]}
    per_mix = args.seconds + 4 * args.windows * args.window
    print('%d mix(es), %.0f s of workload each (%g s both at once, then %d windows of %g s); about %.0f s in all'
          % (len(chosen), per_mix, args.seconds, 4 * args.windows, args.window, len(chosen) * per_mix),
          flush=True)
    t_start = time.monotonic()
    results, counters = {}, {}
    out_dir = tempfile.mkdtemp(prefix='erb-chaos-')
    with Faults([ERB, ALONE]) as f:
        for m in chosen:
            knobs = with_delay(all_mixes[m], args.delay_ms, args.jitter_ms)
            before = f.stats()
            f.set(**knobs)
            try:
                w = run_workloads(hosts, m, args.seconds, out_dir)
                win = run_windows(by_label, m, args.windows, args.window, out_dir)
            finally:
                f.set()
            after = f.stats()
            counters[m] = {i: {d: {k: after[i][d][k] - before[i][d][k] for k in after[i][d]} for d in after[i]}
                           for i in after}
            results[m] = {}
            for i, label in ((ALONE, 'alone'), (ERB, 'erb')):
                sock = '%s/r%d/redis.sock' % (FLEET, i)
                deadline = time.monotonic() + 20  # ERB's I/O path applies what it acknowledged
                while True:
                    # the concurrent run's keys and every window's (their key prefixes differ)
                    lost = [k for model in [w[i]['model']] + [x['model'] for x in win[label]]
                            for k in lost_writes(model, redis_values(sock, model))]
                    if not lost or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                results[m][label] = dict(totals(w[i]), lost=len(lost), faults=knobs,
                                         window_wrong=sum(x['wrong'] for x in win[label]),
                                         window_errors=sum(x['errors'] for x in win[label]))
            med = results[m]['median'] = window_medians(win)
            results[m]['windows'] = {'order': window_order(args.windows),
                                     'erb': [x['ops'] for x in win['erb']], 'alone': [x['ops'] for x in win['alone']],
                                     'ratio': med['erb'] / max(1, med['alone']), 'stalls': stall_medians(win)}
            e, a = results[m]['erb'], results[m]['alone']
            print('%-8s Redis alone %6.0f ops/s slowest %.3f s | %s %6.0f ops/s slowest %.3f s | x%.2f  '
                  'wrong %d/%d errors %d/%d lost %d/%d  (%.0f s)' % (
                      m, med['alone'] / args.window, a['slowest'], side, med['erb'] / args.window, e['slowest'],
                      results[m]['windows']['ratio'], a['wrong'] + a['window_wrong'], e['wrong'] + e['window_wrong'],
                      a['errors'] + a['window_errors'], e['errors'] + e['window_errors'], a['lost'], e['lost'],
                      time.monotonic() - t_start), flush=True)
            st = results[m]['windows']['stalls']
            free = st['erb']['ops_per_free_s'] / max(1, st['alone']['ops_per_free_s'])
            print('         client time in requests over 10 ms (the faults): Redis alone %.1f%%, %s %.1f%%; '
                  'ops per client-second outside them x%.2f'
                  % (100 * st['alone']['stalled'], side, 100 * st['erb']['stalled'], free), flush=True)
    print('\n' + table(results, side))
    print('total %.0f s; %s' % (time.monotonic() - t_start, os.path.join(RESULTS, name + '.json')))
    result = {'benchmark': name, 'control': args.control, 'rate': args.rate, 'seconds': args.seconds, 'window': args.window,
              'windows': args.windows, 'delay_ms': args.delay_ms,
              'jitter_ms': args.jitter_ms, 'machine': '%d cores, veth in netns' % os.cpu_count(),
              'mixes': results, 'fault_counters': counters,
              'when': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, name + '.json'), 'w') as fh:
        json.dump(result, fh, indent=2)
    plot(result, os.path.join(RESULTS, name + '.png'))


if __name__ == '__main__':
    main()
