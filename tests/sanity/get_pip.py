# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Offline stand-in for ansible-test's pip bootstrap script (get-pip.py).

ansible-test creates each sanity test's virtual environment without pip, then runs
~/.ansible/test/cache/get_pip_<version>.py in it, downloading that script from
ci-files.testing.ansible.com when the cache lacks it. Where that host is unreachable,
this script takes its place: it installs the Python's bundled pip (ensurepip), then the
requested packages (pip==<version>) from the configured package index, and honours
get-pip's --no-setuptools and --no-wheel.
"""

import subprocess
import sys

OWN_OPTIONS = ('--no-setuptools', '--no-wheel')


def main():
    args = [arg for arg in sys.argv[1:] if arg not in OWN_OPTIONS]
    subprocess.check_call([sys.executable, '-m', 'ensurepip', '--upgrade'])
    subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--upgrade'] + args)
    unwanted = [name for option, name in (('--no-setuptools', 'setuptools'), ('--no-wheel', 'wheel'))
                if option in sys.argv[1:]]
    if unwanted:
        subprocess.check_call([sys.executable, '-m', 'pip', 'uninstall', '-y', '-q'] + unwanted)


if __name__ == '__main__':
    main()
