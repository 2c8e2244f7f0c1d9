//! `loggate audit verify`: checks an audit file's hash chain and its signed checkpoints.

use super::checkpoint::{signed_text, VerifyKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What [`verify_chain`] found in an intact file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// SHA-256 of the last line (the chain head), hex; 64 zeros for an empty file.
    pub head: String,
    pub checkpoints: u64,
    /// The sequence number of the last checkpoint, which seals everything up to it (0: none).
    pub sealed_through: u64,
    /// Whether checkpoint signatures were checked (keys were given).
    pub signatures_checked: bool,
    /// The rotated file this input continues (its first record is `audit.rotated`), whose
    /// records were not checked; `None` when the input starts at `seq` 1.
    pub continues_from: Option<String>,
}

/// The first place an audit file's chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ChainBreak {
    /// 1-based line number.
    pub line: u64,
    pub reason: String,
}

/// Checks an audit file: every line is complete and parses, `seq` starts at 1 and grows by one,
/// `prev` is the SHA-256 of the previous line's exact bytes, and every checkpoint seals the
/// chain as it stood and (when `keys` are given) carries a valid signature by one of them.
/// An edited, deleted, inserted or reordered line breaks it. Truncation of the end and a
/// re-signed rewrite need checkpoints held elsewhere: not detected from the file alone.
/// Rotated files are checked together by passing them in order, concatenated; a retained file
/// may also start with the `audit.rotated` record that continues an older one (see
/// `ChainSummary::continues_from`).
pub fn verify_chain(
    mut input: impl std::io::BufRead,
    keys: &[VerifyKey],
) -> Result<ChainSummary, ChainBreak> {
    let mut summary = ChainSummary {
        records: 0,
        first_seq: 0,
        last_seq: 0,
        head: "0".repeat(64),
        checkpoints: 0,
        sealed_through: 0,
        signatures_checked: !keys.is_empty(),
        continues_from: None,
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
            return Ok(summary);
        }
        let Some(body) = line.strip_suffix(b"\n") else {
            return Err(fail(
                "the last line is incomplete (torn write or truncation)".into(),
            ));
        };
        let record: Value =
            serde_json::from_slice(body).map_err(|e| fail(format!("not a JSON record ({e})")))?;
        let seq = record
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| fail("no seq".into()))?;
        let prev = record
            .get("prev")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("no prev".into()))?;
        if summary.records == 0 && seq != 1 {
            // A retained file after rotation starts where the rotated one ended.
            if let Some((before, head, previous)) = super::rotate::continuation(&record) {
                summary.last_seq = before;
                summary.head = head.to_string();
                summary.continues_from = Some(previous.to_string());
            }
        }
        let expected_seq = summary.last_seq + 1;
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
        if super::event_name(&record) == Some("audit.checkpoint") {
            check_checkpoint(&record, &summary, keys, &mut last_checkpoint_ts).map_err(fail)?;
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
    }
}

fn check_checkpoint(
    record: &Value,
    before: &ChainSummary,
    keys: &[VerifyKey],
    last_ts: &mut i64,
) -> Result<(), String> {
    let field = |k: &str| super::record_field(record, k);
    let text = |k: &str| field(k).and_then(Value::as_str).unwrap_or_default();
    let sealed = field("sealed_seq").and_then(Value::as_u64);
    let ts = field("ts_ms").and_then(Value::as_i64).unwrap_or(i64::MIN);
    if sealed != Some(before.last_seq) || text("head") != before.head {
        return Err("checkpoint does not seal the chain as it stands before it".into());
    }
    if ts < *last_ts {
        return Err("checkpoint time goes backwards".into());
    }
    *last_ts = ts;
    if keys.is_empty() {
        return Ok(());
    }
    let key = keys
        .iter()
        .find(|k| k.key_id() == text("key_id"))
        .ok_or_else(|| format!("checkpoint signed by unknown key {:?}", text("key_id")))?;
    let signed = signed_text(text("origin"), before.last_seq, &before.head, ts);
    if !key.verifies(&signed, text("sig")) {
        return Err(format!(
            "checkpoint signature is invalid for key {}",
            key.key_id()
        ));
    }
    Ok(())
}
