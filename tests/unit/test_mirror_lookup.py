# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The loader reads pinned maps made by another layout version (an upgrade, or a rollback
across one) without letting the kernel write past its buffer: the kernel copies the map's
value size, the mirror may be smaller. Real BPF maps (root)."""

import ctypes
import os
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'loader'))
from collection_path import ensure_collection_path  # noqa: E402

ensure_collection_path()

from ansible_collections.erb.booster.plugins.module_utils import erb_layout as L  # noqa: E402
from ansible_collections.erb.booster.plugins.module_utils import erb_loader as EL  # noqa: E402
from ansible_collections.erb.booster.plugins.module_utils import libbpf as B  # noqa: E402

pytestmark = [pytest.mark.bpf]

GROWN = 4096  # a later layout's erb_flow, far larger than this one's


def flow_map(value_size):
    return B.map_create(L.BPF_MAP_TYPE_HASH, 'erb_flows', ctypes.sizeof(L.ErbFlowKey), value_size, 16)


def put(fd, i, flags, value_size, tail=b''):
    key = L.ErbFlowKey(saddr=i, daddr=2, sport=3, dport=6379)
    val = ctypes.create_string_buffer(value_size)
    ctypes.memmove(ctypes.addressof(val) + L.ErbFlow.flags.offset, ctypes.byref(ctypes.c_uint32(flags)), 4)
    if tail:
        ctypes.memmove(ctypes.addressof(val) + value_size - len(tail), tail, len(tail))
    B.map_update(fd, key, val)
    return key


@pytest.mark.parametrize('value_size', [ctypes.sizeof(L.ErbFlow) - 8, ctypes.sizeof(L.ErbFlow), GROWN])
def test_count_flows_reads_any_layouts_flow_map(value_size):
    fd = flow_map(value_size)
    with B.fd_closing(fd):
        put(fd, 1, L.ERB_FLOW_ANSWERED, value_size, tail=b'\xee' * 64 if value_size == GROWN else b'')
        put(fd, 2, 0, value_size)
        put(fd, 3, L.ERB_FLOW_ANSWERED | L.ERB_FLOW_CLOSED, value_size)
        assert EL.count_flows(fd) == (3, 1)


def test_lookup_mirror_gives_the_kernel_a_buffer_of_the_maps_value_size(monkeypatch):
    """A 4 KiB value read through a mirror of a few hundred bytes: the kernel copies the
    whole value, so the buffer it is given must hold that much; the mirror gets the prefix."""
    fd = flow_map(GROWN)
    sizes = []
    real = B.map_lookup

    def spy(mfd, key, value):
        sizes.append(ctypes.sizeof(value))
        return real(mfd, key, value)

    with B.fd_closing(fd):
        key = put(fd, 7, L.ERB_FLOW_ANSWERED, GROWN, tail=b'\xee' * 256)
        monkeypatch.setattr(B, 'map_lookup', spy)
        assert EL.count_flows(fd) == (1, 1)
        assert sizes and min(sizes) >= GROWN, 'count_flows gave the kernel %s bytes for %d' % (sizes, GROWN)
        flow = EL.lookup_mirror(fd, key, L.ErbFlow)
        assert isinstance(flow, L.ErbFlow) and flow.flags == L.ERB_FLOW_ANSWERED
        missing = L.ErbFlowKey(saddr=99, daddr=2, sport=3, dport=6379)
        assert EL.lookup_mirror(fd, missing, L.ErbFlow) is None
    assert sizes and min(sizes) >= GROWN, sizes
