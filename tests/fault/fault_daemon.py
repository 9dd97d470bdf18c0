# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fault injector for one test-fleet host, run inside the client's namespace erb-c<i>
(``ip netns exec erb-c<i> python3 fault_daemon.py --index i``); fault_harness.FaultLink
starts it and talks to it. Not for use on its own.

What it does while it runs:
- loads tests/fault/fault.bpf.o with libbpf (plugins/module_utils/libbpf.py) and attaches
  fault_egress / fault_ingress to erbc<i> with tcx links, fault_return to the delay line's
  kernel end; the links belong to this process and go away with it, even on SIGKILL;
- makes the delay line: a veth pair erbfd<i> (kernel end) / erbfu<i> (this process reads
  it with AF_PACKET, holds each frame, fixes its TCP checksum and writes it back);
- turns GSO, TSO and GRO off on erbc<i> (one skb = one segment, so rates are per segment)
  and puts them back when it stops.

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout.
  {"op": "set", "c2s": {...}, "s2c": {...}}  knobs per direction (missing ones are 0):
      loss, dup, reorder (probabilities 0..1), reorder_ms (hold of a reordered segment,
      default 10), delay_ms (every segment held this long), jitter_ms (plus 0..jitter)
  {"op": "stats"}   counters: per direction seen/dropped/duplicated/detoured/returned/
                    errors (BPF), held/sent/holding (delay line), overflow (frames the
                    delay line's socket dropped, both directions together)
  {"op": "quit"}    stop (also on EOF or SIGTERM): held frames are sent, links closed,
                    offloads restored, the delay line deleted
"""

import argparse
import array
import ctypes
import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, 'plugins', 'module_utils'))

import libbpf  # noqa: E402  (plugins/module_utils/libbpf.py)

FAULT_MARK = 0xfa017
DIRS = ('c2s', 's2c')
STATS = ('seen', 'dropped', 'duplicated', 'detoured', 'returned', 'errors')
KNOBS = ('loss', 'dup', 'reorder', 'reorder_ms', 'delay_ms', 'jitter_ms')
OFFLOADS = ('generic-segmentation-offload', 'tcp-segmentation-offload', 'generic-receive-offload')
OFFLOAD_ARGS = {'generic-segmentation-offload': 'gso', 'tcp-segmentation-offload': 'tso',
                'generic-receive-offload': 'gro'}
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6
SCALE = 1 << 32


class FaultDir(ctypes.Structure):
    _fields_ = [('loss', ctypes.c_uint64), ('dup', ctypes.c_uint64), ('detour', ctypes.c_uint64)]


class FaultCfg(ctypes.Structure):
    """struct fault_cfg of fault.h."""
    _fields_ = [('dir', FaultDir * 2), ('client_ifindex', ctypes.c_uint32),
                ('detour_ifindex', ctypes.c_uint32), ('client_mac', ctypes.c_uint8 * 6),
                ('port', ctypes.c_uint16)]


def sh(*cmd, check=True):
    p = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if check and p.returncode != 0:
        raise RuntimeError('%s: %s' % (' '.join(cmd), p.stderr.strip()))
    return p.stdout


def ifindex(name):
    return socket.if_nametoindex(name)


def mac_of(name):
    with open('/sys/class/net/%s/address' % name) as f:
        return bytes.fromhex(f.read().strip().replace(':', ''))


def offloads(dev):
    """{ethtool feature name: 'on'/'off'} for the features this daemon changes."""
    out = {}
    for line in sh('ethtool', '-k', dev).splitlines():
        name, _unused, rest = line.partition(':')
        if name.strip() in OFFLOADS:
            out[name.strip()] = rest.split()[0]
    return out


def set_offloads(dev, state):
    args = []
    for name, val in state.items():
        args += [OFFLOAD_ARGS[name], val]
    if args:
        sh('ethtool', '-K', dev, *args, check=False)


def fold(s):
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s


def fix_tcp_checksum(frame):
    """The frame with its IPv4 TCP checksum recomputed (frames taken at erbc<i>'s ingress
    can carry a partial one: Redis's end offloads it)."""
    if len(frame) < 34 or frame[12:14] != b'\x08\x00' or frame[23] != 6:
        return frame
    ihl = (frame[14] & 0x0f) * 4
    tot = struct.unpack_from('!H', frame, 16)[0]
    seg_start, seg_end = 14 + ihl, 14 + tot
    if seg_end > len(frame) or seg_end - seg_start < 20:
        return frame
    b = bytearray(frame[:seg_end])
    b[seg_start + 16:seg_start + 18] = b'\0\0'
    data = bytes(b[26:34]) + struct.pack('!BBH', 0, 6, seg_end - seg_start) + bytes(b[seg_start:seg_end])
    if len(data) % 2:
        data += b'\0'
    s = fold(sum(array.array('H', data)))
    struct.pack_into('H', b, seg_start + 16, ~s & 0xffff)
    return bytes(b) + frame[seg_end:]


def ip_checksum(hdr):
    """The IPv4 header checksum of hdr (its checksum field taken as zero)."""
    data = bytes(hdr[:10]) + b'\0\0' + bytes(hdr[12:])
    return ~fold(sum(array.array('H', data))) & 0xffff


def segments(frame, mtu=1500):
    """The frame as it would leave a link of this MTU: a TCP/IPv4 frame taken before
    segmentation (a GSO packet: the detour's TC hook runs before it) is cut into MSS-sized
    segments (seq, IP id and lengths advanced, PSH and FIN on the last only), since the
    detour's socket refuses anything over the MTU and the frame would be lost."""
    if len(frame) - 14 <= mtu or len(frame) < 34 or frame[12:14] != b'\x08\x00' or frame[23] != 6:
        return [frame]
    ihl = (frame[14] & 0x0f) * 4
    t = 14 + ihl
    thl = (frame[t + 12] >> 4) * 4
    tot = struct.unpack_from('!H', frame, 16)[0] or len(frame) - 14
    payload = frame[t + thl:14 + tot]
    mss = mtu - ihl - thl
    if mss <= 0 or not payload:
        return [frame]
    ip_id, seq = struct.unpack_from('!H', frame, 18)[0], struct.unpack_from('!I', frame, t + 4)[0]
    out = []
    for i, off in enumerate(range(0, len(payload), mss)):
        chunk = payload[off:off + mss]
        last = off + mss >= len(payload)
        f = bytearray(frame[:t + thl]) + chunk
        struct.pack_into('!H', f, 16, ihl + thl + len(chunk))
        struct.pack_into('!H', f, 18, (ip_id + i) & 0xffff)
        struct.pack_into('H', f, 24, ip_checksum(f[14:t]))
        struct.pack_into('!I', f, t + 4, (seq + off) & 0xffffffff)
        if not last:
            f[t + 13] &= ~0x09 & 0xff  # PSH, FIN
        out.append(bytes(f))
    return out


class Daemon(object):
    def __init__(self, index, obj_path, port):
        self.index = index
        self.client = 'erbc%d' % index
        self.detour_k = 'erbfd%d' % index
        self.detour_u = 'erbfu%d' % index
        self.obj_path = obj_path
        self.port = port
        self.obj = None
        self.links = []
        self.saved_offloads = None
        self.sock = None
        self.held = []          # heap of (release time, n, frame)
        self.n = 0
        self.knobs = {d: dict.fromkeys(KNOBS, 0) for d in DIRS}
        self.user = {d: {'held': 0, 'sent': 0} for d in DIRS}
        self.client_mac = None
        self.overflow = 0

    # -- set-up / tear-down
    def start(self):
        sh('ip', 'link', 'del', self.detour_k, check=False)  # left by a killed daemon
        sh('ip', 'link', 'add', self.detour_k, 'type', 'veth', 'peer', 'name', self.detour_u)
        for dev in (self.detour_k, self.detour_u):
            sh('sysctl', '-qw', 'net.ipv6.conf.%s.disable_ipv6=1' % dev, check=False)
            sh('ip', 'link', 'set', dev, 'up')
        self.saved_offloads = offloads(self.client)
        set_offloads(self.client, {k: 'off' for k in self.saved_offloads})
        self.client_mac = mac_of(self.client)
        self.obj = libbpf.BpfObject(self.obj_path)
        self.obj.load()
        self.cfg_fd = self.obj.find_map('fault_cfg').fd
        self.stats_fd = self.obj.find_map('fault_stats').fd
        self.write_cfg()
        ci, di = ifindex(self.client), ifindex(self.detour_k)
        for prog, dev, point in (('fault_return', di, libbpf.BPF_TCX_INGRESS),
                                 ('fault_egress', ci, libbpf.BPF_TCX_EGRESS),
                                 ('fault_ingress', ci, libbpf.BPF_TCX_INGRESS)):
            self.links.append(libbpf.link_create_tcx(self.obj.program_fd(prog), dev, point))
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((self.detour_u, ETH_P_ALL))
        self.sock.setblocking(False)

    def stop(self):
        if self.sock is not None:
            while self.held:  # nothing held back is lost by stopping
                self.send(heapq.heappop(self.held))
            self.sock.close()
            self.sock = None
        for fd in self.links:
            libbpf.close_fd(fd)
        self.links = []
        if self.obj is not None:
            self.obj.close()
            self.obj = None
        if self.saved_offloads:
            set_offloads(self.client, self.saved_offloads)
            self.saved_offloads = None
        sh('ip', 'link', 'del', self.detour_k, check=False)

    # -- configuration and counters
    def write_cfg(self):
        c = FaultCfg()
        for i, d in enumerate(DIRS):
            k = self.knobs[d]
            c.dir[i].loss = int(min(1.0, k['loss']) * SCALE)
            c.dir[i].dup = int(min(1.0, k['dup']) * SCALE)
            c.dir[i].detour = SCALE if k['delay_ms'] > 0 else int(min(1.0, k['reorder']) * SCALE)
        c.client_ifindex = ifindex(self.client)
        c.detour_ifindex = ifindex(self.detour_k)
        c.client_mac[:] = list(self.client_mac)
        c.port = socket.htons(self.port)
        libbpf.map_update(self.cfg_fd, ctypes.c_uint32(0), c)

    def set(self, req):
        knobs = {}
        for d in DIRS:
            given = req.get(d) or {}
            unknown = set(given) - set(KNOBS)
            if unknown:
                raise ValueError('unknown knob(s) for %s: %s' % (d, ', '.join(sorted(unknown))))
            k = dict.fromkeys(KNOBS, 0)
            k['reorder_ms'] = 10
            k.update({n: float(v) for n, v in given.items()})
            for n in ('loss', 'dup', 'reorder'):
                if not 0 <= k[n] <= 1:
                    raise ValueError('%s.%s must be within 0..1, got %r' % (d, n, k[n]))
            for n in ('reorder_ms', 'delay_ms', 'jitter_ms'):
                if k[n] < 0:
                    raise ValueError('%s.%s must be >= 0, got %r' % (d, n, k[n]))
            if k['delay_ms'] > 0 and k['reorder'] > 0:
                raise ValueError('%s: reorder and delay_ms together are not supported (delay_ms with '
                                 'jitter_ms reorders)' % d)
            knobs[d] = k
        self.knobs = knobs
        self.write_cfg()
        return {'knobs': knobs}

    def stats(self):
        ncpu = libbpf.num_possible_cpus()
        val = (ctypes.c_uint64 * ncpu)()
        out = {}
        for i, d in enumerate(DIRS):
            out[d] = {}
            for j, name in enumerate(STATS):
                libbpf.map_lookup(self.stats_fd, ctypes.c_uint32(i * len(STATS) + j), val)
                out[d][name] = sum(val)
            out[d].update(self.user[d])
            out[d]['holding'] = sum(1 for h in self.held if h[3] == d)
        # frames the delay line's socket could not take (its buffer full): lost, either direction
        self.overflow += struct.unpack('II', self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
        for d in DIRS:
            out[d]['overflow'] = self.overflow
        return {'stats': out, 'knobs': self.knobs}

    # -- delay line
    def hold_ms(self, d):
        k = self.knobs[d]
        base = k['delay_ms'] if k['delay_ms'] > 0 else k['reorder_ms']
        return base + (random.uniform(0, k['jitter_ms']) if k['jitter_ms'] else 0)

    def receive(self):
        while True:
            try:
                frame, addr = self.sock.recvfrom(65536)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            d = 's2c' if frame[0:6] == self.client_mac else 'c2s'
            self.n += 1
            self.user[d]['held'] += 1
            heapq.heappush(self.held, (time.monotonic() + self.hold_ms(d) / 1000.0, self.n, frame, d))

    def send(self, item):
        frame, d = item[2], item[3]
        try:
            for seg in segments(frame):
                self.sock.send(fix_tcp_checksum(seg))
            self.user[d]['sent'] += 1
        except OSError as e:
            sys.stderr.write('fault_daemon: send: %s\n' % e)

    def release(self):
        now = time.monotonic()
        while self.held and self.held[0][0] <= now:
            self.send(heapq.heappop(self.held))

    def handle(self, line):
        try:
            req = json.loads(line)
            op = req.get('op')
            if op == 'set':
                rep = self.set(req)
            elif op == 'stats':
                rep = self.stats()
            elif op == 'quit':
                return None
            else:
                raise ValueError('unknown op %r' % op)
            rep['ok'] = True
        except Exception as e:  # a bad request is answered, never fatal
            rep = {'ok': False, 'error': '%s: %s' % (type(e).__name__, e)}
        return rep

    def run(self):
        stdin = sys.stdin.buffer
        buf = b''
        reply({'ok': True, 'ready': True, 'client': self.client, 'detour': [self.detour_k, self.detour_u]})
        while True:
            timeout = max(0.0, self.held[0][0] - time.monotonic()) if self.held else 1.0
            r, _unused, _unused = select.select([self.sock, stdin], [], [], timeout)
            if self.sock in r:
                self.receive()
            self.release()
            if stdin in r:
                chunk = os.read(stdin.fileno(), 65536)
                if not chunk:
                    return
                buf += chunk
                while b'\n' in buf:
                    line, buf = buf.split(b'\n', 1)
                    if not line.strip():
                        continue
                    rep = self.handle(line)
                    if rep is None:
                        return
                    reply(rep)


def reply(obj):
    sys.stdout.write(json.dumps(obj) + '\n')
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--index', type=int, required=True)
    ap.add_argument('--object', default=os.path.join(HERE, 'fault.bpf.o'))
    ap.add_argument('--port', type=int, default=6379)
    a = ap.parse_args()
    d = Daemon(a.index, a.object, a.port)

    def term(*_unused):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, term)
    try:
        d.start()
        d.run()
    except Exception as e:
        reply({'ok': False, 'error': '%s: %s' % (type(e).__name__, e)})
        raise
    finally:
        d.stop()


if __name__ == '__main__':
    main()
