//! Fuzz target of the agent's decoding of rotated, compressed log files
//! (`agent/src/decompress.rs`): arbitrary bytes, named `x.log`, `x.gz` or `x.zst` by the first
//! byte, go through `detect` (magic bytes against the name) and, when compressed, through the
//! bounded decoder read to its end in 64 KiB reads, with a 1 MiB cap (so a bomb is cut quickly).
//!
//! Invariants: nothing panics; a name claiming a compression whose magic the content lacks is
//! refused; the decoder never yields more than its cap, and when it stops at the cap it says so
//! with the typed `LimitExceeded` after exactly `cap` bytes.

#![no_main]

#[allow(dead_code)]
#[path = "../../agent/src/decompress.rs"]
mod decompress;

use decompress::{Compression, CompressionRefusal, DecompressionLimits};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};

const LIMITS: DecompressionLimits = DecompressionLimits {
    max_bytes: 1 << 20,
    max_ratio: 10,
};

/// `data` as an open file without touching the disk (a memfd).
fn memfile(data: &[u8]) -> std::fs::File {
    // SAFETY: a static NUL-terminated name and valid flags; the returned descriptor (checked
    // non-negative) is owned by the File from here on.
    let fd = unsafe { libc::memfd_create(c"fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.write_all(data).expect("write");
    f
}

fuzz_target!(|input: &[u8]| {
    let Some((&pick, data)) = input.split_first() else {
        return;
    };
    let name = ["x.log", "x.gz", "x.zst"][usize::from(pick % 3)];
    let file = memfile(data);
    let compression = match decompress::detect(&file, std::path::Path::new(name)) {
        Ok(c) => c,
        Err(CompressionRefusal::NameDisagrees { claimed, .. }) => {
            assert!(name.ends_with(if claimed == "gzip" { ".gz" } else { ".zst" }));
            return;
        }
        Err(CompressionRefusal::Io { .. }) => return,
    };
    if compression == Compression::None {
        assert!(name == "x.log");
        return;
    }
    let len = data.len() as u64;
    let cap = LIMITS.cap_for(len);
    let Ok(mut decoder) = decompress::decoder(file, compression, len, LIMITS) else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                assert!(total <= cap, "{total} > {cap}");
            }
            Err(e) => {
                if decompress::limit_exceeded(&e).is_some() {
                    assert_eq!(total, cap);
                }
                break;
            }
        }
    }
});
