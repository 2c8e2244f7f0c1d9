//! Grants: signed, time-limited permissions to read log files on some agents.
//!
//! A grant travels as a PASETO `v4.public` token (Ed25519). Its claims are [`GrantClaims`]; its
//! footer names the signing key (`{"kid":"k4.pid…"}`, authenticated but not secret). The SHA-256 of
//! the subject's certificate public key is the token's *implicit assertion*: it is signed but not
//! sent, so the signature only verifies when the reader presents the certificate key the grant was
//! issued for. The same hash is also a claim (`key_sha256`) so a denial can say precisely that the
//! grant is bound to another key rather than merely "bad signature".
//!
//! [`GrantVerifier`] is the one place where tokens are checked, for the controller and the agent
//! alike. Its results, [`ReceivedGrant`] and [`VerifiedGrant`], can only be built here: code that
//! serves files takes a `VerifiedGrant`, never a token.

use crate::identity::Identity;
use globset::{GlobBuilder, GlobMatcher};
use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::token::UntrustedToken;
use pasetors::version4::{PublicToken, V4};
use pasetors::Public;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The claims inside a grant token. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    /// Grant id (`g-` + 16 hex digits).
    pub jti: String,
    /// The controller's SPIFFE ID.
    pub iss: String,
    /// The reader's SPIFFE ID.
    pub sub: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// Agent ids this grant covers.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Agent labels (`key=value`); an agent carrying any of them is covered.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Absolute path globs (`*` stays within one path component, `**` crosses them).
    pub paths: Vec<String>,
    /// Name of the redaction profile the agent applies.
    pub redaction: String,
    pub reason: String,
    /// Who issued or approved it (SPIFFE ID).
    pub approver: String,
    /// Lowercase hex SHA-256 of the subject's certificate SubjectPublicKeyInfo.
    pub key_sha256: String,
}

#[derive(Serialize, Deserialize)]
struct Footer {
    kid: String,
}

/// Why a grant token was refused. Each variant is one precise reason, shown to the user and
/// written to the audit stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the grant token is malformed ({0})")]
    Malformed(String),
    #[error("the grant is signed by key {0}, which this agent does not trust")]
    UnknownKey(String),
    #[error("the grant's signature is invalid")]
    BadSignature,
    #[error("grant {grant_id} is bound to another certificate key; present the certificate it was issued for")]
    BoundToAnotherKey { grant_id: String },
    #[error("grant {grant_id} was issued to {subject}, not to you")]
    WrongSubject { grant_id: String, subject: String },
    #[error("grant {grant_id} does not cover host {host}")]
    WrongHost { grant_id: String, host: String },
    #[error("grant {grant_id} is not valid yet; it starts in {starts_in}")]
    NotYetValid { grant_id: String, starts_in: String },
    #[error("grant {grant_id} expired {ago} ago; request a new one")]
    Expired { grant_id: String, ago: String },
}

impl GrantError {
    /// A short stable code for audit records and tests.
    pub fn code(&self) -> &'static str {
        match self {
            GrantError::Malformed(_) => "grant_malformed",
            GrantError::UnknownKey(_) => "grant_unknown_key",
            GrantError::BadSignature => "grant_bad_signature",
            GrantError::BoundToAnotherKey { .. } => "grant_bound_to_another_key",
            GrantError::WrongSubject { .. } => "grant_wrong_subject",
            GrantError::WrongHost { .. } => "grant_wrong_host",
            GrantError::NotYetValid { .. } => "grant_not_yet_valid",
            GrantError::Expired { .. } => "grant_expired",
        }
    }
}

/// Human-friendly rounding of a duration for messages ("3m", "2h5m", "40s").
pub fn rough_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn unix_now() -> i64 {
    unix_seconds(SystemTime::now())
}

pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The controller's Ed25519 grant-signing key.
pub struct SigningKey {
    secret: AsymmetricSecretKey<V4>,
    public: VerifyingKey,
}

impl SigningKey {
    pub fn generate() -> Result<Self, GrantError> {
        let pair = AsymmetricKeyPair::<V4>::generate()
            .map_err(|_| GrantError::Malformed("key generation failed".into()))?;
        Ok(Self {
            public: VerifyingKey::new(pair.public),
            secret: pair.secret,
        })
    }

    /// Reads a PASERK `k4.secret.…` string.
    pub fn from_paserk(text: &str) -> Result<Self, GrantError> {
        let secret = AsymmetricSecretKey::<V4>::try_from(text.trim())
            .map_err(|_| GrantError::Malformed("not a k4.secret PASERK".into()))?;
        let public = AsymmetricPublicKey::<V4>::try_from(&secret)
            .map_err(|_| GrantError::Malformed("bad secret key".into()))?;
        Ok(Self {
            public: VerifyingKey::new(public),
            secret,
        })
    }

    pub fn to_paserk(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = self.secret.fmt(&mut out);
        out
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.public
    }

    /// Signs `claims`, binding the token to `claims.key_sha256` as the implicit assertion.
    pub fn sign(&self, claims: &GrantClaims) -> Result<String, GrantError> {
        let binding = decode_key_hash(&claims.key_sha256)?;
        let message =
            serde_json::to_vec(claims).map_err(|e| GrantError::Malformed(e.to_string()))?;
        let footer = serde_json::to_vec(&Footer {
            kid: self.public.kid.clone(),
        })
        .map_err(|e| GrantError::Malformed(e.to_string()))?;
        PublicToken::sign(&self.secret, &message, Some(&footer), Some(&binding))
            .map_err(|e| GrantError::Malformed(format!("signing failed: {e:?}")))
    }
}

/// A public key that grants may be signed with, and its PASERK id (`k4.pid.…`).
#[derive(Clone)]
pub struct VerifyingKey {
    public: AsymmetricPublicKey<V4>,
    kid: String,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kid)
    }
}

impl VerifyingKey {
    fn new(public: AsymmetricPublicKey<V4>) -> Self {
        let mut kid = String::new();
        let _ = Id::from(&public).fmt(&mut kid);
        Self { public, kid }
    }

    /// Reads a PASERK `k4.public.…` string.
    pub fn from_paserk(text: &str) -> Result<Self, GrantError> {
        AsymmetricPublicKey::<V4>::try_from(text.trim())
            .map(Self::new)
            .map_err(|_| GrantError::Malformed("not a k4.public PASERK".into()))
    }

    pub fn to_paserk(&self) -> String {
        let mut out = String::new();
        let _ = self.public.fmt(&mut out);
        out
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
}

fn decode_key_hash(hex_text: &str) -> Result<[u8; 32], GrantError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out)
        .map_err(|_| GrantError::Malformed("key_sha256 is not 64 hex digits".into()))?;
    Ok(out)
}

/// Where a grant is being checked: the agent's id and labels.
#[derive(Debug, Clone)]
pub struct Audience {
    pub agent_id: String,
    pub labels: Vec<String>,
}

/// A grant whose signature is valid for its own binding and that covers this agent; what an
/// agent stores when the controller pushes a grant. Not yet usable for reading: see
/// [`GrantVerifier::verify_for_use`].
#[derive(Debug, Clone)]
pub struct ReceivedGrant {
    token: String,
    claims: GrantClaims,
    globs: Vec<GlobMatcher>,
}

impl ReceivedGrant {
    pub fn claims(&self) -> &GrantClaims {
        &self.claims
    }
    pub fn token(&self) -> &str {
        &self.token
    }
    /// Whether a normalised absolute path is matched by one of the grant's globs (compiled
    /// once, on receipt).
    pub fn covers_path(&self, path: &str) -> bool {
        self.globs.iter().any(|g| g.is_match(path))
    }
}

/// A grant that passed every check for one reader on this agent at one moment. Only
/// [`GrantVerifier::verify_for_use`] builds it.
#[derive(Debug, Clone)]
pub struct VerifiedGrant {
    claims: GrantClaims,
    globs: Vec<GlobMatcher>,
}

impl VerifiedGrant {
    pub fn claims(&self) -> &GrantClaims {
        &self.claims
    }
    pub fn id(&self) -> &str {
        &self.claims.jti
    }
    pub fn not_after(&self) -> i64 {
        self.claims.exp
    }
    /// Whether a normalised absolute path is matched by one of the grant's globs.
    pub fn covers_path(&self, path: &str) -> bool {
        self.globs.iter().any(|g| g.is_match(path))
    }
}

/// The rule for a grant's `redaction` claim, owned by the redaction engine that defines the
/// profiles (one rule, no copy).
pub use loggate_redact::is_valid_redaction_name;

/// Compiles a grant path glob. `*` and `?` never cross `/`; `**` does.
pub fn compile_path_glob(pattern: &str) -> Result<GlobMatcher, GrantError> {
    if !pattern.starts_with('/') {
        return Err(GrantError::Malformed(format!(
            "path glob {pattern:?} must be an absolute path (start with '/')"
        )));
    }
    if pattern.split('/').any(|c| c == "..") {
        return Err(GrantError::Malformed(format!(
            "path glob {pattern:?} must not contain '..'"
        )));
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| GrantError::Malformed(format!("path glob {pattern:?}: {e}")))
}

/// Checks grant tokens against the trusted keys. The one verifier of the product.
#[derive(Debug, Clone)]
pub struct GrantVerifier {
    keys: Vec<VerifyingKey>,
    /// Tolerated clock skew, applied to the start of a grant only (an agent whose clock runs
    /// behind the controller's must not refuse a fresh grant; expiry is never extended).
    skew: i64,
}

/// Largest token accepted (bytes): grants are small; anything bigger is hostile.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

impl GrantVerifier {
    pub fn new(keys: Vec<VerifyingKey>, skew: Duration) -> Self {
        Self {
            keys,
            skew: i64::try_from(skew.as_secs()).unwrap_or(60),
        }
    }

    /// Parses the token and finds its key; returns the untrusted claims for error precision only.
    fn open(
        &self,
        token: &str,
    ) -> Result<(UntrustedToken<Public, V4>, &VerifyingKey, GrantClaims), GrantError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(GrantError::Malformed("token too large".into()));
        }
        let untrusted = UntrustedToken::<Public, V4>::try_from(token)
            .map_err(|_| GrantError::Malformed("not a v4.public PASETO".into()))?;
        let footer: Footer = serde_json::from_slice(untrusted.untrusted_footer())
            .map_err(|_| GrantError::Malformed("footer does not name a key".into()))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == footer.kid)
            .ok_or_else(|| GrantError::UnknownKey(footer.kid.clone()))?;
        let claims: GrantClaims = serde_json::from_slice(untrusted.untrusted_payload())
            .map_err(|e| GrantError::Malformed(format!("claims: {e}")))?;
        Ok((untrusted, key, claims))
    }

    fn check_signature(
        untrusted: &UntrustedToken<Public, V4>,
        key: &VerifyingKey,
        binding: &[u8; 32],
    ) -> Result<(), GrantError> {
        PublicToken::verify(&key.public, untrusted, None, Some(binding))
            .map(|_| ())
            .map_err(|_| GrantError::BadSignature)
    }

    fn check_shape(claims: &GrantClaims) -> Result<Vec<GlobMatcher>, GrantError> {
        if claims.paths.is_empty() {
            return Err(GrantError::Malformed("grant names no paths".into()));
        }
        if claims.exp <= claims.nbf {
            return Err(GrantError::Malformed("grant ends before it starts".into()));
        }
        claims.paths.iter().map(|p| compile_path_glob(p)).collect()
    }

    fn check_audience(claims: &GrantClaims, audience: &Audience) -> Result<(), GrantError> {
        let by_host = claims.hosts.contains(&audience.agent_id);
        let by_label = claims.labels.iter().any(|l| audience.labels.contains(l));
        if by_host || by_label {
            Ok(())
        } else {
            Err(GrantError::WrongHost {
                grant_id: claims.jti.clone(),
                host: audience.agent_id.clone(),
            })
        }
    }

    /// Checks a pushed grant on receipt: signed by a trusted key for the binding it claims, well
    /// formed, covering this agent, and not already expired.
    pub fn verify_on_receipt(
        &self,
        token: &str,
        audience: &Audience,
        now: i64,
    ) -> Result<ReceivedGrant, GrantError> {
        let (untrusted, key, claims) = self.open(token)?;
        let binding = decode_key_hash(&claims.key_sha256)?;
        Self::check_signature(&untrusted, key, &binding)?;
        let globs = Self::check_shape(&claims)?;
        Self::check_audience(&claims, audience)?;
        if now >= claims.exp {
            return Err(GrantError::Expired {
                grant_id: claims.jti.clone(),
                ago: rough_duration(now - claims.exp),
            });
        }
        Ok(ReceivedGrant {
            token: token.to_string(),
            claims,
            globs,
        })
    }

    /// Checks a grant for one read, by one reader, now. Every check must pass: signature by a
    /// trusted key over the reader's own certificate key, subject, host, time window.
    /// Revocation and the path are checked by the caller against its own state.
    pub fn verify_for_use(
        &self,
        token: &str,
        reader: &Identity,
        audience: &Audience,
        now: i64,
    ) -> Result<VerifiedGrant, GrantError> {
        let (untrusted, key, claims) = self.open(token)?;
        // The claimed binding is only used to say *why* the signature would fail.
        if claims.key_sha256 != reader.key_sha256_hex() {
            return Err(GrantError::BoundToAnotherKey {
                grant_id: claims.jti.clone(),
            });
        }
        Self::check_signature(&untrusted, key, reader.key_sha256())?;
        let globs = Self::check_shape(&claims)?;
        if claims.sub != reader.spiffe_id() {
            return Err(GrantError::WrongSubject {
                grant_id: claims.jti.clone(),
                subject: claims.sub.clone(),
            });
        }
        Self::check_audience(&claims, audience)?;
        if now < claims.nbf.saturating_sub(self.skew) {
            return Err(GrantError::NotYetValid {
                grant_id: claims.jti.clone(),
                starts_in: rough_duration(claims.nbf - now),
            });
        }
        if now >= claims.exp {
            return Err(GrantError::Expired {
                grant_id: claims.jti.clone(),
                ago: rough_duration(now - claims.exp),
            });
        }
        Ok(VerifiedGrant { claims, globs })
    }
}

/// A fresh grant id: `g-` and 16 random hex digits.
pub fn new_grant_id() -> String {
    format!("g-{}", hex::encode(rand::random::<[u8; 8]>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_stays_within_one_path_component_and_double_star_crosses() {
        let g = compile_path_glob("/var/log/app/*.log").unwrap();
        assert!(g.is_match("/var/log/app/api.log"));
        assert!(!g.is_match("/var/log/app/sub/secret.log"));
        assert!(!g.is_match("/var/log/app/api.log.1"));
        let g = compile_path_glob("/var/log/app/**/*.log").unwrap();
        assert!(g.is_match("/var/log/app/sub/deep/x.log"));
        assert!(g.is_match("/var/log/app/x.log"));
        let g = compile_path_glob("/var/log/app/api-?.log").unwrap();
        assert!(!g.is_match("/var/log/app/api-/.log"));
    }

    #[test]
    fn relative_and_dotdot_globs_are_refused() {
        assert!(compile_path_glob("var/log/*.log").is_err());
        assert!(compile_path_glob("/var/log/../etc/*").is_err());
    }

    fn claims(key: &str) -> GrantClaims {
        GrantClaims {
            jti: "g-0000000000000001".into(),
            iss: "spiffe://t/controller".into(),
            sub: "spiffe://t/user/alice".into(),
            iat: 100,
            nbf: 100,
            exp: 200,
            hosts: vec!["web-1".into()],
            labels: vec!["env=prod".into()],
            paths: vec!["/var/log/*.log".into()],
            redaction: "default".into(),
            reason: "r".into(),
            approver: "spiffe://t/user/admin".into(),
            key_sha256: key.into(),
        }
    }

    #[test]
    fn signature_is_checked_against_the_readers_own_key_hash() {
        let key = SigningKey::generate().unwrap();
        let verifier =
            GrantVerifier::new(vec![key.verifying_key().clone()], Duration::from_secs(60));
        let web1 = Audience {
            agent_id: "web-1".into(),
            labels: vec![],
        };
        let alice_key = [0xab; 32];
        let alice = crate::identity::Identity::for_tests("spiffe://t/user/alice", "t", alice_key);
        let genuine = key.sign(&claims(&hex::encode(alice_key))).unwrap();
        assert!(verifier
            .verify_for_use(&genuine, &alice, &web1, 150)
            .is_ok());
        // Claims naming alice's key, but signed over another key hash (the implicit assertion):
        // the claim alone must not be trusted.
        let message = serde_json::to_vec(&claims(&hex::encode(alice_key))).unwrap();
        let footer = serde_json::to_vec(&Footer {
            kid: key.verifying_key().kid().to_string(),
        })
        .unwrap();
        let other_binding = [0xcd; 32];
        let crossed =
            PublicToken::sign(&key.secret, &message, Some(&footer), Some(&other_binding)).unwrap();
        assert_eq!(
            verifier
                .verify_for_use(&crossed, &alice, &web1, 150)
                .unwrap_err(),
            GrantError::BadSignature
        );
        assert!(matches!(
            verifier.verify_on_receipt(&crossed, &web1, 150),
            Err(GrantError::BadSignature)
        ));
        // Someone else presenting alice's genuine grant.
        let mallory =
            crate::identity::Identity::for_tests("spiffe://t/user/alice", "t", [0x11; 32]);
        assert!(matches!(
            verifier.verify_for_use(&genuine, &mallory, &web1, 150),
            Err(GrantError::BoundToAnotherKey { .. })
        ));
        // Time window: not before nbf − skew, not at or after exp.
        assert!(verifier
            .verify_for_use(&genuine, &alice, &web1, 100 - 60)
            .is_ok());
        assert!(matches!(
            verifier.verify_for_use(&genuine, &alice, &web1, 100 - 61),
            Err(GrantError::NotYetValid { .. })
        ));
        assert!(matches!(
            verifier.verify_for_use(&genuine, &alice, &web1, 200),
            Err(GrantError::Expired { .. })
        ));
    }

    #[test]
    fn receipt_checks_key_signature_audience_and_expiry() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let verifier =
            GrantVerifier::new(vec![key.verifying_key().clone()], Duration::from_secs(60));
        let web1 = Audience {
            agent_id: "web-1".into(),
            labels: vec![],
        };
        let by_label = Audience {
            agent_id: "db-1".into(),
            labels: vec!["env=prod".into()],
        };
        let web2 = Audience {
            agent_id: "web-2".into(),
            labels: vec![],
        };
        let token = key.sign(&claims(&"ab".repeat(32))).unwrap();
        assert!(verifier.verify_on_receipt(&token, &web1, 150).is_ok());
        assert!(verifier.verify_on_receipt(&token, &by_label, 150).is_ok());
        assert!(matches!(
            verifier.verify_on_receipt(&token, &web2, 150),
            Err(GrantError::WrongHost { .. })
        ));
        assert!(matches!(
            verifier.verify_on_receipt(&token, &web1, 200),
            Err(GrantError::Expired { .. })
        ));
        let foreign = other.sign(&claims(&"ab".repeat(32))).unwrap();
        assert!(matches!(
            verifier.verify_on_receipt(&foreign, &web1, 150),
            Err(GrantError::UnknownKey(_))
        ));
        // Claims rewritten under the same signature: the binding check fails the signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged_footer = foreign.split('.').nth(3).unwrap();
        parts[3] = forged_footer;
        let mixed = parts.join(".");
        assert!(matches!(
            verifier.verify_on_receipt(&mixed, &web1, 150),
            Err(GrantError::UnknownKey(_))
        ));
        assert!(matches!(
            verifier.verify_on_receipt("v4.public.garbage", &web1, 150),
            Err(GrantError::Malformed(_))
        ));
        let huge = "v4.public.".to_string() + &"A".repeat(MAX_TOKEN_LEN);
        assert!(matches!(
            verifier.verify_on_receipt(&huge, &web1, 150),
            Err(GrantError::Malformed(_))
        ));
    }
}
