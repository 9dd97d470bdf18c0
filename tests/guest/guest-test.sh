#!/bin/sh
# SPDX-License-Identifier: GPL-3.0-or-later
# Runs inside the QEMU guest (busybox /init) as root. It drives erb_io and a
# real redis-server and prints what it observes as "ERB-V <name> <value>"
# lines on the serial console; tests/kmod/test_kmod_guest.py asserts on them.
# Kernel log lines of the module are echoed as "ERB-LOG ...".
E=/erb
OBJ=$E/erb_kfunc_test.bpf.o
RUN=$E/erb_guest_runner
KO=$E/erb_io.ko
S=/tmp/redis.sock
ST=/sys/module/erb_io/stats

v() { echo "ERB-V $1 $2"; }
tag() { sed "s/^ERB-V /ERB-V $1/"; }
now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
stat() { cat "$ST/$1" 2>/dev/null || echo -1; }

# wait_stat NAME TARGET TIMEOUT_S: wait until counter NAME >= TARGET
wait_stat() {
	i=0
	while [ "$(stat "$1")" -lt "$2" ] && [ $i -lt $(($3 * 10)) ]; do
		sleep 0.1
		i=$((i + 1))
	done
}

# redis_start DIR [redis-server options overriding the defaults]
redis_start() {
	d=$1
	shift
	mkdir -p "$d"
	redis-server --port 0 --unixsocket $S --dir "$d" --appendonly yes \
		--appendfsync everysec --save '' --daemonize yes \
		--pidfile "$d/redis.pid" --logfile "$d/redis.log" "$@"
	i=0
	until redis-cli -s $S ping >/dev/null 2>&1 || [ $i -ge 100 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	REDIS_PID=$(cat "$d/redis.pid")
}

redis_stop() {
	redis-cli -s $S shutdown >/dev/null 2>&1
	i=0
	while kill -0 "$REDIS_PID" 2>/dev/null && [ $i -lt 100 ]; do
		sleep 0.1
		i=$((i + 1))
	done
}

# A closed BPF program drops its module reference from a deferred work
# item: rmmod right after a program exits may see EBUSY for a moment.
rmmod_wait() {
	i=0
	until rmmod erb_io 2>/dev/null; do
		i=$((i + 1))
		[ $i -ge 100 ] && return 1
		sleep 0.1
	done
	v "$1_rmmod_retries" $i
}

dmesg_erb() { dmesg | grep 'erb_io' | sed 's/^/ERB-LOG /'; }

v kernel "$(uname -r)"

# 1. Without the module: the object loads with use_kmod=0 (ring buffer);
#    with use_kmod=1 the kfunc cannot be resolved and the load fails.
if [ -e /sys/kernel/btf/erb_io ]; then v nomod_btf 1; else v nomod_btf 0; fi
$RUN verify $OBJ 0 | tag nomod_
$RUN verify $OBJ 1 2>/dev/null | tag nomod_

# 2. apply sink
redis_start /tmp/r1
insmod $KO sink=apply redis_sock=$S
v insmod_apply_rc $?
if [ -e /sys/kernel/btf/erb_io ]; then v btf_sysfs 1; else v btf_sysfs 0; fi
$RUN verify $OBJ 1 2>&1 | tag mod_

t0=$(now_ms)
$RUN push $OBJ 2000 a 1 100 $S 0
wait_stat applied "$(stat enqueued)" 120
t1=$(now_ms)
v apply_2000_ms $((t1 - t0))
$RUN push $OBJ 200 b 2001 1400 $S 0
wait_stat applied "$(stat enqueued)" 60
v applied "$(stat applied)"
v enqueued "$(stat enqueued)"
v full "$(stat full)"
v apply_errors "$(stat apply_errors)"
v applied_seq "$(stat applied_seq)"
$RUN seq $OBJ
$RUN check $S a 2000 100
$RUN check $S b 200 1400
$RUN dbsize $S dbsize_apply
t0=$(now_ms)
$RUN setload $S 2000 100
t1=$(now_ms)
v baseline_2000_ms $((t1 - t0))
redis-cli -s $S flushall >/dev/null

# 3. erb_find_fd() from XDP against Redis's fd table
exp=
for f in /proc/"$REDIS_PID"/fd/*; do
	case "$(readlink "$f")" in
	*.incr.aof) exp=${f##*/}; break ;;
	esac
done
v findfd_expected "${exp:--1}"
$RUN findfd $OBJ "$REDIS_PID" .incr.aof
$RUN findfd $OBJ "$REDIS_PID" .no-such-suffix | tag missing_

# 4. A full kfifo: refused records go to Redis directly; nothing is lost.
rmmod_wait full
insmod $KO sink=apply redis_sock=$S kfifo_size=16 batch=8
v insmod_small_rc $?
redis-cli -s $S client pause 2000 write >/dev/null
$RUN push $OBJ 300 f 5000 64 $S 0
wait_stat applied "$(($(stat enqueued)))" 30
v full_counter "$(stat full)"
$RUN check $S f 300 64
rmmod_wait small
insmod $KO sink=apply redis_sock=$S
v insmod_default_rc $?

# 5. rmmod while a program holds the kfuncs: refused; then with records
#    queued behind a paused Redis: drains them before unloading.
$RUN push $OBJ 200 h 10000 64 - 4000 > /tmp/hold.out &
HOLD=$!
i=0
until grep -q push_h_err /tmp/hold.out || [ $i -ge 300 ]; do
	sleep 0.1
	i=$((i + 1))
done
rmmod erb_io 2>/dev/null
v rmmod_busy_rc $?
wait $HOLD
cat /tmp/hold.out
redis-cli -s $S client pause 2500 write >/dev/null
$RUN push $OBJ 500 d 20000 64 - 0
v drain_queued_before "$(stat queued)"
v drain_enqueued "$(stat enqueued)"
v drain_applied_before "$(stat applied)"
t0=$(now_ms)
rmmod_wait drain
v rmmod_drain_rc $?
v rmmod_drain_ms $(($(now_ms) - t0))
$RUN check $S d 500 64
$RUN check $S h 200 64
if dmesg | grep -q 'erb_io: unloaded: .*, 0 lost in total'; then
	v drain_log_no_loss 1
else
	v drain_log_no_loss 0
fi

# 6. Records that cannot be delivered at unload are reported, not dropped
#    silently: Redis is down, drain_ms=1000.
insmod $KO sink=apply redis_sock=$S drain_ms=1000
v insmod_lost_rc $?
redis_stop
$RUN push $OBJ 100 l 30000 64 - 0
rmmod_wait lost
v rmmod_lost_rc $?
if dmesg | grep -q 'erb_io: unload: 100 queued records NOT delivered'; then
	v lost_reported 1
else
	v lost_reported 0
fi

# 7. aof_direct: records appended to Redis's AOF, fsync paced, and they
#    survive a Redis restart.
redis_start /tmp/r2
insmod $KO sink=aof_direct redis_pid="$REDIS_PID" aof_suffix=.incr.aof
v insmod_aof_rc $?
sleep 2.5
v aof_idle_fsyncs "$(stat fsyncs)"
v aof_idle_checks "$(stat fsync_checks)"
$RUN push $OBJ 300 c 40000 100 $S 0
wait_stat aof_records "$(stat enqueued)" 60
v aof_records "$(stat aof_records)"
f1=$(stat fsyncs)
t0=$(now_ms)
for i in 1 2 3 4 5 6; do
	$RUN push $OBJ 50 g$i $((50000 + i * 100)) 100 $S 0
	sleep 0.5
done
wait_stat aof_records "$(stat enqueued)" 60
f2=$(stat fsyncs)
t1=$(now_ms)
v aof_load_ms $((t1 - t0))
v aof_load_fsyncs $((f2 - f1))
v aof_enqueued "$(stat enqueued)"
v aof_records_final "$(stat aof_records)"
$RUN dbsize $S dbsize_aof_before_restart
sleep 1.5
f3=$(stat fsyncs)
c3=$(stat fsync_checks)
sleep 3
v aof_quiet_fsyncs $(($(stat fsyncs) - f3))
v aof_quiet_checks $(($(stat fsync_checks) - c3))
AOF=$(ls /tmp/r2/appendonlydir/*.incr.aof)
v aof_set_cmds "$(grep -c '^SET' "$AOF")"
v aof_select_cmds "$(grep -c '^SELECT' "$AOF")"
rmmod_wait aof
v rmmod_aof_rc $?
redis_stop
redis_start /tmp/r2
$RUN dbsize $S dbsize_aof_after_restart
$RUN check $S c 300 100
$RUN check $S g6 50 100
redis_stop

# 8. Writes Redis refuses for now are sent again, in order, not lost: OOM
#    (maxmemory + noeviction), READONLY (a replica), MISCONF (a failed
#    background save), Redis down and back. Each: 50 records while Redis
#    refuses them, none counted applied, then all of them in Redis.
rc() { redis-cli -s $S "$@" >/dev/null; }
# refused NAME SEQ0: push 50 records, wait for retries, report what applied
refused() {
	r0=$(stat retries)
	A0=$(stat applied)
	$RUN push $OBJ 50 "$1" "$2" 64 - 0
	wait_stat retries $((r0 + 1)) 30
	sleep 0.5
	v "$1_applied_while_refused" $(($(stat applied) - A0))
	v "$1_last_error" "$(cut -d' ' -f1 $ST/last_error)"
}
# accepted NAME: Redis accepts again; wait for the 50 and check them
accepted() {
	wait_stat applied $((A0 + 50)) 30
	v "$1_applied" $(($(stat applied) - A0))
	$RUN check $S "$1" 50 64
}
redis_start /tmp/r3 --appendonly no --enable-protected-configs yes
insmod $KO sink=apply redis_sock=$S
v insmod_retry_rc $?
rc config set maxmemory-policy noeviction
rc config set maxmemory 1
refused oom 60000
rc config set maxmemory 0
accepted oom
rc replicaof 127.0.0.1 1
refused ro 60100
rc replicaof no one
accepted ro
mkdir -p /tmp/rofs
mount -t tmpfs -o ro tmpfs /tmp/rofs
rc config set save '3600 1'
rc config set dir /tmp/rofs
rc bgsave
i=0
until redis-cli -s $S info persistence | grep -q 'rdb_last_bgsave_status:err' || [ $i -ge 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
refused misconf 60200
rc config set stop-writes-on-bgsave-error no
accepted misconf
rc config set dir /tmp/r3
rc config set save ''
rc config set stop-writes-on-bgsave-error yes
redis_stop
r0=$(stat connects)
A0=$(stat applied)
$RUN push $OBJ 50 down 60300 64 - 0
sleep 1.5
v down_applied_while_stopped $(($(stat applied) - A0))
redis_start /tmp/r3 --appendonly no --enable-protected-configs yes
accepted down
v down_reconnects $(($(stat connects) - r0))
v retry_apply_errors "$(stat apply_errors)"
rmmod_wait retry
# A connection Redis will not serve (maxclients reached: it answers an error
# and closes) is not taken for the reply to a record.
rc config set maxclients 2
redis-cli -s $S subscribe erb-hold1 >/dev/null 2>&1 &
HOLD1=$!
redis-cli -s $S subscribe erb-hold2 >/dev/null 2>&1 &
HOLD2=$!
sleep 0.5
insmod $KO sink=apply redis_sock=$S
v insmod_maxclients_rc $?
$RUN push $OBJ 20 mc 60500 64 - 0
sleep 1.5
v mc_applied_while_refused "$(stat applied)"
v mc_last_error "$(cut -d' ' -f1-2 $ST/last_error)"
kill $HOLD1
wait_stat applied 20 30
v mc_applied "$(stat applied)"
v mc_apply_errors "$(stat apply_errors)"
kill $HOLD2
wait $HOLD1 $HOLD2 2>/dev/null
$RUN check $S mc 20 64
rc config set maxclients 10000
rmmod_wait mc
redis_stop

# 9. AUTH with a password from a root-only file: a file others may read, or
#    not owned by root, refuses the load; a wrong password is retried (and
#    counted) until the file holds the right one; nothing is lost.
export REDISCLI_AUTH=pw4
redis_start /tmp/r4 --appendonly no --requirepass pw4
printf 'pw4\n' > /tmp/pw
chmod 644 /tmp/pw
insmod $KO sink=apply redis_sock=$S redis_password_file=/tmp/pw
v auth_insmod_world_readable_rc $?
chmod 600 /tmp/pw
chown 1 /tmp/pw
insmod $KO sink=apply redis_sock=$S redis_password_file=/tmp/pw
v auth_insmod_not_root_rc $?
chown 0 /tmp/pw
printf 'wrong\n' > /tmp/pw
insmod $KO sink=apply redis_sock=$S redis_password_file=/tmp/pw
v auth_insmod_rc $?
v auth_param "$(cat /sys/module/erb_io/parameters/redis_password_file)"
$RUN push $OBJ 50 auth 60400 64 - 0
wait_stat auth_errors 1 30
sleep 0.5
v auth_applied_wrong_password "$(stat applied)"
printf 'pw4\n' > /tmp/pw
wait_stat applied 50 30
v auth_applied "$(stat applied)"
v auth_errors "$(stat auth_errors)"
ERB_REDIS_AUTH=pw4 $RUN check $S auth 50 64
rmmod_wait auth
redis_stop
unset REDISCLI_AUTH
if dmesg | grep -q 'redis_password_file /tmp/pw is owned by uid 0 with mode 0644'; then
	v auth_log_mode 1
else
	v auth_log_mode 0
fi
if dmesg | grep -q 'pw4'; then v auth_secret_logged 1; else v auth_secret_logged 0; fi

v kernel_warnings "$(dmesg | grep -c -E 'BUG:|WARNING:|Oops|Call Trace')"
dmesg_erb
