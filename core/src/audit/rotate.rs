//! Rotation and retention of the audit file, with the chain unbroken across files.
//!
//! The current file is renamed to `<name>.<last seq, 12 digits>` and a new one started whose
//! first record, `audit.rotated` (OCSF Event Log Activity, Rotate), continues the chain: its
//! `seq` and `prev` follow the last record of the renamed file. `verify_chain` accepts a file
//! that starts with such a record (the start of a retained file) and, given several files in
//! order, checks the chain across them.
//!
//! Retention never deletes a record nobody has delivered. Without a [`Retention`] (tests, a
//! writer nobody ships) rotated files beyond `keep` are deleted, oldest first. With one, a
//! rotated file `<name>.<N>` is deleted only once every reader named in it (each SIEM sink,
//! the checkpoint sender) has persisted a cursor at or past seq `N`, oldest first, and only
//! while there are more than `keep` rotated files or the files together exceed the disk
//! budget. A [`Retention`] that names no reader (a daemon with no sink) deletes nothing: no
//! reader has passed any file, so every rotated file is kept and the budget, once reached,
//! refuses events. When the budget is reached and nothing may be deleted, [`AuditLog::append`] refuses
//! every event (fail closed: the agent serves nothing it cannot audit) until a reader catches
//! up; `audit.budget_exhausted` and `audit.budget_recovered` mark both edges. Every deletion
//! is named in an audit record (`audit.rotated` or `audit.files_deleted`), so retention is
//! itself audited; the record is written once the files are gone and names only those really
//! deleted (a crash in between loses the record, never a record a reader still needed: the
//! files were consumed).

use super::events::{AgentStopped, ControllerStopped, GrantDropped, GrantExpired, GrantRevoked};
use super::events::{AuditBudgetExhausted, AuditBudgetRecovered, AuditFilesDeleted};
use super::events::{AuditEvent, AuditRotated};
use super::ocsf::EventType;
use super::ship::cursor;
use super::{AuditError, AuditLog};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, BufRead};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// When to rotate the audit file, and how many rotated files to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Rotate once the file is at least this long.
    pub max_bytes: u64,
    /// Rotated files kept; older ones are deleted (with a [`Retention`]: once consumed).
    pub keep: usize,
}

/// Who must consume a rotated file before it is deleted, and the disk budget of the audit
/// files (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Most bytes the audit file and its rotated files may take together; 0: no budget.
    pub budget_bytes: u64,
    /// The persisted cursors ([`cursor::Cursor`]) of every reader that must have passed a
    /// rotated file before it may go. A missing, unreadable or foreign cursor (its chain names
    /// none of the retained files) counts as "nothing consumed": fail closed.
    pub cursors: Vec<PathBuf>,
}

/// The retention settings of a log and what the last pass found.
#[derive(Debug)]
pub(crate) struct RetentionState {
    config: Retention,
    keep: usize,
    /// Bytes of the rotated files at the last pass.
    rotated_bytes: u64,
    /// Set while the budget is used up and nothing may be deleted.
    exhausted: Option<Exhausted>,
    /// The chain identities of the rotated files, by (name, inode): a rotated file never
    /// changes, so its first line is read once, not on every pass under the writer's lock.
    chain_ids: HashMap<(String, u64), String>,
    /// After a deletion failed: no pass before this (the append path would otherwise retry,
    /// and fail, on every event), doubling up to [`RETRY_MAX`].
    retry_after: Option<(Instant, Duration)>,
}

/// The longest pause between retention passes after deletions keep failing.
const RETRY_MAX: Duration = Duration::from_secs(60);
const RETRY_FIRST: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Exhausted {
    used: u64,
    waiting_for: Vec<String>,
}

/// Bytes above the budget kept for the events that only reduce access
/// ([`ACCESS_REDUCING`]), so that a full budget never blocks a revocation (audited before it
/// is done): 1 MiB, thousands of such records. Once the reserve is used up too, they are
/// refused like every other event (fail closed).
pub const ACCESS_REDUCING_RESERVE: u64 = 1 << 20;

/// The events that only take access away (a grant revoked, expired or dropped, a daemon
/// stopping): refusing them would leave access open, so they may use
/// [`ACCESS_REDUCING_RESERVE`] when the budget is exhausted. Retention's own records
/// (`audit.rotated`, `audit.files_deleted`, `audit.budget_*`) and checkpoints are never
/// budgeted at all.
pub const ACCESS_REDUCING: &[&EventType] = &[
    GrantRevoked::TYPE,
    GrantExpired::TYPE,
    GrantDropped::TYPE,
    AgentStopped::TYPE,
    ControllerStopped::TYPE,
];

/// Whether events of `kind` only reduce access (see [`ACCESS_REDUCING`]).
fn reduces_access(kind: &EventType) -> bool {
    ACCESS_REDUCING.iter().any(|t| t.name == kind.name)
}

impl RetentionState {
    /// The error an event of `kind` gets while the budget is exhausted: every event, except
    /// those that only reduce access while the files are within the budget plus
    /// [`ACCESS_REDUCING_RESERVE`].
    pub(crate) fn refusal_of(
        &self,
        path: &Path,
        kind: &EventType,
        current_len: u64,
    ) -> Option<AuditError> {
        let refused = self.refusal(path)?;
        let used = self.rotated_bytes.saturating_add(current_len);
        let reserve_end = self
            .config
            .budget_bytes
            .saturating_add(ACCESS_REDUCING_RESERVE);
        if reduces_access(kind) && used < reserve_end {
            return None;
        }
        Some(refused)
    }

    /// The error every event gets while the budget is exhausted.
    pub(crate) fn refusal(&self, path: &Path) -> Option<AuditError> {
        self.exhausted
            .as_ref()
            .map(|e| AuditError::BudgetExhausted {
                path: path.to_path_buf(),
                budget: self.config.budget_bytes,
                used: e.used,
                waiting_for: if e.waiting_for.is_empty() {
                    "none (the current file fills the budget until it rotates)".into()
                } else {
                    e.waiting_for.join(", ")
                },
            })
    }

    /// Whether a file of `current_len` bytes next to the rotated ones reaches the budget.
    pub(crate) fn over_budget(&self, current_len: u64) -> bool {
        self.config.budget_bytes > 0
            && self.rotated_bytes.saturating_add(current_len) >= self.config.budget_bytes
    }
}

/// What a retention pass decided: the oldest files that may go, and the budget's state after.
struct Plan {
    delete: Vec<PathBuf>,
    rotated_bytes_after: u64,
    exhausted: Option<Exhausted>,
    reason: &'static str,
}

impl AuditLog {
    /// Applies `retention` (see the module doc) from now on; `keep` is the rotation policy's.
    pub fn with_retention(mut self, retention: Retention, keep: usize) -> Self {
        let rotated_bytes = rotated_files(&self.path)
            .map(|files| files.iter().map(|f| file_len(f)).sum())
            .unwrap_or(0);
        self.retention = Some(RetentionState {
            config: retention,
            keep,
            rotated_bytes,
            exhausted: None,
            chain_ids: HashMap::new(),
            retry_after: None,
        });
        self
    }

    /// The bytes the audit files take and their budget, when they are at or over it (a daemon
    /// warns at start: its audited actions will be refused until a reader catches up).
    pub fn over_budget(&self) -> Option<(u64, u64)> {
        let r = self.retention.as_ref()?;
        r.over_budget(self.written_len).then(|| {
            (
                r.rotated_bytes.saturating_add(self.written_len),
                r.config.budget_bytes,
            )
        })
    }

    /// Whether retention has a reader whose cursor may let a rotated file go (without one,
    /// none is ever deleted).
    pub fn has_reader(&self) -> bool {
        self.retention
            .as_ref()
            .is_some_and(|r| !r.config.cursors.is_empty())
    }

    /// Rotates the file if it has reached `policy.max_bytes` (see the module doc), then
    /// applies retention. Returns the rotated file's path when it rotated.
    pub fn rotate_if_due(&mut self, policy: RotationPolicy) -> Result<Option<PathBuf>, AuditError> {
        let rotated = if self.written_len < policy.max_bytes || self.next_seq == 1 {
            None
        } else {
            Some(self.rotate(policy.keep)?)
        };
        self.apply_retention()?;
        Ok(rotated)
    }

    /// Seals the file with a checkpoint, renames it to `<name>.<last seq>`, starts a new one
    /// with an `audit.rotated` record that continues the chain, and deletes the rotated files
    /// retention lets go (see the module doc). If the new file cannot be started, the old one
    /// is put back.
    pub fn rotate(&mut self, keep: usize) -> Result<PathBuf, AuditError> {
        // Seal the file before it is closed for good (a no-op without checkpoints), and make
        // everything in it durable: the new file's syncs will not cover the old one.
        self.checkpoint()?;
        self.sync()?;
        let path = self.path.clone();
        let io_err = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let last_seq = self.next_seq - 1;
        let rotated = rotated_path(&path, last_seq);
        let expired = match &mut self.retention {
            Some(r) => {
                r.keep = keep;
                let existing = rotated_files(&path).map_err(io_err)?;
                // The file being rotated counts, and is never deleted by its own rotation.
                plan(&path, &existing, r, 1, self.written_len).delete
            }
            None => {
                let existing = rotated_files(&path).map_err(io_err)?;
                existing[..(existing.len() + 1)
                    .saturating_sub(keep)
                    .min(existing.len())]
                    .to_vec()
            }
        };
        std::fs::rename(&path, &rotated).map_err(io_err)?;
        let new_file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        let new_file = match new_file {
            Ok(file) => file,
            Err(e) => {
                let _ = std::fs::rename(&rotated, &path);
                return Err(io_err(e));
            }
        };
        // The old file stays open until the new one holds its first record, so a failure can
        // put it back and writing continues where it was.
        let old_file = std::mem::replace(&mut self.file, new_file);
        let old_len = std::mem::replace(&mut self.written_len, 0);
        let old_durable = self.durable.clone();
        self.durable.len = 0;
        let name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        // Deleted before the record that names them, so it names only what is really gone; a
        // failure stops the deletions and is reported once the record is written.
        let (deleted, not_deleted) = remove_oldest(&expired);
        let rotated_event = AuditRotated {
            previous_file: name(&rotated),
            previous_last_seq: last_seq,
            deleted_files: deleted.iter().map(|p| name(p)).collect(),
        };
        let started = super::Encoded::new(&rotated_event, &path)
            .and_then(|record| self.write_record(record))
            .and_then(|_| self.sync());
        if let Err(e) = started {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::rename(&rotated, &path);
            self.file = old_file;
            self.written_len = old_len;
            self.durable = old_durable;
            self.next_seq = self.durable.seq + 1;
            self.prev = self.durable.prev.clone();
            self.pending_cut = None;
            if !deleted.is_empty() {
                // The rotation is undone but its deletions are not: say so in the old file.
                let recorded = self
                    .write_event(&AuditFilesDeleted {
                        deleted_files: deleted.iter().map(|p| name(p)).collect(),
                        reason: "keep_files",
                    })
                    .and_then(|_| self.sync());
                if let Err(why) = recorded {
                    tracing::error!(
                        "rotated audit files {deleted:?} were deleted but no audit record says so: {why:#}"
                    );
                }
            }
            return Err(e);
        }
        drop(old_file);
        // The rename and the new file survive a crash once the folder is synced.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err)?;
        if let Some(e) = not_deleted {
            return Err(e);
        }
        Ok(rotated)
    }

    /// One retention pass (see the module doc): deletes the oldest rotated files every reader
    /// has consumed while there are too many or the budget is reached, then records whether the
    /// budget is exhausted (refusing events) or has recovered. The deletions are named in an
    /// `audit.files_deleted` record once done; a failed one pauses the passes (see
    /// `retry_after`) and the budget is judged by what is left.
    pub(crate) fn apply_retention(&mut self) -> Result<(), AuditError> {
        let Some(state) = &mut self.retention else {
            return Ok(());
        };
        if state.retry_after.is_some_and(|(at, _)| Instant::now() < at) {
            return Ok(());
        }
        let path = self.path.clone();
        let files = rotated_files(&path).map_err(|source| AuditError::Io {
            path: path.clone(),
            source,
        })?;
        let mut plan = plan(&path, &files, state, 0, self.written_len);
        let budget = state.config.budget_bytes;
        let was_exhausted = state.exhausted.is_some();
        let (deleted, not_deleted) = remove_oldest(&plan.delete);
        if !deleted.is_empty() {
            self.write_event(&AuditFilesDeleted {
                deleted_files: deleted.iter().map(|p| file_name(p)).collect(),
                reason: plan.reason,
            })?;
            self.sync()?;
        }
        if let Some(state) = &mut self.retention {
            match &not_deleted {
                None => state.retry_after = None,
                Some(e) => {
                    // Judge the budget by what is really left; retry later, not per event.
                    let pause = state
                        .retry_after
                        .map_or(RETRY_FIRST, |(_, last)| (last * 2).min(RETRY_MAX));
                    state.retry_after = Some((Instant::now() + pause, pause));
                    let failed = plan.delete[deleted.len()..]
                        .first()
                        .map(|f| file_name(f))
                        .unwrap_or_default();
                    tracing::error!(
                        "cannot delete the consumed audit file {failed}: {e:#}; retrying in {}s",
                        pause.as_secs()
                    );
                    let left: u64 = plan.delete[deleted.len()..]
                        .iter()
                        .map(|f| file_len(f))
                        .sum();
                    plan.rotated_bytes_after = plan.rotated_bytes_after.saturating_add(left);
                    let used = plan.rotated_bytes_after.saturating_add(self.written_len);
                    plan.exhausted = (budget > 0 && used >= budget).then(|| Exhausted {
                        used,
                        waiting_for: vec![format!("the deletion of {failed}")],
                    });
                }
            }
        }
        if let Some(state) = &mut self.retention {
            state.rotated_bytes = plan.rotated_bytes_after;
            state.exhausted = plan.exhausted.clone();
        }
        match (was_exhausted, plan.exhausted) {
            (false, Some(e)) => {
                tracing::error!(
                    "the audit files of {} fill their budget ({budget} bytes, {} used) and the rotated ones are not yet delivered to: {}; every audited action is refused until they catch up (or raise audit_max_bytes)",
                    path.display(),
                    e.used,
                    e.waiting_for.join(", ")
                );
                self.write_event(&AuditBudgetExhausted {
                    budget_bytes: budget,
                    used_bytes: e.used,
                    waiting_for: e.waiting_for,
                })?;
                self.sync()?;
            }
            (true, None) => {
                let used = plan.rotated_bytes_after.saturating_add(self.written_len);
                tracing::warn!(
                    "the audit files of {} are within their budget again ({used} of {budget} bytes); audited actions are allowed again",
                    path.display()
                );
                self.write_event(&AuditBudgetRecovered {
                    budget_bytes: budget,
                    used_bytes: used,
                })?;
                self.sync()?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes one of retention's own events (not synced, no budget check: retention runs
    /// inside both).
    fn write_event<E: AuditEvent>(&mut self, event: &E) -> Result<u64, AuditError> {
        let record = super::Encoded::new(event, &self.path)?;
        self.write_record(record)
    }
}

/// Deletes `files` in order, stopping at the first that cannot be deleted: returns those
/// deleted and the error that stopped it. A file already gone counts as deleted.
fn remove_oldest(files: &[PathBuf]) -> (Vec<PathBuf>, Option<AuditError>) {
    let mut deleted = Vec::new();
    for file in files {
        match std::fs::remove_file(file) {
            Ok(()) => deleted.push(file.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => deleted.push(file.clone()),
            Err(source) => {
                return (
                    deleted,
                    Some(AuditError::Io {
                        path: file.clone(),
                        source,
                    }),
                )
            }
        }
    }
    (deleted, None)
}

/// What a budget refusal waits for when the audit has no reader at all.
const NO_READER: &str =
    "a reader (none is configured: add an [[audit.sinks]] entry to ship the rotated files, or raise audit_max_bytes)";

/// Decides which of the rotated `files` (oldest first) go: the oldest ones every reader has
/// consumed, while there are more than `keep` (counting `extra_files` not in the list) or the
/// files with `other_bytes` (the current file) reach the budget. Stops at the first file a
/// reader still needs, so what is kept is always a contiguous run of the chain. With no
/// reader at all nothing goes: a deletion needs a reader past the file.
fn plan(
    path: &Path,
    files: &[PathBuf],
    state: &mut RetentionState,
    extra_files: usize,
    other_bytes: u64,
) -> Plan {
    let lens: Vec<u64> = files.iter().map(|f| file_len(f)).collect();
    let total: u64 = lens.iter().sum();
    let budget = state.config.budget_bytes;
    let over_budget = |used: u64| budget > 0 && used >= budget;
    let mut used = total.saturating_add(other_bytes);
    let over_count = (files.len() + extra_files).saturating_sub(state.keep);
    let reason = if over_budget(used) {
        "budget"
    } else {
        "keep_files"
    };
    let mut delete = Vec::new();
    let mut waiting_for = Vec::new();
    if state.config.cursors.is_empty() {
        // No reader: nobody has shipped these records, so none may go. The budget refuses
        // once they fill it (see the module doc).
        if over_budget(used) {
            waiting_for.push(NO_READER.to_string());
        }
    } else if over_count > 0 || over_budget(used) {
        let consumed = consumed_seqs(path, files, &state.config.cursors, &mut state.chain_ids);
        for (i, file) in files.iter().enumerate() {
            if i >= over_count && !over_budget(used) {
                break;
            }
            // A name that does not parse cannot be judged: keep it (fail closed).
            let last = rotated_last_seq(file).unwrap_or(u64::MAX);
            waiting_for = consumed
                .iter()
                .filter(|(_, seq)| *seq < last)
                .map(|(name, _)| name.clone())
                .collect();
            if !waiting_for.is_empty() || last == u64::MAX {
                break;
            }
            delete.push(file.clone());
            used = used.saturating_sub(lens[i]);
        }
    }
    let deleted: u64 = lens[..delete.len()].iter().sum();
    Plan {
        rotated_bytes_after: total - deleted,
        exhausted: over_budget(used).then_some(Exhausted { used, waiting_for }),
        delete,
        reason,
    }
}

/// Each reader's name (its cursor file's stem) and the last seq it has consumed. A cursor
/// that is missing, unreadable, or whose chain is none of the retained files (a stale cursor
/// of another chain, whose seq means nothing here) counts as 0.
fn consumed_seqs(
    path: &Path,
    files: &[PathBuf],
    cursors: &[PathBuf],
    cache: &mut HashMap<(String, u64), String>,
) -> Vec<(String, u64)> {
    let mut chains: Option<Vec<String>> = None;
    cursors
        .iter()
        .map(|c| {
            let name = c
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let seq = match cursor::load(c) {
                Ok(Some(cursor)) => {
                    let chains = chains.get_or_insert_with(|| chain_ids(path, files, cache));
                    if chains.contains(&cursor.chain) {
                        cursor.seq
                    } else {
                        0
                    }
                }
                _ => 0,
            };
            (name, seq)
        })
        .collect()
}

/// The chain identities (hex SHA-256 of the first line) of the rotated `files` (from `cache`
/// when known, by name and inode) and of the current file they belong to (read each time: it
/// is replaced by every rotation).
fn chain_ids(
    path: &Path,
    files: &[PathBuf],
    cache: &mut HashMap<(String, u64), String>,
) -> Vec<String> {
    let keys: Vec<Option<(String, u64)>> = files
        .iter()
        .map(|f| std::fs::metadata(f).ok().map(|m| (file_name(f), m.ino())))
        .collect();
    cache.retain(|key, _| keys.iter().flatten().any(|k| k == key));
    let mut ids = Vec::with_capacity(files.len() + 1);
    for (file, key) in files.iter().zip(keys) {
        let id = match key.as_ref().and_then(|k| cache.get(k)) {
            Some(id) => Some(id.clone()),
            None => first_line_hash(file).ok().flatten(),
        };
        if let (Some(id), Some(key)) = (&id, key) {
            cache.insert(key, id.clone());
        }
        ids.extend(id);
    }
    ids.extend(first_line_hash(path).ok().flatten());
    ids
}

/// Where the newest rotated file's chain ends: its last record's `seq` and hash.
pub(crate) struct RotatedHead {
    pub(crate) file_name: String,
    pub(crate) seq: u64,
    pub(crate) hash: String,
}

/// The end of the newest rotated file of `path`, or `None` when there is none. A rotated file
/// is sealed and synced before its rename, so a last line that is torn or not a record is
/// refused (fail closed) rather than guessed past.
pub(crate) fn newest_rotated_head(path: &Path) -> Result<Option<RotatedHead>, AuditError> {
    let io_err = |p: &Path, source| AuditError::Io {
        path: p.to_path_buf(),
        source,
    };
    let Some(newest) = rotated_files(path).map_err(|e| io_err(path, e))?.pop() else {
        return Ok(None);
    };
    let corrupt = |why: String| AuditError::Corrupt {
        path: newest.clone(),
        why,
    };
    let mut file = std::fs::File::open(&newest).map_err(|e| io_err(&newest, e))?;
    let len = file.metadata().map_err(|e| io_err(&newest, e))?.len();
    let start = len.saturating_sub(super::MAX_LINE);
    io::Seek::seek(&mut file, io::SeekFrom::Start(start)).map_err(|e| io_err(&newest, e))?;
    let mut tail = Vec::new();
    io::Read::read_to_end(&mut file, &mut tail).map_err(|e| io_err(&newest, e))?;
    let Some(complete) = tail.strip_suffix(b"\n") else {
        return Err(corrupt(
            "the newest rotated file does not end with a complete record; the current file cannot continue its chain (check it with `loggate audit verify`)".into(),
        ));
    };
    let last = match complete.iter().rposition(|b| *b == b'\n') {
        Some(i) => &complete[i + 1..],
        None if start == 0 => complete,
        None => return Err(corrupt("its last line is longer than 1 MiB".into())),
    };
    let seq = super::line_seq(&newest, last)?;
    Ok(Some(RotatedHead {
        file_name: file_name(&newest),
        seq,
        hash: chain_id(last),
    }))
}

/// The hex SHA-256 of a file's first complete line (its chain identity), if it has one.
pub fn first_line_hash(path: &Path) -> io::Result<Option<String>> {
    let file = std::fs::File::open(path)?;
    let mut line = Vec::new();
    io::BufReader::new(io::Read::take(file, super::MAX_LINE)).read_until(b'\n', &mut line)?;
    Ok(line.strip_suffix(b"\n").map(chain_id))
}

/// A file's chain identity, as sink and checkpoint cursors name it: the lowercase hex SHA-256
/// of its first line (without the newline).
pub fn chain_id(first_line: &[u8]) -> String {
    hex::encode(Sha256::digest(first_line))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The last seq a rotated file holds, from its name (`audit.jsonl.000000001234` → 1234).
pub fn rotated_last_seq(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = &name[name.rfind('.')? + 1..];
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The file of the chain at `path` that holds record `seq`: the oldest rotated file whose
/// last seq is at least `seq`, else the current file. Readers that walk the chain (the SIEM
/// sinks, the checkpoint sender) find their next record with it; whether the file really
/// starts at or before `seq` is for the reader to check (a gap means records were deleted).
pub fn file_holding(path: &Path, seq: u64) -> io::Result<PathBuf> {
    Ok(rotated_files(path)?
        .into_iter()
        .find(|f| rotated_last_seq(f).is_some_and(|last| last >= seq))
        .unwrap_or_else(|| path.to_path_buf()))
}

/// `audit.jsonl` → `audit.jsonl.000000001234` (sorts in chain order).
fn rotated_path(path: &Path, last_seq: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{last_seq:012}"));
    PathBuf::from(name)
}

/// Opens the file of the chain at `path` that holds record `seq` (see [`file_holding`]), or
/// `None` while there is none. Safe against a rotation running meanwhile: the rotated name
/// exists before the new current file does, so when the current file is what was opened the
/// folder is listed again, and a rotated file that now holds `seq` is opened instead.
pub fn open_holding(path: &Path, seq: u64) -> io::Result<Option<(PathBuf, std::fs::File)>> {
    let open = |p: PathBuf| match std::fs::File::open(&p) {
        Ok(f) => Ok(Some((p, f))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    let candidate = file_holding(path, seq)?;
    if candidate != path {
        return open(candidate);
    }
    let opened = open(candidate)?;
    let again = file_holding(path, seq)?;
    if again != path {
        return open(again);
    }
    Ok(opened)
}

/// The rotated files of `path`, oldest first.
pub fn rotated_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = format!(
        "{}.",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|seq| seq.len() == 12 && seq.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The hex SHA-256 of the complete line that ends just before `offset` in `file` (a reader's
/// last line read), or `None` when there is none within 1 MiB. Positional reads: no reader's
/// position moves.
pub fn hash_of_line_before(file: &std::fs::File, offset: u64) -> io::Result<Option<String>> {
    use std::os::unix::fs::FileExt;
    let start = offset.saturating_sub(super::MAX_LINE);
    let mut buf = vec![0u8; usize::try_from(offset - start).unwrap_or(0)];
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read_at(&mut buf[filled..], start + filled as u64)?;
        if n == 0 {
            return Ok(None); // the file is shorter than the offset: no such line
        }
        filled += n;
    }
    let Some(body) = buf.strip_suffix(b"\n") else {
        return Ok(None);
    };
    let line = match body.iter().rposition(|b| *b == b'\n') {
        Some(i) => &body[i + 1..],
        None if start == 0 => body,
        None => return Ok(None),
    };
    Ok(Some(chain_id(line)))
}

/// Whether `first_line` (a file's first line, without its newline) continues the chain whose
/// last line hashes to `last_hash`: an `audit.rotated` record whose `prev` is that hash. A
/// reader moving to the next file checks it, so a file of another chain is never taken for
/// the next one (see `AuditLog::open`).
pub fn continues_chain(first_line: &[u8], last_hash: &str) -> bool {
    serde_json::from_slice::<Value>(first_line)
        .ok()
        .is_some_and(|record| continuation(&record).is_some_and(|(_, prev, _)| prev == last_hash))
}

/// Where a retained file's chain starts, if its first record continues a rotated one:
/// `(seq before it, prev, previous file name)`.
pub(crate) fn continuation(record: &Value) -> Option<(u64, &str, &str)> {
    if super::event_name(record) != Some("audit.rotated") {
        return None;
    }
    let (seq, prev) = super::chain_link(record).ok()?;
    let previous = super::record_field(record, "previous_file").and_then(Value::as_str)?;
    Some((seq.checked_sub(1)?, prev, previous))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::events::TestEvent;
    use crate::audit::{event_name, record_field, verify_chain};

    fn concat(files: &[PathBuf]) -> Vec<u8> {
        files
            .iter()
            .flat_map(|f| std::fs::read(f).unwrap())
            .collect()
    }

    #[test]
    fn rotation_keeps_the_chain_unbroken_across_files() {
        let dir = crate::audit::scratch_dir();
        let path = dir.join("audit.jsonl");
        let mut log = AuditLog::open(&path, "web-1").unwrap();
        for i in 0..3 {
            log.append(&crate::audit::events::TestEvent::n(i)).unwrap();
        }
        let rotated = log.rotate(10).unwrap();
        assert_eq!(rotated, dir.join("audit.jsonl.000000000003"));
        log.append(&crate::audit::events::TestEvent::n(3)).unwrap();
        drop(log);
        // Reopening the new file resumes the chain too.
        let mut log = AuditLog::open(&path, "web-1").unwrap();
        assert_eq!(
            log.append(&crate::audit::events::TestEvent::n(0)).unwrap(),
            6
        );

        let both = verify_chain(&concat(&[rotated.clone(), path.clone()])[..], &[]).unwrap();
        assert_eq!((both.first_seq, both.last_seq), (1, 6));
        assert_eq!(both.continues_from, None);
        let first = first_record(&path);
        assert_eq!(event_name(&first), Some("audit.rotated"));
        assert_eq!(first["activity_id"], 5); // OCSF Event Log Activity: 5 Rotate (6 is Start)
        assert_eq!(crate::audit::record_seq(&first), Some(4));
        assert_eq!(
            record_field(&first, "previous_file"),
            Some(&Value::from("audit.jsonl.000000000003"))
        );
        // The new file alone verifies from where it continues.
        let alone = verify_chain(&std::fs::read(&path).unwrap()[..], &[]).unwrap();
        assert_eq!((alone.first_seq, alone.last_seq), (4, 6));
        assert_eq!(
            alone.continues_from.as_deref(),
            Some("audit.jsonl.000000000003")
        );
        // Files out of order break the chain.
        assert!(verify_chain(&concat(&[path, rotated])[..], &[]).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Events 1-3, a rotation (4 is its record), events 5-6: the files a restart finds.
    fn rotated_once(path: &Path) -> PathBuf {
        let mut log = AuditLog::open(path, "web-1").unwrap();
        for i in 0..3 {
            log.append(&TestEvent::n(i)).unwrap();
        }
        let rotated = log.rotate(10).unwrap();
        for i in 0..2 {
            log.append(&TestEvent::n(i)).unwrap();
        }
        rotated
    }

    #[test]
    fn a_crash_between_the_rename_and_the_first_record_continues_the_chain_on_restart() {
        let dir = crate::audit::scratch_dir();
        let path = dir.join("audit.jsonl");
        let first = rotated_once(&path);
        // `rotate` renamed the file and died before the new one held its first record.
        let second = rotated_path(&path, 6);
        std::fs::rename(&path, &second).unwrap();
        let mut log = AuditLog::open(&path, "web-1").unwrap();
        assert_eq!(log.append(&TestEvent::n(9)).unwrap(), 8);
        let head = first_record(&path);
        assert_eq!(event_name(&head), Some("audit.rotated"));
        assert_eq!(crate::audit::record_seq(&head), Some(7));
        assert_eq!(
            record_field(&head, "previous_file"),
            Some(&Value::from("audit.jsonl.000000000006"))
        );
        let all = verify_chain(&concat(&[first, second, path.clone()])[..], &[]).unwrap();
        assert_eq!((all.first_seq, all.last_seq, all.records), (1, 8, 8));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_audit_file_moved_aside_is_continued_from_the_newest_rotated_file() {
        let dir = crate::audit::scratch_dir();
        let path = dir.join("audit.jsonl");
        let first = rotated_once(&path);
        std::fs::rename(&path, dir.join("audit.jsonl.corrupt")).unwrap();
        let mut log = AuditLog::open(&path, "web-1").unwrap();
        assert_eq!(log.append(&TestEvent::n(9)).unwrap(), 5);
        let both = verify_chain(&concat(&[first, path.clone()])[..], &[]).unwrap();
        assert_eq!((both.first_seq, both.last_seq), (1, 5));
        // An empty current file is continued the same way.
        drop(log);
        std::fs::write(&path, b"").unwrap();
        let mut log = AuditLog::open(&path, "web-1").unwrap();
        assert_eq!(log.append(&TestEvent::n(9)).unwrap(), 5);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_newest_rotated_file_with_a_torn_end_is_refused_not_restarted() {
        let dir = crate::audit::scratch_dir();
        let path = dir.join("audit.jsonl");
        let first = rotated_once(&path);
        std::fs::remove_file(&path).unwrap();
        let mut f = OpenOptions::new().append(true).open(&first).unwrap();
        io::Write::write_all(&mut f, b"{\"half").unwrap();
        let err = AuditLog::open(&path, "web-1").err().expect("refused");
        assert!(matches!(err, AuditError::Corrupt { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Makes `file` impossible to delete with `remove_file` (even for root): a folder in its
    /// place.
    fn undeletable(file: &Path) {
        std::fs::remove_file(file).unwrap();
        std::fs::create_dir(file).unwrap();
        std::fs::write(file.join("x"), b"x").unwrap();
    }

    #[test]
    fn a_rotation_names_only_the_files_it_really_deleted() {
        let dir = crate::audit::scratch_dir();
        let path = dir.join("audit.jsonl");
        let mut log = AuditLog::open(&path, "web-1").unwrap();
        log.append(&TestEvent::n(0)).unwrap();
        let a = log.rotate(10).unwrap();
        log.append(&TestEvent::n(0)).unwrap();
        let b = log.rotate(10).unwrap();
        undeletable(&b);
        log.append(&TestEvent::n(0)).unwrap();
        // Keep 1: both older files are due; the second cannot go.
        assert!(log.rotate(1).is_err());
        assert!(!a.exists() && b.exists());
        assert_eq!(
            record_field(&first_record(&path), "deleted_files"),
            Some(&serde_json::json!([file_name(&a)]))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_retention_pass_names_only_the_files_it_really_deleted() {
        let dir = crate::audit::scratch_dir();
        let sink = dir.join("siem.cursor");
        let mut log = retained_log(&dir, 0, vec![sink.clone()]);
        let mut rotated = Vec::new();
        for _ in 0..2 {
            log.append(&TestEvent::n(0)).unwrap();
            rotated.push(log.rotate(10).unwrap());
        }
        undeletable(&rotated[1]);
        log.append(&TestEvent::n(0)).unwrap();
        store_cursor(&sink, log.path(), log.written().seq);
        if let Some(r) = &mut log.retention {
            r.keep = 0;
        }
        // A deletion that fails does not fail the pass (nor the event that ran it).
        log.apply_retention().unwrap();
        let text = std::fs::read_to_string(log.path()).unwrap();
        let deleted: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| event_name(r) == Some("audit.files_deleted"))
            .collect();
        assert_eq!(deleted.len(), 1);
        assert_eq!(
            record_field(&deleted[0], "deleted_files"),
            Some(&serde_json::json!([file_name(&rotated[0])]))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_deletion_is_retried_after_a_pause_not_on_every_pass() {
        let dir = crate::audit::scratch_dir();
        let sink = dir.join("siem.cursor");
        let mut log = retained_log(&dir, 0, vec![sink.clone()]);
        log.append(&TestEvent::n(0)).unwrap();
        let rotated = log.rotate(10).unwrap();
        store_cursor(&sink, log.path(), log.written().seq);
        undeletable(&rotated);
        if let Some(r) = &mut log.retention {
            r.keep = 0;
        }
        log.apply_retention().unwrap();
        assert!(rotated.exists());
        // Deletable again, but the next passes (every append on the hot path) wait.
        std::fs::remove_dir_all(&rotated).unwrap();
        std::fs::write(&rotated, b"{}\n").unwrap();
        for _ in 0..3 {
            log.append(&TestEvent::n(0)).unwrap();
            log.apply_retention().unwrap();
        }
        assert!(rotated.exists(), "retried at once");
        // Once the pause is over, the next pass deletes it.
        if let Some(r) = &mut log.retention {
            r.retry_after = r.retry_after.map(|(_, pause)| (Instant::now(), pause));
        }
        log.apply_retention().unwrap();
        assert!(!rotated.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_rotated_files_chain_identity_is_read_once() {
        let dir = crate::audit::scratch_dir();
        let sink = dir.join("siem.cursor");
        let mut log = retained_log(&dir, 0, vec![sink.clone()]);
        log.append(&TestEvent::n(0)).unwrap();
        let first = log.rotate(10).unwrap();
        log.append(&TestEvent::n(0)).unwrap();
        let second = log.rotate(10).unwrap();
        let second_id = first_line_hash(&second).unwrap().unwrap();
        // The sink read the first file only; keep 0: the pass reads the files' identities.
        store_cursor(&sink, &second, rotated_last_seq(&first).unwrap());
        if let Some(r) = &mut log.retention {
            r.keep = 0;
        }
        log.apply_retention().unwrap();
        assert!(!first.exists() && second.exists());
        // Its first line changes in place (same inode): later passes do not read it again.
        let text = std::fs::read_to_string(&second).unwrap();
        std::fs::write(&second, text.replacen('{', "{ ", 1)).unwrap();
        store_cursor_id(&sink, &second_id, rotated_last_seq(&second).unwrap());
        log.apply_retention().unwrap();
        assert!(!second.exists(), "the identity was read again");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn store_cursor_id(path: &Path, chain: &str, seq: u64) {
        let c = cursor::Cursor {
            chain: chain.to_string(),
            seq,
            offset: 0,
        };
        cursor::store(path, &c).unwrap();
    }

    /// The first record of an audit file.
    fn first_record(path: &Path) -> Value {
        let text = std::fs::read_to_string(path).unwrap();
        serde_json::from_str(text.lines().next().unwrap()).unwrap()
    }

    #[test]
    fn retention_deletes_the_oldest_rotated_files_and_says_so() {
        let dir = crate::audit::scratch_dir();
        let path = dir.join("audit.jsonl");
        let mut log = AuditLog::open(&path, "web-1").unwrap();
        let policy = RotationPolicy {
            max_bytes: 1,
            keep: 2,
        };
        for _ in 0..4 {
            log.append(&crate::audit::events::TestEvent::n(0)).unwrap();
            assert!(log.rotate_if_due(policy).unwrap().is_some());
        }
        let kept = rotated_files(&path).unwrap();
        assert_eq!(kept.len(), 2);
        let last = first_record(&path);
        assert_eq!(
            record_field(&last, "deleted_files"),
            Some(&serde_json::json!(["audit.jsonl.000000000003"]))
        );
        // What is kept still verifies in order, from where it continues.
        let mut files = kept;
        files.push(path);
        let summary = verify_chain(&concat(&files)[..], &[]).unwrap();
        assert_eq!(summary.last_seq, 8);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_starting_mid_chain_without_a_rotation_record_is_refused() {
        let dir = crate::audit::scratch_dir();
        let path = dir.join("audit.jsonl");
        let mut log = AuditLog::open(&path, "h").unwrap();
        for _ in 0..3 {
            log.append(&crate::audit::events::TestEvent::n(0)).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let without_head: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        let err = verify_chain(without_head.as_bytes(), &[]).unwrap_err();
        assert_eq!(err.line, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A log rotated by hand after every `per_file` events, with retention through `cursors`.
    fn retained_log(dir: &Path, budget: u64, cursors: Vec<PathBuf>) -> AuditLog {
        AuditLog::open(&dir.join("audit.jsonl"), "web-1")
            .unwrap()
            .with_retention(
                Retention {
                    budget_bytes: budget,
                    cursors,
                },
                1,
            )
    }

    fn store_cursor(path: &Path, chain_file: &Path, seq: u64) {
        let chain = first_line_hash(chain_file).unwrap().unwrap();
        cursor::store(
            path,
            &cursor::Cursor {
                chain,
                seq,
                offset: 0,
            },
        )
        .unwrap();
    }

    fn events(log: &AuditLog) -> Vec<String> {
        let mut files = rotated_files(log.path()).unwrap();
        files.push(log.path().to_path_buf());
        files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .map(|l| {
                let v: Value = serde_json::from_str(&l).unwrap();
                event_name(&v).unwrap_or_default().to_string()
            })
            .collect()
    }

    #[test]
    fn a_rotated_file_is_kept_while_a_reader_is_behind_and_deleted_once_it_caught_up() {
        let dir = crate::audit::scratch_dir();
        let sink = dir.join("siem.cursor");
        let mut log = retained_log(&dir, 0, vec![sink.clone()]);
        let policy = RotationPolicy {
            max_bytes: 1,
            keep: 1,
        };
        for _ in 0..3 {
            log.append(&TestEvent::n(0)).unwrap();
            assert!(log.rotate_if_due(policy).unwrap().is_some());
        }
        // Three rotated files, one to keep: the sink has read nothing, so all stay.
        let kept = rotated_files(log.path()).unwrap();
        assert_eq!(kept.len(), 3, "{kept:?}");
        assert!(!events(&log).contains(&"audit.files_deleted".to_string()));
        // The sink has delivered the first file only: it alone may go.
        let first_last = rotated_last_seq(&kept[0]).unwrap();
        store_cursor(&sink, &kept[0], first_last);
        log.apply_retention().unwrap();
        assert_eq!(rotated_files(log.path()).unwrap(), kept[1..].to_vec());
        // Caught up: everything beyond `keep` goes, named in a record written before.
        store_cursor(&sink, log.path(), log.written().seq);
        log.apply_retention().unwrap();
        assert_eq!(rotated_files(log.path()).unwrap(), kept[2..].to_vec());
        let text = std::fs::read_to_string(log.path()).unwrap();
        let deleted: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| event_name(r) == Some("audit.files_deleted"))
            .collect();
        assert_eq!(deleted.len(), 2);
        assert_eq!(
            record_field(&deleted[1], "deleted_files"),
            Some(&serde_json::json!([file_name(&kept[1])]))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_cursor_of_another_chain_or_a_missing_one_consumes_nothing() {
        let dir = crate::audit::scratch_dir();
        let sink = dir.join("siem.cursor");
        let anchor = dir.join("anchor.cursor");
        let mut log = retained_log(&dir, 0, vec![sink.clone(), anchor.clone()]);
        let policy = RotationPolicy {
            max_bytes: 1,
            keep: 0,
        };
        log.append(&TestEvent::n(0)).unwrap();
        log.rotate_if_due(policy).unwrap();
        log.append(&TestEvent::n(0)).unwrap();
        // The sink is far ahead, but in a chain these files are not.
        cursor::store(
            &sink,
            &cursor::Cursor {
                chain: "ab".repeat(32),
                seq: 1_000,
                offset: 0,
            },
        )
        .unwrap();
        store_cursor(&anchor, log.path(), 1_000);
        log.rotate_if_due(policy).unwrap();
        assert_eq!(
            rotated_files(log.path()).unwrap().len(),
            2,
            "kept for the sink"
        );
        std::fs::remove_file(&sink).unwrap();
        log.apply_retention().unwrap();
        assert_eq!(
            rotated_files(log.path()).unwrap().len(),
            2,
            "no cursor: kept"
        );
        store_cursor(&sink, log.path(), log.written().seq);
        log.apply_retention().unwrap();
        assert!(rotated_files(log.path()).unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn with_no_reader_no_rotated_file_is_deleted_and_a_full_budget_refuses() {
        let dir = crate::audit::scratch_dir();
        let mut log = retained_log(&dir, 6_000, Vec::new());
        let policy = RotationPolicy {
            max_bytes: 1_500,
            keep: 1,
        };
        let big = TestEvent {
            i: 0,
            tag: Box::leak("x".repeat(400).into_boxed_str()),
        };
        let mut rotations = 0;
        let mut refused = None;
        for i in 0..100 {
            match log.append(&big) {
                Ok(_) => rotations += usize::from(log.rotate_if_due(policy).unwrap().is_some()),
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
        }
        let (_, err) = refused.expect("the budget was never reached");
        assert!(matches!(err, AuditError::BudgetExhausted { .. }), "{err}");
        assert!(err.to_string().contains("none is configured"), "{err}");
        // Beyond `keep` and over the budget, yet every rotated file is still there.
        assert!(rotations > 1, "{rotations} rotations");
        assert_eq!(rotated_files(log.path()).unwrap().len(), rotations);
        let names = events(&log);
        assert!(
            !names.contains(&"audit.files_deleted".to_string()),
            "{names:?}"
        );
        assert_eq!(
            record_field(&first_record(log.path()), "deleted_files"),
            Some(&serde_json::json!([])),
            "a rotation deleted a file nobody read"
        );
        // The whole history still verifies as one chain from its first record.
        let mut files = rotated_files(log.path()).unwrap();
        files.push(log.path().to_path_buf());
        assert_eq!(verify_chain(&concat(&files)[..], &[]).unwrap().first_seq, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn revoked(i: u64) -> GrantRevoked {
        GrantRevoked {
            grant_id: format!("g-{i}"),
            subject: Some("spiffe://loggate.local/user/alice".into()),
            revoked_by: "spiffe://loggate.local/user/admin".into(),
            reason: "INC-1".into(),
            revision: None,
        }
    }

    #[test]
    fn a_full_budget_still_records_revocations_within_the_reserve_then_refuses_them_too() {
        let dir = crate::audit::scratch_dir();
        let sink = dir.join("siem.cursor");
        let mut log = retained_log(&dir, 6_000, vec![sink]);
        let policy = RotationPolicy {
            max_bytes: 1_500,
            keep: 10,
        };
        let big = TestEvent {
            i: 0,
            tag: Box::leak("x".repeat(400).into_boxed_str()),
        };
        let mut full = false;
        for _ in 0..100 {
            if log.append(&big).is_err() {
                full = true;
                break;
            }
            log.rotate_if_due(policy).unwrap();
        }
        assert!(full, "the budget was never reached");
        // The budget is exhausted: a revocation is recorded all the same, other events not.
        log.append(&revoked(0))
            .expect("a revocation within the reserve");
        assert!(matches!(
            log.append(&TestEvent::n(1)),
            Err(AuditError::BudgetExhausted { .. })
        ));
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(text.contains("\"g-0\""), "the revocation is on disk");
        // The reserve is bounded: revocations are refused too once it is used up.
        let mut refused_at = None;
        for i in 1..10_000 {
            if let Err(e) = log.append(&revoked(i)) {
                assert!(matches!(e, AuditError::BudgetExhausted { .. }), "{e}");
                refused_at = Some(i);
                break;
            }
        }
        let used = log.over_budget().map(|(used, _)| used).unwrap_or(0);
        assert!(refused_at.is_some(), "the reserve never ran out");
        let reserve_end = 6_000 + ACCESS_REDUCING_RESERVE;
        assert!(
            (reserve_end..reserve_end + 2_000).contains(&used),
            "{used} bytes used"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_full_budget_with_nothing_consumed_refuses_events_until_the_reader_catches_up() {
        let dir = crate::audit::scratch_dir();
        let sink = dir.join("siem.cursor");
        let mut log = retained_log(&dir, 6_000, vec![sink.clone()]);
        let policy = RotationPolicy {
            max_bytes: 1_500,
            keep: 10,
        };
        let big = TestEvent {
            i: 0,
            tag: Box::leak("x".repeat(400).into_boxed_str()),
        };
        let mut refused = None;
        for i in 0..100 {
            match log.append(&big) {
                Ok(_) => log.rotate_if_due(policy).map(|_| ()).unwrap(),
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
        }
        let (at, err) = refused.expect("the budget was never reached");
        assert!(at >= 3, "refused after {at} events");
        assert!(matches!(err, AuditError::BudgetExhausted { .. }), "{err}");
        assert!(
            err.to_string().contains("not yet delivered to: siem"),
            "{err}"
        );
        // Still refused on the next pass: nothing was consumed.
        log.apply_retention().unwrap();
        assert!(log.append(&TestEvent::n(0)).is_err());
        let names = events(&log);
        assert_eq!(
            names
                .iter()
                .filter(|n| *n == "audit.budget_exhausted")
                .count(),
            1
        );
        // The sink catches up: the next pass deletes, clears the budget, and events go on.
        store_cursor(&sink, log.path(), log.written().seq);
        log.apply_retention().unwrap();
        log.append(&TestEvent::n(0)).unwrap();
        let names = events(&log);
        assert!(
            names.contains(&"audit.files_deleted".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"audit.budget_recovered".to_string()),
            "{names:?}"
        );
        // What is kept still verifies as one chain.
        let mut files = rotated_files(log.path()).unwrap();
        files.push(log.path().to_path_buf());
        verify_chain(&concat(&files)[..], &[]).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn file_holding_finds_the_oldest_rotated_file_reaching_a_seq_else_the_current_one() {
        let dir = crate::audit::scratch_dir();
        let path = dir.join("audit.jsonl");
        let mut log = AuditLog::open(&path, "web-1").unwrap();
        log.append(&TestEvent::n(0)).unwrap(); // 1
        let a = log.rotate(10).unwrap(); // 2 is the rotation record of the next file
        log.append(&TestEvent::n(0)).unwrap(); // 3
        let b = log.rotate(10).unwrap();
        log.append(&TestEvent::n(0)).unwrap(); // 5
        assert_eq!(
            (rotated_last_seq(&a), rotated_last_seq(&b)),
            (Some(1), Some(3))
        );
        assert_eq!(file_holding(&path, 1).unwrap(), a);
        assert_eq!(file_holding(&path, 2).unwrap(), b);
        assert_eq!(file_holding(&path, 3).unwrap(), b);
        assert_eq!(file_holding(&path, 4).unwrap(), path);
        assert_eq!(file_holding(&path, 99).unwrap(), path);
        let (opened, _) = open_holding(&path, 2).unwrap().unwrap();
        assert_eq!(opened, b);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
