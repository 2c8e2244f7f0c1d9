//! The audit writer: one JSON object per line, appended and made durable before the action it
//! describes takes effect.
//!
//! Each line carries `seq` (+1 per line, across restarts) and `prev`, the lowercase hex SHA-256 of
//! the previous line's exact bytes (without its newline; 64 zeros for the first line), so an edited,
//! deleted or reordered line breaks the chain. They lead the line, under OCSF's
//! `unmapped.loggate` (files of earlier builds have them as the first two top-level keys: every
//! reader takes both, through [`chain_link`]; see [`ocsf::line`]). Checkpoints, signing and SIEM delivery build on this
//! writer (see the audit-stream issue); everything that audits goes through [`AuditLog::append`].
//!
//! Fail closed: `append` returns an error when the line could not be written *and* synced; callers
//! must then refuse the action (no bytes are served without their audit record on disk).

// Every public item of the audit module says what it is for (issue 17 item 8): other crates,
// the merges onto it and the generated catalogue read these docs.
#![deny(missing_docs)]

mod anchor;
pub mod budget;
mod checkpoint;
pub mod events;
mod group;
pub mod ocsf;
mod rotate;
pub mod ship;
mod verify;

pub use anchor::{read_external_checkpoints, Checkpoint, CHECKPOINT_EVENT};
pub use checkpoint::{CheckpointKey, CheckpointPolicy, VerifyKey};
pub use events::AuditEvent;
pub use group::{DurableSeq, SharedAuditLog};
use ocsf::EventType;
pub use rotate::{
    chain_id, continues_chain, file_holding, first_line_hash, hash_of_line_before, open_holding,
    rotated_files, rotated_last_seq, Retention, RotationPolicy,
};
pub use verify::{verify_chain, verify_chain_anchored, ChainBreak, ChainSummary};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

/// The longest line we look back for when recovering the chain head at start.
const MAX_LINE: u64 = 1 << 20;

/// Why an audit record could not be written or the log opened: the caller refuses the action.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading, writing or syncing the file failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The audit file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file's last line is not a record this writer can continue the chain from.
    #[error("audit log {path}: last line is not a valid audit record ({why})")]
    Corrupt {
        /// The audit file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The disk budget is used up by rotated files a reader has not consumed yet (see
    /// [`Retention`]): events are refused until it catches up.
    #[error("audit log {path}: its disk budget ({budget} bytes) is used up ({used} bytes) by rotated files not yet delivered to: {waiting_for}; nothing is audited until they catch up (or raise audit_max_bytes)")]
    BudgetExhausted {
        /// The audit file.
        path: PathBuf,
        /// The budget, `audit_max_bytes`.
        budget: u64,
        /// What the audit file and its rotated files take.
        used: u64,
        /// The readers holding the oldest rotated file.
        waiting_for: String,
    },
}

/// The append-only, hash-chained audit file of one process, for one writer. Shared by many
/// threads it is a [`SharedAuditLog`], which syncs their records together (group commit).
pub struct AuditLog {
    path: PathBuf,
    file: File,
    next_seq: u64,
    prev: String,
    host: String,
    checkpoints: Option<Checkpoints>,
    /// File length after the last complete record written (synced or not).
    written_len: u64,
    /// The last record known to be on disk.
    durable: ChainPoint,
    /// A length the file must be cut back to before anything more is written: set when a cut
    /// after a failed write or sync failed too. Appending past unknown bytes would break the
    /// chain, so every append retries the cut first and fails until it works.
    pending_cut: Option<u64>,
    /// Who must consume a rotated file before it is deleted, and the disk budget.
    retention: Option<rotate::RetentionState>,
    /// Every cut of unsynced records ([`AuditLog::cut_to_durable`]), wherever the failed sync
    /// ran (the group's flusher, or a sync of the writer's own: rotation, retention), so that
    /// writers waiting for a record of a cut generation learn it is gone (see [`Cuts`]).
    cuts: Cuts,
    /// Syncs to fail, for the tests of what a failed `fdatasync` does.
    #[cfg(test)]
    fail_syncs: u32,
}

/// How many past cuts are remembered to answer late waiters. A waiter more cuts behind than
/// this is told its record was lost (fail closed), which it may not have been.
const REMEMBERED_CUTS: usize = 64;

/// The generations of the chain: a cut ends one. A record written in generation `g` is on disk
/// once the durable seq reaches it while `g` lasts, or if it was durable when `g` was cut;
/// otherwise the same seq may now name another record, and the writer's action must not happen.
#[derive(Debug, Default)]
pub(crate) struct Cuts {
    generation: u64,
    /// For recent cut generations: (generation, last durable seq at the cut).
    ended: std::collections::VecDeque<(u64, u64)>,
    last_cause: String,
}

/// A position in the chain: the last record's seq, its hash, and the file length after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainPoint {
    seq: u64,
    prev: String,
    len: u64,
}

struct Checkpoints {
    key: CheckpointKey,
    policy: CheckpointPolicy,
    since_last: u64,
    last: Instant,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the audit file and recovers `seq`/`prev` from its last line.
    /// A torn last line (no trailing newline, after a crash) is cut off and recorded.
    pub fn open(path: &Path, host: &str) -> Result<Self, AuditError> {
        let io_err = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let start = len.saturating_sub(MAX_LINE);
        file.seek(SeekFrom::Start(start)).map_err(io_err)?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).map_err(io_err)?;

        let torn = match tail.iter().rposition(|b| *b == b'\n') {
            Some(last_nl) if last_nl + 1 < tail.len() => Some(last_nl + 1),
            None if !tail.is_empty() && start == 0 => Some(0),
            _ => None,
        };
        let mut torn_bytes = 0;
        if let Some(cut) = torn {
            torn_bytes = tail.len() - cut;
            file.set_len(start + cut as u64).map_err(io_err)?;
            tail.truncate(cut);
        }
        let complete = tail.strip_suffix(b"\n").unwrap_or(&tail);
        let last_line = match complete.iter().rposition(|b| *b == b'\n') {
            Some(i) => &complete[i + 1..],
            None => complete,
        };
        // An empty current file next to rotated ones (a crash in `rotate` between the rename
        // and the new file's first record, a file moved aside by hand) continues the newest
        // rotated file's chain: a new chain at seq 1 beside them would make the readers that
        // walk the files by seq take the old files for the new chain's.
        let continued = if last_line.is_empty() {
            rotate::newest_rotated_head(path)?
        } else {
            None
        };
        let (last_seq, prev) = match &continued {
            Some(head) => (head.seq, head.hash.clone()),
            None if last_line.is_empty() => (0, "0".repeat(64)),
            None => (
                line_seq(path, last_line)?,
                hex::encode(Sha256::digest(last_line)),
            ),
        };
        let next_seq = last_seq.checked_add(1).ok_or_else(|| AuditError::Corrupt {
            path: path.to_path_buf(),
            why: "its last seq is the largest possible; the chain cannot continue".into(),
        })?;
        let len = start + tail.len() as u64;
        let mut log = AuditLog {
            path: path.to_path_buf(),
            file,
            durable: ChainPoint {
                seq: next_seq - 1,
                prev: prev.clone(),
                len,
            },
            next_seq,
            prev,
            host: host.to_string(),
            checkpoints: None,
            written_len: len,
            pending_cut: None,
            retention: None,
            cuts: Cuts::default(),
            #[cfg(test)]
            fail_syncs: 0,
        };
        if let Some(head) = continued {
            log.append(&events::AuditRotated {
                previous_file: head.file_name,
                previous_last_seq: head.seq,
                deleted_files: Vec::new(),
            })?;
        }
        if torn_bytes > 0 {
            log.append(&events::AuditTornTailDiscarded {
                bytes_discarded: torn_bytes as u64,
            })?;
        }
        Ok(log)
    }

    /// The audit file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Signs a checkpoint with `key` after every `policy.every` records or `policy.interval`
    /// (see [`AuditLog::checkpoint_if_due`]).
    pub fn with_checkpoints(mut self, key: CheckpointKey, policy: CheckpointPolicy) -> Self {
        self.checkpoints = Some(Checkpoints {
            key,
            policy,
            since_last: 0,
            last: Instant::now(),
        });
        self
    }

    /// Appends one event and syncs it to disk. Returns its sequence number. A checkpoint
    /// follows when `policy.every` records have been written since the last one.
    ///
    /// The record is shaped as an OCSF event (see [`ocsf`]); the event's fields are kept
    /// unchanged under `unmapped.loggate` and read back with [`record_field`].
    pub fn append<E: AuditEvent>(&mut self, event: &E) -> Result<u64, AuditError> {
        let record = Encoded::new(event, &self.path)?;
        let seq = self.append_unsynced(record)?;
        self.sync()?;
        Ok(seq)
    }

    /// Writes a checkpoint if records were written since the last one and the interval passed.
    /// Call it periodically (the agent does, once a second).
    pub fn checkpoint_if_due(&mut self) -> Result<(), AuditError> {
        if self.checkpoint_due() {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Seals the chain as it stands with a signed `audit.checkpoint` record (also at shutdown).
    pub fn checkpoint(&mut self) -> Result<(), AuditError> {
        self.write_checkpoint()?;
        self.sync()
    }

    /// Writes one event without syncing (a checkpoint follows when due). The record is not
    /// durable until a sync covers it: [`SharedAuditLog`] does that for many writers at once.
    pub(crate) fn append_unsynced<E: AuditEvent>(
        &mut self,
        record: Encoded<'_, E>,
    ) -> Result<u64, AuditError> {
        self.check_budget(E::TYPE)?;
        let seq = self.write_record(record)?;
        crate::metrics::audit_record_written(E::TYPE.name);
        if let Some(c) = &mut self.checkpoints {
            c.since_last += 1;
            if c.since_last >= c.policy.every {
                // The event itself is written; a checkpoint that fails is retried by the next
                // append and by `checkpoint_if_due`, which reports the error.
                let _ = self.write_checkpoint();
            }
        }
        Ok(seq)
    }

    /// Fails closed while the audit files' disk budget is exhausted (an access-reducing
    /// event may use the reserve above it: see `rotate::ACCESS_REDUCING`); when this event
    /// would reach it, a retention pass first tries to make room.
    fn check_budget(&mut self, kind: &EventType) -> Result<(), AuditError> {
        let Some(r) = &self.retention else {
            return Ok(());
        };
        if r.refusal(&self.path).is_none() && r.over_budget(self.written_len) {
            self.apply_retention()?;
        }
        let len = self.written_len;
        match self
            .retention
            .as_ref()
            .and_then(|r| r.refusal_of(&self.path, kind, len))
        {
            Some(refused) => Err(refused),
            None => Ok(()),
        }
    }

    pub(crate) fn checkpoint_due(&self) -> bool {
        matches!(&self.checkpoints,
            Some(c) if c.since_last > 0 && c.last.elapsed() >= c.policy.interval)
    }

    /// The chain as written so far (what a sync started now would make durable).
    pub(crate) fn written(&self) -> ChainPoint {
        ChainPoint {
            seq: self.next_seq - 1,
            prev: self.prev.clone(),
            len: self.written_len,
        }
    }

    pub(crate) fn durable_seq(&self) -> u64 {
        self.durable.seq
    }

    /// Records that a sync started at `point` succeeded.
    pub(crate) fn mark_durable(&mut self, point: ChainPoint) {
        if point.seq > self.durable.seq {
            self.durable = point;
        }
    }

    /// After a failed sync nothing written since the last durable record can be trusted to be
    /// on disk: cut it off, so the chain continues from the last durable record. The writers of
    /// the cut records are told their action must not happen.
    pub(crate) fn cut_to_durable(&mut self, cause: &io::Error) {
        self.cuts
            .ended
            .push_back((self.cuts.generation, self.durable.seq));
        if self.cuts.ended.len() > REMEMBERED_CUTS {
            self.cuts.ended.pop_front();
        }
        self.cuts.generation += 1;
        self.cuts.last_cause = cause.to_string();
        self.next_seq = self.durable.seq + 1;
        self.prev = self.durable.prev.clone();
        self.written_len = self.durable.len;
        self.cut_file_to(self.durable.len);
    }

    /// The chain's generation now: a record written now is lost if this changes before the
    /// record is durable (see [`Cuts`]).
    pub(crate) fn generation(&self) -> u64 {
        self.cuts.generation
    }

    /// Whether record `seq`, written in `generation`, was cut off: `None` while that
    /// generation lasts, else `Some(Err(cause))` unless it was durable at the cut.
    pub(crate) fn cut_outcome(&self, generation: u64, seq: u64) -> Option<Result<(), String>> {
        if generation == self.cuts.generation {
            return None;
        }
        let kept = self
            .cuts
            .ended
            .iter()
            .any(|&(g, durable)| g == generation && seq <= durable);
        Some(if kept {
            Ok(())
        } else {
            Err(self.cuts.last_cause.clone())
        })
    }

    /// Syncs the file, or fails as told by the tests.
    fn sync_file(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if self.fail_syncs > 0 {
            self.fail_syncs -= 1;
            return Err(io::Error::other("injected fdatasync failure"));
        }
        self.file.sync_data()
    }

    /// A handle on the same open file, for syncing without holding the writer.
    pub(crate) fn sync_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    fn sync(&mut self) -> Result<(), AuditError> {
        let point = self.written();
        match self.sync_file() {
            Ok(()) => {
                self.mark_durable(point);
                Ok(())
            }
            Err(source) => {
                self.cut_to_durable(&source);
                Err(AuditError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    fn cut_file_to(&mut self, len: u64) {
        self.pending_cut = self.file.set_len(len).err().map(|_| len);
    }

    pub(crate) fn write_checkpoint(&mut self) -> Result<(), AuditError> {
        let Some(c) = &self.checkpoints else {
            return Ok(());
        };
        let sealed = self.next_seq - 1;
        let ts_ms = i64::try_from(
            SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
        )
        .unwrap_or(i64::MAX);
        let sig = c.key.sign(&checkpoint::signed_text(
            &self.host, sealed, &self.prev, ts_ms,
        ));
        let checkpoint = events::AuditCheckpoint {
            origin: self.host.clone(),
            sealed_seq: sealed,
            head: self.prev.clone(),
            ts_ms,
            key_id: c.key.key_id().to_string(),
            sig,
        };
        self.write_record(Encoded::new(&checkpoint, &self.path)?)?;
        if let Some(c) = &mut self.checkpoints {
            c.since_last = 0;
            c.last = Instant::now();
        }
        Ok(())
    }

    pub(crate) fn write_record<E: AuditEvent>(
        &mut self,
        record: Encoded<'_, E>,
    ) -> Result<u64, AuditError> {
        let seq = self.next_seq;
        let next_seq = seq.checked_add(1).ok_or_else(|| AuditError::Corrupt {
            path: self.path.clone(),
            why: "the chain reached the largest seq; start a new audit file".into(),
        })?;
        let source = ocsf::Source::new(&self.host, &self.path);
        let mut line = ocsf::line(
            &source,
            seq,
            &self.prev,
            record.event,
            &record.fields,
            ocsf::Stamp::now(),
        )
        .map_err(|e| AuditError::Io {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        let hash = hex::encode(Sha256::digest(&line));
        line.push(b'\n');
        let io_err = |path: &Path, source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(len) = self.pending_cut {
            self.file.set_len(len).map_err(|e| io_err(&self.path, e))?;
            self.pending_cut = None;
        }
        // One write per line on an O_APPEND file: concurrent readers never see half a record
        // unless the disk fills, which the next open repairs as a torn tail.
        if let Err(e) = self.file.write_all(&line) {
            // Cut off whatever part of the record reached the file, so the chain stays whole
            // and the next append (or the next start) continues from the last good record.
            self.cut_file_to(self.written_len);
            return Err(io_err(&self.path, e));
        }
        self.written_len += line.len() as u64;
        self.next_seq = next_seq;
        self.prev = hash;
        Ok(seq)
    }
}

/// The `seq` of `line`, the last line of the audit file at `path` (for the error).
fn line_seq(path: &Path, line: &[u8]) -> Result<u64, AuditError> {
    let corrupt = |why: String| AuditError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    let record: Value = serde_json::from_slice(line).map_err(|e| corrupt(e.to_string()))?;
    chain_link(&record).map(|(seq, _)| seq).map_err(corrupt)
}

/// The name of a record's event (e.g. `read.allowed`; OCSF `metadata.event_code`). Readers of
/// audit records (the verifier, the sinks, the tests) go through this, [`record_field`] and
/// [`record_fields`], never through the record's layout.
pub fn event_name(record: &Value) -> Option<&str> {
    record
        .pointer("/metadata/event_code")
        .and_then(Value::as_str)
}

/// A record's place in the chain: its `seq` and `prev`, from `unmapped.loggate` or, in a file
/// of an earlier build, from the top level. A record with both, or with neither, is refused:
/// one record has one place in the chain.
pub fn chain_link(record: &Value) -> Result<(u64, &str), String> {
    fn link(at: Option<&Value>) -> Option<Result<(u64, &str), String>> {
        let at = at?;
        let (seq, prev) = (at.get("seq"), at.get("prev"));
        if seq.is_none() && prev.is_none() {
            return None;
        }
        Some(
            match (seq.and_then(Value::as_u64), prev.and_then(Value::as_str)) {
                (Some(seq), Some(prev)) => Ok((seq, prev)),
                (None, _) => Err("seq is missing or not a number".to_string()),
                (_, None) => Err("prev is missing or not a string".to_string()),
            },
        )
    }
    match (
        link(record.pointer("/unmapped/loggate")),
        link(Some(record)),
    ) {
        (Some(link), None) | (None, Some(link)) => link,
        (Some(_), Some(_)) => {
            Err("seq and prev are both at the top level and under unmapped.loggate".into())
        }
        (None, None) => Err("no seq and prev (not an audit record)".into()),
    }
}

/// A record's `seq` (see [`chain_link`]).
pub fn record_seq(record: &Value) -> Option<u64> {
    chain_link(record).ok().map(|(seq, _)| seq)
}

/// One of loggate's own fields of a record (e.g. `grant_id`, or a checkpoint's `head`; kept
/// under OCSF's `unmapped.loggate`).
pub fn record_field<'a>(record: &'a Value, name: &str) -> Option<&'a Value> {
    record_fields(record)?.get(name)
}

/// All of loggate's own fields of a record, exactly as its writer passed them to
/// [`AuditLog::append`]; in records of this layout also the chain's `seq` and `prev`
/// ([`ocsf::CHAIN_FIELDS`]), which no event uses as a field name.
pub fn record_fields(record: &Value) -> Option<&Map<String, Value>> {
    record
        .pointer("/unmapped/loggate")
        .and_then(Value::as_object)
}

/// An event ready to be written: the event itself, which shapes its OCSF objects
/// ([`AuditEvent::ocsf`]), and its own fields, encoded for `unmapped.loggate` before a writer
/// takes the log's lock (see [`SharedAuditLog`]).
pub(crate) struct Encoded<'e, E> {
    event: &'e E,
    fields: Map<String, Value>,
}

impl<'e, E: AuditEvent> Encoded<'e, E> {
    /// Encodes `event`'s fields (`path`: the audit file, for the error).
    pub(crate) fn new(event: &'e E, path: &Path) -> Result<Self, AuditError> {
        Ok(Encoded {
            event,
            fields: event_fields(event, path)?,
        })
    }
}

/// An event's own fields, as they are kept under `unmapped.loggate` (`path`: the audit file,
/// for the error).
fn event_fields(event: &impl AuditEvent, path: &Path) -> Result<Map<String, Value>, AuditError> {
    let failed = |why: String| AuditError::Io {
        path: path.to_path_buf(),
        source: io::Error::other(format!("cannot encode an audit event: {why}")),
    };
    match serde_json::to_value(event).map_err(|e| failed(e.to_string()))? {
        Value::Object(fields) => Ok(fields),
        _ => Err(failed(
            "it is not a JSON object (an event is a struct with named fields)".into(),
        )),
    }
}

/// A fresh scratch folder for the audit module's tests.
#[cfg(test)]
pub(crate) fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lg-audit-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::TestEvent;

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn appends_chained_records_and_resumes_after_reopen() {
        let dir = scratch_dir();
        let path = dir.join("audit.jsonl");
        {
            let mut log = AuditLog::open(&path, "web-1").unwrap();
            assert_eq!(log.append(&TestEvent::n(1)).unwrap(), 1);
            assert_eq!(log.append(&TestEvent::n(2)).unwrap(), 2);
        }
        let mut log = AuditLog::open(&path, "web-1").unwrap();
        assert_eq!(log.append(&TestEvent::n(3)).unwrap(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        let raw: Vec<&str> = text.lines().collect();
        let recs = lines(&path);
        assert_eq!(chain_link(&recs[0]).unwrap(), (1, "0".repeat(64).as_str()));
        for i in 1..3 {
            let (seq, prev) = chain_link(&recs[i]).unwrap();
            assert_eq!(prev, hex::encode(Sha256::digest(raw[i - 1].as_bytes())));
            assert_eq!(seq, (i + 1) as u64);
        }
        for r in &recs {
            assert!(r.get("seq").is_none() && r.get("prev").is_none(), "{r}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn sample_chain(n: u64) -> Vec<String> {
        let dir = scratch_dir();
        let path = dir.join("audit.jsonl");
        let mut log = AuditLog::open(&path, "h").unwrap();
        for i in 0..n {
            log.append(&TestEvent::n(i)).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        text.lines().map(|l| format!("{l}\n")).collect()
    }

    fn check(lines: &[String]) -> Result<ChainSummary, ChainBreak> {
        verify_chain(lines.concat().as_bytes(), &[])
    }

    /// A chain of `n` events with a checkpoint after every 3, and its verification key.
    fn checkpointed_chain(n: u64) -> (Vec<String>, VerifyKey) {
        let dir = scratch_dir();
        let key = CheckpointKey::load_or_create(&dir.join("audit.key")).unwrap();
        let public = key.verify_key();
        let policy = CheckpointPolicy {
            every: 3,
            interval: std::time::Duration::from_secs(3600),
        };
        let path = dir.join("audit.jsonl");
        let mut log = AuditLog::open(&path, "web-1")
            .unwrap()
            .with_checkpoints(key, policy);
        for i in 0..n {
            log.append(&TestEvent::n(i)).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        (text.lines().map(|l| format!("{l}\n")).collect(), public)
    }

    #[test]
    fn checkpoints_seal_the_chain_and_verify_with_the_writers_key() {
        let (lines, key) = checkpointed_chain(7);
        // 7 events + checkpoints after events 3 and 6.
        assert_eq!(lines.len(), 9);
        let summary = verify_chain(lines.concat().as_bytes(), std::slice::from_ref(&key)).unwrap();
        assert_eq!(summary.checkpoints, 2);
        assert_eq!(summary.sealed_through, 8); // the second checkpoint is seq 8, after event 6
        assert!(summary.signatures_checked);
        assert_eq!(summary.last_seq, 9);
    }

    #[test]
    fn checkpoint_signed_by_another_key_is_refused() {
        let (lines, _) = checkpointed_chain(4);
        let (_, stranger) = checkpointed_chain(1);
        let err = verify_chain(lines.concat().as_bytes(), &[stranger]).unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.reason.contains("unknown key"), "{err}");
    }

    #[test]
    fn forged_checkpoint_signature_is_refused() {
        let (mut lines, key) = checkpointed_chain(4);
        let record: Value = serde_json::from_str(&lines[3]).unwrap();
        let sig = record_field(&record, "sig").unwrap().as_str().unwrap();
        let flipped = format!(
            "{}{}",
            if sig.starts_with('0') { "1" } else { "0" },
            &sig[1..]
        );
        lines[3] = lines[3].replace(sig, &flipped);
        let err = verify_chain(lines.concat().as_bytes(), &[key]).unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.reason.contains("signature is invalid"), "{err}");
    }

    #[test]
    fn intact_chain_verifies_and_reports_its_head() {
        let lines = sample_chain(5);
        let summary = check(&lines).unwrap();
        assert_eq!(
            (summary.records, summary.first_seq, summary.last_seq),
            (5, 1, 5)
        );
        let last = lines[4].trim_end_matches('\n');
        assert_eq!(summary.head, hex::encode(Sha256::digest(last.as_bytes())));
    }

    #[test]
    fn edited_line_breaks_the_chain_at_the_next_line() {
        let mut lines = sample_chain(5);
        lines[2] = lines[2].replace("\"i\":2", "\"i\":7");
        assert_eq!(check(&lines).unwrap_err().line, 4);
    }

    #[test]
    fn deleted_line_is_a_sequence_gap() {
        let mut lines = sample_chain(5);
        lines.remove(1);
        let err = check(&lines).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.reason.contains("seq is 3, expected 2"), "{err}");
    }

    #[test]
    fn swapped_lines_are_detected() {
        let mut lines = sample_chain(5);
        lines.swap(1, 2);
        assert_eq!(check(&lines).unwrap_err().line, 2);
    }

    #[test]
    fn torn_last_line_is_reported() {
        let mut lines = sample_chain(3);
        let cut = lines[2].len() / 2;
        lines[2].truncate(cut);
        let err = check(&lines).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.reason.contains("incomplete"), "{err}");
    }

    /// Records an earlier build wrote (`seq` and `prev` at the top level): the examples of
    /// `docs/audit-events.md` as that build generated them, one chained file.
    const OLD_LAYOUT: &str = include_str!("testdata/old-layout.jsonl");

    #[test]
    fn files_in_the_old_layout_still_verify() {
        let summary = verify_chain(OLD_LAYOUT.as_bytes(), &[]).unwrap();
        assert_eq!((summary.records, summary.last_seq), (26, 26));
        assert_eq!(summary.checkpoints, 1);
        // And an edit still breaks them.
        let edited = OLD_LAYOUT.replacen("\"bytes\":156", "\"bytes\":157", 1);
        assert_ne!(edited, OLD_LAYOUT);
        assert!(verify_chain(edited.as_bytes(), &[]).is_err());
    }

    #[test]
    fn an_old_layout_file_is_continued_in_the_new_layout_and_verifies_across_a_rotation() {
        let dir = scratch_dir();
        let path = dir.join("audit.jsonl");
        std::fs::write(&path, OLD_LAYOUT).unwrap();
        let mut log = AuditLog::open(&path, "web-1").unwrap();
        assert_eq!(log.append(&TestEvent::n(1)).unwrap(), 27);
        let rotated = log.rotate(10).unwrap();
        assert_eq!(log.append(&TestEvent::n(2)).unwrap(), 29);
        drop(log);
        let (before, after) = (
            std::fs::read_to_string(&rotated).unwrap(),
            std::fs::read_to_string(&path).unwrap(),
        );
        // The old records are untouched; the new ones are in the new layout.
        assert!(before.starts_with(OLD_LAYOUT));
        assert!(before.lines().nth(26).unwrap().starts_with("{\"unmapped\""));
        assert!(after.starts_with("{\"unmapped\""));
        let both = verify_chain(format!("{before}{after}").as_bytes(), &[]).unwrap();
        assert_eq!((both.first_seq, both.last_seq, both.records), (1, 29, 29));
        let alone = verify_chain(after.as_bytes(), &[]).unwrap();
        assert_eq!(
            alone.continues_from.as_deref(),
            Some("audit.jsonl.000000000027")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_record_with_seq_in_both_places_breaks_the_chain() {
        let lines = sample_chain(2);
        let doubled = lines[1].replacen("{", "{\"seq\":2,\"prev\":\"x\",", 1);
        let err = check(&[lines[0].clone(), doubled]).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.reason.contains("both"), "{err}");
    }

    #[test]
    fn a_record_at_the_largest_seq_ends_the_chain_without_overflow() {
        let dir = scratch_dir();
        let path = dir.join("audit.jsonl");
        let mut log = AuditLog::open(&path, "h").unwrap();
        log.append(&TestEvent::n(1)).unwrap();
        log.rotate(10).unwrap(); // the current file starts with audit.rotated, seq 2
        log.append(&TestEvent::n(2)).unwrap();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // A hostile file: its first record claims the largest seq.
        let forged = lines[0].replacen("\"seq\":2,", &format!("\"seq\":{},", u64::MAX), 1);
        assert_ne!(forged, lines[0]);
        let alone = verify_chain(format!("{forged}\n").as_bytes(), &[]).unwrap();
        assert_eq!(alone.last_seq, u64::MAX);
        let followed = format!("{forged}\n{}\n", lines[1]);
        let err = verify_chain(followed.as_bytes(), &[]).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.reason.contains("largest possible"), "{err}");
        // The writer refuses to continue such a file instead of wrapping around.
        std::fs::write(&path, format!("{forged}\n")).unwrap();
        let err = AuditLog::open(&path, "h").err().expect("refused");
        assert!(matches!(err, AuditError::Corrupt { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn torn_tail_is_cut_recorded_and_chain_continues() {
        let dir = scratch_dir();
        let path = dir.join("audit.jsonl");
        {
            let mut log = AuditLog::open(&path, "h").unwrap();
            log.append(&TestEvent::n(1)).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":2,\"half").unwrap();
        drop(f);
        let mut log = AuditLog::open(&path, "h").unwrap();
        log.append(&TestEvent::n(2)).unwrap();
        let recs = lines(&path);
        assert_eq!(recs.len(), 3);
        assert_eq!(event_name(&recs[1]), Some("audit.torn_tail_discarded"));
        assert_eq!(
            record_field(&recs[1], "bytes_discarded"),
            Some(&Value::from(14))
        );
        assert_eq!(record_seq(&recs[1]), Some(2));
        assert_eq!(record_seq(&recs[2]), Some(3));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
