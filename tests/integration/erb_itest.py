# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers and fixtures for the fleet integration tests (tests/integration/).

A helper module, not a conftest.py: a second non-package conftest.py would replace
`conftest` in sys.modules and break `from conftest import ...` in other directories.
Test modules import what they need from here (fixtures included).

- Clients really live in a client namespace: sockets are created inside erb-c<N>
  (setns(2) on the creating thread only, then back), so redis-py, raw RESP sockets and
  200 threads all talk to Redis across the veth, through ERB's XDP and TC programs.
- ``RespConn``: a raw RESP2 connection returning each reply's exact bytes, so replies
  are compared byte for byte with an unboosted redis-server.
- ``ErbAttachment``: erb.booster.bpf run as a real module process inside the Redis
  host's namespace (attach/detach), ERB's counters read from its pinned erb_stats map,
  erb.booster.bpf_info run as a module.
- ``reference_redis`` (module): a plain redis-server on a unix socket, never boosted.
"""

import ctypes
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from erb_conftest import (BPF_OBJECT, REDIS_PORT, REPO, ensure_collection_link, run, stop_pid,
                          wait_for)

BPFFS_ROOT = '/run/erb/bpffs'
COLLECTIONS = REPO / '.ansible' / 'collections'
MODULES = REPO / 'plugins' / 'modules'

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


# --------------------------------------------------------------------------- namespaces

def socket_in_netns(ns, family=socket.AF_INET, type=socket.SOCK_STREAM):
    """A socket created inside network namespace ns (only this thread switches, and
    switches back before returning); it keeps that namespace for its whole life."""
    own = os.open('/proc/thread-self/ns/net', os.O_RDONLY)
    try:
        target = os.open('/run/netns/%s' % ns, os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, 'setns(%s): %s' % (ns, os.strerror(e)))
            try:
                return socket.socket(family, type)
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:  # never leave a thread in the wrong netns
                    os.write(2, b'erb_itest: setns back to the own network namespace failed\n')
                    os._exit(70)
        finally:
            os.close(target)
    finally:
        os.close(own)


def connect_in_netns(ns, host, port=REDIS_PORT, timeout=10.0):
    s = socket_in_netns(ns)
    s.settimeout(timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.connect((host, port))
    return s


def redis_from(ns, host, port=REDIS_PORT, **kw):
    """A redis.Redis whose connections are made inside namespace ns."""
    import redis

    class NetnsConnection(redis.connection.Connection):
        def _connect(self):
            sock = socket_in_netns(ns)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.socket_connect_timeout)
            sock.connect((self.host, self.port))
            sock.settimeout(self.socket_timeout)
            return sock

    kw.setdefault('socket_timeout', 10)
    kw.setdefault('socket_connect_timeout', 10)
    pool = redis.ConnectionPool(connection_class=NetnsConnection, host=host, port=port, **kw)
    return redis.Redis(connection_pool=pool)


# --------------------------------------------------------------------------- raw RESP

def resp_encode(*args):
    out = [b'*%d\r\n' % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = str(a).encode()
        out.append(b'$%d\r\n%s\r\n' % (len(a), a))
    return b''.join(out)


class RespConn(object):
    """One connection speaking raw RESP; cmd() returns the exact bytes of the reply."""

    def __init__(self, sock, name=''):
        self.sock = sock
        self.buf = b''
        self.name = name

    @classmethod
    def tcp(cls, ns, host, port=REDIS_PORT, timeout=10.0):
        return cls(connect_in_netns(ns, host, port, timeout), '%s->%s' % (ns, host))

    @classmethod
    def unix(cls, path, timeout=10.0):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(str(path))
        return cls(s, str(path))

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise AssertionError('%s: connection closed by peer (buffered %r)' % (self.name, self.buf[:200]))
        self.buf += chunk

    def _line_end(self, pos):
        while True:
            i = self.buf.find(b'\r\n', pos)
            if i >= 0:
                return i
            self._fill()

    def _reply_end(self, pos):
        """Index just past the RESP value starting at pos (reads more as needed)."""
        while len(self.buf) <= pos:
            self._fill()
        t = self.buf[pos:pos + 1]
        i = self._line_end(pos)
        if t in (b'+', b'-', b':', b',', b'_', b'#', b'('):
            return i + 2
        if t in (b'$', b'=', b'!'):
            n = int(self.buf[pos + 1:i])
            if n < 0:
                return i + 2
            end = i + 2 + n + 2
            while len(self.buf) < end:
                self._fill()
            return end
        if t in (b'*', b'>', b'~', b'%', b'|'):
            n = int(self.buf[pos + 1:i])
            if t in (b'%', b'|'):
                n *= 2
            p = i + 2
            for _unused in range(max(n, 0)):
                p = self._reply_end(p)
            return p
        raise AssertionError('%s: not RESP at %d: %r' % (self.name, pos, self.buf[pos:pos + 80]))

    def read_reply(self):
        end = self._reply_end(0)
        r, self.buf = self.buf[:end], self.buf[end:]
        return r

    def send(self, data):
        self.sock.sendall(data)

    def cmd(self, *args):
        self.send(resp_encode(*args))
        return self.read_reply()

    def pending(self):
        """Bytes received but not yet consumed (after a short wait)."""
        self.sock.settimeout(0.2)
        try:
            self._fill()
        except (socket.timeout, BlockingIOError):
            pass
        finally:
            self.sock.settimeout(10.0)
        return self.buf

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------- ERB

def run_module(name, ns, args, timeout=120):
    """Run plugins/modules/<name>.py as Ansible would, inside namespace ns; returns its JSON."""
    ensure_collection_link()
    with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False) as f:
        json.dump({'ANSIBLE_MODULE_ARGS': dict(args, _ansible_check_mode=False, _ansible_diff=False)}, f)
    try:
        env = dict(os.environ, PYTHONPATH=str(COLLECTIONS), LANG='C.UTF-8')
        p = subprocess.run(['ip', 'netns', 'exec', ns, sys.executable, str(MODULES / (name + '.py')), f.name],
                           capture_output=True, text=True, env=env, timeout=timeout, check=False)
    finally:
        os.unlink(f.name)
    try:
        return json.loads(p.stdout)
    except ValueError:
        raise AssertionError('module %s printed no JSON (rc %d): %s %s' % (name, p.returncode, p.stdout, p.stderr))


def _loader():
    ensure_collection_link()
    if str(COLLECTIONS) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS))
    from ansible_collections.erb.booster.plugins.module_utils import erb_loader
    return erb_loader


def deploy_default(ansible_playbook, host):
    """ERB on fleet host the default way (playbooks/deploy.yml: GET answers, the SET fast path and
    the I/O agent); its ErbAttachment."""
    dep = ansible_playbook('deploy.yml', limit=host.name)
    assert dep.rc == 0, 'deploy.yml on %s failed:\n%s' % (host.name, dep.output[-6000:])
    assert host.has_xdp()
    return ErbAttachment(host)


class ErbAttachment(object):
    """ERB attached by erb.booster.bpf to a fleet host's interface."""

    def __init__(self, host, **config):
        self.host = host
        self.config = dict(config)
        self.pin_dir = Path(BPFFS_ROOT, 'erb', host.ns, host.iface)
        self.result = None

    def module_args(self, **kw):
        args = dict(interface=self.host.iface, object=str(BPF_OBJECT), bpffs_root=BPFFS_ROOT,
                    xdp_mode='native')
        args.update(self.config)
        args.update(kw)
        return args

    def attach(self):
        self.result = run_module('bpf', self.host.ns, self.module_args(state='attached'))
        if self.result.get('failed'):
            raise AssertionError('erb.booster.bpf attach failed on %s: %s' % (self.host.name, self.result))
        return self.result

    def detach(self, drain_timeout=10):
        r = run_module('bpf', self.host.ns, dict(interface=self.host.iface, bpffs_root=BPFFS_ROOT,
                                                 state='detached', drain_timeout=drain_timeout))
        if r.get('failed'):
            raise AssertionError('erb.booster.bpf detach failed on %s: %s' % (self.host.name, r))
        return r

    def info(self):
        r = run_module('bpf_info', self.host.ns, dict(interface=self.host.iface, bpffs_root=BPFFS_ROOT))
        if r.get('failed'):
            raise AssertionError('erb.booster.bpf_info failed on %s: %s' % (self.host.name, r))
        return r['interfaces'][self.host.iface]

    def global_state(self):
        """erb_global (cache generation, fill-blocking overflow count, drain, sequences)."""
        L = _loader()
        fd = L.open_pinned(str(self.pin_dir / 'map_erb_global'))
        assert fd is not None, 'no pinned erb_global under %s' % self.pin_dir
        try:
            g = L.read_global(fd)
            return {'cache_gen': g.cache_gen, 'overflow': g.overflow, 'ctl': g.ctl}
        finally:
            os.close(fd)

    def stats(self):
        """erb_stats summed over CPUs, by name, read from the pinned map."""
        L = _loader()
        fd = L.open_pinned(str(self.pin_dir / 'map_erb_stats'))
        assert fd is not None, 'no pinned erb_stats under %s: is ERB attached?' % self.pin_dir
        try:
            return L.read_stats(fd)
        finally:
            os.close(fd)


def stat_delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


# --------------------------------------------------------------------------- Redis side

def commandstats(host):
    """{command: calls} from INFO commandstats over the host's unix socket (never the veth)."""
    out = {}
    for line in host.redis_cli_local('INFO', 'commandstats').splitlines():
        if line.startswith('cmdstat_'):
            name, rest = line[len('cmdstat_'):].split(':', 1)
            fields = dict(kv.split('=') for kv in rest.split(','))
            out[name] = int(fields['calls'])
    return out


def nstat(ns):
    """Absolute SNMP/netstat counters of namespace ns (nstat -az, history untouched)."""
    out = {}
    for line in run(['ip', 'netns', 'exec', ns, 'nstat', '-azs']).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


BAD_TCP_COUNTERS = ('TcpRetransSegs', 'TcpInCsumErrors', 'TcpEstabResets')


def bad_tcp_increments(before, after):
    """Trouble counters that rose. A tail loss probe (RFC 8985: the sender re-sends
    its last segment when no ACK came within ~2 RTT, which on this 2-core machine a
    scheduling hiccup of Redis or of the test runner causes) is a retransmission no
    packet was lost for: TcpRetransSegs counts only what the probes do not explain."""
    names = set(BAD_TCP_COUNTERS) | {k for k in after if k.startswith('TcpExtTCPAbort')}
    inc = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(names)}
    probes = after.get('TcpExtTCPLossProbes', 0) - before.get('TcpExtTCPLossProbes', 0)
    inc['TcpRetransSegs'] = max(0, inc.get('TcpRetransSegs', 0) - probes)
    return {k: v for k, v in inc.items() if v}


@pytest.fixture(scope='module')
def reference_redis(tmp_path_factory):
    """A plain redis-server (never boosted) on a unix socket; yields the socket path."""
    d = tmp_path_factory.mktemp('reference-redis')
    conf = d / 'redis.conf'
    conf.write_text('\n'.join(['port 0', 'unixsocket %s' % (d / 'redis.sock'), 'unixsocketperm 700',
                               'daemonize yes', 'pidfile %s' % (d / 'redis.pid'),
                               'logfile %s' % (d / 'redis.log'), 'dir %s' % d, 'save ""',
                               'appendonly no']) + '\n')
    run(['redis-server', str(conf)])
    pidf = d / 'redis.pid'
    wait_for(lambda: pidf.is_file() and pidf.read_text().strip(), what='reference redis pid file')
    pid = int(pidf.read_text())
    sock = d / 'redis.sock'
    try:
        wait_for(sock.exists, what='reference redis socket')
        yield sock
    finally:
        stop_pid(pid)


def run_threads(n, fn):
    """Run fn(i) in n threads started together; re-raise the first failure."""
    errors = []
    barrier = threading.Barrier(n)

    def body(i):
        try:
            barrier.wait(timeout=60)
            fn(i)
        except BaseException as e:  # noqa: B902 - reported below
            errors.append((i, e))

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    alive = [t for t in threads if t.is_alive()]
    assert not alive, '%d thread(s) still running after 180 s' % len(alive)
    if errors:
        raise AssertionError('%d of %d threads failed; first: thread %d: %r'
                             % (len(errors), n, errors[0][0], errors[0][1]))


def monotonic_ms():
    return int(time.monotonic() * 1000)
