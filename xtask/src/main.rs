//! Developer and operator tasks: `cargo xtask demo`, `cargo xtask test`, `cargo xtask build-ebpf`,
//! `cargo xtask bench audit|ebpf|fleet|reads|redact|serve`, `cargo xtask package`.

mod bench_audit;
mod bench_ebpf;
mod bench_fleet;
mod bench_national;
mod bench_reads;
mod bench_redact;
mod bench_serve;
mod demo;
mod ebpf;
mod package;

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the whole product on loopback: PKI, controller, agent, a grant, reads, a denial, a
    /// stream cut at expiry, the audit trail. Stops everything it started.
    Demo {
        /// Keep the PKI, configurations, logs, state and audit files in DIR and print the
        /// commands that start the controller and agent again.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Install what the tests need (as root, from Debian's packages: clang and llvm, rsyslog and
    /// rsyslog-gnutls, systemd-journal-remote, gcc-multilib, debootstrap and systemd-container; cargo-fuzz from
    /// crates.io), build the .deb packages, and run every test, plus the
    /// formatting and clippy checks, the check that the committed eBPF objects match a rebuild
    /// of their sources, and the fuzz targets for a bounded time (see `FUZZ_TARGETS`).
    Test,
    /// Benchmarks (criterion and side-by-side runs), printed as rates and ratios; see
    /// docs/performance.md.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
    /// Build the Debian packages `loggate-agent` and `loggate` (controller and CLI) with their
    /// hardened systemd units into target/debian (see docs/operations.md).
    Package(package::Args),
    /// Rebuild the eBPF objects in agent-ebpf/bpf/ from their C sources in agent-ebpf/src/
    /// (needs clang and llvm-strip; installs them as root with apt-get when missing).
    BuildEbpf {
        /// Only check that a rebuild equals the committed object (what `test` does first).
        #[arg(long)]
        check: bool,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Durable audit events per second with group commit, against one fsync per event.
    Audit,
    /// Grants and revocations fanned out to N simulated agents (real TLS, real WatchGrants
    /// streams, verified as an agent does) from one controller, and a controller restart under
    /// them.
    Fleet(bench_fleet::Args),
    /// The bypass audit's cost on opens of unprotected files and on getppid, against no program
    /// and against empty programs on the same hooks (as root).
    Ebpf(bench_ebpf::Args),
    /// One `loggate logs cat --selector` over N real agents on loopback with each
    /// `--parallel K`: wall time, the CLI's peak connections and memory, whole output.
    Reads(bench_reads::Args),
    /// The redaction engine next to ripgrep and sed, single core, on a generated corpus.
    Redact(bench_redact::Args),
    /// The serving path end to end next to plain ssh (throughput, concurrency, time to first
    /// byte, follow latency), on loopback with a bench-started OpenSSH server.
    Serve(bench_serve::Args),
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// A `cargo` command at the workspace root, with the environment a plain `cargo` typed in a
/// shell has: a nested `cargo build` must find the tree a plain `cargo build` built, not
/// rebuild it (inside a bench lock, for minutes).
///
/// `cargo xtask` runs this binary through `cargo run`, which sets the variables of the
/// package it runs (`CARGO_PKG_NAME=xtask`, `CARGO_MANIFEST_DIR`, the version parts…). Cargo
/// decides whether a build script reruns by comparing the variables the script named with
/// `rerun-if-env-changed` against its *own* environment, and ring's build script names
/// `CARGO_PKG_NAME`, `CARGO_PKG_VERSION_*` and `CARGO_MANIFEST_DIR`: inherited from `cargo
/// run`, they read as changed, so ring and everything above it (rustls, tonic, the agent)
/// were rebuilt. Those variables describe xtask, never the nested build, so they are
/// removed; `CARGO` (which cargo to run), `CARGO_HOME`, `CARGO_TARGET_DIR` and the user's
/// other settings stay.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_run) {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Whether `name` is a variable `cargo run` (or a build script's run) sets to describe the
/// package being run rather than a setting of the user's.
fn set_by_cargo_run(name: &str) -> bool {
    const EXACT: [&str; 8] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "OUT_DIR",
    ];
    const PREFIXES: [&str; 3] = ["CARGO_PKG_", "CARGO_CFG_", "CARGO_FEATURE_"];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status()?;
    if !status.success() {
        anyhow::bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn test() -> anyhow::Result<()> {
    // System packages the tests need are installed here when missing (as root, apt-get):
    // clang and llvm to check the committed eBPF object against its source.
    // Where they cannot be installed (not root, no apt-get) the check is skipped with a
    // warning rather than failing the run; CI runs as root and always checks.
    match ebpf::ensure_tools() {
        Ok(()) => ebpf::check(&target_dir())?,
        // In CI (CI=true) the check is never skipped.
        Err(e) if std::env::var_os("CI").is_some() => return Err(e),
        Err(e) => eprintln!("xtask: WARNING: skipping the eBPF object check: {e:#}"),
    }
    // rsyslog with its GnuTLS driver: the SIEM delivery tests (tests/tests/siem.rs) run a real
    // rsyslogd as their receiver. Missing and not installable: a warning (those tests then fail
    // saying so); in CI an error.
    match ensure_rsyslog() {
        Ok(()) => {}
        Err(e) if std::env::var_os("CI").is_some() => return Err(e),
        Err(e) => eprintln!("xtask: WARNING: the SIEM delivery tests will fail: {e:#}"),
    }
    // systemd-journal-remote: the journal tests (tests/tests/journal.rs) write a real journal
    // with it. Missing and not installable: a warning (those tests then fail saying so, they
    // do not skip); in CI an error.
    match ensure_journal_remote() {
        Ok(()) => {}
        Err(e) if std::env::var_os("CI").is_some() => return Err(e),
        Err(e) => eprintln!("xtask: WARNING: the journal tests will fail: {e:#}"),
    }
    // PostgreSQL (Debian's `postgresql`): the controller's store tests and the PostgreSQL
    // end-to-end tests start their own server (tests/src/postgres.rs: initdb in a scratch
    // folder). Missing and not installable: a warning (those tests then fail saying so); in CI
    // an error.
    match ensure_postgresql() {
        Ok(()) => {}
        Err(e) if std::env::var_os("CI").is_some() => return Err(e),
        Err(e) => eprintln!("xtask: WARNING: the PostgreSQL tests will fail: {e:#}"),
    }
    // Node.js ≥ 20.18 with npm: the sign-in tests (tests/tests/identity.rs) run a real OpenID
    // Provider (tests/oidc-provider, `npm ci` from its lockfile). Missing or too old: a warning
    // (those tests then fail saying so); in CI an error.
    match ensure_node() {
        Ok(()) => {}
        Err(e) if std::env::var_os("CI").is_some() => return Err(e),
        Err(e) => eprintln!("xtask: WARNING: the sign-in tests will fail: {e:#}"),
    }
    // gcc-multilib for the strict-mode test's i386 helper (CI=true fails that test without it).
    if let Err(e) = ebpf::ensure_ia32_gcc() {
        eprintln!("xtask: WARNING: gcc cannot target i386: {e:#}");
    }
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    let target = target_dir();
    // The packages, for tests/tests/package.rs (which boots them under systemd-nspawn:
    // debootstrap and systemd-container), from the debug binaries just built: the tests check
    // the packaging, and a release build would cost two cores several minutes more.
    package::ensure_tools()?;
    let debs = target.join("debian");
    package::run_package(&package::Args {
        bin_dir: Some(target.join("debug")),
        out: Some(debs.clone()),
        version: env!("CARGO_PKG_VERSION").into(),
    })?;
    // Tests that need root are `#[ignore = "needs root"]`: a plain `cargo test` says "ignored"
    // for them; here, as root (CI), they run too. The one measurement among the ignored tests
    // (a latency print-out, not a check) stays out.
    let mut test = cargo();
    test.args([
        "test",
        "--workspace",
        "--no-fail-fast",
        "--",
        "--skip",
        "delivery_latency_to_rsyslog",
    ]);
    if is_root() {
        test.arg("--include-ignored");
        // The multi-host tests may skip only where namespaces cannot exist (not root).
        test.env("LOGGATE_REQUIRE_NETNS", "1");
    } else if std::env::var_os("CI").is_some() {
        anyhow::bail!("CI runs every test, and the tests marked \"needs root\" need root");
    } else {
        eprintln!("xtask: WARNING: not root: the tests marked \"needs root\" are ignored");
    }
    run(test
        .env("LOGGATE_BIN_DIR", target.join("debug"))
        .env("LOGGATE_DEB_DIR", debs))?;
    fuzz_targets()
}

/// The fuzz targets (`fuzz/fuzz_targets/`) and how long each runs in `cargo xtask test`:
/// under 3 minutes in all, after one shared build (with the `daemon-config` feature, which the
/// `config` and `gate` targets need; every build and run passes the same features so none
/// rebuilds).
const FUZZ_TARGETS: [(&str, u32); 6] = [
    ("redact", 60),
    ("grant_token", 30),
    ("read_request", 30),
    ("decompress", 20),
    ("config", 30),
    ("gate", 20),
];
const FUZZ_FEATURES: &str = "daemon-config";

/// Builds the fuzz targets (`fuzz/`) once and runs each for its bounded time from its
/// committed seed corpus; installs cargo-fuzz from crates.io when missing. cargo-fuzz passes
/// nightly-only flags (`-Zsanitizer=address`); `RUSTC_BOOTSTRAP=1` lets the stable toolchain
/// accept them.
fn fuzz_targets() -> anyhow::Result<()> {
    let installed = cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let fuzz = |args: &[&str]| {
        let mut cmd = cargo();
        cmd.arg("fuzz").args(args).env("RUSTC_BOOTSTRAP", "1");
        // libFuzzer is C++; clang++ is there when c++ is not (ebpf::ensure_tools installs clang).
        if Command::new("c++").arg("--version").output().is_err() {
            cmd.env("CXX", "clang++");
        }
        cmd
    };
    run(&mut fuzz(&["build", "--features", FUZZ_FEATURES]))?;
    for (target, seconds) in FUZZ_TARGETS {
        let limit = format!("-max_total_time={seconds}");
        run(&mut fuzz(&[
            "run",
            "--features",
            FUZZ_FEATURES,
            target,
            "--",
            &limit,
        ]))?;
    }
    Ok(())
}

/// Debian packages the SIEM tests need: rsyslog and its `gtls` network stream driver.
const RSYSLOG_PACKAGES: [&str; 2] = ["rsyslog", "rsyslog-gnutls"];

pub fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
}

/// Installs rsyslog and rsyslog-gnutls with apt-get (as root) when they are missing.
fn ensure_rsyslog() -> anyhow::Result<()> {
    let missing: Vec<&str> = RSYSLOG_PACKAGES
        .into_iter()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

/// Installs Debian's `systemd-journal-remote` (the journal writer the journal tests feed)
/// when it is missing.
fn ensure_journal_remote() -> anyhow::Result<()> {
    if Path::new("/lib/systemd/systemd-journal-remote").is_file() {
        return Ok(());
    }
    apt_install(&["systemd-journal-remote"])
}

/// Installs Debian's PostgreSQL server when no `initdb` is found where the test helper looks
/// (`/usr/lib/postgresql/*/bin`).
fn ensure_postgresql() -> anyhow::Result<()> {
    let installed = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("bin/initdb").is_file());
    if installed {
        return Ok(());
    }
    apt_install(&["postgresql"])
}

/// The oldest Node.js the test OpenID Provider runs on: oidc-provider 9 calls `URL.parse`
/// (Node 20.18) and `crypto.hash` (20.12). Debian 12's own `nodejs` (18) is too old.
const MIN_NODE: (u64, u64) = (20, 18);

/// Checks for Node.js ≥ [`MIN_NODE`] and npm, then installs the test provider's packages
/// (`npm ci` in tests/oidc-provider) so that the tests do not race to do it.
fn ensure_node() -> anyhow::Result<()> {
    let advice = "install Node.js 20.18 or later with npm (NodeSource's nodejs 20 or 22 \
                  package; Debian 12's nodejs 18 is too old)";
    let version = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .ok_or_else(|| anyhow::anyhow!("node is not installed; {advice}"))?;
    let mut parts = version
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found < MIN_NODE {
        anyhow::bail!("node {version} is too old; {advice}");
    }
    let npm = Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !npm {
        anyhow::bail!("npm is not installed; {advice}");
    }
    let fixture = workspace_root().join("tests/oidc-provider");
    if !fixture
        .join("node_modules/oidc-provider/package.json")
        .exists()
    {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&fixture))?;
    }
    Ok(())
}

/// Whether this process runs as root.
fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Installs Debian packages with apt-get, as root; anywhere else, says what to install. The
/// one way xtask installs system packages (clang, rsyslog, gcc-multilib, ripgrep).
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let root = is_root();
    let apt = Command::new("apt-get")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !apt {
        anyhow::bail!(
            "{} not installed; install them (Debian: apt-get install {})",
            packages.join(" and "),
            packages.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Demo { keep } => demo::run(keep),
        Task::Test => test(),
        Task::Bench { what: Bench::Audit } => bench_audit::run_audit(),
        Task::Bench {
            what: Bench::Fleet(args),
        } => bench_fleet::run_bench(&args),
        Task::Bench {
            what: Bench::Ebpf(args),
        } => bench_ebpf::run_bench(&args),
        Task::Bench {
            what: Bench::Reads(args),
        } => bench_reads::run_bench(&args),
        Task::Bench {
            what: Bench::Redact(args),
        } => bench_redact::run_bench(&args),
        Task::Bench {
            what: Bench::Serve(args),
        } => bench_serve::run_bench(&args),
        Task::Package(args) => package::run_package(&args).map(drop),
        Task::BuildEbpf { check: true } => {
            ebpf::ensure_tools().and_then(|()| ebpf::check(&target_dir()))
        }
        Task::BuildEbpf { check: false } => ebpf::ensure_tools().and_then(|()| ebpf::build_all()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo test` runs this test with the package variables of xtask set, as `cargo run`
    /// does: the nested cargo must not inherit them (ring's build script tracks them).
    #[test]
    fn nested_cargo_drops_the_variables_cargo_run_sets() {
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
        let cmd = cargo();
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for name in [
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_MANIFEST_DIR",
        ] {
            assert!(
                removed.iter().any(|r| r == name),
                "{name} reaches the nested cargo"
            );
        }
    }

    #[test]
    fn user_settings_reach_the_nested_cargo() {
        for name in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "RUSTFLAGS",
            "CC",
        ] {
            assert!(!set_by_cargo_run(name), "{name}");
        }
    }
}
