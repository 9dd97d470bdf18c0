// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * erb_redis: ERB's I/O path inside redis-server, a Redis module.
 *
 * The same contract as erb-agent's ring path (DESIGN.md, "I/O path"), run in
 * Redis's own thread instead of a process of its own:
 *   - the fast-path SET records in the BPF ring buffer (erb_events) are
 *     applied with RedisModule_Call("SET", ..., "!") (logged to the AOF and
 *     replicated as Redis's own), in ring order, and applied_seq is published
 *     right after they executed: a segment held behind one of them is let go
 *     without waiting for another process to be scheduled;
 *   - every key Redis changes (keyspace notifications: any command, expiry,
 *     eviction, Lua, other interfaces) is invalidated in the BPF cache
 *     synchronously, before the change's own reply is sent; FLUSHALL,
 *     FLUSHDB, SWAPDB and a reload empty it.
 * erb-agent then only assists (parked segments, unverified fills): it sees
 * erb_global.rmod_pid and neither drains the ring nor tracks keys.
 *
 * Why: on a small host erb-agent's wakeups (the ring's, Redis's replies',
 * each invalidation message's) cost more CPU than ERB saves; here the ring's
 * readiness joins Redis's own event loop and an invalidation is a function
 * call (bench/README.md, "Under the chaos workload").
 *
 * Load: MODULE LOAD /path/erb_redis.so <pin-dir>   (enable-module-command)
 *   or loadmodule /path/erb_redis.so <pin-dir>     (redis.conf)
 * Refused while an erb-agent drains the ring (its connection is named
 * erb-agent): stop it first; start it again afterwards to assist.
 * Unload: MODULE UNLOAD erbredis (erb-agent takes the ring back on restart).
 * INFO erbredis: what it did.
 *
 * No Redis headers: the few API functions used are declared here and looked
 * up with RedisModule_GetApi(), as redismodule.h does; no libbpf either (the
 * maps are opened with the bpf() syscall and mmapped).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <linux/bpf.h>
#include <linux/types.h>

#include "erb.h"
#include "erb_record.h"
#include "erb_cache_user.h"

/* ------------------------------------------------------------ Redis module API */

#define RM_OK			0
#define RM_ERR			1
#define RM_APIVER		1
#define RM_REPLY_STRING		0
#define RM_REPLY_ERROR		1
#define RM_EVENTLOOP_READABLE	1
/* generic, string, list, set, hash, zset, expired, evicted, stream, module */
#define RM_NOTIFY_KEYS		(0x7FCU | (1U << 13))
#define RM_EVENT_FLUSHDB	2
#define RM_EVENT_LOADING	3
#define RM_EVENT_MODULE_CHANGE	9
#define RM_EVENT_SWAPDB		11
#define RM_SUBEVENT_MODULE_LOADED	0
#define RM_CMDFILTER_NOSELF	(1 << 0)
#define RM_CTX_FLAGS_LUA	(1 << 0)
#define RM_CTX_FLAGS_LOADING	(1 << 13)
/* a module keyspace event that no notify-keyspace-events setting publishes */
#define RM_NOTIFY_LOADED	(1 << 12)
#define RM_SUBEVENT_LOADING_ENDED	3
#define RM_SUBEVENT_FLUSHDB_END		1

typedef struct RedisModuleCtx RedisModuleCtx;
typedef struct RedisModuleString RedisModuleString;
typedef struct RedisModuleCallReply RedisModuleCallReply;
typedef struct RedisModuleInfoCtx RedisModuleInfoCtx;
typedef uint64_t RedisModuleTimerID;
typedef struct { uint64_t id, dataver; } RedisModuleEvent;
typedef struct RedisModuleCommandFilterCtx RedisModuleCommandFilterCtx;
typedef struct RedisModuleCommandFilter RedisModuleCommandFilter;

static int (*rm_get_api)(const char *name, void *fp);
static int (*RM_IsModuleNameBusy)(const char *);
static int (*RM_SetModuleAttribs)(RedisModuleCtx *, const char *, int, int);
static RedisModuleCallReply *(*RM_Call)(RedisModuleCtx *, const char *, const char *, ...);
static int (*RM_CallReplyType)(RedisModuleCallReply *);
static const char *(*RM_CallReplyStringPtr)(RedisModuleCallReply *, size_t *);
static void (*RM_FreeCallReply)(RedisModuleCallReply *);
static int (*RM_SelectDb)(RedisModuleCtx *, int);
static RedisModuleCtx *(*RM_GetDetachedThreadSafeContext)(RedisModuleCtx *);
static void (*RM_FreeThreadSafeContext)(RedisModuleCtx *);
static int (*RM_EventLoopAdd)(int, int, void (*)(int, void *, int), void *);
static int (*RM_EventLoopDel)(int, int);
static RedisModuleTimerID (*RM_CreateTimer)(RedisModuleCtx *, long long,
					     void (*)(RedisModuleCtx *, void *), void *);
static const char *(*RM_StringPtrLen)(const RedisModuleString *, size_t *);
static void (*RM_Log)(RedisModuleCtx *, const char *, const char *, ...);
static int (*RM_SubscribeToKeyspaceEvents)(RedisModuleCtx *, int,
					   int (*)(RedisModuleCtx *, int, const char *, RedisModuleString *));
static int (*RM_SubscribeToServerEvent)(RedisModuleCtx *, RedisModuleEvent,
					void (*)(RedisModuleCtx *, RedisModuleEvent, uint64_t, void *));
static int (*RM_RegisterInfoFunc)(RedisModuleCtx *, void (*)(RedisModuleInfoCtx *, int));
static int (*RM_InfoAddSection)(RedisModuleInfoCtx *, const char *);
static int (*RM_InfoAddFieldULongLong)(RedisModuleInfoCtx *, const char *, unsigned long long);
static RedisModuleCommandFilter *(*RM_RegisterCommandFilter)(RedisModuleCtx *,
							    void (*)(RedisModuleCommandFilterCtx *), int);
static int (*RM_NotifyKeyspaceEvent)(RedisModuleCtx *, int, const char *, RedisModuleString *);
static RedisModuleString *(*RM_CreateString)(RedisModuleCtx *, const char *, size_t);
static void (*RM_FreeString)(RedisModuleCtx *, RedisModuleString *);
static int (*RM_GetContextFlags)(RedisModuleCtx *);

struct api_fn {
	const char *name;
	void *fp;
};

#define FN(n) { "RedisModule_" #n, &RM_##n }
static const struct api_fn api_fns[] = {
	FN(IsModuleNameBusy), FN(SetModuleAttribs), FN(Call), FN(CallReplyType), FN(CallReplyStringPtr), FN(FreeCallReply),
	FN(SelectDb), FN(GetDetachedThreadSafeContext), FN(FreeThreadSafeContext), FN(EventLoopAdd),
	FN(EventLoopDel), FN(CreateTimer), FN(StringPtrLen), FN(Log), FN(SubscribeToKeyspaceEvents),
	FN(SubscribeToServerEvent), FN(RegisterInfoFunc), FN(InfoAddSection), FN(InfoAddFieldULongLong),
	FN(RegisterCommandFilter), FN(NotifyKeyspaceEvent), FN(CreateString), FN(FreeString),
	FN(GetContextFlags),
};
#undef FN

/* ------------------------------------------------------------------- state */

#define MODULE_NAME	"erbredis"
#define TRACK_BITS	(1ULL << 22)	/* seqs tracked above applied_seq (as erb-agent) */
#define LOCK_SPINS	(1U << 20)	/* an entry lock is held by XDP for ~a microsecond */
#define META_MAX	4096
/*
 * Ordered mode (erb_global.ordered_until_ns): the lease erb_xdp trusts, and
 * the tick that renews it and applies records no command follows: every
 * TICK_FAST_NS while records keep coming (TICK_BUSY ticks after the last),
 * else every TICK_IDLE_NS.
 */
#define LEASE_NS	20000000ULL
#define TICK_FAST_NS	1000000L
#define TICK_IDLE_NS	5000000L
#define TICK_BUSY	100

struct ring {
	int fd;
	size_t size, page;
	unsigned long *consumer_pos;
	const unsigned long *producer_pos;
	const uint8_t *data;
	void *prod_map;
	size_t prod_len;
};

static struct {
	char pin_dir[256];
	struct ring ring;
	int global_fd, cache_fd, tags_fd, wepoch_fd;
	struct erb_global *global;
	struct erb_entry *cache;
	const uint8_t *tags;
	uint32_t *wepoch;
	size_t global_len, cache_len, tags_len, wepoch_len;
	uint32_t entries, hash_prime, max_probes;
	uint32_t global_id;		/* erb_global's map id: are the pins still these maps? */
	uint64_t *bits, base;		/* applied seqs above base, as erb-agent's tracker */
	RedisModuleCtx *dctx;		/* for CreateTimer from the event loop callback */
	bool armed, applying, draining;
	bool ordered;			/* holding the lease: see on_command() */
	int tick_fd;			/* timerfd in Redis's event loop */
	long tick_ns;
	unsigned int tick_busy;
	RedisModuleString *event_key;
	struct {
		unsigned long long applied, bad, errors, batches, invalidations, deleted, flushes,
			lock_timeouts, before_command, by_tick;
	} st;
} m = { .ring.fd = -1, .global_fd = -1, .cache_fd = -1, .tags_fd = -1, .wepoch_fd = -1, .tick_fd = -1 };

/* ------------------------------------------------------------------ bpf maps */

static long sys_bpf(int cmd, union bpf_attr *attr)
{
	return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

static int pin_open(const char *name, char *err, size_t errlen)
{
	char path[512];
	union bpf_attr at;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", m.pin_dir, name);
	memset(&at, 0, sizeof(at));
	at.pathname = (uint64_t)(unsigned long)path;
	fd = (int)sys_bpf(BPF_OBJ_GET, &at);
	if (fd < 0)
		snprintf(err, errlen, "cannot open pinned map %s: %s (is ERB loaded with the SET fast "
			 "path on this interface?)", path, strerror(errno));
	return fd;
}

static int map_info(int fd, struct bpf_map_info *info)
{
	union bpf_attr at;

	memset(&at, 0, sizeof(at));
	memset(info, 0, sizeof(*info));
	at.info.bpf_fd = (uint32_t)fd;
	at.info.info_len = sizeof(*info);
	at.info.info = (uint64_t)(unsigned long)info;
	return (int)sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &at);
}

static size_t page_up(size_t n)
{
	return (n + m.ring.page - 1) / m.ring.page * m.ring.page;
}

/* Open and mmap one BPF_F_MMAPABLE array whose values are value_size bytes. */
static void *array_map(const char *name, uint32_t value_size, uint32_t min_entries, int writable,
		       int *fd, size_t *len, char *err, size_t errlen)
{
	struct bpf_map_info info;
	void *p;

	*fd = pin_open(name, err, errlen);
	if (*fd < 0)
		return NULL;
	if (map_info(*fd, &info) || info.type != BPF_MAP_TYPE_ARRAY || info.value_size != value_size ||
	    info.max_entries < min_entries || !(info.map_flags & BPF_F_MMAPABLE)) {
		snprintf(err, errlen, "%s/%s: type %u, value %u bytes, %u entries, flags 0x%x: not what "
			 "this module knows (ERB_LAYOUT_VERSION %d; value %u bytes, mmapable)", m.pin_dir,
			 name, info.type, info.value_size, info.max_entries, info.map_flags,
			 ERB_LAYOUT_VERSION, value_size);
		return NULL;
	}
	if (fd == &m.global_fd)
		m.global_id = info.id;
	*len = page_up((size_t)info.max_entries * value_size);
	p = mmap(NULL, *len, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, *fd, 0);
	if (p == MAP_FAILED) {
		snprintf(err, errlen, "%s/%s: mmap: %s", m.pin_dir, name, strerror(errno));
		return NULL;
	}
	return p;
}

/* A number of the loader's config JSON (meta map): "key": value after "config". */
static long long meta_number(const char *json, const char *key)
{
	const char *cfg = strstr(json, "\"config\"");
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(cfg ? cfg : json, pat);
	return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

static int read_meta(char *err, size_t errlen)
{
	static char json[META_MAX + 1];
	union bpf_attr at;
	uint32_t key = 0;
	long long v;
	int fd = pin_open("meta", err, errlen);

	if (fd < 0)
		return -1;
	memset(&at, 0, sizeof(at));
	at.map_fd = (uint32_t)fd;
	at.key = (uint64_t)(unsigned long)&key;
	at.value = (uint64_t)(unsigned long)json;
	v = sys_bpf(BPF_MAP_LOOKUP_ELEM, &at);
	close(fd);
	json[META_MAX] = 0;
	if (v) {
		snprintf(err, errlen, "%s/meta: lookup: %s", m.pin_dir, strerror(errno));
		return -1;
	}
	v = meta_number(json, "cache_entries");
	if (v < 2 || v > UINT32_MAX) {
		snprintf(err, errlen, "%s/meta: no valid cache_entries", m.pin_dir);
		return -1;
	}
	m.entries = (uint32_t)v;
	v = meta_number(json, "hash_prime");
	m.hash_prime = v >= 1 && v < m.entries ? (uint32_t)v : 0;
	v = meta_number(json, "max_probes");
	m.max_probes = v >= 1 && v <= ERB_MAX_PROBES ? (uint32_t)v : ERB_MAX_PROBES;
	if (!m.hash_prime)
		m.hash_prime = erb_hash_prime(m.entries);
	return 0;
}

static int open_ring(char *err, size_t errlen)
{
	struct bpf_map_info info;
	struct ring *r = &m.ring;
	void *c;

	r->fd = pin_open("map_erb_events", err, errlen);
	if (r->fd < 0)
		return -1;
	if (map_info(r->fd, &info) || info.type != BPF_MAP_TYPE_RINGBUF) {
		snprintf(err, errlen, "%s/map_erb_events is not a BPF ring buffer", m.pin_dir);
		return -1;
	}
	r->size = info.max_entries;
	c = mmap(NULL, r->page, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
	r->prod_len = r->page + 2 * r->size;
	r->prod_map = mmap(NULL, r->prod_len, PROT_READ, MAP_SHARED, r->fd, (off_t)r->page);
	if (c == MAP_FAILED || r->prod_map == MAP_FAILED) {
		snprintf(err, errlen, "map_erb_events: mmap: %s", strerror(errno));
		if (c != MAP_FAILED)
			munmap(c, r->page);
		r->prod_map = NULL;
		return -1;
	}
	r->consumer_pos = c;
	r->producer_pos = r->prod_map;
	r->data = (const uint8_t *)r->prod_map + r->page;
	return 0;
}

static void close_maps(void)
{
	struct ring *r = &m.ring;
	int fds[] = { r->fd, m.global_fd, m.cache_fd, m.tags_fd, m.wepoch_fd };

	if (r->consumer_pos)
		munmap(r->consumer_pos, r->page);
	if (r->prod_map)
		munmap(r->prod_map, r->prod_len);
	if (m.global)
		munmap(m.global, m.global_len);
	if (m.cache)
		munmap(m.cache, m.cache_len);
	if (m.tags)
		munmap((void *)m.tags, m.tags_len);
	if (m.wepoch)
		munmap(m.wepoch, m.wepoch_len);
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(m.bits);
}

static int open_maps(char *err, size_t errlen)
{
	m.ring.page = (size_t)sysconf(_SC_PAGESIZE);
	if (read_meta(err, errlen) || open_ring(err, errlen))
		return -1;
	m.global = array_map("map_erb_global", sizeof(struct erb_global), 1, 1, &m.global_fd,
			     &m.global_len, err, errlen);
	if (!m.global)
		return -1;
	m.cache = array_map("map_erb_cache", sizeof(struct erb_entry), m.entries, 1, &m.cache_fd,
			    &m.cache_len, err, errlen);
	if (!m.cache)
		return -1;
	m.tags = array_map("map_erb_tags", 8, (m.entries + 7) / 8, 0, &m.tags_fd, &m.tags_len, err,
			   errlen);
	if (!m.tags)
		return -1;
	m.wepoch = array_map("map_erb_wepoch", sizeof(uint32_t), ERB_INFLIGHT_BUCKETS, 1, &m.wepoch_fd,
			     &m.wepoch_len, err, errlen);
	return m.wepoch ? 0 : -1;
}

/* ---------------------------------------------------------------- applied_seq */

static uint64_t applied_seq(void)
{
	return __atomic_load_n(&m.global->applied_seq, __ATOMIC_ACQUIRE);
}

static bool seq_marked(uint64_t seq)
{
	uint64_t i = seq & (TRACK_BITS - 1);

	return m.bits[i / 64] & (1ULL << (i % 64));
}

static void seq_flip(uint64_t seq)
{
	uint64_t i = seq & (TRACK_BITS - 1);

	m.bits[i / 64] ^= 1ULL << (i % 64);
}

static void seq_done(uint64_t seq)
{
	if (seq > m.base && seq - m.base < TRACK_BITS && !seq_marked(seq))
		seq_flip(seq);
}

/* Move base over every contiguous applied seq and publish it. */
static void publish(void)
{
	while (seq_marked(m.base + 1)) {
		seq_flip(m.base + 1);
		m.base++;
	}
	if (m.base > applied_seq())
		__atomic_store_n(&m.global->applied_seq, m.base, __ATOMIC_RELEASE);
}

static uint32_t sample_len(uint32_t hdr)
{
	return hdr & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT);
}

static unsigned long sample_next(unsigned long pos, uint32_t hdr)
{
	return pos + ((sample_len(hdr) + BPF_RINGBUF_HDR_SZ + 7) & ~7UL);
}

static const struct erb_record *sample_at(unsigned long pos, uint32_t *hdr)
{
	const uint8_t *p = m.ring.data + (pos & (m.ring.size - 1));

	*hdr = __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE);
	return (const void *)(p + BPF_RINGBUF_HDR_SZ);
}

/*
 * Where applied_seq stands at load: every seq up to write_seq that is not in
 * the ring any more was applied by the consumer before (erb-agent, or this
 * module before an unload); those still in it are not.
 */
static int recover(char *err, size_t errlen)
{
	uint64_t wseq = __atomic_load_n(&m.global->write_seq, __ATOMIC_ACQUIRE), lowest = UINT64_MAX;
	unsigned long pos = __atomic_load_n(m.ring.consumer_pos, __ATOMIC_ACQUIRE);
	unsigned long prod = __atomic_load_n(m.ring.producer_pos, __ATOMIC_ACQUIRE);
	unsigned long p;
	uint32_t hdr;
	int busy;

	m.bits = calloc(TRACK_BITS / 64, sizeof(uint64_t));
	if (!m.bits) {
		snprintf(err, errlen, "out of memory for the seq tracker");
		return -1;
	}
	/*
	 * Every sample up to prod committed first: one reserved before write_seq
	 * was read may hold a seq up to it, and so may those after it.
	 */
	for (int waited = 0;; waited++) {
		for (busy = 0, p = pos; p < prod && !busy; p = sample_next(p, hdr)) {
			sample_at(p, &hdr);
			busy = !!(hdr & BPF_RINGBUF_BUSY_BIT);
		}
		if (!busy)
			break;
		if (waited == 1000) {
			snprintf(err, errlen, "a ring sample stays reserved: cannot recover applied_seq");
			return -1;
		}
		usleep(1000);
	}
	for (p = pos; p < prod; p = sample_next(p, hdr)) {
		const struct erb_record *r = sample_at(p, &hdr);

		if (!(hdr & BPF_RINGBUF_DISCARD_BIT) && sample_len(hdr) >= ERB_RECORD_HDR_SIZE &&
		    r->seq && r->seq <= wseq && r->seq < lowest)
			lowest = r->seq;
	}
	m.base = lowest == UINT64_MAX ? wseq : lowest - 1;
	if (m.base < applied_seq())
		m.base = applied_seq();
	if (wseq > m.base && wseq - m.base >= TRACK_BITS) {
		snprintf(err, errlen, "write_seq %llu is too far past applied_seq %llu",
			 (unsigned long long)wseq, (unsigned long long)m.base);
		return -1;
	}
	for (uint64_t s = m.base + 1; s <= wseq; s++)
		seq_done(s);
	for (p = pos; p < prod; p = sample_next(p, hdr)) {
		const struct erb_record *r = sample_at(p, &hdr);

		if (!(hdr & BPF_RINGBUF_DISCARD_BIT) && sample_len(hdr) >= ERB_RECORD_HDR_SIZE &&
		    r->seq > m.base && r->seq <= wseq && seq_marked(r->seq))
			seq_flip(r->seq);
	}
	publish();
	return 0;
}

/* -------------------------------------------------------------------- cache */

static bool entry_lock(struct erb_entry *e)
{
	for (uint32_t i = 0; i < LOCK_SPINS; i++) {
		if (erb_entry_trylock(e))
			return true;
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#endif
	}
	return false;
}

/* Delete e (locked) if it is of generation gen, unless Redis lacks its acknowledged write. */
static bool entry_delete(struct erb_entry *e, uint32_t gen)
{
	return __atomic_load_n(&e->gen, __ATOMIC_RELAXED) == gen && erb_entry_tomb(e, applied_seq());
}

/*
 * Empty the cache without dropping a write Redis does not have yet: a new
 * cache_gen when none is pending, else every other entry deleted (and every
 * fill in flight cancelled through the write epochs).
 */
static void cache_flush(RedisModuleCtx *ctx, const char *why)
{
	uint32_t gen = __atomic_load_n(&m.global->cache_gen, __ATOMIC_ACQUIRE);
	unsigned long long deleted = 0;

	m.st.flushes++;
	if (erb_cache_gen_flushable(m.global, applied_seq())) {
		__atomic_fetch_add(&m.global->cache_gen, 1, __ATOMIC_ACQ_REL);
		RM_Log(ctx, "verbose", "cache emptied (%s): cache_gen %u", why, gen + 1);
		return;
	}
	for (uint32_t b = 0; b < ERB_INFLIGHT_BUCKETS; b++)
		__atomic_fetch_add(&m.wepoch[b], 1, __ATOMIC_ACQ_REL);
	for (uint32_t i = 0; i < m.entries; i++) {
		struct erb_entry *e = &m.cache[i];

		if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) != ERB_ENTRY_VALID ||
		    __atomic_load_n(&e->gen, __ATOMIC_ACQUIRE) != gen)
			continue;
		if (!entry_lock(e)) {
			m.st.lock_timeouts++;
			__atomic_fetch_add(&m.global->cache_gen, 1, __ATOMIC_ACQ_REL);
			RM_Log(ctx, "warning", "cache flush (%s): entry %u stays locked; emptied by "
			       "cache_gen instead", why, i);
			return;
		}
		deleted += entry_delete(e, gen);
		erb_entry_unlock(e);
	}
	RM_Log(ctx, "verbose", "cache swept (%s; writes pending): %llu entries deleted", why, deleted);
}

/* Redis changed key: no entry of it may be served, no fill of it in flight stored. */
static void invalidate(RedisModuleCtx *ctx, const char *key, size_t klen)
{
	uint32_t h = erb_fnv1a(key, klen), gen;
	uint8_t tag = erb_hash_tag(h);

	m.st.invalidations++;
	__atomic_fetch_add(&m.wepoch[h & (ERB_INFLIGHT_BUCKETS - 1)], 1, __ATOMIC_ACQ_REL);
	gen = __atomic_load_n(&m.global->cache_gen, __ATOMIC_ACQUIRE);
	for (uint32_t i = 0; i < m.max_probes; i++) {
		uint32_t idx = erb_cache_index(h, i, m.hash_prime, m.entries);
		struct erb_entry *e = &m.cache[idx];
		uint8_t t = __atomic_load_n(&m.tags[idx], __ATOMIC_ACQUIRE);

		if (!t)
			return;		/* never written: the chain ends (erb_cache.h) */
		/* an entry of an older cache_gen is dead already: never wait for its lock */
		if (t != tag || __atomic_load_n(&e->hash, __ATOMIC_ACQUIRE) != h ||
		    __atomic_load_n(&e->gen, __ATOMIC_ACQUIRE) != gen)
			continue;
		if (!entry_lock(e)) {
			m.st.lock_timeouts++;
			cache_flush(ctx, "an entry stays locked");
			return;
		}
		if (e->klen == klen && !memcmp(e->key, key, klen))
			m.st.deleted += entry_delete(e, gen);
		erb_entry_unlock(e);
	}
}

static int on_keyspace(RedisModuleCtx *ctx, int type, const char *event, RedisModuleString *key)
{
	size_t klen;
	const char *k;

	(void)type;
	(void)event;
	if (m.applying)
		return RM_OK;	/* this module's own SET of a record: its entry is that write */
	k = RM_StringPtrLen(key, &klen);
	if (klen >= 1 && klen <= ERB_KEY_MAX)
		invalidate(ctx, k, klen);
	return RM_OK;
}

static void ordered_stop(RedisModuleCtx *ctx, const char *why);

static void on_server_event(RedisModuleCtx *ctx, RedisModuleEvent e, uint64_t sub, void *data)
{
	(void)data;
	if (e.id == RM_EVENT_FLUSHDB && sub == RM_SUBEVENT_FLUSHDB_END)
		cache_flush(ctx, "FLUSHALL/FLUSHDB");
	else if (e.id == RM_EVENT_SWAPDB)
		cache_flush(ctx, "SWAPDB");
	else if (e.id == RM_EVENT_LOADING && sub == RM_SUBEVENT_LOADING_ENDED)
		cache_flush(ctx, "dataset loaded");
	else if (e.id == RM_EVENT_MODULE_CHANGE && sub == RM_SUBEVENT_MODULE_LOADED)
		ordered_stop(ctx, "another module was loaded");
}

/* ------------------------------------------------------------------- records */

static void apply(RedisModuleCtx *ctx, const struct erb_record *r, int *db)
{
	RedisModuleCallReply *rep;

	if ((int)r->db != *db) {
		if (RM_SelectDb(ctx, (int)r->db) != RM_OK) {
			m.st.errors++;
			RM_Log(ctx, "warning", "record seq %llu: db %u does not exist; NOT applied",
			       (unsigned long long)r->seq, r->db);
			return;
		}
		*db = (int)r->db;
	}
	m.applying = true;
	rep = RM_Call(ctx, "SET", "bb!", r->key, (size_t)r->klen, r->val, (size_t)r->vlen);
	m.applying = false;
	if (rep && RM_CallReplyType(rep) == RM_REPLY_STRING) {
		m.st.applied++;
	} else {
		m.st.errors++;
		RM_Log(ctx, "warning", "applying seq %llu (db %u, key of %u bytes) failed (%s): the write "
		       "was acknowledged to a client and is NOT in Redis", (unsigned long long)r->seq,
		       r->db, r->klen, rep ? "error reply" : strerror(errno));
	}
	if (rep)
		RM_FreeCallReply(rep);
}

/*
 * Apply every committed record, in ring order, then publish how far. With
 * wait_busy, a record still being committed (XDP on another CPU, between
 * its reserve and its commit: microseconds) is waited for, as are those
 * after it; else the drain stops there.
 */
static void drain_ring(RedisModuleCtx *ctx, bool wait_busy)
{
	unsigned long pos = __atomic_load_n(m.ring.consumer_pos, __ATOMIC_ACQUIRE);
	unsigned long prod = __atomic_load_n(m.ring.producer_pos, __ATOMIC_ACQUIRE);
	int db = -1;		/* a timer's context may come with any db selected */

	m.st.batches++;
	while (pos < prod) {
		uint32_t hdr;
		const struct erb_record *r = sample_at(pos, &hdr);
		const char *why;

		if (hdr & BPF_RINGBUF_BUSY_BIT) {
			if (!wait_busy)
				break;	/* the fd stays readable: the next loop comes back */
#if defined(__x86_64__) || defined(__i386__)
			__builtin_ia32_pause();
#endif
			continue;
		}
		if (!(hdr & BPF_RINGBUF_DISCARD_BIT)) {
			why = erb_record_problem(r, sample_len(hdr));
			if (why) {
				m.st.bad++;
				RM_Log(ctx, "warning", "bad record at ring position %lu: %s; skipped, NOT applied",
				       pos, why);
			} else {
				apply(ctx, r, &db);
			}
			if (sample_len(hdr) >= ERB_RECORD_HDR_SIZE)
				seq_done(r->seq);
		}
		pos = sample_next(pos, hdr);
	}
	__atomic_store_n(m.ring.consumer_pos, pos, __ATOMIC_RELEASE);
	publish();
}

static void drain(RedisModuleCtx *ctx, void *unused)
{
	(void)unused;
	m.armed = false;
	if (m.draining)
		drain_ring(ctx, false);
}

static bool ring_has_data(void)
{
	return __atomic_load_n(m.ring.consumer_pos, __ATOMIC_ACQUIRE) !=
	       __atomic_load_n(m.ring.producer_pos, __ATOMIC_ACQUIRE);
}

/*
 * Ordered mode. Redis runs a command only after this filter applied every
 * record committed when it looked: a command it reads after a fast SET's
 * answer left (that answer leaves after its record's commit) runs after that
 * SET, as with Redis alone. So erb_xdp, while the lease holds, holds nothing
 * for the I/O path and commits records without waking Redis.
 *
 * Only at the top level: the commands of a script (and of RM_Call) run
 * inside another command, which must not see a write applied halfway
 * through it; the records such a command's own filter did not find were
 * acknowledged while it ran, as with Redis alone they would run after it.
 * Hence ordered mode only while erb_redis is Redis's only module (another
 * module's command may RM_Call, and the filter cannot tell).
 *
 * The SETs applied here are propagated (AOF, replicas) at once, before the
 * command's own entry: a module keyspace event's context, when it ends,
 * propagates what is pending (Redis 7.0's moduleFreeContext()). Left pending
 * they would trip performEvictions()'s assertion that nothing is.
 */
static void on_command(RedisModuleCommandFilterCtx *fctx)
{
	(void)fctx;
	if (!m.ordered || m.applying || !ring_has_data())
		return;
	if (RM_GetContextFlags(m.dctx) & (RM_CTX_FLAGS_LUA | RM_CTX_FLAGS_LOADING))
		return;
	m.st.before_command++;
	drain_ring(m.dctx, true);
	RM_NotifyKeyspaceEvent(m.dctx, RM_NOTIFY_LOADED, "erb-applied", m.event_key);
}

static int on_event_key(RedisModuleCtx *ctx, int type, const char *event, RedisModuleString *key)
{
	(void)ctx;
	(void)type;
	(void)event;
	(void)key;
	return RM_OK;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);	/* bpf_ktime_get_ns()'s clock */
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void lease_renew(void)
{
	__atomic_store_n(&m.global->ordered_until_ns, m.ordered ? mono_ns() + LEASE_NS : 0,
			 __ATOMIC_SEQ_CST);
}

static void tick_set(long ns)
{
	struct itimerspec its = { .it_interval = { 0, ns }, .it_value = { 0, ns } };

	if (m.tick_ns != ns && !timerfd_settime(m.tick_fd, 0, &its, NULL))
		m.tick_ns = ns;
}

/* The tick: renew the lease; apply what no command followed (from a timer: propagated). */
static void on_tick(int fd, void *unused, int mask)
{
	uint64_t n;

	(void)unused;
	(void)mask;
	if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		return;
	if (!m.draining)
		return;
	if (m.ordered)
		lease_renew();
	if (ring_has_data()) {
		m.tick_busy = TICK_BUSY;
		tick_set(TICK_FAST_NS);
		if (!m.armed) {
			m.st.by_tick++;
			m.armed = true;
			RM_CreateTimer(m.dctx, 0, drain, NULL);
		}
	} else if (m.tick_busy && !--m.tick_busy) {
		tick_set(TICK_IDLE_NS);
	}
}

/* Give the lease up: from now erb_xdp holds and wakes; what it passed before is applied first. */
static void ordered_stop(RedisModuleCtx *ctx, const char *why)
{
	if (!m.ordered)
		return;
	m.ordered = false;
	lease_renew();
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	drain_ring(ctx, true);
	RM_Log(ctx, "notice", "erb_redis: ordered mode off (%s): segments on pending keys are held "
	       "again until their writes are applied", why);
}

/*
 * The ring is readable. Records are applied from a timer (due at once, run
 * in this same event loop iteration) rather than here: a timer's context
 * propagates the SETs to the AOF and replicas, this callback's does not.
 */
static void on_ring(int fd, void *unused, int mask)
{
	(void)fd;
	(void)unused;
	(void)mask;
	if (!m.armed && m.draining) {
		m.armed = true;
		RM_CreateTimer(m.dctx, 0, drain, NULL);
	}
}

/*
 * 1 while the pin directory still holds the maps this module opened; 0 once
 * ERB was detached (or attached again: new maps) there, and the module works
 * on maps nobody else uses any more: unload it (the role loads it again).
 */
static unsigned long long maps_current(void)
{
	struct bpf_map_info info;
	char err[8];
	int fd = pin_open("map_erb_global", err, sizeof(err));
	bool same = fd >= 0 && !map_info(fd, &info) && info.id == m.global_id;

	if (fd >= 0)
		close(fd);
	return same;
}

static void on_info(RedisModuleInfoCtx *ic, int for_crash_report)
{
	(void)for_crash_report;
	RM_InfoAddSection(ic, "");
	RM_InfoAddFieldULongLong(ic, "maps_current", for_crash_report ? 1 : maps_current());
	RM_InfoAddFieldULongLong(ic, "applied", m.st.applied);
	RM_InfoAddFieldULongLong(ic, "applied_seq", m.global ? applied_seq() : 0);
	RM_InfoAddFieldULongLong(ic, "write_seq", m.global ? m.global->write_seq : 0);
	RM_InfoAddFieldULongLong(ic, "batches", m.st.batches);
	RM_InfoAddFieldULongLong(ic, "bad_records", m.st.bad);
	RM_InfoAddFieldULongLong(ic, "errors", m.st.errors);
	RM_InfoAddFieldULongLong(ic, "invalidations", m.st.invalidations);
	RM_InfoAddFieldULongLong(ic, "deleted", m.st.deleted);
	RM_InfoAddFieldULongLong(ic, "flushes", m.st.flushes);
	RM_InfoAddFieldULongLong(ic, "lock_timeouts", m.st.lock_timeouts);
	RM_InfoAddFieldULongLong(ic, "ordered", m.ordered);
	RM_InfoAddFieldULongLong(ic, "applied_before_command", m.st.before_command);
	RM_InfoAddFieldULongLong(ic, "applied_by_tick", m.st.by_tick);
}

/* ------------------------------------------------------------------ lifecycle */

/* An erb-agent draining the ring names its connection erb-agent: two consumers must never run. */
static int agent_draining(RedisModuleCtx *ctx)
{
	RedisModuleCallReply *r = RM_Call(ctx, "CLIENT", "c", "LIST");
	const char *s, *p;
	size_t len;
	int found = 0;

	if (!r)
		return -1;
	s = RM_CallReplyStringPtr(r, &len);
	for (p = s; p && (p = memmem(p, len - (size_t)(p - s), "name=erb-agent ", 15)); p += 15)
		found = 1;
	RM_FreeCallReply(r);
	return found;
}

/* Is erb_redis Redis's only module (its own load not finished yet: not listed)? */
static bool only_module(RedisModuleCtx *ctx)
{
	RedisModuleCallReply *r = RM_Call(ctx, "INFO", "c", "modules");
	const char *s, *p, *nl, *end;
	static const char tag[] = "module:name=", self[] = MODULE_NAME ",";
	size_t len;
	bool only = true;

	if (!r)
		return false;
	s = RM_CallReplyStringPtr(r, &len);
	for (p = s, end = s ? s + len : s; p && p < end; p = nl ? nl + 1 : end) {
		nl = memchr(p, '\n', (size_t)(end - p));
		if ((size_t)(end - p) >= sizeof(tag) - 1 && !memcmp(p, tag, sizeof(tag) - 1) &&
		    !((size_t)(end - p) >= sizeof(tag) + sizeof(self) - 2 &&
		      !memcmp(p + sizeof(tag) - 1, self, sizeof(self) - 1)))
			only = false;
	}
	if (!s)
		only = false;
	RM_FreeCallReply(r);
	return only;
}

static int fail(RedisModuleCtx *ctx, const char *msg)
{
	RM_Log(ctx, "warning", "%s", msg);
	close_maps();
	memset(&m.st, 0, sizeof(m.st));
	return RM_ERR;
}

__attribute__((visibility("default")))
int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc)
{
	char err[640];
	const char *dir;
	size_t len;
	int busy;

	rm_get_api = (int (*)(const char *, void *))(unsigned long)((void **)ctx)[0];
	for (size_t i = 0; i < sizeof(api_fns) / sizeof(api_fns[0]); i++)
		if (rm_get_api(api_fns[i].name, api_fns[i].fp) != RM_OK)
			return RM_ERR;	/* a Redis without it (before 7.0): nothing to log with */
	/* loaded already: dlopen() gave this same copy, whose state is in use */
	if (RM_IsModuleNameBusy(MODULE_NAME) || m.draining)
		return RM_ERR;
	RM_SetModuleAttribs(ctx, MODULE_NAME, 1, RM_APIVER);
	if (argc != 1)
		return fail(ctx, "erb_redis: one argument: the pin directory of ERB's maps "
			    "(/sys/fs/bpf/erb/<netns>/<ifname>)");
	dir = RM_StringPtrLen(argv[0], &len);
	if (len == 0 || len >= sizeof(m.pin_dir))
		return fail(ctx, "erb_redis: the pin directory is empty or too long");
	memcpy(m.pin_dir, dir, len);
	m.pin_dir[len] = 0;
	if (open_maps(err, sizeof(err)))
		return fail(ctx, err);
	busy = agent_draining(ctx);
	if (busy)
		return fail(ctx, busy < 0 ? "erb_redis: CLIENT LIST failed" :
			    "erb_redis: an erb-agent drains the ring (a client named erb-agent): stop it "
			    "first, then start it again to assist");
	if (__atomic_load_n(&m.global->ctl, __ATOMIC_ACQUIRE) & ERB_CTL_KMOD)
		return fail(ctx, "erb_redis: erb_io (the kernel module) is this host's I/O path");
	if (recover(err, sizeof(err)))
		return fail(ctx, err);
	m.dctx = RM_GetDetachedThreadSafeContext(ctx);
	if (RM_SubscribeToKeyspaceEvents(ctx, (int)RM_NOTIFY_KEYS, on_keyspace) != RM_OK ||
	    RM_SubscribeToServerEvent(ctx, (RedisModuleEvent){ RM_EVENT_FLUSHDB, 1 }, on_server_event) ||
	    RM_SubscribeToServerEvent(ctx, (RedisModuleEvent){ RM_EVENT_SWAPDB, 1 }, on_server_event) ||
	    RM_SubscribeToServerEvent(ctx, (RedisModuleEvent){ RM_EVENT_LOADING, 1 }, on_server_event) ||
	    RM_SubscribeToServerEvent(ctx, (RedisModuleEvent){ RM_EVENT_MODULE_CHANGE, 1 }, on_server_event) ||
	    RM_SubscribeToKeyspaceEvents(ctx, RM_NOTIFY_LOADED, on_event_key) != RM_OK ||
	    RM_RegisterInfoFunc(ctx, on_info) != RM_OK ||
	    RM_EventLoopAdd(m.ring.fd, RM_EVENTLOOP_READABLE, on_ring, NULL) != RM_OK) {
		RM_FreeThreadSafeContext(m.dctx);
		return fail(ctx, "erb_redis: cannot subscribe to Redis's events");
	}
	m.tick_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (m.tick_fd < 0 || RM_EventLoopAdd(m.tick_fd, RM_EVENTLOOP_READABLE, on_tick, NULL) != RM_OK) {
		RM_EventLoopDel(m.ring.fd, RM_EVENTLOOP_READABLE);
		if (m.tick_fd >= 0)
			close(m.tick_fd);
		m.tick_fd = -1;
		RM_FreeThreadSafeContext(m.dctx);
		return fail(ctx, "erb_redis: cannot start its tick (timerfd)");
	}
	m.tick_ns = 0;
	tick_set(TICK_IDLE_NS);
	m.event_key = RM_CreateString(m.dctx, "erb", 3);
	/* nobody tracked the keys before now: what the cache holds is unknown */
	cache_flush(ctx, "module loaded");
	__atomic_store_n(&m.global->rmod_pid, (uint32_t)getpid(), __ATOMIC_RELEASE);
	m.draining = true;
	/* last: nothing may fail after it (a module that failed to load keeps its filters) */
	if (!RM_RegisterCommandFilter(ctx, on_command, RM_CMDFILTER_NOSELF))
		RM_Log(ctx, "warning", "erb_redis: cannot register its command filter: ordered mode off");
	else if (!only_module(ctx))
		RM_Log(ctx, "notice", "erb_redis: other modules are loaded: ordered mode off");
	else
		m.ordered = true;
	lease_renew();
	on_ring(m.ring.fd, NULL, RM_EVENTLOOP_READABLE);
	RM_Log(ctx, "notice", "erb_redis: the I/O path of %s; applied_seq %llu, write_seq %llu; cache of "
	       "%u entries; ordered mode %s", m.pin_dir, (unsigned long long)applied_seq(),
	       (unsigned long long)m.global->write_seq, m.entries, m.ordered ? "on" : "off");
	return RM_OK;
}

__attribute__((visibility("default")))
int RedisModule_OnUnload(RedisModuleCtx *ctx)
{
	ordered_stop(ctx, "unloaded");
	m.draining = false;
	if (m.tick_fd >= 0) {
		RM_EventLoopDel(m.tick_fd, RM_EVENTLOOP_READABLE);
		close(m.tick_fd);
		m.tick_fd = -1;
	}
	if (m.event_key)
		RM_FreeString(m.dctx, m.event_key);
	m.event_key = NULL;
	RM_EventLoopDel(m.ring.fd, RM_EVENTLOOP_READABLE);
	/* what the ring still holds is erb-agent's to apply after its restart */
	__atomic_store_n(&m.global->rmod_pid, 0, __ATOMIC_RELEASE);
	RM_Log(ctx, "notice", "erb_redis: unloaded at applied_seq %llu; erb-agent takes the ring",
	       (unsigned long long)applied_seq());
	if (m.dctx)
		RM_FreeThreadSafeContext(m.dctx);
	close_maps();
	return RM_OK;
}
