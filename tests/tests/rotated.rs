//! End-to-end: rotated and compressed log files (`api.log.1`, `api.log.2.gz`, `api.log.3.zst`)
//! served decompressed and redacted under the same grant rules as the live file, a
//! decompression bomb cut and audited, a fake `.gz` refused; and `logs ls`, which reveals
//! nothing outside the reader's grants.

use loggate_tests::{text, Fixture};
use std::io::Write;
use std::time::Duration;

/// An hour of a day's log, one line a minute, with a secret planted at 10:30.
fn day_log() -> String {
    let mut text = String::new();
    for i in 0..60 {
        if i == 30 {
            text.push_str("2026-12-03T10:30:00Z INFO login password=hunter2 ok\n");
        } else {
            text.push_str(&format!("2026-12-03T10:{i:02}:00Z INFO line {i}\n"));
        }
    }
    text
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

/// The fixture with `api.log.1` (plain), `api.log.2.gz` and `api.log.3.zst` beside `api.log`.
fn rotated_fixture(agent_extra: &str) -> anyhow::Result<Fixture> {
    let f = Fixture::start_with(agent_extra)?;
    let day = day_log();
    std::fs::write(f.logs.join("api.log.1"), &day)?;
    std::fs::write(f.logs.join("api.log.2.gz"), gzip(day.as_bytes()))?;
    std::fs::write(f.logs.join("api.log.3.zst"), zstd(day.as_bytes()))?;
    Ok(f)
}

fn path(f: &Fixture, name: &str) -> String {
    f.logs.join(name).display().to_string()
}

/// A grant for `<logs>/api.log*` (the live file and its rotations), default redaction.
fn rotations_grant(f: &Fixture, subject: &str) -> anyhow::Result<String> {
    let glob = format!("{}/api.log*", f.logs.display());
    let id = f
        .cluster
        .issue_grant_with_profile(subject, "web-1", &glob, "30m", "default")?;
    f.cluster.wait_for_grant("web-1", &id)?;
    Ok(id)
}

/// Every record web-1 wrote conforms to the official OCSF schema and to its catalogue entry,
/// and names the event types `wanted` among them (the new ones included).
fn conformant(f: &Fixture, wanted: &[&str]) {
    let schema = loggate_ocsf_validate::Schema::official().expect("vendored OCSF schema");
    let records = f.cluster.agent_audit_raw("web-1");
    for r in &records {
        assert_eq!(
            loggate_core::audit::ocsf::catalogue_problems(r),
            Vec::<String>::new(),
            "{r}"
        );
        let report = schema.validate(r);
        assert!(report.is_conformant(), "{report}\n{r}");
    }
    for name in wanted {
        assert!(
            records
                .iter()
                .any(|r| loggate_core::audit::event_name(r) == Some(name)),
            "no {name} record"
        );
    }
}

fn finished(f: &Fixture, path: &str) -> anyhow::Result<serde_json::Value> {
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.finished" && e["path"] == path
        })
}

#[test]
fn rotated_gz_and_zst_files_are_served_decompressed_and_redacted_with_since() -> anyhow::Result<()>
{
    let f = rotated_fixture("")?;
    let grant = rotations_grant(&f, "alice")?;
    let redacted = day_log().replace("password=hunter2", "password=[REDACTED:secret]");
    for name in ["api.log.1", "api.log.2.gz", "api.log.3.zst"] {
        let file = path(&f, name);
        let out = f.logs("alice", &["cat", &file])?;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{name}: {stderr}");
        assert_eq!(stdout, redacted, "{name}");
        assert!(
            !stdout.contains("hunter2"),
            "{name}: the planted secret left"
        );
        let done = finished(&f, &file)?;
        assert_eq!(done["end_reason"], "eof", "{name}");
        assert_eq!(done["grant_id"], grant.as_str());
        assert_eq!(done["bytes"], stdout.len() as u64, "{name}");
        assert_eq!(done["redactions"]["secret"], 1, "{name}");
        let allowed = f
            .cluster
            .agent_audit("web-1")
            .into_iter()
            .find(|e| e["event"] == "read.allowed" && e["path"] == file.as_str());
        assert!(allowed.is_some(), "{name}: read.allowed");

        // --since (and --until) on a compressed file: a scan from its start.
        let out = f.logs(
            "alice",
            &[
                "cat",
                "--since",
                "2026-12-03T10:29:00Z",
                "--until",
                "2026-12-03T10:32:00Z",
                &file,
            ],
        )?;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{name}: {stderr}");
        assert_eq!(
            stdout,
            "2026-12-03T10:29:00Z INFO line 29\n\
             2026-12-03T10:30:00Z INFO login password=[REDACTED:secret] ok\n\
             2026-12-03T10:31:00Z INFO line 31\n",
            "{name}"
        );
        // grep runs on the decompressed, redacted lines.
        let out = f.logs("alice", &["grep", "line 5[0-2]$", &file])?;
        assert_eq!(text(&out).0.lines().count(), 3, "{name}: {}", text(&out).1);
    }
    Ok(())
}

/// The gate's matching: `*.log` does not cover the rotations, `api.log*` does.
#[test]
fn a_grant_for_star_dot_log_does_not_cover_rotated_files() -> anyhow::Result<()> {
    let f = rotated_fixture("")?;
    f.grant("alice", "30m")?;
    for name in ["api.log.1", "api.log.2.gz", "api.log.3.zst"] {
        let out = f.logs("alice", &["cat", &path(&f, name)])?;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(3), "{name}: {stderr}");
        assert!(stdout.is_empty(), "{name}");
        assert!(stderr.contains("not"), "{name}: {stderr}");
    }
    let denied = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied"
                && e["reason_code"] == "path_not_covered"
                && e["path"] == path(&f, "api.log.2.gz").as_str()
        })?;
    assert_eq!(denied["subject"], "spiffe://loggate.local/user/alice");
    Ok(())
}

#[test]
fn a_decompression_bomb_is_cut_with_a_clear_error_and_audited() -> anyhow::Result<()> {
    // 1 MiB is the lowest max_decompressed_bytes: 64 MiB of one repeated line (~64 KiB of
    // gzip, far less zstd) passes it.
    let f = rotated_fixture("[limits]\nmax_decompressed_bytes = 1048576\n")?;
    rotations_grant(&f, "alice")?;
    let zeros = [b"a".repeat(99), b"\n".to_vec()].concat().repeat(640 << 10);
    for (name, bytes) in [
        ("api.log.7.gz", gzip(&zeros)),
        ("api.log.8.zst", zstd(&zeros)),
    ] {
        std::fs::write(f.logs.join(name), bytes)?;
        let file = path(&f, name);
        let out = f.logs("alice", &["cat", &file])?;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(4), "{name}: {stderr}");
        assert!(
            stderr.contains("decompresses to more than 1048576 bytes")
                && stderr.contains("max_decompressed_bytes"),
            "{name}: {stderr}"
        );
        // What came before the cap was served; nothing beyond it.
        assert!(
            stdout.len() <= 1 << 20 && stdout.len() > 1 << 19,
            "{name}: {}",
            stdout.len()
        );
        let done = finished(&f, &file)?;
        assert_eq!(done["end_reason"], "decompression_limit", "{name}");
        assert!(
            done["error"]
                .as_str()
                .is_some_and(|e| e.contains("decompression bomb")),
            "{done}"
        );
    }
    // The cut stream's record is an OCSF failure, and conformant.
    conformant(&f, &["read.finished"]);
    let failed = f.cluster.agent_audit_raw("web-1").into_iter().find(|r| {
        r["unmapped"]["loggate"]["end_reason"] == "decompression_limit"
            || r["status_detail"] == "decompression_limit"
    });
    let failed = failed.expect("the decompression_limit record, raw");
    assert_eq!(failed["status_id"], 2, "{failed}");
    Ok(())
}

#[test]
fn a_gz_file_that_is_not_gzip_is_refused_clearly_and_audited() -> anyhow::Result<()> {
    let f = rotated_fixture("")?;
    rotations_grant(&f, "alice")?;
    std::fs::write(f.logs.join("api.log.4.gz"), day_log())?;
    let file = path(&f, "api.log.4.gz");
    let out = f.logs("alice", &["cat", &file])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "nothing of it is served");
    assert!(
        stderr.contains("is named as gzip but its content is not gzip"),
        "{stderr}"
    );
    let denied = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["path"] == file.as_str()
        })?;
    assert_eq!(denied["reason_code"], "compression_mismatch");
    assert!(denied["grant_id"].is_string(), "{denied}");
    Ok(())
}

#[test]
fn follow_of_a_compressed_file_is_refused_with_the_way_out() -> anyhow::Result<()> {
    let f = rotated_fixture("")?;
    rotations_grant(&f, "alice")?;
    let file = path(&f, "api.log.2.gz");
    let out = f.logs("alice", &["tail", "--follow", &file])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("is compressed (gzip)") && stderr.contains("follow the live file"),
        "{stderr}"
    );
    let denied = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["reason_code"] == "compressed_not_tailable"
        })?;
    assert_eq!(denied["path"], file.as_str());
    // The live file still follows.
    let out = f.logs("alice", &["tail", "-n", "1", &path(&f, "api.log")])?;
    assert!(out.status.success(), "{}", text(&out).1);
    Ok(())
}

/// The `read.finished` records of `path` on web-1 once there are `count` of them.
fn finished_reads(f: &Fixture, path: &str, count: usize) -> anyhow::Result<Vec<serde_json::Value>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let done: Vec<serde_json::Value> = f
            .cluster
            .agent_audit("web-1")
            .into_iter()
            .filter(|e| e["event"] == "read.finished" && e["path"] == path)
            .collect();
        if done.len() >= count {
            return Ok(done);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{} of {count} read.finished for {path}",
            done.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tail_n_of_a_compressed_file_serves_its_last_lines_redacted_with_since() -> anyhow::Result<()> {
    let f = rotated_fixture("")?;
    rotations_grant(&f, "alice")?;
    let redacted = day_log().replace("password=hunter2", "password=[REDACTED:secret]");
    let last = |n: usize| -> String {
        let lines: Vec<&str> = redacted.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect()
    };
    for name in ["api.log.2.gz", "api.log.3.zst"] {
        let file = path(&f, name);
        // The last 30 lines hold the planted secret (10:30), served redacted and counted.
        let out = f.logs("alice", &["tail", "-n", "30", &file])?;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{name}: {stderr}");
        assert_eq!(stdout, last(30), "{name}");
        // The last 5 do not: the skipped lines are neither served nor counted.
        let out = f.logs("alice", &["tail", "-n", "5", &file])?;
        assert!(out.status.success(), "{name}: {}", text(&out).1);
        assert_eq!(text(&out).0, last(5), "{name}");
        let done = finished_reads(&f, &file, 2)?;
        assert_eq!(done[0]["end_reason"], "eof", "{name}");
        assert_eq!(done[0]["redactions"]["secret"], 1, "{name}: {}", done[0]);
        assert_eq!(done[1]["bytes"], last(5).len() as u64, "{name}");
        assert!(
            done[1]["redactions"]["secret"].as_u64().unwrap_or(0) == 0,
            "{name}: {}",
            done[1]
        );
        // --since narrows the tail's lines; more lines than the file has: all of it; 0: none.
        let out = f.logs(
            "alice",
            &["tail", "-n", "5", "--since", "2026-12-03T10:57:00Z", &file],
        )?;
        assert_eq!(text(&out).0, last(3), "{name}: {}", text(&out).1);
        let out = f.logs("alice", &["tail", "-n", "1000", &file])?;
        assert_eq!(text(&out).0, redacted, "{name}");
        let out = f.logs("alice", &["tail", "-n", "0", &file])?;
        assert!(out.status.success(), "{name}: {}", text(&out).1);
        assert_eq!(text(&out).0, "", "{name}");
    }
    Ok(())
}

#[test]
fn tail_n_of_a_compressed_file_starting_inside_a_key_block_serves_none_of_it() -> anyhow::Result<()>
{
    let f = rotated_fixture("")?;
    rotations_grant(&f, "alice")?;
    let mut text_of_key = "2026-12-04T10:00:00Z INFO before the key\n".repeat(50);
    text_of_key.push_str("-----BEGIN RSA PRIVATE KEY-----\n");
    for i in 0..40 {
        text_of_key.push_str(&format!("KEYBODY{i:04}{}\n", "QUJD".repeat(13)));
    }
    text_of_key.push_str("-----END RSA PRIVATE KEY-----\n");
    text_of_key.push_str("2026-12-04T10:00:01Z INFO after the key\n");
    let file = path(&f, "api.log.4.gz");
    std::fs::write(&file, gzip(text_of_key.as_bytes()))?;
    let out = f.logs("alice", &["tail", "-n", "6", &file])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stdout.contains("KEYBODY") && !stdout.contains("-----END"),
        "key served: {stdout}"
    );
    assert_eq!(stdout, "2026-12-04T10:00:01Z INFO after the key\n");
    Ok(())
}

/// A key dump holding one hostile line (a logged request) whose END marker lies past the
/// 64 KiB line cut: `cat` cuts it off and stays inside the block until the real END.
fn key_with_a_hostile_end_past_the_line_cut() -> Vec<u8> {
    let mut t =
        b"2026-12-04T10:00:00Z INFO before\n-----BEGIN RSA PRIVATE KEY-----\nKEYBODY1\n".to_vec();
    t.extend_from_slice(&vec![b'A'; 70_000]);
    t.extend_from_slice(b"-----END RSA PRIVATE KEY-----\nKEYBODY2\nKEYBODY3\n");
    t.extend_from_slice(b"-----END RSA PRIVATE KEY-----\n2026-12-04T10:00:01Z INFO after\n");
    t
}

#[test]
fn tail_n_serves_no_key_body_that_cat_removes_when_an_end_lies_past_the_line_cut(
) -> anyhow::Result<()> {
    let f = rotated_fixture("")?;
    rotations_grant(&f, "alice")?;
    let content = key_with_a_hostile_end_past_the_line_cut();
    let gz = path(&f, "api.log.4.gz");
    std::fs::write(&gz, gzip(&content))?;
    let plain = path(&f, "api.log.5");
    std::fs::write(&plain, &content)?;
    for file in [&gz, &plain] {
        for args in [
            vec!["cat", file.as_str()],
            vec!["tail", "-n", "4", file.as_str()],
        ] {
            let out = f.logs("alice", &args)?;
            let (stdout, stderr) = text(&out);
            assert!(out.status.success(), "{args:?}: {stderr}");
            assert!(
                !stdout.contains("KEYBODY"),
                "{args:?} served key body: {stdout}"
            );
            assert!(stdout.ends_with("INFO after\n"), "{args:?}: {stdout}");
        }
    }
    Ok(())
}

/// `loggate logs ls` as `user` on web-1, with extra arguments.
fn ls(f: &Fixture, user: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut all = vec!["ls"];
    all.extend_from_slice(args);
    f.logs(user, &all)
}

#[test]
fn ls_lists_exactly_the_covered_files_and_reveals_nothing_outside_the_grant() -> anyhow::Result<()>
{
    let f = rotated_fixture("")?;
    let grant = rotations_grant(&f, "alice")?;
    // Beside the granted files: a sibling outside the glob, a folder (with a file named like a
    // granted one), a symlink whose name the glob covers, and a folder outside the root.
    std::fs::write(f.logs.join("payments-secret.log"), "not yours\n")?;
    std::fs::create_dir_all(f.logs.join("api.log.d"))?;
    std::fs::write(f.logs.join("api.log.d/api.log"), "nested\n")?;
    std::os::unix::fs::symlink(f.logs.join("payments-secret.log"), f.logs.join("api.log.9"))?;
    let outside = f.logs.parent().expect("parent").join("elsewhere");
    std::fs::create_dir_all(&outside)?;
    std::fs::write(outside.join("api.log"), "outside the root\n")?;

    let out = ls(&f, "alice", &["--output", "json"])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let listed: Vec<serde_json::Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let paths: Vec<&str> = listed.iter().filter_map(|e| e["path"].as_str()).collect();
    let want: Vec<String> = ["api.log", "api.log.1", "api.log.2.gz", "api.log.3.zst"]
        .iter()
        .map(|n| path(&f, n))
        .collect();
    assert_eq!(paths, want, "{stdout}");
    for hidden in [
        "payments-secret",
        "api.log.d",
        "api.log.9",
        "elsewhere",
        "nested",
    ] {
        assert!(!stdout.contains(hidden), "{hidden} revealed: {stdout}");
    }
    let by_name = |n: &str| {
        listed
            .iter()
            .find(|e| e["path"] == path(&f, n).as_str())
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(by_name("api.log")["rotated"], false);
    assert_eq!(by_name("api.log")["compression"], serde_json::Value::Null);
    assert_eq!(by_name("api.log.1")["rotated"], true);
    assert_eq!(by_name("api.log.2.gz")["compression"], "gzip");
    assert_eq!(by_name("api.log.3.zst")["compression"], "zstd");
    assert_eq!(
        by_name("api.log.1")["size"],
        std::fs::metadata(f.logs.join("api.log.1"))?.len()
    );
    assert!(by_name("api.log")["modified_unix"].as_i64().unwrap_or(0) > 1_700_000_000);

    let listed = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.listed"
        })?;
    assert_eq!(listed["subject"], "spiffe://loggate.local/user/alice");
    assert_eq!(listed["files"], 4);
    assert_eq!(listed["grant_ids"][0], grant.as_str());
    assert_eq!(listed["path_glob"], serde_json::Value::Null);

    // A glob narrows it (and is audited); text output names the kind of each file.
    let glob = format!("{}/api.log.*", f.logs.display());
    let out = ls(&f, "alice", &[&glob])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[1].contains("rotated,gzip") && lines[1].ends_with("api.log.2.gz"),
        "{stdout}"
    );
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.listed" && e["path_glob"] == glob.as_str() && e["files"] == 3
        })?;
    // A glob reaching outside the grant lists nothing of it.
    let wide = format!("{}/**", f.logs.parent().expect("parent").display());
    let out = ls(&f, "alice", &[&wide])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    assert!(
        !stdout.contains("secret") && !stdout.contains("elsewhere"),
        "{stdout}"
    );
    conformant(&f, &["read.listed"]);
    Ok(())
}

#[test]
fn ls_without_a_grant_is_denied_and_audited() -> anyhow::Result<()> {
    let f = rotated_fixture("")?;
    rotations_grant(&f, "alice")?;
    let out = ls(&f, "bob", &[])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("hold no grant on agent web-1"), "{stderr}");
    let denied = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["reason_code"] == "no_grant"
        })?;
    assert_eq!(denied["subject"], "spiffe://loggate.local/user/bob");
    assert!(f
        .cluster
        .agent_audit("web-1")
        .iter()
        .all(|e| e["event"] != "read.listed"));
    Ok(())
}

/// A listing takes one of the reader's stream places while it walks: with
/// `max_streams_per_subject = 1` and a `tail --follow` open, it is refused like a read.
#[test]
fn ls_is_bounded_by_the_readers_stream_places_like_a_read() -> anyhow::Result<()> {
    let f = rotated_fixture("[limits]\nmax_streams_per_subject = 1\n")?;
    rotations_grant(&f, "alice")?;
    let mut follow = f
        .cluster
        .logs_cmd(
            "alice",
            "web-1",
            &["tail", "--follow", &path(&f, "api.log")],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(10), |e| {
            e["event"] == "read.allowed" && e["mode"] == "tail_follow"
        })?;
    let out = ls(&f, "alice", &[]);
    let _ = follow.kill();
    let _ = follow.wait();
    let out = out?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("already have 1 streams open"), "{stderr}");
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["reason_code"] == "too_many_streams"
        })?;
    // With the follow gone (its place is freed once the agent sees the connection close), the
    // listing is served again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = ls(&f, "alice", &[])?;
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still refused: {}",
            text(&out).1
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// `data` compressed by the real `tool` (`xz`, `bzip2`, `pzstd`…), from standard input.
fn compressed_by(tool: &str, args: &[&str], data: &[u8]) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    let mut child = std::process::Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {tool} (Debian: xz-utils, bzip2, zstd)"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output()?;
    feeder.join().map_err(|_| anyhow::anyhow!("feeder"))??;
    anyhow::ensure!(out.status.success(), "{tool} failed");
    Ok(out.stdout)
}

/// xz and bzip2 (logrotate's `compresscmd`) are not decoded by the agent: served raw their
/// bytes would carry the secret past redaction to a reader who decompresses locally. They are
/// refused by magic (whatever the name) with `compression_unsupported`, audited before any
/// `read.allowed`; a plain file holding NUL bytes is refused as binary; a `pzstd` file (a
/// skippable frame first) is zstd and served redacted.
#[test]
fn an_xz_or_bzip2_rotated_file_is_refused_not_served_raw() -> anyhow::Result<()> {
    let f = rotated_fixture("")?;
    rotations_grant(&f, "alice")?;
    let day = day_log();
    let xz = compressed_by("xz", &["-c"], day.as_bytes())?;
    std::fs::write(f.logs.join("api.log.2.xz"), &xz)?;
    std::fs::write(
        f.logs.join("api.log.3.bz2"),
        compressed_by("bzip2", &["-c"], day.as_bytes())?,
    )?;
    std::fs::write(f.logs.join("api.log.4"), &xz)?;
    for (name, format) in [
        ("api.log.2.xz", "xz"),
        ("api.log.3.bz2", "bzip2"),
        ("api.log.4", "xz"),
    ] {
        let file = path(&f, name);
        let out = f.logs("alice", &["cat", &file])?;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stdout.is_empty(), "{name}: nothing of it is served");
        assert!(
            stderr.contains(&format!(
                "is compressed with {format}, which this agent does not"
            )) && stderr.contains("gzip or zstd"),
            "{name}: {stderr}"
        );
        let denied = f
            .cluster
            .wait_for_audit("web-1", Duration::from_secs(5), |e| {
                e["event"] == "read.denied" && e["path"] == file.as_str()
            })?;
        assert_eq!(denied["reason_code"], "compression_unsupported", "{name}");
        assert!(denied["grant_id"].is_string(), "{denied}");
        let allowed = f
            .cluster
            .agent_audit("web-1")
            .into_iter()
            .any(|e| e["event"] == "read.allowed" && e["path"] == file.as_str());
        assert!(!allowed, "{name}: allowed before refused");
    }

    // The backstop: binary content the agent does not recognise is not served under redaction.
    std::fs::write(
        f.logs.join("api.log.5"),
        b"\x00\x01\x02password=hunter2\x00\n",
    )?;
    let file = path(&f, "api.log.5");
    let out = f.logs("alice", &["cat", &file])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("holds NUL bytes"), "{stderr}");
    let denied = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["path"] == file.as_str()
        })?;
    assert_eq!(denied["reason_code"], "content_binary");

    // pzstd: a skippable frame first, then zstd frames: decompressed and redacted.
    let pz = compressed_by("pzstd", &["-c", "-q"], day.as_bytes())?;
    assert_eq!(
        pz[1..4],
        [0x2a, 0x4d, 0x18],
        "pzstd writes a skippable frame"
    );
    std::fs::write(f.logs.join("api.log.6"), &pz)?;
    let out = f.logs("alice", &["cat", &path(&f, "api.log.6")])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        day.replace("password=hunter2", "password=[REDACTED:secret]")
    );
    conformant(&f, &["read.denied"]);
    Ok(())
}

/// A listing's glob is bounded like a read's path: 60 KB is refused before anything is
/// compiled, and its `read.denied` keeps 256 bytes (with the length and hash); a glob under
/// the bound is recorded cut the same way in `read.listed`.
#[test]
fn ls_with_a_60kb_glob_is_refused_and_its_record_is_bounded() -> anyhow::Result<()> {
    let f = rotated_fixture("")?;
    rotations_grant(&f, "alice")?;
    let huge = format!("{}/{}", f.logs.display(), "{a,b}*".repeat(10_000));
    let out = ls(&f, "alice", &[&huge])?;
    let (stdout, stderr) = text(&out);
    let stderr: String = stderr
        .chars()
        .rev()
        .take(300)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("at most 4096 are accepted"), "{stderr}");
    let denied = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["reason_code"] == "path_invalid"
        })?;
    assert_eq!(denied["path_bytes"], huge.len() as u64);
    let longest = f
        .cluster
        .agent_audit_raw("web-1")
        .iter()
        .map(|r| r.to_string().len())
        .max()
        .unwrap_or(0);
    assert!(longest < 4096, "a record of {longest} bytes");

    // 3 KB (allowed): listed, and recorded as 256 bytes, its length and its hash.
    let long = format!("{}/[{}]pi.log*", f.logs.display(), "a".repeat(3_000));
    let out = ls(&f, "alice", &[&long])?;
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let listed = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.listed" && e["path_glob_bytes"] == long.len() as u64
        })?;
    assert!(listed["path_glob"].as_str().is_some_and(|g| g.len() <= 256));
    assert!(listed["path_glob_sha256"].is_string(), "{listed}");
    conformant(&f, &["read.listed", "read.denied"]);
    Ok(())
}

/// `ls` reveals nothing a read would not: under a grant whose profile the agent refuses
/// (every read of it is `profile_unavailable`), the listing is refused the same way.
#[test]
fn ls_under_a_grant_whose_profile_the_agent_refuses_is_denied() -> anyhow::Result<()> {
    let f = rotated_fixture("")?;
    let glob = format!("{}/api.log*", f.logs.display());
    let id = f
        .cluster
        .issue_grant_with_profile("alice", "web-1", &glob, "30m", "nosuch")?;
    f.cluster.wait_for_grant("web-1", &id)?;
    let out = f.logs("alice", &["cat", &path(&f, "api.log.1")])?;
    assert!(!out.status.success(), "the read is refused");
    let out = ls(&f, "alice", &[])?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("does not provide"), "{stderr}");
    assert!(f
        .cluster
        .agent_audit("web-1")
        .iter()
        .all(|e| e["event"] != "read.listed"));
    let denied = f
        .cluster
        .agent_audit("web-1")
        .into_iter()
        .filter(|e| e["event"] == "read.denied")
        .count();
    assert_eq!(denied, 2, "the read and the listing, each audited");
    Ok(())
}
