// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ERB data path: XDP ingress answers Redis GET hits from a kernel cache, TC
 * egress keeps the two TCP stacks consistent and counts Redis's replies.
 *
 * Safety first (../../docs and DESIGN.md "When XDP may answer"): a GET is
 * answered only when the segment is exactly one GET (or a pipeline of GET
 * hits and fast SETs, erb_pipe.h), is the next expected segment, Redis owes
 * the flow nothing, the client has acknowledged every byte the server sent,
 * and the flow is in db 0, not in MULTI, not subscribed and authenticated.
 * Everything else is passed to Redis.
 *
 * Sequence numbers ("client view" = what the client sends/sees on the wire,
 * "server view" = what the server's TCP stack sends/sees):
 *   c: request bytes removed by answers. A client seq s maps to the server
 *      view as s - (s >= c.u->pos ? c.off_after : c.off_before); c.u->pos is the
 *      client-view end of the last answered request.
 *   s: reply bytes inserted by answers. A server seq q maps to the client
 *      view as q + (q >= s.pos ? s.off_after : s.off_before); s.pos is the
 *      server-view position where the last answer was inserted.
 * Like netfilter's seqadj, only the last correction keeps two offsets.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "erb.h"
#include "erb_record.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The loader sets cfg; other defaults build the verifier-test variants. */
#ifndef ERB_DEFAULT_FLAGS
#define ERB_DEFAULT_FLAGS	(ERB_CFG_ANSWER | ERB_CFG_FILL)
#endif

const volatile struct erb_config cfg = {
	.layout_version = ERB_LAYOUT_VERSION,
	.redis_port = 6379,
	.max_key_len = 128,
	.max_value_len = 1024,
	.max_probes = ERB_MAX_PROBES,
	.cache_entries = 1024,
	.hash_prime = 1021,
	.require_auth = 0,
	.flags = ERB_DEFAULT_FLAGS,
};

#define FNV_OFFSET	2166136261U
#define FNV_PRIME	16777619U
#define WIN		2048		/* parse window (bytes) */
#define WIN_MASK	(WIN - 1)
#define MAX_WINDOWS	33		/* 64 KiB GSO skb + slack */
#define MAX_STEPS	(WIN + 8)
#define REP_HDR		8		/* room for "$1400\r\n" before the value */
#define SLOT_FREE	0xffffffffU
#define KEYQ		64
#define LOCK_SPINS	512		/* tries at a bucket lock another CPU holds */
/*
 * A segment the hold rule would drop first waits this long for the I/O path
 * to apply the writes acknowledged before it: the agent (or erb_io) on
 * another CPU usually needs tens of microseconds, a dropped segment costs
 * the client a retransmission timeout (200 ms or more for one segment).
 */
#define HOLD_WAIT_NS	300000ULL
#define HOLD_WAIT_SPINS	(1 << 16)
#define UNTRACKED_QUIET_NS	1000000000ULL
#define HASH_CLIENT	0x6d3cd99eU	/* FNV-1a("CLIENT"), checked by a test */
#define HASH_REPLY	0xd3d94fc7U	/* FNV-1a("REPLY") */
#define HASH_HELLO	0x32543b0bU	/* FNV-1a("HELLO") */
#define HASH_HGETALL	0x2004caf8U	/* FNV-1a("HGETALL") */
#define HASH_GET	0x96e6be77U	/* FNV-1a("GET") */
#define HASH_TRACKING	0xfb4df9fcU	/* FNV-1a("TRACKING") */
#define HASH_CACHING	0x3f76dfbeU	/* FNV-1a("CACHING") */
#define RC_PIPELINE	(-4)		/* try_answer: not one command, maybe a pipeline (erb_pipe.h) */
#define READ_ONCE(x)	(*(volatile typeof(x) *)&(x))
#define WRITE_ONCE(x, v)	(*(volatile typeof(x) *)&(x) = (v))

#include "erb_maps.h"
#include "erb_cache.h"
#include "erb_flow.h"
#include "erb_req.h"
#include "erb_rep.h"
#include "erb_seqadj.h"

/* ------------------------------------------------------------- XDP */

struct pkt {
	struct ethhdr *eth;
	struct iphdr *ip;
	struct tcphdr *tcp;
	__u32 thl;		/* TCP header length */
	__u32 poff;		/* payload offset from the frame start */
	__u32 plen;		/* payload length */
	__u32 odd;		/* TCP options we could not read: never answer */
};

static long opt_step(__u32 unused, void *arg)
{
	struct erb_scratch *s = *(struct erb_scratch **)arg;
	__u32 i, kind, olen;

	if (!s)
		return 1;
	i = s->oc.i;
	if (i >= s->oc.len || i >= 40)
		return 1;
	kind = s->opt[i];
	if (kind == 0)
		return 1;
	if (kind == 1) {
		s->oc.i = i + 1;
		return 0;
	}
	if (i + 1 >= s->oc.len || i >= 39) {
		s->oc.bad = 1;
		return 1;
	}
	olen = s->opt[i + 1];
	if (olen < 2 || i + olen > s->oc.len) {
		s->oc.bad = 1;
		return 1;
	}
	if (kind == 8 && olen == 10 && i <= 30) {
		s->oc.ts_off = sizeof(struct tcphdr) + i;
		s->oc.tsval = (__u32)s->opt[i + 2] << 24 | (__u32)s->opt[i + 3] << 16 |
			      (__u32)s->opt[i + 4] << 8 | s->opt[i + 5];
		s->oc.tsecr = (__u32)s->opt[i + 6] << 24 | (__u32)s->opt[i + 7] << 16 |
			      (__u32)s->opt[i + 8] << 8 | s->opt[i + 9];
	} else if (kind == 5 && olen >= 10 && (olen - 2) % 8 == 0) {
		s->oc.sack_off = sizeof(struct tcphdr) + i;
		s->oc.sack_n = (olen - 2) / 8;
	} else if (kind == 3 && olen == 3) {
		s->oc.wscale = s->opt[i + 2] + 1;
	} else if (kind == 2 && olen == 4) {
		s->oc.mss = (__u32)s->opt[i + 2] << 8 | s->opt[i + 3];
	}
	s->oc.i = i + olen;
	return 0;
}

/* Options that start NOP NOP TS, the layout Linux sends (4 bytes at o checked) */
static __always_inline int nop_nop_ts(const __u8 *o)
{
	return o[0] == 1 && o[1] == 1 && o[2] == 8 && o[3] == 10;
}

/* TCP options of a client segment: timestamps and SACK positions. */
static __always_inline int xdp_tcp_opts(struct xdp_md *ctx, struct pkt *k, struct tcp_opts *o,
					struct erb_scratch *s)
{
	void *end = (void *)(long)ctx->data_end;
	__u8 *opt = (__u8 *)(k->tcp + 1);
	__u32 len = k->thl - sizeof(struct tcphdr);

	o->ts_off = 0;
	o->sack_off = 0;
	o->sack_n = 0;
	o->wscale = 0;
	o->mss = 0;
	if (len == 0)
		return 0;
	if (len == 12 && (void *)(opt + 12) <= end && nop_nop_ts(opt)) {
		o->ts_off = sizeof(struct tcphdr) + 2;
		o->tsval = bpf_ntohl(*(__u32 *)(opt + 4));
		o->tsecr = bpf_ntohl(*(__u32 *)(opt + 8));
		return 0;
	}
	if (!len_in(len, 1, 40) || bpf_xdp_load_bytes(ctx, k->poff - len, s->opt, arg_len(len, 1, 40)))
		return -1;
	__builtin_memset(&s->oc, 0, sizeof(s->oc));
	s->oc.len = len;
	bpf_loop(20, opt_step, &s, 0);
	if (s->oc.bad)
		return -1;
	o->ts_off = s->oc.ts_off;
	o->tsval = s->oc.tsval;
	o->tsecr = s->oc.tsecr;
	o->sack_off = s->oc.sack_off;
	o->sack_n = s->oc.sack_n;
	o->wscale = s->oc.wscale;
	o->mss = s->oc.mss;
	return 0;
}

/* Rewrite seq/ack/SACK of a client segment into the server view. */
static __always_inline void xdp_correct(struct xdp_md *ctx, struct pkt *k,
					struct erb_flow *f, struct tcp_opts *o)
{
	void *end = (void *)(long)ctx->data_end;
	struct tcphdr *t = k->tcp;
	__u32 seq = bpf_ntohl(t->seq), ack = bpf_ntohl(t->ack_seq), v;

	v = map_cseq(&f->c, seq);
	if (v != seq) {
		csum_replace4(&t->check, t->seq, bpf_htonl(v));
		t->seq = bpf_htonl(v);
	}
	if (t->ack) {
		v = map_cack(&f->s, ack);
		if (v != ack) {
			csum_replace4(&t->check, t->ack_seq, bpf_htonl(v));
			t->ack_seq = bpf_htonl(v);
		}
	}
	if (o->sack_off) {
		__u8 *b = (__u8 *)t + (o->sack_off & 63) + 2;

		for (int i = 0; i < 8; i++) {
			__u32 *e = (__u32 *)(b + 4 * i);
			__u32 old, nv;

			if ((__u32)i >= o->sack_n * 2 || (void *)(e + 1) > end)
				break;
			old = bpf_ntohl(*e);
			nv = map_cack(&f->s, old);
			if (nv != old) {
				csum_replace4(&t->check, *e, bpf_htonl(nv));
				*e = bpf_htonl(nv);
			}
		}
	}
	stat_inc(ERB_STAT_CORRECTED_IN);
}

/* Parse the client's new bytes [from, plen) of this segment (its payload at poff). */
static __always_inline int xdp_parse(struct xdp_md *ctx, __u32 poff, __u32 plen, struct pctx *c,
				     __u32 from)
{
	for (int w = 0; w < 2; w++) {
		__u32 base = from + w * WIN, n;

		if (base >= plen)
			break;
		n = plen - base;
		if (n > WIN)
			n = WIN;
		if (!len_in(n, 1, WIN) || bpf_xdp_load_bytes(ctx, poff + base, c->s->buf, arg_len(n, 1, WIN)))
			return -1;
		c->u->pos = 0;
		c->u->end = n;
		c->u->win_base = base;
		c->u->a1_off = c->u->a2_off = -1;
		bpf_loop(MAX_STEPS, req_step, c, 0);
	}
	if (plen - from > 2 * WIN) {
		/* jumbo segment: we cannot see it all */
		req_error(c, &c->f->req);
	}
	return 0;
}

/*
 * The kept out-of-order bytes [from, len) that follow the segment's own: the
 * parser goes on over them as if they were in this segment.
 */
struct ooo_copy {
	struct erb_scratch *s;
	struct erb_ooo *st;
	__u32 from;
};

/* 8 bytes of the kept ones into the parse window (no probe_read: lockdown) */
static long ooo_copy_step(__u32 i, void *arg)
{
	struct ooo_copy *x = arg;

	if (!x->s || !x->st)
		return 1;
	*(__u64 *)(x->s->buf + (i & (WIN / 8 - 1)) * 8) =
		*(__u64 *)(x->st->data + (x->from & (ERB_OOO_MAX - 1)) + (i & (WIN / 8 - 1)) * 8);
	return 0;
}

static __always_inline void ooo_parse(struct pctx *c, struct erb_ooo *st, __u32 from)
{
	struct ooo_copy x = { .s = c->s, .st = st, .from = from };
	struct pcur *u = c->u;
	__u32 n, cap = u->cap, idx = u->cap_idx, ko = u->cap_koff, kl = u->cap_klen;
	__u32 vo = u->cap_voff, vl = u->cap_vlen;

	if (!st || !before(from, st->len))
		return;
	n = st->len - from;
	if (!len_in(n, 1, WIN) || from >= ERB_OOO_MAX) {
		req_error(c, &c->f->req);
		return;
	}
	bpf_loop((n + 7) / 8, ooo_copy_step, &x, 0);
	u->pos = 0;
	u->end = n;
	u->win_base = 0;
	u->a1_off = u->a2_off = -1;
	bpf_loop(MAX_STEPS, req_step, c, 0);
	/* a SET there has no bytes in this frame to fill the cache from */
	u->cap = cap;
	u->cap_idx = idx;
	u->cap_koff = ko;
	u->cap_klen = kl;
	u->cap_voff = vo;
	u->cap_vlen = vl;
}

struct kctx {
	struct erb_flow *f;
	struct erb_scratch *s;
	struct erb_global *g;
	__u32 tracked;
	__u64 applied;
};

struct lctx {
	__u32 *lock;
	__u32 token;
	__u32 old;
};

/* One attempt at a bucket lock; stops once it is ours. */
static long lock_try(__u32 i, void *arg)
{
	struct lctx *l = arg;

	if (!l->lock)
		return 1;
	l->old = __sync_val_compare_and_swap(l->lock, 0, l->token);
	return l->old == 0 || l->old == l->token;
}

/* Pass 1: lock every key's bucket, fail if a fast-path write is pending. */
static long hold_step(__u32 i, void *arg)
{
	struct kctx *x = arg;
	__u32 h, b, *lock, token, old;

	if (!x->s || !x->g)
		return 1;
	h = x->s->keyq[i & (KEYQ - 1)];
	b = bucket_of(h);
	lock = bucket_lock(&b);
	if (!lock)
		return 1;
	/*
	 * The lock holds the CPU's token: a key (or a key of the same bucket)
	 * seen twice in this segment finds it already ours. XDP runs to the
	 * end on its CPU, so no fast SET of this CPU can hold it meanwhile.
	 */
	token = bpf_get_smp_processor_id() + 1;
	old = __sync_val_compare_and_swap(lock, 0, token);
	if (old != 0 && old != token) {
		/*
		 * Another CPU's fast SET (or passed write) holds it for a few
		 * hundred nanoseconds: wait a little rather than cost the client
		 * an RTO; then check what its SET left pending.
		 */
		struct lctx l = { .lock = lock, .token = token, .old = old };

		bpf_loop(LOCK_SPINS, lock_try, &l, 0);
		if (l.old != 0 && l.old != token) {
			/* still taken (its CPU stalled): wait, else retry later */
			x->s->cur.held = 2;
			x->s->cur.busy_b = b;
			return 1;
		}
	}
	x->s->cur.nlocked = i + 1;
	if (x->s->cur.pending && key_pending(h, x->applied)) {
		x->s->cur.held = 1;
		return 1;
	}
	return 0;
}

static long unlock_step(__u32 i, void *arg)
{
	struct kctx *x = arg;
	__u32 b, *lock;

	if (!x->s)
		return 1;
	b = bucket_of(x->s->keyq[i & (KEYQ - 1)]);
	lock = bucket_lock(&b);
	/* only ours: a bucket seen twice is released at its first key */
	if (lock)
		__sync_val_compare_and_swap(lock, bpf_get_smp_processor_id() + 1, 0);
	return 0;
}

/* Pass 2: written keys block fills and are invalidated (buckets locked). */
static long key_step(__u32 i, void *arg)
{
	struct kctx *x = arg;
	struct erb_flow *f = x->f;
	struct erb_global *g = x->g;
	__u32 h, b, *ep;

	if (!f || !g || !x->s)
		return 1;
	if (!x->s->keyq_w[i & (KEYQ - 1)])
		return 0;
	h = x->s->keyq[i & (KEYQ - 1)];
	b = bucket_of(h);
	ep = bpf_map_lookup_elem(&erb_wepoch, &b);
	if (ep)
		__sync_fetch_and_add(ep, 1);
	if (x->tracked) {
		wr_acquire(f, g, x->s->keyq_idx[i & (KEYQ - 1)], b);
	} else {
		/* replies of this flow cannot be matched: fence the bucket a while */
		bucket_fence(b);
		stat_inc(ERB_STAT_UNTRACKED_WRITE);
	}
	return 0;
}

/*
 * Pass 3: the written keys' cache entries deleted, every probe of every key
 * one step of one bpf_loop (step i: key i / ERB_MAX_PROBES, probe i %
 * ERB_MAX_PROBES). Not a loop in key_step(): on 6.1 a fourth frame (erb_xdp,
 * parse_step, key_step, its probe) is over the 512-byte stack limit.
 */
static long inval_key_step(__u32 i, void *arg)
{
	struct erb_scratch *s = ((struct kctx *)arg)->s;
	__u32 k = (i / ERB_MAX_PROBES) & (KEYQ - 1), p = i % ERB_MAX_PROBES;

	if (!s)
		return 1;
	if (p == 0) {
		s->ic.skip = !s->keyq_w[k];
		inval_start(s, s->keyq[k]);
	}
	if (!s->ic.skip && p < cfg.max_probes && inval_probe(s, p))
		s->ic.skip = 1;
	if (p == ERB_MAX_PROBES - 1 && s->ic.n)
		stat_inc(ERB_STAT_INVALIDATE);
	return 0;
}

static __always_inline __u32 keyq_len(struct pcur *u)
{
	return u->nkeys > KEYQ ? KEYQ : u->nkeys;
}

/*
 * The hold rule: a segment whose commands touch a key with an acknowledged
 * write Redis does not have yet (or that may write unknown keys while any
 * write is pending) is dropped; TCP retransmits it. Returns 1 to hold. On 0
 * the touched buckets stay locked until xdp_effects() releases them.
 */
static __always_inline int xdp_hold(struct pctx *c)
{
	struct kctx x = { .f = c->f, .s = c->s, .g = c->g };
	struct pcur *u = c->u;
	__u32 n = keyq_len(u);

	x.applied = c->g->applied_seq;
	if (u->pending && (u->flush || u->keyq_full || u->wait))
		return 1;
	if (!n)
		return 0;
	/*
	 * Lock the buckets even with nothing pending: key_step() counts the
	 * writes (erb_bucket.inflight) under the lock, and a fast SET checks that
	 * count under the same lock, so one of the two always sees the other.
	 */
	u->nlocked = 0;
	u->held = 0;
	bpf_loop(n, hold_step, &x, 0);
	if (u->held) {
		if (u->nlocked)
			bpf_loop(u->nlocked > KEYQ ? KEYQ : u->nlocked, unlock_step, &x, 0);
		u->nlocked = 0;
		return 1;
	}
	return 0;
}

/* Apply what the segment's commands did to the flow, then unlock. */
static __always_inline void xdp_effects(struct pctx *c, __u32 fl_orig)
{
	struct kctx x = { .f = c->f, .s = c->s, .g = c->g };
	struct pcur *u = c->u;
	struct erb_flow *f = c->f;
	__u32 set = u->fl & ~fl_orig, clr = fl_orig & ~u->fl;

	x.tracked = u->tracked;
	x.applied = c->g->applied_seq;
	if (u->nkeys) {
		bpf_loop(keyq_len(u), key_step, &x, 0);
		c->s->ic.applied = x.applied;
		bpf_loop(keyq_len(u) * ERB_MAX_PROBES, inval_key_step, &x, 0);
	}
	if (u->nlocked)
		bpf_loop(u->nlocked > KEYQ ? KEYQ : u->nlocked, unlock_step, &x, 0);
	if (u->flush || u->keyq_full || u->block) {
		if (u->tracked)
			wr_block(f, c->g);
		else
			c->g->untracked_wr_ns = bpf_ktime_get_ns();
	}
	if (u->flush || u->keyq_full)
		cache_flush(c->g);
	if (set)
		__sync_fetch_and_or(&f->flags, set);
	if (set & ERB_FLOW_UNTRACKED)
		flow_unmatched(f, c->g);
	if (clr)
		__sync_fetch_and_and(&f->flags, ~clr);
	if (u->auth_idx)
		f->auth_idx = u->auth_idx;
	if (u->err)
		stat_inc(ERB_STAT_PARSE_ERROR);
	f->cmds += u->ncmds;
	if (u->ncmds)
		stat_add(ERB_STAT_CMDS_PASSED, u->ncmds);
}

/*
 * Copy a captured SET (or HGETALL, or GET) into erb_aux; its +OK (or reply)
 * will fill the cache. Returns the flow's new fill_idx (the command's index + 1), 0 for
 * no fill.
 *
 * A global function, like erb_parse() (see global_env()): inline in
 * parse_step, its branches were checked again on every path of the parser
 * that reaches it. It looks the maps up itself; the caller stores the result
 * in the flow.
 */
__attribute__((noinline)) int erb_capture(struct xdp_md *ctx, struct pcur *u, __u32 poff)
{
	struct erb_scratch *s = scratch();
	struct erb_global *g = global();
	struct erb_aux *a;
	struct erb_bucket *bk;
	__u32 kl, vl, h, b, *ep;

	if (!u || !s || !g)
		return 0;
	a = bpf_map_lookup_elem(&erb_aux, &s->pa.key);
	kl = u->cap_klen;
	vl = u->cap_vlen;
	if (!a || kl == 0 || kl > ERB_KEY_MAX || vl > ERB_VAL_MAX)
		return 0;
	__builtin_memset(a->fill_key, 0, ERB_KEY_MAX);
	if (!len_in(kl, 1, ERB_KEY_MAX) ||
	    bpf_xdp_load_bytes(ctx, poff + u->cap_koff, a->fill_key, arg_len(kl, 1, ERB_KEY_MAX)))
		return 0;
	if (vl && (!len_in(vl, 1, ERB_VAL_MAX) ||
		   bpf_xdp_load_bytes(ctx, poff + u->cap_voff, a->fill_val, arg_len(vl, 1, ERB_VAL_MAX))))
		return 0;
	h = fnv_key(s, a->fill_key, kl);
	b = bucket_of(h);
	bk = bucket_get(&b);
	ep = bpf_map_lookup_elem(&erb_wepoch, &b);
	/* another write of this bucket is in flight: Redis may run it after */
	if (!bk || !ep || READ_ONCE(bk->inflight) != (u->cap == 1 ? 1 : 0))
		return 0;
	a->fill_type = u->cap == 2 ? ERB_TYPE_HASH : u->cap == 3 ? ERB_TYPE_STRING_UNVERIFIED : ERB_TYPE_STRING;
	a->fill_hash = h;
	a->fill_bucket = b;
	a->fill_klen = kl;
	a->fill_vlen = vl;
	a->fill_epoch = *ep;
	a->fill_gen = g->cache_gen;
	return u->cap_idx + 1;
}

/*
 * "*<N>\r\n$4\r\nMGET\r\n" at b[0] (name in any case), N 2..ERB_PIPE_MAX+1:
 * its key count N - 1, *off past it; else -1.
 */
static __always_inline int mget_head(const char *b, __u32 *off)
{
	__u32 n, i = 2;

	if (b[0] != '*' || b[1] < '1' || b[1] > '9')
		return -1;
	n = b[1] - '0';
	if (b[2] >= '0' && b[2] <= '9') {
		n = n * 10 + (b[2] - '0');
		i = 3;
	}
	if (n < 2 || n > ERB_PIPE_MAX + 1 || b[i] != '\r' || b[i + 1] != '\n' || b[i + 2] != '$' ||
	    b[i + 3] != '4' || b[i + 4] != '\r' || b[i + 5] != '\n' || upper(b[i + 6]) != 'M' ||
	    upper(b[i + 7]) != 'G' || upper(b[i + 8]) != 'E' || upper(b[i + 9]) != 'T' ||
	    b[i + 10] != '\r' || b[i + 11] != '\n')
		return -1;
	*off = i + 12;
	return n - 1;
}

/*
 * "*<argc>\r\n$3\r\n<NAME>\r\n$<n>\r\n": the command NAME (3 letters, any case)
 * with its first argument's length n. Returns n and sets *off to the first
 * argument's bytes, else -1. Redis rejects "$01" (and closes the
 * connection): so do we.
 */
static __always_inline int parse_head(const char *b, char argc, char c0, char c1, char c2,
				      __u32 *off)
{
	__u32 n = 0, i;

	if (b[0] != '*' || b[1] != argc || b[2] != '\r' || b[3] != '\n' || b[4] != '$' ||
	    b[5] != '3' || b[6] != '\r' || b[7] != '\n' || upper(b[8]) != c0 ||
	    upper(b[9]) != c1 || upper(b[10]) != c2 || b[11] != '\r' || b[12] != '\n' ||
	    b[13] != '$')
		return -1;
	for (i = 14; i < 18; i++) {
		char ch = b[i];

		if (ch == '\r')
			break;
		if (ch < '0' || ch > '9')
			return -1;
		n = n * 10 + (ch - '0');
	}
	if (i == 14 || i == 18 || b[14] == '0' || b[(i + 1) & WIN_MASK] != '\n')
		return -1;
	*off = i + 2;
	return n;
}

/*
 * Is the payload exactly "*2\r\n$3\r\nGET\r\n$<n>\r\n<key>\r\n"? Returns the key
 * length and sets *koff, else -1. s->buf holds the payload.
 */
static __always_inline int parse_get(struct erb_scratch *s, __u32 plen, __u32 *koff)
{
	const char *b = s->buf;
	__u32 i;
	int n;

	if (plen < 19 || plen > WIN)
		return -1;
	n = parse_head(b, '2', 'G', 'E', 'T', &i);
	if (n <= 0 || n > ERB_KEY_MAX || i + n + 2 != plen)
		return -1;
	if (b[(i + n) & WIN_MASK] != '\r' || b[(i + n + 1) & WIN_MASK] != '\n')
		return -1;
	*koff = i;
	return n;
}

/*
 * Is the payload exactly "*2\r\n$7\r\nHGETALL\r\n$<n>\r\n<key>\r\n" (name in
 * any case)? Returns the key length and sets *koff, else -1.
 */
static __always_inline int parse_hgetall(struct erb_scratch *s, __u32 plen, __u32 *koff)
{
	const char *b = s->buf;
	__u32 n = 0, i;

	if (plen < 24 || plen > WIN)
		return -1;
	if (b[0] != '*' || b[1] != '2' || b[2] != '\r' || b[3] != '\n' || b[4] != '$' ||
	    b[5] != '7' || b[6] != '\r' || b[7] != '\n' || upper(b[8]) != 'H' ||
	    upper(b[9]) != 'G' || upper(b[10]) != 'E' || upper(b[11]) != 'T' ||
	    upper(b[12]) != 'A' || upper(b[13]) != 'L' || upper(b[14]) != 'L' ||
	    b[15] != '\r' || b[16] != '\n' || b[17] != '$')
		return -1;
	for (i = 18; i < 22; i++) {
		char ch = b[i];

		if (ch == '\r')
			break;
		if (ch < '0' || ch > '9')
			return -1;
		n = n * 10 + (ch - '0');
	}
	if (i == 18 || i == 22 || b[18] == '0' || b[(i + 1) & WIN_MASK] != '\n')
		return -1;
	i += 2;
	if (n == 0 || n > ERB_KEY_MAX || i + n + 2 != plen)
		return -1;
	if (b[(i + n) & WIN_MASK] != '\r' || b[(i + n + 1) & WIN_MASK] != '\n')
		return -1;
	*koff = i;
	return n;
}

/*
 * A cached HGETALL reply (RESP2's "*<n>\r\n" + bulks, vl bytes in s->rep) as
 * RESP3's "%<n/2>\r\n" + the same bulks: the map's header, no longer than the
 * array's, ends where that one did. Returns 0, or -1 (not such an array).
 */
static __always_inline int hash_as_map(struct erb_scratch *s, __u32 vl, __u32 *rstart, __u32 *rlen)
{
	__u32 n = 0, hl = 0, nh, at;

	if (s->rep[0] != '*')
		return -1;
#pragma unroll
	for (__u32 i = 1; i < 5; i++) {
		char ch = s->rep[i];

		if (ch == '\r') {
			hl = i + 2;
			break;
		}
		if (ch < '0' || ch > '9')
			return -1;
		n = n * 10 + (ch - '0');
	}
	if (hl < 4 || (n & 1) || n < 2 || hl >= vl || s->rep[hl - 1] != '\n')
		return -1;
	n /= 2;
	nh = agg_hdr_len(n);
	if (nh > hl)
		return -1;
	at = hl - nh;
	if (agg_hdr(s->rep + (at & 3), '%', n) != nh)
		return -1;
	*rstart = at;
	*rlen = vl - at;
	return 0;
}

/*
 * The protocol a flow speaks, for the replies that differ: 1 RESP2 (it never
 * sent HELLO, or its last HELLO was answered with an array), 2 RESP3 (with a
 * map), 0 unknown (no nil nor hash answered).
 */
static __always_inline int resp_form(__u32 fl)
{
	fl &= ERB_FLOW_HELLO | ERB_FLOW_RESP2 | ERB_FLOW_RESP3;
	if (!(fl & ERB_FLOW_HELLO) || fl == (ERB_FLOW_HELLO | ERB_FLOW_RESP2))
		return 1;
	return fl == (ERB_FLOW_HELLO | ERB_FLOW_RESP3) ? 2 : 0;
}

/*
 * Look the key up; on a hit of an entry of this type leave the reply payload
 * in s->rep: "$<n>\r\n<value>\r\n" for a string, the stored bytes for a hash
 * (RESP2's array; for a RESP3 flow with the map's header instead). A string
 * lookup also takes a key cached as absent: "$-1\r\n" (RESP2) or "_\r\n"
 * (RESP3). proto: resp_form(). Returns 0 (a hit), 1 (a nil hit) or -1 (a miss).
 */
static __always_inline int cache_get(struct erb_scratch *s, __u32 klen, __u32 h,
				     __u32 gen, __u32 type, int proto, __u32 *rstart, __u32 *rlen)
{
	struct erb_entry *e;
	__u32 idx, v1, vl, hl, d, et;

	cache_probe(s, s->key, klen, h, gen, 1);
	if (s->pr.hit < 0)
		return -1;
	idx = s->pr.hit;
	v1 = s->pr.ver;
	if (v1 & 1)
		return -1;
	e = bpf_map_lookup_elem(&erb_cache, &idx);
	if (!e)
		return -1;
	vl = e->vlen;
	et = READ_ONCE(e->type);
	if (et == ERB_TYPE_NIL && type == ERB_TYPE_STRING && proto) {
		/* cached as absent: the flow's nil, zero-padded for the checksum */
		if (READ_ONCE(e->ver) != v1 || e->state != ERB_ENTRY_VALID || e->hash != h)
			return -1;
		if (proto == 1) {
			__builtin_memcpy(s->rep, "$-1\r\n\0\0\0", 8);
			*rlen = 5;
		} else {
			__builtin_memcpy(s->rep, "_\r\n\0\0\0\0\0", 8);
			*rlen = 3;
		}
		*rstart = 0;
		return 1;
	}
	if (vl > cfg.max_value_len || vl > ERB_VAL_MAX || et != type)
		return -1;
	if (type == ERB_TYPE_HASH) {
		if (!len_in(vl, 1, ERB_VAL_MAX))
			return -1;
		bpf_probe_read_kernel(s->rep, arg_len(vl, 1, ERB_VAL_MAX), e->val);
		if (READ_ONCE(e->ver) != v1 || e->state != ERB_ENTRY_VALID || e->hash != h ||
		    e->type != type)
			return -1;
		/* zero pad read by the checksum */
		vl = arg_len(vl, 1, ERB_VAL_MAX);
		s->rep[vl] = 0;
		s->rep[vl + 1] = 0;
		s->rep[vl + 2] = 0;
		*rstart = 0;
		*rlen = vl;
		if (proto == 2)
			return hash_as_map(s, vl, rstart, rlen);
		return proto ? 0 : -1;
	}
	/* the value only (not all ERB_VAL_MAX bytes): this is the hit path */
	if (len_in(vl, 1, ERB_VAL_MAX))
		bpf_probe_read_kernel(s->rep + REP_HDR, arg_len(vl, 1, ERB_VAL_MAX), e->val);
	if (READ_ONCE(e->ver) != v1 || e->state != ERB_ENTRY_VALID || e->hash != h ||
	    e->type != type)
		return -1;
	/* "$<vl>\r\n" right-aligned before the value */
	s->rep[6] = '\r';
	s->rep[7] = '\n';
	d = vl;
	hl = 3;
	s->rep[5] = '0' + d % 10;
	d /= 10;
	if (d) {
		s->rep[4] = '0' + d % 10;
		d /= 10;
		hl++;
		if (d) {
			s->rep[3] = '0' + d % 10;
			d /= 10;
			hl++;
			if (d) {
				s->rep[2] = '0' + d % 10;
				hl++;
			}
		}
	}
	s->rep[(REP_HDR - hl - 1) & 7] = '$';
	hl++;
	d = REP_HDR + vl;
	if (!len_in(d, REP_HDR, ERB_REPLY_MAX - 5))
		return -1;
	s->rep[d] = '\r';
	s->rep[d + 1] = '\n';
	s->rep[d + 2] = 0;
	s->rep[d + 3] = 0;
	s->rep[d + 4] = 0;
	*rstart = REP_HDR - hl;
	*rlen = hl + vl + 2;
	return 0;
}

/* Reply payloads up to this many bytes are summed without bpf_csum_diff() (PSUM8 x 4). */
#define PAYLOAD_SUM_INLINE	128
#define PSUM(i)		do { if (len4 <= (i) * 4) return sum; sum += w[(i)]; } while (0)
#define PSUM8(i)	do { PSUM(i); PSUM((i) + 1); PSUM((i) + 2); PSUM((i) + 3); \
			     PSUM((i) + 4); PSUM((i) + 5); PSUM((i) + 6); PSUM((i) + 7); } while (0)

/* Sum of the reply payload (s->rep + start, len) for the TCP checksum. */
static __always_inline __u64 payload_sum(const char *rep, __u32 start, __u32 len)
{
	__u64 sum = 0;
	__u32 len4 = (len + 3) & ~3U;

	/* a short reply (a GET hit of a small value, +OK) summed here: no helper call */
	if (len4 <= PAYLOAD_SUM_INLINE) {
		const __u32 *w = (const __u32 *)(rep + (start & 7));

		PSUM8(0);
		PSUM8(8);
		PSUM8(16);
		PSUM8(24);
		return sum;
	}

	for (int i = 0; i < 3; i++) {
		__u32 off = i * 512, n;
		__s64 r;

		if (off >= len4)
			break;
		n = len4 - off;
		if (n > 512)
			n = 512;
		if (n > ERB_REPLY_MAX - 8 - off)
			n = ERB_REPLY_MAX - 8 - off;
		start &= 7;
		r = bpf_csum_diff(0, 0, (__be32 *)(rep + start + off), n, 0);
		if (r < 0)
			break;
		sum += (__u32)r;
	}
	return sum;
}

/* Linux's TSval clock: CLOCK_MONOTONIC in ms (tcp_clock_ns() / NSEC_PER_MSEC) */
static __always_inline __u32 ts_ms_now(void)
{
	return (__u32)(bpf_ktime_get_ns() / 1000000);
}

/*
 * Learn Redis's TSval clock from its segments (TC egress). Linux stamps a
 * segment with TSval = the ms clock + a per-connection offset; ts_base is that
 * offset as seen here, where the ms clock may have ticked once since the
 * stamp. Trusted (ERB_FLOW_TSCLK) once two segments at least 4 ms apart
 * agree on it within 1 ms, and kept at the later of agreeing bases. A
 * connection whose TSvals run on another clock (tcp_usec_ts: microseconds)
 * never agrees and keeps answers at the client's TSecr.
 */
static __always_inline void ts_learn(struct erb_flow *f, __u32 tsval)
{
	__u32 b = tsval - ts_ms_now();
	__s32 d = (__s32)(b - f->ts_base);

	if (!f->ts_last) {
		f->ts_base = b;
		f->ts_last = tsval;
		return;
	}
	if ((__s32)(tsval - f->ts_last) < 4)
		return;		/* too close to the last check (or older): tells nothing */
	if (d >= -1 && d <= 1) {
		if (d > 0)
			f->ts_base = b;
		if (!(f->flags & ERB_FLOW_TSCLK))
			__sync_fetch_and_or(&f->flags, ERB_FLOW_TSCLK);
	} else {
		f->ts_base = b;
		if (f->flags & ERB_FLOW_TSCLK)
			__sync_fetch_and_and(&f->flags, ~ERB_FLOW_TSCLK);
	}
	f->ts_last = tsval;
}

/*
 * The TSval of an answer: the TSval Redis would send now, less the 1 ms the
 * clock may be ahead of a stamp (PAWS forgives 1), when its clock is known;
 * never older than the client's TSecr or our last answer's. An older one is
 * dropped by PAWS when a Redis segment sent meanwhile reaches the client first
 * (a retransmission after an RTO, whose ACK was on a request we answered):
 * the client then waits for its own RTO, twice.
 */
static __always_inline __u32 ts_answer(struct erb_flow *f, __u32 tsecr)
{
	__u32 v = tsecr;

	if (f->flags & ERB_FLOW_TSCLK) {
		__u32 now = f->ts_base + ts_ms_now() - 1;

		if (after(now, v))
			v = now;
	}
	if (f->s_tsval && after(f->s_tsval, v))
		v = f->s_tsval;
	return v;
}

/*
 * Turn the request frame into the reply: headers swapped, payload s->rep,
 * seq/ack as given, TSval o->ans_tsval and TSecr the request's TSval, full
 * checksums. Returns XDP_TX or -1 (frame untouched when -1).
 */
static __always_inline int xdp_reply(struct xdp_md *ctx, struct pkt *k, struct tcp_opts *o,
				     const char *rep, __u32 rstart, __u32 rlen,
				     __u32 seq, __u32 ack, __u16 win)
{
	struct erb_scratch *s = scratch();
	struct rhdr *h;
	void *data, *end;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct tcphdr *t;
	__u32 *opt;
	__u64 sum;
	__u16 tot, ttl_proto, off_flags;
	int delta;

	if (!s || rlen == 0 || rlen > ERB_REPLY_MAX - 8)
		return -1;
	/* what the reply needs from the request, kept off the stack */
	h = &s->h;
	__builtin_memcpy(h->mac, k->eth->h_source, ETH_ALEN);
	__builtin_memcpy(h->smac, k->eth->h_dest, ETH_ALEN);
	h->saddr = k->ip->saddr;
	h->daddr = k->ip->daddr;
	h->sport = k->tcp->source;
	h->dport = k->tcp->dest;
	h->thl = o->ts_off ? 32 : 20;
	h->tsval = o->ans_tsval;
	h->tsecr = o->tsval;
	h->seq = seq;
	h->ack = ack;
	h->win = win;
	h->rlen = rlen;
	/* the frame is linear (these programs do not take XDP frags): its length, without a helper */
	delta = (int)(sizeof(struct ethhdr) + sizeof(struct iphdr) + h->thl + rlen) -
		(int)(ctx->data_end - ctx->data);
	/*
	 * Grow at the tail, else at the head: every header is rewritten below,
	 * so where the frame gained its room does not matter. A veth frame that
	 * kept its skb buffer has little tailroom but XDP_PACKET_HEADROOM.
	 */
	if (bpf_xdp_adjust_tail(ctx, delta) &&
	    (delta <= 0 || bpf_xdp_adjust_head(ctx, -delta)))
		return -1;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	t = (void *)(ip + 1);
	if ((void *)(t + 1) > end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, h->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, h->smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);

	/* the 16-bit words written below that the checksums sum too */
	tot = bpf_htons(sizeof(struct iphdr) + h->thl + h->rlen);
	ttl_proto = bpf_htons(64 << 8 | IPPROTO_TCP);
	off_flags = bpf_htons((__u16)(h->thl / 4) << 12 | 0x18);	/* data offset; ACK, PSH */
	*(__u16 *)ip = bpf_htons(0x4500);	/* version 4, ihl 5, tos 0 */
	ip->tot_len = tot;
	ip->id = 0;
	ip->frag_off = bpf_htons(0x4000);
	*(__u16 *)&ip->ttl = ttl_proto;
	ip->saddr = h->daddr;
	ip->daddr = h->saddr;
	/*
	 * The headers' checksums are summed from the values written, not read
	 * back from the frame: a load over narrower stores still in flight
	 * cannot take their data (store forwarding fails) and waits for them.
	 * A ones' complement sum of 16-bit words in network order, each field
	 * as stored: where a word sits in a 32-bit one does not matter.
	 */
	ip->check = csum_fold((__u64)bpf_htons(0x4500) + tot + bpf_htons(0x4000) + ttl_proto +
			      h->saddr + h->daddr);

	t->source = h->dport;
	t->dest = h->sport;
	t->seq = bpf_htonl(h->seq);
	t->ack_seq = bpf_htonl(h->ack);
	*((__u16 *)t + 6) = off_flags;
	t->window = h->win;
	t->check = 0;
	t->urg_ptr = 0;
	if (h->thl == 32) {
		opt = (__u32 *)(t + 1);
		if ((void *)(opt + 3) > end)
			return XDP_DROP;
		opt[0] = bpf_htonl(0x0101080a);
		opt[1] = bpf_htonl(h->tsval);
		opt[2] = bpf_htonl(h->tsecr);
	}
	rlen = h->rlen;
	if (!len_in(rlen, 1, ERB_REPLY_MAX - 8))
		return XDP_DROP;
	if (bpf_xdp_store_bytes(ctx, sizeof(struct ethhdr) + sizeof(struct iphdr) + h->thl,
				(void *)(rep + (rstart & 7)), arg_len(rlen, 1, ERB_REPLY_MAX - 8)))
		return XDP_DROP;

	/* pseudo header + TCP header (as written above, check and urg_ptr 0) + payload */
	sum = (__u64)h->saddr + h->daddr + bpf_htons(IPPROTO_TCP) + bpf_htons(h->thl + rlen) +
	      h->sport + h->dport + bpf_htonl(h->seq) + bpf_htonl(h->ack) +
	      off_flags + h->win;
	if (h->thl == 32)
		sum += (__u64)bpf_htonl(0x0101080a) + bpf_htonl(h->tsval) + bpf_htonl(h->tsecr);
	sum += payload_sum(rep, rstart, rlen);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	t = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
	if ((void *)(t + 1) > end)
		return XDP_DROP;
	t->check = csum_fold(sum);
	return XDP_TX;
}


static __always_inline void flow_init(struct erb_flow *f, __u32 flags, __u32 c_nxt)
{
	__builtin_memset(f, 0, sizeof(*f));
	f->flags = flags;
	f->c_nxt = c_nxt;
	for (int i = 0; i < ERB_WR_RING; i++)
		f->wr[i].bucket = SLOT_FREE;
}

static __always_inline struct erb_flow *flow_create(struct erb_flow_key *key,
						    struct erb_scratch *s, __u32 flags,
						    __u32 c_nxt)
{
	/* struct erb_flow is too big for the stack: build it in scratch */
	struct erb_flow *tmp = (struct erb_flow *)s->zero_aux.last_rep;

	/* else no flow could ever be created, and nothing answered */
	_Static_assert(sizeof(struct erb_flow) <= sizeof(s->zero_aux.last_rep),
		       "struct erb_flow must fit erb_aux.last_rep (ERB_REPLY_MAX)");
	flow_init(tmp, flags, c_nxt);
	if (bpf_map_update_elem(&erb_flows, key, tmp, BPF_ANY)) {
		stat_inc(ERB_STAT_FLOW_FULL);
		__builtin_memset(tmp, 0, sizeof(*tmp));
		return 0;
	}
	__builtin_memset(tmp, 0, sizeof(*tmp));
	bpf_map_update_elem(&erb_aux, key, &s->zero_aux, BPF_ANY);
	return bpf_map_lookup_elem(&erb_flows, key);
}

/*
 * Answer the request again from the copy of its reply (client lost it).
 * -1: no copy (another CPU is writing a newer answer's), -2: the frame cannot
 * grow to the answer's size (the frame is untouched).
 */
static __always_inline int xdp_reanswer(struct xdp_md *ctx, struct pkt *k, struct tcp_opts *o,
					struct erb_flow *f, struct erb_flow_key *key)
{
	struct erb_aux *a = bpf_map_lookup_elem(&erb_aux, key);
	int rc;

	if (!a || a->last_rep_len != f->last_rep_len || !a->last_rep_len) {
		stat_inc(ERB_STAT_REANSWER_NO_COPY);
		return -1;
	}
	rc = xdp_reply(ctx, k, o, a->last_rep, a->last_rep_off, a->last_rep_len,
		       f->last_rep_seq, f->last_req_seq + f->last_req_len, f->s_win);
	if (rc == XDP_TX)
		stat_inc(ERB_STAT_RETRANSMIT_ANSWER);
	return rc == -1 ? -2 : rc;
}

/*
 * Is the payload exactly "*3\r\n$3\r\nSET\r\n$<n>\r\n<key>\r\n$<m>\r\n<value>\r\n"?
 * Returns the key length and sets *koff, *voff, *vlen, else -1.
 */
static __always_inline int parse_set(struct erb_scratch *s, __u32 plen, __u32 *koff,
				     __u32 *voff, __u32 *vlen)
{
	const char *b = s->buf;
	__u32 m = 0, i, j;
	int n;

	/* the shortest: "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n", 26 bytes */
	if (plen < 26 || plen > WIN)
		return -1;
	n = parse_head(b, '3', 'S', 'E', 'T', &i);
	if (n <= 0 || n > ERB_KEY_MAX || i + n + 4 > plen)
		return -1;
	*koff = i;
	i += n;
	if (b[i & WIN_MASK] != '\r' || b[(i + 1) & WIN_MASK] != '\n' ||
	    b[(i + 2) & WIN_MASK] != '$')
		return -1;
	i += 3;
	for (j = 0; j < 5; j++) {
		char ch = b[(i + j) & WIN_MASK];

		if (ch == '\r')
			break;
		if (ch < '0' || ch > '9')
			return -1;
		m = m * 10 + (ch - '0');
	}
	if (j == 0 || j == 5 || (j > 1 && b[i & WIN_MASK] == '0') ||
	    b[(i + j + 1) & WIN_MASK] != '\n')
		return -1;
	i += j + 2;
	if (m > ERB_VAL_MAX || i + m + 2 != plen)
		return -1;
	if (b[(i + m) & WIN_MASK] != '\r' || b[(i + m + 1) & WIN_MASK] != '\n')
		return -1;
	*voff = i;
	*vlen = m;
	return n;
}

/* Record an answer: the correction, the copy for retransmits, the counters. */
static __always_inline void answered(struct erb_flow *f, struct erb_aux *a, struct pkt *k,
				     struct erb_scratch *s, __u32 seq, __u32 ack,
				     __u32 rstart, __u32 rlen)
{
	__u32 fl = f->flags;
	__u32 n = (rstart & 7) + (rlen & 2047) + 3;	/* + the zero pad the checksum reads */

	if (n > ERB_REPLY_MAX)
		n = ERB_REPLY_MAX;
	bpf_probe_read_kernel(a->last_rep, n, s->rep);
	a->last_rep_off = rstart;
	a->last_rep_len = rlen;
	/* adj_seq odd while c and s change (a fetching atomic orders like a full barrier) */
	__sync_fetch_and_add(&f->adj_seq, 1);
	f->c.off_before = f->c.off_after;
	f->c.off_after += k->plen;
	f->c.pos = ack;
	f->s.pos = seq - f->s.off_after;
	f->s.off_before = f->s.off_after;
	f->s.off_after += rlen;
	__sync_fetch_and_add(&f->adj_seq, 1);
	f->last_req_seq = ack - k->plen;
	f->last_req_len = k->plen;
	f->last_rep_seq = seq;
	f->last_rep_len = rlen;
	f->c_nxt = ack;
	/* a segment held before is answered now: the bound it waited for is spent */
	f->hold_wseq = 0;
	f->s_nxt = seq + rlen;
	f->s_tsval = s->h.thl == 32 ? s->h.tsval : 0;
	if (!(fl & ERB_FLOW_ANSWERED))
		__sync_fetch_and_or(&f->flags, ERB_FLOW_ANSWERED);
}

static __always_inline int unlock_ret(__u32 *l1, __u32 *l2, int rc)
{
	if (l1)
		__sync_lock_test_and_set(l1, 0);
	if (l2)
		__sync_lock_test_and_set(l2, 0);
	return rc;
}

/*
 * SET answered in XDP, write-behind: the entry (stamped with the next write
 * sequence) and the record for the I/O path are committed only once the +OK
 * frame is built; until the record is applied, the hold rule keeps every
 * other command on this key away from Redis.
 */
static __always_inline int do_set(struct xdp_md *ctx, struct pkt *k, struct tcp_opts *o,
				  struct erb_flow *f, struct erb_aux *a, struct erb_scratch *s,
				  struct erb_global *g, __u32 klen, __u32 h, __u32 voff,
				  __u32 vlen)
{
	struct erb_record *rec;
	struct erb_entry *e;
	struct erb_bucket *bk;
	__u32 b = bucket_of(h), seq, ack;
	__u64 wseq;
	int rc;

	bk = bucket_get(&b);
	if (!bk)
		return -1;
	if (vlen > cfg.max_value_len) {
		stat_inc(ERB_STAT_PASS_TOO_BIG);
		return -1;
	}
	if (__sync_val_compare_and_swap(&bk->lock, 0, bpf_get_smp_processor_id() + 1) != 0) {
		stat_inc(ERB_STAT_SET_PASS_BUSY);
		return -1;
	}
	/* after the lock (an atomic waits for the loads before it): overlaps the checks below */
	entry_prefetch(s, h);
	/*
	 * A write of this key passed to Redis and unanswered must go first.
	 * Checked under the bucket lock, under which passed writes are counted.
	 */
	if (READ_ONCE(bk->inflight) || g->overflow || fenced(g, bk)) {
		stat_inc(ERB_STAT_SET_PASS_BUSY);
		return unlock_ret(&bk->lock, 0, -1);
	}
	e = cache_claim(s, s->key, klen, h, g->cache_gen);
	if (!e) {
		stat_inc(ERB_STAT_SET_PASS_BUSY);
		return unlock_ret(&bk->lock, 0, -1);
	}
	if (cfg.flags & ERB_CFG_KMOD) {
		__u32 zero = 0;

		rec = bpf_map_lookup_elem(&erb_kmrec, &zero);
	} else {
		rec = bpf_ringbuf_reserve(&erb_events, sizeof(*rec), 0);
	}
	if (!rec) {
		stat_inc(ERB_STAT_SET_PASS_QUEUE_FULL);
		return unlock_ret(&e->lock, &bk->lock, -1);
	}
	rec->version = ERB_RECORD_VERSION;
	rec->op = ERB_OP_SET;
	rec->flags = 0;
	rec->klen = klen;
	rec->vlen = vlen;
	rec->db = 0;
	rec->pad = 0;
	bpf_probe_read_kernel(rec->key, arg_len(klen, 1, ERB_KEY_MAX), s->key);
	if (vlen && (!len_in(vlen, 1, ERB_VAL_MAX) ||
		     bpf_xdp_load_bytes(ctx, k->poff + (voff & 2047), rec->val,
						 arg_len(vlen, 1, ERB_VAL_MAX)))) {
		if (!(cfg.flags & ERB_CFG_KMOD))
			bpf_ringbuf_discard(rec, 0);
		return unlock_ret(&e->lock, &bk->lock, -1);
	}
	s->rep[0] = '+';
	s->rep[1] = 'O';
	s->rep[2] = 'K';
	s->rep[3] = '\r';
	s->rep[4] = '\n';
	s->rep[5] = 0;
	s->rep[6] = 0;
	s->rep[7] = 0;
	seq = f->s_nxt;
	ack = bpf_ntohl(k->tcp->seq) + k->plen;
	if (cfg.flags & ERB_CFG_KMOD) {
		/*
		 * No reservation in a kfifo: queue first, so that a full one
		 * still leaves the request intact for Redis. A refused seq
		 * counts as finished in the module (applied_seq moves past it).
		 */
		wseq = __sync_fetch_and_add(&g->write_seq, 1) + 1;
		rec->seq = wseq;
		if (erb_kfifo_in(rec, sizeof(*rec))) {
			stat_inc(ERB_STAT_SET_PASS_QUEUE_FULL);
			return unlock_ret(&e->lock, &bk->lock, -1);
		}
		entry_write(e, h, s->key, klen, rec->val, vlen, g->cache_gen, wseq, ERB_TYPE_STRING);
		rc = xdp_reply(ctx, k, o, s->rep, 0, 5, seq, ack, f->s_win);
		/*
		 * +OK is smaller than any SET, so this cannot fail; if it did,
		 * the queued record stands and the client's retransmission is
		 * answered again (the same SET applied twice, in order).
		 */
		if (rc != XDP_TX)
			return unlock_ret(&e->lock, &bk->lock, XDP_DROP);
	} else {
		rc = xdp_reply(ctx, k, o, s->rep, 0, 5, seq, ack, f->s_win);
		if (rc != XDP_TX) {
			bpf_ringbuf_discard(rec, 0);
			return unlock_ret(&e->lock, &bk->lock, rc);
		}
		wseq = __sync_fetch_and_add(&g->write_seq, 1) + 1;
		rec->seq = wseq;
		entry_write(e, h, s->key, klen, rec->val, vlen, g->cache_gen, wseq, ERB_TYPE_STRING);
		bpf_ringbuf_submit(rec, ring_wakeup(g));
	}
	unlock_ret(&e->lock, &bk->lock, 0);
	answered(f, a, k, s, seq, ack, 0, 5);
	stat_inc(ERB_STAT_SET_FAST);
	return XDP_TX;
}

/*
 * The reply fits one segment the client takes: within the MSS its SYN offered
 * (a path with a smaller MTU, e.g. an overlay, shows there) and within the
 * receive window of this very request (a zero window takes nothing).
 */
static __always_inline int client_takes(struct erb_flow *f, struct pkt *k, struct tcp_opts *o,
					__u32 rlen)
{
	__u32 mss = f->c_mss ? f->c_mss : 536, shift = f->c_wshift ? f->c_wshift - 1 : 0;

	if (shift > 14)
		shift = 14;
	if (rlen + (o->ts_off ? 12 : 0) > mss ||
	    ((__u64)bpf_ntohs(k->tcp->window) << shift) < rlen) {
		stat_inc(ERB_STAT_PASS_CLIENT_LIMIT);
		return 0;
	}
	return 1;
}

/*
 * The flow and segment allow an XDP answer at all (whatever the commands):
 * the rules of DESIGN.md "When XDP may answer". Returns 0, else -1 (counted).
 */
static __always_inline int answer_ready(struct pkt *k, struct erb_flow *f, struct erb_global *g,
					int is_hash)
{
	__u32 fl = f->flags;

	if (k->tcp->fin || k->tcp->rst || k->tcp->syn || k->tcp->urg || k->odd) {
		/* the kernel must see those flags (and an XDP answer would eat them) */
		stat_inc(ERB_STAT_PASS_STATE);
		return -1;
	}
	if (!(cfg.flags & ERB_CFG_ANSWER) || (g->ctl & ERB_CTL_DRAIN)) {
		stat_inc(ERB_STAT_PASS_DISABLED);
		return -1;
	}
	if (fl & ERB_FLOW_UNTRACKED) {
		stat_inc(ERB_STAT_PASS_UNTRACKED);
		return -1;
	}
	if ((fl & (ERB_FLOW_MULTI | ERB_FLOW_SUBSCRIBED | ERB_FLOW_DB_NONZERO)) ||
	    !(fl & ERB_FLOW_AUTHED) || !(fl & ERB_FLOW_EST) || !(fl & ERB_FLOW_WIN) ||
	    (fl & (ERB_FLOW_C_FIN | ERB_FLOW_S_FIN)) || f->req.argc || f->req.resync ||
	    f->req.state != ERB_P_TYPE) {
		stat_inc(ERB_STAT_PASS_STATE);
		return -1;
	}
	if (is_hash && !resp_form(fl)) {
		/* a HELLO ERB did not see answered: an array or a map, unknown */
		stat_inc(ERB_STAT_PASS_STATE);
		return -1;
	}
	if (READ_ONCE(f->replies) != f->cmds) {
		stat_inc(ERB_STAT_PASS_OUTSTANDING);
		return -1;
	}
	if (!k->tcp->ack || bpf_ntohl(k->tcp->ack_seq) != READ_ONCE(f->s_nxt)) {
		stat_inc(ERB_STAT_PASS_UNACKED);
		return -1;
	}
	return 0;
}

/*
 * The payload (in s->buf) is not one GET or HGETALL: what may still answer it?
 * A SET (-2: set_step), or a pipeline (RC_PIPELINE: pipe_step), which
 * pipe_parse() answers only when every command, the first too, is a GET or a
 * SET. Any other first command: nothing (-1), without the two more tries that
 * would each load and parse the payload again (~65 ns per passed command).
 */
static __always_inline int not_get_rc(struct erb_scratch *s, __u32 plen)
{
	__u32 i;
	int set;

	if (plen < 19 || plen > WIN)
		return -1;
	set = parse_head(s->buf, '3', 'S', 'E', 'T', &i) > 0;
	if (!set && parse_head(s->buf, '2', 'G', 'E', 'T', &i) <= 0) {
		if (mget_head(s->buf, &i) > 0)
			return RC_PIPELINE;	/* one MGET: its keys as GETs (erb_pipe.h) */
		stat_inc(ERB_STAT_PASS_NOT_SINGLE);
		return -1;
	}
	if (set && (cfg.flags & ERB_CFG_SET_FAST))
		return -2;
	return RC_PIPELINE;
}

/* The segment into s->buf, when it is 19 to WIN bytes (the shortest GET); else -1. */
static __always_inline int seg_load(struct xdp_md *ctx, struct pkt *k, struct erb_scratch *s)
{
	int n = k->plen;

	if (!len_in(n, 19, WIN) || bpf_xdp_load_bytes(ctx, k->poff, s->buf, arg_len(n, 19, WIN)))
		return -1;
	return 0;
}

/*
 * Can the segment be a GET or an HGETALL, alone or first of a pipeline (the
 * only segments erb_get() may answer or route to erb_pipe())? Its first 11
 * bytes, read in place; 1 when they are not all there.
 */
static __always_inline int get_head(struct xdp_md *ctx, struct pkt *k)
{
	const char *b = (const char *)k->tcp + (k->thl & 63);
	void *end = (void *)(long)ctx->data_end;

	if ((void *)(b + 11) > end)
		return 1;
	if (b[0] != '*' || b[1] != '2' || b[2] != '\r' || b[3] != '\n' || b[4] != '$')
		return 0;
	if (b[5] == '3')
		return upper(b[8]) == 'G' && upper(b[9]) == 'E' && upper(b[10]) == 'T';
	return b[5] == '7' && upper(b[8]) == 'H' && upper(b[9]) == 'G' && upper(b[10]) == 'E';
}

/*
 * What erb_get() returns for a segment get_head() ruled out, without its
 * flow lookup: -2 (a SET: erb_set()), RC_PIPELINE or -1. Like try_answer(),
 * it leaves the segment in s->buf for erb_pipe().
 */
static __always_inline int not_get(struct xdp_md *ctx, struct pkt *k, struct erb_scratch *s)
{
	if (seg_load(ctx, k, s))
		return -1;
	return not_get_rc(s, k->plen);
}

static __always_inline int try_answer(struct xdp_md *ctx, struct pkt *k, struct tcp_opts *o,
				      struct erb_flow *f, struct erb_flow_key *key,
				      struct erb_scratch *s, struct erb_global *g, int want_set)
{
	__u32 koff, klen, h, rstart, rlen, seq, ack, voff = 0, vlen = 0;
	struct erb_aux *a;
	int n, rc, nil, is_set = 0, is_hash = 0;

	/* cheap reject before touching the payload */
	if (seg_load(ctx, k, s))
		return -1;
	if (!want_set) {
		n = parse_get(s, k->plen, &koff);
		if (n < 0) {
			n = parse_hgetall(s, k->plen, &koff);
			is_hash = 1;
		}
		if (n < 0)
			return not_get_rc(s, k->plen);
	} else {
		n = parse_set(s, k->plen, &koff, &voff, &vlen);
		if (n < 0)
			return RC_PIPELINE;	/* not one command: maybe a pipeline */
		is_set = 1;
	}
	klen = n;
	if (answer_ready(k, f, g, is_hash))
		return -1;
	if (klen > cfg.max_key_len) {
		stat_inc(ERB_STAT_PASS_TOO_BIG);
		return -1;
	}
	__builtin_memset(s->key, 0, ERB_KEY_MAX);
	if (!len_in(klen, 1, ERB_KEY_MAX) ||
	    bpf_xdp_load_bytes(ctx, k->poff + (koff & 31), s->key, arg_len(klen, 1, ERB_KEY_MAX)))
		return -1;
	h = fnv_key(s, s->key, klen);
	a = bpf_map_lookup_elem(&erb_aux, key);
	if (!a)
		return -1;
	if (is_set) {
		if (!client_takes(f, k, o, 5))
			return -1;
		return do_set(ctx, k, o, f, a, s, g, klen, h, voff, vlen);
	}
	nil = cache_get(s, klen, h, g->cache_gen, is_hash ? ERB_TYPE_HASH : ERB_TYPE_STRING,
			resp_form(f->flags), &rstart, &rlen);
	if (nil < 0) {
		stat_inc(ERB_STAT_MISS);
		return -1;
	}
	/*
	 * A cached reply that cannot be sent: Redis answers, and its reply
	 * refills nothing (the entry stands, checked as it is).
	 */
	if (!client_takes(f, k, o, rlen)) {
		s->hit_unsent = 1;
		return -1;
	}
	seq = f->s_nxt;
	ack = bpf_ntohl(k->tcp->seq) + k->plen;
	rc = xdp_reply(ctx, k, o, s->rep, rstart, rlen, seq, ack, f->s_win);
	if (rc < 0)
		stat_inc(ERB_STAT_PASS_NO_ROOM);
	if (rc != XDP_TX) {
		s->hit_unsent = 1;
		return rc;
	}
	answered(f, a, k, s, seq, ack, rstart, rlen);
	stat_inc(ERB_STAT_HIT);
	if (nil)
		stat_inc(ERB_STAT_HIT_NIL);
	return XDP_TX;
}

/*
 * The writes a segment of a flow (its bytes end at client seq end) waits for:
 * those acknowledged when its bytes first arrived and were held, never later
 * ones (no starvation under steady SET load). The bound covers only the bytes
 * held then: a retransmission TCP merged with newer bytes may carry commands
 * sent after a later write was acknowledged, so it waits for every write
 * acknowledged so far.
 */
static __always_inline __u64 hold_bound(struct erb_flow *f, struct erb_global *g, __u32 end)
{
	if (f && f->hold_wseq && !after(end, f->hold_end))
		return f->hold_wseq;
	return g->write_seq;
}

/* Remember the bound of a held segment (bytes up to end). */
static __always_inline void hold_mark(struct erb_flow *f, __u64 bound, __u32 end)
{
	if (f && (!f->hold_wseq || after(end, f->hold_end))) {
		f->hold_wseq = bound;
		f->hold_end = end;
	}
}

/*
 * Client bytes we do not parse (IP options, fragments, VLAN tags, IPv6, data
 * in a SYN, bytes an untracked flow skipped) may carry writes: hold them while
 * fast-path writes are pending (their keys are unknown), else empty the cache
 * and pass them. A tracked flow loses its command boundary: it is given up.
 * Returns 1 to hold (drop, TCP retransmits).
 */
static __always_inline int unseen_hold(struct erb_flow *f, struct erb_global *g, __u32 end)
{
	__u64 bound = hold_bound(f, g, end);

	if (g->applied_seq < bound && unordered(g)) {
		hold_mark(f, bound, end);
		stat_inc(ERB_STAT_HOLD);
		return 1;
	}
	if (f) {
		f->hold_wseq = 0;
		flow_untrack(f, g);
		/* they may have turned CLIENT TRACKING on */
		__sync_fetch_and_or(&f->flags, ERB_FLOW_PUSHES);
	}
	cache_flush(g);
	g->untracked_wr_ns = bpf_ktime_get_ns();
	stat_inc(ERB_STAT_PASS_UNTRACKED);
	stat_inc(ERB_STAT_UNSEEN_PASSED);
	return 0;
}

/* Unparsed bytes of no flow (none could be made): held against every pending write. */
static __always_inline int xdp_unseen(void)
{
	struct erb_global *g = global();

	if (!g)
		return XDP_PASS;
	return unseen_hold(0, g, 0) ? XDP_DROP : XDP_PASS;
}

/*
 * IPv4 with options, a fragment, or behind VLAN tags (ip at l3 from the
 * frame start): never answered, seen for writes; a flow with corrections
 * gets its seq/ack/SACK corrected here too.
 */
static __always_inline int xdp_odd_ip(struct xdp_md *ctx, struct iphdr *ip, __u32 l3)
{
	void *end = (void *)(long)ctx->data_end;
	struct erb_scratch *s = scratch();
	struct erb_global *g = global();
	struct erb_flow_key key;
	struct erb_flow *f;
	struct tcphdr *t;
	struct pkt k;
	__u32 ihl = ip->ihl * 4, tot = bpf_ntohs(ip->tot_len), plen;

	if (!s || !g)
		return XDP_PASS;
	if (ip->frag_off & bpf_htons(0x1fff))	/* a later fragment: port unknown */
		return unseen_hold(0, g, 0) ? XDP_DROP : XDP_PASS;
	if (ihl < sizeof(*ip) || ihl > 60)
		return XDP_PASS;
	t = (void *)ip + (ihl & 0x3c);
	if ((void *)(t + 1) > end || t->dest != bpf_htons(cfg.redis_port))
		return XDP_PASS;
	key.saddr = ip->saddr;
	key.daddr = ip->daddr;
	key.sport = t->source;
	key.dport = t->dest;
	f = bpf_map_lookup_elem(&erb_flows, &key);
	plen = tot > ihl + t->doff * 4 ? tot - ihl - t->doff * 4 : 0;
	if ((plen || (ip->frag_off & bpf_htons(0x2000))) && unseen_hold(f, g, bpf_ntohl(t->seq) + plen))
		return XDP_DROP;
	if (!f || !(f->flags & ERB_FLOW_ANSWERED))
		return XDP_PASS;
	/* answered before: the server's view needs the corrections */
	k.eth = (void *)(long)ctx->data;
	k.ip = ip;
	k.tcp = t;
	k.thl = t->doff * 4;
	k.plen = 0;
	k.odd = 1;
	if (k.thl < sizeof(*t) || k.thl > 60 || (void *)t + k.thl > end)
		return XDP_PASS;
	k.poff = (l3 & 0x1f) + (ihl & 0x3c) + k.thl;
	if (xdp_tcp_opts(ctx, &k, &s->o, s))
		s->o.sack_off = 0;
	if ((void *)(k.tcp + 1) > (void *)(long)ctx->data_end)
		return XDP_PASS;
	xdp_correct(ctx, &k, f, &s->o);
	return XDP_PASS;
}

/* IPv6 (at l3): the extension headers are followed to find TCP. */
static __always_inline int xdp_ipv6(struct xdp_md *ctx, __u32 l3)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct erb_global *g = global();
	__u8 *ip6 = data + (l3 & 0x1f), *e;
	__u32 off = 40, plen, nh;
	struct tcphdr *t;

	if (!g || (void *)(ip6 + 40) > end)
		return XDP_PASS;
	nh = ip6[6];
	plen = (ip6[4] << 8) | ip6[5];
	for (int i = 0; i < 6 && nh != IPPROTO_TCP; i++) {
		e = ip6 + (off & 0x3fff);
		if ((void *)(e + 8) > end)
			return XDP_PASS;
		if (nh == 0 || nh == 43 || nh == 60) {		/* hop-by-hop, routing, dest */
			nh = e[0];
			off += (e[1] + 1) * 8;
		} else if (nh == 44) {				/* fragment */
			if (((e[2] << 8 | e[3]) & 0xfff8) && e[0] == IPPROTO_TCP)
				/* a later TCP fragment: port unknown */
				return unseen_hold(0, g, 0) ? XDP_DROP : XDP_PASS;
			nh = e[0];
			off += 8;
		} else if (nh == 51) {				/* AH */
			nh = e[0];
			off += (e[1] + 2) * 4;
		} else {
			return XDP_PASS;	/* ESP, no next header, not TCP */
		}
	}
	t = (void *)(ip6 + (off & 0x3fff));
	if (nh != IPPROTO_TCP || (void *)(t + 1) > end || t->dest != bpf_htons(cfg.redis_port))
		return XDP_PASS;
	if (plen <= off - 40 + t->doff * 4)
		return XDP_PASS;	/* no payload */
	return unseen_hold(0, g, 0) ? XDP_DROP : XDP_PASS;
}

/* 802.1Q / 802.1ad (one or two tags): replies are built untagged, so never answered. */
static __always_inline int xdp_vlan(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	__u8 *b = data;
	__u32 l3 = sizeof(struct ethhdr) + 4;
	__u16 proto;
	struct iphdr *ip;

	if ((void *)(b + 26) > end)
		return XDP_PASS;
	proto = *(__u16 *)(b + 16);
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		proto = *(__u16 *)(b + 20);
		l3 += 4;
	}
	if (proto == bpf_htons(ETH_P_IPV6))
		return xdp_ipv6(ctx, l3);
	if (proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	ip = data + l3;
	if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP)
		return XDP_PASS;
	return xdp_odd_ip(ctx, ip, l3);
}

struct actx {
	struct xdp_md *ctx;
	struct pkt *k;
	struct erb_flow *f;
	struct erb_flow_key *key;
	struct erb_ooo *ooo;	/* parse_step: kept bytes that follow the segment's, or NULL */
};

#define RC_PARSE_AGAIN	(-3)	/* parse_step: writes applied while it waited */

/*
 * What a held segment waits for, at most HOLD_WAIT_NS: a bucket lock to be
 * free (lock set: its holder runs a few hundred nanoseconds, longer only when
 * its CPU stalls, an interrupt or a vCPU the hypervisor descheduled), else the
 * writes before bound to be applied (the I/O path on another CPU).
 */
struct wctx {
	struct erb_global *g;
	__u32 *lock;
	__u64 bound;
	__u64 t0;
	int ok;
};

static long wait_step(__u32 i, void *arg)
{
	struct wctx *w = arg;

	if (!w->g)
		return 1;
	if (w->lock) {
		if (!READ_ONCE(*w->lock)) {
			w->ok = 1;
			return 1;
		}
	} else {
		if (cfg.flags & ERB_CFG_KMOD)
			kmod_sync(w->g);
		if (READ_ONCE(w->g->applied_seq) >= w->bound) {
			w->ok = 1;
			return 1;
		}
	}
	return bpf_ktime_get_ns() - w->t0 > HOLD_WAIT_NS;
}

/*
 * Wait (bounded) until bucket busy_b's lock is free (busy), else until the
 * writes before bound are applied; 1 if that happened.
 */
static __always_inline int hold_wait(struct erb_global *g, int busy, __u32 busy_b, __u64 bound)
{
	struct wctx w = { .g = g, .bound = bound, .t0 = bpf_ktime_get_ns() };

	if (busy) {
		w.lock = bucket_lock(&busy_b);
		if (!w.lock)
			return 0;
	}
	bpf_loop(HOLD_WAIT_SPINS, wait_step, &w, 0);
	return w.ok;
}

/*
 * Park a held segment (erb.h, struct erb_park): a copy for the agent to replay
 * once the writes before bound are applied. Best effort: a frame over
 * ERB_PARK_FRAME_MAX or a full ring leaves it to the client's retransmission.
 */
static __always_inline void park(struct xdp_md *ctx, __u64 bound)
{
	__u32 len = bpf_xdp_get_buff_len(ctx);
	struct erb_park *p;

	if (len < ETH_HLEN || len > ERB_PARK_FRAME_MAX)
		return;
	p = bpf_ringbuf_reserve(&erb_parked, sizeof(*p), 0);
	if (!p)
		return;
	if (bpf_xdp_load_bytes(ctx, 0, p->frame, len)) {
		bpf_ringbuf_discard(p, 0);
		return;
	}
	p->bound = bound;
	p->ts_ns = bpf_ktime_get_ns();
	p->ifindex = ctx->ingress_ifindex;
	p->rxq = ctx->rx_queue_index;
	p->len = len;
	p->pad = 0;
	bpf_ringbuf_submit(p, 0);
	stat_inc(ERB_STAT_PARKED);
}

/*
 * An answer to send again did not fit in this frame: a veth frame that kept
 * its skb's buffer has only XDP_PACKET_HEADROOM and what the skb left at its
 * tail, less than a long value needs, however often the client sends it. A
 * copy goes to erb-agent, which runs it through this program again in a page
 * of its own (BPF_PROG_TEST_RUN, live frames), where the answer fits and its
 * XDP_TX goes out of this interface.
 */
static __always_inline void reanswer_park(struct xdp_md *ctx)
{
	stat_inc(ERB_STAT_REANSWER_PARKED);
	park(ctx, 0);
}

/*
 * Parse the client's new bytes; rc XDP_DROP when the hold rule applies. The
 * second step (i 1) runs only after the first waited for the writes the
 * segment was held for (RC_PARSE_AGAIN): it parses the segment again. One
 * bpf_loop of two steps, not two calls: the verifier checks the body once.
 */
static long parse_step(__u32 i, void *arg)
{
	struct actx *a = arg;
	struct erb_scratch *s = scratch();
	struct erb_global *g = global();
	struct erb_flow *f = a->f;
	struct pctx c;
	__u32 fl_orig;
	__u64 bound;

	if (!a->ctx || !f || !a->key || !s || !g)
		return 1;
	if (i) {
		if (s->a_rc != RC_PARSE_AGAIN)
			return 1;
		stat_inc(ERB_STAT_HOLD_WAITED);
		s->a_rc = -1;
	}
	c.f = f;
	c.s = s;
	c.g = g;
	c.u = &s->cur;
	fl_orig = f->flags;
	__builtin_memset(&s->cur, 0, sizeof(s->cur));
	s->cur.tracked = !(fl_orig & ERB_FLOW_UNTRACKED);
	/*
	 * Bounded: a held segment waits only for the writes acknowledged
	 * before it first arrived, never for later ones (no starvation).
	 */
	bound = hold_bound(f, g, s->pa.end);
	/* under erb_redis's lease Redis applies them before it runs these commands */
	s->cur.pending = (__u32)((g->applied_seq - bound) >> 63) & unordered(g);
	s->cur.fl = fl_orig;
	s->cur.a1_off = -1;
	s->cur.a2_off = -1;
	__builtin_memcpy(&s->req_saved, &f->req, sizeof(f->req));

	xdp_parse(a->ctx, s->pa.poff, s->pa.plen, &c, s->pa.from);
	if (a->ooo)
		ooo_parse(&c, a->ooo, s->pa.ooo_from);
	if (xdp_hold(&c)) {
		int busy = s->cur.held == 2;

		/* as if never seen: the retransmission is parsed again */
		__builtin_memcpy(&f->req, &s->req_saved, sizeof(f->req));
		hold_mark(f, bound, s->pa.end);
		/*
		 * Once per segment: wait for the I/O path (or the busy lock's
		 * holder), then parse it again.
		 */
		if (!s->a_waited) {
			s->a_waited = 1;
			if (hold_wait(g, busy, s->cur.busy_b, bound)) {
				s->a_rc = RC_PARSE_AGAIN;
				return 0;	/* on to step 1: parse it again */
			}
		}
		stat_inc(busy ? ERB_STAT_HOLD_BUSY : ERB_STAT_HOLD);
		if (!busy)
			park(a->ctx, bound);
		s->a_rc = XDP_DROP;
		return 1;
	}
	f->hold_wseq = 0;
	xdp_effects(&c, fl_orig);
	return 1;
}

/*
 * A segment after a gap on a tracked flow: keep its bytes in erb_ooo (the
 * first, or right after those kept) for the parser, and pass it on. 0 kept
 * (or a copy of kept bytes), -1 not: the flow is given up.
 */
static __always_inline int ooo_keep(struct xdp_md *ctx, struct pkt *k, struct erb_flow *f,
				    struct erb_flow_key *key, struct erb_scratch *s, __u32 seq)
{
	struct erb_ooo *st;
	__u32 off, n = k->plen;

	if (k->odd || k->tcp->fin || k->tcp->syn || k->tcp->rst || !len_in(n, 1, ERB_OOO_MAX))
		return -1;
	if (!(f->flags & ERB_FLOW_OOO)) {
		s->ooo.seq = seq;
		s->ooo.len = n;
		if (bpf_xdp_load_bytes(ctx, k->poff, s->ooo.data, arg_len(n, 1, ERB_OOO_MAX)) ||
		    bpf_map_update_elem(&erb_ooo, key, &s->ooo, BPF_ANY))
			return -1;
		__sync_fetch_and_or(&f->flags, ERB_FLOW_OOO);
		return 0;
	}
	st = bpf_map_lookup_elem(&erb_ooo, key);
	if (!st)
		return -1;
	/* a copy of bytes kept already: the stack drops it */
	if (!before(seq, st->seq) && !after(seq + n, st->seq + st->len))
		return 0;
	off = st->len;
	if (seq != st->seq + off || off > ERB_OOO_MAX - 1 || n > ERB_OOO_MAX - off)
		return -1;
	if (bpf_xdp_load_bytes(ctx, k->poff, st->data + (off & (ERB_OOO_MAX - 1)),
			       arg_len(n, 1, ERB_OOO_MAX)))
		return -1;
	st->len = off + n;
	return 0;
}

/* Kept out-of-order bytes that will not be parsed: they are a gap now. */
static __always_inline void ooo_to_gap(struct erb_flow *f, struct erb_flow_key *key)
{
	struct erb_ooo *st;

	if (!(f->flags & ERB_FLOW_OOO))
		return;
	st = bpf_map_lookup_elem(&erb_ooo, key);
	if (st)
		flow_gap(f, st->seq, st->seq + st->len);
	ooo_forget(f, key);
}

#include "erb_pipe.h"

/* Helpers invalidate packet pointers: derive k's again (IPv4 without options). */
static __always_inline int pkt_reload(struct xdp_md *ctx, struct pkt *k)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;

	k->eth = data;
	k->ip = (void *)(k->eth + 1);
	k->tcp = (void *)(k->ip + 1);
	if ((void *)(k->tcp + 1) > end || (void *)k->tcp + k->thl > end)
		return -1;
	return 0;
}

/* The segment erb_xdp hands to its global functions (in s->pa). */
static __always_inline void pa_set(struct erb_scratch *s, struct erb_flow_key *key, struct pkt *k,
				   __u32 seq)
{
	s->pa.key = *key;
	s->pa.thl = k->thl;
	s->pa.poff = k->poff;
	s->pa.plen = k->plen;
	s->pa.odd = k->odd;
	s->pa.seq = seq;
}

/*
 * What erb_get(), erb_set(), erb_pipe() and erb_parse() start from: erb_xdp's
 * flow (f) and (k) the packet's pointers derived again. 0, else what to
 * return: XDP_DROP without a flow (erb_xdp passes the one it found), -1
 * (answer nothing, parse) when the frame is not what erb_xdp saw.
 *
 * They are global functions: the verifier checks each once, on its own. As
 * bpf_loop callbacks of erb_xdp they were checked again for each state
 * erb_xdp reaches them in (kept bytes or none, a new flow or not, packet
 * pointers valid or spent, ...): under the loop checks of this machine's
 * 6.18 kernel (SCCs, as of 2026-12-05) erb_xdp took more than the verifier's
 * 1M instructions that way. A global function's pointer argument is plain
 * memory of its type's size: struct erb_flow holds no timer or lock for that
 * reason (a closed flow's timer is in erb_flow_gc), so the flow is passed, not
 * looked up again by its key (one hash lookup per call, until layout 15).
 */
static __always_inline int global_env(struct xdp_md *ctx, struct erb_scratch *s,
				      struct erb_global *g, struct pkt *k, struct erb_flow *f)
{
	if (!s || !g || !f)
		return XDP_DROP;
	if (k) {
		k->thl = s->pa.thl;
		k->poff = s->pa.poff;
		k->plen = s->pa.plen;
		k->odd = s->pa.odd;
		if (pkt_reload(ctx, k))
			return -1;
	}
	return 0;
}

#ifndef ERB_CALLBACKS
static __always_inline int answer_one(struct xdp_md *ctx, struct erb_flow *f, int want_set)
{
	struct erb_scratch *s = scratch();
	struct erb_global *g = global();
	struct pkt k = {};
	int rc = global_env(ctx, s, g, &k, f);

	if (rc || !s || !g || !f)
		return rc ? rc : XDP_DROP;
	return try_answer(ctx, &k, &s->o, f, &s->pa.key, s, g, want_set);
}

/*
 * Answer one GET or HGETALL in XDP: an XDP action, or < 0 to pass it on (-2:
 * not one, try erb_set()). Two functions, not one with want_set: each frame
 * then holds only its own command's locals (6.1 adds the frames of a call
 * chain, global functions' too, against one 512-byte stack).
 */
__attribute__((noinline)) int erb_get(struct xdp_md *ctx, struct erb_flow *f)
{
	return answer_one(ctx, f, 0);
}

/* Answer one SET in XDP: an XDP action, or < 0 (RC_PIPELINE: not one, try erb_pipe()). */
__attribute__((noinline)) int erb_set(struct xdp_md *ctx, struct erb_flow *f)
{
	return answer_one(ctx, f, 1);
}

/* erb_pipe()'s and erb_pipe_reply()'s start: global_env() into a. */
static __always_inline int pipe_env(struct xdp_md *ctx, struct erb_flow *f, struct pkt *k,
				    struct actx *a)
{
	struct erb_scratch *s = scratch();
	struct erb_global *g = global();
	int rc = global_env(ctx, s, g, k, f);

	if (rc || !s || !g || !f)
		return rc ? rc : XDP_DROP;
	a->f = f;
	a->ctx = ctx;
	a->k = k;
	a->key = &s->pa.key;
	return 0;
}

/*
 * Several commands in one segment: all answered in one reply, or all passed,
 * in three steps (erb_pipe.h): erb_pipe() (RC_PIPE_CHECK: go on), then
 * erb_pipe_check() (RC_PIPE_REPLY: go on, locks held), then erb_pipe_reply().
 */
__attribute__((noinline)) int erb_pipe(struct xdp_md *ctx, struct erb_flow *f)
{
	struct pkt k = {};
	struct actx a = {};
	int rc = pipe_env(ctx, f, &k, &a);

	return rc ? rc : pipe_prepare(&a);
}

/* The smallest frame there is above pipe_check_step and its probes. */
__attribute__((noinline)) int erb_pipe_check(struct xdp_md *ctx)
{
	return ctx ? pipe_check() : -1;
}

/* Called only after erb_pipe_check() said RC_PIPE_REPLY: releases its locks on every path. */
__attribute__((noinline)) int erb_pipe_reply(struct xdp_md *ctx, struct erb_flow *f)
{
	struct pkt k = {};
	struct actx a = {};
	int rc = pipe_env(ctx, f, &k, &a);

	return rc ? pipe_unlock(rc) : pipe_reply(&a);
}

#endif

/*
 * Parse a client segment's new bytes (parse_step, twice at most), a's flow,
 * ctx and key set. Returns an XDP action, or -1: parsed, go on (s->pa.end,
 * s->pa.ooo say how far).
 */
static __always_inline int parse_seg(struct actx *a, struct erb_scratch *s)
{
	struct pcur *u = &s->cur;
	int rc;

	s->pa.end = s->pa.seq + s->pa.plen;
	s->pa.ooo = 0;
	a->ooo = NULL;
	if (a->f->flags & ERB_FLOW_OOO) {
		struct erb_ooo *st = bpf_map_lookup_elem(&erb_ooo, &s->pa.key);

		/* this segment reaches the kept bytes: parse on over them */
		if (st && !before(s->pa.seq + s->pa.plen, st->seq)) {
			a->ooo = st;
			s->pa.ooo_from = s->pa.seq + s->pa.plen - st->seq;
			if (after(st->seq + st->len, s->pa.end))
				s->pa.end = st->seq + st->len;
			s->pa.ooo = 1;
		}
	}
	s->a_rc = -1;
	s->a_waited = 0;
	bpf_loop(2, parse_step, a, 0);
	rc = s->a_rc;
	/* parsed (not held): a SET (or HGETALL) it captured fills the cache */
	if (rc < 0 && u->cap && u->tracked && !u->err && !s->hit_unsent) {
		int fill = erb_capture(a->ctx, u, s->pa.poff);

		if (fill)
			a->f->fill_idx = fill;
	}
	return rc;
}

#ifndef ERB_CALLBACKS
/* See global_env(). */
__attribute__((noinline)) int erb_parse(struct xdp_md *ctx, struct erb_flow *f)
{
	struct erb_scratch *s = scratch();
	struct erb_global *g = global();
	struct actx a = {};
	int rc = global_env(ctx, s, g, NULL, f);
#ifdef ERB_TEST_STACK_PAD
	/*
	 * Test builds only (files/bpf `make variants`: erb-deep.bpf.o): this many
	 * bytes more in erb_parse's frame put erb_xdp's deepest call chain over
	 * 512 on every kernel, so that the loader's fallback to the compat build
	 * is exercised on a real kernel (tests/guest/sys-test.sh).
	 */
	volatile __u64 test_pad[ERB_TEST_STACK_PAD / 8];

#pragma unroll
	for (int i = 0; i < ERB_TEST_STACK_PAD / 8; i++)
		test_pad[i] = rc;
	if (test_pad[ctx->rx_queue_index & (ERB_TEST_STACK_PAD / 8 - 1)] != (__u64)rc)
		return XDP_PASS;
#endif

	if (rc || !s || !g || !f)
		return rc ? rc : XDP_DROP;
	a.f = f;
	a.ctx = ctx;
	a.key = &s->pa.key;
	return parse_seg(&a, s);
}
#else
/*
 * ERB_CALLBACKS (erb-compat.bpf.o, the fallback for kernels that refuse
 * erb.bpf.o): the answers as bpf_loop callbacks of erb_xdp, on erb_xdp's
 * struct pkt and actx. 6.1 adds every frame of a call chain against one
 * 512-byte stack, a global function's too (rounded to 32 bytes), and the
 * global functions above each need a struct pkt of their own; it refused
 * erb.bpf.o for the chain through erb_pipe until erb_pipe_check.
 */
static long get_step(__u32 i, void *arg)
{
	struct actx *a = arg;
	struct erb_scratch *s = scratch();
	struct erb_global *g = global();

	if (!a->ctx || !a->k || !a->f || !s || !g)
		return 1;
	s->a_rc = try_answer(a->ctx, a->k, &s->o, a->f, &s->pa.key, s, g, 0);
	return 1;
}

static long set_step(__u32 i, void *arg)
{
	struct actx *a = arg;
	struct erb_scratch *s = scratch();
	struct erb_global *g = global();

	if (!a->ctx || !a->k || !a->f || !s || !g)
		return 1;
	s->a_rc = try_answer(a->ctx, a->k, &s->o, a->f, &s->pa.key, s, g, 1);
	return 1;
}

static long pipe_step(__u32 i, void *arg)
{
	struct erb_scratch *s = scratch();

	if (s)
		s->a_rc = pipe_answer(arg);
	return 1;
}
#endif

SEC("xdp")
int erb_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct erb_flow_key key;
	struct erb_scratch *s;
	struct erb_global *g;
	struct erb_flow *f;
	struct tcp_opts *o;
	struct pkt k;
	__u32 seq, tot;
#ifdef ERB_CALLBACKS
	struct actx ac = {};
#endif
	int rc, last, kept = 0;

	k.eth = data;
	if ((void *)(k.eth + 1) > end)
		return XDP_PASS;
	if (k.eth->h_proto == bpf_htons(ETH_P_IPV6))
		return xdp_ipv6(ctx, sizeof(struct ethhdr));
	if (k.eth->h_proto == bpf_htons(ETH_P_8021Q) || k.eth->h_proto == bpf_htons(ETH_P_8021AD))
		return xdp_vlan(ctx);
	if (k.eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	k.ip = (void *)(k.eth + 1);
	if ((void *)(k.ip + 1) > end || k.ip->protocol != IPPROTO_TCP)
		return XDP_PASS;
	if (k.ip->ihl != 5 || (k.ip->frag_off & bpf_htons(0x3fff)))
		return xdp_odd_ip(ctx, k.ip, sizeof(struct ethhdr));
	k.tcp = (void *)(k.ip + 1);
	if ((void *)(k.tcp + 1) > end || k.tcp->dest != bpf_htons(cfg.redis_port))
		return XDP_PASS;
	k.thl = k.tcp->doff * 4;
	tot = bpf_ntohs(k.ip->tot_len);
	if (k.thl < sizeof(struct tcphdr) || k.thl > 60 ||
	    tot < sizeof(struct iphdr) + k.thl ||
	    (void *)k.ip + tot > end || (void *)k.tcp + k.thl > end)
		return XDP_PASS;
	k.poff = sizeof(struct ethhdr) + sizeof(struct iphdr) + k.thl;
	k.plen = tot - sizeof(struct iphdr) - k.thl;
	stat_inc(ERB_STAT_RX_PACKETS);

	s = scratch();
	g = global();
	if (!s || !g)
		return XDP_PASS;
	s->hit_unsent = 0;
	if (cfg.flags & ERB_CFG_KMOD)
		kmod_sync(g);
	k.odd = 0;
	o = &s->o;
	if (xdp_tcp_opts(ctx, &k, o, s)) {
		/* the kernel may accept them: track the segment, never answer it */
		k.odd = 1;
		o->ts_off = 0;
		o->sack_off = 0;
	}
	o->ans_tsval = o->tsecr;
	key.saddr = k.ip->saddr;
	key.daddr = k.ip->daddr;
	key.sport = k.tcp->source;
	key.dport = k.tcp->dest;
	seq = bpf_ntohl(k.tcp->seq);

	if (k.tcp->syn && !k.tcp->ack) {
		f = bpf_map_lookup_elem(&erb_flows, &key);
		/*
		 * This flow's own SYN again: a copy the network delivered late
		 * (after answers, maybe), or the client's retransmission. Redis's
		 * stack does not take it as a new connection (established: an ACK;
		 * SYN-RECV: its SYN-ACK again; TIME-WAIT: an ACK), so the flow
		 * stays as it is: made anew, the answered bytes' corrections would
		 * be lost, and every later segment would reach Redis off its
		 * sequence. A SYN of another ISN starts the flow afresh (a new
		 * connection; if Redis's stack still has the old one, its ACK gets
		 * the client's RST, which closes it). Data in a SYN (Fast Open)
		 * takes the path below, whose hold sees it.
		 */
		if (f && !k.plen && (f->flags & ERB_FLOW_SYN) && seq == f->c_isn) {
			stat_inc(ERB_STAT_SYN_KEPT);
			return XDP_PASS;
		}
		if (f) {
			flow_release(f, g);
			ooo_forget(f, &key);
		}
		f = flow_create(&key, s, ERB_FLOW_SYN |
				(cfg.require_auth ? 0 : ERB_FLOW_AUTHED) |
				(o->ts_off ? ERB_FLOW_TS : 0) |
				(o->wscale ? ERB_FLOW_C_WSCALE : 0) |
				(k.plen ? ERB_FLOW_UNTRACKED | ERB_FLOW_PUSHES : 0), seq + 1);
		if (f) {
			stat_inc(ERB_STAT_FLOW_NEW);
			f->c_isn = seq;
			f->c_mss = o->mss;
			f->c_wshift = o->wscale;
		}
		if (!k.plen)
			return XDP_PASS;
		/*
		 * TCP Fast Open: data in the SYN, which Redis's stack may take or
		 * not (then the client sends it again): never answered, and the
		 * bytes count as unparsed wherever they come.
		 */
		if (f)
			flow_gap(f, seq + 1, seq + 1 + k.plen);
		return unseen_hold(f, g, seq + 1 + k.plen) ? XDP_DROP : XDP_PASS;
	}

	f = bpf_map_lookup_elem(&erb_flows, &key);
	if (!f) {
		stat_inc(ERB_STAT_PASS_NO_FLOW);
		if (!k.plen || k.tcp->rst)
			return XDP_PASS;
		/*
		 * mid-stream: never answer it, but see its writes; what it
		 * turned on before (CLIENT TRACKING?) is unknown
		 */
		f = flow_create(&key, s, ERB_FLOW_UNTRACKED | ERB_FLOW_EST | ERB_FLOW_PUSHES, seq);
		if (!f)
			return xdp_unseen();	/* cannot parse it: hold or flush */
		/* a segment that starts a command is a boundary; else resync */
		if (bpf_xdp_load_bytes(ctx, k.poff, s->buf, 1) || s->buf[0] != '*')
			f->req.resync = 1;
		stat_inc(ERB_STAT_FLOW_ADOPTED);
		if (pkt_reload(ctx, &k))
			return XDP_PASS;
	}

	if (o->ts_off)
		o->ans_tsval = ts_answer(f, o->tsecr);
	if (k.tcp->ack) {
		__u32 a = bpf_ntohl(k.tcp->ack_seq);

		/* how far the client has our bytes: an answer it lacks keeps its request unacked */
		if (after(a, f->c_ack) && !after(a, READ_ONCE(f->s_nxt)))
			f->c_ack = a;
		/*
		 * A duplicate ACK at the start of our last answer while Redis has
		 * sent bytes after it: the client lost the answer. Resend it now,
		 * as the kernel's fast retransmit would, instead of the ACK.
		 * With nothing sent after the answer, a duplicate ACK there that
		 * carries SACK blocks reports a duplicate (D-SACK) below it: Redis
		 * probed with its last reply (its tail-loss probe or RTO; the
		 * ACKs the client sent for it went with answered requests), so the
		 * answer at the tail is lost too. Without SACK such an ACK may be
		 * a window update: the client's own RTO brings the request again.
		 */
		if (!k.plen && (f->flags & ERB_FLOW_ANSWERED) && a == f->last_rep_seq &&
		    !(k.tcp->syn | k.tcp->fin | k.tcp->rst) &&
		    (after(READ_ONCE(f->s_nxt), f->last_rep_seq + f->last_rep_len) || o->sack_n)) {
			rc = xdp_reanswer(ctx, &k, o, f, &key);
			if (rc >= 0) {
				if (rc == XDP_TX)
					stat_inc(ERB_STAT_ANSWER_RESENT);
				return rc;
			}
			/* the ACK goes on to Redis; the copy brings the answer */
			if (rc == -2)
				reanswer_park(ctx);
			if (pkt_reload(ctx, &k))
				return XDP_PASS;
		}
	}

	if (k.plen) {
		__u32 fl = f->flags;

		/*
		 * Bytes of the last answered request again: a retransmission
		 * (alone, or collapsed with the bytes around it) or a duplicate.
		 * Redis must never see them: answer again from the copy (its ACK
		 * covers the request, so the client sends what follows anew).
		 */
		if ((fl & ERB_FLOW_ANSWERED) && before(seq, f->last_req_seq + f->last_req_len) &&
		    after(seq + k.plen, f->last_req_seq)) {
			if (seq != f->last_req_seq || k.plen != f->last_req_len)
				stat_inc(ERB_STAT_DROP_OVERLAP);
			rc = xdp_reanswer(ctx, &k, o, f, &key);
			if (rc == -2)
				reanswer_park(ctx);
			return rc < 0 ? XDP_DROP : rc;
		}
		if (seq != f->c_nxt && !(fl & ERB_FLOW_UNTRACKED))
			stat_inc(ERB_STAT_PASS_OUT_OF_ORDER);
		if (fl & ERB_FLOW_UNTRACKED) {
			stat_inc(ERB_STAT_PASS_UNTRACKED);
			/* bytes this flow passed unparsed before: keys unknown */
			if (f->gap_lo != f->gap_hi && before(seq, f->gap_hi) &&
			    after(seq + k.plen, f->gap_lo) && unseen_hold(f, g, seq + k.plen))
				return XDP_DROP;
		}
		/* kept bytes wait for this segment: it is parsed, never answered */
		if (seq == f->c_nxt && !(fl & (ERB_FLOW_UNTRACKED | ERB_FLOW_OOO))) {
			pa_set(s, &key, &k, seq);
			/* a GET; else (-2) a SET; else maybe a pipeline */
#ifndef ERB_CALLBACKS
			rc = get_head(ctx, &k) ? erb_get(ctx, f) : not_get(ctx, &k, s);
			if (rc == -2)
				rc = erb_set(ctx, f);
			if (rc == RC_PIPELINE)
				rc = erb_pipe(ctx, f);
			if (rc == RC_PIPE_CHECK)
				rc = erb_pipe_check(ctx);
			if (rc == RC_PIPE_REPLY)
				rc = erb_pipe_reply(ctx, f);
#else
			ac.ctx = ctx;
			ac.k = &k;
			ac.f = f;
			ac.key = &s->pa.key;
			s->a_rc = -1;
			bpf_loop(1, get_step, &ac, 0);
			rc = s->a_rc;
			if (rc == -2) {
				if (pkt_reload(ctx, &k))
					return XDP_PASS;
				s->a_rc = -1;
				bpf_loop(1, set_step, &ac, 0);
				rc = s->a_rc;
			}
			if (rc == RC_PIPELINE) {
				if (pkt_reload(ctx, &k))
					return XDP_PASS;
				s->a_rc = -1;
				bpf_loop(1, pipe_step, &ac, 0);
				rc = s->a_rc;
			}
#endif
			if (rc >= 0)
				return rc;
			/* the frame is untouched: reload the pointers */
			if (pkt_reload(ctx, &k))
				return XDP_PASS;
		}
		/*
		 * A gap: bytes before this segment are missing. Passing it lets
		 * Linux's own loss recovery (SACK) work. Its bytes are kept for
		 * the parser, which goes on over them once the gap is filled.
		 */
		if (after(seq, f->c_nxt) && !(f->flags & ERB_FLOW_UNTRACKED) &&
		    !ooo_keep(ctx, &k, f, &key, s, seq)) {
			stat_inc(ERB_STAT_OOO_KEPT);
			kept = 1;
		} else if (after(seq, f->c_nxt)) {
			/*
			 * Not kept (too much, another gap, an untracked flow): the
			 * command boundary is lost. The flow is given up, parsed
			 * for writes from here on, the gap marked unparsed.
			 */
			ooo_to_gap(f, &key);
			if (!(f->flags & ERB_FLOW_UNTRACKED)) {
				flow_untrack(f, g);
				stat_inc(ERB_STAT_PASS_OOO);
			}
			flow_gap(f, f->c_nxt, seq);
			f->hold_wseq = 0;	/* the bound of a segment held at the old c_nxt */
			f->req.resync = 1;
			f->req.state = ERB_P_TYPE;
			f->req.argc = 0;
			f->c_nxt = seq;
		}
		if (!kept && after(seq + k.plen, f->c_nxt)) {
			int prc;

			pa_set(s, &key, &k, seq);
			s->pa.from = f->c_nxt - seq;
#ifndef ERB_CALLBACKS
			prc = erb_parse(ctx, f);
#else
			ac.ctx = ctx;
			ac.k = &k;
			ac.f = f;
			ac.key = &s->pa.key;
			prc = parse_seg(&ac, s);
#endif
			if (prc >= 0)
				return prc;
			f->c_nxt = s->pa.end;
			if (s->pa.ooo && ooo_forget(f, &key))
				stat_inc(ERB_STAT_OOO_RESUMED);
			if (pkt_reload(ctx, &k))
				return XDP_PASS;
		}
	}
	if (k.tcp->fin) {
		if (seq + k.plen == f->c_nxt)
			f->c_nxt += 1;
		__sync_fetch_and_or(&f->flags, ERB_FLOW_C_FIN);
	}
	/* the client's last ACK of the server's FIN ends the flow */
	last = k.tcp->rst ||
	       ((f->flags & (ERB_FLOW_C_FIN | ERB_FLOW_S_FIN)) ==
		(ERB_FLOW_C_FIN | ERB_FLOW_S_FIN) && !k.tcp->fin && !k.plen &&
		bpf_ntohl(k.tcp->ack_seq) == f->s_nxt);
	if (f->flags & ERB_FLOW_ANSWERED) {
		if (o->sack_off && !k.odd && xdp_tcp_opts(ctx, &k, o, s))
			return XDP_PASS;
		xdp_correct(ctx, &k, f, o);
	}
	if (k.tcp->rst)
		flow_delete(&key, f, g);
	else if (last)
		flow_close(&key, f, g);
	return XDP_PASS;
}

/* ------------------------------------------------------------- TC */

static __always_inline int tc_parse(struct __sk_buff *skb, struct rctx *r, __u32 poff,
				    __u32 from, __u32 plen)
{
	struct erb_parser *p = &r->pc.f->rep;

	for (int w = 0; w < MAX_WINDOWS; w++) {
		__u32 n;

		if (from >= plen || r->pc.u->err)
			break;
		/* skip bulk payload without loading it */
		if (p->state == ERB_P_BULK && p->bulk_left > 3) {
			__u32 skip = p->bulk_left - 3;

			if (skip > plen - from)
				skip = plen - from;
			p->bulk_left -= skip;
			from += skip;
			if (from >= plen)
				break;
		}
		n = plen - from;
		if (n > WIN)
			n = WIN;
		if (!len_in(n, 1, WIN) || bpf_skb_load_bytes(skb, poff + from, r->pc.s->buf, arg_len(n, 1, WIN)))
			return -1;
		r->pc.u->pos = 0;
		r->pc.u->end = n;
		r->pc.u->win_base = from;
		bpf_loop(MAX_STEPS, rep_step, r, 0);
		from += r->pc.u->pos;
	}
	if (from < plen && !r->pc.u->err)
		rep_error(r, p);
	return 0;
}

static __always_inline void tc_rewrite(struct __sk_buff *skb, __u32 off, __u32 csum_off,
				       __u32 old, __u32 nv)
{
	__u32 o = bpf_htonl(old), n = bpf_htonl(nv);

	bpf_l4_csum_replace(skb, csum_off, o, n, 4);
	bpf_skb_store_bytes(skb, off, &n, 4, 0);
}

/* Walk the TCP options of a server segment into s->oc (window scale, SACK). */
static __always_inline void tc_opts(struct __sk_buff *skb, struct erb_scratch *s, __u32 off,
				    __u32 olen)
{
	struct erb_scratch *sp = s;

	__builtin_memset(&s->oc, 0, sizeof(s->oc));
	s->oc.len = olen;
	if (len_in(olen, 1, 40) && !bpf_skb_load_bytes(skb, off, s->opt, arg_len(olen, 1, 40)))
		bpf_loop(20, opt_step, &sp, 0);
}

struct tsctx {
	struct __sk_buff *skb;
	struct erb_flow *f;
	__u32 off;		/* of the TCP options */
	__u32 olen;
};

/* Redis's TSval, when its options start NOP NOP TS as Linux's do, to ts_learn(). */
static long ts_step(__u32 i, void *arg)
{
	struct tsctx *x = arg;
	__u8 o[8];

	if (!x->skb || !x->f || !(x->f->flags & ERB_FLOW_TS) || x->olen < 12 ||
	    bpf_skb_load_bytes(x->skb, x->off & 127, o, sizeof(o)) || !nop_nop_ts(o))
		return 1;
	ts_learn(x->f, (__u32)o[4] << 24 | (__u32)o[5] << 16 | (__u32)o[6] << 8 | o[7]);
	return 1;
}

/*
 * A consistent copy of f->c and f->s for TC egress, which may run on another
 * CPU than the XDP answer changing them: a sequence count read (adj_seq even
 * and the same before and after the copy). The fetching atomics order the
 * copy between the two reads on every JIT. XDP keeps adj_seq odd for a few
 * stores, so a step rarely fails; -1 if none of ADJ_TRIES saw it stable.
 */
#define ADJ_TRIES	1024

struct adjr {
	struct erb_flow *f;
	struct erb_seqadj c, s;
	int ok;
};

static __always_inline int adj_try(struct adjr *r)
{
	struct erb_flow *f = r->f;
	__u32 v = __sync_fetch_and_add(&f->adj_seq, 0);

	if (v & 1)
		return 0;
	r->c = f->c;
	r->s = f->s;
	return __sync_fetch_and_add(&f->adj_seq, 0) == v;
}

static long adj_step(__u32 i, void *arg)
{
	struct adjr *r = arg;

	r->ok = adj_try(r);
	return r->ok;
}

static __always_inline int adj_read(struct erb_flow *f, struct erb_seqadj *c, struct erb_seqadj *s)
{
	struct adjr r = { .f = f };

	/* the first try inline (it nearly always succeeds), the retries in a loop */
	r.ok = adj_try(&r);
	if (!r.ok)
		bpf_loop(ADJ_TRIES, adj_step, &r, 0);
	if (!r.ok)
		return -1;
	*c = r.c;
	*s = r.s;
	return 0;
}

SEC("tc")
int erb_tc_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct erb_seqadj cadj, sadj;
	struct erb_scratch *s;
	struct erb_global *g;
	struct erb_flow *f;
	struct iphdr *ip;
	struct tcphdr *t;
	struct rctx r = {};
	struct tsctx tx;
	__u32 thl, tot, plen, seq, ack, cseq, toff, csum_off, flags, olen, resend, s_nxt;

	/* erb-agent's replay of a parked segment on a copy (see ERB_MARK_REPLAY_TX) */
	if (skb->mark == ERB_MARK_REPLAY_TX) {
		skb->mark = 0;
		return TC_ACT_OK;
	}
	if (skb->mark == ERB_MARK_REPLAY_RX) {
		skb->mark = 0;
		return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
	}
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_TCP)
		return TC_ACT_OK;
	t = (void *)(ip + 1);
	if ((void *)(t + 1) > end || t->source != bpf_htons(cfg.redis_port))
		return TC_ACT_OK;
	r.key.saddr = ip->daddr;
	r.key.daddr = ip->saddr;
	r.key.sport = t->dest;
	r.key.dport = t->source;
	f = bpf_map_lookup_elem(&erb_flows, &r.key);
	if (!f)
		return TC_ACT_OK;
	s = scratch();
	g = global();
	if (!s || !g)
		return TC_ACT_OK;
	thl = t->doff * 4;
	tot = bpf_ntohs(ip->tot_len);
	if (tot == 0 && skb->len > sizeof(*eth))
		tot = skb->len - sizeof(*eth);	/* BIG TCP: a GSO packet over 64 KiB */
	if (thl < sizeof(*t) || thl > 60 || tot < sizeof(*ip) + thl)
		return TC_ACT_OK;
	plen = tot - sizeof(*ip) - thl;
	seq = bpf_ntohl(t->seq);
	ack = bpf_ntohl(t->ack_seq);
	flags = ((__u8 *)t)[13];
	toff = sizeof(*eth) + sizeof(*ip);
	csum_off = toff + __builtin_offsetof(struct tcphdr, check);
	olen = (thl - sizeof(*t)) & 63;

	if (adj_read(f, &cadj, &sadj))
		return TC_ACT_SHOT;	/* never seen stable: Redis's TCP sends it again */

	if ((flags & 0x12) == 0x12) {	/* SYN-ACK */
		/*
		 * Sent again by a stack still in SYN-RECV (the client's third ACK
		 * was lost) after XDP answered the client's first requests: s_nxt
		 * and c_ack are past it, and stay there.
		 */
		if ((f->flags & ERB_FLOW_SYN) && !(f->flags & ERB_FLOW_ANSWERED)) {
			__u32 win = bpf_ntohs(t->window), shift = 0;

			/* the SYN-ACK's window is not scaled (RFC 7323): scale it */
			tc_opts(skb, s, toff + sizeof(*t), olen);
			if (s->oc.wscale && (f->flags & ERB_FLOW_C_WSCALE))
				shift = s->oc.wscale - 1;
			if (shift > 14)
				shift = 14;
			f->s_win = bpf_htons(win >> shift);
			f->s_nxt = seq + 1;
			f->c_ack = seq + 1;
			if (!s->oc.wscale)
				f->c_wshift = 0;	/* the client's windows are not scaled either */
			__sync_fetch_and_or(&f->flags, ERB_FLOW_EST | ERB_FLOW_WIN);
		}
		return TC_ACT_OK;
	}
	/* Linux puts NOP NOP TS first: Redis's TSval, before any rewrite below */
	tx.skb = skb;
	tx.f = f;
	tx.off = toff + sizeof(*t);
	tx.olen = olen;
	bpf_loop(1, ts_step, &tx, 0);
	cseq = map_sseq(&sadj, seq);
	s_nxt = f->s_nxt;
	resend = plen && !after(cseq + plen, s_nxt);	/* all bytes already sent */
	f->s_win = t->window;
	if (!(f->flags & ERB_FLOW_WIN))
		__sync_fetch_and_or(&f->flags, ERB_FLOW_WIN);
	/*
	 * s_nxt moves before the replies in these bytes are counted: XDP reads
	 * replies, then s_nxt, so once it sees a reply counted it also sees
	 * the sequence space that reply takes, and never answers into it.
	 */
	if (after(cseq + plen + !!(flags & 0x01), s_nxt)) {
		WRITE_ONCE(f->s_nxt, cseq + plen + !!(flags & 0x01));
		barrier();
	}
	if (plen && !(f->flags & ERB_FLOW_UNTRACKED) && after(cseq + plen, s_nxt)) {
		__u32 from = before(cseq, s_nxt) ? s_nxt - cseq : 0;

		r.pc.f = f;
		r.pc.s = s;
		r.pc.g = g;
		r.pc.u = &s->cur;
		__builtin_memset(&s->cur, 0, sizeof(s->cur));
		if (after(cseq, s_nxt)) {
			rep_error(&r, &f->rep);	/* a gap in our own output */
		} else {
			tc_parse(skb, &r, toff + thl, from, plen);
			if (r.pc.u->fill_due)
				fill_from_aux(skb, toff + thl, &r.key, &r.pc);
			wr_release(f, f->replies, 0);
			if (f->replies == f->cmds && !(f->flags & ERB_FLOW_MULTI))
				wr_unblock(f, g);
		}
	}
	if (flags & 0x01)
		__sync_fetch_and_or(&f->flags, ERB_FLOW_S_FIN);

	/*
	 * Redis resending bytes the client already has (the ACK for them rode
	 * on a request we answered) may reach the client before our answer in
	 * flight. It is accepted (it ends at the client's rcv_nxt), its ACK
	 * covers that answered request and its TSval becomes the client's
	 * ts_recent: a newer one than our answer's makes PAWS drop the answer,
	 * a reply lost for good. It gets the TSval of our last answer instead.
	 */
	/*
	 * Only bytes the client has acknowledged: a retransmission of a segment
	 * the client lost must keep its own TSval, or PAWS drops it again.
	 */
	if (resend && f->s_tsval && (f->flags & ERB_FLOW_ANSWERED) && olen >= 10 && olen <= 40 &&
	    !after(cseq + plen, f->c_ack)) {
		tc_opts(skb, s, toff + sizeof(*t), olen);
		if (s->oc.ts_off && !s->oc.bad && after(s->oc.tsval, f->s_tsval)) {
			tc_rewrite(skb, toff + (s->oc.ts_off & 63) + 2, csum_off, s->oc.tsval, f->s_tsval);
			stat_inc(ERB_STAT_TS_CLAMPED);
		}
	}
	if (f->flags & ERB_FLOW_ANSWERED) {
		__u32 v = map_sseq(&sadj, seq);

		if (v != seq)
			tc_rewrite(skb, toff + 4, csum_off, seq, v);
		if (flags & 0x10) {
			v = map_sack(&cadj, ack);
			/*
			 * Never acknowledge an answered request before the client
			 * has our answer: its own retransmission of the request is
			 * what brings a lost answer back (answered again).
			 */
			if (before(READ_ONCE(f->c_ack), f->last_rep_seq + f->last_rep_len) &&
			    after(v, f->last_req_seq)) {
				v = f->last_req_seq;
				stat_inc(ERB_STAT_ACK_HELD);
			}
			if (v != ack)
				tc_rewrite(skb, toff + 8, csum_off, ack, v);
		}
		/* SACK blocks carry client sequence numbers */
		if (olen >= 1 && olen <= 40) {
			tc_opts(skb, s, toff + sizeof(*t), olen);
			for (__u32 j = 0; j < 8; j++) {
				__u32 eo = s->oc.sack_off - sizeof(*t) + 2 + 4 * j, old, nv;

				if (s->oc.bad || !s->oc.sack_off || j >= s->oc.sack_n * 2)
					break;
				eo &= 63;
				if (eo > 36)
					break;
				old = (__u32)s->opt[eo] << 24 | (__u32)s->opt[eo + 1] << 16 |
				      (__u32)s->opt[eo + 2] << 8 | s->opt[eo + 3];
				nv = map_sack(&cadj, old);
				if (nv != old)
					tc_rewrite(skb, toff + sizeof(*t) + eo, csum_off, old, nv);
			}
		}
		stat_inc(ERB_STAT_CORRECTED_OUT);
	}
	if (flags & 0x04)
		flow_delete(&r.key, f, g);
	else if ((f->flags & (ERB_FLOW_C_FIN | ERB_FLOW_S_FIN)) ==
		 (ERB_FLOW_C_FIN | ERB_FLOW_S_FIN) && !(flags & 0x01) && !plen &&
		 map_sack(&cadj, ack) == f->c_nxt)
		flow_close(&r.key, f, g);
	return TC_ACT_OK;
}
