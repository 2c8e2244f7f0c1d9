//! The agent's `Status` rpc (`loggate agent status HOST`): version, uptime, grants held, bypass
//! mode, audit position and each SIEM sink's state, the end of the agent's certificate.
//!
//! # Who may ask
//!
//! Only a **user** certificate of our trust domain (any other caller, an agent's or a revoked
//! certificate, reaches this handler and is refused here, audited) **whose name is in the
//! agent's `status_readers`**
//! (default: none, so status is off until an operator names its readers). Not "anyone with a
//! certificate": the answer says whether the bypass audit runs and whether the audit reaches
//! the SIEM, which is what someone planning to read around the gate wants to know. Nothing in
//! it names a subject, a grant or a path. A refused ask is answered `PERMISSION_DENIED` with
//! the next step.
//!
//! # Audit
//!
//! Both outcomes are audited, because who learns whether the bypass audit runs matters: an
//! answer is an `agent.status_read` record on disk before the answer leaves (none, and
//! `UNAVAILABLE`, when it cannot be written: fail closed); a refusal an `agent.status_denied`
//! charged to the same denial budget as `read.denied` ([`DenialBudgets`]: per subject, or per
//! address prefix without one), so a flood of refused asks cannot fill the audit.
//!
//! Answered asks are budgeted too ([`StatusAsks`]): a `status_readers` member is answered (and
//! recorded) at most `limits.audit_denials_per_window` times per `limits.audit_denial_window`;
//! an ask over that is refused `RESOURCE_EXHAUSTED` (`agent.status_denied` `too_many_asks`,
//! itself charged to the denial budget), never answered unrecorded. A poller asking every
//! 10 s stays far under the default 60 a minute; a loop cannot fill `audit_max_bytes` (each
//! answer is a synced record) and so get everyone's reads refused by the audit's disk budget.

use crate::config::Limits;
use crate::server::{AddressPrefix, DenialBudgets, DenialSource};
use crate::Shared;
use loggate_core::audit::budget::{Admission, BudgetPolicy, ReportBudget};
use loggate_core::audit::events;
use loggate_core::daemon::peer_identity;
use loggate_core::identity::{Identity, Role};
use loggate_proto as pb;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;
use tonic::{Request, Status};

/// Why an ask for the status was refused (`agent.status_denied`'s `reason_code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusRefusal {
    /// A user of our trust domain not named in `status_readers`.
    NotAStatusReader,
    /// A certificate that is not a usable user's (an agent's, a revoked one).
    IdentityRefused,
    /// A status reader over its budget of answered asks ([`StatusAsks`]).
    TooManyAsks,
}

impl StatusRefusal {
    /// The code on the wire and in the audit record.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusRefusal::NotAStatusReader => "not_a_status_reader",
            StatusRefusal::IdentityRefused => "identity_refused",
            StatusRefusal::TooManyAsks => "too_many_asks",
        }
    }
}

/// The budget of answered status asks, per subject: each answer is a synced audit record, so
/// a reader asking in a loop is refused beyond `limits.audit_denials_per_window` answers per
/// `limits.audit_denial_window` (see the module docs) rather than answered unrecorded.
pub struct StatusAsks(ReportBudget<String>);

impl StatusAsks {
    /// The budget the agent's `limits` give.
    pub fn new(limits: &Limits) -> Self {
        StatusAsks(ReportBudget::new(BudgetPolicy {
            per_window: limits.audit_denials_per_window,
            window: limits.audit_denial_window,
            ..BudgetPolicy::default()
        }))
    }

    /// Whether `subject` may be answered now (its answer then recorded).
    fn admit(&self, subject: &str) -> bool {
        // What was left out is not summarised here: every ask over the budget is refused and
        // that refusal goes through the denial budget, which counts and summarises it.
        matches!(
            self.0.admit(&[subject.to_string()]),
            Admission::Write { .. }
        )
    }
}

/// The longest refusal message a record keeps (the caller still gets all of it).
const AUDIT_REASON_BYTES: usize = 1024;

/// What the agent knows of itself from its start, for the status answer.
pub struct StartFacts {
    pub started: Instant,
    /// `off`, `unavailable`, `fanotify`, or the eBPF hook family.
    pub bypass_mode: String,
    /// Why the bypass audit fell back or is unavailable.
    pub bypass_note: Option<String>,
    /// The names of the configured SIEM sinks (their status files are read at each ask).
    pub sink_names: Vec<String>,
}

/// Answers a status request from `request`'s caller, or refuses it, auditing either (see the
/// module docs); answers are charged to `asks`, refusals to `denials`.
pub fn answer<T>(
    shared: &Shared,
    denials: &DenialBudgets,
    asks: &StatusAsks,
    request: &Request<T>,
) -> Result<pb::AgentStatusResponse, Status> {
    let peer = request.remote_addr();
    let caller = match peer_identity(request, Role::User) {
        Ok(caller) => caller,
        Err(status) => {
            return Err(refuse(
                shared,
                denials,
                None,
                peer,
                StatusRefusal::IdentityRefused,
                status,
            ))
        }
    };
    if !shared
        .config
        .status_readers
        .iter()
        .any(|r| r == caller.name())
    {
        let status = Status::permission_denied(format!(
            "{caller} may not read the status of agent {}: add \"{}\" to status_readers in its \
             configuration",
            shared.config.id,
            caller.name()
        ));
        return Err(refuse(
            shared,
            denials,
            Some(&caller),
            peer,
            StatusRefusal::NotAStatusReader,
            status,
        ));
    }
    if !asks.admit(caller.spiffe_id()) {
        let limits = &shared.config.limits;
        let status = Status::resource_exhausted(format!(
            "{caller} asked for the status of agent {} more than {} times in {}s (each answer \
             is an audit record); ask less often, and again after that window",
            shared.config.id,
            limits.audit_denials_per_window,
            limits.audit_denial_window.as_secs()
        ));
        return Err(refuse(
            shared,
            denials,
            Some(&caller),
            peer,
            StatusRefusal::TooManyAsks,
            status,
        ));
    }
    shared
        .audit(&events::AgentStatusRead {
            subject: caller.spiffe_id().to_string(),
            key_sha256: caller.key_sha256_hex(),
            peer: peer.map(|p| p.to_string()),
        })
        .map_err(audit_unavailable)?;
    let facts = &shared.facts;
    let sinks_dir = shared.config.state_dir.join("sinks");
    Ok(pb::AgentStatusResponse {
        agent_id: shared.config.id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds: facts.started.elapsed().as_secs(),
        grants_held: shared.grants.grants_count() as u64,
        grant_revision: shared.grants.revision(),
        live_streams: u64::try_from(loggate_core::metrics::agent().live_streams.get()).unwrap_or(0),
        bypass_mode: facts.bypass_mode.clone(),
        bypass_note: facts.bypass_note.clone().unwrap_or_default(),
        audit_seq: shared.audit_log.durable().get(),
        sinks: facts
            .sink_names
            .iter()
            .map(|name| sink_state(&sinks_dir, name))
            .collect(),
        certificate_not_after_unix: certificate_not_after(&shared.config.tls.cert).unwrap_or(0),
    })
}

/// The caller gets `status`; the `agent.status_denied` record is written (on disk first)
/// unless the caller's (or, without a verified caller, the address prefix's) denial budget is
/// spent, in which case it is counted for the next record or the window's summary.
fn refuse(
    shared: &Shared,
    denials: &DenialBudgets,
    caller: Option<&Identity>,
    peer: Option<SocketAddr>,
    why: StatusRefusal,
    status: Status,
) -> Status {
    let source = match (caller, peer) {
        (Some(c), _) => Some(DenialSource::Subject(c.spiffe_id().to_string())),
        (None, Some(p)) => Some(DenialSource::Address(AddressPrefix::of(p.ip()))),
        (None, None) => None,
    };
    if let Admission::Write { suppressed_before } = denials.admit(source.as_ref()) {
        let audited = shared.audit(&events::AgentStatusDenied {
            subject: caller.map(|c| c.spiffe_id().to_string()),
            key_sha256: caller.map(Identity::key_sha256_hex),
            peer: peer.map(|p| p.to_string()),
            reason_code: why.as_str(),
            reason: cut(status.message(), AUDIT_REASON_BYTES).to_string(),
            suppressed_before,
        });
        if let Err(e) = audited {
            return audit_unavailable(e);
        }
    }
    status
}

fn audit_unavailable(e: anyhow::Error) -> Status {
    tracing::error!("audit write failed: {e:#}");
    Status::unavailable("the agent cannot write its audit log, so it answers nothing (fail closed)")
}

/// `text` cut to at most `max` bytes on a character boundary.
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

/// Sink `name`'s state from its status file; `unknown` before it wrote one, `stale` when an
/// `up` was not rewritten for a while (see `loggate_core::metrics::read_sink_status_at`).
fn sink_state(sinks_dir: &Path, name: &str) -> pb::SinkState {
    match loggate_core::metrics::read_sink_status(sinks_dir, name) {
        Some(s) => pb::SinkState {
            name: name.to_string(),
            state: s.state,
            lag_records: s.lag,
            lag_bytes: s.lag_bytes,
            delivered_seq: s.delivered_seq,
            last_error: s.last_error.unwrap_or_default(),
        },
        None => pb::SinkState {
            name: name.to_string(),
            state: "unknown".into(),
            ..Default::default()
        },
    }
}

/// The end of validity of the certificate in `path` (read at each ask: a renewed certificate
/// shows at once).
fn certificate_not_after(path: &Path) -> Option<i64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = loggate_core::tls::read_certificate_der(path).ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    Some(cert.validity().not_after.timestamp())
}
