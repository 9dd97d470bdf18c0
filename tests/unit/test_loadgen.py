# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""bench/loadgen (the YCSB load generator of bench/run-all) against a real redis-server on a
unix socket: built with -Wall -Werror by bench/Makefile, it writes the records it is told to,
reads them back, and counts every reply that is not what the command must return."""

import json
import os
import socket
import subprocess
import threading

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


@pytest.fixture(scope='module')
def loadgen(tmp_path_factory):
    build = tmp_path_factory.mktemp('loadgen')
    subprocess.run(['make', '-s', '-C', os.path.join(REPO, 'bench'), 'BUILD=%s' % build], check=True)
    return str(build / 'loadgen')


def drive(loadgen, sock, *opts, rc=0):
    p = subprocess.run([loadgen, '--unix', str(sock), '--conns', '8'] + list(opts),
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == rc, p.stdout + p.stderr
    return json.loads(p.stdout)


def test_load_scan_and_workloads(loadgen, redis_server):
    r = redis_server()
    load = drive(loadgen, r.socket, '--load', '--records', '500')
    assert (load['ops'], load['updates'], load['errors']) == (500, 500, 0)
    assert r.cli('DBSIZE') == '500'
    rec = r.cli('HGETALL', 'user000000000499').split('\n')
    assert rec[0::2] == ['field0', 'field1', 'field2', 'field3']
    assert [len(v) for v in rec[1::2]] == [32] * 4
    scan = drive(loadgen, r.socket, '--scan', '--records', '500')
    assert (scan['reads'], scan['notfound'], scan['errors']) == (500, 0, 0)
    # records past the loaded ones are counted as not found, not as errors
    scan = drive(loadgen, r.socket, '--scan', '--records', '600')
    assert (scan['reads'], scan['notfound'], scan['errors']) == (600, 100, 0)
    a = drive(loadgen, r.socket, '--records', '500', '--dist', 'zipfian', '--read-ratio', '0.5',
              '--seconds', '0.5', '--warmup', '0.1')
    assert a['errors'] == 0 and a['reads'] > 0 and a['updates'] > 0
    assert a['ops'] == a['reads'] + a['updates']
    c = drive(loadgen, r.socket, '--records', '500', '--dist', 'uniform', '--read-ratio', '1',
              '--seconds', '0.3', '--warmup', '0')
    assert c['errors'] == 0 and c['reads'] > 0 and c['updates'] == 0
    assert r.cli('DBSIZE') == '500'


def test_wrong_replies_are_counted(loadgen, redis_server):
    r = redis_server()
    drive(loadgen, r.socket, '--load', '--records', '20')
    r.cli('HSET', 'user000000000003', 'extra', 'x')        # a fifth field
    r.cli('HSET', 'user000000000004', 'field1', 'short')   # a value of the wrong length
    r.cli('DEL', 'user000000000005')
    r.cli('SET', 'user000000000005', 'v')                  # WRONGTYPE error reply
    scan = drive(loadgen, r.socket, '--scan', '--records', '20', rc=3)
    assert (scan['bad_replies'], scan['err_replies'], scan['malformed']) == (2, 1, 0)
    assert scan['errors'] == 3 and scan['reads'] == 17


def test_malformed_resp_is_counted(loadgen, tmp_path):
    path = str(tmp_path / 'garbage.sock')
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    stop = threading.Event()

    def serve():
        conns = []
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c = srv.accept()[0]
            except socket.timeout:
                continue
            conns.append(c)
            c.recv(4096)
            c.sendall(b'*8\r\n$x\r\n')   # a bulk length that is not a number
        for c in conns:
            c.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        p = subprocess.run([loadgen, '--unix', path, '--conns', '2', '--scan', '--records', '10'],
                           capture_output=True, text=True, timeout=60, check=False)
    finally:
        stop.set()
        t.join()
        srv.close()
    assert p.returncode == 3, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert (out['malformed'], out['conns_lost'], out['reads']) == (2, 2, 0)
