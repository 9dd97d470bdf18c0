# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""bench/bpf/reflector.bpf.c, the floor of bench/cpu_cost.py: a request segment to
port 6379 is turned around (MACs, addresses, ports swapped; seq = its ack, ack = its
seq + payload) with a fixed reply, +OK for a SET, else a 100-byte bulk string, and
valid checksums; pure ACKs are dropped; handshake and teardown segments and anything
else pass untouched."""

import ctypes
import os
import sys

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

import erbtest
from erbtest import XDP_DROP, XDP_PASS, XDP_TX

sys.path.insert(0, os.path.join(erbtest.REPO, 'bench'))
import cpu_cost  # noqa: E402


@pytest.fixture(scope='module')
def reflector():
    cpu_cost.build_reflector()
    obj = erbtest.B.BpfObject(cpu_cost.REFLECTOR_OBJ)
    obj.load()
    yield obj.program_fd('reflect')
    obj.close()


def run(fd, frame):
    data_in = ctypes.create_string_buffer(frame, len(frame))
    data_out = ctypes.create_string_buffer(erbtest.OUT_MAX)
    attr = erbtest.TestRunAttr(prog_fd=fd, data_size_in=len(frame), data_size_out=erbtest.OUT_MAX,
                               data_in=ctypes.addressof(data_in), data_out=ctypes.addressof(data_out), repeat=1)
    erbtest.B.sys_bpf(erbtest.BPF_PROG_TEST_RUN, attr, 'BPF_PROG_TEST_RUN')
    return attr.retval, data_out.raw[:attr.data_size_out]


CMAC, SMAC = '02:00:00:00:00:0c', '02:00:00:00:00:05'


def segment(payload=b'', flags='PA', dport=6379, ip_options=b''):
    return bytes(Ether(src=CMAC, dst=SMAC) / IP(src='10.250.1.2', dst='10.250.1.1', options=ip_options) /
                 TCP(sport=41000, dport=dport, seq=1000, ack=5000, flags=flags, window=502) / Raw(payload))


def checksums_ok(raw):
    p = Ether(raw)
    q = Ether(raw)
    del q[IP].chksum
    del q[TCP].chksum
    q = Ether(bytes(q))
    return (q[IP].chksum, q[TCP].chksum) == (p[IP].chksum, p[TCP].chksum)


@pytest.mark.parametrize('payload, reply', [
    (b'*2\r\n$3\r\nGET\r\n$16\r\nkey:000000000001\r\n', b'$100\r\n' + b'x' * 100 + b'\r\n'),
    (b'*3\r\n$3\r\nSET\r\n$16\r\nkey:000000000001\r\n$3\r\nabc\r\n', b'+OK\r\n'),
], ids=['get', 'set'])
def test_request_is_answered_in_place(reflector, payload, reply):
    rc, out = run(reflector, segment(payload))
    assert rc == XDP_TX
    p = Ether(out)
    assert (p.src, p.dst) == (SMAC, CMAC)
    assert (p[IP].src, p[IP].dst, p[TCP].sport, p[TCP].dport) == ('10.250.1.1', '10.250.1.2', 6379, 41000)
    assert (p[TCP].seq, p[TCP].ack, str(p[TCP].flags), p[TCP].window) == (5000, 1000 + len(payload), 'PA', 502)
    assert bytes(p[TCP].payload) == reply
    assert p[IP].len == 20 + 20 + len(reply)
    assert checksums_ok(out)


def test_pure_ack_is_dropped(reflector):
    assert run(reflector, segment(flags='A'))[0] == XDP_DROP


@pytest.mark.parametrize('frame', [
    segment(flags='S'), segment(flags='SA'), segment(b'x', flags='FA'), segment(flags='R'),
    segment(b'*1\r\n$4\r\nPING\r\n', dport=6380),
    segment(b'*1\r\n$4\r\nPING\r\n', ip_options=b'\x01\x01\x01\x00'),
    Ether() / IP(src='10.250.1.2', dst='10.250.1.1') / UDP(sport=41000, dport=6379) / Raw(b'x'),
    Ether(type=0x86dd) / Raw(b'\x60' + b'\x00' * 60),
], ids=['syn', 'synack', 'fin', 'rst', 'other-port', 'ip-options', 'udp', 'ipv6'])
def test_anything_else_is_passed_untouched(reflector, frame):
    frame = bytes(frame)
    assert run(reflector, frame) == (XDP_PASS, frame)
