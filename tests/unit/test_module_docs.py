# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What ansible-test sanity (tests/sanity) does not check about the modules' documentation:
the options ansible-doc shows (documentation fragments merged) are exactly the module's
ARGUMENT_SPEC, with the same types, defaults, choices and required flags, and every module
declares check mode support. That every returned key is in RETURN is checked on each module
result the module tests get (tests/loader/return_docs.py)."""

import ast
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'loader'))
from collection_path import ensure_collection_path  # noqa: E402

MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, 'plugins', 'modules', '*.py'))
                 if not os.path.basename(p).startswith('_'))


@pytest.fixture(scope='module')
def docs():
    """ansible-doc --json of every module, as a user sees it."""
    tmp = tempfile.mkdtemp(prefix='erb-doc-')
    try:
        os.makedirs(os.path.join(tmp, 'ansible_collections', 'erb'))
        os.symlink(REPO, os.path.join(tmp, 'ansible_collections', 'erb', 'booster'))
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=tmp)
        env.pop('ANSIBLE_CONFIG', None)
        p = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-doc'), '--json', '-t', 'module']
                           + ['erb.booster.%s' % m for m in MODULES], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, env=env, check=False, cwd=tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    return json.loads(p.stdout)


def argument_spec(module):
    ensure_collection_path()
    mod = __import__('ansible_collections.erb.booster.plugins.modules.%s' % module, fromlist=['ARGUMENT_SPEC'])
    return mod.ARGUMENT_SPEC


def test_every_module_is_documented(docs):
    assert sorted(docs) == ['erb.booster.%s' % m for m in MODULES]
    assert 'bpf_info' in MODULES and 'info' not in MODULES


@pytest.mark.parametrize('module', MODULES)
def test_options_match_argument_spec(docs, module):
    doc = docs['erb.booster.%s' % module]['doc']
    spec = argument_spec(module)
    options = doc.get('options') or {}
    assert sorted(options) == sorted(spec)
    for name, s in spec.items():
        o = options[name]
        assert o.get('type', 'str') == s.get('type', 'str'), name
        assert o.get('default') == s.get('default'), name
        assert bool(o.get('required', False)) == bool(s.get('required', False)), name
        assert o.get('choices') == (list(s['choices']) if 'choices' in s else None), name
        assert o.get('elements') == s.get('elements'), name
        assert sorted(o.get('aliases') or []) == sorted(s.get('aliases') or []), name
    assert doc['attributes']['check_mode']['support'] == 'full'
    # settings modules show before/after; *_info modules change nothing
    assert doc['attributes']['diff_mode']['support'] == ('none' if module.endswith('_info') else 'full')


@pytest.mark.parametrize('module', MODULES)
def test_argument_spec_is_a_module_constant(module):
    """The spec main() uses is the module-level ARGUMENT_SPEC (what the test above compares)."""
    with open(os.path.join(REPO, 'plugins', 'modules', module + '.py')) as f:
        tree = ast.parse(f.read())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, 'id', '') == 'AnsibleModule']
    assert calls, module
    for call in calls:
        kw = dict((k.arg, k.value) for k in call.keywords)
        assert getattr(kw.get('argument_spec'), 'id', None) == 'ARGUMENT_SPEC', module
