//! End-to-end: `loggate agent status HOST` against the real agent over mTLS: what it reports
//! (version, grants held, bypass mode, audit position, a SIEM sink's state, the certificate's
//! end), and that only users in the agent's `status_readers` may ask.

use loggate_tests::{text, Fixture, HecReceiver};
use std::time::{Duration, Instant};

/// A fixture whose agent has followed the controller (`controller.connected`): `agent status`
/// finds the agent's address through the controller, which knows it only from then on.
fn started(agent_extra: &str) -> anyhow::Result<Fixture> {
    let f = Fixture::start_with(agent_extra)?;
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(20), |e| {
            e["event"] == "controller.connected"
        })?;
    Ok(f)
}

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
    let f = started(&format!(
        "status_readers = [\"alice\"]\n\
         [[audit.sinks]]\nname = \"splunk\"\nkind = \"hec\"\n\
         url = \"http://{}/services/collector/event\"\ntoken_file = {:?}\n\
         [limits]\naudit_denials_per_window = 1000\n",
        hec.addr,
        token_file.display().to_string()
    ))?;
    f.grant("bob", "30m")?;
    f.grant("admin", "30m")?;

    // The sink writes its status once a second: ask until it is up and caught up (a poll:
    // the budget of answered asks is raised above the default 60 a minute).
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
    let f = started("status_readers = [\"alice\"]")?;
    let out = status(&f, "bob")?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stderr.contains("status_readers"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    Ok(())
}

#[test]
fn agent_status_is_off_until_status_readers_names_someone() -> anyhow::Result<()> {
    let f = started("")?;
    let out = status(&f, "admin")?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("status_readers"), "{stderr}");
    Ok(())
}

/// Issue 14: each sink's spool lag in bytes (what an outage costs in disk) beside its records,
/// asked while the sink's receiver is down.
#[test]
fn agent_status_reports_a_down_sinks_lag_in_bytes() -> anyhow::Result<()> {
    let nobody = loggate_tests::free_addr()?; // nothing listens there: the receiver is down
    let secrets = tempfile::tempdir()?;
    let token_file = secrets.path().join("hec.token");
    std::fs::write(&token_file, "status-test-token\n")?;
    let f = started(&format!(
        "status_readers = [\"alice\"]\n\
         [[audit.sinks]]\nname = \"siem\"\nkind = \"hec\"\n\
         url = \"http://{nobody}/services/collector/event\"\ntoken_file = {:?}\n\
         [limits]\naudit_denials_per_window = 1000\n",
        token_file.display().to_string()
    ))?;
    // A poll: the budget of answered asks is raised above the default 60 a minute.
    let deadline = Instant::now() + Duration::from_secs(15);
    let sink = loop {
        let out = status(&f, "alice")?;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout)?;
        let sink = report["sinks"][0].clone();
        if sink["state"] == "down" && sink["lag_records"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(report["audit_lag_bytes"], sink["lag_bytes"], "{report}");
            break sink;
        }
        anyhow::ensure!(Instant::now() < deadline, "sink never down: {report}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Nothing was delivered: the bytes behind are the audit file's, at least a few hundred
    // bytes a record (an OCSF record is about a KiB), at most the whole file.
    let lag_records = sink["lag_records"].as_u64().unwrap_or(0);
    let lag_bytes = sink["lag_bytes"].as_u64().unwrap_or(0);
    let file = std::fs::metadata(f.cluster.dir.join("agents/web-1/audit.jsonl"))?.len();
    assert!(lag_bytes >= 200 * lag_records, "{sink}");
    assert!(lag_bytes <= file, "{sink} vs a file of {file} bytes");

    let out = f
        .cluster
        .cli("alice")
        .args(["agent", "status", "web-1"])
        .output()?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("bytes) behind"), "{stdout}");
    Ok(())
}

const ALICE: &str = "spiffe://loggate.local/user/alice";
const BOB: &str = "spiffe://loggate.local/user/bob";

/// Every record of the agent's audit log is an event of the catalogue and valid OCSF.
fn assert_agent_audit_is_valid_ocsf(f: &Fixture) -> anyhow::Result<()> {
    let schema = loggate_ocsf_validate::Schema::official()?;
    for raw in f.cluster.agent_audit_raw("web-1") {
        let problems = loggate_core::audit::ocsf::catalogue_problems(&raw);
        assert!(problems.is_empty(), "{problems:?}: {raw}");
        let report = schema.validate(&raw);
        assert!(report.is_conformant(), "{report}\n{raw}");
    }
    Ok(())
}

/// Observe review, finding 7: who learns whether the bypass audit runs and whether the audit
/// reaches the SIEM is itself audited, answered or refused.
#[test]
fn agent_status_asks_answered_and_refused_each_leave_a_valid_ocsf_record() -> anyhow::Result<()> {
    let f = started("status_readers = [\"alice\"]")?;
    let out = status(&f, "alice")?;
    assert!(out.status.success(), "{}", text(&out).1);
    let out = status(&f, "bob")?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);

    // Both are on disk before the answer leaves: no waiting.
    let records = f.cluster.agent_audit("web-1");
    let read: Vec<_> = records
        .iter()
        .filter(|e| e["event"] == "agent.status_read")
        .collect();
    assert_eq!(read.len(), 1, "{read:?}");
    assert_eq!(read[0]["subject"], ALICE);
    assert!(
        read[0]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{}",
        read[0]
    );
    let denied: Vec<_> = records
        .iter()
        .filter(|e| e["event"] == "agent.status_denied")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["subject"], BOB);
    assert_eq!(denied[0]["reason_code"], "not_a_status_reader");
    assert!(
        denied[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("status_readers")),
        "{}",
        denied[0]
    );
    assert_eq!(denied[0]["suppressed_before"], 0);
    assert_agent_audit_is_valid_ocsf(&f)
}

/// Refused status asks are charged to the same denial budget as refused reads: a flood of them
/// cannot fill the audit, and what is left out is counted in the summary.
#[test]
fn refused_status_asks_share_the_denial_budget_of_refused_reads() -> anyhow::Result<()> {
    let mut f = started(
        "status_readers = [\"alice\"]\n\
         [limits]\naudit_denials_per_window = 2\naudit_denial_window = \"1h\"",
    )?;
    for _ in 0..5 {
        let out = status(&f, "bob")?;
        assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    }
    // A refused read of bob's now is over the same budget.
    let out = f
        .cluster
        .cli("bob")
        .args(["logs", "cat", "--host", "web-1", &f.api_log()])
        .output()?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    let bobs = |event: &str| {
        f.cluster
            .agent_audit("web-1")
            .into_iter()
            .filter(|e| e["event"] == event && e["subject"] == BOB)
            .count()
    };
    assert_eq!(bobs("agent.status_denied"), 2);
    assert_eq!(
        bobs("read.denied"),
        0,
        "the read's record was over the budget"
    );

    // The left-out ones are counted in the summary written before `agent.stopped`.
    f.cluster.stop_agent("web-1");
    let records = f.cluster.agent_audit("web-1");
    let summary = records
        .iter()
        .find(|e| e["reason_code"] == "suppressed" && e["subject"] == BOB)
        .ok_or_else(|| anyhow::anyhow!("no summary of bob's left-out refusals"))?;
    assert_eq!(summary["suppressed_before"], 4, "{summary}");
    assert_agent_audit_is_valid_ocsf(&f)
}

/// `Status` on agent web-1 as `who` (`pki/<who>.crt`, e.g. `agents/web-1`), `times` times on
/// one connection, sent as a raw gRPC call (the CLI would not send an agent's certificate).
fn raw_status_asks(f: &Fixture, who: &str, times: usize) -> anyhow::Result<Vec<tonic::Status>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let files = f.cluster.tls_files_of(who);
        let channel = files
            .endpoint(
                &f.cluster.agent_addr("web-1"),
                loggate_core::tls::Server::Agent("web-1"),
            )?
            .connect()
            .await?;
        let mut client = loggate_proto::agent_client::AgentClient::new(channel);
        let mut refusals = Vec::new();
        for _ in 0..times {
            match client.status(loggate_proto::AgentStatusRequest {}).await {
                Ok(answer) => anyhow::bail!("{who} was answered: {:?}", answer.get_ref()),
                Err(refused) => refusals.push(refused),
            }
        }
        Ok(refusals)
    })
}

/// Review O2: an agent's certificate asking for the status (what someone planning to read
/// around the gate wants to know) was refused by the identity filter before the handler, with
/// no record. It is now refused by the handler and audited as `agent.status_denied`
/// (`identity_refused`, no subject, the peer), within the denial budget of its address prefix.
#[test]
fn an_agent_certificate_asking_for_the_status_is_refused_and_audited_within_the_budget(
) -> anyhow::Result<()> {
    let mut f = started(
        "status_readers = [\"alice\"]\n\
         [limits]\naudit_denials_per_window = 2\naudit_denial_window = \"1h\"",
    )?;
    let refusals = raw_status_asks(&f, "agents/web-1", 3)?;
    for refused in &refusals {
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(!refused.message().is_empty(), "{refused:?}");
    }
    let denied: Vec<_> = f
        .cluster
        .agent_audit("web-1")
        .into_iter()
        .filter(|e| e["event"] == "agent.status_denied")
        .collect();
    assert_eq!(
        denied.len(),
        2,
        "two written, the third over the budget: {denied:?}"
    );
    for d in &denied {
        assert_eq!(d["reason_code"], "identity_refused", "{d}");
        assert!(d["subject"].is_null(), "{d}");
        assert!(
            d["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{d}"
        );
    }
    // The third is counted in the summary written before `agent.stopped`.
    f.cluster.stop_agent("web-1");
    let records = f.cluster.agent_audit("web-1");
    assert!(
        records
            .iter()
            .any(|e| e["reason_code"] == "suppressed" && e["suppressed_before"] == 1),
        "no summary of the left-out refusal"
    );
    assert_agent_audit_is_valid_ocsf(&f)
}

/// Review O3: every answered ask is a synced record, and a status reader asking in a loop
/// wrote one per ask (with the SIEM down, enough to fill `audit_max_bytes` and get everyone's
/// reads refused). Answers are now budgeted per reader: over the budget an ask is refused,
/// never answered unrecorded, and the refusals go through the denial budget.
#[test]
fn a_status_reader_asking_in_a_loop_is_answered_and_recorded_only_within_its_budget(
) -> anyhow::Result<()> {
    let mut f = started(
        "status_readers = [\"alice\"]\n\
         [limits]\naudit_denials_per_window = 2\naudit_denial_window = \"1h\"",
    )?;
    let mut answered = 0;
    for _ in 0..6 {
        let out = status(&f, "alice")?;
        let (_, stderr) = text(&out);
        if out.status.success() {
            answered += 1;
        } else {
            assert!(
                stderr.contains("ask less often"),
                "a refused ask says why: {stderr}"
            );
        }
    }
    let alices = |event: &str| -> Vec<serde_json::Value> {
        f.cluster
            .agent_audit("web-1")
            .into_iter()
            .filter(|e| e["event"] == event && e["subject"] == ALICE)
            .collect()
    };
    assert_eq!(answered, 2, "two answers in the window, the rest refused");
    assert_eq!(
        alices("agent.status_read").len(),
        2,
        "one record per answer"
    );
    let denied = alices("agent.status_denied");
    assert_eq!(
        denied.len(),
        2,
        "refusals under the denial budget: {denied:?}"
    );
    assert!(
        denied.iter().all(|d| d["reason_code"] == "too_many_asks"),
        "{denied:?}"
    );
    // The other two refusals are counted in the summary written before `agent.stopped`.
    f.cluster.stop_agent("web-1");
    let records = f.cluster.agent_audit("web-1");
    let summary = records
        .iter()
        .find(|e| e["reason_code"] == "suppressed" && e["subject"] == ALICE)
        .ok_or_else(|| anyhow::anyhow!("no summary of alice's left-out refusals"))?;
    assert_eq!(summary["suppressed_before"], 2, "{summary}");
    assert_agent_audit_is_valid_ocsf(&f)
}
