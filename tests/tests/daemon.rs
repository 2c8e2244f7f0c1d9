//! End-to-end: the controller stands on the same daemon skeleton as the agent
//! (`loggate_core::daemon`): its audit file rotates under the same configuration keys as the
//! agent's, its checkpoint policy comes from its `[checkpoints]`, and the rotated set verifies
//! as one chain with `loggate audit verify`. Retention deletes only what a reader (a sink)
//! has shipped: with no sink, every rotated file is kept. A full budget still lets a
//! revocation through; a flood of refused checkpoint reports is budgeted; the agent opens its
//! audit before its grant store, so no dropped grant goes unrecorded.

use loggate_core::audit::{event_name, record_field, rotated_files};
use loggate_proto as pb;
use loggate_tests::{free_addr, read_audit_file, text, Cluster, HecReceiver};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Small files (rotated every 4 KB, two kept; `top` adds top-level keys), a checkpoint every
/// 5 records or second, and `tables` (a sink) appended.
fn configure_small_audit_files(cluster: &Cluster, top: &str, tables: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&cluster.controller_config)?;
    // Top-level keys before the file's first table, `[checkpoints]` as a table of its own.
    std::fs::write(
        &cluster.controller_config,
        format!(
            "audit_rotate_bytes = 4000\naudit_keep_files = 2\n{top}\n{text}\n\
             [checkpoints]\nevery = 5\ninterval = \"1s\"\n{tables}\n"
        ),
    )?;
    Ok(())
}

/// A `[[audit.sinks]]` table sending to an HEC collector at `addr` (its token file in `dir`).
fn hec_sink(addr: std::net::SocketAddr, dir: &Path) -> anyhow::Result<String> {
    let token_file = dir.join("hec.token");
    std::fs::write(&token_file, "daemon-test-token\n")?;
    Ok(format!(
        "\n[[audit.sinks]]\nname = \"splunk\"\nkind = \"hec\"\n\
         url = \"http://{addr}/services/collector/event\"\ntoken_file = {:?}\n",
        token_file.display().to_string()
    ))
}

/// The highest `seq` among the records an HEC collector accepted.
fn highest_delivered_seq(hec: &HecReceiver) -> u64 {
    hec.requests()
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(|r| {
            String::from_utf8_lossy(&r.body)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|e| {
                    let record = e.get("event")?;
                    record_field(record, "seq")?.as_u64()
                })
                .collect::<Vec<_>>()
        })
        .max()
        .unwrap_or(0)
}

/// Whether the current file starts with a rotation that deleted older rotated files
/// (retention at work: more rotations than files kept).
fn rotation_deleted_files(current: &Path) -> bool {
    read_audit_file(current).first().is_some_and(|r| {
        event_name(r) == Some("audit.rotated")
            && record_field(r, "deleted_files")
                .and_then(Value::as_array)
                .is_some_and(|d| !d.is_empty())
    })
}

#[test]
fn controller_audit_file_rotates_deletes_only_what_its_sink_delivered_and_the_set_verifies(
) -> anyhow::Result<()> {
    let hec = HecReceiver::start(0)?;
    let mut cluster = Cluster::new(None)?;
    let sink = hec_sink(hec.addr, &cluster.dir)?;
    configure_small_audit_files(&cluster, "", &sink)?;
    cluster.start_controller()?;
    let current = cluster.dir.join("controller/audit.jsonl");
    // Grants issued (each a `grant.issued` record) until the controller's once-a-second timer
    // has rotated more often than it keeps files: bounded in count and time.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut issued = 0;
    while !rotation_deleted_files(&current) {
        anyhow::ensure!(
            issued < 400 && Instant::now() < deadline,
            "no rotation deleting a file after {issued} grants; rotated: {:?}",
            rotated_files(&current)?
        );
        cluster.issue_grant("alice", "web-1", "/var/log/app/*.log", "10m")?;
        issued += 1;
    }
    cluster.stop_controller();
    // Every deleted file had been delivered: the collector holds its last record.
    let deleted: Vec<String> = read_audit_file(&current)
        .first()
        .and_then(|r| record_field(r, "deleted_files")?.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n.as_str().map(String::from))
        .collect();
    let delivered = highest_delivered_seq(&hec);
    for name in &deleted {
        let last: u64 = name.rsplit('.').next().unwrap_or_default().parse()?;
        assert!(
            last <= delivered,
            "{name} deleted, but only seq {delivered} delivered"
        );
    }

    let rotated = rotated_files(&current)?;
    assert_eq!(rotated.len(), 2, "audit_keep_files = 2: {rotated:?}");
    let mut records: Vec<Value> = rotated.iter().flat_map(|f| read_audit_file(f)).collect();
    records.extend(read_audit_file(&current));
    assert_eq!(
        records.last().and_then(event_name),
        Some("audit.checkpoint"),
        "the stop seals the chain"
    );
    let checkpoints_in_rotated = rotated
        .iter()
        .flat_map(|f| read_audit_file(f))
        .filter(|r| event_name(r) == Some("audit.checkpoint"))
        .count();
    assert!(
        checkpoints_in_rotated > 0,
        "[checkpoints] every = 5 seals the rotated files too (the default, 60 s, would not)"
    );

    let key = cluster.dir.join("controller/audit-signing.key.pub");
    let verify = |files: &[&PathBuf]| {
        let mut args = vec!["audit".to_string(), "verify".to_string()];
        args.extend(files.iter().map(|p| p.display().to_string()));
        args.extend(["--key".to_string(), key.display().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cluster.run_cli("admin", &args)
    };
    let out = verify(&[&rotated[0], &rotated[1], &current])?;
    assert!(out.status.success(), "{}", text(&out).1);
    // The wrong order breaks the chain: the check above is not vacuous.
    let out = verify(&[&current, &rotated[0], &rotated[1]])?;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out).1);
    Ok(())
}

/// Issues grants as admin until `done` holds; bounded in count and time.
fn issue_until(
    cluster: &Cluster,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut issued = 0;
    while !done() {
        anyhow::ensure!(
            issued < 400 && Instant::now() < deadline,
            "{what}: not after {issued} grants"
        );
        cluster.issue_grant("alice", "web-1", "/var/log/app/*.log", "10m")?;
        issued += 1;
    }
    Ok(())
}

#[test]
fn controller_with_no_sink_keeps_every_rotated_file_beyond_keep_files() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(None)?;
    configure_small_audit_files(&cluster, "", "")?;
    cluster.start_controller()?;
    let current = cluster.dir.join("controller/audit.jsonl");
    // More rotations than audit_keep_files = 2, with nobody shipping the files.
    issue_until(&cluster, "four rotations", || {
        rotated_files(&current).is_ok_and(|r| r.len() >= 4)
    })?;
    cluster.stop_controller();
    let rotated = rotated_files(&current)?;
    let mut records: Vec<Value> = rotated.iter().flat_map(|f| read_audit_file(f)).collect();
    records.extend(read_audit_file(&current));
    assert!(
        records
            .iter()
            .all(|r| event_name(r) != Some("audit.files_deleted")
                && record_field(r, "deleted_files")
                    .and_then(Value::as_array)
                    .is_none_or(|d| d.is_empty())),
        "a rotated file nobody shipped was deleted"
    );
    // The whole history is still there, from the first record of the first run.
    assert_eq!(
        records
            .first()
            .and_then(|r| record_field(r, "seq")?.as_u64()),
        Some(1)
    );
    let key = cluster.dir.join("controller/audit-signing.key.pub");
    let mut args = vec!["audit".to_string(), "verify".to_string()];
    args.extend(rotated.iter().map(|p| p.display().to_string()));
    args.push(current.display().to_string());
    args.extend(["--key".to_string(), key.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cluster.run_cli("admin", &args)?;
    assert!(out.status.success(), "{}", text(&out).1);
    Ok(())
}

#[test]
fn a_revocation_is_recorded_and_done_when_the_controllers_audit_budget_is_full(
) -> anyhow::Result<()> {
    // A sink whose collector is down: nothing is ever shipped, so nothing may be deleted.
    let mut cluster = Cluster::new(None)?;
    let sink = hec_sink(free_addr()?, &cluster.dir)?;
    configure_small_audit_files(&cluster, "audit_max_bytes = 16000", &sink)?;
    cluster.start_controller()?;
    let first = cluster.issue_grant("alice", "web-1", "/var/log/app/*.log", "10m")?;
    // Fill the budget: issuing is refused (unavailable) once it is reached.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut refused = None;
    for _ in 0..400 {
        anyhow::ensure!(Instant::now() < deadline, "the budget was never reached");
        let out = cluster.run_cli(
            "admin",
            &[
                "grant",
                "issue",
                "--subject",
                "alice",
                "--host",
                "web-1",
                "--path",
                "/var/log/app/*.log",
                "--ttl",
                "10m",
                "--reason",
                "FILL",
            ],
        )?;
        if !out.status.success() {
            refused = Some(text(&out).1);
            break;
        }
    }
    let refused = refused.ok_or_else(|| anyhow::anyhow!("the budget was never reached"))?;
    assert!(refused.contains("audit"), "{refused}");
    // The revocation goes through and is on disk.
    let out = cluster.run_cli("admin", &["grant", "revoke", &first, "--reason", "INC-9"])?;
    assert!(out.status.success(), "{:?}", text(&out));
    cluster.stop_controller();
    let current = cluster.dir.join("controller/audit.jsonl");
    let mut records: Vec<Value> = rotated_files(&current)?
        .iter()
        .flat_map(|f| read_audit_file(f))
        .collect();
    records.extend(read_audit_file(&current));
    assert!(
        records
            .iter()
            .any(|r| event_name(r) == Some("grant.revoked")
                && record_field(r, "grant_id").and_then(Value::as_str) == Some(first.as_str())),
        "no grant.revoked record for {first}"
    );
    Ok(())
}

#[test]
fn a_flood_of_hostile_checkpoint_reports_is_recorded_within_a_budget_with_bounded_records(
) -> anyhow::Result<()> {
    let mut cluster = Cluster::new(None)?;
    let logs = cluster.dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    cluster.add_agent("web-1", &[&logs], "")?;
    cluster.start_controller()?;
    let hostile = "X".repeat(60 * 1024);
    let reports = 200;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut client = cluster.controller_client_as("agents/web-1").await?;
        for _ in 0..reports {
            let err = client
                .report_checkpoints(pb::ReportCheckpointsRequest {
                    agent_id: hostile.clone(),
                    checkpoint_key: String::new(),
                    lines: Vec::new(),
                })
                .await
                .expect_err("another agent's report");
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
            assert!(
                err.message()
                    .contains("an invalid agent id (61440 bytes, SHA-256 "),
                "{}",
                err.message().len()
            );
        }
        anyhow::Ok(())
    })?;
    cluster.stop_controller();
    let refused: Vec<Value> = cluster
        .controller_audit_raw()
        .into_iter()
        .filter(|r| event_name(r) == Some("audit.checkpoint_refused"))
        .collect();
    let code = |r: &Value| {
        record_field(r, "reason_code")
            .and_then(Value::as_str)
            .map(String::from)
    };
    let one_by_one = refused
        .iter()
        .filter(|r| code(r).as_deref() == Some("other_host"))
        .count();
    assert_eq!(one_by_one, 60, "the budget: 60 per minute per agent");
    for r in &refused {
        let reason = record_field(r, "reason")
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(reason.len() < 1024, "a record of {} bytes", reason.len());
        assert!(!reason.contains("XXXX"), "the hostile id is quoted");
    }
    // What was left out is summarised (at the latest at shutdown), counted exactly once.
    let summarised: u64 = refused
        .iter()
        .filter(|r| code(r).as_deref() == Some("suppressed"))
        .filter_map(|r| {
            record_field(r, "reason")?
                .as_str()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(summarised, reports - 60);
    Ok(())
}

#[test]
fn grants_dropped_at_start_are_recorded_even_after_a_start_whose_audit_failed() -> anyhow::Result<()>
{
    let mut cluster = Cluster::new(None)?;
    let logs = cluster.dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    cluster.add_agent("web-1", &[&logs], "")?;
    cluster.start_controller()?;
    cluster.start_agent("web-1")?;
    let grant = cluster.grant(
        "alice",
        "web-1",
        &format!("{}/*.log", logs.display()),
        "10m",
    )?;
    cluster.stop_agent("web-1");
    cluster.stop_controller();
    // Another grant-signing key: the held grant no longer verifies and is dropped at start.
    let other = cluster.dir.join("other-pki");
    let out = cluster.run_cli("admin", &["pki", "init", &other.display().to_string()])?;
    assert!(out.status.success(), "{:?}", text(&out));
    let agent_dir = cluster.dir.join("agents/web-1");
    let config = agent_dir.join("agent.toml");
    let toml = std::fs::read_to_string(&config)?.replace(
        "../../pki/grant-signing.pub",
        &other.join("grant-signing.pub").display().to_string(),
    );
    std::fs::write(&config, toml)?;
    // A start whose audit file cannot be opened (a folder in its place) fails…
    let audit = agent_dir.join("audit.jsonl");
    let aside = agent_dir.join("audit.jsonl.aside");
    std::fs::rename(&audit, &aside)?;
    std::fs::create_dir(&audit)?;
    let out = std::process::Command::new(loggate_tests::bin_dir()?.join("loggate-agent"))
        .args(["run", "--config", &config.display().to_string()])
        .stdin(std::process::Stdio::null())
        .output()?;
    assert!(!out.status.success(), "started without its audit file");
    // …and the next, with its audit back, still records the drop.
    std::fs::remove_dir(&audit)?;
    std::fs::rename(&aside, &audit)?;
    cluster.start_agent("web-1")?;
    cluster.wait_for_audit("web-1", Duration::from_secs(15), |e| {
        e["event"] == "grant.dropped" && e["grant_id"] == grant.as_str()
    })?;
    Ok(())
}
