# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The fault harness itself (fault_harness.py) on the local fleet, without ERB: each fault
does to real veth traffic what it says, per direction, its counters say so, and stopping
it puts the client end back as it was."""

import json
import sys
import time

import pytest

from erb_conftest import REDIS_PORT, REPO, wait_for
from fault_harness import FaultError, FaultLink, nstat_values

sys.path.insert(0, str(REPO / 'tests' / 'integration'))
from erb_itest import RespConn  # noqa: E402

pytestmark = [pytest.mark.fleet, pytest.mark.bpf]


def client_end(h):
    """What the harness may change on the client end, as `ip`/`ethtool` report it."""
    link = json.loads(h.client_run(['ip', '-j', '-d', 'link', 'show', h.client_iface]).stdout)[0]
    feats = {}
    for line in h.client_run(['ethtool', '-k', h.client_iface]).stdout.splitlines():
        name, _unused, val = line.partition(':')
        if name.strip() in ('generic-segmentation-offload', 'tcp-segmentation-offload',
                            'generic-receive-offload'):
            feats[name.strip()] = val.split()[0]
    links = [ln.split(':')[1].strip() for ln in h.client_run(['ip', '-o', 'link']).stdout.splitlines()]
    return {'xdp': link.get('xdp', {}).get('prog', {}).get('id'), 'features': feats, 'links': sorted(links)}


@pytest.fixture
def host(fleet):
    h = fleet.hosts[1]
    assert not h.has_xdp(), 'ERB is attached to %s: this test wants Redis alone' % h.iface
    return h


def settled(f):
    """Counters once the connection's last segments (FIN, ACKs) are through and nothing is
    held in the delay line."""
    def quiet():
        a = f.stats()
        time.sleep(0.3)
        b = f.stats()
        return b if a == b and not any(b[d]['holding'] for d in b) else None
    return wait_for(quiet, timeout=10, what='the fault counters to settle')


def connections(local):
    """Redis's total_connections_received (INFO stats) over an open unix-socket connection."""
    info = local.cmd('INFO', 'stats').decode()
    return int(info.split('total_connections_received:')[1].split()[0])


def pings(h, n, timeout=5.0):
    """n PINGs, then n SET/GET round trips on one connection; returns the replies."""
    c = RespConn.tcp(h.client_ns, h.server_ip, timeout=timeout)
    try:
        out = [c.cmd('PING') for _unused in range(n)]
        for i in range(n):
            out.append(c.cmd('SET', 'harness:%d' % i, 'v%d' % i))
            out.append(c.cmd('GET', 'harness:%d' % i))
        return out
    finally:
        c.close()


def expected(n):
    out = [b'+PONG\r\n'] * n
    for i in range(n):
        out += [b'+OK\r\n', b'$%d\r\nv%d\r\n' % (len(str(i)) + 1, i)]
    return out


def test_each_fault_per_direction(host):
    before = client_end(host)
    with FaultLink(host.index) as f:
        during = client_end(host)
        assert during['xdp'] == before['xdp'], 'the harness must leave the client end\'s XDP program alone'
        assert set(during['features'].values()) == {'off'}, during['features']
        assert 'erbfd%d@erbfu%d' % (host.index, host.index) in during['links'], during['links']

        s0 = settled(f)
        assert pings(host, 20) == expected(20)
        s1 = settled(f)
        for d in ('c2s', 's2c'):
            assert s1[d]['seen'] > s0[d]['seen']
            assert s1[d]['dropped'] == s1[d]['duplicated'] == s1[d]['detoured'] == 0

        # duplication both ways: every segment twice; TCP hides it, the receivers see D-SACK cases
        ns0 = {ns: nstat_values(ns) for ns in (host.ns, host.client_ns)}
        f.set(c2s={'dup': 1}, s2c={'dup': 1})
        assert pings(host, 20) == expected(20)
        s2 = settled(f)
        ns1 = {ns: nstat_values(ns) for ns in (host.ns, host.client_ns)}
        for d in ('c2s', 's2c'):
            assert s2[d]['duplicated'] - s1[d]['duplicated'] == s2[d]['seen'] - s1[d]['seen'] > 0
        for ns in (host.ns, host.client_ns):
            assert ns1[ns]['TcpExtTCPDSACKOldSent'] > ns0[ns]['TcpExtTCPDSACKOldSent'], ns

        # reordering: every segment round the delay line, all come back, nothing lost
        f.set(c2s={'reorder': 1, 'reorder_ms': 2}, s2c={'reorder': 1, 'reorder_ms': 2})
        assert pings(host, 20) == expected(20)
        s3 = settled(f)
        for d in ('c2s', 's2c'):
            moved = s3[d]['detoured'] - s2[d]['detoured']
            assert moved == s3[d]['seen'] - s2[d]['seen'] > 0
            assert s3[d]['returned'] - s2[d]['returned'] == s3[d]['sent'] - s2[d]['sent'] == moved

        # delay with jitter, then loss of every client segment: nothing gets through
        f.set(c2s={'delay_ms': 1, 'jitter_ms': 3}, s2c={'delay_ms': 1})
        assert pings(host, 5) == expected(5)
        f.set(c2s={'loss': 1})
        s4 = settled(f)
        local = RespConn.unix(host.socket)
        accepted = connections(local)
        with pytest.raises(OSError):
            RespConn.tcp(host.client_ns, host.server_ip, timeout=1.5)
        s5 = settled(f)
        assert s5['c2s']['dropped'] > s4['c2s']['dropped']
        assert connections(local) == accepted  # no SYN reached Redis
        local.close()

        # bad knobs are refused and change nothing
        with pytest.raises(FaultError):
            f.set(c2s={'loss': 2})
        with pytest.raises(FaultError):
            f.set(s2c={'reorder': 0.1, 'delay_ms': 5})
        with pytest.raises(FaultError):
            f.set(c2s={'latency': 1})
        f.set()
        assert pings(host, 5) == expected(5)
    assert client_end(host) == before


def live_redis_connections(h):
    """TCP sockets on the Redis port in either namespace that can still send a segment
    (not listening, not TIME-WAIT): a test before this one may leave one closing."""
    out = []
    for run in (h.run, h.client_run):
        for line in run(['ss', '-Htn', 'state', 'connected', 'exclude', 'time-wait']).stdout.splitlines():
            if any(col.endswith(':%d' % REDIS_PORT) for col in line.split()):
                out.append(line.strip())
    return out


def test_only_the_redis_port_is_touched(host):
    # a segment of another 6379 connection (a FIN or a resend of the test before) would move
    # the counters this test compares: start once there is none
    wait_for(lambda: not live_redis_connections(host), timeout=30,
             what='the Redis port\'s connections of earlier tests to close')
    with FaultLink(host.index) as f:
        f.set(c2s={'loss': 1}, s2c={'loss': 1})
        s0 = settled(f)
        # another port: refused by the server's kernel at once, its RST gets back through
        with pytest.raises(ConnectionRefusedError):
            RespConn.tcp(host.client_ns, host.server_ip, port=6380, timeout=3).sock.close()
        s1 = settled(f)
        assert s1 == s0
