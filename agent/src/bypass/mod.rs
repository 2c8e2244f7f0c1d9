//! Bypass audit: every open-for-reading of a protected log file by a process other than the
//! agent, seen by eBPF in the kernel and written to the audit stream as `bypass.read`.
//!
//! The kernel side (`loggate-agent-ebpf`) matches opens on (device, inode) of the protected files
//! and directories; this side loads it, keeps its maps equal to what the configured roots hold
//! (`inventory`), reads its ring buffer, adds what `/proc` knows about the opener (`process`),
//! resolves the path, checks whether the opener holds a grant, and audits. When the program
//! cannot be loaded the agent keeps serving and says so (`bypass_audit_unavailable`).

mod event;
mod fanotify;
mod inventory;
mod loader;
mod process;

use crate::Shared;
use anyhow::bail;
use event::{RawEvent, MATCH_DIR, MATCH_FILE};
use fanotify::{FanEvent, Fanotify};
use inventory::{dev_text, FileKey, Inventory, Kind};
use loader::{Outputs, Probe, ProtectedMaps};
use loggate_core::audit_fields;
use loggate_core::grant::{compile_path_glob, unix_now};
use process::ProcessInfo;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// Entries the kernel maps hold at most (`max_entries` in logaudit.bpf.c).
const MAP_CAPACITY: usize = 65536;

/// `[bypass]` in the agent configuration (documented in docs/configuration.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BypassFile {
    mode: ModeName,
    allow_exe: Vec<PathBuf>,
    allow_cgroup: Vec<String>,
    rescan_interval: String,
    max_protected: usize,
    uid_subjects: BTreeMap<String, String>,
}

impl Default for BypassFile {
    fn default() -> Self {
        BypassFile {
            mode: ModeName::Auto,
            allow_exe: Vec::new(),
            allow_cgroup: Vec::new(),
            rescan_interval: "2s".into(),
            max_protected: MAP_CAPACITY,
            uid_subjects: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModeName {
    Auto,
    Tracepoint,
    Off,
    Lsm,
    Fentry,
    Strict,
    Fanotify,
}

/// The requested bypass-audit mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `tracepoint` if the kernel accepts it, else `fanotify`.
    Auto,
    /// eBPF on the open-family syscall exits and io_uring completions.
    Tracepoint,
    /// fanotify `FAN_OPEN` marks only (no eBPF).
    Fanotify,
    Off,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Tracepoint => "tracepoint",
            Mode::Fanotify => "fanotify",
            Mode::Off => "off",
        }
    }
}

/// The validated `[bypass]` settings.
#[derive(Debug, Clone)]
pub struct BypassConfig {
    pub mode: Mode,
    pub allow_exe: BTreeSet<String>,
    pub allow_cgroup: Vec<String>,
    pub rescan_interval: Duration,
    pub max_protected: usize,
    pub uid_subjects: BTreeMap<u32, String>,
}

impl Default for BypassConfig {
    fn default() -> Self {
        BypassFile::default()
            .validate()
            .unwrap_or_else(|_| unreachable!("the default [bypass] settings are valid"))
    }
}

impl BypassFile {
    pub fn validate(self) -> anyhow::Result<BypassConfig> {
        let mode = match self.mode {
            ModeName::Auto => Mode::Auto,
            ModeName::Tracepoint => Mode::Tracepoint,
            ModeName::Off => Mode::Off,
            ModeName::Fanotify => Mode::Fanotify,
            other @ (ModeName::Lsm | ModeName::Fentry | ModeName::Strict) => {
                bail!(
                    "bypass.mode {:?} is not built yet; use \"auto\", \"tracepoint\", \"fanotify\" or \"off\"",
                    format!("{other:?}").to_lowercase()
                )
            }
        };
        for exe in &self.allow_exe {
            if !exe.is_absolute() {
                bail!(
                    "bypass.allow_exe: {} must be an absolute path",
                    exe.display()
                );
            }
        }
        for cg in &self.allow_cgroup {
            if !cg.starts_with('/') {
                bail!("bypass.allow_cgroup: {cg:?} must be a cgroup v2 path starting with /");
            }
        }
        let rescan_interval = humantime::parse_duration(&self.rescan_interval).map_err(|e| {
            anyhow::anyhow!("bypass.rescan_interval {:?}: {e}", self.rescan_interval)
        })?;
        if rescan_interval < Duration::from_millis(100)
            || rescan_interval > Duration::from_secs(3600)
        {
            bail!("bypass.rescan_interval must be between 100ms and 1h");
        }
        if self.max_protected == 0 || self.max_protected > MAP_CAPACITY {
            bail!("bypass.max_protected must be between 1 and {MAP_CAPACITY}");
        }
        let mut uid_subjects = BTreeMap::new();
        for (uid, name) in self.uid_subjects {
            let Ok(id) = uid.parse::<u32>() else {
                bail!("bypass.uid_subjects: key {uid:?} is not a numeric uid");
            };
            if !loggate_core::identity::is_valid_name(&name) {
                bail!("bypass.uid_subjects: {name:?} is not a valid user name");
            }
            uid_subjects.insert(id, name);
        }
        Ok(BypassConfig {
            mode,
            allow_exe: self
                .allow_exe
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            allow_cgroup: self.allow_cgroup,
            rescan_interval,
            max_protected: self.max_protected,
            uid_subjects,
        })
    }
}

/// The bypass audit as started: which mechanism is active, or none and why.
pub enum Startup {
    Ebpf(Box<EbpfAudit>),
    Fanotify {
        fan: Fanotify,
        inventory: Inventory,
        /// Why eBPF was not used (`auto` fell back), if it was tried.
        ebpf_error: Option<String>,
    },
    Inactive {
        requested: Mode,
        /// `None` when switched off by configuration.
        reason: Option<String>,
    },
}

pub struct EbpfAudit {
    probe: Probe,
    maps: ProtectedMaps,
    outputs: Outputs,
    inventory: Inventory,
}

impl Startup {
    /// Starts the requested mechanism (for `auto`: eBPF, else fanotify), excludes this process,
    /// and fills the protected set from `roots` — all before the agent serves, so the first
    /// read is already covered.
    pub fn begin(config: &BypassConfig, roots: &[PathBuf]) -> Startup {
        let ebpf_error = match config.mode {
            Mode::Off => {
                return Startup::Inactive {
                    requested: Mode::Off,
                    reason: None,
                }
            }
            Mode::Fanotify => None,
            Mode::Auto | Mode::Tracepoint => match Self::load_ebpf(config, roots) {
                Ok(audit) => return Startup::Ebpf(Box::new(audit)),
                Err(e) if config.mode == Mode::Auto => Some(format!("{e:#}")),
                Err(e) => {
                    return Startup::Inactive {
                        requested: config.mode,
                        reason: Some(format!("{e:#}")),
                    }
                }
            },
        };
        match Self::start_fanotify(config, roots) {
            Ok((fan, inventory)) => Startup::Fanotify {
                fan,
                inventory,
                ebpf_error,
            },
            Err(e) => Startup::Inactive {
                requested: config.mode,
                reason: Some(match ebpf_error {
                    Some(ebpf) => format!("eBPF: {ebpf}; fanotify: {e:#}"),
                    None => format!("fanotify: {e:#}"),
                }),
            },
        }
    }

    fn load_ebpf(config: &BypassConfig, roots: &[PathBuf]) -> anyhow::Result<EbpfAudit> {
        let mut probe = Probe::load_tracepoints()?;
        let (mut maps, outputs) = probe.split()?;
        maps.exclude_tgid(std::process::id())?;
        let inventory = Inventory::scan(roots, config.max_protected);
        maps.sync(&inventory)?;
        Ok(EbpfAudit {
            probe,
            maps,
            outputs,
            inventory,
        })
    }

    fn start_fanotify(
        config: &BypassConfig,
        roots: &[PathBuf],
    ) -> anyhow::Result<(Fanotify, Inventory)> {
        let mut fan = Fanotify::init()?;
        let inventory = Inventory::scan(roots, config.max_protected);
        fan.sync(&inventory)?;
        Ok((fan, inventory))
    }

    /// The active mode's name, as reported in `agent.started`: `tracepoint`, `fanotify`, `off`.
    pub fn mode_name(&self) -> &'static str {
        match self {
            Startup::Ebpf(_) => "tracepoint",
            Startup::Fanotify { .. } => "fanotify",
            Startup::Inactive { .. } => "off",
        }
    }

    /// Extra `agent.started` fields: the mode, the hooks attached, the protected entries.
    pub fn started_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        match self {
            Startup::Ebpf(a) => audit_fields!(
                "bypass_mode" => self.mode_name(),
                "bypass_hooks" => a.probe.attached.clone(),
                "bypass_hooks_missing" => a.probe.missing.clone(),
                "bypass_protected" => a.inventory.len(),
            ),
            Startup::Fanotify {
                inventory,
                ebpf_error,
                ..
            } => audit_fields!(
                "bypass_mode" => self.mode_name(),
                "bypass_hooks" => vec!["fanotify:FAN_OPEN"],
                "bypass_protected" => inventory.len(),
                "bypass_fallback_reason" => ebpf_error.clone(),
            ),
            Startup::Inactive { .. } => audit_fields!("bypass_mode" => self.mode_name()),
        }
    }

    /// Writes `bypass_audit_unavailable` when the audit was requested but could not start, and
    /// warns on stderr; then runs the active audit's tasks.
    pub fn spawn(self, shared: Arc<Shared>) -> anyhow::Result<()> {
        match self {
            Startup::Inactive {
                requested,
                reason: Some(reason),
            } => {
                tracing::warn!(
                    "bypass audit UNAVAILABLE: direct reads of protected files are not audited on this host: {reason}"
                );
                shared.audit(
                    "bypass_audit_unavailable",
                    audit_fields!("requested_mode" => requested.name(), "reason" => reason),
                )?;
            }
            Startup::Inactive { reason: None, .. } => {
                tracing::info!("bypass audit is off by configuration");
            }
            Startup::Fanotify {
                fan,
                inventory,
                ebpf_error,
            } => {
                if let Some(e) = ebpf_error {
                    tracing::warn!(
                        "bypass audit: eBPF unavailable ({e}); using fanotify: no open flags, uid and command only while the opener lives"
                    );
                }
                let inventory = Arc::new(RwLock::new(inventory));
                let fd = fan.fd().try_clone()?;
                // SAFETY: the AsyncFd owns this OwnedFd (a duplicate of the fanotify fd), which
                // stays open and the same until the AsyncFd drops it.
                let fd =
                    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
                tokio::spawn(read_fanotify(shared.clone(), fd, inventory.clone()));
                tokio::spawn(maintain(shared, Maintained::Fanotify(fan), inventory));
            }
            Startup::Ebpf(audit) => {
                let EbpfAudit {
                    probe,
                    maps,
                    outputs,
                    inventory,
                } = *audit;
                for hook in &probe.missing {
                    tracing::warn!(
                        "bypass audit: hook not attached, its opens are not seen: {hook}"
                    );
                }
                let inventory = Arc::new(RwLock::new(inventory));
                let Outputs { events, lost } = outputs;
                // SAFETY: the ring buffer owns its map's file descriptor (an OwnedFd inside
                // MapData, never replaced), so the fd is open and the same for as long as the
                // RingBuf lives, and the AsyncFd owns the RingBuf.
                let ring = unsafe {
                    AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
                }?;
                tokio::spawn(read_events(shared.clone(), ring, inventory.clone()));
                tokio::spawn(maintain(
                    shared,
                    Maintained::Ebpf(Box::new(EbpfMaintained {
                        _probe: probe,
                        maps,
                        lost,
                    })),
                    inventory,
                ));
            }
        }
        Ok(())
    }
}

/// What the maintenance task keeps up to date.
enum Maintained {
    /// Owns the probe: the programs stay attached as long as the task runs.
    Ebpf(Box<EbpfMaintained>),
    Fanotify(Fanotify),
}

struct EbpfMaintained {
    _probe: Probe,
    maps: ProtectedMaps,
    lost: aya::maps::Array<aya::maps::MapData, u64>,
}

/// Rescans the roots into the kernel's protected set and reports lost eBPF events, every
/// `rescan_interval`.
async fn maintain(shared: Arc<Shared>, mut target: Maintained, inventory: Arc<RwLock<Inventory>>) {
    let config = &shared.config.bypass;
    let roots: Vec<PathBuf> = shared
        .config
        .roots
        .iter()
        .map(|r| r.path().to_path_buf())
        .collect();
    let mut tick = tokio::time::interval(config.rescan_interval);
    let mut lost_reported = 0u64;
    let mut skipped_reported = 0usize;
    loop {
        tick.tick().await;
        let fresh = Inventory::scan(&roots, config.max_protected);
        let synced = match &mut target {
            Maintained::Ebpf(e) => e.maps.sync(&fresh),
            Maintained::Fanotify(fan) => fan.sync(&fresh),
        };
        if let Err(e) = synced {
            tracing::error!("bypass audit: updating the protected set: {e:#}");
        }
        if fresh.skipped > 0 && skipped_reported == 0 {
            tracing::warn!(
                "bypass audit: {} entries beneath the roots exceed bypass.max_protected and are only covered through their folder",
                fresh.skipped
            );
        }
        skipped_reported = fresh.skipped;
        *inventory.write().unwrap_or_else(|p| p.into_inner()) = fresh;

        if let Maintained::Ebpf(e) = &target {
            let total = e.lost.get(&0, 0).unwrap_or(0);
            if total > lost_reported {
                audit_lost(&shared, total, total - lost_reported, "ring buffer full");
                lost_reported = total;
            }
        }
    }
}

fn audit_lost(shared: &Shared, total: u64, since_last: u64, reason: &str) {
    let fields = audit_fields!(
        "lost_total" => total,
        "lost_since_last" => since_last,
        "reason" => reason,
    );
    if let Err(e) = shared.audit("bypass.events_lost", fields) {
        tracing::error!("audit write failed: {e:#}");
    }
}

/// Drains the ring buffer whenever the kernel signals it, inspects each opener in /proc at
/// once (before a short-lived reader is gone), then audits each open.
async fn read_events(
    shared: Arc<Shared>,
    mut ring: AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    inventory: Arc<RwLock<Inventory>>,
) {
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                stopped(&shared, &format!("ring buffer poll failed: {e}"));
                return;
            }
        };
        let mut batch = Vec::new();
        while let Some(item) = guard.get_inner_mut().next() {
            if let Some(raw) = RawEvent::parse(&item) {
                let info = process::inspect(Path::new("/proc"), raw.tgid);
                batch.push((raw, info));
            }
        }
        guard.clear_ready();
        for (raw, info) in batch {
            let opened = {
                let inv = inventory.read().unwrap_or_else(|p| p.into_inner());
                Opened::from_kernel(&inv, &raw)
            };
            if let Err(e) = shared.audit("bypass.read", bypass_record(&shared, &opened, &info)) {
                tracing::error!("audit write failed: {e:#}");
            }
        }
    }
}

/// The fanotify counterpart of `read_events`.
async fn read_fanotify(
    shared: Arc<Shared>,
    fd: AsyncFd<OwnedFd>,
    inventory: Arc<RwLock<Inventory>>,
) {
    let own = std::process::id();
    let mut overflows = 0u64;
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                stopped(&shared, &format!("fanotify poll failed: {e}"));
                return;
            }
        };
        let events = match guard.try_io(|fd| fanotify::read_events(fd.get_ref(), own)) {
            Ok(Ok(events)) => events,
            Ok(Err(e)) => {
                stopped(&shared, &format!("fanotify read failed: {e}"));
                return;
            }
            Err(_would_block) => continue,
        };
        let mut batch = Vec::new();
        for event in events {
            match event {
                FanEvent::Overflow => {
                    overflows += 1;
                    audit_lost(&shared, overflows, 1, "fanotify queue overflow");
                }
                FanEvent::Open(open) => {
                    let info = process::inspect(Path::new("/proc"), open.pid);
                    let status = process::status(Path::new("/proc"), open.pid);
                    batch.push((open, status, info));
                }
            }
        }
        for (open, status, info) in batch {
            let opened = {
                let inv = inventory.read().unwrap_or_else(|p| p.into_inner());
                Opened::from_fanotify(&inv, &open, status, &info)
            };
            let Some(opened) = opened else {
                continue; // not (or no longer) protected
            };
            if let Err(e) = shared.audit("bypass.read", bypass_record(&shared, &opened, &info)) {
                tracing::error!("audit write failed: {e:#}");
            }
        }
    }
}

fn stopped(shared: &Shared, reason: &str) {
    tracing::error!("bypass audit stopped: {reason}");
    let _ = shared.audit(
        "bypass_audit_unavailable",
        audit_fields!("requested_mode" => shared.config.bypass.mode.name(), "reason" => reason),
    );
}

/// One bypass open, from either mechanism. `None` fields are what that mechanism could not
/// tell (fanotify: flags, thread; and everything `/proc` lost when the opener exited).
struct Opened {
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
    fn from_kernel(inv: &Inventory, raw: &RawEvent) -> Opened {
        let path = match raw.matched {
            MATCH_FILE => inv
                .get(&FileKey::new(raw.dev, raw.ino))
                .map(|(_, p)| p.to_path_buf()),
            MATCH_DIR => inv
                .get(&FileKey::new(raw.dir_dev, raw.dir_ino))
                .map(|(_, dir)| dir.join(raw.name())),
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

    fn from_fanotify(
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

/// Which allow-list rule, if any, makes this open expected.
fn allow_rule(config: &BypassConfig, info: &ProcessInfo, cgroup_id: Option<u64>) -> Option<String> {
    if let Some(exe) = info.exe.as_deref() {
        if config.allow_exe.contains(exe) {
            return Some(format!("exe:{exe}"));
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
                && c.paths
                    .iter()
                    .any(|p| compile_path_glob(p).is_ok_and(|m| m.is_match(path)))
        })
        .map(|g| g.claims().jti.clone())
        .collect()
}

fn bypass_record(
    shared: &Shared,
    opened: &Opened,
    info: &ProcessInfo,
) -> serde_json::Map<String, serde_json::Value> {
    let config = &shared.config.bypass;
    let path = opened.path.as_ref().map(|p| p.display().to_string());
    let rule = allow_rule(config, info, opened.cgroup_id);
    let expected = rule.is_some();
    let mapped = opened.uid.and_then(|uid| config.uid_subjects.get(&uid));
    let (holds_grant, grant_ids, grant_check) = match (opened.uid, mapped, &path) {
        (Some(uid), Some(name), Some(path)) => {
            let subject = format!("spiffe://{}/user/{name}", shared.config.trust_domain);
            let ids = covering_grants(shared, &subject, path, unix_now());
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
    audit_fields!(
        "pid" => opened.pid,
        "tid" => opened.tid,
        "ppid" => opened.ppid,
        "uid" => opened.uid,
        "user" => opened.uid.and_then(|uid| process::user_name(Path::new("/etc/passwd"), uid)),
        "gid" => opened.gid,
        "comm" => opened.comm.clone(),
        "exe" => info.exe.clone(),
        "cmdline" => info.cmdline.clone(),
        "process_exited" => info.exited,
        "cgroup_id" => opened.cgroup_id,
        "cgroup" => info.cgroup.clone(),
        "container_id" => info.container_id.clone(),
        "path" => path,
        "opened_name" => opened.opened_name.clone(),
        "matched" => opened.matched,
        "inode" => opened.ino,
        "device" => dev_text(opened.dev),
        "fd" => opened.fd,
        "flags" => opened.flags.clone(),
        "hook" => opened.hook,
        "expected" => expected,
        "allow_rule" => rule,
        "severity" => if expected { "low" } else { "high" },
        "holds_grant" => holds_grant,
        "grant_ids" => grant_ids,
        "grant_check" => grant_check,
    )
}
