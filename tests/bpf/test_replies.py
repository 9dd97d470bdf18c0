# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Reply framing at TC egress: ERB counts Redis's replies to know when Redis owes a
connection nothing. Replies nested deeper than the levels it tracks (ERB_DEPTH_MAX;
COMMAND DOCS nests 12, and redis-cli sends it when it connects) are counted whole,
so the connection stays answered instead of being given up."""

import pytest

from erbtest import XDP_NAMES, XDP_PASS, XDP_TX, Flow, L, bulk, resp, tcp_payload


def enc(x):
    """RESP2/3 encoding of nested lists (arrays), dicts (maps), bytes, ints and None."""
    if isinstance(x, list):
        return b'*%d\r\n' % len(x) + b''.join(enc(e) for e in x)
    if isinstance(x, dict):
        return b'%%%d\r\n' % len(x) + b''.join(enc(k) + enc(v) for k, v in x.items())
    if isinstance(x, int):
        return b':%d\r\n' % x
    if x is None:
        return b'$-1\r\n'
    return bulk(x)


def nested(depth):
    """A reply of `depth` nested aggregates (arrays and maps in turn), with siblings,
    empty and nil elements at every level, so that a count off by one anywhere ends
    it early or late."""
    x = [b'leaf', 7, None, b'x' * 40]
    for d in range(depth - 1):
        x = {b'k': x, b'n': d} if d % 2 else [b'd%d' % d, x, *([[]] if d % 3 else [None, b'z'])]
    return x


def depth_of(x):
    if isinstance(x, list):
        return 1 + max([depth_of(e) for e in x] or [0])
    if isinstance(x, dict):
        return 1 + max([depth_of(v) for v in x.values()] or [0])
    return 0


def answered_after(erb, f):
    """The flow is tracked, Redis owes it nothing, and its next GET of a cached key is
    answered in XDP."""
    fl = erb.flow(f)
    st = erb.stats()
    assert not st['parse_error'] and not st['reply_unmatched'], st
    assert not fl.flags & L.ERB_FLOW_UNTRACKED, 'connection given up after a deep reply'
    assert fl.replies == fl.cmds, (fl.replies, fl.cmds)
    f.set(b'k', b'v')
    rc, out = f.get(b'k')
    assert rc == XDP_TX, XDP_NAMES.get(rc, rc)
    assert tcp_payload(out) == bulk(b'v')


@pytest.mark.parametrize('depth', [L.ERB_DEPTH_MAX, L.ERB_DEPTH_MAX + 1, 13, 40])
@pytest.mark.parametrize('chunk', [0, 7])
def test_reply_nested_deeper_than_the_tracked_levels_keeps_the_connection(erb, depth, chunk):
    f = Flow(erb).handshake()
    rc, _unused = f.send(resp('COMMAND', 'DOCS'))
    assert rc == XDP_PASS
    reply = enc(nested(depth))
    assert depth_of(nested(depth)) == depth
    # whole, or cut every `chunk` bytes (numbers, CRLFs and bulks split across segments)
    parts = [reply] if not chunk else [reply[i:i + chunk] for i in range(0, len(reply), chunk)]
    for p in parts:
        f.reply(p)
    answered_after(erb, f)


def test_deep_reply_and_the_next_one_in_one_segment(erb):
    f = Flow(erb).handshake()
    rc, _unused = f.send(resp('COMMAND', 'DOCS') + resp('PING'))
    assert rc == XDP_PASS
    f.reply(enc(nested(15)) + b'+PONG\r\n')
    assert erb.flow(f).replies == 2
    answered_after(erb, f)


def test_deep_reply_with_a_bad_length_still_gives_up(erb):
    f = Flow(erb).handshake()
    f.send(resp('COMMAND', 'DOCS'))
    f.reply(enc(nested(12))[:-12] + b'*x\r\n')
    assert erb.stats()['parse_error'] == 1
    assert erb.flow(f).flags & L.ERB_FLOW_UNTRACKED
