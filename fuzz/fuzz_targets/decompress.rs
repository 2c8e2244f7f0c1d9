//! Fuzz target of the agent's decoding of rotated, compressed log files
//! (`agent/src/decompress.rs`): arbitrary bytes, named `x.log`, `x.gz` or `x.zst` by the first
//! byte, go through `detect` (magic bytes against the name) and, when compressed, through the
//! bounded decoder read to its end in 64 KiB reads. The limits (8 MiB at most, 10 bytes out per
//! compressed byte beyond the 1 MiB floor) make the cap vary with the input's size, so the
//! ratio arithmetic is fuzzed, and a bomb is cut quickly.
//!
//! Invariants: nothing panics; a name claiming a compression whose magic the content lacks is
//! refused; the decoder never yields more than its cap, and when it stops at the cap it says so
//! with the typed `LimitExceeded` after exactly `cap` bytes; one read never consumes much more
//! than `YIELD_AFTER_INPUT_BYTES` of input without output (it returns `WouldBlock`, and the
//! next read goes on); the input consumed never exceeds the file.

#![no_main]

#[allow(dead_code)]
#[path = "../../agent/src/decompress.rs"]
mod decompress;

use decompress::{Compression, CompressionRefusal, DecompressionLimits};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Seek, Write};

const LIMITS: DecompressionLimits = DecompressionLimits {
    max_bytes: 8 << 20,
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
    // The decoder reads from the descriptor's position: back to the start, or it sees only EOF.
    f.rewind().expect("rewind");
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
        // By magic only: none of these names claims a compression the agent does not decode.
        Err(CompressionRefusal::Unsupported { .. }) => return,
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
        let before = decoder.input_bytes();
        let got = decoder.read(&mut buf);
        let consumed = decoder.input_bytes() - before;
        // A read-ahead buffer (zstd's is 128 KiB) beyond the yield point, at most.
        assert!(
            consumed <= decompress::YIELD_AFTER_INPUT_BYTES + (256 << 10),
            "one read consumed {consumed} bytes"
        );
        assert!(decoder.input_bytes() <= len);
        match got {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                assert!(total <= cap, "{total} > {cap}");
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                if decompress::limit_exceeded(&e).is_some() {
                    assert_eq!(total, cap);
                }
                break;
            }
        }
    }
});
