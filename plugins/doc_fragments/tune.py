# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Options shared by the host tuning modules (cpu_governor, irq_affinity, nic_channels,
    nic_rss, xps_rps): plugins/module_utils/erb_tune.py's COMMON_STATE_SPEC, SYSFS_SPEC,
    PROCFS_SPEC and PERSIST_SPEC."""

    # state_dir and sysfs_root (every tuning module)
    DOCUMENTATION = r'''
options:
  state_dir:
    description:
      - Directory of the state file C(<state_dir>/tune/<module>-<name>.json) that holds the values from
        before the module's first change, so that O(state=restored) can put them back.
      - The file is removed when nothing is left to restore.
    type: path
    default: /var/lib/erb
  sysfs_root:
    description: Where sysfs is mounted.
    type: path
    default: /sys
'''

    # procfs_root
    PROCFS = r'''
options:
  procfs_root:
    description: Where procfs is mounted (C(interrupts), C(irq/), the processes).
    type: path
    default: /proc
'''

    # settings re-applied by a udev rule (and optionally an ifup hook) through a helper script
    PERSIST = r'''
options:
  persist:
    description:
      - Install (V(true)) or remove (V(false)) the udev rule, the helper script and the config file that
        re-apply this module's settings when the interface (or its queues) appears again.
      - O(state=restored) removes them too.
    type: bool
    default: false
  udev_rules_dir:
    description: Directory of the udev rule C(99-erb-<module>-<name>.rules), the module's name written with
      dashes (for example C(99-erb-xps-rps-eth0.rules)).
    type: path
    default: /etc/udev/rules.d
  helper_path:
    description:
      - Path of the helper script the rule and the hook run, shared by M(erb.booster.irq_affinity) and
        M(erb.booster.xps_rps).
      - It is removed when no config file that calls it is left in O(persist_dir).
    type: path
    default: /usr/local/sbin/erb-tune-apply
  persist_dir:
    description: Directory of the config file C(<module>-<name>.conf) that the helper reads.
    type: path
    default: /etc/erb/tune
  ifup_hook_dir:
    description:
      - Also install a hook C(erb-<module>-<name>) (the module's name written with dashes) in this directory, run with C(IFACE) set, for example
        C(/etc/network/if-up.d) (ifupdown) or C(/etc/networkd-dispatcher/routable.d). Useful for drivers
        that request their IRQs or re-create their queues when the link goes up (ixgbe, i40e, ice).
      - Not installed when unset.
    type: path
'''
