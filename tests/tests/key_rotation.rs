//! End-to-end: the key rotations of docs/operations.md ("Key rotation"), step by step as the
//! page tells an operator, with the real binaries.
//!
//! - The grant-signing key: a new key from `loggate pki new-signing-key`, its public key added to
//!   the agent's `grant_keys` beside the old one, the controller switched to it (restart), then
//!   the old public key removed from the agent (restart): grants of both keys are served during
//!   the overlap, and afterwards a grant of the old key is dropped and refused, with its audit
//!   records naming the key.
//! - The CA: an agent whose `[tls] ca` is a bundle of the old and the new CA accepts people whose
//!   certificates come from either; one that holds only the old CA refuses the new CA's people.

use base64::Engine;
use loggate_tests::{text, Cluster};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// The key id (`kid`) in the footer of a grant token (`v4.public.<body>.<footer>`, the footer
/// base64url JSON): what the page's `jq` line shows an operator.
fn signing_kid(token: &str) -> anyhow::Result<String> {
    let footer = token
        .split('.')
        .nth(3)
        .ok_or_else(|| anyhow::anyhow!("token without a footer: {token}"))?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(footer)?;
    let footer: serde_json::Value = serde_json::from_slice(&json)?;
    footer["kid"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no kid in the footer {footer}"))
}

/// The token of grant `id` as `loggate grant list --json` shows it to an admin.
fn token_of(c: &Cluster, id: &str) -> anyhow::Result<String> {
    let out = c.run_cli("admin", &["grant", "list", "--output", "json"])?;
    anyhow::ensure!(out.status.success(), "grant list: {}", text(&out).1);
    let grants: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    grants
        .as_array()
        .and_then(|a| a.iter().find(|g| g["id"] == id))
        .and_then(|g| g["token"].as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("grant {id} not listed"))
}

/// The key id printed by `loggate pki new-signing-key` / `pki init` for a public key file.
fn kid_of_public_key(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(loggate_core::grant::VerifyingKey::from_paserk(text.trim())?
        .kid()
        .to_string())
}

/// The `jq` program of docs/operations.md's "grants still valid, with the key that signed each"
/// line, run on `loggate grant list --output json` as admin: one line per grant, `ID SUBJECT until
/// NOT_AFTER KID`. `None` where `jq` is not installed.
fn doc_jq_listing(c: &Cluster) -> anyhow::Result<Option<String>> {
    let doc = std::fs::read_to_string(loggate_tests::workspace_root().join("docs/operations.md"))?;
    let line = doc
        .lines()
        .find(|l| l.contains("loggate grant list --output json | jq -r '"))
        .ok_or_else(|| anyhow::anyhow!("operations.md lost its grant-key jq line"))?;
    let program = line
        .split_once("jq -r '")
        .and_then(|(_, rest)| rest.rsplit_once('\''))
        .map(|(p, _)| p)
        .ok_or_else(|| anyhow::anyhow!("unquoted jq program in {line:?}"))?;
    let list = c.run_cli("admin", &["grant", "list", "--output", "json"])?;
    anyhow::ensure!(list.status.success(), "grant list: {}", text(&list).1);
    let mut jq = match std::process::Command::new("jq")
        .args(["-r", program])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        Ok(jq) => jq,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    {
        use std::io::Write;
        let mut stdin = jq.stdin.take().ok_or_else(|| anyhow::anyhow!("jq stdin"))?;
        stdin.write_all(&list.stdout)?;
    }
    let out = jq.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "jq: {}", text(&out).1);
    Ok(Some(text(&out).0))
}

fn replace_in(path: &Path, from: &str, to: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    anyhow::ensure!(text.contains(from), "{} lacks {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1))?;
    Ok(())
}

fn cat(c: &Cluster, user: &str, file: &str) -> anyhow::Result<std::process::Output> {
    Ok(c.logs_cmd(user, "web-1", &["cat", file]).output()?)
}

#[test]
fn grant_key_rotation_serves_both_keys_during_the_overlap_then_refuses_the_old_key(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(None)?;
    let logs = c.dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(logs.join("api.log"), "2026-12-05T03:00:00Z INFO rotated\n")?;
    let api_log = logs.join("api.log").display().to_string();
    let glob = format!("{}/*.log", logs.display());

    // Step 1: a new key beside the old one, made alone (no scratch PKI).
    let out = c
        .cli("admin")
        .args(["pki", "new-signing-key", "--out"])
        .arg(c.dir.join("pki/grant-signing-2.key"))
        .output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    let old_kid = kid_of_public_key(&c.dir.join("pki/grant-signing.pub"))?;
    let new_kid = kid_of_public_key(&c.dir.join("pki/grant-signing-2.pub"))?;
    assert_ne!(old_kid, new_kid);
    assert!(text(&out).0.contains(&new_kid), "{}", text(&out).0);

    // Step 2: the agent trusts both public keys; the controller still signs with the old one.
    c.add_agent("web-1", &[&logs], "")?;
    let agent_config = c.agents["web-1"].config.clone();
    replace_in(
        &agent_config,
        "grant_keys = [\"../../pki/grant-signing.pub\"]",
        "grant_keys = [\"../../pki/grant-signing.pub\", \"../../pki/grant-signing-2.pub\"]",
    )?;
    c.start_controller()?;
    c.start_agent("web-1")?;
    let old_grant = c.grant("alice", "web-1", &glob, "2h")?;
    let old_token = token_of(&c, &old_grant)?;
    assert_eq!(signing_kid(&old_token)?, old_kid);
    let out = cat(&c, "alice", &api_log)?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert!(text(&out).0.contains("INFO rotated"));

    // Step 3: the controller signs with the new key (restart); the old grant still serves.
    c.stop_controller();
    replace_in(
        &c.controller_config,
        "signing_key = \"pki/grant-signing.key\"",
        "signing_key = \"pki/grant-signing-2.key\"",
    )?;
    c.start_controller()?;
    let new_grant = c.grant("bob", "web-1", &glob, "2h")?;
    assert_eq!(signing_kid(&token_of(&c, &new_grant)?)?, new_kid);
    let out = cat(&c, "bob", &api_log)?;
    assert_eq!(out.status.code(), Some(0), "new key: {}", text(&out).1);
    // The page's listing names the key of each grant.
    if let Some(listing) = doc_jq_listing(&c)? {
        let line_of = |id: &str| {
            listing
                .lines()
                .find(|l| l.starts_with(id))
                .map(str::to_string)
        };
        let old_line = line_of(&old_grant).unwrap_or_default();
        let new_line = line_of(&new_grant).unwrap_or_default();
        assert!(old_line.ends_with(&old_kid), "{listing}");
        assert!(new_line.ends_with(&new_kid), "{listing}");
    }
    let out = cat(&c, "alice", &api_log)?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "old key, overlap: {}",
        text(&out).1
    );

    // Step 4: the old public key leaves the agent (restart): its grant is dropped, with the key
    // named; the new key's grant survives the restart.
    c.stop_agent("web-1");
    replace_in(&agent_config, "\"../../pki/grant-signing.pub\", ", "")?;
    c.start_agent("web-1")?;
    let dropped = c.wait_for_audit("web-1", WAIT, |e| {
        e["event"] == "grant.dropped" && e["grant_id"] == old_grant.as_str()
    })?;
    let reason = dropped["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&old_kid) && reason.contains("does not trust"),
        "{dropped}"
    );
    assert!(
        !c.agent_audit("web-1")
            .iter()
            .any(|e| e["event"] == "grant.dropped" && e["grant_id"] == new_grant.as_str()),
        "the new key's grant must survive"
    );
    let out = cat(&c, "bob", &api_log)?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "new key after: {}",
        text(&out).1
    );
    let out = cat(&c, "alice", &api_log)?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "old grant after: {}",
        text(&out).0
    );
    assert!(!text(&out).0.contains("INFO rotated"));

    // The old token presented by its holder: refused as signed by an untrusted key, audited.
    let presented = c.dir.join("old-grant.token");
    std::fs::write(&presented, &old_token)?;
    let out = c
        .logs_cmd(
            "alice",
            "web-1",
            &[
                "cat",
                "--grant-token",
                &presented.display().to_string(),
                &api_log,
            ],
        )
        .output()?;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out).1.contains("which this agent does not trust"),
        "{}",
        text(&out).1
    );
    let denied = c.wait_for_audit("web-1", WAIT, |e| {
        e["event"] == "read.denied" && e["reason_code"] == "grant_unknown_key"
    })?;
    assert_eq!(denied["subject"], "spiffe://loggate.local/user/alice");
    Ok(())
}

/// `loggate logs cat FILE` on web-1 as the person of client configuration `config`.
fn cat_with(c: &Cluster, config: &Path, file: &str) -> anyhow::Result<std::process::Output> {
    let mut cmd = c.logs_cmd("alice", "web-1", &["cat", file]);
    cmd.env("LOGGATE_CONFIG", config);
    Ok(cmd.output()?)
}

#[test]
fn agent_trusting_a_bundle_of_two_cas_accepts_people_of_either_ca() -> anyhow::Result<()> {
    let mut c = Cluster::new(None)?;
    let logs = c.dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(logs.join("api.log"), "x\n")?;
    let api_log = logs.join("api.log").display().to_string();
    // The new CA (same trust domain), made as the page says, and one person's certificate of it.
    let new_pki = c.dir.join("pki-new");
    let out = c
        .cli("admin")
        .args(["pki", "init"])
        .arg(&new_pki)
        .args(["--agent", "web-1", "--user", "carol"])
        .output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    let bundle = c.dir.join("pki/ca-bundle.crt");
    let old_ca = std::fs::read_to_string(c.dir.join("pki/ca.crt"))?;
    let new_ca = std::fs::read_to_string(new_pki.join("ca.crt"))?;
    std::fs::write(&bundle, format!("{old_ca}{new_ca}"))?;
    // carol checks the agent (old CA) with the bundle too.
    let carol = c.dir.join("carol.toml");
    std::fs::write(
        &carol,
        format!(
            "controller = \"{}\"\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            c.controller_addr,
            bundle.display().to_string(),
            new_pki.join("users/carol.crt").display().to_string(),
            new_pki.join("users/carol.key").display().to_string(),
        ),
    )?;

    c.add_agent("web-1", &[&logs], "")?;
    c.start_controller()?;
    c.start_agent("web-1")?;
    // Before: the agent holds only the old CA and refuses carol's certificate in the handshake.
    let out = cat_with(&c, &carol, &api_log)?;
    assert_ne!(out.status.code(), Some(0));
    assert!(
        !c.agent_audit("web-1")
            .iter()
            .any(|e| e["subject"] == "spiffe://loggate.local/user/carol"),
        "a refused handshake reaches no grant check"
    );

    // After: the agent's [tls] ca is the bundle (restart); carol's certificate is accepted and
    // she reaches the grant check (no grant: exit 3, audited under her identity), and alice's
    // certificate of the old CA still reads.
    c.stop_agent("web-1");
    replace_in(
        &c.agents["web-1"].config.clone(),
        "ca = \"../../pki/ca.crt\"",
        "ca = \"../../pki/ca-bundle.crt\"",
    )?;
    c.start_agent("web-1")?;
    let out = cat_with(&c, &carol, &api_log)?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    c.wait_for_audit("web-1", WAIT, |e| {
        e["event"] == "read.denied" && e["subject"] == "spiffe://loggate.local/user/carol"
    })?;
    let glob = format!("{}/*.log", logs.display());
    c.grant("alice", "web-1", &glob, "1h")?;
    let out = cat(&c, "alice", &api_log)?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    Ok(())
}
