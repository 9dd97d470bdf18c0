// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The floor under every XDP answer on a veth, for bench/cpu_cost.py: a
 * stateless Redis "answerer" that does nothing ERB's work needs (no flow
 * state, no parsing beyond one byte, no cache, no sequence mapping).
 *
 * Attached in erb_xdp's place while redis-benchmark runs exactly as it does
 * against ERB (one request in flight per connection), every client segment
 * with a payload to port 6379 is turned around with XDP_TX: MACs, addresses
 * and ports swapped, seq = the segment's ack (what the client expects next),
 * ack = its seq + payload, and a fixed reply: "+OK" for a SET ('S' or 's' at
 * the command's name), else a bulk string of REFLECT_VALUE bytes. Pure ACKs
 * are dropped (the server's stack never sent those bytes); SYN, FIN and RST
 * pass, so the connection is set up and torn down by the real stack.
 *
 * It answers garbage to anything else: a benchmark tool only, never a product
 * path. The server CPU per request it costs is what veth, NAPI and XDP_TX
 * cost before any of ERB's work.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define X10 "xxxxxxxxxx"
#define X100 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10
#define REFLECT_VALUE 100
static const char get_reply[] = "$100\r\n" X100 "\r\n\0\0\0";	/* + pad to 4 */
static const char set_reply[] = "+OK\r\n\0\0\0";
#define GET_LEN (sizeof(get_reply) - 4)
#define SET_LEN 5

struct hdrs {
	unsigned char mac[ETH_ALEN], smac[ETH_ALEN];
	__be32 saddr, daddr;
	__be16 sport, dport;
	__u32 seq, ack;
	__u16 win;
};

static __always_inline __u16 fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

SEC("xdp")
int reflect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct tcphdr *t = (void *)(ip + 1);
	const char *rep;
	struct hdrs h;
	__u32 thl, plen, rlen;
	char c;
	__u64 sum;
	int delta;

	if ((void *)(t + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->ihl != 5 || ip->protocol != IPPROTO_TCP || t->dest != bpf_htons(6379))
		return XDP_PASS;
	if (t->syn || t->fin || t->rst || !t->ack)
		return XDP_PASS;
	thl = t->doff * 4;
	plen = bpf_ntohs(ip->tot_len);
	if (thl < sizeof(*t) || plen < sizeof(*ip) + thl)
		return XDP_PASS;
	plen -= sizeof(*ip) + thl;
	if (!plen)
		return XDP_DROP;
	/* "*3\r\n$3\r\nSET": the name's first letter is the 9th payload byte */
	if (bpf_xdp_load_bytes(ctx, sizeof(*eth) + sizeof(*ip) + thl + 8, &c, 1))
		c = 0;
	rep = (c == 'S' || c == 's') ? set_reply : get_reply;
	rlen = (c == 'S' || c == 's') ? SET_LEN : GET_LEN;

	__builtin_memcpy(h.mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(h.smac, eth->h_dest, ETH_ALEN);
	h.saddr = ip->saddr;
	h.daddr = ip->daddr;
	h.sport = t->source;
	h.dport = t->dest;
	h.seq = bpf_ntohl(t->ack_seq);
	h.ack = bpf_ntohl(t->seq) + plen;
	h.win = t->window;
	delta = (int)(sizeof(*eth) + sizeof(*ip) + sizeof(*t) + rlen) - (int)bpf_xdp_get_buff_len(ctx);
	if (bpf_xdp_adjust_tail(ctx, delta) && (delta <= 0 || bpf_xdp_adjust_head(ctx, -delta)))
		return XDP_PASS;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	t = (void *)(ip + 1);
	if ((void *)(t + 1) > end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, h.mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, h.smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*t) + rlen);
	ip->id = 0;
	ip->frag_off = bpf_htons(0x4000);
	ip->ttl = 64;
	ip->protocol = IPPROTO_TCP;
	ip->saddr = h.daddr;
	ip->daddr = h.saddr;
	ip->check = 0;
	ip->check = fold(bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
	__builtin_memset(t, 0, sizeof(*t));
	t->source = h.dport;
	t->dest = h.sport;
	t->seq = bpf_htonl(h.seq);
	t->ack_seq = bpf_htonl(h.ack);
	t->doff = 5;
	t->ack = 1;
	t->psh = 1;
	t->window = h.win;
	if (bpf_xdp_store_bytes(ctx, sizeof(*eth) + sizeof(*ip) + sizeof(*t), (void *)rep, rlen))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	t = data + sizeof(*eth) + sizeof(*ip);
	if ((void *)(t + 1) > end)
		return XDP_DROP;
	sum = (__u64)h.saddr + h.daddr + bpf_htons(IPPROTO_TCP) + bpf_htons(sizeof(*t) + rlen);
	sum += (__u32)bpf_csum_diff(0, 0, (__be32 *)t, sizeof(*t), 0);
	sum += (__u32)bpf_csum_diff(0, 0, (__be32 *)rep, (rlen + 3) & ~3U, 0);
	t->check = fold(sum);
	return XDP_TX;
}
