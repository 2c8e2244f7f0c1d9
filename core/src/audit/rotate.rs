//! Rotation and retention of the audit file, with the chain unbroken across files.
//!
//! The current file is renamed to `<name>.<last seq, 12 digits>` and a new one started whose
//! first record, `audit.rotated` (OCSF Event Log Activity, Rotate), continues the chain: its
//! `seq` and `prev` follow the last record of the renamed file. Rotated files beyond `keep`
//! are deleted, oldest first, and the record names them, so retention is itself audited.
//! `verify_chain` accepts a file that starts with such a record (the start of a retained
//! file) and, given several files in order, checks the chain across them.

use super::events::{AuditEvent, AuditRotated};
use super::{AuditError, AuditLog};
use serde_json::Value;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// When to rotate the audit file, and how many rotated files to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Rotate once the file is at least this long.
    pub max_bytes: u64,
    /// Rotated files kept; older ones are deleted.
    pub keep: usize,
}

impl AuditLog {
    /// Rotates the file if it has reached `policy.max_bytes` (see the module doc). Returns the
    /// rotated file's path when it did.
    pub fn rotate_if_due(&mut self, policy: RotationPolicy) -> Result<Option<PathBuf>, AuditError> {
        if self.written_len < policy.max_bytes || self.next_seq == 1 {
            return Ok(None);
        }
        self.rotate(policy.keep).map(Some)
    }

    /// Seals the file with a checkpoint, renames it to `<name>.<last seq>`, starts a new one
    /// with an `audit.rotated` record that continues the chain, and deletes rotated files
    /// beyond the newest `keep`. If the new file cannot be started, the old one is put back.
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
        let existing = rotated_files(&path).map_err(io_err)?;
        let expired = &existing[..(existing.len() + 1)
            .saturating_sub(keep)
            .min(existing.len())];
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
        let rotated_event = AuditRotated {
            previous_file: name(&rotated),
            previous_last_seq: last_seq,
            deleted_files: expired.iter().map(|p| name(p)).collect(),
        };
        let started = super::event_fields(&rotated_event, &path)
            .and_then(|fields| self.write_record(AuditRotated::TYPE, fields))
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
        for file in expired {
            std::fs::remove_file(file).map_err(io_err)?;
        }
        Ok(rotated)
    }
}

/// `audit.jsonl` → `audit.jsonl.000000001234` (sorts in chain order).
fn rotated_path(path: &Path, last_seq: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{last_seq:012}"));
    PathBuf::from(name)
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
}
