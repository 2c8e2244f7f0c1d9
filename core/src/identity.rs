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

/// Implements the string-like traits of an id newtype: `as_str()`, `Display`, `AsRef<str>`,
/// `Borrow<str>` (a `HashMap<Id, _>` is looked up by `&str`), `Deref<Target = str>` and
/// comparison with strings. `Deref` lets code that takes `&str` take the id unchanged; code
/// where mixing ids is a bug takes the newtype, which another id type cannot be passed as.
macro_rules! string_id {
    ($name:ident) => {
        impl $name {
            /// The id as text, exactly as validated.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// Gives up the id as its text, without copying.
            pub fn into_string(self) -> String {
                self.0
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
        impl PartialEq<&$name> for String {
            fn eq(&self, other: &&$name) -> bool {
                *self == other.0
            }
        }
        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
        impl From<&$name> for String {
            fn from(id: &$name) -> String {
                id.0.clone()
            }
        }
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> serde::Deserialize<'de> for $name {
            /// As a plain JSON/TOML string (the wire and disk formats do not change), checked
            /// by the validated constructor.
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(d)?;
                $name::new(text).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use string_id;

/// A refused id as a message quotes it: at most 64 characters, escaped. (This file is also
/// compiled alone into the fuzz targets, so it names no other module of the crate.)
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(64).collect();
    if cut.len() < text.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

/// A SPIFFE ID (`spiffe://<trust domain>/<path>`), the name of a party in certificates, grants
/// (`sub`, `iss`, `approver`) and audit records. Checked for its shape only: printable ASCII
/// without spaces, a trust domain of lowercase letters, digits, `.` and `-`, a non-empty
/// path, at most 2048 bytes. Whether it is a controller, agent or user of *our* trust domain
/// is [`Identity`]'s question.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId(String);

impl SpiffeId {
    /// Checks the shape of a SPIFFE ID (see the type) and refuses anything else with
    /// [`IdentityError::NotASpiffeId`]; it does not check the trust domain.
    pub fn new(text: impl Into<String>) -> Result<SpiffeId, IdentityError> {
        let text = text.into();
        let ok = text.len() <= 2048
            && text.bytes().all(|b| b.is_ascii_graphic())
            && text.strip_prefix("spiffe://").is_some_and(|rest| {
                rest.split_once('/').is_some_and(|(domain, path)| {
                    !domain.is_empty()
                        && domain.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-')
                        })
                        && !path.is_empty()
                })
            });
        if ok {
            Ok(SpiffeId(text))
        } else {
            Err(IdentityError::NotASpiffeId(shown(&text)))
        }
    }
}

string_id!(SpiffeId);

/// An agent's id (`web-1`): a name as [`is_valid_name`] defines it. The id in the agent's
/// certificate, its configuration, and the `hosts` of a grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(String);

impl AgentId {
    /// Checks `text` is a valid agent name ([`is_valid_name`]) and refuses anything else with
    /// [`IdentityError::NotAnAgentId`].
    pub fn new(text: impl Into<String>) -> Result<AgentId, IdentityError> {
        let text = text.into();
        if is_valid_name(&text) {
            Ok(AgentId(text))
        } else {
            Err(IdentityError::NotAnAgentId(shown(&text)))
        }
    }
}

string_id!(AgentId);

/// Which kind of party a certificate's SPIFFE ID names: the access rules of every method are
/// written in roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The controller (`spiffe://<domain>/controller`): issues and signs grants.
    Controller,
    /// An agent (`spiffe://<domain>/agent/<id>`): serves its host's logs.
    Agent,
    /// A person or tool (`spiffe://<domain>/user/<name>`): requests access and reads logs under
    /// grants.
    User,
}

/// A verified peer identity. Built from a certificate the TLS layer has already validated
/// against the configured CA; this type only interprets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    role: Role,
    /// The user name or agent id; empty for the controller.
    name: String,
    spiffe_id: SpiffeId,
    key_sha256: [u8; 32],
    /// The groups the certificate's subject names (its OU attributes that are valid names,
    /// at most [`MAX_CERT_GROUPS`]); see [`Identity::groups`].
    groups: Vec<String>,
}

/// The most groups read from one certificate.
pub const MAX_CERT_GROUPS: usize = 32;

/// Why a certificate, SPIFFE ID, user name or agent id was refused; each a one-sentence message
/// that quotes (a cut of) the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The certificate is not valid DER X.509.
    #[error("the certificate could not be parsed")]
    Unparsable,
    /// No `spiffe://` URI SAN of our trust domain (named in the message).
    #[error("the certificate carries no spiffe:// URI SAN in trust domain {0}")]
    NoSpiffeId(String),
    /// More than one `spiffe://` URI SAN: refused rather than choosing one.
    #[error("the certificate carries more than one spiffe:// URI SAN")]
    SeveralSpiffeIds,
    /// A SPIFFE ID of our trust domain whose path is not `/controller`, `/agent/<id>` or
    /// `/user/<name>`.
    #[error("the certificate's SPIFFE ID {0} is not a loggate controller, agent or user identity")]
    UnknownShape(String),
    /// Text given as a user that is neither a valid user name nor a user SPIFFE ID.
    #[error(
        "{0:?} is neither a user name (lowercase letters, digits and '-', at most 63, starting \
         with a letter or digit) nor a spiffe://<trust domain>/user/<name> ID"
    )]
    NotAUser(String),
    /// Text not shaped like a SPIFFE ID ([`SpiffeId::new`]).
    #[error("{0} is not a SPIFFE ID (spiffe://<trust domain>/<path>, printable ASCII)")]
    NotASpiffeId(String),
    /// Text that is not a valid agent id ([`AgentId::new`]).
    #[error(
        "{0} is not an agent id (lowercase letters, digits and '-', at most 63, starting with a \
         letter or digit)"
    )]
    NotAnAgentId(String),
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
        identity.groups = cert
            .subject()
            .iter_organizational_unit()
            .filter_map(|ou| ou.as_str().ok())
            .filter(|g| is_valid_name(g))
            .take(MAX_CERT_GROUPS)
            .map(str::to_string)
            .collect();
        identity.groups.sort();
        identity.groups.dedup();
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
            spiffe_id: SpiffeId::new(spiffe_id).map_err(|_| unknown())?,
            key_sha256: [0; 32],
            groups: Vec::new(),
        })
    }

    /// An identity with a chosen key hash, for tests of code that takes identities.
    #[cfg(test)]
    pub(crate) fn for_tests(spiffe_id: &str, trust_domain: &str, key_sha256: [u8; 32]) -> Self {
        let mut id = Self::parse_spiffe_id(spiffe_id, trust_domain).expect("test SPIFFE ID");
        id.key_sha256 = key_sha256;
        id
    }

    /// Whether the peer is the controller, an agent or a user.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The groups named in the certificate's subject (OU attributes that are valid names;
    /// others are ignored). Trusted as far as the certificate is: only certificates of the
    /// configured CA are accepted, so these are groups that CA wrote. The access policy
    /// matches them like `[groups]` members.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }
    /// This identity with the groups of the person's verified sign-in at the IdP added, each
    /// as `idp:<group>` (kept server-side by the controller, keyed by the certificate key it
    /// signed; never read from the certificate). A certificate's OU can never look like one:
    /// an OU counts only when it is a valid name, which holds no `:`.
    pub fn with_idp_groups(mut self, idp_groups: &[String]) -> Self {
        self.groups
            .extend(idp_groups.iter().map(|g| format!("idp:{g}")));
        self
    }
    /// The user name or agent id from the SPIFFE ID's path; empty for the controller.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The peer's full SPIFFE ID, as the certificate carries it.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }
    /// The agent id, for an agent's identity.
    pub fn agent_id(&self) -> Option<AgentId> {
        (self.role == Role::Agent).then(|| AgentId(self.name.clone()))
    }
    /// SHA-256 of the certificate's SubjectPublicKeyInfo: what a grant's `key_sha256` binds to.
    pub fn key_sha256(&self) -> &[u8; 32] {
        &self.key_sha256
    }
    /// [`Identity::key_sha256`] as 64 lowercase hex digits, the form grants and audit records
    /// carry.
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
pub fn user_spiffe_id(trust_domain: &str, name_or_id: &str) -> Result<SpiffeId, IdentityError> {
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
    SpiffeId::new(format!("spiffe://{trust_domain}/user/{name_or_id}"))
        .map_err(|_| IdentityError::NotAUser(name_or_id.to_string()))
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

    #[test]
    fn ids_are_validated_on_construction_and_serialise_as_plain_strings() {
        let id = SpiffeId::new("spiffe://loggate.local/user/alice").unwrap();
        assert_eq!(id.as_str(), "spiffe://loggate.local/user/alice");
        assert_eq!(id.to_string(), id.as_str());
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://loggate.local/user/alice\""
        );
        let back: SpiffeId = serde_json::from_str("\"spiffe://loggate.local/user/alice\"").unwrap();
        assert_eq!(back, id);
        for bad in [
            "",
            "alice",
            "spiffe://",
            "spiffe://loggate.local",
            "spiffe://loggate.local/",
            "spiffe://Loggate.local/user/a",
            "spiffe://loggate.local/user/a b",
            "spiffe://loggate.local/user/a\n",
        ] {
            assert!(SpiffeId::new(bad).is_err(), "{bad:?}");
            assert!(serde_json::from_value::<SpiffeId>(serde_json::json!(bad)).is_err());
        }
        assert!(SpiffeId::new(format!("spiffe://t/{}", "a".repeat(3000))).is_err());
        assert_eq!(AgentId::new("web-1").unwrap(), "web-1");
        for bad in [
            "",
            "Web-1",
            "web_1",
            "localhost",
            "loggate-controller",
            "-x",
        ] {
            let e = AgentId::new(bad).unwrap_err();
            assert!(e.to_string().contains("is not an agent id"), "{e}");
        }
        let agent = Identity::parse_spiffe_id("spiffe://t/agent/web-1", "t").unwrap();
        assert_eq!(agent.agent_id(), Some(AgentId::new("web-1").unwrap()));
        let user = Identity::parse_spiffe_id("spiffe://t/user/alice", "t").unwrap();
        assert_eq!(user.agent_id(), None);
    }
}
