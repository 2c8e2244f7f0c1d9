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
    // in its audit stream (as a revocation, or as a grant the controller no longer holds).
    let log = std::fs::read_to_string(f.cluster.dir.join("agents/web-1/stderr.log"))?;
    assert!(
        log.lines()
            .any(|l| l.contains("moving to the next controller address")
                && l.contains(&format!("from={first}"))
                && l.contains(&format!("to={second}"))),
        "no move from {first} to {second} in the agent's log:\n{log}"
    );
    let gone = f.cluster.agent_audit("web-1").into_iter().find(|e| {
        (e["event"] == "grant.revoked" || e["event"] == "grant.dropped")
            && e["grant_id"] == old.as_str()
    });
    assert!(gone.is_some(), "the agent never recorded the end of {old}");
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
