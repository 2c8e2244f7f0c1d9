//! Who opened the file: what `/proc` and `/etc/passwd` say about a process, read as soon as its
//! event arrives. The kernel's own fields (pid, uid, comm, cgroup id) are authoritative; these are
//! best effort, because a short-lived reader (`cat`) may be gone before its event is read — then
//! `exe` and `cmdline` are absent and the event says so (`process_exited: true`).

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
        exited: exe.is_none() && cmdline.is_none() && !dir.exists(),
        exe,
        cmdline,
        cgroup,
        container_id,
    }
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

/// A user name for `uid` from a passwd-format file (`/etc/passwd`); `None` when absent.
/// (Directory services are not consulted: the agent reads only local files here.)
pub fn user_name(passwd: &Path, uid: u32) -> Option<String> {
    let text = std::fs::read_to_string(passwd).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let id: u32 = fields.next()?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// The cgroup v2 id (the inode number of its folder in cgroupfs) of a cgroup path such as
/// `/system.slice/vector.service`; this is what `bpf_get_current_cgroup_id()` returns.
pub fn cgroup_id(cgroup_root: &Path, cgroup: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let path: PathBuf = cgroup_root.join(cgroup.trim_start_matches('/'));
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// The cgroup path (`/system.slice/x.service`) whose id is `id`: the folder under `cgroup_root`
/// with that inode number, found by walking the hierarchy (at most 8 levels). For a reader that
/// exited before `/proc` was read, the cgroup id the kernel reported still names its cgroup and
/// container.
pub fn cgroup_path_of(cgroup_root: &Path, id: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![(cgroup_root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if meta.ino() == id {
            let rel = dir.strip_prefix(cgroup_root).ok()?;
            return Some(format!("/{}", rel.display()));
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
    None
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
        assert_eq!(user_name(&passwd, 65534).as_deref(), Some("nobody"));
        assert_eq!(user_name(&passwd, 1234), None);
    }

    #[test]
    fn cgroup_path_is_found_from_its_id() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().expect("tempdir");
        let leaf = root.path().join("system.slice/vector.service");
        std::fs::create_dir_all(&leaf).expect("mkdir");
        let id = std::fs::metadata(&leaf).expect("stat").ino();
        assert_eq!(
            cgroup_path_of(root.path(), id).as_deref(),
            Some("/system.slice/vector.service")
        );
        let root_id = std::fs::metadata(root.path()).expect("stat").ino();
        assert_eq!(cgroup_path_of(root.path(), root_id).as_deref(), Some("/"));
        assert_eq!(cgroup_path_of(root.path(), u64::MAX), None);
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
