/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ERB data path: the RESP reply parser (TC egress): reply counting, AUTH/HELLO outcomes, fills.
 * Part of the one translation unit erb.bpf.c (the verifier sees one object);
 * included there in order, after the maps and the load-time cfg.
 */
#ifndef ERB_REP_H
#define ERB_REP_H

/* ------------------------------------------------ reply parser (TC) */

/* "$1400\r\n": the longest bulk header of a value ERB may cache (ERB_VAL_MAX). */
#define GET_REP_HDR_MAX	7

/*
 * The value of a GET's bulk reply "$<n>\r\n<value>\r\n" (len bytes at off of
 * the skb, the parser has checked its framing) into a->fill_val. Returns its
 * length, or 0: nil ("$-1"), empty, or longer than the cache takes.
 */
static __always_inline __u32 get_value_from_reply(struct __sk_buff *skb, __u32 off, __u32 len,
						  struct erb_aux *a)
{
	char h[GET_REP_HDR_MAX] = {};
	__u32 n = 0, hl = 0;

	if (len < GET_REP_HDR_MAX || bpf_skb_load_bytes(skb, off, h, GET_REP_HDR_MAX) || h[0] != '$')
		return 0;
#pragma unroll
	for (__u32 i = 1; i < GET_REP_HDR_MAX - 1; i++) {
		if (h[i] == '\r') {
			hl = i + 2;
			break;
		}
		if (h[i] < '0' || h[i] > '9')
			return 0;
		n = n * 10 + (h[i] - '0');
	}
	if (hl < 4 || h[hl - 1] != '\n' || n == 0 || n > cfg.max_value_len || hl + n + 2 != len)
		return 0;
	if (!len_in(n, 1, ERB_VAL_MAX) ||
	    bpf_skb_load_bytes(skb, off + hl, a->fill_val, arg_len(n, 1, ERB_VAL_MAX)))
		return 0;
	return n;
}

/*
 * An aggregate's header "<t><n>\r\n" at d, n 1..999. Returns its length
 * (4..6), 0 for an n out of range. HGETALL's reply is "*<2 x pairs>" in RESP2
 * and "%<pairs>" in RESP3, followed by the same bulk strings: the cache keeps
 * the RESP2 form, a RESP3 flow gets the other header.
 */
static __always_inline __u32 agg_hdr_len(__u32 n)
{
	return 4 + (n >= 10) + (n >= 100);
}

static __always_inline __u32 agg_hdr(char *d, char t, __u32 n)
{
	__u32 i = 1;

	if (n < 1 || n > 999)
		return 0;
	d[0] = t;
	if (n >= 100)
		d[i++] = '0' + n / 100;
	if (n >= 10)
		d[i++] = '0' + n / 10 % 10;
	d[i & 7] = '0' + n % 10;
	d[(i + 1) & 7] = '\r';
	d[(i + 2) & 7] = '\n';
	return i + 3;
}

/* Is the reply (len bytes at off of the skb) a nil: "$-1\r\n", or RESP3's "_\r\n"? */
static __always_inline int nil_reply(struct __sk_buff *skb, __u32 off, __u32 len)
{
	char h[5] = {};

	if (len == 3)
		return !bpf_skb_load_bytes(skb, off, h, 3) && h[0] == '_' && h[1] == '\r' && h[2] == '\n';
	if (len == 5)
		return !bpf_skb_load_bytes(skb, off, h, 5) && h[0] == '$' && h[1] == '-' && h[2] == '1' &&
		       h[3] == '\r' && h[4] == '\n';
	return 0;
}

static __always_inline void fill_from_aux(struct __sk_buff *skb, __u32 poff,
					  struct erb_flow_key *k, struct pctx *c)
{
	struct erb_aux *a = bpf_map_lookup_elem(&erb_aux, k);
	struct erb_global *g = c->g;
	__u32 gen, b, *ep, *bl, type, len, slot = 0;
	struct erb_bucket *bk;
	int rc;

	if (!a)
		return;
	type = c->u->fill_due == 2 ? ERB_TYPE_HASH :
	       c->u->fill_due == 3 ? ERB_TYPE_STRING_UNVERIFIED : ERB_TYPE_STRING;
	/* the reply must be the kind of the captured command */
	if (a->fill_type != type) {
		stat_inc(ERB_STAT_FILL_SKIPPED);
		return;
	}
	if (type == ERB_TYPE_HASH && c->u->fill_map) {
		/*
		 * RESP3's map "%<pairs>\r\n" + bulks: stored as RESP2's array,
		 * "*<2 x pairs>\r\n" + the same bulks.
		 */
		__u32 n2 = c->u->fill_n, hl, nh, el;

		len = c->u->fill_len;
		hl = agg_hdr_len(n2 / 2);
		nh = agg_hdr(a->fill_val, '*', n2);
		el = len - hl;		/* the bulks */
		if ((n2 & 1) || !nh || len <= hl || nh + el > cfg.max_value_len ||
		    !len_in(el, 1, ERB_VAL_MAX - 8) ||
		    bpf_skb_load_bytes(skb, poff + c->u->fill_off + hl, a->fill_val + (nh & 7),
				       arg_len(el, 1, ERB_VAL_MAX - 8))) {
			stat_inc(ERB_STAT_FILL_SKIPPED);
			return;
		}
		a->fill_vlen = nh + el;
	} else if (type == ERB_TYPE_HASH) {
		/* Redis's exact reply bytes, all in this skb */
		len = c->u->fill_len;
		if (len == 0 || len > cfg.max_value_len || len > ERB_VAL_MAX) {
			stat_inc(ERB_STAT_FILL_SKIPPED);
			return;
		}
		if (!len_in(len, 1, ERB_VAL_MAX) ||
		    bpf_skb_load_bytes(skb, poff + c->u->fill_off, a->fill_val, arg_len(len, 1, ERB_VAL_MAX))) {
			stat_inc(ERB_STAT_FILL_SKIPPED);
			return;
		}
		a->fill_vlen = len;
	} else if (type == ERB_TYPE_STRING_UNVERIFIED) {
		/*
		 * The value of Redis's bulk reply (an empty or too long one is not
		 * cached), or a nil: the key does not exist. Absence has no TTL to
		 * check, so a nil is served at once; any write that creates the key
		 * invalidates it as it would a value (XDP, or erb-agent's tracking).
		 */
		if (nil_reply(skb, poff + c->u->fill_off, c->u->fill_len)) {
			type = ERB_TYPE_NIL;
			len = 0;
		} else {
			len = get_value_from_reply(skb, poff + c->u->fill_off, c->u->fill_len, a);
			if (!len) {
				stat_inc(ERB_STAT_FILL_SKIPPED);
				return;
			}
		}
		a->fill_vlen = len;
	}
	b = a->fill_bucket & (ERB_INFLIGHT_BUCKETS - 1);
	ep = bpf_map_lookup_elem(&erb_wepoch, &b);
	bk = bucket_get(&b);
	if (!ep || !bk)
		return;
	bl = &bk->lock;
	gen = g->cache_gen;
	/*
	 * Writes of the bucket in flight when the SET arrived were refused at
	 * capture; any that arrived since moved the epoch: Redis may have run
	 * them before or after this SET, whatever order the replies came in.
	 */
	if (!(cfg.flags & ERB_CFG_FILL) || (g->ctl & ERB_CTL_DRAIN) || g->overflow ||
	    *ep != a->fill_epoch || gen != a->fill_gen || fenced(g, bk)) {
		stat_inc(ERB_STAT_FILL_SKIPPED);
		return;
	}
	if (__sync_val_compare_and_swap(bl, 0, bpf_get_smp_processor_id() + 1) != 0) {
		stat_inc(ERB_STAT_FILL_SKIPPED);
		return;
	}
	/*
	 * A GET of a cached key passed for another reason (a reply owed, a
	 * pipeline, a gap): the entry stands as it is, not made unverified.
	 */
	if (type == ERB_TYPE_STRING_UNVERIFIED || type == ERB_TYPE_NIL) {
		cache_probe(c->s, a->fill_key, a->fill_klen, a->fill_hash, gen, 1);
		if (c->s->pr.hit >= 0) {
			__sync_lock_test_and_set(bl, 0);
			stat_inc(ERB_STAT_FILL_SKIPPED);
			return;
		}
	}
	/* never overwrite a fast-path write Redis does not have yet */
	/*
	 * A hash may carry a TTL TC cannot see: it is served only once the
	 * agent has checked (PTTL -1) and made it ERB_TYPE_HASH.
	 */
	rc = key_pending(a->fill_hash, g->applied_seq) ||
	     cache_store(c->s, a->fill_hash, a->fill_key, a->fill_klen, a->fill_val,
			 a->fill_vlen, gen, type == ERB_TYPE_HASH ? ERB_TYPE_HASH_UNVERIFIED : type, &slot);
	__sync_lock_test_and_set(bl, 0);
	if (rc) {
		stat_inc(ERB_STAT_FILL_SKIPPED);
		return;
	}
	/* a write that raced the store must see no stale entry afterwards */
	if (g->overflow || *ep != a->fill_epoch || g->cache_gen != gen || fenced(g, bk)) {
		cache_invalidate(a->fill_hash);
		stat_inc(ERB_STAT_FILL_SKIPPED);
		return;
	}
	stat_inc(ERB_STAT_FILL);
	if (type == ERB_TYPE_HASH || type == ERB_TYPE_STRING_UNVERIFIED)
		fillq_push(g, slot);	/* erb-agent checks it for a TTL */
	if (type == ERB_TYPE_HASH)
		stat_inc(ERB_STAT_FILL_HASH);
	if (type == ERB_TYPE_STRING_UNVERIFIED)
		stat_inc(ERB_STAT_FILL_GET);
	if (type == ERB_TYPE_NIL)
		stat_inc(ERB_STAT_FILL_NIL);
}

struct rctx {
	struct pctx pc;
	struct erb_flow_key key;
};

static __always_inline void rep_done(struct rctx *r, struct erb_parser *p)
{
	struct erb_flow *f = r->pc.f;
	__u32 idx = f->replies;
	int ok = p->top_type == '+' && p->line_ok && p->line_len == 2;

	/*
	 * More replies than commands (a command that answers several times,
	 * an input we counted wrong): counting can no longer tell when Redis
	 * owes nothing, so the flow is never answered again.
	 */
	if (idx == READ_ONCE(f->cmds)) {
		stat_inc(ERB_STAT_REPLY_UNMATCHED);
		if (!(__sync_fetch_and_or(&f->flags, ERB_FLOW_UNTRACKED) & ERB_FLOW_UNTRACKED))
			flow_unmatched(f, r->pc.g);
		r->pc.u->err = 1;
		return;
	}
	if (f->fill_idx == idx + 1) {
		struct pcur *u = r->pc.u;
		__u32 len = u->win_base + u->pos - u->rep_start;

		f->fill_idx = 0;
		if (f->flags & (ERB_FLOW_UNTRACKED | ERB_FLOW_MULTI)) {
			/* no fill */
		} else if (ok) {
			u->fill_due = 1;	/* done after parsing, before releases */
		} else if ((p->top_type == '*' || p->top_type == '%') && u->rep_here && u->rep_n >= 2 &&
			   len <= cfg.max_value_len + (p->top_type == '%')) {
			/* an HGETALL reply (RESP2's array, RESP3's map), whole in this skb */
			u->fill_due = 2;
			u->fill_off = u->rep_start;
			u->fill_len = len;
			u->fill_n = u->rep_n;
			u->fill_map = p->top_type == '%';
		} else if ((p->top_type == '$' || p->top_type == '_') && u->rep_here &&
			   len <= cfg.max_value_len + GET_REP_HDR_MAX + 2) {
			/* a GET's bulk reply or nil ("$-1", RESP3 "_"), whole in this skb */
			u->fill_due = 3;
			u->fill_off = u->rep_start;
			u->fill_len = len;
		}
	}
	if (f->auth_idx == idx + 1 &&
	    (p->top_type == '+' || p->top_type == '%' || p->top_type == '*'))
		__sync_fetch_and_or(&f->flags, ERB_FLOW_AUTHED);
	/* HELLO's reply says the protocol: an array in RESP2, a map in RESP3 (AUTH's is "+OK") */
	if (f->auth_idx == idx + 1 && (p->top_type == '%' || p->top_type == '*'))
		__sync_fetch_and_or(&f->flags, p->top_type == '%' ? ERB_FLOW_RESP3 : ERB_FLOW_RESP2);
	f->replies = idx + 1;
	stat_inc(ERB_STAT_REPLIES);
}

static __always_inline void rep_elem_done(struct rctx *r, struct erb_parser *p)
{
	p->state = ERB_P_TYPE;
	/* inside an aggregate deeper than the tracked levels: whole once none is left */
	if (p->argc && --p->argc)
		return;
	for (int i = 0; i < ERB_DEPTH_MAX + 1; i++) {
		__u32 d = p->depth;

		if (d == 0) {
			rep_done(r, p);
			return;
		}
		d = (d - 1) & (ERB_DEPTH_MAX - 1);
		if (p->left[d] > 1) {
			p->left[d]--;
			return;
		}
		p->left[d] = 0;
		p->depth = d;
	}
}

static __always_inline void rep_error(struct rctx *r, struct erb_parser *p)
{
	stat_inc(ERB_STAT_PARSE_ERROR);
	if (!(__sync_fetch_and_or(&r->pc.f->flags, ERB_FLOW_UNTRACKED) & ERB_FLOW_UNTRACKED))
		flow_unmatched(r->pc.f, r->pc.g);
	r->pc.u->err = 1;
}

static long rep_step(__u32 unused, void *arg)
{
	struct rctx *r = arg;
	struct erb_flow *f = r->pc.f;
	struct erb_scratch *s = r->pc.s;
	struct erb_parser *p;
	__u32 pos = r->pc.u->pos;
	__u8 ch;

	if (!f || !s || r->pc.u->err || pos >= r->pc.u->end || r->pc.u->end > WIN)
		return 1;
	p = &f->rep;
	ch = s->buf[pos & WIN_MASK];
	r->pc.u->pos = pos + 1;

	switch (p->state) {
	case ERB_P_TYPE:
		p->type = ch;
		p->num = 0;
		p->neg = 0;
		if (p->depth == 0) {
			p->top_type = ch;
			p->line_ok = 1;
			p->line_len = 0;
			r->pc.u->rep_here = 1;
			r->pc.u->rep_start = r->pc.u->win_base + pos;
			r->pc.u->rep_n = 0;
		}
		switch (ch) {
		case '+': case '-': case ':': case '_': case '#': case ',': case '(':
			p->state = ERB_P_LINE;
			return 0;
		case '$': case '=': case '!': case '*': case '~': case '%':
			p->state = ERB_P_NUM;
			return 0;
		default:	/* '>' push, '|' attribute, garbage: give up */
			rep_error(r, p);
			return 1;
		}
	case ERB_P_LINE:
		if (ch == '\r') {
			p->state = ERB_P_LF;
			return 0;
		}
		if (p->depth == 0) {
			if (!((p->line_len == 0 && ch == 'O') || (p->line_len == 1 && ch == 'K')))
				p->line_ok = 0;
			p->line_len++;
		}
		return 0;
	case ERB_P_NUM:
		if (ch >= '0' && ch <= '9') {
			if (p->num > (1U << 28)) {
				rep_error(r, p);
				return 1;
			}
			p->num = p->num * 10 + (ch - '0');
		} else if (ch == '-' && p->num == 0) {
			p->neg = 1;
		} else if (ch == '\r') {
			p->state = ERB_P_LF;
		} else {
			rep_error(r, p);
			return 1;
		}
		return 0;
	case ERB_P_LF:
		if (ch != '\n') {
			rep_error(r, p);
			return 1;
		}
		switch (p->type) {
		case '$': case '=': case '!':
			if (p->neg) {
				rep_elem_done(r, p);
			} else {
				p->bulk_left = p->num + 2;
				p->state = ERB_P_BULK;
			}
			return 0;
		case '*': case '~': case '%': {
			__u32 n = p->type == '%' ? p->num * 2 : p->num;

			if (p->depth == 0 && (p->type == '*' || p->type == '%') && !p->neg)
				r->pc.u->rep_n = n;
			if (p->neg || n == 0) {
				rep_elem_done(r, p);
				return 0;
			}
			if (p->argc || p->depth >= ERB_DEPTH_MAX) {
				/*
				 * Deeper than the tracked levels (COMMAND DOCS nests 12):
				 * argc counts the elements left in that subtree, an
				 * aggregate standing for its n elements.
				 */
				if (n > (1U << 29) || p->argc > (1U << 30)) {
					rep_error(r, p);
					return 1;
				}
				p->argc = p->argc ? p->argc + n - 1 : n;
				p->state = ERB_P_TYPE;
				return 0;
			}
			p->left[p->depth & (ERB_DEPTH_MAX - 1)] = n;
			p->depth++;
			p->state = ERB_P_TYPE;
			return 0;
		}
		default:
			rep_elem_done(r, p);
			return 0;
		}
	case ERB_P_BULK:
		if (p->bulk_left > 2) {
			__u32 n = p->bulk_left - 2, room = r->pc.u->end - pos;

			if (n > room)
				n = room;
			p->bulk_left -= n;
			r->pc.u->pos = pos + n;
			return 0;
		}
		if (p->bulk_left == 2 ? ch != '\r' : ch != '\n') {
			rep_error(r, p);
			return 1;
		}
		if (--p->bulk_left == 0)
			rep_elem_done(r, p);
		return 0;
	default:
		rep_error(r, p);
		return 1;
	}
}

#endif /* ERB_REP_H */
