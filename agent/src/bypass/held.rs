//! Files already open when the audit starts: the hooks see opens, so a descriptor opened before
//! they were attached (before the agent started, or while it restarted) would never be seen,
//! whoever reads through it later. Right after attaching, the agent sweeps `/proc/*/fd` once and
//! writes `bypass.held_open` for every process holding a protected file open for reading.
//!
//! The sweep runs after the hooks are attached, so an open between the two is seen by one or
//! both; it reads each process's descriptor table, not its threads' (a thread that unshared its
//! table with `unshare(CLONE_FILES)` is not swept), and not memory maps of a closed descriptor.

use super::inventory::{kernel_dev, FileKey, Inventory, Kind};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const O_ACCMODE: u32 = 0o3;
const O_WRONLY: u32 = 0o1;
const O_PATH: u32 = 0o10000000;

/// One descriptor of a protected file, open for reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub pid: u32,
    pub fd: i32,
    pub key: FileKey,
    pub path: PathBuf,
    pub flags: u32,
}

/// Every descriptor, in every process under `proc_root` but those `skip` names (the agent
/// itself and its children excluded from the audit, whose opens are the gate's own reads), of
/// a file in `inventory` that is open for reading (not write-only, not `O_PATH`). Processes
/// and descriptors that vanish during the sweep are skipped.
pub fn sweep(proc_root: &Path, inventory: &Inventory, skip: &dyn Fn(u32) -> bool) -> Vec<Held> {
    let mut held = Vec::new();
    let Ok(procs) = std::fs::read_dir(proc_root) else {
        return held;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if skip(pid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd_entry in fds.flatten() {
            let Some(fd) = fd_entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            // stat() follows the magic link to the open file itself, wherever it now is.
            let Ok(meta) = std::fs::metadata(fd_entry.path()) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let key = FileKey::new(kernel_dev(meta.dev()), meta.ino());
            let Some((Kind::File, path)) = inventory.get(&key) else {
                continue;
            };
            let info = entry.path().join("fdinfo").join(fd.to_string());
            let Some(flags) = std::fs::read_to_string(info)
                .ok()
                .and_then(|t| fdinfo_flags(&t))
            else {
                continue;
            };
            if flags & O_ACCMODE == O_WRONLY || flags & O_PATH != 0 {
                continue;
            }
            held.push(Held {
                pid,
                fd,
                key,
                path: path.to_path_buf(),
                flags,
            });
        }
    }
    held
}

/// The `flags:` line of `/proc/<pid>/fdinfo/<fd>` (octal).
fn fdinfo_flags(text: &str) -> Option<u32> {
    let line = text.lines().find_map(|l| l.strip_prefix("flags:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

#[cfg(test)]
mod tests {
    use super::super::ChildExclusions;
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn fdinfo_flags_are_read_in_octal() {
        assert_eq!(
            fdinfo_flags("pos:\t0\nflags:\t02100000\nmnt_id:\t25\n"),
            Some(0o2100000)
        );
        assert_eq!(fdinfo_flags("pos:\t0\n"), None);
        assert_eq!(fdinfo_flags("flags:\tnine\n"), None);
    }

    #[test]
    fn the_sweep_finds_a_protected_file_held_for_reading_but_not_one_held_for_writing() {
        let root = tempfile::tempdir().expect("tempdir");
        let (read_path, write_path) = (root.path().join("r.log"), root.path().join("w.log"));
        std::fs::write(&read_path, "r").expect("write");
        std::fs::write(&write_path, "w").expect("write");
        let inv = Inventory::scan(&[root.path().to_path_buf()], 100);
        let reader = std::fs::File::open(&read_path).expect("open");
        let writer = std::fs::OpenOptions::new()
            .append(true)
            .open(&write_path)
            .expect("open");
        // This process as seen by the sweep of another: nothing is skipped.
        let held = sweep(Path::new("/proc"), &inv, &|_| false);
        let me = std::process::id();
        let mine: Vec<&Held> = held.iter().filter(|h| h.pid == me).collect();
        assert_eq!(mine.len(), 1, "{held:?}");
        assert_eq!(mine[0].fd, reader.as_raw_fd());
        assert_eq!(mine[0].path, read_path);
        assert!(held
            .iter()
            .all(|h| h.fd != writer.as_raw_fd() || h.pid != me));
        // …and never the agent itself.
        assert!(sweep(Path::new("/proc"), &inv, &|pid| pid == me)
            .iter()
            .all(|h| h.pid != me));
    }

    #[test]
    fn the_sweep_leaves_out_an_excluded_child_of_the_agent() {
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("system.journal");
        std::fs::write(&path, "j").expect("write");
        let inv = Inventory::scan(&[root.path().to_path_buf()], 100);
        // A child holding the protected file open, as a journalctl holds the journal files.
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("exec 3<\"$0\"; exec sleep 30")
            .arg(&path)
            .spawn()
            .expect("sh");
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut seen = Vec::new();
        while std::time::Instant::now() < deadline {
            seen = sweep(Path::new("/proc"), &inv, &|_| false);
            if seen.iter().any(|h| h.pid == pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let excluded = ChildExclusions::fanotify();
        let guard = excluded.exclude(pid).expect("excluded");
        let skipped = sweep(Path::new("/proc"), &inv, &|p| excluded.is_excluded(p));
        guard.release_reaped();
        let after = sweep(Path::new("/proc"), &inv, &|p| excluded.is_excluded(p));
        let _ = child.kill();
        let _ = child.wait();
        assert!(seen.iter().any(|h| h.pid == pid), "not excluded: reported");
        assert!(skipped.iter().all(|h| h.pid != pid), "excluded: left out");
        assert!(
            after.iter().any(|h| h.pid == pid),
            "released: reported again"
        );
    }
}
