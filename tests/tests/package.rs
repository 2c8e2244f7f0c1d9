//! The Debian packages (`cargo xtask package`) as an operator meets them.
//!
//! - Their content: files, modes, conffiles, dependencies; the units pass
//!   `systemd-analyze verify` and stay under their exposure targets by
//!   `systemd-analyze security --offline=true` (controller < 2.0, agent < 3.0), measured on the
//!   packages' files extracted into a scratch root.
//! - Under a real systemd: a Debian bookworm root (debootstrap, cached in the target folder and
//!   reused) booted with `systemd-nspawn -b`; the packages installed with `dpkg -i` (their real
//!   maintainer scripts), the controller and the agent started as `Type=notify` services, a
//!   redacted read served, a clean stop, an upgrade that keeps configuration, state and audit,
//!   a removal that keeps the audit and a purge that deletes it.
//!
//! The packages come from `$LOGGATE_DEB_DIR` (`cargo xtask test` builds them once); these tests
//! need root, `dpkg-deb`, `systemd-analyze`, and for the boot `debootstrap` and
//! `systemd-nspawn` (systemd-container), which `cargo xtask test` installs.

use anyhow::{bail, Context};
use loggate_tests::{flat_audit_record, free_addr, read_audit_file, text, Cluster};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Exposure targets of the issue, against the offline figure (the stricter one).
const AGENT_EXPOSURE_MAX: f64 = 3.0;
const CONTROLLER_EXPOSURE_MAX: f64 = 2.0;

fn deb_dir() -> PathBuf {
    match std::env::var_os("LOGGATE_DEB_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => panic!(
            "LOGGATE_DEB_DIR is not set: build the packages first (cargo xtask package \
             --bin-dir target/debug --out DIR) and set LOGGATE_DEB_DIR=DIR; cargo xtask test \
             does both"
        ),
    }
}

/// The one `<name>_<version>_<arch>.deb` in the package folder.
fn deb(name: &str) -> PathBuf {
    let dir = deb_dir();
    let prefix = format!("{name}_");
    let found: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {name}_*.deb in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().unwrap_or_default()
}

/// Runs a command; its standard output, or an error with both outputs.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let (stdout, stderr) = text(&out);
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {stdout}{stderr}", out.status);
    }
    Ok(stdout)
}

/// `dpkg-deb -c`: path → (mode string, owner/group).
fn contents(deb: &Path) -> Vec<(String, String, String)> {
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(deb)).expect("dpkg-deb -c");
    listing
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields.get(5)?.trim_start_matches('.').to_string();
            Some((path, fields[0].to_string(), fields[1].to_string()))
        })
        .collect()
}

#[test]
fn packages_hold_binary_unit_conffile_completions_and_scripts_with_their_modes() {
    for (name, binary, unit, config) in [
        (
            "loggate-agent",
            "loggate-agent",
            "loggate-agent.service",
            "agent.toml",
        ),
        (
            "loggate",
            "loggate",
            "loggate-controller.service",
            "controller.toml",
        ),
    ] {
        let deb = deb(name);
        let files = contents(&deb);
        let mode_of = |path: &str| {
            files
                .iter()
                .find(|(p, _, _)| p == path)
                .map(|(_, mode, owner)| (mode.as_str(), owner.as_str()))
        };
        for (path, mode) in [
            (format!("/usr/bin/{binary}"), "-rwxr-xr-x"),
            (format!("/lib/systemd/system/{unit}"), "-rw-r--r--"),
            (format!("/etc/loggate/{config}"), "-rw-r--r--"),
            (
                format!("/usr/share/bash-completion/completions/{binary}"),
                "-rw-r--r--",
            ),
            (
                format!("/usr/share/zsh/vendor-completions/_{binary}"),
                "-rw-r--r--",
            ),
            (
                format!("/usr/share/fish/vendor_completions.d/{binary}.fish"),
                "-rw-r--r--",
            ),
            (format!("/usr/share/doc/{name}/operations.md"), "-rw-r--r--"),
        ] {
            assert_eq!(
                mode_of(&path),
                Some((mode, "root/root")),
                "{name}: {path} in {files:?}"
            );
        }
        if name == "loggate-agent" {
            // The bypass audit's bpffs pin folder, made for loggate at boot.
            let path = "/usr/lib/tmpfiles.d/loggate-agent.conf";
            assert_eq!(
                mode_of(path),
                Some(("-rw-r--r--", "root/root")),
                "{files:?}"
            );
            let entry = extract_file(&deb, path);
            assert!(
                entry
                    .lines()
                    .any(|l| l == "d /sys/fs/bpf/loggate 0700 loggate loggate -"),
                "{entry}"
            );
        }
        // Nothing writable by group or others, nothing set-id.
        for (path, mode, owner) in &files {
            assert_eq!(owner, "root/root", "{name}: {path}");
            assert!(
                !mode[5..].contains('w') && !mode.contains('s'),
                "{name}: {path} is {mode}"
            );
        }
        let conffiles = run(Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .arg("conffiles"))
        .expect("conffiles");
        assert_eq!(conffiles.trim(), format!("/etc/loggate/{config}"), "{name}");
        let depends = run(Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Depends"))
        .expect("Depends");
        assert!(
            depends.contains("libc6 (>= 2.") && depends.contains("init-system-helpers"),
            "{name}: {depends}"
        );
        for script in ["postinst", "prerm", "postrm"] {
            let body = run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg(script))
                .expect("maintainer script");
            assert!(body.starts_with("#!/bin/sh\n"), "{name} {script}");
        }
        // The completion scripts are the binary's own (clap_complete), not empty files.
        let bash = extract_file(
            &deb,
            &format!("/usr/share/bash-completion/completions/{binary}"),
        );
        assert!(
            bash.contains(&format!("complete -F _{}", binary.replace('-', "__")))
                || bash.contains("complete -F"),
            "{name}: bash completion: {}",
            &bash[..bash.len().min(200)]
        );
    }
}

#[test]
fn packages_hold_gzipped_man_pages_that_render_and_share_no_path() {
    let agent = contents(&deb("loggate-agent"));
    let controller = contents(&deb("loggate"));
    for (name, files, pages) in [
        (
            "loggate-agent",
            &agent,
            &[
                "loggate-agent",
                "loggate-agent-run",
                "loggate-agent-check-config",
            ][..],
        ),
        (
            "loggate",
            &controller,
            &[
                "loggate",
                "loggate-logs-cat",
                "loggate-grant-issue",
                "loggate-agent-status",
                "loggate-controller-serve",
            ][..],
        ),
    ] {
        for page in pages {
            let path = format!("/usr/share/man/man1/{page}.1.gz");
            let found = files.iter().find(|(p, _, _)| *p == path);
            assert_eq!(
                found.map(|(_, mode, owner)| (mode.as_str(), owner.as_str())),
                Some(("-rw-r--r--", "root/root")),
                "{name}: {path}"
            );
        }
        // Hidden commands get none.
        assert!(
            !files
                .iter()
                .any(|(p, _, _)| p.contains("manpages") || p.contains("bench")),
            "{name}"
        );
    }
    // dpkg refuses to install two packages shipping one path.
    for (path, _, _) in &agent {
        assert!(
            path.ends_with('/') || !controller.iter().any(|(p, _, _)| p == path),
            "{path} is in both packages"
        );
    }
    // Real gzip'd roff with the command's own text; rendered by man(1) where it is installed.
    let dir = tempfile::tempdir().expect("tempdir");
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb("loggate"))
        .arg(dir.path()))
    .expect("dpkg-deb -x");
    let page = dir
        .path()
        .join("usr/share/man/man1/loggate-agent-status.1.gz");
    let roff = run(Command::new("gzip").arg("-dc").arg(&page)).expect("gzip -dc");
    assert!(roff.starts_with(".ie") || roff.contains(".TH"), "{roff}");
    assert!(roff.contains("status_readers"), "{roff}");
    let has_man = Command::new("man")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if has_man {
        let rendered = run(Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"))
        .expect("man -l");
        assert!(rendered.contains("loggate-agent-status"), "{rendered}");
        assert!(rendered.contains("--agent-addr"), "{rendered}");
    }
}

/// One file's text from a package.
fn extract_file(deb: &Path, path: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path())).expect("dpkg-deb -x");
    fs::read_to_string(dir.path().join(path.trim_start_matches('/'))).expect("extracted file")
}

#[test]
fn units_pass_verify_and_stay_under_their_offline_exposure_targets() {
    let root = tempfile::tempdir().expect("tempdir");
    for name in ["loggate-agent", "loggate"] {
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb(name))
            .arg(root.path()))
        .expect("dpkg-deb -x");
    }
    // The targets and units ours refer to (sysinit.target, network-online.target, …) from the
    // host's systemd, beside the packages' files.
    let units = root.path().join("usr/lib/systemd/system");
    fs::create_dir_all(&units).expect("units folder");
    run(Command::new("cp")
        .arg("-a")
        .arg("/lib/systemd/system/.")
        .arg(&units))
    .expect("host units");
    let root_arg = format!("--root={}", root.path().display());
    for (unit, max) in [
        ("loggate-agent.service", AGENT_EXPOSURE_MAX),
        ("loggate-controller.service", CONTROLLER_EXPOSURE_MAX),
    ] {
        let verify = Command::new("systemd-analyze")
            .args(["verify", &root_arg, unit])
            .output()
            .expect("systemd-analyze verify");
        let (out, err) = text(&verify);
        assert!(verify.status.success(), "verify {unit}: {out}{err}");
        assert!(
            !err.contains(unit),
            "verify {unit} warned about the unit: {err}"
        );
        let security = run(Command::new("systemd-analyze").args([
            "security",
            "--offline=true",
            &root_arg,
            "--no-pager",
            unit,
        ]))
        .expect("systemd-analyze security");
        let exposure = exposure_level(&security, unit);
        eprintln!("{unit}: offline exposure {exposure}");
        assert!(
            exposure < max,
            "{unit}: exposure {exposure} is not below {max}:\n{security}"
        );
    }
}

/// The figure in `→ Overall exposure level for UNIT: 2.0 OK`.
fn exposure_level(report: &str, unit: &str) -> f64 {
    let marker = format!("Overall exposure level for {unit}: ");
    report
        .lines()
        .find_map(|l| l.split_once(&marker).map(|(_, rest)| rest))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level for {unit} in:\n{report}"))
}

// ---------------------------------------------------------------------------------------------
// Under a real systemd.

/// The cached bookworm root (made once; a `.complete` marker says it finished).
fn bookworm_root() -> anyhow::Result<PathBuf> {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("systemd-boot");
    let root = cache.join("bookworm");
    if root.join(".complete").exists() {
        return Ok(root);
    }
    fs::create_dir_all(&cache)?;
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let mirror = host_mirror().unwrap_or_else(|| "http://deb.debian.org/debian".into());
    let started = Instant::now();
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus",
            "bookworm",
        ])
        .arg(&root)
        .arg(&mirror))?;
    // The downloaded .debs are not needed again (~40 MiB).
    let _ = fs::remove_dir_all(root.join("var/cache/apt/archives"));
    fs::create_dir_all(root.join("var/cache/apt/archives/partial"))?;
    fs::write(root.join(".complete"), b"")?;
    eprintln!(
        "debootstrap of bookworm from {mirror} took {:?}",
        started.elapsed()
    );
    Ok(root)
}

/// The first `http(s)://…/debian` URI of the host's apt sources.
fn host_mirror() -> Option<String> {
    let mut texts = Vec::new();
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in entries.flatten() {
            texts.push(fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    texts.push(fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    texts.iter().flat_map(|t| t.lines()).find_map(|line| {
        let line = line.trim();
        if line.starts_with('#') {
            return None;
        }
        line.split_whitespace()
            .find(|w| {
                (w.starts_with("http://") || w.starts_with("https://"))
                    && w.trim_end_matches('/').ends_with("/debian")
            })
            .map(str::to_string)
    })
}

/// A booted copy of the cached root; stopped and removed on drop (also when a test fails).
struct Container {
    name: String,
    root: PathBuf,
    nspawn: Child,
    leader: u32,
    cgroups: Vec<PathBuf>,
}

impl Container {
    fn boot(debs: &Path) -> anyhow::Result<Container> {
        let cached = bookworm_root()?;
        let name = format!("loggate-pkg-{}", std::process::id());
        let root = cached.with_file_name(&name);
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        run(Command::new("cp").arg("-a").arg(&cached).arg(&root))?;
        let machine_id = run(Command::new("systemd-id128").arg("new"))?;
        fs::write(root.join("etc/machine-id"), machine_id)?;
        // nspawn --keep-unit splits the cgroup it runs in: give it one of its own (on a hybrid
        // host in both the name=systemd and the unified hierarchy), removed on drop.
        let cgroups: Vec<PathBuf> = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            vec![PathBuf::from("/sys/fs/cgroup").join(&name)]
        } else {
            ["systemd", "unified"]
                .iter()
                .map(|h| PathBuf::from("/sys/fs/cgroup").join(h).join(&name))
                .filter(|p| p.parent().is_some_and(Path::exists))
                .collect()
        };
        for cg in &cgroups {
            fs::create_dir_all(cg).with_context(|| format!("cgroup {}", cg.display()))?;
        }
        let enter: String = cgroups
            .iter()
            .map(|cg| format!("echo $$ > '{}/cgroup.procs' && ", cg.display()))
            .collect();
        let log = fs::File::create(root.with_extension("log"))?;
        let nspawn = Command::new("sh")
            .arg("-c")
            .arg(format!("{enter}exec systemd-nspawn \"$@\""))
            .arg("sh")
            .arg("-D")
            .arg(&root)
            .args(["-M", &name])
            .args([
                "--register=no",
                "--keep-unit",
                "--boot",
                "--console=read-only",
                "--link-journal=no",
                // The agent's unit asks for these; nspawn's own set lacks them.
                "--capability=CAP_BPF,CAP_PERFMON",
            ])
            .arg(format!("--bind-ro={}:/mnt/debs", debs.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start systemd-nspawn")?;
        let mut container = Container {
            name,
            root,
            leader: 0,
            nspawn,
            cgroups,
        };
        // The container's PID 1 is nspawn's child once it runs systemd (before that, nspawn's
        // child is a short-lived set-up process).
        let deadline = Instant::now() + Duration::from_secs(30);
        let children = format!("/proc/{0}/task/{0}/children", container.nspawn.id());
        while container.leader == 0 {
            if let Some(pid) = fs::read_to_string(&children)
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .find(|pid| {
                    fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim() == "systemd")
                })
            {
                container.leader = pid;
            } else if Instant::now() > deadline {
                bail!("systemd-nspawn started no container within 30 s");
            } else {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = container.exec(&["systemctl", "is-system-running", "--wait"]);
            match state {
                Ok(s) if s.trim() == "running" => break,
                // `degraded` is a unit of the base system failing in a container; ours are
                // checked one by one.
                Err(e) if e.to_string().contains("degraded") => break,
                _ if Instant::now() > deadline => {
                    bail!("the container did not boot within 60 s: {state:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        Ok(container)
    }

    /// Runs a command inside the container (all its namespaces and root); its standard output.
    fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("nsenter")
            .args(["-t", &self.leader.to_string()])
            .args(["-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--"])
            .args(args))
    }

    fn show(&self, unit: &str, property: &str) -> String {
        self.exec(&["systemctl", "show", "--value", "-p", property, unit])
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM: an orderly halt; SIGKILL after 30 s.
        // SAFETY: kill(2) on the nspawn child we spawned and have not reaped.
        unsafe {
            libc::kill(self.nspawn.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(self.nspawn.try_wait(), Ok(Some(_))) {
            if Instant::now() > deadline {
                let _ = self.nspawn.kill();
                let _ = self.nspawn.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for cg in &self.cgroups {
            remove_cgroup(cg);
        }
        let _ = fs::remove_dir_all(Path::new("/run/systemd/nspawn/propagate").join(&self.name));
        let _ = fs::remove_dir_all(&self.root);
        let _ = fs::remove_file(self.root.with_extension("log"));
    }
}

/// Removes a cgroup and the ones nspawn made under it, deepest first.
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Owner name, group name and mode of a path inside the container.
fn stat_inside(c: &Container, path: &str) -> (String, String, u32) {
    let out = c
        .exec(&["stat", "-c", "%U %G %a", path])
        .unwrap_or_else(|e| panic!("stat {path}: {e:#}"));
    let f: Vec<&str> = out.split_whitespace().collect();
    (
        f[0].to_string(),
        f[1].to_string(),
        u32::from_str_radix(f[2], 8).unwrap_or(0),
    )
}

/// Every regular file under `dir` with its bytes, sorted by path.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = fs::read(&p).unwrap_or_default();
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

/// Repackages `deb` as version `version` (the "next build" an upgrade installs).
fn with_version(deb: &Path, version: &str, out: &Path) -> anyhow::Result<PathBuf> {
    let dir = tempfile::tempdir()?;
    let tree = dir.path().join("tree");
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree))?;
    let control = tree.join("DEBIAN/control");
    let text = fs::read_to_string(&control)?;
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("Version: ") {
                format!("Version: {version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&control, text)?;
    let name = deb
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('_').next())
        .context("package file name")?;
    let upgraded = out.join(format!("{name}_{version}_upgrade.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&tree)
        .arg(&upgraded))?;
    Ok(upgraded)
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root"]
fn packages_under_real_systemd_start_ready_serve_a_read_stop_cleanly_and_upgrade_keeping_state() {
    loggate_tests::require_root("it boots a container with systemd-nspawn");
    let started = Instant::now();
    // The read is made with the host's CLI and a development PKI; the controller runs in the
    // container as its package sets it up, at the address the PKI's client configurations name.
    let cluster = Cluster::new(None).expect("PKI");
    let pki = cluster.dir.join("pki");
    let debs = tempfile::tempdir().expect("tempdir");
    for name in ["loggate-agent", "loggate"] {
        fs::copy(deb(name), debs.path().join(format!("{name}.deb"))).expect("copy deb");
    }
    let upgrades = tempfile::tempdir().expect("tempdir");
    let agent_next = with_version(&deb("loggate-agent"), "99.0.0", upgrades.path())
        .expect("the next build of the agent package");
    fs::copy(&agent_next, debs.path().join("loggate-agent-next.deb")).expect("copy");

    let c = Container::boot(debs.path()).expect("a booted bookworm container");
    eprintln!("booted after {:?}", started.elapsed());

    // Install: the real maintainer scripts. Unconfigured, neither unit is started, and the
    // scripts say what to do.
    let installed = Command::new("nsenter")
        .args(["-t", &c.leader.to_string()])
        .args(["-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--"])
        .args([
            "dpkg",
            "-i",
            "/mnt/debs/loggate.deb",
            "/mnt/debs/loggate-agent.deb",
        ])
        .output()
        .expect("dpkg -i");
    let (out, err) = text(&installed);
    assert!(installed.status.success(), "dpkg -i: {out}{err}");
    assert!(
        err.contains("loggate-agent: not started: /etc/loggate/agent.toml needs your settings"),
        "{err}"
    );
    for unit in ["loggate-agent.service", "loggate-controller.service"] {
        assert_eq!(c.show(unit, "UnitFileState"), "enabled", "{unit}");
        assert_eq!(c.show(unit, "ActiveState"), "inactive", "{unit}");
    }
    let passwd = c.exec(&["getent", "passwd", "loggate"]).expect("user");
    assert!(
        passwd.contains(":/nonexistent:/usr/sbin/nologin"),
        "{passwd}"
    );
    for (path, owner, group, mode) in [
        ("/var/lib/loggate-agent", "loggate", "loggate", 0o750),
        ("/var/lib/loggate-agent/state", "loggate", "loggate", 0o700),
        ("/var/lib/loggate-agent/audit", "loggate", "loggate", 0o750),
        ("/var/lib/loggate-controller", "loggate", "loggate", 0o700),
        (
            "/var/lib/loggate-controller/audit",
            "loggate",
            "loggate",
            0o750,
        ),
        ("/etc/loggate/tls", "root", "loggate", 0o750),
        ("/etc/loggate/controller", "loggate", "loggate", 0o700),
        ("/etc/loggate/agent.toml", "root", "root", 0o644),
    ] {
        assert_eq!(
            stat_inside(&c, path),
            (owner.into(), group.into(), mode),
            "{path}"
        );
    }

    // Configure both as an operator would: certificates, keys, the two files.
    let controller_addr = cluster.controller_addr;
    let agent_addr = free_addr().expect("port");
    let copy = |from: &Path, to: &str| {
        fs::copy(from, c.path(to)).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    };
    copy(&pki.join("ca.crt"), "/etc/loggate/tls/ca.crt");
    copy(
        &pki.join("controller.crt"),
        "/etc/loggate/tls/controller.crt",
    );
    copy(
        &pki.join("controller.key"),
        "/etc/loggate/tls/controller.key",
    );
    copy(&pki.join("agents/web-1.crt"), "/etc/loggate/tls/agent.crt");
    copy(&pki.join("agents/web-1.key"), "/etc/loggate/tls/agent.key");
    copy(
        &pki.join("grant-signing.key"),
        "/etc/loggate/controller/grant-signing.key",
    );
    copy(
        &pki.join("grant-signing.pub"),
        "/etc/loggate/grant-keys/controller.pub",
    );
    fs::create_dir_all(c.path("/etc/loggate/users")).expect("users");
    copy(&pki.join("users/alice.crt"), "/etc/loggate/users/alice.crt");
    copy(&pki.join("users/admin.crt"), "/etc/loggate/users/admin.crt");
    for (cmd, path) in [
        ("root:loggate", "/etc/loggate/tls/controller.key"),
        ("root:loggate", "/etc/loggate/tls/agent.key"),
        (
            "loggate:loggate",
            "/etc/loggate/controller/grant-signing.key",
        ),
    ] {
        c.exec(&["chown", cmd, path]).expect("chown");
    }
    c.exec(&["chmod", "0640", "/etc/loggate/tls/controller.key"])
        .expect("chmod");
    c.exec(&["chmod", "0640", "/etc/loggate/tls/agent.key"])
        .expect("chmod");
    c.exec(&["chmod", "0600", "/etc/loggate/controller/grant-signing.key"])
        .expect("chmod");
    let edit = |path: &str, from: &str, to: &str| {
        let file = c.path(path);
        let text = fs::read_to_string(&file).expect("conffile");
        assert!(text.contains(from), "{path} has {from:?}");
        fs::write(&file, text.replacen(from, to, 1)).expect("edit conffile");
    };
    edit(
        "/etc/loggate/controller.toml",
        "listen = \"0.0.0.0:7400\"",
        &format!("listen = \"{controller_addr}\""),
    );
    edit(
        "/etc/loggate/controller.toml",
        "admins = []",
        "admins = [\"admin\"]\nenrol_user_certs = \"/etc/loggate/users\"",
    );
    edit(
        "/etc/loggate/agent.toml",
        "id = \"change-me\"",
        "id = \"web-1\"",
    );
    edit(
        "/etc/loggate/agent.toml",
        "listen = \"0.0.0.0:7501\"",
        &format!("listen = \"{agent_addr}\""),
    );
    edit(
        "/etc/loggate/agent.toml",
        "controller = \"loggate-controller.example.net:7400\"",
        &format!("controller = \"{controller_addr}\""),
    );
    edit(
        "/etc/loggate/agent.toml",
        "roots = [\"/var/log\"]",
        "roots = [\"/var/log/app\"]",
    );
    fs::create_dir_all(c.path("/var/log/app")).expect("log folder");
    fs::write(
        c.path("/var/log/app/api.log"),
        "GET /login user=alice password=hunter2 status=200\n",
    )
    .expect("log file");
    // Root-only, as logs often are: the agent reads it through CAP_DAC_READ_SEARCH.
    fs::set_permissions(
        c.path("/var/log/app/api.log"),
        fs::Permissions::from_mode(0o600),
    )
    .expect("chmod log");

    // Start: `systemctl start` of a Type=notify unit returns once the daemon said READY=1.
    for unit in ["loggate-controller.service", "loggate-agent.service"] {
        c.exec(&["systemctl", "start", unit]).unwrap_or_else(|e| {
            let journal = c
                .exec(&["journalctl", "-u", unit, "--no-pager"])
                .unwrap_or_default();
            panic!("start {unit}: {e:#}\n{journal}")
        });
        assert_eq!(c.show(unit, "ActiveState"), "active", "{unit}");
        assert_eq!(c.show(unit, "SubState"), "running", "{unit}");
        assert_eq!(c.show(unit, "Type"), "notify", "{unit}");
        assert_eq!(c.show(unit, "NRestarts"), "0", "{unit}");
        assert_eq!(c.show(unit, "User"), "loggate", "{unit}");
        assert_eq!(c.show(unit, "WatchdogUSec"), "30s", "{unit}");
    }
    // The agent's CPU is bounded by its unit (issue #15): one CPU's worth in all.
    assert_eq!(
        c.show("loggate-agent.service", "CPUQuotaPerSecUSec"),
        "1s",
        "the agent's CPUQuota"
    );
    // The daemons ping their watchdog (every 15 s): systemd moves the watchdog timestamp it
    // set at READY=1 only when a WATCHDOG=1 arrives.
    let units = ["loggate-controller.service", "loggate-agent.service"];
    let stamps = units.map(|u| c.show(u, "WatchdogTimestampMonotonic"));
    for (unit, at_start) in units.iter().zip(&stamps) {
        wait_until(
            &format!("{unit} pings its watchdog"),
            Duration::from_secs(20),
            || c.show(unit, "WatchdogTimestampMonotonic") != *at_start,
        );
    }
    let audit_file = c.path("/var/lib/loggate-agent/audit/audit.jsonl");
    let agent_audit = || -> Vec<serde_json::Value> {
        read_audit_file(&audit_file)
            .iter()
            .map(flat_audit_record)
            .collect()
    };
    assert!(
        agent_audit().iter().any(|e| e["event"] == "agent.started"),
        "ready implies the audit is open and written"
    );
    // The unit can pin the bypass programs where the container has bpffs and an eBPF mode
    // runs (the tmpfiles.d folder, writable through ReadWritePaths): `created`, not `refused`.
    let agent_started = agent_audit()
        .into_iter()
        .find(|e| e["event"] == "agent.started")
        .unwrap_or_default();
    let bpffs = c
        .exec(&["stat", "-f", "-c", "%T", "/sys/fs/bpf"])
        .map(|t| t.trim() == "bpf_fs")
        .unwrap_or(false);
    let ebpf = ["tracepoint", "strict", "lsm", "fentry"]
        .contains(&agent_started["bypass_mode"].as_str().unwrap_or_default());
    if bpffs && ebpf {
        assert_eq!(agent_started["bypass_pins"], "created", "{agent_started:#}");
    } else {
        eprintln!(
            "bypass pinning not checked in the container: bpffs {bpffs}, mode {}",
            agent_started["bypass_mode"]
        );
    }
    // The agent process runs as loggate with exactly the unit's capabilities.
    let pid = c.show("loggate-agent.service", "MainPID");
    let status = c
        .exec(&["cat", &format!("/proc/{pid}/status")])
        .expect("status");
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or_default();
    // CAP_DAC_READ_SEARCH (2), CAP_PERFMON (38), CAP_BPF (39).
    assert_eq!(
        u64::from_str_radix(cap_eff, 16).unwrap_or(0),
        (1 << 2) | (1 << 38) | (1 << 39),
        "{status}"
    );

    // A redacted read through the gate, with a grant from the controller in the container.
    let grant = cluster
        .issue_grant_with_profile("alice", "web-1", "/var/log/app/*.log", "10m", "default")
        .expect("grant issue");
    wait_until(
        "the agent installs the grant",
        Duration::from_secs(20),
        || {
            c.exec(&["journalctl", "-u", "loggate-agent.service", "--no-pager"])
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("grant installed") && l.contains(&grant))
        },
    );
    let read = cluster
        .cli("alice")
        .args(["logs", "cat", "--host", "web-1", "--agent-addr"])
        .arg(agent_addr.to_string())
        .arg("/var/log/app/api.log")
        .output()
        .expect("logs cat");
    let (out, err) = text(&read);
    assert!(read.status.success(), "logs cat: {out}{err}");
    assert!(out.contains("GET /login user=alice"), "{out}");
    assert!(!out.contains("hunter2"), "served unredacted: {out}");

    // A broken configuration is refused by ExecStartPre, every problem in the journal.
    let good_config = fs::read(c.path("/etc/loggate/agent.toml")).expect("config");
    edit(
        "/etc/loggate/agent.toml",
        "id = \"web-1\"",
        "id = \"Web 1\"",
    );
    let restart = c.exec(&["systemctl", "restart", "loggate-agent.service"]);
    assert!(
        restart.is_err(),
        "a broken configuration started: {restart:?}"
    );
    let journal = c
        .exec(&["journalctl", "-u", "loggate-agent.service", "--no-pager"])
        .unwrap_or_default();
    assert!(
        journal.contains("id \"Web 1\" must be lowercase letters")
            && journal.contains("not for agent Web 1"),
        "{journal}"
    );
    // Restart=on-failure retries it every RestartSec, failing the same way, until fixed.
    assert_ne!(c.show("loggate-agent.service", "ActiveState"), "active");
    fs::write(c.path("/etc/loggate/agent.toml"), good_config).expect("restore config");
    c.exec(&["systemctl", "restart", "loggate-agent.service"])
        .expect("start with the configuration fixed");

    // A clean stop: exit 0, `agent.stopped` written and sealed.
    c.exec(&["systemctl", "stop", "loggate-agent.service"])
        .expect("stop");
    assert_eq!(c.show("loggate-agent.service", "Result"), "success");
    assert_eq!(c.show("loggate-agent.service", "ExecMainStatus"), "0");
    let last = agent_audit();
    assert!(
        last.iter().any(|e| e["event"] == "agent.stopped"),
        "agent.stopped in the audit"
    );
    c.exec(&["systemctl", "start", "loggate-agent.service"])
        .expect("start again");

    // Upgrade to the next build while running: configuration, state and the audit so far are
    // kept byte for byte, and the agent is restarted on the new build.
    c.exec(&["systemctl", "stop", "loggate-agent.service"])
        .expect("stop before snapshot");
    let state_before = snapshot(&c.path("/var/lib/loggate-agent/state"));
    let audit_before = fs::read(&audit_file).expect("audit");
    let config_before = fs::read(c.path("/etc/loggate/agent.toml")).expect("config");
    assert!(
        state_before
            .iter()
            .any(|(p, _)| p.ends_with("audit-signing.key")),
        "state holds the audit signing key: {:?}",
        state_before.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    c.exec(&["systemctl", "start", "loggate-agent.service"])
        .expect("start before upgrade");
    let pid_before = c.show("loggate-agent.service", "MainPID");
    c.exec(&["dpkg", "-i", "/mnt/debs/loggate-agent-next.deb"])
        .expect("upgrade");
    let version = c
        .exec(&["dpkg-query", "-W", "-f=${Version}", "loggate-agent"])
        .expect("version");
    assert_eq!(version, "99.0.0");
    assert_eq!(c.show("loggate-agent.service", "ActiveState"), "active");
    assert_ne!(
        c.show("loggate-agent.service", "MainPID"),
        pid_before,
        "restarted on upgrade"
    );
    assert_eq!(
        fs::read(c.path("/etc/loggate/agent.toml")).expect("config"),
        config_before,
        "the edited conffile is kept"
    );
    let audit_after = fs::read(&audit_file).expect("audit");
    assert!(
        audit_after.starts_with(&audit_before),
        "the audit so far is kept unchanged (the new start appends)"
    );
    let state_after = snapshot(&c.path("/var/lib/loggate-agent/state"));
    for (path, bytes) in &state_before {
        if path.ends_with("audit-signing.key") || path.ends_with("audit-signing.key.pub") {
            let after = state_after.iter().find(|(p, _)| p == path);
            assert_eq!(
                after.map(|(_, b)| b),
                Some(bytes),
                "{} kept",
                path.display()
            );
        }
    }
    assert!(
        state_after.iter().any(|(p, _)| p.ends_with("grants.redb")),
        "the grant store is kept"
    );
    // The upgraded agent still holds alice's grant (kept across the restart) and serves.
    let read = cluster
        .cli("alice")
        .args(["logs", "cat", "--host", "web-1", "--agent-addr"])
        .arg(agent_addr.to_string())
        .arg("/var/log/app/api.log")
        .output()
        .expect("logs cat");
    let (out, err) = text(&read);
    assert!(read.status.success(), "logs cat after upgrade: {out}{err}");

    // Removal stops the agent and keeps configuration, state and audit; purge deletes them.
    c.exec(&["dpkg", "-r", "loggate-agent"]).expect("remove");
    assert_eq!(c.show("loggate-agent.service", "ActiveState"), "inactive");
    assert!(audit_file.exists(), "removal keeps the audit");
    assert!(c.path("/etc/loggate/agent.toml").exists());
    let audit_len = fs::metadata(&audit_file).expect("audit").size();
    assert!(audit_len >= audit_after.len() as u64);
    c.exec(&["dpkg", "-P", "loggate-agent"]).expect("purge");
    assert!(
        !c.path("/var/lib/loggate-agent").exists(),
        "purge deletes state and audit"
    );
    assert!(!c.path("/etc/loggate/agent.toml").exists());
    // The controller's package is untouched by the agent's purge.
    assert_eq!(
        c.show("loggate-controller.service", "ActiveState"),
        "active"
    );
    c.exec(&["systemctl", "stop", "loggate-controller.service"])
        .expect("stop controller");
    assert_eq!(c.show("loggate-controller.service", "Result"), "success");
    eprintln!("systemd test took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// check-config: what the units' ExecStartPre runs.

#[test]
fn check_config_lists_every_problem_at_once_and_exits_2() {
    let cluster = Cluster::new(None).expect("PKI");
    let dir = &cluster.dir;
    let agent = dir.join("agent-bad.toml");
    fs::write(
        &agent,
        "id = \"Web 1\"\nlisten = \"127.0.0.1:1\"\ncontroller = \"127.0.0.1:2\"\n\
         grant_keys = [\"missing.pub\"]\nroots = [\"relative\"]\nmax_clock_skew = \"5m\"\n\
         [tls]\nca = \"pki/ca.crt\"\ncert = \"pki/agents/web-1.crt\"\nkey = \"missing.key\"\n",
    )
    .expect("write");
    let out = Command::new(cluster.bins.join("loggate-agent"))
        .arg("check-config")
        .arg(&agent)
        .output()
        .expect("check-config");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    for problem in [
        "id \"Web 1\" must be lowercase letters",
        "roots: relative must be an absolute path",
        "grant_keys: cannot read",
        "max_clock_skew must be at most 60s",
        "not for agent Web 1",
        "tls.key: cannot read",
    ] {
        assert_eq!(
            stderr.lines().filter(|l| l.contains(problem)).count(),
            1,
            "{problem:?} on a line of its own in:\n{stderr}"
        );
    }
    assert_eq!(stderr.lines().count(), 6, "{stderr}");

    let good = Command::new(cluster.bins.join("loggate"))
        .args(["controller", "check-config"])
        .arg(&cluster.controller_config)
        .output()
        .expect("check-config");
    let (stdout, stderr) = text(&good);
    assert!(good.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("the controller configuration is valid"),
        "{stdout}"
    );

    let controller = dir.join("controller-bad.toml");
    let text_good = fs::read_to_string(&cluster.controller_config).expect("config");
    fs::write(
        &controller,
        text_good
            .replace("max_ttl = \"8h\"", "max_ttl = \"0s\"")
            .replace("admins = [\"admin\"]", "admins = [\"Not Valid\"]")
            .replace(
                "cert = \"pki/controller.crt\"",
                "cert = \"pki/agents/web-1.crt\"",
            ),
    )
    .expect("write");
    // Others may read the signing key: refused.
    let key = dir.join("pki/grant-signing.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = Command::new(cluster.bins.join("loggate"))
        .args(["controller", "check-config"])
        .arg(&controller)
        .output()
        .expect("check-config");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    for problem in [
        "max_ttl \"0s\" is out of range",
        "admins: \"Not Valid\" is not a valid user name",
        "is readable by others (mode 644); run chmod 600",
        "not for the controller",
    ] {
        assert_eq!(
            stderr.lines().filter(|l| l.contains(problem)).count(),
            1,
            "{problem:?} on a line of its own in:\n{stderr}"
        );
    }
    assert_eq!(stderr.lines().count(), 4, "{stderr}");
}
