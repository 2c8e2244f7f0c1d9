// SPDX-License-Identifier: GPL-2.0
/*
 * logaudit.bpf.c without kfuncs: the agent's fallback for kernels that lack or refuse
 * bpf_rdonly_cast. The fd's file is read with a typed load from the table embedded in
 * files_struct, and with bpf_probe_read_kernel from a grown table (slower: see
 * docs/performance.md, "Bypass audit (eBPF)").
 */
#define FD_SLOT_PROBE_READ
#include "logaudit.bpf.c"
