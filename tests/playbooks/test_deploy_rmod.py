# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/deploy.yml with erb_io_redis_module: erb_redis loaded into the fleet host's
redis-server as the I/O path, erb-agent assisting; a re-run changes nothing; rollback.yml
unloads it with every acknowledged write in Redis."""

import time

import pytest

from erb_conftest import BPF_OBJECT, require_bpf_objects

RMOD = {'erb_io_redis_module': True}


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

    again = ansible_playbook('deploy.yml', limit=h.name, extra_vars=RMOD)
    assert again.rc == 0, again.output[-6000:]
    assert again.recap[h.name]['changed'] == 0, again.output[-6000:]

    rb = ansible_playbook('rollback.yml', limit=h.name)
    assert rb.rc == 0, rb.output[-4000:]
    assert 'erbredis' not in modules(h)
    assert not h.has_xdp()
    assert h.redis_cli_local('GET', 'rmod:k') == 'v2'
