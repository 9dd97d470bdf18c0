#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: bpf
short_description: Load and attach the ERB XDP and TC egress programs to an interface
description:
  - Loads C(erb.bpf.o) with libbpf (C(libbpf.so.1) through ctypes), writes its load-time configuration,
    fills the Redis command table and attaches C(erb_xdp) (XDP) and C(erb_tc_egress) (TC egress) to an
    interface of the current network namespace with pinned C(bpf_link)s under
    C(<bpffs_root>/erb/<netns>/<interface>/).
  - State maps pinned there are reused across upgrades when their definition is unchanged, so live
    flows keep their sequence corrections. A flow-state map that would change (for example O(max_flows))
    is refused with a message saying to detach first.
  - A changed object (by SHA-256) or configuration replaces the programs atomically with C(BPF_LINK_UPDATE)
    on the pinned links; the links, and so the attachment, are never removed on the way. The previous
    object and configuration are recorded in the C(meta) map for rollback.
  - O(state=detached) first stops answering (drain), waits up to O(drain_timeout) seconds for flows with
    sequence corrections to end and for acknowledged SETs to be applied, then removes exactly ERB's links
    and pins. Links and pins it does not own are never touched.
  - If acknowledged SETs are still not applied to Redis when O(drain_timeout) passes, O(state=detached)
    fails and leaves ERB attached with answering off (the ring or C(erb_io) still holds them and the I/O
    path keeps applying them), unless O(discard_pending_writes) is set. Flows still carrying corrections
    do not stop it (they are warned about).
version_added: "0.1.0"
author:
  - ERB developers (!UNKNOWN)
options:
  interface:
    description: Network interface in the current network namespace.
    type: str
    required: true
  state:
    description: Whether ERB is attached to O(interface).
    type: str
    choices: [attached, detached]
    default: attached
  object:
    description: Path of the BPF object on the managed host.
    type: path
    default: /usr/lib/erb/erb.bpf.o
  redis_port:
    description: TCP port of Redis on this host.
    type: int
    default: 6379
  cache_entries:
    description: Number of cache slots (C(max_entries) of C(erb_cache)); at least V(2).
    type: int
    default: 65536
  max_key_len:
    description: Longest key cached, at most C(ERB_KEY_MAX) (V(256)).
    type: int
    default: 128
  max_value_len:
    description: Longest value cached, at most C(ERB_VAL_MAX) (V(1400)).
    type: int
    default: 1024
  max_flows:
    description: Flows tracked (C(max_entries) of C(erb_flows) and C(erb_aux)). Changing it needs a detach.
    type: int
    default: 16384
  require_auth:
    description: Redis requires AUTH (C(requirepass) or ACL users); flows start unauthenticated.
    type: bool
    default: false
  answer:
    description: Answer cache hits in XDP. V(false) loads ERB in pass-through (drain) mode.
    type: bool
    default: true
  fill:
    description: Fill the cache write-through from Redis's C(+OK) to SET.
    type: bool
    default: true
  set_fast_path:
    description:
      - Answer plain C(SET key value) in XDP, write-behind through the I/O path (O(io_path)).
      - Needs the I/O path running (the erb-agent draining the C(erb_events) ring, or the erb_io kernel
        module); without it writes pile up and commands on those keys are held until they are applied.
    type: bool
    default: false
  io_path:
    description:
      - Where the fast path's acknowledged SETs go. V(ring) is the C(erb_events) ring buffer drained
        by the erb-agent; V(kmod) is the erb_io kernel module's kfifo through its kfuncs (load it with
        M(erb.booster.kmod) first); V(auto) picks V(kmod) when erb_io is loaded, else V(ring).
      - Resolved at attach (the result's RV(io_path)); switching paths waits until the old path has
        applied every acknowledged SET (at most 10 seconds) and fails without changing anything otherwise.
      - The erb_io module tracks the write sequence of one deployment, so use V(kmod) on one interface per host.
    type: str
    choices: [auto, ring, kmod]
    default: auto
  tc_attach:
    description:
      - How the TC egress program is attached. V(tcx) is a pinned tcx link (Linux 6.6 or later);
        V(clsact) is a direct-action C(cls_bpf) filter on a C(clsact) qdisc at pref 235 handle C(0xeb), for
        older kernels (the C(clsact) qdisc is added when missing and removed at detach when ERB added it
        and no other filter is left on it); V(auto) uses V(tcx) and falls back to V(clsact) where the
        kernel has no tcx.
      - Either way an upgrade swaps the program atomically. Moving a deployment between V(tcx) and
        V(clsact) is refused; detach first.
    type: str
    choices: [auto, tcx, clsact]
    default: auto
  ring_bytes:
    description: Size of the C(erb_events) ring buffer of acknowledged SETs (a power of two, at least V(4096)).
    type: int
    default: 4194304
  xdp_mode:
    description:
      - V(native) runs in the driver; V(generic) (skb mode) works on any interface, slower.
      - The mode cannot be changed atomically; change it with a detach first.
    type: str
    choices: [native, generic]
    default: native
  bpffs_root:
    description: Mount point of the BPF filesystem used for the pins.
    type: path
    default: /sys/fs/bpf
  drain_timeout:
    description: Seconds O(state=detached) waits for flows with sequence corrections to end and for acknowledged SETs to reach Redis before detaching.
    type: int
    default: 30
  discard_pending_writes:
    description:
      - With O(state=detached), detach even when acknowledged SETs are still not applied to Redis after
        O(drain_timeout); they are lost (a warning says how many). Only for a host whose Redis is gone
        for good.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reports what would change; loads, attaches and pins nothing.
  diff_mode:
    support: full
    description: Shows the object and configuration before and after.
  platform:
    support: full
    platforms: posix
    description: Linux 6.6 or later for tcx links, any Linux with BPF links for O(tc_attach=clsact).
notes:
  - Needs root (C(CAP_BPF), C(CAP_NET_ADMIN), C(CAP_SYS_ADMIN) for the BPF filesystem).
  - C(ip netns exec) remounts C(/sys) and hides C(/sys/fs/bpf); inside such namespaces use a bind mount of the
    BPF filesystem elsewhere as O(bpffs_root).
seealso:
  - module: erb.booster.bpf_info
  - module: erb.booster.kmod
'''

EXAMPLES = r'''
- name: Attach ERB to the Redis NIC
  erb.booster.bpf:
    interface: eth0
    object: /usr/lib/erb/erb.bpf.o
    cache_entries: 262144

- name: Upgrade in place (atomic program replacement, state kept)
  erb.booster.bpf:
    interface: eth0
    object: /usr/lib/erb/erb-1.1.bpf.o

- name: Detach, draining live corrected flows for up to a minute
  erb.booster.bpf:
    interface: eth0
    state: detached
    drain_timeout: 60
'''

RETURN = r'''
tc_attach:
  description: How the TC egress program is attached (V(tcx) or V(clsact)); V(null) when it is not.
  returned: when O(state=attached)
  type: str
  sample: tcx
io_path:
  description: The I/O path of fast SETs the programs were loaded for (O(io_path=auto) resolved).
  returned: when O(state=attached)
  type: str
  sample: ring
pin_dir:
  description: Directory of ERB's pins for the interface.
  returned: always
  type: str
  sample: /sys/fs/bpf/erb/host/eth0
netns:
  description: Name of the network namespace (its C(/run/netns) name, V(host), or C(netns-<inode>)).
  returned: always
  type: str
  sample: host
layout_version:
  description: Version of the shared BPF layout (C(ERB_LAYOUT_VERSION) of C(erb.h)) this module was built for.
  returned: success
  type: int
  sample: 1
prog_ids:
  description: Program ids behind the pinned links (V(null) when absent).
  returned: when O(state=attached)
  type: dict
  sample: {"xdp": 812, "tc": 813}
link_ids:
  description: Ids of the pinned links; unchanged by an upgrade. RV(link_ids.tc) is V(null) with
    O(tc_attach=clsact) (a C(cls_bpf) filter is not a link; RV(prog_ids) still names its program).
  returned: when O(state=attached)
  type: dict
  sample: {"xdp": 41, "tc": 42}
  contains:
    xdp:
      description: Id of the XDP link.
      type: int
    tc:
      description: Id of the tcx link.
      type: int
reasons:
  description: Why the module acted (empty when nothing changed).
  returned: when O(state=attached)
  type: list
  elements: str
  sample: ["not attached"]
links:
  description: What happened to each link, V(created) or V(updated).
  returned: when O(state=attached) and something changed (not in check mode)
  type: dict
  sample: {"xdp": "created", "tc": "created"}
object_loaded:
  description: >-
    The BPF object that was loaded: O(object), or the build for older kernels beside it
    (C(erb-compat.bpf.o)) when the kernel's verifier refused O(object) for its size or stack.
  returned: when O(state=attached) and something changed (not in check mode)
  type: str
  sample: /usr/lib/erb/erb.bpf.o
object_refused:
  description: >-
    Why the kernel's verifier refused O(object) when the build for older kernels was loaded in its
    place (its stack or size message); null when O(object) itself was loaded. A warning says it too.
  returned: when O(state=attached) and something changed (not in check mode)
  type: str
  sample: "combined stack size of 5 calls is 544. Too large"
maps_reused:
  description: Pinned state maps reused by the new programs.
  returned: when O(state=attached) and something changed (not in check mode)
  type: list
  elements: str
  sample: ["erb_flows", "erb_aux"]
maps_created:
  description: State maps created (and pinned) by this run.
  returned: when O(state=attached) and something changed (not in check mode)
  type: list
  elements: str
  sample: ["erb_cache"]
drain:
  description: Outcome of the drain before the detach.
  returned: when O(state=detached) and something was removed, and when the detach failed for acknowledged SETs not yet applied
  type: dict
  sample: {"drained": true, "flows_remaining": 0, "writes_pending": 0, "waited": 0.0,
           "recovery": {"retransmit_answer": 2, "answer_resent": 1, "ack_held": 3, "flow_given_up": 0}}
  contains:
    drained:
      description: No flow carried sequence corrections and no acknowledged SET was pending; V(false) when
        O(drain_timeout) passed first.
      type: bool
    flows_remaining:
      description: Flows still carrying sequence corrections.
      type: int
    writes_pending:
      description: Acknowledged SETs not yet applied to Redis by the I/O path.
      type: int
      returned: when the programs' state maps were still pinned
    waited:
      description: Seconds waited.
      type: float
    recovery:
      description: What TCP faults made ERB do over the deployment's life, from C(erb_stats) (answers sent
        again, Redis ACKs held below a lost answer, flows given up after a gap, ...); empty without a pinned
        C(erb_stats).
      type: dict
      returned: when the programs' state maps were still pinned
removed:
  description: Pins (and, with O(tc_attach=clsact), C(tc_filter) and C(clsact_qdisc)) removed.
  returned: when O(state=detached)
  type: list
  elements: str
  sample: ["link_xdp", "link_tc", "meta", "map_erb_cache"]
left_behind:
  description: Files in the pin directory that ERB does not own, left in place (the directory is then kept).
  returned: when O(state=detached) and such files exist
  type: list
  elements: str
diff:
  description: Object and configuration before and after.
  returned: in diff mode
  type: dict
errno:
  description: The C(errno) of the failed system call or libbpf function.
  returned: on failure
  type: int
libbpf_log:
  description: The verifier's and libbpf's log when loading failed.
  returned: on failure
  type: list
  elements: str
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.erb.booster.plugins.module_utils import erb_loader
from ansible_collections.erb.booster.plugins.module_utils import erb_layout
from ansible_collections.erb.booster.plugins.module_utils import libbpf

ARGUMENT_SPEC = dict(
    interface=dict(type='str', required=True),
    state=dict(type='str', choices=['attached', 'detached'], default='attached'),
    object=dict(type='path', default='/usr/lib/erb/erb.bpf.o'),
    redis_port=dict(type='int', default=6379),
    cache_entries=dict(type='int', default=65536),
    max_key_len=dict(type='int', default=128, no_log=False),
    max_value_len=dict(type='int', default=1024),
    max_flows=dict(type='int', default=16384),
    require_auth=dict(type='bool', default=False),
    answer=dict(type='bool', default=True),
    fill=dict(type='bool', default=True),
    set_fast_path=dict(type='bool', default=False),
    ring_bytes=dict(type='int', default=4194304),
    io_path=dict(type='str', choices=list(erb_loader.IO_PATHS), default='auto'),
    tc_attach=dict(type='str', choices=list(erb_loader.TC_ATTACH), default='auto'),
    xdp_mode=dict(type='str', choices=['native', 'generic'], default='native'),
    bpffs_root=dict(type='path', default='/sys/fs/bpf'),
    drain_timeout=dict(type='int', default=30),
    discard_pending_writes=dict(type='bool', default=False),
)


def desired_state(params):
    cfg = dict((k, params[k]) for k in erb_loader.CONFIG_KEYS)
    cfg['io_path'] = erb_loader.resolve_io_path(cfg['io_path'])
    erb_loader.validate_config(cfg)
    path = os.path.realpath(params['object'])
    return {'object': {'path': path, 'sha256': erb_loader.sha256_file(path)}, 'config': cfg}


def run(module):
    p = module.params
    target = erb_loader.Target(p['interface'], p['bpffs_root'])
    if p['state'] == 'detached':
        if p['drain_timeout'] < 0:
            raise erb_loader.LoaderError('drain_timeout must be >= 0')
        return erb_loader.detach(target, p['drain_timeout'], module.check_mode,
                                 discard_pending=p['discard_pending_writes'])
    desired = desired_state(p)
    erb_loader.ifindex_of(p['interface'])
    result = erb_loader.attach(target, desired, module.check_mode)
    result['io_path'] = desired['config']['io_path']
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = run(module)
    except erb_loader.PendingWrites as e:
        module.fail_json(msg=str(e), drain=e.drain)
    except erb_loader.LoaderError as e:
        module.fail_json(msg=str(e), errno=e.errno, libbpf_log=e.log)
    except libbpf.BpfError as e:
        module.fail_json(msg=str(e), errno=e.errno, libbpf_log=e.log)
    except OSError as e:
        module.fail_json(msg='%s: %s' % (getattr(e, 'filename', '') or 'system call', e.strerror), errno=e.errno)
    if not module._diff:
        result.pop('diff', None)
    result['layout_version'] = erb_layout.ERB_LAYOUT_VERSION
    if result.get('drain') and not result['drain']['drained']:
        if result['drain']['flows_remaining']:
            module.warn('drain_timeout passed with %d flow(s) still carrying sequence corrections: those '
                        'connections will break' % result['drain']['flows_remaining'])
        if result['drain'].get('writes_pending'):
            module.warn('discard_pending_writes: detached with %d acknowledged SET(s) not applied to Redis; '
                        'they are lost once the I/O agent stops (it still holds the ring)'
                        % result['drain']['writes_pending'])
    if result.get('object_refused'):
        module.warn('the kernel refused %s (%s): loaded %s, the build for older kernels, instead'
                    % (module.params['object'], result['object_refused'], result['object_loaded']))
    if result.get('left_behind'):
        module.warn('%s holds files ERB does not own, left in place: %s'
                    % (result['pin_dir'], ', '.join(result['left_behind'])))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
