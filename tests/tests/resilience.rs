//! End-to-end: grants are self-contained. The agent keeps them across its own restart, keeps
//! enforcing and expiring them while the controller is down, and catches up when it returns.

use loggate_tests::{text, Fixture};
use std::time::Duration;

#[test]
fn agent_restart_keeps_grants() -> anyhow::Result<()> {
    let mut f = Fixture::start()?;
    f.grant("alice", "30m")?;
    // Without a controller, the grant can only come from the agent's own store.
    f.cluster.stop_controller();
    f.cluster.kill_agent("web-1");
    f.cluster.start_agent("web-1")?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert!(out.status.success(), "{}", text(&out).1);
    let started = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "agent.started" && e["grants_loaded"] == 1
        })?;
    assert_eq!(started["grants_loaded"], 1);
    Ok(())
}

#[test]
fn controller_down_agent_still_serves_and_still_expires() -> anyhow::Result<()> {
    let mut f = Fixture::start()?;
    let id = f.grant("alice", "3s")?;
    f.cluster.stop_controller();
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert!(out.status.success(), "{}", text(&out).1);
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(6), |e| {
            e["event"] == "grant.expired" && e["grant_id"] == id.as_str()
        })?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out).1.contains("expired"), "{}", text(&out).1);
    Ok(())
}

#[test]
fn controller_restart_agent_resumes_and_receives_grants_issued_meanwhile() -> anyhow::Result<()> {
    let mut f = Fixture::start()?;
    let first = f.grant("alice", "30m")?;
    f.cluster.stop_controller();
    std::thread::sleep(Duration::from_millis(500));
    f.cluster.start_controller()?;
    let second = f.grant("bob", "30m")?;
    let out = f.logs("bob", &["cat", &f.api_log()])?;
    assert!(out.status.success(), "{}", text(&out).1);
    // The restart began a new epoch, so the agent resynchronised and was sent the first grant
    // again: it already held it with the same token, so it was received (and audited) once.
    let received: Vec<_> = f
        .cluster
        .agent_audit("web-1")
        .into_iter()
        .filter(|e| e["event"] == "grant.received")
        .map(|e| e["grant_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(received, vec![first, second]);
    Ok(())
}

#[test]
fn agent_down_while_grants_are_issued_catches_up_on_start() -> anyhow::Result<()> {
    let mut f = Fixture::start()?;
    f.cluster.stop_agent("web-1");
    let id = f.cluster.issue_grant("alice", "web-1", &f.glob(), "30m")?;
    f.cluster.start_agent("web-1")?;
    f.cluster.wait_for_grant("web-1", &id)?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert!(out.status.success(), "{}", text(&out).1);
    Ok(())
}

#[test]
fn audit_verify_accepts_the_agents_file_and_names_the_first_tampered_line() -> anyhow::Result<()> {
    let mut f = Fixture::start()?;
    f.grant("alice", "30m")?;
    f.logs("alice", &["cat", &f.api_log()])?;
    f.logs("bob", &["cat", &f.api_log()])?;
    f.cluster.stop_agent("web-1");
    let audit = f.cluster.agents["web-1"].dir.join("audit.jsonl");
    let verify = |path: &std::path::Path| {
        f.cluster.run_cli(
            "alice",
            &["audit", "verify", path.to_str().unwrap_or_default()],
        )
    };
    let out = verify(&audit)?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.starts_with("ok: "), "{}", text(&out).0);
    // Turn bob's denial into an allowed read.
    let original = std::fs::read_to_string(&audit)?;
    let line = original
        .lines()
        .position(|l| l.contains("\"read.denied\""))
        .unwrap()
        + 1;
    let tampered = original.replacen("\"read.denied\"", "\"read.allowed\"", 1);
    let copy = f.cluster.dir.join("tampered.jsonl");
    std::fs::write(&copy, tampered)?;
    let out = verify(&copy)?;
    assert_eq!(out.status.code(), Some(5));
    assert!(
        text(&out).1.contains(&format!("line {}:", line + 1)),
        "{}",
        text(&out).1
    );
    Ok(())
}
