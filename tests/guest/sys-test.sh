#!/bin/bash
# Runs inside the system guest (tests/guest/sys-init.sh: Debian's 6.1 kernel,
# this machine's userland over 9p) as root; driven by
# tests/kmod/test_kmod_sys_guest.py. Prints "ERB-V name value" lines and leaves
# JSON results in /erb-out.
#   $1: the repository (read-only, as on the host)
# /erb-out/v holds erb.bpf.o and its verifier-test variants (files/bpf
# `make variants`), built on the host.
REPO=$1
OUT=/erb-out
. /var/cache/erb-guest/current.env
cd "$REPO" || exit 1

v() { echo "ERB-V $1 $2"; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

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

v kernel "$(uname -r)"
v modules_before "$(grep -c . /proc/modules)"

# 1. without erb_io: the ring-buffer objects load; the kmod variant cannot
verify nomod_ring "$OUT/v/erb.bpf.o"
verify nomod_set "$OUT/v/erb-set.bpf.o"
verify nomod_kmod "$OUT/v/erb-kmod.bpf.o"

# 2. Redis for the apply sink
mkdir -p /run/erb-guest
redis-server --port 0 --unixsocket /run/erb-guest/redis.sock --dir /run/erb-guest \
	--appendonly yes --appendfsync everysec --save '' --daemonize yes \
	--logfile /run/erb-guest/redis.log
for _ in $(seq 50); do redis-cli -s /run/erb-guest/redis.sock ping >/dev/null 2>&1 && break; sleep 0.1; done

SRC=/var/tmp/erb_io-src
mkdir -p "$SRC"
cp files/kmod/* files/bpf/erb.h files/bpf/erb_record.h "$SRC/"
ARGS="{\"src\": \"$SRC\", \"resolve_btfids\": \"$RESOLVE_BTFIDS\", \"params\": {\"sink\": \"apply\", \"redis_sock\": \"/run/erb-guest/redis.sock\"}}"

# 3. build + install + load, then the same again (nothing to do)
kmod present "$ARGS"
[ -e /sys/kernel/btf/erb_io ] && v btf_after_load 1 || v btf_after_load 0
v sink_param "$(cat /sys/module/erb_io/parameters/sink 2>/dev/null)"
v redis_sock_param "$(cat /sys/module/erb_io/parameters/redis_sock 2>/dev/null)"
verify mod_kmod "$OUT/v/erb-kmod.bpf.o"
verify mod_set "$OUT/v/erb-set.bpf.o"
kmod again "$ARGS"

# 4. a changed parameter reloads it
ARGS2="{\"src\": \"$SRC\", \"resolve_btfids\": \"$RESOLVE_BTFIDS\", \"params\": {\"sink\": \"apply\", \"redis_sock\": \"/run/erb-guest/redis.sock\", \"batch\": 32}}"
kmod params "$ARGS2"
v batch_param "$(cat /sys/module/erb_io/parameters/batch 2>/dev/null)"

# 5. unload + remove
kmod absent "{\"src\": \"$SRC\", \"state\": \"absent\"}"
[ -e /sys/module/erb_io ] && v loaded_after_absent 1 || v loaded_after_absent 0
v ko_after_absent "$(find /lib/modules/"$(uname -r)" -name 'erb_io.ko*' | wc -l)"

redis-cli -s /run/erb-guest/redis.sock shutdown nosave >/dev/null 2>&1
v kernel_warnings "$(dmesg | grep -c -E 'BUG:|WARNING:|Oops|Call Trace')"
dmesg | grep erb_io | sed 's/^/ERB-LOG /'
