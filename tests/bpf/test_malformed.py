# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Malformed and foreign frames: XDP_PASS with the bytes untouched (even when
the cache holds the key, so an answer was possible), and malformed RESP on a
tracked flow flushes the cache rather than leaving stale entries."""

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from erbtest import (CIP, CMAC, SIP, SMAC, TC_ACT_OK, XDP_NAMES, XDP_PASS, XDP_TX, Flow, _ones_sum, bulk,
                     own_checksums_ok, resp, tcp_payload)

GET_K = resp('GET', 'k')


def filled(erb, **kw):
    f = Flow(erb, **kw).handshake()
    f.set(b'k', b'v')
    return f


def assert_untouched(erb, frame):
    rc, out = erb.xdp(frame)
    assert rc == XDP_PASS, XDP_NAMES.get(rc, rc)
    assert out == frame
    assert erb.stats()['hit'] == 0


def in_order_get(f, **kw):
    """The next in-order GET frame of f as scapy packet (not sent)."""
    return Ether(f.client_frame(GET_K, **kw))


def test_sanity_the_unmodified_frame_is_a_hit(erb):
    f = filled(erb)
    rc, out = erb.xdp(bytes(in_order_get(f)))
    assert rc == XDP_TX


def test_truncated_frames(erb):
    f = filled(erb)
    full = bytes(in_order_get(f))
    # BPF_PROG_TEST_RUN needs at least an Ethernet header: cut from there on
    for n in range(14, len(full)):
        assert_untouched(erb, full[:n])
    rc, _unused = erb.xdp(full)
    assert rc == XDP_TX     # the state was not disturbed by the truncated copies


def test_truncated_frames_tc(erb):
    f = filled(erb)
    full = f.server_frame(b'+PONG\r\n')
    # the skb test run refuses an IPv4 frame without a whole IP header (EINVAL)
    for n in range(14 + 20, len(full)):
        rc, out = erb.tc(full[:n])
        assert (rc, out) == (TC_ACT_OK, full[:n])


def test_ip_options(erb):
    f = filled(erb)
    p = in_order_get(f)
    p[IP].options = [b'\x01\x01\x01\x00']   # NOP NOP NOP EOL: ihl 6
    del p[IP].chksum, p[IP].len, p[IP].ihl
    frame = bytes(Ether(bytes(p)))
    assert Ether(frame)[IP].ihl == 6
    assert_untouched(erb, frame)


@pytest.mark.parametrize('frag', [(1, 0), (0, 8), (1, 8)], ids=['MF', 'offset', 'MF+offset'])
def test_ip_fragments(erb, frag):
    f = filled(erb)
    p = in_order_get(f)
    mf, off = frag
    p[IP].flags = 'MF' if mf else 0
    p[IP].frag = off
    del p[IP].chksum
    assert_untouched(erb, bytes(p))


def test_udp_and_icmp(erb):
    filled(erb)
    for l4 in (UDP(sport=40000, dport=6379) / Raw(GET_K), ICMP() / Raw(GET_K)):
        frame = bytes(Ether(src=CMAC, dst=SMAC) / IP(src=CIP, dst=SIP) / l4)
        assert_untouched(erb, frame)
    assert erb.stats()['rx_packets'] == 3   # only SYN, ACK and SET counted


def test_ipv6(erb):
    filled(erb)
    frame = bytes(Ether(src=CMAC, dst=SMAC) / IPv6(src='fd00::2', dst='fd00::1') /
                  TCP(sport=40000, dport=6379, flags='PA', seq=1, ack=1) / Raw(GET_K))
    assert_untouched(erb, frame)
    vlan = bytes(Ether(src=CMAC, dst=SMAC, type=0x8100)) + b'\x00\x01\x08\x00' + \
        bytes(IP(src=CIP, dst=SIP) / TCP(sport=40000, dport=6379, flags='PA') / Raw(GET_K))
    assert_untouched(erb, vlan)


def test_other_port(erb):
    f = filled(erb)
    p = in_order_get(f)
    p[TCP].dport = 6380
    del p[TCP].chksum
    assert_untouched(erb, bytes(p))
    # and server traffic from another port is not touched at TC either
    s = Ether(f.server_frame(b'+x\r\n'))
    s[TCP].sport = 6380
    del s[TCP].chksum
    assert erb.tc(bytes(s)) == (TC_ACT_OK, bytes(s))


@pytest.mark.parametrize('doff', [0, 1, 4, 15])
def test_bogus_doff(erb, doff):
    f = filled(erb)
    frame = bytearray(bytes(in_order_get(f)))
    frame[14 + 20 + 12] = (doff << 4) | (frame[46] & 0x0f)
    assert_untouched(erb, bytes(frame))


def test_tot_len_larger_than_frame(erb):
    f = filled(erb)
    frame = bytearray(bytes(in_order_get(f)))
    tot = struct.unpack('!H', frame[16:18])[0]
    frame[16:18] = struct.pack('!H', tot + 1)
    assert_untouched(erb, bytes(frame))
    frame[16:18] = struct.pack('!H', 0xffff)
    assert_untouched(erb, bytes(frame))


def test_tot_len_shorter_than_headers(erb):
    f = filled(erb)
    frame = bytearray(bytes(in_order_get(f)))
    frame[16:18] = struct.pack('!H', 20 + 19)
    assert_untouched(erb, bytes(frame))


def test_ethernet_padding_is_ignored(erb):
    """A short segment padded to 60 bytes by the sender's NIC is still one exact GET."""
    f = Flow(erb, ts=False).handshake()
    f.set(b'k', b'v')
    frame = f.client_frame(GET_K) + b'\0' * 8
    rc, out = erb.xdp(frame)
    assert rc == XDP_TX
    assert tcp_payload(out) == bulk(b'v')


MALFORMED = {
    'negative-bulk': b'*2\r\n$3\r\nGET\r\n$-5\r\n',
    'bad-argc': b'*x\r\n',
    'bad-bulk-len': b'*2\r\n$3\r\nGET\r\n$1x\r\nk\r\n',
    'missing-crlf': b'*2\r\n$3\r\nGETxx$1\r\nk\r\n',
    'binary': b'*2\r\n\x00\xff\xfe\x80garbage\r\n\x07',
    'not-bulk-in-array': b'*2\r\n:3\r\nGET\r\n',
}


@pytest.mark.parametrize('name', sorted(MALFORMED))
def test_malformed_resp_on_tracked_flow_flushes(erb, name):
    a = filled(erb, cport=48000)
    b = Flow(erb, cport=48001, c_isn=7, s_isn=8).handshake()
    rc, out = a.send(MALFORMED[name])
    assert (rc, out) == (XDP_PASS, a.last[2])
    st = erb.stats()
    assert st['parse_error'] >= 1
    assert st['flush'] >= 1
    assert b'k' not in erb.cache_entries()
    before = erb.stats()
    rc, out = b.send(GET_K)
    assert (rc, out) == (XDP_PASS, b.last[2])
    assert erb.stats()['miss'] == before['miss'] + 1
    # the flow that sent garbage is never answered again
    b.reply(b'$-1\r\n')
    a.reply(b'-ERR Protocol error\r\n')
    rc, out = a.send(GET_K)
    assert (rc, out) == (XDP_PASS, a.last[2])


def test_inline_garbage_line_flushes(erb):
    """A line not starting with '*' is an inline command for Redis: keys unknown => flush."""
    a = filled(erb)
    rc, out = a.send(b'\x01\x02\xfe garbage k\r\n')
    assert (rc, out) == (XDP_PASS, a.last[2])
    assert erb.stats()['flush'] == 1
    assert b'k' not in erb.cache_entries()


def test_malformed_reply_untracks_flow(erb):
    f = Flow(erb).handshake()
    f.send(resp('SET', 'k', 'v'))
    f.reply(b'\x00\x01garbage\r\n')
    st = erb.stats()
    assert st['parse_error'] == 1 and st['fill'] == 0
    f.reply(b'+OK\r\n')
    assert erb.stats()['fill'] == 0
    assert b'k' not in erb.cache_entries()


def test_huge_bulk_length(erb):
    f = filled(erb)
    rc, out = f.send(b'*2\r\n$3\r\nGET\r\n$99999999999\r\n')
    assert (rc, out) == (XDP_PASS, f.last[2])
    assert erb.stats()['parse_error'] == 1


# --------------------------- segments the kernel accepts but XDP does not parse

def desync_then_next(erb, mangle):
    """Send PING on a tracked flow as a frame mangled by mangle(scapy pkt) ->
    bytes (the kernel still accepts it: IP options, odd TCP options); then the
    next in-order PING. Returns the verdict of the second one."""
    f = filled(erb)
    first = mangle(Ether(f.client_frame(resp('PING'))))
    rc, out = erb.xdp(first)
    assert (rc, out) == (XDP_PASS, first)
    f.c_seq += 14
    f.s_ack += 14
    f.reply(b'+PONG\r\n')
    rc, out = f.send(resp('PING'))
    return rc, f


def with_ip_options(p):
    p[IP].options = [b'\x01\x01\x01\x00']
    del p[IP].chksum, p[IP].len, p[IP].ihl
    return bytes(Ether(bytes(p)))


def silly_opts(p):
    """NOP NOP kind=30 len=1 + 8 zero bytes in place of NOP NOP TS: Linux's
    tcp_parse_options stops at a length < 2 ("silly option") and accepts the
    segment. Built on the raw bytes: scapy would re-encode the bad option."""
    raw = bytearray(bytes(p))
    raw[54:66] = b'\x01\x01\x1e\x01' + b'\0' * 8
    tot = struct.unpack('!H', raw[16:18])[0]
    seg = raw[34:14 + tot]
    seg[16:18] = b'\0\0'
    pseudo = bytes(raw[26:34]) + struct.pack('!BBH', 0, 6, len(seg))
    raw[50:52] = struct.pack('!H', 0xffff - _ones_sum(pseudo + bytes(seg)))
    assert own_checksums_ok(bytes(raw))
    return bytes(raw)


@pytest.mark.parametrize('mangle', [with_ip_options, silly_opts], ids=['ip-options', 'silly-tcp-option'])
def test_unparsed_segment_does_not_stall_the_flow(erb, mangle):
    """A segment erb_xdp passes without parsing (IP options, TCP options it
    cannot walk) is delivered by the kernel. erb_xdp does not advance c_nxt,
    so every later in-order segment of the flow is held (XDP_DROP) forever."""
    rc, f = desync_then_next(erb, mangle)
    assert rc == XDP_PASS, '%s: next in-order segment held after an unparsed one' % XDP_NAMES.get(rc, rc)


@pytest.mark.parametrize('mangle', [with_ip_options, silly_opts], ids=['ip-options', 'silly-tcp-option'])
def test_unparsed_write_does_not_leave_stale_entry(erb, mangle):
    """DEL k in a segment the kernel accepts but erb_xdp passes unparsed:
    another flow's GET k must not be answered the deleted value."""
    a = filled(erb, cport=49000)
    b = Flow(erb, cport=49001, c_isn=3, s_isn=4).handshake()
    frame = mangle(Ether(a.client_frame(resp('DEL', 'k'))))
    rc, out = erb.xdp(frame)
    assert (rc, out) == (XDP_PASS, frame)
    rc, out = b.send(GET_K)
    assert rc == XDP_PASS, '%s: stale value %r served after DEL' % (XDP_NAMES.get(rc, rc), tcp_payload(out))
