# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The demo's workload and report (run by scripts/demo after the deployment).

For each host of the local fleet: from its client namespace, SET --keys keys through
Redis (which fills ERB's cache write-through), then GET every key --rounds times with
redis-py and check each reply against the value SET, then a short redis-benchmark GET
run. Before and after, read erb.booster.bpf_info's counters (through Ansible, inside the
host's namespace) and Redis's INFO commandstats (over its unix socket, which never
crosses the veth), and print what was answered in XDP and what reached Redis.

Also runnable alone on a fleet where deploy.yml ran:
    python3 scripts/erb_demo.py [--hosts 2] [--keys 200] [--rounds 10]
Exit status 1 when a host served no GET from XDP during the demo, or a reply differed
from the value SET.
"""

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLEET_DIR = '/run/erb/fleet'
PORT = 6379


def sh(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, LANG='C.UTF-8', LC_ALL='C.UTF-8'),
                       check=False, **kw)
    if p.returncode != 0:
        sys.exit('error: %s exited %d\n%s%s' % (' '.join(cmd), p.returncode, p.stdout, p.stderr))
    return p.stdout


def workload(host, keys, rounds, prefix):
    """Runs inside the client namespace: SET then GET with redis-py; prints a JSON summary."""
    import redis
    r = redis.Redis(host=host, port=PORT, socket_timeout=5)
    values = {('%s:%04d' % (prefix, i)).encode(): ('value-%d-%s' % (i, 'x' * (i % 64))).encode()
              for i in range(keys)}
    for k, v in values.items():
        if r.set(k, v) is not True:
            sys.exit('error: SET %r was not acknowledged' % k)
    gets = mismatches = 0
    for _unused in range(rounds):
        for k, v in values.items():
            got = r.get(k)
            gets += 1
            if got != v:
                mismatches += 1
                print('mismatch: GET %r returned %r, expected %r' % (k, got, v), file=sys.stderr)
    r.close()
    print(json.dumps({'sets': len(values), 'gets': gets, 'mismatches': mismatches}))


def info_counters(inventory):
    """erb.booster.bpf_info for every fleet host, through Ansible: {host: its interface's dict}."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_NOCOLOR='1')
    p = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible'), '-i', inventory, 'redis',
                        '--one-line', '-m', 'erb.booster.bpf_info',
                        '-a', 'interface={{ erb_interface }} bpffs_root={{ erb_bpffs_root }}'],
                       capture_output=True, text=True, env=env, cwd=REPO, check=False)
    out = {}
    for line in p.stdout.splitlines():
        host, sep, rest = line.partition(' | SUCCESS => ')
        if sep:
            out[host] = next(iter(json.loads(rest)['interfaces'].values()))
    if p.returncode != 0 or not out:
        sys.exit('error: erb.booster.bpf_info failed (rc %d)\n%s%s' % (p.returncode, p.stdout, p.stderr))
    return out


def commandstats(i):
    """{command: calls} from Redis's INFO commandstats, over the host's unix socket."""
    text = sh(['ip', 'netns', 'exec', 'erb-r%d' % i, 'redis-cli', '-s', '%s/r%d/redis.sock' % (FLEET_DIR, i),
               'INFO', 'commandstats'])
    stats = {}
    for line in text.splitlines():
        if line.startswith('cmdstat_'):
            name, rest = line[len('cmdstat_'):].split(':', 1)
            stats[name] = int(rest.split('calls=')[1].split(',')[0])
    return stats


def io_path(i):
    """Which I/O path applies the SETs answered in XDP: erb_redis (INFO erbredis) or erb-agent."""
    text = sh(['ip', 'netns', 'exec', 'erb-r%d' % i, 'redis-cli', '-s', '%s/r%d/redis.sock' % (FLEET_DIR, i),
               'INFO', 'erbredis'])
    fields = dict(line.split(':', 1) for line in text.splitlines() if ':' in line)
    if 'erbredis_applied' not in fields:
        return 'erb-agent (ring buffer)'
    return 'erb_redis in redis-server: %s SETs applied, %s keys invalidated' % (
        fields['erbredis_applied'].strip(), fields['erbredis_deleted'].strip())


def benchmark(i, keys, requests):
    """redis-benchmark GETs on keys it first SETs itself (key:__rand_int__); returns its summary."""
    base = ['ip', 'netns', 'exec', 'erb-c%d' % i, 'redis-benchmark', '-h', '10.250.%d.1' % i, '-p', str(PORT),
            '-r', str(keys), '-d', '64', '-c', '4', '-q']
    sh(base + ['-t', 'set', '-n', str(keys * 4)])
    return sh(base + ['-t', 'get', '-n', str(requests)]).strip().splitlines()[-1].strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--hosts', type=int, default=2)
    ap.add_argument('--keys', type=int, default=200)
    ap.add_argument('--rounds', type=int, default=10)
    ap.add_argument('--bench-requests', type=int, default=20000)
    ap.add_argument('--inventory', default=os.path.join(REPO, 'inventory', 'local'))
    ap.add_argument('--workload', metavar='HOST', help=argparse.SUPPRESS)
    ap.add_argument('--prefix', default='demo', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.workload:
        return workload(args.workload, args.keys, args.rounds, args.prefix)

    hosts = list(range(1, args.hosts + 1))
    before_info = info_counters(args.inventory)
    before_stats = {i: commandstats(i) for i in hosts}
    runs = {}
    for i in hosts:
        out = sh(['ip', 'netns', 'exec', 'erb-c%d' % i, sys.executable, os.path.abspath(__file__),
                  '--workload', '10.250.%d.1' % i, '--keys', str(args.keys), '--rounds', str(args.rounds)])
        runs[i] = json.loads(out.strip().splitlines()[-1])
    after_info = info_counters(args.inventory)
    after_stats = {i: commandstats(i) for i in hosts}
    bench = {i: benchmark(i, args.keys, args.bench_requests) for i in hosts} if args.bench_requests else {}
    final_info = info_counters(args.inventory) if bench else after_info
    final_stats = {i: commandstats(i) for i in hosts} if bench else after_stats

    ok = True
    print()
    print('ERB demo: GET workload from each client namespace, across the veth to its Redis host')
    print('=' * 88)
    for i in hosts:
        name = 'erb-r%d' % i
        b, a, f = before_info[name]['counters'], after_info[name]['counters'], final_info[name]['counters']
        run = runs[i]
        hits = a['hit'] - b['hit']
        redis_gets = after_stats[i].get('get', 0) - before_stats[i].get('get', 0)
        redis_sets = after_stats[i].get('set', 0) - before_stats[i].get('set', 0)
        print('%s (erbs%d, 10.250.%d.1:%d)' % (name, i, i, PORT))
        print('  redis-py workload: %d SET, %d GET sent; replies differing from the value SET: %d'
              % (run['sets'], run['gets'], run['mismatches']))
        print('  erb.booster.bpf_info counters (delta):  hit=%d  miss=%d  fill=%d  pass_outstanding=%d  '
              'pass_no_flow=%d' % (hits, a['miss'] - b['miss'], a['fill'] - b['fill'],
                                   a['pass_outstanding'] - b['pass_outstanding'],
                                   a['pass_no_flow'] - b['pass_no_flow']))
        print('  Redis INFO commandstats (delta):    cmdstat_get calls=%d  cmdstat_set calls=%d'
              % (redis_gets, redis_sets))
        print('  => %d of %d GETs answered in XDP and never reached Redis' % (run['gets'] - redis_gets, run['gets']))
        if i in bench:
            print('  redis-benchmark GET: %s' % bench[i])
            print('    hits during the benchmark: %d; GETs Redis executed: %d'
                  % (f['hit'] - a['hit'], final_stats[i].get('get', 0) - after_stats[i].get('get', 0)))
        moved = {k: f[k] - b[k] for k in sorted(f) if f[k] != b[k] and k not in ('rx_packets',)}
        print('  all counters that moved during the demo: %s'
              % ' '.join('%s=%d' % kv for kv in moved.items()))
        cache = final_info[name]['cache']
        print('  cache: %d valid of %d entries' % (cache['valid'], cache['entries']))
        print('  I/O path: %s' % io_path(i))
        if run['mismatches']:
            print('  FAIL: some GET replies differed from the values SET')
            ok = False
        total_hits = f['hit'] - b['hit']
        print('  GETs answered in XDP over the whole demo: %d' % total_hits)
        if total_hits <= 0:
            print('  FAIL: no GET was answered in XDP')
            ok = False
    print('=' * 88)
    print('demo %s' % ('passed: GET hits were served in XDP' if ok else 'FAILED'))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
