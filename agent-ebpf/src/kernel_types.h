/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The few kernel types logaudit.bpf.c reads, and the BPF helper declarations it calls.
 *
 * Hand-written instead of a full `bpftool btf dump ... format c` (135k lines that would bake the
 * build host's kernel into the object): every struct below lists only the fields the program
 * touches, under `preserve_access_index`, so clang records each field access as a CO-RE
 * relocation and the loader (aya) rewrites the offsets to the running kernel's BTF. Field order and
 * struct sizes here therefore do not matter; field names and types do. Fields that the kernel
 * keeps inside anonymous unions (`file.f_path`, `dentry.d_name` on 6.x) are matched by name.
 *
 * Helper ids are the stable BPF UAPI numbers (include/uapi/linux/bpf.h), declared here so the build
 * needs clang alone, not libbpf's headers.
 */
#ifndef LOGGATE_KERNEL_TYPES_H
#define LOGGATE_KERNEL_TYPES_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed int __s32;
typedef signed long long __s64;
typedef __u32 dev_t;
typedef __u16 umode_t;
typedef __u32 fmode_t;

#define SEC(name) __attribute__((section(name), used))
#define __always_inline inline __attribute__((always_inline))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

/* Map types and flags (uapi). */
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_RINGBUF 27
#define BPF_F_NO_PREALLOC 1
#define BPF_NOEXIST 1

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct super_block {
	dev_t s_dev;
};

struct inode {
	umode_t i_mode;
	struct super_block *i_sb;
	unsigned long i_ino;
};

struct timespec64 {
	long long tv_sec;
	long tv_nsec;
};

/* The inode's change time, whose field changed names: `i_ctime_sec` (6.11+), `__i_ctime`
 * (6.6-6.10), `i_ctime` (before). CO-RE matches these flavours (`___suffix`) to `struct
 * inode`; the program tests which field exists. */
struct inode___ctime_sec {
	long long i_ctime_sec;
};

struct inode___ctime_606 {
	struct timespec64 __i_ctime;
};

struct inode___ctime_old {
	struct timespec64 i_ctime;
};

struct qstr {
	const unsigned char *name;
};

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
	struct inode *d_inode;
};

struct vfsmount {
	struct dentry *mnt_root;
};

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
};

struct file {
	struct path f_path;
	struct inode *f_inode;
	unsigned int f_flags;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

/* NR_OPEN_DEFAULT on 64-bit kernels: the fd slots embedded in files_struct. */
#define NR_OPEN_DEFAULT 64

struct files_struct {
	struct fdtable *fdt;
	struct file *fd_array[NR_OPEN_DEFAULT];
};

/* Only as a typed view of an fd slot (logaudit.bpf.c, match_fd): its member is a file pointer. */
struct kiocb {
	struct file *ki_filp;
};

/* x86: `status` holds TS_COMPAT while the task runs a 32-bit (ia32) syscall. */
struct thread_info {
	__u32 status;
};

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
	struct file *exe_file;
};

struct fs_struct {
	struct path root;
};

struct task_struct {
	struct thread_info thread_info;
	unsigned int flags;
	struct mm_struct *mm;
	struct fs_struct *fs;
	int tgid;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	/* Boot-based start time in ns (since 5.5; /proc/<pid>/stat's field 22 in clock ticks). */
	__u64 start_boottime;
	struct files_struct *files;
};

/* x86-64 registers at syscall entry (the sys_exit raw tracepoint's first argument; a task's
 * own by bpf_task_pt_regs): the syscall number, and the argument registers of 64-bit (di, si,
 * dx, r10) and 32-bit (bx, cx, dx, si) syscalls. */
struct pt_regs {
	unsigned long orig_ax;
	unsigned long bx;
	unsigned long cx;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long r10;
};

/* io_uring's request and completion entry (the io_uring_complete tracepoint's arguments). */
struct io_kiocb {
	__u8 opcode;
};

/* An open request's own data, which lies at the start of its io_kiocb: file_slot is 0 for an
 * open into the fd table, else the fixed-file slot + 1 (or IORING_FILE_INDEX_ALLOC). */
struct io_open {
	__u32 file_slot;
};

/* The ring's fixed-file table (6.13+): nodes[slot]->file_ptr is the file, its low bits flags. */
struct io_rsrc_node {
	unsigned long file_ptr;
};

struct io_rsrc_data {
	unsigned int nr;
	struct io_rsrc_node **nodes;
};

struct io_file_table {
	struct io_rsrc_data data;
};

struct io_ring_ctx {
	struct io_file_table file_table;
};

/* The same before 6.13: files[slot].file_ptr, nr_user_files slots. */
struct io_fixed_file {
	unsigned long file_ptr;
};

struct io_file_table___old {
	struct io_fixed_file *files;
};

struct io_ring_ctx___old {
	struct io_file_table___old file_table;
	unsigned int nr_user_files;
};

struct io_uring_cqe {
	__s32 res;
};

#pragma clang attribute pop

/* BPF helpers (stable ids, include/uapi/linux/bpf.h). */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static __u64 (*bpf_get_current_uid_gid)(void) = (void *)15;
static long (*bpf_get_current_comm)(void *buf, __u32 size_of_buf) = (void *)16;
static __u64 (*bpf_get_current_cgroup_id)(void) = (void *)80;
static long (*bpf_probe_read_user)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)112;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)113;
static long (*bpf_probe_read_user_str)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)114;
static long (*bpf_probe_read_kernel_str)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)115;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)132;
static struct task_struct *(*bpf_get_current_task_btf)(void) = (void *)158;
static struct pt_regs *(*bpf_task_pt_regs)(struct task_struct *task) = (void *)175;

#endif
