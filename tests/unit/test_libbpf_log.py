# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""libbpf's messages reach the loader's errors even when a second copy of
plugins/module_utils/libbpf.py lives in the same process (bench/jitlines.py imports it by file
name, as tests/bpf/test_jitlines.py does): its own registration of libbpf's print callback
took every later message away from the collection's copy, and a kernel's refusal of erb.bpf.o
then came without the verifier's reason, which is what the loader's fallback to the compat
build reads (a full CI run found it: the deep build's refusal carried an empty log)."""

import importlib.util
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, 'tests', 'loader'))
from collection_path import ensure_collection_path  # noqa: E402

ensure_collection_path()

from ansible_collections.erb.booster.plugins.module_utils import libbpf as B  # noqa: E402


def second_copy():
    path = os.path.join(REPO, 'plugins', 'module_utils', 'libbpf.py')
    spec = importlib.util.spec_from_file_location('libbpf_by_file', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_collections_loader_keeps_libbpfs_messages_after_another_copy_registered(tmp_path):
    B.lib()  # the collection's copy first, as in a test session that loaded objects before
    other = second_copy()
    try:
        other.lib()  # registers its own print callback
        check_both_get_their_messages(other, tmp_path)
    finally:
        # The copy (and its callback) is freed after this test while libbpf keeps the last
        # registered pointer: a later libbpf user that prints (tests/agent's ctypes binding)
        # would jump into freed memory. The collection's copy, alive as long as the process,
        # takes it back.
        B.lib().take_log()


def check_both_get_their_messages(other, tmp_path):
    bad = tmp_path / 'not-an-object.bpf.o'
    bad.write_bytes(b'this is not an ELF file')
    with pytest.raises(B.BpfError) as e:
        B.BpfObject(str(bad))
    assert any('elf' in line.lower() for line in e.value.log), e.value.log
    # and the other copy still gets its own when it runs something
    with pytest.raises(other.BpfError) as e2:
        other.BpfObject(str(bad))
    assert any('elf' in line.lower() for line in e2.value.log), e2.value.log
