//! Sign-in with the organisation's IdP (`loggate login`, issue #22), end to end: the real
//! `loggate` binaries, the controller's pre-authentication port with the development CA, and a
//! real OpenID Provider (`tests/oidc-provider`, oidc-provider on Node.js) on loopback, driven
//! over plain HTTP as a person's browser would.
//!
//! Refusals are proved with tokens the provider itself signs (its own keys, through its test
//! hook), sent to `SignIn` directly with a certificate request made here as `loggate login`
//! makes it; each is checked for its status and its `auth.sign_in_refused` record.

use loggate_core::audit::{event_name, record_field};
use loggate_proto as pb;
use loggate_tests::oidc_provider::OidcProvider;
use loggate_tests::{text, wait_for_port, Cluster};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A controller that signs people in at `idp`, with one agent `web-1`.
struct SignInSetup {
    cluster: Cluster,
    idp: OidcProvider,
    sign_in: SocketAddr,
    /// The person's `$HOME` and `$LOGGATE_CONFIG_DIR`.
    home: tempfile::TempDir,
    log_dir: PathBuf,
    /// For the gRPC calls (the browser side is blocking HTTP, outside any runtime).
    rt: tokio::runtime::Runtime,
}

impl SignInSetup {
    fn start(idp_env: &[(&str, &str)], oidc_extra: &str) -> anyhow::Result<SignInSetup> {
        Self::start_with_policy(idp_env, oidc_extra, None)
    }

    /// [`Self::start`] with an access policy (`LOG_DIR` in it stands for the agent's log
    /// folder).
    fn start_with_policy(
        idp_env: &[(&str, &str)],
        oidc_extra: &str,
        policy: Option<&str>,
    ) -> anyhow::Result<SignInSetup> {
        let idp = OidcProvider::start(idp_env)?;
        let mut cluster = Cluster::new(None)?;
        // Above the tests' attempts from one address in a minute.
        let sign_in = cluster.enable_enrolment("attempts_per_minute = 200")?;
        let mut config = std::fs::read_to_string(&cluster.controller_config)?;
        config.push_str(&format!(
            "\n[oidc]\nissuer = \"{}\"\nclient_id = \"loggate-cli\"\n\
             allow_http_loopback_issuer = true\nallowed_email_domains = [\"example.com\"]\n\
             scopes = [\"openid\", \"email\", \"profile\", \"groups\"]\ngroups_claim = \"groups\"\n\
             jwks_refetch_interval = \"1s\"\n{oidc_extra}\n",
            idp.issuer
        ));
        std::fs::write(&cluster.controller_config, config)?;
        let log_dir = cluster.dir.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        std::fs::write(log_dir.join("app.log"), "hello from web-1\n")?;
        cluster.add_agent("web-1", &[&log_dir], "")?;
        if let Some(policy) = policy {
            cluster.set_policy(&policy.replace("LOG_DIR", &log_dir.display().to_string()))?;
        }
        cluster.start_controller()?;
        wait_for_port(sign_in, Duration::from_secs(20))?;
        cluster.start_agent("web-1")?;
        let home = tempfile::tempdir()?;
        Ok(SignInSetup {
            cluster,
            idp,
            sign_in,
            home,
            log_dir,
            rt: tokio::runtime::Runtime::new()?,
        })
    }

    fn config_dir(&self) -> PathBuf {
        self.home.path().join("loggate")
    }

    /// `loggate ARGS` as the person: their own configuration folder, nothing else.
    fn person(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.cluster.bins.join("loggate"));
        cmd.args(args)
            .env("HOME", self.home.path())
            .env("LOGGATE_CONFIG_DIR", self.config_dir())
            .env_remove("LOGGATE_CONFIG")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null());
        cmd
    }

    fn login_cmd(&self, extra: &[&str]) -> Command {
        let addr = self.sign_in.to_string();
        let ca = self.cluster.dir.join("pki/ca.crt");
        let mut args = vec!["login", "--controller", &addr, "--ca"];
        let ca = ca.display().to_string();
        args.push(&ca);
        args.extend_from_slice(extra);
        self.person(&args)
    }

    /// `loggate login` (code flow) as `who` at the IdP; panics with its output unless it
    /// signs in.
    fn login_as(&self, who: &str) -> anyhow::Result<()> {
        let (code, stderr) = self.try_login_as(who)?;
        anyhow::ensure!(code == 0, "login as {who}: exit {code}: {stderr}");
        Ok(())
    }

    /// `loggate login` (code flow) as `who`: its exit code and standard error.
    fn try_login_as(&self, who: &str) -> anyhow::Result<(i32, String)> {
        let mut login = LoginRun::spawn(self.login_cmd(&[]))?;
        let url = login.line(|l| l.starts_with(&format!("{}/auth?", self.idp.issuer)))?;
        let browser = self.idp.browser()?;
        let redirect = browser.sign_in(&url, who)?;
        browser.deliver(&redirect)?;
        login.finish()
    }

    /// The controller's `auth.*` records.
    fn auth_records(&self, name: &str) -> Vec<Value> {
        self.cluster
            .controller_audit()
            .into_iter()
            .filter(|r| event_name(r) == Some(name))
            .collect()
    }

    /// `SignIn` called directly, as `loggate login` calls it.
    fn sign_in_rpc(
        &self,
        id_token: &str,
        nonce: &str,
        csr_der: &[u8],
    ) -> Result<pb::SignInResponse, tonic::Status> {
        self.rt.block_on(async {
            let channel = self
                .cluster
                .anonymous_channel(self.sign_in)
                .await
                .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
            pb::enrolment_client::EnrolmentClient::new(channel)
                .sign_in(pb::SignInRequest {
                    id_token: id_token.to_string(),
                    nonce: nonce.to_string(),
                    csr_der: csr_der.to_vec(),
                })
                .await
                .map(|r| r.into_inner())
        })
    }
}

/// A running `loggate login`: its standard error, line by line.
struct LoginRun {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl LoginRun {
    fn spawn(mut cmd: Command) -> anyhow::Result<LoginRun> {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(LoginRun {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// The first line satisfying `pred`, within 30 s.
    fn line(&mut self, pred: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(e) => {
                    anyhow::bail!("no such line from loggate login ({e}); saw {:?}", self.seen)
                }
            }
        }
    }

    /// Waits (at most 60 s) for the end; exit code and the rest of standard error.
    fn finish(mut self) -> anyhow::Result<(i32, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                anyhow::bail!("loggate login did not finish; saw {:?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        Ok((status.code().unwrap_or(-1), self.seen.join("\n")))
    }
}

impl Drop for LoginRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A key pair, its certificate request and its SubjectPublicKeyInfo, as `loggate login`
/// makes them.
struct Key {
    csr: Vec<u8>,
    spki: Vec<u8>,
}

fn p256_key() -> Key {
    use rcgen::PublicKeyData;
    let key = rcgen::KeyPair::generate().expect("a P-256 key");
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("a CSR")
        .der()
        .to_vec();
    Key {
        csr,
        spki: key.subject_public_key_info(),
    }
}

/// An RSA-1024 key's request, made by openssl (ring cannot make RSA keys).
fn rsa1024_key(dir: &Path) -> anyhow::Result<Key> {
    let key = dir.join("weak.key");
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl").args(args).output()?;
        anyhow::ensure!(out.status.success(), "openssl {args:?}: {}", text(&out).1);
        Ok(())
    };
    let key_s = key.display().to_string();
    let csr = dir.join("weak.csr").display().to_string();
    let spki = dir.join("weak.spki").display().to_string();
    run(&["genrsa", "-out", &key_s, "1024"])?;
    run(&[
        "req", "-new", "-key", &key_s, "-subj", "/CN=weak", "-outform", "DER", "-out", &csr,
    ])?;
    run(&[
        "rsa", "-in", &key_s, "-pubout", "-outform", "DER", "-out", &spki,
    ])?;
    Ok(Key {
        csr: std::fs::read(&csr)?,
        spki: std::fs::read(&spki)?,
    })
}

/// The nonce `loggate login` sends for a key: base64url(SHA-256(SPKI) || 16 random bytes).
fn nonce_for(spki: &[u8]) -> String {
    use base64::Engine;
    use sha2::Digest;
    let mut bytes = sha2::Sha256::digest(spki).to_vec();
    bytes.extend_from_slice(&rand::random::<[u8; 16]>());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `token` with the last base64url character of its signature changed only in the bits that
/// carry no data (a 256-byte RS256 signature is 342 characters, the last one holding 4 unused
/// bits): a different string that decodes to the same signature.
fn with_other_padding_bits(token: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = token.as_bytes().to_vec();
    if let Some(last) = bytes.last_mut() {
        if let Some(i) = ALPHABET.iter().position(|c| c == last) {
            *last = ALPHABET[i ^ 1];
        }
    }
    String::from_utf8(bytes).unwrap_or_default()
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What alice's ID token says, for `nonce`.
fn alice_claims(issuer: &str, nonce: &str) -> Value {
    json!({
        "iss": issuer, "aud": "loggate-cli", "sub": "alice", "email": "alice@example.com",
        "email_verified": true, "preferred_username": "alice", "groups": ["sre"],
        "hd": "example.com",
        "nonce": nonce, "iat": now_s(), "exp": now_s() + 600,
    })
}

/// The certificate's SPIFFE id and validity (Unix seconds).
fn certificate_facts(pem_path: &Path) -> anyhow::Result<(Vec<String>, i64, i64)> {
    let pem = std::fs::read(pem_path)?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem)?;
    let cert = block.parse_x509()?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                uris.push(uri.to_string());
            }
        }
    }
    Ok((
        uris,
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

#[test]
fn code_flow_login_gives_an_8h_certificate_for_the_token_identity_that_reads_through_an_agent(
) -> anyhow::Result<()> {
    let s = SignInSetup::start(&[], "")?;
    let mut login = LoginRun::spawn(s.login_cmd(&[]))?;
    let url = login.line(|l| l.starts_with(&format!("{}/auth?", s.idp.issuer)))?;
    assert!(url.contains("code_challenge_method=S256"), "PKCE: {url}");
    assert!(
        url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
        "loopback: {url}"
    );
    let browser = s.idp.browser()?;
    let redirect = browser.sign_in(&url, "alice")?;
    assert!(redirect.starts_with("http://127.0.0.1:"), "{redirect}");
    // A request with another state (a local process, a port-scanning web page) is answered
    // 400 and does not cancel the login: the real redirect still signs in.
    let listener = redirect.split("/callback").next().unwrap_or_default();
    let forged = format!("{listener}/callback?state=not-this-login&code=x");
    assert_eq!(browser.deliver(&forged)?, 400);
    assert_eq!(browser.deliver(&redirect)?, 200);
    let (code, stderr) = login.finish()?;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("signed in as spiffe://loggate.local/user/alice"),
        "{stderr}"
    );

    // The key, certificate and CA are private files in a private folder.
    use std::os::unix::fs::PermissionsExt;
    let dir = s.config_dir();
    assert_eq!(std::fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);
    for file in ["user.key", "user.crt", "ca.crt", "config.toml"] {
        let mode = std::fs::metadata(dir.join(file))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let (uris, not_before, not_after) = certificate_facts(&dir.join("user.crt"))?;
    assert_eq!(uris, ["spiffe://loggate.local/user/alice"]);
    let lifetime = not_after - now_s();
    assert!(
        (8 * 3600 - 120..=8 * 3600 + 5).contains(&lifetime),
        "valid for {lifetime} s more, not ~8 h (not_before {not_before})"
    );

    // Audited: the sign-in, then the certificate with its serial and key.
    let signed = s.auth_records("auth.sign_in");
    assert_eq!(signed.len(), 1, "{signed:?}");
    assert_eq!(
        record_field(&signed[0], "subject"),
        Some(&json!("spiffe://loggate.local/user/alice"))
    );
    assert_eq!(
        record_field(&signed[0], "groups"),
        Some(&json!(["sre", "payments"]))
    );
    let issued = s.auth_records("auth.certificate_issued");
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(
        record_field(&issued[0], "not_after_ms").and_then(Value::as_i64),
        Some(not_after * 1000)
    );
    assert_eq!(
        record_field(&issued[0], "key_sha256"),
        record_field(&signed[0], "key_sha256")
    );
    assert_eq!(signed[0]["auth_protocol"], json!("OpenID"));

    // The next command needs no flags: a grant to alice (bound to the key just certified)
    // and a read through the agent with the signed-in certificate.
    let path = s.log_dir.join("app.log").display().to_string();
    s.cluster.grant("alice", "web-1", &path, "10m")?;
    let out = s
        .person(&["logs", "cat", "--host", "web-1", "--agent-addr"])
        .arg(s.cluster.agent_addr("web-1"))
        .arg(&path)
        .output()?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "hello from web-1\n");

    // logout deletes the key and the certificate; the next command says to sign in.
    let out = s.person(&["logout"]).output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(!dir.join("user.key").exists() && !dir.join("user.crt").exists());
    let out = s.person(&["whoami"]).output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("run `loggate login`"),
        "{}",
        text(&out).1
    );
    Ok(())
}

#[test]
fn device_flow_login_gives_a_certificate_for_the_person_who_approved_it() -> anyhow::Result<()> {
    let s = SignInSetup::start(&[], "allow_unbound_device_tokens = true")?;
    let mut login = LoginRun::spawn(s.login_cmd(&["--device"]))?;
    let line = login.line(|l| l.contains("enter the code "))?;
    let code = line
        .rsplit("enter the code ")
        .next()
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    assert_eq!(code.len(), 9, "{line}");
    s.idp.browser()?.approve_device(&code, "bob")?;
    let (exit, stderr) = login.finish()?;
    assert_eq!(exit, 0, "{stderr}");
    let (uris, _, _) = certificate_facts(&s.config_dir().join("user.crt"))?;
    assert_eq!(uris, ["spiffe://loggate.local/user/bob"]);
    assert_eq!(s.auth_records("auth.certificate_issued").len(), 1);
    Ok(())
}

#[test]
fn device_flow_login_is_refused_nonce_unless_unbound_device_tokens_are_allowed(
) -> anyhow::Result<()> {
    let s = SignInSetup::start(&[], "")?;
    let mut login = LoginRun::spawn(s.login_cmd(&["--device"]))?;
    let line = login.line(|l| l.contains("enter the code "))?;
    let code = line
        .rsplit("enter the code ")
        .next()
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    s.idp.browser()?.approve_device(&code, "bob")?;
    let (exit, stderr) = login.finish()?;
    assert_ne!(exit, 0, "{stderr}");
    assert!(stderr.contains("(nonce)"), "{stderr}");
    assert!(!s.config_dir().join("user.crt").exists());
    assert!(s.auth_records("auth.certificate_issued").is_empty());
    let refused = s.auth_records("auth.sign_in_refused");
    assert_eq!(
        refused.last().and_then(|r| record_field(r, "reason_code")),
        Some(&json!("nonce")),
        "{refused:?}"
    );
    Ok(())
}

#[test]
fn sign_in_has_its_own_attempt_budget_and_its_refused_attempts_are_audited_as_sign_ins(
) -> anyhow::Result<()> {
    let mut s = SignInSetup::start(&[], "attempts_per_minute = 3")?;
    let key = p256_key();
    let nonce = nonce_for(&key.spki);
    let mut exhausted = 0;
    for _ in 0..5 {
        let status = s
            .sign_in_rpc("not-a-token", &nonce, &key.csr)
            .expect_err("garbage");
        if status.code() == tonic::Code::ResourceExhausted {
            exhausted += 1;
        }
    }
    assert_eq!(exhausted, 2, "sign-in's own budget is 3 a minute");
    assert_eq!(s.auth_records("auth.sign_in_refused").len(), 3);
    // Enrolment from the same address is still admitted: checked, and refused for its token.
    let status =
        s.rt.block_on(async {
            let channel = s
                .cluster
                .anonymous_channel(s.sign_in)
                .await
                .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
            pb::enrolment_client::EnrolmentClient::new(channel)
                .enrol(pb::EnrolRequest {
                    token: "lgj_00".to_string(),
                    agent_id: "web-9".to_string(),
                    csr_der: key.csr.clone(),
                })
                .await
        })
        .expect_err("an unknown join token");
    assert_ne!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // At shutdown the two attempts over the budget are summarised as a sign-in refusal.
    s.cluster.stop_controller();
    let summaries: Vec<Value> = s
        .auth_records("auth.sign_in_refused")
        .into_iter()
        .filter(|r| record_field(r, "reason_code") == Some(&json!("rate_limited")))
        .collect();
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let reason = record_field(&summaries[0], "reason")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(reason.starts_with("2 sign-in attempts"), "{reason}");
    let enrol_summaries = s
        .cluster
        .controller_audit()
        .into_iter()
        .filter(|r| {
            event_name(r) == Some("agent.enrol_refused")
                && record_field(r, "reason_code") == Some(&json!("rate_limited"))
        })
        .count();
    assert_eq!(
        enrol_summaries, 0,
        "sign-ins are not summarised as enrolments"
    );
    Ok(())
}

#[test]
fn an_expired_sign_in_says_run_loggate_login_instead_of_a_tls_error() -> anyhow::Result<()> {
    let s = SignInSetup::start(&[], "")?;
    let mut login = LoginRun::spawn(s.login_cmd(&[]))?;
    let url = login.line(|l| l.starts_with(&format!("{}/auth?", s.idp.issuer)))?;
    let browser = s.idp.browser()?;
    browser.deliver(&browser.sign_in(&url, "alice")?)?;
    let (code, stderr) = login.finish()?;
    assert_eq!(code, 0, "{stderr}");
    // The signed-in certificate replaced by one of the same CA that ended a minute ago.
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(s.cluster.dir.join("pki/ca.key"))?)?;
    let ca = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(s.cluster.dir.join("pki/ca.crt"))?,
        ca_key,
    )?;
    let user_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(s.config_dir().join("user.key"))?)?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://loggate.local/user/alice".try_into()?,
    )];
    let ended = SystemTime::now() - Duration::from_secs(60);
    params.not_before = (ended - Duration::from_secs(3600)).into();
    params.not_after = ended.into();
    let expired = params.signed_by(&user_key, &ca)?;
    std::fs::write(s.config_dir().join("user.crt"), expired.pem())?;

    let out = s.person(&["whoami"]).output()?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("your sign-in expired at ") && stderr.contains(": run `loggate login`"),
        "{stderr}"
    );
    assert!(!stderr.to_lowercase().contains("tls"), "{stderr}");
    Ok(())
}

#[test]
fn forged_expired_and_misbound_tokens_are_refused_each_with_its_audit_record() -> anyhow::Result<()>
{
    let s = SignInSetup::start(
        &[],
        "allow_unbound_device_tokens = true\nhosted_domain = \"example.com\"",
    )?;
    let issuer = s.idp.issuer.clone();
    let key = p256_key();
    let nonce = nonce_for(&key.spki);
    let claims = |f: &dyn Fn(&mut Value)| {
        let mut c = alice_claims(&issuer, &nonce);
        f(&mut c);
        c
    };

    // The forging is sound: the provider's own signature over alice's claims is accepted.
    let good = s.idp.sign("RS256", &claims(&|_| {}), false)?;
    let issued = s.sign_in_rpc(&good, &nonce, &key.csr)?;
    assert_eq!(issued.subject, "spiffe://loggate.local/user/alice");
    let es = s.idp.sign("ES256", &claims(&|_| {}), false)?;
    s.sign_in_rpc(&es, &nonce, &key.csr)?;
    // A token carrying 300 groups (about 20 KiB, as IdPs that put groups in the ID token
    // make) fits the sign-in port's request limit.
    let many_groups: Vec<String> = (0..300)
        .map(|i| format!("team-{i:03}-with-a-long-descriptive-group-name-at-the-idp"))
        .collect();
    let big = s.idp.sign(
        "RS256",
        &claims(&|c| c["groups"] = json!(many_groups)),
        false,
    )?;
    assert!(big.len() > 20 * 1024, "{}", big.len());
    s.sign_in_rpc(&big, &nonce, &key.csr)?;

    let other_key = p256_key();
    let weak_dir = tempfile::tempdir()?;
    let weak = rsa1024_key(weak_dir.path())?;
    let weak_nonce = nonce_for(&weak.spki);
    // One character in the middle of the signature changed (the last one may only carry
    // padding bits).
    let mut bad_signature = good.clone().into_bytes();
    let middle = good.rfind('.').unwrap_or(0) + (good.len() - good.rfind('.').unwrap_or(0)) / 2;
    bad_signature[middle] = if bad_signature[middle] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let bad_signature = String::from_utf8(bad_signature)?;
    // (name, token, nonce sent, request, expected reason_code)
    let cases: Vec<(&str, String, String, Vec<u8>, &str)> = vec![
        (
            "another issuer",
            s.idp.sign(
                "RS256",
                &claims(&|c| c["iss"] = json!("http://127.0.0.1:1")),
                false,
            )?,
            nonce.clone(),
            key.csr.clone(),
            "issuer",
        ),
        (
            "another audience",
            s.idp.sign(
                "RS256",
                &claims(&|c| c["aud"] = json!("another-app")),
                false,
            )?,
            nonce.clone(),
            key.csr.clone(),
            "audience",
        ),
        (
            "another authorized party",
            s.idp.sign(
                "RS256",
                &claims(&|c| c["azp"] = json!("another-app")),
                false,
            )?,
            nonce.clone(),
            key.csr.clone(),
            "audience",
        ),
        (
            "expired",
            s.idp.sign(
                "RS256",
                &claims(&|c| {
                    c["exp"] = json!(now_s() - 120);
                    c["iat"] = json!(now_s() - 720);
                }),
                false,
            )?,
            nonce.clone(),
            key.csr.clone(),
            "expired",
        ),
        (
            "issued in the future",
            s.idp.sign(
                "RS256",
                &claims(&|c| {
                    c["iat"] = json!(now_s() + 600);
                    c["exp"] = json!(now_s() + 1200);
                }),
                false,
            )?,
            nonce.clone(),
            key.csr.clone(),
            "not_yet_valid",
        ),
        (
            "bad signature",
            bad_signature,
            nonce.clone(),
            key.csr.clone(),
            "signature",
        ),
        (
            "alg none",
            s.idp.sign("none", &claims(&|_| {}), false)?,
            nonce.clone(),
            key.csr.clone(),
            "algorithm",
        ),
        (
            "HS256 keyed with the public key",
            s.idp.sign("HS256", &claims(&|_| {}), false)?,
            nonce.clone(),
            key.csr.clone(),
            "algorithm",
        ),
        (
            "a nonce other than the one sent",
            s.idp.sign(
                "RS256",
                &claims(&|c| c["nonce"] = json!(nonce_for(&key.spki))),
                false,
            )?,
            nonce.clone(),
            key.csr.clone(),
            "nonce",
        ),
        (
            "no nonce, issued 10 minutes ago",
            s.idp.sign(
                "RS256",
                &claims(&|c| {
                    c.as_object_mut().map(|o| o.remove("nonce"));
                    c["iat"] = json!(now_s() - 600);
                }),
                false,
            )?,
            nonce.clone(),
            key.csr.clone(),
            "nonce",
        ),
        (
            "a token replayed with another key",
            good.clone(),
            nonce.clone(),
            other_key.csr.clone(),
            "nonce",
        ),
        (
            "email not verified",
            s.idp.sign(
                "RS256",
                &claims(&|c| c["email_verified"] = json!(false)),
                false,
            )?,
            nonce.clone(),
            key.csr.clone(),
            "email_not_verified",
        ),
        (
            "a domain not allowed",
            s.idp.sign(
                "RS256",
                &claims(&|c| c["email"] = json!("alice@elsewhere.test")),
                false,
            )?,
            nonce.clone(),
            key.csr.clone(),
            "domain_not_allowed",
        ),
        (
            "no email",
            s.idp.sign(
                "RS256",
                &claims(&|c| {
                    c.as_object_mut().map(|o| o.remove("email"));
                }),
                false,
            )?,
            nonce.clone(),
            key.csr.clone(),
            "missing_claim",
        ),
        (
            "a name that is no loggate name",
            s.idp.sign(
                "RS256",
                &claims(&|c| c["email"] = json!("Alice.Smith@example.com")),
                false,
            )?,
            nonce.clone(),
            key.csr.clone(),
            "invalid_username",
        ),
        (
            "a weak key in the request",
            s.idp.sign(
                "RS256",
                &claims(&|c| c["nonce"] = json!(weak_nonce.clone())),
                false,
            )?,
            weak_nonce.clone(),
            weak.csr.clone(),
            "weak_key",
        ),
        (
            "a verified e-mail in the domain from an account outside the Workspace (no hd)",
            s.idp.sign(
                "RS256",
                &claims(&|c| {
                    c.as_object_mut().map(|o| o.remove("hd"));
                }),
                false,
            )?,
            nonce.clone(),
            key.csr.clone(),
            "domain_not_allowed",
        ),
        (
            "an account of another hosted domain",
            s.idp
                .sign("RS256", &claims(&|c| c["hd"] = json!("example.org")), false)?,
            nonce.clone(),
            key.csr.clone(),
            "domain_not_allowed",
        ),
        (
            "alice's e-mail under another IdP account (a re-created or recycled name)",
            s.idp.sign(
                "RS256",
                &claims(&|c| c["sub"] = json!("someone-else")),
                false,
            )?,
            nonce.clone(),
            key.csr.clone(),
            "subject_changed",
        ),
    ];
    for (name, token, sent_nonce, csr, reason) in &cases {
        let before = s.auth_records("auth.sign_in_refused").len();
        let status = s.sign_in_rpc(token, sent_nonce, csr).expect_err(name);
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{name}: {status:?}"
        );
        assert!(
            status.message().contains(&format!("({reason})")),
            "{name}: {}",
            status.message()
        );
        let refused = s.auth_records("auth.sign_in_refused");
        assert_eq!(refused.len(), before + 1, "{name}: one record");
        let record = &refused[before];
        assert_eq!(
            record_field(record, "reason_code"),
            Some(&json!(reason)),
            "{name}: {record}"
        );
        assert_eq!(record["status"], json!("Failure"), "{name}");
        assert!(
            !record.to_string().contains(token.as_str()),
            "{name}: the token is recorded"
        );
    }
    // A token without a nonce (what the device flow gives) is taken fresh and once: a copy
    // of it, with another key, is refused.
    let unbound = s.idp.sign(
        "RS256",
        &claims(&|c| {
            c.as_object_mut().map(|o| o.remove("nonce"));
        }),
        false,
    )?;
    s.sign_in_rpc(&unbound, &nonce, &key.csr)?;
    let other_nonce = nonce_for(&other_key.spki);
    let status = s
        .sign_in_rpc(&unbound, &other_nonce, &other_key.csr)
        .expect_err("replayed");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let refused = s.auth_records("auth.sign_in_refused");
    assert_eq!(
        refused.last().and_then(|r| record_field(r, "reason_code")),
        Some(&json!("replayed"))
    );
    // The same token with the last character of its signature changed in its unused
    // padding bits (it decodes to the same signature, so it still verifies) is the same
    // token: refused as a replay too.
    let variant = with_other_padding_bits(&unbound);
    assert_ne!(variant, unbound);
    let third_key = p256_key();
    let status = s
        .sign_in_rpc(&variant, &nonce_for(&third_key.spki), &third_key.csr)
        .expect_err("a re-encoded copy is a replay");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let refused = s.auth_records("auth.sign_in_refused");
    assert_eq!(
        refused.last().and_then(|r| record_field(r, "reason_code")),
        Some(&json!("replayed"))
    );
    // Only the four good tokens got certificates.
    assert_eq!(s.auth_records("auth.certificate_issued").len(), 4);
    // Every record conforms to OCSF 1.8.0.
    let schema = loggate_ocsf_validate::Schema::official()?;
    for name in [
        "auth.sign_in",
        "auth.sign_in_refused",
        "auth.certificate_issued",
    ] {
        for record in s.auth_records(name) {
            let report = schema.validate(&record);
            assert!(report.is_conformant(), "{report}\n{record}");
        }
    }
    Ok(())
}

#[test]
fn a_key_the_idp_dropped_stops_verifying_once_the_key_set_is_older_than_jwks_max_age(
) -> anyhow::Result<()> {
    let s = SignInSetup::start(&[], "jwks_max_age = \"2s\"")?;
    let issuer = s.idp.issuer.clone();
    let sign_in = || -> anyhow::Result<Result<pb::SignInResponse, tonic::Status>> {
        let key = p256_key();
        let nonce = nonce_for(&key.spki);
        let token = s.idp.sign("RS256", &alice_claims(&issuer, &nonce), false)?;
        Ok(s.sign_in_rpc(&token, &nonce, &key.csr))
    };
    // The key set [a] is cached; then the IdP withdraws every key (a compromise).
    sign_in()??;
    s.idp.set_jwks("empty")?;
    std::thread::sleep(Duration::from_millis(2200));
    let status = sign_in()?.expect_err("a dropped key");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let refused = s.auth_records("auth.sign_in_refused");
    assert_eq!(
        refused.last().and_then(|r| record_field(r, "reason_code")),
        Some(&json!("unknown_key"))
    );
    Ok(())
}

#[test]
fn rotated_keys_are_fetched_for_an_unknown_kid_and_with_the_jwks_down_only_known_keys_verify(
) -> anyhow::Result<()> {
    let s = SignInSetup::start(&[], "")?;
    let issuer = s.idp.issuer.clone();
    let sign_in = |alg: &str, unknown: bool| -> anyhow::Result<(String, String, Vec<u8>)> {
        let key = p256_key();
        let nonce = nonce_for(&key.spki);
        let token = s.idp.sign(alg, &alice_claims(&issuer, &nonce), unknown)?;
        Ok((token, nonce, key.csr))
    };
    // First sign-in: discovery and the key set [a].
    let (t, n, c) = sign_in("RS256", false)?;
    s.sign_in_rpc(&t, &n, &c)?;
    // The IdP rotates to b: the unknown kid makes the controller fetch the keys again.
    s.idp.rotate()?;
    std::thread::sleep(Duration::from_millis(1100));
    let (t, n, c) = sign_in("RS256", false)?;
    s.sign_in_rpc(&t, &n, &c)?;
    // The JWKS endpoint goes down: a token with a known key (b) still verifies...
    s.idp.set_jwks("down")?;
    std::thread::sleep(Duration::from_millis(1100));
    let (t, n, c) = sign_in("ES256", false)?;
    s.sign_in_rpc(&t, &n, &c)?;
    // ...and one with a key the controller has never seen is refused.
    let (t, n, c) = sign_in("RS256", true)?;
    let status = s.sign_in_rpc(&t, &n, &c).expect_err("unknown kid");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let refused = s.auth_records("auth.sign_in_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        record_field(&refused[0], "reason_code"),
        Some(&json!("unknown_key"))
    );
    // A burst of unknown kids costs the IdP at most one fetch per interval: all refused fast.
    let started = Instant::now();
    for _ in 0..5 {
        let (t, n, c) = sign_in("RS256", true)?;
        assert!(s.sign_in_rpc(&t, &n, &c).is_err());
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(s.auth_records("auth.certificate_issued").len(), 3);
    Ok(())
}

/// The policy of the IdP-group tests: the IdP group `payments` (alice's, not bob's) holds the
/// role over the agent's logs.
const IDP_GROUP_POLICY: &str = r#"
[groups]
payments = ["idp:payments"]

[[roles]]
name = "payments-logs"
groups = ["payments"]
hosts = ["web-1"]
paths = ["LOG_DIR/*.log"]
max_ttl = "1h"
approval = "auto"
"#;

#[test]
fn an_idp_group_named_by_the_policy_gives_its_role_to_the_people_the_idp_puts_in_it(
) -> anyhow::Result<()> {
    let s = SignInSetup::start_with_policy(&[], "", Some(IDP_GROUP_POLICY))?;
    let path = s.log_dir.join("app.log").display().to_string();
    let request = |s: &SignInSetup| {
        s.person(&[
            "grant", "request", "--host", "web-1", "--path", &path, "--ttl", "10m", "--reason",
            "INC-7",
        ])
        .output()
    };
    // alice: the IdP says payments (and sre); the role is hers, and she reads.
    s.login_as("alice")?;
    let out = request(&s)?;
    assert!(out.status.success(), "{}", text(&out).1);
    let out = s
        .person(&["logs", "cat", "--host", "web-1", "--agent-addr"])
        .arg(s.cluster.agent_addr("web-1"))
        .arg(&path)
        .output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(text(&out).0, "hello from web-1\n");
    // bob: the IdP says dev; no role, exit 3, the role named with its reason.
    s.person(&["logout"]).output()?;
    s.login_as("bob")?;
    let out = request(&s)?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(
        text(&out)
            .1
            .contains("role payments-logs you are not among its users or groups"),
        "{}",
        text(&out).1
    );
    Ok(())
}

#[test]
fn a_token_without_the_groups_claim_is_refused_when_the_policy_names_idp_groups(
) -> anyhow::Result<()> {
    let s = SignInSetup::start_with_policy(&[], "", Some(IDP_GROUP_POLICY))?;
    let issuer = s.idp.issuer.clone();
    let key = p256_key();
    let nonce = nonce_for(&key.spki);
    // With the claim (even an empty list): signed in.
    let mut claims = alice_claims(&issuer, &nonce);
    claims["groups"] = json!([]);
    s.sign_in_rpc(&s.idp.sign("RS256", &claims, false)?, &nonce, &key.csr)?;
    // Without it: refused missing_claim, audited, no certificate.
    let key = p256_key();
    let nonce = nonce_for(&key.spki);
    let mut claims = alice_claims(&issuer, &nonce);
    claims.as_object_mut().map(|c| c.remove("groups"));
    let refused = s
        .sign_in_rpc(&s.idp.sign("RS256", &claims, false)?, &nonce, &key.csr)
        .expect_err("a token without groups");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("no \"groups\" claim"),
        "{refused:?}"
    );
    let records = s.auth_records("auth.sign_in_refused");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        record_field(&records[0], "reason_code"),
        Some(&json!("missing_claim"))
    );
    assert_eq!(s.auth_records("auth.certificate_issued").len(), 1);
    Ok(())
}

/// Waits (at most `timeout`) for `child` to end.
fn wait_exit(child: &mut Child, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if child.try_wait()?.is_some() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    anyhow::bail!("the process did not end within {timeout:?}")
}

/// Copies the files of directory `from` into `to` (a snapshot of a person's configuration).
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

#[test]
fn a_locked_user_is_cut_off_everywhere_and_signs_in_again_only_after_an_unlock(
) -> anyhow::Result<()> {
    let policy = IDP_GROUP_POLICY
        .replace(
            "payments = [\"idp:payments\"]",
            "payments = [\"idp:payments\"]\nsre = [\"bob\"]",
        )
        .replace(
            "approval = \"auto\"",
            "approval = \"approvers\"\napprovers = 1\napprover_groups = [\"sre\"]",
        );
    let s = SignInSetup::start_with_policy(&[], "", Some(&policy))?;
    let path = s.log_dir.join("app.log").display().to_string();
    s.login_as("alice")?;
    // A copy of alice's signed-in files: the stolen laptop.
    let stolen = s.home.path().join("stolen");
    copy_dir(&s.config_dir(), &stolen)?;
    let config = std::fs::read_to_string(stolen.join("config.toml"))?;
    std::fs::write(
        stolen.join("config.toml"),
        config.replace(
            &s.config_dir().display().to_string(),
            &stolen.display().to_string(),
        ),
    )?;
    // A pending request of hers, and a grant under which she follows the log.
    let out = s
        .person(&[
            "grant", "request", "--host", "web-1", "--path", &path, "--ttl", "10m", "--reason",
            "INC-9",
        ])
        .output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("pending"), "{}", text(&out).0);
    let grant = s.cluster.grant("alice", "web-1", &path, "30m")?;
    let mut follow = s
        .person(&[
            "logs",
            "tail",
            "--follow",
            "--host",
            "web-1",
            "--agent-addr",
        ])
        .arg(s.cluster.agent_addr("web-1"))
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    s.cluster
        .wait_for_audit("web-1", Duration::from_secs(10), |e| {
            e["event"] == "read.allowed"
        })?;

    // Locked: the live follow is cut, the request cancelled, the grant revoked.
    let out = s.cluster.run_cli(
        "admin",
        &["user", "lock", "alice", "--reason", "laptop stolen, INC-9"],
    )?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(
        text(&out).0.contains("1 grant(s) revoked")
            && text(&out).0.contains("1 pending request(s) cancelled"),
        "{}",
        text(&out).0
    );
    let took = wait_exit(&mut follow, Duration::from_secs(10))?;
    let out = follow.wait_with_output()?;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out).1);
    assert!(
        text(&out).1.contains(&format!("grant {grant} was revoked")),
        "{}",
        text(&out).1
    );
    assert!(took <= Duration::from_secs(3), "cut after {took:?}");
    // The next read is refused by the agent (no grant), the controller refuses her certificate.
    let out = s
        .person(&["logs", "cat", "--host", "web-1", "--agent-addr"])
        .arg(s.cluster.agent_addr("web-1"))
        .arg(&path)
        .output()?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    let out = s.person(&["grant", "list"]).output()?;
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("loggate user lock"),
        "{}",
        text(&out).1
    );
    // No grant can be issued for her (it would be bound to the stolen laptop's key).
    let issued = s.cluster.issue_grant("alice", "web-1", &path, "30m");
    assert!(
        issued
            .as_ref()
            .is_err_and(|e| e.to_string().contains("no certificate key is known")),
        "{issued:?}"
    );
    // Her sign-in is refused while locked, and audited.
    let (code, stderr) = s.try_login_as("alice")?;
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("locked out"), "{stderr}");
    let refused = s.auth_records("auth.sign_in_refused");
    assert_eq!(
        refused.last().and_then(|r| record_field(r, "reason_code")),
        Some(&json!("locked")),
        "{refused:?}"
    );
    // Audited: the lock (Account Change, Lock), the cancellation and the revocation.
    let audit = s.cluster.controller_audit();
    let locked: Vec<&Value> = audit
        .iter()
        .filter(|r| event_name(r) == Some("user.locked"))
        .collect();
    assert_eq!(locked.len(), 1, "{locked:?}");
    assert_eq!(locked[0]["class_uid"], json!(3001));
    assert_eq!(locked[0]["activity_id"], json!(9));
    assert!(audit
        .iter()
        .any(|r| event_name(r) == Some("access.cancelled")));
    assert!(audit.iter().any(|r| event_name(r) == Some("grant.revoked")
        && record_field(r, "grant_id") == Some(&json!(grant))));
    // The admin's list says so, with her IdP groups.
    let out = s
        .cluster
        .run_cli("admin", &["user", "list", "--output", "json"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    let alice: Value = text(&out)
        .0
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|u| u["name"] == "alice")
        .ok_or_else(|| anyhow::anyhow!("alice not listed: {}", text(&out).0))?;
    assert_eq!(alice["locked"], json!(true));
    assert_eq!(alice["groups"], json!(["sre", "payments"]));
    assert!(alice["last_sign_in"].is_i64() && alice["cert_not_after"].is_i64());

    // Unlocked: she signs in again and is served; the stolen certificate stays refused.
    let out = s.cluster.run_cli(
        "admin",
        &["user", "unlock", "alice", "--reason", "new laptop"],
    )?;
    assert!(out.status.success(), "{}", text(&out).1);
    s.login_as("alice")?;
    let out = s.person(&["grant", "list"]).output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    let out = Command::new(s.cluster.bins.join("loggate"))
        .args(["grant", "list"])
        .env("HOME", s.home.path())
        .env("LOGGATE_CONFIG_DIR", &stolen)
        .env_remove("LOGGATE_CONFIG")
        .stdin(Stdio::null())
        .output()?;
    assert!(!out.status.success(), "the stolen certificate still works");
    assert!(text(&out).1.contains("revoked"), "{}", text(&out).1);
    assert_eq!(
        s.auth_records("auth.sign_in").len(),
        2,
        "signed in before the lock and after the unlock"
    );
    Ok(())
}

#[test]
fn a_step_up_role_needs_a_recent_sign_in_and_multi_factor_where_the_idp_reports_it(
) -> anyhow::Result<()> {
    let policy = r#"
[groups]
payments = ["idp:payments"]

[[roles]]
name = "recent"
groups = ["payments"]
hosts = ["web-1"]
paths = ["LOG_DIR/*.log"]
max_ttl = "1h"
approval = "auto"
step_up = { max_age = "5s" }

[[roles]]
name = "raw-mfa"
groups = ["payments"]
hosts = ["web-1"]
paths = ["LOG_DIR/*.log"]
max_ttl = "1h"
redaction = ["raw"]
approval = "auto"
step_up = { mfa = true }
"#;
    let s = SignInSetup::start_with_policy(&[], "", Some(policy))?;
    let path = s.log_dir.join("app.log").display().to_string();
    let request = |extra: &[&str]| {
        let mut args = vec![
            "grant", "request", "--host", "web-1", "--path", &path, "--ttl", "10m", "--reason",
            "INC-8",
        ];
        args.extend_from_slice(extra);
        s.person(&args).output()
    };
    s.login_as("alice")?;
    let out = request(&[])?;
    assert!(out.status.success(), "just signed in: {}", text(&out).1);
    // The provider's password login reports amr ["pwd"]: not multi-factor.
    let out = request(&["--redaction", "raw"])?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(
        text(&out)
            .1
            .contains("role raw-mfa needs multi-factor authentication"),
        "{}",
        text(&out).1
    );
    // Older than max_age: refused with the way out; a fresh sign-in gives it again.
    std::thread::sleep(Duration::from_secs(6));
    let out = request(&[])?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("run `loggate login --fresh`"),
        "{}",
        text(&out).1
    );
    let (code, stderr) = {
        let mut login = LoginRun::spawn(s.login_cmd(&["--fresh"]))?;
        let url = login.line(|l| l.starts_with(&format!("{}/auth?", s.idp.issuer)))?;
        assert!(url.contains("prompt=login"), "{url}");
        // max_age obliges the IdP to send auth_time, which the rule is judged on.
        assert!(url.contains("max_age=0"), "{url}");
        let browser = s.idp.browser()?;
        let redirect = browser.sign_in(&url, "alice")?;
        browser.deliver(&redirect)?;
        login.finish()?
    };
    assert_eq!(code, 0, "{stderr}");
    let out = request(&[])?;
    assert!(
        out.status.success(),
        "after login --fresh: {}",
        text(&out).1
    );
    Ok(())
}

#[test]
fn approving_under_a_step_up_role_needs_the_approvers_recent_sign_in() -> anyhow::Result<()> {
    let policy = r#"
[groups]
payments = ["idp:payments"]
sre = ["bob"]

[[roles]]
name = "two-person"
groups = ["payments"]
hosts = ["web-1"]
paths = ["LOG_DIR/*.log"]
max_ttl = "1h"
approval = "approvers"
approvers = 1
approver_groups = ["sre"]
step_up = { max_age = "5s" }
"#;
    let s = SignInSetup::start_with_policy(&[], "", Some(policy))?;
    let path = s.log_dir.join("app.log").display().to_string();
    s.login_as("alice")?;
    let out = s
        .person(&[
            "grant", "request", "--host", "web-1", "--path", &path, "--ttl", "10m", "--reason",
            "INC-10", "--json",
        ])
        .output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    let request: Value = serde_json::from_str(text(&out).0.trim())?;
    let id = request["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(request["state"], "pending", "{request}");
    s.person(&["logout"]).output()?;
    s.login_as("bob")?;
    std::thread::sleep(Duration::from_secs(6));
    // bob's sign-in is older than the role's max_age: refused, audited, still pending.
    let out = s.person(&["grant", "approve", &id]).output()?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("run `loggate login --fresh`"),
        "{}",
        text(&out).1
    );
    let refused: Vec<Value> = s
        .cluster
        .controller_audit()
        .into_iter()
        .filter(|r| event_name(r) == Some("access.review_refused"))
        .collect();
    assert_eq!(
        refused.last().and_then(|r| record_field(r, "reason_code")),
        Some(&json!("step_up_required")),
        "{refused:?}"
    );
    // After a fresh sign-in the approval counts.
    s.login_as("bob")?;
    let out = s.person(&["grant", "approve", &id]).output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("approved: grant"), "{}", text(&out).0);
    Ok(())
}

/// Runs `grant request … --json` (`cmd`): the request's JSON.
fn request_json(mut cmd: Command) -> anyhow::Result<Value> {
    let out = cmd.output()?;
    anyhow::ensure!(out.status.success(), "grant request: {}", text(&out).1);
    Ok(serde_json::from_str(text(&out).0.trim())?)
}

#[test]
fn an_approval_never_picks_a_role_whose_step_up_the_requester_did_not_meet_when_asking(
) -> anyhow::Result<()> {
    // "mfa-auto" would give the access at once, to a multi-factor sign-in only; the provider's
    // password login is not one, so alice's request waits under "two-person".
    let policy = r#"
[groups]
payments = ["idp:payments"]
sre = ["bob", "admin"]

[[roles]]
name = "mfa-auto"
groups = ["payments"]
hosts = ["web-1"]
paths = ["LOG_DIR/*.log"]
max_ttl = "1h"
approval = "auto"
step_up = { mfa = true }

[[roles]]
name = "two-person"
groups = ["payments"]
hosts = ["web-1"]
paths = ["LOG_DIR/*.log"]
max_ttl = "1h"
approval = "approvers"
approvers = 2
approver_groups = ["sre"]
"#;
    let s = SignInSetup::start_with_policy(&[], "", Some(policy))?;
    let path = s.log_dir.join("app.log").display().to_string();
    s.login_as("alice")?;
    let request = request_json(s.person(&[
        "grant", "request", "--host", "web-1", "--path", &path, "--ttl", "10m", "--reason",
        "INC-11", "--json",
    ]))?;
    assert_eq!(request["role"], "two-person", "{request}");
    assert_eq!(request["state"], "pending", "{request}");
    let id = request["id"].as_str().unwrap_or_default().to_string();
    // One approval: re-picked at the approval, "mfa-auto" would complete it with one
    // approval although alice never met its step-up. It stays pending under "two-person".
    let out = s
        .cluster
        .run_cli("bob", &["grant", "approve", &id, "--json"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    let after: Value = serde_json::from_str(text(&out).0.trim())?;
    assert_eq!(after["state"], "pending", "{after}");
    assert_eq!(after["role"], "two-person", "{after}");
    assert_eq!(after["grant_id"], "", "{after}");
    // The second approval completes it, under the role alice qualified for.
    let out = s
        .cluster
        .run_cli("admin", &["grant", "approve", &id, "--json"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    let after: Value = serde_json::from_str(text(&out).0.trim())?;
    assert_eq!(after["state"], "approved", "{after}");
    assert_eq!(after["role"], "two-person", "{after}");
    Ok(())
}

#[test]
fn a_step_up_added_by_a_policy_reload_holds_for_requests_already_pending() -> anyhow::Result<()> {
    let policy = |step_up: &str| {
        format!(
            r#"
[groups]
sre = ["bob"]

[[roles]]
name = "one-person"
users = ["alice"]
hosts = ["web-1"]
paths = ["LOG_DIR/*.log"]
max_ttl = "1h"
approval = "approvers"
approvers = 1
approver_groups = ["sre"]
{step_up}
"#
        )
    };
    let s = SignInSetup::start_with_policy(&[], "", Some(&policy("")))?;
    let path = s.log_dir.join("app.log").display().to_string();
    // alice asks with a development certificate: no sign-in at the IdP is behind it.
    let mut cmd = s.cluster.cli("alice");
    cmd.args([
        "grant", "request", "--host", "web-1", "--path", &path, "--ttl", "10m", "--reason",
        "INC-12", "--json",
    ]);
    let request = request_json(cmd)?;
    assert_eq!(request["state"], "pending", "{request}");
    let id = request["id"].as_str().unwrap_or_default().to_string();
    s.cluster.set_policy(
        &policy("step_up = { max_age = \"1h\" }")
            .replace("LOG_DIR", &s.log_dir.display().to_string()),
    )?;
    let out = s.cluster.run_cli("admin", &["policy", "reload"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    // bob's own sign-in meets the new rule; alice's request was never judged by it and
    // cannot be: refused, audited, still pending.
    s.login_as("bob")?;
    let out = s.person(&["grant", "approve", &id]).output()?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("no longer allows"),
        "{}",
        text(&out).1
    );
    assert!(
        text(&out).1.contains("run `loggate login --fresh`"),
        "{}",
        text(&out).1
    );
    let refused: Vec<Value> = s
        .cluster
        .controller_audit()
        .into_iter()
        .filter(|r| event_name(r) == Some("access.review_refused"))
        .collect();
    assert_eq!(
        refused.last().and_then(|r| record_field(r, "reason_code")),
        Some(&json!("policy_changed")),
        "{refused:?}"
    );
    let issued = s
        .cluster
        .controller_audit()
        .into_iter()
        .filter(|r| event_name(r) == Some("grant.issued"))
        .count();
    assert_eq!(issued, 0);
    Ok(())
}

#[test]
fn a_lock_whose_revocations_fail_halfway_says_so_records_no_revocation_and_finishes_when_run_again(
) -> anyhow::Result<()> {
    let s = SignInSetup::start(&[], "")?;
    let path = s.log_dir.join("*.log").display().to_string();
    let grant = s.cluster.issue_grant("alice", "web-1", &path, "1h")?;
    // The store refuses every revocation (a failing disk, a lost database connection).
    let db = rusqlite::Connection::open(s.cluster.dir.join("controller/state.db"))?;
    db.busy_timeout(Duration::from_secs(10))?;
    db.execute_batch(
        "CREATE TRIGGER refuse_revoke BEFORE UPDATE OF revoked_at ON grants
         BEGIN SELECT RAISE(ABORT, 'injected: the store refuses revocations'); END;",
    )?;
    let lock = || {
        s.cluster
            .run_cli("admin", &["user", "lock", "alice", "--reason", "INC-13"])
    };
    let out = lock()?;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out).1);
    assert!(
        text(&out)
            .1
            .contains("alice is locked; revocation incomplete"),
        "{}",
        text(&out).1
    );
    assert!(
        text(&out).1.contains("run `loggate user lock alice"),
        "{}",
        text(&out).1
    );
    let revoked = |s: &SignInSetup| {
        s.cluster
            .controller_audit()
            .into_iter()
            .filter(|r| event_name(r) == Some("grant.revoked"))
            .count()
    };
    // No record claims the revocation the store did not take.
    assert_eq!(revoked(&s), 0);
    // Run again once the store works: finished, each revocation recorded once.
    db.execute_batch("DROP TRIGGER refuse_revoke;")?;
    let out = lock()?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(revoked(&s), 1);
    let records: Vec<Value> = s
        .cluster
        .controller_audit()
        .into_iter()
        .filter(|r| event_name(r) == Some("grant.revoked"))
        .collect();
    assert_eq!(
        record_field(&records[0], "grant_id"),
        Some(&json!(grant)),
        "{records:?}"
    );
    Ok(())
}

/// `loggate login --fresh` as `who` (code flow, `prompt=login` and `max_age=0` at the IdP).
fn fresh_login_as(s: &SignInSetup, who: &str) -> anyhow::Result<()> {
    let mut login = LoginRun::spawn(s.login_cmd(&["--fresh"]))?;
    let url = login.line(|l| l.starts_with(&format!("{}/auth?", s.idp.issuer)))?;
    let browser = s.idp.browser()?;
    let redirect = browser.sign_in(&url, who)?;
    browser.deliver(&redirect)?;
    let (code, stderr) = login.finish()?;
    anyhow::ensure!(code == 0, "login --fresh as {who}: exit {code}: {stderr}");
    Ok(())
}

#[test]
fn a_max_age_step_up_is_not_met_by_a_token_without_auth_time_and_is_after_login_fresh(
) -> anyhow::Result<()> {
    let policy = r#"
[groups]
payments = ["idp:payments"]

[[roles]]
name = "recent"
groups = ["payments"]
hosts = ["web-1"]
paths = ["LOG_DIR/*.log"]
max_ttl = "1h"
approval = "auto"
step_up = { max_age = "1h" }
"#;
    // The provider leaves auth_time out unless asked (max_age, prompt=login), like Google's
    // and Entra ID's by default.
    let s = SignInSetup::start_with_policy(&[("AUTH_TIME", "on_request")], "", Some(policy))?;
    let path = s.log_dir.join("app.log").display().to_string();
    let request = || {
        s.person(&[
            "grant", "request", "--host", "web-1", "--path", &path, "--ttl", "10m", "--reason",
            "INC-14",
        ])
        .output()
    };
    // A sign-in that just happened, but whose token does not say when the person
    // authenticated (an IdP session of any age answers it silently): not fresh.
    s.login_as("alice")?;
    let out = request()?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(
        text(&out)
            .1
            .contains("role recent needs a sign-in at the IdP within the last 1h"),
        "{}",
        text(&out).1
    );
    assert!(
        text(&out).1.contains("run `loggate login --fresh`"),
        "{}",
        text(&out).1
    );
    // --fresh asks with max_age=0, which obliges the IdP to send auth_time.
    fresh_login_as(&s, "alice")?;
    let out = request()?;
    assert!(
        out.status.success(),
        "after login --fresh: {}",
        text(&out).1
    );
    Ok(())
}

#[test]
fn admin_actions_need_the_admin_step_up_and_a_development_certificate_never_meets_it(
) -> anyhow::Result<()> {
    let policy = r#"
[settings]
admin_step_up = { max_age = "20s" }

[[roles]]
name = "someone"
users = ["alice"]
hosts = ["web-1"]
paths = ["LOG_DIR/*.log"]
max_ttl = "1h"
approval = "auto"
"#;
    let s = SignInSetup::start_with_policy(&[], "", Some(policy))?;
    let path = s.log_dir.join("app.log").display().to_string();
    let issue: Vec<&str> = vec![
        "grant",
        "issue",
        "--subject",
        "alice",
        "--host",
        "web-1",
        "--path",
        &path,
        "--ttl",
        "10m",
        "--reason",
        "INC-15",
    ];
    let refused_actions = |s: &SignInSetup| -> Vec<String> {
        s.cluster
            .controller_audit()
            .into_iter()
            .filter(|r| event_name(r) == Some("admin.step_up_refused"))
            .filter_map(|r| record_field(&r, "action").and_then(|a| a.as_str().map(String::from)))
            .collect()
    };
    // The harness's admin certificate comes from `pki init`: no sign-in is behind it, so
    // every action that changes who gets access is refused, each audited.
    let actions: [(&[&str], &str); 7] = [
        (issue.as_slice(), "grant_issue"),
        (&["user", "lock", "bob", "--reason", "INC-15"], "user_lock"),
        (
            &["user", "unlock", "bob", "--reason", "INC-15"],
            "user_unlock",
        ),
        (&["agent", "remove", "web-9"], "agent_remove"),
        (
            &["agent", "token", "create", "--labels", "env=prod"],
            "agent_token_create",
        ),
        (&["policy", "reload"], "policy_reload"),
        (
            &["access", "ack", "g-0123456789abcdef", "--comment", "INC-15"],
            "break_glass_ack",
        ),
    ];
    for (args, _) in &actions {
        let out = s.cluster.run_cli("admin", args)?;
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out).1);
        let err = text(&out).1;
        assert!(err.contains("step_up_required"), "{args:?}: {err}");
        assert!(
            err.contains("no sign-in with the IdP is behind your certificate"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("run `loggate login --fresh`"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        refused_actions(&s),
        actions
            .iter()
            .map(|(_, a)| a.to_string())
            .collect::<Vec<_>>()
    );
    // Read-only admin commands are not held to it; the refused lock changed nothing.
    let out = s.cluster.run_cli("admin", &["user", "list"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(!text(&out).0.contains("LOCKED"), "{}", text(&out).0);
    // An admin who just signed in at the IdP may; once the sign-in is older than max_age,
    // not, until `loggate login --fresh` (20 s: room for a slow debug build on busy cores).
    s.login_as("admin")?;
    let out = s.person(&issue).output()?;
    assert!(out.status.success(), "fresh admin: {}", text(&out).1);
    std::thread::sleep(Duration::from_secs(21));
    let out = s.person(&issue).output()?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(
        text(&out)
            .1
            .contains("an admin needs a sign-in at the IdP within the last 20s"),
        "{}",
        text(&out).1
    );
    fresh_login_as(&s, "admin")?;
    let out = s.person(&issue).output()?;
    assert!(
        out.status.success(),
        "after login --fresh: {}",
        text(&out).1
    );
    Ok(())
}

#[test]
fn an_approval_judges_the_step_up_with_the_sign_in_of_the_key_the_grant_binds_to(
) -> anyhow::Result<()> {
    let policy = r#"
[groups]
payments = ["idp:payments"]
sre = ["bob"]

[[roles]]
name = "recent"
groups = ["payments"]
hosts = ["web-1"]
paths = ["LOG_DIR/*.log"]
max_ttl = "1h"
approval = "approvers"
approvers = 1
approver_groups = ["sre"]
step_up = { max_age = "1h" }
"#;
    let s = SignInSetup::start_with_policy(&[("AUTH_TIME", "on_request")], "", Some(policy))?;
    let path = s.log_dir.join("app.log").display().to_string();
    let ask = || {
        request_json(s.person(&[
            "grant", "request", "--host", "web-1", "--path", &path, "--ttl", "10m", "--reason",
            "INC-16", "--json",
        ]))
    };
    // alice asks with a fresh sign-in (key K1): it meets the step-up, the request waits.
    fresh_login_as(&s, "alice")?;
    let request = ask()?;
    assert_eq!(request["state"], "pending", "{request}");
    let id = request["id"].as_str().unwrap_or_default().to_string();
    // A plain sign-in as alice (someone with her IdP session): a new key K2, whose token does
    // not say when she authenticated. The grant would bind to K2.
    s.person(&["logout"]).output()?;
    s.login_as("alice")?;
    s.person(&["logout"]).output()?;
    fresh_login_as(&s, "bob")?;
    let approve = || s.person(&["grant", "approve", &id]).output();
    let out = approve()?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("run `loggate login --fresh`"),
        "{}",
        text(&out).1
    );
    let audit = s.cluster.controller_audit();
    let refused: Vec<&Value> = audit
        .iter()
        .filter(|r| event_name(r) == Some("access.review_refused"))
        .collect();
    assert_eq!(
        refused.last().and_then(|r| record_field(r, "reason_code")),
        Some(&json!("policy_changed")),
        "{refused:?}"
    );
    assert!(!audit.iter().any(|r| event_name(r) == Some("grant.issued")));
    // Once the key the grant binds to has a sign-in that meets the step-up, it is approved.
    s.person(&["logout"]).output()?;
    fresh_login_as(&s, "alice")?;
    s.person(&["logout"]).output()?;
    fresh_login_as(&s, "bob")?;
    let out = approve()?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("approved: grant"), "{}", text(&out).0);
    Ok(())
}

#[test]
fn idp_groups_kept_with_a_pending_request_count_at_approval_only_while_the_idp_still_vouches(
) -> anyhow::Result<()> {
    let policy = r#"
[groups]
payments = ["idp:payments"]
sre = ["bob"]

[[roles]]
name = "payments"
groups = ["payments"]
hosts = ["web-1"]
paths = ["LOG_DIR/*.log"]
max_ttl = "1h"
approval = "approvers"
approvers = 1
approver_groups = ["sre"]
"#;
    let s = SignInSetup::start_with_policy(&[], "", Some(policy))?;
    let path = s.log_dir.join("app.log").display().to_string();
    let ask = || {
        request_json(s.person(&[
            "grant", "request", "--host", "web-1", "--path", &path, "--ttl", "10m", "--reason",
            "INC-17", "--json",
        ]))
    };
    s.login_as("alice")?;
    let first = ask()?;
    assert_eq!(first["state"], "pending", "{first}");
    let second = ask()?;
    let db = rusqlite::Connection::open(s.cluster.dir.join("controller/state.db"))?;
    db.busy_timeout(Duration::from_secs(10))?;
    // The certificate of the sign-in that vouched for `payments` has ended (as after its
    // cert_ttl): the IdP's word about her groups no longer counts.
    db.execute(
        "UPDATE oidc_users SET cert_not_after = 1 WHERE name = 'alice'",
        [],
    )?;
    let approve = |id: &Value| {
        s.cluster.run_cli(
            "bob",
            &["grant", "approve", id.as_str().unwrap_or_default()],
        )
    };
    let out = approve(&first["id"])?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("no longer allows"),
        "{}",
        text(&out).1
    );
    let refused: Vec<Value> = s
        .cluster
        .controller_audit()
        .into_iter()
        .filter(|r| event_name(r) == Some("access.review_refused"))
        .collect();
    assert_eq!(
        refused.last().and_then(|r| record_field(r, "reason_code")),
        Some(&json!("policy_changed")),
        "{refused:?}"
    );
    // A new sign-in in which the IdP still lists the group: it counts again.
    s.person(&["logout"]).output()?;
    s.login_as("alice")?;
    let out = approve(&second["id"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    Ok(())
}

#[test]
fn a_lock_that_fails_halfway_still_pushes_the_revocations_it_committed_to_the_agents(
) -> anyhow::Result<()> {
    let s = SignInSetup::start(&[], "")?;
    s.login_as("alice")?;
    let path = s.log_dir.join("*.log").display().to_string();
    let older = s.cluster.issue_grant("alice", "web-1", &path, "1h")?;
    let newer = s.cluster.issue_grant("alice", "web-1", &path, "1h")?;
    s.cluster.wait_for_grant("web-1", &newer)?;
    // The store refuses to revoke the older grant only; the newer is revoked first.
    let db = rusqlite::Connection::open(s.cluster.dir.join("controller/state.db"))?;
    db.busy_timeout(Duration::from_secs(10))?;
    db.execute_batch(&format!(
        "CREATE TRIGGER refuse_revoke BEFORE UPDATE OF revoked_at ON grants WHEN OLD.id = '{older}'
         BEGIN SELECT RAISE(ABORT, 'injected: the store refuses this revocation'); END;"
    ))?;
    let out = s
        .cluster
        .run_cli("admin", &["user", "lock", "alice", "--reason", "INC-18"])?;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out).1);
    assert!(
        text(&out)
            .1
            .contains("alice is locked; revocation incomplete"),
        "{}",
        text(&out).1
    );
    // The revocation that committed reaches the agent, although the lock did not finish.
    s.cluster
        .wait_for_audit("web-1", Duration::from_secs(15), |e| {
            e["event"] == "grant.revoked" && e["grant_id"] == newer.as_str()
        })?;
    // The partly locked person is refused at the controller.
    let out = s.person(&["whoami"]).output()?;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out).0);
    // The re-run finishes and the agent learns the rest.
    db.execute_batch("DROP TRIGGER refuse_revoke;")?;
    let out = s
        .cluster
        .run_cli("admin", &["user", "lock", "alice", "--reason", "INC-18"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    s.cluster
        .wait_for_audit("web-1", Duration::from_secs(15), |e| {
            e["event"] == "grant.revoked" && e["grant_id"] == older.as_str()
        })?;
    Ok(())
}

#[test]
fn a_revocation_the_store_does_not_take_writes_no_grant_revoked_record() -> anyhow::Result<()> {
    let s = SignInSetup::start(&[], "")?;
    let path = s.log_dir.join("*.log").display().to_string();
    let grant = s.cluster.issue_grant("alice", "web-1", &path, "1h")?;
    // The store takes the grant's row but refuses the revocation's revision (as a revision
    // lock timing out would, after the row was written).
    let db = rusqlite::Connection::open(s.cluster.dir.join("controller/state.db"))?;
    db.busy_timeout(Duration::from_secs(10))?;
    db.execute_batch(
        "CREATE TRIGGER refuse_revision BEFORE INSERT ON revisions WHEN NEW.kind = 'revoke'
         BEGIN SELECT RAISE(ABORT, 'injected: no revision'); END;",
    )?;
    let revoked = |s: &SignInSetup| {
        s.cluster
            .controller_audit()
            .into_iter()
            .filter(|r| event_name(r) == Some("grant.revoked"))
            .count()
    };
    let out = s
        .cluster
        .run_cli("admin", &["grant", "revoke", &grant, "--reason", "INC-19"])?;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out).1);
    assert_eq!(revoked(&s), 0, "grant revoke");
    let out = s
        .cluster
        .run_cli("admin", &["user", "lock", "alice", "--reason", "INC-19"])?;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out).1);
    assert_eq!(revoked(&s), 0, "user lock");
    // Once the store takes it: one record, and a second revoke is refused without one.
    db.execute_batch("DROP TRIGGER refuse_revision;")?;
    let out = s
        .cluster
        .run_cli("admin", &["grant", "revoke", &grant, "--reason", "INC-19"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    let out = s
        .cluster
        .run_cli("admin", &["grant", "revoke", &grant, "--reason", "INC-19"])?;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out).1);
    assert!(text(&out).1.contains("already revoked"), "{}", text(&out).1);
    assert_eq!(revoked(&s), 1);
    Ok(())
}

#[test]
fn a_lock_whose_cancellations_fail_says_so_and_cancels_them_when_run_again() -> anyhow::Result<()> {
    let policy = r#"
[groups]
sre = ["bob"]

[[roles]]
name = "one-person"
users = ["alice"]
hosts = ["web-1"]
paths = ["LOG_DIR/*.log"]
max_ttl = "1h"
approval = "approvers"
approvers = 1
approver_groups = ["sre"]
"#;
    let s = SignInSetup::start_with_policy(&[], "", Some(policy))?;
    let path = s.log_dir.join("app.log").display().to_string();
    let mut cmd = s.cluster.cli("alice");
    cmd.args([
        "grant", "request", "--host", "web-1", "--path", &path, "--ttl", "10m", "--reason",
        "INC-20", "--json",
    ]);
    let request = request_json(cmd)?;
    assert_eq!(request["state"], "pending", "{request}");
    let db = rusqlite::Connection::open(s.cluster.dir.join("controller/state.db"))?;
    db.busy_timeout(Duration::from_secs(10))?;
    db.execute_batch(
        "CREATE TRIGGER refuse_end BEFORE UPDATE OF state ON requests
         BEGIN SELECT RAISE(ABORT, 'injected: the store refuses to end requests'); END;",
    )?;
    let lock = || {
        s.cluster
            .run_cli("admin", &["user", "lock", "alice", "--reason", "INC-20"])
    };
    let out = lock()?;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out).1);
    assert!(
        text(&out)
            .1
            .contains("alice is locked; revocation incomplete"),
        "{}",
        text(&out).1
    );
    db.execute_batch("DROP TRIGGER refuse_end;")?;
    let out = lock()?;
    assert!(out.status.success(), "{}", text(&out).1);
    let state: String = db.query_row(
        "SELECT state FROM requests WHERE id = ?1",
        [request["id"].as_str().unwrap_or_default()],
        |r| r.get(0),
    )?;
    assert_eq!(state, "cancelled");
    Ok(())
}

#[test]
fn a_step_up_added_by_a_policy_reload_is_met_by_the_sign_in_recorded_with_the_request(
) -> anyhow::Result<()> {
    let policy = |step_up: &str| {
        format!(
            r#"
[groups]
payments = ["idp:payments"]
sre = ["bob"]

[[roles]]
name = "one-person"
groups = ["payments"]
hosts = ["web-1"]
paths = ["LOG_DIR/*.log"]
max_ttl = "1h"
approval = "approvers"
approvers = 1
approver_groups = ["sre"]
{step_up}
"#
        )
    };
    let s = SignInSetup::start_with_policy(&[], "", Some(&policy("")))?;
    let path = s.log_dir.join("app.log").display().to_string();
    // alice asks just after signing in at the IdP: her sign-in's age and key are kept.
    s.login_as("alice")?;
    let request = request_json(s.person(&[
        "grant", "request", "--host", "web-1", "--path", &path, "--ttl", "10m", "--reason",
        "INC-21", "--json",
    ]))?;
    assert_eq!(request["state"], "pending", "{request}");
    let id = request["id"].as_str().unwrap_or_default().to_string();
    s.cluster.set_policy(
        &policy("step_up = { max_age = \"1h\" }")
            .replace("LOG_DIR", &s.log_dir.display().to_string()),
    )?;
    let out = s.cluster.run_cli("admin", &["policy", "reload"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    // The new rule is judged with what was recorded at the request, and it was met then.
    s.person(&["logout"]).output()?;
    s.login_as("bob")?;
    let out = s.person(&["grant", "approve", &id]).output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("approved: grant"), "{}", text(&out).0);
    Ok(())
}
