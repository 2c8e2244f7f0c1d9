//! End-to-end: one `loggate logs` command reading from several real agents at once (issue 13),
//! resolved through the real controller's registry: `--host` repeated and globbed,
//! `--selector`, a host that is down and one without a grant judged on their own, the exit
//! status, `--fail-fast`, `--parallel 1`, merged order, and the progress line.
//!
//! The agents of one machine serve the same file for the same path, so every host's content is
//! the same here; the merged order is then proved by the exact line-by-line interleaving (a tie
//! goes to the host first by id), and the merge of differing contents by the unit tests of
//! `controller/src/cli/reads.rs`.

use loggate_tests::{text, Cluster};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// web-1 and web-2 (env=prod, team=payments) hold alice's grant; web-3 (team=search) does not;
/// db-1 (team=db) holds one but is down (it registered its address, then was killed).
struct Fleet {
    cluster: Cluster,
    log: PathBuf,
    lines: Vec<String>,
}

const AGENTS: [(&str, &str); 4] = [
    ("web-1", "\"env=prod\", \"team=payments\""),
    ("web-2", "\"env=prod\", \"team=payments\""),
    ("web-3", "\"env=prod\", \"team=search\""),
    ("db-1", "\"env=prod\", \"team=db\""),
];

fn fleet() -> anyhow::Result<Fleet> {
    let mut cluster = Cluster::new(None)?;
    for id in ["web-3", "db-1"] {
        cluster.issue_agent_cert(id)?;
    }
    let logs = cluster.dir.join("logs/app");
    std::fs::create_dir_all(&logs)?;
    let mut lines = Vec::new();
    for i in 0..40 {
        lines.push(format!("2026-11-27T07:{i:02}:00Z INFO request {i}"));
        if i % 10 == 3 {
            lines.push(format!("    at frame {i} (no time: stays after its line)"));
        }
    }
    let log = logs.join("app.log");
    std::fs::write(&log, lines.join("\n") + "\n")?;
    for (id, labels) in AGENTS {
        cluster.add_agent(id, &[&logs], "")?;
        cluster.set_agent_labels(id, labels)?;
    }
    cluster.start_controller()?;
    for (id, _) in AGENTS {
        cluster.start_agent(id)?;
    }
    let glob = format!("{}/*.log", logs.display());
    for id in ["web-1", "web-2", "db-1"] {
        cluster.grant("alice", id, &glob, "30m")?;
    }
    // web-3 received grants too (none for alice): it is up and registered.
    cluster.wait_registered(4)?;
    cluster.kill_agent("db-1");
    Ok(Fleet {
        cluster,
        log,
        lines,
    })
}

impl Fleet {
    fn logs(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.cluster.cli("alice").arg("logs").args(args).output()?)
    }

    fn path(&self) -> String {
        self.log.display().to_string()
    }

    /// The lines of `stdout` that `host` wrote, prefix removed, in order.
    fn of_host(stdout: &str, host: &str) -> Vec<String> {
        let prefix = format!("{host}: ");
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    fn read_events(&self, host: &str, event: &str) -> usize {
        self.cluster
            .agent_audit(host)
            .iter()
            .filter(|e| e["event"] == event && e["subject"] == "spiffe://loggate.local/user/alice")
            .count()
    }
}

#[test]
fn a_down_host_and_one_without_a_grant_fail_alone_and_the_others_are_read_whole(
) -> anyhow::Result<()> {
    let f = fleet()?;
    let out = f.logs(&["cat", "--host", "web-*", "--host", "db-1", &f.path()])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "some hosts failed: {stderr}");
    for host in ["web-1", "web-2"] {
        assert_eq!(Fleet::of_host(&stdout, host), f.lines, "{host} read whole");
    }
    assert_eq!(
        stdout.lines().count(),
        2 * f.lines.len(),
        "only prefixed lines"
    );
    let errors: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        errors.len(),
        3,
        "one line per failed host and a summary: {stderr}"
    );
    let line_of = |host: &str| {
        errors
            .iter()
            .find(|l| l.starts_with(&format!("loggate: {host}: ")))
            .copied()
            .unwrap_or_default()
    };
    assert!(
        line_of("web-3").contains("access denied by agent web-3"),
        "{stderr}"
    );
    assert!(
        line_of("db-1").contains("cannot connect to db-1"),
        "{stderr}"
    );
    assert!(
        errors[2].contains("2 of 4 hosts failed (db-1, web-3)"),
        "{stderr}"
    );
    // Piped stderr: no progress line.
    assert!(
        !stderr.contains('\r') && !stderr.contains("hosts done"),
        "{stderr:?}"
    );
    // Every read audited on its own agent.
    for host in ["web-1", "web-2"] {
        f.cluster
            .wait_for_audit(host, Duration::from_secs(5), |e| {
                e["event"] == "read.finished" && e["end_reason"] == "eof"
            })?;
        assert_eq!(f.read_events(host, "read.allowed"), 1, "{host}");
    }
    f.cluster
        .wait_for_audit("web-3", Duration::from_secs(5), |e| {
            e["event"] == "read.denied"
        })?;

    // Every host failing is its own status.
    let out = f.logs(&["cat", "--host", "web-3", "--host", "db-1", &f.path()])?;
    assert_eq!(out.status.code(), Some(7), "{}", text(&out).1);
    assert!(text(&out).0.is_empty());

    // One plain --host is the single-host read as before: no prefix, exit 3 when denied.
    let out = f.logs(&["cat", "--host", "web-1", &f.path()])?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(text(&out).0, f.lines.join("\n") + "\n");
    let out = f.logs(&["cat", "--host", "web-3", &f.path()])?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    Ok(())
}

#[test]
fn selector_glob_parallel_one_and_fail_fast_choose_and_bound_the_hosts() -> anyhow::Result<()> {
    let f = fleet()?;
    // The selector picks web-1 and web-2 only (web-3 is team=search, db-1 team=db).
    let out = f.logs(&["cat", "--selector", "env=prod,team=payments", &f.path()])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(Fleet::of_host(&stdout, "web-1"), f.lines);
    assert_eq!(Fleet::of_host(&stdout, "web-2"), f.lines);
    assert_eq!(stdout.lines().count(), 2 * f.lines.len(), "{stdout}");
    assert!(stderr.is_empty(), "{stderr}");

    // A glob over ids, narrowed by a selector: both must match.
    let out = f.logs(&[
        "tail",
        "-n",
        "2",
        "--host",
        "*-[0-9]",
        "--selector",
        "team=payments",
        &f.path(),
    ])?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(text(&out).0.lines().count(), 4, "{}", text(&out).0);

    // One connection at a time still reads every host.
    let out = f.logs(&[
        "grep",
        "request 3",
        "--host",
        "web-1",
        "--host",
        "web-2",
        "--parallel",
        "1",
        &f.path(),
    ])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let expected: Vec<String> = f
        .lines
        .iter()
        .filter(|l| l.contains("request 3"))
        .cloned()
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(Fleet::of_host(&stdout, "web-1"), expected);
    assert_eq!(Fleet::of_host(&stdout, "web-2"), expected);
    // ... and one at a time: over a file that takes the agent a while to search, web-2's read
    // begins only after web-1's search has run (its `read.allowed` time plus the `duration_ms`
    // of its `read.finished`; 1 ms for the records' rounding).
    let big = f.log.with_file_name("big.log");
    let mut text_of_big = String::new();
    for i in 0..200_000 {
        text_of_big.push_str(&format!("2026-11-27T08:00:00Z INFO filler line {i}\n"));
    }
    std::fs::write(&big, text_of_big)?;
    let big = big.display().to_string();
    let out = f.logs(&[
        "grep",
        "nothing matches this",
        "--host",
        "web-1",
        "--host",
        "web-2",
        "--parallel",
        "1",
        &big,
    ])?;
    assert!(out.status.success(), "{}", text(&out).1);
    let read_of = |host: &str, event: &str| -> anyhow::Result<serde_json::Value> {
        f.cluster.wait_for_audit(host, Duration::from_secs(5), |e| {
            e["event"] == event && e["path"] == big.as_str()
        })
    };
    let web1_start = read_of("web-1", "read.allowed")?["time"]
        .as_i64()
        .unwrap_or(i64::MAX);
    let web1_ran = read_of("web-1", "read.finished")?["duration_ms"]
        .as_i64()
        .unwrap_or(i64::MAX);
    let web2_start = read_of("web-2", "read.allowed")?["time"]
        .as_i64()
        .unwrap_or(i64::MIN);
    let web2_ran = read_of("web-2", "read.finished")?["duration_ms"]
        .as_i64()
        .unwrap_or(i64::MAX);
    assert!(
        web1_ran > 5 && web2_ran > 5,
        "the searches were too quick to tell: {web1_ran} ms, {web2_ran} ms"
    );
    // One after the other, in either order (the order hosts are read in is not promised).
    let web2_after = web2_start + 1 >= web1_start + web1_ran;
    let web1_after = web1_start + 1 >= web2_start + web2_ran;
    assert!(
        web2_after || web1_after,
        "--parallel 1 overlapped: web-1 began at {web1_start} and searched {web1_ran} ms, web-2 began at {web2_start} and searched {web2_ran} ms"
    );

    // JSON: one object per line naming its host and path.
    let out = f.logs(&[
        "cat",
        "--output",
        "json",
        "--host",
        "web-1",
        "--host",
        "web-2",
        &f.path(),
    ])?;
    assert!(out.status.success(), "{}", text(&out).1);
    let records: Vec<serde_json::Value> = text(&out)
        .0
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    for host in ["web-1", "web-2"] {
        let lines: Vec<&str> = records
            .iter()
            .filter(|r| r["host"] == host && r["path"] == f.path().as_str())
            .filter_map(|r| r["line"].as_str())
            .collect();
        assert_eq!(lines, f.lines, "{host}");
    }
    assert_eq!(records.len(), 2 * f.lines.len());

    // Nothing matches: an error, not an empty success.
    let out = f.logs(&["cat", "--selector", "team=nosuch", &f.path()])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("no agent matches"),
        "{}",
        text(&out).1
    );
    // A merge needs every host at once: more hosts than --parallel is bad usage, said so.
    for args in [
        &["tail", "--follow", "--host", "web-*", "--parallel", "2"][..],
        &["cat", "--merge", "--host", "web-*", "--parallel", "2"][..],
    ] {
        let out = f.logs(&[args, &[f.path().as_str()]].concat())?;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out).1);
        assert!(
            text(&out).1.contains("3 hosts match and --parallel is 2"),
            "{}",
            text(&out).1
        );
    }
    // --agent-addr dials one agent.
    let addr = f.cluster.agent_addr("web-1");
    let out = f.logs(&["cat", "--host", "web-*", "--agent-addr", &addr, &f.path()])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
    // --parallel 0 is bad usage.
    let out = f.logs(&["cat", "--host", "web-*", "--parallel", "0", &f.path()])?;
    assert_eq!(out.status.code(), Some(2));

    // --fail-fast with one connection at a time: db-1 (first by id) fails, nothing after it
    // is read, and its own exit code (1, cannot connect) is the command's.
    let before = (
        f.read_events("web-2", "read.allowed"),
        f.read_events("web-3", "read.denied"),
    );
    let out = f.logs(&[
        "cat",
        "--host",
        "*",
        "--parallel",
        "1",
        "--fail-fast",
        &f.path(),
    ])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("loggate: db-1: cannot connect to db-1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stopped at the first failure (--fail-fast): db-1"),
        "{stderr}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let after = (
        f.read_events("web-2", "read.allowed"),
        f.read_events("web-3", "read.denied"),
    );
    assert_eq!(after, before, "no host after db-1 but the next was asked");
    Ok(())
}

/// The merged interleaving of two hosts serving `lines`: each timed line with the untimed lines
/// after it (they share its time) as web-1's group, then web-2's (a tie goes to the host first
/// by id).
fn interleaved(lines: &[String]) -> Vec<String> {
    let mut groups: Vec<Vec<&String>> = Vec::new();
    for line in lines {
        match groups.last_mut() {
            Some(group) if line.starts_with(' ') => group.push(line),
            _ => groups.push(vec![line]),
        }
    }
    groups
        .iter()
        .flat_map(|group| {
            ["web-1", "web-2"]
                .into_iter()
                .flat_map(move |host| group.iter().map(move |l| format!("{host}: {l}")))
        })
        .collect()
}

#[test]
fn merged_reads_and_multi_host_follow_interleave_in_timestamp_order() -> anyhow::Result<()> {
    let f = fleet()?;
    let out = f.logs(&[
        "cat",
        "--merge",
        "--host",
        "web-1",
        "--host",
        "web-2",
        &f.path(),
    ])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let got: Vec<String> = stdout.lines().map(str::to_string).collect();
    assert_eq!(got, interleaved(&f.lines));

    // Following several hosts merges what they append.
    let mut child = f
        .cluster
        .cli("alice")
        .args([
            "logs", "tail", "-n", "0", "--follow", "--host", "web-1", "--host", "web-2",
        ])
        .arg(f.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Both streams are open once both agents audited the read (the merged cat was the first).
    let deadline = Instant::now() + Duration::from_secs(10);
    while ["web-1", "web-2"]
        .iter()
        .any(|h| f.read_events(h, "read.allowed") < 2)
    {
        anyhow::ensure!(Instant::now() < deadline, "the follow streams did not open");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let appended: Vec<String> = (0..5)
        .flat_map(|i| {
            [
                format!("2026-11-28T08:00:0{i}Z INFO appended {i}"),
                format!("  detail {i} without a time"),
            ]
        })
        .collect();
    let mut file = std::fs::OpenOptions::new().append(true).open(&f.log)?;
    file.write_all((appended.join("\n") + "\n").as_bytes())?;
    drop(file);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.len() < 2 * appended.len() && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            got.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got, interleaved(&appended));
    Ok(())
}

#[test]
fn the_progress_line_is_drawn_on_a_terminal_only() -> anyhow::Result<()> {
    let f = fleet()?;
    // stderr a terminal (script(1) gives the command a pty): the progress line is drawn, and
    // cleared before the end.
    let config = f.cluster.client_config("alice");
    let command = format!(
        "{} logs cat --host 'web-*' {} >/dev/null",
        f.cluster.bins.join("loggate").display(),
        f.path()
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("LOGGATE_CONFIG", &config)
        .stdin(Stdio::null())
        .output()?;
    let (tty, _) = text(&out);
    assert!(tty.contains("hosts done"), "{tty:?}");
    assert!(tty.contains("/3 hosts done"), "{tty:?}");
    // Piped: nothing but the failure lines.
    let out = f.logs(&["cat", "--host", "web-*", &f.path()])?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        !stderr.contains("hosts done") && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    Ok(())
}

#[test]
fn a_path_glob_over_several_hosts_reads_every_covered_file_of_each_host() -> anyhow::Result<()> {
    let f = fleet()?;
    let other = f.log.with_file_name("other.log");
    std::fs::write(&other, "2026-11-27T09:00:00Z INFO other\n")?;
    // other.log is the newer: each host reads app.log, then other.log.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&f.log)?
        .set_modified(old)?;
    let glob = format!("{}/*.log", f.log.parent().expect("folder").display());
    let out = f.logs(&["cat", "--host", "web-*", &glob])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    let other = other.display().to_string();
    for host in ["web-1", "web-2"] {
        let mut want: Vec<String> = f
            .lines
            .iter()
            .map(|l| format!("{}: {l}", f.path()))
            .collect();
        want.push(format!("{other}: 2026-11-27T09:00:00Z INFO other"));
        let got: Vec<String> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{host}:")).map(str::to_string))
            .collect();
        assert_eq!(got, want, "{host}");
        assert_eq!(f.read_events(host, "read.allowed"), 2, "{host}");
    }
    assert!(
        stderr.contains("loggate: web-3: access denied by agent web-3"),
        "{stderr}"
    );
    assert!(stderr.contains("1 of 3 hosts failed (web-3)"), "{stderr}");

    // Matching nothing is each host's failure, one line each.
    let none = format!("{}/nothing*.log", f.log.parent().expect("folder").display());
    let out = f.logs(&["cat", "--host", "web-1", "--host", "web-2", &none])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stdout.is_empty());
    for host in ["web-1", "web-2"] {
        assert!(
            stderr.contains(&format!(
                "loggate: {host}: no file your grants cover on agent {host} matches"
            )),
            "{stderr}"
        );
    }
    Ok(())
}

#[test]
fn ls_over_several_hosts_prefixes_each_host_and_judges_each_on_its_own() -> anyhow::Result<()> {
    let f = fleet()?;
    let out = f.logs(&["ls", "--host", "web-*"])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("web-1: ") && lines[0].ends_with(&f.path()));
    assert!(lines[1].starts_with("web-2: ") && lines[1].ends_with(&f.path()));
    assert!(
        stderr.contains("loggate: web-3: access denied by agent web-3"),
        "{stderr}"
    );
    assert!(stderr.contains("1 of 3 hosts failed (web-3)"), "{stderr}");
    for host in ["web-1", "web-2"] {
        assert_eq!(f.read_events(host, "read.listed"), 1, "{host}");
    }

    // A selector, JSON: every record names its host.
    let out = f.logs(&["ls", "--selector", "team=payments", "--output", "json"])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let hosts: Vec<String> = stdout
        .lines()
        .map(serde_json::from_str::<serde_json::Value>)
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .filter_map(|r| r["host"].as_str().map(str::to_string))
        .collect();
    assert_eq!(hosts, ["web-1", "web-2"]);

    // --fail-fast: db-1 (down, first by id) stops it with its own code, nothing listed.
    let out = f.logs(&["ls", "--host", "*", "--parallel", "1", "--fail-fast"])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("stopped at the first failure (--fail-fast): db-1"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_single_host_read_shows_bytes_and_rate_on_a_terminal_only() -> anyhow::Result<()> {
    let f = fleet()?;
    let big = f.log.with_file_name("big.log");
    let mut content = String::new();
    for i in 0..200_000 {
        content.push_str(&format!("2026-11-27T08:00:00Z INFO filler line {i}\n"));
    }
    std::fs::write(&big, &content)?;
    let config = f.cluster.client_config("alice");
    let loggate = f.cluster.bins.join("loggate").display().to_string();
    let under_a_terminal = |command: &str| -> anyhow::Result<String> {
        let out = Command::new("script")
            .args(["-qec", command, "/dev/null"])
            .env("LOGGATE_CONFIG", &config)
            .stdin(Stdio::null())
            .output()?;
        Ok(text(&out).0)
    };
    // stderr a terminal, stdout not one: the bar is drawn on the terminal, never in the output.
    // The output goes to a pipe whose reader starts a second late, so the read lasts past the
    // bar's first redraw on any machine (not only on a slow debug build).
    let saved = f.cluster.dir.join("saved.log");
    let late_reader = |saved: &std::path::Path| format!("| (sleep 1; cat >{})", saved.display());
    let tty = under_a_terminal(&format!(
        "{loggate} logs cat --host web-1 {} {}",
        big.display(),
        late_reader(&saved)
    ))?;
    assert!(tty.contains(" read, ") && tty.contains("/s"), "{tty:?}");
    assert_eq!(std::fs::read_to_string(&saved)?, content);
    // One host's path glob: the same bar.
    let tty = under_a_terminal(&format!(
        "{loggate} logs cat --host web-1 '{}' {}",
        big.with_file_name("big*.log").display(),
        late_reader(&saved)
    ))?;
    assert!(tty.contains(" read, ") && tty.contains("/s"), "{tty:?}");
    let prefix = format!("web-1:{}: ", big.display());
    let saved_lines = std::fs::read_to_string(&saved)?;
    assert_eq!(saved_lines.lines().count(), 200_000);
    assert!(saved_lines.lines().all(|l| l.starts_with(&prefix)));
    // stdout on the same terminal: no bar (it would garble the lines), single or multi-host.
    for hosts in ["--host web-1", "--host 'web-*'"] {
        let tty = under_a_terminal(&format!("{loggate} logs cat {hosts} {}", f.path()))?;
        assert!(
            !tty.contains(" read, ") && !tty.contains("hosts done"),
            "{hosts}: {tty:?}"
        );
    }
    // Piped: stderr holds nothing.
    let out = f.logs(&["cat", "--host", "web-1", &big.display().to_string()])?;
    assert!(out.status.success());
    assert_eq!(text(&out).1, "");
    Ok(())
}
