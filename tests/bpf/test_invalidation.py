# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Coherence: writes passed to Redis invalidate at XDP ingress (before Redis
runs them), flushes empty the cache, rejected SETs never fill, and a fill
racing another flow's write on the same key is skipped."""

import pytest

from erbtest import XDP_NAMES, XDP_PASS, XDP_TX, Flow, bucket_of, bulk, resp, tcp_payload

GET_K = resp('GET', 'k')

# (command, Redis's reply)
WRITES = {
    'DEL': (('DEL', 'k'), b':1\r\n'),
    'DEL-multi': (('DEL', 'a', 'b', 'k'), b':1\r\n'),
    'INCR': (('INCR', 'k'), b'-ERR value is not an integer or out of range\r\n'),
    'APPEND': (('APPEND', 'k', 'x'), b':2\r\n'),
    'EXPIRE': (('EXPIRE', 'k', '10'), b':1\r\n'),
    'SET-EX': (('SET', 'k', 'v2', 'EX', '10'), b'+OK\r\n'),
    'SET-lower': (('set', 'k', 'v2', 'nx'), b'$-1\r\n'),
    'MSET': (('MSET', 'a', '1', 'k', '2'), b'+OK\r\n'),
    'HSET-wrongtype': (('HSET', 'k', 'f', 'v'), b'-WRONGTYPE Operation against a key holding the wrong kind of value\r\n'),
    'RENAME-to-k': (('RENAME', 'x', 'k'), b'+OK\r\n'),
    'RENAME-from-k': (('RENAME', 'k', 'x'), b'+OK\r\n'),
    'GETDEL': (('GETDEL', 'k'), b'$1\r\nv\r\n'),
    'GETSET': (('GETSET', 'k', 'w'), b'$1\r\nv\r\n'),
    'UNLINK': (('UNLINK', 'z', 'k'), b':1\r\n'),
    'FLUSHALL': (('FLUSHALL',), b'+OK\r\n'),
    'FLUSHDB': (('flushdb', 'ASYNC'), b'+OK\r\n'),
    'SWAPDB': (('SWAPDB', '0', '1'), b'+OK\r\n'),
    'unknown': (('NOSUCHCOMMAND', 'k'), b"-ERR unknown command 'NOSUCHCOMMAND'\r\n"),
    'EVAL': (('EVAL', "redis.call('del', KEYS[1])", '1', 'k'), b'$-1\r\n'),
    'inline': (None, b'+OK\r\n'),
}


def filled(erb, **kw):
    f = Flow(erb, **kw).handshake()
    f.set(b'k', b'v')
    return f


def assert_miss(f):
    before = f.erb.stats()
    rc, out = f.send(GET_K)
    assert rc == XDP_PASS, '%s: stale cache entry answered' % XDP_NAMES.get(rc, rc)
    assert out == f.last[2]
    assert f.erb.stats()['miss'] == before['miss'] + 1, 'GET passed for another reason than a miss'


def assert_hit(f, value=b'v'):
    rc, out = f.send(GET_K)
    assert rc == XDP_TX, XDP_NAMES.get(rc, rc)
    assert tcp_payload(out) == bulk(value)


@pytest.mark.parametrize('name', sorted(WRITES))
def test_write_invalidates_at_ingress(erb, name):
    cmd, reply = WRITES[name]
    a = filled(erb, cport=45000)
    b = Flow(erb, cport=45001, c_isn=1, s_isn=2).handshake()
    assert_hit(b)
    payload = resp(*cmd) if cmd else b'DEL k\r\n'
    rc, out = a.send(payload)
    assert (rc, out) == (XDP_PASS, a.last[2])
    st = erb.stats()
    assert st['invalidate'] + st['flush'] >= 1
    # Redis runs the write now: from this moment no flow may be answered the old value
    assert k_not_cached(erb)
    b.send(GET_K)
    assert erb.stats()['hit'] == 1, 'answered from the cache while the write is at Redis'
    b.reply(b'$-1\r\n')
    a.reply(reply)
    assert_miss(a)


def k_not_cached(erb):
    return b'k' not in erb.cache_entries()


def test_rejected_set_never_fills(erb):
    f = Flow(erb).handshake()
    f.set(b'k', b'v', reply=b'-OOM command not allowed when used memory > maxmemory\r\n')
    f.set(b'k', b'v', reply=b'+OKAY\r\n')
    f.set(b'k', b'v', reply=b'$2\r\nOK\r\n')
    st = erb.stats()
    assert st['fill'] == 0
    assert k_not_cached(erb)
    assert_miss(f)


def test_overwrite_refills_with_the_new_value(erb):
    f = filled(erb)
    f.set(b'k', b'second')
    assert erb.stats()['fill'] == 2
    assert_hit(f, b'second')


def test_set_in_multi_does_not_fill(erb):
    f = Flow(erb).handshake()
    f.command(resp('MULTI'), b'+OK\r\n')
    f.command(resp('SET', 'k', 'v'), b'+QUEUED\r\n')
    f.command(resp('EXEC'), b'*1\r\n+OK\r\n')
    assert erb.stats()['fill'] == 0
    assert_miss(f)


def test_concurrent_write_skips_fill(erb):
    a = Flow(erb, cport=46000).handshake()
    b = Flow(erb, cport=46001, c_isn=10, s_isn=20).handshake()
    rc, _unused = a.send(resp('SET', 'k', 'v1'))
    assert rc == XDP_PASS
    rc, _unused = b.send(resp('DEL', 'k'))
    assert rc == XDP_PASS
    assert erb.inflight(bucket_of(b'k')) == 2
    a.reply(b'+OK\r\n')
    st = erb.stats()
    assert (st['fill'], st['fill_skipped']) == (0, 1)
    assert k_not_cached(erb)
    b.reply(b':1\r\n')
    assert erb.inflight(bucket_of(b'k')) == 0
    assert_miss(a)


def test_write_in_flight_when_set_arrives_cancels_fill(erb):
    """DEL on B still unanswered when A's SET arrives: Redis may run SET then
    DEL and still send DEL's reply first (clients_pending_write is walked from
    the head), so no reply order proves the SET ran last: never fill."""
    a = Flow(erb, cport=46000).handshake()
    b = Flow(erb, cport=46001, c_isn=10, s_isn=20).handshake()
    b.send(resp('DEL', 'k'))
    a.send(resp('SET', 'k', 'v'))
    b.reply(b':0\r\n')
    a.reply(b'+OK\r\n')
    assert erb.stats()['fill'] == 0
    assert k_not_cached(erb)
    assert_miss(a)


def test_write_answered_before_set_arrives_fills(erb):
    """DEL on B answered before A's SET even arrived: Redis ran it first."""
    a = Flow(erb, cport=46000).handshake()
    b = Flow(erb, cport=46001, c_isn=10, s_isn=20).handshake()
    b.send(resp('DEL', 'k'))
    b.reply(b':0\r\n')
    a.send(resp('SET', 'k', 'v'))
    a.reply(b'+OK\r\n')
    assert erb.stats()['fill'] == 1
    assert_hit(a)


def test_write_arriving_after_set_answered_first_cancels_fill(erb):
    """SET on A, then DEL on B whose reply comes first: the fill is cancelled."""
    a = Flow(erb, cport=46000).handshake()
    b = Flow(erb, cport=46001, c_isn=10, s_isn=20).handshake()
    a.send(resp('SET', 'k', 'v'))
    b.send(resp('DEL', 'k'))
    b.reply(b':1\r\n')
    a.reply(b'+OK\r\n')
    st = erb.stats()
    assert (st['fill'], st['fill_skipped']) == (0, 1)
    assert k_not_cached(erb)


def test_flush_blocks_fills_until_its_reply(erb):
    a = Flow(erb, cport=46000).handshake()
    b = Flow(erb, cport=46001, c_isn=10, s_isn=20).handshake()
    b.send(resp('FLUSHALL'))
    a.set(b'k', b'v')                        # +OK seen while FLUSHALL is at Redis
    assert erb.stats()['fill'] == 0
    b.reply(b'+OK\r\n')
    a.set(b'k', b'v')
    assert erb.stats()['fill'] == 1
    assert_hit(a)


def test_pipelined_set_then_del_in_one_segment(erb):
    f = Flow(erb).handshake()
    f.send(resp('SET', 'k', 'v') + resp('DEL', 'k'))
    f.reply(b'+OK\r\n:1\r\n')
    assert erb.stats()['fill'] == 0
    assert_miss(f)


def test_del_split_across_segments_invalidates(erb):
    f = filled(erb)
    other = Flow(erb, cport=47000, c_isn=3, s_isn=4).handshake()
    payload = resp('DEL', 'k')
    f.send(payload[:-3])           # key byte not complete yet ... 'k' is at -3
    f.send(payload[-3:])
    other.send(GET_K)
    assert erb.stats()['hit'] == 0
    other.reply(b'$-1\r\n')
    f.reply(b':1\r\n')
    assert_miss(other)
