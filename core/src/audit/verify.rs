//! `loggate audit verify`: checks an audit file's hash chain and its signed checkpoints.

use super::anchor::Checkpoint;
use super::checkpoint::VerifyKey;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// What [`verify_chain`] found in an intact file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// How many records it holds.
    pub records: u64,
    /// The `seq` of its first record.
    pub first_seq: u64,
    /// The `seq` of its last record.
    pub last_seq: u64,
    /// SHA-256 of the last line (the chain head), hex; 64 zeros for an empty file.
    pub head: String,
    /// How many checkpoint records it holds.
    pub checkpoints: u64,
    /// The sequence number of the last checkpoint, which seals everything up to it (0: none).
    pub sealed_through: u64,
    /// Whether checkpoint signatures were checked (keys were given).
    pub signatures_checked: bool,
    /// The rotated file this input continues (its first record is `audit.rotated`), whose
    /// records were not checked; `None` when the input starts at `seq` 1.
    pub continues_from: Option<String>,
    /// The highest `sealed_seq` of the external checkpoints (held off the host) that the file
    /// matched (0: none given, or none matched).
    pub anchored_through: u64,
}

/// The first place an audit file's chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ChainBreak {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong there, in one sentence.
    pub reason: String,
}

/// Checks an audit file: every line is complete and parses, `seq` starts at 1 and grows by one,
/// `prev` is the SHA-256 of the previous line's exact bytes, and every checkpoint seals the
/// chain as it stood and (when `keys` are given) carries a valid signature by one of them.
/// An edited, deleted, inserted or reordered line breaks it. Truncation of the end and a
/// re-signed rewrite need checkpoints held elsewhere: see [`verify_chain_anchored`].
/// Rotated files are checked together by passing them in order, concatenated; a retained file
/// may also start with the `audit.rotated` record that continues an older one (see
/// `ChainSummary::continues_from`).
pub fn verify_chain(
    input: impl std::io::BufRead,
    keys: &[VerifyKey],
) -> Result<ChainSummary, ChainBreak> {
    verify_chain_anchored(input, keys, &[])
}

/// [`verify_chain`], and the file against checkpoints held off the host (`external`, e.g. the
/// controller's): the line at each one's `sealed_seq` must hash to its `head` (else the file was
/// rewritten, however consistently), and the file must reach every `sealed_seq` (else its tail
/// was cut off). The file is read once, line by line.
pub fn verify_chain_anchored(
    mut input: impl std::io::BufRead,
    keys: &[VerifyKey],
    external: &[Checkpoint],
) -> Result<ChainSummary, ChainBreak> {
    let mut anchors: BTreeMap<u64, Vec<&Checkpoint>> = BTreeMap::new();
    for c in external {
        anchors.entry(c.sealed_seq).or_default().push(c);
    }
    let mut summary = ChainSummary {
        records: 0,
        first_seq: 0,
        last_seq: 0,
        head: "0".repeat(64),
        checkpoints: 0,
        sealed_through: 0,
        signatures_checked: !keys.is_empty(),
        continues_from: None,
        anchored_through: 0,
    };
    let mut last_checkpoint_ts = i64::MIN;
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        number += 1;
        let fail = |reason: String| ChainBreak {
            line: number,
            reason,
        };
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        if n == 0 {
            let beyond = summary
                .last_seq
                .checked_add(1)
                .and_then(|next| anchors.range(next..).next());
            return match beyond {
                Some((sealed, _)) => Err(fail(format!(
                    "the file ends at seq {}, but a checkpoint held off the host seals seq {sealed}: \
                     the tail was cut off",
                    summary.last_seq
                ))),
                None => Ok(summary),
            };
        }
        let Some(body) = line.strip_suffix(b"\n") else {
            return Err(fail(
                "the last line is incomplete (torn write or truncation)".into(),
            ));
        };
        let record: Value =
            serde_json::from_slice(body).map_err(|e| fail(format!("not a JSON record ({e})")))?;
        let (seq, prev) = super::chain_link(&record).map_err(fail)?;
        if summary.records == 0 && seq != 1 {
            // A retained file after rotation starts where the rotated one ended.
            if let Some((before, head, previous)) = super::rotate::continuation(&record) {
                summary.last_seq = before;
                summary.head = head.to_string();
                summary.continues_from = Some(previous.to_string());
            }
        }
        let Some(expected_seq) = summary.last_seq.checked_add(1) else {
            return Err(fail(format!(
                "a record follows seq {}, the largest possible (the file was forged or damaged)",
                summary.last_seq
            )));
        };
        if seq != expected_seq {
            return Err(fail(format!(
                "seq is {seq}, expected {expected_seq} (a record was deleted, inserted or moved)"
            )));
        }
        if prev != summary.head {
            return Err(fail(format!(
                "prev does not match the previous line's hash (line {} was altered, or lines were reordered)",
                number.saturating_sub(1)
            )));
        }
        if super::event_name(&record) == Some(super::CHECKPOINT_EVENT) {
            let origin =
                check_checkpoint(&record, &summary, keys, &mut last_checkpoint_ts).map_err(fail)?;
            if let Some(held) = external.iter().find(|c| c.origin != origin) {
                return Err(fail(format!(
                    "this file's checkpoints are by {origin:?}, the ones held off the host by {:?}",
                    held.origin
                )));
            }
            summary.checkpoints += 1;
            // Every field of a checkpoint is covered by its own signature.
            summary.sealed_through = seq;
        }
        if summary.records == 0 {
            summary.first_seq = seq;
        }
        summary.records += 1;
        summary.last_seq = seq;
        summary.head = hex::encode(Sha256::digest(body));
        if let Some(held) = anchors.get(&seq) {
            if let Some(other) = held.iter().find(|c| c.head != summary.head) {
                return Err(fail(format!(
                    "seq {seq} hashes to {}, but a checkpoint held off the host sealed it with head \
                     {}: the file was rewritten",
                    summary.head, other.head
                )));
            }
            summary.anchored_through = seq;
        }
    }
}

fn check_checkpoint(
    record: &Value,
    before: &ChainSummary,
    keys: &[VerifyKey],
    last_ts: &mut i64,
) -> Result<String, String> {
    let Some(checkpoint) = Checkpoint::from_record(record)? else {
        return Err("not a checkpoint record".into());
    };
    if checkpoint.sealed_seq != before.last_seq || checkpoint.head != before.head {
        return Err("checkpoint does not seal the chain as it stands before it".into());
    }
    if checkpoint.ts_ms < *last_ts {
        return Err("checkpoint time goes backwards".into());
    }
    *last_ts = checkpoint.ts_ms;
    if !keys.is_empty() {
        checkpoint.verify(keys)?;
    }
    Ok(checkpoint.origin)
}
