//! The audit writer: one JSON object per line, appended and made durable before the action it
//! describes takes effect.
//!
//! Each line carries `seq` (+1 per line, across restarts) and `prev`, the lowercase hex SHA-256 of
//! the previous line's exact bytes (without its newline; 64 zeros for the first line), so an edited,
//! deleted or reordered line breaks the chain. Checkpoints, signing and SIEM delivery build on this
//! writer (see the audit-stream issue); everything that audits goes through [`AuditLog::append`].
//!
//! Fail closed: `append` returns an error when the line could not be written *and* synced; callers
//! must then refuse the action (no bytes are served without their audit record on disk).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The longest line we look back for when recovering the chain head at start.
const MAX_LINE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("audit log {path}: last line is not a valid audit record ({why})")]
    Corrupt { path: PathBuf, why: String },
}

/// The append-only, hash-chained audit file of one process.
pub struct AuditLog {
    path: PathBuf,
    file: File,
    next_seq: u64,
    prev: String,
    host: String,
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
        let (next_seq, prev) =
            if last_line.is_empty() {
                (1, "0".repeat(64))
            } else {
                let record: Value =
                    serde_json::from_slice(last_line).map_err(|e| AuditError::Corrupt {
                        path: path.to_path_buf(),
                        why: e.to_string(),
                    })?;
                let seq = record.get("seq").and_then(Value::as_u64).ok_or_else(|| {
                    AuditError::Corrupt {
                        path: path.to_path_buf(),
                        why: "no seq".into(),
                    }
                })?;
                (seq + 1, hex::encode(Sha256::digest(last_line)))
            };
        let mut log = AuditLog {
            path: path.to_path_buf(),
            file,
            next_seq,
            prev,
            host: host.to_string(),
        };
        if torn_bytes > 0 {
            log.append(
                "audit.torn_tail_discarded",
                Map::from_iter([("bytes_discarded".to_string(), Value::from(torn_bytes))]),
            )?;
        }
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event and syncs it to disk. Returns its sequence number.
    ///
    /// `fields` must not contain the envelope keys (`seq`, `prev`, `time`, `host`, `event`);
    /// if it does, the envelope wins.
    pub fn append(&mut self, event: &str, fields: Map<String, Value>) -> Result<u64, AuditError> {
        let seq = self.next_seq;
        let mut record = Map::new();
        record.insert("seq".into(), Value::from(seq));
        record.insert("prev".into(), Value::from(self.prev.clone()));
        record.insert(
            "time".into(),
            Value::from(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
        );
        record.insert("host".into(), Value::from(self.host.clone()));
        record.insert("event".into(), Value::from(event));
        for (k, v) in fields {
            record.entry(k).or_insert(v);
        }
        let mut line = serde_json::to_vec(&Value::Object(record)).map_err(|e| AuditError::Io {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        let hash = hex::encode(Sha256::digest(&line));
        line.push(b'\n');
        let io_err = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        // One write per line on an O_APPEND file: concurrent readers never see half a record
        // unless the disk fills, which the next open repairs as a torn tail.
        self.file.write_all(&line).map_err(io_err)?;
        self.file.sync_data().map_err(io_err)?;
        self.next_seq += 1;
        self.prev = hash;
        Ok(seq)
    }
}

/// What [`verify_chain`] found in an intact file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// SHA-256 of the last line (the chain head), hex; 64 zeros for an empty file.
    pub head: String,
}

/// The first place an audit file's chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ChainBreak {
    /// 1-based line number.
    pub line: u64,
    pub reason: String,
}

/// Checks an audit file's hash chain: every line is complete and parses, `seq` starts at 1 and
/// grows by one, and `prev` is the SHA-256 of the previous line's exact bytes. An edited,
/// deleted, inserted or reordered line breaks it. (Truncation at the end and a consistent
/// rewrite of the whole file need signed checkpoints held elsewhere: not detected here.)
pub fn verify_chain(mut input: impl std::io::BufRead) -> Result<ChainSummary, ChainBreak> {
    let mut summary = ChainSummary {
        records: 0,
        first_seq: 0,
        last_seq: 0,
        head: "0".repeat(64),
    };
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
        if summary.records == 0 {
            summary.first_seq = seq;
        }
        summary.records += 1;
        summary.last_seq = seq;
        summary.head = hex::encode(Sha256::digest(body));
    }
}

/// Builds the `fields` map of an audit event from `key => value` pairs.
#[macro_export]
macro_rules! audit_fields {
    ($($key:expr => $value:expr),* $(,)?) => {{
        let mut map = serde_json::Map::new();
        $( map.insert($key.to_string(), serde_json::Value::from($value)); )*
        map
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn appends_chained_records_and_resumes_after_reopen() {
        let dir = std::env::temp_dir().join(format!("lg-audit-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        {
            let mut log = AuditLog::open(&path, "web-1").unwrap();
            assert_eq!(log.append("a", audit_fields!("n" => 1)).unwrap(), 1);
            assert_eq!(log.append("b", audit_fields!("n" => 2)).unwrap(), 2);
        }
        let mut log = AuditLog::open(&path, "web-1").unwrap();
        assert_eq!(log.append("c", Map::new()).unwrap(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        let raw: Vec<&str> = text.lines().collect();
        let recs = lines(&path);
        assert_eq!(recs[0]["prev"], "0".repeat(64));
        for i in 1..3 {
            assert_eq!(
                recs[i]["prev"],
                hex::encode(Sha256::digest(raw[i - 1].as_bytes()))
            );
            assert_eq!(recs[i]["seq"], (i + 1) as u64);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn sample_chain(n: u64) -> Vec<String> {
        let dir = std::env::temp_dir().join(format!("lg-audit-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let mut log = AuditLog::open(&path, "h").unwrap();
        for i in 0..n {
            log.append("e", audit_fields!("i" => i)).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        text.lines().map(|l| format!("{l}\n")).collect()
    }

    fn check(lines: &[String]) -> Result<ChainSummary, ChainBreak> {
        verify_chain(lines.concat().as_bytes())
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

    #[test]
    fn torn_tail_is_cut_recorded_and_chain_continues() {
        let dir = std::env::temp_dir().join(format!("lg-audit-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        {
            let mut log = AuditLog::open(&path, "h").unwrap();
            log.append("a", Map::new()).unwrap();
        }
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":2,\"half").unwrap();
        drop(f);
        let mut log = AuditLog::open(&path, "h").unwrap();
        log.append("b", Map::new()).unwrap();
        let recs = lines(&path);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1]["event"], "audit.torn_tail_discarded");
        assert_eq!(recs[1]["bytes_discarded"], 14);
        assert_eq!(recs[1]["seq"], 2);
        assert_eq!(recs[2]["seq"], 3);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
