#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# Runs inside the QEMU guest that create.yml boots (tests/guest/sys-init.sh: Debian's
# 6.1 kernel, this machine's userland read-only over 9p with a tmpfs overlay), as root.
# Makes a one-host fleet (inventory/local/fleet.sh up 1: erb-r1 with Redis, erb-c1 its
# client) and serves ssh for Molecule's Ansible on the guest's port 22 (forwarded from
# the host by QEMU user networking) with dropbear, key login only, until the guest is
# stopped. Prints "ERB-V guest_ready 1" when ssh is up, "ERB-V guest_error WHAT" if not.
#   $1: the repository
REPO=$1
OUT=/erb-out
v() { echo "ERB-V $1 $2"; }
fail() { v guest_error "$1"; exit 1; }

modprobe virtio_net || fail modprobe_virtio_net
IF=
for dev in /sys/class/net/*; do
	dev=${dev##*/}
	if [ "$dev" != lo ]; then IF=$dev; break; fi
done
[ -n "$IF" ] || fail no_network_interface
# QEMU user networking: the guest is 10.0.2.15, the host 10.0.2.2
if ! ip link set "$IF" up || ! ip addr add 10.0.2.15/24 dev "$IF"; then
	fail network
fi

bash "$REPO/inventory/local/fleet.sh" up 1 >"$OUT/fleet-up.log" 2>&1 || fail fleet_up

mkdir -p /root/.ssh /etc/dropbear
chmod 700 /root/.ssh
install -m 600 "$OUT/authorized_keys" /root/.ssh/authorized_keys || fail authorized_keys
dropbearkey -t ed25519 -f /etc/dropbear/host_ed25519 >/dev/null 2>&1 || fail host_key
v guest_ready 1
# -F foreground, -E log to stderr (the console), -s no passwords, -j -k no forwarding
exec dropbear -F -E -s -j -k -p 22 -r /etc/dropbear/host_ed25519
