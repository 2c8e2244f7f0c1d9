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
}

impl Opened {
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

/// The grants a subject holds, now, whose paths cover `path` (not revoked, inside their
/// window). The certificate-key binding cannot be checked for a local process: this answers
/// "was this person entitled to read this file through the gate".
fn covering_grants(shared: &Shared, subject: &str, path: &str, now: i64) -> Vec<String> {
    shared
        .grants
        .grants_for(subject)
        .into_iter()
        .filter(|g| {
            let c = g.claims();
            c.nbf <= now
                && now < c.exp
                && shared.grants.revocation(&c.jti).is_none()
                && g.covers_path(path)
        })
        .map(|g| g.claims().jti.clone())
        .collect()
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
            let ids = covering_grants(shared, subject, path, unix_now());
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
