//! What is protected: the (device, inode) of every configured root and of every file and folder
//! beneath it, with a path for each, rescanned periodically — and every protected file that left
//! the roots (renamed out, or linked out and its name beneath the roots removed) for as long as
//! a link to it remains: a file never stops being protected by being moved. Such files are
//! found again by their file handle (`super::handle`), and each departure is reported once
//! (`left`). A rename within the roots (logrotate's `api.log` → `api.log.1`) keeps the inode
//! beneath them and changes nothing.
//!
//! Keys use the kernel's device encoding (`sb->s_dev` = `major << 20 | minor`), not `stat()`'s
//! (`st_dev`, glibc's `makedev` layout): the same disk is `0xfe00` to `stat()` and `0xfe00000` to
//! the kernel program. On overlayfs and btrfs subvolumes `st_dev` is not the inode's superblock
//! device at all; those filesystems are not supported as roots yet (see docs/audit.md).

use super::handle::Handle;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Key of the kernel map `protected` (`struct file_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileKey {
    pub ino: u64,
    pub dev: u32,
    pub pad: u32,
}

// SAFETY: FileKey is repr(C), made of integers with no implicit padding (8 + 4 + 4 bytes), so
// it is valid for every bit pattern and has no uninitialised bytes.
unsafe impl aya::Pod for FileKey {}

impl FileKey {
    pub fn new(dev: u32, ino: u64) -> FileKey {
        FileKey { ino, dev, pad: 0 }
    }
}

/// `stat()`'s device number in the kernel's internal encoding.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (major << 20) | (minor & 0xfffff)
}

/// The kernel encoding as `major:minor`, for people.
pub fn dev_text(kernel_dev: u32) -> String {
    format!("{}:{}", kernel_dev >> 20, kernel_dev & 0xfffff)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

impl Kind {
    /// The value stored in the kernel map (1 file, 2 directory).
    pub fn map_value(self) -> u32 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
        }
    }
}

/// A protected file found outside the roots by a rescan, for the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    pub key: FileKey,
    /// Its protected path at the scan before.
    pub from: PathBuf,
    /// One of its names now (`None` when the kernel gave no usable one).
    pub to: Option<PathBuf>,
    /// Its link count now.
    pub links: u64,
}

/// The protected set at one moment.
#[derive(Default, Debug)]
pub struct Inventory {
    entries: BTreeMap<FileKey, (Kind, PathBuf)>,
    /// The file handle of each protected file, and the root it was found under (a path on its
    /// filesystem, for `open_by_handle_at`).
    handles: BTreeMap<FileKey, (Handle, PathBuf)>,
    /// Protected files outside the roots (followed by their handle).
    outside: BTreeSet<FileKey>,
    /// Entries not taken because the limit was reached.
    pub skipped: usize,
    /// Files that left the roots since the scan before (each reported once).
    pub left: Vec<Left>,
    /// When this scan started, Unix seconds: every folder beneath the roots whose change time
    /// is earlier is in it (the kernel's ancestor walk relies on it, see `ProtectedMaps::sync`).
    pub started_unix: i64,
}

impl Inventory {
    /// Walks `roots` (not following symbolic links; a link's target inside a root is found in
    /// its own right), taking at most `limit` entries.
    pub fn scan(roots: &[PathBuf], limit: usize) -> Inventory {
        Inventory::rescan(roots, limit, &Inventory::default())
    }

    /// Like `scan`, and keeps every file of `previous` that is no longer beneath the roots but
    /// still has a link (found by its handle): protected under its new name, reported in
    /// `left` the first time.
    pub fn rescan(roots: &[PathBuf], limit: usize, previous: &Inventory) -> Inventory {
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut inv = Inventory {
            started_unix,
            ..Inventory::default()
        };
        let mut stack: Vec<(PathBuf, usize, usize)> = roots
            .iter()
            .enumerate()
            .map(|(i, r)| (r.clone(), 0, i))
            .collect();
        while let Some((path, depth, root)) = stack.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue; // gone since we listed it
            };
            let kind = if meta.is_dir() {
                Kind::Dir
            } else if meta.is_file() {
                Kind::File
            } else {
                continue;
            };
            let key = FileKey::new(kernel_dev(meta.dev()), meta.ino());
            if inv.entries.len() >= limit && !inv.entries.contains_key(&key) {
                inv.skipped += 1;
                continue;
            }
            inv.entries.entry(key).or_insert((kind, path.clone()));
            if kind == Kind::File && !inv.handles.contains_key(&key) {
                let handle = match previous.handles.get(&key) {
                    Some((h, _)) => Some(h.clone()),
                    None => Handle::of(&path),
                };
                if let Some(h) = handle {
                    inv.handles.insert(key, (h, roots[root].clone()));
                }
            }
            if kind == Kind::Dir && depth < 32 {
                if let Ok(dir) = std::fs::read_dir(&path) {
                    for entry in dir.flatten() {
                        stack.push((entry.path(), depth + 1, root));
                    }
                }
            }
        }
        inv.follow_departed(limit, previous);
        inv
    }

    /// Keeps the files of `previous` that the walk no longer found but that still have a link.
    fn follow_departed(&mut self, limit: usize, previous: &Inventory) {
        use std::os::fd::AsRawFd;
        for (key, (handle, mount)) in &previous.handles {
            if self.entries.contains_key(key) {
                continue;
            }
            if self.entries.len() >= limit {
                self.skipped += 1;
                continue;
            }
            let Some(fd) = handle.reopen(mount) else {
                continue; // gone: its last link was removed
            };
            let name = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok();
            let Ok(meta) = std::fs::File::from(fd).metadata() else {
                continue;
            };
            if FileKey::new(kernel_dev(meta.dev()), meta.ino()) != *key || meta.nlink() == 0 {
                continue;
            }
            let from = previous.entries.get(key).map(|(_, p)| p.clone());
            // A name the kernel could not connect to the root reads as relative or "(deleted)".
            let to = name.filter(|p| p.is_absolute() && !p.to_string_lossy().ends_with(")"));
            let Some(path) = to.clone().or_else(|| from.clone()) else {
                continue;
            };
            if !previous.outside.contains(key) {
                self.left.push(Left {
                    key: *key,
                    from: from.unwrap_or_else(|| path.clone()),
                    to,
                    links: meta.nlink(),
                });
            }
            self.entries.insert(*key, (Kind::File, path));
            self.handles.insert(*key, (handle.clone(), mount.clone()));
            self.outside.insert(*key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&self, key: &FileKey) -> Option<(Kind, &Path)> {
        self.entries.get(key).map(|(k, p)| (*k, p.as_path()))
    }

    pub fn keys(&self) -> impl Iterator<Item = (&FileKey, Kind)> {
        self.entries.iter().map(|(k, (kind, _))| (k, *kind))
    }

    pub fn entries(&self) -> impl Iterator<Item = (&FileKey, Kind, &Path)> {
        self.entries
            .iter()
            .map(|(k, (kind, p))| (k, *kind, p.as_path()))
    }

    pub fn contains(&self, key: &FileKey) -> bool {
        self.entries.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_moved_out_of_the_roots_stays_protected_while_linked_and_a_rotation_changes_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir_in(root.path().parent().expect("parent")).expect("dir");
        let log = root.path().join("api.log");
        std::fs::write(&log, "x").expect("write");
        let roots = [root.path().to_path_buf()];
        let first = Inventory::scan(&roots, 100);
        let meta = std::fs::metadata(&log).expect("stat");
        let key = FileKey::new(kernel_dev(meta.dev()), meta.ino());
        if !first.handles.contains_key(&key) {
            eprintln!("SKIPPED: this filesystem gives no file handles");
            return;
        }
        // logrotate's rename within the root: the same entry, a new name, nothing reported.
        let rotated = root.path().join("api.log.1");
        std::fs::rename(&log, &rotated).expect("rename");
        let second = Inventory::rescan(&roots, 100, &first);
        assert_eq!(
            second.get(&key).map(|(_, p)| p.to_path_buf()),
            Some(rotated.clone())
        );
        assert!(second.left.is_empty(), "{:?}", second.left);
        // Moved out: still protected, under its new name, reported once.
        let moved = outside.path().join("stolen.log");
        std::fs::rename(&rotated, &moved).expect("rename");
        let third = Inventory::rescan(&roots, 100, &second);
        assert_eq!(
            third.get(&key).map(|(_, p)| p.to_path_buf()),
            Some(moved.clone())
        );
        assert_eq!(third.left.len(), 1, "{:?}", third.left);
        assert_eq!(third.left[0].from, rotated);
        assert_eq!(third.left[0].to.as_deref(), Some(moved.as_path()));
        let fourth = Inventory::rescan(&roots, 100, &third);
        assert!(fourth.contains(&key));
        assert!(fourth.left.is_empty(), "reported once: {:?}", fourth.left);
        // Its last link removed: no longer protected (its inode may be reused).
        std::fs::remove_file(&moved).expect("unlink");
        let fifth = Inventory::rescan(&roots, 100, &fourth);
        assert!(!fifth.contains(&key));
    }

    #[test]
    fn stat_device_is_converted_to_the_kernel_encoding() {
        // 254:0 (virtio disk): stat() says 0xfe00, the kernel's s_dev is 0xfe00000.
        assert_eq!(kernel_dev(0xfe00), 0x0fe0_0000);
        assert_eq!(dev_text(0x0fe0_0000), "254:0");
        // Large minors use the high bits of st_dev in glibc's layout.
        assert_eq!(kernel_dev(libc::makedev(8, 300)), (8 << 20) | 300);
    }

    #[test]
    fn scan_finds_root_files_and_subfolders_but_not_symlink_targets_outside() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("a.log"), "x").expect("write");
        std::fs::create_dir(root.path().join("sub")).expect("mkdir");
        std::fs::write(root.path().join("sub/b.log"), "y").expect("write");
        std::fs::write(outside.path().join("secret"), "z").expect("write");
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link"))
            .expect("symlink");
        let inv = Inventory::scan(&[root.path().to_path_buf()], 100);
        let paths: Vec<&Path> = inv.entries.values().map(|(_, p)| p.as_path()).collect();
        assert_eq!(inv.len(), 4, "{paths:?}"); // root, a.log, sub, sub/b.log
        let meta = std::fs::metadata(outside.path().join("secret")).expect("stat");
        assert!(!inv.contains(&FileKey::new(kernel_dev(meta.dev()), meta.ino())));
        let limited = Inventory::scan(&[root.path().to_path_buf()], 2);
        assert_eq!((limited.len(), limited.skipped), (2, 2));
    }
}
