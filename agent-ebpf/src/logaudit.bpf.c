// SPDX-License-Identifier: GPL-2.0
/*
 * loggate bypass audit: reports every successful open-for-reading of a protected log file by any
 * process the agent has not excluded (itself).
 *
 * Matching is on what was opened, never on a path string: at the exit of the open syscalls the
 * returned fd is turned into its `struct file`, and the file's (device, inode) is looked up in
 * `protected` (filled by the agent with every protected file AND directory). On a miss the
 * (device, inode) of its folder and of the folders above it, up to ANCESTOR_DEPTH levels, are
 * looked up, so a file created by rotation in a protected directory — or in a subfolder made
 * after the agent's last scan (logs rotated into dated folders) — is covered before the agent
 * learns of it. The walk stops at the first unprotected folder whose change time is older than
 * the start of the agent's last scan (`scan_epoch`): such a folder existed when the agent
 * scanned, so had it been beneath a root it would be in the set, and no folder above it is a
 * root (a folder made or renamed since has a later change time: the walk goes on through it).
 * Thus and symlinks, hard links, `..`, bind mounts and relative paths all resolve to the
 * same inode. Device numbers are the kernel's
 * `sb->s_dev` encoding, `(major << 20) | minor`; the agent converts `stat()`'s `st_dev`.
 *
 * Cost discipline (the miss path, an open of an unprotected file, is nearly every open): the fd
 * is turned into its file by typed loads through the kfunc bpf_rdonly_cast, which the verifier
 * turns into a register move (`match_fd`; whatever the fd table, embedded or grown), and from
 * the file on every read is a direct BTF load, no helper call. The build without kfuncs
 * (logaudit_probe_read.bpf.c, FD_SLOT_PROBE_READ; the agent's fallback) reads a grown table
 * with bpf_probe_read_kernel instead. The first filter is
 * `ino_filter`, a bitmap over inode numbers that the verifier inlines (an ARRAY lookup is a
 * bounds check and an add): the file's inode and then each ancestor folder's are tested (three
 * plain loads and a bit test per level), and only a set bit leads to the exact (device, inode)
 * hash lookup. Write-only and O_PATH opens
 * are dropped before the inode is touched. The excluded-tgid lookup, the device, comm, cgroup
 * and name are read only on a match.
 *
 * Hooks (the agent attaches one set; docs/configuration.md `bypass.mode`):
 * - `lsm/file_open`, else `fentry/security_file_open`: every open in the kernel (syscalls,
 *   io_uring, 32-bit), with the file as argument; preferred where the kernel allows them.
 * - `tracepoint`: the exits of open/openat/openat2/open_by_handle_at (64-bit syscalls only).
 * - `strict`: one `tp_btf/sys_exit` program that also sees 32-bit (`int 0x80`) opens, at the
 *   price of running on every syscall exit.
 * - with `tracepoint` and `strict`, `tp_btf/io_uring_complete` for io_uring opens
 *   (IORING_OP_OPENAT/OPENAT2), which never pass the syscall tracepoints.
 * - in every mode, the `timestamp` tracepoints for renames and links of protected files
 *   (`report_move`, below): who moved a file out of the roots.
 * Bursts: the first open of a file by a process is reported at once; its repeats within
 * REPEAT_WINDOW_NS of the one before are counted in `seen` instead of queued, and the agent
 * flushes the counts as one record per (process, file) every second, so a burst of any size
 * costs a bounded number of ring-buffer records. What cannot be queued is counted in `lost`.
 * Not seen (docs/audit.md): 32-bit opens in `tracepoint` mode, and fds that were opened before
 * the agent attached (those still open when it starts are found by its sweep of /proc,
 * agent/src/bypass/held.rs).
 *
 * The license must be GPL-compatible: bpf_probe_read_kernel is a GPL-only helper.
 */
#include "kernel_types.h"

#define O_ACCMODE 00000003
#define O_WRONLY 00000001
#define O_PATH 010000000
#define S_IFMT 00170000
#define S_IFDIR 0040000
#define NAME_LEN 256
#define CMDLINE_LEN 256
#define EXE_DEPTH 8
#define EXE_NAME 64
/* exe_reach: how far up the walk from the executable got. */
#define EXE_PARTIAL 0 /* more than EXE_DEPTH components, or a name too long: leading ones unknown */
#define EXE_ROOT 1    /* the opener's root directory: the path is complete (as the opener sees it) */
#define EXE_MOUNT 2   /* the root of another mount: the path is relative to where it is mounted */

/* Folders above an opened file that are checked against the protected set: its own folder is
 * level 1. A file created deeper below a protected folder than this, in folders made after the
 * agent's last scan, is covered from that scan on (docs/security.md). */
#define ANCESTOR_DEPTH 8
/* Names of the folders between the file and a protected ancestor, for its path. */
#define SUB_DEPTH (ANCESTOR_DEPTH - 1)
#define SUB_NAME 128
/* Repeats of an open of the same file by the same process within this long of the one before
 * are counted in `seen`, not queued one by one. */
#define REPEAT_WINDOW_NS 1000000000ULL

#define MATCH_FILE 1
#define MATCH_DIR 2

/* `event.hook`: the low byte names the hook, HOOK_IA32 marks a 32-bit syscall (strict mode). */
#define HOOK_OPEN 1
#define HOOK_OPENAT 2
#define HOOK_OPENAT2 3
#define HOOK_OPEN_BY_HANDLE_AT 4
#define HOOK_IO_URING 5
#define HOOK_LSM 6
#define HOOK_FENTRY 7
/* Moves (not opens): a rename or link of a protected file, or a move by io_uring. */
#define HOOK_RENAME 8
#define HOOK_LINK 9
#define HOOK_MOVE_IO_URING 10
/* An io_uring open into a direct descriptor (the ring's fixed-file table). */
#define HOOK_IO_URING_FIXED 11
#define HOOK_IA32 0x100

#define IORING_OP_OPENAT 18
#define IORING_OP_OPENAT2 28
#define IORING_FILE_INDEX_ALLOC (~0U)
/* Flag bits in the low bits of a fixed-file table entry (FFS_NOWAIT, FFS_ISREG). */
#define FFS_FLAGS 3UL

/* x86 syscall numbers of the open family: 64-bit (x32 adds bit 30) and ia32. */
#define NR_OPEN 2
#define NR_OPENAT 257
#define NR_OPEN_BY_HANDLE_AT 304
#define NR_OPENAT2 437
#define NR_IA32_OPEN 5
#define NR_IA32_OPENAT 295
#define NR_IA32_OPEN_BY_HANDLE_AT 342
#define NR_IA32_OPENAT2 437
#define X32_SYSCALL_BIT 0x40000000
#define TS_COMPAT 0x0002

/* Bits in `ino_filter`: 64 per word. Inode numbers are taken modulo FILTER_WORDS * 64 (4 Mi). */
#define FILTER_WORDS 65536

/* Key of `protected`: kernel device number and inode number. */
struct file_key {
	__u64 ino;
	__u32 dev;
	__u32 pad;
};

/* One bypass open. Mirrored by `RawEvent` in agent/src/bypass/event.rs: keep in step. */
struct event {
	__u64 cgroup_id;
	__u64 ino;
	__u64 dir_ino;
	__u32 dev;
	__u32 dir_dev;
	__u32 pid;
	__u32 tgid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__s32 fd;
	__u32 flags;
	__u16 matched;
	__u16 hook;
	char comm[16];
	char name[NAME_LEN];
	/* The opener's argv, NUL-separated, read at the open: a reader that exits before the
	 * agent looks at /proc still has its command line. */
	__u32 cmdline_len;
	/* The adoption generation when the opener's program reached it, read before the record
	 * was reserved (see `generation`). */
	__u32 generation;
	char cmdline[CMDLINE_LEN];
	/* The opener's executable, read at the open for the same reason: the names of the last
	 * exe_depth components of its path, the file's own name first; exe_reach says whether
	 * the walk reached the root. */
	__u32 exe_depth;
	__u32 exe_reach;
	char exe[EXE_DEPTH][EXE_NAME];
	/* The executable's (inode, device), read at the open: what the allow-list is matched on
	 * (a path can be made to look like an allowed one from another mount namespace, and the
	 * process can exec something else before /proc is read; the file it ran cannot). */
	__u64 exe_ino;
	__u32 exe_dev;
	__u32 pad2;
	/* MATCH_DIR: the protected folder's level above the file (1 = the file's own folder), and
	 * the names of the folders between, nearest first (sub_depth of them were read; fewer
	 * than dir_depth - 1 means a name could not be read whole). */
	__u32 dir_depth;
	__u32 sub_depth;
	char sub[SUB_DEPTH][SUB_NAME];
};

/* Key of `seen`: one process and one file. */
struct seen_key {
	__u64 ino;
	__u32 dev;
	__u32 tgid;
};

/* Opens of one file by one process: the first was reported as an event; `count` counts the
 * repeats that were not (monotonic; the agent remembers how many it has flushed). */
struct seen_val {
	__u64 first_ns;
	__u64 last_ns;
	__u64 count;
};

/* (dev, ino) of each protected file and directory -> MATCH_FILE or MATCH_DIR. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct file_key);
	__type(value, __u32);
} protected SEC(".maps");

/* Bit (ino mod 4 Mi) is set for the inode of every entry in `protected`: the first filter. The
 * agent sets a bit before it inserts the entry and clears it only when no entry maps to it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} ino_filter SEC(".maps");

/* Opens already reported, per (process, file): the agent flushes their repeat counts every
 * second and deletes entries idle for several seconds (with an atomic lookup-and-delete, whose
 * value it still reports). When full, opens are reported one by one again. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct seen_key);
	__type(value, struct seen_val);
} seen SEC(".maps");

/* [0]: the start of the agent's last scan whose entries are all in `protected`, in seconds on
 * the clock of inode change times (minus a second for its coarse granularity); 0 until the
 * first scan is in: the walk then goes the whole ANCESTOR_DEPTH. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} scan_epoch SEC(".maps");

/* Thread-group ids whose opens are not reported (the agent itself, and a journal read's
 * journalctl while it runs), each with the start time of the process that holds it, in clock
 * ticks since boot (field 22 of /proc/<pid>/stat, read by the agent). An entry hides only that
 * very process: one left behind (the agent was SIGKILLed) hides nothing once its pid is reused.
 * Room for the agent and one journalctl per stream at the highest limits.max_streams (256), with
 * a margin; the agent checks it at load time (EXCLUDED_TGIDS_MAX in loader.rs). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 512);
	__type(key, __u32);
	__type(value, __u64);
} excluded_tgids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 512 * 1024);
} events SEC(".maps");

/* [0]: the adoption generation: an agent that adopts pinned programs advances it before it
 * takes what they queued while no agent ran out of the ring. Every record carries the value
 * read before it was reserved, so the agent tells a record of an open made before its
 * adoption, committed too late for that drain (held reserved across it: a preempted program),
 * from a live one by its generation, not by when it was read. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} generation SEC(".maps");

/* The current adoption generation (see `generation`). */
static __always_inline __u32 current_generation(void)
{
	__u32 zero = 0, *g = bpf_map_lookup_elem(&generation, &zero);

	return g ? *g : 0;
}

/* [0]: events lost because the ring buffer was full. Never reset by the kernel. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* The record of a syscalls:sys_exit_* tracepoint (see its `format` file in tracefs). */
struct sys_exit_args {
	__u64 common;
	__s32 syscall_nr;
	__s32 pad;
	long ret;
};

/* What matching learned about an opened file; filled for the event on a match. */
struct opened {
	struct dentry *dentry;
	__u64 ino;
	__u64 dir_ino;
	__u32 dev;
	__u32 dir_dev;
	__u32 flags;
	__u32 dir_depth;
	__u16 matched;
};

static __always_inline int maybe_protected(__u64 ino)
{
	__u32 word = (ino >> 6) & (FILTER_WORDS - 1);
	__u64 *bits = bpf_map_lookup_elem(&ino_filter, &word);

	return bits && (*bits & (1ULL << (ino & 63)));
}

static __always_inline __s64 scan_epoch_sec(void)
{
	__u32 zero = 0;
	__s64 *t = bpf_map_lookup_elem(&scan_epoch, &zero);

	return t ? *t : 0;
}

#define FIELD_EXISTS(field) __builtin_preserve_field_info(field, 2 /* BPF_FIELD_EXISTS */)

/* The change time (seconds) of `inode` into `out`, by whichever field this kernel has; left
 * as it is (the caller's "not older") when it has none. */
#define CTIME_SEC(LOAD, inode, out)                                                      \
	do {                                                                             \
		struct inode___ctime_sec *n_ = (void *)(inode);                          \
		struct inode___ctime_606 *m_ = (void *)(inode);                          \
		struct inode___ctime_old *o_ = (void *)(inode);                          \
		if (FIELD_EXISTS(n_->i_ctime_sec))                                       \
			LOAD(out, n_->i_ctime_sec);                                      \
		else if (FIELD_EXISTS(m_->__i_ctime))                                    \
			LOAD(out, m_->__i_ctime.tv_sec);                                 \
		else if (FIELD_EXISTS(o_->i_ctime))                                      \
			LOAD(out, o_->i_ctime.tv_sec);                                   \
	} while (0)

static __always_inline int is_protected(__u32 dev, __u64 ino)
{
	struct file_key key = { .ino = ino, .dev = dev };

	return bpf_map_lookup_elem(&protected, &key) != 0;
}

/*
 * Matches an opened file (its inode, and in `o` its flags and dentry) against the protected set:
 * its own (dev, ino), else its folder's, else that of each folder above, up to ANCESTOR_DEPTH
 * levels or the filesystem's root. Written once for both kinds of pointer: LOAD
 * is a plain (BTF-typed) load for a pointer the verifier knows the type of, and a
 * bpf_probe_read_kernel for one read from memory. Returns MATCH_FILE, MATCH_DIR or 0 (also for
 * write-only and O_PATH opens, and directories).
 */
#define DEFINE_MATCH(name, LOAD)                                                          \
	static __always_inline int name(struct inode *inode, struct opened *o)            \
	{                                                                                 \
		struct inode *dir_inode = 0;                                              \
		struct dentry *parent = 0, *d = 0;                                        \
		__s64 epoch, ctime;                                                       \
		int level;                                                                \
		struct super_block *sb = 0;                                               \
		umode_t mode = 0;                                                         \
                                                                                          \
		if ((o->flags & O_ACCMODE) == O_WRONLY || (o->flags & O_PATH) || !inode)  \
			return 0;                                                         \
		LOAD(o->ino, inode->i_ino);                                               \
		if (maybe_protected(o->ino)) {                                            \
			LOAD(sb, inode->i_sb);                                            \
			if (sb)                                                           \
				LOAD(o->dev, sb->s_dev);                                  \
			if (is_protected(o->dev, o->ino))                                 \
				o->matched = MATCH_FILE;                                  \
		}                                                                         \
		d = o->dentry;                                                            \
		epoch = scan_epoch_sec();                                                 \
		_Pragma("unroll") for (level = 1; level <= ANCESTOR_DEPTH; level++)       \
		{                                                                         \
			if (o->matched || !d)                                             \
				break;                                                    \
			parent = 0;                                                       \
			dir_inode = 0;                                                    \
			LOAD(parent, d->d_parent);                                        \
			if (!parent || parent == d)                                       \
				break;                                                    \
			LOAD(dir_inode, parent->d_inode);                                 \
			if (!dir_inode)                                                   \
				break;                                                    \
			LOAD(o->dir_ino, dir_inode->i_ino);                               \
			if (maybe_protected(o->dir_ino)) {                                \
				sb = 0;                                                   \
				LOAD(sb, dir_inode->i_sb);                                \
				if (sb)                                                   \
					LOAD(o->dir_dev, sb->s_dev);                      \
				if (is_protected(o->dir_dev, o->dir_ino)) {               \
					o->matched = MATCH_DIR;                           \
					o->dir_depth = level;                             \
				}                                                         \
			}                                                                 \
			if (!o->matched) {                                                \
				/* Unprotected and there at the last scan: no root above. */ \
				ctime = epoch;                                            \
				CTIME_SEC(LOAD, dir_inode, ctime);                        \
				if (ctime < epoch)                                        \
					break;                                            \
			}                                                                 \
			d = parent;                                                       \
		}                                                                         \
		if (o->matched == MATCH_DIR) {                                            \
			sb = 0;                                                           \
			LOAD(sb, inode->i_sb);                                            \
			if (sb)                                                           \
				LOAD(o->dev, sb->s_dev);                                  \
		}                                                                         \
		if (!o->matched)                                                          \
			return 0;                                                         \
		/* Listing a protected directory is not a read of a log file. */          \
		LOAD(mode, inode->i_mode);                                                \
		if ((mode & S_IFMT) == S_IFDIR)                                           \
			return 0;                                                         \
		return o->matched;                                                        \
	}

#define LOAD_BTF(dst, src) ((dst) = (src))
#define LOAD_PROBE(dst, src) bpf_probe_read_kernel(&(dst), sizeof(dst), &(src))

DEFINE_MATCH(match_btf, LOAD_BTF)
#ifdef FD_SLOT_PROBE_READ
DEFINE_MATCH(match_probe, LOAD_PROBE)
#endif

/* A file reached by BTF-typed loads: its fields are plain loads. */
static __always_inline int match_file_btf(struct file *file, struct opened *o)
{
	o->flags = file->f_flags;
	o->dentry = file->f_path.dentry;
	return match_btf(file->f_inode, o);
}

#define FIELD_OFFSET(field) __builtin_preserve_field_info(field, 0 /* BPF_FIELD_BYTE_OFFSET */)

#ifdef FD_SLOT_PROBE_READ
#define FILE_CHUNK 64

/* A file pointer read from memory: f_flags, f_inode and f_path.dentry lie a few dozen bytes
 * apart, so one bpf_probe_read_kernel of the span between them (offsets from CO-RE, constants
 * once loaded) replaces three; a kernel whose layout spreads them wider takes three reads. */
static __always_inline int match_file_probe(struct file *file, struct opened *o)
{
	__u32 off_flags = FIELD_OFFSET(file->f_flags);
	__u32 off_inode = FIELD_OFFSET(file->f_inode);
	__u32 off_dentry = FIELD_OFFSET(file->f_path.dentry);
	__u32 lo = off_flags, hi = off_flags + sizeof(o->flags);
	struct inode *inode = 0;
	char chunk[FILE_CHUNK];

	if (off_inode < lo)
		lo = off_inode;
	if (off_dentry < lo)
		lo = off_dentry;
	if (off_inode + sizeof(inode) > hi)
		hi = off_inode + sizeof(inode);
	if (off_dentry + sizeof(o->dentry) > hi)
		hi = off_dentry + sizeof(o->dentry);
	if (hi - lo > FILE_CHUNK) {
		LOAD_PROBE(o->flags, file->f_flags);
		LOAD_PROBE(o->dentry, file->f_path.dentry);
		LOAD_PROBE(inode, file->f_inode);
		return match_probe(inode, o);
	}
	if (bpf_probe_read_kernel(chunk, hi - lo, (char *)file + lo))
		return 0;
	__builtin_memcpy(&o->flags, chunk + (off_flags - lo), sizeof(o->flags));
	__builtin_memcpy(&o->dentry, chunk + (off_dentry - lo), sizeof(o->dentry));
	__builtin_memcpy(&inode, chunk + (off_inode - lo), sizeof(inode));
	return match_probe(inode, o);
}

#endif

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
}

/* The opener's executable path, from its dentry up towards the root, one name per component
 * (at most EXE_DEPTH); only for matched opens, so its cost is not on the miss path. */
static __always_inline void read_exe(struct task_struct *task, struct event *e)
{
	struct dentry *d = 0, *parent, *stop = 0, *root = 0;
	struct inode *inode = 0;
	struct file *exe = 0;
	int i, cut = 0;
	long n;

	e->exe_depth = 0;
	e->exe_reach = EXE_PARTIAL;
	e->exe_ino = 0;
	e->exe_dev = 0;
	e->pad2 = 0;
	if (task->mm)
		exe = task->mm->exe_file;
	if (!exe)
		return;
	inode = exe->f_inode;
	if (inode) {
		e->exe_ino = inode->i_ino;
		if (inode->i_sb)
			e->exe_dev = inode->i_sb->s_dev;
	}
	d = exe->f_path.dentry;
	if (exe->f_path.mnt)
		stop = exe->f_path.mnt->mnt_root;
	if (task->fs)
		root = task->fs->root.dentry;
	for (i = 0; i < EXE_DEPTH; i++) {
		/* The opener's root (a chroot, a container's), or the root of the exe's mount (a
		 * btrfs subvolume's or a bind mount's, not its filesystem's). */
		if (!d || d == root || d == stop)
			break;
		parent = d->d_parent;
		if (!parent || parent == d)
			break;
		n = bpf_probe_read_kernel_str(e->exe[i], EXE_NAME, d->d_name.name);
		/* A name that filled the buffer may have been cut: stop, leading parts unknown. */
		if (n < 1 || n >= EXE_NAME) {
			cut = 1;
			break;
		}
		e->exe_depth = i + 1;
		d = parent;
	}
	if (cut || !d)
		return;
	if (d == root)
		e->exe_reach = EXE_ROOT;
	else if (d == stop)
		e->exe_reach = EXE_MOUNT;
}

/* The names of the folders between a file and its protected ancestor (MATCH_DIR), nearest first:
 * only for matched opens. */
static __always_inline void read_sub(struct opened *o, struct event *e)
{
	struct dentry *d = 0, *parent = 0;
	const unsigned char *name = 0;
	int i;
	long n;

	e->dir_depth = o->matched == MATCH_DIR ? o->dir_depth : 0;
	e->sub_depth = 0;
	if (e->dir_depth < 2 || !o->dentry)
		return;
	bpf_probe_read_kernel(&d, sizeof(d), &o->dentry->d_parent);
	for (i = 0; i < SUB_DEPTH; i++) {
		if (i + 1 >= e->dir_depth || !d)
			break;
		name = 0;
		bpf_probe_read_kernel(&name, sizeof(name), &d->d_name.name);
		if (!name)
			break;
		n = bpf_probe_read_kernel_str(e->sub[i], SUB_NAME, name);
		/* A name that filled the buffer may have been cut: stop; the path is then unknown. */
		if (n < 1 || n >= SUB_NAME)
			break;
		e->sub_depth = i + 1;
		parent = 0;
		bpf_probe_read_kernel(&parent, sizeof(parent), &d->d_parent);
		d = parent;
	}
}

/*
 * Whether this open is a repeat to be counted rather than reported: the same process opened the
 * same file within REPEAT_WINDOW_NS of its last open. A first open (or one after a pause, or
 * one that finds `seen` full) is reported; an entry is created with BPF_NOEXIST so that two
 * threads racing to create it both report, and no count is ever overwritten.
 */
static __always_inline int counted_as_repeat(__u32 tgid, struct opened *o)
{
	struct seen_key key = { .ino = o->ino, .dev = o->dev, .tgid = tgid };
	__u64 now = bpf_ktime_get_ns();
	struct seen_val *v = bpf_map_lookup_elem(&seen, &key);

	if (v) {
		if (now - v->last_ns < REPEAT_WINDOW_NS) {
			__sync_fetch_and_add(&v->count, 1);
			v->last_ns = now;
			return 1;
		}
		v->last_ns = now;
		return 0;
	}
	{
		struct seen_val fresh = { .first_ns = now, .last_ns = now, .count = 0 };

		bpf_map_update_elem(&seen, &key, &fresh, BPF_NOEXIST);
	}
	return 0;
}

/* USER_HZ: /proc shows start times in 1/100 s ticks on every architecture the agent runs on
 * (the agent refuses to exclude anything where sysconf(_SC_CLK_TCK) differs). */
#define NS_PER_CLOCK_TICK 10000000ULL

/* Whether the current process is excluded: its tgid is in excluded_tgids with its own start
 * time. The start time is read only when the tgid is there (the agent's own opens and its
 * journalctl's), so an open by any other process costs the one lookup it always did. */
static __always_inline int excluded(__u32 tgid)
{
	__u64 *started = bpf_map_lookup_elem(&excluded_tgids, &tgid);
	struct task_struct *task;

	if (!started)
		return 0;
	task = bpf_get_current_task_btf();
	return task->group_leader->start_boottime / NS_PER_CLOCK_TICK == *started;
}

/* The process fields of an event: the current task's ids, command, cgroup, argv and
 * executable, read now (a short-lived process may be gone before the agent reads /proc). */
static __always_inline void fill_process(struct event *e, __u64 pid_tgid)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 uid_gid = bpf_get_current_uid_gid();

	e->cgroup_id = bpf_get_current_cgroup_id();
	e->pid = (__u32)pid_tgid;
	e->tgid = pid_tgid >> 32;
	e->ppid = task->real_parent->tgid;
	e->uid = (__u32)uid_gid;
	e->gid = uid_gid >> 32;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->cmdline_len = 0;
	if (task->mm) {
		unsigned long start = task->mm->arg_start, end = task->mm->arg_end;
		__u64 len = end > start ? end - start : 0;

		if (len > CMDLINE_LEN - 1)
			len = CMDLINE_LEN - 1;
		len &= CMDLINE_LEN - 1; /* the same bound, in a form the verifier follows */
		/* A paged-out argv (rare) reads as nothing; /proc may still have it. */
		if (len && !bpf_probe_read_user(e->cmdline, len, (void *)start))
			e->cmdline_len = len;
	}
	read_exe(task, e);
}

/* Emits the event for a matched open, unless the opener is excluded or the open is a counted
 * repeat. */
static __always_inline void emit(struct opened *o, long fd, __u16 hook)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	const unsigned char *name = 0;
	struct event *e;
	__u32 gen;

	if (excluded(tgid))
		return;
	if (counted_as_repeat(tgid, o))
		return;
	gen = current_generation();
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	e->generation = gen;
	fill_process(e, pid_tgid);
	e->ino = o->ino;
	e->dir_ino = o->matched == MATCH_DIR ? o->dir_ino : 0;
	e->dev = o->dev;
	e->dir_dev = o->matched == MATCH_DIR ? o->dir_dev : 0;
	e->fd = (__s32)fd;
	e->flags = o->flags;
	e->matched = o->matched;
	e->hook = hook;
	e->name[0] = 0;
	if (o->dentry) {
		bpf_probe_read_kernel(&name, sizeof(name), &o->dentry->d_name.name);
		if (name)
			bpf_probe_read_kernel_str(e->name, sizeof(e->name), name);
	}
	read_sub(o, e);
	bpf_ringbuf_submit(e, 0);
}

#ifdef FD_SLOT_PROBE_READ
/* Fallback for kernels that refuse the bpf_rdonly_cast kfunc (or lack it): a constant-index,
 * BTF-typed load of the fd slot when the table is the one embedded in files_struct (the
 * verifier refuses a variable index into a BTF-typed array, so the index is turned into a
 * constant by a binary-searched switch), and bpf_probe_read_kernel for a grown table. */
#define SLOT(n) \
	case n: \
		return files->fd_array[n];
#define SLOTS8(n) SLOT(n) SLOT(n + 1) SLOT(n + 2) SLOT(n + 3) SLOT(n + 4) SLOT(n + 5) SLOT(n + 6) SLOT(n + 7)

static __always_inline struct file *embedded_slot(struct files_struct *files, long fd)
{
	switch (fd) {
		SLOTS8(0)
		SLOTS8(8)
		SLOTS8(16)
		SLOTS8(24)
		SLOTS8(32)
		SLOTS8(40)
		SLOTS8(48)
		SLOTS8(56)
	}
	return 0;
}

/* The file of `fd` (below fdt->max_fds), matched against the protected set into `o`. */
static __always_inline int match_fd(struct files_struct *files, struct fdtable *fdt, long fd,
				    struct opened *o)
{
	struct file *file = 0;

	/* A table that never grew is the one embedded in files_struct: its slots are fd_array
	 * (every grown table has more than NR_OPEN_DEFAULT slots). */
	if (fdt->max_fds == NR_OPEN_DEFAULT) {
		file = embedded_slot(files, fd);
		return file && match_file_btf(file, o);
	}
	bpf_probe_read_kernel(&file, sizeof(file), &fdt->fd[fd]);
	return file && match_file_probe(file, o);
}
#else
/*
 * bpf_rdonly_cast(void *obj, u32 btf_id): the kernel's kfunc that turns any address into an
 * untrusted, read-only pointer to the vmlinux type `btf_id`. Loads through it are plain
 * instructions that the kernel marks fault-tolerant (a bad address reads as zero, like a failed
 * bpf_probe_read_kernel), and the verifier rewrites the call itself into a register move: no
 * helper call is left.
 *
 * aya 0.14 cannot relocate a kfunc declared `extern ... __ksym`, so the call is written as its
 * raw instruction: BPF_JMP|BPF_CALL (0x85), src_reg BPF_PSEUDO_KFUNC_CALL (2), off 0 (vmlinux
 * BTF), imm RDONLY_CAST_PLACEHOLDER. The agent replaces that imm with the FUNC id of
 * bpf_rdonly_cast in the running kernel's BTF before loading (agent/src/bypass/kfunc.rs: keep
 * the value in step). The argument registers follow the BPF calling convention (r1, r2 in, r0
 * out, r1-r5 clobbered).
 */
#define RDONLY_CAST_PLACEHOLDER 0x6c67cafe
#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)
/* Little-endian: code 0x85, regs 0x20 (src 2, dst 0), off 0, then imm in the high half. */
#define RDONLY_CAST_INSN ".quad (" STRINGIFY(RDONLY_CAST_PLACEHOLDER) " << 32) | 0x2085"

static __always_inline void *rdonly_cast(unsigned long addr, unsigned long btf_id)
{
	register unsigned long r1 asm("r1") = addr;
	register unsigned long r2 asm("r2") = btf_id;
	register void *r0 asm("r0");

	asm volatile(RDONLY_CAST_INSN : "=r"(r0), "+r"(r1), "+r"(r2) : : "r3", "r4", "r5");
	return r0;
}

/* The kernel's BTF id of `type` (a CO-RE relocation the loader resolves). */
#define KERNEL_TYPE_ID(type) __builtin_btf_type_id(*(type *)0, 1 /* BPF_TYPE_ID_TARGET */)

/*
 * The file of `fd` (below fdt->max_fds), matched against the protected set into `o`.
 *
 * fdt->fd points at the slots of either table, the embedded one or a grown one, but BTF types
 * it `struct file **`, which the verifier treats as a number. The slot's address is cast to a
 * struct whose member is a `struct file *`: `struct kiocb`, whose `ki_filp` is such a pointer
 * (its offset, taken by CO-RE, is subtracted so that the member lands on the slot). Loading
 * the member then gives a BTF-typed `struct file *`, and every load after it is plain.
 */
static __always_inline int match_fd(struct files_struct *files, struct fdtable *fdt, long fd,
				    struct opened *o)
{
	unsigned long slot = (unsigned long)fdt->fd + fd * sizeof(struct file *);
	struct kiocb *k = rdonly_cast(slot - FIELD_OFFSET(((struct kiocb *)0)->ki_filp),
				      KERNEL_TYPE_ID(struct kiocb));
	struct file *file = k->ki_filp;

	return file && match_file_btf(file, o);
}
#endif

/* Reports the open that just returned `fd` in the current task's fd table, if it is a read of
 * a protected file. */
static __always_inline int report_fd(long fd, __u16 hook)
{
	struct task_struct *task;
	struct files_struct *files;
	struct fdtable *fdt;
	struct opened o = {};

	if (fd < 0)
		return 0;
	task = bpf_get_current_task_btf();
	files = task->files;
	if (!files)
		return 0;
	fdt = files->fdt;
	if (!fdt || (unsigned long)fd >= fdt->max_fds)
		return 0;
	if (match_fd(files, fdt, fd, &o))
		emit(&o, fd, hook);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_open")
int exit_open(struct sys_exit_args *ctx)
{
	return report_fd(ctx->ret, HOOK_OPEN);
}

SEC("tracepoint/syscalls/sys_exit_openat")
int exit_openat(struct sys_exit_args *ctx)
{
	return report_fd(ctx->ret, HOOK_OPENAT);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int exit_openat2(struct sys_exit_args *ctx)
{
	return report_fd(ctx->ret, HOOK_OPENAT2);
}

SEC("tracepoint/syscalls/sys_exit_open_by_handle_at")
int exit_open_by_handle_at(struct sys_exit_args *ctx)
{
	return report_fd(ctx->ret, HOOK_OPEN_BY_HANDLE_AT);
}

/* The hook of an x86 open-family syscall number, 0 for any other syscall. */
static __always_inline __u16 open_hook(unsigned long nr, int ia32)
{
	if (ia32) {
		switch (nr) {
		case NR_IA32_OPEN:
			return HOOK_IA32 | HOOK_OPEN;
		case NR_IA32_OPENAT:
			return HOOK_IA32 | HOOK_OPENAT;
		case NR_IA32_OPENAT2:
			return HOOK_IA32 | HOOK_OPENAT2;
		case NR_IA32_OPEN_BY_HANDLE_AT:
			return HOOK_IA32 | HOOK_OPEN_BY_HANDLE_AT;
		}
		return 0;
	}
	switch (nr & ~(unsigned long)X32_SYSCALL_BIT) {
	case NR_OPEN:
		return HOOK_OPEN;
	case NR_OPENAT:
		return HOOK_OPENAT;
	case NR_OPENAT2:
		return HOOK_OPENAT2;
	case NR_OPEN_BY_HANDLE_AT:
		return HOOK_OPEN_BY_HANDLE_AT;
	}
	return 0;
}

/* Strict mode: sys_exit(struct pt_regs *regs, long ret) runs for every syscall, 64- and 32-bit
 * alike (the per-syscall tracepoints skip ia32 syscalls on x86). The syscall number is the
 * first test, so other syscalls pay two loads and a few compares. */
SEC("tp_btf/sys_exit")
int sys_exit_strict(__u64 *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	long ret = (long)ctx[1];
	struct task_struct *task;
	__u16 hook;

	if (ret < 0)
		return 0;
	task = bpf_get_current_task_btf();
	hook = open_hook(regs->orig_ax, task->thread_info.status & TS_COMPAT);
	if (!hook)
		return 0;
	return report_fd(ret, hook);
}

/* The file in slot `slot` of the ring's fixed-file table (0 if none), by whichever layout this
 * kernel has. Read with bpf_probe_read_kernel: io_uring opens are rare, and a variable index
 * through a typed pointer is refused. */
static __always_inline unsigned long fixed_file(void *ring, __u32 slot)
{
	struct io_ring_ctx *r = ring;
	struct io_ring_ctx___old *old = ring;
	struct io_rsrc_node **nodes = 0, *node = 0;
	struct io_fixed_file *files = 0;
	unsigned long file_ptr = 0;
	unsigned int nr = 0;

	if (FIELD_EXISTS(r->file_table.data.nodes)) {
		bpf_probe_read_kernel(&nr, sizeof(nr), &r->file_table.data.nr);
		if (slot >= nr)
			return 0;
		bpf_probe_read_kernel(&nodes, sizeof(nodes), &r->file_table.data.nodes);
		if (!nodes)
			return 0;
		bpf_probe_read_kernel(&node, sizeof(node), &nodes[slot]);
		if (!node)
			return 0;
		bpf_probe_read_kernel(&file_ptr, sizeof(file_ptr), &node->file_ptr);
	} else if (FIELD_EXISTS(old->file_table.files)) {
		bpf_probe_read_kernel(&nr, sizeof(nr), &old->nr_user_files);
		if (slot >= nr)
			return 0;
		bpf_probe_read_kernel(&files, sizeof(files), &old->file_table.files);
		if (!files)
			return 0;
		bpf_probe_read_kernel(&file_ptr, sizeof(file_ptr), &files[slot].file_ptr);
	}
	return file_ptr & ~FFS_FLAGS;
}

/* The file at kernel address `addr`, matched against the protected set into `o`. */
static __always_inline int match_file_at(unsigned long addr, struct opened *o)
{
#ifdef FD_SLOT_PROBE_READ
	return addr && match_file_probe((struct file *)addr, o);
#else
	struct file *file;

	if (!addr)
		return 0;
	file = rdonly_cast(addr, KERNEL_TYPE_ID(struct file));
	return file && match_file_btf(file, o);
#endif
}

/* io_uring_complete(struct io_ring_ctx *ctx, void *req, struct io_uring_cqe *cqe): runs in the
 * task posting the completion (the submitter or one of its io-wq worker threads, which share
 * its fd table), so the fd in cqe->res is looked up like a syscall's return value. An open into
 * a direct descriptor (the request's file_slot set) installs no fd: its file is taken from the
 * ring's fixed-file table at the slot it went into (reported with fd -1). */
SEC("tp_btf/io_uring_complete")
int io_uring_complete(__u64 *ctx)
{
	struct io_kiocb *req = (struct io_kiocb *)ctx[1];
	struct io_uring_cqe *cqe = (struct io_uring_cqe *)ctx[2];
	struct opened o = {};
	__u32 file_slot = 0, slot;
	__u8 opcode = 0;
	__s32 res = -1;

	bpf_probe_read_kernel(&opcode, sizeof(opcode), &req->opcode);
	if (opcode != IORING_OP_OPENAT && opcode != IORING_OP_OPENAT2)
		return 0;
	bpf_probe_read_kernel(&res, sizeof(res), &cqe->res);
	bpf_probe_read_kernel(&file_slot, sizeof(file_slot), &((struct io_open *)req)->file_slot);
	if (!file_slot)
		return report_fd(res, HOOK_IO_URING);
	if (res < 0)
		return 0;
	/* IORING_FILE_INDEX_ALLOC: the kernel chose the slot and returned it. */
	slot = file_slot == IORING_FILE_INDEX_ALLOC ? (__u32)res : file_slot - 1;
	if (match_file_at(fixed_file((void *)ctx[0], slot), &o))
		emit(&o, -1, HOOK_IO_URING_FIXED);
	return 0;
}

/* The file being opened, before its fd exists (fd reported as -1). */
static __always_inline int report_file(struct file *file, __u16 hook)
{
	struct opened o = {};

	if (file && match_file_btf(file, &o))
		emit(&o, -1, hook);
	return 0;
}

/* BPF LSM: file_open(struct file *file). Returns 0: the audit never denies. */
SEC("lsm/file_open")
int lsm_file_open(__u64 *ctx)
{
	return report_file((struct file *)ctx[0], HOOK_LSM);
}

/* security_file_open(struct file *file), where the kernel allows fentry but not BPF LSM. */
SEC("fentry/security_file_open")
int fentry_file_open(__u64 *ctx)
{
	return report_file((struct file *)ctx[0], HOOK_FENTRY);
}

/*
 * Moves: who renamed or linked a protected file. A rename and a link both set the change time
 * of the inode they move or link, in the mover's own task: the `timestamp` tracepoints (6.13+)
 * that fire there are handed the inode, which is matched against the protected set like an
 * opened file's (the filter bit, then the exact key). On a match, the syscall the task is in
 * (its registers at entry) tells a rename or link from the other causes of a change-time
 * update (a write, chmod, unlink...), which are dropped, and names the new name as the mover
 * gave it. An io_uring worker, or a task inside io_uring_enter, is reported as an io_uring
 * move (its request is not known here). Nothing of this runs on the open path: change-time
 * updates of unprotected files pay the filter test only. Which move takes a file out of the
 * roots is the agent's rescan's to say (agent/src/bypass/moves.rs).
 */
#define NR_RENAME 82
#define NR_LINK 86
#define NR_RENAMEAT 264
#define NR_LINKAT 265
#define NR_RENAMEAT2 316
#define NR_IO_URING_ENTER 426
#define NR_IA32_LINK 9
#define NR_IA32_RENAME 38
#define NR_IA32_RENAMEAT 302
#define NR_IA32_LINKAT 303
#define NR_IA32_RENAMEAT2 353
#define NR_IA32_IO_URING_ENTER 426
#define PF_IO_WORKER 0x00000010

/* The move hook of the syscall in `regs`, and in *name the user address of its new name;
 * 0 for any other syscall. */
static __always_inline __u16 move_hook(struct pt_regs *regs, int ia32, unsigned long *name)
{
	unsigned long nr = regs->orig_ax;

	if (ia32) {
		switch (nr) {
		case NR_IA32_RENAME:
			*name = regs->cx;
			return HOOK_IA32 | HOOK_RENAME;
		case NR_IA32_LINK:
			*name = regs->cx;
			return HOOK_IA32 | HOOK_LINK;
		case NR_IA32_RENAMEAT:
		case NR_IA32_RENAMEAT2:
			*name = regs->si;
			return HOOK_IA32 | HOOK_RENAME;
		case NR_IA32_LINKAT:
			*name = regs->si;
			return HOOK_IA32 | HOOK_LINK;
		case NR_IA32_IO_URING_ENTER:
			return HOOK_MOVE_IO_URING;
		}
		return 0;
	}
	switch (nr & ~(unsigned long)X32_SYSCALL_BIT) {
	case NR_RENAME:
		*name = regs->si;
		return HOOK_RENAME;
	case NR_LINK:
		*name = regs->si;
		return HOOK_LINK;
	case NR_RENAMEAT:
	case NR_RENAMEAT2:
		*name = regs->r10;
		return HOOK_RENAME;
	case NR_LINKAT:
		*name = regs->r10;
		return HOOK_LINK;
	case NR_IO_URING_ENTER:
		return HOOK_MOVE_IO_URING;
	}
	return 0;
}

/* Reports a rename or link of a protected inode by the current task. */
static __always_inline int report_move(struct inode *inode)
{
	struct task_struct *task;
	struct file_key key = {};
	unsigned long name = 0;
	__u64 pid_tgid;
	__u32 tgid, *kind, gen;
	struct event *e;
	__u16 hook;

	if (!inode)
		return 0;
	key.ino = inode->i_ino;
	if (!maybe_protected(key.ino))
		return 0;
	if (inode->i_sb)
		key.dev = inode->i_sb->s_dev;
	kind = bpf_map_lookup_elem(&protected, &key);
	if (!kind)
		return 0;
	task = bpf_get_current_task_btf();
	if (task->flags & PF_IO_WORKER)
		hook = HOOK_MOVE_IO_URING;
	else
		hook = move_hook(bpf_task_pt_regs(task), task->thread_info.status & TS_COMPAT,
				 &name);
	if (!hook)
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	tgid = pid_tgid >> 32;
	if (excluded(tgid))
		return 0;
	gen = current_generation();
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	e->generation = gen;
	fill_process(e, pid_tgid);
	e->ino = key.ino;
	e->dev = key.dev;
	e->dir_ino = 0;
	e->dir_dev = 0;
	e->fd = -1;
	e->flags = 0;
	e->matched = *kind;
	e->hook = hook;
	e->dir_depth = 0;
	e->sub_depth = 0;
	e->name[0] = 0;
	/* The new name as the mover gave it (relative to its directory fd or working folder). */
	if (name)
		bpf_probe_read_user_str(e->name, sizeof(e->name), (void *)name);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* Non-multigrain filesystems: inode_set_ctime_to_ts(struct inode *, struct timespec64 *). */
SEC("tp_btf/inode_set_ctime_to_ts")
int move_ctime_set(__u64 *ctx)
{
	return report_move((struct inode *)ctx[0]);
}

/* Multigrain filesystems (ext4, xfs, btrfs, tmpfs): the change time was swapped in,
 * ctime_ns_xchg(struct inode *, u32 old, u32 new, u32 cur)... */
SEC("tp_btf/ctime_ns_xchg")
int move_ctime_xchg(__u64 *ctx)
{
	return report_move((struct inode *)ctx[0]);
}

/* ...or was already the same: ctime_xchg_skip(struct inode *, struct timespec64 *). */
SEC("tp_btf/ctime_xchg_skip")
int move_ctime_skip(__u64 *ctx)
{
	return report_move((struct inode *)ctx[0]);
}

char LICENSE[] SEC("license") = "GPL";
