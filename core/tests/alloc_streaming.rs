//! `loggate_core::alloc::keep_freed_memory_for_streaming` does what it says: a freed 2 MiB
//! buffer stays in the process instead of being mmap'd and unmapped.
//!
//! Its own test binary, with one test, so that the process is fresh: glibc's dynamic mmap
//! threshold rises when an mmap'd chunk is freed, and a test run after others in the same
//! process could pass without the setting.

#![cfg(target_env = "gnu")]

/// A buffer above glibc's default mmap threshold (128 KiB) and below the one set
/// (4 MiB), and not of a size this process freed before.
const BUFFER: usize = 2 << 20;

#[test]
fn a_freed_two_mib_buffer_stays_on_the_heap_and_is_not_trimmed() {
    // The setting is an operator's when the environment names it; the test is about ours.
    assert!(std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none());
    assert!(std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none());
    loggate_core::alloc::keep_freed_memory_for_streaming();

    // SAFETY: mallinfo2 takes no argument and returns the allocator's counters by value.
    let before = unsafe { libc::mallinfo2() };
    let mut buffer = vec![0u8; BUFFER];
    // Touch every page so that the buffer is really in use, and keep it from being elided.
    for page in buffer.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&mut buffer);
    // SAFETY: as above.
    let held = unsafe { libc::mallinfo2() };
    assert_eq!(
        held.hblks, before.hblks,
        "the 2 MiB buffer was mmap'd: the mmap threshold is still below it"
    );
    assert!(
        held.uordblks >= before.uordblks + BUFFER,
        "the buffer is not in malloc's heap: {} bytes in use before, {} with it",
        before.uordblks,
        held.uordblks
    );
    drop(buffer);
    // SAFETY: as above.
    let freed = unsafe { libc::mallinfo2() };
    assert!(
        freed.arena >= held.arena,
        "freeing the buffer gave its memory back to the kernel (heap {} -> {} bytes)",
        held.arena,
        freed.arena
    );
    assert!(
        freed.fordblks >= held.fordblks + BUFFER,
        "the freed buffer is not kept as free memory for reuse"
    );
}
