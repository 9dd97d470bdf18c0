#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: kmod
short_description: Build, install, load and unload ERB's I/O kernel module erb_io
version_added: 0.1.0
description:
  - Builds C(erb_io.ko) from sources on the target against the kernel headers of O(kernel_release), with the
    C(.BTF) section its kfuncs need, installs it, runs C(depmod) and (for the running kernel) loads it with
    C(modprobe) and O(params). O(state=absent) unloads and removes it.
  - "Preflight, in this order, also in check mode: loadable module support (C(/proc/modules),
    C(/proc/sys/kernel/modules_disabled)); signature policy (lockdown C(integrity)/C(confidentiality),
    Secure Boot, C(sig_enforce)) unless O(sign_key)/O(sign_cert) are given; kernel headers
    (C(/lib/modules/<release>/build)); then what C(.BTF) needs: C(CONFIG_DEBUG_INFO_BTF_MODULES), a base BTF
    (O(vmlinux_btf)), C(pahole), C(resolve_btfids), C(make) and the compiler the kernel was built with.
    Each refusal says what to do."
  - Package-owned directories are never modified. The build runs in a private kernel build dir
    C(<work_dir>/<release>/kbuild), a symlink farm of C(/lib/modules/<release>/build) with a real C(vmlinux)
    (a copy of O(vmlinux_btf)) and a real C(tools/bpf/resolve_btfids/resolve_btfids). Kbuild then runs
    C(pahole --btf_base vmlinux) and C(resolve_btfids -b vmlinux) on the module. A raw BTF blob (such as
    C(/sys/kernel/btf/vmlinux)) works as that C(vmlinux).
  - After a build the module checks the C(.ko) (a C(.BTF) section, every kfunc BTF ID resolved, vermagic of
    O(kernel_release)) and fails with the tail of the build output otherwise.
  - "Idempotence: the source hash is a sha256 over the sorted names and contents of the source files in O(src)
    (C(Kbuild), C(Makefile), C(dkms.conf), C(*.c), C(*.h); build products there are ignored) and
    O(kernel_release). It is written in a stamp C(erb_io.ko.erb-hash) next to the installed module. Nothing is
    rebuilt while the stamp matches and the installed file is unchanged. A loaded erb_io is left alone when its
    C(srcversion) equals the installed build's and its parameters (C(/sys/module/erb_io/parameters/*)) equal
    O(params); parameters the module lets change at run time (C(redis_pid), C(drain_ms)) are written to sysfs
    without a reload; any other difference unloads and loads it."
  - Unloading refuses while erb_io is in use (a BPF program calling its kfuncs holds a reference); detach ERB's
    BPF programs first with M(erb.booster.bpf) O(erb.booster.bpf#module:state=detached). C(rmmod) waits while
    erb_io drains its queue (at most its C(drain_ms)).
  - O(params) are also written to C(/etc/modprobe.d/erb_io.conf) (C(options erb_io ...)), so any later
    C(modprobe erb_io), at boot too, uses them; the file is removed when O(params) is empty and by
    O(state=absent).
options:
  state:
    description:
      - V(present) builds (when needed), installs and, for the running kernel, loads erb_io.
      - V(absent) unloads erb_io (for the running kernel), removes what this module installed for
        O(kernel_release) (the C(.ko) and its stamp, DKMS builds, the sources it added under C(/usr/src)),
        C(/etc/modprobe.d/erb_io.conf) and the build trees under O(work_dir), then runs C(depmod). It needs no
        preflight, so it also runs (and reports V(changed=false)) on a kernel without module support.
    type: str
    choices: [present, absent]
    default: present
  src:
    description:
      - Directory on the target holding the module sources, C(erb_io.c), C(Kbuild), C(Makefile), C(dkms.conf)
        (the collection's C(files/kmod/)) and C(erb.h), C(erb_record.h) (C(files/bpf/)), all in one directory.
      - Required when O(state=present).
    type: path
  kernel_release:
    description:
      - Kernel release to build for. Default is the running kernel.
      - Another release may be built and installed (its headers must be installed, and O(vmlinux_btf) given
        unless its build dir has a C(vmlinux)); it is then not loaded, and the result's RV(load_skipped) says so.
    type: str
  params:
    description:
      - Module parameters (C(sink), C(kfifo_size), C(batch), C(redis_sock), C(redis_user), C(redis_pid),
        C(aof_suffix), C(drain_ms)); names must be declared by the sources, values are strings or integers
        (booleans become C(Y)/C(N)) without whitespace, quotes, backslashes or C(#).
      - Given to C(modprobe) and written to C(/etc/modprobe.d/erb_io.conf).
    type: dict
    default: {}
  redis_password_file:
    description:
      - File on the target holding the password erb_io authenticates to Redis with (C(AUTH), as
        C(params.redis_user) when that is set). Passed as the module parameter C(redis_password_file), which
        names the file and never holds the secret; erb_io reads the file at load and at every connect.
      - It must be a regular file owned by root with no access for group or others (mode C(0600)); this module
        fails otherwise, as erb_io would refuse to load.
    type: path
  method:
    description:
      - How to build and install.
      - V(kbuild) runs C(make -C <private kdir> M=<work_dir>/<release>/src-<hash> modules) and installs
        C(/lib/modules/<release>/updates/erb/erb_io.ko).
      - V(dkms) copies the sources to C(/usr/src/erb_io-<version>) and runs C(dkms add), C(dkms build) and
        C(dkms install) with C(--kernelsourcedir <private kdir>); dkms installs to C(DEST_MODULE_LOCATION) of
        C(dkms.conf) (C(/updates/dkms)). The DKMS version is C(PACKAGE_VERSION) of C(dkms.conf) plus
        C(+<12 hex digits of the source hash>), so every source state is a distinct DKMS version that
        C(dkms status) names; older erb_io versions built for the release are removed (C(dkms remove)) before
        the new one is installed. C(dkms.conf) sets C(AUTOINSTALL=no) on purpose, since a DKMS rebuild for a
        new kernel would lack C(vmlinux) and resolve_btfids and give a module without BTF; run this module
        for the new kernel instead.
      - V(auto) keeps the method of an up-to-date installation, else uses V(dkms) when the C(dkms) command
        exists and V(kbuild) otherwise.
    type: str
    choices: [auto, dkms, kbuild]
    default: auto
  vmlinux_btf:
    description:
      - The kernel's BTF, copied as C(vmlinux) into the private build dir, either raw BTF (C(/sys/kernel/btf/vmlinux)
        of a host running that kernel) or an ELF vmlinux with a C(.BTF) section.
      - Default is C(/sys/kernel/btf/vmlinux) for the running kernel; for another release, the C(vmlinux) of its
        build dir when there is one, else this option is required.
      - It must belong to exactly O(kernel_release), or the module's BTF will not match the kernel's and the
        kernel refuses it at load (this module then fails, C(/sys/kernel/btf/erb_io) being absent).
    type: path
  resolve_btfids:
    description:
      - Path of a C(resolve_btfids) binary. Default is the first found of
        C(<build dir>/tools/bpf/resolve_btfids/resolve_btfids),
        C(/usr/lib/linux-kbuild-*/tools/bpf/resolve_btfids/resolve_btfids) (the release's own first), then
        C(PATH).
      - Debian's headers do not ship it; build it from C(linux-source-X.Y) with
        C(make -C tools/bpf/resolve_btfids).
    type: path
  work_dir:
    description: Where the private build trees live (C(<work_dir>/<release>/kbuild), C(.../src-<hash>)).
    type: path
    default: /var/lib/erb/kmod
  sign_key:
    description:
      - Private key to sign the module with (C(<build dir>/scripts/sign-file), hash C(CONFIG_MODULE_SIG_HASH)).
        Needed when lockdown, Secure Boot or C(sig_enforce) make the kernel refuse unsigned modules; the
        certificate must be enrolled (C(mokutil --import)).
      - With O(method=dkms), dkms signs with this key instead of its own (C(/var/lib/dkms/mok.key)); to use
        the dkms key, pass it here with its certificate C(/var/lib/dkms/mok.pub).
    type: path
  sign_cert:
    description: Certificate (DER or PEM) of O(sign_key); give both or neither.
    type: path
notes:
  - Needs C(make), the kernel's compiler (e.g. C(gcc-12)), C(pahole) (Debian package C(dwarves)), C(kmod)
    and, for O(method=dkms), C(dkms).
  - The stamp does not include O(vmlinux_btf); after replacing it for the same release, run O(state=absent)
    once to force a rebuild.
  - Ansible's command runner has no time limit, so C(rmmod) may take as long as erb_io needs to drain
    (bounded by its C(drain_ms)).
attributes:
  check_mode:
    support: full
    description: Runs the preflight and reports what would be built, removed, unloaded, loaded or set
      (RV(would_build), RV(would_load), ...); builds, writes and loads nothing.
  diff_mode:
    support: full
    description: Returns the installed source hash, whether erb_io is loaded, its requested parameters as
      loaded and the content of C(/etc/modprobe.d/erb_io.conf), before and after.
  platform:
    support: full
    platforms: posix
    description: Linux with loadable module support.
author:
  - ERB developers (!UNKNOWN)
'''

EXAMPLES = r'''
- name: Put the module sources on the host
  ansible.builtin.copy:
    src: "{{ item }}"
    dest: /usr/local/src/erb_io/
    mode: "0644"
  loop:
    - files/kmod/erb_io.c
    - files/kmod/Kbuild
    - files/kmod/Makefile
    - files/kmod/dkms.conf
    - files/bpf/erb.h
    - files/bpf/erb_record.h

- name: Build, install and load erb_io (resolve_btfids built from linux-source beforehand)
  erb.booster.kmod:
    src: /usr/local/src/erb_io
    resolve_btfids: /usr/local/lib/erb/resolve_btfids
    params:
      sink: apply
      redis_sock: /run/redis/redis-server.sock
      kfifo_size: 4096

- name: Build for the kernel that the next boot runs (not loaded)
  erb.booster.kmod:
    src: /usr/local/src/erb_io
    kernel_release: 6.1.0-56-amd64
    vmlinux_btf: /var/cache/erb/vmlinux-6.1.0-56-amd64
    method: kbuild

- name: Secure Boot host, signing with the enrolled DKMS key
  erb.booster.kmod:
    src: /usr/local/src/erb_io
    method: dkms
    sign_key: /var/lib/dkms/mok.key
    sign_cert: /var/lib/dkms/mok.pub

- name: Unload and remove it (detach ERB's BPF programs first)
  erb.booster.kmod:
    state: absent
'''

RETURN = r'''
method:
  description: The build method used (V(kbuild) or V(dkms)); null for O(state=absent).
  returned: always
  type: str
  sample: kbuild
kernel_release:
  description: The release built for.
  returned: always
  type: str
  sample: 6.1.0-56-amd64
running_release:
  description: The running kernel's release.
  returned: always
  type: str
source_hash:
  description: sha256 of the sources and O(kernel_release) (see the description); null for O(state=absent).
  returned: always
  type: str
built:
  description: Whether this run built the module.
  returned: always
  type: bool
build_s:
  description: Seconds spent building and installing (0 when nothing was built).
  returned: always
  type: float
installed_path:
  description: The installed C(erb_io.ko) (null when none is, or after O(state=absent)).
  returned: always
  type: str
  sample: /lib/modules/6.1.0-56-amd64/updates/erb/erb_io.ko
loaded:
  description: Whether erb_io is loaded after the run (in check mode, now).
  returned: always
  type: bool
btf:
  description: Whether the installed module has a C(.BTF) section with all its kfunc BTF IDs resolved
    (null when unknown, e.g. in check mode before a build).
  returned: always
  type: bool
signed:
  description: Whether the installed module carries a signature.
  returned: always
  type: bool
params:
  description: The requested parameters, as strings.
  returned: always
  type: dict
  sample: {"sink": "apply", "kfifo_size": "4096"}
stats:
  description:
    - The counters of the loaded erb_io (C(/sys/module/erb_io/stats/)), after the run; empty when it is not
      loaded. Among them C(applied) (records Redis answered C(+OK)), C(retries) (records Redis refused for
      now, sent again), C(auth_errors), C(apply_errors) (records Redis rejected for good), C(lost), C(queued),
      C(applied_seq), and C(last_error), Redis's last error reply.
  returned: always
  type: dict
  sample: {"applied": 2200, "retries": 50, "auth_errors": 0, "lost": 0, "last_error": "OOM command not allowed"}
load_skipped:
  description: Why the module was not loaded (O(kernel_release) is not the running kernel).
  returned: when O(kernel_release) is not the running kernel
  type: str
unload_s:
  description: Seconds C(rmmod) took.
  returned: when erb_io was unloaded
  type: float
msg:
  description: What was done, in one sentence.
  returned: always
  type: str
steps:
  description: What was done, step by step (human readable).
  returned: always
  type: list
  elements: str
would_build:
  description: A build (and install) would run.
  returned: check mode, O(state=present)
  type: bool
would_install:
  description: Same as RV(would_build).
  returned: check mode, O(state=present)
  type: bool
would_load:
  description: erb_io would be loaded (or reloaded).
  returned: check mode, O(state=present)
  type: bool
would_unload:
  description: erb_io would be unloaded.
  returned: check mode
  type: bool
would_set_params:
  description: Parameters that would be written to sysfs at run time.
  returned: check mode, O(state=present)
  type: dict
would_write_conf:
  description: C(/etc/modprobe.d/erb_io.conf) would be written or removed.
  returned: check mode, O(state=present)
  type: bool
would_remove:
  description: Files, trees and DKMS versions that would be removed.
  returned: check mode
  type: list
  elements: str
reload_reasons:
  description: Why a loaded erb_io would be reloaded.
  returned: check mode, O(state=present)
  type: list
  elements: str
'''


from ansible.module_utils.basic import AnsibleModule
from ansible_collections.erb.booster.plugins.module_utils.erb_kmod import (
    DEFAULT_WORK_DIR, METHODS, KmodConfig, KmodError, KmodRun)

ARGUMENT_SPEC = dict(
    state=dict(type='str', default='present', choices=['present', 'absent']),
    src=dict(type='path'),
    kernel_release=dict(type='str'),
    params=dict(type='dict', default={}),
    method=dict(type='str', default='auto', choices=list(METHODS)),
    vmlinux_btf=dict(type='path'),
    resolve_btfids=dict(type='path'),
    work_dir=dict(type='path', default=DEFAULT_WORK_DIR),
    sign_key=dict(type='path', no_log=False),
    sign_cert=dict(type='path'),
    redis_password_file=dict(type='path', no_log=False),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_if=[('state', 'present', ['src'])],
                           required_together=[('sign_key', 'sign_cert')])
    p = module.params

    def runner(args, env=None, cwd=None):
        e = {'LANG': 'C', 'LC_ALL': 'C'}
        e.update(env or {})
        return module.run_command(args, environ_update=e, cwd=cwd)

    result = dict(changed=False)
    try:
        cfg = KmodConfig(src=p['src'], kernel_release=p['kernel_release'], params=p['params'],
                         method=p['method'], vmlinux_btf=p['vmlinux_btf'], resolve_btfids=p['resolve_btfids'],
                         work_dir=p['work_dir'], sign_key=p['sign_key'], sign_cert=p['sign_cert'],
                         redis_password_file=p['redis_password_file'])
        run = KmodRun(cfg, runner)
        result = run.result
        if p['state'] == 'present':
            result = run.present(check_mode=module.check_mode)
        else:
            result = run.absent(check_mode=module.check_mode)
    except KmodError as e:
        result.pop('warnings', None)
        module.fail_json(msg=str(e), **result)
    except (IOError, OSError) as e:
        result.pop('warnings', None)
        module.fail_json(msg='%s: %s' % (getattr(e, 'filename', None) or 'erb.booster.kmod',
                                         e.strerror or e), **result)
    for w in result.pop('warnings', []):
        module.warn(w)
    if not module._diff:
        result.pop('diff', None)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
