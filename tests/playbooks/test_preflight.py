# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The role's preflight against a real Redis of the local fleet: auth detection, and the
refusal of the fast path when ACL users exist whose GETs Redis itself would refuse."""

import pytest

pytestmark = [pytest.mark.fleet]

PLAYBOOK = """---
- name: Preflight only
  hosts: redis
  gather_facts: false
  tasks:
    - name: Run the role's preflight
      ansible.builtin.include_role:
        name: erb.booster.erb
        tasks_from: preflight
"""


@pytest.fixture
def preflight(fleet, ansible_playbook, tmp_path):
    pb = tmp_path / 'preflight.yml'
    pb.write_text(PLAYBOOK)
    host = fleet.hosts[0]

    def run(**extra_vars):
        return ansible_playbook(str(pb), extra_vars=extra_vars, limit=host.name)
    yield host, run
    # put Redis back as the fleet made it
    host.redis_cli_local('CONFIG', 'SET', 'requirepass', '', env={'REDISCLI_AUTH': 'erb-test-pw'})
    for user in ('erb_bob', 'erb_carol'):
        host.redis_cli_local('ACL', 'DELUSER', user)


def test_open_redis_passes_without_auth(preflight):
    host, run = preflight
    r = run()
    assert r.rc == 0, r.output[-4000:]
    assert 'Redis at %s:6379; clients must authenticate: False; ACL users: default' % host.server_ip in r.output


def test_restricted_key_patterns_refused(preflight):
    host, run = preflight
    assert host.redis_cli_local('ACL', 'SETUSER', 'erb_bob', 'on', '>pw', '~foo:*', '+@all') == 'OK'
    r = run()
    assert r.rc != 0
    assert 'limited key patterns for erb_bob' in r.output, r.output[-4000:]
    assert 'refuses to enable the fast path' in r.output


def test_user_without_get_refused(preflight):
    host, run = preflight
    assert host.redis_cli_local('ACL', 'SETUSER', 'erb_carol', 'on', '>pw', '~*', '+@all', '-get') == 'OK'
    r = run()
    assert r.rc != 0
    assert 'GET not allowed for erb_carol' in r.output, r.output[-4000:]


def test_requirepass_detected(preflight):
    host, run = preflight
    assert host.redis_cli_local('CONFIG', 'SET', 'requirepass', 'erb-test-pw') == 'OK'
    r = run()
    assert r.rc != 0
    assert 'requires authentication. Set erb_redis_password' in r.output, r.output[-4000:]
    r = run(erb_redis_password='erb-test-pw')
    assert r.rc == 0, r.output[-4000:]
    assert 'clients must authenticate: True' in r.output
    assert 'erb-test-pw' not in r.output, 'the password was logged'
