//! Sign-in with the organisation's OpenID Provider (`loggate login`, issue #22).
//!
//! The CLI signs the person in at the IdP (authorization code + PKCE with a loopback redirect,
//! or the device flow), makes its own key pair, and sends the controller the ID token, the
//! nonce it used and a certificate request for its key. The controller ([`verify`]) checks the
//! token with the `openidconnect` crate against the IdP's discovered metadata and keys
//! ([`keys`]), checks that the nonce commits to the request's public key ([`binding`]), takes
//! the person's name from the configured claim and signs a short-lived certificate for
//! `spiffe://<trust-domain>/user/<name>`. The identity comes from the token, never from the
//! request.
//!
//! Threat model and settings per IdP: `docs/identity.md`.

pub mod binding;
pub mod csr;
pub mod keys;
pub mod verify;

/// Why a sign-in was refused: the `reason_code` of its `auth.sign_in_refused` record and the
/// category the person is told. Classified from the verifier's error types, never from text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The token is not a well-formed signed JWT.
    Malformed,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `aud` does not name loggate's client, names untrusted others, or `azp` is another client.
    Audience,
    /// `exp` has passed (beyond the allowed clock skew).
    Expired,
    /// `iat` is in the future beyond the allowed clock skew, or `nbf` has not come yet.
    NotYetValid,
    /// The signature does not verify with the IdP's key.
    Signature,
    /// An algorithm the IdP does not advertise, `none`, or an HMAC.
    Algorithm,
    /// No key of the IdP has the token's `kid`, even after fetching the key set again.
    UnknownKey,
    /// The nonce is missing (and unbound tokens are not allowed, or this one is too old), is
    /// not the one sent, or does not commit to the request's key.
    Nonce,
    /// A token without a nonce (device flow) used a second time.
    Replayed,
    /// Too many device sign-ins are remembered at once to take another now.
    Busy,
    /// The loggate name is bound to another IdP identity (`iss` + `sub`) than the token's.
    SubjectChanged,
    /// `email_verified` is not `true` while it is required.
    EmailNotVerified,
    /// The e-mail's domain is not in `allowed_email_domains`.
    Domain,
    /// The person is locked out (`loggate user lock`) until an admin unlocks them.
    Locked,
    /// A claim loggate needs (the username claim, `email`, the groups claim when the access
    /// policy names IdP groups) is absent.
    MissingClaim,
    /// The username claim's value cannot be a loggate user name.
    InvalidUsername,
    /// The certificate request's key is too weak or of an unsupported type.
    WeakKey,
    /// The certificate request is malformed or its self-signature does not verify.
    BadRequest,
    /// The IdP's metadata or keys could not be fetched.
    IdpUnavailable,
    /// Sign-in is not configured on this controller (no `[oidc]`).
    NotConfigured,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Malformed => "malformed_token",
            RefusalReason::Issuer => "issuer",
            RefusalReason::Audience => "audience",
            RefusalReason::Expired => "expired",
            RefusalReason::NotYetValid => "not_yet_valid",
            RefusalReason::Signature => "signature",
            RefusalReason::Algorithm => "algorithm",
            RefusalReason::UnknownKey => "unknown_key",
            RefusalReason::Nonce => "nonce",
            RefusalReason::Replayed => "replayed",
            RefusalReason::Busy => "busy",
            RefusalReason::SubjectChanged => "subject_changed",
            RefusalReason::EmailNotVerified => "email_not_verified",
            RefusalReason::Domain => "domain_not_allowed",
            RefusalReason::Locked => "locked",
            RefusalReason::MissingClaim => "missing_claim",
            RefusalReason::InvalidUsername => "invalid_username",
            RefusalReason::WeakKey => "weak_key",
            RefusalReason::BadRequest => "bad_request",
            RefusalReason::IdpUnavailable => "idp_unavailable",
            RefusalReason::NotConfigured => "not_configured",
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused sign-in: the reason and one sentence for the person and the audit record (never
/// the token itself).
#[derive(Debug, Clone, thiserror::Error)]
#[error("sign-in refused ({reason}): {detail}")]
pub struct SignInRefused {
    pub reason: RefusalReason,
    pub detail: String,
}

impl SignInRefused {
    /// `detail` may quote the unverified token (its `aud`, `iss`, header values through the
    /// library's errors): control characters are escaped here (`\n` becomes the two
    /// characters `\` `n`), so no caller can let a hostile token forge lines in the
    /// controller's log or the person's terminal.
    pub fn new(reason: RefusalReason, detail: impl Into<String>) -> Self {
        let detail: String = detail.into();
        let detail = if detail.chars().any(char::is_control) {
            detail
                .chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        } else {
            detail
        };
        SignInRefused { reason, detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_detail_quoting_the_token_cannot_forge_log_lines() {
        let refused = SignInRefused::new(
            RefusalReason::Audience,
            "audience x\nINFO signed in subject=admin\r\u{1b}[2J is not loggate's",
        );
        assert!(!refused.detail.chars().any(char::is_control), "{refused:?}");
        assert!(refused.detail.contains("x\\nINFO signed in"), "{refused:?}");
    }
}
