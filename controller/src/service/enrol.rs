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
use crate::store::agents::{token_digest, EnrolRefusal, EnrolledCert, Renewal};
use crate::store::Store;
use loggate_core::audit::budget::{Admission, BudgetPolicy, ReportBudget};
use loggate_core::audit::{events, AuditEvent, SharedAuditLog};
use loggate_core::grant::unix_now;
use loggate_core::identity::{is_valid_name, Identity};
use loggate_proto as pb;
use std::collections::{HashMap, HashSet};
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
    /// The controller cluster's id (`Store::cluster_id`), which an enrolled agent pins.
    cluster_id: String,
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
    ) -> anyhow::Result<Self> {
        // The id every enrolled agent pins, read where it is kept: no enrolment service
        // without it (one built without an id handed out none, and its agents pinned the first
        // controller cluster they reached).
        let cluster_id = store.cluster_id()?;
        Ok(EnrolmentService {
            store,
            ca,
            trust_domain,
            cluster_id,
            cert_ttl,
            grant_keys,
            audit,
            attempts: Arc::new(ReportBudget::new(BudgetPolicy {
                per_window: attempts_per_minute,
                window: Duration::from_secs(60),
                max_sources: 4096,
            })),
            sign_in: None,
        })
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
        let outcome = self.store.enrol_agent(&digest, agent_id, now, |context| {
            let validity =
                starting_after(Validity::for_lifetime(self.cert_ttl), context.removed_at);
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
                cluster_id: self.cluster_id.clone(),
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

/// The longest a join token may be valid.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most agents one join token may enrol.
pub const MAX_TOKEN_USES: u32 = 10_000;
/// The most labels a join token may give.
const MAX_TOKEN_LABELS: usize = 32;

/// `key=value` labels as a token gives them: each part a label key or value of the selector
/// grammar, no key twice.
fn checked_labels(labels: &[String]) -> Result<Vec<String>, Status> {
    if labels.len() > MAX_TOKEN_LABELS {
        return Err(Status::invalid_argument(format!(
            "--labels: at most {MAX_TOKEN_LABELS} labels"
        )));
    }
    let mut keys = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(labels.len());
    for label in labels {
        let valid = label.split_once('=').filter(|(k, v)| {
            crate::policy::selector::is_valid_label_part(k)
                && crate::policy::selector::is_valid_label_part(v)
        });
        let Some((key, _)) = valid else {
            return Err(Status::invalid_argument(format!(
                "--labels: {label:?} is not key=value (each of [A-Za-z0-9._/-], 1 to 63 characters)"
            )));
        };
        if !keys.insert(key.to_string()) {
            return Err(Status::invalid_argument(format!(
                "--labels: the key {key:?} is given twice"
            )));
        }
        out.push(label.clone());
    }
    Ok(out)
}

fn token_info(token: &crate::store::agents::JoinToken) -> pb::JoinTokenInfo {
    pb::JoinTokenInfo {
        id: token.id.clone(),
        labels: token.labels.clone(),
        uses_left: token.uses_left,
        expires_at_unix: token.expires_at,
        reenrol: token.reenrol,
        created_by: token.created_by.clone(),
        created_at_unix: token.created_at,
        revoked_at_unix: token.revoked_at.unwrap_or(0),
    }
}

impl super::ControllerService {
    /// `CreateJoinToken` (admins): the token is made here, returned once, stored as its
    /// SHA-256, and recorded (`agent.token_created`, its id only) before it is stored.
    pub(super) async fn create_join_token_rpc(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let admin = self.user(&request)?;
        self.require_admin_for(&admin, super::AdminAction::AgentTokenCreate)?;
        let req = request.into_inner();
        let labels = checked_labels(&req.labels)?;
        if req.ttl_seconds == 0 || req.ttl_seconds > MAX_TOKEN_TTL.as_secs() {
            return Err(Status::invalid_argument("--ttl: give between 1s and 30d"));
        }
        if req.uses == 0 || req.uses > MAX_TOKEN_USES {
            return Err(Status::invalid_argument(format!(
                "--uses: give between 1 and {MAX_TOKEN_USES}"
            )));
        }
        let now = unix_now();
        let (secret, digest, id) = crate::store::agents::new_join_token();
        let token = crate::store::agents::JoinToken {
            id,
            labels,
            uses_left: req.uses,
            expires_at: now.saturating_add(i64::try_from(req.ttl_seconds).unwrap_or(i64::MAX)),
            reenrol: req.reenrol,
            created_by: admin.spiffe_id().to_string(),
            created_at: now,
            revoked_at: None,
        };
        self.store
            .create_join_token(&digest, &token, || {
                self.audit(&events::AgentTokenCreated {
                    subject: admin.spiffe_id().to_string(),
                    token_id: token.id.clone(),
                    labels: token.labels.clone(),
                    uses: token.uses_left,
                    expires_at: token.expires_at,
                    reenrol: token.reenrol,
                })
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
            })
            .map_err(super::internal)?;
        tracing::info!(token = %token.id, by = %admin, "join token created");
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: secret,
            info: Some(token_info(&token)),
        }))
    }

    /// `ListJoinTokens` (admins).
    pub(super) async fn list_join_tokens_rpc(
        &self,
        request: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        let admin = self.user(&request)?;
        self.require_admin(&admin, "list join tokens")?;
        let tokens = self.store.join_tokens().map_err(super::internal)?;
        Ok(Response::new(pb::ListJoinTokensResponse {
            tokens: tokens.iter().map(token_info).collect(),
        }))
    }

    /// `RevokeJoinToken` (admins), recorded (`agent.token_revoked`) before it takes effect.
    pub(super) async fn revoke_join_token_rpc(
        &self,
        request: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::RevokeJoinTokenResponse>, Status> {
        let admin = self.user(&request)?;
        self.require_admin(&admin, "revoke join tokens")?;
        let id = request.into_inner().id;
        if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(format!(
                "{id:?} is not a join token id (12 hex characters, as loggate agent token list shows)"
            )));
        }
        let token = self
            .store
            .revoke_join_token(&id, unix_now(), |token| {
                self.audit(&events::AgentTokenRevoked {
                    subject: admin.spiffe_id().to_string(),
                    token_id: token.id.clone(),
                    uses_left: token.uses_left,
                })
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
            })
            .map_err(super::internal)?
            .ok_or_else(|| Status::not_found(format!("no join token {id}")))?;
        Ok(Response::new(pb::RevokeJoinTokenResponse {
            info: Some(token_info(&token)),
        }))
    }
}

/// The start of the validity of the client certificate of a request (its `peer_certs()`),
/// `i64::MIN` when unknown: revoked whenever its identity is.
pub(super) fn peer_not_before(
    certs: &Option<Arc<Vec<tonic::transport::CertificateDer<'static>>>>,
) -> i64 {
    certs
        .as_ref()
        .and_then(|certs| certs.first())
        .and_then(|leaf| loggate_core::daemon::serve::certificate_not_before(leaf.as_ref()))
        .unwrap_or(i64::MIN)
}

/// The agents' former labels (`store::agents::FORMER_LABELS_SCHEMA`), reloaded with the
/// revocation set: a stream that streams a label its agent no longer holds is cut
/// ([`relabelled_status`]), and the agent reconnects under its labels of now. Such a stream was
/// opened before a re-enrolment with other labels (which does not cut it, and which may even
/// commit just after the stream read the labels), or before the agent announced others; it
/// would go on being sent the old labels' new grants. Reloaded every 10 s on every replica (the
/// enrolment port, where a re-enrolment happens, is another service): that is how long such a
/// stream may still be sent them (docs/grants.md).
pub struct Relabelled {
    former: std::sync::RwLock<HashMap<String, HashSet<String>>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Relabelled {
    fn default() -> Self {
        Relabelled {
            former: Default::default(),
            changed: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Relabelled {
    /// Replaces the former labels by agent; the streams are woken if they changed.
    pub fn replace(&self, former: HashMap<String, HashSet<String>>) {
        let mut held = self.former.write().unwrap_or_else(|p| p.into_inner());
        if *held != former {
            *held = former;
            drop(held);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Whether a stream of agent `agent_id` under `labels` streams a label the agent no longer
    /// holds.
    pub fn is_stale(&self, agent_id: &str, labels: &[String]) -> bool {
        let held = self.former.read().unwrap_or_else(|p| p.into_inner());
        held.get(agent_id)
            .is_some_and(|former| labels.iter().any(|l| former.contains(l)))
    }

    /// Wakes at each change of the former labels (only those made after this call).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// What a stream streaming a label its agent no longer holds ends with ([`Relabelled`]): the
/// agent reconnects (with its back-off) and streams its labels of now.
pub(super) fn relabelled_status() -> Status {
    Status::unavailable("the agent's labels changed: reconnect to stream its labels of now")
}

/// Reloads `revocations` and `relabelled` from `store`
/// ([`super::ControllerService::refresh_revocations`]).
pub(super) fn reload_revocations(
    store: &crate::store::Store,
    trust_domain: &str,
    revocations: &loggate_core::daemon::Revocations,
    relabelled: &Relabelled,
) -> anyhow::Result<()> {
    let removed = store.removed_agents()?;
    // People locked out (`loggate user lock`, see `users.rs`) are revoked the same way.
    let locked = store.user_cutoffs()?;
    revocations.replace(
        removed
            .into_iter()
            .map(|(id, at)| (format!("spiffe://{trust_domain}/agent/{id}"), at))
            .chain(
                locked
                    .into_iter()
                    .map(|(name, at)| (format!("spiffe://{trust_domain}/user/{name}"), at)),
            )
            .collect(),
    );
    // After the revocations: a failed read of the former labels (the larger table) must not
    // keep a removal from cutting its agent's streams (second review of open5, finding 2).
    relabelled.replace(store.former_labels_by_agent()?);
    Ok(())
}

/// What a removed agent's cut stream ends with.
pub(super) fn removed_status() -> Status {
    Status::unauthenticated(
        "this agent's certificate is revoked: the agent was removed (loggate agent remove), or \
         enrolled again after this certificate was issued; enrol it again with a new join \
         token (loggate-agent enrol)",
    )
}

impl super::ControllerService {
    /// The revocation set the identity interceptor of the main port reads.
    pub fn revocations(&self) -> Arc<loggate_core::daemon::Revocations> {
        self.revocations.clone()
    }

    /// Reloads the revocation set from the store (at start, after a removal, and on a timer
    /// for removals made by another replica).
    pub fn refresh_revocations(&self) -> anyhow::Result<()> {
        reload_revocations(
            &self.store,
            &self.trust_domain,
            &self.revocations,
            &self.relabelled,
        )
    }

    /// `ListAgents` (any person): the registry, filtered by a label selector.
    pub(super) async fn list_agents_rpc(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.user(&request)?;
        let selector = request.into_inner().selector;
        let selector = if selector.trim().is_empty() {
            None
        } else {
            Some(
                crate::policy::selector::Selector::parse(&selector)
                    .map_err(|e| Status::invalid_argument(format!("--selector: {e}")))?,
            )
        };
        let connected = self
            .connected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let agents = self.store.list_agents().map_err(super::internal)?;
        let agents = agents
            .into_iter()
            .filter(|a| {
                selector.as_ref().is_none_or(|s| {
                    s.matches(
                        &a.labels
                            .iter()
                            .filter_map(|l| l.split_once('='))
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    )
                })
            })
            .map(|a| pb::AgentListing {
                connected: connected.contains_key(&a.id),
                agent_id: a.id,
                labels: a.labels,
                addr: a.addr,
                last_seen_unix: a.last_seen,
                cert_not_after_unix: a.cert_not_after.unwrap_or(0),
                cert_serial: a.cert_serial.unwrap_or_default(),
                replica: a.replica,
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    /// `RemoveAgent` (admins): recorded (`agent.removed`) in the transaction that removes it;
    /// then the revocation set is reloaded, which refuses its certificates and cuts its stream.
    pub(super) async fn remove_agent_rpc(
        &self,
        request: Request<pb::RemoveAgentRequest>,
    ) -> Result<Response<pb::RemoveAgentResponse>, Status> {
        let admin = self.user(&request)?;
        self.require_admin_for(&admin, super::AdminAction::AgentRemove)?;
        let id = request.into_inner().agent_id;
        if !is_valid_name(&id) {
            return Err(Status::invalid_argument(format!(
                "{id:?} is not a valid agent id"
            )));
        }
        let was_connected = self
            .connected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id);
        let now = unix_now();
        let removed = self
            .store
            .remove_agent(&id, now, admin.spiffe_id().as_str(), || {
                self.audit(&events::AgentRemoved {
                    subject: admin.spiffe_id().to_string(),
                    agent_id: id.clone(),
                    revoked_before: now,
                    was_connected,
                })
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
            })
            .map_err(super::internal)?;
        if !removed {
            return Err(Status::not_found(format!(
                "no agent {id} is registered (loggate agent list shows them)"
            )));
        }
        self.refresh_revocations().map_err(super::internal)?;
        tracing::info!(agent = %id, by = %admin, "agent removed");
        Ok(Response::new(pb::RemoveAgentResponse {
            removed_at_unix: now,
            was_connected,
        }))
    }
}

/// `validity`, starting after `cutoff` (Unix s) when there is one: a removal's or a
/// re-enrolment's cut-off refuses every certificate of the id that starts at or before it.
fn starting_after(mut validity: Validity, cutoff: Option<i64>) -> Validity {
    if let Some(cutoff) = cutoff {
        let after = std::time::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(cutoff.saturating_add(1)).unwrap_or(0));
        validity.not_before = validity.not_before.max(after);
    }
    validity
}

impl super::ControllerService {
    /// Lets enrolled agents renew their certificates (`RenewCertificate`) with `ca`, for
    /// `lifetime`.
    pub fn with_agent_ca(mut self, ca: Arc<RuntimeCa>, lifetime: Duration) -> Self {
        self.agent_ca = Some((ca, lifetime));
        self
    }

    /// `RenewCertificate` (agents, over their current identity — a removed agent's is refused
    /// before this runs): a certificate for the same identity and the key of a new CSR, with a
    /// new lifetime; recorded (`agent.certificate_renewed`) before it is handed out.
    pub(super) async fn renew_certificate_rpc(
        &self,
        request: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let agent =
            loggate_core::daemon::peer_identity(&request, loggate_core::identity::Role::Agent)?;
        let Some((ca, lifetime)) = &self.agent_ca else {
            return Err(Status::failed_precondition(
                "this controller does not sign agent certificates (no [enrolment] in its \
                 configuration); renew where the certificate was issued",
            ));
        };
        let request_certs = request.peer_certs();
        let pb::RenewCertificateRequest {
            csr_der: csr,
            cluster_id: pinned,
        } = request.into_inner();
        // An agent that follows another cluster (one sharing the CA) gets nothing here: no
        // certificate, no record of a renewal it would refuse.
        if !pinned.is_empty() && pinned != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "this controller belongs to cluster {}, the agent is pinned to cluster {}",
                self.cluster_id,
                pinned.chars().take(64).collect::<String>().escape_debug()
            )));
        }
        if csr.len() > MAX_ENROL_REQUEST_BYTES {
            return Err(Status::invalid_argument(format!(
                "the CSR is larger than {} KiB",
                MAX_ENROL_REQUEST_BYTES / 1024
            )));
        }
        let id = agent.name().to_string();
        let not_before = peer_not_before(&request_certs);
        let renewed = self.store.renew_agent(&id, not_before, |previous, cutoff| {
            let issued = ca.issue_for_csr(
                &csr,
                &self.trust_domain,
                Kind::Agent,
                &id,
                starting_after(Validity::for_lifetime(*lifetime), cutoff),
            )??;
            let identity = Identity::from_certificate(&issued.der, &self.trust_domain)?;
            self.audit(&events::AgentCertificateRenewed {
                subject: identity.spiffe_id().to_string(),
                agent_id: id.clone(),
                serial: issued.serial.clone(),
                previous_serial: previous.to_string(),
                not_after: issued.not_after_unix,
                key_sha256: identity.key_sha256_hex(),
            })
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            Ok((
                EnrolledCert {
                    serial: issued.serial.clone(),
                    not_after: issued.not_after_unix,
                },
                issued,
            ))
        });
        let issued = match renewed {
            Ok(Renewal::Renewed(issued)) => issued,
            Ok(Renewal::NotEnrolled) => {
                return Err(Status::permission_denied(format!(
                    "{agent} did not enrol with this controller; its certificate is renewed where \
                     it was issued"
                )))
            }
            Ok(Renewal::Superseded) => {
                return Err(Status::permission_denied(format!(
                    "this certificate of {agent} was superseded by the agent's removal or \
                     re-enrolment: it is not renewed; enrol the host again with a join token"
                )))
            }
            Err(e) => {
                return Err(match e.downcast_ref::<CsrRefused>() {
                    Some(csr) => Status::invalid_argument(csr.to_string()),
                    None => super::internal(e),
                })
            }
        };
        tracing::info!(agent = %id, serial = %issued.serial, "agent certificate renewed");
        Ok(Response::new(pb::RenewCertificateResponse {
            certificate_pem: issued.pem,
            not_after_unix: issued.not_after_unix,
            serial: issued.serial,
            cluster_id: self.cluster_id.clone(),
        }))
    }
}

#[cfg(test)]
mod relabel_tests {
    use super::*;

    /// A stream is stale when it streams a label its agent no longer holds, of that agent only;
    /// the streams are woken when the former labels change, not when a reload finds the same.
    #[test]
    fn a_stream_under_a_former_label_of_its_agent_is_stale() {
        let relabelled = Relabelled::default();
        let mut changes = relabelled.subscribe();
        let streamed = vec!["env=prod".to_string(), "team=a".to_string()];
        assert!(!relabelled.is_stale("web-2", &streamed));
        let former = HashMap::from([("web-2".to_string(), HashSet::from(["team=a".to_string()]))]);
        relabelled.replace(former.clone());
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert!(relabelled.is_stale("web-2", &streamed));
        assert!(!relabelled.is_stale("web-2", &["env=prod".to_string(), "team=b".to_string()]));
        assert!(!relabelled.is_stale("web-3", &streamed));
        relabelled.replace(former);
        assert!(
            !changes.has_changed().unwrap(),
            "the same set wakes no stream"
        );
    }
}
