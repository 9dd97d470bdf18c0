# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures for the BPF_PROG_TEST_RUN tests of the real files/bpf/erb.bpf.o.

``erb``: the object loaded with the default test config (cache_entries 1024,
max_key_len 128, max_value_len 1024, redis_port 6379), its state maps reset
before every test (no flows, empty cache, zero counters), erb_cmds filled from
redis_commands.py. Loading takes ~0.5 s, so an object is loaded once per
session and per config; ``erb_config(**overrides)`` gives one for another config.
``xdp``/``tc``/``stats``/``flow``: the helpers of that object.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import erbtest  # noqa: E402


def pytest_collection_modifyitems(items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.bpf)


@pytest.fixture(scope='session')
def _objects():
    if os.geteuid() != 0:
        pytest.fail('the BPF tests need root (BPF_PROG_TEST_RUN, map access)')
    cache = {}
    yield cache
    for obj in cache.values():
        obj.close()


@pytest.fixture
def erb_config(_objects):
    """Factory: erb_config(**overrides) -> a reset erbtest.Erb for that config."""
    def get(**overrides):
        key = tuple(sorted(overrides.items()))
        if key not in _objects:
            _objects[key] = erbtest.Erb(**overrides)
        obj = _objects[key]
        obj.reset()
        return obj
    return get


@pytest.fixture
def erb(erb_config):
    return erb_config()


@pytest.fixture
def xdp(erb):
    return erb.xdp


@pytest.fixture
def tc(erb):
    return erb.tc


@pytest.fixture
def stats(erb):
    return erb.stats


@pytest.fixture
def flow(erb):
    return erb.flow


# SET fast path (ERB_CFG_SET_FAST) with an 8 KiB erb_events: 4 records of
# struct erb_record fit, so a full ring is reachable.
FAST_RING_BYTES = 8192


@pytest.fixture
def erb_fast_config(erb_config):
    """Factory: erb_fast_config(**overrides) -> a reset Erb with set_fast_path on
    (ring_bytes FAST_RING_BYTES unless overridden), erb_events consumed."""
    def get(**overrides):
        obj = erb_config(**dict(dict(set_fast_path=True, ring_bytes=FAST_RING_BYTES), **overrides))
        obj.reset_fast()
        return obj
    return get


@pytest.fixture
def erb_fast(erb_fast_config):
    return erb_fast_config()
