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

/// gzip's magic (RFC 1952: ID1 ID2).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// A zstd frame's magic number, little-endian (RFC 8878 §3.1.1).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The largest zstd window accepted, as a power of two: 8 MiB.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// A compressed file may always decompress to this much, whatever its ratio: a tiny file of
/// repeated lines compresses far beyond any ratio worth refusing.
pub const RATIO_FLOOR_BYTES: u64 = 1 << 20;

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

/// A file whose name claims a compression its content does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionRefusal {
    #[error(
        "{path} is named as {claimed} but its content is not {claimed} (its first bytes are not \
         {claimed}'s magic); it is not served: check how it was rotated"
    )]
    NameDisagrees { path: String, claimed: &'static str },
    #[error("could not read the start of {path}: {error}")]
    Io { path: String, error: String },
}

/// The compression of `file` (opened at `path`): its magic bytes decide; a name ending in
/// `.gz` or `.zst` must agree with them. A file with a compression's magic but no matching
/// name is decompressed too (logrotate's `compressext` may be anything). Reads at most four
/// bytes at offset 0 (`pread`: the file's position is untouched).
pub fn detect(file: &File, path: &Path) -> Result<Compression, CompressionRefusal> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match file.read_at(&mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(CompressionRefusal::Io {
                    path: path.display().to_string(),
                    error: e.to_string(),
                })
            }
        }
    }
    let head = &head[..got];
    let by_magic = if head.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if head == ZSTD_MAGIC {
        Compression::Zstd
    } else {
        Compression::None
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
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

/// A reader that yields at most `cap` bytes of `inner`; reading past them fails with a
/// [`LimitExceeded`] inside an `std::io::Error` (find it with [`limit_exceeded`]).
pub struct Bounded<R> {
    inner: R,
    out: u64,
    cap: u64,
    exceeded: LimitExceeded,
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
        Ok(n)
    }
}

/// The [`LimitExceeded`] an I/O error carries, if it is one (by type, never by its text).
pub fn limit_exceeded(e: &std::io::Error) -> Option<&LimitExceeded> {
    e.get_ref().and_then(|inner| inner.downcast_ref())
}

/// The decompressed content of `file` (`compressed_len` bytes, compressed with `compression`,
/// read from its start), bounded by `limits`. `Compression::None` is refused: plain files are
/// served by the ordinary path, which can seek and follow.
pub fn decoder(
    file: File,
    compression: Compression,
    compressed_len: u64,
    limits: DecompressionLimits,
) -> std::io::Result<Bounded<Box<dyn Read + Send>>> {
    let inner: Box<dyn Read + Send> = match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            file,
        ))),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(file)?;
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
    })
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

    #[test]
    fn compression_is_decided_by_magic_and_a_name_must_agree() {
        let dir = tempfile::tempdir().expect("dir");
        let text = b"2026-12-04T10:00:00Z hello\n";
        let z = zstd::encode_all(&text[..], 3).expect("zstd");
        let cases: [(&str, &[u8], Result<Compression, &str>); 8] = [
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
        ];
        for (name, bytes, want) in cases {
            let (f, p) = file_with(dir.path(), name, bytes);
            match (detect(&f, &p), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(CompressionRefusal::NameDisagrees { claimed, .. }), Err(want)) => {
                    assert_eq!(claimed, want, "{name}")
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
