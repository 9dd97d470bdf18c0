# Copyright (c) ERB contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""erb_io kernel module, tested in a QEMU/TCG guest booting Debian's kernel.

The host kernel cannot load modules (no CONFIG_MODULES), so
tests/guest/build-guest.sh builds the module (with .BTF) against Debian's
6.1 kernel and a busybox initramfs carrying it, a redis-server, the test XDP
object and erb_guest_runner; the guest runs tests/guest/guest-test.sh once
and prints "ERB-V name value" lines on its serial console, which these tests
assert on. Nothing here skips: a missing QEMU, package or build fails.
"""
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from erb_conftest import key_values, qemu_guest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tests" / "guest" / "build-guest.sh"
CACHE = Path(os.environ.get("ERB_GUEST_CACHE", "/var/cache/erb-guest"))
pytestmark = pytest.mark.slow

# the first build on a fresh machine installs packages and builds resolve_btfids
BUILD_TIMEOUT_S = 1800
BOOT_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def guest():
    t0 = time.monotonic()
    build = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True,
                           timeout=BUILD_TIMEOUT_S, check=False)
    build_s = time.monotonic() - t0
    assert build.returncode == 0, f"build-guest.sh failed:\n{build.stderr[-4000:]}"
    env = key_values(build.stdout)
    console, values, guest_s = qemu_guest(env["KERNEL"], env["INITRD"],
                                          "console=ttyS0 panic=-1 quiet loglevel=3", 1024,
                                          BOOT_TIMEOUT_S)
    (CACHE / "last-console.log").write_text(console)
    assert values.get("guest_done") == "1", f"guest did not finish:\n{console[-4000:]}"
    values["_build_s"] = build_s
    values["_guest_s"] = guest_s
    values["_env"] = env
    values["_console"] = console
    print(f"guest stage: build {build_s:.1f} s, boot+tests {guest_s:.1f} s; apply 2000 records "
          f"{values.get('apply_2000_ms')} ms, direct pipelined SET baseline {values.get('baseline_2000_ms')} ms")
    return values


def num(guest, name):
    assert name in guest, f"guest did not report {name}"
    return float(guest[name])


def test_module_has_btf_section(guest):
    out = subprocess.run(["readelf", "-S", guest["_env"]["KO"]], capture_output=True,
                         text=True, check=True).stdout
    assert ".BTF" in out
    assert ".BTF_ids" in out


def test_module_btf_has_kfuncs(guest):
    env = guest["_env"]
    out = subprocess.run(["bpftool", "btf", "dump", "file", env["KO"], "-B",
                          os.path.join(env["KDIR"], "vmlinux")],
                         capture_output=True, text=True, check=True).stdout
    for fn in ("erb_kfifo_in", "erb_find_fd", "erb_applied_seq"):
        assert f"FUNC '{fn}'" in out


def test_loads_and_btf_in_sysfs(guest):
    assert guest["insmod_apply_rc"] == "0"
    assert guest["btf_sysfs"] == "1"
    assert guest["nomod_btf"] == "0"


def test_kfunc_program_passes_verifier_with_module(guest):
    assert guest["mod_verify_kmod1"] == "ok"


def test_same_object_loads_without_module(guest):
    # use_kmod=0: the kfunc branch is dead code, the ring buffer is used
    assert guest["nomod_verify_kmod0"] == "ok"
    # and the choice matters: asking for the kfuncs without the module fails
    assert guest["nomod_verify_kmod1"] == "fail"


def total(guest, pattern):
    return sum(float(v) for k, v in guest.items()
               if not k.startswith("_") and re.fullmatch(pattern, k))


def test_apply_sink_reaches_redis(guest):
    # a record refused by a full kfifo is SET directly (the pass path)
    for p, n in (("a", 2000), ("b", 200)):
        assert num(guest, f"push_{p}_ok") + num(guest, f"push_{p}_passed") == n
        assert num(guest, f"push_{p}_err") == 0
    assert num(guest, "push_a_ok") > 0 and num(guest, "push_b_ok") > 0
    assert num(guest, "applied") == num(guest, "enqueued")
    assert num(guest, "enqueued") == num(guest, "push_a_ok") + num(guest, "push_b_ok")
    assert num(guest, "apply_errors") == 0
    assert num(guest, "dbsize_apply") == 2200
    assert num(guest, "check_a_ok") == 2000 and num(guest, "check_a_mismatch") == 0
    assert num(guest, "check_b_ok") == 200 and num(guest, "check_b_mismatch") == 0


def test_applied_seq_published(guest):
    # the last record delivered in order; b's seqs are 2001..2200
    assert 2001 <= num(guest, "applied_seq") <= 2200
    assert num(guest, "applied_seq_kfunc") == num(guest, "applied_seq")


def test_find_fd_matches_proc(guest):
    assert num(guest, "findfd_expected") >= 0
    assert guest["findfd"] == guest["findfd_expected"]
    assert num(guest, "missing_findfd") == -2  # -ENOENT


def test_full_kfifo_passes_to_redis_nothing_lost(guest):
    assert guest["insmod_small_rc"] == "0"
    assert num(guest, "push_f_full") > 0
    assert num(guest, "full_counter") == num(guest, "push_f_full")
    assert num(guest, "push_f_ok") + num(guest, "push_f_passed") == 300
    assert num(guest, "push_f_pass_fail") == 0
    assert num(guest, "check_f_ok") == 300


def test_rmmod_refused_while_program_holds_kfuncs(guest):
    assert guest["rmmod_busy_rc"] != "0"
    assert num(guest, "check_h_ok") == 200


def test_rmmod_drains_queued_records(guest):
    assert num(guest, "drain_queued_before") > 0, "nothing was queued at rmmod"
    assert guest["rmmod_drain_rc"] == "0"
    assert num(guest, "check_d_ok") == 500
    assert guest["drain_log_no_loss"] == "1"


def test_rmmod_reports_undeliverable_records(guest):
    assert guest["insmod_lost_rc"] == "0"
    assert guest["rmmod_lost_rc"] == "0"
    assert guest["lost_reported"] == "1"


def test_aof_direct_appends_and_survives_restart(guest):
    assert guest["insmod_aof_rc"] == "0"
    assert num(guest, "aof_records") >= num(guest, "push_c_ok") > 0
    assert num(guest, "aof_records_final") == num(guest, "aof_enqueued")
    passed = total(guest, r"push_(c|g\d)_passed")
    assert num(guest, "aof_enqueued") + passed == 600
    # Redis's memory does not see the module's records (the paper mode's
    # known blind spot), only the ones passed to it ...
    assert num(guest, "dbsize_aof_before_restart") == passed
    assert num(guest, "aof_set_cmds") == 600
    # the module selects db 0 once; Redis selects once itself if it logged
    # passed commands
    assert num(guest, "aof_select_cmds") == 1 + (passed > 0)
    # ... but its AOF replays them
    assert num(guest, "dbsize_aof_after_restart") == 600
    assert num(guest, "check_c_ok") == 300 and num(guest, "check_c_mismatch") == 0
    assert num(guest, "check_g6_ok") == 50


def test_fsync_once_a_second_only_when_dirty(guest):
    assert num(guest, "aof_idle_fsyncs") == 0
    assert num(guest, "aof_idle_checks") >= 1
    secs = num(guest, "aof_load_ms") / 1000
    assert 1 <= num(guest, "aof_load_fsyncs") <= secs + 1
    assert num(guest, "aof_quiet_fsyncs") == 0
    assert num(guest, "aof_quiet_checks") >= 2


@pytest.mark.parametrize("name, code", [("oom", "OOM"), ("ro", "READONLY"), ("misconf", "MISCONF")])
def test_refused_writes_are_sent_again_not_lost(guest, name, code):
    # maxmemory + noeviction, a replica, a failed background save: Redis
    # refuses the SETs; none counts as applied until Redis takes them
    assert guest["insmod_retry_rc"] == "0"
    assert num(guest, f"{name}_applied_while_refused") == 0
    assert guest[f"{name}_last_error"] == code
    assert num(guest, f"{name}_applied") == 50
    assert num(guest, f"check_{name}_ok") == 50
    assert num(guest, "retry_apply_errors") == 0


def test_redis_down_and_back_loses_nothing(guest):
    assert num(guest, "down_applied_while_stopped") == 0
    assert num(guest, "down_applied") == 50
    assert num(guest, "check_down_ok") == 50
    assert num(guest, "down_reconnects") >= 1


def test_connection_redis_will_not_serve_is_no_reply(guest):
    # maxclients reached: Redis answers "-ERR max number of clients reached"
    # and closes; erb_io PINGs a new connection first, so no record takes
    # that error for its reply (it would be lost)
    assert guest["insmod_maxclients_rc"] == "0"
    assert num(guest, "mc_applied_while_refused") == 0
    assert guest["mc_last_error"] == "ERR max"
    assert num(guest, "mc_applied") == 20
    assert num(guest, "mc_apply_errors") == 0
    assert num(guest, "check_mc_ok") == 20


def test_auth_from_root_only_password_file(guest):
    # a password file others may read, or not root's, refuses the load
    assert guest["auth_insmod_world_readable_rc"] != "0"
    assert guest["auth_insmod_not_root_rc"] != "0"
    assert guest["auth_log_mode"] == "1"
    # the parameter names the file; the secret is never in sysfs or the log
    assert guest["auth_insmod_rc"] == "0"
    assert guest["auth_param"] == "/tmp/pw"
    assert guest["auth_secret_logged"] == "0"
    # a wrong password: nothing applied, AUTH failures counted, records kept;
    # the file is read again at every connect
    assert num(guest, "auth_applied_wrong_password") == 0
    assert num(guest, "auth_errors") >= 1
    assert num(guest, "auth_applied") == 50
    assert num(guest, "check_auth_ok") == 50


def test_no_kernel_warnings(guest):
    assert num(guest, "kernel_warnings") == 0
