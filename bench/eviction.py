# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Hit ratio of the BPF cache (CLOCK eviction) vs an exact LRU of the same capacity.

A key trace is driven through the real erb.bpf.o with BPF_PROG_TEST_RUN (no
network, no Redis: the harness of tests/bpf plays both TCP ends). Clients
are cache-aside: GET key; a hit is answered by erb_xdp (XDP_TX); a miss
passes, Redis's reply goes out through erb_tc_egress, then the client SETs
the key, which passes too, and Redis's +OK at TC egress fills the cache
(write-through). The same trace is replayed offline through an exact LRU of
cache_entries keys; both hit ratios are counted over the same requests, after
a warm-up of `--warmup` cache sizes of requests.

Traces (key space = `--keys-factor` x cache_entries):
- zipfian (theta `--theta`, 0.99 as YCSB) and uniform popularity;
- churn: zipfian, and halfway through the hot keys are swapped for others
  (the popularity ranks are mapped onto a disjoint set of keys). The hit
  ratio is shown per 1/8 cache size of requests after the shift; recovered
  after x requests = the cache size of requests following the first x after
  the shift (x a multiple of 1/8 cache size) hits within 5 points of the
  ratio before the shift.

    .venv/bin/python bench/eviction.py [--cache-entries 1024] [--requests 40000]

Needs root (BPF_PROG_TEST_RUN) and files/bpf/erb.bpf.o built. Writes
bench/results/eviction.json and .png.
"""

import argparse
import bisect
import collections
import json
import os
import random
import socket
import struct
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
RESULTS = os.path.join(REPO, 'bench', 'results')
sys.path.insert(0, os.path.join(REPO, 'tests', 'bpf'))

import erbtest  # noqa: E402
from erbtest import M32, XDP_PASS, XDP_TX, resp  # noqa: E402
import benchplot  # noqa: E402

CMAC = bytes.fromhex(erbtest.CMAC.replace(':', ''))
SMAC = bytes.fromhex(erbtest.SMAC.replace(':', ''))


def csum(data):
    if len(data) % 2:
        data += b'\0'
    s = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


def frame(src_mac, dst_mac, sip, dip, sport, dport, seq, ack, flags, window, payload):
    """Ethernet/IPv4/TCP frame, no TCP options, full checksums."""
    tcp = struct.pack('!HHIIBBHHH', sport, dport, seq, ack, 5 << 4, flags, window, 0, 0)
    pseudo = sip + dip + struct.pack('!BBH', 0, 6, len(tcp) + len(payload))
    c = csum(pseudo + tcp + payload)
    tcp = tcp[:16] + struct.pack('!H', c) + tcp[18:]
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp) + len(payload), 1, 0x4000, 64, 6, 0, sip, dip)
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    return dst_mac + src_mac + b'\x08\x00' + ip + tcp + payload


FLAGS = {'S': 0x02, 'A': 0x10, 'PA': 0x18, 'SA': 0x12}


class FastFlow(erbtest.Flow):
    """erbtest.Flow without TCP options, frames packed with struct (scapy is
    too slow for traces of tens of thousands of requests)."""

    def __init__(self, erb):
        super(FastFlow, self).__init__(erb, ts=False)
        self.cip_b, self.sip_b = socket.inet_aton(self.cip), socket.inet_aton(self.sip)

    def client_frame(self, payload=b'', flags='PA', seq=None, ack=None, ts=None, options=None,
                     ip_id=1, window=1000):
        if options:
            return super(FastFlow, self).client_frame(payload, flags, seq, ack, ts, options, ip_id, window)
        return frame(CMAC, SMAC, self.cip_b, self.sip_b, self.cport, self.sport,
                     self.c_seq if seq is None else seq & M32,
                     (self.c_ack if ack is None else ack & M32) if 'A' in flags else 0,
                     FLAGS[flags], window, payload)

    def server_frame(self, payload=b'', flags='PA', seq=None, ack=None, ts=None, options=None, window=None):
        if options:
            return super(FastFlow, self).server_frame(payload, flags, seq, ack, ts, options, window)
        return frame(SMAC, CMAC, self.sip_b, self.cip_b, self.sport, self.cport,
                     self.s_seq if seq is None else seq & M32,
                     (self.s_ack if ack is None else ack & M32) if 'A' in flags else 0,
                     FLAGS[flags], self.s_win if window is None else window, payload)


def zipf_sampler(n, theta, rng):
    """Ranks 0..n-1, P(rank r) proportional to 1 / (r + 1)^theta."""
    cdf, total = [], 0.0
    for r in range(n):
        total += 1.0 / (r + 1) ** theta
        cdf.append(total)
    return lambda: min(bisect.bisect_left(cdf, rng.random() * total), n - 1)


def make_trace(kind, keys, length, theta, seed):
    rng = random.Random(seed)
    perm = list(range(keys))
    rng.shuffle(perm)               # popularity rank -> key, not key order
    if kind == 'uniform':
        return [rng.randrange(keys) for i in range(length)]
    draw = zipf_sampler(keys, theta, rng)
    if kind == 'zipfian':
        return [perm[draw()] for i in range(length)]
    # churn: after the shift, rank r is served by a disjoint key
    out = []
    for i in range(length):
        r = draw()
        out.append(perm[r] if i < length // 2 else keys + perm[r])
    return out


def lru_hits(trace, capacity):
    cache = collections.OrderedDict()
    hits = []
    for k in trace:
        if k in cache:
            cache.move_to_end(k)
            hits.append(1)
        else:
            hits.append(0)
            cache[k] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits


def value(k):
    return b'value:%d' % k


def erb_hits(erb, trace):
    """Replay trace through erb_xdp / erb_tc_egress, cache-aside. 1 per hit."""
    erb.reset()
    f = FastFlow(erb).handshake()
    hits = []
    for k in trace:
        key = b'key:%d' % k
        rc, out = f.send(resp(b'GET', key))
        if rc == XDP_TX:
            if erbtest.tcp_payload(out) != erbtest.bulk(value(k)):
                raise AssertionError('wrong value answered for %r' % key)
            hits.append(1)
            continue
        if rc != XDP_PASS:
            raise AssertionError('GET %r: %s' % (key, erbtest.XDP_NAMES.get(rc, rc)))
        f.reply(b'$-1\r\n')
        rc = f.send(resp(b'SET', key, value(k)))[0]
        if rc != XDP_PASS:
            raise AssertionError('SET %r: %s' % (key, erbtest.XDP_NAMES.get(rc, rc)))
        f.reply(b'+OK\r\n')
        hits.append(0)
    return hits


def ratio(h):
    return sum(h) / float(len(h)) if h else 0.0


def run(erb, kind, args):
    cap = args.cache_entries
    warm = args.warmup * cap
    trace = make_trace(kind, cap * args.keys_factor, warm + args.requests, args.theta, args.seed)
    t0 = time.time()
    got = erb_hits(erb, trace)
    secs = time.time() - t0
    ref = lru_hits(trace, cap)
    st = erb.stats()
    res = dict(trace=kind, requests=args.requests, warmup_requests=warm,
               erb_hit_ratio=round(ratio(got[warm:]), 4), lru_hit_ratio=round(ratio(ref[warm:]), 4),
               evict=st.get('evict', 0), cache_full=st['cache_full'], fill=st['fill'], hit=st['hit'],
               live_entries=len(erb.cache_entries()), replay_seconds=round(secs, 1))
    res['points_below_lru'] = round(100 * (res['lru_hit_ratio'] - res['erb_hit_ratio']), 2)
    if kind == 'churn':
        shift = len(trace) // 2
        step = max(cap // 8, 1)
        before = ratio(got[warm:shift])
        lru_before = ratio(ref[warm:shift])

        def curve(h):
            return [round(ratio(h[i:i + step]), 4) for i in range(shift, len(h) - step + 1, step)]

        def recovery(h, steady):
            # requests after the shift until the next cache size of them hits
            # within 5 points of the ratio before the shift
            for x in range(0, len(h) - shift - cap + 1, step):
                if ratio(h[shift + x:shift + x + cap]) >= steady - 0.05:
                    return x
            return None

        res.update(shift_at=shift, bucket=step,
                   erb_before_shift=round(before, 4), lru_before_shift=round(lru_before, 4),
                   erb_after_shift=curve(got), lru_after_shift=curve(ref))
        res['erb_recovered_after'] = recovery(got, before)
        res['lru_recovered_after'] = recovery(ref, lru_before)
        res['erb_first_cache_size_after_shift'] = round(ratio(got[shift:shift + cap]), 4)
        res['lru_first_cache_size_after_shift'] = round(ratio(ref[shift:shift + cap]), 4)
    return res


def plot(result, path):
    plt = benchplot.pyplot()
    if plt is None:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    runs = [r for r in result['runs'] if r['trace'] != 'churn']
    x = range(len(runs))
    a.bar([i - 0.2 for i in x], [r['erb_hit_ratio'] for r in runs], 0.4, label='ERB (CLOCK, BPF)')
    a.bar([i + 0.2 for i in x], [r['lru_hit_ratio'] for r in runs], 0.4, label='exact LRU')
    a.set_xticks(list(x))
    a.set_xticklabels([r['trace'] for r in runs])
    a.set_ylabel('hit ratio')
    a.set_title('cache %d entries, %dx key space' % (result['cache_entries'], result['keys_factor']))
    a.legend()
    for r in result['runs']:
        if r['trace'] == 'churn':
            n = min(len(r['erb_after_shift']), 8 * result['cache_entries'] // r['bucket'])
            xs = [(i + 1) * r['bucket'] for i in range(n)]
            b.plot(xs, r['erb_after_shift'][:n], label='ERB')
            b.plot(xs, r['lru_after_shift'][:n], label='exact LRU')
            b.axhline(r['erb_before_shift'], linestyle=':', color='grey', label='ERB before the shift')
            b.axvline(result['cache_entries'], linestyle='--', color='red', label='one cache size')
            b.set_xlabel('requests after the working set shifted')
            b.set_ylabel('hit ratio per %d requests' % r['bucket'])
            b.set_title('churn (zipfian)')
            b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print('plot: %s' % path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    ap.add_argument('--cache-entries', type=int, default=1024)
    ap.add_argument('--keys-factor', type=int, default=10)
    ap.add_argument('--requests', type=int, default=40000, help='measured requests per trace')
    ap.add_argument('--warmup', type=int, default=8, help='warm-up, in cache sizes of requests')
    ap.add_argument('--theta', type=float, default=0.99)
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--traces', default='zipfian,uniform,churn')
    ap.add_argument('--out', default=os.path.join(RESULTS, 'eviction.json'))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit('needs root (BPF_PROG_TEST_RUN)')
    erb = erbtest.Erb(cache_entries=args.cache_entries, max_key_len=64, max_value_len=64)
    result = dict(cache_entries=args.cache_entries, keys_factor=args.keys_factor, theta=args.theta,
                  max_probes=erbtest.L.ERB_MAX_PROBES, seed=args.seed, runs=[])
    try:
        for kind in args.traces.split(','):
            r = run(erb, kind, args)
            result['runs'].append(r)
            line = '%-8s ERB %.4f  exact LRU %.4f  (%+.2f points)  evict %d  cache_full %d  [%ss]' % (
                kind, r['erb_hit_ratio'], r['lru_hit_ratio'], -r['points_below_lru'], r['evict'],
                r['cache_full'], r['replay_seconds'])
            if kind == 'churn':
                line += ('\n         after the shift: first cache size of requests ERB %.4f LRU %.4f; '
                         'the next cache size of requests within 5 points of before (ERB %.4f, LRU %.4f) from ERB %s, LRU %s requests on' % (
                             r['erb_first_cache_size_after_shift'], r['lru_first_cache_size_after_shift'],
                             r['erb_before_shift'], r['lru_before_shift'], r['erb_recovered_after'],
                             r['lru_recovered_after']))
            print(line, flush=True)
    finally:
        erb.close()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as fp:
        json.dump(result, fp, indent=2)
    print('json: %s' % args.out)
    plot(result, os.path.splitext(args.out)[0] + '.png')


if __name__ == '__main__':
    main()
