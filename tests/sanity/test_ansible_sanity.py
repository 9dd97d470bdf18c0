# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""`ansible-test sanity` on this collection, as Galaxy and the Ansible community run it
(validate-modules, ansible-doc, pep8, pylint, import, yamllint, shebang, changelog,
runtime-metadata, ...). No test may fail; tests/sanity/ignore-*.txt holds the only
exceptions, each with its reason.

ansible-test builds one virtual environment per sanity test from its pinned requirement
files, through the configured package index, under ~/.ansible/test/venv (kept between
runs). Into each it first bootstraps pip with a script it downloads from a host that is
not reachable offline; tests/sanity/get_pip.py stands in for that script in
ansible-test's cache.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from types import SimpleNamespace

from ansible_test._internal.python_requirements import get_venv_packages

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, '..', '..'))
STAND_IN = os.path.join(HERE, 'get_pip.py')
PYTHON = '%d.%d' % sys.version_info[:2]


def ansible_test():
    path = os.path.join(os.path.dirname(sys.executable), 'ansible-test')
    if not os.path.exists(path):
        path = shutil.which('ansible-test')
    assert path, 'ansible-test not found (it comes with ansible-core: pip install -r requirements-test.txt)'
    return path


def install_pip_bootstrap():
    """Put the stand-in where ansible-test looks for its cached get-pip script, unless
    a real one is there already."""
    version = get_venv_packages(SimpleNamespace(version=PYTHON))['pip']
    cache = os.path.expanduser('~/.ansible/test/cache/get_pip_%s.py' % version.replace('.', '_'))
    with open(STAND_IN) as f:
        ours = f.read()
    if os.path.exists(cache):
        with open(cache) as f:
            current = f.read()
        if current == ours or not current.startswith(ours.split('\n', 1)[0]):
            return cache  # ours, up to date, or the real script
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache + '.tmp', 'w') as f:
        f.write(ours)
    os.replace(cache + '.tmp', cache)
    return cache


def collection_root(tmp):
    """ansible-test needs the collection at .../ansible_collections/erb/booster."""
    ns = os.path.join(tmp, 'ansible_collections', 'erb')
    os.makedirs(ns)
    os.symlink(REPO, os.path.join(ns, 'booster'))
    return os.path.join(ns, 'booster')


def test_ansible_test_sanity():
    install_pip_bootstrap()
    tmp = tempfile.mkdtemp(prefix='erb-sanity-')
    try:
        root = collection_root(tmp)
        env = dict(os.environ, ANSIBLE_TEST_CONTENT_ROOT=root)
        p = subprocess.run([ansible_test(), 'sanity', '--python', PYTHON, '--color', 'no'], cwd=root, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                           check=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ran = re.findall(r'^Running sanity test "([^"]+)"', p.stdout, re.M)
    problems = [line for line in p.stdout.splitlines() if line.startswith(('ERROR:', 'FATAL:'))]
    assert p.returncode == 0 and not problems, 'ansible-test sanity failed (rc %d):\n%s\n\nfull output:\n%s' % (
        p.returncode, '\n'.join(problems), p.stdout[-20000:])
    for test in ('validate-modules', 'ansible-doc', 'pep8', 'pylint', 'import', 'yamllint', 'shebang',
                 'changelog', 'runtime-metadata', 'compile', 'shellcheck'):
        assert test in ran, 'sanity test %s did not run; ran: %s' % (test, ', '.join(ran))
    # a sanity test whose tool is missing is skipped with only a warning (shellcheck: scripts/lib.sh installs it)
    missing = re.findall(r'^WARNING: Required program "([^"]+)" not found', p.stdout, re.M)
    assert not missing, 'ansible-test sanity skipped tests: %s not installed' % ', '.join(missing)
