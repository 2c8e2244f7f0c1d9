//! End-to-end: only the right certificate, holding the right key, with a grant signed by a
//! trusted key, reads anything.

use loggate_core::grant::{GrantClaims, SigningKey};
use loggate_core::identity::Identity;
use loggate_core::tls::read_certificate_der;
use loggate_tests::{text, Cluster, Fixture};
use std::process::Command;
use std::time::Duration;

const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn token_of(f: &Fixture, user: &str, id: &str) -> anyhow::Result<String> {
    let out = f.cluster.run_cli(user, &["grant", "list", "--json"])?;
    let grants: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(grants
        .as_array()
        .and_then(|a| a.iter().find(|g| g["id"] == id))
        .and_then(|g| g["token"].as_str())
        .ok_or_else(|| anyhow::anyhow!("grant {id} not listed"))?
        .to_string())
}

fn present(f: &Fixture, user: &str, token: &str) -> anyhow::Result<std::process::Output> {
    let file = f
        .cluster
        .dir
        .join(format!("presented-{}.token", rand_suffix()));
    std::fs::write(&file, token)?;
    f.logs(
        user,
        &["cat", "--grant-token", file.to_str().unwrap(), &f.api_log()],
    )
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A token for alice on web-1 signed by a key the agent has never seen.
fn foreign_token(f: &Fixture) -> anyhow::Result<String> {
    let der = read_certificate_der(&f.cluster.dir.join("pki/users/alice.crt"))?;
    let alice = Identity::from_certificate(&der, "loggate.local")?;
    let now = loggate_core::grant::unix_now();
    let claims = GrantClaims {
        jti: "g-00000000deadbeef".into(),
        iss: "spiffe://loggate.local/controller".into(),
        sub: alice.spiffe_id().into(),
        iat: now,
        nbf: now,
        exp: now + 3600,
        hosts: vec!["web-1".into()],
        labels: vec![],
        paths: vec![f.glob()],
        units: vec![],
        redaction: "raw".into(),
        reason: "forged".into(),
        approver: "spiffe://loggate.local/user/admin".into(),
        key_sha256: alice.key_sha256_hex(),
    };
    Ok(SigningKey::generate()?.sign(&claims)?)
}

#[test]
fn grant_signed_by_an_unknown_key_is_refused() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let out = present(&f, "alice", &foreign_token(&f)?)?;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out).1.contains("which this agent does not trust"),
        "{}",
        text(&out).1
    );
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["reason_code"] == "grant_unknown_key"
        })?;
    Ok(())
}

#[test]
fn forged_signature_is_refused() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    // A genuine grant for web-2 gives us the trusted key id in its footer…
    let genuine_id = f.cluster.issue_grant("alice", "web-2", &f.glob(), "30m")?;
    let genuine = token_of(&f, "alice", &genuine_id)?;
    let trusted_footer = genuine.rsplit('.').next().unwrap();
    // …and a forger signs their own claims for web-1 and claims that key id.
    let forged = foreign_token(&f)?;
    let (body, _) = forged.rsplit_once('.').unwrap();
    let out = present(&f, "alice", &format!("{body}.{trusted_footer}"))?;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out).1.contains("signature is invalid"),
        "{}",
        text(&out).1
    );
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["reason_code"] == "grant_bad_signature"
        })?;
    Ok(())
}

#[test]
fn grant_bound_to_another_key_is_refused() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    // bob's genuine grant, stolen and presented by alice.
    let id = f.grant("bob", "30m")?;
    let stolen = token_of(&f, "admin", &id)?;
    let out = present(&f, "alice", &stolen)?;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out).1.contains("bound to another certificate key"),
        "{}",
        text(&out).1
    );
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["reason_code"] == "grant_bound_to_another_key"
        })?;
    Ok(())
}

#[test]
fn pushed_grant_with_unknown_key_is_rejected_on_receipt() -> anyhow::Result<()> {
    // An agent that trusts another controller key refuses everything this controller pushes.
    let mut other = Cluster::new(None)?;
    let logs = other.dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(logs.join("a.log"), "x\n")?;
    let stranger = Cluster::new(None)?;
    let foreign_pub = stranger.dir.join("pki/grant-signing.pub");
    other.add_agent("web-1", &[&logs], "")?;
    let config = other.agents["web-1"].config.clone();
    let text_cfg = std::fs::read_to_string(&config)?.replace(
        "\"../../pki/grant-signing.pub\"",
        &format!("{:?}", foreign_pub.display().to_string()),
    );
    std::fs::write(&config, text_cfg)?;
    other.start_controller()?;
    other.start_agent("web-1")?;
    let id = other.issue_grant(
        "alice",
        "web-1",
        &format!("{}/*.log", logs.display()),
        "30m",
    )?;
    let rejected = other.wait_for_audit("web-1", Duration::from_secs(10), |e| {
        e["event"] == "grant.rejected" && e["grant_id"] == id.as_str()
    })?;
    assert_eq!(rejected["reason_code"], "grant_unknown_key");
    Ok(())
}

fn client_config_with(
    f: &Fixture,
    name: &str,
    ca: &str,
    cert: &str,
    key: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let path = f.cluster.dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "controller = \"{}\"\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n",
            f.cluster.controller_addr
        ),
    )?;
    Ok(path)
}

fn read_with_config(f: &Fixture, config: &std::path::Path) -> anyhow::Result<std::process::Output> {
    Ok(f.cluster
        .logs_cmd("alice", "web-1", &["cat", &f.api_log()])
        .env("LOGGATE_CONFIG", config)
        .output()?)
}

#[test]
fn certificate_from_another_ca_is_rejected() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    f.grant("alice", "30m")?;
    let other = Cluster::new(None)?;
    let p = |s: &str| other.dir.join("pki").join(s).display().to_string();
    let ours = f.cluster.dir.join("pki/ca.crt").display().to_string();
    // Trusts the real CA but presents an "alice" certificate from another CA.
    let config = client_config_with(
        &f,
        "impostor",
        &ours,
        &p("users/alice.crt"),
        &p("users/alice.key"),
    )?;
    let out = read_with_config(&f, &config)?;
    let (stdout, stderr) = text(&out);
    // TLS 1.3 clients learn of the refusal as an alert or as a closed connection, whichever
    // arrives first; both must end the command with nothing served.
    assert!(!out.status.success(), "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("agent web-1") && stderr.contains("certificate"),
        "{stderr}"
    );
    assert!(!f
        .cluster
        .agent_audit("web-1")
        .iter()
        .any(|e| e["event"] == "read.allowed"));
    // The refusal is audited, naming what the certificate claimed.
    let refused = f
        .cluster
        .wait_for_audit("web-1", WAIT, |e| e["event"] == "tls.refused")?;
    // Both development CAs have the same name: the chain is found, its signature fails.
    assert_eq!(refused["reason_code"], "bad_signature", "{refused}");
    assert_eq!(
        refused["claimed_subject"],
        "spiffe://loggate.local/user/alice"
    );
    assert_eq!(refused["service"], "loggate agent");
    // …and so does the controller's.
    let out = f
        .cluster
        .cli("alice")
        .arg("whoami")
        .env("LOGGATE_CONFIG", &config)
        .output()?;
    assert!(!out.status.success(), "{}", text(&out).1);
    let deadline = std::time::Instant::now() + WAIT;
    let refused = loop {
        let found = f
            .cluster
            .controller_audit()
            .iter()
            .map(loggate_tests::flat_audit_record)
            .find(|e| e["event"] == "tls.refused");
        match found {
            Some(e) => break e,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            None => anyhow::bail!(
                "the controller did not audit the refused handshake ({})",
                text(&out).1
            ),
        }
    };
    assert_eq!(refused["reason_code"], "bad_signature", "{refused}");
    assert_eq!(refused["service"], "loggate controller");
    Ok(())
}

#[test]
fn expired_client_certificate_is_rejected() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let pki = f.cluster.dir.join("pki");
    let out = Command::new(f.cluster.bins.join("loggate"))
        .args(["pki", "issue"])
        .arg(&pki)
        .args([
            "--user",
            "carol",
            "--valid-from",
            "2020-01-01T00:00:00Z",
            "--valid-until",
            "2020-01-02T00:00:00Z",
        ])
        .output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    let out = read_with_config(&f, &pki.join("clients/carol.toml"))?;
    assert!(!out.status.success());
    assert!(text(&out).1.contains("certificate"), "{}", text(&out).1);
    assert!(text(&out).0.is_empty());
    assert!(!f
        .cluster
        .agent_audit("web-1")
        .iter()
        .any(|e| e["event"] == "read.allowed"));
    let refused = f
        .cluster
        .wait_for_audit("web-1", WAIT, |e| e["event"] == "tls.refused")?;
    assert_eq!(refused["reason_code"], "certificate_expired", "{refused}");
    assert_eq!(
        refused["claimed_subject"],
        "spiffe://loggate.local/user/carol"
    );
    Ok(())
}

#[tokio::test]
async fn not_yet_valid_client_certificate_is_reported_as_not_valid_yet_not_expired(
) -> anyhow::Result<()> {
    let f = tokio::task::spawn_blocking(Fixture::start).await??;
    let pki = f.cluster.dir.join("pki");
    let out = Command::new(f.cluster.bins.join("loggate"))
        .args(["pki", "issue"])
        .arg(&pki)
        .args([
            "--user",
            "dave",
            "--valid-from",
            "2099-01-01T00:00:00Z",
            "--valid-until",
            "2099-02-01T00:00:00Z",
        ])
        .output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    // The user is told what is wrong with their certificate: it has not started.
    let out = read_with_config(&f, &pki.join("clients/dave.toml"))?;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("not valid yet") && stderr.contains("2099-01-01T00:00:00Z"),
        "{stderr}"
    );
    assert!(!stderr.to_lowercase().contains("expired"), "{stderr}");
    // A client that presents it anyway is refused, and audited, as not valid yet.
    let ca = std::fs::read(pki.join("ca.crt"))?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(pki.join("users/dave.crt"))?,
            std::fs::read(pki.join("users/dave.key"))?,
        ))
        .domain_name("web-1");
    let endpoint = tonic::transport::Endpoint::from_shared(format!(
        "https://{}",
        f.cluster.agent_addr("web-1")
    ))?
    .tls_config(tls)?;
    let result = async {
        let channel = endpoint.connect().await?;
        let mut client = loggate_proto::agent_client::AgentClient::new(channel);
        let mut stream = client
            .read_log(loggate_proto::ReadLogRequest {
                path: f.api_log(),
                mode: loggate_proto::ReadMode::Cat as i32,
                ..Default::default()
            })
            .await?
            .into_inner();
        stream.message().await?;
        anyhow::Ok(())
    }
    .await;
    assert!(result.is_err(), "a not-yet-valid certificate was served");
    let refused = tokio::task::spawn_blocking(move || {
        f.cluster
            .wait_for_audit("web-1", WAIT, |e| e["event"] == "tls.refused")
    })
    .await??;
    assert_eq!(
        refused["reason_code"], "certificate_not_valid_yet",
        "{refused}"
    );
    assert_eq!(
        refused["claimed_subject"],
        "spiffe://loggate.local/user/dave"
    );
    Ok(())
}

#[tokio::test]
async fn missing_client_certificate_is_rejected() -> anyhow::Result<()> {
    let f = tokio::task::spawn_blocking(Fixture::start).await??;
    let ca = std::fs::read(f.cluster.dir.join("pki/ca.crt"))?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("web-1");
    let endpoint = tonic::transport::Endpoint::from_shared(format!(
        "https://{}",
        f.cluster.agent_addr("web-1")
    ))?
    .tls_config(tls)?;
    let result = async {
        let channel = endpoint.connect().await?;
        let mut client = loggate_proto::agent_client::AgentClient::new(channel);
        let mut stream = client
            .read_log(loggate_proto::ReadLogRequest {
                path: f.api_log(),
                mode: loggate_proto::ReadMode::Cat as i32,
                ..Default::default()
            })
            .await?
            .into_inner();
        stream.message().await?;
        anyhow::Ok(())
    }
    .await;
    assert!(result.is_err(), "a client without a certificate was served");
    let refused = tokio::task::spawn_blocking(move || {
        f.cluster
            .wait_for_audit("web-1", WAIT, |e| e["event"] == "tls.refused")
    })
    .await??;
    assert_eq!(refused["reason_code"], "no_client_certificate", "{refused}");
    assert!(refused["claimed_subject"].is_null(), "{refused}");
    Ok(())
}

#[test]
fn agent_certificate_cannot_read_logs_or_issue_grants() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let p = |s: &str| f.cluster.dir.join("pki").join(s).display().to_string();
    let config = client_config_with(
        &f,
        "as-agent",
        &p("ca.crt"),
        &p("agents/web-2.crt"),
        &p("agents/web-2.key"),
    )?;
    let out = read_with_config(&f, &config)?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("is for user identities"),
        "{}",
        text(&out).1
    );
    Ok(())
}

#[test]
fn a_new_key_for_a_user_does_not_take_over_their_grants() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    // alice's enrolled key is the one from `pki init`. Someone with another valid certificate
    // for alice (a new key from the same CA) talks to the controller…
    let pki = f.cluster.dir.join("pki");
    std::fs::rename(pki.join("users/alice.crt"), pki.join("users/alice-old.crt"))?;
    std::fs::rename(pki.join("users/alice.key"), pki.join("users/alice-old.key"))?;
    std::fs::remove_file(pki.join("clients/alice.toml"))?;
    let out = Command::new(f.cluster.bins.join("loggate"))
        .args(["pki", "issue"])
        .arg(&pki)
        .args([
            "--user",
            "alice",
            "--controller-addr",
            &f.cluster.controller_addr.to_string(),
        ])
        .output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    let whoami = f.cluster.run_cli("alice", &["whoami"])?;
    assert!(!whoami.status.success());
    assert!(
        text(&whoami).1.contains("bound to another key"),
        "{}",
        text(&whoami).1
    );
    // …and the next grant issued to alice is still bound to the enrolled key, so the new
    // certificate cannot use it.
    f.grant("alice", "30m")?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("bound to another certificate key"),
        "{}",
        text(&out).1
    );
    Ok(())
}

#[test]
fn a_presented_token_is_judged_on_its_own_even_when_the_reader_holds_a_good_grant(
) -> anyhow::Result<()> {
    let f = Fixture::start()?;
    f.grant("alice", "30m")?;
    let bobs = f.grant("bob", "30m")?;
    let bobs_token = token_of(&f, "bob", &bobs)?;
    // Alice's own grant covers the file, but she presents bob's token: refused, and audited.
    let out = present(&f, "alice", &bobs_token)?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(text(&out).0.is_empty());
    f.cluster
        .wait_for_audit("web-1", Duration::from_secs(5), |e| {
            e["event"] == "read.denied" && e["reason_code"] == "grant_bound_to_another_key"
        })?;
    let garbage = present(&f, "alice", "garbage")?;
    assert_eq!(garbage.status.code(), Some(3), "{}", text(&garbage).1);
    Ok(())
}
