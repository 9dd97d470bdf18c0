# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""erb.booster.bpf and erb.booster.bpf_info, run as real module processes inside a
network namespace with a veth pair, against a private bpffs mount.

Needs root, clang, ip, ansible-core.  Fixture objects with erb.bpf.o's maps and
program names (tests/loader/fixtures) test the loader; test_real_object_*
use files/bpf/erb.bpf.o itself.
"""

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'loader'))
from collection_path import ensure_collection_path  # noqa: E402
from return_docs import assert_documented  # noqa: E402

COLLECTIONS = ensure_collection_path()

from ansible_collections.erb.booster.plugins.module_utils import erb_layout  # noqa: E402
from ansible_collections.erb.booster.plugins.module_utils import libbpf  # noqa: E402

MODULES = os.path.join(REPO, 'plugins', 'modules')
FIXTURES = os.path.join(REPO, 'tests', 'loader', 'fixtures')
BPF_DIR = os.path.join(REPO, 'files', 'bpf')
PREFIX = 'erbl-'


def sh(*cmd, check=True, **kw):
    return subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=check, **kw)


@pytest.fixture(scope='session')
def objects(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('objs'))
    sh('make', '-s', '-C', FIXTURES, 'OUT=' + out)
    return {'v0': os.path.join(out, 'erb_fixture.bpf.o'), 'v1': os.path.join(out, 'erb_fixture_v1.bpf.o'),
            'foreign': os.path.join(out, 'foreign_xdp.bpf.o')}


@pytest.fixture(scope='session')
def bpffs():
    root = tempfile.mkdtemp(prefix='erbl-bpffs-')
    sh('mount', '-t', 'bpf', 'bpf', root)
    try:
        yield root
    finally:
        sh('umount', '-l', root, check=False)
        os.rmdir(root)


SEND_UDP = r'''
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    s.sendto(b'erb', (sys.argv[1], 9))
    time.sleep(0.1)
'''


class Net(object):
    """Namespace erbl-<tag> holding veth <ns>a and ifb <ns>d (no native XDP);
    the veth peer <ns>b lives in namespace <ns>p."""

    def __init__(self, n):
        tag = '%d%d' % (os.getpid() % 100000, n)
        self.ns, self.peer_ns = PREFIX + tag, PREFIX + tag + 'p'
        self.a, self.b, self.d = PREFIX + tag + 'a', PREFIX + tag + 'b', PREFIX + tag + 'd'
        sh('ip', 'netns', 'add', self.ns)
        try:
            sh('ip', 'netns', 'add', self.peer_ns)
            self.ip('link', 'add', self.a, 'type', 'veth', 'peer', 'name', self.b, 'netns', self.peer_ns)
            self.ip('link', 'add', self.d, 'type', 'ifb')
            self.ip('addr', 'add', '10.201.0.1/24', 'dev', self.a)
            sh('ip', '-n', self.peer_ns, 'addr', 'add', '10.201.0.2/24', 'dev', self.b)
            sh('ip', '-n', self.peer_ns, 'link', 'set', self.b, 'up')
            for dev in (self.a, self.d):
                self.ip('link', 'set', dev, 'up')
        except Exception:
            self.close()
            raise

    def ip(self, *args):
        return sh('ip', '-n', self.ns, *args)

    def ifindex(self, dev):
        return json.loads(self.ip('-j', 'link', 'show', 'dev', dev).stdout)[0]['ifindex']

    def xdp_prog_id(self, dev):
        """XDP program id on dev as `ip -d link` reports it (0: none)."""
        info = json.loads(self.ip('-d', '-j', 'link', 'show', 'dev', dev).stdout)[0]
        xdp = info.get('xdp') or {}
        return (xdp.get('prog') or {}).get('id', 0) or xdp.get('prog_id', 0) or 0

    def send_udp(self, addr, count):
        """count UDP datagrams from the peer namespace to addr (discard port)."""
        sh('ip', 'netns', 'exec', self.peer_ns, sys.executable, '-c', SEND_UDP, addr, str(count))

    def close(self):
        sh('ip', 'netns', 'del', self.ns, check=False)
        sh('ip', 'netns', 'del', self.peer_ns, check=False)


@pytest.fixture
def net(request):
    n = Net(request.node.nodeid.__hash__() % 97)
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def pins(bpffs):
    yield bpffs
    # ERB pins of failed tests: remove what is left (links detach with them).
    shutil.rmtree(os.path.join(bpffs, 'erb'), ignore_errors=True)


def run_module(name, ns, args, check_mode=False, diff=False):
    margs = dict(args)
    margs['_ansible_check_mode'] = check_mode
    margs['_ansible_diff'] = diff
    with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False) as f:
        json.dump({'ANSIBLE_MODULE_ARGS': margs}, f)
    try:
        env = dict(os.environ, PYTHONPATH=COLLECTIONS, LANG='C')
        p = subprocess.run(['ip', 'netns', 'exec', ns, sys.executable, os.path.join(MODULES, name + '.py'),
                            f.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, env=env, timeout=120, check=False)
    finally:
        os.unlink(f.name)
    try:
        res = json.loads(p.stdout)
    except ValueError:
        raise AssertionError('module %s printed no JSON (rc %d): %s %s' % (name, p.returncode, p.stdout, p.stderr))
    assert_documented(name, res)
    return res


SCRIPT_ENV = dict(os.environ, PYTHONPATH=COLLECTIONS)


def run_script(code, *args, ns=None):
    """A Python snippet with the collection importable, in network namespace ns
    when given; fails the test when it fails."""
    cmd = [sys.executable, '-c', code] + [str(a) for a in args]
    subprocess.run((['ip', 'netns', 'exec', ns] if ns else []) + cmd, check=True, env=SCRIPT_ENV)


def bpf(net, pins, obj, **kw):
    args = dict(interface=net.a, object=obj, bpffs_root=pins, cache_entries=1024, max_flows=256)
    args.update(kw)
    check_mode = args.pop('check_mode', False)
    return run_module('bpf', net.ns, args, check_mode=check_mode, diff=True)


def info(net, pins, **kw):
    args = dict(bpffs_root=pins)
    args.update(kw)
    return run_module('bpf_info', net.ns, args)


def pin_dir(net, pins, dev=None):
    return os.path.join(pins, 'erb', net.ns, dev or net.a)


def link_exists(link_id):
    try:
        libbpf.close_fd(libbpf.link_fd_by_id(link_id))
        return True
    except libbpf.BpfError:
        return False


def map_info_pinned(path):
    with libbpf.fd_closing(libbpf.obj_get(path)) as fd:
        return libbpf.map_info(fd)


def warnings_text(res):
    """Module warnings as one string (ansible-core 2.19 returns them as dicts)."""
    return '\n'.join(w if isinstance(w, str) else json.dumps(w) for w in res.get('warnings', []))


def assert_ok(res):
    assert not res.get('failed'), res.get('msg')


# -- lifecycle ----------------------------------------------------------------------

def test_attach_idempotent_update_detach(net, pins, objects):
    res = bpf(net, pins, objects['v0'])
    assert_ok(res)
    assert res['changed'] is True
    assert res['netns'] == net.ns
    d = pin_dir(net, pins)
    assert res['pin_dir'] == d
    expected = {'link_xdp', 'link_tc', 'meta'} | set('map_' + m for m in (
        'erb_global', 'erb_flows', 'erb_flow_gc', 'erb_aux', 'erb_buckets', 'erb_wepoch', 'erb_events',
        'erb_ooo', 'erb_cache', 'erb_tags', 'erb_cmds', 'erb_stats', 'erb_parked'))
    assert set(os.listdir(d)) == expected
    links, progs = res['link_ids'], res['prog_ids']
    assert net.xdp_prog_id(net.a) == progs['xdp']
    with libbpf.fd_closing(libbpf.link_fd_by_id(links['tc'])) as fd:
        li = libbpf.link_info(fd)
    assert (li.type, li.ifindex, li.attach_type) == (libbpf.BPF_LINK_TYPE_TCX, net.ifindex(net.a),
                                                     libbpf.BPF_TCX_EGRESS)
    assert map_info_pinned(os.path.join(d, 'map_erb_cache')).max_entries == 1024
    assert map_info_pinned(os.path.join(d, 'map_erb_tags')).max_entries == 1024 // 8

    # Second run: nothing to do.
    again = bpf(net, pins, objects['v0'])
    assert_ok(again)
    assert again['changed'] is False
    assert (again['link_ids'], again['prog_ids']) == (links, progs)

    # Check mode on a new config: reports a change, changes nothing.
    chk = bpf(net, pins, objects['v0'], cache_entries=4096, check_mode=True)
    assert_ok(chk)
    assert chk['changed'] is True
    assert chk['diff']['after']['config']['cache_entries'] == 4096
    assert map_info_pinned(os.path.join(d, 'map_erb_cache')).max_entries == 1024
    assert net.xdp_prog_id(net.a) == progs['xdp']
    assert info(net, pins)['interfaces'][net.a]['meta']['config']['cache_entries'] == 1024

    # New config: atomic replacement, same links, new programs, flow state kept.
    flows_id = map_info_pinned(os.path.join(d, 'map_erb_flows')).id
    upd = bpf(net, pins, objects['v0'], cache_entries=4096)
    assert_ok(upd)
    assert upd['changed'] is True
    assert upd['link_ids'] == links
    assert upd['prog_ids']['xdp'] != progs['xdp'] and upd['prog_ids']['tc'] != progs['tc']
    assert upd['links'] == {'xdp': 'updated', 'tc': 'updated'}
    assert 'erb_flows' in upd['maps_reused'] and upd['maps_created'] == ['erb_cache', 'erb_tags']
    assert map_info_pinned(os.path.join(d, 'map_erb_cache')).max_entries == 4096
    assert map_info_pinned(os.path.join(d, 'map_erb_tags')).max_entries == 4096 // 8
    assert map_info_pinned(os.path.join(d, 'map_erb_flows')).id == flows_id
    assert net.xdp_prog_id(net.a) == upd['prog_ids']['xdp']

    # Different object: atomic replacement again; meta records the previous one.
    v1 = bpf(net, pins, objects['v1'], cache_entries=4096)
    assert_ok(v1)
    assert v1['changed'] is True
    assert v1['link_ids'] == links
    assert v1['prog_ids']['xdp'] != upd['prog_ids']['xdp']
    meta = info(net, pins, interface=net.a)['interfaces'][net.a]['meta']
    assert meta['object']['path'] == objects['v1']
    assert meta['previous']['object']['path'] == objects['v0']
    assert meta['previous']['config']['cache_entries'] == 4096

    # Detach: links and pins gone, interface clean.
    det = bpf(net, pins, objects['v1'], state='detached')
    assert_ok(det)
    assert det['changed'] is True and det['drain']['drained'] is True
    assert not os.path.exists(d)
    assert not os.path.exists(os.path.join(pins, 'erb', net.ns))
    assert net.xdp_prog_id(net.a) == 0
    assert not link_exists(links['xdp']) and not link_exists(links['tc'])
    det2 = bpf(net, pins, objects['v1'], state='detached')
    assert_ok(det2)
    assert det2['changed'] is False


def tc_filters(net, point='egress'):
    """Filters on net.a's clsact hook as `tc -j filter show` lists them (the
    ones carrying options: one entry per filter)."""
    out = sh('ip', 'netns', 'exec', net.ns, 'tc', '-j', 'filter', 'show', 'dev', net.a, point).stdout
    return [f for f in json.loads(out or '[]') if 'options' in f]


def has_clsact(net):
    out = sh('ip', 'netns', 'exec', net.ns, 'tc', '-j', 'qdisc', 'show', 'dev', net.a).stdout
    return any(q.get('kind') == 'clsact' for q in json.loads(out or '[]'))


def test_clsact_attach_update_detach(net, pins, objects):
    """tc_attach=clsact: ERB's filter sits at pref 235 handle 0xeb; an upgrade
    swaps its program in place; detach removes filter and the qdisc it added."""
    res = bpf(net, pins, objects['v0'], tc_attach='clsact')
    assert_ok(res)
    assert res['changed'] is True and res['tc_attach'] == 'clsact'
    assert res['link_ids']['tc'] is None and res['link_ids']['xdp']
    assert res['links'] == {'tc': 'created', 'xdp': 'created'}
    assert 'link_tc' not in os.listdir(pin_dir(net, pins))
    (f,) = tc_filters(net)
    assert (f['kind'], f['pref'], f['options']['handle']) == ('bpf', 235, '0xeb')
    assert f['options']['direct-action'] is True
    assert f['options']['prog']['id'] == res['prog_ids']['tc']
    meta = info(net, pins)['interfaces'][net.a]['meta']
    assert meta['tc'] == {'attach': 'clsact', 'clsact_created': True}

    again = bpf(net, pins, objects['v0'], tc_attach='clsact')
    assert_ok(again)
    assert again['changed'] is False and again['prog_ids'] == res['prog_ids']
    assert again['tc_attach'] == 'clsact'

    # auto keeps a clsact deployment where it is; the program is swapped in place
    upd = bpf(net, pins, objects['v1'])
    assert_ok(upd)
    assert upd['links'] == {'tc': 'updated', 'xdp': 'updated'} and upd['tc_attach'] == 'clsact'
    assert upd['prog_ids']['tc'] != res['prog_ids']['tc']
    (f,) = tc_filters(net)
    assert (f['pref'], f['options']['handle'], f['options']['prog']['id']) == (235, '0xeb', upd['prog_ids']['tc'])
    assert upd['link_ids']['xdp'] == res['link_ids']['xdp']
    assert info(net, pins)['interfaces'][net.a]['meta']['tc']['clsact_created'] is True

    moved = bpf(net, pins, objects['v1'], tc_attach='tcx')
    assert moved.get('failed') and 'clsact -> tcx' in moved['msg'] and 'state=detached' in moved['msg']
    (f,) = tc_filters(net)
    assert f['options']['prog']['id'] == upd['prog_ids']['tc']

    det = bpf(net, pins, objects['v1'], state='detached')
    assert_ok(det)
    assert {'tc_filter', 'clsact_qdisc', 'link_xdp'} <= set(det['removed'])
    assert tc_filters(net) == [] and not has_clsact(net)
    assert not os.path.exists(pin_dir(net, pins)) and net.xdp_prog_id(net.a) == 0


def test_clsact_filter_without_pins_is_adopted_or_removed(net, pins, objects):
    """A clsact filter is not under the pin directory: an attach that died
    after adding it, or a wiped bpffs, leaves it running. Attach adopts it
    (in-place replace), detach removes it."""
    res = bpf(net, pins, objects['v0'], tc_attach='clsact')
    assert_ok(res)
    shutil.rmtree(os.path.join(pins, 'erb'))
    (f,) = tc_filters(net)
    assert f['options']['prog']['id'] == res['prog_ids']['tc']
    again = bpf(net, pins, objects['v0'])
    assert_ok(again)
    assert again['links'] == {'tc': 'updated', 'xdp': 'created'} and again['tc_attach'] == 'clsact'
    assert len(tc_filters(net)) == 1
    shutil.rmtree(os.path.join(pins, 'erb'))
    det = bpf(net, pins, objects['v0'], state='detached')
    assert_ok(det)
    assert det['changed'] is True and det['removed'] == ['tc_filter']
    assert tc_filters(net) == []


FOREIGN_TC = r"""
import sys
from ansible_collections.erb.booster.plugins.module_utils import libbpf as B
obj = B.BpfObject(sys.argv[1]); obj.load()
ifindex, pref, point = int(sys.argv[2]), int(sys.argv[3]), getattr(B, sys.argv[4])
B.tc_hook_create(ifindex)
B.tc_attach(ifindex, obj.program_fd('foreign_tc'), pref, pref, point=point)
"""


def foreign_tc(net, objects, pref, point='BPF_TC_EGRESS'):
    """Someone else's cls_bpf filter (foreign_tc) at pref/handle `pref`."""
    run_script(FOREIGN_TC, objects['foreign'], net.ifindex(net.a), pref, point, ns=net.ns)


def test_clsact_shared_with_other_filters(net, pins, objects):
    """An operator's clsact qdisc and filters stay as they were; a foreign
    filter in ERB's own slot is refused, not replaced."""
    foreign_tc(net, objects, 10)
    foreign_tc(net, objects, 10, 'BPF_TC_INGRESS')
    res = bpf(net, pins, objects['v0'], tc_attach='clsact')
    assert_ok(res)
    assert sorted(f['pref'] for f in tc_filters(net)) == [10, 235]
    assert info(net, pins)['interfaces'][net.a]['meta']['tc']['clsact_created'] is False
    det = bpf(net, pins, objects['v0'], state='detached')
    assert_ok(det)
    assert 'tc_filter' in det['removed'] and 'clsact_qdisc' not in det['removed']
    assert [f['pref'] for f in tc_filters(net)] == [10] and has_clsact(net)
    assert [f['pref'] for f in tc_filters(net, 'ingress')] == [10]

    # someone else's BPF filter in ERB's slot: refused, untouched
    foreign_tc(net, objects, 0xeb)
    theirs = tc_filters(net)
    res = bpf(net, pins, objects['v0'], tc_attach='clsact')
    assert res.get('failed') and 'pref 235 handle 0xeb' in res['msg'] and 'not ERB' in res['msg']
    assert 'foreign_tc' in res['msg']
    assert tc_filters(net) == theirs
    assert not os.path.exists(os.path.join(pins, 'erb', net.ns))


def test_info_reports_counters_and_state(net, pins, objects):
    assert_ok(bpf(net, pins, objects['v0']))
    net.send_udp('10.201.0.1', 3)
    res = info(net, pins)
    assert_ok(res)
    assert res['changed'] is False and res['netns'] == net.ns
    i = res['interfaces'][net.a]
    assert i['attached'] is True
    assert set(i['counters']) == set(erb_layout.STAT_NAMES)
    assert i['counters']['rx_packets'] >= 3  # the fixture XDP counts every packet
    assert i['links']['xdp']['prog_name'] == 'erb_xdp'
    assert i['links']['tc']['prog_name'] == 'erb_tc_egress'
    assert i['xdp']['mode'] == 'native' and i['xdp']['prog_id'] == i['links']['xdp']['prog_id']
    assert i['cache'] == {'valid': 0, 'entries': 1024, 'generation': 0}
    assert i['flows'] == {'tracked': 0, 'answered': 0, 'max': 256}
    assert i['drain'] is False
    assert i['meta']['object']['sha256']
    # Cache fill is read through the mmap of erb_cache: VALID entries of the
    # current generation count, others do not.
    run_script(PUT_ENTRIES, os.path.join(pin_dir(net, pins), 'map_erb_cache'))
    assert info(net, pins)['interfaces'][net.a]['cache']['valid'] == 2
    assert_ok(bpf(net, pins, objects['v0'], state='detached'))


PUT_ENTRIES = r'''
import ctypes, sys
from ansible_collections.erb.booster.plugins.module_utils import libbpf as B, erb_layout as L
fd = B.obj_get(sys.argv[1])
for idx, state, gen in ((5, L.ERB_ENTRY_VALID, 0), (1023, L.ERB_ENTRY_VALID, 0),
                        (7, L.ERB_ENTRY_TOMB, 0), (9, L.ERB_ENTRY_VALID, 3)):
    B.map_update(fd, ctypes.c_uint32(idx), L.ErbEntry(state=state, gen=gen, klen=1, key=b'k'))
'''


def test_check_mode_attach_changes_nothing(net, pins, objects):
    res = bpf(net, pins, objects['v0'], check_mode=True)
    assert_ok(res)
    assert res['changed'] is True
    assert not os.path.exists(os.path.join(pins, 'erb', net.ns))
    assert net.xdp_prog_id(net.a) == 0


# -- refusals -------------------------------------------------------------------------

FOREIGN_NETLINK = r'''
import ctypes, sys
from ansible_collections.erb.booster.plugins.module_utils import libbpf as B
obj = B.BpfObject(sys.argv[1]); obj.load()
attach = B.lib().bpf.bpf_xdp_attach
attach.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p]
sys.exit(1 if attach(int(sys.argv[2]), obj.program_fd('foreign_xdp'), B.XDP_FLAGS_DRV_MODE, None) else 0)
'''


def test_foreign_xdp_program_is_refused_and_left_alone(net, pins, objects):
    # Attached the classic way (netlink, as `ip link set xdp` does), not by a link.
    run_script(FOREIGN_NETLINK, objects['foreign'], net.ifindex(net.a), ns=net.ns)
    foreign_id = net.xdp_prog_id(net.a)
    assert foreign_id
    res = bpf(net, pins, objects['v0'])
    assert res.get('failed') and 'another XDP program' in res['msg'] and 'foreign_xdp' in res['msg']
    assert net.xdp_prog_id(net.a) == foreign_id
    assert not os.path.exists(os.path.join(pins, 'erb', net.ns))
    det = bpf(net, pins, objects['v0'], state='detached')
    assert_ok(det)
    assert det['changed'] is False
    assert net.xdp_prog_id(net.a) == foreign_id


FOREIGN_LINK = r'''
import sys
from ansible_collections.erb.booster.plugins.module_utils import libbpf as B
obj = B.BpfObject(sys.argv[1]); obj.load()
fd = B.link_create_xdp(obj.program_fd('foreign_xdp'), int(sys.argv[2]), B.XDP_FLAGS_DRV_MODE)
B.obj_pin(fd, sys.argv[3])
'''


def test_foreign_link_in_pin_dir_is_not_removed(net, pins, objects):
    assert_ok(bpf(net, pins, objects['v0']))
    d = pin_dir(net, pins)
    assert_ok(bpf(net, pins, objects['v0'], state='detached'))
    os.makedirs(d)
    run_script(FOREIGN_LINK, objects['foreign'], net.ifindex(net.a), os.path.join(d, 'link_xdp'), ns=net.ns)
    foreign_id = net.xdp_prog_id(net.a)
    res = bpf(net, pins, objects['v0'], state='detached')
    assert res.get('failed') and 'not ERB' in res['msg']
    assert os.path.exists(os.path.join(d, 'link_xdp'))
    assert net.xdp_prog_id(net.a) == foreign_id
    res = bpf(net, pins, objects['v0'])
    assert res.get('failed') and 'not ERB' in res['msg']
    assert net.xdp_prog_id(net.a) == foreign_id
    seen = info(net, pins)
    assert_ok(seen)
    assert 'not ERB' in seen['interfaces'][net.a]['error']


def test_native_unsupported_suggests_generic(net, pins, objects):
    res = bpf(net, pins, objects['v0'], interface=net.d)
    assert res.get('failed')
    assert 'native XDP' in res['msg'] and 'xdp_mode: generic' in res['msg']
    assert not os.path.exists(pin_dir(net, pins, net.d))
    gen = bpf(net, pins, objects['v0'], interface=net.d, xdp_mode='generic')
    assert_ok(gen)
    assert info(net, pins, interface=net.d)['interfaces'][net.d]['xdp']['mode'] == 'generic'
    # The mode cannot be switched atomically: refused, nothing changed.
    sw = bpf(net, pins, objects['v0'], interface=net.d, xdp_mode='native')
    assert sw.get('failed') and 'state=detached' in sw['msg']
    assert_ok(bpf(net, pins, objects['v0'], interface=net.d, state='detached'))
    assert net.xdp_prog_id(net.d) == 0


def test_incompatible_flow_state_is_refused(net, pins, objects):
    first = bpf(net, pins, objects['v0'])
    assert_ok(first)
    res = bpf(net, pins, objects['v0'], max_flows=512)
    assert res.get('failed')
    assert 'erb_flows' in res['msg'] and 'Detach first' in res['msg']
    again = bpf(net, pins, objects['v0'])
    assert_ok(again)
    assert again['changed'] is False and again['prog_ids'] == first['prog_ids']
    assert_ok(bpf(net, pins, objects['v0'], state='detached'))


def test_not_a_bpffs_is_refused(net, objects, tmp_path):
    res = bpf(net, str(tmp_path), objects['v0'])
    assert res.get('failed') and 'not a BPF filesystem' in res['msg'] and 'mount -t bpf' in res['msg']


def test_missing_interface(net, pins, objects):
    res = bpf(net, pins, objects['v0'], interface='erbl-nosuch')
    assert res.get('failed') and 'erbl-nosuch does not exist' in res['msg']


@pytest.mark.parametrize('kw,text', [
    ({'max_key_len': 257}, 'max_key_len'),
    ({'max_value_len': 1401}, 'max_value_len'),
    ({'cache_entries': 1}, 'cache_entries'),
])
def test_limits_validated(net, pins, objects, kw, text):
    res = bpf(net, pins, objects['v0'], **kw)
    assert res.get('failed') and text in res['msg']


ADD_ANSWERED_FLOW = r'''
import ctypes, sys
from ansible_collections.erb.booster.plugins.module_utils import libbpf as B, erb_layout as L
fd = B.obj_get(sys.argv[1])
key = L.ErbFlowKey(saddr=1, daddr=2, sport=3, dport=4)
B.map_update(fd, key, L.ErbFlow(flags=L.ERB_FLOW_ANSWERED | L.ERB_FLOW_EST))
'''


def test_detach_drains_then_times_out(net, pins, objects):
    assert_ok(bpf(net, pins, objects['v0']))
    d = pin_dir(net, pins)
    run_script(ADD_ANSWERED_FLOW, os.path.join(d, 'map_erb_flows'))
    assert info(net, pins)['interfaces'][net.a]['flows']['answered'] == 1
    res = bpf(net, pins, objects['v0'], state='detached', drain_timeout=1)
    assert_ok(res)
    # the flow never closes: the drain ends by its timeout (it polled until then), saying the flow is left
    assert res['drain']['drained'] is False and res['drain']['flows_remaining'] == 1
    assert res['drain']['waited'] >= 1
    assert '1 flow(s)' in warnings_text(res)
    assert not os.path.exists(d)


SET_SEQS = r'''
import ctypes, sys
from ansible_collections.erb.booster.plugins.module_utils import libbpf as B, erb_loader
fd = B.obj_get(sys.argv[1])
g = erb_loader.read_global(fd)
g.write_seq, g.applied_seq = int(sys.argv[2]), int(sys.argv[3])
B.map_update(fd, ctypes.c_uint32(0), g)
'''


def test_detach_keeps_erb_attached_while_acknowledged_sets_are_pending(net, pins, objects):
    assert_ok(bpf(net, pins, objects['v0']))
    d = pin_dir(net, pins)
    glob = os.path.join(d, 'map_erb_global')
    run_script(SET_SEQS, glob, 7, 4)  # 3 SETs acknowledged in XDP, not yet applied by the I/O path
    res = bpf(net, pins, objects['v0'], state='detached', drain_timeout=1)
    assert res.get('failed'), res
    assert '3 acknowledged SET(s)' in res['msg'] and 'stays attached' in res['msg'], res['msg']
    assert res['drain']['writes_pending'] == 3 and res['drain']['drained'] is False
    assert res['drain']['waited'] >= 1
    # nothing removed: the ring stays pinned for the I/O path, answering is off
    st = info(net, pins)['interfaces'][net.a]
    assert st['attached'] and st['drain'] is True
    assert st['global']['write_seq'] == 7 and st['global']['applied_seq'] == 4
    assert st['writes_pending'] == 3
    # the I/O path caught up: the next detach removes everything
    run_script(SET_SEQS, glob, 7, 7)
    assert info(net, pins)['interfaces'][net.a]['writes_pending'] == 0
    res = bpf(net, pins, objects['v0'], state='detached', drain_timeout=5)
    assert_ok(res)
    assert res['drain']['drained'] is True and res['drain']['writes_pending'] == 0
    assert not res.get('warnings')
    assert not os.path.exists(d)


def test_detach_discards_pending_sets_only_when_told(net, pins, objects):
    assert_ok(bpf(net, pins, objects['v0']))
    d = pin_dir(net, pins)
    run_script(SET_SEQS, os.path.join(d, 'map_erb_global'), 5, 3)
    res = bpf(net, pins, objects['v0'], state='detached', drain_timeout=0, discard_pending_writes=True)
    assert_ok(res)
    assert res['drain']['writes_pending'] == 2
    assert '2 acknowledged SET(s)' in warnings_text(res)
    assert not os.path.exists(d)


OLD_LAYOUT_META = r'''
import os, sys
from ansible_collections.erb.booster.plugins.module_utils import erb_layout as L, erb_loader, libbpf as B
d = sys.argv[1]
meta = erb_loader.read_meta(d)
meta['layout_version'] -= 1
fd = erb_loader.open_pinned(os.path.join(d, erb_loader.META))
erb_loader.write_meta(fd, meta)
os.close(fd)
# the state maps layout 13 pinned and layout 14 merged into erb_buckets
for name in erb_loader.RETIRED_MAPS:
    fd = B.map_create(L.BPF_MAP_TYPE_ARRAY, name, 4, 4, 16)
    B.obj_pin(fd, os.path.join(d, 'map_' + name))
    os.close(fd)
'''


def test_state_of_another_layout_version_is_reported_and_not_taken_over(net, pins, objects):
    assert_ok(bpf(net, pins, objects['v0']))
    res = info(net, pins)
    assert res['interfaces'][net.a]['other_layout'] is False
    run_script(OLD_LAYOUT_META, pin_dir(net, pins))
    res = info(net, pins)
    st = res['interfaces'][net.a]
    assert st['other_layout'] is True and st['meta']['layout_version'] == res['layout_version'] - 1
    res = bpf(net, pins, objects['v1'])
    assert res.get('failed') and 'layout version' in res['msg'] and 'Detach first' in res['msg'], res
    res = bpf(net, pins, objects['v0'], state='detached', drain_timeout=0)
    assert_ok(res)
    # an earlier layout's maps go with the rest: nothing is left behind
    assert not os.path.exists(pin_dir(net, pins)), res
    assert all('map_' + n in res['removed'] for n in ('erb_inflight', 'erb_ufence', 'erb_locks')), res
    assert_ok(bpf(net, pins, objects['v1']))
    assert info(net, pins)['interfaces'][net.a]['other_layout'] is False


DEL_FLOWS_LATER = r'''
import sys, time
from ansible_collections.erb.booster.plugins.module_utils import libbpf as B, erb_layout as L
fd = B.obj_get(sys.argv[1])
time.sleep(float(sys.argv[2]))
B.map_delete(fd, L.ErbFlowKey(saddr=1, daddr=2, sport=3, dport=4))
'''


def test_detach_waits_for_corrected_flows(net, pins, objects):
    assert_ok(bpf(net, pins, objects['v0']))
    flows = os.path.join(pin_dir(net, pins), 'map_erb_flows')
    run_script(ADD_ANSWERED_FLOW, flows)
    closer = subprocess.Popen([sys.executable, '-c', DEL_FLOWS_LATER, flows, '1.5'], env=SCRIPT_ENV)
    try:
        res = bpf(net, pins, objects['v0'], state='detached', drain_timeout=30)
    finally:
        closer.wait(timeout=30)
    assert_ok(res)
    # drained (not timed out): the detach waited until the closer removed the flow
    assert res['drain']['drained'] is True and res['drain']['flows_remaining'] == 0
    assert not res.get('warnings')
    assert not os.path.exists(pin_dir(net, pins))


# -- the real object ------------------------------------------------------------------

@pytest.fixture(scope='session')
def real_object():
    sh('make', '-s', '-C', BPF_DIR, 'erb.bpf.o')
    return os.path.join(BPF_DIR, 'erb.bpf.o')


@pytest.mark.parametrize('mode', ['native', 'generic'])
def test_real_object_attach_update_detach(net, pins, real_object, mode):
    res = bpf(net, pins, real_object, xdp_mode=mode)
    assert_ok(res)
    assert res['changed'] is True
    again = bpf(net, pins, real_object, xdp_mode=mode)
    assert_ok(again)
    assert again['changed'] is False
    upd = bpf(net, pins, real_object, xdp_mode=mode, cache_entries=2048)
    assert_ok(upd)
    assert upd['link_ids'] == res['link_ids'] and upd['prog_ids'] != res['prog_ids']
    i = info(net, pins)['interfaces'][net.a]
    assert i['xdp']['mode'] == mode and i['cache']['entries'] == 2048
    assert set(i['counters']) == set(erb_layout.STAT_NAMES)
    det = bpf(net, pins, real_object, state='detached')
    assert_ok(det)
    assert not os.path.exists(pin_dir(net, pins)) and net.xdp_prog_id(net.a) == 0
    assert not link_exists(res['link_ids']['tc'])


def test_real_object_command_table_fits(net, pins, real_object):
    res = bpf(net, pins, real_object)
    assert_ok(res)
    cmds = os.path.join(pin_dir(net, pins), 'map_erb_cmds')
    with libbpf.fd_closing(libbpf.obj_get(cmds)) as fd:
        spec = erb_layout.ErbCmdSpec()
        from ansible_collections.erb.booster.plugins.module_utils import redis_commands
        assert libbpf.map_lookup(fd, ctypes.c_uint32(redis_commands.cmd_hash('GET')), spec)
        assert spec.flags == erb_layout.ERB_CMD_GET and spec.first_key == 1
    assert_ok(bpf(net, pins, real_object, state='detached'))
