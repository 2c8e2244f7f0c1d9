//! End-to-end: the controller and the CLI under hostile input and careless operation (issue 10,
//! findings 1, 2, 6, 10 and the CLI parts of 11): grant times are range-checked whatever the
//! client sends, no stored time breaks a listing, a database restore cannot make an agent skip
//! a revocation, state files are private, and exit codes do not depend on timing.

use loggate_tests::{text, Cluster, Fixture};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `grant issue` as admin with `extra` arguments; the raw output.
fn issue(f: &Fixture, subject: &str, extra: &[&str]) -> anyhow::Result<std::process::Output> {
    let glob = f.glob();
    let mut args = vec![
        "grant",
        "issue",
        "--subject",
        subject,
        "--host",
        "web-1",
        "--path",
        &glob,
        "--ttl",
        "1h",
        "--reason",
        "TEST-10",
        "--redaction",
        "raw",
        "--json",
    ];
    args.extend_from_slice(extra);
    f.cluster.run_cli("admin", &args)
}

/// Issues `subject` a grant, waits until web-1 holds it, and returns its id and token.
fn issue_with_token(f: &Fixture, subject: &str) -> anyhow::Result<(String, String)> {
    let out = issue(f, subject, &[])?;
    anyhow::ensure!(out.status.success(), "grant issue: {}", text(&out).1);
    let grant: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = grant["id"].as_str().unwrap_or_default().to_string();
    f.cluster.wait_for_grant("web-1", &id)?;
    Ok((id, grant["token"].as_str().unwrap_or_default().to_string()))
}

fn all_grants(f: &Fixture) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = f
        .cluster
        .run_cli("admin", &["grant", "list", "--all", "--json"])?;
    anyhow::ensure!(out.status.success(), "grant list: {}", text(&out).1);
    Ok(serde_json::from_slice::<Vec<serde_json::Value>>(
        &out.stdout,
    )?)
}

fn revoke(f: &Fixture, id: &str) -> anyhow::Result<()> {
    let out = f.cluster.run_cli("admin", &["grant", "revoke", id])?;
    anyhow::ensure!(out.status.success(), "grant revoke: {}", text(&out).1);
    Ok(())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

#[test]
fn grant_start_beyond_the_horizon_is_bad_usage_and_stores_nothing() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    for start_in in [
        "18446744073709551615s",
        "9223372036854775808s",
        "18446744073709548000s",
        "99999999999999h",
        "367days",
    ] {
        let out = issue(&f, "alice", &["--start-in", start_in])?;
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(2), "--start-in {start_in}: {err}");
        assert!(
            err.contains("too far ahead"),
            "--start-in {start_in}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    }
    assert!(all_grants(&f)?.is_empty(), "a refused grant was stored");
    // Within the horizon it is accepted, and starts when asked.
    let out = issue(&f, "alice", &["--start-in", "2h"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    let grant: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let now = loggate_core::grant::unix_now();
    let nbf = grant["not_before"].as_i64().unwrap_or_default();
    assert!((now + 7190..=now + 7210).contains(&nbf), "{grant}");
    Ok(())
}

#[tokio::test]
async fn controller_refuses_out_of_range_grant_windows_in_a_raw_request() -> anyhow::Result<()> {
    let f = tokio::task::spawn_blocking(Fixture::start).await??;
    let mut admin = f.cluster.controller_client_as("users/admin").await?;
    let now = loggate_core::grant::unix_now();
    let request = |not_before_unix: i64, ttl_seconds: u64| loggate_proto::IssueGrantRequest {
        subject: "alice".into(),
        hosts: vec!["web-1".into()],
        paths: vec![f.glob()],
        ttl_seconds,
        reason: "TEST-10".into(),
        redaction_profile: "raw".into(),
        not_before_unix,
        ..Default::default()
    };
    let cases = [
        ("an hour ago", request(now - 3600, 60)),
        ("negative", request(-1, 60)),
        ("i64::MIN", request(i64::MIN, 60)),
        ("two years ahead", request(now + 2 * 366 * 86400, 60)),
        ("i64::MAX", request(i64::MAX, 60)),
        ("i64::MAX - ttl", request(i64::MAX - 60, 60)),
        ("ttl u64::MAX", request(0, u64::MAX)),
        ("ttl 2^63", request(0, 1 << 63)),
        ("ttl 0", request(0, 0)),
    ];
    for (what, req) in cases {
        let status = admin
            .issue_grant(req)
            .await
            .expect_err(&format!("{what} was accepted"));
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
    }
    // A client clock a little behind is fine: its start counts as now, so the grant is not
    // expired when signed; a start within the horizon is kept as sent.
    let ok = admin.issue_grant(request(now - 60, 60)).await?.into_inner();
    let window = ok.grant.map(|g| (g.not_before_unix, g.not_after_unix));
    assert!(
        window.is_some_and(|(nbf, exp)| (now..=now + 5).contains(&nbf) && exp == nbf + 60),
        "{window:?}"
    );
    let later = now + 30 * 86400;
    let ok = admin.issue_grant(request(later, 60)).await?.into_inner();
    assert_eq!(
        ok.grant.map(|g| (g.not_before_unix, g.not_after_unix)),
        Some((later, later + 60))
    );
    tokio::task::spawn_blocking(move || drop(f)).await?;
    Ok(())
}

#[test]
fn grant_list_prints_any_time_stored_in_the_database() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let (id, _) = issue_with_token(&f, "alice")?;
    // What an older controller let in (finding 2), or any value a database can hold.
    let db = rusqlite::Connection::open(f.cluster.dir.join("controller/state.db"))?;
    db.busy_timeout(Duration::from_secs(5))?;
    db.execute(
        "UPDATE grants SET not_before = ?1, not_after = ?2 WHERE id = ?3",
        rusqlite::params![i64::MAX - 1, i64::MAX, id],
    )?;
    drop(db);
    for user in ["admin", "alice"] {
        let out = f.cluster.run_cli(user, &["grant", "list", "--all"])?;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{user}: {stderr}");
        assert!(
            stdout.contains(&id) && stdout.contains(&format!("unix time {}", i64::MAX)),
            "{user}: {stdout}"
        );
    }
    Ok(())
}

#[test]
fn a_revocation_made_after_a_database_restore_reaches_the_agent() -> anyhow::Result<()> {
    let mut f = Fixture::start()?;
    let (alice_grant, alice_token) = issue_with_token(&f, "alice")?;
    // A grant in the backup that nobody revokes: it must survive every resync, audited once.
    let kept_log = f.logs.join("kept.log");
    std::fs::write(&kept_log, "kept line\n")?;
    let kept_log = kept_log.display().to_string();
    let kept_grant = f.cluster.grant("alice", "web-1", &kept_log, "1h")?;
    // The backup: a copy of the stopped controller's database.
    let db = f.cluster.dir.join("controller/state.db");
    let backup = f.cluster.dir.join("backup");
    std::fs::create_dir_all(&backup)?;
    f.cluster.stop_controller();
    let side_files = |dir: &Path| -> Vec<std::path::PathBuf> {
        ["state.db", "state.db-wal", "state.db-shm"]
            .iter()
            .map(|n| dir.join(n))
            .collect()
    };
    for (from, to) in side_files(db.parent().unwrap_or(Path::new(".")))
        .iter()
        .zip(side_files(&backup))
    {
        if from.exists() {
            std::fs::copy(from, to)?;
        }
    }
    f.cluster.start_controller()?;
    // After the backup: bob gets a grant and loses it, the admin gets one; the agent learns all.
    let (bob_grant, bob_token) = issue_with_token(&f, "bob")?;
    let (lost_grant, lost_token) = issue_with_token(&f, "admin")?;
    revoke(&f, &bob_grant)?;
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(15), |e| {
            e["event"] == "grant.revoked" && e["grant_id"] == bob_grant.as_str()
        })?;
    // Restore the backup while the agent is away; the restored controller reuses revision
    // numbers: revoking alice's grant and issuing two more take it past the agent's revision.
    f.cluster.stop_agent("web-1");
    f.cluster.stop_controller();
    let dir = db.parent().unwrap_or(Path::new(".")).to_path_buf();
    for (live, saved) in side_files(&dir).iter().zip(side_files(&backup)) {
        let _ = std::fs::remove_file(live);
        if saved.exists() {
            std::fs::copy(saved, live)?;
        }
    }
    f.cluster.start_controller()?;
    revoke(&f, &alice_grant)?;
    for _ in 0..2 {
        let out = f.cluster.run_cli(
            "admin",
            &[
                "grant",
                "issue",
                "--subject",
                "admin",
                "--host",
                "web-1",
                "--path",
                "/var/empty/*.log",
                "--ttl",
                "1h",
                "--reason",
                "TEST-10",
            ],
        )?;
        assert!(out.status.success(), "{}", text(&out).1);
    }
    f.cluster.start_agent("web-1")?;
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(20), |e| {
            e["event"] == "grant.revoked" && e["grant_id"] == alice_grant.as_str()
        })
        .map_err(|e| anyhow::anyhow!("the agent never learnt the revocation: {e}"))?;
    // The admin's grant issued after the backup is gone from the controller: nobody could
    // revoke it, so the agent forgets it.
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(10), |e| {
            e["event"] == "grant.dropped" && e["grant_id"] == lost_grant.as_str()
        })
        .map_err(|e| anyhow::anyhow!("the agent kept a grant the controller lost: {e}"))?;
    let out = f.logs("admin", &["cat", &f.api_log()])?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).0);
    // Both revoked grants stay refused, pushed or presented: alice's revocation came through
    // the resync, bob's (lost by the restore) was kept by the agent. The lost grant, which the
    // controller can no longer revoke, is refused too when its token is presented.
    let token_file = f.cluster.dir.join("token");
    for (user, token, pushed) in [
        ("alice", &alice_token, true),
        ("bob", &bob_token, true),
        ("admin", &lost_token, false),
    ] {
        std::fs::write(&token_file, token)?;
        let token_arg = token_file.display().to_string();
        let api_log = f.api_log();
        let mut cases = vec![vec!["cat", api_log.as_str(), "--grant-token", &token_arg]];
        if pushed {
            cases.push(vec!["cat", api_log.as_str()]);
        }
        for args in cases {
            let out = f.logs(user, &args)?;
            let (stdout, stderr) = text(&out);
            assert_eq!(
                out.status.code(),
                Some(3),
                "{user} {args:?} was served: {stdout}"
            );
            assert!(stderr.contains("revoked"), "{user} {args:?}: {stderr}");
        }
    }
    // The grant the backup held is still served, and was not received (audited) a second time.
    let out = f.logs("alice", &["cat", &kept_log])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "kept line\n");
    let received = f
        .cluster
        .agent_audit("web-1")
        .iter()
        .filter(|e| e["event"] == "grant.received" && e["grant_id"] == kept_grant.as_str())
        .count();
    assert_eq!(
        received, 1,
        "the kept grant was audited as received {received} times"
    );
    Ok(())
}

#[test]
fn state_files_are_private_from_creation() -> anyhow::Result<()> {
    let mut f = Fixture::start()?;
    f.grant("alice", "30m")?;
    let controller = f.cluster.dir.join("controller");
    assert_eq!(mode(&controller.join("state.db")), 0o600);
    for side in ["state.db-wal", "state.db-shm"] {
        let path = controller.join(side);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{side}");
        }
    }
    let state = f.cluster.agents["web-1"].dir.join("state");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("grants.redb")), 0o600);
    f.cluster.stop_agent("web-1");
    f.cluster.stop_controller();
    // A store others can read refuses the start, and says how to fix it.
    std::fs::set_permissions(
        state.join("grants.redb"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    let config = f.cluster.agents["web-1"].config.clone();
    let out = Command::new(f.cluster.bins.join("loggate-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()?;
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("grants.redb") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    std::fs::set_permissions(
        controller.join("state.db"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    let out = Command::new(f.cluster.bins.join("loggate"))
        .args(["controller", "serve", "--config"])
        .arg(&f.cluster.controller_config)
        .stdin(Stdio::null())
        .output()?;
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("state.db") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_shared_or_linked_controller_database_folder_refuses_the_start() -> anyhow::Result<()> {
    let mut f = Fixture::start()?;
    f.cluster.stop_controller();
    let folder = f.cluster.dir.join("controller");
    // Bounded: a controller that wrongly starts is stopped after 10 s (and the test fails).
    let serve = || -> anyhow::Result<(Option<i32>, String)> {
        let mut child = Command::new(f.cluster.bins.join("loggate"))
            .args(["controller", "serve", "--config"])
            .arg(&f.cluster.controller_config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let out = child.wait_with_output()?;
        Ok((out.status.code(), text(&out).1))
    };
    // Others could replace the database in a folder they can write.
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o777))?;
    let (code, stderr) = serve()?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("database folder") && stderr.contains("chmod 700"),
        "{stderr}"
    );
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700))?;
    // A database that is a symbolic link is named as one, not by its link's mode 777.
    let db = folder.join("state.db");
    let moved = folder.join("real.db");
    std::fs::rename(&db, &moved)?;
    std::os::unix::fs::symlink(&moved, &db)?;
    let (code, stderr) = serve()?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is a symbolic link"), "{stderr}");
    assert!(!stderr.contains("chmod"), "{stderr}");
    Ok(())
}

#[test]
fn logs_cat_into_a_closed_pipe_exits_0() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    f.grant("alice", "30m")?;
    // A file larger than a pipe's buffer, so the write meets the closed end for sure.
    let mut big = String::new();
    for i in 0..20_000 {
        big.push_str(&format!("2026-11-27T07:00:00Z INFO filler line {i}\n"));
    }
    std::fs::write(f.logs.join("big.log"), big)?;
    let big = f.logs.join("big.log").display().to_string();
    for _ in 0..3 {
        let mut child = f
            .cluster
            .logs_cmd("alice", "web-1", &["cat", &big])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // `| head -c 1`: read one byte, then go away.
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut stdout, &mut byte)?;
        drop(stdout);
        let out = child.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(stderr.trim().is_empty(), "{stderr}");
    }
    Ok(())
}

#[test]
fn pki_init_error_names_its_cause() -> anyhow::Result<()> {
    let bins = loggate_tests::bin_dir()?;
    let dir = tempfile::tempdir()?;
    let out = Command::new(bins.join("loggate"))
        .args(["pki", "init"])
        .arg(dir.path().join("pki"))
        .args(["--agent", "Bad"])
        .output()?;
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Not only "loggate: agent id": the context and the reason.
    assert!(stderr.starts_with("loggate: agent id: "), "{stderr}");
    assert!(stderr.contains("Bad"), "{stderr}");
    Ok(())
}

/// A client configuration for `user` of another deployment's CA, trusting this cluster's CA.
fn foreign_client(cluster: &Cluster) -> anyhow::Result<std::path::PathBuf> {
    let other = cluster.dir.join("other-pki");
    let out = Command::new(cluster.bins.join("loggate"))
        .args(["pki", "init"])
        .arg(&other)
        .args(["--controller-addr", &cluster.controller_addr.to_string()])
        .output()?;
    anyhow::ensure!(out.status.success(), "pki init: {}", text(&out).1);
    let config = cluster.dir.join("foreign-admin.toml");
    std::fs::write(
        &config,
        format!(
            "controller = \"{}\"\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            cluster.controller_addr,
            cluster.dir.join("pki/ca.crt").display().to_string(),
            other.join("users/admin.crt").display().to_string(),
            other.join("users/admin.key").display().to_string(),
        ),
    )?;
    Ok(config)
}

#[test]
fn a_refused_client_certificate_is_always_exit_3() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let config = foreign_client(&f.cluster)?;
    let agent = f.cluster.agent_addr("web-1");
    let api_log = f.api_log();
    let to_controller: &[&str] = &["grant", "list"];
    let to_agent: &[&str] = &[
        "logs",
        "cat",
        &api_log,
        "--host",
        "web-1",
        "--agent-addr",
        &agent,
    ];
    for (who, args, runs) in [("controller", to_controller, 15), ("agent", to_agent, 5)] {
        for run in 0..runs {
            let out = Command::new(f.cluster.bins.join("loggate"))
                .args(args)
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .output()?;
            let stderr = text(&out).1;
            assert_eq!(out.status.code(), Some(3), "{who} run {run}: {stderr}");
            assert!(
                stderr.contains("refused the TLS connection"),
                "{who} run {run}: {stderr}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_server_certificate_we_refuse_is_exit_1_not_access_denied() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    // "Agent web-1" at the controller's address: a valid certificate of this deployment, but
    // not web-1's. Our verifier refuses it; the server refused nothing of ours.
    let controller = f.cluster.controller_addr.to_string();
    let api_log = f.api_log();
    for run in 0..3 {
        let out = f.cluster.run_cli(
            "alice",
            &[
                "logs",
                "cat",
                &api_log,
                "--host",
                "web-1",
                "--agent-addr",
                &controller,
            ],
        )?;
        let stderr = text(&out).1;
        assert_eq!(out.status.code(), Some(1), "run {run}: {stderr}");
        assert!(
            stderr.contains("the server's certificate is not the expected one"),
            "run {run}: {stderr}"
        );
    }
    Ok(())
}

#[test]
fn a_connection_dropped_without_a_tls_reason_is_exit_1() -> anyhow::Result<()> {
    let cluster = Cluster::new(None)?;
    // Something that accepts and hangs up at once: no TLS alert, no certificate refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    listener.set_nonblocking(true)?;
    let server = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !stopping.load(std::sync::atomic::Ordering::Relaxed)
            && std::time::Instant::now() < deadline
        {
            match listener.accept() {
                Ok((conn, _)) => drop(conn),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    let config = cluster.dir.join("hangup.toml");
    let pki = cluster.dir.join("pki");
    std::fs::write(
        &config,
        format!(
            "controller = \"{addr}\"\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            pki.join("ca.crt").display().to_string(),
            pki.join("users/admin.crt").display().to_string(),
            pki.join("users/admin.key").display().to_string(),
        ),
    )?;
    for run in 0..3 {
        let out = Command::new(cluster.bins.join("loggate"))
            .args(["grant", "list", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .output()?;
        let stderr = text(&out).1;
        assert_eq!(out.status.code(), Some(1), "run {run}: {stderr}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server.join();
    Ok(())
}

#[test]
fn a_server_that_accepts_and_stays_silent_ends_the_command_with_exit_1() -> anyhow::Result<()> {
    let cluster = Cluster::new(None)?;
    // Accepts, keeps every connection open, and never says a word: no TLS handshake ever ends.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let server = std::thread::spawn(move || {
        let mut held = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while std::time::Instant::now() < deadline
            && !stopping.load(std::sync::atomic::Ordering::Relaxed)
        {
            match listener.accept() {
                Ok((conn, _)) => held.push(conn),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        drop(held);
    });
    let config = cluster.dir.join("silent.toml");
    let pki = cluster.dir.join("pki");
    let ca = pki.join("ca.crt").display().to_string();
    std::fs::write(
        &config,
        format!(
            "controller = \"{addr}\"\n[tls]\nca = {ca:?}\ncert = {:?}\nkey = {:?}\n",
            pki.join("users/admin.crt").display().to_string(),
            pki.join("users/admin.key").display().to_string(),
        ),
    )?;
    let login_dir = cluster.dir.join("login-config");
    std::fs::create_dir_all(&login_dir)?;
    let addr = addr.to_string();
    let config = config.display().to_string();
    let commands: [&[&str]; 2] = [
        &["grant", "list", "--config", &config],
        &["login", "--controller", &addr, "--ca", &ca],
    ];
    for args in commands {
        let started = std::time::Instant::now();
        let mut child = Command::new(cluster.bins.join("loggate"))
            .args(args)
            .env("LOGGATE_CONFIG_DIR", &login_dir)
            .env_remove("LOGGATE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // The CLI's bound is 10 s; 30 s says "it never ends" without waiting for ever.
        while child.try_wait()?.is_none() && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if child.try_wait()?.is_none() {
            let _ = child.kill();
            anyhow::bail!("loggate {args:?} still waits on a silent server after 30 s");
        }
        let out = child.wait_with_output()?;
        let stderr = text(&out).1;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no TLS handshake within 10 s"),
            "{args:?}: {stderr}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server.join();
    Ok(())
}

#[tokio::test]
async fn an_oversized_epoch_in_watch_grants_is_refused() -> anyhow::Result<()> {
    let f = tokio::task::spawn_blocking(Fixture::start).await??;
    let mut agent = f.cluster.controller_client_as("agents/web-1").await?;
    let request = |after_epoch: String| loggate_proto::WatchGrantsRequest {
        agent_id: "web-1".into(),
        after_epoch,
        ..Default::default()
    };
    let status = agent
        .watch_grants(request("e".repeat(65)))
        .await
        .expect_err("a 65-byte epoch was accepted");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("64 bytes"), "{status:?}");
    // 64 bytes is still an epoch (not ours: the agent resynchronises).
    agent.watch_grants(request("e".repeat(64))).await?;
    tokio::task::spawn_blocking(move || drop(f)).await?;
    Ok(())
}

/// A controller that resets a connection at its accept, before TLS (as one taking its fleet
/// back after a restart does: `reset_in_grace`): the admin's command tries again, says so on
/// stderr, and gets through. Here a front on loopback resets the first six connections and
/// relays the others to the controller: six resets take at least 2.5 s of pauses (50-100 ms
/// doubling), longer than the 4 attempts over 1.2 s at most that the CLI once made.
#[test]
fn the_cli_tries_again_a_connection_reset_before_tls_and_says_so() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(None)?;
    cluster.start_controller()?;
    let target = cluster.controller_addr;
    let front = std::net::TcpListener::bind("127.0.0.1:0")?;
    let front_addr = front.local_addr()?;
    std::thread::spawn(move || {
        for (n, accepted) in front.incoming().enumerate().take(12) {
            let Ok(client) = accepted else { return };
            if n < 6 {
                let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                drop(client);
                continue;
            }
            let Ok(server) = std::net::TcpStream::connect(target) else {
                return;
            };
            let (Ok(mut client_in), Ok(mut server_in)) = (client.try_clone(), server.try_clone())
            else {
                return;
            };
            let (mut client_out, mut server_out) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_in, &mut server_out);
                let _ = server_out.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server_in, &mut client_out);
                let _ = client_out.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    let config = std::fs::read_to_string(cluster.client_config("admin"))?;
    let through_front = config.replace(
        &format!("controller = \"{target}\""),
        &format!("controller = \"{front_addr}\""),
    );
    anyhow::ensure!(through_front != config, "no controller line in {config}");
    let path = cluster.dir.join("pki/clients/admin-through-front.toml");
    std::fs::write(&path, through_front)?;
    let out = cluster
        .cli("admin")
        .env("LOGGATE_CONFIG", &path)
        .args(["grant", "list"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let retries: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("reset the connection before TLS completed"))
        .collect();
    assert_eq!(retries.len(), 6, "{stderr}");
    for (n, line) in retries.iter().enumerate() {
        let attempt = format!("attempt {} in ", n + 2);
        assert!(
            line.contains(&attempt) && line.contains(" s since the first"),
            "retry {n} does not say its attempt and elapsed time: {line}"
        );
    }
    Ok(())
}
