// SPDX-License-Identifier: GPL-2.0-only
/*
 * erb_guest_runner: drives erb_kfunc_test.bpf.o with BPF_PROG_TEST_RUN and
 * talks RESP to Redis over a unix socket, inside the QEMU test guest.
 * Every observation is printed as "ERB-V <name> <value>" on stdout for the
 * host-side pytest to assert on; diagnostics go to stderr.
 *
 *   verify  OBJ USE_KMOD                   load the object (use_kmod 0 or 1)
 *   push    OBJ N PREFIX SEQ0 VLEN PASS HOLD_MS
 *           queue N records key=PREFIX<i>; a record refused as full is SET
 *           directly over unix socket PASS (the "pass to Redis" path) unless
 *           PASS is "-"; keep the program loaded HOLD_MS ms afterwards
 *   findfd  OBJ PID SUFFIX                 erb_find_fd() through XDP
 *   seq     OBJ                            erb_applied_seq() through XDP
 *   check   SOCK PREFIX N VLEN             GET every key, compare values
 *   dbsize  SOCK NAME
 *   setload SOCK N VLEN                    baseline: pipelined SETs, rate
 * Every Redis connection first sends AUTH $ERB_REDIS_AUTH when that is set.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "erb_record.h"

#define BTF_PATH "/sys/kernel/btf/erb_io"

struct erb_find_req {
	__u32 pid;
	char suffix[64];
};

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int print_libbpf(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	return vfprintf(stderr, fmt, ap);
}

static struct bpf_object *load_obj(const char *path, int use_kmod)
{
	struct bpf_object *obj;
	struct bpf_map *rodata;
	int err;

	if (use_kmod < 0)
		use_kmod = access(BTF_PATH, F_OK) == 0;
	obj = bpf_object__open_file(path, NULL);
	if (!obj) {
		fprintf(stderr, "open %s: %s\n", path, strerror(errno));
		return NULL;
	}
	rodata = bpf_object__find_map_by_name(obj, ".rodata");
	if (!rodata) {
		fprintf(stderr, "no .rodata in %s\n", path);
		goto fail;
	}
	/* .rodata holds only use_kmod */
	if (bpf_map__set_initial_value(rodata, &use_kmod, sizeof(__u32))) {
		fprintf(stderr, ".rodata of %s is not one __u32\n", path);
		goto fail;
	}
	err = bpf_object__load(obj);
	if (err) {
		fprintf(stderr, "load %s (use_kmod=%d): %s\n", path, use_kmod, strerror(-err));
		goto fail;
	}
	return obj;
fail:
	bpf_object__close(obj);
	return NULL;
}

static int prog_fd(struct bpf_object *obj, const char *name)
{
	struct bpf_program *p = bpf_object__find_program_by_name(obj, name);

	return p ? bpf_program__fd(p) : -1;
}

/* Run an XDP test program on data (len bytes); out gets data_out. */
static int test_run(int fd, void *data, __u32 len, void *out, __u32 *retval)
{
	LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = data, .data_size_in = len,
		    .data_out = out, .data_size_out = len, .repeat = 1);
	int err = bpf_prog_test_run_opts(fd, &o);

	*retval = o.retval;
	return err;
}

/* ---- RESP over a unix socket ---- */

/* AUTH with $ERB_REDIS_AUTH when it is set; 0 on +OK (or nothing to do). */
static int redis_auth(int fd)
{
	const char *pw = getenv("ERB_REDIS_AUTH");
	char cmd[512], c = 0;
	int n;

	if (!pw || !*pw)
		return 0;
	n = snprintf(cmd, sizeof(cmd), "*2\r\n$4\r\nAUTH\r\n$%zu\r\n%s\r\n", strlen(pw), pw);
	if (n <= 0 || n >= (int)sizeof(cmd) || write(fd, cmd, n) != n)
		return -1;
	/* "+OK\r\n", read byte by byte: nothing after it is consumed */
	if (read(fd, &c, 1) != 1 || c != '+')
		return -1;
	while (c != '\n')
		if (read(fd, &c, 1) != 1)
			return -1;
	return 0;
}

static int redis_connect(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	if (fd < 0)
		return -1;
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		fprintf(stderr, "connect %s: %s\n", path, strerror(errno));
		close(fd);
		return -1;
	}
	if (redis_auth(fd)) {
		fprintf(stderr, "AUTH on %s failed\n", path);
		close(fd);
		return -1;
	}
	return fd;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w <= 0)
			return -1;
		p += w;
		n -= w;
	}
	return 0;
}

/* Buffered reader for replies. */
struct rd {
	int fd;
	char buf[65536];
	size_t off, len;
};

static int rd_byte(struct rd *r)
{
	if (r->off == r->len) {
		ssize_t n = read(r->fd, r->buf, sizeof(r->buf));

		if (n <= 0)
			return -1;
		r->off = 0;
		r->len = n;
	}
	return (unsigned char)r->buf[r->off++];
}

/* Read one line (without CRLF) into line; returns its length or -1. */
static int rd_line(struct rd *r, char *line, int cap)
{
	int n = 0, c;

	while ((c = rd_byte(r)) >= 0) {
		if (c == '\n') {
			if (n && line[n - 1] == '\r')
				n--;
			line[n] = 0;
			return n;
		}
		if (n < cap - 1)
			line[n++] = c;
	}
	return -1;
}

/* Read a bulk reply; returns its length, -2 for nil, -1 on error. */
static int rd_bulk(struct rd *r, char *out, int cap)
{
	char line[64];
	int len, i, c;

	if (rd_line(r, line, sizeof(line)) < 0 || line[0] != '$')
		return -1;
	len = atoi(line + 1);
	if (len < 0)
		return -2;
	for (i = 0; i < len + 2; i++) {
		c = rd_byte(r);
		if (c < 0)
			return -1;
		if (i < len && i < cap)
			out[i] = c;
	}
	return len;
}

static size_t put_bulk(char *p, const char *s, size_t n)
{
	size_t o = sprintf(p, "$%zu\r\n", n);

	memcpy(p + o, s, n);
	o += n;
	p[o++] = '\r';
	p[o++] = '\n';
	return o;
}

static size_t put_set(char *p, const char *k, size_t kl, const char *v, size_t vl)
{
	size_t o = sprintf(p, "*3\r\n$3\r\nSET\r\n");

	o += put_bulk(p + o, k, kl);
	return o + put_bulk(p + o, v, vl);
}

/* ---- test data ---- */

static int make_key(char *k, const char *prefix, unsigned int i)
{
	return snprintf(k, ERB_KEY_MAX, "%s%u", prefix, i);
}

/* Binary-safe value: "<key>\r\n|" repeated, cut at vlen. */
static void make_val(char *v, const char *key, unsigned int vlen)
{
	char unit[ERB_KEY_MAX + 4];
	int ul = snprintf(unit, sizeof(unit), "%s\r\n|", key);
	unsigned int i;

	for (i = 0; i < vlen; i++)
		v[i] = unit[i % ul];
}

/* ---- commands ---- */

static int cmd_verify(const char *path, int use_kmod)
{
	struct bpf_object *obj = load_obj(path, use_kmod);

	printf("ERB-V verify_kmod%d %s\n", use_kmod, obj ? "ok" : "fail");
	bpf_object__close(obj);
	return obj ? 0 : 1;
}

static int pass_to_redis(int *fd, const char *sock, const struct erb_record *rec)
{
	static char buf[4096];
	char line[256];
	struct rd r;
	size_t n;

	if (*fd < 0)
		*fd = redis_connect(sock);
	if (*fd < 0)
		return -1;
	n = put_set(buf, rec->key, rec->klen, rec->val, rec->vlen);
	if (write_all(*fd, buf, n))
		return -1;
	r.fd = *fd;
	r.off = r.len = 0;
	/* one reply, read byte by byte through a fresh reader: exact framing */
	if (rd_line(&r, line, sizeof(line)) < 0 || strcmp(line, "+OK"))
		return -1;
	return 0;
}

static int cmd_push(const char *path, unsigned int n, const char *prefix,
		    unsigned long long seq0, unsigned int vlen, const char *pass,
		    unsigned int hold_ms)
{
	struct bpf_object *obj = load_obj(path, -1);
	unsigned int i, ok = 0, full = 0, err = 0, passed = 0, pass_fail = 0;
	static struct erb_record rec, out;
	int fd, rfd = -1;
	double t0;

	if (!obj)
		return 1;
	fd = prog_fd(obj, "erb_push");
	if (vlen > ERB_VAL_MAX)
		vlen = ERB_VAL_MAX;
	t0 = now_ms();
	for (i = 0; i < n; i++) {
		__u32 retval;
		__s32 ret;

		memset(&rec, 0, sizeof(rec));
		rec.version = ERB_RECORD_VERSION;
		rec.op = ERB_OP_SET;
		rec.seq = seq0 + i;
		rec.klen = make_key(rec.key, prefix, i);
		rec.vlen = vlen;
		make_val(rec.val, rec.key, vlen);
		if (test_run(fd, &rec, sizeof(rec), &out, &retval)) {
			fprintf(stderr, "test_run: %s\n", strerror(errno));
			err++;
			continue;
		}
		memcpy(&ret, &out, sizeof(ret));
		if (!ret && retval == XDP_TX) {
			ok++;
		} else if (ret == -28 && retval == XDP_PASS) {
			full++;
			if (strcmp(pass, "-")) {
				if (pass_to_redis(&rfd, pass, &rec))
					pass_fail++;
				else
					passed++;
			}
		} else {
			fprintf(stderr, "record %u: ret %d retval %u\n", i, ret, retval);
			err++;
		}
	}
	printf("ERB-V push_%s_ms %.1f\n", prefix, now_ms() - t0);
	printf("ERB-V push_%s_ok %u\nERB-V push_%s_full %u\nERB-V push_%s_err %u\n",
	       prefix, ok, prefix, full, prefix, err);
	printf("ERB-V push_%s_passed %u\nERB-V push_%s_pass_fail %u\n",
	       prefix, passed, prefix, pass_fail);
	fflush(stdout);
	if (rfd >= 0)
		close(rfd);
	if (hold_ms)
		usleep(hold_ms * 1000);
	bpf_object__close(obj);
	return 0;
}

static int cmd_findfd(const char *path, unsigned int pid, const char *suffix)
{
	struct bpf_object *obj = load_obj(path, -1);
	struct erb_find_req req = { .pid = pid }, out;
	__u32 retval;
	__s32 ret;

	if (!obj)
		return 1;
	snprintf(req.suffix, sizeof(req.suffix), "%s", suffix);
	if (test_run(prog_fd(obj, "erb_findfd"), &req, sizeof(req), &out, &retval))
		return 1;
	memcpy(&ret, &out, sizeof(ret));
	printf("ERB-V findfd %d\n", ret);
	bpf_object__close(obj);
	return 0;
}

static int cmd_seq(const char *path)
{
	struct bpf_object *obj = load_obj(path, -1);
	char in[64] = { 0 }, out[64];
	__u32 retval;
	__u64 seq;

	if (!obj)
		return 1;
	if (test_run(prog_fd(obj, "erb_seq"), in, sizeof(in), out, &retval))
		return 1;
	memcpy(&seq, out, sizeof(seq));
	printf("ERB-V applied_seq_kfunc %llu\n", (unsigned long long)seq);
	bpf_object__close(obj);
	return 0;
}

static int cmd_check(const char *sock, const char *prefix, unsigned int n,
		     unsigned int vlen)
{
	unsigned int i, j, ok = 0, missing = 0, bad = 0, chunk = 100;
	static char buf[65536], key[ERB_KEY_MAX + 1], want[ERB_VAL_MAX], got[ERB_VAL_MAX];
	static struct rd r;
	int fd = redis_connect(sock);

	if (fd < 0)
		return 1;
	r.fd = fd;
	for (i = 0; i < n; i += chunk) {
		size_t o = 0;
		unsigned int m = n - i < chunk ? n - i : chunk;

		for (j = 0; j < m; j++) {
			int kl = make_key(key, prefix, i + j);

			o += sprintf(buf + o, "*2\r\n$3\r\nGET\r\n");
			o += put_bulk(buf + o, key, kl);
		}
		if (write_all(fd, buf, o))
			return 1;
		for (j = 0; j < m; j++) {
			int len = rd_bulk(&r, got, sizeof(got));

			if (len == -1)
				return 1;
			make_key(key, prefix, i + j);
			make_val(want, key, vlen);
			if (len == -2)
				missing++;
			else if ((unsigned int)len == vlen && !memcmp(got, want, vlen))
				ok++;
			else
				bad++;
		}
	}
	printf("ERB-V check_%s_ok %u\nERB-V check_%s_missing %u\nERB-V check_%s_mismatch %u\n",
	       prefix, ok, prefix, missing, prefix, bad);
	close(fd);
	return 0;
}

static int cmd_dbsize(const char *sock, const char *name)
{
	static struct rd r;
	char line[64];
	int fd = redis_connect(sock);

	if (fd < 0) {
		printf("ERB-V %s -1\n", name);
		return 1;
	}
	r.fd = fd;
	if (write_all(fd, "*1\r\n$6\r\nDBSIZE\r\n", 16) || rd_line(&r, line, sizeof(line)) < 0)
		return 1;
	printf("ERB-V %s %s\n", name, line[0] == ':' ? line + 1 : "-1");
	close(fd);
	return 0;
}

static int cmd_setload(const char *sock, unsigned int n, unsigned int vlen)
{
	static char buf[1 << 20], key[ERB_KEY_MAX + 1], val[ERB_VAL_MAX], line[256];
	static struct rd r;
	unsigned int i, j, chunk = 64;
	int fd = redis_connect(sock);
	double t0;

	if (fd < 0)
		return 1;
	r.fd = fd;
	t0 = now_ms();
	for (i = 0; i < n; i += chunk) {
		unsigned int m = n - i < chunk ? n - i : chunk;
		size_t o = 0;

		for (j = 0; j < m; j++) {
			int kl = make_key(key, "base", i + j);

			make_val(val, key, vlen);
			o += put_set(buf + o, key, kl, val, vlen);
		}
		if (write_all(fd, buf, o))
			return 1;
		for (j = 0; j < m; j++)
			if (rd_line(&r, line, sizeof(line)) < 0 || strcmp(line, "+OK"))
				return 1;
	}
	printf("ERB-V baseline_ms %.1f\n", now_ms() - t0);
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	libbpf_set_print(print_libbpf);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 4 && !strcmp(argv[1], "verify"))
		return cmd_verify(argv[2], atoi(argv[3]));
	if (argc == 9 && !strcmp(argv[1], "push"))
		return cmd_push(argv[2], strtoul(argv[3], NULL, 0), argv[4],
				strtoull(argv[5], NULL, 0), strtoul(argv[6], NULL, 0),
				argv[7], strtoul(argv[8], NULL, 0));
	if (argc == 5 && !strcmp(argv[1], "findfd"))
		return cmd_findfd(argv[2], strtoul(argv[3], NULL, 0), argv[4]);
	if (argc == 3 && !strcmp(argv[1], "seq"))
		return cmd_seq(argv[2]);
	if (argc == 6 && !strcmp(argv[1], "check"))
		return cmd_check(argv[2], argv[3], strtoul(argv[4], NULL, 0),
				 strtoul(argv[5], NULL, 0));
	if (argc == 4 && !strcmp(argv[1], "dbsize"))
		return cmd_dbsize(argv[2], argv[3]);
	if (argc == 5 && !strcmp(argv[1], "setload"))
		return cmd_setload(argv[2], strtoul(argv[3], NULL, 0),
				   strtoul(argv[4], NULL, 0));
	fprintf(stderr, "usage: see the header of erb_guest_runner.c\n");
	return 2;
}
