// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Stand-in for erb.bpf.c's SET fast path, for the agent tests: the maps the
 * agent uses (erb_events, erb_global, erb_cache, erb_wepoch, erb_stats) and a SEC("syscall")
 * program, run with BPF_PROG_TEST_RUN, that reserves and submits one
 * struct erb_record per run from its context (struct erb_test_in).
 *
 * Like the real fast path, it takes the seq only after the reservation
 * succeeded (dense seqs). seq != 0 in the input forces that seq instead (to
 * test records arriving out of seq order). Returns 0 when queued, 1 when the
 * ring is full, 2 on bad input.
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "erb.h"
#include "erb_record.h"

char LICENSE[] SEC("license") = "GPL";

#ifndef RING_BYTES
#define RING_BYTES	(4 << 20)
#endif
#ifndef CACHE_ENTRIES
#define CACHE_ENTRIES	1024
#endif

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, RING_BYTES);
} erb_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct erb_global);
} erb_global SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, CACHE_ENTRIES);
	__type(key, __u32);
	__type(value, struct erb_entry);
} erb_cache SEC(".maps");

/* The slots' tags, as erb.bpf.c's (erb_cache.h, "The tags"): the agent reads them. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, CACHE_ENTRIES / 8);
	__type(key, __u32);
	__type(value, __u64);
} erb_tags SEC(".maps");

/* Per key-hash bucket write epochs, as erb.bpf.c's (mmapable: the agent bumps them). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, ERB_INFLIGHT_BUCKETS);
	__type(key, __u32);
	__type(value, __u32);
} erb_wepoch SEC(".maps");

/* Per-CPU counters, as erb.bpf.c's. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ERB_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} erb_stats SEC(".maps");

struct erb_test_in {
	__u64 seq;		/* 0: take erb_global.write_seq + 1 */
	__u32 db;
	__u16 klen;
	__u16 vlen;
	char key[ERB_KEY_MAX];
	char val[ERB_VAL_MAX];
};

SEC("syscall")
int erb_test_produce(struct erb_test_in *in)
{
	__u32 zero = 0;
	struct erb_global *g = bpf_map_lookup_elem(&erb_global, &zero);
	struct erb_record *r;
	__u64 seq = in->seq;

	if (!g || in->klen < 1 || in->klen > ERB_KEY_MAX || in->vlen > ERB_VAL_MAX)
		return 2;
	r = bpf_ringbuf_reserve(&erb_events, sizeof(*r), 0);
	if (!r)
		return 1;
	if (!seq)
		seq = __sync_fetch_and_add(&g->write_seq, 1) + 1;
	r->version = ERB_RECORD_VERSION;
	r->op = ERB_OP_SET;
	r->flags = 0;
	r->klen = in->klen;
	r->vlen = in->vlen;
	r->db = in->db;
	r->pad = 0;
	r->seq = seq;
	bpf_probe_read_kernel(r->key, sizeof(r->key), in->key);
	bpf_probe_read_kernel(r->val, sizeof(r->val), in->val);
	bpf_ringbuf_submit(r, 0);
	return 0;
}
