#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: cpu_governor
short_description: Set the cpufreq scaling governor of a list of CPUs
version_added: 0.1.0
description:
  - Writes C(/sys/devices/system/cpu/cpu<N>/cpufreq/scaling_governor) for each CPU whose governor
    differs, after checking the governor against C(scaling_available_governors).
  - Where cpufreq is absent (most VMs and containers, or no cpufreq driver for the CPU), the CPU is
    reported as unsupported and left alone; the module fails only with O(required=true).
  - The governors it changes are saved first in a state file under O(state_dir); O(state=restored) writes
    them back. If writing one CPU fails, the CPUs already written are put back.
options:
  governor:
    description: Governor to set, for example V(performance). Required with O(state=present).
    type: str
  cpus:
    description: CPUs to set, V(all) (every online CPU), a CPU list string (V(0-7,16)) or a list of CPU
      numbers.
    type: raw
    default: all
  required:
    description: Fail when cpufreq is not available on one of the CPUs (instead of reporting it as
      unsupported and changing nothing there).
    type: bool
    default: false
  state:
    description:
      - V(present) sets the governor.
      - V(restored) puts back the governors saved by earlier runs and removes the state file.
    type: str
    choices: [present, restored]
    default: present
notes:
  - A governor not in C(scaling_available_governors) always fails, listing the available ones (with
    intel_pstate in active mode they are only C(performance) and C(powersave)).
  - CPUs sharing a cpufreq policy change together; each CPU's before-value is saved and restored.
attributes:
  check_mode:
    support: full
    description: Reads the governors and reports what would change; writes nothing.
  diff_mode:
    support: full
    description: Returns the changed governors before and after, per CPU.
  platform:
    support: full
    platforms: posix
    description: Linux only.
author:
  - ERB developers (!UNKNOWN)
extends_documentation_fragment:
  - erb.booster.tune
'''

EXAMPLES = r'''
- name: performance governor on every CPU, where cpufreq exists
  erb.booster.cpu_governor:
    governor: performance

- name: Redis cores must run at full speed; fail on hosts without cpufreq
  erb.booster.cpu_governor:
    governor: performance
    cpus: 0-7
    required: true

- name: Put the governors back
  erb.booster.cpu_governor:
    state: restored
'''

RETURN = r'''
supported:
  description: Whether every requested CPU has cpufreq.
  returned: when O(state=present)
  type: bool
  sample: false
unsupported_cpus:
  description: Requested CPUs without cpufreq, as a CPU list.
  returned: when O(state=present)
  type: str
  sample: 0-1
governors:
  description: Governor of each supported CPU after the run.
  returned: when O(state=present)
  type: dict
  sample: {"cpu0": "performance", "cpu1": "performance"}
available_governors:
  description: The governors CPU-by-CPU offered (of the first supported CPU).
  returned: when O(state=present) and the CPUs have cpufreq
  type: list
  elements: str
state_file:
  description: Path of the state file.
  returned: always
  type: str
applied:
  description: Settings written by this run (C(cpu<N>)).
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
    COMMON_STATE_SPEC, SYSFS_SPEC, StateFile, Step, TuneError, cpus_from_value, format_cpulist,
    online_cpus, oserror_text, read_text, run_present, run_restore, write_text)

ARGUMENT_SPEC = dict(
    governor=dict(type='str'),
    cpus=dict(type='raw', default='all'),
    required=dict(type='bool', default=False),
)
ARGUMENT_SPEC.update(COMMON_STATE_SPEC)
ARGUMENT_SPEC.update(SYSFS_SPEC)


def cpufreq_dir(sysfs_root, cpu):
    return os.path.join(sysfs_root, 'devices/system/cpu', 'cpu%d' % cpu, 'cpufreq')


def read_governor(sysfs_root, cpu):
    path = os.path.join(cpufreq_dir(sysfs_root, cpu), 'scaling_governor')
    try:
        return read_text(path)
    except (IOError, OSError) as e:
        raise TuneError('cannot read %s: %s' % (path, oserror_text(e)))


def gov_step(sysfs_root, cpu, before, after):
    path = os.path.join(cpufreq_dir(sysfs_root, cpu), 'scaling_governor')

    def apply(value):
        try:
            write_text(path, value)
        except (IOError, OSError) as e:
            raise TuneError('writing %s to %s failed: %s' % (value, path, oserror_text(e)))

    return Step('cpu%d' % cpu, before, after, apply, lambda: read_governor(sysfs_root, cpu))


def requested_cpus(p):
    root = p['sysfs_root']
    spec = p['cpus']
    if isinstance(spec, str) and spec.strip().lower() == 'all':
        return online_cpus(root)
    cpus = cpus_from_value(spec, 'cpus')
    if not cpus:
        raise TuneError('cpus selects no CPU')
    missing = [c for c in cpus if not os.path.isdir(os.path.join(root, 'devices/system/cpu', 'cpu%d' % c))]
    if missing:
        raise TuneError('CPU(s) %s do not exist on this host (present: %s)'
                        % (format_cpulist(missing), read_text(os.path.join(root, 'devices/system/cpu/present'))
                           if os.path.exists(os.path.join(root, 'devices/system/cpu/present')) else 'unknown'))
    return cpus


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_if=[('state', 'present', ['governor'])])
    p = module.params
    root = p['sysfs_root']
    sf = StateFile(p['state_dir'], 'cpu_governor', 'host')
    result = dict(changed=False, state_file=sf.path)
    what = 'cpu_governor'
    try:
        if p['state'] == 'restored':
            def current_of(key):
                cpu = int(re.match(r'^cpu(\d+)$', key).group(1))
                if not os.path.exists(os.path.join(cpufreq_dir(root, cpu), 'scaling_governor')):
                    return None
                return read_governor(root, cpu)

            result = run_restore(module, sf, current_of,
                                 lambda key, cur, want: gov_step(root, int(key[3:]), cur, want), result, what)
            module.exit_json(**result)

        gov = p['governor'].strip()
        cpus = requested_cpus(p)
        unsupported = [c for c in cpus
                       if not os.path.exists(os.path.join(cpufreq_dir(root, c), 'scaling_governor'))]
        supported = [c for c in cpus if c not in unsupported]
        result['supported'] = not unsupported
        result['unsupported_cpus'] = format_cpulist(unsupported)
        if unsupported:
            why = ('cpufreq is not available on CPU(s) %s (%s does not exist): the kernel has no cpufreq '
                   'driver for this machine (usual in VMs and containers) or frequency scaling is disabled '
                   'in the firmware' % (format_cpulist(unsupported), cpufreq_dir(root, unsupported[0])))
            if p['required']:
                raise TuneError(why + '. Enable a cpufreq driver (e.g. intel_pstate, acpi-cpufreq, '
                                'amd-pstate) or set required: false to accept running without it')
            result['msg'] = why + '; left unchanged (required: false)'
        governors = {}
        steps = []
        before_view, after_view = {}, {}
        for c in supported:
            avail_path = os.path.join(cpufreq_dir(root, c), 'scaling_available_governors')
            try:
                avail = read_text(avail_path).split()
            except (IOError, OSError) as e:
                raise TuneError('cannot read %s: %s' % (avail_path, oserror_text(e)))
            result.setdefault('available_governors', avail)
            if gov not in avail:
                raise TuneError('governor %r is not available on CPU %d (available: %s). Load the governor '
                                'module or pick one of those' % (gov, c, ', '.join(avail) or 'none'))
            cur = read_governor(root, c)
            governors['cpu%d' % c] = gov
            if cur != gov:
                steps.append(gov_step(root, c, cur, gov))
                before_view['cpu%d' % c] = cur
                after_view['cpu%d' % c] = gov
        result['diff'] = {'before': before_view, 'after': after_view}
        result['governors'] = governors
        result = run_present(module, sf, steps, result, what)
    except TuneError as e:
        module.fail_json(msg=str(e), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
