# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Pipelines on the local fleet, end to end: real clients pipelining GETs and SETs
(raw RESP, a redis-py pipeline, ``redis-benchmark -P 16``) against erb-r1 with ERB
attached the default way (GET hits answered in XDP, the SET fast path on, an I/O
agent applying the writes), every reply compared with a plain Redis (the reference
redis-server, never boosted) given the same commands; at the end every key of the
fleet host's Redis (read over its unix socket, never through ERB) is compared with
the reference. ERB's counters must show pipelined answers, else the test proves
nothing. Run with -s to see the counters.
"""

import random

import pytest

from erb_conftest import BPF_OBJECT, require_bpf_objects
from erb_itest import ErbAttachment, RespConn, redis_from, reference_redis, resp_encode, stat_delta
from erb_settest import FleetRedis, attached_with_agent, build_agent, stop_role_agent, wait_applied

assert reference_redis  # a fixture, used by name below

pytestmark = [pytest.mark.fleet, pytest.mark.bpf, pytest.mark.slow]

MAX_VALUE = 1024
DEPTH = 16


COUNTERS = ('pipelined', 'pipelined_cmds', 'hit', 'set_fast', 'miss', 'pass_not_single', 'set_pass_busy', 'hold')


def report(test, delta, **figures):
    figures.update((k, delta.get(k, 0)) for k in COUNTERS)
    print('\n[%s] %s' % (test, ', '.join('%s=%s' % kv for kv in figures.items())), flush=True)


@pytest.fixture(scope='module')
def erb(fleet, tmp_path_factory):
    """ERB with the SET fast path on erb-r1, and an agent this module runs."""
    require_bpf_objects(BPF_OBJECT)
    build_agent()
    h = fleet.hosts[0]
    a = ErbAttachment(h, cache_entries=16384, max_flows=4096, max_key_len=128, max_value_len=MAX_VALUE,
                      set_fast_path=True)
    a.detach(drain_timeout=0)
    stop_role_agent(h)
    a.redis = FleetRedis(h)
    assert h.redis_cli_local('FLUSHALL') == 'OK'
    with attached_with_agent(a, tmp_path_factory):
        yield a


@pytest.fixture
def both(erb, reference_redis):
    """(ERB connection from the client namespace, reference connection), both databases empty."""
    t = RespConn.unix(erb.host.socket)
    r = RespConn.unix(reference_redis)
    try:
        wait_applied(erb)
        assert t.cmd('FLUSHALL') == r.cmd('FLUSHALL') == b'+OK\r\n'
    finally:
        t.close()
    c = RespConn.tcp(erb.host.client_ns, erb.host.server_ip)
    try:
        yield c, r
    finally:
        c.close()
        r.close()


def pipeline(conn, cmds):
    """The commands in one send (one segment: TCP_NODELAY, well under the MSS), their replies."""
    conn.send(b''.join(resp_encode(*c) for c in cmds))
    return [conn.read_reply() for _unused in cmds]


def assert_same_keys(erb, reference_redis, keys):
    """Every key's value in the fleet host's Redis (after the agent applied) equals the reference's."""
    wait_applied(erb)
    t, r = RespConn.unix(erb.host.socket), RespConn.unix(reference_redis)
    try:
        diff = [(k, t.cmd('GET', k), r.cmd('GET', k)) for k in keys]
        diff = [d for d in diff if d[1] != d[2]]
        assert not diff, 'Redis behind ERB differs from the reference: %s' % diff[:5]
        assert t.cmd('DBSIZE') == r.cmd('DBSIZE')
    finally:
        t.close()
        r.close()


def test_raw_pipelines_answer_like_redis(erb, reference_redis, both):
    c, r = both
    rnd = random.Random(13)
    keys = ['p:%03d' % i for i in range(256)]
    for k in keys:      # one by one (answered or filled): most GETs below hit
        assert c.cmd('SET', k, 'first') == r.cmd('SET', k, 'first')
    s0 = erb.stats()
    compared = 0
    for rnd_i in range(300):
        kind = rnd_i % 4
        cmds = []
        for _unused in range(rnd.randint(2, DEPTH)):
            k = rnd.choice(keys)
            if kind == 0 or (kind == 3 and rnd.random() < 0.5):
                cmds.append(('SET', k, 'v%d-%s' % (rnd_i, 'x' * rnd.randint(0, 60))))
            elif kind == 2 and rnd.random() < 0.2:
                cmds.append(('INCR', 'p:counter'))
            else:
                cmds.append(('GET', k))
        got, want = pipeline(c, cmds), pipeline(r, cmds)
        assert got == want, 'pipeline %s: ERB %s, Redis %s' % (cmds, got, want)
        compared += len(cmds)
    d = stat_delta(s0, erb.stats())
    report('raw', d, commands=compared)
    assert d.get('pipelined', 0) >= 20, 'no pipelined answers: %s' % d
    assert d.get('pipelined_cmds', 0) >= 2 * d['pipelined']
    assert_same_keys(erb, reference_redis, keys + ['p:counter'])


def test_redis_py_pipeline_answers_like_redis(erb, reference_redis, both):
    import redis
    c, _unused = both
    assert c.cmd('PING') == b'+PONG\r\n'
    boosted = redis_from(erb.host.client_ns, erb.host.server_ip)
    plain = redis.Redis(unix_socket_path=str(reference_redis), socket_timeout=10)
    rnd = random.Random(7)
    keys = ['rp:%03d' % i for i in range(512)]
    for k in keys:
        assert boosted.set(k, 'first') is True and plain.set(k, 'first') is True
    s0 = erb.stats()
    compared = 0
    try:
        for rnd_i in range(200):
            ops = []
            for _unused in range(DEPTH):
                k = rnd.choice(keys)
                if rnd_i % 3 == 0 or rnd.random() < 0.2:
                    ops.append(('set', k, 'val-%d-%d' % (rnd_i, rnd.randint(0, 10 ** 6))))
                else:
                    ops.append(('get', k))
            out = []
            for cl in (boosted, plain):
                p = cl.pipeline(transaction=False)
                for op in ops:
                    getattr(p, op[0])(*op[1:])
                out.append(p.execute())
            assert out[0] == out[1], 'pipeline %s: ERB %s, Redis %s' % (ops, out[0], out[1])
            compared += len(ops)
    finally:
        boosted.close()
        plain.close()
    d = stat_delta(s0, erb.stats())
    report('redis-py', d, commands=compared)
    assert d.get('pipelined', 0) >= 20, 'no pipelined answers: %s' % d
    assert_same_keys(erb, reference_redis, keys)


def test_redis_benchmark_pipelined(erb, reference_redis, both):
    """redis-benchmark -P 16 (SET then GET): no error, pipelined answers counted, and what it
    wrote is in Redis; afterwards a GET of each key through ERB equals Redis's."""
    c, _unused = both
    h = erb.host
    s0 = erb.stats()
    p = h.client_run(['redis-benchmark', '-h', h.server_ip, '-p', '6379', '-t', 'set,get', '-n', '20000',
                      '-c', '8', '-P', str(DEPTH), '-r', '500', '-d', '40', '--csv'], timeout=300)
    assert '"SET"' in p.stdout and '"GET"' in p.stdout, p.stdout + p.stderr
    assert 'rror' not in p.stdout + p.stderr, p.stdout + p.stderr
    d = stat_delta(s0, erb.stats())
    report('redis-benchmark', d)
    assert d.get('pipelined', 0) >= 50, 'no pipelined answers: %s' % d
    wait_applied(erb)
    t = RespConn.unix(h.socket)
    try:
        keys = [k.decode() for k in t.cmd('KEYS', 'key:*').split(b'\r\n')[2::2] if k]
        assert keys, 'redis-benchmark wrote nothing to Redis'
        for k in keys:
            want = t.cmd('GET', k)
            assert want.startswith(b'$40\r\n'), (k, want)     # redis-benchmark's (random) 40 bytes
            assert c.cmd('GET', k) == want, k
    finally:
        t.close()
