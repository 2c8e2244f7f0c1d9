//! Rotated, compressed log files (`api.log.2.gz`, `api.log.3.zst`): which compression a served
//! file uses, and a decoder whose output is bounded.
//!
//! Threat model: the file's bytes are written by the application whose logs are served (or by
//! anyone who can write beneath a root), so a compressed file is hostile input. Its compression
//! is decided by its **magic bytes**; its name only has to agree (a `.gz` that is not gzip is
//! refused, never served as text, so a reader is not shown binary garbage nor a decoder fed a
//! file it was not meant for). A zip bomb (a small file that decompresses to terabytes) costs
//! CPU and the stream's bandwidth, not memory (the decoder streams): [`Bounded`] cuts the output
//! at [`DecompressionLimits::cap_for`] bytes with a typed error ([`LimitExceeded`]) that the
//! stream turns into `read.finished` `decompression_limit`. Memory per stream is bounded too:
//! gzip's window is 32 KiB, and a zstd frame asking for a window over [`ZSTD_WINDOW_LOG_MAX`]
//! (8 MiB, what every standard level up to 19 uses; `--ultra`/`--long` frames ask for more) is
//! refused by the decoder instead of allocated.
//!
//! Decoders: flate2 (its pure-Rust backend, miniz_oxide: no C) for gzip, several members
//! included (what `cat a.gz b.gz` makes); zstd (the reference libzstd through the `zstd`
//! crate, legacy formats off) for zstd, several frames included.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// gzip's magic (RFC 1952: ID1 ID2).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// A zstd frame's magic number, little-endian (RFC 8878 §3.1.1).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The last three bytes of a zstd *skippable* frame's magic (`0x184D2A50`..`0x184D2A5F`,
/// little-endian: the first byte is `0x5?`): what `pzstd` puts first. libzstd skips such
/// frames, so a file starting with one is zstd.
const ZSTD_SKIPPABLE_MAGIC_TAIL: [u8; 3] = [0x2a, 0x4d, 0x18];
/// Compressions the agent does not decode, by their magic bytes. Their bytes carry no text a
/// redactor could find, and a reader decompresses them locally: served as they are, they would
/// bypass redaction whole. So they are refused ([`CompressionRefusal::Unsupported`]).
const UNSUPPORTED_MAGIC: [(&[u8], &str); 8] = [
    (&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], "xz"),
    (&[0x42, 0x5a, 0x68], "bzip2"),
    (&[0x04, 0x22, 0x4d, 0x18], "lz4"),
    (&[0x02, 0x21, 0x4c, 0x18], "lz4 (legacy)"),
    (&[0x50, 0x4b, 0x03, 0x04], "zip"),
    (&[0x1f, 0x9d], "compress (.Z)"),
    (&[0x4c, 0x5a, 0x49, 0x50], "lzip"),
    (&[0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c], "7z"),
];
/// Name endings that claim a compression the agent does not decode. Some (lzma-alone, brotli)
/// have no reliable magic, so a file so named is refused unless its start is plain text.
const UNSUPPORTED_NAMES: [(&str, &str); 9] = [
    (".xz", "xz"),
    (".bz2", "bzip2"),
    (".lz4", "lz4"),
    (".zip", "zip"),
    (".Z", "compress (.Z)"),
    (".lz", "lzip"),
    (".lzma", "lzma"),
    (".br", "brotli"),
    (".7z", "7z"),
];
/// How much of a file's start is judged as text or binary: the first block.
pub const TEXT_PROBE_BYTES: usize = 64 * 1024;
/// The largest zstd window accepted, as a power of two: 8 MiB.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// A compressed file may always decompress to this much, whatever its ratio: a tiny file of
/// repeated lines compresses far beyond any ratio worth refusing.
pub const RATIO_FLOOR_BYTES: u64 = 1 << 20;
/// Compressed input a decoder may consume without producing a byte before it hands control
/// back to the stream (an `ErrorKind::WouldBlock`), so that revocation, a client gone and the
/// agent stopping are seen while a file of empty gzip members or skippable zstd frames is
/// chewed through.
pub const YIELD_AFTER_INPUT_BYTES: u64 = 1 << 20;
/// Compressed input always allowed beyond [`INPUT_PER_OUTPUT`] times the output: the
/// decoders' read-ahead (8 KiB for gzip, 128 KiB for zstd) and a file's headers, many times
/// over. An inverse bomb is cut after about this much input (under a second of CPU).
pub const INPUT_FLOOR_BYTES: u64 = 4 << 20;
/// Compressed bytes consumed per decompressed byte beyond which a stream is cut (past
/// [`INPUT_FLOOR_BYTES`]). Real compressed logs give out more than they take in (even
/// incompressible data stored in gzip is about 1:1); a file of empty members or skippable
/// frames takes in megabytes and gives out nothing: an inverse bomb that costs CPU, not output.
pub const INPUT_PER_OUTPUT: u64 = 4;

/// How a served file is compressed, decided by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain text: served as it is (and followed, with `tail --follow`).
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The name in messages and listings (`""` for none).
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The compression a file name claims by its extension.
    fn claimed_by(name: &str) -> Compression {
        if name.ends_with(".gz") {
            Compression::Gzip
        } else if name.ends_with(".zst") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A file whose compression the agent will not serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionRefusal {
    #[error(
        "{path} is named as {claimed} but its content is not {claimed} (its first bytes are not \
         {claimed}'s magic); it is not served: check how it was rotated"
    )]
    NameDisagrees { path: String, claimed: &'static str },
    /// Compressed with a format the agent does not decode (by magic, or by a name whose content
    /// is not plain text): served raw it would bypass redaction, so it is refused.
    #[error(
        "{path} is compressed with {format}, which this agent does not decompress, so it cannot \
         be redacted and is not served; the agent reads gzip and zstd: have it rotated with \
         gzip or zstd (logrotate's compresscmd), or decompress a copy beside it on the host"
    )]
    Unsupported { path: String, format: &'static str },
    #[error("could not read the start of {path}: {error}")]
    Io { path: String, error: String },
}

/// Up to `n` bytes from the start of `file` (`pread`: the file's position is untouched).
fn read_start(file: &File, n: usize) -> std::io::Result<Vec<u8>> {
    let mut head = vec![0u8; n];
    let mut got = 0;
    while got < head.len() {
        match file.read_at(&mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(got);
    Ok(head)
}

/// Whether `bytes` (a file's first block) read as text: no NUL byte, and UTF-8 but for a
/// character cut at the block's end. Compressed or other binary data fails both within bytes.
fn looks_like_text(bytes: &[u8]) -> bool {
    if bytes.contains(&0) {
        return false;
    }
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// Whether the first [`TEXT_PROBE_BYTES`] of `file` hold a NUL byte after any leading run of
/// them: the backstop that keeps binary content (a compression not recognised, an archive,
/// UTF-16 text) from being served under a redacting profile, where redaction could not see
/// into it. Log text holds no NUL; a leading run of NULs is what logrotate's `copytruncate`
/// leaves when the writer goes on at its old offset (a hole), and text follows it.
pub fn starts_binary(file: &File) -> std::io::Result<bool> {
    let start = read_start(file, TEXT_PROBE_BYTES)?;
    let text_from = start.iter().position(|&b| b != 0).unwrap_or(start.len());
    Ok(start[text_from..].contains(&0))
}

/// The compression of `file` (opened at `path`): its magic bytes decide; a name ending in
/// `.gz` or `.zst` must agree with them. A file with a compression's magic but no matching
/// name is decompressed too (logrotate's `compressext` may be anything); a zstd skippable
/// frame (`pzstd`) counts as zstd. A compression the agent does not decode is refused by its
/// magic, or by its name (`.xz`, `.bz2`, …) unless the file starts as plain text. Reads the
/// file's start with `pread` (its position is untouched).
pub fn detect(file: &File, path: &Path) -> Result<Compression, CompressionRefusal> {
    let io = |e: std::io::Error| CompressionRefusal::Io {
        path: path.display().to_string(),
        error: e.to_string(),
    };
    let head = read_start(file, 8).map_err(io)?;
    let unsupported = |format| CompressionRefusal::Unsupported {
        path: path.display().to_string(),
        format,
    };
    if let Some((_, format)) = UNSUPPORTED_MAGIC.iter().find(|(m, _)| head.starts_with(m)) {
        return Err(unsupported(format));
    }
    let by_magic = if head.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(&ZSTD_MAGIC)
        || (head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == ZSTD_SKIPPABLE_MAGIC_TAIL)
    {
        Compression::Zstd
    } else {
        Compression::None
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if by_magic == Compression::None {
        if let Some((_, format)) = UNSUPPORTED_NAMES.iter().find(|(e, _)| name.ends_with(e)) {
            let start = read_start(file, TEXT_PROBE_BYTES).map_err(io)?;
            if !looks_like_text(&start) {
                return Err(unsupported(format));
            }
        }
    }
    match Compression::claimed_by(name) {
        Compression::None => Ok(by_magic),
        claimed if claimed == by_magic => Ok(by_magic),
        claimed => Err(CompressionRefusal::NameDisagrees {
            path: path.display().to_string(),
            claimed: claimed.as_str(),
        }),
    }
}

/// Whether a file name looks rotated: `api.log.1`, `api.log.2.gz`, `api.log-20261204`,
/// `api.log-20261204.zst` (logrotate's numbered and `dateext` layouts).
pub fn looks_rotated(name: &str) -> bool {
    let stem = name
        .strip_suffix(".gz")
        .or_else(|| name.strip_suffix(".zst"))
        .unwrap_or(name);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match stem.rsplit_once(['.', '-']) {
        Some((head, tail)) => !head.is_empty() && digits(tail),
        None => false,
    }
}

/// The agent's bounds on decompression (`[limits]` `max_decompressed_bytes`,
/// `max_decompression_ratio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecompressionLimits {
    pub max_bytes: u64,
    pub max_ratio: u64,
}

impl DecompressionLimits {
    /// The most bytes a file of `compressed_len` bytes may decompress to: `max_ratio` times its
    /// size (at least [`RATIO_FLOOR_BYTES`]), and never more than `max_bytes`.
    pub fn cap_for(&self, compressed_len: u64) -> u64 {
        compressed_len
            .saturating_mul(self.max_ratio)
            .max(RATIO_FLOOR_BYTES)
            .min(self.max_bytes)
    }
}

/// The decoder stopped at its cap: the file decompresses to more than the agent serves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the file decompresses to more than {cap} bytes ({compressed} compressed; the agent's \
     limits are max_decompressed_bytes = {max_bytes} and max_decompression_ratio = {max_ratio}); \
     the stream was cut there: it may be a decompression bomb, or the limits are too low for it"
)]
pub struct LimitExceeded {
    pub cap: u64,
    pub compressed: u64,
    pub max_bytes: u64,
    pub max_ratio: u64,
}

/// The decoder took in far more compressed input than it gave out (more than
/// [`INPUT_PER_OUTPUT`] bytes in per byte out, past [`INPUT_FLOOR_BYTES`]): a file of empty
/// gzip members or skippable zstd frames, built to burn CPU. The stream is cut there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the file took {input} compressed bytes to give {output} bytes of text (more than \
     {INPUT_PER_OUTPUT} bytes in per byte out): the stream was cut there; it may be a \
     decompression bomb of empty members or frames, not a log"
)]
pub struct InputBudgetExceeded {
    pub input: u64,
    pub output: u64,
}

/// What the metered input and the bounded output share: counted by [`Metered`] under the
/// decoder, reset by [`Bounded`] above it when text comes out.
#[derive(Debug, Default)]
struct Meter {
    /// Compressed bytes read from the file since the last decompressed byte came out.
    since_output: AtomicU64,
    /// Compressed bytes read from the file in all.
    input: AtomicU64,
    /// Decompressed bytes given out in all.
    output: AtomicU64,
}

/// The compressed file under the decoder, metered: after [`YIELD_AFTER_INPUT_BYTES`] of input
/// with no output it fails one read with `ErrorKind::WouldBlock` (the stream checks its grant,
/// its client and the agent stopping, then reads again: flate2 and libzstd keep their state
/// across an error of their input), and past the input budget it fails with
/// [`InputBudgetExceeded`].
struct Metered<R> {
    inner: R,
    meter: Arc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let input = self.meter.input.load(Ordering::Relaxed);
        let output = self.meter.output.load(Ordering::Relaxed);
        if input
            > output
                .saturating_mul(INPUT_PER_OUTPUT)
                .saturating_add(INPUT_FLOOR_BYTES)
        {
            return Err(std::io::Error::other(InputBudgetExceeded { input, output }));
        }
        if self.meter.since_output.load(Ordering::Relaxed) >= YIELD_AFTER_INPUT_BYTES {
            self.meter.since_output.store(0, Ordering::Relaxed);
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = self.inner.read(buf)?;
        self.meter.input.fetch_add(n as u64, Ordering::Relaxed);
        self.meter
            .since_output
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A reader that yields at most `cap` bytes of `inner`; reading past them fails with a
/// [`LimitExceeded`] inside an `std::io::Error` (find it with [`limit_exceeded`]). A read may
/// also fail with `ErrorKind::WouldBlock` (input without output, see [`Metered`]: read again
/// after checking the stream) or [`InputBudgetExceeded`].
pub struct Bounded<R> {
    inner: R,
    out: u64,
    cap: u64,
    exceeded: LimitExceeded,
    meter: Arc<Meter>,
}

impl<R: Read> Bounded<R> {
    /// Compressed bytes read from the file so far (the tests' and the fuzz target's measure of
    /// how much input one read consumed).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn input_bytes(&self) -> u64 {
        self.meter.input.load(Ordering::Relaxed)
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.out >= self.cap {
            // One byte more tells a file of exactly `cap` bytes from a longer one.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::other(self.exceeded.clone())),
            };
        }
        let room = usize::try_from(self.cap - self.out).unwrap_or(usize::MAX);
        let want = buf.len().min(room);
        let n = self.inner.read(&mut buf[..want])?;
        self.out += n as u64;
        if n > 0 {
            self.meter.since_output.store(0, Ordering::Relaxed);
            self.meter.output.store(self.out, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// The [`LimitExceeded`] an I/O error carries, if it is one (by type, never by its text; the
/// stream uses [`limit_message`], the tests and the fuzz target this).
#[cfg_attr(not(test), allow(dead_code))]
pub fn limit_exceeded(e: &std::io::Error) -> Option<&LimitExceeded> {
    e.get_ref().and_then(|inner| inner.downcast_ref())
}

/// The sentence of a decompression bound an I/O error carries ([`LimitExceeded`] or
/// [`InputBudgetExceeded`]), if it is one (by type, never by its text).
pub fn limit_message(e: &std::io::Error) -> Option<String> {
    let inner = e.get_ref()?;
    if let Some(l) = inner.downcast_ref::<LimitExceeded>() {
        return Some(l.to_string());
    }
    inner
        .downcast_ref::<InputBudgetExceeded>()
        .map(|b| b.to_string())
}

/// The decompressed content of `file` (`compressed_len` bytes, compressed with `compression`,
/// read from its start), bounded by `limits`. Only the first `compressed_len` bytes are read
/// (the size the cap was set from: a file still being written gives a read error at its
/// snapshot's end, never a false bomb alarm). `Compression::None` is refused: plain files are
/// served by the ordinary path, which can seek and follow.
pub fn decoder(
    file: File,
    compression: Compression,
    compressed_len: u64,
    limits: DecompressionLimits,
) -> std::io::Result<Bounded<Box<dyn Read + Send>>> {
    let meter = Arc::new(Meter::default());
    let input = Metered {
        inner: file.take(compressed_len),
        meter: meter.clone(),
    };
    let inner: Box<dyn Read + Send> = match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            input,
        ))),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(input)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
            Box::new(d)
        }
        Compression::None => {
            return Err(std::io::Error::other(
                "a plain file has no decoder (served by the ordinary path)",
            ))
        }
    };
    Ok(Bounded {
        inner,
        out: 0,
        cap: limits.cap_for(compressed_len),
        exceeded: LimitExceeded {
            cap: limits.cap_for(compressed_len),
            compressed: compressed_len,
            max_bytes: limits.max_bytes,
            max_ratio: limits.max_ratio,
        },
        meter,
    })
}

/// The number of lines in a decompressed stream (`decoded`, from [`decoder`]): its newlines,
/// plus one for a last line without a newline. `tail -n N` of a compressed file reads it
/// twice: this count first, then the content, serving the lines after the first `count - N`
/// (a compressed stream cannot be read from its end, and a ring of the last `N` lines would
/// hold up to `N` × the longest line; two passes hold nothing). `check` runs before every
/// chunk (the grant, the client, the agent stopping); a read error, a decompression bound
/// included, ends the count through `failed`.
pub fn count_lines<E>(
    decoded: &mut dyn Read,
    check: &mut dyn FnMut() -> Result<(), E>,
    failed: &dyn Fn(std::io::Error) -> E,
) -> Result<u64, E> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut lines = 0u64;
    let mut last = b'\n';
    loop {
        check()?;
        let n = match decoded.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // A MiB of input gave no output (empty members): check again, then go on.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) =>
            {
                continue
            }
            Err(e) => return Err(failed(e)),
        };
        let newlines = buf[..n].iter().filter(|b| **b == b'\n').count();
        lines = lines.saturating_add(u64::try_from(newlines).unwrap_or(u64::MAX));
        last = buf[n - 1];
    }
    if last != b'\n' {
        lines = lines.saturating_add(1);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    #[test]
    fn lines_of_a_decompressed_stream_are_counted_with_an_unended_last_line() {
        let count = |text: &[u8]| {
            let gz = gzip(text);
            let mut d = flate2::read::MultiGzDecoder::new(&gz[..]);
            count_lines(&mut d, &mut || Ok::<(), String>(()), &|e| e.to_string())
        };
        assert_eq!(count(b""), Ok(0));
        assert_eq!(count(b"a\nb\n"), Ok(2));
        assert_eq!(count(b"a\nb"), Ok(2));
        assert_eq!(count(b"\n\n\n"), Ok(3));
        let big = "x\n".repeat(100_000);
        assert_eq!(count(big.as_bytes()), Ok(100_000));
        // The check ends it: a grant that ended mid-count.
        let gz = gzip(big.as_bytes());
        let mut d = flate2::read::MultiGzDecoder::new(&gz[..]);
        assert_eq!(
            count_lines(&mut d, &mut || Err("ended".to_string()), &|e| e.to_string()),
            Err("ended".to_string())
        );
    }

    fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> (File, std::path::PathBuf) {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        (File::open(&path).expect("open"), path)
    }

    const LIMITS: DecompressionLimits = DecompressionLimits {
        max_bytes: 8 << 20,
        max_ratio: 100,
    };

    fn read_all(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    fn xz_magic_and_junk() -> Vec<u8> {
        let mut v = vec![0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 0x00, 0x04];
        v.extend([0xe6u8, 0xd6, 0xb4, 0x46, 0x02, 0x00, 0x21, 0x01]);
        v
    }

    /// A zstd skippable frame (what `pzstd` writes first) before `frames`.
    fn skippable_then(frames: &[u8]) -> Vec<u8> {
        let mut v = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
        v.extend_from_slice(frames);
        v
    }

    /// One gzip member holding nothing (about 20 bytes).
    fn empty_member() -> Vec<u8> {
        gzip(b"")
    }

    /// Reads `d` to its end, reading again after each `WouldBlock`; returns the output and the
    /// most compressed input any one `read` call consumed.
    fn read_yielding(d: &mut Bounded<Box<dyn Read + Send>>) -> (std::io::Result<Vec<u8>>, u64) {
        let mut out = Vec::new();
        let mut most = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let before = d.input_bytes();
            let got = d.read(&mut buf);
            most = most.max(d.input_bytes() - before);
            match got {
                Ok(0) => return (Ok(out), most),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return (Err(e), most),
            }
        }
    }

    /// 150,000 empty gzip members (3 MB) and then a line: every `read` returns (with output or
    /// `WouldBlock`) after at most a MiB of input (plus one read-ahead buffer), so the stream
    /// can check its grant and client; the decoder's state survives and the line comes out.
    #[test]
    fn input_without_output_yields_control_every_mib() {
        let dir = tempfile::tempdir().expect("dir");
        let mut bytes = empty_member().repeat(150_000);
        bytes.extend(gzip(b"the one line\n"));
        let (f, _) = file_with(dir.path(), "hollow.gz", &bytes);
        let mut d = decoder(f, Compression::Gzip, bytes.len() as u64, LIMITS).expect("d");
        let (out, most) = read_yielding(&mut d);
        assert_eq!(out.expect("decodes"), b"the one line\n");
        assert!(
            most <= (1 << 20) + 64 * 1024,
            "one read consumed {most} bytes of input"
        );
        assert_eq!(d.input_bytes(), bytes.len() as u64);
    }

    /// 1,000,000 empty gzip members (20 MB) giving nothing: cut with the typed error once the
    /// input passes its budget, not decoded to the end.
    #[test]
    fn a_file_of_empty_members_is_cut_by_the_input_budget() {
        let dir = tempfile::tempdir().expect("dir");
        let mut bytes = empty_member().repeat(1_000_000);
        bytes.extend(gzip(b"too late\n"));
        let (f, _) = file_with(dir.path(), "hollow.gz", &bytes);
        let limits = DecompressionLimits {
            max_bytes: 16 << 30,
            max_ratio: 250,
        };
        let mut d = decoder(f, Compression::Gzip, bytes.len() as u64, limits).expect("d");
        let (out, _) = read_yielding(&mut d);
        let err = out.expect_err("cut");
        let message = limit_message(&err).expect("a typed bound");
        assert!(message.contains("decompression bomb"), "{message}");
        assert!(d.input_bytes() <= (5 << 20), "{}", d.input_bytes());
    }

    /// A file still being written (logrotate compresses progressively): the decoder reads only
    /// the size the cap was set from, so the rest is a read error, never a bomb alarm.
    #[test]
    fn a_gzip_growing_while_read_is_never_cut_as_a_bomb() {
        let dir = tempfile::tempdir().expect("dir");
        let full = gzip(&b"2026-12-04T10:00:00Z a line of the log\n".repeat(20_000));
        let half = &full[..full.len() / 2];
        let path = dir.path().join("growing.gz");
        std::fs::write(&path, half).expect("write");
        let f = File::open(&path).expect("open");
        let len = f.metadata().expect("stat").len();
        let mut w = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("append");
        w.write_all(&full[full.len() / 2..]).expect("rest");
        w.write_all(&gzip(&vec![b'x'; 4 << 20]))
            .expect("another member");
        let limits = DecompressionLimits {
            max_bytes: 1 << 30,
            max_ratio: 2,
        };
        let got = read_all(&mut decoder(f, Compression::Gzip, len, limits).expect("d"));
        let err = got.expect_err("the snapshot ends mid-member");
        assert!(limit_message(&err).is_none(), "a false bomb alarm: {err}");
    }

    /// The fuzz target's committed bomb seed still reaches the cap under the target's limits,
    /// read the way the target reads it (a file rewound to its start): the target is not
    /// vacuous (before its rewind, the decoder saw only EOF and no seed ever decoded a byte).
    #[test]
    fn the_fuzz_targets_bomb_seed_is_cut_at_its_cap() {
        use std::io::{Seek, Write};
        let seed = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decompress/seed-bomb-gz"),
        )
        .expect("the seed");
        let (_, data) = seed.split_first().expect("a seed");
        let mut f = tempfile::tempfile().expect("file");
        f.write_all(data).expect("write");
        f.rewind().expect("rewind");
        assert_eq!(
            detect(&f, Path::new("x.gz")).expect("gzip"),
            Compression::Gzip
        );
        let limits = DecompressionLimits {
            max_bytes: 8 << 20,
            max_ratio: 10,
        };
        let mut d = decoder(f, Compression::Gzip, data.len() as u64, limits).expect("d");
        let err = read_all(&mut d).expect_err("cut");
        assert!(limit_exceeded(&err).is_some(), "{err}");
    }

    #[test]
    fn a_pzstd_file_with_a_skippable_frame_first_decompresses() {
        let dir = tempfile::tempdir().expect("dir");
        let text = b"2026-12-04T10:00:00Z hello\n".repeat(50);
        let bytes = skippable_then(&zstd::encode_all(&text[..], 3).expect("zstd"));
        let (f, _) = file_with(dir.path(), "p.zst", &bytes);
        let got =
            read_all(&mut decoder(f, Compression::Zstd, bytes.len() as u64, LIMITS).expect("d"))
                .expect("read");
        assert_eq!(got, text);
    }

    #[test]
    fn a_file_starting_with_nul_bytes_is_binary() {
        let dir = tempfile::tempdir().expect("dir");
        let (f, _) = file_with(dir.path(), "a", b"text\n\0\0more\n");
        assert!(starts_binary(&f).expect("read"));
        let (f, _) = file_with(dir.path(), "b", "text, caf\u{e9}\n".as_bytes());
        assert!(!starts_binary(&f).expect("read"));
        // UTF-16: NULs between the characters, where no redactor pattern would match.
        let (f, _) = file_with(dir.path(), "c", b"\0p\0a\0s\0s\0=\0x\0\n");
        assert!(starts_binary(&f).expect("read"));
        // copytruncate's hole: a run of NULs, then text.
        let mut holed = vec![0u8; 100_000];
        holed.extend_from_slice(b"2026-12-04T10:00:00Z after the hole\n");
        let (f, _) = file_with(dir.path(), "d", &holed);
        assert!(!starts_binary(&f).expect("read"));
        let (f, _) = file_with(dir.path(), "e", &holed[99_990..]);
        assert!(!starts_binary(&f).expect("read"));
    }

    #[test]
    fn compression_is_decided_by_magic_and_a_name_must_agree() {
        let dir = tempfile::tempdir().expect("dir");
        let text = b"2026-12-04T10:00:00Z hello\n";
        let z = zstd::encode_all(&text[..], 3).expect("zstd");
        let cases: [(&str, &[u8], Result<Compression, &str>); 18] = [
            ("api.log", text, Ok(Compression::None)),
            ("api.log.1", text, Ok(Compression::None)),
            ("api.log.2.gz", &gzip(text), Ok(Compression::Gzip)),
            ("api.log.3.zst", &z, Ok(Compression::Zstd)),
            // Magic without the name: still decompressed.
            ("api.log.4", &gzip(text), Ok(Compression::Gzip)),
            // The name without the magic: refused.
            ("api.log.5.gz", text, Err("gzip")),
            ("api.log.6.zst", &gzip(text), Err("zstd")),
            ("empty.gz", b"", Err("gzip")),
            // Compressions the agent does not decode: refused by magic, whatever the name.
            ("api.log.7.xz", &xz_magic_and_junk(), Err("xz")),
            ("api.log.8", &xz_magic_and_junk(), Err("xz")),
            ("api.log.9.bz2", b"BZh91AY&SY\x01\x02", Err("bzip2")),
            ("api.log.10.lz4", b"\x04\x22\x4d\x18\x64\x40", Err("lz4")),
            ("api.log.11.zip", b"PK\x03\x04\x14\x00", Err("zip")),
            ("api.log.12.Z", b"\x1f\x9d\x90\x32", Err("compress (.Z)")),
            // A name claiming one: refused unless the content is plain text.
            ("api.log.13.br", b"\x8b\x03\x80hello\x03", Err("brotli")),
            ("notes.xz", text, Ok(Compression::None)),
            // pzstd: a skippable frame first, then the frames: zstd.
            ("api.log.14.zst", &skippable_then(&z), Ok(Compression::Zstd)),
            ("api.log.15", &skippable_then(&z), Ok(Compression::Zstd)),
        ];
        for (name, bytes, want) in cases {
            let (f, p) = file_with(dir.path(), name, bytes);
            match (detect(&f, &p), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(CompressionRefusal::NameDisagrees { claimed, .. }), Err(want)) => {
                    assert_eq!(claimed, want, "{name}")
                }
                (Err(CompressionRefusal::Unsupported { format, .. }), Err(want)) => {
                    assert_eq!(format, want, "{name}")
                }
                (got, want) => panic!("{name}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn gzip_and_zstd_files_decompress_whole_with_several_members_or_frames() {
        let dir = tempfile::tempdir().expect("dir");
        let (a, b) = (
            b"first member\n".repeat(100),
            b"second member\n".repeat(100),
        );
        let mut two = gzip(&a);
        two.extend(gzip(&b));
        let (f, _) = file_with(dir.path(), "x.gz", &two);
        let len = two.len() as u64;
        let got =
            read_all(&mut decoder(f, Compression::Gzip, len, LIMITS).expect("d")).expect("read");
        assert_eq!(got, [a.clone(), b.clone()].concat());
        let mut frames = zstd::encode_all(&a[..], 3).expect("zstd");
        frames.extend(zstd::encode_all(&b[..], 19).expect("zstd"));
        let (f, _) = file_with(dir.path(), "x.zst", &frames);
        let len = frames.len() as u64;
        let got =
            read_all(&mut decoder(f, Compression::Zstd, len, LIMITS).expect("d")).expect("read");
        assert_eq!(got, [a, b].concat());
    }

    /// A bomb: 64 MiB of zeros in ~64 KiB of gzip (ratio ~1000) and far less zstd: cut at the
    /// cap with the typed error, after exactly `cap` bytes.
    #[test]
    fn a_decompression_bomb_is_cut_at_its_cap_with_a_typed_error() {
        let dir = tempfile::tempdir().expect("dir");
        let zeros = vec![0u8; 64 << 20];
        for (name, compression, bytes) in [
            ("bomb.gz", Compression::Gzip, gzip(&zeros)),
            (
                "bomb.zst",
                Compression::Zstd,
                zstd::encode_all(&zeros[..], 3).expect("zstd"),
            ),
        ] {
            let len = bytes.len() as u64;
            let cap = LIMITS.cap_for(len);
            assert!(cap < zeros.len() as u64, "{name}: {cap}");
            let (f, _) = file_with(dir.path(), name, &bytes);
            let mut d = decoder(f, compression, len, LIMITS).expect("decoder");
            let mut served = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            let err = loop {
                match d.read(&mut buf) {
                    Ok(0) => panic!("{name}: read to its end"),
                    Ok(n) => served += n as u64,
                    Err(e) => break e,
                }
            };
            assert_eq!(served, cap, "{name}");
            let exceeded = limit_exceeded(&err).expect("typed");
            assert_eq!(exceeded.cap, cap);
            assert!(err.to_string().contains("max_decompressed_bytes"), "{err}");
        }
    }

    #[test]
    fn a_file_of_exactly_its_cap_is_served_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let data = vec![b'a'; 1 << 20];
        let bytes = gzip(&data);
        let limits = DecompressionLimits {
            max_bytes: 1 << 20,
            max_ratio: 1_000_000,
        };
        let (f, _) = file_with(dir.path(), "exact.gz", &bytes);
        let got =
            read_all(&mut decoder(f, Compression::Gzip, bytes.len() as u64, limits).expect("d"))
                .expect("exactly the cap is not over it");
        assert_eq!(got.len(), 1 << 20);
    }

    #[test]
    fn the_cap_is_the_ratio_times_the_size_above_a_floor_and_below_the_maximum() {
        let l = DecompressionLimits {
            max_bytes: 1 << 30,
            max_ratio: 100,
        };
        assert_eq!(l.cap_for(10), RATIO_FLOOR_BYTES, "tiny files get the floor");
        assert_eq!(l.cap_for(1 << 20), 100 << 20);
        assert_eq!(l.cap_for(1 << 40), 1 << 30, "never above max_bytes");
        assert_eq!(l.cap_for(u64::MAX), 1 << 30, "no overflow");
    }

    #[test]
    fn a_zstd_frame_asking_for_a_window_over_8_mib_is_refused_not_allocated() {
        let dir = tempfile::tempdir().expect("dir");
        let data = b"line\n".repeat(1000);
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("enc");
        e.window_log(27).expect("window");
        e.include_contentsize(false).expect("no size");
        e.long_distance_matching(true).expect("long");
        e.write_all(&data).expect("write");
        let bytes = e.finish().expect("finish");
        let (f, _) = file_with(dir.path(), "long.zst", &bytes);
        let got = read_all(
            &mut decoder(f, Compression::Zstd, bytes.len() as u64, LIMITS).expect("decoder"),
        );
        assert!(got.is_err(), "a 128 MiB window must be refused");
    }

    #[test]
    fn corrupt_compressed_data_is_a_read_error() {
        let dir = tempfile::tempdir().expect("dir");
        let mut bytes = gzip(&b"some log line\n".repeat(1000));
        let mid = bytes.len() / 2;
        bytes[mid..].iter_mut().for_each(|b| *b ^= 0x5a);
        let (f, _) = file_with(dir.path(), "bad.gz", &bytes);
        let got =
            read_all(&mut decoder(f, Compression::Gzip, bytes.len() as u64, LIMITS).expect("d"));
        let err = got.expect_err("corrupt");
        assert!(limit_exceeded(&err).is_none());
    }

    #[test]
    fn rotated_names_are_recognised() {
        for rotated in [
            "api.log.1",
            "api.log.2.gz",
            "api.log.3.zst",
            "api.log-20261204",
            "api.log-20261204.gz",
            "syslog.10",
        ] {
            assert!(looks_rotated(rotated), "{rotated}");
        }
        for live in [
            "api.log",
            "api.log.gz",
            "1",
            ".1",
            "api.log.x1",
            "app-server.log",
        ] {
            assert!(!looks_rotated(live), "{live}");
        }
    }
}
