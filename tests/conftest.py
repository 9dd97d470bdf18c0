# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared fixtures and helpers for ERB's tests.

- No silent skips: a test that skips fails, unless it is marked
  ``@pytest.mark.allow_skip(reason)``. CI runs as root with namespaces and BPF.
- ``fleet`` (session): the local test fleet of inventory/local/fleet.sh, brought up
  once and taken down at the end (left alone if it was already up before the session).
- ``run`` / ``netns_run``: run a command (in a network namespace), raise with its
  output on failure.
- ``redis_server``: a factory starting a redis-server (in a namespace or not) that is
  stopped by PID at teardown.
- ``ansible_playbook``: run a playbook of this collection from the repository root;
  returns the output and the parsed PLAY RECAP.
"""


import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Other test directories have a conftest.py too, and they replace `conftest`
# in sys.modules when the whole suite runs: test modules import these shared
# helpers under this name instead.
sys.modules.setdefault('erb_conftest', sys.modules[__name__])

import pytest

REPO = Path(__file__).resolve().parent.parent
FLEET_SH = REPO / 'inventory' / 'local' / 'fleet.sh'
FLEET_DIR = Path(os.environ.get('ERB_FLEET_DIR', '/run/erb/fleet'))
LOCAL_INVENTORY = REPO / 'inventory' / 'local'
BPF_OBJECT = REPO / 'files' / 'bpf' / 'erb.bpf.o'
XDP_PASS_OBJECT = REPO / 'files' / 'bpf' / 'xdp_pass.bpf.o'
FLEET_SIZE = 2
REDIS_PORT = 6379


# --------------------------------------------------------------------------- skips

def _skip_allowed(item):
    return item.get_closest_marker('allow_skip') is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and not hasattr(rep, 'wasxfail') and not _skip_allowed(item):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = 'failed'
        rep.longrepr = ('skipped without @pytest.mark.allow_skip, so it counts as a failure '
                        '(tests/conftest.py): %s' % reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = 'failed'
        rep.longrepr = ('module skipped at collection (pytest.skip/importorskip); that counts as a '
                        'failure (tests/conftest.py): %s' % reason)


# --------------------------------------------------------------------------- commands

class CommandError(AssertionError):
    pass


def run(cmd, check=True, timeout=120, env=None, cwd=None, input=None):
    """Run an argument list; returns CompletedProcess (text). Raises CommandError with the
    command's output when it fails and check is true."""
    full_env = dict(os.environ, LANG='C.UTF-8', LC_ALL='C.UTF-8')
    if env:
        full_env.update(env)
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                       env=full_env, cwd=cwd, input=input, check=False)
    if check and p.returncode != 0:
        raise CommandError('%s exited %d\n--- stdout\n%s\n--- stderr\n%s'
                           % (' '.join(str(c) for c in cmd), p.returncode, p.stdout, p.stderr))
    return p


def netns_run(ns, cmd, **kw):
    """run() inside network namespace ns (ip netns exec)."""
    return run(['ip', 'netns', 'exec', ns] + list(cmd), **kw)


def netns_exists(ns):
    return Path('/run/netns', ns).exists()


def tree_snapshot(d):
    """{path: (mode, size, mtime_ns, link target)} of everything below d: equal snapshots
    mean nothing there was created, removed, rewritten or relinked."""
    out = {}
    for base, dirs, files in os.walk(d):
        for n in dirs + files:
            p = os.path.join(base, n)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns, os.readlink(p) if os.path.islink(p) else None)
    return out


def key_values(text):
    """{KEY: VALUE} of the KEY=VALUE lines of text (tests/guest/build-guest.sh's output)."""
    return dict(line.split('=', 1) for line in text.splitlines() if '=' in line)


def qemu_guest(kernel, initrd, append, mem_mb, timeout, extra=()):
    """Boot kernel + initrd in QEMU/TCG (this machine's KVM is unusable), 2 vCPUs, serial
    console, niced; the guest powers itself off. Returns (console text, {name: value} of its
    "ERB-V name value" lines, seconds)."""
    qemu = shutil.which('qemu-system-x86_64')
    assert qemu, 'qemu-system-x86_64 missing (tests/guest/build-guest.sh installs qemu-system-x86)'
    cmd = ['nice', '-n', '10', qemu, '-accel', 'tcg,thread=multi', '-cpu', 'max',
           '-m', str(mem_mb), '-smp', '2', '-nographic', '-no-reboot',
           '-kernel', kernel, '-initrd', initrd] + list(extra) + ['-append', append]
    t0 = time.monotonic()
    try:
        run = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        out = run.stdout
    except subprocess.TimeoutExpired as e:  # killed: keep what it printed, for the failure message
        out = (e.stdout or b'') + b'\nERB-V qemu_timeout %d\n' % timeout
    console = out.decode('utf-8', 'replace')
    values = dict((m.group(1), m.group(2))
                  for m in re.finditer(r'^ERB-V (\S+) ?(.*?)\r?$', console, re.M))
    return console, values, time.monotonic() - t0


def wait_for(predicate, timeout=10.0, interval=0.05, what='condition'):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError('timed out after %.1f s waiting for %s' % (timeout, what))
        time.sleep(interval)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_pid(pid, timeout=10.0):
    """SIGTERM, then SIGKILL after timeout; waits until the process is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        wait_for(lambda: not pid_alive(pid), timeout=timeout, what='pid %d to exit' % pid)
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), timeout=5, what='pid %d to die' % pid)


def bpf_programs():
    """Loaded BPF programs as bpftool reports them (list of dicts)."""
    import json
    return json.loads(run(['bpftool', '-j', 'prog', 'show']).stdout or '[]')


def require_bpf_objects(*objects):
    """Fail (not skip) with a clear message when BPF objects (default: both) are not built."""
    missing = [str(p) for p in (objects or (BPF_OBJECT, XDP_PASS_OBJECT)) if not p.is_file()]
    if missing:
        pytest.fail('BPF objects missing: %s; build them with `make -C files/bpf`' % ', '.join(missing))


# --------------------------------------------------------------------------- fleet

@dataclass
class FleetHost:
    index: int

    @property
    def name(self):
        return 'erb-r%d' % self.index

    @property
    def ns(self):
        return self.name

    @property
    def client_ns(self):
        return 'erb-c%d' % self.index

    @property
    def iface(self):
        return 'erbs%d' % self.index

    @property
    def client_iface(self):
        return 'erbc%d' % self.index

    @property
    def server_ip(self):
        return '10.250.%d.1' % self.index

    @property
    def client_ip(self):
        return '10.250.%d.2' % self.index

    @property
    def dir(self):
        return FLEET_DIR / ('r%d' % self.index)

    @property
    def socket(self):
        return self.dir / 'redis.sock'

    @property
    def redis_pid(self):
        """PID of this host's redis-server (read now: it changes when the fleet is remade)."""
        return int((self.dir / 'redis.pid').read_text().strip())

    def run(self, cmd, **kw):
        """Run in the Redis host's namespace."""
        return netns_run(self.ns, cmd, **kw)

    def has_xdp(self):
        """An XDP program is attached to the server's veth (ERB, or one left behind)."""
        link = json.loads(self.run(['ip', '-j', '-d', 'link', 'show', self.iface]).stdout)[0]
        return bool(link.get('xdp'))

    def client_run(self, cmd, **kw):
        """Run in the client's namespace."""
        return netns_run(self.client_ns, cmd, **kw)

    def redis_cli(self, *args, **kw):
        """redis-cli from the client namespace to the server over the veth; returns stdout stripped."""
        p = self.client_run(['redis-cli', '-h', self.server_ip, '-p', str(REDIS_PORT)] + list(args), **kw)
        return p.stdout.strip()

    def redis_cli_local(self, *args, **kw):
        """redis-cli over the unix socket inside the Redis host (never crosses the veth)."""
        p = self.run(['redis-cli', '-s', str(self.socket)] + list(args), **kw)
        return p.stdout.strip()


@dataclass
class Fleet:
    size: int
    hosts: list = field(default_factory=list)
    inventory: Path = LOCAL_INVENTORY

    def up(self):
        return run(['bash', FLEET_SH, 'up', str(self.size)], timeout=120)

    def down(self):
        return run(['bash', FLEET_SH, 'down'], timeout=120)

    def status(self):
        return run(['bash', FLEET_SH, 'status'], check=False)


def fleet_is_up():
    return run(['bash', FLEET_SH, 'status'], check=False).returncode == 0


def _need_root():
    if os.geteuid() != 0:
        pytest.fail('this test needs root (network namespaces, bpffs, BPF); CI runs as root')


@pytest.fixture(scope='session')
def fleet():
    """The local test fleet (FLEET_SIZE hosts), up for the whole session."""
    _need_root()
    require_bpf_objects(XDP_PASS_OBJECT)
    was_up = fleet_is_up()
    f = Fleet(size=FLEET_SIZE, hosts=[FleetHost(i) for i in range(1, FLEET_SIZE + 1)])
    f.up()
    yield f
    if not was_up:
        f.down()


# --------------------------------------------------------------------------- redis

@dataclass
class RedisHandle:
    pid: int
    dir: Path
    socket: Path
    port: int
    bind: str
    ns: str = None

    def cli(self, *args, check=True):
        cmd = ['redis-cli', '-s', str(self.socket)] + list(args)
        p = netns_run(self.ns, cmd, check=check) if self.ns else run(cmd, check=check)
        return p.stdout.strip()

    def stop(self):
        stop_pid(self.pid)


@pytest.fixture
def redis_server(tmp_path):
    """Factory: redis_server(ns=None, bind='127.0.0.1', port=0, extra=()) starts a
    daemonized redis-server (data, socket and pid file under tmp_path) and returns a
    RedisHandle; every server started is stopped by PID at teardown."""
    started = []

    def start(ns=None, bind='127.0.0.1', port=0, extra=()):
        d = Path(tempfile.mkdtemp(prefix='redis-', dir=tmp_path))
        conf = d / 'redis.conf'
        lines = ['bind %s' % bind, 'port %d' % port, 'protected-mode no',
                 'unixsocket %s' % (d / 'redis.sock'), 'unixsocketperm 700',
                 'daemonize yes', 'pidfile %s' % (d / 'redis.pid'), 'logfile %s' % (d / 'redis.log'),
                 'dir %s' % d, 'save ""', 'appendonly yes', 'appendfsync everysec']
        conf.write_text('\n'.join(lines + list(extra)) + '\n')
        cmd = ['redis-server', str(conf)]
        netns_run(ns, cmd) if ns else run(cmd)
        pidf = d / 'redis.pid'
        wait_for(lambda: pidf.is_file() and pidf.read_text().strip(), what='redis pid file %s' % pidf)
        h = RedisHandle(pid=int(pidf.read_text()), dir=d, socket=d / 'redis.sock', port=port,
                        bind=bind, ns=ns)
        started.append(h)
        wait_for(lambda: h.cli('PING', check=False) == 'PONG', what='redis-server to answer PING')
        return h

    yield start
    for h in started:
        h.stop()


# --------------------------------------------------------------------------- ansible

def venv_bin(tool):
    """A console script installed beside the running Python (the venv), else from PATH."""
    candidate = Path(sys.executable).parent / tool
    if candidate.exists():
        return str(candidate)
    found = shutil.which(tool)
    if not found:
        pytest.fail('%s not found: install requirements-test.txt (scripts/test does)' % tool)
    return found


def ensure_collection_link():
    """.ansible/collections/ansible_collections/erb/booster -> the repository, which
    ansible.cfg's collections_path points at."""
    ns_dir = REPO / '.ansible' / 'collections' / 'ansible_collections' / 'erb'
    ns_dir.mkdir(parents=True, exist_ok=True)
    link = ns_dir / 'booster'
    if not (link.is_symlink() and link.resolve() == REPO):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path('..', '..', '..', '..'))
    return link


RECAP_RE = re.compile(r'^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$')


def parse_recap(output):
    """{host: {'ok': n, 'changed': n, 'failed': n, ...}} from the PLAY RECAP section."""
    recap = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith('PLAY RECAP'):
            in_recap = True
            continue
        if in_recap:
            m = RECAP_RE.match(line.strip())
            if m:
                recap[m.group('host')] = {k: int(v) for k, v in
                                          (kv.split('=') for kv in m.group('counts').split())}
    return recap


@dataclass
class PlaybookResult:
    rc: int
    stdout: str
    stderr: str
    recap: dict

    @property
    def output(self):
        return self.stdout + self.stderr


def ansible_env():
    return {'ANSIBLE_CONFIG': str(REPO / 'ansible.cfg'), 'ANSIBLE_NOCOLOR': '1',
            'ANSIBLE_FORCE_COLOR': '0', 'PY_COLORS': '0'}


def run_playbook(playbook, inventory=LOCAL_INVENTORY, extra_vars=None, limit=None, args=(), timeout=900):
    ensure_collection_link()
    cmd = [venv_bin('ansible-playbook'), '-i', str(inventory), str(REPO / 'playbooks' / playbook)
           if not os.path.isabs(str(playbook)) else str(playbook)]
    for k, v in (extra_vars or {}).items():
        cmd += ['-e', '%s=%s' % (k, v)]
    if limit:
        cmd += ['--limit', limit]
    cmd += list(args)
    p = run(cmd, check=False, timeout=timeout, env=ansible_env(), cwd=REPO)
    return PlaybookResult(p.returncode, p.stdout, p.stderr, parse_recap(p.stdout))


@pytest.fixture(scope='session')
def ansible_playbook():
    """run_playbook(playbook, inventory=inventory/local, extra_vars=None, limit=None, args=())
    -> PlaybookResult(rc, stdout, stderr, recap)."""
    return run_playbook
