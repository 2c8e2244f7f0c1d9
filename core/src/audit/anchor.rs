//! Off-host anchoring: a checkpoint read back from its exact record, so whoever holds it away
//! from the writer's host (the controller, an auditor with `loggate audit verify --checkpoints`)
//! can check its signature and later hold the writer's file against it.
//!
//! A re-signed rewrite of the whole file, or a cut tail, passes every check that uses the file
//! alone (root holds the signing key). It fails against checkpoints taken off the host before:
//! the line at a held checkpoint's `sealed_seq` must still hash to its `head`, and the file must
//! still reach that far.

use super::checkpoint::{signed_text, VerifyKey};
use serde_json::Value;
use std::io::BufRead;

/// The event name of a checkpoint record.
pub const CHECKPOINT_EVENT: &str = "audit.checkpoint";

/// The signed fields of one `audit.checkpoint` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The writer's host (agent id, or `controller`).
    pub origin: String,
    /// The last sequence number the checkpoint seals.
    pub sealed_seq: u64,
    /// Lowercase hex SHA-256 of the line at `sealed_seq`.
    pub head: String,
    /// When it was signed, epoch ms.
    pub ts_ms: i64,
    /// The signing key, `ed25519:<id>`.
    pub key_id: String,
    sig: String,
}

impl Checkpoint {
    /// The checkpoint fields of `record`; `Ok(None)` when it is not a checkpoint record.
    pub fn from_record(record: &Value) -> Result<Option<Checkpoint>, String> {
        if super::event_name(record) != Some(CHECKPOINT_EVENT) {
            return Ok(None);
        }
        let field = |k: &str| super::record_field(record, k);
        let text = |k: &str| {
            field(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("checkpoint has no {k}"))
        };
        let head = text("head")?;
        if head.len() != 64
            || !head
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err("checkpoint head is not 64 lowercase hex digits".into());
        }
        Ok(Some(Checkpoint {
            origin: text("origin")?,
            sealed_seq: field("sealed_seq")
                .and_then(Value::as_u64)
                .ok_or("checkpoint has no sealed_seq")?,
            head,
            ts_ms: field("ts_ms")
                .and_then(Value::as_i64)
                .ok_or("checkpoint has no ts_ms")?,
            key_id: text("key_id")?,
            sig: text("sig")?,
        }))
    }

    /// Reads a checkpoint from its exact line (without the newline).
    pub fn parse_line(line: &str) -> Result<Checkpoint, String> {
        let record: Value =
            serde_json::from_str(line).map_err(|e| format!("not a JSON record ({e})"))?;
        Checkpoint::from_record(&record)?.ok_or_else(|| format!("not an {CHECKPOINT_EVENT} record"))
    }

    /// Checks the signature with the one of `keys` the checkpoint names.
    pub fn verify(&self, keys: &[VerifyKey]) -> Result<(), String> {
        let key = keys
            .iter()
            .find(|k| k.key_id() == self.key_id)
            .ok_or_else(|| format!("checkpoint signed by unknown key {:?}", self.key_id))?;
        let signed = signed_text(&self.origin, self.sealed_seq, &self.head, self.ts_ms);
        if !key.verifies(&signed, &self.sig) {
            return Err(format!(
                "checkpoint signature is invalid for key {}",
                key.key_id()
            ));
        }
        Ok(())
    }
}

/// Reads a file of checkpoints held off the host: JSON lines, each either a checkpoint record
/// itself (e.g. from a SIEM's copy) or an object whose `line` is one (what
/// `loggate audit checkpoints --output json` writes). Blank lines are skipped.
pub fn read_external_checkpoints(input: impl BufRead) -> Result<Vec<Checkpoint>, String> {
    let mut out = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}", i + 1);
        let line = line.map_err(|e| at(format!("cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(&line).map_err(|e| at(format!("not JSON ({e})")))?;
        let checkpoint = match value.get("line").and_then(Value::as_str) {
            Some(inner) => Checkpoint::parse_line(inner),
            None => Checkpoint::from_record(&value)?
                .ok_or_else(|| format!("not an {CHECKPOINT_EVENT} record")),
        };
        out.push(checkpoint.map_err(at)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::events::TestEvent;
    use crate::audit::{
        verify_chain, verify_chain_anchored, AuditLog, CheckpointKey, CheckpointPolicy,
    };
    use std::path::Path;

    /// Writes `events` records as `host`, checkpointing every 3, with the key in `key_path`.
    fn write_chain(
        host: &str,
        key_path: &Path,
        events: u64,
        tag: &'static str,
    ) -> (Vec<String>, VerifyKey) {
        let dir = crate::audit::scratch_dir();
        let key = CheckpointKey::load_or_create(key_path).unwrap();
        let public = key.verify_key();
        let policy = CheckpointPolicy {
            every: 3,
            interval: std::time::Duration::from_secs(3600),
        };
        let path = dir.join("audit.jsonl");
        let mut log = AuditLog::open(&path, host)
            .unwrap()
            .with_checkpoints(key, policy);
        for i in 0..events {
            log.append(&TestEvent { i, tag }).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        (text.lines().map(|l| format!("{l}\n")).collect(), public)
    }

    /// The checkpoint records among `lines`, as an external holder would keep them.
    fn held(lines: &[String]) -> Vec<Checkpoint> {
        lines
            .iter()
            .filter_map(|l| Checkpoint::parse_line(l.trim_end()).ok())
            .collect()
    }

    fn chain_and_key(events: u64) -> (Vec<String>, VerifyKey, std::path::PathBuf) {
        let dir = crate::audit::scratch_dir();
        let key_path = dir.join("audit.key");
        let (lines, key) = write_chain("web-1", &key_path, events, "original");
        (lines, key, dir)
    }

    #[test]
    fn intact_file_matches_the_checkpoints_held_off_the_host() {
        let (lines, key, dir) = chain_and_key(7);
        let external = held(&lines);
        assert_eq!(external.len(), 2);
        let s = verify_chain_anchored(lines.concat().as_bytes(), &[key], &external).unwrap();
        // Events 1-3, checkpoint (seq 4, sealing 3), events 4-6 (seq 5-7), checkpoint sealing 7.
        assert_eq!(s.anchored_through, 7);
        assert_eq!(
            s.last_seq, 9,
            "one unsealed record after the last checkpoint"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn truncated_tail_fails_against_held_checkpoints_only() {
        let (lines, key, dir) = chain_and_key(7);
        let external = held(&lines);
        let cut = &lines[..5]; // seq 1-5: the checkpoint sealing seq 7 is past the end
        assert!(verify_chain(cut.concat().as_bytes(), std::slice::from_ref(&key)).is_ok());
        let err = verify_chain_anchored(cut.concat().as_bytes(), &[key], &external).unwrap_err();
        assert_eq!(err.line, 6, "{err}");
        assert!(err.reason.contains("ends at seq 5"), "{err}");
        assert!(err.reason.contains("seals seq 7"), "{err}");
        assert!(err.reason.contains("cut off"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn resigned_rewrite_fails_against_held_checkpoints_only() {
        let (lines, key, dir) = chain_and_key(7);
        let external = held(&lines);
        // Root rewrites the whole file with the writer's own key: self-consistent, re-signed.
        let (forged, same_key) = write_chain("web-1", &dir.join("audit.key"), 9, "forged");
        assert_eq!(same_key, key);
        assert!(verify_chain(forged.concat().as_bytes(), std::slice::from_ref(&key)).is_ok());
        let err = verify_chain_anchored(forged.concat().as_bytes(), &[key], &external).unwrap_err();
        assert_eq!(err.line, 3, "the first held checkpoint seals seq 3: {err}");
        assert!(err.reason.contains("rewritten"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn held_checkpoints_of_another_host_are_refused() {
        let (lines, key, dir) = chain_and_key(7);
        let other = write_chain("web-2", &dir.join("other.key"), 7, "x").0;
        // web-2's checkpoint sealing seq 7; web-1's own first checkpoint (line 4) comes first.
        let external = &held(&other)[1..];
        let err = verify_chain_anchored(lines.concat().as_bytes(), &[key], external).unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        assert!(err.reason.contains("\"web-2\""), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn checkpoint_verifies_only_with_the_writers_key() {
        let (lines, key, dir) = chain_and_key(3);
        let (_, stranger) = write_chain("web-1", &dir.join("other.key"), 1, "x");
        let checkpoint = &held(&lines)[0];
        assert_eq!(checkpoint.verify(std::slice::from_ref(&key)), Ok(()));
        let err = checkpoint.verify(&[stranger]).unwrap_err();
        assert!(err.contains("unknown key"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn external_file_holds_raw_records_or_exported_objects() {
        let (lines, _, dir) = chain_and_key(6);
        let raw = lines[3].clone();
        let wrapped = format!(
            "{}\n",
            serde_json::json!({"id": 2, "status": "ok", "line": lines[7].trim_end()})
        );
        let read = read_external_checkpoints(format!("{raw}\n{wrapped}").as_bytes()).unwrap();
        assert_eq!(
            read.iter().map(|c| c.sealed_seq).collect::<Vec<_>>(),
            vec![3, 7]
        );
        let err = read_external_checkpoints(lines[0].as_bytes()).unwrap_err();
        assert!(
            err.starts_with("line 1: not an audit.checkpoint record"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
