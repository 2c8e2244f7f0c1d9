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
        "7"
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
        err.contains("schema is version 999, newer than this loggate knows (up to "),
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

/// Replica B: a second controller process beside the cluster's own (replica A) on the same
/// PostgreSQL database, with A's configuration (CA, grant key, policy) but its own listen
/// address, audit file and `replica_name`; its users' client configurations point at it.
struct ReplicaB {
    child: Option<std::process::Child>,
    dir: PathBuf,
    clients: PathBuf,
    bins: PathBuf,
}

impl ReplicaB {
    fn start(cluster: &Cluster) -> anyhow::Result<ReplicaB> {
        Self::start_at(cluster, loggate_tests::free_addr()?)
    }

    fn start_at(cluster: &Cluster, addr: std::net::SocketAddr) -> anyhow::Result<ReplicaB> {
        let dir = cluster.dir.join("controller-b");
        std::fs::create_dir_all(&dir)?;
        let config = std::fs::read_to_string(&cluster.controller_config)?
            .replacen(
                &format!("listen = \"{}\"", cluster.controller_addr),
                &format!("listen = \"{addr}\""),
                1,
            )
            .replacen(
                "\"controller/audit.jsonl\"",
                "\"controller-b/audit.jsonl\"",
                1,
            )
            .replacen(
                "replica_name = \"replica-a\"",
                "replica_name = \"replica-b\"",
                1,
            );
        anyhow::ensure!(
            config.contains("controller-b/audit.jsonl") && config.contains("replica-b"),
            "the harness's configuration moved"
        );
        let config_path = cluster.dir.join("controller-b.toml");
        std::fs::write(&config_path, config)?;
        // Beside the other client configurations: their paths are relative to their folder.
        let clients = cluster.dir.join("pki/clients");
        for user in ["admin", "alice", "bob"] {
            std::fs::write(
                clients.join(format!("{user}-of-b.toml")),
                std::fs::read_to_string(cluster.client_config(user))?.replacen(
                    &format!("controller = \"{}\"", cluster.controller_addr),
                    &format!("controller = \"{addr}\""),
                    1,
                ),
            )?;
        }
        let log = std::fs::File::create(dir.join("stderr.log"))?;
        let child = Command::new(cluster.bins.join("loggate"))
            .args(["controller", "serve", "--config"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let b = ReplicaB {
            child: Some(child),
            dir,
            clients,
            bins: cluster.bins.clone(),
        };
        loggate_tests::wait_for_port(addr, Duration::from_secs(20))?;
        Ok(b)
    }

    fn cli(&self, user: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(Command::new(self.bins.join("loggate"))
            .env(
                "LOGGATE_CONFIG",
                self.clients.join(format!("{user}-of-b.toml")),
            )
            .stdin(Stdio::null())
            .args(args)
            .output()?)
    }

    fn events(&self) -> Vec<serde_json::Value> {
        loggate_tests::read_audit_file(&self.dir.join("audit.jsonl"))
            .iter()
            .map(loggate_tests::flat_audit_record)
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// SIGKILL: a crash, its sessions and streams cut, not closed.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ReplicaB {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            loggate_tests::terminate(&mut child);
        }
    }
}

/// Names replica A (the cluster's own controller) `replica-a`.
fn name_replica_a(cluster: &Cluster) -> anyhow::Result<()> {
    let config = std::fs::read_to_string(&cluster.controller_config)?;
    let config = config.replacen(
        "\nlisten = ",
        "\nreplica_name = \"replica-a\"\nlisten = ",
        1,
    );
    anyhow::ensure!(config.contains("replica-a"), "no listen line");
    std::fs::write(&cluster.controller_config, config)?;
    Ok(())
}

/// Issues a grant through `cli` (a replica's admin) and returns its id.
fn issue_on(
    cli: impl Fn(&[&str]) -> anyhow::Result<std::process::Output>,
    host: &str,
    glob: &str,
) -> anyhow::Result<String> {
    let out = cli(&[
        "grant",
        "issue",
        "--subject",
        "alice",
        "--host",
        host,
        "--path",
        glob,
        "--ttl",
        "1h",
        "--reason",
        "TEST-1",
        "--redaction",
        "raw",
        "--json",
    ])?;
    anyhow::ensure!(out.status.success(), "grant issue: {}", text(&out).1);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["id"].as_str().unwrap_or_default().to_owned())
}

/// `loggate agent list --output json` through `cli`: agent id → (connected, replica).
fn agent_list_on(
    cli: impl Fn(&[&str]) -> anyhow::Result<std::process::Output>,
) -> anyhow::Result<std::collections::HashMap<String, (bool, String)>> {
    let out = cli(&["agent", "list", "--output", "json"])?;
    anyhow::ensure!(out.status.success(), "agent list: {}", text(&out).1);
    let mut agents = std::collections::HashMap::new();
    for line in text(&out).0.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        agents.insert(
            v["id"].as_str().unwrap_or_default().to_owned(),
            (
                v["connected"] == true,
                v["replica"].as_str().unwrap_or_default().to_owned(),
            ),
        );
    }
    Ok(agents)
}

/// Waits until `f` holds, for at most `limit`.
fn wait_until(
    what: &str,
    limit: Duration,
    f: impl Fn() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !f()? {
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Two replicas on one PostgreSQL, agents spread over both (`controllers = [a, b]` and
/// `[b, a]`): `agent list` names the replica each agent is connected to; a grant issued on
/// replica A reaches the agent connected to B; replica A SIGKILLed while its agent is
/// connected: the agent moves to B and receives the grant and the revocation issued on B
/// meanwhile, and the listing then names B for it.
#[test]
fn two_replicas_serve_agents_spread_over_both_and_a_killed_ones_agent_moves_missing_nothing(
) -> anyhow::Result<()> {
    let pg = TestPostgres::start()?;
    let url = pg.create_database("loggate")?;
    let (mut cluster, logs) = cluster_on(&url)?;
    cluster.add_agent("web-2", &[&logs], "")?;
    name_replica_a(&cluster)?;
    cluster.start_controller()?;
    let b_addr = loggate_tests::free_addr()?;
    let a_addr = cluster.controller_addr.to_string();
    cluster.set_agent_controllers("web-1", &[a_addr.clone(), b_addr.to_string()])?;
    cluster.set_agent_controllers("web-2", &[b_addr.to_string(), a_addr.clone()])?;
    let listed_on = |cluster: &Cluster, id: &str| -> anyhow::Result<Option<(bool, String)>> {
        Ok(
            agent_list_on(|args: &[&str]| cluster.run_cli("admin", args))?
                .get(id)
                .cloned(),
        )
    };
    // web-1 starts while B is not running yet: wherever it starts, it ends on A.
    cluster.start_agent("web-1")?;
    wait_until("web-1 on replica-a", Duration::from_secs(30), || {
        Ok(listed_on(&cluster, "web-1")? == Some((true, "replica-a".to_string())))
    })?;
    let mut b = ReplicaB::start_at(&cluster, b_addr)?;
    // An agent starts at a random address of its list: web-2 is started again (bounded) until
    // it is on B, so that each replica has an agent.
    let connected_to = |cluster: &Cluster, b: &ReplicaB| -> anyhow::Result<(bool, bool)> {
        let on_b = agent_list_on(|args: &[&str]| b.cli("admin", args))?;
        Ok((
            listed_on(cluster, "web-2")?.is_some_and(|(c, _)| c),
            on_b.get("web-2").is_some_and(|(c, _)| *c),
        ))
    };
    let mut on_b_at_last = false;
    for _ in 0..12 {
        cluster.start_agent("web-2")?;
        wait_until("web-2 connected", Duration::from_secs(30), || {
            let (a, b) = connected_to(&cluster, &b)?;
            Ok(a || b)
        })?;
        if connected_to(&cluster, &b)?.1 {
            on_b_at_last = true;
            break;
        }
        cluster.stop_agent("web-2");
        wait_until("web-2 gone from A", Duration::from_secs(30), || {
            Ok(!connected_to(&cluster, &b)?.0)
        })?;
    }
    anyhow::ensure!(
        on_b_at_last,
        "web-2 never started on replica B in 12 starts"
    );
    let on_a = |args: &[&str]| cluster.run_cli("admin", args);
    let on_b = |args: &[&str]| b.cli("admin", args);

    // Each replica's listing names where each agent is; `connected` is true on that replica.
    // A reconnection's registration (its replica) is written by the replica's registration
    // queue, within about 500 ms of the stream's opening (controller/src/service/registrations.rs).
    wait_until(
        "web-2 registered on replica-b",
        Duration::from_secs(10),
        || {
            let from_a = agent_list_on(on_a)?;
            let from_b = agent_list_on(on_b)?;
            Ok(
                from_a.get("web-2") == Some(&(false, "replica-b".to_string()))
                    && from_b.get("web-1") == Some(&(false, "replica-a".to_string())),
            )
        },
    )?;
    let from_a = agent_list_on(on_a)?;
    assert_eq!(from_a["web-1"], (true, "replica-a".to_string()));
    assert_eq!(from_a["web-2"], (false, "replica-b".to_string()));
    let from_b = agent_list_on(on_b)?;
    assert_eq!(from_b["web-1"], (false, "replica-a".to_string()));
    assert_eq!(from_b["web-2"], (true, "replica-b".to_string()));
    let text_list = on_a(&["agent", "list"])?;
    assert!(
        text(&text_list)
            .0
            .lines()
            .any(|l| l.starts_with("web-2 ") && l.contains("replica replica-b")),
        "{}",
        text(&text_list).0
    );

    // A grant issued on A reaches the agent connected to B.
    let glob = format!("{}/*.log", logs.display());
    let on_web_2 = issue_on(on_a, "web-2", &glob)?;
    cluster.wait_for_grant("web-2", &on_web_2)?;
    let before_kill = issue_on(on_a, "web-1", &glob)?;
    cluster.wait_for_grant("web-1", &before_kill)?;

    // A dies with web-1 connected; B issues a grant and revokes the older one meanwhile.
    cluster.kill_controller();
    let during = issue_on(on_b, "web-1", &glob)?;
    let out = on_b(&[
        "grant",
        "revoke",
        &before_kill,
        "--reason",
        "while A was down",
    ])?;
    assert!(out.status.success(), "{}", text(&out).1);
    cluster.wait_for_grant("web-1", &during)?;
    cluster.wait_for_audit("web-1", Duration::from_secs(20), |e| {
        e["event"] == "grant.revoked" && e["grant_id"] == before_kill.as_str()
    })?;
    let api = logs.join("api.log").display().to_string();
    let out = cluster
        .logs_cmd("alice", "web-1", &["cat", &api])
        .output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    wait_until("web-1 listed on replica-b", Duration::from_secs(20), || {
        Ok(agent_list_on(on_b)?.get("web-1") == Some(&(true, "replica-b".to_string())))
    })?;
    b.kill();
    Ok(())
}

/// The access policy of the expiry test: alice's requests wait for bob and expire after 2 s.
const EXPIRING_POLICY: &str = r#"
[settings]
pending_ttl = "2s"

[groups]
sre = ["bob"]

[[roles]]
name = "needs-bob"
users = ["alice"]
hosts = ["web-1"]
paths = ["{logs}/*.log"]
max_ttl = "1h"
approval = "approvers"
approver_groups = ["sre"]
"#;

/// A replica's audit records, read when called.
type Events<'a> = Box<dyn Fn() -> Vec<serde_json::Value> + 'a>;

/// The grants a load loop issued, and its failed calls (exit code, stderr).
type LoadOutcome = (Vec<String>, Vec<(Option<i32>, String)>);

/// The log line of the replica that runs the singleton jobs (store::db::lead_singleton_jobs).
const LEADS: &str = "this replica now runs the singleton jobs";

/// Of two replicas on one PostgreSQL exactly one runs the request expiry sweep (the log says
/// which): while the leader is paused, a request made on the other stays pending past its
/// expiry; resumed, the leader expires it, once. The leader SIGKILLed, the other takes the
/// lead within a bounded time and the sweep still runs there.
#[test]
fn one_of_two_replicas_runs_the_request_expiry_and_the_other_takes_over_when_it_is_killed(
) -> anyhow::Result<()> {
    let pg = TestPostgres::start()?;
    let url = pg.create_database("loggate")?;
    let (mut cluster, logs) = cluster_on(&url)?;
    cluster.set_policy(&EXPIRING_POLICY.replace("{logs}", &logs.display().to_string()))?;
    name_replica_a(&cluster)?;
    cluster.start_controller()?;
    let mut b = ReplicaB::start(&cluster)?;
    let a_log = cluster.dir.join("controller/stderr.log");
    let a_leads = || {
        std::fs::read_to_string(&a_log)
            .unwrap_or_default()
            .contains(LEADS)
    };
    wait_until("a leader", Duration::from_secs(20), || {
        Ok(a_leads() || b.log().contains(LEADS))
    })?;
    // Several rounds of the lease later, still one.
    std::thread::sleep(Duration::from_secs(5));
    let a_leads_now = a_leads();
    assert!(
        a_leads_now != b.log().contains(LEADS),
        "exactly one replica leads: A {a_leads_now}, B {}",
        b.log().contains(LEADS)
    );
    let glob = format!("{}/*.log", logs.display());
    let request = |cli: &dyn Fn(&[&str]) -> anyhow::Result<std::process::Output>| {
        let out = cli(&[
            "grant", "request", "--host", "web-1", "--path", &glob, "--ttl", "1h", "--reason",
            "INC-42", "--json",
        ])?;
        anyhow::ensure!(out.status.success(), "grant request: {}", text(&out).1);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        anyhow::ensure!(v["state"] == "pending", "{v}");
        Ok(v["id"].as_str().unwrap_or_default().to_owned())
    };
    // Owned, so that killing a replica later borrows nothing they hold.
    let cli_of = |config: PathBuf| {
        let bins = cluster.bins.clone();
        move |args: &[&str]| -> anyhow::Result<std::process::Output> {
            Ok(Command::new(bins.join("loggate"))
                .env("LOGGATE_CONFIG", &config)
                .stdin(Stdio::null())
                .args(args)
                .output()?)
        }
    };
    let on_a = cli_of(cluster.client_config("alice"));
    let on_b = cli_of(b.clients.join("alice-of-b.toml"));
    let expired_in = |events: Vec<serde_json::Value>, id: &str| {
        events
            .iter()
            .filter(|e| e["event"] == "access.expired" && e["request_id"] == id)
            .count()
    };
    // The leader paused (SIGSTOP: its session, and so the lock, stay alive): a request made
    // on the other replica (whose own timer would expire it) stays pending past its expiry,
    // since the other replica does not run the sweep.
    let leader_pid = if a_leads_now {
        cluster.controller_pid()
    } else {
        b.child.as_ref().map(|c| c.id())
    }
    .map(|pid| pid.to_string())
    .ok_or_else(|| anyhow::anyhow!("no leader process"))?;
    let signal = |name: &str| -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([name, leader_pid.as_str()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {name} {leader_pid}");
        Ok(())
    };
    signal("-STOP")?;
    let paused = (|| {
        let id = if a_leads_now {
            request(&on_b)?
        } else {
            request(&on_a)?
        };
        // Due after 2 s; three more sweeps' worth of time.
        std::thread::sleep(Duration::from_secs(8));
        let state = pg.psql(
            "loggate",
            &format!("SELECT state FROM requests WHERE id = '{id}'"),
        )?;
        Ok::<_, anyhow::Error>((id, state))
    })();
    signal("-CONT")?;
    let (id, state) = paused?;
    assert_eq!(
        state.trim(),
        "pending",
        "expired while its leader was paused"
    );
    let (leader_events, other_events): (Events<'_>, Events<'_>) = if a_leads_now {
        (
            Box::new(|| cluster.controller_events()),
            Box::new(|| b.events()),
        )
    } else {
        (
            Box::new(|| b.events()),
            Box::new(|| cluster.controller_events()),
        )
    };
    // Resumed, the leader expires it.
    wait_until("the request expired", Duration::from_secs(20), || {
        Ok(expired_in(leader_events(), &id) + expired_in(other_events(), &id) > 0)
    })?;
    // Another sweep's worth of time: nobody records it a second time.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(expired_in(leader_events(), &id), 1, "expired by the leader");
    assert_eq!(expired_in(other_events(), &id), 0, "expired by the other");
    drop((leader_events, other_events));

    // The leader dies; the other takes over within a bounded time and expires what is due.
    let took_over = Instant::now();
    if a_leads_now {
        cluster.kill_controller();
        wait_until("B leading", Duration::from_secs(15), || {
            Ok(b.log().contains(LEADS))
        })?;
    } else {
        b.kill();
        wait_until("A leading", Duration::from_secs(15), || Ok(a_leads()))?;
    }
    eprintln!(
        "the surviving replica took the lead {:?} after the kill",
        took_over.elapsed()
    );
    let (id, survivor_events): (String, Box<dyn Fn() -> Vec<serde_json::Value>>) = if a_leads_now {
        (request(&on_b)?, Box::new(|| b.events()))
    } else {
        (request(&on_a)?, Box::new(|| cluster.controller_events()))
    };
    wait_until(
        "the survivor expired the request",
        Duration::from_secs(20),
        || Ok(expired_in(survivor_events(), &id) == 1),
    )?;
    Ok(())
}

/// PostgreSQL stopped for a few seconds and started again while an admin issues grants in a
/// loop: every call made meanwhile fails at once with one line naming the database as
/// unavailable (exit 1, no panic, no hang); once it is back, calls succeed again without
/// restarting the controller, every grant whose issue succeeded is stored and reaches the
/// agent, and a revocation still ends reads.
#[test]
fn the_database_restarted_under_load_loses_nothing_and_the_cli_names_it_meanwhile(
) -> anyhow::Result<()> {
    let mut pg = TestPostgres::start()?;
    let url = pg.create_database("loggate")?;
    let (mut cluster, logs) = cluster_on(&url)?;
    cluster.start_controller()?;
    cluster.start_agent("web-1")?;
    let glob = format!("{}/*.log", logs.display());
    let first = cluster.grant("alice", "web-1", &glob, "1h")?;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (bins, config, glob, stop) = (
            cluster.bins.clone(),
            cluster.client_config("admin"),
            glob.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || -> anyhow::Result<LoadOutcome> {
            let (mut issued, mut failed) = (Vec::new(), Vec::new());
            // Bounded in count and time.
            let deadline = Instant::now() + Duration::from_secs(90);
            for _ in 0..400 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let started = Instant::now();
                let out = Command::new(bins.join("loggate"))
                    .env("LOGGATE_CONFIG", &config)
                    .stdin(Stdio::null())
                    .args([
                        "grant",
                        "issue",
                        "--subject",
                        "alice",
                        "--host",
                        "web-1",
                        "--path",
                        &glob,
                        "--ttl",
                        "1h",
                        "--reason",
                        "LOAD-1",
                        "--redaction",
                        "raw",
                        "--json",
                    ])
                    .output()?;
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(30),
                    "a call took {:?}",
                    started.elapsed()
                );
                if out.status.success() {
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                    issued.push(v["id"].as_str().unwrap_or_default().to_owned());
                } else {
                    failed.push((out.status.code(), text(&out).1));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok((issued, failed))
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    pg.stop();
    std::thread::sleep(Duration::from_secs(4));
    // While it is down, a listing says the same.
    let out = cluster.run_cli("admin", &["agent", "list"])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out).1);
    assert!(
        text(&out)
            .1
            .contains("database (PostgreSQL) is unavailable"),
        "{}",
        text(&out).1
    );
    pg.start_again()?;
    // Calls succeed again once it is back.
    wait_until(
        "a grant issued after the restart",
        Duration::from_secs(30),
        || {
            Ok(cluster
                .run_cli("admin", &["agent", "list"])?
                .status
                .success())
        },
    )?;
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (issued, failed) = load
        .join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    assert!(!failed.is_empty(), "no call met the outage");
    for (code, stderr) in &failed {
        assert_eq!(*code, Some(1), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("database (PostgreSQL) is unavailable"),
            "{stderr}"
        );
    }
    let after = issued.len();
    anyhow::ensure!(after > 0, "no grant issued under load");
    // Nothing lost: every grant whose issue succeeded is stored and reaches the agent.
    for id in issued.iter().chain([&first]) {
        let stored = pg.psql(
            "loggate",
            &format!("SELECT count(*) FROM grants WHERE id = '{id}'"),
        )?;
        assert_eq!(stored.trim(), "1", "grant {id}");
        cluster.wait_for_grant("web-1", id)?;
    }
    // And a revocation still ends reads.
    let out = cluster.run_cli("admin", &["grant", "revoke", &first, "--reason", "done"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    cluster.wait_for_audit("web-1", Duration::from_secs(20), |e| {
        e["event"] == "grant.revoked" && e["grant_id"] == first.as_str()
    })?;
    eprintln!(
        "{} grants issued under load, {} calls refused while the database was down",
        issued.len(),
        failed.len()
    );
    Ok(())
}
