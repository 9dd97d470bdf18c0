# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""meta/runtime.yml seen from a playbook: module_defaults for the action groups
group/erb.booster.tune and group/erb.booster.bpf reach the modules, and the old name
erb.booster.info still runs erb.booster.bpf_info (with a deprecation warning)."""

import contextlib
import json
import os
import subprocess
import sys

from erb_tune_modrun import FakeHost, collections_dir, read

PLAYBOOK = '''
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: {python}
  module_defaults:
    group/erb.booster.tune:
      sysfs_root: {sys}
      state_dir: {state}
    group/erb.booster.bpf:
      bpffs_root: {not_bpffs}
  tasks:
    - name: cpu_governor with sysfs_root and state_dir from the group defaults
      erb.booster.cpu_governor:
        governor: performance

    - name: xps_rps, same group
      erb.booster.xps_rps:
        name: eth1
        rps_cpus: "1"

    - name: bpf_info with bpffs_root from group/erb.booster.bpf (not a BPF filesystem, so it fails)
      erb.booster.bpf_info:
      register: from_group
      failed_when: false

    - name: the old name, through the redirect
      erb.booster.info:
        bpffs_root: {bpffs}
      register: old_name

    - name: results
      ansible.builtin.copy:
        dest: {out}
        content: "{{{{ {{'from_group': from_group, 'old_name': old_name}} | to_json }}}}"
        mode: "0644"
'''


@contextlib.contextmanager
def private_bpffs(path):
    """A BPF filesystem of this test's own (the module refuses anything else)."""
    os.makedirs(path)
    subprocess.run(['mount', '-t', 'bpf', 'bpf', path], check=True)
    try:
        yield path
    finally:
        subprocess.run(['umount', path], check=True)


def test_module_defaults_groups_and_redirect(tmp_path):
    h = FakeHost(tmp_path / 'host', ncpus=2)
    h.add_cpufreq(range(2))
    h.add_netdev('eth1', 'pci0000:00/0000:05:00.0', rx=2, tx=2, driver='ixgbe')
    not_bpffs = tmp_path / 'not-bpffs'
    not_bpffs.mkdir()
    out = tmp_path / 'results.json'
    play = tmp_path / 'play.yml'
    bpffs = str(tmp_path / 'bpffs')
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_dir(), ANSIBLE_NOCOLOR='1',
               ANSIBLE_DEPRECATION_WARNINGS='1')
    env.pop('ANSIBLE_CONFIG', None)
    play.write_text(PLAYBOOK.format(python=sys.executable, sys=h.sys, state=h.state_dir, not_bpffs=not_bpffs,
                                    bpffs=bpffs, out=out))
    with private_bpffs(bpffs):
        p = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,',
                            str(play)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                           env=env, cwd=str(tmp_path), timeout=300, check=False)
    assert p.returncode == 0, p.stdout
    # the tuning modules wrote to the fake tree the group defaults named, and kept their state there
    assert [h.governor(c) for c in range(2)] == ['performance', 'performance']
    assert read(os.path.join(h.sys, 'class/net/eth1/queues/rx-0/rps_cpus')) == '2'
    assert h.state_files() == ['cpu_governor-host.json', 'xps_rps-eth1.json']
    res = json.loads(out.read_text())
    # failed_when: false keeps the play going; the module's own message names the group default's path
    assert 'bpffs_root %s is not a BPF filesystem' % not_bpffs in res['from_group']['msg'], res['from_group']
    assert not res['old_name'].get('failed') and res['old_name']['interfaces'] == {}, res['old_name']
    flat = ' '.join(p.stdout.split())
    assert 'erb.booster.info has been deprecated' in flat and 'Use erb.booster.bpf_info instead' in flat, p.stdout
