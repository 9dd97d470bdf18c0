# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Two builds of the data plane, side by side in one run: BPF ns per request of each (bench/profile.py).

A profile on one day is not comparable with one on another (this machine's speed varies by
tens of percent between runs). This deploys two builds of files/bpf on the local fleet host
erb-r1 in turn, A B B A per round (drift cancels), profiles the same loads under each and
prints, per load, each build's BPF ns per request (all BPF programs and the helpers they call),
server CPU per request and throughput, means over the rounds, and the ratio B / A.

    .venv/bin/python bench/ab_profile.py [--base REV] [--loads set,incr] [--rounds 2] [--seconds 6]

A is files/bpf of git revision --base (default HEAD), built in a temporary directory; B is the
working tree's files/bpf (`make -C files/bpf`). Each deployment is the role's
(playbooks/deploy.yml with erb_bpf_object_src), after playbooks/rollback.yml, so that no state
of one build is reused by the other. The builds must share erb.h's layout version (the
loader is the working tree's). Needs root, perf and the fleet up (scripts/demo); writes
bench/results/ab_profile.json.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests'))
import profile as erbprofile  # noqa: E402  bench/profile.py
from conftest import run_playbook  # noqa: E402

REPO = erbprofile.REPO
HOST = 'erb-r1'


def build_base(rev, tmp):
    """files/bpf of rev, built in tmp; the directory holding its erb.bpf.o."""
    src = os.path.join(tmp, 'base')
    os.makedirs(src)
    archive = subprocess.run(['git', '-C', REPO, 'archive', rev, 'files/bpf'], stdout=subprocess.PIPE, check=True)
    subprocess.run(['tar', '-x', '-C', src], input=archive.stdout, check=True)
    subprocess.run(['make', '-s', '-C', os.path.join(src, 'files', 'bpf'), 'all'], check=True)
    return os.path.join(src, 'files', 'bpf')


def deploy(objdir):
    for book, extra in (('rollback.yml', {}), ('deploy.yml', {'erb_bpf_object_src': os.path.join(objdir, 'erb.bpf.o')})):
        r = run_playbook(book, extra_vars=extra, limit=HOST)
        if r.rc:
            raise SystemExit('%s failed on %s (rc %d):\n%s' % (book, HOST, r.rc, r.stdout[-3000:]))


def mean(xs):
    return sum(xs) / len(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--base', default='HEAD', help='git revision of build A (default HEAD)')
    ap.add_argument('--loads', default='get,set,incr', help='comma-separated: %s' % ', '.join(erbprofile.LOADS))
    ap.add_argument('--rounds', type=int, default=2, help='A B B A rounds (default 2)')
    ap.add_argument('--seconds', type=float, default=6.0, help='perf sampling time per load (default 6)')
    ap.add_argument('--keys', type=int, default=erbprofile.KEYS, help='key space (default %(default)s)')
    args = ap.parse_args()
    loads = [n for n in args.loads.split(',') if n]
    bad = [n for n in loads if n not in erbprofile.LOADS]
    if bad or args.rounds < 1 or args.keys < 1:
        raise SystemExit('bad arguments: loads %s, rounds %d, keys %d'
                         % (', '.join(bad) or 'ok', args.rounds, args.keys))
    erbprofile.preflight()
    started = time.time()
    runs = {'A': {n: [] for n in loads}, 'B': {n: [] for n in loads}}
    with tempfile.TemporaryDirectory(prefix='erb-ab-') as tmp:
        builds = {'A': build_base(args.base, tmp), 'B': os.path.join(REPO, 'files', 'bpf')}
        subprocess.run(['make', '-s', '-C', builds['B'], 'all'], check=True)
        order = [b for _unused in range(args.rounds) for b in ('A', 'B', 'B', 'A')]
        for i, b in enumerate(order):
            print('[%d/%d] build %s: deploying, then %s' % (i + 1, len(order), b, ', '.join(loads)), flush=True)
            deploy(builds[b])
            for name in loads:
                res = erbprofile.profile(name, args.seconds, tmp, args.keys)
                ns = erbprofile.bpf_total(res)
                runs[b][name].append({'bpf_ns': ns, 'cpu_ns': res['cpu_ns_per_request'], 'rps': res['rps'],
                                      'symbols': res['symbols']})
                print('    %-8s BPF %5.0f ns/req, server+client CPU %6.0f ns/req, %6.0f req/s'
                      % (name, ns, res['cpu_ns_per_request'], res['rps']), flush=True)
        deploy(builds['B'])
    out = {'base': args.base, 'rounds': args.rounds, 'seconds': args.seconds, 'keys': args.keys, 'loads': {}}
    print('\n%-8s %12s %12s %8s   %s' % ('load', 'A BPF ns', 'B BPF ns', 'B / A', 'CPU ns/req A -> B, req/s A -> B'))
    for name in loads:
        a, b = runs['A'][name], runs['B'][name]
        row = {k: {'A': mean([r[k] for r in a]), 'B': mean([r[k] for r in b])} for k in ('bpf_ns', 'cpu_ns', 'rps')}
        row['ratio_bpf'] = row['bpf_ns']['B'] / row['bpf_ns']['A']
        row['runs'] = {'A': a, 'B': b}
        out['loads'][name] = row
        print('%-8s %12.0f %12.0f %8.2f   %.0f -> %.0f, %.0f -> %.0f'
              % (name, row['bpf_ns']['A'], row['bpf_ns']['B'], row['ratio_bpf'], row['cpu_ns']['A'],
                 row['cpu_ns']['B'], row['rps']['A'], row['rps']['B']))
    path = os.path.join(erbprofile.RESULTS, 'ab_profile.json')
    with open(path, 'w') as fh:
        json.dump(out, fh, indent=1, sort_keys=True)
    print('\ntotal %.0f s; %s (build B left deployed)' % (time.time() - started, os.path.relpath(path, REPO)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
