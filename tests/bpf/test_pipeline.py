# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Pipelines (files/bpf/erb_pipe.h): a client segment of several complete
commands, all GET hits and fast SETs, is answered in one reply segment with
the replies concatenated in order; any other segment (a miss, another
command, a partial command, a reply over the frame or the client's MSS, a
busy key, WATCH) is passed to Redis untouched, all or nothing. Each test also
checks the answered case first, so each fails where pipelines pass."""

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from erbtest import (CIP, CMAC, M32, SIP, SMAC, TC_ACT_OK, XDP_DROP, XDP_NAMES, XDP_PASS, XDP_TX, Flow,
                     assert_checksums, bucket_of, bulk, resp, tcp_payload, ts_option)

OK = b'+OK\r\n'
# a ring with room for a pipeline of SETs (answered only while it is at most half full)
RING = 1 << 16


def name(rc):
    return XDP_NAMES.get(rc, rc)


def nonzero(st):
    return {k: v for k, v in st.items() if v}


def check_answer(req, out, payload, server_seq):
    """out is the exact XDP answer to the request frame req, carrying payload."""
    q = Ether(req)
    p = Ether(out)
    thl = 32 if ts_option(req) is not None else 20
    assert len(out) == 14 + 20 + thl + len(payload), 'answer frame length %d' % len(out)
    assert p.dst == q.src == CMAC and p.src == q.dst == SMAC
    assert (p[IP].src, p[IP].dst, p[IP].len) == (SIP, CIP, 20 + thl + len(payload))
    t = p[TCP]
    assert (t.sport, t.dport) == (q[TCP].dport, q[TCP].sport)
    assert t.seq == server_seq, 'answer seq %d, the server next is %d' % (t.seq, server_seq)
    assert t.ack == (q[TCP].seq + len(tcp_payload(req))) & M32
    assert str(t.flags) == 'PA'
    if thl == 32:
        tsval, tsecr = ts_option(req)
        assert t.options == [('NOP', None), ('NOP', None), ('Timestamp', (tsecr, tsval))]
    assert tcp_payload(out) == payload
    assert_checksums(out)


def filled(erb, keys, **kw):
    """A flow whose keys are cached (write-through fills): {key: value}."""
    f = Flow(erb, **kw).handshake()
    values = {}
    for i, key in enumerate(keys):
        values[key] = b'value-%d-' % i + b'x' * i
        f.set(key, values[key])
    assert erb.stats()['fill'] == len(keys)
    return f, values


def gets(keys):
    return b''.join(resp(b'GET', k) for k in keys)


def assert_passed(erb, f, payload, counter):
    before = erb.stats()
    wseq = erb.glob().write_seq
    rc, out = f.send(payload)
    assert rc == XDP_PASS, '%r: %s, expected XDP_PASS' % (payload[:60], name(rc))
    # passed with its payload intact (its seq/ack corrected when the flow has answers)
    assert tcp_payload(out) == payload, 'passed payload modified'
    st = erb.stats()
    assert st[counter] == before[counter] + 1, '%s not counted: %s' % (counter, nonzero(st))
    assert st['pass_not_single'] + st['miss'] + st['pass_state'] + st['pass_too_big'] + \
        st['pass_client_limit'] + st['set_pass_busy'] + st['set_pass_queue_full'] == \
        before['pass_not_single'] + before['miss'] + before['pass_state'] + before['pass_too_big'] + \
        before['pass_client_limit'] + before['set_pass_busy'] + before['set_pass_queue_full'] + 1, \
        'counted more than once: %s' % nonzero(st)
    assert st['pipelined'] == before['pipelined']
    assert erb.glob().write_seq == wseq, 'a passed segment consumed a write sequence'
    return st


@pytest.mark.parametrize('ts', [True, False], ids=['ts', 'no-ts'])
@pytest.mark.parametrize('n', [2, 5, 16])
def test_get_hits_answered_in_one_reply(erb, n, ts):
    keys = [b'key:%d' % i for i in range(n)]
    f, values = filled(erb, keys, ts=ts)
    order = list(reversed(keys))
    req = gets(order)
    server_seq = f.c_ack
    rc, out = f.send(req)
    assert rc == XDP_TX, '%s %s' % (name(rc), nonzero(erb.stats()))
    want = b''.join(bulk(values[k]) for k in order)
    check_answer(f.last[2], out, want, server_seq)
    st = erb.stats()
    assert (st['hit'], st['miss'], st['pipelined'], st['pipelined_cmds']) == (n, 0, 1, n)
    fl = erb.flow(f)
    assert fl.c_nxt == f.c_seq and fl.s_nxt == f.c_ack == (server_seq + len(want)) & M32
    assert (fl.last_req_len, fl.last_rep_len) == (len(req), len(want))
    # the mapping carries the combined counts: a passed command lands where Redis expects it
    rc, fwd = f.send(resp('PING'))
    assert rc == XDP_PASS
    assert Ether(fwd)[TCP].seq == (f.s_ack - len(resp('PING'))) & M32
    rc, back = f.reply(b'+PONG\r\n')
    assert rc == TC_ACT_OK
    assert Ether(back)[TCP].seq == (f.c_ack - 7) & M32
    assert Ether(back)[TCP].ack == f.c_seq
    assert_checksums(back)


def test_sixteen_commands_at_most(erb):
    keys = [b'k%d' % i for i in range(17)]
    f, values = filled(erb, keys)
    assert_passed(erb, f, gets(keys), 'pass_not_single')
    f.reply(b''.join(bulk(values[k]) for k in keys))
    rc, _unused = f.send(gets(keys[:16]))
    assert rc == XDP_TX


def test_hit_and_miss_passed_untouched(erb):
    f, values = filled(erb, [b'a', b'b'])
    rc, out = f.send(gets([b'a', b'b']))
    assert rc == XDP_TX and tcp_payload(out) == bulk(values[b'a']) + bulk(values[b'b'])
    st = assert_passed(erb, f, gets([b'a', b'nope', b'b']), 'miss')
    assert st['hit'] == 2
    assert erb.flow(f).cmds == 2 + 3          # the two fills' SETs and the three GETs


@pytest.mark.parametrize('tail', [b'*2\r\n$3\r\nGET\r\n$1\r\n', b'*2\r\n', b'*1\r\n$4\r\nPING\r\n'],
                         ids=['partial-get', 'partial-header', 'ping'])
def test_trailing_partial_or_other_command_passed(erb, tail):
    f, _unused = filled(erb, [b'a', b'b'])
    rc, _unused = f.send(gets([b'a', b'b']))
    assert rc == XDP_TX
    assert_passed(erb, f, gets([b'a', b'b']) + tail, 'pass_not_single')


def test_reply_over_the_frame_passed(erb):
    f = Flow(erb).handshake()
    f.set(b'big1', b'1' * 720)
    f.set(b'big2', b'2' * 720)
    f.set(b'small', b's' * 10)
    rc, out = f.send(gets([b'big1', b'small']))
    assert rc == XDP_TX and tcp_payload(out) == bulk(b'1' * 720) + bulk(b's' * 10)
    # 2 x 728 bytes of replies: over what one frame (and the resend copy) holds
    assert_passed(erb, f, gets([b'big1', b'big2']), 'pass_too_big')


def test_reply_over_the_clients_mss_passed(erb):
    f = Flow(erb).handshake(mss=536)
    f.set(b'a', b'a' * 300)
    f.set(b'b', b'b' * 300)
    f.set(b'c', b'c' * 100)
    rc, _unused = f.send(gets([b'a', b'c']))
    assert rc == XDP_TX
    assert_passed(erb, f, gets([b'a', b'b']), 'pass_client_limit')


def test_watch_flow_passed(erb):
    f, _unused = filled(erb, [b'a', b'b'])
    rc, _unused = f.send(gets([b'a', b'b']))
    assert rc == XDP_TX
    f.command(resp('WATCH', 'a'), OK)
    assert_passed(erb, f, gets([b'a', b'b']), 'pass_state')


def test_retransmission_resent_from_the_copy(erb):
    f, values = filled(erb, [b'a', b'b', b'c'])
    req_seq, ack0 = f.c_seq, f.c_ack
    req = gets([b'c', b'a', b'b'])
    rc, ans = f.send(req)
    assert rc == XDP_TX
    # the answer is lost: the client's TCP retransmits the whole segment
    rc, out = erb.xdp(f.client_frame(req, seq=req_seq, ack=ack0))
    assert rc == XDP_TX, name(rc)
    assert tcp_payload(out) == tcp_payload(ans) == bulk(values[b'c']) + bulk(values[b'a']) + bulk(values[b'b'])
    assert Ether(out)[TCP].seq == Ether(ans)[TCP].seq and Ether(out)[TCP].ack == Ether(ans)[TCP].ack
    assert_checksums(out)
    assert erb.stats()['retransmit_answer'] == 1
    # a retransmission of part of it is never passed to Redis as new bytes
    rc, out = erb.xdp(f.client_frame(req[len(resp(b'GET', b'c')):], seq=req_seq + len(resp(b'GET', b'c')),
                                     ack=ack0))
    assert rc in (XDP_TX, XDP_DROP), name(rc)      # answered again or dropped, never passed
    assert erb.flow(f).cmds == 3


# ------------------------------------------------------------------ fast SETs


@pytest.fixture
def fast(erb_fast_config):
    return erb_fast_config(ring_bytes=RING)


@pytest.mark.parametrize('n', [2, 7, 16])
def test_sets_answered_with_records_in_order(fast, n):
    f = Flow(fast).handshake()
    pairs = [(b'key:%d' % i, b'v%d' % (i * 37)) for i in range(n)]
    req = b''.join(resp(b'SET', k, v) for k, v in pairs)
    server_seq = f.c_ack
    rc, out = f.send(req)
    assert rc == XDP_TX, '%s %s' % (name(rc), nonzero(fast.stats()))
    check_answer(f.last[2], out, OK * n, server_seq)
    st = fast.stats()
    assert (st['set_fast'], st['pipelined'], st['pipelined_cmds']) == (n, 1, n)
    g = fast.glob()
    assert (g.write_seq, g.applied_seq) == (n, 0)
    recs = fast.ring().peek()
    assert [(r.seq, r.key, r.val) for r in recs] == [(i + 1, k, v) for i, (k, v) in enumerate(pairs)]
    assert all(r.klen == len(r.key) and r.vlen == len(r.val) for r in recs)
    assert fast.cache_entries_raw() == dict(pairs)
    assert fast.cache_wseq() == {k: i + 1 for i, (k, _v) in enumerate(pairs)}
    for k, _v in pairs:
        assert fast.lock(bucket_of(k)) == 0, 'a bucket lock left taken'
    # each stays pending until applied: a GET of one of them to Redis... is answered from the cache
    rc, out = f.send(resp(b'GET', pairs[-1][0]))
    assert rc == XDP_TX and tcp_payload(out) == bulk(pairs[-1][1])
    # and a passed write of one of them is held until its record is applied
    rc, _unused = f.send(resp(b'APPEND', pairs[0][0], b'x'))
    assert rc != XDP_PASS, 'a write passed before the pipelined SET of its key was applied'
    assert fast.stats()['hold'] >= 1
    fast.set_applied(n)
    rc, _unused = f.send(resp(b'APPEND', pairs[0][0], b'x'))
    assert rc == XDP_PASS


def test_get_hits_and_sets_mixed_in_order(fast):
    f = Flow(fast).handshake()
    rc, _unused = f.send(resp(b'SET', b'a', b'old'))
    assert rc == XDP_TX
    req = resp(b'GET', b'a') + resp(b'SET', b'b', b'B') + resp(b'SET', b'a', b'new')
    rc, out = f.send(req)
    assert rc == XDP_TX, '%s %s' % (name(rc), nonzero(fast.stats()))
    assert tcp_payload(out) == bulk(b'old') + OK + OK
    recs = fast.ring().peek()
    assert [(r.seq, r.key, r.val) for r in recs] == [(1, b'a', b'old'), (2, b'b', b'B'), (3, b'a', b'new')]
    assert fast.cache_entries_raw() == {b'a': b'new', b'b': b'B'}


def test_get_after_set_of_its_key_passed(fast):
    f = Flow(fast).handshake()
    rc, _unused = f.send(resp(b'SET', b'a', b'old'))
    assert rc == XDP_TX
    assert fast.ring().consume()
    rc, out = f.send(resp(b'SET', b'b', b'B') + resp(b'GET', b'a'))
    assert rc == XDP_TX and tcp_payload(out) == OK + bulk(b'old')
    assert len(fast.ring().consume()) == 1
    # the GET must see this very segment's SET: not served from the cache before it is written
    before = fast.glob().write_seq
    rc, out = f.send(resp(b'SET', b'a', b'new') + resp(b'GET', b'a'))
    assert rc != XDP_TX, 'GET after SET of its key answered: %r' % tcp_payload(out)
    assert fast.glob().write_seq == before
    assert fast.ring().peek() == []
    assert fast.lock(bucket_of(b'a')) == 0, 'the bucket lock was left taken'
    assert fast.cache_entries_raw() == {b'a': b'old', b'b': b'B'}


def test_set_and_a_miss_passed_with_no_record(fast):
    f = Flow(fast).handshake()
    rc, _unused = f.send(resp(b'SET', b'a', b'1') + resp(b'SET', b'b', b'2'))
    assert rc == XDP_TX
    fast.ring().consume()
    st = assert_passed(fast, f, resp(b'SET', b'c', b'3') + resp(b'GET', b'missing'), 'miss')
    assert st['set_fast'] == 2
    assert fast.ring().peek() == []
    assert fast.lock(bucket_of(b'c')) == 0
    assert b'c' not in fast.cache_entries_raw()


def test_sets_of_one_key_follow_each_other(fast):
    f = Flow(fast).handshake()
    rc, _unused = f.send(resp(b'SET', b'a', b'0'))
    assert rc == XDP_TX
    fast.ring().consume()
    req = resp(b'SET', b'k', b'1') + resp(b'SET', b'a', b'2') + resp(b'SET', b'k', b'3') + resp(b'SET', b'k', b'4')
    rc, out = f.send(req)
    assert rc == XDP_TX, '%s %s' % (name(rc), nonzero(fast.stats()))
    assert tcp_payload(out) == OK * 4
    recs = fast.ring().peek()
    want = [(2, b'k', b'1'), (3, b'a', b'2'), (4, b'k', b'3'), (5, b'k', b'4')]
    assert [(r.seq, r.key, r.val) for r in recs] == want
    assert fast.cache_entries_raw() == {b'a': b'2', b'k': b'4'}
    assert fast.cache_wseq() == {b'a': 3, b'k': 5}
    assert fast.lock(bucket_of(b'k')) == 0 and fast.lock(bucket_of(b'a')) == 0


def same_bucket_key(key):
    b = bucket_of(key)
    for i in range(1 << 22):
        other = b'o%d' % i
        if bucket_of(other) == b and other != key:
            return other
    raise AssertionError('no key of the bucket of %r' % key)


def test_two_keys_of_one_bucket_passed(fast):
    f = Flow(fast).handshake()
    rc, _unused = f.send(resp(b'SET', b'a', b'1') + resp(b'SET', b'b', b'2'))
    assert rc == XDP_TX
    fast.ring().consume()
    other = same_bucket_key(b'k')
    assert_passed(fast, f, resp(b'SET', b'k', b'1') + resp(b'SET', other, b'2'), 'set_pass_busy')
    assert fast.ring().peek() == []
    assert fast.lock(bucket_of(b'k')) == 0
    assert b'k' not in fast.cache_entries_raw() and other not in fast.cache_entries_raw()


def test_sets_passed_while_the_ring_is_half_full(erb_fast):
    # 8 KiB ring: one pending record leaves it under half free for two more
    f = Flow(erb_fast).handshake()
    rc, _unused = f.send(resp(b'SET', b'a', b'1') + resp(b'SET', b'b', b'2'))
    assert rc == XDP_TX
    assert_passed(erb_fast, f, resp(b'SET', b'c', b'3') + resp(b'SET', b'd', b'4'), 'set_pass_queue_full')
    assert len(erb_fast.ring().peek()) == 2
    f.reply(OK + OK)
    # the agent drains the ring: answered again
    erb_fast.ring().consume()
    rc, out = f.send(resp(b'SET', b'c', b'3') + resp(b'SET', b'd', b'4'))
    assert rc == XDP_TX and tcp_payload(out) == OK + OK


def test_retransmitted_sets_resent_without_new_records(fast):
    f = Flow(fast).handshake()
    req_seq, ack0 = f.c_seq, f.c_ack
    req = resp(b'SET', b'a', b'1') + resp(b'SET', b'b', b'2') + resp(b'SET', b'c', b'3')
    rc, ans = f.send(req)
    assert rc == XDP_TX
    assert len(fast.ring().consume()) == 3
    rc, out = fast.xdp(f.client_frame(req, seq=req_seq, ack=ack0))
    assert rc == XDP_TX and tcp_payload(out) == OK * 3
    assert Ether(out)[TCP].seq == Ether(ans)[TCP].seq
    assert fast.ring().peek() == [] and fast.glob().write_seq == 3


OTHER_FIRST = [('incr', resp('INCR', 'n')), ('echo', resp('ECHO', 'hello there')),
               ('argc-10', b'*10\r\n' + b''.join(b'$1\r\nx\r\n' for _unused in range(10)))]


@pytest.mark.parametrize('first, rest', [(c, r) for _n, c in OTHER_FIRST for r in (b'', gets([b'a', b'b']))] +
                         [(resp('MGET', 'a', 'b'), gets([b'a', b'b']))],
                         ids=['%s-%s' % (n, r) for n, _c in OTHER_FIRST for r in ('alone', 'then-gets')] +
                         ['mget-then-gets'])
def test_other_first_command_passed_after_one_look(erb, first, rest):
    """A segment whose first command is no GET or SET can be neither a single answer nor an
    answered pipeline (each of whose commands is one): passed, counted once, as before. An
    MGET is answered only alone (test_mget.py)."""
    f, _unused = filled(erb, [b'a', b'b'])
    assert_passed(erb, f, first + rest, 'pass_not_single')


def test_pipeline_of_lowercase_gets_still_answered(erb):
    f, values = filled(erb, [b'a', b'b'])
    req = resp(b'get', b'a') + resp(b'gEt', b'b')
    rc, out = f.send(req)
    assert rc == XDP_TX, name(rc)
    assert tcp_payload(out) == bulk(values[b'a']) + bulk(values[b'b'])
