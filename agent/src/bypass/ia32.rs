//! Whether this kernel runs 32-bit (`int 0x80`, IA32 emulation) syscalls: the per-syscall
//! tracepoints of `tracepoint` mode never see them, so `agent.started` says whether there are
//! any to miss (`bypass_ia32_syscalls`).
//!
//! Decided from what the kernel was built with (`CONFIG_IA32_EMULATION`,
//! `CONFIG_IA32_EMULATION_DEFAULT_DISABLED`, from `/boot/config-<release>` or `/proc/config.gz`)
//! and how it was booted (`ia32_emulation=` on `/proc/cmdline`, honoured from Linux 6.7). Never
//! by running a 32-bit syscall: on a kernel with the emulation off that is a fault, and the
//! answer would be no better. Where neither the build configuration nor the command line tells,
//! the answer is `unknown`, never a guess.

use std::io::Read;
use std::path::Path;

/// Whether 32-bit syscalls can run on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ia32 {
    /// Compiled in and enabled: 32-bit programs run, and `tracepoint` mode misses their opens.
    Enabled,
    /// Compiled in but off (`ia32_emulation=0`, or off by default and not turned on).
    Disabled,
    /// Not compiled in (or not an x86-64 kernel): there are no 32-bit syscalls.
    NotBuilt,
    /// Neither the build configuration nor the command line could be read.
    Unknown,
}

impl Ia32 {
    /// The value of `agent.started`'s `bypass_ia32_syscalls`.
    pub fn as_str(self) -> &'static str {
        match self {
            Ia32::Enabled => "enabled",
            Ia32::Disabled => "disabled",
            Ia32::NotBuilt => "not_built",
            Ia32::Unknown => "unknown",
        }
    }
}

/// What the build configuration says, if it could be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Built {
    emulation: bool,
    default_disabled: bool,
}

/// This host's answer, from its running kernel's files.
pub fn detect() -> Ia32 {
    if !cfg!(target_arch = "x86_64") {
        return Ia32::NotBuilt;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let config = std::fs::read_to_string(Path::new("/boot").join(format!("config-{release}")))
        .ok()
        .or_else(|| gunzip(Path::new("/proc/config.gz")));
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    decide(
        config.as_deref().map(built),
        cmdline_switch(&cmdline),
        at_least(release, 6, 7),
    )
}

/// The decision, from the build configuration (if read), the `ia32_emulation=` switch (if
/// given), and whether the kernel honours that switch (6.7+).
fn decide(built: Option<Built>, switch: Option<bool>, honours_switch: bool) -> Ia32 {
    let switch = switch.filter(|_| honours_switch);
    match built {
        Some(b) if !b.emulation => Ia32::NotBuilt,
        Some(b) => match switch.unwrap_or(!b.default_disabled) {
            true => Ia32::Enabled,
            false => Ia32::Disabled,
        },
        None if switch == Some(false) => Ia32::Disabled,
        None => Ia32::Unknown,
    }
}

fn gunzip(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    // A kernel configuration is a few hundred KB; the bound keeps a hostile file from costing more.
    flate2::read::GzDecoder::new(file)
        .take(16 << 20)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

fn built(config: &str) -> Built {
    let set = |key: &str| config.lines().any(|l| l.trim() == format!("{key}=y"));
    Built {
        emulation: set("CONFIG_IA32_EMULATION"),
        default_disabled: set("CONFIG_IA32_EMULATION_DEFAULT_DISABLED"),
    }
}

/// The last `ia32_emulation=` on the kernel command line, read as the kernel's `kstrtobool`
/// does (`1`/`y`/`t`/`on`, `0`/`n`/`f`/`off`); parameters after `--` go to init, not the kernel.
fn cmdline_switch(cmdline: &str) -> Option<bool> {
    let kernel_part = cmdline.split(" -- ").next().unwrap_or_default();
    kernel_part
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("ia32_emulation="))
        .filter_map(|v| match v.to_ascii_lowercase().as_str() {
            "on" => Some(true),
            "off" => Some(false),
            v if v.starts_with(['1', 'y', 't']) => Some(true),
            v if v.starts_with(['0', 'n', 'f']) => Some(false),
            _ => None,
        })
        .next_back()
}

/// Whether the release string (`6.18.44-…`) is at least `major.minor`.
fn at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: Built = Built {
        emulation: true,
        default_disabled: false,
    };

    #[test]
    fn the_build_configuration_and_the_boot_switch_decide_and_nothing_is_guessed() {
        let off_by_default = Built {
            emulation: true,
            default_disabled: true,
        };
        let absent = Built {
            emulation: false,
            default_disabled: false,
        };
        assert_eq!(decide(Some(ON), None, true), Ia32::Enabled);
        assert_eq!(decide(Some(ON), Some(false), true), Ia32::Disabled);
        // Before 6.7 the switch does not exist: the kernel ignores it.
        assert_eq!(decide(Some(ON), Some(false), false), Ia32::Enabled);
        assert_eq!(decide(Some(off_by_default), None, true), Ia32::Disabled);
        assert_eq!(
            decide(Some(off_by_default), Some(true), true),
            Ia32::Enabled
        );
        assert_eq!(decide(Some(absent), Some(true), true), Ia32::NotBuilt);
        assert_eq!(decide(None, Some(false), true), Ia32::Disabled);
        assert_eq!(decide(None, Some(true), true), Ia32::Unknown);
        assert_eq!(decide(None, None, true), Ia32::Unknown);
    }

    #[test]
    fn the_switch_is_read_like_the_kernel_reads_it_and_only_before_the_init_arguments() {
        assert_eq!(cmdline_switch("quiet ia32_emulation=0"), Some(false));
        assert_eq!(cmdline_switch("ia32_emulation=false ro"), Some(false));
        assert_eq!(cmdline_switch("ia32_emulation=off"), Some(false));
        assert_eq!(
            cmdline_switch("ia32_emulation=0 ia32_emulation=Y"),
            Some(true)
        );
        assert_eq!(cmdline_switch("ia32_emulation=on"), Some(true));
        assert_eq!(cmdline_switch("ia32_emulation=bogus"), None);
        assert_eq!(cmdline_switch("quiet -- ia32_emulation=0"), None);
        assert_eq!(cmdline_switch("noia32_emulation=0"), None);
    }

    #[test]
    fn the_configuration_lines_are_read_exactly() {
        let b =
            built("CONFIG_IA32_EMULATION=y\n# CONFIG_IA32_EMULATION_DEFAULT_DISABLED is not set\n");
        assert_eq!(b, ON);
        let b = built("# CONFIG_IA32_EMULATION is not set\nCONFIG_IA32_FEAT_CTL=y\n");
        assert!(!b.emulation);
        assert!(at_least("6.18.44-fc-v1147", 6, 7));
        assert!(at_least("6.7.0", 6, 7));
        assert!(!at_least("6.6.30", 6, 7));
        assert!(!at_least("", 6, 7));
    }
}
