//! Off-host anchoring: sends every signed checkpoint of the agent's audit file to the controller,
//! which keeps them append-only (root on this host can rewrite and re-sign the file; it cannot
//! reach back into the controller).
//!
//! The audit files are the spool. On each connection the controller tells which checkpoint it
//! received last; the sender finds it in the file holding the record after it (a rotated file
//! `audit.jsonl.<last seq>` or the current one) and walks the chain forward from there, rotated
//! files in order, then the current file, sending the checkpoints after it; when no retained file
//! holds it (the files were reset or rewritten) it sends every checkpoint from the oldest
//! retained file, and the controller judges. Delivery is at-least-once (the controller ignores
//! duplicates) and outlives controller outages. What the controller has acknowledged is kept in
//! `<state_dir>/anchor.cursor`, only so that retention deletes no rotated file whose checkpoints
//! the controller does not hold yet. This task only reads the files: it never blocks reads or
//! the writer.

use crate::{watch, Shared};
use anyhow::Context;
use loggate_core::audit::ship::cursor::{self, Cursor};
use loggate_core::audit::ship::spool::seq_of;
use loggate_core::audit::{
    chain_id, continues_chain, hash_of_line_before, open_holding, Checkpoint, VerifyKey,
    CHECKPOINT_EVENT,
};
use loggate_core::backoff::Backoff;
use loggate_proto as pb;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How often the file is looked at for new checkpoints.
const POLL: Duration = Duration::from_secs(1);
/// One report's size, well inside the controller's limits (64 lines, 64 KiB).
const MAX_BATCH_LINES: usize = 32;
const MAX_BATCH_BYTES: usize = 32 * 1024;
/// The longest first line read to name a file's chain.
const MAX_FIRST_LINE: u64 = 1 << 20;

/// The next audit file does not continue the chain read so far (see [`Spool::advance`]):
/// walking on would take another chain's file for the next one, and go round forever.
#[derive(Debug, thiserror::Error)]
#[error("the audit file {file} (first record seq {first_seq}) does not continue the one read through seq {last_seq}: the chain was reset or files were replaced beside rotated ones (check them with `loggate audit verify`)")]
struct ChainBreak {
    file: String,
    first_seq: u64,
    last_seq: u64,
}

/// Where the checkpoint sender keeps what the controller has acknowledged (read by retention).
pub fn cursor_path(state_dir: &Path) -> PathBuf {
    state_dir.join("anchor.cursor")
}

pub async fn run(shared: Arc<Shared>, key: VerifyKey) {
    let mut backoff = watch::CONTROLLER_BACKOFF;
    loop {
        if let Err(e) = anchor_once(&shared, &key, &mut backoff).await {
            if e.downcast_ref::<ChainBreak>().is_some() {
                tracing::error!(
                    "sending audit checkpoints to the controller stopped: {e:#}; rotated audit files are kept (and the audit budget fills) until the agent is restarted"
                );
                return;
            }
            tracing::warn!("sending audit checkpoints to the controller: {e:#}");
        }
        backoff.pause().await;
    }
}

async fn anchor_once(
    shared: &Shared,
    key: &VerifyKey,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let durable = shared.audit_log.durable();
    let cursor_file = cursor_path(&shared.config.state_dir);
    let mut client = watch::connect_current(&shared.config).await?;
    let report = |lines: Vec<String>| pb::ReportCheckpointsRequest {
        agent_id: shared.config.id.clone(),
        checkpoint_key: key.to_text(),
        lines,
    };
    let held = watch::answered(
        "a checkpoint report",
        client.report_checkpoints(report(Vec::new())),
    )
    .await?
    .into_inner();
    // Checkpoints go only to the agent's own controller cluster (`cluster.rs`).
    shared.cluster.check(&held.cluster_id)?;
    backoff.reset();
    let mut spool = Spool::open(
        &shared.config.audit_log,
        held.last_sealed_seq,
        &held.last_head,
    )
    .await?;
    if let Some(at) = spool.acknowledged() {
        store_cursor(&cursor_file, &at);
    }
    loop {
        let batch = spool.next_batch(durable.get()).await?;
        if batch.lines.is_empty() {
            if !spool.advance().await? {
                tokio::time::sleep(POLL).await;
            }
            continue;
        }
        let sent = batch.lines.len();
        let stored = watch::answered(
            "a checkpoint report",
            client.report_checkpoints(report(batch.lines)),
        )
        .await?
        .into_inner();
        tracing::debug!(
            sent,
            stored = stored.stored,
            "checkpoints sent to the controller"
        );
        // A cursor advances only on the pinned cluster's acknowledgement.
        shared.cluster.check(&stored.cluster_id)?;
        if let Some(at) = batch.through {
            store_cursor(&cursor_file, &at);
        }
    }
}

/// Keeps what the controller acknowledged; a failure only delays retention (logged).
fn store_cursor(path: &Path, at: &Cursor) {
    if let Err(e) = cursor::store(path, at) {
        tracing::warn!(
            "cannot store the checkpoint sender's cursor {}: {e}; rotated audit files are kept until it can",
            path.display()
        );
    }
}

/// Checkpoint lines to send, and the position of the last one (for the cursor).
struct Batch {
    lines: Vec<String>,
    through: Option<Cursor>,
}

/// The audit files, walked forward from a resume point, yielding checkpoint lines.
struct Spool {
    /// The audit file's path (the current file).
    path: PathBuf,
    reader: BufReader<tokio::fs::File>,
    /// A handle on the open file to read its first line without moving the reader.
    probe: std::fs::File,
    identity: (u64, u64),
    /// The open file's chain identity (hex SHA-256 of its first line), once it has one.
    chain: Option<String>,
    /// Bytes of complete lines read so far.
    offset: u64,
    /// The seq of the last complete line read (0: none).
    last_seq: u64,
    /// A line not yet ended by its newline (the writer is mid-append, or it was torn).
    partial: Vec<u8>,
    /// A checkpoint read but not yet durable (its seq and line), sent once it is.
    held_back: Option<(u64, String)>,
    /// Where the checkpoint the controller already holds was found.
    resumed_at: Option<u64>,
}

impl Spool {
    /// Opens the file holding the checkpoint that seals `sealed_seq` with `head` (the record
    /// after `sealed_seq`) and moves past it; when there is none (`sealed_seq` 0) or no
    /// retained file holds it, the oldest retained file from its start.
    async fn open(path: &Path, sealed_seq: u64, head: &str) -> anyhow::Result<Spool> {
        if sealed_seq == 0 {
            return Spool::open_holding(path, 1).await;
        }
        let mut spool = Spool::open_holding(path, sealed_seq.saturating_add(1)).await?;
        while let Some(line) = spool.next_line().await? {
            if let Some((seq, c)) = checkpoint_of(&line) {
                if c.sealed_seq == sealed_seq && c.head == head {
                    spool.resumed_at = Some(seq);
                    return Ok(spool);
                }
            }
        }
        tracing::warn!(
            "the controller's last checkpoint (sealing seq {sealed_seq}) is not in the audit files of {}; sending all of their checkpoints",
            path.display()
        );
        Spool::open_holding(path, 1).await
    }

    /// Opens the file holding record `seq` (see [`open_holding`]) at its start.
    async fn open_holding(path: &Path, seq: u64) -> anyhow::Result<Spool> {
        let (opened, file) = open_holding(path, seq)
            .with_context(|| format!("cannot open the audit file {}", path.display()))?
            .with_context(|| format!("the audit file {} does not exist", path.display()))?;
        let probe = file
            .try_clone()
            .with_context(|| format!("cannot open the audit file {}", opened.display()))?;
        let meta = file.metadata()?;
        Ok(Spool {
            path: path.to_path_buf(),
            chain: first_line_hash(&probe),
            probe,
            reader: BufReader::with_capacity(256 * 1024, tokio::fs::File::from_std(file)),
            identity: (meta.dev(), meta.ino()),
            offset: 0,
            last_seq: 0,
            partial: Vec::new(),
            held_back: None,
            resumed_at: None,
        })
    }

    /// The position of the checkpoint the controller said it holds, when it was found.
    fn acknowledged(&mut self) -> Option<Cursor> {
        let seq = self.resumed_at?;
        self.cursor_at(seq)
    }

    fn cursor_at(&mut self, seq: u64) -> Option<Cursor> {
        if self.chain.is_none() {
            self.chain = first_line_hash(&self.probe);
        }
        Some(Cursor {
            chain: self.chain.clone()?,
            seq,
            offset: 0,
        })
    }

    /// The next complete line, or `None` at the end of what is written so far.
    async fn next_line(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let n = self.reader.read_until(b'\n', &mut self.partial).await?;
        if n == 0 || self.partial.last() != Some(&b'\n') {
            return Ok(None);
        }
        self.offset += self.partial.len() as u64;
        let mut line = std::mem::take(&mut self.partial);
        line.pop();
        if let Some(seq) = seq_of(&line) {
            self.last_seq = seq;
        }
        Ok(Some(line))
    }

    /// The checkpoint lines written since the last call, at most one report's worth, up to the
    /// record `durable_seq`: a record not yet synced may still be cut off by a failed sync, and
    /// the controller must never hold a checkpoint the file then loses.
    async fn next_batch(&mut self, durable_seq: u64) -> anyhow::Result<Batch> {
        let mut lines = Vec::new();
        let mut through = None;
        let mut bytes = 0;
        while lines.len() < MAX_BATCH_LINES && bytes < MAX_BATCH_BYTES {
            let (seq, line) = match self.held_back.take() {
                Some(held) => held,
                None => {
                    let Some(line) = self.next_line().await? else {
                        break;
                    };
                    let Some((seq, _)) = checkpoint_of(&line) else {
                        continue;
                    };
                    (
                        seq,
                        String::from_utf8(line).context("checkpoint line is not UTF-8")?,
                    )
                }
            };
            if seq > durable_seq {
                self.held_back = Some((seq, line));
                break;
            }
            bytes += line.len();
            lines.push(line);
            through = Some(seq);
        }
        let through = match through {
            Some(seq) => self.cursor_at(seq),
            None => None,
        };
        Ok(Batch { lines, through })
    }

    /// At the end of the open file: when the record after the last one read is in another
    /// file (the open one was rotated), opens that one from its start and returns `true`. A
    /// current file that shrank is an error: the caller starts over from what the controller
    /// holds.
    async fn advance(&mut self) -> anyhow::Result<bool> {
        if self.held_back.is_some() || !self.partial.is_empty() {
            return Ok(false); // the open file is not finished
        }
        let next = self.last_seq.saturating_add(1);
        let Some((opened, file)) = open_holding(&self.path, next)? else {
            return Ok(false); // between a rename and the new file: wait for it
        };
        let meta = file.metadata()?;
        let same = (meta.dev(), meta.ino()) == self.identity;
        let shrunk = self.probe.metadata()?.len() < self.offset;
        if same && !shrunk {
            return Ok(false);
        }
        if shrunk {
            anyhow::bail!(
                "the audit file {} was shortened; starting over",
                self.path.display()
            );
        }
        // The next file must continue the last line read (`audit.rotated` naming its hash), or
        // be the current file starting a new chain (a reset, which the controller judges).
        let first = first_line(&file);
        let first_seq = first.as_deref().and_then(seq_of);
        let last_hash = hash_of_line_before(&self.probe, self.offset)?;
        let continues = match (&first, &last_hash) {
            (Some(first), Some(last)) => continues_chain(first, last),
            _ => false,
        };
        let reset = first_seq == Some(1) && opened == self.path;
        if !continues && !reset {
            return Err(ChainBreak {
                file: opened.display().to_string(),
                first_seq: first_seq.unwrap_or(0),
                last_seq: self.last_seq,
            }
            .into());
        }
        if reset {
            tracing::warn!(
                "the audit file after seq {} starts a new chain at seq 1: the chain was reset; sending its checkpoints, the controller judges",
                self.last_seq
            );
        }
        let last_seq = self.last_seq;
        *self = Spool::open_holding(&self.path, next).await?;
        self.last_seq = last_seq;
        Ok(true)
    }
}

/// The hex SHA-256 of the first complete line of `file` (its chain identity), read in place.
fn first_line_hash(file: &std::fs::File) -> Option<String> {
    first_line(file).map(|l| chain_id(&l))
}

/// The first complete line of `file` (without its newline), read without moving any reader.
fn first_line(file: &std::fs::File) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while (buf.len() as u64) < MAX_FIRST_LINE {
        let n = file.read_at(&mut chunk, buf.len() as u64).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            buf.truncate(end);
            return Some(buf);
        }
    }
    None
}

/// The checkpoint a line holds, with the line's own seq, if it is one (other records are
/// skipped without parsing).
fn checkpoint_of(line: &[u8]) -> Option<(u64, Checkpoint)> {
    memchr::memmem::find(line, CHECKPOINT_EVENT.as_bytes())?;
    let record: serde_json::Value = serde_json::from_slice(line).ok()?;
    let seq = loggate_core::audit::record_seq(&record)?;
    Some((seq, Checkpoint::from_record(&record).ok()??))
}

#[cfg(test)]
mod tests {
    use super::*;
    use loggate_core::audit::{AuditLog, CheckpointKey, CheckpointPolicy};

    /// An audit file of 9 events by web-1 with a checkpoint after every 3: checkpoints are
    /// seq 4 (sealing 3), 8 (sealing 7) and 12 (sealing 11).
    fn audit_file(dir: &Path) -> PathBuf {
        let key = CheckpointKey::load_or_create(&dir.join("audit.key")).unwrap();
        let path = dir.join("audit.jsonl");
        let policy = CheckpointPolicy {
            every: 3,
            interval: Duration::from_secs(3600),
        };
        let mut log = AuditLog::open(&path, "web-1")
            .unwrap()
            .with_checkpoints(key, policy);
        for i in 0..9 {
            log.append(&loggate_core::audit::events::AuditTornTailDiscarded { bytes_discarded: i })
                .unwrap();
        }
        path
    }

    fn sealed(batch: &Batch) -> Vec<u64> {
        batch
            .lines
            .iter()
            .map(|l| Checkpoint::parse_line(l).unwrap().sealed_seq)
            .collect()
    }

    #[tokio::test]
    async fn sends_only_durable_checkpoints_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = audit_file(dir.path());
        let mut spool = Spool::open(&path, 0, "").await.unwrap();
        assert_eq!(sealed(&spool.next_batch(9).await.unwrap()), vec![3, 7]);
        assert!(
            spool.next_batch(11).await.unwrap().lines.is_empty(),
            "seq 12 is not durable yet"
        );
        assert_eq!(sealed(&spool.next_batch(12).await.unwrap()), vec![11]);
        assert!(spool.next_batch(u64::MAX).await.unwrap().lines.is_empty());
    }

    #[tokio::test]
    async fn resumes_after_the_controllers_last_checkpoint_or_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = audit_file(dir.path());
        let all = Spool::open(&path, 0, "")
            .await
            .unwrap()
            .next_batch(u64::MAX)
            .await
            .unwrap();
        let second = Checkpoint::parse_line(&all.lines[1]).unwrap();
        let mut spool = Spool::open(&path, second.sealed_seq, &second.head)
            .await
            .unwrap();
        assert_eq!(sealed(&spool.next_batch(u64::MAX).await.unwrap()), vec![11]);
        // The controller holds a checkpoint this file does not: everything is sent.
        let mut spool = Spool::open(&path, 7, &"0".repeat(64)).await.unwrap();
        assert_eq!(
            sealed(&spool.next_batch(u64::MAX).await.unwrap()),
            vec![3, 7, 11]
        );
    }

    /// Every checkpoint the spool yields from where it is, walking forward, until it has
    /// nothing more (bounded).
    async fn drain(spool: &mut Spool) -> Vec<u64> {
        let mut out = Vec::new();
        for _ in 0..100 {
            let batch = spool.next_batch(u64::MAX).await.unwrap();
            if batch.lines.is_empty() {
                if !spool.advance().await.unwrap() {
                    break;
                }
                continue;
            }
            out.extend(sealed(&batch));
        }
        out
    }

    /// Like [`audit_file`], rotated after every 3 events: checkpoints seal seq 3 (the rotation
    /// seal, at 4), then the new file starts at 5 (`audit.rotated`), …
    fn rotated_audit_files(dir: &Path) -> (PathBuf, Vec<u64>) {
        let key = CheckpointKey::load_or_create(&dir.join("audit.key")).unwrap();
        let path = dir.join("audit.jsonl");
        let policy = CheckpointPolicy {
            every: 1000,
            interval: Duration::from_secs(3600),
        };
        let mut log = AuditLog::open(&path, "web-1")
            .unwrap()
            .with_checkpoints(key, policy);
        let mut seals = Vec::new();
        for round in 0..3 {
            for i in 0..3 {
                log.append(&dropped(round * 3 + i)).unwrap();
            }
            let rotated = log.rotate(100).unwrap();
            let last = loggate_core::audit::rotated_last_seq(&rotated).unwrap();
            seals.push(last - 1); // the sealing checkpoint is the file's last record
        }
        log.append(&dropped(9)).unwrap();
        log.checkpoint().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        seals.push(loggate_core::audit::record_seq(&last).unwrap() - 1);
        (path, seals)
    }

    /// Any event will do for filling an audit file.
    fn dropped(i: u64) -> loggate_core::audit::events::GrantDropped {
        loggate_core::audit::events::GrantDropped {
            grant_id: format!("g-{i:016x}"),
            reason: "test".into(),
        }
    }

    #[tokio::test]
    async fn walks_every_rotated_file_after_the_controllers_checkpoint_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (path, seals) = rotated_audit_files(dir.path());
        assert_eq!(loggate_core::audit::rotated_files(&path).unwrap().len(), 3);
        // From the start: every checkpoint of every retained file, oldest first.
        let mut spool = Spool::open(&path, 0, "").await.unwrap();
        assert_eq!(drain(&mut spool).await, seals);
        // The controller holds the first file's seal: the sender resumes in that rotated file
        // and sends every later one, across both other rotations, in order.
        let first_file = &loggate_core::audit::rotated_files(&path).unwrap()[0];
        let text = std::fs::read_to_string(first_file).unwrap();
        let held = Checkpoint::parse_line(text.lines().last().unwrap()).unwrap();
        assert_eq!(held.sealed_seq, seals[0]);
        let mut spool = Spool::open(&path, held.sealed_seq, &held.head)
            .await
            .unwrap();
        let at = spool.acknowledged().unwrap();
        assert_eq!(at.seq, seals[0] + 1, "the cursor names the held checkpoint");
        assert_eq!(drain(&mut spool).await, seals[1..].to_vec());
    }

    #[tokio::test]
    async fn a_chain_reset_beside_rotated_files_stops_the_sender_instead_of_looping() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = rotated_audit_files(dir.path());
        // A new chain at seq 1 as the current file, as an earlier build started one beside
        // the rotated files (this build's `open` continues them instead).
        let other = tempfile::tempdir().unwrap();
        let b = audit_file(other.path());
        std::fs::rename(&b, &path).unwrap();
        let mut spool = Spool::open(&path, 0, "").await.unwrap();
        let mut broke = None;
        for _ in 0..100 {
            let batch = spool.next_batch(u64::MAX).await.unwrap();
            if !batch.lines.is_empty() {
                continue;
            }
            match spool.advance().await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    broke = Some(e);
                    break;
                }
            }
        }
        let err = broke.expect("the sender walked on (or round) instead of stopping");
        assert!(err.downcast_ref::<ChainBreak>().is_some(), "{err:#}");
    }

    #[tokio::test]
    async fn a_shortened_file_makes_the_spool_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = audit_file(dir.path());
        let mut spool = Spool::open(&path, 0, "").await.unwrap();
        spool.next_batch(u64::MAX).await.unwrap();
        assert!(!spool.advance().await.unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(10)
            .unwrap();
        assert!(spool.advance().await.is_err());
    }

    #[tokio::test]
    async fn a_checkpoint_written_to_the_old_file_just_before_rotation_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = audit_file(dir.path());
        let mut spool = Spool::open(&path, 0, "").await.unwrap();
        let before = spool.next_batch(u64::MAX).await.unwrap().lines.len();
        // Rotation: a sealing checkpoint lands in the open file, which is then renamed away.
        let key = CheckpointKey::load_or_create(&dir.path().join("k2")).unwrap();
        let mut log = AuditLog::open(&path, "web-1")
            .unwrap()
            .with_checkpoints(key, CheckpointPolicy::default());
        log.rotate(10).unwrap();
        drop(log);
        let rest = drain(&mut spool).await;
        assert_eq!(
            rest.len(),
            1,
            "the rotation's seal, then nothing in the new file"
        );
        assert!(before > 0);
    }
}
