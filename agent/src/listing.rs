//! Discovery (`loggate logs ls`): the files a reader's grants cover on this agent.
//!
//! Contract: a listing reveals **nothing a read would not**. A file is listed only when one of
//! the reader's usable grants covers its path (and the reader's own filter glob matches it) and
//! it opens exactly as a read would open it ([`open_beneath`]: beneath a root, no symlink, no
//! mount crossing, a regular file with one link). Folders are never listed, nor any name a
//! grant does not cover: a sibling of a granted file, a folder beside the granted one, a file
//! reached through a symlinked folder (its path opens with a symlink in it, so it is dropped).
//!
//! The walk starts at each grant glob's literal folder (the components before the first with
//! a glob character), intersected with the roots, and goes only as deep as the glob can match
//! (`**`: up to [`MAX_DEPTH`]). It is bounded: at most [`MAX_VISITED`] directory entries are
//! looked at and [`MAX_LISTED`] files listed; beyond either the listing says it was cut. The
//! walk never leaves the roots: every folder, the start included, is opened by descriptor
//! beneath its root without following a symlink or crossing a mount (as a read opens a file),
//! and it is depth-first with one open folder a level, so its memory does not grow with the
//! number of entries.

use crate::decompress;
use crate::fs_access::{open_beneath, DirBeneath, LogRoot};
use loggate_core::grant::VerifiedGrant;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// Directory entries one listing looks at, at most.
pub const MAX_VISITED: usize = 100_000;
/// Files one listing returns, at most.
pub const MAX_LISTED: usize = 10_000;
/// Folder levels a `**` walks down, at most.
pub const MAX_DEPTH: usize = 32;
/// The most bytes of paths (with a per-file allowance for the other fields) one answer
/// carries: well under the 4 MiB a gRPC client decodes by default, so a listing of long paths
/// is cut by the agent and says so (`truncated`), rather than failing on the reader's side.
pub const MAX_LISTED_BYTES: usize = 3 << 20;
/// What a listed file costs in the answer besides its path (size, time, flags, compression,
/// protobuf framing), generously.
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// One listed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    pub path: String,
    pub size: u64,
    /// Unix seconds (0 when the file system does not say).
    pub modified_unix: i64,
    /// Its name looks rotated (`api.log.1`, `api.log.2.gz`, `api.log-20261204`).
    pub rotated: bool,
    /// `gzip`, `zstd`, `""` (plain), `invalid` (named as compressed, but it is not: a read
    /// of it is refused) or `unsupported` (compressed in a format the agent does not decode: a
    /// read of it under a redacting profile is refused).
    pub compression: &'static str,
}

/// What a listing found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Sorted by path.
    pub files: Vec<ListedFile>,
    /// A bound ([`MAX_VISITED`], [`MAX_LISTED`]) cut the listing.
    pub truncated: bool,
}

impl Listing {
    /// Keeps the first files (by path) whose answer fits in `max_bytes` ([`MAX_LISTED_BYTES`]
    /// in the agent); when some are left out, the listing says it was cut.
    pub fn cut_to_bytes(&mut self, max_bytes: usize) {
        let mut used = 0usize;
        let keep = self
            .files
            .iter()
            .take_while(|f| {
                used =
                    used.saturating_add(f.path.len() + f.compression.len() + ENTRY_OVERHEAD_BYTES);
                used <= max_bytes
            })
            .count();
        if keep < self.files.len() {
            self.files.truncate(keep);
            self.truncated = true;
        }
    }
}

/// Where to walk for one grant glob: its literal folder, and how many levels below it the glob
/// can match (`None`: any number, a `**`).
fn walk_start(glob: &str) -> (PathBuf, Option<usize>) {
    let wild = |c: &str| c.contains(['*', '?', '[', ']', '{', '}', '\\']);
    let parts: Vec<&str> = glob.split('/').filter(|c| !c.is_empty()).collect();
    // The last component names files: the folder is at most its parent.
    let literal = parts
        .iter()
        .take(parts.len().saturating_sub(1))
        .take_while(|c| !wild(c))
        .count();
    let base: PathBuf = std::iter::once("/")
        .chain(parts[..literal].iter().copied())
        .collect();
    let rest = &parts[literal..];
    let depth = (!rest.contains(&"**")).then_some(rest.len());
    (base, depth)
}

/// What a walk did: entries looked at, whether a bound cut it, and the most folders it held
/// open at once (at most [`MAX_DEPTH`] + 1: the walk is depth-first, one open folder a level).
#[derive(Debug, Default, PartialEq, Eq)]
struct Walked {
    visited: usize,
    truncated: bool,
    peak_open: usize,
}

/// One open folder of the walk: its descriptor, its entries being read, its path (text, to
/// match globs and name files), and how many levels the walk may still go down from it.
struct Frame {
    dir: DirBeneath,
    entries: std::fs::ReadDir,
    path: PathBuf,
    levels: usize,
}

/// Walks `starts` (folder, levels) depth-first, folders opened by descriptor beneath the roots
/// ([`DirBeneath`]: a symlinked or swapped folder, or a mount, is never entered), and hands
/// each regular file's path to `file`, which returns `false` to stop the walk (cut). Memory is
/// bounded whatever the folders hold: one open folder and one path per level.
fn walk(
    roots: &[LogRoot],
    starts: &[(PathBuf, usize)],
    file: &mut dyn FnMut(&str) -> bool,
) -> Walked {
    let mut walked = Walked::default();
    let mut stack: Vec<Frame> = Vec::new();
    for (start, levels) in starts {
        if *levels == 0 {
            continue;
        }
        let Some(dir) = DirBeneath::open(roots, start) else {
            continue;
        };
        let Ok(entries) = dir.entries() else { continue };
        stack.push(Frame {
            dir,
            entries,
            path: start.clone(),
            levels: *levels,
        });
        walked.peak_open = walked.peak_open.max(stack.len());
        while let Some(frame) = stack.last_mut() {
            let Some(entry) = frame.entries.next() else {
                stack.pop();
                continue;
            };
            walked.visited += 1;
            if walked.visited > MAX_VISITED {
                walked.truncated = true;
                return walked;
            }
            let Ok(entry) = entry else { continue };
            // The entry's own type (lstat): a symlink is neither a folder nor a file here.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            if kind.is_dir() {
                if frame.levels > 1 {
                    let child = frame.dir.child(&name).and_then(|dir| {
                        let entries = dir.entries().ok()?;
                        Some(Frame {
                            dir,
                            entries,
                            path: frame.path.join(&name),
                            levels: frame.levels - 1,
                        })
                    });
                    if let Some(child) = child {
                        stack.push(child);
                        walked.peak_open = walked.peak_open.max(stack.len());
                    }
                }
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let path = frame.path.join(&name);
            let Some(text) = path.to_str() else { continue };
            if !file(text) {
                walked.truncated = true;
                return walked;
            }
        }
    }
    walked
}

/// Lists the files `grants` cover (and `filter` matches, when given) beneath `roots`.
pub fn list(
    roots: &[LogRoot],
    grants: &[VerifiedGrant],
    filter: Option<&dyn Fn(&str) -> bool>,
) -> Listing {
    let covered =
        |path: &str| grants.iter().any(|g| g.covers_path(path)) && filter.is_none_or(|f| f(path));
    let mut starts: Vec<(PathBuf, usize)> = Vec::new();
    for glob in grants.iter().flat_map(|g| g.claims().paths.iter()) {
        let (base, depth) = walk_start(glob);
        for root in roots {
            let root = root.path();
            let start = if base.starts_with(root) {
                Some((base.clone(), depth))
            } else if root.starts_with(&base) {
                // The glob's folder is above the root: walk from the root, fewer levels left.
                let below = root.components().count() - base.components().count();
                match depth {
                    None => Some((root.to_path_buf(), None)),
                    Some(d) if d > below => Some((root.to_path_buf(), Some(d - below))),
                    Some(_) => None,
                }
            } else {
                None
            };
            if let Some((dir, depth)) = start {
                let start = (dir, depth.unwrap_or(MAX_DEPTH).min(MAX_DEPTH));
                if !starts.contains(&start) {
                    starts.push(start);
                }
            }
        }
    }
    let mut found: BTreeMap<String, ListedFile> = BTreeMap::new();
    let walked = walk(roots, &starts, &mut |text| {
        if found.contains_key(text) || !covered(text) {
            return true;
        }
        if found.len() >= MAX_LISTED {
            return false;
        }
        if let Some(file) = describe(roots, text) {
            found.insert(text.to_string(), file);
        }
        true
    });
    Listing {
        files: found.into_values().collect(),
        truncated: walked.truncated,
    }
}

/// The listing of one covered path, when it opens exactly as a read would open it.
fn describe(roots: &[LogRoot], path: &str) -> Option<ListedFile> {
    let opened = open_beneath(roots, path).ok()?;
    let modified_unix = opened
        .file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .unwrap_or(0);
    let compression = match decompress::detect(&opened.file, &opened.path) {
        Ok(c) => c.as_str(),
        Err(decompress::CompressionRefusal::Unsupported { .. }) => "unsupported",
        Err(_) => "invalid",
    };
    let name = Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    Some(ListedFile {
        path: path.to_string(),
        size: opened.len,
        modified_unix,
        rotated: decompress::looks_rotated(name),
        compression,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_at(dir: &Path) -> Vec<LogRoot> {
        vec![LogRoot::new(dir).expect("root")]
    }

    /// The start folder a symlink to a folder of 1,000 files, and a sub-folder swapped for a
    /// symlink out of the root: neither is entered (nothing of them is looked at).
    #[test]
    fn a_symlinked_or_swapped_folder_is_not_walked() {
        let root = tempfile::tempdir().expect("root");
        let elsewhere = tempfile::tempdir().expect("elsewhere");
        for i in 0..1_000 {
            std::fs::write(elsewhere.path().join(format!("f{i}.log")), "x\n").expect("write");
        }
        let root_path = std::fs::canonicalize(root.path()).expect("canonical");
        std::os::unix::fs::symlink(elsewhere.path(), root_path.join("app")).expect("link");
        let roots = root_at(&root_path);
        let mut seen = Vec::new();
        let walked = walk(&roots, &[(root_path.join("app"), 1)], &mut |p| {
            seen.push(p.to_string());
            true
        });
        assert_eq!(
            (walked.visited, seen.len()),
            (0, 0),
            "a symlinked start was walked"
        );

        // A real folder holding a symlinked sub-folder: the link is an entry, never entered.
        std::fs::create_dir(root_path.join("real")).expect("dir");
        std::fs::write(root_path.join("real/mine.log"), "x\n").expect("write");
        std::os::unix::fs::symlink(elsewhere.path(), root_path.join("real/sub")).expect("link");
        let mut seen = Vec::new();
        let walked = walk(&roots, &[(root_path.join("real"), 3)], &mut |p| {
            seen.push(p.to_string());
            true
        });
        assert_eq!(
            seen,
            vec![root_path.join("real/mine.log").display().to_string()]
        );
        assert_eq!(walked.visited, 2);
        // A folder outside the roots is not a start.
        let walked = walk(&roots, &[(elsewhere.path().to_path_buf(), 1)], &mut |_| {
            true
        });
        assert_eq!(walked.visited, 0);
    }

    /// 40 nested folders with long names beneath a `**` start: the walk holds at most one open
    /// folder a level ([`MAX_DEPTH`]), whatever the tree, and stops descending there.
    #[test]
    fn the_walk_holds_one_open_folder_a_level_at_most() {
        let root = tempfile::tempdir().expect("root");
        let root_path = std::fs::canonicalize(root.path()).expect("canonical");
        let mut deep = root_path.clone();
        for i in 0..40 {
            deep = deep.join(format!("{i:02}{}", "d".repeat(60)));
        }
        std::fs::create_dir_all(&deep).expect("dirs");
        for i in 0..200 {
            std::fs::create_dir(root_path.join(format!("wide{i}"))).expect("dir");
        }
        let roots = root_at(&root_path);
        let walked = walk(&roots, &[(root_path.clone(), MAX_DEPTH)], &mut |_| true);
        assert!(walked.peak_open <= MAX_DEPTH, "{walked:?}");
        assert_eq!(walked.peak_open, MAX_DEPTH);
        assert!(!walked.truncated);
    }

    /// The globs the docs recommend for a file and its rotations (grants.md): `api.log` and
    /// `api.log[.-][0-9]*` cover the file, its numbered and dated rotations, compressed or not,
    /// and no sibling that merely starts with `api.log` (the grammar has no empty alternative:
    /// `api.log{,.*}` does not match `api.log` itself).
    #[test]
    fn the_documented_rotation_globs_cover_rotations_not_siblings() {
        let globs = ["/var/log/app/api.log", "/var/log/app/api.log[.-][0-9]*"]
            .map(|g| loggate_core::grant::compile_path_glob(g).expect("the grant grammar"));
        let covers = |p: &str| globs.iter().any(|g| g.is_match(p));
        for covered in [
            "/var/log/app/api.log",
            "/var/log/app/api.log.1",
            "/var/log/app/api.log.2.gz",
            "/var/log/app/api.log-20261204.zst",
        ] {
            assert!(covers(covered), "{covered}");
        }
        for sibling in [
            "/var/log/app/api.logins.csv",
            "/var/log/app/api.log.bak",
            "/var/log/app/api.log.1/x",
        ] {
            assert!(!covers(sibling), "{sibling}");
        }
    }

    /// 10,000 files of 4 KiB paths (40 MB) would fail on the reader's side (a 4 MiB decode
    /// limit): the agent keeps what fits and says the listing was cut.
    #[test]
    fn a_listing_larger_than_a_client_decodes_is_cut_and_says_so() {
        let file = |i: usize| ListedFile {
            path: format!("/var/log/{i:05}{}", "x".repeat(4_000)),
            size: 1,
            modified_unix: 0,
            rotated: false,
            compression: "",
        };
        let mut big = Listing {
            files: (0..10_000).map(file).collect(),
            truncated: false,
        };
        big.cut_to_bytes(MAX_LISTED_BYTES);
        assert!(big.truncated);
        let bytes: usize = big.files.iter().map(|f| f.path.len() + 64).sum();
        assert!(bytes < 4 << 20, "{bytes} bytes: over what a client decodes");
        assert!(big.files.len() > 500, "{}", big.files.len());
        let mut small = Listing {
            files: (0..10).map(file).collect(),
            truncated: false,
        };
        small.cut_to_bytes(MAX_LISTED_BYTES);
        assert_eq!((small.files.len(), small.truncated), (10, false));
    }

    #[test]
    fn a_walk_starts_at_the_globs_literal_folder_and_goes_as_deep_as_it_can_match() {
        let w = |g: &str| walk_start(g);
        assert_eq!(w("/var/log/app/api.log*"), ("/var/log/app".into(), Some(1)));
        assert_eq!(w("/var/log/app/api.log"), ("/var/log/app".into(), Some(1)));
        assert_eq!(w("/var/log/*/api.log"), ("/var/log".into(), Some(2)));
        assert_eq!(w("/var/log/**/*.log"), ("/var/log".into(), None));
        assert_eq!(w("/**"), ("/".into(), None));
        assert_eq!(w("/var/log/{a,b}/x.log"), ("/var/log".into(), Some(2)));
    }
}
