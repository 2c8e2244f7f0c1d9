//! End-to-end: no element of a grant's path glob stands for a '/' except `**` (issue 10,
//! finding 9), where grants are issued (the controller) and where they are used (the agent).

use loggate_tests::{text, Fixture};
use std::time::Duration;

#[test]
fn grant_issue_refuses_a_glob_whose_alternation_spans_a_separator() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let dir = f.cluster.dir.display().to_string();
    let glob = format!("{dir}/logs{{/,x}}app/api.log");
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
            &glob,
            "--ttl",
            "30m",
            "--reason",
            "TEST-1",
            "--redaction",
            "raw",
        ],
    )?;
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "issued: {stderr}");
    assert!(
        stderr.contains(&glob) && stderr.contains("inside {…}"),
        "{stderr}"
    );
    // Named as the --path it is: at issue there is no token to call malformed.
    assert!(
        stderr.contains("--path") && !stderr.contains("token"),
        "{stderr}"
    );
    // Nothing reached the agent: alice holds no grant.
    let read = f.logs("alice", &["cat", &f.api_log()])?;
    assert_eq!(read.status.code(), Some(3), "{}", text(&read).1);
    assert!(text(&read).1.contains("hold no grant"), "{}", text(&read).1);
    Ok(())
}

#[test]
fn a_negated_class_does_not_cover_a_separator() -> anyhow::Result<()> {
    // The review's example: `logs[!x]app` must not cover `logs/app`.
    let f = Fixture::start()?;
    let dir = f.cluster.dir.display().to_string();
    let id = f.cluster.grant(
        "alice",
        "web-1",
        &format!("{dir}/logs[!x]app/api.log"),
        "30m",
    )?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stdout.is_empty(), "served: {stdout}");
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied"
                && e["reason_code"] == "path_not_covered"
                && e["grant_id"] == id
        })?;
    Ok(())
}

/// `api.log.2.gz` (oldest), `api.log.1`, then the live `api.log` (the fixture's, newest) and a
/// sibling `payments.log` the grant does not cover; alice holds `<logs>/api.log*`.
fn rotated_set() -> anyhow::Result<(Fixture, Vec<String>)> {
    use std::io::Write as _;
    let f = Fixture::start()?;
    let mut day = String::new();
    for i in 0..20 {
        if i == 7 {
            day.push_str("2026-12-03T10:07:00Z INFO login password=hunter2 ok\n");
        } else {
            day.push_str(&format!("2026-12-03T10:{i:02}:00Z INFO rotated line {i}\n"));
        }
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(day.as_bytes())?;
    std::fs::write(f.logs.join("api.log.2.gz"), gz.finish()?)?;
    std::fs::write(
        f.logs.join("api.log.1"),
        day.replace("rotated", "yesterday"),
    )?;
    std::fs::write(f.logs.join("payments.log"), "not alice's\n")?;
    let age = |name: &str, hours: u64| -> anyhow::Result<()> {
        let at = std::time::SystemTime::now() - Duration::from_secs(hours * 3600);
        std::fs::File::options()
            .write(true)
            .open(f.logs.join(name))?
            .set_modified(at)?;
        Ok(())
    };
    age("api.log.2.gz", 48)?;
    age("api.log.1", 24)?;
    let glob = format!("{}/api.log*", f.logs.display());
    let id = f
        .cluster
        .issue_grant_with_profile("alice", "web-1", &glob, "30m", "default")?;
    f.cluster.wait_for_grant("web-1", &id)?;
    let order = ["api.log.2.gz", "api.log.1", "api.log"]
        .iter()
        .map(|n| f.logs.join(n).display().to_string())
        .collect();
    Ok((f, order))
}

#[test]
fn a_path_glob_reads_every_covered_file_oldest_first_each_line_prefixed_with_host_and_file(
) -> anyhow::Result<()> {
    let (f, order) = rotated_set()?;
    let glob = format!("{}/api.log*", f.logs.display());
    let out = f.logs("alice", &["cat", &glob])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    // Every line names its host and file; the files come oldest first, each whole.
    let mut files_seen: Vec<String> = Vec::new();
    for line in stdout.lines() {
        let rest = line.strip_prefix("web-1:").expect("host prefix");
        let (file, _) = rest.split_once(": ").expect("file prefix");
        if files_seen.last().map(String::as_str) != Some(file) {
            files_seen.push(file.to_string());
        }
    }
    assert_eq!(files_seen, order, "{stdout}");
    assert_eq!(stdout.lines().count(), 20 + 20 + 50, "{stdout}");
    assert!(!stdout.contains("hunter2"), "redacted as any read");
    assert!(stdout.contains(&format!(
        "web-1:{}: 2026-12-03T10:07:00Z INFO login password=[REDACTED:secret] ok",
        order[0]
    )));
    assert!(
        !stdout.contains("not alice's"),
        "payments.log is not granted"
    );
    // One listing and a separately gated and audited read per file.
    for path in &order {
        f.cluster
            .wait_for_audit("web-1", Duration::from_secs(5), |e| {
                e["event"] == "read.finished" && e["path"] == path.as_str()
            })?;
    }
    let audit = f.cluster.agent_audit("web-1");
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["event"] == "read.allowed")
            .count(),
        3
    );
    assert_eq!(
        audit.iter().filter(|e| e["event"] == "read.listed").count(),
        1
    );

    // grep and tail -n take a glob too (tail -n of the compressed one included).
    let out = f.logs("alice", &["grep", "line 1[89]$", &glob])?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(text(&out).0.lines().count(), 6, "{}", text(&out).0);
    let out = f.logs("alice", &["tail", "-n", "2", &glob])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 6, "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "web-1:{}: 2026-12-03T10:18:00Z INFO rotated line 18\n",
            order[0]
        )),
        "{stdout}"
    );
    assert!(
        stdout.ends_with(&format!(
            "web-1:{}: 2026-11-27T07:49:00Z INFO line 49\n",
            order[2]
        )),
        "{stdout}"
    );
    // A file that fails is one line naming it, and the others are still read: a binary file
    // the grant covers (listed, then refused by the agent as content_binary, exit 1).
    let binary = f.logs.join("api.log.old");
    std::fs::write(&binary, b"text\0\0\0binary\n")?;
    std::fs::File::options()
        .write(true)
        .open(&binary)?
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(36 * 3600))?;
    let binary = binary.display().to_string();
    let out = f.logs("alice", &["cat", &glob])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stdout.lines().count(), 20 + 20 + 50, "{stdout}");
    let errors: Vec<&str> = stderr.lines().collect();
    assert_eq!(errors.len(), 2, "{stderr}");
    assert!(
        errors[0].starts_with(&format!("loggate: web-1:{binary}: "))
            && errors[0].contains("NUL bytes"),
        "{stderr}"
    );
    assert!(errors[1].contains("1 of the 4 files matching"), "{stderr}");
    std::fs::remove_file(&binary)?;

    // A glob that matches nothing is one clear line and a failure.
    let none = format!("{}/nothing*.log", f.logs.display());
    let out = f.logs("alice", &["cat", &none])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no file your grants cover on agent web-1 matches"),
        "{stderr}"
    );
    // Without a grant the listing itself is denied (exit 3), as a read is.
    let out = f.logs("bob", &["cat", &glob])?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(text(&out).0.is_empty());
    Ok(())
}

#[test]
fn tail_follow_with_a_path_glob_follows_the_one_live_file() -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Write as _};
    let (f, order) = rotated_set()?;
    let glob = format!("{}/api.log*", f.logs.display());
    let mut child = f
        .cluster
        .logs_cmd("alice", "web-1", &["tail", "-n", "1", "--follow", &glob])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
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
    let live = &order[2];
    let first = rx.recv_timeout(Duration::from_secs(15))?;
    assert_eq!(
        first,
        format!("web-1:{live}: 2026-11-27T07:49:00Z INFO line 49")
    );
    let mut file = std::fs::OpenOptions::new().append(true).open(live)?;
    file.write_all(b"2026-11-27T08:00:00Z INFO appended\n")?;
    drop(file);
    let next = rx.recv_timeout(Duration::from_secs(15));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        next?,
        format!("web-1:{live}: 2026-11-27T08:00:00Z INFO appended")
    );
    // Only the live file was read: the rotated ones were never opened.
    let allowed: Vec<serde_json::Value> = f
        .cluster
        .agent_audit("web-1")
        .into_iter()
        .filter(|e| e["event"] == "read.allowed")
        .collect();
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    assert_eq!(allowed[0]["path"], live.as_str());

    // Two live files match: following is refused, naming them.
    std::fs::write(f.logs.join("api.logins"), "x\n")?;
    let out = f.logs("alice", &["tail", "--follow", &glob])?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--follow follows one live file") && stderr.contains("api.logins"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_path_glob_over_more_files_than_the_bound_is_refused_before_any_read() -> anyhow::Result<()> {
    let (f, _) = rotated_set()?;
    for i in 10..1010 {
        std::fs::write(f.logs.join(format!("api.log.{i}")), "x\n")?;
    }
    let glob = format!("{}/api.log*", f.logs.display());
    let out = f.logs("alice", &["cat", &glob])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("matches more than 1000 files on agent web-1"),
        "{stderr}"
    );
    assert!(
        !f.cluster
            .agent_audit("web-1")
            .iter()
            .any(|e| e["event"] == "read.allowed"),
        "no file was read"
    );
    Ok(())
}

#[test]
fn a_glob_stops_at_a_revoked_grant_instead_of_asking_for_every_other_file() -> anyhow::Result<()> {
    use std::io::Read as _;
    let f = Fixture::start()?;
    let dir = f.logs.join("many");
    std::fs::create_dir_all(&dir)?;
    // The first file (by name, same second) is large: with its output not read, its stream
    // waits on the pipe until the grant is revoked.
    let big = dir.join("a-big.log");
    std::fs::write(
        &big,
        "2026-12-04T10:00:00Z INFO a line of the big file\n".repeat(600_000),
    )?;
    for i in 0..20 {
        std::fs::write(dir.join(format!("b-{i:02}.log")), "small\n")?;
    }
    let glob = format!("{}/*.log", dir.display());
    let id = f.cluster.grant("alice", "web-1", &glob, "30m")?;
    let mut child = f
        .cluster
        .logs_cmd("alice", "web-1", &["cat", &glob])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let big_path = big.display().to_string();
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(20), |e| {
            e["event"] == "read.allowed" && e["path"] == big_path.as_str()
        })?;
    let revoke = f
        .cluster
        .run_cli("admin", &["grant", "revoke", &id, "--reason", "TEST-3"])?;
    assert!(revoke.status.success(), "{}", text(&revoke).1);
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(20), |e| {
            e["event"] == "read.finished" && e["path"] == big_path.as_str()
        })?;
    // Drain the output now (bounded: the big file at most), then the end.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut sink = Vec::new();
    stdout.read_to_end(&mut sink)?;
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)?;
    let status = child.wait()?;
    assert!(!status.success(), "{stderr}");
    let denied = f
        .cluster
        .agent_audit("web-1")
        .iter()
        .filter(|e| e["event"] == "read.denied")
        .count();
    assert!(
        denied <= 1,
        "{denied} denied reads after the revocation; {stderr}"
    );
    assert!(stderr.lines().count() <= 2, "{stderr}");
    assert!(stderr.contains("20 files not tried"), "{stderr}");
    Ok(())
}

#[test]
fn literal_reads_a_file_whose_name_holds_glob_characters_as_it_is() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let dir = f.logs.join("reports");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("report[1].log"), "the bracketed report\n")?;
    std::fs::write(dir.join("report1.log"), "the other report\n")?;
    f.cluster.grant(
        "alice",
        "web-1",
        &format!("{}/report*", dir.display()),
        "30m",
    )?;
    let name = format!("{}/report[1].log", dir.display());
    let out = f.logs("alice", &["cat", "--literal", &name])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    // The one file, as a single-file read writes it: no HOST:FILE prefix.
    assert_eq!(stdout, "the bracketed report\n");
    // Without --literal the same path is a glob, as documented: `[1]` is a class.
    let out = f.logs("alice", &["cat", &name])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        format!("web-1:{}/report1.log: the other report\n", dir.display())
    );
    Ok(())
}
