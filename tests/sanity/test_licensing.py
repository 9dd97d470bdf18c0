# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One licensing story (README, "License"): every file names its license with an SPDX
identifier (a header, or REUSE.toml for files that cannot carry one), each license's text
is in LICENSES/, and galaxy.yml lists exactly the licenses in use. `reuse lint` checks the
REUSE specification; the tests below check ERB's own rules on top."""

import json
import os
import re
import subprocess
import sys

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
GPL3 = 'GPL-3.0-or-later'
GPL2 = 'GPL-2.0-only'
DUAL = '(GPL-2.0-only OR BSD-2-Clause)'


def reuse_lint():
    reuse = os.path.join(os.path.dirname(sys.executable), 'reuse')
    assert os.path.exists(reuse), 'reuse not installed (requirements-test.txt)'
    p = subprocess.run([reuse, '--root', REPO, 'lint', '--json'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, check=False)
    assert p.stdout, p.stderr
    return p.returncode, json.loads(p.stdout)


# REUSE-IgnoreStart (a pattern, not this file's license)
def spdx_header(path):
    with open(os.path.join(REPO, path), errors='replace') as f:
        head = [f.readline() for _line in range(6)]
    for line in head:
        m = re.search(r'SPDX-License-Identifier:\s*(.+?)\s*(\*/|#\})?\s*$', line)
        if m:
            return m.group(1)
    return None
# REUSE-IgnoreEnd


def tracked(prefix):
    out = subprocess.run(['git', '-C', REPO, 'ls-files', '--cached', '--others', '--exclude-standard', prefix],
                         stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    return [p for p in out.split() if os.path.isfile(os.path.join(REPO, p))]


def test_reuse_lint():
    rc, report = reuse_lint()
    bad = dict((k, v) for k, v in report['non_compliant'].items() if v)
    assert rc == 0 and report['summary']['compliant'], (
        'reuse lint (python3 tools/spdx_headers.py adds missing headers): %s' % json.dumps(bad, indent=1))


def test_every_file_has_its_header():
    p = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'spdx_headers.py'), '--check'],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    assert p.returncode == 0, 'run python3 tools/spdx_headers.py:\n' + p.stdout


def test_galaxy_license_lists_the_licenses_in_use():
    _rc, report = reuse_lint()
    with open(os.path.join(REPO, 'galaxy.yml')) as f:
        galaxy = yaml.safe_load(f)
    assert sorted(galaxy['license']) == sorted(report['summary']['used_licenses'])
    assert sorted(os.listdir(os.path.join(REPO, 'LICENSES'))) == sorted(
        '%s.txt' % lic for lic in report['summary']['used_licenses'])


def test_kernel_module_is_gpl2_only():
    files = tracked('files/kmod')
    assert files
    for path in files:
        assert spdx_header(path) == GPL2, path
    with open(os.path.join(REPO, 'files', 'kmod', 'erb_io.c')) as f:
        assert 'MODULE_LICENSE("GPL")' in f.read()


def test_bpf_agent_and_redis_module_sources_are_dual_licensed():
    files = [p for p in tracked('files/bpf') + tracked('files/agent') + tracked('files/rmod')
             if p.endswith(('.c', '.h'))]
    assert files
    for path in files:
        assert spdx_header(path) == DUAL, path


def test_collection_code_is_gpl3_or_later():
    files = [p for p in tracked('plugins') + tracked('roles') + tracked('playbooks') + tracked('meta')
             if not p.endswith('.md')]
    assert files
    for path in files:
        assert spdx_header(path) == GPL3, path
