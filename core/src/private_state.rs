//! State files that hold secrets of others (grant tokens, subjects, paths, reasons, user key
//! hashes): the controller's database and the agent's grant store. They are private to the
//! service's user **from creation** — a file created 0644 and tightened afterwards can be opened
//! by anyone in between, and the open descriptor stays valid — and they are checked at every
//! start like the grant-signing key: a file or folder that group or others can read refuses the
//! start with the command that fixes it, rather than serving from a leaking store.
//!
//! A state file or folder that is a symbolic link, or is owned by another user, is refused too:
//! whoever controls the link or owns the folder can swap the store under the service (files are
//! opened with `O_NOFOLLOW`, so a link planted after the check is not followed either).

use anyhow::{bail, Context};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and missing parents) with mode 0700 when it does not exist, then refuses it if
/// it is a symbolic link, owned by another user, or group or others can read, write or enter it.
pub fn create_private_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {what} {}", dir.display()))?;
    }
    refuse_if_shared(dir, what, "700")
}

/// Refuses an existing folder that holds state (the controller's database folder, which an
/// operator may share with other files) when it is a symbolic link, owned by another user, or
/// writable by group or others (who could replace the files in it); a missing folder is fine.
pub fn refuse_if_others_can_write(dir: &Path, what: &str) -> anyhow::Result<()> {
    check(dir, what, "700", 0o022)
}

/// Creates `file` empty with mode 0600 if it does not exist (never truncates, never follows a
/// symbolic link), then refuses it if it is owned by another user or group or others can read
/// or write it. A database opened on it afterwards keeps the mode, and SQLite gives its `-wal`,
/// `-shm` and `-journal` files the mode of the database file.
pub fn create_private_file(file: &Path, what: &str) -> anyhow::Result<()> {
    refuse_if_shared(file, what, "600")?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                anyhow::anyhow!(
                    "{what} {} is a symbolic link; {SYMLINK_FIX}",
                    file.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("cannot create {what} {}", file.display()))
            }
        })?;
    refuse_if_shared(file, what, "600")
}

const SYMLINK_FIX: &str = "configure the real path instead";

/// Refuses `path` when it is a symbolic link, owned by another user, or group or others have any
/// access to it; a missing path is fine (nothing leaks). `mode` is the one the fix sets ("600"
/// for files, "700" for folders).
pub fn refuse_if_shared(path: &Path, what: &str, mode: &str) -> anyhow::Result<()> {
    check(path, what, mode, 0o077)
}

fn check(path: &Path, what: &str, mode: &str, forbidden: u32) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot inspect {what} {}", path.display()))
        }
    };
    if meta.file_type().is_symlink() {
        bail!(
            "{what} {} is a symbolic link; {SYMLINK_FIX}",
            path.display()
        );
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        bail!(
            "{what} {} is owned by user id {}, not by this service's user ({me}); run chown {me} on it",
            path.display(),
            meta.uid()
        );
    }
    let bits = meta.permissions().mode() & 0o777;
    if bits & forbidden != 0 {
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

    #[test]
    fn symbolic_links_are_refused_as_links_not_by_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        create_private_dir(&real, "state folder").unwrap();
        let file = real.join("db");
        create_private_file(&file, "database").unwrap();
        let linked_dir = dir.path().join("linked");
        std::os::unix::fs::symlink(&real, &linked_dir).unwrap();
        let linked_file = real.join("db-link");
        std::os::unix::fs::symlink(&file, &linked_file).unwrap();
        for err in [
            create_private_dir(&linked_dir, "state folder").unwrap_err(),
            create_private_file(&linked_file, "database").unwrap_err(),
            refuse_if_others_can_write(&linked_dir, "database folder").unwrap_err(),
        ] {
            let err = format!("{err:#}");
            assert!(err.contains("is a symbolic link"), "{err}");
            assert!(!err.contains("chmod"), "{err}");
        }
    }

    #[test]
    fn an_existing_database_folder_others_can_write_or_own_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("db");
        std::fs::create_dir(&folder).unwrap();
        // Readable is the operator's choice for a shared folder; writable is not.
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
        refuse_if_others_can_write(&folder, "database folder").unwrap();
        for bits in [0o775, 0o757, 0o777] {
            std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(bits)).unwrap();
            let err = refuse_if_others_can_write(&folder, "database folder")
                .unwrap_err()
                .to_string();
            assert!(err.contains("chmod 700"), "{bits:o}: {err}");
        }
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700)).unwrap();
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        std::os::unix::fs::chown(&folder, Some(me.wrapping_add(4242)), None).unwrap();
        let err = refuse_if_others_can_write(&folder, "database folder")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is owned by user id") && err.contains("chown"),
            "{err}"
        );
    }
}
