//! End-to-end: `loggate logs journal` over several agents (issue 13), with the machinery of the
//! multi-host file read: `--host` repeated and globbed, `--selector`, each host judged on its
//! own (one down, one without a grant for the unit), the exit status, one escaped stderr line
//! per failed host, `--merge` in the entries' own time order, `--fail-fast`, and the unit
//! filter held on every host. Each agent reads a real journal written in its scratch folder by
//! `systemd-journal-remote` (as tests/tests/journal.rs does).

use loggate_tests::journal_export::{self, now_micros, write_journal};
use loggate_tests::{text, Cluster};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The secret planted in one nginx entry of every host (the default profile redacts it).
const SECRET: &str = "hunter2-journal-hosts";
/// Text only the other unit's entries hold.
const OTHER_UNIT: &str = "sshd-only-marker";
const SELECTOR: &str = "role=edge";

/// web-1 and web-2 hold alice's grant for nginx.service; web-3 holds one for sshd.service only
/// (not the unit read); db-1 holds the nginx grant but is down (registered, then killed).
const AGENTS: [&str; 4] = ["web-1", "web-2", "web-3", "db-1"];

/// One entry of `unit` (pid 1234) on `host`.
fn entry(at_micros: u128, seq: u64, host: &str, unit: &str, message: &str) -> String {
    journal_export::entry(
        at_micros,
        seq,
        host,
        &[
            ("_SYSTEMD_UNIT", unit),
            ("_PID", "1234"),
            ("MESSAGE", message),
        ],
    )
}

/// The nginx messages of `host`'s journal, in its order: three requests, the second holding
/// the secret. web-1's entries are 10, 8, 6 minutes old, web-2's 9, 7, 5: merged by time they
/// alternate.
fn nginx_messages(host: &str) -> Vec<String> {
    (0..3)
        .map(|i| {
            if i == 1 {
                format!("GET /login from {host} #{i} password={SECRET}")
            } else {
                format!("GET /health from {host} #{i}")
            }
        })
        .collect()
}

struct Fleet {
    cluster: Cluster,
}

fn fleet() -> anyhow::Result<Fleet> {
    let mut cluster = Cluster::new(None)?;
    for id in ["web-3", "db-1"] {
        cluster.issue_agent_cert(id)?;
    }
    let logs = cluster.dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let now = now_micros();
    let minute = 60_000_000u128;
    for (n, id) in AGENTS.into_iter().enumerate() {
        cluster.add_agent(id, &[&logs], "[journal]\ndirectory = \"journal\"\n")?;
        cluster.set_agent_labels(id, &format!("\"env=demo\", \"{SELECTOR}\""))?;
        let journal = cluster.agents[id].dir.join("journal");
        std::fs::create_dir_all(&journal)?;
        // web-1 starts 10 minutes ago, web-2 9 minutes ago, … two minutes apart within a host.
        let first = now - (10 - n as u128) * minute;
        let mut export = String::new();
        for (i, message) in nginx_messages(id).iter().enumerate() {
            let at = first + 2 * minute * i as u128;
            export.push_str(&entry(at, 2 * i as u64 + 1, id, "nginx.service", message));
            export.push_str(&entry(
                at + 1,
                2 * i as u64 + 2,
                id,
                "sshd.service",
                &format!("Accepted publickey {OTHER_UNIT} on {id}"),
            ));
        }
        write_journal(&journal, export.as_bytes())?;
    }
    cluster.start_controller()?;
    for id in AGENTS {
        cluster.start_agent(id)?;
    }
    let nginx = cluster.issue_unit_grant("alice", &["web-1", "web-2", "db-1"], "nginx.service")?;
    for id in ["web-1", "web-2", "db-1"] {
        cluster.wait_for_grant(id, &nginx)?;
    }
    let sshd = cluster.issue_unit_grant("alice", &["web-3"], "sshd.service")?;
    cluster.wait_for_grant("web-3", &sshd)?;
    cluster.wait_registered(AGENTS.len())?;
    cluster.kill_agent("db-1");
    Ok(Fleet { cluster })
}

impl Fleet {
    fn journal(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self
            .cluster
            .cli("alice")
            .args(["logs", "journal", "--unit", "nginx.service"])
            .args(args)
            .output()?)
    }

    /// How many `event` records of alice's reads of nginx's journal agent `host` wrote.
    fn journal_events(&self, host: &str, event: &str) -> usize {
        self.cluster
            .agent_audit(host)
            .iter()
            .filter(|e| {
                e["event"] == event
                    && e["path"] == "journal:nginx.service"
                    && e["subject"] == "spiffe://loggate.local/user/alice"
            })
            .count()
    }
}

/// The messages of `host`'s lines in `stdout` (`HOST: TIME AGENT nginx.service[PID]: message`),
/// in order; every one of its lines must be of nginx's journal on that agent.
fn messages_of(stdout: &str, host: &str) -> Vec<String> {
    let prefix = format!("{host}: ");
    let source = format!(" {host} nginx.service[1234]: ");
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|l| match l.split_once(&source) {
            Some((_, message)) => message.to_string(),
            None => format!("NOT NGINX'S ENTRY: {l}"),
        })
        .collect()
}

/// `message` as served: the secret redacted.
fn redacted(message: &str) -> bool {
    !message.contains(SECRET)
}

#[test]
fn journal_over_four_hosts_reads_the_granted_ones_and_names_each_failed_host_on_stderr(
) -> anyhow::Result<()> {
    let f = fleet()?;
    let out = f.journal(&["--host", "web-*", "--host", "db-1"])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "some hosts failed: {stderr}");
    // The two readable hosts' entries, complete and in each host's own order, redacted, and
    // nothing of another unit.
    for host in ["web-1", "web-2"] {
        let got = messages_of(&stdout, host);
        assert_eq!(got.len(), 3, "{host}: {stdout}");
        for (got, want) in got.iter().zip(nginx_messages(host)) {
            let kept = want.split(" password=").next().unwrap_or_default();
            assert!(got.starts_with(kept), "{host}: {got:?} for {want:?}");
            assert!(redacted(got), "{host} served the secret: {got}");
        }
    }
    assert!(
        !stdout.contains(OTHER_UNIT),
        "another unit's entry: {stdout}"
    );
    assert!(
        !stdout.contains("web-3") && !stdout.contains("db-1"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 6, "{stdout}");
    // One stderr line per failed host (which host, why), then the summary.
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    let web3 = lines
        .iter()
        .find(|l| l.starts_with("loggate: web-3: "))
        .unwrap_or_else(|| panic!("no web-3 line: {stderr}"));
    assert!(web3.contains("not the journal of nginx.service"), "{web3}");
    let db1 = lines
        .iter()
        .find(|l| l.starts_with("loggate: db-1: "))
        .unwrap_or_else(|| panic!("no db-1 line: {stderr}"));
    assert!(db1.contains("cannot connect to db-1"), "{db1}");
    // A refused connect is tried once more (socket_slot.rs), and says so.
    assert!(db1.contains("(tried twice)"), "{db1}");
    assert_eq!(
        lines[2], "loggate: 2 of 4 hosts failed (db-1, web-3); the others were read whole",
        "{stderr}"
    );
    // Every read audited on its own agent; web-3's refusal too.
    for host in ["web-1", "web-2"] {
        assert_eq!(f.journal_events(host, "read.allowed"), 1, "{host}");
    }
    f.cluster
        .wait_for_audit("web-3", Duration::from_secs(5), |e| {
            e["event"] == "read.denied"
                && e["path"] == "journal:nginx.service"
                && e["reason_code"] == "unit_not_covered"
        })?;

    // The same through --selector, as JSON lines naming host and unit.
    let out = f.journal(&["--selector", SELECTOR, "--output", "json"])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(records.len(), 6, "{stdout}");
    assert!(
        records.iter().all(|r| r["unit"] == "nginx.service"
            && (r["host"] == "web-1" || r["host"] == "web-2")),
        "{stdout}"
    );
    // Only the hosts that failed fail: every host failing is exit 7.
    let out = f.journal(&["--host", "web-3", "--host", "db-1"])?;
    assert_eq!(out.status.code(), Some(7), "{}", text(&out).1);
    assert!(out.stdout.is_empty());
    Ok(())
}

#[test]
fn journal_merge_interleaves_the_hosts_entries_by_their_own_timestamps() -> anyhow::Result<()> {
    let f = fleet()?;
    let out = f.journal(&["--host", "web-1", "--host", "web-2", "--merge"])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    // web-1's entries are 10, 8, 6 minutes old and web-2's 9, 7, 5: merged, they alternate,
    // starting with web-1 (host ids sort the same way, so the order is the times', not the ids').
    let hosts: Vec<&str> = stdout
        .lines()
        .map(|l| l.split(": ").next().unwrap_or_default())
        .collect();
    assert_eq!(
        hosts,
        ["web-1", "web-2", "web-1", "web-2", "web-1", "web-2"],
        "{stdout}"
    );
    let stamps: Vec<&str> = stdout.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    let mut sorted = stamps.clone();
    sorted.sort();
    assert_eq!(stamps, sorted, "not in time order: {stdout}");
    // Without --merge and with --parallel 1, the hosts come one after the other.
    let out = f.journal(&["--host", "web-1", "--host", "web-2", "--parallel", "1"])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let hosts: Vec<&str> = stdout
        .lines()
        .map(|l| l.split(": ").next().unwrap_or_default())
        .collect();
    assert_eq!(
        hosts,
        ["web-1", "web-1", "web-1", "web-2", "web-2", "web-2"],
        "{stdout}"
    );
    Ok(())
}

#[test]
fn journal_fail_fast_stops_at_the_first_failed_host_with_its_exit_code() -> anyhow::Result<()> {
    let f = fleet()?;
    // --parallel 1: db-1 (first by id, down) fails before any other host starts.
    let out = f.journal(&["--selector", SELECTOR, "--parallel", "1", "--fail-fast"])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "a connection error: {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.starts_with("loggate: db-1: "), "{stderr}");
    assert!(
        stderr.contains("stopped at the first failure (--fail-fast): db-1"),
        "{stderr}"
    );
    for host in ["web-1", "web-2"] {
        assert_eq!(f.journal_events(host, "read.allowed"), 0, "{host} was read");
    }
    // A refusal first (web-3 alone with web-1 after it): exit 3, access denied.
    let out = f.journal(&[
        "--host",
        "web-3",
        "--host",
        "web-1",
        "--parallel",
        "1",
        "--fail-fast",
    ])?;
    // web-1 sorts before web-3: it is read whole, then web-3's refusal stops the command.
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(messages_of(&stdout, "web-1").len(), 3, "{stdout}");
    assert!(stderr.contains("loggate: web-3: "), "{stderr}");
    Ok(())
}

#[test]
fn journal_follow_over_two_hosts_streams_each_hosts_new_entries_of_the_unit_only(
) -> anyhow::Result<()> {
    use std::io::BufRead;
    let f = fleet()?;
    let mut child = f
        .cluster
        .cli("alice")
        .args(["logs", "journal", "--unit", "nginx.service", "--follow"])
        .args(["--host", "web-1", "--host", "web-2"])
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
    for host in ["web-1", "web-2"] {
        let allowed = f
            .cluster
            .wait_for_audit(host, Duration::from_secs(10), |e| {
                e["event"] == "read.allowed" && e["path"] == "journal:nginx.service"
            })?;
        assert_eq!(allowed["mode"], "journal_follow", "{host}");
    }
    // New entries of both units are written to both hosts, again every half second until a
    // line of each host has arrived: an entry written before a follower's journalctl has
    // started is never shown (it follows new entries only), so no fixed wait is relied on.
    let mut got: Vec<String> = Vec::new();
    let seen = |got: &[String], host: &str| got.iter().any(|l| l.starts_with(&format!("{host}: ")));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut round: u64 = 0;
    while !(seen(&got, "web-1") && seen(&got, "web-2")) && Instant::now() < deadline {
        let now = now_micros();
        for (n, host) in ["web-1", "web-2"].into_iter().enumerate() {
            let dir = f.cluster.agents[host].dir.join("journal");
            let at = now + n as u128;
            write_journal(
                &dir,
                (entry(at, 100 + 2 * round, host, "sshd.service", OTHER_UNIT)
                    + &entry(
                        at + 10,
                        101 + 2 * round,
                        host,
                        "nginx.service",
                        &format!("live on {host} password={SECRET}"),
                    ))
                    .as_bytes(),
            )?;
        }
        round += 1;
        let wait_until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < wait_until {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
                got.push(line);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen(&got, "web-1") && seen(&got, "web-2"), "{got:?}");
    // Only the unit's entries, redacted, each prefixed with its host.
    for line in &got {
        assert!(
            line.starts_with("web-1: ") || line.starts_with("web-2: "),
            "{line}"
        );
        assert!(
            !line.contains(SECRET) && !line.contains(OTHER_UNIT),
            "{line}"
        );
    }
    for host in ["web-1", "web-2"] {
        let want = format!("{host}: ");
        let line = got
            .iter()
            .find(|l| l.starts_with(&want))
            .unwrap_or_else(|| panic!("no line of {host}: {got:?}"));
        assert!(
            line.contains(&format!(
                " {host} nginx.service[1234]: live on {host} password="
            )),
            "{line}"
        );
        assert!(
            !line.contains(SECRET) && !line.contains(OTHER_UNIT),
            "{line}"
        );
    }
    Ok(())
}

#[test]
fn journal_over_several_hosts_draws_the_progress_line_on_a_terminal_only() -> anyhow::Result<()> {
    let f = fleet()?;
    // stderr a terminal (script(1) gives the command a pty), standard output not: the progress
    // line is drawn.
    let command = format!(
        "{} logs journal --unit nginx.service --host 'web-*' >/dev/null",
        f.cluster.bins.join("loggate").display(),
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("LOGGATE_CONFIG", f.cluster.client_config("alice"))
        .stdin(Stdio::null())
        .output()?;
    let (tty, _) = text(&out);
    assert!(tty.contains("/3 hosts done"), "{tty:?}");
    // Piped: stderr holds the failure line and the summary only.
    let out = f.journal(&["--host", "web-*"])?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        !stderr.contains("hosts done") && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    Ok(())
}
