# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers shared by the tune tests: run a module for real, build fake
sysfs/procfs trees modelled on real drivers, make one file refuse writes."""

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, '..', '..', '..'))
FAKES = os.path.join(HERE, 'fakes')
FIXTURES = os.path.join(HERE, 'fixtures')
sys.path.insert(0, os.path.join(REPO, 'tests', 'loader'))
from return_docs import assert_documented  # noqa: E402

_coll = None


def collections_dir():
    """A temp dir holding ansible_collections/erb/booster -> the repository."""
    global _coll
    if _coll is None:
        _coll = tempfile.mkdtemp(prefix='erb-coll-')
        os.makedirs(os.path.join(_coll, 'ansible_collections', 'erb'))
        os.symlink(REPO, os.path.join(_coll, 'ansible_collections', 'erb', 'booster'))
        atexit.register(shutil.rmtree, _coll, True)
        # test doubles of ethtool and systemctl, run by this very interpreter
        # (a #!/usr/bin/env shebang may hit a slow version-manager shim)
        b = os.path.join(_coll, 'bin')
        os.makedirs(b)
        write(os.path.join(b, 'ethtool'), '#!/bin/sh\nexec %s %s "$@"\n'
              % (sys.executable, os.path.join(FAKES, 'ethtool.py')), 0o755)
        os.symlink(os.path.join(FAKES, 'systemctl'), os.path.join(b, 'systemctl'))
    return _coll


def fake_bin():
    return os.path.join(collections_dir(), 'bin')


def run_module(module, args, check=False, diff=True, env=None, netns=None, fakes=True):
    """Run erb.booster.<module> as Ansible runs it (python -m, args file) and
    return its JSON result. ``netns``: run inside that network namespace."""
    payload = dict(args)
    payload['_ansible_check_mode'] = check
    payload['_ansible_diff'] = diff
    fd, path = tempfile.mkstemp(prefix='erb-args-', suffix='.json')
    with os.fdopen(fd, 'w') as f:
        json.dump({'ANSIBLE_MODULE_ARGS': payload}, f)
    e = dict(os.environ)
    e['PYTHONPATH'] = collections_dir()
    if fakes:
        e['PATH'] = fake_bin() + os.pathsep + e.get('PATH', '/usr/bin:/bin')
    e.update(env or {})
    cmd = [sys.executable, '-m', 'ansible_collections.erb.booster.plugins.modules.%s' % module, path]
    if netns:
        cmd = ['ip', 'netns', 'exec', netns] + cmd
    try:
        p = subprocess.run(cmd, env=e, cwd=tempfile.gettempdir(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=60, check=False)
    finally:
        os.unlink(path)
    try:
        res = json.loads(p.stdout)
    except ValueError:
        raise AssertionError('module %s printed no JSON (rc=%d)\nstdout: %s\nstderr: %s'
                             % (module, p.returncode, p.stdout, p.stderr))
    res.pop('invocation', None)
    res['_rc'] = p.returncode
    # ansible-core 2.19 returns warnings as WarningSummary objects
    res['warnings'] = [w['event']['msg'] if isinstance(w, dict) else w for w in res.get('warnings', [])]
    assert_documented(module, res)
    return res


@contextlib.contextmanager
def refuse_writes(path):
    """Make ``path`` refuse writes (EROFS) with a read-only bind mount of the
    file onto itself: the stand-in for a kernel attribute rejecting a value.
    Needs root (CI runs as root)."""
    subprocess.run(['mount', '--bind', path, path], check=True)
    try:
        subprocess.run(['mount', '-o', 'remount,ro,bind', path, path], check=True)
        yield
    finally:
        subprocess.run(['umount', path], check=True)


def write(path, text, mode=None):
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        os.makedirs(d)
    with open(path, 'w') as f:
        f.write(text)
    if mode is not None:
        os.chmod(path, mode)


def read(path):
    with open(path) as f:
        return f.read().strip()


class FakeHost(object):
    """A fake /sys + /proc tree and a fake ethtool state."""

    def __init__(self, root, ncpus=8):
        self.root = str(root)
        self.sys = os.path.join(self.root, 'sys')
        self.proc = os.path.join(self.root, 'proc')
        self.state_dir = os.path.join(self.root, 'var/lib/erb')
        self.ethtool_state = os.path.join(self.root, 'ethtool.json')
        self.ncpus = ncpus
        self.irqs = {}       # irq -> [names]
        self.ifaces = {}
        cpu = os.path.join(self.sys, 'devices/system/cpu')
        write(os.path.join(cpu, 'online'), '0-%d\n' % (ncpus - 1))
        write(os.path.join(cpu, 'present'), '0-%d\n' % (ncpus - 1))
        for c in range(ncpus):
            os.makedirs(os.path.join(cpu, 'cpu%d' % c, 'topology'))
        os.makedirs(self.proc)
        self.save_ethtool()

    # ---- ethtool ----
    def save_ethtool(self):
        with open(self.ethtool_state, 'w') as f:
            json.dump({'ifaces': self.ifaces, 'calls': []}, f)

    def ethtool(self):
        with open(self.ethtool_state) as f:
            return json.load(f)

    def set_ethtool(self, data):
        with open(self.ethtool_state, 'w') as f:
            json.dump(data, f)

    def env(self):
        return {'FAKE_ETHTOOL_STATE': self.ethtool_state}

    # ---- devices ----
    def add_netdev(self, name, devpath=None, rx=1, tx=1, driver=None, channels=None, rss=None):
        """devpath: device directory relative to /sys/devices (None = virtual)."""
        if devpath:
            real = os.path.join(self.sys, 'devices', devpath, 'net', name)
        else:
            real = os.path.join(self.sys, 'devices/virtual/net', name)
        os.makedirs(real)
        for q in range(rx):
            write(os.path.join(real, 'queues/rx-%d/rps_cpus' % q), '00\n')
        for q in range(tx):
            write(os.path.join(real, 'queues/tx-%d/xps_cpus' % q), '00\n')
        link = os.path.join(self.sys, 'class/net', name)
        if not os.path.isdir(os.path.dirname(link)):
            os.makedirs(os.path.dirname(link))
        os.symlink(os.path.relpath(real, os.path.dirname(link)), link)
        if devpath:
            os.symlink(os.path.relpath(os.path.join(self.sys, 'devices', devpath), real),
                       os.path.join(real, 'device'))
            if driver:
                drv = os.path.join(self.sys, 'bus/pci/drivers', driver)
                if not os.path.isdir(drv):
                    os.makedirs(drv)
                os.symlink(os.path.relpath(drv, os.path.join(self.sys, 'devices', devpath)),
                           os.path.join(self.sys, 'devices', devpath, 'driver'))
        if channels is not None:
            self.ifaces[name] = {'driver': driver or 'veth', 'channels': channels, 'rss': rss,
                                 'bus': os.path.basename(devpath) if devpath else ''}
            self.save_ethtool()
        return real

    def add_msi(self, devpath, irqs):
        d = os.path.join(self.sys, 'devices', devpath, 'msi_irqs')
        for irq in irqs:
            write(os.path.join(d, str(irq)), 'msix\n')

    def add_irq(self, irq, name, affinity=None):
        self.irqs[irq] = [name]
        d = os.path.join(self.proc, 'irq', str(irq))
        os.makedirs(os.path.join(d, name))
        write(os.path.join(d, 'smp_affinity_list'), (affinity or '0-%d' % (self.ncpus - 1)) + '\n')
        self.write_interrupts()

    def move_irq(self, old, new):
        """Driver reload: the same IRQ name comes back under another number,
        with the default affinity."""
        names = self.irqs.pop(old)
        shutil.rmtree(os.path.join(self.proc, 'irq', str(old)))
        self.add_irq(new, names[0])

    def write_interrupts(self):
        lines = [' ' * 11 + ''.join('CPU%-8d' % c for c in range(self.ncpus)).rstrip()]
        for irq in sorted(self.irqs):
            counts = ''.join('%10d ' % (irq * 7 + c) for c in range(self.ncpus))
            lines.append('%4d: %s IR-PCI-MSIX-0000:3b:00.0 %d-edge      %s'
                         % (irq, counts, irq * 1000, ', '.join(self.irqs[irq])))
        write(os.path.join(self.proc, 'interrupts'), '\n'.join(lines) + '\n')

    def affinity(self, irq):
        return read(os.path.join(self.proc, 'irq', str(irq), 'smp_affinity_list'))

    def queue_file(self, name, q, attr):
        return os.path.join(self.sys, 'class/net', name, 'queues', q, attr)

    def add_cpufreq(self, cpus, governor='schedutil',
                    available='conservative ondemand userspace powersave performance schedutil'):
        for c in cpus:
            d = os.path.join(self.sys, 'devices/system/cpu/cpu%d/cpufreq' % c)
            write(os.path.join(d, 'scaling_governor'), governor + '\n')
            write(os.path.join(d, 'scaling_available_governors'), available + '\n')
            write(os.path.join(d, 'scaling_driver'), 'acpi-cpufreq\n')

    def governor(self, c):
        return read(os.path.join(self.sys, 'devices/system/cpu/cpu%d/cpufreq/scaling_governor' % c))

    def args(self, **kw):
        a = dict(sysfs_root=self.sys, state_dir=self.state_dir)
        a.update(kw)
        return a

    def state_files(self):
        d = os.path.join(self.state_dir, 'tune')
        return sorted(os.listdir(d)) if os.path.isdir(d) else []


def channels(max_, cur):
    keys = ('rx', 'tx', 'other', 'combined')
    return {'max': dict(zip(keys, max_)), 'current': dict(zip(keys, cur))}
