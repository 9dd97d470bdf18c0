# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Every command sees every acknowledged write (issue "Coherence IV", data plane):
bounded holds, WATCH/EXEC, pending entries that no flush or invalidation may hide,
the fast SET ordered against a passed write of its bucket, reply counting that
cannot drift (commands that answer several times, replies nobody asked for), and
client-side caching connections never answered in XDP."""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from erbtest import BIG_OOO, XDP_DROP, XDP_NAMES, XDP_PASS, XDP_TX, Flow, L, bucket_of, bulk, resp, tcp_payload
from test_hold import FOREIGN, OK, fast_set, other_flow, passed_once, pending_write, send_held

K = b'key:1'


def name(rc):
    return XDP_NAMES.get(rc, rc)


# ---------------------------------------------------------------- the hold rule

def test_hold_waits_only_for_writes_acknowledged_before(erb_fast):
    """KEYS held behind write 1 is not held behind write 2, acknowledged after it
    first arrived: steady SET load cannot starve it."""
    erb = erb_fast
    a = pending_write(erb)
    b = other_flow(erb)
    frame = send_held(erb, b, resp('KEYS', '*'))
    fast_set(erb, a, b'key:2', b'later')
    assert erb.glob().write_seq == 2
    erb.set_applied(1)
    rc, _unused = erb.xdp(frame)
    assert rc == XDP_PASS, 'KEYS still held behind a write acknowledged after it arrived: %s' % name(rc)


def test_retransmission_merged_with_newer_bytes_waits_for_later_writes(erb_fast):
    """STRLEN key:2 is held behind write 1. Another client's SET key:1 is then
    acknowledged (write 2), and this client pipelines GET key:1 after it. TCP
    resends the held bytes collapsed with the GET in one segment: the first
    arrival's bound covers only the STRLEN, so the segment waits for write 2
    too; passed with write 2 unapplied, Redis would answer the GET without the
    acknowledged SET."""
    erb = erb_fast
    pending_write(erb, key=b'key:2')
    a = Flow(erb, cport=40003).handshake()
    b = other_flow(erb)
    first = resp('STRLEN', 'key:2')
    send_held(erb, b, first)
    fast_set(erb, a, K, b'acknowledged')
    assert erb.glob().write_seq == 2
    erb.set_applied(1)
    merged = first + resp('GET', K)
    frame = send_held(erb, b, merged)
    # once write 2 is applied the merged segment passes, whole
    erb.set_applied(2)
    passed_once(erb, b, frame, merged, ncmds=2)


def test_exec_after_watch_waits_for_pending_writes(erb_fast):
    erb = erb_fast
    b = other_flow(erb)
    b.command(resp('WATCH', 'x'), OK)
    # another client's SET of x is acknowledged in XDP after the WATCH: Redis must
    # have it before EXEC, or EXEC runs although x changed
    a = Flow(erb, cport=40001).handshake()
    fast_set(erb, a, b'x', b'other')
    b.command(resp('MULTI'), OK)
    b.command(resp('PING'), b'+QUEUED\r\n')
    frame = send_held(erb, b, resp('EXEC'))
    erb.apply_all()
    rc, _unused = erb.xdp(frame)
    assert rc == XDP_PASS


def test_exec_without_watch_is_not_held(erb_fast):
    erb = erb_fast
    pending_write(erb)
    b = other_flow(erb)
    b.command(resp('MULTI'), OK)
    b.command(resp('PING'), b'+QUEUED\r\n')
    rc, _unused = b.send(resp('EXEC'))
    assert rc == XDP_PASS


def test_pending_entry_hidden_by_a_flush_still_holds_its_key(erb_fast):
    erb = erb_fast
    pending_write(erb)
    # the cache is emptied (a generation bump: the agent on a Redis restart, FLUSHALL...)
    g = erb.glob()
    erb.set_cache_gen(g.cache_gen + 1)
    b = other_flow(erb)
    send_held(erb, b, resp('GET', K))


def test_passed_write_never_slips_past_a_fast_set_holding_its_bucket(erb_fast):
    """The fast SET checks the bucket's passed-write count under the bucket lock;
    a passed write counts itself under the same lock: if it cannot take it, it is
    held, never counted after the SET looked."""
    erb = erb_fast
    b = other_flow(erb)
    erb.set_lock(bucket_of(K), FOREIGN)
    send_held(erb, b, resp('DEL', K), counter='hold_busy')
    erb.set_lock(bucket_of(K), 0)
    rc, _unused = b.send(resp('DEL', K))
    assert rc == XDP_PASS
    assert erb.inflight(bucket_of(K)) == 1


# ------------------------------------------------------------- reply counting

def test_unsubscribe_with_channels_is_never_answered_after(erb):
    f = Flow(erb).handshake()
    f.set(b'k', b'v')
    f.command(resp('UNSUBSCRIBE', 'a', 'b'), b'*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n')
    # Redis still owes the reply for channel b
    rc, _unused = f.get(b'k')
    assert rc == XDP_PASS, 'GET answered while Redis owes UNSUBSCRIBE b: %s' % name(rc)


def test_more_replies_than_commands_untrack_the_flow(erb):
    f = Flow(erb).handshake()
    f.set(b'k', b'v')
    f.command(resp('PING'), b'+PONG\r\n+PONG\r\n')     # one reply too many
    assert erb.stats()['reply_unmatched'] == 1
    rc, _unused = f.send(resp('GET', 'x'))     # passed; its reply is still owed
    assert rc == XDP_PASS
    rc, _unused = f.get(b'k')
    assert rc == XDP_PASS, 'GET answered while Redis owes GET x: %s' % name(rc)


@pytest.mark.parametrize('cmd', [resp('CLIENT', 'TRACKING', 'on'), resp('client', 'caching', 'yes'),
                                 b'CLIENT TRACKING ON\r\n'])
def test_client_side_caching_connection_never_answered(erb, cmd):
    f = Flow(erb).handshake()
    f.set(b'k', b'v')
    f.command(cmd, OK)
    rc, _unused = f.get(b'k')
    assert rc == XDP_PASS, 'a CLIENT TRACKING connection was answered in XDP'
    assert erb.flow(f).flags & L.ERB_FLOW_UNTRACKED


# ------------------------------------------------- pushes a write causes

# (the command that makes Redis push to the connection, its reply, a later command)
PUSHES = {
    'CLIENT-TRACKING': (resp('CLIENT', 'TRACKING', 'on'), OK, resp('EXISTS', 'other')),
    'client-caching': (resp('client', 'caching', 'yes'), OK, resp('STRLEN', 'other')),
    'inline-CLIENT': (b'CLIENT TRACKING ON\r\n', OK, resp('DBSIZE')),
    'SUBSCRIBE': (resp('SUBSCRIBE', 'ch'), b'*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n', resp('PING')),
    'PSUBSCRIBE': (resp('PSUBSCRIBE', '__key*'), b'*3\r\n$10\r\npsubscribe\r\n$6\r\n__key*\r\n:1\r\n',
                   resp('PING')),
}


@pytest.mark.parametrize('case', sorted(PUSHES))
def test_connection_getting_pushes_waits_for_pending_writes(erb_fast, case):
    """Redis pushes a tracking connection the invalidation of key:1 (a subscriber,
    its keyspace event) when the SET answered in XDP is applied, not when it was
    acknowledged. Any later command of that connection, on any key, waits until
    then: passed earlier, its reply would come before the push Redis alone sends
    first (the differential test saw EXISTS s:0 answered without the push for s:2)."""
    erb = erb_fast
    enable, reply, later = PUSHES[case]
    t = other_flow(erb, cport=40005)
    t.command(enable, reply)
    assert erb.flow(t).flags & L.ERB_FLOW_PUSHES
    pending_write(erb)
    frame = send_held(erb, t, later)
    erb.apply_all()
    passed_once(erb, t, frame, later)


@pytest.mark.parametrize('case', sorted(PUSHES))
def test_connection_getting_pushes_not_held_without_pending_writes(erb_fast, case):
    erb = erb_fast
    enable, reply, later = PUSHES[case]
    t = other_flow(erb, cport=40005)
    t.command(enable, reply)
    rc, out = t.send(later)
    assert (rc, out) == (XDP_PASS, t.last[2]), name(rc)
    assert erb.stats()['hold'] == 0


def test_connection_with_unseen_history_waits_for_pending_writes(erb_fast):
    """A flow ERB adopted mid-stream (opened before ERB attached) may have turned
    CLIENT TRACKING on before: its commands wait for pending writes, like a
    tracking connection's."""
    erb = erb_fast
    pending_write(erb)
    f = Flow(erb, cport=42000)
    f.c_seq, f.c_ack, f.s_seq, f.s_ack = 12345, 999, 999, 12345
    frame = f.client_frame(resp('PING'))
    rc, _unused = erb.xdp(frame)
    assert rc == XDP_DROP, 'PING of a mid-stream flow with a write pending: %s' % name(rc)
    assert erb.flow(f).flags & L.ERB_FLOW_PUSHES
    erb.apply_all()
    rc, out = erb.xdp(frame)
    assert (rc, out) == (XDP_PASS, frame)


def test_connection_whose_unparsed_bytes_passed_waits_for_pending_writes(erb_fast):
    """Bytes of a gap pass unparsed (nothing pending then; what follows the gap was too
    large to keep): they may hold CLIENT TRACKING ON, so from then on the flow's commands
    wait for pending writes."""
    erb = erb_fast
    f = Flow(erb).handshake()
    gap = resp('CLIENT', 'TRACKING', 'on')
    big = BIG_OOO
    start = f.c_seq
    rc, _unused = erb.xdp(f.client_frame(big, seq=start + len(gap)))
    assert rc == XDP_PASS
    assert not erb.flow(f).flags & L.ERB_FLOW_PUSHES
    rc, _unused = erb.xdp(f.client_frame(gap, seq=start))
    assert rc == XDP_PASS and erb.stats()['unseen_passed'] == 1
    assert erb.flow(f).flags & L.ERB_FLOW_PUSHES
    f.c_seq = (start + len(gap) + len(big)) & 0xffffffff
    f.s_ack = f.c_seq
    erb.end_untracked_quiet()
    pending_write(erb)
    send_held(erb, f, resp('EXISTS', 'other'))


def test_client_tracking_in_a_gap_filled_later_is_parsed_and_waits(erb_fast):
    """CLIENT TRACKING ON in the bytes of a gap, the segment after it kept: the filler is
    parsed with the kept bytes (not passed unparsed) and from then on the flow's commands
    wait."""
    erb = erb_fast
    f = Flow(erb).handshake()
    gap = resp('CLIENT', 'TRACKING', 'on')
    start = f.c_seq
    rc, _unused = erb.xdp(f.client_frame(resp('PING'), seq=start + len(gap)))
    assert rc == XDP_PASS and erb.stats()['ooo_kept'] == 1
    rc, _unused = erb.xdp(f.client_frame(gap, seq=start))
    st = erb.stats()
    assert rc == XDP_PASS and st['ooo_resumed'] == 1 and not st['unseen_passed']
    assert erb.flow(f).flags & L.ERB_FLOW_PUSHES
    f.c_seq = (start + len(gap) + len(resp('PING'))) & 0xffffffff
    f.s_ack = f.c_seq
    erb.end_untracked_quiet()
    pending_write(erb)
    send_held(erb, f, resp('EXISTS', 'other'))


# ---------------------------------------------------------------------- fuzz

# (request bytes, replies Redis sends for it) -- the ones counting has to get right
PIECES = [
    (resp('PING'), [b'+PONG\r\n']),
    (b'PING\r\n', [b'+PONG\r\n']),
    (b'  ping\r\n', [b'+PONG\r\n']),
    (b'\r\n', []),
    (b'   \r\n', []),
    (resp('ECHO', 'x'), [b'$1\r\nx\r\n']),
    (resp('UNSUBSCRIBE', 'a', 'b', 'c'), [b'*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n'] * 3),
    (resp('PUNSUBSCRIBE', 'p'), [b'*3\r\n$12\r\npunsubscribe\r\n$1\r\np\r\n:0\r\n']),
    (resp('UNSUBSCRIBE'), [b'*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n']),
    (resp('GET', 'miss'), [b'$-1\r\n']),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(PIECES) - 1), st.integers(1, 3), st.booleans(),
                          st.integers(0, 6)),
                min_size=1, max_size=12))
def test_fuzz_no_answer_while_redis_owes_a_reply(erb, plan):
    """Random mixes of commands that answer zero, one or several times, pipelined or
    not, with GET hits in between: XDP answers only when Redis owes nothing."""
    erb.reset()
    f = Flow(erb).handshake()
    f.set(b'k', b'v')
    owed = []
    for idx, batch, get, deliver in plan:
        payload = b''.join(PIECES[idx][0] for _unused in range(batch))
        replies = [r for _unused in range(batch) for r in PIECES[idx][1]]
        rc, out = f.send(payload)
        if rc == XDP_TX:
            # GETs of a key cached as absent (the first one's nil filled it): answered only
            # when Redis owes nothing
            assert PIECES[idx][0] == resp('GET', 'miss'), name(rc)
            assert not owed, 'answered GET miss while Redis owes %d replies' % len(owed)
            assert tcp_payload(out) == b''.join(replies)
        else:
            assert rc == XDP_PASS, name(rc)
            owed += replies
        if get:
            rc, out = f.get(b'k')
            if rc == XDP_TX:
                assert not owed, 'answered GET k while Redis owes %d replies' % len(owed)
                assert tcp_payload(out) == bulk(b'v')
            else:
                owed.append(b'$1\r\nv\r\n')
        # Redis sends some of what it owes
        n = min(deliver, len(owed))
        if n:
            f.reply(b''.join(owed[:n]))
            owed = owed[n:]


# -------------------------------------------------- untracked writers

def test_untracked_write_fences_only_its_bucket(erb_fast):
    """A connection whose replies cannot be matched (opened before ERB attached)
    writes x: fast SETs and fills of x's bucket wait a while, every other key's
    go on. One such writer must not turn the fast path off for everyone."""
    erb = erb_fast
    assert bucket_of(b'x') != bucket_of(b'y')
    u = Flow(erb, cport=40100)          # no handshake seen: adopted, untracked
    rc, _unused = u.send(resp('DEL', 'x'))
    assert rc == XDP_PASS
    assert erb.stats()['untracked_write'] == 1
    b = other_flow(erb)
    fast_set(erb, b, b'y', b'1')
    before = erb.stats()['set_pass_busy']
    rc, _unused = b.send(resp('SET', 'x', '1'))
    assert rc == XDP_PASS, 'a fast SET of x right after an untracked write of x: %s' % name(rc)
    assert erb.stats()['set_pass_busy'] == before + 1
