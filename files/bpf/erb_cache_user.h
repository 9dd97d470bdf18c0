/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The cache protocol's user-space side, shared by the two user-space
 * consumers of ERB's maps: erb-agent (files/agent) and erb_redis, the Redis
 * module (files/rmod). The programs' side is erb_cache.h and erb.bpf.c's
 * cache_store(); what both sides must agree on lives here once:
 *
 * - the key hash (FNV-1a 32, byte by byte: the programs take 8 bytes a step
 *   of the same function) and its tag byte in erb_tags (never 0: 0 marks a
 *   slot never written, which ends a probe chain);
 * - the probe sequence: double hashing over the cache's entries with a step
 *   of 1 + hash % hash_prime, hash_prime the largest prime below the entry
 *   count (erb_loader.hash_prime(); the maps' "meta" pin gives it);
 * - the entry lock (cmpxchg 0 -> 1) and the tombstone write under it (ver
 *   bumped before and after, odd while changing), which only removes an
 *   entry whose acknowledged write Redis has (wseq <= applied_seq): a pending
 *   entry is the only copy of an acknowledged write until it is applied;
 * - how to empty the whole cache: a new cache_gen when no write is pending,
 *   else a sweep that keeps the pending entries (erb_cache_gen_flushable()).
 *
 * Needs <linux/types.h> (or any __u8/__u32/__u64) and erb.h before it; uses
 * GCC/Clang __atomic builtins on the mmapped maps.
 */
#ifndef ERB_CACHE_USER_H
#define ERB_CACHE_USER_H

#if defined(__KERNEL__) || defined(__bpf__)
#error "erb_cache_user.h is for user space (erb-agent, erb_redis): the programs use erb_cache.h"
#endif

#include "erb.h"

/* FNV-1a 32 of the key: erb_entry.hash. */
static inline __u32 erb_fnv1a(const char *p, unsigned long n)
{
	__u32 h = 2166136261U;

	while (n--)
		h = (h ^ (__u8)*p++) * 16777619U;
	return h;
}

/* The key's byte in erb_tags: the hash's top byte, never 0. */
static inline __u8 erb_hash_tag(__u32 h)
{
	return h >> 24 ? (__u8)(h >> 24) : 1;
}

/* The largest prime below n, else 1 (erb_loader.hash_prime()). */
static inline __u32 erb_hash_prime(__u32 n)
{
	for (__u32 p = n ? n - 1 : 0; p >= 2; p--) {
		__u32 d = 2;

		while ((__u64)d * d <= p && p % d)
			d++;
		if ((__u64)d * d > p)
			return p;
	}
	return 1;
}

/* Index of the i-th slot of hash h's probe sequence (hash_prime >= 1). */
static inline __u32 erb_cache_index(__u32 h, __u32 i, __u32 hash_prime, __u32 entries)
{
	__u64 step = 1 + h % hash_prime;

	return (__u32)(((__u64)h + i * step) % entries);
}

/* One attempt at the entry's lock (the programs hold it for ~a microsecond). */
static inline int erb_entry_trylock(struct erb_entry *e)
{
	__u32 zero = 0;

	return __atomic_compare_exchange_n(&e->lock, &zero, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

static inline void erb_entry_unlock(struct erb_entry *e)
{
	__atomic_store_n(&e->lock, 0, __ATOMIC_RELEASE);
}

/*
 * With e locked: make a live entry a tombstone unless Redis lacks its
 * acknowledged write (wseq > applied). Returns 1 when it was deleted.
 */
static inline int erb_entry_tomb(struct erb_entry *e, __u64 applied)
{
	if (__atomic_load_n(&e->state, __ATOMIC_RELAXED) != ERB_ENTRY_VALID ||
	    __atomic_load_n(&e->wseq, __ATOMIC_RELAXED) > applied)
		return 0;
	__atomic_fetch_add(&e->ver, 1, __ATOMIC_ACQ_REL);
	__atomic_store_n(&e->state, ERB_ENTRY_TOMB, __ATOMIC_RELEASE);
	__atomic_fetch_add(&e->ver, 1, __ATOMIC_ACQ_REL);
	return 1;
}

/*
 * May the whole cache be emptied by a new cache_gen? Only when no write is
 * pending (write_seq <= applied): a new generation hides every entry, pending
 * ones too. Else the consumer sweeps, deleting every entry erb_entry_tomb()
 * may, and bumps every write epoch so that no fill in flight is stored.
 */
static inline int erb_cache_gen_flushable(const struct erb_global *g, __u64 applied)
{
	return __atomic_load_n(&g->write_seq, __ATOMIC_ACQUIRE) <= applied;
}

#endif /* ERB_CACHE_USER_H */
