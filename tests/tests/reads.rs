//! End-to-end: grants issued by the real controller, pushed to the real agent, and log reads
//! through the real CLI over mTLS — the happy paths and every grant-related denial.

use loggate_tests::{text, Fixture};
use std::time::Duration;

fn denial_of(f: &Fixture, code: &str) -> anyhow::Result<serde_json::Value> {
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["reason_code"] == code
        })
}

#[test]
fn happy_path_cat_prints_the_file_and_is_audited_before_and_after() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let grant = f.grant("alice", "30m")?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, std::fs::read_to_string(f.api_log())?);
    let finished = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.finished" && e["grant_id"] == grant.as_str()
        })?;
    assert_eq!(finished["bytes"], stdout.len() as u64);
    assert_eq!(finished["end_reason"], "eof");
    let audit = f.cluster.agent_audit("web-1");
    let allowed = audit
        .iter()
        .position(|e| e["event"] == "read.allowed")
        .unwrap();
    let done = audit
        .iter()
        .position(|e| e["event"] == "read.finished")
        .unwrap();
    assert!(allowed < done);
    assert_eq!(
        audit[allowed]["subject"],
        "spiffe://loggate.local/user/alice"
    );
    Ok(())
}

#[test]
fn tail_grep_and_time_range_select_lines_on_the_agent() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    f.grant("alice", "30m")?;
    let (tail, _) = text(&f.logs("alice", &["tail", "-n", "3", &f.api_log()])?);
    assert_eq!(tail, "2026-11-27T07:47:00Z INFO line 47\n2026-11-27T07:48:00Z INFO line 48\n2026-11-27T07:49:00Z INFO line 49\n");
    let (none, _) = text(&f.logs("alice", &["tail", "-n", "0", &f.api_log()])?);
    assert_eq!(none, "", "tail -n 0 prints no line");
    let (default, _) = text(&f.logs("alice", &["tail", &f.api_log()])?);
    assert_eq!(default.lines().count(), 10, "{default}");
    let (grep, _) = text(&f.logs("alice", &["grep", "line 1[0-2]$", &f.api_log()])?);
    assert_eq!(grep.lines().count(), 3, "{grep}");
    let (range, _) = text(&f.logs(
        "alice",
        &[
            "cat",
            "--since",
            "2026-11-27T07:10:00Z",
            "--until",
            "2026-11-27T07:12:00Z",
            &f.api_log(),
        ],
    )?);
    assert_eq!(
        range,
        "2026-11-27T07:10:00Z INFO line 10\n2026-11-27T07:11:00Z INFO line 11\n"
    );
    let bad = f.logs("alice", &["grep", "(unclosed", &f.api_log()])?;
    assert!(!bad.status.success());
    assert!(text(&bad).1.contains("grep pattern"), "{}", text(&bad).1);
    Ok(())
}

#[test]
fn follow_streams_appended_lines() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    f.grant("alice", "4s")?;
    let child = f
        .cluster
        .logs_cmd(
            "alice",
            "web-1",
            &["tail", "-n", "1", "--follow", &f.api_log()],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1000));
    use std::io::Write;
    let mut log = std::fs::OpenOptions::new().append(true).open(f.api_log())?;
    writeln!(log, "2026-11-27T08:00:00Z INFO appended while following")?;
    drop(log);
    let out = child.wait_with_output()?;
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("line 49\n"), "{stdout}");
    assert!(stdout.contains("appended while following"), "{stdout}");
    // The stream ends only because the 4 s grant expired.
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
    Ok(())
}

#[test]
fn bob_is_denied_on_alices_grant() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    f.grant("alice", "30m")?;
    let out = f.logs("bob", &["cat", &f.api_log()])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3));
    assert!(stdout.is_empty());
    assert!(stderr.contains("hold no grant on agent web-1"), "{stderr}");
    let denial = denial_of(&f, "no_grant")?;
    assert_eq!(denial["subject"], "spiffe://loggate.local/user/bob");
    Ok(())
}

#[test]
fn alice_is_denied_on_another_host() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    // A grant for web-2 is never pushed to web-1.
    let id = f.cluster.issue_grant("alice", "web-2", &f.glob(), "30m")?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert_eq!(out.status.code(), Some(3));
    denial_of(&f, "no_grant")?;
    // Presenting that grant's token directly is refused for the host, too.
    let list = f.cluster.run_cli("alice", &["grant", "list", "--json"])?;
    let grants: serde_json::Value = serde_json::from_slice(&list.stdout)?;
    let token = grants
        .as_array()
        .and_then(|a| a.iter().find(|g| g["id"] == id.as_str()))
        .and_then(|g| g["token"].as_str())
        .unwrap()
        .to_string();
    let token_file = f.cluster.dir.join("web2.token");
    std::fs::write(&token_file, token)?;
    let out = f.logs(
        "alice",
        &[
            "cat",
            "--grant-token",
            token_file.to_str().unwrap(),
            &f.api_log(),
        ],
    )?;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out).1.contains("does not cover host web-1"),
        "{}",
        text(&out).1
    );
    Ok(())
}

#[test]
fn grant_for_another_path_glob_is_denied() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let other = format!("{}/other-*.log", f.logs.display());
    let id = f.cluster.grant("alice", "web-1", &other, "30m")?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out).1;
    assert!(
        stderr.contains(&format!("grant {id} covers {other}, not")),
        "{stderr}"
    );
    denial_of(&f, "path_not_covered")?;
    Ok(())
}

#[test]
fn expired_grant_is_denied_with_how_long_ago() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let id = f.grant("alice", "1s")?;
    std::thread::sleep(Duration::from_millis(2100));
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out).1;
    assert!(stderr.contains(&format!("grant {id} expired")), "{stderr}");
    assert!(stderr.contains("request a new one"), "{stderr}");
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "grant.expired" && e["grant_id"] == id.as_str()
        })?;
    Ok(())
}

#[test]
fn not_yet_valid_grant_is_denied() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let out = f.cluster.run_cli(
        "admin",
        &[
            "grant",
            "issue",
            "--subject",
            "alice",
            "--host",
            "web-1",
            "--path",
            &f.glob(),
            "--ttl",
            "1h",
            "--start-in",
            "2h",
            "--reason",
            "LATER",
            "--redaction",
            "raw",
            "--json",
        ],
    )?;
    assert!(out.status.success(), "{}", text(&out).1);
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout)?["id"]
        .as_str()
        .unwrap()
        .to_string();
    f.cluster.wait_for_grant("web-1", &id)?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out).1.contains("is not valid yet"),
        "{}",
        text(&out).1
    );
    denial_of(&f, "grant_not_yet_valid")?;
    Ok(())
}

#[test]
fn revoked_grant_is_denied_and_revocation_is_audited() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let id = f.grant("alice", "30m")?;
    let out = f
        .cluster
        .run_cli("admin", &["grant", "revoke", &id, "--reason", "done"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "grant.revoked" && e["grant_id"] == id.as_str()
        })?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out)
            .1
            .contains("was revoked by spiffe://loggate.local/user/admin"),
        "{}",
        text(&out).1
    );
    Ok(())
}

#[test]
fn only_admins_issue_grants() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let out = f.cluster.run_cli(
        "alice",
        &[
            "grant",
            "issue",
            "--subject",
            "alice",
            "--host",
            "web-1",
            "--path",
            &f.glob(),
            "--ttl",
            "1h",
            "--reason",
            "x",
        ],
    )?;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out).1.contains("is not a loggate admin"),
        "{}",
        text(&out).1
    );
    Ok(())
}

#[test]
fn grant_issue_refuses_bad_input_with_a_clear_error() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let base = [
        "grant",
        "issue",
        "--subject",
        "alice",
        "--host",
        "web-1",
        "--reason",
        "x",
    ];
    for (extra, expect) in [
        (
            vec!["--path", "relative/*.log", "--ttl", "1h"],
            "must be an absolute path (start with '/')",
        ),
        (
            vec!["--path", "/var/log/../etc/*", "--ttl", "1h"],
            "must not contain '..'",
        ),
        (vec!["--path", "/var/log/*.log", "--ttl", "100h"], "max_ttl"),
        (
            vec![
                "--path",
                "/var/log/*.log",
                "--ttl",
                "1h",
                "--redaction",
                "unlisted",
            ],
            "is not allowed by the controller's redaction_profiles (default, raw",
        ),
    ] {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra);
        let out = f.cluster.run_cli("admin", &args)?;
        assert_eq!(out.status.code(), Some(2), "bad usage: {}", text(&out).1);
        assert!(text(&out).1.contains(expect), "{expect}: {}", text(&out).1);
    }
    for subject in ["Bob_X", "spiffe://loggate.local/agent/web-1"] {
        let out = f.cluster.run_cli(
            "admin",
            &[
                "grant",
                "issue",
                "--subject",
                subject,
                "--host",
                "web-1",
                "--reason",
                "x",
                "--path",
                "/var/log/*.log",
                "--ttl",
                "1h",
            ],
        )?;
        assert_eq!(out.status.code(), Some(2), "bad usage: {}", text(&out).1);
        let expect = format!("subject: {subject:?} is neither a user name");
        assert!(text(&out).1.contains(&expect), "{expect}: {}", text(&out).1);
    }
    Ok(())
}

#[test]
fn reads_called_wrongly_exit_2_with_one_sentence() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    f.grant("alice", "30m")?;
    for (args, expect) in [
        (vec!["cat", "logs/app/api.log"], "is not an absolute path"),
        (vec!["cat", "--since", "yesterday", &f.api_log()], "--since"),
        (vec!["grep", "(", &f.api_log()], "grep pattern"),
        (vec!["tail", "-n", "100000000", &f.api_log()], "at most"),
    ] {
        let out = f.logs("alice", &args)?;
        let stderr = text(&out).1;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "one sentence: {stderr}"
        );
    }
    Ok(())
}

#[test]
fn agent_address_comes_from_the_controller_registry_and_json_output_is_one_object_per_line(
) -> anyhow::Result<()> {
    let f = Fixture::start()?;
    f.grant("alice", "30m")?;
    // No --agent-addr: the CLI asks the controller where web-1 is.
    let out = f.cluster.run_cli(
        "alice",
        &[
            "logs",
            "tail",
            "-n",
            "2",
            "--host",
            "web-1",
            "--output",
            "json",
            &f.api_log(),
        ],
    )?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["line"], "2026-11-27T07:49:00Z INFO line 49");
    assert_eq!(lines[1]["host"], "web-1");
    assert_eq!(lines[1]["path"], f.api_log());
    // An agent the controller never heard of gets a clear error.
    let out = f
        .cluster
        .run_cli("alice", &["logs", "cat", "--host", "db-9", &f.api_log()])?;
    assert!(!out.status.success());
    assert!(
        text(&out)
            .1
            .contains("agent db-9 has never contacted the controller"),
        "{}",
        text(&out).1
    );
    Ok(())
}

#[test]
fn grant_list_shows_people_only_their_own_grants() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let a = f.grant("alice", "30m")?;
    let b = f.grant("bob", "30m")?;
    let ids = |user: &str| -> anyhow::Result<Vec<String>> {
        let out = f.cluster.run_cli(user, &["grant", "list", "--json"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["id"].as_str().map(String::from))
            .collect())
    };
    assert_eq!(ids("alice")?, vec![a.clone()]);
    assert_eq!(ids("bob")?, vec![b.clone()]);
    let mut all = ids("admin")?;
    all.sort();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(all, expected);
    // alice may revoke her own grant, not bob's.
    let out = f.cluster.run_cli("alice", &["grant", "revoke", &b])?;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out).1.contains("may only revoke their own grants"),
        "{}",
        text(&out).1
    );
    let out = f
        .cluster
        .run_cli("alice", &["grant", "revoke", &a, "--reason", "done early"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(ids("alice")?.is_empty());
    Ok(())
}

#[test]
fn star_in_a_grant_glob_does_not_reach_into_subfolders() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    f.grant("alice", "30m")?;
    let sub = f.logs.join("private");
    std::fs::create_dir_all(&sub)?;
    std::fs::write(sub.join("secret.log"), "not for alice\n")?;
    let out = f.logs(
        "alice",
        &["cat", sub.join("secret.log").to_str().unwrap_or_default()],
    )?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(text(&out).0.is_empty());
    denial_of(&f, "path_not_covered")?;
    Ok(())
}

#[test]
fn the_denial_explains_the_grant_closest_to_working() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let old = f.grant("alice", "30m")?;
    let out = f.cluster.run_cli("admin", &["grant", "revoke", &old])?;
    assert!(out.status.success(), "{}", text(&out).1);
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(10), |e| {
            e["event"] == "grant.revoked" && e["grant_id"] == old.as_str()
        })?;
    // Her current grant names a profile this agent does not have: that is what she must hear,
    // not that an older grant was revoked.
    f.grant_with_profile("alice", "30m", "nosuch")?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out).1.contains("nosuch"), "{}", text(&out).1);
    denial_of(&f, "profile_unavailable")?;
    Ok(())
}

#[test]
fn bad_arguments_are_refused_and_audited_with_their_own_codes() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    f.grant("alice", "30m")?;
    let log = f.api_log();
    for (args, code, expect) in [
        (
            vec!["grep", "(", log.as_str()],
            "pattern_invalid",
            "grep pattern",
        ),
        (
            vec!["grep", r"(?s-u:.){0,3000}[\x80-\xff]", log.as_str()],
            "pattern_too_complex",
            "too complex",
        ),
        (
            vec!["tail", "-n", "100000000", log.as_str()],
            "tail_lines_over_limit",
            "at most",
        ),
    ] {
        let out = f.logs("alice", &args)?;
        let stderr = text(&out).1;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        let denial = denial_of(&f, code)?;
        assert_eq!(denial["subject"], "spiffe://loggate.local/user/alice");
        assert_eq!(denial["path"], log.as_str());
    }
    Ok(())
}

/// `ReadLog` of `path` as `user` over one connection per call, `times` times; every call must
/// be refused.
async fn denied_reads(f: &Fixture, user: &str, path: &str, times: usize) -> anyhow::Result<()> {
    let files = f.cluster.tls_files_of(&format!("users/{user}"));
    let channel = files
        .endpoint(
            &f.cluster.agent_addr("web-1"),
            loggate_core::tls::Server::Agent("web-1"),
        )?
        .connect()
        .await?;
    let mut client = loggate_proto::agent_client::AgentClient::new(channel);
    for _ in 0..times {
        let refused = client
            .read_log(loggate_proto::ReadLogRequest {
                path: path.to_string(),
                mode: loggate_proto::ReadMode::Cat as i32,
                ..Default::default()
            })
            .await
            .expect_err("refused");
        // Every refused request gets its clear error, recorded or not.
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(!refused.message().is_empty(), "{refused:?}");
    }
    Ok(())
}

/// Issue #10 review: summaries waited for the window's tick, so the ones pending when the agent
/// stopped were lost. They are written before `agent.stopped`.
#[tokio::test(flavor = "multi_thread")]
async fn denial_summaries_pending_at_shutdown_are_written_before_agent_stopped(
) -> anyhow::Result<()> {
    let mut f = tokio::task::spawn_blocking(|| {
        Fixture::start_with("[limits]\naudit_denials_per_window = 2\naudit_denial_window = \"1h\"")
    })
    .await??;
    denied_reads(&f, "bob", "/nope/secret.log", 10).await?;
    let f = tokio::task::spawn_blocking(move || {
        f.cluster.stop_agent("web-1");
        f
    })
    .await?;
    let records: Vec<_> = f
        .cluster
        .agent_audit_raw("web-1")
        .iter()
        .map(loggate_tests::flat_audit_record)
        .collect();
    let stopped = records
        .iter()
        .position(|e| e["event"] == "agent.stopped")
        .expect("agent.stopped recorded");
    let bob = "spiffe://loggate.local/user/bob";
    let summary = records
        .iter()
        .position(|e| e["reason_code"] == "suppressed" && e["subject"] == bob)
        .expect("a summary of bob's left-out denials");
    assert!(summary < stopped, "summary after agent.stopped");
    assert_eq!(
        records[summary]["suppressed_before"], 8,
        "{}",
        records[summary]
    );
    tokio::task::spawn_blocking(move || drop(f)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_denials_writes_bounded_records_and_a_summary() -> anyhow::Result<()> {
    let f = tokio::task::spawn_blocking(|| {
        Fixture::start_with("[limits]\naudit_denials_per_window = 20\naudit_denial_window = \"3s\"")
    })
    .await??;
    let audit = f.cluster.dir.join("agents/web-1/audit.jsonl");
    let before = std::fs::metadata(&audit)?.len();
    let long = format!("/{}", "a".repeat(59_999));
    denied_reads(&f, "bob", &long, 250).await?;
    let grown = std::fs::metadata(&audit)?.len() - before;
    eprintln!("250 denials with a 60 KB path: audit grew by {grown} bytes");
    // 20 records of about 2 KB each in a window, not 250 of ~121 KB.
    assert!(grown < 150_000, "audit grew by {grown} bytes");
    // An ordinary denial of another subject, from the same address, is recorded by itself.
    denied_reads(&f, "admin", &f.api_log(), 1).await?;
    let bob = "spiffe://loggate.local/user/bob";
    // A window tick can fall inside the burst and split the count over two summaries: poll
    // until bob's records account for all 250 (or the deadline says some were lost).
    let summary = tokio::task::spawn_blocking({
        let cluster_dir = f.cluster.dir.clone();
        move || -> anyhow::Result<Vec<serde_json::Value>> {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                let audit =
                    loggate_tests::read_audit_file(&cluster_dir.join("agents/web-1/audit.jsonl"));
                let records: Vec<_> = audit.iter().map(loggate_tests::flat_audit_record).collect();
                let counted: u64 = records
                    .iter()
                    .filter(|e| e["event"] == "read.denied" && e["subject"] == bob)
                    .map(|e| {
                        u64::from(e["reason_code"] != "suppressed")
                            + e["suppressed_before"].as_u64().unwrap_or_default()
                    })
                    .sum();
                let summarised = records.iter().any(|e| e["reason_code"] == "suppressed");
                if summarised && counted >= 250 {
                    return Ok(records);
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "bob's denials counted {counted} of 250 (summary: {summarised})"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    })
    .await??;
    let of_bob: Vec<_> = summary
        .iter()
        .filter(|e| e["event"] == "read.denied" && e["subject"] == bob)
        .collect();
    let (single, summaries): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) = of_bob
        .iter()
        .partition(|e| e["reason_code"] != "suppressed");
    let carried: u64 = of_bob
        .iter()
        .map(|e| e["suppressed_before"].as_u64().unwrap_or_default())
        .sum();
    assert!(
        !summaries.is_empty() && single.len() <= 60,
        "{} single",
        single.len()
    );
    assert_eq!(
        single.len() as u64 + carried,
        250,
        "every denial counted once"
    );
    for e in &single {
        assert_eq!(e["path"].as_str().map(str::len), Some(256), "{e}");
        assert_eq!(e["path_bytes"], 60_000);
        assert_eq!(e["path_sha256"], sha256_hex(&long)?);
    }
    let other = summary
        .iter()
        .filter(|e| {
            e["event"] == "read.denied" && e["subject"] == "spiffe://loggate.local/user/admin"
        })
        .collect::<Vec<_>>();
    assert_eq!(other.len(), 1, "{other:?}");
    assert_eq!(other[0]["reason_code"], "no_grant");
    assert_eq!(other[0]["path"], f.api_log());
    // The bounded records and the summaries are events of the catalogue and valid OCSF.
    let schema = loggate_ocsf_validate::Schema::official()?;
    for raw in f.cluster.agent_audit_raw("web-1") {
        let problems = loggate_core::audit::ocsf::catalogue_problems(&raw);
        assert!(problems.is_empty(), "{problems:?}: {raw}");
        let report = schema.validate(&raw);
        assert!(report.is_conformant(), "{report}\n{raw}");
    }
    tokio::task::spawn_blocking(move || drop(f)).await?;
    Ok(())
}

/// `sha256sum` of `text`, as the agent records it.
fn sha256_hex(text: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}
