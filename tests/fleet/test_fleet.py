# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The local test fleet (inventory/local/fleet.sh): idempotent `up`, Redis reachable from
the client namespace across the veth, and `down` leaving nothing behind."""

import json
import os

import pytest

from erb_conftest import FLEET_DIR, FLEET_SH, fleet_is_up, netns_exists, pid_alive, run

pytestmark = [pytest.mark.fleet]


def host_view(h):
    """What `up` made for host h, as a user would inspect it."""
    links = json.loads(h.run(['ip', '-j', '-d', 'link', 'show', h.iface]).stdout)[0]
    addrs = json.loads(h.run(['ip', '-j', '-4', 'addr', 'show', h.iface]).stdout)[0]['addr_info']
    c_links = json.loads(h.client_run(['ip', '-j', '-d', 'link', 'show', h.client_iface]).stdout)[0]
    return {'pid': h.redis_pid, 'ifindex': links['ifindex'], 'addrs': [(a['local'], a['prefixlen']) for a in addrs],
            'client_xdp': c_links.get('xdp', {}).get('prog', {}).get('id')}


def test_up_is_idempotent(fleet):
    before = {h.name: host_view(h) for h in fleet.hosts}
    out = fleet.up().stdout
    after = {h.name: host_view(h) for h in fleet.hosts}
    assert after == before, 'a second `up` changed the fleet'
    assert 'created' not in out and 'attached' not in out and 'running (pid' not in out, out
    assert fleet.status().returncode == 0


def test_hosts_are_made_as_specified(fleet):
    for h in fleet.hosts:
        v = host_view(h)
        assert v['addrs'] == [(h.server_ip, 24)]
        client_addrs = json.loads(h.client_run(['ip', '-j', '-4', 'addr', 'show', h.client_iface]).stdout)
        assert [(a['local'], a['prefixlen']) for a in client_addrs[0]['addr_info']] == [(h.client_ip, 24)]
        assert v['client_xdp'], 'no XDP program on the client end %s' % h.client_iface
        feats = h.client_run(['ethtool', '-k', h.client_iface]).stdout
        assert 'tx-checksumming: off' in feats
        # redis runs inside the host's namespace, daemonized with its pid file
        ns_inode = os.stat('/run/netns/%s' % h.ns).st_ino
        assert os.stat('/proc/%d/ns/net' % h.redis_pid).st_ino == ns_inode
        cfg = dict(zip(*[iter(h.redis_cli_local('CONFIG', 'GET', '*').splitlines())] * 2))
        assert cfg['appendonly'] == 'yes'
        assert cfg['appendfsync'] == 'everysec'
        assert cfg['bind'] == h.server_ip
        assert cfg['dir'] == str(h.dir / 'data')


def test_redis_reachable_from_client_over_veth(fleet):
    for h in fleet.hosts:
        assert h.redis_cli('PING') == 'PONG'
        assert h.redis_cli('SET', 'fleet:test', h.name) == 'OK'
        assert h.redis_cli('GET', 'fleet:test') == h.name
        # the same key seen from inside the host over the unix socket: one Redis
        assert h.redis_cli_local('GET', 'fleet:test') == h.name
        # the client really connects from its own address across the veth
        assert 'addr=%s:' % h.client_ip in h.redis_cli('CLIENT', 'INFO')
        assert h.redis_cli_local('DEL', 'fleet:test') == '1'


def test_client_namespaces_keep_no_rtt_history(fleet):
    """Linux caches a destination's RTT when a connection closes and seeds the next
    connection's first RTO with about three times it: after one connection that took a ~1 s
    RTT sample (a lost SYN-ACK), new connections started with a first RTO of 1-2 s, and a lost
    first request cost that (seen in the chaos test, on either host). The client namespaces
    keep no such history (net.ipv4.tcp_no_metrics_save), so side-by-side runs start alike."""
    for h in fleet.hosts:
        assert h.client_run(['sysctl', '-n', 'net.ipv4.tcp_no_metrics_save']).stdout.strip() == '1'
        assert h.redis_cli('PING') == 'PONG'  # a connection made and closed
        cached = h.client_run(['ip', 'tcp_metrics', 'show']).stdout
        assert h.server_ip not in cached, 'the client namespace cached an RTT for %s: %s' % (h.server_ip, cached)


def test_hosts_are_isolated(fleet):
    if len(fleet.hosts) < 2:
        pytest.fail('fleet too small for this test')
    a, b = fleet.hosts[0], fleet.hosts[1]
    p = a.client_run(['redis-cli', '-h', b.server_ip, '-p', '6379', 'PING'], check=False, timeout=30)
    assert 'PONG' not in p.stdout


def test_down_leaves_nothing_then_up_again(fleet):
    pids = [h.redis_pid for h in fleet.hosts]
    bpffs_mounted_before_fleet = 'mount /sys/fs/bpf' not in (FLEET_DIR / 'made').read_text()
    fleet.down()
    for h in fleet.hosts:
        assert not netns_exists(h.ns) and not netns_exists(h.client_ns)
    for pid in pids:
        assert not pid_alive(pid)
    assert not FLEET_DIR.exists()
    mounts = open('/proc/self/mounts').read()
    assert ' /run/erb/bpffs ' not in mounts
    assert (' /sys/fs/bpf ' in mounts) == bpffs_mounted_before_fleet
    links = run(['ip', '-o', 'link', 'show']).stdout
    assert 'erbs' not in links and 'erbc' not in links
    assert run(['bash', FLEET_SH, 'status'], check=False).returncode != 0
    # a second down is a no-op
    assert fleet.down().returncode == 0
    # bring it back for the rest of the session
    fleet.up()
    assert fleet_is_up()
    for h in fleet.hosts:
        assert h.redis_cli('PING') == 'PONG'
