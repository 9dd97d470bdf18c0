# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fault harness for the local test fleet: loss, duplication, reordering and delay, per
direction, on the client <-> Redis path of fleet host i (veth erbc<i> in erb-c<i>).
Usable from tests and from bench/ (put tests/fault on sys.path).

    from fault_harness import FaultLink, Faults
    with Faults([1, 2]) as f:                      # one FaultLink per host, same faults
        f.set(c2s={'loss': 0.02, 'dup': 0.01}, s2c={'loss': 0.02})
        ...workload...
        print(f.stats())                           # {1: {'c2s': {...}, 's2c': {...}}, 2: ...}
        f.set()                                    # all off again

Knobs, per direction (c2s: client -> Redis, s2c: Redis -> client), 0 when not given:
  loss        probability that a segment is dropped
  dup         probability that a segment is also sent a second time
  reorder     probability that a segment is held back reorder_ms (default 10) while the
              ones after it go on
  delay_ms    every segment held this long (not together with reorder)
  jitter_ms   plus a uniform 0..jitter_ms on each hold (with delay_ms this reorders too)
Only IPv4 TCP segments to/from the Redis port are touched. The BPF programs and the delay
line are described in fault.bpf.c and fault_daemon.py.

Counters per direction: seen, dropped, duplicated, detoured (sent round the delay line),
returned (back from it), errors, held / sent (by the delay line), holding (now), overflow
(frames the delay line's socket had no room for: unplanned loss, both directions).
"""

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OBJECT = HERE / 'fault.bpf.o'
DAEMON = HERE / 'fault_daemon.py'
SYSTEM_PYTHON = '/usr/bin/python3'


def build():
    """make -C tests/fault (fault.bpf.o); returns its path."""
    p = subprocess.run(['make', '-s', '-C', str(HERE)], capture_output=True, text=True, check=False)
    if p.returncode != 0 or not OBJECT.is_file():
        raise RuntimeError('building %s failed:\n%s%s' % (OBJECT, p.stdout, p.stderr))
    return OBJECT


class FaultError(RuntimeError):
    pass


class FaultLink(object):
    """The fault injector of one fleet host (a fault_daemon.py process in erb-c<index>)."""

    def __init__(self, index, port=6379, python=None):
        self.index = index
        self.port = port
        self.python = python or (SYSTEM_PYTHON if os.path.exists(SYSTEM_PYTHON) else sys.executable)
        self.proc = None
        self.knobs = {}

    @property
    def client_ns(self):
        return 'erb-c%d' % self.index

    def start(self, timeout=20.0):
        build()
        self.proc = subprocess.Popen(
            ['ip', 'netns', 'exec', self.client_ns, self.python, str(DAEMON), '--index', str(self.index),
             '--object', str(OBJECT), '--port', str(self.port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        rep = self._read(timeout)
        if not rep.get('ready'):
            raise FaultError('fault_daemon for %s did not start: %s' % (self.client_ns, rep))
        return self

    def _read(self, timeout):
        deadline = time.monotonic() + timeout
        line = b''
        while not line.endswith(b'\n'):
            left = deadline - time.monotonic()
            r, _unused, _unused = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not r:
                raise FaultError('fault_daemon (%s) did not answer within %.0f s' % (self.client_ns, timeout))
            b = os.read(self.proc.stdout.fileno(), 1)
            if not b:
                err = self.proc.stderr.read().decode(errors='replace')
                raise FaultError('fault_daemon (%s) exited (%s):\n%s' % (self.client_ns, self.proc.wait(), err))
            line += b
        rep = json.loads(line)
        if not rep.get('ok'):
            raise FaultError('fault_daemon (%s): %s' % (self.client_ns, rep.get('error')))
        return rep

    def request(self, obj, timeout=10.0):
        if self.proc is None or self.proc.poll() is not None:
            raise FaultError('fault_daemon for %s is not running' % self.client_ns)
        self.proc.stdin.write((json.dumps(obj) + '\n').encode())
        return self._read(timeout)

    def set(self, c2s=None, s2c=None):
        """Replace the faults of both directions (knobs not given are 0: set() clears all)."""
        rep = self.request({'op': 'set', 'c2s': c2s or {}, 's2c': s2c or {}})
        self.knobs = rep['knobs']
        return self.knobs

    def stats(self):
        return self.request({'op': 'stats'})['stats']

    def stop(self, timeout=20.0):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()


class Faults(object):
    """The same faults on several fleet hosts at once."""

    def __init__(self, indexes, port=6379):
        self.links = {i: FaultLink(i, port) for i in indexes}

    def start(self):
        try:
            for link in self.links.values():
                link.start()
        except BaseException:
            self.stop()
            raise
        return self

    def set(self, c2s=None, s2c=None):
        for link in self.links.values():
            link.set(c2s, s2c)

    def stats(self):
        return {i: link.stats() for i, link in self.links.items()}

    def stop(self):
        for link in self.links.values():
            link.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def nstat(ns):
    """`nstat -asz` inside a namespace (absolute counters, zeros included; the history file untouched) as text."""
    p = subprocess.run(['ip', 'netns', 'exec', ns, 'nstat', '-asz'], capture_output=True, text=True, check=False)
    return p.stdout if p.returncode == 0 else 'nstat failed: %s' % p.stderr


def nstat_values(ns, names=None):
    """{counter: value} from `nstat -az` in ns (only names, when given)."""
    out = {}
    for line in nstat(ns).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit() and (names is None or parts[0] in names):
            out[parts[0]] = int(parts[1])
    return out
