# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The loader's choice of I/O path (erb_io kfuncs or the ring buffer) and how it reads
erb_io's progress, against a fake sysfs tree."""

import os
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'loader'))
from collection_path import ensure_collection_path  # noqa: E402

ensure_collection_path()

from ansible_collections.erb.booster.plugins.module_utils import erb_layout as L  # noqa: E402
from ansible_collections.erb.booster.plugins.module_utils import erb_loader  # noqa: E402


@pytest.fixture
def sysfs(tmp_path):
    return tmp_path


def load_erb_io(sysfs, applied=0):
    (sysfs / 'kernel' / 'btf').mkdir(parents=True)
    (sysfs / 'kernel' / 'btf' / 'erb_io').write_bytes(b'\x9f\xeb')
    params = sysfs / 'module' / 'erb_io' / 'parameters'
    params.mkdir(parents=True)
    (params / 'seq_base').write_text('%d\n' % applied)


def test_auto_is_ring_without_erb_io(sysfs):
    assert erb_loader.resolve_io_path('auto', str(sysfs)) == 'ring'
    assert erb_loader.resolve_io_path('ring', str(sysfs)) == 'ring'


def test_auto_is_kmod_with_erb_io(sysfs):
    load_erb_io(sysfs)
    assert erb_loader.resolve_io_path('auto', str(sysfs)) == 'kmod'
    assert erb_loader.resolve_io_path('ring', str(sysfs)) == 'ring'


def test_kmod_without_erb_io_is_an_error(sysfs):
    with pytest.raises(erb_loader.LoaderError, match='erb_io module is not loaded'):
        erb_loader.resolve_io_path('kmod', str(sysfs))
    with pytest.raises(erb_loader.LoaderError, match='io_path must be one of'):
        erb_loader.resolve_io_path('module', str(sysfs))


def test_erb_io_progress_and_seed(sysfs):
    assert erb_loader.kmod_applied_seq(str(sysfs)) is None
    load_erb_io(sysfs, applied=41)
    assert erb_loader.kmod_applied_seq(str(sysfs)) == 41
    erb_loader._kmod_seed(1000, str(sysfs))
    assert erb_loader.kmod_applied_seq(str(sysfs)) == 1000


def test_applied_seq_of_follows_the_path_in_use(sysfs):
    load_erb_io(sysfs, applied=90)
    g = L.ErbGlobal(write_seq=100, applied_seq=70)
    assert erb_loader.applied_seq_of(g, str(sysfs)) == 70          # ring: the agent's
    g.ctl = L.ERB_CTL_KMOD
    assert erb_loader.applied_seq_of(g, str(sysfs)) == 90          # erb_io's, ahead of the mirror
    g.applied_seq = 95
    assert erb_loader.applied_seq_of(g, str(sysfs)) == 95          # never below the mirror


def test_config_flag(sysfs):
    base = dict(answer=True, fill=True, redis_port=6379, max_key_len=128, max_value_len=1024,
                cache_entries=1024, require_auth=False)
    assert not erb_loader.erb_config(dict(base, io_path='ring')).flags & L.ERB_CFG_KMOD
    assert erb_loader.erb_config(dict(base, io_path='kmod')).flags & L.ERB_CFG_KMOD
