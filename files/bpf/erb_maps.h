/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ERB data path: maps, the per-CPU scratch and small helpers (bounds, counters, sequence compare).
 * Part of the one translation unit erb.bpf.c (the verifier sees one object);
 * included there in order, after the maps and the load-time cfg.
 */
#ifndef ERB_MAPS_H
#define ERB_MAPS_H

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct erb_entry);
} erb_cache SEC(".maps");

/*
 * The cache slots' tags, eight to a word: max_entries = cache_entries / 8
 * rounded up (set at load). See erb_cache.h, "The tags".
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);	/* erb-agent reads them */
	__uint(max_entries, 128);
	__type(key, __u32);
	__type(value, __u64);
} erb_tags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct erb_flow_key);
	__type(value, struct erb_flow);
} erb_flows SEC(".maps");

/* Closed flows' deletion timers (erb_flow.h, flow_close()). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct erb_flow_key);
	__type(value, struct erb_flow_gc);
} erb_flow_gc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, struct erb_flow_key);
	__type(value, struct erb_aux);
} erb_aux SEC(".maps");

/*
 * Per key-hash bucket (erb.h, struct erb_bucket): the try-lock of a fast SET
 * against a passed command on the key; the writes passed to Redis and
 * unanswered, counted under it (a write-through fill is cancelled by any
 * write of its bucket in flight); when a write of a flow whose replies cannot
 * be matched (untracked) last passed: fills and fast SETs of the bucket wait
 * UNTRACKED_QUIET_NS after it (erb_global.untracked_wr_ns: the same, for
 * writes of unknown keys, for every bucket).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ERB_INFLIGHT_BUCKETS);
	__type(key, __u32);
	__type(value, struct erb_bucket);
} erb_buckets SEC(".maps");

/* Bucket *b (by address: a copy of b would take a stack slot of its own). */
static __always_inline struct erb_bucket *bucket_get(const __u32 *b)
{
	return bpf_map_lookup_elem(&erb_buckets, b);
}

/* Bucket *b's lock word, NULL for a bucket out of range. */
static __always_inline __u32 *bucket_lock(const __u32 *b)
{
	struct erb_bucket *bk = bucket_get(b);

	return bk ? &bk->lock : NULL;
}

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct erb_global);
} erb_global SEC(".maps");

/* Acknowledged SETs on their way to Redis (SET fast path -> I/O agent). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} erb_events SEC(".maps");

/* Out-of-order client bytes kept for the parser (erb.h, struct erb_ooo). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1024);
	__type(key, struct erb_flow_key);
	__type(value, struct erb_ooo);
} erb_ooo SEC(".maps");

/* Held segments for the agent to replay once their writes apply (erb.h, struct erb_park). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 << 10);
} erb_parked SEC(".maps");

/*
 * The erb_io kernel module's kfuncs (files/kmod/erb_io.c). Weak: the object
 * loads without the module. The loader sets ERB_CFG_KMOD only when the
 * module's BTF is present; every call sits behind that read-only flag, so
 * without it the verifier drops the calls as dead code (Linux 6.1 rejects an
 * unresolved kfunc call even when it is never reached at run time).
 */
extern int erb_kfifo_in(const struct erb_record *rec, __u32 rec__sz) __ksym __weak;
extern __u64 erb_applied_seq(void) __ksym __weak;

/* Where a fast SET's record is built for erb_kfifo_in() (too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct erb_record);
} erb_kmrec SEC(".maps");

/*
 * Per key-hash bucket count of writes passed to Redis: a write-through fill
 * is cancelled by any write of its bucket that arrived after its SET (Redis
 * may run them in either order and reply in either order).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);	/* the agent bumps epochs atomically */
	__uint(max_entries, ERB_INFLIGHT_BUCKETS);
	__type(key, __u32);
	__type(value, __u32);
} erb_wepoch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 512);
	__type(key, __u32);
	__type(value, struct erb_cmd_spec);
} erb_cmds SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ERB_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} erb_stats SEC(".maps");


/*
 * Parse cursor. It lives in the per-CPU scratch map, not on the stack: the
 * verifier then treats it as unknown and bpf_loop callbacks converge.
 */
struct pcur {
	__u32 pos;		/* index in s->buf */
	__u32 end;		/* bytes valid in s->buf */
	__u32 tracked;		/* flow may be answered/filled */
	__u32 err;
	/* current command: bulk starts of args 1 and 2 when in this window */
	__s32 a1_off, a2_off;
	__u32 a1_len, a2_len;
	/* last complete plain SET (or HGETALL) of this segment */
	__u32 cap;		/* 1 = SET captured, 2 = HGETALL, 3 = GET */
	__u32 cap_idx, cap_koff, cap_klen, cap_voff, cap_vlen;
	__u32 win_base;		/* payload offset of s->buf[0] */
	__u32 flushed;		/* flushed for skipped bytes already */
	__u32 nkeys;		/* queued in s->keyq */
	__u32 keyq_full;
	__u32 fill_due;		/* a fill is due (egress): 1 SET +OK, 2 HGETALL reply, 3 GET reply */
	/* egress: the top-level reply being parsed, when it began in this skb */
	__u32 rep_here;		/* it began in this invocation */
	__u32 rep_start;	/* its payload offset */
	__u32 rep_n;		/* element count of a top-level '*', or of a '%' (twice its pairs) */
	__u32 fill_off, fill_len;	/* the HGETALL or GET reply to store (fill_due 2, 3) */
	__u32 fill_n, fill_map;	/* an HGETALL reply's rep_n; it is a RESP3 map '%' */
	/* effects of the parsed commands, applied only if the segment passes */
	__u32 pending;		/* fast-path writes not yet in Redis */
	__u32 ncmds;		/* complete commands */
	__u32 fl;		/* flow flags as the commands leave them */
	__u32 auth_idx;		/* +1 of the last AUTH/HELLO, 0 none */
	__u32 block;		/* block fills until nothing is owed */
	__u32 flush;		/* empty the cache (unknown keys, FLUSH*, errors) */
	__u32 wait;		/* reads unknown keys or the whole keyspace: wait for pending writes */
	__u32 nlocked;		/* bucket locks taken by the hold check */
	__u32 held;		/* the hold check refused it: 1 a pending write, 2 a busy lock */
	__u32 busy_b;		/* held 2: the bucket whose lock stayed taken */
};

/* Pointers for the bpf_loop callbacks (on the stack). */
struct pctx {
	struct erb_flow *f;
	struct erb_scratch *s;
	struct erb_global *g;
	struct pcur *u;
};

struct tcp_opts {
	__u32 ts_off;		/* offset of the TS option from the TCP header, 0 none */
	__u32 tsval, tsecr;
	__u32 ans_tsval;	/* the TSval an answer to this segment carries (ts_answer) */
	__u32 sack_off;		/* offset of the SACK option, 0 none */
	__u32 sack_n;		/* blocks */
	__u32 wscale;		/* window scale option + 1, 0 none */
	__u32 mss;		/* MSS option, 0 none */
};

/* Header fields of a request its reply needs (xdp_reply). */
struct rhdr {
	__u8 mac[ETH_ALEN], smac[ETH_ALEN];
	__u16 sport, dport;
	__u32 saddr, daddr, thl, tsval, tsecr, seq, ack, rlen;
	__u16 win;
};

/* One command of a pipelined segment (erb_pipe.h). */
#define ERB_PIPE_MAX	16	/* commands answered in one segment, at most */
struct pipe_cmd {
	__u32 set;		/* 1 SET, 0 GET */
	__u32 koff, klen;	/* key in s->buf */
	__u32 voff, vlen;	/* SET's value in s->buf */
	__u32 h;		/* FNV-1a of the key */
	__u32 b;		/* SET: its bucket */
	__u32 eidx;		/* SET: its cache slot */
	__u32 lk;		/* SET: 1 bucket lock held, 2 and the entry lock */
	__u32 dup;		/* SET of the key of an earlier SET here: its locks and slot */
	__u32 evict;		/* SET: its slot is a CLOCK victim */
};
struct erb_scratch {
	char buf[WIN];			/* parse window */
	char key[ERB_KEY_MAX];		/* zero-padded key of a GET */
	char rep[ERB_REPLY_MAX];	/* reply payload, starts at REP_HDR - hdrlen */
	__u32 keyq[KEYQ];		/* keys written by this segment's commands */
	__u32 keyq_idx[KEYQ];		/* their command indexes */
	__u32 keyq_w[KEYQ];		/* 1: written, 0: read */
	struct erb_parser req_saved;	/* parser state to restore on hold */
	struct pcur cur;
	struct tcp_opts o;		/* options of the client segment */
	struct rhdr h;
	__u8 opt[40];			/* TCP options being parsed */
	__u32 fnv;			/* hash being computed by fnv_step */
	__u32 fnv_len;			/* of the key it hashes */
	struct {
		__u32 i, len, ts_off, tsval, tsecr, sack_off, sack_n, bad;
		__u32 wscale;		/* window scale option + 1, 0 none */
		__u32 mss;		/* MSS option, 0 none */
	} oc;				/* option parser cursor */
	struct {
		__s32 hit, free;	/* slot indexes, -1 none */
		__u32 ver;		/* of the hit */
		__u32 done;
		__u32 fver;		/* of the free slot */
		__s32 victim;		/* CLOCK victim of a full window, -1 none */
		__u32 vver;		/* its ver */
		__u32 evict;		/* the slot claimed for an insert is a victim */
		__u64 touch;		/* sink of probe_step()'s value loads */
	} pr;				/* cache probe result */
	struct {
		__u32 h, tag, n, skip;
		__u64 applied;
	} ic;				/* cache_invalidate()'s probe (off the stack: 6.1 counts 512 B for all frames) */
	struct erb_aux zero_aux;	/* all zero: template for new aux entries */
	struct erb_ooo ooo;		/* a new erb_ooo entry, built here */
	__u32 hit_unsent;		/* a cached reply this segment could not be sent: no fill */
	/*
	 * parse_step's result (an XDP action, or -1, or RC_PARSE_AGAIN) and its
	 * spent wait: here, not in its caller's stack, where the verifier would
	 * go on after the bpf_loop once for each value the step can leave.
	 */
	__s32 a_rc;
	__u32 a_waited;
	struct {
		struct erb_flow_key key;	/* the flow's (a map value: 6.1 takes no other memory as a map key) */
		__u32 thl, poff, plen, odd;	/* struct pkt's lengths */
		__u32 seq;		/* of the segment */
		__u32 from;		/* its first new byte */
		__u32 end;		/* client seq after the last byte to parse (of the kept ones too) */
		__u32 ooo;		/* kept out-of-order bytes follow the segment's: parse on over them */
		__u32 ooo_from;		/* the first of them not in the segment */
	} pa;				/* the segment erb_xdp hands to its global functions */
	struct pipe_cmd pc[ERB_PIPE_MAX];	/* a pipelined segment's commands */
	struct {
		__u32 n, nset, off, tot, fail, gen;
		__u32 nil;		/* the flow's resp_form(): a key cached as absent is a hit */
		__u32 nnil;		/* such hits */
		__u32 mget;		/* the segment is one MGET of this many keys (its commands) */
		__u32 cur, b, holder;	/* pipe_holder_step(): SET cur's bucket, found at holder */
		__u32 seq, ack;		/* of the reply */
	} pp;				/* pipeline cursor */
	char key2[ERB_KEY_MAX];		/* zero-padded key of the earlier SET */
	char prep[WIN + ERB_REPLY_MAX];	/* the replies, concatenated */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct erb_scratch);
} erb_scratch SEC(".maps");

static __always_inline struct erb_scratch *scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&erb_scratch, &zero);
}

static __always_inline void stat_inc(__u32 id)
{
	__u64 *v = bpf_map_lookup_elem(&erb_stats, &id);

	if (v)
		*v += 1;
}

static __always_inline void stat_add(__u32 id, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&erb_stats, &id);

	if (v)
		*v += n;
}

static __always_inline int before(__u32 a, __u32 b)
{
	return (__s32)(a - b) < 0;
}

static __always_inline int after(__u32 a, __u32 b)
{
	return (__s32)(b - a) < 0;
}

static __always_inline struct erb_global *global(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&erb_global, &zero);
}

/*
 * 0 while erb_redis holds the lease (erb_global.ordered_until_ns), 1 else.
 * Under the lease Redis applies every committed record before it runs a
 * command it reads, so a command passed now runs after every write
 * acknowledged before it: nothing need be held for the I/O path, and a
 * record need not wake Redis (it is applied by the next command, else by
 * erb_redis's tick within milliseconds). Without a branch (the deadline and
 * the clock are below 2^63): a branch would double the states the verifier
 * walks through the parser after it.
 */
static __always_inline __u32 unordered(struct erb_global *g)
{
	return 1 ^ (__u32)((bpf_ktime_get_ns() - READ_ONCE(g->ordered_until_ns)) >> 63);
}

/*
 * Queue a fill's slot for erb-agent's TTL check (erb_global.fillq), after
 * the entry is stored: the agent reads the slots since its last look
 * instead of walking the whole cache for them.
 */
static __always_inline void fillq_push(struct erb_global *g, __u32 slot)
{
	__u32 i = __sync_fetch_and_add(&g->fillq_head, 1);

	WRITE_ONCE(g->fillq[i & (ERB_FILLQ - 1)], (__u64)i << 32 | slot);
}

/* The ring's wakeup of its consumer for a record committed now. */
static __always_inline __u64 ring_wakeup(struct erb_global *g)
{
	return (__u64)(unordered(g) ^ 1) * BPF_RB_NO_WAKEUP;
}

/*
 * With erb_io as the I/O path, the module tracks applied_seq; mirror it into
 * erb_global for the hold rule, the TC side and user space, while writes
 * are pending (erb_io never gets ahead of write_seq). Only ever raised (a
 * lost race leaves it lower: more holds, never fewer).
 */
static __always_inline void kmod_sync(struct erb_global *g)
{
	__u64 old = g->applied_seq, now;

	if (old == g->write_seq)
		return;
	now = erb_applied_seq();
	if (now > old)
		__sync_val_compare_and_swap(&g->applied_seq, old, now);
}

/*
 * lo <= n <= hi (lo >= 1), tested so that Linux 6.1's verifier learns both
 * bounds of n for a helper's size argument: it refines nothing from "n != 0"
 * nor from the "(n - lo) <= (hi - lo)" clang merges two tests into, and it
 * does not keep bounds of 32-bit values spilled to the stack. Each test is
 * on n itself, signed for the lower one, with barriers against merging.
 */
#define len_in(n, lo, hi) ({						\
	int __ok = 0;							\
	barrier_var(n);							\
	if ((n) <= (hi)) {						\
		barrier_var(n);						\
		if ((__s32)(n) >= (__s32)(lo))				\
			__ok = 1;					\
	}								\
	__ok;								\
})

/*
 * n, already checked to be in [lo, hi], bounded again right at a helper's
 * size argument: Linux 6.1 may reload n from a stack slot that kept none of
 * the checks. Does not change n.
 */
#define arg_len(n, lo, hi) ({						\
	__u32 __n = (n);						\
	barrier_var(__n);						\
	if (__n > (hi))							\
		__n = (hi);						\
	barrier_var(__n);						\
	if ((__s32)__n < (__s32)(lo))					\
		__n = (lo);						\
	__n;								\
})

static __always_inline __u32 upper(__u32 c)
{
	return (c >= 'a' && c <= 'z') ? c - 32 : c;
}

#endif /* ERB_MAPS_H */
