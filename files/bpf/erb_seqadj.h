/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ERB data path: checksums and the seq/ack mapping between the client and server views.
 * Part of the one translation unit erb.bpf.c (the verifier sees one object);
 * included there in order, after the maps and the load-time cfg.
 */
#ifndef ERB_SEQADJ_H
#define ERB_SEQADJ_H

/* ----------------------------------------------------- TCP helpers */


static __always_inline void csum_replace4(__u16 *sum, __u32 from, __u32 to)
{
	__u32 s = (__u16)~*sum;

	s += (__u16)~(from >> 16) + (__u16)~(from & 0xffff);
	s += (to >> 16) + (to & 0xffff);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	*sum = (__u16)~s;
}

static __always_inline __u16 csum_fold(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/*
 * client seq -> server view. A seq inside the last answered request (bytes the
 * server never saw) is only ever a zero-length segment there: a window probe
 * at snd_una - 1. It maps to the server's rcv_nxt - 1, a probe again.
 */
static __always_inline __u32 map_cseq(struct erb_seqadj *c, __u32 seq)
{
	__u32 gone = c->off_after - c->off_before;

	if (!before(seq, c->pos))
		return seq - c->off_after;
	if (gone && !before(seq, c->pos - gone))
		return c->pos - c->off_after - 1;
	return seq - c->off_before;
}

/* client ack (of server bytes, client view) -> server view */
static __always_inline __u32 map_cack(struct erb_seqadj *s, __u32 ack)
{
	__u32 r0 = s->pos + s->off_before, r1 = s->pos + s->off_after;

	if (!before(ack, r1))
		return ack - s->off_after;
	if (after(ack, r0))
		return s->pos;
	return ack - s->off_before;
}

/* server seq -> client view */
static __always_inline __u32 map_sseq(struct erb_seqadj *s, __u32 seq)
{
	return seq + (before(seq, s->pos) ? s->off_before : s->off_after);
}

/* server ack (of client bytes, server view) -> client view */
static __always_inline __u32 map_sack(struct erb_seqadj *c, __u32 ack)
{
	return ack + (before(ack, c->pos - c->off_after) ? c->off_before : c->off_after);
}

#endif /* ERB_SEQADJ_H */
