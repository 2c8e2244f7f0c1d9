//! `SetUserLock` and `ListUsers` (admins): locking a person out everywhere, and the people the
//! controller knows from sign-ins and locks (`loggate user lock|unlock|list`, issue #22).
//!
//! A lock, in this order, each step audited:
//! 1. recorded (`user.locked`, in the transaction that stores it) and the revocation set
//!    reloaded: from then on the controller refuses every certificate of the person (the
//!    identity interceptor, before any handler) and their sign-ins (`locked`);
//! 2. their pending requests are cancelled (`access.cancelled`, by the admin);
//! 3. their active grants are revoked (`grant.revoked`): each revocation travels to the agents
//!    over the `WatchGrants` stream like any other (docs/grants.md), and an agent cuts the
//!    streams reading under a revoked grant — so within the revocation latency no agent serves
//!    the person anything, since every read needs a grant.
//!
//! The lock also forgets their enrolled key, so no grant can be issued for them (bound to the
//! key of a certificate from before the lock) until they sign in again.
//!
//! An unlock lets them sign in again; certificates from before the lock stay refused (the
//! stolen laptop's), the new sign-in's certificate starts after it.

use super::{internal, AdminAction, ControllerService, MAX_FIELD};
use crate::store::signins::LockChange;
use crate::store::Revoked;
use crate::store::{ListScope, RequestState};
use loggate_core::audit::events;
use loggate_core::grant::unix_now;
use loggate_core::identity::user_spiffe_id;
use loggate_core::metrics;
use loggate_proto as pb;
use tonic::{Request, Response, Status};

/// A request a lock meant to cancel was decided (approved, denied, cancelled, expired)
/// between the listing and its cancellation: skipped, not a failure.
#[derive(Debug, thiserror::Error)]
#[error("the request was decided meanwhile")]
struct DecidedMeanwhile;

/// The most people `ListUsers` answers with.
const MAX_LISTED: usize = 10_000;
/// The most `ListUsers` answers with, encoded (below a client's default 4 MiB decode limit).
const MAX_ANSWER_BYTES: usize = 3 << 20;
/// Rounds of "revoke the active grants, look again" a lock makes (each round up to the
/// store's page of 1,000 grants).
const MAX_REVOKE_ROUNDS: usize = 100;

/// How far ahead of the controller's clock a sign-in's `auth_time` may be (IdP clock skew).
const FUTURE_AUTH_TIME_SKEW: i64 = 60;

impl ControllerService {
    /// `SetUserLock` (admins): see the module's contract.
    pub(super) async fn set_user_lock_rpc(
        &self,
        request: Request<pb::SetUserLockRequest>,
    ) -> Result<Response<pb::SetUserLockResponse>, Status> {
        let admin = self.user(&request)?;
        let action = if request.get_ref().locked {
            AdminAction::UserLock
        } else {
            AdminAction::UserUnlock
        };
        self.require_admin_for(&admin, action)?;
        let req = request.into_inner();
        let subject = user_spiffe_id(&self.trust_domain, &req.user)
            .map_err(|e| Status::invalid_argument(format!("user: {e}")))?;
        let name = subject
            .as_str()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        if req.reason.trim().is_empty() || req.reason.len() > MAX_FIELD {
            return Err(Status::invalid_argument(format!(
                "give a --reason of 1 to {MAX_FIELD} bytes"
            )));
        }
        super::requests::check_plain_text("reason", &req.reason)?;
        if req.locked && name == admin.name() {
            return Err(Status::invalid_argument(
                "you cannot lock yourself out; ask another admin",
            ));
        }
        let now = unix_now();
        let by = admin.spiffe_id().to_string();
        let changed = self
            .store
            .set_user_lock(
                &LockChange {
                    name: &name,
                    subject: subject.as_str(),
                    locked: req.locked,
                    by: &by,
                    reason: &req.reason,
                    now,
                },
                || {
                    let recorded = if req.locked {
                        self.audit(&events::UserLocked {
                            subject: subject.to_string(),
                            locked_by: by.clone(),
                            reason: req.reason.clone(),
                        })
                    } else {
                        self.audit(&events::UserUnlocked {
                            subject: subject.to_string(),
                            unlocked_by: by.clone(),
                            reason: req.reason.clone(),
                        })
                    };
                    recorded.map_err(|s| anyhow::anyhow!("{}", s.message()))
                },
            )
            .map_err(internal)?;
        // The lock is recorded now; what follows can fail halfway (the store, the audit log).
        // Running the same command again finishes it: a lock already in place still reloads
        // the revocation set, cancels and revokes.
        let finish = || -> Result<(u32, u32), Status> {
            self.refresh_revocations().map_err(internal)?;
            if !req.locked {
                return Ok((0, 0));
            }
            // Both run whatever the other gives: a failed cancellation never keeps the
            // person's grants from being revoked; either failure is reported (incomplete).
            let cancelled = self.cancel_pending_of(subject.as_str(), &by);
            let revoked = self.revoke_grants_of(subject.as_str(), &by, &req.reason);
            Ok((cancelled?, revoked?))
        };
        let (requests_cancelled, grants_revoked) = finish().map_err(|status| {
            // A lock's unfinished part takes access away (cancellations, revocations); an
            // unlock's only reloads the refusal set.
            let (state, command, unfinished) = if req.locked {
                ("locked", "lock", "revocation incomplete")
            } else {
                ("unlocked", "unlock", "not finished")
            };
            tracing::error!(user = %subject, "{state}, but not finished: {}", status.message());
            Status::new(
                status.code(),
                format!(
                    "{name} is {state}; {unfinished} ({}): run `loggate user {command} \
                     {name} --reason …` again",
                    status.message()
                ),
            )
        })?;
        tracing::info!(
            user = %subject, by = %admin, locked = req.locked, changed, grants_revoked,
            requests_cancelled, "user lock set"
        );
        Ok(Response::new(pb::SetUserLockResponse {
            subject: subject.to_string(),
            changed,
            grants_revoked,
            requests_cancelled,
        }))
    }

    /// Cancels every pending request of `subject`, each audited as cancelled by `by`. A
    /// request decided (or gone) between the listing and its cancellation is skipped; any
    /// other failure (the store, the audit log) is returned once every request was tried, so
    /// a partial lock says so and a re-run cancels what is left.
    fn cancel_pending_of(&self, subject: &str, by: &str) -> Result<u32, Status> {
        let pending = self
            .store
            .list_requests(
                true,
                ListScope::Visible {
                    requester: subject,
                    groups: &[],
                },
                usize::try_from(u32::MAX).unwrap_or(usize::MAX),
                |r| r.requester == subject,
            )
            .map_err(internal)?;
        let mut cancelled = 0u32;
        let mut failed: Option<Status> = None;
        for row in pending.rows {
            let after = self.store.end_request(
                &row.id,
                RequestState::Cancelled,
                unix_now(),
                |r| {
                    if r.state == RequestState::Pending {
                        Ok(())
                    } else {
                        Err(DecidedMeanwhile.into())
                    }
                },
                |r| {
                    self.audit(&events::AccessCancelled {
                        request_id: r.id.clone(),
                        subject: r.requester.clone(),
                        cancelled_by: by.to_string(),
                    })
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))
                },
            );
            match after {
                Ok(Some(after)) => {
                    self.governance.changed(&after);
                    metrics::controller().request_entered(after.state.as_str());
                    cancelled = cancelled.saturating_add(1);
                }
                // Gone, or decided meanwhile: not cancelled; a grant it became is revoked
                // next.
                Ok(None) => {}
                Err(e) if e.downcast_ref::<DecidedMeanwhile>().is_some() => {}
                Err(e) => {
                    if failed.is_none() {
                        failed = Some(internal(
                            e.context(format!("cannot cancel request {}", row.id)),
                        ));
                    }
                }
            }
        }
        self.requests_changed.send_modify(|n| *n += 1);
        match failed {
            Some(status) => Err(status),
            None => Ok(cancelled),
        }
    }

    /// Revokes every active grant of `subject`, each audited (`grant.revoked`) in the
    /// revocation's own transaction, and wakes the fan-out that pushes the revocations to the
    /// agents — also when a later revocation fails: a revocation that committed is pushed at
    /// once whatever follows (on SQLite nothing else would wake the feed), and a re-run that
    /// finds nothing left to revoke still wakes it.
    fn revoke_grants_of(&self, subject: &str, by: &str, reason: &str) -> Result<u32, Status> {
        let reason = format!("user locked: {reason}");
        let mut revoked = 0u32;
        // Whether this call committed (and pushed) a revocation.
        let mut pushed = false;
        for _ in 0..MAX_REVOKE_ROUNDS {
            let active = self
                .store
                .list_grants(Some(subject), false, unix_now())
                .map_err(internal)?;
            if active.is_empty() {
                break;
            }
            for grant in active {
                // Recorded in the revocation's own transaction: a store that fails writes
                // no `grant.revoked` for a grant still active, and a grant revoked
                // meanwhile by someone else gets no second record.
                let mut recorded = None;
                self.store
                    .revoke_recorded(
                        &grant.id,
                        Revoked {
                            at: unix_now(),
                            by: by.to_string(),
                            reason: reason.clone(),
                        },
                        |revision| {
                            self.audit(&events::GrantRevoked {
                                grant_id: grant.id.clone(),
                                subject: Some(grant.subject.clone()),
                                revoked_by: by.to_string(),
                                reason: reason.clone(),
                                revision: None,
                            })
                            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
                            recorded = Some(revision);
                            Ok(())
                        },
                    )
                    .map_err(internal)?;
                if let Some(revision) = recorded {
                    metrics::controller().grants_revoked.inc();
                    revoked = revoked.saturating_add(1);
                    pushed = true;
                    self.push_revision(revision);
                }
            }
        }
        // Nothing revoked by this call (a re-run after a failure): the feed is woken anyway,
        // at the latest revision, so what an earlier run committed reaches the agents.
        if !pushed {
            let revision = self.store.latest_revision().map_err(internal)?;
            self.push_revision(revision);
        }
        Ok(revoked)
    }

    /// Wakes the change feed (fan-out to the agents) for `revision`, never moving it back.
    fn push_revision(&self, revision: u64) {
        metrics::controller().committed(revision);
        self.revision.send_if_modified(|now| {
            let newer = revision > *now;
            if newer {
                *now = revision;
            }
            newer
        });
    }

    /// How `user` signed in (the sign-in behind their certificate's key), for the policy's
    /// step-up rules: multi-factor when the IdP's `amr` holds `mfa` (RFC 8176).
    pub(super) fn sign_in_strength(
        &self,
        user: &loggate_core::identity::Identity,
    ) -> Result<crate::policy::SignInStrength, Status> {
        self.sign_in_strength_of(user.name(), &user.key_sha256_hex())
    }

    /// How the sign-in that certified `name`'s key `key_sha256` (hex) authenticated, aged now;
    /// `Unknown` when no valid sign-in is behind that key (see [`Self::sign_in_strength`]).
    pub(super) fn sign_in_strength_of(
        &self,
        name: &str,
        key_sha256: &str,
    ) -> Result<crate::policy::SignInStrength, Status> {
        let facts = self
            .store
            .sign_in_facts(name, key_sha256, unix_now())
            .map_err(internal)?;
        Ok(match facts {
            None => crate::policy::SignInStrength::Unknown,
            // A sign-in "in the future" (an IdP clock far ahead, a forged claim the IdP
            // signed) would never age: it meets no freshness rule.
            Some(f) if f.auth_time > unix_now().saturating_add(FUTURE_AUTH_TIME_SKEW) => {
                crate::policy::SignInStrength::Unknown
            }
            Some(f) => crate::policy::SignInStrength::Known {
                age: std::time::Duration::from_secs(
                    u64::try_from(unix_now().saturating_sub(f.auth_time)).unwrap_or(0),
                ),
                mfa: f.amr.iter().any(|m| m == "mfa"),
            },
        })
    }

    /// `ListUsers` (admins): the people signed in with the IdP or ever locked, by name.
    pub(super) async fn list_users_rpc(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let admin = self.user(&request)?;
        self.require_admin(&admin, "list users")?;
        let (users, mut truncated) = self.store.list_users(MAX_LISTED).map_err(internal)?;
        let all = users.into_iter().map(|u| pb::UserInfo {
            name: u.name,
            last_sign_in_unix: u.last_sign_in.unwrap_or(0),
            cert_not_after_unix: u.cert_not_after.unwrap_or(0),
            groups: u.groups,
            locked: u.lock.as_ref().is_some_and(|l| l.locked),
            lock_changed_unix: u.lock.as_ref().map_or(0, |l| l.changed_at),
            lock_changed_by: u
                .lock
                .as_ref()
                .map(|l| l.changed_by.clone())
                .unwrap_or_default(),
            lock_reason: u.lock.map(|l| l.reason).unwrap_or_default(),
        });
        // Bounded by size as well as by count (many people with many groups): what a client
        // decodes by default (4 MiB) always holds the answer, cut with `truncated`.
        let (users, cut) = within_bytes(all, MAX_ANSWER_BYTES);
        truncated |= cut;
        Ok(Response::new(pb::ListUsersResponse { users, truncated }))
    }
}

/// The first `items` whose encodings (with a field's few bytes of framing each) fit in `max`
/// bytes, and whether any was left out.
fn within_bytes<M: prost::Message>(
    items: impl IntoIterator<Item = M>,
    max: usize,
) -> (Vec<M>, bool) {
    let mut kept = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        bytes = bytes.saturating_add(item.encoded_len().saturating_add(8));
        if bytes > max {
            return (kept, true);
        }
        kept.push(item);
    }
    (kept, false)
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn a_user_list_is_cut_by_its_encoded_size_and_says_so() {
        let user = |i: usize| pb::UserInfo {
            name: format!("user-{i}"),
            groups: vec!["g".repeat(200); 200],
            ..pb::UserInfo::default()
        };
        let one = prost::Message::encoded_len(&user(0)) + 8;
        let (kept, cut) = within_bytes((0..100).map(user), one * 10);
        assert_eq!((kept.len(), cut), (10, true));
        let (kept, cut) = within_bytes((0..5).map(user), one * 10);
        assert_eq!((kept.len(), cut), (5, false));
        // 3 MiB of them: under the client's 4 MiB, whatever the number of people.
        let (kept, cut) = within_bytes((0..1000).map(user), MAX_ANSWER_BYTES);
        assert!(cut);
        let answer = pb::ListUsersResponse {
            users: kept,
            truncated: cut,
        };
        assert!(prost::Message::encoded_len(&answer) < 4 << 20);
    }
}
