# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""MGET answered in XDP (files/bpf/erb_pipe.h): a client segment that is exactly one MGET of
1 to 16 keys, every key cached (a string, or absent), is answered with Redis's reply, an
array of the bulk strings in order with a nil for a key cached as absent ("$-1" in RESP2,
"_" in RESP3). A miss, more keys, more commands after it, a flow in MULTI or owed a reply,
a reply over the frame are passed to Redis untouched; an answered MGET's retransmission is
answered again from its copy, as a GET's is."""

import pytest
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether

from erbtest import HELLO3, XDP_DROP, XDP_NAMES, XDP_PASS, XDP_TX, Flow, assert_checksums, bulk, resp, tcp_payload
from test_pipeline import check_answer, filled, nonzero


def name(rc):
    return XDP_NAMES.get(rc, rc)


def array(items):
    return b'*%d\r\n' % len(items) + b''.join(items)


def passed(erb, f, payload, counter):
    before = erb.stats()
    rc, out = f.send(payload)
    assert rc == XDP_PASS, '%r: %s, expected XDP_PASS' % (payload[:60], name(rc))
    assert tcp_payload(out) == payload, 'passed payload modified'
    st = erb.stats()
    assert st[counter] == before[counter] + 1, '%s not counted: %s' % (counter, nonzero(st))
    assert st['mget'] == before['mget']


@pytest.mark.parametrize('n', [1, 2, 9, 16])
def test_mget_of_cached_keys_answered_in_order(erb, n):
    keys = [b'key:%d' % i for i in range(n)]
    f, values = filled(erb, keys)
    order = list(reversed(keys))
    server_seq = f.c_ack
    rc, out = f.send(resp(b'MGET', *order))
    assert rc == XDP_TX, '%s %s' % (name(rc), nonzero(erb.stats()))
    check_answer(f.last[2], out, array([bulk(values[k]) for k in order]), server_seq)
    st = erb.stats()
    assert (st['mget'], st['hit'], st['miss'], st['pipelined']) == (1, n, 0, 0), nonzero(st)
    # the mapping carries the answer: a passed command lands where Redis expects it
    f.command(resp(b'PING'), b'+PONG\r\n')


def test_lowercase_and_repeated_keys(erb):
    f, values = filled(erb, [b'a', b'b'])
    rc, out = f.send(resp(b'mget', b'a', b'b', b'a'))
    assert (rc, tcp_payload(out)) == (XDP_TX, array([bulk(values[b'a']), bulk(values[b'b']), bulk(values[b'a'])]))


def test_keys_cached_as_absent_are_nils_in_the_flows_protocol(erb):
    f, values = filled(erb, [b'a'])
    rc, _unused = f.send(resp(b'GET', b'gone'))
    assert rc == XDP_PASS
    f.reply(b'$-1\r\n')
    rc, out = f.send(resp(b'MGET', b'gone', b'a', b'gone'))
    assert (rc, tcp_payload(out)) == (XDP_TX, array([b'$-1\r\n', bulk(values[b'a']), b'$-1\r\n']))
    assert erb.stats()['hit_nil'] == 2
    g = Flow(erb, cport=40001, c_isn=5000, s_isn=7000).handshake()
    g.command(*HELLO3)
    rc, out = g.send(resp(b'MGET', b'a', b'gone'))
    assert (rc, tcp_payload(out)) == (XDP_TX, array([bulk(values[b'a']), b'_\r\n']))
    # a flow whose HELLO reply ERB did not see: a nil cannot be answered, a value can
    u = Flow(erb, cport=40002, c_isn=9000, s_isn=11000).handshake()
    u.command(resp(b'HELLO', b'3') + resp(b'AUTH', b'pw'), b'%1\r\n+server\r\n+redis\r\n+OK\r\n')
    passed(erb, u, resp(b'MGET', b'a', b'gone'), 'miss')
    u.reply(b'*2\r\n' + bulk(values[b'a']) + b'_\r\n')
    rc, _unused = u.send(resp(b'MGET', b'a'))
    assert rc == XDP_TX


def test_a_miss_passes_the_whole_mget(erb):
    f, values = filled(erb, [b'a', b'b'])
    passed(erb, f, resp(b'MGET', b'a', b'nope', b'b'), 'miss')
    f.reply(array([bulk(values[b'a']), b'$-1\r\n', bulk(values[b'b'])]))
    # an MGET's reply fills nothing (only a GET's does)
    rc, _unused = f.send(resp(b'MGET', b'nope'))
    assert rc == XDP_PASS
    f.reply(b'*1\r\n$-1\r\n')


@pytest.mark.parametrize('payload', [
    resp(b'MGET', *[b'k%d' % i for i in range(17)]),
    resp(b'MGET', b'a') + resp(b'GET', b'a'),
    resp(b'MGET', b'a', b'b')[:-3],
    b'*3\r\n$4\r\nMGET\r\n$1\r\na\r\n',
    b'*3\r\n$4\r\nMSET\r\n$1\r\na\r\n$1\r\nb\r\n',
    b'*1\r\n$4\r\nMGET\r\n',
    b'*03\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\nb\r\n',
], ids=['17-keys', 'then-get', 'partial', 'short', 'mset', 'no-key', 'leading-zero'])
def test_not_one_whole_mget_passed(erb, payload):
    f, _unused = filled(erb, [b'a', b'b'] + [b'k%d' % i for i in range(17)])
    rc, out = f.send(payload)
    assert rc == XDP_PASS, name(rc)
    assert tcp_payload(out) == payload
    assert erb.stats()['mget'] == 0


def test_owed_reply_or_multi_passed(erb):
    f, values = filled(erb, [b'a', b'b'])
    rc, _unused = f.send(resp(b'PING'))
    assert rc == XDP_PASS
    passed(erb, f, resp(b'MGET', b'a', b'b'), 'pass_outstanding')
    f.reply(b'+PONG\r\n' + array([bulk(values[b'a']), bulk(values[b'b'])]))
    f.command(resp(b'MULTI'), b'+OK\r\n')
    passed(erb, f, resp(b'MGET', b'a', b'b'), 'pass_state')
    f.reply(b'+QUEUED\r\n')


def test_a_write_of_a_key_ends_its_answers(erb):
    f, values = filled(erb, [b'a', b'b'])
    assert f.send(resp(b'MGET', b'a', b'b'))[0] == XDP_TX
    f.command(resp(b'APPEND', b'b', b'x'), b':%d\r\n' % (len(values[b'b']) + 1))
    passed(erb, f, resp(b'MGET', b'a', b'b'), 'miss')
    f.reply(array([bulk(values[b'a']), bulk(values[b'b'] + b'x')]))


def test_reply_over_the_frame_passed(erb):
    f = Flow(erb).handshake()
    for k in (b'a', b'b', b'c'):
        f.set(k, k * 600)
    rc, _unused = f.send(resp(b'MGET', b'a', b'b'))
    assert rc == XDP_TX
    passed(erb, f, resp(b'MGET', b'a', b'b', b'c'), 'pass_too_big')


def test_retransmission_answered_again_from_the_copy(erb):
    f, values = filled(erb, [b'a', b'b'])
    req_seq, ack0 = f.c_seq, f.c_ack
    req = resp(b'MGET', b'b', b'a')
    rc, ans = f.send(req)
    assert rc == XDP_TX
    rc, out = erb.xdp(f.client_frame(req, seq=req_seq, ack=ack0))
    assert rc == XDP_TX, name(rc)
    assert tcp_payload(out) == tcp_payload(ans) == array([bulk(values[b'b']), bulk(values[b'a'])])
    assert Ether(out)[TCP].seq == Ether(ans)[TCP].seq
    assert_checksums(out)
    assert erb.stats()['retransmit_answer'] == 1
    # a part of it again is never passed to Redis as new bytes
    rc, _unused = erb.xdp(f.client_frame(req[8:], seq=req_seq + 8, ack=ack0))
    assert rc in (XDP_TX, XDP_DROP), name(rc)
