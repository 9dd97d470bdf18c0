# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The Molecule scenarios of extensions/molecule/, run as a collection developer runs
them: `molecule test -s <scenario>` from the repository root.

- local_fleet: the local namespace fleet (inventory/local/fleet.sh), this kernel.
- qemu_guest: Debian 12's 6.1 kernel in the QEMU/TCG system guest (clsact, erb_io).

Each must run every action of its test sequence (create, check, converge,
idempotence, verify, side_effect = rollback, verify that nothing is left, destroy)
and report every one successful; the full output is kept beside the test's tmp_path
and its tail is in the failure message.
"""

import os
import re
import subprocess

import pytest
import yaml

from erb_conftest import (FLEET_SH, REPO, ensure_collection_link, fleet_is_up, require_bpf_objects,
                          run, venv_bin, _need_root)

pytestmark = [pytest.mark.slow, pytest.mark.fleet, pytest.mark.bpf]

MOLECULE_DIR = REPO / 'extensions' / 'molecule'
RECAP_RE = re.compile(r'^(?P<scenario>\S+)\s+: actions=(?P<actions>\d+)\s+successful=(?P<successful>\d+)\s+'
                      r'disabled=(?P<disabled>\d+)\s+skipped=(?P<skipped>\d+)\s+missing=(?P<missing>\d+)\s+'
                      r'failed=(?P<failed>\d+)', re.M)


def scenario_sequence():
    """The test sequence every scenario runs (extensions/molecule/config.yml)."""
    return yaml.safe_load((MOLECULE_DIR / 'config.yml').read_text())['scenario']['test_sequence']


def molecule_test(scenario, out_dir, timeout):
    """`molecule test -s scenario` from the repository root; returns (rc, output)."""
    ensure_collection_link()
    env = dict(os.environ, NO_COLOR='1', ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0', PY_COLORS='0',
               PATH='%s:%s' % (os.path.dirname(venv_bin('ansible-playbook')), os.environ.get('PATH', '')))
    env.pop('ANSIBLE_CONFIG', None)  # molecule writes its own
    log = out_dir / ('molecule-%s.log' % scenario)
    try:
        p = subprocess.run([venv_bin('molecule'), 'test', '-s', scenario], cwd=str(REPO), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                           check=False)
        rc, out = p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        rc, out = 'timeout after %d s' % timeout, e.stdout or ''
        if isinstance(out, bytes):
            out = out.decode('utf-8', 'replace')
        # the sequence stopped midway: remove what its create made (a QEMU guest, the fleet)
        d = subprocess.run([venv_bin('molecule'), 'destroy', '-s', scenario], cwd=str(REPO), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                           check=False)
        out += '\n--- molecule destroy after the timeout (exit %d) ---\n%s' % (d.returncode, d.stdout[-4000:])
    log.write_text(out)
    return rc, out, log


def check_recap(scenario, rc, out, log):
    tail = out[-8000:]
    assert rc == 0, 'molecule test -s %s: exit %s (full output: %s)\n%s' % (scenario, rc, log, tail)
    recaps = [m.groupdict() for m in RECAP_RE.finditer(out) if m.group('scenario') == scenario]
    assert recaps, 'no SCENARIO RECAP for %s in the output (%s)\n%s' % (scenario, log, tail)
    r = {k: int(v) for k, v in recaps[-1].items() if k != 'scenario'}
    want = len(scenario_sequence())
    # every action of the sequence ran and succeeded: none skipped (e.g. "instances
    # already created"), none without its playbook, none disabled
    assert r == dict(actions=want, successful=want, disabled=0, skipped=0, missing=0, failed=0), (r, tail)


def test_local_fleet(tmp_path):
    _need_root()
    require_bpf_objects()
    was_up = fleet_is_up()
    try:
        rc, out, log = molecule_test('local_fleet', tmp_path, timeout=1500)
    finally:
        if was_up:  # the session's fleet (or one made before the tests): put it back
            run(['bash', FLEET_SH, 'up', '2'], timeout=120)
    check_recap('local_fleet', rc, out, log)
    # destroy ran fleet.sh down; with was_up the fleet is back, else nothing is left
    assert fleet_is_up() == was_up


# Not part of the suite's run: under TCG one playbook run in the guest takes 8 to 17 minutes
# (check 13, converge 17, idempotence 8 on this 2-CPU machine), so the whole sequence takes about
# 75 minutes, more than CI's budget leaves. Run it with ERB_MOLECULE_GUEST=1 (its output is kept
# beside the test's tmp_path).
@pytest.mark.allow_skip('qemu_guest Molecule scenario: opt-in, about 75 minutes under TCG')
@pytest.mark.skipif(os.environ.get('ERB_MOLECULE_GUEST') != '1',
                    reason='qemu_guest Molecule scenario: about 75 minutes under TCG; run with ERB_MOLECULE_GUEST=1')
@pytest.mark.timeout(7800)
def test_qemu_guest(tmp_path):
    _need_root()
    require_bpf_objects()
    rc, out, log = molecule_test('qemu_guest', tmp_path, timeout=7200)
    check_recap('qemu_guest', rc, out, log)
    # the role built and loaded erb_io in the guest and attached with clsact (verify asserts
    # both); the deploy's summary said so, with the SET fast path on after the I/O probe
    assert 'I/O path kmod (agent running); SET fast path on' in out, out[-6000:]
    # destroy stopped QEMU: no guest of this checkout's scenario is left running
    assert not guests_running(), guests_running()


def guests_running():
    """pids of QEMU processes running this checkout's qemu_guest/guest.sh."""
    mark = ('erb.run=%s' % (MOLECULE_DIR / 'qemu_guest' / 'guest.sh')).encode()
    pids = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                if mark in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids
