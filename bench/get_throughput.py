# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""GET throughput and latency with ERB attached vs the same Redis without it.

One run, side by side, on the local fleet (inventory/local): host erb-r1's
redis-server, loaded from its client namespace erb-c1 with redis-benchmark
(16-byte keys "key:NNNNNNNNNNNN", 100-byte values, warmed cache, 50 clients).
Rounds alternate ERB / plain so drift on this shared 2-core machine hits both
sides alike; the report is the median of each side and their ratio.

Like the paper's one-core experiment, the server side gets one core: Redis and
the server veth's NAPI (threaded, so it is not run on the sender's CPU as veth
does by default) are pinned to the last CPU, redis-benchmark to the others.
Both sides run with this same placement; it is undone at the end.

    .venv/bin/python bench/get_throughput.py [--rounds 3] [--requests 100000] [--clients 50]

Needs: the fleet up (inventory/local/fleet.sh up) and ansible-playbook (scripts/demo
sets both up). Writes bench/results/get_throughput.json and .png.
"""
import argparse
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import time
import benchplot  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST, CLIENT_NS, SERVER = 'erb-r1', 'erb-c1', '10.250.1.1'
PLACEMENT = None
INVENTORY = os.path.join(REPO, 'inventory', 'local')
RESULTS = os.path.join(REPO, 'bench', 'results')


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def in_client(cmd):
    return run(['ip', 'netns', 'exec', CLIENT_NS] + cmd)


def playbook(name):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'))
    subprocess.run(['ansible-playbook', '-i', INVENTORY, '--limit', HOST,
                    os.path.join(REPO, 'playbooks', name)], check=True, cwd=REPO, env=env,
                   stdout=subprocess.DEVNULL)


def erb_attached():
    out = run(['ip', 'netns', 'exec', HOST, 'ip', '-d', 'link', 'show', 'erbs1'])
    return 'prog/xdp' in out


def warm(keys, value):
    """SET every key once, one command per segment (the write-through fill path)."""
    script = (
        'import redis,sys\n'
        'r = redis.Redis(host=%r, port=6379)\n'
        'v = b"x" * %d\n'
        'for i in range(%d):\n'
        '    r.set(b"key:%%012d" %% i, v)\n' % (SERVER, value, keys))
    in_client([sys.executable, '-c', script])


def cpus():
    n = os.cpu_count() or 1
    return str(n - 1), ('0-%d' % (n - 2) if n > 2 else '0') if n > 1 else '0'


class Placement:
    """One server core: Redis + the veth's threaded NAPI there, clients elsewhere."""

    def __init__(self):
        self.server_cpu, self.client_cpus = cpus()
        self.redis_pid = int(open('/run/erb/fleet/r1/redis.pid').read())
        self.threaded = in_host(['cat', '/sys/class/net/erbs1/threaded']).strip()
        self.gro = 'on' if 'generic-receive-offload: on' in in_host(['ethtool', '-k', 'erbs1']) else 'off'

    def apply(self):
        in_host(['ethtool', '-K', 'erbs1', 'gro', 'on'])  # veth uses NAPI with GRO (and with XDP)
        in_host(['sh', '-c', 'echo 1 > /sys/class/net/erbs1/threaded'])
        run(['taskset', '-pc', self.server_cpu, str(self.redis_pid)])
        for line in run(['ps', '-eo', 'pid,comm']).splitlines():
            if 'napi/erbs1' in line:
                run(['taskset', '-pc', self.server_cpu, line.split()[0]])

    def undo(self):
        if in_host(['cat', '/sys/class/net/erbs1/threaded']).strip() != self.threaded:
            in_host(['sh', '-c', 'echo %s > /sys/class/net/erbs1/threaded' % self.threaded])
        in_host(['ethtool', '-K', 'erbs1', 'gro', self.gro])
        run(['taskset', '-pc', '0-%d' % ((os.cpu_count() or 1) - 1), str(self.redis_pid)])


def in_host(cmd):
    return run(['ip', 'netns', 'exec', HOST] + cmd)


PIPELINE = 16   # commands per pipeline in the pipelined cases (redis-benchmark -P, redis-py)


def benchmark(args, pipeline=1, value=None):
    out = in_client(['taskset', '-c', PLACEMENT.client_cpus, 'redis-benchmark', '-h', SERVER, '-p', '6379', '-t', 'get',
                     '-n', str(args.requests), '-c', str(args.clients), '-r', str(args.keys),
                     '-d', str(args.value if value is None else value), '--csv', '-P', str(pipeline)])
    rows = list(csv.DictReader(io.StringIO(out)))
    if len(rows) != 1:
        raise SystemExit('unexpected redis-benchmark output:\n' + out)
    row = rows[0]
    return {'rps': float(row['rps']), 'p50_ms': float(row['p50_latency_ms']),
            'p99_ms': float(row['p99_latency_ms']), 'avg_ms': float(row['avg_latency_ms'])}


def pypipe(args, op, value, pipelines=2000):
    """One redis-py client sending pipelines of PIPELINE GETs (or SETs) of random keys:
    throughput in commands/s and per-pipeline latency."""
    script = (
        'import json,random,time,redis\n'
        'r = redis.Redis(host=%r, port=6379)\n'
        'v = b"x" * %d\n'
        'rnd = random.Random(1)\n'
        'lat = []\n'
        't0 = time.perf_counter()\n'
        'for _ in range(%d):\n'
        '    p = r.pipeline(transaction=False)\n'
        '    for _ in range(%d):\n'
        '        k = b"key:%%012d" %% rnd.randrange(%d)\n'
        '        p.set(k, v) if %r == "set" else p.get(k)\n'
        '    t = time.perf_counter()\n'
        '    p.execute()\n'
        '    lat.append(time.perf_counter() - t)\n'
        'el = time.perf_counter() - t0\n'
        'lat.sort()\n'
        'print(json.dumps({"rps": %d * %d / el, "p50_ms": lat[len(lat) // 2] * 1e3,'
        ' "p99_ms": lat[len(lat) * 99 // 100] * 1e3}))\n'
        % (SERVER, value, pipelines, PIPELINE, args.keys, op, pipelines, PIPELINE))
    return json.loads(in_client(['taskset', '-c', PLACEMENT.client_cpus, sys.executable, '-c', script]))


def get_calls():
    out = in_client(['redis-cli', '-h', SERVER, 'info', 'commandstats'])
    for line in out.splitlines():
        if line.startswith('cmdstat_get:'):
            return int(line.split('calls=')[1].split(',')[0])
    return 0


def side(args, attached):
    if attached and not erb_attached():
        playbook('deploy.yml')
    if not attached and erb_attached():
        playbook('rollback.yml')
    PLACEMENT.apply()  # the NAPI thread may be new after an attach or detach
    warm(args.keys, args.value)
    before = get_calls()
    res = benchmark(args)
    res['redis_get_calls'] = get_calls() - before
    res['erb'] = attached
    # pipelined: redis-benchmark -P PIPELINE, and a redis-py pipeline of PIPELINE GETs
    warm(args.keys, args.pipeline_value)
    res['P%d' % PIPELINE] = benchmark(args, PIPELINE, args.pipeline_value)
    res['redis_py_P%d' % PIPELINE] = pypipe(args, 'get', args.pipeline_value)
    return res


def plot(result, path):
    plt = benchplot.pyplot()
    if plt is None:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = ['Redis', 'Redis + ERB']
    med = result['median']
    a.bar(names, [med['plain']['rps'] / 1000, med['erb']['rps'] / 1000], color=['grey', 'tab:green'])
    a.set_ylabel('GET kRPS')
    a.set_title('throughput (x%.2f)' % result['ratio']['rps'])
    b.bar(names, [med['plain']['p99_ms'], med['erb']['p99_ms']], color=['grey', 'tab:green'])
    b.set_ylabel('p99 latency (ms)')
    b.set_title('p99 (x%.2f)' % result['ratio']['p99'])
    fig.suptitle('%d clients, %d-byte values, 16-byte keys, %s' %
                 (result['clients'], result['value_bytes'], result['machine']))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def parse_args(doc):
    """Options shared by the fleet benchmarks; refuses to run without root."""
    ap = argparse.ArgumentParser(description=doc.split('\n')[0])
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--requests', type=int, default=100000)
    ap.add_argument('--clients', type=int, default=50)
    ap.add_argument('--keys', type=int, default=10000)
    ap.add_argument('--value', type=int, default=100)
    ap.add_argument('--pipeline-value', type=int, default=32,
                    help='value bytes of the pipelined cases: 16 SETs, and 16 GET replies, fit one frame')
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit('run as root (network namespaces, BPF)')
    return args


def main():
    args = parse_args(__doc__)
    if args.clients < 50:
        print('note: fewer than 50 clients', file=sys.stderr)
    global PLACEMENT
    PLACEMENT = Placement()
    runs = []
    try:
        measure(args, runs)
    finally:
        PLACEMENT.undo()
    report(args, runs)


def measure(args, runs):
    for r in range(args.rounds):
        for attached in (True, False):
            t0 = time.time()
            res = side(args, attached)
            res['round'] = r
            runs.append(res)
            print('round %d %-6s %9.0f rps  p50 %.3f ms  p99 %.3f ms  GETs reaching Redis %d | '
                  '-P %d %9.0f rps | redis-py pipeline %8.0f rps  (%.0fs)'
                  % (r + 1, 'erb' if attached else 'plain', res['rps'], res['p50_ms'],
                     res['p99_ms'], res['redis_get_calls'], PIPELINE, res['P%d' % PIPELINE]['rps'],
                     res['redis_py_P%d' % PIPELINE]['rps'], time.time() - t0), flush=True)


def report(args, runs):
    med = {}
    for name, attached in (('erb', True), ('plain', False)):
        rs = [x for x in runs if x['erb'] == attached]
        med[name] = {k: statistics.median(x[k] for x in rs) for k in ('rps', 'p50_ms', 'p99_ms')}
    ratio = {'rps': med['erb']['rps'] / med['plain']['rps'],
             'p99': med['plain']['p99_ms'] / med['erb']['p99_ms']}
    for case in ('P%d' % PIPELINE, 'redis_py_P%d' % PIPELINE):
        for name, attached in (('erb', True), ('plain', False)):
            rs = [x[case] for x in runs if x['erb'] == attached]
            med[name][case] = {k: statistics.median(x[k] for x in rs) for k in ('rps', 'p50_ms', 'p99_ms')}
        ratio[case] = {'rps': med['erb'][case]['rps'] / med['plain'][case]['rps'],
                       'p99': med['plain'][case]['p99_ms'] / med['erb'][case]['p99_ms']}
    result = {'benchmark': 'GET', 'clients': args.clients, 'requests': args.requests,
              'keys': args.keys, 'value_bytes': args.value, 'key_bytes': 16,
              'pipeline': PIPELINE, 'pipeline_value_bytes': args.pipeline_value,
              'machine': '%d cores, veth in netns' % os.cpu_count(),
              'placement': {'server_cpu': PLACEMENT.server_cpu, 'client_cpus': PLACEMENT.client_cpus},
              'runs': runs, 'median': med, 'ratio': ratio,
              'when': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, 'get_throughput.json'), 'w') as f:
        json.dump(result, f, indent=2)
    plot(result, os.path.join(RESULTS, 'get_throughput.png'))
    print('\nmedian  plain %.0f rps p99 %.3f ms | erb %.0f rps p99 %.3f ms'
          % (med['plain']['rps'], med['plain']['p99_ms'], med['erb']['rps'], med['erb']['p99_ms']))
    print('ratio   throughput x%.2f   p99 latency %.2fx lower' % (ratio['rps'], ratio['p99']))
    for case, label in (('P%d' % PIPELINE, 'redis-benchmark -P %d' % PIPELINE),
                        ('redis_py_P%d' % PIPELINE, 'redis-py pipeline of %d' % PIPELINE)):
        print('%-26s plain %9.0f rps | erb %9.0f rps | throughput x%.2f, p99 %.2fx lower'
              % (label, med['plain'][case]['rps'], med['erb'][case]['rps'], ratio[case]['rps'],
                 ratio[case]['p99']))
    # leave the host as we found it: ERB attached (the demo's state)
    if not erb_attached():
        playbook('deploy.yml')


if __name__ == '__main__':
    main()
