//! `SignIn` and `SignInConfig`, served on the pre-authentication port with `Enrol` (see
//! `enrol.rs` for that port's bounds: request size, attempts per address and minute).
//!
//! `SignIn` takes an ID token from the organisation's IdP, the nonce `loggate login` sent it
//! and a certificate request; [`crate::oidc::verify`] checks all three, and the runtime CA
//! signs a certificate for `spiffe://<td>/user/<name>` (the name from the token's configured
//! claim, never from the request) valid for `[oidc] cert_ttl`. Every outcome is one audit
//! record, written before the answer: `auth.sign_in` then `auth.certificate_issued`, or
//! `auth.sign_in_refused` with the reason. The token is never logged or recorded.

use crate::oidc::verify::{SignInVerifier, UnboundToken, VerifiedSignIn};
use crate::oidc::{RefusalReason, SignInRefused};
use crate::pki::{Kind, RuntimeCa, Validity};
use crate::store::signins::{Binding, SignInRecord, UnboundUse};
use crate::store::Store;
use loggate_core::audit::{events, AuditEvent, SharedAuditLog};
use loggate_proto as pb;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tonic::Status;

/// What signing people in needs.
pub struct SignInService {
    verifier: SignInVerifier,
    ca: Arc<RuntimeCa>,
    store: Arc<Store>,
    trust_domain: String,
    audit: Arc<SharedAuditLog>,
    /// The controller's commands port, told to the CLI for its configuration file.
    controller_port: u16,
    /// The access policy in force, when there is one: a policy that names IdP groups needs
    /// every sign-in's token to carry the groups claim.
    policy: Option<Arc<crate::policy::PolicyHandle>>,
}

impl SignInService {
    pub fn new(
        verifier: SignInVerifier,
        ca: Arc<RuntimeCa>,
        store: Arc<Store>,
        trust_domain: String,
        audit: Arc<SharedAuditLog>,
        controller_port: u16,
    ) -> Self {
        SignInService {
            verifier,
            ca,
            store,
            trust_domain,
            audit,
            controller_port,
            policy: None,
        }
    }

    /// Reads the access policy in force at each sign-in (see [`Self::check_groups`]).
    pub fn with_policy(mut self, policy: Arc<crate::policy::PolicyHandle>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// What `loggate login` needs to sign in at the IdP.
    pub fn config(&self) -> pb::SignInConfigResponse {
        let s = self.verifier.settings();
        pb::SignInConfigResponse {
            issuer: s.issuer.clone(),
            client_id: s.client_id.clone(),
            scopes: s.scopes.clone(),
            client_secret: s.client_secret.clone().unwrap_or_default(),
        }
    }

    /// `[oidc] attempts_per_minute`: the sign-in budget per source address.
    pub fn attempts_per_minute(&self) -> u32 {
        self.verifier.settings().attempts_per_minute
    }

    /// Records `count` sign-in attempts from `source` refused by its budget without being
    /// checked: one `auth.sign_in_refused` (`rate_limited`), deferred like the enrolment
    /// summaries (`None`: addresses evicted from the budget's table).
    pub fn record_rate_limited(&self, source: Option<std::net::IpAddr>, count: u64) {
        let event = events::AuthSignInRefused {
            peer: source.map(|ip| ip.to_string()),
            issuer: self.verifier.settings().issuer.clone(),
            reason_code: "rate_limited",
            reason: format!(
                "{count} sign-in attempts over the limit of {} a minute from this address \
                 were refused without being checked",
                self.attempts_per_minute()
            ),
            key_sha256: None,
        };
        if let Err(e) = self.audit.append_deferred(&event) {
            tracing::error!("audit write failed: {e:#}");
        }
    }

    fn audit(&self, event: &impl AuditEvent) -> Result<(), Status> {
        tokio::task::block_in_place(|| self.audit.append(event))
            .map(|_| ())
            .map_err(|e| {
                tracing::error!("audit write failed: {e:#}");
                Status::unavailable("the controller cannot write its audit log; try again later")
            })
    }

    /// One sign-in: verified, audited, certified.
    pub async fn sign_in(
        &self,
        peer: SocketAddr,
        request: pb::SignInRequest,
    ) -> Result<pb::SignInResponse, Status> {
        let issuer = self.verifier.settings().issuer.clone();
        let verified = self
            .verifier
            .verify(
                &request.id_token,
                &request.nonce,
                &request.csr_der,
                SystemTime::now(),
            )
            .await;
        let verified = match verified {
            Ok(v) => v,
            Err(refused) => return Err(self.refuse(peer, &issuer, &request.csr_der, refused)),
        };
        let subject = loggate_core::identity::user_spiffe_id(&self.trust_domain, &verified.user)
            .map_err(|e| {
                self.refuse(
                    peer,
                    &issuer,
                    &request.csr_der,
                    SignInRefused::new(RefusalReason::InvalidUsername, e.to_string()),
                )
            })?;
        let unlocked_at = self.check_not_locked(peer, &issuer, &request.csr_der, &verified)?;
        self.check_groups(peer, &issuer, &request.csr_der, &verified)?;
        self.check_binding(peer, &issuer, &request.csr_der, &verified)?;
        if let Some(unbound) = &verified.unbound {
            self.take_unbound(peer, &issuer, &request.csr_der, unbound)?;
        }
        let key_sha256 = hex::encode(Sha256::digest(&verified.spki_der));
        self.audit(&events::AuthSignIn {
            subject: subject.to_string(),
            key_sha256: key_sha256.clone(),
            peer: Some(peer.to_string()),
            issuer: issuer.clone(),
            idp_subject: verified.idp_subject.clone(),
            email: verified.email.clone(),
            groups: verified.groups.clone().unwrap_or_default(),
        })?;
        let ttl = self.verifier.settings().cert_ttl;
        let issued = self
            .ca
            .issue_for_csr(
                &request.csr_der,
                &self.trust_domain,
                Kind::User,
                &verified.user,
                starting_after(Validity::for_lifetime(ttl), unlocked_at),
            )
            .map_err(|e| {
                tracing::error!("cannot sign a certificate for {subject}: {e:#}");
                Status::internal("the controller could not sign the certificate; try again later")
            })?
            .map_err(|refused| {
                // The verifier checked the request already; the CA's own check is the backstop.
                self.refuse(
                    peer,
                    &issuer,
                    &request.csr_der,
                    SignInRefused::new(RefusalReason::WeakKey, refused.to_string()),
                )
            })?;
        // The person's grants are bound to this key from now on (a new sign-in, a new key).
        self.store
            .set_user_key(
                subject.as_str(),
                &key_sha256,
                loggate_core::grant::unix_now(),
            )
            .and_then(|()| {
                // The groups count for the policy only with this key (`ControllerService::user`).
                self.store.record_sign_in(&SignInRecord {
                    name: &verified.user,
                    key_sha256: &key_sha256,
                    groups: verified.groups.as_deref().unwrap_or_default(),
                    now: loggate_core::grant::unix_now(),
                    cert_not_after: issued.not_after_unix,
                    auth_time: verified.auth_time,
                    amr: &verified.amr,
                })
            })
            .map_err(|e| {
                tracing::error!("cannot record the key of {subject}: {e:#}");
                Status::internal("the controller could not record your key; try again later")
            })?;
        self.audit(&events::AuthCertificateIssued {
            subject: subject.to_string(),
            key_sha256,
            peer: Some(peer.to_string()),
            serial: issued.serial.clone(),
            not_after_ms: issued.not_after_unix.saturating_mul(1000),
        })?;
        tracing::info!(%subject, %peer, serial = %issued.serial, "signed in");
        Ok(pb::SignInResponse {
            certificate_pem: issued.pem,
            ca_pem: self.ca.ca_pem().to_string(),
            subject: subject.to_string(),
            serial: issued.serial,
            not_after_unix: issued.not_after_unix,
            controller_port: u32::from(self.controller_port),
        })
    }

    /// A locked person (`loggate user lock`) is refused (`locked`). Otherwise: the cut-off
    /// of their certificates (unix s) when they were locked once and unlocked since — the
    /// new certificate must start after it, or it would be refused as one from before the
    /// lock.
    fn check_not_locked(
        &self,
        peer: SocketAddr,
        issuer: &str,
        csr_der: &[u8],
        verified: &VerifiedSignIn,
    ) -> Result<Option<i64>, Status> {
        let lock = self.store.user_lock(&verified.user).map_err(|e| {
            tracing::error!("cannot read the lock of {:?}: {e:#}", verified.user);
            Status::internal("the controller could not check your account; try again later")
        })?;
        match lock {
            Some(lock) if lock.locked => Err(self.refuse(
                peer,
                issuer,
                csr_der,
                SignInRefused::new(
                    RefusalReason::Locked,
                    format!(
                        "{} is locked out of loggate (since {}); ask an admin to unlock you \
                         (loggate user unlock)",
                        verified.user,
                        crate::cli::format_time(lock.changed_at)
                    ),
                ),
            )),
            Some(lock) => Ok(Some(lock.cutoff)),
            None => Ok(None),
        }
    }

    /// A policy that names IdP groups (`idp:<name>` in `[groups]`) decides by the person's
    /// groups: a token without the groups claim would make them silently a member of none,
    /// so the sign-in is refused (`missing_claim`) and the person or the IdP's configuration
    /// is told.
    fn check_groups(
        &self,
        peer: SocketAddr,
        issuer: &str,
        csr_der: &[u8],
        verified: &VerifiedSignIn,
    ) -> Result<(), Status> {
        let needed = self
            .policy
            .as_ref()
            .and_then(|p| p.current())
            .is_some_and(|p| p.uses_idp_groups());
        if !needed || verified.groups.is_some() {
            return Ok(());
        }
        let detail = match &self.verifier.settings().groups_claim {
            Some(claim) => format!(
                "the ID token carries no {claim:?} claim (a list of groups), and the access \
                 policy names IdP groups; ask the IdP's admin to add the groups claim to \
                 loggate's ID tokens"
            ),
            None => "the access policy names IdP groups but oidc.groups_claim is not set; ask \
                     an admin to set it"
                .to_string(),
        };
        Err(self.refuse(
            peer,
            issuer,
            csr_der,
            SignInRefused::new(RefusalReason::MissingClaim, detail),
        ))
    }

    /// The name's first sign-in binds it to the IdP's `iss` + `sub`; a later one with another
    /// `sub` (a recycled or edited username, a re-created mailbox) is refused
    /// `subject_changed` (see [`crate::store::signins`]).
    fn check_binding(
        &self,
        peer: SocketAddr,
        issuer: &str,
        csr_der: &[u8],
        verified: &VerifiedSignIn,
    ) -> Result<(), Status> {
        let binding = self
            .store
            .bind_subject(
                &verified.user,
                issuer,
                &verified.idp_subject,
                loggate_core::grant::unix_now(),
            )
            .map_err(|e| {
                tracing::error!("cannot read the IdP binding of {:?}: {e:#}", verified.user);
                Status::internal("the controller could not check your identity; try again later")
            })?;
        match binding {
            Binding::Same => Ok(()),
            Binding::Other { .. } => Err(self.refuse(
                peer,
                issuer,
                csr_der,
                SignInRefused::new(
                    RefusalReason::SubjectChanged,
                    format!(
                        "the loggate name {:?} belongs to another account at the IdP (the \
                         token's sub is {:?}); ask an admin to release the name if it is yours \
                         now",
                        verified.user, verified.idp_subject
                    ),
                ),
            )),
        }
    }

    /// A token without a nonce is good once: its signed content is recorded in the store
    /// (surviving restarts) until it could no longer be accepted.
    fn take_unbound(
        &self,
        peer: SocketAddr,
        issuer: &str,
        csr_der: &[u8],
        unbound: &UnboundToken,
    ) -> Result<(), Status> {
        let taken = self
            .store
            .take_unbound_token(
                &unbound.signed_sha256,
                unbound.forget_at,
                loggate_core::grant::unix_now(),
            )
            .map_err(|e| {
                tracing::error!("cannot record a device sign-in's token: {e:#}");
                Status::internal("the controller could not record your sign-in; try again later")
            })?;
        let refused = match taken {
            UnboundUse::Taken => return Ok(()),
            UnboundUse::Replayed => SignInRefused::new(
                RefusalReason::Replayed,
                "this ID token was used for a sign-in already (a token without a nonce is good \
                 once): run `loggate login` again",
            ),
            UnboundUse::Full => SignInRefused::new(
                RefusalReason::Busy,
                "too many device sign-ins in the last minutes; try again shortly",
            ),
        };
        Err(self.refuse(peer, issuer, csr_der, refused))
    }

    /// Records a refusal and makes the caller's status: permission denied for what the token
    /// or the request got wrong, unavailable when the IdP could not be asked.
    fn refuse(
        &self,
        peer: SocketAddr,
        issuer: &str,
        csr_der: &[u8],
        refused: SignInRefused,
    ) -> Status {
        tracing::warn!(%peer, reason = refused.reason.as_str(), "sign-in refused: {}", refused.detail);
        let record = self.audit(&events::AuthSignInRefused {
            peer: Some(peer.to_string()),
            issuer: issuer.to_string(),
            reason_code: refused.reason.as_str(),
            reason: refused.detail.chars().take(1024).collect(),
            key_sha256: crate::oidc::csr::spki_sha256(csr_der),
        });
        if let Err(status) = record {
            return status;
        }
        let message = format!("sign-in refused ({}): {}", refused.reason, refused.detail);
        match refused.reason {
            RefusalReason::IdpUnavailable | RefusalReason::Busy => Status::unavailable(message),
            RefusalReason::NotConfigured => Status::failed_precondition(message),
            RefusalReason::BadRequest | RefusalReason::Malformed => {
                Status::invalid_argument(message)
            }
            _ => Status::permission_denied(message),
        }
    }
}

/// `validity`, starting no earlier than one second after `cutoff` (unix s) when there is one:
/// the controller refuses a person's certificates that start at or before their cut-off.
fn starting_after(mut validity: Validity, cutoff: Option<i64>) -> Validity {
    if let Some(cutoff) = cutoff.and_then(|c| u64::try_from(c.saturating_add(1)).ok()) {
        let after = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(cutoff);
        if validity.not_before < after {
            validity.not_before = after;
        }
    }
    validity
}
