# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Files replaced atomically: a temp file in the same directory, fsync, rename, fsync of
the directory. Shared by the tuning modules (state files, udev rules) and erb.booster.kmod
(the installed .ko, its stamp, modprobe.d)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import tempfile


def _replace(path, mode, fill):
    """Make path the file fill(f) writes (f: a binary file object)."""
    d = os.path.dirname(path) or '.'
    if not os.path.isdir(d):
        os.makedirs(d, 0o755)
    fd, tmp = tempfile.mkstemp(prefix='.%s.' % os.path.basename(path), dir=d)
    try:
        with os.fdopen(fd, 'wb') as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write(path, content, mode=0o644):
    """Write content (str, as UTF-8, or bytes) to path."""
    data = content if isinstance(content, bytes) else content.encode('utf-8')
    _replace(path, mode, lambda f: f.write(data))


def _copy_into(src, fo):
    with open(src, 'rb') as fi:
        for chunk in iter(lambda: fi.read(1 << 20), b''):
            fo.write(chunk)


def copy_stream(src, dest):
    """Copy by reading (works for sysfs files such as /sys/kernel/btf/vmlinux)."""
    with open(dest, 'wb') as fo:
        _copy_into(src, fo)


def atomic_copy(src, dest, mode=0o644):
    """copy_stream(), replacing dest atomically."""
    _replace(dest, mode, lambda f: _copy_into(src, f))
