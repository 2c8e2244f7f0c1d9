//! The `Enrolment` service: the controller's pre-authentication surface (served by
//! `loggate_core::daemon::serve_pre_auth` on `[enrolment] listen`, TLS without a client
//! certificate). Every caller is anonymous and hostile until its request proves otherwise.
//!
//! Bounds, in the order they apply: the accept loop's handshake pool and deadlines; a request
//! of at most [`MAX_ENROL_REQUEST_BYTES`] (tonic refuses a larger one before decoding it); an
//! attempt budget per source address ([`ReportBudget`], `[enrolment] attempts_per_minute`): an
//! attempt over it is refused at once, without touching the store or the CA, and counted; the
//! counts are written as one `agent.enrol_refused` summary (`rate_limited`) per address and
//! minute. Within the budget every attempt — refused or not — writes one audit record.
//! `SignIn` has a budget of its own (`[oidc] attempts_per_minute`), summarised as
//! `auth.sign_in_refused` (`rate_limited`).
//!
//! `Enrol`: the join token is checked first (known, not revoked, not expired, uses left), then
//! the agent id (not enrolled yet unless the token allows re-enrolment), then the CSR (its
//! signature and key type); the certificate names `spiffe://<td>/agent/<id>` whatever the CSR
//! asks for, and the agent gets the token's labels. The token itself is never logged or
//! recorded: only its id (a 12-hex-character fingerprint of its SHA-256).

use crate::pki::{CsrRefused, Kind, RuntimeCa, Validity};
use crate::store::agents::{token_digest, EnrolRefusal, EnrolledCert};
use crate::store::Store;
use loggate_core::audit::budget::{Admission, BudgetPolicy, ReportBudget};
use loggate_core::audit::{events, AuditEvent, SharedAuditLog};
use loggate_core::grant::unix_now;
use loggate_core::identity::{is_valid_name, Identity};
use loggate_proto as pb;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Largest request the enrolment port decodes (one limit for the whole port, so sized for
/// its largest method): `SignIn` carries an ID token of up to
/// [`crate::oidc::verify::MAX_ID_TOKEN_BYTES`] (IdPs that put groups in the token make 20 KiB
/// ones) and a CSR of up to [`crate::oidc::csr::MAX_CSR_BYTES`]; `Enrol`'s token and CSR are
/// small and checked on their own.
pub const MAX_ENROL_REQUEST_BYTES: usize = 64 * 1024;

/// Who refuses, in the records' `service` field.
const SERVICE: &str = "loggate enrolment";

/// The longest token looked up; ours are 68 characters.
const MAX_TOKEN_BYTES: usize = 256;

/// What the enrolment service needs.
pub struct EnrolmentService {
    store: Arc<Store>,
    ca: Arc<RuntimeCa>,
    trust_domain: String,
    cert_ttl: Duration,
    /// The controller's grant-verification keys (PASERK), handed to every enrolled agent.
    grant_keys: Vec<String>,
    audit: Arc<SharedAuditLog>,
    attempts: Arc<ReportBudget<IpAddr>>,
    /// People signing in (`SignIn`, `SignInConfig`), when `[oidc]` is configured, with their
    /// own attempt budget (`[oidc] attempts_per_minute`).
    sign_in: Option<(Arc<super::signin::SignInService>, ReportBudget<IpAddr>)>,
}

/// Why an enrolment was refused: its `reason_code`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RefusalCode {
    /// The token or the agent id (the store's checks).
    Store(EnrolRefusal),
    Csr(CsrRefused),
    BadAgentId,
    /// Not the caller's fault (the store, the audit log): not recorded as a refusal.
    Internal,
}

impl RefusalCode {
    fn as_str(&self) -> &'static str {
        match self {
            RefusalCode::Store(refusal) => refusal.as_str(),
            RefusalCode::Csr(csr) => csr.as_str(),
            RefusalCode::BadAgentId => "bad_agent_id",
            RefusalCode::Internal => "internal_error",
        }
    }
}

/// Why an enrolment was refused, with what the record says.
struct Refusal {
    code: RefusalCode,
    reason: String,
    status: Status,
    token_id: Option<String>,
}

impl EnrolmentService {
    pub fn new(
        store: Arc<Store>,
        ca: Arc<RuntimeCa>,
        trust_domain: String,
        cert_ttl: Duration,
        grant_keys: Vec<String>,
        audit: Arc<SharedAuditLog>,
        attempts_per_minute: u32,
    ) -> Self {
        EnrolmentService {
            store,
            ca,
            trust_domain,
            cert_ttl,
            grant_keys,
            audit,
            attempts: Arc::new(ReportBudget::new(BudgetPolicy {
                per_window: attempts_per_minute,
                window: Duration::from_secs(60),
                max_sources: 4096,
            })),
            sign_in: None,
        }
    }

    /// Serves sign-in too (`[oidc]`), under its own per-address attempt budget.
    pub fn with_sign_in(mut self, sign_in: Arc<super::signin::SignInService>) -> Self {
        let budget = ReportBudget::new(BudgetPolicy {
            per_window: sign_in.attempts_per_minute(),
            window: Duration::from_secs(60),
            max_sources: 4096,
        });
        self.sign_in = Some((sign_in, budget));
        self
    }

    /// Writes the summaries of attempts over their address's budget (one record per address);
    /// call it once per minute (and at shutdown).
    pub fn write_summaries(&self) {
        for summary in self.attempts.take_summaries() {
            let event = events::AgentEnrolRefused {
                peer: summary.source.map(|ip| ip.to_string()),
                service: SERVICE.to_string(),
                reason_code: "rate_limited",
                reason: format!(
                    "{} enrolment attempts over the limit of {} a minute from this address \
                     were refused without being checked",
                    summary.left_out,
                    self.attempts.policy().per_window
                ),
                claimed_agent_id: None,
                token_id: None,
                suppressed_before: summary.left_out,
            };
            if let Err(e) = self.audit.append_deferred(&event) {
                tracing::error!("audit write failed: {e:#}");
            }
        }
        if let Some((sign_in, budget)) = &self.sign_in {
            for summary in budget.take_summaries() {
                sign_in.record_rate_limited(summary.source, summary.left_out);
            }
        }
    }

    fn audit(&self, event: &impl AuditEvent) -> anyhow::Result<()> {
        tokio::task::block_in_place(|| self.audit.append(event))
            .map(|_| ())
            .map_err(anyhow::Error::from)
    }

    fn enrol(
        &self,
        request: &pb::EnrolRequest,
        peer: std::net::SocketAddr,
        suppressed_before: u64,
    ) -> Result<pb::EnrolResponse, Refusal> {
        let agent_id = request.agent_id.as_str();
        if !is_valid_name(agent_id) {
            return Err(Refusal {
                code: RefusalCode::BadAgentId,
                reason: "the agent id is not valid: 1-63 characters of a-z, 0-9 and '-', \
                         starting with a letter or digit"
                    .into(),
                status: Status::invalid_argument(
                    "--id: an agent id is 1-63 characters of a-z, 0-9 and '-', starting with a \
                     letter or digit",
                ),
                token_id: None,
            });
        }
        let token = request.token.trim();
        let digest = if token.len() <= MAX_TOKEN_BYTES {
            token_digest(token).0
        } else {
            // Not one of ours: looked up as a digest no token has.
            String::new()
        };
        let now = unix_now();
        let validity = Validity::for_lifetime(self.cert_ttl);
        let outcome = self.store.enrol_agent(&digest, agent_id, now, |context| {
            let issued = self.ca.issue_for_csr(
                &request.csr_der,
                &self.trust_domain,
                Kind::Agent,
                agent_id,
                validity,
            )??;
            let identity = Identity::from_certificate(&issued.der, &self.trust_domain)?;
            self.audit(&events::AgentEnrolled {
                subject: identity.spiffe_id().to_string(),
                agent_id: agent_id.to_string(),
                peer: Some(peer.to_string()),
                service: SERVICE.to_string(),
                labels: context.token.labels.clone(),
                serial: issued.serial.clone(),
                not_after: issued.not_after_unix,
                key_sha256: identity.key_sha256_hex(),
                token_id: context.token.id.clone(),
                reenrolled: context.reenrol,
                suppressed_before,
            })?;
            let response = pb::EnrolResponse {
                certificate_pem: issued.pem.clone(),
                ca_pem: self.ca.ca_pem().to_string(),
                grant_keys: self.grant_keys.clone(),
                not_after_unix: issued.not_after_unix,
                labels: context.token.labels.clone(),
                serial: issued.serial.clone(),
                trust_domain: self.trust_domain.clone(),
            };
            Ok((
                EnrolledCert {
                    serial: issued.serial,
                    not_after: issued.not_after_unix,
                },
                response,
            ))
        });
        match outcome {
            Ok(Ok(response)) => Ok(response),
            Ok(Err((refusal, token))) => Err(Refusal {
                code: RefusalCode::Store(refusal),
                reason: refusal.sentence().to_string(),
                status: match refusal {
                    EnrolRefusal::AlreadyEnrolled => Status::already_exists(refusal.sentence()),
                    _ => Status::permission_denied(refusal.sentence()),
                },
                token_id: token.map(|t| t.id),
            }),
            Err(e) => match e.downcast_ref::<CsrRefused>() {
                Some(csr) => Err(Refusal {
                    code: RefusalCode::Csr(csr.clone()),
                    reason: csr.to_string(),
                    status: Status::invalid_argument(csr.to_string()),
                    token_id: Some(token_digest(token).1),
                }),
                None => {
                    tracing::error!(%peer, "enrolment failed: {e:#}");
                    Err(Refusal {
                        code: RefusalCode::Internal,
                        reason: format!("{e:#}"),
                        status: Status::unavailable(
                            "the controller could not complete the enrolment (see its log); \
                             nothing was changed: try again",
                        ),
                        token_id: None,
                    })
                }
            },
        }
    }
}

#[tonic::async_trait]
impl pb::enrolment_server::Enrolment for EnrolmentService {
    async fn enrol(
        &self,
        request: Request<pb::EnrolRequest>,
    ) -> Result<Response<pb::EnrolResponse>, Status> {
        let Some(peer) = request.remote_addr() else {
            return Err(Status::internal(
                "the connection has no peer address; the request is refused",
            ));
        };
        let suppressed_before =
            match self.attempts.admit(&[peer.ip().to_canonical()]) {
                Admission::Write { suppressed_before } => suppressed_before,
                Admission::Suppressed => return Err(Status::resource_exhausted(
                    "too many enrolment attempts from this address; wait a minute and try again",
                )),
            };
        let request = request.into_inner();
        let outcome = self.enrol(&request, peer, suppressed_before);
        match outcome {
            Ok(response) => {
                tracing::info!(agent = %request.agent_id, %peer, "agent enrolled");
                Ok(Response::new(response))
            }
            Err(refusal) => {
                // Only a refusal for a known reason is recorded here: an internal error
                // changed nothing and its cause is in the log.
                if refusal.code != RefusalCode::Internal {
                    let claimed =
                        is_valid_name(&request.agent_id).then(|| request.agent_id.clone());
                    let record = self.audit(&events::AgentEnrolRefused {
                        peer: Some(peer.to_string()),
                        service: SERVICE.to_string(),
                        reason_code: refusal.code.as_str(),
                        reason: refusal.reason.clone(),
                        claimed_agent_id: claimed,
                        token_id: refusal.token_id.clone(),
                        suppressed_before,
                    });
                    if let Err(e) = record {
                        tracing::error!("audit write failed: {e:#}");
                        return Err(Status::unavailable(
                            "the controller cannot write its audit log; try again later",
                        ));
                    }
                }
                tracing::warn!(%peer, code = refusal.code.as_str(), "enrolment refused");
                Err(refusal.status)
            }
        }
    }

    async fn sign_in(
        &self,
        request: Request<pb::SignInRequest>,
    ) -> Result<Response<pb::SignInResponse>, Status> {
        let (sign_in, budget) = self.sign_in.as_ref().ok_or_else(sign_in_not_configured)?;
        let Some(peer) = request.remote_addr() else {
            return Err(Status::internal(
                "the connection has no peer address; the request is refused",
            ));
        };
        match budget.admit(&[peer.ip().to_canonical()]) {
            Admission::Suppressed => {
                return Err(Status::resource_exhausted(
                    "too many sign-in attempts from this address; wait a minute and try again",
                ))
            }
            // The attempts refused since the last record from this address: admitting resets
            // their count, so they are recorded now or never.
            Admission::Write { suppressed_before } if suppressed_before > 0 => {
                sign_in.record_rate_limited(Some(peer.ip().to_canonical()), suppressed_before);
            }
            Admission::Write { .. } => {}
        }
        sign_in
            .sign_in(peer, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn sign_in_config(
        &self,
        _request: Request<pb::SignInConfigRequest>,
    ) -> Result<Response<pb::SignInConfigResponse>, Status> {
        let (sign_in, _) = self.sign_in.as_ref().ok_or_else(sign_in_not_configured)?;
        Ok(Response::new(sign_in.config()))
    }
}

fn sign_in_not_configured() -> Status {
    Status::failed_precondition(
        "sign-in is not configured on this controller (no [oidc]); ask an admin, or use the \
         certificate they issued you",
    )
}
