# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers for the erb-agent tests: a private bpffs with the agent's maps
(from erb_agent_test.bpf.o, loaded through libbpf.so.1 with ctypes), a record
producer run with BPF_PROG_TEST_RUN, mmapped views of erb_global and
erb_cache, a redis-server on a unix socket, and the agent process."""

import ctypes
import functools
import json
import mmap
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import redis

# pid_alive is used as agentlib.pid_alive
from erb_conftest import pid_alive, wait_for as _wait_for  # noqa: E402  # pylint: disable=unused-import

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / 'tests' / 'loader'))
from collection_path import ensure_collection_path  # noqa: E402

ensure_collection_path()
# the shared layout's Python mirror (checked against erb.h by tests/unit/test_layout.py)
from ansible_collections.erb.booster.plugins.module_utils import erb_layout as L  # noqa: E402
AGENT_DIR = REPO / 'files' / 'agent'
AGENT_BIN = AGENT_DIR / 'erb-agent'
BPF_INC = REPO / 'files' / 'bpf'
TEST_BPF_SRC = HERE / 'erb_agent_test.bpf.c'

KEY_MAX = 256
VAL_MAX = 1400
MAX_PROBES = 8
CACHE_ENTRIES = 1024
HASH_PRIME = 1021            # largest prime < 1024, as erb_loader.hash_prime()
ENTRY_SIZE = ctypes.sizeof(L.ErbEntry)     # sizeof(struct erb_entry)
KEY_OFF = L.ErbEntry.key.offset             # where its key (then its value) starts
VAL_OFF = L.ErbEntry.val.offset
GLOBAL_SIZE = ctypes.sizeof(L.ErbGlobal)   # sizeof(struct erb_global)
ENTRY_EMPTY, ENTRY_VALID, ENTRY_TOMB = 0, 1, 2
TYPE_STRING, TYPE_HASH, TYPE_HASH_UNVERIFIED, TYPE_STRING_UNVERIFIED = 0, 1, 2, 3


INFLIGHT_BUCKETS = 65536
BPF_MAP_TYPE_ARRAY = 2
META_SIZE = 4096

# struct erb_global offsets, from the layout's mirror
G_CACHE_GEN, G_CTL, G_WRITE_SEQ, G_APPLIED_SEQ = (L.ErbGlobal.cache_gen.offset, L.ErbGlobal.ctl.offset,
                                                  L.ErbGlobal.write_seq.offset, L.ErbGlobal.applied_seq.offset)
G_FILLQ_HEAD, G_FILLQ = L.ErbGlobal.fillq_head.offset, L.ErbGlobal.fillq.offset
CTL_KMOD = 1 << 1            # ERB_CTL_KMOD: erb_io owns applied_seq
# struct erb_entry: lock ver state type hash gen klen vlen wseq (ref pad) key val
ENTRY_HDR = struct.Struct('<IIHHIIHHQ')


# tests/conftest.py's helpers (imported under this name, see there); the agent's
# tests poll faster than the fleet's.
wait_for = functools.partial(_wait_for, interval=0.02)


def fnv1a(data):
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xffffffff
    return h


def tag_of(h):
    """The erb_tags byte of a key hash (erb_cache.h hash_tag())."""
    return (h >> 24) or 1


def slot_of(h, i):
    return (h + i * (1 + h % HASH_PRIME)) % CACHE_ENTRIES


def build_test_object(out_dir):
    obj = Path(out_dir) / 'erb_agent_test.bpf.o'
    arch_inc = '/usr/include/%s-linux-gnu' % os.uname().machine
    subprocess.run(['clang', '-g', '-O2', '-target', 'bpf', '-mcpu=v3', '-Wall', '-Werror',
                    '-I' + arch_inc, '-I' + str(BPF_INC), '-c', str(TEST_BPF_SRC), '-o', str(obj)],
                   check=True, capture_output=True, text=True)
    return obj


class _TestRunOpts(ctypes.Structure):
    _fields_ = [('sz', ctypes.c_size_t), ('data_in', ctypes.c_void_p), ('data_out', ctypes.c_void_p),
                ('data_size_in', ctypes.c_uint32), ('data_size_out', ctypes.c_uint32),
                ('ctx_in', ctypes.c_void_p), ('ctx_out', ctypes.c_void_p),
                ('ctx_size_in', ctypes.c_uint32), ('ctx_size_out', ctypes.c_uint32),
                ('retval', ctypes.c_uint32), ('repeat', ctypes.c_int), ('duration', ctypes.c_uint32),
                ('flags', ctypes.c_uint32), ('cpu', ctypes.c_uint32), ('batch_size', ctypes.c_uint32)]


class _TestIn(ctypes.Structure):
    _fields_ = [('seq', ctypes.c_uint64), ('db', ctypes.c_uint32), ('klen', ctypes.c_uint16),
                ('vlen', ctypes.c_uint16), ('key', ctypes.c_char * KEY_MAX), ('val', ctypes.c_char * VAL_MAX)]


def _libbpf():
    lib = ctypes.CDLL('libbpf.so.1', use_errno=True)
    P = ctypes.c_void_p
    for name, res, args in [
        ('bpf_object__open_file', P, [ctypes.c_char_p, P]),
        ('bpf_object__load', ctypes.c_int, [P]),
        ('bpf_object__find_map_by_name', P, [P, ctypes.c_char_p]),
        ('bpf_object__find_program_by_name', P, [P, ctypes.c_char_p]),
        ('bpf_map__pin', ctypes.c_int, [P, ctypes.c_char_p]),
        ('bpf_map__fd', ctypes.c_int, [P]),
        ('bpf_program__fd', ctypes.c_int, [P]),
        ('bpf_object__close', None, [P]),
        ('bpf_map_create', ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                                          ctypes.c_uint32, P]),
        ('bpf_map_update_elem', ctypes.c_int, [ctypes.c_int, P, P, ctypes.c_uint64]),
        ('bpf_obj_pin', ctypes.c_int, [ctypes.c_int, ctypes.c_char_p]),
        ('bpf_prog_test_run_opts', ctypes.c_int, [ctypes.c_int, P]),
        ('bpf_map_lookup_elem', ctypes.c_int, [ctypes.c_int, P, P]),
        ('libbpf_num_possible_cpus', ctypes.c_int, []),
    ]:
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    return lib


class BpfEnv(object):
    """The maps in a private bpffs, pinned like erb_loader does, and the producer."""

    def __init__(self, obj_path, root, meta_config=None):
        self.lib = _libbpf()
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(['mount', '-t', 'bpf', 'bpf', str(self.root)], check=True)
        self.obj = None
        try:
            self._setup(obj_path, meta_config)
        except BaseException:
            if self.obj:
                self.lib.bpf_object__close(self.obj)
            subprocess.run(['umount', str(self.root)], check=False)
            raise

    def _setup(self, obj_path, meta_config):
        self.pin_dir = self.root / 'erb' / 'host' / 'lo'
        self.pin_dir.mkdir(parents=True)
        self.obj = self.lib.bpf_object__open_file(str(obj_path).encode(), None)
        if not self.obj:
            raise OSError(ctypes.get_errno(), 'bpf_object__open_file %s' % obj_path)
        if self.lib.bpf_object__load(self.obj):
            raise OSError(ctypes.get_errno(), 'bpf_object__load %s' % obj_path)
        self.fds = {}
        for name in ('erb_events', 'erb_global', 'erb_cache', 'erb_tags', 'erb_wepoch', 'erb_stats'):
            m = self.lib.bpf_object__find_map_by_name(self.obj, name.encode())
            if self.lib.bpf_map__pin(m, str(self.pin_dir / ('map_' + name)).encode()):
                raise OSError(ctypes.get_errno(), 'pin %s' % name)
            self.fds[name] = self.lib.bpf_map__fd(m)
        prog = self.lib.bpf_object__find_program_by_name(self.obj, b'erb_test_produce')
        self.prog_fd = self.lib.bpf_program__fd(prog)
        self._write_meta(meta_config or {'cache_entries': CACHE_ENTRIES, 'redis_port': 6379})
        self.glob = mmap.mmap(self.fds['erb_global'], mmap.PAGESIZE, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        self.cache = mmap.mmap(self.fds['erb_cache'], CACHE_ENTRIES * ENTRY_SIZE, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE)
        self.tags = mmap.mmap(self.fds['erb_tags'], CACHE_ENTRIES, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        self.wepochs = mmap.mmap(self.fds['erb_wepoch'], INFLIGHT_BUCKETS * 4, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
        self._in = _TestIn()
        self._opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), ctx_in=ctypes.addressof(self._in),
                                  ctx_size_in=ctypes.sizeof(_TestIn))

    def _write_meta(self, config):
        meta = json.dumps({'version': 1, 'layout_version': 1, 'ifname': 'lo', 'netns': 'host',
                           'object': {'path': 'tests/agent', 'sha256': '0'}, 'config': config},
                          sort_keys=True, separators=(',', ':')).encode()
        fd = self.lib.bpf_map_create(BPF_MAP_TYPE_ARRAY, b'erb_meta', 4, META_SIZE, 1, None)
        if fd < 0:
            raise OSError(ctypes.get_errno(), 'bpf_map_create meta')
        key = ctypes.c_uint32(0)
        val = ctypes.create_string_buffer(meta, META_SIZE)
        if self.lib.bpf_map_update_elem(fd, ctypes.byref(key), val, 0):
            raise OSError(ctypes.get_errno(), 'meta update')
        if self.lib.bpf_obj_pin(fd, str(self.pin_dir / 'meta').encode()):
            raise OSError(ctypes.get_errno(), 'meta pin')
        os.close(fd)

    def close(self):
        self.glob.close()
        self.cache.close()
        self.tags.close()
        self.wepochs.close()
        self.lib.bpf_object__close(self.obj)
        subprocess.run(['umount', str(self.root)], check=False)

    # -- producer
    def produce(self, key, val, db=0, seq=0):
        """Queue one record; False when the ring is full."""
        # bytes past klen / vlen are not the record's: erb_xdp copies only klen and vlen
        # bytes into the ring, so a slot holds an older record's there; consumers must not read them
        ctypes.memset(ctypes.addressof(self._in), 0xa5, ctypes.sizeof(_TestIn))
        self._in.seq, self._in.db, self._in.klen, self._in.vlen = seq, db, len(key), len(val)
        ctypes.memmove(ctypes.addressof(self._in) + _TestIn.key.offset, key, len(key))
        ctypes.memmove(ctypes.addressof(self._in) + _TestIn.val.offset, val, len(val))
        if self.lib.bpf_prog_test_run_opts(self.prog_fd, ctypes.byref(self._opts)):
            raise OSError(ctypes.get_errno(), 'BPF_PROG_TEST_RUN')
        if self._opts.retval == 2:
            raise ValueError('bad record input')
        return self._opts.retval == 0

    def produce_wait(self, key, val, db=0, seq=0, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not self.produce(key, val, db, seq):
            if time.monotonic() > deadline:
                raise AssertionError('ring stayed full for %.0f s (agent not draining?)' % timeout)
            time.sleep(0.002)

    # -- erb_global
    def _g64(self, off):
        return struct.unpack_from('<Q', self.glob, off)[0]

    @property
    def applied_seq(self):
        return self._g64(G_APPLIED_SEQ)

    @property
    def write_seq(self):
        return self._g64(G_WRITE_SEQ)

    @write_seq.setter
    def write_seq(self, v):
        struct.pack_into('<Q', self.glob, G_WRITE_SEQ, v)

    @property
    def cache_gen(self):
        return struct.unpack_from('<I', self.glob, G_CACHE_GEN)[0]

    # -- erb_global.fillq
    @property
    def fillq_head(self):
        return struct.unpack_from('<I', self.glob, G_FILLQ_HEAD)[0]

    def queue_fill(self, slot, head=None):
        """Queue slot for the agent's TTL check, as erb.bpf.c's fillq_push() does after a
        GET or HGETALL fill: fill i (fillq_head, or head) at fillq[i % ERB_FILLQ] = i << 32 | slot."""
        i = self.fillq_head if head is None else head
        struct.pack_into('<Q', self.glob, G_FILLQ + (i % L.ERB_FILLQ) * 8, (i & 0xffffffff) << 32 | slot)
        struct.pack_into('<I', self.glob, G_FILLQ_HEAD, (i + 1) & 0xffffffff)

    # -- erb_wepoch
    def wepoch(self, key):
        """The write epoch of key's bucket (fnv1a(key) mod the bucket count)."""
        return struct.unpack_from('<I', self.wepochs, (fnv1a(key) % INFLIGHT_BUCKETS) * 4)[0]

    # -- erb_cache
    def entry(self, idx):
        lock, ver, state, typ, h, gen, klen, vlen, wseq = ENTRY_HDR.unpack_from(self.cache, idx * ENTRY_SIZE)
        base = idx * ENTRY_SIZE
        return {'lock': lock, 'ver': ver, 'state': state, 'type': typ, 'hash': h, 'gen': gen, 'wseq': wseq,
                'key': bytes(self.cache[base + KEY_OFF:base + KEY_OFF + klen]),
                'val': bytes(self.cache[base + VAL_OFF:base + VAL_OFF + vlen])}

    def cache_put(self, key, val, wseq=0, typ=TYPE_STRING):
        """Store key like erb.bpf.c cache_store(): its live slot, else the first free one."""
        h, gen = fnv1a(key), self.cache_gen
        free = None
        for i in range(MAX_PROBES):
            idx = slot_of(h, i)
            e = self.entry(idx)
            live = e['state'] == ENTRY_VALID and e['gen'] == gen
            if live and e['hash'] == h and e['key'] == key:
                free = idx
                break
            if not live and free is None:
                free = idx
            if e['state'] == ENTRY_EMPTY:      # only a never-written slot ends the chain
                break
        assert free is not None, 'no free slot for %r' % key
        self.tags[free] = tag_of(h)            # the tag first, as entry_write() does
        off = free * ENTRY_SIZE
        ver = self.entry(free)['ver']
        struct.pack_into('<I', self.cache, off + 4, ver + 1)
        keyb = key.ljust(KEY_MAX, b'\0')
        self.cache[off + KEY_OFF:off + KEY_OFF + KEY_MAX] = keyb
        self.cache[off + VAL_OFF:off + VAL_OFF + len(val)] = val
        ENTRY_HDR.pack_into(self.cache, off, 0, ver + 1, ENTRY_VALID, typ, h, gen, len(key), len(val), wseq)
        struct.pack_into('<I', self.cache, off + 4, ver + 2)
        return free

    def cache_entry(self, key):
        """key's live entry (a dict, see entry()), or None."""
        h, gen = fnv1a(key), self.cache_gen
        for i in range(MAX_PROBES):
            e = self.entry(slot_of(h, i))
            if e['state'] == ENTRY_EMPTY or e['gen'] != gen:
                return None
            if e['state'] == ENTRY_VALID and e['hash'] == h and e['key'] == key:
                return e
        return None

    def cache_state(self, key):
        """'valid' when key has a live entry, else 'gone'."""
        return 'gone' if self.cache_entry(key) is None else 'valid'


class RedisProc(object):
    """redis-server on a unix socket, AOF with appendfsync always."""

    def __init__(self, d):
        self.dir = Path(d)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / 'redis.sock'
        self.proc = None
        self.extra = []       # more redis-server options

    def start(self):
        self.proc = subprocess.Popen(
            ['redis-server', '--port', '0', '--unixsocket', str(self.sock), '--unixsocketperm', '700',
             '--dir', str(self.dir), '--appendonly', 'yes', '--appendfsync', 'always', '--save', '',
             '--logfile', str(self.dir / 'redis.log'), '--daemonize', 'no'] + list(self.extra),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._pong, timeout=20, what='redis-server to answer PING')
        return self

    def _pong(self):
        if self.proc.poll() is not None:
            raise AssertionError('redis-server exited: %s' % (self.dir / 'redis.log').read_text()[-2000:])
        try:
            return self.client().ping()
        except redis.exceptions.RedisError:
            return False

    def client(self, db=0):
        return redis.Redis(unix_socket_path=str(self.sock), db=db, socket_timeout=10)

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)

    def stop(self):
        self.kill(signal.SIGTERM)

    def aof_commands(self):
        """Every command in the AOF (multi-part: base + incr files), as lists of bytes."""
        manifest = self.dir / 'appendonlydir'
        files = sorted(manifest.glob('*.base.aof')) + sorted(manifest.glob('*.incr.aof'),
                                                             key=lambda p: int(p.name.split('.')[-3]))
        cmds = []
        for f in files:
            cmds.extend(parse_resp_commands(f.read_bytes()))
        return cmds


def parse_resp_commands(data):
    cmds, i = [], 0
    while i < len(data):
        assert data[i:i + 1] == b'*', 'AOF not RESP at %d' % i
        j = data.index(b'\r\n', i)
        n = int(data[i + 1:j])
        i = j + 2
        args = []
        for _unused in range(n):
            j = data.index(b'\r\n', i)
            ln = int(data[i + 1:j])
            args.append(data[j + 2:j + 2 + ln])
            i = j + 2 + ln + 2
        cmds.append(args)
    return cmds


class Agent(object):
    def __init__(self, pin_dir, sock, d, batch=256, extra=()):
        self.d = Path(d)
        self.stats = self.d / 'stats.json'
        self.log = self.d / 'agent.log'
        self.pidfile = self.d / 'agent.pid'
        self.args = [str(AGENT_BIN), '--pin-dir', str(pin_dir), '--redis-sock', str(sock),
                     '--batch', str(batch), '--stats-file', str(self.stats), '--pidfile', str(self.pidfile),
                     '--log-file', str(self.log), '--foreground'] + list(extra)
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def read_stats(self):
        try:
            return json.loads(self.stats.read_text())
        except (OSError, ValueError):
            return None

    def log_text(self):
        return self.log.read_text() if self.log.exists() else ''


def _resp_commands_in(buf):
    """How many complete RESP commands buf starts with, and their length in bytes."""
    n, i = 0, 0
    try:
        while i < len(buf):
            j = buf.index(b'\r\n', i)
            if buf[i:i + 1] != b'*':
                raise ValueError('not RESP')
            argc, k = int(buf[i + 1:j]), j + 2
            for _ignored in range(argc):
                e = buf.index(b'\r\n', k)
                k = e + 2 + int(buf[k + 1:e]) + 2
                if k > len(buf):
                    raise IndexError
            n, i = n + 1, k
    except (IndexError, ValueError):
        pass
    return n, i


class LoadingFront(object):
    """A unix socket in front of a real Redis that answers every command with -LOADING (what
    Redis answers while it loads its dataset after a restart) until release(); from then on each
    connection is piped to Redis, its unanswered bytes first."""

    LOADING = b'-LOADING Redis is loading the dataset in memory\r\n'

    def __init__(self, path, upstream):
        import socket
        import threading
        self.path, self.upstream = str(path), str(upstream)
        self.loading = threading.Event()
        self.loading.set()
        self.refused = 0
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        self.srv.listen(16)
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while True:
            try:
                c, _ignored = self.srv.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        import socket
        import threading
        buf = b''
        c.settimeout(0.05)
        try:
            while self.loading.is_set():
                try:
                    data = c.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    return
                buf += data
                n, used = _resp_commands_in(buf)
                buf = buf[used:]
                self.refused += n
                c.sendall(self.LOADING * n)
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.connect(self.upstream)
            self.conns.append(up)
            c.settimeout(None)
            if buf:
                up.sendall(buf)

            def pipe(a, b):
                try:
                    while True:
                        d = a.recv(65536)
                        if not d:
                            break
                        b.sendall(d)
                except OSError:
                    pass
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            threading.Thread(target=pipe, args=(up, c), daemon=True).start()
            pipe(c, up)
        except OSError:
            pass

    def release(self):
        self.loading.clear()

    def close(self):
        self.srv.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
