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
use regex::bytes::Regex;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};
use tonic::Status;

const CHUNK: usize = 64 * 1024;
/// Longest time between two grant checks.
pub const RECHECK: Duration = Duration::from_millis(200);

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
    /// The redaction applied to everything sent (the pipeline's one transform stage).
    pub profile: Profile,
    pub start: u64,
    pub follow: bool,
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
    watch: &'a GrantWatch,
    bytes: u64,
}

impl Sender<'_> {
    fn check(&self) -> Result<(), EndReason> {
        if let Some((reason, message)) = self.watch.ended() {
            let _ = self.tx.try_send(Err(Status::aborted(message)));
            // If the channel is full the client still learns it: dropping the sender ends the
            // stream, and the audit record carries the reason.
            return Err(reason);
        }
        Ok(())
    }

    fn send(&mut self, data: Vec<u8>, profile: Profile) -> Result<(), EndReason> {
        self.check()?;
        let data = match profile {
            Profile::Raw => data,
        };
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

/// Streams according to `plan` until EOF (or forever with `follow`), the client leaving, or
/// the grant ending. Returns the reason and the number of content bytes sent.
pub fn run(mut plan: Plan, tx: mpsc::Sender<Item>, watch: &GrantWatch) -> (EndReason, u64) {
    let mut sender = Sender {
        tx: &tx,
        watch,
        bytes: 0,
    };
    let reason = match pump(&mut plan, &mut sender) {
        Ok(()) => EndReason::Eof,
        Err(reason) => reason,
    };
    (reason, sender.bytes)
}

fn pump(plan: &mut Plan, sender: &mut Sender<'_>) -> Result<(), EndReason> {
    let io = |e: std::io::Error| EndReason::ReadError(e.to_string());
    let mut pos = plan.file.seek(SeekFrom::Start(plan.start)).map_err(io)?;
    let mut buf = vec![0u8; CHUNK];
    let mut partial: Vec<u8> = Vec::new();
    let mut cutting = false;
    let whole_chunks = plan.selector.passes_everything();
    loop {
        let n = match plan.file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            if !plan.follow {
                if !partial.is_empty() && !cutting && plan.selector.keep(&partial) {
                    let mut last = std::mem::take(&mut partial);
                    last.push(b'\n');
                    sender.send(last, plan.profile)?;
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
                partial.clear();
                cutting = false;
            }
            continue;
        }
        pos += n as u64;
        let data = &buf[..n];
        if whole_chunks {
            sender.send(data.to_vec(), plan.profile)?;
            continue;
        }
        let mut out = Vec::with_capacity(n);
        let mut rest = data;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            let piece = &rest[..i];
            rest = &rest[i + 1..];
            if cutting {
                cutting = false;
                continue;
            }
            let line: &[u8] = if partial.is_empty() {
                piece
            } else {
                let room = plan.max_line.saturating_sub(partial.len());
                partial.extend_from_slice(&piece[..piece.len().min(room)]);
                &partial
            };
            if plan.selector.keep(line) {
                out.extend_from_slice(line);
                out.push(b'\n');
            }
            partial.clear();
        }
        if !cutting {
            let room = plan.max_line.saturating_sub(partial.len());
            partial.extend_from_slice(&rest[..rest.len().min(room)]);
            if partial.len() >= plan.max_line {
                // An over-long line: judge and send its first max_line bytes, drop the rest.
                if plan.selector.keep(&partial) {
                    out.extend_from_slice(&partial);
                    out.push(b'\n');
                }
                partial.clear();
                cutting = true;
            }
        }
        if !out.is_empty() {
            sender.send(out, plan.profile)?;
        }
    }
}
