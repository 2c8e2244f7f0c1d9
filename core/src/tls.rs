//! Mutual TLS for every loggate connection: tonic's client TLS settings from PEM files, and the
//! verified peer's [`Identity`] read from a request (the server side, whose handshakes are
//! completed and refusals reported before tonic, is [`crate::tls_accept`]).
//!
//! Both sides always require the other's certificate, chained to the configured CA. rustls checks
//! the chain and validity period during the handshake, so a handler that sees a request has a
//! peer with a current certificate from that CA; this module only names that peer.

use crate::identity::{spiffe_uris, Identity, Role};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::transport::{ClientTlsConfig, Endpoint, Identity as TlsIdentity};

/// Where a party's TLS material lives.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file of the CA that signs every loggate certificate.
    pub ca: PathBuf,
    /// This party's certificate (PEM).
    pub cert: PathBuf,
    /// This party's private key (PEM).
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
/// A TLS file (CA, certificate or key) that could not be read; names which file and keeps the I/O
/// error as its source.
#[error("cannot read {what} {path}: {source}")]
pub struct TlsFileError {
    what: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError {
        what,
        path: path.to_path_buf(),
        source,
    })
}

impl TlsFiles {
    /// Resolves relative paths against `base` (the folder of the configuration file).
    pub fn relative_to(&self, base: &Path) -> TlsFiles {
        TlsFiles {
            ca: base.join(&self.ca),
            cert: base.join(&self.cert),
            key: base.join(&self.key),
        }
    }

    /// A connection to `addr` over mutual TLS: our certificate presented, and the server's
    /// required to chain to the CA, to carry the DNS name tonic checks (`loggate-controller` or
    /// the agent id) **and** to be exactly the SPIFFE ID of `server` in our trust domain (the
    /// one our own certificate names). The DNS name alone would let any certificate of the CA
    /// that carries it — issued for another purpose — stand in for an agent or the controller.
    pub fn endpoint(&self, addr: &str, server: Server<'_>) -> anyhow::Result<Endpoint> {
        let own = read_certificate_der(&self.cert)?;
        let trust_domain = spiffe_uris(&own)
            .first()
            .and_then(|id| id.strip_prefix("spiffe://"))
            .and_then(|rest| rest.split('/').next())
            .map(str::to_string)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no spiffe:// URI SAN in this certificate",
                    self.cert.display()
                )
            })?;
        if let Err(not_yet) = refuse_if_not_valid_yet(&own, &self.cert, UnixTime::now()) {
            // An agent tries anyway: a server with a clock as far behind as its own accepts
            // the certificate, and refusing here would cut the agent off its revocation feed
            // (WatchGrants) over a clock it cannot fix itself. A person is told at once.
            let agent = Identity::from_certificate(&own, &trust_domain)
                .is_ok_and(|id| id.role() == Role::Agent);
            if !agent {
                return Err(not_yet);
            }
            tracing::warn!("{not_yet:#}; connecting anyway (the server will judge it)");
        }
        let (dns_name, expected) = match server {
            Server::Controller => (
                "loggate-controller".to_string(),
                format!("spiffe://{trust_domain}/controller"),
            ),
            Server::Agent(id) => (
                id.to_string(),
                format!("spiffe://{trust_domain}/agent/{id}"),
            ),
        };
        let mut roots = RootCertStore::empty();
        let ca = read("CA certificate", &self.ca)?;
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.map_err(|e| anyhow::anyhow!("{}: {e}", self.ca.display()))?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        let tls = ClientTlsConfig::new()
            .identity(TlsIdentity::from_pem(
                read("certificate", &self.cert)?,
                read("private key", &self.key)?,
            ))
            .domain_name(dns_name);
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| anyhow::anyhow!("bad address {addr:?}: {e}"))?;
        Ok(endpoint.tls_config_with_verifier(tls, Arc::new(ExpectSpiffeId { inner, expected }))?)
    }

    /// Our own identity, read from our certificate.
    pub fn own_identity(&self, trust_domain: &str) -> anyhow::Result<Identity> {
        let der = read_certificate_der(&self.cert)?;
        Identity::from_certificate(&der, trust_domain)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.cert.display()))
    }
}

/// Our own certificate is refused before any connection when its validity has not started:
/// every server would refuse it, and TLS has no alert for "not yet valid" (rustls sends
/// `certificate_expired`), so the user would be told that a certificate which has not started
/// yet had expired. (Certificates from `loggate pki` and sign-in start 5 minutes in the past, so
/// a clock slightly behind the issuer's does not trip this.) An expired certificate is left to
/// the server, which audits the attempt.
fn refuse_if_not_valid_yet(der: &[u8], path: &Path, now: UnixTime) -> anyhow::Result<()> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| anyhow::anyhow!("{}: not a valid X.509 certificate: {e}", path.display()))?;
    let starts = cert.validity().not_before.timestamp();
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now < starts {
        let at = u64::try_from(starts)
            .ok()
            .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|| starts.to_string());
        anyhow::bail!(
            "{}: this certificate is not valid yet: its validity starts at {at}, {} s from now \
             (check this machine's clock, or use a certificate that is already valid)",
            path.display(),
            starts - now
        );
    }
    Ok(())
}

/// Whom a client expects at the other end of [`TlsFiles::endpoint`].
#[derive(Debug, Clone, Copy)]
pub enum Server<'a> {
    /// The controller, whose certificate must carry the controller SPIFFE ID of the trust domain.
    Controller,
    /// An agent, by id.
    Agent(&'a str),
}

/// rustls' WebPKI server verification (chain, validity, DNS name), then: the certificate names
/// exactly one SPIFFE ID, the expected one.
#[derive(Debug)]
struct ExpectSpiffeId {
    inner: Arc<WebPkiServerVerifier>,
    expected: String,
}

impl ServerCertVerifier for ExpectSpiffeId {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match spiffe_uris(end_entity.as_ref()).as_slice() {
            [only] if *only == self.expected => Ok(verified),
            found => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(WrongServer {
                    expected: self.expected.clone(),
                    found: found.join(", "),
                })),
            ))),
        }
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

#[derive(thiserror::Error)]
#[error("the server's certificate is {found:?}, not {expected}")]
struct WrongServer {
    expected: String,
    found: String,
}

// rustls shows a certificate error's cause with `{:?}`: the sentence, not the struct.
impl std::fmt::Debug for WrongServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The DER bytes of the first certificate in a PEM file.
pub fn read_certificate_der(path: &Path) -> anyhow::Result<Vec<u8>> {
    let der = CertificateDer::from_pem_file(path)
        .map_err(|e| anyhow::anyhow!("{}: no PEM certificate ({e})", path.display()))?;
    Ok(der.as_ref().to_vec())
}

/// The pin of a CA certificate, as `loggate pki pin` prints it and `loggate-agent enrol
/// --ca-pin` takes it: `sha256:` and the lowercase hex SHA-256 of the certificate's
/// SubjectPublicKeyInfo (DER). The key, not the certificate: a CA re-issued with the same key
/// (a new validity) keeps its pin (as kubeadm's `--discovery-token-ca-cert-hash`).
pub fn ca_pin(cert_der: &[u8]) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| anyhow::anyhow!("not a valid X.509 certificate: {e}"))?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(cert.public_key().raw))
    ))
}

/// A connection to the controller's pre-authentication port at `addr`, for a host that holds
/// no certificate and no CA yet: no client certificate; the server's chain must hold a CA
/// certificate whose [`ca_pin`] is `pin`, and the controller's certificate must chain to it
/// (WebPKI: signature, validity, the DNS name `loggate-controller`) and name a
/// `spiffe://…/controller` identity. The pin is checked before a byte of the request (the
/// join token) is sent.
pub fn pinned_enrolment_endpoint(addr: &str, pin: &str) -> anyhow::Result<Endpoint> {
    let pin = pin.trim().to_ascii_lowercase();
    let valid = pin
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !valid {
        anyhow::bail!(
            "--ca-pin {pin:?} is not sha256:<64 hex characters>; print it with loggate pki pin"
        );
    }
    let tls = ClientTlsConfig::new().domain_name("loggate-controller");
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| anyhow::anyhow!("bad address {addr:?}: {e}"))?;
    Ok(endpoint.tls_config_with_verifier(tls, Arc::new(PinnedCa { pin }))?)
}

/// The server verifier of [`pinned_enrolment_endpoint`].
#[derive(Debug)]
struct PinnedCa {
    pin: String,
}

impl PinnedCa {
    fn inner_for(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        let anchor = intermediates
            .iter()
            .find(|c| ca_pin(c.as_ref()).is_ok_and(|p| p == self.pin));
        let Some(anchor) = anchor else {
            let presented: Vec<String> = std::iter::once(end_entity)
                .chain(intermediates)
                .filter_map(|c| ca_pin(c.as_ref()).ok())
                .collect();
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch {
                    pin: self.pin.clone(),
                    presented: presented.join(", "),
                })),
            )));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(anchor.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))
    }
}

#[derive(thiserror::Error)]
#[error("no certificate of the server's chain has the pinned CA key {pin} (found {presented}); check --ca-pin with loggate pki pin on the controller")]
struct PinMismatch {
    pin: String,
    presented: String,
}

impl std::fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let inner = self.inner_for(end_entity, intermediates)?;
        let verified =
            inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        match spiffe_uris(end_entity.as_ref()).as_slice() {
            [only] if only.starts_with("spiffe://") && only.ends_with("/controller") => {
                Ok(verified)
            }
            found => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(WrongServer {
                    expected: "spiffe://<trust domain>/controller".into(),
                    found: found.join(", "),
                })),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

    /// A verifier expecting agent web-1, and a server certificate from the same CA with DNS
    /// name web-1 and the given SPIFFE IDs.
    fn verify(uris: &[&str]) -> Result<ServerCertVerified, rustls::Error> {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("key");
        let mut leaf = CertificateParams::new(vec!["web-1".to_string()]).expect("params");
        for uri in uris {
            leaf.subject_alt_names
                .push(SanType::URI((*uri).try_into().expect("uri")));
        }
        let leaf = leaf.signed_by(&key, &issuer).expect("leaf");
        let mut roots = RootCertStore::empty();
        roots.add(ca_cert.der().clone()).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = ExpectSpiffeId {
            inner: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier"),
            expected: "spiffe://loggate.local/agent/web-1".into(),
        };
        verifier.verify_server_cert(
            leaf.der(),
            &[],
            &ServerName::try_from("web-1").expect("name"),
            &[],
            UnixTime::now(),
        )
    }

    #[test]
    fn an_own_certificate_that_has_not_started_is_reported_not_valid_yet_not_expired() {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["carol".to_string()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2099, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 2, 1);
        let future = params.self_signed(&key).expect("cert");
        let path = Path::new("carol.crt");
        let err = refuse_if_not_valid_yet(future.der(), path, UnixTime::now())
            .expect_err("a certificate starting in 2099 was used");
        let message = format!("{err:#}");
        assert!(
            message.contains("not valid yet") && message.contains("2099-01-01T00:00:00Z"),
            "{message}"
        );
        assert!(!message.contains("expired"), "{message}");
        // Once started (and even once expired: the server judges and audits that), it is used.
        let later =
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(4_102_444_800 + 86_400));
        assert!(refuse_if_not_valid_yet(future.der(), path, later).is_ok());
        let much_later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(4_200_000_000));
        assert!(refuse_if_not_valid_yet(future.der(), path, much_later).is_ok());
    }

    /// Certificate and key files, self-signed, for `spiffe_id`, valid from 2099 on.
    fn not_yet_valid_files(dir: &Path, spiffe_id: &str) -> TlsFiles {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["x".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::URI(spiffe_id.try_into().expect("uri")));
        params.not_before = rcgen::date_time_ymd(2099, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 2, 1);
        let cert = params.self_signed(&key).expect("cert");
        let files = TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("own.crt"),
            key: dir.join("own.key"),
        };
        std::fs::write(&files.ca, cert.pem()).expect("write");
        std::fs::write(&files.cert, cert.pem()).expect("write");
        std::fs::write(&files.key, key.serialize_pem()).expect("write");
        files
    }

    #[test]
    fn an_agent_with_a_clock_behind_still_connects_to_the_controller_a_user_is_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = not_yet_valid_files(dir.path(), "spiffe://loggate.local/agent/web-1");
        assert!(
            agent.endpoint("127.0.0.1:1", Server::Controller).is_ok(),
            "an agent whose clock is behind its certificate lost its revocation feed"
        );
        let user_dir = tempfile::tempdir().expect("tempdir");
        let user = not_yet_valid_files(user_dir.path(), "spiffe://loggate.local/user/alice");
        let err = user
            .endpoint("127.0.0.1:1", Server::Controller)
            .expect_err("a user's not-yet-valid certificate was used");
        assert!(format!("{err:#}").contains("not valid yet"), "{err:#}");
    }

    #[test]
    fn a_server_must_carry_the_expected_spiffe_id_not_only_the_dns_name() {
        assert!(verify(&["spiffe://loggate.local/agent/web-1"]).is_ok());
        for uris in [
            &[][..],
            &["spiffe://loggate.local/user/mallory"][..],
            &["spiffe://loggate.local/agent/web-2"][..],
            &["spiffe://elsewhere/agent/web-1"][..],
            &[
                "spiffe://loggate.local/agent/web-1",
                "spiffe://loggate.local/controller",
            ][..],
        ] {
            let err = verify(uris).expect_err("accepted a wrong server");
            assert!(
                err.to_string()
                    .contains("not spiffe://loggate.local/agent/web-1"),
                "{uris:?}: {err}"
            );
        }
    }
}
