# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""HGETALL (YCSB reads) answered in XDP with Redis's exact reply bytes.

Read-through fill: an HGETALL miss passed to Redis on a tracked RESP2 flow is
captured; when TC egress sees its whole reply in one skb (a '*' array of at
least 2 elements, at most max_value_len bytes), those bytes are stored as a
type ERB_TYPE_HASH_UNVERIFIED entry under the write-through cancellation rules,
never served until the agent has checked that the key has no TTL and made it
ERB_TYPE_HASH (verify_hash() does what the agent does). The next "HGETALL key"
segment is then answered with them. Writes of the key (HSET, HMSET,
HDEL, DEL, EXPIRE...) invalidate it; GET never sees it. RESP3's reply, a map
"%<pairs>" of the same bulks, is stored in the RESP2 form ("*<2 x pairs>"), and a
flow whose last HELLO TC saw answered with a map gets the map's header; a flow whose
HELLO reply TC did not see (HELLO failed, or AUTH after it in one segment) is never
answered (array or map unknown), though its reply still fills."""

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from erbtest import (HELLO2, HELLO3, live_entries, verify_hash, CIP, DEFAULT_CONFIG, CMAC, SIP, SMAC, XDP_NAMES, XDP_PASS, XDP_TX, Flow,
                     assert_checksums, bucket_of, bulk, resp, tcp_payload, ts_option)
from ansible_collections.erb.booster.plugins.module_utils import erb_layout as L


def hash_reply(fields):
    """Redis's RESP2 reply to HGETALL of a hash with these (field, value) pairs."""
    out = b'*%d\r\n' % (2 * len(fields))
    for k, v in fields:
        out += bulk(k) + bulk(v)
    return out


def ycsb_fields(n=10, size=100, seed=0):
    return [(b'field%d' % i, bytes((i * 31 + j * 7 + seed) % 94 + 33 for j in range(size))) for i in range(n)]


SMALL = [(b'f1', b'v1'), (b'f2', b'hello world'), (b'f3', b'a\r\nb$3\r\n*\x00')]


def name(rc):
    return XDP_NAMES.get(rc, rc)


def check_answer(req, out, payload, server_seq):
    q = Ether(req)
    p = Ether(out)
    has_ts = ts_option(req) is not None
    thl = 32 if has_ts else 20
    assert len(out) == 14 + 20 + thl + len(payload)
    assert p.dst == q.src == CMAC and p.src == q.dst == SMAC
    assert (p[IP].src, p[IP].dst) == (SIP, CIP)
    assert p[IP].len == 20 + thl + len(payload)
    t = p[TCP]
    assert (t.sport, t.dport) == (q[TCP].dport, q[TCP].sport)
    assert t.seq == server_seq
    assert t.ack == (q[TCP].seq + len(tcp_payload(req))) & 0xffffffff
    assert str(t.flags) == 'PA'
    if has_ts:
        tsval, tsecr = ts_option(req)
        assert t.options == [('NOP', None), ('NOP', None), ('Timestamp', (tsecr, tsval))]
    assert tcp_payload(out) == payload
    assert_checksums(out)


def entry_types(erb):
    """Live entries: {key: (type, value bytes)}."""
    return {key: (e.type, val) for _unused, e, key, val in live_entries(erb)}


def fill(f, key, fields, cmd=b"HGETALL", verified=True):
    """HGETALL miss passed, its reply through TC (and, verified, checked as the agent
    does): returns the reply bytes."""
    rep = hash_reply(fields)
    rc, _unused = f.send(resp(cmd, key))
    assert rc == XDP_PASS, 'HGETALL miss not passed: %s' % name(rc)
    f.reply(rep)
    if verified:
        verify_hash(f.erb, key)
    return rep


def assert_hit(erb, f, key, payload, name=b'HGETALL'):
    server_seq = f.c_ack
    rc, out = f.send(resp(name, key))
    assert rc == XDP_TX, 'HGETALL %r not answered: %s %s' % (key, XDP_NAMES.get(rc, rc),
                                                             {k: v for k, v in erb.stats().items() if v})
    check_answer(f.last[2], out, payload, server_seq)


def assert_miss(f, key):
    rc, out = f.send(resp(b'HGETALL', key))
    assert rc == XDP_PASS
    f.reply(b'*0\r\n')


def test_fill_is_not_served_before_the_agent_checks_its_ttl(erb):
    f = Flow(erb).handshake()
    rep = fill(f, b'user:1', SMALL, verified=False)
    st = erb.stats()
    # fill_hash is what sets erb-agent's TTL scan going
    assert (st['fill'], st['fill_hash']) == (1, 1), st
    assert entry_types(erb) == {b'user:1': (L.ERB_TYPE_HASH_UNVERIFIED, rep)}
    rc, _ignored = f.send(resp(b'HGETALL', b'user:1'))
    assert rc == XDP_PASS, 'an unchecked hash (it may have a TTL) answered in XDP: %s' % name(rc)
    f.reply(rep)
    verify_hash(erb, b'user:1')
    assert_hit(erb, f, b'user:1', rep)


@pytest.mark.parametrize('ts', [True, False], ids=['ts', 'no-ts'])
@pytest.mark.parametrize('cmd', [b'HGETALL', b'hgetall', b'HgetAll'])
def test_fill_then_hit_exact_bytes(erb, ts, cmd):
    f = Flow(erb, ts=ts).handshake()
    rep = fill(f, b'user:1', SMALL, cmd=cmd)
    assert erb.stats()['fill'] == 1
    assert entry_types(erb) == {b'user:1': (L.ERB_TYPE_HASH, rep)}
    assert_hit(erb, f, b'user:1', rep, name=cmd)
    assert_hit(erb, f, b'user:1', rep)
    assert erb.stats()['hit'] == 2
    # the flow still works: a passed command and its reply afterwards
    f.command(resp(b'PING'), b'+PONG\r\n')
    assert_hit(erb, f, b'user:1', rep)


def test_ycsb_record(erb_config):
    erb = erb_config(max_value_len=1400)
    f = Flow(erb).handshake()
    fields = ycsb_fields()
    rep = fill(f, b'user6284781860667377211', fields)
    assert 1200 < len(rep) <= 1400
    assert_hit(erb, f, b'user6284781860667377211', rep)


def test_too_big_and_empty_not_cached(erb):
    f = Flow(erb).handshake()
    fill(f, b'big', ycsb_fields())          # > max_value_len 1024
    fill(f, b'empty', [])                   # *0
    rc, _unused = f.send(resp(b'HGETALL', b'nil'))
    f.reply(b'-WRONGTYPE Operation against a key holding the wrong kind of value\r\n')
    assert erb.stats()['fill'] == 0
    assert entry_types(erb) == {}


@pytest.mark.parametrize('write', [
    [b'HSET', b'user:1', b'f1', b'x'],
    [b'HMSET', b'user:1', b'f1', b'x', b'f9', b'y'],
    [b'HDEL', b'user:1', b'f1'],
    [b'DEL', b'user:1'],
    [b'EXPIRE', b'user:1', b'100'],
    [b'UNLINK', b'user:1'],
], ids=lambda w: w[0].decode())
def test_writes_invalidate(erb, write):
    f = Flow(erb).handshake()
    g = Flow(erb, cport=40001, c_isn=5000, s_isn=7000).handshake()
    rep = fill(f, b'user:1', SMALL)
    assert_hit(erb, f, b'user:1', rep)
    rc, _unused = g.send(resp(*write))
    assert rc == XDP_PASS
    assert entry_types(erb) == {}
    g.reply(b':1\r\n' if write[0] != b'HMSET' else b'+OK\r\n')
    assert_miss(f, b'user:1')


def test_get_never_sees_hash_and_hgetall_never_sees_string(erb):
    f = Flow(erb).handshake()
    fill(f, b'h', SMALL)
    rc, _unused = f.send(resp(b'GET', b'h'))
    assert rc == XDP_PASS
    f.reply(b'-WRONGTYPE Operation against a key holding the wrong kind of value\r\n')
    f.set(b's', b'value')
    assert entry_types(erb)[b's'] == (L.ERB_TYPE_STRING, b'value')
    assert_miss(f, b's')
    rc, out = f.get(b's')
    assert rc == XDP_TX and tcp_payload(out) == bulk(b'value')


def test_reply_split_over_two_segments_not_cached(erb):
    f = Flow(erb).handshake()
    rep = hash_reply(SMALL)
    rc, _unused = f.send(resp(b'HGETALL', b'k'))
    assert rc == XDP_PASS
    f.reply(rep[:10])
    f.reply(rep[10:])
    assert erb.stats()['fill'] == 0
    assert entry_types(erb) == {}
    fill(f, b'k', SMALL)
    assert entry_types(erb) == {b'k': (L.ERB_TYPE_HASH, rep)}


def test_pipelined_replies_in_one_skb(erb):
    """GET miss and HGETALL in one segment, both replies in one skb: the
    stored bytes are exactly the HGETALL reply."""
    f = Flow(erb).handshake()
    rep = hash_reply(SMALL)
    rc, _unused = f.send(resp(b'GET', b'x') + resp(b'HGETALL', b'k'))
    assert rc == XDP_PASS
    f.reply(b'$3\r\nabc\r\n' + rep + b'')
    assert entry_types(erb) == {b'k': (L.ERB_TYPE_HASH_UNVERIFIED, rep)}
    verify_hash(erb, b'k')
    assert_hit(erb, f, b'k', rep)


def test_reply_after_bytes_of_an_earlier_skb(erb):
    """The previous reply ends in this skb, the HGETALL reply follows whole."""
    f = Flow(erb).handshake()
    rep = hash_reply(SMALL)
    rc, _unused = f.send(resp(b'GET', b'x') + resp(b'HGETALL', b'k'))
    assert rc == XDP_PASS
    f.reply(b'$10\r\n01234')
    f.reply(b'56789\r\n' + rep)
    assert entry_types(erb) == {b'k': (L.ERB_TYPE_HASH_UNVERIFIED, rep)}


UNKNOWN = (resp(b'HELLO', b'3') + resp(b'AUTH', b'pw'), b'%1\r\n+server\r\n+redis\r\n+OK\r\n')


def map_reply(fields):
    """Redis's RESP3 reply to HGETALL: a map of the same bulks."""
    return b'%%%d\r\n' % len(fields) + hash_reply(fields).split(b'\r\n', 1)[1]


@pytest.mark.parametrize('pairs', [1, 3, 5, 10, 50], ids=lambda n: '%d-pairs' % n)
def test_resp3_map_fills_in_resp2_form_and_each_flow_gets_its_own(erb, pairs):
    # headers "%1".."%50" against "*2".."*100": as long, one shorter, one digit each way
    fields = ycsb_fields(pairs, size=8 if pairs < 50 else 1)
    f = Flow(erb).handshake()
    f.command(*HELLO3)
    assert erb.flow(f).flags & L.ERB_FLOW_RESP3
    rc, _unused = f.send(resp(b'HGETALL', b'k'))
    assert rc == XDP_PASS
    f.reply(map_reply(fields))
    assert entry_types(erb) == {b'k': (L.ERB_TYPE_HASH_UNVERIFIED, hash_reply(fields))}
    verify_hash(erb, b'k')
    assert_hit(erb, f, b'k', map_reply(fields))
    g = Flow(erb, cport=40001, c_isn=5000, s_isn=7000).handshake()
    assert_hit(erb, g, b'k', hash_reply(fields))
    h = Flow(erb, cport=40002, c_isn=9000, s_isn=11000).handshake()
    h.command(*HELLO2)
    assert_hit(erb, h, b'k', hash_reply(fields))


def test_resp2_fill_answered_as_a_map_to_a_resp3_flow(erb):
    g = Flow(erb, cport=40001, c_isn=5000, s_isn=7000).handshake()
    fill(g, b'k', SMALL)
    f = Flow(erb).handshake()
    f.command(*HELLO3)
    assert_hit(erb, f, b'k', map_reply(SMALL))
    # and back to RESP2 on the same flow
    f.command(*HELLO2)
    assert_hit(erb, f, b'k', hash_reply(SMALL))


FAILED = (resp(b'HELLO', b'4'), b'-NOPROTO sorry\r\n')


@pytest.mark.parametrize('hello', [[UNKNOWN], [HELLO3, FAILED], [FAILED]],
                         ids=['hello-then-auth', 'hello3-then-failed', 'failed'])
def test_flow_of_unknown_protocol_fills_but_is_never_answered(erb, hello):
    f = Flow(erb).handshake()
    for cmd, reply in hello:
        f.command(cmd, reply)
    assert erb.flow(f).flags & L.ERB_FLOW_HELLO
    assert not erb.flow(f).flags & (L.ERB_FLOW_RESP2 | L.ERB_FLOW_RESP3)
    rc, _unused = f.send(resp(b'HGETALL', b'k'))
    assert rc == XDP_PASS
    f.reply(map_reply(SMALL))
    verify_hash(erb, b'k')
    assert entry_types(erb) == {b'k': (L.ERB_TYPE_HASH, hash_reply(SMALL))}
    rc, _unused = f.send(resp(b'HGETALL', b'k'))
    assert rc == XDP_PASS, 'a hash answered to a flow that may get an array or a map'
    f.reply(map_reply(SMALL))
    # GET stays answerable on it (same bytes in RESP2 and RESP3)
    f.set(b's', b'v')
    rc, _unused = f.get(b's')
    assert rc == XDP_TX


def test_map_over_the_value_limit_once_converted_not_cached(erb):
    # 5 pairs: "%5" becomes "*10", one byte longer; the map itself fits max_value_len exactly
    lim = DEFAULT_CONFIG['max_value_len']
    for pad in range(lim, 0, -1):
        fields = [(b'f%d' % i, b'') for i in range(4)] + [(b'f4', b'x' * pad)]
        rep = map_reply(fields)
        if len(rep) == lim:
            break
    assert len(rep) == lim and len(hash_reply(fields)) == lim + 1
    f = Flow(erb).handshake()
    f.command(*HELLO3)
    rc, _unused = f.send(resp(b'HGETALL', b'k'))
    assert rc == XDP_PASS
    f.reply(rep)
    assert entry_types(erb) == {}
    f.command(resp(b'PING'), b'+PONG\r\n')


def test_concurrent_write_cancels_fill(erb):
    a = Flow(erb).handshake()
    b = Flow(erb, cport=40001, c_isn=5000, s_isn=7000).handshake()
    rc, _unused = a.send(resp(b'HGETALL', b'k'))
    assert rc == XDP_PASS
    rc, _unused = b.send(resp(b'HSET', b'k', b'f1', b'new'))
    assert rc == XDP_PASS
    b.reply(b':0\r\n')
    a.reply(hash_reply(SMALL))
    st = erb.stats()
    assert (st['fill'], st['fill_skipped']) == (0, 1)
    assert entry_types(erb) == {}


def test_write_in_flight_at_capture_never_fills(erb):
    a = Flow(erb).handshake()
    b = Flow(erb, cport=40001, c_isn=5000, s_isn=7000).handshake()
    b.send(resp(b'HSET', b'k', b'f1', b'new'))
    assert erb.inflight(bucket_of(b'k')) == 1
    a.send(resp(b'HGETALL', b'k'))
    assert erb.flow(a).fill_idx == 0
    b.reply(b':1\r\n')
    a.reply(hash_reply(SMALL))
    assert erb.stats()['fill'] == 0
    assert entry_types(erb) == {}


def test_write_after_hgetall_in_same_segment_never_fills(erb):
    f = Flow(erb).handshake()
    f.send(resp(b'HGETALL', b'k') + resp(b'HSET', b'k', b'f1', b'x'))
    f.reply(hash_reply(SMALL) + b':1\r\n')
    assert erb.stats()['fill'] == 0
    assert entry_types(erb) == {}


def test_not_filled_in_multi_or_db_nonzero(erb):
    f = Flow(erb).handshake()
    f.command(resp(b'MULTI'), b'+OK\r\n')
    f.command(resp(b'HGETALL', b'k'), b'+QUEUED\r\n')
    f.command(resp(b'EXEC'), b'*1\r\n' + hash_reply(SMALL))
    g = Flow(erb, cport=40001, c_isn=5000, s_isn=7000).handshake()
    g.command(resp(b'SELECT', b'1'), b'+OK\r\n')
    g.command(resp(b'HGETALL', b'k'), hash_reply(SMALL))
    assert erb.stats()['fill'] == 0
    assert entry_types(erb) == {}


def test_hgetall_hit_with_set_fast_path(erb_fast):
    f = Flow(erb_fast).handshake()
    rep = fill(f, b'k', SMALL)
    assert_hit(erb_fast, f, b'k', rep)
    # a fast SET of the key replaces it with a string entry
    rc, _unused = f.send(resp(b'SET', b'k', b'v'))
    assert rc == XDP_TX
    assert entry_types(erb_fast)[b'k'] == (L.ERB_TYPE_STRING, b'v')
    rc, _unused = f.send(resp(b'HGETALL', b'k'))
    assert rc != XDP_TX
