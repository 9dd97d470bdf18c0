# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""libbpf (libbpf.so.1, >= 1.0 semantics) and bpf(2) through ctypes.

Object handling (open, configure, reuse maps, load) goes through libbpf.
Commands whose libbpf 1.1 wrappers take awkward or too-old opts structs
(link create/update/detach, object info) are issued as raw bpf(2) syscalls.
Every failure raises BpfError carrying errno, a message and, for libbpf
calls, the lines libbpf logged meanwhile (the verifier log on load errors).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import ctypes.util
import errno as errno_mod
import os
import platform
import threading
from contextlib import contextmanager

# uapi enum bpf_cmd
BPF_MAP_CREATE = 0
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_BTF_GET_FD_BY_ID = 19
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_DETACH = 34

# uapi enum bpf_attach_type
BPF_XDP = 37
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47

# uapi enum bpf_link_type
BPF_LINK_TYPE_XDP = 6
BPF_LINK_TYPE_TCX = 11

# uapi enum bpf_prog_type
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_XDP = 6

# XDP attach flags and modes (uapi if_link.h)
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_ATTACHED_NONE = 0
XDP_ATTACHED_DRV = 1
XDP_ATTACHED_SKB = 2
XDP_ATTACHED_HW = 3
XDP_ATTACHED_MULTI = 4
XDP_ATTACH_MODE_NAMES = {
    XDP_ATTACHED_NONE: 'none',
    XDP_ATTACHED_DRV: 'native',
    XDP_ATTACHED_SKB: 'generic',
    XDP_ATTACHED_HW: 'offload',
    XDP_ATTACHED_MULTI: 'multi',
}

BPF_F_REPLACE = 1 << 2

# libbpf enum bpf_tc_attach_point, enum bpf_tc_flags
BPF_TC_INGRESS = 1 << 0
BPF_TC_EGRESS = 1 << 1
BPF_TC_F_REPLACE = 1 << 0
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_OBJ_NAME_LEN = 16

# BTF kinds used to find a variable inside a data section.
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15

_SYS_BPF = {'x86_64': 321, 'aarch64': 280, 'riscv64': 280, 'ppc64le': 361, 's390x': 351}

LIBBPF_INFO = 1                 # enum libbpf_print_level: WARN 0, INFO 1, DEBUG 2
LIBBPF_LOG_MAX = 400            # lines of libbpf output kept for errors
LIBBPF_PRINT_BUF = 16 << 20     # libbpf's largest verifier log buffer


class BpfError(Exception):
    """A libbpf or bpf(2) failure: errno, what was attempted, libbpf's log."""

    def __init__(self, err, what, log=None):
        self.errno = abs(int(err)) if err else errno_mod.EIO
        self.what = what
        self.log = list(log or [])
        msg = '%s: %s (errno %d)' % (what, os.strerror(self.errno), self.errno)
        super(BpfError, self).__init__(msg)

    def log_text(self):
        return '\n'.join(self.log)


# -- bpf(2) attribute and info layouts (uapi linux/bpf.h) --------------------

class _LinkCreateAttr(ctypes.Structure):
    _fields_ = [
        ('prog_fd', ctypes.c_uint32),
        ('target_fd', ctypes.c_uint32),     # or target_ifindex
        ('attach_type', ctypes.c_uint32),
        ('flags', ctypes.c_uint32),
        ('relative_fd', ctypes.c_uint32),   # tcx; target_btf_id for others
        ('pad', ctypes.c_uint32),
        ('expected_revision', ctypes.c_uint64),
    ]


class _LinkUpdateAttr(ctypes.Structure):
    _fields_ = [
        ('link_fd', ctypes.c_uint32),
        ('new_prog_fd', ctypes.c_uint32),
        ('flags', ctypes.c_uint32),
        ('old_prog_fd', ctypes.c_uint32),
    ]


class _LinkDetachAttr(ctypes.Structure):
    _fields_ = [('link_fd', ctypes.c_uint32)]


class _GetFdByIdAttr(ctypes.Structure):
    _fields_ = [
        ('id', ctypes.c_uint32),
        ('next_id', ctypes.c_uint32),
        ('open_flags', ctypes.c_uint32),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ('bpf_fd', ctypes.c_uint32),
        ('info_len', ctypes.c_uint32),
        ('info', ctypes.c_uint64),
    ]


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [
        ('map_type', ctypes.c_uint32),
        ('key_size', ctypes.c_uint32),
        ('value_size', ctypes.c_uint32),
        ('max_entries', ctypes.c_uint32),
        ('map_flags', ctypes.c_uint32),
        ('inner_map_fd', ctypes.c_uint32),
        ('numa_node', ctypes.c_uint32),
        ('map_name', ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


class ProgInfo(ctypes.Structure):
    """Head of struct bpf_prog_info (the kernel accepts a shorter info)."""
    _fields_ = [
        ('type', ctypes.c_uint32),
        ('id', ctypes.c_uint32),
        ('tag', ctypes.c_uint8 * 8),
        ('jited_prog_len', ctypes.c_uint32),
        ('xlated_prog_len', ctypes.c_uint32),
        ('jited_prog_insns', ctypes.c_uint64),
        ('xlated_prog_insns', ctypes.c_uint64),
        ('load_time', ctypes.c_uint64),
        ('created_by_uid', ctypes.c_uint32),
        ('nr_map_ids', ctypes.c_uint32),
        ('map_ids', ctypes.c_uint64),
        ('name', ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


class MapInfo(ctypes.Structure):
    """Head of struct bpf_map_info."""
    _fields_ = [
        ('type', ctypes.c_uint32),
        ('id', ctypes.c_uint32),
        ('key_size', ctypes.c_uint32),
        ('value_size', ctypes.c_uint32),
        ('max_entries', ctypes.c_uint32),
        ('map_flags', ctypes.c_uint32),
        ('name', ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


class LinkInfo(ctypes.Structure):
    """Head of struct bpf_link_info; for XDP and TCX links the union starts
    with the ifindex, followed by the attach type for TCX."""
    _fields_ = [
        ('type', ctypes.c_uint32),
        ('id', ctypes.c_uint32),
        ('prog_id', ctypes.c_uint32),
        ('pad', ctypes.c_uint32),
        ('ifindex', ctypes.c_uint32),
        ('attach_type', ctypes.c_uint32),
        ('rest', ctypes.c_uint64 * 4),
    ]


class _XdpQueryOpts(ctypes.Structure):
    _fields_ = [
        ('sz', ctypes.c_size_t),
        ('prog_id', ctypes.c_uint32),
        ('drv_prog_id', ctypes.c_uint32),
        ('hw_prog_id', ctypes.c_uint32),
        ('skb_prog_id', ctypes.c_uint32),
        ('attach_mode', ctypes.c_uint8),
    ]


class TcHook(ctypes.Structure):
    """libbpf struct bpf_tc_hook."""
    _fields_ = [
        ('sz', ctypes.c_size_t),
        ('ifindex', ctypes.c_int),
        ('attach_point', ctypes.c_int),
        ('parent', ctypes.c_uint32),
    ]


class TcOpts(ctypes.Structure):
    """libbpf struct bpf_tc_opts."""
    _fields_ = [
        ('sz', ctypes.c_size_t),
        ('prog_fd', ctypes.c_int),
        ('flags', ctypes.c_uint32),
        ('prog_id', ctypes.c_uint32),
        ('handle', ctypes.c_uint32),
        ('priority', ctypes.c_uint32),
    ]


class _BtfType(ctypes.Structure):
    _fields_ = [
        ('name_off', ctypes.c_uint32),
        ('info', ctypes.c_uint32),
        ('size_or_type', ctypes.c_uint32),
    ]


class _BtfVarSecinfo(ctypes.Structure):
    _fields_ = [
        ('type', ctypes.c_uint32),
        ('offset', ctypes.c_uint32),
        ('size', ctypes.c_uint32),
    ]


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class _Lib(object):
    """The loaded libbpf.so.1 and libc, their prototypes and libbpf's log."""

    _instance = None
    _lock = threading.Lock()

    @classmethod
    def get(cls):
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def __init__(self):
        try:
            self.bpf = ctypes.CDLL('libbpf.so.1', use_errno=True)
        except OSError as e:
            raise BpfError(errno_mod.ENOENT, 'cannot load libbpf.so.1 (install the libbpf1 package): %s' % e)
        self.libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)
        machine = platform.machine()
        if machine not in _SYS_BPF:
            raise BpfError(errno_mod.ENOSYS, 'bpf(2) syscall number unknown for %s' % machine)
        self.sys_bpf = _SYS_BPF[machine]
        self.log = []
        self._print_buf = None
        self._prototypes()
        self._print_cb = _PRINT_FN(self._on_print)
        self.bpf.libbpf_set_print(self._print_cb)

    def _proto(self, name, restype, argtypes):
        fn = getattr(self.bpf, name)
        fn.restype = restype
        fn.argtypes = argtypes

    def _prototypes(self):
        vp, ci, cu, cs = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_char_p
        self.libc.syscall.restype = ctypes.c_long
        self.libc.vsnprintf.restype = ci
        self.libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, cs, vp]
        protos = [
            ('libbpf_set_print', vp, [_PRINT_FN]),
            ('libbpf_num_possible_cpus', ci, []),
            ('bpf_object__open_file', vp, [cs, vp]),
            ('bpf_object__close', None, [vp]),
            ('bpf_object__load', ci, [vp]),
            ('bpf_object__btf', vp, [vp]),
            ('bpf_object__next_map', vp, [vp, vp]),
            ('bpf_object__find_map_by_name', vp, [vp, cs]),
            ('bpf_object__find_program_by_name', vp, [vp, cs]),
            ('bpf_program__fd', ci, [vp]),
            ('bpf_map__name', cs, [vp]),
            ('bpf_map__type', ci, [vp]),
            ('bpf_map__key_size', cu, [vp]),
            ('bpf_map__value_size', cu, [vp]),
            ('bpf_map__max_entries', cu, [vp]),
            ('bpf_map__map_flags', cu, [vp]),
            ('bpf_map__fd', ci, [vp]),
            ('bpf_map__is_internal', ctypes.c_bool, [vp]),
            ('bpf_map__set_max_entries', ci, [vp, cu]),
            ('bpf_map__reuse_fd', ci, [vp, ci]),
            ('bpf_map__initial_value', vp, [vp, ctypes.POINTER(ctypes.c_size_t)]),
            ('bpf_map__set_initial_value', ci, [vp, vp, ctypes.c_size_t]),
            ('bpf_map__btf_value_type_id', cu, [vp]),
            ('btf__find_by_name_kind', ctypes.c_int32, [vp, cs, cu]),
            ('btf__type_by_id', ctypes.POINTER(_BtfType), [vp, cu]),
            ('btf__name_by_offset', cs, [vp, cu]),
            ('bpf_obj_pin', ci, [ci, cs]),
            ('bpf_obj_get', ci, [cs]),
            ('bpf_map_lookup_elem', ci, [ci, vp, vp]),
            ('bpf_map_update_elem', ci, [ci, vp, vp, ctypes.c_uint64]),
            ('bpf_map_delete_elem', ci, [ci, vp]),
            ('bpf_map_get_next_key', ci, [ci, vp, vp]),
            ('bpf_xdp_query', ci, [ci, ci, ctypes.POINTER(_XdpQueryOpts)]),
            ('bpf_tc_hook_create', ci, [ctypes.POINTER(TcHook)]),
            ('bpf_tc_hook_destroy', ci, [ctypes.POINTER(TcHook)]),
            ('bpf_tc_attach', ci, [ctypes.POINTER(TcHook), ctypes.POINTER(TcOpts)]),
            ('bpf_tc_detach', ci, [ctypes.POINTER(TcHook), ctypes.POINTER(TcOpts)]),
            ('bpf_tc_query', ci, [ctypes.POINTER(TcHook), ctypes.POINTER(TcOpts)]),
        ]
        for name, restype, argtypes in protos:
            self._proto(name, restype, argtypes)

    def _on_print(self, level, fmt, va):
        if level > LIBBPF_INFO:  # debug chatter: not kept
            return 0
        # One call formats the whole verifier log: a va_list cannot be
        # consumed twice, so the buffer is as large as libbpf's log buffer.
        if self._print_buf is None:
            self._print_buf = ctypes.create_string_buffer(LIBBPF_PRINT_BUF)
        buf = self._print_buf
        try:
            self.libc.vsnprintf(buf, len(buf), fmt, va)
            for line in buf.value.decode('utf-8', 'replace').splitlines():
                self.log.append(line)
            del self.log[:-LIBBPF_LOG_MAX]
        except Exception:  # never let an exception cross the C boundary
            pass
        return 0

    def take_log(self):
        """What libbpf printed since the last call. Called before every libbpf operation, it
        also makes libbpf's print callback ours again: another copy of this module in the
        process (bench/jitlines.py imports it by file name) registers its own, and a load
        whose verifier log went elsewhere could not tell why the kernel refused it (the
        fallback to the compat build reads that log)."""
        self.bpf.libbpf_set_print(self._print_cb)
        log, self.log = self.log, []
        return log


def lib():
    return _Lib.get()


def _check(ret, what):
    """libbpf >= 1.0 int returns: negative errno on failure."""
    if ret < 0:
        raise BpfError(-ret, what, lib().take_log())
    return ret


def _check_ptr(ptr, what):
    if not ptr:
        raise BpfError(ctypes.get_errno(), what, lib().take_log())
    return ptr


def sys_bpf(cmd, attr, what):
    """Issue bpf(2) with a ctypes attribute structure; returns the result."""
    lb = lib()
    ret = lb.libc.syscall(ctypes.c_long(lb.sys_bpf), ctypes.c_long(cmd),
                          ctypes.byref(attr), ctypes.c_long(ctypes.sizeof(attr)))
    if ret < 0:
        raise BpfError(ctypes.get_errno(), what)
    return ret


def close_fd(fd):
    if fd is not None and fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


@contextmanager
def fd_closing(fd):
    try:
        yield fd
    finally:
        close_fd(fd)


def num_possible_cpus():
    return _check(lib().bpf.libbpf_num_possible_cpus(), 'libbpf_num_possible_cpus')


# -- pins ---------------------------------------------------------------------

def obj_pin(fd, path):
    _check(lib().bpf.bpf_obj_pin(fd, path.encode()), 'pin %s' % path)


def obj_get(path):
    return _check(lib().bpf.bpf_obj_get(path.encode()), 'open pinned object %s' % path)


# -- info and ids -------------------------------------------------------------

def obj_info(fd, info, what):
    """BPF_OBJ_GET_INFO_BY_FD into info (a ctypes structure, which may carry buffer
    pointers and counts for the kernel to fill); returns info."""
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, attr, what)
    return info


def _info(fd, cls, what):
    return obj_info(fd, cls(), what)


def prog_info(fd):
    return _info(fd, ProgInfo, 'get program info')


def map_info(fd):
    return _info(fd, MapInfo, 'get map info')


def link_info(fd):
    return _info(fd, LinkInfo, 'get link info')


def _fd_by_id(cmd, obj_id, what):
    return sys_bpf(cmd, _GetFdByIdAttr(id=obj_id), '%s %d' % (what, obj_id))


def prog_fd_by_id(prog_id):
    return _fd_by_id(BPF_PROG_GET_FD_BY_ID, prog_id, 'open program id')


def map_fd_by_id(map_id):
    return _fd_by_id(BPF_MAP_GET_FD_BY_ID, map_id, 'open map id')


def btf_fd_by_id(btf_id):
    return _fd_by_id(BPF_BTF_GET_FD_BY_ID, btf_id, 'open BTF id')


def link_fd_by_id(link_id):
    return _fd_by_id(BPF_LINK_GET_FD_BY_ID, link_id, 'open link id')


def prog_name_by_id(prog_id):
    with fd_closing(prog_fd_by_id(prog_id)) as fd:
        return prog_info(fd).name.decode()


# -- links --------------------------------------------------------------------

def link_create_xdp(prog_fd, ifindex, xdp_flags):
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_fd=ifindex, attach_type=BPF_XDP, flags=xdp_flags)
    return sys_bpf(BPF_LINK_CREATE, attr, 'attach XDP link to ifindex %d' % ifindex)


def link_create_tcx(prog_fd, ifindex, attach_type=BPF_TCX_EGRESS):
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_fd=ifindex, attach_type=attach_type)
    return sys_bpf(BPF_LINK_CREATE, attr, 'attach tcx link to ifindex %d' % ifindex)


def link_update(link_fd, new_prog_fd, old_prog_fd=None):
    """Atomically replace the program of a link; with old_prog_fd, only if the
    link still runs that program (BPF_F_REPLACE)."""
    attr = _LinkUpdateAttr(link_fd=link_fd, new_prog_fd=new_prog_fd)
    if old_prog_fd is not None:
        attr.flags = BPF_F_REPLACE
        attr.old_prog_fd = old_prog_fd
    sys_bpf(BPF_LINK_UPDATE, attr, 'update link')


def link_detach(link_fd):
    sys_bpf(BPF_LINK_DETACH, _LinkDetachAttr(link_fd=link_fd), 'detach link')


def xdp_query(ifindex):
    """XDP state of an interface: dict(prog_id, drv/skb/hw ids, mode name)."""
    opts = _XdpQueryOpts(sz=ctypes.sizeof(_XdpQueryOpts))
    _check(lib().bpf.bpf_xdp_query(ifindex, 0, ctypes.byref(opts)), 'query XDP of ifindex %d' % ifindex)
    return {
        'prog_id': opts.prog_id,
        'drv_prog_id': opts.drv_prog_id,
        'skb_prog_id': opts.skb_prog_id,
        'hw_prog_id': opts.hw_prog_id,
        'mode': XDP_ATTACH_MODE_NAMES.get(opts.attach_mode, str(opts.attach_mode)),
    }


# -- classic tc (clsact + cls_bpf), for kernels without tcx ---------------------

def _tc_hook(ifindex, point):
    return TcHook(sz=ctypes.sizeof(TcHook), ifindex=ifindex, attach_point=point)


def _tc_opts(handle, priority, prog_fd=0, flags=0):
    return TcOpts(sz=ctypes.sizeof(TcOpts), prog_fd=prog_fd, flags=flags, handle=handle, priority=priority)


def tc_hook_create(ifindex):
    """Add a clsact qdisc; returns False when one was already there."""
    ret = lib().bpf.bpf_tc_hook_create(ctypes.byref(_tc_hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS)))
    if ret == -errno_mod.EEXIST:
        lib().take_log()
        return False
    _check(ret, 'add clsact qdisc to ifindex %d' % ifindex)
    return True


def tc_hook_destroy(ifindex):
    """Delete the clsact qdisc (and every filter on it)."""
    _check(lib().bpf.bpf_tc_hook_destroy(ctypes.byref(_tc_hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS))),
           'delete clsact qdisc of ifindex %d' % ifindex)


def tc_attach(ifindex, prog_fd, handle, priority, replace=False, point=BPF_TC_EGRESS):
    """Attach a direct-action cls_bpf filter at handle/priority; with
    replace, swap the program of that filter in place (atomic)."""
    opts = _tc_opts(handle, priority, prog_fd, BPF_TC_F_REPLACE if replace else 0)
    _check(lib().bpf.bpf_tc_attach(ctypes.byref(_tc_hook(ifindex, point)), ctypes.byref(opts)),
           'attach tc filter %x:%x to ifindex %d' % (priority, handle, ifindex))
    return opts.prog_id


def tc_detach(ifindex, handle, priority, point=BPF_TC_EGRESS):
    _check(lib().bpf.bpf_tc_detach(ctypes.byref(_tc_hook(ifindex, point)),
                                   ctypes.byref(_tc_opts(handle, priority))),
           'detach tc filter %x:%x from ifindex %d' % (priority, handle, ifindex))


def tc_query(ifindex, handle, priority, point=BPF_TC_EGRESS):
    """Program id of the cls_bpf filter at handle/priority; None when there
    is no such filter (or no clsact qdisc)."""
    opts = _tc_opts(handle, priority)
    ret = lib().bpf.bpf_tc_query(ctypes.byref(_tc_hook(ifindex, point)), ctypes.byref(opts))
    if ret in (-errno_mod.ENOENT, -errno_mod.EINVAL):
        lib().take_log()
        return None
    _check(ret, 'query tc filter %x:%x of ifindex %d' % (priority, handle, ifindex))
    return opts.prog_id


# -- maps ---------------------------------------------------------------------

def map_create(map_type, name, key_size, value_size, max_entries, map_flags=0):
    attr = _MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                          max_entries=max_entries, map_flags=map_flags,
                          map_name=name.encode()[:BPF_OBJ_NAME_LEN - 1])
    return sys_bpf(BPF_MAP_CREATE, attr, 'create map %s' % name)


def map_lookup(fd, key, value):
    """Look key up into the ctypes buffer value; False when absent."""
    ret = lib().bpf.bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))
    if ret == -errno_mod.ENOENT:
        return False
    _check(ret, 'map lookup')
    return True


def map_update(fd, key, value, flags=BPF_ANY):
    _check(lib().bpf.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), flags), 'map update')


def map_delete(fd, key):
    """Delete key; False when it was absent."""
    ret = lib().bpf.bpf_map_delete_elem(fd, ctypes.byref(key))
    if ret == -errno_mod.ENOENT:
        return False
    _check(ret, 'map delete')
    return True


def map_keys(fd, key_size):
    """Yield every key of a hash map as bytes (racy by nature: a snapshot)."""
    cur = None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        ret = lib().bpf.bpf_map_get_next_key(fd, None if cur is None else ctypes.byref(cur), ctypes.byref(nxt))
        if ret == -errno_mod.ENOENT:
            return
        _check(ret, 'map get next key')
        yield nxt.raw
        cur = ctypes.create_string_buffer(nxt.raw, key_size)


def percpu_value_size(value_size):
    return (value_size + 7) // 8 * 8


# -- objects ------------------------------------------------------------------

class BpfMap(object):
    """A map of an opened (not necessarily loaded) bpf_object."""

    def __init__(self, ptr):
        self.ptr = ptr
        b = lib().bpf
        self.name = b.bpf_map__name(ptr).decode()

    def _get(self, fn):
        return getattr(lib().bpf, 'bpf_map__' + fn)(self.ptr)

    @property
    def type(self):
        return self._get('type')

    @property
    def key_size(self):
        return self._get('key_size')

    @property
    def value_size(self):
        return self._get('value_size')

    @property
    def max_entries(self):
        return self._get('max_entries')

    @property
    def map_flags(self):
        return self._get('map_flags')

    @property
    def is_internal(self):
        return self._get('is_internal')

    @property
    def fd(self):
        return _check(self._get('fd'), 'fd of map %s' % self.name)

    def set_max_entries(self, n):
        _check(lib().bpf.bpf_map__set_max_entries(self.ptr, n), 'set max_entries of map %s' % self.name)

    def reuse_fd(self, fd):
        _check(lib().bpf.bpf_map__reuse_fd(self.ptr, fd), 'reuse pinned map for %s' % self.name)

    def initial_value(self):
        size = ctypes.c_size_t(0)
        ptr = _check_ptr(lib().bpf.bpf_map__initial_value(self.ptr, ctypes.byref(size)),
                         'initial value of map %s' % self.name)
        return ctypes.string_at(ptr, size.value)

    def set_initial_value(self, data):
        buf = ctypes.create_string_buffer(data, len(data))
        _check(lib().bpf.bpf_map__set_initial_value(self.ptr, buf, len(data)),
               'set initial value of map %s' % self.name)


class BpfObject(object):
    """bpf_object__open_file() .. bpf_object__close(); use as a context manager."""

    def __init__(self, path):
        self.path = path
        lib().take_log()
        self.ptr = _check_ptr(lib().bpf.bpf_object__open_file(path.encode(), None), 'open BPF object %s' % path)

    def close(self):
        if self.ptr:
            lib().bpf.bpf_object__close(self.ptr)
            self.ptr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def maps(self):
        b = lib().bpf
        ptr = b.bpf_object__next_map(self.ptr, None)
        while ptr:
            yield BpfMap(ptr)
            ptr = b.bpf_object__next_map(self.ptr, ptr)

    def find_map(self, name):
        ptr = lib().bpf.bpf_object__find_map_by_name(self.ptr, name.encode())
        if not ptr:
            raise BpfError(errno_mod.ENOENT, 'map %s not found in %s' % (name, self.path))
        return BpfMap(ptr)

    def internal_map(self, suffix):
        """The internal map whose name ends with suffix (e.g. '.rodata')."""
        for m in self.maps():
            if m.is_internal and m.name.endswith(suffix):
                return m
        raise BpfError(errno_mod.ENOENT, 'no %s section in %s' % (suffix, self.path))

    def var_offset(self, section, var):
        """(offset, size) of a global variable inside a data section, by BTF."""
        b = lib().bpf
        btf = _check_ptr(b.bpf_object__btf(self.ptr), 'BTF of %s (build with clang -g)' % self.path)
        sec_id = b.btf__find_by_name_kind(btf, section.encode(), BTF_KIND_DATASEC)
        if sec_id < 0:
            raise BpfError(-sec_id, 'BTF data section %s in %s' % (section, self.path))
        sec = b.btf__type_by_id(btf, sec_id)
        vlen = sec.contents.info & 0xffff
        infos = ctypes.cast(ctypes.addressof(sec.contents) + ctypes.sizeof(_BtfType),
                            ctypes.POINTER(_BtfVarSecinfo))
        for i in range(vlen):
            vt = b.btf__type_by_id(btf, infos[i].type)
            if b.btf__name_by_offset(btf, vt.contents.name_off) == var.encode():
                return infos[i].offset, infos[i].size
        raise BpfError(errno_mod.ENOENT, 'variable %s not in %s of %s' % (var, section, self.path))

    def program_fd(self, name):
        b = lib().bpf
        prog = b.bpf_object__find_program_by_name(self.ptr, name.encode())
        if not prog:
            raise BpfError(errno_mod.ENOENT, 'program %s not found in %s' % (name, self.path))
        return _check(b.bpf_program__fd(prog), 'fd of program %s (object not loaded?)' % name)

    def has_program(self, name):
        return bool(lib().bpf.bpf_object__find_program_by_name(self.ptr, name.encode()))

    def load(self):
        lib().take_log()
        _check(lib().bpf.bpf_object__load(self.ptr), 'load BPF object %s' % self.path)
