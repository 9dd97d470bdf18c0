# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""erb_loader.compat_object(): when the loader falls back from erb.bpf.o to erb-compat.bpf.o
(the same programs with bpf_loop callbacks instead of global functions, for Linux 6.1's stack
rule), and when it must not (any other failure is the operator's to see)."""
import errno
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, 'tests', 'loader'))
from collection_path import ensure_collection_path  # noqa: E402

ensure_collection_path()

from ansible_collections.erb.booster.plugins.module_utils import erb_loader  # noqa: E402
from ansible_collections.erb.booster.plugins.module_utils.erb_loader import LoaderError  # noqa: E402

STACK = ['combined stack size of 4 calls is 544. Too large', 'processed 139813 insns (limit 1000000)']
BIG = ['BPF program is too large. Processed 1000001 insn']


def objects(tmp_path, compat=True):
    main = tmp_path / 'erb.bpf.o'
    main.write_bytes(b'main')
    if compat:
        (tmp_path / 'erb-compat.bpf.o').write_bytes(b'compat')
    return str(main)


def test_falls_back_when_the_verifier_refuses_the_stack_or_the_size(tmp_path):
    path = objects(tmp_path)
    alt = str(tmp_path / 'erb-compat.bpf.o')
    assert erb_loader.compat_object(path, LoaderError('x', log=STACK, err=errno.EACCES)) == alt
    assert erb_loader.compat_object(path, LoaderError('x', log=BIG, err=errno.E2BIG)) == alt
    assert erb_loader.compat_object(path, LoaderError('x', log=[], err=errno.E2BIG)) == alt


def test_no_fallback_for_other_failures_or_without_the_compat_build(tmp_path):
    path = objects(tmp_path)
    # a program error (a bug) or a missing permission is reported, not hidden by the other build
    assert erb_loader.compat_object(path, LoaderError('x', log=['R1 invalid mem access'], err=errno.EACCES)) is None
    assert erb_loader.compat_object(path, LoaderError('x', log=[], err=errno.EPERM)) is None
    # the compat build itself failing: nothing further
    assert erb_loader.compat_object(str(tmp_path / 'erb-compat.bpf.o'),
                                    LoaderError('x', log=STACK, err=errno.EACCES)) is None
    other = tmp_path / 'other'
    other.mkdir()
    assert erb_loader.compat_object(objects(other, compat=False),
                                    LoaderError('x', log=STACK, err=errno.EACCES)) is None


def test_the_refusal_is_named_by_the_verifier_line_that_gave_it():
    """refusal_reason(): what erb.booster.bpf reports (object_refused) when it falls back."""
    assert erb_loader.refusal_reason(LoaderError('x', log=STACK, err=errno.EACCES)) == STACK[0]
    assert erb_loader.refusal_reason(LoaderError('x', log=BIG, err=errno.E2BIG)) == BIG[0]
    # E2BIG without the verifier's line: the error's own first line
    assert erb_loader.refusal_reason(LoaderError('loading erb.bpf.o failed: E2BIG\nmore', log=[],
                                                 err=errno.E2BIG)) == 'loading erb.bpf.o failed: E2BIG'
