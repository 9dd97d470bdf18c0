# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Sequence corrections after XDP answers: client segments are rewritten into
the server's view at XDP, server segments into the client's view at TC egress
(seq/ack and SACK blocks), with valid checksums."""

import pytest
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether

from erbtest import (M32, TC_ACT_OK, TC_ACT_SHOT, XDP_PASS, XDP_TX, Flow, assert_checksums, bulk, resp, sack_blocks,
                     tcp_payload)
from erbtest import L


def answered_flow(erb, value=b'hello world', **kw):
    """A flow with one answered GET; returns (flow, request length, reply length)."""
    f = Flow(erb, **kw).handshake()
    f.set(b'k', value)
    req = resp('GET', 'k')
    rc, out = f.send(req)
    assert rc == XDP_TX
    assert tcp_payload(out) == bulk(value)
    return f, len(req), len(bulk(value))


def seg(out):
    t = Ether(out)[TCP]
    return t.seq, t.ack


def test_client_segment_after_answer_is_in_server_view(erb):
    f, qlen, rlen = answered_flow(erb)
    # what the server's stack expects: it never saw the GET nor sent the reply
    exp_seq, exp_ack = f.s_ack, f.s_seq
    ping = resp('PING')
    client_seq, client_ack = f.c_seq, f.c_ack
    rc, out = f.send(ping)
    assert rc == XDP_PASS
    assert seg(out) == (exp_seq, exp_ack)
    assert (exp_seq, exp_ack) == ((client_seq - qlen) & M32, (client_ack - rlen) & M32)
    assert tcp_payload(out) == ping
    assert_checksums(out)
    # nothing but seq/ack changed
    a, b = bytearray(f.last[2]), bytearray(out)
    a[38:46] = b[38:46] = b'\0' * 8
    a[50:52] = b[50:52] = b'\0\0'
    assert a == b
    assert erb.stats()['corrected_in'] >= 1


def test_server_segment_after_answer_is_in_client_view(erb):
    f, qlen, rlen = answered_flow(erb)
    f.send(resp('PING'))
    srv_seq, srv_ack = f.s_seq, f.s_ack
    rc, out = f.reply(b'+PONG\r\n')
    assert rc == TC_ACT_OK
    assert seg(out) == ((srv_seq + rlen) & M32, (srv_ack + qlen) & M32)
    assert tcp_payload(out) == b'+PONG\r\n'
    assert_checksums(out)    # TC test-run skb is CHECKSUM_NONE: must be fully valid
    assert erb.stats()['corrected_out'] >= 1
    # and the client's model agrees: its next ack is what it now sends
    assert f.c_ack == (Ether(out)[TCP].seq + 7) & M32


def test_pure_acks_are_corrected_both_ways(erb):
    f, qlen, rlen = answered_flow(erb)
    ack = f.client_frame(flags='A')
    rc, out = erb.xdp(ack)
    assert rc == XDP_PASS
    assert seg(out) == (f.s_ack, f.s_seq)
    assert_checksums(out)
    sack = f.server_frame(flags='A')
    rc, out = erb.tc(sack)
    assert seg(out) == ((f.s_seq + rlen) & M32, (f.s_ack + qlen) & M32)
    assert_checksums(out)


def test_a_server_segment_waits_while_an_answer_changes_the_corrections(erb):
    """XDP changes a flow's corrections (c and s) with adj_seq odd; TC egress, on another CPU,
    copies them only when adj_seq is even and the same before and after. Caught odd for good,
    the segment is dropped (Redis's TCP resends it), never sent with half-written corrections
    or none; even again, the same segment goes out corrected."""
    f, qlen, rlen = answered_flow(erb)
    assert erb.xdp(f.client_frame(flags='A'))[0] == XDP_PASS  # the client acknowledges the answer
    fl = erb.flow(f)
    assert fl.adj_seq == 2  # one answer: one change, begun and ended
    frame = f.server_frame(flags='A')
    fl.adj_seq += 1
    erb.put_flow(f, fl)
    rc, _unused = erb.tc(frame)
    assert rc == TC_ACT_SHOT
    fl.adj_seq += 1
    erb.put_flow(f, fl)
    rc, out = erb.tc(frame)
    assert rc == TC_ACT_OK
    assert seg(out) == ((f.s_seq + rlen) & M32, (f.s_ack + qlen) & M32)
    assert_checksums(out)


def test_corrections_accumulate_over_answers(erb):
    f = Flow(erb).handshake()
    f.set(b'a', b'1')
    f.set(b'b', b'22')
    qlen = rlen = 0
    for key, val in [(b'a', b'1'), (b'b', b'22'), (b'a', b'1')]:
        req = resp('GET', key)
        rc, _unused = f.send(req)
        assert rc == XDP_TX
        qlen += len(req)
        rlen += len(bulk(val))
    cseq, cack = f.c_seq, f.c_ack
    rc, out = f.send(resp('PING'))
    assert seg(out) == ((cseq - qlen) & M32, (cack - rlen) & M32) == (f.s_ack - 14, f.s_seq)
    assert_checksums(out)
    sseq, sack = f.s_seq, f.s_ack
    rc, out = f.reply(b'+PONG\r\n')
    assert seg(out) == ((sseq + rlen) & M32, (sack + qlen) & M32)
    assert_checksums(out)


def resent_lands_acknowledged(erb, between):
    """Redis's reply R0, three answered GETs (with `between` passed commands before each),
    then R0 sent again by Redis. Returns (client seq range R0 got the second time,
    the ack the last answered request carried)."""
    f = Flow(erb).handshake()
    f.set(b'a', b'1')
    f.set(b'b', b'x' * 40)
    rc, _unused = f.send(resp('PING'))
    assert rc == XDP_PASS
    r0_seq, r0 = f.s_seq, b'+PONG\r\n'
    f.reply(r0)
    for key, val in ((b'a', b'1'), (b'b', b'x' * 40), (b'a', b'1')):
        for _unused in range(between):
            f.command(resp('ECHO', 'between'), bulk(b'between'))
        ack_of_last = f.c_ack
        rc, out = f.send(resp('GET', key))
        assert rc == XDP_TX and tcp_payload(out) == bulk(val)
    rc, out = erb.tc(f.server_frame(r0, seq=r0_seq))
    assert rc == TC_ACT_OK
    assert tcp_payload(out) == r0
    assert_checksums(out)
    start = Ether(out)[TCP].seq
    return start, (start + len(r0)) & M32, ack_of_last


@pytest.mark.parametrize('between', [0, 1])
def test_server_bytes_resent_after_several_answers_land_where_the_client_has_them(erb, between):
    """TC egress keeps one correction step, as netfilter's seqadj does: server bytes from
    before the last answer but one are mapped with a later offset than they first had. That
    is safe only because XDP answers only when the client has acknowledged all the server
    sent: bytes mapped too far still end at or before the ack the last answered request
    carried, in sequence space the client has and drops as a duplicate, never on an answer
    it may not have received (which would be a wrong reply)."""
    start, end, ack_of_last = resent_lands_acknowledged(erb, between)
    assert (ack_of_last - end) & M32 < 1 << 31, (
        'resent bytes end at %d, past the ack %d of the last answered request' % (end, ack_of_last))


def test_sack_blocks_mapped_both_ways(erb):
    f, qlen, rlen = answered_flow(erb)
    # client SACKs server bytes beyond the inserted reply (client view)
    lo, hi = (f.c_ack + 100) & M32, (f.c_ack + 300) & M32
    # and one block entirely before the answer (no correction there)
    early = ((f.c_ack - rlen - 40) & M32, (f.c_ack - rlen - 20) & M32)
    opts = [('NOP', None), ('NOP', None), ('Timestamp', (5, 6)), ('NOP', None), ('NOP', None),
            ('SAck', (lo, hi) + early)]
    frame = f.client_frame(flags='A', options=opts)
    rc, out = erb.xdp(frame)
    assert rc == XDP_PASS
    assert sack_blocks(out) == [((lo - rlen) & M32, (hi - rlen) & M32), early]
    assert seg(out) == (f.s_ack, f.s_seq)
    assert_checksums(out)
    # server SACKs client bytes beyond the removed request (server view)
    lo, hi = (f.s_ack + 50) & M32, (f.s_ack + 90) & M32
    opts = [('NOP', None), ('NOP', None), ('Timestamp', (9, 10)), ('NOP', None), ('NOP', None),
            ('SAck', (lo, hi))]
    rc, out = erb.tc(f.server_frame(flags='A', options=opts))
    assert rc == TC_ACT_OK
    assert sack_blocks(out) == [((lo + qlen) & M32, (hi + qlen) & M32)]
    assert seg(out) == ((f.s_seq + rlen) & M32, (f.s_ack + qlen) & M32)
    assert_checksums(out)


def test_sack_block_without_timestamps(erb):
    f, qlen, rlen = answered_flow(erb, ts=False)
    lo, hi = (f.c_ack + 1) & M32, (f.c_ack + 2) & M32
    rc, out = erb.xdp(f.client_frame(flags='A', options=[('NOP', None), ('NOP', None), ('SAck', (lo, hi))]))
    assert sack_blocks(out) == [((lo - rlen) & M32, (hi - rlen) & M32)]
    assert_checksums(out)
    lo, hi = (f.s_ack + 3) & M32, (f.s_ack + 4) & M32
    rc, out = erb.tc(f.server_frame(flags='A', options=[('NOP', None), ('NOP', None), ('SAck', (lo, hi))]))
    assert sack_blocks(out) == [((lo + qlen) & M32, (hi + qlen) & M32)]
    assert_checksums(out)


def test_corrections_across_sequence_wraparound(erb):
    f, qlen, rlen = answered_flow(erb, c_isn=M32 - 30, s_isn=M32 - 20, value=b'x' * 50)
    cseq, cack = f.c_seq, f.c_ack
    rc, out = f.send(resp('PING'))
    assert seg(out) == ((cseq - qlen) & M32, (cack - rlen) & M32)
    assert_checksums(out)
    sseq, sack = f.s_seq, f.s_ack
    rc, out = f.reply(b'+PONG\r\n')
    assert seg(out) == ((sseq + rlen) & M32, (sack + qlen) & M32)
    assert_checksums(out)


def test_flow_without_answers_is_not_rewritten(erb):
    f = Flow(erb).handshake()
    rc, out = f.send(resp('PING'))
    assert (rc, out) == (XDP_PASS, f.last[2])
    rc, out = f.reply(b'+PONG\r\n')
    assert (rc, out) == (TC_ACT_OK, f.last[2])
    st = erb.stats()
    assert st['corrected_in'] == st['corrected_out'] == 0


def test_closed_flow_is_left_to_a_timer_of_its_own(erb):
    """Both FINs acked: the flow is kept, closed, for what still comes, and a timer in
    erb_flow_gc (not in the flow: global functions take the flow as plain memory) deletes
    it later. A new connection on the tuple that closes too arms the same element again."""
    f, qlen, rlen = answered_flow(erb)
    assert erb.flow(f) is not None and not erb.flow_gc(f)
    for conn in range(2):
        rc, _unused = f.send(b'', flags='FA')
        assert rc == XDP_PASS
        f.c_seq = (f.c_seq + 1) & M32
        f.s_ack = (f.s_ack + 1) & M32
        rc, _unused = f.reply(b'', flags='FA')
        f.s_seq = (f.s_seq + 1) & M32
        f.c_ack = (f.c_ack + 1) & M32
        assert bool(erb.flow_gc(f)) == (conn == 1), 'a timer before the last ACK, or the old one gone'
        rc, _unused = f.send(b'', flags='A')          # the last ACK
        assert rc == XDP_PASS
        fl = erb.flow(f)
        assert fl is not None and fl.flags & L.ERB_FLOW_CLOSED, 'the flow was not kept, closed'
        assert erb.flow_gc(f), 'no deletion timer for the closed flow'
        assert erb.stats()['flow_end'] == 0
        if conn == 0:
            # a new connection on the same tuple: a new flow, the old timer still there
            f = Flow(erb, c_isn=f.c_seq + 100000, s_isn=f.s_isn + 7777777).handshake()
            assert not erb.flow(f).flags & L.ERB_FLOW_CLOSED and erb.flow_gc(f)
    assert erb.flow_gc_count() == 1


def test_server_fin_retransmitted_after_flow_end_is_still_corrected(erb):
    """Client closes first; its last ACK (which ends the flow at XDP) is lost, so
    the server retransmits its FIN: the retransmission must still carry the
    client-view seq, else the client (TIME_WAIT) never acks it."""
    f, qlen, rlen = answered_flow(erb)
    rc, out = f.send(b'', flags='FA')
    assert rc == XDP_PASS
    f.c_seq = (f.c_seq + 1) & M32
    f.s_ack = (f.s_ack + 1) & M32
    fin_seq = f.s_seq
    rc, out = f.reply(b'', flags='FA')
    assert seg(out)[0] == (fin_seq + rlen) & M32
    f.s_seq = (f.s_seq + 1) & M32
    f.c_ack = (f.c_ack + 1) & M32
    rc, out = f.send(b'', flags='A')          # the last ACK
    assert rc == XDP_PASS
    assert seg(out) == (f.s_ack, f.s_seq)
    # ...lost: the server retransmits its FIN
    rc, out = erb.tc(f.server_frame(b'', flags='FA', seq=fin_seq))
    assert seg(out)[0] == (fin_seq + rlen) & M32, \
        'retransmitted FIN left in the server view (flow state deleted at the last ACK)'
