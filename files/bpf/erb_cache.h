/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ERB data path: the KV cache: FNV-1a, double-hash probing, entries, invalidation, pending writes,
 * CLOCK eviction.
 * Part of the one translation unit erb.bpf.c (the verifier sees one object);
 * included there in order, after the maps and the load-time cfg.
 */
#ifndef ERB_CACHE_H
#define ERB_CACHE_H

/* ---------------------------------------------------------------- cache */

static __always_inline __u32 slot_of(__u32 h, __u32 i)
{
	__u32 n = cfg.cache_entries;
	__u32 prime = cfg.hash_prime;
	__u64 step;

	if (n == 0)
		return 0;
	step = 1 + (prime ? h % prime : 0);
	return (__u32)(((__u64)h + i * step) % n);
}

static __always_inline __u32 bucket_of(__u32 h)
{
	return h & (ERB_INFLIGHT_BUCKETS - 1);
}

static __always_inline int entry_live(struct erb_entry *e, __u32 gen)
{
	return e->state == ERB_ENTRY_VALID && e->gen == gen;
}

/*
 * Probe chains end only at a never-used slot. A deleted entry, or one of an
 * older generation, can be taken again but does not end the chain: an entry
 * written behind it while it was live stays in reach of every lookup, and so
 * of every invalidation, as long as it lives.
 */
static __always_inline int entry_end(struct erb_entry *e)
{
	return e->state == ERB_ENTRY_EMPTY;
}

/*
 * The tags (erb_tags): one byte per slot, 0 while the slot was never written,
 * else this byte of the hash of the last key written there. A probe that only
 * looks (a lookup, an invalidation, a pending check) reads an entry only when
 * its tag matches, so a GET miss or a write of an uncached key costs no cache
 * miss on a cold 1.7 KB entry (perf: most of a passed write's BPF time).
 * entry_write() sets the tag before the entry shows the new hash, so a tag
 * read never hides a live entry of that hash.
 */
#define TAG_UNKNOWN	0x100	/* the tag could not be read: read the entry */

static __always_inline __u32 hash_tag(__u32 h)
{
	__u32 t = h >> 24;

	return t ? t : 1;
}

static __always_inline __u32 slot_tag(__u32 idx)
{
	__u32 w = idx / 8;
	__u8 *t = bpf_map_lookup_elem(&erb_tags, &w);

	return t ? READ_ONCE(t[idx & 7]) : TAG_UNKNOWN;
}

/* Tag slot idx with hash h: before the entry shows h (entry_write()). */
static __always_inline void slot_tag_set(__u32 idx, __u32 h)
{
	__u32 w = idx / 8;
	__u8 *t = bpf_map_lookup_elem(&erb_tags, &w);

	if (t)
		WRITE_ONCE(t[idx & 7], hash_tag(h));
}

/* Skip slot idx when looking for hash h? (its tag says another key, or none) */
static __always_inline int tag_skip(__u32 idx, __u32 tag, int *end)
{
	__u32 t = slot_tag(idx);

	*end = t == 0;
	return t != tag && t != TAG_UNKNOWN;
}

/*
 * Two zero-padded keys of klen bytes: only the words that hold the key are
 * compared (a short key touches one cache line of the entry, not all of
 * ERB_KEY_MAX). Stored keys are zero-padded to their last word (entry_write).
 */
static __always_inline int key_equal(const char *a, const char *b, __u32 klen)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	__u32 n = (klen + 7) / 8;

#pragma clang loop unroll(disable)
	for (int i = 0; i < ERB_KEY_MAX / 8; i++) {
		if ((__u32)i >= n)
			break;
		if (x[i] != y[i])
			return 0;
	}
	return 1;
}

/*
 * Remove every live entry whose key hashes to h (conservative: by hash). An
 * entry whose fast-path write Redis does not have yet stays: its key is held
 * until it is applied (no write of it can pass meanwhile).
 */
/* Start the invalidation of key hash h in s->ic (s->ic.applied: the caller's). */
static __always_inline void inval_start(struct erb_scratch *s, __u32 h)
{
	s->ic.h = h;
	s->ic.tag = hash_tag(h);
	s->ic.n = 0;
}

/*
 * Probe i of the invalidation in s->ic (h, tag, applied; n counts the
 * deletions). Returns 1 at the end of the chain.
 */
static __always_inline int inval_probe(struct erb_scratch *s, __u32 i)
{
	struct erb_entry *e;
	__u32 idx = slot_of(s->ic.h, i);
	int end;

	if (tag_skip(idx, s->ic.tag, &end))
		return end;
	e = bpf_map_lookup_elem(&erb_cache, &idx);
	if (!e || entry_end(e))
		return 1;
	if (e->state == ERB_ENTRY_VALID && e->hash == s->ic.h && e->wseq <= s->ic.applied) {
		__sync_fetch_and_add(&e->ver, 1);
		e->state = ERB_ENTRY_TOMB;
		__sync_fetch_and_add(&e->ver, 1);
		s->ic.n++;
	}
	return 0;
}

/*
 * One probe of an invalidation (a bpf_loop step: verified once, not per
 * probe). Its state is in the scratch (s->ic), its context one pointer: the
 * stack of every frame counts against one 512-byte limit on older kernels.
 */
static long inval_step(__u32 i, void *arg)
{
	struct erb_scratch *s = *(struct erb_scratch **)arg;

	if (!s)
		return 1;
	return inval_probe(s, i);
}

static __always_inline int cache_invalidate(__u32 h)
{
	struct erb_global *g = global();
	struct erb_scratch *s = scratch();
	__u32 n = cfg.max_probes;

	if (!s)
		return 0;
	inval_start(s, h);
	s->ic.applied = g ? g->applied_seq : 0;
	if (n > ERB_MAX_PROBES)
		n = ERB_MAX_PROBES;
	bpf_loop(n, inval_step, &s, 0);
	if (s->ic.n)
		stat_inc(ERB_STAT_INVALIDATE);
	return s->ic.n;
}

/* key bytes fnv_key() hashes inline, before any fnv_step: redis-benchmark's keys are 16 */
#define FNV_INLINE	16

/* FNV-1a over the first n (up to 8) bytes of b, from h. */
static __always_inline __u32 fnv_word(__u32 h, const char *b, __u32 n)
{
#pragma clang loop unroll(full)
	for (__u32 j = 0; j < 8; j++)
		if (j < n)
			h = (h ^ (__u8)b[j]) * FNV_PRIME;
	return h;
}

struct fctx {
	struct erb_scratch *s;	/* s->fnv_len: the key's length */
	const char *buf;	/* ERB_KEY_MAX bytes, in a map value */
	__u32 from;		/* the first step's 8-byte word */
};

/*
 * Eight bytes of the key per call: each bpf_loop step is a call and a return,
 * and a return is dear where the kernel guards it (SRSO's safe RET here).
 */
static long fnv_step(__u32 i, void *arg)
{
	struct fctx *x = arg;
	__u32 w = i + x->from, o = (w * 8) & (ERB_KEY_MAX - 8);

	if (!x->s || !x->buf)
		return 1;
	x->s->fnv = fnv_word(x->s->fnv, x->buf + o, x->s->fnv_len - w * 8);
	return 0;
}

/* FNV-1a of buf[0..len), len <= ERB_KEY_MAX. */
static __always_inline __u32 fnv_key(struct erb_scratch *s, const char *buf, __u32 len)
{
	struct fctx x = { .s = s, .buf = buf, .from = FNV_INLINE / 8 };
	__u32 h = FNV_OFFSET;

	if (len > ERB_KEY_MAX)
		len = ERB_KEY_MAX;
	/* the first FNV_INLINE bytes here: a short key takes no bpf_loop step (a call and a return) */
	h = fnv_word(h, buf, len);
	if (len > 8)
		h = fnv_word(h, buf + 8, len - 8);
	if (len <= FNV_INLINE)
		return h;
	s->fnv = h;
	s->fnv_len = len;
	bpf_loop((len - FNV_INLINE + 7) / 8, fnv_step, &x, 0);
	return s->fnv;
}

static __always_inline void cache_flush(struct erb_global *g)
{
	__sync_fetch_and_add(&g->cache_gen, 1);
	stat_inc(ERB_STAT_FLUSH);
}

struct prctx {
	struct erb_scratch *s;
	const char *key;	/* zero-padded, ERB_KEY_MAX bytes, in a map value */
	__u32 h, klen, gen;
	__u32 look_tag;		/* a lookup: the key's tag, to skip slots by (pr.free then tells nothing) */
	__u64 applied;
};

/* One probe: stop at the key (pr.hit) or the end of the chain. */
static long probe_step(__u32 i, void *arg)
{
	struct prctx *x = arg;
	struct erb_scratch *s = x->s;
	struct erb_entry *e;
	__u32 idx, ver;

	if (!s || !x->key)
		return 1;
	idx = slot_of(x->h, i);
	if (x->look_tag) {
		int end;

		if (tag_skip(idx, x->look_tag, &end))
			return end;
	}
	e = bpf_map_lookup_elem(&erb_cache, &idx);
	if (!e)
		return 1;
	/*
	 * Load the value's first lines now, so that their cache misses overlap
	 * the header's: a hit (or a fill) reads them next, and a cold entry
	 * would otherwise cost two misses in a row (perf: most of a GET hit).
	 */
	s->pr.touch += *(volatile __u64 *)e->val + *(volatile __u64 *)(e->val + 64);
	/* ver before the fields: an insert re-checks it under the entry's lock */
	ver = READ_ONCE(e->ver);
	if (e->state == ERB_ENTRY_VALID && e->gen != x->gen && e->wseq > x->applied)
		return 0;	/* flushed, but Redis does not have its write yet: keep it */
	if (entry_end(e)) {
		if (s->pr.free < 0) {
			s->pr.free = idx;
			s->pr.fver = ver;
		}
		return 1;
	}
	if (!entry_live(e, x->gen)) {
		if (s->pr.free < 0) {
			s->pr.free = idx;
			s->pr.fver = ver;
		}
		return 0;
	}
	if (e->hash != x->h || e->klen != x->klen || !key_equal(e->key, x->key, x->klen))
		return 0;
	s->pr.hit = idx;
	s->pr.ver = ver;
	/* CLOCK reference bit: written only when it changes (no store per hit) */
	if (!READ_ONCE(e->ref))
		WRITE_ONCE(e->ref, 1);
	return 1;
}

/*
 * Start the loads of key hash h's first slot when its tag says the key may be
 * there, a while before the probe reads the entry: the entry's first touch is
 * a GET hit's and a fast SET's longest wait (bench/README.md), and loads that
 * do not wait for each other overlap their misses. The caller puts work that
 * does not depend on the entry between this and the probe. Nothing but the
 * loads: the probe reads the entry again, under its own checks.
 */
static __always_inline void entry_prefetch(struct erb_scratch *s, __u32 h)
{
	__u32 idx = slot_of(h, 0);
	struct erb_entry *e;
	int end;

	if (tag_skip(idx, hash_tag(h), &end))
		return;
	e = bpf_map_lookup_elem(&erb_cache, &idx);
	if (e)
		s->pr.touch += *(volatile __u64 *)e + *(volatile __u64 *)e->val +
			       *(volatile __u64 *)(e->val + 64);
}

static __always_inline void cache_probe(struct erb_scratch *s, const char *key, __u32 klen,
					__u32 h, __u32 gen, __u32 look)
{
	struct prctx x = { .s = s, .key = key, .h = h, .klen = klen, .gen = gen,
			   .look_tag = look ? hash_tag(h) : 0 };
	struct erb_global *g = global();
	__u32 n = cfg.max_probes;

	x.applied = g ? g->applied_seq : 0;
	s->pr.hit = -1;
	s->pr.free = -1;
	if (n > ERB_MAX_PROBES)
		n = ERB_MAX_PROBES;
	bpf_loop(n, probe_step, &x, 0);
}

/* Is an acknowledged fast-path write of this key hash still not in Redis? */
struct hctx {
	__u32 h, tag;
	__u64 applied;
	__u32 pending;
};

static long pending_step(__u32 i, void *arg)
{
	struct hctx *x = arg;
	struct erb_entry *e;
	__u32 idx = slot_of(x->h, i);
	int end;

	if (tag_skip(idx, x->tag, &end))
		return end;
	e = bpf_map_lookup_elem(&erb_cache, &idx);
	if (!e || e->state == ERB_ENTRY_EMPTY)
		return 1;
	/* of any generation: emptying the cache does not put a write in Redis */
	if (e->state == ERB_ENTRY_VALID && e->hash == x->h && e->wseq > x->applied) {
		x->pending = 1;
		return 1;
	}
	return 0;
}

static __always_inline int key_pending(__u32 h, __u64 applied)
{
	struct hctx x = { .h = h, .tag = hash_tag(h), .applied = applied };
	__u32 n = cfg.max_probes;

	if (n > ERB_MAX_PROBES)
		n = ERB_MAX_PROBES;
	bpf_loop(n, pending_step, &x, 0);
	return x.pending;
}

/*
 * Write a live entry; the caller holds e->lock. ver is odd while it changes,
 * so a reader that saw the old contents notices (cache_get re-checks it).
 */
static __always_inline void entry_write(struct erb_entry *e, __u32 h, const char *key, __u32 klen,
					const char *val, __u32 vlen, __u32 gen, __u64 wseq,
					__u32 type)
{
	struct erb_scratch *s = scratch();
	__u32 kw;

	/* cache_claim() chose this slot as a victim: the eviction happens now */
	if (s && s->pr.evict) {
		s->pr.evict = 0;
		stat_inc(ERB_STAT_EVICT);
	}
	/*
	 * The tag first (cache_claim() noted the slot): a lookup that reads the
	 * old tag skips a slot that does not hold this key yet.
	 */
	if (e->slot < cfg.cache_entries)
		slot_tag_set(e->slot, h);
	__sync_fetch_and_add(&e->ver, 1);
	e->state = ERB_ENTRY_VALID;
	e->ref = 1;
	e->gen = gen;
	e->hash = h;
	e->klen = klen;
	e->vlen = vlen;
	e->wseq = wseq;
	e->type = type;
	/*
	 * Only the bytes that count: the key to its last word (key is
	 * zero-padded, so is that word) and the value's vlen bytes, not all
	 * ERB_KEY_MAX + ERB_VAL_MAX (26 cache lines) per write.
	 */
	kw = (klen + 7) & ~7U;
	if (len_in(kw, 8, ERB_KEY_MAX))
		bpf_probe_read_kernel(e->key, arg_len(kw, 8, ERB_KEY_MAX), key);
	if (len_in(vlen, 1, ERB_VAL_MAX))
		bpf_probe_read_kernel(e->val, arg_len(vlen, 1, ERB_VAL_MAX), val);
	__sync_fetch_and_add(&e->ver, 1);
}

/*
 * CLOCK over a full probe window: sweep it in probe order, clearing the
 * reference bit of each referenced entry passed over (its second chance), and
 * stop at the first unreferenced one. All referenced: the first one swept
 * (now cleared), as the CLOCK hand coming round again would. Never a victim:
 * an entry whose fast-path write Redis does not have yet (wseq > applied_seq),
 * one of another generation (only pending ones are left in a full window), one
 * being written (lock, odd ver), or anything not valid.
 */
struct evctx {
	struct erb_scratch *s;
	__u32 h, gen;
	__u64 applied;
};

static long evict_step(__u32 i, void *arg)
{
	struct evctx *x = arg;
	struct erb_scratch *s = x->s;
	struct erb_entry *e;
	__u32 idx, ver;

	if (!s)
		return 1;
	idx = slot_of(x->h, i);
	e = bpf_map_lookup_elem(&erb_cache, &idx);
	if (!e)
		return 1;
	ver = READ_ONCE(e->ver);
	if ((ver & 1) || READ_ONCE(e->lock) || e->state != ERB_ENTRY_VALID || e->gen != x->gen ||
	    e->wseq > x->applied)
		return 0;
	if (!READ_ONCE(e->ref)) {
		s->pr.victim = idx;
		s->pr.vver = ver;
		return 1;
	}
	if (s->pr.victim < 0) {
		s->pr.victim = idx;
		s->pr.vver = ver;
	}
	WRITE_ONCE(e->ref, 0);
	return 0;
}

/*
 * The slot an insert of key (hash h, zero-padded, under the key's bucket
 * lock) writes, locked (e->lock 1) and unchanged since it was chosen: the
 * key's own entry, else the first free slot of the window, else a CLOCK
 * victim. Bounded: at most two passes over the probe window. NULL: nothing
 * to take (the window is all pending or busy) or a race lost; the caller
 * then leaves the command to Redis. The caller writes the entry with
 * entry_write() (which counts the eviction) and releases e->lock.
 */
static __always_inline struct erb_entry *cache_claim(struct erb_scratch *s, const char *key,
						     __u32 klen, __u32 h, __u32 gen)
{
	struct evctx x = { .s = s, .h = h, .gen = gen };
	struct erb_global *g = global();
	struct erb_entry *e;
	__u32 n = cfg.max_probes, idx, ver;

	s->pr.evict = 0;
	cache_probe(s, key, klen, h, gen, 0);
	if (s->pr.hit >= 0) {
		idx = s->pr.hit;
		ver = s->pr.ver;
	} else if (s->pr.free >= 0) {
		idx = s->pr.free;
		ver = s->pr.fver;
	} else {
		x.applied = g ? g->applied_seq : 0;
		s->pr.victim = -1;
		if (n > ERB_MAX_PROBES)
			n = ERB_MAX_PROBES;
		bpf_loop(n, evict_step, &x, 0);
		if (s->pr.victim < 0) {
			stat_inc(ERB_STAT_CACHE_FULL);
			return 0;
		}
		idx = s->pr.victim;
		ver = s->pr.vver;
	}
	if (ver & 1)
		return 0;
	e = bpf_map_lookup_elem(&erb_cache, &idx);
	if (!e || __sync_val_compare_and_swap(&e->lock, 0, 1) != 0)
		return 0;
	/*
	 * Changed since the probe (another key took the slot, an invalidation,
	 * a fast-path write): choose again next time. wseq only changes with
	 * ver, and applied_seq only grows: a victim checked above stays one.
	 */
	if (READ_ONCE(e->ver) != ver) {
		__sync_lock_test_and_set(&e->lock, 0);
		return 0;
	}
	e->slot = idx;		/* for entry_write()'s tag */
	s->pr.evict = s->pr.hit < 0 && s->pr.free < 0;
	return e;
}

/*
 * Store key/value (zero-padded key) under hash h. Returns 0 when stored.
 * The caller re-checks its preconditions afterwards and invalidates on a race.
 */
static __always_inline int cache_store(struct erb_scratch *s, __u32 h, const char *key,
				       __u32 klen, const char *val, __u32 vlen, __u32 gen,
				       __u32 type, __u32 *slot)
{
	struct erb_entry *target = cache_claim(s, key, klen, h, gen);

	if (!target)
		return -1;
	entry_write(target, h, key, klen, val, vlen, gen, target->wseq, type);
	*slot = target->slot;
	__sync_lock_test_and_set(&target->lock, 0);
	return 0;
}

#endif /* ERB_CACHE_H */
