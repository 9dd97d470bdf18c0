// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * erb-agent: the user-space I/O path of ERB (eBPF Redis Booster).
 *
 * It drains the BPF ring buffer `erb_events` (struct erb_record, see
 * files/bpf/erb_record.h) in batches, applies every record to Redis in ring
 * order over one pipelined connection (SET key value, SELECT db only when the
 * db changes), checks every reply, and publishes `erb_global.applied_seq`.
 * It also keeps Redis's client-side-caching broadcast tracking (RESP2, two
 * connection mode: the apply connection runs
 * CLIENT TRACKING ON REDIRECT <id> BCAST NOLOOP, a second connection is
 * SUBSCRIBEd to __redis__:invalidate) and deletes the `erb_cache` entries of
 * keys changed by any other path, after verifying them against Redis.
 *
 * Maps: <pin-dir>/map_erb_events, map_erb_global, map_erb_cache and meta
 * (JSON; "cache_entries", "hash_prime", "max_probes" are read from it).
 *
 * GUARANTEES (ring buffer path)
 * 1. Nothing acknowledged is lost.  The ring's consumer position lives in the
 *    map (consumer page) and is advanced only past records whose SET Redis
 *    has answered (+OK, or a non-retryable error, which is logged and counted
 *    as "errors").  A killed agent (SIGKILL included) leaves every record not
 *    yet acknowledged in the ring; the next agent starts at the consumer
 *    position.  A lost Redis connection is re-opened with backoff and every
 *    record not yet acknowledged is sent again.
 * 2. Order.  Records are sent in ring order, one connection, pipelined; after
 *    a lost connection, an agent restart, or a retryable error reply (LOADING,
 *    BUSY, OOM, READONLY, MISCONF, ...), sending resumes at the first record
 *    not acknowledged and continues in ring order.  So Redis may execute a
 *    suffix of records a second time, in the same order, never an older
 *    record after a newer one once the replay has passed it.  applied_seq had
 *    not covered those records, so the BPF hold rule kept every Redis-path
 *    write to their keys out in the meantime: the replay restores the same
 *    state.
 * 3. applied_seq = S is published (atomic 64-bit store into the mmapped
 *    erb_global) only when every record with seq <= S has been acknowledged,
 *    and only after the consumer position moved past them.  At start the agent
 *    rebuilds this from the ring: every seq <= write_seq that is not in the
 *    ring between the consumer and producer positions was acknowledged before.
 *    This needs the BPF side to take a seq only after bpf_ringbuf_reserve()
 *    succeeded (dense seqs, every handed-out seq is in the ring); the agent
 *    also waits 20 ms between reading write_seq and the producer position.
 * 4. Cache entries are deleted only when Redis has the entry's write
 *    (wseq <= applied_seq) and Redis's value differs (or the key is missing or
 *    not a string).  A flush (FLUSHALL/FLUSHDB notification, a lost Redis
 *    connection (Redis may be restarting: what it holds when it answers again
 *    is unknown), or tracking (re)established: changes made while untracked
 *    are unknown) bumps cache_gen when nothing is pending (write_seq ==
 *    applied_seq), else sweeps the cache deleting every entry whose write
 *    Redis has.  A new Redis run_id after a reconnect is logged and counted.
 * 5. Fills in flight.  Every invalidated key, cached or not, bumps the write
 *    epoch of its bucket (erb_wepoch, when the map is mmapable): a
 *    write-through fill captured before Redis's change is then not stored.
 * 6. Keys with a TTL.  Cache entries of hashes (HGETALL fills) and GET fills
 *    are checked with PTTL as the agent finds them; an entry whose key has a
 *    TTL or is gone is deleted (Redis expires it lazily, and XDP hits never
 *    reach Redis), one without TTL is kept; a fill stored as "not verified
 *    yet" (entry type 2 or 3, never served) is marked verified (type 1, a
 *    hash, or 0, a string). SET write-through fills need no check (a plain
 *    SET drops any TTL).
 * Not guaranteed: while no agent runs, keys changed outside XDP's sight
 * (expiry, Lua, other interfaces) are not invalidated; the agent flushes on
 * start.  Persistence is Redis's appendfsync policy plus the apply delay.
 *
 * Exit codes: 0 stopped by SIGTERM/SIGINT, 1 runtime failure, 2 usage or
 * configuration error (pin dir, maps, meta), 3 another agent holds the pin dir.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <poll.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <hiredis/hiredis.h>

#include "erb.h"
#include "erb_record.h"
#include "erb_cache_user.h"

#define EXIT_RUNTIME		1
#define EXIT_CONFIG		2
#define EXIT_LOCKED		3

#define META_SIZE		4096
#define TRACK_WINDOW		(1ULL << 22)	/* seqs tracked above applied_seq */
#define INVAL_ROUND		512		/* keys verified per round */
#define INVAL_MAX_TRIES		1000		/* busy entry: re-verify this often */
#define BACKOFF_MIN_MS		50
#define BACKOFF_MAX_MS		2000
#define CONNECT_TIMEOUT_MS	1000
#define COMMAND_TIMEOUT_MS	10000
#define START_SETTLE_MS		20
#define INVALIDATE_CHANNEL	"__redis__:invalidate"
#define SECRET_MAX		512
#define HASH_SCAN_CHUNK		2048		/* cache slots looked at per round */
#define HASH_SCAN_FAST_MS	10		/* rounds this far apart while fills happen */
#define FILL_RETRY_MAX		64		/* fills checked again next round; more: a walk */
/* erb_entry.type of an HGETALL fill not verified yet: never served by XDP */
#define TYPE_HASH_UNVERIFIED	2
/* erb_entry.type of a GET fill not verified yet: never served by XDP */
#define TYPE_STRING_UNVERIFIED	3

/* ------------------------------------------------------------------ logging */

enum { LOG_ERR_, LOG_WARN_, LOG_INFO_, LOG_DEBUG_ };
static const char *const level_names[] = { "error", "warning", "info", "debug" };

static FILE *log_fp;
static const char *log_path;
static int log_level = LOG_INFO_;

static void logmsg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logmsg(int level, const char *fmt, ...)
{
	struct timespec ts;
	struct tm tm;
	char when[32];
	va_list ap;
	FILE *fp = log_fp ? log_fp : stderr;

	if (level > log_level)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
	fprintf(fp, "%s.%03ldZ erb-agent[%d] %s: ", when, ts.tv_nsec / 1000000, getpid(),
		level_names[level]);
	va_start(ap, fmt);
	vfprintf(fp, fmt, ap);
	va_end(ap);
	fputc('\n', fp);
	fflush(fp);
}

#define log_err(...)	logmsg(LOG_ERR_, __VA_ARGS__)
#define log_warn(...)	logmsg(LOG_WARN_, __VA_ARGS__)
#define log_info(...)	logmsg(LOG_INFO_, __VA_ARGS__)
#define log_debug(...)	logmsg(LOG_DEBUG_, __VA_ARGS__)

static int log_open(void)
{
	FILE *fp;

	if (!log_path)
		return 0;
	fp = fopen(log_path, "ae");
	if (!fp) {
		fprintf(stderr, "erb-agent: cannot open log file %s: %s\n", log_path, strerror(errno));
		return -1;
	}
	setvbuf(fp, NULL, _IOLBF, 0);
	if (log_fp)
		fclose(log_fp);
	log_fp = fp;
	return 0;
}

/* ------------------------------------------------------------------ options */

struct options {
	const char *pin_dir;
	const char *redis_sock;
	const char *redis_host;
	int redis_port;
	const char *redis_user;
	const char *redis_password_file;
	char *redis_password;		/* only while checking the file at start */
	unsigned int batch;
	const char *stats_file;
	const char *pidfile;
	bool daemon;
	int replay;			/* REPLAY_AUTO, REPLAY_LIVE, REPLAY_COPY */
};

/* How parked segments are replayed through erb_xdp (--replay). */
enum { REPLAY_AUTO, REPLAY_LIVE, REPLAY_COPY };

static void usage(FILE *fp)
{
	fprintf(fp,
		"usage: erb-agent --pin-dir DIR [--redis-sock PATH | --redis-host HOST --redis-port PORT]\n"
		"                 [--redis-user USER] [--redis-password-file FILE] [--batch N]\n"
		"                 [--stats-file PATH] [--pidfile PATH] [--foreground | --daemon]\n"
		"                 [--log-file PATH] [--verbose] [--replay auto|live|copy]\n"
		"Applies ERB write records from <DIR>/map_erb_events to Redis in order, publishes\n"
		"erb_global.applied_seq, and deletes cache entries of keys Redis reports changed.\n");
}

static int parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

/* The password in path (trailing CR/LF removed); read again at every connect. */
static char *read_secret(const char *path)
{
	char buf[SECRET_MAX];
	FILE *fp = fopen(path, "re");
	size_t n;
	char *s;

	if (!fp) {
		logmsg(LOG_ERR_, "cannot read --redis-password-file %s: %s", path, strerror(errno));
		return NULL;
	}
	n = fread(buf, 1, sizeof(buf) - 1, fp);
	fclose(fp);
	buf[n] = 0;
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = 0;
	s = strdup(buf);
	explicit_bzero(buf, sizeof(buf));
	return s;
}

static void free_secret(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

static int parse_options(int argc, char **argv, struct options *o)
{
	enum { O_PIN = 256, O_SOCK, O_HOST, O_PORT, O_USER, O_PWFILE, O_BATCH, O_STATS, O_PID,
	       O_FG, O_DAEMON, O_LOG, O_VERBOSE, O_REPLAY, O_HELP };
	static const struct option longopts[] = {
		{ "pin-dir", required_argument, NULL, O_PIN },
		{ "redis-sock", required_argument, NULL, O_SOCK },
		{ "redis-host", required_argument, NULL, O_HOST },
		{ "redis-port", required_argument, NULL, O_PORT },
		{ "redis-user", required_argument, NULL, O_USER },
		{ "redis-password-file", required_argument, NULL, O_PWFILE },
		{ "batch", required_argument, NULL, O_BATCH },
		{ "stats-file", required_argument, NULL, O_STATS },
		{ "pidfile", required_argument, NULL, O_PID },
		{ "foreground", no_argument, NULL, O_FG },
		{ "daemon", no_argument, NULL, O_DAEMON },
		{ "log-file", required_argument, NULL, O_LOG },
		{ "verbose", no_argument, NULL, O_VERBOSE },
		{ "replay", required_argument, NULL, O_REPLAY },
		{ "help", no_argument, NULL, O_HELP },
		{ NULL, 0, NULL, 0 },
	};
	unsigned long v;
	int c;

	memset(o, 0, sizeof(*o));
	o->redis_host = "127.0.0.1";
	o->redis_port = 6379;
	o->batch = 256;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case O_PIN: o->pin_dir = optarg; break;
		case O_SOCK: o->redis_sock = optarg; break;
		case O_HOST: o->redis_host = optarg; break;
		case O_PORT:
			if (parse_uint(optarg, 1, 65535, &v)) {
				fprintf(stderr, "erb-agent: --redis-port must be 1..65535\n");
				return -1;
			}
			o->redis_port = (int)v;
			break;
		case O_USER: o->redis_user = optarg; break;
		case O_PWFILE: o->redis_password_file = optarg; break;
		case O_BATCH:
			if (parse_uint(optarg, 1, 65536, &v)) {
				fprintf(stderr, "erb-agent: --batch must be 1..65536\n");
				return -1;
			}
			o->batch = (unsigned int)v;
			break;
		case O_STATS: o->stats_file = optarg; break;
		case O_PID: o->pidfile = optarg; break;
		case O_FG: o->daemon = false; break;
		case O_DAEMON: o->daemon = true; break;
		case O_LOG: log_path = optarg; break;
		case O_VERBOSE: log_level = LOG_DEBUG_; break;
		case O_REPLAY:
			if (!strcmp(optarg, "auto")) {
				o->replay = REPLAY_AUTO;
			} else if (!strcmp(optarg, "live")) {
				o->replay = REPLAY_LIVE;
			} else if (!strcmp(optarg, "copy")) {
				o->replay = REPLAY_COPY;
			} else {
				fprintf(stderr, "erb-agent: --replay must be auto, live or copy\n");
				return -1;
			}
			break;
		case O_HELP: usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "erb-agent: unexpected argument %s\n", argv[optind]);
		return -1;
	}
	if (!o->pin_dir) {
		fprintf(stderr, "erb-agent: --pin-dir is required\n");
		usage(stderr);
		return -1;
	}
	if (o->daemon && !log_path) {
		fprintf(stderr, "erb-agent: --daemon needs --log-file (stderr is closed)\n");
		return -1;
	}
	if (o->redis_password_file) {
		/* readable now, or fail at start; read again at every connect */
		o->redis_password = read_secret(o->redis_password_file);
		if (!o->redis_password)
			return -1;
		free_secret(o->redis_password);
		o->redis_password = NULL;
	}
	return 0;
}

/* --------------------------------------------------------------- time/misc */

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t reopen_log;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Sleep ms milliseconds, waking early on a stop request. */
static void sleep_ms(unsigned int ms)
{
	while (ms && !stop_requested) {
		unsigned int step = ms > 50 ? 50 : ms;
		struct timespec ts = { .tv_sec = 0, .tv_nsec = (long)step * 1000000L };

		nanosleep(&ts, NULL);
		ms -= step;
	}
}

static unsigned int backoff_next(unsigned int ms)
{
	if (!ms)
		return BACKOFF_MIN_MS;
	return ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : ms * 2;
}

/* ---------------------------------------------------------------- histogram */

/* Log-linear histogram of microseconds: 16 sub-buckets per power of two. */
#define HIST_SUB_BITS	4
#define HIST_BUCKETS	(64 << HIST_SUB_BITS)

struct histogram {
	uint64_t count[HIST_BUCKETS];
	uint64_t total;
	uint64_t max;
};

static unsigned int hist_index(uint64_t v)
{
	unsigned int msb;

	if (v < (1U << HIST_SUB_BITS))
		return (unsigned int)v;
	msb = 63 - (unsigned int)__builtin_clzll(v);
	return ((msb - HIST_SUB_BITS + 1) << HIST_SUB_BITS) |
	       (unsigned int)((v >> (msb - HIST_SUB_BITS)) & ((1U << HIST_SUB_BITS) - 1));
}

/* Largest value that falls into bucket i (what a percentile reports). */
static uint64_t hist_upper(unsigned int i)
{
	unsigned int shift;

	if (i < (1U << HIST_SUB_BITS))
		return i;
	shift = (i >> HIST_SUB_BITS) - 1;
	return ((uint64_t)((1U << HIST_SUB_BITS) | (i & ((1U << HIST_SUB_BITS) - 1))) << shift) +
	       ((1ULL << shift) - 1);
}

static void hist_add(struct histogram *h, uint64_t v)
{
	h->count[hist_index(v)]++;
	h->total++;
	if (v > h->max)
		h->max = v;
}

static uint64_t hist_percentile(const struct histogram *h, double p)
{
	uint64_t want, seen = 0;

	if (!h->total)
		return 0;
	want = (uint64_t)(p * (double)h->total + 0.999999);
	if (!want)
		want = 1;
	for (unsigned int i = 0; i < HIST_BUCKETS; i++) {
		seen += h->count[i];
		if (seen >= want)
			return hist_upper(i) < h->max ? hist_upper(i) : h->max;
	}
	return h->max;
}

/* -------------------------------------------------------------------- state */

struct stats {
	uint64_t applied;		/* records acknowledged by Redis */
	uint64_t batches;
	uint64_t errors;		/* error replies + bad records */
	uint64_t bad_records;
	uint64_t retries;		/* retryable error replies (LOADING, BUSY, ...) */
	uint64_t reconnects;
	uint64_t inval_received;	/* keys in invalidation messages */
	uint64_t inval_applied;		/* cache entries deleted */
	uint64_t inval_kept;		/* entries kept: equal to Redis, or not applied yet */
	uint64_t inval_not_cached;	/* keys with no live cache entry */
	uint64_t flushes;		/* cache emptied (cache_gen bump or sweep) */
	uint64_t redis_restarts;	/* reconnected to a new Redis run_id */
	uint64_t epoch_bumps;		/* write epochs bumped (fills in flight cancelled) */
	uint64_t hash_verified;		/* hash entries checked: no TTL, kept */
	uint64_t hash_deleted;		/* hash entries deleted: TTL, or key gone */
	uint64_t get_verified;		/* GET fills checked: no TTL, made servable */
	uint64_t get_deleted;		/* GET fills deleted: TTL, or key gone */
	uint64_t fill_walks;		/* cache walks for fills: at start, the fill queue outrun */
	uint64_t slots_walked;		/* cache slots those walks looked at */
	uint64_t parked;		/* held segments read from erb_parked */
	uint64_t replayed;		/* ... replayed through erb_xdp */
	uint64_t replay_expired;	/* ... older than PARK_MAX_AGE_NS: left to the client's retransmission */
	uint64_t replay_copies;		/* ... of them run on a copy and sent by the packet socket */
	uint64_t replay_dropped;	/* ... not replayed: queue full, bad record, bad checksum, run failed */
	struct histogram delay_us;
};

struct ring {
	int fd;
	size_t page;
	uint64_t size;			/* data bytes, power of two */
	unsigned long *consumer_pos;	/* rw page */
	unsigned long *producer_pos;	/* ro page */
	uint8_t *data;			/* ro, mapped twice for wrap-around */
	void *prod_map;
	size_t prod_map_len;
};

struct tracker {
	uint64_t base;			/* every seq <= base acknowledged */
	uint64_t *bits;			/* acknowledged seqs above base (circular) */
	uint64_t mask;			/* TRACK_WINDOW - 1 */
};

struct slot {
	const struct erb_record *rec;	/* NULL: discarded ring sample */
	uint64_t seq;
	unsigned long end_pos;		/* consumer position after this sample */
	bool bad;			/* malformed: not sent, counted */
};

struct batch {
	struct slot *slots;
	unsigned int n, cap;
	unsigned int done;		/* slots acknowledged and committed */
	uint64_t read_ns;
};

enum exp_kind { EXP_SELECT, EXP_SET };

struct expect {
	enum exp_kind kind;
	unsigned int slot;
};

struct inval_key {
	char *key;
	size_t len;
	unsigned int tries;
};

struct inval_queue {
	struct inval_key *v;
	size_t n, cap;
};

/* Held segments to replay (erb_parked): a FIFO of copies. */
#define PARK_QUEUE		256
#define PARK_MAX_AGE_NS		(3ULL * 1000000000ULL)	/* the client has retransmitted long before */

struct park {
	struct ring ring;		/* ring.fd -1: no erb_parked (an older object) */
	struct erb_park *q;		/* PARK_QUEUE entries */
	unsigned int head, n;
	int kmod_fd;			/* erb_io's applied_seq (sysfs), -1 when not read */
	bool warned;
	__u32 seen_prog, seen_ifindex;	/* erb_xdp found attached here, in our namespace */
	bool seen_generic;		/* ... in generic (skb) mode */
	bool copy;			/* replay on a copy: live frames refused, or --replay copy */
	int pkt_fd;			/* packet socket of the copy replays, -1 until needed */
};

struct agent {
	struct options opt;
	int dir_fd;
	int epfd;
	/* maps */
	struct ring ring;
	int global_fd, cache_fd;
	struct erb_global *global;
	size_t global_len;
	struct erb_entry *cache;
	size_t cache_len;
	uint32_t cache_entries, hash_prime, max_probes;
	uint32_t *wepoch;		/* erb_wepoch mmapped; NULL: not mmapable */
	size_t wepoch_len;
	const uint8_t *tags;		/* erb_tags mmapped (a byte per slot); NULL: read the entries */
	size_t tags_len;
	/* hash entries: per slot, the ver verified to have no TTL (0 none) */
	uint32_t *hash_ok;
	uint32_t scan_pos;
	uint64_t last_scan_ns;
	bool fills_moved;		/* entries left to check by a walk since the pass began */
	uint32_t fillq_seen;		/* erb_global.fillq_head at the last look */
	uint64_t fillq_active_until_ns;	/* look at the fill queue often until then */
	uint32_t fill_retry[FILL_RETRY_MAX];	/* slots to check again (busy, changing) */
	unsigned int nretry;
	/* progress */
	struct tracker trk;
	struct batch batch;
	struct expect *exp;
	/* Redis */
	redisContext *apply, *sub;
	bool connected_once;
	bool up;			/* a session is established */
	bool reconnect;			/* NOAUTH: AUTH again on a new session */
	char run_id[48];
	bool kmod;			/* erb_io owned applied_seq at start */
	int cur_db;			/* -1 unknown */
	unsigned int databases;
	struct inval_queue inval;
	bool flush_pending;
	bool rmod;			/* erb_redis applies the ring: assist only */
	bool path_changed;		/* erb_redis came or went: exit for a restart */
	struct park park;
	/* reporting */
	struct stats st;
	uint64_t started_ns, last_stats_ns, last_pin_check_ns;
	unsigned int connect_failures;
	uint32_t global_id;		/* erb_global's map id: are the pins still these maps? */
};

/* -------------------------------------------------------------- atomics/maps */

static uint64_t load_applied(struct agent *a)
{
	return __atomic_load_n(&a->global->applied_seq, __ATOMIC_ACQUIRE);
}

static uint64_t load_write_seq(struct agent *a)
{
	return __atomic_load_n(&a->global->write_seq, __ATOMIC_ACQUIRE);
}

static bool kmod_io_path(struct agent *a)
{
	return __atomic_load_n(&a->global->ctl, __ATOMIC_ACQUIRE) & ERB_CTL_KMOD;
}

/*
 * With erb_redis (files/rmod) loaded, redis-server applies the ring and
 * invalidates: this agent only assists (parked segments, fill checks). A pid
 * that is gone is a Redis that stopped without unloading it.
 */
static bool rmod_io_path(struct agent *a)
{
	uint32_t pid = __atomic_load_n(&a->global->rmod_pid, __ATOMIC_ACQUIRE);

	return pid && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

/*
 * With erb_io as the I/O path (ERB_CTL_KMOD) the module's applied_seq is
 * mirrored by the BPF side: this agent only invalidates and never publishes.
 */
static void publish_applied(struct agent *a, uint64_t seq)
{
	if (kmod_io_path(a) || a->rmod)
		return;
	if (seq > load_applied(a))
		__atomic_store_n(&a->global->applied_seq, seq, __ATOMIC_RELEASE);
}

static int open_pin(struct agent *a, const char *name, int *fd)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/%s", a->opt.pin_dir, name);
	*fd = bpf_obj_get(path);
	if (*fd >= 0)
		return 0;
	log_err("cannot open pinned map %s: %s (is ERB loaded with the SET fast path on this "
		"interface? see erb.booster.bpf)", path, strerror(errno));
	return -1;
}

static int map_info(int fd, const char *name, struct bpf_map_info *info)
{
	__u32 len = sizeof(*info);

	memset(info, 0, sizeof(*info));
	if (bpf_obj_get_info_by_fd(fd, info, &len)) {
		log_err("%s: cannot read map info: %s", name, strerror(errno));
		return -1;
	}
	return 0;
}

static void *map_mmap(int fd, size_t len, int prot, off_t off, const char *name)
{
	void *p = mmap(NULL, len, prot, MAP_SHARED, fd, off);

	if (p == MAP_FAILED) {
		log_err("%s: mmap of %zu bytes failed: %s (map needs BPF_F_MMAPABLE)", name, len,
			strerror(errno));
		return NULL;
	}
	return p;
}

static size_t page_round(size_t n, size_t page)
{
	return (n + page - 1) / page * page;
}

/* Map a BPF ring buffer (r->fd open) for consuming: the consumer page rw, the data twice ro. */
static int ring_map(struct ring *r, const char *name)
{
	struct bpf_map_info info;

	if (map_info(r->fd, name, &info))
		return -1;
	if (info.type != BPF_MAP_TYPE_RINGBUF) {
		log_err("map_%s is map type %u, not a ring buffer (%u)", name, info.type,
			BPF_MAP_TYPE_RINGBUF);
		return -1;
	}
	r->page = (size_t)sysconf(_SC_PAGESIZE);
	r->size = info.max_entries;
	r->consumer_pos = map_mmap(r->fd, r->page, PROT_READ | PROT_WRITE, 0, name);
	if (!r->consumer_pos)
		return -1;
	r->prod_map_len = r->page + 2 * r->size;
	r->prod_map = map_mmap(r->fd, r->prod_map_len, PROT_READ, (off_t)r->page, name);
	if (!r->prod_map)
		return -1;
	r->producer_pos = r->prod_map;
	r->data = (uint8_t *)r->prod_map + r->page;
	return 0;
}

static int open_ring(struct agent *a)
{
	if (open_pin(a, "map_erb_events", &a->ring.fd))
		return -1;
	return ring_map(&a->ring, "erb_events");
}

static int open_global(struct agent *a)
{
	struct bpf_map_info info;
	size_t page = (size_t)sysconf(_SC_PAGESIZE);

	if (open_pin(a, "map_erb_global", &a->global_fd) || map_info(a->global_fd, "erb_global", &info))
		return -1;
	if (info.value_size != sizeof(struct erb_global) || info.max_entries < 1 ||
	    !(info.map_flags & BPF_F_MMAPABLE)) {
		log_err("map_erb_global: value %u bytes (want %zu), %u entries, flags 0x%x (want "
			"BPF_F_MMAPABLE): layout mismatch with this agent (ERB_LAYOUT_VERSION %d)",
			info.value_size, sizeof(struct erb_global), info.max_entries, info.map_flags,
			ERB_LAYOUT_VERSION);
		return -1;
	}
	a->global_id = info.id;
	a->global_len = page_round(sizeof(struct erb_global), page);
	a->global = map_mmap(a->global_fd, a->global_len, PROT_READ | PROT_WRITE, 0, "erb_global");
	return a->global ? 0 : -1;
}

static int open_cache(struct agent *a)
{
	struct bpf_map_info info;
	size_t page = (size_t)sysconf(_SC_PAGESIZE);

	if (open_pin(a, "map_erb_cache", &a->cache_fd) || map_info(a->cache_fd, "erb_cache", &info))
		return -1;
	if (info.value_size != sizeof(struct erb_entry) || !(info.map_flags & BPF_F_MMAPABLE)) {
		log_err("map_erb_cache: value %u bytes (want %zu), flags 0x%x (want BPF_F_MMAPABLE): "
			"layout mismatch with this agent (ERB_LAYOUT_VERSION %d)", info.value_size,
			sizeof(struct erb_entry), info.map_flags, ERB_LAYOUT_VERSION);
		return -1;
	}
	if (a->cache_entries != info.max_entries) {
		log_err("meta says cache_entries=%u but map_erb_cache has %u entries: refusing to "
			"probe with the wrong modulus", a->cache_entries, info.max_entries);
		return -1;
	}
	a->cache_len = page_round((size_t)info.max_entries * sizeof(struct erb_entry), page);
	a->cache = map_mmap(a->cache_fd, a->cache_len, PROT_READ | PROT_WRITE, 0, "erb_cache");
	return a->cache ? 0 : -1;
}

/* --------------------------------------------------------------------- meta */

/*
 * Unsigned number of "key": in the JSON text, looked up after the first
 * "config" key (the loader writes sorted keys: the top-level config comes
 * before "previous"); -1 when absent.
 */
static long long json_uint(const char *json, const char *key)
{
	const char *cfg = strstr(json, "\"config\"");
	char pat[64];
	const char *p;
	char *end;
	unsigned long long v;

	snprintf(pat, sizeof(pat), "\"%s\"", key);
	p = strstr(cfg ? cfg : json, pat);
	if (!p)
		return -1;
	p += strlen(pat);
	while (*p == ' ' || *p == '\t' || *p == '\n')
		p++;
	if (*p++ != ':')
		return -1;
	while (*p == ' ' || *p == '\t' || *p == '\n')
		p++;
	errno = 0;
	v = strtoull(p, &end, 10);
	if (errno || end == p || v > UINT32_MAX)
		return -1;
	return (long long)v;
}

static int read_meta(struct agent *a)
{
	char json[META_SIZE + 1];
	__u32 key = 0;
	long long v;
	int fd;

	if (open_pin(a, "meta", &fd))
		return -1;
	memset(json, 0, sizeof(json));
	if (bpf_map_lookup_elem(fd, &key, json)) {
		log_err("%s/meta: lookup failed: %s", a->opt.pin_dir, strerror(errno));
		close(fd);
		return -1;
	}
	close(fd);
	v = json_uint(json, "cache_entries");
	if (v < 2) {
		log_err("%s/meta: no valid \"cache_entries\" in the config JSON", a->opt.pin_dir);
		return -1;
	}
	a->cache_entries = (uint32_t)v;
	v = json_uint(json, "hash_prime");
	a->hash_prime = v >= 1 ? (uint32_t)v : erb_hash_prime(a->cache_entries);
	v = json_uint(json, "max_probes");
	a->max_probes = v >= 1 && v <= ERB_MAX_PROBES ? (uint32_t)v : ERB_MAX_PROBES;
	log_info("cache: %u entries, hash prime %u, %u probes", a->cache_entries, a->hash_prime,
		 a->max_probes);
	return 0;
}

/* An optional pinned map: -1 (quietly) when the pin does not exist. */
static int open_pin_optional(struct agent *a, const char *name)
{
	char path[PATH_MAX];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", a->opt.pin_dir, name);
	fd = bpf_obj_get(path);
	if (fd < 0 && errno != ENOENT) {
		int err = errno;

		log_warn("cannot open pinned map %s: %s", path, strerror(err));
		errno = err;	/* the caller's to tell */
	}
	return fd;
}

/*
 * erb_wepoch: the per-bucket write epochs a write-through fill compares.
 * Bumped atomically through an mmap (XDP bumps them with atomic adds too);
 * a lookup+update from user space could undo a concurrent XDP bump.
 */
static void open_wepoch(struct agent *a)
{
	struct bpf_map_info info;
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	int fd = open_pin_optional(a, "map_erb_wepoch");

	if (fd < 0 || map_info(fd, "erb_wepoch", &info)) {
		log_warn("no map_erb_wepoch: invalidations cannot cancel fills in flight");
		goto out;
	}
	if (info.type != BPF_MAP_TYPE_ARRAY || info.value_size != sizeof(uint32_t) ||
	    info.max_entries != ERB_INFLIGHT_BUCKETS) {
		log_warn("map_erb_wepoch: type %u, value %u bytes, %u entries: not the write epochs this agent "
			 "knows; invalidations cannot cancel fills in flight", info.type, info.value_size,
			 info.max_entries);
		goto out;
	}
	if (!(info.map_flags & BPF_F_MMAPABLE)) {
		log_warn("map_erb_wepoch is not mmapable (BPF_F_MMAPABLE): invalidations of keys not cached "
			 "cannot cancel fills in flight");
		goto out;
	}
	a->wepoch_len = page_round(info.max_entries * sizeof(uint32_t), page);
	a->wepoch = map_mmap(fd, a->wepoch_len, PROT_READ | PROT_WRITE, 0, "erb_wepoch");
out:
	if (fd >= 0)
		close(fd);
}

/*
 * erb_tags: a byte per cache slot (erb_cache.h, "The tags"). cache_has() skips
 * slots whose tag is another key's, and stops at a never-written one, without
 * touching their 1.7 KB entries (a cold one is a cache and TLB miss each, per
 * invalidated key). Without it, the entries are read.
 */
static void open_tags(struct agent *a)
{
	struct bpf_map_info info;
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	int fd = open_pin_optional(a, "map_erb_tags");

	if (fd < 0 || map_info(fd, "erb_tags", &info)) {
		log_info("no map_erb_tags: cache lookups read the entries");
		goto out;
	}
	if (info.type != BPF_MAP_TYPE_ARRAY || info.value_size != 8 ||
	    (uint64_t)info.max_entries * 8 < a->cache_entries || !(info.map_flags & BPF_F_MMAPABLE)) {
		log_warn("map_erb_tags: type %u, value %u bytes, %u entries, flags 0x%x: not the tags of "
			 "%u slots this agent knows; cache lookups read the entries", info.type,
			 info.value_size, info.max_entries, info.map_flags, a->cache_entries);
		goto out;
	}
	a->tags_len = page_round((size_t)info.max_entries * 8, page);
	a->tags = map_mmap(fd, a->tags_len, PROT_READ, 0, "erb_tags");
out:
	if (fd >= 0)
		close(fd);
}

/* Ring buffer samples: length without the busy/discard bits; the position after one. */
static uint32_t sample_len(uint32_t hdr)
{
	return hdr & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT);
}

static unsigned long sample_end(unsigned long pos, uint32_t hdr)
{
	return pos + ((sample_len(hdr) + BPF_RINGBUF_HDR_SZ + 7) & ~7UL);
}

/* ---------------------------------------------------------- parked segments */

/*
 * erb_parked (erb.h, struct erb_park): segments erb_xdp held because their
 * commands touch a key whose acknowledged write was not applied yet. Each is
 * replayed through erb_xdp with BPF_PROG_RUN in live-frames mode (as if it
 * arrived again on its interface and queue) once applied_seq reaches its
 * bound: XDP_PASS hands it to the stack, XDP_TX sends its answer. A replay is
 * what the client's own retransmission would carry, only a retransmission
 * timeout sooner; one lost here costs that retransmission, as before.
 *
 * Checksums: a frame from a local veth may carry CHECKSUM_PARTIAL's
 * pseudo-header sum in the TCP checksum; its copy has no skb to say so. The
 * checksum is completed when (and only when) the field holds exactly that
 * sum; a frame whose checksum is neither complete nor partial is not replayed
 * (the stack drops it as it would have; corruption is never laundered).
 */
static uint64_t csum_add(uint64_t sum, const uint8_t *p, size_t len)
{
	for (; len > 1; p += 2, len -= 2)
		sum += (uint64_t)p[0] << 8 | p[1];
	if (len)
		sum += (uint64_t)p[0] << 8;
	return sum;
}

static uint16_t csum_fold(uint64_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)sum;
}

/* 0: the TCP checksum of frame f is complete (or was completed); -1: do not replay. */
static int park_csum(uint8_t *f, uint32_t len)
{
	uint32_t off = 14, l4, tlen;
	uint16_t proto, check, c;
	uint64_t ph;

	if (len < off)
		return -1;
	proto = (uint16_t)(f[12] << 8 | f[13]);
	for (int i = 0; i < 2 && (proto == 0x8100 || proto == 0x88a8); i++) {
		if (len < off + 4)
			return -1;
		proto = (uint16_t)(f[off + 2] << 8 | f[off + 3]);
		off += 4;
	}
	if (proto == 0x0800) {
		uint32_t ihl, tot;

		if (len < off + 20 || f[off] >> 4 != 4 || f[off + 9] != 6)
			return -1;
		ihl = (f[off] & 15U) * 4;
		tot = (uint32_t)f[off + 2] << 8 | f[off + 3];
		if (ihl < 20 || tot < ihl || len < off + tot || (f[off + 6] & 0x3f) || f[off + 7])
			return -1;	/* a fragment: XDP never holds one as parsed */
		ph = csum_add(0, f + off + 12, 8);
		l4 = off + ihl;
		tlen = tot - ihl;
	} else if (proto == 0x86dd) {
		if (len < off + 40 || f[off] >> 4 != 6 || f[off + 6] != 6)
			return -1;
		tlen = (uint32_t)f[off + 4] << 8 | f[off + 5];
		if (len < off + 40 + tlen)
			return -1;
		ph = csum_add(0, f + off + 8, 32);
		l4 = off + 40;
	} else {
		return -1;
	}
	if (tlen < 20)
		return -1;
	ph += 6 + tlen;
	if (csum_fold(csum_add(ph, f + l4, tlen)) == 0xffff)
		return 0;
	check = (uint16_t)(f[l4 + 16] << 8 | f[l4 + 17]);
	if (check != csum_fold(ph))
		return -1;
	f[l4 + 16] = 0;
	f[l4 + 17] = 0;
	c = (uint16_t)~csum_fold(csum_add(ph, f + l4, tlen));
	f[l4 + 16] = (uint8_t)(c >> 8);
	f[l4 + 17] = (uint8_t)c;
	return 0;
}

static void open_park(struct agent *a)
{
	struct park *pk = &a->park;

	pk->kmod_fd = -1;
	pk->pkt_fd = -1;
	pk->copy = a->opt.replay == REPLAY_COPY;
	pk->ring.fd = open_pin_optional(a, "map_erb_parked");
	if (pk->ring.fd < 0) {
		log_warn("no map_erb_parked: segments held for unapplied writes wait for the client's "
			 "retransmission (an ERB object without parking)");
		return;
	}
	pk->q = calloc(PARK_QUEUE, sizeof(*pk->q));
	if (!pk->q || ring_map(&pk->ring, "erb_parked")) {
		log_warn("erb_parked cannot be read: held segments wait for the client's retransmission");
		close(pk->ring.fd);
		pk->ring.fd = -1;
	}
}

/* applied_seq of the I/O path: erb_io's own (sysfs) when it is the path, else erb_global's. */
static uint64_t park_applied(struct agent *a)
{
	struct park *pk = &a->park;
	char buf[32];
	ssize_t n;

	if (!kmod_io_path(a))
		return load_applied(a);
	if (pk->kmod_fd < 0)
		pk->kmod_fd = open("/sys/module/erb_io/parameters/seq_base", O_RDONLY | O_CLOEXEC);
	if (pk->kmod_fd >= 0) {
		n = pread(pk->kmod_fd, buf, sizeof(buf) - 1, 0);
		if (n > 0) {
			buf[n] = 0;
			return strtoull(buf, NULL, 10);
		}
	}
	return load_applied(a);
}

/* Move every committed erb_parked sample into the queue. */
static void park_read(struct agent *a)
{
	struct park *pk = &a->park;
	struct ring *r = &pk->ring;
	unsigned long pos, prod;

	if (r->fd < 0)
		return;
	pos = __atomic_load_n(r->consumer_pos, __ATOMIC_ACQUIRE);
	prod = __atomic_load_n(r->producer_pos, __ATOMIC_ACQUIRE);
	while (pos < prod) {
		const uint32_t *hp = (const void *)(r->data + (pos & (r->size - 1)));
		uint32_t hdr = __atomic_load_n(hp, __ATOMIC_ACQUIRE);

		if (hdr & BPF_RINGBUF_BUSY_BIT)
			break;
		if (!(hdr & BPF_RINGBUF_DISCARD_BIT)) {
			const struct erb_park *src = (const void *)((const uint8_t *)hp + BPF_RINGBUF_HDR_SZ);
			uint32_t flen = sample_len(hdr) == sizeof(*src) ? src->len : 0;

			a->st.parked++;
			if (flen < 14 || flen > ERB_PARK_FRAME_MAX || pk->n == PARK_QUEUE) {
				a->st.replay_dropped++;
				if (!pk->warned)
					log_warn("parked segment not kept (%s): the client retransmits it",
						 pk->n == PARK_QUEUE ? "replay queue full" : "bad sample");
				pk->warned = true;
			} else {
				struct erb_park *d = &pk->q[(pk->head + pk->n++) % PARK_QUEUE];

				memcpy(d, src, offsetof(struct erb_park, frame));
				d->len = flen;
				memcpy(d->frame, src->frame, flen);
			}
		}
		pos = sample_end(pos, hdr);
	}
	__atomic_store_n(r->consumer_pos, pos, __ATOMIC_RELEASE);
}

/* link_xdp's info: the program it runs now (followed across upgrades) and its ifindex. */
static int xdp_link_info(struct agent *a, struct bpf_link_info *li)
{
	__u32 len = sizeof(*li);
	int lfd = open_pin_optional(a, "link_xdp"), rc;

	if (lfd < 0)
		return -1;
	memset(li, 0, sizeof(*li));
	rc = bpf_obj_get_info_by_fd(lfd, li, &len);
	close(lfd);
	return rc || !li->prog_id ? -1 : 0;
}

/*
 * The erb_xdp program to replay parked segments through, or -1 with *why set.
 * It must be the program attached to ifindex in this process's network
 * namespace: BPF_PROG_TEST_RUN resolves ingress_ifindex here, and from another
 * namespace (an agent started outside the interface's) the index names another
 * device or none. erb_xdp would then take the segment as passed to Redis while
 * the frame goes nowhere, and the client's retransmissions of it find a flow
 * that no longer waits for them.
 */
static int park_prog(struct agent *a, const char **why)
{
	struct bpf_link_info li;
	LIBBPF_OPTS(bpf_xdp_query_opts, q);
	int pfd;

	*why = "no erb_xdp program (link_xdp) to run it through";
	if (xdp_link_info(a, &li))
		return -1;
	if (a->park.seen_prog != li.prog_id || a->park.seen_ifindex != li.xdp.ifindex) {
		if (bpf_xdp_query((int)li.xdp.ifindex, 0, &q) ||
		    (q.prog_id != li.prog_id && q.drv_prog_id != li.prog_id && q.skb_prog_id != li.prog_id)) {
			*why = "erb_xdp is not attached to that ifindex in this agent's network namespace: "
			       "run erb-agent in the interface's namespace";
			return -1;
		}
		a->park.seen_prog = li.prog_id;
		a->park.seen_ifindex = li.xdp.ifindex;
		a->park.seen_generic = q.skb_prog_id == li.prog_id;
	}
	pfd = bpf_prog_get_fd_by_id(li.prog_id);
	if (pfd < 0)
		*why = "erb_xdp's program cannot be opened";
	return pfd;
}

static int park_run_live(int prog, const uint8_t *frame, uint32_t len, uint32_t ifindex, uint32_t rxq)
{
	struct xdp_md md = { .data = 0, .data_end = len, .ingress_ifindex = ifindex, .rx_queue_index = rxq };
	LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = frame, .data_size_in = len, .ctx_in = &md,
		    .ctx_size_in = sizeof(md), .repeat = 1, .flags = BPF_F_TEST_XDP_LIVE_FRAMES);

	return bpf_prog_test_run_opts(prog, &o);
}

/*
 * A live-frames run failed with errno e: if the kernel refuses the mode
 * itself (EPERM: some builds forbid it; EOPNOTSUPP, ENOTSUPP) and --replay
 * allows, switch this agent to replays on a copy. Returns true if switched.
 */
static bool park_to_copy(struct agent *a, int e)
{
	if (a->opt.replay != REPLAY_AUTO || (e != EPERM && e != EOPNOTSUPP && e != 524))
		return false;
	log_warn("this kernel refuses BPF_PROG_RUN's live frames (%s): parked segments are run through "
		 "erb_xdp on a copy and sent by a packet socket", strerror(e));
	a->park.copy = true;
	return true;
}

/*
 * At start: say so at once when replays cannot work from this namespace, and
 * how they will run. Live frames are probed with a frame erb_xdp passes
 * untouched (an IEEE local-experimental EtherType, which the stack drops).
 */
static void park_check(struct agent *a)
{
	static const uint8_t probe[ETH_ZLEN] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5 };
	struct bpf_link_info li;
	const char *why;
	int pfd;

	if (a->park.ring.fd < 0 || xdp_link_info(a, &li))
		return;
	pfd = park_prog(a, &why);
	if (pfd < 0) {
		log_err("parked segments will not be replayed (%s); clients wait for their own "
			"retransmissions instead", why);
		return;
	}
	if (!a->park.copy && park_run_live(pfd, probe, sizeof(probe), a->park.seen_ifindex, 0)) {
		int e = errno;

		if (!park_to_copy(a, e))
			log_warn("a probe of BPF_PROG_RUN's live frames failed (%s): parked segments may not "
				 "be replayed%s", strerror(e), a->opt.replay == REPLAY_LIVE ? " (--replay live)" : "");
	}
	log_info("parked segments are replayed %s", a->park.copy ? "on a copy (packet socket)" : "as live frames");
	close(pfd);
}

/* Send frame out of ifindex with skb->mark (erb_tc_egress acts on ERB_MARK_REPLAY_*). */
static int park_send(struct park *pk, const uint8_t *frame, uint32_t len, int ifindex, uint32_t mark)
{
	struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_ifindex = ifindex, .sll_halen = ETH_ALEN };

	if (len < ETH_HLEN) {
		errno = EINVAL;
		return -1;
	}
	if (pk->pkt_fd < 0) {
		/* protocol 0: a socket that sends and never receives */
		pk->pkt_fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
		if (pk->pkt_fd < 0)
			return -1;
	}
	memcpy(sll.sll_addr, frame, ETH_ALEN);
	if (setsockopt(pk->pkt_fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)))
		return -1;
	if (sendto(pk->pkt_fd, frame, len, 0, (struct sockaddr *)&sll, sizeof(sll)) != (ssize_t)len)
		return -1;
	return 0;
}

/*
 * Replay on a copy: erb_xdp runs on the frame (BPF_PROG_TEST_RUN without live
 * frames, the same program and maps), and what it decided is carried out here.
 * An answer (XDP_TX) leaves through a packet socket, as XDP_TX would send it; a
 * segment passed on (XDP_PASS, its seq/ack corrected) goes out marked, and
 * erb_tc_egress turns it into the interface's ingress. Generic (skb) mode would
 * run erb_xdp on that ingress again: a passed segment is not replayed there.
 */
static int park_run_copy(struct agent *a, int prog, struct erb_park *p, const char **why)
{
	static uint8_t out[ERB_PARK_FRAME_MAX + 4096];
	struct xdp_md md = { .data = 0, .data_end = p->len, .ingress_ifindex = p->ifindex,
			     .rx_queue_index = p->rxq };
	LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = p->frame, .data_size_in = p->len, .data_out = out,
		    .data_size_out = sizeof(out), .ctx_in = &md, .ctx_size_in = sizeof(md), .repeat = 1);

	if (a->park.seen_generic) {
		*why = "erb_xdp runs in generic (skb) mode: a segment sent back in would run through it twice";
		return -1;
	}
	if (bpf_prog_test_run_opts(prog, &o)) {
		*why = strerror(errno);
		return -1;
	}
	if (o.retval == XDP_TX || o.retval == XDP_PASS) {
		if (park_send(&a->park, out, o.data_size_out, (int)p->ifindex,
			      o.retval == XDP_TX ? ERB_MARK_REPLAY_TX : ERB_MARK_REPLAY_RX)) {
			*why = strerror(errno);
			return -1;
		}
		a->st.replay_copies++;
	}
	return 0;		/* XDP_DROP: erb_xdp held it again or dropped it, as live */
}

/*
 * Run a parked segment through erb_xdp: live frames (the kernel sends or
 * receives the result), else on a copy (park_to_copy()).
 */
static int park_run(struct agent *a, int prog, struct erb_park *p, const char **why)
{
	if (!a->park.copy && park_run_live(prog, p->frame, p->len, p->ifindex, p->rxq)) {
		int e = errno;

		if (!park_to_copy(a, e)) {
			*why = strerror(e);
			return -1;
		}
	}
	return a->park.copy ? park_run_copy(a, prog, p, why) : 0;
}

/* Replay the queue's head while its writes are applied; drop the expired. */
static void park_replay(struct agent *a)
{
	struct park *pk = &a->park;
	uint64_t applied, now;
	int prog = -1;
	bool looked = false;
	const char *prog_why = NULL;

	if (!pk->n)
		return;
	applied = park_applied(a);
	now = now_ns();
	while (pk->n) {
		struct erb_park *p = &pk->q[pk->head];
		const char *why = NULL;

		if (now - p->ts_ns > PARK_MAX_AGE_NS) {
			a->st.replay_expired++;
		} else if (p->bound > applied) {
			break;
		} else {
			if (!looked) {
				prog = park_prog(a, &prog_why);
				looked = true;
			}
			if (prog < 0)
				why = prog_why;
			else if (p->ifindex != a->park.seen_ifindex)
				why = "it came in on another interface than the one erb_xdp's link is on";
			else if (park_csum(p->frame, p->len))
				why = "not TCP, or its checksum is neither complete nor partial";
			else
				park_run(a, prog, p, &why);
			if (why) {
				a->st.replay_dropped++;
				if (!pk->warned)
					log_warn("parked segment not replayed (%s): the client retransmits it", why);
				pk->warned = true;
			} else {
				a->st.replayed++;
			}
		}
		pk->head = (pk->head + 1) % PARK_QUEUE;
		pk->n--;
	}
	if (prog >= 0)
		close(prog);
}

static int open_maps(struct agent *a)
{
	a->dir_fd = open(a->opt.pin_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (a->dir_fd < 0) {
		log_err("cannot open pin dir %s: %s (ERB must be attached first; pins live in "
			"<bpffs_root>/erb/<netns>/<ifname>)", a->opt.pin_dir, strerror(errno));
		return -1;
	}
	if (flock(a->dir_fd, LOCK_EX | LOCK_NB)) {
		log_err("another erb-agent holds %s (%s): two agents would apply records twice",
			a->opt.pin_dir, strerror(errno));
		return -EXIT_LOCKED;
	}
	if (read_meta(a) || open_ring(a) || open_global(a) || open_cache(a))
		return -1;
	open_wepoch(a);
	open_tags(a);
	open_park(a);
	park_check(a);
	a->hash_ok = calloc(a->cache_entries, sizeof(*a->hash_ok));
	if (!a->hash_ok) {
		log_err("out of memory for %u cache slots", a->cache_entries);
		return -1;
	}
	/* fills made before this agent: one walk; later ones come queued */
	a->fillq_seen = __atomic_load_n(&a->global->fillq_head, __ATOMIC_ACQUIRE);
	a->fills_moved = true;
	a->st.fill_walks = 1;
	return 0;
}

/* ------------------------------------------------------------------ tracker */

static int tracker_init(struct tracker *t, uint64_t base)
{
	t->bits = calloc(TRACK_WINDOW / 64, sizeof(uint64_t));
	if (!t->bits) {
		log_err("out of memory for the seq tracker");
		return -1;
	}
	t->mask = TRACK_WINDOW - 1;
	t->base = base;
	return 0;
}

static bool tracker_test(const struct tracker *t, uint64_t seq)
{
	uint64_t i = seq & t->mask;

	return t->bits[i / 64] & (1ULL << (i % 64));
}

static void tracker_mark(struct tracker *t, uint64_t seq)
{
	uint64_t i = seq & t->mask;

	if (seq <= t->base)
		return;
	if (seq - t->base > t->mask) {
		log_err("seq %llu is %llu past applied_seq %llu, beyond the tracking window: "
			"applied_seq cannot advance past it (BPF seq contract broken?)",
			(unsigned long long)seq, (unsigned long long)(seq - t->base),
			(unsigned long long)t->base);
		return;
	}
	t->bits[i / 64] |= 1ULL << (i % 64);
}

static void tracker_advance(struct tracker *t)
{
	while (tracker_test(t, t->base + 1)) {
		uint64_t i = (t->base + 1) & t->mask;

		t->bits[i / 64] &= ~(1ULL << (i % 64));
		t->base++;
	}
}

/* --------------------------------------------------------------------- ring */

static void slot_from_sample(struct agent *a, struct slot *s, unsigned long pos, uint32_t hdr)
{
	const struct erb_record *r = (const void *)(a->ring.data + (pos & (a->ring.size - 1)) +
						   BPF_RINGBUF_HDR_SZ);
	uint32_t len = sample_len(hdr);
	const char *why;

	memset(s, 0, sizeof(*s));
	s->end_pos = sample_end(pos, hdr);
	if (hdr & BPF_RINGBUF_DISCARD_BIT)
		return;
	s->rec = r;
	s->seq = len >= ERB_RECORD_HDR_SIZE ? r->seq : 0;
	why = erb_record_problem(r, len);
	if (why) {
		s->bad = true;
		a->st.bad_records++;
		a->st.errors++;
		log_err("bad record at ring position %lu (seq %llu, %u bytes): %s; skipped, NOT applied",
			pos, (unsigned long long)s->seq, len, why);
	}
}

/* Collect up to opt.batch committed samples from the consumer position. */
static unsigned int ring_read_batch(struct agent *a)
{
	struct batch *b = &a->batch;
	unsigned long pos = __atomic_load_n(a->ring.consumer_pos, __ATOMIC_ACQUIRE);
	unsigned long prod = __atomic_load_n(a->ring.producer_pos, __ATOMIC_ACQUIRE);

	b->n = 0;
	b->done = 0;
	while (b->n < b->cap && pos < prod) {
		const uint32_t *hp = (const void *)(a->ring.data + (pos & (a->ring.size - 1)));
		uint32_t hdr = __atomic_load_n(hp, __ATOMIC_ACQUIRE);

		if (hdr & BPF_RINGBUF_BUSY_BIT)
			break;
		slot_from_sample(a, &b->slots[b->n], pos, hdr);
		pos = b->slots[b->n++].end_pos;
	}
	b->read_ns = now_ns();
	return b->n;
}

/* Records acknowledged: move the consumer, then publish applied_seq. */
static void batch_commit(struct agent *a, unsigned int upto)
{
	struct batch *b = &a->batch;

	if (upto <= b->done)
		return;
	__atomic_store_n(a->ring.consumer_pos, b->slots[upto - 1].end_pos, __ATOMIC_RELEASE);
	for (unsigned int i = b->done; i < upto; i++) {
		if (!b->slots[i].rec)
			continue;
		tracker_mark(&a->trk, b->slots[i].seq);
		if (!b->slots[i].bad)
			a->st.applied++;
	}
	b->done = upto;
	tracker_advance(&a->trk);
	publish_applied(a, a->trk.base);
}

/*
 * Rebuild applied_seq at start: every seq <= write_seq not found in the ring
 * was acknowledged (consumed) by a previous agent.
 */
static int recover_progress(struct agent *a)
{
	uint64_t published = load_applied(a), wseq = load_write_seq(a), lowest = UINT64_MAX;
	unsigned long pos, prod;
	uint64_t n = 0, base;

	sleep_ms(START_SETTLE_MS);
	pos = __atomic_load_n(a->ring.consumer_pos, __ATOMIC_ACQUIRE);
	prod = __atomic_load_n(a->ring.producer_pos, __ATOMIC_ACQUIRE);
	for (unsigned int waited = 0; pos < prod && !stop_requested;) {
		const uint32_t *hp = (const void *)(a->ring.data + (pos & (a->ring.size - 1)));
		uint32_t hdr = __atomic_load_n(hp, __ATOMIC_ACQUIRE);
		const struct erb_record *r = (const void *)((const uint8_t *)hp + BPF_RINGBUF_HDR_SZ);

		if (hdr & BPF_RINGBUF_BUSY_BIT) {
			if (++waited > 1000) {
				log_err("ring sample at %lu stays reserved: cannot recover applied_seq", pos);
				return -1;
			}
			sleep_ms(1);
			continue;
		}
		if (!(hdr & BPF_RINGBUF_DISCARD_BIT) && sample_len(hdr) >= ERB_RECORD_HDR_SIZE &&
		    r->seq && r->seq <= wseq && r->seq < lowest)
			lowest = r->seq;
		n++;
		pos = sample_end(pos, hdr);
	}
	base = lowest == UINT64_MAX ? wseq : lowest - 1;
	if (base < published)
		base = published;
	if (tracker_init(&a->trk, base))
		return -1;
	/* seqs in (base, wseq] not in the ring were acknowledged before */
	if (wseq > base && wseq - base > a->trk.mask) {
		log_err("write_seq %llu is too far past applied_seq %llu", (unsigned long long)wseq,
			(unsigned long long)base);
		return -1;
	}
	for (uint64_t s = base + 1; s <= wseq; s++)
		tracker_mark(&a->trk, s);
	pos = __atomic_load_n(a->ring.consumer_pos, __ATOMIC_ACQUIRE);
	for (; pos < prod;) {
		const uint32_t *hp = (const void *)(a->ring.data + (pos & (a->ring.size - 1)));
		uint32_t hdr = __atomic_load_n(hp, __ATOMIC_ACQUIRE);
		const struct erb_record *r = (const void *)((const uint8_t *)hp + BPF_RINGBUF_HDR_SZ);

		if (!(hdr & BPF_RINGBUF_DISCARD_BIT) && sample_len(hdr) >= ERB_RECORD_HDR_SIZE &&
		    r->seq > base && r->seq <= wseq) {
			uint64_t i = r->seq & a->trk.mask;

			a->trk.bits[i / 64] &= ~(1ULL << (i % 64));
		}
		pos = sample_end(pos, hdr);
	}
	tracker_advance(&a->trk);
	publish_applied(a, a->trk.base);
	log_info("start: write_seq %llu, applied_seq %llu (was %llu), %llu records waiting in the ring",
		 (unsigned long long)wseq, (unsigned long long)a->trk.base,
		 (unsigned long long)published, (unsigned long long)n);
	return 0;
}

/* -------------------------------------------------------------------- redis */

static struct timeval ms_tv(unsigned int ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	return tv;
}

static const char *redis_where(const struct options *o, char *buf, size_t len)
{
	if (o->redis_sock)
		snprintf(buf, len, "unix:%s", o->redis_sock);
	else
		snprintf(buf, len, "%s:%d", o->redis_host, o->redis_port);
	return buf;
}

/* Error replies after which the same command must be sent again later. */
static bool retryable_error(const char *msg)
{
	static const char *const codes[] = { "LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "MISCONF",
					      "OOM", "READONLY", "NOREPLICAS", "NOAUTH", "NOPERM",
					      "CLUSTERDOWN" };

	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		size_t n = strlen(codes[i]);

		if (!strncmp(msg, codes[i], n) && (msg[n] == ' ' || !msg[n]))
			return true;
	}
	return false;
}

static bool reply_ok(const redisReply *r)
{
	return r && r->type == REDIS_REPLY_STATUS && !strcmp(r->str, "OK");
}

/*
 * The next reply on a blocking connection, like redisGetReply(), but waiting
 * for it in poll(POLLIN) rather than in a blocking read(). On a unix socket a
 * reader blocked in read() is also woken each time the peer consumes what
 * this side wrote (unix_write_space wakes every sleeper, whatever it waits
 * for), so Redis paid a wakeup of the agent for reading each pipeline and
 * another for answering it; poll()'s wait entry is woken only for POLLIN.
 */
static int get_reply(redisContext *c, redisReply **out)
{
	void *r = NULL;
	int done = 0;

	*out = NULL;
	while (!done)
		if (redisBufferWrite(c, &done) != REDIS_OK)
			return REDIS_ERR;
	if (redisGetReplyFromReader(c, &r) != REDIS_OK)
		return REDIS_ERR;
	while (!r) {
		struct pollfd p = { .fd = c->fd, .events = POLLIN };
		int n = poll(&p, 1, COMMAND_TIMEOUT_MS);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			c->err = REDIS_ERR_IO;
			snprintf(c->errstr, sizeof(c->errstr), "%s", n ? strerror(errno) :
				 "no reply within the command timeout");
			return REDIS_ERR;
		}
		if (redisBufferRead(c) != REDIS_OK || redisGetReplyFromReader(c, &r) != REDIS_OK)
			return REDIS_ERR;
	}
	*out = r;
	return REDIS_OK;
}

/* Run one command; NULL (and a log line) on I/O error or unexpected error reply. */
static redisReply *command(redisContext *c, const char *what, int argc, const char **argv)
{
	redisReply *r = redisCommandArgv(c, argc, argv, NULL);

	if (!r) {
		log_warn("Redis %s: %s", what, c->errstr[0] ? c->errstr : "connection lost");
		return NULL;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		log_warn("Redis %s: %s", what, r->str);
		freeReplyObject(r);
		return NULL;
	}
	return r;
}

static redisContext *redis_connect(struct agent *a)
{
	const struct options *o = &a->opt;
	redisContext *c;
	char where[PATH_MAX + 16];

	if (o->redis_sock)
		c = redisConnectUnixWithTimeout(o->redis_sock, ms_tv(CONNECT_TIMEOUT_MS));
	else
		c = redisConnectWithTimeout(o->redis_host, o->redis_port, ms_tv(CONNECT_TIMEOUT_MS));
	if (!c || c->err) {
		if (a->connect_failures < 3 || a->connect_failures % 20 == 0)
			log_warn("Redis unreachable at %s: %s; retrying with backoff",
				 redis_where(o, where, sizeof(where)), c ? c->errstr : "out of memory");
		if (c)
			redisFree(c);
		return NULL;
	}
	if (redisSetTimeout(c, ms_tv(COMMAND_TIMEOUT_MS)) != REDIS_OK) {
		log_warn("cannot set the Redis command timeout: %s", c->errstr);
		redisFree(c);
		return NULL;
	}
	return c;
}

/* AUTH with the password file's current content (a rotated password works). */
static int redis_auth(struct agent *a, redisContext *c)
{
	const char *argv[3] = { "AUTH" };
	char *pw;
	int argc = 1;
	redisReply *r;

	if (!a->opt.redis_password_file)
		return 0;
	pw = read_secret(a->opt.redis_password_file);
	if (!pw)
		return -1;
	if (a->opt.redis_user)
		argv[argc++] = a->opt.redis_user;
	argv[argc++] = pw;
	r = command(c, "AUTH", argc, argv);
	free_secret(pw);
	if (!r)
		return -1;
	freeReplyObject(r);
	return 0;
}

/* Redis's run_id: a new one after a reconnect means Redis restarted. */
static void check_run_id(struct agent *a)
{
	redisReply *r = redisCommand(a->apply, "INFO server");
	const char *p;
	size_t n;

	if (!r || r->type != REDIS_REPLY_STRING ||
	    !(p = strstr(r->str, "run_id:"))) {
		log_warn("INFO server: no run_id (%s)", r && r->type == REDIS_REPLY_ERROR ? r->str : "?");
		if (r)
			freeReplyObject(r);
		return;
	}
	p += strlen("run_id:");
	n = strcspn(p, "\r\n");
	if (n >= sizeof(a->run_id))
		n = sizeof(a->run_id) - 1;
	if (a->run_id[0] && (strlen(a->run_id) != n || memcmp(a->run_id, p, n))) {
		a->st.redis_restarts++;
		log_info("Redis restarted (run_id %s -> %.*s): the cache is emptied", a->run_id, (int)n, p);
	}
	memcpy(a->run_id, p, n);
	a->run_id[n] = 0;
	freeReplyObject(r);
}

/* Wait until Redis answers PING (it refuses everything while loading). */
static int redis_ready(redisContext *c)
{
	for (unsigned int waited = 0; !stop_requested;) {
		redisReply *r = redisCommand(c, "PING");

		if (!r) {
			log_warn("Redis PING: %s", c->errstr);
			return -1;
		}
		if (r->type == REDIS_REPLY_STATUS) {
			freeReplyObject(r);
			return 0;
		}
		if (r->type != REDIS_REPLY_ERROR || !retryable_error(r->str)) {
			log_warn("Redis PING: unexpected reply %s", r->type == REDIS_REPLY_ERROR ? r->str : "");
			freeReplyObject(r);
			return -1;
		}
		if (waited % 50 == 0)
			log_info("Redis not ready (%s); waiting", r->str);
		freeReplyObject(r);
		sleep_ms(100);
		waited++;
	}
	return -1;
}

static unsigned int redis_databases(redisContext *c)
{
	redisReply *r = redisCommand(c, "CONFIG GET databases");
	unsigned long v = 16;

	if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
	    r->element[1]->type == REDIS_REPLY_STRING && !parse_uint(r->element[1]->str, 1, INT_MAX, &v)) {
		freeReplyObject(r);
		return (unsigned int)v;
	}
	log_warn("CONFIG GET databases failed (%s): assuming 16",
		 r && r->type == REDIS_REPLY_ERROR ? r->str : c->errstr);
	if (r)
		freeReplyObject(r);
	return 16;
}

/* Subscriber connection: returns its CLIENT ID, or -1. */
static long long open_subscriber(struct agent *a)
{
	const char *id_argv[] = { "CLIENT", "ID" };
	const char *sub_argv[] = { "SUBSCRIBE", INVALIDATE_CHANNEL };
	redisReply *r;
	long long id;

	a->sub = redis_connect(a);
	if (!a->sub || redis_auth(a, a->sub))
		return -1;
	r = command(a->sub, "CLIENT ID", 2, id_argv);
	if (!r)
		return -1;
	id = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
	freeReplyObject(r);
	if (id < 0)
		return -1;
	r = command(a->sub, "SUBSCRIBE", 2, sub_argv);
	if (!r)
		return -1;
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 3) {
		log_warn("SUBSCRIBE %s: unexpected reply", INVALIDATE_CHANNEL);
		freeReplyObject(r);
		return -1;
	}
	freeReplyObject(r);
	return id;
}

static int enable_tracking(struct agent *a, long long sub_id)
{
	char id[32];
	const char *argv[] = { "CLIENT", "TRACKING", "ON", "REDIRECT", id, "BCAST", "NOLOOP" };
	redisReply *r;

	snprintf(id, sizeof(id), "%lld", sub_id);
	r = command(a->apply, "CLIENT TRACKING", 7, argv);
	if (!r)
		return -1;
	if (!reply_ok(r)) {
		log_warn("CLIENT TRACKING: unexpected reply");
		freeReplyObject(r);
		return -1;
	}
	freeReplyObject(r);
	return 0;
}

static bool cache_flush(struct agent *a, const char *why);

/*
 * erb_redis refuses to load while a connection named erb-agent exists: two
 * consumers of the ring would apply its records twice.
 */
static int name_connection(struct agent *a)
{
	const char *argv[] = { "CLIENT", "SETNAME", a->rmod ? "erb-agent-assist" : "erb-agent" };
	redisReply *r = command(a->apply, "CLIENT SETNAME", 3, argv);

	if (!r)
		return -1;	/* the connection failed: a new session */
	/* a Redis user without CLIENT SETNAME: applying matters more than the guard */
	if (!reply_ok(r))
		log_warn("CLIENT SETNAME refused (%s): erb_redis cannot see that this agent drains the ring; "
			 "stop the agent before loading it", r->type == REDIS_REPLY_ERROR ? r->str : "?");
	freeReplyObject(r);
	return 0;
}

static void session_close(struct agent *a)
{
	bool was_up = a->up;

	a->up = false;
	if (a->sub) {
		epoll_ctl(a->epfd, EPOLL_CTL_DEL, a->sub->fd, NULL);
		redisFree(a->sub);
		a->sub = NULL;
	}
	if (a->apply) {
		redisFree(a->apply);
		a->apply = NULL;
	}
	for (size_t i = 0; i < a->inval.n; i++)
		free(a->inval.v[i].key);
	a->inval.n = 0;
	a->cur_db = -1;
	/*
	 * Redis may be restarting: when it answers again, it may hold less than
	 * the cache does. Empty the cache now, not after the reconnect.
	 */
	if (was_up && !stop_requested) {
		for (int tries = 0; !cache_flush(a, "Redis connection lost"); tries++) {
			if (tries >= 100) {
				a->flush_pending = true;
				break;
			}
			sleep_ms(1);
		}
	}
}

static int session_open(struct agent *a)
{
	struct epoll_event ev = { .events = EPOLLIN };
	long long sub_id;

	a->apply = redis_connect(a);
	if (!a->apply)
		return -1;
	if (redis_auth(a, a->apply) || redis_ready(a->apply))
		return -1;
	a->databases = redis_databases(a->apply);
	a->cur_db = 0;
	check_run_id(a);
	if (name_connection(a))
		return -1;
	/*
	 * After the name, which makes erb_redis refuse to load: a module that
	 * loaded before it owns the ring now, and this agent must not apply.
	 */
	if (rmod_io_path(a) != a->rmod) {
		log_info("erb_redis %s while this agent was not connected: exiting so that a restart "
			 "takes the right part", a->rmod ? "went away" : "was loaded");
		a->path_changed = true;
		return -1;
	}
	if (!a->rmod) {
		sub_id = open_subscriber(a);
		if (sub_id < 0 || enable_tracking(a, sub_id))
			return -1;
		ev.data.fd = a->sub->fd;
		if (epoll_ctl(a->epfd, EPOLL_CTL_ADD, a->sub->fd, &ev)) {
			log_err("epoll_ctl: %s", strerror(errno));
			return -1;
		}
	}
	/* changes made while nobody tracked them are unknown: empty the cache */
	a->flush_pending = true;
	a->up = true;
	return 0;
}

/* Connect (again) with backoff; false only when asked to stop. */
static bool session_ensure(struct agent *a);
static void maybe_write_stats(struct agent *a);

/* --------------------------------------------------------------- cache ops */

/* A fill of a key of this bucket captured before now must not be stored. */
static void wepoch_bump(struct agent *a, uint32_t h)
{
	if (!a->wepoch)
		return;
	__atomic_fetch_add(&a->wepoch[h & (ERB_INFLIGHT_BUCKETS - 1)], 1, __ATOMIC_ACQ_REL);
	a->st.epoch_bumps++;
}

static void wepoch_bump_all(struct agent *a)
{
	if (!a->wepoch)
		return;
	for (uint32_t b = 0; b < ERB_INFLIGHT_BUCKETS; b++)
		__atomic_fetch_add(&a->wepoch[b], 1, __ATOMIC_ACQ_REL);
	a->st.epoch_bumps += ERB_INFLIGHT_BUCKETS;
}

static struct erb_entry *cache_slot(struct agent *a, uint32_t h, uint32_t i)
{
	return &a->cache[erb_cache_index(h, i, a->hash_prime, a->cache_entries)];
}

enum del_result { DEL_DONE, DEL_BUSY, DEL_CHANGED };

/*
 * Delete e if it still is version ver (0: any version) and Redis has its
 * write (erb_cache_user.h: the lock and tombstone protocol of erb.bpf.c
 * cache_store()).
 */
static enum del_result cache_delete(struct agent *a, struct erb_entry *e, uint32_t ver)
{
	enum del_result res = DEL_CHANGED;

	if (!erb_entry_trylock(e))
		return DEL_BUSY;
	if ((!ver || __atomic_load_n(&e->ver, __ATOMIC_ACQUIRE) == ver) && erb_entry_tomb(e, load_applied(a)))
		res = DEL_DONE;
	erb_entry_unlock(e);
	return res;
}

/* A consistent copy of the entry's comparable fields (seqlock read). */
struct entry_view {
	uint32_t ver, state, gen, hash;
	uint16_t klen, vlen;
	uint64_t wseq;
	char key[ERB_KEY_MAX];
	char val[ERB_VAL_MAX];
};

static bool entry_read(const struct erb_entry *e, struct entry_view *v)
{
	for (int tries = 0; tries < 100; tries++) {
		v->ver = __atomic_load_n(&e->ver, __ATOMIC_ACQUIRE);
		if (v->ver & 1)
			continue;
		v->state = __atomic_load_n(&e->state, __ATOMIC_RELAXED);
		v->gen = __atomic_load_n(&e->gen, __ATOMIC_RELAXED);
		v->hash = __atomic_load_n(&e->hash, __ATOMIC_RELAXED);
		v->klen = __atomic_load_n(&e->klen, __ATOMIC_RELAXED);
		v->vlen = __atomic_load_n(&e->vlen, __ATOMIC_RELAXED);
		v->wseq = __atomic_load_n(&e->wseq, __ATOMIC_RELAXED);
		memcpy(v->key, e->key, sizeof(v->key));
		memcpy(v->val, e->val, sizeof(v->val));
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&e->ver, __ATOMIC_RELAXED) == v->ver)
			return true;
	}
	return false;
}

/* Redis's view of a key for verification. */
struct redis_value {
	bool string;			/* false: missing, not a string, or unknown */
	const char *buf;
	size_t len;
};

enum verify_result { V_NOT_CACHED, V_KEPT, V_DELETED, V_RETRY };

/*
 * For every live entry of key: keep it when it equals Redis's value or Redis
 * does not have its write yet, else delete it.
 */
static enum verify_result cache_verify(struct agent *a, const char *key, size_t klen,
				       const struct redis_value *rv)
{
	uint32_t h = erb_fnv1a(key, klen), gen = __atomic_load_n(&a->global->cache_gen, __ATOMIC_ACQUIRE);
	enum verify_result res = V_NOT_CACHED;
	struct entry_view v;

	for (uint32_t i = 0; i < a->max_probes; i++) {
		struct erb_entry *e = cache_slot(a, h, i);

		if (!entry_read(e, &v))
			return V_RETRY;
		/* as in erb_cache.h: only a never-used slot ends a chain */
		if (v.state == ERB_ENTRY_EMPTY)
			break;
		if (v.state != ERB_ENTRY_VALID || v.gen != gen || v.hash != h || v.klen != klen ||
		    memcmp(v.key, key, klen))
			continue;
		if ((rv->string && rv->len == v.vlen && !memcmp(rv->buf, v.val, v.vlen)) ||
		    v.wseq > load_applied(a)) {
			if (res == V_NOT_CACHED)
				res = V_KEPT;
			continue;
		}
		switch (cache_delete(a, e, v.ver)) {
		case DEL_DONE:
			res = V_DELETED;
			break;
		case DEL_BUSY:
		case DEL_CHANGED:
			return V_RETRY;
		}
	}
	return res;
}

/* Is there a live entry for key at all (no Redis round trip needed if not)? */
static bool cache_has(struct agent *a, const char *key, size_t klen)
{
	uint32_t h = erb_fnv1a(key, klen), gen = __atomic_load_n(&a->global->cache_gen, __ATOMIC_ACQUIRE);
	uint8_t tag = erb_hash_tag(h);

	for (uint32_t i = 0; i < a->max_probes; i++) {
		const struct erb_entry *e = cache_slot(a, h, i);
		uint32_t state;

		if (a->tags) {
			/* set by XDP before the entry shows the hash: never hides it */
			uint8_t t = __atomic_load_n(&a->tags[e - a->cache], __ATOMIC_ACQUIRE);

			if (!t)
				return false;
			if (t != tag)
				continue;
		}
		state = __atomic_load_n(&e->state, __ATOMIC_ACQUIRE);

		/* as in erb_cache.h: only a never-used slot ends a chain */
		if (state == ERB_ENTRY_EMPTY)
			return false;
		if (state == ERB_ENTRY_VALID && __atomic_load_n(&e->gen, __ATOMIC_RELAXED) == gen &&
		    __atomic_load_n(&e->hash, __ATOMIC_RELAXED) == h)
			return true;
	}
	return false;
}

/*
 * Empty the cache without dropping an acknowledged write Redis lacks: bump
 * cache_gen when nothing is pending, else delete every entry Redis has.
 * Returns false when a busy entry must be retried.
 */
static bool cache_flush(struct agent *a, const char *why)
{
	uint64_t applied = load_applied(a);
	uint32_t gen = __atomic_load_n(&a->global->cache_gen, __ATOMIC_ACQUIRE);
	unsigned int deleted = 0, kept = 0;
	bool complete = true;

	if (erb_cache_gen_flushable(a->global, applied)) {
		/* fills compare cache_gen too: none captured before is stored */
		__atomic_fetch_add(&a->global->cache_gen, 1, __ATOMIC_ACQ_REL);
		a->st.flushes++;
		log_info("cache emptied (%s): cache_gen %u -> %u", why, gen, gen + 1);
		return true;
	}
	/* cache_gen stays: cancel the fills in flight through their epochs */
	wepoch_bump_all(a);
	for (uint32_t i = 0; i < a->cache_entries; i++) {
		struct erb_entry *e = &a->cache[i];

		if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) != ERB_ENTRY_VALID ||
		    __atomic_load_n(&e->gen, __ATOMIC_RELAXED) != gen)
			continue;
		if (__atomic_load_n(&e->wseq, __ATOMIC_RELAXED) > applied) {
			kept++;
			continue;
		}
		switch (cache_delete(a, e, 0)) {
		case DEL_DONE: deleted++; break;
		case DEL_BUSY: complete = false; break;
		case DEL_CHANGED: break;
		}
	}
	a->st.flushes++;
	log_info("cache swept (%s; writes pending, so cache_gen stays %u): %u entries deleted, %u "
		 "not yet applied kept%s", why, gen, deleted, kept, complete ? "" : ", busy entries left: retrying");
	return complete;
}

/* ------------------------------------------------------------ invalidations */

static int inval_push(struct inval_queue *q, const char *key, size_t len, unsigned int tries)
{
	if (q->n == q->cap) {
		size_t cap = q->cap ? q->cap * 2 : 1024;
		struct inval_key *v = realloc(q->v, cap * sizeof(*v));

		if (!v)
			return -1;
		q->v = v;
		q->cap = cap;
	}
	q->v[q->n].key = malloc(len ? len : 1);
	if (!q->v[q->n].key)
		return -1;
	memcpy(q->v[q->n].key, key, len);
	q->v[q->n].len = len;
	q->v[q->n].tries = tries;
	q->n++;
	return 0;
}

static void handle_message(struct agent *a, const redisReply *r)
{
	const redisReply *payload;

	if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || r->element[0]->type != REDIS_REPLY_STRING ||
	    strcmp(r->element[0]->str, "message"))
		return;
	payload = r->element[2];
	if (payload->type == REDIS_REPLY_NIL) {
		a->flush_pending = true;
		return;
	}
	if (payload->type != REDIS_REPLY_ARRAY)
		return;
	for (size_t i = 0; i < payload->elements; i++) {
		const redisReply *k = payload->element[i];

		if (k->type != REDIS_REPLY_STRING)
			continue;
		a->st.inval_received++;
		/* first: a fill of this key in flight may hold the old value */
		wepoch_bump(a, erb_fnv1a(k->str, k->len));
		if (k->len > ERB_KEY_MAX || !cache_has(a, k->str, k->len)) {
			a->st.inval_not_cached++;
			continue;
		}
		if (inval_push(&a->inval, k->str, k->len, 0)) {
			log_err("out of memory queueing invalidations: emptying the cache instead");
			a->flush_pending = true;
		}
	}
}

/* Read every invalidation message available on the subscriber connection. */
static int read_invalidations(struct agent *a)
{
	void *reply;

	if (redisBufferRead(a->sub) != REDIS_OK) {
		log_warn("invalidation connection: %s", a->sub->errstr[0] ? a->sub->errstr : "closed");
		return -1;
	}
	for (;;) {
		if (redisGetReplyFromReader(a->sub, &reply) != REDIS_OK) {
			log_warn("invalidation connection: %s", a->sub->errstr);
			return -1;
		}
		if (!reply)
			return 0;
		handle_message(a, reply);
		freeReplyObject(reply);
	}
}

/* SELECT db on the apply connection when it is not selected already. */
static int append_select(struct agent *a, unsigned int db)
{
	char num[16];
	const char *argv[] = { "SELECT", num };
	size_t lens[2] = { 6, 0 };

	lens[1] = (size_t)snprintf(num, sizeof(num), "%u", db);
	if (redisAppendCommandArgv(a->apply, 2, argv, lens) != REDIS_OK) {
		log_err("cannot queue SELECT: %s", a->apply->errstr);
		return -1;
	}
	a->cur_db = (int)db;
	return 0;
}

static int select_db0(struct agent *a)
{
	redisReply *r;

	if (a->cur_db == 0)
		return 0;
	if (append_select(a, 0) || get_reply(a->apply, &r) != REDIS_OK) {
		a->cur_db = -1;
		return -1;
	}
	if (!reply_ok(r)) {
		log_warn("SELECT 0: %s", r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
		freeReplyObject(r);
		a->cur_db = -1;
		return -1;
	}
	freeReplyObject(r);
	return 0;
}

static void count_verify(struct agent *a, enum verify_result v, struct inval_key *k)
{
	switch (v) {
	case V_NOT_CACHED: a->st.inval_not_cached++; break;
	case V_KEPT: a->st.inval_kept++; break;
	case V_DELETED: a->st.inval_applied++; break;
	case V_RETRY:
		if (k->tries + 1 >= INVAL_MAX_TRIES) {
			log_warn("cache entry of an invalidated key stays busy: emptying the cache");
			a->flush_pending = true;
		} else if (inval_push(&a->inval, k->key, k->len, k->tries + 1)) {
			a->flush_pending = true;
		}
		break;
	}
}

/*
 * Verify up to INVAL_ROUND queued keys: GET and PTTL them (pipelined, db 0,
 * the db the cache serves) on the apply connection, compare with the cache
 * entries. A key with a TTL is never kept: Redis may expire it lazily, and
 * the XDP hits that would have expired it never reach Redis.
 * Returns -1 when the connection broke.
 */
static int verify_round(struct agent *a)
{
	size_t n = a->inval.n < INVAL_ROUND ? a->inval.n : INVAL_ROUND;
	struct inval_key *keys;
	int rc = 0;

	if (!n)
		return 0;
	keys = malloc(n * sizeof(*keys));
	if (!keys) {
		a->flush_pending = true;
		return 0;
	}
	/* take the n oldest keys off the queue */
	memcpy(keys, a->inval.v, n * sizeof(*keys));
	memmove(a->inval.v, a->inval.v + n, (a->inval.n - n) * sizeof(*keys));
	a->inval.n -= n;
	if (select_db0(a))
		rc = -1;
	for (size_t i = 0; i < n && !rc; i++) {
		const char *get[] = { "GET", keys[i].key }, *pttl[] = { "PTTL", keys[i].key };
		size_t lens[] = { 3, keys[i].len }, plens[] = { 4, keys[i].len };

		if (redisAppendCommandArgv(a->apply, 2, get, lens) != REDIS_OK ||
		    redisAppendCommandArgv(a->apply, 2, pttl, plens) != REDIS_OK)
			rc = -1;
	}
	for (size_t i = 0; i < n && !rc; i++) {
		redisReply *r, *t;
		struct redis_value rv = { 0 };

		if (get_reply(a->apply, &r) != REDIS_OK) {
			log_warn("Redis GET (verify): %s", a->apply->errstr);
			rc = -1;
			break;
		}
		if (get_reply(a->apply, &t) != REDIS_OK) {
			log_warn("Redis PTTL (verify): %s", a->apply->errstr);
			freeReplyObject(r);
			rc = -1;
			break;
		}
		/* keep only a string without TTL (PTTL -1) */
		if (r->type == REDIS_REPLY_STRING && t->type == REDIS_REPLY_INTEGER && t->integer == -1) {
			rv.string = true;
			rv.buf = r->str;
			rv.len = r->len;
		}
		count_verify(a, cache_verify(a, keys[i].key, keys[i].len, &rv), &keys[i]);
		freeReplyObject(t);
		freeReplyObject(r);
	}
	for (size_t i = 0; i < n; i++)
		free(keys[i].key);
	free(keys);
	return rc;
}

/* ------------------------------------------------------- hashes with a TTL */

/*
 * Mark a verified fill servable if it still is version ver: an HGETALL fill
 * (type 2) becomes a hash (1), a GET fill (3) a string (0).
 */
static bool cache_mark_verified(struct erb_entry *e, uint32_t ver, uint32_t *new_ver)
{
	uint32_t type;
	bool done = false;

	if (!erb_entry_trylock(e))
		return false;
	type = __atomic_load_n(&e->type, __ATOMIC_RELAXED);
	if (__atomic_load_n(&e->ver, __ATOMIC_ACQUIRE) == ver &&
	    __atomic_load_n(&e->state, __ATOMIC_RELAXED) == ERB_ENTRY_VALID &&
	    (type == TYPE_HASH_UNVERIFIED || type == TYPE_STRING_UNVERIFIED)) {
		__atomic_fetch_add(&e->ver, 1, __ATOMIC_ACQ_REL);
		__atomic_store_n(&e->type, type == TYPE_HASH_UNVERIFIED ? ERB_TYPE_HASH : ERB_TYPE_STRING,
				 __ATOMIC_RELEASE);
		*new_ver = __atomic_add_fetch(&e->ver, 1, __ATOMIC_ACQ_REL);
		done = true;
	}
	erb_entry_unlock(e);
	return done;
}

struct hash_check {
	uint32_t slot, ver;
	uint16_t type, klen;
	char key[ERB_KEY_MAX];
};

/* Check slot i again next round (busy or changing); too many: walk the cache. */
static void fill_again(struct agent *a, uint32_t i)
{
	if (a->nretry < FILL_RETRY_MAX)
		a->fill_retry[a->nretry++] = i;
	else
		a->fills_moved = true;
}

/*
 * A slot worth a PTTL: a hash or an unverified GET fill, valid, of this
 * cache generation, in a version not checked yet. Copies its key into *c.
 * An entry that was changing is checked again next round.
 */
static bool fill_candidate(struct agent *a, uint32_t i, uint32_t gen, struct hash_check *c)
{
	struct erb_entry *e = &a->cache[i];
	struct entry_view v;
	uint16_t type = __atomic_load_n(&e->type, __ATOMIC_RELAXED);

	if ((type != ERB_TYPE_HASH && type != TYPE_HASH_UNVERIFIED && type != TYPE_STRING_UNVERIFIED) ||
	    __atomic_load_n(&e->state, __ATOMIC_RELAXED) != ERB_ENTRY_VALID ||
	    __atomic_load_n(&e->gen, __ATOMIC_RELAXED) != gen ||
	    __atomic_load_n(&e->ver, __ATOMIC_RELAXED) == a->hash_ok[i])
		return false;
	if (!entry_read(e, &v)) {
		fill_again(a, i);		/* changing: again */
		return false;
	}
	if (v.state != ERB_ENTRY_VALID || v.gen != gen || v.klen < 1 || v.klen > ERB_KEY_MAX)
		return false;
	c->slot = i;
	c->ver = v.ver;
	c->type = __atomic_load_n(&e->type, __ATOMIC_RELAXED);
	c->klen = v.klen;
	memcpy(c->key, v.key, v.klen);
	return true;
}

/*
 * The slots of the fills queued since the last look (erb_global.fillq),
 * up to max. Outrun (more than ERB_FILLQ behind, or an entry already
 * overwritten): the cache is walked instead (a->fills_moved). An entry its
 * producer has not stored yet is read next round.
 */
static unsigned int fillq_read(struct agent *a, uint32_t gen, struct hash_check *c, unsigned int max)
{
	struct erb_global *g = a->global;
	uint32_t head = __atomic_load_n(&g->fillq_head, __ATOMIC_ACQUIRE);
	unsigned int m = 0;

	if (head == a->fillq_seen)
		return 0;
	a->fillq_active_until_ns = now_ns() + 1000000000ULL;
	if (head - a->fillq_seen > ERB_FILLQ) {
		if (!a->fills_moved)
			a->st.fill_walks++;
		a->fills_moved = true;
		a->fillq_seen = head;
		return 0;
	}
	while (a->fillq_seen != head && m < max) {
		uint32_t i = a->fillq_seen;
		uint64_t v = __atomic_load_n(&g->fillq[i & (ERB_FILLQ - 1)], __ATOMIC_ACQUIRE);

		if ((uint32_t)(v >> 32) != i)
			break;			/* its producer has not stored it yet: next round */
		a->fillq_seen = i + 1;
		if ((uint32_t)v < a->cache_entries && fill_candidate(a, (uint32_t)v, gen, &c[m]))
			m++;
	}
	return m;
}

/*
 * GET and HGETALL fills are served only once checked to have no TTL: ask
 * Redis the PTTL (pipelined, db 0) of the slots of the fills queued since
 * the last look (every HASH_SCAN_FAST_MS while fills come); no TTL keeps
 * the entry (and makes an unverified fill servable), a TTL or a missing key
 * deletes it. When the queue was outrun (or an entry was busy) the next
 * HASH_SCAN_CHUNK cache slots are walked for such entries as well, until
 * a full pass finds none left (and at start: fills made before it).
 * Returns -1 when the connection broke.
 */
static int hash_scan(struct agent *a)
{
	uint32_t gen = __atomic_load_n(&a->global->cache_gen, __ATOMIC_ACQUIRE);
	uint32_t n = a->cache_entries < HASH_SCAN_CHUNK ? a->cache_entries : HASH_SCAN_CHUNK;
	uint64_t t = now_ns();
	uint32_t retry[FILL_RETRY_MAX];
	unsigned int m = 0, nretry;
	struct hash_check *c;
	bool walk;
	int rc = 0;

	if (t - a->last_scan_ns < HASH_SCAN_FAST_MS * 1000000ULL)
		return 0;
	a->last_scan_ns = t;
	if (a->global->fillq_head == a->fillq_seen && !a->fills_moved && !a->nretry)
		return 0;
	c = malloc(INVAL_ROUND * sizeof(*c));
	if (!c)
		return 0;
	nretry = a->nretry;
	memcpy(retry, a->fill_retry, nretry * sizeof(*retry));
	a->nretry = 0;
	for (unsigned int k = 0; k < nretry; k++)
		if (fill_candidate(a, retry[k], gen, &c[m]))
			m++;
	m += fillq_read(a, gen, c + m, INVAL_ROUND - m);
	walk = a->fills_moved;
	for (uint32_t k = 0; a->fills_moved && k < n && m < INVAL_ROUND; k++) {
		uint32_t i = a->scan_pos;

		a->scan_pos = i + 1 == a->cache_entries ? 0 : i + 1;
		a->st.slots_walked++;
		if (!a->scan_pos)
			a->fills_moved = false;		/* a full pass since */
		if (fill_candidate(a, i, gen, &c[m]))
			m++;
	}
	if (walk && m == INVAL_ROUND)
		a->fills_moved = true;		/* the chunk was cut short */
	if (m && select_db0(a))
		rc = -1;
	for (unsigned int i = 0; i < m && !rc; i++) {
		const char *argv[] = { "PTTL", c[i].key };
		size_t lens[] = { 4, c[i].klen };

		if (redisAppendCommandArgv(a->apply, 2, argv, lens) != REDIS_OK)
			rc = -1;
	}
	for (unsigned int i = 0; i < m && !rc; i++) {
		struct erb_entry *e = &a->cache[c[i].slot];
		redisReply *r;
		uint32_t ver = c[i].ver;

		if (get_reply(a->apply, &r) != REDIS_OK) {
			log_warn("Redis PTTL (hash check): %s", a->apply->errstr);
			rc = -1;
			break;
		}
		if (r->type == REDIS_REPLY_INTEGER && r->integer == -1) {
			if (c[i].type == ERB_TYPE_HASH || cache_mark_verified(e, ver, &ver)) {
				a->hash_ok[c[i].slot] = ver;
				if (c[i].type == TYPE_STRING_UNVERIFIED)
					a->st.get_verified++;
				else
					a->st.hash_verified++;
			} else {
				fill_again(a, c[i].slot);	/* busy or changed: again */
			}
		} else if (r->type == REDIS_REPLY_INTEGER) {
			/* a TTL (Redis expires it unseen by XDP hits) or gone */
			switch (cache_delete(a, e, ver)) {
			case DEL_DONE:
				if (c[i].type == TYPE_STRING_UNVERIFIED)
					a->st.get_deleted++;
				else
					a->st.hash_deleted++;
				break;
			case DEL_BUSY: fill_again(a, c[i].slot); break;	/* again next round */
			case DEL_CHANGED: break;
			}
		} else {
			fill_again(a, c[i].slot);
		}
		freeReplyObject(r);
	}
	free(c);
	return rc;
}

static int process_invalidations(struct agent *a)
{
	if (a->flush_pending) {
		for (size_t i = 0; i < a->inval.n; i++)
			free(a->inval.v[i].key);
		a->inval.n = 0;
		a->flush_pending = !cache_flush(a, a->connected_once ? "flush or reconnect" : "start");
		a->connected_once = true;
	}
	if (verify_round(a))
		return -1;
	return hash_scan(a);
}

/* -------------------------------------------------------------------- apply */

/* Queue SELECT/SET for slots [from, n); returns the number of replies expected. */
static int send_from(struct agent *a, unsigned int from, unsigned int *nexp)
{
	unsigned int m = 0;

	for (unsigned int i = from; i < a->batch.n; i++) {
		struct slot *s = &a->batch.slots[i];
		const char *argv[3] = { "SET" };
		size_t lens[3] = { 3 };

		if (!s->rec || s->bad)
			continue;
		if (s->rec->db >= a->databases) {
			s->bad = true;
			a->st.errors++;
			a->st.bad_records++;
			log_err("record seq %llu: db %u, Redis has %u databases; NOT applied",
				(unsigned long long)s->seq, s->rec->db, a->databases);
			continue;
		}
		if ((int)s->rec->db != a->cur_db) {
			if (append_select(a, s->rec->db))
				return -1;
			a->exp[m++] = (struct expect){ EXP_SELECT, i };
		}
		argv[1] = s->rec->key;
		lens[1] = s->rec->klen;
		argv[2] = s->rec->val;
		lens[2] = s->rec->vlen;
		if (redisAppendCommandArgv(a->apply, 3, argv, lens) != REDIS_OK) {
			log_err("cannot queue SET: %s", a->apply->errstr);
			return -1;
		}
		a->exp[m++] = (struct expect){ EXP_SET, i };
	}
	*nexp = m;
	return 0;
}

enum round_result { ROUND_DONE, ROUND_BROKEN, ROUND_RETRY };

struct round {
	unsigned int acked;		/* slots [0, acked) acknowledged */
	int retry_at;			/* first slot to send again, -1 none */
	bool broken;
};

static void ack_upto(struct round *rd, unsigned int slot)
{
	if (rd->retry_at < 0 && slot + 1 > rd->acked)
		rd->acked = slot + 1;
}

static void on_set_reply(struct agent *a, struct round *rd, const struct slot *s, unsigned int i,
			 const redisReply *r)
{
	if (reply_ok(r)) {
		if (rd->retry_at < 0)
			hist_add(&a->st.delay_us, (now_ns() - a->batch.read_ns) / 1000);
		ack_upto(rd, i);
		return;
	}
	if (r->type == REDIS_REPLY_ERROR && retryable_error(r->str)) {
		a->st.retries++;
		/* not authenticated (any more): AUTH again, on a new session */
		if (!strncmp(r->str, "NOAUTH", 6))
			a->reconnect = true;
		if (rd->retry_at < 0) {
			log_warn("Redis refused SET of seq %llu: %s; will send it again",
				 (unsigned long long)s->seq, r->str);
			rd->retry_at = (int)i;
		}
		return;
	}
	a->st.errors++;
	log_err("Redis error applying seq %llu (db %u, key of %u bytes): %s; the write was "
		"acknowledged to a client and is NOT in Redis", (unsigned long long)s->seq, s->rec->db,
		s->rec->klen, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply type");
	ack_upto(rd, i);
}

static void on_select_reply(struct agent *a, struct round *rd, unsigned int i, const redisReply *r)
{
	if (reply_ok(r))
		return;
	a->st.errors++;
	log_err("SELECT for seq %llu failed: %s; sending from there again",
		(unsigned long long)a->batch.slots[i].seq, r->type == REDIS_REPLY_ERROR ? r->str : "?");
	a->cur_db = -1;
	if (rd->retry_at < 0)
		rd->retry_at = (int)i;
}

/* One send/receive round for slots [from, n). */
static enum round_result apply_round(struct agent *a, unsigned int from, unsigned int *acked)
{
	struct round rd = { .acked = from, .retry_at = -1 };
	unsigned int nexp = 0, e = 0;

	if (send_from(a, from, &nexp))
		return ROUND_BROKEN;
	for (unsigned int i = from; i < a->batch.n; i++) {
		/* consume the replies of slot i (if any), then mark reply-less slots */
		for (; e < nexp && a->exp[e].slot == i; e++) {
			redisReply *r;

			if (get_reply(a->apply, &r) != REDIS_OK) {
				log_warn("Redis connection lost while applying: %s", a->apply->errstr);
				*acked = rd.acked;
				return ROUND_BROKEN;
			}
			if (a->exp[e].kind == EXP_SELECT)
				on_select_reply(a, &rd, i, r);
			else
				on_set_reply(a, &rd, &a->batch.slots[i], i, r);
			freeReplyObject(r);
		}
		if ((!a->batch.slots[i].rec || a->batch.slots[i].bad))
			ack_upto(&rd, i);
	}
	*acked = rd.acked;
	return rd.retry_at < 0 ? ROUND_DONE : ROUND_RETRY;
}

static bool apply_batch(struct agent *a)
{
	unsigned int backoff = 0;

	while (a->batch.done < a->batch.n) {
		unsigned int acked = a->batch.done;
		enum round_result res;

		if (!a->apply && !session_ensure(a))
			return false;
		res = apply_round(a, a->batch.done, &acked);
		batch_commit(a, acked);
		if (res == ROUND_BROKEN) {
			session_close(a);
			continue;
		}
		if (res == ROUND_RETRY) {
			maybe_write_stats(a);
			backoff = backoff_next(backoff);
			sleep_ms(backoff);
			if (stop_requested)
				return false;
			if (a->reconnect) {
				a->reconnect = false;
				session_close(a);
			}
		}
	}
	a->st.batches++;
	return true;
}

/* -------------------------------------------------------------------- stats */

static void write_stats(struct agent *a)
{
	char tmp[PATH_MAX], buf[2048];
	uint64_t applied = load_applied(a), wseq = load_write_seq(a);
	const struct stats *s = &a->st;
	int fd, n;

	if (!a->opt.stats_file)
		return;
	n = snprintf(buf, sizeof(buf),
		     "{\"pid\":%d,\"uptime_s\":%.1f,\"redis_connected\":%s,\"applied\":%llu,"
		     "\"batches\":%llu,\"records_per_batch\":%.2f,\"applied_seq\":%llu,\"write_seq\":%llu,"
		     "\"lag_records\":%llu,\"apply_delay_us\":{\"p50\":%llu,\"p99\":%llu,\"p999\":%llu,"
		     "\"max\":%llu,\"count\":%llu},\"invalidations_received\":%llu,"
		     "\"invalidations_applied\":%llu,\"invalidations_kept\":%llu,"
		     "\"invalidations_not_cached\":%llu,\"invalidations_queued\":%zu,\"flushes\":%llu,"
		     "\"cache_gen\":%u,\"errors\":%llu,\"bad_records\":%llu,\"retries\":%llu,"
		     "\"reconnects\":%llu,\"redis_restarts\":%llu,\"epoch_bumps\":%llu,"
		     "\"hash_verified\":%llu,\"hash_deleted\":%llu,\"get_verified\":%llu,\"get_deleted\":%llu,"
		     "\"fill_walks\":%llu,\"slots_walked\":%llu,"
		     "\"parked\":%llu,\"replayed\":%llu,"
		     "\"replay_expired\":%llu,\"replay_copies\":%llu,\"replay_dropped\":%llu,\"replay_queued\":%u}\n",
		     getpid(), (double)(now_ns() - a->started_ns) / 1e9, a->apply ? "true" : "false",
		     (unsigned long long)s->applied, (unsigned long long)s->batches,
		     s->batches ? (double)s->applied / (double)s->batches : 0.0,
		     (unsigned long long)applied, (unsigned long long)wseq,
		     (unsigned long long)(wseq > applied ? wseq - applied : 0),
		     (unsigned long long)hist_percentile(&s->delay_us, 0.50),
		     (unsigned long long)hist_percentile(&s->delay_us, 0.99),
		     (unsigned long long)hist_percentile(&s->delay_us, 0.999),
		     (unsigned long long)s->delay_us.max, (unsigned long long)s->delay_us.total,
		     (unsigned long long)s->inval_received, (unsigned long long)s->inval_applied,
		     (unsigned long long)s->inval_kept, (unsigned long long)s->inval_not_cached,
		     a->inval.n, (unsigned long long)s->flushes,
		     __atomic_load_n(&a->global->cache_gen, __ATOMIC_RELAXED),
		     (unsigned long long)s->errors, (unsigned long long)s->bad_records,
		     (unsigned long long)s->retries, (unsigned long long)s->reconnects,
		     (unsigned long long)s->redis_restarts, (unsigned long long)s->epoch_bumps,
		     (unsigned long long)s->hash_verified, (unsigned long long)s->hash_deleted,
		     (unsigned long long)s->get_verified, (unsigned long long)s->get_deleted,
		     (unsigned long long)s->fill_walks, (unsigned long long)s->slots_walked,
		     (unsigned long long)s->parked, (unsigned long long)s->replayed,
		     (unsigned long long)s->replay_expired, (unsigned long long)s->replay_copies,
		     (unsigned long long)s->replay_dropped, a->park.n);
	snprintf(tmp, sizeof(tmp), "%s.tmp", a->opt.stats_file);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		log_warn("stats file %s: %s", tmp, strerror(errno));
		return;
	}
	if (write(fd, buf, (size_t)n) != n || close(fd)) {
		log_warn("stats file %s: write failed: %s", tmp, strerror(errno));
		unlink(tmp);
		return;
	}
	if (rename(tmp, a->opt.stats_file)) {
		log_warn("stats file %s: %s", a->opt.stats_file, strerror(errno));
		unlink(tmp);
	}
}

static void maybe_write_stats(struct agent *a)
{
	uint64_t t = now_ns();

	if (reopen_log) {
		reopen_log = 0;
		log_open();
	}
	if (t - a->last_stats_ns >= 1000000000ULL) {
		a->last_stats_ns = t;
		write_stats(a);
	}
}

static bool session_ensure(struct agent *a)
{
	unsigned int backoff = 0;

	while (!stop_requested && !a->path_changed) {
		if (session_open(a) == 0) {
			if (a->connected_once)
				a->st.reconnects++;
			if (a->connect_failures)
				log_info("connected to Redis after %u failed attempts", a->connect_failures);
			else
				log_info("connected to Redis");
			a->connect_failures = 0;
			return true;
		}
		session_close(a);
		if (a->path_changed)
			break;
		a->connect_failures++;
		maybe_write_stats(a);
		backoff = backoff_next(backoff);
		sleep_ms(backoff);
	}
	return false;
}

/* ---------------------------------------------------------------- main loop */

static void on_signal(int sig)
{
	if (sig == SIGHUP)
		reopen_log = 1;
	else
		stop_requested = 1;
}

static int install_signals(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL) || sigaction(SIGHUP, &sa, NULL))
		return -1;
	sa.sa_handler = SIG_IGN;
	return sigaction(SIGPIPE, &sa, NULL);
}

static int wait_events(struct agent *a, int timeout_ms)
{
	struct epoll_event ev[4];
	int n = epoll_wait(a->epfd, ev, 4, timeout_ms);

	if (n < 0 && errno != EINTR) {
		log_err("epoll_wait: %s", strerror(errno));
		return -1;
	}
	for (int i = 0; i < n; i++)
		if (a->sub && ev[i].data.fd == a->sub->fd && read_invalidations(a))
			session_close(a);
	return 0;
}

/*
 * Are the pins still the maps this agent opened? ERB detached (pins gone) or
 * detached and attached again (new maps) outside the role leaves this agent
 * on maps nothing writes any more: once it has applied what their ring holds
 * it must exit, so that a restart opens the new ones (or none). Checked once
 * a second; a pin it cannot read for another reason counts as unchanged.
 */
static bool maps_replaced(struct agent *a)
{
	struct bpf_map_info info;
	__u32 len = sizeof(info);
	uint64_t t = now_ns();
	bool replaced;
	int fd;

	if (t - a->last_pin_check_ns < 1000000000ULL)
		return false;
	a->last_pin_check_ns = t;
	fd = open_pin_optional(a, "map_erb_global");
	if (fd < 0)
		return errno == ENOENT;
	memset(&info, 0, sizeof(info));
	replaced = !bpf_obj_get_info_by_fd(fd, &info, &len) && info.id != a->global_id;
	close(fd);
	return replaced;
}

/* Nothing of the ring left to apply (the ring path; the batch is applied by now). */
static bool ring_drained(struct agent *a)
{
	return a->rmod || a->kmod || __atomic_load_n(a->ring.consumer_pos, __ATOMIC_ACQUIRE) ==
		__atomic_load_n(a->ring.producer_pos, __ATOMIC_ACQUIRE);
}

static int run(struct agent *a)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = -1 };

	ev.data.fd = a->ring.fd;
	if (!a->rmod && epoll_ctl(a->epfd, EPOLL_CTL_ADD, a->ring.fd, &ev)) {
		log_err("epoll on the ring buffer: %s", strerror(errno));
		return EXIT_RUNTIME;
	}
	ev.data.fd = a->park.ring.fd;
	if (a->park.ring.fd >= 0 && epoll_ctl(a->epfd, EPOLL_CTL_ADD, a->park.ring.fd, &ev)) {
		log_err("epoll on erb_parked: %s", strerror(errno));
		return EXIT_RUNTIME;
	}
	while (!stop_requested) {
		unsigned int n;

		if (kmod_io_path(a) != a->kmod) {
			/* what the ring holds and what applied_seq means changed */
			log_info("I/O path changed to %s: exiting so that a restart rebuilds applied_seq",
				 a->kmod ? "the ring buffer" : "erb_io");
			return EXIT_RUNTIME;
		}
		if (rmod_io_path(a) != a->rmod) {
			log_info("I/O path changed to %s: exiting so that a restart %s", a->rmod ?
				 "this agent (erb_redis unloaded or its Redis gone)" : "erb_redis in redis-server",
				 a->rmod ? "rebuilds applied_seq and drains the ring" : "only assists");
			return EXIT_RUNTIME;
		}
		if (!a->apply && !session_ensure(a))
			break;
		n = a->rmod ? 0 : ring_read_batch(a);
		if (n && !apply_batch(a))
			break;
		park_read(a);
		park_replay(a);
		/* parked segments wait for applied_seq: erb_io's moves unseen, so poll */
		if (wait_events(a, n || a->inval.n || a->flush_pending ? 0 :
				a->park.n ? 1 : a->fills_moved || a->nretry || now_ns() < a->fillq_active_until_ns ?
				HASH_SCAN_FAST_MS : 200))
			return EXIT_RUNTIME;
		if (a->apply && process_invalidations(a))
			session_close(a);
		maybe_write_stats(a);
		if (maps_replaced(a)) {
			if (ring_drained(a)) {
				log_info("ERB's maps in %s were removed or replaced (ERB detached, or attached "
					 "again)%s; exiting so that a restart opens the maps there now",
					 a->opt.pin_dir, a->rmod || a->kmod ? "" :
					 ": every record of the old ring applied");
				write_stats(a);
				return EXIT_RUNTIME;
			}
			a->last_pin_check_ns = 0;	/* look again on the next turn */
		}
	}
	return a->path_changed ? EXIT_RUNTIME : 0;
}

/* ---------------------------------------------------------------- lifecycle */

static int daemonize(void)
{
	pid_t pid = fork();
	int fd;

	if (pid < 0)
		return -1;
	if (pid > 0)
		_exit(0);
	if (setsid() < 0)
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid > 0)
		_exit(0);
	if (chdir("/"))
		return -1;
	fd = open("/dev/null", O_RDWR);
	if (fd < 0)
		return -1;
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
	return 0;
}

static int write_pidfile(const char *path)
{
	char tmp[PATH_MAX], buf[32];
	int fd, n;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		log_err("pidfile %s: %s", tmp, strerror(errno));
		return -1;
	}
	n = snprintf(buf, sizeof(buf), "%d\n", getpid());
	if (write(fd, buf, (size_t)n) != n || close(fd) || rename(tmp, path)) {
		log_err("pidfile %s: %s", path, strerror(errno));
		unlink(tmp);
		return -1;
	}
	return 0;
}

static int agent_init(struct agent *a)
{
	a->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (a->epfd < 0) {
		log_err("epoll_create1: %s", strerror(errno));
		return -1;
	}
	a->batch.cap = a->opt.batch;
	a->batch.slots = calloc(a->batch.cap, sizeof(*a->batch.slots));
	a->exp = calloc(2 * (size_t)a->batch.cap, sizeof(*a->exp));
	if (!a->batch.slots || !a->exp) {
		log_err("out of memory for a batch of %u", a->batch.cap);
		return -1;
	}
	a->cur_db = -1;
	a->started_ns = now_ns();
	return 0;
}

int main(int argc, char **argv)
{
	static struct agent agent;
	struct agent *a = &agent;
	int rc;

	if (parse_options(argc, argv, &a->opt))
		return EXIT_CONFIG;
	if (log_open())
		return EXIT_CONFIG;
	if (install_signals() || agent_init(a))
		return EXIT_RUNTIME;
	rc = open_maps(a);
	if (rc)
		return rc == -EXIT_LOCKED ? EXIT_LOCKED : EXIT_CONFIG;
	if (a->opt.daemon && daemonize()) {
		log_err("cannot daemonize: %s", strerror(errno));
		return EXIT_RUNTIME;
	}
	if (a->opt.pidfile && write_pidfile(a->opt.pidfile))
		return EXIT_RUNTIME;
	a->kmod = kmod_io_path(a);
	a->rmod = !a->kmod && rmod_io_path(a);
	if (!a->kmod && !a->rmod && recover_progress(a))
		return EXIT_RUNTIME;
	log_info("started: pin dir %s, batch %u, ring %llu bytes, I/O path %s", a->opt.pin_dir,
		 a->opt.batch, (unsigned long long)a->ring.size,
		 a->kmod ? "erb_io (this agent only invalidates)" :
		 a->rmod ? "erb_redis in redis-server (this agent only assists)" : "ring buffer");
	rc = run(a);
	if (!a->kmod && !a->rmod)
		publish_applied(a, a->trk.base);
	write_stats(a);
	session_close(a);
	if (a->opt.pidfile)
		unlink(a->opt.pidfile);
	log_info("stopped: applied_seq %llu, write_seq %llu, %llu records left in the ring for the "
		 "next agent", (unsigned long long)load_applied(a), (unsigned long long)load_write_seq(a),
		 (unsigned long long)(load_write_seq(a) > load_applied(a) ? load_write_seq(a) - load_applied(a) : 0));
	return rc;
}
