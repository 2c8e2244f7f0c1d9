//! Off-host anchoring on the controller: agents report the signed checkpoints of their audit
//! files; the controller checks each against the agent's checkpoint key, keeps it append-only,
//! and raises an alert when a host's sequence goes backwards or a sealed position changes head.
//!
//! The key: the controller learns an agent's checkpoint public key on first use (the agent
//! sends it with its mTLS identity), records that in its audit, and from then on refuses any
//! other key for that agent, audited as an alert. A key change therefore never goes unnoticed;
//! an admin who has replaced an agent's state enrols the new key deliberately
//! (`enrol_checkpoint_keys`, read at start, also audited).

use super::{internal, ControllerService};
use crate::store::{Arrival, KeyCheck, Store};
use anyhow::Context;
use loggate_core::audit::budget::{Admission, BudgetPolicy, ReportBudget};
use loggate_core::audit::{events, AuditLog, Checkpoint, SharedAuditLog, VerifyKey};
use loggate_core::daemon::peer_identity;
use loggate_core::grant::unix_now;
use loggate_core::identity::{is_valid_name, Role};
use loggate_proto as pb;
use std::path::Path;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Most checkpoint lines in one report, and the longest line accepted.
pub const MAX_REPORT_LINES: usize = 64;
pub const MAX_CHECKPOINT_LINE: usize = 8 * 1024;
/// A page of checkpoints stays far below the 4 MiB a gRPC client accepts by default.
const DEFAULT_PAGE: u32 = 200;

/// Why a report was refused (`reason_code` of `audit.checkpoint_refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefusalCode {
    /// The agent reported for another agent id, or a checkpoint of another origin.
    OtherHost,
    /// A checkpoint does not verify with the agent's enrolled keys.
    BadSignature,
    /// The agent offers a checkpoint key other than its enrolled one.
    KeyChanged,
    /// The summary of refusals and conflicts left out by the report budget.
    Suppressed,
}

impl RefusalCode {
    fn as_str(self) -> &'static str {
        match self {
            RefusalCode::OtherHost => "other_host",
            RefusalCode::BadSignature => "bad_signature",
            RefusalCode::KeyChanged => "key_changed",
            RefusalCode::Suppressed => "suppressed",
        }
    }
}

/// How an agent id sent by a caller appears in records, logs and answers: quoted when it is
/// a valid name (at most 63 bytes of `[a-z0-9-]`), otherwise by its length and SHA-256 only,
/// like `read.denied`'s long paths: its size and bytes are the caller's choice.
fn describe_agent_id(claimed: &str) -> String {
    if is_valid_name(claimed) {
        format!("{claimed:?}")
    } else {
        use sha2::Digest;
        format!(
            "an invalid agent id ({} bytes, SHA-256 {})",
            claimed.len(),
            hex::encode(sha2::Sha256::digest(claimed.as_bytes()))
        )
    }
}

/// The reason of a summary record: `left_out` records of `agent` (`None`: of agents evicted
/// beyond the budget's tracked limit) were not written.
fn suppressed_reason(left_out: u64, agent: Option<&str>, policy: &BudgetPolicy) -> String {
    let whose = match agent {
        Some(agent) => format!("of agent {agent}"),
        None => "of agents beyond the tracked limit".to_string(),
    };
    format!(
        "{left_out} refused or conflicting checkpoint reports {whose} over the audit budget of {} per {} were not recorded one by one",
        policy.per_window,
        humantime::format_duration(policy.window)
    )
}

/// The report budget of checkpoint refusals and conflicts: at most `per_window` audit
/// records per verified agent identity, the rest counted and summarised (one
/// `audit.checkpoint_refused` with `reason_code` `suppressed`), so that a holder of an agent
/// certificate cannot flood — and, with rotation and a reader, push out — the controller's
/// audit. Only the records are budgeted: every refused report is still refused.
pub struct CheckpointReports {
    budget: ReportBudget<String>,
}

impl CheckpointReports {
    pub fn new(policy: BudgetPolicy) -> Self {
        CheckpointReports {
            budget: ReportBudget::new(policy),
        }
    }

    pub fn policy(&self) -> BudgetPolicy {
        self.budget.policy()
    }

    fn admit(&self, agent_id: &str) -> Admission {
        self.budget.admit(&[agent_id.to_string()])
    }

    /// Writes one summary record for each agent with records left out since the last call;
    /// the daemon calls it once per window and before `controller.stopped`.
    pub fn write_summaries(&self, audit: &SharedAuditLog) {
        let policy = self.budget.policy();
        for summary in self.budget.take_summaries() {
            let reason = suppressed_reason(summary.left_out, summary.source.as_deref(), &policy);
            tracing::warn!("{reason}");
            let record = events::AuditCheckpointRefused {
                agent_id: summary.source.unwrap_or_default(),
                reason_code: RefusalCode::Suppressed.as_str(),
                reason,
            };
            if let Err(e) = tokio::task::block_in_place(|| audit.append(&record)) {
                tracing::error!("audit write failed: {e:#}");
            }
        }
    }
}

impl ControllerService {
    pub(super) async fn report_checkpoints_for_agent(
        &self,
        request: Request<pb::ReportCheckpointsRequest>,
    ) -> Result<Response<pb::ReportCheckpointsResponse>, Status> {
        let agent = peer_identity(&request, Role::Agent)?;
        let req = request.into_inner();
        let agent_id = agent.name();
        if req.agent_id != agent_id {
            return Err(self.refuse_checkpoints(
                agent_id,
                RefusalCode::OtherHost,
                format!(
                    "{agent} may only report its own checkpoints, not those of agent {}",
                    describe_agent_id(&req.agent_id)
                ),
            ));
        }
        if req.lines.len() > MAX_REPORT_LINES
            || req.lines.iter().any(|l| l.len() > MAX_CHECKPOINT_LINE)
        {
            return Err(Status::invalid_argument(format!(
                "report at most {MAX_REPORT_LINES} checkpoints of at most {MAX_CHECKPOINT_LINE} bytes each"
            )));
        }
        let key = VerifyKey::parse(&req.checkpoint_key)
            .map_err(|e| Status::invalid_argument(format!("checkpoint_key: {e}")))?;
        self.check_agent_key(agent_id, &key)?;
        // Checkpoints signed by an earlier key of this agent (before an admin enrolled the
        // current one) stay valid.
        let keys = self
            .store
            .checkpoint_keys(agent_id)
            .map_err(internal)?
            .iter()
            .map(|k| VerifyKey::parse(k))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(internal)?;
        // Every line is checked before any is stored: a refused report stores nothing.
        let mut checked = Vec::with_capacity(req.lines.len());
        for (i, line) in req.lines.iter().enumerate() {
            let checkpoint = Checkpoint::parse_line(line)
                .map_err(|e| Status::invalid_argument(format!("checkpoint {}: {e}", i + 1)))?;
            if checkpoint.origin != agent_id {
                return Err(self.refuse_checkpoints(
                    agent_id,
                    RefusalCode::OtherHost,
                    format!(
                        "{agent} may only report its own checkpoints; checkpoint {} is by {}",
                        i + 1,
                        describe_agent_id(&checkpoint.origin)
                    ),
                ));
            }
            if let Err(e) = checkpoint.verify(&keys) {
                return Err(self.refuse_checkpoints(
                    agent_id,
                    RefusalCode::BadSignature,
                    format!(
                        "checkpoint {} (sealed seq {}) does not verify with agent {agent_id}'s enrolled checkpoint keys: {e}",
                        i + 1,
                        checkpoint.sealed_seq,
                    ),
                ));
            }
            checked.push((checkpoint, line));
        }
        let mut stored = 0;
        for (checkpoint, line) in &checked {
            let arrival = self
                .store
                .add_checkpoint(checkpoint, line, unix_now(), |arrival| {
                    self.alert_conflict(checkpoint, arrival)
                        .map_err(|s| anyhow::anyhow!("{}", s.message()))
                })
                .map_err(internal)?;
            if arrival != Arrival::Duplicate {
                stored += 1;
            }
        }
        let (last_sealed_seq, last_head) = self
            .store
            .last_checkpoint(agent_id)
            .map_err(internal)?
            .unwrap_or_default();
        Ok(Response::new(pb::ReportCheckpointsResponse {
            last_sealed_seq,
            last_head,
            stored,
            cluster_id: self.cluster_id.clone(),
        }))
    }

    pub(super) async fn list_checkpoints_of_host(
        &self,
        request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        let user = self.user(&request)?;
        self.require_admin(&user, "export checkpoints")?;
        let req = request.into_inner();
        if !is_valid_name(&req.host) {
            return Err(Status::invalid_argument(format!(
                "{:?} is not a valid agent id",
                req.host
            )));
        }
        // An unknown host is an error, never an empty (and so reassuring) export.
        if self.store.agent(&req.host).map_err(internal)?.is_none() {
            return Err(Status::not_found(format!(
                "no agent {:?} has ever connected to this controller",
                req.host
            )));
        }
        let limit = match req.limit {
            0 => DEFAULT_PAGE,
            n => n.min(DEFAULT_PAGE),
        };
        let rows = self
            .store
            .checkpoints(&req.host, req.after_id, limit)
            .map_err(internal)?;
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints: rows
                .into_iter()
                .map(|r| pb::StoredCheckpoint {
                    id: r.id,
                    line: r.line,
                    received_at_unix: r.received_at,
                    status: r.status,
                })
                .collect(),
        }))
    }

    /// Trust on first use, audited; a different key later is refused and audited as an alert.
    fn check_agent_key(&self, agent_id: &str, key: &VerifyKey) -> Result<(), Status> {
        let check = self
            .store
            .check_checkpoint_key(agent_id, &key.to_text(), unix_now(), || {
                self.audit(&events::AuditCheckpointKeyEnrolled {
                    agent_id: agent_id.to_string(),
                    key_id: key.key_id().to_string(),
                    key: key.to_text(),
                    how: "first_use",
                    replaces: None,
                })
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
            })
            .map_err(internal)?;
        match check {
            KeyCheck::Enrolled => {
                tracing::info!(agent = agent_id, key = key.key_id(), "enrolled checkpoint key");
                Ok(())
            }
            KeyCheck::Matches => Ok(()),
            KeyCheck::Differs(enrolled) => Err(self.refuse_checkpoints(
                agent_id,
                RefusalCode::KeyChanged,
                format!(
                    "agent {agent_id} offers checkpoint key {}, but {} is enrolled for it; an admin must enrol a new key",
                    key.key_id(),
                    enrolled.split_whitespace().next().unwrap_or_default()
                ),
            )),
        }
    }

    /// Audits (as an alert) and logs a refused report of the verified agent `agent_id`, within
    /// its report budget (see [`CheckpointReports`]); the status to answer with. `reason`
    /// names caller-chosen strings only through [`describe_agent_id`].
    fn refuse_checkpoints(&self, agent_id: &str, code: RefusalCode, reason: String) -> Status {
        match self.admit_report(agent_id) {
            Ok(true) => {
                let code = code.as_str();
                tracing::warn!(agent = agent_id, code, "refused checkpoints: {reason}");
                if let Err(status) = self.audit(&events::AuditCheckpointRefused {
                    agent_id: agent_id.to_string(),
                    reason_code: code,
                    reason: reason.clone(),
                }) {
                    return status;
                }
            }
            Ok(false) => {}
            Err(status) => return status,
        }
        Status::permission_denied(reason)
    }

    /// The report budget of checkpoint refusals and conflicts (see [`CheckpointReports`]);
    /// the daemon writes its summaries.
    pub fn checkpoint_reports(&self) -> Arc<CheckpointReports> {
        self.checkpoint_reports.clone()
    }

    /// Whether a refusal or conflict record of `agent_id` may be written. When records of it
    /// were left out before, their summary is written first (the count goes out once: with
    /// the next record admitted, or with the periodic summaries).
    fn admit_report(&self, agent_id: &str) -> Result<bool, Status> {
        match self.checkpoint_reports.admit(agent_id) {
            Admission::Suppressed => Ok(false),
            Admission::Write {
                suppressed_before: 0,
            } => Ok(true),
            Admission::Write { suppressed_before } => {
                let policy = self.checkpoint_reports.policy();
                self.audit(&events::AuditCheckpointRefused {
                    agent_id: agent_id.to_string(),
                    reason_code: RefusalCode::Suppressed.as_str(),
                    reason: suppressed_reason(suppressed_before, Some(agent_id), &policy),
                })?;
                Ok(true)
            }
        }
    }

    /// Writes the alert of a conflicting checkpoint (none for an ordinary one), within the
    /// agent's report budget (the checkpoint itself is stored either way, as evidence).
    fn alert_conflict(&self, checkpoint: &Checkpoint, arrival: &Arrival) -> Result<(), Status> {
        if matches!(arrival, Arrival::Duplicate | Arrival::New) {
            return Ok(());
        }
        if !self.admit_report(&checkpoint.origin)? {
            return Ok(());
        }
        let mut conflict = events::AuditCheckpointConflict {
            origin: checkpoint.origin.clone(),
            conflict: arrival.status(),
            sealed_seq: checkpoint.sealed_seq,
            head: checkpoint.head.clone(),
            ts_ms: checkpoint.ts_ms,
            key_id: checkpoint.key_id.clone(),
            held_sealed_seq: None,
            held_head: None,
        };
        match arrival {
            Arrival::Duplicate | Arrival::New => {}
            Arrival::SequenceWentBackwards { held_sealed_seq } => {
                tracing::warn!(
                    host = %checkpoint.origin,
                    "ALERT: audit sequence went backwards: a checkpoint seals seq {} but seq {held_sealed_seq} was sealed before (audit file reset or truncated?)",
                    checkpoint.sealed_seq
                );
                conflict.held_sealed_seq = Some(*held_sealed_seq);
            }
            Arrival::HeadChanged { held_head } => {
                tracing::warn!(
                    host = %checkpoint.origin,
                    "ALERT: audit head changed: seq {} was sealed with head {held_head}, now with {} (audit file rewritten?)",
                    checkpoint.sealed_seq, checkpoint.head
                );
                conflict.held_head = Some(held_head.clone());
            }
        }
        self.audit(&conflict)
    }
}

/// `enrol_checkpoint_keys`: enrols each `<agent-id>.pub` in `dir` as that agent's checkpoint
/// key (audited), unless it is already the enrolled one.
pub fn enrol_checkpoint_keys(
    store: &Store,
    audit: &mut AuditLog,
    dir: &Path,
) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("enrol_checkpoint_keys: cannot read {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let Some(agent_id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pub"))
        else {
            continue;
        };
        let what = || format!("enrol_checkpoint_keys: {}", path.display());
        if !is_valid_name(agent_id) {
            anyhow::bail!("{}: {agent_id:?} is not a valid agent id", what());
        }
        let text = std::fs::read_to_string(&path).with_context(what)?;
        let key = VerifyKey::parse(&text).with_context(what)?;
        let enrolled = store.enrol_checkpoint_key(agent_id, &key.to_text(), unix_now(), |old| {
            audit.append(&events::AuditCheckpointKeyEnrolled {
                agent_id: agent_id.to_string(),
                key_id: key.key_id().to_string(),
                key: key.to_text(),
                how: "configured",
                replaces: old.map(String::from),
            })?;
            Ok(())
        })?;
        if enrolled {
            tracing::info!(
                agent = agent_id,
                key = key.key_id(),
                "enrolled configured checkpoint key"
            );
        }
    }
    Ok(())
}
