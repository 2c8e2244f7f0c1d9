//! The loopback harness: builds and starts the real `loggate` and `loggate-agent` binaries with
//! a real development PKI in a folder, and drives the real CLI. Used by the end-to-end tests in
//! `tests/tests/` and by `cargo xtask demo`.

pub mod journal_export;
pub mod netns;
pub mod oidc_provider;
pub mod postgres;
pub mod sockets;

use anyhow::{bail, Context};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
/// For the tests marked `#[ignore = "needs root"]`, which `cargo xtask test` runs with
/// `--include-ignored` when it is root (CI is): run without root, such a test fails saying so
/// (it was asked for explicitly), instead of passing without having checked anything.
pub fn require_root(what: &str) {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root ({what}); run it as root, as `cargo xtask test` does in CI");
    }
}

pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// The folder holding the `loggate` and `loggate-agent` binaries: `$LOGGATE_BIN_DIR` when set
/// (`cargo xtask test` builds them first), else built here once per process.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(dir) = std::env::var_os("LOGGATE_BIN_DIR") {
                return Ok(PathBuf::from(dir));
            }
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(workspace_root())
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "loggate",
                    "-p",
                    "loggate-agent",
                    "--bins",
                ])
                .status()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !status.success() {
                return Err("building loggate binaries failed".to_string());
            }
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            Ok(target.join("debug"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A free loopback port for a daemon a test starts, which binds it later.
///
/// Drawn outside the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), from which
/// every outgoing connection's local port and every bind to port 0 come, and never the same
/// twice in this process. A port from bind-0-then-close could be given to another test's
/// bind-0 or outgoing connection before the daemon bound it: CI saw a metrics GET answered by
/// a reset (another server on the port) and a daemon that could not bind its port. Below the
/// range (from 10000) or, on a host whose range starts lower, above it; on a host whose range
/// leaves neither, bind-0-then-close as before.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    static GIVEN: std::sync::Mutex<Option<std::collections::HashSet<u16>>> =
        std::sync::Mutex::new(None);
    const LOWEST: u16 = 10_000;
    const ROOM: u16 = 1_000;
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let bounds: Vec<u16> = range
        .as_deref()
        .unwrap_or("32768 60999")
        .split_whitespace()
        .filter_map(|bound| bound.parse().ok())
        .collect();
    let (low, high) = match bounds[..] {
        [low, high] => (low, high),
        _ => (32768, 60999),
    };
    let outside = if low >= LOWEST.saturating_add(ROOM) {
        Some((LOWEST, low))
    } else if u16::MAX - high >= ROOM {
        Some((high + 1, u16::MAX))
    } else {
        None
    };
    let Some((first, end)) = outside else {
        eprintln!(
            "free_addr: the ephemeral port range {low}-{high} leaves no room below or above it: \
             ports come from bind-0-then-close, which another bind can take first"
        );
        let listener = TcpListener::bind("127.0.0.1:0")?;
        return Ok(listener.local_addr()?);
    };
    let span = u32::from(end - first);
    // Where this process starts looking: apart from other test binaries run at the same time.
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let given = given.get_or_insert_with(Default::default);
    for step in 0..span {
        let port = first + u16::try_from((start + step) % span)?;
        if given.contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)) {
            given.insert(port);
            return Ok(listener.local_addr()?);
        }
    }
    bail!("no free loopback port between {first} and {end}")
}

/// How long a test waits for a process it started (controller, agent, rsyslogd) to listen. It
/// returns as soon as the port answers; the bound only matters when CI's two cores are busy
/// compiling beside the tests, where 20 s was once not enough for a cluster to come up.
pub const STARTUP_WAIT: Duration = Duration::from_secs(60);

pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after {timeout:?}")
}

/// Sends `child` SIGTERM and waits up to `within` for it to exit: its exit status and how long
/// it took, or `None` when it had not exited (it is then killed with SIGKILL and reaped).
pub fn terminate_within(
    child: &mut Child,
    within: Duration,
) -> Option<(std::process::ExitStatus, Duration)> {
    let start = Instant::now();
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped) has no memory
    // effects; at worst the process is already gone and kill returns ESRCH.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    while start.elapsed() < within {
        if let Ok(Some(status)) = child.try_wait() {
            return Some((status, start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Stops `child` with SIGTERM (SIGKILL after 5 s) and reaps it.
pub fn terminate(child: &mut Child) {
    let _ = terminate_within(child, Duration::from_secs(5));
}

pub struct AgentInfo {
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub dir: PathBuf,
    /// The network namespace it runs in (`netns.rs`); `None`: the test's own.
    pub netns: Option<String>,
    child: Option<Child>,
}

/// One controller and any number of agents, in one folder.
pub struct Cluster {
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub bins: PathBuf,
    pub controller_addr: SocketAddr,
    pub controller_config: PathBuf,
    controller: Option<Child>,
    pub agents: HashMap<String, AgentInfo>,
    /// Where child processes' stderr goes (inherit for the demo, a file for tests).
    pub quiet: bool,
    /// The network namespace the controller runs in (`netns.rs`); `None`: the test's own.
    pub controller_netns: Option<String>,
    /// The network namespace [`Cluster::cli`] commands run in; `None`: the test's own.
    pub cli_netns: Option<String>,
}

impl Cluster {
    /// A PKI and controller configuration in `dir` (or a fresh temporary folder).
    pub fn new(dir: Option<PathBuf>) -> anyhow::Result<Cluster> {
        let bins = bin_dir()?;
        let (dir, temp) = match dir {
            Some(d) => {
                std::fs::create_dir_all(&d)?;
                (std::fs::canonicalize(&d)?, None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("loggate-").tempdir()?;
                (std::fs::canonicalize(t.path())?, Some(t))
            }
        };
        let controller_addr = free_addr()?;
        let pki = dir.join("pki");
        let out = Command::new(bins.join("loggate"))
            .args(["pki", "init"])
            .arg(&pki)
            .args(["--controller-addr", &controller_addr.to_string()])
            .output()?;
        if !out.status.success() {
            bail!("pki init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let controller_config = dir.join("controller.toml");
        std::fs::write(
            &controller_config,
            format!(
                "# loggate controller (written by the loopback harness)\n\
                 listen = \"{controller_addr}\"\n\
                 database = \"controller/state.db\"\n\
                 audit_log = \"controller/audit.jsonl\"\n\
                 signing_key = \"pki/grant-signing.key\"\n\
                 admins = [\"admin\"]\n\
                 max_ttl = \"8h\"\n\
                 redaction_profiles = [\"default\", \"raw\", \"strict\", \"support\", \"nosuch\"]\n\
                 enrol_user_certs = \"pki/users\"\n\n\
                 [tls]\n\
                 ca = \"pki/ca.crt\"\n\
                 cert = \"pki/controller.crt\"\n\
                 key = \"pki/controller.key\"\n"
            ),
        )?;
        std::fs::create_dir_all(dir.join("controller"))?;
        Ok(Cluster {
            dir,
            _temp: temp,
            bins,
            controller_addr,
            controller_config,
            controller: None,
            agents: HashMap::new(),
            quiet: true,
            controller_netns: None,
            cli_netns: None,
        })
    }

    fn spawn(
        &self,
        program: &str,
        args: &[&str],
        log: &Path,
        netns: Option<&str>,
    ) -> anyhow::Result<Child> {
        let mut cmd = match netns {
            Some(ns) => netns::command_in(ns, &self.bins.join(program)),
            None => Command::new(self.bins.join(program)),
        };
        cmd.args(args).stdin(Stdio::null());
        if self.quiet {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        cmd.spawn().with_context(|| format!("starting {program}"))
    }

    pub fn start_controller(&mut self) -> anyhow::Result<()> {
        let config = self.controller_config.display().to_string();
        let child = self.spawn(
            "loggate",
            &["controller", "serve", "--config", &config],
            &self.dir.join("controller/stderr.log"),
            self.controller_netns.as_deref(),
        )?;
        self.controller = Some(child);
        match &self.controller_netns {
            Some(ns) => netns::wait_for_port_in(ns, self.controller_addr, STARTUP_WAIT),
            None => wait_for_port(self.controller_addr, STARTUP_WAIT),
        }
    }

    pub fn stop_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            terminate(&mut c);
        }
    }

    /// Kills the controller with SIGKILL (a crash: its streams are cut, not closed).
    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Moves the controller to `addr`: its configuration's `listen` and every user's client
    /// configuration (`pki/clients/*.toml`); the agents' configurations are left as they are.
    /// Takes effect at the controller's next start.
    pub fn move_controller(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let old = self.controller_addr.to_string();
        let text = std::fs::read_to_string(&self.controller_config)?;
        let text = text.replacen(
            &format!("\nlisten = \"{old}\"\n"),
            &format!("\nlisten = \"{addr}\"\n"),
            1,
        );
        std::fs::write(&self.controller_config, text)?;
        for entry in std::fs::read_dir(self.dir.join("pki/clients"))? {
            let path = entry?.path();
            let text = std::fs::read_to_string(&path)?.replacen(
                &format!("controller = \"{old}\""),
                &format!("controller = \"{addr}\""),
                1,
            );
            std::fs::write(&path, text)?;
        }
        self.controller_addr = addr;
        Ok(())
    }

    /// Runs agent `id` (from `add_agent`) as a host of its own: in network namespace `ns`,
    /// listening on `listen` (e.g. `0.0.0.0:7501`), reached and advertised at `addr`.
    pub fn place_agent(
        &mut self,
        id: &str,
        ns: &str,
        listen: SocketAddr,
        addr: SocketAddr,
    ) -> anyhow::Result<()> {
        let info = self.agents.get_mut(id).context("unknown agent")?;
        let text = std::fs::read_to_string(&info.config)?.replacen(
            &format!("\nlisten = \"{}\"\n", info.addr),
            &format!("\nlisten = \"{listen}\"\nadvertise = \"{addr}\"\n"),
            1,
        );
        std::fs::write(&info.config, text)?;
        info.addr = addr;
        info.netns = Some(ns.to_string());
        Ok(())
    }

    /// Replaces agent `id`'s `controller = …` line (from `add_agent`) with
    /// `controllers = [addrs…]`.
    pub fn set_agent_controllers(&self, id: &str, addrs: &[String]) -> anyhow::Result<()> {
        let info = self.agents.get(id).context("unknown agent")?;
        let list: Vec<String> = addrs.iter().map(|a| format!("{a:?}")).collect();
        let text = std::fs::read_to_string(&info.config)?;
        let line = text
            .lines()
            .find(|l| l.starts_with("controller = "))
            .context("no controller line in the agent's configuration")?
            .to_string();
        let text = text.replacen(&line, &format!("controllers = [{}]", list.join(", ")), 1);
        std::fs::write(&info.config, text)?;
        Ok(())
    }

    /// Starts the controller and the agents `ids` (each with its own certificate, serving
    /// `roots`, labelled `env=demo` and `label`): a fleet a label grant can address.
    pub fn start_labelled_agents(
        &mut self,
        ids: &[String],
        roots: &[&Path],
        label: &str,
    ) -> anyhow::Result<()> {
        for id in ids {
            self.issue_agent_cert(id)?;
            self.add_agent(id, roots, "")?;
            self.set_agent_labels(id, &format!("\"env=demo\", \"{label}\""))?;
        }
        self.start_controller()?;
        for id in ids {
            self.start_agent(id)?;
        }
        Ok(())
    }

    /// Issues alice a raw 30-minute grant over `path` on every agent labelled `label`: its id.
    pub fn issue_label_grant(&self, label: &str, path: &str) -> anyhow::Result<String> {
        let out = self.run_cli(
            "admin",
            &[
                "grant",
                "issue",
                "--subject",
                "alice",
                "--label",
                label,
                "--path",
                path,
                "--ttl",
                "30m",
                "--reason",
                "TEST-13",
                "--redaction",
                "raw",
                "--json",
            ],
        )?;
        anyhow::ensure!(out.status.success(), "grant issue: {}", text(&out).1);
        let grant: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let id = grant["id"].as_str().unwrap_or_default().to_string();
        anyhow::ensure!(!id.is_empty(), "no id in {grant}");
        Ok(id)
    }

    /// Writes the configuration of agent `id` serving `roots`; `extra` is appended to it.
    pub fn add_agent(&mut self, id: &str, roots: &[&Path], extra: &str) -> anyhow::Result<()> {
        let addr = free_addr()?;
        let dir = self.dir.join("agents").join(id);
        std::fs::create_dir_all(&dir)?;
        let roots: Vec<String> = roots
            .iter()
            .map(|r| format!("{:?}", r.display().to_string()))
            .collect();
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "# loggate agent {id} (written by the loopback harness)\n\
                 id = \"{id}\"\n\
                 labels = [\"env=demo\"]\n\
                 listen = \"{addr}\"\n\
                 controller = \"{}\"\n\
                 grant_keys = [\"../../pki/grant-signing.pub\"]\n\
                 roots = [{}]\n\
                 state_dir = \"state\"\n\
                 audit_log = \"audit.jsonl\"\n\
                 allow_raw = true\n\
                 {extra}\n\n\
                 [tls]\n\
                 ca = \"../../pki/ca.crt\"\n\
                 cert = \"../../pki/agents/{id}.crt\"\n\
                 key = \"../../pki/agents/{id}.key\"\n\
                 {pins}",
                self.controller_addr,
                roots.join(", "),
                pins = if extra.contains("[bypass]") {
                    ""
                } else {
                    // Test agents pin nothing unless the test says where: the default bpffs
                    // folder is one per host, and a stopped test agent would hand the next test's
                    // agent its programs and queued reads.
                    "\n[bypass]\npin = false\n"
                },
            ),
        )?;
        self.agents.insert(
            id.to_string(),
            AgentInfo {
                addr,
                config,
                dir,
                netns: None,
                child: None,
            },
        );
        Ok(())
    }

    pub fn start_agent(&mut self, id: &str) -> anyhow::Result<()> {
        let info = self.agents.get(id).context("unknown agent")?;
        let config = info.config.display().to_string();
        let log = info.dir.join("stderr.log");
        let addr = info.addr;
        let ns = info.netns.clone();
        let child = self.spawn(
            "loggate-agent",
            &["run", "--config", &config],
            &log,
            ns.as_deref(),
        )?;
        if let Some(info) = self.agents.get_mut(id) {
            info.child = Some(child);
        }
        match ns {
            Some(ns) => netns::wait_for_port_in(&ns, addr, STARTUP_WAIT),
            None => wait_for_port(addr, STARTUP_WAIT),
        }
    }

    pub fn stop_agent(&mut self, id: &str) {
        if let Some(info) = self.agents.get_mut(id) {
            if let Some(mut c) = info.child.take() {
                terminate(&mut c);
            }
        }
    }

    /// Sends an agent SIGTERM and waits at most `within` for it to exit: its exit status and
    /// how long it took. `None`: it was still running (it is then killed) or was not running.
    pub fn terminate_agent_within(
        &mut self,
        id: &str,
        within: Duration,
    ) -> Option<(std::process::ExitStatus, Duration)> {
        let mut c = self.agents.get_mut(id)?.child.take()?;
        terminate_within(&mut c, within)
    }

    /// Stops the controller with SIGTERM and waits up to `within` for it to exit: its exit
    /// status and how long it took, or `None` when it had not exited (it is then killed).
    pub fn terminate_controller_within(
        &mut self,
        within: Duration,
    ) -> Option<(std::process::ExitStatus, Duration)> {
        let mut c = self.controller.take()?;
        terminate_within(&mut c, within)
    }

    /// Kills an agent with SIGKILL (no clean shutdown).
    pub fn kill_agent(&mut self, id: &str) {
        if let Some(info) = self.agents.get_mut(id) {
            if let Some(mut c) = info.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    pub fn client_config(&self, user: &str) -> PathBuf {
        self.dir.join("pki/clients").join(format!("{user}.toml"))
    }

    /// A `loggate` command run as `user` (its client configuration).
    pub fn cli(&self, user: &str) -> Command {
        let mut cmd = match &self.cli_netns {
            Some(ns) => netns::command_in(ns, &self.bins.join("loggate")),
            None => Command::new(self.bins.join("loggate")),
        };
        cmd.env("LOGGATE_CONFIG", self.client_config(user));
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `loggate logs <args…> --host <agent> --agent-addr <its address>` as `user`, not yet run
    /// (tests that follow a stream spawn it).
    pub fn logs_cmd(&self, user: &str, agent: &str, args: &[&str]) -> Command {
        let mut cmd = self.cli(user);
        cmd.arg("logs")
            .args(args)
            .args(["--host", agent, "--agent-addr", &self.agent_addr(agent)]);
        cmd
    }

    /// Issues a grant as admin, waits until agent `host` has received it, returns its id.
    pub fn grant(
        &self,
        subject: &str,
        host: &str,
        path: &str,
        ttl: &str,
    ) -> anyhow::Result<String> {
        let id = self.issue_grant(subject, host, path, ttl)?;
        self.wait_for_grant(host, &id)?;
        Ok(id)
    }

    pub fn run_cli(&self, user: &str, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.cli(user).args(args).output()?)
    }

    /// Issues a grant (redaction profile `raw`) as admin and returns its id.
    pub fn issue_grant(
        &self,
        subject: &str,
        host: &str,
        path: &str,
        ttl: &str,
    ) -> anyhow::Result<String> {
        self.issue_grant_with_profile(subject, host, path, ttl, "raw")
    }

    /// Issues a grant naming redaction profile `profile` as admin and returns its id.
    pub fn issue_grant_with_profile(
        &self,
        subject: &str,
        host: &str,
        path: &str,
        ttl: &str,
        profile: &str,
    ) -> anyhow::Result<String> {
        let out = self.run_cli(
            "admin",
            &[
                "grant",
                "issue",
                "--subject",
                subject,
                "--host",
                host,
                "--path",
                path,
                "--ttl",
                ttl,
                "--reason",
                "TEST-1",
                "--redaction",
                profile,
                "--json",
            ],
        )?;
        if !out.status.success() {
            bail!(
                "grant issue failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        v["id"]
            .as_str()
            .map(String::from)
            .context("no id in grant issue output")
    }

    /// The process id of running agent `id` (for benches that read its CPU time and memory).
    pub fn agent_pid(&self, id: &str) -> Option<u32> {
        self.agents.get(id)?.child.as_ref().map(Child::id)
    }

    /// What a test that waited in vain for an agent's record prints to tell the cases apart:
    /// whether the agent process still runs (its `/proc` state: a zombie has exited), the last
    /// lines of its stderr, and the last audit records' names. A timeout alone said nothing
    /// (issue #15's CI run 6: a bypass read never came, and nothing showed whether the agent
    /// had died, stalled or lost it).
    pub fn agent_diagnosis(&self, id: &str) -> String {
        let Some(info) = self.agents.get(id) else {
            return format!("no agent {id}");
        };
        let process = match info.child.as_ref().map(Child::id) {
            None => "not started by the test, or stopped".to_string(),
            Some(pid) => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                // The state follows the name, which is in parentheses and may hold spaces.
                Ok(stat) => {
                    let state = stat
                        .rsplit_once(") ")
                        .and_then(|(_, rest)| rest.split(' ').next())
                        .unwrap_or("?");
                    let exited = if state == "Z" {
                        " (exited, not yet reaped)"
                    } else {
                        ""
                    };
                    format!("pid {pid}, state {state}{exited}")
                }
                Err(e) => format!("pid {pid} is gone: {e}"),
            },
        };
        let stderr = std::fs::read_to_string(info.dir.join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        let records = self.agent_audit(id);
        let last: Vec<String> = records[records.len().saturating_sub(15)..]
            .iter()
            .map(|e| format!("{} pid={}", e["event"], e["pid"]))
            .collect();
        format!("agent {id}: {process}\nlast audit records: {last:?}\nstderr tail:\n{tail}")
    }

    pub fn agent_addr(&self, id: &str) -> String {
        self.agents
            .get(id)
            .map(|a| a.addr.to_string())
            .unwrap_or_default()
    }

    /// The agent's audit records, each in the flat view of [`flat_audit_record`] (what most
    /// tests assert on: `e["event"]`, `e["grant_id"]`, …).
    pub fn agent_audit(&self, id: &str) -> Vec<serde_json::Value> {
        self.agent_audit_raw(id)
            .iter()
            .map(flat_audit_record)
            .collect()
    }

    /// The agent's audit records exactly as written (OCSF events behind `seq` and `prev`).
    pub fn agent_audit_raw(&self, id: &str) -> Vec<serde_json::Value> {
        read_audit_file(&self.dir.join("agents").join(id).join("audit.jsonl"))
    }

    /// The controller's audit records exactly as written.
    pub fn controller_audit_raw(&self) -> Vec<serde_json::Value> {
        read_audit_file(&self.dir.join("controller/audit.jsonl"))
    }

    /// Waits until the agent's audit log holds an event satisfying `pred`.
    pub fn wait_for_audit(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.agent_audit(id).into_iter().find(|e| pred(e)) {
                return Ok(e);
            }
            if Instant::now() > deadline {
                bail!("no matching audit event on {id} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The controller's own audit records, as written (read them with
    /// `loggate_core::audit::{event_name, record_field}`).
    pub fn controller_audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("controller/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The checkpoints the controller holds for `host`, through `loggate audit checkpoints
    /// --output json` as admin: objects with `id`, `status`, `line`…
    pub fn held_checkpoints(&self, host: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.run_cli(
            "admin",
            &["audit", "checkpoints", "--host", host, "--output", "json"],
        )?;
        if !out.status.success() {
            bail!(
                "audit checkpoints failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| Ok(serde_json::from_str(l)?))
            .collect()
    }

    /// The TLS files of `who` in the harness's PKI (`users/alice`, `agents/web-1`): the CA, the
    /// certificate and the key, for a test that builds its own endpoint (a raw gRPC client, a
    /// window of its own).
    pub fn tls_files_of(&self, who: &str) -> loggate_core::tls::TlsFiles {
        let pki = self.dir.join("pki");
        loggate_core::tls::TlsFiles {
            ca: pki.join("ca.crt"),
            cert: pki.join(format!("{who}.crt")),
            key: pki.join(format!("{who}.key")),
        }
    }

    /// A gRPC client of the controller holding the certificate `pki/<who>.crt` (e.g.
    /// `agents/web-1`, `users/alice`), for tests that send what the binaries would not.
    pub async fn controller_client_as(
        &self,
        who: &str,
    ) -> anyhow::Result<loggate_proto::controller_client::ControllerClient<tonic::transport::Channel>>
    {
        let channel = self
            .tls_files_of(who)
            .endpoint(
                &self.controller_addr.to_string(),
                loggate_core::tls::Server::Controller,
            )?
            .connect()
            .await?;
        Ok(loggate_proto::controller_client::ControllerClient::new(
            channel,
        ))
    }

    /// Issues agent `id`'s certificate from the harness's CA (`loggate pki issue --agent`), for
    /// agents beyond the ones the harness's PKI already holds.
    pub fn issue_agent_cert(&self, id: &str) -> anyhow::Result<()> {
        let out = Command::new(self.bins.join("loggate"))
            .args(["pki", "issue"])
            .arg(self.dir.join("pki"))
            .args(["--agent", id])
            .output()?;
        anyhow::ensure!(out.status.success(), "pki issue {id}: {:?}", text(&out));
        Ok(())
    }

    /// Replaces the labels [`Cluster::add_agent`] wrote for agent `id` (`env=demo`) with
    /// `labels`, the body of a TOML list of strings (`"env=prod", "team=db"`).
    pub fn set_agent_labels(&self, id: &str, labels: &str) -> anyhow::Result<()> {
        let config = &self.agents[id].config;
        let toml = std::fs::read_to_string(config)?
            .replace("labels = [\"env=demo\"]", &format!("labels = [{labels}]"));
        std::fs::write(config, toml)?;
        Ok(())
    }

    /// Waits (at most 30 s) until the controller's registry knows `count` agents with their
    /// addresses.
    pub fn wait_registered(&self, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.run_cli("admin", &["agent", "list", "--output", "json"])?;
            let known = text(&out)
                .0
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|a| a["addr"].as_str().is_some_and(|s| !s.is_empty()))
                .count();
            if known >= count {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "only {known} agents registered");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until agent `id` has received grant `grant_id` (its audit record) and installed it
    /// (its log line: the record is written before the install, audit before action).
    pub fn wait_for_grant(&self, id: &str, grant_id: &str) -> anyhow::Result<()> {
        let timeout = Duration::from_secs(30);
        self.wait_for_audit(id, timeout, |e| {
            e["event"] == "grant.received" && e["grant_id"] == grant_id
        })?;
        let log = self
            .agents
            .get(id)
            .context("unknown agent")?
            .dir
            .join("stderr.log");
        let installed = format!("grant_id={grant_id}");
        let deadline = Instant::now() + timeout;
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("grant installed") && l.contains(&installed))
        {
            if Instant::now() > deadline {
                bail!("agent {id} did not install grant {grant_id} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Cluster {
    /// Writes the access policy `text` to `policy.toml` and names it in the controller's
    /// configuration (takes effect at the controller's next start, reload or SIGHUP).
    pub fn set_policy(&self, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join("policy.toml");
        std::fs::write(&path, text)?;
        let config = std::fs::read_to_string(&self.controller_config)?;
        if !config.contains("\npolicy = ") {
            // A root key: before the first table.
            let config = config.replacen("\nlisten = ", "\npolicy = \"policy.toml\"\nlisten = ", 1);
            std::fs::write(&self.controller_config, config)?;
        }
        Ok(path)
    }

    /// The running controller's process id.
    pub fn controller_pid(&self) -> Option<u32> {
        self.controller.as_ref().map(|c| c.id())
    }

    /// The controller's audit records, flattened ([`flat_audit_record`]).
    pub fn controller_events(&self) -> Vec<serde_json::Value> {
        self.controller_audit_raw()
            .iter()
            .map(flat_audit_record)
            .collect()
    }
}

impl Fixture {
    /// A fixture whose controller runs with the access policy `policy` (`{logs}` in it stands
    /// for the folder of `api.log`).
    pub fn start_with_policy(policy: &str) -> anyhow::Result<Fixture> {
        let mut cluster = Cluster::new(None)?;
        let logs = cluster.dir.join("logs/app");
        std::fs::create_dir_all(&logs)?;
        let mut text = String::new();
        for i in 0..50 {
            text.push_str(&format!("2026-11-27T07:{i:02}:00Z INFO line {i}\n"));
        }
        std::fs::write(logs.join("api.log"), text)?;
        cluster.set_policy(&policy.replace("{logs}", &logs.display().to_string()))?;
        cluster.add_agent("web-1", &[&logs], "")?;
        cluster.start_controller()?;
        cluster.start_agent("web-1")?;
        Ok(Fixture { cluster, logs })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<String> = self.agents.keys().cloned().collect();
        for id in ids {
            self.stop_agent(&id);
        }
        self.stop_controller();
    }
}

/// A running controller and agent `web-1` serving `logs` (which holds `api.log`).
pub struct Fixture {
    pub cluster: Cluster,
    pub logs: PathBuf,
}

impl Fixture {
    pub fn start() -> anyhow::Result<Fixture> {
        Self::start_with("")
    }

    /// Like [`Fixture::start`], with extra lines for the agent's configuration.
    pub fn start_with(agent_extra: &str) -> anyhow::Result<Fixture> {
        let mut cluster = Cluster::new(None)?;
        let logs = cluster.dir.join("logs/app");
        std::fs::create_dir_all(&logs)?;
        let mut text = String::new();
        for i in 0..50 {
            text.push_str(&format!("2026-11-27T07:{i:02}:00Z INFO line {i}\n"));
        }
        std::fs::write(logs.join("api.log"), text)?;
        cluster.add_agent("web-1", &[&logs], agent_extra)?;
        cluster.start_controller()?;
        cluster.start_agent("web-1")?;
        Ok(Fixture { cluster, logs })
    }

    pub fn api_log(&self) -> String {
        self.logs.join("api.log").display().to_string()
    }

    pub fn glob(&self) -> String {
        format!("{}/*.log", self.logs.display())
    }

    /// Issues `subject` a grant on web-1 for the fixture's glob and waits until web-1 has it.
    pub fn grant(&self, subject: &str, ttl: &str) -> anyhow::Result<String> {
        let id = self
            .cluster
            .issue_grant(subject, "web-1", &self.glob(), ttl)?;
        self.cluster.wait_for_grant("web-1", &id)?;
        Ok(id)
    }

    /// Like [`Fixture::grant`], naming redaction profile `profile`.
    pub fn grant_with_profile(
        &self,
        subject: &str,
        ttl: &str,
        profile: &str,
    ) -> anyhow::Result<String> {
        let id =
            self.cluster
                .issue_grant_with_profile(subject, "web-1", &self.glob(), ttl, profile)?;
        self.cluster.wait_for_grant("web-1", &id)?;
        Ok(id)
    }

    /// Runs `loggate logs <args…> --host web-1 --agent-addr <addr>` as `user`.
    pub fn logs(&self, user: &str, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.cluster.logs_cmd(user, "web-1", args).output()?)
    }
}

/// The records of an audit file (none if it does not exist yet; a torn last line is skipped).
pub fn read_audit_file(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The flat view of an audit record the end-to-end tests assert on: loggate's own fields
/// (`unmapped.loggate`, see `loggate_core::audit::record_fields`) at the top level, plus `event`
/// (the event name, OCSF `metadata.event_code`), `seq`, `prev`, `time` (epoch ms) and `host`
/// (`device.hostname`). The OCSF shape itself is checked by `tests/audit_schema.rs` on the raw
/// records.
pub fn flat_audit_record(raw: &serde_json::Value) -> serde_json::Value {
    use loggate_core::audit::{chain_link, event_name, record_fields};
    let mut flat = record_fields(raw).cloned().unwrap_or_default();
    flat.insert("event".into(), event_name(raw).into());
    let (seq, prev) = chain_link(raw).map_or((None, None), |(s, p)| (Some(s), Some(p)));
    flat.insert("seq".into(), seq.into());
    flat.insert("prev".into(), prev.into());
    for (key, value) in [
        ("time", raw.get("time")),
        ("host", raw.pointer("/device/hostname")),
    ] {
        flat.insert(key.into(), value.cloned().unwrap_or_default());
    }
    serde_json::Value::Object(flat)
}

/// Stdout and stderr of a finished command, as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A real `rsyslogd` receiving RFC 5425 syslog over mutual TLS on a free loopback port: the
/// `gtls` driver with `authMode="x509/name"` and a permitted-peer list (the `ossl` driver ignores
/// that list), `maxMessageSize="64k"` (the 8 KB default splits large events), and an `omfile`
/// action that writes each message's MSG part, exactly, one per line, to `received.log`.
/// Started and stopped by its pid; stopped on drop.
pub struct Rsyslog {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
}

impl Rsyslog {
    /// Writes the configuration in `dir`: the receiver listens on `addr` (see [`free_addr`]),
    /// presents `cert`/`key`, trusts client certificates from `ca`, and accepts only the peers
    /// named in `permitted`.
    pub fn new(
        dir: &Path,
        addr: SocketAddr,
        ca: &Path,
        cert: &Path,
        key: &Path,
        permitted: &[&str],
    ) -> anyhow::Result<Rsyslog> {
        let rsyslogd = Path::new("/usr/sbin/rsyslogd");
        if !rsyslogd.exists() {
            bail!(
                "rsyslogd is not installed: `cargo xtask test` installs rsyslog and rsyslog-gnutls \
                 (or apt-get install rsyslog rsyslog-gnutls)"
            );
        }
        std::fs::create_dir_all(dir.join("work"))?;
        let peers: Vec<String> = permitted.iter().map(|p| format!("{p:?}")).collect();
        let peers = peers.join(", ");
        let d = dir.display();
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                "# rsyslog TLS receiver (written by the loopback harness)\n\
                 global(workDirectory=\"{d}/work\" maxMessageSize=\"64k\"\n\
                 \x20      defaultNetstreamDriver=\"gtls\"\n\
                 \x20      defaultNetstreamDriverCAFile=\"{}\"\n\
                 \x20      defaultNetstreamDriverCertFile=\"{}\"\n\
                 \x20      defaultNetstreamDriverKeyFile=\"{}\")\n\
                 module(load=\"imtcp\" streamDriver.name=\"gtls\" streamDriver.mode=\"1\"\n\
                 \x20      streamDriver.authMode=\"x509/name\" permittedPeer=[{peers}])\n\
                 template(name=\"msgonly\" type=\"string\" string=\"%msg%\\n\")\n\
                 ruleset(name=\"siem\") {{\n\
                 \x20 action(type=\"omfile\" file=\"{d}/received.log\" template=\"msgonly\")\n\
                 }}\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{}\" ruleset=\"siem\"\n\
                 \x20     streamDriver.name=\"gtls\" streamDriver.mode=\"1\"\n\
                 \x20     streamDriver.authMode=\"x509/name\" permittedPeer=[{peers}])\n\
                 # rsyslog's own messages (a refused peer, a TLS error) go here.\n\
                 action(type=\"omfile\" file=\"{d}/rsyslog-internal.log\")\n",
                ca.display(),
                cert.display(),
                key.display(),
                addr.port()
            ),
        )?;
        let check = Command::new(rsyslogd)
            .arg("-N1")
            .arg("-f")
            .arg(&conf)
            .output()?;
        if !check.status.success() {
            bail!(
                "rsyslogd refuses {}: {}",
                conf.display(),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        Ok(Rsyslog {
            addr,
            dir: dir.to_path_buf(),
            conf,
            child: None,
        })
    }

    /// Starts `rsyslogd -n -f CONF -i PIDFILE` and waits until it listens.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.stderr"))?;
        let child = Command::new("/usr/sbin/rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting rsyslogd")?;
        self.child = Some(child);
        wait_for_port(self.addr, STARTUP_WAIT)
    }

    /// Stops the rsyslogd this harness started (SIGTERM to its pid, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
    }

    /// Kills the rsyslogd this harness started with SIGKILL (a receiver crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The messages received so far, one per line, exactly as sent.
    pub fn received(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("received.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// What rsyslog said about itself (refused peers, TLS errors): its internal log and stderr.
    pub fn internal_log(&self) -> String {
        ["rsyslog-internal.log", "rsyslogd.stderr"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request a [`HecReceiver`] got.
#[derive(Debug, Clone)]
pub struct HecRequest {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
}

#[derive(Default)]
struct HecState {
    requests: Vec<HecRequest>,
    fail_next: usize,
    /// What the failed answers say: 503 (busy) unless [`HecReceiver::start_failing`] chose.
    fail_status: u16,
}

/// A small Splunk-HEC-like HTTP/1.1 collector on loopback (keep-alive; plain http, or https
/// with a given certificate): records every request, answers `503` to the next `fail_next` ones
/// and `200 {"code":0}` otherwise. Its threads end with the test process.
pub struct HecReceiver {
    pub addr: SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<HecState>>,
}

impl HecReceiver {
    /// Plain http on a free port.
    pub fn start(fail_next: usize) -> anyhow::Result<HecReceiver> {
        Self::start_at("127.0.0.1:0".parse()?, fail_next, None)
    }

    /// Plain http on a free port, answering the next `fail_next` requests with `status`
    /// (403: a refused token) instead of 503.
    pub fn start_failing(fail_next: usize, status: u16) -> anyhow::Result<HecReceiver> {
        let hec = Self::start(fail_next)?;
        if let Ok(mut state) = hec.state.lock() {
            state.fail_status = status;
        }
        Ok(hec)
    }

    /// On `addr`; https presenting `tls` = (certificate PEM file, key PEM file) when given.
    pub fn start_at(
        addr: SocketAddr,
        fail_next: usize,
        tls: Option<(&Path, &Path)>,
    ) -> anyhow::Result<HecReceiver> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let tls = match tls {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
                let key = PrivateKeyDer::from_pem_file(key)?;
                let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key)?;
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(std::sync::Arc::new(config))
            }
            None => None,
        };
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let state = std::sync::Arc::new(std::sync::Mutex::new(HecState {
            requests: Vec::new(),
            fail_next,
            fail_status: 503,
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let state = shared.clone();
                let tls = tls.clone();
                std::thread::spawn(move || {
                    let _ = match tls {
                        Some(config) => rustls::ServerConnection::new(config)
                            .map_err(anyhow::Error::from)
                            .and_then(|server| {
                                serve_hec_connection(rustls::StreamOwned::new(server, conn), &state)
                            }),
                        None => serve_hec_connection(conn, &state),
                    };
                });
            }
        });
        Ok(HecReceiver { addr, state })
    }

    /// From now on every request is accepted (200).
    pub fn accept_all(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.fail_next = 0;
        }
    }

    pub fn requests(&self) -> Vec<HecRequest> {
        self.state
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }
}

fn serve_hec_connection<S: std::io::Read + std::io::Write>(
    conn: S,
    state: &std::sync::Mutex<HecState>,
) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let (mut length, mut authorization) = (0usize, None);
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse()?,
                    "authorization" => authorization = Some(value.trim().to_string()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let status = {
            let mut s = state.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let status = if s.fail_next > 0 {
                s.fail_next -= 1;
                s.fail_status
            } else {
                200
            };
            s.requests.push(HecRequest {
                method,
                path,
                authorization,
                body,
                status,
            });
            status
        };
        let (reason, answer) = match status {
            200 => ("OK", r#"{"text":"Success","code":0}"#),
            403 => ("Forbidden", r#"{"text":"Invalid token","code":4}"#),
            _ => (
                "Service Unavailable",
                r#"{"text":"Server is busy","code":9}"#,
            ),
        };
        let writer = reader.get_mut();
        write!(
            writer,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        )?;
        writer.flush()?;
    }
}

impl Cluster {
    /// Turns on the controller's pre-authentication enrolment port (`[enrolment]`, signing with
    /// the development PKI's CA); `extra` goes into the `[enrolment]` section. Returns the
    /// port's address. Call it before `start_controller`.
    pub fn enable_enrolment(&mut self, extra: &str) -> anyhow::Result<SocketAddr> {
        let addr = free_addr()?;
        let text = std::fs::read_to_string(&self.controller_config)?;
        let text = text.replacen(
            "\n[tls]\n",
            &format!(
                "ca_cert = \"pki/ca.crt\"\nca_key = \"pki/ca.key\"\n\n\
                 [enrolment]\nlisten = \"{addr}\"\n{extra}\n\n[tls]\n"
            ),
            1,
        );
        std::fs::write(&self.controller_config, text)?;
        Ok(addr)
    }

    /// A gRPC channel to the enrolment port at `addr`, as an agent without a certificate
    /// opens it: TLS, the controller's certificate checked against the PKI's CA, none of ours.
    pub async fn anonymous_channel(
        &self,
        addr: SocketAddr,
    ) -> anyhow::Result<tonic::transport::Channel> {
        let ca = std::fs::read(self.dir.join("pki/ca.crt"))?;
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name("loggate-controller");
        Ok(
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
                .tls_config(tls)?
                .connect()
                .await?,
        )
    }
}

impl Cluster {
    /// Points agent `id`'s configuration (from `add_agent`) at files of its own folder
    /// (`tls/agent.key`, `tls/agent.crt`, `tls/ca.crt`, `tls/grant-signing.pub`), none of
    /// which exist yet: what a host has before `loggate-agent enrol` writes them.
    pub fn use_enrolled_files(&self, id: &str) -> anyhow::Result<()> {
        let info = self.agents.get(id).context("unknown agent")?;
        let text = std::fs::read_to_string(&info.config)?
            .replace(&format!("../../pki/agents/{id}.crt"), "tls/agent.crt")
            .replace(&format!("../../pki/agents/{id}.key"), "tls/agent.key")
            .replace("ca = \"../../pki/ca.crt\"", "ca = \"tls/ca.crt\"")
            .replace("../../pki/grant-signing.pub", "tls/grant-signing.pub");
        std::fs::write(&info.config, text)?;
        Ok(())
    }

    /// `loggate-agent enrol` for agent `id` against the enrolment port `enrolment`, not yet run.
    pub fn enrol_cmd(&self, id: &str, enrolment: SocketAddr, token: &str, pin: &str) -> Command {
        let mut cmd = Command::new(self.bins.join("loggate-agent"));
        cmd.args(["enrol", "--controller", &enrolment.to_string()])
            .args(["--token", token, "--ca-pin", pin, "--id", id, "--config"])
            .arg(
                self.agents
                    .get(id)
                    .map(|a| a.config.clone())
                    .unwrap_or_default(),
            )
            .env("LOGGATE_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    }

    /// A join token made by `loggate agent token create <args>` as admin.
    pub fn join_token(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run_cli("admin", &[&["agent", "token", "create"], args].concat())?;
        if !out.status.success() {
            bail!(
                "agent token create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The pin of the PKI's CA, as `loggate pki pin` prints it.
    pub fn ca_pin(&self) -> anyhow::Result<String> {
        let out = Command::new(self.bins.join("loggate"))
            .args(["pki", "pin"])
            .arg(self.dir.join("pki/ca.crt"))
            .output()?;
        if !out.status.success() {
            bail!("pki pin failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}
