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
//!
//! Output: one line per entry (a multi-line message gives one line per message line, each with
//! the same prefix), `2026-12-05T02:30:00.123456Z web-1 nginx.service[1234]: message`: the
//! entry's time in UTC with microseconds, the agent id, the unit and the entry's `_PID`
//! (`systemd[1]` for systemd's own messages about the unit). `--grep` matches the redacted line.

use crate::gate::{
    candidates, rank, resolve_profile, Denial, DenialCode, GateContext, Profile, Withdrawal,
};
use crate::stream::{EndReason, GrantStatus, Item};
use loggate_core::grant::{UnitName, VerifiedGrant};
use loggate_core::identity::Identity;
use loggate_proto as pb;
use loggate_redact::{Counts, Pipeline};
use regex::bytes::Regex;
use serde::Deserialize;
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

/// The arguments `journalctl` runs with: fixed, and nothing of the reader's but a checked unit
/// name (inside `--unit=`) and a number.
pub fn journalctl_args(
    unit: &UnitName,
    directory: Option<&Path>,
    since_unix_ms: Option<i64>,
    follow: bool,
) -> Vec<String> {
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
    if let Some(ms) = since_unix_ms {
        args.push(format!("--since=@{}", ms.div_euclid(1000)));
    }
    if follow {
        args.push("--follow".to_string());
        // Following from now, or from --since with everything since.
        args.push(if since_unix_ms.is_some() {
            "--lines=all".to_string()
        } else {
            "--lines=0".to_string()
        });
    }
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

/// The lines one entry is served as (before redaction), each ending in `\n`; `None` when the
/// entry does not belong to `unit` or has no usable time.
pub fn entry_lines(entry: &Entry, unit: &UnitName, agent: &str) -> Option<Vec<u8>> {
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
    let mut out = Vec::with_capacity(message.len() + 64);
    for line in message.split(|b| *b == b'\n') {
        out.extend_from_slice(format!("{time} {agent} {source}: ").as_bytes());
        out.extend(line.iter().copied().filter(|b| *b != b'\r'));
        out.push(b'\n');
    }
    Some(out)
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

/// Everything one journal stream needs.
pub struct JournalPlan {
    pub config: JournalConfig,
    pub unit: UnitName,
    pub agent: String,
    pub since_unix_ms: Option<i64>,
    pub follow: bool,
    pub profile: Profile,
    pub pattern: Option<Regex>,
    /// Time the pattern may spend matching over the whole stream.
    pub grep_budget: Duration,
    pub max_line: usize,
    pub grant_id: String,
    pub not_after: i64,
}

/// How a journal stream ended.
pub struct JournalFinished {
    pub reason: EndReason,
    pub bytes: u64,
    pub counts: Counts,
    pub pattern_time: Duration,
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

/// Kills `journalctl`'s whole process group, then reaps it (bounded).
async fn end_child(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals the process group the child leads
        // (spawned with `process_group(0)`, so its group id is its pid and the agent is not
        // in it); no memory is involved. The child is not reaped yet (we still hold it), so
        // its pid cannot have been reused.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}

/// Runs `journalctl` for `plan` and streams its entries to `tx` until the journal ends (not
/// following), the grant is withdrawn or expires, the client leaves or the agent stops. A cut
/// or a failure is sent on `last` (after all data). Runs on a blocking thread (the redaction
/// and matching work is done inline) driving its waits through `runtime`.
pub fn run(
    plan: JournalPlan,
    grants: Arc<dyn GrantStatus>,
    tx: mpsc::Sender<Item>,
    last: mpsc::Sender<Item>,
    stop: watch::Receiver<bool>,
    runtime: tokio::runtime::Handle,
) -> JournalFinished {
    runtime.block_on(stream(plan, grants, tx, last, stop))
}

async fn stream(
    plan: JournalPlan,
    grants: Arc<dyn GrantStatus>,
    tx: mpsc::Sender<Item>,
    last: mpsc::Sender<Item>,
    mut stop: watch::Receiver<bool>,
) -> JournalFinished {
    let mut withdrawals = grants.subscribe();
    let mut pipeline = Pipeline::new(plan.profile.redactor(), plan.max_line);
    let mut finished = JournalFinished {
        reason: EndReason::Eof,
        bytes: 0,
        counts: Counts::default(),
        pattern_time: Duration::ZERO,
    };
    let cut = |reason: EndReason, message: String| {
        let _ = last.try_send(Err(Status::aborted(message)));
        reason
    };
    let ended = |grants: &Arc<dyn GrantStatus>| -> Option<(EndReason, String)> {
        if let Some(Withdrawal::Revoked { by, .. } | Withdrawal::Dropped { by, .. }) =
            grants.withdrawal(&plan.grant_id)
        {
            return Some((
                EndReason::GrantRevoked,
                format!(
                    "grant {} was revoked by {by}; the stream was cut",
                    plan.grant_id
                ),
            ));
        }
        (loggate_core::grant::unix_now() >= plan.not_after).then(|| {
            (
                EndReason::GrantExpired,
                format!(
                    "grant {} for the journal of {} expired; the stream was cut; request a new grant",
                    plan.grant_id, plan.unit
                ),
            )
        })
    };
    if let Some((reason, message)) = ended(&grants) {
        finished.reason = cut(reason, message);
        return finished;
    }
    let args = journalctl_args(
        &plan.unit,
        plan.config.directory.as_deref(),
        plan.since_unix_ms,
        plan.follow,
    );
    let spawned = tokio::process::Command::new(&plan.config.journalctl)
        .args(&args)
        .env_clear()
        .env("SYSTEMD_COLORS", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let message = format!(
                "cannot run {} to read the journal: {e}; check [journal] journalctl in the agent's configuration",
                plan.config.journalctl.display()
            );
            let _ = last.try_send(Err(Status::internal(message.clone())));
            finished.reason = EndReason::ReadError(message);
            return finished;
        }
    };
    // Its first 4 KiB kept for an error message; the rest read and dropped, so it never blocks.
    let stderr_task = child.stderr.take().map(|mut err| {
        tokio::spawn(async move {
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
    let Some(stdout) = child.stdout.take() else {
        end_child(&mut child).await;
        finished.reason = EndReason::ReadError("journalctl gave no output pipe".into());
        return finished;
    };
    let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, stdout);
    let max_json = max_json_line(plan.max_line);
    let mut json = Vec::new();
    let mut out = Vec::new();
    let mut pattern_time = Duration::ZERO;
    let mut line_cut = false;
    let reason = loop {
        let next = tokio::select! {
            biased;
            () = stopped(&mut stop) => break cut(
                EndReason::AgentStopping,
                "the agent is stopping; the stream was cut; run the command again once the agent is back".into(),
            ),
            () = notified(&mut withdrawals) => {
                if let Some((reason, message)) = ended(&grants) {
                    break cut(reason, message);
                }
                continue;
            }
            () = tokio::time::sleep(wait_limit(plan.not_after)) => {
                if let Some((reason, message)) = ended(&grants) {
                    break cut(reason, message);
                }
                continue;
            }
            () = tx.closed() => break EndReason::ClientClosed,
            next = read_bounded_line(&mut reader, &mut json, max_json, &mut line_cut) => next,
        };
        match next {
            Err(e) => break EndReason::ReadError(format!("reading journalctl's output: {e}")),
            Ok(false) => break EndReason::Eof,
            Ok(true) => {}
        }
        // Looked at between lines as well: a busy journal is cut as promptly as an idle one.
        if let Some((reason, message)) = ended(&grants) {
            break cut(reason, message);
        }
        // Taken whole: a wait above that ends early leaves a partial line where it is.
        let (line, was_cut) = (std::mem::take(&mut json), std::mem::take(&mut line_cut));
        if was_cut {
            finished.counts.lines_cut += 1;
            continue;
        }
        let Ok(entry) = serde_json::from_slice::<Entry>(&line) else {
            continue;
        };
        let Some(lines) = entry_lines(&entry, &plan.unit, &plan.agent) else {
            continue;
        };
        out.clear();
        let mut keep = |line: &[u8]| match &plan.pattern {
            None => true,
            Some(p) => {
                let started = Instant::now();
                let matched = p.is_match(line);
                pattern_time += started.elapsed();
                matched
            }
        };
        pipeline.push(&lines, &mut keep, &mut out);
        if pattern_time > plan.grep_budget {
            break cut(
                EndReason::BudgetExceeded,
                format!(
                    "the grep pattern used up its time budget of {} on agent {}; the stream was cut; use a simpler pattern or a later --since",
                    humantime::format_duration(plan.grep_budget),
                    plan.agent
                ),
            );
        }
        if out.is_empty() {
            continue;
        }
        let len = out.len() as u64;
        let item = Ok(pb::ReadLogChunk {
            item: Some(pb::read_log_chunk::Item::Data(std::mem::take(&mut out))),
        });
        let mut item = Some(item);
        let sent = loop {
            tokio::select! {
                biased;
                () = stopped(&mut stop) => break Err(cut(
                    EndReason::AgentStopping,
                    "the agent is stopping; the stream was cut; run the command again once the agent is back".into(),
                )),
                () = notified(&mut withdrawals) => if let Some((reason, message)) = ended(&grants) {
                    break Err(cut(reason, message));
                },
                () = tokio::time::sleep(wait_limit(plan.not_after)) => if let Some((reason, message)) = ended(&grants) {
                    break Err(cut(reason, message));
                },
                permit = tx.reserve() => match permit {
                    Ok(permit) => {
                        if let Some(item) = item.take() {
                            permit.send(item);
                        }
                        break Ok(());
                    }
                    Err(_) => break Err(EndReason::ClientClosed),
                },
            }
        };
        match sent {
            Ok(()) => finished.bytes += len,
            Err(reason) => break reason,
        }
    };
    if reason == EndReason::Eof {
        // The output is over: let journalctl say how it ended before it is killed.
        let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
    }
    end_child(&mut child).await;
    let stderr = match stderr_task {
        Some(t) => t.await.unwrap_or_default(),
        None => String::new(),
    };
    finished.reason = match reason {
        EndReason::Eof => match child.try_wait() {
            Ok(Some(status)) if !status.success() && status.code().is_some() => {
                let said = stderr.lines().next().unwrap_or("").trim();
                let message = format!("journalctl failed ({status}): {said}");
                let _ = last.try_send(Err(Status::internal(format!(
                    "reading the journal failed: {message}"
                ))));
                EndReason::ReadError(message)
            }
            _ => EndReason::Eof,
        },
        EndReason::ReadError(e) => {
            let _ = last.try_send(Err(Status::internal(format!(
                "reading the journal failed: {e}"
            ))));
            EndReason::ReadError(e)
        }
        other => other,
    };
    finished.counts.redactions = pipeline.counts().redactions.clone();
    finished.counts.lines_withheld = pipeline.counts().lines_withheld;
    finished.counts.lines_cut += pipeline.counts().lines_cut;
    finished.pattern_time = pattern_time;
    finished
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Some(1_700_000_000_999),
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
                "--since=@1700000000",
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
    }

    #[test]
    fn only_entries_of_the_granted_unit_are_served() {
        let unit = nginx();
        let own = entry(
            r#"{"__REALTIME_TIMESTAMP":"1796436938732502","_SYSTEMD_UNIT":"nginx.service","_PID":"1234","MESSAGE":"hello"}"#,
        );
        assert_eq!(
            String::from_utf8(entry_lines(&own, &unit, "web-1").unwrap()).unwrap(),
            "2026-12-05T02:15:38.732502Z web-1 nginx.service[1234]: hello\n"
        );
        let about = entry(
            r#"{"__REALTIME_TIMESTAMP":"1796436938732502","_SYSTEMD_UNIT":"init.scope","UNIT":"nginx.service","_PID":"1","MESSAGE":"Started nginx."}"#,
        );
        assert!(
            String::from_utf8(entry_lines(&about, &unit, "web-1").unwrap())
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
                entry_lines(&entry(other), &unit, "web-1").is_none(),
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
        let lines = entry_lines(&e, &unit, "h").unwrap();
        assert_eq!(
            lines,
            b"1970-01-01T00:00:00.000000Z h nginx.service: a\n1970-01-01T00:00:00.000000Z h nginx.service: b\xff\n"
        );
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
