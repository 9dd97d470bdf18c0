/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ERB shared layout: the contract between the BPF programs (erb.bpf.c), the
 * Python loader (plugins/module_utils/erb_layout.py mirrors it; a unit test
 * checks they agree) and, later, the I/O agent and kernel module.
 *
 * Change a struct here => bump ERB_LAYOUT_VERSION. The loader refuses to reuse
 * pinned state maps of another layout version (live flows would be corrupted).
 */
#ifndef ERB_H
#define ERB_H

#define ERB_LAYOUT_VERSION	15

/* Compile-time maxima; the load-time config may only lower them. */
#define ERB_KEY_MAX		256
#define ERB_VAL_MAX		1400	/* a reply must fit one 1500-byte frame */
#define ERB_REPLY_MAX		1440	/* 8 bytes header room + value + CRLF + pad */
#define ERB_MAX_PROBES		8	/* hard bound on cache probes */
#define ERB_INFLIGHT_BUCKETS	65536	/* key-hash buckets (erb_buckets, erb_wepoch) */
#define ERB_WR_RING		16	/* outstanding writes remembered per flow */
#define ERB_DEPTH_MAX		8	/* RESP nesting tracked at egress */
#define ERB_CMD_NAME_MAX	24

/* Load-time configuration, the only variable in .rodata (const volatile). */
struct erb_config {
	__u32 layout_version;	/* ERB_LAYOUT_VERSION */
	__u16 redis_port;	/* host order */
	__u16 max_key_len;	/* <= ERB_KEY_MAX */
	__u16 max_value_len;	/* <= ERB_VAL_MAX */
	__u16 max_probes;	/* <= ERB_MAX_PROBES */
	__u32 cache_entries;	/* == max_entries of erb_cache */
	__u32 hash_prime;	/* largest prime < cache_entries, for the probe step */
	__u32 require_auth;	/* 1: Redis has requirepass/ACL: flows start unauthenticated */
	__u32 flags;		/* ERB_CFG_* */
};

#define ERB_CFG_ANSWER		(1U << 0)	/* answer hits in XDP (off: drain mode) */
#define ERB_CFG_FILL		(1U << 1)	/* fill the cache write-through from SET +OK */
#define ERB_CFG_SET_FAST	(1U << 2)	/* answer SET in XDP, write-behind (needs the I/O path) */
#define ERB_CFG_KMOD		(1U << 3)	/* I/O path = erb_io's kfuncs (else the erb_events ring) */

/* Cache entry (erb_cache: BPF_MAP_TYPE_ARRAY of cache_entries, BPF_F_MMAPABLE). */
enum erb_entry_state {
	ERB_ENTRY_EMPTY = 0,	/* never used: ends a probe sequence */
	ERB_ENTRY_VALID = 1,
	ERB_ENTRY_TOMB = 2,	/* deleted: probing continues past it */
};

struct erb_entry {
	__u32 lock;		/* 0 free, 1 being written (cmpxchg) */
	__u32 ver;		/* bumped before and after every change (odd = changing) */
	__u16 state;		/* enum erb_entry_state */
	__u16 type;		/* enum erb_entry_type: GET hits only 0, HGETALL only 1 */
	__u32 hash;		/* FNV-1a 32 of the key */
	__u32 gen;		/* cache generation; != erb_global.cache_gen => empty */
	__u16 klen;
	__u16 vlen;
	__u64 wseq;		/* write sequence (SET fast path, later) */
	__u32 ref;		/* CLOCK reference bit: set by a hit, cleared by an eviction sweep */
	__u32 slot;		/* its own index in erb_cache (where its erb_tags byte is) */
	char key[ERB_KEY_MAX];	/* zero-padded to its last 8-byte word; the bytes after are stale */
	char val[ERB_VAL_MAX];	/* vlen bytes; the bytes after are stale */
};

/* What erb_entry.val holds. */
enum erb_entry_type {
	ERB_TYPE_STRING = 0,	/* a string value (GET, SET) */
	ERB_TYPE_HASH = 1,	/* Redis's whole RESP2 reply to HGETALL key */
	ERB_TYPE_HASH_UNVERIFIED = 2,	/* an HGETALL fill the agent has not checked for a TTL: never served */
	ERB_TYPE_STRING_UNVERIFIED = 3,	/* a GET fill the agent has not checked for a TTL: never served */
	ERB_TYPE_NIL = 4,	/* no such key (a GET's nil reply): a GET is answered "$-1" (RESP3 "_") */
};

/* Flow key: the client->server 4-tuple as seen at ingress, network order. */
struct erb_flow_key {
	__u32 saddr;		/* client */
	__u32 daddr;		/* server */
	__u16 sport;		/* client */
	__u16 dport;		/* server */
};

/* Streaming RESP parser state (one per direction). */
enum erb_pstate {
	ERB_P_TYPE = 0,		/* at the start of an element: type byte */
	ERB_P_NUM = 1,		/* reading the number after * $ % ~ > | etc. */
	ERB_P_LINE = 2,		/* inside a simple line (+ - : _ # , ( inline) */
	ERB_P_BULK = 3,		/* skipping bulk payload + CRLF */
	ERB_P_LF = 4,		/* saw CR, expecting LF */
};

struct erb_parser {
	__u32 state;		/* enum erb_pstate */
	__u32 num;		/* number being read */
	__u32 bulk_left;	/* bytes of bulk left incl. CRLF */
	__u32 depth;		/* aggregate nesting */
	__u32 left[ERB_DEPTH_MAX];	/* elements left per level */
	__u8 type;		/* type byte of the element being read */
	__u8 neg;		/* number is negative */
	__u8 top_type;		/* type byte of the current top-level element */
	__u8 line_ok;		/* simple line so far equals a prefix of "OK" */
	__u32 line_len;		/* simple line length so far */
	/* request side only (argc: also reply side, see below) */
	__u32 argc;		/* args of the current command; replies: elements left below ERB_DEPTH_MAX */
	__u32 argi;		/* index of the arg being read */
	__u32 arg_hash;		/* FNV-1a of the arg so far (uppercased for arg 0) */
	__u32 arg_len;		/* bytes of the arg consumed so far */
	__u32 cmd_hash;		/* FNV-1a of the uppercased command name */
	__u32 cmd_flags;	/* ERB_CMD_* of the current command */
	__s32 first_key, last_key;	/* key positions of the current command */
	__u32 key_step;
	__u32 arg_uhash;	/* FNV-1a of the arg uppercased (subcommands) */
	__u32 num_arg;		/* unused (SELECT 0 is told from arg_hash); kept for the layout */
	__u32 num_ok;		/* unused, as num_arg */
	__u32 num_len;		/* unused, as num_arg */
	__u32 resync;		/* lost the command boundary: wait for a '*' */
};

/* Flow state (erb_flows: BPF_MAP_TYPE_HASH of max_flows). */
#define ERB_FLOW_SYN		(1U << 0)	/* saw the client's SYN */
#define ERB_FLOW_EST		(1U << 1)	/* saw the server's SYN-ACK */
#define ERB_FLOW_UNTRACKED	(1U << 2)	/* protocol state lost: never answer */
#define ERB_FLOW_MULTI		(1U << 3)
#define ERB_FLOW_SUBSCRIBED	(1U << 4)
#define ERB_FLOW_DB_NONZERO	(1U << 5)
#define ERB_FLOW_AUTHED		(1U << 6)
#define ERB_FLOW_TS		(1U << 7)	/* TCP timestamps in use */
#define ERB_FLOW_C_FIN		(1U << 8)
#define ERB_FLOW_S_FIN		(1U << 9)
#define ERB_FLOW_WR_OVERFLOW	(1U << 10)	/* counted in erb_global.overflow */
#define ERB_FLOW_ANSWERED	(1U << 11)	/* corrections are non-zero */
#define ERB_FLOW_WIN		(1U << 12)	/* s_win holds a scaled window */
#define ERB_FLOW_CLOSED		(1U << 13)	/* both FINs acked: deleted by its erb_flow_gc timer */
#define ERB_FLOW_C_WSCALE	(1U << 14)	/* the client's SYN offered window scaling */
#define ERB_FLOW_HELLO		(1U << 15)	/* sent HELLO once: maybe RESP3, no HGETALL */
#define ERB_FLOW_WATCH		(1U << 16)	/* WATCH issued: EXEC waits for pending writes */
/*
 * May get pushes a write causes (CLIENT TRACKING/CACHING, subscribed, or a
 * history ERB did not parse): each command waits for pending writes, so its
 * reply follows every invalidation Redis alone would have pushed before it.
 */
#define ERB_FLOW_PUSHES		(1U << 17)
/*
 * Client bytes after a gap were passed on and kept in erb_ooo: the parser
 * resumes over them once the gap is filled, so the flow stays tracked.
 */
#define ERB_FLOW_OOO		(1U << 18)
/*
 * Redis's TSval clock is known (ts_base): two of its segments at least 4 ms
 * apart agreed on it within 1 ms. XDP answers then carry the TSval Redis
 * would send now (erb.bpf.c, ts_learn).
 */
#define ERB_FLOW_TSCLK		(1U << 19)
/*
 * The reply to the flow's last HELLO, when TC saw it (f->auth_idx): an array,
 * RESP2, or a map, RESP3. XDP clears both on each HELLO. A flow that sent
 * HELLO with neither speaks a protocol ERB does not know: no nil answered.
 */
#define ERB_FLOW_RESP2		(1U << 20)
#define ERB_FLOW_RESP3		(1U << 21)

struct erb_seqadj {
	__u32 pos;		/* correction position (see erb.bpf.c) */
	__s32 off_before;
	__s32 off_after;
};

/*
 * A key-hash bucket (erb_buckets). What a fast SET checks under the lock sits
 * beside the lock: the CAS that takes it brings the count and the fence into
 * the cache with it (three maps before: three cache misses per SET, the two
 * after the CAS measured at ~180 ns of a fast SET's ~1,300 on the fleet).
 */
struct erb_bucket {
	__u32 lock;		/* try-lock: 0 free, else the holder's CPU id + 1 */
	__u32 inflight;		/* writes passed to Redis and unanswered (counted under lock) */
	__u64 fence_ns;		/* when an untracked flow last wrote a key of it (ns) */
};

struct erb_wr {
	__u32 idx;		/* command index whose reply releases it */
	__u32 bucket;		/* erb_buckets bucket; ~0 = unused */
};

/*
 * c and s are written by XDP (answered(), one CPU per flow at a time) and read
 * by TC egress on any CPU: adj_seq is their sequence count (odd while XDP
 * changes them; see adj_read() in erb.bpf.c). No bpf_spin_lock: it disabled
 * interrupts around every TC segment's read.
 */
struct erb_flow {
	__u32 adj_seq;		/* sequence count of c and s */
	__u32 flags;		/* ERB_FLOW_* */
	__u32 c_nxt;		/* next expected client seq (client view) */
	__u32 s_nxt;		/* next server seq (client view) */
	__u32 s_win;		/* last window the server advertised (raw) */
	__u32 s_tsval;		/* TSval of our last answer (0: none, or no timestamps) */
	struct erb_seqadj c;	/* client stream: bytes removed by XDP answers */
	struct erb_seqadj s;	/* server stream: bytes inserted by XDP answers */
	__u32 cmds;		/* commands passed to Redis */
	__u32 replies;		/* replies Redis sent (egress) */
	__u32 auth_idx;		/* index of the last AUTH/HELLO passed, +1 (0 none) */
	__u32 fill_idx;		/* index of the pending write-through SET, +1 */
	__u32 last_req_seq;	/* last answered request (client view) */
	__u32 last_req_len;
	__u32 last_rep_seq;	/* its reply (client view) */
	__u32 last_rep_len;
	__u32 c_ack;		/* highest ACK the client sent (client view) */
	__u32 c_mss;		/* MSS the client's SYN offered (0: none seen) */
	__u32 c_wshift;		/* the client's window scale + 1 (0: none) */
	__u32 c_win;		/* last window the client advertised (raw) */
	__u32 gap_lo, gap_hi;	/* untracked: client bytes passed unparsed */
	__u64 hold_wseq;	/* write_seq when the segment was first held (0: none) */
	__u32 hold_end;		/* end (client seq) of the bytes that bound covers */
	__u32 ts_base;		/* Redis's TSval minus the ms clock (ERB_FLOW_TSCLK) */
	__u32 ts_last;		/* the TSval ts_base was last checked with (0: none yet) */
	__u32 wr_mask;		/* bit i: wr[i] may be in use (set after, cleared before it is) */
	__u32 c_isn;		/* seq of the client's SYN (with ERB_FLOW_SYN) */
	__u32 pad;
	struct erb_wr wr[ERB_WR_RING];
	struct erb_parser req;	/* ingress: client requests */
	struct erb_parser rep;	/* egress: Redis replies */
};

/*
 * A closed flow's deletion timer (erb_flow_gc: BPF_MAP_TYPE_HASH of max_flows,
 * by flow key), apart from struct erb_flow so that the flow stays plain memory
 * (global functions take it as an argument).
 */
struct erb_flow_gc {
	struct bpf_timer timer;
};

/*
 * Out-of-order client bytes (erb_ooo, HASH by flow key). A segment after a gap
 * is passed on (Linux's SACK and fast retransmit then work as without ERB) and
 * its bytes kept here; the segment that fills the gap is parsed with them, so
 * the command boundary is never lost. Redis cannot run them before that
 * segment: its stack delivers in order, and XDP sees the filler first.
 */
#define ERB_OOO_MAX	2048	/* bytes kept per flow (one parse window) */
struct erb_ooo {
	__u32 seq;		/* client seq of data[0] */
	__u32 len;		/* <= ERB_OOO_MAX */
	char data[2 * ERB_OOO_MAX];	/* twice: an append's bounds, for the verifier */
};

/* Pending write-through fill and last reply copy (erb_aux, HASH by flow key). */
struct erb_aux {
	__u32 fill_hash;
	__u32 fill_bucket;
	__u16 fill_klen;
	__u16 fill_vlen;
	__u16 last_rep_off;	/* payload starts at last_rep[last_rep_off] */
	__u16 last_rep_len;
	__u32 fill_epoch;	/* erb_wepoch of the bucket when the SET passed */
	__u32 fill_gen;		/* erb_global.cache_gen then */
	char fill_key[ERB_KEY_MAX];
	char fill_val[ERB_VAL_MAX];
	char last_rep[ERB_REPLY_MAX];	/* payload of the last XDP reply, for retransmits */
	__u32 fill_type;	/* enum erb_entry_type of the pending fill */
};

/* Global state (erb_global: ARRAY of 1). */
#define ERB_FILLQ		256	/* fill queue entries (a power of 2) */
#define ERB_CTL_DRAIN		(1U << 0)	/* stop answering and filling (rollback) */
#define ERB_CTL_KMOD		(1U << 1)	/* erb_io owns applied_seq: the agent must not publish it */

struct erb_global {
	__u32 cache_gen;	/* FLUSHALL/FLUSHDB/unknown write bump it */
	__u32 overflow;		/* flows whose outstanding writes overflowed the ring */
	__u32 ctl;		/* ERB_CTL_*, written by the loader at run time */
	__u32 rmod_pid;		/* redis-server applying the ring (files/rmod), 0: erb-agent */
	__u64 untracked_wr_ns;	/* last write seen on an untracked flow */
	__u64 write_seq;	/* SET fast path (later) */
	__u64 applied_seq;	/* SET fast path (later) */
	/*
	 * Until then (bpf_ktime_get_ns()) erb_redis applies every committed
	 * record before Redis runs a command it reads (files/rmod): a command
	 * on a pending key need not be held, nor Redis woken for each record.
	 * A lease, renewed by erb_redis every few milliseconds: a Redis that
	 * stopped without unloading it stops renewing it.
	 */
	__u64 ordered_until_ns;
	__u64 pad[2];		/* fillq_head on a cache line of its own */
	/*
	 * The fill queue: the cache slot of every GET and HGETALL fill, which
	 * erb-agent must check for a TTL before it may be served. Fill number
	 * i (fillq_head counts them) is fillq[i % ERB_FILLQ] = (__u64)i << 32 |
	 * slot, stored after the entry. The agent checks the slots since its
	 * last look (an entry not stored yet at its next look); when it fell
	 * more than ERB_FILLQ behind, it walks the cache instead.
	 */
	__u32 fillq_head;
	__u32 fillq_pad;
	__u64 fillq[ERB_FILLQ];
};

/*
 * Redis command table (erb_cmds: HASH, key = FNV-1a 32 of the uppercase name,
 * filled by the loader from plugins/module_utils/redis_commands.py).
 * A command missing from the table is treated as a write with unknown keys.
 */
#define ERB_CMD_WRITE		(1U << 0)	/* writes its keys */
#define ERB_CMD_KEYS_UNKNOWN	(1U << 1)	/* keys not found by first/last/step */
#define ERB_CMD_FLUSH		(1U << 2)	/* FLUSHALL / FLUSHDB */
#define ERB_CMD_GET		(1U << 3)
#define ERB_CMD_SET		(1U << 4)
#define ERB_CMD_MULTI		(1U << 5)
#define ERB_CMD_EXEC		(1U << 6)	/* EXEC or DISCARD: leaves MULTI */
#define ERB_CMD_SUBSCRIBE	(1U << 7)	/* (P|S)SUBSCRIBE, MONITOR */
#define ERB_CMD_SELECT		(1U << 8)
#define ERB_CMD_AUTH		(1U << 9)	/* AUTH, HELLO (may carry AUTH) */
#define ERB_CMD_RESET		(1U << 10)
#define ERB_CMD_UNTRACK		(1U << 11)	/* CLIENT (REPLY OFF/SKIP), SYNC, PSYNC... */
#define ERB_CMD_KEYSPACE	(1U << 12)	/* reads the keyspace as a whole: KEYS, SCAN, DBSIZE */
#define ERB_CMD_WATCH		(1U << 13)	/* WATCH: a later EXEC waits for pending writes */
#define ERB_CMD_PUBLISH		(1U << 14)	/* (S)PUBLISH: waits, its message after a write's pushes */

struct erb_cmd_spec {
	__u32 flags;		/* ERB_CMD_* */
	__s16 first_key;	/* 1-based arg index of the first key; 0 = none */
	__s16 last_key;		/* last key index; negative counts from the end */
	__u16 step;
	__u16 pad;
};

/* Per-CPU counters (erb_stats: PERCPU_ARRAY of ERB_STAT_MAX __u64). */
enum erb_stat {
	ERB_STAT_RX_PACKETS = 0,	/* TCP segments to the Redis port */
	ERB_STAT_HIT,			/* GET answered in XDP */
	ERB_STAT_MISS,			/* GET, eligible, not in cache */
	ERB_STAT_RETRANSMIT_ANSWER,	/* retransmitted answered request answered again */
	ERB_STAT_PASS_NO_FLOW,		/* flow began before ERB or table full */
	ERB_STAT_PASS_NOT_SINGLE,	/* segment not exactly one GET */
	ERB_STAT_PASS_OUT_OF_ORDER,
	ERB_STAT_PASS_OUTSTANDING,	/* Redis owes this flow a reply */
	ERB_STAT_PASS_UNACKED,		/* client has not acked all server data */
	ERB_STAT_PASS_STATE,		/* MULTI, subscribed, db != 0, not authed */
	ERB_STAT_PASS_UNTRACKED,
	ERB_STAT_PASS_TOO_BIG,		/* key/value/reply over the limits */
	ERB_STAT_PASS_DISABLED,		/* answering off (drain) */
	ERB_STAT_DROP_OVERLAP,		/* partial retransmit of answered bytes */
	ERB_STAT_INVALIDATE,		/* cache entries removed by writes */
	ERB_STAT_FLUSH,			/* cache emptied */
	ERB_STAT_FILL,			/* entries stored from SET +OK */
	ERB_STAT_FILL_SKIPPED,		/* +OK seen, concurrent write: not stored */
	ERB_STAT_CMDS_PASSED,		/* commands parsed at ingress */
	ERB_STAT_REPLIES,		/* replies parsed at egress */
	ERB_STAT_CORRECTED_IN,		/* ingress segments rewritten */
	ERB_STAT_CORRECTED_OUT,		/* egress segments rewritten */
	ERB_STAT_FLOW_NEW,
	ERB_STAT_FLOW_END,
	ERB_STAT_FLOW_FULL,
	ERB_STAT_PARSE_ERROR,		/* malformed RESP: flow untracked */
	ERB_STAT_DROP_OUT_OF_ORDER,	/* tracked flow, gap before this segment */
	ERB_STAT_FLOW_ADOPTED,		/* flow seen mid-stream: untracked */
	ERB_STAT_UNTRACKED_WRITE,	/* write on an untracked flow */
	ERB_STAT_CACHE_FULL,		/* insert found no slot in the probe window (all pending or busy) */
	ERB_STAT_PASS_NO_ROOM,		/* hit, but the frame could not grow for the reply */
	ERB_STAT_SET_FAST,		/* SET answered in XDP, queued for Redis */
	ERB_STAT_SET_PASS_QUEUE_FULL,	/* ring/kfifo full: SET passed to Redis */
	ERB_STAT_SET_PASS_BUSY,		/* key busy (lock, in-flight write, no slot) */
	ERB_STAT_HOLD,			/* segment dropped until pending writes apply */
	ERB_STAT_TS_CLAMPED,		/* Redis resend given our last answer's TSval (PAWS) */
	ERB_STAT_ANSWER_RESENT,		/* answer resent: a dup ACK or a segment over answered bytes */
	ERB_STAT_ACK_HELD,		/* Redis ACK kept below an answer the client lacks */
	ERB_STAT_FLOW_GIVEN_UP,		/* tracked flow untracked (reordering, unparsable bytes) */
	ERB_STAT_PASS_OOO,		/* out-of-order segment passed (flow given up) */
	ERB_STAT_PASS_CLIENT_LIMIT,	/* reply over the client's MSS or receive window */
	ERB_STAT_UNSEEN_PASSED,		/* bytes we cannot parse passed, cache emptied */
	ERB_STAT_REPLY_UNMATCHED,	/* a reply with no command owed: flow untracked */
	ERB_STAT_HOLD_WAITED,		/* would-be hold passed: the I/O path (or a lock) caught up within the wait */
	ERB_STAT_EVICT,			/* entries evicted (CLOCK) to store another key */
	ERB_STAT_PIPELINED,		/* segments of several commands answered in one reply */
	ERB_STAT_PIPELINED_CMDS,	/* commands in those segments */
	ERB_STAT_HOLD_BUSY,		/* segment dropped: a key's bucket lock stayed taken (holder stalled) */
	ERB_STAT_PARKED,		/* held segment copied to erb_parked for the agent to replay */
	ERB_STAT_OOO_KEPT,		/* segment after a gap passed, its bytes kept for the parser */
	ERB_STAT_OOO_RESUMED,		/* gap filled: the kept bytes parsed, the flow still tracked */
	ERB_STAT_FILL_HASH,		/* of ERB_STAT_FILL: HGETALL replies (served once erb-agent checked the TTL) */
	ERB_STAT_REANSWER_PARKED,	/* answer to send again, no room in the frame: parked for erb-agent to run */
	ERB_STAT_REANSWER_NO_COPY,	/* answer to send again, its copy not (yet) there: the segment dropped */
	ERB_STAT_SYN_KEPT,		/* the flow's own SYN again (a late copy, sent again): flow kept */
	ERB_STAT_FILL_GET,		/* of ERB_STAT_FILL: GET replies (served once erb-agent checked the TTL) */
	ERB_STAT_FILL_NIL,		/* of ERB_STAT_FILL: GET nil replies (no such key), served at once */
	ERB_STAT_HIT_NIL,		/* of ERB_STAT_HIT: GETs of a key cached as absent, answered nil */
	ERB_STAT_MGET,			/* MGETs answered (their keys count in ERB_STAT_HIT) */
	ERB_STAT_MAX,
};

/*
 * A segment the hold rule drops (its commands touch a key whose acknowledged
 * write the I/O path has not applied) is also parked: copied into the
 * erb_parked ring with the write_seq it waits for. The agent replays it
 * through erb_xdp (BPF_PROG_RUN with live frames, as if it arrived again on
 * ifindex/rxq) once applied_seq reaches bound, so the client gets its reply
 * when the write is applied, not after its retransmission timeout. A replay
 * is a copy of a segment the client sent, i.e. what its own retransmission
 * would be; a parked segment that is never replayed costs what a hold cost
 * before: the retransmission. Not versioned by ERB_LAYOUT_VERSION (no state):
 * the agent checks the map's value size.
 */
#define ERB_PARK_FRAME_MAX	1600	/* Ethernet frame bytes: a 1500 MTU with two VLAN tags fits */

/*
 * skb->mark of the frames erb-agent sends through a packet socket when it
 * replays a parked segment on a copy (the kernel refuses BPF_PROG_RUN's live
 * frames, or --replay copy): erb_tc_egress lets an answer erb_xdp built
 * (XDP_TX) out untouched, and turns a segment erb_xdp passed (XDP_PASS) around
 * into the interface's ingress, where the stack takes it as received. Both
 * marks are cleared on the way.
 */
#define ERB_MARK_REPLAY_TX	0x45524201u	/* "ERB" 1 */
#define ERB_MARK_REPLAY_RX	0x45524202u	/* "ERB" 2 */

struct erb_park {
	__u64 bound;		/* replay once erb_global.applied_seq >= bound */
	__u64 ts_ns;		/* bpf_ktime_get_ns() when parked */
	__u32 ifindex;		/* xdp_md.ingress_ifindex */
	__u32 rxq;		/* xdp_md.rx_queue_index */
	__u32 len;		/* bytes of frame[] */
	__u32 pad;
	__u8 frame[ERB_PARK_FRAME_MAX];
};

#endif /* ERB_H */
