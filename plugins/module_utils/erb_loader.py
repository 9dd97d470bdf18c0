# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Load, attach, upgrade, inspect and detach erb.bpf.o with pinned bpf_links.

Pin layout (docs/CONTRACTS.md): <bpffs_root>/erb/<netns>/<ifname>/ holds
link_xdp, link_tc, map_<name> for each state map and meta (an ARRAY map of
1 x 4096 bytes holding JSON).  Everything under that directory is ERB's.

Attach: pin, then attach, unpin on failure.  Upgrade: bpf_link_update on the
pinned links (atomic, never detach-then-attach).  Detach: drain, then remove
exactly our links and pins.

TC egress uses a tcx link where the kernel has them (Linux >= 6.6).  Older
kernels get a direct-action cls_bpf filter on a clsact qdisc at ERB's fixed
pref/handle (TC_PRIORITY/TC_HANDLE): it cannot be pinned, so it is found by
querying that slot and owned when it runs erb_tc_egress; an upgrade replaces
its program in place (BPF_TC_F_REPLACE, atomic).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import json
import mmap
import sys
import os
import socket
import struct
import subprocess
import time

from ansible_collections.erb.booster.plugins.module_utils import erb_layout as L
from ansible_collections.erb.booster.plugins.module_utils import libbpf as B
from ansible_collections.erb.booster.plugins.module_utils import redis_commands
from contextlib import contextmanager

BPFFS_MAGIC = 0xcafe4a11
META_SIZE = 4096
META_VERSION = 1
LINK_XDP = 'link_xdp'
LINK_TC = 'link_tc'
META = 'meta'
PIN_TMP_SUFFIX = '_tmp'  # bpffs refuses names with dots
PROC_NET_INIT_INO = 0xeffffff9  # include/linux/proc_ns.h: inode of init_net
ENOTSUPP = 524  # kernel-internal "operation not supported", leaks from some drivers

# Pinned state maps.  Flow state must survive an upgrade: an incompatible
# pinned flow-state map is refused (live corrected flows would break).  The
# others are recreated when incompatible (a cache, a table, counters).
# erb_events holds acknowledged SETs not yet in Redis and erb_buckets' locks
# guard them: both are flow state too (an upgrade must never drop either).
STATE_MAPS = ('erb_global', 'erb_flows', 'erb_flow_gc', 'erb_aux', 'erb_buckets', 'erb_wepoch',
              'erb_events', 'erb_ooo', 'erb_cache', 'erb_tags', 'erb_cmds', 'erb_stats', 'erb_parked')
# erb_flow_gc holds the timers that delete closed flows: a new map would drop
# them, and erb_flows would keep those flows for good.
FLOW_STATE_MAPS = ('erb_global', 'erb_flows', 'erb_flow_gc', 'erb_aux', 'erb_buckets', 'erb_wepoch',
                   'erb_events', 'erb_ooo')
# State maps of earlier layouts, merged into erb_buckets (layout 14): a detach
# removes their pins too, so that none is left behind after an upgrade.
RETIRED_MAPS = ('erb_inflight', 'erb_ufence', 'erb_locks')

DEFAULT_RING_BYTES = 4 << 20
# Maps reused only together: erb_tags holds the tags of erb_cache's slots (a
# tag of 0 hides a slot from lookups and invalidations), so a cache kept with
# new tags, or tags kept with a new cache, would hide live entries.
COUPLED_MAPS = {'erb_cache': ('erb_tags',), 'erb_tags': ('erb_cache',)}


def tag_words(cache_entries):
    """erb_tags' max_entries: one byte per cache slot, eight to a word."""
    return (cache_entries + 7) // 8


# The erb_io kernel module (files/kmod) as the I/O path of fast SETs.
IO_PATHS = ('auto', 'ring', 'kmod')
KMOD_BTF = 'kernel/btf/erb_io'                     # under sysfs: the module's kfuncs
KMOD_SEQ_BASE = 'module/erb_io/parameters/seq_base'  # write: seed; read: applied_seq
KMOD_HANDOVER_S = 10.0

# How the TC egress program is attached: tcx link, or cls_bpf on clsact.
TC_ATTACH = ('auto', 'tcx', 'clsact')
TC_HANDLE = 0xeb
TC_PRIORITY = 0xeb

XDP_MODES = {'native': B.XDP_FLAGS_DRV_MODE, 'generic': B.XDP_FLAGS_SKB_MODE}

# Config keys compared for idempotence, in meta['config'].
CONFIG_KEYS = ('redis_port', 'cache_entries', 'max_key_len', 'max_value_len', 'max_flows',
               'require_auth', 'answer', 'fill', 'xdp_mode', 'set_fast_path', 'ring_bytes', 'io_path',
               'tc_attach')


class LoaderError(Exception):
    """An operator-facing refusal or failure; the message says what to do."""

    def __init__(self, msg, log=None, err=None):
        super(LoaderError, self).__init__(msg)
        self.log = list(log or [])
        self.errno = err


# -- environment --------------------------------------------------------------

class _Statfs(ctypes.Structure):
    _fields_ = [('f_type', ctypes.c_long), ('rest', ctypes.c_long * 15)]


def fs_type(path):
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)
    buf = _Statfs()
    if libc.statfs(path.encode(), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return buf.f_type & 0xffffffff


def check_bpffs(root):
    """Refuse a bpffs_root that is not a mounted BPF filesystem."""
    how = ('mount one with "mount -t bpf bpf %s" (persist it with a bpffs line in /etc/fstab '
           'or a sys-fs-bpf.mount unit)' % root)
    try:
        ftype = fs_type(root)
    except OSError as e:
        raise LoaderError('bpffs_root %s: %s; %s' % (root, e.strerror, how))
    if ftype != BPFFS_MAGIC:
        raise LoaderError('bpffs_root %s is not a BPF filesystem (f_type 0x%x); %s' % (root, ftype, how))


def netns_name(procfs='/proc', netns_dir='/run/netns'):
    """Name of the current network namespace: its /run/netns name, 'host' for
    the init namespace, else 'netns-<inode>'."""
    cur = os.stat(os.path.join(procfs, 'self/ns/net'))
    try:
        names = sorted(os.listdir(netns_dir))
    except OSError:
        names = []
    for name in names:
        try:
            st = os.stat(os.path.join(netns_dir, name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino):
            return name
    try:
        init = os.stat(os.path.join(procfs, '1/ns/net'))
        is_init = (init.st_dev, init.st_ino) == (cur.st_dev, cur.st_ino)
    except OSError:  # pid 1 hidden (containers, hidepid): init_net's fixed inode
        is_init = cur.st_ino == PROC_NET_INIT_INO
    return 'host' if is_init else 'netns-%d' % cur.st_ino


def ifindex_of(ifname):
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise LoaderError('interface %s does not exist in network namespace %s (see "ip link")'
                          % (ifname, netns_name()))


def pin_dir_of(bpffs_root, netns, ifname):
    return os.path.join(bpffs_root, 'erb', netns, ifname)


def sha256_file(path):
    h = hashlib.sha256()
    try:
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                h.update(chunk)
    except (IOError, OSError) as e:
        raise LoaderError('cannot read BPF object %s: %s (build it with "make -C files/bpf" '
                          'or set object to its path)' % (path, e.strerror))
    return h.hexdigest()


def _is_prime(n):
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


def hash_prime(cache_entries):
    """Largest prime < cache_entries (the double-hashing step modulus); 1
    when there is none (cache_entries == 2: every step is 1)."""
    n = cache_entries - 1
    while n >= 2:
        if _is_prime(n):
            return n
        n -= 1
    return 1


def erb_config(cfg):
    """struct erb_config for the desired config dict."""
    flags = ((L.ERB_CFG_ANSWER if cfg['answer'] else 0) | (L.ERB_CFG_FILL if cfg['fill'] else 0) |
             (L.ERB_CFG_SET_FAST if cfg.get('set_fast_path') else 0) |
             (L.ERB_CFG_KMOD if cfg.get('io_path') == 'kmod' else 0))
    return L.ErbConfig(layout_version=L.ERB_LAYOUT_VERSION, redis_port=cfg['redis_port'],
                       max_key_len=cfg['max_key_len'], max_value_len=cfg['max_value_len'],
                       max_probes=L.ERB_MAX_PROBES, cache_entries=cfg['cache_entries'],
                       hash_prime=hash_prime(cfg['cache_entries']),
                       require_auth=1 if cfg['require_auth'] else 0, flags=flags)


def validate_config(cfg):
    problems = []
    if not 1 <= cfg['redis_port'] <= 65535:
        problems.append('redis_port must be 1..65535')
    if not 1 <= cfg['max_key_len'] <= L.ERB_KEY_MAX:
        problems.append('max_key_len must be 1..%d (ERB_KEY_MAX)' % L.ERB_KEY_MAX)
    if not 1 <= cfg['max_value_len'] <= L.ERB_VAL_MAX:
        problems.append('max_value_len must be 1..%d (ERB_VAL_MAX)' % L.ERB_VAL_MAX)
    if not 2 <= cfg['cache_entries'] <= 0xffffffff:
        problems.append('cache_entries must be at least 2')
    if cfg['max_flows'] < 1:
        problems.append('max_flows must be at least 1')
    ring = cfg.get('ring_bytes', DEFAULT_RING_BYTES)
    if ring < 4096 or ring & (ring - 1):
        problems.append('ring_bytes must be a power of two of at least 4096 (a page)')
    if cfg.get('io_path', 'ring') not in IO_PATHS[1:]:
        problems.append('io_path must be ring or kmod once resolved (auto is resolved by resolve_io_path)')
    if cfg.get('tc_attach', 'auto') not in TC_ATTACH:
        problems.append('tc_attach must be one of %s' % ', '.join(TC_ATTACH))
    if cfg['xdp_mode'] not in XDP_MODES:
        problems.append('xdp_mode must be one of %s' % ', '.join(sorted(XDP_MODES)))
    if problems:
        raise LoaderError('invalid configuration: ' + '; '.join(problems))


# -- pinned objects -----------------------------------------------------------

def _exists(path):
    return os.path.lexists(path)


def open_pinned(path):
    """fd of a pinned object, or None when the pin does not exist."""
    if not _exists(path):
        return None
    return B.obj_get(path)


def read_meta(pin_dir):
    fd = open_pinned(os.path.join(pin_dir, META))
    if fd is None:
        return None
    with B.fd_closing(fd):
        key = ctypes.c_uint32(0)
        val = ctypes.create_string_buffer(META_SIZE)
        if not B.map_lookup(fd, key, val):
            return None
        raw = val.raw.split(b'\0', 1)[0]
    try:
        return json.loads(raw.decode('utf-8')) if raw else None
    except ValueError:
        return None


def meta_bytes(meta):
    data = json.dumps(meta, sort_keys=True, separators=(',', ':')).encode('utf-8')
    if len(data) >= META_SIZE:
        raise LoaderError('meta JSON is %d bytes, over the %d of the meta map: shorten the object path'
                          % (len(data), META_SIZE))
    return data


def write_meta(fd, meta):
    B.map_update(fd, ctypes.c_uint32(0), ctypes.create_string_buffer(meta_bytes(meta), META_SIZE))


def link_state(path, expect_type, expect_prog):
    """Describe a pinned link: None when absent; raises LoaderError when the
    pin is not an ERB link (ownership check)."""
    fd = open_pinned(path)
    if fd is None:
        return None
    with B.fd_closing(fd):
        try:
            info = B.link_info(fd)
        except B.BpfError as e:
            raise LoaderError('%s is not a BPF link (%s); it is not ERB\'s: remove it by hand '
                              'if you know what it is' % (path, e))
        name = ''
        if info.prog_id:
            try:
                name = B.prog_name_by_id(info.prog_id)
            except B.BpfError:
                name = ''
    if info.type != expect_type or name != expect_prog:
        raise LoaderError('%s holds a link of type %d running program "%s", not ERB\'s %s: refusing '
                          'to touch it' % (path, info.type, name, expect_prog))
    return {'id': info.id, 'prog_id': info.prog_id, 'prog_name': name, 'ifindex': info.ifindex}


def clsact_state(ifindex, ifname):
    """ERB's cls_bpf egress filter on ifindex: None when the slot is empty;
    raises LoaderError when another program holds it."""
    prog_id = B.tc_query(ifindex, TC_HANDLE, TC_PRIORITY)
    if not prog_id:
        return None
    try:
        name = B.prog_name_by_id(prog_id)
    except B.BpfError:
        name = ''
    if name != L.TC_PROG:
        raise LoaderError('the tc egress filter pref %d handle 0x%x on %s runs program "%s" (id %d), not ERB\'s %s: '
                          'refusing to touch it (see "tc filter show dev %s egress")'
                          % (TC_PRIORITY, TC_HANDLE, ifname, name, prog_id, L.TC_PROG, ifname))
    return {'id': None, 'prog_id': prog_id, 'prog_name': name, 'ifindex': ifindex, 'attach': 'clsact'}


def links_state(target):
    """ERB's XDP link and TC egress attachment on target (tcx link or clsact filter)."""
    tc = link_state(target.path(LINK_TC), B.BPF_LINK_TYPE_TCX, L.TC_PROG)
    if tc:
        tc['attach'] = 'tcx'
    else:
        try:
            ifindex = socket.if_nametoindex(target.ifname)
        except OSError:
            ifindex = None
        tc = clsact_state(ifindex, target.ifname) if ifindex else None
    return {'xdp': link_state(target.path(LINK_XDP), B.BPF_LINK_TYPE_XDP, L.XDP_PROG), 'tc': tc}


def map_compatible(info, m):
    """Pinned map (MapInfo) has the definition of object map m."""
    return (info.type == m.type and info.key_size == m.key_size and info.value_size == m.value_size
            and info.max_entries == m.max_entries and info.map_flags == m.map_flags)


def _describe_map(t, k, v, n, f):
    return 'type %d key %d value %d max_entries %d flags 0x%x' % (t, k, v, n, f)


def _rmdir_if_empty(path):
    try:
        os.rmdir(path)
        return True
    except OSError:
        return False


# -- global state, stats, flows -----------------------------------------------

def lookup_mirror(fd, key, ctype, value_size=None):
    """Look key up in a pinned map into a ctype of the layout mirror, or None when absent.

    The kernel copies the map's own value size, which differs from the mirror's when the
    pins were made by another layout version (an upgrade or a rollback across one): the
    buffer is never smaller than that, and the mirror reads its prefix (the fields read
    across versions, such as erb_flow.flags and erb_global's, keep their offsets)."""
    if value_size is None:
        value_size = B.map_info(fd).value_size
    buf = ctypes.create_string_buffer(max(value_size, ctypes.sizeof(ctype)))
    if not B.map_lookup(fd, key, buf):
        return None
    return ctype.from_buffer_copy(buf.raw[:ctypes.sizeof(ctype)])


def read_global(fd):
    return lookup_mirror(fd, ctypes.c_uint32(0), L.ErbGlobal)


def set_drain(fd, drain):
    """Set or clear ERB_CTL_DRAIN; returns True when ctl changed."""
    return set_ctl(fd, L.ERB_CTL_DRAIN, drain)


def set_ctl(fd, bit, on):
    """Set or clear one ERB_CTL_* bit; returns True when ctl changed.

    Only ctl is written, through the mmap of the BPF_F_MMAPABLE erb_global:
    the programs update the other fields atomically (write_seq, cache_gen) and
    the I/O agent publishes applied_seq, so a whole-value update could move
    them backwards. ctl has no other writer."""
    g = read_global(fd) or L.ErbGlobal()
    ctl = (g.ctl | bit) if on else (g.ctl & ~bit)
    if ctl == g.ctl:
        return False
    off = L.ErbGlobal.ctl.offset
    length = (ctypes.sizeof(L.ErbGlobal) + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
    mm = mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        mm[off:off + 4] = ctypes.c_uint32(ctl).value.to_bytes(4, sys.byteorder)
    finally:
        mm.close()
    return True


def read_stats(fd):
    """Per-CPU erb_stats summed, by enum name."""
    ncpu = B.num_possible_cpus()
    out = {}
    for i, name in enumerate(L.STAT_NAMES):
        vals = (ctypes.c_uint64 * ncpu)()
        if B.map_lookup(fd, ctypes.c_uint32(i), vals):
            out[name] = int(sum(vals))
        else:
            out[name] = 0
    return out


def count_flows(fd):
    """(flows tracked, open flows with ERB_FLOW_ANSWERED). A closed flow
    (both FINs acknowledged) lingers a minute for stray retransmissions, but
    no live connection depends on it."""
    total = answered = 0
    value_size = B.map_info(fd).value_size
    for raw in B.map_keys(fd, ctypes.sizeof(L.ErbFlowKey)):
        flow = lookup_mirror(fd, L.ErbFlowKey.from_buffer_copy(raw), L.ErbFlow, value_size)
        if flow is None:
            continue
        total += 1
        if flow.flags & L.ERB_FLOW_ANSWERED and not flow.flags & L.ERB_FLOW_CLOSED:
            answered += 1
    return total, answered


# What TCP faults did to the answered flows, for an operator: answers sent
# again (the client's retransmission, a duplicate ACK, a collapsed segment),
# Redis ACKs held below an answer the client lacked, flows given up (a gap, bytes
# ERB cannot parse), segments held for pending writes or a bucket lock another CPU kept,
# late or repeated SYNs that left an established flow as it was.
RECOVERY_STATS = ('retransmit_answer', 'answer_resent', 'drop_overlap', 'ack_held', 'ts_clamped',
                  'ooo_kept', 'ooo_resumed', 'pass_ooo', 'flow_given_up', 'unseen_passed', 'pass_client_limit', 'hold',
                  'hold_waited', 'hold_busy', 'parked', 'reanswer_parked', 'reanswer_no_copy', 'syn_kept')


def recovery(stats):
    """The RECOVERY_STATS of a read_stats() result."""
    return dict((k, stats.get(k, 0)) for k in RECOVERY_STATS)


def cache_fill(fd, cache_gen):
    """Entries VALID and of the current generation, read through a read-only
    mmap of the BPF_F_MMAPABLE erb_cache array."""
    info = B.map_info(fd)
    elem = (info.value_size + 7) // 8 * 8
    size = elem * info.max_entries
    length = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
    mm = mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    try:
        return _count_valid(mm, elem, info.max_entries, cache_gen)
    finally:
        mm.close()


def _count_valid(buf, elem, n, cache_gen):
    u32 = struct.Struct('=I')
    state_off = L.ErbEntry.state.offset
    gen_off = L.ErbEntry.gen.offset
    count = 0
    for base in range(0, n * elem, elem):
        if u32.unpack_from(buf, base + state_off)[0] == L.ERB_ENTRY_VALID and \
                u32.unpack_from(buf, base + gen_off)[0] == cache_gen:
            count += 1
    return count


# -- where --------------------------------------------------------------------

class Target(object):
    """An interface of the current network namespace and its pin directory."""

    def __init__(self, ifname, bpffs_root, procfs='/proc', netns_dir='/run/netns'):
        if not ifname or '/' in ifname or ifname in ('.', '..'):
            raise LoaderError('invalid interface name %r' % ifname)
        check_bpffs(bpffs_root)
        self.ifname = ifname
        self.bpffs_root = bpffs_root
        self.netns = netns_name(procfs, netns_dir)
        self.pin_dir = pin_dir_of(bpffs_root, self.netns, ifname)

    def path(self, name):
        return os.path.join(self.pin_dir, name)

    def map_pin(self, name):
        return self.path('map_' + name)

    def exists(self):
        return os.path.isdir(self.pin_dir)


def _global_ctl(target):
    fd = open_pinned(target.map_pin('erb_global'))
    if fd is None:
        return None
    with B.fd_closing(fd):
        g = read_global(fd)
        return g.ctl if g else 0


@contextmanager
def locked(target):
    """Serialize loaders on this bpffs (flock on its root directory)."""
    fd = os.open(target.bpffs_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def current_state(target):
    """What is deployed on target now (ownership-checked)."""
    if not target.exists():  # a clsact filter is not under the pin dir: look anyway
        return {'meta': None, 'links': links_state(target), 'ctl': None, 'missing_maps': list(STATE_MAPS)}
    return {
        'meta': read_meta(target.pin_dir),
        'links': links_state(target),
        'ctl': _global_ctl(target),
        'missing_maps': [n for n in STATE_MAPS if not _exists(target.map_pin(n))],
    }


def summary(meta):
    """The part of meta shown in diffs and compared for idempotence."""
    if not meta:
        return {}
    return {'object': meta.get('object'), 'config': meta.get('config')}


# -- erb_io (kernel module I/O path) ------------------------------------------------

def kmod_loaded(sysfs='/sys'):
    """erb_io is loaded with its kfuncs (its BTF is what the object resolves them by)."""
    return os.path.exists(os.path.join(sysfs, KMOD_BTF))


def resolve_io_path(requested, sysfs='/sys'):
    """auto -> kmod when erb_io is loaded, else ring; kmod without the module is an error."""
    if requested not in IO_PATHS:
        raise LoaderError('io_path must be one of %s, not %r' % (', '.join(IO_PATHS), requested))
    if requested == 'auto':
        return 'kmod' if kmod_loaded(sysfs) else 'ring'
    if requested == 'kmod' and not kmod_loaded(sysfs):
        raise LoaderError('io_path=kmod but the erb_io module is not loaded (no %s): load it first '
                          '(erb.booster.kmod), or use io_path=auto to fall back to the ring buffer and its agent'
                          % os.path.join(sysfs, KMOD_BTF))
    return requested


def kmod_applied_seq(sysfs='/sys'):
    """erb_io's applied_seq (every seq <= it finished), None when the module is not loaded."""
    try:
        with open(os.path.join(sysfs, KMOD_SEQ_BASE)) as f:
            return int(f.read().strip())
    except (IOError, OSError, ValueError):
        return None


def _kmod_seed(seq, sysfs='/sys'):
    try:
        with open(os.path.join(sysfs, KMOD_SEQ_BASE), 'w') as f:
            f.write('%d\n' % seq)
    except (IOError, OSError) as e:
        if e.errno == errno.EBUSY:
            raise LoaderError('erb_io still has queued records of another deployment (its seq_base cannot '
                              'move while records are in flight): wait for them to be applied, or detach the '
                              'other ERB deployment; erb_io serves one deployment per kernel')
        raise LoaderError('cannot set erb_io seq_base to %d: %s' % (seq, e))


def applied_seq_of(g, sysfs='/sys'):
    """How far the I/O path in use has applied: erb_global's applied_seq, or under
    ERB_CTL_KMOD erb_io's own (the programs mirror it only as packets arrive)."""
    if g.ctl & L.ERB_CTL_KMOD:
        return max(g.applied_seq, kmod_applied_seq(sysfs) or 0)
    return g.applied_seq


def writes_pending(g, sysfs='/sys'):
    """Acknowledged SETs the I/O path in use has not applied (0 without erb_global)."""
    return (g.write_seq - applied_seq_of(g, sysfs)) if g else 0


def _wait_applied(gfd, sysfs, timeout):
    """Wait until the I/O path in use applied every write_seq."""
    start = time.time()
    while True:
        g = read_global(gfd)
        applied = applied_seq_of(g, sysfs)
        if applied >= g.write_seq:
            return g.write_seq
        if time.time() - start >= timeout:
            kmod = g.ctl & L.ERB_CTL_KMOD
            raise LoaderError('switching the I/O path: %d of the SETs answered in XDP are not applied to Redis '
                              'after %.0f s (write_seq %d, applied %d by %s); is the %s running? Nothing was '
                              'changed' % (g.write_seq - applied, timeout, g.write_seq, applied,
                                           'erb_io' if kmod else 'the ring buffer',
                                           'erb_io write kthread' if kmod else 'erb-agent'))
        time.sleep(0.05)


def _io_handover(obj, state, cfg, undo, sysfs='/sys', timeout=KMOD_HANDOVER_S):
    """Before the new programs attach: make the new I/O path continue erb_global's seqs.

    erb_global.write_seq numbers every fast SET; applied_seq says which Redis has.
    On the ring path the agent publishes applied_seq; on erb_io the module tracks it
    (seeded through its seq_base parameter) and the programs mirror it. Switching
    paths with writes in flight would let one path's progress vouch for the other's
    records, so a switch first stops fast SETs (ERB_CTL_DRAIN, cleared again after
    attach) and waits until the old path applied everything."""
    new = cfg.get('io_path', 'ring')
    meta = state['meta'] or {}
    old = (meta.get('config') or {}).get('io_path', 'ring') if state['links']['xdp'] else None
    gfd = obj.find_map('erb_global').fd
    g = read_global(gfd) or L.ErbGlobal()
    undo.push(set_ctl, gfd, L.ERB_CTL_KMOD, bool(g.ctl & L.ERB_CTL_KMOD))
    if new == 'kmod':
        applied = kmod_applied_seq(sysfs)
        if applied is None:
            raise LoaderError('io_path=kmod but erb_io is not loaded (no %s)' % os.path.join(sysfs, KMOD_SEQ_BASE))
        if old != 'kmod' and applied != g.write_seq:
            if applied_seq_of(g, sysfs) < g.write_seq:
                set_drain(gfd, True)
                _wait_applied(gfd, sysfs, timeout)
            _kmod_seed(read_global(gfd).write_seq, sysfs)
        set_ctl(gfd, L.ERB_CTL_KMOD, True)
        return
    if old == 'kmod':
        set_drain(gfd, True)
        _wait_applied(gfd, sysfs, timeout)
    # the agent sees the bit change and restarts: it rebuilds applied_seq from the ring
    set_ctl(gfd, L.ERB_CTL_KMOD, False)


# -- attach / upgrade -----------------------------------------------------------

class _Undo(object):
    """Reverse-order unwinding of the steps done so far."""

    def __init__(self):
        self.actions = []

    def push(self, fn, *args):
        self.actions.append((fn, args))

    def run(self):
        errors = []
        while self.actions:
            fn, args = self.actions.pop()
            try:
                fn(*args)
            except Exception as e:  # keep unwinding: report, do not stop
                errors.append('%s: %s' % (getattr(fn, '__name__', fn), e))
        return errors


def attach_reasons(target, desired, state, ifindex):
    """Why attach must act; [] when everything is in place."""
    reasons = []
    meta = state['meta']
    if not meta:
        reasons.append('not attached')
    else:
        if meta.get('object', {}).get('sha256') != desired['object']['sha256']:
            reasons.append('object changed')
        if meta.get('config') != desired['config']:
            reasons.append('config changed')
    for kind in ('xdp', 'tc'):
        link = state['links'][kind]
        if link is None:
            reasons.append('%s link missing' % kind)
        elif link['ifindex'] != ifindex:
            reasons.append('%s link is stale (interface recreated)' % kind)
    if state['missing_maps'] and meta:
        reasons.append('pinned maps missing: %s' % ', '.join(state['missing_maps']))
    if state['ctl'] and state['ctl'] & L.ERB_CTL_DRAIN:
        reasons.append('draining (left by an interrupted detach)')
    return reasons


def _check_mode_change(target, state, desired):
    meta = state['meta'] or {}
    old = (meta.get('config') or {}).get('xdp_mode')
    new = desired['config']['xdp_mode']
    if state['links']['xdp'] and old and old != new:
        raise LoaderError('xdp_mode %s -> %s on %s cannot be changed atomically (the kernel does not run '
                          'native and generic XDP together): run with state=detached first, then attach '
                          'with xdp_mode=%s' % (old, new, target.ifname, new))


def _check_tc_change(target, state, desired):
    cur = state['links']['tc']
    want = desired['config'].get('tc_attach', 'auto')
    if cur and want != 'auto' and cur['attach'] != want:
        raise LoaderError('tc_attach %s -> %s on %s cannot be changed atomically (both would rewrite the same '
                          'segments): run with state=detached first, then attach with tc_attach=%s'
                          % (cur['attach'], want, target.ifname, want))


def other_layout(meta):
    """The pinned state (its meta record) was written by another layout version: an attach
    cannot take it over. A meta without layout_version counts as this version's."""
    return bool(meta) and meta.get('layout_version', L.ERB_LAYOUT_VERSION) != L.ERB_LAYOUT_VERSION


def _check_layout_version(state):
    meta = state['meta']
    if other_layout(meta):
        raise LoaderError('pinned state has layout version %s, this loader writes %d: live flows would be '
                          'misread. Detach first (state=detached), then attach the new object'
                          % (meta.get('layout_version'), L.ERB_LAYOUT_VERSION))


def _check_object(obj):
    """The object has ERB's programs and the maps of erb.h's layout."""
    for prog in (L.XDP_PROG, L.TC_PROG):
        if not obj.has_program(prog):
            raise LoaderError('%s has no program %s: not an ERB object' % (obj.path, prog))
    for name, (mtype, ksize, vsize) in sorted(L.MAPS.items()):
        m = obj.find_map(name)
        if (m.type, m.key_size, m.value_size) != (mtype, ksize, vsize):
            raise LoaderError('%s map %s is type %d key %d value %d, erb_layout expects type %d key %d value %d: '
                              'object and collection were built from different erb.h'
                              % (obj.path, name, m.type, m.key_size, m.value_size, mtype, ksize, vsize))


def _configure(obj, cfg):
    """Write struct erb_config into .rodata and size the maps, before load."""
    rodata = obj.internal_map('.rodata')
    off, size = obj.var_offset('.rodata', 'cfg')
    if size != ctypes.sizeof(L.ErbConfig):
        raise LoaderError('%s: cfg is %d bytes, struct erb_config is %d' % (obj.path, size, ctypes.sizeof(L.ErbConfig)))
    data = bytearray(rodata.initial_value())
    data[off:off + size] = bytes(bytearray(erb_config(cfg)))
    rodata.set_initial_value(bytes(data))
    obj.find_map('erb_cache').set_max_entries(cfg['cache_entries'])
    obj.find_map('erb_tags').set_max_entries(tag_words(cfg['cache_entries']))
    obj.find_map('erb_flows').set_max_entries(cfg['max_flows'])
    obj.find_map('erb_flow_gc').set_max_entries(cfg['max_flows'])
    obj.find_map('erb_aux').set_max_entries(cfg['max_flows'])
    obj.find_map('erb_events').set_max_entries(cfg.get('ring_bytes', DEFAULT_RING_BYTES))


def _reuse_maps(obj, target, held):
    """Reuse every compatible pinned state map; refuse incompatible flow state.
    Returns the names reused; their fds are appended to held."""
    reused = []
    pinned = {}
    for name in STATE_MAPS:
        fd = open_pinned(target.map_pin(name))
        if fd is None:
            continue
        held.append(fd)
        pinned[name] = (fd, B.map_info(fd))
    for name in STATE_MAPS:
        if name not in pinned:
            continue
        fd, info = pinned[name]
        m = obj.find_map(name)
        if map_compatible(info, m) and all(n in pinned and map_compatible(pinned[n][1], obj.find_map(n))
                                           for n in COUPLED_MAPS.get(name, ())):
            m.reuse_fd(fd)
            reused.append(name)
        elif name in FLOW_STATE_MAPS:
            raise LoaderError(
                'pinned %s (%s) does not match the new object (%s): live flows would lose their state. '
                'Detach first (state=detached drains answering and waits for corrected flows), then attach '
                'with the new settings' % (target.map_pin(name),
                                           _describe_map(info.type, info.key_size, info.value_size,
                                                         info.max_entries, info.map_flags),
                                           _describe_map(m.type, m.key_size, m.value_size,
                                                         m.max_entries, m.map_flags)))
    return reused


def fill_cmds(fd, prune):
    """Write the command table into erb_cmds; with prune, drop stale keys."""
    specs = redis_commands.cmd_specs()
    for key, spec in specs:
        B.map_update(fd, ctypes.c_uint32(key), spec)
    if prune:
        wanted = set(k for k, _spec in specs)
        for raw in list(B.map_keys(fd, 4)):
            key = ctypes.c_uint32.from_buffer_copy(raw)
            if key.value not in wanted:
                B.map_delete(fd, key)
    return len(specs)


def _make_pin_dir(target, undo):
    missing = []
    path = target.pin_dir
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for d in reversed(missing):
        os.mkdir(d, 0o700)
        undo.push(os.rmdir, d)


def _unlink_if_exists(path):
    if _exists(path):
        os.unlink(path)


def _pin_tmp(fd, final, undo, renames):
    tmp = final + PIN_TMP_SUFFIX
    _unlink_if_exists(tmp)
    B.obj_pin(fd, tmp)
    undo.push(_unlink_if_exists, tmp)
    renames.append((tmp, final))


def _pin_new_maps(obj, target, reused, undo, renames):
    created = []
    for name in STATE_MAPS:
        if name in reused:
            continue
        _pin_tmp(obj.find_map(name).fd, target.map_pin(name), undo, renames)
        created.append(name)
    return created


def _meta_fd(target, undo, renames, held):
    fd = open_pinned(target.path(META))
    if fd is not None:
        held.append(fd)
        info = B.map_info(fd)
        if (info.type, info.key_size, info.value_size, info.max_entries) == (L.BPF_MAP_TYPE_ARRAY, 4, META_SIZE, 1):
            return fd
    fd = B.map_create(L.BPF_MAP_TYPE_ARRAY, 'erb_meta', 4, META_SIZE, 1)
    held.append(fd)
    _pin_tmp(fd, target.path(META), undo, renames)
    return fd


def _xdp_refusal(target, ifindex, mode, err):
    if err.errno in (errno.EOPNOTSUPP, ENOTSUPP) and mode == 'native':
        return LoaderError('interface %s does not support native XDP (%s): use xdp_mode: generic'
                           % (target.ifname, err), err=err.errno)
    if err.errno in (errno.EBUSY, errno.EEXIST):
        return LoaderError('another XDP program is attached to %s (%s): ERB does not replace programs '
                           'it does not own; remove it (ip link set dev %s xdp off) if it may go'
                           % (target.ifname, _xdp_desc(ifindex), target.ifname), err=err.errno)
    return LoaderError('attaching XDP to %s failed: %s' % (target.ifname, err), err=err.errno)


def _xdp_desc(ifindex):
    try:
        q = B.xdp_query(ifindex)
    except B.BpfError as e:
        return 'query failed: %s' % e
    if not q['prog_id']:
        return 'no program visible'
    try:
        name = B.prog_name_by_id(q['prog_id'])
    except B.BpfError:
        name = '?'
    return 'program id %d "%s", mode %s' % (q['prog_id'], name, q['mode'])


def _foreign_xdp(target, ifindex):
    q = B.xdp_query(ifindex)
    if q['prog_id']:
        raise LoaderError('another XDP program is attached to %s (%s): ERB does not replace programs it does '
                          'not own; remove it (ip link set dev %s xdp off) if it may go'
                          % (target.ifname, _xdp_desc(ifindex), target.ifname))


def _create_link(kind, prog_fd, target, ifindex, cfg):
    """A new XDP or tcx link; None when TC is to go on clsact instead
    (tc_attach=clsact, or auto on a kernel without tcx)."""
    if kind == 'xdp':
        try:
            return B.link_create_xdp(prog_fd, ifindex, XDP_MODES[cfg['xdp_mode']])
        except B.BpfError as e:
            raise _xdp_refusal(target, ifindex, cfg['xdp_mode'], e)
    how = cfg.get('tc_attach', 'auto')
    if how == 'clsact':
        return None
    try:
        return B.link_create_tcx(prog_fd, ifindex, B.BPF_TCX_EGRESS)
    except B.BpfError as e:
        if how == 'auto' and e.errno == errno.EINVAL:  # no tcx before Linux 6.6
            return None
        hint = ' (tcx links need Linux >= 6.6; tc_attach=clsact works on older kernels)' \
            if e.errno == errno.EINVAL else ''
        raise LoaderError('attaching tcx egress to %s failed: %s%s' % (target.ifname, e, hint), err=e.errno)


def _attach_clsact(prog_fd, target, ifindex, undo):
    """cls_bpf egress filter at ERB's slot; returns whether the clsact qdisc
    was created for it (detach then removes the qdisc when it is empty)."""
    try:
        created = B.tc_hook_create(ifindex)
        if created:
            undo.push(B.tc_hook_destroy, ifindex)
        B.tc_attach(ifindex, prog_fd, TC_HANDLE, TC_PRIORITY)
    except B.BpfError as e:
        raise LoaderError('attaching the tc egress filter (clsact, pref %d handle 0x%x) to %s failed: %s'
                          % (TC_PRIORITY, TC_HANDLE, target.ifname, e), err=e.errno)
    undo.push(B.tc_detach, ifindex, TC_HANDLE, TC_PRIORITY)
    return created


def _detach_and_close(fd):
    try:
        B.link_detach(fd)
    finally:
        B.close_fd(fd)


LINKS = (('tc', LINK_TC, L.TC_PROG), ('xdp', LINK_XDP, L.XDP_PROG))  # attach order: egress first


def _attach_links(obj, target, ifindex, cfg, state, undo, held):
    """Update pinned links atomically, or create and pin missing ones.
    Returns {kind: 'updated'|'created'} and, for TC, how it is attached."""
    done = {'tc_attach': 'tcx'}
    for kind, pin_name, prog in LINKS:
        pin = target.path(pin_name)
        prog_fd = obj.program_fd(prog)
        cur = state['links'][kind]
        if cur and cur.get('attach') == 'clsact':
            old_fd = B.prog_fd_by_id(cur['prog_id'])
            held.append(old_fd)
            B.tc_attach(ifindex, prog_fd, TC_HANDLE, TC_PRIORITY, replace=True)
            undo.push(B.tc_attach, ifindex, old_fd, TC_HANDLE, TC_PRIORITY, True)
            done.update(tc='updated', tc_attach='clsact')
            continue
        if cur and cur['ifindex'] == ifindex:
            link_fd = B.obj_get(pin)
            held.append(link_fd)
            old_fd = B.prog_fd_by_id(cur['prog_id'])
            held.append(old_fd)
            B.link_update(link_fd, prog_fd, old_fd)
            undo.push(B.link_update, link_fd, old_fd, prog_fd)
            done[kind] = 'updated'
            continue
        if cur:  # defunct: its interface went away
            os.unlink(pin)
        elif kind == 'xdp':
            _foreign_xdp(target, ifindex)
        link_fd = _create_link(kind, prog_fd, target, ifindex, cfg)
        if link_fd is None:
            done.update(tc='created', tc_attach='clsact',
                        clsact_created=_attach_clsact(prog_fd, target, ifindex, undo))
            continue
        undo.push(_detach_and_close, link_fd)
        B.obj_pin(link_fd, pin)
        undo.push(os.unlink, pin)
        done[kind] = 'created'
    return done


def _new_meta(target, desired, state, now):
    old = state['meta'] or {}
    meta = {
        'version': META_VERSION,
        'layout_version': L.ERB_LAYOUT_VERSION,
        'ifname': target.ifname,
        'netns': target.netns,
        'object': desired['object'],
        'config': desired['config'],
        'attached_at': old.get('attached_at') or now,
        'updated_at': now,
        'previous': summary(old) or None,
    }
    if old and summary(old) == summary(meta):
        meta['previous'] = old.get('previous')
    return meta


def attach(target, desired, check_mode=False, now=None):
    """Make target run desired = {'object': {path, sha256}, 'config': {...}}."""
    with locked(target):
        return _attach(target, desired, check_mode, now)


def _attach(target, desired, check_mode, now):
    ifindex = ifindex_of(target.ifname)
    state = current_state(target)
    reasons = attach_reasons(target, desired, state, ifindex)
    result = {'changed': bool(reasons), 'reasons': reasons, 'pin_dir': target.pin_dir, 'netns': target.netns,
              'diff': {'before': summary(state['meta']), 'after': summary(desired)}}
    if not reasons:
        result.update(_ids(target))
        return result
    _check_mode_change(target, state, desired)
    _check_tc_change(target, state, desired)
    _check_layout_version(state)
    if check_mode:
        return result
    meta = _new_meta(target, desired, state, now or time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
    meta_bytes(dict(meta, tc={'attach': 'clsact', 'clsact_created': False}))  # its longest form
    result.update(_deploy(target, desired, state, ifindex, meta))
    result.update(_ids(target))
    return result


def _deploy(target, desired, state, ifindex, meta):
    undo = _Undo()
    held = []
    renames = []
    obj = B.BpfObject(desired['object']['path'])
    fallback = None
    try:
        try:
            reused = _prepare(obj, target, desired, held)
        except LoaderError as e:
            alt = compat_object(obj.path, e)
            if not alt:
                raise
            fallback = refusal_reason(e)
            # this kernel's verifier refused the object's layout: the other build
            for fd in held:
                B.close_fd(fd)
            del held[:]
            obj.close()
            obj = B.BpfObject(alt)
            try:
                reused = _prepare(obj, target, desired, held)
            except LoaderError as e2:
                raise LoaderError('%s; and %s (the build for older kernels)' % (e, e2), log=e2.log,
                                  err=e2.errno)
        loaded = obj.path
        fill_cmds(obj.find_map('erb_cmds').fd, 'erb_cmds' in reused)
        _make_pin_dir(target, undo)
        created = _pin_new_maps(obj, target, reused, undo, renames)
        meta_fd = _meta_fd(target, undo, renames, held)
        _io_handover(obj, state, desired['config'], undo)
        links = _attach_links(obj, target, ifindex, desired['config'], state, undo, held)
        tc_attach = links.pop('tc_attach')
        old_tc = (state['meta'] or {}).get('tc') or {}
        meta['tc'] = {'attach': tc_attach,
                      'clsact_created': links.pop('clsact_created', old_tc.get('clsact_created', False))}
        for tmp, final in renames:
            os.rename(tmp, final)
        undo.actions = []
        write_meta(meta_fd, meta)
        _clear_drain(target)
        return {'maps_reused': reused, 'maps_created': created, 'links': links, 'object_loaded': loaded,
                'object_refused': fallback}
    except Exception as e:
        errors = undo.run()
        if errors and isinstance(e, LoaderError):
            e.args = ('%s (unwinding also failed: %s)' % (e.args[0], '; '.join(errors)),)
        raise
    finally:
        for fd in held:
            B.close_fd(fd)
        obj.close()


def _prepare(obj, target, desired, held):
    """Check, configure and load obj, reusing target's pinned maps (their fds into held); the reused names."""
    _check_object(obj)
    _configure(obj, desired['config'])
    reused = _reuse_maps(obj, target, held)
    _load(obj)
    return reused


# The same programs built two ways (files/bpf/Makefile): erb.bpf.o with global
# functions (the newer verifiers' loop checks re-verify bpf_loop callbacks per
# caller state: over their 1M-instruction limit otherwise), erb-compat.bpf.o
# with bpf_loop callbacks (Linux 6.1 sums a call chain's frames, global
# functions' too, against one 512-byte stack: over it otherwise).
COMPAT_SUFFIX = '-compat.bpf.o'


def compat_object(path, err):
    """The compat build beside path, when the kernel refused path as too large or too deep (E2BIG,
    EACCES with the verifier's complexity or stack message); else None."""
    if not path.endswith('.bpf.o') or path.endswith(COMPAT_SUFFIX):
        return None
    alt = path[:-len('.bpf.o')] + COMPAT_SUFFIX
    refused = getattr(err, 'errno', None) == errno.E2BIG or _refusal_line(err) is not None
    return alt if refused and os.path.exists(alt) else None


# The verifier's messages for an object too deep or too large for the kernel.
REFUSALS = ('combined stack size', 'BPF program is too large')


def _refusal_line(err):
    """The last line of err's verifier log that says it refused the object for its stack or size."""
    for line in reversed(getattr(err, 'log', None) or []):
        if any(r in line for r in REFUSALS):
            return line.strip()
    return None


def refusal_reason(err):
    """Why the verifier refused an object, in one line: its stack or size message, else the error."""
    return _refusal_line(err) or str(err).split('\n', 1)[0][:300]


def _load(obj):
    try:
        obj.load()
    except B.BpfError as e:
        tail = [line for line in e.log if line.strip()][-40:]
        log = ('; libbpf log (last lines):\n' + '\n'.join(tail)) if tail else ''
        raise LoaderError('loading %s failed: %s%s' % (obj.path, e, log), log=e.log, err=e.errno)


def _clear_drain(target):
    fd = open_pinned(target.map_pin('erb_global'))
    if fd is not None:
        with B.fd_closing(fd):
            set_drain(fd, False)


def _ids(target):
    links = links_state(target)
    return {
        'link_ids': dict((k, v['id'] if v else None) for k, v in links.items()),
        'prog_ids': dict((k, v['prog_id'] if v else None) for k, v in links.items()),
        'tc_attach': links['tc']['attach'] if links['tc'] else None,
    }


# -- detach ---------------------------------------------------------------------

def drain(target, timeout, poll=0.2, progress=None):
    """Stop answering (ERB_CTL_DRAIN) and wait until no flow carries
    corrections (ERB_FLOW_ANSWERED) or timeout seconds pass."""
    gfd = open_pinned(target.map_pin('erb_global'))
    if gfd is None:
        return {'drained': True, 'flows_remaining': 0, 'waited': 0.0}
    with B.fd_closing(gfd):
        set_drain(gfd, True)
    ffd = open_pinned(target.map_pin('erb_flows'))
    if ffd is None:
        return {'drained': True, 'flows_remaining': 0, 'waited': 0.0}
    start = time.time()
    gfd = open_pinned(target.map_pin('erb_global'))
    with B.fd_closing(ffd), B.fd_closing(gfd):
        while True:
            answered = count_flows(ffd)[1]
            # acknowledged SETs still in erb_events/erb_io: the I/O path must apply them
            g = read_global(gfd)
            lag = writes_pending(g)
            waited = time.time() - start
            if progress:
                progress(answered, waited)
            if (answered == 0 and lag == 0) or waited >= timeout:
                return {'drained': answered == 0 and lag == 0, 'flows_remaining': answered,
                        'writes_pending': lag, 'waited': round(waited, 3),
                        'recovery': _pinned_recovery(target)}
            time.sleep(min(poll, max(timeout - waited, 0.01)))


def _pinned_recovery(target):
    fd = open_pinned(target.map_pin('erb_stats'))
    if fd is None:
        return {}
    with B.fd_closing(fd):
        return recovery(read_stats(fd))


def _remove_link(pin):
    fd = open_pinned(pin)
    if fd is None:
        return False
    try:
        B.link_detach(fd)
    except B.BpfError as e:
        if e.errno not in (errno.ENOLINK, errno.EINVAL, errno.ENODEV):  # already defunct
            raise
    finally:
        B.close_fd(fd)
    os.unlink(pin)
    return True


def _clsact_has_filters(ifname):
    """Whether any filter is left on ifname's clsact qdisc (either direction);
    True when that cannot be told (no tc), so the qdisc is then kept."""
    for point in ('ingress', 'egress'):
        try:
            out = subprocess.run(['tc', '-j', 'filter', 'show', 'dev', ifname, point], capture_output=True,
                                 text=True, timeout=10, check=False)
            if out.returncode != 0 or json.loads(out.stdout or '[]'):
                return True
        except (OSError, ValueError, subprocess.SubprocessError):
            return True
    return False


def _remove_clsact(target, tc, meta):
    """Remove ERB's cls_bpf filter, and the clsact qdisc when ERB added it and
    nothing else uses it.  Returns the names of what went."""
    removed = []
    try:
        B.tc_detach(tc['ifindex'], TC_HANDLE, TC_PRIORITY)
        removed.append('tc_filter')
    except B.BpfError as e:
        if e.errno not in (errno.ENOENT, errno.ENODEV):
            raise
    if ((meta or {}).get('tc') or {}).get('clsact_created') and not _clsact_has_filters(target.ifname):
        B.tc_hook_destroy(tc['ifindex'])
        removed.append('clsact_qdisc')
    return removed


def our_pins():
    names = [LINK_XDP, LINK_TC, META] + ['map_' + n for n in STATE_MAPS + RETIRED_MAPS]
    return names + [n + PIN_TMP_SUFFIX for n in names]


def detach(target, drain_timeout=30, check_mode=False, progress=None, discard_pending=False):
    """Drain, then remove exactly ERB's links and pins on target.

    Acknowledged SETs the I/O path has not applied when the drain ends keep ERB
    attached (answering off) and raise, unless discard_pending: unpinned, the
    ring (or erb_io's kfifo) would go with the last agent or program holding it."""
    with locked(target):
        return _detach(target, drain_timeout, check_mode, progress, discard_pending)


class PendingWrites(LoaderError):
    """The drain ended with acknowledged SETs not yet in Redis."""

    def __init__(self, msg, drain):
        super(PendingWrites, self).__init__(msg)
        self.drain = drain


def _detach(target, drain_timeout, check_mode, progress, discard_pending=False):
    result = {'changed': False, 'pin_dir': target.pin_dir, 'netns': target.netns, 'removed': []}
    state = current_state(target)  # raises when a pinned link is not ERB's
    tc = state['links']['tc']
    if not target.exists():
        result['diff'] = {'before': {}, 'after': {}}
        if tc and tc['attach'] == 'clsact':  # left by an attach that died before pinning anything
            result['changed'] = True
            if not check_mode:
                result['removed'] = _remove_clsact(target, tc, None)
        return result
    result['diff'] = {'before': summary(state['meta']), 'after': {}}
    result['changed'] = True
    if check_mode:
        return result
    result['drain'] = drain(target, drain_timeout, progress=progress)
    pending = result['drain'].get('writes_pending', 0)
    if pending and not discard_pending:
        raise PendingWrites(
            '%d acknowledged SET(s) were not applied to Redis within drain_timeout (%ds): ERB stays attached '
            'to %s with answering off, so that none is lost. Check the I/O path (erb-agent, or erb_io) and '
            'Redis; erb.booster.bpf_info shows writes_pending going down. Then detach again; '
            'discard_pending_writes detaches anyway and loses them'
            % (pending, drain_timeout, target.ifname), result['drain'])
    for _kind, name, _prog in reversed(LINKS):  # XDP first: stop ingress before egress
        if _remove_link(target.path(name)):
            result['removed'].append(name)
    if tc and tc['attach'] == 'clsact':
        result['removed'] += _remove_clsact(target, tc, state['meta'])
    for name in our_pins():
        path = target.path(name)
        if name not in (LINK_XDP, LINK_TC) and _exists(path):
            os.unlink(path)
            result['removed'].append(name)
    if not _rmdir_if_empty(target.pin_dir):
        result['left_behind'] = sorted(os.listdir(target.pin_dir))
    else:
        netns_dir = os.path.dirname(target.pin_dir)
        if _rmdir_if_empty(netns_dir):
            _rmdir_if_empty(os.path.dirname(netns_dir))
    return result


# -- inspect --------------------------------------------------------------------

def _with_pinned(target, name, fn, default=None):
    fd = open_pinned(target.map_pin(name))
    if fd is None:
        return default
    with B.fd_closing(fd):
        return fn(fd)


def _maps_info(target):
    out = {}
    for name in STATE_MAPS:
        info = _with_pinned(target, name, B.map_info)
        if info is not None:
            out[name] = {'id': info.id, 'max_entries': info.max_entries}
    return out


def describe(target):
    """Everything info reports about one interface's pin directory."""
    state = current_state(target)
    out = {'ifname': target.ifname, 'netns': target.netns, 'pin_dir': target.pin_dir,
           'attached': bool(state['links']['xdp'] or state['links']['tc']),
           'meta': state['meta'], 'other_layout': other_layout(state['meta']),
           'links': state['links'], 'maps': _maps_info(target)}
    try:
        out['xdp'] = B.xdp_query(socket.if_nametoindex(target.ifname))
    except (OSError, B.BpfError) as e:
        out['xdp'] = {'error': str(e)}
    g = _with_pinned(target, 'erb_global', read_global)
    out['drain'] = bool(g and g.ctl & L.ERB_CTL_DRAIN)
    out['global'] = ({'cache_gen': g.cache_gen, 'overflow': g.overflow, 'ctl': g.ctl,
                      'write_seq': g.write_seq, 'applied_seq': g.applied_seq} if g else None)
    out['writes_pending'] = writes_pending(g)
    out['ordered'] = bool(g and g.ordered_until_ns > time.monotonic_ns())
    out['counters'] = _with_pinned(target, 'erb_stats', read_stats, {})
    flows = _with_pinned(target, 'erb_flows', count_flows, (0, 0))
    out['flows'] = {'tracked': flows[0], 'answered': flows[1],
                    'max': out['maps'].get('erb_flows', {}).get('max_entries', 0)}
    valid = _with_pinned(target, 'erb_cache', lambda fd: cache_fill(fd, g.cache_gen if g else 0), 0)
    out['cache'] = {'valid': valid, 'entries': out['maps'].get('erb_cache', {}).get('max_entries', 0),
                    'generation': g.cache_gen if g else 0}
    return out


def list_interfaces(bpffs_root, netns):
    base = os.path.join(bpffs_root, 'erb', netns)
    try:
        return sorted(n for n in os.listdir(base) if os.path.isdir(os.path.join(base, n)))
    except OSError:
        return []
