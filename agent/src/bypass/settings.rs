//! `[bypass]` in the agent configuration: the typed file section and its validated form
//! (every field documented in docs/configuration.md).

use super::loader::Hooks;
use anyhow::bail;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, PathBuf};
use std::time::Duration;

/// Entries the kernel maps hold at most (`max_entries` in logaudit.bpf.c).
const MAP_CAPACITY: usize = 65536;

/// Where the eBPF programs' links and maps are pinned by default (`bypass.pin_dir`).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/loggate";

/// `[bypass]` in the agent configuration (documented in docs/configuration.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BypassFile {
    mode: ModeName,
    allow_exe: Vec<PathBuf>,
    allow_cgroup: Vec<String>,
    #[serde(with = "loggate_core::duration::text")]
    rescan_interval: Duration,
    max_protected: usize,
    uid_subjects: BTreeMap<String, String>,
    kfuncs: bool,
    pin: bool,
    pin_dir: PathBuf,
}

impl Default for BypassFile {
    fn default() -> Self {
        BypassFile {
            mode: ModeName::Auto,
            allow_exe: Vec::new(),
            allow_cgroup: Vec::new(),
            rescan_interval: Duration::from_secs(2),
            max_protected: MAP_CAPACITY,
            uid_subjects: BTreeMap::new(),
            kfuncs: true,
            pin: true,
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
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
    /// The first of `lsm`, `fentry`, `tracepoint` the kernel accepts, else `fanotify`.
    Auto,
    /// eBPF on the BPF LSM hook `file_open` (every open, however made).
    Lsm,
    /// eBPF on `security_file_open` via fentry (the same, where BPF LSM is off).
    Fentry,
    /// eBPF on the open-family syscall exits (64-bit) and io_uring completions.
    Tracepoint,
    /// eBPF on every syscall exit (64- and 32-bit opens) and io_uring completions.
    Strict,
    /// fanotify `FAN_OPEN` marks only (no eBPF).
    Fanotify,
    Off,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Lsm => "lsm",
            Mode::Fentry => "fentry",
            Mode::Tracepoint => "tracepoint",
            Mode::Strict => "strict",
            Mode::Fanotify => "fanotify",
            Mode::Off => "off",
        }
    }

    /// The eBPF hooks to try, in order (none for `fanotify` and `off`).
    pub fn ebpf_hooks(self) -> &'static [Hooks] {
        match self {
            Mode::Auto => &[Hooks::Lsm, Hooks::Fentry, Hooks::Tracepoint],
            Mode::Lsm => &[Hooks::Lsm],
            Mode::Fentry => &[Hooks::Fentry],
            Mode::Tracepoint => &[Hooks::Tracepoint],
            Mode::Strict => &[Hooks::Strict],
            Mode::Fanotify | Mode::Off => &[],
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
    /// Whether the eBPF program may call kfuncs (`bpf_rdonly_cast`); when false the agent loads
    /// the build that reads grown fd tables with `bpf_probe_read_kernel`.
    pub kfuncs: bool,
    /// Whether the eBPF programs' links and maps are pinned in bpffs, so that they stay
    /// attached and keep queueing while the agent restarts (`bypass.pin`; see `pins`).
    pub pin: bool,
    /// The bpffs folder of the pins (`bypass.pin_dir`); with `pin = false` the agent removes
    /// what an earlier start left there.
    pub pin_dir: PathBuf,
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
            ModeName::Lsm => Mode::Lsm,
            ModeName::Fentry => Mode::Fentry,
            ModeName::Strict => Mode::Strict,
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
        let rescan_interval = self.rescan_interval;
        if rescan_interval < Duration::from_millis(100)
            || rescan_interval > Duration::from_secs(3600)
        {
            bail!("bypass.rescan_interval must be between 100ms and 1h");
        }
        if self.max_protected == 0 || self.max_protected > MAP_CAPACITY {
            bail!("bypass.max_protected must be between 1 and {MAP_CAPACITY}");
        }
        if !self.pin_dir.is_absolute()
            || self.pin_dir.parent().is_none()
            || self
                .pin_dir
                .components()
                .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
        {
            bail!(
                "bypass.pin_dir: {} must be an absolute folder path without `.` or `..`, e.g. {DEFAULT_PIN_DIR}",
                self.pin_dir.display()
            );
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
            kfuncs: self.kfuncs,
            pin: self.pin,
            pin_dir: self.pin_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<BypassConfig> {
        toml::from_str::<BypassFile>(text)?.validate()
    }

    #[test]
    fn every_documented_mode_is_accepted_and_others_refused() {
        for mode in [
            Mode::Auto,
            Mode::Lsm,
            Mode::Fentry,
            Mode::Tracepoint,
            Mode::Strict,
            Mode::Fanotify,
            Mode::Off,
        ] {
            let text = format!("mode = {:?}", mode.name());
            assert_eq!(parse(&text).expect("valid").mode, mode);
        }
        assert_eq!(parse("").expect("defaults").mode, Mode::Auto);
        assert!(parse("mode = \"sometimes\"").is_err());
        assert!(parse("unknown_key = 1").is_err());
    }

    #[test]
    fn uid_subjects_need_numeric_uids_and_valid_names() {
        let ok = parse("uid_subjects = { \"1000\" = \"alice\" }").expect("valid");
        assert_eq!(
            ok.uid_subjects.get(&1000).map(String::as_str),
            Some("alice")
        );
        assert!(parse("uid_subjects = { \"alice\" = \"alice\" }").is_err());
        assert!(parse("uid_subjects = { \"1000\" = \"Not A Name\" }").is_err());
    }

    #[test]
    fn allow_lists_and_limits_are_checked() {
        assert!(parse("allow_exe = [\"vector\"]").is_err());
        assert!(parse("allow_cgroup = [\"system.slice\"]").is_err());
        assert!(parse("rescan_interval = \"1ms\"").is_err());
        assert!(parse("max_protected = 0").is_err());
        assert!(parse("max_protected = 70000").is_err());
    }

    #[test]
    fn kfuncs_are_used_unless_switched_off() {
        assert!(parse("").expect("defaults").kfuncs);
        assert!(!parse("kfuncs = false").expect("valid").kfuncs);
        assert!(parse("kfuncs = \"no\"").is_err());
    }

    #[test]
    fn pins_are_made_in_an_absolute_bpffs_folder_unless_switched_off() {
        let defaults = parse("").expect("defaults");
        assert!(defaults.pin);
        assert_eq!(defaults.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        let off = parse("pin = false").expect("valid");
        assert!(!off.pin);
        let moved = parse("pin_dir = \"/sys/fs/bpf/lg\"").expect("valid");
        assert_eq!(moved.pin_dir, PathBuf::from("/sys/fs/bpf/lg"));
        for bad in ["\"loggate\"", "\"/\"", "\"/sys/fs/bpf/../lg\"", "1"] {
            assert!(parse(&format!("pin_dir = {bad}")).is_err(), "{bad}");
        }
    }
}
