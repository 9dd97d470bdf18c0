# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which keys of a module's result its RETURN documentation does not describe.

The module test helpers (tests/unit/tune/erb_tune_modrun.py, tests/modules/test_bpf_module.py)
check every result they get, so each path the tests drive a module through is covered.
"""

import ast
import os

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))

# keys every module may return (Ansible's common return values) and what the test helpers add
COMMON = frozenset(('changed', 'failed', 'msg', 'diff', 'warnings', 'deprecations', 'invocation', 'skipped',
                    'exception', '_rc'))


def return_doc(module):
    """The parsed RETURN of plugins/modules/<module>.py, read without importing the module."""
    with open(os.path.join(REPO, 'plugins', 'modules', module + '.py')) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == 'RETURN' for t in node.targets):
            return yaml.safe_load(node.value.value) or {}
    raise AssertionError('plugins/modules/%s.py has no RETURN' % module)


def _missing(value, doc, prefix):
    out = []
    for key, sub in value.items():
        if key not in doc:
            out.append(prefix + key)
            continue
        contains = (doc[key] or {}).get('contains')
        if not contains:
            continue
        if isinstance(sub, dict):
            if set(sub) <= set(contains) or not all(isinstance(v, dict) for v in sub.values()):
                out += _missing(sub, contains, prefix + key + '.')
            else:  # a dict keyed by name (an interface, a queue): each value has the keys in contains
                for name, item in sub.items():
                    out += _missing(item, contains, '%s%s[%s].' % (prefix, key, name))
        elif isinstance(sub, list):
            for i, item in enumerate(sub):
                if isinstance(item, dict):
                    out += _missing(item, contains, '%s%s[%d].' % (prefix, key, i))
    return out


def undocumented(module, result):
    """Keys of result (a module's JSON result) missing from the module's RETURN."""
    return _missing(dict((k, v) for k, v in result.items() if k not in COMMON), return_doc(module), '')


def assert_documented(module, result):
    missing = undocumented(module, result)
    assert not missing, ('erb.booster.%s returned keys its RETURN does not document: %s'
                         % (module, ', '.join(missing)))
