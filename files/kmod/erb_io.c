// SPDX-License-Identifier: GPL-2.0-only
/*
 * erb_io - ERB's I/O path in the kernel.
 *
 * The XDP SET fast path acknowledges a write and hands a struct erb_record to
 * this module through the erb_kfifo_in() kfunc. A write kthread drains the
 * kfifo in batches into one preallocated buffer and hands it to a sink:
 *
 *   apply       RESP "SET key value" pipelined to Redis over a kernel
 *               unix-socket connection (authenticated with AUTH when
 *               redis_password_file is set); every reply is checked and
 *               applied_seq follows what Redis has acknowledged. A record
 *               Redis refuses for now (LOADING, OOM, MISCONF, READONLY,
 *               NOAUTH, ...) is sent again, in order, with backoff.
 *   aof_direct  the paper's mode: RESP in AOF format appended with
 *               kernel_write() to Redis's own AOF file, found through
 *               pid_task() and Redis's fd table under RCU; an fsync kthread
 *               calls vfs_fsync() once a second when something was written.
 *
 * Unloading drains what is queued (bounded by drain_ms) and reports in the
 * kernel log every record it could not deliver.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bitmap.h>
#include <linux/bpf.h>
#include <linux/btf.h>
#include <linux/completion.h>
#include <linux/btf_ids.h>
#include <linux/dcache.h>
#include <linux/fdtable.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/kfifo.h>
#include <linux/kobject.h>
#include <linux/kthread.h>
#include <linux/log2.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/mutex.h>
#include <linux/net.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/seqlock.h>
#include <linux/slab.h>
#include <linux/socket.h>
#include <linux/spinlock.h>
#include <linux/sysfs.h>
#include <linux/uidgid.h>
#include <linux/un.h>
#include <linux/user_namespace.h>
#include <linux/version.h>
#include <linux/vmalloc.h>
#include <linux/wait.h>
#include <net/net_namespace.h>
#include <net/sock.h>

#include "erb_record.h"

#define ERB_IO_VERSION		"0.1.0"

/* Built out of tree for Debian's 6.1 and for newer kernels from one source. */
#define ERB_KERNEL_AT_LEAST(a, b) \
	(LINUX_VERSION_CODE >= KERNEL_VERSION(a, b, 0))
#define ERB_SUFFIX_MAX		256
#define ERB_PATH_DEPTH_MAX	64
#define ERB_RESP_MAX		(sizeof(struct erb_record) + 96)
#define ERB_RECV_SIZE		4096
#define ERB_ERRLINE_MAX		80
#define ERB_BACKOFF_MAX_MS	1000
#define ERB_SECRET_MAX		512

static char *sink = "apply";
module_param(sink, charp, 0444);
MODULE_PARM_DESC(sink, "apply (RESP to Redis over a unix socket) or aof_direct (append to Redis's AOF)");

static unsigned int erb_kfifo_size = 1024;
module_param_named(kfifo_size, erb_kfifo_size, uint, 0444);
MODULE_PARM_DESC(kfifo_size, "records the kfifo holds (rounded up to a power of two, 2..1048576)");

static unsigned int batch = 64;
module_param(batch, uint, 0444);
MODULE_PARM_DESC(batch, "records drained and written per batch (1..4096)");

static char *redis_sock = "/run/redis/redis-server.sock";
module_param(redis_sock, charp, 0444);
MODULE_PARM_DESC(redis_sock, "Redis unix socket path (apply sink)");

static char *redis_user = "";
module_param(redis_user, charp, 0444);
MODULE_PARM_DESC(redis_user, "ACL user to AUTH as (apply sink; empty: the default user)");

static char *redis_password_file = "";
module_param(redis_password_file, charp, 0444);
MODULE_PARM_DESC(redis_password_file, "file with the Redis password (apply sink): a regular file owned by root, no group/other access (0600); read at load and at every connect");

static int redis_pid;
module_param(redis_pid, int, 0644);
MODULE_PARM_DESC(redis_pid, "pid of redis-server, initial pid namespace (aof_direct sink); may be changed at run time");

static char *aof_suffix = ".incr.aof";
module_param(aof_suffix, charp, 0444);
MODULE_PARM_DESC(aof_suffix, "path suffix of the AOF file among Redis's open files (aof_direct sink)");

static unsigned int drain_ms = 5000;
module_param(drain_ms, uint, 0644);
MODULE_PARM_DESC(drain_ms, "at unload, how long to keep trying to deliver queued records");

enum erb_sink_kind {
	ERB_SINK_APPLY,
	ERB_SINK_AOF,
};

/* Counters under /sys/module/erb_io/stats/. */
enum erb_ctr {
	ERB_C_ENQUEUED,		/* records accepted by erb_kfifo_in() */
	ERB_C_FULL,		/* records refused: kfifo full or unloading */
	ERB_C_BAD,		/* records rejected: size, version or lengths */
	ERB_C_BATCHES,		/* batches handed to the sink */
	ERB_C_APPLIED,		/* records Redis answered +OK to (apply) */
	ERB_C_APPLY_ERRORS,	/* records Redis answered an error to (apply) */
	ERB_C_CONNECTS,		/* unix-socket connections made (apply) */
	ERB_C_SINK_ERRORS,	/* failed sink attempts (retried) */
	ERB_C_AOF_RECORDS,	/* records appended to the AOF (aof_direct) */
	ERB_C_AOF_BYTES,	/* bytes appended to the AOF (aof_direct) */
	ERB_C_AOF_OPENS,	/* AOF file (re)resolutions (aof_direct) */
	ERB_C_FSYNC_CHECKS,	/* fsync kthread wake-ups */
	ERB_C_FSYNCS,		/* vfs_fsync() calls made */
	ERB_C_FSYNC_ERRORS,
	ERB_C_LOST,		/* records given up on (also logged) */
	ERB_C_APPLIED_SEQ,	/* seq of the last record delivered, in order */
	ERB_C_QUEUED,		/* records in the kfifo now */
	ERB_C_SEQ_WINDOW,	/* seqs too far past applied_seq to track */
	ERB_C_RETRIES,		/* records Redis refused for now, sent again (apply) */
	ERB_C_AUTH_ERRORS,	/* AUTH refused, or the password file unusable (apply) */
	ERB_C_MAX,
};

static const char * const erb_ctr_names[ERB_C_MAX] = {
	[ERB_C_ENQUEUED] = "enqueued",
	[ERB_C_FULL] = "full",
	[ERB_C_BAD] = "bad",
	[ERB_C_BATCHES] = "batches",
	[ERB_C_APPLIED] = "applied",
	[ERB_C_APPLY_ERRORS] = "apply_errors",
	[ERB_C_CONNECTS] = "connects",
	[ERB_C_SINK_ERRORS] = "sink_errors",
	[ERB_C_AOF_RECORDS] = "aof_records",
	[ERB_C_AOF_BYTES] = "aof_bytes",
	[ERB_C_AOF_OPENS] = "aof_opens",
	[ERB_C_FSYNC_CHECKS] = "fsync_checks",
	[ERB_C_FSYNCS] = "fsyncs",
	[ERB_C_FSYNC_ERRORS] = "fsync_errors",
	[ERB_C_LOST] = "lost",
	[ERB_C_APPLIED_SEQ] = "applied_seq",
	[ERB_C_QUEUED] = "queued",
	[ERB_C_SEQ_WINDOW] = "seq_window",
	[ERB_C_RETRIES] = "retries",
	[ERB_C_AUTH_ERRORS] = "auth_errors",
};

/* The batch being delivered: records [done, n) are still owed to the sink. */
struct erb_batch {
	struct erb_record *recs;
	unsigned int n;
	unsigned int done;
	char *out;		/* serialized RESP, ERB_RESP_MAX per record */
	u32 *end;		/* end[i]: offset in out just past record i */
	u8 *nrep;		/* replies record i expects (SELECT + SET) */
	char *in;		/* reply bytes */
};

/*
 * Reply parser state (apply sink); replies are lines: "+OK" or "-ERR ...".
 * Once a record is refused with a retryable error, the replies of the rest of
 * the round are still read (Redis has then run everything sent) but count
 * for nothing: the round is sent again from that record.
 */
struct erb_reply {
	char type;		/* first byte of the current line, 0 at start */
	bool failed;		/* a reply of the current record was an error */
	bool again;		/* ... a retryable one */
	bool retry;		/* a record of this round must be sent again */
	unsigned int at;	/* record whose replies are being read */
	unsigned int left;	/* replies the current record still expects */
	unsigned int len;
	char line[ERB_ERRLINE_MAX];
};

struct erb_io {
	enum erb_sink_kind sink;
	DECLARE_KFIFO_PTR(fifo, struct erb_record);
	void *fifo_buf;
	spinlock_t in_lock;		/* producers (XDP on any CPU) */
	wait_queue_head_t wq;
	struct task_struct *writer;
	struct task_struct *syncer;
	struct erb_batch b;
	bool closing;			/* kfuncs refuse new records */
	bool stopping;			/* writer: drain, then finish */
	unsigned long stop_at;		/* jiffies deadline once stopping */
	struct completion drained;

	struct socket *sock;		/* apply */
	long sock_db;			/* db selected on sock, -1 unknown */
	struct erb_reply rp;

	struct mutex aof_lock;		/* aof, aof_fd, aof_pid */
	struct file *aof;
	int aof_fd;
	pid_t aof_pid;
	long aof_db;			/* db selected in the AOF stream, -1 unknown */
	atomic_t dirty;			/* written since the last fsync */

	spinlock_t err_lock;		/* last_error */
	char last_error[ERB_ERRLINE_MAX + 1];

	struct kobject *kobj;
	struct kobj_attribute attrs[ERB_C_MAX];
	struct kobj_attribute err_attr;
	struct attribute *attr_ptrs[ERB_C_MAX + 2];
	struct attribute_group group;
};

static struct erb_io erb;
static atomic64_t erb_ctr[ERB_C_MAX];

static inline void erb_inc(enum erb_ctr c, s64 v)
{
	atomic64_add(v, &erb_ctr[c]);
}

/* ---- process fd table walk (pid_task + fd table under RCU) ---- */

/*
 * Does the path of @dentry (below @root, the mount root) end with @sfx?
 * Names are read as d_path() does: under RCU, NUL-bounded, and the whole walk
 * is retried if a rename ran meanwhile. Safe in atomic context.
 */
static bool erb_dentry_suffix(const struct dentry *d, const struct dentry *root,
			      const char *sfx, size_t left)
{
	int depth;

	for (depth = 0; depth < ERB_PATH_DEPTH_MAX; depth++) {
		/* Pairs with d_move()'s name swap, as in d_path()'s prepend_name(). */
		const unsigned char *name = smp_load_acquire(&d->d_name.name);
		u32 len = READ_ONCE(d->d_name.len);
		size_t n = strnlen((const char *)name, len);
		size_t cmp = min(n, left);

		if (memcmp(name + n - cmp, sfx + left - cmp, cmp))
			return false;
		left -= cmp;
		if (!left)
			return true;
		if (sfx[left - 1] != '/')
			return false;
		if (!--left)
			return true;
		if (d == root || IS_ROOT(d))
			return false;
		d = READ_ONCE(d->d_parent);
	}
	return false;
}

static bool erb_path_has_suffix(const struct path *path, const char *sfx, size_t len)
{
	unsigned int seq;
	int tries;
	bool match;

	for (tries = 0; tries < 3; tries++) {
		seq = read_seqbegin(&rename_lock);
		match = erb_dentry_suffix(path->dentry, path->mnt->mnt_root, sfx, len);
		if (!read_seqretry(&rename_lock, seq))
			return match;
	}
	return false;
}

/* Take a reference on the file at @slot under RCU; NULL if it is going away. */
static struct file *erb_get_file_rcu(struct file __rcu **slot, struct file *file)
{
#if ERB_KERNEL_AT_LEAST(6, 7)
	struct file *got = get_file_active(slot);

	if (got && got != file) {
		fput(got);
		return NULL;
	}
	return got;
#else
	return get_file_rcu(file) ? file : NULL;
#endif
}

/*
 * Find the first fd of process @pid (initial pid namespace) whose path ends
 * with @sfx. In atomic context (@atomic) the task lock is only tried, never
 * waited for: contention returns -EBUSY. With @out, a reference to the file
 * is taken and returned. Returns the fd, -ENOENT or -EBUSY.
 */
static int erb_scan_fds(pid_t pid, const char *sfx, size_t len, bool atomic,
			struct file **out)
{
	struct task_struct *task;
	struct files_struct *files;
	struct fdtable *fdt;
	unsigned int fd;
	int ret = -ENOENT;

	if (!len || pid <= 0)
		return -ENOENT;

	rcu_read_lock();
	task = pid_task(find_pid_ns(pid, &init_pid_ns), PIDTYPE_PID);
	if (!task)
		goto out_rcu;
	if (atomic) {
		if (!spin_trylock(&task->alloc_lock)) {
			ret = -EBUSY;
			goto out_rcu;
		}
	} else {
		task_lock(task);
	}
	files = task->files;
	if (!files)
		goto out_task;
	fdt = files_fdtable(files);
	for (fd = 0; fd < fdt->max_fds; fd++) {
		struct file *file = files_lookup_fd_raw(files, fd);

		if (!file || !erb_path_has_suffix(&file->f_path, sfx, len))
			continue;
		if (out) {
			*out = erb_get_file_rcu(&fdt->fd[fd], file);
			if (!*out)
				continue;
		}
		ret = fd;
		break;
	}
out_task:
	task_unlock(task);
out_rcu:
	rcu_read_unlock();
	return ret;
}

/* Is @file still open as @fd in process @pid? */
static bool erb_fd_is(pid_t pid, int fd, struct file *file)
{
	struct task_struct *task;
	bool same = false;

	rcu_read_lock();
	task = pid_task(find_pid_ns(pid, &init_pid_ns), PIDTYPE_PID);
	if (task) {
		task_lock(task);
		if (task->files)
			same = files_lookup_fd_raw(task->files, fd) == file;
		task_unlock(task);
	}
	rcu_read_unlock();
	return same;
}

/* ---- applied_seq ---- */

/*
 * applied_seq tracker. The BPF side takes a record's seq from a global
 * counter and only then calls erb_kfifo_in(), so two CPUs may queue seqs
 * out of order. The hold rule of the BPF side trusts applied_seq = S to mean
 * "Redis has every write with seq <= S", so S only moves over a contiguous
 * run of finished seqs: delivered by the sink, or refused by erb_kfifo_in()
 * (the BPF side passed that command to Redis itself). Finished seqs above S
 * are remembered in a circular bitmap of ERB_TRACK_WINDOW bits.
 */
#define ERB_TRACK_WINDOW	65536UL

static struct {
	spinlock_t lock;		/* any context: XDP softirq, kthread */
	u64 base;			/* every seq <= base is finished */
	unsigned long *bits;		/* finished seqs in (base, base + window] */
	atomic64_t outstanding;		/* queued, not yet finished */
	bool warned;
} erb_trk = {
	.lock = __SPIN_LOCK_UNLOCKED(erb_trk.lock),
};

static void erb_seq_done(u64 seq)
{
	unsigned long flags;
	u64 base;

	spin_lock_irqsave(&erb_trk.lock, flags);
	base = erb_trk.base;
	if (!erb_trk.bits || seq <= base) {
		/* before seq_base: not ours to track */
	} else if (seq - base > ERB_TRACK_WINDOW) {
		/* applied_seq stays put: the BPF side keeps holding (safe) */
		erb_inc(ERB_C_SEQ_WINDOW, 1);
		if (!erb_trk.warned)
			pr_err("seq %llu is %llu past applied_seq %llu: beyond the tracking window; was seq_base set to the BPF side's write_seq before attaching?\n",
			       seq, seq - base, base);
		erb_trk.warned = true;
	} else {
		__set_bit(seq % ERB_TRACK_WINDOW, erb_trk.bits);
		while (test_bit((base + 1) % ERB_TRACK_WINDOW, erb_trk.bits)) {
			__clear_bit((base + 1) % ERB_TRACK_WINDOW, erb_trk.bits);
			base++;
		}
		erb_trk.base = base;
		atomic64_set(&erb_ctr[ERB_C_APPLIED_SEQ], base);
	}
	spin_unlock_irqrestore(&erb_trk.lock, flags);
}

/*
 * seq_base: the BPF side's write_seq when it starts queueing here (its loader
 * writes it before attaching). Accepted only while nothing is queued or
 * tracked, so applied_seq never jumps over a record in flight.
 */
static int erb_seq_base_set(const char *val, const struct kernel_param *kp)
{
	unsigned long flags;
	u64 v;
	int err = kstrtou64(val, 0, &v);

	if (err)
		return err;
	spin_lock_irqsave(&erb_trk.lock, flags);
	if (atomic64_read(&erb_trk.outstanding) ||
	    (erb_trk.bits && !bitmap_empty(erb_trk.bits, ERB_TRACK_WINDOW))) {
		err = -EBUSY;
	} else {
		erb_trk.base = v;
		erb_trk.warned = false;
		atomic64_set(&erb_ctr[ERB_C_APPLIED_SEQ], v);
	}
	spin_unlock_irqrestore(&erb_trk.lock, flags);
	return err;
}

static int erb_seq_base_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%lld\n", atomic64_read(&erb_ctr[ERB_C_APPLIED_SEQ]));
}

static const struct kernel_param_ops erb_seq_base_ops = {
	.set = erb_seq_base_set,
	.get = erb_seq_base_get,
};
module_param_cb(seq_base, &erb_seq_base_ops, NULL, 0644);
MODULE_PARM_DESC(seq_base, "write: the BPF side's write_seq before it attaches (only while idle); read: applied_seq");

static void erb_mark_delivered(const struct erb_record *rec)
{
	atomic64_dec(&erb_trk.outstanding);
	erb_seq_done(rec->seq);
}

/* ---- kfuncs ---- */

#ifndef __bpf_kfunc
#define __bpf_kfunc noinline
#endif

#if ERB_KERNEL_AT_LEAST(6, 7)
__bpf_kfunc_start_defs();
#else
__diag_push();
__diag_ignore_all("-Wmissing-prototypes",
		  "Global kfuncs as their definitions will be in BTF");
#endif

/**
 * erb_kfifo_in - queue one write record for the I/O path
 * @rec: the record (BPF memory: map value, not the stack: it is too big)
 * @rec__sz: sizeof(struct erb_record); anything else is refused
 *
 * Return: 0 when queued, -ENOSPC when the kfifo is full (the caller passes the
 * command to Redis instead), -EINVAL for a record of another size.
 * The record's contents are validated by the write kthread.
 */
__bpf_kfunc int erb_kfifo_in(const struct erb_record *rec, u32 rec__sz)
{
	if (rec__sz != sizeof(*rec)) {
		erb_inc(ERB_C_BAD, 1);
		return -EINVAL;
	}
	/* counted before it can be dequeued: seq_base never sees it missing */
	atomic64_inc(&erb_trk.outstanding);
	if (READ_ONCE(erb.closing) ||
	    !kfifo_in_spinlocked(&erb.fifo, rec, 1, &erb.in_lock)) {
		atomic64_dec(&erb_trk.outstanding);
		erb_inc(ERB_C_FULL, 1);
		/* the caller passes this write to Redis: its seq is finished */
		erb_seq_done(rec->seq);
		return -ENOSPC;
	}
	erb_inc(ERB_C_ENQUEUED, 1);
	if (wq_has_sleeper(&erb.wq))
		wake_up(&erb.wq);
	return 0;
}

/**
 * erb_find_fd - find an open file of a process by path suffix
 * @pid: process id in the initial pid namespace
 * @suffix: path suffix, e.g. ".incr.aof" (NUL or @suffix__sz bounded)
 * @suffix__sz: size of the @suffix buffer
 *
 * Return: the lowest fd whose path ends with @suffix, -ENOENT when there is
 * none (or no such process), -EBUSY when the task lock was contended.
 */
__bpf_kfunc int erb_find_fd(u32 pid, const char *suffix, u32 suffix__sz)
{
	size_t len = strnlen(suffix, min_t(u32, suffix__sz, ERB_SUFFIX_MAX));

	return erb_scan_fds(pid, suffix, len, true, NULL);
}

/**
 * erb_applied_seq - how far the sink has caught up
 *
 * Return: seq of the last record delivered (apply: acknowledged by Redis).
 */
__bpf_kfunc u64 erb_applied_seq(void)
{
	return atomic64_read(&erb_ctr[ERB_C_APPLIED_SEQ]);
}

#if ERB_KERNEL_AT_LEAST(6, 7)
__bpf_kfunc_end_defs();
#else
__diag_pop();
#endif

#if ERB_KERNEL_AT_LEAST(6, 9)
BTF_KFUNCS_START(erb_io_kfunc_ids)
BTF_ID_FLAGS(func, erb_kfifo_in)
BTF_ID_FLAGS(func, erb_find_fd)
BTF_ID_FLAGS(func, erb_applied_seq)
BTF_KFUNCS_END(erb_io_kfunc_ids)
#else
BTF_SET8_START(erb_io_kfunc_ids)
BTF_ID_FLAGS(func, erb_kfifo_in)
BTF_ID_FLAGS(func, erb_find_fd)
BTF_ID_FLAGS(func, erb_applied_seq)
BTF_SET8_END(erb_io_kfunc_ids)
#endif

static const struct btf_kfunc_id_set erb_io_kfunc_set = {
	.owner = THIS_MODULE,
	.set = &erb_io_kfunc_ids,
};

/* ---- RESP serialization ---- */

static size_t erb_put_bulk(char *p, const char *s, unsigned int len)
{
	size_t n = sprintf(p, "$%u\r\n", len);

	memcpy(p + n, s, len);
	n += len;
	p[n++] = '\r';
	p[n++] = '\n';
	return n;
}

static size_t erb_put_select(char *p, u32 db)
{
	char num[12];
	int len = scnprintf(num, sizeof(num), "%u", db);
	size_t n = sprintf(p, "*2\r\n$6\r\nSELECT\r\n");

	return n + erb_put_bulk(p + n, num, len);
}

static size_t erb_put_set(char *p, const struct erb_record *rec)
{
	size_t n = sprintf(p, "*3\r\n$3\r\nSET\r\n");

	n += erb_put_bulk(p + n, rec->key, rec->klen);
	return n + erb_put_bulk(p + n, rec->val, rec->vlen);
}

/*
 * Serialize records [from, b->n) into b->out, selecting each record's db
 * when the stream's current db (*db, -1 unknown) differs. Returns the length.
 */
static size_t erb_serialize(struct erb_batch *b, unsigned int from, long *db)
{
	size_t len = 0;
	unsigned int i;

	for (i = from; i < b->n; i++) {
		const struct erb_record *rec = &b->recs[i];

		b->nrep[i] = 1;
		if (*db != rec->db) {
			len += erb_put_select(b->out + len, rec->db);
			*db = rec->db;
			b->nrep[i]++;
		}
		len += erb_put_set(b->out + len, rec);
		b->end[i] = len;
	}
	return len;
}


/* ---- apply sink: RESP to Redis over a kernel unix socket ---- */

/* Error replies after which the same command must be sent again later. */
static bool erb_retryable(const char *line, unsigned int len)
{
	static const char * const codes[] = {
		"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "MISCONF", "OOM",
		"READONLY", "NOREPLICAS", "NOAUTH", "NOPERM", "CLUSTERDOWN",
	};
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(codes); i++) {
		size_t n = strlen(codes[i]);

		if (len >= n && !memcmp(line, codes[i], n) &&
		    (len == n || line[n] == ' '))
			return true;
	}
	return false;
}

/* Remember Redis's last error line for stats/last_error. */
static void erb_note_error(const char *line, unsigned int len)
{
	unsigned long flags;

	len = min_t(unsigned int, len, ERB_ERRLINE_MAX);
	spin_lock_irqsave(&erb.err_lock, flags);
	memcpy(erb.last_error, line, len);
	erb.last_error[len] = 0;
	spin_unlock_irqrestore(&erb.err_lock, flags);
}

/*
 * Read the password from redis_password_file into @buf (NUL-terminated,
 * trailing CR/LF removed). The file must be a regular file owned by root
 * that neither its group nor others may access.
 */
static int erb_read_secret(char *buf, size_t size)
{
	struct inode *inode;
	struct file *f;
	loff_t pos = 0;
	ssize_t n;
	int err = 0;

	f = filp_open(redis_password_file, O_RDONLY | O_NOCTTY, 0);
	if (IS_ERR(f))
		return PTR_ERR(f);
	inode = file_inode(f);
	if (!S_ISREG(inode->i_mode)) {
		pr_err("redis_password_file %s is not a regular file\n",
		       redis_password_file);
		err = -EINVAL;
		goto out;
	}
	if (!uid_eq(inode->i_uid, GLOBAL_ROOT_UID) || (inode->i_mode & 0077)) {
		pr_err("redis_password_file %s is owned by uid %u with mode %04o: it must be owned by root with mode 0600 or stricter; not using it\n",
		       redis_password_file,
		       from_kuid(&init_user_ns, inode->i_uid),
		       inode->i_mode & 07777);
		err = -EPERM;
		goto out;
	}
	n = kernel_read(f, buf, size, &pos);
	if (n < 0) {
		err = n;
		goto out;
	}
	if (n >= size) {
		pr_err("redis_password_file %s: longer than %zu bytes\n",
		       redis_password_file, size - 1);
		err = -EFBIG;
		goto out;
	}
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	buf[n] = 0;
	if (!n) {
		pr_err("redis_password_file %s is empty\n", redis_password_file);
		err = -EINVAL;
	}
out:
	filp_close(f, NULL);
	return err;
}

static void erb_sock_close(void)
{
	if (erb.sock) {
		kernel_sock_shutdown(erb.sock, SHUT_RDWR);
		sock_release(erb.sock);
		erb.sock = NULL;
	}
}

/*
 * While stopping, give up once drain_ms has passed. Stopping is our own flag,
 * not kthread_should_stop(): kthread_stop() leaves a signal notification
 * pending that would make every interruptible socket wait return at once.
 */
static bool erb_give_up(void)
{
	if (!READ_ONCE(erb.stopping))
		return false;
	if (!erb.stop_at)
		erb.stop_at = (jiffies + msecs_to_jiffies(READ_ONCE(drain_ms))) | 1;
	return time_after(jiffies, erb.stop_at);
}

static int erb_send_all(const char *buf, size_t len)
{
	while (len) {
		struct kvec iov = { .iov_base = (void *)buf, .iov_len = len };
		struct msghdr msg = { .msg_flags = MSG_NOSIGNAL };
		int n = kernel_sendmsg(erb.sock, &msg, &iov, 1, len);

		if (n == -EAGAIN || n == -EINTR) {
			if (erb_give_up())
				return -ETIMEDOUT;
			continue;
		}
		if (n < 0)
			return n;
		if (!n)
			return -EPIPE;
		buf += n;
		len -= n;
	}
	return 0;
}

/* Read one reply line into @line (without CRLF, truncated); its length. */
static int erb_recv_line(char *line, unsigned int size)
{
	unsigned int len = 0;
	char c;

	for (;;) {
		struct kvec iov = { .iov_base = &c, .iov_len = 1 };
		struct msghdr msg = { };
		int n = kernel_recvmsg(erb.sock, &msg, &iov, 1, 1, 0);

		if (n == -EAGAIN || n == -EINTR) {
			if (erb_give_up())
				return -ETIMEDOUT;
			continue;
		}
		if (n < 0)
			return n;
		if (!n)
			return -ECONNRESET;
		if (c == '\n')
			return len;
		if (c != '\r' && len < size)
			line[len++] = c;
	}
}

/* AUTH [user] password on the fresh connection; 0 when Redis says +OK. */
static int erb_auth(void)
{
	size_t ulen = strlen(redis_user), plen, n = 0;
	char line[ERB_ERRLINE_MAX], *secret, *cmd;
	int err, len;

	secret = kzalloc(ERB_SECRET_MAX, GFP_KERNEL);
	cmd = kzalloc(ERB_SECRET_MAX + ulen + 64, GFP_KERNEL);
	err = -ENOMEM;
	if (!secret || !cmd)
		goto out;
	err = erb_read_secret(secret, ERB_SECRET_MAX);
	if (err) {
		erb_inc(ERB_C_AUTH_ERRORS, 1);
		pr_err_ratelimited("cannot read redis_password_file %s: %d\n",
				   redis_password_file, err);
		goto out;
	}
	plen = strlen(secret);
	n = sprintf(cmd, "*%d\r\n$4\r\nAUTH\r\n", ulen ? 3 : 2);
	if (ulen)
		n += erb_put_bulk(cmd + n, redis_user, ulen);
	n += erb_put_bulk(cmd + n, secret, plen);
	err = erb_send_all(cmd, n);
	if (err)
		goto out;
	len = erb_recv_line(line, sizeof(line));
	if (len < 0) {
		err = len;
		goto out;
	}
	if (len >= 3 && !memcmp(line, "+OK", 3))
		goto out;
	err = -EACCES;
	erb_inc(ERB_C_AUTH_ERRORS, 1);
	if (len && line[0] == '-') {
		erb_note_error(line + 1, len - 1);
		pr_err_ratelimited("Redis refused AUTH%s%s: %.*s\n",
				   ulen ? " as " : "", redis_user, len - 1, line + 1);
	} else {
		pr_err_ratelimited("unexpected reply to AUTH\n");
	}
out:
	kfree_sensitive(secret);
	kfree_sensitive(cmd);
	return err;
}

/*
 * PING on the fresh connection: +PONG, or no SET goes out on it. Redis
 * answers an error to a connection it will not serve (LOADING while it loads
 * its dataset, "max number of clients reached"), which must not be taken for
 * the reply to a record.
 */
static int erb_ping(void)
{
	static const char ping[] = "*1\r\n$4\r\nPING\r\n";
	char line[ERB_ERRLINE_MAX];
	int err, len;

	/* a refused connection may be closed already: read its error anyway */
	err = erb_send_all(ping, sizeof(ping) - 1);
	len = erb_recv_line(line, sizeof(line));
	if (len < 0)
		return err ?: len;
	if (!err && len >= 5 && !memcmp(line, "+PONG", 5))
		return 0;
	if (len && line[0] == '-') {
		erb_note_error(line + 1, len - 1);
		pr_warn_ratelimited("Redis does not serve this connection yet: %.*s\n",
				    len - 1, line + 1);
	}
	return -EAGAIN;
}

static int erb_sock_open(void)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct socket *sock;
	int err;

	if (strscpy(addr.sun_path, redis_sock, sizeof(addr.sun_path)) < 0)
		return -ENAMETOOLONG;
	err = sock_create_kern(&init_net, AF_UNIX, SOCK_STREAM, 0, &sock);
	if (err)
		return err;
	sock->sk->sk_rcvtimeo = HZ;
	sock->sk->sk_sndtimeo = HZ;
	err = kernel_connect(sock, (struct sockaddr *)&addr, sizeof(addr), 0);
	if (err) {
		sock_release(sock);
		return err;
	}
	erb.sock = sock;
	erb.sock_db = 0;
	memset(&erb.rp, 0, sizeof(erb.rp));
	erb_inc(ERB_C_CONNECTS, 1);
	if (redis_password_file[0])
		err = erb_auth();
	if (!err)
		err = erb_ping();
	if (err)
		erb_sock_close();
	return err;
}

/* One complete reply line for record rp->at. */
static void erb_reply_done(struct erb_batch *b)
{
	struct erb_reply *rp = &erb.rp;
	const struct erb_record *rec = &b->recs[rp->at];

	if (!rp->left)
		rp->left = b->nrep[rp->at];
	if (rp->type == '-') {
		bool again = erb_retryable(rp->line, rp->len);

		erb_note_error(rp->line, rp->len);
		if (again) {
			rp->again = true;
			erb_inc(ERB_C_RETRIES, 1);
		} else {
			rp->failed = true;
		}
		/* a failed SELECT: the connection's db is unknown now */
		if (rp->left > 1)
			erb.sock_db = -1;
		if (!rp->retry)
			pr_warn_ratelimited("Redis %s seq %llu: %.*s\n",
					    again ? "refused for now (will send again)" :
					    "rejected", rec->seq, rp->len, rp->line);
	}
	if (--rp->left)
		return;
	if (rp->again) {
		rp->retry = true;
	} else if (!rp->retry) {
		if (rp->failed)
			erb_inc(ERB_C_APPLY_ERRORS, 1);
		else
			erb_inc(ERB_C_APPLIED, 1);
		erb_mark_delivered(rec);
		b->done++;
	}
	rp->failed = false;
	rp->again = false;
	rp->at++;
}

static int erb_parse_replies(struct erb_batch *b, const char *p, int n)
{
	struct erb_reply *rp = &erb.rp;
	int i;

	for (i = 0; i < n; i++) {
		char c = p[i];

		if (rp->at >= b->n)
			return -EPROTO;		/* a reply nobody asked for */
		if (!rp->type) {
			if (c != '+' && c != '-')
				return -EPROTO;
			rp->type = c;
			rp->len = 0;
			continue;
		}
		if (c == '\n') {
			erb_reply_done(b);
			rp->type = 0;
			continue;
		}
		if (c != '\r' && rp->len < sizeof(rp->line))
			rp->line[rp->len++] = c;
	}
	return 0;
}

static int erb_read_replies(struct erb_batch *b)
{
	while (erb.rp.at < b->n) {
		struct kvec iov = { .iov_base = b->in, .iov_len = ERB_RECV_SIZE };
		struct msghdr msg = { };
		int n = kernel_recvmsg(erb.sock, &msg, &iov, 1, ERB_RECV_SIZE, 0);
		int err;

		if (n == -EAGAIN || n == -EINTR) {
			if (erb_give_up())
				return -ETIMEDOUT;
			continue;
		}
		if (n < 0)
			return n;
		if (!n)
			return -ECONNRESET;
		err = erb_parse_replies(b, b->in, n);
		if (err)
			return err;
	}
	return 0;
}

/*
 * One round: send records [done, n), read every reply. -EAGAIN when Redis
 * refused a record for now: it and everything after it go again, on a new
 * connection (AUTH and SELECT again) once every reply of this one was read,
 * so that nothing sent before can run after the resend.
 */
static int erb_apply(struct erb_batch *b)
{
	size_t len;
	int err;

	if (!erb.sock) {
		err = erb_sock_open();
		if (err)
			return err;
	}
	memset(&erb.rp, 0, sizeof(erb.rp));
	erb.rp.at = b->done;
	len = erb_serialize(b, b->done, &erb.sock_db);
	err = erb_send_all(b->out, len);
	if (!err)
		err = erb_read_replies(b);
	if (!err && erb.rp.retry)
		err = -EAGAIN;
	if (err)
		erb_sock_close();	/* resend what is unacknowledged */
	return err;
}

/* ---- aof_direct sink: kernel_write() into Redis's AOF ---- */

/* The AOF file, (re)resolved when Redis's fd no longer points to it. */
static struct file *erb_aof_get(bool resolve)
{
	pid_t pid = READ_ONCE(redis_pid);
	struct file *file = NULL;
	int fd;

	mutex_lock(&erb.aof_lock);
	if (resolve && erb.aof &&
	    (pid != erb.aof_pid || !erb_fd_is(erb.aof_pid, erb.aof_fd, erb.aof))) {
		pr_info("AOF fd %d of pid %d changed: resolving again\n",
			erb.aof_fd, erb.aof_pid);
		fput(erb.aof);
		erb.aof = NULL;
	}
	if (resolve && !erb.aof) {
		fd = erb_scan_fds(pid, aof_suffix, strlen(aof_suffix), false, &file);
		if (fd >= 0) {
			erb.aof = file;
			erb.aof_fd = fd;
			erb.aof_pid = pid;
			erb.aof_db = -1;
			erb_inc(ERB_C_AOF_OPENS, 1);
			pr_info("AOF: pid %d fd %d (%pD)\n", pid, fd, file);
		}
	}
	file = erb.aof;
	if (file)
		get_file(file);
	mutex_unlock(&erb.aof_lock);
	return file;
}

static int erb_aof_append(struct erb_batch *b)
{
	unsigned int first = b->done;
	size_t len, off = 0;
	struct file *file;
	ssize_t n = 0;
	loff_t pos;

	file = erb_aof_get(true);
	if (!file)
		return -ENOENT;
	len = erb_serialize(b, b->done, &erb.aof_db);

	mutex_lock(&file->f_pos_lock);
	while (off < len) {
		pos = file->f_pos;
		n = kernel_write(file, b->out + off, len - off, &pos);
		if (n <= 0)
			break;
		file->f_pos = pos;
		off += n;
	}
	mutex_unlock(&file->f_pos_lock);

	while (b->done < b->n && b->end[b->done] <= off)
		erb_mark_delivered(&b->recs[b->done++]);
	erb_inc(ERB_C_AOF_RECORDS, b->done - first);
	erb_inc(ERB_C_AOF_BYTES, off);
	if (off)
		atomic_set(&erb.dirty, 1);
	if (off < len) {
		pr_err_ratelimited("AOF write failed at seq %llu (%zd), %zu of %zu bytes written\n",
				   b->recs[b->done].seq, n, off, len);
		/* A partly written record: re-select in case the tail is cut. */
		erb.aof_db = -1;
		fput(file);
		return n < 0 ? (int)n : -EIO;
	}
	fput(file);
	return 0;
}

/* ---- fsync kthread ---- */

static void erb_sync_once(void)
{
	struct file *file;
	int err;

	erb_inc(ERB_C_FSYNC_CHECKS, 1);
	if (!atomic_xchg(&erb.dirty, 0))
		return;
	file = erb_aof_get(false);
	if (!file)
		return;
	err = vfs_fsync(file, 1);
	fput(file);
	if (err) {
		atomic_set(&erb.dirty, 1);
		erb_inc(ERB_C_FSYNC_ERRORS, 1);
		pr_warn_ratelimited("fdatasync of the AOF failed: %d\n", err);
		return;
	}
	erb_inc(ERB_C_FSYNCS, 1);
}

static int erb_syncer_fn(void *unused)
{
	while (!kthread_should_stop()) {
		schedule_timeout_interruptible(HZ);
		if (!kthread_should_stop())
			erb_sync_once();
	}
	erb_sync_once();
	return 0;
}

/* ---- write kthread ---- */

static bool erb_record_ok(const struct erb_record *rec)
{
	return rec->version == ERB_RECORD_VERSION && rec->op == ERB_OP_SET &&
	       !(rec->flags & ~ERB_REC_F_KNOWN) && rec->klen &&
	       rec->klen <= ERB_KEY_MAX && rec->vlen <= ERB_VAL_MAX;
}

/* Fill the batch from the kfifo, dropping (and reporting) invalid records. */
static void erb_fill_batch(struct erb_batch *b)
{
	unsigned int i, n, kept = 0;

	n = kfifo_out(&erb.fifo, b->recs, batch);
	for (i = 0; i < n; i++) {
		if (!erb_record_ok(&b->recs[i])) {
			erb_inc(ERB_C_BAD, 1);
			erb_inc(ERB_C_LOST, 1);
			/* never delivered: keeps applied_seq below it (holds) */
			atomic64_dec(&erb_trk.outstanding);
			pr_err_ratelimited("invalid record dropped: seq %llu version %u op %u klen %u vlen %u\n",
					   b->recs[i].seq, b->recs[i].version,
					   b->recs[i].op, b->recs[i].klen,
					   b->recs[i].vlen);
			continue;
		}
		if (kept != i)
			b->recs[kept] = b->recs[i];
		kept++;
	}
	b->n = kept;
	b->done = 0;
}

/*
 * Deliver the batch; on failure (Redis unreachable, or refusing a record for
 * now) retry with backoff, unless giving up at unload.
 */
static void erb_deliver(struct erb_batch *b)
{
	unsigned int backoff = 10, done;
	int err;

	erb_inc(ERB_C_BATCHES, 1);
	while (b->done < b->n) {
		done = b->done;
		if (erb.sink == ERB_SINK_APPLY)
			err = erb_apply(b);
		else
			err = erb_aof_append(b);
		if (!err)
			continue;
		if (b->done != done)
			backoff = 10;
		erb_inc(ERB_C_SINK_ERRORS, 1);
		pr_warn_ratelimited("%s sink: %d, %u records pending, retrying in %u ms\n",
				    sink, err, b->n - b->done, backoff);
		if (erb_give_up())
			return;
		schedule_timeout_idle(msecs_to_jiffies(backoff));
		backoff = min(backoff * 2, ERB_BACKOFF_MAX_MS);
	}
}

static void erb_seq_range(const struct erb_record *recs, unsigned int n,
			  u64 *lo, u64 *hi)
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		*lo = min(*lo, recs[i].seq);
		*hi = max(*hi, recs[i].seq);
	}
}

/* Called by the stopping writer: account for every record not delivered. */
static void erb_report_undelivered(struct erb_batch *b)
{
	u64 lo = U64_MAX, hi = 0, lost;
	unsigned int n;

	lost = b->n - b->done;
	erb_seq_range(b->recs + b->done, b->n - b->done, &lo, &hi);
	while ((n = kfifo_out(&erb.fifo, b->recs, batch))) {
		lost += n;
		erb_seq_range(b->recs, n, &lo, &hi);
	}
	b->n = 0;
	b->done = 0;
	if (!lost)
		return;
	erb_inc(ERB_C_LOST, lost);
	pr_err("unload: %llu queued records NOT delivered (unacknowledged) by the %s sink within %u ms (seq %llu..%llu)\n",
	       lost, sink, drain_ms, lo, hi);
}

static int erb_writer_fn(void *unused)
{
	struct erb_batch *b = &erb.b;

	for (;;) {
		if (b->done >= b->n)
			erb_fill_batch(b);
		if (b->done < b->n) {
			erb_deliver(b);
			if (b->done < b->n)	/* gave up */
				break;
			continue;
		}
		if (READ_ONCE(erb.stopping))
			break;
		wait_event_interruptible_timeout(erb.wq,
						 !kfifo_is_empty(&erb.fifo) ||
						 READ_ONCE(erb.stopping), HZ);
	}
	erb_report_undelivered(b);
	complete(&erb.drained);
	while (!kthread_should_stop()) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (!kthread_should_stop())
			schedule();
		__set_current_state(TASK_RUNNING);
	}
	return 0;
}

/* Make the writer drain (bounded by drain_ms) and exit. */
static void erb_stop_writer(void)
{
	WRITE_ONCE(erb.stopping, true);
	wake_up(&erb.wq);
	wait_for_completion(&erb.drained);
	kthread_stop(erb.writer);
}

/* ---- sysfs counters ---- */

static ssize_t erb_stat_show(struct kobject *kobj, struct kobj_attribute *attr,
			     char *buf)
{
	int i = attr - erb.attrs;

	if (i == ERB_C_QUEUED)
		return sysfs_emit(buf, "%u\n", kfifo_len(&erb.fifo));
	return sysfs_emit(buf, "%lld\n", atomic64_read(&erb_ctr[i]));
}

static ssize_t erb_last_error_show(struct kobject *kobj,
				   struct kobj_attribute *attr, char *buf)
{
	unsigned long flags;
	ssize_t n;

	spin_lock_irqsave(&erb.err_lock, flags);
	n = sysfs_emit(buf, "%s\n", erb.last_error);
	spin_unlock_irqrestore(&erb.err_lock, flags);
	return n;
}

static int erb_stats_init(void)
{
	int i, err;

	erb.kobj = kobject_create_and_add("stats", &THIS_MODULE->mkobj.kobj);
	if (!erb.kobj)
		return -ENOMEM;
	for (i = 0; i < ERB_C_MAX; i++) {
		sysfs_attr_init(&erb.attrs[i].attr);
		erb.attrs[i].attr.name = erb_ctr_names[i];
		erb.attrs[i].attr.mode = 0444;
		erb.attrs[i].show = erb_stat_show;
		erb.attr_ptrs[i] = &erb.attrs[i].attr;
	}
	/* Redis's last error reply (apply), e.g. "OOM command not allowed ..." */
	sysfs_attr_init(&erb.err_attr.attr);
	erb.err_attr.attr.name = "last_error";
	erb.err_attr.attr.mode = 0444;
	erb.err_attr.show = erb_last_error_show;
	erb.attr_ptrs[ERB_C_MAX] = &erb.err_attr.attr;
	erb.attr_ptrs[ERB_C_MAX + 1] = NULL;
	erb.group.attrs = erb.attr_ptrs;
	err = sysfs_create_group(erb.kobj, &erb.group);
	if (err) {
		kobject_put(erb.kobj);
		erb.kobj = NULL;
	}
	return err;
}

static void erb_stats_exit(void)
{
	sysfs_remove_group(erb.kobj, &erb.group);
	kobject_put(erb.kobj);
}

/* ---- module init / exit ---- */

static int erb_parse_params(void)
{
	if (!strcmp(sink, "apply"))
		erb.sink = ERB_SINK_APPLY;
	else if (!strcmp(sink, "aof_direct"))
		erb.sink = ERB_SINK_AOF;
	else
		return -EINVAL;
	if (erb_kfifo_size < 2 || erb_kfifo_size > (1U << 20) ||
	    !batch || batch > 4096)
		return -EINVAL;
	if (erb.sink == ERB_SINK_AOF &&
	    (!aof_suffix[0] || strlen(aof_suffix) >= ERB_SUFFIX_MAX))
		return -EINVAL;
	if (strlen(redis_user) > ERB_KEY_MAX)
		return -EINVAL;
	return 0;
}

/* A password file that is not root's alone refuses the load. */
static int erb_check_secret(void)
{
	char *secret;
	int err;

	if (erb.sink != ERB_SINK_APPLY || !redis_password_file[0])
		return 0;
	secret = kzalloc(ERB_SECRET_MAX, GFP_KERNEL);
	if (!secret)
		return -ENOMEM;
	err = erb_read_secret(secret, ERB_SECRET_MAX);
	kfree_sensitive(secret);
	if (err)
		pr_err("redis_password_file %s unusable (%d): not loading\n",
		       redis_password_file, err);
	return err;
}

static void erb_free_buffers(void)
{
	unsigned long flags, *bits;

	spin_lock_irqsave(&erb_trk.lock, flags);
	bits = erb_trk.bits;
	erb_trk.bits = NULL;
	spin_unlock_irqrestore(&erb_trk.lock, flags);
	bitmap_free(bits);
	kfree(erb.b.in);
	kvfree(erb.b.nrep);
	kvfree(erb.b.end);
	vfree(erb.b.out);
	vfree(erb.b.recs);
	vfree(erb.fifo_buf);
}

static int erb_alloc_buffers(void)
{
	size_t slots = roundup_pow_of_two(erb_kfifo_size);
	size_t bytes = slots * sizeof(struct erb_record);

	erb.fifo_buf = vmalloc(bytes);
	erb.b.recs = vmalloc(array_size(batch, sizeof(struct erb_record)));
	erb.b.out = vmalloc(array_size(batch, ERB_RESP_MAX));
	erb.b.end = kvcalloc(batch, sizeof(*erb.b.end), GFP_KERNEL);
	erb.b.nrep = kvcalloc(batch, sizeof(*erb.b.nrep), GFP_KERNEL);
	erb.b.in = kmalloc(ERB_RECV_SIZE, GFP_KERNEL);
	erb_trk.bits = bitmap_zalloc(ERB_TRACK_WINDOW, GFP_KERNEL);
	if (!erb.fifo_buf || !erb.b.recs || !erb.b.out || !erb.b.end ||
	    !erb.b.nrep || !erb.b.in || !erb_trk.bits)
		goto fail;
	if (kfifo_init(&erb.fifo, erb.fifo_buf, bytes))
		goto fail;
	return 0;
fail:
	erb_free_buffers();
	return -ENOMEM;
}

static void erb_release_sinks(void)
{
	erb_sock_close();
	if (erb.aof) {
		fput(erb.aof);
		erb.aof = NULL;
	}
}

static int __init erb_io_init(void)
{
	int err;

	err = erb_parse_params();
	if (err) {
		pr_err("bad parameters: sink=%s kfifo_size=%u batch=%u aof_suffix=%s\n",
		       sink, erb_kfifo_size, batch, aof_suffix);
		return err;
	}
	err = erb_check_secret();
	if (err)
		return err;
	spin_lock_init(&erb.in_lock);
	spin_lock_init(&erb.err_lock);
	init_waitqueue_head(&erb.wq);
	mutex_init(&erb.aof_lock);
	init_completion(&erb.drained);
	erb.sock_db = -1;
	erb.aof_db = -1;

	err = erb_alloc_buffers();
	if (err)
		return err;
	err = erb_stats_init();
	if (err)
		goto err_buffers;

	erb.writer = kthread_run(erb_writer_fn, NULL, "erb_io_writer");
	if (IS_ERR(erb.writer)) {
		err = PTR_ERR(erb.writer);
		goto err_stats;
	}
	if (erb.sink == ERB_SINK_AOF) {
		erb.syncer = kthread_run(erb_syncer_fn, NULL, "erb_io_fsync");
		if (IS_ERR(erb.syncer)) {
			err = PTR_ERR(erb.syncer);
			erb.syncer = NULL;
			goto err_writer;
		}
	}
	/* Last: once registered, XDP programs may call in. */
	err = register_btf_kfunc_id_set(BPF_PROG_TYPE_XDP, &erb_io_kfunc_set);
	if (err)
		goto err_syncer;

	pr_info("loaded: sink=%s kfifo=%u records batch=%u\n", sink,
		kfifo_size(&erb.fifo), batch);
	return 0;

err_syncer:
	if (erb.syncer)
		kthread_stop(erb.syncer);
err_writer:
	erb_stop_writer();
err_stats:
	erb_stats_exit();
err_buffers:
	erb_release_sinks();
	erb_free_buffers();
	return err;
}

static void __exit erb_io_exit(void)
{
	u64 before = atomic64_read(&erb_ctr[ERB_C_APPLIED]) +
		     atomic64_read(&erb_ctr[ERB_C_AOF_RECORDS]);
	unsigned int queued = kfifo_len(&erb.fifo);

	/* No BPF program can hold our kfuncs now; refuse any late caller. */
	WRITE_ONCE(erb.closing, true);
	erb_stop_writer();
	if (erb.syncer)
		kthread_stop(erb.syncer);
	erb_release_sinks();
	erb_stats_exit();
	erb_free_buffers();
	pr_info("unloaded: %u queued at unload, %llu delivered while draining, %lld lost in total\n",
		queued, atomic64_read(&erb_ctr[ERB_C_APPLIED]) +
		atomic64_read(&erb_ctr[ERB_C_AOF_RECORDS]) - before,
		atomic64_read(&erb_ctr[ERB_C_LOST]));
}

module_init(erb_io_init);
module_exit(erb_io_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("ERB");
MODULE_DESCRIPTION("ERB I/O path: kfifo of write records, kthread sinks to Redis or its AOF");
MODULE_VERSION(ERB_IO_VERSION);
