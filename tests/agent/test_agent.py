# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""erb-agent against a real redis-server and real BPF maps (ring buffer,
mmapped erb_global/erb_cache) fed by BPF_PROG_TEST_RUN.

Every record's value starts with its seq (8 bytes, little endian), so the AOF
(appendfsync always) shows exactly which records Redis executed, in order."""

import mmap
import os
import random
import signal
import struct
import subprocess
import threading
import time

import pytest

import agentlib
from agentlib import wait_for

RECORD_SAMPLE = 1688          # 8-byte ring header + sizeof(struct erb_record), 8-aligned


def value_for(seq, rnd):
    body = bytes(rnd.getrandbits(8) for _unused in range(rnd.randrange(0, 64)))
    filler = b'\r\n\0' * rnd.randrange(0, 3) + b'x' * rnd.choice((0, 1, 17, 300, 1380))
    return (struct.pack('<Q', seq) + b'\r\n\0' + body + filler)[:agentlib.VAL_MAX]


def key_for(i):
    return b'key:\r\n\0 %d' % i


class Workload(object):
    """Records for nkeys keys (key i lives in db i % dbs), remembering the last write."""

    def __init__(self, env, nkeys=500, dbs=1, seed=1):
        self.env, self.nkeys, self.dbs = env, nkeys, dbs
        self.rnd = random.Random(seed)
        self.last = {}
        self.seq = env.bpf.write_seq

    def one(self, i):
        self.seq += 1
        k = key_for(i % self.nkeys)
        db = (i % self.nkeys) % self.dbs
        v = value_for(self.seq, self.rnd)
        self.env.bpf.produce_wait(k, v, db=db)
        self.last[(db, k)] = v

    def run(self, n):
        for i in range(n):
            self.one(i)

    def _run_thread(self, n):
        try:
            self.run(n)
        except BaseException as e:  # reported by join()
            self.error = e

    def start_thread(self, n):
        self.error = None
        self.thread = threading.Thread(target=self._run_thread, args=(n,), daemon=True)
        self.thread.start()
        return self

    def join(self, timeout=60):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), 'producer still running after %d s' % timeout
        if self.error:
            raise self.error

    def check_redis(self):
        clients = {db: self.env.redis.client(db) for db in range(self.dbs)}
        bad = [(db, k) for (db, k), v in self.last.items() if clients[db].get(k) != v]
        assert not bad, '%d keys differ from the last write, e.g. %r' % (len(bad), bad[:3])


def aof_seqs(redis_proc):
    return [struct.unpack('<Q', c[2][:8])[0] for c in redis_proc.aof_commands()
            if c[0].upper() == b'SET' and len(c) == 3 and len(c[2]) >= 8]


def check_replay(seqs, n, max_rewinds):
    """Redis executed 1..n in order, except whole suffixes sent again after a
    restart (a rewind): never a skip ahead, never fewer than n distinct."""
    prev, rewinds = 0, 0
    for pos, s in enumerate(seqs):
        if s != prev + 1:
            assert s <= prev, 'seq %d follows %d at AOF command %d: skipped ahead (lost or reordered)' % (
                s, prev, pos)
            rewinds += 1
        prev = s
    assert set(seqs) == set(range(1, n + 1)), 'missing seqs: %s' % sorted(set(range(1, n + 1)) - set(seqs))[:10]
    assert rewinds <= max_rewinds, '%d replays, at most %d expected' % (rewinds, max_rewinds)
    print('%d records, %d commands in the AOF, %d replays' % (n, len(seqs), rewinds))
    return rewinds


def wait_connected(agent, env):
    wait_for(lambda: (agent.read_stats() or {}).get('redis_connected') and
             (agent.read_stats() or {}).get('flushes', 0) >= 1, timeout=10,
             what='agent connected and cache flushed once (stats file)')


# ------------------------------------------------------------------ apply path

def test_10k_records_in_order_binary_safe_and_stats(env):
    agent = env.agent()
    w = Workload(env, nkeys=500, dbs=3)
    w.run(10000)
    env.wait_applied(10000)
    assert env.bpf.applied_seq == 10000
    w.check_redis()
    check_replay(aof_seqs(env.redis), 10000, max_rewinds=0)

    def settled():
        s = agent.read_stats()
        return s if s and s['applied'] == 10000 else None
    s = wait_for(settled, timeout=5, what='stats file showing 10000 applied')
    for k in ('applied', 'batches', 'records_per_batch', 'apply_delay_us', 'lag_records',
              'invalidations_received', 'invalidations_applied', 'invalidations_kept', 'errors',
              'reconnects'):
        assert k in s, k
    assert s['batches'] >= 10000 / 256
    assert abs(s['records_per_batch'] - 10000 / s['batches']) < 0.01
    d = s['apply_delay_us']
    assert 0 < d['p50'] <= d['p99'] <= d['p999'] <= d['max'] and d['count'] == 10000
    assert s['lag_records'] == 0 and s['applied_seq'] == 10000 and s['write_seq'] == 10000
    assert s['errors'] == 0 and s['reconnects'] == 0
    assert agent.alive()


def test_applied_seq_is_a_contiguous_prefix(env):
    """Records of different keys may arrive out of seq order (several CPUs)."""
    wait_connected(env.agent(), env)   # started (write_seq read) before we fake it
    env.bpf.write_seq = 3
    env.bpf.produce_wait(b'k3', struct.pack('<Q', 3), seq=3)
    env.bpf.produce_wait(b'k2', struct.pack('<Q', 2), seq=2)
    wait_for(lambda: env.redis.client().get(b'k2'), what='k2 applied')
    time.sleep(0.3)
    assert env.bpf.applied_seq == 0, 'seq 1 is not applied yet'
    env.bpf.produce_wait(b'k1', struct.pack('<Q', 1), seq=1)
    env.wait_applied(3)
    env.bpf.write_seq = 5
    env.bpf.produce_wait(b'k5', b'5', seq=5)
    env.bpf.produce_wait(b'k4', b'4', seq=4)
    env.wait_applied(5)


def test_bad_db_is_logged_counted_and_skipped(env):
    agent = env.agent()
    env.bpf.produce_wait(b'good1', b'1')
    env.bpf.produce_wait(b'bad', b'x', db=100)
    env.bpf.produce_wait(b'good2', b'2')
    env.wait_applied(3)
    assert env.redis.client().get(b'good2') == b'2'
    wait_for(lambda: (agent.read_stats() or {}).get('errors') == 1, timeout=5, what='errors == 1')
    assert 'NOT applied' in agent.log_text()


def test_retryable_error_reply_stalls_then_resends(env):
    agent = env.agent()
    r = env.redis.client()
    r.config_set('maxmemory-policy', 'noeviction')
    r.config_set('maxmemory', '1')
    for i in range(20):
        env.bpf.produce_wait(b'oom%d' % i, b'v%d' % i)
    wait_for(lambda: (agent.read_stats() or {}).get('retries', 0) >= 1, timeout=5, what='OOM retries')
    assert env.bpf.applied_seq == 0
    r.config_set('maxmemory', '0')
    env.wait_applied(20)
    assert [r.get(b'oom%d' % i) for i in range(20)] == [b'v%d' % i for i in range(20)]
    assert 'OOM' in agent.log_text()


# ---------------------------------------------------------------- failures

def test_redis_killed_and_restarted_midstream_loses_nothing(env):
    agent = env.agent()
    w = Workload(env, nkeys=300)
    w.start_thread(6000)
    env.wait_applied(1500)
    env.redis.kill(signal.SIGKILL)
    time.sleep(0.5)
    env.redis.start()
    w.join()
    env.wait_applied(6000, timeout=60)
    w.check_redis()
    check_replay(aof_seqs(env.redis), 6000, max_rewinds=1)
    wait_for(lambda: (agent.read_stats() or {}).get('reconnects', 0) >= 1, timeout=5, what='reconnects >= 1')
    assert 'Redis unreachable' in agent.log_text()


def test_frozen_redis_times_out_the_apply_and_loses_nothing(env):
    """The agent waits for Redis's replies in poll(), with the command timeout
    (10 s) as the bound: a Redis that stops answering mid-batch (SIGSTOP) is
    given up on, the connection opened again, and every record applied once
    Redis runs again, in order."""
    agent = env.agent()
    w = Workload(env, nkeys=300)
    w.start_thread(3000)
    env.wait_applied(500)
    env.redis.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: 'no reply within the command timeout' in agent.log_text(), timeout=25,
                 what='the apply to give up on a frozen Redis after the command timeout')
    finally:
        env.redis.proc.send_signal(signal.SIGCONT)
    w.join()
    env.wait_applied(3000, timeout=60)
    w.check_redis()
    check_replay(aof_seqs(env.redis), 3000, max_rewinds=1)
    assert agent.alive()


def test_agent_sigkilled_and_restarted_loses_nothing_and_keeps_order(env):
    agent = env.agent()
    w = Workload(env, nkeys=300)
    w.start_thread(6000)
    for at in (1500, 3500):
        env.wait_applied(at)
        agent.kill(signal.SIGKILL)
        time.sleep(0.2)
        agent = env.agent()
    w.join()
    env.wait_applied(6000, timeout=60)
    w.check_redis()
    check_replay(aof_seqs(env.redis), 6000, max_rewinds=2)
    assert 'records waiting in the ring' in agent.log_text()


def test_sigterm_finishes_the_batch_and_exits_0(env):
    agent = env.agent(batch=64)
    w = Workload(env, nkeys=100)
    w.start_thread(4000)
    env.wait_applied(1000)
    assert agent.kill(signal.SIGTERM) == 0
    stopped_at = env.bpf.applied_seq
    assert stopped_at >= 1000
    assert not agent.pidfile.exists()
    assert 'records left in the ring' in agent.log_text()
    agent = env.agent()
    w.join()
    env.wait_applied(4000)
    w.check_redis()
    # a clean stop acknowledged everything it sent: no replay at all
    check_replay(aof_seqs(env.redis), 4000, max_rewinds=0)


def test_restart_recovers_records_consumed_but_not_published(env):
    """A previous agent applied seqs 1..5 and moved the consumer, then died
    before publishing applied_seq: the next one must not wait for them."""
    for i in range(1, 11):
        env.bpf.produce_wait(b'r%d' % i, struct.pack('<Q', i))
    cons = mmap.mmap(env.bpf.fds['erb_events'], mmap.PAGESIZE, mmap.MAP_SHARED,
                     mmap.PROT_READ | mmap.PROT_WRITE)
    struct.pack_into('<Q', cons, 0, 5 * RECORD_SAMPLE)
    cons.close()
    agent = env.agent()
    env.wait_applied(10)
    assert aof_seqs(env.redis) == list(range(6, 11))
    assert 'applied_seq 5 (was 0)' in agent.log_text()


def test_pins_removed_the_agent_applies_what_the_old_ring_holds_then_exits(env):
    """ERB detached (or detached and attached again) outside the role: the agent's maps are no
    longer the pinned ones. It must apply every record the old ring holds (acknowledged writes),
    also when Redis is down at that moment, and only then exit, for a restart on the maps there
    now; not go on forever on maps nothing writes to."""
    agent = env.agent()
    wait_connected(agent, env)
    env.bpf.produce_wait(b'before', b'1')
    env.wait_applied(1)
    env.redis.kill(signal.SIGKILL)
    for i in range(10):
        env.bpf.produce_wait(b'held%d' % i, b'v%d' % i)
    (env.bpf.pin_dir / 'map_erb_global').unlink()
    time.sleep(2.5)                       # its records are not in Redis yet (Redis is down): it stays
    assert agent.alive(), agent.log_text()[-2000:]
    env.redis.start()
    assert agent.proc.wait(timeout=30) == 1
    assert env.bpf.applied_seq == 11
    c = env.redis.client()
    assert [c.get(b'held%d' % i) for i in range(10)] == [b'v%d' % i for i in range(10)]
    assert 'were removed or replaced (ERB detached, or attached again): every record of the old ring ' \
        'applied' in agent.log_text()


def test_startup_errors_are_clear(env, tmp_path):
    p = subprocess.run([str(agentlib.AGENT_BIN), '--pin-dir', str(tmp_path / 'nope'),
                        '--redis-sock', str(env.redis.sock)], capture_output=True, text=True, timeout=10, check=False)
    assert p.returncode == 2 and 'cannot open pin dir' in p.stderr
    p = subprocess.run([str(agentlib.AGENT_BIN)], capture_output=True, text=True, timeout=10, check=False)
    assert p.returncode == 2 and '--pin-dir is required' in p.stderr
    # Redis down at start: the agent waits, says so, and applies once it is up
    env.redis.kill(signal.SIGKILL)
    agent = env.agent()
    env.bpf.produce_wait(b'late', b'ok')
    wait_for(lambda: 'Redis unreachable' in agent.log_text(), timeout=5, what='unreachable message')
    assert agent.alive()
    # a second agent on the same pin dir is refused
    p = subprocess.run(env.agents[0].args[:5], capture_output=True, text=True, timeout=10, check=False)
    assert p.returncode == 3 and 'another erb-agent' in p.stderr
    env.redis.start()
    env.wait_applied(1)
    assert env.redis.client().get(b'late') == b'ok'
    assert 'connected to Redis after' in agent.log_text()


# ---------------------------------------------------------------- invalidation

def test_invalidations_delete_changed_keys_and_keep_equal_ones(env):
    agent = env.agent()
    wait_connected(agent, env)
    r = env.redis.client()
    other = env.redis.client()
    for k in (b'a', b'b', b'c', b'd', b'e', b'f', b'g'):
        r.set(k, b'val-' + k)
    time.sleep(0.2)   # let the invalidations of these SETs pass before caching
    for k in (b'a', b'b', b'c', b'd', b'e', b'g'):
        env.bpf.cache_put(k, b'val-' + k, wseq=0)
    env.bpf.cache_put(b'f', b'pending', wseq=10 ** 9)   # not applied yet: never deleted
    assert all(env.bpf.cache_state(k) == 'valid' for k in (b'a', b'b', b'c', b'd', b'e', b'f', b'g'))
    kept0 = agent.read_stats()['invalidations_kept']

    other.set(b'a', b'changed')            # SET by another client
    other.pexpire(b'b', 200)               # expiry
    other.delete(b'c')                     # DEL
    other.set(b'd', b'val-d')              # same value: entry verified equal, kept
    other.set(b'f', b'redis-side')         # entry newer than applied_seq: kept
    other.delete(b'g')
    other.rpush(b'g', b'x')                # not a string any more
    for k in (b'a', b'c', b'g'):
        wait_for(lambda k=k: env.bpf.cache_state(k) == 'gone', timeout=5, what='%r deleted' % k)
    wait_for(lambda: env.bpf.cache_state(b'b') == 'gone', timeout=5, what='expired b deleted')

    def kept_both():
        stats = agent.read_stats()
        return stats if stats['invalidations_kept'] >= kept0 + 2 else None

    s = wait_for(kept_both, timeout=5, what='d and f counted as kept')
    assert env.bpf.cache_state(b'd') == 'valid'
    assert env.bpf.cache_state(b'e') == 'valid'
    assert env.bpf.cache_state(b'f') == 'valid'
    assert s['invalidations_applied'] >= 4


def test_own_applies_do_not_delete_fresh_entries(env):
    agent = env.agent()
    wait_connected(agent, env)
    received0 = agent.read_stats()['invalidations_received']
    for i in range(1, 51):
        env.bpf.cache_put(b'own%d' % i, b'v%d' % i, wseq=i)
        env.bpf.produce_wait(b'own%d' % i, b'v%d' % i)
    env.wait_applied(50)
    time.sleep(1.2)
    assert all(env.bpf.cache_state(b'own%d' % i) == 'valid' for i in range(1, 51))
    assert agent.read_stats()['invalidations_received'] == received0, 'NOLOOP: own SETs must not echo'


def test_flushall_empties_the_cache_but_never_pending_entries(env):
    agent = env.agent()
    wait_connected(agent, env)
    r = env.redis.client()
    gen = env.bpf.cache_gen
    env.bpf.cache_put(b'x', b'1')
    r.flushall()
    wait_for(lambda: env.bpf.cache_gen == gen + 1, timeout=5, what='cache_gen bumped by FLUSHALL')
    assert env.bpf.cache_state(b'x') == 'gone'
    # writes pending (write_seq > applied_seq): sweep, keep what Redis lacks
    env.bpf.write_seq = env.bpf.applied_seq + 5
    gen = env.bpf.cache_gen
    env.bpf.cache_put(b'acked', b'1', wseq=env.bpf.applied_seq)
    env.bpf.cache_put(b'pending', b'2', wseq=env.bpf.applied_seq + 3)
    r.flushall()
    wait_for(lambda: env.bpf.cache_state(b'acked') == 'gone', timeout=5, what='acked entry swept')
    assert env.bpf.cache_state(b'pending') == 'valid'
    assert env.bpf.cache_gen == gen
    assert 'cache swept' in agent.log_text()


def test_daemon_mode_with_pidfile_and_auth(env, tmp_path):
    env.redis.client().config_set('requirepass', 's3cret')
    pwfile = tmp_path / 'pw'
    pwfile.write_text('s3cret\n')
    agent = env.agent(start=False, extra=['--daemon', '--redis-password-file', str(pwfile)])
    p = subprocess.run(agent.args, capture_output=True, text=True, timeout=10, check=False)
    assert p.returncode == 0, p.stderr
    pid = int(wait_for(lambda: agent.pidfile.exists() and agent.pidfile.read_text().strip(), timeout=5,
                       what='pidfile'))
    try:
        env.bpf.produce_wait(b'authed', b'yes')
        env.wait_applied(1)
        r = agentlib.redis.Redis(unix_socket_path=str(env.redis.sock), password='s3cret')
        assert r.get(b'authed') == b'yes'
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not agentlib.pid_alive(pid), timeout=10, what='daemon to exit')
    assert not agent.pidfile.exists()
    assert 'stopped: applied_seq 1' in agent.log_text()


# ------------------------------------------------------ coherence with Redis

def test_invalidation_reads_the_slot_tags(env):
    # erb_tags says which key a slot last held: the agent reads an entry only
    # when its slot's tag matches the key's hash. An entry behind a tag of
    # another key is not looked at (counted as not cached, left as it is); with
    # its own tag back, the next invalidation deletes it.
    agent = env.agent()
    wait_connected(agent, env)
    r = env.redis.client()
    r.set(b'tagged', b'v1')
    time.sleep(0.2)
    slot = env.bpf.cache_put(b'tagged', b'v1')
    own = env.bpf.tags[slot]
    env.bpf.tags[slot] = (own % 255) + 1            # another key's tag

    def not_cached():
        return (agent.read_stats() or {}).get('invalidations_not_cached', 0)

    before = not_cached()
    r.set(b'tagged', b'v2')
    wait_for(lambda: not_cached() > before, timeout=5,
             what='invalidation of a slot tagged for another key counted as not cached')
    assert env.bpf.cache_state(b'tagged') == 'valid'
    env.bpf.tags[slot] = own
    r.set(b'tagged', b'v3')
    wait_for(lambda: env.bpf.cache_state(b'tagged') == 'gone', timeout=5, what='entry deleted by its own tag')


def test_invalidation_of_an_uncached_key_bumps_its_write_epoch(env):
    # A write-through fill of k captured before another client's SET k is in
    # flight: the key is not cached yet, so only its bucket's write epoch can
    # cancel the fill (erb.bpf.c compares it before and after storing).
    agent = env.agent()
    wait_connected(agent, env)
    other = env.redis.client()
    before = env.bpf.wepoch(b'uncached')
    assert env.bpf.cache_state(b'uncached') == 'gone'
    other.set(b'uncached', b'changed elsewhere')
    wait_for(lambda: env.bpf.wepoch(b'uncached') > before, timeout=5,
             what='write epoch of the invalidated, uncached key bumped')
    # a cached key's bucket too (its fill may be in flight as well)
    other.set(b'cached', b'x')
    time.sleep(0.2)
    env.bpf.cache_put(b'cached', b'x')
    before = env.bpf.wepoch(b'cached')
    other.set(b'cached', b'y')
    wait_for(lambda: env.bpf.wepoch(b'cached') > before, timeout=5, what='cached key epoch bumped')
    wait_for(lambda: (agent.read_stats() or {}).get('epoch_bumps', 0) >= 2, timeout=5, what='epoch_bumps >= 2')


def test_flush_with_writes_pending_bumps_every_write_epoch(env):
    # cache_gen stays when writes are pending: fills in flight are cancelled
    # through the epochs instead
    agent = env.agent()
    wait_connected(agent, env)
    env.bpf.write_seq = env.bpf.applied_seq + 5
    before = [env.bpf.wepoch(b'k%d' % i) for i in range(5)]
    env.redis.client().flushall()
    wait_for(lambda: 'cache swept' in agent.log_text(), timeout=5, what='sweep')
    assert all(env.bpf.wepoch(b'k%d' % i) > before[i] for i in range(5))


@pytest.mark.parametrize('io_path', ['ring', 'kmod'])
def test_redis_restart_empties_the_cache_before_redis_answers_again(env, io_path):
    if io_path == 'kmod':
        # erb_io applies the SETs (ERB_CTL_KMOD): the agent only invalidates, on a restart too
        struct.pack_into('<I', env.bpf.glob, agentlib.G_CTL, agentlib.CTL_KMOD)
    agent = env.agent()
    wait_connected(agent, env)
    assert ('I/O path erb_io' in agent.log_text()) == (io_path == 'kmod')
    r = env.redis.client()
    r.set(b'x', b'1')
    time.sleep(0.2)
    env.bpf.cache_put(b'x', b'1')
    env.bpf.write_seq = env.bpf.applied_seq + 5
    env.bpf.cache_put(b'pending', b'2', wseq=env.bpf.applied_seq + 3)
    env.redis.kill(signal.SIGKILL)
    # Redis is down: a restarted Redis may hold less (here: nothing) than the
    # cache, so the cache is emptied now, before Redis can answer again ...
    wait_for(lambda: env.bpf.cache_state(b'x') == 'gone', timeout=5,
             what='cache emptied while Redis is down')
    assert env.redis.proc.poll() is not None
    # ... never dropping an acknowledged write Redis does not have yet
    assert env.bpf.cache_state(b'pending') == 'valid'
    env.redis.start()
    wait_for(lambda: (agent.read_stats() or {}).get('redis_restarts') == 1, timeout=10,
             what='restart seen (new run_id)')
    assert 'Redis restarted (run_id' in agent.log_text()
    assert env.bpf.cache_state(b'pending') == 'valid'


@pytest.mark.parametrize('refuse, accept, code', [
    ([('CONFIG', 'SET', 'maxmemory-policy', 'noeviction'), ('CONFIG', 'SET', 'maxmemory', '1')],
     [('CONFIG', 'SET', 'maxmemory', '0')], 'OOM'),
    ([('REPLICAOF', '127.0.0.1', '1')], [('REPLICAOF', 'NO', 'ONE')], 'READONLY'),
    ([('CONFIG', 'SET', 'save', '3600 1'), ('CONFIG', 'SET', 'dir', '/proc'), ('BGSAVE',)],
     [('CONFIG', 'SET', 'stop-writes-on-bgsave-error', 'no')], 'MISCONF'),
], ids=['oom', 'readonly', 'misconf'])
def test_refused_sets_are_sent_again_in_order(env, refuse, accept, code):
    if code == 'MISCONF':
        env.redis.kill()       # CONFIG SET dir is a protected config
        env.redis.extra = ['--enable-protected-configs', 'yes']
        env.redis.start()
    agent = env.agent()
    wait_connected(agent, env)
    r = env.redis.client()
    home = r.config_get('dir')['dir']
    for cmd in refuse:
        r.execute_command(*cmd)
    if code == 'MISCONF':
        wait_for(lambda: r.info('persistence')['rdb_last_bgsave_status'] == 'err', timeout=10,
                 what='failed BGSAVE')
    for i in range(20):
        env.bpf.produce_wait(b'r%d' % i, b'v%d' % i)
    wait_for(lambda: (agent.read_stats() or {}).get('retries', 0) >= 1, timeout=5, what='retries')
    time.sleep(0.3)
    assert env.bpf.applied_seq == 0
    assert code in agent.log_text()
    for cmd in accept:
        r.execute_command(*cmd)
    env.wait_applied(20)
    assert [r.get(b'r%d' % i) for i in range(20)] == [b'v%d' % i for i in range(20)]
    assert agent.read_stats()['errors'] == 0
    if code == 'MISCONF':
        r.config_set('dir', home)


def test_password_file_is_read_again_at_every_connect(env, tmp_path):
    r = env.redis.client()
    r.config_set('requirepass', 'pw-one')
    pwfile = tmp_path / 'pw'
    pwfile.write_text('pw-one\n')
    pwfile.chmod(0o600)
    agent = env.agent(extra=['--redis-password-file', str(pwfile)])
    env.bpf.produce_wait(b'a1', b'1')
    env.wait_applied(1)
    # the password rotates; Redis drops every client
    admin = agentlib.redis.Redis(unix_socket_path=str(env.redis.sock), password='pw-one')
    admin.config_set('requirepass', 'pw-two')
    pwfile.write_text('pw-two\n')
    admin.execute_command('CLIENT', 'KILL', 'TYPE', 'pubsub')
    admin.execute_command('CLIENT', 'KILL', 'TYPE', 'normal')
    env.bpf.produce_wait(b'a2', b'2')
    env.wait_applied(2, timeout=15)
    admin = agentlib.redis.Redis(unix_socket_path=str(env.redis.sock), password='pw-two')
    assert admin.get(b'a2') == b'2'
    assert 'pw-one' not in agent.log_text() and 'pw-two' not in agent.log_text()


HASH_REPLY = b'*2\r\n$1\r\nf\r\n$1\r\nv\r\n'


def test_hash_entries_of_keys_with_a_ttl_are_deleted(env):
    # HGETALL fills: a hash with a TTL is never kept (Redis expires it unseen
    # by XDP hits), nor a gone one; an unverified fill (type 2, not served)
    # becomes servable once Redis says it has no TTL
    agent = env.agent()
    wait_connected(agent, env)
    r = env.redis.client()
    for k in (b'h_plain', b'h_ttl', b'h_new', b'h_new_ttl'):
        r.hset(k, b'f', b'v')
    r.expire(b'h_ttl', 100)
    r.expire(b'h_new_ttl', 100)
    time.sleep(0.2)   # the invalidations of these writes pass before caching
    T = agentlib
    for k, typ in ((b'h_plain', T.TYPE_HASH), (b'h_ttl', T.TYPE_HASH), (b'h_gone', T.TYPE_HASH),
                   (b'h_new', T.TYPE_HASH_UNVERIFIED), (b'h_new_ttl', T.TYPE_HASH_UNVERIFIED)):
        env.bpf.queue_fill(env.bpf.cache_put(k, HASH_REPLY, typ=typ))  # as erb.bpf.c does after a fill
    env.bpf.cache_put(b's_plain', b'v')
    for k in (b'h_ttl', b'h_gone', b'h_new_ttl'):
        wait_for(lambda k=k: env.bpf.cache_state(k) == 'gone', timeout=5, what='%r deleted' % k)
    wait_for(lambda: (env.bpf.cache_entry(b'h_new') or {}).get('type') == T.TYPE_HASH, timeout=5,
             what='unverified fill without TTL made servable')
    assert env.bpf.cache_entry(b'h_plain')['type'] == T.TYPE_HASH
    assert env.bpf.cache_state(b's_plain') == 'valid'

    def hashes_checked():
        s = agent.read_stats() or {}
        return s.get('hash_deleted', 0) >= 3 and s.get('hash_verified', 0) >= 2

    wait_for(hashes_checked, timeout=5, what='hash_deleted >= 3, hash_verified >= 2')
    # a TTL set later: its invalidation deletes the entry
    r.expire(b'h_plain', 100)
    wait_for(lambda: env.bpf.cache_state(b'h_plain') == 'gone', timeout=5, what='h_plain deleted')


def test_get_fills_are_served_only_once_checked_for_a_ttl(env):
    # GET fills (type 3, never served) become servable strings once Redis says the
    # key has no TTL; a key with a TTL (Redis expires it unseen by XDP hits) or a gone
    # one is deleted. Strings written through SET need no check.
    agent = env.agent()
    wait_connected(agent, env)
    r = env.redis.client()
    r.set(b'g_plain', b'v')
    r.set(b'g_ttl', b'v', ex=100)
    time.sleep(0.2)   # the invalidations of these writes pass before caching
    T = agentlib
    for k in (b'g_plain', b'g_ttl', b'g_gone'):
        env.bpf.queue_fill(env.bpf.cache_put(k, b'v', typ=T.TYPE_STRING_UNVERIFIED))  # as erb.bpf.c does
    env.bpf.cache_put(b's_set', b'v')
    for k in (b'g_ttl', b'g_gone'):
        wait_for(lambda k=k: env.bpf.cache_state(k) == 'gone', timeout=5, what='%r deleted' % k)
    wait_for(lambda: (env.bpf.cache_entry(b'g_plain') or {}).get('type') == T.TYPE_STRING, timeout=5,
             what='GET fill without TTL made servable')
    assert env.bpf.cache_state(b's_set') == 'valid'
    wait_for(lambda: (agent.read_stats() or {}).get('get_deleted', 0) >= 2 and
             (agent.read_stats() or {}).get('get_verified', 0) >= 1, timeout=5,
             what='get_deleted >= 2, get_verified >= 1')


def walk_done(agent):
    """The agent's walk of the cache at start has ended: slots_walked stopped moving."""
    seen = []

    def still():
        s = agent.read_stats() or {}
        seen.append(s.get('slots_walked'))
        return len(seen) > 3 and seen[-1] is not None and seen[-1] == seen[-4]

    wait_for(still, timeout=10, interval=0.1, what='the walk at start to end (slots_walked: %s)' % seen[-4:])
    return seen[-1]


def agent_walked(env, keys):
    """An agent connected, keys SET in Redis (no TTL) and their invalidations passed, the
    agent's walk at start ended: (agent, slots_walked)."""
    agent = env.agent()
    wait_connected(agent, env)
    r = env.redis.client()
    for k in keys:
        r.set(k, b'v')
    time.sleep(0.2)   # the invalidations of these writes pass before caching
    return agent, walk_done(agent)


def wait_fills_servable(env, agent, keys, timeout):
    """Every key's unverified GET fill made a servable string, and counted in the stats:
    (the agent's stats, time.monotonic() when the last fill was seen servable)."""
    wait_for(lambda: all((env.bpf.cache_entry(k) or {}).get('type') == agentlib.TYPE_STRING for k in keys),
             timeout=timeout, what='%d queued GET fills made servable' % len(keys))
    servable = time.monotonic()
    wait_for(lambda: (agent.read_stats() or {}).get('get_verified', 0) >= len(keys), timeout=5,
             what='get_verified >= %d in the stats' % len(keys))
    return agent.read_stats(), servable


def test_fills_are_checked_from_the_fill_queue_without_walking_the_cache(env):
    # erb_global.fillq hands the agent the slot of each fill: after its walk at start, the
    # agent checks queued fills within rounds of 10 ms and walks no cache slot for them
    keys = [b'q%d' % i for i in range(30)]
    agent, walked = agent_walked(env, keys)
    assert (agent.read_stats() or {}).get('fill_walks') == 1
    t0 = time.monotonic()
    for k in keys:
        env.bpf.queue_fill(env.bpf.cache_put(k, b'v', typ=agentlib.TYPE_STRING_UNVERIFIED))
    s, servable = wait_fills_servable(env, agent, keys, timeout=5)
    took = servable - t0
    assert (s.get('slots_walked'), s.get('fill_walks')) == (walked, 1), \
        'the agent walked the cache for queued fills: %s' % s
    print('30 queued fills checked in %.3f s, no slot walked' % took)


def test_an_outrun_fill_queue_falls_back_to_a_walk(env):
    # more fills than the queue holds between two looks (fillq_head moved past
    # ERB_FILLQ): the agent walks the cache again and still checks every fill
    keys = [b'o%d' % i for i in range(5)]
    agent, walked = agent_walked(env, keys)
    slots = [env.bpf.cache_put(k, b'v', typ=agentlib.TYPE_STRING_UNVERIFIED) for k in keys]
    head = env.bpf.fillq_head + 3 * agentlib.L.ERB_FILLQ      # fills the agent never saw queued
    for s in slots:
        env.bpf.queue_fill(s, head=head)
        head += 1
    s, _unused = wait_fills_servable(env, agent, keys, timeout=10)
    assert s.get('fill_walks') == 2 and s.get('slots_walked', 0) > walked, s


def test_loading_redis_is_waited_for_and_nothing_is_lost(env):
    # Redis loading its dataset after a restart answers -LOADING to everything
    front = agentlib.LoadingFront(env.tmp / 'front.sock', env.redis.sock)
    try:
        agent = agentlib.Agent(env.bpf.pin_dir, front.path, env.tmp, batch=256)
        env.agents.append(agent)
        agent.start()
        for i in range(20):
            env.bpf.produce_wait(b'l%d' % i, b'v%d' % i)
        wait_for(lambda: front.refused >= 3, timeout=5, what='commands refused with LOADING')
        time.sleep(0.3)
        assert env.bpf.applied_seq == 0
        assert 'Redis not ready (LOADING' in agent.log_text()
        front.release()
        env.wait_applied(20)
        r = env.redis.client()
        assert [r.get(b'l%d' % i) for i in range(20)] == [b'v%d' % i for i in range(20)]
        assert agent.read_stats()['errors'] == 0
    finally:
        front.close()
