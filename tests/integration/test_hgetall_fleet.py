# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""HGETALL (YCSB's read) answered in XDP on the local fleet (issue 4, item 5).

ERB is attached to erb-r1/erbs1 by erb.booster.bpf with max_value_len 1400, so a
YCSB record (10 fields of 100 bytes, ~1.2 KB of reply) fits. Records are written
with HMSET, read with HGETALL from erb-c1 across the veth (redis-py and raw RESP);
every reply must equal what an unboosted Redis returns, Redis's cmdstat_hgetall
must show the hits never reached it, and HMSET of some fields (passed to Redis,
invalidating) must be seen by the next HGETALL.
"""

import random

import pytest

from erb_conftest import BPF_OBJECT, require_bpf_objects, wait_for
from erb_itest import ErbAttachment, RespConn, commandstats, redis_from, reference_redis, stat_delta
from erb_settest import attached_with_agent, build_agent, stop_role_agent

assert reference_redis  # a fixture, used by name below

pytestmark = [pytest.mark.fleet, pytest.mark.bpf, pytest.mark.slow]

NRECORDS = 20
NFIELDS = 10
FIELD_LEN = 100


@pytest.fixture(scope='module')
def erb(fleet, tmp_path_factory):
    """ERB on erb-r1/erbs1 with the agent, which checks every HGETALL fill for a TTL (PTTL)
    before XDP may answer from it."""
    require_bpf_objects(BPF_OBJECT)
    build_agent()
    h = fleet.hosts[0]
    a = ErbAttachment(h, cache_entries=8192, max_flows=4096, max_key_len=128, max_value_len=1400)
    a.detach(drain_timeout=0)
    stop_role_agent(h)
    assert h.redis_cli_local('FLUSHALL') == 'OK'
    try:
        with attached_with_agent(a, tmp_path_factory):
            yield a
    finally:
        h.redis_cli_local('FLUSHALL')


def verified(erb):
    """How many hash fills the agent has checked (no TTL) and made servable."""
    return erb.agent.fresh_stats()['hash_verified']


def wait_verified(erb, base, n):
    """Wait until the agent has checked n more hash fills than base."""
    wait_for(lambda: verified(erb) >= base + n, timeout=15, interval=0.05,
             what='erb-agent to check %d HGETALL fills' % n)


@pytest.fixture
def ref(reference_redis):
    import redis
    r = redis.Redis(unix_socket_path=str(reference_redis))
    r.flushall()
    yield r
    r.close()


def record(i, seed=0, nfields=NFIELDS, size=FIELD_LEN):
    rnd = random.Random(i * 7919 + seed)
    return {('field%d' % f).encode(): bytes(rnd.randrange(33, 127) for _unused in range(size))
            for f in range(nfields)}


def load(clients, n=NRECORDS, **kw):
    for i in range(n):
        rec = record(i, **kw)
        for c in clients:
            # HMSET as YCSB's redis binding does it
            assert c.execute_command('HMSET', 'user:%d' % i, *[x for kv in rec.items() for x in kv])


@pytest.mark.parametrize('protocol', [2, 3], ids=['resp2', 'resp3'])
@pytest.mark.parametrize('nfields,size', [(NFIELDS, FIELD_LEN), (4, 10)], ids=['ycsb-10x100', 'small-4x10'])
def test_ycsb_hgetall_hits_in_xdp(erb, ref, nfields, size, protocol):
    """Every HGETALL equals plain Redis's; Redis counts exactly the ones XDP did
    not answer. The fleet's client veth has tx checksum offload off, so its
    request frames are linear skbs with little room to grow: a reply that does
    not fit is passed (pass_no_room), as for GET. Small records always fit."""
    h = erb.host
    h.redis_cli_local('FLUSHALL')
    # YCSB's Jedis speaks RESP2; redis-py 8 says HELLO 3 unless told protocol=2, and its
    # HGETALL replies are then maps: filled in the RESP2 form, answered with the map's header
    boosted = redis_from(h.client_ns, h.server_ip, protocol=protocol)
    kw = dict(nfields=nfields, size=size)
    load([boosted, ref], **kw)
    # first reads fill the cache (misses reach Redis)
    f0, v0 = erb.stats(), verified(erb)
    for i in range(NRECORDS):
        assert boosted.hgetall('user:%d' % i) == ref.hgetall('user:%d' % i) == record(i, **kw)
    fills = stat_delta(f0, erb.stats()).get('fill', 0)
    assert fills == NRECORDS
    wait_verified(erb, v0, fills)
    s0, cs0 = erb.stats(), commandstats(h)
    rounds = 5
    for _unused in range(rounds):
        for i in range(NRECORDS):
            assert boosted.hgetall('user:%d' % i) == record(i, **kw)
    s1, cs1 = erb.stats(), commandstats(h)
    d = stat_delta(s0, s1)
    reached = cs1.get('hgetall', 0) - cs0.get('hgetall', 0)
    hits = d.get('hit', 0)
    assert hits + reached == rounds * NRECORDS, (hits, reached, d)
    assert reached == d.get('pass_no_room', 0), d
    if size <= 10:
        assert hits == rounds * NRECORDS and reached == 0, d
    boosted.close()


def test_raw_reply_bytes_identical(erb, reference_redis):
    h = erb.host
    b = RespConn.tcp(h.client_ns, h.server_ip)
    r = RespConn.unix(reference_redis)
    try:
        for c in (b, r):
            c.cmd('DEL', 'raw:1', 'raw:small', 'raw:empty')
            rec = record(99, nfields=4, size=10)
            c.cmd('HMSET', 'raw:1', *[x for kv in rec.items() for x in kv])
            c.cmd('HSET', 'raw:small', 'a', '1', 'b', b'x\r\ny')
        # small hashes (listpack) keep insertion order; the big one is
        # compared as the same Redis's own bytes (miss) vs XDP's (hit)
        for key in ('raw:small', 'raw:empty'):
            for _unused in range(3):
                assert b.cmd('HGETALL', key) == r.cmd('HGETALL', key)
        v0 = verified(erb)
        first = b.cmd('HGETALL', 'raw:1')
        wait_verified(erb, v0, 1)
        s0 = erb.stats()
        for name in ('HGETALL', 'hgetall', 'HgEtAlL'):
            assert b.cmd(name, 'raw:1') == first
        d = stat_delta(s0, erb.stats())
        assert d.get('hit', 0) == 3, repr(d)
        truth = RespConn.unix(h.socket)
        assert truth.cmd('HGETALL', 'raw:1') == first
        truth.close()
    finally:
        b.close()
        r.close()


def test_hmset_of_some_fields_then_hgetall(erb, ref):
    h = erb.host
    boosted = redis_from(h.client_ns, h.server_ip, protocol=2)
    other = redis_from(h.client_ns, h.server_ip)     # RESP3 (HELLO 3): answered maps
    h.redis_cli_local('FLUSHALL')
    kw = dict(nfields=4, size=10)     # small enough to be answered on the fleet's veth
    load([boosted, ref], n=5, **kw)
    v0 = verified(erb)
    for i in range(5):
        assert boosted.hgetall('user:%d' % i) == record(i, **kw)   # fills
    wait_verified(erb, v0, 5)
    s0 = erb.stats()
    for i in range(5):
        assert boosted.hgetall('user:%d' % i) == record(i, **kw)
        assert other.hgetall('user:%d' % i) == record(i, **kw)
    assert stat_delta(s0, erb.stats()).get('hit', 0) == 10
    for i in range(5):
        upd = {b'field%d' % f: b'new-%d-%d' % (i, f) for f in (1, 3)}
        c = boosted if i % 2 else other    # the writer's flow or another one
        assert c.hmset('user:%d' % i, upd)
        ref.hmset('user:%d' % i, upd)
        want = ref.hgetall('user:%d' % i)
        assert want != record(i, **kw)
        v0 = verified(erb)
        assert boosted.hgetall('user:%d' % i) == want              # refills
        assert other.hgetall('user:%d' % i) == want
        wait_verified(erb, v0, 1)
        s0 = erb.stats()
        for _unused in range(2):
            assert boosted.hgetall('user:%d' % i) == want
            assert other.hgetall('user:%d' % i) == want
        assert stat_delta(s0, erb.stats()).get('hit', 0) == 4
    # field removal and key deletion are seen too
    boosted.hdel('user:0', 'field3')
    ref.hdel('user:0', 'field3')
    assert boosted.hgetall('user:0') == ref.hgetall('user:0')
    assert boosted.hgetall('user:0') == ref.hgetall('user:0')
    other.delete('user:1')
    assert boosted.hgetall('user:1') == {}
    assert boosted.hgetall('user:1') == {}
    boosted.close()
    other.close()


def test_resp3_client_gets_a_map_from_xdp(erb):
    h = erb.host
    c = RespConn.tcp(h.client_ns, h.server_ip)
    arr = b'*2\r\n$1\r\nf\r\n$1\r\nv\r\n'
    amap = b'%1\r\n$1\r\nf\r\n$1\r\nv\r\n'
    try:
        c.cmd('HSET', 'r3:k', 'f', 'v')
        v0 = verified(erb)
        assert c.cmd('HGETALL', 'r3:k') == arr          # RESP2: fills
        wait_verified(erb, v0, 1)
        s0 = erb.stats()
        assert c.cmd('HGETALL', 'r3:k') == arr
        assert c.cmd('HELLO', '3').startswith(b'%')
        for _unused in range(3):
            assert c.cmd('HGETALL', 'r3:k') == amap
        assert stat_delta(s0, erb.stats()).get('hit', 0) == 4
        # a map fills too: stored as the array, each protocol answered its own form
        c.cmd('HSET', 'r3:m', 'a', '1', 'b', '2')
        m = b'%2\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n'
        v0 = verified(erb)
        assert c.cmd('HGETALL', 'r3:m') == m
        wait_verified(erb, v0, 1)
        s0 = erb.stats()
        for _unused in range(3):
            assert c.cmd('HGETALL', 'r3:m') == m
        assert c.cmd('HELLO', '2').startswith(b'*')
        assert c.cmd('HGETALL', 'r3:m') == b'*4' + m[2:]
        assert stat_delta(s0, erb.stats()).get('hit', 0) == 4
        truth = RespConn.unix(h.socket)
        assert truth.cmd('HGETALL', 'r3:m') == b'*4' + m[2:]
        truth.close()
    finally:
        c.close()
