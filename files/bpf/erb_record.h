/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ERB write record: one acknowledged write on its way from the XDP SET fast
 * path to Redis. Shared by the BPF programs (erb.bpf.c), the user-space I/O
 * agent (ring-buffer path) and the I/O kernel module erb_io (kfifo path).
 *
 * The layout is fixed-size so that it can travel through a kfifo of records
 * and a BPF ring buffer alike, and be passed to a kfunc as (pointer, size).
 * Change the layout => bump ERB_RECORD_VERSION; consumers reject records of
 * another version (the kernel module counts them as "bad" and logs them).
 *
 * Types: __u8/__u16/__u32/__u64 come from <linux/types.h> in user space and
 * in the kernel, and from vmlinux.h or <linux/types.h> in BPF programs; this
 * header includes nothing itself but erb.h (limits), like erb.h.
 */
#ifndef ERB_RECORD_H
#define ERB_RECORD_H

#include "erb.h"

#define ERB_RECORD_VERSION	1

/* erb_record.op */
#define ERB_OP_SET		1	/* SET key value */

/* erb_record.flags: none defined yet; consumers reject unknown bits. */
#define ERB_REC_F_KNOWN		0U

struct erb_record {
	__u16 version;		/* ERB_RECORD_VERSION */
	__u8 op;		/* ERB_OP_* */
	__u8 flags;		/* ERB_REC_F_* */
	__u16 klen;		/* 1..ERB_KEY_MAX */
	__u16 vlen;		/* 0..ERB_VAL_MAX */
	__u32 db;		/* Redis logical database */
	__u32 pad;		/* zero */
	__u64 seq;		/* global write sequence (erb_global.write_seq) */
	/*
	 * The first klen / vlen bytes only: the programs copy no more (a
	 * ring slot or erb_kmrec keeps an older record's bytes after them).
	 */
	char key[ERB_KEY_MAX];
	char val[ERB_VAL_MAX];
};

/* Header size (everything before key[]): what a consumer must read first. */
#define ERB_RECORD_HDR_SIZE	24

#if !defined(__KERNEL__) && !defined(__bpf__)
/* User-space consumers (erb-agent, erb_redis): what is wrong with a sample of len bytes, or NULL. */
static inline const char *erb_record_problem(const struct erb_record *r, __u32 len)
{
	if (len < sizeof(struct erb_record))
		return "short sample";
	if (r->version != ERB_RECORD_VERSION)
		return "unknown record version";
	if (r->op != ERB_OP_SET)
		return "unknown op";
	if (r->flags & ~ERB_REC_F_KNOWN)
		return "unknown flags";
	if (r->klen < 1 || r->klen > ERB_KEY_MAX || r->vlen > ERB_VAL_MAX)
		return "key or value length out of range";
	return 0;
}
#endif

#endif /* ERB_RECORD_H */
