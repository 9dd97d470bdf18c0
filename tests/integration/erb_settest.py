# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers for the SET fast-path fleet tests (test_set_fast.py).

- ``AgentProc``: the I/O agent (files/agent/erb-agent) run by the test itself inside the
  Redis host's namespace, with the role's command line (--pin-dir, --redis-sock,
  --stats-file), in the foreground so that its pid is the agent's: the tests kill -9 it
  and start it again.
- ``FleetRedis``: the fleet host's redis-server, killed (-9) and restarted with its own
  configuration (/run/erb/fleet/r<i>/redis.conf, as inventory/local/fleet.sh starts it).
- ``Monitor``: a MONITOR connection over the unix socket recording every command Redis
  executes, in execution order.
- ``pending(att)``: write_seq/applied_seq from the pinned erb_global.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from erb_conftest import REPO, pid_alive, run, wait_for
from erb_itest import RespConn, _loader, resp_encode

AGENT_DIR = REPO / 'files' / 'agent'
AGENT_BIN = AGENT_DIR / 'erb-agent'


def build_agent():
    run(['make', '-C', str(AGENT_DIR)], timeout=300)
    assert AGENT_BIN.is_file(), 'files/agent/erb-agent not built'


def seqs(att):
    """(write_seq, applied_seq) of an attachment, from its pinned erb_global."""
    L = _loader()
    fd = L.open_pinned(str(att.pin_dir / 'map_erb_global'))
    assert fd is not None, 'no pinned erb_global under %s' % att.pin_dir
    try:
        g = L.read_global(fd)
        return int(g.write_seq), int(g.applied_seq)
    finally:
        os.close(fd)


def wait_applied(att, timeout=20.0, what='the agent to apply every acknowledged SET'):
    """Wait until applied_seq == write_seq; returns the seconds it took."""
    t0 = time.monotonic()

    def caught_up():
        write_seq, applied_seq = seqs(att)
        return write_seq == applied_seq

    wait_for(caught_up, timeout=timeout, interval=0.01,
             what='%s (write_seq, applied_seq now %s)' % (what, seqs(att)))
    return time.monotonic() - t0


# --------------------------------------------------------------------------- agent

def role_agent_file(host, suffix):
    """A file of the role's agent for host's interface in its run dir: suffix 'pid', 'json' (stats), 'log'."""
    return host.dir / 'run' / ('agent-%s.%s' % (host.iface, suffix))


def role_agent_pidfile(host):
    return role_agent_file(host, 'pid')


def stop_role_agent(host):
    """Stop an agent the role (erb-agent-supervise) left running for this interface, as the
    role's agent_stop.yml does (TERM to the supervisor, whose pid is in its pid file)."""
    pf = role_agent_pidfile(host)
    try:
        pid = int(pf.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pid_alive(pid), timeout=30, what='the role\'s agent supervisor %d to stop' % pid)
    return pid


class AgentProc(object):
    """erb-agent for one attachment, started in the host's namespace by the test."""

    def __init__(self, att, workdir):
        self.att = att
        self.host = att.host
        self.dir = Path(workdir)
        self.stats_file = self.dir / 'agent.json'
        self.log_file = self.dir / 'agent.log'
        self.proc = None
        self.starts = 0

    def argv(self):
        return ['ip', 'netns', 'exec', self.host.ns, str(AGENT_BIN), '--pin-dir', str(self.att.pin_dir),
                '--redis-sock', str(self.host.socket), '--stats-file', str(self.stats_file),
                '--batch', '256', '--foreground']

    def start(self, wait=True):
        assert self.proc is None or self.proc.poll() is not None, 'agent already running'
        try:
            self.stats_file.unlink()
        except FileNotFoundError:
            pass
        log = open(self.log_file, 'ab')
        try:
            # `ip netns exec` execs the agent: the child's pid is the agent's
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        finally:
            log.close()
        self.starts += 1
        if wait:
            self.wait_connected()
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stats(self):
        try:
            s = json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            return None
        return s if s.get('pid') == self.pid else None

    def wait_connected(self, timeout=20.0):
        def ok():
            assert self.alive(), 'erb-agent exited with %s; log:\n%s' % (self.proc.poll(), self.log_tail())
            s = self.stats()
            return s if s and s.get('redis_connected') else None
        return wait_for(ok, timeout=timeout, interval=0.05, what='erb-agent to connect to Redis')

    def fresh_stats(self, timeout=5.0):
        """Stats written after this call (the agent writes them once a second)."""
        t0 = time.time()
        return wait_for(lambda: self.stats() if self.stats_file.exists() and
                        self.stats_file.stat().st_mtime > t0 and self.stats() else None,
                        timeout=timeout, interval=0.05, what='fresh erb-agent stats')

    def kill9(self):
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        """SIGTERM (the agent finishes its batch), SIGKILL after 30 s; reaps it."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError('erb-agent ignored SIGTERM for 30 s; log:\n%s' % self.log_tail())

    def log_tail(self, n=40):
        try:
            return '\n'.join(self.log_file.read_text(errors='replace').splitlines()[-n:])
        except OSError:
            return '(no log)'


# --------------------------------------------------------------------------- Redis

@contextlib.contextmanager
def attached_with_agent(att, tmp_path_factory):
    """att attached, with an erb-agent of the test's own as att.agent; on leaving, att detached
    (drained first), then the agent stopped."""
    att.attach()
    att.agent = AgentProc(att, tmp_path_factory.mktemp('erb-agent'))
    try:
        att.agent.start()
        yield att
    finally:
        try:
            att.detach()
        finally:
            att.agent.stop()


class FleetRedis(object):
    """The fleet host's redis-server: kill -9 and restart with its own configuration."""

    def __init__(self, host):
        self.host = host
        self.conf = host.dir / 'redis.conf'

    def info(self, section=None):
        args = ['INFO'] + ([section] if section else [])
        c = RespConn.unix(self.host.socket)
        try:
            r = c.cmd(*args)
        finally:
            c.close()
        out = {}
        for line in r.split(b'\r\n', 1)[1].decode(errors='replace').splitlines():
            if ':' in line and not line.startswith('#'):
                k, v = line.split(':', 1)
                out[k] = v
        return out

    def kill9(self):
        pid = self.host.redis_pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), timeout=10, what='redis-server %d to die' % pid)
        return pid

    def _pong(self):
        try:
            c = RespConn.unix(self.host.socket, timeout=1.0)
        except OSError:
            return False
        try:
            return c.cmd('PING') == b'+PONG\r\n'
        except (OSError, AssertionError):
            return False
        finally:
            c.close()

    def start(self, timeout=30.0):
        self.host.run(['redis-server', str(self.conf)])
        wait_for(self._pong, timeout=timeout, interval=0.05, what='the restarted redis-server to answer PING')
        wait_for(lambda: self.info('persistence').get('loading') == '0', timeout=timeout,
                 what='the restarted redis-server to finish loading')
        return self.host.redis_pid


class Monitor(object):
    """MONITOR over the unix socket; .commands() parses what Redis executed so far."""

    LINE = re.compile(r'^\+(\d+\.\d+) \[(\d+) ([^\]]+)\] (.*)$')
    ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')

    def __init__(self, sock_path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(sock_path))
        self.sock.sendall(resp_encode('MONITOR'))
        self.data = bytearray()
        self.stopping = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        wait_for(lambda: self.data.startswith(b'+OK\r\n'), timeout=5, what='MONITOR to start')

    def _read(self):
        while not self.stopping:
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            self.data += chunk

    def close(self):
        self.stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(timeout=5)

    def commands(self):
        """[(source, [args...])] in execution order; source 'unix:...' or 'ip:port'."""
        out = []
        for raw in bytes(self.data).split(b'\r\n'):
            m = self.LINE.match(raw.decode(errors='replace'))
            if not m:
                continue
            args = [a.encode().decode('unicode_escape') for a in self.ARG.findall(m.group(4))]
            out.append((m.group(3), args))
        return out


def percentile(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]
