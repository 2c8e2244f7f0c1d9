//! Mutual TLS for every loggate connection: tonic's client TLS settings from PEM files, and the
//! verified peer's [`Identity`] read from a request (the server side, whose handshakes are
//! completed and refusals reported before tonic, is [`crate::tls_accept`]).
//!
//! Both sides always require the other's certificate, chained to the configured CA. rustls checks
//! the chain and validity period during the handshake, so a handler that sees a request has a
//! peer with a current certificate from that CA; this module only names that peer.

use crate::identity::{Identity, Role};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity};
use tonic::{Request, Status};

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

    /// Client side: present our certificate, trust only the CA, and expect the server to be
    /// `server_name` (an agent id or `loggate-controller`; both are DNS SANs of their certificates).
    pub fn client_config(&self, server_name: &str) -> Result<ClientTlsConfig, TlsFileError> {
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("CA certificate", &self.ca)?))
            .identity(TlsIdentity::from_pem(
                read("certificate", &self.cert)?,
                read("private key", &self.key)?,
            ))
            .domain_name(server_name))
    }

    /// Our own identity, read from our certificate.
    pub fn own_identity(&self, trust_domain: &str) -> anyhow::Result<Identity> {
        let der = read_certificate_der(&self.cert)?;
        Identity::from_certificate(&der, trust_domain)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.cert.display()))
    }
}

/// The DER bytes of the first certificate in a PEM file.
pub fn read_certificate_der(path: &Path) -> anyhow::Result<Vec<u8>> {
    let der = CertificateDer::from_pem_file(path)
        .map_err(|e| anyhow::anyhow!("{}: no PEM certificate ({e})", path.display()))?;
    Ok(der.as_ref().to_vec())
}

/// The verified identity of the peer of `request`, which must have the given role.
pub fn peer_identity<T>(
    request: &Request<T>,
    trust_domain: &str,
    role: Role,
) -> Result<Identity, Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let identity = Identity::from_certificate(leaf.as_ref(), trust_domain)
        .map_err(|e| Status::unauthenticated(format!("unusable client certificate: {e}")))?;
    if identity.role() != role {
        return Err(Status::permission_denied(format!(
            "{identity} may not call this: it is for {} identities",
            match role {
                Role::Controller => "controller",
                Role::Agent => "agent",
                Role::User => "user",
            }
        )));
    }
    Ok(identity)
}
