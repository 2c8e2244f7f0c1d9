//! End-to-end: a live stream is cut within a second of its grant's expiry or revocation.

use loggate_tests::{text, Fixture};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn follow(f: &Fixture) -> anyhow::Result<std::process::Child> {
    Ok(f.cluster
        .logs_cmd("alice", "web-1", &["tail", "--follow", &f.api_log()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// Waits for the child to exit, at most `timeout`; returns how long it took.
fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if child.try_wait()?.is_some() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    anyhow::bail!("the stream was not cut within {timeout:?}")
}

#[test]
fn revoked_while_streaming_cuts_the_stream() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let id = f.grant("alice", "30m")?;
    let mut child = follow(&f)?;
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.allowed"
        })?;
    let out = f.cluster.run_cli(
        "admin",
        &["grant", "revoke", &id, "--reason", "incident closed"],
    )?;
    assert!(out.status.success(), "{}", text(&out).1);
    let revoked_at = Instant::now();
    let took = wait_exit(&mut child, Duration::from_secs(5))?;
    let out = child.wait_with_output()?;
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("grant {id} was revoked")),
        "{stderr}"
    );
    assert!(stderr.contains("the stream was cut"), "{stderr}");
    assert!(
        took <= Duration::from_secs(2),
        "cut after {:?}",
        revoked_at.elapsed()
    );
    let end = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.finished"
        })?;
    assert_eq!(end["end_reason"], "grant_revoked");
    Ok(())
}

#[test]
fn expiry_while_streaming_cuts_the_stream_within_a_second() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let id = f.grant("alice", "3s")?;
    let list = f.cluster.run_cli("alice", &["grant", "list", "--json"])?;
    let grants: serde_json::Value = serde_json::from_slice(&list.stdout)?;
    let not_after = grants[0]["not_after"].as_i64().unwrap();
    let mut child = follow(&f)?;
    wait_exit(&mut child, Duration::from_secs(10))?;
    let ended = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let out = child.wait_with_output()?;
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("grant {id} for")) && stderr.contains("expired"),
        "{stderr}"
    );
    // Cut within 1 s of expiry (plus process exit), never before it.
    assert!(ended >= not_after as f64, "cut before expiry");
    assert!(
        ended - (not_after as f64) < 1.5,
        "cut {:.2}s after expiry",
        ended - not_after as f64
    );
    let end = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.finished"
        })?;
    assert_eq!(end["end_reason"], "grant_expired");
    Ok(())
}

#[test]
fn concurrent_streams_per_subject_are_limited() -> anyhow::Result<()> {
    let f = Fixture::start_with("[limits]\nmax_streams_per_subject = 1")?;
    f.grant("alice", "30m")?;
    let mut child = follow(&f)?;
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.allowed"
        })?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out).1.contains("streams open on agent web-1"),
        "{}",
        text(&out).1
    );
    let _ = child.kill();
    let _ = child.wait();
    // The slot is released when the stream ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = f.logs("alice", &["cat", &f.api_log()])?;
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slot never released: {}",
            text(&out).1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[tokio::test]
async fn a_slow_reader_still_learns_that_the_stream_was_cut() -> anyhow::Result<()> {
    let (f, big) = tokio::task::spawn_blocking(|| -> anyhow::Result<(Fixture, String)> {
        let f = Fixture::start()?;
        // Far more than the agent's queue and the HTTP/2 windows hold.
        let line = "2026-11-27T07:00:00Z INFO filler line to make the file large enough\n";
        let big = f.logs.join("big.log");
        std::fs::write(&big, line.repeat(400_000))?;
        f.grant("alice", "3s")?;
        Ok((f, big.display().to_string()))
    })
    .await??;
    let pki = f.cluster.dir.join("pki");
    let files = loggate_core::tls::TlsFiles {
        ca: pki.join("ca.crt"),
        cert: pki.join("users/alice.crt"),
        key: pki.join("users/alice.key"),
    };
    let channel = files
        .endpoint(
            &f.cluster.agent_addr("web-1"),
            loggate_core::tls::Server::Agent("web-1"),
        )?
        .connect()
        .await?;
    let mut client = loggate_proto::agent_client::AgentClient::new(channel);
    let mut stream = client
        .read_log(loggate_proto::ReadLogRequest {
            path: big,
            mode: loggate_proto::ReadMode::Cat as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    // Read one message, then stall past the grant's end with the queue full.
    stream.message().await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    let status = ended.expect("the cut stream ended like a complete file");
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
    tokio::task::spawn_blocking(move || drop(f)).await?;
    Ok(())
}

/// `logs tail -n 0 --follow` on api.log as alice, once the agent has allowed it: the child and
/// the lines it prints.
fn follow_new_lines(
    f: &Fixture,
) -> anyhow::Result<(std::process::Child, std::sync::mpsc::Receiver<String>)> {
    let mut child = f
        .cluster
        .logs_cmd(
            "alice",
            "web-1",
            &["tail", "-n", "0", "--follow", &f.api_log()],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let rx = lines_of(&mut child);
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.allowed" && e["mode"] == "tail_follow"
        })?;
    Ok((child, rx))
}

/// The lines a child prints, as they come.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Every line received until one contains `needle` (that one included); fails after `timeout`.
fn until_line(
    rx: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return Ok(seen);
                }
            }
            Err(_) => anyhow::bail!("no line with {needle:?} within {timeout:?}; got {seen:?}"),
        }
    }
}

fn append(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

#[test]
fn follow_moves_to_the_file_that_replaced_a_rotated_one() -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let f = Fixture::start()?;
    let grant = f.grant_with_profile("alice", "30m", "default")?;
    let log = f.logs.join("api.log");
    let (mut child, rx) = follow_new_lines(&f)?;
    append(&log, "line-1 before rotation\n")?;
    until_line(&rx, "line-1", Duration::from_secs(5))?;

    // logrotate's default: rename, then create; the writer finishes its line in the old file
    // before it reopens the path.
    let old_ino = std::fs::metadata(&log)?.ino();
    let rotated = f.logs.join("api.log.1");
    std::fs::rename(&log, &rotated)?;
    append(&rotated, "line-2 still written to the old file\n")?;
    // A line the old file never finishes is not served (half of it could be half a secret).
    append(&rotated, "half a line password=hunt")?;
    std::fs::write(&log, "line-3 in the new file from carol@example.com\n")?;
    let new_ino = std::fs::metadata(&log)?.ino();
    let seen = until_line(&rx, "line-3", Duration::from_secs(5))?;
    assert_eq!(
        seen,
        [
            "line-2 still written to the old file",
            "line-3 in the new file from [REDACTED:email]"
        ],
        "the old file's rest, then the new file, redacted"
    );
    append(&log, "line-4 appended to the new file\n")?;
    until_line(&rx, "line-4", Duration::from_secs(5))?;

    let reopened = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.reopened"
        })?;
    assert_eq!(reopened["grant_id"], grant.as_str());
    assert_eq!(reopened["path"], f.api_log());
    assert_eq!(reopened["previous_inode"], old_ino);
    assert_eq!(reopened["inode"], new_ino);
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

#[test]
fn follow_starts_again_after_copytruncate() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    f.grant("alice", "30m")?;
    let log = f.logs.join("api.log");
    let (mut child, rx) = follow_new_lines(&f)?;
    append(&log, "line-1 before truncation\n")?;
    until_line(&rx, "line-1", Duration::from_secs(5))?;
    // copytruncate: the file is emptied in place, then written from its start.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)?
        .set_len(0)?;
    std::thread::sleep(Duration::from_millis(500));
    append(&log, "line-2 after truncation\n")?;
    let seen = until_line(&rx, "line-2", Duration::from_secs(5))?;
    assert_eq!(seen, ["line-2 after truncation"]);
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}
