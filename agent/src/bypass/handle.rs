//! File handles (`name_to_handle_at`/`open_by_handle_at`): how the agent finds a protected file
//! again after it left the roots. A handle names the inode itself, not a path, so the file is
//! found wherever it was renamed or linked to on its filesystem, for as long as a link to it
//! remains (`docs/security.md`, bypass).

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// MAX_HANDLE_SZ in the kernel.
const MAX_HANDLE_SZ: usize = HANDLE_BYTES as usize;
/// The same, as `file_handle.handle_bytes` holds it.
const HANDLE_BYTES: u32 = 128;
/// `struct file_handle` (handle_bytes, handle_type) followed by up to MAX_HANDLE_SZ bytes, in
/// u64 words for alignment.
const WORDS: usize = (8 + MAX_HANDLE_SZ).div_ceil(8);

/// One file's handle on its filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handle {
    buf: Box<[u64; WORDS]>,
}

fn c_path(path: &Path) -> Option<CString> {
    CString::new(path.as_os_str().as_bytes()).ok()
}

impl Handle {
    /// The handle of `path` (a symbolic link is not followed); `None` where the filesystem
    /// gives none.
    pub fn of(path: &Path) -> Option<Handle> {
        let c = c_path(path)?;
        let mut buf = Box::new([0u64; WORDS]);
        let fh = buf.as_mut_ptr().cast::<libc::file_handle>();
        let mut mount_id: libc::c_int = 0;
        // SAFETY: `fh` points at WORDS * 8 bytes, 8-aligned, enough for the header and
        // MAX_HANDLE_SZ bytes, which is what handle_bytes tells the kernel it may write; `c`
        // is a NUL-terminated path and `mount_id` a live int, both outliving the call.
        let rc = unsafe {
            (*fh).handle_bytes = HANDLE_BYTES;
            libc::name_to_handle_at(libc::AT_FDCWD, c.as_ptr(), fh, &mut mount_id, 0)
        };
        (rc == 0).then_some(Handle { buf })
    }

    /// An `O_PATH` descriptor of the file the handle names, found through the filesystem that
    /// `mount` (any path on it) is on; `None` when the inode is gone (`ESTALE`) or `mount` is.
    pub fn reopen(&self, mount: &Path) -> Option<OwnedFd> {
        let c = c_path(mount)?;
        // Not O_PATH: open_by_handle_at refuses an O_PATH descriptor as its mount_fd. The
        // agent's own opens are never reported.
        // SAFETY: `c` is a NUL-terminated path; the returned fd is owned below.
        let mfd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if mfd < 0 {
            return None;
        }
        // SAFETY: `mfd` was just opened by us and is owned by nobody else.
        let mount_fd = unsafe { OwnedFd::from_raw_fd(mfd) };
        let mut buf = self.buf.clone();
        let fh = buf.as_mut_ptr().cast::<libc::file_handle>();
        // SAFETY: `fh` points at a handle the kernel filled (its handle_bytes says how many
        // bytes follow, at most MAX_HANDLE_SZ, all inside the buffer); open_by_handle_at only
        // reads it. `mount_fd` is open for the duration of the call.
        let fd = unsafe {
            use std::os::fd::AsRawFd;
            libc::open_by_handle_at(mount_fd.as_raw_fd(), fh, libc::O_PATH | libc::O_CLOEXEC)
        };
        // SAFETY: a non-negative return is a new descriptor that only we own.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_handle_finds_a_renamed_file_and_not_a_deleted_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        std::fs::write(&a, "x").expect("write");
        let ino = std::fs::metadata(&a).expect("stat").ino();
        let Some(h) = Handle::of(&a) else {
            eprintln!("SKIPPED: this filesystem gives no file handles");
            return;
        };
        std::fs::rename(&a, &b).expect("rename");
        let fd = h.reopen(dir.path()).expect("still linked");
        let meta = std::fs::File::from(fd).metadata().expect("fstat");
        assert_eq!(meta.ino(), ino);
        std::fs::remove_file(&b).expect("unlink");
        // Gone (or, if the inode lingers in memory, with no link left).
        if let Some(fd) = h.reopen(dir.path()) {
            assert_eq!(
                std::fs::File::from(fd).metadata().expect("fstat").nlink(),
                0
            );
        }
    }
}
