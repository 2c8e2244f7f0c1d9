//! Off-host anchoring: sends every signed checkpoint of the agent's audit file to the controller,
//! which keeps them append-only (root on this host can rewrite and re-sign the file; it cannot
//! reach back into the controller).
//!
//! The audit file is the spool: no cursor of our own. On each connection the controller tells
//! which checkpoint it received last; when the file holds that checkpoint we send the ones after
//! it, otherwise (the file was reset or rewritten) every checkpoint in the file, and the
//! controller judges. Delivery is at-least-once (the controller ignores duplicates) and outlives
//! controller outages. This task only reads the file: it never blocks reads or the writer.

use crate::{watch, Shared};
use anyhow::Context;
use loggate_core::audit::{Checkpoint, VerifyKey, CHECKPOINT_EVENT};
use loggate_proto as pb;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How often the file is looked at for new checkpoints.
const POLL: Duration = Duration::from_secs(1);
/// One report's size, well inside the controller's limits (64 lines, 64 KiB).
const MAX_BATCH_LINES: usize = 32;
const MAX_BATCH_BYTES: usize = 32 * 1024;

pub async fn run(shared: Arc<Shared>, key: VerifyKey) {
    let mut backoff = watch::MIN_BACKOFF;
    loop {
        if let Err(e) = anchor_once(&shared, &key, &mut backoff).await {
            tracing::warn!("sending audit checkpoints to the controller: {e:#}");
        }
        watch::pause(&mut backoff).await;
    }
}

async fn anchor_once(
    shared: &Shared,
    key: &VerifyKey,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    let durable = shared.audit_log.durable();
    let mut client = watch::connect(&shared.config).await?;
    let report = |lines: Vec<String>| pb::ReportCheckpointsRequest {
        agent_id: shared.config.id.clone(),
        checkpoint_key: key.to_text(),
        lines,
    };
    let held = client
        .report_checkpoints(report(Vec::new()))
        .await?
        .into_inner();
    *backoff = watch::MIN_BACKOFF;
    let mut spool = Spool::open(
        &shared.config.audit_log,
        held.last_sealed_seq,
        &held.last_head,
    )
    .await?;
    loop {
        let batch = spool.next_batch(durable.get()).await?;
        if batch.is_empty() {
            if spool.replaced().await? {
                // Rotation seals the old file with a checkpoint just before it renames it:
                // read the open file to its end (all durable by then) before starting over.
                let rest = spool.next_batch(durable.get()).await?;
                if rest.is_empty() {
                    anyhow::bail!(
                        "the audit file {} was replaced or shortened; starting over",
                        shared.config.audit_log.display()
                    );
                }
                client.report_checkpoints(report(rest)).await?;
                continue;
            }
            tokio::time::sleep(POLL).await;
            continue;
        }
        let sent = batch.len();
        let stored = client.report_checkpoints(report(batch)).await?.into_inner();
        tracing::debug!(
            sent,
            stored = stored.stored,
            "checkpoints sent to the controller"
        );
    }
}

/// The audit file, read forward from a resume point, yielding checkpoint lines.
struct Spool {
    path: PathBuf,
    reader: BufReader<tokio::fs::File>,
    identity: (u64, u64),
    /// Bytes of complete lines read so far.
    offset: u64,
    /// A line not yet ended by its newline (the writer is mid-append, or it was torn).
    partial: Vec<u8>,
    /// A checkpoint read but not yet durable (its seq and line), sent once it is.
    held_back: Option<(u64, String)>,
}

impl Spool {
    /// Opens `path` and moves past the checkpoint sealing `sealed_seq` with `head`; to the
    /// start when there is none (`sealed_seq` 0) or the file does not hold it.
    async fn open(path: &Path, sealed_seq: u64, head: &str) -> anyhow::Result<Spool> {
        let mut spool = Spool::open_at_start(path).await?;
        if sealed_seq == 0 {
            return Ok(spool);
        }
        while let Some(line) = spool.next_line().await? {
            if let Some((_, c)) = checkpoint_of(&line) {
                if c.sealed_seq == sealed_seq && c.head == head {
                    return Ok(spool);
                }
            }
        }
        tracing::warn!(
            "the controller's last checkpoint (sealing seq {sealed_seq}) is not in {}; sending all of its checkpoints",
            path.display()
        );
        Spool::open_at_start(path).await
    }

    async fn open_at_start(path: &Path) -> anyhow::Result<Spool> {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot open the audit file {}", path.display()))?;
        let meta = file.metadata().await?;
        Ok(Spool {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(256 * 1024, file),
            identity: (meta.dev(), meta.ino()),
            offset: 0,
            partial: Vec::new(),
            held_back: None,
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
        Ok(Some(line))
    }

    /// The checkpoint lines written since the last call, at most one report's worth, up to the
    /// record `durable_seq`: a record not yet synced may still be cut off by a failed sync, and
    /// the controller must never hold a checkpoint the file then loses.
    async fn next_batch(&mut self, durable_seq: u64) -> anyhow::Result<Vec<String>> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < MAX_BATCH_LINES && bytes < MAX_BATCH_BYTES {
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
            batch.push(line);
        }
        Ok(batch)
    }

    /// Whether the file at the path was replaced (rotation) or shortened since it was opened.
    async fn replaced(&self) -> anyhow::Result<bool> {
        let meta = tokio::fs::metadata(&self.path).await?;
        Ok((meta.dev(), meta.ino()) != self.identity || meta.len() < self.offset)
    }
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

    fn sealed(lines: &[String]) -> Vec<u64> {
        lines
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
            spool.next_batch(11).await.unwrap().is_empty(),
            "seq 12 is not durable yet"
        );
        assert_eq!(sealed(&spool.next_batch(12).await.unwrap()), vec![11]);
        assert!(spool.next_batch(u64::MAX).await.unwrap().is_empty());
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
        let second = Checkpoint::parse_line(&all[1]).unwrap();
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

    #[tokio::test]
    async fn a_replaced_file_makes_the_spool_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = audit_file(dir.path());
        let mut spool = Spool::open(&path, 0, "").await.unwrap();
        spool.next_batch(u64::MAX).await.unwrap();
        assert!(!spool.replaced().await.unwrap());
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert!(spool.replaced().await.unwrap());
    }

    #[tokio::test]
    async fn a_checkpoint_written_to_the_old_file_just_before_rotation_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = audit_file(dir.path());
        let mut spool = Spool::open(&path, 0, "").await.unwrap();
        let before = spool.next_batch(u64::MAX).await.unwrap().len();
        // Rotation: a sealing checkpoint lands in the open file, which is then renamed away.
        let key = CheckpointKey::load_or_create(&dir.path().join("k2")).unwrap();
        let mut log = AuditLog::open(&path, "web-1")
            .unwrap()
            .with_checkpoints(key, CheckpointPolicy::default());
        log.checkpoint().unwrap();
        drop(log);
        std::fs::rename(&path, dir.path().join("audit.jsonl.old")).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert!(spool.replaced().await.unwrap());
        assert_eq!(spool.next_batch(u64::MAX).await.unwrap().len(), 1);
        assert!(before > 0);
    }
}
