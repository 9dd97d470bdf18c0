# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""fault.bpf.c's decisions, with BPF_PROG_TEST_RUN: what it drops, sends round the delay
line, passes untouched, and where returning frames go; its counters."""

import ctypes
import os
import sys

import pytest

from erb_conftest import REPO
import fault_daemon as D
from fault_harness import build

sys.path.insert(0, str(REPO / 'tests' / 'bpf'))
import erbtest  # noqa: E402

import libbpf as B  # noqa: E402  (plugins/module_utils, put on sys.path by fault_daemon)
from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import ARP, Ether  # noqa: E402

pytestmark = [pytest.mark.bpf]

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
CMAC, SMAC = '02:00:00:00:00:0c', '02:00:00:00:00:05'
ALWAYS = 1 << 32


class SkbCtx(ctypes.Structure):
    """The head of struct __sk_buff: len and pkt_type must be 0 in a test run's context."""
    _fields_ = [('len', ctypes.c_uint32), ('pkt_type', ctypes.c_uint32), ('mark', ctypes.c_uint32)]


class Fault(object):
    def __init__(self):
        if os.geteuid() != 0:
            pytest.fail('BPF_PROG_TEST_RUN needs root; CI runs as root')
        self.obj = B.BpfObject(str(build()))
        self.obj.load()
        self.cfg_fd = self.obj.find_map('fault_cfg').fd
        self.stats_fd = self.obj.find_map('fault_stats').fd
        self.progs = {n: self.obj.program_fd(n) for n in ('fault_egress', 'fault_ingress', 'fault_return')}

    def configure(self, c2s=(0, 0, 0), s2c=(0, 0, 0), client_ifindex=7, detour_ifindex=9):
        c = D.FaultCfg()
        for i, (loss, dup, detour) in enumerate((c2s, s2c)):
            c.dir[i].loss, c.dir[i].dup, c.dir[i].detour = loss, dup, detour
        c.client_ifindex, c.detour_ifindex = client_ifindex, detour_ifindex
        c.client_mac[:] = list(bytes.fromhex(CMAC.replace(':', '')))
        c.port = 0xeb18  # htons(6379)
        B.map_update(self.cfg_fd, ctypes.c_uint32(0), c)

    def stats(self):
        ncpu = B.num_possible_cpus()
        val = (ctypes.c_uint64 * ncpu)()
        out = {}
        for i, d in enumerate(D.DIRS):
            for j, name in enumerate(D.STATS):
                B.map_lookup(self.stats_fd, ctypes.c_uint32(i * len(D.STATS) + j), val)
                out[d, name] = sum(val)
        return out

    def run(self, prog, frame, mark=0):
        """(verdict, mark after the run)."""
        frame = bytes(frame)
        data_in = ctypes.create_string_buffer(frame, len(frame))
        data_out = ctypes.create_string_buffer(erbtest.OUT_MAX)
        ctx, ctx_out = SkbCtx(mark=mark), ctypes.create_string_buffer(512)  # out: the whole __sk_buff
        attr = erbtest.TestRunAttr(prog_fd=self.progs[prog], data_size_in=len(frame), data_size_out=erbtest.OUT_MAX,
                                   data_in=ctypes.addressof(data_in), data_out=ctypes.addressof(data_out), repeat=1,
                                   ctx_in=ctypes.addressof(ctx), ctx_size_in=ctypes.sizeof(ctx),
                                   ctx_out=ctypes.addressof(ctx_out), ctx_size_out=ctypes.sizeof(ctx_out))
        B.sys_bpf(erbtest.BPF_PROG_TEST_RUN, attr, 'BPF_PROG_TEST_RUN')
        return attr.retval, SkbCtx.from_buffer_copy(ctx_out.raw[:ctypes.sizeof(SkbCtx)]).mark


def to_server(dport=6379, payload=b'*1\r\n$4\r\nPING\r\n'):
    return Ether(src=CMAC, dst=SMAC) / IP(src='10.250.1.2', dst='10.250.1.1') / \
        TCP(sport=40000, dport=dport, flags='PA') / payload


def to_client(sport=6379, payload=b'+PONG\r\n'):
    return Ether(src=SMAC, dst=CMAC) / IP(src='10.250.1.1', dst='10.250.1.2') / \
        TCP(sport=sport, dport=40000, flags='PA') / payload


@pytest.fixture
def f():
    x = Fault()
    yield x
    x.obj.close()


def test_unconfigured_passes_everything(f):
    f.configure(c2s=(ALWAYS, 0, 0), s2c=(ALWAYS, 0, 0), client_ifindex=0)
    assert f.run('fault_egress', to_server())[0] == TC_ACT_OK
    assert f.run('fault_ingress', to_client())[0] == TC_ACT_OK
    assert not any(f.stats().values())


def test_loss_per_direction_and_only_the_redis_port(f):
    f.configure(c2s=(ALWAYS, 0, 0))
    assert f.run('fault_egress', to_server())[0] == TC_ACT_SHOT
    assert f.run('fault_egress', to_server(dport=6380))[0] == TC_ACT_OK
    assert f.run('fault_egress', Ether(src=CMAC, dst='ff:ff:ff:ff:ff:ff') / ARP())[0] == TC_ACT_OK
    assert f.run('fault_ingress', to_client())[0] == TC_ACT_OK  # s2c has no loss
    assert f.run('fault_ingress', to_client(sport=6380))[0] == TC_ACT_OK
    s = f.stats()
    assert (s['c2s', 'seen'], s['c2s', 'dropped'], s['s2c', 'seen'], s['s2c', 'dropped']) == (1, 1, 1, 0)
    f.configure(s2c=(ALWAYS, 0, 0))
    assert f.run('fault_ingress', to_client())[0] == TC_ACT_SHOT
    assert f.stats()['s2c', 'dropped'] == 1


def test_marked_frames_pass_untouched_and_unmarked(f):
    f.configure(c2s=(ALWAYS, 0, 0), s2c=(ALWAYS, 0, 0))
    assert f.run('fault_egress', to_server(), mark=D.FAULT_MARK) == (TC_ACT_OK, 0)
    assert f.run('fault_ingress', to_client(), mark=D.FAULT_MARK) == (TC_ACT_OK, 0)
    assert not any(f.stats().values())


def test_detour_and_return(f):
    f.configure(c2s=(0, 0, ALWAYS), s2c=(0, 0, ALWAYS))
    assert f.run('fault_egress', to_server())[0] == TC_ACT_REDIRECT
    assert f.run('fault_ingress', to_client())[0] == TC_ACT_REDIRECT
    # back from the delay line: towards the client by its MAC, else towards Redis; marked
    assert f.run('fault_return', to_client()) == (TC_ACT_REDIRECT, D.FAULT_MARK)
    assert f.run('fault_return', to_server()) == (TC_ACT_REDIRECT, D.FAULT_MARK)
    assert f.run('fault_return', Ether(src=CMAC, dst='ff:ff:ff:ff:ff:ff') / ARP())[0] == TC_ACT_SHOT
    s = f.stats()
    for d in D.DIRS:
        assert (s[d, 'seen'], s[d, 'detoured'], s[d, 'returned'], s[d, 'dropped']) == (1, 1, 1, 0), d


def test_rates_are_per_segment_probabilities(f):
    f.configure(c2s=(int(0.3 * ALWAYS), 0, int(0.1 * ALWAYS)))
    verdicts = [f.run('fault_egress', to_server())[0] for _unused in range(3000)]
    dropped, detoured = verdicts.count(TC_ACT_SHOT), verdicts.count(TC_ACT_REDIRECT)
    # 5 standard deviations either side
    assert 0.3 * 3000 - 125 < dropped < 0.3 * 3000 + 125, dropped
    assert 0.07 * 3000 - 70 < detoured < 0.07 * 3000 + 70, detoured  # 10% of the 70% not dropped
    s = f.stats()
    assert (s['c2s', 'seen'], s['c2s', 'dropped'], s['c2s', 'detoured']) == (3000, dropped, detoured)
