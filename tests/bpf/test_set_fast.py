# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""SET fast path (ERB_CFG_SET_FAST, DESIGN.md "Coherence with Redis"): a plain
SET on an answerable flow is answered +OK by XDP, stored in the cache stamped
with the next erb_global.write_seq and handed to the I/O path as a struct
erb_record in the erb_events ring buffer (read here through the ring's mmap,
as the agent does). Anything else is passed to Redis untouched, with no
record and no sequence number consumed."""

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from erbtest import (CIP, CMAC, ERB_OP_SET, ERB_RECORD_VERSION, SIP, SMAC, TC_ACT_OK, XDP_NAMES, XDP_PASS,
                     XDP_TX, ErbRecord, Flow, assert_checksums, bucket_of, bulk, resp, tcp_payload, ts_option)

OK = b'+OK\r\n'
RECORD_SIZE = 1680          # sizeof(struct erb_record): 24 + ERB_KEY_MAX + ERB_VAL_MAX
BINARY = b'a\r\nb\x00c$3\r\n*\xff\r\n\x00'


def name(rc):
    return XDP_NAMES.get(rc, rc)


def check_answer(req, out, payload, server_seq, window=None):
    """out is the exact XDP answer to the request frame req, carrying payload."""
    q = Ether(req)
    p = Ether(out)
    has_ts = ts_option(req) is not None
    thl = 32 if has_ts else 20
    assert len(out) == 14 + 20 + thl + len(payload), 'answer frame length %d' % len(out)
    assert p.dst == q.src == CMAC and p.src == q.dst == SMAC and p.type == 0x0800
    ip = p[IP]
    assert (ip.version, ip.ihl, ip.proto, ip.frag) == (4, 5, 6, 0)
    assert (ip.src, ip.dst) == (SIP, CIP)
    assert ip.len == 20 + thl + len(payload)
    t = p[TCP]
    assert (t.sport, t.dport) == (q[TCP].dport, q[TCP].sport)
    assert t.seq == server_seq, 'answer seq %d, the server next is %d' % (t.seq, server_seq)
    assert t.ack == (q[TCP].seq + len(tcp_payload(req))) & 0xffffffff
    assert str(t.flags) == 'PA'
    assert t.dataofs * 4 == thl
    if window is not None:
        assert t.window == window
    if has_ts:
        tsval, tsecr = ts_option(req)
        assert t.options == [('NOP', None), ('NOP', None), ('Timestamp', (tsecr, tsval))]
    assert tcp_payload(out) == payload
    assert_checksums(out)


def fast_set(erb, f, key, value):
    """A SET answered in XDP: exact +OK frame; returns the answer frame."""
    server_seq = f.c_ack
    rc, out = f.send(resp(b'SET', key, value))
    assert rc == XDP_TX, 'SET %r not answered: %s %s' % (key, name(rc), nonzero(erb.stats()))
    check_answer(f.last[2], out, OK, server_seq)
    return out


def nonzero(st):
    return {k: v for k, v in st.items() if v}


def assert_record(rec, seq, key, value):
    assert not rec.busy and not rec.discarded
    assert rec.length == RECORD_SIZE
    assert (rec.version, rec.op, rec.flags, rec.db, rec.pad) == (ERB_RECORD_VERSION, ERB_OP_SET, 0, 0, 0)
    assert (rec.klen, rec.vlen) == (len(key), len(value))
    assert rec.seq == seq
    assert rec.key == key
    assert rec.val == value


def assert_passed_untouched(erb, f, payload, counter, records_before=0):
    """payload is passed to Redis byte-identical, no record, no seq, counted."""
    before = erb.stats()
    wseq = erb.glob().write_seq
    rc, out = f.send(payload)
    assert rc == XDP_PASS, '%r: %s, expected XDP_PASS' % (payload[:40], name(rc))
    assert out == f.last[2], 'passed frame modified'
    st = erb.stats()
    assert st[counter] == before[counter] + 1, '%s not counted: %s' % (counter, nonzero(st))
    assert st['set_fast'] == before['set_fast']
    assert erb.glob().write_seq == wseq
    assert len(erb.ring().peek()) == records_before, 'a record was queued for a passed SET'
    return out


def test_record_size_matches_header():
    import ctypes
    assert ctypes.sizeof(ErbRecord) == RECORD_SIZE


# ------------------------------------------------------------------ 1. answered SET

@pytest.mark.parametrize('ts', [True, False], ids=['ts', 'no-ts'])
@pytest.mark.parametrize('value', [b'value', BINARY, b'', b'V' * 1024], ids=['text', 'binary', 'empty', 'max'])
def test_set_answered_with_record(erb_fast, ts, value):
    erb = erb_fast
    f = Flow(erb, ts=ts).handshake()
    f.command(resp('PING'), b'+PONG\r\n')       # a server segment: the window is known
    server_seq = f.c_ack
    key = b'key:\r\n\x00:1'
    rc, out = f.send(resp(b'SET', key, value))
    assert rc == XDP_TX, name(rc)
    check_answer(f.last[2], out, OK, server_seq, window=f.s_win)
    st = erb.stats()
    assert st['set_fast'] == 1 and st['cmds_passed'] == 1    # the PING only
    g = erb.glob()
    assert (g.write_seq, g.applied_seq) == (1, 0)
    recs = erb.ring().peek()
    assert len(recs) == 1
    assert_record(recs[0], 1, key, value)
    # the flow's state follows the answer
    fl = erb.flow(f)
    assert fl.c_nxt == f.c_seq
    assert fl.s_nxt == f.c_ack == (server_seq + len(OK)) & 0xffffffff
    assert (fl.cmds, fl.replies) == (1, 1)
    # the cache answers GET k with the value before anything is applied
    assert erb.cache_entries_raw() == {key: value}
    assert erb.cache_wseq() == {key: 1}
    server_seq = f.c_ack
    rc, out = f.send(resp(b'GET', key))
    assert rc == XDP_TX, name(rc)
    check_answer(f.last[2], out, bulk(value), server_seq)
    assert erb.stats()['hit'] == 1
    assert erb.glob().applied_seq == 0
    assert erb.ring().pending_bytes() > 0          # nothing consumed it
    # the lock of the key's bucket was released
    assert erb.lock(bucket_of(key)) == 0


def test_set_answered_then_later_segments_corrected(erb_fast):
    """After an XDP answer the server's stack never saw the SET: a later passed
    command is shifted by the SET's length, Redis's reply by +OK's length."""
    erb = erb_fast
    f = Flow(erb).handshake()
    fast_set(erb, f, b'key:1', b'value')
    rc, out = f.send(resp('STRLEN', 'other'))
    assert rc == XDP_PASS
    assert Ether(out)[TCP].seq == (f.c_isn + 1) & 0xffffffff        # server view: the SET is gone
    assert_checksums(out)
    rc, out = f.reply(b':0\r\n')
    assert rc == TC_ACT_OK
    assert Ether(out)[TCP].seq == (f.s_isn + 1 + len(OK)) & 0xffffffff
    assert_checksums(out)


def test_set_overwrites_cached_value(erb_fast):
    erb = erb_fast
    a = Flow(erb, cport=40001).handshake()
    b = Flow(erb, cport=40002, c_isn=5, s_isn=77).handshake()
    fast_set(erb, a, b'key:1', b'first')
    fast_set(erb, b, b'key:1', b'second')
    assert erb.cache_entries_raw() == {b'key:1': b'second'}
    recs = erb.records()
    assert [(r.seq, r.val) for r in recs] == [(1, b'first'), (2, b'second')]
    rc, out = a.send(resp('GET', 'key:1'))
    assert rc == XDP_TX and tcp_payload(out) == bulk(b'second')


@pytest.mark.parametrize('key,value', [(b'k', b'v'), (b'k', b''), (b'ab', b'x'), (b'abc', b'')],
                         ids=['SET-k-v', 'SET-k-empty', 'SET-ab-x', 'SET-abc-empty'])
def test_shortest_plain_sets_answered(erb_fast, key, value):
    """A plain `SET k v` is a plain SET (issue 4 "Deliver" 1): it must be answered
    like any other. Regression (fixed in e113d12): parse_set() rejected payloads
    under 29 bytes, i.e. every SET with len(key) + len(value) < 4 (`SET k v` is
    27 bytes, the shortest 26)."""
    erb = erb_fast
    f = Flow(erb).handshake()
    rc, out = f.send(resp(b'SET', key, value))
    assert rc == XDP_TX, '%r (%d bytes): %s %s' % (resp(b'SET', key, value), len(resp(b'SET', key, value)),
                                                   name(rc), nonzero(erb.stats()))
    assert tcp_payload(out) == OK
    assert [(r.seq, r.key, r.val) for r in erb.records()] == [(1, key, value)]


# ------------------------------------------------------------------ 3. refusals

def test_ring_full_set_goes_to_redis(erb_fast):
    erb = erb_fast
    f = Flow(erb).handshake()
    room = erb.ring().size // (8 + RECORD_SIZE)
    assert room == 4
    for i in range(room):
        fast_set(erb, f, b'key:%d' % i, b'value:%d' % i)
    assert erb.glob().write_seq == room
    # on a flow without answers, so that the passed frame must be byte-identical
    b = Flow(erb, cport=40002, c_isn=5, s_isn=77).handshake()
    payload = resp(b'SET', b'key:full', b'value:full')
    assert_passed_untouched(erb, b, payload, 'set_pass_queue_full', records_before=room)
    assert erb.glob().write_seq == room
    # Redis runs it (the key has no pending write: not held) and the reply fills the cache
    assert erb.stats()['hold'] == 0
    rc, _unused = b.reply(OK)
    assert rc == TC_ACT_OK
    assert erb.stats()['cmds_passed'] == 1
    # on the answering flow: passed too, only seq/ack moved into the server's view
    rc, out = f.send(resp(b'SET', b'key:full2', b'value'))
    assert rc == XDP_PASS
    assert tcp_payload(out) == tcp_payload(f.last[2])
    assert Ether(out)[TCP].seq == (f.c_isn + 1) & 0xffffffff
    assert_checksums(out)
    assert erb.stats()['set_pass_queue_full'] == 2
    assert erb.cache_entries_raw()[b'key:full'] == b'value:full'
    recs = erb.records()
    assert [r.seq for r in recs] == list(range(1, room + 1))
    assert b'key:full' not in [r.key for r in recs]


def test_ring_full_set_of_a_pending_key_is_held(erb_fast):
    """The ring is full and k has an acknowledged write not yet in Redis: the
    SET k that cannot be queued must not reach Redis before it (hold)."""
    erb = erb_fast
    a = Flow(erb, cport=40001).handshake()
    b = Flow(erb, cport=40002, c_isn=5, s_isn=77).handshake()
    for i in range(4):
        fast_set(erb, a, b'key:%d' % i, b'value:%d' % i)
    frame = b.client_frame(resp(b'SET', b'key:0', b'newer'))
    rc, out = erb.xdp(frame)
    assert rc == 1, 'SET of a pending key with the ring full: %s, expected XDP_DROP (hold)' % name(rc)
    st = erb.stats()
    assert st['set_pass_queue_full'] == 1 and st['hold'] == 1 and st['cmds_passed'] == 0
    assert erb.glob().write_seq == 4
    assert erb.cache_entries_raw()[b'key:0'] == b'value:0'
    # the agent drains and applies: the retransmission is answered in XDP now
    assert len(erb.records()) == 4
    erb.apply_all()
    server_seq = b.c_ack
    rc, out = erb.xdp(frame)
    assert rc == XDP_TX, name(rc)
    check_answer(frame, out, OK, server_seq)
    assert [(r.seq, r.key, r.val) for r in erb.records()] == [(5, b'key:0', b'newer')]


def test_ring_full_again_after_an_answered_retransmission_holds_the_flows_next_set(erb_fast):
    """A held segment waits only for the writes acknowledged before it first arrived
    (erb_flow.hold_wseq). Once its retransmission is answered in XDP that bound is
    spent: when the ring is full again, the flow's next SET of the same key must be
    held behind the SETs acknowledged since (its own), not passed to Redis ahead of
    them. (Seen end to end: test_agent_killed_under_load_loses_nothing_and_keeps_order
    on the fleet, ~40 values of one key per client applied after a newer one.)"""
    erb = erb_fast
    f = Flow(erb).handshake()
    key = b'ak:0:0'
    for i in range(4):
        fast_set(erb, f, key, b'%d' % i)
    # the ring is full, the agent is down: the next SET is held (hold_wseq 4)
    payload = resp(b'SET', key, b'4')
    rc, _unused = f.send(payload)
    assert rc == 1, 'SET of a pending key with the ring full: %s, expected XDP_DROP (hold)' % name(rc)
    assert erb.flow(f).hold_wseq == 4
    # the agent (restarted) applies everything; the client's retransmission is answered
    assert [r.seq for r in erb.records()] == [1, 2, 3, 4]
    erb.apply_all()
    fast_set(erb, f, key, b'4')
    # the agent lags again: seqs 5..8 fill the ring
    for i in range(5, 8):
        fast_set(erb, f, key, b'%d' % i)
    g = erb.glob()
    assert (g.write_seq, g.applied_seq) == (8, 4)
    before = erb.stats()
    rc, _unused = f.send(resp(b'SET', key, b'8'))
    st = erb.stats()
    assert rc == 1, ('SET %r with its writes 5..8 pending and the ring full: %s, expected XDP_DROP (hold); '
                     'passed, Redis runs it before them %s' % (key, name(rc), nonzero(st)))
    assert st['set_pass_queue_full'] == before['set_pass_queue_full'] + 1
    assert st['hold'] == before['hold'] + 1 and st['cmds_passed'] == before['cmds_passed']
    assert [(r.seq, r.val) for r in erb.records()] == [(5, b'4'), (6, b'5'), (7, b'6'), (8, b'7')]
    erb.apply_all()
    fast_set(erb, f, key, b'8')
    assert [(r.seq, r.key, r.val) for r in erb.records()] == [(9, key, b'8')]


def test_write_in_flight_at_redis_makes_set_busy(erb_fast):
    erb = erb_fast
    a = Flow(erb, cport=40001).handshake()
    b = Flow(erb, cport=40002, c_isn=5, s_isn=77).handshake()
    rc, _unused = b.send(resp('DEL', 'key:1'))          # passed, Redis has not replied yet
    assert rc == XDP_PASS
    assert erb.inflight(bucket_of(b'key:1')) == 1
    assert_passed_untouched(erb, a, resp(b'SET', b'key:1', b'value'), 'set_pass_busy')
    assert erb.cache_entries_raw() == {}
    # Redis answers both; the next SET is answered in XDP again
    b.reply(b':0\r\n')
    a.reply(OK)
    assert erb.inflight(bucket_of(b'key:1')) == 0
    fast_set(erb, a, b'key:1', b'value2')
    assert [(r.seq, r.val) for r in erb.records()] == [(1, b'value2')]


def test_open_multi_elsewhere_makes_set_busy(erb_fast):
    """A MULTI open on another flow may hold a queued write of the key that runs
    at EXEC, after any SET answered now (its +QUEUED already released the
    in-flight count): no SET is answered until the EXEC's reply."""
    erb = erb_fast
    a = Flow(erb, cport=40001).handshake()
    b = Flow(erb, cport=40002, c_isn=5, s_isn=77).handshake()
    b.command(resp('MULTI'), OK)
    b.command(resp('DEL', 'key:1'), b'+QUEUED\r\n')
    assert erb.inflight(bucket_of(b'key:1')) == 0
    assert_passed_untouched(erb, a, resp(b'SET', b'key:1', b'value'), 'set_pass_busy')
    a.reply(OK)
    b.command(resp('EXEC'), b'*1\r\n:1\r\n')
    fast_set(erb, a, b'key:1', b'value2')
    assert [(r.seq, r.val) for r in erb.records()] == [(1, b'value2')]


def test_set_with_options_passed(erb_fast):
    f = Flow(erb_fast).handshake()
    assert_passed_untouched(erb_fast, f, resp('SET', 'key:1', 'value', 'EX', '10'), 'pass_not_single')


def test_set_and_an_incr_in_one_segment_passed(erb_fast):
    f = Flow(erb_fast).handshake()
    assert_passed_untouched(erb_fast, f, resp('SET', 'key:1', 'value') + resp('INCR', 'key:2'),
                            'pass_not_single')


def test_set_in_multi_passed(erb_fast):
    f = Flow(erb_fast).handshake()
    f.command(resp('MULTI'), OK)
    assert_passed_untouched(erb_fast, f, resp('SET', 'key:1', 'value'), 'pass_state')
    f.reply(b'+QUEUED\r\n')
    f.command(resp('EXEC'), b'*1\r\n+OK\r\n')
    assert erb_fast.cache_entries_raw() == {}      # no fill from inside MULTI either
    fast_set(erb_fast, f, b'key:1', b'value')   # out of MULTI: answered again


def test_set_after_select_1_passed(erb_fast):
    f = Flow(erb_fast).handshake()
    f.command(resp('SELECT', '1'), OK)
    assert_passed_untouched(erb_fast, f, resp('SET', 'key:1', 'value'), 'pass_state')


def test_set_with_reply_outstanding_passed(erb_fast):
    f = Flow(erb_fast).handshake()
    rc, _unused = f.send(resp('PING'))
    assert rc == XDP_PASS
    assert_passed_untouched(erb_fast, f, resp('SET', 'key:1', 'value'), 'pass_outstanding')


def test_set_on_untracked_mid_stream_flow_passed(erb_fast):
    erb = erb_fast
    f = Flow(erb, cport=42000)
    f.c_seq, f.c_ack, f.s_seq, f.s_ack = 12345, 999, 999, 12345
    assert_passed_untouched(erb, f, resp('SET', 'key:1', 'value'), 'flow_adopted')
    f.reply(OK)
    assert_passed_untouched(erb, f, resp('SET', 'key:2', 'value'), 'pass_untracked')
    assert erb.cache_entries_raw() == {}


def test_set_value_over_max_value_len_passed(erb_fast):
    """Passed untouched (which counter says so: see the next test)."""
    f = Flow(erb_fast).handshake()
    assert_passed_untouched(erb_fast, f, resp(b'SET', b'key:1', b'v' * 1025), 'rx_packets')
    st = erb_fast.stats()
    assert st['pass_too_big'] + st['set_pass_busy'] == 1


def test_set_value_over_max_value_len_counted_too_big(erb_fast):
    """erb.h: pass_too_big = "key/value/reply over the limits", set_pass_busy =
    "key busy (lock, in-flight write, no slot)". Regression (fixed in e113d12):
    do_set() counted a value over max_value_len as set_pass_busy."""
    f = Flow(erb_fast).handshake()
    assert_passed_untouched(erb_fast, f, resp(b'SET', b'key:1', b'v' * 1025), 'pass_too_big')
    assert erb_fast.stats()['set_pass_busy'] == 0


def test_set_value_over_erb_val_max_passed(erb_fast):
    f = Flow(erb_fast).handshake()
    assert_passed_untouched(erb_fast, f, resp(b'SET', b'key:1', b'v' * 1401), 'pass_not_single')


def test_set_key_over_max_key_len_passed(erb_fast):
    f = Flow(erb_fast).handshake()
    assert_passed_untouched(erb_fast, f, resp(b'SET', b'K' * 129, b'value'), 'pass_too_big')


def test_set_while_draining_passed(erb_fast):
    f = Flow(erb_fast).handshake()
    erb_fast.set_drain(True)
    assert_passed_untouched(erb_fast, f, resp(b'SET', b'key:1', b'value'), 'pass_disabled')


# ------------------------------------------------------------------ 4. dense, ordered sequence numbers

def test_fifty_sets_over_several_flows_dense_and_ordered(erb_fast_config):
    erb = erb_fast_config(ring_bytes=1 << 17)      # 77 records fit
    flows = [Flow(erb, cport=41000 + i, c_isn=1000 * i + 7, s_isn=50000 * i + 3).handshake() for i in range(5)]
    expect = []
    for n in range(1, 51):
        f = flows[(n * 3) % len(flows)]
        key = b'key:%d' % (n % 17)               # some keys written several times
        value = b'value:%d:' % n + BINARY
        fast_set(erb, f, key, value)
        expect.append((n, key, value))
    g = erb.glob()
    assert (g.write_seq, g.applied_seq) == (50, 0)
    recs = erb.records()
    assert [(r.seq, r.key, r.val) for r in recs] == expect
    assert all((r.version, r.op, r.db) == (ERB_RECORD_VERSION, ERB_OP_SET, 0) for r in recs)
    # the cache holds the last value of each key
    last = {}
    for _unused, k, v in expect:
        last[k] = v
    assert erb.cache_entries_raw() == last
    assert erb.stats()['set_fast'] == 50


def test_set_refused_for_a_full_ring_consumes_no_seq(erb_fast):
    erb = erb_fast
    f = Flow(erb).handshake()
    for i in range(4):
        fast_set(erb, f, b'key:%d' % i, b'value')
    b = Flow(erb, cport=40002, c_isn=5, s_isn=77).handshake()
    assert_passed_untouched(erb, b, resp(b'SET', b'key:x', b'value'), 'set_pass_queue_full', records_before=4)
    b.reply(OK)
    assert erb.glob().write_seq == 4
    assert [r.seq for r in erb.records()] == [1, 2, 3, 4]   # the agent drains
    fast_set(erb, f, b'key:y', b'value')
    assert [(r.seq, r.key) for r in erb.records()] == [(5, b'key:y')]
    assert erb.glob().write_seq == 5


# ------------------------------------------------------------------ 5. retransmission

def test_retransmitted_set_answered_again_without_second_record(erb_fast):
    erb = erb_fast
    f = Flow(erb).handshake()
    first = fast_set(erb, f, b'key:1', BINARY)
    req = f.last[2]
    for _unused in range(2):
        rc, out = erb.xdp(req)
        assert rc == XDP_TX, name(rc)
        assert out == first
    st = erb.stats()
    assert (st['set_fast'], st['retransmit_answer']) == (1, 2)
    assert erb.glob().write_seq == 1
    assert [(r.seq, r.val) for r in erb.records()] == [(1, BINARY)]
    # even after the record was applied and the key overwritten by another flow
    erb.apply_all()
    b = Flow(erb, cport=40002, c_isn=5, s_isn=77).handshake()
    fast_set(erb, b, b'key:1', b'other')
    rc, out = erb.xdp(req)
    assert (rc, out) == (XDP_TX, first)
    assert [(r.seq, r.val) for r in erb.records()] == [(2, b'other')]


# ------------------------------------------------------------------ 6. fills never overwrite a pending write

def test_fill_never_overwrites_a_pending_fast_write(erb_fast):
    """A Redis-path `SET k v2` (captured for a write-through fill) whose +OK comes
    after a fast-path `SET k v1` (pending: applied_seq < its wseq) must not
    replace v1 in the cache. The BPF rules make the two unable to overlap (a
    write in flight makes the fast SET busy), so the in-flight count of the
    bucket is hidden for the fast SET: fill_from_aux()'s key_pending check is
    what is tested."""
    erb = erb_fast
    a = Flow(erb, cport=40001).handshake()
    b = Flow(erb, cport=40002, c_isn=5, s_isn=77).handshake()
    bk = bucket_of(b'key:1')
    rc, _unused = b.send(resp('PING'))                        # b owes a reply: its SET goes to Redis
    assert rc == XDP_PASS
    rc, _unused = b.send(resp('SET', 'key:1', 'v2-redis'))
    assert rc == XDP_PASS
    assert erb.aux(b).fill_klen == len(b'key:1')         # captured for the fill
    assert erb.inflight(bk) == 1
    erb.set_inflight(bk, 0)
    fast_set(erb, a, b'key:1', b'v1-fast')
    erb.set_inflight(bk, 1)
    b.reply(b'+PONG\r\n')
    b.reply(OK)
    st = erb.stats()
    assert st['fill'] == 0 and st['fill_skipped'] == 1
    assert erb.cache_entries_raw() == {b'key:1': b'v1-fast'}
    rc, out = a.send(resp('GET', 'key:1'))
    assert rc == XDP_TX and tcp_payload(out) == bulk(b'v1-fast')


def test_fill_of_another_key_with_pending_writes(erb_fast):
    """Fills of keys without a pending write still happen while others are pending."""
    erb = erb_fast
    a = Flow(erb, cport=40001).handshake()
    b = Flow(erb, cport=40002, c_isn=5, s_isn=77).handshake()
    fast_set(erb, a, b'key:1', b'v1-fast')
    rc, _unused = b.send(resp('PING'))
    assert rc == XDP_PASS
    rc, _unused = b.send(resp('SET', 'key:2', 'v2-redis'))
    assert rc == XDP_PASS
    b.reply(b'+PONG\r\n')
    b.reply(OK)
    assert erb.stats()['fill'] == 1
    assert erb.cache_entries_raw() == {b'key:1': b'v1-fast', b'key:2': b'v2-redis'}


# ------------------------------------------------------------------ 7. fast path off

def test_set_passed_when_fast_path_off(erb):
    f = Flow(erb).handshake()
    prod = erb.ring().producer_pos
    rc, out = f.send(resp(b'SET', b'key:1', b'value'))
    assert (rc, out) == (XDP_PASS, f.last[2])
    f.reply(OK)
    st = erb.stats()
    assert (st['set_fast'], st['set_pass_queue_full'], st['set_pass_busy'], st['fill']) == (0, 0, 0, 1)
    assert erb.glob().write_seq == 0
    assert erb.ring().producer_pos == prod
    # GETs are still answered from the write-through fill
    rc, out = f.send(resp(b'GET', b'key:1'))
    assert rc == XDP_TX and tcp_payload(out) == bulk(b'value')
