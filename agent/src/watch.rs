//! The agent's one long-lived `WatchGrants` stream to the controller: it dials out (hosts need
//! no inbound port from the controller), resumes from the last revision it applied, verifies
//! and persists every pushed grant and revocation, and reconnects with jittered exponential
//! back-off so a controller restart does not meet every agent at the same instant. With several
//! controller addresses (replicas of one controller) it moves to another one whenever its
//! stream fails or ends, the addresses not yet tried in the round first (see `controllers.rs`).
//!
//! A revision is only a position within the controller's **epoch** (new at every controller
//! start, which may be the restore of a backup that reuses revision numbers). The agent sends
//! the epoch with its revision; when the controller's differs, the controller sends everything
//! from zero and the agent resynchronises: it keeps serving its grants meanwhile, installs what
//! it is sent, and once the controller says it has caught up (its first heartbeat) forgets the
//! grants the controller no longer holds, keeping every revocation it knows.

use crate::config::AgentConfig;
use crate::grants::{GrantStore, RevocationInfo};
use crate::Shared;
use anyhow::Context;
use loggate_core::audit::{events, AuditEvent};
use loggate_core::backoff::{Backoff, Failure, Rounds};
use loggate_core::grant::{unix_now, GrantError, ReceivedGrant};
use loggate_core::tls::Server;
use loggate_proto as pb;
use loggate_proto::controller_client::ControllerClient;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// The pause between attempts to reach the controller (its grant stream, the checkpoint
/// sender): the fleet's back-off, full jitter (see `loggate_core::backoff::FLEET`).
pub const CONTROLLER_BACKOFF: Backoff = loggate_core::backoff::FLEET;
/// A stream silent for this long (no heartbeat) is considered dead.
const SILENCE: Duration = Duration::from_secs(35);
/// The longest a connection to the controller may take to open, TCP and TLS together
/// (`connect_timeout` bounds TCP only: a controller that accepts and stalls in the handshake
/// would hold the agent there for ever, and every revocation made after it recovers unseen).
pub const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// The longest a call to the controller may wait for its answer to begin.
pub const ANSWER_WITHIN: Duration = SILENCE;

pub async fn run(shared: Arc<Shared>) {
    // The first connection is made at once: an agent that is up is registered with the
    // controller at once (`agent status`, `ResolveAgent` and grants issued right after its start
    // depend on it). A fleet reconnecting after a controller restart spreads itself by the
    // full-jitter back-off below; spreading a fleet's simultaneous *first* start
    // (`backoff::FIRST_CONNECT_SPREAD`, simulated by `cargo xtask bench fleet`) needs a readiness
    // signal that waits for the registration first — not built yet.
    //
    // With several controller addresses (the replicas of one controller, `controllers.rs`), a
    // connection refused (or timed out, or another cluster's) moves the agent to an address not
    // yet down in this round after at most the first pause; a live controller that turned it
    // away (busy, unavailable, a cut stream) ends the round, and the back-off doubles
    // (`loggate_core::backoff::Rounds`); the next stream resumes from the last revision
    // applied, so nothing is missed.
    let controllers = &shared.config.controllers;
    let mut rounds = Rounds::new(CONTROLLER_BACKOFF, controllers.all().len());
    loop {
        let (at, addr) = controllers.current();
        let how = match watch_once(&shared, addr, &mut rounds).await {
            Ok(()) => {
                tracing::warn!(controller = %addr, "the controller closed the grant stream");
                Failure::TurnedAway
            }
            Err(e) => {
                tracing::warn!(controller = %addr, "grant stream to the controller: {e:#}");
                failure_of(&e)
            }
        };
        let next = rounds.failed(at, how);
        let (_, to) = controllers.move_from(at, next.address);
        if to != addr {
            tracing::info!(from = %addr, to = %to, "moving to the next controller address");
        }
        tokio::time::sleep(next.pause).await;
    }
}

/// How the grant stream's attempt failed, for the reconnect ([`Rounds`]): the shared
/// classification (`loggate_core::backoff::Failure::of`, which the bench uses too), and a
/// controller of another cluster (`cluster.rs`) counts as that address down, like a server
/// whose certificate fails.
fn failure_of(error: &anyhow::Error) -> Failure {
    if error
        .chain()
        .any(|cause| cause.is::<crate::cluster::Mismatch>())
    {
        return Failure::Down;
    }
    Failure::of(error)
}

/// A connection to the controller at `addr` with the agent's mTLS identity.
pub async fn connect(
    config: &AgentConfig,
    addr: &str,
) -> anyhow::Result<ControllerClient<Channel>> {
    let endpoint = config
        .tls
        .endpoint(addr, Server::Controller)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20));
    let Ok(connected) = tokio::time::timeout(CONNECT_WITHIN, endpoint.connect()).await else {
        anyhow::bail!(
            "no TLS handshake with the controller at {addr} within {} s",
            CONNECT_WITHIN.as_secs()
        );
    };
    let channel =
        connected.with_context(|| format!("cannot connect to the controller at {addr}"))?;
    Ok(ControllerClient::new(channel).max_decoding_message_size(1 << 20))
}

/// `call`'s answer, or an error once [`ANSWER_WITHIN`] has passed without one: a call queued
/// for a connection that died unseen must not hold its caller for ever.
pub async fn answered<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(ANSWER_WITHIN, call).await {
        Ok(answer) => Ok(answer?),
        Err(_) => anyhow::bail!(
            "the controller did not answer {what} within {} s",
            ANSWER_WITHIN.as_secs()
        ),
    }
}

/// A connection to the controller at its current address (`controllers.rs`): what the
/// checkpoint sender and the certificate renewal use; only the grant stream moves the agent to
/// another address.
pub async fn connect_current(config: &AgentConfig) -> anyhow::Result<ControllerClient<Channel>> {
    connect(config, config.controllers.current().1).await
}

/// One `WatchGrants` stream to the controller at `addr`, until it ends. `rounds` is reset once
/// the controller's first event has passed the cluster check: the pause after a long-lived
/// stream breaks starts short again,
/// whatever an earlier outage had grown it to.
async fn watch_once(shared: &Shared, addr: &str, rounds: &mut Rounds) -> anyhow::Result<()> {
    let config = &shared.config;
    let mut client = connect(config, addr).await?;
    let (after_revision, after_epoch) = (shared.grants.revision(), shared.grants.epoch());
    let request = pb::WatchGrantsRequest {
        agent_id: config.id.clone(),
        labels: config.labels.clone(),
        listen_addr: config.advertise.clone(),
        after_revision,
        after_epoch: after_epoch.clone(),
    };
    let mut stream = answered("the grant stream", client.watch_grants(request))
        .await?
        .into_inner();
    tracing::info!(
        controller = %addr,
        after = shared.grants.revision(),
        epoch = %shared.grants.epoch(),
        "connected to the controller"
    );
    // Each connection starts following the stored epoch; an interrupted resync starts over.
    let mut session = Session::default();
    let mut first = true;
    loop {
        let event = match tokio::time::timeout(SILENCE, stream.message()).await {
            Err(_) => anyhow::bail!("no heartbeat from the controller for {SILENCE:?}"),
            Ok(message) => match message? {
                Some(event) => event,
                None => return Ok(()),
            },
        };
        // Nothing is applied from a controller of another cluster (`cluster.rs`): the stream is
        // dropped and the address counts as failed.
        if let Err(e) = shared.cluster.check(&event.cluster_id) {
            if let Some(mismatch) = e.downcast_ref::<crate::cluster::Mismatch>() {
                shared.audit(&events::ControllerRefused {
                    address: addr.to_string(),
                    reason_code: "cluster_mismatch",
                    expected_cluster_id: mismatch.expected.clone(),
                    got_cluster_id: mismatch.got.clone(),
                })?;
            }
            return Err(e.context(format!("refusing the controller at {addr}")));
        }
        if first {
            first = false;
            // A success only once the first event came from our cluster: a controller of
            // another cluster (a re-pin after a migration, a restore into a new database) is
            // an address down, and its refusals must grow the pause, not reset it each time
            // (second review of herd5, M2).
            rounds.connected();
            shared.audit(&events::ControllerConnected {
                address: addr.to_string(),
                epoch: event.epoch.clone(),
                after_revision,
                after_epoch: after_epoch.clone(),
            })?;
        }
        apply(shared, &mut session, event)?;
    }
}

/// What one `WatchGrants` connection is doing: following the stored epoch, or resynchronising
/// into a new one.
#[derive(Default)]
pub struct Session {
    resync: Option<Resync>,
}

struct Resync {
    epoch: String,
    /// The grants the controller sent in this resync (by verified id).
    sent: HashSet<String>,
}

/// What applying a pushed event needs: the grant store, the one verifier (with the agent's
/// audience), and the audit stream — the agent's [`Shared`], or a test's stand-in.
pub trait WatchTarget {
    fn store(&self) -> &GrantStore;
    /// Verifies a pushed token on receipt at `now`.
    fn verify(&self, token: &str, now: i64) -> Result<ReceivedGrant, GrantError>;
    /// Appends one audit event, on disk when it returns.
    fn audit<E: AuditEvent>(&self, event: &E) -> anyhow::Result<()>;
}

impl WatchTarget for Shared {
    fn store(&self) -> &GrantStore {
        &self.grants
    }
    fn verify(&self, token: &str, now: i64) -> Result<ReceivedGrant, GrantError> {
        self.verifier.verify_on_receipt(token, &self.audience, now)
    }
    fn audit<E: AuditEvent>(&self, event: &E) -> anyhow::Result<()> {
        Shared::audit(self, event).map(|_| ())
    }
}

/// The `grant.dropped` reason for a grant a resync forgot. Neutral: a restore drops grants, and
/// so does a plain restart when the controller's clock saw them expire before the agent's did.
pub const DROPPED_AUDIT_REASON: &str = "the controller no longer holds this grant";

/// Applies one pushed event. A grant that fails verification is refused and audited, never
/// stored; the revision still advances so it is not fetched again. An event of another epoch
/// than the stored one starts a resync (an empty epoch is an older controller's: followed as
/// before); its first heartbeat ends it.
pub fn apply(
    shared: &impl WatchTarget,
    session: &mut Session,
    event: pb::GrantEvent,
) -> anyhow::Result<()> {
    let store: &GrantStore = shared.store();
    let resyncing_into = session.resync.as_ref().map(|r| r.epoch.as_str());
    if !event.epoch.is_empty()
        && event.epoch != store.epoch()
        && resyncing_into != Some(event.epoch.as_str())
    {
        tracing::info!(
            from = %store.epoch(), to = %event.epoch,
            "the controller's epoch changed (restart or restore): resynchronising grants"
        );
        session.resync = Some(Resync {
            epoch: event.epoch.clone(),
            sent: HashSet::new(),
        });
    }
    // During a resync the stored position stays the old epoch's until the resync completes.
    let position = match session.resync {
        Some(_) => None,
        None => Some(event.revision),
    };
    match event.event {
        Some(pb::grant_event::Event::Grant(signed)) => {
            match shared.verify(&signed.token, unix_now()) {
                Ok(grant) => {
                    let c = grant.claims().clone();
                    if let Some(resync) = &mut session.resync {
                        resync.sent.insert(c.jti.clone());
                    }
                    if store.holds(&c.jti, &signed.token) {
                        // Sent again by a resync: already held and audited.
                        if let Some(revision) = position {
                            store.set_revision(revision)?;
                        }
                        return Ok(());
                    }
                    shared.audit(&events::GrantReceived {
                        grant_id: c.jti.clone(),
                        subject: c.sub,
                        paths: loggate_core::grant::resource_names(&c.paths, &c.units),
                        not_before: c.nbf,
                        not_after: c.exp,
                        approver: c.approver,
                        reason: c.reason,
                        redaction_profile: c.redaction,
                        revision: event.revision,
                    })?;
                    store.install(grant, position)?;
                    tracing::info!(grant_id = %c.jti, revision = event.revision, "grant installed");
                }
                Err(e) => {
                    shared.audit(&events::GrantRejected {
                        grant_id: signed.grant_id,
                        reason_code: e.code(),
                        reason: e.to_string(),
                        revision: event.revision,
                    })?;
                    if let Some(revision) = position {
                        store.set_revision(revision)?;
                    }
                }
            }
        }
        Some(pb::grant_event::Event::Revocation(r)) => {
            let info = RevocationInfo {
                at: r.revoked_at_unix,
                by: r.revoked_by.clone(),
                reason: r.reason.clone(),
            };
            let subject = store.subject_of(&r.grant_id);
            if store.revoke(&r.grant_id, info, position)? {
                shared.audit(&events::GrantRevoked {
                    grant_id: r.grant_id,
                    subject,
                    revoked_by: r.revoked_by,
                    reason: r.reason,
                    revision: Some(event.revision),
                })?;
            }
        }
        Some(pb::grant_event::Event::Heartbeat(_)) => match session.resync.take() {
            Some(resync) => {
                let from_epoch = store.epoch();
                let forgotten =
                    store.finish_resync(&resync.epoch, event.revision, &resync.sent, unix_now())?;
                let dropped = u64::try_from(forgotten.len()).unwrap_or(u64::MAX);
                for id in forgotten {
                    shared.audit(&events::GrantDropped {
                        grant_id: id,
                        reason: DROPPED_AUDIT_REASON.into(),
                    })?;
                }
                shared.audit(&events::ControllerResynced {
                    from_epoch,
                    to_epoch: resync.epoch.clone(),
                    revision: event.revision,
                    dropped,
                })?;
                tracing::info!(epoch = %resync.epoch, revision = event.revision, "grants resynchronised");
            }
            None => store.set_revision(event.revision)?,
        },
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use loggate_core::grant::{Audience, GrantClaims, GrantVerifier, SigningKey};
    use std::cell::RefCell;

    /// A controller of another cluster is that address down (the next address at once), as a
    /// refused connection is; a live controller's refusal (`UNAVAILABLE`) is a turn-away.
    #[test]
    fn another_clusters_controller_counts_as_the_address_down() {
        let mismatch = anyhow::Error::new(crate::cluster::Mismatch {
            expected: "a".repeat(32),
            got: "b".repeat(32),
        })
        .context("refusing the controller at c:1");
        assert_eq!(failure_of(&mismatch), Failure::Down);
        let busy = anyhow::Error::new(tonic::Status::unavailable("busy")).context("stream");
        assert_eq!(failure_of(&busy), Failure::TurnedAway);
    }
    /// The store, verifier and audit stream of an agent, without its network and files.
    struct Agent {
        _dir: tempfile::TempDir,
        key: SigningKey,
        verifier: GrantVerifier,
        audience: Audience,
        store: GrantStore,
        audited: RefCell<Vec<serde_json::Value>>,
    }

    impl WatchTarget for Agent {
        fn store(&self) -> &GrantStore {
            &self.store
        }
        fn verify(&self, token: &str, now: i64) -> Result<ReceivedGrant, GrantError> {
            self.verifier.verify_on_receipt(token, &self.audience, now)
        }
        fn audit<E: AuditEvent>(&self, event: &E) -> anyhow::Result<()> {
            let mut value = serde_json::to_value(event)?;
            value["event"] = E::TYPE.name.into();
            self.audited.borrow_mut().push(value);
            Ok(())
        }
    }

    impl Agent {
        fn new() -> Agent {
            let dir = tempfile::tempdir().unwrap();
            let key = SigningKey::generate().unwrap();
            let verifier =
                GrantVerifier::new(vec![key.verifying_key().clone()], Duration::from_secs(60));
            let audience = Audience {
                agent_id: loggate_core::identity::AgentId::new("web-1").unwrap(),
                labels: vec![],
            };
            let store =
                GrantStore::open(&dir.path().join("state"), &verifier, &audience, unix_now())
                    .unwrap()
                    .store;
            Agent {
                _dir: dir,
                key,
                verifier,
                audience,
                store,
                audited: RefCell::new(Vec::new()),
            }
        }

        fn token(&self, id: &str) -> String {
            let now = unix_now();
            self.key
                .sign(&GrantClaims {
                    jti: id.into(),
                    iss: "spiffe://loggate.local/controller".into(),
                    sub: "spiffe://loggate.local/user/alice".into(),
                    iat: now,
                    nbf: now,
                    exp: now + 3600,
                    hosts: vec!["web-1".into()],
                    labels: vec![],
                    paths: vec!["/var/log/*.log".into()],
                    units: vec![],
                    redaction: "default".into(),
                    reason: "T-1".into(),
                    approver: "spiffe://loggate.local/user/admin".into(),
                    key_sha256: "00".repeat(32),
                })
                .unwrap()
        }

        fn events(&self, name: &str, id: &str) -> usize {
            self.audited
                .borrow()
                .iter()
                .filter(|e| e["event"] == name && e["grant_id"] == id)
                .count()
        }
    }

    fn grant(epoch: &str, revision: u64, token: String) -> pb::GrantEvent {
        pb::GrantEvent {
            revision,
            epoch: epoch.into(),
            cluster_id: String::new(),
            event: Some(pb::grant_event::Event::Grant(pb::SignedGrant {
                grant_id: String::new(),
                token,
            })),
        }
    }

    fn heartbeat(epoch: &str, revision: u64) -> pb::GrantEvent {
        pb::GrantEvent {
            revision,
            epoch: epoch.into(),
            cluster_id: String::new(),
            event: Some(pb::grant_event::Event::Heartbeat(pb::Heartbeat {})),
        }
    }

    #[test]
    fn a_resync_cut_before_its_heartbeat_changes_no_position_and_drops_nothing() {
        let agent = Agent::new();
        let (kept, other, new) = (
            agent.token("g-kept"),
            agent.token("g-other"),
            agent.token("g-new"),
        );
        let mut session = Session::default();
        apply(&agent, &mut session, grant("e1", 4, kept.clone())).unwrap();
        apply(&agent, &mut session, grant("e1", 5, other.clone())).unwrap();
        apply(&agent, &mut session, heartbeat("e1", 5)).unwrap();
        assert_eq!(
            (agent.store.epoch(), agent.store.revision()),
            ("e1".into(), 5)
        );

        // A new epoch: the resync sends g-kept again (and a new grant), then the stream drops.
        let mut session = Session::default();
        apply(&agent, &mut session, grant("e2", 1, kept.clone())).unwrap();
        apply(&agent, &mut session, grant("e2", 2, new.clone())).unwrap();
        drop(session);
        assert_eq!(
            (agent.store.epoch(), agent.store.revision()),
            ("e1".into(), 5),
            "the old epoch's position stays until a resync completes"
        );
        for id in ["g-kept", "g-other", "g-new"] {
            assert!(agent.store.subject_of(id).is_some(), "{id} held");
            assert!(agent.store.revocation(id).is_none(), "{id} not dropped");
        }

        // The next connection resyncs in full: g-other is dropped, g-kept is not re-audited.
        let mut session = Session::default();
        apply(&agent, &mut session, grant("e2", 1, kept.clone())).unwrap();
        apply(&agent, &mut session, grant("e2", 2, new.clone())).unwrap();
        apply(&agent, &mut session, heartbeat("e2", 2)).unwrap();
        assert_eq!(
            (agent.store.epoch(), agent.store.revision()),
            ("e2".into(), 2)
        );
        assert_eq!(agent.events("grant.received", "g-kept"), 1);
        assert_eq!(agent.events("grant.dropped", "g-other"), 1);
        let resynced: Vec<_> = agent
            .audited
            .borrow()
            .iter()
            .filter(|e| e["event"] == "controller.resynced" && e["to_epoch"] == "e2")
            .cloned()
            .collect();
        assert_eq!(
            resynced.len(),
            1,
            "one completed resync into e2, one record: {resynced:?}"
        );
        assert_eq!(resynced[0]["from_epoch"], "e1");
        assert_eq!(resynced[0]["to_epoch"], "e2");
        assert_eq!(resynced[0]["revision"], 2);
        assert_eq!(resynced[0]["dropped"], 1);
        assert!(agent.store.revocation("g-other").is_some());
        assert!(agent.store.revocation("g-kept").is_none());
    }
}
