// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * What the first touch of a cache entry costs, for bench/entry_miss.c: the
 * loads a GET hit's probe makes of its entry (the header line, the key's
 * first word, the value's first two lines), nothing else, in three programs
 * that pick the same slots:
 *
 *   base:   picks the slot and reads no entry (what the others pay besides);
 *   flat:   the entry in an array laid out as erb_cache is (struct erb_entry,
 *           BPF_F_MMAPABLE: vmalloc'd, 4 KB pages);
 *   direct: the same entries in small inner arrays of an array of maps, each
 *           under 32 KB, which the kernel allocates with kmalloc: in its
 *           direct map (1 GB and 2 MB pages), so no 4 KB page walk.
 *
 * Each run's key is bpf_get_prandom_u32() plus what the previous run loaded
 * (the entries are zeros, but the CPU cannot know it): with
 * BPF_PROG_TEST_RUN's repeat the runs' loads do not overlap, each waits for
 * the one before as a request's probe waits for its own loads.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "../../files/bpf/erb.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define SLOTS		65536		/* the role's default cache_entries */
#define KEYS_MAX	65536
#define PER_INNER	((32768 - 512) / sizeof(struct erb_entry))
#define INNERS		((SLOTS + PER_INNER - 1) / PER_INNER)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, struct erb_entry);
} flat_cache SEC(".maps");

struct inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PER_INNER);
	__type(key, __u32);
	__type(value, struct erb_entry);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, INNERS);
	__type(key, __u32);
	__array(values, struct inner);
} direct_cache SEC(".maps");

/* the slots of the key set (bench/entry_miss.c fills it), and their count */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KEYS_MAX);
	__type(key, __u32);
	__type(value, __u32);
} key_slots SEC(".maps");

const volatile __u32 nkeys = 10000;

/* what the last run loaded: the chain */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} chain SEC(".maps");

static __always_inline __u64 *chain_word(void)
{
	__u32 z = 0;

	return bpf_map_lookup_elem(&chain, &z);
}

static __always_inline __u32 pick(__u64 *c)
{
	__u32 i = (bpf_get_prandom_u32() + (__u32)*c) % (nkeys ? nkeys : 1), *s;

	s = bpf_map_lookup_elem(&key_slots, &i);
	return s ? *s % SLOTS : 0;
}

/* the loads of a probe hit: header, key, value's first two lines */
static __always_inline int touch(struct erb_entry *e, __u64 *c)
{
	if (!e)
		return XDP_ABORTED;
	*c = *(volatile __u64 *)e + *(volatile __u64 *)e->key +
	     *(volatile __u64 *)e->val + *(volatile __u64 *)(e->val + 64);
	return XDP_PASS;
}

SEC("xdp")
int base(struct xdp_md *ctx)
{
	__u64 *c = chain_word();

	if (!c)
		return XDP_ABORTED;
	*c = pick(c);		/* the next run waits for this one's pick */
	return XDP_PASS;
}

SEC("xdp")
int flat(struct xdp_md *ctx)
{
	__u64 *c = chain_word();
	__u32 slot;

	if (!c)
		return XDP_ABORTED;
	slot = pick(c);
	return touch(bpf_map_lookup_elem(&flat_cache, &slot), c);
}

SEC("xdp")
int direct(struct xdp_md *ctx)
{
	__u64 *c = chain_word();
	__u32 slot, o, j;
	void *in;

	if (!c)
		return XDP_ABORTED;
	slot = pick(c);
	o = slot / PER_INNER;
	j = slot % PER_INNER;
	in = bpf_map_lookup_elem(&direct_cache, &o);
	if (!in)
		return XDP_ABORTED;
	return touch(bpf_map_lookup_elem(in, &j), c);
}
