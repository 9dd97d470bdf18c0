# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""erb_tc_egress and the frames erb-agent sends when it replays a parked segment on a copy
(a kernel that refuses BPF_PROG_RUN's live frames): an answer erb_xdp built (skb mark
ERB_MARK_REPLAY_TX) leaves untouched, though it looks like a Redis reply on a flow with
corrections; a segment erb_xdp passed on (ERB_MARK_REPLAY_RX) is redirected into the
interface's ingress. Both marks are cleared. Any other mark is egress as usual."""

import ctypes

from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether

import erbtest
from erbtest import TC_ACT_OK, XDP_TX, Flow, resp

MARK_TX, MARK_RX = 0x45524201, 0x45524202
TC_ACT_REDIRECT = 7


class SkbMark(ctypes.Structure):
    """The head of struct __sk_buff up to mark (len and pkt_type must be zero)."""
    _fields_ = [('len', ctypes.c_uint32), ('pkt_type', ctypes.c_uint32), ('mark', ctypes.c_uint32)]


def tc_marked(erb, frame, mark):
    """erb_tc_egress on frame with skb->mark: (verdict, frame out, mark out)."""
    frame = bytes(frame)
    data_in = ctypes.create_string_buffer(frame, len(frame))
    data_out = ctypes.create_string_buffer(8192)
    ctx = SkbMark(mark=mark)
    ctx_out = ctypes.create_string_buffer(256)      # the whole struct __sk_buff comes back
    attr = erbtest.TestRunAttr(prog_fd=erb.tc_fd, data_size_in=len(frame), data_size_out=8192,
                               data_in=ctypes.addressof(data_in), data_out=ctypes.addressof(data_out), repeat=1,
                               ctx_in=ctypes.addressof(ctx), ctx_size_in=ctypes.sizeof(ctx),
                               ctx_out=ctypes.addressof(ctx_out), ctx_size_out=ctypes.sizeof(ctx_out))
    erbtest.B.sys_bpf(erbtest.BPF_PROG_TEST_RUN, attr, 'BPF_PROG_TEST_RUN')
    return attr.retval, data_out.raw[:attr.data_size_out], SkbMark.from_buffer_copy(ctx_out.raw).mark


def corrected_flow(erb):
    """A flow with a GET answered in XDP: its Redis segments get seq corrections at egress.
    Returns (flow, the answer frame)."""
    f = Flow(erb).handshake()
    f.set(b'k', b'v')
    rc, ans = f.get(b'k')
    assert rc == XDP_TX
    return f, ans


def test_an_answer_replayed_on_a_copy_leaves_untouched(erb):
    f, ans = corrected_flow(erb)
    # the same frame as a Redis segment would be rewritten (its seq is in the client's view)
    rc, out, mark = tc_marked(erb, ans, 0)
    assert rc == TC_ACT_OK and Ether(out)[TCP].seq != Ether(ans)[TCP].seq, 'the test frame is not rewritten unmarked'
    rc, out, mark = tc_marked(erb, ans, MARK_TX)
    assert rc == TC_ACT_OK
    assert out == bytes(ans), 'an answer replayed on a copy was rewritten at egress'
    assert mark == 0


def test_a_passed_segment_replayed_on_a_copy_goes_to_ingress(erb):
    f, _ans = corrected_flow(erb)
    seg = f.client_frame(resp('INCR', 'n'))
    rc, out, mark = tc_marked(erb, seg, MARK_RX)
    assert rc == TC_ACT_REDIRECT, 'a passed segment replayed on a copy: verdict %d, not redirected' % rc
    assert out == bytes(seg) and mark == 0
    # unmarked, or marked otherwise, a client-to-server frame at egress is left alone
    for other in (0, MARK_RX + 1, MARK_TX - 1):
        rc, out, mark = tc_marked(erb, seg, other)
        assert rc == TC_ACT_OK and out == bytes(seg) and mark == other
