# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""CLOCK eviction in the BPF cache.

A key lives in one of the max_probes slots of its probe window (double
hashing). When every slot of the window holds a live entry, an insert (fast
SET in XDP, write-through fill at TC egress, HGETALL fill) evicts one: the
sweep over the window clears the reference bit of each referenced entry it
passes and takes the first unreferenced one (all referenced: the first one
swept). An entry whose fast-path write Redis does not have yet, or one being
written, is never taken.

The cache here has 64 slots, so that keys filling a chosen window, and a
second key with exactly the same window, are found by a short search.
"""

import ctypes

import pytest

from erbtest import live_entries, verify_hash, B, XDP_NAMES, XDP_PASS, XDP_TX, Flow, bulk, fnv1a, resp, tcp_payload
from ansible_collections.erb.booster.plugins.module_utils import erb_layout as L
from ansible_collections.erb.booster.plugins.module_utils import erb_loader as EL

ENTRIES = 64
PROBES = L.ERB_MAX_PROBES
PRIME = EL.hash_prime(ENTRIES)
OK = b'+OK\r\n'


def window(key):
    h = fnv1a(key)
    return [(h + i * (1 + h % PRIME)) % ENTRIES for i in range(PROBES)]


def key_at(slot, prefix, used):
    """A key whose first probe is slot (stored there in an empty window)."""
    for n in range(100000):
        k = b'%s:%d' % (prefix, n)
        if k not in used and window(k)[0] == slot:
            used.add(k)
            return k
    raise AssertionError('no key for slot %d' % slot)


def target(prefix=b'target'):
    """A key with PROBES distinct slots in its window, and a second key with
    the very same window."""
    for n in range(100000):
        k = b'%s:%d' % (prefix, n)
        w = window(k)
        if len(set(w)) == PROBES:
            for m in range(1000000):
                k2 = b'%s:twin:%d' % (prefix, m)
                if window(k2) == w:
                    return k, k2, w
    raise AssertionError('no target key')


def target_key():
    """A key with PROBES distinct slots in its window, and the window."""
    found = target()
    return found[0], found[2]


def fillers(w, used):
    """One key per slot of window w, each first probing its slot."""
    return [key_at(slot, b'fill', used) for slot in w]


def slots(erb):
    """{slot: (key, value, wseq, ref)} of the live entries."""
    return {i: (key, val, e.wseq, getattr(e, 'ref', None)) for i, e, key, val in live_entries(erb)}


def set_lock(erb, slot, lock):
    e = L.ErbEntry()
    B.map_lookup(erb.fds['erb_cache'], ctypes.c_uint32(slot), e)
    e.lock = lock
    B.map_update(erb.fds['erb_cache'], ctypes.c_uint32(slot), e)


def name(rc):
    return XDP_NAMES.get(rc, rc)


def nonzero(st):
    return {k: v for k, v in st.items() if v}


def counts(erb, *names):
    st = erb.stats()
    return tuple(st.get(n, 0) for n in names)


def fast_set(erb, f, key, value):
    rc, out = f.send(resp(b'SET', key, value))
    assert rc == XDP_TX, 'SET %r not answered: %s %s' % (key, name(rc), nonzero(erb.stats()))
    assert tcp_payload(out) == OK
    erb.records()


def assert_hit(erb, f, key, value):
    rc, out = f.get(key)
    assert rc == XDP_TX, 'GET %r not answered: %s %s' % (key, name(rc), nonzero(erb.stats()))
    assert tcp_payload(out) == bulk(value)


def assert_miss(f, key):
    rc = f.get(key)[0]
    assert rc == XDP_PASS, 'GET %r answered from the cache' % key
    f.reply(b'$-1\r\n')


@pytest.fixture
def fast(erb_fast_config):
    return erb_fast_config(cache_entries=ENTRIES, ring_bytes=65536)


@pytest.fixture
def small(erb_config):
    return erb_config(cache_entries=ENTRIES)


def value(key):
    return b'value of ' + key


def test_full_window_still_takes_a_fast_set(fast):
    erb = fast
    f = Flow(erb).handshake()
    used = set()
    key, w = target_key()
    fill = fillers(w, used)
    for k in fill:
        fast_set(erb, f, k, value(k))
    erb.apply_all()
    assert {s: v[0] for s, v in slots(erb).items()} == dict(zip(w, fill))
    fast_set(erb, f, key, b'new')
    assert counts(erb, 'evict', 'cache_full', 'set_pass_busy') == (1, 0, 0)
    erb.apply_all()
    assert_hit(erb, f, key, b'new')
    # all referenced: the sweep cleared them and took the first
    assert slots(erb)[w[0]][0] == key
    assert_miss(f, fill[0])
    for k in fill[1:]:
        assert_hit(erb, f, k, value(k))


def test_pending_entries_are_never_evicted(fast):
    erb = fast
    f = Flow(erb).handshake()
    used = set()
    key, w = target_key()
    fill = fillers(w, used)
    # written last: the entry in the window's first slot has the highest wseq
    for k in fill[1:] + fill[:1]:
        fast_set(erb, f, k, value(k))
    # Redis has every write but the last: the first slot's entry is pending
    erb.set_applied(PROBES - 1)
    before = slots(erb)
    assert before[w[0]][2] == PROBES > erb.glob().applied_seq
    fast_set(erb, f, key, b'new')
    after = slots(erb)
    assert after[w[0]] == (fill[0], value(fill[0]), PROBES, 1), 'pending entry evicted'
    assert after[w[1]][0] == key
    assert counts(erb, 'evict')[0] == 1


def test_full_window_of_pending_entries_passes_the_set(fast):
    erb = fast
    f = Flow(erb).handshake()
    used = set()
    key, w = target_key()
    fill = fillers(w, used)
    for k in fill:
        fast_set(erb, f, k, value(k))
    before = slots(erb)
    rc = f.send(resp(b'SET', key, b'new'))[0]
    assert rc == XDP_PASS
    assert counts(erb, 'evict', 'cache_full', 'set_pass_busy') == (0, 1, 1)
    assert slots(erb) == before


def test_entry_being_written_is_not_evicted(fast):
    erb = fast
    f = Flow(erb).handshake()
    used = set()
    key, w = target_key()
    fill = fillers(w, used)
    for k in fill:
        fast_set(erb, f, k, value(k))
    erb.apply_all()
    set_lock(erb, w[0], 1)
    fast_set(erb, f, key, b'new')
    after = slots(erb)
    assert after[w[0]][0] == fill[0]
    assert after[w[1]][0] == key
    set_lock(erb, w[0], 0)


def test_referenced_entry_survives_a_sweep(small):
    """Write-through fills evict too; a hit's reference bit is a second chance."""
    erb = small
    f = Flow(erb).handshake()
    used = set()
    key, twin, w = target()
    fill = fillers(w, used)
    for k in fill:
        f.set(k, value(k))
    assert erb.stats()['fill'] == PROBES
    # first sweep: everything inserted is referenced; all cleared, the first taken
    f.set(key, value(key))
    assert counts(erb, 'evict')[0] == 1
    assert [v[3] for s, v in sorted(slots(erb).items(), key=lambda x: w.index(x[0]))] == [1] + [0] * (PROBES - 1)
    assert_hit(erb, f, fill[1], value(fill[1]))
    # second sweep, same window: key (referenced), fill[1] (referenced by the
    # hit) survive, fill[2] (not referenced since the first sweep) goes
    f.set(twin, value(twin))
    assert counts(erb, 'evict', 'fill', 'cache_full') == (2, PROBES + 2, 0)
    after = slots(erb)
    assert [after[s][0] for s in w] == [key, fill[1], twin] + fill[3:]
    assert_hit(erb, f, twin, value(twin))
    assert_hit(erb, f, key, value(key))
    assert_hit(erb, f, fill[1], value(fill[1]))
    assert_miss(f, fill[2])


def test_hgetall_fill_evicts(small):
    erb = small
    f = Flow(erb).handshake()
    used = set()
    key, w = target_key()
    for k in fillers(w, used):
        f.set(k, value(k))
    reply = b'*2\r\n$1\r\nf\r\n$1\r\nv\r\n'
    rc = f.send(resp(b'HGETALL', key))[0]
    assert rc == XDP_PASS
    f.reply(reply)
    assert counts(erb, 'evict')[0] == 1
    assert slots(erb)[w[0]][:2] == (key, reply)
    assert verify_hash(erb, key)    # the agent's TTL check
    rc, out = f.send(resp(b'HGETALL', key))
    assert rc == XDP_TX, name(rc)
    assert tcp_payload(out) == reply


def test_working_set_shift_is_taken_in(small):
    """Cache-aside clients (GET, on a miss SET) move from one working set to
    another of the same size: the cache follows. Without eviction the second
    set finds the cache full of the first and is mostly never cached."""
    erb = small
    f = Flow(erb).handshake()
    first = [b'first:%d' % i for i in range(48)]
    second = [b'second:%d' % i for i in range(48)]
    hits = []
    for keys in (first, second):
        for rnd in range(6):
            for k in keys:
                rc, out = f.get(k)
                if rc == XDP_TX:
                    assert tcp_payload(out) == bulk(value(k))
                    hits.append(1)
                    continue
                assert rc == XDP_PASS
                f.reply(b'$-1\r\n')
                f.set(k, value(k))
                hits.append(0)
    last = hits[-2 * len(second):]
    ratio = sum(last) / float(len(last))
    # a loose floor: not a performance figure (bench/eviction.py measures)
    assert ratio > 0.5, 'hit ratio %.2f on the shifted working set' % ratio
    assert counts(erb, 'evict')[0] > 0
