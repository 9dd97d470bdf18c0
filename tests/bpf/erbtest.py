# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Harness for the BPF_PROG_TEST_RUN tests of files/bpf/erb.bpf.o.

The real object is opened, configured (.rodata cfg) and loaded with the
collection's own ctypes loader (plugins/module_utils/libbpf.py, erb_loader.py),
erb_cmds is filled from redis_commands.py, and both programs are run through
bpf(2) BPF_PROG_TEST_RUN:

- ``Erb.xdp(frame) -> (retval, out_frame)``: erb_xdp, data_in + struct xdp_md ctx;
- ``Erb.tc(frame) -> (retval, out_frame)``: erb_tc_egress, data_in is an Ethernet
  frame (the kernel builds an skb, CHECKSUM_NONE);
- ``Erb.stats()``: erb_stats summed over CPUs, by erb_layout.STAT_NAMES;
- ``Erb.flow(key)``: the erb_flows entry (erb_layout.ErbFlow) or None.

``Flow`` models one TCP connection client <-> Redis and keeps both views of the
sequence space (what the client sends/sees vs what the server's stack
sends/sees), so that the tests can state the expected numbers independently of
the program. Frames are built with scapy and checked with scapy.
"""

import ctypes
import os
import socket
import struct
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'loader'))
from collection_path import ensure_collection_path  # noqa: E402

ensure_collection_path()

from ansible_collections.erb.booster.plugins.module_utils import erb_layout as L  # noqa: E402
from ansible_collections.erb.booster.plugins.module_utils import erb_loader as EL  # noqa: E402
from ansible_collections.erb.booster.plugins.module_utils import libbpf as B  # noqa: E402
from ansible_collections.erb.booster.plugins.module_utils import redis_commands  # noqa: E402

from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402

BPF_OBJECT = os.path.join(REPO, 'files', 'bpf', 'erb.bpf.o')

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX = 0, 1, 2, 3
XDP_NAMES = {0: 'XDP_ABORTED', 1: 'XDP_DROP', 2: 'XDP_PASS', 3: 'XDP_TX'}
TC_ACT_OK = 0
TC_ACT_SHOT = 2

BPF_PROG_TEST_RUN = 10
BPF_MAP_UPDATE_BATCH = 26

REDIS_PORT = 6379
CMAC, SMAC = '02:00:00:00:00:0c', '02:00:00:00:00:05'
CIP, SIP = '10.11.0.2', '10.11.0.1'

DEFAULT_CONFIG = dict(redis_port=REDIS_PORT, cache_entries=1024, max_key_len=128, max_value_len=1024,
                      max_flows=1024, require_auth=False, answer=True, fill=True, xdp_mode='native')

OUT_MAX = 8192


class TestRunAttr(ctypes.Structure):
    """bpf_attr.test (uapi linux/bpf.h, BPF_PROG_TEST_RUN)."""
    _fields_ = [
        ('prog_fd', ctypes.c_uint32),
        ('retval', ctypes.c_uint32),
        ('data_size_in', ctypes.c_uint32),
        ('data_size_out', ctypes.c_uint32),
        ('data_in', ctypes.c_uint64),
        ('data_out', ctypes.c_uint64),
        ('repeat', ctypes.c_uint32),
        ('duration', ctypes.c_uint32),
        ('ctx_size_in', ctypes.c_uint32),
        ('ctx_size_out', ctypes.c_uint32),
        ('ctx_in', ctypes.c_uint64),
        ('ctx_out', ctypes.c_uint64),
        ('flags', ctypes.c_uint32),
        ('cpu', ctypes.c_uint32),
        ('batch_size', ctypes.c_uint32),
        ('pad', ctypes.c_uint32),
    ]


class XdpMd(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in
                ('data', 'data_end', 'data_meta', 'ingress_ifindex', 'rx_queue_index', 'egress_ifindex')]


class BatchAttr(ctypes.Structure):
    """bpf_attr.batch (BPF_MAP_*_BATCH)."""
    _fields_ = [
        ('in_batch', ctypes.c_uint64),
        ('out_batch', ctypes.c_uint64),
        ('keys', ctypes.c_uint64),
        ('values', ctypes.c_uint64),
        ('count', ctypes.c_uint32),
        ('map_fd', ctypes.c_uint32),
        ('elem_flags', ctypes.c_uint64),
        ('flags', ctypes.c_uint64),
    ]


def _zero_array(fd, n, value_size):
    """Set every element of an ARRAY map to zero with one BPF_MAP_UPDATE_BATCH."""
    keys = (ctypes.c_uint32 * n)(*range(n))
    vals = ctypes.create_string_buffer(n * value_size)
    attr = BatchAttr(keys=ctypes.addressof(keys), values=ctypes.addressof(vals), count=n, map_fd=fd)
    B.sys_bpf(BPF_MAP_UPDATE_BATCH, attr, 'zero array map')
    assert attr.count == n, 'batch update stopped after %d of %d' % (attr.count, n)


class Erb(object):
    """One loaded erb.bpf.o with helpers to run its programs on frames."""

    def __init__(self, **overrides):
        self.config = dict(DEFAULT_CONFIG, **overrides)
        if not os.path.isfile(BPF_OBJECT):
            raise AssertionError('%s missing: build it with `make -C files/bpf`' % BPF_OBJECT)
        self.obj = B.BpfObject(BPF_OBJECT)
        EL._configure(self.obj, self.config)
        EL._load(self.obj)
        self.xdp_fd = self.obj.program_fd(L.XDP_PROG)
        self.tc_fd = self.obj.program_fd(L.TC_PROG)
        self.fds = {name: self.obj.find_map(name).fd for name in L.MAPS}
        self.ncpu = B.num_possible_cpus()
        EL.fill_cmds(self.fds['erb_cmds'], prune=True)

    def close(self):
        self.obj.close()

    # -- state -----------------------------------------------------------

    def reset(self):
        """Fresh state: no flows, empty cache, zero inflight/global/stats."""
        for name, ksize in (('erb_flows', ctypes.sizeof(L.ErbFlowKey)), ('erb_aux', ctypes.sizeof(L.ErbFlowKey)),
                            ('erb_ooo', ctypes.sizeof(L.ErbFlowKey)), ('erb_flow_gc', ctypes.sizeof(L.ErbFlowKey))):
            fd = self.fds[name]
            for raw in list(B.map_keys(fd, ksize)):
                B.map_delete(fd, ctypes.create_string_buffer(raw, ksize))
            assert not list(B.map_keys(fd, ksize)), '%s not empty after reset' % name
        _zero_array(self.fds['erb_cache'], self.config['cache_entries'], ctypes.sizeof(L.ErbEntry))
        _zero_array(self.fds['erb_tags'], EL.tag_words(self.config['cache_entries']), 8)
        _zero_array(self.fds['erb_buckets'], L.ERB_INFLIGHT_BUCKETS, ctypes.sizeof(L.ErbBucket))
        _zero_array(self.fds['erb_global'], 1, ctypes.sizeof(L.ErbGlobal))
        _zero_array(self.fds['erb_stats'], L.ERB_STAT_MAX, 8 * self.ncpu)
        assert not any(self.stats().values())

    def stats(self):
        return EL.read_stats(self.fds['erb_stats'])

    def glob(self):
        return EL.read_global(self.fds['erb_global'])

    def set_drain(self, on):
        EL.set_drain(self.fds['erb_global'], on)

    def flow(self, key):
        """erb_flows entry for an ErbFlowKey (or a Flow), None when absent."""
        if isinstance(key, Flow):
            key = key.key
        f = L.ErbFlow()
        return f if B.map_lookup(self.fds['erb_flows'], key, f) else None

    def flow_gc(self, key):
        """Is there an erb_flow_gc element (a closed flow's deletion timer) for an ErbFlowKey or a Flow?"""
        if isinstance(key, Flow):
            key = key.key
        return B.map_lookup(self.fds['erb_flow_gc'], key, L.ErbFlowGc())

    def flow_gc_count(self):
        """Elements of erb_flow_gc (closed flows' deletion timers)."""
        return len(list(B.map_keys(self.fds['erb_flow_gc'], ctypes.sizeof(L.ErbFlowKey))))

    def put_flow(self, key, f):
        """Overwrite the erb_flows entry of an ErbFlowKey (or a Flow) with f (an ErbFlow)."""
        if isinstance(key, Flow):
            key = key.key
        B.map_update(self.fds['erb_flows'], key, f)

    def ooo(self, key):
        """erb_ooo entry (bytes kept after a gap) of an ErbFlowKey or a Flow, None when absent."""
        if isinstance(key, Flow):
            key = key.key
        o = L.ErbOoo()
        return o if B.map_lookup(self.fds['erb_ooo'], key, o) else None

    def ooo_count(self):
        return len(list(B.map_keys(self.fds['erb_ooo'], ctypes.sizeof(L.ErbFlowKey))))

    def aux(self, key):
        if isinstance(key, Flow):
            key = key.key
        a = L.ErbAux()
        return a if B.map_lookup(self.fds['erb_aux'], key, a) else None

    def bucket(self, b):
        """erb_buckets entry b (an ErbBucket)."""
        v = L.ErbBucket()
        B.map_lookup(self.fds['erb_buckets'], ctypes.c_uint32(b), v)
        return v

    def _set_bucket(self, b, **fields):
        v = self.bucket(b)
        for name, value in fields.items():
            setattr(v, name, value)
        B.map_update(self.fds['erb_buckets'], ctypes.c_uint32(b), v)

    def inflight(self, b):
        """Writes of bucket b passed to Redis and unanswered."""
        return self.bucket(b).inflight

    def set_inflight(self, b, value):
        self._set_bucket(b, inflight=value)

    def lock(self, b):
        """Bucket b's lock word: 0 free, else the holder's CPU id + 1."""
        return self.bucket(b).lock

    def set_lock(self, b, value):
        self._set_bucket(b, lock=value)

    def cache_entries(self):
        """Live entries of the current generation: {key bytes: value bytes}."""
        gen = self.glob().cache_gen
        out = {}
        e = L.ErbEntry()
        for i in range(self.config['cache_entries']):
            B.map_lookup(self.fds['erb_cache'], ctypes.c_uint32(i), e)
            if e.state == L.ERB_ENTRY_VALID and e.gen == gen:
                out[bytes(bytearray(e.key)[:e.klen])] = bytes(bytearray(e.val)[:e.vlen])
        return out

    # -- programs --------------------------------------------------------

    def _run(self, prog_fd, frame, ctx=None):
        frame = bytes(frame)
        data_in = ctypes.create_string_buffer(frame, len(frame))
        data_out = ctypes.create_string_buffer(OUT_MAX)
        attr = TestRunAttr(prog_fd=prog_fd, data_size_in=len(frame), data_size_out=OUT_MAX,
                           data_in=ctypes.addressof(data_in), data_out=ctypes.addressof(data_out), repeat=1)
        if ctx is not None:
            ctx_out = type(ctx)()
            attr.ctx_in = ctypes.addressof(ctx)
            attr.ctx_size_in = ctypes.sizeof(ctx)
            attr.ctx_out = ctypes.addressof(ctx_out)
            attr.ctx_size_out = ctypes.sizeof(ctx_out)
        B.sys_bpf(BPF_PROG_TEST_RUN, attr, 'BPF_PROG_TEST_RUN')
        return attr.retval, data_out.raw[:attr.data_size_out]

    def xdp(self, frame):
        frame = bytes(frame)
        return self._run(self.xdp_fd, frame, XdpMd(data=0, data_end=len(frame)))

    def tc(self, frame):
        return self._run(self.tc_fd, frame)


# ------------------------------------------------------------------ RESP

def resp(*args):
    """A RESP2 command (array of bulk strings)."""
    out = [b'*%d\r\n' % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b'$%d\r\n%s\r\n' % (len(a), a))
    return b''.join(out)


# HELLO and Redis's reply to it (a RESP3 map, a RESP2 array): ERB learns the flow's protocol from the reply
HELLO3 = (resp(b'HELLO', b'3'), b'%1\r\n+server\r\n+redis\r\n')
HELLO2 = (resp(b'HELLO', b'2'), b'*2\r\n+server\r\n+redis\r\n')

# after a gap: a segment too large for erb_ooo to keep (the flow is given up)
BIG_OOO = resp('SET', 'big', 'x' * (L.ERB_OOO_MAX + 64))


def bulk(value):
    return b'$%d\r\n%s\r\n' % (len(value), value)


def fnv1a(data):
    return redis_commands.fnv1a32(data)


def bucket_of(key):
    return fnv1a(key) & (L.ERB_INFLIGHT_BUCKETS - 1)


# ------------------------------------------------------------------ checksums

def _ones_sum(data):
    if len(data) % 2:
        data += b'\0'
    s = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s


def own_checksums_ok(raw):
    """RFC 1071 check of the IPv4 header and TCP checksums, independent of scapy."""
    ihl = (raw[14] & 0x0f) * 4
    ip = raw[14:14 + ihl]
    tot = struct.unpack('!H', ip[2:4])[0]
    seg = raw[14 + ihl:14 + tot]
    pseudo = ip[12:20] + struct.pack('!BBH', 0, 6, len(seg))
    return _ones_sum(ip) == 0xffff and _ones_sum(pseudo + seg) == 0xffff


def assert_checksums(raw):
    """The frame's IP and TCP checksums equal those scapy recomputes (and RFC 1071 agrees)."""
    p = Ether(raw)
    assert IP in p and TCP in p, 'not an IPv4/TCP frame: %r' % raw[:64]
    got_ip, got_tcp = p[IP].chksum, p[TCP].chksum
    q = Ether(raw)
    del q[IP].chksum
    del q[TCP].chksum
    q = Ether(bytes(q))
    assert got_ip == q[IP].chksum, 'IP checksum %#06x, scapy computes %#06x' % (got_ip, q[IP].chksum)
    assert got_tcp == q[TCP].chksum, 'TCP checksum %#06x, scapy computes %#06x' % (got_tcp, q[TCP].chksum)
    assert own_checksums_ok(raw)


def tcp_payload(raw):
    p = Ether(raw)
    ip = p[IP]
    t = p[TCP]
    return bytes(t.payload)[:ip.len - ip.ihl * 4 - t.dataofs * 4] if t.payload else b''


def ts_option(raw):
    """(TSval, TSecr) of a frame, or None."""
    for name, val in Ether(raw)[TCP].options:
        if name == 'Timestamp':
            return val
    return None


def sack_blocks(raw):
    for name, val in Ether(raw)[TCP].options:
        if name == 'SAck':
            return list(zip(val[0::2], val[1::2]))
    return None


M32 = 0xffffffff


# ------------------------------------------------------------------ flows

# Redis's TSvals in a Flow's frames advance by this much per segment: faster than any clock,
# so ERB never takes them for Linux's ms clock (ts_learn) and its answers carry the client's
# TSecr, which tests can predict. tests/bpf/test_tsclock.py stamps them from the real clock.
S_TS_STEP = 100003


class Flow(object):
    """One client <-> Redis TCP connection driven through erb_xdp and erb_tc_egress.

    Both sides' sequence state is modelled here:
      c_seq  next seq the client sends (client view)
      c_ack  next server byte the client expects (client view)
      s_seq  next seq the server sends (server view)
      s_ack  next client byte the server expects (server view)
    A passed client segment of n bytes advances c_seq and s_ack; an XDP answer
    of r bytes to a request of n bytes advances c_seq by n and c_ack by r; a
    server segment of m bytes advances s_seq and c_ack.
    """

    def __init__(self, erb, cport=40000, c_isn=1000, s_isn=900000, ts=True, cip=CIP, sip=SIP,
                 sport=REDIS_PORT, s_win=509, c_tsval=100, s_tsval=7000):
        self.erb = erb
        self.cip, self.sip, self.cport, self.sport = cip, sip, cport, sport
        self.c_isn, self.s_isn = c_isn & M32, s_isn & M32
        self.ts = ts
        self.s_win = s_win
        self.c_tsval = c_tsval & M32
        self.s_tsval = s_tsval & M32
        self.c_recent = 0     # last server TSval the client saw (its TSecr)
        self.s_recent = 0     # last client TSval the server saw
        self.c_seq = self.c_isn
        self.s_seq = self.s_isn
        self.c_ack = self.s_ack = 0
        self.key = L.ErbFlowKey.from_buffer_copy(
            socket.inet_aton(cip) + socket.inet_aton(sip) + struct.pack('!HH', cport, sport))
        self.last = None      # (rc, out, in) of the last segment
        self.answers = 0

    # -- frames --------------------------------------------------------

    def client_frame(self, payload=b'', flags='PA', seq=None, ack=None, ts=None, options=None,
                     ip_id=1, window=1000):
        """A client -> server frame (defaults: the next in-order segment)."""
        ts = self.ts if ts is None else ts
        if options is None:
            options = []
            if ts:
                self.c_tsval = (self.c_tsval + 1) & M32
                options = [('NOP', None), ('NOP', None), ('Timestamp', (self.c_tsval, self.c_recent))]
        pkt = (Ether(src=CMAC, dst=SMAC) /
               IP(src=self.cip, dst=self.sip, id=ip_id, flags='DF') /
               TCP(sport=self.cport, dport=self.sport, flags=flags,
                   seq=self.c_seq if seq is None else seq & M32,
                   ack=(self.c_ack if ack is None else ack & M32) if 'A' in flags else 0,
                   window=window, options=options))
        if payload:
            pkt = pkt / Raw(payload)
        return bytes(pkt)

    def server_frame(self, payload=b'', flags='PA', seq=None, ack=None, ts=None, options=None, window=None):
        """A server -> client frame as the server's stack sends it (server view)."""
        ts = self.ts if ts is None else ts
        if options is None:
            options = []
            if ts:
                self.s_tsval = (self.s_tsval + S_TS_STEP) & M32
                options = [('NOP', None), ('NOP', None), ('Timestamp', (self.s_tsval, self.s_recent))]
        pkt = (Ether(src=SMAC, dst=CMAC) /
               IP(src=self.sip, dst=self.cip, id=2, flags='DF') /
               TCP(sport=self.sport, dport=self.cport, flags=flags,
                   seq=self.s_seq if seq is None else seq & M32,
                   ack=(self.s_ack if ack is None else ack & M32) if 'A' in flags else 0,
                   window=self.s_win if window is None else window, options=options))
        if payload:
            pkt = pkt / Raw(payload)
        return bytes(pkt)

    # -- actions -------------------------------------------------------

    def handshake(self, synack_window=None, mss=1460):
        """SYN (XDP; the client offers mss), SYN-ACK (TC; window synack_window, default s_win;
        wscale 7), ACK (XDP)."""
        opts = [('MSS', mss), ('SAckOK', b''), ('WScale', 7)]
        if self.ts:
            opts = [('MSS', mss), ('SAckOK', b''), ('Timestamp', (self.c_tsval, 0)), ('NOP', None),
                    ('WScale', 7)]
        syn = self.client_frame(flags='S', options=opts)
        rc, out = self.erb.xdp(syn)
        assert (rc, out) == (XDP_PASS, syn), 'SYN not passed untouched: %s' % XDP_NAMES.get(rc, rc)
        self.s_recent = self.c_tsval
        self.c_seq = (self.c_isn + 1) & M32
        self.s_ack = self.c_seq
        sopts = [('MSS', 1460), ('SAckOK', b''), ('WScale', 7)]
        if self.ts:
            sopts = [('MSS', 1460), ('SAckOK', b''), ('Timestamp', (self.s_tsval, self.c_tsval)),
                     ('NOP', None), ('WScale', 7)]
        synack = self.server_frame(flags='SA', options=sopts,
                                   window=self.s_win if synack_window is None else synack_window)
        rc, out = self.erb.tc(synack)
        assert (rc, out) == (TC_ACT_OK, synack), 'SYN-ACK not let through untouched'
        self.c_recent = self.s_tsval
        self.s_seq = (self.s_isn + 1) & M32
        self.c_ack = self.s_seq
        ack = self.client_frame(flags='A')
        rc, out = self.erb.xdp(ack)
        assert (rc, out) == (XDP_PASS, ack)
        self.s_recent = self.c_tsval
        return self

    def send(self, payload, **kw):
        """Client segment through XDP; the model follows the verdict.
        Returns (rc, out_frame); self.last = (rc, out, in)."""
        frame = self.client_frame(payload, **kw)
        rc, out = self.erb.xdp(frame)
        self.last = (rc, out, frame)
        in_order = kw.get('seq') is None or (kw['seq'] & M32) == self.c_seq
        if rc == XDP_PASS and in_order:
            self.c_seq = (self.c_seq + len(payload)) & M32
            self.s_ack = (self.s_ack + len(payload)) & M32
            self.s_recent = self.c_tsval
        elif rc == XDP_TX and in_order:
            self.c_seq = (self.c_seq + len(payload)) & M32
            rep = tcp_payload(out)
            self.c_ack = (self.c_ack + len(rep)) & M32
            self.answers += 1
        return rc, out

    def reply(self, payload, **kw):
        """Server segment through TC egress. Returns (rc, out_frame)."""
        frame = self.server_frame(payload, **kw)
        rc, out = self.erb.tc(frame)
        self.last = (rc, out, frame)
        if kw.get('seq') is None:
            self.s_seq = (self.s_seq + len(payload)) & M32
            self.c_ack = (self.c_ack + len(payload)) & M32
            self.c_recent = self.s_tsval
        return rc, out

    def command(self, payload, reply):
        """A command Redis executes: passed at XDP, its reply through TC."""
        rc, out = self.send(payload)
        assert rc == XDP_PASS, 'command %r not passed: %s' % (payload[:60], XDP_NAMES.get(rc, rc))
        rc, _unused = self.reply(reply)
        assert rc == TC_ACT_OK

    def set(self, key, value, reply=b'+OK\r\n'):
        self.command(resp(b'SET', key, value), reply)

    def get(self, key):
        return self.send(resp(b'GET', key))


# ------------------------------------------------------------------ SET fast path: erb_events ring, applied_seq
#
# Additions for the SET fast path tests (test_set_fast*.py, test_hold*.py).
# struct erb_record (files/bpf/erb_record.h) is mirrored here; the records are
# read straight from the BPF ring buffer's mmap, as the I/O agent does:
#   offset 0, one page, read-write: consumer_pos (u64, first 8 bytes);
#   offset one page, read-only: producer_pos page, then the data pages mapped
#   twice (a record that wraps reads contiguously).
# Each record: 8-byte header (u32 len | BUSY bit 31 | DISCARD bit 30, u32 pg_off),
# then len bytes; the next record starts at round_up(8 + len, 8).

import collections  # noqa: E402
import mmap  # noqa: E402

ERB_RECORD_VERSION = 1
ERB_OP_SET = 1
ERB_RECORD_HDR_SIZE = 24
BPF_RINGBUF_BUSY_BIT = 1 << 31
BPF_RINGBUF_DISCARD_BIT = 1 << 30
BPF_RINGBUF_HDR_SZ = 8


class ErbRecord(ctypes.Structure):
    """struct erb_record (erb_record.h)."""
    _fields_ = [
        ('version', ctypes.c_uint16),
        ('op', ctypes.c_uint8),
        ('flags', ctypes.c_uint8),
        ('klen', ctypes.c_uint16),
        ('vlen', ctypes.c_uint16),
        ('db', ctypes.c_uint32),
        ('pad', ctypes.c_uint32),
        ('seq', ctypes.c_uint64),
        ('key', ctypes.c_uint8 * L.ERB_KEY_MAX),
        ('val', ctypes.c_uint8 * L.ERB_VAL_MAX),
    ]


assert ErbRecord.key.offset == ERB_RECORD_HDR_SIZE

# One ring sample as read: header fields, the record fields, exact key/value bytes.
Sample = collections.namedtuple('Sample', 'pos length busy discarded version op flags klen vlen db pad seq key val')


class Ring(object):
    """Reader of a BPF_MAP_TYPE_RINGBUF map through its mmap (no libbpf)."""

    def __init__(self, fd, size):
        self.size = size
        self.page = mmap.PAGESIZE
        self.cons = mmap.mmap(fd, self.page, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                              offset=0)
        self.prod = mmap.mmap(fd, self.page + 2 * size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ,
                              offset=self.page)

    def close(self):
        self.cons.close()
        self.prod.close()

    @property
    def consumer_pos(self):
        return struct.unpack_from('=Q', self.cons, 0)[0]

    @consumer_pos.setter
    def consumer_pos(self, pos):
        struct.pack_into('=Q', self.cons, 0, pos)

    @property
    def producer_pos(self):
        return struct.unpack_from('=Q', self.prod, 0)[0]

    def pending_bytes(self):
        return self.producer_pos - self.consumer_pos

    def _sample(self, pos):
        off = self.page + (pos & (self.size - 1))
        hdr_len, _pg_off = struct.unpack_from('=II', self.prod, off)
        length = hdr_len & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT)
        data = bytes(self.prod[off + BPF_RINGBUF_HDR_SZ:off + BPF_RINGBUF_HDR_SZ + length])
        fields = dict(version=None, op=None, flags=None, klen=None, vlen=None, db=None, pad=None, seq=None,
                      key=None, val=None)
        if length >= ERB_RECORD_HDR_SIZE:
            (fields['version'], fields['op'], fields['flags'], fields['klen'], fields['vlen'], fields['db'],
             fields['pad'], fields['seq']) = struct.unpack_from('=HBBHHIIQ', data, 0)
            k0 = ErbRecord.key.offset
            v0 = ErbRecord.val.offset
            fields['key'] = data[k0:k0 + min(fields['klen'], L.ERB_KEY_MAX)]
            fields['val'] = data[v0:v0 + min(fields['vlen'], L.ERB_VAL_MAX)]
        return Sample(pos=pos, length=length, busy=bool(hdr_len & BPF_RINGBUF_BUSY_BIT),
                      discarded=bool(hdr_len & BPF_RINGBUF_DISCARD_BIT), **fields), \
            (BPF_RINGBUF_HDR_SZ + length + 7) & ~7

    def peek(self):
        """Every sample between the consumer and the producer (discarded ones included), not consumed."""
        out = []
        pos, end = self.consumer_pos, self.producer_pos
        while pos < end:
            s, step = self._sample(pos)
            out.append(s)
            if s.busy:
                break
            pos += step
        return out

    def _consume(self, take):
        """take(sample, pos) of each committed sample (discarded ones skipped) up to the first
        busy one; consumer_pos advanced."""
        out = []
        pos, end = self.consumer_pos, self.producer_pos
        while pos < end:
            s, step = self._sample(pos)
            if s.busy:
                break
            if not s.discarded:
                out.append(take(s, pos))
            pos += step
        self.consumer_pos = pos
        return out

    def consume(self):
        """Committed records (discarded ones skipped) up to the first busy one; consumer_pos advanced."""
        return self._consume(lambda s, pos: s)

    def skip_all(self):
        self.consumer_pos = self.producer_pos

    def consume_raw(self):
        """Like consume(), but the bytes of each sample."""
        def raw(s, pos):
            off = self.page + (pos & (self.size - 1)) + BPF_RINGBUF_HDR_SZ
            return bytes(self.prod[off:off + s.length])
        return self._consume(raw)


def _erb_map_fd(self, name):
    """fd of any map of the object (also those erb_layout.MAPS does not list)."""
    if name not in self.fds:
        self.fds[name] = self.obj.find_map(name).fd
    return self.fds[name]


def _erb_ring(self):
    """Ring reader of erb_events (created once per loaded object)."""
    r = getattr(self, '_ring', None)
    if r is None:
        r = self._ring = Ring(self.map_fd('erb_events'), self.obj.find_map('erb_events').max_entries)
    return r


def _erb_parked(self):
    """Consume erb_parked: the L.ErbPark of each segment parked since the last call."""
    r = getattr(self, '_parked_ring', None)
    if r is None:
        r = self._parked_ring = Ring(self.map_fd('erb_parked'), self.obj.find_map('erb_parked').max_entries)
    out = []
    for raw in r.consume_raw():
        assert len(raw) == ctypes.sizeof(L.ErbPark), 'erb_parked sample of %d bytes' % len(raw)
        out.append(L.ErbPark.from_buffer_copy(raw))
    return out


def _erb_records(self):
    """Consume and return the committed erb_events records."""
    return self.ring().consume()


def _erb_global_store(self, field, fmt, value):
    """One store into erb_global.field through the BPF_F_MMAPABLE mmap, as the
    I/O agent makes them (the other fields are left alone)."""
    fd = self.map_fd('erb_global')
    length = (ctypes.sizeof(L.ErbGlobal) + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
    mm = mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        struct.pack_into(fmt, mm, getattr(L.ErbGlobal, field).offset, value)
    finally:
        mm.close()


def _erb_set_applied(self, seq):
    """Publish erb_global.applied_seq as the I/O agent does: one 64-bit store."""
    _erb_global_store(self, 'applied_seq', '=Q', seq)


def _erb_set_cache_gen(self, gen):
    """erb_global.cache_gen = gen (an emptied cache)."""
    _erb_global_store(self, 'cache_gen', '=I', gen)


def _erb_end_untracked_quiet(self):
    """As if the last untracked write were long past: fast SETs and fills resume."""
    _erb_global_store(self, 'untracked_wr_ns', '=Q', 0)


def _erb_set_ordered_until(self, ns):
    """erb_global.ordered_until_ns = ns (erb_redis's lease; CLOCK_MONOTONIC, bpf_ktime_get_ns())."""
    _erb_global_store(self, 'ordered_until_ns', '=Q', ns)


def _erb_apply_all(self):
    """applied_seq = write_seq (the agent caught up)."""
    seq = self.glob().write_seq
    self.set_applied(seq)
    return seq


def _erb_u32(self, name, idx):
    v = ctypes.c_uint32()
    B.map_lookup(self.map_fd(name), ctypes.c_uint32(idx), v)
    return v.value


def _erb_set_u32(self, name, idx, value):
    B.map_update(self.map_fd(name), ctypes.c_uint32(idx), ctypes.c_uint32(value))


def _erb_reset_fast(self):
    """reset() plus what the SET fast path adds: erb_events consumed to the
    producer, erb_buckets (in reset()) and erb_wepoch zeroed."""
    self.reset()
    _zero_array(self.map_fd('erb_wepoch'), L.ERB_INFLIGHT_BUCKETS, 4)
    self.ring().skip_all()
    assert self.ring().pending_bytes() == 0


def live_entries(erb):
    """(slot, entry, key bytes, value bytes) of each live entry of the current generation,
    with exact key/value bytes (NULs included: the c_char fields of erb_layout.ErbEntry stop
    at the first NUL). The entry object is reused: take what you need before the next one."""
    gen = erb.glob().cache_gen
    e = L.ErbEntry()
    koff, voff = L.ErbEntry.key.offset, L.ErbEntry.val.offset
    for i in range(erb.config['cache_entries']):
        B.map_lookup(erb.fds['erb_cache'], ctypes.c_uint32(i), e)
        if e.state == L.ERB_ENTRY_VALID and e.gen == gen:
            raw = ctypes.string_at(ctypes.addressof(e), ctypes.sizeof(e))
            yield i, e, raw[koff:koff + e.klen], raw[voff:voff + e.vlen]


def _erb_cache_entries_raw(self):
    """Like cache_entries(), with exact key/value bytes."""
    return {key: val for _unused, e, key, val in live_entries(self)}


def _erb_cache_wseq(self):
    """{key bytes: wseq} of the live entries."""
    gen = self.glob().cache_gen
    out = {}
    e = L.ErbEntry()
    koff = L.ErbEntry.key.offset
    for i in range(self.config['cache_entries']):
        B.map_lookup(self.fds['erb_cache'], ctypes.c_uint32(i), e)
        if e.state == L.ERB_ENTRY_VALID and e.gen == gen:
            raw = ctypes.string_at(ctypes.addressof(e), ctypes.sizeof(e))
            out[raw[koff:koff + e.klen]] = e.wseq
    return out


Erb.cache_entries_raw = _erb_cache_entries_raw
Erb.cache_wseq = _erb_cache_wseq
Erb.map_fd = _erb_map_fd
Erb.ring = _erb_ring
Erb.records = _erb_records
Erb.parked = _erb_parked
Erb.set_applied = _erb_set_applied
Erb.set_cache_gen = _erb_set_cache_gen
Erb.end_untracked_quiet = _erb_end_untracked_quiet
Erb.apply_all = _erb_apply_all
Erb.set_ordered_until = _erb_set_ordered_until
Erb.u32 = _erb_u32
Erb.set_u32 = _erb_set_u32
Erb.reset_fast = _erb_reset_fast


def verify_hash(erb, key):
    """What erb-agent does once PTTL key is -1: ERB_TYPE_HASH_UNVERIFIED -> ERB_TYPE_HASH,
    ERB_TYPE_STRING_UNVERIFIED (a GET fill) -> ERB_TYPE_STRING."""
    verified = {L.ERB_TYPE_HASH_UNVERIFIED: L.ERB_TYPE_HASH, L.ERB_TYPE_STRING_UNVERIFIED: L.ERB_TYPE_STRING}
    for slot, e, k, _val in live_entries(erb):
        if e.type in verified and k == key:
            e.type = verified[e.type]
            B.map_update(erb.fds['erb_cache'], ctypes.c_uint32(slot), e)
            return True
    return False


verify_fill = verify_hash
