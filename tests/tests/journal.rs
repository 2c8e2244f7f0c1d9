//! End-to-end: the systemd journal as a resource of its own (`loggate logs journal`). A real
//! journal is written in a scratch folder by `systemd-journal-remote` (fed the journal export
//! format) and read by the agent's `journalctl --directory` (`[journal] directory`): entries
//! of the granted unit are served redacted, other units' never; a file grant does not open the
//! journal and a unit grant opens no file; a glob is refused by the agent itself; revocation
//! cuts a `--follow` and ends its `journalctl`; every read is audited on the agent.

use loggate_tests::journal_export::{self, now_micros, write_journal};
use loggate_tests::{text, Fixture};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The secret planted in an nginx entry (the default profile redacts `password=…`).
const SECRET: &str = "hunter2-journal";
/// Text only sshd's entries (and another unit's message about nginx) hold.
const OTHER_UNIT: &str = "sshd-only-marker";

/// One entry of web-1, the fixture's agent (see [`journal_export::entry`]).
fn entry(at_micros: u128, seq: u64, fields: &[(&str, &str)]) -> String {
    journal_export::entry(at_micros, seq, "web-1", fields)
}

/// The journal the tests read: nginx's own entries (one two hours old, one holding a secret),
/// systemd's message about nginx, sshd's entries, and a root process of sshd's naming nginx as
/// the object of its message (`journalctl --unit nginx.service` returns that one; the agent
/// must not serve it: it is not nginx's).
fn fixture() -> anyhow::Result<(Fixture, PathBuf)> {
    fixture_with("")
}

/// [`fixture`], with `extra` added to the agent's configuration.
fn fixture_with(extra: &str) -> anyhow::Result<(Fixture, PathBuf)> {
    // `[journal] directory` is relative to the agent's configuration; it need not exist when
    // the agent starts.
    let f = Fixture::start_with(&format!("{extra}\n[journal]\ndirectory = \"journal\"\n"))?;
    let journal = f
        .cluster
        .agents
        .get("web-1")
        .ok_or_else(|| anyhow::anyhow!("no web-1"))?
        .dir
        .join("journal");
    std::fs::create_dir_all(&journal)?;
    let now = now_micros();
    let minute = 60_000_000u128;
    let mut export = String::new();
    export.push_str(&entry(
        now - 120 * minute,
        1,
        &[
            ("_SYSTEMD_UNIT", "nginx.service"),
            ("_PID", "1234"),
            ("MESSAGE", "old entry from two hours ago"),
        ],
    ));
    export.push_str(&entry(
        now - 10 * minute,
        2,
        &[
            ("_SYSTEMD_UNIT", "nginx.service"),
            ("_PID", "1234"),
            (
                "MESSAGE",
                &format!("GET /login user=alice password={SECRET} status=200"),
            ),
        ],
    ));
    export.push_str(&entry(
        now - 9 * minute,
        3,
        &[
            ("_SYSTEMD_UNIT", "sshd.service"),
            ("_PID", "42"),
            ("MESSAGE", &format!("Accepted publickey {OTHER_UNIT}")),
        ],
    ));
    export.push_str(&entry(
        now - 8 * minute,
        4,
        &[
            ("_SYSTEMD_UNIT", "init.scope"),
            ("_PID", "1"),
            ("UNIT", "nginx.service"),
            (
                "MESSAGE",
                "Started nginx.service - A high performance web server.",
            ),
        ],
    ));
    export.push_str(&entry(
        now - 7 * minute,
        5,
        &[
            ("_SYSTEMD_UNIT", "sshd.service"),
            ("_PID", "43"),
            ("_UID", "0"),
            ("OBJECT_SYSTEMD_UNIT", "nginx.service"),
            ("MESSAGE", &format!("about nginx, from sshd {OTHER_UNIT}")),
        ],
    ));
    export.push_str(&entry(
        now - 6 * minute,
        6,
        &[
            ("_SYSTEMD_UNIT", "nginx.service"),
            ("_PID", "1234"),
            ("MESSAGE", "GET /health status=200"),
        ],
    ));
    write_journal(&journal, export.as_bytes())?;
    // journalctl itself returns the foreign entry for nginx: the agent's own check is what
    // keeps it out (the test would prove nothing otherwise).
    let direct = Command::new("journalctl")
        .args(["--output=cat", "--no-pager", "--unit=nginx.service"])
        .arg(format!("--directory={}", journal.display()))
        .output()?;
    anyhow::ensure!(
        String::from_utf8_lossy(&direct.stdout).contains(OTHER_UNIT),
        "journalctl --unit did not return the other unit's entry about nginx: {}",
        String::from_utf8_lossy(&direct.stdout)
    );
    Ok((f, journal))
}

/// Issues `subject` a grant for journal unit `unit` on web-1 (default redaction) and waits
/// until web-1 holds it.
fn unit_grant(f: &Fixture, subject: &str, unit: &str) -> anyhow::Result<String> {
    let id = f.cluster.issue_unit_grant(subject, &["web-1"], unit)?;
    f.cluster.wait_for_grant("web-1", &id)?;
    Ok(id)
}

fn journal(f: &Fixture, user: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut all = vec!["journal"];
    all.extend_from_slice(args);
    f.logs(user, &all)
}

/// Every record web-1 wrote conforms to the official OCSF schema and its catalogue entry.
fn conformant(f: &Fixture) {
    let schema = loggate_ocsf_validate::Schema::official().expect("vendored OCSF schema");
    for r in &f.cluster.agent_audit_raw("web-1") {
        assert_eq!(
            loggate_core::audit::ocsf::catalogue_problems(r),
            Vec::<String>::new(),
            "{r}"
        );
        let report = schema.validate(r);
        assert!(report.is_conformant(), "{report}\n{r}");
    }
}

#[test]
fn journal_read_serves_the_granted_units_entries_redacted_and_no_other_units() -> anyhow::Result<()>
{
    let (f, _dir) = fixture()?;
    let id = unit_grant(&f, "alice", "nginx.service")?;
    let out = journal(&f, "alice", &["--unit", "nginx.service"])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].ends_with(" web-1 nginx.service[1234]: old entry from two hours ago"),
        "{stdout}"
    );
    assert!(
        lines[1].contains(" web-1 nginx.service[1234]: GET /login user=alice password="),
        "{stdout}"
    );
    assert!(
        lines[2]
            .ends_with(" web-1 systemd[1]: Started nginx.service - A high performance web server."),
        "{stdout}"
    );
    assert!(
        lines[3].ends_with(" web-1 nginx.service[1234]: GET /health status=200"),
        "{stdout}"
    );
    // An RFC 3339 UTC time with microseconds first.
    let stamp = lines[0].split(' ').next().unwrap_or_default();
    assert!(
        stamp.len() == 27 && stamp.ends_with('Z') && stamp.as_bytes()[19] == b'.',
        "{stamp}"
    );
    assert!(!stdout.contains(SECRET), "the secret was served: {stdout}");
    assert!(
        !stdout.contains(OTHER_UNIT),
        "another unit's entry was served: {stdout}"
    );

    let allowed = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.allowed" && e["path"] == "journal:nginx.service"
        })?;
    assert_eq!(allowed["grant_id"], id.as_str());
    assert_eq!(allowed["mode"], "journal");
    assert_eq!(allowed["subject"], "spiffe://loggate.local/user/alice");
    let finished = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.finished" && e["path"] == "journal:nginx.service"
        })?;
    assert_eq!(finished["end_reason"], "eof", "{finished}");
    assert_eq!(finished["bytes"], stdout.len() as u64, "{finished}");
    assert!(
        finished["redactions"]
            .as_object()
            .is_some_and(|r| !r.is_empty()),
        "{finished}"
    );

    // --since: the two-hour-old entry is left out; --grep: on the redacted line.
    let out = journal(&f, "alice", &["--unit", "nginx.service", "--since", "1h"])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(!stdout.contains("two hours ago"), "{stdout}");
    let out = journal(
        &f,
        "alice",
        &["--unit", "nginx.service", "--grep", "status=200"],
    )?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    let out = journal(&f, "alice", &["--unit", "nginx.service", "--grep", SECRET])?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(text(&out).0, "", "a redacted value was found by grep");

    // A unit alice holds no grant for: refused and audited.
    let out = journal(&f, "alice", &["--unit", "sshd.service"])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("not the journal of sshd.service"),
        "{stderr}"
    );
    let denied = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["path"] == "journal:sshd.service"
        })?;
    assert_eq!(denied["reason_code"], "unit_not_covered");
    conformant(&f);
    Ok(())
}

#[test]
fn a_file_grant_does_not_open_the_journal_and_a_unit_grant_opens_no_file() -> anyhow::Result<()> {
    let (f, _dir) = fixture()?;
    // alice: a grant for every file under the root; bob: for nginx's journal only.
    f.grant("alice", "30m")?;
    unit_grant(&f, "bob", "nginx.service")?;
    let out = journal(&f, "alice", &["--unit", "nginx.service"])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("no journal unit (it is a grant for files)"),
        "{stderr}"
    );
    let denied = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["path"] == "journal:nginx.service"
        })?;
    assert_eq!(denied["reason_code"], "unit_not_covered");
    assert_eq!(denied["subject"], "spiffe://loggate.local/user/alice");

    let out = f.logs("bob", &["cat", &f.api_log()])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let denied = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["subject"] == "spiffe://loggate.local/user/bob"
        })?;
    assert_eq!(denied["reason_code"], "path_not_covered");
    // Nor does a listing show bob a file.
    let out = f.logs("bob", &["ls"])?;
    assert!(text(&out).0.is_empty(), "{}", text(&out).0);
    assert!(
        !f.cluster
            .agent_audit("web-1")
            .iter()
            .any(|e| e["event"] == "read.allowed"
                && e["subject"] == "spiffe://loggate.local/user/bob")
    );
    Ok(())
}

/// A journal read's `read.*` records name the unit as an OCSF `Journal Unit` (the agent sets
/// `resource_kind` `journal_unit`; the path's text decides nothing), allowed, finished and
/// denied; a file read's name a `Log File` by its path as before, without `resource_kind`.
/// Every record conforms to the official OCSF schema.
#[test]
fn a_journal_reads_records_name_a_journal_unit_and_a_file_reads_a_log_file() -> anyhow::Result<()> {
    let (f, _dir) = fixture()?;
    unit_grant(&f, "alice", "nginx.service")?;
    f.grant("bob", "30m")?;
    let out = journal(&f, "alice", &["--unit", "nginx.service"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    let out = journal(&f, "alice", &["--unit", "sshd.service"])?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    let out = f.logs("bob", &["cat", &f.api_log()])?;
    assert!(out.status.success(), "{}", text(&out).1);
    const BOB: &str = "spiffe://loggate.local/user/bob";
    for (event, subject) in [
        ("read.finished", "spiffe://loggate.local/user/alice"),
        ("read.denied", "spiffe://loggate.local/user/alice"),
        ("read.finished", BOB),
    ] {
        f.cluster
            .wait_for_audit("web-1", Duration::from_secs(5), |e| {
                e["event"] == event && e["subject"] == subject
            })?;
    }
    let raw = f.cluster.agent_audit_raw("web-1");
    let records = |event: &str,
                   pick: &dyn Fn(&serde_json::Value) -> bool|
     -> Vec<serde_json::Value> {
        raw.iter()
            .filter(|r| {
                loggate_core::audit::event_name(r) == Some(event) && pick(&r["unmapped"]["loggate"])
            })
            .cloned()
            .collect()
    };
    for (event, path, unit) in [
        ("read.allowed", "journal:nginx.service", "nginx.service"),
        ("read.finished", "journal:nginx.service", "nginx.service"),
        ("read.denied", "journal:sshd.service", "sshd.service"),
    ] {
        let found = records(event, &|l| l["path"] == path);
        assert_eq!(found.len(), 1, "{event} of {path}: {found:?}");
        let r = &found[0];
        assert_eq!(
            r["resources"],
            serde_json::json!([{"type": "Journal Unit", "name": unit}]),
            "{r}"
        );
        assert_eq!(
            r["unmapped"]["loggate"]["resource_kind"], "journal_unit",
            "{r}"
        );
        assert!(
            r["observables"]
                .as_array()
                .is_some_and(|o| o.iter().any(|o| o["type_id"] == 38 && o["value"] == unit)),
            "{r}"
        );
    }
    for event in ["read.allowed", "read.finished"] {
        let found = records(event, &|l| l["subject"] == BOB);
        assert_eq!(found.len(), 1, "{event} of bob's file read: {found:?}");
        let r = &found[0];
        assert_eq!(r["resources"][0]["type"], "Log File", "{r}");
        assert_eq!(
            r["resources"][0]["name"], r["unmapped"]["loggate"]["path"],
            "{r}"
        );
        assert!(
            r["unmapped"]["loggate"].get("resource_kind").is_none(),
            "a file read's record is as before: {r}"
        );
    }
    conformant(&f);
    Ok(())
}

/// The CLI refuses a glob, and so does the agent itself when a client sends one: journalctl's
/// `--unit` would take it as a pattern over every unit.
#[tokio::test(flavor = "multi_thread")]
async fn a_unit_with_a_glob_is_refused_by_the_cli_and_by_the_agent() -> anyhow::Result<()> {
    let (f, _dir) = tokio::task::spawn_blocking(fixture).await??;
    let f = tokio::task::spawn_blocking(move || -> anyhow::Result<Fixture> {
        unit_grant(&f, "alice", "nginx.service")?;
        let out = journal(&f, "alice", &["--unit", "*"])?;
        assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
        assert!(text(&out).1.contains("glob character"), "{}", text(&out).1);
        Ok(f)
    })
    .await??;
    let files = f.cluster.tls_files_of("users/alice");
    let channel = files
        .endpoint(
            &f.cluster.agent_addr("web-1"),
            loggate_core::tls::Server::Agent("web-1"),
        )?
        .connect()
        .await?;
    let mut client = loggate_proto::agent_client::AgentClient::new(channel);
    for unit in [
        "*",
        "nginx*",
        "ngin?.service",
        "[n]ginx.service",
        "--directory=/",
        "nginx",
        "",
    ] {
        let refused = client
            .read_journal(loggate_proto::ReadJournalRequest {
                unit: unit.to_string(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{unit}: {refused:?}"
        );
        assert!(
            refused.message().contains("is not a systemd unit name"),
            "{refused:?}"
        );
    }
    let f = tokio::task::spawn_blocking(move || f).await?;
    let denials: Vec<_> = f
        .cluster
        .agent_audit("web-1")
        .into_iter()
        .filter(|e| e["event"] == "read.denied" && e["reason_code"] == "unit_invalid")
        .collect();
    assert_eq!(denials.len(), 7, "{denials:?}");
    assert!(!f
        .cluster
        .agent_audit("web-1")
        .iter()
        .any(|e| e["event"] == "read.allowed"));
    // Each refusal names a Journal Unit by the requester's text, never by an empty name (the
    // empty unit's path is `journal:`), and every record conforms to the OCSF schema.
    let refusals: Vec<_> = f
        .cluster
        .agent_audit_raw("web-1")
        .into_iter()
        .filter(|r| r["unmapped"]["loggate"]["reason_code"] == "unit_invalid")
        .collect();
    assert_eq!(refusals.len(), 7, "{refusals:?}");
    for r in &refusals {
        let name = r["resources"][0]["name"].as_str().unwrap_or_default();
        assert_eq!(r["resources"][0]["type"], "Journal Unit", "{r}");
        assert!(!name.is_empty(), "a refusal names no resource: {r}");
        assert!(
            r["observables"]
                .as_array()
                .is_some_and(|o| o.iter().any(|o| o["type_id"] == 38 && o["value"] == name)),
            "{r}"
        );
    }
    assert!(
        refusals
            .iter()
            .any(|r| r["resources"][0]["name"] == "journal:"),
        "the empty unit is named by its whole path: {refusals:?}"
    );
    tokio::task::spawn_blocking(move || conformant(&f)).await?;
    Ok(())
}

/// A journal read with a certificate of our CA that is not a user's (an agent's) is refused
/// by the identity check, and its `read.denied identity_refused` record names a Journal Unit
/// (`resource_kind` `journal_unit`), as every other refusal of a journal read does.
#[test]
fn a_journal_read_with_an_agents_certificate_is_refused_as_a_journal_unit() -> anyhow::Result<()> {
    let (f, _dir) = fixture()?;
    unit_grant(&f, "alice", "nginx.service")?;
    let refused = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let files = f.cluster.tls_files_of("agents/web-1");
            let channel = files
                .endpoint(
                    &f.cluster.agent_addr("web-1"),
                    loggate_core::tls::Server::Agent("web-1"),
                )?
                .connect()
                .await?;
            let mut client = loggate_proto::agent_client::AgentClient::new(channel);
            let answer = client
                .read_journal(loggate_proto::ReadJournalRequest {
                    unit: "nginx.service".to_string(),
                    ..Default::default()
                })
                .await;
            anyhow::Ok(answer.err())
        })?
        .ok_or_else(|| anyhow::anyhow!("an agent's certificate was served the journal"))?;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["reason_code"] == "identity_refused"
        })?;
    let denials: Vec<_> = f
        .cluster
        .agent_audit_raw("web-1")
        .into_iter()
        .filter(|r| r["unmapped"]["loggate"]["reason_code"] == "identity_refused")
        .collect();
    assert_eq!(denials.len(), 1, "{denials:?}");
    let r = &denials[0];
    assert_eq!(
        r["unmapped"]["loggate"]["path"], "journal:nginx.service",
        "{r}"
    );
    assert_eq!(
        r["unmapped"]["loggate"]["resource_kind"], "journal_unit",
        "{r}"
    );
    assert_eq!(
        r["resources"],
        serde_json::json!([{"type": "Journal Unit", "name": "nginx.service"}]),
        "{r}"
    );
    assert!(!f
        .cluster
        .agent_audit("web-1")
        .iter()
        .any(|e| e["event"] == "read.allowed"));
    conformant(&f);
    Ok(())
}

/// The `journalctl` processes reading `dir` now.
fn journalctl_reading(dir: &Path) -> Vec<u32> {
    let wanted = format!("--directory={}", dir.display());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|a| a == wanted.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn revocation_cuts_a_journal_follow_and_ends_its_journalctl() -> anyhow::Result<()> {
    let (f, dir) = fixture()?;
    let id = unit_grant(&f, "alice", "nginx.service")?;
    let mut child = f
        .cluster
        .logs_cmd(
            "alice",
            "web-1",
            &["journal", "--unit", "nginx.service", "--follow"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let allowed = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.allowed" && e["path"] == "journal:nginx.service"
        })?;
    assert_eq!(allowed["mode"], "journal_follow");
    // New entries arrive while following (only new ones: no --since), the other unit's not.
    let deadline = Instant::now() + Duration::from_secs(10);
    while journalctl_reading(&dir).is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "no journalctl started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let now = now_micros();
    write_journal(
        &dir,
        (entry(
            now,
            100,
            &[
                ("_SYSTEMD_UNIT", "sshd.service"),
                ("_PID", "42"),
                ("MESSAGE", OTHER_UNIT),
            ],
        ) + &entry(
            now + 1,
            101,
            &[
                ("_SYSTEMD_UNIT", "nginx.service"),
                ("_PID", "1234"),
                ("MESSAGE", &format!("live password={SECRET}")),
            ],
        ))
            .as_bytes(),
    )?;
    let line = rx.recv_timeout(Duration::from_secs(10))?;
    assert!(
        line.contains(" web-1 nginx.service[1234]: live password="),
        "{line}"
    );
    assert!(
        !line.contains(SECRET) && !line.contains(OTHER_UNIT),
        "{line}"
    );

    let out = f.cluster.run_cli(
        "admin",
        &["grant", "revoke", &id, "--reason", "incident closed"],
    )?;
    assert!(out.status.success(), "{}", text(&out).1);
    let revoked = Instant::now();
    while child.try_wait()?.is_none() {
        if revoked.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            anyhow::bail!("the journal stream was not cut within 5 s of the revocation");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = revoked.elapsed();
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("grant {id} was revoked")),
        "{stderr}"
    );
    assert!(took <= Duration::from_secs(2), "cut after {took:?}");
    let finished = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.finished" && e["path"] == "journal:nginx.service"
        })?;
    assert_eq!(finished["end_reason"], "grant_revoked", "{finished}");
    // The agent's journalctl is gone with the stream.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !journalctl_reading(&dir).is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "journalctl still runs after the stream ended: {:?}",
            journalctl_reading(&dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    conformant(&f);
    Ok(())
}

/// The request path: a role's `units` decide which units may be asked for (`grant request
/// --unit`); the grant names them and no path, the agent installs it (its `grant.received`
/// names `journal:<unit>`), and a unit or a path the role does not list is refused.
#[test]
fn a_request_for_a_unit_is_granted_only_under_a_role_listing_it() -> anyhow::Result<()> {
    let f = Fixture::start_with_policy(
        r#"
[[roles]]
name = "web-journal"
users = ["alice"]
hosts = ["web-1"]
units = ["nginx.service", "app-*.service"]
max_ttl = "1h"
approval = "auto"
"#,
    )?;
    let request = |args: &[&str]| {
        let mut all = vec![
            "grant", "request", "--host", "web-1", "--ttl", "10m", "--reason", "INC-13", "--json",
        ];
        all.extend_from_slice(args);
        f.cluster.run_cli("alice", &all)
    };
    let out = request(&["--unit", "nginx.service", "--unit", "app-web.service"])?;
    assert!(out.status.success(), "{:?}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(r["state"], "approved", "{r}");
    assert_eq!(r["role"], "web-journal");
    assert_eq!(
        r["units"],
        serde_json::json!(["nginx.service", "app-web.service"])
    );
    assert_eq!(
        r["grant"]["units"],
        serde_json::json!(["nginx.service", "app-web.service"])
    );
    assert_eq!(r["grant"]["paths"], serde_json::json!([]));
    let id = r["grant_id"].as_str().unwrap_or_default().to_string();
    f.cluster.wait_for_grant("web-1", &id)?;
    let received = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "grant.received" && e["grant_id"] == id.as_str()
        })?;
    assert_eq!(
        received["paths"],
        serde_json::json!(["journal:nginx.service", "journal:app-web.service"])
    );
    // The grant opens no file.
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));

    for (args, says) in [
        (
            &["--unit", "sshd.service"][..],
            "does not cover journal unit sshd.service",
        ),
        (
            &["--path", "/var/log/syslog"][..],
            "does not cover path /var/log/syslog",
        ),
    ] {
        let out = request(args)?;
        assert_eq!(out.status.code(), Some(3), "{args:?}: {:?}", text(&out));
        assert!(text(&out).1.contains(says), "{args:?}: {}", text(&out).1);
    }
    let out = request(&["--unit", "nginx*"])?;
    assert!(!out.status.success(), "{:?}", text(&out));
    assert!(text(&out).1.contains("glob character"), "{}", text(&out).1);
    let refused: Vec<_> = f
        .cluster
        .controller_events()
        .into_iter()
        .filter(|e| e["event"] == "access.request_refused")
        .collect();
    assert!(
        refused
            .iter()
            .any(|e| e["paths"] == serde_json::json!(["journal:sshd.service"])),
        "{refused:?}"
    );
    let schema = loggate_ocsf_validate::Schema::official().expect("vendored OCSF schema");
    for r in f
        .cluster
        .controller_audit_raw()
        .iter()
        .chain(&f.cluster.agent_audit_raw("web-1"))
    {
        let report = schema.validate(r);
        assert!(report.is_conformant(), "{report}\n{r}");
    }
    Ok(())
}

/// Waits until no `journalctl` reads `dir`; fails after 5 s naming the ones left.
fn no_journalctl_reading(dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !journalctl_reading(dir).is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "journalctl still runs after its stream ended: {:?}",
            journalctl_reading(dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A following read whose client goes away, and one whose agent stops: each stream ends
/// (`client_closed`, `agent_stopping`, audited) and its `journalctl` with it.
#[test]
fn the_journalctl_of_a_follow_ends_when_the_client_leaves_or_the_agent_stops() -> anyhow::Result<()>
{
    let (mut f, dir) = fixture()?;
    unit_grant(&f, "alice", "nginx.service")?;
    let follow = |f: &Fixture| {
        f.cluster
            .logs_cmd(
                "alice",
                "web-1",
                &["journal", "--unit", "nginx.service", "--follow"],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    let started = |f: &Fixture, n: usize| -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while f
            .cluster
            .agent_audit("web-1")
            .iter()
            .filter(|e| e["event"] == "read.allowed" && e["mode"] == "journal_follow")
            .count()
            < n
            || journalctl_reading(&dir).is_empty()
        {
            anyhow::ensure!(Instant::now() < deadline, "the follow did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    let mut client = follow(&f)?;
    started(&f, 1)?;
    client.kill()?;
    client.wait()?;
    no_journalctl_reading(&dir)?;
    let end = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.finished" && e["path"] == "journal:nginx.service"
        })?;
    assert_eq!(end["end_reason"], "client_closed", "{end}");

    let mut client = follow(&f)?;
    started(&f, 2)?;
    f.cluster.stop_agent("web-1");
    no_journalctl_reading(&dir)?;
    let _ = client.wait()?;
    let ends: Vec<_> = f
        .cluster
        .agent_audit("web-1")
        .into_iter()
        .filter(|e| e["event"] == "read.finished" && e["path"] == "journal:nginx.service")
        .map(|e| e["end_reason"].clone())
        .collect();
    assert_eq!(ends, ["client_closed", "agent_stopping"], "{ends:?}");
    Ok(())
}

/// Review finding 1: one entry of 200,000 newlines (400 KB in the journal) became one 11 MB
/// message, past the client's 4 MiB decode limit: every read of the unit failed, while the
/// audit said 11 MB were served. Now one entry yields a bounded number of lines, sent in
/// pieces of at most 64 KiB through the shared queue budget; the rest is counted as cut, the
/// entries after it are served, and `bytes` is what the client got.
#[test]
fn an_entry_of_many_newlines_is_bounded_and_the_entries_after_it_are_served() -> anyhow::Result<()>
{
    let (f, dir) = fixture()?;
    unit_grant(&f, "alice", "app.service")?;
    let now = now_micros();
    let mut export = entry(
        now - 3_000_000,
        200,
        &[
            ("_SYSTEMD_UNIT", "app.service"),
            ("_PID", "77"),
            ("MESSAGE", "before poison"),
        ],
    )
    .into_bytes();
    export.extend(journal_export::binary_entry(
        now - 2_000_000,
        201,
        "web-1",
        "app.service",
        &vec![b'\n'; 200_000],
    ));
    export.extend(
        entry(
            now - 1_000_000,
            202,
            &[
                ("_SYSTEMD_UNIT", "app.service"),
                ("_PID", "77"),
                ("MESSAGE", "after poison"),
            ],
        )
        .into_bytes(),
    );
    write_journal(&dir, &export)?;
    let out = journal(&f, "alice", &["--unit", "app.service"])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("app.service[77]: before poison"),
        "{stderr}"
    );
    assert!(stdout.contains("app.service[77]: after poison"), "{stderr}");
    assert!(stdout.len() < 4 << 20, "{} bytes served", stdout.len());
    let finished = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.finished" && e["path"] == "journal:app.service"
        })?;
    assert_eq!(finished["end_reason"], "eof", "{finished}");
    assert!(
        finished["lines_cut"].as_u64().unwrap_or(0) >= 1,
        "{finished}"
    );
    assert_eq!(finished["bytes"], stdout.len() as u64, "{finished}");
    conformant(&f);
    Ok(())
}

/// A private key an application printed to stdout: one journal entry per line.
fn key_entries(start_micros: u128, seq: u64) -> String {
    let key = |at, seq, message: &str| {
        entry(
            at,
            seq,
            &[
                ("_SYSTEMD_UNIT", "app.service"),
                ("_PID", "77"),
                ("MESSAGE", message),
            ],
        )
    };
    key(start_micros, seq, "-----BEGIN RSA PRIVATE KEY-----")
        + &key(
            start_micros + 10_000_000,
            seq + 1,
            "MIIEpAIBAAKCAQEA0Z3VS5JJcds3xfnKEYBODYSECRET",
        )
        + &key(
            start_micros + 20_000_000,
            seq + 2,
            "-----END RSA PRIVATE KEY-----",
        )
}

/// Review finding 2: `--since` 25 s back started between a key's BEGIN (30 s back) and its
/// body, so the redactor never saw BEGIN and served the body. Now the entries before the
/// start are looked through (newest first, bounded) for the last key marker.
#[test]
fn a_since_starting_inside_a_private_key_block_does_not_serve_its_body() -> anyhow::Result<()> {
    let (f, dir) = fixture()?;
    unit_grant(&f, "alice", "app.service")?;
    write_journal(&dir, key_entries(now_micros() - 30_000_000, 300).as_bytes())?;
    let out = journal(&f, "alice", &["--unit", "app.service"])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains("KEYBODY"), "{stdout}");
    let out = journal(&f, "alice", &["--unit", "app.service", "--since", "25s"])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stdout.contains("KEYBODY"),
        "the key's body was served: {stdout}"
    );
    Ok(())
}

/// Review finding 2, `--follow`: started after a key's BEGIN was written, the body that
/// follows is not served; an entry after the key's END is.
#[test]
fn a_follow_started_inside_a_private_key_block_does_not_serve_its_body() -> anyhow::Result<()> {
    let (f, dir) = fixture()?;
    unit_grant(&f, "alice", "app.service")?;
    let begin = now_micros() - 5_000_000;
    let all = key_entries(begin, 400);
    // BEGIN only, before the follow starts.
    let split = all
        .find("\n\n")
        .ok_or_else(|| anyhow::anyhow!("no entry"))?
        + 2;
    write_journal(&dir, &all.as_bytes()[..split])?;
    let mut child = f
        .cluster
        .logs_cmd(
            "alice",
            "web-1",
            &["journal", "--unit", "app.service", "--follow"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The follow's own journalctl (not its look-back) is running.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let following = journalctl_reading(&dir).into_iter().any(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .any(|a| a == b"--follow")
        });
        if following {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no following journalctl");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let now = now_micros();
    let body_and_end = key_entries(now, 500);
    let body_and_end = &body_and_end[body_and_end
        .find("\n\n")
        .ok_or_else(|| anyhow::anyhow!("no entry"))?
        + 2..];
    let after = entry(
        now + 30_000_000,
        510,
        &[
            ("_SYSTEMD_UNIT", "app.service"),
            ("_PID", "77"),
            ("MESSAGE", "after the key"),
        ],
    );
    write_journal(&dir, (body_and_end.to_string() + &after).as_bytes())?;
    let mut served = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !served.iter().any(|l: &String| l.contains("after the key")) {
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(!left.is_zero(), "not served: {served:?}");
        if let Ok(line) = rx.recv_timeout(left) {
            served.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !served.iter().any(|l| l.contains("KEYBODY")),
        "the key's body was served: {served:?}"
    );
    Ok(())
}

/// Review finding 6: a `since_unix_ms` no journal can hold (negative, past the clock) was
/// allowed, audited as `read.allowed` and then failed in journalctl. Now it is refused first,
/// as bad input, and audited as a denial.
#[tokio::test(flavor = "multi_thread")]
async fn a_journal_read_with_an_impossible_since_is_refused_before_it_is_allowed(
) -> anyhow::Result<()> {
    let (f, dir) = tokio::task::spawn_blocking(fixture).await??;
    let f = tokio::task::spawn_blocking(move || -> anyhow::Result<Fixture> {
        unit_grant(&f, "alice", "nginx.service")?;
        Ok(f)
    })
    .await??;
    let files = f.cluster.tls_files_of("users/alice");
    let channel = files
        .endpoint(
            &f.cluster.agent_addr("web-1"),
            loggate_core::tls::Server::Agent("web-1"),
        )?
        .connect()
        .await?;
    let mut client = loggate_proto::agent_client::AgentClient::new(channel);
    for since in [-5000, 9_223_372_036_854_775_000] {
        let refused = client
            .read_journal(loggate_proto::ReadJournalRequest {
                unit: "nginx.service".to_string(),
                since_unix_ms: since,
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{since}: {refused:?}"
        );
        assert!(refused.message().contains("--since"), "{refused:?}");
        assert!(journalctl_reading(&dir).is_empty());
    }
    let f = tokio::task::spawn_blocking(move || f).await?;
    let audit = f.cluster.agent_audit("web-1");
    let denials = audit
        .iter()
        .filter(|e| e["event"] == "read.denied" && e["reason_code"] == "since_invalid")
        .count();
    assert_eq!(denials, 2, "{audit:?}");
    assert!(!audit.iter().any(|e| e["event"] == "read.allowed"));
    Ok(())
}

/// Review finding 3: a journal grep took no place under `limits.max_grep_streams` (nor the
/// reader's grep time). Now, with the one place taken by a following journal grep, a second
/// journal grep is refused `grep_streams_busy`, audited; once the first ends, it runs.
#[test]
fn a_journal_grep_takes_a_grep_stream_place() -> anyhow::Result<()> {
    let (f, dir) = fixture_with("[limits]\nmax_grep_streams = 1\n")?;
    unit_grant(&f, "alice", "nginx.service")?;
    let mut child = f
        .cluster
        .logs_cmd(
            "alice",
            "web-1",
            &[
                "journal",
                "--unit",
                "nginx.service",
                "--follow",
                "--grep",
                "status",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.allowed" && e["mode"] == "journal_follow"
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while journalctl_reading(&dir).is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "no journalctl started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = journal(&f, "alice", &["--unit", "nginx.service", "--grep", "GET"])?;
    let _ = child.kill();
    let _ = child.wait();
    assert!(!out.status.success(), "{}", text(&out).0);
    assert!(text(&out).1.contains("grep streams"), "{}", text(&out).1);
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["reason_code"] == "grep_streams_busy"
        })?;
    // The follow's place is given back when it ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = journal(&f, "alice", &["--unit", "nginx.service", "--grep", "GET"])?;
        if out.status.success() {
            assert_eq!(text(&out).0.lines().count(), 2, "{}", text(&out).0);
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{}", text(&out).1);
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Whether process `pid` is gone (or a zombie waiting to be reaped).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// Review finding 5 (and J4's gap): a SIGKILLed agent could not kill its `journalctl`; a
/// following one lived on until its next write. Now `PR_SET_PDEATHSIG(SIGKILL)` ends it with
/// the agent. A stub `journalctl` (configured path) records its pid and capabilities, then
/// waits without writing.
#[test]
fn the_journalctl_of_a_sigkilled_agent_dies_with_it_and_holds_no_ambient_capability(
) -> anyhow::Result<()> {
    let stub_dir =
        std::env::temp_dir().join(format!("loggate-journal-stub-{}", std::process::id()));
    std::fs::create_dir_all(&stub_dir)?;
    let stub = stub_dir.join("journalctl");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\ncase \"$*\" in *--reverse*) exit 0;; esac\n\
             grep -E '^Cap(Amb|Eff)' /proc/self/status > {dir}/caps\n\
             echo $$ > {dir}/pid.tmp && mv {dir}/pid.tmp {dir}/pid\nexec sleep 600\n",
            dir = stub_dir.display()
        ),
    )?;
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut f = Fixture::start_with(&format!("[journal]\njournalctl = \"{}\"\n", stub.display()))?;
    unit_grant(&f, "alice", "nginx.service")?;
    let mut child = f
        .cluster
        .logs_cmd(
            "alice",
            "web-1",
            &["journal", "--unit", "nginx.service", "--follow"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: u32 = loop {
        if let Ok(pid) = std::fs::read_to_string(stub_dir.join("pid")) {
            break pid.trim().parse()?;
        }
        anyhow::ensure!(Instant::now() < deadline, "the stub journalctl never ran");
        std::thread::sleep(Duration::from_millis(20));
    };
    let caps = std::fs::read_to_string(stub_dir.join("caps"))?;
    assert!(
        caps.lines()
            .any(|l| l.starts_with("CapAmb:") && l.ends_with("0000000000000000")),
        "{caps}"
    );
    assert!(!gone(pid));
    f.cluster.kill_agent("web-1");
    let deadline = Instant::now() + Duration::from_secs(1);
    while !gone(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survived = !gone(pid);
    if survived {
        // SAFETY: kill(2) on a pid this test's stub wrote; no memory involved.
        unsafe {
            libc::kill(i32::try_from(pid)?, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&stub_dir);
    assert!(!survived, "journalctl outlived the SIGKILLed agent");
    Ok(())
}

/// Review finding 3, the reader's grep time: with one second of matching a minute, spent by a
/// slow file grep (cut `budget_exceeded`), a journal grep is refused `grep_budget_spent`,
/// audited, as a second file grep is; before, the journal grep ran on its own budget.
#[test]
fn a_journal_grep_is_refused_once_the_readers_grep_time_is_spent() -> anyhow::Result<()> {
    const SLOW_PATTERN: &str = r"(?s-u:.){0,3000}[\x80-\xff]";
    let (f, _dir) = fixture_with(
        "[limits]\nmax_regex_bytes = 1048576\nmax_line_bytes = 2048\n\
         grep_seconds_per_subject_per_minute = 1\n",
    )?;
    unit_grant(&f, "alice", "nginx.service")?;
    f.grant("alice", "30m")?;
    let line = format!("2026-12-04T10:00:00Z INFO {}\n", "abcdefghij".repeat(147));
    let slow = f.logs.join("slow.log");
    std::fs::write(&slow, line.repeat(3000))?;
    let out = f
        .cluster
        .logs_cmd(
            "alice",
            "web-1",
            &["grep", SLOW_PATTERN, &slow.display().to_string()],
        )
        .output()?;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("you used up your grep time"),
        "{}",
        text(&out).1
    );
    let out = journal(&f, "alice", &["--unit", "nginx.service", "--grep", "GET"])?;
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("you used up your grep time"), "{stderr}");
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied"
                && e["reason_code"] == "grep_budget_spent"
                && e["path"] == "journal:nginx.service"
        })?;
    // Not a grep: not charged.
    let out = journal(&f, "alice", &["--unit", "nginx.service"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    Ok(())
}
