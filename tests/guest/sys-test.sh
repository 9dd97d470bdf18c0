#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# Runs inside the system guest (tests/guest/sys-init.sh: Debian's 6.1 kernel,
# this machine's userland over 9p) as root; driven by
# tests/kmod/test_kmod_sys_guest.py. Prints "ERB-V name value" lines and leaves
# JSON results in /erb-out.
#   $1: the repository (read-only, as on the host)
# /erb-out/v holds erb.bpf.o, erb-compat.bpf.o and the compat build's verifier-test variants (files/bpf
# `make variants`), built on the host.
# ERB itself runs on a fleet host (inventory/local/fleet.sh up 2) with erb_io
# as its I/O path, apply and then aof_direct; tests/guest/sys_xdp.py drives the
# client side from erb-c1.
REPO=$1
OUT=/erb-out
. /var/cache/erb-guest/current.env
cd "$REPO" || exit 1

v() { echo "ERB-V $1 $2"; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
stage() { v "at_$1" "$(cut -d' ' -f1 /proc/uptime)"; }  # guest uptime, for the timings

# bpftool prog loadall OBJ: does Linux 6.1's verifier accept every program?
verify() {
	local name=$1 obj=$2 pin=/sys/fs/bpf/verify-$1
	mkdir -p "$pin"
	bpftool prog loadall "$obj" "$pin" >"$OUT/verify-$name.log" 2>&1
	v "verify_$name" $?
	rm -rf "$pin"
}

# erb.booster.kmod through Ansible, a local connection inside this guest
kmod() {
	local tag=$1 args=$2 t0
	t0=$(now)
	ANSIBLE_STDOUT_CALLBACK=oneline \
		.venv/bin/ansible localhost -c local -e ansible_python_interpreter=/usr/bin/python3 \
		-m erb.booster.kmod -a "$args" >"$OUT/kmod-$tag.out" 2>"$OUT/kmod-$tag.err"
	v "kmod_${tag}_rc" $?
	v "kmod_${tag}_s" "$(since "$t0")"
}

# erb.booster.bpf as a module process in erb-r1, as Ansible runs it there
# (the module, not the ansible CLI: that costs ~10 s a run under TCG)
COLL=/tmp/erb-coll
mkdir -p $COLL/ansible_collections/erb && ln -sfn "$REPO" $COLL/ansible_collections/erb/booster
bpfmod() {
	local tag=$1 args=$2 t0
	t0=$(now)
	echo "{\"ANSIBLE_MODULE_ARGS\": $args}" >"/tmp/bpf-$tag.json"
	ip netns exec erb-r1 env PYTHONPATH=$COLL LANG=C .venv/bin/python plugins/modules/bpf.py \
		"/tmp/bpf-$tag.json" >"$OUT/bpf-$tag.json" 2>"$OUT/bpf-$tag.err"
	v "bpf_${tag}_rc" $?
	v "bpf_${tag}_s" "$(since "$t0")"
}
ATTACH="{\"interface\": \"erbs1\", \"bpffs_root\": \"/run/erb/bpffs\", \"object\": \"$OUT/v/erb.bpf.o\", \"set_fast_path\": true, \"io_path\": \"auto\"}"
DETACH="{\"interface\": \"erbs1\", \"bpffs_root\": \"/run/erb/bpffs\", \"state\": \"detached\"}"
# the driver in client namespace erb-c$ERB_HOST (default 1), against erb-r$ERB_HOST
client() { ip netns exec "erb-c${ERB_HOST:-1}" .venv/bin/python tests/guest/sys_xdp.py "$@"; }
# redis-benchmark SET against ERB on erb-r1 and Redis alone on erb-r2, in
# alternating rounds (TCG timing is noisy: one run each would be a coin toss)
benchpair() {
	local i
	for i in 1 2; do
		client bench "$1_erb$i"
		ERB_HOST=2 client bench "$1_plain$i"
	done
}
FLEET=/run/erb/fleet/r1
SOCK=$FLEET/redis.sock

v kernel "$(uname -r)"
v modules_before "$(grep -c . /proc/modules)"

# 1. without erb_io: the ring-buffer objects load; the kmod variant cannot.
#    These are the compat builds (bpf_loop callbacks, not global functions),
#    which the loader falls back to where a kernel refuses erb.bpf.o (6.1 did,
#    for a call chain over 512 bytes of stack, until erb_pipe_check)
verify nomod_ring "$OUT/v/erb-compat.bpf.o"
verify nomod_set "$OUT/v/erb-compat-set.bpf.o"
verify nomod_kmod "$OUT/v/erb-compat-kmod.bpf.o"

stage fleet
# 2. a two-host fleet: Redis in erb-r<i> (appendonly, everysec), its client in
#    erb-c<i>. ERB goes on erb-r1; erb-r2 is Redis alone, for the benchmarks
inventory/local/fleet.sh up 2 >"$OUT/fleet-up.log" 2>&1
v fleet_up_rc $?

SRC=/var/tmp/erb_io-src
mkdir -p "$SRC"
cp files/kmod/* files/bpf/erb.h files/bpf/erb_record.h "$SRC/"
ARGS="{\"src\": \"$SRC\", \"resolve_btfids\": \"$RESOLVE_BTFIDS\", \"params\": {\"sink\": \"apply\", \"redis_sock\": \"$SOCK\"}}"

stage kmod
# 3. build + install + load, then the same again (nothing to do)
kmod present "$ARGS"
if [ -e /sys/kernel/btf/erb_io ]; then v btf_after_load 1; else v btf_after_load 0; fi
v sink_param "$(cat /sys/module/erb_io/parameters/sink 2>/dev/null)"
v redis_sock_param "$(cat /sys/module/erb_io/parameters/redis_sock 2>/dev/null)"
verify mod_kmod "$OUT/v/erb-compat-kmod.bpf.o"
verify mod_set "$OUT/v/erb-compat-set.bpf.o"
kmod again "$ARGS"

stage apply
# 4. ERB with erb_io's apply sink: SETs answered by XDP reach Redis over the
#    module's unix-socket connection; erb_io cannot go while programs use it
bpfmod attach_apply "$ATTACH"
client sets apply 300
client delivered apply apply
client bench warmup 2000
benchpair apply
rmmod erb_io 2>"$OUT/rmmod-attached.err"
v rmmod_attached_rc $?
bpfmod detach_apply "$DETACH"

stage fallback
# 4b. a build this kernel refuses for its stack (erb-deep.bpf.o, `make variants`:
#     erb_parse's frame 128 bytes deeper): the loader attaches the compat build
#     beside it (erb-deep-compat.bpf.o) and SETs are answered as with erb.bpf.o
bpfmod attach_fallback "${ATTACH/erb.bpf.o/erb-deep.bpf.o}"
client sets fallback 100
client delivered fallback apply
bpfmod detach_fallback "$DETACH"

stage reload
# 5. changed parameters reload it: the aof_direct sink (Redis's AOF, found
#    through Redis's pid), a kfifo of 64, batches of 32. The pid given is 1,
#    not Redis: erb_io finds no AOF until it is corrected at run time (step 6).
#    The small kfifo also makes the aof_direct benchmark pass some SETs to
#    Redis between fast ones, so Redis resends bytes the client has while XDP
#    answers are in flight (the case TC egress's TSval clamping covers)
REDIS_PID=$(cat $FLEET/redis.pid)
AOF_SETS=300  # more than erb_io's kfifo (64) and one batch hold
ARGS2="{\"src\": \"$SRC\", \"resolve_btfids\": \"$RESOLVE_BTFIDS\", \"params\": {\"sink\": \"aof_direct\", \"redis_pid\": 1, \"kfifo_size\": 64, \"batch\": 32}}"
kmod params "$ARGS2"
v batch_param "$(cat /sys/module/erb_io/parameters/batch 2>/dev/null)"
v sink_param_aof "$(cat /sys/module/erb_io/parameters/sink 2>/dev/null)"
v kfifo_param_aof "$(cat /sys/module/erb_io/parameters/kfifo_size 2>/dev/null)"

stage aof
# 6. ERB with aof_direct. While erb_io cannot reach the AOF its records wait
#    and the kfifo fills: further SETs go to Redis. Once redis_pid is right
#    every SET is in the AOF (from erb_io or from Redis) and comes back when
#    Redis restarts
bpfmod attach_aof "$ATTACH"
client sets aof $AOF_SETS
v aof_sink_errors "$(cat /sys/module/erb_io/stats/sink_errors)"
echo "$REDIS_PID" >/sys/module/erb_io/parameters/redis_pid
client delivered aof aof
benchpair aof
bpfmod detach_aof "$DETACH"
v aof_fsyncs "$(cat /sys/module/erb_io/stats/fsyncs)"
ip netns exec erb-r1 redis-cli -s $SOCK shutdown >/dev/null 2>&1
inventory/local/fleet.sh up 2 >"$OUT/fleet-restart.log" 2>&1
v fleet_restart_rc $?
client check aof

stage absent
# 7. unload + remove
kmod absent "{\"src\": \"$SRC\", \"state\": \"absent\"}"
if [ -e /sys/module/erb_io ]; then v loaded_after_absent 1; else v loaded_after_absent 0; fi
v ko_after_absent "$(find /lib/modules/"$(uname -r)" -name 'erb_io.ko*' | wc -l)"

inventory/local/fleet.sh down >"$OUT/fleet-down.log" 2>&1
v fleet_down_rc $?
stage end
v kernel_warnings "$(dmesg | grep -c -E 'BUG:|WARNING:|Oops|Call Trace')"
dmesg | grep erb_io | sed 's/^/ERB-LOG /'
