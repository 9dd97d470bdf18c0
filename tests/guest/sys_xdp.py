# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""ERB on the system guest's one-host fleet (Debian's 6.1 kernel, erb_io loaded),
run by tests/guest/sys-test.sh inside the client namespace erb-c1.

    sys_xdp.py sets TAG N        N SETs of fresh keys over TCP to the Redis host,
                                 each checked (+OK, then GET).
    sys_xdp.py delivered TAG SINK  waits until those are delivered: SINK=apply ->
                                 Redis has every value (read over its unix socket);
                                 SINK=aof -> every value is in Redis's AOF file.
    sys_xdp.py check TAG         after a Redis restart: how many of TAG's values
                                 Redis has (they came back from the AOF).
    sys_xdp.py bench TAG [N]     redis-benchmark SET (N requests, default 10000)
                                 against the Redis host.

The Redis host is erb-r1, or erb-r<ERB_HOST> (run the script in erb-c<ERB_HOST>).

Prints "ERB-V name value" lines (tests/kmod/test_kmod_sys_guest.py reads them)
and leaves details in /erb-out/xdp-TAG-*.json.
"""

import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'loader'))
from collection_path import ensure_collection_path  # noqa: E402

ensure_collection_path()

import redis  # noqa: E402

from ansible_collections.erb.booster.plugins.module_utils import erb_loader  # noqa: E402
from ansible_collections.erb.booster.plugins.module_utils import libbpf  # noqa: E402

HOST_N = int(os.environ.get('ERB_HOST', '1'))
HOST = '10.250.%d.1' % HOST_N
FLEET = '/run/erb/fleet/r%d' % HOST_N
SOCK = FLEET + '/redis.sock'
PIN_DIR = '/run/erb/bpffs/erb/erb-r%d/erbs%d' % (HOST_N, HOST_N)
KSTATS = '/sys/module/erb_io/stats'
OUT = '/erb-out'
DELIVERY_TIMEOUT_S = 120
# 10000 keys: the cache (65536 entries, no eviction) stays far from full, so
# every SET can take the fast path
BENCH = ['-t', 'set', '-c', '20', '-r', '10000', '-d', '32', '--csv']
BENCH_N = 10000
BENCH_TIMEOUT_S = 240


def v(name, value):
    print('ERB-V %s %s' % (name, value), flush=True)


def erb_stats():
    fd = erb_loader.open_pinned(os.path.join(PIN_DIR, 'map_erb_stats'))
    if fd is None:
        return {}
    with libbpf.fd_closing(fd):
        return erb_loader.read_stats(fd)


def kstats():
    if not os.path.isdir(KSTATS):
        return {}
    out = {}
    for name in os.listdir(KSTATS):
        with open(os.path.join(KSTATS, name)) as f:
            out[name] = int(f.read().strip() or 0)
    return out


def delta(before, after):
    return dict((k, after[k] - before.get(k, 0)) for k in after)


def aof_text(local):
    """Every AOF file of the fleet's Redis (Redis 7 keeps them in its appenddirname)."""
    d = os.path.join(local.config_get('dir')['dir'], local.config_get('appenddirname')['appenddirname'])
    text = b''
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if name.endswith('.aof'):
            with open(os.path.join(d, name), 'rb') as f:
                text += f.read()
    return text


def aof_has(text, key, value):
    k, val = key.encode(), value.encode()
    return (b'$%d\r\n%s\r\n$%d\r\n%s\r\n' % (len(k), k, len(val), val)) in text


def in_redis(local, values):
    """How many of values (key -> value) Redis holds, read over its unix socket."""
    got = local.mget(list(values))
    return sum(1 for key, g in zip(values, got) if g == values[key].encode())


def _save(tag, name, obj):
    with open(os.path.join(OUT, 'xdp-%s-%s.json' % (tag, name)), 'w') as f:
        json.dump(obj, f, indent=1, sort_keys=True)


def _load(tag, name):
    with open(os.path.join(OUT, 'xdp-%s-%s.json' % (tag, name))) as f:
        return json.load(f)


def cmd_sets(tag, n):
    """n SETs of fresh keys over TCP, each answered +OK and read back by GET."""
    values = dict(('%s:%d' % (tag, i), 'v%d-%s' % (i, os.urandom(6).hex())) for i in range(n))
    s0, k0 = erb_stats(), kstats()
    _save(tag, 'values', values)
    _save(tag, 'before', {'erb_stats': s0, 'erb_io_stats': k0, 't0': time.time()})
    r = redis.Redis(host=HOST, port=6379, socket_timeout=10)
    wrong = 0
    for key, value in values.items():
        if r.set(key, value) is not True or r.get(key) != value.encode():
            wrong += 1
    d = delta(s0, erb_stats())
    v('%s_wrong' % tag, wrong)
    v('%s_set_fast' % tag, d.get('set_fast', 0))
    v('%s_set_pass_full' % tag, d.get('set_pass_queue_full', 0))
    v('%s_queued' % tag, kstats().get('queued', 0))


def cmd_delivered(tag, sink):
    """Wait until every value of `sets TAG` is in Redis (apply) or in its AOF
    file (aof), at most DELIVERY_TIMEOUT_S; report what erb_io did meanwhile."""
    values, before = _load(tag, 'values'), _load(tag, 'before')
    local = redis.Redis(unix_socket_path=SOCK, socket_timeout=10)
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    while True:
        if sink == 'apply':
            delivered = in_redis(local, values)
        else:
            text = aof_text(local)
            delivered = sum(1 for key, value in values.items() if aof_has(text, key, value))
        if delivered == len(values) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    result = {'n': len(values), 'sink': sink, 'delivered': delivered, 'deliver_s': time.time() - before['t0'],
              'erb_stats': delta(before['erb_stats'], erb_stats()),
              'erb_io_stats': delta(before['erb_io_stats'], kstats()), 'dbsize': local.dbsize()}
    _save(tag, 'result', result)
    v('%s_delivered' % tag, delivered)
    v('%s_deliver_s' % tag, '%.2f' % result['deliver_s'])


def cmd_check(tag):
    values = _load(tag, 'values')
    local = redis.Redis(unix_socket_path=SOCK, socket_timeout=10)
    v('%s_after_restart' % tag, in_redis(local, values))
    v('%s_dbsize_after_restart' % tag, local.dbsize())


def busy_jiffies():
    """Non-idle CPU time of the whole machine (all CPUs), in USER_HZ ticks."""
    with open('/proc/stat') as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    return sum(cpu) - cpu[3] - cpu[4]  # minus idle and iowait


def cmd_bench(tag, n=BENCH_N):
    s0, k0, c0 = erb_stats(), kstats(), busy_jiffies()
    try:
        p = subprocess.run(['redis-benchmark', '-h', HOST, '-n', str(n)] + BENCH, capture_output=True, text=True,
                           timeout=BENCH_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        v('bench_%s_error' % tag, json.dumps('no result within %d s: %s' % (BENCH_TIMEOUT_S, (e.stdout or b'')[-300:])))
        return
    m = re.search(r'^"SET","([0-9.]+)"', p.stdout, re.M)
    if p.returncode != 0 or not m:
        v('bench_%s_error' % tag, json.dumps(p.stdout[-300:] + p.stderr[-300:]))
        return
    busy = busy_jiffies() - c0
    d, kd = delta(s0, erb_stats()), delta(k0, kstats())
    v('bench_%s_rps' % tag, m.group(1))
    v('bench_%s_p50_ms' % tag, p.stdout.strip().splitlines()[-1].split(',')[4].strip('"'))
    v('bench_%s_cpu_us_per_req' % tag, '%.1f' % (busy * 1e6 / os.sysconf('SC_CLK_TCK') / n))
    v('bench_%s_set_fast' % tag, d.get('set_fast', 0))
    v('bench_%s_set_pass_full' % tag, d.get('set_pass_queue_full', 0))
    v('bench_%s_enqueued' % tag, kd.get('enqueued', 0))
    with open(os.path.join(OUT, 'xdp-bench-%s.csv' % tag), 'w') as f:
        f.write(p.stdout)


def main(argv):
    if argv[:1] == ['sets'] and len(argv) == 3:
        cmd_sets(argv[1], int(argv[2]))
    elif argv[:1] == ['delivered'] and len(argv) == 3 and argv[2] in ('apply', 'aof'):
        cmd_delivered(argv[1], argv[2])
    elif argv[:1] == ['check'] and len(argv) == 2:
        cmd_check(argv[1])
    elif argv[:1] == ['bench'] and len(argv) in (2, 3):
        cmd_bench(argv[1], *[int(n) for n in argv[2:]])
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main(sys.argv[1:])
