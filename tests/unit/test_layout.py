# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""erb_layout.py must agree with files/bpf/erb.h: constants, flags, enum order,
struct sizes and every field offset (checked by compiling erb.h with gcc),
and the struct sizes in erb.bpf.o's BTF."""

import ctypes
import os
import re
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'loader'))
from collection_path import ensure_collection_path  # noqa: E402

ensure_collection_path()

from ansible_collections.erb.booster.plugins.module_utils import erb_layout  # noqa: E402

HEADER = os.path.join(REPO, 'files', 'bpf', 'erb.h')
BPF_DIR = os.path.join(REPO, 'files', 'bpf')


def header_text():
    with open(HEADER) as f:
        text = f.read()
    return re.sub(r'/\*.*?\*/', '', text, flags=re.S)


def header_defines():
    out = {}
    for name, value in re.findall(r'^#define[ \t]+(ERB_\w+)[ \t]+(.+?)[ \t]*$', header_text(), flags=re.M):
        m = re.match(r'^\(?\s*(\d+)U?\s*(?:<<\s*(\d+))?\s*\)?$', value)
        if m:
            out[name] = int(m.group(1)) << int(m.group(2) or 0)
    return out


def header_enum(name):
    m = re.search(r'enum\s+%s\s*\{(.*?)\};' % name, header_text(), flags=re.S)
    assert m, 'enum %s not in erb.h' % name
    items = []
    value = -1
    for part in m.group(1).split(','):
        part = part.strip()
        if not part:
            continue
        if '=' in part:
            ident, val = [x.strip() for x in part.split('=')]
            value = int(val, 0)
        else:
            ident = part
            value += 1
        items.append((ident, value))
    return items


def header_structs():
    """struct name -> number of declared members."""
    out = {}
    for name, body in re.findall(r'struct\s+(erb_\w+)\s*\{(.*?)\};', header_text(), flags=re.S):
        decls = [d.strip() for d in body.split(';') if d.strip()]
        out[name] = sum(d.count(',') + 1 for d in decls)
    return out


def test_defines_match():
    defines = header_defines()
    assert 'ERB_LAYOUT_VERSION' in defines
    for name, value in sorted(defines.items()):
        assert hasattr(erb_layout, name), '%s defined in erb.h, missing in erb_layout.py' % name
        assert getattr(erb_layout, name) == value, '%s: erb.h %d, erb_layout.py %d' % (
            name, value, getattr(erb_layout, name))


def test_cmd_flags_table_complete():
    defines = header_defines()
    cmd = dict((k[len('ERB_CMD_'):], v) for k, v in defines.items()
               if k.startswith('ERB_CMD_') and k != 'ERB_CMD_NAME_MAX')
    assert erb_layout.CMD_FLAGS == cmd


def test_stat_names_in_order():
    items = header_enum('erb_stat')
    assert items[-1][0] == 'ERB_STAT_MAX'
    names = [ident[len('ERB_STAT_'):].lower() for ident, _unused in items[:-1]]
    assert [v for _unused, v in items] == list(range(len(items)))
    assert list(erb_layout.STAT_NAMES) == names
    assert erb_layout.ERB_STAT_MAX == items[-1][1]


@pytest.mark.parametrize('enum', ['erb_entry_state', 'erb_pstate'])
def test_enum_values(enum):
    for ident, value in header_enum(enum):
        assert getattr(erb_layout, ident) == value, ident


def test_every_struct_mirrored():
    structs = header_structs()
    assert set(structs) == set(erb_layout.STRUCTS)
    for name, nmembers in structs.items():
        assert len(erb_layout.STRUCTS[name]._fields_) == nmembers, name


def c_layout_program():
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include <linux/types.h>', '#include <linux/bpf.h>',
             '#include "erb.h"',
             'int main(void) {']
    for cname, cls in sorted(erb_layout.STRUCTS.items()):
        lines.append('printf("%s %%zu\\n", sizeof(struct %s));' % (cname, cname))
        for field in cls._fields_:
            fname = field[0]
            lines.append('printf("%s.%s %%zu\\n", offsetof(struct %s, %s));' % (cname, fname, cname, fname))
    lines += ['return 0;', '}']
    return '\n'.join(lines) + '\n'


def test_struct_layout_matches_gcc():
    with tempfile.TemporaryDirectory(prefix='erb-layout-') as tmp:
        src = os.path.join(tmp, 'layout.c')
        exe = os.path.join(tmp, 'layout')
        with open(src, 'w') as f:
            f.write(c_layout_program())
        subprocess.run(['gcc', '-Wall', '-Werror', '-I', BPF_DIR, '-o', exe, src], check=True)
        out = subprocess.run([exe], check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    c = dict(line.split() for line in out.splitlines())
    for cname, cls in erb_layout.STRUCTS.items():
        assert int(c[cname]) == ctypes.sizeof(cls), 'sizeof(struct %s)' % cname
        for field in cls._fields_:
            key = '%s.%s' % (cname, field[0])
            assert int(c[key]) == getattr(cls, field[0]).offset, key


def test_struct_sizes_match_object_btf():
    subprocess.run(['make', '-s', '-C', BPF_DIR, 'erb.bpf.o'], check=True)
    out = subprocess.run(['bpftool', 'btf', 'dump', 'file', os.path.join(BPF_DIR, 'erb.bpf.o'), 'format', 'raw'],
                         check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    sizes = dict((n, int(s)) for n, s in re.findall(r"STRUCT '(erb_\w+)' size=(\d+)", out))
    assert 'erb_flow' in sizes and 'erb_config' in sizes
    for cname, size in sizes.items():
        if cname in erb_layout.STRUCTS:
            assert size == ctypes.sizeof(erb_layout.STRUCTS[cname]), 'BTF size of struct %s' % cname


def test_maps_table_uses_mirrors():
    flows = (ctypes.sizeof(erb_layout.ErbFlowKey), ctypes.sizeof(erb_layout.ErbFlow))
    assert erb_layout.MAPS['erb_flows'][1:] == flows
    assert erb_layout.MAPS['erb_stats'] == (erb_layout.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8)
