# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""TCP under faults on answered flows: lost answers, duplicated and collapsed
retransmissions, reordering, odd frames (IP options, fragments, VLAN tags,
IPv6 extension headers, BIG TCP), the client's MSS and window, Fast Open,
window probes and resets. Each test states what the kernel's TCP on either
side would see, and fails on the data path that had the hole."""

from scapy.layers.inet import IP, TCP, IPOption
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from erbtest import (CMAC, M32, REDIS_PORT, SMAC, TC_ACT_OK, XDP_NAMES, XDP_PASS, XDP_TX, Flow,
                     assert_checksums, bulk, resp, tcp_payload)
from erbtest import BIG_OOO as BIG
from erbtest import L

GET_K = resp('GET', 'k')


def name(rc):
    return XDP_NAMES.get(rc, rc)


def seg(out):
    t = Ether(out)[TCP]
    return t.seq, t.ack


def answered(erb, value=b'v', **kw):
    """A flow whose GET k was answered in XDP; returns (flow, the client's ack before the
    answer, the request's seq, the answer frame)."""
    f = Flow(erb, **kw).handshake()
    f.set(b'k', value)
    ack0, req_seq = f.c_ack, f.c_seq
    rc, out = f.get(b'k')
    assert rc == XDP_TX, name(rc)
    assert tcp_payload(out) == bulk(value)
    return f, ack0, req_seq, out


def rebuild(pkt):
    """Bytes of a scapy packet with lengths and checksums computed afresh."""
    for layer in (IP, TCP):
        if layer in pkt:
            for fld in ('len', 'chksum', 'ihl'):
                if hasattr(pkt[layer], fld) and fld in pkt[layer].fields:
                    delattr(pkt[layer], fld)
    return bytes(pkt.__class__(bytes(pkt)))


# --------------------------------------------------------------- lost answers

def test_redis_ack_never_covers_an_answer_the_client_lacks(erb):
    f, ack0, req_seq, ans = answered(erb)
    # the answer is lost; Redis's stack ACKs everything it has (a window update, a delayed ACK)
    rc, out = erb.tc(f.server_frame(flags='A'))
    assert rc == TC_ACT_OK
    assert Ether(out)[TCP].ack == req_seq, 'a Redis ACK covers the answered GET: the client never resends it'
    assert_checksums(out)
    assert erb.stats()['ack_held'] == 1
    # so the client's TCP retransmits the GET, and it is answered again
    rc, out = erb.xdp(f.client_frame(GET_K, seq=req_seq, ack=ack0))
    assert rc == XDP_TX, name(rc)
    assert tcp_payload(out) == bulk(b'v') and seg(out) == seg(ans)
    # once the client has the answer, Redis's ACKs go through whole again
    rc, out = erb.xdp(f.client_frame(flags='A'))
    assert rc == XDP_PASS
    rc, out = erb.tc(f.server_frame(flags='A'))
    assert Ether(out)[TCP].ack == f.c_seq
    assert erb.stats()['ack_held'] == 1


def test_dup_ack_at_a_lost_answer_resends_it(erb):
    f, ack0, req_seq, ans = answered(erb)
    # the client, still without the answer, pipelines a PING: passed (it has not acked our bytes)
    rc, _unused = f.send(resp('PING'), ack=ack0)
    assert rc == XDP_PASS, name(rc)
    rc, pong = f.reply(b'+PONG\r\n')
    # +PONG lands after the hole the lost answer left: the client sends a duplicate ACK
    pong_seq = Ether(pong)[TCP].seq
    dup = f.client_frame(flags='A', ack=ack0, options=[
        ('NOP', None), ('NOP', None), ('SAck', (pong_seq, (pong_seq + 7) & M32))])
    rc, out = erb.xdp(dup)
    assert rc == XDP_TX, 'duplicate ACK at a lost answer: %s, the client waits for an RTO chain' % name(rc)
    assert tcp_payload(out) == bulk(b'v') and Ether(out)[TCP].seq == Ether(ans)[TCP].seq
    assert_checksums(out)
    assert erb.stats()['answer_resent'] == 1


def test_dsack_at_a_lost_last_answer_resends_it(erb):
    """The answer was the last bytes of the flow and got lost. Redis, whose last reply the
    client acknowledged only in requests XDP answered, probes with it (tail-loss probe or
    RTO, ~200 ms on); the client, which has those bytes, sends a duplicate ACK with a D-SACK
    at the answer's start. That is the kernel's signal of a lost tail: resend the answer
    now, not only after the client's own RTO (often backed off by then: an RTO chain)."""
    f = Flow(erb).handshake()
    f.set(b'k', b'v')
    last_seq, ack0 = f.s_seq, f.c_ack
    rc, ans = f.get(b'k')
    assert rc == XDP_TX, name(rc)
    req_end = f.c_seq
    # the answer is lost. Redis retransmits its +OK (it never saw the ACK the GET carried)
    rc, probe = erb.tc(f.server_frame(b'+OK\r\n', seq=(last_seq - 5) & M32))
    assert rc == TC_ACT_OK
    p = Ether(probe)[TCP]
    assert (ack0 - (p.seq + 5)) & M32 < 1 << 31, 'the probe reaches past the answer: %d, %d' % (p.seq + 5, ack0)
    # the client has those bytes: a duplicate ACK at the answer's start, with a D-SACK of the probe
    f.c_tsval = (f.c_tsval + 1) & M32
    dsack = f.client_frame(flags='A', ack=ack0, options=[
        ('NOP', None), ('NOP', None), ('Timestamp', (f.c_tsval, f.c_recent)),
        ('NOP', None), ('NOP', None), ('SAck', (p.seq, (p.seq + 5) & M32))])
    rc, out = erb.xdp(dsack)
    assert rc == XDP_TX, 'D-SACK at a lost last answer: %s, the answer waits for the client\'s RTO' % name(rc)
    assert tcp_payload(out) == bulk(b'v') and seg(out) == seg(ans)
    assert Ether(out)[TCP].ack == req_end
    assert_checksums(out)
    assert erb.stats()['answer_resent'] == 1
    # a duplicate ACK there without SACK (a window update) resends nothing
    rc, out = erb.xdp(f.client_frame(flags='A', ack=ack0, window=200))
    assert rc == XDP_PASS, name(rc)
    assert erb.stats()['answer_resent'] == 1
    # once the client has the answer, its ACK goes to Redis, which stops probing
    rc, out = erb.xdp(f.client_frame(flags='A', ack=(ack0 + len(tcp_payload(ans))) & M32))
    assert rc == XDP_PASS, name(rc)
    assert Ether(out)[TCP].ack == f.s_seq


def test_collapsed_retransmission_of_an_answered_request_is_answered(erb):
    f, ack0, req_seq, ans = answered(erb)
    ping = resp('PING')
    rc, _unused = f.send(ping, ack=ack0)
    assert rc == XDP_PASS
    cmds = erb.flow(f).cmds
    # RTO: the client's TCP retransmits GET and PING collapsed into one segment
    rc, out = erb.xdp(f.client_frame(GET_K + ping, seq=req_seq, ack=ack0))
    assert rc == XDP_TX, 'collapsed retransmission: %s (dropped each time = a hang)' % name(rc)
    assert tcp_payload(out) == bulk(b'v')
    assert Ether(out)[TCP].ack == (req_seq + len(GET_K)) & M32
    # with the GET acknowledged the client sends PING again alone: old bytes to Redis, not a new command
    rc, out = erb.xdp(f.client_frame(ping, seq=req_seq + len(GET_K), ack=(ack0 + len(tcp_payload(ans))) & M32))
    assert rc == XDP_PASS
    srv_seq = Ether(out)[TCP].seq
    assert srv_seq == (f.s_ack - len(ping)) & M32, 'PING retransmission is not where Redis has it'
    assert erb.flow(f).cmds == cmds


def test_retransmission_from_before_an_answered_request_is_answered(erb):
    f = Flow(erb).handshake()
    f.set(b'k', b'v')
    ack0, start = f.c_ack, f.c_seq
    ping = resp('PING')
    rc, _unused = f.send(ping)
    assert rc == XDP_PASS
    f.reply(b'+PONG\r\n')
    ack1 = f.c_ack
    rc, ans = f.get(b'k')
    assert rc == XDP_TX
    # neither Redis's ACK of PING nor the answer arrived: PING+GET retransmitted together
    rc, out = erb.xdp(f.client_frame(ping + GET_K, seq=start, ack=ack1))
    assert rc == XDP_TX, name(rc)
    assert tcp_payload(out) == bulk(b'v')
    assert Ether(out)[TCP].ack == f.c_seq
    assert ack0 != ack1


def test_duplicate_of_a_passed_command_never_runs_twice(erb):
    f, ack0, req_seq, ans = answered(erb)
    incr = resp('INCR', 'n')
    before_seq = f.c_seq
    rc, first = f.send(incr)
    assert rc == XDP_PASS
    f.reply(b':1\r\n')
    cmds = erb.flow(f).cmds
    # the network duplicates the INCR segment, late
    rc, out = erb.xdp(f.client_frame(incr, seq=before_seq))
    assert rc == XDP_PASS
    assert seg(out)[0] == Ether(first)[TCP].seq, 'the duplicate is not mapped onto the bytes Redis has'
    assert erb.flow(f).cmds == cmds


# ------------------------------------------------------------------ reordering

# (segments after a gap that fit ERB_OOO_MAX are kept and parsed later: test_ooo.py)
def test_out_of_order_segment_is_passed_and_its_gap_seen(erb):
    f = Flow(erb).handshake()
    f.set(b'k', b'v')
    other = Flow(erb, cport=41001, c_isn=5, s_isn=6).handshake()
    gap = resp('DEL', 'k')
    start = f.c_seq
    later = f.client_frame(BIG, seq=start + len(gap))
    rc, out = erb.xdp(later)
    assert rc == XDP_PASS, 'an out-of-order segment is %s: every loss costs an RTO' % name(rc)
    st = erb.stats()
    assert st['pass_ooo'] == 1 and st['flow_given_up'] == 1
    assert erb.flow(f).flags & L.ERB_FLOW_UNTRACKED
    # the missing bytes arrive: unparsed (the boundary is lost), so the cache is emptied
    rc, out = erb.xdp(f.client_frame(gap, seq=start))
    assert rc == XDP_PASS
    assert erb.stats()['unseen_passed'] == 1
    rc, out = other.get(b'k')
    assert rc == XDP_PASS, 'GET k answered after an unparsed DEL k reached Redis'
    # the given-up flow is never answered again
    f.c_seq = (start + len(gap) + len(BIG)) & M32
    f.s_ack = f.c_seq
    rc, out = f.send(GET_K)
    assert rc == XDP_PASS


def test_given_up_flow_releases_its_write_block(erb):
    f = Flow(erb).handshake()
    f.command(resp('MULTI'), b'+OK\r\n')
    assert erb.glob().overflow == 1, 'MULTI blocks fills'
    # the flow is given up (a gap, after it more than can be kept): its block goes with it
    rc, _unused = erb.xdp(f.client_frame(BIG, seq=f.c_seq + 50))
    assert rc == XDP_PASS
    assert erb.glob().overflow == 0, 'a given-up flow keeps fills off for every client'
    assert erb.flow(f).wr[0].bucket == 0xffffffff


def test_parse_error_releases_the_write_block(erb):
    f = Flow(erb).handshake()
    f.command(resp('MULTI'), b'+OK\r\n')
    f.command(resp('SET', 'a', '1'), b'+QUEUED\r\n')
    assert erb.glob().overflow == 1
    rc, _unused = f.send(b'*2\r\n$3\r\nGET\r\n$zz\r\n')
    assert rc == XDP_PASS
    assert erb.flow(f).flags & L.ERB_FLOW_UNTRACKED
    assert erb.glob().overflow == 0
    assert all(w.bucket == 0xffffffff for w in erb.flow(f).wr)


# ------------------------------------------------------------------ odd frames

def test_ack_with_ip_options_on_an_answered_flow_is_corrected(erb):
    f, ack0, req_seq, ans = answered(erb)
    p = Ether(f.client_frame(flags='A'))
    p[IP].options = [IPOption(b'\x01\x01\x01\x00')]
    frame = rebuild(p)
    rc, out = erb.xdp(frame)
    assert rc == XDP_PASS
    assert seg(out) == (f.s_ack, f.s_seq), 'IP options: seq/ack not in the server view'
    assert_checksums(out)


def test_first_fragment_on_an_answered_flow_is_corrected(erb):
    f, ack0, req_seq, ans = answered(erb)
    p = Ether(f.client_frame(resp('PING')))
    p[IP].flags = 'MF'
    frame = rebuild(p)
    rc, out = erb.xdp(frame)
    assert rc == XDP_PASS
    assert seg(out) == (f.s_ack, f.s_seq)


def test_vlan_tagged_write_empties_the_cache(erb):
    f = Flow(erb).handshake()
    f.set(b'k', b'v')
    p = Ether(f.client_frame(resp('DEL', 'k')))
    tagged = bytes(Ether(src=CMAC, dst=SMAC) / Dot1Q(vlan=7) / p[IP])
    rc, out = erb.xdp(tagged)
    assert rc == XDP_PASS
    other = Flow(erb, cport=41002).handshake()
    rc, _unused = other.get(b'k')
    assert rc == XDP_PASS, 'GET k answered after a VLAN-tagged DEL k went to Redis'


def test_ipv6_write_behind_extension_headers_empties_the_cache(erb):
    f = Flow(erb).handshake()
    f.set(b'k', b'v')
    frame = bytes(Ether(src=CMAC, dst=SMAC) / IPv6(src='fd00::2', dst='fd00::1') / IPv6ExtHdrHopByHop() /
                  TCP(sport=40500, dport=REDIS_PORT, flags='PA', seq=1, ack=1) / Raw(resp('DEL', 'k')))
    rc, out = erb.xdp(frame)
    assert rc == XDP_PASS
    rc, _unused = f.get(b'k')
    assert rc == XDP_PASS, 'GET k answered after an IPv6 DEL k (hop-by-hop header) went to Redis'


def test_big_tcp_segment_is_corrected(erb):
    f, ack0, req_seq, ans = answered(erb)
    rc, _unused = erb.xdp(f.client_frame(flags='A'))
    frame = bytearray(f.server_frame(b'+OK\r\n' * 4, flags='PA'))
    frame[16:18] = b'\0\0'    # IPv4 BIG TCP: tot_len 0, the length is the skb's
    srv_seq = f.s_seq
    rc, out = erb.tc(bytes(frame))
    assert rc == TC_ACT_OK
    assert Ether(out)[TCP].seq == (srv_seq + len(tcp_payload(ans))) & M32, 'tot_len 0: not corrected'


# ----------------------------------------------------------- what the client takes

def test_reply_over_the_clients_mss_is_left_to_redis(erb):
    f = Flow(erb).handshake(mss=200)
    f.set(b'k', b'x' * 300)
    rc, _unused = f.get(b'k')
    assert rc == XDP_PASS, 'a 300-byte answer to a client with MSS 200: %s' % name(rc)
    assert erb.stats()['pass_client_limit'] == 1
    g = Flow(erb, cport=41003).handshake(mss=1400)
    rc, _unused = g.get(b'k')
    assert rc == XDP_TX


def test_zero_window_request_is_not_answered(erb):
    f = Flow(erb).handshake()
    f.set(b'k', b'v')
    rc, _unused = f.send(GET_K, window=0)
    assert rc == XDP_PASS, name(rc)
    assert erb.stats()['pass_client_limit'] == 1


def test_fast_open_data_in_the_syn_is_seen_and_the_flow_never_answered(erb):
    a = Flow(erb, cport=41004).handshake()
    a.set(b'k', b'v')
    f = Flow(erb)
    data = resp('DEL', 'k')
    syn = f.client_frame(data, flags='S', options=[('MSS', 1460), ('SAckOK', b''), ('WScale', 7)])
    rc, out = erb.xdp(syn)
    assert rc == XDP_PASS
    rc, _unused = a.get(b'k')
    assert rc == XDP_PASS, 'GET k answered after a DEL k in a SYN'
    # Redis took the data: the client goes on after it, and is neither dropped nor answered
    f.c_seq = (f.c_isn + 1 + len(data)) & M32
    rc, _unused = erb.xdp(f.client_frame(GET_K, flags='PA', ack=1))
    assert rc == XDP_PASS, 'the segment after Fast Open data is %s' % name(rc)


def test_window_probe_on_an_answered_flow_is_a_probe_for_redis(erb):
    f, ack0, req_seq, ans = answered(erb)
    probe = f.client_frame(flags='A', seq=f.c_seq - 1)
    rc, out = erb.xdp(probe)
    assert rc == XDP_PASS
    assert Ether(out)[TCP].seq == (f.s_ack - 1) & M32, 'window probe lands off the server\'s rcv_nxt - 1'


def test_reset_after_an_answer_is_in_the_server_view(erb):
    f, ack0, req_seq, ans = answered(erb)
    rc, out = erb.xdp(f.client_frame(flags='R', ack=0))
    assert rc == XDP_PASS
    assert Ether(out)[TCP].seq == f.s_ack
    assert erb.flow(f) is None


# ------------------------------------------------------------------ late SYNs

def syn_frame(f):
    return f.client_frame(flags='S', seq=f.c_isn, ack=0,
                          options=[('MSS', 1460), ('SAckOK', b''), ('WScale', 7)])


def test_late_duplicate_syn_keeps_an_answered_flow(erb):
    """The network duplicates the client's SYN and delivers the copy late, after a GET was
    answered in XDP. Redis's stack answers it with a challenge ACK and keeps the connection;
    ERB must keep the flow too, or the next request reaches Redis uncorrected (beyond its
    rcv_nxt by the answered bytes) and the client stalls for good."""
    f, ack0, req_seq, ans = answered(erb)
    before = erb.flow(f)
    rc, out = erb.xdp(syn_frame(f))
    assert rc == XDP_PASS
    after = erb.flow(f)
    assert after is not None and after.flags & L.ERB_FLOW_ANSWERED, 'a late SYN copy reset the flow'
    assert erb.stats()['syn_kept'] == 1
    assert (after.c_nxt, after.s_nxt) == (before.c_nxt, before.s_nxt)
    # the next request reaches Redis on its rcv_nxt
    rc, out = f.send(resp('APPEND', 'k', 'x'))
    assert rc == XDP_PASS, name(rc)
    assert seg(out)[0] == f.s_ack - len(resp('APPEND', 'k', 'x')) & M32, \
        'the request after a late SYN copy lands off the server\'s rcv_nxt'
    # and Redis's reply reaches the client on its sequence space
    rc, out = f.reply(b':2\r\n')
    assert rc == TC_ACT_OK
    assert Ether(out)[TCP].seq == (f.c_ack - 4) & M32


def test_syn_ack_sent_again_keeps_an_answered_flow(erb):
    """The client's third ACK is lost and its first request is answered in XDP: Redis's stack,
    still in SYN-RECV, sends its SYN-ACK again. That must not set the flow's view of the
    server's next byte back to before the answer, or the next answer lands on bytes the
    client already has and is ignored, every time it is sent again."""
    f, ack0, req_seq, ans = answered(erb)
    synack = f.server_frame(flags='SA', seq=f.s_isn, ack=f.c_isn + 1,
                            options=[('MSS', 1460), ('SAckOK', b''), ('WScale', 7)])
    rc, out = erb.tc(synack)
    assert (rc, out) == (TC_ACT_OK, synack)
    rc, out = f.get(b'k')
    assert rc == XDP_TX, name(rc)
    assert seg(out) == ((f.c_ack - len(bulk(b'v'))) & M32, f.c_seq), \
        'the answer after a SYN-ACK sent again is not on the client\'s next byte'


def test_syn_of_a_new_connection_after_both_fins_starts_a_new_flow(erb):
    """After both FINs the tuple may carry a new connection (Redis's side in TIME-WAIT takes
    a SYN with a newer sequence): its SYN, of another ISN, starts the flow afresh."""
    f, ack0, req_seq, ans = answered(erb)
    rc, _unused = erb.xdp(f.client_frame(flags='FA'))
    assert rc == XDP_PASS
    f.c_seq = (f.c_seq + 1) & M32
    f.s_ack = (f.s_ack + 1) & M32
    rc, _unused = f.reply(b'', flags='FA')
    assert rc == TC_ACT_OK
    assert erb.flow(f).flags & L.ERB_FLOW_S_FIN
    g = Flow(erb, c_isn=f.c_seq + 100000, s_isn=f.s_isn + 7777777).handshake()
    fl = erb.flow(g)
    assert not fl.flags & L.ERB_FLOW_ANSWERED and fl.c_nxt == (g.c_isn + 1) & M32
    g.set(b'k', b'w')
    rc, out = g.get(b'k')
    assert rc == XDP_TX and seg(out) == ((g.c_ack - len(bulk(b'w'))) & M32, g.c_seq)


def test_syn_sent_again_before_the_syn_ack_keeps_the_flow(erb):
    """The SYN-ACK is lost and the client sends its SYN again: the flow goes on, and the
    connection is answered once it is set up."""
    f = Flow(erb)
    syn = syn_frame(f)
    assert erb.xdp(syn) == (XDP_PASS, syn)
    f.handshake()
    assert erb.stats()['syn_kept'] == 1 and erb.stats()['flow_new'] == 1
    f.set(b'k', b'v')
    rc, out = f.get(b'k')
    assert rc == XDP_TX and tcp_payload(out) == bulk(b'v')
