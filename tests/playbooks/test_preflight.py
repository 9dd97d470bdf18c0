# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The role's preflight against a real Redis of the local fleet: auth detection, the
refusal of the fast path when ACL users exist whose GETs Redis itself would refuse, the
SET fast path left off where Redis would refuse such SETs (ACL users, a replica), and the
noeviction warning."""

import hashlib

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
    policy = host.redis_cli_local('CONFIG', 'GET', 'maxmemory-policy').split()[-1]

    def run(args=(), **extra_vars):
        return ansible_playbook(str(pb), extra_vars=extra_vars, limit=host.name, args=args)
    yield host, run
    # put Redis back as the fleet made it
    host.redis_cli_local('CONFIG', 'SET', 'requirepass', '', env={'REDISCLI_AUTH': 'erb-test-pw'})
    for user in ('erb_bob', 'erb_carol', 'erb_dave', 'erb_erin'):
        host.redis_cli_local('ACL', 'DELUSER', user)
    host.redis_cli_local('REPLICAOF', 'NO', 'ONE')
    host.redis_cli_local('CONFIG', 'SET', 'maxmemory', '0')
    host.redis_cli_local('CONFIG', 'SET', 'maxmemory-policy', policy)


def test_open_redis_passes_without_auth(preflight):
    host, run = preflight
    r = run()
    assert r.rc == 0, r.output[-4000:]
    assert 'Redis at %s:6379; clients must authenticate: False; ACL users: default' % host.server_ip in r.output
    assert 'SET fast path allowed: True' in r.output
    assert 'SET fast path off on' not in r.output and 'WARNING: Redis on' not in r.output


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


def test_read_only_user_leaves_the_set_fast_path_off(preflight):
    # %R~*: may GET every key (GET acceleration stays) but SET none
    host, run = preflight
    assert host.redis_cli_local('ACL', 'SETUSER', 'erb_dave', 'on', '>pw', '%R~*', '+@all') == 'OK'
    r = run()
    assert r.rc == 0, r.output[-4000:]
    assert ('SET fast path off on %s: ACL users limited to some keys or read-only (SETs answered in XDP skip '
            'the ACL checks of Redis): erb_dave' % host.name) in r.output, r.output[-4000:]
    assert 'SET fast path allowed: False' in r.output


def test_user_without_set_leaves_the_set_fast_path_off(preflight):
    host, run = preflight
    assert host.redis_cli_local('ACL', 'SETUSER', 'erb_erin', 'on', '>pw', '~*', '+@all', '-set') == 'OK'
    r = run()
    assert r.rc == 0, r.output[-4000:]
    assert 'SET not allowed for erb_erin' in r.output
    assert 'SET fast path allowed: False' in r.output


def test_replica_leaves_the_set_fast_path_off(preflight):
    host, run = preflight
    assert host.redis_cli_local('REPLICAOF', '127.0.0.1', '1') == 'OK'
    r = run()
    assert r.rc == 0, r.output[-4000:]
    assert 'Redis is a replica (role:slave)' in r.output
    assert 'SET fast path allowed: False' in r.output


def test_noeviction_with_maxmemory_warns(preflight):
    host, run = preflight
    assert host.redis_cli_local('CONFIG', 'SET', 'maxmemory', '512mb') == 'OK'
    assert host.redis_cli_local('CONFIG', 'SET', 'maxmemory-policy', 'noeviction') == 'OK'
    r = run()
    assert r.rc == 0, r.output[-4000:]
    assert 'WARNING: Redis on %s has maxmemory 536870912 with maxmemory-policy noeviction' % host.name in r.output
    assert 'SET fast path allowed: True' in r.output


def test_acl_password_hashes_are_never_printed(preflight):
    # verbose, and failing on a restricted user: still no hash in the output
    host, run = preflight
    assert host.redis_cli_local('ACL', 'SETUSER', 'erb_bob', 'on', '>erb-bob-pw', '~foo:*', '+@all') == 'OK'
    r = run(args=('-vv',))
    assert r.rc != 0
    assert 'limited key patterns for erb_bob' in r.output, r.output[-4000:]
    digest = hashlib.sha256(b'erb-bob-pw').hexdigest()
    assert digest not in r.output, 'an ACL LIST password hash was printed'
