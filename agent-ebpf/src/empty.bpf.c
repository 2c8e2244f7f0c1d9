// SPDX-License-Identifier: GPL-2.0
/*
 * The floor of the bypass audit's cost: programs that do nothing, on the same hooks and under the
 * same C function names as logaudit.bpf.c, so `cargo xtask bench ebpf` attaches them with the
 * agent's own loader and measures what the hook itself costs (the kernel's tracepoint slow path
 * and the program call) apart from the work inside logaudit's programs. Never used by the agent.
 */
#include "kernel_types.h"

#define EMPTY(section, function)      \
	SEC(section)                  \
	int function(void *ctx)       \
	{                             \
		return 0;             \
	}

EMPTY("tracepoint/syscalls/sys_exit_open", exit_open)
EMPTY("tracepoint/syscalls/sys_exit_openat", exit_openat)
EMPTY("tracepoint/syscalls/sys_exit_openat2", exit_openat2)
EMPTY("tracepoint/syscalls/sys_exit_open_by_handle_at", exit_open_by_handle_at)
EMPTY("tp_btf/sys_exit", sys_exit_strict)
EMPTY("tp_btf/io_uring_complete", io_uring_complete)

char LICENSE[] SEC("license") = "GPL";
