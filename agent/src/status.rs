//! The agent's `Status` rpc (`loggate agent status HOST`): version, uptime, grants held, bypass
//! mode, audit position and each SIEM sink's state, the end of the agent's certificate.
//!
//! # Who may ask
//!
//! Only a **user** certificate of our trust domain (the identity interceptor refuses agents
//! and the controller before this runs) **whose name is in the agent's `status_readers`**
//! (default: none, so status is off until an operator names its readers). Not "anyone with a
//! certificate": the answer says whether the bypass audit runs and whether the audit reaches
//! the SIEM, which is what someone planning to read around the gate wants to know. Nothing in
//! it names a subject, a grant or a path. A refused ask is answered `PERMISSION_DENIED` with
//! the next step; it reads nothing and changes nothing, so it is not audited.

use crate::Shared;
use loggate_core::daemon::peer_identity;
use loggate_core::identity::Role;
use loggate_proto as pb;
use std::path::Path;
use std::time::Instant;
use tonic::{Request, Status};

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

/// Answers a status request from `request`'s caller, or refuses it (see the module docs).
pub fn answer<T>(shared: &Shared, request: &Request<T>) -> Result<pb::AgentStatusResponse, Status> {
    let caller = peer_identity(request, Role::User)?;
    if !shared
        .config
        .status_readers
        .iter()
        .any(|r| r == caller.name())
    {
        return Err(Status::permission_denied(format!(
            "{caller} may not read the status of agent {}: add \"{}\" to status_readers in its \
             configuration",
            shared.config.id,
            caller.name()
        )));
    }
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

/// Sink `name`'s state from its status file; `unknown` before it wrote one, `stale` when an
/// `up` was not rewritten for a while (see `loggate_core::metrics::read_sink_status_at`).
fn sink_state(sinks_dir: &Path, name: &str) -> pb::SinkState {
    match loggate_core::metrics::read_sink_status(sinks_dir, name) {
        Some(s) => pb::SinkState {
            name: name.to_string(),
            state: s.state,
            lag_records: s.lag,
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
