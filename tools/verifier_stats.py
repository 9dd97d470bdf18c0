# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the kernel's verifier spends on ERB's programs: instructions processed, stack per frame,
and (--where) which subprograms and source lines took the instructions.

usage: python3 tools/verifier_stats.py [--object files/bpf/erb.bpf.o] [--prog erb_xdp] [--where N] [--chains N]

Loads only the named programs of the object (libbpf.so.1 through ctypes, default .rodata: the
build's ERB_DEFAULT_FLAGS) and prints the verifier's closing statistics. With --where, the
verifier's instruction-level log (level 2, the kernel keeps its last 1 GiB) is read back and the
processed instructions are counted per subprogram (how many times each was entered, too) and
for the N busiest source lines. A subprogram entered many times is verified again for each state
its callers reach it in: the place to cut (a global function is verified once, on its own).
With --chains, the N deepest call chains from each program (direct calls, global functions and
bpf_loop callbacks, from llvm-objdump's relocations) with their frames as check_max_stack_depth()
adds them against its 512-byte limit: each rounded up to 16 bytes (a JIT kernel), and as they are
before the verifier inlines bpf_loop. The depths of a loaded program's closing line include the
24 bytes (three u64 slots) that inlining adds to each function with a bpf_loop call (ERB's all
qualify: constant callback, flags 0), so those are taken off again; a refused program's line
has them without. Checked on 6.18.44: erb_xdp -> erb_pipe -> pipe_check_step -> probe_step counted
176 + 160 + 160 + 16 = 512 and loaded; 8 bytes more in erb_pipe made it 528 and the kernel refused
the object ("combined stack size of 4 calls is 528").
Needs root.
"""
import argparse
import collections
import ctypes
import re
import subprocess
import sys

LOG_MAX = (1 << 30) - 1          # the kernel's limit for a verifier log


def libbpf():
    b = ctypes.CDLL('libbpf.so.1', use_errno=True)
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    for name, res, args in (('bpf_object__open', vp, [cp]), ('bpf_object__next_program', vp, [vp, vp]),
                            ('bpf_program__name', cp, [vp]), ('bpf_program__set_autoload', ctypes.c_int,
                                                              [vp, ctypes.c_bool]),
                            ('bpf_program__set_log_level', ctypes.c_int, [vp, ctypes.c_uint32]),
                            ('bpf_program__set_log_buf', ctypes.c_int, [vp, cp, ctypes.c_size_t]),
                            ('bpf_object__load', ctypes.c_int, [vp]), ('bpf_object__close', None, [vp])):
        getattr(b, name).restype = res
        getattr(b, name).argtypes = args
    return b


LIBBPF_LOG = {}                   # object path: libbpf's own messages of its last verify()
PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


def verify(path, progs, level):
    """Load progs of path at log level; {prog: log text}, load rc. libbpf's own messages (debug
    level: which subprograms it appends where) are kept in LIBBPF_LOG[path]."""
    b = libbpf()
    libc = ctypes.CDLL(None)
    libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    msgs, line = [], ctypes.create_string_buffer(4096)

    def printer(_level, fmt, args):
        # args is the callback's va_list (on x86-64 a pointer to its state): vsnprintf reads it
        libc.vsnprintf(line, len(line), fmt, args)
        msgs.append(line.value.decode(errors='replace'))
        return 0
    callback = PRINT_FN(printer)
    b.libbpf_set_print.restype = ctypes.c_void_p
    b.libbpf_set_print.argtypes = [PRINT_FN]
    old = b.libbpf_set_print(callback)
    obj = b.bpf_object__open(path.encode())
    if not obj:
        sys.exit('cannot open %s' % path)
    bufs, p = {}, None
    while True:
        p = b.bpf_object__next_program(obj, p)
        if not p:
            break
        name = b.bpf_program__name(p).decode()
        b.bpf_program__set_autoload(p, name in progs)
        if name in progs:
            bufs[name] = ctypes.create_string_buffer(LOG_MAX if level & 2 else 16 << 20)
            b.bpf_program__set_log_buf(p, bufs[name], len(bufs[name]))
            b.bpf_program__set_log_level(p, level)
    missing = set(progs) - set(bufs)
    if missing:
        sys.exit('no program %s in %s' % (', '.join(sorted(missing)), path))
    rc = b.bpf_object__load(obj)
    logs = {n: buf.value for n, buf in bufs.items()}
    b.bpf_object__close(obj)
    ctypes.cast(b.libbpf_set_print, ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p))(old)
    LIBBPF_LOG[path] = ''.join(msgs)
    return logs, rc


def subprog_starts(path, prog):
    """{instruction index: subprogram} of prog, from libbpf's debug messages of the last verify()
    of path that loaded prog: libbpf appends each program's subprograms ("prog 'P': added N insns
    from sub-prog 'S'") and then relocates the calls into them ("points to subprog 'S' (now at I
    offset)")."""
    if not re.search(r"prog '%s': " % prog, LIBBPF_LOG.get(path, '')):
        verify(path, [prog], 4 | 1)
    starts, main = {0: prog}, None
    for line in LIBBPF_LOG[path].splitlines():
        m = re.search(r"prog '(\w+)': added \d+ insns from sub-prog", line)
        if m:
            main = m.group(1)       # libbpf names the program it links the subprogram into
        m = re.search(r"points to subprog '(\w+)' \(now at (\d+) offset\)", line)
        if m and main == prog:
            starts[int(m.group(2))] = m.group(1)
    return starts


def call_graph(path):
    """{function: set of callees} of an object: bpf2bpf calls (R_BPF_64_32 relocations) and the
    functions whose address is loaded (bpf_loop and timer callbacks: R_BPF_64_64 into .text)."""
    syms = {}
    for line in subprocess.run(['llvm-objdump', '-t', path], stdout=subprocess.PIPE, text=True,
                               check=True).stdout.splitlines():
        m = re.match(r'([0-9a-f]+) .* F (\S+)\s+[0-9a-f]+ (\w+)$', line)
        if m:
            syms[(m.group(2), int(m.group(1), 16))] = m.group(3)
    text = {off: name for (sec, off), name in syms.items() if sec == '.text'}
    names, graph, fn, imm = set(syms.values()), {}, None, None
    for line in subprocess.run(['llvm-objdump', '-dr', '--no-show-raw-insn', path], stdout=subprocess.PIPE,
                               text=True, check=True).stdout.splitlines():
        m = re.match(r'^[0-9a-f]+ <(\w+)>:', line)
        if m:
            if m.group(1) in names:
                fn = m.group(1)
                graph.setdefault(fn, set())
            continue
        m = re.search(r'r\d+ = (\d+) ll', line)
        if m:
            imm = int(m.group(1))
            continue
        if fn and re.search(r'R_BPF_64_64\s+\.text$', line) and imm in text:
            graph[fn].add(text[imm])
        m = re.search(r'R_BPF_64_32\s+(\w+)$', line)
        if fn and m and m.group(1) in names:
            graph[fn].add(m.group(1))
    return graph


def disasm_facts(path):
    """From one disassembly of path: the functions with a bpf_loop call (helper 181), and
    {function: deepest r10 offset its instructions name}, a floor for its verified depth."""
    callers, reach, fn = set(), collections.Counter(), None
    for line in subprocess.run(['llvm-objdump', '-d', '--no-show-raw-insn', path], stdout=subprocess.PIPE,
                               text=True, check=True).stdout.splitlines():
        m = re.match(r'^[0-9a-f]+ <(\w+)>:', line)
        if m:
            if not m.group(1).startswith('LBB'):     # a label inside the function, not one
                fn = m.group(1)
            continue
        if not fn:
            continue
        if re.search(r'\tcall 181$', line):
            callers.add(fn)
        m = re.search(r'r10 - (\d+)\)', line)
        if m:
            reach[fn] = max(reach[fn], int(m.group(1)))
    return callers, reach


def frames(log, path, prog, loaded):
    """{function: bytes check_max_stack_depth() counts for its frame}, or None without depths."""
    m = re.findall(rb'stack depth ([\d+]+)', log)
    if not m:
        return None
    depths = [int(x) for x in m[-1].split(b'+')]
    order = [name for _unused, name in sorted(subprog_starts(path, prog).items())]
    callers, reach = disasm_facts(path)
    inlined = callers if loaded else set()
    return {name: -(-max(d - (24 if name in inlined else 0), reach[name]) // 16) * 16
            for name, d in zip(order, depths)}


def deepest_chains(log, path, prog, loaded):
    """[(bytes, [function, ...])] of prog's call chains, deepest first."""
    frame = frames(log, path, prog, loaded)
    if frame is None:
        return None, []
    graph, found = call_graph(path), []

    def walk(fn, trail, total):
        trail, total = trail + [fn], total + frame[fn]
        found.append((total, trail))
        for callee in sorted(graph.get(fn, ())):
            if callee in frame and callee not in trail:
                walk(callee, trail, total)
    walk(prog, [], 0)
    found.sort(key=lambda c: -c[0])
    return frame, found


def chains(log, path, prog, top, loaded):
    """Print prog's top deepest call chains."""
    frame, found = deepest_chains(log, path, prog, loaded)
    if frame is None:
        print('  (no stack depths in the log)')
        return
    for total, trail in found[:top]:
        print('  %4d bytes%s  %s' % (total, ' OVER 512' if total > 512 else '',
                                     ' -> '.join('%s (%d)' % (f, frame[f]) for f in trail)))


def where(log, starts, top):
    ins = re.compile(rb'^(\d+): \(')
    bounds = sorted(starts)
    per_sub, entries, per_line, src, last = (collections.Counter(), collections.Counter(),
                                             collections.Counter(), {}, None)
    for line in log.splitlines():
        if line.startswith(b'; '):
            last = line.rsplit(b'@', 1)[-1].strip().decode(errors='replace')
            continue
        m = ins.match(line)
        if not m:
            continue
        i = int(m.group(1))
        sub = starts[max(b for b in bounds if b <= i)]
        per_sub[sub] += 1
        if i in starts and i:
            entries[sub] += 1
        src.setdefault(i, last)
        per_line[src[i]] += 1
    total = sum(per_sub.values())
    print('instructions in the log: %d (the kernel keeps the last 1 GiB of it)' % total)
    for sub, n in per_sub.most_common():
        print('  %-20s %8d  %5.1f%%  entered %d' % (sub, n, 100.0 * n / total, entries[sub]))
    print('busiest source lines:')
    for line, n in per_line.most_common(top):
        print('  %8d  %s' % (n, line))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--object', default='files/bpf/erb.bpf.o')
    ap.add_argument('--prog', action='append', help='program(s) to load (default erb_xdp and erb_tc_egress)')
    ap.add_argument('--where', type=int, metavar='N', help='count instructions per subprogram and source line')
    ap.add_argument('--chains', type=int, metavar='N', help='the N deepest call chains and their stack')
    args = ap.parse_args()
    progs = args.prog or ['erb_xdp', 'erb_tc_egress']
    logs, rc = verify(args.object, progs, 2 if args.where else 4 | 1)
    for name in progs:
        text = logs[name].decode(errors='replace').splitlines()
        stats = [l for l in text if l.startswith(('processed ', 'stack depth ', 'combined stack'))]
        print('%s: %s' % (name, '; '.join(stats[-3:]) or '(no statistics: see the log)'))
    print('load: %s' % ('ok' if rc == 0 else 'failed (%d)' % rc))
    if args.chains:
        for name in progs:
            print('--- %s: deepest call chains' % name)
            chains(logs[name], args.object, name, args.chains, rc == 0)
    if args.where:
        for name in progs:
            print('--- %s' % name)
            where(logs[name], subprog_starts(args.object, name), args.where)
    return 0 if rc == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
