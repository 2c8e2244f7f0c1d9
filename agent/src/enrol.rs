//! `loggate-agent enrol`: a host without a certificate joins the fleet with a one-time join
//! token. Its key is made here and never leaves the host (mode 0600); the controller's CA signs
//! a certificate for `spiffe://<td>/agent/<id>` over the controller's pre-authentication port.
//!
//! The controller is authenticated before the token is sent: the CA in the server's chain
//! must have the public key pinned by `--ca-pin` (`sha256:` + SHA-256 of its
//! SubjectPublicKeyInfo, printed by `loggate pki pin` and `loggate pki init`), and the
//! controller's certificate must chain to it and name `spiffe://…/controller`
//! ([`loggate_core::tls::pinned_enrolment_endpoint`]). The answer is checked too: the
//! certificate is for our key and our id, and the CA handed back is the pinned one.
//!
//! The files go where the agent's configuration expects them: `[tls] cert`, `key` and `ca`,
//! and the first `grant_keys` file; each written to a temporary file and renamed into place,
//! so a failed enrolment leaves the previous files as they were.

use anyhow::{bail, ensure, Context};
use loggate_core::identity::{is_valid_name, Identity, Role};
use loggate_core::tls::{ca_pin, TlsFiles};
use loggate_proto::enrolment_client::EnrolmentClient;
use loggate_proto::EnrolRequest;
use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// `loggate-agent enrol`.
#[derive(clap::Args)]
pub struct EnrolArgs {
    /// The controller's enrolment address, "host:port" (its `[enrolment] listen`); repeat it
    /// for the replicas of one controller: they are tried in turn, from a random one, until one
    /// answers.
    #[arg(long = "controller", required = true)]
    pub controllers: Vec<String>,
    /// The join token from `loggate agent token create` (or set LOGGATE_JOIN_TOKEN, which keeps
    /// it out of the process list).
    #[arg(long, env = "LOGGATE_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The pin of the controller's CA, "sha256:HEX" (`loggate pki pin ca.crt`).
    #[arg(long)]
    pub ca_pin: String,
    /// This agent's id.
    #[arg(long)]
    pub id: String,
    /// The agent's configuration: its `[tls]` cert, key and ca and its first `grant_keys` file
    /// are written.
    #[arg(long, default_value = "/etc/loggate/agent.toml")]
    pub config: PathBuf,
}

/// Where the configuration wants the files (relative paths against its folder).
#[derive(serde::Deserialize)]
struct Places {
    id: Option<String>,
    trust_domain: Option<String>,
    #[serde(default)]
    grant_keys: Vec<PathBuf>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    tls: TlsFiles,
}

/// What the controller said at enrolment, kept in `<state_dir>/enrolment.json`: the agent's
/// labels are the token's (the controller's word), and they replace the configuration's
/// `labels` when the agent checks whom a grant covers (see `config.rs`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnrolmentRecord {
    pub agent_id: String,
    pub labels: Vec<String>,
    /// The certificate's serial (hex) and end (Unix seconds).
    pub serial: String,
    pub not_after_unix: i64,
    /// The controller's enrolment address it was issued by.
    pub controller: String,
}

impl EnrolmentRecord {
    pub const FILE: &'static str = "enrolment.json";

    /// The record in `state_dir`, `None` when the agent did not enrol (its certificate came
    /// from elsewhere).
    pub fn load(state_dir: &Path) -> anyhow::Result<Option<EnrolmentRecord>> {
        let path = state_dir.join(Self::FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is damaged; enrol again (loggate-agent enrol) to rewrite it",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        loggate_core::private_state::create_private_dir(state_dir, "agent state folder")?;
        write_replacing(
            &state_dir.join(Self::FILE),
            &serde_json::to_vec_pretty(self)?,
            0o600,
        )
    }
}

fn places(config: &Path) -> anyhow::Result<(TlsFiles, PathBuf, PathBuf, Places)> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read agent configuration {}", config.display()))?;
    let places: Places = toml::from_str(&text)
        .with_context(|| format!("invalid agent configuration {}", config.display()))?;
    let base = config.parent().unwrap_or(Path::new("."));
    let Some(grant_keys) = places.grant_keys.first() else {
        bail!(
            "{}: grant_keys names no file; name one where the controller's key is to be written",
            config.display()
        );
    };
    let state_dir = base.join(places.state_dir.as_deref().unwrap_or(Path::new("state")));
    Ok((
        places.tls.relative_to(base),
        base.join(grant_keys),
        state_dir,
        places,
    ))
}

/// Enrols (see the module docs); prints what was written.
pub async fn enrol(args: EnrolArgs) -> anyhow::Result<()> {
    ensure!(
        is_valid_name(&args.id),
        "--id {:?} is not a valid agent id: 1-63 characters of a-z, 0-9 and '-', starting with a \
         letter or digit",
        args.id
    );
    let (files, grant_key_file, state_dir, places) = places(&args.config)?;
    if let Some(id) = &places.id {
        ensure!(
            *id == args.id,
            "{} is the configuration of agent {id:?}, not {:?}; use --id {id} or fix id there",
            args.config.display(),
            args.id
        );
    }
    // The same checks as the configuration's `controllers` (duplicates, at most 32).
    let addrs =
        crate::controllers::ControllerAddrs::from_list("--controller", args.controllers.clone())?;
    let pin = args.ca_pin.trim().to_ascii_lowercase();
    // The key is made here, and only its public half leaves the host (in the CSR).
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, &args.id);
    let csr = params.serialize_request(&key)?.der().to_vec();
    let (controller, channel) = connect_enrolment(&addrs, &args.ca_pin).await?;
    let mut client = EnrolmentClient::new(channel);
    let enrolling = client.enrol(EnrolRequest {
        token: args.token.trim().to_string(),
        agent_id: args.id.clone(),
        csr_der: csr,
    });
    let answer = tokio::time::timeout(crate::watch::ANSWER_WITHIN, enrolling)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the controller did not answer the enrolment within {} s",
                crate::watch::ANSWER_WITHIN.as_secs()
            )
        })?
        .map_err(|status| {
            anyhow::anyhow!(
                "the controller refused the enrolment: {} ({:?})",
                controller_text(status.message()),
                status.code()
            )
        })?
        .into_inner();
    // Check the answer before anything is written.
    let (cert_der, identity) = issued_identity(
        &answer.certificate_pem,
        &answer.trust_domain,
        "the certificate the controller issued",
    )?;
    ensure!(
        identity.role() == Role::Agent && identity.name() == args.id,
        "the controller issued a certificate for {}, not agent {}",
        controller_text(&identity.to_string()),
        args.id
    );
    let issued = Issued::read(&cert_der, &answer.serial, answer.not_after_unix)
        .map_err(|e| anyhow::anyhow!("the issued certificate: {e:#}"))?;
    ensure!(
        issued.spki == key.subject_public_key_info(),
        "the controller issued a certificate for another key than ours"
    );
    let ca_der = CertificateDer::from_pem_slice(answer.ca_pem.as_bytes()).map_err(|e| {
        anyhow::anyhow!(
            "the controller's answer holds no CA certificate: {}",
            controller_text(&e.to_string())
        )
    })?;
    ensure!(
        ca_pin(&ca_der)? == pin,
        "the CA the controller handed back is not the pinned one ({pin})"
    );
    if let Some(td) = &places.trust_domain {
        ensure!(
            *td == answer.trust_domain,
            "{} says trust_domain {td:?}, the controller's is \"{}\"; fix trust_domain there",
            args.config.display(),
            controller_text(&answer.trust_domain)
        );
    }
    let Some(grant_key) = answer.grant_keys.first() else {
        bail!("the controller's answer holds no grant-verification key");
    };
    ensure!(
        answer.cluster_id.is_empty() || crate::cluster::is_valid_id(&answer.cluster_id),
        "the controller's answer holds no valid cluster id"
    );
    write_replacing(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_replacing(&files.cert, answer.certificate_pem.as_bytes(), 0o644)?;
    write_replacing(&files.ca, answer.ca_pem.as_bytes(), 0o644)?;
    write_replacing(&grant_key_file, format!("{grant_key}\n").as_bytes(), 0o644)?;
    EnrolmentRecord {
        agent_id: args.id.clone(),
        labels: answer.labels.clone(),
        serial: issued.serial.clone(),
        not_after_unix: issued.not_after_unix,
        controller,
    }
    .save(&state_dir)?;
    let pinned = crate::cluster::pin_enrolled(&state_dir, &answer.cluster_id);
    let until = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(issued.not_after_unix).unwrap_or(0));
    // The labels are the controller's words, printed escaped and cut (`controller_text`); the
    // serial is the certificate's own, in hex.
    let labels: Vec<String> = answer
        .labels
        .iter()
        .map(|label| controller_text(label))
        .collect();
    println!(
        "enrolled as {identity}: certificate {} (serial {}) until {}, labels [{}]",
        files.cert.display(),
        issued.serial,
        humantime::format_rfc3339_seconds(until),
        labels.join(", ")
    );
    println!(
        "key {} (0600, made on this host), CA {}, grant key {}",
        files.key.display(),
        files.ca.display(),
        grant_key_file.display()
    );
    let pin_file = state_dir.join(crate::cluster::PIN_FILE);
    match pinned {
        Ok(before) => {
            if !answer.cluster_id.is_empty() {
                println!(
                    "controller cluster {} pinned in {}",
                    answer.cluster_id,
                    pin_file.display()
                );
            }
            if let Some(before) = before {
                println!("(it replaces the earlier pin: {before})");
            }
            Ok(())
        }
        Err(e) => {
            // Enrolled (the token is used, the files are written), not pinned: an earlier pin
            // of another cluster would make the agent refuse the one that enrolled it, so it
            // goes; without a pin the agent pins the first cluster it reaches.
            let removed = match std::fs::remove_file(&pin_file) {
                Ok(()) => "; the earlier pin was removed",
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "",
                Err(_) => "; the earlier pin could not be removed either",
            };
            bail!(
                "enrolled, but the controller cluster {} could not be pinned: {e:#}{removed}. \
                 Write {} into {} (mode 0600) before starting the agent, or it pins the first \
                 controller cluster it reaches",
                answer.cluster_id,
                answer.cluster_id,
                pin_file.display()
            )
        }
    }
}

/// A pinned connection to the first enrolment address that answers, tried in turn from the
/// (random) current one, each once. Only a failed connection moves on: the join token is sent
/// on the connection made, and a refusal there is final (another replica would refuse the same
/// token, or count a second use of it).
async fn connect_enrolment(
    addrs: &crate::controllers::ControllerAddrs,
    ca_pin: &str,
) -> anyhow::Result<(String, tonic::transport::Channel)> {
    let mut failures = Vec::new();
    for _ in 0..addrs.all().len() {
        let (at, addr) = addrs.current();
        // Bounded, so that an address whose packets are dropped does not hold the next one
        // back for the system's TCP timeout (minutes).
        let endpoint = loggate_core::tls::pinned_enrolment_endpoint(addr, ca_pin)?
            .connect_timeout(std::time::Duration::from_secs(5));
        // connect_timeout bounds TCP only: a peer that stalls in TLS's handshake is bounded here.
        match tokio::time::timeout(crate::watch::CONNECT_WITHIN, endpoint.connect()).await {
            Ok(Ok(channel)) => return Ok((addr.to_string(), channel)),
            Ok(Err(e)) => {
                failures.push(format!("{addr}: {:#}", anyhow::Error::from(e)));
                addrs.advance_from(at);
            }
            Err(_) => {
                failures.push(format!(
                    "{addr}: no TLS handshake within {} s",
                    crate::watch::CONNECT_WITHIN.as_secs()
                ));
                addrs.advance_from(at);
            }
        }
    }
    bail!(
        "cannot connect to the controller's enrolment port ({}); check the address, and that \
         --ca-pin is the pin of its CA: loggate pki pin",
        failures.join("; ")
    )
}

/// Writes `data` to `path` through a temporary file created with `mode` (never wider, even
/// briefly), synced, then renamed over `path`.
fn write_replacing(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".enrol-tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(data)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// How long the skew allowance of issued certificates is (they start 5 minutes before they
/// were signed): the time of issue is `not_before` + this.
const ISSUE_SKEW: i64 = 5 * 60;

/// When to renew a certificate valid until `not_after` and issued at `issued`: at two thirds
/// of its lifetime, less a jitter of up to a tenth of it (so that a fleet enrolled at once does
/// not renew at once).
fn renewal_time(issued: i64, not_after: i64, jitter: f64) -> i64 {
    let lifetime = (not_after - issued).max(0);
    // The factor is clamped to [0, 1] (a NaN becomes 0 in the cast), so the product lies in
    // [0, lifetime / 10] and fits an i64 whatever it rounds to.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a finite value in [0, lifetime / 10]"
    )]
    let jitter = (lifetime as f64 / 10.0 * jitter.clamp(0.0, 1.0)) as i64;
    issued + lifetime * 2 / 3 - jitter
}

/// The renewal of an enrolled agent's certificate, for as long as the agent runs: at
/// [`renewal_time`], a new key and CSR, `RenewCertificate` over the current identity, the
/// answer checked, the files replaced, `enrolment.json` updated, the server's TLS
/// configuration reloaded (`reload`), `agent.certificate_renewed` written. A failure is retried
/// (every tenth of the time left, between 5 s and 5 minutes); a certificate that expired
/// meanwhile cannot be renewed: the log says to enrol again with a new token.
pub async fn renew_loop(
    shared: std::sync::Arc<crate::Shared>,
    reload: tokio::sync::watch::Sender<u64>,
) {
    let config = &shared.config;
    loop {
        let record = match EnrolmentRecord::load(&config.state_dir) {
            Ok(Some(record)) if record.agent_id == config.id => record,
            Ok(_) => return,
            Err(e) => {
                tracing::error!("certificate renewal is off: {e:#}");
                return;
            }
        };
        let issued = std::fs::read(&config.tls.cert)
            .ok()
            .and_then(|pem| CertificateDer::from_pem_slice(&pem).ok())
            .and_then(|der| loggate_core::daemon::serve::certificate_not_before(&der))
            .map(|nb| (nb + ISSUE_SKEW).min(record.not_after_unix))
            .unwrap_or(record.not_after_unix);
        let at = renewal_time(issued, record.not_after_unix, rand::random::<f64>());
        let now = loggate_core::grant::unix_now();
        if at > now {
            tokio::time::sleep(std::time::Duration::from_secs(
                u64::try_from(at - now).unwrap_or(0),
            ))
            .await;
        }
        match renew_once(&shared, &record).await {
            Ok(()) => {
                reload.send_modify(|n| *n += 1);
            }
            Err(e) => {
                let now = loggate_core::grant::unix_now();
                if now >= record.not_after_unix {
                    tracing::error!(
                        "the agent's certificate expired at {} and could not be renewed ({e:#}); \
                         the controller refuses it now: enrol again with a new join token \
                         (loggate agent token create --reenrol, then loggate-agent enrol)",
                        record.not_after_unix
                    );
                } else {
                    tracing::warn!("renewing the agent's certificate failed, retrying: {e:#}");
                }
                let left = (record.not_after_unix - now).max(0);
                let pause = (left / 10).clamp(5, 300);
                tokio::time::sleep(std::time::Duration::from_secs(
                    u64::try_from(pause).unwrap_or(5),
                ))
                .await;
            }
        }
    }
}

async fn renew_once(shared: &crate::Shared, record: &EnrolmentRecord) -> anyhow::Result<()> {
    let config = &shared.config;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, &config.id);
    let csr = params.serialize_request(&key)?.der().to_vec();
    // Whichever controller address is current (the grant stream moves it on a failure).
    let addr = config.controllers.current().1.to_string();
    let mut client = crate::watch::connect(config, &addr).await?;
    let renewal = client.renew_certificate(loggate_proto::RenewCertificateRequest {
        csr_der: csr,
        cluster_id: shared.cluster.pinned().unwrap_or_default(),
    });
    let answer = match tokio::time::timeout(crate::watch::ANSWER_WITHIN, renewal).await {
        Err(_) => anyhow::bail!(
            "the controller did not answer the renewal within {} s",
            crate::watch::ANSWER_WITHIN.as_secs()
        ),
        Ok(answer) => answer.map_err(|s| {
            anyhow::anyhow!(
                "the controller refused the renewal: {}",
                controller_text(s.message())
            )
        })?,
    }
    .into_inner();
    // Only from the cluster this agent follows (as every grant event is checked): a controller
    // of another cluster that shares the CA must not hand it its identity.
    if let Err(e) = shared.cluster.check(&answer.cluster_id) {
        // Audited as the grant stream's refusals are: a controller of another cluster that
        // answered with a certificate for this agent is an alert, not only a log line.
        if let Some(mismatch) = e.downcast_ref::<crate::cluster::Mismatch>() {
            shared.audit(&loggate_core::audit::events::ControllerRefused {
                address: addr.clone(),
                reason_code: "cluster_mismatch",
                expected_cluster_id: mismatch.expected.clone(),
                got_cluster_id: mismatch.got.clone(),
            })?;
        }
        return Err(e.context(format!(
            "the controller at {addr} that answered the renewal"
        )));
    }
    let (cert_der, identity) = issued_identity(
        &answer.certificate_pem,
        &config.trust_domain,
        "the renewed certificate",
    )?;
    ensure!(
        identity.role() == Role::Agent && identity.name() == config.id,
        "the controller renewed a certificate for {}, not agent {}",
        controller_text(&identity.to_string()),
        config.id
    );
    let issued = Issued::read(&cert_der, &answer.serial, answer.not_after_unix)
        .map_err(|e| anyhow::anyhow!("the renewed certificate: {e:#}"))?;
    ensure!(
        issued.spki == key.subject_public_key_info(),
        "the controller renewed a certificate for another key than ours"
    );
    write_replacing(&config.tls.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_replacing(&config.tls.cert, answer.certificate_pem.as_bytes(), 0o644)?;
    let renewed = EnrolmentRecord {
        serial: issued.serial.clone(),
        not_after_unix: issued.not_after_unix,
        ..record.clone()
    };
    renewed.save(&config.state_dir)?;
    shared.audit(&loggate_core::audit::events::AgentCertificateRenewed {
        subject: identity.spiffe_id().to_string(),
        agent_id: config.id.clone(),
        serial: issued.serial.clone(),
        previous_serial: record.serial.clone(),
        not_after: issued.not_after_unix,
        key_sha256: identity.key_sha256_hex(),
    })?;
    tracing::info!(serial = %issued.serial, not_after = issued.not_after_unix, "agent certificate renewed");
    Ok(())
}

/// The most characters of the controller's text that a message shows, its escapes and the
/// cut's marker included. Long enough for the controller's own sentences (a refused renewal
/// names two 32-character cluster ids and what to do: ~200 characters), short enough that an
/// answer cannot fill a log line with megabytes.
const CONTROLLER_TEXT_MAX: usize = 512;

/// The certificate of a controller's answer (enrolment or renewal) and the identity it
/// names in `trust_domain`; errors quote the answer through [`controller_text`], `what`
/// naming the certificate.
fn issued_identity(
    certificate_pem: &str,
    trust_domain: &str,
    what: &str,
) -> anyhow::Result<(CertificateDer<'static>, Identity)> {
    let cert_der = CertificateDer::from_pem_slice(certificate_pem.as_bytes()).map_err(|e| {
        anyhow::anyhow!(
            "the controller's answer holds no certificate: {}",
            controller_text(&e.to_string())
        )
    })?;
    let identity = Identity::from_certificate(&cert_der, trust_domain)
        .map_err(|e| anyhow::anyhow!("{what}: {}", controller_text(&e.to_string())))?;
    Ok((cert_der, identity))
}

/// Text from the controller's answer (a refusal's message, a label, a serial, an error that
/// quotes the answer) as it goes into an error, a log line or onto the operator's terminal:
/// each character escaped by `char::escape_debug` (a control character, a bidi override or
/// a combining mark must not act on the terminal or the log), and at most
/// [`CONTROLLER_TEXT_MAX`] characters, a cut marked by a final "…" and never made inside a
/// character's escape. Without the bound, an answer is as long as gRPC lets it be (4 MiB).
fn controller_text(text: &str) -> String {
    let mut shown = String::new();
    let mut count = 0;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let escaped = c.escape_debug();
        // Unless this is the last character, room is kept for the marker after it.
        let room = if chars.as_str().is_empty() {
            CONTROLLER_TEXT_MAX
        } else {
            CONTROLLER_TEXT_MAX - 1
        };
        if count + escaped.len() > room {
            shown.push('…');
            break;
        }
        count += escaped.len();
        shown.extend(escaped);
    }
    shown
}

/// What the agent keeps of a certificate the controller issued (at enrolment or renewal), read
/// from the certificate itself: its key, its serial (hex of its bytes, as the controller
/// writes it) and its end. The answer's own `serial` and `not_after_unix` must agree with it:
/// they are never kept, printed or audited as they came (an answer that disagrees with the
/// certificate it carries is refused).
#[derive(Debug)]
struct Issued {
    spki: Vec<u8>,
    serial: String,
    not_after_unix: i64,
}

impl Issued {
    fn read(cert_der: &[u8], answer_serial: &str, answer_not_after: i64) -> anyhow::Result<Issued> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| anyhow::anyhow!("{e}"))?;
        // Without the leading zero bytes DER adds to keep a serial positive: the controller
        // writes the number's own bytes (hex), whatever way it draws them.
        let raw = cert.raw_serial();
        let significant = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
        let serial: String = raw[significant..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let answer_serial = answer_serial.trim_start_matches("00");
        let not_after_unix = cert.validity().not_after.timestamp();
        ensure!(
            answer_serial == serial,
            "the controller's answer names serial {}, the certificate carries {}",
            controller_text(answer_serial),
            controller_text(&serial)
        );
        // Within a second: the certificate holds whole seconds.
        ensure!(
            answer_not_after.abs_diff(not_after_unix) <= 1,
            "the controller's answer says it ends at {answer_not_after}, the certificate at \
             {not_after_unix} (Unix seconds)"
        );
        Ok(Issued {
            spki: cert.public_key().raw.to_vec(),
            serial,
            not_after_unix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{controller_text, renewal_time, Issued, CONTROLLER_TEXT_MAX};

    /// A certificate with serial `5a1f…` (16 bytes) that ends at `not_after` (Unix seconds).
    fn certificate(not_after: i64) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["web-1".to_string()]).expect("params");
        let mut serial = [0x11u8; 16];
        serial[0] = 0x5a;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        params.not_after = std::time::UNIX_EPOCH
            .checked_add(std::time::Duration::from_secs(not_after.unsigned_abs()))
            .expect("a time")
            .into();
        params
            .self_signed(&key)
            .expect("certificate")
            .der()
            .to_vec()
    }

    #[test]
    fn what_is_kept_of_an_issued_certificate_is_read_from_it_and_the_answer_must_agree() {
        let end = 1_800_000_000;
        let der = certificate(end);
        let serial = format!("5a{}", "11".repeat(15));
        let issued = Issued::read(&der, &serial, end).expect("agrees");
        assert_eq!(issued.serial, serial);
        assert_eq!(issued.not_after_unix, end);
        assert!(!issued.spki.is_empty());
        // Another serial, escaped in the error (it is the controller's text).
        let e = Issued::read(&der, "5a\u{1b}[2J", end).expect_err("another serial");
        assert!(!format!("{e:#}").contains('\u{1b}'), "{e:#}");
        assert!(format!("{e:#}").contains(&serial), "{e:#}");
        // A serial of megabytes is cut in the error.
        let e = Issued::read(&der, &"5a".repeat(1 << 20), end).expect_err("another serial");
        let shown = format!("{e:#}");
        assert!(shown.contains('…') && shown.len() < 1000, "{shown}");
        // An end that is not the certificate's: a renewal scheduled on it would come late.
        let e = Issued::read(&der, &serial, end + 86_400).expect_err("another end");
        assert!(format!("{e:#}").contains("1800000000"), "{e:#}");
        assert!(Issued::read(b"not a certificate", &serial, end).is_err());
        // A serial whose first byte has its high bit set: DER pads it with a zero byte, the
        // controller's hex of the number does not; the two agree.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["web-1".to_string()]).expect("params");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x9c; 16]));
        params.not_after = std::time::UNIX_EPOCH
            .checked_add(std::time::Duration::from_secs(1_800_000_000))
            .expect("a time")
            .into();
        let padded = params
            .self_signed(&key)
            .expect("certificate")
            .der()
            .to_vec();
        let issued = Issued::read(&padded, &"9c".repeat(16), end).expect("agrees");
        assert_eq!(issued.serial, "9c".repeat(16));
    }

    #[test]
    fn the_controllers_text_is_shown_escaped_and_cut_to_512_characters() {
        assert_eq!(CONTROLLER_TEXT_MAX, 512);
        let short = "the join token was used already";
        assert_eq!(controller_text(short), short);
        let exact = "x".repeat(CONTROLLER_TEXT_MAX);
        assert_eq!(controller_text(&exact), exact, "at the bound: not cut");
        let long = "y".repeat(4 << 20);
        assert_eq!(
            controller_text(&long),
            format!("{}…", "y".repeat(CONTROLLER_TEXT_MAX - 1))
        );
        // Multi-byte characters are counted and cut whole.
        let wide = "é".repeat(CONTROLLER_TEXT_MAX + 1);
        assert_eq!(
            controller_text(&wide),
            format!("{}…", "é".repeat(CONTROLLER_TEXT_MAX - 1))
        );
        // Control characters and a bidi override: escaped, bounded after escaping, and cut
        // between two escapes, never inside one.
        let hostile = "\u{1b}[2J\u{202e}\r\n".repeat(1000);
        let shown = controller_text(&hostile);
        assert!(shown.chars().count() <= CONTROLLER_TEXT_MAX, "{shown}");
        assert!(
            !shown.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{shown}"
        );
        let kept = shown.strip_suffix('…').expect("marked as cut");
        let mut whole_escapes = String::new();
        for c in hostile.chars() {
            if whole_escapes.len() >= kept.len() {
                break;
            }
            whole_escapes.extend(c.escape_debug());
        }
        assert_eq!(kept, whole_escapes, "cut inside an escape");
    }

    #[test]
    fn renewal_comes_at_two_thirds_of_the_lifetime_less_a_jitter_of_a_tenth() {
        assert_eq!(renewal_time(0, 86_400, 0.0), 57_600);
        assert_eq!(renewal_time(0, 86_400, 1.0), 57_600 - 8_640);
        assert_eq!(renewal_time(100, 100, 0.5), 100);
    }
}
