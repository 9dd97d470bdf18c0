# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""GET hits answered with XDP_TX (exact reply frame), misses passed untouched,
retransmitted answered GETs answered again identically."""

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from erbtest import (CIP, CMAC, SIP, SMAC, TC_ACT_OK, XDP_NAMES, XDP_PASS, XDP_TX, Flow, assert_checksums,
                     M32, bulk, resp, tcp_payload, ts_option)

VALUE_SIZES = [0, 1, 9, 10, 99, 100, 118, 120, 121, 999, 1000, 1024]  # 120: a 128-byte reply


def value_of(n):
    return bytes((i * 7 + 33) % 256 for i in range(n))


def check_reply(flow, req, out, value, server_seq, window=None):
    """out is the exact reply frame to the request frame req."""
    q = Ether(req)
    p = Ether(out)
    payload = bulk(value)
    has_ts = ts_option(req) is not None
    thl = 32 if has_ts else 20
    assert len(out) == 14 + 20 + thl + len(payload), 'reply frame length %d' % len(out)
    assert p.dst == q.src == CMAC and p.src == q.dst == SMAC and p.type == 0x0800
    ip = p[IP]
    assert (ip.version, ip.ihl, ip.proto, ip.frag) == (4, 5, 6, 0)
    assert 'MF' not in str(ip.flags)
    assert ip.src == SIP and ip.dst == CIP
    assert ip.len == 20 + thl + len(payload)
    assert ip.ttl > 0
    t = p[TCP]
    assert t.sport == q[TCP].dport and t.dport == q[TCP].sport
    assert t.seq == server_seq, 'reply seq %d, server next is %d' % (t.seq, server_seq)
    req_len = len(tcp_payload(req))
    assert t.ack == (q[TCP].seq + req_len) & 0xffffffff
    assert str(t.flags) == 'PA', 'reply flags %s' % t.flags
    assert t.dataofs * 4 == thl
    assert t.urgptr == 0
    if window is not None:
        assert t.window == window
    if has_ts:
        tsval, tsecr = ts_option(req)
        assert t.options == [('NOP', None), ('NOP', None), ('Timestamp', (tsecr, tsval))]
    else:
        assert t.options == []
    assert tcp_payload(out) == payload
    assert_checksums(out)


@pytest.mark.parametrize('ts', [True, False], ids=['ts', 'no-ts'])
@pytest.mark.parametrize('size', VALUE_SIZES)
def test_hit_exact_reply(erb, size, ts):
    f = Flow(erb, ts=ts).handshake()
    value = value_of(size)
    f.set(b'key:%d' % size, value)
    st = erb.stats()
    # a string fill: erb-agent's scan for unchecked hashes stays asleep
    assert (st['fill'], st['fill_hash']) == (1, 0), st
    server_next = f.c_ack
    rc, out = f.get(b'key:%d' % size)
    assert rc == XDP_TX, XDP_NAMES.get(rc, rc)
    check_reply(f, f.last[2], out, value, server_next, window=f.s_win)
    st = erb.stats()
    assert (st['hit'], st['miss']) == (1, 0)
    fl = erb.flow(f)
    assert fl.s_nxt == (server_next + len(bulk(value))) & 0xffffffff
    assert fl.c_nxt == f.c_seq


def test_hit_lowercase_get_and_binary_key(erb):
    f = Flow(erb).handshake()
    key = b'\x00\r\n*2\r\n$3\r\nGET\xff'
    f.set(key, b'v\r\n')
    req = b'*2\r\n$3\r\nget\r\n$%d\r\n%s\r\n' % (len(key), key)
    seq = f.c_ack
    rc, out = f.send(req)
    assert rc == XDP_TX
    check_reply(f, f.last[2], out, b'v\r\n', seq)


def test_hit_max_key_len(erb):
    f = Flow(erb).handshake()
    key = b'K' * 128
    f.set(key, b'x')
    rc, out = f.get(key)
    assert rc == XDP_TX
    assert tcp_payload(out) == b'$1\r\nx\r\n'


def test_hit_with_sack_and_ts_options_layout(erb):
    """Options other than NOP NOP TS (SACK first, TS elsewhere) still give a mirrored TS."""
    f = Flow(erb).handshake()
    f.set(b'k', b'hello')
    opts = [('SAck', (f.c_ack - 100, f.c_ack - 50)), ('NOP', None), ('NOP', None),
            ('Timestamp', (4242, 777))]
    req = f.client_frame(resp('GET', 'k'), options=opts)
    rc, out = erb.xdp(req)
    assert rc == XDP_TX
    check_reply(f, req, out, b'hello', f.c_ack)


def test_resend_before_an_answer_in_flight_gets_the_answers_tsval(erb):
    """Redis resends its last reply (the ACK for it rode on a request we answered).
    Mapped, the resend ends at the client's rcv_nxt, so the client accepts it before
    our answer in flight arrives, and its ACK covers the answered request: a newer
    TSval there would make PAWS drop our answer, a reply lost for good. TC egress
    gives such a resend our last answer's TSval; new bytes keep Redis's own."""
    f = Flow(erb).handshake()
    f.set(b'k', b'hello')
    last_reply_seq = (f.s_seq - 5) & M32          # Redis's '+OK' of that SET, server view
    rc, answer = f.get(b'k')
    assert rc == XDP_TX
    answer_tsval = ts_option(answer)[0]
    f.s_tsval += 40                                # Redis's clock moved on: RTO later
    rc, out = f.erb.tc(f.server_frame(b'+OK\r\n', seq=last_reply_seq))
    assert rc == TC_ACT_OK
    assert ts_option(out)[0] == answer_tsval
    assert_checksums(out)
    assert erb.stats()['ts_clamped'] == 1
    # Redis's next new bytes (a passed command's reply) keep their TSval
    rc, out = f.send(resp('PING'))
    assert rc == XDP_PASS
    rc, out = f.reply(b'+PONG\r\n')
    assert ts_option(out)[0] == f.s_tsval
    assert erb.stats()['ts_clamped'] == 1


def test_retransmission_of_a_lost_segment_keeps_its_tsval(erb):
    """A Redis segment the client never got (lost on the way) is retransmitted with a
    newer TSval: it must keep it. Given our older answer's TSval, the client (whose
    ts_recent moved on with later segments) drops it by PAWS every time: a request
    never answered."""
    f = Flow(erb).handshake()
    f.set(b'k', b'hello')
    rc, answer = f.get(b'k')
    assert rc == XDP_TX
    rc, out = f.send(resp('PING'))
    assert rc == XDP_PASS
    pong_seq = f.s_seq
    rc, out = f.reply(b'+PONG\r\n')                # lost before the client: it never ACKs it
    f.s_tsval += 40                                   # Redis's RTO
    rc, out = f.erb.tc(f.server_frame(b'+PONG\r\n', seq=pong_seq))
    assert rc == TC_ACT_OK
    assert ts_option(out)[0] == f.s_tsval, 'a retransmission of lost bytes got an older TSval: PAWS drops it'
    assert erb.stats()['ts_clamped'] == 0


def test_miss_passes_byte_identical(erb):
    f = Flow(erb).handshake()
    f.set(b'other', b'value')
    rc, out = f.get(b'missing')
    assert rc == XDP_PASS
    assert out == f.last[2]
    st = erb.stats()
    assert (st['miss'], st['hit']) == (1, 0)
    # the miss was passed to Redis: it is outstanding until the reply
    assert erb.flow(f).cmds == erb.flow(f).replies + 1
    rc, out = f.reply(b'$-1\r\n')
    assert rc == TC_ACT_OK and out == f.last[2]


def test_miss_on_empty_cache_without_ts(erb):
    f = Flow(erb, ts=False).handshake()
    rc, out = f.get(b'nothing')
    assert (rc, out) == (XDP_PASS, f.last[2])
    assert erb.stats()['miss'] == 1


def test_value_over_max_value_len_is_not_cached(erb):
    f = Flow(erb).handshake()
    f.set(b'big', b'b' * 1025)
    assert erb.stats()['fill'] == 0
    rc, out = f.get(b'big')
    assert (rc, out) == (XDP_PASS, f.last[2])
    assert erb.stats()['miss'] == 1


def test_key_over_max_key_len_is_passed(erb):
    f = Flow(erb).handshake()
    key = b'K' * 129
    f.set(key, b'v')
    assert erb.stats()['fill'] == 0
    rc, out = f.get(key)
    assert (rc, out) == (XDP_PASS, f.last[2])
    assert erb.stats()['pass_too_big'] == 1


def test_fill_then_hit_from_another_flow(erb):
    a = Flow(erb, cport=40001).handshake()
    b = Flow(erb, cport=40002, c_isn=5, s_isn=77).handshake()
    a.set(b'shared', b'1234')
    b.send(resp('PING'))            # a server segment on b sets its window
    b.reply(b'+PONG\r\n')
    server_next = b.c_ack
    rc, out = b.get(b'shared')
    assert rc == XDP_TX
    check_reply(b, b.last[2], out, b'1234', server_next, window=b.s_win)
    assert Ether(out)[TCP].dport == 40002


def test_several_hits_in_a_row(erb):
    f = Flow(erb).handshake()
    f.set(b'a', b'AAA')
    f.set(b'b', b'BB')
    for key, val in [(b'a', b'AAA'), (b'b', b'BB'), (b'a', b'AAA')]:
        seq = f.c_ack
        rc, out = f.get(key)
        assert rc == XDP_TX
        check_reply(f, f.last[2], out, val, seq)
    assert erb.stats()['hit'] == 3


# ----------------------------------------------------------- retransmission

def test_retransmitted_get_is_answered_identically(erb):
    f = Flow(erb).handshake()
    f.set(b'k', b'original')
    req_seq, srv_seq = f.c_seq, f.c_ack
    rc, first = f.get(b'k')
    assert rc == XDP_TX
    req = f.last[2]
    # another flow overwrites k, then deletes it: the cache no longer has it
    b = Flow(erb, cport=41000).handshake()
    b.set(b'k', b'overwritten')
    b.command(resp('DEL', 'k'), b':1\r\n')
    assert erb.cache_entries().get(b'k') is None
    # the client lost the reply and retransmits the GET (same seq, same length)
    again = f.client_frame(resp('GET', 'k'), seq=req_seq, ack=srv_seq)
    rc, out = erb.xdp(again)
    assert rc == XDP_TX, XDP_NAMES.get(rc, rc)
    assert tcp_payload(out) == tcp_payload(first) == bulk(b'original')
    assert Ether(out)[TCP].seq == Ether(first)[TCP].seq
    assert Ether(out)[TCP].ack == Ether(first)[TCP].ack
    tsval, tsecr = ts_option(again)
    assert ts_option(out) == (tsecr, tsval)
    assert_checksums(out)
    assert erb.stats()['retransmit_answer'] == 1
    # byte-identical retransmission too
    rc, out2 = erb.xdp(req)
    assert rc == XDP_TX and out2 == first


def test_retransmitted_get_after_a_later_passed_command(erb):
    f = Flow(erb).handshake()
    f.set(b'k', b'v1')
    req_seq, srv_seq = f.c_seq, f.c_ack
    rc, first = f.get(b'k')
    assert rc == XDP_TX
    f.set(b'k', b'v2')   # same flow overwrites it (passed, corrected, +OK)
    again = f.client_frame(resp('GET', 'k'), seq=req_seq, ack=srv_seq)
    rc, out = erb.xdp(again)
    assert rc == XDP_TX
    assert tcp_payload(out) == bulk(b'v1')
    assert Ether(out)[TCP].seq == Ether(first)[TCP].seq


def test_first_answer_window_is_in_scaled_units(erb):
    """The SYN-ACK's window is unscaled (RFC 7323); later windows are in units
    of 2^wscale. A flow answered before any non-SYN server segment must not
    advertise the raw SYN-ACK window (64240 << 7 = 8 MB instead of 64240)."""
    a = Flow(erb, cport=40010).handshake()
    a.set(b'k', b'v')
    b = Flow(erb, cport=40011, c_isn=77, s_isn=88).handshake(synack_window=64240)
    rc, out = b.get(b'k')
    assert rc == XDP_TX
    win = Ether(out)[TCP].window
    assert win << 7 <= 64240, 'reply advertises window %d (x128 = %d bytes), the server offered 64240' % (
        win, win << 7)
