//! One bypass open as an audit record: the opener, the protected path, the allow-list verdict
//! and the grant correlation, whichever mechanism (eBPF or fanotify) saw it.

use super::event::{self, RawEvent, MATCH_DIR, MATCH_FILE};
use super::fanotify;
use super::inventory::{self, dev_text, FileKey, Inventory, Kind};
use super::process::{self, ProcessInfo};
use super::BypassConfig;
use crate::Shared;
use loggate_core::audit::events::BypassRead;
use loggate_core::grant::unix_now;
use std::path::{Path, PathBuf};

/// One bypass open, from either mechanism. `None` fields are what that mechanism could not
/// tell (fanotify: flags, thread; and everything `/proc` lost when the opener exited).
pub struct Opened {
    pid: u32,
    tid: Option<u32>,
    ppid: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    comm: Option<String>,
    cgroup_id: Option<u64>,
    path: Option<PathBuf>,
    opened_name: String,
    matched: &'static str,
    ino: u64,
    dev: u32,
    fd: Option<i32>,
    flags: Option<String>,
    hook: &'static str,
    /// Queued while no agent ran (see [`Window`]); `None` for a live open.
    queued: Option<Window>,
}

/// When a queued open can have happened: after the previous agent stopped reading (`None`:
/// unknown, it did not stop cleanly) and before this agent took the queue over (Unix ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub after_ms: Option<i64>,
    pub before_ms: i64,
}

impl Opened {
    /// Marks this open as queued while no agent ran, within `window`.
    pub fn queued(mut self, window: Window) -> Opened {
        self.queued = Some(window);
        self
    }

    /// Resolves the protected path: the inventory's path of the file, or of its folder joined
    /// with the opened name. `path` is `None` if the entry left the inventory meanwhile.
    pub fn from_kernel(inv: &Inventory, raw: &RawEvent) -> Opened {
        let path = match raw.matched {
            MATCH_FILE => inv
                .get(&FileKey::new(raw.dev, raw.ino))
                .map(|(_, p)| p.to_path_buf()),
            MATCH_DIR => inv
                .get(&FileKey::new(raw.dir_dev, raw.dir_ino))
                .and_then(|(_, dir)| Some(dir.join(raw.path_below_folder()?))),
            _ => None,
        };
        Opened {
            pid: raw.tgid,
            tid: Some(raw.pid),
            ppid: Some(raw.ppid),
            uid: Some(raw.uid),
            gid: Some(raw.gid),
            comm: Some(raw.comm()),
            cgroup_id: Some(raw.cgroup_id),
            path,
            opened_name: raw.name(),
            matched: if raw.matched == MATCH_DIR {
                "directory"
            } else {
                "file"
            },
            ino: raw.ino,
            dev: raw.dev,
            fd: Some(raw.fd),
            flags: Some(event::flags_text(raw.flags)),
            hook: raw.hook(),
            queued: None,
        }
    }

    pub fn from_fanotify(
        inv: &Inventory,
        open: &fanotify::FanOpen,
        status: process::Status,
        info: &ProcessInfo,
    ) -> Option<Opened> {
        let opened_name = open
            .path
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (matched, path) =
            if let Some((Kind::File, p)) = inv.get(&FileKey::new(open.dev, open.ino)) {
                ("file", p.to_path_buf())
            } else {
                // A file in a protected folder: the folder as the kernel names it.
                let parent = open.path.as_ref()?.parent()?;
                let meta = std::fs::metadata(parent).ok()?;
                use std::os::unix::fs::MetadataExt;
                let key = FileKey::new(inventory::kernel_dev(meta.dev()), meta.ino());
                match inv.get(&key) {
                    Some((Kind::Dir, dir)) => ("directory", dir.join(&opened_name)),
                    _ => return None,
                }
            };
        let cgroup_id = info
            .cgroup
            .as_deref()
            .and_then(|cg| process::cgroup_id(Path::new("/sys/fs/cgroup"), cg));
        Some(Opened {
            pid: open.pid,
            tid: None,
            ppid: status.ppid,
            uid: status.uid,
            gid: status.gid,
            comm: status.comm,
            cgroup_id,
            path: Some(path),
            opened_name,
            matched,
            ino: open.ino,
            dev: open.dev,
            fd: None,
            flags: None,
            hook: "fanotify",
            queued: None,
        })
    }
}

/// Which allow-list rule, if any, makes this open expected. `allow_exe` is matched on the
/// executable *file* — its (device, inode) against those of the configured paths, looked up
/// now (an upgraded binary is a new inode) — never on a path: from another mount namespace
/// (a container, `unshare`) a process can run its own `/usr/bin/vector`.
pub(super) fn allow_rule(
    config: &BypassConfig,
    info: &ProcessInfo,
    cgroup_id: Option<u64>,
) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if let Some(exe_id) = info.exe_id {
        let allowed = config.allow_exe.iter().find(|path| {
            std::fs::metadata(path)
                .is_ok_and(|m| (inventory::kernel_dev(m.dev()), m.ino()) == exe_id)
        });
        if let Some(path) = allowed {
            return Some(format!("exe:{path}"));
        }
    }
    let cgroup_id = cgroup_id?;
    config
        .allow_cgroup
        .iter()
        .find(|cg| process::cgroup_id(Path::new("/sys/fs/cgroup"), cg) == Some(cgroup_id))
        .map(|cg| format!("cgroup:{cg}"))
}

/// The grants a subject holds whose paths cover `path`, not revoked, and valid at every moment
/// the open can have happened: now for a live open; for a queued one, the whole window
/// (fail closed: a grant that began or ended inside it, or any grant when the window's start
/// is unknown, does not count, so a read made without a grant while the agent was down raises
/// its finding). The certificate-key binding cannot be checked for a local process: this
/// answers "was this person entitled to read this file through the gate".
fn covering_grants(
    shared: &Shared,
    subject: &str,
    path: &str,
    now: i64,
    queued: Option<Window>,
) -> Vec<String> {
    shared
        .grants
        .grants_for(subject)
        .into_iter()
        .filter(|g| {
            let c = g.claims();
            covers_time(c.nbf, c.exp, now, queued)
                && shared.grants.revocation(&c.jti).is_none()
                && g.covers_path(path)
        })
        .map(|g| g.claims().jti.clone())
        .collect()
}

/// Whether a grant valid from `nbf` until `exp` (Unix seconds, `exp` excluded) covers the open:
/// at `now` (seconds) for a live one; over the whole window for a queued one.
fn covers_time(nbf: i64, exp: i64, now: i64, queued: Option<Window>) -> bool {
    match queued {
        None => nbf <= now && now < exp,
        Some(Window { after_ms: None, .. }) => false,
        Some(Window {
            after_ms: Some(after),
            before_ms,
        }) => {
            nbf.saturating_mul(1000) <= after
                && before_ms < exp.saturating_mul(1000)
                && after <= before_ms
        }
    }
}

pub fn bypass_record(shared: &Shared, opened: &Opened, info: &ProcessInfo) -> BypassRead {
    let config = &shared.config.bypass;
    let path = opened.path.as_ref().map(|p| p.display().to_string());
    let rule = allow_rule(config, info, opened.cgroup_id);
    let expected = rule.is_some();
    let mapped = opened.uid.and_then(|uid| config.uid_subjects.get(&uid));
    let subject = mapped.map(|name| format!("spiffe://{}/user/{name}", shared.config.trust_domain));
    let (holds_grant, grant_ids, grant_check) = match (opened.uid, &subject, &path) {
        (Some(uid), Some(subject), Some(path)) => {
            let ids = covering_grants(shared, subject, path, unix_now(), opened.queued);
            (!ids.is_empty(), ids, format!("uid {uid} is {subject}"))
        }
        (Some(_), Some(_), None) => (false, Vec::new(), "path unknown".to_string()),
        (Some(uid), None, _) => (
            false,
            Vec::new(),
            format!("no subject is mapped to uid {uid} (bypass.uid_subjects)"),
        ),
        (None, _, _) => (
            false,
            Vec::new(),
            "uid unknown: the opener exited before it could be inspected".to_string(),
        ),
    };
    BypassRead {
        pid: opened.pid,
        tid: opened.tid,
        ppid: opened.ppid,
        uid: opened.uid,
        user: info.user.clone(),
        subject,
        gid: opened.gid,
        comm: opened.comm.clone(),
        exe: info.exe.clone(),
        cmdline: info.cmdline.clone(),
        process_exited: info.exited,
        cgroup_id: opened.cgroup_id,
        cgroup: info.cgroup.clone(),
        container_id: info.container_id.clone(),
        path,
        opened_name: opened.opened_name.clone(),
        matched: opened.matched,
        inode: opened.ino,
        device: dev_text(opened.dev),
        fd: opened.fd,
        flags: opened.flags.clone(),
        hook: opened.hook,
        expected,
        allow_rule: rule,
        severity: if expected { "low" } else { "high" },
        holds_grant,
        grant_ids,
        grant_check,
        // The finding this open raises (see `super::audit_open`), if the reader holds no grant.
        finding_uid: (!holds_grant).then(loggate_core::audit::ocsf::new_uid),
        queued: opened.queued.is_some(),
        opened_after_ms: opened.queued.and_then(|w| w.after_ms),
        opened_before_ms: opened.queued.map(|w| w.before_ms),
    }
}

/// The `bypass.held_open` of a descriptor found by the start-up sweep (`super::held`).
pub fn held_record(
    shared: &Shared,
    held: &super::held::Held,
    names: &mut process::Names,
) -> loggate_core::audit::events::BypassHeldOpen {
    let proc_root = Path::new("/proc");
    let mut info = process::inspect(proc_root, held.pid);
    info.exe_id = process::exe_id(proc_root, held.pid);
    let status = process::status(proc_root, held.pid);
    let cgroup_id = info
        .cgroup
        .as_deref()
        .and_then(|cg| process::cgroup_id(Path::new("/sys/fs/cgroup"), cg));
    let rule = allow_rule(&shared.config.bypass, &info, cgroup_id);
    let expected = rule.is_some();
    loggate_core::audit::events::BypassHeldOpen {
        pid: held.pid,
        ppid: status.ppid,
        uid: status.uid,
        user: status.uid.and_then(|uid| names.user(uid)),
        comm: status.comm,
        exe: info.exe,
        cmdline: info.cmdline,
        cgroup: info.cgroup,
        path: held.path.display().to_string(),
        opened_name: held
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        inode: held.key.ino,
        device: dev_text(held.key.dev),
        fd: held.fd,
        flags: event::flags_text(held.flags),
        expected,
        allow_rule: rule,
        severity: if expected { "low" } else { "high" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_open_counts_a_grant_only_if_it_covered_the_whole_window() {
        let (nbf, exp) = (1_000, 2_000); // seconds
        let window = |after_ms, before_ms| {
            Some(Window {
                after_ms,
                before_ms,
            })
        };
        // Live: judged now.
        assert!(covers_time(nbf, exp, 1_500, None));
        assert!(!covers_time(nbf, exp, 2_000, None));
        // Queued, inside the grant from start to end: counted, whatever "now" is.
        assert!(covers_time(
            nbf,
            exp,
            5_000,
            window(Some(1_100_000), 1_900_000)
        ));
        // Issued (nbf) inside the window: the read may predate it.
        assert!(!covers_time(
            nbf,
            exp,
            1_500,
            window(Some(900_000), 1_200_000)
        ));
        // Expired inside the window: the read may postdate it.
        assert!(!covers_time(
            nbf,
            exp,
            1_500,
            window(Some(1_100_000), 2_000_000)
        ));
        // The window's start is unknown (the previous agent did not stop cleanly): no grant.
        assert!(!covers_time(nbf, exp, 1_500, window(None, 1_200_000)));
        // A window that ends before it starts (a clock step back) is not trusted.
        assert!(!covers_time(
            nbf,
            exp,
            1_500,
            window(Some(1_300_000), 1_200_000)
        ));
    }

    #[test]
    fn the_allow_list_matches_the_executable_file_not_its_path() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let allowed = dir.path().join("vector");
        let other = dir.path().join("impostor");
        std::fs::write(&allowed, "#!/bin/sh\n").expect("write");
        std::fs::write(&other, "#!/bin/sh\n").expect("write");
        let id = |p: &std::path::Path| {
            let m = std::fs::metadata(p).expect("stat");
            (inventory::kernel_dev(m.dev()), m.ino())
        };
        let config = BypassConfig {
            allow_exe: [allowed.display().to_string()].into_iter().collect(),
            ..BypassConfig::default()
        };
        let mut info = ProcessInfo {
            // The path an impostor in another mount namespace would show.
            exe: Some(allowed.display().to_string()),
            exe_id: Some(id(&allowed)),
            ..ProcessInfo::default()
        };
        assert_eq!(
            allow_rule(&config, &info, None),
            Some(format!("exe:{}", allowed.display()))
        );
        info.exe_id = Some(id(&other));
        assert_eq!(
            allow_rule(&config, &info, None),
            None,
            "same path, another file"
        );
        info.exe_id = None;
        assert_eq!(allow_rule(&config, &info, None), None, "no file known");
    }
}
