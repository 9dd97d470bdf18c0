// SPDX-License-Identifier: GPL-3.0-or-later
/*
 * loadgen: a YCSB-style closed-loop load generator for Redis, records as hashes.
 *
 * N connections over epoll (split over --threads threads), one outstanding
 * request per connection. A read is HGETALL <key>, an update (and a load) is
 * HMSET <key> field0 <v> ... field<F-1> <v>. Keys are "<prefix>%012lu" of
 * record numbers 0..records-1, chosen uniformly or by YCSB's zipfian generator
 * (Gray et al., "Quickly generating billion-record synthetic databases"), the
 * rank then mapped to a record by a fixed permutation (a*rank+b mod records)
 * so that the hot records are spread over the key space, as YCSB's scrambled
 * zipfian does (a permutation keeps the popularity curve exact).
 *
 * Every reply is checked as RESP2 and against what the command must return:
 * HMSET exactly +OK; HGETALL an array of 2*fields bulk strings, names field<i>,
 * values of --field-len bytes of the generator's alphabet; an empty array is a
 * record not found (counted apart). Error replies, replies of the wrong shape
 * and malformed RESP are counted as errors; a malformed reply closes its
 * connection (the stream cannot be resynchronised).
 *
 * Modes: --load (HMSET every record once), --scan (HGETALL every record once),
 * else a timed run (--warmup then --seconds). Prints one JSON line; exits 0,
 * or 3 when any error was counted, 1 on bad usage or when nothing connects.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HIST_US		100000		/* 1 us buckets up to 100 ms, slower in the last */
#define MAX_FIELDS	64
#define MAX_FIELD_LEN	65536
#define BULK_MAX	(512L * 1024 * 1024)
#define DEPTH_MAX	8
#define ALPHABET	"abcdefghijklmnopqrstuvwxyz0123456789"

enum mode { MODE_RUN, MODE_LOAD, MODE_SCAN };
enum kind { K_READ, K_UPDATE };

struct opts {
	const char *host;
	const char *port;
	const char *unix_path;
	const char *prefix;
	int conns;
	int threads;
	double seconds;
	double warmup;
	uint64_t records;
	double read_ratio;
	int zipfian;
	double theta;
	int fields;
	int field_len;
	enum mode mode;
	uint64_t seed;
};

static struct opts o = {
	.host = "127.0.0.1", .port = "6379", .prefix = "user", .conns = 50,
	.threads = 1, .seconds = 10, .warmup = 1, .records = 10000,
	.read_ratio = 0.95, .theta = 0.99, .fields = 4, .field_len = 32,
	.seed = 1,
};

/* shared by the threads */
static uint64_t next_record;		/* --load / --scan: the next record to issue */
static uint64_t t_begin, t_measure, t_end;	/* ns, CLOCK_MONOTONIC */

struct zipf {
	uint64_t n;
	double theta, alpha, zetan, eta, half_pow;
};

static struct zipf zg;
static uint64_t perm_a, perm_b;

struct hist {
	uint64_t b[HIST_US + 1];
	uint64_t n, sum_ns, max_ns;
};

struct counts {
	uint64_t reads, updates, notfound;
	uint64_t err_replies, bad_replies, malformed, io_errors, conns_lost;
};

struct conn {
	int fd;
	int dead;
	int want_out;
	enum kind kind;
	uint64_t start_ns;
	char *out;
	size_t out_len, out_off;
	char *in;
	size_t in_len, in_cap;
};

struct thread {
	pthread_t tid;
	int idx;
	int nconns;
	struct conn *conns;
	int ep;
	uint64_t rng;
	int outstanding;
	struct hist *h_read, *h_update;
	struct counts c;
	int failed;		/* could not connect */
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rnd(uint64_t *s)		/* xorshift64* */
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

static double rnd01(uint64_t *s)
{
	return (double)(rnd(s) >> 11) * (1.0 / 9007199254740992.0);
}

static double zeta(uint64_t n, double theta)
{
	double sum = 0;
	uint64_t i;

	for (i = 1; i <= n; i++)
		sum += 1.0 / pow((double)i, theta);
	return sum;
}

static void zipf_init(struct zipf *z, uint64_t n, double theta)
{
	double zeta2 = zeta(2, theta);

	z->n = n;
	z->theta = theta;
	z->zetan = zeta(n, theta);
	z->alpha = 1.0 / (1.0 - theta);
	z->eta = (1.0 - pow(2.0 / (double)n, 1.0 - theta)) / (1.0 - zeta2 / z->zetan);
	z->half_pow = 1.0 + pow(0.5, theta);
}

/* rank 0 is the most popular */
static uint64_t zipf_next(const struct zipf *z, uint64_t *s)
{
	double u = rnd01(s);
	double uz = u * z->zetan;
	uint64_t r;

	if (uz < 1.0)
		return 0;
	if (uz < z->half_pow)
		return 1;
	r = (uint64_t)((double)z->n * pow(z->eta * u - z->eta + 1.0, z->alpha));
	return r < z->n ? r : z->n - 1;
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t t = a % b;

		a = b;
		b = t;
	}
	return a;
}

static void perm_init(uint64_t n)
{
	perm_a = 2654435761u % n;
	if (perm_a == 0)
		perm_a = 1;
	while (gcd(perm_a, n) != 1)
		perm_a++;
	perm_b = n / 3;
}

static uint64_t choose_record(struct thread *t)
{
	uint64_t r;

	if (!o.zipfian)
		return rnd(&t->rng) % o.records;
	r = zipf_next(&zg, &t->rng);
	return (perm_a * r + perm_b) % o.records;	/* records < 2^32: no overflow */
}

/* ---- RESP2 ---- */

/* index of the '\r' of the first CRLF at or after p, -1 incomplete, -2 malformed */
static long line_end(const char *p, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++) {
		if (p[i] == '\n')
			return -2;
		if (p[i] == '\r') {
			if (i + 1 == len)
				return -1;
			return p[i + 1] == '\n' ? (long)i : -2;
		}
	}
	return -1;
}

/* a strict decimal integer of p[0..n); 0 on success */
static int parse_int(const char *p, size_t n, long *v)
{
	size_t i = 0;
	int neg = 0;
	long x = 0;

	if (n > 0 && p[0] == '-') {
		neg = 1;
		i = 1;
	}
	if (i == n || n - i > 18)
		return -1;
	for (; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		x = x * 10 + (p[i] - '0');
	}
	*v = neg ? -x : x;
	return 0;
}

/* bytes of one complete RESP2 value at p, 0 if incomplete, -1 if malformed */
static long resp_skip(const char *p, size_t len, int depth)
{
	long e, n, used, k, i;

	if (len == 0)
		return 0;
	e = line_end(p + 1, len - 1);
	if (e == -1)
		return 0;
	if (e < 0)
		return -1;
	used = 1 + e + 2;
	switch (p[0]) {
	case '+':
	case '-':
		return used;
	case ':':
		return parse_int(p + 1, e, &n) ? -1 : used;
	case '$':
		if (parse_int(p + 1, e, &n) || n < -1 || n > BULK_MAX)
			return -1;
		if (n == -1)
			return used;
		if ((size_t)(used + n + 2) > len)
			return 0;
		if (p[used + n] != '\r' || p[used + n + 1] != '\n')
			return -1;
		return used + n + 2;
	case '*':
		if (parse_int(p + 1, e, &n) || n < -1 || depth >= DEPTH_MAX)
			return -1;
		for (i = 0; i < n; i++) {
			k = resp_skip(p + used, len - used, depth + 1);
			if (k <= 0)
				return k;
			used += k;
		}
		return used;
	default:
		return -1;
	}
}

/* the bulk string at *p (within a complete value): its bytes and length */
static int bulk_at(const char **p, const char **s, long *n)
{
	long e = line_end(*p + 1, SIZE_MAX >> 1);

	if ((*p)[0] != '$' || e < 0 || parse_int(*p + 1, e, n) || *n < 0)
		return -1;
	*s = *p + 1 + e + 2;
	*p = *s + *n + 2;
	return 0;
}

enum outcome { RP_OK, RP_NOTFOUND, RP_ERR_REPLY, RP_BAD };

/* a complete RESP2 value v[0..n): is it what the command must return? */
static enum outcome check_reply(enum kind kind, const char *v, long n)
{
	const char *p, *s;
	long cnt, len, i, j, f;
	unsigned long seen = 0;
	char *endp;

	if (v[0] == '-')
		return RP_ERR_REPLY;
	if (kind == K_UPDATE)
		return (n == 5 && memcmp(v, "+OK\r\n", 5) == 0) ? RP_OK : RP_BAD;
	if (v[0] != '*')
		return RP_BAD;
	if (n == 4 && memcmp(v, "*0\r\n", 4) == 0)
		return RP_NOTFOUND;
	p = v + 1;
	cnt = strtol(p, &endp, 10);
	if (cnt != 2L * o.fields)
		return RP_BAD;
	p = endp + 2;
	for (i = 0; i < o.fields; i++) {
		if (bulk_at(&p, &s, &len) || len < 6 || len > 10 || memcmp(s, "field", 5))
			return RP_BAD;
		f = 0;
		for (j = 5; j < len; j++) {
			if (s[j] < '0' || s[j] > '9')
				return RP_BAD;
			f = f * 10 + (s[j] - '0');
		}
		if (f >= o.fields || (seen & (1ul << f)))
			return RP_BAD;
		seen |= 1ul << f;
		if (bulk_at(&p, &s, &len) || len != o.field_len)
			return RP_BAD;
		for (j = 0; j < len; j++)
			if (!memchr(ALPHABET, s[j], sizeof(ALPHABET) - 1))
				return RP_BAD;
	}
	return p == v + n ? RP_OK : RP_BAD;
}

/* ---- requests ---- */

static size_t put_bulk(char *p, const char *s, size_t n)
{
	size_t k = (size_t)sprintf(p, "$%zu\r\n", n);

	memcpy(p + k, s, n);
	memcpy(p + k + n, "\r\n", 2);
	return k + n + 2;
}

static void build_request(struct thread *t, struct conn *c, enum kind kind, uint64_t rec)
{
	char key[64], name[16], val[MAX_FIELD_LEN];
	size_t n, kl;
	int i, j;

	kl = (size_t)snprintf(key, sizeof(key), "%s%012llu", o.prefix, (unsigned long long)rec);
	if (kind == K_READ) {
		n = (size_t)sprintf(c->out, "*2\r\n");
		n += put_bulk(c->out + n, "HGETALL", 7);
		n += put_bulk(c->out + n, key, kl);
	} else {
		n = (size_t)sprintf(c->out, "*%d\r\n", 2 + 2 * o.fields);
		n += put_bulk(c->out + n, "HMSET", 5);
		n += put_bulk(c->out + n, key, kl);
		for (i = 0; i < o.fields; i++) {
			for (j = 0; j < o.field_len; j++)
				val[j] = ALPHABET[rnd(&t->rng) % (sizeof(ALPHABET) - 1)];
			n += put_bulk(c->out + n, name, (size_t)sprintf(name, "field%d", i));
			n += put_bulk(c->out + n, val, (size_t)o.field_len);
		}
	}
	c->out_len = n;
	c->out_off = 0;
	c->kind = kind;
}

static void conn_close(struct thread *t, struct conn *c, int lost)
{
	if (c->dead)
		return;
	c->dead = 1;
	epoll_ctl(t->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	t->outstanding--;
	if (lost)
		t->c.conns_lost++;
}

static void set_out_interest(struct thread *t, struct conn *c, int want)
{
	struct epoll_event ev = { .events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c };

	if (c->want_out == want)
		return;
	c->want_out = want;
	epoll_ctl(t->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void flush_out(struct thread *t, struct conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t k = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);

		if (k < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				set_out_interest(t, c, 1);
				return;
			}
			if (errno == EINTR)
				continue;
			t->c.io_errors++;
			conn_close(t, c, 1);
			return;
		}
		c->out_off += (size_t)k;
	}
	set_out_interest(t, c, 0);
}

/* issue the connection's next request; 0 when there is nothing more to do */
static int issue(struct thread *t, struct conn *c)
{
	uint64_t rec;
	enum kind kind;

	if (o.mode == MODE_RUN) {
		if (now_ns() >= t_end)
			return 0;
		rec = choose_record(t);
		kind = rnd01(&t->rng) < o.read_ratio ? K_READ : K_UPDATE;
	} else {
		rec = __atomic_fetch_add(&next_record, 1, __ATOMIC_RELAXED);
		if (rec >= o.records)
			return 0;
		kind = o.mode == MODE_LOAD ? K_UPDATE : K_READ;
	}
	build_request(t, c, kind, rec);
	c->start_ns = now_ns();
	flush_out(t, c);
	return 1;
}

static void record(struct thread *t, struct conn *c, enum outcome r, uint64_t done)
{
	struct hist *h = c->kind == K_READ ? t->h_read : t->h_update;
	uint64_t lat = done - c->start_ns, us = lat / 1000;

	switch (r) {
	case RP_ERR_REPLY:
		t->c.err_replies++;
		return;
	case RP_BAD:
		t->c.bad_replies++;
		return;
	case RP_NOTFOUND:
	case RP_OK:
		break;
	}
	if (o.mode == MODE_RUN && c->start_ns < t_measure)
		return;		/* warm-up */
	if (r == RP_NOTFOUND)
		t->c.notfound++;
	if (c->kind == K_READ)
		t->c.reads++;
	else
		t->c.updates++;
	h->b[us < HIST_US ? us : HIST_US]++;
	h->n++;
	h->sum_ns += lat;
	if (lat > h->max_ns)
		h->max_ns = lat;
}

static void on_readable(struct thread *t, struct conn *c)
{
	long used;

	for (;;) {
		ssize_t k;

		if (c->in_cap - c->in_len < 4096) {
			c->in_cap *= 2;
			c->in = realloc(c->in, c->in_cap);
			if (!c->in) {
				perror("realloc");
				exit(1);
			}
		}
		k = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
		if (k == 0) {
			t->c.io_errors++;
			conn_close(t, c, 1);
			return;
		}
		if (k < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			if (errno == EINTR)
				continue;
			t->c.io_errors++;
			conn_close(t, c, 1);
			return;
		}
		c->in_len += (size_t)k;
	}
	if (c->in_len == 0)
		return;
	used = resp_skip(c->in, c->in_len, 0);
	if (used == 0)
		return;
	if (used < 0) {
		t->c.malformed++;
		conn_close(t, c, 1);
		return;
	}
	if ((size_t)used != c->in_len || c->out_off < c->out_len) {
		/* more than one reply to one request, or a reply before the request was sent */
		t->c.bad_replies++;
		conn_close(t, c, 1);
		return;
	}
	record(t, c, check_reply(c->kind, c->in, used), now_ns());
	c->in_len = 0;
	if (!issue(t, c))
		conn_close(t, c, 0);
}

static int dial(void)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res, *ai;
	int fd = -1, one = 1;

	if (o.unix_path) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };

		if (strlen(o.unix_path) >= sizeof(sa.sun_path))
			return -1;
		strcpy(sa.sun_path, o.unix_path);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
			if (fd >= 0)
				close(fd);
			return -1;
		}
		return fd;
	}
	if (getaddrinfo(o.host, o.port, &hints, &res))
		return -1;
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0)
			continue;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd >= 0)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

static void *thread_main(void *arg)
{
	struct thread *t = arg;
	struct epoll_event evs[64];
	size_t out_cap = 160 + (size_t)o.fields * (32 + (size_t)o.field_len);
	int i, n;

	t->ep = epoll_create1(EPOLL_CLOEXEC);
	if (t->ep < 0) {
		t->failed = 1;
		return NULL;
	}
	for (i = 0; i < t->nconns; i++) {
		struct conn *c = &t->conns[i];
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };

		c->fd = dial();
		c->out = malloc(out_cap);
		c->in_cap = 8192;
		c->in = malloc(c->in_cap);
		if (c->fd < 0 || !c->out || !c->in) {
			t->failed = 1;
			return NULL;
		}
		if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) ||
		    epoll_ctl(t->ep, EPOLL_CTL_ADD, c->fd, &ev)) {
			t->failed = 1;
			return NULL;
		}
		t->outstanding++;
	}
	for (i = 0; i < t->nconns; i++)
		if (!issue(t, &t->conns[i]))
			conn_close(t, &t->conns[i], 0);
	while (t->outstanding > 0) {
		n = epoll_wait(t->ep, evs, 64, 100);
		if (n < 0 && errno != EINTR) {
			perror("epoll_wait");
			exit(1);
		}
		for (i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;

			if (c->dead)
				continue;
			if (evs[i].events & EPOLLOUT)
				flush_out(t, c);
			if (!c->dead && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
				on_readable(t, c);
		}
		if (o.mode == MODE_RUN && now_ns() >= t_end + 1000000000ull) {
			/* a reply more than a second late after the end: leave it */
			for (i = 0; i < t->nconns; i++)
				conn_close(t, &t->conns[i], 0);
		}
	}
	close(t->ep);
	return NULL;
}

static double pct_us(const struct hist *h, double q)
{
	uint64_t want, acc = 0;
	long i;

	if (h->n == 0)
		return 0;
	want = (uint64_t)ceil(q * (double)h->n);
	if (want == 0)
		want = 1;
	for (i = 0; i <= HIST_US; i++) {
		acc += h->b[i];
		if (acc >= want)
			return i < HIST_US ? (double)(i + 1) : (double)h->max_ns / 1000.0;
	}
	return (double)h->max_ns / 1000.0;
}

static void usage(const char *argv0)
{
	fprintf(stderr,
		"usage: %s [--host H] [--port P | --unix PATH] [--conns N] [--threads T]\n"
		"          [--records R] [--fields F] [--field-len L] [--key-prefix S]\n"
		"          [--load | --scan | --read-ratio X --dist uniform|zipfian [--theta 0.99]\n"
		"           --seconds S [--warmup S]] [--seed N]\n", argv0);
	exit(1);
}

static double num(const char *s, const char *what)
{
	char *e;
	double v = strtod(s, &e);

	if (*s == '\0' || *e != '\0') {
		fprintf(stderr, "loadgen: bad %s: %s\n", what, s);
		exit(1);
	}
	return v;
}

static void parse_args(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "host", required_argument, NULL, 'H' },
		{ "port", required_argument, NULL, 'p' },
		{ "unix", required_argument, NULL, 'u' },
		{ "conns", required_argument, NULL, 'c' },
		{ "threads", required_argument, NULL, 'T' },
		{ "seconds", required_argument, NULL, 's' },
		{ "warmup", required_argument, NULL, 'w' },
		{ "records", required_argument, NULL, 'r' },
		{ "read-ratio", required_argument, NULL, 'R' },
		{ "dist", required_argument, NULL, 'd' },
		{ "theta", required_argument, NULL, 't' },
		{ "fields", required_argument, NULL, 'f' },
		{ "field-len", required_argument, NULL, 'l' },
		{ "key-prefix", required_argument, NULL, 'k' },
		{ "load", no_argument, NULL, 'L' },
		{ "scan", no_argument, NULL, 'S' },
		{ "seed", required_argument, NULL, 'e' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;

	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'H': o.host = optarg; break;
		case 'p': o.port = optarg; break;
		case 'u': o.unix_path = optarg; break;
		case 'c': o.conns = (int)num(optarg, "--conns"); break;
		case 'T': o.threads = (int)num(optarg, "--threads"); break;
		case 's': o.seconds = num(optarg, "--seconds"); break;
		case 'w': o.warmup = num(optarg, "--warmup"); break;
		case 'r': o.records = (uint64_t)num(optarg, "--records"); break;
		case 'R': o.read_ratio = num(optarg, "--read-ratio"); break;
		case 'd':
			if (!strcmp(optarg, "zipfian"))
				o.zipfian = 1;
			else if (!strcmp(optarg, "uniform"))
				o.zipfian = 0;
			else
				usage(argv[0]);
			break;
		case 't': o.theta = num(optarg, "--theta"); break;
		case 'f': o.fields = (int)num(optarg, "--fields"); break;
		case 'l': o.field_len = (int)num(optarg, "--field-len"); break;
		case 'k': o.prefix = optarg; break;
		case 'L': o.mode = MODE_LOAD; break;
		case 'S': o.mode = MODE_SCAN; break;
		case 'e': o.seed = (uint64_t)num(optarg, "--seed"); break;
		default: usage(argv[0]);
		}
	}
	if (optind != argc || o.conns < 1 || o.threads < 1 || o.threads > o.conns ||
	    o.records < 2 || o.records > (1ull << 32) || o.read_ratio < 0 || o.read_ratio > 1 ||
	    o.fields < 1 || o.fields > MAX_FIELDS || o.field_len < 1 || o.field_len > MAX_FIELD_LEN ||
	    strlen(o.prefix) > 32 || o.seconds <= 0 || o.warmup < 0 ||
	    (o.zipfian && (o.theta <= 0 || o.theta >= 1)))
		usage(argv[0]);
}

int main(int argc, char **argv)
{
	struct thread *ts;
	struct hist *all_r, *all_u, *all;
	struct counts c = { 0 };
	uint64_t errors, done_ns, ops;
	double elapsed;
	int i, k, per, failed = 0;

	parse_args(argc, argv);
	if (o.zipfian && o.mode == MODE_RUN)
		zipf_init(&zg, o.records, o.theta);
	perm_init(o.records);
	ts = calloc((size_t)o.threads, sizeof(*ts));
	all_r = calloc(1, sizeof(*all_r));
	all_u = calloc(1, sizeof(*all_u));
	all = calloc(1, sizeof(*all));
	if (!ts || !all_r || !all_u || !all) {
		perror("calloc");
		return 1;
	}
	t_begin = now_ns();
	t_measure = t_begin + (uint64_t)(o.warmup * 1e9);
	t_end = t_measure + (uint64_t)(o.seconds * 1e9);
	per = o.conns / o.threads;
	for (i = 0; i < o.threads; i++) {
		struct thread *t = &ts[i];

		t->idx = i;
		t->nconns = per + (i < o.conns % o.threads);
		t->conns = calloc((size_t)t->nconns, sizeof(*t->conns));
		t->h_read = calloc(1, sizeof(struct hist));
		t->h_update = calloc(1, sizeof(struct hist));
		t->rng = o.seed * 0x9E3779B97F4A7C15ull + (uint64_t)i * 0xBF58476D1CE4E5B9ull + 1;
		if (!t->conns || !t->h_read || !t->h_update) {
			perror("calloc");
			return 1;
		}
		if (pthread_create(&t->tid, NULL, thread_main, t)) {
			perror("pthread_create");
			return 1;
		}
	}
	for (i = 0; i < o.threads; i++)
		pthread_join(ts[i].tid, NULL);
	done_ns = now_ns();
	for (i = 0; i < o.threads; i++) {
		struct thread *t = &ts[i];
		struct hist *hs[2] = { t->h_read, t->h_update };
		struct hist *dst[2] = { all_r, all_u };

		failed |= t->failed;
		c.reads += t->c.reads;
		c.updates += t->c.updates;
		c.notfound += t->c.notfound;
		c.err_replies += t->c.err_replies;
		c.bad_replies += t->c.bad_replies;
		c.malformed += t->c.malformed;
		c.io_errors += t->c.io_errors;
		c.conns_lost += t->c.conns_lost;
		for (k = 0; k < 2; k++) {
			long b;

			for (b = 0; b <= HIST_US; b++) {
				dst[k]->b[b] += hs[k]->b[b];
				all->b[b] += hs[k]->b[b];
			}
			dst[k]->n += hs[k]->n;
			dst[k]->sum_ns += hs[k]->sum_ns;
			if (hs[k]->max_ns > dst[k]->max_ns)
				dst[k]->max_ns = hs[k]->max_ns;
		}
	}
	all->n = all_r->n + all_u->n;
	all->sum_ns = all_r->sum_ns + all_u->sum_ns;
	all->max_ns = all_r->max_ns > all_u->max_ns ? all_r->max_ns : all_u->max_ns;
	if (failed) {
		fprintf(stderr, "loadgen: cannot connect to %s\n",
			o.unix_path ? o.unix_path : o.host);
		return 1;
	}
	ops = c.reads + c.updates;
	elapsed = o.mode == MODE_RUN ? o.seconds : (double)(done_ns - t_begin) / 1e9;
	errors = c.err_replies + c.bad_replies + c.malformed + c.io_errors;
	printf("{\"mode\": \"%s\", \"conns\": %d, \"threads\": %d, \"records\": %llu, "
	       "\"fields\": %d, \"field_len\": %d, \"distribution\": \"%s\", \"theta\": %g, "
	       "\"read_ratio\": %g, \"seconds\": %.3f, \"ops\": %llu, \"ops_per_sec\": %.1f, "
	       "\"reads\": %llu, \"updates\": %llu, \"notfound\": %llu, \"errors\": %llu, "
	       "\"err_replies\": %llu, \"bad_replies\": %llu, \"malformed\": %llu, "
	       "\"io_errors\": %llu, \"conns_lost\": %llu, "
	       "\"avg_us\": %.1f, \"p50_us\": %.0f, \"p99_us\": %.0f, \"p999_us\": %.0f, "
	       "\"max_us\": %.0f, \"read_p99_us\": %.0f, \"update_p99_us\": %.0f}\n",
	       o.mode == MODE_RUN ? "run" : o.mode == MODE_LOAD ? "load" : "scan",
	       o.conns, o.threads, (unsigned long long)o.records, o.fields, o.field_len,
	       o.zipfian ? "zipfian" : "uniform", o.zipfian ? o.theta : 0.0, o.read_ratio,
	       elapsed, (unsigned long long)ops, elapsed > 0 ? (double)ops / elapsed : 0.0,
	       (unsigned long long)c.reads, (unsigned long long)c.updates,
	       (unsigned long long)c.notfound, (unsigned long long)errors,
	       (unsigned long long)c.err_replies, (unsigned long long)c.bad_replies,
	       (unsigned long long)c.malformed, (unsigned long long)c.io_errors,
	       (unsigned long long)c.conns_lost,
	       all->n ? (double)all->sum_ns / (double)all->n / 1000.0 : 0.0,
	       pct_us(all, 0.50), pct_us(all, 0.99), pct_us(all, 0.999),
	       (double)all->max_ns / 1000.0, pct_us(all_r, 0.99), pct_us(all_u, 0.99));
	return errors ? 3 : 0;
}
