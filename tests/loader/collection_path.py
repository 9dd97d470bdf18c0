# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Make `ansible_collections.erb.booster` importable from this checkout.

Creates <tmp>/ansible_collections/erb/booster -> the repository and puts <tmp>
first on sys.path (and returns it, for PYTHONPATH of module subprocesses).
"""

import atexit
import os
import shutil
import sys
import tempfile

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
_ROOT = []


def ensure_collection_path():
    if _ROOT:
        return _ROOT[0]
    root = tempfile.mkdtemp(prefix='erb-collections-')
    atexit.register(shutil.rmtree, root, True)
    ns = os.path.join(root, 'ansible_collections', 'erb')
    os.makedirs(ns)
    os.symlink(REPO, os.path.join(ns, 'booster'))
    sys.path.insert(0, root)
    for mod in [m for m in sys.modules if m == 'ansible_collections' or m.startswith('ansible_collections.')]:
        del sys.modules[mod]
    _ROOT.append(root)
    return root
