//! The controller on PostgreSQL (`database = "postgres://…"`), end to end: the real binaries,
//! a real PostgreSQL server of the test's own (tests/src/postgres.rs), real certificates.

use loggate_tests::postgres::TestPostgres;
use loggate_tests::{text, Cluster};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A cluster whose controller keeps its state in `url`, with agent web-1 serving `logs/app`.
fn cluster_on(url: &str) -> anyhow::Result<(Cluster, PathBuf)> {
    let mut cluster = Cluster::new(None)?;
    let config = std::fs::read_to_string(&cluster.controller_config)?;
    let config = config.replace(
        "database = \"controller/state.db\"",
        &format!("database = \"{url}\""),
    );
    anyhow::ensure!(config.contains(url), "the harness's database line moved");
    std::fs::write(&cluster.controller_config, config)?;
    let logs = cluster.dir.join("logs/app");
    std::fs::create_dir_all(&logs)?;
    let lines: String = (0..20)
        .map(|i| format!("2026-11-27T07:{i:02}:00Z INFO line {i}\n"))
        .collect();
    std::fs::write(logs.join("api.log"), lines)?;
    cluster.add_agent("web-1", &[&logs], "")?;
    Ok((cluster, logs))
}

#[test]
fn a_grant_issued_on_postgres_reaches_the_agent_and_its_revocation_ends_reads() -> anyhow::Result<()>
{
    let pg = TestPostgres::start()?;
    let url = pg.create_database("loggate")?;
    let (mut cluster, logs) = cluster_on(&url)?;
    cluster.start_controller()?;
    cluster.start_agent("web-1")?;
    let glob = format!("{}/*.log", logs.display());
    let id = cluster.grant("alice", "web-1", &glob, "1h")?;
    let api = logs.join("api.log").display().to_string();
    let out = cluster
        .logs_cmd("alice", "web-1", &["cat", &api])
        .output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("INFO line 19"));
    // The grant is PostgreSQL's, not a file's beside the controller.
    let stored = pg.psql(
        "loggate",
        &format!("SELECT count(*) FROM grants WHERE id = '{id}' AND revoked_at IS NULL"),
    )?;
    assert_eq!(stored.trim(), "1");
    assert!(!cluster.dir.join("controller/state.db").exists());

    let out = cluster.run_cli("admin", &["grant", "revoke", &id, "--reason", "done"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    // The agent receives the revocation over its stream: reads are refused from then on.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cluster
            .logs_cmd("alice", "web-1", &["cat", &api])
            .output()?;
        if out.status.code() == Some(3) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "reads still allowed 20 s after the revocation: {:?} {}",
            out.status.code(),
            text(&out).1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let revoked = pg.psql(
        "loggate",
        &format!("SELECT count(*) FROM grants WHERE id = '{id}' AND revoked_at IS NOT NULL"),
    )?;
    assert_eq!(revoked.trim(), "1");
    let kinds = pg.psql("loggate", "SELECT kind FROM revisions ORDER BY revision")?;
    assert_eq!(
        kinds.split_whitespace().collect::<Vec<_>>(),
        ["grant", "revoke"]
    );
    Ok(())
}

#[test]
fn a_controller_refuses_a_postgres_schema_newer_than_it_knows() -> anyhow::Result<()> {
    let pg = TestPostgres::start()?;
    let url = pg.create_database("loggate")?;
    let (mut cluster, _logs) = cluster_on(&url)?;
    cluster.start_controller()?;
    cluster.stop_controller();
    assert_eq!(
        pg.psql(
            "loggate",
            "SELECT value FROM meta WHERE key = 'schema_version'"
        )?
        .trim(),
        // The latest schema version (store/migrations.rs `LATEST`).
        "3"
    );
    pg.psql(
        "loggate",
        "UPDATE meta SET value = '999' WHERE key = 'schema_version'",
    )?;
    let mut child = Command::new(cluster.bins.join("loggate"))
        .args(["controller", "serve", "--config"])
        .arg(&cluster.controller_config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the controller started on a schema from the future");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(
        err.contains("schema is version 999, newer than this loggate knows (up to 3)"),
        "{err}"
    );
    // The password-free URL may be printed; nothing was changed.
    assert_eq!(
        pg.psql(
            "loggate",
            "SELECT value FROM meta WHERE key = 'schema_version'"
        )?
        .trim(),
        "999"
    );
    Ok(())
}

/// `loggate controller check-config` (the unit's `ExecStartPre`, whose output goes to the
/// journal) never prints the database password: not for a misspelt scheme, whose TOML error
/// would quote the line, and a password in a file others can read is refused, naming the mode.
#[test]
fn check_config_never_prints_the_database_password_and_refuses_it_readable_by_others(
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bins = loggate_tests::bin_dir()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("controller.toml");
    let write = |database: &str, mode: u32| -> anyhow::Result<()> {
        std::fs::write(
            &path,
            format!(
                "listen = \"127.0.0.1:7400\"\ndatabase = \"{database}\"\nsigning_key = \"k\"\n\
                 [tls]\nca = \"ca.crt\"\ncert = \"c.crt\"\nkey = \"c.key\"\n"
            ),
        )?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let check = || {
        Command::new(bins.join("loggate"))
            .args(["controller", "check-config"])
            .arg(&path)
            .stdin(Stdio::null())
            .output()
    };
    write("postgress://loggate:S3cretPw@db.internal/loggate", 0o600)?;
    let out = check()?;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("postgress:// is not supported"), "{stderr}");
    assert!(
        !format!("{stdout}{stderr}").contains("S3cretPw"),
        "{stdout}{stderr}"
    );

    write("postgres://loggate:S3cretPw@db.internal/loggate", 0o644)?;
    let out = check()?;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("readable by others (mode 644)"), "{stderr}");
    assert!(
        !format!("{stdout}{stderr}").contains("S3cretPw"),
        "{stdout}{stderr}"
    );
    Ok(())
}
