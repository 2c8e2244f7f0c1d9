//! Bypass audit: every open-for-reading of a protected log file by a process other than the
//! agent, seen by eBPF in the kernel and written to the audit stream as `bypass.read`.
//!
//! The kernel side (`loggate-agent-ebpf`) matches opens on (device, inode) of the protected files
//! and directories; this side loads it, keeps its maps equal to what the configured roots hold
//! (`inventory`), reads its ring buffer, adds what `/proc` knows about the opener (`process`),
//! resolves the path, checks whether the opener holds a grant, and audits. When the program
//! cannot be loaded the agent keeps serving and says so (`bypass_audit_unavailable`).

mod event;
mod inventory;
mod loader;
mod process;

use crate::Shared;
use anyhow::bail;
use event::{RawEvent, MATCH_DIR, MATCH_FILE};
use inventory::{dev_text, FileKey, Inventory};
use loader::{Outputs, Probe, ProtectedMaps};
use loggate_core::audit_fields;
use loggate_core::grant::{compile_path_glob, unix_now};
use process::ProcessInfo;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
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
    /// The best mode this build has that the kernel accepts (today: `tracepoint`).
    Auto,
    /// Syscall exit tracepoints of the open family.
    Tracepoint,
    Off,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Tracepoint => "tracepoint",
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
            other @ (ModeName::Lsm | ModeName::Fentry | ModeName::Strict | ModeName::Fanotify) => {
                bail!(
                    "bypass.mode {:?} is not built yet; use \"auto\", \"tracepoint\" or \"off\"",
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

/// The bypass audit as started: active with a loaded program, or not, and why.
pub enum Startup {
    Active(Box<Active>),
    Inactive {
        requested: Mode,
        /// `None` when switched off by configuration.
        reason: Option<String>,
    },
}

pub struct Active {
    probe: Probe,
    maps: ProtectedMaps,
    outputs: Outputs,
    inventory: Inventory,
}

impl Startup {
    /// Loads and attaches the program, excludes this process, and fills the protected set
    /// from `roots` — all before the agent serves, so the first read is already covered.
    pub fn begin(config: &BypassConfig, roots: &[PathBuf]) -> Startup {
        if config.mode == Mode::Off {
            return Startup::Inactive {
                requested: Mode::Off,
                reason: None,
            };
        }
        match Self::load(config, roots) {
            Ok(active) => Startup::Active(Box::new(active)),
            Err(e) => Startup::Inactive {
                requested: config.mode,
                reason: Some(format!("{e:#}")),
            },
        }
    }

    fn load(config: &BypassConfig, roots: &[PathBuf]) -> anyhow::Result<Active> {
        let mut probe = Probe::load_tracepoints()?;
        let (mut maps, outputs) = probe.split()?;
        maps.exclude_tgid(std::process::id())?;
        let inventory = Inventory::scan(roots, config.max_protected);
        maps.sync(&inventory)?;
        Ok(Active {
            probe,
            maps,
            outputs,
            inventory,
        })
    }

    /// The active mode's name, as reported in `agent.started`: `tracepoint` or `off`.
    pub fn mode_name(&self) -> &'static str {
        match self {
            Startup::Active(_) => "tracepoint",
            Startup::Inactive { .. } => "off",
        }
    }

    /// Extra `agent.started` fields: the mode, the hooks attached, the protected entries.
    pub fn started_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        match self {
            Startup::Active(a) => audit_fields!(
                "bypass_mode" => self.mode_name(),
                "bypass_hooks" => a.probe.attached.clone(),
                "bypass_hooks_missing" => a.probe.missing.clone(),
                "bypass_protected" => a.inventory.len(),
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
            Startup::Active(active) => {
                let Active {
                    probe,
                    maps,
                    outputs,
                    inventory,
                } = *active;
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
                tokio::spawn(maintain(shared, probe, maps, lost, inventory));
            }
        }
        Ok(())
    }
}

/// Rescans the roots into the kernel maps and reports lost events, every `rescan_interval`.
/// Owns the probe: the programs stay attached as long as this task runs.
async fn maintain(
    shared: Arc<Shared>,
    _probe: Probe,
    mut maps: ProtectedMaps,
    lost: aya::maps::Array<aya::maps::MapData, u64>,
    inventory: Arc<RwLock<Inventory>>,
) {
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
        if let Err(e) = maps.sync(&fresh) {
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

        let total = lost.get(&0, 0).unwrap_or(0);
        if total > lost_reported {
            let fields = audit_fields!(
                "lost_total" => total,
                "lost_since_last" => total - lost_reported,
                "reason" => "ring buffer full",
            );
            if let Err(e) = shared.audit("bypass.events_lost", fields) {
                tracing::error!("audit write failed: {e:#}");
            }
            lost_reported = total;
        }
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
                tracing::error!("bypass audit: ring buffer poll failed, stopping: {e}");
                let _ = shared.audit(
                    "bypass_audit_unavailable",
                    audit_fields!("requested_mode" => shared.config.bypass.mode.name(), "reason" => format!("ring buffer poll failed: {e}")),
                );
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
            let record = {
                let inv = inventory.read().unwrap_or_else(|p| p.into_inner());
                bypass_record(&shared, &inv, &raw, &info)
            };
            if let Err(e) = shared.audit("bypass.read", record) {
                tracing::error!("audit write failed: {e:#}");
            }
        }
    }
}

/// The protected path an event is about: the inventory's path of the file, or of its folder
/// joined with the opened name. `None` if the entry left the inventory meanwhile.
fn resolve_path(inv: &Inventory, raw: &RawEvent) -> Option<PathBuf> {
    match raw.matched {
        MATCH_FILE => inv
            .get(&FileKey::new(raw.dev, raw.ino))
            .map(|(_, p)| p.to_path_buf()),
        MATCH_DIR => inv
            .get(&FileKey::new(raw.dir_dev, raw.dir_ino))
            .map(|(_, dir)| dir.join(raw.name())),
        _ => None,
    }
}

/// Which allow-list rule, if any, makes this open expected.
fn allow_rule(config: &BypassConfig, info: &ProcessInfo, cgroup_id: u64) -> Option<String> {
    if let Some(exe) = info.exe.as_deref() {
        if config.allow_exe.contains(exe) {
            return Some(format!("exe:{exe}"));
        }
    }
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
    inv: &Inventory,
    raw: &RawEvent,
    info: &ProcessInfo,
) -> serde_json::Map<String, serde_json::Value> {
    let config = &shared.config.bypass;
    let path = resolve_path(inv, raw).map(|p| p.display().to_string());
    let rule = allow_rule(config, info, raw.cgroup_id);
    let expected = rule.is_some();
    let (holds_grant, grant_ids, grant_check) = match (config.uid_subjects.get(&raw.uid), &path) {
        (Some(name), Some(path)) => {
            let subject = format!("spiffe://{}/user/{name}", shared.config.trust_domain);
            let ids = covering_grants(shared, &subject, path, unix_now());
            (
                !ids.is_empty(),
                ids,
                format!("uid {} is {subject}", raw.uid),
            )
        }
        (Some(_), None) => (false, Vec::new(), "path unknown".to_string()),
        (None, _) => (
            false,
            Vec::new(),
            format!(
                "no subject is mapped to uid {} (bypass.uid_subjects)",
                raw.uid
            ),
        ),
    };
    audit_fields!(
        "pid" => raw.tgid,
        "tid" => raw.pid,
        "ppid" => raw.ppid,
        "uid" => raw.uid,
        "user" => process::user_name(Path::new("/etc/passwd"), raw.uid),
        "gid" => raw.gid,
        "comm" => raw.comm(),
        "exe" => info.exe.clone(),
        "cmdline" => info.cmdline.clone(),
        "process_exited" => info.exited,
        "cgroup_id" => raw.cgroup_id,
        "cgroup" => info.cgroup.clone(),
        "container_id" => info.container_id.clone(),
        "path" => path,
        "opened_name" => raw.name(),
        "matched" => if raw.matched == MATCH_DIR { "directory" } else { "file" },
        "inode" => raw.ino,
        "device" => dev_text(raw.dev),
        "fd" => raw.fd,
        "flags" => event::flags_text(raw.flags),
        "hook" => raw.hook(),
        "expected" => expected,
        "allow_rule" => rule,
        "severity" => if expected { "low" } else { "high" },
        "holds_grant" => holds_grant,
        "grant_ids" => grant_ids,
        "grant_check" => grant_check,
    )
}
