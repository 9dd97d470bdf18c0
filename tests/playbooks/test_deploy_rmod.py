# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/deploy.yml with erb_io_redis_module: erb_redis loaded into the fleet host's
redis-server as the I/O path, erb-agent assisting; a re-run changes nothing; rollback.yml
unloads it with every acknowledged write in Redis."""

import os
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest

from erb_conftest import BPF_OBJECT, require_bpf_objects

RMOD = {'erb_io_redis_module': True}
UNPRIVILEGED_PORT = 6380


def modules(h):
    return h.redis_cli_local('MODULE', 'LIST').split()


def rmod_info(h):
    out = h.redis_cli_local('INFO', 'erbredis')
    return dict(line.split(':', 1) for line in out.splitlines() if ':' in line)


def agent_log(h):
    return (h.dir / 'run' / ('agent-%s.log' % h.iface)).read_text()


@pytest.fixture(scope='module')
def host(fleet, ansible_playbook):
    require_bpf_objects(BPF_OBJECT)
    h = fleet.hosts[0]
    if h.has_xdp():
        rb = ansible_playbook('rollback.yml', limit=h.name)
        assert rb.rc == 0, rb.output[-4000:]
    yield h
    ansible_playbook('rollback.yml', limit=h.name)


@pytest.mark.fleet
@pytest.mark.bpf
def test_deploy_loads_erb_redis_the_agent_assists_and_rollback_unloads_it(host, ansible_playbook):
    h = host
    dep = ansible_playbook('deploy.yml', limit=h.name, extra_vars=RMOD)
    assert dep.rc == 0, dep.output[-6000:]
    assert 'erbredis' in modules(h)
    i = rmod_info(h)
    assert i['erbredis_maps_current'] == '1' and i['erbredis_errors'] == '0'
    assert 'only assists' in agent_log(h)
    names = h.redis_cli_local('CLIENT', 'LIST')
    assert 'name=erb-agent-assist ' in names and 'name=erb-agent ' not in names

    # a SET answered in XDP reaches Redis through the module; a change on the host's own
    # socket (where XDP cannot see it) is invalidated before the next read through XDP
    applied = int(i['erbredis_applied'])
    assert h.redis_cli('SET', 'rmod:k', 'v1') == 'OK'
    deadline = time.monotonic() + 10
    while h.redis_cli_local('GET', 'rmod:k') != 'v1':
        assert time.monotonic() < deadline, 'the fast SET never reached Redis'
        time.sleep(0.05)
    assert h.redis_cli('GET', 'rmod:k') == 'v1'
    assert h.redis_cli_local('SET', 'rmod:k', 'v2') == 'OK'
    assert h.redis_cli('GET', 'rmod:k') == 'v2'
    assert int(rmod_info(h)['erbredis_applied']) > applied

    # ordered mode: a command right after its key's SET answered in XDP is not held; Redis runs it
    # after that SET, which erb_redis's command filter applies first (else its tick, ms later)
    assert i['erbredis_ordered'] == '1'
    before = int(rmod_info(h)['erbredis_applied_before_command'])
    for n in range(20):
        out = h.redis_cli(input='SET rmod:n%d 5\nINCR rmod:n%d\n' % (n, n)).split()
        assert out == ['OK', '6'], out
    assert int(rmod_info(h)['erbredis_applied_before_command']) > before

    again = ansible_playbook('deploy.yml', limit=h.name, extra_vars=RMOD)
    assert again.rc == 0, again.output[-6000:]
    assert again.recap[h.name]['changed'] == 0, again.output[-6000:]

    rb = ansible_playbook('rollback.yml', limit=h.name)
    assert rb.rc == 0, rb.output[-4000:]
    assert 'erbredis' not in modules(h)
    assert not h.has_xdp()
    assert h.redis_cli_local('GET', 'rmod:k') == 'v2'


@pytest.fixture
def unprivileged_redis(host):
    """A second redis-server in the host's namespace, as user redis with no capabilities (as
    Debian's redis-server.service runs it), on port 6380."""
    d = tempfile.mkdtemp(prefix='erb-redis-user-')
    os.chmod(d, 0o755)
    shutil.chown(d, 'redis', 'redis')
    argv = ['ip', 'netns', 'exec', host.ns, 'setpriv', '--reuid=redis', '--regid=redis', '--clear-groups',
            '--inh-caps=-all', '--bounding-set=-all', 'redis-server', '--port', str(UNPRIVILEGED_PORT),
            '--bind', host.server_ip, '--unixsocket', d + '/redis.sock', '--unixsocketperm', '777', '--dir', d,
            '--save', '', '--appendonly', 'no', '--protected-mode', 'no', '--enable-module-command', 'local', '--daemonize', 'no',
            '--logfile', d + '/redis.log']
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while host.run(['redis-cli', '-s', d + '/redis.sock', 'PING'], check=False).stdout.strip() != 'PONG':
            assert proc.poll() is None and time.monotonic() < deadline, 'redis-server as user redis did not start'
            time.sleep(0.05)
        yield d
    finally:
        proc.kill()
        proc.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.fleet
@pytest.mark.bpf
def test_a_redis_that_cannot_open_the_maps_is_refused_with_the_reason(host, ansible_playbook, unprivileged_redis):
    """redis-server as user redis without CAP_BPF (kernel.unprivileged_bpf_disabled is not 0 here)
    cannot open ERB's root-owned pins: preflight refuses erb_io_redis_module, says why and what to
    do, before anything is attached."""
    with open('/proc/sys/kernel/unprivileged_bpf_disabled') as f:
        assert f.read().strip() != '0', 'this test needs unprivileged bpf() off (the Debian default, 2)'
    dep = ansible_playbook('deploy.yml', limit=host.name,
                           extra_vars=dict(RMOD, erb_redis_port=UNPRIVILEGED_PORT,
                                           erb_redis_socket=unprivileged_redis + '/redis.sock'))
    assert dep.rc != 0
    out = dep.output
    assert 'Check that redis-server can open' in out, out[-6000:]
    assert 'runs as uid %d, not root and without CAP_DAC_OVERRIDE' % pwd.getpwnam('redis').pw_uid in out, out[-6000:]
    assert 'without CAP_BPF while kernel.unprivileged_bpf_disabled is' in out, out[-6000:]
    assert 'Set erb_io_redis_module to false' in out, out[-6000:]
    assert not host.has_xdp()
