# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
""""When XDP may answer": every rule that forbids an answer leaves the GET
frame untouched (XDP_PASS) and counts the reason (a gap before the segment:
test_faults.py). Each test first shows the same GET would be a hit, so a pass here
can only come from the rule under test."""

import pytest

from erbtest import M32, XDP_NAMES, XDP_PASS, XDP_TX, Flow, bulk, resp, tcp_payload

GET_K = resp('GET', 'k')


def filled(erb, **kw):
    f = Flow(erb, **kw).handshake()
    f.set(b'k', b'v')
    return f


def assert_hit(f):
    rc, out = f.send(GET_K)
    assert rc == XDP_TX, 'expected a hit, got %s' % XDP_NAMES.get(rc, rc)
    assert tcp_payload(out) == bulk(b'v')


def assert_passed(f, counter, frame=None, **kw):
    """The GET (or frame) is passed untouched and counted as counter."""
    erb = f.erb
    before = erb.stats()
    if frame is None:
        rc, out = f.send(GET_K, **kw)
        frame = f.last[2]
    else:
        rc, out = erb.xdp(frame)
    assert rc == XDP_PASS, '%s, expected XDP_PASS' % XDP_NAMES.get(rc, rc)
    assert out == frame, 'passed frame modified'
    after = erb.stats()
    assert after['hit'] == before['hit']
    assert after[counter] == before[counter] + 1, '%s not counted: %r' % (counter, after)
    return after


def test_sanity_hit_baseline(erb):
    assert_hit(filled(erb))


def test_outstanding_reply_blocks_answers(erb):
    f = filled(erb)
    rc, _unused = f.send(resp('PING'))        # Redis owes a reply
    assert rc == XDP_PASS
    assert_passed(f, 'pass_outstanding')
    f.reply(b'+PONG\r\n')               # reply to PING
    f.reply(bulk(b'v'))                 # reply to the passed GET
    assert_hit(f)


def test_reply_split_over_segments_is_outstanding_until_complete(erb):
    f = filled(erb)
    f.send(resp('GET', 'other'))
    f.reply(b'$10\r\n01234')            # half a reply
    assert_passed(f, 'pass_outstanding')
    f.reply(b'56789\r\n')
    f.reply(bulk(b'v'))
    assert_hit(f)


@pytest.mark.parametrize('delta', [-1, 1, -7, 1 << 31])
def test_client_ack_not_server_next(erb, delta):
    f = filled(erb)
    assert_passed(f, 'pass_unacked', ack=(f.c_ack + delta) & M32)


def test_get_without_ack_flag(erb):
    f = filled(erb)
    assert_passed(f, 'pass_unacked', flags='P')


def test_unacked_server_data(erb):
    """A pipelining client sends GET before it received (acked) PING's reply."""
    f = filled(erb)
    f.send(resp('PING'))
    old_ack = f.c_ack
    f.reply(b'+PONG\r\n')               # on its way to the client
    assert_passed(f, 'pass_unacked', ack=old_ack)


def test_old_segment_is_not_answered(erb):
    f = filled(erb)
    rc, _unused = f.send(resp('PING'))
    f.reply(b'+PONG\r\n')
    frame = f.client_frame(GET_K, seq=f.c_seq - 14)
    rc, out = erb.xdp(frame)
    assert rc != XDP_TX
    assert erb.stats()['pass_out_of_order'] == 1


def test_multi_until_exec_reply(erb):
    f = filled(erb)
    f.command(resp('MULTI'), b'+OK\r\n')
    assert_passed(f, 'pass_state')
    f.reply(b'+QUEUED\r\n')
    rc, _unused = f.send(resp('EXEC'))
    assert rc == XDP_PASS
    assert_passed(f, 'pass_outstanding')     # EXEC's reply not seen yet
    f.reply(b'*1\r\n$1\r\nv\r\n')             # EXEC's reply
    f.reply(bulk(b'v'))                      # the GET passed above
    assert_hit(f)


def test_discard_leaves_multi(erb):
    f = filled(erb)
    f.command(resp('MULTI'), b'+OK\r\n')
    f.command(resp('DISCARD'), b'+OK\r\n')
    assert_hit(f)


def test_select_nonzero_db(erb):
    f = filled(erb)
    f.command(resp('SELECT', '1'), b'+OK\r\n')
    assert_passed(f, 'pass_state')
    f.reply(b'$-1\r\n')
    f.command(resp('SELECT', '0'), b'+OK\r\n')
    assert_hit(f)


@pytest.mark.parametrize('db', ['01', '10', 'x', '-0', ''])
def test_select_other_spellings_are_not_db0(erb, db):
    """Only SELECT 0 brings the flow back to db 0: a SELECT Redis rejects
    ("", "x", "-0") leaves the client in db 5, and any other number selects another db."""
    f = filled(erb)
    f.command(resp('SELECT', '5'), b'+OK\r\n')
    f.command(resp('SELECT', db), b'-ERR invalid DB index\r\n' if db in ('x', '-0', '') else b'+OK\r\n')
    assert_passed(f, 'pass_state')


SUBSCRIBES = [('SUBSCRIBE', 'ch'), ('PSUBSCRIBE', 'c*'), ('SSUBSCRIBE', 'ch'), ('MONITOR',)]


@pytest.mark.parametrize('cmd', SUBSCRIBES, ids=[c[0] for c in SUBSCRIBES])
def test_subscribed_flow_is_never_answered(erb, cmd):
    f = filled(erb)
    f.command(resp(*cmd), b'*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n')
    rc, out = f.send(GET_K)
    assert (rc, out) == (XDP_PASS, f.last[2])
    assert erb.stats()['hit'] == 0


def test_pass_on_subscribed_flow_is_counted(erb):
    """erb.h: PASS_STATE counts "subscribed", PASS_UNTRACKED untracked flows.
    SUBSCRIBE makes the flow untracked, and erb_xdp skips try_answer() for
    untracked flows, so such a pass is counted nowhere."""
    f = filled(erb)
    f.command(resp('SUBSCRIBE', 'ch'), b'*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n')
    before = erb.stats()
    rc, out = f.send(GET_K)
    assert rc == XDP_PASS
    st = erb.stats()
    assert st['pass_state'] + st['pass_untracked'] == before['pass_state'] + before['pass_untracked'] + 1, \
        'GET on a subscribed (untracked) flow passed without any pass_* counter'


def test_get_and_a_partial_get_in_one_segment(erb):
    f = filled(erb)
    assert_passed(f, 'pass_not_single', frame=f.client_frame(GET_K + GET_K[:-3]))


def test_get_split_over_two_segments(erb):
    f = filled(erb)
    for part in (GET_K[:10], GET_K[10:]):
        rc, out = f.send(part)
        assert (rc, out) == (XDP_PASS, f.last[2])
    assert erb.stats()['hit'] == 0
    fl = erb.flow(f)
    assert fl.cmds == fl.replies + 1      # the split GET is one command Redis owes
    f.reply(bulk(b'v'))
    assert_hit(f)


def test_whole_get_after_an_incomplete_command_is_not_answered(erb):
    f = filled(erb)
    rc, _unused = f.send(b'*3\r\n$3\r\nSET\r\n$1\r\nk\r\n')    # SET without its value yet
    assert rc == XDP_PASS
    rc, out = f.send(GET_K)
    assert (rc, out) == (XDP_PASS, f.last[2])
    assert erb.stats()['hit'] == 0


def test_mid_stream_flow_without_syn(erb):
    filled(erb)   # k is cached (by another flow)
    f = Flow(erb, cport=42000)
    f.c_seq, f.c_ack, f.s_seq, f.s_ack = 12345, 999, 999, 12345
    assert_passed(f, 'pass_no_flow')
    assert erb.stats()['flow_adopted'] == 1
    f.reply(bulk(b'v'))
    rc, out = f.send(GET_K)
    assert (rc, out) == (XDP_PASS, f.last[2])
    assert erb.stats()['hit'] == 0


def test_pass_on_adopted_flow_is_counted_untracked(erb):
    """The second GET of a mid-stream (adopted, untracked) flow is passed and
    must be counted as pass_untracked (erb.h); erb_xdp never calls try_answer()
    on untracked flows, so pass_untracked is never incremented anywhere."""
    filled(erb)
    f = Flow(erb, cport=42000)
    f.c_seq, f.c_ack, f.s_seq, f.s_ack = 12345, 999, 999, 12345
    f.send(GET_K)
    f.reply(bulk(b'v'))
    assert_passed(f, 'pass_untracked')


def test_syn_ack_not_seen(erb):
    filled(erb, cport=43000)
    f = Flow(erb, cport=43001)
    syn = f.client_frame(flags='S', options=[])
    assert erb.xdp(syn) == (XDP_PASS, syn)
    f.c_seq = f.s_ack = f.c_isn + 1
    f.s_seq = f.c_ack = f.s_isn + 1
    assert_passed(f, 'pass_state')      # no SYN-ACK at TC: not established


def test_require_auth_until_auth_ok(erb_config):
    erb = erb_config(require_auth=True)
    a = Flow(erb, cport=44000).handshake()
    a.command(resp('AUTH', 'secret'), b'+OK\r\n')
    a.set(b'k', b'v')
    assert erb.stats()['fill'] == 1
    assert_hit(a)
    b = Flow(erb, cport=44001).handshake()
    assert_passed(b, 'pass_state')
    b.reply(b'-NOAUTH Authentication required.\r\n')
    b.command(resp('AUTH', 'wrong'), b'-WRONGPASS invalid username-password pair\r\n')
    assert_passed(b, 'pass_state')
    b.reply(b'-NOAUTH Authentication required.\r\n')
    rc, _unused = b.send(resp('AUTH', 'secret'))
    assert_passed(b, 'pass_state')           # AUTH's reply not seen yet: not authenticated
    b.reply(b'+OK\r\n')
    b.reply(b'-NOAUTH Authentication required.\r\n')
    assert_hit(b)


def test_require_auth_hello_with_auth(erb_config):
    erb = erb_config(require_auth=True)
    f = Flow(erb).handshake()
    f.command(resp('HELLO', '3', 'AUTH', 'default', 'secret'),
              b'%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n')
    f.set(b'k', b'v')
    assert_hit(f)


def test_drain_stops_answering(erb):
    f = filled(erb)
    erb.set_drain(True)
    assert_passed(f, 'pass_disabled')
    f.reply(bulk(b'v'))
    erb.set_drain(False)
    assert_hit(f)


def test_answer_disabled_by_config(erb_config):
    erb = erb_config(answer=False)
    f = filled(erb)
    assert_passed(f, 'pass_disabled')


# ------------------------------------------------------ requests Redis rejects

def test_get_with_fin_is_not_answered(erb):
    """GET and FIN in one segment: an XDP_TX reply would swallow the FIN (the
    server never sees it; the client retransmits GET+FIN and is answered again
    forever)."""
    f = filled(erb)
    assert_passed(f, 'cmds_passed', flags='FPA')


def test_get_with_rst_is_not_answered(erb):
    """A RST must reach the server's stack; answering it instead swallows it."""
    f = filled(erb)
    rc, out = f.send(GET_K, flags='RA')
    assert (rc, out) == (XDP_PASS, f.last[2]), XDP_NAMES.get(rc, rc)


@pytest.mark.parametrize('req', [
    b'*2\r\n$3\r\nGET\r\n$01\r\nk\r\n',      # Redis: "Protocol error: invalid bulk length"
    b'*2\r\n$03\r\nGET\r\n$1\r\nk\r\n',
    b'*02\r\n$3\r\nGET\r\n$1\r\nk\r\n',
], ids=['key-len-leading-zero', 'cmd-len-leading-zero', 'argc-leading-zero'])
def test_get_redis_would_reject_is_not_answered(erb, req):
    """Redis (string2ll) rejects lengths with leading zeros and closes the
    connection; XDP must not answer such a request with a value."""
    f = filled(erb)
    rc, out = f.send(req)
    assert rc == XDP_PASS, '%s: answered a request Redis rejects' % XDP_NAMES.get(rc, rc)
    assert out == f.last[2]
