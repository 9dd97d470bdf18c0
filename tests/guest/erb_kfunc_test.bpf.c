// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Test XDP programs for the erb_io kfuncs, run with BPF_PROG_TEST_RUN by
 * erb_guest_runner inside the QEMU guest.
 *
 * The kfuncs are weak: the loader sets use_kmod (the only .rodata variable)
 * to 1 when the module's BTF is present, else 0, and the verifier removes the
 * dead branch, so the same object loads with or without the module. Without
 * it, records go to a BPF ring buffer (the agent's path).
 *
 * Input/output of each program is the test-run packet:
 *   erb_push:     in: struct erb_record; out: first 4 bytes = s32 result
 *                 (0 queued, -ENOSPC full, other < 0 error); returns XDP_TX
 *                 when queued, XDP_PASS when full (the command would go to
 *                 Redis), XDP_DROP otherwise.
 *   erb_findfd:   in: struct erb_find_req; out: first 4 bytes = s32 fd/error.
 *   erb_seq:      out: first 8 bytes = erb_applied_seq() (0 without module).
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "erb_record.h"

#define ENOSPC		28
#define EOPNOTSUPP	95
#define ERB_FIND_SUFFIX	64

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 use_kmod;

extern int erb_kfifo_in(const struct erb_record *rec, __u32 rec__sz) __ksym __weak;
extern int erb_find_fd(__u32 pid, const char *suffix, __u32 suffix__sz) __ksym __weak;
extern __u64 erb_applied_seq(void) __ksym __weak;

struct erb_find_req {
	__u32 pid;
	char suffix[ERB_FIND_SUFFIX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct erb_record);
} erb_test_rec SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct erb_find_req);
} erb_test_find SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} erb_test_ring SEC(".maps");

SEC("xdp")
int erb_push(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct erb_record *rec = bpf_map_lookup_elem(&erb_test_rec, &zero);
	__s32 ret;

	if (!rec)
		return XDP_ABORTED;
	if (bpf_xdp_load_bytes(ctx, 0, rec, sizeof(*rec)))
		return XDP_ABORTED;
	if (use_kmod)
		ret = erb_kfifo_in(rec, sizeof(*rec));
	else
		ret = bpf_ringbuf_output(&erb_test_ring, rec, sizeof(*rec), 0) ?
		      -ENOSPC : 0;
	bpf_xdp_store_bytes(ctx, 0, &ret, sizeof(ret));
	if (!ret)
		return XDP_TX;
	return ret == -ENOSPC ? XDP_PASS : XDP_DROP;
}

SEC("xdp")
int erb_findfd(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct erb_find_req *req = bpf_map_lookup_elem(&erb_test_find, &zero);
	__s32 ret = -EOPNOTSUPP;

	if (!req)
		return XDP_ABORTED;
	if (bpf_xdp_load_bytes(ctx, 0, req, sizeof(*req)))
		return XDP_ABORTED;
	if (use_kmod)
		ret = erb_find_fd(req->pid, req->suffix, sizeof(req->suffix));
	bpf_xdp_store_bytes(ctx, 0, &ret, sizeof(ret));
	return XDP_PASS;
}

SEC("xdp")
int erb_seq(struct xdp_md *ctx)
{
	__u64 seq = 0;

	if (use_kmod)
		seq = erb_applied_seq();
	bpf_xdp_store_bytes(ctx, 0, &seq, sizeof(seq));
	return XDP_PASS;
}
