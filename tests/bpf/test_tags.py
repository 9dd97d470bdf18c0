# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The cache's slot tags (erb_tags) and where a probe chain ends.

A lookup, an invalidation and a pending check read a slot's entry only when the
slot's tag (a byte of the hash of the last key written there) matches; a slot
never written (tag 0) ends the chain. Deleted entries and entries of an older
generation do not end it: an entry written behind one while it was live must
stay in reach of the invalidation of its key, or a later GET that reaches it
again answers a value Redis no longer has."""

import ctypes

import pytest

from test_eviction import ENTRIES, OK, window  # the 64-slot cache's probe windows
from erbtest import B, XDP_NAMES, XDP_PASS, XDP_TX, Flow, bulk, fnv1a, live_entries, resp, tcp_payload
from ansible_collections.erb.booster.plugins.module_utils import erb_layout as L
from ansible_collections.erb.booster.plugins.module_utils import erb_loader as EL


def hash_tag(key):
    return (fnv1a(key) >> 24) or 1


def tags(erb):
    """The tag byte of every slot."""
    out = []
    for w in range(EL.tag_words(erb.config['cache_entries'])):
        v = ctypes.c_uint64()
        B.map_lookup(erb.fds['erb_tags'], ctypes.c_uint32(w), v)
        out.extend(v.value.to_bytes(8, 'little'))
    return out[:erb.config['cache_entries']]


def name(rc):
    return XDP_NAMES.get(rc, rc)


def fast_set(erb, f, key, value, apply=True):
    rc, out = f.send(resp(b'SET', key, value))
    assert rc == XDP_TX and tcp_payload(out) == OK, 'SET %r not answered: %s' % (key, name(rc))
    erb.records()
    if apply:
        erb.apply_all()


@pytest.fixture
def fast(erb_fast_config):
    return erb_fast_config(cache_entries=ENTRIES, ring_bytes=65536)


def test_every_written_slot_carries_its_keys_tag(fast):
    f = Flow(fast).handshake()
    for n in range(40):                      # fast SETs, some keys again (their slot rewritten)
        fast_set(fast, f, b'k:%d' % (n % 30), b'v%d' % n)
    t = tags(fast)
    live = list(live_entries(fast))
    assert len(live) == 30
    for i, _e, key, _val in live:
        assert t[i] == hash_tag(key), 'slot %d holds %r with tag %#x, its hash says %#x' % (
            i, key, t[i], hash_tag(key))
    used = set(i for i, _e, _k, _v in live)
    e = L.ErbEntry()
    for i in range(ENTRIES):
        B.map_lookup(fast.fds['erb_cache'], ctypes.c_uint32(i), e)
        if e.state == L.ERB_ENTRY_EMPTY:
            assert t[i] == 0, 'slot %d never written but tagged %#x' % (i, t[i])
        else:
            assert t[i] != 0 and e.slot == i


@pytest.mark.parametrize('lengths', [range(1, 41), (63, 64, 65, 127, 128)], ids=['1-40', 'long'])
def test_entry_hash_is_fnv1a_at_every_key_length(erb_fast_config, lengths):
    """fnv_key() hashes the first 16 bytes inline and the rest 8 a bpf_loop step: at each
    length around those edges the entry's hash is the FNV-1a erb-agent and the loader compute,
    and a GET of the key finds it."""
    erb = erb_fast_config(ring_bytes=1 << 20)
    f = Flow(erb).handshake()
    keys = [bytes((n * 7 + i * 13 + 1) % 256 for i in range(n)) for n in lengths]
    for key in keys:
        fast_set(erb, f, key, b'v%d' % len(key))
    live = {k: e.hash for _i, e, k, _v in live_entries(erb)}
    assert sorted(live) == sorted(keys)
    for key in keys:
        assert live[key] == fnv1a(key), 'key of %d bytes: hash %#x, FNV-1a %#x' % (
            len(key), live[key], fnv1a(key))
        rc, out = f.get(key)
        assert rc == XDP_TX and tcp_payload(out) == bulk(b'v%d' % len(key)), len(key)


def test_a_slot_tagged_for_another_key_is_skipped_not_trusted(fast):
    """A wrong tag on the key's own slot hides the entry (no hit), an untagged
    slot ends the chain: both are safe misses, never a wrong answer."""
    f = Flow(fast).handshake()
    fast_set(fast, f, b'user:1', b'alice')
    rc, out = f.get(b'user:1')
    assert rc == XDP_TX and tcp_payload(out) == bulk(b'alice')
    slot = window(b'user:1')[0]
    w = ctypes.c_uint64()
    B.map_lookup(fast.fds['erb_tags'], ctypes.c_uint32(slot // 8), w)
    raw = bytearray(w.value.to_bytes(8, 'little'))
    raw[slot % 8] = (hash_tag(b'user:1') % 255) + 1        # another tag
    B.map_update(fast.fds['erb_tags'], ctypes.c_uint32(slot // 8), ctypes.c_uint64(int.from_bytes(raw, 'little')))
    rc, _unused = f.get(b'user:1')
    assert rc == XDP_PASS
    f.reply(bulk(b'alice'))


def keys_sharing(first, count, prefix, distinct_second=True):
    """count keys whose first probe is slot first, each with its second probe elsewhere."""
    out = []
    for n in range(1000000):
        k = b'%s:%d' % (prefix, n)
        w = window(k)
        if w[0] == first and (not distinct_second or w[1] != first):
            out.append(k)
            if len(out) == count:
                return out
    raise AssertionError('no keys for slot %d' % first)


def test_an_entry_behind_a_flushed_pending_one_is_invalidated_by_a_passed_write(fast):
    """The hazard the chain rule closes. X's fast SET is pending at slot P when
    the cache is emptied (cache_gen bumped); K is stored behind it (P is kept:
    Redis lacks X's write). Once X is applied, P is of an older generation. A
    write of K through Redis must still reach K's entry behind P; else, when L
    later takes P, the chain K -> P (L) -> K's stale entry answers K's old value."""
    f = Flow(fast).handshake()
    p = window(b'x:0')[0]
    x, k, l = [b'x:0'] + keys_sharing(p, 2, b'kl')
    assert window(k)[0] == window(l)[0] == p
    fast_set(fast, f, x, b'X', apply=False)                # pending at P
    assert [i for i, _e, key, _v in live_entries(fast) if key == x] == [p]
    fast.set_cache_gen(fast.glob().cache_gen + 1)          # the cache emptied meanwhile
    fast_set(fast, f, k, b'old', apply=False)              # K lands behind P
    k_slots = [i for i, _e, key, _v in live_entries(fast) if key == k]
    assert k_slots and k_slots[0] != p, 'K was not stored behind P: %r' % k_slots
    fast.apply_all()                                       # X and K in Redis: P is an old entry now
    rc, out = f.get(k)
    assert rc == XDP_TX and tcp_payload(out) == bulk(b'old')
    f.command(resp(b'APPEND', k, b'-new'), b':7\r\n')     # K written through Redis
    fast_set(fast, f, l, b'L')                             # L takes P
    assert [i for i, _e, key, _v in live_entries(fast) if key == l] == [p]
    rc, out = f.get(k)
    assert rc == XDP_PASS, 'GET %r answered %r after it was written through Redis' % (k, tcp_payload(out))
