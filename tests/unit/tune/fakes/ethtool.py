# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Test double of ethtool 6.1 for the tune unit tests.

Serves -i/-l/-L/-x/-X for the interfaces described in the JSON file named by
$FAKE_ETHTOOL_STATE, printing what ethtool 6.1 prints (see ../fixtures/ethtool/),
changing that state on -L/-X the way the modelled drivers do, and appending
every invocation (argv and LANG) to its "calls" list. Per-interface knobs:
  refuse: {"-L": "<netlink error text>"}   the driver rejects the request
  apply_then_fail: ["-L"]                   the driver applies, then reports an error
  clamp: {"combined": 4}                    the driver silently caps a count
"""
import json
import os
import sys

KEYS = ('rx', 'tx', 'other', 'combined')


def fmt(v):
    return 'n/a' if v is None else str(v)


def show_channels(name, ch):
    out = ['Channel parameters for %s:' % name, 'Pre-set maximums:']
    for title, key in (('RX', 'rx'), ('TX', 'tx'), ('Other', 'other'), ('Combined', 'combined')):
        out.append('%s:%s%s' % (title, '\t' if title == 'Combined' else '\t\t', fmt(ch['max'][key])))
    out.append('Current hardware settings:')
    for title, key in (('RX', 'rx'), ('TX', 'tx'), ('Other', 'other'), ('Combined', 'combined')):
        out.append('%s:%s%s' % (title, '\t' if title == 'Combined' else '\t\t', fmt(ch['current'][key])))
    return '\n'.join(out) + '\n'


def rings(dev):
    cur = dev['channels']['current']
    return cur['combined'] or cur['rx'] or 1


def show_rss(name, dev):
    table = dev['rss']['table']
    out = ['RX flow hash indirection table for %s with %d RX ring(s):' % (name, rings(dev))]
    line = ''
    for i, q in enumerate(table):
        if i % 8 == 0:
            line = '%5d: ' % i
        line += ' %5d' % q
        if i % 8 == 7 or i == len(table) - 1:
            out.append(line)
    out.append('RSS hash key:')
    out.append(dev['rss'].get('key', '6d:5a:56:da:25:5b:0e:c2:41:67:25:3d:43:a3:8f:b0:d0:ca:2b:cb:'
                                     'ae:7b:30:b4:77:cb:2d:a3:80:30:f2:0c:6a:42:b7:3b:be:ac:01:fa'))
    out.append('RSS hash function:')
    out.append('    toeplitz: on')
    out.append('    xor: off')
    out.append('    crc32: off')
    return '\n'.join(out) + '\n'


def fill(size, args, nrings):
    # transcription of ethtool's fill_indir_table()
    if args[0] == 'default':
        return [i % nrings for i in range(size)], False
    if args[0] == 'equal':
        n = int(args[1])
        return [i % n for i in range(size)], True
    if args[0] == 'weight':
        w = [int(x) for x in args[1:]]
        s = sum(w)
        if s == 0:
            raise ValueError('At least one weight must be non-zero')
        if s > size:
            raise ValueError('Total weight exceeds the size of the indirection table')
        t, j, partial = [], -1, 0
        for i in range(size):
            while i >= size * partial // s:
                j += 1
                partial += w[j]
            t.append(j)
        return t, True
    raise ValueError('bad -X args')


def main():
    path = os.environ['FAKE_ETHTOOL_STATE']
    with open(path) as f:
        st = json.load(f)
    argv = sys.argv[1:]
    st.setdefault('calls', []).append({'argv': argv, 'LANG': os.environ.get('LANG')})
    rc = 0
    try:
        op, name = argv[0], argv[1]
        dev = st['ifaces'].get(name)
        if dev is None:
            sys.stderr.write('netlink error: no device matches name (offset 24)\n'
                             'netlink error: No such device\n')
            rc = 1
        elif op in dev.get('refuse', {}):
            sys.stderr.write(dev['refuse'][op] + '\n')
            rc = 1
        elif op == '-i':
            sys.stdout.write('driver: %s\nversion: 6.1.0-18-amd64\nfirmware-version: %s\n'
                             'expansion-rom-version: \nbus-info: %s\nsupports-statistics: yes\n'
                             'supports-test: no\nsupports-eeprom-access: no\nsupports-register-dump: no\n'
                             'supports-priv-flags: no\n'
                             % (dev['driver'], dev.get('firmware', ''), dev.get('bus', '')))
        elif op == '-l':
            sys.stdout.write(show_channels(name, dev['channels']))
        elif op == '-L':
            want = dict(zip(argv[2::2], [int(x) for x in argv[3::2]]))
            ch = dev['channels']
            for k, v in want.items():
                if not ch['max'][k] or v > ch['max'][k]:
                    sys.stderr.write('netlink error: requested channel count exceeds maximum (offset 36)\n'
                                     'netlink error: Invalid argument\n')
                    rc = 1
                    break
            rss = dev.get('rss')
            if not rc and rss and rss.get('configured') and 'combined' in want \
                    and max(rss['table']) >= want['combined']:
                sys.stderr.write('netlink error: requested channel counts are too low for existing '
                                 'indirection table settings (offset 36)\nnetlink error: Invalid argument\n')
                rc = 1
            if not rc:
                for k, v in want.items():
                    ch['current'][k] = min(v, dev.get('clamp', {}).get(k, v))
                if rss and not rss.get('configured'):
                    rss['table'] = [i % rings(dev) for i in range(len(rss['table']))]
                if '-L' in dev.get('apply_then_fail', []):
                    sys.stderr.write('netlink error: Device or resource busy\n')
                    rc = 1
        elif op == '-x':
            if not dev.get('rss'):
                sys.stderr.write('Cannot get RX ring count: Operation not supported\n')
                rc = 1
            else:
                sys.stdout.write(show_rss(name, dev))
        elif op == '-X':
            if not dev.get('rss'):
                sys.stderr.write('Cannot get RX ring count: Operation not supported\n')
                rc = 1
            else:
                try:
                    table, configured = fill(len(dev['rss']['table']), argv[2:], rings(dev))
                    if max(table) >= rings(dev):
                        raise ValueError('Cannot set RX flow hash configuration: Invalid argument')
                    dev['rss']['table'] = table
                    dev['rss']['configured'] = configured
                except ValueError as e:
                    sys.stderr.write('%s\n' % e)
                    rc = 1
        else:
            sys.stderr.write('fake ethtool: unsupported %r\n' % argv)
            rc = 2
    finally:
        with open(path + '.tmp', 'w') as f:
            json.dump(st, f)
        os.rename(path + '.tmp', path)
    sys.exit(rc)


if __name__ == '__main__':
    main()
