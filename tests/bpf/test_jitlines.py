# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""bench/jitlines.py, which turns perf's bpf_prog_<tag>_<function>+0x<offset> into a source
line (bench/profile.py's hot offsets): read from the kernel's line info of the loaded
erb_xdp, a function's first offset resolves to a line of that function, and any offset to
a line of the sources whose text is the text reported."""

import os
import re
import sys

import erbtest

sys.path.insert(0, os.path.join(erbtest.REPO, 'bench'))
import jitlines  # noqa: E402

SRC = os.path.join(erbtest.REPO, 'files', 'bpf')


def function_lines(path, name):
    """First and last line numbers of C function name in path (from its definition to the
    next line that is a lone closing brace)."""
    with open(path) as fh:
        text = fh.read().splitlines()
    start = next(i for i, line in enumerate(text) if re.match(r'static .*\b%s\(' % name, line)) + 1
    end = next(i for i in range(start, len(text)) if text[i] == '}') + 1
    return start, end


def test_offsets_of_a_function_resolve_to_its_lines(erb):
    prog_id = erbtest.B.prog_info(erb.obj.program_fd('erb_xdp')).id
    lines = jitlines.prog_lines(prog_id)
    assert lines, 'no line info for erb_xdp (id %d)' % prog_id
    assert [a for a, _w, _t in lines] == sorted(a for a, _w, _t in lines)
    assert {w.split(':')[0] for _a, w, _t in lines} >= {'erb.bpf.c', 'erb_cache.h', 'erb_seqadj.h'}
    m = jitlines.LineMap(names=('erb_xdp',))
    first, last = function_lines(os.path.join(SRC, 'erb_cache.h'), 'probe_step')
    # erb_tc_egress has its own copy of probe_step (a GET fill checks the cache): erb_xdp's
    # is the one this map has lines for
    syms = [s for s in m.syms if s.endswith('_probe_step') and m.line(s, 0)]
    assert syms, 'no probe_step of erb_xdp in /proc/kallsyms'
    # the function's first instruction is on its own lines
    where, _text = m.line(syms[0], 0)
    f, n = where.split(':')
    assert f == 'erb_cache.h' and first <= int(n) <= last, (where, first, last)
    # any offset: a line of the sources (of probe_step or of what it inlines), text as there
    for off in (0x40, 0x100, 0x160):
        where, text = m.line(syms[0], off)
        f, n = where.split(':')
        with open(os.path.join(SRC, f)) as fh:
            assert fh.read().splitlines()[int(n) - 1].strip() == text, (off, where, text)
    assert m.line('bpf_prog_0123456789abcdef_no_such_function', 0) is None
