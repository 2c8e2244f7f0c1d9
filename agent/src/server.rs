//! The agent's gRPC service: `ReadLog`. Each request passes the gate ([`crate::gate`]), is
//! audited as allowed or denied (on disk before any content leaves), streams through
//! [`crate::stream`], and ends with a `read.finished` audit event.

use crate::gate::{authorize, Denial};
use crate::stream::{self, GrantWatch, LineSelector, Plan};
use crate::Shared;
use loggate_core::audit::events;
use loggate_core::identity::{Identity, Role};
use loggate_core::tls::peer_identity;
use loggate_proto as pb;
use loggate_proto::agent_server::Agent;
use regex::bytes::RegexBuilder;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

pub struct AgentService {
    shared: Arc<Shared>,
}

impl AgentService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// Counts open streams per subject; a slot is released when its guard drops.
#[derive(Default)]
pub struct StreamSlots {
    open: Mutex<HashMap<String, usize>>,
}

pub struct SlotGuard {
    slots: Arc<Shared>,
    subject: String,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .slots
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.subject);
            }
        }
    }
}

fn take_slot(shared: &Arc<Shared>, subject: &str) -> Option<SlotGuard> {
    let limit = shared.config.limits.max_streams_per_subject;
    let mut open = shared.slots.open.lock().unwrap_or_else(|p| p.into_inner());
    let n = open.entry(subject.to_string()).or_insert(0);
    if *n >= limit {
        return None;
    }
    *n += 1;
    Some(SlotGuard {
        slots: shared.clone(),
        subject: subject.to_string(),
    })
}

type ChunkStream = Pin<Box<dyn Stream<Item = stream::Item> + Send>>;

fn audit_unavailable(e: anyhow::Error) -> Status {
    tracing::error!("audit write failed: {e:#}");
    Status::unavailable("the agent cannot write its audit log, so it serves nothing (fail closed)")
}

/// How a following stream moves to the file that took its path (rename-and-create rotation):
/// the path is opened again beneath the roots with every check of the first open, and the
/// switch is audited (`read.reopened`, on disk first) before a byte of the new file is read.
/// The grant is the same (it covers the path); its expiry and revocation keep being checked.
fn rotation_follower(
    shared: Arc<Shared>,
    // Who reads what; its file fields are filled at each reopen.
    reopened: events::ReadReopened,
    path: String,
) -> stream::Reopen {
    use std::os::unix::fs::MetadataExt;
    Box::new(move |current: &std::fs::File| {
        let failed = |e: std::io::Error| stream::EndReason::ReadError(e.to_string());
        let now = current.metadata().map_err(failed)?;
        // Not there (yet), or refused now: keep reading the current file.
        let Ok(next) = crate::fs_access::open_beneath(&shared.config.roots, &path) else {
            return Ok(None);
        };
        let meta = next.file.metadata().map_err(failed)?;
        if (meta.dev(), meta.ino()) == (now.dev(), now.ino()) {
            return Ok(None);
        }
        let event = events::ReadReopened {
            inode: next.ino,
            device: next.dev,
            size: next.len,
            previous_inode: now.ino(),
            ..reopened.clone()
        };
        shared.audit(&event).map_err(|e| {
            tracing::error!("audit write failed: {e:#}");
            stream::EndReason::ReadError(
                "the agent cannot write its audit log, so it serves nothing (fail closed)".into(),
            )
        })?;
        Ok(Some(next.file))
    })
}

impl AgentService {
    fn deny(&self, reader: &Identity, peer: Option<String>, path: &str, denial: Denial) -> Status {
        let audited = self.shared.audit(&events::ReadDenied {
            subject: Some(reader.spiffe_id().to_string()),
            key_sha256: Some(reader.key_sha256_hex()),
            peer,
            path: path.to_string(),
            grant_id: denial.grant_id.clone(),
            reason_code: denial.code,
            reason: denial.message.clone(),
        });
        if let Err(e) = audited {
            return audit_unavailable(e);
        }
        let mut status = Status::permission_denied(denial.message);
        if let Ok(v) = denial.code.parse() {
            status.metadata_mut().insert("loggate-denial", v);
        }
        status
    }

    fn selector(&self, req: &pb::ReadLogRequest) -> Result<LineSelector, Status> {
        let limits = &self.shared.config.limits;
        let pattern = if req.mode == pb::ReadMode::Grep as i32 {
            if req.pattern.is_empty() {
                return Err(Status::invalid_argument("grep needs a pattern"));
            }
            if req.pattern.len() > limits.max_pattern_bytes {
                return Err(Status::invalid_argument(format!(
                    "the grep pattern is longer than {} bytes",
                    limits.max_pattern_bytes
                )));
            }
            Some(
                RegexBuilder::new(&req.pattern)
                    .size_limit(limits.max_regex_bytes)
                    .dfa_size_limit(limits.max_regex_bytes)
                    .build()
                    .map_err(|e| {
                        // regex's syntax errors draw the pattern with a caret over several
                        // lines; the last line says what is wrong.
                        let text = e.to_string();
                        let what = text.lines().last().unwrap_or_default().trim();
                        Status::invalid_argument(format!("grep pattern: {what}"))
                    })?,
            )
        } else {
            None
        };
        let opt = |v: i64| (v != 0).then_some(v);
        Ok(LineSelector::new(
            pattern,
            opt(req.since_unix_ms),
            opt(req.until_unix_ms),
        ))
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    type ReadLogStream = ChunkStream;

    async fn read_log(
        &self,
        request: Request<pb::ReadLogRequest>,
    ) -> Result<Response<Self::ReadLogStream>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string());
        let reader = match peer_identity(&request, &self.shared.config.trust_domain, Role::User) {
            Ok(reader) => reader,
            Err(status) => {
                // A certificate from our CA but of the wrong kind (an agent's, say): refused and
                // audited. Certificates from elsewhere never get past the TLS handshake.
                let audited = self.shared.audit(&events::ReadDenied {
                    subject: None,
                    key_sha256: None,
                    peer,
                    path: request.get_ref().path.clone(),
                    grant_id: None,
                    reason_code: "identity_refused",
                    reason: status.message().to_string(),
                });
                return Err(audited.map(|_| status).unwrap_or_else(audit_unavailable));
            }
        };
        let req = request.into_inner();
        let limits = &self.shared.config.limits;
        let mode = pb::ReadMode::try_from(req.mode)
            .ok()
            .filter(|m| *m != pb::ReadMode::Unspecified)
            .ok_or_else(|| Status::invalid_argument("mode must be cat, tail or grep"))?;
        if req.tail_lines > limits.max_tail_lines {
            return Err(Status::invalid_argument(format!(
                "tail may ask for at most {} lines",
                limits.max_tail_lines
            )));
        }
        let selector = self.selector(&req)?;
        let token = (!req.grant_token.is_empty()).then_some(req.grant_token.as_str());

        let authorized = match authorize(&self.shared, &reader, &req.path, token) {
            Ok(a) => a,
            Err(denial) => return Err(self.deny(&reader, peer, &req.path, denial)),
        };
        let Some(slot) = take_slot(&self.shared, reader.spiffe_id()) else {
            return Err(self.deny(
                &reader,
                peer,
                &req.path,
                Denial {
                    code: "too_many_streams",
                    message: format!(
                        "you already have {} streams open on agent {}; close one first",
                        limits.max_streams_per_subject, self.shared.config.id
                    ),
                    grant_id: Some(authorized.grant.id().to_string()),
                },
            ));
        };
        let grant = authorized.grant;
        let file = authorized.file;
        let path = file.path.display().to_string();
        let mode_name = match mode {
            pb::ReadMode::Tail if req.follow => "tail_follow",
            pb::ReadMode::Tail => "tail",
            pb::ReadMode::Grep => "grep",
            _ => "cat",
        };
        self.shared
            .audit(&events::ReadAllowed {
                subject: reader.spiffe_id().to_string(),
                key_sha256: reader.key_sha256_hex(),
                peer: peer.clone(),
                grant_id: grant.id().to_string(),
                path: path.clone(),
                mode: mode_name,
                pattern: (!req.pattern.is_empty()).then(|| req.pattern.clone()),
                since_ms: (req.since_unix_ms != 0).then_some(req.since_unix_ms),
                until_ms: (req.until_unix_ms != 0).then_some(req.until_unix_ms),
                redaction_profile: grant.claims().redaction.clone(),
                inode: file.ino,
                device: file.dev,
                size: file.len,
            })
            .map_err(audit_unavailable)?;

        let tail_lines = (mode == pb::ReadMode::Tail).then_some(req.tail_lines);
        let (tx, rx) = mpsc::channel(8);
        let (last_tx, last_rx) = mpsc::channel(1);
        let opening = pb::ReadLogChunk {
            item: Some(pb::read_log_chunk::Item::Start(pb::StreamStart {
                grant_id: grant.id().to_string(),
                grant_not_after_unix: grant.not_after(),
                redaction_profile: grant.claims().redaction.clone(),
                path: path.clone(),
            })),
        };
        let _ = tx.try_send(Ok(opening));
        let follow = req.follow && mode == pb::ReadMode::Tail;
        let reopen = follow.then(|| {
            rotation_follower(
                self.shared.clone(),
                events::ReadReopened {
                    subject: reader.spiffe_id().to_string(),
                    key_sha256: reader.key_sha256_hex(),
                    peer: peer.clone(),
                    grant_id: grant.id().to_string(),
                    path: path.clone(),
                    inode: 0,
                    device: 0,
                    size: 0,
                    previous_inode: 0,
                },
                path.clone(),
            )
        });
        let plan = Plan {
            file: file.file,
            profile: authorized.profile,
            tail_lines,
            len: file.len,
            follow,
            reopen,
            selector,
            max_line: limits.max_line_bytes,
        };
        let watch = GrantWatch {
            shared: self.shared.clone(),
            grant_id: grant.id().to_string(),
            not_after: grant.not_after(),
            path_glob_hint: grant.claims().paths.join(", "),
        };
        let shared = self.shared.clone();
        let subject = reader.spiffe_id().to_string();
        let key_sha256 = reader.key_sha256_hex();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let started = Instant::now();
            let finished = stream::run(plan, tx, last_tx, &watch);
            let reason = finished.reason;
            let result = shared.audit(&events::ReadFinished {
                subject,
                key_sha256,
                peer,
                grant_id: watch.grant_id.clone(),
                path,
                bytes: finished.bytes,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                end_reason: reason.code(),
                error: match &reason {
                    stream::EndReason::ReadError(e) => Some(e.clone()),
                    _ => None,
                },
                redactions: finished.counts.redactions.clone(),
                lines_withheld: finished.counts.lines_withheld,
                lines_cut: finished.counts.lines_cut,
            });
            if let Err(e) = result {
                tracing::error!("audit write failed at stream end: {e:#}");
            }
        });
        // All data first, then the final status (if the stream was cut or failed).
        let response = ReceiverStream::new(rx).chain(ReceiverStream::new(last_rx));
        Ok(Response::new(Box::pin(response)))
    }
}
