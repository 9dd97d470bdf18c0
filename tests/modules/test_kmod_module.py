# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""erb.booster.kmod for real on this host.

- Through Ansible (`ansible localhost -c local -m erb.booster.kmod`): this machine's kernel has no module
  support, so state=present fails with the preflight's message (check mode too) and state=absent has nothing
  to remove; check mode for Debian's 6.1 kernel plans a build and writes nothing.
- Native builds (slow) through module_utils/erb_kmod against Debian's 6.1 headers installed here, with the
  base BTF and resolve_btfids that tests/guest/build-guest.sh prepares (the BTF passed as a RAW blob, as
  /sys/kernel/btf/vmlinux would be): the .ko gets a .BTF section whose kfunc IDs resolve_btfids filled in
  (checked with bpftool and readelf, not with the module's own ELF reader); installs go to a fake root
  (depmod -b), never to this machine's /lib/modules; the headers package is left untouched. The kbuild and
  the dkms methods (signed with a throw-away key), rebuilds on source changes, state=absent.

The load path needs a kernel with modules: tests/kmod (QEMU guest) covers it.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from erb_conftest import REPO, ansible_env, ensure_collection_link, run, tree_snapshot, venv_bin

sys.path.insert(0, os.path.join(str(REPO), 'tests', 'loader'))
from collection_path import ensure_collection_path  # noqa: E402
from return_docs import assert_documented  # noqa: E402

ensure_collection_path()

from ansible_collections.erb.booster.plugins.module_utils import erb_kmod as K  # noqa: E402

BUILD_GUEST = os.path.join(str(REPO), 'tests', 'guest', 'build-guest.sh')
SOURCES = [os.path.join(str(REPO), 'files', 'kmod', n) for n in ('erb_io.c', 'Kbuild', 'Makefile', 'dkms.conf')] + \
    [os.path.join(str(REPO), 'files', 'bpf', n) for n in ('erb.h', 'erb_record.h')]
KFUNCS = ('erb_kfifo_in', 'erb_find_fd', 'erb_applied_seq')
NO_MODULES = 'has no loadable module support (CONFIG_MODULES is off)'
CERT_CN = 'ERB kmod test key'


def make_src(d):
    os.makedirs(d)
    for s in SOURCES:
        shutil.copy(s, d)
    return d


# --------------------------------------------------------------------------- through Ansible, this host

def ansible_kmod(args, check=False, diff=False):
    """Run `ansible localhost -c local -m erb.booster.kmod -a ARGS` from the repository root; returns
    (rc, status, result)."""
    ensure_collection_link()
    cmd = [venv_bin('ansible'), 'localhost', '-c', 'local', '-i', 'localhost,',
           '-e', 'ansible_python_interpreter=/usr/bin/python3', '-m', 'erb.booster.kmod',
           '-a', args if isinstance(args, str) else json.dumps(args)]
    if check:
        cmd.append('--check')
    if diff:
        cmd.append('--diff')
    p = run(cmd, check=False, env=ansible_env(), cwd=REPO, timeout=300)
    m = re.search(r'^localhost \| (\S+) => (\{.*?^\})', p.stdout, re.M | re.S)
    assert m, 'no result in the output of %s:\n%s\n%s' % (' '.join(cmd), p.stdout, p.stderr)
    r = json.loads(m.group(2))
    assert_documented('kmod', r)
    r['_stdout'] = p.stdout
    return p.returncode, m.group(1), r


def this_host_has_no_modules():
    assert not os.path.exists('/proc/modules'), (
        'these tests describe the CI host, whose kernel has no module support (no /proc/modules); '
        'this kernel has it')
    return os.uname().release


def test_present_fails_without_module_support(tmp_path):
    krel = this_host_has_no_modules()
    src = make_src(str(tmp_path / 'src'))
    work = str(tmp_path / 'work')
    for check in (False, True):
        rc, status, r = ansible_kmod('src=%s state=present work_dir=%s' % (src, work), check=check)
        assert rc != 0 and status == 'FAILED!', r
        assert r['changed'] is False and r['steps'] == []
        assert r['msg'] == ('this kernel (%s) %s: erb_io cannot be loaded here; use the ring-buffer I/O path '
                            '(the role does this when erb_kmod_enabled is auto)' % (krel, NO_MODULES))
    assert not os.path.exists(work)


def test_absent_without_module_support_is_a_no_op(tmp_path):
    this_host_has_no_modules()
    work = str(tmp_path / 'work')
    for check in (True, False):
        rc, status, r = ansible_kmod({'state': 'absent', 'work_dir': work}, check=check)
        assert rc == 0 and status == 'SUCCESS', r
        assert r['changed'] is False and r['loaded'] is False and r['installed_path'] is None
        assert r['msg'] == 'erb_io is not here: nothing to do'
    assert not os.path.exists(work)


# --------------------------------------------------------------------------- Debian's 6.1 kernel here

@pytest.fixture(scope='module')
def k61(tmp_path_factory):
    """Debian's 6.1 release, its headers, a raw BTF of it and a resolve_btfids, from build-guest.sh."""
    p = subprocess.run(['bash', BUILD_GUEST], capture_output=True, text=True, timeout=3000, check=False)
    assert p.returncode == 0, 'build-guest.sh failed:\n%s' % p.stderr[-4000:]
    env = dict(line.split('=', 1) for line in p.stdout.splitlines() if '=' in line)
    krel, kdir = env['KREL'], env['KDIR']
    # the release that linux-image-amd64 installs, as build-guest.sh finds it
    deps = subprocess.run(['dpkg-query', '-W', '-f=${Depends}', 'linux-image-amd64'], capture_output=True,
                          text=True, check=True).stdout
    assert 'linux-image-%s' % krel in deps
    assert os.path.isdir('/lib/modules/%s/build' % krel), 'linux-headers-%s is not installed' % krel
    d = str(tmp_path_factory.mktemp('k61'))
    raw = os.path.join(d, 'vmlinux.btf')
    junk = os.path.join(d, 'junk')
    subprocess.run(['objcopy', '-j', '.BTF', '--dump-section', '.BTF=' + raw, os.path.join(kdir, 'vmlinux'),
                    junk], check=True, capture_output=True)
    os.unlink(junk)
    with open(raw, 'rb') as f:
        assert f.read(2) == b'\x9f\xeb', 'not raw BTF'
    rb = env.get('RESOLVE_BTFIDS') or os.path.join(kdir, 'tools', 'bpf', 'resolve_btfids', 'resolve_btfids')
    assert os.access(rb, os.X_OK), rb
    headers = os.path.realpath('/lib/modules/%s/build' % krel)
    return {'krel': krel, 'raw_btf': raw, 'resolve_btfids': rb, 'headers': headers}


class Recorder(object):
    """subprocess_runner that remembers the commands and their output."""

    def __init__(self):
        self.calls = []

    def __call__(self, args, env=None, cwd=None):
        rc, out, err = K.subprocess_runner(args, env=env, cwd=cwd)
        self.calls.append({'args': list(args), 'rc': rc, 'out': out, 'err': err})
        return rc, out, err

    def tools(self):
        return [os.path.basename(c['args'][0]) + ('' if os.path.basename(c['args'][0]) != 'dkms'
                                                  else ' ' + c['args'][1]) for c in self.calls]


def fake_root(base, krel):
    root = os.path.join(base, 'root')
    os.makedirs(os.path.join(root, 'lib', 'modules', krel))
    # the headers Debian installed, read only
    os.symlink(os.readlink('/lib/modules/%s/build' % krel), os.path.join(root, 'lib', 'modules', krel, 'build'))
    return root


def host_state(k):
    """What must not change on this machine: the headers package, its kbuild dir, /lib/modules/<krel>,
    /etc/modprobe.d, the system DKMS tree."""
    state = {}
    for d in (k['headers'], os.path.realpath(os.path.join(k['headers'], 'scripts')),
              '/lib/modules/%s' % k['krel'], '/etc/modprobe.d', '/var/lib/dkms'):
        state[d] = tree_snapshot(d) if os.path.isdir(d) else None
    return state


def check_kfuncs(ko, raw_btf):
    """The kfuncs are in the module's BTF (split BTF over the raw base) and the BTF_ID slots of the kfunc set
    in .BTF_ids hold exactly their type IDs (resolve_btfids ran). resolve_btfids also sorts a BTF_SET8 by ID,
    so the slots hold the set of IDs of the functions they name, not each its own."""
    sections = subprocess.run(['readelf', '-SW', ko], capture_output=True, text=True, check=True).stdout
    assert re.search(r'\] \.BTF\s', sections), 'no .BTF section in %s' % ko
    dump = subprocess.run(['bpftool', '-B', raw_btf, 'btf', 'dump', 'file', ko], capture_output=True, text=True,
                          check=True).stdout
    ids = dict((m.group(2), int(m.group(1))) for m in re.finditer(r"^\[(\d+)\] FUNC '(\w+)'", dump, re.M))
    for fn in KFUNCS:
        assert fn in ids, 'FUNC %s missing from the BTF of %s' % (fn, ko)
    d = os.path.dirname(ko)
    data_path = os.path.join(d, '.btf_ids.bin')
    junk = os.path.join(d, '.junk.ko')
    subprocess.run(['objcopy', '--dump-section', '.BTF_ids=' + data_path, ko, junk], check=True)
    with open(data_path, 'rb') as f:
        data = f.read()
    os.unlink(data_path)
    os.unlink(junk)
    syms = subprocess.run(['readelf', '-sW', ko], capture_output=True, text=True, check=True).stdout
    names, values = [], []
    for m in re.finditer(r'^\s*\d+: ([0-9a-f]+)\s+\d+\s+\w+\s+\w+\s+\w+\s+\d+ __BTF_ID__func__(\w+?)__\d+$',
                         syms, re.M):
        off = int(m.group(1), 16)
        names.append(m.group(2))
        values.append(int.from_bytes(data[off:off + 4], 'little'))
    assert set(KFUNCS) <= set(names), names
    assert 0 not in values, 'unresolved BTF IDs in %s: %s' % (ko, dict(zip(names, values)))
    assert sorted(values) == sorted(ids[n] for n in names), (dict(zip(names, values)), ids)
    # the BTF_SET8 header counts them
    m = re.search(r'^\s*\d+: ([0-9a-f]+)\s+\d+\s+\w+\s+\w+\s+\w+\s+\d+ __BTF_ID__set8__erb_io_kfunc_ids$',
                  syms, re.M)
    assert m, 'no BTF_SET8 erb_io_kfunc_ids in %s' % ko
    off = int(m.group(1), 16)
    assert int.from_bytes(data[off:off + 4], 'little') == len(names)
    return ids


def modules_dep(root, krel):
    with open(os.path.join(root, 'lib', 'modules', krel, 'modules.dep')) as f:
        return f.read()


@pytest.mark.slow
def test_kbuild_build_install_rebuild_absent(k61, tmp_path):
    krel = k61['krel']
    src = make_src(str(tmp_path / 'src'))
    root = fake_root(str(tmp_path), krel)
    work = str(tmp_path / 'work')
    before = host_state(k61)

    def cfg():
        return K.KmodConfig(src=src, kernel_release=krel, params={'sink': 'apply', 'kfifo_size': 2048},
                            method='kbuild', vmlinux_btf=k61['raw_btf'], resolve_btfids=k61['resolve_btfids'],
                            work_dir=work, root=root)

    rec = Recorder()
    r = K.KmodRun(cfg(), rec).present()
    ko = os.path.join(root, 'lib', 'modules', krel, 'updates', 'erb', 'erb_io.ko')
    assert r['changed'] and r['built'] and r['btf'] and r['method'] == 'kbuild' and r['installed_path'] == ko
    assert r['loaded'] is False and 'is not the running kernel' in r['load_skipped'] and r['build_s'] > 0
    print('kbuild build+install: %.1f s' % r['build_s'])
    kbuild = os.path.join(work, krel, 'kbuild')
    make = [c for c in rec.calls if os.path.basename(c['args'][0]) == 'make']
    assert len(make) == 1 and make[0]['args'][1:3] == ['-C', kbuild]
    # Kbuild's objtree is the private dir, so `vmlinux` and tools/bpf/resolve_btfids are found there
    assert "Entering directory '%s'" % kbuild in make[0]['out']
    assert 'Skipping BTF generation' not in make[0]['out'] + make[0]['err']
    with open(os.path.join(kbuild, 'vmlinux'), 'rb') as f, open(k61['raw_btf'], 'rb') as g:
        assert f.read() == g.read()
    check_kfuncs(ko, k61['raw_btf'])
    with open(ko + K.STAMP_SUFFIX) as f:
        stamp = json.load(f)
    assert stamp['source_hash'] == r['source_hash'] == K.source_hash(src, krel) and stamp['method'] == 'kbuild'
    assert 'updates/erb/erb_io.ko:' in modules_dep(root, krel)
    with open(os.path.join(root, 'etc', 'modprobe.d', 'erb_io.conf')) as f:
        assert f.read().splitlines()[-1] == 'options erb_io kfifo_size=2048 sink=apply'
    assert host_state(k61) == before
    assert not os.path.exists(os.path.join(k61['headers'], 'vmlinux'))

    # same sources: nothing runs at all
    rec = Recorder()
    r = K.KmodRun(cfg(), rec).present()
    assert not r['changed'] and not r['built'] and r['btf'] and rec.calls == [] and r['build_s'] == 0

    # changed sources: rebuilt under a new hash, the old build tree goes
    old = r['source_hash']
    with open(os.path.join(src, 'erb_io.c'), 'a') as f:
        f.write('/* a change */\n')
    rec = Recorder()
    r = K.KmodRun(cfg(), rec).present()
    assert r['changed'] and r['built'] and r['source_hash'] != old and rec.tools() == ['make', 'depmod']
    assert sorted(os.listdir(os.path.join(work, krel))) == ['kbuild', 'src-%s' % r['source_hash'][:16]]
    check_kfuncs(ko, k61['raw_btf'])

    # absent: everything goes, a second absent has nothing to do
    r = K.KmodRun(K.KmodConfig(kernel_release=krel, work_dir=work, root=root)).absent()
    assert r['changed'] and not os.path.exists(ko) and not os.path.exists(ko + K.STAMP_SUFFIX)
    assert 'erb_io' not in modules_dep(root, krel)
    assert not os.path.exists(os.path.join(root, 'etc', 'modprobe.d', 'erb_io.conf'))
    assert not os.path.exists(os.path.join(work, krel))
    r = K.KmodRun(K.KmodConfig(kernel_release=krel, work_dir=work, root=root)).absent()
    assert not r['changed']
    assert host_state(k61) == before


def broken_tree(monkeypatch, remove):
    """The private kbuild tree made as usual, then without `remove` (what Debian's headers lack)."""
    orig = K.prepare_kbuild_tree

    def prepare(kdir, dest, vmlinux_btf, resolve_btfids):
        orig(kdir, dest, vmlinux_btf, resolve_btfids)
        os.unlink(os.path.join(dest, remove))
        return dest

    monkeypatch.setattr(K, 'prepare_kbuild_tree', prepare)


@pytest.mark.slow
@pytest.mark.parametrize('remove,expect', [
    # Kbuild skips BTF without vmlinux: the module would load, but its kfuncs would not resolve
    ('vmlinux', ['has no .BTF section', 'Skipping BTF generation']),
    # without resolve_btfids the BTF step fails (6.1's Makefile.modfinal: exit 127)
    ('tools/bpf/resolve_btfids/resolve_btfids', ['failed (make exited 2)', 'Error 127'])])
def test_build_without_btf_prerequisites_fails(k61, tmp_path, monkeypatch, remove, expect):
    krel = k61['krel']
    root = fake_root(str(tmp_path), krel)
    broken_tree(monkeypatch, remove)
    run_ = K.KmodRun(K.KmodConfig(src=make_src(str(tmp_path / 'src')), kernel_release=krel, method='kbuild',
                                  vmlinux_btf=k61['raw_btf'], resolve_btfids=k61['resolve_btfids'],
                                  work_dir=str(tmp_path / 'work'), root=root))
    with pytest.raises(K.KmodError) as e:
        run_.present()
    for text in expect:
        assert text in str(e.value), str(e.value)
    assert not os.path.exists(os.path.join(root, 'lib', 'modules', krel, 'updates'))
    assert not os.path.exists(os.path.join(root, 'etc'))


@pytest.mark.slow
def test_dkms_signed_switch_rebuild_absent(k61, tmp_path):
    krel = k61['krel']
    assert shutil.which('dkms'), 'dkms is not installed: apt-get install dkms (scripts/lib.sh installs it)'
    src = make_src(str(tmp_path / 'src'))
    root = fake_root(str(tmp_path), krel)
    work = str(tmp_path / 'work')
    key, cert = str(tmp_path / 'key.pem'), str(tmp_path / 'cert.der')
    subprocess.run(['openssl', 'req', '-new', '-x509', '-nodes', '-days', '2', '-subj', '/CN=%s' % CERT_CN,
                    '-newkey', 'rsa:2048', '-keyout', key, '-outform', 'DER', '-out', cert],
                   capture_output=True, check=True)
    before = host_state(k61)
    tree = ['--sourcetree', os.path.join(root, 'usr/src'), '--dkmstree', os.path.join(root, 'var/lib/dkms'),
            '--installtree', os.path.join(root, 'lib/modules')]

    def cfg(method):
        return K.KmodConfig(src=src, kernel_release=krel, method=method, vmlinux_btf=k61['raw_btf'],
                            resolve_btfids=k61['resolve_btfids'], work_dir=work, root=root, sign_key=key,
                            sign_cert=cert)

    def dkms_status():
        return subprocess.run(['dkms', 'status'] + tree, capture_output=True, text=True, check=True).stdout.strip()

    # installed with kbuild first: switching to dkms replaces it
    r = K.KmodRun(cfg('kbuild')).present()
    kbuild_ko = r['installed_path']
    assert r['signed'] and os.path.exists(kbuild_ko)
    rec = Recorder()
    r = K.KmodRun(cfg('dkms'), rec).present()
    ko = os.path.join(root, 'lib', 'modules', krel, 'updates', 'dkms', 'erb_io.ko')
    ver = '0.1.0+' + r['source_hash'][:12]
    assert r['changed'] and r['built'] and r['method'] == 'dkms' and r['installed_path'] == ko and r['btf']
    print('dkms build+install: %.1f s' % r['build_s'])
    assert rec.tools() == ['dkms add', 'dkms build', 'dkms install', 'depmod']
    assert not os.path.exists(kbuild_ko) and not os.path.exists(kbuild_ko + K.STAMP_SUFFIX)
    assert dkms_status() == 'erb_io/%s, %s, %s: installed' % (ver, krel, os.uname().machine)
    signer = subprocess.run(['modinfo', '-F', 'signer', ko], capture_output=True, text=True, check=True).stdout
    assert signer.strip() == CERT_CN and r['signed']
    check_kfuncs(ko, k61['raw_btf'])
    assert 'updates/dkms/erb_io.ko:' in modules_dep(root, krel) and 'updates/erb/' not in modules_dep(root, krel)
    with open(os.path.join(root, 'usr', 'src', 'erb_io-' + ver, 'dkms.conf')) as f:
        assert 'PACKAGE_VERSION="%s"' % ver in f.read()

    # auto keeps the up-to-date dkms install; nothing runs
    rec = Recorder()
    r = K.KmodRun(cfg('auto'), rec).present()
    assert not r['changed'] and r['method'] == 'dkms' and rec.calls == []

    # changed sources: a new DKMS version replaces the old one, whose sources go too
    with open(os.path.join(src, 'erb_io.c'), 'a') as f:
        f.write('/* a change */\n')
    r = K.KmodRun(cfg('dkms')).present()
    ver2 = '0.1.0+' + r['source_hash'][:12]
    assert r['changed'] and r['built'] and ver2 != ver
    assert dkms_status() == 'erb_io/%s, %s, %s: installed' % (ver2, krel, os.uname().machine)
    assert os.listdir(os.path.join(root, 'usr', 'src')) == ['erb_io-' + ver2]

    # absent removes the DKMS version, its sources, the module
    r = K.KmodRun(K.KmodConfig(kernel_release=krel, work_dir=work, root=root)).absent()
    assert r['changed'] and dkms_status() == '' and os.listdir(os.path.join(root, 'usr', 'src')) == []
    assert not os.path.exists(ko) and 'erb_io' not in modules_dep(root, krel)
    assert not K.KmodRun(K.KmodConfig(kernel_release=krel, work_dir=work, root=root)).absent()['changed']
    # dkms made no key of its own on this machine, and the system DKMS tree is untouched
    assert host_state(k61) == before


@pytest.mark.slow
def test_check_mode_for_debian_kernel_through_ansible(k61, tmp_path):
    """Preflight passes for the 6.1 release (its .config has modules) on this host; check mode plans a build,
    writes nothing."""
    krel = k61['krel']
    src = make_src(str(tmp_path / 'src'))
    work = str(tmp_path / 'work')
    before = host_state(k61)
    rc, status, r = ansible_kmod({'src': src, 'kernel_release': krel, 'vmlinux_btf': k61['raw_btf'],
                                  'resolve_btfids': k61['resolve_btfids'], 'work_dir': work, 'method': 'kbuild',
                                  'params': {'sink': 'apply', 'kfifo_size': 4096}}, check=True, diff=True)
    assert rc == 0 and status == 'CHANGED', r
    assert r['would_build'] and r['would_write_conf'] and not r['would_load'] and not r['would_unload']
    assert r['params'] == {'sink': 'apply', 'kfifo_size': '4096'} and r['method'] == 'kbuild'
    assert r['load_skipped'].startswith('kernel_release %s is not the running kernel' % krel)
    # the diff (printed by the callback, not in the result)
    assert '+    "modprobe_conf": "# Managed by erb.booster.kmod' in r['_stdout']
    assert 'options erb_io kfifo_size=4096 sink=apply\\n"' in r['_stdout']
    assert not os.path.exists(work) and not os.path.exists('/etc/modprobe.d/erb_io.conf')
    assert host_state(k61) == before
