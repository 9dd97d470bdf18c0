# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures for the erb-agent tests: the agent built with its Makefile, the
test BPF object, and per test a private bpffs with pinned maps, a redis-server
on a unix socket (AOF, appendfsync always) and agents stopped at teardown."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import agentlib  # noqa: E402


@pytest.fixture(scope='session')
def agent_bin():
    if os.geteuid() != 0:
        pytest.fail('the agent tests need root (bpffs mount, BPF maps)')
    p = subprocess.run(['make', '-C', str(agentlib.AGENT_DIR)], capture_output=True, text=True, check=False)
    assert p.returncode == 0, 'make -C files/agent failed:\n%s\n%s' % (p.stdout, p.stderr)
    assert agentlib.AGENT_BIN.is_file()
    return agentlib.AGENT_BIN


@pytest.fixture(scope='session')
def test_obj(tmp_path_factory):
    return agentlib.build_test_object(tmp_path_factory.mktemp('bpfobj'))


class Env(object):
    def __init__(self, tmp, obj):
        self.tmp = Path(tmp)
        self.bpf = agentlib.BpfEnv(obj, self.tmp / 'bpffs')
        self.redis = agentlib.RedisProc(self.tmp / 'redis')
        try:
            self.redis.start()
        except BaseException:
            self.redis.kill()
            self.bpf.close()
            raise
        self.agents = []

    def agent(self, batch=256, extra=(), start=True):
        a = agentlib.Agent(self.bpf.pin_dir, self.redis.sock, self.tmp, batch=batch, extra=extra)
        self.agents.append(a)
        return a.start() if start else a

    def wait_applied(self, seq, timeout=30.0):
        agentlib.wait_for(lambda: self.bpf.applied_seq >= seq, timeout=timeout,
                          what='applied_seq to reach %d (now %d)' % (seq, self.bpf.applied_seq))

    def close(self):
        for a in self.agents:
            if a.alive():
                a.kill()
        self.redis.kill()
        self.bpf.close()


@pytest.fixture
def env(agent_bin, test_obj, tmp_path):
    e = Env(tmp_path, test_obj)
    yield e
    e.close()
