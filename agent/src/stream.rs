//! Streaming one opened log file to one reader: cat, tail (optionally following), grep and time
//! ranges, in bounded memory, re-checking the grant while it runs.
//!
//! The loop runs on a blocking thread and hands chunks to the gRPC response through a small
//! bounded channel. Before every chunk and at least every [`RECHECK`] while idle or while the
//! client is slow, it asks [`GrantWatch::ended`] whether the grant expired or was revoked; if so
//! the stream ends with `ABORTED` and a sentence saying why. That is the "cut within 1 s" rule.

use crate::gate::Profile;
use crate::grants::GrantStore;
use loggate_core::grant::{rough_duration, unix_now};
use loggate_core::timestamp::line_timestamp_ms;
use loggate_proto as pb;
use loggate_redact::{Counts, Pipeline};
use regex::bytes::Regex;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};
use tonic::Status;

/// Bytes read from a file at a time.
pub const CHUNK: usize = 64 * 1024;
/// Longest time between two grant checks.
pub const RECHECK: Duration = Duration::from_millis(200);
/// A following stream that is idle looks for a file that replaced its own every this many
/// grant checks (1 s), as `tail -F` does.
const REOPEN_EVERY: u32 = 5;

/// For `tail --follow`: the file that now has the stream's path, when it is not the one being
/// read (rename-and-create rotation), opened with the same checks as the first open and
/// audited before it is read; `Ok(None)` while the path still names the current file, or
/// names nothing yet. An error ends the stream (nothing is served unaudited).
pub type Reopen = Box<dyn FnMut(&File) -> Result<Option<File>, EndReason> + Send>;

pub type Item = Result<pb::ReadLogChunk, Status>;

/// Why a stream ended (recorded in the `read.finished` audit event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    Eof,
    ClientClosed,
    GrantExpired,
    GrantRevoked,
    ReadError(String),
}

impl EndReason {
    pub fn code(&self) -> &'static str {
        match self {
            EndReason::Eof => "eof",
            EndReason::ClientClosed => "client_closed",
            EndReason::GrantExpired => "grant_expired",
            EndReason::GrantRevoked => "grant_revoked",
            EndReason::ReadError(_) => "read_error",
        }
    }
}

/// Knows when the grant behind a stream stops being valid.
pub struct GrantWatch {
    pub shared: Arc<crate::Shared>,
    pub grant_id: String,
    pub not_after: i64,
    pub path_glob_hint: String,
}

impl GrantWatch {
    /// `Some((reason, message))` once the grant has expired or been revoked.
    fn ended(&self) -> Option<(EndReason, String)> {
        let store: &GrantStore = &self.shared.grants;
        if let Some(r) = store.revocation(&self.grant_id) {
            return Some((
                EndReason::GrantRevoked,
                format!(
                    "grant {} was revoked by {}{}; the stream was cut",
                    self.grant_id,
                    r.by,
                    if r.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", r.reason)
                    }
                ),
            ));
        }
        let now = unix_now();
        if now >= self.not_after {
            return Some((
                EndReason::GrantExpired,
                format!(
                    "grant {} for {} expired {} ago; the stream was cut; request a new grant",
                    self.grant_id,
                    self.path_glob_hint,
                    rough_duration(now - self.not_after)
                ),
            ));
        }
        None
    }
}

/// Which lines to send. Lines without a recognised timestamp inherit the previous line's.
pub struct LineSelector {
    pub pattern: Option<Regex>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    current_ms: Option<i64>,
}

impl LineSelector {
    pub fn new(pattern: Option<Regex>, since_ms: Option<i64>, until_ms: Option<i64>) -> Self {
        Self {
            pattern,
            since_ms,
            until_ms,
            current_ms: None,
        }
    }

    /// Whether every line passes (so whole chunks can be sent without splitting lines).
    pub fn passes_everything(&self) -> bool {
        self.pattern.is_none() && self.since_ms.is_none() && self.until_ms.is_none()
    }

    pub fn keep(&mut self, line: &[u8]) -> bool {
        if self.since_ms.is_some() || self.until_ms.is_some() {
            if let Some(ts) = line_timestamp_ms(line) {
                self.current_ms = Some(ts);
            }
            let Some(ts) = self.current_ms else {
                return false;
            };
            if self.since_ms.is_some_and(|s| ts < s) || self.until_ms.is_some_and(|u| ts >= u) {
                return false;
            }
        }
        self.pattern.as_ref().is_none_or(|p| p.is_match(line))
    }
}

pub struct Plan {
    pub file: File,
    /// The redaction applied to everything sent: every byte of a redacting profile passes
    /// through [`Pipeline`], line by line; only `raw` without line selection sends whole chunks.
    pub profile: Profile,
    /// `tail -n`: start this many lines before the end (of `len` bytes).
    pub tail_lines: Option<u64>,
    pub len: u64,
    pub follow: bool,
    /// With `follow`: how to find the file that replaced this one.
    pub reopen: Option<Reopen>,
    pub selector: LineSelector,
    pub max_line: usize,
}

/// Where the `tail_lines`-th line from the end starts.
pub fn tail_offset(file: &File, len: u64, lines: u64) -> std::io::Result<u64> {
    if lines == 0 || len == 0 {
        return Ok(len);
    }
    let mut buf = vec![0u8; CHUNK];
    let mut end = len;
    let mut newlines = 0u64;
    // A final newline ends the last line; it does not start a new one.
    let mut skip_last = true;
    while end > 0 {
        let start = end.saturating_sub(CHUNK as u64);
        let n = (end - start) as usize;
        file.read_exact_at(&mut buf[..n], start)?;
        for i in (0..n).rev() {
            if buf[i] == b'\n' {
                if skip_last && start + i as u64 == len - 1 {
                    continue;
                }
                newlines += 1;
                if newlines == lines {
                    return Ok(start + i as u64 + 1);
                }
            }
        }
        skip_last = false;
        end = start;
    }
    Ok(0)
}

/// The sending side: counts bytes, re-checks the grant while the client is slow.
struct Sender<'a> {
    tx: &'a mpsc::Sender<Item>,
    /// Capacity 1, read by the client after every data chunk: the stream's final status always
    /// has room, however full the data channel is, so a cut is never mistaken for an end.
    last: &'a mpsc::Sender<Item>,
    watch: &'a GrantWatch,
    bytes: u64,
}

impl Sender<'_> {
    fn check(&self) -> Result<(), EndReason> {
        if let Some((reason, message)) = self.watch.ended() {
            let _ = self.last.try_send(Err(Status::aborted(message)));
            return Err(reason);
        }
        Ok(())
    }

    fn send(&mut self, data: Vec<u8>) -> Result<(), EndReason> {
        self.check()?;
        let len = data.len() as u64;
        let mut item = Ok(pb::ReadLogChunk {
            item: Some(pb::read_log_chunk::Item::Data(data)),
        });
        loop {
            match self.tx.try_send(item) {
                Ok(()) => break,
                Err(TrySendError::Closed(_)) => return Err(EndReason::ClientClosed),
                Err(TrySendError::Full(back)) => {
                    item = back;
                    std::thread::sleep(Duration::from_millis(20));
                    self.check()?;
                }
            }
        }
        self.bytes += len;
        Ok(())
    }
}

/// How a stream ended: why, the content bytes sent, what redaction did.
pub struct Finished {
    pub reason: EndReason,
    pub bytes: u64,
    pub counts: Counts,
}

/// How far before a `tail` start the redactor looks for an open private-key block.
const PRIME_WINDOW: u64 = 64 * 1024;

/// Streams according to `plan` until EOF (or forever with `follow`), the client leaving, or
/// the grant ending. Data goes to `tx`; a final error status (grant ended, read failed) goes
/// to `last`, which the response yields after all data.
pub fn run(
    mut plan: Plan,
    tx: mpsc::Sender<Item>,
    last: mpsc::Sender<Item>,
    watch: &GrantWatch,
) -> Finished {
    let mut sender = Sender {
        tx: &tx,
        last: &last,
        watch,
        bytes: 0,
    };
    let mut pipeline = Pipeline::new(plan.profile.redactor(), plan.max_line);
    // Where to start: with `tail_lines`, found by reading the file, here off the async runtime.
    let start = match plan.tail_lines {
        Some(lines) => tail_offset(&plan.file, plan.len, lines),
        None => Ok(0),
    };
    let reason = match start {
        Err(e) => EndReason::ReadError(e.to_string()),
        Ok(start) => match pump(&mut plan, start, &mut pipeline, &mut sender) {
            Ok(()) => EndReason::Eof,
            Err(reason) => reason,
        },
    };
    if let EndReason::ReadError(e) = &reason {
        let _ = last.try_send(Err(Status::internal(format!(
            "reading the file failed: {e}"
        ))));
    }
    Finished {
        reason,
        bytes: sender.bytes,
        counts: pipeline.counts().clone(),
    }
}

/// Feeds the redactor the lines just before `start`, so that a `tail` starting inside a
/// private-key block does not serve the rest of the block.
fn prime(file: &File, start: u64, pipeline: &mut Pipeline) -> std::io::Result<()> {
    let from = start.saturating_sub(PRIME_WINDOW);
    let mut window = vec![0u8; (start - from) as usize];
    file.read_exact_at(&mut window, from)?;
    let whole_lines = if from == 0 {
        &window[..]
    } else {
        match memchr::memchr(b'\n', &window) {
            Some(i) => &window[i + 1..],
            None => &[][..],
        }
    };
    pipeline.prime(whole_lines);
    Ok(())
}

fn pump(
    plan: &mut Plan,
    start: u64,
    pipeline: &mut Pipeline,
    sender: &mut Sender<'_>,
) -> Result<(), EndReason> {
    let io = |e: std::io::Error| EndReason::ReadError(e.to_string());
    let redacting = !matches!(plan.profile, Profile::Raw);
    if redacting && start > 0 {
        prime(&plan.file, start, pipeline).map_err(io)?;
    }
    let mut pos = plan.file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut buf = vec![0u8; CHUNK];
    let whole_chunks = !redacting && plan.selector.passes_everything();
    let selector = &mut plan.selector;
    let mut idle_checks = 0u32;
    // The file that replaced ours, found while idle: switched to once ours has stayed idle for
    // another REOPEN_EVERY checks (a writer appends to the renamed file until it reopens).
    let mut replacement: Option<File> = None;
    // Whether the raw bytes sent so far end a line (whole-chunk mode), so that the next file's
    // first line does not join the last one of the old file.
    let mut ends_line = true;
    loop {
        let n = match plan.file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            if !plan.follow {
                // Shrunk under us (copytruncate): what we carry is the head of a line that is
                // gone; end with the whole lines already served.
                if plan.file.metadata().map_err(io)?.len() < pos {
                    pipeline.abandon_partial_line();
                }
                let mut out = Vec::new();
                pipeline.finish(&mut |line| selector.keep(line), &mut out);
                if !out.is_empty() {
                    sender.send(out)?;
                }
                return Ok(());
            }
            std::thread::sleep(RECHECK);
            sender.check()?;
            if sender.tx.is_closed() {
                return Err(EndReason::ClientClosed);
            }
            // copytruncate rotation: the file shrank under us; start again from its beginning.
            let len = plan.file.metadata().map_err(io)?.len();
            if len < pos {
                pos = plan.file.seek(SeekFrom::Start(0)).map_err(io)?;
                pipeline.reset();
                continue;
            }
            idle_checks = idle_checks.wrapping_add(1);
            if replacement.is_some() {
                // The old file has been idle for REOPEN_EVERY checks since its replacement was
                // found (any data read resets the count): its writers have moved on.
                if idle_checks >= REOPEN_EVERY {
                    if let Some(next) = replacement.take() {
                        // An unfinished last line is dropped, not served: it may be half a
                        // secret. A private-key block still open stays open (fail closed).
                        pipeline.abandon_partial_line();
                        if whole_chunks && !ends_line {
                            sender.send(b"\n".to_vec())?;
                            ends_line = true;
                        }
                        plan.file = next;
                        pos = 0;
                        idle_checks = 0;
                    }
                }
            } else if idle_checks.is_multiple_of(REOPEN_EVERY) {
                if let Some(reopen) = &mut plan.reopen {
                    replacement = reopen(&plan.file)?;
                    if replacement.is_some() {
                        idle_checks = 0;
                    }
                }
            }
            continue;
        }
        idle_checks = 0;
        pos += n as u64;
        let data = &buf[..n];
        if whole_chunks {
            ends_line = data.last() == Some(&b'\n');
            sender.send(data.to_vec())?;
            continue;
        }
        let mut out = Vec::with_capacity(n);
        pipeline.push(data, &mut |line| selector.keep(line), &mut out);
        if !out.is_empty() {
            sender.send(out)?;
        }
    }
}
