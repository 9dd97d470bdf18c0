# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The hold rule (DESIGN.md "Coherence with Redis"): while a SET answered in
XDP is not yet applied to Redis (its entry's wseq > erb_global.applied_seq), a
command that must go to Redis and touches that key -- or any command whose keys
cannot be parsed while any write is pending -- is dropped (XDP_DROP, `hold`
counted) as if never seen, so that TCP retransmits it; once the agent publishes
applied_seq the retransmission is passed and parsed exactly once."""

import ctypes

import pytest
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether

from erbtest import (XDP_DROP, XDP_NAMES, XDP_PASS, XDP_TX, Flow, bucket_of, bulk, resp, tcp_payload)

K = b'key:1'
OK = b'+OK\r\n'


def name(rc):
    return XDP_NAMES.get(rc, rc)


def nonzero(st):
    return {k: v for k, v in st.items() if v}


def flow_bytes(erb, f):
    """The flow's state, but for c_ack (the ACK a held segment carries is what the
    client has, whatever happens to its payload) and hold_wseq/hold_end (the bound a
    held segment waits for, and the bytes it covers)."""
    fl = erb.flow(f)
    assert fl is not None
    fl.c_ack = 0
    fl.hold_wseq = 0
    fl.hold_end = 0
    return ctypes.string_at(ctypes.addressof(fl), ctypes.sizeof(fl))


def fast_set(erb, f, key, value):
    rc, out = f.send(resp(b'SET', key, value))
    assert rc == XDP_TX, 'SET %r not answered: %s %s' % (key, name(rc), nonzero(erb.stats()))
    assert tcp_payload(out) == OK
    return out


def pending_write(erb, key=K, value=b'value', cport=40001):
    """Flow a answers SET key value in XDP: one write pending (write_seq 1, applied 0)."""
    a = Flow(erb, cport=cport).handshake()
    fast_set(erb, a, key, value)
    g = erb.glob()
    assert (g.write_seq, g.applied_seq) == (1, 0)
    return a


def other_flow(erb, cport=40002):
    return Flow(erb, cport=cport, c_isn=5, s_isn=77).handshake()


def keys_unlocked(erb, *keys):
    for k in keys:
        assert erb.lock(bucket_of(k)) == 0, 'bucket lock of %r left taken' % k


def send_held(erb, f, payload, counter='hold'):
    """payload is dropped by the hold rule, leaving the flow exactly as it was.
    counter: 'hold' (a pending write) or 'hold_busy' (a bucket lock another CPU
    keeps); the other one must not move."""
    before_flow = flow_bytes(erb, f)
    before = erb.stats()
    erb.parked()
    frame = f.client_frame(payload)
    bound = erb.glob().write_seq if not erb.flow(f).hold_wseq else None
    rc, out = erb.xdp(frame)
    assert rc == XDP_DROP, '%r with a write pending: %s, expected XDP_DROP (hold) %s' % (
        payload[:50], name(rc), nonzero(erb.stats()))
    st = erb.stats()
    other = 'hold_busy' if counter == 'hold' else 'hold'
    assert st[counter] == before[counter] + 1, (counter, nonzero(st))
    assert st[other] == before[other], (other, nonzero(st))
    # a hold for a pending write parks a copy for the agent to replay; a busy lock does not
    parked = erb.parked()
    if counter == 'hold':
        assert st['parked'] == before['parked'] + 1 and len(parked) == 1, nonzero(st)
        p = parked[0]
        assert bytes(p.frame[:p.len]) == frame, 'the parked copy differs from the segment received'
        assert p.bound == (erb.flow(f).hold_wseq if bound is None else bound)
        assert p.bound > erb.glob().applied_seq and p.ifindex == 1 and p.rxq == 0  # lo: a test run's default
    else:
        assert st['parked'] == before['parked'] and not parked
    assert st['cmds_passed'] == before['cmds_passed']
    assert flow_bytes(erb, f) == before_flow, 'a held segment changed the flow (parser, c_nxt, cmds...)'
    return frame


def resend(erb, f, frame, payload):
    """The client's retransmission of frame (same bytes); the model follows a pass."""
    rc, out = erb.xdp(frame)
    if rc == XDP_PASS:
        f.c_seq = (f.c_seq + len(payload)) & 0xffffffff
        f.s_ack = (f.s_ack + len(payload)) & 0xffffffff
        f.s_recent = f.c_tsval
    return rc, out


def passed_once(erb, f, frame, payload, ncmds=1):
    """The retransmission is passed untouched and its commands counted once."""
    before = erb.stats()
    cmds = erb.flow(f).cmds
    rc, out = resend(erb, f, frame, payload)
    assert rc == XDP_PASS, 'retransmission after apply: %s %s' % (name(rc), nonzero(erb.stats()))
    assert out == frame
    st = erb.stats()
    assert st['cmds_passed'] == before['cmds_passed'] + ncmds
    assert st['hold'] == before['hold']
    assert erb.flow(f).cmds == cmds + ncmds
    # a duplicate of an already passed segment is not parsed again
    rc, out = erb.xdp(frame)
    assert rc == XDP_PASS
    assert erb.stats()['cmds_passed'] == before['cmds_passed'] + ncmds
    assert erb.flow(f).cmds == cmds + ncmds


# (setup commands with their replies, the command, Redis's reply)
HELD = {
    'STRLEN': ([], resp('STRLEN', K), b':5\r\n'),
    'DEL': ([], resp('DEL', K), b':1\r\n'),
    'INCR': ([], resp('INCR', K), b'-ERR value is not an integer or out of range\r\n'),
    'EXPIRE': ([], resp('EXPIRE', K, '10'), b':1\r\n'),
    'APPEND': ([], resp('APPEND', K, 'x'), b':6\r\n'),
    'SET-EX': ([], resp('SET', K, 'v2', 'EX', '10'), OK),
    'set-lower-NX': ([], resp('set', K, 'v2', 'nx'), b'$-1\r\n'),
    'MGET-a-k': ([], resp('MGET', 'a', K), b'*2\r\n$-1\r\n$5\r\nvalue\r\n'),
    'EXISTS': ([], resp('EXISTS', K), b':1\r\n'),
    'RENAME-to-k': ([], resp('RENAME', 'x', K), OK),
    'GET-in-MULTI': ([(resp('MULTI'), OK)], resp('GET', K), b'+QUEUED\r\n'),
    'GET-reply-owed': ([(resp('PING'), None)], resp('GET', K), b'+PONG\r\n$5\r\nvalue\r\n'),
    'pipelined-GET-x-DEL-k': ([], resp('GET', 'x') + resp('DEL', K), b'$-1\r\n:1\r\n'),
}


def run_setup(f, setup):
    for payload, reply in setup:
        rc, _unused = f.send(payload)
        assert rc == XDP_PASS
        if reply is not None:
            f.reply(reply)


@pytest.mark.parametrize('case', sorted(HELD))
def test_command_on_pending_key_held_until_applied(erb_fast, case):
    erb = erb_fast
    setup, payload, reply = HELD[case]
    pending_write(erb)
    b = other_flow(erb)
    run_setup(b, setup)
    frame = send_held(erb, b, payload)
    keys_unlocked(erb, K, b'a', b'x')
    # TCP retransmits while the write is still pending: held again
    assert erb.xdp(frame)[0] == XDP_DROP
    assert erb.stats()['hold'] == 2
    # the agent applied the record and published applied_seq
    assert [r.seq for r in erb.records()] == [1]
    erb.apply_all()
    passed_once(erb, b, frame, payload, ncmds=payload.count(b'*'))
    keys_unlocked(erb, K, b'a', b'x')
    b.reply(reply)
    fl = erb.flow(b)
    assert fl.cmds == fl.replies


def test_write_passed_after_apply_invalidates(erb_fast):
    erb = erb_fast
    a = pending_write(erb)
    b = other_flow(erb)
    payload = resp('DEL', K)
    frame = send_held(erb, b, payload)
    assert erb.cache_entries_raw() == {K: b'value'}
    erb.apply_all()
    passed_once(erb, b, frame, payload)
    assert erb.cache_entries_raw() == {}
    b.reply(b':1\r\n')
    rc, _unused = a.send(resp('GET', K))
    assert rc == XDP_PASS                    # a miss: Redis answers
    assert erb.stats()['miss'] == 1


def test_get_of_pending_key_answered_from_cache(erb_fast):
    """Not a hold: an answerable GET of the pending key is a hit."""
    erb = erb_fast
    pending_write(erb)
    b = other_flow(erb)
    rc, out = b.send(resp('GET', K))
    assert rc == XDP_TX and tcp_payload(out) == bulk(b'value')
    assert erb.stats()['hold'] == 0


NOT_HELD = {
    'STRLEN-other': ([], resp('STRLEN', 'other'), b':0\r\n'),
    'DEL-other': ([], resp('DEL', 'other'), b':0\r\n'),
    'INCR-other': ([], resp('INCR', 'other'), b':1\r\n'),
    'EXPIRE-other': ([], resp('EXPIRE', 'other', '10'), b':0\r\n'),
    'MGET-a-b': ([], resp('MGET', 'a', 'b'), b'*2\r\n$-1\r\n$-1\r\n'),
    'GET-other-in-MULTI': ([(resp('MULTI'), OK)], resp('GET', 'other'), b'+QUEUED\r\n'),
    'SET-other-EX': ([], resp('SET', 'other', 'v', 'EX', '10'), OK),
    'PING': ([], resp('PING'), b'+PONG\r\n'),
    'inline-PING': ([], b'PING\r\n', b'+PONG\r\n'),
    'inline-PING-leading-blanks': ([], b'  \tping\r\n', b'+PONG\r\n'),
}


@pytest.mark.parametrize('case', sorted(NOT_HELD))
def test_command_on_other_keys_not_held(erb_fast, case):
    erb = erb_fast
    setup, payload, reply = NOT_HELD[case]
    pending_write(erb)
    b = other_flow(erb)
    run_setup(b, setup)
    before = erb.stats()
    rc, out = b.send(payload)
    assert (rc, out) == (XDP_PASS, b.last[2]), '%r: %s %s' % (payload, name(rc), nonzero(erb.stats()))
    st = erb.stats()
    assert st['hold'] == 0
    assert st['cmds_passed'] == before['cmds_passed'] + 1
    keys_unlocked(erb, K, b'a', b'b', b'other')
    b.reply(reply)
    assert erb.cache_entries_raw()[K] == b'value'


UNKNOWN_KEYS = {
    'FLUSHALL': (resp('FLUSHALL'), OK),
    'FLUSHDB': (resp('flushdb', 'ASYNC'), OK),
    'unknown-command': (resp('NOSUCHCOMMAND', 'x'), b"-ERR unknown command 'NOSUCHCOMMAND'\r\n"),
    'EVAL': (resp('EVAL', 'return 1', '0'), b':1\r\n'),
    'FCALL': (resp('FCALL', 'f', '0'), b'-ERR Function not found\r\n'),
    'inline': (b'STRLEN other\r\n', b':0\r\n'),
    # the keyspace as a whole: they show every write Redis has
    'KEYS': (resp('KEYS', 'key*'), b'*0\r\n'),
    'inline-KEYS': (b'KEYS *\r\n', b'*0\r\n'),
    'SCAN': (resp('SCAN', '0'), b'*2\r\n$1\r\n0\r\n*0\r\n'),
    'DBSIZE': (resp('DBSIZE'), b':0\r\n'),
    'RANDOMKEY': (resp('RANDOMKEY'), b'$-1\r\n'),
    'INFO': (resp('INFO', 'keyspace'), b'$12\r\n# Keyspace\r\n\r\n'),
    # a message reaches subscribers after the pushes of the writes acknowledged before it
    'PUBLISH': (resp('PUBLISH', 'ch', 'm'), b':0\r\n'),
    'SPUBLISH': (resp('SPUBLISH', 'ch', 'm'), b':0\r\n'),
    # keys in a container's subcommand
    'OBJECT-ENCODING': (resp('OBJECT', 'ENCODING', K), b'$-1\r\n'),
    'MEMORY-USAGE': (resp('MEMORY', 'USAGE', K), b'$-1\r\n'),
    'XINFO-STREAM': (resp('XINFO', 'STREAM', K), b'-ERR no such key\r\n'),
}


@pytest.mark.parametrize('case', sorted(UNKNOWN_KEYS))
def test_unknown_keys_held_while_writes_pending(erb_fast, case):
    erb = erb_fast
    payload, reply = UNKNOWN_KEYS[case]
    pending_write(erb)
    b = other_flow(erb)
    gen = erb.glob().cache_gen
    frame = send_held(erb, b, payload)
    assert erb.glob().cache_gen == gen                  # a held flush flushes nothing
    assert erb.cache_entries_raw() == {K: b'value'}
    erb.apply_all()
    passed_once(erb, b, frame, payload)
    b.reply(reply)


@pytest.mark.parametrize('case', sorted(UNKNOWN_KEYS))
def test_unknown_keys_not_held_without_pending_writes(erb_fast, case):
    erb = erb_fast
    payload, reply = UNKNOWN_KEYS[case]
    b = other_flow(erb)
    rc, out = b.send(payload)
    assert (rc, out) == (XDP_PASS, b.last[2])
    assert erb.stats()['hold'] == 0
    b.reply(reply)


def test_held_until_applied_seq_reaches_the_keys_write(erb_fast):
    """Two pending writes: applied_seq = 1 releases the first key only; commands
    with unknown keys wait for all (write_seq == applied_seq)."""
    erb = erb_fast
    a = pending_write(erb, key=b'key:1')
    fast_set(erb, a, b'key:2', b'value2')
    assert erb.glob().write_seq == 2
    b = other_flow(erb)
    c = other_flow(erb, cport=40003)
    d = other_flow(erb, cport=40004)
    f1 = send_held(erb, b, resp('STRLEN', 'key:1'))
    f2 = send_held(erb, c, resp('STRLEN', 'key:2'))
    f3 = send_held(erb, d, resp('FLUSHALL'))
    erb.set_applied(1)
    passed_once(erb, b, f1, resp('STRLEN', 'key:1'))
    assert erb.xdp(f2)[0] == XDP_DROP
    assert erb.xdp(f3)[0] == XDP_DROP
    erb.set_applied(2)
    passed_once(erb, c, f2, resp('STRLEN', 'key:2'))
    passed_once(erb, d, f3, resp('FLUSHALL'))


def test_key_split_over_segments_held_at_the_key(erb_fast):
    """The command's head passes (no key yet); the segment with the key is held,
    and its retransmission resumes the parser where the head left it."""
    erb = erb_fast
    pending_write(erb)
    b = other_flow(erb)
    head, tail = b'*2\r\n$6\r\nSTRLEN\r\n', b'$5\r\nkey:1\r\n'
    rc, out = b.send(head)
    assert (rc, out) == (XDP_PASS, b.last[2])
    frame = send_held(erb, b, tail)
    erb.apply_all()
    passed_once(erb, b, frame, tail)
    assert erb.stats()['cmds_passed'] == 1
    b.reply(b':5\r\n')


def test_held_segment_of_a_split_write(erb_fast):
    erb = erb_fast
    pending_write(erb)
    b = other_flow(erb)
    head, tail = b'*2\r\n$3\r\nDEL\r\n$5\r\nke', b'y:1\r\n'
    rc, _unused = b.send(head)
    assert rc == XDP_PASS
    frame = send_held(erb, b, tail)
    assert erb.cache_entries_raw() == {K: b'value'}
    erb.apply_all()
    passed_once(erb, b, frame, tail)
    assert erb.cache_entries_raw() == {}


def test_mid_stream_flow_hold(erb_fast):
    """A flow ERB never saw start (untracked): its commands are parsed from the
    first '*' and held like any other while a write of their key is pending."""
    erb = erb_fast
    pending_write(erb)
    f = Flow(erb, cport=42000)
    f.c_seq, f.c_ack, f.s_seq, f.s_ack = 12345, 999, 999, 12345
    frame = f.client_frame(resp('DEL', K))
    rc, _unused = erb.xdp(frame)
    assert rc == XDP_DROP, name(rc)
    assert erb.cache_entries_raw() == {K: b'value'}
    erb.apply_all()
    rc, out = resend(erb, f, frame, resp('DEL', K))
    assert (rc, out) == (XDP_PASS, frame)


def test_mid_stream_flow_when_flow_table_full_held(erb_fast_config):
    """erb_flows is full (max_flows 2): a mid-stream segment of a third flow gets
    no flow entry, its keys cannot be parsed: held while a write is pending.
    Regression (fixed in e113d12): erb_xdp() passed it and emptied the cache
    without the hold check, so a `DEL key:1` reached Redis before the
    acknowledged `SET key:1` it follows, and the cache_gen bump hid the pending
    entry from key_pending(): nothing on key:1 was held afterwards."""
    erb = erb_fast_config(max_flows=2)
    a = pending_write(erb)
    other_flow(erb)
    c = Flow(erb, cport=42000)
    c.c_seq, c.c_ack, c.s_seq, c.s_ack = 12345, 999, 999, 12345
    frame = c.client_frame(resp('DEL', K))
    rc, _unused = erb.xdp(frame)
    assert erb.stats()['flow_full'] >= 1
    assert rc == XDP_DROP, ('segment of an untrackable flow with a write pending: %s, expected XDP_DROP (hold) %s'
                            % (name(rc), nonzero(erb.stats())))
    assert erb.cache_wseq() == {K: 1}
    del a


def test_duplicate_key_in_one_command_not_held(erb_fast):
    """hold_step() try-locks each key's bucket in turn. Regression (fixed in
    e113d12 by per-CPU lock tokens): a command naming one key twice (or two keys
    of one erb_buckets bucket) found the bucket locked by itself and was held
    although none of its keys was pending -- for as long as any write anywhere
    was pending, i.e. all the time under a SET load."""
    erb = erb_fast
    pending_write(erb)
    b = other_flow(erb)
    before = erb.stats()
    rc, out = b.send(resp('MGET', 'a', 'a'))
    assert (rc, out) == (XDP_PASS, b.last[2]), 'MGET a a: %s %s' % (name(rc), nonzero(erb.stats()))
    assert erb.stats()['hold'] == before['hold']
    keys_unlocked(erb, b'a')


def test_keys_sharing_a_lock_bucket_not_held(erb_fast):
    erb = erb_fast
    k1, k2 = b'c849', b'c1886'
    assert bucket_of(k1) == bucket_of(k2)
    pending_write(erb)
    b = other_flow(erb)
    rc, out = b.send(resp('DEL', k1, k2))
    assert (rc, out) == (XDP_PASS, b.last[2]), 'DEL %r %r: %s %s' % (k1, k2, name(rc), nonzero(erb.stats()))
    assert erb.stats()['hold'] == 0
    keys_unlocked(erb, k1)


def test_no_hold_without_pending_writes(erb_fast):
    erb = erb_fast
    a = pending_write(erb)
    erb.apply_all()
    b = other_flow(erb)
    for payload, reply in [(resp('STRLEN', K), b':5\r\n'), (resp('MGET', 'a', 'a'), b'*2\r\n$-1\r\n$-1\r\n'),
                           (resp('DEL', K), b':1\r\n')]:
        rc, out = b.send(payload)
        assert (rc, out) == (XDP_PASS, b.last[2])
        b.reply(reply)
    assert erb.stats()['hold'] == 0
    del a


def test_mid_stream_flow_when_flow_table_full_without_pending_writes(erb_fast_config):
    """Nothing pending: the untrackable segment is passed and empties the cache."""
    erb = erb_fast_config(max_flows=2)
    a = pending_write(erb)
    erb.apply_all()
    other_flow(erb)
    c = Flow(erb, cport=42000)
    c.c_seq, c.c_ack, c.s_seq, c.s_ack = 12345, 999, 999, 12345
    frame = c.client_frame(resp('DEL', K))
    assert erb.xdp(frame) == (XDP_PASS, frame)
    assert erb.stats()['hold'] == 0
    assert erb.cache_entries_raw() == {}
    del a


# A bucket lock taken by another CPU (its erb_buckets lock holds that CPU's token, cpu + 1):
# no CPU of this machine has this one.
FOREIGN = 0x7fffffff


def test_bucket_locked_by_another_cpu_holds(erb_fast):
    """A command whose key's bucket another CPU holds (a fast SET in progress)
    is held, and the other CPU's lock is left alone."""
    erb = erb_fast
    pending_write(erb)
    k2 = b'key:2'
    erb.set_lock(bucket_of(k2), FOREIGN)
    b = other_flow(erb)
    frame = send_held(erb, b, resp('STRLEN', k2), counter='hold_busy')
    assert erb.lock(bucket_of(k2)) == FOREIGN
    erb.set_lock(bucket_of(k2), 0)
    passed_once(erb, b, frame, resp('STRLEN', k2))
    keys_unlocked(erb, k2)


def test_bucket_locked_by_another_cpu_with_a_duplicate_key(erb_fast):
    erb = erb_fast
    pending_write(erb)
    erb.set_lock(bucket_of(b'c1886'), FOREIGN)
    b = other_flow(erb)
    send_held(erb, b, resp('MGET', 'a', 'a', 'c849', 'c1886'), counter='hold_busy')
    assert erb.lock(bucket_of(b'c1886')) == FOREIGN
    keys_unlocked(erb, b'a')


def test_write_to_a_bucket_another_cpu_keeps_is_held_busy_not_hold(erb):
    """No fast SET at all (write_seq 0): a write passed to Redis counts itself
    under its bucket's lock; when another CPU keeps that lock past the lock wait
    (a fill on a stalled vCPU) the segment is dropped as hold_busy, never counted
    as a hold for a pending write. Once the lock is free the same segment passes,
    and the other CPU's lock was never touched."""
    f = Flow(erb).handshake()
    f.set(K, b'v')
    erb.set_lock(bucket_of(K), FOREIGN)
    frame = send_held(erb, f, resp(b'DEL', K), counter='hold_busy')
    assert erb.stats()['hold_waited'] == 0
    assert erb.lock(bucket_of(K)) == FOREIGN
    assert erb.glob().write_seq == 0
    erb.set_lock(bucket_of(K), 0)
    passed_once(erb, f, frame, resp(b'DEL', K))
    assert erb.inflight(bucket_of(K)) == 1
    keys_unlocked(erb, K)


def test_fast_set_busy_when_bucket_locked_by_another_cpu(erb_fast):
    """Another CPU's fast SET holds the bucket: this SET is not answered, and not
    passed either (a passed write takes the bucket lock to count itself): held."""
    erb = erb_fast
    f = Flow(erb).handshake()
    erb.set_lock(bucket_of(K), FOREIGN)
    before = erb.stats()
    frame = f.client_frame(resp(b'SET', K, b'value'))
    assert erb.xdp(frame) == (XDP_DROP, frame)
    st = erb.stats()
    assert st['set_pass_busy'] == before['set_pass_busy'] + 1 and st['set_fast'] == 0
    assert st['hold_busy'] == before['hold_busy'] + 1 and st['hold'] == before['hold']
    assert erb.glob().write_seq == 0 and erb.ring().peek() == []
    assert erb.lock(bucket_of(K)) == FOREIGN


def test_fill_skipped_when_bucket_locked_by_another_cpu(erb_fast):
    erb = erb_fast
    b = other_flow(erb)
    b.send(resp('PING'))
    b.send(resp('SET', K, 'v-redis'))
    erb.set_lock(bucket_of(K), FOREIGN)
    b.reply(b'+PONG\r\n')
    b.reply(OK)
    st = erb.stats()
    assert (st['fill'], st['fill_skipped']) == (0, 1)
    assert erb.lock(bucket_of(K)) == FOREIGN
    assert erb.cache_entries_raw() == {}


def test_same_flow_command_after_its_own_fast_set_held(erb_fast):
    """The client that got +OK asks Redis about the key at once: held until
    applied, then passed with its seq moved into the server's view."""
    erb = erb_fast
    a = pending_write(erb)
    payload = resp('STRLEN', K)
    frame = send_held(erb, a, payload)
    erb.apply_all()
    rc, out = resend(erb, a, frame, payload)
    assert rc == XDP_PASS
    assert tcp_payload(out) == payload
    assert Ether(out)[TCP].seq == (a.c_isn + 1) & 0xffffffff      # the SET never reached the server
    assert erb.stats()['cmds_passed'] == 1
    rc, out = a.reply(b':5\r\n')
    assert tcp_payload(out) == b':5\r\n'
