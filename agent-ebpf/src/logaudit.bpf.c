// SPDX-License-Identifier: GPL-2.0
/*
 * loggate bypass audit: reports every successful open-for-reading of a protected log file by any
 * process the agent has not excluded (itself).
 *
 * Matching is on what was opened, never on a path string: at the exit of the open syscalls the
 * returned fd is turned into its `struct file`, and the file's (device, inode) is looked up in
 * `protected` (filled by the agent with every protected file AND directory). On a miss the parent
 * directory's (device, inode) is looked up, so a file created by rotation in a protected
 * directory is covered before the agent learns of it, and symlinks, hard links, `..`, bind
 * mounts and relative paths all resolve to the same inode. Device numbers are the kernel's
 * `sb->s_dev` encoding, `(major << 20) | minor`; the agent converts `stat()`'s `st_dev`.
 *
 * Cost discipline: an open of an unprotected file (the common case) does one hash lookup on the
 * tgid, four kernel reads and one or two inode-only lookups in `protected_ino`, then returns.
 * Everything else (device, comm, cgroup, name) is read only on a match.
 *
 * io_uring opens (IORING_OP_OPENAT/OPENAT2) never pass the syscall tracepoints; they are seen by
 * the `tp_btf/io_uring_complete` program, whose completion result is the new fd. Not seen here
 * (documented in docs/audit.md): io_uring direct descriptors (they never enter the fd table),
 * 32-bit compat syscalls, and fds that were opened before the agent attached.
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

#define MATCH_FILE 1
#define MATCH_DIR 2

#define HOOK_OPEN 1
#define HOOK_OPENAT 2
#define HOOK_OPENAT2 3
#define HOOK_OPEN_BY_HANDLE_AT 4
#define HOOK_IO_URING 5

#define IORING_OP_OPENAT 18
#define IORING_OP_OPENAT2 28

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
};

/* (dev, ino) of each protected file and directory -> MATCH_FILE or MATCH_DIR. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct file_key);
	__type(value, __u32);
} protected SEC(".maps");

/* Inode numbers alone of the entries in `protected`: a cheap first filter. Value unused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} protected_ino SEC(".maps");

/* Thread-group ids whose opens are never reported (the agent itself). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} excluded_tgids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

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

static __always_inline int is_protected_ino(__u64 ino)
{
	return bpf_map_lookup_elem(&protected_ino, &ino) != 0;
}

static __always_inline int is_protected(struct inode *inode, __u64 ino, __u32 *dev_out)
{
	struct super_block *sb = 0;
	struct file_key key = {};

	bpf_probe_read_kernel(&sb, sizeof(sb), &inode->i_sb);
	if (!sb)
		return 0;
	bpf_probe_read_kernel(&key.dev, sizeof(key.dev), &sb->s_dev);
	key.ino = ino;
	*dev_out = key.dev;
	return bpf_map_lookup_elem(&protected, &key) != 0;
}

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
}

/* Reports the open that just returned `ret` in the current task's fd table, if it is a read
 * of a protected file. */
static __always_inline int report_fd(long ret, __u16 hook)
{
	__u64 pid_tgid;
	__u32 tgid;
	struct task_struct *task;
	struct fdtable *fdt;
	struct file **fds;
	struct file *file = 0;
	struct inode *inode = 0, *dir_inode = 0;
	struct dentry *dentry = 0, *parent = 0;
	unsigned int flags = 0;
	unsigned long ino = 0, dir_ino = 0;
	umode_t mode = 0;
	__u32 dev = 0, dir_dev = 0;
	__u16 matched = 0;
	struct event *e;
	__u64 uid_gid;

	if (ret < 0)
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	tgid = pid_tgid >> 32;
	if (bpf_map_lookup_elem(&excluded_tgids, &tgid))
		return 0;

	/* fd -> struct file, through the current task's fd table (BTF-typed loads). */
	task = bpf_get_current_task_btf();
	fdt = task->files->fdt;
	if ((unsigned long)ret >= fdt->max_fds)
		return 0;
	fds = fdt->fd;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[ret]);
	if (!file)
		return 0;

	bpf_probe_read_kernel(&flags, sizeof(flags), &file->f_flags);
	if ((flags & O_ACCMODE) == O_WRONLY || (flags & O_PATH))
		return 0;
	bpf_probe_read_kernel(&inode, sizeof(inode), &file->f_inode);
	if (!inode)
		return 0;
	bpf_probe_read_kernel(&ino, sizeof(ino), &inode->i_ino);

	if (is_protected_ino(ino)) {
		if (is_protected(inode, ino, &dev))
			matched = MATCH_FILE;
	}
	bpf_probe_read_kernel(&dentry, sizeof(dentry), &file->f_path.dentry);
	if (!matched && dentry) {
		bpf_probe_read_kernel(&parent, sizeof(parent), &dentry->d_parent);
		if (parent && parent != dentry) {
			bpf_probe_read_kernel(&dir_inode, sizeof(dir_inode), &parent->d_inode);
			if (dir_inode) {
				bpf_probe_read_kernel(&dir_ino, sizeof(dir_ino), &dir_inode->i_ino);
				if (is_protected_ino(dir_ino) && is_protected(dir_inode, dir_ino, &dir_dev))
					matched = MATCH_DIR;
			}
		}
	}
	if (!matched)
		return 0;

	/* Listing a protected directory is not a read of a log file. */
	bpf_probe_read_kernel(&mode, sizeof(mode), &inode->i_mode);
	if ((mode & S_IFMT) == S_IFDIR)
		return 0;
	if (matched == MATCH_DIR) {
		struct super_block *sb = 0;

		bpf_probe_read_kernel(&sb, sizeof(sb), &inode->i_sb);
		if (sb)
			bpf_probe_read_kernel(&dev, sizeof(dev), &sb->s_dev);
	}

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	uid_gid = bpf_get_current_uid_gid();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->ino = ino;
	e->dir_ino = matched == MATCH_DIR ? dir_ino : 0;
	e->dev = dev;
	e->dir_dev = matched == MATCH_DIR ? dir_dev : 0;
	e->pid = (__u32)pid_tgid;
	e->tgid = tgid;
	e->ppid = task->real_parent->tgid;
	e->uid = (__u32)uid_gid;
	e->gid = uid_gid >> 32;
	e->fd = (__s32)ret;
	e->flags = flags;
	e->matched = matched;
	e->hook = hook;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->name[0] = 0;
	if (dentry) {
		const unsigned char *name = 0;

		bpf_probe_read_kernel(&name, sizeof(name), &dentry->d_name.name);
		if (name)
			bpf_probe_read_kernel_str(e->name, sizeof(e->name), name);
	}
	bpf_ringbuf_submit(e, 0);
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

/* io_uring_complete(struct io_ring_ctx *ctx, void *req, struct io_uring_cqe *cqe): runs in the
 * task posting the completion (the submitter or one of its io-wq worker threads, which share
 * its fd table), so the fd in cqe->res is looked up like a syscall's return value. */
SEC("tp_btf/io_uring_complete")
int io_uring_complete(__u64 *ctx)
{
	struct io_kiocb *req = (struct io_kiocb *)ctx[1];
	struct io_uring_cqe *cqe = (struct io_uring_cqe *)ctx[2];
	__u8 opcode = 0;
	__s32 res = -1;

	bpf_probe_read_kernel(&opcode, sizeof(opcode), &req->opcode);
	if (opcode != IORING_OP_OPENAT && opcode != IORING_OP_OPENAT2)
		return 0;
	bpf_probe_read_kernel(&res, sizeof(res), &cqe->res);
	return report_fd(res, HOOK_IO_URING);
}

char LICENSE[] SEC("license") = "GPL";
