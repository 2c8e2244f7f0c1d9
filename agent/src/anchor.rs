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
            tokio::time::sleep(POLL).await;
            spool.check_unchanged().await?;
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

    /// Fails when the file at the path was replaced or shortened, so the caller starts over.
    async fn check_unchanged(&self) -> anyhow::Result<()> {
        let meta = tokio::fs::metadata(&self.path).await?;
        if (meta.dev(), meta.ino()) != self.identity || meta.len() < self.offset {
            anyhow::bail!(
                "the audit file {} was replaced or shortened; starting over",
                self.path.display()
            );
        }
        Ok(())
    }
}

/// The checkpoint a line holds, with the line's own seq, if it is one (other records are
/// skipped without parsing).
fn checkpoint_of(line: &[u8]) -> Option<(u64, Checkpoint)> {
    memchr::memmem::find(line, CHECKPOINT_EVENT.as_bytes())?;
    let record: serde_json::Value = serde_json::from_slice(line).ok()?;
    let seq = record.get("seq")?.as_u64()?;
    Some((seq, Checkpoint::from_record(&record).ok()??))
}
