# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""erb_redis (files/rmod): the I/O path inside a real redis-server, against real
BPF maps (ring buffer, mmapped erb_global/erb_cache/erb_tags/erb_wepoch) fed by
BPF_PROG_TEST_RUN, the same harness as erb-agent's tests; and the hand-over
between the module and erb-agent."""

import mmap
import os
import struct
import subprocess
import time

import pytest
import redis

import agentlib
from agentlib import L, wait_for
from test_agent import RECORD_SAMPLE, Workload, aof_seqs, check_replay, wait_connected

RMOD_DIR = agentlib.REPO / 'files' / 'rmod'
RMOD = RMOD_DIR / 'erb_redis.so'


@pytest.fixture(scope='session')
def rmod_so():
    p = subprocess.run(['make', '-C', str(RMOD_DIR)], capture_output=True, text=True, check=False)
    assert p.returncode == 0, 'make -C files/rmod failed:\n%s\n%s' % (p.stdout, p.stderr)
    return RMOD


@pytest.fixture
def menv(env, rmod_so):
    """The agent tests' env with a redis-server that allows MODULE LOAD."""
    env.redis.stop()
    env.redis.extra = ['--enable-module-command', 'yes']
    env.redis.start()
    return env


def load(env, pin_dir=None):
    return env.redis.client().execute_command('MODULE', 'LOAD', str(RMOD), str(pin_dir or env.bpf.pin_dir))


def unload(env):
    return env.redis.client().execute_command('MODULE', 'UNLOAD', 'erbredis')


def info(env):
    return env.redis.client().info('erbredis')


def redis_log(env):
    return (env.redis.dir / 'redis.log').read_text()


def ring_pos(env):
    """The ring's (consumer_pos, producer_pos)."""
    fd = env.bpf.fds['erb_events']
    with mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ) as cons, \
            mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ, offset=mmap.PAGESIZE) as prod:
        return struct.unpack_from('<Q', cons, 0)[0], struct.unpack_from('<Q', prod, 0)[0]


def redis_cpu_s(env):
    with open('/proc/%d/stat' % env.redis.proc.pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def test_applies_records_in_order_with_the_aof_and_publishes_applied_seq(menv):
    load(menv)
    w = Workload(menv, nkeys=300, dbs=3)
    w.run(3000)
    menv.wait_applied(3000)
    w.check_redis()
    check_replay(aof_seqs(menv.redis), 3000, max_rewinds=0)
    i = info(menv)
    assert i['erbredis_applied'] == 3000 and i['erbredis_errors'] == 0 and i['erbredis_bad_records'] == 0
    assert i['erbredis_applied_seq'] == 3000 == i['erbredis_write_seq']
    assert 1 <= i['erbredis_batches'] <= 3000
    assert i['erbredis_maps_current'] == 1
    (menv.bpf.pin_dir / 'map_erb_global').unlink()     # detached: the maps are not ERB's any more
    assert info(menv)['erbredis_maps_current'] == 0


def test_records_left_in_the_ring_are_applied_at_load(menv):
    w = Workload(menv, nkeys=50)
    w.run(200)                           # nobody consumes yet
    assert menv.bpf.applied_seq == 0
    load(menv)
    menv.wait_applied(200)
    w.check_redis()
    check_replay(aof_seqs(menv.redis), 200, max_rewinds=0)


def test_a_second_load_is_refused_and_the_first_goes_on(menv):
    load(menv)
    with pytest.raises(redis.ResponseError):
        load(menv)
    menv.bpf.produce_wait(b'k', b'v')
    menv.wait_applied(1)
    assert info(menv)['erbredis_applied'] == 1 and info(menv)['erbredis_batches'] >= 1


def test_bad_pin_dir_and_arguments_are_refused_clearly(menv, tmp_path):
    c = menv.redis.client()
    with pytest.raises(redis.ResponseError):
        load(menv, tmp_path / 'nothing-here')
    assert 'cannot open pinned map' in redis_log(menv)
    with pytest.raises(redis.ResponseError):
        c.execute_command('MODULE', 'LOAD', str(RMOD))
    assert 'one argument: the pin directory' in redis_log(menv)
    load(menv)                           # a refused load left nothing behind
    assert info(menv)['erbredis_applied'] == 0


def test_refused_while_an_agent_drains_the_ring(menv):
    agent = menv.agent()
    wait_connected(agent, menv)
    with pytest.raises(redis.ResponseError):
        load(menv)
    assert 'an erb-agent drains the ring' in redis_log(menv)
    agent.kill()
    load(menv)
    menv.bpf.produce_wait(b'k', b'v1')
    menv.wait_applied(1)
    assert menv.redis.client().get(b'k') == b'v1'


def test_agent_assists_while_loaded_and_takes_the_ring_back_after_unload(menv):
    load(menv)
    agent = menv.agent()
    wait_for(lambda: 'only assists' in agent.log_text(), timeout=10, what='the agent in assist mode')
    # it names its connection right after it says so
    wait_for(lambda: 'erb-agent-assist' in [c['name'] for c in menv.redis.client().client_list()],
             timeout=10, what="the agent's connection named erb-agent-assist")
    names = [c['name'] for c in menv.redis.client().client_list()]
    assert 'erb-agent' not in names
    assert not any('t' in c['flags'] for c in menv.redis.client().client_list()), 'no key tracking'
    w = Workload(menv, nkeys=20)
    w.run(100)
    menv.wait_applied(100)
    assert info(menv)['erbredis_applied'] == 100
    unload(menv)
    assert agent.proc.wait(timeout=10) != 0
    assert 'exiting so that a restart' in agent.log_text()
    w.run(100)                           # unapplied until an agent drains again
    time.sleep(0.2)
    assert menv.bpf.applied_seq == 100
    agent2 = menv.agent()
    menv.wait_applied(200)
    w.check_redis()
    check_replay(aof_seqs(menv.redis), 200, max_rewinds=0)
    assert 'ring buffer' in agent2.log_text()


def test_an_agent_that_reconnects_after_the_load_exits_instead_of_applying(menv):
    agent = menv.agent()
    wait_connected(agent, menv)
    menv.redis.client().client_kill_filter(_type='normal', skipme=True)
    # the agent reconnects with backoff; loading may race it: either order ends with one consumer
    for _attempt in range(50):
        try:
            load(menv)
            break
        except redis.ResponseError:
            time.sleep(0.05)
    else:
        pytest.fail('the module never loaded')
    wait_for(lambda: not agent.alive(), timeout=10, what='the full-mode agent to exit')
    menv.bpf.produce_wait(b'k2', b'v2')
    menv.wait_applied(1)
    assert info(menv)['erbredis_applied'] == 1


def test_a_sleeping_redis_is_woken_by_each_record_and_an_idle_one_does_not_spin(menv):
    """Each record wakes a Redis that sleeps (the ring's fd in its event loop) and is applied at
    once; afterwards consumer_pos is over everything (else the fd stays readable and Redis
    spins instead of sleeping)."""
    load(menv)
    for i in range(30):
        menv.bpf.produce_wait(b'k%d' % i, b'v%d' % i)
        menv.wait_applied(i + 1, timeout=2)
    wait_for(lambda: ring_pos(menv) == (30 * RECORD_SAMPLE,) * 2, timeout=2, what='consumer_pos caught up')
    cpu = redis_cpu_s(menv)
    time.sleep(1.0)
    assert redis_cpu_s(menv) - cpu < 0.3, 'redis-server busy while idle: %.2f s of CPU in 1 s' % (
        redis_cpu_s(menv) - cpu)
    assert info(menv)['erbredis_applied'] == 30


def test_a_change_by_redis_deletes_the_entry_at_once(menv):
    load(menv)
    c = menv.redis.client()
    for cmd in (lambda k: c.set(k, b'other'), lambda k: c.append(k, b'x'), c.delete,
                lambda k: c.expire(k, 100), lambda k: c.rename(k, k + b'-renamed')):
        key = b'inval:%d' % time.monotonic_ns()
        c.set(key, b'1')
        menv.bpf.cache_put(key, b'1')
        assert menv.bpf.cache_state(key) == 'valid'
        before = menv.bpf.wepoch(key)
        cmd(key)
        # synchronous: by the time the command's reply is here, the entry is gone
        assert menv.bpf.cache_state(key) == 'gone'
        assert menv.bpf.wepoch(key) > before
    assert info(menv)['erbredis_deleted'] == 5


def test_expiry_deletes_the_entry(menv):
    load(menv)
    c = menv.redis.client()
    c.set(b'ttl', b'1', px=30)
    menv.bpf.cache_put(b'ttl', b'1')
    time.sleep(0.1)
    assert c.get(b'ttl') is None         # expired (lazily, if not actively yet)
    assert menv.bpf.cache_state(b'ttl') == 'gone'


def test_own_applies_keep_their_entries_and_pending_entries_are_never_deleted(menv):
    load(menv)
    menv.bpf.cache_put(b'mine', b'v1', wseq=1)
    menv.bpf.produce_wait(b'mine', b'v1')
    menv.wait_applied(1)
    assert menv.bpf.cache_state(b'mine') == 'valid'
    assert info(menv)['erbredis_deleted'] == 0
    # an entry whose write Redis lacks (wseq > applied_seq) stays whatever Redis does
    menv.bpf.write_seq = 10
    menv.bpf.cache_put(b'pending', b'new', wseq=10)
    menv.redis.client().set(b'pending', b'old')
    assert menv.bpf.cache_state(b'pending') == 'valid'


def test_flushall_empties_the_cache_but_never_pending_entries(menv):
    load(menv)
    c = menv.redis.client()
    menv.bpf.cache_put(b'a', b'1')
    gen = menv.bpf.cache_gen
    c.flushall()
    assert menv.bpf.cache_gen == gen + 1 and menv.bpf.cache_state(b'a') == 'gone'
    # with a write pending, a sweep instead: the pending entry stays, the others go
    menv.bpf.write_seq = menv.bpf.applied_seq + 1
    menv.bpf.cache_put(b'b', b'1')
    menv.bpf.cache_put(b'p', b'2', wseq=menv.bpf.write_seq)
    c.flushdb()
    assert menv.bpf.cache_gen == gen + 1
    assert menv.bpf.cache_state(b'b') == 'gone' and menv.bpf.cache_state(b'p') == 'valid'
    c.swapdb(0, 1)
    assert menv.bpf.cache_state(b'p') == 'valid'
    assert info(menv)['erbredis_flushes'] >= 4     # load, FLUSHALL, FLUSHDB, SWAPDB


def test_a_stuck_entry_lock_empties_the_cache_instead_and_dead_entries_are_never_waited_for(menv):
    """An entry lock nobody releases (a consumer killed holding it): the invalidation gives up
    on it and empties the cache by cache_gen instead (never a stale entry left); an entry of an
    older cache_gen is dead already, and its lock is not waited for at all."""
    load(menv)
    c = menv.redis.client()
    c.set(b'stuck', b'1')
    idx = menv.bpf.cache_put(b'stuck', b'1')
    struct.pack_into('<I', menv.bpf.cache, idx * agentlib.ENTRY_SIZE, 1)    # e->lock, held for good
    gen = menv.bpf.cache_gen
    c.set(b'stuck', b'2')
    assert menv.bpf.cache_gen == gen + 1 and menv.bpf.cache_state(b'stuck') == 'gone'
    assert info(menv)['erbredis_lock_timeouts'] == 1
    t = time.monotonic()
    c.set(b'stuck', b'3')                # the locked entry is of the old cache_gen now
    assert time.monotonic() - t < 0.5
    assert info(menv)['erbredis_lock_timeouts'] == 1 and menv.bpf.cache_gen == gen + 1


# -- ordered mode: the command filter and the lease (erb_global.ordered_until_ns)

def lease_ns(env):
    return struct.unpack_from('<Q', env.bpf.glob, L.ErbGlobal.ordered_until_ns.offset)[0]


def test_ordered_mode_holds_a_lease_while_loaded_and_gives_it_up_at_unload(menv):
    """erb_xdp holds nothing for the I/O path while the lease holds: erb_redis renews it from
    its tick (a timerfd in Redis's event loop) and gives it up at unload, after applying what
    is in the ring."""
    assert lease_ns(menv) == 0
    load(menv)
    assert info(menv)['erbredis_ordered'] == 1
    for _unused in range(3):
        assert lease_ns(menv) > time.monotonic_ns(), 'the lease is not renewed'
        time.sleep(0.05)                 # longer than the lease: only renewals keep it
    menv.bpf.produce_wait(b'last', b'v')
    unload(menv)
    assert lease_ns(menv) == 0
    assert menv.redis.client().get(b'last') == b'v', 'a record left in the ring at unload'
    assert 'ordered mode off (unloaded)' in redis_log(menv)


def test_a_command_runs_after_every_write_acknowledged_before_it(menv):
    """A record committed (a fast SET whose answer may leave now) is in Redis before any
    command Redis reads afterwards runs, whatever the ring's wakeup and the tick do: the
    command filter applies it first. Without the filter the INCR (a file event) ran before
    the apply (a timer), on a key not there yet, and replied 1."""
    load(menv)
    c = menv.redis.client()
    for i in range(300):
        k = b'ord:%d' % i
        menv.bpf.produce_wait(k, b'5')
        if i % 3 == 2:
            got = c.eval("return redis.call('INCR', KEYS[1])", 1, k)
        else:
            got = c.incr(k)
        assert got == 6, 'INCR %r after its SET was acknowledged replied %r' % (k, got)
    i = info(menv)
    assert i['erbredis_applied'] == 300 and i['erbredis_errors'] == 0
    assert i['erbredis_applied_before_command'] > 0
    # in the AOF too: each SET before its INCR, not wrapped with it in MULTI/EXEC
    seen = set()
    for cmd in menv.redis.aof_commands():
        name = cmd[0].upper()
        assert name != b'MULTI', 'the filter\'s SETs were propagated with the command in a transaction'
        if name == b'SET' and cmd[1].startswith(b'ord:'):
            seen.add(cmd[1])
        elif name == b'INCR':
            assert cmd[1] in seen, 'INCR %r before its SET in the AOF' % cmd[1]


def test_writes_applied_before_a_command_survive_eviction_and_blocked_clients(menv):
    """The SETs the filter applies must not be left pending for propagation: Redis asserts that
    nothing is when it evicts (maxmemory) and when it serves blocked clients."""
    load(menv)
    c = menv.redis.client()
    used = c.info('memory')['used_memory']
    c.config_set('maxmemory', used + 2 * 1024 * 1024)
    c.config_set('maxmemory-policy', 'allkeys-lru')
    blocked = menv.redis.client()
    big = b'x' * 700
    for i in range(4000):
        menv.bpf.produce_wait(b'ev:%d' % i, big)
        if i % 2:
            c.incr(b'ev:n')
        if i % 200 == 0:
            c.lpush(b'ev:list', b'%d' % i)
            assert blocked.blpop(b'ev:list', 5) is not None
    assert c.ping()
    assert c.info('stats')['evicted_keys'] > 0
    assert info(menv)['erbredis_errors'] == 0
    c.config_set('maxmemory', 0)


OTHER_MODULE = r'''
typedef struct RedisModuleCtx RedisModuleCtx;
typedef struct RedisModuleString RedisModuleString;
__attribute__((visibility("default")))
int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc)
{
    int (*get_api)(const char *, void *) = (int (*)(const char *, void *))((void **)ctx)[0];
    int (*attribs)(RedisModuleCtx *, const char *, int, int);

    (void)argv;
    (void)argc;
    if (get_api("RedisModule_SetModuleAttribs", &attribs))
        return 1;
    attribs(ctx, "erbtestother", 1, 1);
    return 0;
}
'''


@pytest.fixture
def other_module(tmp_path):
    src = tmp_path / 'other.c'
    src.write_text(OTHER_MODULE)
    so = tmp_path / 'other.so'
    subprocess.run(['cc', '-shared', '-fPIC', '-o', str(so), str(src)], check=True)
    return so


@pytest.mark.parametrize('order', ['other-first', 'other-after'])
def test_no_ordered_mode_beside_another_module(menv, other_module, order):
    """Another module's command may call Redis commands (RM_Call), and the filter cannot tell
    them from a client's: a write applied there would land inside that command. So ordered
    mode only while erb_redis is Redis's only module: records wake Redis and erb_xdp holds."""
    c = menv.redis.client()
    if order == 'other-first':
        c.execute_command('MODULE', 'LOAD', str(other_module))
        load(menv)
        assert 'other modules are loaded: ordered mode off' in redis_log(menv)
    else:
        load(menv)
        assert info(menv)['erbredis_ordered'] == 1
        c.execute_command('MODULE', 'LOAD', str(other_module))
        assert 'ordered mode off (another module was loaded)' in redis_log(menv)
    assert info(menv)['erbredis_ordered'] == 0
    assert lease_ns(menv) == 0
    menv.bpf.produce_wait(b'k', b'v')
    menv.wait_applied(1)                 # the ring's wakeup still applies it
    assert info(menv)['erbredis_applied_before_command'] == 0
