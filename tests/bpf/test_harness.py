# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The harness's own checks can fail: corrupted checksums and payloads are caught."""

import pytest

from erbtest import XDP_TX, Flow, assert_checksums, own_checksums_ok, resp


def test_checksum_check_catches_corruption(erb):
    f = Flow(erb).handshake()
    f.set(b'k', b'value')
    rc, out = f.get(b'k')
    assert rc == XDP_TX
    assert_checksums(out)
    for off in (15, 30, 40, 50, len(out) - 1):      # IP header, addresses, TCP header, payload
        bad = bytearray(out)
        bad[off] ^= 0x40
        with pytest.raises(AssertionError):
            assert_checksums(bytes(bad))
        assert not own_checksums_ok(bytes(bad))


def test_reset_gives_fresh_state(erb_config):
    erb = erb_config()
    f = Flow(erb).handshake()
    f.set(b'k', b'v')
    assert erb.flow(f) is not None and erb.cache_entries()
    erb = erb_config()
    assert erb.flow(f) is None
    assert not erb.cache_entries()
    assert not any(erb.stats().values())
    assert erb.glob().cache_gen == 0 and erb.glob().overflow == 0
    f = Flow(erb).handshake()
    rc, _unused = f.send(resp('GET', 'k'))
    assert rc != XDP_TX
