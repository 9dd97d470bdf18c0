# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Where the CPU goes under the chaos workload: ERB vs Redis alone, per operation, by task.

bench/chaos.py compares throughput; on this 2-vCPU machine both sides keep both CPUs busy
(the Python clients take most of them), so a throughput ratio is the inverse of a ratio of CPU
per operation, and this bench says whose CPU it is. The chaos workload
(tests/fault/chaos_workload.py, no faults) runs against erb-r1 (ERB deployed) and erb-r2
(Redis alone), one host at a time, in alternating rounds (A B, then B A, ...). In the middle
60% of each run the CPU time of every task is sampled (/proc/<pid>/stat) and grouped by
network namespace and name: the clients (the workload's processes in erb-c<i>), redis-server,
erb-agent (in erb-r<i>), and the machine's totals (/proc/stat: user, system, softirq, idle; on a
kernel without CONFIG_IRQ_TIME_ACCOUNTING softirq work is also charged to the task it interrupted);
with the context switches of redis-server and erb-agent (/proc/<pid>/status); per kind of client
(redis-py one command per round trip, the pipelining client, redis-cli) its operations per second
and its CPU per operation of its own (the mix of the two sides differs: a pipelined operation costs
a fraction of a round trip's, so the clients' CPU per operation of the whole moves with which client
got the CPUs); and for ERB its counters over the same window (commands answered in XDP: `hit` +
`set_fast`; passed to Redis: `cmds_passed`). Every figure is per operation (the workload's commands): microseconds of CPU,
switches, commands. Medians over rounds.

    .venv/bin/python bench/chaos_cpu.py [--rounds 4] [--seconds 10]

Needs root and the fleet up with ERB deployed on erb-r1 only (scripts/demo). Writes
bench/results/chaos_cpu.json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'bench'))
import set_mixed as sm  # noqa: E402  (erb_counters: ERB's counters on erb-r1)
from chaos import erb_attached  # noqa: E402

RESULTS = os.path.join(REPO, 'bench', 'results')
WORKLOAD = os.path.join(REPO, 'tests', 'fault', 'chaos_workload.py')
HZ = os.sysconf('SC_CLK_TCK')
STAT_FIELDS = ('user', 'nice', 'system', 'idle', 'iowait', 'irq', 'softirq', 'steal')
SIDES = {'erb': 1, 'alone': 2}


def netns_inode(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def tasks():
    """{pid: (name, netns inode, CPU seconds, context switches)} of every process."""
    out = {}
    for p in os.listdir('/proc'):
        if not p.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % p) as f:
                st = f.read()
            with open('/proc/%s/status' % p) as f:
                status = f.read()
            ns = os.stat('/proc/%s/ns/net' % p).st_ino
        except OSError:
            continue
        name = st[st.index('(') + 1:st.rindex(')')]
        fields = st[st.rindex(')') + 2:].split()
        switches = sum(int(line.split()[1]) for line in status.splitlines()
                       if line.startswith(('voluntary_ctxt_switches', 'nonvoluntary_ctxt_switches')))
        out[int(p)] = (name, ns, (int(fields[11]) + int(fields[12])) / HZ, switches)
    return out


def machine():
    with open('/proc/stat') as f:
        vals = f.readline().split()[1:1 + len(STAT_FIELDS)]
    return dict(zip(STAT_FIELDS, (int(v) / HZ for v in vals)))


def group(name, ns, server_ns, client_ns):
    """The task's group, or None (another host's, or the kernel's)."""
    if ns == client_ns:
        return 'clients'
    if ns == server_ns and name in ('redis-server', 'erb-agent'):
        return name
    return None


def client_kind(name):
    """The workload's client a task of the client namespace belongs to (chaos_workload.py names
    its client processes chaos-<client>; redis-cli is the cli client's), or None."""
    if name == 'redis-cli' or name == 'chaos-cli':
        return 'cli'
    if name == 'chaos-pipe':
        return 'pipe'
    if name.startswith('chaos-py'):
        return 'py'
    return None


def usage(before, after, server_ns, client_ns):
    """{group: [CPU seconds, switches]} between two tasks() snapshots (tasks alive in both);
    the clients' also per kind of client, as 'clients:<kind>'."""
    out = {}
    for pid, (name, ns, cpu, sw) in after.items():
        b = before.get(pid)
        if not b or b[0] != name:
            continue
        g = group(name, ns, server_ns, client_ns)
        if not g:
            continue
        kind = client_kind(name) if g == 'clients' else None
        for key in (g, 'clients:' + kind) if kind else (g,):
            acc = out.setdefault(key, [0.0, 0])
            acc[0] += cpu - b[2]
            acc[1] += sw - b[3]
    return out


def own_op_costs(grp, seconds, rates):
    """Microseconds of CPU per operation of its own, per kind of client ({kind: ops/s} in rates)."""
    return {kind: round(grp['clients:' + kind][0] / (seconds * r) * 1e6, 2)
            for kind, r in rates.items() if r and 'clients:' + kind in grp}


def per_op(grp, mach, seconds, rate):
    """Microseconds of CPU (and switches) per operation, from a window of `seconds` at `rate` ops/s."""
    ops = seconds * rate
    out = {'cpu_us': {g: round(v[0] / ops * 1e6, 2) for g, v in grp.items()},
           'switches': {g: round(v[1] / ops, 3) for g, v in grp.items()},
           'machine_us': {k: round(v / ops * 1e6, 2) for k, v in mach.items() if k != 'idle'}}
    out['busy_us'] = round(sum(out['machine_us'].values()), 2)
    out['idle_share'] = round(mach.get('idle', 0) / max(sum(mach.values()), 1e-9), 4)
    return out


def run_side(side, seconds, tag, out_dir):
    i = SIDES[side]
    server_ns, client_ns = netns_inode('/run/netns/erb-r%d' % i), netns_inode('/run/netns/erb-c%d' % i)
    if server_ns is None or client_ns is None:
        sys.exit('chaos_cpu: namespaces erb-r%d/erb-c%d not found: bring the fleet up (scripts/demo)' % (i, i))
    out = os.path.join(out_dir, '%s-%s.json' % (tag, side))
    p = subprocess.Popen(['ip', 'netns', 'exec', 'erb-c%d' % i, sys.executable, WORKLOAD, '--host', '10.250.%d.1' % i,
                          '--prefix', 'cpu:%d:%s:%s' % (time.time(), tag, side), '--seconds', str(seconds),
                          '--seed', '1', '--out', out],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(seconds * 0.2 + 1)
    k0 = sm.erb_counters() if side == 'erb' else {}
    t0, m0, s0 = tasks(), machine(), time.monotonic()
    time.sleep(seconds * 0.6)
    t1, m1, s1 = tasks(), machine(), time.monotonic()
    k1 = sm.erb_counters() if side == 'erb' else {}
    text, _unused = p.communicate(timeout=seconds + 120)
    if p.returncode != 0:
        sys.exit('chaos_cpu: the workload against erb-r%d failed (rc %s):\n%s' % (i, p.returncode, text[-3000:]))
    with open(out) as f:
        w = json.load(f)
    cl = w['clients'].values()
    ops = sum(c['ops'] for c in cl)
    wrong, errors = sum(c['wrong'] for c in cl), sum(c['errors'] for c in cl)
    rate = ops / w['seconds']
    grp = usage(t0, t1, server_ns, client_ns)
    kinds = {}
    for name, c in w['clients'].items():
        kind = 'py' if name.startswith('py') else name
        kinds[kind] = kinds.get(kind, 0) + c['ops'] / w['seconds']
    res = per_op({g: v for g, v in grp.items() if ':' not in g}, {k: m1[k] - m0[k] for k in m0}, s1 - s0, rate)
    res.update(ops=ops, ops_per_s=round(rate), wrong=wrong, errors=errors,
               client_ops_per_s={k: round(v) for k, v in kinds.items()},
               client_us_per_own_op=own_op_costs(grp, s1 - s0, kinds))
    if side == 'erb':
        window_ops = (s1 - s0) * rate
        res['commands'] = {k: round((k1.get(k, 0) - k0.get(k, 0)) / window_ops, 3)
                           for k in ('hit', 'set_fast', 'cmds_passed', 'hold', 'parked')}
    return res


def medians(runs):
    """The median of every figure over a side's rounds."""
    out = {}
    for key in ('cpu_us', 'switches', 'machine_us', 'commands', 'client_ops_per_s', 'client_us_per_own_op'):
        names = sorted({n for r in runs for n in r.get(key, {})})
        if not names:
            continue
        out[key] = {n: round(statistics.median(r[key].get(n, 0) for r in runs), 3) for n in names}
    for key in ('busy_us', 'idle_share', 'ops_per_s'):
        out[key] = statistics.median(r[key] for r in runs)
    return out


def table(result):
    e, a = result['median']['erb'], result['median']['alone']
    rows = [('ops/s', a['ops_per_s'], e['ops_per_s'], '%d')]
    rows += [('CPU per op, busy (us)', a['busy_us'], e['busy_us'], '%.1f')]
    rows += [('  %s (us)' % k, a['machine_us'].get(k, 0), e['machine_us'].get(k, 0), '%.1f')
             for k in ('user', 'system', 'softirq')]
    rows += [('  %s (us)' % g, a['cpu_us'].get(g, 0), e['cpu_us'].get(g, 0), '%.1f')
             for g in ('clients', 'redis-server', 'erb-agent')]
    rows += [('%s: context switches per op' % g, a['switches'].get(g, 0), e['switches'].get(g, 0), '%.3f')
             for g in ('clients', 'redis-server', 'erb-agent')]
    for kind in ('py', 'pipe', 'cli'):
        rows.append(('%s clients: ops/s' % kind, a.get('client_ops_per_s', {}).get(kind, 0),
                     e.get('client_ops_per_s', {}).get(kind, 0), '%d'))
        rows.append(('%s clients: CPU per own op (us)' % kind, a.get('client_us_per_own_op', {}).get(kind, 0),
                     e.get('client_us_per_own_op', {}).get(kind, 0), '%.1f'))
    lines = ['| per operation | Redis alone | ERB | ERB - alone |', '| --- | --- | --- | --- |']
    for name, x, y, fmt in rows:
        lines.append(('| %s | ' + fmt + ' | ' + fmt + ' | %+' + fmt[1:] + ' |') % (name, x, y, y - x))
    c = e.get('commands', {})
    lines.append('')
    answered = c.get('hit', 0) + c.get('set_fast', 0)
    lines.append('ERB, per operation: commands answered in XDP %.3f (hit %.3f, set_fast %.3f), passed to Redis '
                 '%.3f, held %.4f' % (answered, c.get('hit', 0), c.get('set_fast', 0), c.get('cmds_passed', 0),
                                      c.get('hold', 0)))
    return '\n'.join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--rounds', type=int, default=4, help='rounds of one run per side (default 4)')
    ap.add_argument('--seconds', type=float, default=10, help='seconds per run (default 10)')
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds < 3:
        ap.error('--rounds must be >= 1 and --seconds >= 3')
    started = time.time()
    if any(netns_inode('/run/netns/%s%d' % (ns, i)) is None for ns in ('erb-r', 'erb-c') for i in SIDES.values()):
        sys.exit('chaos_cpu: the fleet is not up (namespaces erb-r1, erb-c1, erb-r2, erb-c2): scripts/demo')
    if erb_attached(SIDES['alone']):
        sys.exit('chaos_cpu: erb-r2 must be Redis alone (an XDP program is on erbs2): '
                 'playbooks/rollback.yml --limit erb-r2')
    if not sm.erb_counters():   # also loads the loader before any run: the sampled windows stay where they are
        sys.exit('chaos_cpu: no ERB counters on erb-r1: deploy ERB there (scripts/demo)')
    runs = {'erb': [], 'alone': []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ('erb', 'alone') if r % 2 == 0 else ('alone', 'erb')
            for side in order:
                res = run_side(side, args.seconds, 'r%d' % r, tmp)
                runs[side].append(res)
                cpu = res['cpu_us']
                print('round %d/%d %-5s %6d ops/s, busy %.1f us/op (clients %.1f, redis-server %.1f, '
                      'erb-agent %.1f), wrong %d, errors %d, %.0f s so far' % (
                          r + 1, args.rounds, side, res['ops_per_s'], res['busy_us'], cpu.get('clients', 0),
                          cpu.get('redis-server', 0), cpu.get('erb-agent', 0), res['wrong'], res['errors'],
                          time.time() - started), flush=True)
    result = {'benchmark': 'chaos_cpu', 'rounds': args.rounds, 'seconds': args.seconds,
              'machine': '%d CPUs, veth in netns' % os.cpu_count(), 'runs': runs,
              'median': {side: medians(v) for side, v in runs.items()},
              'when': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, 'chaos_cpu.json')
    with open(path, 'w') as f:
        json.dump(result, f, indent=1)
    print(table(result))
    print('wrote %s in %.0f s' % (path, time.time() - started))
    bad = [r for v in runs.values() for r in v if r['wrong'] or r['errors']]
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
