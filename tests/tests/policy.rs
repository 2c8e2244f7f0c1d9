//! End-to-end: the governance layer (issue 11) with the real binaries — a request under the
//! access policy, separation of duties, approval, push, read, revoke; the access clock starting
//! at approval; TTL capped by the role; pending expiry; break-glass; policy reload (valid,
//! invalid, SIGHUP), each with its audit record.

use loggate_tests::{text, Fixture};
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// alice (payments) reads web-1 (env=prod) under a role one sre member (bob) approves;
/// auto for a short role; break-glass for bob.
const POLICY: &str = r#"
[groups]
sre = ["bob"]
payments = ["alice"]
leads = ["bob", "admin"]

[agents.web-1]
labels = { env = "prod", team = "payments" }

[[roles]]
name = "payments-prod"
groups = ["payments"]
selectors = ["env=prod,team=payments"]
paths = ["{logs}/*.log"]
max_ttl = "2h"
approval = "approvers"
approvers = 1
approver_groups = ["sre"]

[[roles]]
name = "payments-raw"
users = ["alice"]
hosts = ["web-1"]
paths = ["{logs}/api.log"]
max_ttl = "10m"
redaction = ["raw"]
approval = "auto"

[[roles]]
name = "two-leads"
users = ["alice"]
hosts = ["web-1"]
paths = ["{logs}/two/app.log"]
max_ttl = "1h"
approval = "approvers"
approvers = 2
approver_groups = ["leads"]

[[roles]]
name = "leads-self"
users = ["bob"]
hosts = ["web-1"]
paths = ["{logs}/lead/app.log"]
max_ttl = "1h"
approval = "approvers"
approver_groups = ["leads"]

[[roles]]
name = "sre-oncall"
groups = ["sre"]
hosts = ["web-1"]
paths = ["{logs}/*.log"]
max_ttl = "30m"
approval = "break_glass"
approver_groups = ["leads"]
"#;

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} / {:?}", text(out).0, text(out).1))
}

/// `grant request` as `user` with `extra` arguments, `--json`.
fn request(f: &Fixture, user: &str, path: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "grant", "request", "--host", "web-1", "--path", path, "--reason", "INC-42", "--json",
    ];
    if !extra.contains(&"--ttl") {
        args.extend_from_slice(&["--ttl", "1h"]);
    }
    args.extend_from_slice(extra);
    f.cluster.run_cli(user, &args).expect("grant request runs")
}

fn events(f: &Fixture, name: &str) -> Vec<Value> {
    f.cluster
        .controller_events()
        .into_iter()
        .filter(|e| e["event"] == name)
        .collect()
}

#[test]
fn request_approve_push_read_revoke_with_separation_of_duties() -> anyhow::Result<()> {
    let f = Fixture::start_with_policy(POLICY)?;
    let api = f.api_log();
    let out = request(&f, "alice", &f.glob(), &[]);
    assert!(out.status.success(), "{:?}", text(&out));
    let req = json_of(&out);
    let id = req["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(req["state"], "pending");
    assert_eq!(req["role"], "payments-prod");
    assert_eq!(req["approvers"], serde_json::json!(["bob"]));
    // Nothing to read while pending.
    let read = f.logs("alice", &["cat", &api])?;
    assert_eq!(read.status.code(), Some(3), "{:?}", text(&read));

    // Nobody approves their own request; an admin outside the approver groups may not either.
    let own = f.cluster.run_cli("alice", &["grant", "approve", &id])?;
    assert_eq!(own.status.code(), Some(3), "{:?}", text(&own));
    assert!(
        text(&own).1.contains("nobody reviews their own request"),
        "{:?}",
        text(&own)
    );
    let admin = f.cluster.run_cli("admin", &["grant", "approve", &id])?;
    assert_eq!(admin.status.code(), Some(3), "{:?}", text(&admin));
    assert!(
        text(&admin).1.contains("may not review request"),
        "{:?}",
        text(&admin)
    );
    let refused: Vec<String> = events(&f, "access.review_refused")
        .iter()
        .map(|e| e["reason_code"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(refused, ["self_review", "not_an_approver"]);

    // The clock starts at the approval, not at the request.
    std::thread::sleep(Duration::from_secs(2));
    let before_approval = loggate_core::grant::unix_now();
    let approved = f.cluster.run_cli(
        "bob",
        &["grant", "approve", &id, "--comment", "ok", "--json"],
    )?;
    assert!(approved.status.success(), "{:?}", text(&approved));
    let approved = json_of(&approved);
    assert_eq!(approved["state"], "approved");
    let grant = &approved["grant"];
    let grant_id = grant["id"].as_str().unwrap_or_default().to_string();
    let not_before = grant["not_before"].as_i64().unwrap_or_default();
    assert!(not_before >= before_approval, "{grant}");
    assert!(
        not_before >= req["created"].as_i64().unwrap_or_default() + 2,
        "{grant}"
    );
    assert_eq!(
        grant["not_after"].as_i64().unwrap_or_default() - not_before,
        3600
    );
    assert_eq!(grant["issuer"], "spiffe://loggate.local/user/bob");

    // Pushed, read, revoked.
    f.cluster.wait_for_grant("web-1", &grant_id)?;
    let read = f.logs("alice", &["cat", &api])?;
    assert!(read.status.success(), "{:?}", text(&read));
    assert!(text(&read).0.contains("line 49"));
    let revoked = f
        .cluster
        .run_cli("alice", &["grant", "revoke", &grant_id])?;
    assert!(revoked.status.success(), "{:?}", text(&revoked));
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(15), |e| {
            e["event"] == "grant.revoked" && e["grant_id"] == grant_id.as_str()
        })?;
    let read = f.logs("alice", &["cat", &api])?;
    assert_eq!(read.status.code(), Some(3), "{:?}", text(&read));

    // Every step on the controller's audit stream.
    let requested = events(&f, "access.requested");
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0]["approvers"], serde_json::json!(["bob"]));
    let approvals = events(&f, "access.approved");
    assert_eq!(approvals.len(), 1);
    assert_eq!(approvals[0]["grant_id"], grant_id.as_str());
    assert!(events(&f, "grant.issued")
        .iter()
        .any(|e| e["grant_id"] == grant_id.as_str()));
    // An ended request cannot be reviewed again.
    let again = f.cluster.run_cli("bob", &["grant", "approve", &id])?;
    assert_eq!(again.status.code(), Some(1), "{:?}", text(&again));
    assert!(text(&again).1.contains("not pending"), "{:?}", text(&again));
    Ok(())
}

#[test]
fn approvers_count_once_each_and_a_denial_wins() -> anyhow::Result<()> {
    let f = Fixture::start_with_policy(POLICY)?;
    let two = format!("{}/two/app.log", f.logs.display());
    // Two approvals from leads (bob, admin): bob's second approval does not count twice.
    let id = json_of(&request(&f, "alice", &two, &[]))["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let first = f
        .cluster
        .run_cli("bob", &["grant", "approve", &id, "--json"])?;
    assert!(first.status.success(), "{:?}", text(&first));
    assert_eq!(json_of(&first)["state"], "pending");
    let twice = f.cluster.run_cli("bob", &["grant", "approve", &id])?;
    assert_eq!(twice.status.code(), Some(1), "{:?}", text(&twice));
    assert!(
        text(&twice).1.contains("each approver counts once"),
        "{:?}",
        text(&twice)
    );
    let second = f
        .cluster
        .run_cli("admin", &["grant", "approve", &id, "--json"])?;
    assert_eq!(json_of(&second)["state"], "approved", "{:?}", text(&second));

    // bob is a lead himself: his own request still needs another lead.
    let lead = format!("{}/lead/app.log", f.logs.display());
    let id = json_of(&request(&f, "bob", &lead, &[]))["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let own = f.cluster.run_cli("bob", &["grant", "approve", &id])?;
    assert_eq!(own.status.code(), Some(3), "{:?}", text(&own));
    assert!(
        text(&own).1.contains("nobody reviews their own request"),
        "{:?}",
        text(&own)
    );
    let by_admin = f
        .cluster
        .run_cli("admin", &["grant", "approve", &id, "--json"])?;
    assert_eq!(
        json_of(&by_admin)["state"],
        "approved",
        "{:?}",
        text(&by_admin)
    );
    assert!(events(&f, "access.review_refused")
        .iter()
        .any(|e| e["reason_code"] == "self_review" && e["request_id"] == id.as_str()));

    // Deny wins: one approval, then a denial ends the request without a grant.
    let id = json_of(&request(&f, "alice", &two, &[]))["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    f.cluster.run_cli("bob", &["grant", "approve", &id])?;
    let no_comment = f
        .cluster
        .run_cli("admin", &["grant", "deny", &id, "--comment", ""])?;
    assert_eq!(no_comment.status.code(), Some(2), "{:?}", text(&no_comment));
    let denied = f.cluster.run_cli(
        "admin",
        &[
            "grant",
            "deny",
            &id,
            "--comment",
            "not during the freeze",
            "--json",
        ],
    )?;
    let denied = json_of(&denied);
    assert_eq!(denied["state"], "denied");
    assert_eq!(denied["grant_id"], "");
    assert_eq!(events(&f, "access.denied").len(), 1);
    Ok(())
}

#[test]
fn auto_role_grants_at_once_with_the_ttl_capped_and_raw_only_where_listed() -> anyhow::Result<()> {
    let f = Fixture::start_with_policy(POLICY)?;
    let api = f.api_log();
    let out = request(&f, "alice", &api, &["--ttl", "2h", "--redaction", "raw"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let r = json_of(&out);
    assert_eq!(
        (r["state"].as_str(), r["role"].as_str()),
        (Some("approved"), Some("payments-raw"))
    );
    assert_eq!(r["ttl_capped"], true);
    let g = &r["grant"];
    assert_eq!(
        g["not_after"].as_i64().unwrap_or(0) - g["not_before"].as_i64().unwrap_or(0),
        600
    );
    assert_eq!(g["redaction_profile"], "raw");
    // The same path with raw on a host glob no role lists raw for: refused, with why.
    let refused = request(&f, "alice", &f.glob(), &["--redaction", "raw"]);
    assert_eq!(refused.status.code(), Some(3), "{:?}", text(&refused));
    assert!(
        text(&refused)
            .1
            .contains("does not allow redaction profile \"raw\""),
        "{:?}",
        text(&refused)
    );
    // policy check says the same as the request, without asking.
    let check = f.cluster.run_cli(
        "alice",
        &[
            "policy",
            "check",
            "--host",
            "web-1",
            "--path",
            &api,
            "--ttl",
            "2h",
            "--redaction",
            "raw",
        ],
    )?;
    assert!(check.status.success(), "{:?}", text(&check));
    assert!(
        text(&check)
            .0
            .contains("allowed by role payments-raw (auto), for 10m"),
        "{:?}",
        text(&check)
    );
    Ok(())
}

#[test]
fn break_glass_needs_the_flag_and_is_granted_at_once_flagged_and_notified() -> anyhow::Result<()> {
    let f = Fixture::start_with_policy(POLICY)?;
    let plain = request(&f, "bob", &f.glob(), &[]);
    assert_eq!(plain.status.code(), Some(3), "{:?}", text(&plain));
    assert!(
        text(&plain).1.contains("--break-glass"),
        "{:?}",
        text(&plain)
    );
    let out = request(&f, "bob", &f.glob(), &["--break-glass"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let r = json_of(&out);
    assert_eq!(r["state"], "approved");
    let bg = events(&f, "access.break_glass");
    assert_eq!(bg.len(), 1);
    assert_eq!(bg[0]["how"], "request");
    assert_eq!(bg[0]["notified"], serde_json::json!(["admin"]));
    assert_eq!(bg[0]["grant_id"], r["grant_id"]);
    // An admin's grant issue is the other break-glass path, audited the same way.
    f.cluster.issue_grant("alice", "web-1", &f.glob(), "5m")?;
    let bg = events(&f, "access.break_glass");
    assert_eq!(bg.len(), 2);
    assert_eq!(bg[1]["how"], "grant_issue");
    Ok(())
}

/// The output of `child`, which must end within `limit` (it is killed otherwise).
fn wait_bounded(
    mut child: std::process::Child,
    limit: Duration,
) -> anyhow::Result<std::process::Output> {
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the command did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.wait_with_output()?)
}

#[test]
fn a_pending_request_expires_and_wait_exits_3() -> anyhow::Result<()> {
    let policy = POLICY.replacen(
        "[groups]",
        "[settings]\npending_ttl = \"2s\"\n\n[groups]",
        1,
    );
    let f = Fixture::start_with_policy(&policy)?;
    let glob = f.glob();
    let waiting = f
        .cluster
        .cli("alice")
        .args([
            "grant", "request", "--host", "web-1", "--path", &glob, "--ttl", "1h", "--reason",
            "INC-42", "--json", "--wait",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = wait_bounded(waiting, Duration::from_secs(20))?;
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    let r = json_of(&out);
    assert_eq!(r["state"], "expired");
    let expired = events(&f, "access.expired");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["request_id"], r["id"]);
    Ok(())
}

#[test]
fn wait_exits_0_once_another_person_approves() -> anyhow::Result<()> {
    let f = Fixture::start_with_policy(POLICY)?;
    let glob = f.glob();
    let waiting = f
        .cluster
        .cli("alice")
        .args([
            "grant", "request", "--host", "web-1", "--path", &glob, "--ttl", "1h", "--reason",
            "INC-7", "--wait",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // bob sees it among the requests he can review.
    let deadline = Instant::now() + Duration::from_secs(15);
    let id = loop {
        let list = f
            .cluster
            .run_cli("bob", &["grant", "list", "--pending", "--json"])?;
        let pending: Vec<Value> = serde_json::from_slice(&list.stdout).unwrap_or_default();
        if let Some(r) = pending.first() {
            break r["id"].as_str().unwrap_or_default().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no pending request listed for bob"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let approved = f.cluster.run_cli("bob", &["grant", "approve", &id])?;
    assert!(approved.status.success(), "{:?}", text(&approved));
    let out = wait_bounded(waiting, Duration::from_secs(15))?;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    Ok(())
}

#[test]
fn policy_reload_takes_a_valid_file_and_refuses_an_invalid_one_keeping_the_old(
) -> anyhow::Result<()> {
    let f = Fixture::start_with_policy(POLICY)?;
    let api = f.api_log();
    let check = |user: &str| {
        f.cluster
            .run_cli(
                user,
                &["policy", "check", "--host", "web-1", "--path", &api],
            )
            .expect("policy check runs")
    };
    assert!(check("alice").status.success());
    let path = f.cluster.dir.join("policy.toml");
    let good = std::fs::read_to_string(&path)?;
    // Invalid: refused whole with file:line and reason; the old policy stays in force.
    std::fs::write(
        &path,
        good.replacen("approval = \"auto\"", "approval = \"sometimes\"", 1),
    )?;
    let reload = f.cluster.run_cli("admin", &["policy", "reload"])?;
    assert_eq!(reload.status.code(), Some(1), "{:?}", text(&reload));
    let err = text(&reload).1;
    assert!(
        err.contains("policy.toml:") && err.contains("approval \"sometimes\""),
        "{err}"
    );
    assert!(check("alice").status.success(), "the old policy stays");
    let refused = events(&f, "policy.refused");
    assert_eq!(refused.len(), 1);
    let loaded = events(&f, "policy.reloaded");
    assert_eq!(refused[0]["kept_sha256"], loaded[0]["sha256"]);
    // Only admins reload.
    let by_alice = f.cluster.run_cli("alice", &["policy", "reload"])?;
    assert_eq!(by_alice.status.code(), Some(3), "{:?}", text(&by_alice));
    // Valid, on SIGHUP: web-1 relabelled out of payments, alice's roles there are gone.
    std::fs::write(
        &path,
        good.replace("team = \"payments\"", "team = \"search\""),
    )?;
    let pid = f.cluster.controller_pid().expect("controller runs");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while events(&f, "policy.reloaded").len() < 2 {
        assert!(Instant::now() < deadline, "no reload after SIGHUP");
        std::thread::sleep(Duration::from_millis(50));
    }
    let reloaded = events(&f, "policy.reloaded");
    assert_eq!(reloaded[1]["triggered_by"], "sighup");
    assert_ne!(reloaded[1]["sha256"], reloaded[0]["sha256"]);
    let glob_check = f.cluster.run_cli(
        "alice",
        &[
            "policy",
            "check",
            "--host",
            "web-1",
            "--path",
            &f.glob(),
            "--json",
        ],
    )?;
    assert_eq!(glob_check.status.code(), Some(3), "{:?}", text(&glob_check));
    let answer = json_of(&glob_check);
    assert_eq!(answer["refusals"][0]["code"], "host_not_covered");
    Ok(())
}

#[test]
fn access_review_shows_role_use_and_break_glass_until_another_admin_acks_it() -> anyhow::Result<()>
{
    let f = Fixture::start_with_policy(POLICY)?;
    let api = f.api_log();
    let auto = request(&f, "alice", &api, &["--redaction", "raw"]);
    assert!(auto.status.success(), "{:?}", text(&auto));
    let glass = json_of(&request(&f, "bob", &f.glob(), &["--break-glass"]));
    let glass_id = glass["grant_id"].as_str().unwrap_or_default().to_string();
    let issued = f.cluster.issue_grant("alice", "web-1", &f.glob(), "5m")?;

    let review = |user: &str| {
        f.cluster
            .run_cli(
                user,
                &["access", "review", "--since", "1h", "--output", "json"],
            )
            .expect("access review runs")
    };
    let by_alice = review("alice");
    assert_eq!(by_alice.status.code(), Some(3), "{:?}", text(&by_alice));
    let r = json_of(&review("admin"));
    let role = |name: &str| {
        r["roles"]
            .as_array()
            .and_then(|roles| roles.iter().find(|x| x["name"] == name).cloned())
            .unwrap_or_default()
    };
    assert_eq!(role("payments-raw")["grants"], 1);
    assert_eq!(
        role("payments-prod")["never_requested"],
        serde_json::json!(["alice"])
    );
    assert_eq!(
        r["unused_roles"],
        serde_json::json!(["payments-prod", "two-leads", "leads-self"])
    );
    assert_eq!(r["grants"].as_array().map(Vec::len), Some(3));
    let unreviewed: Vec<&str> = r["unreviewed_break_glass"]
        .as_array()
        .map(|a| a.iter().filter_map(|g| g["grant_id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(unreviewed, [glass_id.as_str(), issued.as_str()]);

    let csv = f.cluster.run_cli(
        "admin",
        &["access", "review", "--since", "1h", "--output", "csv"],
    )?;
    assert!(csv.status.success(), "{:?}", text(&csv));
    let csv = text(&csv).0;
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("grant_id,subject,role,approved_by"),
        "{csv}"
    );
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{glass_id},")) && l.contains(",sre-oncall,")),
        "{csv}"
    );

    // Only admins ack, never their own break-glass grant, and once.
    let not_admin = f
        .cluster
        .run_cli("bob", &["access", "ack", &glass_id, "--comment", "fine"])?;
    assert_eq!(not_admin.status.code(), Some(3), "{:?}", text(&not_admin));
    let own = f
        .cluster
        .run_cli("admin", &["access", "ack", &issued, "--comment", "fine"])?;
    assert_eq!(own.status.code(), Some(3), "{:?}", text(&own));
    assert!(
        text(&own).1.contains("nobody reviews their own"),
        "{:?}",
        text(&own)
    );
    let acked = f.cluster.run_cli(
        "admin",
        &["access", "ack", &glass_id, "--comment", "INC-43: justified"],
    )?;
    assert!(acked.status.success(), "{:?}", text(&acked));
    let again = f
        .cluster
        .run_cli("admin", &["access", "ack", &glass_id, "--comment", "again"])?;
    assert_eq!(again.status.code(), Some(1), "{:?}", text(&again));
    let r = json_of(&review("admin"));
    assert_eq!(
        r["unreviewed_break_glass"].as_array().map(Vec::len),
        Some(1)
    );
    let reviewed = events(&f, "access.break_glass_reviewed");
    assert_eq!(reviewed.len(), 1);
    assert_eq!(reviewed[0]["grant_id"], glass_id.as_str());
    Ok(())
}

#[test]
fn webhook_is_told_over_https_retried_and_a_failed_delivery_is_audited() -> anyhow::Result<()> {
    use loggate_tests::HecReceiver;
    let f = Fixture::start_with_policy(POLICY)?;
    let pki = f.cluster.dir.join("pki");
    // A real HTTPS receiver (the test CA's certificate for localhost) whose first answer fails.
    let receiver = HecReceiver::start_at(
        "127.0.0.1:0".parse()?,
        1,
        Some((&pki.join("controller.crt"), &pki.join("controller.key"))),
    )?;
    let path = f.cluster.dir.join("policy.toml");
    let good = std::fs::read_to_string(&path)?;
    let with_hook = |url: &str| {
        format!(
            "[notify]\nwebhook = \"{url}\"\nca = \"{}\"\n\n{good}",
            pki.join("ca.crt").display()
        )
    };
    std::fs::write(
        &path,
        with_hook(&format!(
            "https://localhost:{}/hooks/T0/SECRET",
            receiver.addr.port()
        )),
    )?;
    let reload = f.cluster.run_cli("admin", &["policy", "reload"])?;
    assert!(reload.status.success(), "{:?}", text(&reload));

    let id = json_of(&request(&f, "alice", &f.glob(), &[]))["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let delivered = |event: &str| -> Vec<Value> {
        receiver
            .requests()
            .iter()
            .filter(|r| r.status == 200)
            .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .filter(|b| b["loggate"]["event"] == event)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered("access.requested").is_empty() {
        assert!(Instant::now() < deadline, "no notice delivered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = receiver.requests();
    assert!(
        all.len() >= 2 && all[0].status != 200,
        "the first try failed and was retried"
    );
    assert_eq!(all[1].path, "/hooks/T0/SECRET");
    let notice = &delivered("access.requested")[0];
    assert_eq!(notice["loggate"]["request_id"], id.as_str());
    assert_eq!(notice["loggate"]["approvers"], serde_json::json!(["bob"]));
    assert!(
        notice["text"]
            .as_str()
            .unwrap_or("")
            .contains("alice asks to read"),
        "{notice}"
    );
    let approved = f.cluster.run_cli("bob", &["grant", "approve", &id])?;
    assert!(approved.status.success(), "{:?}", text(&approved));
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered("access.approved").is_empty() {
        assert!(Instant::now() < deadline, "no approval notice");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Never a token or key in a body.
    for r in receiver.requests() {
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            !body.contains("v4.public") && !body.contains("key_sha256"),
            "{body}"
        );
    }

    // A webhook nobody answers: tried 5 times with back-off, then audited (URL path not shown).
    let closed = loggate_tests::free_addr()?;
    std::fs::write(
        &path,
        with_hook(&format!("http://{closed}/hooks/T0/SECRET")),
    )?;
    let reload = f.cluster.run_cli("admin", &["policy", "reload"])?;
    assert!(reload.status.success(), "{:?}", text(&reload));
    request(&f, "alice", &f.glob(), &[]);
    let deadline = Instant::now() + Duration::from_secs(40);
    let failed = loop {
        if let Some(e) = events(&f, "notify.failed").into_iter().next() {
            break e;
        }
        assert!(Instant::now() < deadline, "no notify.failed record");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(failed["attempts"], 5);
    assert_eq!(failed["notified_event"], "access.requested");
    assert!(
        !failed["webhook"].as_str().unwrap_or("").contains("SECRET"),
        "{failed}"
    );
    Ok(())
}

#[test]
fn refused_requests_are_audited_a_requester_is_capped_and_an_oversized_grant_is_refused_at_request(
) -> anyhow::Result<()> {
    let policy = format!("[settings]\nmax_pending_per_requester = 2\n{POLICY}");
    let f = Fixture::start_with_policy(&policy)?;

    // No role allows admin this: refused, one record.
    let none = request(&f, "admin", &f.glob(), &[]);
    assert_eq!(none.status.code(), Some(3), "{:?}", text(&none));

    // A grant larger than agents accept is refused when asked, not after an approval.
    let long: Vec<String> = (0..20)
        .map(|i| format!("{}/{i:02}{}.log", f.logs.display(), "a".repeat(900)))
        .collect();
    let mut args = vec!["grant", "request", "--host", "web-1", "--ttl", "1h"];
    for p in &long {
        args.extend_from_slice(&["--path", p]);
    }
    args.extend_from_slice(&["--reason", "INC-42", "--json"]);
    let large = f.cluster.run_cli("alice", &args)?;
    assert_eq!(large.status.code(), Some(2), "{:?}", text(&large));
    assert!(
        text(&large).1.contains("-byte limit agents accept"),
        "{:?}",
        text(&large)
    );
    assert!(events(&f, "access.requested").is_empty(), "nothing stored");

    // Two pending requests at most for alice; the third is refused with what to do.
    for _ in 0..2 {
        let ok = request(&f, "alice", &f.glob(), &[]);
        assert!(ok.status.success(), "{:?}", text(&ok));
    }
    let third = request(&f, "alice", &f.glob(), &[]);
    assert_eq!(third.status.code(), Some(1), "{:?}", text(&third));
    assert!(
        text(&third)
            .1
            .contains("you already have 2 pending requests (the policy allows 2)"),
        "{:?}",
        text(&third)
    );
    // Another requester is not held back by alice's requests.
    let bob = request(
        &f,
        "bob",
        &format!("{}/lead/app.log", f.logs.display()),
        &[],
    );
    assert!(bob.status.success(), "{:?}", text(&bob));

    let refused = events(&f, "access.request_refused");
    let codes: Vec<(&str, &str)> = refused
        .iter()
        .map(|e| {
            (
                e["subject"].as_str().unwrap_or_default(),
                e["reason_code"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("spiffe://loggate.local/user/admin", "no_role"),
            ("spiffe://loggate.local/user/alice", "grant_too_large"),
            ("spiffe://loggate.local/user/alice", "too_many_pending"),
        ]
    );
    assert!(refused[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("no role of the access policy allows admin"));
    assert_eq!(events(&f, "access.requested").len(), 3);
    Ok(())
}

#[test]
fn webhook_text_is_escaped_for_slack_and_an_admin_grant_issue_is_notified_as_break_glass(
) -> anyhow::Result<()> {
    use loggate_tests::HecReceiver;
    let receiver = HecReceiver::start(0)?;
    let policy = format!(
        "[notify]\nwebhook = \"http://{}/hooks/T0/SECRET\"\n\n{POLICY}",
        receiver.addr
    );
    let f = Fixture::start_with_policy(&policy)?;
    let reason = "INC-42 <!channel> & <@U024BE7LH>";
    let asked = f.cluster.run_cli(
        "alice",
        &[
            "grant",
            "request",
            "--host",
            "web-1",
            "--path",
            &f.glob(),
            "--ttl",
            "1h",
            "--reason",
            reason,
            "--json",
        ],
    )?;
    assert!(asked.status.success(), "{:?}", text(&asked));
    let issued = f.cluster.issue_grant("alice", "web-1", &f.glob(), "5m")?;

    let delivered = |event: &str| -> Vec<(String, Value)> {
        receiver
            .requests()
            .iter()
            .filter(|r| r.status == 200)
            .filter_map(|r| {
                let raw = String::from_utf8_lossy(&r.body).to_string();
                let v = serde_json::from_str::<Value>(&raw).ok()?;
                (v["loggate"]["event"] == event).then_some((raw, v))
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered("access.requested").is_empty() || delivered("access.break_glass").is_empty() {
        assert!(
            Instant::now() < deadline,
            "notices missing: {:?}",
            receiver.requests().len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (raw, requested) = &delivered("access.requested")[0];
    let shown = requested["text"].as_str().unwrap_or_default();
    assert!(
        shown.contains("INC-42 &lt;!channel&gt; &amp; &lt;@U024BE7LH&gt;"),
        "{shown}"
    );
    assert!(
        !shown.contains("<!channel>") && !raw.contains("\"text\":\"<"),
        "{raw}"
    );
    assert_eq!(
        requested["loggate"]["reason"], reason,
        "the fields as written"
    );

    let (_, glass) = &delivered("access.break_glass")[0];
    assert_eq!(glass["loggate"]["grant_id"], issued.as_str());
    // Its audit record says the webhook was told, under which policy.
    let record = events(&f, "access.break_glass")
        .into_iter()
        .find(|e| e["how"] == "grant_issue")
        .expect("grant issue audited as break-glass");
    assert_eq!(record["webhook"], true, "{record}");
    assert_eq!(
        record["policy_sha256"],
        events(&f, "policy.reloaded")[0]["sha256"]
    );
    assert_eq!(glass["loggate"]["how"], "grant_issue");
    assert!(
        glass["text"]
            .as_str()
            .unwrap_or_default()
            .contains("BREAK-GLASS: admin issued alice a grant"),
        "{glass}"
    );
    for r in receiver.requests() {
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            !body.contains("v4.public") && !body.contains("key_sha256"),
            "{body}"
        );
    }
    Ok(())
}

#[test]
fn the_final_approval_is_decided_under_the_policy_in_force_now() -> anyhow::Result<()> {
    let f = Fixture::start_with_policy(POLICY)?;
    let id = json_of(&request(&f, "alice", &f.glob(), &[]))["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let logs = f.logs.display().to_string();
    let path = f.cluster.dir.join("policy.toml");

    // alice left the payments group since she asked: the approval is refused, with why.
    let removed = POLICY
        .replace("payments = [\"alice\"]", "payments = []")
        .replace("{logs}", &logs);
    std::fs::write(&path, removed)?;
    let reload = f.cluster.run_cli("admin", &["policy", "reload"])?;
    assert!(reload.status.success(), "{:?}", text(&reload));
    let refused = f.cluster.run_cli("bob", &["grant", "approve", &id])?;
    assert_eq!(refused.status.code(), Some(3), "{:?}", text(&refused));
    assert!(
        text(&refused)
            .1
            .contains(&format!("no longer allows request {id}")),
        "{:?}",
        text(&refused)
    );
    assert!(
        text(&refused).1.contains("not among its users or groups"),
        "{:?}",
        text(&refused)
    );
    let audited = events(&f, "access.review_refused");
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0]["reason_code"], "policy_changed");
    assert!(events(&f, "access.approved").is_empty());

    // She is back, and the role's max_ttl narrowed to 30m: approved for 30m, not the 1h asked.
    let narrowed = POLICY
        .replace("max_ttl = \"2h\"", "max_ttl = \"30m\"")
        .replace("{logs}", &logs);
    std::fs::write(&path, narrowed)?;
    let reload = f.cluster.run_cli("admin", &["policy", "reload"])?;
    assert!(reload.status.success(), "{:?}", text(&reload));
    let approved = f
        .cluster
        .run_cli("bob", &["grant", "approve", &id, "--json"])?;
    assert!(approved.status.success(), "{:?}", text(&approved));
    let grant = &json_of(&approved)["grant"];
    assert_eq!(
        grant["not_after"].as_i64().unwrap_or_default()
            - grant["not_before"].as_i64().unwrap_or_default(),
        1800,
        "{grant}"
    );
    Ok(())
}

#[test]
fn a_group_in_the_users_certificate_counts_like_a_groups_member() -> anyhow::Result<()> {
    let policy = format!("[settings]\ncertificate_groups = [\"payments\", \"sre\"]\n{POLICY}");
    let f = Fixture::start_with_policy(&policy)?;
    let pki = f.cluster.dir.join("pki");
    for (user, group) in [("carol", "payments"), ("erin", "sre"), ("dave", "ops")] {
        let out = f
            .cluster
            .cli("admin")
            .args(["pki", "issue"])
            .arg(&pki)
            .args(["--user", user, "--group", group])
            .output()?;
        assert!(out.status.success(), "{:?}", text(&out));
    }
    // dave's certificate names no group the policy gives a role: refused.
    let dave = request(&f, "dave", &f.glob(), &[]);
    assert_eq!(dave.status.code(), Some(3), "{:?}", text(&dave));
    // carol is in no [groups] list; her certificate says payments.
    let asked = request(&f, "carol", &f.glob(), &[]);
    assert!(asked.status.success(), "{:?}", text(&asked));
    let asked = json_of(&asked);
    assert_eq!(asked["role"], "payments-prod");
    let id = asked["id"].as_str().unwrap_or_default().to_string();
    // dave may not approve it; erin's certificate makes her an sre approver.
    let by_dave = f.cluster.run_cli("dave", &["grant", "approve", &id])?;
    assert_eq!(by_dave.status.code(), Some(3), "{:?}", text(&by_dave));
    let pending = f
        .cluster
        .run_cli("erin", &["grant", "list", "--pending", "--json"])?;
    assert!(pending.status.success(), "{:?}", text(&pending));
    assert!(text(&pending).0.contains(&id), "{:?}", text(&pending));
    let by_erin = f
        .cluster
        .run_cli("erin", &["grant", "approve", &id, "--json"])?;
    assert!(by_erin.status.success(), "{:?}", text(&by_erin));
    assert_eq!(json_of(&by_erin)["state"], "approved");
    Ok(())
}

/// Issues `user` a certificate of the fixture's CA naming `groups` (an OU each; `pki issue`
/// takes one).
fn issue_user(f: &Fixture, user: &str, groups: &[&str]) -> anyhow::Result<()> {
    let mut cmd = f.cluster.cli("admin");
    cmd.args(["pki", "issue"])
        .arg(f.cluster.dir.join("pki"))
        .args(["--user", user]);
    for g in groups {
        cmd.args(["--group", g]);
    }
    let out = cmd.output()?;
    assert!(out.status.success(), "{:?}", text(&out));
    Ok(())
}

/// Writes `policy` (with `{logs}` filled in) as the fixture's policy file and reloads it.
fn reload_with(f: &Fixture, policy: &str) -> anyhow::Result<()> {
    let filled = policy.replace("{logs}", &f.logs.display().to_string());
    std::fs::write(f.cluster.dir.join("policy.toml"), filled)?;
    let reload = f.cluster.run_cli("admin", &["policy", "reload"])?;
    assert!(reload.status.success(), "{:?}", text(&reload));
    Ok(())
}

#[test]
fn a_certificate_group_counts_only_where_the_policy_opts_in_and_a_denied_user_is_refused(
) -> anyhow::Result<()> {
    let f = Fixture::start_with_policy(POLICY)?;
    issue_user(&f, "carol", &["payments"])?;
    issue_user(&f, "erin", &["sre"])?;
    let id = json_of(&request(&f, "alice", &f.glob(), &[]))["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // No opt-in: carol's OU payments lets her request nothing, erin's OU sre approves nothing.
    let carol = request(&f, "carol", &f.glob(), &[]);
    assert_eq!(carol.status.code(), Some(3), "{:?}", text(&carol));
    let by_erin = f.cluster.run_cli("erin", &["grant", "approve", &id])?;
    assert_eq!(by_erin.status.code(), Some(3), "{:?}", text(&by_erin));
    assert!(
        text(&by_erin).1.contains("may not review request"),
        "{:?}",
        text(&by_erin)
    );

    // Opted in, and both denied: deny beats the certificate's OU.
    reload_with(
        &f,
        &format!(
            "[settings]\ncertificate_groups = [\"payments\", \"sre\"]\ndeny_users = [\"carol\", \"erin\"]\n{POLICY}"
        ),
    )?;
    let carol = request(&f, "carol", &f.glob(), &[]);
    assert_eq!(carol.status.code(), Some(3), "{:?}", text(&carol));
    assert!(
        text(&carol).1.contains("deny_users names you"),
        "{:?}",
        text(&carol)
    );
    let by_erin = f.cluster.run_cli("erin", &["grant", "approve", &id])?;
    assert_eq!(by_erin.status.code(), Some(3), "{:?}", text(&by_erin));
    assert!(events(&f, "access.approved").is_empty());

    // Opted in and not denied: erin's OU makes her an approver.
    reload_with(
        &f,
        &format!("[settings]\ncertificate_groups = [\"payments\", \"sre\"]\n{POLICY}"),
    )?;
    let by_erin = f
        .cluster
        .run_cli("erin", &["grant", "approve", &id, "--json"])?;
    assert!(by_erin.status.success(), "{:?}", text(&by_erin));
    assert_eq!(json_of(&by_erin)["state"], "approved");
    Ok(())
}

#[test]
fn approvals_count_only_under_the_rule_and_approver_groups_in_force_at_each_approval(
) -> anyhow::Result<()> {
    let sre3 = POLICY.replace("sre = [\"bob\"]", "sre = [\"bob\", \"carol\", \"erin\"]");
    let f = Fixture::start_with_policy(&sre3)?;
    issue_user(&f, "carol", &[])?;
    issue_user(&f, "erin", &[])?;
    let ask = || -> String {
        json_of(&request(&f, "alice", &f.glob(), &[]))["id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let approve = |who: &str, id: &str| -> Value {
        let out = f
            .cluster
            .run_cli(who, &["grant", "approve", id, "--json"])
            .expect("grant approve runs");
        assert!(out.status.success(), "{who}: {:?}", text(&out));
        json_of(&out)
    };
    let two = sre3.replace(
        "approvers = 1\napprover_groups = [\"sre\"]",
        "approvers = 2\napprover_groups = [\"sre\"]",
    );
    assert_ne!(two, sre3);

    // Asked under approvers = 1; the policy now needs 2: bob's approval does not grant.
    let first = ask();
    reload_with(&f, &two)?;
    let after_bob = approve("bob", &first);
    assert_eq!(after_bob["state"], "pending", "{after_bob}");
    assert_eq!(after_bob["approvals_needed"], 2, "{after_bob}");

    // bob approves, then leaves sre: carol's approval is the only one that counts.
    let second = ask();
    assert_eq!(approve("bob", &second)["state"], "pending");
    reload_with(
        &f,
        &two.replace(
            "sre = [\"bob\", \"carol\", \"erin\"]",
            "sre = [\"carol\", \"erin\"]",
        ),
    )?;
    let after_carol = approve("carol", &second);
    assert_eq!(after_carol["state"], "pending", "{after_carol}");
    let after_erin = approve("erin", &second);
    assert_eq!(after_erin["state"], "approved", "{after_erin}");
    let approved = events(&f, "access.approved");
    let last = approved.last().cloned().unwrap_or_default();
    assert_eq!(last["approvals"], 2, "{last}");
    // Decided under the policy in force then, which its record names.
    let reloaded = events(&f, "policy.reloaded");
    let in_force = reloaded.last().cloned().unwrap_or_default();
    assert_eq!(last["policy_sha256"], in_force["sha256"], "{last}");
    let requested = events(&f, "access.requested");
    assert_eq!(requested[0]["policy_sha256"], reloaded[0]["sha256"]);
    assert!(events(&f, "grant.issued").len() == 1, "one grant only");
    Ok(())
}

#[test]
fn grant_issue_refuses_control_and_bidi_characters_in_paths_and_reasons() -> anyhow::Result<()> {
    let f = Fixture::start_with_policy(POLICY)?;
    let escape_path = format!("{}/x\x1b[2K.log", f.logs.display());
    let cases = [
        (escape_path.as_str(), "INC-42"),
        (&*f.glob(), "INC-42\u{202e}24-CNI"),
        (&*f.glob(), "INC-42\u{2028}approved by security"),
    ];
    for (path, reason) in cases {
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
                path,
                "--ttl",
                "5m",
                "--reason",
                reason,
            ],
        )?;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{path:?} {reason:?}: {:?}",
            text(&out)
        );
        assert!(
            text(&out).1.contains("invisible formatting character"),
            "{:?}",
            text(&out)
        );
    }
    assert!(events(&f, "grant.issued").is_empty());
    Ok(())
}

#[test]
fn refused_approvals_are_budgeted_and_a_refused_requests_record_is_bounded() -> anyhow::Result<()> {
    let mut f = Fixture::start_with_policy(POLICY)?;
    let id = json_of(&request(&f, "alice", &f.glob(), &[]))["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // alice approves her own request 200 times: each refused, at most 60 recorded.
    for _ in 0..200 {
        let own = f.cluster.run_cli("alice", &["grant", "approve", &id])?;
        assert_eq!(own.status.code(), Some(3), "{:?}", text(&own));
    }
    let refused = events(&f, "access.review_refused");
    assert!(
        (1..=60).contains(&refused.len()),
        "{} review_refused records",
        refused.len()
    );
    assert!(refused.iter().all(|e| e["reason_code"] == "self_review"));
    let left_out = 200 - refused.len() as u64;

    // 60 paths of 1 KiB (as many as fit in the controller's 64 KiB message limit) that no
    // role allows admin: one record, under 4 KiB, the whole lists named by their SHA-256.
    let paths: Vec<String> = (0..60)
        .map(|i| {
            let head = format!("{}/{i:02}", f.logs.display());
            format!("{head}{}.log", "a".repeat(1024 - head.len() - 4))
        })
        .collect();
    let mut args = vec!["grant", "request", "--host", "web-1", "--ttl", "1h"];
    for p in &paths {
        assert_eq!(p.len(), 1024);
        args.extend_from_slice(&["--path", p]);
    }
    args.extend_from_slice(&["--reason", "INC-42"]);
    let out = f.cluster.run_cli("admin", &args)?;
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    let lines: Vec<String> = std::fs::read_to_string(f.cluster.dir.join("controller/audit.jsonl"))?
        .lines()
        .filter(|l| l.contains("\"access.request_refused\""))
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].len() < 4096, "{} bytes", lines[0].len());
    let record = &events(&f, "access.request_refused")[0];
    assert_eq!(record["paths_count"], 60, "{record}");
    assert!(record["lists_sha256"]
        .as_str()
        .is_some_and(|h| h.len() == 64));

    // Stopped within the minute: what the budget left out is summarised before
    // controller.stopped, not lost.
    f.cluster.stop_controller();
    let summary: Vec<Value> = events(&f, "access.request_refused")
        .into_iter()
        .filter(|e| e["reason_code"] == "suppressed")
        .collect();
    assert_eq!(summary.len(), 1, "{summary:?}");
    assert_eq!(summary[0]["suppressed_before"], left_out);
    assert_eq!(summary[0]["subject"], "spiffe://loggate.local/user/alice");
    Ok(())
}

#[test]
fn an_oversized_break_glass_request_is_refused_before_any_grant() -> anyhow::Result<()> {
    let f = Fixture::start_with_policy(POLICY)?;
    // bob's sre-oncall role grants at once with --break-glass: too large, nothing is granted.
    let long: Vec<String> = (0..20)
        .map(|i| format!("{}/{i:02}{}.log", f.logs.display(), "a".repeat(900)))
        .collect();
    let mut args = vec!["grant", "request", "--host", "web-1", "--ttl", "10m"];
    for p in &long {
        args.extend_from_slice(&["--path", p]);
    }
    args.extend_from_slice(&["--reason", "INC-43", "--break-glass"]);
    let large = f.cluster.run_cli("bob", &args)?;
    assert_eq!(large.status.code(), Some(2), "{:?}", text(&large));
    assert!(
        text(&large).1.contains("-byte limit agents accept"),
        "{:?}",
        text(&large)
    );
    assert!(events(&f, "access.requested").is_empty());
    assert!(events(&f, "grant.issued").is_empty());
    assert!(events(&f, "access.break_glass").is_empty());
    let refused = events(&f, "access.request_refused");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["reason_code"], "grant_too_large");
    Ok(())
}

#[test]
fn the_size_check_at_request_counts_the_longest_approver_name_there_can_be() -> anyhow::Result<()> {
    let policy = format!("[settings]\nmax_pending_per_requester = 100\n{POLICY}");
    let f = Fixture::start_with_policy(&policy)?;
    // Paths adding up to `total` bytes of file names, each under the 1 KiB field limit.
    let paths_of = |total: usize| -> Vec<String> {
        let mut left = total;
        let mut out = Vec::new();
        while left > 0 {
            let part = left.min(900);
            out.push(format!(
                "{}/{:02}{}.log",
                f.logs.display(),
                out.len(),
                "a".repeat(part)
            ));
            left -= part;
        }
        out
    };
    let ask = |total: usize| -> Option<i32> {
        let paths = paths_of(total);
        let mut args = vec!["grant", "request", "--host", "web-1", "--ttl", "1h"];
        for p in &paths {
            args.extend_from_slice(&["--path", p]);
        }
        args.extend_from_slice(&["--reason", "INC-42"]);
        f.cluster
            .run_cli("alice", &args)
            .expect("grant request runs")
            .status
            .code()
    };
    // The largest request that is accepted, found by bisection (bounded: 16 steps).
    let (mut fits, mut too_large) = (900, 20_000);
    assert_eq!(ask(fits), Some(0));
    assert_eq!(ask(too_large), Some(2));
    for _ in 0..16 {
        if too_large - fits <= 1 {
            break;
        }
        let mid = (fits + too_large) / 2;
        match ask(mid) {
            Some(0) => fits = mid,
            Some(2) => too_large = mid,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(too_large - fits, 1);
    // The smallest refused request would fit as a grant issued by a short name (admin): the
    // refusal comes from measuring with the longest approver name, so an approval by anyone
    // can never fail on size.
    let mut args = vec![
        "grant",
        "issue",
        "--subject",
        "alice",
        "--host",
        "web-1",
        "--ttl",
        "1h",
        "--reason",
        "INC-42",
        "--redaction",
        "default",
    ];
    let paths = paths_of(too_large);
    for p in &paths {
        args.extend_from_slice(&["--path", p]);
    }
    let issued = f.cluster.run_cli("admin", &args)?;
    assert!(issued.status.success(), "{:?}", text(&issued));
    Ok(())
}
