//! What is protected: the (device, inode) of every configured root and of every file and folder
//! beneath it, with a path for each, rescanned periodically.
//!
//! Keys use the kernel's device encoding (`sb->s_dev` = `major << 20 | minor`), not `stat()`'s
//! (`st_dev`, glibc's `makedev` layout): the same disk is `0xfe00` to `stat()` and `0xfe00000` to
//! the kernel program. On overlayfs and btrfs subvolumes `st_dev` is not the inode's superblock
//! device at all; those filesystems are not supported as roots yet (see docs/audit.md).

use std::collections::BTreeMap;
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

/// The protected set at one moment.
#[derive(Default, Debug)]
pub struct Inventory {
    entries: BTreeMap<FileKey, (Kind, PathBuf)>,
    /// Entries not taken because the limit was reached.
    pub skipped: usize,
}

impl Inventory {
    /// Walks `roots` (not following symbolic links; a link's target inside a root is found in
    /// its own right), taking at most `limit` entries.
    pub fn scan(roots: &[PathBuf], limit: usize) -> Inventory {
        let mut inv = Inventory::default();
        let mut stack: Vec<(PathBuf, usize)> = roots.iter().map(|r| (r.clone(), 0)).collect();
        while let Some((path, depth)) = stack.pop() {
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
            if kind == Kind::Dir && depth < 32 {
                if let Ok(dir) = std::fs::read_dir(&path) {
                    for entry in dir.flatten() {
                        stack.push((entry.path(), depth + 1));
                    }
                }
            }
        }
        inv
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
