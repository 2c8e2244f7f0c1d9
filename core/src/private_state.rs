//! State files that hold secrets of others (grant tokens, subjects, paths, reasons, user key
//! hashes): the controller's database and the agent's grant store. They are private to the
//! service's user **from creation** — a file created 0644 and tightened afterwards can be opened
//! by anyone in between, and the open descriptor stays valid — and they are checked at every
//! start like the grant-signing key: a file or folder that group or others can read refuses the
//! start with the command that fixes it, rather than serving from a leaking store.

use anyhow::{bail, Context};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and missing parents) with mode 0700 when it does not exist, then refuses it if
/// group or others can read, write or enter it.
pub fn create_private_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {what} {}", dir.display()))?;
    }
    refuse_if_shared(dir, what, "700")
}

/// Creates `file` empty with mode 0600 if it does not exist (never truncates), then refuses it
/// if group or others can read or write it. A database opened on it afterwards keeps the mode,
/// and SQLite gives its `-wal`, `-shm` and `-journal` files the mode of the database file.
pub fn create_private_file(file: &Path, what: &str) -> anyhow::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot create {what} {}", file.display()))?;
    refuse_if_shared(file, what, "600")
}

/// Refuses `path` when group or others have any access to it; a missing path is fine (nothing
/// leaks). `mode` is the one the fix sets ("600" for files, "700" for folders).
pub fn refuse_if_shared(path: &Path, what: &str, mode: &str) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot inspect {what} {}", path.display()))
        }
    };
    let bits = meta.permissions().mode() & 0o777;
    if bits & 0o077 != 0 {
        bail!(
            "{what} {} is accessible to other users (mode {bits:o}); run chmod {mode} on it",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_private_whatever_the_umask_allows() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/state");
        create_private_dir(&state, "state folder").unwrap();
        let file = state.join("db");
        create_private_file(&file, "database").unwrap();
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&file), 0o600);
        // Existing content is kept.
        std::fs::write(&file, b"x").unwrap();
        create_private_file(&file, "database").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }

    #[test]
    fn readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = create_private_file(&file, "database")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mode 644") && err.contains("chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = create_private_dir(dir.path(), "state folder")
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 700"), "{err}");
    }
}
