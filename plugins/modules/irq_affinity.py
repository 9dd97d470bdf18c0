#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: irq_affinity
short_description: Pin each NIC queue's IRQ to a CPU
version_added: 0.1.0
description:
  - Finds the queue IRQs of one interface in C(/proc/interrupts), restricted to the device's
    C(msi_irqs) when sysfs lists them, by the names drivers give them
    (mlx5 C(mlx5_comp<N>@pci:<addr>), ice/i40e/ixgbe/igb/bnxt C([<drv>-]<if>-TxRx-<N>),
    ena C(<if>-Tx-Rx-<N>), virtio_net C(virtio<M>-input.<N>) and C(virtio<M>-output.<N>),
    generic C(<if>-rx-<N>)/C(<if>-tx-<N>)), or by O(irq_pattern).
  - Queue N gets CPU C(cpus[N % len(cpus)]), written to C(/proc/irq/<irq>/smp_affinity_list) when the
    current CPU set differs. Several IRQs of the same queue (virtio input/output) get the same CPU.
  - The affinities it changes are saved first in a state file under O(state_dir), keyed by IRQ name so
    that renumbered IRQs are still found; O(state=restored) writes them back.
  - If the kernel refuses one IRQ (for example a kernel-managed IRQ), the IRQs already written are put back
    and the module reports it.
  - C(irqbalance) moves IRQs around; by default the module does not look at it (O(irqbalance=ignore)).
  - IRQ affinity is lost when the driver re-requests its IRQs (reload, some drivers on link down/up).
    O(persist=true) installs a udev rule and optionally an ifup hook that run a helper re-applying it.
options:
  name:
    description: Interface name (its IRQs are global; the name is resolved in the namespace the module
      runs in).
    type: str
    required: true
  cpus:
    description: CPUs to pin the queues to, in order, as a list of CPU numbers or a CPU list string
      (V(0-7)). Queue N gets the CPU at index C(N % len(cpus)).
    type: raw
  irq_pattern:
    description: Regular expression matched against whole IRQ names instead of the built-in driver
      patterns; its first group must capture the queue number. C({ifname}) is replaced by the escaped
      interface name.
    type: str
  irqbalance:
    description:
      - What to do when an irqbalance daemon is running.
      - V(ignore) does nothing; V(warn) adds a warning; V(stop) stops C(irqbalance.service) with systemctl
        (restarted by O(state=restored); it is still enabled at boot - disable it or ban the CPUs in its
        configuration if that is wanted).
    type: str
    choices: [ignore, warn, stop]
    default: ignore
  state:
    description:
      - V(present) pins the IRQs.
      - V(restored) puts back the saved affinities (and restarts irqbalance if this module stopped it),
        removes the persistence files and the state file.
    type: str
    choices: [present, restored]
    default: present
notes:
  - Virtual devices (veth, bridges) have no IRQs; the module fails and says so.
attributes:
  check_mode:
    support: full
    description: Reads the affinities and reports what would change; writes nothing and stops nothing.
  diff_mode:
    support: full
    description: Returns the changed IRQ affinities before and after, by IRQ name.
  platform:
    support: full
    platforms: posix
    description: Linux only.
author:
  - ERB developers (!UNKNOWN)
extends_documentation_fragment:
  - erb.booster.tune
  - erb.booster.tune.procfs
  - erb.booster.tune.persist
'''

EXAMPLES = r'''
- name: One queue per core on cores 0-7, keep it after driver reloads
  erb.booster.irq_affinity:
    name: ens1f0np0
    cpus: 0-7
    irqbalance: warn
    persist: true

- name: Stop irqbalance and pin an ixgbe port's queues to cores 2 and 3
  erb.booster.irq_affinity:
    name: eth1
    cpus: [2, 3]
    irqbalance: stop
    persist: true
    ifup_hook_dir: /etc/network/if-up.d

- name: Put the affinities back
  erb.booster.irq_affinity:
    name: ens1f0np0
    state: restored
'''

RETURN = r'''
irqs:
  description: The queue IRQs found, with queue number, IRQ number and CPU list after the run.
  returned: when O(state=present)
  type: list
  elements: dict
  sample: [{"name": "mlx5_comp0@pci:0000:3b:00.0", "irq": 98, "queue": 0, "cpus": "0"}]
irqbalance_running:
  description: Whether an irqbalance process was found.
  returned: when O(state=present)
  type: bool
persist_files:
  description: Persistence files managed for this interface (udev rule, config file, helper, ifup hook).
  returned: when O(persist=true)
  type: list
  elements: str
state_file:
  description: Path of the state file.
  returned: always
  type: str
applied:
  description: Settings written by this run (IRQ names, and C(service:irqbalance) when it was stopped).
  returned: when O(state=present), not in check mode
  type: list
  elements: str
rolled_back:
  description: Settings written before a failing one and put back.
  returned: when a setting failed with O(state=present)
  type: list
  elements: str
rollback_failed:
  description: Settings that could not be put back after a failure (their previous values stay in RV(state_file)).
  returned: when a setting failed with O(state=present)
  type: list
  elements: dict
  contains:
    key:
      description: The setting.
      type: str
    error:
      description: Why it could not be put back.
      type: str
failed_setting:
  description: The setting whose write failed.
  returned: when a setting failed with O(state=present)
  type: dict
  contains:
    key:
      description: The setting.
      type: str
    error:
      description: Why writing it failed.
      type: str
restored:
  description: Settings written back from the state file.
  returned: when O(state=restored)
  type: list
  elements: str
not_restored:
  description: Saved settings that no longer exist on the host (interface or queue gone), left alone.
  returned: when O(state=restored) and a state file exists
  type: list
  elements: str
restore_failed:
  description: Settings whose restore failed; they stay in RV(state_file).
  returned: when O(state=restored) failed
  type: list
  elements: dict
  contains:
    key:
      description: The setting.
      type: str
    error:
      description: Why restoring it failed.
      type: str
'''

import os
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.erb.booster.plugins.module_utils.erb_tune import (
    COMMON_STATE_SPEC, PERSIST_SPEC, PROCFS_SPEC, SYSFS_SPEC, StateFile, Step, TuneError,
    check_cpus_online, cpus_from_value, format_cpulist, netdev_dir, netdev_driver, oserror_text,
    parse_cpulist, persist_paths, read_text, run_present, run_restore, sync_persist, write_text)

ARGUMENT_SPEC = dict(
    name=dict(type='str', required=True),
    cpus=dict(type='raw'),
    irq_pattern=dict(type='str'),
    irqbalance=dict(type='str', default='ignore', choices=['ignore', 'warn', 'stop']),
)
ARGUMENT_SPEC.update(PERSIST_SPEC)
ARGUMENT_SPEC.update(COMMON_STATE_SPEC)
ARGUMENT_SPEC.update(SYSFS_SPEC)
ARGUMENT_SPEC.update(PROCFS_SPEC)

IRQBALANCE_KEY = 'service:irqbalance'


def parse_interrupts(text):
    """/proc/interrupts -> {irq number: [tokens after the per-CPU counts]}."""
    lines = text.splitlines()
    if not lines:
        return {}
    ncpu = len(lines[0].split())
    out = {}
    for line in lines[1:]:
        m = re.match(r'^\s*(\d+):\s*(.*)$', line)
        if not m:
            continue
        toks = m.group(2).split()
        out[int(m.group(1))] = [t.rstrip(',') for t in toks[ncpu:]]
    return out


def device_identity(sysfs_root, name):
    """(pci address or None, virtio device name or None, msi irq set or None)."""
    dev = os.path.join(sysfs_root, 'class/net', name, 'device')
    if not os.path.exists(dev):
        return None, None, None
    real = os.path.realpath(dev)
    base = os.path.basename(real)
    virtio = base if re.match(r'^virtio\d+$', base) else None
    pci = None
    msi = None
    d = real
    for _level in range(2):
        if pci is None and re.match(r'^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$', os.path.basename(d)):
            pci = os.path.basename(d)
        mdir = os.path.join(d, 'msi_irqs')
        if msi is None and os.path.isdir(mdir):
            msi = set(int(x) for x in os.listdir(mdir) if x.isdigit())
        d = os.path.dirname(d)
    return pci, virtio, msi


def patterns(name, pci, virtio, user):
    ifn = re.escape(name)
    if user:
        return [re.compile(user.replace('{ifname}', ifn))]
    pats = [r'(?:[A-Za-z0-9_]+-)?%s-TxRx-(\d+)' % ifn,
            r'%s-Tx-Rx-(\d+)' % ifn,
            r'%s-(?:rx|tx)-(\d+)' % ifn]
    if pci:
        pats.append(r'mlx5_comp(\d+)@pci:%s' % re.escape(pci))
    if virtio:
        pats.append(r'%s-(?:input|output)\.(\d+)' % re.escape(virtio))
    return [re.compile(p) for p in pats]


def find_queue_irqs(sysfs_root, procfs_root, name, user_pattern):
    path = os.path.join(procfs_root, 'interrupts')
    try:
        table = parse_interrupts(read_text(path))
    except (IOError, OSError) as e:
        raise TuneError('cannot read %s: %s' % (path, oserror_text(e)))
    pci, virtio, msi = device_identity(sysfs_root, name)
    pats = patterns(name, pci, virtio, user_pattern)
    found = []
    for irq, toks in sorted(table.items()):
        if msi is not None and irq not in msi:
            continue
        for t in toks:
            for pat in pats:
                m = pat.fullmatch(t)
                if m:
                    try:
                        q = int(m.group(1))
                    except (IndexError, TypeError, ValueError):
                        raise TuneError('irq_pattern %r must capture the queue number in its first group'
                                        % user_pattern)
                    found.append({'name': t, 'irq': irq, 'queue': q})
                    break
            else:
                continue
            break
    return found, pats


def irq_dir(procfs_root, irq):
    return os.path.join(procfs_root, 'irq', str(irq))


def irq_by_name(procfs_root, action):
    base = os.path.join(procfs_root, 'irq')
    for n in os.listdir(base) if os.path.isdir(base) else []:
        if n.isdigit() and os.path.isdir(os.path.join(base, n, action)):
            return int(n)
    return None


def read_affinity(procfs_root, irq):
    path = os.path.join(irq_dir(procfs_root, irq), 'smp_affinity_list')
    try:
        return format_cpulist(parse_cpulist(read_text(path)))
    except (IOError, OSError) as e:
        raise TuneError('cannot read %s: %s' % (path, oserror_text(e)))


def irq_step(procfs_root, key, irq, before, after):
    path = os.path.join(irq_dir(procfs_root, irq), 'smp_affinity_list')

    def apply(value):
        try:
            write_text(path, value)
        except (IOError, OSError) as e:
            hint = ''
            if e.errno == 5:
                hint = ' (EIO: the kernel manages this IRQ\'s affinity itself or the interrupt controller ' \
                       'cannot route it to those CPUs)'
            raise TuneError('writing %s to %s (%s) failed: %s%s' % (value, path, key, oserror_text(e), hint))

    return Step(key, before, after, apply, lambda: read_affinity(procfs_root, irq))


def irqbalance_pids(procfs_root):
    pids = []
    for n in os.listdir(procfs_root) if os.path.isdir(procfs_root) else []:
        if not n.isdigit():
            continue
        try:
            if read_text(os.path.join(procfs_root, n, 'comm')) == 'irqbalance':
                pids.append(int(n))
        except (IOError, OSError):
            continue
    return sorted(pids)


def systemctl_step(module, before, after):
    def apply(value):
        path = module.get_bin_path('systemctl')
        if not path:
            raise TuneError('systemctl not found: cannot %s irqbalance; stop it yourself or use '
                            'irqbalance=warn' % ('stop' if value == 'stopped' else 'start'))
        verb = 'stop' if value == 'stopped' else 'start'
        rc, out, err = module.run_command([path, verb, 'irqbalance.service'], environ_update={'LANG': 'C'})
        if rc != 0:
            raise TuneError('systemctl %s irqbalance.service failed (rc=%d): %s' % (verb, rc, (err or out).strip()))

    # no read-back: the daemon may take a moment to exit after systemctl returns
    return Step(IRQBALANCE_KEY, before, after, apply)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    name = p['name']
    sf = StateFile(p['state_dir'], 'irq_affinity', name)
    result = dict(changed=False, state_file=sf.path)
    what = 'irq_affinity %s' % name
    procfs = p['procfs_root']
    try:
        if p['state'] == 'restored':
            def current_of(key):
                if key == IRQBALANCE_KEY:
                    return 'running' if irqbalance_pids(procfs) else 'stopped'
                irq = irq_by_name(procfs, key)
                return read_affinity(procfs, irq) if irq is not None else None

            def make_step(key, cur, want):
                if key == IRQBALANCE_KEY:
                    # start it again only if we stopped it
                    return systemctl_step(module, cur, want)
                return irq_step(procfs, key, irq_by_name(procfs, key), cur, want)

            result = run_restore(module, sf, current_of, make_step, result, what)
            module.exit_json(**result)

        netdev_dir(p['sysfs_root'], name)
        cpus = cpus_from_value(p['cpus'], 'cpus')
        if not cpus:
            raise TuneError('cpus is required with state=present: the CPUs to pin the queues to, e.g. "0-7"')
        if not isinstance(p['cpus'], list):
            cpus_order = cpus
        else:
            cpus_order = []
            for v in p['cpus']:
                cpus_order.extend(cpus_from_value(v, 'cpus'))
        check_cpus_online(cpus_order, p['sysfs_root'], what)
        irqs, pats = find_queue_irqs(p['sysfs_root'], procfs, name, p['irq_pattern'])
        if not irqs:
            drv = netdev_driver(p['sysfs_root'], name) or 'no device driver (virtual interface)'
            raise TuneError('no queue IRQs found for %s (%s) in %s: looked for names matching %s. Virtual '
                            'interfaces (veth, bridge) have none; for another driver pass irq_pattern'
                            % (name, drv, os.path.join(procfs, 'interrupts'),
                               ', '.join(x.pattern for x in pats)))
        steps = []
        before_view, after_view = {}, {}
        pids = irqbalance_pids(procfs)
        result['irqbalance_running'] = bool(pids)
        if pids and p['irqbalance'] == 'warn':
            module.warn('irqbalance is running (pid %s) and will move the IRQs of %s again; stop it or ban '
                        'these IRQs/CPUs in its configuration (or use irqbalance=stop)'
                        % (','.join(map(str, pids)), name))
        if pids and p['irqbalance'] == 'stop':
            steps.append(systemctl_step(module, 'running', 'stopped'))
            before_view[IRQBALANCE_KEY] = 'running'
            after_view[IRQBALANCE_KEY] = 'stopped'
        conf = []
        for it in irqs:
            target = format_cpulist([cpus_order[it['queue'] % len(cpus_order)]])
            cur = read_affinity(procfs, it['irq'])
            it['cpus'] = target
            conf.append('irq %s %s' % (it['name'], target))
            if cur != target:
                steps.append(irq_step(procfs, it['name'], it['irq'], cur, target))
                before_view[it['name']] = cur
                after_view[it['name']] = target
        result['diff'] = {'before': before_view, 'after': after_view}
        result['irqs'] = irqs

        def persist_cb(data):
            return sync_persist(module, p, 'irq_affinity', name, conf, data)

        result = run_present(module, sf, steps, result, what, persist_cb=persist_cb)
        if p['persist']:
            pp = persist_paths(p, 'irq_affinity', name)
            result['persist_files'] = [x for x in (pp['rule'], pp['conf'], pp['helper'], pp['hook']) if x]
    except TuneError as e:
        module.fail_json(msg=str(e), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
