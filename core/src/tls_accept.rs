//! The mTLS listener of the agent and the controller: TCP connections are accepted and their TLS
//! handshakes completed here, before tonic sees them, so that a **refused** handshake — a
//! certificate from another CA, an expired one, none at all, a client that refused ours — is
//! reported (and audited by the caller) instead of vanishing inside the server.
//!
//! Each connection gets its own rustls configuration around one shared certificate, key and
//! client verifier, so the certificate a refused client presented can be named: its SPIFFE ID is
//! reported as `claimed`, which is what it says, not who it is (it failed verification).
//! Verification itself is rustls' WebPKI client verifier, unchanged: chain to the CA, validity
//! period, client-auth usage.

use crate::tls::TlsFiles;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A handshake not completed in this long is dropped (and reported).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that sends nothing in this long is closed without a report (a probe, or a
/// connection held open only to take a handshake slot).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);
/// Handshakes in progress at once, in all and from one address; a connection over either is
/// closed at once (accepting never waits, so the slots of one host cannot hold up others).
const MAX_HANDSHAKES: usize = 1024;
const MAX_HANDSHAKES_PER_IP: usize = 16;
/// Refusals reported per minute at most: a flood of bad handshakes must not flood the audit
/// log. The ones over are counted; the count goes with the next one reported, or in a summary
/// (`reason_code` `suppressed`, no peer) at the end of the minute, whichever comes first.
const MAX_REPORTS_PER_MINUTE: u32 = 60;

/// A connection refused during its TLS handshake.
#[derive(Debug, Clone)]
pub struct Refused {
    /// `None` only for the summary of refusals left out by the rate limit.
    pub peer: Option<SocketAddr>,
    /// A short machine-readable cause: `unknown_issuer`, `bad_signature`, `key_not_proven`,
    /// `certificate_expired`,
    /// `certificate_not_valid_yet`, `certificate_revoked`, `bad_certificate`,
    /// `no_client_certificate`, `peer_refused_our_certificate`, `handshake_timeout`,
    /// `tls_error`; `suppressed` for the summary of refusals over the rate limit.
    pub reason_code: &'static str,
    /// rustls' description of the failure.
    pub reason: String,
    /// The SPIFFE ID in the certificate the client presented, if any — unverified.
    pub claimed: Option<String>,
    /// Refusals not reported before this one (over the rate limit).
    pub suppressed_before: u64,
}

impl Refused {
    /// Its `tls.refused` audit event; `service` is who refused it (`loggate agent`,
    /// `loggate controller`).
    pub fn audit_event(&self, service: &str) -> crate::audit::events::TlsRefused {
        crate::audit::events::TlsRefused {
            peer: self.peer.map(|p| p.to_string()),
            service: service.to_string(),
            reason_code: self.reason_code,
            reason: self.reason.clone(),
            claimed_subject: self.claimed.clone(),
            suppressed_before: self.suppressed_before,
        }
    }
}

/// The usual report of a refusal: a warning, and a `tls.refused` record written to `log`
/// (deferred: no action waits on it). `service` names who refused (`loggate agent`, …).
pub fn audit_refusal(log: &crate::audit::SharedAuditLog, service: &str, refused: Refused) {
    tracing::warn!(
        peer = ?refused.peer,
        "TLS handshake refused ({}): {}",
        refused.reason_code,
        refused.reason
    );
    if let Err(e) = log.append_deferred(&refused.audit_event(service)) {
        tracing::error!("audit write failed: {e:#}");
    }
}

/// At most `MAX_REPORTS_PER_MINUTE` reports in any minute-long window.
struct Limiter {
    window_start: std::time::Instant,
    reported: u32,
    suppressed: u64,
}

impl Limiter {
    /// `Some(suppressed before)` when this refusal may be reported.
    fn admit(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(60) {
            self.window_start = now;
            self.reported = 0;
        }
        if self.reported >= MAX_REPORTS_PER_MINUTE {
            self.suppressed += 1;
            return None;
        }
        self.reported += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The refusals the rate limit left out since the last report, as one summary (taking them).
fn summary(limiter: &Mutex<Limiter>) -> Option<Refused> {
    let left_out =
        std::mem::take(&mut limiter.lock().unwrap_or_else(|p| p.into_inner()).suppressed);
    (left_out > 0).then(|| Refused {
        peer: None,
        reason_code: "suppressed",
        reason: format!(
            "{left_out} refused handshakes over the limit of {MAX_REPORTS_PER_MINUTE} a minute \
             were not recorded one by one"
        ),
        claimed: None,
        suppressed_before: left_out,
    })
}

/// The parts shared by every connection's configuration.
struct Shared {
    verifier: Arc<dyn ClientCertVerifier>,
    cert: Arc<OneCert>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    trust_domain: String,
}

/// Accepts connections on `listener`, completes their mTLS handshakes (client certificate
/// required, chained to the CA of `tls`), and yields the established streams for
/// `tonic::transport::Server::serve_with_incoming*`; every refused handshake goes to `refused`
/// (a client that connects and closes without sending a byte is a port probe: not reported).
pub fn incoming(
    listener: TcpListener,
    tls: &TlsFiles,
    trust_domain: &str,
    refused: impl Fn(Refused) + Send + Sync + 'static,
) -> anyhow::Result<Incoming> {
    let shared = Arc::new(Shared {
        verifier: client_verifier(tls)?,
        cert: Arc::new(OneCert(certified_key(tls)?)),
        provider: Arc::new(rustls::crypto::ring::default_provider()),
        trust_domain: trust_domain.to_string(),
    });
    // Built once here so that a configuration rustls refuses fails the start, not each client.
    shared
        .cert
        .0
        .keys_match()
        .map_err(|e| anyhow::anyhow!("{} and {}: {e}", tls.cert.display(), tls.key.display()))?;
    server_config(&shared, Arc::new(Witness::new(shared.verifier.clone())))?;
    let limiter = Arc::new(Mutex::new(Limiter {
        window_start: std::time::Instant::now(),
        reported: 0,
        suppressed: 0,
    }));
    let report = Arc::new(refused);
    let summaries = tokio::spawn({
        let (limiter, report) = (limiter.clone(), report.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Some(summary) = summary(&limiter) {
                    report(summary);
                }
            }
        }
    });
    let refused = Arc::new(move |mut refusal: Refused| {
        let admitted = limiter.lock().unwrap_or_else(|p| p.into_inner()).admit();
        if let Some(suppressed) = admitted {
            refusal.suppressed_before = suppressed;
            report(refusal);
        }
    });
    let (tx, rx) = mpsc::channel(64);
    let accepting = tokio::spawn(async move {
        let admission = Arc::new(Admission::default());
        let mut turned_away = 0u64;
        let mut last_warning: Option<std::time::Instant> = None;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and the like: wait a little rather than spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = Admission::enter(&admission, peer.ip()) else {
                turned_away += 1;
                if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(
                        %peer,
                        "too many TLS handshakes in progress ({MAX_HANDSHAKES} in all, \
                         {MAX_HANDSHAKES_PER_IP} per address): {turned_away} connections closed \
                         unanswered so far"
                    );
                    last_warning = Some(std::time::Instant::now());
                }
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (shared, refused, tx) = (shared.clone(), refused.clone(), tx.clone());
            tokio::spawn(async move {
                let _slot = slot;
                match handshake(&shared, tcp, peer).await {
                    Ok(stream) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err(Some(refusal)) => refused(refusal),
                    Err(None) => {}
                }
            });
        }
    });
    Ok(Incoming {
        rx,
        accepting,
        summaries,
    })
}

/// Handshakes in progress, in all and per address.
#[derive(Default)]
struct Admission {
    in_progress: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted handshake; leaving frees its place.
struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    fn enter(this: &Arc<Admission>, ip: IpAddr) -> Option<Slot> {
        let mut guard = this.in_progress.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *guard;
        let mine = per_ip.entry(ip).or_insert(0);
        if *total >= MAX_HANDSHAKES || *mine >= MAX_HANDSHAKES_PER_IP {
            if *mine == 0 {
                per_ip.remove(&ip);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Slot {
            admission: this.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self
            .admission
            .in_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(mine) = per_ip.get_mut(&self.ip) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// The established connections, in the order their handshakes completed. Dropping it stops
/// accepting.
pub struct Incoming {
    rx: mpsc::Receiver<std::io::Result<TlsStream<TcpStream>>>,
    accepting: tokio::task::JoinHandle<()>,
    summaries: tokio::task::JoinHandle<()>,
}

impl tokio_stream::Stream for Incoming {
    type Item = std::io::Result<TlsStream<TcpStream>>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accepting.abort();
        self.summaries.abort();
    }
}

/// One handshake; `Err(None)` for a probe that sent nothing.
async fn handshake(
    shared: &Shared,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<TlsStream<TcpStream>, Option<Refused>> {
    // Nothing sent in time, or closed at once: a probe, not an authentication attempt.
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => {
            tracing::debug!(%peer, "connection closed: nothing sent within {FIRST_BYTE_TIMEOUT:?}");
            return Err(None);
        }
    }
    let witness = Arc::new(Witness::new(shared.verifier.clone()));
    let config = match server_config(shared, witness.clone()) {
        Ok(config) => config,
        Err(e) => {
            return Err(Some(Refused {
                peer: Some(peer),
                reason_code: "tls_error",
                reason: format!("the server's TLS configuration was refused: {e}"),
                claimed: None,
                suppressed_before: 0,
            }))
        }
    };
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp));
    let error = match accepted.await {
        Ok(Ok(stream)) => return Ok(stream),
        Ok(Err(e)) => e,
        Err(_elapsed) => {
            return Err(Some(Refused {
                peer: Some(peer),
                reason_code: "handshake_timeout",
                reason: format!("no completed handshake within {HANDSHAKE_TIMEOUT:?}"),
                claimed: witness.claimed(&shared.trust_domain),
                suppressed_before: 0,
            }))
        }
    };
    let tls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if tls_error.is_none() && witness.claimed(&shared.trust_domain).is_none() {
        // Closed or reset before a handshake message we could judge: a port probe or a
        // health check, not an authentication attempt.
        tracing::debug!(%peer, "connection closed before its TLS handshake: {error}");
        return Err(None);
    }
    let code = match tls_error.map_or("tls_error", reason_code) {
        // The chain was good, the handshake signature was not: the client presented a
        // certificate of ours without proving it holds its key (a copied certificate?).
        "bad_signature" if witness.chain_verified() => "key_not_proven",
        code => code,
    };
    Err(Some(Refused {
        peer: Some(peer),
        reason_code: code,
        reason: error.to_string(),
        claimed: witness.claimed(&shared.trust_domain),
        suppressed_before: 0,
    }))
}

fn reason_code(e: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription, CertificateError};
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate_expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate_not_valid_yet"
            }
            CertificateError::Revoked => "certificate_revoked",
            // Chained by name to our CA but not signed by its key: another CA of the same
            // name, or a forgery.
            CertificateError::BadSignature => "bad_signature",
            _ => "bad_certificate",
        },
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired,
        ) => "peer_refused_our_certificate",
        _ => "tls_error",
    }
}

fn client_verifier(tls: &TlsFiles) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let ca = std::fs::read(&tls.ca)
        .map_err(|e| anyhow::anyhow!("cannot read CA certificate {}: {e}", tls.ca.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| anyhow::anyhow!("{}: {e}", tls.ca.display()))?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        anyhow::bail!("{} holds no certificate", tls.ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?)
}

fn certified_key(tls: &TlsFiles) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("certificate {}: {e}", tls.cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{} holds no certificate", tls.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| anyhow::anyhow!("private key {}: {e}", tls.key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("private key {}: {e}", tls.key.display()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

fn server_config(
    shared: &Shared,
    witness: Arc<Witness>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(shared.provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(witness)
        .with_cert_resolver(shared.cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    // One configuration per connection: a session cache or tickets could never be used.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Our one certificate, whatever the client asks for.
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The shared verifier, remembering the certificate this connection's client presented.
#[derive(Debug)]
struct Witness {
    inner: Arc<dyn ClientCertVerifier>,
    presented: Mutex<Option<CertificateDer<'static>>>,
    chain_verified: std::sync::atomic::AtomicBool,
}

impl Witness {
    fn new(inner: Arc<dyn ClientCertVerifier>) -> Witness {
        Witness {
            inner,
            presented: Mutex::new(None),
            chain_verified: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn chain_verified(&self) -> bool {
        self.chain_verified
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The SPIFFE ID the presented certificate claims (unverified).
    fn claimed(&self, trust_domain: &str) -> Option<String> {
        let presented = self.presented.lock().unwrap_or_else(|p| p.into_inner());
        let der = presented.as_ref()?;
        crate::identity::spiffe_uris(der)
            .into_iter()
            .find(|uri| uri.len() <= 512)
            .map(|uri| {
                if uri.starts_with(&format!("spiffe://{trust_domain}/")) {
                    uri
                } else {
                    format!("{uri} (another trust domain)")
                }
            })
    }
}

impl ClientCertVerifier for Witness {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        *self.presented.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(end_entity.clone().into_owned());
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_over_the_limit_are_counted_and_reported_with_the_next() {
        let mut limiter = Limiter {
            window_start: std::time::Instant::now(),
            reported: 0,
            suppressed: 0,
        };
        for _ in 0..MAX_REPORTS_PER_MINUTE {
            assert_eq!(limiter.admit(), Some(0));
        }
        assert_eq!(limiter.admit(), None);
        assert_eq!(limiter.admit(), None);
        // A minute later the next one is reported, carrying the two left out.
        limiter.window_start -= Duration::from_secs(61);
        assert_eq!(limiter.admit(), Some(2));
        assert_eq!(limiter.admit(), Some(0));
        // Left out at the end of a minute with no refusal after them: the summary carries them.
        for _ in 0..MAX_REPORTS_PER_MINUTE {
            limiter.admit();
        }
        let limiter = Mutex::new(limiter);
        let s = summary(&limiter).expect("a summary");
        assert_eq!(
            (s.reason_code, s.suppressed_before, s.peer),
            ("suppressed", 2, None)
        );
        assert!(summary(&limiter).is_none(), "taken once");
    }

    #[test]
    fn one_address_cannot_take_every_handshake_slot() {
        let admission = Arc::new(Admission::default());
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let mut held: Vec<Slot> = (0..MAX_HANDSHAKES_PER_IP)
            .map(|_| Admission::enter(&admission, a).expect("under the cap"))
            .collect();
        assert!(
            Admission::enter(&admission, a).is_none(),
            "over the per-address cap"
        );
        let other = Admission::enter(&admission, b).expect("another address still gets in");
        held.pop();
        assert!(
            Admission::enter(&admission, a).is_some(),
            "a finished handshake frees its place"
        );
        drop(other);
        drop(held);
        let guard = admission.in_progress.lock().expect("lock");
        assert_eq!((guard.0, guard.1.len()), (0, 0), "everything released");
    }

    #[test]
    fn handshake_failures_get_a_reason_code() {
        use rustls::{AlertDescription, CertificateError, Error};
        for (error, code) in [
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "unknown_issuer",
            ),
            (
                Error::InvalidCertificate(CertificateError::BadSignature),
                "bad_signature",
            ),
            (
                Error::InvalidCertificate(CertificateError::Expired),
                "certificate_expired",
            ),
            (
                Error::InvalidCertificate(CertificateError::NotValidYet),
                "certificate_not_valid_yet",
            ),
            (
                Error::InvalidCertificate(CertificateError::Revoked),
                "certificate_revoked",
            ),
            (
                Error::InvalidCertificate(CertificateError::BadEncoding),
                "bad_certificate",
            ),
            (Error::NoCertificatesPresented, "no_client_certificate"),
            (
                Error::AlertReceived(AlertDescription::UnknownCA),
                "peer_refused_our_certificate",
            ),
            (Error::DecryptError, "tls_error"),
        ] {
            assert_eq!(reason_code(&error), code, "{error}");
        }
    }
}
