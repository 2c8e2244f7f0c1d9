//! The systemd journal as a resource of its own (`loggate logs journal`): the entries of one
//! unit a grant names, read with `journalctl`, checked again here, redacted and streamed.
//!
//! Threat model and contract:
//!
//! - **The unit is hostile input.** It is a [`UnitName`] (systemd's rules, no glob character)
//!   before anything else happens; `journalctl --unit=` takes a glob when the text holds `*`,
//!   `?` or `[`, and none can reach it from a reader.
//! - **A fixed argument vector, no shell.** `journalctl` (an absolute path from the agent's own
//!   configuration) runs with the arguments [`journalctl_args`] builds, with an empty
//!   environment, its own process group and stdin closed. No text of the reader's becomes an
//!   option: the unit goes inside `--unit=…`, the start time is a number.
//! - **Entries of other units never leave the agent.** `journalctl --unit` matches more than the
//!   unit's own processes (coredumps, messages of other root processes about the unit), and a
//!   journal can hold anything; so every entry is checked again here ([`entry_unit_matches`]):
//!   it is served only when its trusted `_SYSTEMD_UNIT` field is the granted unit, or when it
//!   comes from systemd itself (`_PID` 1) and its `UNIT` field is the granted unit (systemd's
//!   own "Started …", "… failed" messages about the unit). A field given more than once, or in
//!   an unexpected shape, does not match: fail closed.
//! - **Bounded.** A JSON line longer than [`max_json_line`] is skipped (counted as cut); each
//!   output line is cut at `limits.max_line_bytes` by the redaction pipeline; memory does not
//!   grow with the journal.
//! - **The child never outlives its stream.** When the stream ends (end of the journal,
//!   revocation, expiry, the client leaving, the agent stopping) its process group is killed
//!   and reaped; `kill_on_drop` covers every other way out. A `SIGKILL`ed agent cannot kill it:
//!   a following `journalctl` then ends at its next write, on the closed pipe.
//! - **Not a bypass read, and nothing else hidden.** The journal files may lie beneath the
//!   protected roots; the child is excluded from the bypass audit by its pid from before its
//!   `exec` (a pipe handshake) until it has exited, and reported again before it is reaped
//!   (see [`crate::bypass::ChildExclusions`]). An exclusion that fails over-reports.
//!
//! Output: one line per entry (a multi-line message gives one line per message line, each with
//! the same prefix), `2026-12-05T02:30:00.123456Z web-1 nginx.service[1234]: message`: the
//! entry's time in UTC with microseconds, the agent id, the unit and the entry's `_PID`
//! (`systemd[1]` for systemd's own messages about the unit). `--grep` matches the redacted line.

use crate::bypass::{ChildExclusion, ChildExclusions};
use crate::gate::{
    candidates, rank, resolve_profile, Denial, DenialCode, GateContext, Profile, Withdrawal,
};
use crate::stream::{ChunkSink, EndReason, Finished, GrantStatus, GrepBuckets, Queued, CHUNK};
use loggate_core::grant::{UnitName, VerifiedGrant};
use loggate_core::identity::Identity;
use loggate_redact::{Counts, Pipeline};
use regex::bytes::Regex;
use serde::Deserialize;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tonic::Status;

/// Where `journalctl` is when the configuration does not say.
pub const DEFAULT_JOURNALCTL: &str = "/usr/bin/journalctl";

/// The `[journal]` section of the agent's configuration.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalFile {
    /// The `journalctl` binary (absolute; default [`DEFAULT_JOURNALCTL`]).
    #[serde(default)]
    journalctl: Option<PathBuf>,
    /// A journal folder to read instead of the system journal (`journalctl --directory`);
    /// relative to the configuration's folder.
    #[serde(default)]
    directory: Option<PathBuf>,
}

/// The validated `[journal]` section.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub journalctl: PathBuf,
    pub directory: Option<PathBuf>,
}

impl JournalFile {
    /// Checks the section: `journalctl` must be an absolute path (the agent never searches
    /// `PATH`), `directory` a folder name without NUL. Neither is looked at on disk here: an
    /// agent on a host without the journal still starts, and a journal read then fails with a
    /// clear error.
    pub fn validate(self, base: &Path) -> anyhow::Result<JournalConfig> {
        let journalctl = self
            .journalctl
            .unwrap_or_else(|| PathBuf::from(DEFAULT_JOURNALCTL));
        if !journalctl.is_absolute() {
            anyhow::bail!(
                "journal.journalctl: {} must be an absolute path (the agent does not search PATH)",
                journalctl.display()
            );
        }
        let directory = self.directory.map(|d| base.join(d));
        if let Some(d) = &directory {
            if d.to_str().is_none_or(|s| s.contains('\0')) {
                anyhow::bail!("journal.directory: {} must be valid UTF-8", d.display());
            }
        }
        Ok(JournalConfig {
            journalctl,
            directory,
        })
    }
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            journalctl: PathBuf::from(DEFAULT_JOURNALCTL),
            directory: None,
        }
    }
}

/// The resource name of a journal read in the audit stream and the stream's start:
/// `journal:<unit>`.
pub fn resource_name(unit: &UnitName) -> String {
    format!("journal:{unit}")
}

/// The arguments every `journalctl` run starts with: fixed, and nothing of the reader's but a
/// checked unit name (inside `--unit=`).
fn base_args(unit: &UnitName, directory: Option<&Path>) -> Vec<String> {
    let mut args = vec![
        "--output=json".to_string(),
        "--output-fields=MESSAGE,_SYSTEMD_UNIT,UNIT,_PID".to_string(),
        // Fields over 4 KiB come as null without it; the agent bounds lines itself.
        "--all".to_string(),
        "--no-pager".to_string(),
        "--quiet".to_string(),
        format!("--unit={unit}"),
    ];
    if let Some(d) = directory {
        args.push(format!("--directory={}", d.display()));
    }
    args
}

/// A time for `--since`/`--until`: `@seconds.microseconds` (journalctl takes the fraction).
fn at(micros: u64) -> String {
    format!("@{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// The arguments of the stream's `journalctl`: [`base_args`], and the start (µs) as a number.
pub fn journalctl_args(
    unit: &UnitName,
    directory: Option<&Path>,
    since_micros: Option<u64>,
    follow: bool,
) -> Vec<String> {
    let mut args = base_args(unit, directory);
    if let Some(us) = since_micros {
        args.push(format!("--since={}", at(us)));
    }
    if follow {
        args.push("--follow".to_string());
        // Following from the start, or from now with nothing before.
        args.push(if since_micros.is_some() {
            "--lines=all".to_string()
        } else {
            "--lines=0".to_string()
        });
    }
    args
}

/// The arguments of the look-back before a start (µs): the unit's entries up to it, newest
/// first ([`prime_before`]).
fn prime_args(unit: &UnitName, directory: Option<&Path>, until_micros: u64) -> Vec<String> {
    let mut args = base_args(unit, directory);
    args.push(format!("--until={}", at(until_micros)));
    args.push("--reverse".to_string());
    args
}

/// The longest JSON line read from `journalctl`: room for a `max_line`-byte message escaped
/// (up to 6 bytes per byte as `\u00XX`, or 4 as a byte array's `255,`) and its other fields.
pub fn max_json_line(max_line: usize) -> usize {
    max_line.saturating_mul(6).saturating_add(16 * 1024)
}

/// One journal entry as `journalctl --output=json` writes it: each field a string, an array
/// of bytes (binary or not UTF-8), an array of those (a field given more than once), or null.
type Entry = serde_json::Map<String, serde_json::Value>;

/// A field holding exactly one value, as bytes; `None` when absent, null, repeated or of
/// another shape.
fn single_value(entry: &Entry, name: &str) -> Option<Vec<u8>> {
    match entry.get(name)? {
        serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect(),
        _ => None,
    }
}

/// Whether an entry belongs to `unit` (see the module's contract): its own processes'
/// (`_SYSTEMD_UNIT`), or systemd's own message about it (`_PID` 1 and `UNIT`).
pub fn entry_unit_matches(entry: &Entry, unit: &UnitName) -> bool {
    let is =
        |field: &str| single_value(entry, field).is_some_and(|v| v == unit.as_str().as_bytes());
    is("_SYSTEMD_UNIT") || (single_value(entry, "_PID").as_deref() == Some(b"1") && is("UNIT"))
}

/// At most this many lines are served of one entry; the rest are cut (`lines_cut`). One
/// entry's text is attacker-controlled (a native-protocol sender keeps its newlines): without
/// a bound, 400 KB of `\n` became 11 MB of prefixed lines, past the client's message limit.
pub const MAX_ENTRY_LINES: usize = 4096;

/// One entry as it is served (before redaction).
#[derive(Debug)]
pub struct EntryText {
    /// The entry's `__REALTIME_TIMESTAMP` (µs since the epoch).
    pub micros: u64,
    /// Its lines, each with the prefix and ending in `\n`: at most [`MAX_ENTRY_LINES`] and
    /// about `max_bytes` (a line is added whole while the text is under `max_bytes`).
    pub lines: Vec<u8>,
    /// Message lines left out by those bounds.
    pub lines_cut: u64,
    /// The message line holding its last private-key `BEGIN`/`END` marker, with its `\n`
    /// (what primes the redactor for a stream that starts after this entry).
    pub key_marker_line: Option<Vec<u8>>,
}

/// The lines one entry is served as (see [`EntryText`]); `None` when the entry does not belong
/// to `unit` or has no usable time. `max_bytes` bounds the text one entry can produce (the
/// stream passes [`max_json_line`]`(max_line)`, what the entry's JSON itself could hold).
pub fn entry_lines(
    entry: &Entry,
    unit: &UnitName,
    agent: &str,
    max_bytes: usize,
) -> Option<EntryText> {
    if !entry_unit_matches(entry, unit) {
        return None;
    }
    let micros: u64 = single_value(entry, "__REALTIME_TIMESTAMP")
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())?;
    let at = UNIX_EPOCH.checked_add(Duration::from_micros(micros))?;
    let time = humantime::format_rfc3339_micros(at);
    let pid = single_value(entry, "_PID")
        .filter(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit))
        .map(|p| String::from_utf8_lossy(&p).into_owned());
    let source = match pid.as_deref() {
        Some("1")
            if single_value(entry, "_SYSTEMD_UNIT").as_deref()
                != Some(unit.as_str().as_bytes()) =>
        {
            "systemd[1]".to_string()
        }
        Some(pid) => format!("{unit}[{pid}]"),
        None => unit.to_string(),
    };
    let message = single_value(entry, "MESSAGE").unwrap_or_default();
    let prefix = format!("{time} {agent} {source}: ");
    let mut out = Vec::with_capacity(message.len().min(max_bytes) + 64);
    let (mut served, mut lines_cut) = (0usize, 0u64);
    for line in message.split(|b| *b == b'\n') {
        if served >= MAX_ENTRY_LINES || out.len() >= max_bytes {
            lines_cut += 1;
            continue;
        }
        served += 1;
        out.extend_from_slice(prefix.as_bytes());
        out.extend(line.iter().copied().filter(|b| *b != b'\r'));
        out.push(b'\n');
    }
    Some(EntryText {
        micros,
        lines: out,
        lines_cut,
        key_marker_line: key_marker_line(&message),
    })
}

/// The line of `message` that holds its last private-key marker, with a `\n`.
fn key_marker_line(message: &[u8]) -> Option<Vec<u8>> {
    let m = loggate_redact::last_private_key_marker(message)?;
    let from = message[..m]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let to = message[m..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(message.len(), |i| m + i);
    let mut line = message[from..to].to_vec();
    line.push(b'\n');
    Some(line)
}

/// `data` in pieces of at most `max` bytes, cut after a newline where one is in reach.
pub fn pieces(data: &[u8], max: usize) -> Vec<&[u8]> {
    let max = max.max(1);
    let mut rest = data;
    let mut out = Vec::new();
    while rest.len() > max {
        let at = rest[..max]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(max, |i| i + 1);
        let (head, tail) = rest.split_at(at);
        out.push(head);
        rest = tail;
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// Why no grant serves a unit read: the best-ranked denial of the reader's grants (a grant
/// for this unit that fails closest to working first), as [`crate::gate::authorize`] does for a
/// path.
pub fn authorize_unit(
    ctx: &GateContext<'_>,
    reader: &Identity,
    unit: &UnitName,
    presented_token: Option<&str>,
    now: i64,
) -> Result<(VerifiedGrant, Profile), Denial> {
    let mut best: Option<(u8, Denial)> = None;
    for candidate in candidates(ctx, reader, presented_token)? {
        let about_this_unit = candidate
            .stored
            .as_ref()
            .is_some_and(|g| g.claims().units.iter().any(|u| u == unit.as_str()));
        let denial = match ctx
            .verifier
            .verify_for_use(&candidate.token, reader, ctx.audience, now)
        {
            Err(e) => {
                Denial::from_grant(e, candidate.stored.as_ref().map(|g| g.claims().jti.clone()))
            }
            Ok(grant) => {
                let id = Some(grant.id().to_string());
                if let Some(w) = ctx.grants.withdrawal(grant.id()) {
                    let by = match w {
                        Withdrawal::Revoked { by, .. } | Withdrawal::Dropped { by, .. } => by,
                    };
                    Denial {
                        code: DenialCode::GrantRevoked,
                        message: format!(
                            "grant {} was revoked by {by}; request a new one",
                            grant.id()
                        ),
                        grant_id: id,
                    }
                } else if !grant.covers_unit(unit) {
                    let covers = if grant.claims().units.is_empty() {
                        "no journal unit (it is a grant for files)".to_string()
                    } else {
                        grant.claims().units.join(", ")
                    };
                    Denial {
                        code: DenialCode::UnitNotCovered,
                        message: format!(
                            "grant {} covers {covers}, not the journal of {unit}; request a grant with --unit {unit}",
                            grant.id()
                        ),
                        grant_id: id,
                    }
                } else {
                    match resolve_profile(
                        &grant.claims().redaction,
                        ctx.profiles,
                        ctx.allow_raw,
                        ctx.agent,
                    ) {
                        Ok(profile) => return Ok((grant, profile)),
                        Err(message) => Denial {
                            code: DenialCode::ProfileUnavailable,
                            message,
                            grant_id: id,
                        },
                    }
                }
            }
        };
        // A grant for another unit or for files ranks like a grant for another path.
        let code = match denial.code {
            DenialCode::UnitNotCovered => DenialCode::PathNotCovered,
            c => c,
        };
        let r = rank(code, about_this_unit, candidate.presented);
        if best.as_ref().is_none_or(|(b, _)| r < *b) {
            best = Some((r, denial));
        }
    }
    Err(best.map(|(_, d)| d).unwrap_or_else(|| {
        Denial::new(
            DenialCode::NoGrant,
            format!("you hold no usable grant on agent {}", ctx.agent),
        )
    }))
}

/// A journal grep's charge to its reader's matching time across streams
/// (`limits.grep_seconds_per_subject_per_minute`), as a file grep is charged.
pub struct SubjectGrep {
    pub buckets: Arc<GrepBuckets>,
    pub subject: String,
}

/// Matching time spent before it is charged to the reader's bucket (as the file path does).
const SETTLE: Duration = Duration::from_millis(20);

/// Everything one journal stream needs.
pub struct JournalPlan {
    pub config: JournalConfig,
    pub unit: UnitName,
    pub agent: String,
    /// Where the reader asked to start (ms since the epoch; checked > 0 by the server).
    pub since_unix_ms: Option<i64>,
    pub follow: bool,
    pub profile: Profile,
    pub pattern: Option<Regex>,
    /// Time the pattern may spend matching over the whole stream.
    pub grep_budget: Duration,
    /// The reader's matching time across streams, charged as it is spent (grep only).
    pub subject_grep: Option<SubjectGrep>,
    pub max_line: usize,
    /// How much of the journal before the start is looked through for a private-key marker
    /// (`limits.tail_key_lookback_bytes`, counted in `journalctl`'s JSON bytes).
    pub key_lookback: u64,
    pub not_after: i64,
    /// Where its `journalctl` is excluded from the bypass audit.
    pub children: ChildExclusions,
}

/// Reads the rest of one line of at most `max` bytes (without its `\n`) into `buf`;
/// `Ok(false)` at the end of the input with nothing pending. A longer line is read to its end
/// and dropped: `buf` is then empty and `cut` set. Cancel-safe: what was read stays in `buf`
/// and `cut` (the caller clears both once it has taken a line), so a `select!` may drop it.
async fn read_bounded_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
    cut: &mut bool,
) -> std::io::Result<bool> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(!buf.is_empty() || *cut);
        }
        let (taken, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        let content = &available[..if done { taken - 1 } else { taken }];
        if !*cut {
            if buf.len() + content.len() > max {
                *cut = true;
                buf.clear();
            } else {
                buf.extend_from_slice(content);
            }
        }
        reader.consume(taken);
        if done {
            return Ok(true);
        }
    }
}

/// The longest a stream waits without looking at its grant: until its end by the wall clock,
/// and at most [`crate::stream::SAFETY_RECHECK`] (a step of the clock, a missed event).
fn wait_limit(not_after: i64) -> Duration {
    let left = not_after.saturating_sub(loggate_core::grant::unix_now());
    Duration::from_secs(u64::try_from(left).unwrap_or(0)).min(crate::stream::SAFETY_RECHECK)
}

/// Kills `journalctl`'s whole process group, waits (bounded) until it has exited, releases
/// its bypass exclusion, then reaps it: the pid is reported again only once the child cannot
/// open anything, and stops being its own only after that (see
/// [`crate::bypass::ChildExclusions`]). Blocks the calling thread (a stream's own).
fn end_child(run: &mut Journalctl, runtime: &tokio::runtime::Handle) {
    if let Some(pid) = run.child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals the process group the child leads
        // (spawned with `process_group(0)`, so its group id is its pid and the agent is not
        // in it); no memory is involved. The child is not reaped yet (we still hold it), so
        // its pid cannot have been reused.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = run.child.start_kill();
    if let Some(pidfd) = &run.pidfd {
        // Not gone within the bound (stuck in the kernel): released all the same, so that
        // it is reaped later with nothing excluded (over-reporting, never hiding).
        exited_unreaped(pidfd, Duration::from_secs(5));
    }
    if let Some(exclusion) = run.exclusion.take() {
        exclusion.release();
    }
    let child = &mut run.child;
    let _ = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), child.wait()).await });
}

/// Resolves once the agent is stopping (never, when nothing can stop it).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves on the grant store's next change (never, once the store is gone).
async fn notified(rx: &mut watch::Receiver<u64>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What a blocked read of `journalctl`'s output also waits on: the agent stopping, a
/// withdrawal, the client leaving, the grant's end by the clock. On any of them the read
/// returns `None` and the caller asks the sink whether the stream goes on (the sink sends the
/// cut's message).
struct Waits {
    stop: watch::Receiver<bool>,
    withdrawals: watch::Receiver<u64>,
    client: mpsc::Sender<Queued>,
    not_after: i64,
    runtime: tokio::runtime::Handle,
}

impl Waits {
    fn read_line<R: AsyncBufRead + Unpin>(
        &mut self,
        reader: &mut R,
        buf: &mut Vec<u8>,
        max: usize,
        cut: &mut bool,
    ) -> Option<std::io::Result<bool>> {
        let Waits {
            stop,
            withdrawals,
            client,
            not_after,
            runtime,
        } = self;
        let limit = wait_limit(*not_after);
        runtime.block_on(async {
            tokio::select! {
                biased;
                () = stopped(stop) => None,
                () = notified(withdrawals) => None,
                () = client.closed() => None,
                () = tokio::time::sleep(limit) => None,
                next = read_bounded_line(reader, buf, max, cut) => Some(next),
            }
        })
    }
}

/// `CAP_DAC_READ_SEARCH` (linux/capability.h): the one capability `journalctl` may keep.
const CAP_DAC_READ_SEARCH: libc::c_ulong = 2;

/// A running `journalctl`: the process, a pidfd to see it exit without reaping it, and its
/// exclusion from the bypass audit (see [`crate::bypass::ChildExclusions`]).
///
/// Fields drop in order: on an unexpected way out the exclusion goes first (over-reporting
/// at worst), before `kill_on_drop` hands the child to the runtime to be reaped.
struct Journalctl {
    exclusion: Option<ChildExclusion>,
    child: tokio::process::Child,
    /// `None` where the kernel has no `pidfd_open` (before 5.3): the exclusion is then
    /// released before the child is reaped, and an open still in flight may be over-reported.
    pidfd: Option<OwnedFd>,
}

/// A pipe, both ends close-on-exec: `(read, write)`.
fn cloexec_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2(2) writes two descriptors into the array it is given, which is ours.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// How long a starting `journalctl` waits for the agent to admit it (see [`admit_child`])
/// before it gives up and the read is refused. A free runtime worker admits it within
/// microseconds; a worker held in a synchronous wait (a release waiting up to 2 s for the
/// fanotify reader) delays it by as much.
const ADMIT_LIMIT: Duration = Duration::from_secs(5);

/// What the admitting task ([`admit_child`]) and the stream's thread (in
/// [`spawn_journalctl`]) share: the exclusion the task made, and whether the stream has
/// stopped waiting for one (`spawn` failed). Whoever comes second under the lock sees the
/// other's step, so an exclusion is either taken by the stream or never made.
#[derive(Default)]
struct Admission {
    exclusion: Option<ChildExclusion>,
    abandoned: bool,
}

/// The agent's side of the start handshake, a task of the runtime while `spawn` waits for the
/// `exec` on the stream's thread: awaits the child's pid (EOF: the child ended before it got
/// there), excludes it from the bypass audit and leaves the exclusion in `admission`, then
/// lets it exec whatever became of the exclusion (a failure is logged and over-reports; it
/// never stops the read). When the stream has already given up (`spawn` failed, e.g. the
/// child stopped waiting after [`ADMIT_LIMIT`]) it excludes nothing and sends no byte.
///
/// The task holds no thread while it waits: it runs on the runtime's workers, which no stream
/// blocks (streams run on the blocking pool), so a full blocking pool cannot hold a child's
/// start; a worker held in a synchronous wait delays it, and the child's own bound on its
/// wait (see [`spawn_journalctl`]) keeps that delay finite.
async fn admit_child(
    mut pid_from_child: tokio::net::unix::pipe::Receiver,
    go: OwnedFd,
    children: ChildExclusions,
    admission: Arc<std::sync::Mutex<Admission>>,
) {
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    let mut pid = [0u8; 4];
    let Ok(_) = pid_from_child.read_exact(&mut pid).await else {
        return;
    };
    let pid = libc::pid_t::from_ne_bytes(pid);
    let admitted = {
        let mut admission = admission
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if admission.abandoned {
            false
        } else {
            match u32::try_from(pid)
                .map_err(anyhow::Error::from)
                .and_then(|p| children.exclude(p))
            {
                Ok(exclusion) => admission.exclusion = Some(exclusion),
                Err(e) => tracing::warn!(
                    "journal read: journalctl (pid {pid}) could not be excluded from the bypass audit, so its opens of protected journal files may be reported as bypass reads: {e:#}"
                ),
            }
            true
        }
    };
    #[cfg(test)]
    tests::ADMITTED_ON
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((pid, std::thread::current().id(), admitted));
    if admitted {
        // One byte into an empty pipe: never blocks. Dropped without a byte on a panic above:
        // the child then ends instead of waiting.
        let _ = std::fs::File::from(go).write_all(&[1]);
    }
}

/// Starts `journalctl` with `args`: no shell, an empty environment, stdin closed, its own
/// process group, killed on drop; and, in the child before `exec`:
///
/// - `PR_SET_PDEATHSIG(SIGKILL)`: killed when the thread that spawned it ends, even when the
///   agent is `SIGKILL`ed (the stream's blocking thread lives as long as the stream);
/// - its ambient capabilities cleared (the agent's unit gives it `CAP_BPF`, `CAP_PERFMON`: a
///   large parser of journal files needs neither), `CAP_DAC_READ_SEARCH` raised again where
///   the agent holds it, since reading the system journal may rest on it;
/// - the bypass handshake: it writes its pid on one pipe and waits on another until the agent
///   has excluded that pid from the bypass audit ([`admit_child`]), so that none of its opens
///   of the journal files (beneath the protected roots on a packaged host) is reported as a
///   bypass read. Its pid is known only after `fork`, and `spawn` returns only after `exec`:
///   hence the pipe, read by a task of the runtime while `spawn` blocks this thread. The child
///   waits at most [`ADMIT_LIMIT`]: then it ends, `spawn` fails with
///   [`std::io::ErrorKind::TimedOut`] and the read is refused (fail closed). The bound is the
///   child's own, since no thread of the agent is sure to be free to enforce it: this one is
///   inside `spawn`, and the workers are what is late.
///
/// Must be awaited on the stream's own thread (`Handle::block_on` from the blocking pool,
/// never a runtime worker: `spawn` blocks until the `exec`) of a multi-thread runtime (the
/// admitting task runs on a worker meanwhile). On any other runtime it refuses at once
/// ([`std::io::ErrorKind::Unsupported`]): on a current-thread runtime the task could only run
/// on the thread `spawn` blocks, and every start would wait out the bound.
async fn spawn_journalctl(
    config: &JournalConfig,
    args: &[String],
    children: &ChildExclusions,
) -> std::io::Result<Journalctl> {
    spawn_journalctl_within(config, args, children, ADMIT_LIMIT).await
}

/// [`spawn_journalctl`] with the child's wait for its admission bounded by `admit_limit`.
async fn spawn_journalctl_within(
    config: &JournalConfig,
    args: &[String],
    children: &ChildExclusions,
    admit_limit: Duration,
) -> std::io::Result<Journalctl> {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if !multi_thread {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "journalctl is started only from a multi-thread tokio runtime (its start handshake runs on a runtime worker); this is a bug in the agent, report it",
        ));
    }
    let admit_ms = i64::try_from(admit_limit.as_millis()).unwrap_or(i64::MAX);
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    let sigkill = libc::c_ulong::try_from(libc::SIGKILL).unwrap_or(9);
    let clear_all = libc::c_ulong::try_from(libc::PR_CAP_AMBIENT_CLEAR_ALL).unwrap_or(4);
    let raise = libc::c_ulong::try_from(libc::PR_CAP_AMBIENT_RAISE).unwrap_or(2);
    let (pid_read, pid_write) = cloexec_pipe()?;
    let (go_read, go_write) = cloexec_pipe()?;
    let (pid_w, go_r, go_w) = (
        pid_write.as_raw_fd(),
        go_read.as_raw_fd(),
        go_write.as_raw_fd(),
    );
    let mut command = tokio::process::Command::new(&config.journalctl);
    command
        .args(args)
        .env_clear()
        .env("SYSTEMD_COLORS", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before `exec`, where only async-signal-safe
    // calls are allowed: it makes only the system calls prctl(2), getppid(2), getpid(2),
    // close(2), write(2), clock_gettime(2), poll(2), read(2) and _exit(2), allocates nothing
    // and takes no lock (`last_os_error` and `from_raw_os_error` build a plain value; the
    // timespec and pollfd are on its stack). The three descriptors are the child's copies of
    // pipes the parent keeps open until `spawn` returns.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sigkill, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died between fork and prctl: the signal will never come.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            if libc::prctl(libc::PR_CAP_AMBIENT, clear_all, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Fails (and is ignored) unless the agent holds it permitted and inheritable.
            let _ = libc::prctl(libc::PR_CAP_AMBIENT, raise, CAP_DAC_READ_SEARCH, 0, 0);
            // Only the agent's copy of the go pipe's writing end is left: if the agent gives
            // up without a byte, the read below sees the end of the pipe.
            libc::close(go_w);
            let pid = libc::getpid().to_ne_bytes();
            if libc::write(pid_w, pid.as_ptr().cast(), pid.len()) != 4 {
                return Err(std::io::Error::last_os_error());
            }
            // The go byte, within `admit_ms` of now (the monotonic clock: a step of the wall
            // clock neither shortens nor stretches it); then ETIMEDOUT ends the child.
            // `time_t` and `c_long` are `i64` here but `i32` on some 32-bit targets.
            #[allow(clippy::useless_conversion)]
            let now_ms = || {
                let mut now = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
                i64::from(now.tv_sec)
                    .saturating_mul(1000)
                    .saturating_add(i64::from(now.tv_nsec) / 1_000_000)
            };
            let deadline = now_ms().saturating_add(admit_ms);
            let mut go = 0u8;
            loop {
                let left = deadline.saturating_sub(now_ms());
                if left <= 0 {
                    return Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
                }
                let mut ready = libc::pollfd {
                    fd: go_r,
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = libc::c_int::try_from(left).unwrap_or(libc::c_int::MAX);
                match libc::poll(&mut ready, 1, ms) {
                    0 => return Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT)),
                    n if n > 0 => match libc::read(go_r, std::ptr::addr_of_mut!(go).cast(), 1) {
                        1 => return Ok(()),
                        0 => return Err(std::io::Error::from_raw_os_error(libc::ECANCELED)),
                        _ if std::io::Error::last_os_error().kind()
                            == std::io::ErrorKind::Interrupted => {}
                        _ => return Err(std::io::Error::last_os_error()),
                    },
                    _ if std::io::Error::last_os_error().kind()
                        == std::io::ErrorKind::Interrupted => {}
                    _ => return Err(std::io::Error::last_os_error()),
                }
            }
        });
    }
    // Made non-blocking for the task; only the agent's reading end changes (the child writes
    // on the other end, a file description of its own).
    let pid_read = tokio::net::unix::pipe::Receiver::from_owned_fd(pid_read)?;
    let admission = Arc::new(std::sync::Mutex::new(Admission::default()));
    // Not awaited: on success the child exec'd, so the task had left its exclusion in
    // `admission` before sending the byte; on failure the stream stops waiting for it.
    tokio::spawn(admit_child(
        pid_read,
        go_write,
        children.clone(),
        admission.clone(),
    ));
    let spawned = command.spawn();
    // The child's copy is gone (exec'd or ended): a child that never wrote its pid now gives
    // the task the end of the pipe.
    drop(pid_write);
    drop(go_read);
    let exclusion = {
        let mut admission = admission
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        admission.abandoned = spawned.is_err();
        admission.exclusion.take()
    };
    // A child that failed to exec (or stopped waiting) was reaped inside `spawn`: its pid is
    // free, so its exclusion goes at once, without waiting for the fanotify reader (a moment
    // in which only a process given that very pid at once could be hidden).
    let child = match spawned {
        Ok(child) => child,
        Err(e) => {
            if let Some(exclusion) = exclusion {
                #[cfg(test)]
                tests::REAPED_PID.with(|p| p.set(Some(exclusion.pid())));
                exclusion.release_reaped();
            }
            if e.raw_os_error() == Some(libc::ETIMEDOUT) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "it was not admitted within {:.1} s (the agent's runtime workers were busy)",
                        admit_limit.as_secs_f32()
                    ),
                ));
            }
            return Err(e);
        }
    };
    let pid = child.id().and_then(|p| libc::pid_t::try_from(p).ok());
    // Our own child, not yet reaped: the pid is its own, and nobody else's.
    let exclusion =
        exclusion.filter(|e| pid.is_some_and(|p| u32::try_from(p).ok() == Some(e.pid())));
    let pidfd = pid.and_then(|p| {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1; the
        // pid is our unreaped child's, so the descriptor names exactly it.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p, 0) };
        let fd = libc::c_int::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: a new descriptor that only we own.
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    });
    Ok(Journalctl {
        child,
        pidfd,
        exclusion,
    })
}

/// Waits until the child the pidfd names has exited (it stays unreaped), at most `limit`;
/// whether it has. Blocks the calling thread (a stream's own).
fn exited_unreaped(pidfd: &OwnedFd, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        let mut poll = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd of ours, alive for the call.
        let n = unsafe { libc::poll(&mut poll, 1, ms) };
        if n > 0 {
            return true;
        }
        if n == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// Whether a `journalctl` run reads on after a line.
enum Flow {
    More,
    Done,
}

/// Runs `journalctl` with `args` and hands each JSON line to `on_line` (`None` for a line
/// over [`max_json_line`], dropped unread), until the output ends, `on_line` is done or fails,
/// or the stream must end (`sink.check`). The child is killed and reaped on every way out;
/// a non-zero exit at the end of its output is a read error (sent to the client).
fn each_line(
    plan: &JournalPlan,
    args: &[String],
    sink: &mut dyn ChunkSink,
    waits: &mut Waits,
    mut on_line: impl FnMut(&mut dyn ChunkSink, Option<&[u8]>) -> Result<Flow, EndReason>,
) -> Result<(), EndReason> {
    let runtime = waits.runtime.clone();
    let mut run = match runtime.block_on(spawn_journalctl(&plan.config, args, &plan.children)) {
        Ok(c) => c,
        Err(e) => {
            let next = match e.kind() {
                std::io::ErrorKind::TimedOut => "retry the read, and report it if it recurs",
                _ => "check [journal] journalctl in the agent's configuration",
            };
            let message = format!(
                "cannot run {} to read the journal: {e}; {next}",
                plan.config.journalctl.display()
            );
            sink.fail(Status::internal(message.clone()));
            return Err(EndReason::ReadError(message));
        }
    };
    // Its first 4 KiB kept for an error message; the rest read and dropped, so it never blocks.
    let stderr_task = run.child.stderr.take().map(|mut err| {
        runtime.spawn(async move {
            let mut kept = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                let room = 4096usize.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
            String::from_utf8_lossy(&kept).into_owned()
        })
    });
    let outcome = match run.child.stdout.take() {
        None => Err(EndReason::ReadError(
            "journalctl gave no output pipe".into(),
        )),
        Some(stdout) => {
            let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, stdout);
            let max_json = max_json_line(plan.max_line);
            let (mut json, mut line_cut) = (Vec::new(), false);
            loop {
                match waits.read_line(&mut reader, &mut json, max_json, &mut line_cut) {
                    None => {
                        if let Err(reason) = sink.check() {
                            break Err(reason);
                        }
                        continue;
                    }
                    Some(Err(e)) => {
                        break Err(EndReason::ReadError(format!(
                            "reading journalctl's output: {e}"
                        )))
                    }
                    Some(Ok(false)) => break Ok(true),
                    Some(Ok(true)) => {}
                }
                // Looked at between lines as well: a busy journal is cut as promptly as an
                // idle one.
                if let Err(reason) = sink.check() {
                    break Err(reason);
                }
                // Taken whole: a wait above that ends early leaves a partial line where it is.
                let (line, was_cut) = (std::mem::take(&mut json), std::mem::take(&mut line_cut));
                match on_line(sink, (!was_cut).then_some(line.as_slice())) {
                    Ok(Flow::More) => {}
                    Ok(Flow::Done) => break Ok(false),
                    Err(reason) => break Err(reason),
                }
            }
        }
    };
    if matches!(outcome, Ok(true)) {
        // The output is over: let journalctl say how it ended before it is killed (it stays
        // unreaped until its bypass exclusion is released, in `end_child`).
        match &run.pidfd {
            Some(pidfd) => {
                exited_unreaped(pidfd, Duration::from_secs(2));
            }
            None => {
                // No way to see it exit without reaping it: released first (over-reporting
                // an open in flight at worst), so that no reaped pid stays excluded.
                if let Some(exclusion) = run.exclusion.take() {
                    exclusion.release();
                }
                let _ = runtime.block_on(tokio::time::timeout(
                    Duration::from_secs(2),
                    run.child.wait(),
                ));
            }
        }
    }
    end_child(&mut run, &runtime);
    let stderr = match stderr_task {
        Some(t) => runtime.block_on(t).unwrap_or_default(),
        None => String::new(),
    };
    match outcome {
        Ok(true) => match run.child.try_wait() {
            Ok(Some(status)) if !status.success() && status.code().is_some() => {
                let said = stderr.lines().next().unwrap_or("").trim();
                let message = format!("journalctl failed ({status}): {said}");
                sink.fail(Status::internal(format!(
                    "reading the journal failed: {message}"
                )));
                Err(EndReason::ReadError(message))
            }
            _ => Ok(()),
        },
        Ok(false) => Ok(()),
        Err(EndReason::ReadError(e)) => {
            sink.fail(Status::internal(format!("reading the journal failed: {e}")));
            Err(EndReason::ReadError(e))
        }
        Err(other) => Err(other),
    }
}

/// Where a stream starts, in µs since the epoch: `--since`, or now for `--follow` (the
/// entries before it are not served, so the redactor must learn whether it starts inside a
/// private-key block); `None` from the journal's beginning.
fn start_micros(since_unix_ms: Option<i64>, follow: bool) -> Option<u64> {
    match since_unix_ms {
        Some(ms) => Some(u64::try_from(ms).unwrap_or(0).saturating_mul(1000)),
        None if follow => Some(
            u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_micros(),
            )
            .unwrap_or(u64::MAX),
        ),
        None => None,
    }
}

/// Primes the redactor for a stream that starts at `start` (µs): the unit's entries before it
/// are read newest first (`journalctl --reverse --until`) until one holds a private-key
/// `BEGIN`/`END` marker, and that message line alone is run through the redactor (only a
/// marker changes its state), as the file `tail` does. `Ok(true)` when `plan.key_lookback`
/// JSON bytes held no marker: the start is then taken as outside a key (a key is shorter than
/// the look-back), and the audit record says the look-back ran out.
fn prime_before(
    plan: &JournalPlan,
    start: u64,
    sink: &mut dyn ChunkSink,
    waits: &mut Waits,
    pipeline: &mut Pipeline,
) -> Result<bool, EndReason> {
    let args = prime_args(&plan.unit, plan.config.directory.as_deref(), start);
    let max_json = max_json_line(plan.max_line);
    let (mut looked, mut exhausted) = (0u64, false);
    each_line(plan, &args, sink, waits, |_, line| {
        let len = line.map_or(max_json, <[u8]>::len).saturating_add(1);
        looked = looked.saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
        let marker = line
            .and_then(|l| serde_json::from_slice::<Entry>(l).ok())
            .and_then(|entry| entry_lines(&entry, &plan.unit, &plan.agent, max_json))
            .filter(|text| text.micros < start)
            .and_then(|text| text.key_marker_line);
        if let Some(line) = marker {
            pipeline.prime(&line);
            return Ok(Flow::Done);
        }
        if looked >= plan.key_lookback {
            exhausted = true;
            return Ok(Flow::Done);
        }
        Ok(Flow::More)
    })?;
    Ok(exhausted)
}

/// Runs `journalctl` for `plan` and streams its entries into `sink` (the same budgeted queue
/// file streams use) until the journal ends (not following), the grant is withdrawn or
/// expires, the client leaves or the agent stops. `client` is a sender of the sink's channel,
/// only waited on for the client leaving. Runs on a blocking thread (the redaction and
/// matching work is done inline) driving its waits through `runtime`.
pub fn run(
    plan: JournalPlan,
    sink: &mut dyn ChunkSink,
    client: mpsc::Sender<Queued>,
    grants: Arc<dyn GrantStatus>,
    stop: watch::Receiver<bool>,
    runtime: tokio::runtime::Handle,
) -> Finished {
    let mut waits = Waits {
        stop,
        withdrawals: grants.subscribe(),
        client,
        not_after: plan.not_after,
        runtime,
    };
    let mut pipeline = Pipeline::new(plan.profile.redactor(), plan.max_line);
    let mut finished = Finished {
        reason: EndReason::Eof,
        bytes: 0,
        bytes_read: 0,
        counts: Counts::default(),
        pattern_time: Duration::ZERO,
        key_lookback_exhausted: false,
    };
    let mut charged = Duration::ZERO;
    let result = serve(
        &plan,
        sink,
        &mut waits,
        &mut pipeline,
        &mut finished,
        &mut charged,
    );
    if let Some(g) = &plan.subject_grep {
        g.buckets
            .charge(&g.subject, finished.pattern_time.saturating_sub(charged));
    }
    finished.reason = match result {
        Ok(()) => EndReason::Eof,
        Err(reason) => reason,
    };
    finished.bytes = sink.bytes();
    finished.counts.redactions = pipeline.counts().redactions.clone();
    finished.counts.lines_withheld = pipeline.counts().lines_withheld;
    finished.counts.lines_cut += pipeline.counts().lines_cut;
    finished
}

fn serve(
    plan: &JournalPlan,
    sink: &mut dyn ChunkSink,
    waits: &mut Waits,
    pipeline: &mut Pipeline,
    finished: &mut Finished,
    charged: &mut Duration,
) -> Result<(), EndReason> {
    sink.check()?;
    let start = start_micros(plan.since_unix_ms, plan.follow);
    if let Some(start) = start {
        if pipeline.removes_private_keys() {
            finished.key_lookback_exhausted = prime_before(plan, start, sink, waits, pipeline)?;
        }
    }
    let args = journalctl_args(
        &plan.unit,
        plan.config.directory.as_deref(),
        start,
        plan.follow,
    );
    let max_json = max_json_line(plan.max_line);
    let mut out = Vec::new();
    each_line(plan, &args, sink, waits, |sink, line| {
        let Some(line) = line else {
            finished.counts.lines_cut += 1;
            return Ok(Flow::More);
        };
        let Some(text) = serde_json::from_slice::<Entry>(line)
            .ok()
            .and_then(|entry| entry_lines(&entry, &plan.unit, &plan.agent, max_json))
        else {
            return Ok(Flow::More);
        };
        // journalctl's `--since` is looked at again to the microsecond.
        if start.is_some_and(|s| text.micros < s) {
            return Ok(Flow::More);
        }
        finished.counts.lines_cut += text.lines_cut;
        out.clear();
        let pattern_time = &mut finished.pattern_time;
        let mut keep = |line: &[u8]| match &plan.pattern {
            None => true,
            Some(p) => {
                let started = Instant::now();
                let matched = p.is_match(line);
                *pattern_time += started.elapsed();
                matched
            }
        };
        pipeline.push(&text.lines, &mut keep, &mut out);
        if finished.pattern_time > plan.grep_budget {
            sink.fail(Status::aborted(format!(
                "the grep pattern used up its time budget of {} on agent {}; the stream was cut; use a simpler pattern or a later --since",
                humantime::format_duration(plan.grep_budget),
                plan.agent
            )));
            return Err(EndReason::BudgetExceeded);
        }
        if let Some(g) = &plan.subject_grep {
            let due = finished.pattern_time.saturating_sub(*charged);
            if due >= SETTLE {
                *charged = finished.pattern_time;
                if g.buckets.charge(&g.subject, due) <= 0.0 {
                    sink.fail(Status::aborted(format!(
                        "you used up your grep time on agent {} ({} s of matching per minute across your streams); the stream was cut; try again later with a simpler pattern or a later --since",
                        plan.agent,
                        g.buckets.per_minute().as_secs()
                    )));
                    return Err(EndReason::BudgetExceeded);
                }
            }
        }
        for piece in pieces(&out, CHUNK) {
            sink.send(crate::frames::Chunk::copy_of(piece))?;
        }
        Ok(Flow::More)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bypass::Seen;

    thread_local! {
        /// The pid of the child whose `exec` failed in `spawn_journalctl`, on this thread.
        pub(super) static REAPED_PID: std::cell::Cell<Option<u32>> =
            const { std::cell::Cell::new(None) };
    }

    /// Each child whose pid the admitting task read: the pid, the thread the task ran on,
    /// and whether it was admitted (`false`: the stream had already given up on it).
    pub(super) static ADMITTED_ON: std::sync::Mutex<
        Vec<(libc::pid_t, std::thread::ThreadId, bool)>,
    > = std::sync::Mutex::new(Vec::new());

    /// What the admitting task recorded for `pid` (see [`ADMITTED_ON`]).
    fn admissions_of(pid: libc::pid_t) -> Vec<(std::thread::ThreadId, bool)> {
        ADMITTED_ON
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, ..)| *p == pid)
            .map(|(_, thread, admitted)| (*thread, *admitted))
            .collect()
    }

    /// What the admitting task recorded on `thread`.
    fn admissions_on(thread: std::thread::ThreadId) -> Vec<(libc::pid_t, bool)> {
        ADMITTED_ON
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t, _)| *t == thread)
            .map(|(pid, _, admitted)| (*pid, *admitted))
            .collect()
    }

    /// A one-worker runtime and its worker's thread id (a task spawned on it runs there).
    fn one_worker() -> (tokio::runtime::Runtime, std::thread::ThreadId) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let worker = runtime
            .block_on(runtime.spawn(async { std::thread::current().id() }))
            .unwrap();
        (runtime, worker)
    }

    /// Holds the runtime's (one) worker in a synchronous sleep of `busy`, from when this
    /// returns.
    fn hold_the_worker(runtime: &tokio::runtime::Runtime, busy: Duration) {
        let (started, running) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let _ = started.send(());
            std::thread::sleep(busy);
        });
        running
            .recv_timeout(Duration::from_secs(5))
            .expect("the worker took the blocking task");
    }

    fn sleeper() -> JournalConfig {
        JournalConfig {
            journalctl: PathBuf::from("/bin/sleep"),
            directory: None,
        }
    }

    /// Ends a child started by a test without a fanotify reader: released as reaped (no
    /// wait for a reader), killed, reaped.
    fn discard(mut run: Journalctl, runtime: &tokio::runtime::Runtime) {
        if let Some(exclusion) = run.exclusion.take() {
            exclusion.release_reaped();
        }
        let _ = run.child.start_kill();
        let _ = runtime.block_on(run.child.wait());
    }

    fn entry(json: &str) -> Entry {
        serde_json::from_str(json).unwrap()
    }

    fn nginx() -> UnitName {
        UnitName::new("nginx.service").unwrap()
    }

    #[test]
    fn journalctl_runs_with_a_fixed_argument_vector() {
        let args = journalctl_args(
            &nginx(),
            Some(Path::new("/tmp/j")),
            Some(1_700_000_000_999_001),
            true,
        );
        assert_eq!(
            args,
            [
                "--output=json",
                "--output-fields=MESSAGE,_SYSTEMD_UNIT,UNIT,_PID",
                "--all",
                "--no-pager",
                "--quiet",
                "--unit=nginx.service",
                "--directory=/tmp/j",
                // To the microsecond, not the whole second (review finding 2).
                "--since=@1700000000.999001",
                "--follow",
                "--lines=all",
            ]
        );
        let args = journalctl_args(&nginx(), None, None, true);
        assert_eq!(
            &args[5..],
            ["--unit=nginx.service", "--follow", "--lines=0"]
        );
        assert_eq!(journalctl_args(&nginx(), None, None, false).len(), 6);
        assert_eq!(
            &prime_args(&nginx(), None, 1_700_000_000_000_042)[5..],
            [
                "--unit=nginx.service",
                "--until=@1700000000.000042",
                "--reverse"
            ]
        );
    }

    #[test]
    fn only_entries_of_the_granted_unit_are_served() {
        let unit = nginx();
        let own = entry(
            r#"{"__REALTIME_TIMESTAMP":"1796436938732502","_SYSTEMD_UNIT":"nginx.service","_PID":"1234","MESSAGE":"hello"}"#,
        );
        assert_eq!(
            String::from_utf8(entry_lines(&own, &unit, "web-1", 1 << 20).unwrap().lines).unwrap(),
            "2026-12-05T02:15:38.732502Z web-1 nginx.service[1234]: hello\n"
        );
        let about = entry(
            r#"{"__REALTIME_TIMESTAMP":"1796436938732502","_SYSTEMD_UNIT":"init.scope","UNIT":"nginx.service","_PID":"1","MESSAGE":"Started nginx."}"#,
        );
        assert!(
            String::from_utf8(entry_lines(&about, &unit, "web-1", 1 << 20).unwrap().lines)
                .unwrap()
                .ends_with(" web-1 systemd[1]: Started nginx.\n")
        );
        for other in [
            // Another unit.
            r#"{"__REALTIME_TIMESTAMP":"1","_SYSTEMD_UNIT":"sshd.service","_PID":"7","MESSAGE":"x"}"#,
            // Another unit's process claiming UNIT= (only systemd's own count).
            r#"{"__REALTIME_TIMESTAMP":"1","_SYSTEMD_UNIT":"sshd.service","UNIT":"nginx.service","_PID":"7","MESSAGE":"x"}"#,
            // A field given twice: not one value, not a match.
            r#"{"__REALTIME_TIMESTAMP":"1","_SYSTEMD_UNIT":["nginx.service","sshd.service"],"_PID":"7","MESSAGE":"x"}"#,
            // A prefix or a glob-looking name is not the unit.
            r#"{"__REALTIME_TIMESTAMP":"1","_SYSTEMD_UNIT":"nginx.service.d","_PID":"7","MESSAGE":"x"}"#,
            r#"{"__REALTIME_TIMESTAMP":"1","_PID":"7","MESSAGE":"x"}"#,
        ] {
            assert!(
                entry_lines(&entry(other), &unit, "web-1", 1 << 20).is_none(),
                "{other}"
            );
        }
    }

    #[test]
    fn binary_and_multi_line_messages_become_prefixed_lines() {
        let unit = nginx();
        // "a\nb\r" and a byte that is not UTF-8, as journalctl writes a binary field.
        let e = entry(
            r#"{"__REALTIME_TIMESTAMP":"0","_SYSTEMD_UNIT":"nginx.service","MESSAGE":[97,10,98,13,255]}"#,
        );
        let lines = entry_lines(&e, &unit, "h", 1 << 20).unwrap().lines;
        assert_eq!(
            lines,
            b"1970-01-01T00:00:00.000000Z h nginx.service: a\n1970-01-01T00:00:00.000000Z h nginx.service: b\xff\n"
        );
    }

    /// Review finding 1: 200,000 newlines gave 200,001 prefixed lines (11 MB in one message).
    #[test]
    fn one_entry_yields_a_bounded_text_and_counts_the_rest_as_cut() {
        let unit = nginx();
        let message: Vec<String> = (0..200_000).map(|_| "10".to_string()).collect();
        let json = format!(
            r#"{{"__REALTIME_TIMESTAMP":"0","_SYSTEMD_UNIT":"nginx.service","MESSAGE":[{}]}}"#,
            message.join(",")
        );
        let text = entry_lines(&entry(&json), &unit, "h", max_json_line(64 * 1024)).unwrap();
        let served = text.lines.iter().filter(|b| **b == b'\n').count();
        assert!(served <= MAX_ENTRY_LINES, "{served}");
        assert_eq!(u64::try_from(served).unwrap() + text.lines_cut, 200_001);
        assert!(text.lines.len() <= max_json_line(64 * 1024) + 64 * 1024);
        // The byte bound holds for long lines too.
        let long = format!(
            r#"{{"__REALTIME_TIMESTAMP":"0","_SYSTEMD_UNIT":"nginx.service","MESSAGE":"{}"}}"#,
            format!("{}\\n", "x".repeat(1000)).repeat(100)
        );
        let text = entry_lines(&entry(&long), &unit, "h", 10_000).unwrap();
        assert!(text.lines.len() < 10_000 + 1100, "{}", text.lines.len());
        assert!(text.lines_cut > 80, "{}", text.lines_cut);
    }

    #[test]
    fn output_goes_in_pieces_no_larger_than_a_chunk_cut_after_newlines() {
        let data: Vec<u8> = b"0123456789\n".repeat(20_000);
        let parts = pieces(&data, CHUNK);
        assert!(parts.iter().all(|p| p.len() <= CHUNK && p.ends_with(b"\n")));
        assert_eq!(parts.concat(), data);
        let one_line = vec![b'x'; 3 * CHUNK + 5];
        let parts = pieces(&one_line, CHUNK);
        assert_eq!(parts.len(), 4);
        assert!(parts.iter().all(|p| p.len() <= CHUNK));
        assert!(pieces(b"", CHUNK).is_empty());
    }

    #[test]
    fn the_line_holding_the_last_key_marker_is_found() {
        let unit = nginx();
        let e = entry(
            r#"{"__REALTIME_TIMESTAMP":"5","_SYSTEMD_UNIT":"nginx.service","MESSAGE":"key:\n-----BEGIN PRIVATE KEY-----\nMIIE"}"#,
        );
        let text = entry_lines(&e, &unit, "h", 1 << 20).unwrap();
        assert_eq!(
            text.key_marker_line.as_deref(),
            Some(&b"-----BEGIN PRIVATE KEY-----\n"[..])
        );
        assert_eq!(text.micros, 5);
    }

    #[tokio::test]
    async fn a_line_over_the_bound_is_dropped_whole_and_the_next_one_read() {
        let input: &[u8] = b"short\nxxxxxxxxxxxxxxxxxxxx\nnext\n";
        let mut reader = tokio::io::BufReader::with_capacity(4, input);
        let (mut buf, mut cut) = (Vec::new(), false);
        let mut next = async |buf: &mut Vec<u8>, cut: &mut bool| {
            buf.clear();
            *cut = false;
            read_bounded_line(&mut reader, buf, 8, cut).await.unwrap()
        };
        assert!(next(&mut buf, &mut cut).await);
        assert_eq!((buf.as_slice(), cut), (&b"short"[..], false));
        assert!(next(&mut buf, &mut cut).await);
        assert_eq!((buf.as_slice(), cut), (&b""[..], true));
        assert!(next(&mut buf, &mut cut).await);
        assert_eq!((buf.as_slice(), cut), (&b"next"[..], false));
        assert!(!next(&mut buf, &mut cut).await);
    }

    /// The start handshake excludes the child's own pid before it execs, and `end_child`
    /// releases it once the child has exited and before reaping it: what the filter saw of
    /// the process at each step proves the order (at the exclusion it still runs this test
    /// binary, not yet `sleep`; at the release it is a zombie). A reader answers the release,
    /// so it does not end in the tombstone path.
    #[test]
    fn a_child_is_excluded_from_before_exec_until_it_has_exited() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let children = ChildExclusions::fanotify();
        let config = JournalConfig {
            journalctl: PathBuf::from("/bin/sleep"),
            directory: None,
        };
        let mut run = runtime
            .block_on(spawn_journalctl(&config, &["30".to_string()], &children))
            .expect("spawned");
        let pid = run.child.id().expect("running");
        assert_eq!(children.excluded_now(), vec![pid]);
        assert_eq!(run.exclusion.as_ref().map(ChildExclusion::pid), Some(pid));
        assert!(run.pidfd.is_some(), "this kernel has pidfd_open");
        // The fanotify reader, finding the queue empty every 10 ms (bounded).
        let reader = {
            let children = children.clone();
            std::thread::spawn(move || {
                for _ in 0..300 {
                    std::thread::sleep(Duration::from_millis(10));
                    children.drained(Instant::now());
                }
            })
        };
        let ending = Instant::now();
        end_child(&mut run, runtime.handle());
        assert!(
            ending.elapsed() < Duration::from_secs(2),
            "the reader answered"
        );
        assert!(children.tracked().is_empty(), "released, no tombstone");
        assert!(run.child.id().is_none(), "reaped");
        let me = std::env::current_exe().expect("this test binary");
        assert_eq!(
            children.seen(),
            vec![
                Seen::Excluded(pid, Some(me)),
                Seen::Released(pid, Some("Z".to_string())),
            ],
            "excluded before exec, released after exit and before reaping"
        );
        reader.join().expect("reader");
    }

    /// The start handshake starts no thread of its own: the child is admitted by a task on
    /// the runtime's worker (by thread id: not the stream's thread, not a blocking-pool
    /// thread, which `spawn_blocking` would use) while `spawn` blocks the stream's thread, and
    /// is excluded before it execs all the same.
    #[test]
    fn the_start_handshake_runs_on_a_runtime_worker_not_a_thread_of_its_own() {
        let (runtime, worker) = one_worker();
        assert_ne!(worker, std::thread::current().id());
        let children = ChildExclusions::fanotify();
        let run = runtime
            .block_on(spawn_journalctl(&sleeper(), &["30".to_string()], &children))
            .expect("spawned");
        let pid = run.child.id().expect("running");
        assert_eq!(children.excluded_now(), vec![pid]);
        assert_eq!(
            admissions_of(libc::pid_t::try_from(pid).unwrap()),
            vec![(worker, true)],
            "admitted on the runtime's worker"
        );
        discard(run, &runtime);
    }

    /// Review finding 2a: on a current-thread runtime the admitting task could run only on
    /// the thread `spawn` blocks, and the start hung for ever. It is refused at once.
    #[test]
    fn a_start_on_a_current_thread_runtime_is_refused_at_once_not_hung() {
        let children = ChildExclusions::fanotify();
        let (sent, answer) = std::sync::mpsc::channel();
        let theirs = children.clone();
        // Its own thread, so that a hang fails this test instead of hanging it.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let started = Instant::now();
            let spawned = runtime
                .block_on(spawn_journalctl(&sleeper(), &["30".to_string()], &theirs))
                .map(drop)
                .map_err(|e| (e.kind(), e.to_string()));
            let _ = sent.send((spawned, started.elapsed()));
        });
        let (spawned, took) = answer
            .recv_timeout(Duration::from_secs(10))
            .expect("spawn_journalctl hung on a current-thread runtime");
        let (kind, message) = spawned.expect_err("refused");
        assert_eq!(kind, std::io::ErrorKind::Unsupported, "{message}");
        assert!(message.contains("multi-thread"), "{message}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
        assert!(children.tracked().is_empty(), "nothing was started");
    }

    /// Review finding 2b: a worker held in a synchronous wait only delays a start: the child
    /// is admitted once the worker is free, and excluded before it execs (at the exclusion it
    /// still runs this test binary, not `sleep`).
    #[test]
    fn a_start_waits_for_a_busy_worker_and_excludes_the_child_before_exec() {
        let (runtime, worker) = one_worker();
        let children = ChildExclusions::fanotify();
        hold_the_worker(&runtime, Duration::from_millis(1500));
        let started = Instant::now();
        let run = runtime
            .block_on(spawn_journalctl(&sleeper(), &["30".to_string()], &children))
            .expect("spawned once the worker was free");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1300) && took < Duration::from_secs(4),
            "took {took:?}"
        );
        let pid = run.child.id().expect("running");
        assert_eq!(children.excluded_now(), vec![pid]);
        assert_eq!(
            admissions_of(libc::pid_t::try_from(pid).unwrap()),
            vec![(worker, true)]
        );
        let me = std::env::current_exe().expect("this test binary");
        assert_eq!(
            children.seen(),
            vec![Seen::Excluded(pid, Some(me))],
            "excluded before exec"
        );
        discard(run, &runtime);
    }

    /// Review finding 2b: a child not admitted within the bound stops waiting and ends, so
    /// the start fails (`TimedOut`, the read refused) instead of waiting without bound; the
    /// admitting task, when the worker is free at last, excludes nothing.
    #[test]
    fn a_start_not_admitted_within_the_bound_is_refused_and_excludes_nothing() {
        let (runtime, worker) = one_worker();
        let children = ChildExclusions::fanotify();
        hold_the_worker(&runtime, Duration::from_millis(1500));
        let started = Instant::now();
        let spawned = runtime.block_on(spawn_journalctl_within(
            &sleeper(),
            &["30".to_string()],
            &children,
            Duration::from_millis(300),
        ));
        let took = started.elapsed();
        let e = spawned
            .map(drop)
            .expect_err("refused, not admitted in time");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("not admitted within 0.3 s"), "{e}");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(1200),
            "took {took:?}"
        );
        // The worker free again, the task reads the ended child's pid and leaves it alone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while admissions_on(worker).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let seen = admissions_on(worker);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            !seen[0].1,
            "the task excluded a child the stream gave up on"
        );
        assert!(children.tracked().is_empty(), "nothing excluded");
        assert!(children.seen().is_empty(), "nothing excluded");
    }

    /// A child that cannot exec (no such program) leaves nothing excluded.
    #[test]
    fn a_child_that_fails_to_start_leaves_nothing_excluded() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let children = ChildExclusions::fanotify();
        let config = JournalConfig {
            journalctl: PathBuf::from("/nonexistent/journalctl"),
            directory: None,
        };
        let started = Instant::now();
        let spawned = runtime.block_on(spawn_journalctl(&config, &[], &children));
        let took = started.elapsed();
        assert!(spawned.is_err());
        assert!(children.excluded_now().is_empty());
        // Reaped inside `spawn`: released at once, not after the fanotify reader's wait
        // (there is no reader here, so a wait would last the whole 2 s).
        assert!(took < Duration::from_millis(200), "took {took:?}");
        let pid = REAPED_PID
            .with(std::cell::Cell::get)
            .expect("the child was excluded");
        assert_eq!(children.tracked(), vec![(pid, true)], "only a tombstone");
    }

    #[test]
    fn the_journal_section_wants_an_absolute_journalctl() {
        let file: JournalFile = toml::from_str("journalctl = \"journalctl\"").unwrap();
        assert!(file
            .validate(Path::new("/etc/loggate"))
            .unwrap_err()
            .to_string()
            .contains("absolute path"));
        let file: JournalFile = toml::from_str("directory = \"j\"").unwrap();
        let config = file.validate(Path::new("/etc/loggate")).unwrap();
        assert_eq!(
            config.directory.as_deref(),
            Some(Path::new("/etc/loggate/j"))
        );
        assert_eq!(config.journalctl, Path::new(DEFAULT_JOURNALCTL));
        assert!(toml::from_str::<JournalFile>("shell = \"sh\"").is_err());
    }
}
