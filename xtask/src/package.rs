//! `cargo xtask package`: the Debian packages `loggate-agent` (the agent) and `loggate` (the
//! controller daemon and the CLI), built with `dpkg-deb` from the files in `packaging/`.
//!
//! Our own `dpkg-deb` staging rather than cargo-deb: two small packages whose maintainer
//! scripts, conffiles and folder modes we want to read in one place (packaging/), no extra tool
//! to install in CI, and the same code builds from release binaries (`cargo xtask package`) or
//! from binaries already built (`--bin-dir`, what `cargo xtask test` uses to build once).
//!
//! What each package holds (the contract tests/tests/package.rs checks):
//! - `/usr/bin/<binary>` (0755), the hardened unit in `/lib/systemd/system/` (0644);
//! - the commented default configuration in `/etc/loggate/` (0644, a conffile: upgrades keep
//!   the operator's edits; it holds paths, never a secret);
//! - bash, zsh and fish completions generated from the binary's own clap definitions;
//! - man pages in `/usr/share/man/man1/` (gzip'd, 0644), one per command and subcommand,
//!   generated the same way (`<binary> manpages DIR`, clap_mangen);
//! - maintainer scripts: the `loggate` system user and group and the state and audit folders
//!   with owner and mode (made once, never changed by an upgrade), the unit enabled and started
//!   only when `check-config` passes; removal keeps configuration, state and audit; purge
//!   deletes state and audit (see docs/operations.md) and the bypass audit's pins in
//!   `/sys/fs/bpf/loggate`.

use crate::{cargo, run, target_dir, workspace_root};
use anyhow::{bail, Context};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Package the `loggate` and `loggate-agent` binaries found in DIR instead of building
    /// release binaries (e.g. `target/release`, already built).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Where the .deb files are written (default: target/debian).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The packages' version (default: the workspace's).
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub version: String,
}

/// One file placed in a package.
struct Entry {
    /// Absolute path on the installed system.
    target: String,
    source: Source,
    mode: u32,
}

enum Source {
    /// A file in `packaging/`.
    Packaging(&'static str),
    /// The package's binary.
    Binary,
    /// The binary's completion script for a shell (`<binary> completions SHELL`).
    Completions(&'static str),
    /// A file of the workspace (documentation).
    Workspace(&'static str),
    /// Made while packaging (a gzip'd man page).
    Generated(Vec<u8>),
}

/// What differs between the two packages.
struct Spec {
    name: &'static str,
    binary: &'static str,
    description: &'static str,
    /// Folder in `packaging/` with the unit, configuration and maintainer scripts.
    dir: &'static str,
    files: Vec<Entry>,
    conffiles: &'static [&'static str],
}

fn specs() -> [Spec; 2] {
    let common = |binary: &'static str, doc: &'static str| {
        vec![
            Entry {
                target: format!("/usr/bin/{binary}"),
                source: Source::Binary,
                mode: 0o755,
            },
            Entry {
                target: format!("/usr/share/bash-completion/completions/{binary}"),
                source: Source::Completions("bash"),
                mode: 0o644,
            },
            Entry {
                target: format!("/usr/share/zsh/vendor-completions/_{binary}"),
                source: Source::Completions("zsh"),
                mode: 0o644,
            },
            Entry {
                target: format!("/usr/share/fish/vendor_completions.d/{binary}.fish"),
                source: Source::Completions("fish"),
                mode: 0o644,
            },
            Entry {
                target: format!("/usr/share/doc/{doc}/operations.md"),
                source: Source::Workspace("docs/operations.md"),
                mode: 0o644,
            },
            Entry {
                target: format!("/usr/share/doc/{doc}/configuration.md"),
                source: Source::Workspace("docs/configuration.md"),
                mode: 0o644,
            },
            Entry {
                target: format!("/usr/share/doc/{doc}/copyright"),
                source: Source::Packaging("copyright"),
                mode: 0o644,
            },
        ]
    };
    let mut agent = common("loggate-agent", "loggate-agent");
    agent.extend([
        Entry {
            target: "/lib/systemd/system/loggate-agent.service".into(),
            source: Source::Packaging("agent/loggate-agent.service"),
            mode: 0o644,
        },
        Entry {
            target: "/etc/loggate/agent.toml".into(),
            source: Source::Packaging("agent/agent.toml"),
            mode: 0o644,
        },
        // The bpffs folder the bypass audit pins its programs in, made at boot for loggate.
        Entry {
            target: "/usr/lib/tmpfiles.d/loggate-agent.conf".into(),
            source: Source::Packaging("agent/loggate-agent.tmpfiles"),
            mode: 0o644,
        },
    ]);
    let mut controller = common("loggate", "loggate");
    controller.extend([
        Entry {
            target: "/lib/systemd/system/loggate-controller.service".into(),
            source: Source::Packaging("controller/loggate-controller.service"),
            mode: 0o644,
        },
        Entry {
            target: "/etc/loggate/controller.toml".into(),
            source: Source::Packaging("controller/controller.toml"),
            mode: 0o644,
        },
    ]);
    [
        Spec {
            name: "loggate-agent",
            binary: "loggate-agent",
            description: "loggate agent: audited, redacted access to this host's log files\n \
                Serves the host's log files over mTLS to people holding a signed, time-limited\n \
                grant from the loggate controller, redacts secrets while streaming, writes a\n \
                hash-chained audit file shipped to SIEMs, and audits direct reads with eBPF.",
            dir: "agent",
            files: agent,
            conffiles: &["/etc/loggate/agent.toml"],
        },
        Spec {
            name: "loggate",
            binary: "loggate",
            description: "loggate controller and command-line tool\n \
                The controller daemon (loggate-controller.service) issues signed, time-limited\n \
                grants and pushes them to loggate agents; the loggate command requests grants\n \
                and reads logs through the agents.",
            dir: "controller",
            files: controller,
            conffiles: &["/etc/loggate/controller.toml"],
        },
    ]
}

/// What the package tests need besides dpkg-deb and systemd-analyze: debootstrap for the
/// bookworm root and systemd-nspawn to boot it, installed with apt-get (without recommends:
/// they would add libnss-mymachines to the host's nsswitch.conf).
pub fn ensure_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = ["debootstrap", "systemd-container"]
        .into_iter()
        .filter(|p| !crate::package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    crate::apt_install(&missing)
}

/// Builds both packages; returns the .deb files written.
pub fn run_package(args: &Args) -> anyhow::Result<Vec<PathBuf>> {
    if !valid_version(&args.version) {
        bail!(
            "--version {:?} is not a Debian version (digits first, then letters, digits and .+~-)",
            args.version
        );
    }
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => {
            run(cargo().args(["build", "--release", "-p", "loggate-agent", "-p", "loggate"]))?;
            target_dir().join("release")
        }
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("debian"));
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut debs = Vec::new();
    for mut spec in specs() {
        let binary = bin_dir.join(spec.binary);
        if binary.is_file() {
            spec.files.extend(man_pages(&binary, spec.name)?);
        }
        let deb = build_one(&spec, &bin_dir, &out, &args.version)
            .with_context(|| format!("package {}", spec.name))?;
        eprintln!("xtask: wrote {}", deb.display());
        debs.push(deb);
    }
    Ok(debs)
}

/// Debian's version syntax, without an epoch (ours never needs one).
fn valid_version(v: &str) -> bool {
    v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c))
}

fn build_one(spec: &Spec, bin_dir: &Path, out: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let packaging = workspace_root().join("packaging");
    let binary = bin_dir.join(spec.binary);
    if !binary.is_file() {
        bail!(
            "no {} in {}; build it first or drop --bin-dir",
            spec.binary,
            bin_dir.display()
        );
    }
    let stage = target_dir().join("debian-stage").join(spec.name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    for entry in &spec.files {
        let dest = stage.join(entry.target.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        let bytes = match &entry.source {
            Source::Packaging(p) => read(&packaging.join(p))?,
            Source::Workspace(p) => read(&workspace_root().join(p))?,
            Source::Binary => read(&binary)?,
            Source::Completions(shell) => completions(&binary, shell)?,
            Source::Generated(bytes) => bytes.clone(),
        };
        fs::write(&dest, bytes).with_context(|| format!("cannot write {}", dest.display()))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(entry.mode))?;
    }
    // Folders: 0755 (umask-independent).
    set_dir_modes(&stage)?;
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    fs::set_permissions(&debian, fs::Permissions::from_mode(0o755))?;
    for script in ["postinst", "prerm", "postrm"] {
        let dest = debian.join(script);
        fs::copy(packaging.join(spec.dir).join(script), &dest)
            .with_context(|| format!("cannot copy packaging/{}/{script}", spec.dir))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))?;
    }
    write_file(
        &debian.join("conffiles"),
        &spec
            .conffiles
            .iter()
            .map(|c| format!("{c}\n"))
            .collect::<String>(),
    )?;
    write_file(&debian.join("md5sums"), &md5sums(&stage, spec)?)?;
    let glibc = max_glibc(&read(&binary)?).unwrap_or_else(|| "2.31".into());
    let installed_kib = spec
        .files
        .iter()
        .map(|f| {
            fs::metadata(stage.join(f.target.trim_start_matches('/')))
                .map(|m| m.len().div_ceil(1024))
        })
        .sum::<std::io::Result<u64>>()?;
    write_file(
        &debian.join("control"),
        &format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {arch}\n\
             Maintainer: loggate maintainers <loggate@localhost>\nSection: admin\n\
             Priority: optional\nInstalled-Size: {installed_kib}\n\
             Depends: libc6 (>= {glibc}), passwd, init-system-helpers (>= 1.54~)\n\
             Homepage: https://github.com/loggate/loggate\nDescription: {description}\n",
            name = spec.name,
            arch = deb_arch()?,
            description = spec.description,
        ),
    )?;
    let deb = out.join(format!("{}_{version}_{}.deb", spec.name, deb_arch()?));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

fn set_dir_modes(dir: &Path) -> anyhow::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            set_dir_modes(&entry.path())?;
        }
    }
    Ok(())
}

/// `<binary> completions SHELL`: the script from the binary's own clap definitions.
fn completions(binary: &Path, shell: &str) -> anyhow::Result<Vec<u8>> {
    let output = Command::new(binary)
        .args(["completions", shell])
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !output.status.success() || output.stdout.is_empty() {
        bail!(
            "{} completions {shell} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// `<binary> manpages DIR`, each page gzip'd (`-9n`: no name or time inside, so the same
/// build gives the same package) as an entry of `/usr/share/man/man1/`.
fn man_pages(binary: &Path, package: &str) -> anyhow::Result<Vec<Entry>> {
    let dir = target_dir().join("debian-man").join(package);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    run(Command::new(binary).arg("manpages").arg(&dir))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "1"))
        // `loggate agent` (the CLI's group of agent commands) would be `loggate-agent.1`, the
        // agent package's own page: two packages shipping one path cannot both be installed.
        // Its one subcommand keeps its page (`loggate-agent-status.1`), and loggate(1) lists it.
        .filter(|p| !(package == "loggate" && p.ends_with("loggate-agent.1")))
        .collect();
    pages.sort();
    if pages.is_empty() {
        bail!("{} manpages wrote no page", binary.display());
    }
    pages
        .iter()
        .map(|page| {
            let output = Command::new("gzip")
                .args(["-9n", "-c"])
                .arg(page)
                .output()
                .context("cannot run gzip")?;
            if !output.status.success() {
                bail!("gzip {} failed", page.display());
            }
            let name = page
                .file_name()
                .and_then(|n| n.to_str())
                .context("a man page name that is not UTF-8")?;
            Ok(Entry {
                target: format!("/usr/share/man/man1/{name}.gz"),
                source: Source::Generated(output.stdout),
                mode: 0o644,
            })
        })
        .collect()
}

/// `DEBIAN/md5sums`, what `dpkg --verify` and debsums check.
fn md5sums(stage: &Path, spec: &Spec) -> anyhow::Result<String> {
    let mut text = String::new();
    for entry in &spec.files {
        let rel = entry.target.trim_start_matches('/');
        let output = Command::new("md5sum")
            .arg(rel)
            .current_dir(stage)
            .output()
            .context("cannot run md5sum")?;
        if !output.status.success() {
            bail!("md5sum {rel} failed");
        }
        text.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    Ok(text)
}

/// The newest `GLIBC_2.N` symbol version the binary refers to: the package's libc6 floor.
fn max_glibc(binary: &[u8]) -> Option<String> {
    let needle = b"GLIBC_2.";
    let mut best: Option<(u32, u32)> = None;
    for start in memchr::memmem::find_iter(binary, needle) {
        let rest = &binary[start + needle.len()..];
        let digits = |s: &[u8]| s.iter().take_while(|b| b.is_ascii_digit()).count();
        let n = digits(rest);
        if n == 0 {
            continue;
        }
        let minor: u32 = std::str::from_utf8(&rest[..n]).ok()?.parse().ok()?;
        let patch = match rest.get(n) {
            Some(b'.') => {
                let m = digits(&rest[n + 1..]);
                std::str::from_utf8(&rest[n + 1..n + 1 + m])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)
            }
            _ => 0,
        };
        if best.is_none_or(|b| (minor, patch) > b) {
            best = Some((minor, patch));
        }
    }
    best.map(|(minor, patch)| {
        if patch == 0 {
            format!("2.{minor}")
        } else {
            format!("2.{minor}.{patch}")
        }
    })
}

fn deb_arch() -> anyhow::Result<String> {
    let output = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("cannot run dpkg --print-architecture (is this Debian?)")?;
    let arch = String::from_utf8(output.stdout)?.trim().to_string();
    if !output.status.success() || arch.is_empty() {
        bail!("dpkg --print-architecture failed");
    }
    Ok(arch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_glibc_version_is_the_libc6_floor() {
        let bin = b"..GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.17\0GLIBC_PRIVATE\0";
        assert_eq!(max_glibc(bin).as_deref(), Some("2.34"));
        assert_eq!(max_glibc(b"GLIBC_2.3.4\0").as_deref(), Some("2.3.4"));
        assert_eq!(max_glibc(b"nothing").as_deref(), None);
    }

    #[test]
    fn package_versions_follow_debian_syntax() {
        assert!(valid_version("0.1.0"));
        assert!(valid_version("0.1.0+upgrade1"));
        for bad in ["", "v1", "1 0", "1:0", "1/0"] {
            assert!(!valid_version(bad), "{bad}");
        }
    }
}
