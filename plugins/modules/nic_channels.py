#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: nic_channels
short_description: Set the number of NIC queues (channels) with ethtool -L
version_added: 0.1.0
description:
  - Sets the combined, rx, tx and/or other channel counts of one network interface, as C(ethtool -L) does,
    after reading them with C(ethtool -l). Only the counts that differ are passed to C(ethtool -L), in one
    call.
  - Each count can be C(max), the driver's pre-set maximum.
  - The counts it changes are first saved (their values before the first change) in a state file under
    O(state_dir); O(state=restored) writes them back and removes the state file.
  - Changing the channel count re-creates queues, which resets their XPS/RPS masks and, on many drivers,
    the RSS indirection table and the IRQs. Run M(erb.booster.nic_channels) before M(erb.booster.nic_rss),
    M(erb.booster.irq_affinity) and M(erb.booster.xps_rps).
options:
  name:
    description: Interface name, in the network namespace the module runs in.
    type: str
    required: true
  combined:
    description: Combined (RX+TX) channels, a positive integer or C(max). Most hardware NICs (mlx5, ixgbe,
      i40e, ice, ena, virtio_net) only have combined channels.
    type: raw
  rx:
    description: RX-only channels, an integer or C(max) (for example veth).
    type: raw
  tx:
    description: TX-only channels, an integer or C(max) (for example veth).
    type: raw
  other:
    description: Other channels (link interrupts etc.), an integer or C(max).
    type: raw
  state:
    description:
      - V(present) sets the given counts.
      - V(restored) puts back the counts saved in the state file by earlier runs and removes it.
    type: str
    choices: [present, restored]
    default: present
requirements:
  - ethtool
notes:
  - Drivers may refuse a change (for example while an XDP program is attached, or when a user-configured
    RSS table references a queue that would disappear); the module then fails with the driver's message and
    reports that nothing was changed.
attributes:
  check_mode:
    support: full
    description: Reads the counts and reports what would change; writes nothing.
  diff_mode:
    support: full
    description: Returns the changed counts before and after.
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
- name: One combined queue per core, up to what the NIC supports
  erb.booster.nic_channels:
    name: ens1f0np0
    combined: max

- name: veth pair end with separate rx/tx queues
  erb.booster.nic_channels:
    name: veth0
    rx: 2
    tx: 2

- name: Put the channel counts back as they were
  erb.booster.nic_channels:
    name: ens1f0np0
    state: restored
'''

RETURN = r'''
channels:
  description: Current channel counts after the run (V(null) where the driver has none).
  returned: success
  type: dict
  sample: {"combined": 8, "rx": null, "tx": null, "other": null}
maximum:
  description: Pre-set maximums reported by the driver.
  returned: success
  type: dict
  sample: {"combined": 63, "rx": null, "tx": null, "other": null}
driver:
  description: Driver name reported by C(ethtool -i).
  returned: success
  type: str
  sample: mlx5_core
state_file:
  description: Path of the state file holding the before-values.
  returned: always
  type: str
  sample: /var/lib/erb/tune/nic_channels-ens1f0np0.json
restored:
  description: Counts written back.
  returned: when O(state=restored)
  type: list
  elements: str
'''

import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.erb.booster.plugins.module_utils.erb_tune import (
    COMMON_STATE_SPEC, SYSFS_SPEC, CHANNEL_KEYS, StateFile, TuneError, ethtool,
    merge_before, netdev_dir, parse_channels, parse_driver_info)

ARGUMENT_SPEC = dict(
    name=dict(type='str', required=True),
    combined=dict(type='raw'),
    rx=dict(type='raw'),
    tx=dict(type='raw'),
    other=dict(type='raw'),
)
ARGUMENT_SPEC.update(COMMON_STATE_SPEC)
ARGUMENT_SPEC.update(SYSFS_SPEC)


def read_channels(module, name):
    return parse_channels(ethtool(module, ['-l', name])[1])


def driver_of(module, name):
    rc, out, err = ethtool(module, ['-i', name], check=False)
    if rc == 0:
        return parse_driver_info(out).get('driver') or 'unknown'
    return 'unknown'


def wanted_counts(params, chans, name, driver):
    want = {}
    for key in CHANNEL_KEYS:
        v = params[key]
        if v is None:
            continue
        mx = chans['max'][key]
        if not mx:
            raise TuneError("%s (driver %s) has no '%s' channels (ethtool -l reports the maximum "
                            "as n/a or 0); supported: %s"
                            % (name, driver, key, ', '.join(k for k in CHANNEL_KEYS if chans['max'][k]) or 'none'))
        if isinstance(v, str) and v.strip().lower() == 'max':
            n = mx
        else:
            try:
                n = int(v)
            except (TypeError, ValueError):
                raise TuneError("%s must be an integer or 'max', got %r" % (key, v))
            if isinstance(v, bool) or n < 0:
                raise TuneError("%s must be a non-negative integer or 'max', got %r" % (key, v))
        if n > mx:
            raise TuneError('%s=%d exceeds the maximum of %d %s channels that %s (driver %s) supports; '
                            'use %s: max' % (key, n, mx, key, name, driver, key))
        want[key] = n
    return want


def set_channels(module, name, counts):
    args = ['-L', name]
    for k in CHANNEL_KEYS:
        if k in counts:
            args += [k, str(counts[k])]
    rc, out, err = ethtool(module, args, check=False)
    if rc != 0:
        raise TuneError('the driver refused "ethtool %s" (rc=%d): %s. Drivers refuse channel changes while '
                        'an XDP program is attached, when counts conflict (rx/tx vs combined), or when a '
                        'user-set RSS table uses a queue that would disappear (reset it with '
                        'erb.booster.nic_rss default=true first)'
                        % (' '.join(args), rc, (err or out).strip()))


def restore(module, sf, name, chans, result):
    data = sf.load()
    if data is None:
        result.update(changed=False, restored=[], channels=chans['current'],
                      msg='no saved state at %s: nothing to restore' % sf.path)
        return result
    saved = data['before']
    cur = chans['current']
    todo = dict((k, v) for k, v in saved.items() if cur.get(k) != v)
    result['diff'] = {'before': dict((k, cur.get(k)) for k in todo), 'after': todo}
    result['restored'] = sorted(todo)
    result['changed'] = bool(todo)
    if module.check_mode:
        result['channels'] = dict(cur, **todo)
        return result
    if todo:
        set_channels(module, name, todo)
        now = read_channels(module, name)['current']
        bad = dict((k, now[k]) for k in todo if now[k] != todo[k])
        if bad:
            raise TuneError('restoring %s: wrote %s but the driver reports %s; the saved values stay in %s'
                            % (name, todo, bad, sf.path))
    sf.remove()
    result['channels'] = read_channels(module, name)['current']
    return result


def present(module, sf, name, chans, driver, result):
    p = module.params
    if all(p[k] is None for k in CHANNEL_KEYS):
        raise TuneError('nothing to set: give at least one of combined, rx, tx, other')
    want = wanted_counts(p, chans, name, driver)
    cur = chans['current']
    before = dict((k, cur[k]) for k in want if cur[k] != want[k])
    after = dict((k, want[k]) for k in before)
    result['diff'] = {'before': before, 'after': after}
    result['changed'] = bool(after)
    if module.check_mode or not after:
        result['channels'] = dict(cur, **after)
        return result
    old = sf.load()
    data = json.loads(json.dumps(old)) if old is not None else sf.new()
    merge_before(data, before)
    sf.save(data)     # write-ahead: the before-values are on disk before anything changes
    try:
        set_channels(module, name, after)
    except TuneError as e:
        now = read_channels(module, name)['current']
        moved = dict((k, now[k]) for k in CHANNEL_KEYS if now[k] != cur[k])
        if not moved:
            sf.put_back(old)
            raise TuneError('%s. Nothing was changed.' % e)
        raise TuneError('%s. The driver changed %s anyway (before: %s); the previous values are kept in '
                        '%s, run with state=restored to put them back'
                        % (e, moved, dict((k, cur[k]) for k in moved), sf.path))
    now = read_channels(module, name)['current']
    bad = dict((k, now[k]) for k in after if now[k] != after[k])
    if bad:
        try:
            set_channels(module, name, before)
            undo = 'the previous counts were put back'
        except TuneError as e:
            undo = 'putting the previous counts back failed too (%s); run with state=restored' % e
        raise TuneError('%s (driver %s) accepted "ethtool -L" with %s but now reports %s; %s'
                        % (name, driver, after, bad, undo))
    result['channels'] = now
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    name = p['name']
    sf = StateFile(p['state_dir'], 'nic_channels', name)
    result = dict(changed=False, state_file=sf.path)
    try:
        if p['state'] == 'restored' and sf.load() is None:
            # nothing saved: do not even ask the driver (it may not support the setting at all)
            module.exit_json(changed=False, state_file=sf.path, restored=[],
                             msg='no saved state at %s: nothing to restore' % sf.path)
        netdev_dir(p['sysfs_root'], name)
        driver = driver_of(module, name)
        result['driver'] = driver
        chans = read_channels(module, name)
        result['maximum'] = chans['max']
        if p['state'] == 'restored':
            result = restore(module, sf, name, chans, result)
        else:
            result = present(module, sf, name, chans, driver, result)
    except TuneError as e:
        module.fail_json(msg=str(e), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
