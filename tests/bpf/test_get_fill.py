# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""GET misses fill the cache read-through.

A GET passed to Redis (a miss) on a tracked flow is captured like an HGETALL: when TC
egress sees its whole bulk reply "$<n>\\r\\n<value>\\r\\n" in one skb, the value is stored
as a type ERB_TYPE_STRING_UNVERIFIED entry under the write-through cancellation rules
(a write of the key's bucket in flight at capture, or arriving before the reply, cancels
it), never served until erb-agent has checked that the key has no TTL (a key Redis
expires lazily would be answered past its expiry) and made it ERB_TYPE_STRING
(verify_fill() does what the agent does). A nil reply ("$-1", RESP3's "_") caches the key
as absent (ERB_TYPE_NIL): absence has no TTL, so it is answered at once until a write of
the key, in the flow's protocol: "$-1" if it never sent HELLO or its last HELLO was
answered with an array (RESP2), "_" if with a map (RESP3), and not at all when TC did not
see that reply (a HELLO that failed, or followed by AUTH in one segment). An empty or too
long value, a reply split over two skbs, a flow in MULTI or on another db fill nothing; a
RESP3 flow (HELLO 3) fills from the same bulk bytes; a SET in the same segment keeps its
own write-through capture."""

import pytest

from erbtest import (HELLO2, HELLO3, live_entries, verify_fill, XDP_NAMES, XDP_PASS, XDP_TX, Flow, bulk, resp, tcp_payload)
from ansible_collections.erb.booster.plugins.module_utils import erb_layout as L


def entries(erb):
    """Live entries: {key: (type, value bytes)}."""
    return {key: (e.type, val) for _unused, e, key, val in live_entries(erb)}


def miss(f, key, reply):
    rc, _unused = f.send(resp(b'GET', key))
    assert rc == XDP_PASS, 'GET miss not passed: %s' % XDP_NAMES.get(rc, rc)
    f.reply(reply)


def get(f, key):
    """(rc, reply payload) of GET key."""
    rc, out = f.send(resp(b'GET', key))
    return rc, tcp_payload(out) if rc == XDP_TX else None


def test_fill_is_served_only_after_the_agent_checks_its_ttl(erb):
    f = Flow(erb).handshake()
    miss(f, b'k1', bulk(b'hello'))
    st = erb.stats()
    # fill_get is what sets erb-agent's TTL check going
    assert (st['fill'], st['fill_get']) == (1, 1), st
    assert entries(erb) == {b'k1': (L.ERB_TYPE_STRING_UNVERIFIED, b'hello')}
    rc, _unused = get(f, b'k1')
    assert rc == XDP_PASS, 'an unchecked GET fill (the key may have a TTL) answered in XDP: %s' % XDP_NAMES.get(rc, rc)
    f.reply(bulk(b'hello'))
    assert verify_fill(erb, b'k1')
    assert entries(erb) == {b'k1': (L.ERB_TYPE_STRING, b'hello')}
    assert get(f, b'k1') == (XDP_TX, b'$5\r\nhello\r\n')
    assert erb.stats()['hit'] == 1


@pytest.mark.parametrize('value', [b'x', b'a\r\nb$3\r\n*\x00', b'7' * 1024], ids=['1', 'binary', 'max'])
def test_value_bytes_exact(erb, value):
    f = Flow(erb).handshake()
    miss(f, b'key', bulk(value))
    verify_fill(erb, b'key')
    assert get(f, b'key') == (XDP_TX, bulk(value))


@pytest.mark.parametrize('reply', [b'$0\r\n\r\n', bulk(b'v' * 1025), b'-ERR wrong\r\n', b':12\r\n',
                                   b'$-2\r\n', b'_x\r\n'],
                         ids=['empty', 'too-long', 'error', 'integer', 'not-nil', 'not-resp3-nil'])
def test_nothing_cached_from(erb, reply):
    f = Flow(erb).handshake()
    miss(f, b'key', reply)
    assert entries(erb) == {}
    assert erb.stats()['fill'] == 0
    # the flow goes on: the next command and its reply are tracked as before
    f.command(resp(b'PING'), b'+PONG\r\n')


def test_reply_split_over_two_segments_not_cached(erb):
    f = Flow(erb).handshake()
    rc, _unused = f.send(resp(b'GET', b'key'))
    assert rc == XDP_PASS
    rep = bulk(b'0123456789')
    f.reply(rep[:7])
    f.reply(rep[7:])
    assert entries(erb) == {}
    f.command(resp(b'PING'), b'+PONG\r\n')


def test_write_in_flight_cancels_the_fill(erb):
    f, g = Flow(erb).handshake(), Flow(erb, cport=40001, c_isn=5000, s_isn=7000).handshake()
    rc, _unused = f.send(resp(b'GET', b'key'))
    assert rc == XDP_PASS
    # another client's write of the key reaches Redis before the GET's reply leaves
    g.command(resp(b'APPEND', b'key', b'x'), b':3\r\n')
    f.reply(bulk(b'ab'))
    assert entries(erb) == {}
    assert erb.stats()['fill_skipped'] >= 1


def test_write_after_get_in_the_same_segment_never_fills(erb):
    f = Flow(erb).handshake()
    rc, _unused = f.send(resp(b'GET', b'key') + resp(b'INCR', b'key'))
    assert rc == XDP_PASS
    f.reply(bulk(b'1') + b':2\r\n')
    assert entries(erb) == {}


def test_set_in_the_same_segment_keeps_its_own_capture(erb):
    f = Flow(erb).handshake()
    rc, _unused = f.send(resp(b'SET', b'a', b'1') + resp(b'GET', b'b'))
    assert rc == XDP_PASS
    f.reply(b'+OK\r\n' + bulk(b'2'))
    assert entries(erb) == {b'a': (L.ERB_TYPE_STRING, b'1')}


def test_not_filled_in_multi_or_on_another_db(erb):
    f = Flow(erb).handshake()
    f.command(resp(b'MULTI'), b'+OK\r\n')
    f.command(resp(b'GET', b'key'), b'+QUEUED\r\n')
    f.command(resp(b'EXEC'), b'*1\r\n' + bulk(b'v'))
    g = Flow(erb, cport=40001, c_isn=5000, s_isn=7000).handshake()
    g.command(resp(b'SELECT', b'1'), b'+OK\r\n')
    g.command(resp(b'GET', b'key'), bulk(b'v'))
    assert erb.stats()['fill'] == 0
    assert entries(erb) == {}


def test_writes_of_the_key_invalidate_a_verified_fill(erb):
    f = Flow(erb).handshake()
    miss(f, b'key', bulk(b'old'))
    verify_fill(erb, b'key')
    assert get(f, b'key')[0] == XDP_TX
    f.command(resp(b'APPEND', b'key', b'er'), b':5\r\n')
    rc, _unused = get(f, b'key')
    assert rc == XDP_PASS, 'a stale GET fill answered after a write of its key'
    f.reply(bulk(b'older'))


def test_a_passed_get_of_a_cached_key_leaves_its_entry_as_it_is(erb):
    f = Flow(erb).handshake()
    f.set(b'k', b'v')                         # write-through: a servable string entry
    rc, _unused = f.send(resp(b'PING'))      # Redis owes a reply: the GET below is passed
    assert rc == XDP_PASS
    rc, _unused = f.send(resp(b'GET', b'k'))
    assert rc == XDP_PASS
    f.reply(b'+PONG\r\n')
    f.reply(bulk(b'v'))
    assert entries(erb) == {b'k': (L.ERB_TYPE_STRING, b'v')}, 'a passed GET made a cached entry unverified'
    assert get(f, b'k') == (XDP_TX, bulk(b'v'))


def test_resp3_flow_fills_from_the_same_bulk(erb):
    f = Flow(erb).handshake()
    f.command(resp(b'HELLO', b'3'), b'%1\r\n+server\r\n+redis\r\n')
    miss(f, b'key', bulk(b'v3'))
    assert entries(erb) == {b'key': (L.ERB_TYPE_STRING_UNVERIFIED, b'v3')}
    verify_fill(erb, b'key')
    assert get(f, b'key') == (XDP_TX, bulk(b'v3'))


# ------------------------------------------------------------------ nil: a key cached as absent

def test_nil_is_cached_as_absent_and_answered_at_once(erb):
    f = Flow(erb).handshake()
    miss(f, b'none', b'$-1\r\n')
    st = erb.stats()
    # no TTL check: fill_get (what sets erb-agent's scan going) does not move
    assert (st['fill'], st['fill_nil'], st['fill_get']) == (1, 1, 0), st
    assert entries(erb) == {b'none': (L.ERB_TYPE_NIL, b'')}
    assert get(f, b'none') == (XDP_TX, b'$-1\r\n')
    assert get(f, b'none') == (XDP_TX, b'$-1\r\n')
    st = erb.stats()
    assert (st['hit'], st['hit_nil'], st['miss']) == (2, 2, 1), st
    # the flow's mapping carries the answers: a passed command lands where Redis expects it
    f.command(resp(b'PING'), b'+PONG\r\n')


@pytest.mark.parametrize('write, reply', [
    (resp(b'SET', b'none', b'now'), b'+OK\r\n'),
    (resp(b'INCR', b'none'), b':1\r\n'),
    (resp(b'APPEND', b'none', b'now'), b':3\r\n'),
    (resp(b'RENAME', b'other', b'none'), b'+OK\r\n'),
], ids=['set', 'incr', 'append', 'rename'])
def test_a_write_that_creates_the_key_ends_its_nil(erb, write, reply):
    f = Flow(erb).handshake()
    miss(f, b'none', b'$-1\r\n')
    assert get(f, b'none')[0] == XDP_TX
    f.command(write, reply)
    rc, out = get(f, b'none')
    if write.startswith(b'*3\r\n$3\r\nSET'):
        # the SET's own write-through entry answers, with the value
        assert (rc, out) == (XDP_TX, bulk(b'now'))
        return
    assert rc == XDP_PASS, 'a key cached as absent answered nil after a write created it: %r' % out
    f.reply(b'$1\r\n1\r\n')


def test_write_in_flight_cancels_the_nil_fill(erb):
    f, g = Flow(erb).handshake(), Flow(erb, cport=40001, c_isn=5000, s_isn=7000).handshake()
    rc, _unused = f.send(resp(b'GET', b'key'))
    assert rc == XDP_PASS
    # another client's write creates the key before the GET's nil reply leaves
    g.command(resp(b'APPEND', b'key', b'x'), b':1\r\n')
    f.reply(b'$-1\r\n')
    assert entries(erb) == {}
    assert erb.stats()['fill_skipped'] >= 1


@pytest.mark.parametrize('hello, nil', [
    ([], b'$-1\r\n'),
    ([HELLO3], b'_\r\n'),
    ([HELLO2], b'$-1\r\n'),
    ([HELLO3, HELLO2], b'$-1\r\n'),
    ([HELLO2, HELLO3], b'_\r\n'),
    ([HELLO3, (resp(b'HELLO', b'4'), b'-NOPROTO unsupported protocol version\r\n')], None),
    ([(resp(b'HELLO', b'3') + resp(b'AUTH', b'pw'),
       b'%1\r\n+server\r\n+redis\r\n+OK\r\n')], None),
], ids=['resp2', 'hello3', 'hello2', 'hello3-then-2', 'hello2-then-3', 'hello-failed', 'hello-then-auth'])
def test_nil_answered_in_the_flows_protocol(erb, hello, nil):
    f = Flow(erb).handshake()
    miss(f, b'none', b'$-1\r\n')            # filled from another protocol's nil: absence is the same
    g = Flow(erb, cport=40001, c_isn=5000, s_isn=7000).handshake()
    for cmd, reply in hello:
        g.command(cmd, reply)
    rc, out = get(g, b'none')
    if nil is None:
        assert rc == XDP_PASS, 'a nil answered to a flow whose protocol ERB does not know: %r' % out
        g.reply(b'_\r\n')
        return
    assert (rc, out) == (XDP_TX, nil)


def test_resp3_nil_fills_too(erb):
    f = Flow(erb).handshake()
    f.command(*HELLO3)
    miss(f, b'none', b'_\r\n')
    assert entries(erb) == {b'none': (L.ERB_TYPE_NIL, b'')}
    assert get(f, b'none') == (XDP_TX, b'_\r\n')


def test_hash_lookup_never_answers_a_nil(erb):
    f = Flow(erb).handshake()
    miss(f, b'none', b'$-1\r\n')
    rc, _unused = f.send(resp(b'HGETALL', b'none'))
    assert rc == XDP_PASS, 'HGETALL of a key cached as absent answered from the nil entry'
    f.reply(b'*0\r\n')


def test_pipelined_gets_answer_nil_in_order(erb):
    f = Flow(erb).handshake()
    f.set(b'a', b'1')
    miss(f, b'none', b'$-1\r\n')
    rc, out = f.send(resp(b'GET', b'a') + resp(b'GET', b'none') + resp(b'GET', b'a'))
    assert (rc, tcp_payload(out)) == (XDP_TX, bulk(b'1') + b'$-1\r\n' + bulk(b'1'))
    h = Flow(erb, cport=40002, c_isn=9000, s_isn=11000).handshake()
    h.command(*HELLO3)
    rc, out = h.send(resp(b'GET', b'none') + resp(b'GET', b'a'))
    assert (rc, tcp_payload(out)) == (XDP_TX, b'_\r\n' + bulk(b'1'))
    u = Flow(erb, cport=40003, c_isn=13000, s_isn=15000).handshake()
    u.command(resp(b'HELLO', b'3') + resp(b'AUTH', b'pw'), b'%1\r\n+server\r\n+redis\r\n+OK\r\n')
    rc, _unused = u.send(resp(b'GET', b'a') + resp(b'GET', b'none'))
    assert rc == XDP_PASS, 'a pipeline answered a nil to a flow whose protocol ERB does not know'
    u.reply(bulk(b'1') + b'_\r\n')


def test_fills_the_agent_must_check_are_queued_for_it(erb):
    # erb-agent reads the slot of every GET and HGETALL fill from erb_global.fillq
    # (fill i at fillq[i % ERB_FILLQ] = i << 32 | slot) instead of walking the cache
    # for them; a nil (no TTL to check) is not queued
    from test_hgetall import SMALL, hash_reply
    f = Flow(erb).handshake()
    head0 = erb.glob().fillq_head
    miss(f, b'k1', bulk(b'hello'))
    miss(f, b'k2', b'$-1\r\n')
    rc, _unused = f.send(resp(b'HGETALL', b'h1'))
    assert rc == XDP_PASS
    f.reply(hash_reply(SMALL))
    miss(f, b'k3', bulk(b'world'))
    g = erb.glob()
    slots = {key: slot for slot, _e, key, _v in live_entries(erb)}
    assert set(slots) == {b'k1', b'k2', b'h1', b'k3'}, slots
    assert g.fillq_head - head0 == 3, 'fills queued: %d (want 3: k1, h1, k3)' % (g.fillq_head - head0)
    queued = [g.fillq[(head0 + i) % L.ERB_FILLQ] for i in range(3)]
    assert queued == [(head0 + i) << 32 | slots[k] for i, k in enumerate((b'k1', b'h1', b'k3'))], queued
