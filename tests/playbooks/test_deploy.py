# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/deploy.yml and rollback.yml on the local fleet, and ansible-lint's production
profile. The release artifact is tested in test_artifact.py."""

import json
import os
import signal
import sys
import time

import pytest

from erb_conftest import (BPF_OBJECT, REPO, bpf_programs, ensure_collection_link, require_bpf_objects,
                          run, venv_bin)


def loaded_prog_ids():
    return {p['id'] for p in bpf_programs()}


def prog_name(prog_id):
    return json.loads(run(['bpftool', '-j', 'prog', 'show', 'id', str(prog_id)]).stdout)['name']


def link_state(h):
    """{'xdp': (prog id, name) attached to the server interface as `ip link` reports it,
    'tc': (prog id, name) of the pinned tcx link} (None where absent). bpftool 7.1 does
    not list tcx attachments by device, so the tc side is read from ERB's pinned link."""
    link = json.loads(h.run(['ip', '-j', '-d', 'link', 'show', h.iface]).stdout)[0]
    xdp_id = link.get('xdp', {}).get('prog', {}).get('id')
    tc_pin = '/run/erb/bpffs/erb/%s/%s/link_tc' % (h.ns, h.iface)
    tc = None
    if os.path.exists(tc_pin):
        tc_link = json.loads(run(['bpftool', '-j', 'link', 'show', 'pinned', tc_pin]).stdout)
        assert tc_link['type'] in ('tcx', 11), tc_link  # 11: BPF_LINK_TYPE_TCX
        tc = (tc_link['prog_id'], prog_name(tc_link['prog_id']))
    return {'xdp': (xdp_id, prog_name(xdp_id)) if xdp_id else None, 'tc': tc}


def pins(h):
    base = '/run/erb/bpffs/erb/%s' % h.ns
    out = []
    for root, dirs, files in os.walk(base):
        out += [os.path.join(root, f) for f in files + dirs]
    return out


# The role's default I/O path (erb-agent drains the ring), whatever the local inventory chooses:
# these tests stop the agent to hold writes unapplied. test_deploy_rmod.py covers erb_redis.
AGENT_PATH = {'erb_io_redis_module': False}


@pytest.fixture(scope='module')
def deployed(fleet, ansible_playbook):
    """deploy.yml run once on the fleet; rollback.yml at the end whatever happened."""
    require_bpf_objects(BPF_OBJECT)
    first = ansible_playbook('deploy.yml', extra_vars=AGENT_PATH)
    yield first
    ansible_playbook('rollback.yml')


@pytest.mark.fleet
@pytest.mark.bpf
@pytest.mark.slow
class TestDeployRollback:
    def test_deploy_succeeds_on_every_host(self, fleet, deployed):
        assert deployed.rc == 0, deployed.output[-6000:]
        assert sorted(deployed.recap) == sorted(h.name for h in fleet.hosts)
        for host, counts in deployed.recap.items():
            assert counts['failed'] == 0 and counts['unreachable'] == 0, (host, counts)

    def test_fast_path_switched_on_in_place_after_the_io_path_was_proven(self, fleet, deployed):
        # erb_kmod defaults to false: the ring buffer and erb-agent, no kernel module built
        assert deployed.rc == 0, deployed.output[-6000:]
        out = deployed.output
        lines = [ln for ln in out.splitlines() if 'SET fast path on erbs' in ln and '"msg"' in ln]
        assert len(lines) == len(fleet.hosts), out[-6000:]
        assert all(': on - the I/O path (ring) proved that it applies writes' in ln for ln in lines), lines
        assert 'Build and load the erb_io kernel module' not in out and 'erb_io-src' not in out
        for h in fleet.hosts:
            # order on each host: the probe, the proof, then the fast path switched on
            probe = out.index('Store the probe key through %s' % h.iface)
            proven = out.index('Wait until the I/O path removed the stale entry', probe)
            switched = out.index('SET fast path on %s: on' % h.iface)
            assert probe < proven < switched
            meta = _meta(h)
            # the attach with the fast path off, then the switch: same links, only the config changed
            assert meta['config']['set_fast_path'] is True
            assert meta['previous']['config']['set_fast_path'] is False
            assert dict(meta['previous']['config'], set_fast_path=True) == meta['config']
            assert meta['previous']['object'] == meta['object']

    def test_xdp_and_tcx_attached_on_every_host(self, fleet, deployed):
        assert deployed.rc == 0, deployed.output[-6000:]
        for h in fleet.hosts:
            st = link_state(h)
            assert st['xdp'] and st['xdp'][1] == 'erb_xdp', (h.name, st)
            assert st['tc'] and st['tc'][1] == 'erb_tc_egress', (h.name, st)
            assert os.path.exists('/run/erb/bpffs/erb/%s/%s/link_xdp' % (h.ns, h.iface))

    def test_get_answered_in_xdp_and_identical_to_redis(self, fleet, deployed):
        assert deployed.rc == 0, deployed.output[-6000:]
        for h in fleet.hosts:
            assert h.redis_cli('SET', 'deploy:k', 'value-%s' % h.name) == 'OK'
            stats_before = _get_calls(h.redis_cli_local('INFO', 'commandstats'))
            for _unused in range(5):
                assert h.redis_cli('GET', 'deploy:k') == 'value-%s' % h.name
            stats_after = _get_calls(h.redis_cli_local('INFO', 'commandstats'))
            # the SET filled the cache: the GETs are answered in XDP and never reach Redis
            assert stats_after == stats_before, 'GETs reached Redis: %d' % (stats_after - stats_before)
            # a DEL through the interface invalidates the cached entry at XDP ingress
            assert h.redis_cli('DEL', 'deploy:k') == '1'
            assert h.redis_cli('GET', 'deploy:k') == ''

    def test_second_run_changes_nothing(self, fleet, deployed, ansible_playbook):
        assert deployed.rc == 0, deployed.output[-6000:]
        ids_before = {h.name: link_state(h) for h in fleet.hosts}
        second = ansible_playbook('deploy.yml', extra_vars=AGENT_PATH)
        assert second.rc == 0, second.output[-6000:]
        assert sorted(second.recap) == sorted(h.name for h in fleet.hosts)
        for host, counts in second.recap.items():
            assert counts['changed'] == 0, (host, counts, second.output[-6000:])
        assert {h.name: link_state(h) for h in fleet.hosts} == ids_before, \
            'programs were replaced on an unchanged run'

    def test_an_upgrade_across_a_layout_version_detaches_then_attaches(self, fleet, deployed, ansible_playbook):
        """Pinned state of another erb.h layout version (as an older release left it: another
        layout_version and object in its meta) cannot be taken over: deploy.yml drains and detaches
        it, stops the old agent and attaches afresh, instead of failing and rolling the host back."""
        assert deployed.rc == 0, deployed.output[-6000:]
        h = fleet.hosts[0]
        before = link_state(h)
        old = _write_meta(h, layout_version=_layout_version() - 1, object_sha256='0' * 64)
        assert old['layout_version'] == _layout_version() - 1
        up = ansible_playbook('deploy.yml', limit=h.name, extra_vars=AGENT_PATH)
        assert up.rc == 0, up.output[-6000:]
        out = up.output
        assert 'cannot be taken over (another layout version)' in out, out[-6000:]
        assert 'Drain and detach the pinned state on %s' % h.iface in out
        assert 'Stop the I/O agent of the detached state' in out
        meta = _meta(h)
        assert meta['layout_version'] == _layout_version() and meta['object']['sha256'] != '0' * 64
        after = link_state(h)
        assert after['xdp'] and after['xdp'][1] == 'erb_xdp' and after['tc'] and after['tc'][1] == 'erb_tc_egress'
        assert after['xdp'][0] != before['xdp'][0], 'the programs were not attached afresh'
        assert meta['config']['set_fast_path'] is True  # the I/O path proved itself again
        # answering again: a SET through XDP, then GETs answered in XDP
        assert h.redis_cli('SET', 'upgrade:k', 'v2') == 'OK'
        calls = _get_calls(h.redis_cli_local('INFO', 'commandstats'))
        assert h.redis_cli('GET', 'upgrade:k') == 'v2'
        assert _get_calls(h.redis_cli_local('INFO', 'commandstats')) == calls
        assert h.redis_cli('DEL', 'upgrade:k') == '1'

    def test_a_changed_ring_size_detaches_then_attaches_afresh(self, fleet, deployed, ansible_playbook):
        """erb_ring_bytes sizes erb_events, which live state sits in and which cannot be swapped
        in place: deploy.yml with another size drains and detaches, then attaches afresh with the
        new ring (and says why); back to the default the same way; answering in XDP after each."""
        assert deployed.rc == 0, deployed.output[-6000:]
        h = fleet.hosts[0]
        old = _meta(h)['config']['ring_bytes']
        for size in (1 << 20, old):
            before = link_state(h)
            up = ansible_playbook('deploy.yml', limit=h.name, extra_vars=dict(AGENT_PATH, erb_ring_bytes=size))
            assert up.rc == 0, up.output[-6000:]
            out = up.output
            assert 'cannot be taken over (ring_bytes %d -> %d)' % (old, size) in out, out[-6000:]
            assert 'Drain and detach the pinned state on %s' % h.iface in out
            meta = _meta(h)
            assert meta['config']['ring_bytes'] == size
            assert meta['config']['set_fast_path'] is True  # the I/O path proved itself again
            ring = json.loads(run(['bpftool', '-j', 'map', 'show', 'pinned',
                                   '/run/erb/bpffs/erb/%s/%s/map_erb_events' % (h.ns, h.iface)]).stdout)
            assert ring['max_entries'] == size, ring
            after = link_state(h)
            assert after['xdp'] and after['xdp'][1] == 'erb_xdp' and after['tc'], after
            assert after['xdp'][0] != before['xdp'][0], 'the programs were not attached afresh'
            # a fast SET acknowledged in XDP reaches Redis through the new ring; GETs answered in XDP
            key = 'ring:%d' % size
            assert h.redis_cli('SET', key, 'v') == 'OK'
            deadline = time.time() + 10
            while h.redis_cli_local('GET', key) != 'v':
                assert time.time() < deadline, 'the SET never reached Redis'
                time.sleep(0.05)
            calls = _get_calls(h.redis_cli_local('INFO', 'commandstats'))
            assert h.redis_cli('GET', key) == 'v'
            assert _get_calls(h.redis_cli_local('INFO', 'commandstats')) == calls
            assert h.redis_cli('DEL', key) == '1'
            old = size
        # the same size again: nothing to take over, nothing changed
        again = ansible_playbook('deploy.yml', limit=h.name, extra_vars=AGENT_PATH)
        assert again.rc == 0 and 'cannot be taken over' not in again.output, again.output[-6000:]
        assert again.recap[h.name]['changed'] == 0, again.output[-6000:]

    def test_a_rollback_with_unapplied_sets_keeps_erb_attached_until_they_are_in_redis(
            self, fleet, deployed, ansible_playbook):
        """A SET answered in XDP while the agent cannot apply it (stopped): the rollback's drain
        times out with it pending, and detaching would unpin the ring it sits in. The host's
        rollback fails saying so, ERB stays attached with answering off, and once the agent runs
        again the SET reaches Redis (the next test's rollback then detaches)."""
        assert deployed.rc == 0, deployed.output[-6000:]
        h = fleet.hosts[0]
        assert _meta(h)['config']['set_fast_path'] is True
        agent = _agent_pid(h)
        os.kill(agent, signal.SIGSTOP)
        try:
            assert h.redis_cli('SET', 'rollback:pending', 'acknowledged') == 'OK'
            assert h.redis_cli_local('EXISTS', 'rollback:pending') == '0'  # answered in XDP, not applied
            rb = ansible_playbook('rollback.yml', limit=h.name, extra_vars={'erb_drain_timeout': 2})
            assert rb.rc != 0, rb.output[-6000:]
            assert '1 acknowledged SET(s) were not applied to Redis' in rb.output, rb.output[-6000:]
            assert 'ERB stays attached to %s with answering off' % h.iface in rb.output
            st = link_state(h)
            assert st['xdp'] and st['tc'], st
            assert _meta(h)['config']['answer'] is False
            assert h.redis_cli_local('EXISTS', 'rollback:pending') == '0'
        finally:
            os.kill(agent, signal.SIGCONT)
        deadline = time.time() + 30
        while h.redis_cli_local('GET', 'rollback:pending') != 'acknowledged':
            assert time.time() < deadline, 'the acknowledged SET never reached Redis'
            time.sleep(0.1)
        assert h.redis_cli('GET', 'rollback:pending') == 'acknowledged'  # Redis answers now
        assert h.redis_cli('DEL', 'rollback:pending') == '1'

    def test_rollback_leaves_no_program_and_no_pin(self, fleet, deployed, ansible_playbook):
        assert deployed.rc == 0, deployed.output[-6000:]
        attached = {h.name: link_state(h) for h in fleet.hosts}
        rb = ansible_playbook('rollback.yml')
        assert rb.rc == 0, rb.output[-6000:]
        # the fleet is not tuned (veth): no saved tuning to restore, and no warning about its absence
        assert "Skipped '" not in rb.output and 'is not a directory' not in rb.output, rb.output[-6000:]
        loaded = loaded_prog_ids()
        for h in fleet.hosts:
            assert link_state(h) == {'xdp': None, 'tc': None}, h.name
            assert pins(h) == [], pins(h)
            # the programs ERB had attached are unloaded (nothing else holds them)
            assert attached[h.name]['xdp'][0] not in loaded
            assert attached[h.name]['tc'][0] not in loaded
            assert not os.path.exists('/run/erb/fleet/r%d/lib/erb.bpf.o' % h.index)
            # Redis still answers, now by itself
            assert h.redis_cli('PING') == 'PONG'
        # rollback again: nothing to do, nothing changed
        again = ansible_playbook('rollback.yml')
        assert again.rc == 0, again.output[-6000:]
        for host, counts in again.recap.items():
            assert counts['changed'] == 0, (host, counts)


def _collection():
    """The collection's erb_loader and erb_layout modules."""
    sys.path.insert(0, str(REPO / 'tests' / 'loader'))
    from collection_path import ensure_collection_path
    ensure_collection_path()
    from ansible_collections.erb.booster.plugins.module_utils import erb_layout, erb_loader
    return erb_loader, erb_layout


def _meta(h):
    """The meta record erb.booster.bpf pinned for h's interface."""
    return _collection()[0].read_meta('/run/erb/bpffs/erb/%s/%s' % (h.ns, h.iface))


def _write_meta(h, **changes):
    """Rewrite h's pinned meta record (layout_version=..., object_sha256=...); returns it."""
    erb_loader = _collection()[0]
    d = '/run/erb/bpffs/erb/%s/%s' % (h.ns, h.iface)
    meta = erb_loader.read_meta(d)
    if 'layout_version' in changes:
        meta['layout_version'] = changes['layout_version']
    if 'object_sha256' in changes:
        meta['object']['sha256'] = changes['object_sha256']
    fd = erb_loader.open_pinned(os.path.join(d, erb_loader.META))
    assert fd is not None, 'no meta pinned in %s' % d
    try:
        erb_loader.write_meta(fd, meta)
    finally:
        os.close(fd)
    return erb_loader.read_meta(d)


def _agent_pid(h):
    """The erb-agent process its supervisor (pid file) runs for h."""
    with open('/run/erb/fleet/r%d/run/agent-%s.pid' % (h.index, h.iface)) as f:
        supervisor = int(f.read())
    pids = run(['pgrep', '-P', str(supervisor), '-x', 'erb-agent']).stdout.split()
    assert len(pids) == 1, pids
    return int(pids[0])


def _layout_version():
    return _collection()[1].ERB_LAYOUT_VERSION


def _get_calls(commandstats):
    for line in commandstats.splitlines():
        if line.startswith('cmdstat_get:'):
            return int(line.split('calls=')[1].split(',')[0])
    return 0


def test_ansible_lint_production_passes():
    ensure_collection_link()
    p = run([venv_bin('ansible-lint'), '--profile', 'production', '--offline'], check=False, cwd=REPO,
            timeout=600, env={'ANSIBLE_CONFIG': str(REPO / 'ansible.cfg'), 'NO_COLOR': '1'})
    assert p.returncode == 0, p.stdout[-8000:] + p.stderr[-4000:]
