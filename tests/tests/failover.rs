//! End-to-end: an agent given several controller addresses (`controllers = [...]`, the replicas
//! of one controller) uses whichever answers and moves to another when its controller dies,
//! missing no grant or revocation (issue 12). Two controllers sharing nothing are not replicas,
//! so the replicas here are ONE controller reachable at two addresses in turn: a dead address
//! beside a live one, and a controller killed on one address and started again on the other.

use loggate_tests::{free_addr, text, Fixture};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `loggate-agent check-config FILE`.
fn check_config(f: &Fixture, file: &std::path::Path) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(f.cluster.bins.join("loggate-agent"))
        .arg("check-config")
        .arg(file)
        .env_remove("LOGGATE_LOG")
        .output()?)
}

#[test]
fn an_agent_listing_a_dead_address_beside_the_live_one_still_receives_grants() -> anyhow::Result<()>
{
    let mut f = Fixture::start()?;
    f.cluster.stop_agent("web-1");
    // Nothing listens on `dead` (bound then released).
    let (dead, live) = (free_addr()?, f.cluster.controller_addr);
    f.cluster
        .set_agent_controllers("web-1", &[dead.to_string(), live.to_string()])?;
    f.cluster.start_agent("web-1")?;
    // The agent starts at a random one of the two; either way the grant arrives.
    f.grant("alice", "30m")?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert!(out.status.success(), "{}", text(&out).1);

    // The controller dies, and comes back: the agent reaches it again through the list, its
    // dead address included in the rotation.
    f.cluster.kill_controller();
    std::thread::sleep(Duration::from_millis(300));
    f.cluster.start_controller()?;
    f.grant("bob", "30m")?;
    let log = std::fs::read_to_string(f.cluster.dir.join("agents/web-1/stderr.log"))?;
    assert!(
        log.contains("grant stream to the controller")
            && log.contains("moving to the next controller address"),
        "the agent did not report the lost stream and its move:\n{log}"
    );
    Ok(())
}

#[test]
fn the_agent_follows_its_controller_to_the_other_address_and_misses_nothing() -> anyhow::Result<()>
{
    let mut f = Fixture::start()?;
    f.cluster.stop_agent("web-1");
    let (first, second) = (f.cluster.controller_addr, free_addr()?);
    f.cluster
        .set_agent_controllers("web-1", &[first.to_string(), second.to_string()])?;
    f.cluster.start_agent("web-1")?;
    let old = f.grant("alice", "30m")?;
    f.grant("bob", "30m")?;

    // The controller dies on its first address and comes back on the second only.
    f.cluster.kill_controller();
    f.cluster.move_controller(second)?;
    f.cluster.start_controller()?;
    // Meanwhile (the agent is reconnecting, or has just reconnected): a grant and a revocation.
    let new = f.cluster.issue_grant("admin", "web-1", &f.glob(), "30m")?;
    let out = f
        .cluster
        .run_cli("admin", &["grant", "revoke", &old, "--reason", "T-12"])?;
    assert!(out.status.success(), "{}", text(&out).1);

    f.cluster.wait_for_grant("web-1", &new)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = f.logs("alice", &["cat", &f.api_log()])?;
        if out.status.code() == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revoked grant still serves 15 s after its revocation: {:?} {}",
            out.status,
            text(&out).1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = f.logs("admin", &["cat", &f.api_log()])?;
    assert!(out.status.success(), "the new grant: {}", text(&out).1);
    let out = f.logs("bob", &["cat", &f.api_log()])?;
    assert!(out.status.success(), "the kept grant: {}", text(&out).1);

    // The agent's own word: it left the first address for the second, and the revocation is
    // in its audit stream as a revocation (one database: a drop would hide a lost revocation).
    let log = std::fs::read_to_string(f.cluster.dir.join("agents/web-1/stderr.log"))?;
    assert!(
        log.lines()
            .any(|l| l.contains("moving to the next controller address")
                && l.contains(&format!("from={first}"))
                && l.contains(&format!("to={second}"))),
        "no move from {first} to {second} in the agent's log:\n{log}"
    );
    let audit = f.cluster.agent_audit("web-1");
    let revoked = audit
        .iter()
        .any(|e| e["event"] == "grant.revoked" && e["grant_id"] == old.as_str());
    assert!(revoked, "the agent never recorded the revocation of {old}");
    let dropped = audit
        .iter()
        .any(|e| e["event"] == "grant.dropped" && e["grant_id"] == old.as_str());
    assert!(!dropped, "{old} was dropped, not revoked");

    // Which controller address it followed, in order, and the resync the move caused.
    let connected: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|e| e["event"] == "controller.connected")
        .collect();
    let on_first = connected
        .iter()
        .rposition(|e| e["address"] == first.to_string().as_str())
        .unwrap_or_else(|| panic!("no controller.connected to {first}: {connected:?}"));
    let on_second = connected
        .iter()
        .rposition(|e| e["address"] == second.to_string().as_str())
        .unwrap_or_else(|| panic!("no controller.connected to {second}: {connected:?}"));
    assert!(on_first < on_second, "{connected:?}");
    let (from, to) = (
        &connected[on_first]["epoch"],
        &connected[on_second]["epoch"],
    );
    assert_ne!(from, to, "a restarted controller has a new epoch");
    assert_eq!(
        connected[on_second]["after_epoch"], *from,
        "the agent resumed from the first address's epoch"
    );
    let resynced = audit
        .iter()
        .find(|e| e["event"] == "controller.resynced" && e["to_epoch"] == *to)
        .unwrap_or_else(|| panic!("no controller.resynced into {to}"));
    assert_eq!(resynced["from_epoch"], *from, "{resynced}");
    Ok(())
}

/// A second controller started beside the first, with the same CA and grant key but its own
/// database: an independent controller, not a replica (issue 12, finding 1).
struct OtherController {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    admin_config: std::path::PathBuf,
}

impl OtherController {
    fn start(f: &Fixture) -> anyhow::Result<OtherController> {
        let addr = free_addr()?;
        let dir = &f.cluster.dir;
        std::fs::create_dir_all(dir.join("controller-b"))?;
        let config = std::fs::read_to_string(&f.cluster.controller_config)?
            .replacen(
                &format!("listen = \"{}\"", f.cluster.controller_addr),
                &format!("listen = \"{addr}\""),
                1,
            )
            .replacen("\"controller/", "\"controller-b/", 2);
        assert!(
            config.contains("controller-b/state.db") && config.contains("controller-b/audit.jsonl")
        );
        let config_path = dir.join("controller-b.toml");
        std::fs::write(&config_path, config)?;
        // Beside the other client configurations: their paths are relative to their folder.
        let admin_config = dir.join("pki/clients/admin-of-b.toml");
        std::fs::write(
            &admin_config,
            std::fs::read_to_string(f.cluster.client_config("admin"))?.replacen(
                &format!("controller = \"{}\"", f.cluster.controller_addr),
                &format!("controller = \"{addr}\""),
                1,
            ),
        )?;
        let log = std::fs::File::create(dir.join("controller-b/stderr.log"))?;
        let child = Command::new(f.cluster.bins.join("loggate"))
            .args(["controller", "serve", "--config"])
            .arg(&config_path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let other = OtherController {
            child,
            addr,
            admin_config,
        };
        loggate_tests::wait_for_port(addr, Duration::from_secs(20))?;
        Ok(other)
    }

    fn cli(&self, f: &Fixture, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(Command::new(f.cluster.bins.join("loggate"))
            .env("LOGGATE_CONFIG", &self.admin_config)
            .args(args)
            .output()?)
    }
}

impl Drop for OtherController {
    fn drop(&mut self) {
        loggate_tests::terminate(&mut self.child);
    }
}

#[test]
fn an_independent_controller_sharing_the_ca_and_grant_key_is_refused() -> anyhow::Result<()> {
    let mut f = Fixture::start()?;
    let a = f.cluster.controller_addr;
    // The agent knows A (and pins A's cluster) before B exists.
    let kept = f.grant("alice", "30m")?;
    let b = OtherController::start(&f)?;
    let out = b.cli(
        &f,
        &[
            "grant",
            "issue",
            "--subject",
            "bob",
            "--host",
            "web-1",
            "--path",
            &f.glob(),
            "--ttl",
            "30m",
            "--reason",
            "T-12",
            "--redaction",
            "raw",
        ],
    )?;
    assert!(out.status.success(), "a grant on B: {}", text(&out).1);

    f.cluster.stop_agent("web-1");
    f.cluster
        .set_agent_controllers("web-1", &[a.to_string(), b.addr.to_string()])?;
    // With A down, B is the only address that answers: the agent must refuse it.
    f.cluster.kill_controller();
    f.cluster.start_agent("web-1")?;
    let refused = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(30), |e| {
            e["event"] == "controller.refused" && e["address"] == b.addr.to_string().as_str()
        })?;
    assert_eq!(refused["reason_code"], "cluster_mismatch", "{refused}");
    assert_ne!(refused["got_cluster_id"], "", "{refused}");
    assert_ne!(
        refused["got_cluster_id"], refused["expected_cluster_id"],
        "{refused}"
    );
    // Each refusal of B ends a round (A refused too): the pause doubles, 0.25, 0.5, 1, 2, 4,
    // 8 s (full jitter), instead of starting at 0.25 s again after every answered stream of the
    // other cluster (second review of herd5, M2: tens of thousands of handshakes a second from
    // a fleet after a re-pin). In 8 s that is a handful of attempts; with the reset, dozens.
    let refusals_of_b = |f: &Fixture| {
        f.cluster
            .agent_audit("web-1")
            .iter()
            .filter(|e| {
                e["event"] == "controller.refused" && e["address"] == b.addr.to_string().as_str()
            })
            .count()
    };
    let before = refusals_of_b(&f);
    std::thread::sleep(Duration::from_secs(8));
    let in_8s = refusals_of_b(&f) - before;
    assert!(
        in_8s < 12,
        "{in_8s} refusals of the other cluster's controller in 8 s: the pause did not grow"
    );

    // A comes back: the agent follows it, and a revocation made on A takes effect.
    f.cluster.start_controller()?;
    let out = f
        .cluster
        .run_cli("admin", &["grant", "revoke", &kept, "--reason", "T-12"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    // Every round of refusals (A down, B another cluster's) doubled the agent's pause, up to
    // the fleet's 30 s cap: it is back on A after its current pause at most.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let out = f.logs("alice", &["cat", &f.api_log()])?;
        if out.status.code() == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the grant revoked on A still serves 45 s later: {:?} {}",
            out.status,
            text(&out).1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing was ever taken from B: B's grant never arrived, and it does not serve.
    let out = f.logs("bob", &["cat", &f.api_log()])?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "B's grant serves: {}",
        text(&out).1
    );
    let audit = f.cluster.agent_audit("web-1");
    let from_b = audit
        .iter()
        .filter(|e| e["event"] == "grant.received" && e["grant_id"] != kept.as_str())
        .count();
    assert_eq!(from_b, 0, "the agent took a grant from B");
    let dropped = audit
        .iter()
        .any(|e| e["event"] == "grant.dropped" && e["grant_id"] == kept.as_str());
    assert!(!dropped, "following B dropped A's grant");
    assert!(
        !audit
            .iter()
            .any(|e| e["event"] == "controller.connected"
                && e["address"] == b.addr.to_string().as_str()),
        "the agent followed B"
    );
    Ok(())
}

#[test]
fn controller_and_controllers_are_one_choice_checked_at_load() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let config = f.cluster.dir.join("agents/web-1/agent.toml");
    let text_of = std::fs::read_to_string(&config)?;
    let addr = f.cluster.controller_addr;
    let variant = |name: &str, replacement: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = f.cluster.dir.join("agents/web-1").join(name);
        std::fs::write(
            &path,
            text_of.replacen(&format!("controller = \"{addr}\""), replacement, 1),
        )?;
        Ok(path)
    };

    let list = variant(
        "list.toml",
        &format!("controllers = [\"{addr}\", \"ctl-b.example:7443\"]"),
    )?;
    let out = check_config(&f, &list)?;
    assert!(out.status.success(), "{}", text(&out).1);
    // Valid before `controllers` existed, so valid still: `_` in a host name (container service
    // names) and an IPv6 zone id.
    for (name, replacement) in [
        (
            "underscore.toml",
            "controller = \"loggate_ctl:7400\"".to_string(),
        ),
        (
            "zone.toml",
            "controllers = [\"[fe80::1%eth0]:7400\", \"ctl_b:7400\"]".to_string(),
        ),
    ] {
        let out = check_config(&f, &variant(name, &replacement)?)?;
        assert!(out.status.success(), "{name}: {}", text(&out).1);
    }

    for (name, replacement, says) in [
        (
            "both.toml",
            format!("controller = \"{addr}\"\ncontrollers = [\"{addr}\"]"),
            "controller and controllers are both given",
        ),
        (
            "neither.toml",
            String::new(),
            "name the controller's address",
        ),
        (
            "empty.toml",
            "controllers = []".to_string(),
            "controllers: the list is empty",
        ),
        (
            "twice.toml",
            format!("controllers = [\"{addr}\", \"{addr}\"]"),
            "is listed twice",
        ),
        (
            "scheme.toml",
            format!("controllers = [\"https://{addr}\"]"),
            "is not host:port",
        ),
    ] {
        let out = check_config(&f, &variant(name, &replacement)?)?;
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(
            stdout.contains(says) || stderr.contains(says),
            "{name}: {stdout}{stderr}"
        );
    }
    Ok(())
}

#[test]
fn enrolment_tries_each_listed_address_until_one_answers() -> anyhow::Result<()> {
    let logs = tempfile::tempdir()?;
    let mut cluster = loggate_tests::Cluster::new(None)?;
    let live = cluster.enable_enrolment("")?;
    cluster.start_controller()?;
    cluster.add_agent("web-7", &[&std::fs::canonicalize(logs.path())?], "")?;
    cluster.use_enrolled_files("web-7")?;
    let pin = cluster.ca_pin()?;
    let (dead_a, dead_b) = (free_addr()?, free_addr()?);

    // Only dead addresses: each is tried once, and the error names them all.
    let out = cluster
        .enrol_cmd("web-7", dead_a, "lgj_unused", &pin)
        .args(["--controller", &dead_b.to_string()])
        .output()?;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot connect to the controller's enrolment port")
            && stderr.contains(&dead_a.to_string())
            && stderr.contains(&dead_b.to_string()),
        "{stderr}"
    );
    // An address that is not host:port is refused before anything is tried.
    let out = cluster
        .enrol_cmd("web-7", live, "lgj_unused", &pin)
        .args(["--controller", "https://ctl:7401"])
        .output()?;
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success()
            && stderr.contains("--controller: \"https://ctl:7401\" is not host:port"),
        "{stderr}"
    );

    // A list given twice over the command line is checked as the configuration's is.
    let out = cluster
        .enrol_cmd("web-7", live, "lgj_unused", &pin)
        .args(["--controller", &live.to_string()])
        .output()?;
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success()
            && stderr.contains(&format!("--controller: \"{live}\" is listed twice")),
        "{stderr}"
    );

    // A dead address beside the live one: the enrolment goes through the live one.
    let token = cluster.join_token(&["--ttl", "1h", "--uses", "1"])?;
    let out = cluster
        .enrol_cmd("web-7", dead_a, &token, &pin)
        .args(["--controller", &live.to_string()])
        .output()?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(
        cluster.agents["web-7"].dir.join("state/enrolment.json"),
    )?)?;
    assert_eq!(record["controller"], live.to_string(), "{record}");
    cluster.start_agent("web-7")?;
    Ok(())
}
