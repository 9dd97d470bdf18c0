# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Give every file of this repository its SPDX-License-Identifier header (README, "License").

usage: python3 tools/spdx_headers.py [--check] [PATH...]

Without PATHs, every file git knows (tracked and untracked, not ignored). A file licensed
through REUSE.toml (one with no comment syntax, or documentation) is left alone. Which
license a file gets:

  files/kmod/                  GPL-2.0-only (the erb_io kernel module)
  files/bpf/, files/agent/,    (GPL-2.0-only OR BSD-2-Clause)
  files/rmod/
  other C sources (tests/)     what their first line says, GPL-2.0 written GPL-2.0-only
  everything else              GPL-3.0-or-later

Old copyright and license lines at the top of a file are replaced, so running it again
changes nothing. --check lists the files it would change and exits 1 if there are any.
tests/sanity/test_licensing.py checks the result with `reuse lint`.
"""

import os
import re
import subprocess
import sys
import tomllib

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
# the header texts below are not this file's license: REUSE-IgnoreStart
GPL3 = 'GPL-3.0-or-later'
GPL2 = 'GPL-2.0-only'
DUAL = '(GPL-2.0-only OR BSD-2-Clause)'
# the header of Python files: validate-modules wants the GPLv3 wording in a module's first lines
GPL3_PYTHON = ('# Copyright (c) ERB contributors\n'
               '# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or '
               'https://www.gnu.org/licenses/gpl-3.0.txt)\n'
               '# SPDX-License-Identifier: GPL-3.0-or-later\n')
OLD_LINE = re.compile(r'^(#|//|/\*|\{#)\s*(Copyright:? .*ERB|Copyright \(c\) ERB|GNU General Public License|'
                      r'SPDX-License-Identifier:).*$')
LEADING = re.compile(r'^(#!|#.*coding[:=])')


def glob_re(pattern):
    """A REUSE.toml path glob (** any path, * any name part) as a regular expression."""
    out = ''
    i = 0
    while i < len(pattern):
        if pattern.startswith('**', i):
            out += '.*'
            i += 2
        elif pattern[i] == '*':
            out += '[^/]*'
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile('^%s$' % out)


def reuse_toml_paths():
    """Globs of REUSE.toml annotations that give a license."""
    path = os.path.join(REPO, 'REUSE.toml')
    if not os.path.exists(path):
        return []
    with open(path, 'rb') as f:
        data = tomllib.load(f)
    globs = []
    for ann in data.get('annotations', []):
        if 'SPDX-License-Identifier' in ann:
            paths = ann['path'] if isinstance(ann['path'], list) else [ann['path']]
            globs += [glob_re(p) for p in paths]
    return globs


def license_of(path, text):
    if path.startswith('files/kmod/'):
        return GPL2
    if path.startswith(('files/bpf/', 'files/agent/', 'files/rmod/')):
        return DUAL
    if path.endswith(('.c', '.h')):
        m = re.search(r'SPDX-License-Identifier:\s*(.*?)\s*(\*/)?\s*$', text.split('\n', 1)[0])
        if m:
            return re.sub(r'GPL-2\.0(?![-\w])', 'GPL-2.0-only', m.group(1))
    return GPL3


def with_header(path, text):
    lic = license_of(path, text)
    lines = text.splitlines(True)
    if path.endswith(('.c', '.h')):
        first = '// SPDX-License-Identifier: %s\n' if path.endswith('.c') else '/* SPDX-License-Identifier: %s */\n'
        if lines and 'SPDX-License-Identifier' in lines[0]:
            lines = lines[1:]
        return first % lic + ''.join(lines)
    top = []
    while lines and len(top) < 2 and LEADING.match(lines[0]):
        top.append(lines.pop(0))
    dropped = 0
    while lines and dropped < 4 and OLD_LINE.match(lines[0].rstrip('\n')):
        lines.pop(0)
        dropped += 1
    if path.endswith('.j2'):
        head = '{# SPDX-License-Identifier: %s #}\n' % lic
    elif lic == GPL3 and path.endswith(('.py', '.py.in')):
        head = GPL3_PYTHON
    else:
        head = '# SPDX-License-Identifier: %s\n' % lic
    return ''.join(top) + head + ''.join(lines)


def candidates(paths):
    if not paths:
        out = subprocess.run(['git', '-C', REPO, 'ls-files', '--cached', '--others', '--exclude-standard'],
                             stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
        paths = out.split()
    skip = reuse_toml_paths()
    for path in paths:
        rel = os.path.relpath(os.path.abspath(path), REPO) if os.path.isabs(path) else path
        full = os.path.join(REPO, rel)
        if (rel.startswith('LICENSES/') or rel == 'REUSE.toml' or os.path.islink(full)
                or not os.path.isfile(full) or any(g.match(rel) for g in skip)):
            continue
        yield rel, full


def main(argv):
    check = '--check' in argv
    changed = []
    for rel, full in candidates([a for a in argv if a != '--check']):
        with open(full) as f:
            text = f.read()
        new = with_header(rel, text)
        if new == text:
            continue
        changed.append(rel)
        if not check:
            mode = os.stat(full).st_mode
            with open(full, 'w') as f:
                f.write(new)
            os.chmod(full, mode)
    for rel in changed:
        print(('needs a header: %s' if check else 'updated %s') % rel)
    return 1 if check and changed else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
# REUSE-IgnoreEnd
