# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ordered mode: while erb_redis holds its lease (erb_global.ordered_until_ns, a
CLOCK_MONOTONIC deadline it renews every few milliseconds), Redis applies every committed
record before it runs a command it reads (files/rmod's command filter). So erb_xdp holds no
segment for a pending write (the hold rule of test_hold.py: a command on a pending key, or
one whose keys cannot be known) and commits the fast SETs' records without waking the ring's
consumer (each wakeup an irq_work self-IPI). A lease that ran out (erb_redis stopped without
giving it up) brings both back.

Whether a commit woke the consumer is seen as the consumer sees it: an epoll on the ring's
fd, registered while the ring is empty, becomes readable only through a wakeup."""

import select
import time

import pytest

from erbtest import XDP_NAMES, XDP_PASS, XDP_TX, Flow, resp, tcp_payload
from test_hold import HELD, K, UNKNOWN_KEYS, keys_unlocked, nonzero, other_flow, pending_write, run_setup, send_held

OK = b'+OK\r\n'


def lease(erb, seconds):
    """erb_redis's lease, valid for seconds from now (negative: ran out that long ago)."""
    erb.set_ordered_until(max(0, time.monotonic_ns() + int(seconds * 1e9)))


def passed(erb, f, payload, ncmds=None):
    """payload (ncmds commands, one per '*' unless given) passes at once: nothing held, nothing parked."""
    before = erb.stats()
    rc, out = f.send(payload)
    assert rc == XDP_PASS, '%r with a write pending and the lease held: %s, expected XDP_PASS %s' % (
        payload[:50], XDP_NAMES.get(rc, rc), nonzero(erb.stats()))
    assert out == f.last[2]
    st = erb.stats()
    assert st['hold'] == before['hold'] and st['parked'] == before['parked'] == 0, nonzero(st)
    assert st['cmds_passed'] == before['cmds_passed'] + (payload.count(b'*') if ncmds is None else ncmds)


@pytest.mark.parametrize('case', sorted(HELD))
def test_command_on_pending_key_passed_while_the_lease_holds(erb_fast, case):
    erb = erb_fast
    setup, payload, reply = HELD[case]
    pending_write(erb)
    lease(erb, 30)
    b = other_flow(erb)
    run_setup(b, setup)
    passed(erb, b, payload)
    keys_unlocked(erb, K, b'a', b'x')
    b.reply(reply)
    fl = erb.flow(b)
    assert fl.cmds == fl.replies
    assert erb.glob().applied_seq == 0        # passed before the write was applied: Redis orders it


@pytest.mark.parametrize('case', sorted(UNKNOWN_KEYS))
def test_unknown_keys_passed_while_the_lease_holds(erb_fast, case):
    erb = erb_fast
    payload, reply = UNKNOWN_KEYS[case]
    pending_write(erb)
    lease(erb, 30)
    b = other_flow(erb)
    passed(erb, b, payload, ncmds=1)
    b.reply(reply)


@pytest.mark.parametrize('ago', [0.001, 5], ids=['just-ran-out', 'long-ago'])
def test_a_lease_that_ran_out_holds_again(erb_fast, ago):
    """erb_redis gone without giving its lease up: the hold rule is back as soon as it runs out."""
    erb = erb_fast
    pending_write(erb)
    lease(erb, -ago)
    b = other_flow(erb)
    frame = send_held(erb, b, resp('INCR', K))
    # renewed: the client's retransmission passes
    lease(erb, 30)
    rc, out = erb.xdp(frame)
    assert rc == XDP_PASS and out == frame, nonzero(erb.stats())


def test_a_lease_given_up_holds_again(erb_fast):
    erb = erb_fast
    pending_write(erb)
    lease(erb, 30)
    erb.set_ordered_until(0)
    send_held(erb, other_flow(erb), resp('DEL', K))


def woken(erb, action):
    """(action()'s result, whether it woke a waiter of erb_events)."""
    ring = erb.ring()
    ring.skip_all()
    ep = select.epoll()
    try:
        ep.register(erb.map_fd('erb_events'), select.EPOLLIN)
        assert not ep.poll(0), 'the ring is readable before anything was committed'
        out = action()
        assert ring.pending_bytes(), 'nothing committed'
        return out, bool(ep.poll(0))
    finally:
        ep.close()


@pytest.mark.parametrize('n', [1, 3], ids=['set', 'pipeline-of-3'])
def test_records_wake_the_consumer_only_without_the_lease(erb_fast_config, n):
    erb = erb_fast_config(ring_bytes=1 << 16)
    f = Flow(erb).handshake()
    req = [b''.join(resp(b'SET', b'k%d:%d' % (i, j), b'v%d' % j) for j in range(n)) for i in range(3)]

    def answered(payload):
        rc, out = f.send(payload)
        assert rc == XDP_TX, (XDP_NAMES.get(rc, rc), nonzero(erb.stats()))
        assert tcp_payload(out) == OK * n

    assert woken(erb, lambda: answered(req[0]))[1], 'no lease: a record did not wake the consumer'
    lease(erb, 30)
    assert not woken(erb, lambda: answered(req[1]))[1], 'a record woke the consumer under the lease'
    assert [r.seq for r in erb.ring().consume()] == list(range(n + 1, 2 * n + 1))
    lease(erb, -0.001)
    assert woken(erb, lambda: answered(req[2]))[1], 'a record did not wake the consumer once the lease ran out'
    assert erb.glob().write_seq == 3 * n
