//! End-to-end: `--log-format json` of both daemons. Every line either daemon writes on stderr
//! parses as one JSON object, and none carries what loggate guards: a served file's content, a
//! grep pattern, a grant token.

use loggate_tests::{terminate, text, wait_for_port, Cluster};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Kills the daemon it holds when dropped (a failed assertion must not leave it running).
struct Daemon(Option<Child>);

impl Daemon {
    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            terminate(&mut c);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `program args…` with `--log-format json`, debug logs of loggate's own crates, and
/// stderr into `log`.
fn start(bins: &Path, program: &str, args: &[&str], log: &Path) -> anyhow::Result<Daemon> {
    let file = std::fs::File::create(log)?;
    let child = Command::new(bins.join(program))
        .args(args)
        .args(["--log-format", "json"])
        .env(
            "LOGGATE_LOG",
            "info,loggate=debug,loggate_agent=debug,loggate_core=debug",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()?;
    Ok(Daemon(Some(child)))
}

#[test]
fn json_logs_are_one_object_per_line_and_carry_no_content_pattern_or_token() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(None)?;
    let logs = cluster.dir.join("logs/app");
    std::fs::create_dir_all(&logs)?;
    let secret = logs.join("secret.log");
    std::fs::write(
        &secret,
        "INFO planted-line-content password=hunter2hunter2\nINFO mail someone@example.com\n",
    )?;
    let secret = secret.display().to_string();
    cluster.add_agent("web-1", &[&logs], "")?;
    let agent = cluster.agents["web-1"].clone_paths();
    let controller_config = cluster.controller_config.display().to_string();
    let controller_log = cluster.dir.join("controller-json.log");
    let agent_log = cluster.dir.join("agent-json.log");
    let mut controller = start(
        &cluster.bins,
        "loggate",
        &["controller", "serve", "--config", &controller_config],
        &controller_log,
    )?;
    wait_for_port(cluster.controller_addr, Duration::from_secs(20))?;
    let mut agent_daemon = start(
        &cluster.bins,
        "loggate-agent",
        &["run", "--config", &agent.0],
        &agent_log,
    )?;
    wait_for_port(agent.1, Duration::from_secs(20))?;

    let glob = format!("{}/*.log", logs.display());
    let grant = cluster.issue_grant_with_profile("alice", "web-1", &glob, "30m", "default")?;
    // Installed: the agent's debug line says so (in JSON, so not the harness's text match).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&agent_log)?
        .lines()
        .any(|l| l.contains("grant installed") && l.contains(&grant))
    {
        anyhow::ensure!(std::time::Instant::now() < deadline, "grant not installed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = cluster
        .logs_cmd("alice", "web-1", &["cat", &secret])
        .output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(!text(&out).0.contains("hunter2"));
    let grep = cluster
        .logs_cmd("alice", "web-1", &["grep", "hunter2hunter2", &secret])
        .output()?;
    assert!(grep.status.success(), "{}", text(&grep).1);
    let denied = cluster
        .logs_cmd("bob", "web-1", &["cat", &secret])
        .output()?;
    assert!(!denied.status.success());
    // The agent's audit has the reads; then both daemons stop and write their last lines.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cluster
        .agent_audit("web-1")
        .iter()
        .filter(|e| e["event"] == "read.finished")
        .count()
        < 2
    {
        anyhow::ensure!(std::time::Instant::now() < deadline, "no read.finished");
        std::thread::sleep(Duration::from_millis(50));
    }
    agent_daemon.stop();
    controller.stop();

    for (who, log) in [("controller", &controller_log), ("agent", &agent_log)] {
        let written = std::fs::read_to_string(log)?;
        let lines: Vec<&str> = written.lines().collect();
        assert!(
            lines.iter().any(|l| l.contains("listening on")),
            "{who}: {written}"
        );
        assert!(
            lines.iter().any(|l| l.contains("stopped")),
            "{who}: {written}"
        );
        for line in &lines {
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("{who}: not JSON ({e}): {line}"))?;
            assert!(value["level"].is_string(), "{who}: {line}");
            assert!(value["fields"]["message"].is_string(), "{who}: {line}");
            for guarded in [
                "hunter2",
                "planted-line-content",
                "someone@example.com",
                "v4.public.",
            ] {
                assert!(!line.contains(guarded), "{who} logged {guarded}: {line}");
            }
        }
    }
    Ok(())
}

/// `(config path, listen address)` of an agent, borrowed out of the cluster.
trait AgentPaths {
    fn clone_paths(&self) -> (String, std::net::SocketAddr);
}

impl AgentPaths for loggate_tests::AgentInfo {
    fn clone_paths(&self) -> (String, std::net::SocketAddr) {
        (self.config.display().to_string(), self.addr)
    }
}

#[test]
fn an_unknown_log_format_is_a_usage_error() -> anyhow::Result<()> {
    let bins = loggate_tests::bin_dir()?;
    let out = Command::new(bins.join("loggate-agent"))
        .args(["run", "--config", "/nonexistent", "--log-format", "xml"])
        .output()?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
    assert!(text(&out).1.contains("json"), "{}", text(&out).1);
    Ok(())
}

#[test]
fn json_announce_lines_survive_a_log_filter_that_leaves_them_out() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(None)?;
    let logs = cluster.dir.join("logs/app");
    std::fs::create_dir_all(&logs)?;
    cluster.add_agent("web-1", &[&logs], "")?;
    let agent = cluster.agents["web-1"].clone_paths();
    let log = cluster.dir.join("agent-narrow.log");
    let file = std::fs::File::create(&log)?;
    // A filter naming one module the announce lines are not from.
    let child = Command::new(cluster.bins.join("loggate-agent"))
        .args(["run", "--config", &agent.0, "--log-format", "json"])
        .env("LOGGATE_LOG", "loggate_agent::bypass=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()?;
    let mut daemon = Daemon(Some(child));
    wait_for_port(agent.1, Duration::from_secs(20))?;
    daemon.stop();
    let text = std::fs::read_to_string(&log)?;
    let messages: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).map_err(|e| anyhow::anyhow!("not JSON ({e}): {l:?}"))?;
            Ok(v["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string())
        })
        .collect::<anyhow::Result<_>>()?;
    assert!(
        messages.iter().any(|m| m.contains("listening on")),
        "no listening line in:\n{text}"
    );
    assert!(
        messages.iter().any(|m| m.contains("stopped")),
        "no stopped line in:\n{text}"
    );
    Ok(())
}
