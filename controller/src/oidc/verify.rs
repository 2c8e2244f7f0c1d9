//! The sign-in decision: an ID token, the nonce the CLI sent and its certificate request in;
//! a [`VerifiedSignIn`] (who, and the key to certify) or the reason for refusal out.
//!
//! The JWT itself (signature, `iss`, `aud`, `exp`, `iat`, `nonce`, algorithms) is checked by
//! the `openidconnect` crate; this module configures it strictly (only the asymmetric
//! algorithms the IdP advertises, a bounded clock skew on both sides, the nonce compared with
//! the one sent *and* committing to the request's key) and adds what it leaves to the relying
//! party: `azp`, `nbf`, `email_verified`, the allowed domains and the user name.

use super::binding::nonce_commits_to_key;
use super::csr::check_request;
use super::keys::{IdpKeys, Snapshot};
use super::{RefusalReason, SignInRefused};
use crate::config::{OidcSettings, UsernameClaim};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{CoreIdToken, CoreIdTokenVerifier, CoreJwsSigningAlgorithm};
use openidconnect::{
    ClaimsVerificationError, ClientId, IssuerUrl, JwsSigningAlgorithm, Nonce,
    SignatureVerificationError,
};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// The longest ID token read (most are 1–4 KiB; groups in the token make 20 KiB ones).
/// With [`crate::oidc::csr::MAX_CSR_BYTES`] it fits the port's request limit
/// ([`crate::service::enrol::MAX_ENROL_REQUEST_BYTES`]), so a longer one is refused here,
/// audited (`malformed_token`), not by the transport.
pub const MAX_ID_TOKEN_BYTES: usize = 48 * 1024;
/// How long after its issue a token without a nonce is taken.
pub const MAX_UNBOUND_AGE: std::time::Duration = std::time::Duration::from_secs(300);
/// Groups kept from the groups claim, and the longest group name.
const MAX_GROUPS: usize = 256;
const MAX_GROUP_BYTES: usize = 256;

/// A sign-in that passed every check: the person and the key to certify.
#[derive(Debug, Clone)]
pub struct VerifiedSignIn {
    /// The loggate user name (from the configured claim, validated).
    pub user: String,
    /// The IdP's `sub`.
    pub idp_subject: String,
    pub email: Option<String>,
    /// From `groups_claim` (bounded); `None` when no `groups_claim` is configured or the
    /// token does not carry it as a list (the person's groups are then unknown, which the
    /// sign-in refuses when the access policy names IdP groups).
    pub groups: Option<Vec<String>>,
    /// When the person last authenticated at the IdP (`auth_time`; 0 when the IdP did not say; unix s): a
    /// policy's step-up `max_age` is measured from it.
    pub auth_time: i64,
    /// How they authenticated (`amr`, RFC 8176; at most 16 values kept), when the IdP says.
    pub amr: Vec<String>,
    /// The certificate request's SubjectPublicKeyInfo (DER).
    pub spki_der: Vec<u8>,
    /// Set for a token without a nonce: the caller takes it once
    /// ([`crate::store::Store::take_unbound_token`]) before issuing anything.
    pub unbound: Option<UnboundToken>,
}

/// A token without a nonce that passed every check but its single use.
#[derive(Debug, Clone)]
pub struct UnboundToken {
    /// SHA-256 (hex) of the signing input `header.payload`: what the IdP signed, the same for
    /// every encoding of the signature.
    pub signed_sha256: String,
    /// Unix seconds after which the token can no longer be accepted (its use need not be
    /// remembered beyond): `min(exp, iat + MAX_UNBOUND_AGE) + skew`.
    pub forget_at: i64,
}

/// Verifies sign-ins against one IdP.
pub struct SignInVerifier {
    settings: Arc<OidcSettings>,
    keys: IdpKeys,
}

impl SignInVerifier {
    pub fn new(settings: Arc<OidcSettings>) -> anyhow::Result<SignInVerifier> {
        let keys = IdpKeys::new(&settings)?;
        Ok(SignInVerifier { settings, keys })
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    /// Every check of a sign-in, in order: the request and its key, the nonce's commitment to
    /// it, then the token.
    pub async fn verify(
        &self,
        id_token: &str,
        nonce: &str,
        csr_der: &[u8],
        now: SystemTime,
    ) -> Result<VerifiedSignIn, SignInRefused> {
        let request = check_request(csr_der)?;
        if !nonce_commits_to_key(nonce, &request.spki_der) {
            return Err(SignInRefused::new(
                RefusalReason::Nonce,
                "the nonce does not commit to the certificate request's key (a token obtained \
                 for another key): run `loggate login` again",
            ));
        }
        if id_token.is_empty() || id_token.len() > MAX_ID_TOKEN_BYTES {
            return Err(SignInRefused::new(
                RefusalReason::Malformed,
                format!(
                    "the ID token is {} bytes; at most {MAX_ID_TOKEN_BYTES}",
                    id_token.len()
                ),
            ));
        }
        let token: CoreIdToken = id_token.parse().map_err(|e| {
            SignInRefused::new(
                RefusalReason::Malformed,
                format!("the ID token is not a signed JWT: {e}"),
            )
        })?;
        let snapshot = self.keys.current().await?;
        let claims = match self.check_token(&token, nonce, &snapshot, now) {
            Err(refused) if refused.reason == RefusalReason::UnknownKey => {
                match self.keys.refetch().await {
                    Some(fresh) => self.check_token(&token, nonce, &fresh, now)?,
                    None => return Err(refused),
                }
            }
            other => other?,
        };
        let raw = raw_payload(id_token)?;
        self.check_not_before(&raw, now)?;
        let unbound = match claims.nonce() {
            Some(_) => None,
            None => Some(self.check_unbound(
                id_token,
                claims.issue_time().timestamp(),
                claims.expiration().timestamp(),
                now,
            )?),
        };
        if let Some(azp) = claims.authorized_party() {
            if azp.as_str() != self.settings.client_id {
                return Err(SignInRefused::new(
                    RefusalReason::Audience,
                    format!(
                        "the token was issued to client {:?} (azp), not loggate's",
                        azp.as_str()
                    ),
                ));
            }
        }
        let email = claims.email().map(|e| e.as_str().to_string());
        self.check_email(email.as_deref(), claims.email_verified())?;
        self.check_hosted_domain(&raw)?;
        let user = self.user_name(
            email.as_deref(),
            claims.preferred_username().map(|u| u.as_str()),
            claims.subject().as_str(),
        )?;
        Ok(VerifiedSignIn {
            user,
            idp_subject: claims.subject().as_str().to_string(),
            email,
            groups: self.groups(&raw),
            // No `auth_time`: the token says when it was issued, not when the person last
            // proved who they are (a silent SSO login issues fresh tokens from an old session).
            // 0 meets no `max_age` rule; `loggate login --fresh` asks with `max_age=0`, which
            // obliges the IdP to send it.
            auth_time: claims.auth_time().map_or(0, |t| t.timestamp()),
            amr: claims
                .auth_method_refs()
                .map(|refs| {
                    refs.iter()
                        .map(|r| r.as_str().to_string())
                        .filter(|r| r.len() <= 64)
                        .take(16)
                        .collect()
                })
                .unwrap_or_default(),
            spki_der: request.spki_der,
            unbound,
        })
    }

    /// The library's checks, configured strictly; its errors classified by type.
    fn check_token(
        &self,
        token: &CoreIdToken,
        nonce: &str,
        snapshot: &Snapshot,
        now: SystemTime,
    ) -> Result<openidconnect::core::CoreIdTokenClaims, SignInRefused> {
        let issuer = IssuerUrl::new(self.settings.issuer.clone()).map_err(|e| {
            SignInRefused::new(RefusalReason::NotConfigured, format!("oidc.issuer: {e}"))
        })?;
        let algs: Vec<CoreJwsSigningAlgorithm> = snapshot
            .metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|alg| !alg.uses_shared_secret() && **alg != CoreJwsSigningAlgorithm::None)
            .cloned()
            .collect();
        let skew = chrono::Duration::from_std(self.settings.max_clock_skew).unwrap_or_default();
        let now_utc: chrono::DateTime<chrono::Utc> = now.into();
        let iat_in_future = Arc::new(AtomicBool::new(false));
        let iat_flag = iat_in_future.clone();
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(self.settings.client_id.clone()),
            issuer,
            (*snapshot.keys).clone(),
        )
        .set_allowed_algs(algs)
        // `exp` may be up to `skew` in the past, `iat` up to `skew` in the future.
        .set_time_fn(move || now_utc - skew)
        .set_issue_time_verifier_fn(move |iat| {
            if iat > now_utc + skew {
                iat_flag.store(true, Ordering::Relaxed);
                Err(format!("issued at {iat}, in the future"))
            } else {
                Ok(())
            }
        });
        let sent = Sha256::digest(nonce.as_bytes());
        let allow_unbound = self.settings.allow_unbound_device_tokens;
        let nonce_check = |claim: Option<&Nonce>| match claim {
            Some(n) if Sha256::digest(n.secret().as_bytes()) == sent => Ok(()),
            Some(_) => Err("the token's nonce is not the one sent".to_string()),
            // The device flow has no nonce: see `check_unbound`.
            None if allow_unbound => Ok(()),
            None => {
                Err("the token has no nonce (oidc.allow_unbound_device_tokens is off)".to_string())
            }
        };
        token
            .clone()
            .into_claims(&verifier, nonce_check)
            .map_err(|e| classify(e, iat_in_future.load(Ordering::Relaxed)))
    }

    /// A token without a nonce (the device flow: RFC 8628 has none, and IdPs drop it) cannot
    /// be bound to the request's key. It is taken only fresh (issued at most
    /// [`MAX_UNBOUND_AGE`] ago) and only once: the caller records its [`UnboundToken`] in the
    /// store, and a copy — however its signature is re-encoded — is refused (`replayed`).
    fn check_unbound(
        &self,
        id_token: &str,
        iat: i64,
        exp: i64,
        now: SystemTime,
    ) -> Result<UnboundToken, SignInRefused> {
        let now_s = unix_seconds(now);
        let skew = i64::try_from(self.settings.max_clock_skew.as_secs()).unwrap_or(i64::MAX);
        let max_age = i64::try_from(MAX_UNBOUND_AGE.as_secs()).unwrap_or(i64::MAX);
        if now_s.saturating_sub(iat) > max_age.saturating_add(skew) {
            return Err(SignInRefused::new(
                RefusalReason::Nonce,
                format!(
                    "a token without a nonce (device flow) must be used within {} minutes of \
                     its issue: run `loggate login` again",
                    max_age / 60
                ),
            ));
        }
        // The library accepts the token until `exp + skew` (its clock runs `skew` behind).
        let forget_at = exp.min(iat.saturating_add(max_age)).saturating_add(skew);
        let Some((signing_input, _signature)) = id_token.rsplit_once('.') else {
            return Err(SignInRefused::new(
                RefusalReason::Malformed,
                "the ID token is not a signed JWT",
            ));
        };
        Ok(UnboundToken {
            signed_sha256: hex::encode(Sha256::digest(signing_input.as_bytes())),
            forget_at,
        })
    }

    fn check_not_before(
        &self,
        raw: &serde_json::Value,
        now: SystemTime,
    ) -> Result<(), SignInRefused> {
        let Some(nbf) = raw.get("nbf") else {
            return Ok(());
        };
        let now_s = unix_seconds(now);
        let skew = i64::try_from(self.settings.max_clock_skew.as_secs()).unwrap_or(i64::MAX);
        match nbf.as_i64() {
            Some(nbf) if nbf <= now_s.saturating_add(skew) => Ok(()),
            _ => Err(SignInRefused::new(
                RefusalReason::NotYetValid,
                "the token is not valid yet (nbf); check the clocks",
            )),
        }
    }

    /// With `hosted_domain` set, the token's `hd` claim (Google Workspace) must equal it: the
    /// e-mail's domain alone does not prove the account is the organisation's.
    fn check_hosted_domain(&self, raw: &serde_json::Value) -> Result<(), SignInRefused> {
        let Some(wanted) = &self.settings.hosted_domain else {
            return Ok(());
        };
        match raw.get("hd").and_then(|v| v.as_str()) {
            Some(hd) if hd.eq_ignore_ascii_case(wanted) => Ok(()),
            Some(hd) => Err(SignInRefused::new(
                RefusalReason::Domain,
                format!(
                    "the account belongs to the hosted domain {:?}, not {wanted:?} \
                     (oidc.hosted_domain)",
                    hd.chars().take(256).collect::<String>()
                ),
            )),
            None => Err(SignInRefused::new(
                RefusalReason::Domain,
                format!(
                    "the account is not in the hosted domain {wanted:?} (the token has no hd \
                     claim: a personal account; oidc.hosted_domain)"
                ),
            )),
        }
    }

    fn check_email(
        &self,
        email: Option<&str>,
        verified: Option<bool>,
    ) -> Result<(), SignInRefused> {
        let s = &self.settings;
        let needs_email = s.require_email_verified
            || !s.allowed_email_domains.is_empty()
            || s.username_claim == UsernameClaim::Email;
        let Some(email) = email else {
            if needs_email {
                return Err(SignInRefused::new(
                    RefusalReason::MissingClaim,
                    "the token has no email claim: ask for the \"email\" scope (oidc.scopes) \
                     and make the IdP put it in the ID token",
                ));
            }
            return Ok(());
        };
        if s.require_email_verified && verified != Some(true) {
            return Err(SignInRefused::new(
                RefusalReason::EmailNotVerified,
                format!("the IdP has not verified the e-mail address {email:?}"),
            ));
        }
        if !s.allowed_email_domains.is_empty() {
            let domain = email
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
            if !s.allowed_email_domains.contains(&domain) {
                return Err(SignInRefused::new(
                    RefusalReason::Domain,
                    format!(
                        "e-mail domain {domain:?} may not sign in (oidc.allowed_email_domains)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The loggate user name from the configured claim; refused unless it is a valid name as
    /// it is (no case folding or character mapping that could make two people one).
    fn user_name(
        &self,
        email: Option<&str>,
        preferred_username: Option<&str>,
        sub: &str,
    ) -> Result<String, SignInRefused> {
        let claim = self.settings.username_claim;
        let value = match claim {
            UsernameClaim::Email => email
                .and_then(|e| e.rsplit_once('@'))
                .map(|(local, _)| local),
            UsernameClaim::PreferredUsername => preferred_username,
            UsernameClaim::Sub => Some(sub),
        };
        let Some(value) = value else {
            return Err(SignInRefused::new(
                RefusalReason::MissingClaim,
                format!(
                    "the token has no {} claim (oidc.username_claim)",
                    claim.as_str()
                ),
            ));
        };
        if !loggate_core::identity::is_valid_name(value) {
            let shown: String = value.chars().take(64).collect();
            return Err(SignInRefused::new(
                RefusalReason::InvalidUsername,
                format!(
                    "{} {shown:?} is not a loggate user name (lowercase letters, digits and \
                     dashes, at most 63); ask an admin to pick another oidc.username_claim",
                    claim.as_str()
                ),
            ));
        }
        Ok(value.to_string())
    }

    fn groups(&self, raw: &serde_json::Value) -> Option<Vec<String>> {
        let name = self.settings.groups_claim.as_ref()?;
        raw.get(name).and_then(|v| v.as_array()).map(|items| {
            items
                .iter()
                .filter_map(|g| g.as_str())
                .filter(|g| usable_group(g))
                .take(MAX_GROUPS)
                .map(String::from)
                .collect()
        })
    }
}

/// Whether an IdP group name is kept: not empty, at most [`MAX_GROUP_BYTES`], and with no
/// control, format (bidi, zero-width) or separator character — such a name shown in
/// `user list`, a notice or the audit could pass for another (`pay\u{202E}stnemyap`), and no
/// policy can name it usefully. A dropped group gives nothing: it fails closed.
fn usable_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= MAX_GROUP_BYTES
        && !g.chars().any(crate::policy::text::is_hidden_or_control)
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The payload of a token whose signature the library has verified, as JSON: for the claims
/// it does not model (`nbf`, the groups claim, `hd`). Never used before verification. A payload
/// this strict decoding refuses (the library's allows trailing bits) is refused, not read as
/// empty: an empty payload would let `nbf` and `hd` pass unchecked.
fn raw_payload(token: &str) -> Result<serde_json::Value, SignInRefused> {
    token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter(serde_json::Value::is_object)
        .ok_or_else(|| {
            SignInRefused::new(
                RefusalReason::Malformed,
                "the ID token's payload is not canonical base64url JSON",
            )
        })
}

/// The refusal for a verifier error, by its type.
fn classify(e: ClaimsVerificationError, iat_in_future: bool) -> SignInRefused {
    use ClaimsVerificationError as C;
    use SignatureVerificationError as S;
    let detail = super::keys::error_chain(&e);
    let reason = match &e {
        C::InvalidIssuer(_) => RefusalReason::Issuer,
        C::InvalidAudience(_) => RefusalReason::Audience,
        C::Expired(_) if iat_in_future => RefusalReason::NotYetValid,
        C::Expired(_) => RefusalReason::Expired,
        C::InvalidNonce(_) => RefusalReason::Nonce,
        C::SignatureVerification(S::NoMatchingKey) => RefusalReason::UnknownKey,
        C::SignatureVerification(S::DisallowedAlg(_) | S::UnsupportedAlg(_) | S::NoSignature) => {
            RefusalReason::Algorithm
        }
        C::SignatureVerification(_) => RefusalReason::Signature,
        _ => RefusalReason::Malformed,
    };
    let detail = match reason {
        // The library reports a bad `iat` as "Expired: …".
        RefusalReason::NotYetValid => format!(
            "the ID token was issued in the future beyond the allowed clock skew ({detail}); \
             check the clocks of this host and the IdP"
        ),
        _ => format!("the ID token was refused: {detail}"),
    };
    SignInRefused::new(reason, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idp_group_names_with_hidden_or_control_characters_are_dropped() {
        assert!(usable_group("payments-oncall"));
        assert!(usable_group("Payments On-Call"));
        assert!(usable_group("équipe paiements"));
        for hidden in [
            "",
            "pay\u{202E}stnemyap",
            "pay\u{200B}ments",
            "pay\nments",
            "pay\u{2028}ments",
            "pay\u{7}",
        ] {
            assert!(!usable_group(hidden), "{hidden:?}");
        }
        assert!(!usable_group(&"g".repeat(MAX_GROUP_BYTES + 1)));
    }

    #[test]
    fn a_payload_that_does_not_decode_strictly_is_refused_not_read_as_empty() {
        // 19 bytes: 26 characters, the last one carrying 4 unused bits.
        let payload = URL_SAFE_NO_PAD.encode(br#"{"nbf": 4102444800}"#);
        assert_eq!(payload.len(), 26);
        let good = format!("e30.{payload}.sig");
        assert_eq!(
            raw_payload(&good).ok().and_then(|v| v.get("nbf").cloned()),
            Some(serde_json::json!(4_102_444_800_u64))
        );
        // The same payload with non-zero trailing bits in its last character: the library
        // accepts it; read as Null, `nbf` (year 2100) would pass.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut odd = payload.into_bytes();
        if let Some(last) = odd.last_mut() {
            if let Some(i) = ALPHABET.iter().position(|c| c == last) {
                *last = ALPHABET[i ^ 1];
            }
        }
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::URL_SAFE,
            base64::engine::general_purpose::NO_PAD.with_decode_allow_trailing_bits(true),
        );
        assert!(
            lenient.decode(&odd).is_ok(),
            "the library's decoding takes it"
        );
        let odd = format!("e30.{}.sig", String::from_utf8_lossy(&odd));
        let refused = raw_payload(&odd).expect_err("non-canonical");
        assert_eq!(refused.reason, RefusalReason::Malformed);
    }
}
