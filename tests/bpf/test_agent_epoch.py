# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The contract erb-agent relies on for CLIENT TRACKING invalidations of keys not cached (yet):
bumping the key's bucket in erb_wepoch (the agent does it with an atomic add through an mmap)
while a write-through fill of that key is in flight cancels the fill, for SET and HGETALL fills.
tests/agent checks that the agent bumps the epoch for every invalidated key."""

import pytest

from erbtest import XDP_PASS, Flow, bucket_of, resp

HASH_REPLY = b'*2\r\n$1\r\nf\r\n$1\r\nv\r\n'


def agent_bump(erb, key):
    b = bucket_of(key)
    erb.set_u32('erb_wepoch', b, erb.u32('erb_wepoch', b) + 1)


@pytest.mark.parametrize('cmd, reply', [
    (('SET', 'k', 'v'), b'+OK\r\n'),
    (('HGETALL', 'k'), HASH_REPLY),
], ids=['set', 'hgetall'])
def test_epoch_bump_cancels_a_fill_in_flight(erb, cmd, reply):
    f = Flow(erb).handshake()
    rc, _unused = f.send(resp(*cmd))
    assert rc == XDP_PASS
    # another client changed k at Redis; its invalidation reaches the agent before our reply
    agent_bump(erb, b'k')
    f.reply(reply)
    st = erb.stats()
    assert (st['fill'], st['fill_skipped']) == (0, 1)
    assert b'k' not in erb.cache_entries()


@pytest.mark.parametrize('cmd, reply', [
    (('SET', 'k', 'v'), b'+OK\r\n'),
    (('HGETALL', 'k'), HASH_REPLY),
], ids=['set', 'hgetall'])
def test_without_a_bump_the_fill_is_stored(erb, cmd, reply):
    f = Flow(erb).handshake()
    f.send(resp(*cmd))
    agent_bump(erb, b'other-key-1')
    f.reply(reply)
    assert erb.stats()['fill'] == 1
    assert b'k' in erb.cache_entries()
