# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""GET misses fill the cache read-through, on the local fleet.

ERB is attached to erb-r1/erbs1 by erb.booster.bpf, with erb-agent. Keys are written over
Redis's unix socket, a path XDP never sees (as keys written before ERB attached, or by
another interface): the first GET from erb-c1 goes to Redis and its reply fills the cache;
once the agent has checked the key has no TTL (PTTL -1), later GETs are answered in XDP,
and Redis's cmdstat_get shows they never reached it. A key with a TTL is never answered
from the cache (Redis expires it lazily; XDP hits would outlive it), and a key changed
over the unix socket after it was cached is read fresh (CLIENT TRACKING invalidation).
A GET of a missing key caches it as absent: later GETs are answered nil in XDP at once
(absence has no TTL to check) until a write creates the key, over the NIC or not.
An MGET whose keys are all cached (values or absent) is answered in XDP, RESP2 and RESP3
alike, with the reply Redis gives.
"""

import pytest

from erb_conftest import BPF_OBJECT, require_bpf_objects, wait_for
from erb_itest import ErbAttachment, commandstats, redis_from, stat_delta
from erb_settest import attached_with_agent, build_agent, stop_role_agent

pytestmark = [pytest.mark.fleet, pytest.mark.bpf, pytest.mark.slow]

NKEYS = 50


@pytest.fixture(scope='module')
def erb(fleet, tmp_path_factory):
    require_bpf_objects(BPF_OBJECT)
    build_agent()
    h = fleet.hosts[0]
    a = ErbAttachment(h, cache_entries=8192, max_flows=4096, max_key_len=128, max_value_len=1024)
    a.detach(drain_timeout=0)
    stop_role_agent(h)
    assert h.redis_cli_local('FLUSHALL') == 'OK'
    try:
        with attached_with_agent(a, tmp_path_factory):
            yield a
    finally:
        h.redis_cli_local('FLUSHALL')


def agent_stat(erb, name):
    return erb.agent.fresh_stats()[name]


def value(i):
    return ('value-%d-' % i + 'x' * (i * 13 % 140)).encode()  # a reply fits the veth frame


def test_keys_written_out_of_band_are_answered_in_xdp_once_read(erb):
    h = erb.host
    for i in range(NKEYS):
        assert h.redis_cli_local('SET', 'oob:%d' % i, value(i).decode()) == 'OK'
    c = redis_from(h.client_ns, h.server_ip)
    s0, v0, cs0 = erb.stats(), agent_stat(erb, 'get_verified'), commandstats(h)
    for i in range(NKEYS):
        assert c.get('oob:%d' % i) == value(i)
    d = stat_delta(s0, erb.stats())
    assert d.get('fill_get', 0) == NKEYS, d
    assert commandstats(h).get('get', 0) - cs0.get('get', 0) == NKEYS
    wait_for(lambda: agent_stat(erb, 'get_verified') >= v0 + NKEYS, timeout=15, interval=0.05,
             what='erb-agent to check %d GET fills' % NKEYS)
    s1, cs1 = erb.stats(), commandstats(h)
    for _unused in range(3):
        for i in range(NKEYS):
            assert c.get('oob:%d' % i) == value(i)
    d = stat_delta(s1, erb.stats())
    reached = commandstats(h).get('get', 0) - cs1.get('get', 0)
    assert d.get('hit', 0) == 3 * NKEYS and reached == 0, (d, reached)
    c.close()


def test_a_key_with_a_ttl_is_never_answered_from_the_cache(erb):
    h = erb.host
    assert h.redis_cli_local('SET', 'ttl:1', 'short-lived', 'PX', '6000') == 'OK'
    c = redis_from(h.client_ns, h.server_ip)
    d0 = agent_stat(erb, 'get_deleted')
    assert c.get('ttl:1') == b'short-lived'
    wait_for(lambda: agent_stat(erb, 'get_deleted') >= d0 + 1, timeout=15, interval=0.05,
             what='erb-agent to drop the GET fill of a key with a TTL')
    s0, cs0 = erb.stats(), commandstats(h)
    assert c.get('ttl:1') == b'short-lived'
    assert stat_delta(s0, erb.stats()).get('hit', 0) == 0
    assert commandstats(h).get('get', 0) - cs0.get('get', 0) == 1
    wait_for(lambda: c.get('ttl:1') is None, timeout=15, interval=0.1, what='the key to expire for the client')
    c.close()


def test_a_cached_key_changed_out_of_band_is_read_fresh(erb):
    h = erb.host
    assert h.redis_cli_local('SET', 'chg:1', 'one') == 'OK'
    c = redis_from(h.client_ns, h.server_ip)
    v0 = agent_stat(erb, 'get_verified')
    assert c.get('chg:1') == b'one'
    wait_for(lambda: agent_stat(erb, 'get_verified') >= v0 + 1, timeout=15, interval=0.05,
             what='erb-agent to check the GET fill')
    s0 = erb.stats()
    assert c.get('chg:1') == b'one'
    assert stat_delta(s0, erb.stats()).get('hit', 0) == 1
    assert h.redis_cli_local('SET', 'chg:1', 'two') == 'OK'
    wait_for(lambda: c.get('chg:1') == b'two', timeout=5, interval=0.01,
             what='the new value after a write XDP never saw')
    c.close()


def test_a_missing_key_is_answered_nil_in_xdp_until_it_is_created(erb):
    h = erb.host
    keys = ['nil:%d' % i for i in range(20)]
    c = redis_from(h.client_ns, h.server_ip)
    s0, cs0 = erb.stats(), commandstats(h)
    for k in keys:
        assert c.get(k) is None
    d = stat_delta(s0, erb.stats())
    assert (d.get('fill_nil', 0), d.get('fill_get', 0)) == (len(keys), 0), d
    assert commandstats(h).get('get', 0) - cs0.get('get', 0) == len(keys)
    s1, cs1 = erb.stats(), commandstats(h)
    for _unused in range(3):
        for k in keys:
            assert c.get(k) is None
    d = stat_delta(s1, erb.stats())
    reached = commandstats(h).get('get', 0) - cs1.get('get', 0)
    assert (d.get('hit_nil', 0), reached) == (3 * len(keys), 0), (d, reached)
    # created over the NIC: XDP sees the write, the next read is the value at once
    assert c.set('nil:1', 'over-the-nic')
    assert c.get('nil:1') == b'over-the-nic'
    assert c.incr('nil:2') == 1
    assert c.get('nil:2') == b'1'
    # created where XDP cannot see (the unix socket): CLIENT TRACKING's invalidation ends the nil
    assert h.redis_cli_local('SET', 'nil:0', 'out-of-band') == 'OK'
    wait_for(lambda: c.get('nil:0') == b'out-of-band', timeout=5, interval=0.01,
             what='the value of a key created where XDP cannot see')
    assert h.redis_cli_local('RPUSH', 'nil:3', 'a-list') == '1'
    wait_for(lambda: _wrongtype(c, 'nil:3'), timeout=5, interval=0.01,
             what='WRONGTYPE for a list created where XDP cannot see')
    c.close()


@pytest.mark.parametrize('protocol', [2, 3], ids=['resp2', 'resp3'])
def test_mget_of_cached_keys_answered_in_xdp(erb, protocol):
    import redis
    h = erb.host
    keys = ['mg%d:%d' % (protocol, i) for i in range(12)]
    c = redis_from(h.client_ns, h.server_ip, protocol=protocol)
    truth = redis.Redis(unix_socket_path=str(h.socket), protocol=protocol)
    for i, k in enumerate(keys[:8]):
        assert c.set(k, 'v%d-' % i + 'y' * i)           # write-through: cached at once
    for k in keys[8:]:
        assert c.get(k) is None                        # cached as absent
    # the fast path's SETs reach Redis through erb-agent: the truth, over the unix socket, once they have
    wait_for(lambda: None not in truth.mget(keys[:8]), timeout=10, interval=0.01,
             what='the SETs applied to Redis')
    batches = [keys[:1], keys[:4], keys[2:10], list(reversed(keys)), [keys[3], keys[9], keys[3]]]
    want = [truth.mget(b) for b in batches]
    s0, cs0 = erb.stats(), commandstats(h)
    for _unused in range(3):
        for b, w in zip(batches, want):
            assert c.mget(b) == w
    d = stat_delta(s0, erb.stats())
    reached = commandstats(h).get('mget', 0) - cs0.get('mget', 0)
    assert (d.get('mget', 0), reached) == (3 * len(batches), 0), (d, reached)
    # a write of one key over the NIC: the MGET holding it reads it fresh
    assert c.append(keys[0], '+tail')
    assert c.mget(keys[:4]) == truth.mget(keys[:4])
    assert c.mget(keys[:4])[0].endswith(b'+tail')
    # a key created where XDP cannot see ends its nil in MGETs too
    assert h.redis_cli_local('SET', keys[9], 'born') == 'OK'
    wait_for(lambda: c.mget([keys[8], keys[9]]) == [None, b'born'], timeout=5, interval=0.01,
             what='MGET to see a key created over the unix socket')
    c.close()
    truth.close()


def _wrongtype(c, key):
    import redis
    try:
        c.get(key)
    except redis.ResponseError as e:
        return 'WRONGTYPE' in str(e)
    return False
