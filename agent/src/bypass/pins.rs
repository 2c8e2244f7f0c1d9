//! The pin folder: the eBPF audit's links and maps pinned in bpffs (`bypass.pin_dir`), so that
//! the programs stay attached and keep queueing opens in their ring buffer while the agent is
//! stopped, restarted or upgraded, and the next agent adopts them and reports what was queued.
//!
//! Layout of the folder (every entry made by the agent, nothing else is expected there; bpffs
//! refuses names with a dot, EPERM, so none has one):
//! - `link_<hook>`: one pinned link per attached hook (`link_sys_exit_openat`, …);
//! - one pinned map per map of the program, under its name in the object (`events`, `protected`,
//!   `lost`, …), and `lost_reported`, the agent's own ARRAY[1] of u64: how much of the kernel's
//!   loss counter has been audited, so that a restart reports the loss while it was down, once;
//! - `loaded_<identity>_<fd lookup>`: an empty folder made last, when every pin is in: the
//!   SHA-256 of the objects and settings that made the pins (`identity`) and how the programs
//!   look fds up. A folder without it (an agent stopped while pinning) is stale.
//!
//! Threat model: whoever can write in the folder could plant maps and links the agent would
//! then feed and trust (an empty protected set, a ring buffer of invented reads). The folder is
//! used only when it is on bpffs, owned by root or by the agent's own user, and writable by its
//! owner alone; each entry likewise. Otherwise it is refused (fail closed): the agent loads its
//! programs afresh, pins nothing, touches nothing there, and says why in `agent.started`.
//! Two agents never share a folder: the running one holds an exclusive `flock` on it.

use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `f_type` of a bpffs (`BPF_FS_MAGIC`, include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted by convention (systemd mounts it there at boot).
const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// Prefix of the pinned links.
pub const LINK_PREFIX: &str = "link_";
/// Prefix of the completion marker.
const MARKER_PREFIX: &str = "loaded_";
/// The agent's own pinned counter: how much of `lost` it has audited.
pub const LOST_REPORTED: &str = "lost_reported";

/// What became of the pins at this start, as `agent.started` reports it (`bypass_pins`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinOutcome {
    /// No pins were there: the programs were loaded and pinned.
    Created,
    /// Pins of the same objects were there: the agent adopted them (no window).
    Adopted,
    /// Pins of other objects (an upgrade), or incomplete ones, were there: the new programs
    /// were attached first, then the old ones drained, detached and unpinned.
    Replaced,
    /// The folder is not safe to use (owner, mode, not bpffs) or held by another agent: the
    /// programs were loaded afresh and nothing was pinned or removed.
    Refused,
    /// The folder was fine but pinning failed: the programs run unpinned.
    Failed,
    /// Not pinned by configuration (`bypass.pin = false`, or `mode` `off` or `fanotify`); pins
    /// left by an earlier start were removed.
    Off,
}

impl PinOutcome {
    /// The name in `agent.started` (`bypass_pins`).
    pub fn as_str(self) -> &'static str {
        match self {
            PinOutcome::Created => "created",
            PinOutcome::Adopted => "adopted",
            PinOutcome::Replaced => "replaced",
            PinOutcome::Refused => "refused",
            PinOutcome::Failed => "failed",
            PinOutcome::Off => "off",
        }
    }
}

/// Why a pin folder is not used.
#[derive(Debug, thiserror::Error)]
pub enum FolderRefused {
    /// Owned by someone else, writable by others, not a folder, or holding such an entry.
    #[error("the pin folder {path} is not safe to use: {why}; make it a folder owned by root (or the agent's user) with mode 0700, or remove it (`loggate-agent bypass unpin --pin-dir {path}`)")]
    Untrusted { path: String, why: String },
    /// Not on a bpffs, and bpffs could not be mounted.
    #[error("{0}")]
    NotBpffs(String),
    /// Another running agent holds it.
    #[error("another running agent holds the pin folder {0} (its flock): stop it, or give this agent its own bypass.pin_dir")]
    Busy(String),
    /// The folder could not be made or opened.
    #[error("the pin folder {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// An open, checked and locked pin folder. The lock lasts as long as this value.
pub struct PinDir {
    path: PathBuf,
    /// The folder, opened; holds the exclusive flock.
    _lock: OwnedFd,
}

fn c_path(p: &Path) -> Result<CString, FolderRefused> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| FolderRefused::Untrusted {
        path: p.display().to_string(),
        why: "the path holds a NUL byte".into(),
    })
}

fn statfs_type(p: &Path) -> std::io::Result<i64> {
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path; `st` is a zeroed statfs the call fills.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; statfs(2) writes only into `st`.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion)] // f_type's width differs between architectures.
    Ok(i64::from(st.f_type))
}

/// Makes sure `parent` is on a bpffs: mounts one on /sys/fs/bpf when that is the parent and
/// nothing is mounted there yet (as systemd does at boot).
fn ensure_bpffs(parent: &Path) -> Result<(), FolderRefused> {
    let on_bpffs = |p: &Path| statfs_type(p).map(|t| t == BPF_FS_MAGIC).unwrap_or(false);
    if on_bpffs(parent) {
        return Ok(());
    }
    if parent != Path::new(BPFFS_MOUNT) {
        return Err(FolderRefused::NotBpffs(format!(
            "the pin folder's parent {} is not on a bpffs: mount one there, or set bypass.pin_dir beneath {BPFFS_MOUNT}",
            parent.display()
        )));
    }
    let (source, target, fstype, data) = (
        c_path(Path::new("bpf"))?,
        c_path(parent)?,
        c_path(Path::new("bpf"))?,
        c_path(Path::new("mode=0700"))?,
    );
    // SAFETY: all four are valid NUL-terminated strings that outlive the call; mount(2) only
    // reads them.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 || !on_bpffs(parent) {
        return Err(FolderRefused::NotBpffs(format!(
            "bpffs is not mounted on {BPFFS_MOUNT} and mounting it failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Whether `st` is owned by root or by this process's user and writable by its owner alone.
fn trusted_owner_and_mode(st: &libc::stat) -> Result<(), String> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    if st.st_uid != 0 && st.st_uid != own {
        return Err(format!(
            "owned by uid {}, not root or the agent's uid {own}",
            st.st_uid
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(format!(
            "mode {:04o} lets its group or others write",
            st.st_mode & 0o7777
        ));
    }
    Ok(())
}

fn lstat(p: &Path) -> std::io::Result<libc::stat> {
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a zeroed stat is a valid value for lstat(2) to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated, `st` valid for writes; lstat(2) writes only into `st`.
    if unsafe { libc::lstat(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

impl PinDir {
    /// Opens the pin folder at `path` for this agent: on a bpffs (mounted on /sys/fs/bpf if
    /// needed), made with mode 0700 if absent, owned by root or this user and writable by its
    /// owner alone, every entry likewise, and locked (exclusive, non-blocking flock).
    pub fn open(path: &Path) -> Result<PinDir, FolderRefused> {
        let shown = || path.display().to_string();
        let io = |source| FolderRefused::Io {
            path: shown(),
            source,
        };
        let parent = path.parent().ok_or_else(|| FolderRefused::Untrusted {
            path: shown(),
            why: "it has no parent folder".into(),
        })?;
        ensure_bpffs(parent)?;
        let c = c_path(path)?;
        // SAFETY: `c` is a valid NUL-terminated path; mkdir(2) only reads it.
        if unsafe { libc::mkdir(c.as_ptr(), 0o700) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(io(e));
            }
        }
        // SAFETY: `c` is a valid NUL-terminated path; the flags refuse a symbolic link.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
                return Err(FolderRefused::Untrusted {
                    path: shown(),
                    why: "it is not a folder (a symbolic link or a file)".into(),
                });
            }
            return Err(io(e));
        }
        // SAFETY: open(2) returned a new descriptor that nothing else owns.
        let dir = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed stat is a valid value for fstat(2) to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `dir` is open; fstat(2) writes only into `st`.
        if unsafe { libc::fstat(dir.as_raw_fd(), &mut st) } != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        trusted_owner_and_mode(&st)
            .map_err(|why| FolderRefused::Untrusted { path: shown(), why })?;
        if statfs_type(path).map_err(io)? != BPF_FS_MAGIC {
            return Err(FolderRefused::NotBpffs(format!(
                "the pin folder {} is not on a bpffs",
                shown()
            )));
        }
        // SAFETY: `dir` is open; flock(2) takes no pointers.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(FolderRefused::Busy(shown()));
            }
            return Err(io(e));
        }
        let pins = PinDir {
            path: path.to_path_buf(),
            _lock: dir,
        };
        for name in pins.entries().map_err(io)? {
            let st = lstat(&pins.path.join(&name)).map_err(io)?;
            trusted_owner_and_mode(&st).map_err(|why| FolderRefused::Untrusted {
                path: shown(),
                why: format!("its entry {name:?} is {why}"),
            })?;
        }
        Ok(pins)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names in the folder.
    pub fn entries(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// The completion marker's identity and fd lookup, when the folder has exactly one.
    pub fn marker(&self) -> std::io::Result<Option<(String, String)>> {
        let markers: Vec<(String, String)> = self
            .entries()?
            .into_iter()
            .filter_map(|n| parse_marker(&n))
            .collect();
        Ok(match markers.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        })
    }

    /// Writes the completion marker: last, once every pin is in.
    pub fn mark_complete(&self, identity: &str, fd_lookup: &str) -> std::io::Result<()> {
        let dir = self
            .path
            .join(format!("{MARKER_PREFIX}{identity}_{fd_lookup}"));
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
    }

    /// Removes every entry (the marker first: a crash half-way leaves a stale folder, never a
    /// complete-looking one). Pinned objects still held open elsewhere stay alive until closed.
    /// A folder that is not a marker (nothing the agent makes) is refused before anything is
    /// removed, naming it: no half-cleared state.
    pub fn clear(&self) -> std::io::Result<()> {
        let mut entries = self.entries()?;
        for name in entries.iter().filter(|n| !n.starts_with(MARKER_PREFIX)) {
            if lstat(&self.path.join(name))?.st_mode & libc::S_IFMT == libc::S_IFDIR {
                return Err(std::io::Error::other(format!(
                    "{} holds a folder the agent did not make, {name:?}: look at it, then remove it by hand",
                    self.path.display()
                )));
            }
        }
        entries.sort_by_key(|n| !n.starts_with(MARKER_PREFIX));
        for name in entries {
            let p = self.path.join(&name);
            if name.starts_with(MARKER_PREFIX) {
                std::fs::remove_dir(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
        Ok(())
    }

    /// Removes the folder and everything in it.
    pub fn remove(self) -> std::io::Result<()> {
        self.clear()?;
        std::fs::remove_dir(&self.path)
    }
}

/// The identity and fd lookup a marker's name carries (`loaded_<64 hex>_<fd lookup>`).
fn parse_marker(name: &str) -> Option<(String, String)> {
    let rest = name.strip_prefix(MARKER_PREFIX)?;
    let (id, lookup) = (rest.get(..64)?, rest.get(64..)?.strip_prefix('_')?);
    let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    (id.chars().all(hex) && !lookup.is_empty()).then(|| (id.to_string(), lookup.to_string()))
}

/// What identifies the programs a set of pins holds: the SHA-256 of both builds of the object,
/// the hooks, the kfunc setting and the event layout. Pins with another identity were made by
/// another version (or configuration) of the agent and are replaced, never adopted.
pub fn identity(hooks_name: &str, kfuncs: bool, event_size: usize) -> String {
    let mut h = Sha256::new();
    for part in [
        loggate_agent_ebpf::object(),
        loggate_agent_ebpf::probe_read_object(),
    ] {
        h.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_le_bytes());
        h.update(part);
    }
    h.update(hooks_name.as_bytes());
    h.update([u8::from(kfuncs)]);
    h.update(u64::try_from(event_size).unwrap_or(u64::MAX).to_le_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens the pin folder `path` for `loggate-agent bypass unpin` (see `super::unpin`): refused
/// while an agent runs with it, and when the folder is not one the agent would trust (remove
/// such a folder by hand after looking at it).
pub fn open_for_unpin(path: &Path) -> anyhow::Result<PinDir> {
    PinDir::open(path).map_err(|e| match e {
        FolderRefused::Untrusted { path, why } => anyhow::anyhow!(
            "{path} is not a pin folder the agent trusts ({why}): look at what it holds, then remove it by hand (rm -r {path})"
        ),
        other => anyhow::Error::new(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_with(uid: u32, mode: u32) -> libc::stat {
        // SAFETY: a zeroed stat is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        st.st_uid = uid;
        st.st_mode = libc::S_IFDIR | mode;
        st
    }

    #[test]
    fn a_folder_writable_by_group_or_others_or_owned_by_another_user_is_not_trusted() {
        assert!(trusted_owner_and_mode(&stat_with(0, 0o700)).is_ok());
        assert!(trusted_owner_and_mode(&stat_with(0, 0o755)).is_ok());
        let group = trusted_owner_and_mode(&stat_with(0, 0o770)).unwrap_err();
        assert!(group.contains("0770"), "{group}");
        assert!(trusted_owner_and_mode(&stat_with(0, 0o702)).is_err());
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let other = unsafe { libc::geteuid() }.wrapping_add(4242);
        let owner = trusted_owner_and_mode(&stat_with(other, 0o700)).unwrap_err();
        assert!(owner.contains("owned by uid"), "{owner}");
    }

    #[test]
    fn a_marker_names_the_identity_and_fd_lookup_and_nothing_else_is_one() {
        let id = identity("tracepoint", true, 2040);
        assert_eq!(
            parse_marker(&format!("loaded_{id}_rdonly_cast")),
            Some((id.clone(), "rdonly_cast".to_string()))
        );
        assert_eq!(
            parse_marker(&format!("loaded_{id}_probe_read")),
            Some((id.clone(), "probe_read".to_string()))
        );
        for other in [
            format!("loaded_{id}"),
            format!("loaded_{id}_"),
            format!("loaded_{}_none", "Z".repeat(64)),
            "loaded_short_none".to_string(),
            "link_sys_exit_openat".to_string(),
            "events".to_string(),
        ] {
            assert_eq!(parse_marker(&other), None, "{other}");
        }
    }

    #[test]
    fn identity_changes_with_the_hooks_the_kfunc_setting_and_the_event_layout() {
        let base = identity("tracepoint", true, 100);
        assert_eq!(base, identity("tracepoint", true, 100));
        assert_eq!(base.len(), 64);
        assert_ne!(base, identity("strict", true, 100));
        assert_ne!(base, identity("tracepoint", false, 100));
        assert_ne!(base, identity("tracepoint", true, 101));
    }
}
