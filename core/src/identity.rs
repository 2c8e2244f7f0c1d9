//! Who is on the other end of a TLS connection: the SPIFFE-style identity in a certificate.
//!
//! loggate names every party by one URI SAN in its X.509 certificate:
//!
//! | party      | SPIFFE ID                                 |
//! |------------|-------------------------------------------|
//! | controller | `spiffe://<trust-domain>/controller`      |
//! | agent      | `spiffe://<trust-domain>/agent/<agent-id>` |
//! | person     | `spiffe://<trust-domain>/user/<name>`     |
//!
//! A certificate must carry exactly one `spiffe://` URI in the expected trust domain; anything
//! else is refused. The SHA-256 of the certificate's SubjectPublicKeyInfo (its "key hash") is what
//! grants are bound to, so a grant is useless without the private key it was issued for, and it
//! survives re-issuing a certificate for the same key.

use sha2::{Digest, Sha256};
use std::fmt;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Names that would collide with the controller's or loopback's DNS SANs: an agent called
/// `loggate-controller` would get a certificate every client accepts as the controller.
pub const RESERVED_NAMES: [&str; 2] = ["loggate-controller", "localhost"];

/// Names (user names, agent ids) are DNS-label-like: lowercase letters, digits and dashes.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !RESERVED_NAMES.contains(&name)
        && !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Controller,
    Agent,
    User,
}

/// A verified peer identity. Built from a certificate the TLS layer has already validated
/// against the configured CA; this type only interprets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    role: Role,
    /// The user name or agent id; empty for the controller.
    name: String,
    spiffe_id: String,
    key_sha256: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate could not be parsed")]
    Unparsable,
    #[error("the certificate carries no spiffe:// URI SAN in trust domain {0}")]
    NoSpiffeId(String),
    #[error("the certificate carries more than one spiffe:// URI SAN")]
    SeveralSpiffeIds,
    #[error("the certificate's SPIFFE ID {0} is not a loggate controller, agent or user identity")]
    UnknownShape(String),
    #[error(
        "{0:?} is neither a user name (lowercase letters, digits and '-', at most 63, starting \
         with a letter or digit) nor a spiffe://<trust domain>/user/<name> ID"
    )]
    NotAUser(String),
}

/// Every `spiffe://` URI SAN of a certificate.
fn spiffe_uris_in(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(uri.to_string()),
            _ => None,
        })
        .collect()
}

/// Every `spiffe://` URI SAN of a DER certificate, unverified (none when it cannot be parsed).
pub(crate) fn spiffe_uris(der: &[u8]) -> Vec<String> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| spiffe_uris_in(&cert))
        .unwrap_or_default()
}

impl Identity {
    /// Reads the identity from a DER certificate (the TLS peer's leaf).
    pub fn from_certificate(der: &[u8], trust_domain: &str) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparsable)?;
        let ids = spiffe_uris_in(&cert);
        let spiffe_id = match ids.as_slice() {
            [] => return Err(IdentityError::NoSpiffeId(trust_domain.to_string())),
            [one] => one.clone(),
            _ => return Err(IdentityError::SeveralSpiffeIds),
        };
        let mut identity = Self::parse_spiffe_id(&spiffe_id, trust_domain)?;
        identity.key_sha256 = Sha256::digest(cert.public_key().raw).into();
        Ok(identity)
    }

    /// Interprets a SPIFFE ID; the key hash is left zero (it comes only from a certificate).
    fn parse_spiffe_id(spiffe_id: &str, trust_domain: &str) -> Result<Self, IdentityError> {
        let prefix = format!("spiffe://{trust_domain}/");
        let Some(path) = spiffe_id.strip_prefix(&prefix) else {
            return Err(IdentityError::NoSpiffeId(trust_domain.to_string()));
        };
        let unknown = || IdentityError::UnknownShape(spiffe_id.to_string());
        let (role, name) = match path.split_once('/') {
            None if path == "controller" => (Role::Controller, String::new()),
            Some(("agent", id)) if is_valid_name(id) => (Role::Agent, id.to_string()),
            Some(("user", name)) if is_valid_name(name) => (Role::User, name.to_string()),
            _ => return Err(unknown()),
        };
        Ok(Identity {
            role,
            name,
            spiffe_id: spiffe_id.to_string(),
            key_sha256: [0; 32],
        })
    }

    /// An identity with a chosen key hash, for tests of code that takes identities.
    #[cfg(test)]
    pub(crate) fn for_tests(spiffe_id: &str, trust_domain: &str, key_sha256: [u8; 32]) -> Self {
        let mut id = Self::parse_spiffe_id(spiffe_id, trust_domain).expect("test SPIFFE ID");
        id.key_sha256 = key_sha256;
        id
    }

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }
    pub fn key_sha256(&self) -> &[u8; 32] {
        &self.key_sha256
    }
    pub fn key_sha256_hex(&self) -> String {
        hex::encode(self.key_sha256)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spiffe_id)
    }
}

/// The SPIFFE ID of a user, given either a bare name ("alice") or a full ID.
pub fn user_spiffe_id(trust_domain: &str, name_or_id: &str) -> Result<String, IdentityError> {
    if name_or_id.starts_with("spiffe://") {
        let not_a_user = || IdentityError::NotAUser(name_or_id.to_string());
        let id = Identity::parse_spiffe_id(name_or_id, trust_domain).map_err(|_| not_a_user())?;
        if id.role != Role::User {
            return Err(not_a_user());
        }
        return Ok(id.spiffe_id);
    }
    if !is_valid_name(name_or_id) {
        return Err(IdentityError::NotAUser(name_or_id.to_string()));
    }
    Ok(format!("spiffe://{trust_domain}/user/{name_or_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_identity_shapes() {
        let td = "loggate.local";
        let user = Identity::parse_spiffe_id("spiffe://loggate.local/user/alice", td).unwrap();
        assert_eq!((user.role(), user.name()), (Role::User, "alice"));
        let agent = Identity::parse_spiffe_id("spiffe://loggate.local/agent/web-1", td).unwrap();
        assert_eq!((agent.role(), agent.name()), (Role::Agent, "web-1"));
        let ctl = Identity::parse_spiffe_id("spiffe://loggate.local/controller", td).unwrap();
        assert_eq!(ctl.role(), Role::Controller);
    }

    #[test]
    fn refuses_other_trust_domains_and_odd_paths() {
        let td = "loggate.local";
        for bad in [
            "spiffe://evil.local/user/alice",
            "spiffe://loggate.local/user/Alice",
            "spiffe://loggate.local/user/alice/extra",
            "spiffe://loggate.local/user/",
            "spiffe://loggate.local/admin/x",
            "spiffe://loggate.local.evil/user/alice",
        ] {
            assert!(Identity::parse_spiffe_id(bad, td).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_shorthand_expands_and_is_validated() {
        assert_eq!(
            user_spiffe_id("loggate.local", "alice").unwrap(),
            "spiffe://loggate.local/user/alice"
        );
        assert!(user_spiffe_id("loggate.local", "../x").is_err());
        assert!(!is_valid_name("loggate-controller"));
        assert!(!is_valid_name("localhost"));
        assert!(user_spiffe_id("loggate.local", "spiffe://loggate.local/agent/web-1").is_err());
    }
}
