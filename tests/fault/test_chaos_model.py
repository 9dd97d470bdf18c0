# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The chaos workload's reply model (chaos_workload.Model): it accepts exactly the replies
Redis can give, and after a failed request both outcomes until a reply decides."""

import os
import time

import pytest

from chaos_run import merge_slow, stall_medians, stalled_seconds, window_order
from chaos_workload import MAX_DETAILS, SLOW_DETAIL, Client, Model, Wrong, run_apart


def test_single_key_commands_are_modelled_exactly():
    m = Model()
    m.check('GET', ['a'], None)
    m.check('SET', ['a', '41'], 'OK')
    m.check('INCR', ['a'], 42)
    m.check('APPEND', ['a', 'x'], 3)
    m.check('GET', ['a'], '42x')
    m.check('INCR', ['a'], 'ERR')
    m.check('INCR', ['b'], 1)
    m.check('MGET', ['a', 'b', 'c', 'a'], ['42x', '1', None, '42x'])
    m.check('DEL', ['a', 'c', 'a'], 1)
    m.check('GET', ['a'], None)
    for cmd, args, reply in (('GET', ['b'], '2'), ('INCR', ['b'], 3), ('APPEND', ['b'], 'x'),
                             ('MGET', ['b', 'a'], ['1', '']), ('DEL', ['b', 'a'], 2), ('DEL', ['b'], 0),
                             ('SET', ['b', 'v'], 'ERR')):
        with pytest.raises(Wrong):
            m.check(cmd, list(args) if cmd != 'APPEND' else ['b', 'y'], reply)
    assert m.dump() == {'a': [None], 'b': ['1'], 'c': [None]}


def test_a_failed_write_keeps_both_outcomes_until_a_reply_decides():
    m = Model()
    m.check('SET', ['k', '5'], 'OK')
    m.failed('INCR', ['k'])
    assert m.dump() == {'k': ['5', '6']}
    m.check('INCR', ['k'], 7)  # so the failed INCR did run
    assert m.dump() == {'k': ['7']}
    m.failed('DEL', ['k'])
    with pytest.raises(Wrong):
        m.check('GET', ['k'], '8')
    m.check('DEL', ['k'], 1)
    m.failed('APPEND', ['k', 'ab'])
    m.check('MGET', ['k'], [None])
    assert m.dump() == {'k': [None]}


def test_slow_requests_are_listed_with_their_connection():
    c = Client('py0', 'p', 2, deadline=0, seed=1)
    c.record(0.001, 'GET p:py0:0', 40001)
    c.record(SLOW_DETAIL + 0.2, 'SET p:py0:1', 40001)
    for _unused in range(MAX_DETAILS + 5):
        c.record(SLOW_DETAIL + 0.01, 'INCR p:py0:0')
    s = c.summary()
    assert s['requests'] == MAX_DETAILS + 7
    assert len(s['slow_details']) == MAX_DETAILS
    first = s['slow_details'][0]
    assert (first['what'], first['lport'], first['after_s']) == ('SET p:py0:1', 40001, round(SLOW_DETAIL + 0.2, 3))
    assert s['slowest_what'] == 'SET p:py0:1'
    assert s['slow']['<=0.7'][0] == 1 and s['slow']['<=0.3'][0] == MAX_DETAILS + 5


class Counting(Client):
    """Sets its keys and records one request per key, in the child process."""

    def work(self):
        for k in self.keys:
            self.model.check('SET', [k, str(os.getpid())], 'OK')
            self.ops += 1
            self.record(0.001, 'SET ' + k)


class Stuck(Counting):
    def work(self):
        super().work()
        time.sleep(30)


def test_each_client_runs_in_a_process_of_its_own_and_reports_back():
    clients = [Counting('a', 'p', 2, 0, 1), Counting('b', 'p', 2, 0, 2), Stuck('s', 'p', 1, 0, 3)]
    t = time.monotonic()
    res = run_apart(clients, 2)
    assert time.monotonic() - t < 20, 'a stuck client held the run past its limit'
    assert sorted(res) == ['a', 'b', 's']
    pids = set()
    for name, r in res.items():
        assert r['summary']['ops'] == len(r['model']) and r['summary']['requests'] == r['summary']['ops']
        pids.update(v[0] for v in r['model'].values())
        assert r['hung'] == (name == 's'), r
    # the keys were written in three other processes (none in this one)
    assert len(pids) == 3 and str(os.getpid()) not in pids
    assert clients[0].ops == 0, 'the parent\'s copy of a client must not have run'


def test_throughput_windows_alternate_evenly():
    order = window_order(2)
    assert order == ['erb', 'alone', 'alone', 'erb', 'alone', 'erb', 'erb', 'alone']
    # each side as often as the other, and as often first as last
    assert order.count('erb') == order.count('alone') == 4
    assert sum(i for i, x in enumerate(order) if x == 'erb') == sum(i for i, x in enumerate(order) if x == 'alone')


def test_stalls_are_the_requests_over_10_ms_and_the_rest_is_each_hosts_own_time():
    # two clients' histograms merged as totals() does: the fastest bucket is not a stall
    slow = merge_slow([{'<=0.01': [900, 1.5], '<=0.05': [40, 0.44]},
                       {'<=0.01': [800, 1.2], '<=0.3': [2, 0.41], '>1.5': [1, 1.6]}])
    assert stalled_seconds(slow) == pytest.approx(0.44 + 0.41 + 1.6)
    assert stalled_seconds({'<=0.01': [10, 0.05]}) == 0
    win = {'erb': [dict(ops=1000, clients=2, seconds=4.0, stalled_s=6.0),
                   dict(ops=900, clients=2, seconds=4.0, stalled_s=4.0),
                   dict(ops=1300, clients=2, seconds=4.0, stalled_s=3.0)],
           'alone': [dict(ops=1000, clients=2, seconds=4.0, stalled_s=4.0)]}
    m = stall_medians(win)
    # shares 0.75, 0.5, 0.375; ops per free client-second 500, 225, 260
    assert m['erb'] == {'stalled': 0.5, 'ops_per_free_s': 260}
    assert m['alone'] == {'stalled': 0.5, 'ops_per_free_s': 250}
