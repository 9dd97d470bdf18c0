# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared code of the erb.booster host tuning modules.

Everything here reads and writes through caller-supplied roots (sysfs_root,
procfs_root, state_dir, rules dirs) so that the modules can be exercised
against temporary trees.

* CPU list / CPU mask conversions in the kernel's own notations.
* ``ethtool`` invocation (argument lists, LANG=C) and parsers for the text
  output of ``ethtool -i``, ``-l`` and ``-x``.
* :class:`StateFile`: the before-values a module changed, kept on the host so
  that ``state: restored`` can put them back (atomic JSON writes).
* :func:`apply_steps`: apply a list of single-setting changes; when one fails,
  roll back the ones already applied and say exactly what happened.
* Persistence of IRQ affinity / XPS / RPS through a udev rule (and, optionally,
  an ifup hook) that runs a small helper script re-applying a config file.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import errno
import json
import os
import re

from ansible_collections.erb.booster.plugins.module_utils.erb_files import atomic_write

DEFAULT_STATE_DIR = '/var/lib/erb'
DEFAULT_UDEV_RULES_DIR = '/etc/udev/rules.d'
DEFAULT_HELPER_PATH = '/usr/local/sbin/erb-tune-apply'
DEFAULT_PERSIST_DIR = '/etc/erb/tune'
STATE_FORMAT = 1
ETHTOOL_ENV = {'LANG': 'C', 'LC_ALL': 'C'}

# Argument spec fragments shared by the modules (merged into each module's
# module-level ARGUMENT_SPEC constant).
COMMON_STATE_SPEC = dict(
    state=dict(type='str', default='present', choices=['present', 'restored']),
    state_dir=dict(type='path', default=DEFAULT_STATE_DIR),
)
SYSFS_SPEC = dict(sysfs_root=dict(type='path', default='/sys'))
PROCFS_SPEC = dict(procfs_root=dict(type='path', default='/proc'))
PERSIST_SPEC = dict(
    persist=dict(type='bool', default=False),
    udev_rules_dir=dict(type='path', default=DEFAULT_UDEV_RULES_DIR),
    helper_path=dict(type='path', default=DEFAULT_HELPER_PATH),
    persist_dir=dict(type='path', default=DEFAULT_PERSIST_DIR),
    ifup_hook_dir=dict(type='path'),
)


class TuneError(Exception):
    """An error with a message meant for the operator."""


# --------------------------------------------------------------------------
# CPU lists and masks
# --------------------------------------------------------------------------

def parse_cpulist(text):
    """'0-3,8' -> [0, 1, 2, 3, 8]; '' -> []."""
    cpus = set()
    text = text.strip()
    if not text:
        return []
    for part in text.split(','):
        part = part.strip()
        if not part:
            continue
        m = re.match(r'^(\d+)(?:-(\d+)(?::(\d+)/(\d+))?)?$', part)
        if not m:
            raise TuneError("invalid CPU list %r: use the kernel notation, e.g. '0-3,8'" % text)
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise TuneError("invalid CPU range %r in %r" % (part, text))
        if m.group(3) is not None:
            used, group = int(m.group(3)), int(m.group(4))
            for base in range(lo, hi + 1, group):
                cpus.update(c for c in range(base, min(base + used, hi + 1)))
        else:
            cpus.update(range(lo, hi + 1))
    return sorted(cpus)


def format_cpulist(cpus):
    """[0, 1, 2, 3, 8] -> '0-3,8' (the format of smp_affinity_list)."""
    cpus = sorted(set(cpus))
    out = []
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else '%d-%d' % (cpus[i], cpus[j]))
        i = j + 1
    return ','.join(out)


def cpus_to_mask(cpus):
    mask = 0
    for c in cpus:
        mask |= 1 << c
    return mask


def mask_to_cpus(mask):
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


def parse_mask(text):
    """Kernel bitmap ('00000000,00000003') -> int."""
    text = text.strip().replace(',', '')
    if not text:
        return 0
    try:
        return int(text, 16)
    except ValueError:
        raise TuneError("unexpected CPU mask %r" % text)


def format_mask(mask):
    """int -> kernel bitmap notation accepted on write: 32-bit hex groups
    separated by commas ('3', '100,00000000')."""
    groups = []
    while True:
        groups.append(mask & 0xffffffff)
        mask >>= 32
        if not mask:
            break
    groups.reverse()
    return ','.join(['%x' % groups[0]] + ['%08x' % g for g in groups[1:]])


def cpus_from_value(value, what):
    """A CPU selection given by the user: an int, a cpulist string or a list
    of ints. '' / 'none' mean no CPU."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TuneError("%s: expected a CPU list such as '0-3', got %r" % (what, value))
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        out = set()
        for v in value:
            out.update(cpus_from_value(v, what))
        return sorted(out)
    text = str(value).strip()
    if text.lower() == 'none':
        return []
    try:
        return parse_cpulist(text)
    except TuneError as e:
        raise TuneError('%s: %s' % (what, e))


def online_cpus(sysfs_root):
    path = os.path.join(sysfs_root, 'devices/system/cpu/online')
    try:
        return parse_cpulist(read_text(path))
    except (IOError, OSError) as e:
        raise TuneError('cannot read the online CPU list from %s: %s' % (path, e))


def check_cpus_online(cpus, sysfs_root, what):
    online = set(online_cpus(sysfs_root))
    bad = sorted(set(cpus) - online)
    if bad:
        raise TuneError('%s names CPU(s) %s which are not online (online: %s); '
                        'use CPUs from %s'
                        % (what, format_cpulist(bad), format_cpulist(online),
                           os.path.join(sysfs_root, 'devices/system/cpu/online')))


# --------------------------------------------------------------------------
# sysfs / procfs access
# --------------------------------------------------------------------------

def read_text(path):
    with open(path, 'r') as f:
        return f.read().strip()


def write_text(path, value):
    """Write one value to a sysfs/procfs attribute. The kernel reports a
    refused value as an error of write()/close(), both land here."""
    # O_TRUNC as the shell's '>' does: sysfs/procfs ignore it, plain files need it
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, (value + '\n').encode('ascii'))
    finally:
        os.close(fd)


def oserror_text(e):
    name = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else ''
    return '%s (%s)' % (e.strerror or str(e), name) if name else str(e)


def netdev_dir(sysfs_root, name):
    path = os.path.join(sysfs_root, 'class/net', name)
    if not os.path.isdir(path):
        raise TuneError("interface %r not found: %s does not exist. Check the name and the network "
                        "namespace the module runs in (sysfs_root=%s)" % (name, path, sysfs_root))
    return path


def netdev_driver(sysfs_root, name):
    link = os.path.join(sysfs_root, 'class/net', name, 'device/driver')
    if os.path.islink(link) or os.path.isdir(link):
        return os.path.basename(os.path.realpath(link))
    return None


# --------------------------------------------------------------------------
# ethtool
# --------------------------------------------------------------------------

def ethtool(module, args, check=True):
    """Run ethtool with an argument list and LANG=C. Returns (rc, out, err)."""
    path = module.get_bin_path('ethtool')
    if not path:
        raise TuneError('ethtool is not installed: install the "ethtool" package '
                        '(apt-get install ethtool / dnf install ethtool)')
    rc, out, err = module.run_command([path] + list(args), environ_update=ETHTOOL_ENV)
    if check and rc != 0:
        raise TuneError('ethtool %s failed (rc=%d): %s'
                        % (' '.join(args), rc, (err or out).strip()))
    return rc, out, err


def parse_driver_info(text):
    info = {}
    for line in text.splitlines():
        if ':' in line:
            k, v = line.split(':', 1)
            info[k.strip()] = v.strip()
    return info


CHANNEL_KEYS = ('rx', 'tx', 'other', 'combined')


def parse_channels(text):
    """Parse ``ethtool -l``. Returns {'max': {...}, 'current': {...}}, each
    mapping rx/tx/other/combined to an int, or None where ethtool prints n/a."""
    res = {'max': {}, 'current': {}}
    section = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith('Pre-set maximums'):
            section = 'max'
            continue
        if s.startswith('Current hardware settings'):
            section = 'current'
            continue
        m = re.match(r'^(RX|TX|Other|Combined):\s*(\S+)', s)
        if m and section:
            v = m.group(2)
            res[section][m.group(1).lower()] = int(v) if v.isdigit() else None
    if set(res['max']) != set(CHANNEL_KEYS) or set(res['current']) != set(CHANNEL_KEYS):
        raise TuneError('cannot parse the output of ethtool -l:\n%s' % text)
    return res


def parse_rxfh(text):
    """Parse ``ethtool -x``. Returns {'rings': int or None, 'table': [..]}.
    An empty table means the driver exposes no indirection table."""
    rings = None
    table = []
    in_table = False
    for line in text.splitlines():
        m = re.match(r'^RX flow hash indirection table for \S+ with (\d+) RX ring', line)
        if m:
            rings = int(m.group(1))
            in_table = True
            continue
        if in_table:
            m = re.match(r'^\s*(\d+):((?:\s+\d+)+)\s*$', line)
            if m:
                start = int(m.group(1))
                if start != len(table):
                    raise TuneError('unexpected ethtool -x table layout at %r' % line)
                table.extend(int(v) for v in m.group(2).split())
                continue
            if line.strip():
                in_table = False
    return {'rings': rings, 'table': table}


def rss_fill_equal(size, n):
    """Table written by ``ethtool -X <if> equal N`` (and, with N = RX rings,
    the kernel default ethtool_rxfh_indir_default())."""
    return [i % n for i in range(size)]


def rss_fill_weights(size, weights):
    """Table written by ``ethtool -X <if> weight W0 W1 ...`` (ethtool's own
    fill_indir_table() algorithm)."""
    total = sum(weights)
    if total == 0:
        raise TuneError('at least one RSS weight must be non-zero')
    if total > size:
        raise TuneError('the RSS weights add up to %d, more than the %d entries of the '
                        'indirection table' % (total, size))
    table = []
    j = -1
    partial = 0
    for i in range(size):
        while i >= size * partial // total:
            j += 1
            partial += weights[j]
        table.append(j)
    return table


def rss_restore_args(table, rings):
    """ethtool -X arguments that reproduce ``table`` exactly, or None."""
    size = len(table)
    if not size:
        return None
    if rings and table == rss_fill_equal(size, rings):
        return ['default']
    for n in range(1, max(table) + 2):
        if table == rss_fill_equal(size, n):
            return ['equal', str(n)]
    counts = [0] * (max(table) + 1)
    prev = 0
    for q in table:
        if q < prev:
            return None
        counts[q] += 1
        prev = q
    try:
        if rss_fill_weights(size, counts) == table:
            return ['weight'] + [str(c) for c in counts]
    except TuneError:
        return None
    return None


# --------------------------------------------------------------------------
# State file
# --------------------------------------------------------------------------

def _safe(s):
    return re.sub(r'[^A-Za-z0-9_.@:+-]', '_', s)


class StateFile(object):
    """Before-values of the settings one module changed on one resource.

    ``<state_dir>/tune/<kind>-<key>.json``; only the first before-value of a
    setting is kept, so a second ``present`` with another value still
    restores the value the host had before ERB touched it."""

    def __init__(self, state_dir, kind, key):
        self.kind = kind
        self.key = key
        self.path = os.path.join(state_dir, 'tune', '%s-%s.json' % (kind, _safe(key)))

    def load(self):
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (IOError, OSError) as e:
            if e.errno == errno.ENOENT:
                return None
            raise TuneError('cannot read state file %s: %s' % (self.path, oserror_text(e)))
        except ValueError as e:
            raise TuneError('state file %s is corrupt (%s); inspect it, fix or remove it' % (self.path, e))
        if data.get('format') != STATE_FORMAT or data.get('kind') != self.kind:
            raise TuneError('state file %s was not written by erb.booster.%s (format %r)'
                            % (self.path, self.kind, data.get('format')))
        data.setdefault('before', {})
        data.setdefault('extra', {})
        data.setdefault('persist', [])
        return data

    def new(self):
        return {'format': STATE_FORMAT, 'kind': self.kind, 'key': self.key,
                'saved_at': None, 'before': {}, 'extra': {}, 'persist': []}

    def save(self, data):
        data = dict(data)
        data['saved_at'] = datetime.datetime.utcnow().replace(microsecond=0).isoformat() + 'Z'
        try:
            atomic_write(self.path, json.dumps(data, indent=2, sort_keys=True) + '\n', 0o600)
        except (IOError, OSError) as e:
            raise TuneError('cannot write state file %s: %s; check state_dir' % (self.path, oserror_text(e)))

    def remove(self):
        try:
            os.unlink(self.path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise TuneError('cannot remove state file %s: %s' % (self.path, oserror_text(e)))

    def put_back(self, data):
        """Return the file to ``data`` (None = no file)."""
        if data is None:
            self.remove()
        else:
            self.save(data)


def merge_before(data, before):
    """Record before-values not yet recorded (the oldest value wins)."""
    for k, v in before.items():
        if k not in data['before']:
            data['before'][k] = v
    return data


# --------------------------------------------------------------------------
# Applying changes with rollback
# --------------------------------------------------------------------------

class Step(object):
    """One setting: ``apply(value)`` writes it; ``read()`` (optional) reads
    it back in the normalized form used by before/after."""

    def __init__(self, key, before, after, apply, read=None):
        self.key = key
        self.before = before
        self.after = after
        self.apply = apply
        self.read = read


def _err(e):
    if isinstance(e, (IOError, OSError)):
        return oserror_text(e)
    return str(e)


def apply_steps(steps, verify=True):
    """Apply steps in order. On the first failure, undo the applied ones in
    reverse order. Returns a report dict:
    ok, applied, failed ({key, error}), rolled_back, rollback_failed."""
    applied = []
    report = {'ok': True, 'applied': [], 'failed': None, 'rolled_back': [], 'rollback_failed': []}
    for st in steps:
        try:
            st.apply(st.after)
            if verify and st.read is not None:
                now = st.read()
                if now != st.after:
                    applied.append(st)
                    raise TuneError('wrote %r but the kernel reports %r' % (st.after, now))
        except (TuneError, IOError, OSError) as e:
            report['ok'] = False
            report['failed'] = {'key': st.key, 'error': _err(e)}
            break
        applied.append(st)
    if report['ok']:
        report['applied'] = [s.key for s in applied]
        return report
    for st in reversed(applied):
        try:
            st.apply(st.before)
            report['rolled_back'].append(st.key)
        except (TuneError, IOError, OSError) as e:
            report['rollback_failed'].append({'key': st.key, 'error': _err(e)})
    return report


def failure_message(what, report):
    f = report['failed']
    msg = '%s: setting %s failed: %s.' % (what, f['key'], f['error'])
    if report['rollback_failed']:
        msg += (' Rolling back the settings already applied failed for %s; those are still changed '
                '(their previous values are in the state file, run with state=restored).'
                % ', '.join('%s (%s)' % (r['key'], r['error']) for r in report['rollback_failed']))
    elif report['rolled_back']:
        msg += ' The %d setting(s) applied before it (%s) were rolled back; nothing was changed.' % (
            len(report['rolled_back']), ', '.join(report['rolled_back']))
    else:
        msg += ' Nothing was changed.'
    return msg


def run_present(module, statefile, steps, result, what, persist_cb=None):
    """Common ``state: present`` flow: write-ahead the before-values, apply,
    roll back on failure, run the persistence callback. Fills ``result``."""
    changed = bool(steps)
    if module.check_mode:
        if persist_cb is not None:
            changed = persist_cb(None) or changed
        result['changed'] = changed
        return result
    old = statefile.load()
    data = old if old is not None else statefile.new()
    data = json.loads(json.dumps(data))
    merge_before(data, dict((s.key, s.before) for s in steps))
    if steps:
        statefile.save(data)
    report = apply_steps(steps)
    if not report['ok']:
        if not report['rollback_failed']:
            statefile.put_back(old)
        result.update(applied=[], rolled_back=report['rolled_back'],
                      rollback_failed=report['rollback_failed'], failed_setting=report['failed'],
                      state_file=statefile.path)
        module.fail_json(msg=failure_message(what, report), **result)
    result['applied'] = report['applied']
    if persist_cb is not None:
        try:
            pchanged = persist_cb(data)
        except TuneError as e:
            statefile.save(data)
            module.fail_json(msg='%s: the settings were applied (%s) but making them persistent failed: %s. '
                             'Their previous values are in %s (state=restored undoes them).'
                             % (what, ', '.join(report['applied']) or 'none needed', e, statefile.path),
                             changed=changed, state_file=statefile.path, applied=report['applied'])
        if pchanged:
            statefile.save(data)
        changed = changed or pchanged
    if not data['before'] and not data['persist']:
        statefile.remove()
    result['changed'] = changed
    result['state_file'] = statefile.path
    return result


def run_restore(module, statefile, current_of, make_step, result, what):
    """Common ``state: restored`` flow. ``current_of(key)`` reads a setting
    (None if it does not exist any more); ``make_step(key, current, before)``
    returns a Step. Settings that cannot be restored stay in the state file."""
    data = statefile.load()
    result['state_file'] = statefile.path
    if data is None:
        result.update(changed=False, msg='no saved state at %s: nothing to restore' % statefile.path,
                      restored=[])
        return result
    steps = []
    missing = []
    before_view, after_view = {}, {}
    for key in sorted(data['before']):
        want = data['before'][key]
        cur = current_of(key)
        if cur is None:
            missing.append(key)
            continue
        if cur != want:
            steps.append(make_step(key, cur, want))
            before_view[key] = cur
            after_view[key] = want
    result['diff'] = {'before': before_view, 'after': after_view}
    changed = bool(steps) or bool(data['persist'])
    result['restored'] = [s.key for s in steps]
    if missing:
        module.warn('%s: settings %s no longer exist on the host (interface or queue gone); '
                    'they were not restored' % (what, ', '.join(missing)))
    result['not_restored'] = missing
    if module.check_mode:
        result['changed'] = changed
        return result
    failed = []
    for st in steps:
        try:
            st.apply(st.after)
            if st.read is not None and st.read() != st.after:
                raise TuneError('wrote %r but the kernel reports %r' % (st.after, st.read()))
        except (TuneError, IOError, OSError) as e:
            failed.append({'key': st.key, 'error': _err(e)})
    if data['persist']:
        try:
            remove_persist(data['persist'], data['extra'].get('persist_dir', DEFAULT_PERSIST_DIR),
                           data['extra'].get('persist_helper'))
            data['persist'] = []
        except TuneError as e:
            failed.append({'key': 'persistence files', 'error': str(e)})
    if failed:
        keep = dict((f['key'], data['before'][f['key']]) for f in failed if f['key'] in data['before'])
        data['before'] = keep
        statefile.save(data)
        result['restored'] = [s.key for s in steps if s.key not in keep]
        result['restore_failed'] = failed
        result['changed'] = True
        module.fail_json(msg='%s: restoring %s failed: %s. They stay in %s; fix the cause and run '
                         'state=restored again.' % (what, ', '.join(f['key'] for f in failed),
                                                    '; '.join(f['error'] for f in failed),
                                                    statefile.path), **result)
    statefile.remove()
    result['changed'] = changed
    return result


# --------------------------------------------------------------------------
# Persistence (udev rule + helper script, optional ifup hook)
# --------------------------------------------------------------------------

HELPER_SCRIPT = r'''#!/bin/sh
# erb-tune-apply: re-applies IRQ affinity / XPS / RPS settings saved by the
# erb.booster Ansible collection. Installed and managed by erb.booster; called
# by udev rules (99-erb-*.rules) and ifup hooks. Do not edit.
# usage: erb-tune-apply <irq_affinity|xps_rps> <ifname>
# config: @PERSIST_DIR@/<kind>-<ifname>.conf
#   queue <rx-N|tx-N> <rps_cpus|xps_cpus> <hex mask>
#   irq <irq action name> <cpu list>
set -u
conf_dir=${ERB_TUNE_CONF_DIR:-@PERSIST_DIR@}
sysfs=${ERB_SYSFS_ROOT:-/sys}
procfs=${ERB_PROCFS_ROOT:-/proc}
[ $# -eq 2 ] || { echo "usage: $0 <kind> <ifname>" >&2; exit 2; }
kind=$1
ifname=$2
conf="$conf_dir/$kind-$ifname.conf"
[ -r "$conf" ] || { echo "erb-tune-apply: $conf not found" >&2; exit 1; }
rc=0
while read -r what a b c; do
    case "$what" in
    queue)
        f="$sysfs/class/net/$ifname/queues/$a/$b"
        # a queue that does not exist (fewer channels now) is skipped
        [ -e "$f" ] || continue
        if ! printf '%s\n' "$c" > "$f"; then
            echo "erb-tune-apply: writing $c to $f failed" >&2
            rc=1
        fi
        ;;
    irq)
        for d in "$procfs"/irq/*/"$a"; do
            [ -d "$d" ] || continue
            if ! printf '%s\n' "$b" > "${d%/*}/smp_affinity_list"; then
                echo "erb-tune-apply: setting IRQ ${d%/*} ($a) to $b failed" >&2
                rc=1
            fi
        done
        ;;
    esac
done < "$conf"
exit $rc
'''


def _quote_udev(s):
    if '"' in s or '\n' in s:
        raise TuneError('cannot put %r into a udev rule' % s)
    return s


def persist_paths(params, kind, ifname):
    return {
        'conf': os.path.join(params['persist_dir'], '%s-%s.conf' % (kind, ifname)),
        'rule': os.path.join(params['udev_rules_dir'], '99-erb-%s-%s.rules' % (kind.replace('_', '-'), ifname)),
        'helper': params['helper_path'],
        'hook': (os.path.join(params['ifup_hook_dir'], 'erb-%s-%s' % (kind.replace('_', '-'), ifname))
                 if params.get('ifup_hook_dir') else None),
    }


def persist_contents(params, kind, ifname, conf_lines):
    p = persist_paths(params, kind, ifname)
    helper = _quote_udev(p['helper'])
    ifq = _quote_udev(ifname)
    cmd = '%s %s %s' % (helper, kind, ifq)
    files = {}
    files[p['helper']] = (HELPER_SCRIPT.replace('@PERSIST_DIR@', params['persist_dir']), 0o755)
    files[p['conf']] = ('# managed by erb.booster.%s for %s; do not edit\n' % (kind, ifname)
                        + ''.join(line + '\n' for line in conf_lines), 0o644)
    rule = ['# managed by erb.booster.%s: re-applies %s settings of %s when it (re)appears'
            % (kind, kind, ifname),
            'ACTION=="add", SUBSYSTEM=="net", KERNEL=="%s", RUN+="%s"' % (ifq, cmd),
            'ACTION=="move", SUBSYSTEM=="net", NAME=="%s", RUN+="%s"' % (ifq, cmd)]
    if kind == 'xps_rps':
        # queues are re-created (and reset) when the channel count changes
        rule.append('ACTION=="add", SUBSYSTEM=="queues", KERNELS=="%s", RUN+="%s"' % (ifq, cmd))
    files[p['rule']] = ('\n'.join(rule) + '\n', 0o644)
    if p['hook']:
        files[p['hook']] = ('#!/bin/sh\n# managed by erb.booster.%s: re-applies settings of %s on link up\n'
                            '[ "${IFACE:-}" = "%s" ] || exit 0\nexec %s\n' % (kind, ifname, ifname, cmd),
                            0o755)
    return files


def _file_differs(path, content, mode):
    try:
        st = os.stat(path)
        with open(path) as f:
            return f.read() != content or (st.st_mode & 0o777) != mode
    except (IOError, OSError):
        return True


def sync_persist(module, params, kind, ifname, conf_lines, data):
    """Make the persistence files match ``conf_lines`` (persist: true) or
    remove ours (persist: false). ``data`` is the state dict (None in check
    mode). Returns whether anything changed."""
    p = persist_paths(params, kind, ifname)
    if params['persist']:
        files = persist_contents(params, kind, ifname, conf_lines)
        todo = [path for path, (content, mode) in sorted(files.items()) if _file_differs(path, content, mode)]
        if data is not None:
            for path in todo:
                content, mode = files[path]
                try:
                    atomic_write(path, content, mode)
                except (IOError, OSError) as e:
                    raise TuneError('cannot write %s: %s' % (path, oserror_text(e)))
            for path in sorted(files):
                if path != p['helper'] and path not in data['persist']:
                    data['persist'].append(path)
            data['extra']['persist_helper'] = p['helper']
            data['extra']['persist_dir'] = params['persist_dir']
        return bool(todo)
    ours = [x for x in (p['conf'], p['rule'], p['hook']) if x and os.path.exists(x)]
    if ours and data is not None:
        remove_persist(ours, params['persist_dir'], p['helper'])
        data['persist'] = [x for x in data['persist'] if x not in ours]
    return bool(ours)


def remove_persist(paths, persist_dir, helper):
    """Remove our persistence files; the shared helper goes only when no
    config file is left in persist_dir that calls it."""
    for path in paths:
        try:
            os.unlink(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise TuneError('cannot remove %s: %s' % (path, oserror_text(e)))
    left = []
    if os.path.isdir(persist_dir):
        left = [f for f in os.listdir(persist_dir) if f.endswith('.conf')]
    if not left and helper:
        try:
            os.unlink(helper)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise TuneError('cannot remove %s: %s' % (helper, oserror_text(e)))
