# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The erb_cmds table: flags and key positions of the commands ERB relies on,
the FNV-1a hash, and that the committed table is what the generator produces
from the real redis-server."""

import os
import runpy
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(REPO, 'tests', 'loader'))
from collection_path import ensure_collection_path  # noqa: E402

ensure_collection_path()

from ansible_collections.erb.booster.plugins.module_utils import erb_layout  # noqa: E402
from ansible_collections.erb.booster.plugins.module_utils import redis_commands as rc  # noqa: E402

C = rc.COMMANDS


def flags(name):
    return rc.cmd_flags(C[name][0])


def keys(name):
    return C[name][1:]


def test_fnv1a_vectors():
    # Reference vectors of FNV-1a 32 (Fowler/Noll/Vo test suite).
    assert rc.fnv1a32(b'') == 0x811c9dc5
    assert rc.fnv1a32(b'a') == 0xe40c292c
    assert rc.fnv1a32(b'foobar') == 0xbf9cf968
    assert rc.cmd_hash('get') == rc.cmd_hash('GET') == rc.fnv1a32(b'GET')


def test_no_hash_collisions():
    hashes = [rc.cmd_hash(n) for n in C]
    assert len(set(hashes)) == len(hashes)


def test_get_is_a_read():
    assert flags('GET') == erb_layout.ERB_CMD_GET
    assert keys('GET') == (1, 1, 1)


def test_set_is_a_write():
    assert flags('SET') == erb_layout.ERB_CMD_SET | erb_layout.ERB_CMD_WRITE
    assert keys('SET') == (1, 1, 1)


@pytest.mark.parametrize('name,first,last,step', [
    ('DEL', 1, -1, 1),
    ('UNLINK', 1, -1, 1),
    ('INCR', 1, 1, 1),
    ('HSET', 1, 1, 1),
    ('EXPIRE', 1, 1, 1),
    ('RENAME', 1, 2, 1),
    ('MSET', 1, -1, 2),
    ('APPEND', 1, 1, 1),
    ('GETDEL', 1, 1, 1),
])
def test_writes_with_key_positions(name, first, last, step):
    f = flags(name)
    assert f & erb_layout.ERB_CMD_WRITE
    assert not f & erb_layout.ERB_CMD_KEYS_UNKNOWN
    assert keys(name) == (first, last, step)


@pytest.mark.parametrize('name', ['EVAL', 'EVALSHA', 'EVAL_RO', 'EVALSHA_RO', 'FCALL', 'FCALL_RO'])
def test_scripts_write_unknown_keys(name):
    assert flags(name) & erb_layout.ERB_CMD_WRITE
    assert flags(name) & erb_layout.ERB_CMD_KEYS_UNKNOWN


@pytest.mark.parametrize('name', ['SORT', 'ZUNIONSTORE', 'MIGRATE', 'XGROUP', 'FUNCTION'])
def test_movable_or_container_writes_unknown_keys(name):
    assert flags(name) & erb_layout.ERB_CMD_WRITE
    assert flags(name) & erb_layout.ERB_CMD_KEYS_UNKNOWN


@pytest.mark.parametrize('name,expect', [
    ('FLUSHALL', ('FLUSH', 'WRITE')),
    ('FLUSHDB', ('FLUSH', 'WRITE')),
    ('SWAPDB', ('FLUSH', 'WRITE')),
    ('MULTI', ('MULTI',)),
    ('EXEC', ('EXEC',)),
    ('DISCARD', ('EXEC',)),
    ('SUBSCRIBE', ('SUBSCRIBE',)),
    ('PSUBSCRIBE', ('SUBSCRIBE',)),
    ('SSUBSCRIBE', ('SUBSCRIBE',)),
    ('MONITOR', ('SUBSCRIBE', 'UNTRACK')),
    ('SELECT', ('SELECT',)),
    ('AUTH', ('AUTH',)),
    ('HELLO', ('AUTH',)),
    ('RESET', ('RESET',)),
    ('SYNC', ('UNTRACK',)),
    ('PSYNC', ('UNTRACK',)),
    ('REPLCONF', ('UNTRACK',)),
])
def test_protocol_commands(name, expect):
    assert flags(name) & rc.cmd_flags(expect) == rc.cmd_flags(expect)


def test_client_is_not_untracked_wholesale():
    # redis-py sends CLIENT SETINFO on every connect; only CLIENT REPLY breaks
    # reply counting, and erb.bpf.c checks that subcommand itself.
    assert flags('CLIENT') & rc.cmd_flags(('UNTRACK',)) == 0
    assert flags('CLIENT') & rc.cmd_flags(('WRITE',)) == 0


def test_bpf_subcommand_hashes_match():
    src = open(os.path.join(os.path.dirname(__file__), '..', '..', 'files', 'bpf', 'erb.bpf.c')).read()
    assert '#define HASH_CLIENT\t0x%08xU' % rc.fnv1a32(b'CLIENT') in src
    assert '#define HASH_REPLY\t0x%08xU' % rc.fnv1a32(b'REPLY') in src
    assert '#define HASH_TRACKING\t0x%08xU' % rc.fnv1a32(b'TRACKING') in src
    assert '#define HASH_CACHING\t0x%08xU' % rc.fnv1a32(b'CACHING') in src


@pytest.mark.parametrize('name', ['GET', 'MGET', 'STRLEN', 'HGETALL', 'EXISTS', 'TTL', 'PING', 'INFO'])
def test_reads_are_not_writes(name):
    assert not flags(name) & erb_layout.ERB_CMD_WRITE


def test_specs_fit_struct():
    specs = rc.cmd_specs()
    assert len(specs) == len(C) > 200
    for key, spec in specs:
        assert 0 <= key <= 0xffffffff
        assert isinstance(spec, erb_layout.ErbCmdSpec)


def test_every_flag_name_known():
    for name, (names, _unused, _unused, _unused) in C.items():
        for n in names:
            assert n in erb_layout.CMD_FLAGS, '%s: %s' % (name, n)


def test_committed_table_matches_real_redis():
    """Regenerate from /usr/bin/redis-server: the committed table must match."""
    with tempfile.TemporaryDirectory(prefix='erb-cmds-') as tmp:
        out = os.path.join(tmp, 'redis_commands.py')
        subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'gen_redis_commands.py'),
                        '--redis-server', '/usr/bin/redis-server', '--output', out], check=True)
        fresh = runpy.run_path(out)
    assert fresh['REDIS_VERSION'] == rc.REDIS_VERSION
    assert fresh['COMMANDS'] == C


@pytest.mark.parametrize('name', ['OBJECT', 'MEMORY', 'XINFO'])
def test_containers_with_keyed_subcommands_have_unknown_keys(name):
    # OBJECT ENCODING k, MEMORY USAGE k, XINFO STREAM k: keys only the subcommand shows
    assert flags(name) & erb_layout.ERB_CMD_KEYS_UNKNOWN


@pytest.mark.parametrize('name', ['KEYS', 'SCAN', 'DBSIZE', 'RANDOMKEY', 'INFO'])
def test_keyspace_wide_reads_are_marked(name):
    assert flags(name) & erb_layout.ERB_CMD_KEYSPACE
    assert not flags(name) & erb_layout.ERB_CMD_WRITE


@pytest.mark.parametrize('name', ['UNSUBSCRIBE', 'PUNSUBSCRIBE', 'SUNSUBSCRIBE'])
def test_unsubscribe_family_untracks(name):
    # one reply per channel, and replies even on a connection not subscribed
    assert flags(name) & erb_layout.ERB_CMD_UNTRACK


def test_watch_is_marked():
    assert flags('WATCH') & erb_layout.ERB_CMD_WATCH


@pytest.mark.parametrize('name', ['GET', 'PING', 'ECHO', 'EXISTS', 'TTL'])
def test_plain_commands_are_not_keyspace_reads(name):
    assert not flags(name) & erb_layout.ERB_CMD_KEYSPACE
