// SPDX-License-Identifier: GPL-3.0-or-later
/*
 * bench/entry_miss: what the first touch of an ERB cache entry costs on this
 * machine, and what the entries' memory layout changes of it. Runs the three
 * programs of bench/bpf/entry_miss.bpf.c (base, flat, direct: see there) with
 * BPF_PROG_TEST_RUN on one CPU, two ways:
 *
 *   warm: 1,000,000 runs back to back (repeat), the loads of each run waiting
 *         for the run before: the key set's entries and page walks stay in the
 *         CPU's caches as far as they fit;
 *   cold: one run at a time, the CPU's caches and TLB swept before each (a
 *         buffer of --sweep-mb, default 64, read line by line): as a request
 *         finds them after the network stack, Redis and other requests ran
 *         (how much of them is still cached then is between the two).
 *
 * ns per run, medians of the rounds (warm) or of the runs (cold, programs
 * interleaved); the entry's cost is each program's figure minus base's.
 * Build and run (root): make -C bench entry_miss && bench/build/entry_miss
 *     [--keys N] [--cold-runs N] [--rounds N] [--sweep-mb N] [--cpu N] [--json FILE] [--object FILE]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#define SLOTS		65536
#define NPROG		3

static const char *const progs[NPROG] = { "base", "flat", "direct" };

static int cmp_u32(const void *a, const void *b)
{
	unsigned int x = *(const unsigned int *)a, y = *(const unsigned int *)b;

	return x < y ? -1 : x > y;
}

static unsigned int median(unsigned int *v, int n)
{
	qsort(v, n, sizeof(*v), cmp_u32);
	return v[n / 2];
}

static void die(const char *what)
{
	fprintf(stderr, "entry_miss: %s: %s\n", what, strerror(errno));
	exit(1);
}

static unsigned int run(int fd, int repeat)
{
	char frame[64] = { 0 };
	LIBBPF_OPTS(bpf_test_run_opts, t, .data_in = frame, .data_size_in = sizeof(frame),
		    .repeat = repeat);

	if (bpf_prog_test_run_opts(fd, &t))
		die("BPF_PROG_TEST_RUN");
	if (t.retval != 2)		/* XDP_PASS: the program found its entry */
		fprintf(stderr, "entry_miss: a run returned %u, not XDP_PASS\n", t.retval), exit(1);
	return t.duration;
}

/* an inner array of the direct layout: per_inner entries of esz bytes, under 32 KB */
static int inner_create(unsigned int esz, unsigned int per_inner)
{
	int fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "em_inner", 4, esz, per_inner, NULL);

	if (fd < 0)
		die("inner map");
	return fd;
}

static void sweep(volatile const unsigned char *buf, size_t len)
{
	unsigned long sum = 0;

	for (size_t o = 0; o < len; o += 64)
		sum += buf[o];
	if (sum == 1)
		putchar('\n');
}

int main(int argc, char **argv)
{
	int keys = 10000, cold_runs = 2000, rounds = 5, cpu = 1, sweep_mb = 64;
	const char *json = NULL, *obj_path = NULL;
	char self[4096], def_obj[4200];
	static const struct option opts[] = {
		{ "keys", 1, 0, 'k' }, { "cold-runs", 1, 0, 'c' }, { "rounds", 1, 0, 'r' },
		{ "sweep-mb", 1, 0, 's' }, { "cpu", 1, 0, 'p' }, { "json", 1, 0, 'j' }, { "object", 1, 0, 'o' }, { 0 }
	};
	unsigned int warm[NPROG], cold[NPROG], *w[NPROG], *c[NPROG];
	int fds[NPROG], inner_tmpl, outer, slots, opt;
	struct bpf_object *obj;
	struct bpf_map *m;
	unsigned char *buf;
	unsigned int esz, per_inner, inners;
	size_t sweep_len;
	cpu_set_t set;
	FILE *out;

	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 'k': keys = atoi(optarg); break;
		case 'c': cold_runs = atoi(optarg); break;
		case 'r': rounds = atoi(optarg); break;
		case 's': sweep_mb = atoi(optarg); break;
		case 'p': cpu = atoi(optarg); break;
		case 'j': json = optarg; break;
		case 'o': obj_path = optarg; break;
		default: fprintf(stderr, "usage: entry_miss [--keys N] [--cold-runs N] [--rounds N] "
				 "[--sweep-mb N] [--cpu N] [--json FILE] [--object FILE]\n"); return 2;
		}
	}
	if (keys < 1 || keys > SLOTS || cold_runs < 1 || rounds < 1 || sweep_mb < 1 || sweep_mb > 4096) {
		fprintf(stderr, "entry_miss: --keys 1..%d, --cold-runs and --rounds >= 1, --sweep-mb 1..4096\n",
			SLOTS);
		return 2;
	}
	if (!obj_path) {
		/* entry_miss.bpf.o beside this program (bench/build) */
		ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
		char *slash;

		if (n < 0)
			die("/proc/self/exe");
		self[n] = 0;
		slash = strrchr(self, '/');
		if (slash)
			*slash = 0;
		snprintf(def_obj, sizeof(def_obj), "%s/entry_miss.bpf.o", self);
		obj_path = def_obj;
	}
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		die("sched_setaffinity");

	obj = bpf_object__open_file(obj_path, NULL);
	if (!obj)
		die(obj_path);
	m = bpf_object__find_map_by_name(obj, "direct_cache");
	esz = bpf_map__value_size(bpf_object__find_map_by_name(obj, "flat_cache"));
	/* as the object sizes them: each inner array under 32 KB, so kmalloc'd */
	per_inner = (32768 - 512) / esz;
	inners = (SLOTS + per_inner - 1) / per_inner;
	if (bpf_map__max_entries(m) != inners) {
		fprintf(stderr, "entry_miss: %u inner maps in the object, %u expected\n",
			bpf_map__max_entries(m), inners);
		return 1;
	}
	inner_tmpl = inner_create(esz, per_inner);
	if (bpf_map__set_inner_map_fd(m, inner_tmpl))
		die("inner map");
	if (bpf_map__set_initial_value(bpf_object__find_map_by_name(obj, ".rodata"), &keys, sizeof(keys)))
		die("nkeys");
	if (bpf_object__load(obj))
		die("loading the object");
	outer = bpf_map__fd(m);
	/* in batches: each update of a map of maps alone waits for an RCU grace period */
	for (unsigned int o = 0; o < inners; ) {
		unsigned int okeys[256], count = 0;
		int ofds[256];

		while (count < 256 && o < inners) {
			okeys[count] = o++;
			ofds[count++] = inner_create(esz, per_inner);
		}
		if (bpf_map_update_batch(outer, okeys, ofds, &count, NULL))
			die("inner maps into the map of maps");
		for (unsigned int i = 0; i < count; i++)
			close(ofds[i]);
	}
	printf("entry %u bytes, %d keys over %d slots; flat: one %u MB array; direct: %u arrays "
	       "of %u entries (%u bytes each)\n", esz, keys, SLOTS,
	       (unsigned int)((unsigned long long)esz * SLOTS >> 20), inners, per_inner, per_inner * esz);
	/* the keys' slots: spread as a hash spreads them */
	slots = bpf_object__find_map_fd_by_name(obj, "key_slots");
	for (unsigned int i = 0; i < (unsigned int)keys; i++) {
		unsigned int s = (unsigned int)(i * 2654435761u) % SLOTS;

		if (bpf_map_update_elem(slots, &i, &s, BPF_ANY))
			die("key_slots");
	}
	for (int p = 0; p < NPROG; p++) {
		fds[p] = bpf_program__fd(bpf_object__find_program_by_name(obj, progs[p]));
		w[p] = calloc(rounds, sizeof(unsigned int));
		c[p] = calloc(cold_runs, sizeof(unsigned int));
		if (!w[p] || !c[p])
			die("calloc");
	}
	sweep_len = (size_t)sweep_mb << 20;
	buf = malloc(sweep_len);
	if (!buf)
		die("malloc");
	memset(buf, 1, sweep_len);

	for (int r = 0; r < rounds; r++)
		for (int p = 0; p < NPROG; p++)
			w[p][r] = run(fds[p], 1000000);
	for (int r = 0; r < cold_runs; r++)
		for (int p = 0; p < NPROG; p++) {
			sweep(buf, sweep_len);
			c[p][r] = run(fds[p], 1);
		}
	printf("%-8s %10s %10s   (ns per run; the entry: minus base)\n", "", "warm", "cold");
	for (int p = 0; p < NPROG; p++) {
		warm[p] = median(w[p], rounds);
		cold[p] = median(c[p], cold_runs);
		printf("%-8s %10u %10u", progs[p], warm[p], cold[p]);
		if (p)
			printf("   entry: warm %d, cold %d", (int)warm[p] - (int)warm[0],
			       (int)cold[p] - (int)cold[0]);
		putchar('\n');
	}
	if (json) {
		out = fopen(json, "w");
		if (!out)
			die(json);
		fprintf(out, "{\"keys\": %d, \"slots\": %d, \"rounds\": %d, \"cold_runs\": %d, "
			"\"sweep_mb\": %d, \"date\": %ld, \"ns_per_run\": {", keys, SLOTS, rounds, cold_runs,
			sweep_mb, (long)time(NULL));
		for (int p = 0; p < NPROG; p++)
			fprintf(out, "%s\"%s\": {\"warm\": %u, \"cold\": %u}", p ? ", " : "", progs[p],
				warm[p], cold[p]);
		fprintf(out, "}}\n");
		fclose(out);
		printf("results: %s\n", json);
	}
	return 0;
}
