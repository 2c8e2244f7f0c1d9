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
//! (`grep_time_budget`), per subject across its streams ([`GrepBuckets`],
//! `grep_seconds_per_subject_per_minute`), and the agent runs at most `max_grep_streams` grep
//! streams at once ([`GrepLimits::start`]): re-requesting streams cannot keep cores busy.

use crate::gate::Profile;
use crate::grants::GrantStore;
use loggate_core::grant::{rough_duration, unix_now};
use loggate_core::timestamp::line_timestamp_ms;
use loggate_proto as pb;
use loggate_redact::{Counts, Pipeline};
use regex::bytes::Regex;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// The subject's matching time across its streams, charged as this stream spends it.
    subject: Option<SubjectCharge>,
}

/// Matching time each subject may spend across all its grep streams on this agent: a token
/// bucket per subject holding up to `per_minute` of time, refilled at `per_minute` per minute.
/// A subject whose bucket is empty gets no new grep stream, and its running ones are cut, so
/// re-requesting streams (each with its own `grep_time_budget`) cannot burn CPU without end.
///
/// Memory: a subject's entry exists only while its bucket is below full; full buckets are
/// forgotten (a missing entry is a full bucket).
pub struct GrepBuckets {
    per_minute: Duration,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    /// Seconds of matching left; negative once overdrawn by the last line matched.
    seconds: f64,
    at: Instant,
}

impl GrepBuckets {
    pub fn new(per_minute: Duration) -> Self {
        GrepBuckets {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn per_minute(&self) -> Duration {
        self.per_minute
    }

    /// Charges `spent` to `subject` and returns the seconds it has left (≤ 0: spent).
    pub fn charge(&self, subject: &str, spent: Duration) -> f64 {
        self.charge_at(subject, spent, Instant::now())
    }

    fn charge_at(&self, subject: &str, spent: Duration, now: Instant) -> f64 {
        let capacity = self.per_minute.as_secs_f64();
        let rate = capacity / 60.0;
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let refill = |b: &mut Bucket| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.seconds = (b.seconds + elapsed * rate).min(capacity);
            b.at = now;
        };
        if map.len() >= 1024 {
            map.retain(|_, b| {
                refill(b);
                b.seconds < capacity
            });
        }
        let bucket = map.entry(subject.to_string()).or_insert(Bucket {
            seconds: capacity,
            at: now,
        });
        refill(bucket);
        bucket.seconds -= spent.as_secs_f64();
        let left = bucket.seconds;
        if left >= capacity {
            map.remove(subject);
        }
        left
    }
}

/// Charges one stream's matching time to its subject's bucket, every [`SETTLE`] of time spent
/// and when the stream ends (drop).
pub struct SubjectCharge {
    pub buckets: Arc<GrepBuckets>,
    pub subject: String,
    charged: Duration,
    exhausted: bool,
}

/// Matching time a stream spends before charging it to its subject's bucket.
const SETTLE: Duration = Duration::from_millis(20);

impl SubjectCharge {
    pub fn new(buckets: Arc<GrepBuckets>, subject: String) -> Self {
        SubjectCharge {
            buckets,
            subject,
            charged: Duration::ZERO,
            exhausted: false,
        }
    }

    /// Charges what was spent since the last call; `false` once the bucket is empty.
    fn settle(&mut self, spent: Duration) -> bool {
        let delta = spent.saturating_sub(self.charged);
        self.charged = spent;
        if self.buckets.charge(&self.subject, delta) <= 0.0 {
            self.exhausted = true;
        }
        !self.exhausted
    }
}

/// The agent-wide cap on concurrent grep streams and the per-subject buckets.
pub struct GrepLimits {
    pub buckets: Arc<GrepBuckets>,
    max_streams: usize,
    running: Arc<AtomicUsize>,
}

/// A running grep stream's place under [`GrepLimits`]' cap, freed on drop.
pub struct GrepGuard {
    running: Arc<AtomicUsize>,
}

impl Drop for GrepGuard {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl GrepLimits {
    pub fn new(max_streams: usize, per_subject_per_minute: Duration) -> Self {
        GrepLimits {
            buckets: Arc::new(GrepBuckets::new(per_subject_per_minute)),
            max_streams,
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// A place for one more grep stream, or `None` when `max_streams` are running.
    pub fn start(&self) -> Option<GrepGuard> {
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_streams).then_some(n + 1)
            })
            .ok()?;
        Some(GrepGuard {
            running: self.running.clone(),
        })
    }

    /// Seconds of matching `subject` has left now (≤ 0: none; a new grep is refused).
    pub fn left(&self, subject: &str) -> f64 {
        self.buckets.charge(subject, Duration::ZERO)
    }
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
            subject: None,
        }
    }

    /// Charges the matching time to the subject's bucket as well (see [`GrepBuckets`]).
    pub fn charging(mut self, charge: SubjectCharge) -> Self {
        self.subject = Some(charge);
        self
    }

    /// `Err(BudgetExceeded)` once the pattern has spent its time budget, or its subject's.
    fn budget_left(&mut self) -> Result<(), EndReason> {
        if self.spent > self.budget {
            return Err(EndReason::BudgetExceeded);
        }
        if let Some(charge) = &mut self.subject {
            let due = self.spent.saturating_sub(charge.charged) >= SETTLE || charge.exhausted;
            if due && !charge.settle(self.spent) {
                return Err(EndReason::BudgetExceeded);
            }
        }
        Ok(())
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

    /// Ends the stream for its grep budget (the stream's, or the subject's across streams),
    /// telling the client why.
    fn budget_exceeded(&self, selector: &LineSelector) -> EndReason {
        let agent = &self.watch.shared.config.id;
        let message = match &selector.subject {
            Some(charge) if charge.exhausted => format!(
                "you used up your grep time on agent {agent} ({} of matching per minute across \
                 your streams); the stream was cut; wait a minute, or use a simpler pattern or a \
                 narrower time range (--since/--until)",
                humantime::format_duration(charge.buckets.per_minute())
            ),
            _ => format!(
                "the grep pattern used up its time budget of {} on agent {agent}; the stream \
                 was cut; use a simpler pattern or a narrower time range (--since/--until)",
                humantime::format_duration(selector.budget)
            ),
        };
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
    // The matching time not yet charged to the subject's bucket.
    if let Some(charge) = &mut plan.selector.subject {
        charge.settle(plan.selector.spent);
    }
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
                return Err(sender.budget_exceeded(selector));
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

    /// Issue #10 review: each stream had its own grep budget, so a subject re-requesting
    /// streams burned CPU for ever. The bucket is shared by the subject's streams and refills
    /// at its rate only.
    #[test]
    fn a_subjects_grep_time_is_shared_by_its_streams_and_refills_per_minute() {
        let b = GrepBuckets::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(b.charge_at("alice", Duration::ZERO, t0), 30.0);
        // Two streams of alice spend 20 s each: the second overdraws the bucket.
        assert!(b.charge_at("alice", Duration::from_secs(20), t0) > 0.0);
        assert!(b.charge_at("alice", Duration::from_secs(20), t0) <= 0.0);
        assert_eq!(
            b.charge_at("bob", Duration::ZERO, t0),
            30.0,
            "bob has his own"
        );
        // Half a minute later half the rate has come back: -10 + 15.
        let left = b.charge_at("alice", Duration::ZERO, t0 + Duration::from_secs(30));
        assert!((left - 5.0).abs() < 1e-6, "{left}");
        // Full buckets are forgotten.
        b.charge_at("alice", Duration::ZERO, t0 + Duration::from_secs(600));
        assert!(b.buckets.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_selector_ends_when_its_subjects_bucket_is_empty_though_its_own_budget_is_not() {
        let buckets = Arc::new(GrepBuckets::new(Duration::from_millis(30)));
        // Another stream of alice's already spent her time.
        buckets.charge("alice", Duration::from_millis(40));
        let pattern = Regex::new("x").expect("regex");
        let mut selector = LineSelector::new(Some(pattern), None, None, Duration::from_secs(30))
            .charging(SubjectCharge::new(buckets.clone(), "alice".into()));
        selector.spent = SETTLE;
        assert_eq!(selector.budget_left(), Err(EndReason::BudgetExceeded));
        let mut bobs = LineSelector::new(None, None, None, Duration::from_secs(30))
            .charging(SubjectCharge::new(buckets, "bob".into()));
        bobs.spent = SETTLE;
        assert_eq!(bobs.budget_left(), Ok(()));
    }

    #[test]
    fn the_agent_runs_at_most_its_cap_of_grep_streams() {
        let limits = GrepLimits::new(2, Duration::from_secs(30));
        let a = limits.start().expect("first");
        let _b = limits.start().expect("second");
        assert!(limits.start().is_none(), "a third waits for one to end");
        drop(a);
        assert!(limits.start().is_some(), "an ended stream frees its place");
    }

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
