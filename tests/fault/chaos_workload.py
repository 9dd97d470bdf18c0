# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The chaos workload: real Redis clients, each owning its keys and modelling every reply.

Run inside a client namespace, against one Redis (ERB or not) for a bounded time:

    ip netns exec erb-c1 .venv/bin/python tests/fault/chaos_workload.py \
        --host 10.250.1.1 --prefix chaos:loss --seconds 25 --out /tmp/w1.json

Clients (each a process of its own, see run_apart()):
  py<n>   redis-py, one command per round trip: plain SET (ERB's fast path), GET hits and
          misses, DEL of several keys, INCR, APPEND, MGET, and MULTI/EXEC transactions
  pipe    redis-py pipeline (no transaction) of 5-30 mixed commands per round trip
  cli     a long-running `redis-cli --no-raw` fed on stdin, SET/GET/INCR/APPEND/DEL/MGET
redis-py never retries here (a retried INCR would run twice). A request that fails
(timeout, reset) is an error: its keys then may hold either their old or their new
value, and the model keeps both until a reply decides.

The model of a key is the set of values it may hold (None: absent); every reply must be
possible under it. The JSON written to --out has per client: ops (commands), requests
(round trips), wrong (each with command, expected, got, time and the connection's local
port), errors, slowest request and a latency summary; and the final model of every key,
which the caller compares with Redis once writes are applied.
"""

import argparse
import ctypes
import json
import os
import random
import re
import select
import string
import subprocess
import threading
import time

MAX_DETAILS = 20
SLOW_DETAIL = 0.15  # requests slower than this (s) are listed, up to MAX_DETAILS per client
TIMING = re.compile(r'^\(\d+\.\d+s\)$')


class Wrong(Exception):
    pass


def is_int(v):
    if v is None:
        return False
    try:
        n = int(v)
    except ValueError:
        return False
    return str(n) == v and -(1 << 63) <= n < (1 << 63)


class Model(object):
    """{key: set of possible values} for the keys one client owns."""

    def __init__(self):
        self.k = {}

    def get(self, key):
        return self.k.setdefault(key, {None})

    # -- each returns (possible replies, {reply: new candidates}) via apply()
    @staticmethod
    def outcomes(cmd, args, state):
        """[(reply, new value)] of a single-key command on a value `state`."""
        if cmd == 'SET':
            return 'OK', args[1]
        if cmd == 'GET':
            return state, state
        if cmd == 'INCR':
            if state is None:
                return 1, '1'
            if is_int(state) and int(state) + 1 < (1 << 63):
                return int(state) + 1, str(int(state) + 1)
            return 'ERR', state
        if cmd == 'APPEND':
            new = (state or '') + args[1]
            return len(new), new
        raise ValueError(cmd)

    def single(self, cmd, args, reply):
        """Check the reply of a one-key command, update the model; raises Wrong."""
        key = args[0]
        cands = self.get(key)
        nxt = set()
        possible = []
        for c in cands:
            r, new = self.outcomes(cmd, args, c)
            possible.append(r)
            if r == reply:
                nxt.add(new)
        if not nxt:
            raise Wrong('%s %s: got %r, possible %r (model %r)' % (cmd, ' '.join(map(str, args))[:80], reply,
                                                                   sorted(map(repr, set(possible))),
                                                                   sorted(map(repr, cands))))
        self.k[key] = nxt

    def failed(self, cmd, args):
        """The command may or may not have run: keep both possibilities."""
        if cmd in ('GET', 'MGET'):
            return
        keys = args if cmd == 'DEL' else [args[0]]
        for key in keys:
            cands = self.get(key)
            if cmd == 'DEL':
                self.k[key] = cands | {None}
            else:
                self.k[key] = cands | {self.outcomes(cmd, args, c)[1] for c in cands}

    def check(self, cmd, args, reply):
        if cmd in ('SET', 'GET', 'INCR', 'APPEND'):
            if cmd == 'SET' and reply is True:
                reply = 'OK'
            return self.single(cmd, args, reply)
        if cmd == 'MGET':
            if not isinstance(reply, list) or len(reply) != len(args):
                raise Wrong('MGET %s: got %r' % (' '.join(args), reply))
            seen = {}
            for key, r in zip(args, reply):
                if key in seen:
                    if seen[key] != r:
                        raise Wrong('MGET %s: %s twice, got %r and %r' % (' '.join(args), key, seen[key], r))
                    continue
                seen[key] = r
                if r not in self.get(key):
                    raise Wrong('MGET %s: %s got %r, model %r' % (' '.join(args), key, r,
                                                                  sorted(map(repr, self.get(key)))))
            for key, r in seen.items():
                self.k[key] = {r}
            return
        if cmd == 'DEL':
            keys = list(dict.fromkeys(args))
            lo = sum(1 for k in keys if None not in self.get(k))
            hi = sum(1 for k in keys if self.get(k) - {None})
            if not isinstance(reply, int) or not lo <= reply <= hi:
                raise Wrong('DEL %s: got %r, possible %d..%d' % (' '.join(args), reply, lo, hi))
            if reply == hi:  # every key that could exist did
                for k in keys:
                    if self.get(k) - {None}:
                        self.k[k] = self.get(k) - {None}
            if reply == lo:
                for k in keys:
                    if None in self.get(k):
                        self.k[k] = {None}
            for k in keys:
                self.k[k] = {None}
            return
        raise ValueError(cmd)

    def dump(self):
        return {k: sorted(v, key=lambda x: (x is None, x or '')) for k, v in self.k.items()}


def value(rng):
    kind = rng.random()
    if kind < 0.3:
        return str(rng.randint(0, 10 ** 6))
    n = rng.choice((1, 8, 24, 64, 64, 200, 700))
    return ''.join(rng.choice(string.ascii_letters) for _unused in range(n))


def command(rng, keys):
    """One random command on own keys: (NAME, args)."""
    x = rng.random()
    k = rng.choice(keys)
    if x < 0.30:
        return 'SET', [k, value(rng)]
    if x < 0.60:
        return 'GET', [k]
    if x < 0.68:
        return 'INCR', [k]
    if x < 0.75:
        return 'APPEND', [k, rng.choice(('x', 'ab', '7', 'tail-' + str(rng.randint(0, 99))))]
    if x < 0.88:
        return 'MGET', rng.sample(keys, rng.randint(2, 4))
    return 'DEL', rng.sample(keys, rng.randint(1, 3))


class Client(threading.Thread):
    def __init__(self, name, prefix, nkeys, deadline, seed):
        super().__init__(name=name, daemon=True)
        self.keys = ['%s:%s:%d' % (prefix, name, i) for i in range(nkeys)]
        self.model = Model()
        self.deadline = deadline
        self.rng = random.Random(seed)
        self.ops = 0
        self.requests = 0
        self.wrong = []
        self.nwrong = 0
        self.errors = []
        self.nerrors = 0
        self.lat = []
        self.slow = []
        self.slowest = (0.0, None)
        self.t0 = time.monotonic()
        self.crash = None

    def record(self, dt, what, port=None):
        self.requests += 1
        self.lat.append(dt)
        if dt > self.slowest[0]:
            self.slowest = (dt, what)
        if dt > SLOW_DETAIL and len(self.slow) < MAX_DETAILS:
            # when it started (s since the client started; wall clock, to find it in a capture)
            self.slow.append({'t': round(time.monotonic() - dt - self.t0, 3), 'wall': round(time.time() - dt, 6),
                              'after_s': round(dt, 3), 'what': what, 'lport': port})

    def bad(self, msg, port):
        self.nwrong += 1
        if len(self.wrong) < MAX_DETAILS:
            self.wrong.append({'t': round(time.monotonic() - self.t0, 3), 'what': msg, 'lport': port})

    def error(self, msg, port, dt):
        self.nerrors += 1
        if len(self.errors) < MAX_DETAILS:
            self.errors.append({'t': round(time.monotonic() - self.t0, 3), 'what': msg, 'lport': port,
                                'after_s': round(dt, 3)})

    def run(self):
        try:
            self.work()
        except Exception as e:  # reported, never silent
            import traceback
            self.crash = traceback.format_exc()
            self.nerrors += 1
            self.errors.append({'what': 'client crashed: %r' % e})

    def summary(self):
        lat = sorted(self.lat)

        def pct(p):
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 4) if lat else None
        return {'ops': self.ops, 'requests': self.requests, 'wrong': self.nwrong, 'wrong_details': self.wrong,
                'slow': slow_histogram(lat), 'slow_details': self.slow,
                'errors': self.nerrors, 'error_details': self.errors, 'slowest': round(self.slowest[0], 4),
                'slowest_what': self.slowest[1], 'p50': pct(0.5), 'p99': pct(0.99), 'p999': pct(0.999),
                'crash': self.crash}


# upper bounds (s) of the slow-request histogram: what a fault costs (under 10 ms: no fault
# recovery; around 0.2-0.3 s: one RTO or tail-loss probe; beyond: backed-off RTOs)
SLOW_BOUNDS = (0.01, 0.05, 0.15, 0.3, 0.7, 1.5)
SLOW_BUCKETS = ['<=%g' % b for b in SLOW_BOUNDS] + ['>%g' % SLOW_BOUNDS[-1]]  # fastest first


def slow_histogram(lat):
    """{bucket: [requests, seconds spent]} of latencies lat, bucket '<=bound' or '>last'."""
    h = {}
    for dt in lat:
        name = SLOW_BUCKETS[next((i for i, b in enumerate(SLOW_BOUNDS) if dt <= b), len(SLOW_BOUNDS))]
        n, t = h.get(name, (0, 0.0))
        h[name] = (n + 1, t + dt)
    return {k: [h[k][0], round(h[k][1], 3)] for k in SLOW_BUCKETS if k in h}


def redis_py(host, port, timeout):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    return redis.Redis(host=host, port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
                       decode_responses=True, retry=Retry(NoBackoff(), 0),
                       single_connection_client=True)


def lport(r):
    try:
        return r.connection._sock.getsockname()[1]
    except Exception:
        return None


def pool_port(r):
    """Local port of the pooled connection r's next pipeline takes (redis-py's pool hands out
    the connection released last), None before the first: pipelines do not use r's single
    connection."""
    try:
        return r.connection_pool._available_connections[-1]._sock.getsockname()[1]
    except (AttributeError, IndexError, OSError):
        return None


class PyClient(Client):
    """redis-py, one command (or one MULTI/EXEC) per round trip."""

    def __init__(self, name, prefix, nkeys, deadline, seed, host, port, timeout):
        super().__init__(name, prefix, nkeys, deadline, seed)
        self.connect = lambda: redis_py(host, port, timeout)

    def work(self):
        import redis
        r = self.connect()
        while time.monotonic() < self.deadline:
            if self.rng.random() < 0.06:
                self.transaction(r)
                continue
            cmd, args = command(self.rng, self.keys)
            port = lport(r)
            t = time.monotonic()
            try:
                reply = r.execute_command(cmd, *args)
            except redis.ResponseError as e:
                reply = 'ERR' if 'not an integer' in str(e) else 'error: %s' % e
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                dt = time.monotonic() - t
                self.record(dt, '%s %s (failed)' % (cmd, args[0]), port)
                self.error('%s %s: %s' % (cmd, ' '.join(args)[:80], e), port, dt)
                self.model.failed(cmd, args)
                r.close()
                r = self.connect()
                continue
            dt = time.monotonic() - t
            self.ops += 1
            self.record(dt, '%s %s' % (cmd, args[0]), port)
            try:
                self.model.check(cmd, args, reply)
            except Wrong as w:
                self.bad(str(w), port)
        r.close()

    def transaction(self, r):
        import redis
        a, b = self.rng.sample(self.keys, 2)
        v = value(self.rng)
        cmds = [('SET', [a, v]), ('INCR', [b]), ('APPEND', [a, 'm']), ('GET', [a]), ('MGET', [a, b])]
        p = r.pipeline(transaction=True)
        for c, args in cmds:
            p.execute_command(c, *args)
        port = pool_port(r)
        t = time.monotonic()
        try:
            replies = p.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            dt = time.monotonic() - t
            self.record(dt, 'MULTI/EXEC (failed)', port)
            self.error('MULTI/EXEC %s %s: %s' % (a, b, e), port, dt)
            for c, args in cmds:
                self.model.failed(c, args)
            r.close()
            return
        dt = time.monotonic() - t
        self.ops += len(cmds)
        self.record(dt, 'MULTI/EXEC %s %s' % (a, b), port)
        for (c, args), rep in zip(cmds, replies):
            if isinstance(rep, redis.ResponseError):
                rep = 'ERR' if 'not an integer' in str(rep) else 'error: %s' % rep
            try:
                self.model.check(c, args, rep)
            except Wrong as w:
                self.bad('in MULTI/EXEC: %s' % w, port)


class PipeClient(PyClient):
    """redis-py pipeline (no MULTI) of 5-30 commands per round trip."""

    def work(self):
        import redis
        r = self.connect()
        while time.monotonic() < self.deadline:
            cmds = [command(self.rng, self.keys) for _unused in range(self.rng.randint(5, 30))]
            p = r.pipeline(transaction=False)
            for c, args in cmds:
                p.execute_command(c, *args)
            port = pool_port(r)
            t = time.monotonic()
            try:
                replies = p.execute(raise_on_error=False)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                dt = time.monotonic() - t
                self.record(dt, 'pipeline of %d (failed)' % len(cmds), port)
                self.error('pipeline of %d: %s' % (len(cmds), e), port, dt)
                for c, args in cmds:
                    self.model.failed(c, args)
                r.close()
                r = self.connect()
                continue
            dt = time.monotonic() - t
            self.ops += len(cmds)
            self.record(dt, 'pipeline of %d' % len(cmds), port)
            for i, ((c, args), rep) in enumerate(zip(cmds, replies)):
                if isinstance(rep, redis.ResponseError):
                    rep = 'ERR' if 'not an integer' in str(rep) else 'error: %s' % rep
                try:
                    self.model.check(c, args, rep)
                except Wrong as w:
                    self.bad('pipeline #%d: %s' % (i, w), port)
        r.close()


class CliClient(Client):
    """A long-running redis-cli (--no-raw) fed one command per line on stdin."""

    def __init__(self, name, prefix, nkeys, deadline, seed, host, port, timeout):
        super().__init__(name, prefix, nkeys, deadline, seed)
        self.argv = ['redis-cli', '-h', host, '-p', str(port), '--no-raw']
        self.timeout = timeout
        self.proc = None
        self.buf = b''

    def start(self):
        super().start()

    def spawn(self):
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, bufsize=0)
        self.buf = b''

    def kill(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def lines(self, n, deadline):
        out = []
        while len(out) < n:
            while b'\n' not in self.buf:
                left = deadline - time.monotonic()
                r, _unused, _unused = select.select([self.proc.stdout], [], [], max(0.0, left))
                if not r:
                    raise TimeoutError('no reply within %.0f s' % self.timeout)
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise ConnectionError('redis-cli exited')
                self.buf += chunk
            line, self.buf = self.buf.split(b'\n', 1)
            line = line.decode(errors='replace')
            if TIMING.match(line):  # redis-cli's own note after a reply slower than 0.5 s
                continue
            out.append(line)
        return out

    @staticmethod
    def parse(line):
        s = line.split(') ', 1)[1] if line[:1].isdigit() and ') ' in line else line
        if s == '(nil)':
            return None
        if s.startswith('(integer) '):
            return int(s[10:])
        if s.startswith('(error) '):
            return 'ERR' if 'not an integer' in s else 'error: ' + s[8:]
        if s.startswith('"') and s.endswith('"'):
            return s[1:-1]
        if s == 'OK':
            return 'OK'
        return 'unparsed: ' + line

    def work(self):
        self.spawn()
        while time.monotonic() < self.deadline:
            cmd, args = command(self.rng, self.keys)
            t = time.monotonic()
            try:
                self.proc.stdin.write((' '.join([cmd] + args) + '\n').encode())
                lines = self.lines(len(args) if cmd == 'MGET' else 1, t + self.timeout)
            except (OSError, TimeoutError, ConnectionError) as e:
                dt = time.monotonic() - t
                self.record(dt, '%s %s (failed)' % (cmd, args[0]))
                self.error('%s %s: %s' % (cmd, ' '.join(args)[:80], e), None, dt)
                self.model.failed(cmd, args)
                self.kill()
                self.spawn()
                continue
            dt = time.monotonic() - t
            self.ops += 1
            self.record(dt, '%s %s' % (cmd, args[0]))
            reply = [self.parse(x) for x in lines] if cmd == 'MGET' else self.parse(lines[0])
            if any(isinstance(x, str) and x.startswith(('Error', 'Could not connect')) for x in lines):
                self.error('%s: %s' % (cmd, lines), None, dt)
                self.model.failed(cmd, args)
                continue
            try:
                self.model.check(cmd, args, reply)
            except Wrong as w:
                self.bad(str(w), None)
        self.kill()


def run_apart(clients, limit):
    """Run each client in a process of its own and return {name: {'summary', 'model', 'hung'}}.

    Real clients are separate processes. As threads of one process they would share one GIL,
    and a client served faster (an XDP answer) would take interpreter time from the others:
    the pipelining client, many commands per round trip, would then count fewer ops although
    nothing on the server side slowed it. A client still running after `limit` seconds is
    reported hung, with what it recorded until then."""
    import multiprocessing
    ctx = multiprocessing.get_context('fork')
    procs = []
    for c in clients:
        rx, tx = ctx.Pipe(duplex=False)
        p = ctx.Process(target=client_process, args=(c, limit, tx), name=c.name, daemon=True)
        p.start()
        tx.close()
        procs.append((c, p, rx))
    results = {}
    for c, p, rx in procs:
        # the child sends after its own bounded join, so this wait is bounded too
        if rx.poll(limit + 30):
            results[c.name] = rx.recv()
        else:
            c.crash = 'client process sent no result within %.0f s' % (limit + 30)
            c.nerrors += 1
            results[c.name] = {'summary': c.summary(), 'model': c.model.dump(), 'hung': True}
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()
    return results


def set_comm(name):
    """The calling thread's name (/proc/<pid>/comm of a process's main thread), at most 15 bytes."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def client_process(c, limit, tx):
    """In the child: run client c in a thread, so that a hung one can still report; send its
    result. (A Thread object made before the fork says it is not alive in the child after a
    timed-out join, so completion is an Event.) The process is named chaos-<client> (its
    comm), so that bench/chaos_cpu.py can tell the clients' CPU apart."""
    set_comm('chaos-' + c.name)
    done = threading.Event()

    def body():
        c.run()
        done.set()
    threading.Thread(target=body, daemon=True).start()
    hung = not done.wait(limit)
    tx.send({'summary': c.summary(), 'model': c.model.dump(), 'hung': hung})
    tx.close()
    if hung and getattr(c, 'proc', None):
        c.proc.kill()
    os._exit(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--host', required=True)
    ap.add_argument('--port', type=int, default=6379)
    ap.add_argument('--prefix', required=True, help='key prefix (fresh per run)')
    ap.add_argument('--seconds', type=float, default=25)
    ap.add_argument('--py-clients', type=int, default=4)
    ap.add_argument('--keys', type=int, default=12, help='keys per client')
    ap.add_argument('--timeout', type=float, default=8.0, help='a request failing after this long is an error')
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--out', required=True)
    a = ap.parse_args()
    deadline = time.monotonic() + a.seconds
    kw = dict(host=a.host, port=a.port, timeout=a.timeout)
    clients = [PyClient('py%d' % i, a.prefix, a.keys, deadline, a.seed * 100 + i, **kw)
               for i in range(a.py_clients)]
    clients.append(PipeClient('pipe', a.prefix, a.keys, deadline, a.seed * 100 + 50, **kw))
    clients.append(CliClient('cli', a.prefix, a.keys, deadline, a.seed * 100 + 60, **kw))
    t0 = time.monotonic()
    results = run_apart(clients, a.seconds + a.timeout * 3 + 30)
    elapsed = time.monotonic() - t0
    out = {'host': a.host, 'prefix': a.prefix, 'seconds': round(elapsed, 3),
           'clients': {name: r['summary'] for name, r in results.items()},
           'hung': [name for name, r in results.items() if r['hung']],
           'model': {}}
    for r in results.values():
        out['model'].update(r['model'])
    with open(a.out + '.tmp', 'w') as f:
        json.dump(out, f)
    os.replace(a.out + '.tmp', a.out)


if __name__ == '__main__':
    main()
