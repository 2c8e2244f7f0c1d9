//! Streaming one opened log file to one reader: cat, tail (optionally following), grep and time
//! ranges, in bounded memory, re-checking the grant while it runs.
//!
//! The loop runs on a blocking thread and hands chunks to the gRPC response through a small
//! bounded channel. After every chunk read, between lines (at most every [`POLL`]) and at least
//! every [`RECHECK`] while idle or while the client is slow, it asks [`GrantWatch::ended`]
//! whether the grant expired or was revoked, and whether the client is still there; a stream
//! that produces no output (a grep that matches nothing) is cut as promptly as one that does.
//! A cut grant ends the stream with `ABORTED` and a sentence saying why. That is the "cut
//! within 1 s" rule; what bounds it is the time one line takes to match, which the pattern
//! check at request time bounds (`server::PATTERN_WORK_PER_LINE`: automaton states ×
//! `max_line_bytes`). The time spent matching a grep pattern is budgeted per stream
//! (`grep_time_budget`).

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
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{self, error::TrySendError};
use tonic::Status;

/// Bytes read from a file at a time.
pub const CHUNK: usize = 64 * 1024;
/// Longest time between two grant checks while idle.
pub const RECHECK: Duration = Duration::from_millis(200);
/// Longest time between two checks of the grant and the client while lines are being read.
const POLL: Duration = Duration::from_millis(50);
/// Bytes read at a time when looking back from a `tail` start for a private-key marker.
const LOOKBACK_STEP: u64 = 1 << 20;
/// A following stream that is idle looks for a file that replaced its own every this many
/// grant checks (1 s), as `tail -F` does.
const REOPEN_EVERY: u32 = 5;

/// For `tail --follow`: the file that now has the stream's path, when it is not the one being
/// read (rename-and-create rotation), opened with the same checks as the first open and
/// audited before it is read; `Ok(None)` while the path still names the current file, or
/// names nothing yet. An error ends the stream (nothing is served unaudited).
pub type Reopen = Box<dyn FnMut(&File) -> Result<Option<File>, EndReason> + Send>;

pub type Item = Result<pb::ReadLogChunk, Status>;

/// Why a stream ended (`end_reason` in the `read.finished` audit event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Everything was sent (not following).
    Eof,
    /// The client went away (closed, killed, or its connection broke).
    ClientClosed,
    GrantExpired,
    GrantRevoked,
    /// The grep pattern used up `limits.grep_time_budget`.
    BudgetExceeded,
    ReadError(String),
}

impl EndReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::Eof => "eof",
            EndReason::ClientClosed => "client_closed",
            EndReason::GrantExpired => "grant_expired",
            EndReason::GrantRevoked => "grant_revoked",
            EndReason::BudgetExceeded => "budget_exceeded",
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
    /// Time the pattern may spend matching over the whole stream, and the time it has spent.
    budget: Duration,
    spent: Duration,
}

impl LineSelector {
    pub fn new(
        pattern: Option<Regex>,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        budget: Duration,
    ) -> Self {
        Self {
            pattern,
            since_ms,
            until_ms,
            current_ms: None,
            budget,
            spent: Duration::ZERO,
        }
    }

    /// `Err(BudgetExceeded)` once the pattern has spent its time budget.
    fn budget_left(&self) -> Result<(), EndReason> {
        match self.spent > self.budget {
            true => Err(EndReason::BudgetExceeded),
            false => Ok(()),
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
        let Some(p) = &self.pattern else {
            return true;
        };
        let started = Instant::now();
        let matched = p.is_match(line);
        self.spent += started.elapsed();
        matched
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
    /// How far before a `tail` start to look for the line deciding the private-key state.
    pub key_lookback: u64,
}

/// Where the `tail_lines`-th line from the end starts; `check` runs before every chunk read
/// (a file without newlines is read to its start).
fn tail_offset(
    file: &File,
    len: u64,
    lines: u64,
    check: &mut dyn FnMut() -> Result<(), EndReason>,
) -> Result<u64, EndReason> {
    if lines == 0 || len == 0 {
        return Ok(len);
    }
    let mut buf = vec![0u8; CHUNK];
    let mut end = len;
    let mut newlines = 0u64;
    // A final newline ends the last line; it does not start a new one.
    let mut skip_last = true;
    while end > 0 {
        check()?;
        let start = end.saturating_sub(CHUNK as u64);
        let n = (end - start) as usize;
        file.read_exact_at(&mut buf[..n], start)
            .map_err(read_error)?;
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
    checked: Instant,
}

impl Sender<'_> {
    /// Whether the stream may go on: the grant still valid (else its cut is sent as the final
    /// status) and the client still there.
    fn check(&mut self) -> Result<(), EndReason> {
        self.checked = Instant::now();
        if let Some((reason, message)) = self.watch.ended() {
            let _ = self.last.try_send(Err(Status::aborted(message)));
            return Err(reason);
        }
        if self.tx.is_closed() {
            return Err(EndReason::ClientClosed);
        }
        Ok(())
    }

    /// [`Sender::check`] at most every [`POLL`]: cheap enough between two lines.
    fn poll(&mut self) -> Result<(), EndReason> {
        match self.checked.elapsed() < POLL {
            true => Ok(()),
            false => self.check(),
        }
    }

    /// Ends the stream for its grep budget, telling the client why.
    fn budget_exceeded(&self, budget: Duration) -> EndReason {
        let message = format!(
            "the grep pattern used up its time budget of {} on agent {}; the stream was cut; \
             use a simpler pattern or a narrower time range (--since/--until)",
            humantime::format_duration(budget),
            self.watch.shared.config.id
        );
        let _ = self.last.try_send(Err(Status::aborted(message)));
        EndReason::BudgetExceeded
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
    /// Time spent matching the grep pattern.
    pub pattern_time: Duration,
    /// No private-key marker was found within the look-back limit before a `tail` start, so
    /// the start was taken as outside any key block (a key block is shorter than the
    /// look-back; see [`prime`]).
    pub key_lookback_exhausted: bool,
}

fn read_error(e: std::io::Error) -> EndReason {
    EndReason::ReadError(e.to_string())
}

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
        checked: Instant::now(),
    };
    let mut pipeline = Pipeline::new(plan.profile.redactor(), plan.max_line);
    let mut key_lookback_exhausted = false;
    // Where to start: with `tail_lines`, found by reading the file, here off the async runtime.
    let start = match plan.tail_lines {
        Some(lines) => tail_offset(&plan.file, plan.len, lines, &mut || sender.check()),
        None => Ok(0),
    };
    let primed = start.and_then(|start| {
        if start > 0 && pipeline.removes_private_keys() {
            let check = &mut || sender.check();
            key_lookback_exhausted =
                prime(&plan.file, start, plan.key_lookback, &mut pipeline, check)?;
        }
        Ok(start)
    });
    let reason = match primed {
        Err(reason) => reason,
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
        pattern_time: plan.selector.spent,
        key_lookback_exhausted,
    }
}

/// Sets the redactor's private-key state for a `tail` that starts at `start`: inside a block
/// if the last `BEGIN`/`END` marker before `start` opens one. Only a line holding a marker
/// can change the state, so the file is read backwards (`LOOKBACK_STEP` at a time, `check`
/// before each read) until one is found, and that one line is run through the redactor. No
/// marker back to the file's start: outside.
///
/// No marker within `limit` bytes (`limits.tail_key_lookback_bytes`, 16 MiB by default):
/// outside too, and `true` is returned so that the audit record says the look-back ran out.
/// This rests on one stated bound: **a private-key block is shorter than `limit`** (an RSA-16384
/// PEM key is ~12 KB; a PGP secret key with many subkeys and a photo, a few hundred KB). A start
/// more than `limit` bytes after the last BEGIN is therefore not inside a key's body. Treating
/// it as inside would serve nothing from a tail of any log longer than `limit` that never held
/// a key — every large log — until some END line appeared.
fn prime(
    file: &File,
    start: u64,
    limit: u64,
    pipeline: &mut Pipeline,
    check: &mut dyn FnMut() -> Result<(), EndReason>,
) -> Result<bool, EndReason> {
    /// Kept from one window in the next when a window holds no whole line, so that a marker
    /// cut by the window's edge is seen whole (markers are much shorter).
    const OVERLAP: u64 = 256;
    let mut buf = Vec::new();
    let (mut end, mut looked) = (start, 0u64);
    while end > 0 {
        if looked >= limit {
            return Ok(true);
        }
        check()?;
        let step = LOOKBACK_STEP.min(end).min(limit - looked);
        let from = end - step;
        buf.resize(step as usize, 0);
        file.read_exact_at(&mut buf, from).map_err(read_error)?;
        looked += step;
        // The window's first line may have begun before it: search whole lines only, and read
        // that line again with the next window — unless the window holds no whole line.
        let first_newline = memchr::memchr(b'\n', &buf).filter(|i| i + 1 < buf.len());
        let (skip, next_end) = match first_newline {
            _ if from == 0 => (0, 0),
            Some(i) => (i + 1, from + i as u64 + 1),
            None if step > OVERLAP => (0, from + OVERLAP),
            None => (0, from),
        };
        let region = &buf[skip..];
        if let Some(m) = crate::redact::last_private_key_marker(region) {
            let line_start = memchr::memrchr(b'\n', &region[..m]).map_or(0, |i| i + 1);
            let line_end = memchr::memchr(b'\n', &region[m..]).map_or(region.len(), |i| m + i + 1);
            pipeline.prime(&region[line_start..line_end]);
            return Ok(false);
        }
        end = next_end;
    }
    Ok(false)
}

fn pump(
    plan: &mut Plan,
    start: u64,
    pipeline: &mut Pipeline,
    sender: &mut Sender<'_>,
) -> Result<(), EndReason> {
    let io = read_error;
    let redacting = !matches!(plan.profile, Profile::Raw);
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
            // copytruncate rotation: the file shrank under us; start again from its beginning.
            // An unfinished line is dropped, and a private-key block still open stays open
            // (as when following a renamed file): the new content may be the rest of the key.
            let len = plan.file.metadata().map_err(io)?.len();
            if len < pos {
                pos = plan.file.seek(SeekFrom::Start(0)).map_err(io)?;
                pipeline.abandon_partial_line();
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
        sender.poll()?;
        let data = &buf[..n];
        if whole_chunks {
            ends_line = data.last() == Some(&b'\n');
            sender.send(data.to_vec())?;
            continue;
        }
        let mut out = Vec::with_capacity(n);
        // Between two lines: the client, the grant and the grep budget are looked at, so that
        // a chunk of slow-to-match lines that yields nothing still ends within a line's time.
        let mut stop = None;
        let mut keep = |line: &[u8]| {
            let go_on = stop.is_none() && {
                let checked = sender.poll().and_then(|()| selector.budget_left());
                stop = checked.err();
                stop.is_none()
            };
            go_on && selector.keep(line)
        };
        pipeline.push(data, &mut keep, &mut out);
        match stop {
            Some(EndReason::BudgetExceeded) => {
                return Err(sender.budget_exceeded(selector.budget));
            }
            Some(reason) => return Err(reason),
            None => {}
        }
        if !out.is_empty() {
            sender.send(out)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::Redactor;
    use std::io::Write;

    /// `tail` of `text` from its `from`-th byte through the default profile, primed with a
    /// look-back of `limit` bytes: what is served, and whether the look-back was exhausted.
    fn tail_from(text: &[u8], from: u64, limit: u64) -> (String, bool) {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(text).expect("write");
        let mut p = Pipeline::new(Some(Arc::new(Redactor::default_profile())), 1 << 20);
        let exhausted = prime(&file, from, limit, &mut p, &mut || Ok(())).expect("prime");
        let mut out = Vec::new();
        p.push(&text[from as usize..], &mut |_| true, &mut out);
        p.finish(&mut |_| true, &mut out);
        (String::from_utf8_lossy(&out).into_owned(), exhausted)
    }

    fn key_block(body_lines: usize) -> String {
        let mut s = String::from("-----BEGIN PGP PRIVATE KEY BLOCK-----\n");
        for i in 0..body_lines {
            s.push_str(&format!("{i:08}{}\n", "QUJDRA".repeat(9)));
        }
        s
    }

    #[test]
    fn a_tail_start_inside_a_key_block_begun_far_back_serves_nothing_of_it() {
        // A block of ~80 KiB (more than one 64 KiB look-back), its start 3 MiB into the file.
        let mut text = "2026-12-04 INFO before\n".repeat(140_000);
        text.push_str(&key_block(1300));
        let start = text.len() as u64 - 6 * 63;
        text.push_str("-----END PGP PRIVATE KEY BLOCK-----\nafter the key\n");
        let (served, exhausted) = tail_from(text.as_bytes(), start, 256 << 20);
        assert_eq!((served.as_str(), exhausted), ("after the key\n", false));
    }

    #[test]
    fn a_tail_start_after_a_closed_block_or_in_a_file_without_one_is_served() {
        let mut text = key_block(3);
        text.push_str("-----END PGP PRIVATE KEY BLOCK-----\n");
        text.push_str(&"2026-12-04 INFO line\n".repeat(100_000));
        let start = text.len() as u64 - 21;
        let (served, exhausted) = tail_from(text.as_bytes(), start, 256 << 20);
        assert_eq!(
            (served.as_str(), exhausted),
            ("2026-12-04 INFO line\n", false)
        );
        let plain = "2026-12-04 INFO line\n".repeat(100_000);
        let start = plain.len() as u64 - 21;
        let (served, exhausted) = tail_from(plain.as_bytes(), start, 256 << 20);
        assert_eq!(
            (served.as_str(), exhausted),
            ("2026-12-04 INFO line\n", false)
        );
    }

    #[test]
    fn a_tail_start_with_no_marker_within_the_look_back_limit_is_served_and_says_so() {
        // A log longer than the limit that never held a key: its last line is served (a
        // private-key block is shorter than the limit), and the record says the look-back ran out.
        let plain = "2026-12-04 INFO line\n".repeat(10_000);
        let start = plain.len() as u64 - 21;
        let (served, exhausted) = tail_from(plain.as_bytes(), start, 64 * 1024);
        assert_eq!(
            (served.as_str(), exhausted),
            ("2026-12-04 INFO line\n", true)
        );
        // A BEGIN within the limit still decides: nothing of the block is served.
        let mut text = "2026-12-04 INFO line\n".repeat(10_000);
        text.push_str(&key_block(100));
        let start = text.len() as u64 - 63;
        text.push_str("-----END PGP PRIVATE KEY BLOCK-----\nafter the key\n");
        let (served, exhausted) = tail_from(text.as_bytes(), start, 64 * 1024);
        assert_eq!((served.as_str(), exhausted), ("after the key\n", false));
    }

    #[test]
    fn a_marker_cut_by_the_look_back_window_is_still_found() {
        // A line longer than a look-back step whose BEGIN the first window's edge cuts in two.
        let marker = "-----BEGIN RSA PRIVATE KEY-----";
        let mut text = "INFO a\n".repeat(1000);
        let line_len = LOOKBACK_STEP as usize + 10;
        text.push_str(marker);
        text.push_str(&"z".repeat(line_len - marker.len() - 1));
        text.push('\n');
        let start = text.len() as u64;
        text.push_str("MIIEowIBAAKCAQEA\n");
        assert_eq!(
            start - LOOKBACK_STEP,
            7000 + 10,
            "the edge is inside the marker"
        );
        let (served, _) = tail_from(text.as_bytes(), start, 256 << 20);
        assert_eq!(served, "");
    }
}
