//! End-to-end: `loggate agent status HOST` against the real agent over mTLS: what it reports
//! (version, grants held, bypass mode, audit position, a SIEM sink's state, the certificate's
//! end), and that only users in the agent's `status_readers` may ask.

use loggate_tests::{text, Fixture, HecReceiver};
use std::time::{Duration, Instant};

/// `loggate agent status web-1 --output json` as `user`.
fn status(f: &Fixture, user: &str) -> anyhow::Result<std::process::Output> {
    Ok(f.cluster
        .cli(user)
        .args(["agent", "status", "web-1", "--output", "json"])
        .output()?)
}

#[test]
fn agent_status_reports_version_grants_bypass_audit_sink_and_certificate() -> anyhow::Result<()> {
    let hec = HecReceiver::start(0)?;
    let secrets = tempfile::tempdir()?;
    let token_file = secrets.path().join("hec.token");
    std::fs::write(&token_file, "status-test-token\n")?;
    let f = Fixture::start_with(&format!(
        "status_readers = [\"alice\"]\n\
         [[audit.sinks]]\nname = \"splunk\"\nkind = \"hec\"\n\
         url = \"http://{}/services/collector/event\"\ntoken_file = {:?}\n",
        hec.addr,
        token_file.display().to_string()
    ))?;
    f.grant("bob", "30m")?;
    f.grant("admin", "30m")?;

    // The sink writes its status once a second: ask until it is up and caught up.
    let deadline = Instant::now() + Duration::from_secs(15);
    let report = loop {
        let out = status(&f, "alice")?;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout)?;
        if report["sinks"][0]["state"] == "up" && report["audit_lag_records"] == 0 {
            break report;
        }
        anyhow::ensure!(Instant::now() < deadline, "sink never up: {report}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(report["agent_id"], "web-1");
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(report["grants_held"], 2);
    assert_eq!(report["live_streams"], 0);
    assert_eq!(report["sinks"][0]["name"], "splunk");
    // The bypass mode is the one the agent started with (`agent.started`), or `unavailable`
    // when it was asked for and could not start.
    let started = f
        .cluster
        .agent_audit("web-1")
        .into_iter()
        .find(|e| e["event"] == "agent.started")
        .ok_or_else(|| anyhow::anyhow!("no agent.started"))?;
    let mode = report["bypass_mode"].as_str().unwrap_or_default();
    assert!(
        mode == started["bypass_mode"] || mode == "unavailable",
        "{mode} vs {started}"
    );
    // Every record is on disk before it is reported: at least the started and grant records.
    let written = f.cluster.agent_audit("web-1").len() as u64;
    let seq = report["audit_seq"].as_u64().unwrap_or(0);
    assert!(seq >= 3 && seq <= written + 10, "{seq} vs {written}");
    // `loggate pki init` certificates last long; the agent reads the end from its own file.
    assert!(report["certificate_seconds_left"].as_i64().unwrap_or(0) > 86_400);

    let out = f
        .cluster
        .cli("alice")
        .args(["agent", "status", "web-1"])
        .output()?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for fact in [
        "agent web-1 (loggate-agent ",
        "grants held:  2",
        "sink splunk: up",
        "certificate:  ends ",
    ] {
        assert!(stdout.contains(fact), "{fact:?} missing:\n{stdout}");
    }
    // Nothing of whom the grants are for.
    assert!(
        !stdout.contains("bob") && !stdout.contains("admin"),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn agent_status_is_refused_to_users_not_in_status_readers() -> anyhow::Result<()> {
    let f = Fixture::start_with("status_readers = [\"alice\"]")?;
    let out = status(&f, "bob")?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stderr.contains("status_readers"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    Ok(())
}

#[test]
fn agent_status_is_off_until_status_readers_names_someone() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let out = status(&f, "admin")?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("status_readers"), "{stderr}");
    Ok(())
}
