//! End-to-end: grants naming a redaction profile get redacted streams, the stream-end audit
//! record carries the counts per detector, and `loggate-agent redact` prints exactly what the
//! agent serves.

use loggate_tests::{text, Fixture};
use std::process::Command;
use std::time::Duration;

const PEM: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA0Z3VS5JJcds3xfn\nKOWs8uWs9pT1hCwo4q0Mx2F\n-----END RSA PRIVATE KEY-----\n";

fn plant(f: &Fixture, name: &str, content: &str) -> anyhow::Result<String> {
    let path = f.logs.join(name);
    std::fs::write(&path, content)?;
    Ok(path.display().to_string())
}

fn secrets_log() -> String {
    format!(
        "2026-11-27T08:00:00Z INFO signup email=jane.doe@example.com ts=1732693762004\n\
         2026-11-27T08:00:01Z INFO charge card=4111 1111 1111 1111 ok password=hunter2\n\
         2026-11-27T08:00:02Z WARN key dump follows\n{PEM}\
         2026-11-27T08:00:03Z INFO done\n"
    )
}

#[test]
fn default_profile_redacts_the_stream_and_audits_counts_per_detector() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let path = plant(&f, "secrets.log", &secrets_log())?;
    let grant = f.grant_with_profile("alice", "30m", "default")?;
    let out = f.logs("alice", &["cat", &path])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "2026-11-27T08:00:00Z INFO signup email=[REDACTED:email] ts=1732693762004\n\
         2026-11-27T08:00:01Z INFO charge card=[REDACTED:card] ok password=[REDACTED:secret]\n\
         2026-11-27T08:00:02Z WARN key dump follows\n\
         [REDACTED:private_key]\n\
         2026-11-27T08:00:03Z INFO done\n"
    );
    let finished = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.finished" && e["grant_id"] == grant.as_str()
        })?;
    assert_eq!(
        finished["redactions"],
        serde_json::json!({"email": 1, "card": 1, "secret": 1, "private_key": 1})
    );
    assert_eq!(finished["lines_withheld"], 0);
    let audit = std::fs::read_to_string(f.cluster.dir.join("agents/web-1/audit.jsonl"))?;
    assert!(!audit.contains("hunter2") && !audit.contains("jane.doe"));
    Ok(())
}

#[test]
fn redact_command_prints_byte_for_byte_what_the_agent_serves() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let path = plant(&f, "secrets.log", &secrets_log())?;
    f.grant_with_profile("alice", "30m", "default")?;
    let served = f.logs("alice", &["cat", &path])?;
    assert!(served.status.success(), "{}", text(&served).1);
    let local = Command::new(f.cluster.bins.join("loggate-agent"))
        .args(["redact", "--stats", &path])
        .output()?;
    assert!(local.status.success(), "{}", text(&local).1);
    assert_eq!(local.stdout, served.stdout);
    let stats: serde_json::Value = serde_json::from_slice(&local.stderr)?;
    assert_eq!(stats["redactions"]["private_key"], 1);
    Ok(())
}

#[test]
fn grep_sees_redacted_lines_so_it_cannot_probe_for_a_secret() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let path = plant(&f, "secrets.log", &secrets_log())?;
    f.grant_with_profile("alice", "30m", "default")?;
    let out = f.logs("alice", &["grep", "hunter2", &path])?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(text(&out).0, "");
    let out = f.logs("alice", &["grep", "REDACTED:secret", &path])?;
    assert_eq!(text(&out).0.lines().count(), 1);
    Ok(())
}

#[test]
fn tail_starting_inside_a_private_key_serves_none_of_it() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let path = plant(
        &f,
        "key.log",
        "start\n-----BEGIN PRIVATE KEY-----\nAAAABBBBCCCC\nDDDDEEEEFFFF\n",
    )?;
    f.grant_with_profile("alice", "30m", "default")?;
    let out = f.logs("alice", &["tail", "-n", "2", &path])?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(text(&out).0, "");
    Ok(())
}

#[test]
fn grant_naming_an_unknown_profile_is_denied_not_served_raw() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    f.grant_with_profile("alice", "30m", "strict")?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out).1.contains("\"strict\""), "{}", text(&out).1);
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["reason_code"] == "profile_unavailable"
        })?;
    Ok(())
}

#[test]
fn truncating_the_file_mid_scan_ends_the_stream_with_whole_redacted_lines() -> anyhow::Result<()> {
    use std::io::Read;
    let f = Fixture::start()?;
    let line = |i: usize| format!("{i:08} user{i}@example.com paid with 4111111111111111 ok\n");
    let redacted = |i: usize| format!("{i:08} [REDACTED:email] paid with [REDACTED:card] ok");
    let lines = 400_000; // ~22 MB: far more than the stream buffers between agent and reader
    let mut content = String::with_capacity(lines * 56);
    for i in 0..lines {
        content.push_str(&line(i));
    }
    let path = plant(&f, "big.log", &content)?;
    f.grant_with_profile("alice", "30m", "default")?;
    let mut child = f
        .cluster
        .logs_cmd("alice", "web-1", &["cat", &path])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut got = vec![0u8; 256 * 1024];
    stdout.read_exact(&mut got)?;
    // copytruncate, as logrotate does it, while the agent is in the middle of the file.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)?
        .set_len(0)?;
    stdout.read_to_end(&mut got)?;
    let status = child.wait()?;
    assert!(status.success());
    let text = String::from_utf8(got)?;
    assert!(text.ends_with('\n'), "the stream ended inside a line");
    let served: Vec<&str> = text.lines().collect();
    assert!(
        served.len() < lines,
        "the whole file was served before the truncation; the test proved nothing"
    );
    for (i, l) in served.iter().enumerate() {
        assert_eq!(*l, redacted(i), "line {i}");
    }
    Ok(())
}

#[test]
fn configured_hash_profile_gives_stable_keyed_pseudonyms() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let keys = tempfile::tempdir()?;
    let key = keys.path().join("redaction.key");
    std::fs::write(&key, [0x5au8; 32])?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    let f = Fixture::start_with(&format!(
        "[redaction]\nhash_key_file = {:?}\n\
         [redaction.profiles.support]\ndetectors = [\"email\", \"card\"]\n\
         modes = {{ email = \"hash\", card = \"partial\" }}\n",
        key.display().to_string()
    ))?;
    let path = plant(
        &f,
        "pii.log",
        "a jane@example.com 4111111111111111\nb jane@example.com\n",
    )?;
    f.grant_with_profile("alice", "30m", "support")?;
    let first = f.logs("alice", &["cat", &path])?;
    assert!(first.status.success(), "{}", text(&first).1);
    let (stdout, _) = text(&first);
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert!(
        words[1].starts_with("<email:") && words[1] == words[4],
        "{stdout}"
    );
    assert_eq!(words[2], "[REDACTED:card:...1111]");
    // Another read, and the local command with the same configuration: the same pseudonyms.
    assert_eq!(f.logs("alice", &["cat", &path])?.stdout, first.stdout);
    let config = f.cluster.agents["web-1"].config.display().to_string();
    let local = Command::new(f.cluster.bins.join("loggate-agent"))
        .args(["redact", "--config", &config, "--profile", "support", &path])
        .output()?;
    assert!(local.status.success(), "{}", text(&local).1);
    assert_eq!(local.stdout, first.stdout);
    Ok(())
}

#[test]
fn redact_command_refuses_bad_input_with_one_clear_sentence() -> anyhow::Result<()> {
    let bins = loggate_tests::bin_dir()?;
    let dir = tempfile::tempdir()?;
    let bad_config = dir.path().join("agent.toml");
    std::fs::write(&bad_config, "id = \"x\"\nwhat = 1\n")?;
    let config = bad_config.display().to_string();
    let folder = dir.path().display().to_string();
    let missing = dir.path().join("missing.log").display().to_string();
    for (args, want) in [
        (vec!["redact", &missing], "cannot read"),
        (vec!["redact", &folder], "is a folder"),
        (
            vec!["redact", "--profile", "nope"],
            "no redaction profile \"nope\"; available: default",
        ),
        (vec!["redact", "--profile", "raw"], "allow_raw = true"),
        (
            vec!["redact", "--config", &config],
            "invalid agent configuration",
        ),
    ] {
        let out = Command::new(bins.join("loggate-agent"))
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()?;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(text(&out).1.contains(want), "{args:?}: {}", text(&out).1);
    }
    Ok(())
}

#[test]
fn list_detectors_prints_every_builtin_detector_with_its_source() -> anyhow::Result<()> {
    let bins = loggate_tests::bin_dir()?;
    let out = Command::new(bins.join("loggate-agent"))
        .args(["redact", "--list-detectors"])
        .stdin(std::process::Stdio::null())
        .output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    let (stdout, _) = text(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "name\tprofile\tfinds\tsource");
    let default = lines.iter().filter(|l| l.contains("\tdefault\t")).count();
    assert!(default >= 120, "{default} default detectors");
    for name in [
        "github_token",
        "gitlab_pat",
        "anthropic_key",
        "age_secret_key",
        "card",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{name}\tdefault\t"))),
            "{name}"
        );
    }
    assert!(lines.iter().any(|l| l.starts_with("phone\topt-in\t")));
    for l in &lines[1..] {
        let fields: Vec<&str> = l.split('\t').collect();
        assert!(fields.len() == 4 && !fields[3].is_empty(), "{l}");
    }
    Ok(())
}

#[test]
fn vendor_tokens_are_redacted_in_the_served_stream_and_counted() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let gitlab = "glpat-a1B2c3D4e5F6g7H8k9xy";
    let anthropic = format!("sk-ant-api03-{}", "a1B2-c3_D4e5F6g7H8k9".repeat(5));
    let webhook_path = "T0123ABC/B0456DEF/a1B2c3D4e5F6g7H8k9XyZ0";
    let digitalocean = format!("dop_v1_{}", "0a1b2c3d4e5f6789".repeat(4));
    let content = format!(
        "2026-11-27T08:00:00Z INFO push token {gitlab} ok\n\
         2026-11-27T08:00:01Z DEBUG llm key {anthropic} and {digitalocean}\n\
         2026-11-27T08:00:02Z INFO notify https://hooks.slack.com/services/{webhook_path} done\n\
         2026-11-27T08:00:03Z INFO publishable pk_live_abcdefghijklmnop stays\n"
    );
    let path = plant(&f, "vendors.log", &content)?;
    let grant = f.grant_with_profile("alice", "30m", "default")?;
    let out = f.logs("alice", &["cat", &path])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "2026-11-27T08:00:00Z INFO push token [REDACTED:gitlab_pat] ok\n\
         2026-11-27T08:00:01Z DEBUG llm key [REDACTED:anthropic_key] and [REDACTED:digitalocean_token]\n\
         2026-11-27T08:00:02Z INFO notify https://hooks.slack.com/services/[REDACTED:slack_webhook] done\n\
         2026-11-27T08:00:03Z INFO publishable pk_live_abcdefghijklmnop stays\n"
    );
    let finished = f
        .cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.finished" && e["grant_id"] == grant.as_str()
        })?;
    assert_eq!(
        finished["redactions"],
        serde_json::json!({"gitlab_pat": 1, "anthropic_key": 1, "digitalocean_token": 1, "slack_webhook": 1})
    );
    Ok(())
}
