# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The TSval of XDP answers. Linux stamps a segment with TSval = its ms clock (CLOCK_MONOTONIC,
which bpf_ktime_get_ns reads) + a per-connection offset. An answer used to carry the client's
TSecr, the newest TSval the client had seen when it sent the request: a Redis segment sent
since and reaching the client first (a retransmission after an RTO, whose ACK rode on a
request we answered) moved the client's ts_recent past it, and PAWS dropped the answer. The
client then waited for its own RTO, twice: the chaos test's loss mix showed it as
TcpExtPAWSEstab in the client's namespace and 2-4x Redis alone's requests at 0.4 s.

TC egress now learns the offset from Redis's segments; once two of them at least 4 ms apart
agree on it, answers carry the TSval Redis would send now (less 1 ms, which PAWS forgives).
A connection on another clock (tcp_usec_ts) never agrees and keeps the old rule."""

import struct
import time

from erbtest import M32, S_TS_STEP, TC_ACT_OK, XDP_TX, Flow, L, _ones_sum, resp, ts_option

PONG = b'+PONG\r\n'


def ms():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000000


def us():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def lag(a, b):
    """a - b as a signed 32-bit difference (TSvals wrap)."""
    d = (a - b) & M32
    return d - (1 << 32) if d >= 1 << 31 else d


class ClockFlow(Flow):
    """A flow whose server stamps TSvals as Linux does: offset + ms clock (or + µs clock)."""

    def __init__(self, erb, offset=123456789, clock=ms, **kw):
        super().__init__(erb, **kw)
        self.offset, self.clock = offset, clock

    def server_frame(self, payload=b'', **kw):
        stamp = self.ts and kw.get('options') is None
        if stamp:
            self.s_tsval = (self.offset + self.clock() - S_TS_STEP) & M32  # server_frame adds S_TS_STEP
        frame = super().server_frame(payload, **kw)
        if stamp:
            # stamped again once built: building a frame takes milliseconds on a loaded machine
            # (Linux stamps a segment microseconds before TC runs on it), and a resend stamped
            # that early looks to TC like a clock that went back (the clock is then not trusted)
            self.s_tsval = (self.offset + self.clock()) & M32
            frame = restamp(frame, self.s_tsval)
        return frame


TS_AT = 14 + 20 + 20       # NOP NOP TS of server_frame: after the Ethernet, IP and TCP headers
TCP_CSUM_AT = 14 + 20 + 16


def restamp(frame, tsval):
    """frame with its TSval replaced and its TCP checksum computed again."""
    assert frame[TS_AT:TS_AT + 4] == b'\x01\x01\x08\x0a', frame[TS_AT:TS_AT + 4]
    out = bytearray(frame)
    out[TS_AT + 4:TS_AT + 8] = tsval.to_bytes(4, 'big')
    out[TCP_CSUM_AT:TCP_CSUM_AT + 2] = b'\0\0'
    seg = bytes(out[34:14 + struct.unpack('!H', frame[16:18])[0]])
    pseudo = frame[26:34] + struct.pack('!BBH', 0, 6, len(seg))
    out[TCP_CSUM_AT:TCP_CSUM_AT + 2] = (~_ones_sum(pseudo + seg) & 0xffff).to_bytes(2, 'big')
    return bytes(out)


def clocked(erb, at_least=6, trust=True, **kw):
    """A handshaken ClockFlow with k cached, whose clock TC has seen in at_least replies 5 ms
    apart, and on until it trusts it (up to 60; with trust, it must have by then). A test
    stamps a frame a while before TC runs on it (Linux: microseconds; a loaded test machine:
    milliseconds), which lowers TC's estimate of the offset; it keeps the latest estimate of
    those that agree."""
    f = ClockFlow(erb, **kw).handshake()
    f.set(b'k', b'hello')
    for i in range(60):
        time.sleep(0.005)
        f.command(resp('PING'), PONG)
        if i + 1 >= at_least and erb.flow(f).flags & L.ERB_FLOW_TSCLK:
            break
    if trust:
        assert erb.flow(f).flags & L.ERB_FLOW_TSCLK, (
            'TC did not come to trust the server\'s TSval clock in %d replies 5 ms apart (their estimates '
            'of its offset never agreed: on a loaded machine a test stamps frames milliseconds before TC '
            'runs on them)' % (i + 1))
    return f


def test_answer_carries_the_tsval_redis_would_send_now(erb):
    f = clocked(erb)
    assert erb.flow(f).flags & L.ERB_FLOW_TSCLK, 'Redis segments 5 ms apart did not make the clock known'
    time.sleep(0.05)                                    # Redis's clock moves on; the client's TSecr does not
    t0 = (f.offset + ms()) & M32
    rc, out = f.get(b'k')
    t1 = (f.offset + ms()) & M32
    assert rc == XDP_TX
    tsval = ts_option(out)[0]
    assert lag(tsval, f.c_recent) >= 45, 'the answer echoes the client\'s TSecr %d: %d' % (f.c_recent, tsval)
    # Redis's clock less 1 ms, less what stamping frames ahead of TC cost the offset (see clocked)
    assert -4 <= lag(tsval, t0) and lag(tsval, t1) <= 0, 'answer TSval %d, Redis\'s clock %d..%d' % (tsval, t0, t1)


def test_answer_after_a_redis_resend_that_overtook_it_passes_paws(erb):
    """The chaos test's case: Redis's RTO resends its last reply (the client's ACK for it
    rides on the next request, which XDP answers). TC sees the resend before XDP sees the
    request, so it cannot know the client has those bytes and lets it keep its new TSval;
    the client takes it first. The answer must not be older than it by more than 1 ms."""
    f = clocked(erb)
    pong_seq = (f.s_seq - len(PONG)) & M32
    time.sleep(0.21)                                    # Redis's RTO
    rc, resent = f.erb.tc(f.server_frame(PONG, seq=pong_seq))
    assert rc == TC_ACT_OK
    resent_tsval = ts_option(resent)[0]
    rc, out = f.get(b'k')
    assert rc == XDP_TX
    tsval = ts_option(out)[0]
    assert lag(resent_tsval, tsval) <= 1, ('answer TSval %d, %d ms older than the resend the client took first '
                                           '(TSval %d): PAWS drops it' % (tsval, lag(resent_tsval, tsval), resent_tsval))


def test_a_usec_clock_is_never_trusted(erb):
    """tcp_usec_ts stamps microseconds: taken as a ms clock, answers would run 1000x slow."""
    f = clocked(erb, clock=us, trust=False)
    assert not erb.flow(f).flags & L.ERB_FLOW_TSCLK, 'a microsecond TSval clock taken for a ms one'
    rc, out = f.get(b'k')
    assert rc == XDP_TX
    assert ts_option(out)[0] == f.c_recent, 'unknown clock: the answer carries the client\'s TSecr'


def test_a_clock_that_jumps_is_trusted_no_more(erb):
    f = clocked(erb)
    assert erb.flow(f).flags & L.ERB_FLOW_TSCLK
    f.offset += 5000                                    # TSvals no longer follow the learned offset
    time.sleep(0.005)
    f.command(resp('PING'), PONG)
    assert not erb.flow(f).flags & L.ERB_FLOW_TSCLK, 'the learned clock kept after Redis\'s TSvals left it'
    rc, out = f.get(b'k')
    assert rc == XDP_TX
    assert ts_option(out)[0] == f.c_recent


def test_answers_never_go_back_in_tsval(erb):
    """An answer after one with a clock TSval, once the clock is not trusted: not older than
    the last answer (the client took that TSval as ts_recent)."""
    f = clocked(erb)
    time.sleep(0.03)
    rc, first = f.get(b'k')
    assert rc == XDP_TX
    f.offset += 5000
    time.sleep(0.005)
    f.command(resp('PING'), PONG)                       # untrusts the clock; its TSval is newer anyway
    f.c_recent = (ts_option(first)[0] - 20) & M32        # a client TSecr older than our first answer
    rc, out = f.get(b'k')
    assert rc == XDP_TX
    assert lag(ts_option(out)[0], ts_option(first)[0]) >= 0, 'an answer older than the one before'
