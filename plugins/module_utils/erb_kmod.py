# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared code of erb.booster.kmod: build, install, load and unload erb_io.

* Preflight: module support, signature policy (lockdown, Secure Boot,
  sig_enforce), kernel headers, and what a ``.BTF`` section needs (base BTF,
  pahole, resolve_btfids, make, the kernel's compiler). Each refusal says what
  to do.
* A PRIVATE kbuild tree per kernel release (``<work_dir>/<krel>/kbuild``): a
  symlink farm of ``/lib/modules/<krel>/build`` plus a real ``vmlinux`` (the
  base BTF) and a real ``tools/bpf/resolve_btfids/resolve_btfids``. Package
  owned directories are never written to.
* Builds through Kbuild directly or through DKMS, checks the ``.ko`` (``.BTF``
  present, kfunc BTF IDs resolved, vermagic), signs it if asked, installs it
  with a stamp (source hash) next to it, runs depmod.
* Idempotence: source hash + stamp + the loaded module's srcversion and
  parameters decide whether to build, install, unload, load.

Every fixed system path is read through ``root`` (default ``/``) so the code
can run against temporary trees; paths the user gives (src, work_dir,
vmlinux_btf, resolve_btfids, sign_key, sign_cert) are used as given. External
tools go through a ``runner(args, env=None, cwd=None) -> (rc, out, err)``
(``module.run_command`` in the module, :func:`subprocess_runner` in tests).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import fcntl
import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import time

from ansible_collections.erb.booster.plugins.module_utils.erb_files import atomic_copy, atomic_write, copy_stream

MODULE_NAME = 'erb_io'
REQUIRED_SOURCES = ('erb_io.c', 'Kbuild', 'Makefile', 'dkms.conf', 'erb.h', 'erb_record.h')
# What counts as source (hashed and copied); build products in src are ignored.
SOURCE_GLOBS = ('Kbuild', 'Makefile', 'dkms.conf', '*.c', '*.h')
METHODS = ('auto', 'dkms', 'kbuild')
DEFAULT_WORK_DIR = '/var/lib/erb/kmod'
KBUILD_DEST = '/updates/erb'
DKMS_DEFAULT_DEST = '/updates/dkms'
STAMP_SUFFIX = '.erb-hash'
STAMP_FORMAT = 1
SOURCE_MARKER = '.erb-booster-kmod'
MODPROBE_CONF = '/etc/modprobe.d/erb_io.conf'
SECURE_BOOT_VAR = '/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c'
LOCKDOWN = '/sys/kernel/security/lockdown'
SIG_ENFORCE = '/sys/module/module/parameters/sig_enforce'
MODULES_DISABLED = '/proc/sys/kernel/modules_disabled'
RING_BUFFER_HINT = 'use the ring-buffer I/O path (the role does this when erb_kmod_enabled is auto)'
IN_USE_HINT = "detach ERB's BPF programs first (erb.booster.bpf state=detached)"
IN_USE_WAIT_S = 5.0  # a detached program's reference goes a moment later (RCU)
SIGN_HINT = ('enroll a key with mokutil (mokutil --import CERT.der, confirm at the next boot) and pass '
             'sign_key/sign_cert, or disable Secure Boot')
MODULE_SIG_MAGIC = b'~Module signature appended~\n'
BTF_MAGIC = (b'\x9f\xeb', b'\xeb\x9f')
EXTRA_PATH = ('/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin')
PARAM_NAME_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')
PARAM_DECL_RE = re.compile(r'\bmodule_param(?:_named|_string|_array|_array_named|_cb|_unsafe)?\s*\(\s*(\w+)')
KREL_RE = re.compile(r'^[A-Za-z0-9._+~-]+$')
TAIL_LINES = 40


class KmodError(Exception):
    """An error with a message meant for the operator."""


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def rpath(root, path):
    """``path`` (absolute) under ``root``."""
    if not root or root == '/':
        return path
    return os.path.join(root, path.lstrip('/'))


def read_text(path):
    """File content; None when it does not exist."""
    try:
        with open(path) as f:
            return f.read()
    except (IOError, OSError) as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise KmodError('cannot read %s: %s' % (path, e.strerror or e))


def read_head(path, n):
    try:
        with open(path, 'rb') as f:
            return f.read(n)
    except (IOError, OSError) as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise KmodError('cannot read %s: %s' % (path, e.strerror or e))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def remove_path(path):
    """Remove a file, symlink or tree; True if something was removed."""
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
        return True
    if os.path.isdir(path):
        shutil.rmtree(path)
        return True
    return False


def tail(text, n=TAIL_LINES):
    lines = [x for x in (text or '').splitlines() if x.strip()]
    return '\n'.join(lines[-n:])


def default_path():
    dirs = [d for d in os.environ.get('PATH', '').split(os.pathsep) if d]
    return dirs + [d for d in EXTRA_PATH if d not in dirs]


def which(name, path):
    for d in path:
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def is_executable(path):
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def subprocess_runner(args, env=None, cwd=None):
    """A runner for tests and scripts: argument list, LANG=C, no shell."""
    e = dict(os.environ)
    e.update({'LANG': 'C', 'LC_ALL': 'C'})
    e.update(env or {})
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, cwd=cwd,
                         universal_newlines=True)
    out, err = p.communicate()
    return p.returncode, out, err


def major_minor(krel):
    m = re.match(r'^(\d+\.\d+)', krel)
    return m.group(1) if m else None


# --------------------------------------------------------------------------
# ELF: sections, symbols, .modinfo, .BTF_ids (no external tool needed)
# --------------------------------------------------------------------------

class Elf(object):
    """Just enough of an ELF reader: section headers and the symbol table."""

    def __init__(self, path):
        self.path = path
        with open(path, 'rb') as f:
            ident = f.read(64)
            if len(ident) < 52 or ident[:4] != b'\x7fELF':
                raise ValueError('%s is not an ELF file' % path)
            cls, enc = bytearray(ident[4:6])
            self.e = '<' if enc == 1 else '>'
            if cls == 2:
                shoff, = struct.unpack(self.e + 'Q', ident[0x28:0x30])
                shentsize, shnum, shstrndx = struct.unpack(self.e + 'HHH', ident[0x3a:0x40])
                shfmt, self.symfmt = 'IIQQQQIIQQ', 'IBBHQQ'
            elif cls == 1:
                shoff, = struct.unpack(self.e + 'I', ident[0x20:0x24])
                shentsize, shnum, shstrndx = struct.unpack(self.e + 'HHH', ident[0x2e:0x34])
                shfmt, self.symfmt = 'IIIIIIIIII', 'IIIBBH'
            else:
                raise ValueError('%s: unknown ELF class %d' % (path, cls))
            self.is64 = cls == 2
            f.seek(shoff)
            raw = f.read(shentsize * shnum)
            if len(raw) < shentsize * shnum:
                raise ValueError('%s: truncated ELF section headers' % path)
            size = struct.calcsize(self.e + shfmt)
            self.sections = []
            for i in range(shnum):
                name, typ, flags, addr, off, sz, link, info, align, entsize = struct.unpack(
                    self.e + shfmt, raw[i * shentsize:i * shentsize + size])
                self.sections.append({'index': i, 'name_off': name, 'type': typ, 'offset': off,
                                      'size': sz, 'link': link, 'entsize': entsize})
            if shstrndx < len(self.sections):
                strtab = self._read(f, self.sections[shstrndx])
                for s in self.sections:
                    s['name'] = _cstr(strtab, s['name_off'])
            else:
                for s in self.sections:
                    s['name'] = ''

    @staticmethod
    def _read(f, sec):
        if sec['type'] == 8:  # SHT_NOBITS
            return b''
        f.seek(sec['offset'])
        return f.read(sec['size'])

    def section(self, name):
        for s in self.sections:
            if s['name'] == name:
                return s
        return None

    def read_section(self, name):
        s = self.section(name)
        if s is None:
            return None
        with open(self.path, 'rb') as f:
            return self._read(f, s)

    def symbols(self):
        sym = None
        for s in self.sections:
            if s['type'] == 2:  # SHT_SYMTAB
                sym = s
                break
        if sym is None:
            return []
        with open(self.path, 'rb') as f:
            data = self._read(f, sym)
            strtab = self._read(f, self.sections[sym['link']])
        size = struct.calcsize(self.e + self.symfmt)
        out = []
        for off in range(0, len(data) - size + 1, size):
            vals = struct.unpack(self.e + self.symfmt, data[off:off + size])
            if self.is64:
                name, info, other, shndx, value, sz = vals
            else:
                name, value, sz, info, other, shndx = vals
            out.append({'name': _cstr(strtab, name), 'shndx': shndx, 'value': value, 'size': sz})
        return out


def _cstr(buf, off):
    end = buf.find(b'\0', off)
    return buf[off:end if end >= 0 else len(buf)].decode('utf-8', 'replace')


def ko_info(path):
    """What matters about a built or installed erb_io.ko:
    btf (has a non-empty .BTF section), btf_ids (number of BTF ID slots),
    unresolved (slots still zero), kfuncs_ok, modinfo (dict), parm (names),
    signed."""
    try:
        elf = Elf(path)
    except (IOError, OSError, ValueError, struct.error) as e:
        raise KmodError('cannot read %s as a kernel module: %s' % (path, e))
    info = {'path': path}
    btf = elf.section('.BTF')
    info['btf'] = bool(btf and btf['size'] > 0)
    ids = elf.section('.BTF_ids')
    slots, unresolved = [], []
    if ids is not None:
        data = elf.read_section('.BTF_ids')
        for sym in elf.symbols():
            name = sym['name']
            if sym['shndx'] != ids['index'] or not name.startswith('__BTF_ID__'):
                continue
            if name.startswith('__BTF_ID__set'):  # set / set8 headers: counts, not IDs
                continue
            if sym['value'] + 4 > len(data):
                continue
            slots.append(name)
            if struct.unpack(elf.e + 'I', data[sym['value']:sym['value'] + 4])[0] == 0:
                unresolved.append(name)
    info['btf_ids'] = len(slots)
    info['unresolved'] = unresolved
    info['kfuncs_ok'] = info['btf'] and bool(slots) and not unresolved
    modinfo, parms = {}, []
    raw = elf.read_section('.modinfo') or b''
    for item in raw.split(b'\0'):
        if b'=' not in item:
            continue
        k, v = item.decode('utf-8', 'replace').split('=', 1)
        if k == 'parm':
            parms.append(v.split(':', 1)[0])
        else:
            modinfo.setdefault(k, v)
    info['modinfo'] = modinfo
    info['parm'] = parms
    with open(path, 'rb') as f:
        f.seek(0, 2)
        n = f.tell()
        f.seek(max(0, n - len(MODULE_SIG_MAGIC)))
        info['signed'] = f.read() == MODULE_SIG_MAGIC
    return info


def btf_file_kind(path):
    """'raw' (a BTF blob such as /sys/kernel/btf/vmlinux) or 'elf' (a vmlinux with .BTF)."""
    head = read_head(path, 4)
    if head is None:
        raise KmodError('vmlinux_btf %s does not exist' % path)
    if head[:2] in BTF_MAGIC:
        return 'raw'
    if head == b'\x7fELF':
        try:
            sec = Elf(path).section('.BTF')
        except (IOError, OSError, ValueError, struct.error) as e:
            raise KmodError('vmlinux_btf %s: %s' % (path, e))
        if not sec or not sec['size']:
            raise KmodError('vmlinux_btf %s is an ELF file without a .BTF section: the kernel was built '
                            'without CONFIG_DEBUG_INFO_BTF, or this is not its vmlinux' % path)
        return 'elf'
    raise KmodError('vmlinux_btf %s is neither raw BTF (like /sys/kernel/btf/vmlinux) nor an ELF vmlinux '
                    'with a .BTF section' % path)


# --------------------------------------------------------------------------
# sources, hash, parameters
# --------------------------------------------------------------------------

def source_files(src):
    """Sorted names of the source files in src (see SOURCE_GLOBS)."""
    if not src or not os.path.isdir(src):
        raise KmodError('src %s is not a directory: copy the module sources there (files/kmod/* and '
                        'files/bpf/erb.h, files/bpf/erb_record.h of the collection)' % src)
    names = []
    for n in sorted(os.listdir(src)):
        if not os.path.isfile(os.path.join(src, n)):
            continue
        if any(fnmatch.fnmatchcase(n, g) for g in SOURCE_GLOBS):
            names.append(n)
    missing = [n for n in REQUIRED_SOURCES if n not in names]
    if missing:
        raise KmodError('src %s lacks %s: it must hold erb_io.c, Kbuild, Makefile, dkms.conf (files/kmod/) '
                        'and erb.h, erb_record.h (files/bpf/)' % (src, ', '.join(missing)))
    return names


def source_hash(src, kernel_release):
    """sha256 over the sorted source file names and contents, and the kernel release."""
    h = hashlib.sha256()
    for n in source_files(src):
        with open(os.path.join(src, n), 'rb') as f:
            data = f.read()
        h.update(b'file\0' + n.encode('utf-8') + b'\0' + str(len(data)).encode('ascii') + b'\0')
        h.update(data)
    h.update(b'kernel_release\0' + kernel_release.encode('utf-8'))
    return h.hexdigest()


def declared_params(src):
    """Parameter names the module's C sources declare (module_param*)."""
    names = set()
    for n in source_files(src):
        if n.endswith('.c'):
            with open(os.path.join(src, n)) as f:
                names.update(PARAM_DECL_RE.findall(f.read()))
    return sorted(names)


def dkms_conf_values(src):
    text = read_text(os.path.join(src, 'dkms.conf')) or ''

    def get(key, default=None):
        m = re.search(r'^%s="?([^"\n]*)"?\s*$' % re.escape(key), text, re.M)
        return m.group(1) if m else default

    return {'version': get('PACKAGE_VERSION'), 'name': get('PACKAGE_NAME'),
            'dest': get('DEST_MODULE_LOCATION[0]', DKMS_DEFAULT_DEST),
            'built_name': get('BUILT_MODULE_NAME[0]', MODULE_NAME), 'text': text}


def dkms_version(src, h):
    """The DKMS version of a build: dkms.conf's PACKAGE_VERSION + '+' + 12 hex digits of the source hash."""
    v = dkms_conf_values(src)
    if not v['version']:
        raise KmodError('%s has no PACKAGE_VERSION' % os.path.join(src, 'dkms.conf'))
    if v['name'] and v['name'] != MODULE_NAME:
        raise KmodError('%s: PACKAGE_NAME is %s, expected %s'
                        % (os.path.join(src, 'dkms.conf'), v['name'], MODULE_NAME))
    return '%s+%s' % (v['version'], h[:12])


def param_text(name, value):
    if isinstance(value, bool):
        s = 'Y' if value else 'N'
    elif isinstance(value, int):
        s = str(value)
    elif isinstance(value, str):
        s = value
    else:
        raise KmodError('parameter %s: give a string or an integer, not %s %r'
                        % (name, type(value).__name__, value))
    if re.search(r'[\s"\'\\#]', s):
        raise KmodError('parameter %s=%r: values may not contain whitespace, quotes, backslashes or #'
                        % (name, s))
    return s


def normalize_params(params, declared=None):
    """{name: value} -> {name: str}; names must be ones the module declares."""
    out = {}
    for k in sorted(params or {}):
        if not PARAM_NAME_RE.match(str(k)):
            raise KmodError('invalid parameter name %r' % (k,))
        if declared is not None and k not in declared:
            raise KmodError('unknown parameter %r: erb_io declares %s' % (k, ', '.join(declared)))
        out[k] = param_text(k, params[k])
    return out


_TRUE = ('y', 'yes', 'true', 'on', '1')
_FALSE = ('n', 'no', 'false', 'off', '0')


def _as_int(s):
    for base in (0, 10):
        try:
            return int(s, base)
        except ValueError:
            pass
    return None


def param_equal(want, have):
    """Compare a requested value with what sysfs shows: as strings, as integers, or as booleans."""
    if have is None:
        return False
    w, h = str(want).strip(), str(have).strip()
    if w == h:
        return True
    wi, hi = _as_int(w), _as_int(h)
    if wi is not None and hi is not None:
        return wi == hi
    wl, hl = w.lower(), h.lower()
    if wl in _TRUE + _FALSE and hl in _TRUE + _FALSE:
        return (wl in _TRUE) == (hl in _TRUE)
    return False


def params_differ(want, have):
    """Names of requested parameters whose loaded value differs (or is not shown)."""
    return [k for k in sorted(want) if not param_equal(want[k], have.get(k))]


def modprobe_conf_content(params):
    """The managed /etc/modprobe.d/erb_io.conf; None when there are no parameters."""
    if not params:
        return None
    return ('# Managed by erb.booster.kmod: the parameters of erb_io, used by every modprobe (also at boot).\n'
            '# Set them with the module\'s params option; changes here are overwritten.\n'
            'options %s %s\n' % (MODULE_NAME, ' '.join('%s=%s' % (k, params[k]) for k in sorted(params))))


def parse_modprobe_conf(text):
    params = {}
    for line in (text or '').splitlines():
        parts = line.split('#', 1)[0].split()
        if len(parts) >= 2 and parts[0] == 'options' and parts[1] == MODULE_NAME:
            for item in parts[2:]:
                k, _sep, v = item.partition('=')
                params[k] = v
    return params


# --------------------------------------------------------------------------
# configuration and preflight
# --------------------------------------------------------------------------

class KmodConfig(object):
    """The options of erb.booster.kmod (plus root and the binary search path)."""

    def __init__(self, src=None, kernel_release=None, params=None, method='auto', vmlinux_btf=None,
                 resolve_btfids=None, work_dir=DEFAULT_WORK_DIR, sign_key=None, sign_cert=None,
                 root='/', running_release=None, path=None, redis_password_file=None):
        self.root = root or '/'
        self.running_release = running_release or os.uname()[2]
        self.kernel_release = kernel_release or self.running_release
        if not KREL_RE.match(self.kernel_release):
            raise KmodError('invalid kernel_release %r' % self.kernel_release)
        if method not in METHODS:
            raise KmodError('method must be one of %s' % ', '.join(METHODS))
        if bool(sign_key) != bool(sign_cert):
            raise KmodError('give both sign_key and sign_cert (or neither)')
        self.src = src
        self.params = params or {}
        self.method = method
        self.vmlinux_btf = vmlinux_btf
        self.resolve_btfids = resolve_btfids
        self.work_dir = work_dir or DEFAULT_WORK_DIR
        self.sign_key = sign_key
        self.sign_cert = sign_cert
        self.redis_password_file = redis_password_file
        self.path = list(path) if path is not None else default_path()

    @property
    def running(self):
        return self.kernel_release == self.running_release

    def p(self, path):
        return rpath(self.root, path)

    @property
    def moddir(self):
        return self.p('/lib/modules/%s' % self.kernel_release)

    @property
    def krel_work(self):
        return os.path.join(self.work_dir, self.kernel_release)

    def which(self, name):
        return which(name, self.path)


def read_kconfig(kdir):
    conf = {}
    text = read_text(os.path.join(kdir, '.config')) or ''
    for line in text.splitlines():
        m = re.match(r'^(CONFIG_\w+)=(.*)$', line)
        if m:
            conf[m.group(1)] = m.group(2).strip('"')
    return conf


def kernel_compiler(kconfig):
    """The compiler the kernel was built with (what Kbuild will call), e.g. gcc-12."""
    text = kconfig.get('CONFIG_CC_VERSION_TEXT', '')
    tok = text.split()[0] if text.split() else ''
    if re.match(r'^([\w.+]+-)*(gcc|clang)(-[\d.]+)?$', tok):
        return tok
    return 'clang' if kconfig.get('CONFIG_CC_IS_CLANG') == 'y' else 'gcc'


def no_modules_message(krel, why='CONFIG_MODULES is off'):
    return ('this kernel (%s) has no loadable module support (%s): erb_io cannot be loaded here; %s'
            % (krel, why, RING_BUFFER_HINT))


def check_module_support(cfg):
    krel = cfg.kernel_release
    if cfg.running:
        if not os.path.exists(cfg.p('/proc/modules')):
            raise KmodError(no_modules_message(krel))
        if (read_text(cfg.p(MODULES_DISABLED)) or '').strip() == '1':
            raise KmodError('this kernel (%s) has module loading disabled (%s is 1, which only a reboot '
                            'undoes): erb_io cannot be loaded here; %s'
                            % (krel, MODULES_DISABLED, RING_BUFFER_HINT))
        return
    kdir = cfg.p('/lib/modules/%s/build' % krel)
    kconfig = read_kconfig(kdir) if os.path.isdir(kdir) else {}
    if kconfig and kconfig.get('CONFIG_MODULES') != 'y':
        raise KmodError(no_modules_message(krel, 'CONFIG_MODULES is off in its .config'))


def signature_requirement(cfg):
    """Why unsigned modules would be refused (str), or None."""
    reasons = []
    if cfg.running:
        lock = read_text(cfg.p(LOCKDOWN))
        m = re.search(r'\[(\w+)\]', lock or '')
        if m and m.group(1) in ('integrity', 'confidentiality'):
            reasons.append('kernel lockdown is in %s mode (%s)' % (m.group(1), LOCKDOWN))
    sb = read_head(cfg.p(SECURE_BOOT_VAR), 5)
    if sb is not None and len(sb) >= 5 and bytearray(sb)[4] == 1:
        reasons.append('Secure Boot is enabled (EFI variable SecureBoot)')
    if cfg.running:
        if (read_text(cfg.p(SIG_ENFORCE)) or '').strip() == 'Y':
            reasons.append('module signatures are enforced (%s is Y)' % SIG_ENFORCE)
    else:
        kdir = cfg.p('/lib/modules/%s/build' % cfg.kernel_release)
        if os.path.isdir(kdir) and read_kconfig(kdir).get('CONFIG_MODULE_SIG_FORCE') == 'y':
            reasons.append('kernel %s enforces module signatures (CONFIG_MODULE_SIG_FORCE=y)'
                           % cfg.kernel_release)
    return '; '.join(reasons) or None


def check_signature_policy(cfg):
    why = signature_requirement(cfg)
    if why and not (cfg.sign_key and cfg.sign_cert):
        raise KmodError('%s: the kernel (%s) refuses unsigned modules; %s'
                        % (why, cfg.kernel_release, SIGN_HINT))
    return why


def check_headers(cfg):
    krel = cfg.kernel_release
    build = cfg.p('/lib/modules/%s/build' % krel)
    if not os.path.isdir(build):
        raise KmodError('kernel headers for %s are not installed (%s is missing): apt-get install '
                        'linux-headers-%s' % (krel, build, krel))
    kdir = os.path.realpath(build)
    for f in ('Makefile', '.config'):
        if not os.path.isfile(os.path.join(kdir, f)):
            raise KmodError('kernel headers for %s at %s are incomplete (no %s): reinstall '
                            'linux-headers-%s' % (krel, kdir, f, krel))
    return kdir


def default_vmlinux_btf(cfg, kdir):
    if cfg.vmlinux_btf:
        return cfg.vmlinux_btf
    if cfg.running:
        p = cfg.p('/sys/kernel/btf/vmlinux')
        if not os.path.exists(p):
            raise KmodError('the running kernel %s has no BTF (%s is missing: CONFIG_DEBUG_INFO_BTF is off): '
                            'erb_io\'s kfuncs cannot be described; %s' % (cfg.kernel_release, p, RING_BUFFER_HINT))
        return p
    p = os.path.join(kdir, 'vmlinux')
    if os.path.isfile(p) and read_head(p, 4) == b'\x7fELF':
        return p
    raise KmodError('kernel_release %s is not the running kernel (%s): pass vmlinux_btf, the BTF of %s '
                    '(a vmlinux with its .BTF section, e.g. linux-source\'s scripts/extract-vmlinux '
                    '/boot/vmlinuz-%s > vmlinux, or a copy of /sys/kernel/btf/vmlinux from a host running it)'
                    % (cfg.kernel_release, cfg.running_release, cfg.kernel_release, cfg.kernel_release))


def resolve_btfids_candidates(cfg, kdir):
    cands = [os.path.join(kdir, 'tools', 'bpf', 'resolve_btfids', 'resolve_btfids')]
    mm = major_minor(cfg.kernel_release)
    dirs = sorted(glob.glob(cfg.p('/usr/lib/linux-kbuild-*')),
                  key=lambda d: (not d.endswith('-%s' % mm), d))
    cands += [os.path.join(d, 'tools', 'bpf', 'resolve_btfids', 'resolve_btfids') for d in dirs]
    return cands


def find_resolve_btfids(cfg, kdir):
    if cfg.resolve_btfids:
        if not is_executable(cfg.resolve_btfids):
            raise KmodError('resolve_btfids=%s is not an executable file' % cfg.resolve_btfids)
        return cfg.resolve_btfids
    cands = resolve_btfids_candidates(cfg, kdir)
    for c in cands:
        if is_executable(c):
            return c
    found = cfg.which('resolve_btfids')
    if found:
        return found
    mm = major_minor(cfg.kernel_release) or 'X.Y'
    raise KmodError('resolve_btfids not found (looked in %s and PATH); Kbuild needs it to resolve the kfunc '
                    'BTF IDs of erb_io and distribution headers (Debian\'s included) do not ship it. Build it '
                    'from linux-source: apt-get install linux-source-%s; tar xf /usr/src/linux-source-%s.tar.xz; '
                    'make -C linux-source-%s/tools/bpf/resolve_btfids, then pass '
                    'resolve_btfids=PATH/tools/bpf/resolve_btfids/resolve_btfids'
                    % (', '.join(cands), mm, mm, mm))


def check_build_prereqs(cfg, kdir):
    krel = cfg.kernel_release
    kconfig = read_kconfig(kdir)
    pre = {'kdir': kdir, 'kconfig': kconfig}
    if kconfig.get('CONFIG_DEBUG_INFO_BTF_MODULES') != 'y':
        raise KmodError('kernel %s was built without CONFIG_DEBUG_INFO_BTF_MODULES: its modules get no BTF, so '
                        'BPF programs cannot call erb_io\'s kfuncs; %s' % (krel, RING_BUFFER_HINT))
    pre['vmlinux_btf'] = default_vmlinux_btf(cfg, kdir)
    if not os.path.exists(pre['vmlinux_btf']):
        raise KmodError('vmlinux_btf %s does not exist' % pre['vmlinux_btf'])
    if not os.access(pre['vmlinux_btf'], os.R_OK):
        raise KmodError('vmlinux_btf %s is not readable' % pre['vmlinux_btf'])
    pre['btf_format'] = btf_file_kind(pre['vmlinux_btf'])
    pre['pahole'] = cfg.which('pahole')
    if not pre['pahole']:
        raise KmodError('pahole is not installed: apt-get install dwarves (Kbuild runs pahole to give erb_io.ko '
                        'its .BTF section)')
    pre['resolve_btfids'] = find_resolve_btfids(cfg, kdir)
    pre['make'] = cfg.which('make')
    if not pre['make']:
        raise KmodError('make is not installed: apt-get install make')
    cc = kernel_compiler(kconfig)
    pre['cc'] = cfg.which(cc)
    if not pre['cc']:
        raise KmodError('the compiler kernel %s was built with (%s) is not installed: apt-get install %s'
                        % (krel, cc, re.sub(r'^.*?-?((gcc|clang)(-[\d.]+)?)$', r'\1', cc)))
    for tool in ('depmod',) + (('modprobe', 'rmmod') if cfg.running else ()):
        pre[tool] = cfg.which(tool)
        if not pre[tool]:
            raise KmodError('%s is not installed: apt-get install kmod' % tool)
    pre['dkms'] = cfg.which('dkms')
    if cfg.method == 'dkms' and not pre['dkms']:
        raise KmodError('method=dkms but dkms is not installed: apt-get install dkms (or use method=kbuild)')
    pre['sign_file'] = None
    if cfg.sign_key:
        for what, p in (('sign_key', cfg.sign_key), ('sign_cert', cfg.sign_cert)):
            if not os.path.isfile(p) or not os.access(p, os.R_OK):
                raise KmodError('%s %s is not a readable file' % (what, p))
        sf = os.path.realpath(os.path.join(kdir, 'scripts', 'sign-file'))
        if not is_executable(sf):
            raise KmodError('%s is missing: cannot sign erb_io.ko for %s (reinstall linux-headers-%s)'
                            % (sf, krel, krel))
        pre['sign_file'] = sf
        pre['sign_hash'] = kconfig.get('CONFIG_MODULE_SIG_HASH') or 'sha256'
    return pre


def preflight(cfg):
    """All checks, in order; returns the resolved prerequisites (paths of tools, kdir, ...)."""
    check_module_support(cfg)
    why = check_signature_policy(cfg)
    kdir = check_headers(cfg)
    pre = check_build_prereqs(cfg, kdir)
    pre['signature_required'] = why
    return pre


# --------------------------------------------------------------------------
# private kbuild tree
# --------------------------------------------------------------------------

def _link_entries(real_dir, dest, skip):
    for name in sorted(os.listdir(real_dir)):
        if name in skip:
            continue
        os.symlink(os.path.realpath(os.path.join(real_dir, name)), os.path.join(dest, name))


def prepare_kbuild_tree(kdir, dest, vmlinux_btf, resolve_btfids):
    """(Re)create dest as a private kernel build dir: symlinks to every top-level entry of kdir
    (resolved: Debian's scripts/ and tools/ are relative links into /usr/lib/linux-kbuild-*),
    a real vmlinux (a copy of vmlinux_btf) and a real tools/ whose bpf/resolve_btfids/resolve_btfids is
    a copy of resolve_btfids (other tools entries are symlinks). Returns dest."""
    kdir = os.path.realpath(kdir)
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        os.makedirs(parent, 0o755)
    tmp = tempfile.mkdtemp(prefix='.kbuild-', dir=parent)
    try:
        os.chmod(tmp, 0o755)
        _link_entries(kdir, tmp, ('vmlinux', 'tools'))
        copy_stream(vmlinux_btf, os.path.join(tmp, 'vmlinux'))
        os.chmod(os.path.join(tmp, 'vmlinux'), 0o644)
        tools = os.path.join(tmp, 'tools')
        os.mkdir(tools)
        real_tools = os.path.realpath(os.path.join(kdir, 'tools'))
        if os.path.isdir(real_tools):
            _link_entries(real_tools, tools, ('bpf',))
        bpf = os.path.join(tools, 'bpf')
        os.mkdir(bpf)
        if os.path.isdir(os.path.join(real_tools, 'bpf')):
            _link_entries(os.path.join(real_tools, 'bpf'), bpf, ('resolve_btfids',))
        os.mkdir(os.path.join(bpf, 'resolve_btfids'))
        rb = os.path.join(bpf, 'resolve_btfids', 'resolve_btfids')
        copy_stream(resolve_btfids, rb)
        os.chmod(rb, 0o755)
        with open(os.path.join(tmp, '.erb-kbuild.json'), 'w') as f:
            json.dump({'kdir': kdir, 'vmlinux_btf': vmlinux_btf, 'resolve_btfids': resolve_btfids}, f,
                      indent=1, sort_keys=True)
        old = None
        if os.path.lexists(dest):
            old = dest + '.old-%d' % os.getpid()
            os.rename(dest, old)
        os.rename(tmp, dest)
        if old:
            remove_path(old)
    except BaseException:
        shutil.rmtree(tmp, True)
        raise
    return dest


# --------------------------------------------------------------------------
# installed state
# --------------------------------------------------------------------------

def read_stamp(path):
    text = read_text(path)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def find_installs(cfg, h=None):
    """erb_io.ko files under /lib/modules/<krel>/{updates,extra} that are ours (a stamp next to them,
    or our kbuild location), plus stamps whose .ko is gone. Each: path, stamp, data, method, current,
    exists."""
    found = set()
    for top in ('updates', 'extra'):
        base = os.path.join(cfg.moddir, top)
        found.update(glob.glob(os.path.join(base, '**', MODULE_NAME + '.ko'), recursive=True))
        found.update(p[:-len(STAMP_SUFFIX)] for p in
                     glob.glob(os.path.join(base, '**', MODULE_NAME + '.ko' + STAMP_SUFFIX), recursive=True))
    kbuild_ko = cfg.moddir + KBUILD_DEST + '/' + MODULE_NAME + '.ko'
    out, foreign = [], []
    for ko in sorted(found):
        stamp = ko + STAMP_SUFFIX
        data = read_stamp(stamp)
        if data is None and ko != kbuild_ko:
            foreign.append(ko)
            continue
        data = data or {}
        exists = os.path.isfile(ko)
        current = bool(exists and h and data.get('source_hash') == h and data.get('ko_sha256')
                       and sha256_file(ko) == data.get('ko_sha256'))
        out.append({'path': ko, 'stamp': stamp, 'data': data, 'exists': exists, 'current': current,
                    'method': data.get('method') or ('kbuild' if ko == kbuild_ko else 'unknown')})
    return out, foreign


def dkms_versions(cfg):
    """{version: [kernel releases it has builds for]} in the DKMS tree."""
    base = os.path.join(cfg.p('/var/lib/dkms'), MODULE_NAME)
    out = {}
    if not os.path.isdir(base):
        return out
    for v in sorted(os.listdir(base)):
        d = os.path.join(base, v)
        if v.startswith('kernel-') or os.path.islink(d) or not os.path.isdir(d):
            continue
        out[v] = sorted(k for k in os.listdir(d) if k not in ('source', 'build', 'tarball')
                        and os.path.isdir(os.path.join(d, k)))
    return out


def read_loaded(cfg):
    """The loaded erb_io as sysfs shows it, or None."""
    d = cfg.p('/sys/module/%s' % MODULE_NAME)
    if not os.path.isdir(d):
        return None
    info = {'srcversion': (read_text(os.path.join(d, 'srcversion')) or '').strip() or None,
            'initstate': (read_text(os.path.join(d, 'initstate')) or '').strip() or None,
            'params': {}, 'writable': []}
    rc = (read_text(os.path.join(d, 'refcnt')) or '').strip()
    info['refcnt'] = int(rc) if rc.isdigit() else None
    hd = os.path.join(d, 'holders')
    info['holders'] = sorted(os.listdir(hd)) if os.path.isdir(hd) else []
    pd = os.path.join(d, 'parameters')
    if os.path.isdir(pd):
        for n in sorted(os.listdir(pd)):
            p = os.path.join(pd, n)
            try:
                mode = os.stat(p).st_mode
                with open(p) as f:
                    info['params'][n] = f.read().strip()
            except (IOError, OSError):
                continue
            if mode & stat.S_IWUSR:
                info['writable'].append(n)
    return info


def check_password_file(cfg):
    """Refuse a password file erb_io would refuse: not a regular file owned by root, or readable by others."""
    path = cfg.redis_password_file
    try:
        st = os.stat(cfg.p(path))
    except OSError as e:
        raise KmodError('redis_password_file %s: %s' % (path, e.strerror or e))
    if not stat.S_ISREG(st.st_mode):
        raise KmodError('redis_password_file %s is not a regular file' % path)
    if st.st_uid != 0 or st.st_mode & 0o077:
        raise KmodError('redis_password_file %s is owned by uid %d with mode %04o: erb_io refuses it; make it '
                        'owned by root with mode 0600' % (path, st.st_uid, stat.S_IMODE(st.st_mode)))


def read_stats(cfg):
    """erb_io's counters (/sys/module/erb_io/stats/*: integers, and last_error as text), {} when not loaded."""
    d = cfg.p('/sys/module/%s/stats' % MODULE_NAME)
    out = {}
    if not os.path.isdir(d):
        return out
    for n in sorted(os.listdir(d)):
        v = (read_text(os.path.join(d, n)) or '').strip()
        out[n] = int(v) if re.match(r'^-?[0-9]+$', v) else v
    return out


def in_use_message(loaded):
    msg = 'erb_io is in use (refcnt %s): %s' % (loaded.get('refcnt'), IN_USE_HINT)
    if loaded.get('holders'):
        msg += '; modules holding it: %s' % ', '.join(loaded['holders'])
    return msg


def is_in_use(loaded):
    return bool(loaded and ((loaded.get('refcnt') or 0) > 0 or loaded.get('holders')))


def settled(cfg, loaded):
    """loaded, re-read for up to IN_USE_WAIT_S while only references (no
    holder modules) keep erb_io in use: BPF programs detached just before
    drop theirs after an RCU grace period."""
    deadline = time.time() + IN_USE_WAIT_S
    while is_in_use(loaded) and not loaded.get('holders') and time.time() < deadline:
        time.sleep(0.2)
        loaded = read_loaded(cfg) or loaded
    return loaded


# --------------------------------------------------------------------------
# the run: plan and apply
# --------------------------------------------------------------------------

class KmodRun(object):
    """One invocation of erb.booster.kmod. ``result`` holds what is known so far (also after a failure)."""

    def __init__(self, cfg, runner=None):
        self.cfg = cfg
        self.runner = runner or subprocess_runner
        self.steps = []
        self.changed = False
        self.result = {'changed': False, 'kernel_release': cfg.kernel_release,
                       'running_release': cfg.running_release, 'steps': self.steps, 'build_s': 0.0,
                       'built': False, 'loaded': False, 'btf': None, 'installed_path': None,
                       'method': None, 'source_hash': None, 'params': {}, 'signed': False, 'stats': {},
                       'warnings': []}
        self.pre = None

    # ---- helpers

    def step(self, text, changed=True):
        self.steps.append(text)
        if changed:
            self.changed = True
            self.result['changed'] = True

    def run(self, args, what, env=None, cwd=None, ok=(0,)):
        rc, out, err = self.runner([str(a) for a in args], env=env, cwd=cwd)
        if rc not in ok:
            raise KmodError('%s failed (%s exited %d):\n%s' % (what, os.path.basename(str(args[0])), rc,
                                                               tail((out or '') + '\n' + (err or ''))))
        return rc, out or '', err or ''

    def dkms_tree_args(self):
        c = self.cfg
        return ['--sourcetree', c.p('/usr/src'), '--dkmstree', c.p('/var/lib/dkms'),
                '--installtree', c.p('/lib/modules')]

    def dkms_env(self):
        c = self.cfg
        env = {}
        if c.sign_key:
            env.update(mok_signing_key=c.sign_key, mok_certificate=c.sign_cert)
            if self.pre and self.pre.get('sign_file'):
                env['sign_file'] = self.pre['sign_file']
        elif c.root != '/':
            # dkms makes its own key when there is none; keep it inside the fake root
            env.update(mok_signing_key=c.p('/var/lib/dkms/mok.key'), mok_certificate=c.p('/var/lib/dkms/mok.pub'))
        return env

    def depmod(self):
        args = [self.pre_tool('depmod')]
        if self.cfg.root != '/':
            args += ['-b', self.cfg.root]
        args += ['-a', self.cfg.kernel_release]
        self.run(args, 'depmod for %s' % self.cfg.kernel_release)
        self.step('depmod -a %s' % self.cfg.kernel_release)

    def pre_tool(self, name):
        if self.pre and self.pre.get(name):
            return self.pre[name]
        found = self.cfg.which(name)
        if not found:
            raise KmodError('%s is not installed: apt-get install %s' % (name, 'dkms' if name == 'dkms' else 'kmod'))
        return found

    def lock(self):
        d = self.cfg.work_dir
        if not os.path.isdir(d):
            os.makedirs(d, 0o755)
        self._lockf = open(os.path.join(d, '.lock'), 'w')
        fcntl.flock(self._lockf, fcntl.LOCK_EX)

    # ---- present

    def plan_present(self):
        c = self.cfg
        self.pre = pre = preflight(c)
        h = source_hash(c.src, c.kernel_release)
        self.result['source_hash'] = h
        declared = declared_params(c.src)
        params = dict(c.params)
        if c.redis_password_file:
            check_password_file(c)
            have = params.setdefault('redis_password_file', c.redis_password_file)
            if have != c.redis_password_file:
                raise KmodError('redis_password_file %s differs from params.redis_password_file %s'
                                % (c.redis_password_file, have))
        want = normalize_params(params, declared)
        self.result['params'] = want
        installs, foreign = find_installs(c, h)
        for f in foreign:
            self.result['warnings'].append('%s is an erb_io.ko not installed by erb.booster.kmod; modprobe may '
                                           'load it instead of ours: remove it' % f)
        method = c.method
        if method == 'auto':
            cur = [i for i in installs if i['current'] and (i['method'] == 'kbuild' or pre['dkms'])]
            method = cur[0]['method'] if cur else ('dkms' if pre['dkms'] else 'kbuild')
        self.result['method'] = method
        keep = None
        for i in installs:
            if i['current'] and i['method'] == method:
                keep = i
                break
        plan = {'hash': h, 'want': want, 'method': method, 'keep': keep, 'installs': installs,
                'build': keep is None}
        plan['dkms_version'] = dkms_version(c.src, h) if method == 'dkms' else None
        plan['remove'] = [i for i in installs if i is not keep]
        dv = dkms_versions(c)
        # other erb_io versions in the DKMS tree built for this release (the one being built is handled
        # by dkms_build_install, the one kept stays)
        plan['dkms_remove'] = [v for v, ks in sorted(dv.items()) if c.kernel_release in ks
                               and v != plan['dkms_version']
                               and not (keep and keep['data'].get('dkms_version') == v)]
        if plan['dkms_remove'] and not pre['dkms']:
            raise KmodError('the DKMS tree holds erb_io %s for %s but dkms is not installed: apt-get install dkms'
                            % (', '.join(plan['dkms_remove']), c.kernel_release))
        conf_path = c.p(MODPROBE_CONF)
        plan['conf_path'] = conf_path
        plan['conf_have'] = read_text(conf_path)
        plan['conf_want'] = modprobe_conf_content(want)
        plan['conf'] = plan['conf_have'] != plan['conf_want']
        plan['unload'] = plan['load'] = False
        plan['set_params'] = {}
        plan['reload_reasons'] = []
        loaded = read_loaded(c) if c.running else None
        plan['loaded'] = loaded
        if keep:
            self.result['installed_path'] = keep['path']
            info = ko_info(keep['path'])
            plan['installed_info'] = info
            self.result['btf'] = info['kfuncs_ok']
            self.result['signed'] = info['signed']
        if not c.running:
            self.result['load_skipped'] = ('kernel_release %s is not the running kernel (%s): erb_io is built '
                                           'and installed for it, not loaded' % (c.kernel_release, c.running_release))
        elif loaded is None:
            plan['load'] = True
        else:
            self.decide_reload(plan, keep is not None,
                               keep and plan['installed_info']['modinfo'].get('srcversion'))
        if plan['unload'] and is_in_use(loaded):
            loaded = settled(c, loaded)
            if is_in_use(loaded):
                raise KmodError(in_use_message(loaded))
        return plan

    def decide_reload(self, plan, installed, srcversion):
        """Set unload/load/set_params for a loaded erb_io. installed: our build for this source is installed
        (false when one is needed); srcversion: its srcversion (None if it has none)."""
        loaded, want = plan['loaded'], plan['want']
        reasons = []
        if not installed:
            reasons.append('the installed build is missing or out of date')
        elif loaded['srcversion'] is None or srcversion is None:
            if plan.get('new_ko'):
                reasons.append('a new build was installed (the loaded erb_io shows no srcversion to compare)')
        elif loaded['srcversion'] != srcversion:
            reasons.append('the loaded erb_io (srcversion %s) is not the installed build (%s)'
                           % (loaded['srcversion'], srcversion))
        differ = params_differ(want, loaded['params'])
        fixed = [k for k in differ if k not in loaded['writable']]
        if fixed:
            reasons.append('parameters %s differ and can only be set at load time' % ', '.join(
                '%s (loaded %s, wanted %s)' % (k, loaded['params'].get(k), want[k]) for k in fixed))
        dropped = sorted(k for k in parse_modprobe_conf(plan['conf_have']) if k not in want)
        if dropped:
            reasons.append('parameters %s are no longer requested (back to their defaults)' % ', '.join(dropped))
        plan['reload_reasons'] = reasons
        plan['unload'] = plan['load'] = bool(reasons)
        plan['set_params'] = {} if reasons else dict((k, want[k]) for k in differ)

    def present(self, check_mode=False):
        plan = self.plan_present()
        c, r = self.cfg, self.result
        if check_mode:
            remove = [i['path'] for i in plan['remove']]
            remove += ['dkms %s/%s' % (MODULE_NAME, v) for v in plan['dkms_remove']]
            r.update(would_build=plan['build'], would_install=plan['build'], would_remove=remove,
                     would_write_conf=plan['conf'], would_unload=plan['unload'], would_load=plan['load'],
                     would_set_params=plan['set_params'], reload_reasons=plan['reload_reasons'])
            r['changed'] = bool(plan['build'] or plan['remove'] or plan['dkms_remove'] or plan['conf']
                                or plan['unload'] or plan['load'] or plan['set_params'])
            r['loaded'] = plan['loaded'] is not None
            r['stats'] = read_stats(c) if c.running else {}
            r['diff'] = self.diff(plan)
            r['msg'] = self.summary(plan, check_mode=True)
            return r
        if (plan['build'] or plan['remove'] or plan['dkms_remove'] or plan['conf'] or plan['unload']
                or plan['load'] or plan['set_params']):
            self.lock()
        if plan['build']:
            self.build_and_install(plan)
        else:
            self.step('erb_io for %s is up to date (source %s, %s)'
                      % (c.kernel_release, plan['hash'][:12], plan['keep']['path']), changed=False)
        self.remove_stale(plan)
        if plan['conf']:
            if plan['conf_want'] is None:
                remove_path(plan['conf_path'])
                self.step('removed %s (no parameters)' % plan['conf_path'])
            else:
                atomic_write(plan['conf_path'], plan['conf_want'])
                self.step('wrote %s' % plan['conf_path'])
        if c.running:
            self.apply_load(plan)
        r['loaded'] = read_loaded(c) is not None if c.running else False
        r['stats'] = read_stats(c) if c.running else {}
        r['diff'] = self.diff(plan)
        r['msg'] = self.summary(plan)
        return r

    def build_and_install(self, plan):
        c, r = self.cfg, self.result
        t0 = time.time()
        kbuild = prepare_kbuild_tree(self.pre['kdir'], os.path.join(c.krel_work, 'kbuild'),
                                     self.pre['vmlinux_btf'], self.pre['resolve_btfids'])
        self.step('prepared the private kbuild tree %s (vmlinux from %s, resolve_btfids from %s)'
                  % (kbuild, self.pre['vmlinux_btf'], self.pre['resolve_btfids']))
        if plan['method'] == 'dkms':
            info, ko = self.dkms_build_install(plan, kbuild)
        else:
            info, ko = self.kbuild_build_install(plan, kbuild)
        r['build_s'] = round(time.time() - t0, 2)
        r['built'] = True
        r['installed_path'] = ko
        r['btf'] = info['kfuncs_ok']
        r['signed'] = info['signed']
        plan['installed_info'] = ko_info(ko)
        data = {'format': STAMP_FORMAT, 'source_hash': plan['hash'], 'kernel_release': c.kernel_release,
                'method': plan['method'], 'dkms_version': plan['dkms_version'], 'ko_sha256': sha256_file(ko),
                'srcversion': info['modinfo'].get('srcversion'), 'signed': info['signed'],
                'installed_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
        atomic_write(ko + STAMP_SUFFIX, json.dumps(data, indent=1, sort_keys=True) + '\n')
        self.step('wrote the stamp %s' % (ko + STAMP_SUFFIX))
        plan['new_ko'] = ko

    def check_built(self, ko, output):
        c = self.cfg
        if not os.path.isfile(ko):
            raise KmodError('the build of erb_io for %s produced no %s:\n%s' % (c.kernel_release, ko, tail(output)))
        info = ko_info(ko)
        if not info['btf']:
            raise KmodError('erb_io.ko built for %s has no .BTF section, so BPF programs could not call its '
                            'kfuncs (Kbuild needs vmlinux and tools/bpf/resolve_btfids/resolve_btfids in the '
                            'kernel build dir, and pahole). Build output:\n%s' % (c.kernel_release, tail(output)))
        if not info['kfuncs_ok']:
            raise KmodError('erb_io.ko built for %s has a .BTF section but its kfunc BTF IDs are not resolved '
                            '(%s): resolve_btfids did not run or failed. Build output:\n%s'
                            % (c.kernel_release, ', '.join(info['unresolved']) or 'no BTF ID slots',
                               tail(output)))
        vermagic = (info['modinfo'].get('vermagic') or '').split()
        if not vermagic or vermagic[0] != c.kernel_release:
            raise KmodError('erb_io.ko has vermagic %r, not %s: the headers at %s belong to another kernel'
                            % (' '.join(vermagic), c.kernel_release, self.pre['kdir']))
        return info

    def sign(self, ko):
        pre = self.pre
        self.run([pre['sign_file'], pre['sign_hash'], self.cfg.sign_key, self.cfg.sign_cert, ko],
                 'signing %s' % ko)
        self.step('signed %s with %s (%s)' % (ko, self.cfg.sign_cert, pre['sign_hash']))

    def kbuild_build_install(self, plan, kbuild):
        c = self.cfg
        bdir = os.path.join(c.krel_work, 'src-%s' % plan['hash'][:16])
        remove_path(bdir)
        os.makedirs(bdir, 0o755)
        for n in source_files(c.src):
            shutil.copyfile(os.path.join(c.src, n), os.path.join(bdir, n))
        rc, out, err = self.runner([self.pre['make'], '-C', kbuild, 'M=' + bdir, 'modules'])
        output = (out or '') + '\n' + (err or '')
        if rc != 0:
            raise KmodError('building erb_io for %s failed (make exited %d):\n%s'
                            % (c.kernel_release, rc, tail(output)))
        ko = os.path.join(bdir, MODULE_NAME + '.ko')
        info = self.check_built(ko, output)
        self.step('built %s (make -C %s M=%s modules): .BTF present, %d kfunc BTF IDs resolved'
                  % (ko, kbuild, bdir, info['btf_ids']))
        if c.sign_key:
            self.sign(ko)
            info = ko_info(ko)
        dest = c.moddir + KBUILD_DEST + '/' + MODULE_NAME + '.ko'
        atomic_copy(ko, dest)
        self.step('installed %s' % dest)
        for old in glob.glob(os.path.join(c.krel_work, 'src-*')):
            if old != bdir:
                remove_path(old)
        return info, dest

    def dkms_build_install(self, plan, kbuild):
        c = self.cfg
        dkms = self.pre_tool('dkms')
        ver = plan['dkms_version']
        tree = self.dkms_tree_args()
        env = self.dkms_env()
        vdir = os.path.join(c.p('/var/lib/dkms'), MODULE_NAME, ver)
        if os.path.lexists(vdir):
            self.run([dkms, 'remove', '-m', MODULE_NAME, '-v', ver, '--all', '--no-depmod'] + tree,
                     'dkms remove of the stale %s/%s' % (MODULE_NAME, ver))
            self.step('dkms remove %s/%s --all (stale)' % (MODULE_NAME, ver))
        sdir = c.p('/usr/src/%s-%s' % (MODULE_NAME, ver))
        remove_path(sdir)
        os.makedirs(sdir, 0o755)
        for n in source_files(c.src):
            shutil.copyfile(os.path.join(c.src, n), os.path.join(sdir, n))
        conf = dkms_conf_values(c.src)['text']
        conf = re.sub(r'^PACKAGE_VERSION=.*$', 'PACKAGE_VERSION="%s"' % ver, conf, flags=re.M)
        with open(os.path.join(sdir, 'dkms.conf'), 'w') as f:
            f.write(conf)
        with open(os.path.join(sdir, SOURCE_MARKER), 'w') as f:
            f.write('source %s of erb_io, added by erb.booster.kmod\n' % plan['hash'])
        self.step('copied the sources to %s' % sdir)
        if not os.path.isdir(c.p('/var/lib/dkms')):
            os.makedirs(c.p('/var/lib/dkms'), 0o755)
        try:
            self.run([dkms, 'add', '-m', MODULE_NAME, '-v', ver] + tree, 'dkms add %s/%s' % (MODULE_NAME, ver))
        except KmodError:
            self.dkms_forget(dkms, ver, tree, sdir)
            raise
        self.step('dkms add %s/%s' % (MODULE_NAME, ver))
        rc, out, err = self.runner([dkms, 'build', '-m', MODULE_NAME, '-v', ver, '-k', c.kernel_release,
                                    '--kernelsourcedir', kbuild] + tree, env=env)
        output = (out or '') + '\n' + (err or '')
        built = sorted(glob.glob(os.path.join(vdir, c.kernel_release, '*', 'module', MODULE_NAME + '.ko')))
        if rc != 0 or not built:
            log = read_text(os.path.join(vdir, 'build', 'make.log')) or ''
            self.dkms_forget(dkms, ver, tree, sdir)
            raise KmodError('dkms build of %s/%s for %s failed (exit %d):\n%s' % (
                MODULE_NAME, ver, c.kernel_release, rc, tail(output + '\n' + log)))
        try:
            info = self.check_built(built[0], output)
        except KmodError:
            self.dkms_forget(dkms, ver, tree, sdir)
            raise
        self.step('dkms build %s/%s -k %s --kernelsourcedir %s: .BTF present, %d kfunc BTF IDs resolved%s'
                  % (MODULE_NAME, ver, c.kernel_release, kbuild, info['btf_ids'],
                     ', signed' if info['signed'] else ''))
        for v in plan['dkms_remove']:
            self.dkms_remove(dkms, v, tree)
        plan['dkms_remove'] = []
        dest = c.moddir + dkms_conf_values(c.src)['dest'].rstrip('/') + '/' + MODULE_NAME + '.ko'
        # dkms will not install over another erb_io.ko of the same MODULE_VERSION (our kbuild install)
        self.remove_installs(plan, keep_path=dest)
        rc, out, err = self.run([dkms, 'install', '-m', MODULE_NAME, '-v', ver, '-k', c.kernel_release,
                                 '--kernelsourcedir', kbuild, '--no-depmod'] + tree,
                                'dkms install %s/%s' % (MODULE_NAME, ver), env=env)
        if not os.path.isfile(dest):
            raise KmodError('dkms install %s/%s did not install %s:\n%s' % (MODULE_NAME, ver, dest,
                                                                            tail(out + '\n' + err)))
        self.step('dkms install %s/%s -k %s: %s' % (MODULE_NAME, ver, c.kernel_release, dest))
        return ko_info(dest), dest

    def dkms_forget(self, dkms, ver, tree, sdir):
        self.runner([dkms, 'remove', '-m', MODULE_NAME, '-v', ver, '--all', '--no-depmod'] + tree)
        remove_path(sdir)

    def dkms_remove(self, dkms, v, tree):
        c = self.cfg
        self.run([dkms, 'remove', '-m', MODULE_NAME, '-v', v, '-k', c.kernel_release, '--no-depmod'] + tree,
                 'dkms remove %s/%s -k %s' % (MODULE_NAME, v, c.kernel_release))
        self.step('dkms remove %s/%s -k %s' % (MODULE_NAME, v, c.kernel_release))
        self.clean_dkms_sources()

    def clean_dkms_sources(self):
        """Source dirs we added (marker file) whose version is gone from the DKMS tree."""
        c = self.cfg
        left = dkms_versions(c)
        for d in sorted(glob.glob(c.p('/usr/src/%s-*' % MODULE_NAME))):
            v = os.path.basename(d)[len(MODULE_NAME) + 1:]
            if v not in left and os.path.isfile(os.path.join(d, SOURCE_MARKER)):
                remove_path(d)
                self.step('removed %s' % d)

    def remove_stale(self, plan):
        """Our other installs for this release (other method or old source), then depmod once."""
        touched = bool(plan.get('new_ko'))
        if plan['dkms_remove']:
            dkms = self.pre_tool('dkms')
            for v in plan['dkms_remove']:
                self.dkms_remove(dkms, v, self.dkms_tree_args())
            touched = True
        touched = self.remove_installs(plan, plan.get('new_ko')) or touched
        if touched:
            self.depmod()

    def remove_installs(self, plan, keep_path=None):
        """Remove our installs listed in plan['remove'] (the .ko and its stamp), except keep_path."""
        c = self.cfg
        touched = False
        for i in plan['remove']:
            if i['path'] == keep_path:
                continue
            if remove_path(i['path']):
                self.step('removed %s' % i['path'])
                touched = True
            if remove_path(i['stamp']):
                self.step('removed %s' % i['stamp'], changed=False)
            d = os.path.dirname(i['path'])
            if d == c.moddir + KBUILD_DEST and os.path.isdir(d) and not os.listdir(d):
                os.rmdir(d)
        return touched

    def apply_load(self, plan):
        c = self.cfg
        loaded = read_loaded(c)
        if loaded is None:
            plan['unload'], plan['load'], plan['set_params'] = False, True, {}
        elif plan.get('new_ko'):
            # after a build: reload only if the new build (or the parameters) differ from what is loaded
            plan['loaded'] = loaded
            self.decide_reload(plan, True, plan['installed_info']['modinfo'].get('srcversion'))
        if plan['unload']:
            self.unload(loaded, 'reloading: %s' % '; '.join(plan['reload_reasons']))
            plan['load'] = True
        if plan['load']:
            self.load(plan)
        elif plan['set_params']:
            for k in sorted(plan['set_params']):
                p = c.p('/sys/module/%s/parameters/%s' % (MODULE_NAME, k))
                try:
                    with open(p, 'w') as f:
                        f.write(plan['set_params'][k])
                except (IOError, OSError) as e:
                    raise KmodError('setting %s=%s at run time (%s) failed: %s'
                                    % (k, plan['set_params'][k], p, e.strerror or e))
                self.step('set parameter %s=%s of the loaded erb_io (%s)' % (k, plan['set_params'][k], p))
        elif not plan['unload']:
            self.step('erb_io is loaded with the installed build and the requested parameters', changed=False)

    def unload(self, loaded, why):
        c = self.cfg
        loaded = settled(c, read_loaded(c) or loaded)
        if is_in_use(loaded):
            raise KmodError(in_use_message(loaded) + self.partial_note())
        if (read_text(c.p(MODULES_DISABLED)) or '').strip() == '1':
            raise KmodError('cannot unload erb_io: %s is 1, the kernel refuses to unload modules until the next '
                            'boot' % MODULES_DISABLED)
        drain = (loaded or {}).get('params', {}).get('drain_ms')
        t0 = time.time()
        rc, out, err = self.runner([self.pre_tool('rmmod'), MODULE_NAME])
        if rc != 0:
            now = read_loaded(c) or loaded or {}
            text = (out or '') + (err or '')
            if 'in use' in text or 'EBUSY' in text or 'busy' in text.lower() or is_in_use(now):
                raise KmodError(in_use_message(now) + self.partial_note())
            raise KmodError('rmmod erb_io failed (exit %d): %s' % (rc, tail(text)))
        self.result['unload_s'] = round(time.time() - t0, 2)
        self.step('rmmod erb_io (%s; queued records drained%s, %.1f s)'
                  % (why, ' within drain_ms=%s' % drain if drain else '', self.result['unload_s']))

    def partial_note(self):
        if self.changed:
            return ' (this run already changed: %s)' % '; '.join(self.steps)
        return ''

    def load(self, plan):
        c = self.cfg
        args = [self.pre_tool('modprobe')]
        if c.root != '/':
            args += ['-d', c.root]
        args += [MODULE_NAME] + ['%s=%s' % (k, plan['want'][k]) for k in sorted(plan['want'])]
        rc, out, err = self.runner(args)
        if rc != 0:
            raise KmodError('modprobe erb_io failed (exit %d): %s\nThe kernel log (dmesg) says why.%s'
                            % (rc, tail((out or '') + (err or '')), self.partial_note()))
        now = read_loaded(c)
        if now is None:
            raise KmodError('modprobe erb_io succeeded but %s does not exist' % c.p('/sys/module/erb_io'))
        self.step('modprobe %s' % ' '.join(args[args.index(MODULE_NAME):]))
        if not os.path.exists(c.p('/sys/kernel/btf/%s' % MODULE_NAME)):
            raise KmodError('erb_io is loaded but the kernel did not take its BTF (%s is missing), so BPF '
                            'programs cannot call its kfuncs: vmlinux_btf probably does not match the running '
                            'kernel; unload it with state=absent and check the kernel log'
                            % c.p('/sys/kernel/btf/%s' % MODULE_NAME))

    def diff(self, plan):
        loaded = plan['loaded']
        before = {'installed_source_hash': plan['keep']['data'].get('source_hash') if plan['keep'] else
                  next((i['data'].get('source_hash') for i in plan['installs'] if i['exists']), None),
                  'loaded': loaded is not None,
                  'loaded_params': dict((k, loaded['params'].get(k)) for k in plan['want']) if loaded else {},
                  'modprobe_conf': plan['conf_have'] or ''}
        after = {'installed_source_hash': plan['hash'], 'loaded': self.cfg.running,
                 'loaded_params': dict(plan['want']) if self.cfg.running else {},
                 'modprobe_conf': plan['conf_want'] or ''}
        return {'before': before, 'after': after}

    def summary(self, plan, check_mode=False):
        c = self.cfg
        parts = []
        would = 'would ' if check_mode else ''
        if plan['build']:
            parts.append('%sbuild and install erb_io for %s (%s)' % (would, c.kernel_release, plan['method']))
        if plan['unload']:
            parts.append('%sreload it (%s)' % (would, '; '.join(plan['reload_reasons'])))
        elif plan['load']:
            parts.append('%sload it' % would)
        elif plan['set_params']:
            parts.append('%sset %s at run time' % (would, ', '.join(sorted(plan['set_params']))))
        if not c.running:
            parts.append(self.result['load_skipped'])
        if not parts:
            return 'erb_io for %s is installed and loaded as requested' % c.kernel_release
        return '; '.join(parts)

    # ---- absent

    def absent(self, check_mode=False):
        c, r = self.cfg, self.result
        loaded = settled(c, read_loaded(c)) if c.running else None
        if loaded is not None and is_in_use(loaded):
            raise KmodError(in_use_message(loaded))
        if loaded is not None and (read_text(c.p(MODULES_DISABLED)) or '').strip() == '1':
            raise KmodError('cannot unload erb_io: %s is 1, the kernel refuses to unload modules until the next '
                            'boot' % MODULES_DISABLED)
        installs, foreign = find_installs(c)
        for f in foreign:
            r['warnings'].append('%s is an erb_io.ko not installed by erb.booster.kmod; left alone' % f)
        dv = dict((v, ks) for v, ks in dkms_versions(c).items() if c.kernel_release in ks)
        dkms = c.which('dkms')
        if dv and not dkms:
            raise KmodError('the DKMS tree holds erb_io %s for %s but dkms is not installed: apt-get install dkms'
                            % (', '.join(sorted(dv)), c.kernel_release))
        conf = c.p(MODPROBE_CONF)
        files = [i['path'] for i in installs if i['exists']]
        files += [i['stamp'] for i in installs if os.path.exists(i['stamp'])]
        work = c.krel_work if os.path.lexists(c.krel_work) else None
        todo = {'unload': loaded is not None, 'files': files, 'dkms': sorted(dv),
                'conf': os.path.lexists(conf), 'work': work}
        r['loaded'] = loaded is not None
        r['installed_path'] = next((i['path'] for i in installs if i['exists']), None)
        if check_mode:
            r.update(would_unload=todo['unload'], would_remove=files + ['dkms %s/%s' % (MODULE_NAME, v)
                                                                        for v in todo['dkms']]
                     + ([conf] if todo['conf'] else []) + ([work] if work else []))
            r['changed'] = bool(todo['unload'] or files or todo['dkms'] or todo['conf'] or work)
            r['msg'] = 'would remove erb_io' if r['changed'] else 'erb_io is not here: nothing to do'
            return r
        if todo['unload'] or files or todo['dkms'] or todo['conf'] or work:
            self.lock()
        if todo['unload']:
            self.unload(loaded, 'state=absent')
            r['loaded'] = False
        touched = False
        for v in todo['dkms']:
            self.dkms_remove(dkms, v, self.dkms_tree_args())
            touched = True
        for p in files:
            if remove_path(p):
                self.step('removed %s' % p)
                touched = True
        kd = c.moddir + KBUILD_DEST
        if os.path.isdir(kd) and not os.listdir(kd):
            os.rmdir(kd)
        self.clean_dkms_sources()
        if todo['conf']:
            remove_path(conf)
            self.step('removed %s' % conf)
        if work:
            remove_path(work)
            self.step('removed the build trees %s' % work)
        if touched and os.path.isdir(c.moddir):
            self.depmod()
        r['installed_path'] = None
        r['msg'] = 'erb_io removed' if self.changed else 'erb_io is not here: nothing to do'
        return r
