# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Property-based tests (hypothesis, bounded and derandomized for CI): any key
(any bytes, 1..128), any value (0..1024), any TCP timestamps, ISNs around the
2^32 wraparound -> the exact hit reply with valid checksums and correct
seq/ack; random payloads never produce XDP_TX except for an exact GET of a
cached key, and never break the program."""

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether

from erbtest import (M32, TC_ACT_OK, XDP_NAMES, XDP_PASS, XDP_TX, Flow, assert_checksums, bulk, resp,
                     tcp_payload, ts_option)

PROPS = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

keys = st.binary(min_size=1, max_size=128)
values = st.binary(min_size=0, max_size=1024)
u32 = st.integers(min_value=0, max_value=M32)
near_wrap = st.one_of(st.integers(min_value=M32 - 3000, max_value=M32),
                      st.integers(min_value=0, max_value=3000), u32)


@PROPS
@given(key=keys, value=values, c_isn=near_wrap, s_isn=near_wrap, tsval=u32, tsecr=u32, ts=st.booleans())
def test_any_key_value_hit(erb_config, key, value, c_isn, s_isn, tsval, tsecr, ts):
    erb = erb_config()
    f = Flow(erb, c_isn=c_isn, s_isn=s_isn, ts=ts).handshake()
    f.set(key, value)
    assert erb.stats()['fill'] == 1
    req = resp(b'GET', key)
    opts = [('NOP', None), ('NOP', None), ('Timestamp', (tsval, tsecr))] if ts else []
    req_seq, srv_next = f.c_seq, f.c_ack
    rc, out = f.send(req, options=opts)
    assert rc == XDP_TX, XDP_NAMES.get(rc, rc)
    assert tcp_payload(out) == bulk(value)
    t = Ether(out)[TCP]
    assert t.seq == srv_next
    assert t.ack == (req_seq + len(req)) & M32
    assert ts_option(out) == ((tsecr, tsval) if ts else None)
    assert_checksums(out)
    # the next passed segment and the server's answer are corrected across the wrap
    cseq, cack = f.c_seq, f.c_ack
    rc, out = f.send(resp('PING'))
    assert rc == XDP_PASS
    t = Ether(out)[TCP]
    assert (t.seq, t.ack) == ((cseq - len(req)) & M32, (cack - len(bulk(value))) & M32)
    assert_checksums(out)
    sseq, sack = f.s_seq, f.s_ack
    rc, out = f.reply(b'+PONG\r\n')
    t = Ether(out)[TCP]
    assert (t.seq, t.ack) == ((sseq + len(bulk(value))) & M32, (sack + len(req)) & M32)
    assert_checksums(out)


WRITE_CMDS = [
    lambda k: ('DEL', k), lambda k: ('UNLINK', b'x', k), lambda k: ('INCR', k), lambda k: ('APPEND', k, b'z'),
    lambda k: ('MSET', b'a', b'1', k, b'2'), lambda k: ('RENAME', k, b'x'), lambda k: ('RENAME', b'x', k),
    lambda k: ('GETDEL', k), lambda k: ('SET', k, b'v', b'PX', b'5'), lambda k: ('EXPIRE', k, b'1'),
]


@PROPS
@given(key=keys, value=values, which=st.integers(min_value=0, max_value=len(WRITE_CMDS) - 1))
def test_any_key_write_invalidates(erb_config, key, value, which):
    erb = erb_config()
    a = Flow(erb, cport=50000).handshake()
    b = Flow(erb, cport=50001, c_isn=9, s_isn=99).handshake()
    a.set(key, value)
    rc, _unused = a.send(resp(*WRITE_CMDS[which](key)))
    assert rc == XDP_PASS
    rc, out = b.send(resp(b'GET', key))
    assert rc == XDP_PASS, 'stale %r answered after %r' % (tcp_payload(out)[:40], WRITE_CMDS[which](key)[0])
    assert erb.stats()['hit'] == 0


GET_RE = re.compile(br'\A\*2\r\n\$3\r\n[gG][eE][tT]\r\n\$([1-9][0-9]*)\r\n(.*)\r\n\Z', re.S)


def redis_get_key(payload):
    """The key when payload is exactly one GET as Redis parses it, else None."""
    m = GET_RE.match(payload)
    if not m or int(m.group(1)) != len(m.group(2)):
        return None
    return m.group(2)


CACHED = {b'k': b'v', b'key2': b'value two'}


def cached_flow(erb):
    f = Flow(erb).handshake()
    for k, v in CACHED.items():
        f.set(k, v)
    return f


def check_random_payload(erb, f, payload):
    rc, out = f.send(payload)
    assert rc in (XDP_PASS, XDP_TX, 1), rc
    key = redis_get_key(payload)
    if rc == XDP_TX:
        assert key in CACHED, 'XDP_TX for a payload that is not one GET of a cached key: %r' % payload
        assert tcp_payload(out) == bulk(CACHED[key])
        assert_checksums(out)
    else:
        assert out == f.last[2]


@PROPS
@given(payload=st.binary(min_size=1, max_size=1500))
def test_random_payload_on_established_flow(erb_config, payload):
    erb = erb_config()
    f = cached_flow(erb)
    check_random_payload(erb, f, payload)
    # the program keeps working: a server segment, then a fresh flow still hits
    rc, _unused = erb.tc(f.server_frame(b'+OK\r\n'))
    assert rc == TC_ACT_OK
    g = Flow(erb, cport=51000).handshake()
    rc, out = g.get(b'k')
    assert rc == XDP_TX or erb.stats()['flush'] > 0


GET_PARTS = [b'*2\r\n$3\r\nGET\r\n$1\r\nk\r\n', b'*2\r\n$3\r\nGET\r\n$4\r\nkey2\r\n']


@st.composite
def mutated_get(draw):
    data = bytearray(draw(st.sampled_from(GET_PARTS)))
    for _unused in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(['flip', 'insert', 'delete', 'digit']))
        i = draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))
        if op == 'flip' and data:
            data[i] = draw(st.integers(min_value=0, max_value=255))
        elif op == 'insert':
            data.insert(i, draw(st.sampled_from(list(b'0123456789\r\n$*-+ kKgGeEtT\x00'))))
        elif op == 'delete' and len(data) > 1:
            del data[i]
        elif op == 'digit':
            data[i] = draw(st.sampled_from(list(b'0123456789')))
    return bytes(data)


@PROPS
@given(payload=mutated_get())
def test_mutated_get_answered_only_when_exact(erb_config, payload):
    erb = erb_config()
    f = cached_flow(erb)
    check_random_payload(erb, f, payload)


@PROPS
@given(payload=st.binary(min_size=1, max_size=600), seq=u32, ack=u32,
       flags=st.sampled_from(['PA', 'A', 'P', 'FA', 'RA', 'S', 'SA', 'U', '']))
def test_random_segment_without_syn_never_answered(erb_config, payload, seq, ack, flags):
    erb = erb_config()
    cached_flow(erb)
    f = Flow(erb, cport=52000)
    for p in (payload, resp('GET', 'k')):
        frame = f.client_frame(p, seq=seq, ack=ack, flags=flags)
        rc, out = erb.xdp(frame)
        assert rc != XDP_TX, 'answered on a flow never seen opening'
        seq = (seq + len(p)) & M32
