# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The cost of an answer: server CPU per request, and erb_xdp's own time, ERB vs Redis alone.

What a client sharing this 2-core machine cannot cap: how much of the server
core one request takes. One run, side by side, on the local fleet host erb-r1
(redis-benchmark from erb-c1, 50 clients, 100-byte values, 10,000 keys):

- placement (both sides alike): the server core (the last CPU) runs
  redis-server, the threaded NAPI of the server's veth (erbs1) and erb-agent;
  redis-benchmark, this script and the client veth's NAPI (erbc1, threaded
  here so that the client's receive work is not done on the server core where
  the peer's XDP_TX or Redis's send raised it) run on the other CPUs;
- server CPU per request: busy time of the server core (the wall clock minus
  the core's cpuidle residency; /proc/stat's tick-sampled busy fields where
  there is no cpuidle) over the requests of the run; for SET the window ends when
  the agent has applied every acknowledged write, so its work is in it;
- bpf_stats (kernel.bpf_stats_enabled, on for the run, restored after):
  erb_xdp and erb_tc_egress ns per run and runs per request;
- for SET, the agent's CPU (schedstat of its threads) per write it applied
  (with erb_redis, files/rmod, the I/O path in the fleet's default deployment,
  the agent only assists and the applies are redis-server's own time);
- redis-server's own CPU (schedstat of its threads) per request, both sides:
  with ERB, for SET, what Redis spends executing the acknowledged writes the
  agent or erb_redis applies (Redis stays the source of truth: every fast SET
  runs there);
- irq_work IPIs per request (IWI in /proc/interrupts, all CPUs): the BPF ring
  buffer's wakeups of its consumer when a submit finds it caught up, a VM exit
  each on a VM; and the I/O path the ERB side ran with (erb_redis or erb-agent);
- the floor: bench/bpf/reflector.bpf.c, a stateless XDP answerer (every
  request segment turned around with a fixed reply of the same size, no flow
  state, parsing, cache or sequence mapping) attached in erb_xdp's place and
  driven by the same redis-benchmark runs: what veth, NAPI and XDP_TX cost
  per request on this core before any of ERB's work;
- the server veth's NAPI thread's CPU (schedstat) per request, both sides and
  the floor: veth receive, GRO, XDP (erb_xdp or the reflector) and XDP_TX;
- the bound: the least server CPU per request ERB could take if erb_xdp and
  erb_tc_egress cost nothing, and the CPU ratio to Redis alone it leaves
  reachable: for GET hits the floor's (Redis idle on both); for SET what
  redis-server and the agent spend per request with ERB, executing and
  applying the acknowledged writes (their own time on the server core, so a
  strict lower bound; the NAPI thread's share is left out, it shrinks as
  Redis and the agent keep the core busy and the NAPI thread batches more);
- idle: the server core's busy time with no load, per second (the noise of
  the rest of the machine in every figure).

Rounds alternate ERB / Redis alone; medians are reported, with the ratios.

    .venv/bin/python bench/cpu_cost.py [--rounds 2] [--requests 200000] [--clients 50]

Needs the fleet up with ERB deployed (scripts/demo). Writes bench/results/cpu_cost.json and .png
(cpu_cost-keys<N>.json and .png with --keys N other than 10,000).
"""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import get_throughput as gt  # noqa: E402  (fleet names, playbooks, Placement)
import set_mixed as sm  # noqa: E402  (erb counters, wait_applied, Redis calls)
import benchplot  # noqa: E402

REFLECTOR_SRC = os.path.join(gt.REPO, 'bench', 'bpf', 'reflector.bpf.c')
BUILD = os.path.join(gt.REPO, 'bench', 'build')
REFLECTOR_OBJ = os.path.join(BUILD, 'reflector.bpf.o')
CLIENT_VETH, SERVER_VETH = 'erbc1', 'erbs1'
REDIS_SOCKET = '/run/erb/fleet/r1/redis.sock'
TICK_NS = 1e9 / os.sysconf('SC_CLK_TCK')
OPS = ('get', 'set')


# -- placement ---------------------------------------------------------------

class Placement(gt.Placement):
    """bench/get_throughput.py's server core, plus: the client veth's NAPI threaded on
    the client CPUs, and erb-agent on the server core."""

    def __init__(self):
        super().__init__()
        self.client_threaded = gt.in_client(['cat', '/sys/class/net/%s/threaded' % CLIENT_VETH]).strip()

    def apply(self):
        super().apply()
        gt.in_client(['sh', '-c', 'echo 1 > /sys/class/net/%s/threaded' % CLIENT_VETH])
        for pid, comm in processes():
            if comm.startswith('napi/%s-' % CLIENT_VETH):
                gt.run(['taskset', '-pc', self.client_cpus, str(pid)])
        for pid in agent_pids():
            gt.run(['taskset', '-apc', self.server_cpu, str(pid)])

    def undo(self):
        path = '/sys/class/net/%s/threaded' % CLIENT_VETH
        if gt.in_client(['cat', path]).strip() != self.client_threaded:
            gt.in_client(['sh', '-c', 'echo %s > %s' % (self.client_threaded, path)])
        super().undo()


def processes():
    for line in gt.run(['ps', '-eo', 'pid=,comm=']).splitlines():
        pid, _sep, comm = line.strip().partition(' ')
        yield int(pid), comm.strip()


def agent_pids():
    """erb-agent processes serving erbs1 (not its supervisor)."""
    pids = []
    for pid, comm in processes():
        if comm != 'erb-agent':
            continue
        try:
            with open('/proc/%d/cmdline' % pid, 'rb') as f:
                argv = f.read().split(b'\0')
        except OSError:
            continue
        if any(SERVER_VETH.encode() in a for a in argv):
            pids.append(pid)
    return pids


def napi_pids():
    """The threaded NAPI kthreads of the server veth."""
    return [pid for pid, comm in processes() if comm.startswith('napi/%s-' % SERVER_VETH)]


# -- counters ----------------------------------------------------------------

def cpuidle_us(cpu):
    """Time the CPU spent idle (all cpuidle states, polling included), microseconds;
    None without cpuidle statistics."""
    base = '/sys/devices/system/cpu/cpu%s/cpuidle' % cpu
    try:
        states = [d for d in os.listdir(base) if d.startswith('state')]
        total = 0
        for d in states:
            with open(os.path.join(base, d, 'time')) as f:
                total += int(f.read())
        return total if states else None
    except OSError:
        return None


def cpu_busy_ns(cpu):
    """Busy time of the CPU so far (ns, any origin): the wall clock minus cpuidle's
    idle residency, exact to the microsecond (this VM's haltpoll driver keeps it); without
    cpuidle, /proc/stat's busy fields, which are sampled at the tick (HZ)."""
    idle = cpuidle_us(cpu)
    if idle is not None:
        return time.monotonic_ns() - idle * 1000
    with open('/proc/stat') as f:
        for line in f:
            parts = line.split()
            if parts[0] == 'cpu%s' % cpu:
                v = [int(x) for x in parts[1:]]
                return (sum(v[:8]) - v[3] - v[4]) * TICK_NS   # user..steal minus idle, iowait
    raise SystemExit('cpu%s not in /proc/stat' % cpu)


def task_ns(pids):
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir('/proc/%d/task' % pid)
        except OSError:
            continue
        for t in tasks:
            try:
                with open('/proc/%d/task/%s/schedstat' % (pid, t)) as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass
    return total


def prog_ids():
    """{'erb_xdp': id, 'erb_tc_egress': id} from the pinned links of erbs1."""
    ids = {}
    for name, link in (('erb_xdp', 'link_xdp'), ('erb_tc_egress', 'link_tc')):
        path = os.path.join(sm.PIN_DIR, link)
        if os.path.exists(path):
            ids[name] = json.loads(gt.run(['bpftool', '-j', 'link', 'show', 'pinned', path]))['prog_id']
    return ids


def prog_stats(ids):
    out = {}
    for name, pid in ids.items():
        p = json.loads(gt.run(['bpftool', '-j', 'prog', 'show', 'id', str(pid)]))
        out[name] = (p.get('run_time_ns', 0), p.get('run_cnt', 0))
    return out


def irq_work_interrupts():
    """IWI of /proc/interrupts over all CPUs: irq_work self-IPIs, among them the ring buffer's
    wakeups of its consumer (a VM exit each on this VM)."""
    with open('/proc/interrupts') as f:
        for ln in f:
            if ln.split(':', 1)[0].strip() == 'IWI':
                return sum(int(x) for x in ln.split(':', 1)[1].split() if x.isdigit())
    return 0


def erbredis_info():
    """INFO erbredis as a dict ({} without erb_redis loaded)."""
    out = gt.in_client(['redis-cli', '-h', gt.SERVER, 'info', 'erbredis'])
    return dict((k, int(v)) for k, _sep, v in (ln.strip().partition(':') for ln in out.splitlines())
                if k.startswith('erbredis_') and v.strip().isdigit())


def io_path():
    return 'erb_redis' if erbredis_info().get('erbredis_maps_current') == 1 else 'erb-agent'


def snapshot(ids, agents, napi):
    return {'cpu_ns': cpu_busy_ns(gt.PLACEMENT.server_cpu), 'progs': prog_stats(ids),
            'agent_ns': task_ns(agents), 'redis_ns': task_ns([gt.PLACEMENT.redis_pid]), 'napi_ns': task_ns(napi),
            'calls': sm.cmd_calls(), 'erb': sm.erb_counters(), 'iwi': irq_work_interrupts(),
            't': time.time()}


def bpf_stats_enabled(on=None):
    path = '/proc/sys/kernel/bpf_stats_enabled'
    with open(path) as f:
        old = f.read().strip()
    if on is not None:
        with open(path, 'w') as f:
            f.write(on)
    return old


# -- runs --------------------------------------------------------------------

def redis_benchmark(args, op):
    out = gt.in_client(['taskset', '-c', gt.PLACEMENT.client_cpus, 'redis-benchmark', '-h', gt.SERVER,
                        '-p', '6379', '-t', op, '-n', str(args.requests), '-c', str(args.clients),
                        '-r', str(args.keys), '-d', str(args.value), '--csv'])
    return sm.parse(out, op)


def point(args, op, attached):
    """One measured redis-benchmark run of op; the deltas around it."""
    ids = prog_ids() if attached else {}
    agents = agent_pids() if attached else []
    napi = napi_pids()
    sm.wait_applied()
    s0 = snapshot(ids, agents, napi)
    res = redis_benchmark(args, op)
    if op == 'set':
        sm.wait_applied()
    s1 = snapshot(ids, agents, napi)
    n = args.requests
    res.update(op=op, erb=attached, requests=n,
               server_us_per_req=(s1['cpu_ns'] - s0['cpu_ns']) / n / 1e3,
               redis_us_per_req=(s1['redis_ns'] - s0['redis_ns']) / n / 1e3,
               napi_us_per_req=(s1['napi_ns'] - s0['napi_ns']) / n / 1e3,
               window_s=s1['t'] - s0['t'], iwi_per_req=(s1['iwi'] - s0['iwi']) / n,
               redis_calls=s1['calls'].get(op, 0) - s0['calls'].get(op, 0))
    for name in ids:
        t0, c0 = s0['progs'][name]
        t1, c1 = s1['progs'][name]
        res[name] = {'ns_per_run': (t1 - t0) / (c1 - c0) if c1 > c0 else None,
                     'runs_per_req': (c1 - c0) / n}
    if attached:
        res['erb_counters'] = {k: s1['erb'].get(k, 0) - s0['erb'].get(k, 0)
                               for k in ('hit', 'miss', 'set_fast', 'pipelined', 'hold', 'rx_packets')}
        applied = res['redis_calls'] if op == 'set' else 0
        res['agent_us_per_write'] = ((s1['agent_ns'] - s0['agent_ns']) / applied / 1e3) if applied else None
        res['io_path'] = io_path()
    return res


def side(args, attached):
    if attached and not gt.erb_attached():
        gt.playbook('deploy.yml')
    if not attached and gt.erb_attached():
        gt.playbook('rollback.yml')
    gt.PLACEMENT.apply()   # new NAPI threads and agent after an attach or detach
    gt.warm(args.keys, args.value)
    sm.wait_applied()
    return [point(args, op, attached) for op in OPS]


def build_reflector():
    os.makedirs(BUILD, exist_ok=True)
    if (not os.path.exists(REFLECTOR_OBJ) or
            os.path.getmtime(REFLECTOR_OBJ) < os.path.getmtime(REFLECTOR_SRC)):
        gt.run(['clang', '-O2', '-g', '-target', 'bpf', '-Wall', '-Werror',
                '-I/usr/include/%s-linux-gnu' % os.uname().machine, '-c', REFLECTOR_SRC, '-o', REFLECTOR_OBJ])


def floor(args):
    """Server CPU per request with the stateless reflector answering redis-benchmark (ERB
    detached): GET and SET as in point(). Its connections are left half-known to Redis
    (it never saw their bytes), so they are closed with CLIENT KILL afterwards."""
    if gt.erb_attached():
        gt.playbook('rollback.yml')
    out = {}
    gt.in_host(['ip', 'link', 'set', 'dev', SERVER_VETH, 'xdpdrv', 'obj', REFLECTOR_OBJ, 'sec', 'xdp'])
    try:
        gt.PLACEMENT.apply()
        ids = {'reflect': json.loads(gt.in_host(['bpftool', '-j', 'net', 'show', 'dev', SERVER_VETH]))[0]['xdp'][0]['id']}
        napi = napi_pids()
        for op in OPS:
            c0, p0, n0 = cpu_busy_ns(gt.PLACEMENT.server_cpu), prog_stats(ids)['reflect'], task_ns(napi)
            res = redis_benchmark(args, op)
            c1, p1, n1 = cpu_busy_ns(gt.PLACEMENT.server_cpu), prog_stats(ids)['reflect'], task_ns(napi)
            res['server_us_per_req'] = (c1 - c0) / args.requests / 1e3
            res['napi_us_per_req'] = (n1 - n0) / args.requests / 1e3
            res['xdp_ns_per_run'] = (p1[0] - p0[0]) / (p1[1] - p0[1]) if p1[1] > p0[1] else None
            out[op] = res
    finally:
        gt.in_host(['ip', 'link', 'set', 'dev', SERVER_VETH, 'xdpdrv', 'off'])
        gt.run(['redis-cli', '-s', REDIS_SOCKET, 'CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes'])
    return out


def idle_us_per_s(seconds=3.0):
    c0 = cpu_busy_ns(gt.PLACEMENT.server_cpu)
    time.sleep(seconds)
    return (cpu_busy_ns(gt.PLACEMENT.server_cpu) - c0) / seconds / 1e3


# -- report ------------------------------------------------------------------

def med(rows, *path):
    vals = []
    for r in rows:
        v = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if v is not None:
            vals.append(v)
    return statistics.median(vals) if vals else None


def summarize(runs, floors):
    out = {}
    for op in OPS:
        plain = [r for r in runs if r['op'] == op and not r['erb']]
        erb = [r for r in runs if r['op'] == op and r['erb']]
        cols = ('rps', 'p50_ms', 'p99_ms', 'server_us_per_req', 'redis_us_per_req', 'napi_us_per_req', 'iwi_per_req')
        o = {'plain': {k: med(plain, k) for k in cols},
             'erb': {k: med(erb, k) for k in cols + ('agent_us_per_write',)}}
        o['erb']['io_path'] = ', '.join(sorted(set(r.get('io_path', 'erb-agent') for r in erb)))
        for prog in ('erb_xdp', 'erb_tc_egress'):
            o['erb'][prog] = {k: med(erb, prog, k) for k in ('ns_per_run', 'runs_per_req')}
        if o['plain']['server_us_per_req'] and o['erb']['server_us_per_req']:
            o['cpu_ratio'] = o['plain']['server_us_per_req'] / o['erb']['server_us_per_req']
            o['rps_ratio'] = o['erb']['rps'] / o['plain']['rps']
        o['floor'] = {k: med([f[op] for f in floors], k)
                      for k in ('rps', 'p99_ms', 'server_us_per_req', 'napi_us_per_req', 'xdp_ns_per_run')}
        o['bound'] = bound(op, o)
        out[op] = o
    return out


def bound(op, o):
    """The least server CPU per request ERB could take with erb_xdp and erb_tc_egress free
    (see the module's doc), and the CPU ratio to Redis alone it leaves reachable."""
    if op == 'get':
        us = o['floor']['server_us_per_req']
        what = 'the floor (reflector)'
    else:
        us = (o['erb'].get('redis_us_per_req') or 0) + (o['erb'].get('agent_us_per_write') or 0)
        what = ('redis-server executing the writes erb_redis applies' if o['erb']['io_path'] == 'erb_redis'
                else 'redis-server + erb-agent applying the writes')
    plain = o['plain']['server_us_per_req']
    if not us or not plain:
        return None
    return {'server_us_per_req': us, 'cpu_ratio': plain / us, 'what': what}


def plot(result, path):
    plt = benchplot.pyplot()
    if plt is None:
        return
    s = result['summary']
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels, vals, colors = [], [], []
    for op in OPS:
        labels += ['%s\nRedis' % op.upper(), '%s\nERB' % op.upper(), '%s\nfloor' % op.upper(),
                   '%s\nbound' % op.upper()]
        vals += [s[op]['plain']['server_us_per_req'], s[op]['erb']['server_us_per_req'],
                 s[op]['floor']['server_us_per_req'], (s[op]['bound'] or {}).get('server_us_per_req')]
        colors += ['grey', 'tab:green', 'tab:blue', 'tab:orange']
    a.bar(labels, [v or 0 for v in vals], color=colors)
    a.set_ylabel('server CPU per request (us)')
    a.set_title('GET x%.1f less, SET x%.1f less' % (s['get'].get('cpu_ratio', 0), s['set'].get('cpu_ratio', 0)))
    xl, xv = [], []
    for op in OPS:
        for prog in ('erb_xdp', 'erb_tc_egress'):
            v = s[op]['erb'][prog]['ns_per_run']
            xl.append('%s\n%s' % (op.upper(), prog.replace('erb_', '')))
            xv.append(v or 0)
    b.bar(xl, xv, color='tab:green')
    b.set_ylabel('ns per program run (bpf_stats)')
    fig.suptitle('%d clients, %d-byte values, %d keys, %s' % (result['clients'], result['value_bytes'],
                                                              result['keys'], result['machine']))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def line(r):
    x = r.get('erb_xdp') or {}
    t = r.get('erb_tc_egress') or {}
    s = '%-3s %-5s %8.0f rps p99 %.3f ms  server %6.2f us/req (NAPI %.2f)' % (
        r['op'].upper(), 'erb' if r['erb'] else 'plain', r['rps'], r['p99_ms'], r['server_us_per_req'],
        r['napi_us_per_req'])
    if r['erb']:
        s += '  erb_xdp %s ns x %.2f/req  tc %s ns x %.2f/req' % (
            '%.0f' % x['ns_per_run'] if x.get('ns_per_run') else '-', x.get('runs_per_req', 0),
            '%.0f' % t['ns_per_run'] if t.get('ns_per_run') else '-', t.get('runs_per_req', 0))
        if r.get('agent_us_per_write'):
            s += '  agent %.2f us/write' % r['agent_us_per_write']
        s += '  IWI %.3f/req (%s)' % (r['iwi_per_req'], r.get('io_path'))
    return s + '  redis-server %.2f us/req  Redis %s calls %d' % (r['redis_us_per_req'], r['op'].upper(),
                                                                  r['redis_calls'])


def main():
    args = gt.parse_args(__doc__)
    started = time.time()
    os.environ['PATH'] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', '')
    if not os.path.exists('/run/erb/fleet/r1/redis.pid'):
        raise SystemExit('the local fleet is not up: run scripts/demo (or bash inventory/local/fleet.sh up)')
    gt.PLACEMENT = Placement()
    lo, _sep, hi = gt.PLACEMENT.client_cpus.partition('-')
    os.sched_setaffinity(0, range(int(lo), int(hi or lo) + 1))   # this script stays off the server core
    build_reflector()
    old_stats = bpf_stats_enabled('1')
    runs, floors, idle = [], [], []
    try:
        for r in range(args.rounds):
            for attached in (True, False):
                for res in side(args, attached):
                    res['round'] = r
                    runs.append(res)
                    print('round %d %s' % (r + 1, line(res)), flush=True)
            f = floor(args)
            f['round'] = r
            floors.append(f)
            idle.append(idle_us_per_s())
            for op in OPS:
                print('round %d %s floor %8.0f rps p99 %.3f ms  server %6.2f us/req (NAPI %.2f)  reflector %s ns/run'
                      % (r + 1, op.upper(), f[op]['rps'], f[op]['p99_ms'], f[op]['server_us_per_req'],
                         f[op]['napi_us_per_req'],
                         '%.0f' % f[op]['xdp_ns_per_run'] if f[op]['xdp_ns_per_run'] else '-'), flush=True)
            print('round %d idle server core %.0f us/s' % (r + 1, idle[-1]), flush=True)
    finally:
        bpf_stats_enabled(old_stats)
        gt.PLACEMENT.undo()
        if not gt.erb_attached():
            gt.playbook('deploy.yml')   # as found: ERB attached (the demo's state)
    summary = summarize(runs, floors)
    result = {'benchmark': 'server CPU per request', 'clients': args.clients, 'requests': args.requests,
              'keys': args.keys, 'value_bytes': args.value, 'key_bytes': 16,
              'machine': '%d cores, veth in netns' % os.cpu_count(),
              'placement': {'server_cpu': gt.PLACEMENT.server_cpu, 'client_cpus': gt.PLACEMENT.client_cpus},
              'idle_server_us_per_s': statistics.median(idle), 'runs': runs, 'floors': floors,
              'summary': summary, 'when': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
    os.makedirs(gt.RESULTS, exist_ok=True)
    name = 'cpu_cost' if args.keys == 10000 else 'cpu_cost-keys%d' % args.keys
    with open(os.path.join(gt.RESULTS, name + '.json'), 'w') as f:
        json.dump(result, f, indent=2)
    plot(result, os.path.join(gt.RESULTS, name + '.png'))
    print('\n%-4s %-28s %-28s %-28s %s' % ('', 'Redis alone', 'ERB', 'floor (reflector)', 'ERB erb_xdp / erb_tc_egress'))
    for op in OPS:
        s = summary[op]
        x, t = s['erb']['erb_xdp'], s['erb']['erb_tc_egress']
        print('%-4s %7.0f rps %6.2f us/req   %7.0f rps %6.2f us/req   %7.0f rps %6.2f us/req   '
              '%s ns x %.2f / %s ns x %.2f per request   CPU x%.2f less%s'
              % (op.upper(), s['plain']['rps'], s['plain']['server_us_per_req'], s['erb']['rps'],
                 s['erb']['server_us_per_req'], s['floor']['rps'], s['floor']['server_us_per_req'],
                 '%.0f' % x['ns_per_run'] if x['ns_per_run'] else '-',
                 x['runs_per_req'] or 0, '%.0f' % t['ns_per_run'] if t['ns_per_run'] else '-',
                 t['runs_per_req'] or 0, s.get('cpu_ratio', 0),
                 ('   agent %.2f us/write' % s['erb']['agent_us_per_write'])
                 if s['erb'].get('agent_us_per_write') else '') +
              '   irq_work IPIs %.3f/req (I/O path: %s)' % (s['erb']['iwi_per_req'] or 0, s['erb']['io_path']))
    refl = summary['get']['floor']['xdp_ns_per_run']
    for op in OPS:
        s, b = summary[op], summary[op]['bound']
        if b:
            print('%-4s redis-server %.2f us/req alone, %.2f with ERB; with erb_xdp and erb_tc_egress free, '
                  'ERB would still take %.2f us/req (%s): at most CPU x%.2f less'
                  % (op.upper(), s['plain']['redis_us_per_req'] or 0, s['erb']['redis_us_per_req'] or 0,
                     b['server_us_per_req'], b['what'], b['cpu_ratio']))
    print('floor: bench/bpf/reflector.bpf.c answering the same redis-benchmark statelessly, %s ns per run '
          '(GET); idle server core %.0f us/s' % ('%.0f' % refl if refl else '-', result['idle_server_us_per_s']))
    print('total %.0f s; bench/results/%s.json, %s.png' % (time.time() - started, name, name))


if __name__ == '__main__':
    main()
