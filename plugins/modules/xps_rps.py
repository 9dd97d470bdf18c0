#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: xps_rps
short_description: Set the XPS and RPS CPU masks of a NIC's queues
version_added: 0.1.0
description:
  - Writes C(queues/rx-<N>/rps_cpus) and C(queues/tx-<N>/xps_cpus) under C(/sys/class/net/<name>/) when
    they differ from the wanted CPUs. Values are compared as CPU sets, so a second run changes nothing.
  - The masks it changes are saved first (values before the first change) in a state file under
    O(state_dir); O(state=restored) writes them back and removes the file.
  - If writing one queue fails, the queues already written are put back and the module reports it.
  - These masks are lost when the queues are re-created (channel count change, driver reload).
    O(persist=true) installs a udev rule (and optionally an ifup hook) that runs a helper script
    re-applying them; see O(udev_rules_dir), O(helper_path), O(persist_dir), O(ifup_hook_dir).
options:
  name:
    description: Interface name, in the network namespace the module runs in.
    type: str
    required: true
  rps_cpus:
    description:
      - RPS CPUs of the RX queues, in CPU list notation (V(0-3,8)); V('') or V(none) disables RPS.
      - A single value applies to every RX queue; a list gives the value of queue 0, 1, ... in order
        (queues beyond the list are left alone).
    type: raw
  xps_cpus:
    description:
      - XPS CPUs of the TX queues, same notation as O(rps_cpus). A typical setting is one CPU per queue,
        the CPU that handles the queue's IRQ, for example V(["0", "1", "2", "3"]).
    type: raw
  state:
    description:
      - V(present) sets the masks.
      - V(restored) puts back the saved masks, removes the persistence files this module installed, and
        removes the state file.
    type: str
    choices: [present, restored]
    default: present
notes:
  - The kernel hides XPS on single-queue devices (reading C(xps_cpus) fails with ENOENT); the module fails
    and says so.
  - Needs a kernel with C(CONFIG_RPS) and C(CONFIG_XPS) (all distribution kernels).
attributes:
  check_mode:
    support: full
    description: Reads the masks and reports what would change, including persistence files; writes nothing.
  diff_mode:
    support: full
    description: Returns the changed masks (hex, as sysfs shows them) before and after.
  platform:
    support: full
    platforms: posix
    description: Linux only.
author:
  - ERB developers (!UNKNOWN)
extends_documentation_fragment:
  - erb.booster.tune
  - erb.booster.tune.persist
'''

EXAMPLES = r'''
- name: XPS one CPU per TX queue, RPS off, survive queue re-creation
  erb.booster.xps_rps:
    name: ens1f0np0
    xps_cpus: ["0", "1", "2", "3"]
    rps_cpus: none
    persist: true

- name: RPS for a single-queue virtual NIC spread over CPUs 1-3
  erb.booster.xps_rps:
    name: eth0
    rps_cpus: "1-3"

- name: Put the masks back and remove the udev rule
  erb.booster.xps_rps:
    name: ens1f0np0
    state: restored
'''

RETURN = r'''
masks:
  description: Masks of the queues this run manages, after the run (hex without leading zeros).
  returned: success
  type: dict
  sample: {"rx-0/rps_cpus": "0", "tx-0/xps_cpus": "1", "tx-1/xps_cpus": "2"}
persist_files:
  description: Persistence files managed for this interface.
  returned: when O(persist=true)
  type: list
  elements: str
state_file:
  description: Path of the state file.
  returned: always
  type: str
applied:
  description: Settings written by this run (C(rx-<N>/rps_cpus), C(tx-<N>/xps_cpus)).
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

import errno
import os
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.erb.booster.plugins.module_utils.erb_tune import (
    COMMON_STATE_SPEC, PERSIST_SPEC, SYSFS_SPEC, StateFile, Step, TuneError, check_cpus_online,
    cpus_from_value, cpus_to_mask, format_mask, netdev_dir, oserror_text, parse_mask, persist_paths,
    read_text, run_present, run_restore, sync_persist, write_text)

ARGUMENT_SPEC = dict(
    name=dict(type='str', required=True),
    rps_cpus=dict(type='raw'),
    xps_cpus=dict(type='raw'),
)
ARGUMENT_SPEC.update(PERSIST_SPEC)
ARGUMENT_SPEC.update(COMMON_STATE_SPEC)
ARGUMENT_SPEC.update(SYSFS_SPEC)

ATTR = {'rx': 'rps_cpus', 'tx': 'xps_cpus'}


def queues(ifdir, kind):
    qdir = os.path.join(ifdir, 'queues')
    found = []
    for q in os.listdir(qdir) if os.path.isdir(qdir) else []:
        m = re.match(r'^%s-(\d+)$' % kind, q)
        if m:
            found.append(int(m.group(1)))
    return sorted(found)


def attr_path(ifdir, key):
    return os.path.join(ifdir, 'queues', key)


def read_mask(ifdir, key, name):
    path = attr_path(ifdir, key)
    try:
        return format_mask(parse_mask(read_text(path)))
    except (IOError, OSError) as e:
        if e.errno == errno.ENOENT and key.endswith('xps_cpus') and os.path.exists(os.path.dirname(path)):
            raise TuneError('XPS is not available on %s: the kernel hides xps_cpus on single-queue devices '
                            '(%s). Set more TX channels with erb.booster.nic_channels or leave xps_cpus '
                            'unset' % (name, path))
        raise TuneError('cannot read %s: %s' % (path, oserror_text(e)))


def wanted(params, ifdir, name):
    want = {}
    for kind, attr in sorted(ATTR.items()):
        spec = params[attr]
        if spec is None:
            continue
        qs = queues(ifdir, kind)
        if not qs:
            raise TuneError('%s has no %s queues under %s' % (name, kind, os.path.join(ifdir, 'queues')))
        if isinstance(spec, list):
            if len(spec) > len(qs):
                raise TuneError('%s lists %d queues but %s has %d %s queues (%s)'
                                % (attr, len(spec), name, len(qs), kind,
                                   ', '.join('%s-%d' % (kind, q) for q in qs)))
            values = list(spec)
        else:
            values = [spec] * len(qs)
        for idx, v in enumerate(values):
            cpus = cpus_from_value('' if v is None else v, '%s[%d]' % (attr, idx))
            want['%s-%d/%s' % (kind, idx, attr)] = cpus
    return want


def make_step(ifdir, key, before, after, name):
    path = attr_path(ifdir, key)

    def apply(value):
        try:
            write_text(path, value)
        except (IOError, OSError) as e:
            raise TuneError('writing %s to %s failed: %s' % (value, path, oserror_text(e)))

    return Step(key, before, after, apply, lambda: read_mask(ifdir, key, name))


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    name = p['name']
    sf = StateFile(p['state_dir'], 'xps_rps', name)
    result = dict(changed=False, state_file=sf.path)
    what = 'xps_rps %s' % name
    try:
        if p['state'] == 'restored' and sf.load() is None:
            module.exit_json(changed=False, state_file=sf.path, restored=[],
                             msg='no saved state at %s: nothing to restore' % sf.path)
        ifdir = netdev_dir(p['sysfs_root'], name)
        if p['state'] == 'restored':
            def current_of(key):
                if not os.path.exists(os.path.dirname(attr_path(ifdir, key))):
                    return None
                return read_mask(ifdir, key, name)
            result = run_restore(module, sf, current_of,
                                 lambda key, cur, want: make_step(ifdir, key, cur, want, name), result, what)
            module.exit_json(**result)

        if p['rps_cpus'] is None and p['xps_cpus'] is None:
            raise TuneError('nothing to set: give rps_cpus and/or xps_cpus')
        want = wanted(p, ifdir, name)
        all_cpus = set()
        for cpus in want.values():
            all_cpus.update(cpus)
        check_cpus_online(all_cpus, p['sysfs_root'], what)
        steps = []
        masks = {}
        before_view, after_view = {}, {}
        for key in sorted(want):
            target = format_mask(cpus_to_mask(want[key]))
            cur = read_mask(ifdir, key, name)
            masks[key] = target
            if cur != target:
                steps.append(make_step(ifdir, key, cur, target, name))
                before_view[key] = cur
                after_view[key] = target
        result['diff'] = {'before': before_view, 'after': after_view}
        conf = ['queue %s %s %s' % (tuple(key.split('/')) + (masks[key],)) for key in sorted(masks)]

        def persist_cb(data):
            return sync_persist(module, p, 'xps_rps', name, conf, data)

        result = run_present(module, sf, steps, result, what, persist_cb=persist_cb)
        result['masks'] = masks
        if p['persist']:
            pp = persist_paths(p, 'xps_rps', name)
            result['persist_files'] = [x for x in (pp['rule'], pp['conf'], pp['helper'], pp['hook']) if x]
    except TuneError as e:
        module.fail_json(msg=str(e), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
