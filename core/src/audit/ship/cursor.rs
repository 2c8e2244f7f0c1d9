//! A sink's persisted cursor: the last sequence number it delivered, in which chain, and where in
//! the file the next record starts. Written atomically (temporary file, fsync, rename, fsync of the
//! folder), so after a crash it is either the old cursor or the new one, never a torn mix.

use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How far a reader (a sink, the checkpoint sender) has consumed an audit file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The chain identity: hex SHA-256 of the first line of the audit file being followed, so a
    /// new file (a new chain starting at seq 1) never inherits an old cursor.
    pub chain: String,
    /// The last sequence number delivered (0: none).
    pub seq: u64,
    /// Byte offset just after that record (a hint; checked before use).
    pub offset: u64,
}

/// Where sink `name`'s cursor lives in `dir`.
pub fn cursor_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.cursor"))
}

/// The stored cursor, or `None` when there is none yet. A cursor file that does not parse is an
/// error (the caller decides; resending everything is the safe choice).
///
/// A cursor at seq `u64::MAX` is refused the same way: no record can follow it, so it can only
/// be damaged or forged, and taking it would mark every record as delivered.
pub fn load(path: &Path) -> io::Result<Option<Cursor>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let cursor: Cursor = serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if cursor.seq == u64::MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the cursor's seq is the largest possible, which no audit record can follow",
                ));
            }
            Ok(Some(cursor))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces the cursor at `path` atomically and durably.
pub fn store(path: &Path, cursor: &Cursor) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let bytes = serde_json::to_vec(cursor).map_err(io::Error::other)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = cursor_path(dir.path(), "siem");
        assert_eq!(load(&path).unwrap(), None);
        let mut c = Cursor {
            chain: "ab".into(),
            seq: 7,
            offset: 900,
        };
        store(&path, &c).unwrap();
        c.seq = 8;
        store(&path, &c).unwrap();
        assert_eq!(load(&path).unwrap(), Some(c));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_damaged_cursor_is_an_error_not_a_silent_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = cursor_path(dir.path(), "siem");
        std::fs::write(&path, b"{\"chain\":").unwrap();
        assert!(load(&path).is_err());
    }

    #[test]
    fn a_cursor_at_the_largest_seq_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = cursor_path(dir.path(), "siem");
        let c = Cursor {
            chain: "ab".into(),
            seq: u64::MAX,
            offset: 0,
        };
        store(&path, &c).unwrap();
        let err = load(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
