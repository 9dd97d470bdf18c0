# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""roles/erb/README.md documents exactly the role's variables (meta/argument_specs.yml),
with their defaults."""

import re
from pathlib import Path

import yaml

ROLE = Path(__file__).resolve().parents[2] / 'roles' / 'erb'
ROW_RE = re.compile(r'^\| `(?P<name>erb_\w+)` \| (?P<default>[^|]+?) \|', re.M)


def shown(default):
    """A default as the README writes it."""
    if isinstance(default, bool):
        return '`%s`' % str(default).lower()
    if isinstance(default, str) and (default == '' or re.fullmatch(r'[\d.]+', default)):
        return '`"%s"`' % default
    if isinstance(default, (dict, list)) and not default:
        return '`%s`' % ('{}' if isinstance(default, dict) else '[]')
    return '`%s`' % default


def test_readme_lists_every_variable_with_its_default():
    options = yaml.safe_load((ROLE / 'meta' / 'argument_specs.yml').read_text())['argument_specs']['main']['options']
    rows = {m.group('name'): m.group('default').strip() for m in ROW_RE.finditer((ROLE / 'README.md').read_text())}
    assert sorted(set(options) - set(rows)) == [], 'variables missing from the README'
    assert sorted(set(rows) - set(options)) == [], 'README rows for variables the role does not have'
    wrong = {n: (rows[n], shown(o['default'])) for n, o in options.items()
             if 'default' in o and rows[n] != shown(o['default'])}
    assert wrong == {}, 'README default vs argument_specs default'
    assert all(rows[n] == '(required)' for n, o in options.items() if o.get('required'))
