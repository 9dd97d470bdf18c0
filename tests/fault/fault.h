/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Layout shared by fault.bpf.c and tests/fault/fault_daemon.py (which mirrors
 * it with ctypes; keep both in step). */
#ifndef FAULT_H
#define FAULT_H

#include <linux/types.h>

#define FAULT_MARK	0xfa017	/* on copies and returning frames: pass them */

enum {
	FAULT_C2S = 0,		/* client -> Redis: erbc<i> egress */
	FAULT_S2C = 1,		/* Redis -> client: erbc<i> ingress */
	FAULT_DIRS = 2,
};

enum {
	FAULT_SEEN = 0,		/* Redis-port segments looked at */
	FAULT_DROPPED,		/* dropped (loss) */
	FAULT_DUPLICATED,	/* sent twice */
	FAULT_DETOURED,		/* sent round the delay line */
	FAULT_RETURNED,		/* back from the delay line */
	FAULT_ERRORS,		/* bpf_clone_redirect failures */
	FAULT_NSTATS,
};

/* probabilities are scaled to 2^32: 0 never, 1 << 32 always */
struct fault_dir {
	__u64 loss;
	__u64 dup;
	__u64 detour;
};

struct fault_cfg {
	struct fault_dir dir[FAULT_DIRS];
	__u32 client_ifindex;	/* erbc<i>; 0: everything passes */
	__u32 detour_ifindex;	/* kernel end of the delay line; 0: none */
	__u8 client_mac[6];	/* erbc<i>'s MAC: tells returning frames' direction */
	__u16 port;		/* Redis port, network order */
};

#endif
