//! The bypass-audit eBPF program, compiled: the bytes of `bpf/logaudit.bpf.o`, built from
//! `src/logaudit.bpf.c` by `cargo xtask build-ebpf` and committed, so that a plain `cargo build`
//! never needs clang. `cargo xtask test` rebuilds the object and fails when it differs from the
//! committed one, so the object cannot drift from its source.
//!
//! The loader (`loggate-agent`, `agent/src/bypass/`) owns everything at run time: which programs
//! to attach, the maps' Rust types, the event layout. This crate only names what is in the object.

#![forbid(unsafe_code)]

/// 8-byte alignment for an embedded ELF object: the ELF parser reads its headers in place.
#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!("../bpf/logaudit.bpf.o"));
static PROBE_READ_OBJECT: &Aligned<[u8]> =
    &Aligned(*include_bytes!("../bpf/logaudit_probe_read.bpf.o"));
static EMPTY_OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!("../bpf/empty.bpf.o"));

/// The compiled BPF object (ELF, `bpf` target, BTF and CO-RE relocations, DWARF stripped),
/// aligned to 8 bytes. It calls the kfunc `bpf_rdonly_cast` through placeholder instructions
/// that the loader must link first (see `src/logaudit.bpf.c`, `rdonly_cast`).
pub fn object() -> &'static [u8] {
    &OBJECT.0
}

/// The same program built without kfuncs (`src/logaudit_probe_read.bpf.c`): it reads a grown
/// fd table's slots with `bpf_probe_read_kernel` instead of typed loads, and needs no linking.
/// The agent loads it where the kernel lacks or refuses `bpf_rdonly_cast`.
pub fn probe_read_object() -> &'static [u8] {
    &PROBE_READ_OBJECT.0
}

/// Programs that do nothing, under the same names and sections as `object()`'s (built from
/// `src/empty.bpf.c`): the floor `cargo xtask bench ebpf` measures the real programs against.
pub fn empty_object() -> &'static [u8] {
    &EMPTY_OBJECT.0
}

/// The committed object's path relative to this crate, for the reproducibility check.
pub const OBJECT_PATH: &str = "bpf/logaudit.bpf.o";
/// The C source the object is built from, relative to this crate.
pub const SOURCE_PATH: &str = "src/logaudit.bpf.c";

/// Names inside the object, shared by the loader and the tests.
pub mod names {
    /// Tracepoint programs: (C function name, tracepoint category, tracepoint name).
    pub const OPEN_EXIT_PROGRAMS: [(&str, &str, &str); 4] = [
        ("exit_openat", "syscalls", "sys_exit_openat"),
        ("exit_openat2", "syscalls", "sys_exit_openat2"),
        (
            "exit_open_by_handle_at",
            "syscalls",
            "sys_exit_open_by_handle_at",
        ),
        // Absent on architectures without open(2) (arm64); the loader skips what tracefs lacks.
        ("exit_open", "syscalls", "sys_exit_open"),
    ];
    /// The BTF tracepoint program for io_uring opens: (C function name, tracepoint name).
    pub const IO_URING_PROGRAM: (&str, &str) = ("io_uring_complete", "io_uring_complete");
    /// The BTF tracepoint programs that see a rename or link of a protected file, in every
    /// mode: (C function name, tracepoint name). They fire where an inode's change time is set
    /// (the `timestamp` tracepoints, Linux 6.13+); one is enough on a given filesystem.
    pub const MOVE_PROGRAMS: [(&str, &str); 3] = [
        ("move_ctime_set", "inode_set_ctime_to_ts"),
        ("move_ctime_xchg", "ctime_ns_xchg"),
        ("move_ctime_skip", "ctime_xchg_skip"),
    ];
    /// Strict mode's BTF tracepoint on every syscall exit: (C function name, tracepoint name).
    pub const STRICT_PROGRAM: (&str, &str) = ("sys_exit_strict", "sys_exit");
    /// The BPF LSM program: (C function name, LSM hook).
    pub const LSM_PROGRAM: (&str, &str) = ("lsm_file_open", "file_open");
    /// The fentry program: (C function name, kernel function).
    pub const FENTRY_PROGRAM: (&str, &str) = ("fentry_file_open", "security_file_open");
    /// HASH `{u64 ino; u32 dev; u32 pad}` → u32 (1 file, 2 directory).
    pub const PROTECTED: &str = "protected";
    /// ARRAY of `INO_FILTER_WORDS` u64: bit `ino % (64 × words)` set for every inode in
    /// `protected`, the first filter.
    pub const INO_FILTER: &str = "ino_filter";
    /// Words in `INO_FILTER` (`FILTER_WORDS` in logaudit.bpf.c).
    pub const INO_FILTER_WORDS: u32 = 65536;
    /// HASH u32 tgid → u32: processes never reported (the agent).
    pub const EXCLUDED_TGIDS: &str = "excluded_tgids";
    /// RINGBUF of `struct event`.
    pub const EVENTS: &str = "events";
    /// ARRAY[1] of u64: events lost to a full ring buffer.
    pub const LOST: &str = "lost";
    /// ARRAY[1] of u32: the adoption generation, advanced by an agent that adopts pinned
    /// programs before it drains their queue; each event carries the value its program read
    /// before reserving it.
    pub const GENERATION: &str = "generation";
    /// ARRAY[1] of i64: the start (Unix seconds, minus one) of the last scan whose entries are
    /// all in `PROTECTED`; the ancestor walk stops at an unprotected folder older than that.
    pub const SCAN_EPOCH: &str = "scan_epoch";
    /// HASH `{u64 ino; u32 dev; u32 tgid}` → `{u64 first_ns; u64 last_ns; u64 count}`: opens
    /// reported per (process, file), with the count of repeats not queued since.
    pub const SEEN: &str = "seen";
}

#[cfg(test)]
mod tests {
    #[test]
    fn object_is_an_aligned_bpf_elf() {
        let o = super::object();
        assert_eq!(o.as_ptr() as usize % 8, 0);
        assert_eq!(&o[..4], b"\x7fELF");
        // e_machine (little endian, offset 18) is EM_BPF = 247.
        assert_eq!(u16::from_le_bytes([o[18], o[19]]), 247);
        for o in [super::probe_read_object(), super::empty_object()] {
            assert_eq!(o.as_ptr() as usize % 8, 0);
            assert_eq!(&o[..4], b"\x7fELF");
        }
    }
}
