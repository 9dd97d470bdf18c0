# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Where ERB's BPF time goes: perf samples per BPF program, callback and helper, per request.

A profile, not a benchmark: on the local fleet host erb-r1 (ERB deployed),
each load runs from erb-c1 while `perf record -a -g -e cpu-clock` samples both
CPUs with their call chains; the samples of every BPF program (erb_xdp,
erb_tc_egress, their global functions and bpf_loop callbacks, which perf names
bpf_prog_<tag>_<name>) and of the helpers they call are turned into
nanoseconds per request:

    share of all samples x (CPUs x seconds sampled) / requests in those seconds

Those are self figures of symbols named like BPF programs and helpers. The
call chains give the whole of it: every sample with erb_xdp or erb_tc_egress
in its chain, whatever kernel function it was in (hash map code, memcpy, the
interrupt a ring buffer wakeup raises), with the leaf functions of those
samples;

and, for the BPF programs that cost most, the offsets in their JIT image
that took the most samples, with their source lines (bench/jitlines.py): one
offset taking most of a program's samples is a stall (a cache miss on the load
at or just before it), spread samples are work.

Loads (redis-benchmark, 10,000 keys, 100-byte values):
  get      GET hits, 50 connections (keys written first: SET fills the cache)
  set      SETs of cached keys, 50 connections (the fast-SET path: XDP answers, erb-agent applies)
  incr     INCR of uncached keys, 50 connections (passed writes)
  incr-p16 INCR, 10 connections pipelining 16 (passed writes, many per segment)

    .venv/bin/python bench/profile.py [--loads get,set,incr,incr-p16] [--seconds 8] [--keys 10000]

Needs root, perf (apt-get install linux-perf) and the fleet up with ERB
deployed (scripts/demo). Writes bench/results/profile.json (profile-keys<N>.json with --keys N).
"""
import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import jitlines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'bench', 'results')
SERVER, CLIENT, ADDR = 'erb-r1', 'erb-c1', '10.250.1.1'
LOADS = {
    'get': ['-t', 'get', '-c', '50', '-n', '5000000'],
    'set': ['-t', 'set', '-c', '50', '-n', '5000000'],
    'incr': ['-t', 'incr', '-c', '50', '-n', '5000000'],
    'incr-p16': ['-t', 'incr', '-c', '10', '-P', '16', '-n', '50000000'],
}
# kernel functions the BPF programs call (helpers and what they run)
# helpers and what they call; not LSM hooks, nor the verifier (a program loaded meanwhile elsewhere)
PROGRAM = re.compile(r'^bpf_prog_[0-9a-f]+_(erb_xdp|erb_tc_egress)$')
HELPERS = re.compile(r'^(bpf_(?!lsm_|verifier_|check$)|__bpf_|copy_from_kernel_nofault$|csum_partial$)')


def sh(cmd, stderr=subprocess.PIPE):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=stderr, text=True).stdout


def preflight():
    if os.geteuid() != 0:
        raise SystemExit('bench/profile.py needs root (perf -a, network namespaces)')
    if not shutil.which('perf'):
        raise SystemExit('bench/profile.py needs perf: apt-get install linux-perf')
    if not shutil.which('redis-benchmark'):
        raise SystemExit('bench/profile.py needs redis-benchmark: apt-get install redis-tools')
    names = sh(['ip', 'netns', 'list'])
    if SERVER not in names or CLIENT not in names:
        raise SystemExit('the local fleet is not up: run scripts/demo (or inventory/local/fleet.sh up 2 and '
                         'deploy with ansible-playbook -i inventory/local playbooks/deploy.yml)')
    link = sh(['ip', 'netns', 'exec', SERVER, 'ip', 'link', 'show', 'erbs1'])
    if 'prog/xdp' not in link:
        raise SystemExit('ERB is not attached on %s (no XDP program on erbs1): deploy it first' % SERVER)


KEYS = 10000   # default key space of the loads (--keys)


def bench_cmd(args, keys):
    return ['ip', 'netns', 'exec', CLIENT, 'redis-benchmark', '-h', ADDR, '-r', str(keys), '-d', '100', '-q'] + args


def rps_of(text):
    """The rate redis-benchmark printed: its summary, or (stopped before one) its last
    progress line's overall rate."""
    text = text.replace('\r', '\n')
    found = re.findall(r'([0-9.]+) requests per second', text) or re.findall(r'rps=[0-9.]+ \(overall: ([0-9.]+)\)', text)
    return float(found[-1]) if found else None


def stacks(data):
    """Every sample's call chain, leaf first, as (symbol, offset) frames."""
    out = sh(['perf', 'script', '-i', data, '-F', 'ip,sym,symoff'], stderr=subprocess.DEVNULL)
    chain = []
    for line in out.splitlines() + ['']:
        parts = line.split()
        if not parts:
            if chain:
                yield chain
            chain = []
        elif len(parts) >= 2 and '+0x' in parts[-1]:
            chain.append(tuple(parts[-1].rsplit('+', 1)))
        else:
            chain.append((parts[-1], None))


def hot_offsets(chains, syms):
    """Per symbol of syms, samples per JIT offset where it was the leaf (its own work)."""
    counts = collections.defaultdict(collections.Counter)
    for chain in chains:
        sym, off = chain[0]
        if sym in syms and off:
            counts[sym][off] += 1
    return dict(counts)


def under_programs(chains):
    """Samples inside each attached program (erb_xdp, erb_tc_egress) with everything it
    calls, kernel functions included (the hash map code, memcpy, an IPI raised by a
    ring buffer wakeup), and the leaf symbols of those samples."""
    inside, leaves = collections.Counter(), collections.Counter()
    for chain in chains:
        progs = [m.group(1) for m in (PROGRAM.match(sym) for sym, _off in chain) if m]
        if progs:
            inside[progs[-1]] += 1
            leaves[chain[0][0]] += 1
    return inside, leaves


def profile(name, seconds, tmp, keys):
    load = LOADS[name]
    # the keys GETs hit: written once (fills)
    subprocess.run(bench_cmd(['-t', 'set', '-n', '30000'], keys), check=True, capture_output=True)
    b = subprocess.Popen(bench_cmd(load, keys), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    data = os.path.join(tmp, '%s.data' % name)
    try:
        time.sleep(1.5)
        sh(['perf', 'record', '-a', '-g', '-F', '4999', '-e', 'cpu-clock', '-o', data, '--', 'sleep', str(seconds)],
           stderr=subprocess.STDOUT)
    finally:
        b.terminate()
        text = b.communicate()[0]
    rps = rps_of(text)
    if not rps:
        raise SystemExit('%s: redis-benchmark printed no rate:\n%s' % (name, text[-2000:]))
    ncpu = os.cpu_count()
    per_req = 1e9 * ncpu / rps          # ns of all CPUs per request
    chains = list(stacks(data))
    nsamples = len(chains) or 1
    # each symbol's own samples (where it was the leaf), as a share of all samples
    own = collections.Counter(chain[0][0] for chain in chains)
    bpf = [(s, 100.0 * n / nsamples) for s, n in own.most_common() if s.startswith('bpf_prog_') or HELPERS.match(s)]
    top = [s for s, _p in bpf if s.startswith('bpf_prog_')][:3]
    hot = hot_offsets(chains, set(top))
    inside, leaves = under_programs(chains)
    res = {'load': ' '.join(load), 'rps': rps, 'cpu_ns_per_request': per_req, 'symbols': [], 'hot': {},
           'programs': {}, 'under_programs': []}
    for s, p in bpf:
        res['symbols'].append({'symbol': s, 'share_pct': p, 'ns_per_request': p / 100 * per_req})
    for prog, n in sorted(inside.items()):
        res['programs'][prog] = {'share_pct': 100.0 * n / nsamples, 'ns_per_request': n / nsamples * per_req}
    for s, n in leaves.most_common(20):
        res['under_programs'].append({'symbol': s, 'share_pct': 100.0 * n / nsamples,
                                      'ns_per_request': n / nsamples * per_req})
    lines = jitlines.LineMap()     # the programs are loaded now: their JIT addresses are valid
    for s in top:
        c = hot.get(s, collections.Counter())
        total = sum(c.values()) or 1
        res['hot'][s] = []
        for o, n in c.most_common(3):
            where = lines.line(s, int(o, 16))
            res['hot'][s].append({'offset': o, 'share_pct': 100.0 * n / total,
                                  'line': '%s  %s' % where if where else None})
    return res


def bpf_total(res):
    """ns per request of every BPF program and helper of a profile() result."""
    return sum(r['ns_per_request'] for r in res['symbols'])


def show(res, name):
    print('\n== %s: %s, %d keys, %.0f req/s, %.0f ns of CPU per request (all CPUs)'
          % (name, res['load'], res['keys'], res['rps'], res['cpu_ns_per_request']))
    for r in res['symbols']:
        if r['ns_per_request'] >= 1:
            print('  %-48s %5.2f%%  %6.0f ns/req' % (r['symbol'], r['share_pct'], r['ns_per_request']))
    print('  %-48s         %6.0f ns/req' % ('BPF programs and helpers, total', bpf_total(res)))
    for prog, r in sorted(res['programs'].items()):
        print('  %-48s         %6.0f ns/req' % (prog + ' with all it calls (call chains)', r['ns_per_request']))
    if res['under_programs']:
        print('  where that time is (the leaf function of those samples):')
        for r in res['under_programs']:
            if r['ns_per_request'] >= 5:
                print('    %-46s %5.2f%%  %6.0f ns/req' % (r['symbol'], r['share_pct'], r['ns_per_request']))
    for s, offs in res['hot'].items():
        print('  hottest in %s:' % s)
        for o in offs:
            print('    +%-7s %3.0f%%  %s' % (o['offset'], o['share_pct'], o['line'] or '(no line info)'))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--loads', default='get,set,incr,incr-p16', help='comma-separated: %s' % ', '.join(LOADS))
    ap.add_argument('--keys', type=int, default=KEYS,
                    help='key space (redis-benchmark -r; default %(default)s): fewer keys, fewer cache '
                         'and TLB misses in the cache array')
    ap.add_argument('--seconds', type=float, default=8.0, help='perf sampling time per load (default 8)')
    args = ap.parse_args()
    if args.keys < 1:
        raise SystemExit('--keys must be at least 1')
    loads = [n for n in args.loads.split(',') if n]
    bad = [n for n in loads if n not in LOADS]
    if bad:
        raise SystemExit('unknown load(s) %s: choose from %s' % (', '.join(bad), ', '.join(LOADS)))
    preflight()
    started = time.time()
    out = {}
    with tempfile.TemporaryDirectory(prefix='erb-profile-') as tmp:
        for i, name in enumerate(loads):
            print('[%d/%d] %s: %.0f s of samples ...' % (i + 1, len(loads), name, args.seconds), flush=True)
            out[name] = dict(profile(name, args.seconds, tmp, args.keys), keys=args.keys)
            show(out[name], name)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, 'profile.json' if args.keys == KEYS else 'profile-keys%d.json' % args.keys)
    with open(path, 'w') as fh:
        json.dump(out, fh, indent=1, sort_keys=True)
    print('\ntotal %.0f s; %s' % (time.time() - started, os.path.relpath(path, REPO)))


if __name__ == '__main__':
    sys.exit(main())
