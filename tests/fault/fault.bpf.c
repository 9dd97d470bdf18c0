// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Fault injection on the client end of a test-fleet veth (erbc<i>), for the
 * chaos tests and benchmarks (tests/fault/fault_harness.py drives it).
 *
 * Three tc programs, attached with tcx links:
 *   fault_egress  on erbc<i> egress:  client -> Redis segments (direction 0)
 *   fault_ingress on erbc<i> ingress: Redis -> client segments (direction 1)
 *   fault_return  on the detour's kernel end (ingress): frames the user-space
 *                 delay line sends back, put where they were going
 *
 * For each IPv4 TCP segment of the Redis port, per direction, with its own
 * probability each: drop it (loss), send a copy of it too (duplication,
 * bpf_clone_redirect), or send it round the detour (a veth pair whose other
 * end a user-space delay line reads with AF_PACKET and writes back after a
 * hold: reordering when only some segments go round, delay when all do).
 * Frames carrying FAULT_MARK (copies, returning frames) pass untouched.
 * Everything else (ARP, other ports) always passes.
 *
 * The kernel has no netem: this is the whole fault path. GSO/TSO/GRO are
 * turned off on erbc<i> by the harness, so each skb here is one segment.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "fault.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fault_cfg);
} fault_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FAULT_DIRS * FAULT_NSTATS);
	__type(key, __u32);
	__type(value, __u64);
} fault_stats SEC(".maps");

static __always_inline void count(__u32 dir, __u32 what)
{
	__u32 k = dir * FAULT_NSTATS + what;
	__u64 *v = bpf_map_lookup_elem(&fault_stats, &k);

	if (v)
		*v += 1;
}

static __always_inline struct fault_cfg *cfg(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&fault_cfg, &zero);
}

/* prob is a probability scaled to 2^32 (0: never, 2^32: always) */
static __always_inline int chance(__u64 prob)
{
	return prob && (__u64)bpf_get_prandom_u32() < prob;
}

/* Is this an IPv4 TCP segment whose source (from_server) or destination
 * port is the Redis port? */
static __always_inline int redis_segment(struct __sk_buff *skb, __u16 port, int from_server)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct tcphdr *tcp;
	__u32 ihl;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return 0;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + sizeof(*eth) + 60 + 4 > data_end)	/* headers not all linear */
		bpf_skb_pull_data(skb, skb->len < sizeof(*eth) + 64 ? skb->len : sizeof(*eth) + 64);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	if (ip->protocol != IPPROTO_TCP || (ip->frag_off & bpf_htons(0x1fff)))
		return 0;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip) || ihl > 60)
		return 0;
	tcp = (void *)ip + ihl;
	if ((void *)tcp + 4 > data_end)
		return 0;
	return (from_server ? tcp->source : tcp->dest) == port;
}

static __always_inline int fault(struct __sk_buff *skb, __u32 dir)
{
	struct fault_cfg *c = cfg();
	struct fault_dir *d;
	__u32 mark;

	if (skb->mark == FAULT_MARK) {
		skb->mark = 0;
		return TC_ACT_OK;
	}
	if (!c || !c->client_ifindex)
		return TC_ACT_OK;
	if (!redis_segment(skb, c->port, dir == FAULT_S2C))
		return TC_ACT_OK;
	d = &c->dir[dir & 1];
	count(dir, FAULT_SEEN);
	if (chance(d->loss)) {
		count(dir, FAULT_DROPPED);
		return TC_ACT_SHOT;
	}
	if (chance(d->dup)) {
		mark = skb->mark;
		skb->mark = FAULT_MARK;
		if (bpf_clone_redirect(skb, c->client_ifindex, dir == FAULT_S2C ? BPF_F_INGRESS : 0) == 0)
			count(dir, FAULT_DUPLICATED);
		else
			count(dir, FAULT_ERRORS);
		skb->mark = mark;
	}
	if (c->detour_ifindex && chance(d->detour)) {
		count(dir, FAULT_DETOURED);
		return bpf_redirect(c->detour_ifindex, 0);
	}
	return TC_ACT_OK;
}

SEC("tc")
int fault_egress(struct __sk_buff *skb)
{
	return fault(skb, FAULT_C2S);
}

SEC("tc")
int fault_ingress(struct __sk_buff *skb)
{
	return fault(skb, FAULT_S2C);
}

/* A frame back from the delay line: towards the client (its destination MAC
 * is the client's) into erbc<i>'s receive path, else out of erbc<i>. */
SEC("tc")
int fault_return(struct __sk_buff *skb)
{
	struct fault_cfg *c = cfg();
	void *data, *data_end;
	struct ethhdr *eth;
	int to_client;

	if (!c || !c->client_ifindex)
		return TC_ACT_SHOT;
	if (bpf_skb_pull_data(skb, sizeof(*eth)) < 0)
		return TC_ACT_SHOT;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_SHOT;	/* only what the detour took: IPv4 */
	to_client = 1;
	for (int i = 0; i < ETH_ALEN; i++)
		if (eth->h_dest[i] != c->client_mac[i])
			to_client = 0;
	count(to_client ? FAULT_S2C : FAULT_C2S, FAULT_RETURNED);
	skb->mark = FAULT_MARK;
	return bpf_redirect(c->client_ifindex, to_client ? BPF_F_INGRESS : 0);
}
