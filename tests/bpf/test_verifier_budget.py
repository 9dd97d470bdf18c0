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

The same goes for the stack: the kernel adds the frames of every call chain (bpf_loop callbacks
and global functions included) against 512 bytes, and refuses the object past it. erb_xdp's
deepest chain was once 512 to the byte (8 bytes more in one frame and 6.18.44 refused it): the
deepest chain must leave 32 bytes free.
"""

import os
import re
import subprocess
import sys

import pytest

from erbtest import EL, REPO

sys.path.insert(0, os.path.join(REPO, 'tools'))
import verifier_stats  # noqa: E402

LIMIT = 1000000
BUDGET = int(LIMIT * 0.8)
STACK = 512
STACK_BUDGET = STACK - 32


@pytest.fixture(scope='module')
def variants(tmp_path_factory):
    out = tmp_path_factory.mktemp('variants')
    subprocess.run(['make', '-s', '-C', os.path.join(REPO, 'files', 'bpf'), 'all', 'variants',
                    'VARIANT_DIR=%s' % out], check=True)
    return out


def build_path(variants, build):
    return os.path.join(REPO, 'files', 'bpf', build) if build == 'erb.bpf.o' else str(variants / build)


def loaded_log(path, prog):
    logs, rc = verifier_stats.verify(path, [prog], 4 | 1)
    text = logs[prog].decode(errors='replace')
    assert rc == 0, 'the kernel refused %s of %s:\n%s' % (prog, path, text[-2000:])
    return logs[prog], text


def processed(path, prog):
    text = loaded_log(path, prog)[1]
    m = re.search(r'^processed (\d+) insns', text, re.M)
    assert m, 'no verifier statistics for %s:\n%s' % (prog, text[-2000:])
    return int(m.group(1))


@pytest.mark.parametrize('build', ['erb.bpf.o', 'erb-set.bpf.o'])
@pytest.mark.parametrize('prog', ['erb_xdp', 'erb_tc_egress'])
def test_verification_leaves_a_fifth_of_the_limit(variants, build, prog):
    path = build_path(variants, build)
    n = processed(path, prog)
    print('%s %s: %d verifier instructions (%.0f%% of the limit)' % (build, prog, n, 100.0 * n / LIMIT))
    assert n <= BUDGET, ('%s of %s took %d of the verifier\'s %d instructions: over the %d budget; '
                         'see python3 tools/verifier_stats.py --object %s --prog %s --where 30'
                         % (prog, build, n, LIMIT, BUDGET, path, prog))


@pytest.mark.parametrize('build', ['erb.bpf.o', 'erb-set.bpf.o'])
@pytest.mark.parametrize('prog', ['erb_xdp', 'erb_tc_egress'])
def test_the_deepest_call_chain_leaves_stack_free(variants, build, prog):
    path = build_path(variants, build)
    log = loaded_log(path, prog)[0]
    frame, found = verifier_stats.deepest_chains(log, path, prog, True)
    assert frame and found, 'no stack depths in the verifier log of %s of %s' % (prog, build)
    total, trail = found[0]
    chain = ' -> '.join('%s (%d)' % (f, frame[f]) for f in trail)
    print('%s %s: deepest call chain %d of %d bytes: %s' % (build, prog, total, STACK, chain))
    # every function of the chain has a frame, and the program's own is the first
    assert trail[0] == prog and all(frame[f] >= 0 for f in trail)
    assert total <= STACK_BUDGET, ('%s of %s: its deepest call chain takes %d of the kernel\'s %d stack '
                                   'bytes (budget %d): %s; see python3 tools/verifier_stats.py --object %s '
                                   '--chains 5' % (prog, build, total, STACK, STACK_BUDGET, chain, path))


@pytest.mark.parametrize('cb_frame, loads', [(168, True), (184, False)])
def test_chains_are_counted_as_the_kernel_counts_them(tmp_path, cb_frame, loads):
    """The budget above is only as good as the count: top (176 bytes) -> mid (152, whose bpf_loop
    the verifier inlines: 24 bytes more once it has loaded) -> cb. With cb at 168 the kernel
    counts 176 + 160 + 176 = 512 and loads it (the frames after inlining would add up to 528);
    at 184, 528: refused, and the kernel's message names the same figure."""
    obj = str(tmp_path / 'stack_chain.bpf.o')
    subprocess.run(['clang', '-g', '-O2', '-target', 'bpf', '-mcpu=v3', '-Wall', '-Werror',
                    '-I/usr/include/%s-linux-gnu' % os.uname().machine, '-DSTK_A=176', '-DSTK_B=152',
                    '-DSTK_C=%d' % cb_frame, '-c', os.path.join(REPO, 'tests', 'bpf', 'stack_chain.bpf.c'),
                    '-o', obj], check=True)
    logs, rc = verifier_stats.verify(obj, ['top'], 4 | 1)
    text = logs['top'].decode(errors='replace')
    frame, found = verifier_stats.deepest_chains(logs['top'], obj, 'top', rc == 0)
    total, trail = found[0]
    assert trail == ['top', 'mid', 'cb'], trail
    print('cb %d: counted %d (%s), kernel: %s' % (cb_frame, total, frame, 'loaded' if rc == 0 else text[-300:]))
    if loads:
        assert rc == 0, 'the kernel refused a chain counted at %d bytes:\n%s' % (total, text[-1000:])
        assert total == STACK
        reported = [int(x) for x in re.findall(r'stack depth ([\d+]+)', text)[-1].split('+')]
        assert sum(-(-d // 16) * 16 for d in reported) > STACK, 'mid\'s bpf_loop was not inlined: %s' % reported
    else:
        assert rc != 0, 'the kernel loaded a chain counted at %d bytes' % total
        m = re.search(r'combined stack size of 3 calls is (\d+)', text)
        assert m and int(m.group(1)) == total, text[-1000:]


def test_the_deep_build_is_refused_for_its_stack_and_the_loader_names_its_compat_build(variants):
    """erb-deep.bpf.o (`make variants`: erb_parse's frame 128 bytes deeper) is what the 6.1 system
    guest attaches to see the loader fall back to the compat build beside it on a real kernel
    (tests/guest/sys-test.sh): it is only a test of the fallback if kernels refuse it, and for
    the reason the fallback is for."""
    path = str(variants / 'erb-deep.bpf.o')
    obj = EL.B.BpfObject(path)
    try:
        with pytest.raises(EL.LoaderError) as e:
            EL._load(obj)
    finally:
        obj.close()
    assert 'combined stack size' in '\n'.join(e.value.log), str(e.value)[-1000:]
    assert EL.compat_object(path, e.value) == str(variants / 'erb-deep-compat.bpf.o')
