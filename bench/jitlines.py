# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Source lines of JIT addresses of loaded BPF programs.

perf names the samples of a BPF program bpf_prog_<tag>_<function>+0x<offset>. This bpftool has no
disassembler (built without libbfd), but the kernel reports, per loaded program, the JIT address of each
of its BTF line-info records (bpf_prog_info.jited_line_info) and the source text of the line: an
address belongs to the last record at or before it. Samples skid: the line of a stalled load is usually
the one just before the sampled address.

    .venv/bin/python bench/jitlines.py bpf_prog_<tag>_<function>+0x16a [...]

Needs root (kernel addresses of programs).
"""
import bisect
import ctypes
import json
import os
import struct
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'plugins', 'module_utils'))
import libbpf as lb  # noqa: E402  pylint: disable=import-error,wrong-import-position

BTF_MAGIC = 0xeB9F


class ProgInfo(ctypes.Structure):
    """struct bpf_prog_info up to the line-info fields (include/uapi/linux/bpf.h)."""
    _fields_ = [
        ('type', ctypes.c_uint32), ('id', ctypes.c_uint32), ('tag', ctypes.c_uint8 * 8),
        ('jited_prog_len', ctypes.c_uint32), ('xlated_prog_len', ctypes.c_uint32),
        ('jited_prog_insns', ctypes.c_uint64), ('xlated_prog_insns', ctypes.c_uint64),
        ('load_time', ctypes.c_uint64), ('created_by_uid', ctypes.c_uint32), ('nr_map_ids', ctypes.c_uint32),
        ('map_ids', ctypes.c_uint64), ('name', ctypes.c_char * 16), ('ifindex', ctypes.c_uint32),
        ('gpl_compatible', ctypes.c_uint32), ('netns_dev', ctypes.c_uint64), ('netns_ino', ctypes.c_uint64),
        ('nr_jited_ksyms', ctypes.c_uint32), ('nr_jited_func_lens', ctypes.c_uint32),
        ('jited_ksyms', ctypes.c_uint64), ('jited_func_lens', ctypes.c_uint64),
        ('btf_id', ctypes.c_uint32), ('func_info_rec_size', ctypes.c_uint32), ('func_info', ctypes.c_uint64),
        ('nr_func_info', ctypes.c_uint32), ('nr_line_info', ctypes.c_uint32), ('line_info', ctypes.c_uint64),
        ('jited_line_info', ctypes.c_uint64), ('nr_jited_line_info', ctypes.c_uint32),
        ('line_info_rec_size', ctypes.c_uint32), ('jited_line_info_rec_size', ctypes.c_uint32),
    ]


class BtfInfo(ctypes.Structure):
    _fields_ = [('btf', ctypes.c_uint64), ('btf_size', ctypes.c_uint32), ('id', ctypes.c_uint32),
                ('name', ctypes.c_uint64), ('name_len', ctypes.c_uint32), ('kernel_btf', ctypes.c_uint32)]


def btf_strings(btf_id):
    """The string section of BTF object btf_id."""
    with lb.fd_closing(lb.btf_fd_by_id(btf_id)) as fd:
        size = lb.obj_info(fd, BtfInfo(), 'BTF info').btf_size
        buf = ctypes.create_string_buffer(size)
        lb.obj_info(fd, BtfInfo(btf=ctypes.addressof(buf), btf_size=size), 'BTF data')
    raw = buf.raw
    magic, _ver, _flags, hdr_len, _toff, _tlen, str_off, str_len = struct.unpack_from('<HBBIIIII', raw)
    if magic != BTF_MAGIC:
        raise ValueError('BTF id %d: bad magic %#x' % (btf_id, magic))
    return raw[hdr_len + str_off:hdr_len + str_off + str_len]


def _string(strs, off):
    end = strs.find(b'\0', off)
    return strs[off:end if end >= 0 else len(strs)].decode('utf-8', 'replace')


def prog_lines(prog_id):
    """[(jit address, 'file:line', source text)] of program prog_id, by address."""
    with lb.fd_closing(lb.prog_fd_by_id(prog_id)) as fd:
        info = lb.obj_info(fd, ProgInfo(), 'program info')
        n, nj = info.nr_line_info, info.nr_jited_line_info
        if not n or n != nj or not info.btf_id:
            return []
        rec, jrec = info.line_info_rec_size or 16, info.jited_line_info_rec_size or 8
        lines = ctypes.create_string_buffer(n * rec)
        jlines = ctypes.create_string_buffer(nj * jrec)
        btf_id = info.btf_id
        info = ProgInfo(nr_line_info=n, line_info_rec_size=rec, line_info=ctypes.addressof(lines),
                        nr_jited_line_info=nj, jited_line_info_rec_size=jrec,
                        jited_line_info=ctypes.addressof(jlines))
        lb.obj_info(fd, info, 'program line info')
    strs = btf_strings(btf_id)
    out = []
    for i in range(n):
        _insn, file_off, line_off, line_col = struct.unpack_from('<IIII', lines.raw, i * rec)
        addr, = struct.unpack_from('<Q', jlines.raw, i * jrec)
        if not addr:
            return []   # addresses hidden (not root, or kptr_restrict)
        where = '%s:%d' % (os.path.basename(_string(strs, file_off)), line_col >> 10)
        out.append((addr, where, _string(strs, line_off).strip()))
    out.sort()
    return out


def kallsyms(prefix='bpf_prog_'):
    """{name: [addresses]}: two programs' copies of one function (same instructions, same
    tag: erb_xdp's and erb_tc_egress's probe_step) share a name."""
    syms = {}
    with open('/proc/kallsyms') as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3 and parts[2].startswith(prefix):
                syms.setdefault(parts[2], []).append(int(parts[0], 16))
    return syms


class LineMap:
    """Source lines of 'bpf_prog_<tag>_<func>+0x<off>' for every loaded program named in names."""

    def __init__(self, names=('erb_xdp', 'erb_tc_egress')):
        self.syms = kallsyms()
        self.lines = []
        shown = json.loads(subprocess.run(['bpftool', '-j', 'prog', 'show'], check=True,
                                          capture_output=True, text=True).stdout)
        for p in shown:
            if p.get('name') in names:
                self.lines.extend(prog_lines(p['id']))
        self.lines.sort()
        self.addrs = [a for a, _w, _t in self.lines]
        self.starts = set(self.addrs)

    def line(self, sym, off):
        """('file:line', text) of sym+off, or None when unknown."""
        bases = self.syms.get(sym)
        if bases is None:
            # a main program: perf names it by its first function's tag, kallsyms by the program's
            func = sym.split('_', 3)[-1]
            same = [a for n, a in self.syms.items() if n.split('_', 3)[-1] == func]
            bases = same[0] if len(same) == 1 else []
        # of a name's copies, the one in the programs named (its first instruction has a line)
        for base in bases:
            i = bisect.bisect_right(self.addrs, base + off) - 1
            if i >= 0 and self.addrs[i] >= base and base in self.starts:
                return self.lines[i][1], self.lines[i][2]
        return None


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    m = LineMap()
    if not m.lines:
        raise SystemExit('no line info: are erb_xdp / erb_tc_egress loaded, and are you root?')
    for arg in sys.argv[1:]:
        sym, _sep, off = arg.rpartition('+')
        where = m.line(sym, int(off, 16)) if sym else None
        print('%s  %s' % (arg, '%s  %s' % where if where else '(unknown)'))


if __name__ == '__main__':
    main()
