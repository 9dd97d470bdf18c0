# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Headroom under the verifier's 1,000,000-instruction limit, on this machine's kernel.

A new kernel build can verify the same object in more instructions (6.18.44's loop checks took
erb_xdp from ~470k past 1M overnight, and every deploy failed). This fails while there is still
room, at 80% of the limit, for the builds the role deploys here: erb.bpf.o with its built-in
flags (GET answers and fills) and with the SET fast path over the ring buffer (`make variants`).
The figures come from the verifier's own closing line, through tools/verifier_stats.py.
"""

import os
import re
import subprocess
import sys

import pytest

from erbtest import REPO

sys.path.insert(0, os.path.join(REPO, 'tools'))
import verifier_stats  # noqa: E402

LIMIT = 1000000
BUDGET = int(LIMIT * 0.8)


@pytest.fixture(scope='module')
def variants(tmp_path_factory):
    out = tmp_path_factory.mktemp('variants')
    subprocess.run(['make', '-s', '-C', os.path.join(REPO, 'files', 'bpf'), 'all', 'variants',
                    'VARIANT_DIR=%s' % out], check=True)
    return out


def processed(path, prog):
    logs, rc = verifier_stats.verify(path, [prog], 4 | 1)
    text = logs[prog].decode(errors='replace')
    assert rc == 0, 'the kernel refused %s of %s:\n%s' % (prog, path, text[-2000:])
    m = re.search(r'^processed (\d+) insns', text, re.M)
    assert m, 'no verifier statistics for %s:\n%s' % (prog, text[-2000:])
    return int(m.group(1))


@pytest.mark.parametrize('build', ['erb.bpf.o', 'erb-set.bpf.o'])
@pytest.mark.parametrize('prog', ['erb_xdp', 'erb_tc_egress'])
def test_verification_leaves_a_fifth_of_the_limit(variants, build, prog):
    path = os.path.join(REPO, 'files', 'bpf', build) if build == 'erb.bpf.o' else str(variants / build)
    n = processed(path, prog)
    print('%s %s: %d verifier instructions (%.0f%% of the limit)' % (build, prog, n, 100.0 * n / LIMIT))
    assert n <= BUDGET, ('%s of %s took %d of the verifier\'s %d instructions: over the %d budget; '
                         'see python3 tools/verifier_stats.py --object %s --prog %s --where 30'
                         % (prog, build, n, LIMIT, BUDGET, path, prog))
