# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The paper's figures, ERB vs Redis alone, in one run on the local fleet (bench/run-all).

Host erb-r1 of inventory/local (redis-server at 10.250.1.1:6379 in namespace erb-r1),
loaded from its client namespace erb-c1, with the one-core placement of
bench/get_throughput.py (Redis and the server veth's threaded NAPI on the last CPU,
the load generators on the others). ERB side: playbooks/deploy.yml (GET answers, SET
fast path, erb-agent); Redis alone: playbooks/rollback.yml. Parts (--points):

  clients  throughput and p99 vs client connections (1, 10, 50, 100, 200), GET and SET,
           redis-benchmark, 100-byte values, 10,000 keys
  values   throughput and p99 vs value size (16 B to past ERB's limits), GET and SET,
           50 clients
  ycsb     YCSB A (50% read / 50% update), B (95/5), C (100% read), uniform and zipfian
           (theta 0.99) keys, bench/loadgen: records are hashes, read = HGETALL,
           update and load = HMSET of every field

Each point is measured on both sides; per ERB point, the share of requests answered in
XDP comes from ERB's own counters (hits or fast SETs), so a figure shows what was served
where. Writes bench/results/run_all.json, run_all.md (the results table) and
run_all_{clients,values,ycsb}.png. The fleet is left as found (ERB attached or not), the
placement undone, also on an error or Ctrl-C.

    bench/run-all [--quick] [--points clients,values,ycsb] [--rounds N]
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import get_throughput as gt  # noqa: E402  (Placement, playbooks, fleet names, warm)
import set_mixed as sm  # noqa: E402  (redis-benchmark command and parser, ERB counters, wait_applied)
import benchplot  # noqa: E402

REPO = gt.REPO
RESULTS = gt.RESULTS
LOADGEN = os.path.join(HERE, 'build', 'loadgen')
AGENT_PIDFILE = '/run/erb/fleet/r1/run/agent-erbs1.pid'   # erb_run_dir/agent-<interface>.pid
PARTS = ('clients', 'values', 'ycsb')
SIDES = {True: 'erb', False: 'redis'}
YCSB = {'A': 0.5, 'B': 0.95, 'C': 1.0}    # read share; the rest are updates
# the paper (24 cores, 100G NIC): one-core throughput, KRPS, Redis -> Redis + ERB
PAPER = {
    'get': {'redis_krps': 232, 'erb_krps': 605, 'ratio': 2.6},
    'set': {'redis_krps': 190, 'erb_krps': 739, 'ratio': 3.9},
    'ycsb': 'up to 6.5x the throughput of Redis with io-threads and 2.5-3x lower p99 (A, B, C; uniform keys only)',
}
IO_THREADS_MIN_CPUS = 4


def options():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--quick', action='store_true', help='few points, short runs: a smoke check (~2 min)')
    ap.add_argument('--points', default=','.join(PARTS), help='parts to run, comma separated: ' + ', '.join(PARTS))
    ap.add_argument('--rounds', type=int, default=None, help='rounds per side (default 3, --quick 1)')
    ap.add_argument('--clients', default=None, help='client counts of the clients part (default 1,10,50,100,200)')
    ap.add_argument('--values', default=None,
                    help='value sizes of the values part (default 16,64,128,256,512,1024,1400,2048)')
    ap.add_argument('--requests', type=int, default=None,
                    help='redis-benchmark requests per point (default 200000, --quick 20000)')
    ap.add_argument('--keys', type=int, default=10000)
    ap.add_argument('--value', type=int, default=100, help='value bytes of the clients part')
    ap.add_argument('--bench-clients', type=int, default=50, help='connections of the values and ycsb parts')
    ap.add_argument('--records', type=int, default=10000, help='YCSB records')
    ap.add_argument('--fields', type=int, default=4, help='fields per YCSB record')
    ap.add_argument('--field-len', type=int, default=32, help='bytes per YCSB field value')
    ap.add_argument('--seconds', type=float, default=None, help='YCSB run seconds per point (default 8)')
    ap.add_argument('--from-json', action='store_true',
                    help='measure nothing: write run_all.md and the plots again from bench/results/run_all.json')
    args = ap.parse_args()
    q = args.quick
    args.rounds = args.rounds or (1 if q else 3)
    args.clients = ints(args.clients or ('1,50,200' if q else '1,10,50,100,200'))
    args.values = ints(args.values or ('16,256,1400' if q else '16,64,128,256,512,1024,1400,2048'))
    args.requests = args.requests or (20000 if q else 200000)
    args.seconds = args.seconds or (2.0 if q else 8.0)
    args.points = [p.strip() for p in args.points.split(',') if p.strip()]
    bad = [p for p in args.points if p not in PARTS]
    if bad or not args.points:
        ap.error('--points: unknown part %s (known: %s)' % (','.join(bad), ', '.join(PARTS)))
    args.ycsb = [('A', 'uniform'), ('C', 'zipfian')] if q else \
        [(w, d) for w in YCSB for d in ('uniform', 'zipfian')]
    return args


def ints(text):
    return [int(x) for x in str(text).split(',') if x.strip()]


# ---- preconditions ----------------------------------------------------------------------

def refuse(msg):
    raise SystemExit('bench/run-all: ' + msg)


def check_ready():
    if os.geteuid() != 0:
        refuse('run as root (network namespaces, BPF, CPU placement)')
    netns = subprocess.run(['ip', 'netns', 'list'], check=True, text=True, capture_output=True).stdout
    names = {line.split()[0] for line in netns.splitlines() if line.strip()}
    pidfile = '/run/erb/fleet/r1/redis.pid'
    alive = False
    if os.path.exists(pidfile):
        try:
            os.kill(int(open(pidfile).read()), 0)
            alive = True
        except (OSError, ValueError):
            alive = False
    if not {gt.HOST, gt.CLIENT_NS} <= names or not alive:
        refuse('the local fleet is not up (namespaces %s/%s, %s): run scripts/demo, or '
               'bash inventory/local/fleet.sh up and ansible-playbook -i inventory/local playbooks/deploy.yml'
               % (gt.HOST, gt.CLIENT_NS, pidfile))
    try:
        pong = gt.in_client(['redis-cli', '-h', gt.SERVER, 'ping']).strip()
    except subprocess.CalledProcessError as e:
        refuse('redis-cli ping from %s failed: %s' % (gt.CLIENT_NS, e.stderr.strip()))
    if pong != 'PONG':
        refuse('Redis at %s answered %r to PING' % (gt.SERVER, pong))
    for tool in ('ansible-playbook', 'redis-benchmark', 'make', 'taskset'):
        if not shutil.which(tool):
            refuse('%s not found in PATH (scripts/demo installs it; bench/run-all puts .venv/bin first)' % tool)
    if not os.path.isdir(os.path.join(REPO, '.ansible', 'collections', 'ansible_collections', 'erb', 'booster')):
        refuse('the collection symlink .ansible/collections/... is missing: run scripts/demo (erb_setup) first')


def build_loadgen():
    subprocess.run(['make', '-s', '-C', HERE], check=True)


def machine():
    model = ''
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    redis = subprocess.run(['redis-server', '--version'], check=True, text=True, capture_output=True).stdout.split()
    ver = next((w.split('=', 1)[1] for w in redis if w.startswith('v=')), '?')
    return {'cpus': os.cpu_count(), 'cpu_model': model, 'kernel': platform.release(), 'redis': ver,
            'network': 'veth pair between network namespaces (inventory/local), native XDP on the server end',
            'text': '%d x %s, Linux %s, Redis %s, veth between namespaces' % (
                os.cpu_count(), model or 'CPU', platform.release(), ver)}


# ---- the two sides ------------------------------------------------------------------------

class Fleet:
    """Switches erb-r1 between ERB and Redis alone; remembers what to warm again."""

    def __init__(self):
        self.initial = gt.erb_attached()
        self.epoch = 0          # bumped at every switch: ERB's cache starts empty
        self.warm_key = None    # (epoch, value bytes) of the strings last warmed
        self.ycsb_loaded = None

    def side(self, attached):
        if attached and not gt.erb_attached():
            gt.playbook('deploy.yml')
            self.epoch += 1
        elif not attached and gt.erb_attached():
            gt.playbook('rollback.yml')
            self.epoch += 1
        gt.PLACEMENT.apply()  # the NAPI thread may be new after an attach or detach
        self.pin_agent(gt.PLACEMENT.server_cpu)
        self.warm_key = None

    @staticmethod
    def pin_agent(cpus):
        """erb-agent (and its supervisor) on the server core too: it is server-side work."""
        try:
            sup = int(open(AGENT_PIDFILE).read())
        except (OSError, ValueError):
            return
        children = subprocess.run(['ps', '-o', 'pid=', '--ppid', str(sup)], check=False, text=True,
                                  capture_output=True).stdout.split()
        for pid in [str(sup)] + children:
            subprocess.run(['taskset', '-apc', cpus, pid], check=False, capture_output=True)

    def warm(self, value, keys):
        if self.warm_key != (self.epoch, value):
            gt.warm(keys, value)
            sm.wait_applied()
            self.warm_key = (self.epoch, value)

    def restore(self):
        self.pin_agent('0-%d' % ((os.cpu_count() or 1) - 1))
        now = gt.erb_attached()
        if self.initial and not now:
            gt.playbook('deploy.yml')
        elif not self.initial and now:
            gt.playbook('rollback.yml')


def counters(attached):
    return sm.erb_counters() if attached else {}


def delta(after, before, names):
    return {k: after.get(k, 0) - before.get(k, 0) for k in names}


ERB_NAMES = ('hit', 'miss', 'set_fast', 'fill', 'pass_no_room', 'pass_too_big', 'pass_not_single',
             'pass_client_limit', 'set_pass_busy', 'set_pass_queue_full', 'hold', 'invalidate', 'evict',
             'cache_full')


def redis_benchmark(op, clients, requests, value, keys):
    ns = types.SimpleNamespace(keys=keys, value=value)
    return sm.parse(gt.in_client(sm.bench_cmd(ns, op, clients, requests, value)), op)


def rb_point(fleet, attached, op, clients, value, requests, keys):
    """One redis-benchmark point: rps, p50/p99, and how much ERB answered."""
    if op == 'get':
        fleet.warm(value, keys)
    c0, k0 = sm.cmd_calls(), counters(attached)
    res = redis_benchmark(op, clients, requests, value, keys)
    if op == 'set':
        sm.wait_applied()
        fleet.warm_key = None   # the keys now hold this SET's values
    c1, k1 = sm.cmd_calls(), counters(attached)
    res['redis_calls'] = c1.get(op, 0) - c0.get(op, 0)
    res['requests'] = requests
    if attached:
        res['erb_counters'] = delta(k1, k0, ERB_NAMES)
        served = res['erb_counters']['hit' if op == 'get' else 'set_fast']
        res['answered_in_xdp'] = min(1.0, served / requests)
    return res


def loadgen(extra, conns, args):
    cmd = ['ip', 'netns', 'exec', gt.CLIENT_NS, 'taskset', '-c', gt.PLACEMENT.client_cpus, LOADGEN,
           '--host', gt.SERVER, '--port', '6379', '--conns', str(conns), '--records', str(args.records),
           '--fields', str(args.fields), '--field-len', str(args.field_len)] + extra
    p = subprocess.run(cmd, check=False, text=True, capture_output=True)
    if p.returncode not in (0, 3) or not p.stdout.strip():
        raise SystemExit('loadgen failed (%d): %s %s' % (p.returncode, p.stdout, p.stderr))
    return json.loads(p.stdout.strip().splitlines()[-1])


def ycsb_point(fleet, attached, workload, dist, args):
    if fleet.ycsb_loaded != fleet.epoch:
        load = loadgen(['--load'], args.bench_clients, args)
        if load['errors'] or load['ops'] != args.records:
            raise SystemExit('YCSB load: %s' % load)
        fleet.ycsb_loaded = fleet.epoch
    # read every record once: HGETALL fills ERB's cache from Redis's replies, and erb-agent
    # marks a filled hash servable once it has checked that the key has no TTL
    scan = loadgen(['--scan'], args.bench_clients, args)
    if scan['errors'] or scan['notfound']:
        raise SystemExit('YCSB scan: %s' % scan)
    time.sleep(1.0 if attached else 0)
    c0, k0 = sm.cmd_calls(), counters(attached)
    res = loadgen(['--read-ratio', str(YCSB[workload]), '--dist', dist, '--seconds', str(args.seconds),
                   '--warmup', '1'], args.bench_clients, args)
    sm.wait_applied()
    c1, k1 = sm.cmd_calls(), counters(attached)
    out = {'rps': res['ops_per_sec'], 'p50_ms': res['p50_us'] / 1000.0, 'p99_ms': res['p99_us'] / 1000.0,
           'read_p99_ms': res['read_p99_us'] / 1000.0, 'update_p99_ms': res['update_p99_us'] / 1000.0,
           'errors': res['errors'], 'loadgen': res,
           'redis_calls': delta(c1, c0, ('hgetall', 'hmset'))}
    if attached:
        out['erb_counters'] = delta(k1, k0, ERB_NAMES)
        hits, passed = out['erb_counters']['hit'], out['redis_calls']['hgetall']
        out['answered_in_xdp'] = hits / (hits + passed) if hits + passed else 0.0
        a = sm.agent_stats() or {}
        out['agent'] = {k: a.get(k) for k in ('hash_verified', 'hash_deleted', 'applied')}
    return out


# ---- the run --------------------------------------------------------------------------------

def plan(args):
    """Every point of one side, in order: (part, point parameters)."""
    pts = []
    if 'clients' in args.points:
        for op in ('get', 'set'):
            for c in args.clients:
                pts.append(('clients', {'op': op, 'clients': c, 'value': args.value}))
    if 'values' in args.points:
        for op in ('get', 'set'):
            for v in args.values:
                pts.append(('values', {'op': op, 'clients': args.bench_clients, 'value': v}))
    if 'ycsb' in args.points:
        for w, d in args.ycsb:
            pts.append(('ycsb', {'workload': w, 'dist': d}))
    return pts


def label(part, p):
    if part == 'clients':
        return '%s clients=%d' % (p['op'].upper(), p['clients'])
    if part == 'values':
        return '%s value=%dB' % (p['op'].upper(), p['value'])
    return 'YCSB %s %s' % (p['workload'], p['dist'])


def run_point(fleet, attached, part, p, args):
    if part == 'ycsb':
        return ycsb_point(fleet, attached, p['workload'], p['dist'], args)
    # 1 client does ~1/5 of the rate: fewer requests keep its point as long as the others
    requests = min(args.requests, max(2000, args.requests * p['clients'] // 5))
    return rb_point(fleet, attached, p['op'], p['clients'], p['value'], requests, args.keys)


def fmt_elapsed(s):
    return '%dm%02ds' % (s // 60, s % 60)


def measure(args, fleet, points, t_start):
    pts = plan(args)
    total = len(pts) * 2 * args.rounds
    n = 0
    for r in range(args.rounds):
        # alternate which side goes first: one switch fewer per round, drift shared
        for attached in ((True, False) if r % 2 == 0 else (False, True)):
            fleet.side(attached)
            for part, p in pts:
                n += 1
                t0 = time.time()
                res = run_point(fleet, attached, part, p, args)
                res.update(p)
                res.update({'part': part, 'side': SIDES[attached], 'round': r, 'seconds': round(time.time() - t0, 2)})
                points.append(res)
                ans = ('  answered in XDP %5.1f%%' % (100 * res['answered_in_xdp'])) if attached else ''
                err = ('  ERRORS %d' % res['errors']) if res.get('errors') else ''
                print('[%3d/%d] %-22s %-5s %9.0f rps  p99 %7.3f ms%s%s  (%.1fs, %s)'
                      % (n, total, label(part, p), SIDES[attached], res['rps'], res['p99_ms'], ans, err,
                         time.time() - t0, fmt_elapsed(time.time() - t_start)), flush=True)


# ---- summary, table, plots ------------------------------------------------------------------

def key_of(part, p):
    if part == 'clients':
        return (part, p['op'], p['clients'])
    if part == 'values':
        return (part, p['op'], p['value'])
    return (part, p['workload'], p['dist'])


def summarize(points):
    """Median over rounds per (point, side), and the ERB / Redis ratios."""
    groups = {}
    for x in points:
        groups.setdefault(key_of(x['part'], x), {}).setdefault(x['side'], []).append(x)
    out = []
    for k, sides in groups.items():
        row = {'part': k[0], 'key': list(k[1:])}
        for s, xs in sides.items():
            row[s] = {m: statistics.median(x[m] for x in xs) for m in ('rps', 'p50_ms', 'p99_ms')}
            if s == 'erb':
                row[s]['answered_in_xdp'] = statistics.median(x['answered_in_xdp'] for x in xs)
        if 'erb' in row and 'redis' in row:
            e, r = row['erb'], row['redis']
            row['ratio'] = {'rps': e['rps'] / r['rps'],
                            'p99_lower': r['p99_ms'] / e['p99_ms'] if e['p99_ms'] else None}
        out.append(row)
    return out


def find(summary, part, *key):
    for row in summary:
        if row['part'] == part and row['key'] == list(key) and 'ratio' in row:
            return row
    return None


def table(result):
    s, a = result['summary'], result['args']
    lines = ['| measurement | paper (24 cores, 100G NIC) | measured here: Redis | Redis + ERB | ERB / Redis |',
             '| --- | --- | --- | --- | --- |']

    def row(name, paper, r, unit='krps'):
        if r is None:
            return
        low = r['ratio']['p99_lower'] or 0
        p99 = ('p99 %.2fx lower' % low) if low >= 1 else ('p99 %.2fx higher' % (1 / low)) if low else 'p99 -'
        lines.append('| %s | %s | %.1f kRPS, p99 %.3f ms | %.1f kRPS, p99 %.3f ms (%.0f%% in XDP) | '
                     'x%.2f throughput, %s |'
                     % (name, paper, r['redis']['rps'] / 1e3, r['redis']['p99_ms'], r['erb']['rps'] / 1e3,
                        r['erb']['p99_ms'], 100 * r['erb']['answered_in_xdp'], r['ratio']['rps'], p99))

    c = a['bench_clients'] if a['bench_clients'] in a['clients'] else max(a['clients'])
    for op in ('get', 'set'):
        pp = PAPER[op]
        row('%s, one server core, %d clients, %d B values' % (op.upper(), c, a['value']),
            '%d -> %d kRPS: **x%.1f**' % (pp['redis_krps'], pp['erb_krps'], pp['ratio']),
            find(s, 'clients', op, c))
    for op in ('get', 'set'):
        best = None
        for cl in a['clients']:
            r = find(s, 'clients', op, cl)
            if r and (best is None or r['ratio']['rps'] > best[1]['ratio']['rps']):
                best = (cl, r)
        if best:
            row('%s, the highest ratio over %s clients (%d)' % (op.upper(), ', '.join(map(str, a['clients'])), best[0]),
                '-', best[1])
    for w, d in a['ycsb']:
        paper = ('up to x6.5 and p99 2.5-3x lower, against Redis with io-threads' if d == 'uniform'
                 else 'not measured (uniform keys only)')
        row('YCSB %s (%d%% reads), %s keys' % (w, round(100 * YCSB[w]), d), paper, find(s, 'ycsb', w, d))
    return '\n'.join(lines)


def plot(result, prefix):
    plt = benchplot.pyplot()
    if plt is None:
        return []
    s, a, made = result['summary'], result['args'], []
    colors = {'redis': 'grey', 'erb': 'tab:green'}
    names = {'redis': 'Redis', 'erb': 'Redis + ERB'}
    foot = '%s; server side pinned to one core' % result['machine']['text']
    for part, xs, xlabel in (('clients', a['clients'], 'client connections'),
                             ('values', a['values'], 'value bytes')):
        if part not in a['points']:
            continue
        fig, axes = plt.subplots(2, 2, figsize=(11, 7))
        for i, op in enumerate(('get', 'set')):
            rows = [find(s, part, op, x) for x in xs]
            keep = [(x, r) for x, r in zip(xs, rows) if r]
            if not keep:
                continue
            pos = {x: j for j, x in enumerate(xs)}   # evenly spaced: the sizes are far apart
            for side in ('redis', 'erb'):
                axes[i][0].plot([pos[k[0]] for k in keep], [k[1][side]['rps'] / 1e3 for k in keep], 'o-',
                                color=colors[side], label=names[side])
                axes[i][1].plot([pos[k[0]] for k in keep], [k[1][side]['p99_ms'] for k in keep], 'o-',
                                color=colors[side], label=names[side])
            for x, r in keep:
                axes[i][0].annotate('%.0f%%' % (100 * r['erb']['answered_in_xdp']), (pos[x], r['erb']['rps'] / 1e3),
                                    textcoords='offset points', xytext=(0, 6), ha='center', fontsize=7,
                                    color='tab:green')
            axes[i][0].set_ylabel('%s kRPS' % op.upper())
            axes[i][1].set_ylabel('%s p99 (ms)' % op.upper())
            for ax in axes[i]:
                ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
                ax.set_xticks(range(len(xs)))
                ax.set_xticklabels([str(x) for x in xs])
                ax.set_xlabel(xlabel)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
        fig.suptitle('%s: throughput (%% = share answered in XDP) and p99\n%s' % (part, foot), fontsize=9)
        fig.tight_layout()
        path = '%s_%s.png' % (prefix, part)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    if 'ycsb' in a['points']:
        cases = [(w, d) for w, d in a['ycsb'] if find(s, 'ycsb', w, d)]
        if cases:
            fig, (t, p) = plt.subplots(1, 2, figsize=(11, 4))
            xs = range(len(cases))
            for j, side in enumerate(('redis', 'erb')):
                rows = [find(s, 'ycsb', w, d) for w, d in cases]
                pos = [x + (j - 0.5) * 0.4 for x in xs]
                t.bar(pos, [r[side]['rps'] / 1e3 for r in rows], 0.4, color=colors[side], label=names[side])
                p.bar(pos, [r[side]['p99_ms'] for r in rows], 0.4, color=colors[side], label=names[side])
            for ax, yl in ((t, 'kops/s'), (p, 'p99 (ms)')):
                ax.set_xticks(list(xs))
                ax.set_xticklabels(['%s\n%s' % (w, d) for w, d in cases])
                ax.set_ylabel(yl)
                ax.legend(fontsize=8)
            fig.suptitle('YCSB, %d records of %d x %d B fields (HGETALL / HMSET), %d connections\n%s'
                         % (a['records'], a['fields'], a['field_len'], a['bench_clients'], foot), fontsize=9)
            fig.tight_layout()
            path = '%s_ycsb.png' % prefix
            fig.savefig(path, dpi=100)
            plt.close(fig)
            made.append(path)
    return made


def io_threads_note():
    n = os.cpu_count() or 1
    if n < IO_THREADS_MIN_CPUS:
        return ('not measured: %d CPUs. The server side is pinned to one core (the paper\'s one-core '
                'experiment) and the load generator needs the other, so Redis\'s io-threads would get no '
                'core of their own; it takes >= %d CPUs.' % (n, IO_THREADS_MIN_CPUS))
    return ('not measured: bench/run-all has no io-threads side yet (Redis would have to be restarted '
            'with io-threads on free cores).')


def report(result):
    """run_all.md and the plots from a result (a run just made, or run_all.json)."""
    pl = result['placement']
    md = ('Measured %s on %s (server side pinned to CPU %s, load generators on CPU %s), median of %d '
          'round(s), %s in all.\n\n%s\n\nRedis with io-threads: %s\n'
          % (result['when'], result['machine']['text'], pl['server_cpu'], pl['client_cpus'],
             result['args']['rounds'], fmt_elapsed(result['total_seconds']), table(result), result['io_threads']))
    with open(os.path.join(RESULTS, 'run_all.md'), 'w') as f:
        f.write(md)
    made = plot(result, os.path.join(RESULTS, 'run_all'))
    print('\n' + md)
    print('wrote %s' % ', '.join([os.path.relpath(p, REPO) for p in
                                  [os.path.join(RESULTS, 'run_all.json'), os.path.join(RESULTS, 'run_all.md')] + made]))


def main():
    args = options()
    if args.from_json:
        with open(os.path.join(RESULTS, 'run_all.json')) as f:
            result = json.load(f)
        result['summary'] = summarize(result['points'])
        report(result)
        return
    check_ready()
    build_loadgen()
    t_start = time.time()
    gt.PLACEMENT = gt.Placement()
    fleet = Fleet()
    points = []
    failed = None
    print('bench/run-all: %s; parts %s, %d round(s); ERB initially %s'
          % ('quick' if args.quick else 'full', ','.join(args.points), args.rounds,
             'attached' if fleet.initial else 'detached'), flush=True)
    try:
        measure(args, fleet, points, t_start)
    except (Exception, KeyboardInterrupt) as e:  # noqa: B902  report, restore, re-raise
        failed = e
    finally:
        gt.PLACEMENT.undo()
        fleet.restore()
    if failed is not None and not points:
        raise failed
    result = {'benchmark': 'bench/run-all', 'machine': machine(), 'complete': failed is None,
              'placement': {'server_cpu': gt.PLACEMENT.server_cpu, 'client_cpus': gt.PLACEMENT.client_cpus},
              'args': dict(vars(args)), 'paper': PAPER, 'io_threads': io_threads_note(),
              'points': points, 'when': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
              'total_seconds': round(time.time() - t_start, 1)}
    result['summary'] = summarize(points)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, 'run_all.json'), 'w') as f:
        json.dump(result, f, indent=2)
    report(result)
    errors = sum(x.get('errors', 0) for x in points)
    print('total time %s' % fmt_elapsed(time.time() - t_start))
    if failed is not None:
        print('INCOMPLETE: stopped by %r; partial results written' % failed, file=sys.stderr)
        raise failed
    if errors:
        raise SystemExit('loadgen counted %d bad replies: the YCSB figures are not valid' % errors)


if __name__ == '__main__':
    main()
