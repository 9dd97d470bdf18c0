# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""module_utils/erb_kmod against fake trees: every preflight refusal and its order, the source hash,
module parameters, the private kbuild tree, the ELF checks of a .ko, and the load/unload decisions
(with a fake runner standing in for modprobe/rmmod/depmod and a fake /sys/module/erb_io).

The real builds against Debian's 6.1 headers are in tests/modules/test_kmod_module.py."""

import hashlib
import json
import os
import threading
import shutil
import stat
import subprocess
import sys

import pytest

from erb_conftest import tree_snapshot

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'loader'))
from collection_path import ensure_collection_path  # noqa: E402

ensure_collection_path()

from ansible_collections.erb.booster.plugins.module_utils import erb_kmod as K  # noqa: E402

KREL = '6.1.0-99-amd64'
OTHER = '6.18.0-1-amd64'
SOURCES = [os.path.join(REPO, 'files', 'kmod', n) for n in ('erb_io.c', 'Kbuild', 'Makefile', 'dkms.conf')] + \
    [os.path.join(REPO, 'files', 'bpf', n) for n in ('erb.h', 'erb_record.h')]
# parameters erb_io declares (at least these)
PARAMS = ['aof_suffix', 'batch', 'drain_ms', 'kfifo_size', 'redis_pid', 'redis_sock', 'sink']
SB_VAR = 'sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c'
RAW_BTF = b'\x9f\xeb\x01\x00' + b'\x18\x00\x00\x00' + b'\x00' * 24


def write(path, data, mode=None):
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        os.makedirs(d)
    with open(path, 'wb' if isinstance(data, bytes) else 'w') as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)


def stub(path, script='exit 0'):
    write(path, '#!/bin/sh\n%s\n' % script, 0o755)


def make_src(d):
    os.makedirs(d)
    for s in SOURCES:
        shutil.copy(s, d)
    return d


FAKE_KO_ASM = r'''
    .section .modinfo,"a"
    .asciz "version=0.1.0"
    .asciz "srcversion=%(srcversion)s"
    .asciz "vermagic=%(krel)s SMP preempt mod_unload modversions "
    .asciz "parm=sink:apply or aof_direct"
    .asciz "parmtype=sink:charp"
%(btf)s
    .section .BTF_ids,"a"
__BTF_ID__set8__erb_io_kfunc_ids:
    .long 3
    .long 0
__BTF_ID__func__erb_kfifo_in__1:
    .long %(id0)d
    .long 0
__BTF_ID__func__erb_find_fd__2:
    .long %(id1)d
    .long 0
__BTF_ID__func__erb_applied_seq__3:
    .long %(id2)d
    .long 0
'''


def fake_ko(path, srcversion='ABCDEF0123456789ABCDEF0', krel=KREL, btf=True, ids=(100796, 100794, 100792),
            signed=False):
    """A relocatable ELF shaped like a kernel module: .modinfo, .BTF, .BTF_ids with BTF_ID symbols."""
    asm = FAKE_KO_ASM % {'srcversion': srcversion, 'krel': krel, 'id0': ids[0], 'id1': ids[1], 'id2': ids[2],
                         'btf': '\t.section .BTF,""\n\t.byte 0x9f,0xeb,1,0\n' if btf else ''}
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        os.makedirs(d)
    subprocess.run(['gcc', '-c', '-x', 'assembler', '-', '-o', path], input=asm, universal_newlines=True,
                   check=True)
    if signed:
        with open(path, 'ab') as f:
            f.write(b'\0' * 16 + K.MODULE_SIG_MAGIC)
    return path


class FakeHost(object):
    """A fake root: /proc, /sys (lockdown, Secure Boot, sig_enforce, BTF), Debian-like headers for KREL
    (scripts and tools are relative links into /usr/lib/linux-kbuild-6.1), stub tools on a private PATH."""

    def __init__(self, tmp_path, krel=KREL):
        self.tmp = str(tmp_path)
        self.root = os.path.join(self.tmp, 'root')
        self.bin = os.path.join(self.tmp, 'bin')
        self.krel = krel
        self.src = make_src(os.path.join(self.tmp, 'src'))
        self.work = os.path.join(self.tmp, 'work')
        write(self.p('proc/modules'), 'ext4 1 0 - Live 0x0\n')
        write(self.p('proc/sys/kernel/modules_disabled'), '0\n')
        write(self.p('sys/kernel/security/lockdown'), '[none] integrity confidentiality\n')
        write(self.p('sys/module/module/parameters/sig_enforce'), 'N\n')
        write(self.p('sys/kernel/btf/vmlinux'), RAW_BTF)
        kb = self.p('usr/lib/linux-kbuild-6.1')
        stub(os.path.join(kb, 'scripts', 'sign-file'))
        write(os.path.join(kb, 'scripts', 'Makefile.modfinal'), '# fake\n')
        write(os.path.join(kb, 'tools', 'objtool', 'objtool'), '', 0o755)
        self.hdrs = self.p('usr/src/linux-headers-%s' % krel)
        write(os.path.join(self.hdrs, 'Makefile'), 'include /usr/src/linux-headers-%s-common/Makefile\n' % krel)
        self.set_config()
        write(os.path.join(self.hdrs, 'Module.symvers'), '')
        write(os.path.join(self.hdrs, 'include', 'generated', 'autoconf.h'), '')
        os.symlink('../../lib/linux-kbuild-6.1/scripts', os.path.join(self.hdrs, 'scripts'))
        os.symlink('../../lib/linux-kbuild-6.1/tools', os.path.join(self.hdrs, 'tools'))
        os.makedirs(self.p('lib/modules/%s' % krel))
        os.symlink(self.hdrs, self.p('lib/modules/%s/build' % krel))
        for tool in ('pahole', 'make', 'gcc-12', 'depmod', 'modprobe', 'rmmod'):
            stub(os.path.join(self.bin, tool))
        self.rbtf = os.path.join(self.tmp, 'rbtf', 'resolve_btfids')
        stub(self.rbtf, 'echo fake resolve_btfids')

    def p(self, path):
        return os.path.join(self.root, path)

    def set_config(self, **over):
        conf = {'CONFIG_MODULES': 'y', 'CONFIG_DEBUG_INFO_BTF': 'y', 'CONFIG_DEBUG_INFO_BTF_MODULES': 'y',
                'CONFIG_CC_VERSION_TEXT': '"gcc-12 (Debian 12.2.0-14) 12.2.0"', 'CONFIG_MODULE_SIG': 'y',
                'CONFIG_MODULE_SIG_HASH': '"sha256"'}
        conf.update(over)
        write(os.path.join(self.hdrs, '.config'),
              ''.join('%s=%s\n' % (k, v) if v is not None else '# %s is not set\n' % k
                      for k, v in sorted(conf.items())))

    def cfg(self, **kw):
        args = dict(src=self.src, root=self.root, kernel_release=self.krel, running_release=self.krel,
                    path=[self.bin],
                    work_dir=self.work, resolve_btfids=self.rbtf)
        args.update(kw)
        return K.KmodConfig(**args)

    def secure_boot(self, on):
        write(self.p(SB_VAR), b'\x06\x00\x00\x00' + (b'\x01' if on else b'\x00'))


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setattr(K, 'IN_USE_WAIT_S', 0.4)  # an in-use erb_io is re-read this long
    return FakeHost(tmp_path)


def refusal(cfg):
    with pytest.raises(K.KmodError) as e:
        K.preflight(cfg)
    return str(e.value)


# --------------------------------------------------------------------------- preflight

def test_preflight_passes_on_a_complete_host(host):
    pre = K.preflight(host.cfg())
    assert pre['kdir'] == os.path.realpath(host.hdrs)
    assert pre['vmlinux_btf'] == host.p('sys/kernel/btf/vmlinux') and pre['btf_format'] == 'raw'
    assert pre['cc'] == os.path.join(host.bin, 'gcc-12')
    assert pre['resolve_btfids'] == host.rbtf
    assert pre['signature_required'] is None and pre['dkms'] is None


def test_no_module_support(host):
    os.unlink(host.p('proc/modules'))
    msg = refusal(host.cfg())
    assert msg == ('this kernel (%s) has no loadable module support (CONFIG_MODULES is off): erb_io cannot be '
                   'loaded here; use the ring-buffer I/O path (the role does this when erb_kmod_enabled is auto)'
                   % KREL)


def test_modules_disabled(host):
    write(host.p('proc/sys/kernel/modules_disabled'), '1\n')
    msg = refusal(host.cfg())
    assert 'module loading disabled' in msg and 'modules_disabled is 1' in msg
    assert 'use the ring-buffer I/O path' in msg


def test_other_release_on_a_host_without_modules_uses_its_config(host):
    # this CI host: 6.18 without CONFIG_MODULES, building for Debian's 6.1
    os.unlink(host.p('proc/modules'))
    cfg = host.cfg(running_release=OTHER, vmlinux_btf=host.p('sys/kernel/btf/vmlinux'))
    assert K.preflight(cfg)['kdir'] == os.path.realpath(host.hdrs)
    host.set_config(CONFIG_MODULES=None)
    msg = refusal(cfg)
    assert 'this kernel (%s) has no loadable module support (CONFIG_MODULES is off in its .config)' % KREL in msg


@pytest.mark.parametrize('mode', ['integrity', 'confidentiality'])
def test_lockdown_refuses_unsigned(host, mode):
    write(host.p('sys/kernel/security/lockdown'), 'none integrity confidentiality\n'.replace(mode, '[%s]' % mode))
    msg = refusal(host.cfg())
    assert 'kernel lockdown is in %s mode' % mode in msg
    assert 'refuses unsigned modules' in msg and 'mokutil' in msg and 'sign_key/sign_cert' in msg
    assert 'disable Secure Boot' in msg
    key, cert = os.path.join(host.tmp, 'k.pem'), os.path.join(host.tmp, 'c.der')
    write(key, 'k')
    write(cert, 'c')
    pre = K.preflight(host.cfg(sign_key=key, sign_cert=cert))
    assert 'lockdown' in pre['signature_required']
    assert pre['sign_file'] == os.path.realpath(host.p('usr/lib/linux-kbuild-6.1/scripts/sign-file'))
    assert pre['sign_hash'] == 'sha256'


def test_lockdown_none_passes(host):
    write(host.p('sys/kernel/security/lockdown'), '[none] integrity confidentiality\n')
    assert K.preflight(host.cfg())['signature_required'] is None


def test_secure_boot(host):
    host.secure_boot(False)
    assert K.preflight(host.cfg())['signature_required'] is None
    host.secure_boot(True)
    msg = refusal(host.cfg())
    assert 'Secure Boot is enabled' in msg and 'refuses unsigned modules' in msg and 'mokutil' in msg


def test_sig_enforce(host):
    write(host.p('sys/module/module/parameters/sig_enforce'), 'Y\n')
    msg = refusal(host.cfg())
    assert 'sig_enforce is Y' in msg and 'refuses unsigned modules' in msg


def test_other_release_forcing_signatures(host):
    host.set_config(CONFIG_MODULE_SIG_FORCE='y')
    msg = refusal(host.cfg(running_release=OTHER, vmlinux_btf=host.p('sys/kernel/btf/vmlinux')))
    assert 'CONFIG_MODULE_SIG_FORCE=y' in msg and 'refuses unsigned modules' in msg


def test_missing_headers(host):
    os.unlink(host.p('lib/modules/%s/build' % KREL))
    msg = refusal(host.cfg())
    assert msg.startswith('kernel headers for %s are not installed' % KREL)
    assert msg.endswith('apt-get install linux-headers-%s' % KREL)


def test_preflight_order(host):
    """module support, then signature policy, then headers, then the BTF prerequisites."""
    os.unlink(host.p('proc/modules'))
    write(host.p('sys/kernel/security/lockdown'), 'none [integrity] confidentiality\n')
    os.unlink(host.p('lib/modules/%s/build' % KREL))
    os.unlink(os.path.join(host.bin, 'pahole'))
    seen = []
    for fix in (lambda: write(host.p('proc/modules'), ''),
                lambda: write(host.p('sys/kernel/security/lockdown'), '[none] integrity\n'),
                lambda: os.symlink(host.hdrs, host.p('lib/modules/%s/build' % KREL)),
                lambda: stub(os.path.join(host.bin, 'pahole'))):
        seen.append(refusal(host.cfg()))
        fix()
    K.preflight(host.cfg())
    assert 'no loadable module support' in seen[0]
    assert 'lockdown' in seen[1]
    assert 'kernel headers for' in seen[2]
    assert 'dwarves' in seen[3]


def test_btf_modules_off(host):
    host.set_config(CONFIG_DEBUG_INFO_BTF_MODULES=None)
    msg = refusal(host.cfg())
    assert 'without CONFIG_DEBUG_INFO_BTF_MODULES' in msg and 'ring-buffer I/O path' in msg


def test_running_kernel_without_btf(host):
    os.unlink(host.p('sys/kernel/btf/vmlinux'))
    msg = refusal(host.cfg())
    assert 'has no BTF' in msg and 'CONFIG_DEBUG_INFO_BTF' in msg


def test_other_release_needs_vmlinux_btf(host, tmp_path):
    msg = refusal(host.cfg(running_release=OTHER))
    assert 'kernel_release %s is not the running kernel (%s): pass vmlinux_btf' % (KREL, OTHER) in msg
    # a vmlinux with .BTF in the build dir is used by default
    elf = fake_ko(str(tmp_path / 'vmlinux.o'))
    shutil.copy(elf, os.path.join(host.hdrs, 'vmlinux'))
    pre = K.preflight(host.cfg(running_release=OTHER))
    assert pre['vmlinux_btf'] == os.path.join(os.path.realpath(host.hdrs), 'vmlinux')
    assert pre['btf_format'] == 'elf'


def test_vmlinux_btf_formats(host, tmp_path):
    junk = str(tmp_path / 'junk')
    write(junk, b'not btf at all')
    assert 'neither raw BTF' in refusal(host.cfg(vmlinux_btf=junk))
    assert 'does not exist' in refusal(host.cfg(vmlinux_btf=str(tmp_path / 'nope')))
    nobtf = fake_ko(str(tmp_path / 'nobtf.o'), btf=False)
    assert 'ELF file without a .BTF section' in refusal(host.cfg(vmlinux_btf=nobtf))
    raw = str(tmp_path / 'raw')
    write(raw, RAW_BTF)
    assert K.preflight(host.cfg(vmlinux_btf=raw))['btf_format'] == 'raw'


def test_pahole_missing(host):
    os.unlink(os.path.join(host.bin, 'pahole'))
    assert refusal(host.cfg()).startswith('pahole is not installed: apt-get install dwarves')


def test_resolve_btfids_search_order(host):
    cfg = host.cfg(resolve_btfids=None)
    msg = refusal(cfg)
    assert 'resolve_btfids not found' in msg
    assert 'make -C linux-source-6.1/tools/bpf/resolve_btfids' in msg and 'resolve_btfids=PATH' in msg
    assert 'apt-get install linux-source-6.1' in msg
    # PATH is the last resort
    stub(os.path.join(host.bin, 'resolve_btfids'))
    assert K.preflight(cfg)['resolve_btfids'] == os.path.join(host.bin, 'resolve_btfids')
    # another linux-kbuild comes before PATH, the release's own linux-kbuild before another one
    other = host.p('usr/lib/linux-kbuild-5.10/tools/bpf/resolve_btfids/resolve_btfids')
    stub(other)
    assert K.preflight(cfg)['resolve_btfids'] == other
    own = host.p('usr/lib/linux-kbuild-6.1/tools/bpf/resolve_btfids/resolve_btfids')
    stub(own)
    # reached through the headers' tools -> ../../lib/linux-kbuild-6.1/tools link: the first candidate
    assert K.preflight(cfg)['resolve_btfids'] == os.path.join(os.path.realpath(host.hdrs), 'tools', 'bpf',
                                                              'resolve_btfids', 'resolve_btfids')
    os.chmod(own, 0o644)
    assert K.preflight(cfg)['resolve_btfids'] == other
    # an explicit path must be executable
    assert 'is not an executable file' in refusal(host.cfg(resolve_btfids=own))


def test_make_and_compiler_missing(host):
    os.unlink(os.path.join(host.bin, 'gcc-12'))
    stub(os.path.join(host.bin, 'gcc'))
    msg = refusal(host.cfg())
    assert msg == ('the compiler kernel %s was built with (gcc-12) is not installed: apt-get install gcc-12'
                   % KREL)
    stub(os.path.join(host.bin, 'gcc-12'))
    os.unlink(os.path.join(host.bin, 'make'))
    assert refusal(host.cfg()) == 'make is not installed: apt-get install make'
    stub(os.path.join(host.bin, 'make'))
    os.unlink(os.path.join(host.bin, 'depmod'))
    assert refusal(host.cfg()) == 'depmod is not installed: apt-get install kmod'


def test_dkms_method_needs_dkms(host):
    assert 'apt-get install dkms' in refusal(host.cfg(method='dkms'))
    stub(os.path.join(host.bin, 'dkms'))
    assert K.preflight(host.cfg(method='dkms'))['dkms'] == os.path.join(host.bin, 'dkms')


def test_signing_options(host):
    with pytest.raises(K.KmodError, match='both sign_key and sign_cert'):
        host.cfg(sign_key='/k')
    key = os.path.join(host.tmp, 'k.pem')
    write(key, 'k')
    assert 'sign_cert /nonexistent is not a readable file' in refusal(host.cfg(sign_key=key,
                                                                               sign_cert='/nonexistent'))
    os.unlink(host.p('usr/lib/linux-kbuild-6.1/scripts/sign-file'))
    assert 'sign-file is missing' in refusal(host.cfg(sign_key=key, sign_cert=key))


def test_kernel_compiler():
    assert K.kernel_compiler({'CONFIG_CC_VERSION_TEXT': 'gcc-12 (Debian 12.2.0-14) 12.2.0'}) == 'gcc-12'
    assert K.kernel_compiler({'CONFIG_CC_VERSION_TEXT': 'x86_64-linux-gnu-gcc-13 (Ubuntu) 13.2'}) == \
        'x86_64-linux-gnu-gcc-13'
    assert K.kernel_compiler({'CONFIG_CC_VERSION_TEXT': 'gcc (GCC) 14.1.1'}) == 'gcc'
    assert K.kernel_compiler({'CONFIG_CC_VERSION_TEXT': 'Debian clang version 14.0.6',
                              'CONFIG_CC_IS_CLANG': 'y'}) == 'clang'


# --------------------------------------------------------------------------- sources

def test_source_hash_stable_and_sensitive(tmp_path):
    a = make_src(str(tmp_path / 'a'))
    h = K.source_hash(a, KREL)
    assert h == K.source_hash(a, KREL) and len(h) == 64
    b = make_src(str(tmp_path / 'b'))
    os.utime(os.path.join(b, 'erb_io.c'), (1, 1))
    assert K.source_hash(b, KREL) == h                       # other dir, other mtimes: same
    assert K.source_hash(a, '6.1.0-98-amd64') != h          # kernel_release counts
    for junk in ('erb_io.o', 'erb_io.ko', '.erb_io.ko.cmd', 'Module.symvers', 'modules.order', 'erb_io.mod.c~'):
        write(os.path.join(b, junk), 'build product')
    assert K.source_hash(b, KREL) == h                       # build products are not sources
    with open(os.path.join(b, 'erb_io.c'), 'a') as f:
        f.write('/* one more comment */\n')
    assert K.source_hash(b, KREL) != h                       # content counts
    c = make_src(str(tmp_path / 'c'))
    write(os.path.join(c, 'extra.h'), '')
    h2 = K.source_hash(c, KREL)
    os.rename(os.path.join(c, 'extra.h'), os.path.join(c, 'other.h'))
    assert h2 != h and K.source_hash(c, KREL) not in (h, h2)  # names count
    assert K.source_files(c) == sorted(['Kbuild', 'Makefile', 'dkms.conf', 'erb.h', 'erb_io.c', 'erb_record.h',
                                        'other.h'])


def test_source_dir_must_be_complete(tmp_path):
    d = make_src(str(tmp_path / 's'))
    os.unlink(os.path.join(d, 'erb_record.h'))
    os.unlink(os.path.join(d, 'erb.h'))
    with pytest.raises(K.KmodError) as e:
        K.source_hash(d, KREL)
    assert 'lacks erb.h, erb_record.h' in str(e.value) and 'files/bpf/' in str(e.value)
    with pytest.raises(K.KmodError, match='is not a directory'):
        K.source_files(str(tmp_path / 'nope'))


def test_declared_params_and_dkms_version(tmp_path):
    d = make_src(str(tmp_path / 's'))
    declared = K.declared_params(d)
    assert set(PARAMS) <= set(declared) and declared == sorted(declared)
    h = K.source_hash(d, KREL)
    assert K.dkms_version(d, h) == '0.1.0+' + h[:12]
    v = K.dkms_conf_values(d)
    assert v['dest'] == '/updates/dkms' and v['built_name'] == 'erb_io' and v['name'] == 'erb_io'


# --------------------------------------------------------------------------- parameters

def test_normalize_params():
    got = K.normalize_params({'sink': 'aof_direct', 'kfifo_size': 4096, 'redis_pid': 0}, PARAMS)
    assert got == {'sink': 'aof_direct', 'kfifo_size': '4096', 'redis_pid': '0'}
    assert K.normalize_params({'x': True, 'y': False}) == {'x': 'Y', 'y': 'N'}
    with pytest.raises(K.KmodError, match=r"unknown parameter 'kfifo': erb_io declares aof_suffix, batch, "):
        K.normalize_params({'kfifo': 1}, PARAMS)
    for bad in ('a b', 'a"b', "a'b", 'a\\b', 'a#b', 'a\nb'):
        with pytest.raises(K.KmodError, match='may not contain whitespace'):
            K.normalize_params({'aof_suffix': bad}, PARAMS)
    with pytest.raises(K.KmodError, match='give a string or an integer'):
        K.normalize_params({'batch': 1.5}, PARAMS)
    with pytest.raises(K.KmodError, match='invalid parameter name'):
        K.normalize_params({'a-b': 1})


@pytest.mark.parametrize('want,have,equal', [
    ('apply', 'apply', True), ('apply', 'aof_direct', False), ('4096', '4096', True), ('0x1000', '4096', True),
    ('010', '10', True), ('1', 'Y', True), ('0', 'N', True), ('true', 'Y', True), ('Y', 'N', False),
    ('', '', True), ('x', None, False), ('64', '65', False)])
def test_param_equal(want, have, equal):
    assert K.param_equal(want, have) is equal


def test_modprobe_conf_roundtrip():
    text = K.modprobe_conf_content({'sink': 'apply', 'kfifo_size': '4096'})
    assert text.splitlines()[-1] == 'options erb_io kfifo_size=4096 sink=apply'
    assert text.startswith('# Managed by erb.booster.kmod')
    assert K.parse_modprobe_conf(text) == {'sink': 'apply', 'kfifo_size': '4096'}
    assert K.modprobe_conf_content({}) is None
    assert K.parse_modprobe_conf('options other a=1\noptions erb_io b=2 # c=3\n') == {'b': '2'}


def test_read_loaded(host):
    d = host.p('sys/module/erb_io')
    assert K.read_loaded(host.cfg()) is None
    write(os.path.join(d, 'srcversion'), 'ABC\n')
    write(os.path.join(d, 'refcnt'), '2\n')
    write(os.path.join(d, 'parameters', 'sink'), 'apply\n', 0o444)
    write(os.path.join(d, 'parameters', 'redis_pid'), '0\n', 0o644)
    os.makedirs(os.path.join(d, 'holders'))
    got = K.read_loaded(host.cfg())
    assert got['srcversion'] == 'ABC' and got['refcnt'] == 2 and got['holders'] == []
    assert got['params'] == {'sink': 'apply', 'redis_pid': '0'} and got['writable'] == ['redis_pid']
    assert K.is_in_use(got)
    assert K.in_use_message(got) == ("erb_io is in use (refcnt 2): detach ERB's BPF programs first "
                                     "(erb.booster.bpf state=detached)")


# --------------------------------------------------------------------------- ELF checks

def test_ko_info(tmp_path):
    ok = K.ko_info(fake_ko(str(tmp_path / 'ok.ko'), srcversion='SRC1'))
    assert ok['btf'] and ok['kfuncs_ok'] and ok['btf_ids'] == 3 and ok['unresolved'] == []
    assert ok['modinfo']['srcversion'] == 'SRC1' and ok['modinfo']['vermagic'].split()[0] == KREL
    assert ok['parm'] == ['sink'] and not ok['signed']
    zero = K.ko_info(fake_ko(str(tmp_path / 'zero.ko'), ids=(0, 5, 0)))
    assert zero['btf'] and not zero['kfuncs_ok']
    assert [n.split('__')[3] for n in zero['unresolved']] == ['erb_kfifo_in', 'erb_applied_seq']
    nobtf = K.ko_info(fake_ko(str(tmp_path / 'nobtf.ko'), btf=False))
    assert not nobtf['btf'] and not nobtf['kfuncs_ok']
    assert K.ko_info(fake_ko(str(tmp_path / 's.ko'), signed=True))['signed']
    write(str(tmp_path / 'txt'), 'hello')
    with pytest.raises(K.KmodError, match='not an ELF file'):
        K.ko_info(str(tmp_path / 'txt'))


# --------------------------------------------------------------------------- private kbuild tree

def test_private_kbuild_tree_layout(host, tmp_path):
    write(host.p('usr/lib/linux-kbuild-6.1/tools/bpf/bpftool-stub'), '')
    before = tree_snapshot(host.root)
    vm = str(tmp_path / 'vmlinux.btf')
    write(vm, RAW_BTF + b'base btf')
    dest = os.path.join(host.work, KREL, 'kbuild')
    assert K.prepare_kbuild_tree(host.p('lib/modules/%s/build' % KREL), dest, vm, host.rbtf) == dest
    real = os.path.realpath(host.hdrs)
    entries = sorted(os.listdir(dest))
    assert entries == sorted(os.listdir(real) + ['vmlinux', '.erb-kbuild.json'])
    for n in os.listdir(real):
        if n == 'tools':
            continue
        assert os.path.islink(os.path.join(dest, n)), n
        assert os.readlink(os.path.join(dest, n)) == os.path.realpath(os.path.join(real, n)), n
    # Debian's relative links are resolved: scripts points into linux-kbuild
    assert os.readlink(os.path.join(dest, 'scripts')) == host.p('usr/lib/linux-kbuild-6.1/scripts')
    assert not os.path.islink(os.path.join(dest, 'vmlinux'))
    with open(os.path.join(dest, 'vmlinux'), 'rb') as f:
        assert f.read() == RAW_BTF + b'base btf'
    tools = os.path.join(dest, 'tools')
    assert os.path.isdir(tools) and not os.path.islink(tools)
    assert os.readlink(os.path.join(tools, 'objtool')) == host.p('usr/lib/linux-kbuild-6.1/tools/objtool')
    assert os.path.isdir(os.path.join(tools, 'bpf')) and not os.path.islink(os.path.join(tools, 'bpf'))
    assert os.readlink(os.path.join(tools, 'bpf', 'bpftool-stub')) == \
        host.p('usr/lib/linux-kbuild-6.1/tools/bpf/bpftool-stub')
    rb = os.path.join(tools, 'bpf', 'resolve_btfids', 'resolve_btfids')
    assert stat.S_ISREG(os.lstat(rb).st_mode) and os.access(rb, os.X_OK)
    with open(rb) as f, open(host.rbtf) as g:
        assert f.read() == g.read()
    # nothing the headers package owns was touched
    assert tree_snapshot(host.root) == before
    # prepared again (new BTF): replaced as a whole, no leftovers
    write(vm, RAW_BTF + b'other')
    K.prepare_kbuild_tree(host.p('lib/modules/%s/build' % KREL), dest, vm, host.rbtf)
    with open(os.path.join(dest, 'vmlinux'), 'rb') as f:
        assert f.read() == RAW_BTF + b'other'
    assert sorted(os.listdir(os.path.dirname(dest))) == ['kbuild']


def test_private_tree_replaces_a_vmlinux_of_the_headers(host, tmp_path):
    write(os.path.join(host.hdrs, 'vmlinux'), b'headers vmlinux')
    vm = str(tmp_path / 'vm')
    write(vm, RAW_BTF)
    dest = K.prepare_kbuild_tree(host.hdrs, str(tmp_path / 'kb'), vm, host.rbtf)
    with open(os.path.join(dest, 'vmlinux'), 'rb') as f:
        assert f.read() == RAW_BTF
    with open(os.path.join(host.hdrs, 'vmlinux'), 'rb') as f:
        assert f.read() == b'headers vmlinux'


# --------------------------------------------------------------------------- load / unload decisions

class FakeKernel(object):
    """Runner standing in for modprobe, rmmod, depmod (and refusing anything else); modprobe makes a
    /sys/module/erb_io like the kernel's, with erb_io's parameter defaults and permissions."""

    DEFAULTS = {'sink': ('apply', 0o444), 'kfifo_size': ('1024', 0o444), 'batch': ('64', 0o444),
                'redis_sock': ('/run/redis/redis-server.sock', 0o444), 'redis_pid': ('0', 0o644),
                'aof_suffix': ('', 0o444), 'drain_ms': ('2000', 0o644), 'redis_user': ('', 0o444),
                'redis_password_file': ('', 0o444)}

    def __init__(self, host, btf_sysfs=True, rmmod_busy=False):
        self.host = host
        self.calls = []
        self.btf_sysfs = btf_sysfs
        self.rmmod_busy = rmmod_busy

    def __call__(self, args, env=None, cwd=None):
        self.calls.append([os.path.basename(args[0])] + list(args[1:]))
        tool = os.path.basename(args[0])
        if tool == 'depmod':
            return 0, '', ''
        if tool == 'modprobe':
            ko = self.host.p('lib/modules/%s/updates/erb/erb_io.ko' % self.host.krel)
            sv = K.ko_info(ko)['modinfo']['srcversion']
            given = dict(a.split('=', 1) for a in args[args.index('erb_io') + 1:])
            self.load(sv, given)
            return 0, '', ''
        if tool == 'rmmod':
            if self.rmmod_busy:
                return 1, '', 'rmmod: ERROR: Module erb_io is in use\n'
            shutil.rmtree(self.host.p('sys/module/erb_io'))
            remove = self.host.p('sys/kernel/btf/erb_io')
            if os.path.exists(remove):
                os.unlink(remove)
            return 0, '', ''
        raise AssertionError('unexpected command %r' % (args,))

    def load(self, srcversion, params=None, refcnt=0):
        d = self.host.p('sys/module/erb_io')
        write(os.path.join(d, 'srcversion'), srcversion + '\n')
        write(os.path.join(d, 'refcnt'), '%d\n' % refcnt)
        write(os.path.join(d, 'initstate'), 'live\n')
        os.makedirs(os.path.join(d, 'holders'), exist_ok=True)
        for k, (v, mode) in self.DEFAULTS.items():
            write(os.path.join(d, 'parameters', k), (params or {}).get(k, v) + '\n', mode)
        for k, v in (('applied', '10'), ('retries', '3'), ('auth_errors', '0'), ('last_error', 'OOM command not allowed')):
            write(os.path.join(d, 'stats', k), v + '\n', 0o444)
        if self.btf_sysfs:
            write(self.host.p('sys/kernel/btf/erb_io'), RAW_BTF)

    def param(self, name):
        with open(self.host.p('sys/module/erb_io/parameters/%s' % name)) as f:
            return f.read().strip()

    def set_refcnt(self, n):
        write(self.host.p('sys/module/erb_io/refcnt'), '%d\n' % n)

    def tools(self):
        return [c[0] for c in self.calls]


def install_fake_build(host, srcversion='SRC1'):
    """What a kbuild install of the current sources leaves: the .ko and its stamp."""
    ko = fake_ko(host.p('lib/modules/%s/updates/erb/erb_io.ko' % host.krel), srcversion=srcversion)
    stamp = {'format': 1, 'source_hash': K.source_hash(host.src, host.krel), 'method': 'kbuild',
             'ko_sha256': hashlib.sha256(open(ko, 'rb').read()).hexdigest(), 'kernel_release': host.krel}
    write(ko + K.STAMP_SUFFIX, json.dumps(stamp))
    return ko


def present(host, kernel, check=False, **kw):
    return K.KmodRun(host.cfg(**kw), kernel).present(check_mode=check)


def test_installed_not_loaded_only_loads(host):
    install_fake_build(host)
    k = FakeKernel(host)
    r = present(host, k, params={'sink': 'apply', 'kfifo_size': 4096})
    assert r['changed'] and not r['built'] and r['loaded'] and r['btf'] and r['method'] == 'kbuild'
    # -d: modprobe reads the fake root's /lib/modules
    assert k.calls == [['modprobe', '-d', host.root, 'erb_io', 'kfifo_size=4096', 'sink=apply']]
    assert k.param('kfifo_size') == '4096'
    with open(host.p('etc/modprobe.d/erb_io.conf')) as f:
        assert f.read().splitlines()[-1] == 'options erb_io kfifo_size=4096 sink=apply'
    # second run: nothing to do, no command at all
    k2 = FakeKernel(host)
    r = present(host, k2, params={'sink': 'apply', 'kfifo_size': 4096})
    assert not r['changed'] and r['loaded'] and k2.calls == []
    assert r['msg'] == 'erb_io for %s is installed and loaded as requested' % KREL


def test_runtime_parameter_is_written_without_reload(host):
    install_fake_build(host)
    k = FakeKernel(host)
    k.load('SRC1', {'redis_pid': '100'}, refcnt=1)   # in use: a reload would be refused
    r = present(host, k, params={'redis_pid': 200})
    assert r['changed'] and k.calls == [] and k.param('redis_pid') == '200'
    assert any('set parameter redis_pid=200' in s for s in r['steps'])


def test_load_time_parameter_reloads(host):
    install_fake_build(host)
    k = FakeKernel(host)
    k.load('SRC1', {'kfifo_size': '1024'})
    r = present(host, k, check=True, params={'kfifo_size': 2048})
    assert r['would_unload'] and r['would_load'] and not r['would_build'] and k.calls == []
    assert 'kfifo_size (loaded 1024, wanted 2048)' in r['reload_reasons'][0]
    r = present(host, k, params={'kfifo_size': 2048})
    assert k.tools() == ['rmmod', 'modprobe'] and k.param('kfifo_size') == '2048' and r['changed']


def test_other_srcversion_reloads(host):
    install_fake_build(host, srcversion='NEW')
    k = FakeKernel(host)
    k.load('OLD')
    r = present(host, k)
    assert k.tools() == ['rmmod', 'modprobe'] and r['loaded']
    assert 'srcversion OLD' in r['steps'][-2] and 'NEW' in r['steps'][-2]


def test_dropped_parameter_reloads(host):
    install_fake_build(host)
    k = FakeKernel(host)
    present(host, k, params={'batch': 128})
    r = present(host, k, params={})
    assert k.tools() == ['modprobe', 'rmmod', 'modprobe'] and k.param('batch') == '64'
    assert not os.path.exists(host.p('etc/modprobe.d/erb_io.conf')) and r['changed']


def test_in_use_refuses_and_touches_nothing(host):
    install_fake_build(host)
    k = FakeKernel(host)
    k.load('SRC1', {'kfifo_size': '1024'}, refcnt=2)
    before = tree_snapshot(host.root)
    for check in (True, False):
        with pytest.raises(K.KmodError) as e:
            present(host, k, check=check, params={'kfifo_size': 2048})
        assert str(e.value) == ("erb_io is in use (refcnt 2): detach ERB's BPF programs first "
                                "(erb.booster.bpf state=detached)")
    assert k.calls == [] and tree_snapshot(host.root) == before and not os.path.exists(host.work)


def test_reference_dropped_a_moment_later_is_waited_for(host):
    """A BPF program detached just before the run drops its reference on
    erb_io after an RCU grace period: the reload waits for it."""
    install_fake_build(host)
    k = FakeKernel(host)
    k.load('SRC1', {'kfifo_size': '1024'}, refcnt=1)
    refcnt = host.p('sys/module/erb_io/refcnt')
    timer = threading.Timer(0.15, write, (refcnt, '0\n'))
    timer.start()
    try:
        r = present(host, k, params={'kfifo_size': 2048})
    finally:
        timer.join()
    assert r['changed'] and k.tools() == ['rmmod', 'modprobe']


def test_rmmod_busy_is_reported_as_in_use(host):
    install_fake_build(host)
    k = FakeKernel(host, rmmod_busy=True)
    k.load('SRC1', {'kfifo_size': '1024'})
    with pytest.raises(K.KmodError) as e:
        present(host, k, params={'kfifo_size': 2048})
    assert str(e.value).startswith("erb_io is in use (refcnt 0): detach ERB's BPF programs first")
    assert k.tools() == ['rmmod']


def test_out_of_date_build_while_in_use_refuses_before_building(host):
    install_fake_build(host)
    k = FakeKernel(host)
    k.load('SRC1', refcnt=1)
    with open(os.path.join(host.src, 'erb_io.c'), 'a') as f:
        f.write('/* changed */\n')
    with pytest.raises(K.KmodError, match=r'erb_io is in use \(refcnt 1\)'):
        present(host, k)
    assert k.calls == [] and not os.path.exists(host.work)


def test_loaded_without_module_btf_fails(host):
    install_fake_build(host)
    k = FakeKernel(host, btf_sysfs=False)
    with pytest.raises(K.KmodError) as e:
        present(host, k)
    assert '/sys/kernel/btf/erb_io is missing' in str(e.value) and 'vmlinux_btf' in str(e.value)


def test_check_mode_writes_nothing(host):
    install_fake_build(host)
    k = FakeKernel(host)
    before = tree_snapshot(host.root)
    r = present(host, k, check=True, params={'sink': 'apply'})
    assert r['changed'] and r['would_load'] and not r['would_build'] and r['would_write_conf']
    assert not r['would_unload'] and r['would_set_params'] == {}
    assert r['diff']['before']['loaded'] is False and r['diff']['after']['loaded'] is True
    assert k.calls == [] and tree_snapshot(host.root) == before and not os.path.exists(host.work)
    # nothing installed yet: a build would run
    os.unlink(host.p('lib/modules/%s/updates/erb/erb_io.ko.erb-hash' % KREL))
    r = present(host, k, check=True)
    assert r['would_build'] and r['btf'] is None and k.calls == []


def test_other_release_is_not_loaded(host):
    install_fake_build(host)
    k = FakeKernel(host)
    r = present(host, k, running_release=OTHER, vmlinux_btf=host.p('sys/kernel/btf/vmlinux'),
                params={'sink': 'apply'})
    assert k.calls == [] and not r['loaded']
    assert r['load_skipped'].startswith('kernel_release %s is not the running kernel (%s)' % (KREL, OTHER))
    assert os.path.exists(host.p('etc/modprobe.d/erb_io.conf')) and r['changed']


def test_absent(host):
    ko = install_fake_build(host)
    k = FakeKernel(host)
    k.load('SRC1', refcnt=1)
    write(host.p('etc/modprobe.d/erb_io.conf'), K.modprobe_conf_content({'sink': 'apply'}))
    os.makedirs(os.path.join(host.work, KREL, 'kbuild'))
    with pytest.raises(K.KmodError, match=r"erb_io is in use \(refcnt 1\): detach ERB's BPF programs"):
        K.KmodRun(host.cfg(), k).absent()
    assert k.calls == [] and os.path.exists(ko)
    k.set_refcnt(0)
    r = K.KmodRun(host.cfg(), k).absent(check_mode=True)
    assert r['changed'] and r['would_unload'] and ko in r['would_remove'] and k.calls == []
    r = K.KmodRun(host.cfg(), k).absent()
    assert r['changed'] and not r['loaded'] and k.tools() == ['rmmod', 'depmod']
    assert not os.path.exists(ko) and not os.path.exists(ko + K.STAMP_SUFFIX)
    assert not os.path.exists(host.p('etc/modprobe.d/erb_io.conf'))
    assert not os.path.exists(os.path.join(host.work, KREL))
    assert not os.path.exists(os.path.dirname(ko))
    k2 = FakeKernel(host)
    r = K.KmodRun(host.cfg(), k2).absent()
    assert not r['changed'] and k2.calls == [] and r['msg'] == 'erb_io is not here: nothing to do'


def test_absent_leaves_foreign_modules_alone(host):
    foreign = fake_ko(host.p('lib/modules/%s/extra/erb_io.ko' % KREL))
    r = K.KmodRun(host.cfg(), FakeKernel(host)).absent()
    assert not r['changed'] and os.path.exists(foreign)
    assert any('not installed by erb.booster.kmod' in w for w in r['warnings'])


def test_password_file_must_be_root_only(host):
    install_fake_build(host)
    pw = host.p('etc/erb/redis-password')
    write(pw, 'secret\n', 0o644)
    k = FakeKernel(host)
    for mode, uid in ((0o644, 0), (0o640, 0), (0o600, 1)):
        os.chmod(pw, mode)
        os.chown(pw, uid, 0)
        with pytest.raises(K.KmodError) as e:
            present(host, k, redis_password_file='/etc/erb/redis-password')
        assert 'owned by uid %d with mode %04o: erb_io refuses it' % (uid, mode) in str(e.value)
    with pytest.raises(K.KmodError) as e:
        present(host, k, redis_password_file='/etc/erb/missing')
    assert 'redis_password_file /etc/erb/missing' in str(e.value)
    assert k.calls == []
    os.chown(pw, 0, 0)
    os.chmod(pw, 0o600)
    r = present(host, k, redis_password_file='/etc/erb/redis-password', params={'redis_user': 'erb'})
    # the parameter names the file; the secret goes nowhere
    assert k.calls == [['modprobe', '-d', host.root, 'erb_io', 'redis_password_file=/etc/erb/redis-password',
                        'redis_user=erb']]
    assert 'secret' not in json.dumps(r)
    with open(host.p('etc/modprobe.d/erb_io.conf')) as f:
        assert 'secret' not in f.read()


def test_stats_reported(host):
    install_fake_build(host)
    k = FakeKernel(host)
    r = present(host, k)
    assert r['stats'] == {'applied': 10, 'retries': 3, 'auth_errors': 0, 'last_error': 'OOM command not allowed'}
    r = present(host, k, check=True)
    assert r['stats']['retries'] == 3
