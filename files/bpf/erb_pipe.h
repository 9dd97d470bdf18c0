/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ERB data path: pipelines. A client segment of several complete commands,
 * each a GET hit or a fast SET, is answered in one reply segment (the replies
 * concatenated in order); so is a segment of one MGET whose keys all hit (an
 * array of the same replies, nil for a key cached as absent); anything else in it (a miss, another command, a
 * partial command, a busy key, a flow in MULTI or WATCH) passes the whole
 * segment to Redis, untouched. All or nothing: the answered segment is one
 * answered request for the sequence mapping, the resend copy and the overlap
 * rules, exactly like a single answered GET. A SET of a key set earlier in
 * the segment follows it; another key of a bucket a SET here holds, and a
 * GET of such a bucket, pass the segment.
 * Part of the one translation unit erb.bpf.c (the verifier sees one object);
 * included there after try_answer(), whose helpers it uses, and struct actx.
 */
#ifndef ERB_PIPE_H
#define ERB_PIPE_H

/*
 * Three steps, each a global function of its own (erb_pipe(),
 * erb_pipe_check(), erb_pipe_reply(), called in turn by erb_xdp): the
 * kernel adds the frames of a call chain against one 512-byte stack, before
 * it inlines bpf_loop, and erb_xdp -> erb_pipe -> pipe_check_step ->
 * probe_step was 512 to the byte when one function did all three (8 bytes
 * more in any of them and erb.bpf.o was refused). The checks' frame is now
 * the smallest there is. The nested bpf_loop callbacks take no context (NULL)
 * and look the per-CPU scratch and erb_global up; s->pp carries the segment
 * from one step to the next (same CPU, same packet).
 */

/* "$<n>\r\n" at b[*pi]: n (no leading zero; "$0" only when zero_ok), *pi past it; else -1. */
static __always_inline int pipe_len(const char *b, __u32 *pi, int zero_ok)
{
	__u32 i = *pi, n = 0, j;

	if (b[i & WIN_MASK] != '$')
		return -1;
	i++;
	for (j = 0; j < 5; j++) {
		char ch = b[(i + j) & WIN_MASK];

		if (ch == '\r')
			break;
		if (ch < '0' || ch > '9')
			return -1;
		n = n * 10 + (ch - '0');
	}
	if (j == 0 || j == 5 || b[(i + j + 1) & WIN_MASK] != '\n')
		return -1;
	if (b[i & WIN_MASK] == '0' && (j > 1 || !zero_ok))
		return -1;
	*pi = i + j + 2;
	return n;
}

/*
 * "$<n>\r\n<n bytes>\r\n" at b[*pi], n at most max (0 only when zero_ok),
 * within plen: n, *off at its bytes, *pi past it; else -1.
 */
static __always_inline int pipe_bulk(const char *b, __u32 *pi, __u32 plen, int zero_ok, __u32 max,
				     __u32 *off)
{
	__u32 i = *pi;
	int n = pipe_len(b, &i, zero_ok);

	if (n < 0 || n > max || i + n + 2 > plen)
		return -1;
	if (b[(i + n) & WIN_MASK] != '\r' || b[(i + n + 1) & WIN_MASK] != '\n')
		return -1;
	*off = i;
	*pi = i + n + 2;
	return n;
}

/* "$<n>\r\n<key>\r\n" at b[i], within plen, into c: the offset after it, else -1. */
static __always_inline int pipe_key(const char *b, __u32 i, __u32 plen, struct pipe_cmd *c)
{
	int n = pipe_bulk(b, &i, plen, 0, ERB_KEY_MAX, &c->koff);

	if (n < 0)
		return -1;
	c->klen = n;
	c->set = 0;
	c->voff = 0;
	c->vlen = 0;
	c->lk = 0;
	c->dup = 0;
	c->evict = 0;
	return i;
}

/*
 * "*2\r\n$3\r\nGET\r\n$<n>\r\n<key>\r\n" or the SET of parse_set() at b[o]
 * (name in any case), within plen: fills c, returns the offset after it, else -1.
 */
static __always_inline int pipe_parse(const char *b, __u32 o, __u32 plen, struct pipe_cmd *c)
{
	__u32 i, set;
	int m;

	if (plen > WIN || o + 19 > plen)
		return -1;
	if (b[o & WIN_MASK] != '*' || b[(o + 2) & WIN_MASK] != '\r' ||
	    b[(o + 3) & WIN_MASK] != '\n' || b[(o + 4) & WIN_MASK] != '$' ||
	    b[(o + 5) & WIN_MASK] != '3' || b[(o + 6) & WIN_MASK] != '\r' ||
	    b[(o + 7) & WIN_MASK] != '\n' || upper(b[(o + 9) & WIN_MASK]) != 'E' ||
	    upper(b[(o + 10) & WIN_MASK]) != 'T' || b[(o + 11) & WIN_MASK] != '\r' ||
	    b[(o + 12) & WIN_MASK] != '\n')
		return -1;
	if (b[(o + 1) & WIN_MASK] == '2' && upper(b[(o + 8) & WIN_MASK]) == 'G')
		set = 0;
	else if (b[(o + 1) & WIN_MASK] == '3' && upper(b[(o + 8) & WIN_MASK]) == 'S')
		set = 1;
	else
		return -1;
	m = pipe_key(b, o + 13, plen, c);
	if (m < 0)
		return -1;
	i = m;
	c->set = set;
	if (!set)
		return i;
	m = pipe_bulk(b, &i, plen, 1, ERB_VAL_MAX, &c->voff);
	if (m < 0)
		return -1;
	c->vlen = m;
	return i;
}

/* Split the segment (in s->buf) into commands; stops at the first that is not one. */
static long pipe_parse_step(__u32 i, void *arg)
{
	struct actx *x = arg;
	struct erb_scratch *s = scratch();
	struct pipe_cmd *c;
	__u32 plen;
	int end;

	if (!s || !x->k)
		return 1;
	plen = x->k->plen;
	if (s->pp.off >= plen)
		return 1;
	c = &s->pc[i & (ERB_PIPE_MAX - 1)];
	if (i == 0) {
		/* one MGET, the whole segment: each key a GET, their replies in an array */
		__u32 off;
		int n = mget_head(s->buf, &off);

		if (n > 0) {
			s->pp.mget = n;
			s->pp.off = off;
			s->pp.tot = agg_hdr(s->prep, '*', n);
		}
	}
	if (s->pp.mget && i >= s->pp.mget)
		return 1;
	end = s->pp.mget ? pipe_key(s->buf, s->pp.off, plen, c) : pipe_parse(s->buf, s->pp.off, plen, c);
	if (end < 0) {
		s->pp.fail = 1;
		return 1;
	}
	s->pp.off = end;
	s->pp.n = i + 1;
	s->pp.nset += c->set;
	return 0;
}

static __always_inline long pipe_fail(struct erb_scratch *s, __u32 stat)
{
	stat_inc(stat);
	s->pp.fail = 1;
	return 1;
}

/* Which earlier SET of the segment holds bucket pp.b (pp.holder, else pp.cur)? */
static long pipe_holder_step(__u32 j, void *arg)
{
	struct erb_scratch *s = scratch();
	struct pipe_cmd *c;

	if (!s || j >= s->pp.cur)
		return 1;
	c = &s->pc[j & (ERB_PIPE_MAX - 1)];
	if (c->set && c->lk == 2 && c->b == s->pp.b) {
		s->pp.holder = j;
		return 1;
	}
	return 0;
}

/*
 * SET i of a bucket an earlier SET of this segment holds: the same key
 * follows it (its entry written again, its record after the other's), any
 * other key of the bucket passes the segment. Returns 0 when it follows.
 */
static __always_inline int pipe_dup_set(struct erb_scratch *s, struct pipe_cmd *c, __u32 i, __u32 b)
{
	struct pipe_cmd *o;
	__u32 kl;

	s->pp.cur = i;
	s->pp.b = b;
	s->pp.holder = i;
	bpf_loop(ERB_PIPE_MAX, pipe_holder_step, NULL, 0);
	if (s->pp.holder >= i)
		return -1;
	o = &s->pc[s->pp.holder & (ERB_PIPE_MAX - 1)];
	kl = o->klen;
	if (kl != c->klen || o->h != c->h || !len_in(kl, 1, ERB_KEY_MAX))
		return -1;
	__builtin_memset(s->key2, 0, ERB_KEY_MAX);
	bpf_probe_read_kernel(s->key2, arg_len(kl, 1, ERB_KEY_MAX), s->buf + (o->koff & WIN_MASK));
	if (!key_equal(s->key, s->key2, kl))
		return -1;
	c->dup = 1;
	c->b = b;
	c->eidx = o->eidx;
	return 0;
}

/*
 * Command i: a GET must hit (its reply is appended to s->prep), a SET must get
 * its bucket and entry locks as do_set() would (held until committed or
 * released) and appends +OK. Nothing is written anywhere else.
 */
static long pipe_check_step(__u32 i, void *unused)
{
	struct erb_scratch *s = scratch();
	struct erb_global *g = global();
	__u32 klen, h, b, rstart = 0, rlen = 0, tot, idx, *bl;
	struct erb_bucket *bk;
	int nil;
	struct erb_entry *e;
	struct pipe_cmd *c;

	if (!s || !g || i >= s->pp.n)
		return 1;
	c = &s->pc[i & (ERB_PIPE_MAX - 1)];
	klen = c->klen;
	if (klen > cfg.max_key_len || (c->set && c->vlen > cfg.max_value_len))
		return pipe_fail(s, ERB_STAT_PASS_TOO_BIG);
	__builtin_memset(s->key, 0, ERB_KEY_MAX);
	if (!len_in(klen, 1, ERB_KEY_MAX))
		return pipe_fail(s, ERB_STAT_PASS_TOO_BIG);
	bpf_probe_read_kernel(s->key, arg_len(klen, 1, ERB_KEY_MAX), s->buf + (c->koff & WIN_MASK));
	h = fnv_key(s, s->key, klen);
	c->h = h;
	b = bucket_of(h);
	tot = s->pp.tot;
	if (tot > ERB_REPLY_MAX - 8)
		return pipe_fail(s, ERB_STAT_PASS_TOO_BIG);
	if (!c->set) {
		/* a SET of this segment may be about to write its bucket: not read here */
		if (s->pp.nset) {
			bl = bucket_lock(&b);
			if (!bl || READ_ONCE(*bl))
				return pipe_fail(s, ERB_STAT_SET_PASS_BUSY);
		}
		nil = cache_get(s, klen, h, s->pp.gen, ERB_TYPE_STRING, s->pp.nil, &rstart, &rlen);
		if (nil < 0)
			return pipe_fail(s, ERB_STAT_MISS);
		s->pp.nnil += nil;
		if (rlen > ERB_REPLY_MAX - 8 - tot)
			return pipe_fail(s, ERB_STAT_PASS_TOO_BIG);
		if (!len_in(rlen, 1, ERB_REPLY_MAX - 8))
			return pipe_fail(s, ERB_STAT_PASS_TOO_BIG);
		bpf_probe_read_kernel(s->prep + (tot & (WIN - 1)), arg_len(rlen, 1, ERB_REPLY_MAX - 8),
				      s->rep + (rstart & 7));
		s->pp.tot = tot + rlen;
		return 0;
	}
	if (tot > ERB_REPLY_MAX - 8 - 5)
		return pipe_fail(s, ERB_STAT_PASS_TOO_BIG);
	bk = bucket_get(&b);
	if (!bk)
		return pipe_fail(s, ERB_STAT_SET_PASS_BUSY);
	if (__sync_val_compare_and_swap(&bk->lock, 0, bpf_get_smp_processor_id() + 1) != 0) {
		/* taken: by an earlier SET of this very key here, or passed */
		if (pipe_dup_set(s, c, i, b))
			return pipe_fail(s, ERB_STAT_SET_PASS_BUSY);
		goto ok;
	}
	c->b = b;
	c->lk = 1;
	if (READ_ONCE(bk->inflight) || g->overflow || fenced(g, bk))
		return pipe_fail(s, ERB_STAT_SET_PASS_BUSY);
	/* the slot as do_set() takes it: the key's, a free one, or a CLOCK victim, locked */
	e = cache_claim(s, s->key, klen, h, g->cache_gen);
	if (!e)
		return pipe_fail(s, ERB_STAT_SET_PASS_BUSY);
	idx = s->pr.hit >= 0 ? s->pr.hit : s->pr.free >= 0 ? s->pr.free : s->pr.victim;
	c->eidx = idx;
	c->evict = s->pr.evict;
	c->lk = 2;
ok:
	tot &= WIN - 1;
	s->prep[tot] = '+';
	s->prep[tot + 1] = 'O';
	s->prep[tot + 2] = 'K';
	s->prep[tot + 3] = '\r';
	s->prep[tot + 4] = '\n';
	s->pp.tot = tot + 5;
	return 0;
}

/* Release the locks command i still holds. */
static long pipe_unlock_step(__u32 i, void *arg)
{
	struct erb_scratch *s = scratch();
	struct pipe_cmd *c;
	struct erb_entry *e;
	__u32 *bl;

	if (!s || i >= s->pp.n)
		return 1;
	c = &s->pc[i & (ERB_PIPE_MAX - 1)];
	if (c->lk >= 2) {
		e = bpf_map_lookup_elem(&erb_cache, &c->eidx);
		if (e)
			__sync_lock_test_and_set(&e->lock, 0);
	}
	if (c->lk >= 1) {
		bl = bucket_lock(&c->b);
		if (bl)
			__sync_lock_test_and_set(bl, 0);
	}
	c->lk = 0;
	return 0;
}

static __always_inline int pipe_unlock(int rc)
{
	bpf_loop(ERB_PIPE_MAX, pipe_unlock_step, NULL, 0);
	return rc;
}

/*
 * Commit SET i as do_set() does: its record to the I/O path (stamped with the
 * next write sequence, so N SETs are N records in order) and the entry. The
 * locks are released after the last (pipe_unlock). A refused record stops
 * the commit (pp.fail).
 */
static long pipe_commit_step(__u32 i, void *arg)
{
	struct erb_scratch *s = scratch();
	struct erb_global *g = global();
	struct erb_record *rec;
	struct erb_entry *e;
	struct pipe_cmd *c;
	__u32 klen, vlen, *bl;
	__u64 wseq;

	if (!s || !g || i >= s->pp.n)
		return 1;
	c = &s->pc[i & (ERB_PIPE_MAX - 1)];
	if (!c->set)
		return 0;
	e = bpf_map_lookup_elem(&erb_cache, &c->eidx);
	bl = bucket_lock(&c->b);
	klen = c->klen;
	vlen = c->vlen;
	if (!e || !bl || (c->lk != 2 && !c->dup) || !len_in(klen, 1, ERB_KEY_MAX) || vlen > ERB_VAL_MAX) {
		s->pp.fail = 1;
		return 1;
	}
	if (cfg.flags & ERB_CFG_KMOD) {
		__u32 zero = 0;

		rec = bpf_map_lookup_elem(&erb_kmrec, &zero);
	} else {
		rec = bpf_ringbuf_reserve(&erb_events, sizeof(*rec), 0);
	}
	if (!rec)
		return pipe_fail(s, ERB_STAT_SET_PASS_QUEUE_FULL);
	rec->version = ERB_RECORD_VERSION;
	rec->op = ERB_OP_SET;
	rec->flags = 0;
	rec->klen = klen;
	rec->vlen = vlen;
	rec->db = 0;
	rec->pad = 0;
	__builtin_memset(s->key, 0, ERB_KEY_MAX);
	bpf_probe_read_kernel(s->key, arg_len(klen, 1, ERB_KEY_MAX), s->buf + (c->koff & WIN_MASK));
	bpf_probe_read_kernel(rec->key, arg_len(klen, 1, ERB_KEY_MAX), s->key);
	if (len_in(vlen, 1, ERB_VAL_MAX))
		bpf_probe_read_kernel(rec->val, arg_len(vlen, 1, ERB_VAL_MAX),
				      s->buf + (c->voff & WIN_MASK));
	wseq = __sync_fetch_and_add(&g->write_seq, 1) + 1;
	rec->seq = wseq;
	if (cfg.flags & ERB_CFG_KMOD) {
		/* a refused seq counts as finished in the module */
		if (erb_kfifo_in(rec, sizeof(*rec)))
			return pipe_fail(s, ERB_STAT_SET_PASS_QUEUE_FULL);
	}
	s->pr.evict = c->evict;		/* counted by entry_write() */
	entry_write(e, c->h, s->key, klen, rec->val, vlen, g->cache_gen, wseq, ERB_TYPE_STRING);
	if (!(cfg.flags & ERB_CFG_KMOD))
		bpf_ringbuf_submit(rec, ring_wakeup(g));
	return 0;
}

/*
 * Answer a segment of 2..ERB_PIPE_MAX GET hits and fast SETs (s->buf holds its
 * payload) in one reply (pipe_prepare(), pipe_check(), pipe_reply() in turn:
 * pipe_answer()), or pass it with nothing changed (frame untouched).
 *
 * Ring buffer path: a record is reserved per SET when it is committed, after
 * the reply is built; the segment is answered only while the ring is at most
 * half full, so that no reservation of the commit can fail in practice. If
 * one still does, the frame is dropped: the SETs before it stand (in order,
 * acknowledged to nobody yet) and the client's retransmission is answered
 * anew. erb_io path: its kfifo reports no room in advance, so at most one SET
 * per segment, queued before the reply is built, as do_set() does.
 */
#define RC_PIPE_CHECK	(-5)	/* pipe_prepare(): parsed, go on to pipe_check() */
#define RC_PIPE_REPLY	(-6)	/* pipe_check(): all good, locks held: pipe_reply() must follow */

/*
 * Step 1: split the segment into commands and check what concerns it as a
 * whole. RC_PIPE_CHECK: go on; -1: pass it (nothing taken, nothing changed).
 */
static __always_inline int pipe_prepare(struct actx *x)
{
	struct erb_scratch *s = scratch();
	struct erb_global *g = global();

	if (!s || !g || !x->k || !x->f || !x->key || !x->ctx)
		return -1;
	__builtin_memset(&s->pp, 0, sizeof(s->pp));
	s->pp.gen = g->cache_gen;
	s->pp.nil = resp_form(x->f->flags);
	bpf_loop(ERB_PIPE_MAX, pipe_parse_step, x, 0);
	/* a pipeline of 2 or more commands, or one MGET of all its keys */
	if (s->pp.fail || s->pp.off != x->k->plen || s->pp.n < 2 - !!s->pp.mget ||
	    s->pp.n > ERB_PIPE_MAX || (s->pp.mget && s->pp.n != s->pp.mget) ||
	    (s->pp.nset && !(cfg.flags & ERB_CFG_SET_FAST)) ||
	    (s->pp.nset > 1 && (cfg.flags & ERB_CFG_KMOD))) {
		stat_inc(ERB_STAT_PASS_NOT_SINGLE);
		return -1;
	}
	if (answer_ready(x->k, x->f, g, 0))
		return -1;
	if (x->f->flags & ERB_FLOW_WATCH) {
		stat_inc(ERB_STAT_PASS_STATE);
		return -1;
	}
	if (!bpf_map_lookup_elem(&erb_aux, x->key))
		return -1;
	if (s->pp.nset && !(cfg.flags & ERB_CFG_KMOD) &&
	    bpf_ringbuf_query(&erb_events, BPF_RB_AVAIL_DATA) +
	    s->pp.nset * (sizeof(struct erb_record) + 8) >
	    bpf_ringbuf_query(&erb_events, BPF_RB_RING_SIZE) / 2) {
		stat_inc(ERB_STAT_SET_PASS_QUEUE_FULL);
		return -1;
	}
	return RC_PIPE_CHECK;
}

/*
 * Step 2: each command a GET hit or a fast SET, its locks taken, the reply
 * built in s->prep. RC_PIPE_REPLY: pipe_reply() must follow (locks held);
 * -1: pass the segment (every lock released).
 */
static __always_inline int pipe_check(void)
{
	struct erb_scratch *s = scratch();

	if (!s)
		return -1;
	bpf_loop(ERB_PIPE_MAX, pipe_check_step, NULL, 0);
	if (s->pp.fail)
		return pipe_unlock(-1);
	return RC_PIPE_REPLY;
}

/*
 * Step 3, after pipe_check() (locks held): the reply sent, the SETs
 * committed, every lock released on every path. An XDP action, else -1 with
 * nothing changed (frame untouched).
 */
static __always_inline int pipe_reply(struct actx *x)
{
	struct erb_scratch *s = scratch();
	struct erb_global *g = global();
	struct erb_aux *a;
	__u32 tot;
	int rc;

	if (!s || !g || !x->k || !x->f || !x->key || !x->ctx)
		return pipe_unlock(-1);
	if (!client_takes(x->f, x->k, &s->o, s->pp.tot))
		return pipe_unlock(-1);
	/* erb_io: the record is queued first, so the reply must not need more room */
	if (s->pp.nset && (cfg.flags & ERB_CFG_KMOD) && s->pp.tot > x->k->plen) {
		stat_inc(ERB_STAT_PASS_NO_ROOM);
		return pipe_unlock(-1);
	}
	tot = s->pp.tot;
	if (!len_in(tot, 1, ERB_REPLY_MAX - 8))
		return pipe_unlock(-1);
	bpf_probe_read_kernel(s->rep, arg_len(tot, 1, ERB_REPLY_MAX - 8), s->prep);
	tot = arg_len(tot, 1, ERB_REPLY_MAX - 8);
	/* zero pad read by the checksum */
	s->rep[tot] = 0;
	s->rep[tot + 1] = 0;
	s->rep[tot + 2] = 0;
	s->pp.seq = x->f->s_nxt;
	s->pp.ack = bpf_ntohl(x->k->tcp->seq) + x->k->plen;
	if (s->pp.nset && (cfg.flags & ERB_CFG_KMOD)) {
		bpf_loop(ERB_PIPE_MAX, pipe_commit_step, NULL, 0);
		if (s->pp.fail)
			return pipe_unlock(-1);
		rc = xdp_reply(x->ctx, x->k, &s->o, s->rep, 0, s->pp.tot, s->pp.seq, s->pp.ack,
			       x->f->s_win);
		/* cannot fail (the reply is smaller); if it did, as in do_set() */
		if (rc != XDP_TX)
			return pipe_unlock(XDP_DROP);
		pipe_unlock(0);
	} else {
		rc = xdp_reply(x->ctx, x->k, &s->o, s->rep, 0, s->pp.tot, s->pp.seq, s->pp.ack,
			       x->f->s_win);
		if (rc < 0)
			stat_inc(ERB_STAT_PASS_NO_ROOM);
		if (rc != XDP_TX)
			return pipe_unlock(rc);
		bpf_loop(ERB_PIPE_MAX, pipe_commit_step, NULL, 0);
		if (s->pp.fail)
			return pipe_unlock(XDP_DROP);
		pipe_unlock(0);
	}
	a = bpf_map_lookup_elem(&erb_aux, x->key);
	if (!a)
		return XDP_TX;	/* deleted meanwhile: no resend copy (the flow is closing) */
	answered(x->f, a, x->k, s, s->pp.seq, s->pp.ack, 0, s->pp.tot);
	stat_add(ERB_STAT_HIT, s->pp.n - s->pp.nset);
	stat_add(ERB_STAT_HIT_NIL, s->pp.nnil);
	stat_add(ERB_STAT_SET_FAST, s->pp.nset);
	if (s->pp.mget) {
		stat_inc(ERB_STAT_MGET);
		return XDP_TX;
	}
	stat_inc(ERB_STAT_PIPELINED);
	stat_add(ERB_STAT_PIPELINED_CMDS, s->pp.n);
	return XDP_TX;
}

/* The three steps in one (erb-compat.bpf.o, whose frames are its callers'). */
static __always_inline int pipe_answer(struct actx *x)
{
	int rc = pipe_prepare(x);

	if (rc == RC_PIPE_CHECK)
		rc = pipe_check();
	if (rc == RC_PIPE_REPLY)
		rc = pipe_reply(x);
	return rc;
}

#endif /* ERB_PIPE_H */
