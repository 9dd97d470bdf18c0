# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""deploy.yml when the I/O path cannot come up: the agent's build is pointed at a broken source.
While the deployment runs, a client keeps sending SETs through the interface on new connections
(ERB tracks connections opened after it attached). The role attaches with the SET fast path off,
so until the agent runs every SET goes to Redis: the failed host reports 0 SETs answered in XDP
before its rollback, with SETs seen by ERB (fills) at the same time, every acknowledged SET is in
Redis, the failed host is rolled back, the rollout stops, and the next host is never touched."""

import json
import os
import shutil
import threading

import pytest

from erb_conftest import BPF_OBJECT, REPO, require_bpf_objects, run, tree_snapshot

pytestmark = [pytest.mark.fleet, pytest.mark.bpf, pytest.mark.slow]


class SetLoop(threading.Thread):
    """SET k<i> v<i> from the client namespace, one redis-cli (one connection) per SET, until stopped.
    Records the keys Redis (or ERB) acknowledged with OK."""

    def __init__(self, host, prefix):
        super(SetLoop, self).__init__(daemon=True)
        self.host, self.prefix = host, prefix
        self.acked = {}
        self.stopping = threading.Event()

    def run(self):
        i = 0
        while not self.stopping.is_set():
            key, value = '%s:%d' % (self.prefix, i), 'v%d' % i
            p = self.host.client_run(['redis-cli', '-h', self.host.server_ip, '-p', '6379', 'SET', key, value],
                                     check=False, timeout=30)
            if p.stdout.strip() == 'OK':
                self.acked[key] = value
            i += 1

    def stop(self):
        self.stopping.set()
        self.join(60)


def pins(h):
    return os.path.exists('/run/erb/bpffs/erb/%s/%s' % (h.ns, h.iface))


@pytest.fixture
def broken_agent_src(tmp_path):
    """A copy of files/agent (with the headers at ../bpf) whose erb-agent.c does not compile."""
    agent, bpf = tmp_path / 'agent', tmp_path / 'bpf'
    shutil.copytree(REPO / 'files' / 'agent', agent, ignore=shutil.ignore_patterns('erb-agent'))
    bpf.mkdir()
    for h in ('erb.h', 'erb_record.h', 'erb_cache_user.h'):
        shutil.copy(REPO / 'files' / 'bpf' / h, bpf / h)
    with open(agent / 'erb-agent.c', 'a') as f:
        f.write('\n#error "this agent source is broken on purpose (tests/playbooks/test_rollout_order.py)"\n')
    return agent


def test_failed_agent_answers_no_set_and_rolls_back(fleet, ansible_playbook, broken_agent_src):
    require_bpf_objects(BPF_OBJECT)
    assert ansible_playbook('rollback.yml').rc == 0
    first, second = fleet.hosts[0], fleet.hosts[1]
    loop = SetLoop(first, 'order')
    loop.start()
    try:
        r = ansible_playbook('deploy.yml', extra_vars={'erb_agent_src_dir': broken_agent_src})
    finally:
        loop.stop()
    out = r.output
    print('\n'.join(line for line in out.splitlines()
                    if 'before its rollback' in line or 'broken on purpose' in line
                    or 'rollout stops' in line)[:4000])
    assert r.rc != 0, out[-6000:]
    # it failed at the agent's build, after the attach
    assert 'broken on purpose' in out, out[-6000:]
    assert 'ERB failed on %s at "Build the agent on the host"' % first.name in out, out[-6000:]
    # before its rollback: ERB was attached with the fast path off and answered no SET,
    # while it saw SETs go through (filled after Redis's +OK)
    report = [ln for ln in out.splitlines() if '%s before its rollback' % first.name in ln]
    assert report, out[-6000:]
    line = report[-1]
    assert 'ERB attached' in line and 'SET fast path off' in line, line
    assert 'SETs answered in XDP: 0;' in line, line
    # the cause comes before the rollback runs (a rollback that fails too cannot hide it)
    assert 'It failed at "Build the agent on the host"' in line.replace('\\"', '"'), line
    fills = int(line.split('SETs filled after Redis\'s +OK:')[1].split(';')[0])
    assert fills > 0, 'no SET crossed ERB during the deployment: %s' % line
    # every SET acknowledged during the deployment is in Redis
    assert len(loop.acked) > 0
    missing = {k: v for k, v in loop.acked.items() if first.redis_cli_local('GET', k) != v}
    assert not missing, 'acknowledged SETs missing in Redis: %s' % sorted(missing)[:10]
    # the failed host is rolled back, the rollout stopped there: the next host was never touched
    assert r.recap[first.name]['rescued'] == 1, r.recap
    assert not pins(first), 'erb-r1 still has ERB pins'
    assert not os.path.exists(first.dir / 'lib' / 'erb.bpf.o')
    assert not os.path.exists(first.dir / 'run' / ('agent-%s.pid' % first.iface))
    assert second.name not in r.recap or r.recap[second.name].get('changed', 0) == 0, r.recap
    assert not pins(second), 'the rollout went on to erb-r2'
    for k in loop.acked:
        first.redis_cli_local('DEL', k)


def test_check_mode_and_idempotence(fleet, ansible_playbook):
    """--check on the undeployed and on the deployed fleet changes nothing (links, programs, pins,
    installed files, the agent, Redis's keys); a second deploy reports no change."""
    require_bpf_objects(BPF_OBJECT)
    assert ansible_playbook('rollback.yml').rc == 0
    recaps = {}
    before = fleet_state(fleet)
    for pb in ('deploy.yml', 'rollback.yml'):
        r = ansible_playbook(pb, args=['--check'])
        assert r.rc == 0, (pb, r.output[-6000:])
        recaps['%s --check, undeployed' % pb] = r.recap
        assert fleet_state(fleet) == before, '%s --check changed the undeployed fleet' % pb
    assert recaps['rollback.yml --check, undeployed'] and all(
        c['changed'] == 0 for c in recaps['rollback.yml --check, undeployed'].values())

    first = ansible_playbook('deploy.yml')
    try:
        assert first.rc == 0, first.output[-6000:]
        second = ansible_playbook('deploy.yml')
        assert second.rc == 0, second.output[-6000:]
        recaps['deploy.yml, second run'] = second.recap
        assert all(c['changed'] == 0 for c in second.recap.values()), (second.recap, _changed(second.output))
        before = fleet_state(fleet)
        assert all(s['pins'] for s in before.values())
        for pb in ('deploy.yml', 'rollback.yml'):
            r = ansible_playbook(pb, args=['--check'])
            assert r.rc == 0, (pb, r.output[-6000:])
            recaps['%s --check, deployed' % pb] = r.recap
            assert fleet_state(fleet) == before, '%s --check changed the deployed fleet' % pb
            if pb == 'deploy.yml':
                assert all(c['changed'] == 0 for c in r.recap.values()), (r.recap, _changed(r.output))
    finally:
        assert ansible_playbook('rollback.yml').rc == 0
    for what, recap in recaps.items():
        print('%-36s %s' % (what, ' '.join('%s: changed=%d failed=%d' % (h, c['changed'], c['failed'])
                                           for h, c in sorted(recap.items()))))


def _changed(output):
    lines, task = [], None
    for line in output.splitlines():
        if line.startswith('TASK ['):
            task = line
        elif line.startswith('changed:'):
            lines.append('%s %s' % (task, line))
    return '\n'.join(lines)


def fleet_state(fleet):
    """What a --check run must leave as it is, per host."""
    state = {}
    for h in fleet.hosts:
        link = run(['ip', '-n', h.ns, '-j', '-d', 'link', 'show', h.iface]).stdout
        xdp = json.loads(link)[0].get('xdp', {}).get('prog', {}).get('id')
        pidf = h.dir / 'run' / ('agent-%s.pid' % h.iface)
        state[h.name] = {
            'xdp_prog': xdp,
            'pins': tree_snapshot('/run/erb/bpffs/erb/%s' % h.ns),
            'lib': tree_snapshot(h.dir / 'lib'),
            'conf': tree_snapshot(h.dir / 'etc'),
            'agent_pid': pidf.read_text() if pidf.exists() else None,
            'keys': h.redis_cli_local('DBSIZE'),
        }
    return state
