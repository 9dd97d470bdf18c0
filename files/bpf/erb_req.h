/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ERB data path: the RESP request parser (XDP ingress): commands, keys, flow state effects.
 * Part of the one translation unit erb.bpf.c (the verifier sees one object);
 * included there in order, after the maps and the load-time cfg.
 */
#ifndef ERB_REQ_H
#define ERB_REQ_H

/* ------------------------------------------------- request parser (XDP) */

/*
 * A key written by a passed command. The parser only queues it; xdp_keys()
 * takes the outstanding-write slot and invalidates before the frame is passed.
 */
static __always_inline void req_key(struct pctx *c, struct erb_parser *p, __u32 write)
{
	__u32 n = c->u->nkeys;

	if (n >= KEYQ) {
		c->u->keyq_full = 1;
		return;
	}
	c->s->keyq[n & (KEYQ - 1)] = p->arg_hash;
	c->s->keyq_idx[n & (KEYQ - 1)] = c->f->cmds + c->u->ncmds;
	c->s->keyq_w[n & (KEYQ - 1)] = write;
	c->u->nkeys = n + 1;
}

static __always_inline void req_arg_end(struct pctx *c, struct erb_parser *p)
{
	__u32 i = p->argi;

	if (i == 0) {
		struct erb_cmd_spec *spec;
		__u32 h = p->arg_uhash;

		p->cmd_hash = h;
		spec = p->arg_len <= ERB_CMD_NAME_MAX ?
		       bpf_map_lookup_elem(&erb_cmds, &h) : 0;
		if (spec) {
			p->cmd_flags = spec->flags;
			p->first_key = spec->first_key;
			p->last_key = spec->last_key;
			p->key_step = spec->step ? spec->step : 1;
		} else {
			p->cmd_flags = ERB_CMD_WRITE | ERB_CMD_KEYS_UNKNOWN;
			p->first_key = 0;
			p->last_key = 0;
			p->key_step = 1;
		}
		if (p->last_key < 0)
			p->last_key += (__s32)p->argc;
		return;
	}
	/*
	 * CLIENT REPLY: replies stop matching commands. CLIENT TRACKING and
	 * CLIENT CACHING: Redis must see this connection's reads to send it
	 * invalidations, so it is never answered again.
	 */
	if (i == 1 && p->cmd_hash == HASH_CLIENT &&
	    (p->arg_uhash == HASH_REPLY || p->arg_uhash == HASH_TRACKING || p->arg_uhash == HASH_CACHING))
		p->cmd_flags |= ERB_CMD_UNTRACK;
	if (i == 1 && p->cmd_hash == HASH_CLIENT &&
	    (p->arg_uhash == HASH_TRACKING || p->arg_uhash == HASH_CACHING))
		c->u->fl |= ERB_FLOW_PUSHES;	/* invalidations from now on */
	if (!(p->cmd_flags & ERB_CMD_KEYS_UNKNOWN) &&
	    p->first_key > 0 && (__s32)i >= p->first_key && (__s32)i <= p->last_key &&
	    ((i - p->first_key) % p->key_step) == 0) {
		if (p->cmd_flags & ERB_CMD_WRITE)
			req_key(c, p, 1);
		else if (c->u->pending)
			req_key(c, p, 0);	/* reads too must wait for pending writes */
	}
}

/* Capture command idx (its key is argument 1) for a fill: cap 1 SET, 2 HGETALL, 3 GET. */
static __always_inline void req_capture(struct pcur *u, __u32 idx, __u32 cap, __u32 voff, __u32 vlen)
{
	u->cap = cap;
	u->cap_idx = idx;
	u->cap_koff = u->win_base + u->a1_off;
	u->cap_klen = u->a1_len;
	u->cap_voff = voff;
	u->cap_vlen = vlen;
}

static __always_inline void req_cmd_end(struct pctx *c, struct erb_parser *p)
{
	struct pcur *u = c->u;
	__u32 fl = p->cmd_flags;
	__u32 idx = c->f->cmds + u->ncmds;

	/* a write of unknown keys empties the cache; a read of them waits */
	if ((fl & ERB_CMD_FLUSH) || ((fl & ERB_CMD_KEYS_UNKNOWN) && (fl & ERB_CMD_WRITE)))
		u->flush = 1;
	if (fl & (ERB_CMD_KEYS_UNKNOWN | ERB_CMD_KEYSPACE))
		u->wait = 1;
	if (fl & ERB_CMD_WATCH)
		u->fl |= ERB_FLOW_WATCH;
	/* EXEC after WATCH: Redis must know of every write acknowledged before it */
	if ((fl & ERB_CMD_EXEC) && (u->fl & ERB_FLOW_WATCH)) {
		u->wait = 1;
		u->fl &= ~ERB_FLOW_WATCH;
	}
	if (fl & ERB_CMD_MULTI) {
		u->fl |= ERB_FLOW_MULTI;
		/* queued writes run at EXEC: no fill may race them */
		u->block = 1;
	}
	if (fl & ERB_CMD_EXEC)
		u->fl &= ~ERB_FLOW_MULTI;
	if (fl & ERB_CMD_SUBSCRIBE)
		u->fl |= ERB_FLOW_SUBSCRIBED | ERB_FLOW_UNTRACKED | ERB_FLOW_PUSHES;
	if (fl & ERB_CMD_UNTRACK)
		u->fl |= ERB_FLOW_UNTRACKED;
	/*
	 * A write answered in XDP makes Redis push invalidations (tracking) and
	 * keyspace events only once applied: a command of a connection that may
	 * get them, and a message to subscribers, wait for pending writes.
	 */
	if ((fl & ERB_CMD_PUBLISH) || (u->fl & ERB_FLOW_PUSHES))
		u->wait = 1;
	if (fl & ERB_CMD_SELECT) {
		/* only "SELECT 0" itself says db 0; anything else may not be */
		if (p->argc == 2 && p->arg_len == 1 && p->arg_hash == ((FNV_OFFSET ^ '0') * FNV_PRIME))
			u->fl &= ~ERB_FLOW_DB_NONZERO;
		else
			u->fl |= ERB_FLOW_DB_NONZERO;
	}
	if (fl & ERB_CMD_AUTH)
		u->auth_idx = idx + 1;
	if (fl & ERB_CMD_RESET) {
		u->fl &= ~(ERB_FLOW_MULTI | ERB_FLOW_DB_NONZERO | ERB_FLOW_WATCH);
		if (cfg.require_auth)
			u->fl &= ~ERB_FLOW_AUTHED;
	}
	if (p->cmd_hash == HASH_HELLO) {
		/* maybe RESP3 from now on: TC learns which from its reply */
		u->fl |= ERB_FLOW_HELLO;
		u->fl &= ~(ERB_FLOW_RESP2 | ERB_FLOW_RESP3);
	}
	/* RESP2 or RESP3 alike: TC tells an array from a map */
	if (p->cmd_hash == HASH_HGETALL && p->argc == 2 && u->a1_off >= 0 &&
	    !(u->fl & (ERB_FLOW_DB_NONZERO | ERB_FLOW_MULTI | ERB_FLOW_UNTRACKED)) &&
	    u->a1_len <= cfg.max_key_len)
		req_capture(u, idx, 2, 0, 0);
	/*
	 * A GET passed to Redis (a miss): its bulk reply fills the cache
	 * read-through, unless the segment has a SET or HGETALL to capture.
	 * RESP3 (HELLO 3) sends the same "$<n>" bulk for a string value.
	 */
	if (p->cmd_hash == HASH_GET && p->argc == 2 && !u->cap && u->a1_off >= 0 &&
	    !(u->fl & (ERB_FLOW_DB_NONZERO | ERB_FLOW_MULTI | ERB_FLOW_UNTRACKED |
		       ERB_FLOW_PUSHES)) &&
	    u->a1_len <= cfg.max_key_len)
		req_capture(u, idx, 3, 0, 0);
	if ((fl & ERB_CMD_SET) && p->argc == 3 && u->a1_off >= 0 && u->a2_off >= 0 &&
	    !(u->fl & (ERB_FLOW_DB_NONZERO | ERB_FLOW_MULTI | ERB_FLOW_UNTRACKED)) &&
	    u->a1_len <= cfg.max_key_len && u->a2_len <= cfg.max_value_len)
		req_capture(u, idx, 1, u->win_base + u->a2_off, u->a2_len);
	u->ncmds++;
}

/*
 * An inline command (a line, as telnet and health checks send): known by its
 * name; its arguments are not parsed, so a command that takes keys has
 * unknown keys (a read waits for pending writes, a write empties the cache).
 */
static __always_inline void req_inline_end(struct pctx *c, struct erb_parser *p)
{
	struct erb_cmd_spec *spec = 0;
	__u32 h = p->arg_uhash, fl;

	if (p->arg_len <= ERB_CMD_NAME_MAX)
		spec = bpf_map_lookup_elem(&erb_cmds, &h);
	if (spec) {
		fl = spec->flags;
		if (spec->first_key > 0)
			fl |= ERB_CMD_KEYS_UNKNOWN;
	} else {
		fl = ERB_CMD_WRITE | ERB_CMD_KEYS_UNKNOWN;
	}
	if (h == HASH_CLIENT) {
		fl |= ERB_CMD_UNTRACK;	/* CLIENT REPLY/TRACKING/CACHING unseen */
		c->u->fl |= ERB_FLOW_PUSHES;
	}
	p->cmd_flags = fl;
	p->cmd_hash = h;
	p->argc = 0;
	c->u->a1_off = -1;
	c->u->a2_off = -1;
	req_cmd_end(c, p);
}

static __always_inline void req_error(struct pctx *c, struct erb_parser *p)
{
	/* Redis will reject this stream too; we lost the command boundary. */
	c->u->fl |= ERB_FLOW_UNTRACKED;
	c->u->flush = 1;
	p->state = ERB_P_TYPE;
	p->argc = 0;
	p->resync = 1;
	c->u->err = 1;
}

static __always_inline void req_bulk_begin(struct pctx *c, struct erb_parser *p)
{
	p->arg_hash = FNV_OFFSET;
	p->arg_uhash = FNV_OFFSET;
	p->arg_len = 0;
	if (p->argi == 1) {
		if (p->num + 2 <= c->u->end - c->u->pos) {
			c->u->a1_off = c->u->pos;
			c->u->a1_len = p->num;
		}
	} else if (p->argi == 2 && p->num + 2 <= c->u->end - c->u->pos) {
		c->u->a2_off = c->u->pos;
		c->u->a2_len = p->num;
	}
	p->bulk_left = p->num + 2;
	p->state = ERB_P_BULK;
}

/* Does this arg need its bytes looked at (name, keys, SELECT's index)? */
static __always_inline int req_arg_inspect(struct pctx *c, struct erb_parser *p)
{
	if (p->argi <= 1)
		return 1;
	return ((p->cmd_flags & ERB_CMD_WRITE) || c->u->pending) && p->first_key > 0 &&
	       (__s32)p->argi >= p->first_key && (__s32)p->argi <= p->last_key;
}

/*
 * One step of the request parser: a byte, or a run of bytes (a '*' or '$' with
 * its length's digits and CRLF; up to 16 inspected or any number of skipped
 * bytes of a bulk arg, with its CRLF when both are in the window), so that an
 * arg costs two bpf_loop steps rather than one per byte: each step is a call,
 * and loads and stores of the parser state (perf: ~20 ns). Not also from a
 * length into the arg's bytes: that one step more per arg costs the verifier
 * ~170k instructions of erb_xdp (req_bulk_begin() on every path into them).
 */
static long req_step(__u32 unused, void *arg)
{
	struct pctx *c = arg;
	struct erb_flow *f = c->f;
	struct erb_scratch *s = c->s;
	struct erb_parser *p;
	__u32 pos = c->u->pos, end = c->u->end;
	__u8 ch;

	if (!f || !s || pos >= end || end > WIN)
		return 1;
	p = &f->req;
	ch = s->buf[pos & WIN_MASK];

	switch (p->state) {
	case ERB_P_TYPE:
		if (p->argc == 0) {
			if (ch == '*') {
				p->resync = 0;
				c->u->a1_off = -1;
				c->u->a2_off = -1;
				goto length;
			} else if (p->resync) {
				/* skip until a command starts; unknown bytes may write */
				c->u->flush = 1;
			} else if (ch == '\r' || ch == '\n' || ch == ' ' || ch == '\t') {
				/* Redis ignores empty inline lines and leading blanks */
			} else {
				/* inline command: its name hashed, counted at its LF */
				p->type = 'i';
				p->state = ERB_P_LINE;
				p->argi = 0;
				p->arg_uhash = (FNV_OFFSET ^ upper(ch)) * FNV_PRIME;
				p->arg_len = 1;
			}
		} else if (ch == '$') {
			goto length;
		} else {
			req_error(c, p);
		}
		c->u->pos = pos + 1;
		return 0;
length:
		/* a '*' or '$': on in this step over its length's digits and CRLF */
		p->type = ch;
		p->state = ERB_P_NUM;
		p->num = 0;
		p->neg = 0;
		pos++;
		if (pos >= end) {
			c->u->pos = pos;
			return 0;
		}
		ch = s->buf[pos & WIN_MASK];
		/* fall through */
	case ERB_P_NUM:
		for (int j = 0; j < 4; j++) {
			if (ch >= '0' && ch <= '9') {
				if (p->num > (1U << 28)) {
					req_error(c, p);
					c->u->pos = pos + 1;
					return 0;
				}
				p->num = p->num * 10 + (ch - '0');
			} else if (ch == '-' && p->num == 0) {
				p->neg = 1;
			} else if (ch == '\r') {
				p->state = ERB_P_LF;
				pos++;
				if (pos >= end) {
					c->u->pos = pos;
					return 0;
				}
				ch = s->buf[pos & WIN_MASK];
				goto lf;
			} else {
				req_error(c, p);
				c->u->pos = pos + 1;
				return 0;
			}
			pos++;
			if (pos >= end)
				break;
			ch = s->buf[pos & WIN_MASK];
		}
		c->u->pos = pos;
		return 0;
	case ERB_P_LINE:
		if (ch == '\n') {
			req_inline_end(c, p);
			p->state = ERB_P_TYPE;
		} else if (p->argi == 0) {
			if (ch == ' ' || ch == '\t' || ch == '\r')
				p->argi = 1;	/* the name ends */
			else if (p->arg_len <= ERB_CMD_NAME_MAX) {
				p->arg_uhash = (p->arg_uhash ^ upper(ch)) * FNV_PRIME;
				p->arg_len++;
			}
		}
		c->u->pos = pos + 1;
		return 0;
	case ERB_P_LF:
lf:
		c->u->pos = pos + 1;
		if (ch != '\n') {
			req_error(c, p);
			return 0;
		}
		if (p->type == '*') {
			p->state = ERB_P_TYPE;
			if (p->neg || p->num == 0)
				return 0;	/* Redis skips empty multibulk */
			p->argc = p->num;
			p->argi = 0;
			p->cmd_flags = 0;
			p->first_key = 0;
			p->last_key = 0;
			return 0;
		}
		if (p->neg || p->num > 512 * 1024 * 1024) {
			req_error(c, p);
			return 0;
		}
		req_bulk_begin(c, p);
		return 0;
	case ERB_P_BULK:
		if (p->bulk_left > 2 && req_arg_inspect(c, p)) {
			/* its hashes, over the arg's bytes in this window */
			__u32 ah = p->arg_hash, uh = p->arg_uhash, len = p->arg_len, left = p->bulk_left;

			for (int j = 0; j < 16; j++) {
				ah = (ah ^ ch) * FNV_PRIME;
				uh = (uh ^ upper(ch)) * FNV_PRIME;
				len++;
				left--;
				pos++;
				if (left <= 2 || pos >= end)
					break;
				ch = s->buf[pos & WIN_MASK];
			}
			p->arg_hash = ah;
			p->arg_uhash = uh;
			p->arg_len = len;
			p->bulk_left = left;
			if (left > 2 || pos >= end) {
				c->u->pos = pos;
				return 0;
			}
			ch = s->buf[pos & WIN_MASK];	/* the CRLF is here: on */
		} else if (p->bulk_left > 2) {
			__u32 n = p->bulk_left - 2, room = end - pos;

			if (n > room)
				n = room;
			p->bulk_left -= n;
			pos += n;
			if (p->bulk_left > 2 || pos >= end) {
				c->u->pos = pos;
				return 0;
			}
			ch = s->buf[pos & WIN_MASK];
		}
		/* the CRLF that ends the bulk (both, when both are here) */
		if (p->bulk_left == 2 ? ch != '\r' : ch != '\n') {
			req_error(c, p);
			c->u->pos = pos + 1;
			return 0;
		}
		p->bulk_left--;
		pos++;
		if (p->bulk_left == 1 && pos < end && s->buf[pos & WIN_MASK] == '\n') {
			p->bulk_left = 0;
			pos++;
		}
		c->u->pos = pos;
		if (p->bulk_left)
			return 0;
		req_arg_end(c, p);
		p->argi++;
		p->state = ERB_P_TYPE;
		if (p->argi >= p->argc) {
			req_cmd_end(c, p);
			p->argc = 0;
		}
		return 0;
	default:
		req_error(c, p);
		return 1;
	}
}

#endif /* ERB_REQ_H */
