#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: nic_rss
short_description: Spread the RSS indirection table of a NIC over N queues or by weights
version_added: 0.1.0
description:
  - Reads the RSS indirection table with C(ethtool -x) and, when it differs from the wanted one, sets it
    with C(ethtool -X <if> equal N), C(weight W0 W1 ...) or C(default).
  - The wanted table is computed the way ethtool fills it, so a second run compares tables and changes
    nothing.
  - Before the first change the current table is saved in a state file under O(state_dir), together with
    the C(ethtool -X) arguments that reproduce it; O(state=restored) runs them and removes the file.
    A table that no C(ethtool -X) spread can reproduce is refused unless O(allow_unrestorable=true).
options:
  name:
    description: Interface name, in the network namespace the module runs in.
    type: str
    required: true
  equal:
    description: Spread the table evenly over the first N RX queues (C(ethtool -X equal N)).
    type: int
  weights:
    description: Relative weight of each RX queue, queue 0 first (C(ethtool -X weight ...)).
      Queues not listed get no traffic.
    type: list
    elements: int
  default:
    description: V(true) resets the table to the driver default (even spread over all RX queues).
    type: bool
  allow_unrestorable:
    description: Change the table even when its current content cannot be reproduced by C(ethtool -X)
      later. O(state=restored) then resets it to the driver default and warns.
    type: bool
    default: false
  state:
    description:
      - V(present) sets the table.
      - V(restored) puts back the table saved by earlier runs and removes the state file.
    type: str
    choices: [present, restored]
    default: present
requirements:
  - ethtool
notes:
  - Virtual devices such as veth have no indirection table; the module fails and says so.
  - Set channels first (M(erb.booster.nic_channels)); a user-set table pins the queue count on many
    drivers (the kernel refuses to remove a queue the table points to).
attributes:
  check_mode:
    support: full
    description: Computes the wanted table and reports whether it differs; writes nothing.
  diff_mode:
    support: full
    description: Returns the table before and after.
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
- name: Spread RSS over the 8 queues pinned to the Redis cores
  erb.booster.nic_rss:
    name: ens1f0np0
    equal: 8

- name: Send twice as much to queue 0 as to queues 1 and 2
  erb.booster.nic_rss:
    name: ens1f0np0
    weights: [2, 1, 1]

- name: Put the table back
  erb.booster.nic_rss:
    name: ens1f0np0
    state: restored
'''

RETURN = r'''
table:
  description: Indirection table after the run (queue index of each entry).
  returned: success
  type: list
  elements: int
  sample: [0, 1, 2, 3, 0, 1, 2, 3]
rx_rings:
  description: RX ring count reported by C(ethtool -x).
  returned: success
  type: int
  sample: 4
command:
  description: The C(ethtool -X) arguments used (or that would be used in check mode).
  returned: changed
  type: list
  elements: str
  sample: ["-X", "eth0", "equal", "4"]
state_file:
  description: Path of the state file.
  returned: always
  type: str
restored:
  description: What was written back from the state file (V(table)), empty when nothing was needed.
  returned: when O(state=restored)
  type: list
  elements: str
'''

import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.erb.booster.plugins.module_utils.erb_tune import (
    COMMON_STATE_SPEC, SYSFS_SPEC, StateFile, TuneError, ethtool, merge_before, netdev_dir,
    parse_rxfh, rss_fill_equal, rss_fill_weights, rss_restore_args)

ARGUMENT_SPEC = dict(
    name=dict(type='str', required=True),
    equal=dict(type='int'),
    weights=dict(type='list', elements='int'),
    default=dict(type='bool'),
    allow_unrestorable=dict(type='bool', default=False),
)
ARGUMENT_SPEC.update(COMMON_STATE_SPEC)
ARGUMENT_SPEC.update(SYSFS_SPEC)
MUTUALLY_EXCLUSIVE = [['equal', 'weights', 'default']]


def read_rss(module, name):
    rc, out, err = ethtool(module, ['-x', name], check=False)
    info = parse_rxfh(out) if rc == 0 else {'rings': None, 'table': []}
    if rc != 0 or not info['table']:
        raise TuneError('%s exposes no RSS indirection table (ethtool -x %s: %s). The driver does not '
                        'support RSS configuration (virtual devices like veth never do); leave nic_rss off '
                        'for this interface' % (name, name, (err or out).strip().replace('\n', ' ')))
    return info


def wanted(params, info):
    size = len(info['table'])
    rings = info['rings']
    if params['equal'] is not None:
        n = params['equal']
        if n < 1 or (rings and n > rings):
            raise TuneError('equal=%d: the interface has %s RX rings; use 1..%s (set more channels with '
                            'erb.booster.nic_channels first)' % (n, rings, rings))
        return rss_fill_equal(size, n), ['equal', str(n)]
    if params['weights'] is not None:
        w = params['weights']
        if any(x < 0 for x in w):
            raise TuneError('weights must not be negative')
        if rings and len(w) > rings:
            raise TuneError('%d weights given but the interface has %d RX rings' % (len(w), rings))
        return rss_fill_weights(size, w), ['weight'] + [str(x) for x in w]
    if params['default']:
        return rss_fill_equal(size, rings), ['default']
    raise TuneError('nothing to set: give equal, weights or default')


def set_rss(module, name, args):
    rc, out, err = ethtool(module, ['-X', name] + args, check=False)
    if rc != 0:
        raise TuneError('the driver refused "ethtool -X %s %s" (rc=%d): %s'
                        % (name, ' '.join(args), rc, (err or out).strip()))


def present(module, sf, name, info, result):
    p = module.params
    table, args = wanted(p, info)
    cur = info['table']
    result['diff'] = {'before': {'table': cur}, 'after': {'table': table}}
    result['rx_rings'] = info['rings']
    if table == cur:
        result.update(changed=False, table=cur)
        return result
    result['command'] = ['-X', name] + args
    restore_args = rss_restore_args(cur, info['rings'])
    if restore_args is None and not p['allow_unrestorable']:
        raise TuneError('the current RSS table of %s cannot be reproduced with ethtool -X (it is not an '
                        'equal or weighted spread), so state=restored could not put it back. Set '
                        'allow_unrestorable: true to change it anyway (restore then resets it to the '
                        'driver default). Current table: %s' % (name, cur))
    result['changed'] = True
    if module.check_mode:
        result['table'] = table
        return result
    old = sf.load()
    data = json.loads(json.dumps(old)) if old is not None else sf.new()
    merge_before(data, {'table': {'table': cur, 'rings': info['rings'],
                                  'args': restore_args or ['default'], 'exact': restore_args is not None}})
    sf.save(data)
    try:
        set_rss(module, name, args)
    except TuneError as e:
        now = read_rss(module, name)['table']
        if now == cur:
            sf.put_back(old)
            raise TuneError('%s. Nothing was changed.' % e)
        raise TuneError('%s. The table changed anyway; the previous one is saved in %s, run with '
                        'state=restored' % (e, sf.path))
    now = read_rss(module, name)['table']
    if now != table:
        try:
            set_rss(module, name, restore_args or ['default'])
            undo = 'the previous table was put back'
        except TuneError as e:
            undo = 'putting the previous table back failed (%s); run with state=restored' % e
        raise TuneError('ethtool -X %s %s succeeded but the driver now reports a different table '
                        '(%s); %s' % (name, ' '.join(args), now, undo))
    result['table'] = now
    return result


def restore(module, sf, name, info, result):
    data = sf.load()
    result['rx_rings'] = info['rings']
    if data is None or 'table' not in data['before']:
        result.update(changed=False, table=info['table'], restored=[],
                      msg='no saved state at %s: nothing to restore' % sf.path)
        return result
    saved = data['before']['table']
    args = saved['args']
    cur = info['table']
    size = len(cur)
    if args == ['default']:
        # the driver default follows the current ring count
        target = rss_fill_equal(size, info['rings']) if saved.get('exact') else None
    else:
        target = saved['table'] if size == len(saved['table']) else None
    result['diff'] = {'before': {'table': cur}, 'after': {'table': target or saved['table']}}
    need = target is None or cur != target
    result['changed'] = need
    result['restored'] = ['table'] if need else []
    result['command'] = ['-X', name] + args
    if module.check_mode:
        result['table'] = target or cur
        return result
    if need:
        set_rss(module, name, args)
    now = read_rss(module, name)['table']
    if target is not None and now != target:
        raise TuneError('restoring the RSS table of %s: ethtool -X %s succeeded but the table is %s, '
                        'expected %s; the saved table stays in %s' % (name, ' '.join(args), now, target, sf.path))
    if not saved.get('exact', True):
        module.warn('the RSS table of %s before ERB changed it could not be reproduced with ethtool -X; '
                    'it was reset to the driver default' % name)
    sf.remove()
    result['table'] = now
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, mutually_exclusive=MUTUALLY_EXCLUSIVE,
                           supports_check_mode=True)
    p = module.params
    name = p['name']
    sf = StateFile(p['state_dir'], 'nic_rss', name)
    result = dict(changed=False, state_file=sf.path)
    try:
        if p['state'] == 'restored' and sf.load() is None:
            # nothing saved: do not even ask the driver (it may not support the setting at all)
            module.exit_json(changed=False, state_file=sf.path, restored=[],
                             msg='no saved state at %s: nothing to restore' % sf.path)
        netdev_dir(p['sysfs_root'], name)
        info = read_rss(module, name)
        if p['state'] == 'restored':
            result = restore(module, sf, name, info, result)
        else:
            result = present(module, sf, name, info, result)
    except TuneError as e:
        module.fail_json(msg=str(e), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
