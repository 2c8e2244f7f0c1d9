//! glibc malloc settings, in one place: the process-wide allocator calls that the agent and the
//! CLI make, each a safe function whose `unsafe` block says why it is sound. On a C library other
//! than glibc (`target_env` not `gnu`) each is a no-op.
//!
//! The parameters set here are process-wide and glibc reads them without a lock on every
//! allocation: the setters ([`limit_arenas`], [`keep_freed_memory_for_streaming`]) are for
//! `main`, before any other thread (the async runtime's, a logger's) exists.

/// An operator's environment overrides the setting it names: glibc reads these at its start,
/// and a setting found in the environment is left as the operator chose it.
#[cfg(target_env = "gnu")]
fn set_by_environment(name: &str) -> bool {
    std::env::var_os(name).is_some()
}

/// Caps glibc's malloc arenas at `max` (`M_ARENA_MAX`), unless `MALLOC_ARENA_MAX` is in the
/// environment. Call it from `main` before any other thread starts.
pub fn limit_arenas(max: i32) {
    #[cfg(target_env = "gnu")]
    if !set_by_environment("MALLOC_ARENA_MAX") {
        // SAFETY: mallopt takes no pointer and only stores an allocator parameter; the
        // contract of this function is a call before any other thread exists, so no
        // allocation in another thread reads the parameter while it changes.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, max);
        }
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = max;
}

/// Gives the allocator's free memory back to the kernel (glibc's `malloc_trim`). It walks
/// the free lists: for a quiet moment, never per message.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointer; it only returns free pages of glibc's own heaps,
    // under the allocator's locks, so it is safe from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Allocations at or above this size are mmap'd by glibc, and unmapped when freed
/// (`M_MMAP_THRESHOLD`). The buffers of a read's stream (h2's and tonic's read buffers, a
/// few hundred KiB at most with the CLI's 256 KiB HTTP/2 frames) stay below it; glibc
/// accepts up to 32 MiB here on 64-bit (`HEAP_MAX_SIZE / 2`).
pub const STREAMING_MMAP_THRESHOLD: i32 = 4 << 20;

/// Free memory at the top of a heap is given back to the kernel only above this size
/// (`M_TRIM_THRESHOLD`): twice [`STREAMING_MMAP_THRESHOLD`], the ratio glibc's own
/// dynamic thresholds keep.
pub const STREAMING_TRIM_THRESHOLD: i32 = 8 << 20;

/// Keeps freed buffers in the process for reuse, for a process that streams (the CLI's
/// `logs` commands): with glibc's defaults (mmap and trim thresholds of 128 KiB, both
/// raised dynamically only when an mmap'd chunk is freed) the read buffers of an HTTP/2
/// stream, freed and allocated again many times a second, are given back to the kernel
/// (a thread heap's top trimmed with `madvise`, or `munmap`) and fault in again as fresh
/// zeroed pages: a fifth of the CLI's CPU per 512 MiB stream (docs/performance.md, issue #15).
///
/// Sets `M_MMAP_THRESHOLD` to [`STREAMING_MMAP_THRESHOLD`] and `M_TRIM_THRESHOLD` to
/// [`STREAMING_TRIM_THRESHOLD`]. Fixed values: setting either turns glibc's dynamic threshold
/// off (mallopt(3)), so these are what the process keeps: up to 8 MiB of free memory per
/// arena before a trim, and no buffer under 4 MiB mmap'd. Not for a long-running daemon
/// whose memory at rest matters (the controller's `serve`, the agent): unmeasured there.
/// Either setting found in the environment (`MALLOC_MMAP_THRESHOLD_`,
/// `MALLOC_TRIM_THRESHOLD_`) leaves both as they are. Call it from `main` before any other
/// thread starts.
pub fn keep_freed_memory_for_streaming() {
    #[cfg(target_env = "gnu")]
    if !set_by_environment("MALLOC_MMAP_THRESHOLD_")
        && !set_by_environment("MALLOC_TRIM_THRESHOLD_")
    {
        // SAFETY: mallopt takes no pointer and only stores allocator parameters; the
        // contract of this function is a call before any other thread exists, so no
        // allocation in another thread reads the parameters while they change.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, STREAMING_MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, STREAMING_TRIM_THRESHOLD);
        }
    }
}
