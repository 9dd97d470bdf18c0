// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tests/bpf/test_verifier_budget.py: a program (frame STK_A) calls a global
 * function (STK_B, with a bpf_loop call the verifier inlines) whose callback
 * has STK_C: the kernel adds the three frames against its 512-byte stack.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static long cb(__u32 i, void *ctx)
{
	__u64 b[STK_C / 8];

	b[0] = i;
	b[STK_C / 8 - 1] = i;
	asm volatile("" : : "r"(b) : "memory");
	return b[0] + b[STK_C / 8 - 1] > 100;
}

__attribute__((noinline)) int mid(struct xdp_md *ctx)
{
	__u64 b[STK_B / 8];

	b[0] = 1;
	b[STK_B / 8 - 1] = 2;
	asm volatile("" : : "r"(b) : "memory");
	bpf_loop(1, cb, NULL, 0);
	return ctx ? b[0] + b[STK_B / 8 - 1] : 0;
}

SEC("xdp")
int top(struct xdp_md *ctx)
{
	__u64 b[STK_A / 8];

	b[0] = 1;
	b[STK_A / 8 - 1] = 2;
	asm volatile("" : : "r"(b) : "memory");
	return (mid(ctx) + b[0] + b[STK_A / 8 - 1]) & 1 ? XDP_PASS : XDP_DROP;
}
