# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Generate plugins/module_utils/redis_commands.py from a real Redis COMMAND reply.

Starts redis-server (default /usr/bin/redis-server) on a unix socket in a
temporary directory with --port 0, asks COMMAND and INFO server, maps every
command to the flags of struct erb_cmd_spec (files/bpf/erb.h) and writes the
table.  Usage: python3 tools/gen_redis_commands.py [--redis-server PATH] [--output FILE]
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, '..', 'plugins', 'module_utils', 'redis_commands.py')

# Commands whose ERB role is not derivable from Redis's flags (see DESIGN.md).
SCRIPTS = ('EVAL', 'EVALSHA', 'EVAL_RO', 'EVALSHA_RO', 'FCALL', 'FCALL_RO')
SPECIAL = {
    'FLUSHALL': ('FLUSH', 'WRITE'),
    'FLUSHDB': ('FLUSH', 'WRITE'),
    'SWAPDB': ('FLUSH', 'WRITE'),       # swaps db 0 wholesale: the cache is stale
    'DEBUG': ('WRITE', 'KEYS_UNKNOWN'),  # DEBUG RELOAD/LOADAOF/... replace the dataset
    'GET': ('GET',),
    'SET': ('SET', 'WRITE'),
    'MULTI': ('MULTI',),
    'EXEC': ('EXEC',),
    'DISCARD': ('EXEC',),
    'SUBSCRIBE': ('SUBSCRIBE',),
    'PSUBSCRIBE': ('SUBSCRIBE',),
    'SSUBSCRIBE': ('SUBSCRIBE',),
    'MONITOR': ('SUBSCRIBE', 'UNTRACK'),
    'SELECT': ('SELECT',),
    'AUTH': ('AUTH',),
    'HELLO': ('AUTH',),
    'RESET': ('RESET',),
    # CLIENT: no flag. erb.bpf.c untracks a flow only on CLIENT REPLY (its
    # replies stop matching commands); CLIENT SETINFO etc. are harmless.
    # one reply per channel, and replies even when not subscribed: counting breaks
    'UNSUBSCRIBE': ('UNTRACK',),
    'PUNSUBSCRIBE': ('UNTRACK',),
    'SUNSUBSCRIBE': ('UNTRACK',),
    # EXEC after WATCH must see every write acknowledged before it
    'WATCH': ('WATCH',),
    # a message reaches subscribers after the pushes (tracking invalidations,
    # keyspace events) of every write acknowledged before it: it waits for them
    'PUBLISH': ('PUBLISH',),
    'SPUBLISH': ('PUBLISH',),
    'SYNC': ('UNTRACK',),
    'PSYNC': ('UNTRACK',),
    'REPLCONF': ('UNTRACK',),
}
FLAG_ORDER = ('WRITE', 'KEYS_UNKNOWN', 'FLUSH', 'GET', 'SET', 'MULTI', 'EXEC',
              'SUBSCRIBE', 'SELECT', 'AUTH', 'RESET', 'UNTRACK', 'KEYSPACE', 'WATCH', 'PUBLISH')
# Keyless commands that read the keyspace as a whole (beyond the @keyspace
# category): what they show changes with every write.
KEYSPACE_READS = ('INFO', 'DEBUG', 'MEMORY', 'LASTSAVE')


class RespError(Exception):
    pass


class Resp(object):
    """Just enough of a RESP2 client for COMMAND and INFO."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b''

    def close(self):
        self.sock.close()

    def call(self, *args):
        out = b'*%d\r\n' % len(args)
        for a in args:
            a = a.encode()
            out += b'$%d\r\n%s\r\n' % (len(a), a)
        self.sock.sendall(out)
        return self._read()

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RespError('connection closed')
            self.buf += chunk

    def _line(self):
        while b'\r\n' not in self.buf:
            self._fill(len(self.buf) + 1)
        line, self.buf = self.buf.split(b'\r\n', 1)
        return line

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b'+':
            return rest.decode()
        if kind == b'-':
            raise RespError(rest.decode())
        if kind == b':':
            return int(rest)
        if kind == b'$':
            n = int(rest)
            if n < 0:
                return None
            self._fill(n + 2)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode()
        if kind == b'*':
            n = int(rest)
            return None if n < 0 else [self._read() for _unused in range(n)]
        raise RespError('unexpected RESP type %r' % kind)


def start_redis(server, tmp):
    sock = os.path.join(tmp, 'redis.sock')
    proc = subprocess.Popen([server, '--port', '0', '--unixsocket', sock, '--save', '',
                             '--appendonly', 'no', '--dir', tmp, '--daemonize', 'no'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        if os.path.exists(sock):
            try:
                return proc, Resp(sock)
            except OSError:
                pass
        if proc.poll() is not None:
            raise RuntimeError('redis-server exited with %s' % proc.returncode)
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError('redis-server did not open %s' % sock)


def has_write(entry):
    """Write flag on the command or any of its subcommands."""
    if 'write' in entry[2]:
        return True
    subs = entry[9] if len(entry) > 9 and entry[9] else []
    return any(has_write(s) for s in subs)


def subcommands(entry):
    return entry[9] if len(entry) > 9 and entry[9] else []


def has_keys(entry):
    """Key positions (legacy or key specs) on the command or any subcommand."""
    if int(entry[3]) > 0 or 'movablekeys' in entry[2] or (len(entry) > 8 and entry[8]):
        return True
    return any(has_keys(s) for s in subcommands(entry))


def erb_flags(entry):
    """ERB_CMD_* names. A container (OBJECT, MEMORY, XINFO, ...) whose
    subcommands take keys has them where its own legacy positions do not say:
    KEYS_UNKNOWN (a read then waits for pending writes; a write empties the
    cache). A keyless command of @keyspace (KEYS, SCAN, DBSIZE, RANDOMKEY) or
    of KEYSPACE_READS reads the keyspace as a whole: KEYSPACE."""
    name = entry[0].upper()
    flags = set()
    write = has_write(entry)
    container = bool(subcommands(entry))
    if write:
        flags.add('WRITE')
    if 'movablekeys' in entry[2] or (container and (write or has_keys(entry))):
        flags.add('KEYS_UNKNOWN')
    categories = entry[6] if len(entry) > 6 else []
    if not has_keys(entry) and not write and ('@keyspace' in categories or name in KEYSPACE_READS):
        flags.add('KEYSPACE')
    if name in SCRIPTS:
        flags.update(('WRITE', 'KEYS_UNKNOWN'))
    flags.update(SPECIAL.get(name, ()))
    return tuple(f for f in FLAG_ORDER if f in flags)


def table(reply):
    cmds = {}
    for entry in reply:
        name = entry[0].upper()
        cmds[name] = (erb_flags(entry), int(entry[3]), int(entry[4]), int(entry[5]))
    return cmds


def redis_version(client):
    for line in client.call('INFO', 'server').splitlines():
        if line.startswith('redis_version:'):
            return line.split(':', 1)[1].strip()
    raise RespError('INFO server has no redis_version')


def render(version, server, cmds):
    lines = ['{']
    for name in sorted(cmds):
        flags, first, last, step = cmds[name]
        lines.append('    %r: (%r, %d, %d, %d),' % (name, flags, first, last, step))
    lines.append('}')
    body = '\n'.join(lines)
    with open(os.path.join(HERE, 'redis_commands.py.in')) as f:
        template = f.read()
    return template.replace('@VERSION@', version).replace('@SERVER@', server).replace('@COMMANDS@', body)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--redis-server', default=shutil.which('redis-server') or '/usr/bin/redis-server')
    ap.add_argument('--output', default=DEFAULT_OUTPUT)
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix='erb-redis-cmds-')
    proc = client = None
    try:
        proc, client = start_redis(args.redis_server, tmp)
        version = redis_version(client)
        cmds = table(client.call('COMMAND'))
    finally:
        if client:
            client.close()
        if proc:
            proc.terminate()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    with open(args.output, 'w') as f:
        f.write(render(version, os.path.basename(args.redis_server), cmds))
    print('wrote %d commands of Redis %s to %s' % (len(cmds), version, args.output))
    return 0


if __name__ == '__main__':
    sys.exit(main())
