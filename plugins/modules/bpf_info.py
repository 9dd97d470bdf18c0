#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: bpf_info
short_description: Report ERB's programs, links, counters and cache on interfaces
description:
  - Reads the pins under C(<bpffs_root>/erb/<netns>/) of the current network namespace, that is the pinned links
    and their programs, the C(meta) JSON (object, configuration, previous object), the per-CPU counters of
    C(erb_stats) summed by name, the cache fill (valid entries of the current generation, read through a
    read-only mmap of C(erb_cache)), the flows tracked and the drain state.
  - Read-only; changes nothing.
  - C(erb.booster.info) is a redirect to this module.
version_added: "0.1.0"
author:
  - ERB developers (!UNKNOWN)
options:
  interface:
    description: Report only this interface; default all interfaces with ERB pins in this namespace.
    type: str
  bpffs_root:
    description: Mount point of the BPF filesystem holding the pins.
    type: path
    default: /sys/fs/bpf
  agent_stats:
    description:
      - Stats file of the I/O agent (its C(--stats-file)). With O(interface), reported as
        RV(interfaces.agent) of that interface, with C(alive) telling whether its pid runs and C(age_s) how
        old the file is.
    type: path
attributes:
  check_mode:
    support: full
    description: Read-only, runs the same in check mode.
  diff_mode:
    support: none
    description: Reports state; there is nothing to diff.
  platform:
    support: full
    platforms: posix
    description: Linux with BPF links.
notes:
  - Needs root (C(CAP_BPF), C(CAP_SYS_ADMIN) to open pinned objects).
seealso:
  - module: erb.booster.bpf
'''

EXAMPLES = r'''
- name: Read ERB's counters on eth0
  erb.booster.bpf_info:
    interface: eth0
  register: erb

- name: Show the hit ratio
  ansible.builtin.debug:
    msg: "{{ erb.interfaces.eth0.counters.hit }} hits, {{ erb.interfaces.eth0.counters.miss }} misses"
'''

RETURN = r'''
netns:
  description: Name of the network namespace inspected (its C(/run/netns) name, V(host), or C(netns-<inode>)).
  returned: always
  type: str
  sample: host
layout_version:
  description:
    - Version of the shared BPF layout (C(ERB_LAYOUT_VERSION) of C(erb.h)) this collection writes. Pinned
      state of another version (C(meta.layout_version), see C(other_layout)) cannot be taken over by an
      attach; the role then detaches it first.
  returned: always
  type: int
  sample: 7
interfaces:
  description: By interface name, what ERB has there; each value has the keys listed below.
  returned: always
  type: dict
  contains:
    ifname:
      description: The interface name.
      type: str
      returned: when the interface has a pin directory
    netns:
      description: The network namespace name.
      type: str
      returned: when the interface has a pin directory
    attached:
      description: A pinned ERB link exists.
      type: bool
      returned: always
    pin_dir:
      description: Pin directory.
      type: str
      returned: always
    meta:
      description: The meta JSON written by M(erb.booster.bpf) (object, sha256, config, previous).
      type: dict
      returned: when the interface has a pin directory
    other_layout:
      description: The pinned state was written by another layout version than this collection's
        (C(layout_version)); M(erb.booster.bpf) refuses to attach over it until it is detached.
      type: bool
      returned: when the interface has a pin directory
    links:
      description: Per link (V(xdp), V(tc)) its id, program id, program name and ifindex, or V(null).
      type: dict
      returned: when the interface has a pin directory
    maps:
      description: Pinned maps with their ids and C(max_entries).
      type: dict
      returned: when the interface has a pin directory
    xdp:
      description: XDP state of the interface as the kernel reports it (C(prog_id), C(mode)).
      type: dict
      returned: when the interface has a pin directory
    drain:
      description: Answering is stopped (C(ERB_CTL_DRAIN)).
      type: bool
      returned: when the interface has a pin directory
    global:
      description: The programs' global state (C(cache_gen), C(overflow), C(ctl), C(write_seq),
        C(applied_seq)), or V(null) without a pinned C(erb_global).
      type: dict
      returned: when the interface has a pin directory
    ordered:
      description: erb_redis holds its lease (C(global.ordered_until_ns)) - Redis applies every
        acknowledged SET before it runs a command it reads after it, so no segment is held for the
        I/O path and a SET's record does not wake Redis.
      type: bool
      returned: when the interface has a pin directory
    writes_pending:
      description: SETs answered in XDP and not yet applied to Redis by the I/O path in use (under
        C(erb_io), its own applied sequence; C(global.applied_seq) is a mirror the programs update as
        packets arrive). A detach waits for V(0).
      type: int
      returned: when the interface has a pin directory
    counters:
      description: C(erb_stats) summed over CPUs, by name (for example C(hit), C(miss), C(pass_outstanding)).
      type: dict
      returned: when the interface has a pin directory
    cache:
      description: C(valid) entries of the current C(generation) out of C(entries).
      type: dict
      returned: when the interface has a pin directory
    flows:
      description: Flows C(tracked), flows with corrections (C(answered)), C(max).
      type: dict
      returned: when the interface has a pin directory
    error:
      description: Why the pin directory could not be described (for example a pin that is not ERB's).
      type: str
      returned: when the pin directory could not be described
    agent:
      description: The I/O agent's stats file (O(agent_stats)) with C(alive) and C(age_s) added, or C(alive)
        V(false) and C(error).
      type: dict
      returned: with O(agent_stats) and O(interface)
'''

import json
import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.erb.booster.plugins.module_utils import erb_layout
from ansible_collections.erb.booster.plugins.module_utils import erb_loader
from ansible_collections.erb.booster.plugins.module_utils import libbpf

ARGUMENT_SPEC = dict(
    interface=dict(type='str'),
    bpffs_root=dict(type='path', default='/sys/fs/bpf'),
    agent_stats=dict(type='path'),
)


def agent_stats(path):
    """The agent's stats file (JSON, rewritten once a second), or why not."""
    try:
        with open(path) as f:
            stats = json.load(f)
        age = time.time() - os.stat(path).st_mtime
    except (OSError, ValueError) as e:
        return {'alive': False, 'error': '%s: %s' % (path, e)}
    pid = stats.get('pid', 0)
    alive = bool(pid) and os.path.exists('/proc/%d' % pid)
    stats.update({'alive': alive, 'age_s': round(age, 1)})
    return stats


def run(params):
    root = params['bpffs_root']
    erb_loader.check_bpffs(root)
    netns = erb_loader.netns_name()
    names = [params['interface']] if params['interface'] else erb_loader.list_interfaces(root, netns)
    out = {}
    for name in names:
        target = erb_loader.Target(name, root)
        if not os.path.isdir(target.pin_dir):
            out[name] = {'attached': False, 'pin_dir': target.pin_dir}
            continue
        try:
            out[name] = erb_loader.describe(target)
        except erb_loader.LoaderError as e:  # e.g. a pin that is not ERB's: report, go on
            out[name] = {'attached': False, 'pin_dir': target.pin_dir, 'error': str(e)}
    if params['agent_stats'] and params['interface']:
        out[params['interface']]['agent'] = agent_stats(params['agent_stats'])
    return {'changed': False, 'netns': netns, 'interfaces': out, 'layout_version': erb_layout.ERB_LAYOUT_VERSION}


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = run(module.params)
    except erb_loader.LoaderError as e:
        module.fail_json(msg=str(e))
    except libbpf.BpfError as e:
        module.fail_json(msg=str(e), errno=e.errno)
    except OSError as e:
        module.fail_json(msg='%s: %s' % (getattr(e, 'filename', '') or 'system call', e.strerror), errno=e.errno)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
