//! Just-in-time access: requests decided by the access policy, approvals with separation of
//! duties, break-glass, pending expiry, and the policy's own RPCs (check, reload).
//!
//! Rules enforced here, whatever the client sends:
//! - the requester is the caller's certificate identity, never a field of the request;
//! - nobody reviews their own request; only a member of the request's approver groups (as the
//!   policy in force defines them at the review) may approve or deny; each approver counts
//!   once; a denial ends the request whatever approvals it had;
//! - the access clock starts at the approval that completes the request (`not_before` = then,
//!   `not_after` = then + the TTL granted), never at the request;
//! - every step is audited before it takes effect, inside the store's transaction.

use super::{grant_info, internal, seconds, ControllerService, MAX_FIELD};
use crate::policy::notify::{Notice, Notifier, BREAK_GLASS_EVENT};
use crate::policy::{Approval, Decision, Policy, PolicyHandle, Query, ReloadError, SignInStrength};
use crate::store::signins::RequestSignIn;
use crate::store::{
    GrantRow, ListScope, RequestRow, RequestRule, RequestState, ReviewGrantRow, ReviewRow, Store,
    TooManyPending,
};
use loggate_core::audit::budget::{Admission, BudgetPolicy, ReportBudget};
use loggate_core::audit::{events, SharedAuditLog};
use loggate_core::grant::{compile_path_glob, unix_now, GrantClaims, GrantError, MAX_TOKEN_LEN};
use loggate_core::identity::{is_valid_name, Identity};
use loggate_core::metrics;
use loggate_proto as pb;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status};

/// The longest a `GetRequest` waits for a decision.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// The most requests `ListRequests` answers with (after filtering by who may see them).
const MAX_LISTED: usize = 500;
/// The most grants (and, separately, unreviewed break-glass grants, and requests) one access
/// review reads; a list cut there says so.
pub(super) const REVIEW_BOUND: usize = 10_000;
/// Request states queued for `--wait` waiters; a waiter further behind reads the store once.
const STATE_QUEUE: usize = 1024;

/// Why a request was refused before anything was stored (`access.request_refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestRefusal {
    NoRole,
    TooManyPending,
    GrantTooLarge,
    Suppressed,
}

impl RequestRefusal {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            RequestRefusal::NoRole => "no_role",
            RequestRefusal::TooManyPending => "too_many_pending",
            RequestRefusal::GrantTooLarge => "grant_too_large",
            RequestRefusal::Suppressed => "suppressed",
        }
    }
}

/// What the governance layer shares between RPCs: every request's new state, told once to
/// all `--wait` waiters (none of them reads the store for a change to another request), and
/// the per-requester budget of `access.request_refused` records, so that a requester sending
/// refused requests in a loop cannot flood (and with rotation push out) the audit.
pub(crate) struct Governance {
    states: broadcast::Sender<Arc<RequestRow>>,
    refusals: ReportBudget<String>,
}

impl Governance {
    pub(crate) fn new() -> Self {
        Governance {
            states: broadcast::channel(STATE_QUEUE).0,
            refusals: ReportBudget::new(BudgetPolicy::default()),
        }
    }

    /// Tells the waiters of request `r` its new state.
    pub(super) fn changed(&self, r: &RequestRow) {
        // No receiver (nobody waits) is not an error.
        let _ = self.states.send(Arc::new(r.clone()));
    }

    /// [`Self::write_summaries`] when a budget window has passed since `last` (then `last`
    /// becomes `now`): the expiry task wakes far more often than once a window on PostgreSQL
    /// (every [`crate::store::db::JOBS_LEASE_RETRY`]), and a summary per wake would undo the
    /// budget it summarises. The first call only starts the window.
    pub(crate) fn write_summaries_if_due(
        &self,
        audit: &SharedAuditLog,
        last: &mut Option<std::time::Instant>,
        now: std::time::Instant,
    ) {
        match last {
            None => *last = Some(now),
            Some(at) if now.saturating_duration_since(*at) >= self.refusals.policy().window => {
                *last = Some(now);
                self.write_summaries(audit);
            }
            Some(_) => {}
        }
    }

    /// Writes one `suppressed` record per requester whose refusals the budget left out; the
    /// expiry task calls it once a budget window ([`Self::write_summaries_if_due`]), the daemon
    /// once more before `controller.stopped`.
    pub(crate) fn write_summaries(&self, audit: &SharedAuditLog) {
        for summary in self.refusals.take_summaries() {
            let record = events::AccessRequestRefused {
                subject: summary.source.unwrap_or_default(),
                hosts: Vec::new(),
                paths: Vec::new(),
                hosts_count: 0,
                paths_count: 0,
                lists_sha256: None,
                reason_code: RequestRefusal::Suppressed.as_str(),
                reason: format!(
                    "{} refused requests or reviews over the audit budget of {} a minute were not recorded one by one",
                    summary.left_out,
                    self.refusals.policy().per_window
                ),
                suppressed_before: summary.left_out,
            };
            if let Err(e) = audit.append(&record) {
                tracing::error!("audit write failed: {e:#}");
            }
        }
    }
}

/// The most bytes of one path an `access.request_refused` record keeps (as `read.denied`).
const AUDIT_PATH_BYTES: usize = 256;
/// The most bytes of paths, and of hosts, one record keeps.
const AUDIT_PATHS_BYTES: usize = 1024;
const AUDIT_HOSTS_BYTES: usize = 512;
/// The most bytes of a refusal's reason one record keeps.
const AUDIT_REASON_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The first `items`, each cut to `each` bytes, that fit in `total` bytes; true when anything
/// was cut or left out.
fn bounded_items(items: &[String], each: usize, total: usize) -> (Vec<String>, bool) {
    let mut kept = Vec::new();
    let mut used = 0;
    let mut cut_any = false;
    for item in items {
        let part = cut(item, each);
        cut_any |= part.len() < item.len();
        if used + part.len() > total {
            return (kept, true);
        }
        used += part.len();
        kept.push(part.to_string());
    }
    (kept, cut_any)
}

/// The `access.request_refused` record of a refusal: hosts, paths and reason bounded (a
/// request may name 64 paths of 1 KiB), the whole lists named by their SHA-256 when cut.
fn refused_record(
    subject: String,
    hosts: &[String],
    paths: &[String],
    code: RequestRefusal,
    reason: &str,
    suppressed_before: u64,
) -> events::AccessRequestRefused {
    use sha2::{Digest, Sha256};
    let (kept_hosts, hosts_cut) = bounded_items(hosts, 64, AUDIT_HOSTS_BYTES);
    let (kept_paths, paths_cut) = bounded_items(paths, AUDIT_PATH_BYTES, AUDIT_PATHS_BYTES);
    let lists_sha256 = (hosts_cut || paths_cut).then(|| {
        let mut digest = Sha256::new();
        for item in hosts.iter().chain(paths) {
            digest.update(item.as_bytes());
            digest.update(b"\n");
        }
        hex::encode(digest.finalize())
    });
    events::AccessRequestRefused {
        subject,
        hosts: kept_hosts,
        hosts_count: hosts.len() as u64,
        paths: kept_paths,
        paths_count: paths.len() as u64,
        lists_sha256,
        reason_code: code.as_str(),
        reason: cut(reason, AUDIT_REASON_BYTES).to_string(),
        suppressed_before,
    }
}

/// Waits until request `first` is decided or `deadline` passes, from the states `updates`
/// tells of: a change to another request costs nothing; `reload` (which reads the store) runs
/// only when this waiter fell behind the queue or at the request's own expiry (the expiry task
/// may be asleep until then).
pub(super) async fn wait_for_decision(
    first: RequestRow,
    updates: &mut broadcast::Receiver<Arc<RequestRow>>,
    deadline: tokio::time::Instant,
    mut reload: impl FnMut() -> Result<RequestRow, Status>,
) -> Result<RequestRow, Status> {
    let mut r = first;
    loop {
        let now = tokio::time::Instant::now();
        if r.state != RequestState::Pending || now >= deadline {
            return Ok(r);
        }
        let until_expiry =
            Duration::from_secs(r.expires.saturating_sub(unix_now()).max(0).unsigned_abs());
        let wake = deadline.min(now + until_expiry + Duration::from_millis(100));
        tokio::select! {
            update = updates.recv() => match update {
                Ok(row) if row.id == r.id => r = (*row).clone(),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => r = reload()?,
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Status::unavailable("the controller is stopping"))
                }
            },
            _ = tokio::time::sleep_until(wake) => r = reload()?,
        }
    }
}

/// Everything a grant is made of, for [`ControllerService::sign_grant`].
pub(super) struct GrantSpec<'a> {
    pub id: loggate_core::grant::GrantId,
    pub subject: &'a str,
    pub hosts: &'a [String],
    pub labels: &'a [String],
    pub paths: &'a [String],
    /// systemd journal units (checked names).
    pub units: &'a [String],
    pub now: i64,
    pub not_before: i64,
    pub not_after: i64,
    pub profile: &'a str,
    pub reason: &'a str,
    pub issuer: &'a str,
    pub key_sha256: &'a str,
}

/// A new request id: `r-` + 16 hex digits.
fn new_request_id() -> String {
    format!("r-{}", hex::encode(rand::random::<[u8; 8]>()))
}

/// The requester of a pending request as its approval judges them
/// (`ControllerService::requester_now`).
struct RequesterNow {
    /// The step-up facts for the key the grant would bind to.
    sign_in: SignInStrength,
    /// The IdP groups (without `idp:`) the sign-in behind that key vouches for now.
    idp_groups: Vec<String>,
}

impl RequesterNow {
    /// The request's stored groups that still count: every non-IdP group, and an `idp:`
    /// group only while the IdP still vouches for it (a request never gains a group).
    fn groups_of(&self, stored: &[String]) -> Vec<String> {
        stored
            .iter()
            .filter(|g| match g.strip_prefix("idp:") {
                Some(idp) => self.idp_groups.iter().any(|now| now == idp),
                None => true,
            })
            .cloned()
            .collect()
    }
}

/// The short name of a SPIFFE id (`alice` of `spiffe://td/user/alice`).
fn short(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

/// A `Status` carried through the store's `anyhow` callbacks comes back out as itself.
fn status_of(e: anyhow::Error) -> Status {
    match e.downcast::<Status>() {
        Ok(status) => status,
        Err(e) => internal(e),
    }
}

/// Text a requester, reviewer or admin writes (paths, reason, comment) is shown to other
/// people: on approvers' terminals, in webhook messages, in the access review. A control,
/// format or separator character (see [`crate::policy::text`]) could rewrite what they read,
/// so it is refused, whatever the client.
pub(super) fn check_plain_text(what: &str, text: &str) -> Result<(), Status> {
    if text.chars().any(crate::policy::text::is_hidden_or_control) {
        return Err(Status::invalid_argument(format!(
            "{what} holds a control or invisible formatting character (a line break, an escape, a bidi override, a zero-width space…); write it on one line of plain text"
        )));
    }
    Ok(())
}

fn check_request_id(id: &str) -> Result<(), Status> {
    let ok =
        id.len() == 18 && id.starts_with("r-") && id[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{:?} is not a request id (r- and 16 hex digits, as `grant request` prints)",
            id.chars().take(64).collect::<String>()
        )))
    }
}

fn ended(r: &RequestRow) -> Status {
    Status::failed_precondition(format!(
        "request {} is {}, not pending; nothing was changed",
        r.id,
        r.state.as_str()
    ))
}

/// What a webhook is told about request `r` (names, hosts, paths, role, reason, state: never a
/// token or a key).
fn notice(event: &'static str, r: &RequestRow, approvers: &[String], text: String) -> Notice {
    Notice {
        event,
        text,
        fields: serde_json::json!({
            "event": event, "request_id": r.id, "requester": short(&r.requester),
            "hosts": r.hosts, "paths": r.paths, "units": r.units, "ttl_seconds": r.ttl_seconds,
            "redaction_profile": r.profile, "role": r.role, "approval": r.approval,
            "state": r.state.as_str(), "reason": r.reason, "approvers": approvers,
            "grant_id": r.grant_id,
        }),
        from: Some(short(&r.requester).to_string()),
    }
}

/// Tells the webhook of the policy in force (if any) that `r` expired.
fn notify_expired(notifier: Option<&Notifier>, handle: Option<&Arc<PolicyHandle>>, r: &RequestRow) {
    let (Some(n), Some(p)) = (notifier, handle.and_then(|h| h.current())) else {
        return;
    };
    let text = format!(
        "loggate: request {} of {} for {} on {} expired undecided",
        r.id,
        short(&r.requester),
        loggate_core::grant::resource_names(&r.paths, &r.units).join(", "),
        r.hosts.join(", ")
    );
    n.send(p.notify.as_ref(), notice("access.expired", r, &[], text));
}

/// Expires the pending requests whose time ran out by `now` (audited, and `on_expired` told of
/// each); how many.
pub(super) fn expire_due(
    store: &Store,
    audit: &SharedAuditLog,
    now: i64,
    on_expired: impl Fn(&RequestRow),
) -> anyhow::Result<usize> {
    let mut expired = 0;
    for id in store.pending_due(now)? {
        let ended = store.end_request(
            &id,
            RequestState::Expired,
            now,
            |r| {
                if r.state != RequestState::Pending || r.expires > now {
                    anyhow::bail!("no longer due");
                }
                Ok(())
            },
            |r| {
                audit.append(&events::AccessExpired {
                    request_id: r.id.clone(),
                    subject: r.requester.clone(),
                    approvals: r.approvals(),
                    expired_at: now,
                })?;
                Ok(())
            },
        );
        match ended {
            Ok(Some(r)) => {
                expired += 1;
                metrics::controller().request_entered(r.state.as_str());
                on_expired(&r);
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(request = %id, "not expired: {e:#}"),
        }
    }
    Ok(expired)
}

/// How often the singleton sweep forgets the agents' former labels of no use any more.
const FORGET_FORMER_LABELS_EVERY: Duration = Duration::from_secs(60);

/// Expires pending requests when their time runs out: sleeps until the next expiry or until a
/// request changes, whichever comes first. The sweep is a singleton job: on PostgreSQL only the
/// replica that leads ([`Store::leads_singleton_jobs`]) runs it (the others look again every
/// [`crate::store::db::JOBS_LEASE_RETRY`], so a new leader takes over the sweep within about
/// that long, and the leader looks as often for requests made on other replicas); an RPC that reads requests still expires the due ones first on any replica
/// (`expire_now`), and each expiry is one transaction that re-checks the request, so a request
/// expires once whichever replica ends it. The refusal summaries stay on every replica: each
/// counts only what it refused itself.
pub(super) fn spawn_expiry(
    store: Arc<Store>,
    audit: Arc<SharedAuditLog>,
    changed: watch::Sender<u64>,
    notifier: Notifier,
    handle: Arc<PolicyHandle>,
    governance: Arc<Governance>,
) {
    let mut changes = changed.subscribe();
    tokio::spawn(async move {
        let mut last_summaries = None;
        let mut last_forget: Option<std::time::Instant> = None;
        loop {
            let now = unix_now();
            let leads = store.leads_singleton_jobs();
            let expired = tokio::task::block_in_place(|| {
                governance.write_summaries_if_due(
                    &audit,
                    &mut last_summaries,
                    std::time::Instant::now(),
                );
                if !leads {
                    return Ok(0);
                }
                // The agents' former labels of no use any more (store/agents.rs), a removed
                // agent's too: once a minute at most.
                if last_forget.is_none_or(|at| at.elapsed() >= FORGET_FORMER_LABELS_EVERY) {
                    last_forget = Some(std::time::Instant::now());
                    match store.forget_former_labels(now) {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(rows = n, "former labels forgotten"),
                        Err(e) => tracing::warn!("forgetting former labels failed: {e:#}"),
                    }
                }
                expire_due(&store, &audit, now, |r| {
                    governance.changed(r);
                    notify_expired(Some(&notifier), Some(&handle), r)
                })
            });
            match expired {
                Ok(0) => {}
                Ok(_) => {
                    changed.send_modify(|n| *n += 1);
                }
                Err(e) => tracing::error!("expiring pending requests failed: {e:#}"),
            }
            // On PostgreSQL a request made on another replica wakes no one here: the leader
            // looks for new expiries every JOBS_LEASE_RETRY (one indexed query), and a replica
            // that does not lead looks as often whether it leads now (without the query: it
            // would not use the answer).
            let wait = if !leads {
                crate::store::db::JOBS_LEASE_RETRY
            } else {
                let next = store.next_pending_expiry().ok().flatten();
                next.map(|at| {
                    Duration::from_secs(at.saturating_sub(now).clamp(0, 60).unsigned_abs())
                })
                .unwrap_or(Duration::from_secs(60))
            };
            let wait = if !leads {
                wait
            } else if store.is_postgres() {
                wait.min(crate::store::db::JOBS_LEASE_RETRY)
            } else {
                wait
            };
            tokio::select! {
                _ = tokio::time::sleep(wait.max(Duration::from_millis(200))) => {}
                c = changes.changed() => if c.is_err() { break },
            }
        }
    });
}

impl ControllerService {
    /// The refusal budget of requests and reviews, for the daemon's last summaries before
    /// `controller.stopped`.
    pub(crate) fn governance(&self) -> Arc<Governance> {
        self.governance.clone()
    }

    /// Turns on the governance layer: the policy in force and the pending-request expiry.
    pub fn with_access_policy(mut self, handle: Arc<PolicyHandle>) -> Self {
        let notifier = Notifier::start(self.audit.clone());
        spawn_expiry(
            self.store.clone(),
            self.audit.clone(),
            self.requests_changed.clone(),
            notifier.clone(),
            handle.clone(),
            self.governance.clone(),
        );
        self.access = Some(handle);
        self.notifier = Some(notifier);
        self
    }

    /// Queues a notice for the webhook of the policy in force, if it names one.
    fn notify(&self, event: &'static str, r: &RequestRow, approvers: &[String], text: String) {
        if let (Some(n), Some(p)) = (
            &self.notifier,
            self.access.as_ref().and_then(|h| h.current()),
        ) {
            n.send(p.notify.as_ref(), notice(event, r, approvers, text));
        }
    }

    /// Tells the webhook of an admin's `grant issue`, the break-glass path, exactly as of a
    /// break-glass request (event `access.break_glass`, its own queue).
    pub(super) fn notify_grant_issue(&self, g: &GrantRow) {
        let (Some(n), Some(p)) = (
            &self.notifier,
            self.access.as_ref().and_then(|h| h.current()),
        ) else {
            return;
        };
        let text = format!(
            "loggate BREAK-GLASS: {} issued {} a grant to read {} on {} for {} (reason {:?}); granted without approval, to be reviewed",
            short(&g.issuer),
            short(&g.subject),
            loggate_core::grant::resource_names(&g.paths, &g.units).join(", "),
            g.hosts.iter().chain(&g.labels).cloned().collect::<Vec<_>>().join(", "),
            loggate_core::duration::format(Duration::from_secs(
                g.not_after.saturating_sub(g.not_before).max(0).unsigned_abs()
            )),
            g.reason
        );
        let fields = serde_json::json!({
            "event": BREAK_GLASS_EVENT, "request_id": null, "requester": short(&g.subject),
            "issuer": short(&g.issuer), "how": "grant_issue", "hosts": g.hosts,
            "labels": g.labels, "paths": g.paths, "units": g.units,
            "ttl_seconds": g.not_after.saturating_sub(g.not_before).max(0),
            "redaction_profile": g.profile, "reason": g.reason, "grant_id": g.id,
        });
        n.send(
            p.notify.as_ref(),
            Notice {
                event: BREAK_GLASS_EVENT,
                text,
                fields,
                from: None,
            },
        );
    }

    /// Audits a request refused before anything was stored (budgeted per requester) and
    /// returns `status` to answer with. An audit failure is logged: the request is refused
    /// either way.
    fn refuse_request(
        &self,
        user: &Identity,
        hosts: &[String],
        paths: &[String],
        code: RequestRefusal,
        status: Status,
    ) -> Status {
        let subject = user.spiffe_id().to_string();
        if let Admission::Write { suppressed_before } = self
            .governance
            .refusals
            .admit(std::slice::from_ref(&subject))
        {
            let record = refused_record(
                subject,
                hosts,
                paths,
                code,
                status.message(),
                suppressed_before,
            );
            if let Err(e) = self.audit(&record) {
                tracing::error!("cannot audit a refused request: {}", e.message());
            }
        }
        status
    }

    /// Audits a refused review (`access.review_refused`), budgeted per reviewer with refused
    /// requests: a reviewer refused in a loop (self-approvals) cannot flood the audit.
    fn audit_review_refused(
        &self,
        r: &RequestRow,
        reviewer: &Identity,
        code: &'static str,
    ) -> Result<(), Status> {
        let approver = reviewer.spiffe_id().to_string();
        match self
            .governance
            .refusals
            .admit(std::slice::from_ref(&approver))
        {
            Admission::Write { suppressed_before } => self.audit(&events::AccessReviewRefused {
                request_id: r.id.clone(),
                subject: r.requester.clone(),
                approver,
                reason_code: code,
                suppressed_before,
            }),
            Admission::Suppressed => Ok(()),
        }
    }

    /// The policy in force for one decision, held in force until the guard is dropped (a
    /// reload waits): evaluated and committed under the same policy.
    fn decision_policy(&self) -> Result<crate::policy::DecisionGuard<'_>, Status> {
        self.access
            .as_ref()
            .and_then(|h| h.decide())
            .ok_or_else(|| {
                Status::failed_precondition(
                    "the controller has no access policy configured, so nothing can be requested; \
                 ask an admin (docs/policy.md)",
                )
            })
    }

    fn access_policy(&self) -> Result<Arc<Policy>, Status> {
        self.access
            .as_ref()
            .and_then(|h| h.current())
            .ok_or_else(|| {
                Status::failed_precondition(
                    "the controller has no access policy configured, so nothing can be requested; \
                     ask an admin (docs/policy.md)",
                )
            })
    }

    /// The token of the grant `spec` describes, refused when it is larger than agents accept.
    fn signed_token(&self, spec: &GrantSpec<'_>) -> Result<String, Status> {
        let claims = GrantClaims {
            jti: spec.id.to_string(),
            iss: format!("spiffe://{}/controller", self.trust_domain),
            sub: spec.subject.to_string(),
            iat: spec.now,
            nbf: spec.not_before,
            exp: spec.not_after,
            hosts: spec.hosts.to_vec(),
            labels: spec.labels.to_vec(),
            paths: spec.paths.to_vec(),
            units: spec.units.to_vec(),
            redaction: spec.profile.to_string(),
            reason: spec.reason.to_string(),
            approver: spec.issuer.to_string(),
            key_sha256: spec.key_sha256.to_string(),
        };
        let token = self.signer.sign(&claims).map_err(|e| internal(e.into()))?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(Status::invalid_argument(format!(
                "the grant would be {} bytes, over the {MAX_TOKEN_LEN}-byte limit agents accept; name fewer or shorter paths, hosts or labels",
                token.len()
            )));
        }
        Ok(token)
    }

    /// Signs a grant, checks its size, and audits it (`grant.issued`): the caller stores it in
    /// the same transaction. Errors are `Status` inside `anyhow`.
    pub(super) fn sign_grant(
        &self,
        spec: &GrantSpec<'_>,
        revision: u64,
    ) -> anyhow::Result<GrantRow> {
        let token = self.signed_token(spec)?;
        let row = GrantRow {
            id: spec.id.to_string(),
            subject: spec.subject.to_string(),
            hosts: spec.hosts.to_vec(),
            labels: spec.labels.to_vec(),
            paths: spec.paths.to_vec(),
            units: spec.units.to_vec(),
            not_before: spec.not_before,
            not_after: spec.not_after,
            reason: spec.reason.to_string(),
            issuer: spec.issuer.to_string(),
            profile: spec.profile.to_string(),
            key_sha256: spec.key_sha256.to_string(),
            token,
            revision,
            revoked: None,
        };
        self.audit_issued(&row)?;
        Ok(row)
    }

    /// The hosts a request or check names: `--host` ids and the agents a `--selector` picks
    /// out by the labels the policy gives them.
    fn resolve_hosts(
        policy: &Policy,
        hosts: &[String],
        selector: &str,
    ) -> Result<Vec<String>, Status> {
        super::bounded_list("hosts", hosts)?;
        if let Some(bad) = hosts.iter().find(|h| !is_valid_name(h)) {
            return Err(Status::invalid_argument(format!(
                "host {:?} is not a valid agent id",
                bad.chars().take(64).collect::<String>()
            )));
        }
        let mut all: Vec<String> = hosts.to_vec();
        if !selector.is_empty() {
            let parsed = crate::policy::selector::Selector::parse(selector)
                .map_err(|e| Status::invalid_argument(format!("--selector: {e}")))?;
            let picked = policy.select_agents(&parsed);
            if picked.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "--selector {parsed} matches no agent the access policy gives labels to; \
                     check the labels with an admin"
                )));
            }
            all.extend(picked);
        }
        all.sort();
        all.dedup();
        if all.is_empty() {
            return Err(Status::invalid_argument(
                "name at least one --host or a --selector",
            ));
        }
        if all.len() > 64 {
            return Err(Status::invalid_argument(
                "a request may cover at most 64 hosts; narrow the selector",
            ));
        }
        Ok(all)
    }

    /// A request's resources: path globs and journal units, at least one of either.
    fn check_paths(paths: &[String], units: &[String]) -> Result<(), Status> {
        super::bounded_list("paths", paths)?;
        super::check_units(units)?;
        if paths.is_empty() && units.is_empty() {
            return Err(Status::invalid_argument(
                "name at least one --path or --unit",
            ));
        }
        for p in paths {
            check_plain_text("--path", p)?;
            compile_path_glob(p).map_err(|e| match e {
                GrantError::Malformed(detail) => {
                    Status::invalid_argument(format!("--path: {detail}"))
                }
                other => Status::invalid_argument(other.to_string()),
            })?;
        }
        Ok(())
    }

    fn profile_or_default(&self, profile: &str) -> Result<String, Status> {
        let profile = if profile.is_empty() {
            "default"
        } else {
            profile
        };
        if !loggate_core::grant::is_valid_redaction_name(profile) {
            return Err(Status::invalid_argument(
                "--redaction is not a profile name ([a-z0-9_-]{1,64})",
            ));
        }
        if !self.policy.redaction_profiles.iter().any(|p| p == profile) {
            return Err(Status::invalid_argument(format!(
                "redaction profile {profile:?} is not allowed by the controller's redaction_profiles ({})",
                self.policy.redaction_profiles.join(", ")
            )));
        }
        Ok(profile.to_string())
    }

    /// The request as the client sees it, with who may review it now.
    fn request_info(&self, r: &RequestRow, policy: Option<&Policy>) -> pb::AccessRequestInfo {
        let approvers = match (r.state, policy) {
            (RequestState::Pending, Some(p)) => {
                p.members_except(&r.approver_groups, short(&r.requester))
            }
            _ => Vec::new(),
        };
        pb::AccessRequestInfo {
            id: r.id.clone(),
            requester: r.requester.clone(),
            hosts: r.hosts.clone(),
            paths: r.paths.clone(),
            units: r.units.clone(),
            ttl_seconds: r.ttl_seconds,
            redaction_profile: r.profile.clone(),
            reason: r.reason.clone(),
            role: r.role.clone(),
            approval: r.approval.clone(),
            approvals_needed: r.approvals_needed,
            approvers,
            reviews: r
                .reviews
                .iter()
                .map(|v| pb::RequestReview {
                    reviewer: v.reviewer.clone(),
                    approve: v.approve,
                    comment: v.comment.clone(),
                    at_unix: v.at,
                })
                .collect(),
            state: r.state.as_str().to_string(),
            created_unix: r.created,
            expires_unix: r.expires,
            decided_unix: r.decided_at.unwrap_or(0),
            grant_id: r.grant_id.clone().unwrap_or_default(),
        }
    }

    fn response(
        &self,
        r: &RequestRow,
        ttl_capped: bool,
    ) -> Result<pb::AccessRequestResponse, Status> {
        let policy = self.access.as_ref().and_then(|h| h.current());
        let grant = match &r.grant_id {
            Some(id) => self
                .store
                .grant(id)
                .map_err(internal)?
                .map(|g| grant_info(&g)),
            None => None,
        };
        Ok(pb::AccessRequestResponse {
            request: Some(self.request_info(r, policy.as_deref())),
            grant,
            ttl_capped,
        })
    }

    fn key_of(&self, subject: &str) -> Result<String, Status> {
        self.store.user_key(subject).map_err(internal)?.ok_or_else(|| {
            Status::failed_precondition(format!(
                "no certificate key is known for {subject}; they must contact the controller once (`loggate whoami`)"
            ))
        })
    }

    pub(super) async fn check_policy_rpc(
        &self,
        request: Request<pb::CheckPolicyRequest>,
    ) -> Result<Response<pb::CheckPolicyResponse>, Status> {
        let user = self.user(&request)?;
        let req = request.into_inner();
        let policy = self.access_policy()?;
        let subject = if req.subject.is_empty() || req.subject == user.name() {
            user.name().to_string()
        } else {
            self.require_admin(&user, "check the policy for someone else")?;
            if !is_valid_name(&req.subject) {
                return Err(Status::invalid_argument(
                    "--subject is not a valid user name",
                ));
            }
            req.subject.clone()
        };
        let hosts = Self::resolve_hosts(&policy, &req.hosts, &req.selector)?;
        Self::check_paths(&req.paths, &req.units)?;
        let profile = self.profile_or_default(&req.redaction_profile)?;
        let ttl = Duration::from_secs(
            req.ttl_seconds
                .clamp(1, crate::config::MAX_TTL_LIMIT.as_secs()),
        );
        // Only the caller's own certificate is at hand: its groups count for a check about
        // oneself, none for a check about someone else.
        let cert_groups: &[String] = if subject == user.name() {
            user.groups()
        } else {
            &[]
        };
        let decision = policy.evaluate(&Query {
            subject: &subject,
            cert_groups,
            hosts: &hosts,
            paths: &req.paths,
            units: &req.units,
            ttl,
            profile: &profile,
            break_glass: req.break_glass,
            sign_in: if subject == user.name() {
                self.sign_in_strength(&user)?
            } else {
                SignInStrength::NotChecked
            },
        });
        let mut out = pb::CheckPolicyResponse {
            hosts,
            policy_sha256: policy.digest.clone(),
            ..Default::default()
        };
        match decision {
            Decision::Allowed(a) => {
                let ttl = a.ttl.min(self.policy.max_ttl);
                out.allowed = true;
                out.explanation = format!(
                    "allowed by role {} ({}), for {}{}",
                    a.role,
                    a.approval.describe(),
                    loggate_core::duration::format(ttl),
                    if ttl < Duration::from_secs(req.ttl_seconds.max(1)) {
                        " (capped at the role's max_ttl)"
                    } else {
                        ""
                    }
                );
                out.role = a.role;
                out.approval = a.approval.as_str().to_string();
                out.approval_description = a.approval.describe();
                out.approvals_needed = a.approval.needed();
                out.approvers = a.approvers;
                out.ttl_seconds = ttl.as_secs();
                out.ttl_capped = ttl < Duration::from_secs(req.ttl_seconds.max(1));
            }
            Decision::Refused(refusals) => {
                out.explanation = Decision::refusal_sentence(&refusals, &subject);
                out.refusals = refusals
                    .iter()
                    .map(|(role, r)| pb::RoleRefusal {
                        role: role.clone(),
                        code: r.as_str().to_string(),
                        reason: r.describe(),
                    })
                    .collect();
            }
        }
        Ok(Response::new(out))
    }

    pub(super) async fn reload_policy_rpc(
        &self,
        request: Request<pb::ReloadPolicyRequest>,
    ) -> Result<Response<pb::ReloadPolicyResponse>, Status> {
        let user = self.user(&request)?;
        self.require_admin_for(&user, super::AdminAction::PolicyReload)?;
        let handle = self
            .access
            .clone()
            .ok_or_else(|| Status::failed_precondition(ReloadError::NotConfigured.to_string()))?;
        let by = user.spiffe_id().to_string();
        let reloaded = tokio::task::block_in_place(|| handle.reload(&by));
        match reloaded {
            Ok(policy) => Ok(Response::new(pb::ReloadPolicyResponse {
                file: handle
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                sha256: policy.digest.clone(),
                roles: u32::try_from(policy.roles.len()).unwrap_or(u32::MAX),
            })),
            Err(e @ ReloadError::Audit(_)) => Err(Status::unavailable(e.to_string())),
            Err(e) => Err(Status::failed_precondition(e.to_string())),
        }
    }

    pub(super) async fn request_access_rpc(
        &self,
        request: Request<pb::AccessRequestRequest>,
    ) -> Result<Response<pb::AccessRequestResponse>, Status> {
        let user = self.user(&request)?;
        let req = request.into_inner();
        let decision_guard = self.decision_policy()?;
        let policy = decision_guard.policy.clone();
        let hosts = Self::resolve_hosts(&policy, &req.hosts, &req.selector)?;
        Self::check_paths(&req.paths, &req.units)?;
        // What a refusal's record names: the paths, and `journal:<unit>` for each unit.
        let resources = loggate_core::grant::resource_names(&req.paths, &req.units);
        if req.reason.trim().is_empty() || req.reason.len() > MAX_FIELD {
            return Err(Status::invalid_argument(
                "a --reason (ticket or incident id) is required, at most 1024 bytes",
            ));
        }
        check_plain_text("--reason", &req.reason)?;
        if req.ttl_seconds == 0 {
            return Err(Status::invalid_argument("--ttl must be at least 1s"));
        }
        let profile = self.profile_or_default(&req.redaction_profile)?;
        let asked =
            Duration::from_secs(req.ttl_seconds.min(crate::config::MAX_TTL_LIMIT.as_secs()));
        let sign_in = self.sign_in_strength(&user)?;
        let decision = policy.evaluate(&Query {
            subject: user.name(),
            cert_groups: user.groups(),
            hosts: &hosts,
            paths: &req.paths,
            units: &req.units,
            ttl: asked,
            profile: &profile,
            break_glass: req.break_glass,
            sign_in,
        });
        let allowed = match decision {
            Decision::Allowed(a) => a,
            Decision::Refused(refusals) => {
                return Err(self.refuse_request(
                    &user,
                    &hosts,
                    &resources,
                    RequestRefusal::NoRole,
                    Status::permission_denied(Decision::refusal_sentence(&refusals, user.name())),
                ))
            }
        };
        let ttl = allowed.ttl.min(self.policy.max_ttl);
        let ttl_capped = Duration::from_secs(req.ttl_seconds) > ttl;
        let now = unix_now();
        let expires = now.saturating_add(seconds(policy.pending_ttl));
        let row = RequestRow {
            id: new_request_id(),
            requester: user.spiffe_id().to_string(),
            hosts: hosts.clone(),
            paths: req.paths.clone(),
            units: req.units.clone(),
            ttl_seconds: ttl.as_secs(),
            profile: profile.clone(),
            reason: req.reason.clone(),
            role: allowed.role.clone(),
            approval: allowed.approval.as_str().to_string(),
            approvals_needed: allowed.approval.needed(),
            approver_groups: allowed.approval.groups().to_vec(),
            state: RequestState::Pending,
            created: now,
            expires,
            decided_at: None,
            grant_id: None,
            requester_groups: user.groups().to_vec(),
            reviews: Vec::new(),
        };
        let requested = events::AccessRequested {
            request_id: row.id.clone(),
            subject: row.requester.clone(),
            hosts: row.hosts.clone(),
            paths: loggate_core::grant::resource_names(&row.paths, &row.units),
            ttl_seconds: row.ttl_seconds,
            redaction_profile: row.profile.clone(),
            reason: row.reason.clone(),
            role: row.role.clone(),
            approval: allowed.approval.as_str(),
            approvals_needed: row.approvals_needed,
            approvers: allowed.approvers.clone(),
            expires_at: expires,
            policy_sha256: policy.digest.clone(),
        };
        // Refused now, before anything is stored or audited as requested (not at the approval),
        // if the grant it would become cannot be signed small enough: measured with the longest
        // issuer there can be (an approver's id; the controller's and the requester's are
        // no longer).
        let longest_approver = format!(
            "spiffe://{}/user/{}",
            self.trust_domain,
            // The longest user name `is_valid_name` accepts.
            "a".repeat(63)
        );
        let starts = expires;
        self.signed_token(&GrantSpec {
            id: loggate_core::grant::new_grant_id(),
            subject: user.spiffe_id(),
            hosts: &hosts,
            labels: &[],
            paths: &req.paths,
            units: &req.units,
            now: starts,
            not_before: starts,
            not_after: starts.saturating_add(seconds(ttl)),
            profile: &profile,
            reason: &req.reason,
            issuer: &longest_approver,
            key_sha256: &"0".repeat(64),
        })
        .map_err(|status| match status.code() {
            // `signed_token`'s size refusal; any other error is the controller's own.
            tonic::Code::InvalidArgument => self.refuse_request(
                &user,
                &hosts,
                &resources,
                RequestRefusal::GrantTooLarge,
                status,
            ),
            _ => status,
        })?;
        let stored = match &allowed.approval {
            Approval::Approvers { .. } => {
                // Its approval judges the step-up of the role it stands under then with the
                // sign-in the request was made with (store/signins.rs `request_sign_ins`).
                if let SignInStrength::Known { age, mfa } = sign_in {
                    self.store
                        .record_request_sign_in(
                            &row.id,
                            &RequestSignIn {
                                age_seconds: age.as_secs(),
                                mfa,
                                key_sha256: user.key_sha256_hex(),
                            },
                        )
                        .map_err(internal)?;
                }
                let inserted = self.store.insert_pending_request(
                    &row,
                    policy.max_pending_per_requester,
                    || self.audit(&requested).map_err(anyhow::Error::from),
                );
                if let Err(e) = inserted {
                    if let Err(forget) = self.store.forget_request_sign_in(&row.id) {
                        tracing::warn!(
                            "cannot forget the sign-in of request {}: {forget:#}",
                            row.id
                        );
                    }
                    return Err(match e.downcast::<TooManyPending>() {
                        Ok(too_many) => self.refuse_request(
                            &user,
                            &hosts,
                            &resources,
                            RequestRefusal::TooManyPending,
                            Status::resource_exhausted(too_many.to_string()),
                        ),
                        Err(e) => status_of(e),
                    });
                }
                row
            }
            Approval::Auto | Approval::BreakGlass { .. } => {
                let break_glass = matches!(allowed.approval, Approval::BreakGlass { .. });
                let key = self.key_of(user.spiffe_id())?;
                // Granted at once by the policy: the controller is the issuer of an automatic
                // grant, the requester the issuer of their break-glass grant.
                let issuer = if break_glass {
                    user.spiffe_id().to_string()
                } else {
                    format!("spiffe://{}/controller", self.trust_domain)
                };
                let (stored, grant) = self
                    .store
                    .insert_granted_request(&row, break_glass, |revision| {
                        self.audit(&requested)?;
                        let grant = self.sign_grant(
                            &GrantSpec {
                                id: loggate_core::grant::new_grant_id(),
                                subject: user.spiffe_id(),
                                hosts: &hosts,
                                labels: &[],
                                paths: &req.paths,
                                units: &req.units,
                                now,
                                not_before: now,
                                not_after: now.saturating_add(seconds(ttl)),
                                profile: &profile,
                                reason: &req.reason,
                                issuer: &issuer,
                                key_sha256: &key,
                            },
                            revision,
                        )?;
                        if break_glass {
                            self.audit(&events::AccessBreakGlass {
                                grant_id: grant.id.clone(),
                                request_id: Some(row.id.clone()),
                                subject: grant.subject.clone(),
                                issuer: issuer.clone(),
                                how: "request",
                                role: Some(allowed.role.clone()),
                                hosts: grant.hosts.clone(),
                                paths: loggate_core::grant::resource_names(
                                    &grant.paths,
                                    &grant.units,
                                ),
                                reason: grant.reason.clone(),
                                notified: allowed.approvers.clone(),
                                webhook: self.notifier.is_some() && policy.notify.is_some(),
                                policy_sha256: Some(policy.digest.clone()),
                            })?;
                        }
                        Ok(grant)
                    })
                    .map_err(status_of)?;
                metrics::controller().committed(grant.revision);
                metrics::controller().grants_issued.inc();
                self.revision.send_replace(grant.revision);
                stored
            }
        };
        drop(decision_guard);
        self.governance.changed(&stored);
        self.requests_changed.send_modify(|n| *n += 1);
        let what = format!(
            "{} asks to read {} on {} for {} (role {}, reason {:?})",
            user.name(),
            loggate_core::grant::resource_names(&stored.paths, &stored.units).join(", "),
            stored.hosts.join(", "),
            loggate_core::duration::format(ttl),
            stored.role,
            stored.reason
        );
        match &allowed.approval {
            Approval::Approvers { .. } => self.notify(
                "access.requested",
                &stored,
                &allowed.approvers,
                format!(
                    "loggate: {what}; approve with `loggate grant approve {}` ({})",
                    stored.id,
                    allowed.approvers.join(", ")
                ),
            ),
            Approval::Auto => self.notify(
                "access.requested",
                &stored,
                &[],
                format!("loggate: {what}; granted at once (auto)"),
            ),
            Approval::BreakGlass { .. } => self.notify(
                BREAK_GLASS_EVENT,
                &stored,
                &allowed.approvers,
                format!(
                    "loggate BREAK-GLASS: {what}; granted without approval, to be reviewed ({})",
                    allowed.approvers.join(", ")
                ),
            ),
        }
        metrics::controller().request_entered(stored.state.as_str());
        tracing::info!(request = %stored.id, role = %stored.role, state = stored.state.as_str(), "access requested");
        Ok(Response::new(self.response(&stored, ttl_capped)?))
    }

    /// Refuses a review that separation of duties forbids, audited: one's own request, a
    /// second approval by the same person, and for a denial a reviewer outside the request's
    /// approver groups (an approver's groups are checked by [`Self::decide_approval`], under
    /// the rule in force).
    fn check_reviewer(
        &self,
        r: &RequestRow,
        reviewer: &Identity,
        policy: &Policy,
        now: i64,
        approving: bool,
    ) -> anyhow::Result<()> {
        if r.state != RequestState::Pending {
            return Err(ended(r).into());
        }
        if r.expires <= now {
            return Err(Status::failed_precondition(format!(
                "request {} expired undecided; ask for a new one",
                r.id
            ))
            .into());
        }
        let refuse = |code: &'static str, status: Status| -> anyhow::Result<()> {
            self.audit_review_refused(r, reviewer, code)?;
            Err(status.into())
        };
        if r.requester == reviewer.spiffe_id() {
            return refuse(
                "self_review",
                Status::permission_denied(format!(
                    "nobody reviews their own request: {} must be approved by someone else ({})",
                    r.id,
                    policy
                        .members_except(&r.approver_groups, short(&r.requester))
                        .join(", ")
                )),
            );
        }
        let eligible = policy.members_except(&r.approver_groups, short(&r.requester));
        if !approving
            && !policy.may_review(
                &r.approver_groups,
                short(&r.requester),
                reviewer.name(),
                reviewer.groups(),
            )
        {
            return refuse(
                "not_an_approver",
                Status::permission_denied(format!(
                    "{reviewer} may not review request {}: its approvers are the groups {} ({})",
                    r.id,
                    r.approver_groups.join(", "),
                    eligible.join(", ")
                )),
            );
        }
        if approving && r.reviews.iter().any(|v| v.reviewer == reviewer.spiffe_id()) {
            return refuse(
                "already_reviewed",
                Status::failed_precondition(format!(
                    "you already reviewed request {}; each approver counts once",
                    r.id
                )),
            );
        }
        Ok(())
    }

    /// Decides request `r` (its reviews including `reviewer`'s new approval) under `policy`,
    /// the one in force now: the role that allows it now sets how many approvals it needs and
    /// from which groups; the reviewer must be eligible under those groups, and only stored
    /// approvals whose reviewer may still review under them count. A request no role allows
    /// now is refused (`policy_changed`), a reviewer outside the groups too
    /// (`not_an_approver`), both audited. Returns the rule the request stands under now, the
    /// approvals that count, and the TTL of its grant when they are enough (at most the one
    /// granted at the request).
    ///
    /// The role picked now is judged with `requester`'s facts ([`Self::requester_now`]): how
    /// the requester had signed in when they made the request (its age then) while the key
    /// the grant binds to is the one they asked with, and otherwise the sign-in behind that
    /// key now: a requester never gets a grant, for a key whose sign-in did not meet it, under
    /// a role with a `step_up` — neither another role that refused them then, nor a `step_up`
    /// a `policy reload` added since. Without a record (a development certificate, a request
    /// from before schema version 4) no step-up is met. The requester's `idp:` groups count
    /// only where the sign-in behind that key still vouches for them.
    fn decide_approval(
        &self,
        r: &RequestRow,
        reviewer: &Identity,
        // Both read before the approval's transaction (the store is not re-entrant).
        reviewer_sign_in: SignInStrength,
        requester: &RequesterNow,
        policy: &Policy,
    ) -> anyhow::Result<(RequestRule, u32, Option<u64>)> {
        let requester_groups = requester.groups_of(&r.requester_groups);
        let requester_sign_in = requester.sign_in;
        let requester = short(&r.requester);
        let decision = policy.evaluate(&Query {
            subject: requester,
            cert_groups: &requester_groups,
            hosts: &r.hosts,
            paths: &r.paths,
            units: &r.units,
            ttl: Duration::from_secs(r.ttl_seconds.max(1)),
            profile: &r.profile,
            break_glass: false,
            sign_in: requester_sign_in,
        });
        let refuse = |code: &'static str, status: Status| -> anyhow::Error {
            if let Err(e) = self.audit_review_refused(r, reviewer, code) {
                return e.into();
            }
            status.into()
        };
        let allowed = match decision {
            Decision::Allowed(a) => a,
            Decision::Refused(refusals) => {
                return Err(refuse(
                    "policy_changed",
                    Status::permission_denied(format!(
                        "the access policy in force no longer allows request {}, so it was not approved: {}",
                        r.id,
                        Decision::refusal_sentence(&refusals, requester)
                    )),
                ))
            }
        };
        // An `auto` role allows it now: the request's own approver groups still say who may
        // approve it (one approval completes it).
        let groups: Vec<String> = match &allowed.approval {
            Approval::Approvers { groups, .. } => groups.clone(),
            _ => r.approver_groups.clone(),
        };
        if !policy.may_review(&groups, requester, reviewer.name(), reviewer.groups()) {
            return Err(refuse(
                "not_an_approver",
                Status::permission_denied(format!(
                    "{reviewer} may not review request {}: its approvers are the groups {} ({})",
                    r.id,
                    groups.join(", "),
                    policy.members_except(&groups, requester).join(", ")
                )),
            ));
        }
        // The role's step-up rule holds for its approvers too.
        if let Some(rule) = policy
            .roles
            .iter()
            .find(|role| role.name == allowed.role)
            .and_then(|role| role.step_up.as_ref())
        {
            if !reviewer_sign_in.meets(rule) {
                return Err(refuse(
                    "step_up_required",
                    Status::permission_denied(format!(
                        "approving request {} under role {}: role {} {}",
                        r.id,
                        allowed.role,
                        allowed.role,
                        crate::policy::Refusal::StepUpRequired(rule.clone()).describe()
                    )),
                ));
            }
        }
        let counted = r
            .reviews
            .iter()
            .filter(|v| {
                v.approve
                    && policy.may_review(&groups, requester, short(&v.reviewer), &v.reviewer_groups)
            })
            .count();
        let counted = u32::try_from(counted).unwrap_or(u32::MAX);
        let needed = allowed.approval.needed().max(1);
        let rule = RequestRule {
            role: allowed.role.clone(),
            approval: allowed.approval.as_str().to_string(),
            approvals_needed: needed,
            approver_groups: groups,
        };
        let ttl = (counted >= needed).then(|| {
            allowed
                .ttl
                .min(self.policy.max_ttl)
                .as_secs()
                .min(r.ttl_seconds)
        });
        Ok((rule, counted, ttl))
    }

    /// What the approval of `r` judges its requester with, for the grant that binds to their
    /// enrolled key `key` (see [`Self::decide_approval`]):
    /// - the step-up facts: those recorded at the request when it was made with `key`; after
    ///   a new sign-in with another key (a weaker one, or someone else's with the person's
    ///   password), that key's own sign-in aged now, never the old key's facts; without a
    ///   record, none (`Unknown`);
    /// - the IdP groups the sign-in behind `key` vouches for now (none once its certificate
    ///   has ended), which bound the `idp:` groups stored with the request.
    fn requester_now(&self, r: &RequestRow, key: &str) -> Result<RequesterNow, Status> {
        let name = short(&r.requester);
        let sign_in = match self.store.request_sign_in(&r.id).map_err(internal)? {
            Some(f) if f.key_sha256 == key => SignInStrength::Known {
                age: Duration::from_secs(f.age_seconds),
                mfa: f.mfa,
            },
            Some(_) => self.sign_in_strength_of(name, key)?,
            None => SignInStrength::Unknown,
        };
        let idp_groups = self
            .store
            .idp_groups_for(name, key, unix_now())
            .map_err(internal)?
            .unwrap_or_default();
        Ok(RequesterNow {
            sign_in,
            idp_groups,
        })
    }

    fn review_args(&self, req: &pb::ReviewRequest) -> Result<(), Status> {
        check_request_id(&req.request_id)?;
        if req.comment.len() > MAX_FIELD {
            return Err(Status::invalid_argument(
                "--comment is longer than 1024 bytes",
            ));
        }
        check_plain_text("--comment", &req.comment)
    }

    fn expire_now(&self) -> Result<(), Status> {
        let expired = tokio::task::block_in_place(|| {
            expire_due(&self.store, &self.audit, unix_now(), |r| {
                self.governance.changed(r);
                notify_expired(self.notifier.as_ref(), self.access.as_ref(), r)
            })
        })
        .map_err(internal)?;
        if expired > 0 {
            self.requests_changed.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    pub(super) async fn approve_request_rpc(
        &self,
        request: Request<pb::ReviewRequest>,
    ) -> Result<Response<pb::AccessRequestResponse>, Status> {
        let user = self.user(&request)?;
        let req = request.into_inner();
        self.review_args(&req)?;
        self.expire_now()?;
        let decision_guard = self.decision_policy()?;
        let policy = decision_guard.policy.clone();
        let before = self
            .store
            .request(&req.request_id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no request {}", req.request_id)))?;
        let key = self.key_of(&before.requester)?;
        let reviewer_sign_in = self.sign_in_strength(&user)?;
        let requester_now = self.requester_now(&before, &key)?;
        let now = unix_now();
        let reviewer = user.spiffe_id().to_string();
        let review = ReviewRow {
            reviewer: reviewer.clone(),
            approve: true,
            comment: req.comment.clone(),
            at: now,
            reviewer_groups: user.groups().to_vec(),
        };
        let after = self
            .store
            .approve_request(
                &req.request_id,
                &review,
                |r| self.check_reviewer(r, &user, &policy, now, true),
                |r, next_revision| {
                    // Every approval decides the request under the policy in force now: a role
                    // removed or narrowed since the request refuses it, a raised approver count
                    // or a reviewer since removed from the approver groups keeps it pending.
                    let (rule, approvals, ttl) =
                        self.decide_approval(r, &user, reviewer_sign_in, &requester_now, &policy)?;
                    let grant_id = ttl.map(|_| loggate_core::grant::new_grant_id());
                    self.audit(&events::AccessApproved {
                        request_id: r.id.clone(),
                        subject: r.requester.clone(),
                        approver: reviewer.clone(),
                        comment: req.comment.clone(),
                        approvals,
                        approvals_needed: rule.approvals_needed,
                        grant_id: grant_id.as_ref().map(|g| g.to_string()),
                        policy_sha256: policy.digest.clone(),
                    })?;
                    let (Some(ttl), Some(id)) = (ttl, grant_id) else {
                        return Ok((rule, None));
                    };
                    let revision = next_revision()?;
                    // The access clock starts now, at the approval that completes the request.
                    let grant = self.sign_grant(
                        &GrantSpec {
                            id,
                            subject: &r.requester,
                            hosts: &r.hosts,
                            labels: &[],
                            paths: &r.paths,
                            units: &r.units,
                            now,
                            not_before: now,
                            not_after: now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
                            profile: &r.profile,
                            reason: &r.reason,
                            issuer: &reviewer,
                            key_sha256: &key,
                        },
                        revision,
                    )?;
                    Ok((rule, Some(grant)))
                },
            )
            .map_err(status_of)?
            .ok_or_else(|| Status::not_found(format!("no request {}", req.request_id)))?;
        drop(decision_guard);
        if let Some(id) = &after.grant_id {
            if let Some(g) = self.store.grant(id).map_err(internal)? {
                metrics::controller().committed(g.revision);
                metrics::controller().grants_issued.inc();
                metrics::controller().request_entered(after.state.as_str());
                self.revision.send_replace(g.revision);
            }
            self.notify(
                "access.approved",
                &after,
                &[],
                format!(
                    "loggate: {} approved request {} of {} ({} on {})",
                    user.name(),
                    after.id,
                    short(&after.requester),
                    loggate_core::grant::resource_names(&after.paths, &after.units).join(", "),
                    after.hosts.join(", ")
                ),
            );
        }
        self.governance.changed(&after);
        self.requests_changed.send_modify(|n| *n += 1);
        Ok(Response::new(self.response(&after, false)?))
    }

    pub(super) async fn deny_request_rpc(
        &self,
        request: Request<pb::ReviewRequest>,
    ) -> Result<Response<pb::AccessRequestResponse>, Status> {
        let user = self.user(&request)?;
        let req = request.into_inner();
        self.review_args(&req)?;
        if req.comment.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a denial needs a --comment saying why",
            ));
        }
        self.expire_now()?;
        let policy = self.access_policy()?;
        let now = unix_now();
        let review = ReviewRow {
            reviewer: user.spiffe_id().to_string(),
            approve: false,
            comment: req.comment.clone(),
            at: now,
            reviewer_groups: user.groups().to_vec(),
        };
        let after = self
            .store
            .deny_request(
                &req.request_id,
                &review,
                |r| self.check_reviewer(r, &user, &policy, now, false),
                |r| {
                    self.audit(&events::AccessDenied {
                        request_id: r.id.clone(),
                        subject: r.requester.clone(),
                        approver: user.spiffe_id().to_string(),
                        comment: req.comment.clone(),
                    })?;
                    Ok(())
                },
            )
            .map_err(status_of)?
            .ok_or_else(|| Status::not_found(format!("no request {}", req.request_id)))?;
        self.governance.changed(&after);
        metrics::controller().request_entered(after.state.as_str());
        self.requests_changed.send_modify(|n| *n += 1);
        self.notify(
            "access.denied",
            &after,
            &[],
            format!(
                "loggate: {} denied request {} of {}: {}",
                user.name(),
                after.id,
                short(&after.requester),
                req.comment
            ),
        );
        Ok(Response::new(self.response(&after, false)?))
    }

    pub(super) async fn cancel_request_rpc(
        &self,
        request: Request<pb::CancelRequestRequest>,
    ) -> Result<Response<pb::AccessRequestResponse>, Status> {
        let user = self.user(&request)?;
        let req = request.into_inner();
        check_request_id(&req.request_id)?;
        self.expire_now()?;
        let admin = self.is_admin(&user);
        let now = unix_now();
        let after = self
            .store
            .end_request(
                &req.request_id,
                RequestState::Cancelled,
                now,
                |r| {
                    if r.requester != user.spiffe_id() && !admin {
                        return Err(Status::permission_denied(format!(
                            "{user} may only cancel their own requests"
                        ))
                        .into());
                    }
                    if r.state != RequestState::Pending {
                        return Err(ended(r).into());
                    }
                    Ok(())
                },
                |r| {
                    self.audit(&events::AccessCancelled {
                        request_id: r.id.clone(),
                        subject: r.requester.clone(),
                        cancelled_by: user.spiffe_id().to_string(),
                    })?;
                    Ok(())
                },
            )
            .map_err(status_of)?
            .ok_or_else(|| Status::not_found(format!("no request {}", req.request_id)))?;
        self.governance.changed(&after);
        metrics::controller().request_entered(after.state.as_str());
        self.requests_changed.send_modify(|n| *n += 1);
        Ok(Response::new(self.response(&after, false)?))
    }

    /// Whether `user` may see request `r`: its requester, an admin, or one who may review it.
    fn may_see(&self, user: &Identity, r: &RequestRow, policy: Option<&Policy>) -> bool {
        r.requester == user.spiffe_id()
            || self.is_admin(user)
            || policy.is_some_and(|p| {
                p.may_review(
                    &r.approver_groups,
                    short(&r.requester),
                    user.name(),
                    user.groups(),
                )
            })
    }

    pub(super) async fn get_request_rpc(
        &self,
        request: Request<pb::GetRequestRequest>,
    ) -> Result<Response<pb::AccessRequestResponse>, Status> {
        let user = self.user(&request)?;
        let req = request.into_inner();
        check_request_id(&req.request_id)?;
        let wait = Duration::from_secs(u64::from(req.wait_seconds)).min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribed before the first read: no change after it is missed.
        let mut updates = self.governance.states.subscribe();
        let load = || -> Result<RequestRow, Status> {
            self.expire_now()?;
            self.store
                .request(&req.request_id)
                .map_err(internal)?
                .ok_or_else(|| Status::not_found(format!("no request {}", req.request_id)))
        };
        let first = load()?;
        let policy = self.access.as_ref().and_then(|h| h.current());
        if !self.may_see(&user, &first, policy.as_deref()) {
            return Err(Status::not_found(format!("no request {}", req.request_id)));
        }
        let r = wait_for_decision(first, &mut updates, deadline, load).await?;
        Ok(Response::new(self.response(&r, false)?))
    }

    pub(super) async fn list_requests_rpc(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        let user = self.user(&request)?;
        let req = request.into_inner();
        self.expire_now()?;
        let policy = self.access.as_ref().and_then(|h| h.current());
        // Selected in SQL (the caller's own requests, and the pending ones of the groups they
        // review for now), then checked once more: others' requests are neither scanned nor
        // able to push the caller's out.
        let groups: Vec<String> = policy
            .as_deref()
            .map(|p| {
                p.groups
                    .keys()
                    .filter(|g| p.is_member(g, user.name(), user.groups()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let scope = if self.is_admin(&user) {
            ListScope::All
        } else {
            ListScope::Visible {
                requester: user.spiffe_id(),
                groups: &groups,
            }
        };
        let list = tokio::task::block_in_place(|| {
            self.store
                .list_requests(req.pending_only, scope, MAX_LISTED, |r| {
                    self.may_see(&user, r, policy.as_deref())
                })
        })
        .map_err(internal)?;
        tracing::debug!(
            rows = list.rows.len(),
            vm_steps = list.vm_steps,
            "requests listed"
        );
        let requests = list
            .rows
            .iter()
            .map(|r| self.request_info(r, policy.as_deref()))
            .collect();
        Ok(Response::new(pb::ListRequestsResponse {
            requests,
            truncated: list.truncated,
        }))
    }
}

impl ControllerService {
    pub(super) async fn access_review_rpc(
        &self,
        request: Request<pb::AccessReviewRequest>,
    ) -> Result<Response<pb::AccessReviewResponse>, Status> {
        let user = self.user(&request)?;
        self.require_admin(&user, "run the access review")?;
        let since = request.into_inner().since_unix;
        let policy = self.access_policy()?;
        let (requests, requests_cut) = self
            .store
            .requests_since(since, REVIEW_BOUND)
            .map_err(internal)?;
        // Unreviewed break-glass grants are read by a query of their own, whenever they were
        // given: newer grants never push one out of the review.
        let review = self
            .store
            .review_grants(since, REVIEW_BOUND)
            .map_err(internal)?;
        let mut truncated = review.truncated.clone();
        if requests_cut {
            truncated.push(format!(
                "only the first {REVIEW_BOUND} requests of the period are counted in the roles' use; review a shorter --since"
            ));
        }
        let mut roles = Vec::new();
        let mut unused_roles = Vec::new();
        for role in &policy.roles {
            let mut holders: std::collections::BTreeSet<String> = role.users.clone();
            for g in &role.groups {
                if let Some(members) = policy.groups.get(g) {
                    holders.extend(members.iter().cloned());
                }
            }
            holders.retain(|u| !policy.deny_users.contains(u));
            let under: Vec<&RequestRow> = requests.iter().filter(|r| r.role == role.name).collect();
            // Members named only by their certificates are known once they ask: those seen
            // in the period who hold the role now (with the groups their certificate named).
            for r in &under {
                let who = short(&r.requester);
                if role
                    .groups
                    .iter()
                    .any(|g| policy.is_member(g, who, &r.requester_groups))
                {
                    holders.insert(who.to_string());
                }
            }
            let certificate_groups: Vec<String> = role
                .groups
                .iter()
                .filter(|g| policy.certificate_groups.contains(*g))
                .cloned()
                .collect();
            let requesters: std::collections::BTreeSet<String> = under
                .iter()
                .map(|r| short(&r.requester).to_string())
                .collect();
            if under.is_empty() {
                unused_roles.push(role.name.clone());
            }
            roles.push(pb::RoleUsage {
                name: role.name.clone(),
                approval: role.approval.as_str().to_string(),
                never_requested: holders.difference(&requesters).cloned().collect(),
                holders: holders.into_iter().collect(),
                requesters: requesters.into_iter().collect(),
                requests: u32::try_from(under.len()).unwrap_or(u32::MAX),
                grants: u32::try_from(under.iter().filter(|r| r.grant_id.is_some()).count())
                    .unwrap_or(u32::MAX),
                certificate_groups,
            });
        }
        let reviewed = |row: &ReviewGrantRow| -> pb::ReviewedGrant {
            let g = &row.grant;
            pb::ReviewedGrant {
                grant_id: g.id.clone(),
                subject: g.subject.clone(),
                role: row.role.clone().unwrap_or_default(),
                approved_by: g.issuer.clone(),
                not_before_unix: g.not_before,
                not_after_unix: g.not_after,
                break_glass: row.break_glass,
                reviewed: row.reviewed_by.is_some(),
                reviewed_by: row.reviewed_by.clone().unwrap_or_default(),
                reason: g.reason.clone(),
                hosts: g.hosts.clone(),
                labels: g.labels.clone(),
                paths: loggate_core::grant::resource_names(&g.paths, &g.units),
                redaction_profile: g.profile.clone(),
                revoked_at_unix: g.revoked.as_ref().map_or(0, |r| r.at),
                revoked_by: g.revoked.as_ref().map(|r| r.by.clone()).unwrap_or_default(),
            }
        };
        Ok(Response::new(pb::AccessReviewResponse {
            roles,
            unused_roles,
            grants: review.in_period.iter().map(reviewed).collect(),
            unreviewed_break_glass: review.unreviewed.iter().map(reviewed).collect(),
            policy_sha256: policy.digest.clone(),
            truncated,
        }))
    }

    pub(super) async fn ack_break_glass_rpc(
        &self,
        request: Request<pb::AckBreakGlassRequest>,
    ) -> Result<Response<pb::AckBreakGlassResponse>, Status> {
        let user = self.user(&request)?;
        self.require_admin_for(&user, super::AdminAction::BreakGlassAck)?;
        let req = request.into_inner();
        if req.grant_id.len() > 64 {
            return Err(Status::invalid_argument("the grant id is too long"));
        }
        if req.comment.trim().is_empty() || req.comment.len() > MAX_FIELD {
            return Err(Status::invalid_argument(
                "a --comment (the review's conclusion) is required, at most 1024 bytes",
            ));
        }
        check_plain_text("--comment", &req.comment)?;
        let now = unix_now();
        let by = user.spiffe_id().to_string();
        let row = self
            .store
            .ack_break_glass(
                &req.grant_id,
                &by,
                &req.comment,
                now,
                |b| {
                    if let Some((who, at, _)) = &b.reviewed {
                        return Err(Status::failed_precondition(format!(
                            "break-glass grant {} was already reviewed by {who} at {}",
                            b.grant_id,
                            crate::cli::format_time(*at)
                        ))
                        .into());
                    }
                    if b.subject == by || b.issuer == by {
                        return Err(Status::permission_denied(format!(
                            "nobody reviews their own break-glass grant: {} needs another admin",
                            b.grant_id
                        ))
                        .into());
                    }
                    Ok(())
                },
                |b| {
                    self.audit(&events::AccessBreakGlassReviewed {
                        grant_id: b.grant_id.clone(),
                        subject: b.subject.clone(),
                        approver: by.clone(),
                        comment: req.comment.clone(),
                    })?;
                    Ok(())
                },
            )
            .map_err(status_of)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "{:?} is not a break-glass grant",
                    req.grant_id.chars().take(64).collect::<String>()
                ))
            })?;
        Ok(Response::new(pb::AckBreakGlassResponse {
            grant_id: row.grant_id,
            reviewed_by: by,
            reviewed_at_unix: now,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str) -> RequestRow {
        RequestRow {
            id: id.to_string(),
            requester: "spiffe://loggate.local/user/alice".into(),
            hosts: vec!["web-1".into()],
            paths: vec!["/var/log/app/api.log".into()],
            units: vec![],
            ttl_seconds: 3600,
            profile: "default".into(),
            reason: "INC-42".into(),
            role: "payments-prod".into(),
            approval: "approvers".into(),
            approvals_needed: 1,
            approver_groups: vec!["sre".into()],
            state: RequestState::Pending,
            created: unix_now(),
            expires: unix_now() + 3600,
            decided_at: None,
            grant_id: None,
            requester_groups: Vec::new(),
            reviews: Vec::new(),
        }
    }

    #[tokio::test]
    async fn waiters_learn_the_decision_from_the_shared_notice_without_reading_the_store() {
        let governance = Governance::new();
        let mut waiters = Vec::new();
        for _ in 0..8 {
            let mut updates = governance.states.subscribe();
            let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counted = reads.clone();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            waiters.push((
                reads,
                tokio::spawn(async move {
                    wait_for_decision(pending("r-mine"), &mut updates, deadline, || {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Ok(pending("r-mine"))
                    })
                    .await
                }),
            ));
        }
        // Many changes to other requests, then this one's decision.
        for i in 0..200 {
            governance.changed(&pending(&format!("r-other{i}")));
        }
        let mut decided = pending("r-mine");
        decided.state = RequestState::Approved;
        governance.changed(&decided);
        for (reads, waiter) in waiters {
            let r = waiter.await.unwrap().unwrap();
            assert_eq!(r.state, RequestState::Approved);
            assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 0);
        }
    }

    /// The expiry task wakes every 2 s on PostgreSQL; a requester refused over the budget on
    /// every wake still costs one `suppressed` summary per budget window (a minute), not one
    /// per wake.
    #[test]
    fn refused_request_summaries_are_written_once_a_window_however_often_the_expiry_task_wakes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.jsonl");
        let log = loggate_core::audit::AuditLog::open(&path, "c").expect("audit log");
        let audit = SharedAuditLog::new(log).expect("shared audit log");
        let governance = Governance::new();
        let policy = governance.refusals.policy();
        let source = vec!["spiffe://loggate.local/user/mallory".to_string()];
        let start = std::time::Instant::now();
        let mut last = None;
        let wake = crate::store::db::JOBS_LEASE_RETRY;
        // Five windows of wakes every JOBS_LEASE_RETRY, each after more refusals than the
        // budget writes.
        let wakes =
            u32::try_from(policy.window.as_millis() * 5 / wake.as_millis()).expect("a small count");
        for i in 1..=wakes {
            for _ in 0..policy.per_window {
                let _ = governance.refusals.admit(&source);
            }
            governance.write_summaries_if_due(&audit, &mut last, start + wake * i);
        }
        drop(audit);
        let text = std::fs::read_to_string(&path).expect("read the audit");
        let summaries = text
            .lines()
            .filter(|l| l.contains("\"suppressed\""))
            .count();
        assert!(
            (4..=5).contains(&summaries),
            "{summaries} summaries over 5 windows of {wakes} wakes"
        );
    }

    #[test]
    fn text_shown_to_other_people_refuses_control_characters() {
        assert!(check_plain_text("--reason", "INC-42: api 5xx, see runbook §3").is_ok());
        for bad in [
            "/var/log/app/a\x1b[2K.log",
            "INC-42\r\nApproved by security",
            "tab\there",
            "del\x7f",
            "c1\u{9b}2K",
            "INC-42\u{2028}Approved by security",
            "INC-42\u{2029}",
            "/var/log/app/\u{202e}gol.exe",
            "\u{2066}isolated\u{2069}",
            "zero\u{200b}width",
        ] {
            let err = check_plain_text("--reason", bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }
}
