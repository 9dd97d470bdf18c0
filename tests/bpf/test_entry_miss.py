# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""bench/entry_miss builds, loads its three programs (the array of maps with its 3,450 inner
arrays too), finds an entry in every run (it exits 1 on a run that does not return XDP_PASS)
and writes its figures; what they are is for bench/README.md, not for a test."""

import json
import os
import subprocess

import pytest

import erbtest

BENCH = os.path.join(erbtest.REPO, 'bench')
PROGRAM = os.path.join(BENCH, 'build', 'entry_miss')


@pytest.fixture(scope='module')
def built():
    subprocess.run(['make', '-s', '-C', BENCH, 'entry_miss'], check=True)
    return PROGRAM


def test_entry_miss_runs_every_program_and_writes_its_json(built, tmp_path):
    out = tmp_path / 'entry_miss.json'
    r = subprocess.run([built, '--keys', '100', '--rounds', '1', '--cold-runs', '20', '--sweep-mb', '4',
                        '--json', str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert (res['keys'], res['rounds'], res['cold_runs'], res['sweep_mb']) == (100, 1, 20, 4)
    assert sorted(res['ns_per_run']) == ['base', 'direct', 'flat']
    for prog, v in res['ns_per_run'].items():
        assert v['warm'] > 0 and v['cold'] > 0, (prog, v)
    assert 'direct: 3450 arrays of 19 entries' in r.stdout, r.stdout


def test_entry_miss_refuses_bad_options(built):
    r = subprocess.run([built, '--keys', '0'], capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 2 and '--keys 1..65536' in r.stderr, r.stderr
