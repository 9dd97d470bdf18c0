# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Client segments after a gap on a tracked flow (a loss, reordering, a held segment
the pipelining client sent more after): passed on at once, so Linux's SACK and fast
retransmit work as without ERB, and their bytes kept in erb_ooo. The segment that
fills the gap is parsed with them: their writes invalidate, their keys count in the
hold rule, their commands in the reply count, and the flow stays tracked (answered
again), where it used to be given up at the first gap."""

from erbtest import BIG_OOO as BIG
from erbtest import M32, XDP_DROP, XDP_NAMES, XDP_PASS, XDP_TX, Flow, L, bulk, resp, tcp_payload
from test_hold import K, nonzero, other_flow, pending_write

GET_K = resp('GET', 'k')
PONG = b'+PONG\r\n'
OK = b'+OK\r\n'


def name(rc):
    return XDP_NAMES.get(rc, rc)


def keep(erb, f, payload, at):
    """payload at client seq `at`, after a gap: passed untouched, its bytes kept."""
    before = erb.stats()['ooo_kept']
    frame = f.client_frame(payload, seq=at)
    rc, out = erb.xdp(frame)
    assert (rc, out) == (XDP_PASS, frame), 'segment after a gap: %s' % name(rc)
    assert erb.stats()['ooo_kept'] == before + 1, nonzero(erb.stats())
    fl = erb.flow(f)
    assert fl.flags & L.ERB_FLOW_OOO, 'bytes after a gap not marked kept'
    assert not fl.flags & L.ERB_FLOW_UNTRACKED, 'flow given up at a gap'
    return frame


def fill(f, payload, kept):
    """The gap's bytes, in order; when passed, the model moves past the kept bytes too
    (the server's stack delivers both)."""
    rc, out = f.send(payload)
    if rc == XDP_PASS:
        f.c_seq = (f.c_seq + kept) & M32
        f.s_ack = (f.s_ack + kept) & M32
    return rc, out


def assert_resumed(erb, f, end):
    st = erb.stats()
    assert st['ooo_resumed'] == 1, nonzero(st)
    assert not st['flow_given_up'] and not st['pass_ooo'] and not st['unseen_passed'], nonzero(st)
    fl = erb.flow(f)
    assert fl.c_nxt == end & M32
    assert not fl.flags & (L.ERB_FLOW_OOO | L.ERB_FLOW_UNTRACKED)
    assert erb.ooo(f) is None and erb.ooo_count() == 0


def test_segment_after_a_gap_is_kept_and_parsed_when_the_gap_fills(erb):
    f = Flow(erb).handshake()
    f.set(b'k', b'v')
    other = Flow(erb, cport=41001, c_isn=5, s_isn=6).handshake()
    gap, later = resp('DEL', 'k'), resp('PING')
    start = f.c_seq
    keep(erb, f, later, start + len(gap))
    o = erb.ooo(f)
    assert (o.seq, o.len, bytes(o.data[:o.len])) == ((start + len(gap)) & M32, len(later), later)
    cmds = erb.flow(f).cmds
    # the kept DEL k has not reached Redis: k is still answered
    rc, out = other.get(b'k')
    assert rc == XDP_TX and tcp_payload(out) == bulk(b'v')
    rc, _unused = fill(f, gap, len(later))
    assert rc == XDP_PASS
    assert_resumed(erb, f, start + len(gap) + len(later))
    assert erb.flow(f).cmds == cmds + 2, 'the kept PING is not counted: replies would be mismatched'
    rc, _unused = other.get(b'k')
    assert rc == XDP_PASS, 'GET k answered from the cache after DEL k reached Redis'
    other.reply(b'$-1\r\n')
    # Redis answers both; the flow is still tracked: its next GET of a cached key is answered
    f.reply(b':1\r\n')
    f.reply(PONG)
    f.set(b'k', b'v2')
    rc, out = f.get(b'k')
    assert rc == XDP_TX, 'flow not answered again after its gap filled: %s %s' % (name(rc), nonzero(erb.stats()))
    assert tcp_payload(out) == bulk(b'v2')


def test_gap_filler_is_never_answered_while_bytes_are_kept(erb):
    """The kept bytes are in the server's queue after the gap: the filler must reach it
    (an answer in XDP would leave the gap open for ever)."""
    f = Flow(erb).handshake()
    f.set(b'k', b'v')
    start = f.c_seq
    later = resp('PING')
    keep(erb, f, later, start + len(GET_K))
    rc, out = fill(f, GET_K, len(later))
    assert rc == XDP_PASS and tcp_payload(out) == GET_K, name(rc)
    assert not erb.stats()['hit']
    assert_resumed(erb, f, start + len(GET_K) + len(later))
    f.reply(bulk(b'v'))
    f.reply(PONG)
    rc, out = f.get(b'k')
    assert rc == XDP_TX and tcp_payload(out) == bulk(b'v')


def test_kept_bytes_count_in_the_hold_rule(erb_fast):
    """A GET of a key whose fast SET is not in Redis yet, kept after a gap: the filler
    (PING) is held, since Redis would run both together."""
    erb = erb_fast
    pending_write(erb)
    b = other_flow(erb)
    start = b.c_seq
    gap, later = resp('PING'), resp('GET', K)
    keep(erb, b, later, start + len(gap))
    erb.parked()
    frame = b.client_frame(gap)
    rc, _unused = erb.xdp(frame)
    assert rc == XDP_DROP, 'gap filler passed while its kept GET reads a pending write: %s' % name(rc)
    st = erb.stats()
    assert st['hold'] == 1 and st['parked'] == 1 and not st['ooo_resumed'], nonzero(st)
    assert len(erb.parked()) == 1
    assert erb.flow(b).flags & L.ERB_FLOW_OOO and erb.ooo(b) is not None, 'kept bytes lost on a hold'
    erb.apply_all()
    rc, _unused = erb.xdp(frame)
    assert rc == XDP_PASS
    b.c_seq = b.s_ack = (start + len(gap) + len(later)) & M32
    assert_resumed(erb, b, b.c_seq)


def test_copies_and_following_segments_are_kept_too(erb):
    f = Flow(erb).handshake()
    start = f.c_seq
    gap, a, b = resp('PING'), resp('SET', 'x', '1'), resp('GET', 'x')
    at = start + len(gap)
    keep(erb, f, a, at)
    keep(erb, f, a, at)          # a copy (duplication): the stack drops it
    keep(erb, f, b, at + len(a))  # the next one
    o = erb.ooo(f)
    assert (o.seq, bytes(o.data[:o.len])) == (at & M32, a + b)
    cmds = erb.flow(f).cmds
    rc, _unused = fill(f, gap, len(a + b))
    assert rc == XDP_PASS
    assert_resumed(erb, f, at + len(a + b))
    assert erb.flow(f).cmds == cmds + 3


def test_kept_set_invalidates_but_never_fills_from_the_filler(erb):
    """The filler's own SET fills the cache from its bytes; a SET among the kept bytes
    invalidates its key and is never filled (its bytes are not in this frame)."""
    f = Flow(erb).handshake()
    other = Flow(erb, cport=41001, c_isn=5, s_isn=6).handshake()
    f.set(b'k2', b'old')
    start = f.c_seq
    gap, later = resp('SET', 'k1', 'a'), resp('SET', 'k2', 'b')
    keep(erb, f, later, start + len(gap))
    rc, _unused = fill(f, gap, len(later))
    assert rc == XDP_PASS
    f.reply(OK)
    f.reply(OK)
    rc, out = other.get(b'k1')
    assert rc == XDP_TX and tcp_payload(out) == bulk(b'a')
    rc, _unused = other.get(b'k2')
    assert rc == XDP_PASS, 'k2 answered after a kept SET k2 reached Redis'


def test_gap_that_cannot_be_kept_gives_the_flow_up_with_the_kept_bytes_unparsed(erb):
    f = Flow(erb).handshake()
    f.set(b'k', b'v')
    other = Flow(erb, cport=41001, c_isn=5, s_isn=6).handshake()
    start = f.c_seq
    gap, a = resp('DEL', 'k'), resp('PING')
    keep(erb, f, a, start + len(gap))
    # another gap, after the kept bytes: the boundary is lost
    far = start + len(gap) + len(a) + 10
    rc, _unused = erb.xdp(f.client_frame(resp('PING'), seq=far))
    assert rc == XDP_PASS
    st = erb.stats()
    assert st['flow_given_up'] == 1 and st['pass_ooo'] == 1, nonzero(st)
    fl = erb.flow(f)
    assert fl.flags & L.ERB_FLOW_UNTRACKED and not fl.flags & L.ERB_FLOW_OOO
    assert erb.ooo_count() == 0
    assert (fl.gap_lo, fl.gap_hi) == (start & M32, far & M32), 'kept bytes not marked unparsed'
    # the gap's bytes arrive: unparsed, the cache is emptied
    rc, _unused = erb.xdp(f.client_frame(gap, seq=start))
    assert rc == XDP_PASS and erb.stats()['unseen_passed'] == 1
    rc, _unused = other.get(b'k')
    assert rc == XDP_PASS


def test_segment_too_large_to_keep_gives_the_flow_up(erb):
    f = Flow(erb).handshake()
    start = f.c_seq
    rc, _unused = erb.xdp(f.client_frame(BIG, seq=start + 30))
    assert rc == XDP_PASS
    st = erb.stats()
    assert st['flow_given_up'] == 1 and not st['ooo_kept'], nonzero(st)
    assert erb.ooo_count() == 0


def test_flow_end_drops_its_kept_bytes(erb):
    f = Flow(erb).handshake()
    keep(erb, f, resp('PING'), f.c_seq + 20)
    assert erb.ooo_count() == 1
    rc, _unused = erb.xdp(f.client_frame(flags='RA'))
    assert rc == XDP_PASS
    assert erb.ooo_count() == 0, 'kept bytes of an ended flow left in erb_ooo'


def test_new_connection_on_the_tuple_drops_the_old_kept_bytes(erb):
    f = Flow(erb).handshake()
    keep(erb, f, resp('PING'), f.c_seq + 20)
    Flow(erb, c_isn=77777).handshake()
    assert erb.ooo_count() == 0
    assert not erb.flow(f).flags & L.ERB_FLOW_OOO
