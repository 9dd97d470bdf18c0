/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ERB data path: the flow table: outstanding writes per flow, flow release, close and delete.
 * Part of the one translation unit erb.bpf.c (the verifier sees one object);
 * included there in order, after the maps and the load-time cfg.
 */
#ifndef ERB_FLOW_H
#define ERB_FLOW_H

/* --------------------------------------------------- outstanding writes */

static __always_inline void wr_block(struct erb_flow *f, struct erb_global *g)
{
	if (!(__sync_fetch_and_or(&f->flags, ERB_FLOW_WR_OVERFLOW) & ERB_FLOW_WR_OVERFLOW))
		__sync_fetch_and_add(&g->overflow, 1);
}

static __always_inline void wr_acquire(struct erb_flow *f, struct erb_global *g,
				       __u32 idx, __u32 bucket)
{
	struct erb_bucket *bk = bucket_get(&bucket);

	if (!bk)
		return;
	for (int i = 0; i < ERB_WR_RING; i++) {
		if (f->wr[i].bucket == SLOT_FREE) {
			f->wr[i].idx = idx;
			f->wr[i].bucket = bucket;
			__sync_fetch_and_or(&f->wr_mask, 1U << i);
			__sync_fetch_and_add(&bk->inflight, 1);
			return;
		}
	}
	/* ring full: block every fill until this flow has no reply owed */
	wr_block(f, g);
}

/* A write of bucket b whose end cannot be seen: fence its fills and fast SETs. */
static __always_inline void bucket_fence(__u32 b)
{
	struct erb_bucket *bk = bucket_get(&b);

	if (bk)
		WRITE_ONCE(bk->fence_ns, bpf_ktime_get_ns());
}

/* Is bucket bk (or every bucket) inside an untracked write's quiet time? */
static __always_inline int fenced(struct erb_global *g, struct erb_bucket *bk)
{
	__u64 now = bpf_ktime_get_ns();

	return !bk || now - g->untracked_wr_ns < UNTRACKED_QUIET_NS ||
	       now - READ_ONCE(bk->fence_ns) < UNTRACKED_QUIET_NS;
}

/*
 * A walk over a flow's write slots (wr_walk()): one slot per bpf_loop step,
 * so the verifier checks a step once per call site instead of walking all
 * ERB_WR_RING slots on every path that gives a flow up (parse_step reaches
 * it on many). f->wr_mask says which slots may be in use: the walk ends after
 * the last of them (wr_acquire takes the lowest free slot, so a flow with
 * one write outstanding costs one step), and a flow with none costs no loop.
 * A slot is marked after it is filled and unmarked before it is freed; a
 * walk that misses a slot being filled on another CPU at that moment misses
 * a write whose reply cannot have come yet.
 */
#define WR_ALL		1	/* every slot, not only the answered ones */
#define WR_FENCE	2	/* fence each slot's bucket before releasing it */

struct wr_walk {
	struct erb_flow *f;
	__u32 replies;		/* without WR_ALL: release the slots with idx < replies */
	__u32 how;		/* WR_* */
};

static long wr_step(__u32 i, void *arg)
{
	struct wr_walk *w = arg;
	struct erb_flow *f = w->f;
	struct erb_bucket *bk;
	__u32 b;

	if (i >= ERB_WR_RING || !(READ_ONCE(f->wr_mask) >> i))
		return 1;
	b = f->wr[i].bucket;
	if (b == SLOT_FREE || (!(w->how & WR_ALL) && !before(f->wr[i].idx, w->replies)))
		return 0;
	if (w->how & WR_FENCE)
		bucket_fence(b & (ERB_INFLIGHT_BUCKETS - 1));
	__sync_fetch_and_and(&f->wr_mask, ~(1U << i));
	f->wr[i].bucket = SLOT_FREE;
	bk = bucket_get(&b);
	if (bk)
		__sync_fetch_and_sub(&bk->inflight, 1);
	return 0;
}

static __always_inline void wr_walk(struct erb_flow *f, __u32 replies, __u32 how)
{
	struct wr_walk w = { .f = f, .replies = replies, .how = how };

	if (READ_ONCE(f->wr_mask))
		bpf_loop(ERB_WR_RING, wr_step, &w, 0);
}

/* Release the slots of writes Redis has answered (idx < replies), or all. */
static __always_inline void wr_release(struct erb_flow *f, __u32 replies, int all)
{
	wr_walk(f, replies, all ? WR_ALL : 0);
}

static __always_inline void wr_unblock(struct erb_flow *f, struct erb_global *g)
{
	if (__sync_fetch_and_and(&f->flags, ~ERB_FLOW_WR_OVERFLOW) & ERB_FLOW_WR_OVERFLOW)
		__sync_fetch_and_sub(&g->overflow, 1);
}

static __always_inline void flow_release(struct erb_flow *f, struct erb_global *g)
{
	wr_release(f, 0, 1);
	wr_unblock(f, g);
}

/*
 * The flow's replies can no longer be matched to its commands: its write
 * slots become the untracked-write fence (fills and fast SETs wait it out),
 * so no slot and no overflow count stays behind for every other client.
 */
static __always_inline void flow_unmatched(struct erb_flow *f, struct erb_global *g)
{
	/* a blocked flow (MULTI, unknown keys): its writes may touch any bucket */
	if (f->flags & ERB_FLOW_WR_OVERFLOW)
		g->untracked_wr_ns = bpf_ktime_get_ns();
	/* each slot's bucket is fenced before its in-flight count goes down */
	wr_walk(f, 0, WR_ALL | WR_FENCE);
	wr_unblock(f, g);
}

/* Give up a tracked flow: never answer it again, parse it for writes only. */
static __always_inline void flow_untrack(struct erb_flow *f, struct erb_global *g)
{
	if (!(__sync_fetch_and_or(&f->flags, ERB_FLOW_UNTRACKED) & ERB_FLOW_UNTRACKED))
		stat_inc(ERB_STAT_FLOW_GIVEN_UP);
	f->req.resync = 1;
	f->req.state = ERB_P_TYPE;
	f->req.argc = 0;
	flow_unmatched(f, g);
}

/* Client bytes [lo, hi) of an untracked flow passed without being parsed. */
static __always_inline void flow_gap(struct erb_flow *f, __u32 lo, __u32 hi)
{
	if (f->gap_lo == f->gap_hi) {
		f->gap_lo = lo;
		f->gap_hi = hi;
		return;
	}
	if (before(lo, f->gap_lo))
		f->gap_lo = lo;
	if (after(hi, f->gap_hi))
		f->gap_hi = hi;
}

/* Drop the flow's kept out-of-order bytes, if any; 1 when there were some. */
static __always_inline int ooo_forget(struct erb_flow *f, struct erb_flow_key *k)
{
	if (!(__sync_fetch_and_and(&f->flags, ~ERB_FLOW_OOO) & ERB_FLOW_OOO))
		return 0;
	bpf_map_delete_elem(&erb_ooo, k);
	return 1;
}

static __always_inline void flow_delete(struct erb_flow_key *k, struct erb_flow *f,
					struct erb_global *g)
{
	flow_release(f, g);
	bpf_map_delete_elem(&erb_aux, k);
	ooo_forget(f, k);
	bpf_map_delete_elem(&erb_flows, k);
	stat_inc(ERB_STAT_FLOW_END);
}

#define FLOW_LINGER_NS	(60ULL * 1000000000ULL)	/* > 2 MSL of Linux (TIME_WAIT) */

/* erb_flow_gc's timer of a closed flow: delete the flow, and the timer's element. */
static int flow_gc(void *map, struct erb_flow_key *key, struct erb_flow_gc *t)
{
	struct erb_flow *f = bpf_map_lookup_elem(&erb_flows, key);

	/* a SYN may have reused the tuple meanwhile: then it is not ours */
	if (f && (f->flags & ERB_FLOW_CLOSED)) {
		bpf_map_delete_elem(&erb_flows, key);
		stat_inc(ERB_STAT_FLOW_END);
	}
	bpf_map_delete_elem(map, key);
	return 0;
}

/*
 * Both FINs are acknowledged. Keep correcting what still comes (a lost last
 * ACK makes the server resend its FIN) and let a timer delete the flow. The
 * timer of an earlier flow of the tuple may still be there (its flow was
 * replaced by a SYN, then closed too): it is armed again (init says -EBUSY).
 * Without a timer (erb_flow_gc full) the flow is deleted now. The element's one
 * field is the timer, which an update never copies: any 16 readable bytes do
 * for its value (g's), and erb_xdp's frame, which this is inlined in, keeps
 * its size (6.1 adds the frames of a call chain against 512 bytes).
 */
static __always_inline void flow_close(struct erb_flow_key *k, struct erb_flow *f,
				       struct erb_global *g)
{
	struct erb_flow_gc *t;

	if (f->flags & ERB_FLOW_CLOSED)
		return;
	flow_release(f, g);
	bpf_map_delete_elem(&erb_aux, k);
	ooo_forget(f, k);
	__sync_fetch_and_or(&f->flags, ERB_FLOW_CLOSED);
	bpf_map_update_elem(&erb_flow_gc, k, g, BPF_NOEXIST);
	t = bpf_map_lookup_elem(&erb_flow_gc, k);
	if (!t) {
		flow_delete(k, f, g);
		return;
	}
	bpf_timer_init(&t->timer, &erb_flow_gc, 1 /* CLOCK_MONOTONIC */);
	bpf_timer_set_callback(&t->timer, flow_gc);
	if (bpf_timer_start(&t->timer, FLOW_LINGER_NS, 0)) {
		bpf_map_delete_elem(&erb_flow_gc, k);
		flow_delete(k, f, g);
	}
}

#endif /* ERB_FLOW_H */
