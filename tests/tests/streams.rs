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
    let files = f.cluster.tls_files_of("users/alice");
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

/// The line a following stream gets when api.log is truncated under it.
fn truncated_notice(f: &Fixture) -> String {
    format!(
        "[loggate] {:?} was truncated; reading it again from its start",
        f.api_log()
    )
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
    assert_eq!(
        seen,
        [truncated_notice(&f), "line-2 after truncation".into()],
        "the stream says it starts again"
    );
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// The pattern of issue #10 (finding 7): on long lines every line costs a long match.
const SLOW_PATTERN: &str = r"(?s-u:.){0,3000}[\x80-\xff]";

/// A fixture whose agent accepts [`SLOW_PATTERN`] (its default `max_regex_bytes` refuses it,
/// and so does the per-line complexity bound at 64 KiB lines: 2 KiB lines allow its 6,007
/// states) with `extra` limits, serving `slow.log`: 3,000 lines of 1,500 ASCII bytes that the
/// pattern never matches, each taking long enough to match that the whole file would take
/// minutes.
fn slow_grep_fixture(extra: &str) -> anyhow::Result<(Fixture, String)> {
    let f = Fixture::start_with(&format!(
        "[limits]\nmax_regex_bytes = 1048576\nmax_line_bytes = 2048\n\
         max_streams_per_subject = 1\n{extra}"
    ))?;
    let line = format!("2026-12-04T10:00:00Z INFO {}\n", "abcdefghij".repeat(147));
    let slow = f.logs.join("slow.log");
    std::fs::write(&slow, line.repeat(3000))?;
    Ok((f, slow.display().to_string()))
}

/// Starts `logs grep SLOW_PATTERN slow.log` as alice and waits until it is being matched.
fn start_slow_grep(f: &Fixture, slow: &str) -> anyhow::Result<std::process::Child> {
    let child = f
        .cluster
        .logs_cmd("alice", "web-1", &["grep", SLOW_PATTERN, slow])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(10), |e| {
            e["event"] == "read.allowed" && e["mode"] == "grep"
        })?;
    std::thread::sleep(Duration::from_millis(1500));
    Ok(child)
}

/// Waits for the `read.finished` record of the slow grep; returns it and how long it took.
fn slow_grep_end(f: &Fixture, since: Instant) -> anyhow::Result<(serde_json::Value, Duration)> {
    let end = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(60), |e| {
            e["event"] == "read.finished"
                && e["path"].as_str().is_some_and(|p| p.ends_with("slow.log"))
        })?;
    Ok((end, since.elapsed()))
}

/// The user's one stream slot is free again: a `cat` goes through.
fn assert_slot_free(f: &Fixture) -> anyhow::Result<()> {
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert!(out.status.success(), "slot still held: {}", text(&out).1);
    Ok(())
}

#[test]
fn a_grep_that_matches_nothing_ends_within_a_second_of_its_client_leaving() -> anyhow::Result<()> {
    let (f, slow) = slow_grep_fixture("")?;
    f.grant("alice", "30m")?;
    let mut child = start_slow_grep(&f, &slow)?;
    child.kill()?;
    let killed = Instant::now();
    child.wait()?;
    let (end, took) = slow_grep_end(&f, killed)?;
    eprintln!("client killed: read.finished after {took:?}");
    assert_eq!(end["end_reason"], "client_closed", "{end}");
    assert!(
        took <= Duration::from_millis(1500),
        "ended {took:?} after the client left"
    );
    assert!(end["pattern_ms"].as_u64().is_some_and(|ms| ms > 0), "{end}");
    assert_slot_free(&f)
}

#[test]
fn revoking_the_grant_ends_a_grep_that_matches_nothing_within_a_second() -> anyhow::Result<()> {
    let (f, slow) = slow_grep_fixture("")?;
    let id = f.grant("alice", "30m")?;
    let mut child = start_slow_grep(&f, &slow)?;
    let out = f
        .cluster
        .run_cli("admin", &["grant", "revoke", &id, "--reason", "done"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    let revoked = Instant::now();
    let (end, took) = slow_grep_end(&f, revoked)?;
    eprintln!("grant revoked: read.finished after {took:?}");
    assert_eq!(end["end_reason"], "grant_revoked", "{end}");
    assert!(
        took <= Duration::from_millis(1500),
        "ended {took:?} after the revocation"
    );
    wait_exit(&mut child, Duration::from_secs(5))?;
    let out = child.wait_with_output()?;
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("grant {id} was revoked")),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn expiry_ends_a_grep_that_matches_nothing_within_a_second() -> anyhow::Result<()> {
    let (f, slow) = slow_grep_fixture("")?;
    // Long enough for the grant to arrive and the grep to be matching on a loaded 2-core CI
    // before it expires; the grep must still be running at a known time before the expiry.
    let id = f.grant("alice", "10s")?;
    let list = f.cluster.run_cli("alice", &["grant", "list", "--json"])?;
    let grants: serde_json::Value = serde_json::from_slice(&list.stdout)?;
    let not_after = grants[0]["not_after"].as_i64().unwrap_or_default() as f64;
    let unix_now = || -> anyhow::Result<f64> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64())
    };
    let mut child = start_slow_grep(&f, &slow)?;
    let before = not_after - unix_now()?;
    assert!(
        before >= 1.0,
        "the grep started only {before:.2}s before expiry; the test cannot tell a cut from a \
         late start"
    );
    assert!(
        child.try_wait()?.is_none(),
        "the grep ended before its grant did"
    );
    // Wait on a known time: the grant's end (and then at most the allowed lateness).
    wait_exit(&mut child, Duration::from_secs_f64(before + 5.0))?;
    let late = unix_now()? - not_after;
    eprintln!("grant expired: the grep's client exited {late:.2}s after not_after");
    let out = child.wait_with_output()?;
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("grant {id} for")) && stderr.contains("expired"),
        "{stderr}"
    );
    assert!((0.0..1.5).contains(&late), "cut {late:.2}s after expiry");
    let (end, _) = slow_grep_end(&f, Instant::now())?;
    assert_eq!(end["end_reason"], "grant_expired", "{end}");
    Ok(())
}

#[test]
fn a_grep_over_its_time_budget_is_cut_with_a_clear_error() -> anyhow::Result<()> {
    let (f, slow) = slow_grep_fixture("grep_time_budget = \"1s\"")?;
    f.grant("alice", "30m")?;
    let started = Instant::now();
    let mut child = f
        .cluster
        .logs_cmd("alice", "web-1", &["grep", SLOW_PATTERN, &slow])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let took = wait_exit(&mut child, Duration::from_secs(10))?;
    eprintln!("grep with a 1 s budget ended after {took:?} (client's view)");
    let out = child.wait_with_output()?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("used up its time budget of 1s"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let (end, _) = slow_grep_end(&f, started)?;
    assert_eq!(end["end_reason"], "budget_exceeded", "{end}");
    let spent = end["pattern_ms"].as_u64().unwrap_or_default();
    assert!((1000..2500).contains(&spent), "matched for {spent} ms");
    assert_slot_free(&f)
}

/// A private-key block of `body_lines` base64 lines (64 characters each) after some log lines.
/// Issue #10 review: the grep budget was per stream, so re-requesting streams kept cores busy
/// for ever. A subject's matching time is now shared by its streams: with one second a minute,
/// the first slow grep is cut after about a second with an error saying so, and the next one
/// is refused at once (`grep_budget_spent`, audited).
#[test]
fn a_subjects_grep_time_across_streams_is_budgeted_and_then_refused() -> anyhow::Result<()> {
    let (f, slow) = slow_grep_fixture("grep_seconds_per_subject_per_minute = 1")?;
    f.grant("alice", "30m")?;
    let started = Instant::now();
    let out = f
        .cluster
        .logs_cmd("alice", "web-1", &["grep", SLOW_PATTERN, &slow])
        .output()?;
    let took = started.elapsed();
    let stderr = text(&out).1;
    eprintln!("grep with 1 s per minute for its subject ended after {took:?}");
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("you used up your grep time"), "{stderr}");
    assert!(took < Duration::from_secs(20), "cut after {took:?}");
    let (end, _) = slow_grep_end(&f, started)?;
    assert_eq!(end["end_reason"], "budget_exceeded", "{end}");
    let spent = end["pattern_ms"].as_u64().unwrap_or_default();
    assert!((900..3000).contains(&spent), "matched for {spent} ms");

    let again = f
        .cluster
        .logs_cmd("alice", "web-1", &["grep", SLOW_PATTERN, &slow])
        .output()?;
    let stderr = text(&again).1;
    assert_eq!(again.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("you used up your grep time"), "{stderr}");
    let denied = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["reason_code"] == "grep_budget_spent"
        })?;
    assert!(
        denied["subject"]
            .as_str()
            .is_some_and(|s| s.contains("alice")),
        "{denied}"
    );
    // Other modes are not charged: a cat goes through.
    assert_slot_free(&f)
}

/// The agent runs at most `max_grep_streams` greps at once, whoever asks: a second reader's
/// grep is refused (`grep_streams_busy`, audited) while the first runs.
#[test]
fn greps_beyond_the_agents_cap_are_refused_while_others_run() -> anyhow::Result<()> {
    let (f, slow) = slow_grep_fixture("max_grep_streams = 1")?;
    f.grant("alice", "30m")?;
    f.grant("bob", "30m")?;
    let mut child = start_slow_grep(&f, &slow)?;
    let out = f
        .cluster
        .logs_cmd("bob", "web-1", &["grep", "INFO", &f.api_log()])
        .output()?;
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("already running its limit of 1 grep streams"),
        "{stderr}"
    );
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["reason_code"] == "grep_streams_busy"
        })?;
    let _ = child.kill();
    child.wait()?;
    slow_grep_end(&f, Instant::now())?;
    // The place is freed when the stream ends, before its `read.finished` is written.
    let out = f
        .cluster
        .logs_cmd("bob", "web-1", &["grep", "INFO", &f.api_log()])
        .output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    Ok(())
}

fn file_with_key_block(path: &std::path::Path, body_lines: usize) -> anyhow::Result<()> {
    let mut text = "2026-12-04T10:00:00Z INFO before the key\n".repeat(100);
    text.push_str("-----BEGIN PGP PRIVATE KEY BLOCK-----\n");
    for i in 0..body_lines {
        text.push_str(&format!("KEYBODY{i:06}{}\n", "QUJD".repeat(13)));
    }
    text.push_str("-----END PGP PRIVATE KEY BLOCK-----\n");
    text.push_str("2026-12-04T10:00:01Z INFO after the key\n");
    std::fs::write(path, text)?;
    Ok(())
}

#[test]
fn tail_inside_a_private_key_block_longer_than_64_kib_serves_none_of_it() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    f.grant_with_profile("alice", "30m", "default")?;
    let key = f.logs.join("key.log");
    // ~80 KiB of key body: its BEGIN line lies beyond a 64 KiB look-back from the tail start.
    file_with_key_block(&key, 1300)?;
    let out = f.logs("alice", &["tail", "-n", "6", &key.display().to_string()])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stdout.contains("KEYBODY") && !stdout.contains("-----END"),
        "key served: {stdout}"
    );
    assert_eq!(stdout, "2026-12-04T10:00:01Z INFO after the key\n");
    let end = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.finished"
        })?;
    assert_eq!(end["key_lookback_exhausted"], false, "{end}");
    Ok(())
}

#[test]
fn copytruncate_keeps_an_open_private_key_block_closed() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    f.grant_with_profile("alice", "30m", "default")?;
    let log = f.logs.join("api.log");
    let (mut child, rx) = follow_new_lines(&f)?;
    append(
        &log,
        "line-1 before the key\n-----BEGIN RSA PRIVATE KEY-----\nKEYBODY-FIRST-HALF\n",
    )?;
    until_line(&rx, "REDACTED:private_key", Duration::from_secs(5))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)?
        .set_len(0)?;
    std::thread::sleep(Duration::from_millis(600));
    append(
        &log,
        "KEYBODY-SECOND-HALF\n-----END RSA PRIVATE KEY-----\nline-2 after the key\n",
    )?;
    let seen = until_line(&rx, "line-2", Duration::from_secs(5))?;
    assert_eq!(
        seen,
        [truncated_notice(&f), "line-2 after the key".into()],
        "nothing of the key after truncation"
    );
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// Issue #15, faults while serving: the reader's disk is full (its stdout write fails). The
/// client exits with the write's error, the agent's stream ends, and `read.finished` says the
/// client went away (not a clean end of file).
#[test]
fn a_reader_whose_output_fails_ends_the_stream_and_read_finished_says_why() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    // Far more than the channel, the HTTP/2 windows and the socket buffers hold together.
    let line = "2026-11-27T07:00:00Z INFO a line of a large log user=someone\n";
    std::fs::write(f.logs.join("big.log"), line.repeat((64 << 20) / line.len()))?;
    let big = f.logs.join("big.log").display().to_string();
    f.grant("alice", "30m")?;
    let out = f
        .cluster
        .logs_cmd("alice", "web-1", &["cat", &big])
        .stdout(std::fs::OpenOptions::new().write(true).open("/dev/full")?)
        .stderr(Stdio::piped())
        .output()?;
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write to standard output") && stderr.contains("No space left"),
        "{stderr}"
    );
    let end = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(10), |e| {
            e["event"] == "read.finished"
        })?;
    assert_eq!(end["end_reason"], "client_closed", "{end}");
    assert!(end["bytes"].as_u64().is_some_and(|b| b < 64 << 20), "{end}");
    Ok(())
}

/// Issue #15, faults while serving: the agent is SIGKILLed mid-stream. The client exits with a
/// clear error (exit 1, naming the agent), and after a restart the audit still holds the
/// stream's `read.allowed` and its chain verifies: nothing that was written is lost.
#[test]
fn an_agent_killed_mid_stream_leaves_a_clear_client_error_and_its_read_allowed(
) -> anyhow::Result<()> {
    let mut f = Fixture::start()?;
    let id = f.grant("alice", "30m")?;
    let mut child = follow(&f)?;
    let allowed = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.allowed"
        })?;
    assert_eq!(allowed["grant_id"], id.as_str());
    f.cluster.kill_agent("web-1");
    wait_exit(&mut child, Duration::from_secs(10))?;
    let out = child.wait_with_output()?;
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("agent web-1"), "{stderr}");
    f.cluster.start_agent("web-1")?;
    let audit = f.cluster.agent_audit("web-1");
    let kept = audit
        .iter()
        .filter(|e| e["event"] == "read.allowed" && e["grant_id"] == id.as_str())
        .count();
    assert_eq!(kept, 1, "{audit:?}");
    let log = f.cluster.agents["web-1"].dir.join("audit.jsonl");
    let verify = f
        .cluster
        .run_cli("admin", &["audit", "verify", &log.display().to_string()])?;
    assert!(verify.status.success(), "{}", text(&verify).1);
    Ok(())
}

/// A client of the agent as `user`, on one connection whose HTTP/2 windows hold 64 KiB (the
/// protocol's minimum default), so that what it does not read stays in the agent.
async fn agent_client(
    f: &Fixture,
    user: &str,
) -> anyhow::Result<loggate_proto::agent_client::AgentClient<tonic::transport::Channel>> {
    agent_client_with(f, user, Some(65_535)).await
}

/// A client of the agent as `user` whose HTTP/2 windows are `window` bytes (`None`: the
/// transport's defaults, MiBs).
async fn agent_client_with(
    f: &Fixture,
    user: &str,
    window: Option<u32>,
) -> anyhow::Result<loggate_proto::agent_client::AgentClient<tonic::transport::Channel>> {
    let files = f.cluster.tls_files_of(&format!("users/{user}"));
    let channel = files
        .endpoint(
            &f.cluster.agent_addr("web-1"),
            loggate_core::tls::Server::Agent("web-1"),
        )?
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect()
        .await?;
    Ok(loggate_proto::agent_client::AgentClient::new(channel))
}

/// A `cat` of every line since 1970: a time range, so served by a read loop on a thread of its
/// own, which reads ahead into its queue (a plain `cat` is read in its response's poll and
/// never reads ahead of its reader: `agent/src/pull.rs`).
fn read_ahead_request(path: &str) -> loggate_proto::ReadLogRequest {
    loggate_proto::ReadLogRequest {
        since_unix_ms: 1,
        ..cat_request(path)
    }
}

fn cat_request(path: &str) -> loggate_proto::ReadLogRequest {
    loggate_proto::ReadLogRequest {
        path: path.to_string(),
        mode: loggate_proto::ReadMode::Cat as i32,
        ..Default::default()
    }
}

/// Issue #15 review (most severe): a stream's place was freed when its read loop ended, while
/// its response still held what the client never read (here a 400 KiB file: past the client's
/// 64 KiB window, fewer chunks than the channel holds, so the loop ends at once with the rest
/// waiting in the agent). One reader could open stream after
/// stream without reading, each held in the agent's memory. The place now goes with the
/// response: the reader's cap refuses a third unread stream, and dropping the unread ones
/// frees their places.
#[tokio::test]
async fn a_stream_holds_its_place_until_its_response_is_read_or_dropped() -> anyhow::Result<()> {
    let (f, small) = tokio::task::spawn_blocking(|| -> anyhow::Result<(Fixture, String)> {
        let f = Fixture::start_with("[limits]\nmax_streams_per_subject = 2")?;
        let line = "2026-12-04T20:00:00Z INFO a line of a small log user=someone\n";
        let small = f.logs.join("small.log");
        std::fs::write(&small, line.repeat((400 << 10) / line.len()))?;
        f.grant("alice", "30m")?;
        Ok((f, small.display().to_string()))
    })
    .await??;
    let mut client = agent_client(&f, "alice").await?;
    // Read loops that read ahead (a time range).
    let first = client
        .read_log(read_ahead_request(&small))
        .await?
        .into_inner();
    let second = client
        .read_log(read_ahead_request(&small))
        .await?
        .into_inner();
    // Both read loops have ended (each wrote its `read.finished`); nothing was read.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let finished = f
            .cluster
            .agent_audit("web-1")
            .iter()
            .filter(|e| e["event"] == "read.finished")
            .count();
        if finished >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the read loops never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let third = client.read_log(cat_request(&small)).await;
    let status = third.expect_err("a third unread stream is refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("2 streams open on agent web-1"),
        "{status:?}"
    );
    drop((first, second));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.read_log(cat_request(&small)).await {
            Ok(_) => break,
            Err(status) => assert!(
                Instant::now() < deadline,
                "the dropped streams never freed their places: {status:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::spawn_blocking(move || drop(f)).await?;
    Ok(())
}

/// Issue #15: an agent-wide cap of live streams (`limits.max_streams`). Beyond it a new read
/// is refused at once with a retryable error (exit 1), audited as a denial (`agent_busy`) and
/// with no `read.allowed` — it used to queue silently after its `read.allowed`.
#[test]
fn beyond_the_agents_stream_cap_a_read_is_refused_before_read_allowed() -> anyhow::Result<()> {
    let f = Fixture::start_with("[limits]\nmax_streams = 1")?;
    f.grant("alice", "30m")?;
    f.grant("bob", "30m")?;
    let mut child = follow(&f)?;
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.allowed"
        })?;
    let out = f.logs("bob", &["cat", &f.api_log()])?;
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("agent web-1 is serving its limit of 1 streams; try again"),
        "{stderr}"
    );
    let denied = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["reason_code"] == "agent_busy"
        })?;
    assert!(
        denied["subject"]
            .as_str()
            .is_some_and(|s| s.ends_with("/bob")),
        "{denied}"
    );
    let bobs_allowed = f
        .cluster
        .agent_audit("web-1")
        .iter()
        .filter(|e| {
            e["event"] == "read.allowed"
                && e["subject"].as_str().is_some_and(|s| s.ends_with("/bob"))
        })
        .count();
    assert_eq!(bobs_allowed, 0, "refused before read.allowed");
    let _ = child.kill();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = f.logs("bob", &["cat", &f.api_log()])?;
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never admitted: {}",
            text(&out).1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Issue #15 review: stopping the agent with a live `--follow` waited for the unit's stop
/// timeout (the graceful shutdown waited for a stream that never ends). Every stream now ends
/// at once: the client is told why (exit 4), `read.finished` says `agent_stopping`, and
/// `agent.stopped` follows it.
#[test]
fn stopping_the_agent_ends_a_live_follow_promptly_with_its_records() -> anyhow::Result<()> {
    let mut f = Fixture::start()?;
    f.grant("alice", "30m")?;
    let mut child = follow(&f)?;
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.allowed"
        })?;
    let stopping = Instant::now();
    // SIGTERM, and SIGKILL after 5 s.
    f.cluster.stop_agent("web-1");
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the agent took {took:?} to stop"
    );
    wait_exit(&mut child, Duration::from_secs(5))?;
    let out = child.wait_with_output()?;
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("the agent is stopping"), "{stderr}");
    let audit = f.cluster.agent_audit("web-1");
    let finished = audit
        .iter()
        .position(|e| e["event"] == "read.finished" && e["end_reason"] == "agent_stopping");
    let stopped = audit.iter().position(|e| e["event"] == "agent.stopped");
    assert!(
        matches!((finished, stopped), (Some(a), Some(b)) if a < b),
        "read.finished then agent.stopped: {finished:?} {stopped:?}"
    );
    Ok(())
}

/// The agent's resident memory (`VmRSS`), in KiB.
fn agent_rss_kib(f: &Fixture) -> anyhow::Result<u64> {
    let pid = f
        .cluster
        .agent_pid("web-1")
        .ok_or_else(|| anyhow::anyhow!("the agent is not running"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// Reads a whole `cat` of `path` on `client`; the content bytes received.
async fn read_to_end(
    client: &mut loggate_proto::agent_client::AgentClient<tonic::transport::Channel>,
    path: &str,
) -> anyhow::Result<usize> {
    let mut stream = client.read_log(cat_request(path)).await?.into_inner();
    let mut got = 0;
    while let Some(chunk) = stream.message().await? {
        if let Some(loggate_proto::read_log_chunk::Item::Data(d)) = chunk.item {
            got += d.len();
        }
    }
    Ok(got)
}

/// Issue #15: with 64 readers the agent's peak RSS was 120 MiB, most of it streams' full
/// queues (8 chunks of 64 KiB each) to readers slower than the agent. Readers that stop
/// reading now make the agent hold one message each plus the shared `stream_queue_bytes` (4 MiB
/// by default), not a full queue each; and another reader still reads its whole file meanwhile
/// (no one is starved by the budget they hold). Here the read loops that read ahead into their
/// queue (a time range), on one connection whose window the first fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_stop_reading_hold_the_shared_queue_budget_not_a_full_queue_each(
) -> anyhow::Result<()> {
    stalled_readers_hold_the_budget(read_ahead_request, false).await
}

/// The same for `cat`s read in their response's poll (`agent/src/pull.rs`): they read only
/// what HTTP/2 takes, so their readers get HTTP/2's default windows (MiBs), which HTTP/2 fills
/// from the agent while they read nothing. What HTTP/2 holds of their messages beyond two each
/// holds a share of the same budget until it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cats_whose_readers_stop_reading_hold_the_shared_queue_budget() -> anyhow::Result<()> {
    stalled_readers_hold_the_budget(cat_request, true).await
}

async fn stalled_readers_hold_the_budget(
    request: fn(&str) -> loggate_proto::ReadLogRequest,
    wide_windows: bool,
) -> anyhow::Result<()> {
    const STALLED: usize = 48;
    let (f, big, size) = tokio::task::spawn_blocking(|| -> anyhow::Result<_> {
        let f = Fixture::start_with(
            "[limits]\nmax_streams_per_subject = 60\nmax_streams = 64\n\
             max_streams_per_connection = 64",
        )?;
        let line = "2026-12-05T03:00:00Z INFO a line of a big log user=someone\n";
        let big = f.logs.join("big.log");
        let content = line.repeat((8 << 20) / line.len());
        std::fs::write(&big, &content)?;
        f.grant("alice", "30m")?;
        Ok((f, big.display().to_string(), content.len()))
    })
    .await??;
    // A first read to the end: the engine's caches and the runtime's threads exist before
    // the memory is measured.
    let mut reader = agent_client(&f, "alice").await?;
    assert_eq!(read_to_end(&mut reader, &big).await?, size);
    let before = agent_rss_kib(&f)?;
    // Readers that read nothing: one connection whose window (64 KiB) the first stream fills,
    // so whatever the agent reads for them stays in the agent; or, wide, HTTP/2's default
    // windows, which the agent fills.
    let mut stalled_client = if wide_windows {
        agent_client_with(&f, "alice", None).await?
    } else {
        agent_client(&f, "alice").await?
    };
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(stalled_client.read_log(request(&big)).await?.into_inner());
    }
    // Until every stalled stream has filled what it may hold: the agent's memory stops growing.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = agent_rss_kib(&f)?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = agent_rss_kib(&f)?;
        if now <= last + 64 {
            break;
        }
        assert!(Instant::now() < deadline, "the agent's memory kept growing");
        last = now;
    }
    let grown = agent_rss_kib(&f)?.saturating_sub(before);
    // A full queue each would be 8 × 64 KiB = 512 KiB per stream on top of the rest of a
    // stream (its thread's stack, read buffer and HTTP/2 state); one message each plus the
    // budget is 64 + 4096 / 48 ≈ 150 KiB. Measured with the budget: 259–346 KiB per stream
    // (the higher ones in full-suite runs, where the allocator's arenas are fuller), so the
    // bound sits between that and the 512 KiB a full queue alone would add.
    let per_stream = grown / STALLED as u64;
    eprintln!("{STALLED} stalled streams grew the agent by {grown} KiB ({per_stream} KiB each)");
    assert!(
        per_stream < 430,
        "{STALLED} stalled streams grew the agent by {grown} KiB ({per_stream} KiB each)"
    );
    // Meanwhile another reader reads its whole file.
    assert_eq!(read_to_end(&mut reader, &big).await?, size);
    drop(stalled);
    tokio::task::spawn_blocking(move || drop(f)).await?;
    Ok(())
}

/// A fixture with about `bytes` of a log and a 30-minute grant for alice: the log's path, its
/// size and the grant's id.
fn middling_log(bytes: usize) -> anyhow::Result<(Fixture, String, usize, String)> {
    let f = Fixture::start()?;
    let line = "2026-12-05T03:00:00Z INFO a line of a middling log user=someone\n";
    let content = line.repeat(bytes / line.len());
    let path = f.logs.join("middling.log");
    std::fs::write(&path, &content)?;
    let id = f.grant("alice", "30m")?;
    Ok((f, path.display().to_string(), content.len(), id))
}

/// What is left of a stream, each message within 10 s: its content bytes and its final status
/// (`None`: a clean end).
async fn drain(
    stream: &mut tonic::Streaming<loggate_proto::ReadLogChunk>,
) -> anyhow::Result<(usize, Option<tonic::Status>)> {
    let mut got = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await? {
            Ok(Some(chunk)) => {
                if let Some(loggate_proto::read_log_chunk::Item::Data(d)) = chunk.item {
                    got += d.len();
                }
            }
            Ok(None) => return Ok((got, None)),
            Err(status) => return Ok((got, Some(status))),
        }
    }
}

/// Review of issue #15, finding 1: a read loop (then any `cat`; a plain `cat` is now read in its
/// response's poll and does not read ahead, the next test) that reached the file's end while its
/// reader read nothing left its last messages queued in the agent; a revocation then changed
/// nothing, and the reader, reading on, got the rest of the file and a clean end. Now what is
/// still queued is dropped when the grant ends, and the reader gets the cut after the part it
/// could have had: never the whole file, never a clean end. Also: `read.finished` counts the
/// whole file read (`bytes_read`), through the agent's real serving path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_cat_whose_reader_has_not_read_it_is_cut_at_revocation() -> anyhow::Result<()> {
    // Past the client's 64 KiB window and what HTTP/2 takes beyond it, within what the
    // stream's channel holds (8 messages): the loop ends with messages queued (768 KiB was too
    // much here: the loop waited on a full channel, no `read.finished`).
    let (f, path, size, id) = tokio::task::spawn_blocking(|| middling_log(512 << 10)).await??;
    let mut client = agent_client(&f, "alice").await?;
    // A read loop that reads ahead (a time range).
    let mut stream = client
        .read_log(read_ahead_request(&path))
        .await?
        .into_inner();
    let finished = tokio::task::block_in_place(|| {
        f.cluster
            .wait_for_audit("web-1", Duration::from_secs(10), |e| {
                e["event"] == "read.finished"
            })
    })?;
    assert_eq!(
        finished["end_reason"], "eof",
        "the read loop ended first: {finished}"
    );
    assert_eq!(finished["bytes_read"], size, "{finished}");
    let out = tokio::task::block_in_place(|| {
        f.cluster
            .run_cli("admin", &["grant", "revoke", &id, "--reason", "INC-15"])
    })?;
    assert!(out.status.success(), "{}", text(&out).1);
    // The agent drops the queue at the revocation, not when the reader reads on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (got, end) = drain(&mut stream).await?;
    let status = end.unwrap_or_else(|| {
        panic!("a clean end after {got} of {size} bytes: the revoked rest was served")
    });
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(status.message().contains("was revoked"), "{status:?}");
    assert!(got < size, "the whole file was served after the revocation");
    eprintln!("{got} of {size} bytes had left the agent's queue before the revocation");
    tokio::task::spawn_blocking(move || drop(f)).await?;
    Ok(())
}

/// A `cat` is read in its response's poll (`agent/src/pull.rs`): its reader not reading, the
/// agent reads no further than what HTTP/2 takes, so its end comes from the grant. A task
/// watches the grant for it: at the revocation the stream is cut and its `read.finished`
/// written while the reader still reads nothing, and the reader then gets the cut after what
/// HTTP/2 held, never the whole file. A cat read to its end counts the whole file read
/// (`bytes_read`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cat_whose_reader_reads_nothing_is_cut_at_revocation_without_reading_on(
) -> anyhow::Result<()> {
    let (f, path, size, id) = tokio::task::spawn_blocking(|| middling_log(2 << 20)).await??;
    // Read to its end first: the whole file counted.
    let mut client = agent_client(&f, "alice").await?;
    let mut whole = client.read_log(cat_request(&path)).await?.into_inner();
    let mut got = 0;
    while let Some(chunk) = whole.message().await? {
        if let Some(loggate_proto::read_log_chunk::Item::Data(d)) = chunk.item {
            got += d.len();
        }
    }
    assert_eq!(got, size);
    let finished = tokio::task::block_in_place(|| {
        f.cluster
            .wait_for_audit("web-1", Duration::from_secs(10), |e| {
                e["event"] == "read.finished"
            })
    })?;
    assert_eq!(finished["end_reason"], "eof", "{finished}");
    assert_eq!(finished["bytes_read"], size, "{finished}");
    assert_eq!(finished["bytes"], size, "{finished}");
    // Then one not read at all.
    let mut stream = client.read_log(cat_request(&path)).await?.into_inner();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ended = |f: &Fixture| {
        f.cluster
            .agent_audit("web-1")
            .into_iter()
            .filter(|e| e["event"] == "read.finished")
            .count()
    };
    assert_eq!(ended(&f), 1, "the unread cat ended without its reader");
    let out = tokio::task::block_in_place(|| {
        f.cluster
            .run_cli("admin", &["grant", "revoke", &id, "--reason", "INC-15"])
    })?;
    assert!(out.status.success(), "{}", text(&out).1);
    let cut = tokio::task::block_in_place(|| {
        f.cluster
            .wait_for_audit("web-1", Duration::from_secs(5), |e| {
                e["event"] == "read.finished" && e["end_reason"] != "eof"
            })
    })?;
    assert_eq!(cut["end_reason"], "grant_revoked", "{cut}");
    let read = cut["bytes_read"].as_u64().unwrap_or(u64::MAX);
    assert!(read < size as u64 / 4, "the unread cat read ahead: {cut}");
    let (got, end) = drain(&mut stream).await?;
    let status = end.unwrap_or_else(|| panic!("a clean end after {got} of {size} bytes"));
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(status.message().contains("was revoked"), "{status:?}");
    assert!(got as u64 <= read, "{got} bytes served of {read} read");
    eprintln!("{got} bytes of {size} had gone to HTTP/2 before the revocation ({read} read)");
    tokio::task::spawn_blocking(move || drop(f)).await?;
    Ok(())
}

/// Review of issue #15, finding 1: at the agent's stop, a reader that took one message and
/// then stopped reading (its connection open, its window shut) held the server's graceful
/// shutdown for ever (the HTTP/2 server sends a response's end only after the data it already
/// took), until systemd's SIGKILL: no `agent.stopped`, no final checkpoint. The graceful part
/// now has a deadline after the stop; the agent then drops the connections left and stops with
/// its records, and the audit chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_does_not_hold_the_agents_stop() -> anyhow::Result<()> {
    let (mut f, big) = tokio::task::spawn_blocking(|| -> anyhow::Result<_> {
        let f = Fixture::start()?;
        let line = "2026-12-05T03:00:00Z INFO a line of a big log user=someone\n";
        let big = f.logs.join("big.log");
        std::fs::write(&big, line.repeat((8 << 20) / line.len()))?;
        f.grant("alice", "30m")?;
        Ok((f, big.display().to_string()))
    })
    .await??;
    let mut reader = agent_client(&f, "alice").await?;
    let mut stream = reader.read_log(cat_request(&big)).await?.into_inner();
    // One message with content, then no more reading (the stream and connection stay open).
    let mut received = 0u64;
    while received == 0 {
        let chunk = stream
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended before any content"))?;
        if let Some(loggate_proto::read_log_chunk::Item::Data(d)) = chunk.item {
            received = u64::try_from(d.len())?;
        }
    }
    // Until the agent's queue for the stream is full and its window shut.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (f, stopped) = tokio::task::spawn_blocking(move || {
        let stopped = f
            .cluster
            .terminate_agent_within("web-1", Duration::from_secs(15));
        (f, stopped)
    })
    .await?;
    let (status, took) = stopped.ok_or_else(|| {
        anyhow::anyhow!("the agent had not exited 15 s after SIGTERM (it was killed)")
    })?;
    assert!(status.success(), "the agent exited with {status}");
    assert!(
        took < Duration::from_secs(8),
        "the agent took {took:?} to stop"
    );
    // The stalled reader's connection is closed, not left hanging: reading again, it gets
    // what was already on its way, then the end (a reset, or an error ending the stream).
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                end => return end.map(|_| ()),
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the stalled stream still hung 30 s after the stop"))?;
    assert!(
        drained.is_err(),
        "the stream ended as if complete, without its end: {drained:?}"
    );
    drop(stream);
    let audit = f.cluster.agent_audit("web-1");
    let finished = audit
        .iter()
        .position(|e| e["event"] == "read.finished" && e["end_reason"] == "agent_stopping");
    let stopped = audit.iter().position(|e| e["event"] == "agent.stopped");
    assert!(
        matches!((finished, stopped), (Some(a), Some(b)) if a < b),
        "read.finished then agent.stopped: {finished:?} {stopped:?}"
    );
    // The stop's own checkpoint follows `agent.stopped`; nothing else may.
    assert_eq!(
        audit
            .iter()
            .filter_map(|e| e["event"].as_str())
            .rfind(|name| *name != "audit.checkpoint"),
        Some("agent.stopped"),
        "the agent's last record before its final checkpoint"
    );
    // `bytes` counts what was queued: at least what the reader received.
    let bytes = finished
        .and_then(|i| audit[i]["bytes"].as_u64())
        .ok_or_else(|| anyhow::anyhow!("read.finished has no bytes"))?;
    assert!(bytes >= received, "bytes {bytes} < received {received}");
    let file = f.cluster.dir.join("agents/web-1/audit.jsonl");
    let verify = f
        .cluster
        .run_cli("admin", &["audit", "verify", &file.display().to_string()])?;
    assert!(verify.status.success(), "{}", text(&verify).1);
    tokio::task::spawn_blocking(move || drop(f)).await?;
    Ok(())
}
