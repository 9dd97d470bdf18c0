#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# Local ERB test fleet: N Redis "hosts" as network namespaces on this machine.
#
#   fleet.sh up     [N]   make (or complete) the fleet; idempotent
#   fleet.sh down         remove everything `up` made, and nothing else
#   fleet.sh status       print the state of each host; exit 0 only when all are up
#
# Host i (1..N, default N=2 or $ERB_FLEET_SIZE):
#   namespace erb-r<i> (Redis host)  <-- veth -->  namespace erb-c<i> (its client)
#   erbs<i> 10.250.<i>.1/24                         erbc<i> 10.250.<i>.2/24
#   redis-server inside erb-r<i> on 10.250.<i>.1:6379 and /run/erb/fleet/r<i>/redis.sock,
#   appendonly yes, appendfsync everysec, data and pid file under /run/erb/fleet/r<i>/.
# The client end gets `tx` checksum offload off and an XDP_PASS program, because
# XDP_TX on a veth reaches the peer only when the peer has an XDP program too.
# bpffs is mounted at /sys/fs/bpf if needed and bind-mounted at /run/erb/bpffs,
# since `ip netns exec` remounts /sys and hides /sys/fs/bpf.
#
# Everything made is recorded in /run/erb/fleet/made; `down` undoes exactly that.
set -euo pipefail

FLEET_DIR=${ERB_FLEET_DIR:-/run/erb/fleet}
BPFFS=/sys/fs/bpf
BPFFS_BIND=${ERB_BPFFS_BIND:-/run/erb/bpffs}
MADE="$FLEET_DIR/made"
REDIS_PORT=6379
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
XDP_PASS_OBJ=${ERB_XDP_PASS_OBJ:-$REPO/files/bpf/xdp_pass.bpf.o}
REDIS_SERVER=${ERB_REDIS_SERVER:-redis-server}
REDIS_CLI=${ERB_REDIS_CLI:-redis-cli}
# the Python that Ansible modules run with inside each host's namespace
HOST_PYTHON=${ERB_FLEET_PYTHON:-/usr/bin/python3}

die() { echo "fleet: error: $*" >&2; exit 1; }
log() { echo "fleet: $*"; }

need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, bpffs mounts)"; }

need_tools() {
	local t
	for t in ip ethtool mountpoint "$REDIS_SERVER" "$REDIS_CLI"; do
		command -v "$t" >/dev/null 2>&1 || die "'$t' not found (apt-get install iproute2 ethtool util-linux redis-server)"
	done
}

# record KIND VALUE once in the ledger of things this script made
record() {
	mkdir -p "$FLEET_DIR"
	grep -qxF "$1 $2" "$MADE" 2>/dev/null || echo "$1 $2" >>"$MADE"
}

netns_exists() { [ -e "/run/netns/$1" ]; }

fstype() { stat -f -c %T "$1" 2>/dev/null || true; }

ensure_bpffs() {
	if ! mountpoint -q "$BPFFS"; then
		mkdir -p "$BPFFS"
		mount -t bpf bpf "$BPFFS"
		record mount "$BPFFS"
		log "mounted bpffs at $BPFFS"
	fi
	[ "$(fstype "$BPFFS")" = bpf_fs ] || die "$BPFFS is mounted but is not a bpf filesystem"
	if ! mountpoint -q "$BPFFS_BIND"; then
		mkdir -p "$BPFFS_BIND"
		mount --bind "$BPFFS" "$BPFFS_BIND"
		record mount "$BPFFS_BIND"
		log "bind-mounted $BPFFS at $BPFFS_BIND"
	fi
	[ "$(fstype "$BPFFS_BIND")" = bpf_fs ] || die "$BPFFS_BIND is mounted but is not a bpf filesystem"
}

ensure_netns() {
	if ! netns_exists "$1"; then
		ip netns add "$1"
		record netns "$1"
		log "created namespace $1"
	fi
	ip -n "$1" link set lo up
}

ensure_veth() {
	local i=$1 rs="erb-r$1" cs="erb-c$1" s="erbs$1" c="erbc$1"
	if ! ip -n "$rs" link show "$s" >/dev/null 2>&1 || ! ip -n "$cs" link show "$c" >/dev/null 2>&1; then
		# half-made pair from an interrupted run: remove its ends first
		ip -n "$rs" link del "$s" >/dev/null 2>&1 || true
		ip -n "$cs" link del "$c" >/dev/null 2>&1 || true
		ip link del "$s" >/dev/null 2>&1 || true
		ip link del "$c" >/dev/null 2>&1 || true
		ip link add "$s" netns "$rs" type veth peer name "$c" netns "$cs"
		log "created veth $s ($rs) <-> $c ($cs)"
	fi
	ip -n "$rs" addr replace "10.250.$i.1/24" dev "$s"
	ip -n "$cs" addr replace "10.250.$i.2/24" dev "$c"
	ip -n "$rs" link set "$s" up
	ip -n "$cs" link set "$c" up
	# partial checksums from the client's TX offload would reach XDP on the server end
	ip netns exec "$cs" ethtool -K "$c" tx off >/dev/null
	# Linux seeds a new connection's first RTO from the RTT it cached for the destination
	# when an earlier connection closed: one closed with an inflated RTT (a lost SYN-ACK
	# makes the client's first sample ~1 s) gives later connections a first RTO of seconds.
	# Tests compare hosts side by side; keep that history out of the client namespaces.
	ip netns exec "$cs" sysctl -qw net.ipv4.tcp_no_metrics_save=1
	ip -n "$cs" tcp_metrics flush all 2>/dev/null || true
}

ensure_xdp_pass() {
	local cs="erb-c$1" c="erbc$1"
	if ip -n "$cs" -d link show dev "$c" | grep -q 'prog/xdp'; then
		return 0
	fi
	[ -f "$XDP_PASS_OBJ" ] || die "$XDP_PASS_OBJ not found: build it with 'make -C $REPO/files/bpf'"
	# iproute2 pins the object's maps under the first bpffs it finds in /proc/mounts
	# unless told where: keep it on ours, away from other bpffs mounts
	TC_BPF_MNT="$BPFFS" ip -n "$cs" link set dev "$c" xdpdrv obj "$XDP_PASS_OBJ" sec xdp
	log "attached XDP_PASS to $c ($cs)"
}

redis_pid() {
	local pidf="$FLEET_DIR/r$1/redis.pid" pid
	[ -s "$pidf" ] || return 1
	pid=$(cat "$pidf")
	[ -d "/proc/$pid" ] || return 1
	[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ] || return 1
	echo "$pid"
}

redis_ping() {
	ip netns exec "erb-r$1" "$REDIS_CLI" -s "$FLEET_DIR/r$1/redis.sock" PING 2>/dev/null
}

write_redis_conf() {
	local i=$1 d="$FLEET_DIR/r$1"
	cat >"$d/redis.conf.new" <<-EOF
	# written by inventory/local/fleet.sh
	bind 10.250.$i.1
	port $REDIS_PORT
	protected-mode no
	unixsocket $d/redis.sock
	unixsocketperm 700
	daemonize yes
	supervised no
	pidfile $d/redis.pid
	logfile $d/redis.log
	dir $d/data
	appendonly yes
	appendfsync everysec
	appenddirname appendonlydir
	save ""
	# erb_io_redis_module loads erb_redis with MODULE LOAD over the unix socket
	enable-module-command local
	EOF
	mv "$d/redis.conf.new" "$d/redis.conf"
}

ensure_redis() {
	local i=$1 d="$FLEET_DIR/r$1" n
	mkdir -p "$d/data" "$d/lib"
	record dir "$d"
	if redis_pid "$i" >/dev/null; then
		return 0
	fi
	write_redis_conf "$i"
	rm -f "$d/redis.pid"
	# redis-server daemonizes: it must not keep the caller's descriptors (a lock held by
	# `flock FILE fleet.sh up` would last as long as the fleet)
	(
		for fd in "/proc/$BASHPID/fd"/*; do
			fd=${fd##*/}
			if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
		done
		exec ip netns exec "erb-r$i" "$REDIS_SERVER" "$d/redis.conf"
	)
	for n in $(seq 1 100); do
		if [ "$(redis_ping "$i")" = PONG ] && redis_pid "$i" >/dev/null; then
			log "redis-server for erb-r$i running (pid $(redis_pid "$i"))"
			return 0
		fi
		sleep 0.1
	done
	die "redis-server in erb-r$i did not answer PING within 10 s; see $d/redis.log"
}

stop_redis() {
	local i=$1 pid n
	pid=$(redis_pid "$i") || return 0
	kill -TERM "$pid"
	for n in $(seq 1 100); do
		[ -d "/proc/$pid" ] || { log "stopped redis-server pid $pid (erb-r$i)"; return 0; }
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	log "killed redis-server pid $pid (erb-r$i)"
}

# Python wrappers that run inside a namespace, for the inventory's
# ansible_python_interpreter (Ansible quotes the interpreter as one word, so
# "ip netns exec NS python3" cannot be written there directly):
#   /run/erb/fleet/r<i>/python3          inside erb-r<i> (the Redis host)
#   /run/erb/fleet/r<i>/client-python3   inside erb-c<i> (its client, for health checks)
write_python_wrapper() {
	local ns=$1 w=$2
	[ -x "$HOST_PYTHON" ] || die "$HOST_PYTHON not found (apt-get install python3, or set ERB_FLEET_PYTHON)"
	printf '#!/bin/sh\n# written by inventory/local/fleet.sh: Python inside namespace %s\nexec ip netns exec %s %s "$@"\n' \
		"$ns" "$ns" "$HOST_PYTHON" >"$w.new"
	chmod 755 "$w.new"
	mv "$w.new" "$w"
}

cmd_up() {
	local n=${1:-${ERB_FLEET_SIZE:-2}} i
	if ! [[ "$n" =~ ^[1-9][0-9]*$ ]] || [ "$n" -gt 250 ]; then
		die "fleet size must be 1..250, got '$n'"
	fi
	need_root
	need_tools
	mkdir -p "$FLEET_DIR"
	record dir "$FLEET_DIR"
	ensure_bpffs
	for i in $(seq 1 "$n"); do
		ensure_netns "erb-r$i"
		ensure_netns "erb-c$i"
		ensure_veth "$i"
		ensure_xdp_pass "$i"
		ensure_redis "$i"
		write_python_wrapper "erb-r$i" "$FLEET_DIR/r$i/python3"
		write_python_wrapper "erb-c$i" "$FLEET_DIR/r$i/client-python3"
		record host "$i"
	done
	log "up: $n host(s)"
}

# ERB I/O agents the role started on host $1 (erb-agent-supervise pid files):
# TERM lets an agent finish its batch; they would outlive the namespace otherwise.
stop_agents() {
	local pf pid n
	for pf in "$FLEET_DIR/r$1/run"/agent-*.pid; do
		[ -f "$pf" ] || continue
		pid=$(cat "$pf" 2>/dev/null) || continue
		if [ -z "$pid" ] || ! kill -TERM "$pid" 2>/dev/null; then
			continue
		fi
		for n in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		log "stopped the ERB agent of erb-r$1 (pid $pid)"
	done
}

cmd_down() {
	local kind val hosts=() nss=() mounts=() dirs=() i k
	need_root
	[ -f "$MADE" ] || { log "nothing to remove"; return 0; }
	while read -r kind val; do
		case "$kind" in
		host) hosts+=("$val") ;;
		netns) nss+=("$val") ;;
		mount) mounts+=("$val") ;;
		dir) dirs+=("$val") ;;
		esac
	done <"$MADE"
	for i in "${hosts[@]}"; do
		stop_agents "$i"
		stop_redis "$i"
	done
	for k in "${nss[@]}"; do
		if netns_exists "$k"; then
			ip netns del "$k"
			log "deleted namespace $k"
		fi
		# BPF pins ERB made for interfaces of a host that no longer exists
		rm -rf "${BPFFS:?}/erb/$k"
	done
	rmdir "$BPFFS/erb" 2>/dev/null || true
	# unmount in reverse order: the bind mount before the bpffs it binds
	for ((k = ${#mounts[@]} - 1; k >= 0; k--)); do
		if mountpoint -q "${mounts[k]}"; then
			umount "${mounts[k]}"
			log "unmounted ${mounts[k]}"
		fi
		[ "${mounts[k]}" = "$BPFFS" ] || rmdir "${mounts[k]}" 2>/dev/null || true
	done
	for ((k = ${#dirs[@]} - 1; k >= 0; k--)); do
		[ "${dirs[k]}" = "$FLEET_DIR" ] && continue
		rm -rf "${dirs[k]}"
	done
	rm -f "$MADE"
	rmdir "$FLEET_DIR" 2>/dev/null || true
	rmdir "$(dirname "$FLEET_DIR")" 2>/dev/null || true
	log "down"
}

cmd_status() {
	local n=0 ok=0 i kind val line pid
	[ -f "$MADE" ] || { echo "fleet: down"; return 3; }
	while read -r kind val; do
		[ "$kind" = host ] || continue
		n=$((n + 1))
		i=$val
		line="erb-r$i:"
		if netns_exists "erb-r$i" && netns_exists "erb-c$i"; then line+=" netns=ok"; else line+=" netns=missing"; fi
		if ip -n "erb-r$i" link show "erbs$i" 2>/dev/null | grep -q 'state UP'; then line+=" veth=up"; else line+=" veth=down"; fi
		if ip -n "erb-c$i" -d link show "erbc$i" 2>/dev/null | grep -q 'prog/xdp'; then line+=" client_xdp=yes"; else line+=" client_xdp=no"; fi
		if pid=$(redis_pid "$i"); then line+=" redis_pid=$pid"; else line+=" redis_pid=none"; fi
		if [ "$(redis_ping "$i")" = PONG ]; then line+=" ping=PONG"; ok=$((ok + 1)); else line+=" ping=fail"; fi
		echo "$line"
	done <"$MADE"
	[ "$n" -gt 0 ] || echo "fleet: partly made, no host complete (run up again, or down)"
	[ "$n" -gt 0 ] && [ "$ok" -eq "$n" ] || return 1
}

case "${1:-}" in
up) shift; cmd_up "$@" ;;
down) cmd_down ;;
status) cmd_status ;;
*) echo "usage: $0 up [N] | down | status" >&2; exit 2 ;;
esac
