# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The release artifact, used the way a user uses it: `make -C files/bpf`, `ansible-galaxy collection
build`, the tarball's file list, `ansible-galaxy collection install` into an empty collections path,
then `ansible-playbook erb.booster.deploy` on the local fleet with only that path (not this checkout),
GETs answered in XDP, and `ansible-playbook erb.booster.rollback`."""

import hashlib
import json
import os
import tarfile

import pytest

from erb_conftest import LOCAL_INVENTORY, REPO, parse_recap, run, venv_bin

pytestmark = [pytest.mark.fleet, pytest.mark.bpf, pytest.mark.slow]

# what must be in the tarball, and what must not (prefixes of member names)
REQUIRED = ('MANIFEST.json', 'FILES.json', 'README.md', 'meta/runtime.yml',
            'playbooks/deploy.yml', 'playbooks/rollback.yml',
            'roles/erb/tasks/main.yml', 'roles/erb/meta/argument_specs.yml',
            'plugins/modules/bpf.py', 'plugins/module_utils/erb_loader.py',
            'files/bpf/erb.bpf.o', 'files/bpf/erb.bpf.c', 'files/bpf/erb.h', 'files/bpf/erb_record.h', 'files/bpf/erb_cache_user.h',
            'files/bpf/Makefile',
            'files/agent/erb-agent.c', 'files/agent/Makefile', 'files/agent/erb-agent-supervise',
            'files/kmod/erb_io.c', 'files/kmod/Kbuild', 'files/kmod/Makefile', 'files/kmod/dkms.conf')
FORBIDDEN_TOP = ('.hypothesis', '.venv', '.ansible', '.git', '.gitignore', '.ci', '.pytest_cache', 'bench',
                 'scripts', 'tests', 'tools', 'ansible.cfg', 'pytest.ini', 'requirements-test.txt')
FORBIDDEN = ('files/agent/erb-agent', 'inventory/local')


def tarball_names(path):
    with tarfile.open(path) as t:
        return sorted(m.name for m in t.getmembers())


def unwanted(names):
    bad = []
    for n in names:
        parts = n.split('/')
        if parts[0] in FORBIDDEN_TOP or '__pycache__' in parts or parts[-1].startswith('.git') \
                or n.endswith('.pyc') or any(n == f or n.startswith(f + '/') for f in FORBIDDEN):
            bad.append(n)
    return bad


@pytest.fixture(scope='module')
def artifact(tmp_path_factory):
    """The built tarball (after the documented build step) and its member names. A controller-built
    agent and a .hypothesis directory are put in the tree first: they must stay out."""
    out = tmp_path_factory.mktemp('galaxy-build')
    run(['make', '-C', REPO / 'files' / 'bpf'], timeout=300)
    run(['make', '-C', REPO / 'files' / 'agent', 'erb-agent'], timeout=300)
    (REPO / '.hypothesis').mkdir(exist_ok=True)
    made_hypothesis = not any((REPO / '.hypothesis').iterdir())
    try:
        run([venv_bin('ansible-galaxy'), 'collection', 'build', '--output-path', out, REPO], timeout=300)
    finally:
        if made_hypothesis:
            (REPO / '.hypothesis').rmdir()
    tarball = out / 'erb-booster-0.1.0.tar.gz'
    assert tarball.is_file(), os.listdir(out)
    names = tarball_names(tarball)
    print('galaxy tarball %s (%d members):\n%s' % (tarball.name, len(names), '\n'.join(names)))
    return tarball, names


def test_tarball_has_the_object_and_sources(artifact):
    tarball, names = artifact
    missing = [n for n in REQUIRED if n not in names]
    assert not missing, missing
    with tarfile.open(tarball) as t:
        manifest = json.load(t.extractfile('MANIFEST.json'))
        obj = t.extractfile('files/bpf/erb.bpf.o').read()
    assert manifest['collection_info']['namespace'] == 'erb'
    assert manifest['collection_info']['name'] == 'booster'
    # the object is the one built from this tree, an ELF for BPF (e_machine 247)
    assert obj == (REPO / 'files' / 'bpf' / 'erb.bpf.o').read_bytes()
    assert obj[:4] == b'\x7fELF' and int.from_bytes(obj[18:20], 'little') == 247


def test_tarball_has_no_development_files(artifact):
    _unused, names = artifact
    assert unwanted(names) == []


def ansible_env(collections):
    """Only the installed collection: not this checkout's ansible.cfg (its collections_path finds the
    checkout), no other collection path. The config file is an empty one beside the collections."""
    cfg = collections.parent / 'ansible.cfg'
    if not cfg.exists():
        cfg.write_text('[defaults]\ninterpreter_python = auto_silent\n')
    return {'ANSIBLE_COLLECTIONS_PATH': str(collections), 'ANSIBLE_COLLECTIONS_SCAN_SYS_PATH': 'false',
            'ANSIBLE_CONFIG': str(cfg), 'ANSIBLE_NOCOLOR': '1', 'ANSIBLE_FORCE_COLOR': '0'}


def playbook(name, collections, cwd):
    p = run([venv_bin('ansible-playbook'), '-i', LOCAL_INVENTORY / 'hosts.yml', name],
            check=False, timeout=900, cwd=cwd, env=ansible_env(collections))
    return p.returncode, p.stdout + p.stderr, parse_recap(p.stdout)


def test_installed_artifact_deploys_the_local_fleet(fleet, artifact, tmp_path):
    tarball, _unused = artifact
    collections = tmp_path / 'collections'
    collections.mkdir()
    run([venv_bin('ansible-galaxy'), 'collection', 'install', '-p', collections, tarball], timeout=300,
        cwd=tmp_path, env=ansible_env(collections))
    installed = collections / 'ansible_collections' / 'erb' / 'booster'
    assert (installed / 'files' / 'bpf' / 'erb.bpf.o').is_file()
    assert not (installed / 'tests').exists()
    listing = run([venv_bin('ansible-galaxy'), 'collection', 'list', 'erb.booster'], cwd=tmp_path,
                  env=ansible_env(collections)).stdout
    assert str(collections / 'ansible_collections') in listing and str(REPO) not in listing, listing

    # erb.booster.deploy is the installed collection's playbook
    tasks = run([venv_bin('ansible-playbook'), '-i', LOCAL_INVENTORY / 'hosts.yml', 'erb.booster.deploy',
                 '--list-tasks'], cwd=tmp_path, env=ansible_env(collections)).stdout
    assert 'playbook: %s' % (installed / 'playbooks' / 'deploy.yml') in tasks, tasks[:2000]

    rc, out, recap = playbook('erb.booster.deploy', collections, tmp_path)
    try:
        assert rc == 0, out[-8000:]
        assert sorted(recap) == sorted(h.name for h in fleet.hosts), recap
        sha = hashlib.sha256((installed / 'files' / 'bpf' / 'erb.bpf.o').read_bytes()).hexdigest()
        for h in fleet.hosts:
            assert hashlib.sha256((h.dir / 'lib' / 'erb.bpf.o').read_bytes()).hexdigest() == sha
            assert h.redis_cli('SET', 'artifact:k', 'v-%s' % h.name) == 'OK'
            before = _get_calls(h.redis_cli_local('INFO', 'commandstats'))
            for _unused in range(3):
                assert h.redis_cli('GET', 'artifact:k') == 'v-%s' % h.name
            assert _get_calls(h.redis_cli_local('INFO', 'commandstats')) == before, \
                'GETs reached Redis: not answered in XDP'
            assert h.redis_cli_local('GET', 'artifact:k') == 'v-%s' % h.name
    finally:
        rb_rc, rb_out, _unused = playbook('erb.booster.rollback', collections, tmp_path)
    assert rb_rc == 0, rb_out[-6000:]
    for h in fleet.hosts:
        assert not os.path.exists('/run/erb/bpffs/erb/%s/%s' % (h.ns, h.iface))
        assert h.redis_cli('PING') == 'PONG'


def _get_calls(commandstats):
    for line in commandstats.splitlines():
        if line.startswith('cmdstat_get:'):
            return int(line.split('calls=')[1].split(',')[0])
    return 0
