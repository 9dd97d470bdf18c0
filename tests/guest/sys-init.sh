#!/bin/busybox sh
# SPDX-License-Identifier: GPL-3.0-or-later
# shellcheck shell=dash
# /init of the system guest (tests/guest/build-guest.sh): boot Debian's kernel
# into this machine's own userland, read-only over 9p with a tmpfs overlay, and
# run the script named by erb.run= on the kernel command line:
#   erb.run=PATH   script to run (path in the host's tree), with bash
#   erb.arg=ARG    its one argument
# The 9p export "hostroot" is the host's / (read-only); "erbout" is a writable
# host directory mounted at /erb-out for results. /tmp and /run are fresh
# tmpfs mounts; the script and its argument stay reachable when they live
# below them on the host (a checkout under /tmp). The guest powers off when
# the script ends; its exit status is printed as "ERB-V sys_rc N".
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m || [ -n "$m" ]; do
	[ -n "$m" ] || continue
	insmod "/mods/$m" || echo "ERB-V sys_error insmod_$m"
done < /mods/order
RUN='' ARG=''
read -r cmdline < /proc/cmdline
for w in $cmdline; do
	case "$w" in
	erb.run=*) RUN=${w#erb.run=} ;;
	erb.arg=*) ARG=${w#erb.arg=} ;;
	esac
done
fail() { echo "ERB-V sys_error $1"; poweroff -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=524288 hostroot /host ||
	fail mount_hostroot
mount -t tmpfs -o size=3g tmpfs /up || fail tmpfs
mkdir -p /up/upper /up/work || fail tmpfs
mount -t overlay overlay -o lowerdir=/host,upperdir=/up/upper,workdir=/up/work /newroot ||
	fail overlay
mkdir -p /newroot/erb-out
mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=524288 erbout /newroot/erb-out ||
	fail mount_erbout
echo "ERB-V sys_initramfs_s $(cut -d' ' -f1 /proc/uptime)"
umount /proc /sys
# shellcheck disable=SC2016 # the script runs in the new root, expanded there
exec switch_root /newroot /bin/bash -c '
	mount -t proc proc /proc
	mount -t sysfs sysfs /sys
	mount -t devtmpfs devtmpfs /dev
	mkdir -p /dev/shm /dev/pts
	mount -t tmpfs tmpfs /dev/shm
	mount -t devpts devpts /dev/pts
	# fresh /tmp and /run; what the run needs from below them on the host (a
	# checkout under /tmp) is bound back from the host tree, seen at /.erb-host
	mkdir -p /.erb-host && mount --bind / /.erb-host
	mount -t tmpfs tmpfs /tmp
	mount -t tmpfs tmpfs /run
	for p in "$1" "${0%/*}"; do
		case "$p" in /tmp/?* | /run/?*) ;; *) continue ;; esac
		[ -e "$p" ] || [ ! -d "/.erb-host$p" ] && continue
		mkdir -p "$p" && mount --bind "/.erb-host$p" "$p" ||
			echo "ERB-V sys_error bind_$p"
	done
	mount -t bpf bpf /sys/fs/bpf
	mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
	hostname erb-guest
	ip link set lo up
	echo "ERB-V sys_root_s $(cut -d" " -f1 /proc/uptime)"
	bash "$0" "$1"
	echo "ERB-V sys_rc $?"
	sync
	poweroff -f' "$RUN" "$ARG"
