//! End-to-end: the audit records the real agent and controller write conform to the official
//! OCSF 1.8.0 schema (0 errors, 0 warnings: checked by `loggate-ocsf-validate` with the rules of
//! a validating SIEM), are events of the documented classes, carry the person, the grant, the
//! host and a unique UUIDv7, every event name and field is in `docs/audit-events.md` (the
//! catalogue it is generated from), and the files still verify, also across rotation. A bypass
//! read without a grant also raises a Detection Finding (needs root and eBPF or fanotify; CI
//! runs as root). Each test prints, per event kind, how many recommended OCSF attributes its
//! records still lack.

use loggate_core::audit::ocsf::catalogue_problems;
use loggate_core::audit::{event_name, record_field, record_seq};
use loggate_tests::{text, Fixture};
use serde_json::Value;
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// Every record conforms to OCSF 1.8.0 (the official schema), is what its event type in the
/// catalogue says, has a fresh UUIDv7 and `metadata.sequence` = `seq`; returns the event names
/// seen. Prints the per-kind tally (missing recommended attributes).
fn check_records(records: &[Value]) -> HashSet<String> {
    let schema = loggate_ocsf_validate::Schema::official().expect("vendored OCSF 1.8.0 schema");
    let mut tally = loggate_ocsf_validate::Tally::default();
    let mut uids = HashSet::new();
    let mut names = HashSet::new();
    for r in records {
        assert_eq!(catalogue_problems(r), Vec::<String>::new(), "{r}");
        let report = schema.validate(r);
        assert!(report.is_conformant(), "{report}\n{r}");
        tally.add(event_name(r).unwrap_or("?"), &report);
        let uid = r["metadata"]["uid"].as_str().unwrap_or_default();
        let parsed = uuid_version(uid);
        assert_eq!(parsed, Some('7'), "metadata.uid {uid:?} is not a UUIDv7");
        assert!(uids.insert(uid.to_string()), "metadata.uid {uid} twice");
        assert_eq!(r["metadata"]["sequence"].as_u64(), record_seq(r), "{r}");
        names.insert(event_name(r).unwrap_or_default().to_string());
    }
    println!("{}", tally.summary());
    assert!(tally.all_conformant(), "{}", tally.to_markdown());
    names
}

/// The version digit of a UUID in its text form, if it is one.
fn uuid_version(uid: &str) -> Option<char> {
    let groups: Vec<&str> = uid.split('-').collect();
    let shape_ok = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    shape_ok.then(|| groups[2].chars().next()).flatten()
}

fn the<'a>(records: &'a [Value], event: &str) -> &'a Value {
    records
        .iter()
        .find(|r| event_name(r) == Some(event))
        .unwrap_or_else(|| panic!("no {event} record"))
}

#[test]
fn reads_denials_and_grant_changes_are_documented_ocsf_events_and_the_file_verifies(
) -> anyhow::Result<()> {
    let mut f = Fixture::start()?;
    let grant = f.grant("alice", "30m")?;
    assert!(f.logs("alice", &["cat", &f.api_log()])?.status.success());
    assert!(!f.logs("bob", &["cat", &f.api_log()])?.status.success());
    let out = f
        .cluster
        .run_cli("admin", &["grant", "revoke", &grant, "--reason", "done"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    f.cluster.wait_for_audit("web-1", WAIT, |e| {
        e["event"] == "grant.revoked" && e["grant_id"] == grant.as_str()
    })?;
    f.cluster
        .wait_for_audit("web-1", WAIT, |e| e["event"] == "read.finished")?;
    f.cluster.stop_agent("web-1");

    let agent = f.cluster.agent_audit_raw("web-1");
    let seen = check_records(&agent);
    for event in [
        "agent.started",
        "grant.received",
        "read.allowed",
        "read.finished",
        "read.denied",
        "grant.revoked",
        "agent.stopped",
    ] {
        assert!(seen.contains(event), "no {event} in {seen:?}");
    }
    let controller = f.cluster.controller_audit_raw();
    let seen = check_records(&controller);
    assert!(
        seen.contains("grant.issued") && seen.contains("grant.revoked"),
        "{seen:?}"
    );

    // A read: API Activity 6003 Read, by alice (SPIFFE id and certificate key), from
    // loopback, under her grant, on web-1.
    let allowed = the(&agent, "read.allowed");
    assert_eq!(allowed["type_uid"], 600302);
    assert_eq!(allowed["status_id"], 1);
    let alice = &allowed["actor"]["user"];
    assert_eq!(alice["uid"], "spiffe://loggate.local/user/alice");
    assert_eq!(alice["name"], "alice");
    assert_eq!(
        alice["programmatic_credentials"][0]["uid"]
            .as_str()
            .map(str::len),
        Some(64)
    );
    assert!(
        alice.get("credential_uid").is_none(),
        "deprecated in OCSF 1.6"
    );
    assert_eq!(allowed["metadata"]["profiles"], serde_json::json!(["host"]));
    assert!(allowed["message"]
        .as_str()
        .is_some_and(|m| m.contains("alice")));
    assert_eq!(allowed["src_endpoint"]["ip"], "127.0.0.1");
    assert_eq!(allowed["metadata"]["correlation_uid"], grant.as_str());
    assert_eq!(allowed["device"]["hostname"], "web-1");
    assert_eq!(allowed["metadata"]["version"], "1.8.0");
    assert_eq!(
        record_field(allowed, "grant_id"),
        Some(&Value::from(grant.as_str()))
    );
    // A denial: the same class, Failure, the reason code as status_detail, bob named.
    let denied = the(&agent, "read.denied");
    assert_eq!(denied["type_uid"], 600302);
    assert_eq!(denied["status_id"], 2);
    assert_eq!(denied["status_detail"], "no_grant");
    assert_eq!(denied["actor"]["user"]["name"], "bob");
    // Grants: User Access Management, assigned then revoked, naming alice and who acted.
    let received = the(&agent, "grant.received");
    assert_eq!(received["type_uid"], 300501);
    assert_eq!(received["user"]["uid"], "spiffe://loggate.local/user/alice");
    let revoked = the(&agent, "grant.revoked");
    assert_eq!(revoked["type_uid"], 300502);
    assert_eq!(revoked["user"]["uid"], "spiffe://loggate.local/user/alice");
    assert_eq!(revoked["actor"]["user"]["name"], "admin");
    assert_eq!(the(&controller, "grant.issued")["type_uid"], 300501);
    // Lifecycle: Event Log Activity.
    assert_eq!(the(&agent, "agent.started")["class_uid"], 1008);

    let file = f.cluster.agents["web-1"].dir.join("audit.jsonl");
    let out = f
        .cluster
        .run_cli("alice", &["audit", "verify", &file.display().to_string()])?;
    assert!(out.status.success(), "{}", text(&out).1);
    Ok(())
}

fn cat(path: &str) -> anyhow::Result<u32> {
    let mut child = Command::new("cat")
        .arg(path)
        .stdout(Stdio::null())
        .spawn()?;
    let pid = child.id();
    anyhow::ensure!(child.wait()?.success(), "cat {path} failed");
    Ok(pid)
}

#[test]
#[ignore = "needs root"]
fn bypass_read_is_file_activity_and_raises_a_finding_only_without_a_grant() -> anyhow::Result<()> {
    loggate_tests::require_root("the bypass audit loads eBPF");
    // Root is alice for the bypass audit's grant check.
    let f = Fixture::start_with("[bypass]\nuid_subjects = { \"0\" = \"alice\" }")?;
    let started = f
        .cluster
        .wait_for_audit("web-1", WAIT, |e| e["event"] == "agent.started")?;
    assert_ne!(
        started["bypass_mode"], "off",
        "the bypass audit is unavailable here (as root): {started}"
    );

    // No grant yet: a File System Activity Open and a Detection Finding about it.
    let pid = cat(&f.api_log())?;
    let finding = f.cluster.wait_for_audit("web-1", WAIT, |e| {
        e["event"] == "bypass.finding" && e["pid"] == pid
    })?;
    let raw = f.cluster.agent_audit_raw("web-1");
    check_records(&raw);
    let read = raw
        .iter()
        .find(|r| {
            event_name(r) == Some("bypass.read") && record_field(r, "pid") == Some(&pid.into())
        })
        .expect("the bypass.read before its finding");
    let alert = raw
        .iter()
        .find(|r| record_seq(r) == finding["seq"].as_u64())
        .expect("the finding's raw record");
    assert_eq!(read["type_uid"], 100114);
    assert_eq!(read["actor"]["process"]["pid"], pid);
    assert_eq!(
        read["actor"]["user"]["uid"],
        "spiffe://loggate.local/user/alice"
    );
    assert_eq!(read["file"]["name"], "api.log");
    assert_eq!(read["severity_id"], 4);
    assert_eq!(alert["type_uid"], 200401);
    assert_eq!(finding["read_seq"].as_u64(), record_seq(read));
    assert_eq!(
        alert["finding_info"]["uid"],
        read["unmapped"]["loggate"]["finding_uid"]
    );
    assert_eq!(alert["is_alert"], true);
    assert_eq!(alert["evidences"][0]["actor"]["process"]["pid"], pid);

    // With a grant covering the file: the open is still audited, but raises no finding.
    let grant = f.grant("alice", "30m")?;
    let pid = cat(&f.api_log())?;
    let read = f.cluster.wait_for_audit("web-1", WAIT, |e| {
        e["event"] == "bypass.read" && e["pid"] == pid
    })?;
    assert_eq!(read["holds_grant"], true, "{read}");
    assert_eq!(read["grant_ids"], serde_json::json!([grant]));
    assert_eq!(read["finding_uid"], Value::Null);
    // A finding would follow its read at once; give it a moment to show that none does.
    std::thread::sleep(Duration::from_millis(500));
    let raw = f.cluster.agent_audit_raw("web-1");
    check_records(&raw);
    assert!(
        !raw.iter().any(|r| event_name(r) == Some("bypass.finding")
            && record_field(r, "read_seq") == Some(&read["seq"])),
        "a finding for a reader holding a grant"
    );
    Ok(())
}

#[test]
fn rotated_audit_files_verify_as_one_chain_and_the_new_file_on_its_own() -> anyhow::Result<()> {
    let mut f = Fixture::start_with("audit_rotate_bytes = 4000\naudit_keep_files = 1")?;
    f.grant("alice", "30m")?;
    let dir = f.cluster.agents["web-1"].dir.clone();
    let current = dir.join("audit.jsonl");
    // Reads until the agent's once-a-second check has rotated twice (one file kept).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let rotated = loop {
        assert!(f.logs("alice", &["cat", &f.api_log()])?.status.success());
        let rotated = loggate_core::audit::rotated_files(&current)?;
        let first = f.cluster.agent_audit_raw("web-1").into_iter().next();
        let deleted = first
            .as_ref()
            .and_then(|r| record_field(r, "deleted_files"))
            .and_then(Value::as_array)
            .is_some_and(|d| !d.is_empty());
        if deleted {
            break rotated;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no second rotation in 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    f.cluster.stop_agent("web-1");
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    let raw = f.cluster.agent_audit_raw("web-1");
    check_records(&raw);
    let first = &raw[0];
    assert_eq!(event_name(first), Some("audit.rotated"));
    assert_eq!(first["type_uid"], 100805); // Event Log Activity: 5 Rotate
    let verify = |files: &[&std::path::Path]| {
        let mut args = vec!["audit".to_string(), "verify".to_string()];
        args.extend(files.iter().map(|p| p.display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        f.cluster.run_cli("alice", &args)
    };
    let out = verify(&[&rotated[0], &current])?;
    assert!(out.status.success(), "{}", text(&out).1);
    let out = verify(&[&current])?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("continues rotated file"),
        "{}",
        text(&out).1
    );
    // The wrong order breaks the chain.
    let out = verify(&[&current, &rotated[0]])?;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out).1);
    Ok(())
}

/// A plain TCP client that sends bytes that are not a TLS handshake: the agent refuses it.
fn not_tls(addr: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: web-1\r\n\r\n")?;
    let _ = stream.read(&mut [0u8; 64]);
    Ok(())
}

#[test]
fn every_record_kind_of_a_real_run_conforms_to_ocsf_1_8_0() -> anyhow::Result<()> {
    let mut f = Fixture::start()?;
    // A TLS refusal.
    not_tls(&f.cluster.agent_addr("web-1"))?;
    f.cluster
        .wait_for_audit("web-1", WAIT, |e| e["event"] == "tls.refused")?;
    // Reads allowed and denied, a revocation.
    let grant = f.grant("alice", "30m")?;
    assert!(f.logs("alice", &["cat", &f.api_log()])?.status.success());
    assert!(!f.logs("bob", &["cat", &f.api_log()])?.status.success());
    // A follow across a rename-and-create rotation of the file read.
    let mut follow = f
        .cluster
        .logs_cmd(
            "alice",
            "web-1",
            &["tail", "-n", "0", "--follow", &f.api_log()],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    f.cluster.wait_for_audit("web-1", WAIT, |e| {
        e["event"] == "read.allowed" && e["mode"] == "tail_follow"
    })?;
    std::fs::rename(f.logs.join("api.log"), f.logs.join("api.log.1"))?;
    std::fs::write(f.logs.join("api.log"), "a new file\n")?;
    let reopened = f
        .cluster
        .wait_for_audit("web-1", WAIT, |e| e["event"] == "read.reopened");
    let _ = follow.kill();
    let _ = follow.wait();
    reopened?;
    let out = f
        .cluster
        .run_cli("admin", &["grant", "revoke", &grant, "--reason", "done"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    // A grant that expires.
    let short = f.grant("bob", "2s")?;
    f.cluster.wait_for_audit("web-1", WAIT, |e| {
        e["event"] == "grant.expired" && e["grant_id"] == short.as_str()
    })?;
    // A torn tail found at the next start.
    f.cluster.stop_agent("web-1");
    let audit = f.cluster.agents["web-1"].dir.join("audit.jsonl");
    let mut file = std::fs::OpenOptions::new().append(true).open(&audit)?;
    std::io::Write::write_all(&mut file, b"{\"unmapped\":{\"loggate\":{\"seq\":")?;
    drop(file);
    f.cluster.start_agent("web-1")?;
    f.cluster
        .wait_for_audit("web-1", WAIT, |e| e["event"] == "audit.torn_tail_discarded")?;
    f.cluster.stop_agent("web-1");
    f.cluster.stop_controller();

    let agent = f.cluster.agent_audit_raw("web-1");
    let seen = check_records(&agent);
    for event in [
        "agent.started",
        "tls.refused",
        "grant.received",
        "read.allowed",
        "read.denied",
        "read.reopened",
        "read.finished",
        "grant.revoked",
        "grant.expired",
        "audit.torn_tail_discarded",
        "agent.stopped",
    ] {
        assert!(seen.contains(event), "no {event} in {seen:?}");
    }
    let controller = f.cluster.controller_audit_raw();
    let seen = check_records(&controller);
    for event in [
        "controller.started",
        "grant.issued",
        "grant.revoked",
        "controller.stopped",
    ] {
        assert!(seen.contains(event), "no {event} in {seen:?}");
    }
    // The whole file still verifies.
    let out = f
        .cluster
        .run_cli("alice", &["audit", "verify", &audit.display().to_string()])?;
    assert!(out.status.success(), "{}", text(&out).1);
    Ok(())
}

/// Upgrade: an agent started on an audit file an earlier build wrote (`seq` and `prev` at the
/// top level) continues its chain in the new layout; after the agent rotates it, `loggate audit
/// verify` takes the rotated file (old records, then new ones) and the new file as one chain.
#[test]
fn an_old_layout_audit_file_is_continued_by_the_agent_and_verifies_across_a_rotation(
) -> anyhow::Result<()> {
    // The first 20 records of the examples an earlier build generated (a chained prefix).
    let old: Vec<&str> = include_str!("../../core/src/audit/testdata/old-layout.jsonl")
        .lines()
        .take(20)
        .collect();
    let old = format!("{}\n", old.join("\n"));
    let mut cluster = loggate_tests::Cluster::new(None)?;
    let logs = cluster.dir.join("logs/app");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(logs.join("api.log"), "one line\n")?;
    cluster.add_agent(
        "web-1",
        &[&logs],
        "audit_rotate_bytes = 4000\naudit_keep_files = 2",
    )?;
    let audit = cluster.agents["web-1"].dir.join("audit.jsonl");
    std::fs::write(&audit, &old)?;
    cluster.start_controller()?;
    cluster.start_agent("web-1")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while loggate_core::audit::rotated_files(&audit)?.is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the agent did not rotate its audit file"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.stop_agent("web-1");
    let rotated = loggate_core::audit::rotated_files(&audit)?;
    let before = std::fs::read_to_string(&rotated[0])?;
    assert!(before.starts_with(&old), "the old records are untouched");
    let new_part = &before[old.len()..];
    assert!(!new_part.is_empty());
    assert!(
        new_part.lines().all(|l| l.starts_with("{\"unmapped\":")),
        "{new_part}"
    );
    check_records(&loggate_tests::read_audit_file(&audit));
    let files = [
        rotated[0].display().to_string(),
        audit.display().to_string(),
    ];
    let out = cluster.run_cli("alice", &["audit", "verify", &files[0], &files[1]])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    Ok(())
}
