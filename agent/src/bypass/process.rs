//! Who opened the file: what `/proc` and `/etc/passwd` say about a process, read as soon as its
//! event arrives. The kernel's own fields (pid, uid, comm, cgroup id) are authoritative; these are
//! best effort, because a short-lived reader (`cat`) may be gone before its event is read — then
//! `exe` and `cmdline` are absent and the event says so (`process_exited: true`).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Longest command line kept (bytes); longer ones are cut and end in `…`.
const MAX_CMDLINE: usize = 4096;

#[derive(Debug, Default, Clone)]
pub struct ProcessInfo {
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    /// The cgroup v2 path (`/system.slice/nginx.service`).
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    /// The opener's user name (from its uid, see [`Names::user`]).
    pub user: Option<String>,
    /// `exe` is the kernel's walk of the executable's dentries (the opener had exited), not
    /// `/proc/<pid>/exe`.
    pub exe_from_kernel: bool,
    /// The executable file itself, (device in the kernel's encoding, inode): what `allow_exe`
    /// is matched on. From the kernel at the open in eBPF mode; in fanotify mode from the file
    /// `/proc/<pid>/exe` leads to when the event is read.
    pub exe_id: Option<(u32, u64)>,
    /// `/proc/<pid>` was gone when the event was read.
    pub exited: bool,
}

/// Reads `/proc/<tgid>` under `proc_root`.
pub fn inspect(proc_root: &Path, tgid: u32) -> ProcessInfo {
    let dir = proc_root.join(tgid.to_string());
    let exe = std::fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| p.display().to_string());
    let cmdline = std::fs::read(dir.join("cmdline"))
        .ok()
        .filter(|b| !b.is_empty())
        .map(|b| cmdline_text(&b));
    let cgroup = std::fs::read_to_string(dir.join("cgroup"))
        .ok()
        .and_then(|t| cgroup_v2_path(&t));
    let container_id = cgroup.as_deref().and_then(container_id);
    ProcessInfo {
        // A zombie (exited, not yet reaped by its parent) still has /proc/<pid>, but nothing
        // of it is left to read: it is gone as far as the record can tell.
        exited: exe.is_none() && cmdline.is_none() && (!dir.exists() || is_zombie(&dir)),
        exe,
        cmdline,
        cgroup,
        container_id,
        user: None,
        exe_from_kernel: false,
        exe_id: None,
    }
}

/// `PF_EXITING` of the kernel's task flags (`include/linux/sched.h`): set as `do_exit` begins,
/// before the process's memory and executable are released.
const PF_EXITING: u64 = 0x4;

/// Whether `/proc/<pid>/stat` (under `dir`) says the process is exiting: a zombie (state `Z`),
/// dead (`X`), or still running `do_exit` (`PF_EXITING` in its flags, the ninth field), which
/// is the window where `exe` and `cmdline` are already gone but the state is not yet `Z`. The
/// fields follow the command name, which may itself hold `)`: they are read after the last one.
fn is_zombie(dir: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
        return false;
    };
    let Some(after_name) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    stat_says_exiting(after_name)
}

/// [`is_zombie`] on the fields after the command name: `state ppid pgrp session tty_nr tpgid
/// flags …`.
fn stat_says_exiting(after_name: &str) -> bool {
    let fields: Vec<&str> = after_name.split_whitespace().take(7).collect();
    let state_ended = fields.first().is_some_and(|s| *s == "Z" || *s == "X");
    let flags_exiting = fields
        .get(6)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_EXITING != 0);
    state_ended || flags_exiting
}

/// The file `/proc/<pid>/exe` leads to, (device in the kernel's encoding, inode): the
/// executable's identity when the kernel did not report it (fanotify mode).
pub fn exe_id(proc_root: &Path, pid: u32) -> Option<(u32, u64)> {
    let meta = std::fs::metadata(proc_root.join(pid.to_string()).join("exe")).ok()?;
    Some((crate::bypass::inventory::kernel_dev(meta.dev()), meta.ino()))
}

/// What `/proc/<pid>/status` says about a process (for the fanotify mode, where the kernel
/// does not tell): its command name, parent, real uid and gid.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub comm: Option<String>,
    pub ppid: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

pub fn status(proc_root: &Path, pid: u32) -> Status {
    let Ok(text) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")) else {
        return Status::default();
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let first_number = |v: Option<String>| {
        v.and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
    };
    Status {
        comm: field("Name:"),
        ppid: first_number(field("PPid:")),
        uid: first_number(field("Uid:")),
        gid: first_number(field("Gid:")),
    }
}

/// NUL-separated arguments joined by spaces, cut at `MAX_CMDLINE` bytes.
pub fn cmdline_text(bytes: &[u8]) -> String {
    let trimmed = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    let cut = &trimmed[..trimmed.len().min(MAX_CMDLINE)];
    let mut text: String = String::from_utf8_lossy(cut).replace('\0', " ");
    if trimmed.len() > MAX_CMDLINE {
        text.push('…');
    }
    text
}

/// The unified hierarchy's line (`0::/path`) of `/proc/<pid>/cgroup`.
fn cgroup_v2_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// A 64-hex-digit container id in a cgroup path, as docker (`/docker/<id>`,
/// `docker-<id>.scope`), containerd (`cri-containerd-<id>.scope`), CRI-O (`crio-<id>.scope`) and
/// podman (`libpod-<id>.scope`) name their cgroups. The last such component wins (nested).
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.rsplit('/').find_map(|component| {
        let component = component.strip_suffix(".scope").unwrap_or(component);
        let id = component.rsplit(['-', ':']).next().unwrap_or(component);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

/// Every uid → user name of a passwd-format file's text (the first line for a uid wins, as
/// getpwuid does). Directory services are not consulted: the agent reads only local files here.
fn passwd_users(text: &str) -> HashMap<u32, String> {
    let mut users = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_password), Some(id)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if let Ok(id) = id.parse::<u32>() {
            users.entry(id).or_insert_with(|| name.to_string());
        }
    }
    users
}

/// Most cgroups remembered by [`Names`]; a walk that finds more keeps the first ones.
const MAX_CGROUPS: usize = 65_536;

/// What identifies one version of a file: a changed passwd file (edited in place or replaced
/// by rename) has another inode, size or modification time.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// The names a bypass event gets from local files, remembered between events: a burst of
/// direct reads costs one `stat` of the passwd file per event, not a reread of it, and a cgroup
/// id is looked up by walking cgroupfs only the first time it is seen (cgroup v2 ids are not
/// reused while the system runs).
pub struct Names {
    passwd: PathBuf,
    cgroup_root: PathBuf,
    users: HashMap<u32, String>,
    users_stamp: Option<Stamp>,
    cgroups: HashMap<u64, String>,
    last_walk: Option<std::time::Instant>,
}

/// A cgroup id not found is looked for again only after this long: events from a cgroup that
/// is already gone do not walk cgroupfs once each.
const WALK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl Names {
    pub fn new(passwd: &Path, cgroup_root: &Path) -> Names {
        Names {
            passwd: passwd.to_path_buf(),
            cgroup_root: cgroup_root.to_path_buf(),
            users: HashMap::new(),
            users_stamp: None,
            cgroups: HashMap::new(),
            last_walk: None,
        }
    }

    /// The user name of `uid` in the passwd file as it is now; `None` when absent or unreadable.
    pub fn user(&mut self, uid: u32) -> Option<String> {
        let Ok(meta) = std::fs::metadata(&self.passwd) else {
            self.users.clear();
            self.users_stamp = None;
            return None;
        };
        let stamp = Stamp::of(&meta);
        if self.users_stamp != Some(stamp) {
            match std::fs::read_to_string(&self.passwd) {
                Ok(text) => {
                    self.users = passwd_users(&text);
                    self.users_stamp = Some(stamp);
                }
                // Read again at the next event rather than trusting an empty table.
                Err(_) => self.users.clear(),
            }
        }
        self.users.get(&uid).cloned()
    }

    /// The cgroup path (`/system.slice/x.service`) whose id is `id`. On a miss the hierarchy is
    /// walked (at most 8 levels, at most once per `WALK_INTERVAL`) and every folder found is
    /// remembered. For a reader that exited before `/proc` was read, the cgroup id the kernel
    /// reported still names its cgroup and container.
    pub fn cgroup_path(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.cgroups.get(&id) {
            return Some(path.clone());
        }
        if self
            .last_walk
            .is_some_and(|at| at.elapsed() < WALK_INTERVAL)
        {
            return None;
        }
        self.last_walk = Some(std::time::Instant::now());
        if self.cgroups.len() >= MAX_CGROUPS {
            self.cgroups.clear();
        }
        walk_cgroups(&self.cgroup_root, &mut self.cgroups);
        self.cgroups.get(&id).cloned()
    }
}

/// The cgroup v2 id (the inode number of its folder in cgroupfs) of a cgroup path such as
/// `/system.slice/vector.service`; this is what `bpf_get_current_cgroup_id()` returns.
pub fn cgroup_id(cgroup_root: &Path, cgroup: &str) -> Option<u64> {
    let path: PathBuf = cgroup_root.join(cgroup.trim_start_matches('/'));
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Records every folder under `cgroup_root` (at most 8 levels, at most `MAX_CGROUPS` in all)
/// in `found`: its inode number (the cgroup id) → its path from the root (`/` for the root).
fn walk_cgroups(cgroup_root: &Path, found: &mut HashMap<u64, String>) {
    let mut stack = vec![(cgroup_root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        if found.len() >= MAX_CGROUPS {
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if let Ok(rel) = dir.strip_prefix(cgroup_root) {
            found.insert(meta.ino(), format!("/{}", rel.display()));
        }
        if depth < 8 {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push((entry.path(), depth + 1));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_found_in_common_runtime_cgroup_names() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/kubepods/besteffort/pod1/cri-containerd-{id}.scope"),
            format!("/docker/{id}"),
            format!("/machine.slice/libpod-{id}.scope/container"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(id), "{path}");
        }
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-3.scope"),
            None
        );
    }

    #[test]
    fn cmdline_is_joined_and_bounded() {
        assert_eq!(cmdline_text(b"cat\0/var/log/a.log\0"), "cat /var/log/a.log");
        let long = vec![b'a'; MAX_CMDLINE + 10];
        let text = cmdline_text(&long);
        assert!(text.ends_with('…') && text.len() == MAX_CMDLINE + '…'.len_utf8());
    }

    #[test]
    fn user_name_comes_from_the_passwd_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let passwd = dir.path().join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .expect("write");
        let mut names = Names::new(&passwd, dir.path());
        assert_eq!(names.user(65534).as_deref(), Some("nobody"));
        assert_eq!(names.user(1234), None);
        // An edit is seen at the next event (another size), and so is a replacement by rename.
        std::fs::write(
            &passwd,
            "root:x:0:0::/root:/bin/sh\nbob:x:1234:1234::/home/bob:/bin/sh\n",
        )
        .expect("edit");
        assert_eq!(names.user(1234).as_deref(), Some("bob"));
        assert_eq!(names.user(65534), None);
        let next = dir.path().join("passwd.new");
        std::fs::write(
            &next,
            "root:x:0:0::/root:/bin/sh\ncarl:x:1234:1234::/:/bin/sh\n",
        )
        .expect("write");
        std::fs::rename(&next, &passwd).expect("rename");
        assert_eq!(names.user(1234).as_deref(), Some("carl"));
        // Malformed lines are skipped; the first line for a uid wins.
        let users = passwd_users("garbage\nx:y:notanumber\na:x:7:7::/:\nb:x:7:7::/:\n");
        assert_eq!(users.len(), 1);
        assert_eq!(users.get(&7).map(String::as_str), Some("a"));
        std::fs::remove_file(&passwd).expect("rm");
        assert_eq!(names.user(0), None);
    }

    #[test]
    fn cgroup_path_is_found_from_its_id() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().expect("tempdir");
        let leaf = root.path().join("system.slice/vector.service");
        std::fs::create_dir_all(&leaf).expect("mkdir");
        let id = std::fs::metadata(&leaf).expect("stat").ino();
        let mut names = Names::new(Path::new("/nonexistent"), root.path());
        assert_eq!(
            names.cgroup_path(id).as_deref(),
            Some("/system.slice/vector.service")
        );
        let root_id = std::fs::metadata(root.path()).expect("stat").ino();
        assert_eq!(names.cgroup_path(root_id).as_deref(), Some("/"));
        assert_eq!(names.cgroup_path(u64::MAX), None);
        // A cgroup created after a walk is found by a miss once WALK_INTERVAL has passed.
        let later = root.path().join("system.slice/late.scope");
        std::fs::create_dir_all(&later).expect("mkdir");
        let later_id = std::fs::metadata(&later).expect("stat").ino();
        assert_eq!(names.cgroup_path(later_id), None, "walked too soon");
        names.last_walk = None;
        assert_eq!(
            names.cgroup_path(later_id).as_deref(),
            Some("/system.slice/late.scope")
        );
    }

    #[test]
    fn a_zombie_is_inspected_as_exited() {
        let proc_root = tempfile::tempdir().expect("tempdir");
        let dir = proc_root.path().join("4242");
        std::fs::create_dir(&dir).expect("mkdir");
        // What /proc shows of a zombie: its stat (a command name with a ')' in it), no exe,
        // an empty cmdline.
        std::fs::write(dir.join("stat"), "4242 (odd) name) Z 1 4242 4242 0 -1").expect("w");
        std::fs::write(dir.join("cmdline"), "").expect("write");
        assert!(inspect(proc_root.path(), 4242).exited);
        std::fs::write(dir.join("stat"), "4242 (odd) name) S 1 4242 4242 0 -1").expect("w");
        assert!(!inspect(proc_root.path(), 4242).exited);
        // Still running do_exit: the state is R, but PF_EXITING (0x4) is in the flags.
        let exiting = "4242 (odd) name) R 1 4242 4242 0 -1 4194564 0 0";
        std::fs::write(dir.join("stat"), exiting).expect("w");
        assert!(inspect(proc_root.path(), 4242).exited);
        let running = "4242 (odd) name) R 1 4242 4242 0 -1 4194560 0 0";
        std::fs::write(dir.join("stat"), running).expect("w");
        assert!(!inspect(proc_root.path(), 4242).exited);
    }

    #[test]
    fn own_process_is_inspected_from_proc() {
        let info = inspect(Path::new("/proc"), std::process::id());
        assert!(!info.exited);
        assert!(info.exe.is_some() && info.cmdline.is_some());
        let st = status(Path::new("/proc"), std::process::id());
        // SAFETY: getuid(2) has no preconditions and cannot fail.
        assert_eq!(st.uid, Some(unsafe { libc::getuid() }));
        assert!(st.comm.is_some() && st.ppid.is_some());
        let none = inspect(Path::new("/proc"), u32::MAX - 1);
        assert!(none.exited && none.exe.is_none());
    }
}
