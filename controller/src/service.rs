//! The controller's gRPC service: grants are issued and revoked here, recorded in the store,
//! signed with the controller's key, and pushed to the agents they cover over each agent's
//! `WatchGrants` stream.

mod anchor;
pub mod enrol;
pub mod fanout;
pub mod grant_stream;
mod registrations;
mod requests;
pub mod signin;
mod users;

pub use anchor::enrol_checkpoint_keys;

use crate::store::{AgentRow, GrantRow, Revoked, Store};
use loggate_core::audit::{events, AuditEvent, SharedAuditLog};
use loggate_core::daemon::peer_identity;
use loggate_core::grant::{
    compile_path_glob, new_grant_id, resource_names, unix_now, GrantError, SigningKey,
};
use loggate_core::identity::{is_valid_name, user_spiffe_id, Identity, Role};
use loggate_core::metrics;
use loggate_proto as pb;
use loggate_proto::controller_server::Controller;
use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// How often an idle `WatchGrants` stream carries a heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
const MAX_FIELD: usize = 1024;
/// How far in the past a requested start may lie: the client's clock may run behind ours.
pub const MAX_START_SKEW: Duration = Duration::from_secs(5 * 60);
/// How far ahead a grant may be scheduled to start (366 days): far enough for any planned
/// maintenance, near enough that every time stays a valid calendar date and in `i64`.
pub const MAX_START_AHEAD: Duration = Duration::from_secs(366 * 24 * 3600);
const MAX_LIST: usize = 64;
/// The longest epoch an agent may send back: ours are 32 hex characters; anything longer is
/// not one of ours and would only grow log lines.
pub const MAX_EPOCH_BYTES: usize = 64;

/// A duration in whole seconds, for Unix-time arithmetic (`now + ttl`): saturating, so a
/// duration beyond `i64::MAX` seconds stays far in the future instead of wrapping to before
/// now (a grant or request that ends when it starts).
pub(crate) fn seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// What the controller's configuration allows when grants are issued.
pub struct Policy {
    /// User names allowed to issue grants, list everyone's and revoke any.
    pub admins: HashSet<String>,
    /// The longest grant.
    pub max_ttl: Duration,
    /// The redaction profiles a grant may name.
    pub redaction_profiles: Vec<String>,
}

pub struct ControllerService {
    store: Arc<Store>,
    signer: Arc<SigningKey>,
    trust_domain: String,
    policy: Policy,
    /// Bumped by whoever commits a change to the revision log: the change feed reads it.
    revision: watch::Sender<u64>,
    /// The one reader of the revision log for every `WatchGrants` stream, started with the
    /// first stream (it needs the runtime).
    feed: Mutex<Option<Arc<fanout::ChangeFeed>>>,
    /// Agents with a `WatchGrants` stream open, with how many each holds: an agent that
    /// reconnects opens its new stream before the old one ends, and the old one's end must
    /// not count it gone.
    connected: Arc<Mutex<HashMap<String, usize>>>,
    audit: Arc<SharedAuditLog>,
    /// Becomes true when the daemon shuts down: watch streams end so connections can close.
    stopping: watch::Receiver<bool>,
    /// This run's epoch of the revision log (see `Store::new_epoch`), sent with every event.
    epoch: String,
    /// The controller cluster's id (see `Store::cluster_id`), sent with every grant event,
    /// checkpoint and renewal answer so agents refuse an independent controller.
    cluster_id: String,
    /// This replica's name (`replica_name`), stored with each agent's registration.
    replica: String,
    /// The access policy in force (`with_access_policy`); None: requests are refused.
    access: Option<Arc<crate::policy::PolicyHandle>>,
    /// Bumped whenever a request changes state: `GetRequest` waiters and the expiry task wake.
    requests_changed: watch::Sender<u64>,
    /// Webhook notifications (`with_access_policy`).
    notifier: Option<crate::policy::notify::Notifier>,
    /// Request states for `--wait` waiters and the budget of refused requests' records.
    governance: Arc<requests::Governance>,
    /// The report budget of checkpoint refusals and conflicts (see `anchor`).
    checkpoint_reports: Arc<anchor::CheckpointReports>,
    /// Removed agents' certificates (see `enrol`): refused by the identity interceptor, and
    /// their watch streams cut.
    revocations: Arc<loggate_core::daemon::Revocations>,
    /// The agents' registrations queued by their streams' openings, and their writer.
    registrations: Arc<registrations::Registrations>,
    /// The agents' former labels, reloaded with `revocations`: a stream still under one is cut
    /// (`enrol::Relabelled`).
    relabelled: Arc<enrol::Relabelled>,
    /// The run-time CA and agent certificate lifetime, for `RenewCertificate` (see `enrol`);
    /// None without `[enrolment]`.
    agent_ca: Option<(Arc<crate::pki::RuntimeCa>, Duration)>,
}

impl ControllerService {
    pub fn new(
        store: Arc<Store>,
        signer: SigningKey,
        trust_domain: String,
        policy: Policy,
        audit: Arc<SharedAuditLog>,
        stopping: watch::Receiver<bool>,
        epoch: String,
    ) -> anyhow::Result<Self> {
        let (revision, _) = watch::channel(store.latest_revision()?);
        // Read where it is kept, so that no service presents none (agents pin it).
        let cluster_id = store.cluster_id()?;
        Ok(Self {
            store,
            signer: Arc::new(signer),
            trust_domain,
            policy,
            revision,
            feed: Mutex::new(None),
            connected: Arc::default(),
            audit,
            stopping,
            epoch,
            cluster_id,
            replica: String::new(),
            access: None,
            requests_changed: watch::channel(0).0,
            notifier: None,
            governance: Arc::new(requests::Governance::new()),
            checkpoint_reports: Arc::new(anchor::CheckpointReports::new(
                loggate_core::audit::budget::BudgetPolicy::default(),
            )),
            revocations: Arc::default(),
            registrations: Arc::default(),
            relabelled: Arc::default(),
            agent_ca: None,
        })
    }

    /// Names this replica (`replica_name`) in the registration of the agents connected to it.
    pub fn with_replica_name(mut self, replica: String) -> Self {
        self.replica = replica;
        self
    }

    fn audit(&self, event: &impl AuditEvent) -> Result<(), Status> {
        // Waiting for the disk blocks: let the runtime move its other tasks off this thread.
        let appended = tokio::task::block_in_place(|| self.audit.append(event));
        appended.map(|_| ()).map_err(|e| {
            tracing::error!("audit write failed: {e}");
            Status::unavailable("the controller cannot write its audit log; nothing was changed")
        })
    }

    fn audit_issued(&self, grant: &GrantRow) -> Result<(), Status> {
        self.audit(&events::GrantIssued {
            grant_id: grant.id.clone(),
            subject: grant.subject.clone(),
            issuer: grant.issuer.clone(),
            hosts: grant.hosts.clone(),
            labels: grant.labels.clone(),
            paths: resource_names(&grant.paths, &grant.units),
            not_before: grant.not_before,
            not_after: grant.not_after,
            reason: grant.reason.clone(),
            redaction_profile: grant.profile.clone(),
        })
    }

    /// The calling person. The first certificate key seen for a person is enrolled (trust on
    /// first use, audited); a later, different key is never silently taken over: grants stay
    /// bound to the enrolled key until an admin re-enrols (`enrol_user_certs`).
    fn user<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        let user = peer_identity(request, Role::User)?;
        let key = user.key_sha256_hex();
        // Audited before it is stored (inside the transaction): no key without its record.
        self.store
            .enrol_user_key_if_absent(user.spiffe_id(), &key, unix_now(), || {
                self.audit(&events::UserKeyEnrolled {
                    subject: user.spiffe_id().to_string(),
                    key_sha256: key.clone(),
                    how: "first_contact",
                })
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
            })
            .map_err(internal)?;
        // The IdP groups of the sign-in that certified this very key (kept server-side, never
        // read from the certificate), for the access policy's `idp:` members.
        match self
            .store
            .idp_groups_for(user.name(), &key, unix_now())
            .map_err(internal)?
        {
            Some(groups) => Ok(user.with_idp_groups(&groups)),
            None => Ok(user),
        }
    }

    /// The change feed, started with the first stream.
    fn change_feed(&self) -> Result<Arc<fanout::ChangeFeed>, Status> {
        let mut feed = self.feed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(feed) = feed.as_ref() {
            return Ok(feed.clone());
        }
        let started = fanout::ChangeFeed::start(
            self.store.clone(),
            fanout::Stamp {
                epoch: self.epoch.clone(),
                cluster_id: self.cluster_id.clone(),
            },
            self.revision.subscribe(),
            self.stopping.clone(),
            fanout::FEED_CAPACITY,
            HEARTBEAT,
        )
        .map_err(internal)?;
        *feed = Some(started.clone());
        Ok(started)
    }

    fn is_admin(&self, user: &Identity) -> bool {
        self.policy.admins.contains(user.name())
    }

    /// Refuses a non-admin; `what` names the action in the one-sentence refusal.
    fn require_admin(&self, user: &Identity, what: &str) -> Result<(), Status> {
        if self.is_admin(user) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{user} is not a loggate admin; only admins may {what}"
            )))
        }
    }

    /// [`Self::require_admin`] for an action that changes who gets access, and the access
    /// policy's `settings.admin_step_up` on top: an admin whose sign-in at the IdP is older
    /// than its `max_age` or not multi-factor is refused (`step_up_required`, audited as
    /// `admin.step_up_refused`) with the way out, `loggate login --fresh`. A certificate with
    /// no sign-in behind it (`loggate pki issue`, an older sign-in's) meets no rule: fail
    /// closed. Without an access policy, or without the setting, any admin certificate will
    /// do. A reload by SIGHUP (root on the controller's host) is not an admin action and is
    /// not held to it: the way back from a rule nobody can meet.
    fn require_admin_for(&self, user: &Identity, action: AdminAction) -> Result<(), Status> {
        self.require_admin(user, action.not_admin())?;
        let Some(rule) = self
            .access
            .as_ref()
            .and_then(|h| h.current())
            .and_then(|p| p.admin_step_up.clone())
        else {
            return Ok(());
        };
        let strength = self.sign_in_strength(user)?;
        if strength.meets(&rule) {
            return Ok(());
        }
        let reason = format!(
            "step_up_required: to {}, an admin needs {}{}: run `loggate login --fresh` and \
             try again",
            action.what(),
            rule.needs(),
            if strength == crate::policy::SignInStrength::Unknown {
                " (no sign-in with the IdP is behind your certificate)"
            } else {
                ""
            }
        );
        self.audit(&events::AdminStepUpRefused {
            subject: user.spiffe_id().to_string(),
            key_sha256: user.key_sha256_hex(),
            action: action.as_str(),
            reason: reason.clone(),
        })?;
        tracing::warn!(admin = %user, action = action.as_str(), "admin action refused: step-up required");
        Err(Status::permission_denied(reason))
    }
}

/// The admin actions that change who gets access, held to `settings.admin_step_up`
/// ([`ControllerService::require_admin_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminAction {
    /// `grant issue`: break-glass, any profile including `raw`.
    GrantIssue,
    /// `user lock`.
    UserLock,
    /// `user unlock`: lets a person locked out back in.
    UserUnlock,
    /// `agent remove`.
    AgentRemove,
    /// `agent token create`: a new host joins the fleet.
    AgentTokenCreate,
    /// `policy reload`: new roles, groups, approvers.
    PolicyReload,
    /// `access ack`: marks someone's break-glass grant reviewed, which takes it off
    /// `access review`'s list (closes the detective control).
    BreakGlassAck,
}

impl AdminAction {
    /// The code in `admin.step_up_refused`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AdminAction::GrantIssue => "grant_issue",
            AdminAction::UserLock => "user_lock",
            AdminAction::UserUnlock => "user_unlock",
            AdminAction::AgentRemove => "agent_remove",
            AdminAction::AgentTokenCreate => "agent_token_create",
            AdminAction::PolicyReload => "policy_reload",
            AdminAction::BreakGlassAck => "break_glass_ack",
        }
    }

    /// The action in a sentence ("only admins may …").
    fn what(self) -> &'static str {
        match self {
            AdminAction::GrantIssue => "issue grants",
            AdminAction::UserLock => "lock people out",
            AdminAction::UserUnlock => "unlock people",
            AdminAction::AgentRemove => "remove agents",
            AdminAction::AgentTokenCreate => "create join tokens",
            AdminAction::PolicyReload => "reload the access policy",
            AdminAction::BreakGlassAck => "review break-glass grants",
        }
    }

    /// What a non-admin is told: the action, and their way to what they wanted when there is
    /// one.
    fn not_admin(self) -> &'static str {
        match self {
            AdminAction::GrantIssue => "issue grants; ask an admin to issue the grant",
            other => other.what(),
        }
    }
}

fn internal(e: anyhow::Error) -> Status {
    // A lock that committed while the call was on its way: the store refused, say so.
    if let Some(locked) = e.downcast_ref::<crate::store::UserLocked>() {
        return Status::permission_denied(locked.to_string());
    }
    // PostgreSQL down, restarting or busy: conditions that pass, said as such (and
    // retryable); logged at most every 10 s, since every call then fails the same way.
    static UNAVAILABLE: crate::store::db::RateLimitedWarning =
        crate::store::db::RateLimitedWarning::new(std::time::Duration::from_secs(10));
    if crate::store::db::database_busy(&e) {
        if let Some(left_out) = UNAVAILABLE.admit() {
            tracing::warn!(
                "the database is busy ({left_out} such warnings left out before): {e:#}"
            );
        }
        return Status::unavailable(
            "the controller's database (PostgreSQL) is busy; retry in a few seconds (the controller's log says why)",
        );
    }
    if crate::store::db::database_unavailable(&e) {
        if let Some(left_out) = UNAVAILABLE.admit() {
            tracing::warn!(
                "the database is unavailable ({left_out} such warnings left out before): {e:#}"
            );
        }
        return Status::unavailable(
            "the controller's database (PostgreSQL) is unavailable; retry once it is back (the controller's log says why)",
        );
    }
    tracing::error!("{e:#}");
    Status::internal("the controller hit an internal error; see its log")
}

/// A request's or an issue's journal units: bounded like every list, and each a systemd unit
/// name (no glob: a grant names units exactly).
fn check_units(units: &[String]) -> Result<(), Status> {
    bounded_list("units", units)?;
    for u in units {
        loggate_core::grant::UnitName::new(u)
            .map_err(|e| Status::invalid_argument(format!("--unit: {e}")))?;
    }
    Ok(())
}

fn bounded_list(name: &str, list: &[String]) -> Result<(), Status> {
    if list.len() > MAX_LIST || list.iter().any(|s| s.len() > MAX_FIELD || s.is_empty()) {
        return Err(Status::invalid_argument(format!(
            "{name}: at most {MAX_LIST} non-empty entries of at most {MAX_FIELD} bytes"
        )));
    }
    Ok(())
}

/// The validity window `(not_before, not_after)` of a grant requested at `now`, or the
/// refusal: whatever a client sends, the start is `now` (for 0, or for a start up to
/// [`MAX_START_SKEW`] in the past: a client clock running behind, not a wish for a shorter
/// grant) or at most [`MAX_START_AHEAD`] after `now`, the TTL is between 1 s and `max_ttl`,
/// and the end lies after `now` (no grant is expired when signed). No arithmetic here can wrap.
pub fn grant_window(
    now: i64,
    not_before_unix: i64,
    ttl_seconds: u64,
    max_ttl: Duration,
) -> Result<(i64, i64), Status> {
    let ttl = Duration::from_secs(ttl_seconds);
    if ttl.is_zero() || ttl > max_ttl {
        return Err(Status::invalid_argument(format!(
            "ttl must be between 1s and the controller's max_ttl ({})",
            loggate_core::duration::format(max_ttl)
        )));
    }
    let not_before = if not_before_unix == 0 {
        now
    } else {
        let earliest = now.saturating_sub(seconds(MAX_START_SKEW));
        let latest = now.saturating_add(seconds(MAX_START_AHEAD));
        if not_before_unix < earliest {
            return Err(Status::invalid_argument(format!(
                "the grant's start ({not_before_unix}, Unix seconds) is in the past; omit it to start now"
            )));
        }
        if not_before_unix > latest {
            return Err(Status::invalid_argument(format!(
                "the grant's start ({not_before_unix}, Unix seconds) is more than {} ahead; schedule it later",
                loggate_core::duration::format(MAX_START_AHEAD)
            )));
        }
        not_before_unix.max(now)
    };
    let not_after = i64::try_from(ttl_seconds)
        .ok()
        .and_then(|ttl| not_before.checked_add(ttl))
        .filter(|end| *end > not_before)
        .ok_or_else(|| Status::invalid_argument("the grant's end is out of range"))?;
    if not_after <= now {
        return Err(Status::invalid_argument(
            "the grant would have ended before it was issued; give a later start or a longer ttl",
        ));
    }
    Ok((not_before, not_after))
}

pub fn grant_info(g: &GrantRow) -> pb::GrantInfo {
    pb::GrantInfo {
        id: g.id.clone(),
        subject: g.subject.clone(),
        hosts: g.hosts.clone(),
        labels: g.labels.clone(),
        paths: g.paths.clone(),
        units: g.units.clone(),
        not_before_unix: g.not_before,
        not_after_unix: g.not_after,
        reason: g.reason.clone(),
        issuer: g.issuer.clone(),
        redaction_profile: g.profile.clone(),
        revoked: g.revoked.is_some(),
        revoked_at_unix: g.revoked.as_ref().map(|r| r.at).unwrap_or(0),
        revoked_by: g.revoked.as_ref().map(|r| r.by.clone()).unwrap_or_default(),
        token: g.token.clone(),
        revision: g.revision,
        key_sha256: g.key_sha256.clone(),
    }
}

/// Whether `e` is a label change refused for the agent's former labels' bound
/// (`store::agents::MAX_FORMER_LABELS`).
fn too_many_former_labels(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref(),
            Some(crate::store::db::Error::TooManyFormerLabels(..))
        )
    })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::GrantEvent, Status>> + Send>>;

/// An agent's `WatchGrants` stream as served (`grant_stream::ControllerRoutes`): events encoded
/// once by the change feed, shared by every stream they are sent to, taken from the feed by the
/// response itself (`fanout::WatchStream`).
pub type EncodedEventStream = fanout::WatchStream;

impl ControllerService {
    /// What opening agent `announced.id`'s stream needs of the store (`registrations`): one
    /// read, waiting for one of the store's stream turns asynchronously (a herd queues rather
    /// than being refused), then off the runtime's threads. The labels it streams with (its
    /// enrolled ones, else those it announces) and its former labels; `None` when it was
    /// removed at or after `not_before`. A first registration, a change of its labels (its
    /// former labels must be stored before its catch-up reads) or of its address is written at
    /// once; otherwise (a reconnection: the herd after a restart or a failover) its
    /// registration is queued.
    async fn register_stream(
        &self,
        announced: AgentRow,
        not_before: i64,
    ) -> Result<Option<(Vec<String>, Vec<String>)>, Status> {
        let store = self.store.clone();
        let turn = store
            .stream_turns()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the controller is stopping"))?;
        let now = announced.last_seen;
        let read = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let _turn = turn;
            let read = store.stream_registration(&announced.id, not_before, now)?;
            if read.removed {
                return Ok(None);
            }
            let mut row = AgentRow {
                labels: read.enrolled.clone().unwrap_or(announced.labels.clone()),
                ..announced
            };
            // Not registered yet, or under other labels: written now, so that a change of
            // labels is recorded before the catch-up reads (a first registration queued, then
            // overtaken by a reconnection with other labels, would record none). At another
            // address: written now too, so that `ResolveAgent` (a read's `--host`) finds it
            // as soon as its stream is open.
            if read.registered.as_ref() != Some(&row.labels)
                || read.registered_addr.as_ref() != Some(&row.addr)
            {
                let former = match store.register_agent(&row, not_before) {
                    // Announced labels past the former labels' bound: the stream opens under
                    // the labels the registry holds, so the agent is still sent what they and
                    // its former labels address (their revocations above all); its new labels
                    // are not taken until some former ones are forgotten.
                    Err(e) if too_many_former_labels(&e) => {
                        let Some(held) = read.registered.clone() else {
                            return Err(e);
                        };
                        tracing::warn!(
                            agent = %row.id,
                            "{e:#}; its stream is opened under the labels it holds, {held:?}, \
                             not those it announces"
                        );
                        row.labels = held;
                        store.register_agent(&row, not_before)?
                    }
                    other => other?,
                };
                return Ok(former.map(|former| (row, former, false)));
            }
            Ok(Some((row, read.former, true)))
        })
        .await
        .map_err(|e| internal(anyhow::anyhow!("the agent's registration failed: {e}")))?
        .map_err(internal)?;
        let Some((row, former, queue)) = read else {
            return Ok(None);
        };
        let labels = row.labels.clone();
        if queue {
            let (store, trust_domain, revocations, relabelled) = (
                self.store.clone(),
                self.trust_domain.clone(),
                self.revocations.clone(),
                self.relabelled.clone(),
            );
            self.registrations.queue(
                &self.store,
                &self.stopping,
                move |removed| {
                    tracing::info!(
                        agents = removed.len(),
                        "removed agents' streams opened meanwhile: reloading the revocation set"
                    );
                    if let Err(e) =
                        enrol::reload_revocations(&store, &trust_domain, &revocations, &relabelled)
                    {
                        tracing::warn!("cannot reload the revocation set: {e:#}");
                    }
                },
                row,
                not_before,
            );
        }
        Ok(Some((labels, former)))
    }

    /// Opens an agent's `WatchGrants` stream: checks the caller is the agent it watches for,
    /// registers it, and opens its stream on the change feed (`fanout`). Served by
    /// `grant_stream::ControllerRoutes` with the pre-encoded codec.
    pub async fn open_watch(
        &self,
        request: Request<pb::WatchGrantsRequest>,
    ) -> Result<EncodedEventStream, Status> {
        let agent = peer_identity(&request, Role::Agent)?;
        let request_certs = request.peer_certs();
        let req = request.into_inner();
        if req.agent_id != agent.name() {
            return Err(Status::permission_denied(format!(
                "{agent} may only watch its own grants, not those of agent {:?}",
                req.agent_id
            )));
        }
        bounded_list("labels", &req.labels)?;
        if req.listen_addr.len() > MAX_FIELD {
            return Err(Status::invalid_argument("listen_addr is too long"));
        }
        if req.after_epoch.len() > MAX_EPOCH_BYTES {
            return Err(Status::invalid_argument(format!(
                "after_epoch is longer than {MAX_EPOCH_BYTES} bytes; send the epoch the controller gave"
            )));
        }
        // An enrolled agent has the labels its join token gave (the controller's word); the
        // labels an agent announces count only when its certificate came from elsewhere.
        // The start of the agent's certificate: a removal (`agent remove`) revokes every
        // certificate of the agent that starts at or before it.
        let not_before = enrol::peer_not_before(&request_certs);
        let spiffe_id = agent.spiffe_id().to_string();
        // Subscribed before the wait below, so that a removal whose revocation set is
        // reloaded meanwhile wakes the stream's `removed` (a receiver only sees the changes
        // made after it subscribed).
        let revocation_changes = self.revocations.subscribe();
        let relabel_changes = self.relabelled.subscribe();
        let row = AgentRow {
            id: req.agent_id.clone(),
            labels: req.labels.clone(),
            addr: req.listen_addr.clone(),
            last_seen: unix_now(),
            replica: self.replica.clone(),
        };
        let Some((labels, former_labels)) = self.register_stream(row, not_before).await? else {
            // Removed: the store refused to register it again.
            return Err(enrol::removed_status());
        };
        // Removed while it waited for the store: the revocation set (reloaded after the
        // removal committed) has it. Nothing streamed.
        if self.revocations.is_revoked(&spiffe_id, not_before) {
            return Err(enrol::removed_status());
        }
        tracing::info!(
            agent = %req.agent_id, after = req.after_revision, epoch = %req.after_epoch,
            "agent connected"
        );

        // Before the count below: a stream that cannot start is never counted.
        let feed = self.change_feed()?;
        let connected = self.connected.clone();
        {
            let mut streams = connected.lock().unwrap_or_else(|p| p.into_inner());
            *streams.entry(req.agent_id.clone()).or_default() += 1;
            metrics::controller()
                .connected_agents
                .set(i64::try_from(streams.len()).unwrap_or(i64::MAX));
        }
        // Resolves when this agent is removed (`agent remove`): its certificate is revoked and
        // its stream cut. Or when a label it streams becomes a former label of its agent (a
        // re-enrolment with other labels, other labels announced on another stream): its
        // stream is cut and it reconnects under its labels of now (`enrol::Relabelled`).
        let removed = {
            let (revocations, relabelled) = (self.revocations.clone(), self.relabelled.clone());
            let (agent_id, streamed) = (req.agent_id.clone(), labels.clone());
            let (mut revoked, mut relabels) = (revocation_changes, relabel_changes);
            Box::pin(async move {
                loop {
                    // Their senders live as long as the service: an error is never seen.
                    // The former labels are looked at only when they were reloaded since the
                    // stream subscribed (before its opening read): a revocation's wake alone
                    // may find a set older than that read, which may still list a label the
                    // agent holds again.
                    let relabel = tokio::select! {
                        changed = revoked.changed() => if changed.is_err() {
                            return std::future::pending().await;
                        } else {
                            false
                        },
                        changed = relabels.changed() => if changed.is_err() {
                            return std::future::pending().await;
                        } else {
                            true
                        },
                    };
                    if revocations.is_revoked(&spiffe_id, not_before) {
                        return enrol::removed_status();
                    }
                    if relabel && relabelled.is_stale(&agent_id, &streamed) {
                        tracing::info!(agent = %agent_id, "the agent's labels changed: its stream is cut");
                        return enrol::relabelled_status();
                    }
                }
            }) as fanout::Removed
        };
        let agent_id = req.agent_id.clone();
        let stream = feed.stream(
            fanout::WatchRequest {
                agent_id: req.agent_id,
                labels,
                former_labels,
                after_revision: req.after_revision,
                after_epoch: req.after_epoch,
            },
            self.stopping.clone(),
            removed,
            move || {
                let mut streams = connected.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(open) = streams.get_mut(&agent_id) {
                    *open = open.saturating_sub(1);
                    if *open == 0 {
                        streams.remove(&agent_id);
                    }
                }
                metrics::controller()
                    .connected_agents
                    .set(i64::try_from(streams.len()).unwrap_or(i64::MAX));
                drop(streams);
                tracing::info!(agent = %agent_id, "agent disconnected");
            },
        );
        // The shared encoded events (every one carries the epoch and the cluster id: the agent
        // refuses a controller of another cluster before it applies anything), each copied only
        // into its stream's frame.
        Ok(stream)
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    type WatchGrantsStream = EventStream;

    /// Never reached: the controller serves `WatchGrants` through `ControllerRoutes`
    /// ([`grant_stream`]), which answers it before the generated server. Served without it
    /// (a wiring mistake), the call fails rather than run a second, untested stream path.
    async fn watch_grants(
        &self,
        _request: Request<pb::WatchGrantsRequest>,
    ) -> Result<Response<Self::WatchGrantsStream>, Status> {
        Err(Status::internal(
            "WatchGrants is served by ControllerRoutes, not by the generated server; serve the controller through ControllerRoutes",
        ))
    }

    async fn issue_grant(
        &self,
        request: Request<pb::IssueGrantRequest>,
    ) -> Result<Response<pb::IssueGrantResponse>, Status> {
        let admin = self.user(&request)?;
        self.require_admin_for(&admin, AdminAction::GrantIssue)?;
        let req = request.into_inner();
        let subject = user_spiffe_id(&self.trust_domain, &req.subject)
            .map_err(|e| Status::invalid_argument(format!("subject: {e}")))?;
        if req.hosts.is_empty() && req.labels.is_empty() {
            return Err(Status::invalid_argument(
                "name at least one --host or --label",
            ));
        }
        bounded_list("hosts", &req.hosts)?;
        bounded_list("labels", &req.labels)?;
        bounded_list("paths", &req.paths)?;
        if let Some(bad) = req.hosts.iter().find(|h| !is_valid_name(h)) {
            return Err(Status::invalid_argument(format!(
                "host {bad:?} is not a valid agent id"
            )));
        }
        check_units(&req.units)?;
        if req.paths.is_empty() && req.units.is_empty() {
            return Err(Status::invalid_argument(
                "name at least one --path glob or --unit",
            ));
        }
        for p in &req.paths {
            // Shown to approvers, in the webhook and the access review like a request's.
            requests::check_plain_text("--path", p)?;
            // The glob's own sentence, not the verifier's "the grant token is malformed (…)":
            // at issue there is no token yet, only the admin's --path.
            compile_path_glob(p).map_err(|e| match e {
                GrantError::Malformed(detail) => {
                    Status::invalid_argument(format!("--path: {detail}"))
                }
                other => Status::invalid_argument(other.to_string()),
            })?;
        }
        if req.reason.trim().is_empty() || req.reason.len() > MAX_FIELD {
            return Err(Status::invalid_argument(
                "a --reason (ticket or incident id) is required, at most 1024 bytes",
            ));
        }
        requests::check_plain_text("--reason", &req.reason)?;
        let profile = if req.redaction_profile.is_empty() {
            "default".to_string()
        } else {
            req.redaction_profile.clone()
        };
        // The configured names are checked at start ([a-z0-9_-]{1,64}): a name on the list is
        // a valid one, and a request's name is echoed back only when it is that short.
        if !self.policy.redaction_profiles.contains(&profile) {
            let shown = if profile.len() <= 64 {
                format!("{profile:?}")
            } else {
                "(longer than 64 bytes)".to_string()
            };
            return Err(Status::invalid_argument(format!(
                "redaction profile {shown} is not allowed by the controller's \
                 redaction_profiles ({})",
                self.policy.redaction_profiles.join(", ")
            )));
        }
        let now = unix_now();
        let (not_before, not_after) = grant_window(
            now,
            req.not_before_unix,
            req.ttl_seconds,
            self.policy.max_ttl,
        )?;
        let key = self
            .store
            .user_key(&subject)
            .map_err(internal)?
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                "no certificate key is known for {subject}; they must contact the controller once \
                 (`loggate whoami`) or their certificate must be enrolled"
            ))
            })?;
        let issuer = admin.spiffe_id().to_string();
        let policy_in_force = self.access.as_ref().and_then(|h| h.current());
        // Stored and flagged for review in one transaction (issue 11).
        let grant = self
            .store
            .insert_break_glass_grant(now, |revision| {
                let grant = self.sign_grant(
                    &requests::GrantSpec {
                        id: new_grant_id(),
                        subject: &subject,
                        hosts: &req.hosts,
                        labels: &req.labels,
                        paths: &req.paths,
                        units: &req.units,
                        now,
                        not_before,
                        not_after,
                        profile: &profile,
                        reason: &req.reason,
                        issuer: &issuer,
                        key_sha256: &key,
                    },
                    revision,
                )?;
                // An admin's grant skips every approval: it is break-glass, audited and
                // flagged for review like one (issue 11). Audited inside the transaction.
                self.audit(&events::AccessBreakGlass {
                    grant_id: grant.id.clone(),
                    request_id: None,
                    subject: grant.subject.clone(),
                    issuer: issuer.clone(),
                    how: "grant_issue",
                    role: None,
                    hosts: grant.hosts.clone(),
                    paths: resource_names(&grant.paths, &grant.units),
                    reason: grant.reason.clone(),
                    notified: Vec::new(),
                    webhook: policy_in_force.as_ref().is_some_and(|p| p.notify.is_some())
                        && self.notifier.is_some(),
                    policy_sha256: policy_in_force.as_ref().map(|p| p.digest.clone()),
                })?;
                Ok(grant)
            })
            .map_err(|e| match e.downcast::<Status>() {
                Ok(status) => status,
                Err(e) => internal(e),
            })?;
        metrics::controller().committed(grant.revision);
        metrics::controller().grants_issued.inc();
        self.revision.send_replace(grant.revision);
        self.notify_grant_issue(&grant);
        tracing::info!(grant = %grant.id, subject = %grant.subject, "grant issued");
        Ok(Response::new(pb::IssueGrantResponse {
            grant: Some(grant_info(&grant)),
        }))
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let user = self.user(&request)?;
        let req = request.into_inner();
        let subject = if self.is_admin(&user) {
            if req.subject.is_empty() {
                None
            } else {
                Some(
                    user_spiffe_id(&self.trust_domain, &req.subject)
                        .map_err(|e| Status::invalid_argument(format!("subject: {e}")))?,
                )
            }
        } else {
            Some(user.spiffe_id().clone())
        };
        let grants = self
            .store
            .list_grants(subject.as_deref(), req.include_inactive, unix_now())
            .map_err(internal)?;
        Ok(Response::new(pb::ListGrantsResponse {
            grants: grants.iter().map(grant_info).collect(),
        }))
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::RevokeGrantResponse>, Status> {
        let user = self.user(&request)?;
        let req = request.into_inner();
        if req.grant_id.len() > 64 || req.reason.len() > MAX_FIELD {
            return Err(Status::invalid_argument("grant id or reason too long"));
        }
        let existing = self
            .store
            .grant(&req.grant_id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no grant {:?}", req.grant_id)))?;
        if !self.is_admin(&user) && existing.subject != user.spiffe_id() {
            return Err(Status::permission_denied(format!(
                "{user} may only revoke their own grants"
            )));
        }
        if let Some(r) = &existing.revoked {
            return Err(Status::failed_precondition(format!(
                "grant {} was already revoked by {} at {}",
                existing.id,
                r.by,
                crate::cli::format_time(r.at)
            )));
        }
        let revoked = Revoked {
            at: unix_now(),
            by: user.spiffe_id().to_string(),
            reason: req.reason.clone(),
        };
        // Recorded in the revocation's own transaction, only by the call that revokes it:
        // a store that fails writes no `grant.revoked` for a grant still active, an audit
        // failure changes nothing, and of two revokes racing the second gets no record.
        let mut recorded = None;
        let grant = self
            .store
            .revoke_recorded(&req.grant_id, revoked, |revision| {
                self.audit(&events::GrantRevoked {
                    grant_id: existing.id.clone(),
                    subject: Some(existing.subject.clone()),
                    revoked_by: user.spiffe_id().to_string(),
                    reason: req.reason.clone(),
                    revision: None,
                })
                .map_err(anyhow::Error::from)?;
                recorded = Some(revision);
                Ok(())
            })
            // The audit's refusal comes back out as itself (`unavailable`).
            .map_err(|e| e.downcast::<Status>().unwrap_or_else(internal))?
            .ok_or_else(|| Status::not_found(format!("no grant {:?}", req.grant_id)))?;
        let Some(revision) = recorded else {
            // Revoked by someone else between the check above and this call.
            let r = grant.revoked.as_ref();
            return Err(Status::failed_precondition(format!(
                "grant {} was already revoked by {} at {}",
                grant.id,
                r.map_or("someone else", |r| r.by.as_str()),
                r.map_or_else(|| "just now".to_string(), |r| crate::cli::format_time(r.at))
            )));
        };
        metrics::controller().committed(revision);
        metrics::controller().grants_revoked.inc();
        self.revision.send_if_modified(|now| {
            let newer = revision > *now;
            if newer {
                *now = revision;
            }
            newer
        });
        tracing::info!(grant = %grant.id, by = %user, "grant revoked");
        Ok(Response::new(pb::RevokeGrantResponse {
            grant: Some(grant_info(&grant)),
        }))
    }

    async fn resolve_agent(
        &self,
        request: Request<pb::ResolveAgentRequest>,
    ) -> Result<Response<pb::ResolveAgentResponse>, Status> {
        self.user(&request)?;
        let id = request.into_inner().agent_id;
        if !is_valid_name(&id) {
            return Err(Status::invalid_argument(format!(
                "{id:?} is not a valid agent id"
            )));
        }
        let agent = self.store.agent(&id).map_err(internal)?.ok_or_else(|| {
            Status::not_found(format!("agent {id} has never contacted the controller"))
        })?;
        let connected = self
            .connected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id);
        Ok(Response::new(pb::ResolveAgentResponse {
            agent_id: agent.id,
            addr: agent.addr,
            labels: agent.labels,
            last_seen_unix: agent.last_seen,
            connected,
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let user = self.user(&request)?;
        let enrolled = self
            .store
            .user_key(user.spiffe_id())
            .map_err(internal)?
            .unwrap_or_default();
        Ok(Response::new(pb::WhoAmIResponse {
            subject: user.spiffe_id().to_string(),
            admin: self.is_admin(&user),
            key_sha256: user.key_sha256_hex(),
            enrolled_key_sha256: enrolled,
        }))
    }

    async fn report_checkpoints(
        &self,
        request: Request<pb::ReportCheckpointsRequest>,
    ) -> Result<Response<pb::ReportCheckpointsResponse>, Status> {
        self.report_checkpoints_for_agent(request).await
    }

    async fn list_checkpoints(
        &self,
        request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        self.list_checkpoints_of_host(request).await
    }

    async fn check_policy(
        &self,
        request: Request<pb::CheckPolicyRequest>,
    ) -> Result<Response<pb::CheckPolicyResponse>, Status> {
        self.check_policy_rpc(request).await
    }

    async fn reload_policy(
        &self,
        request: Request<pb::ReloadPolicyRequest>,
    ) -> Result<Response<pb::ReloadPolicyResponse>, Status> {
        self.reload_policy_rpc(request).await
    }

    async fn request_access(
        &self,
        request: Request<pb::AccessRequestRequest>,
    ) -> Result<Response<pb::AccessRequestResponse>, Status> {
        self.request_access_rpc(request).await
    }

    async fn approve_request(
        &self,
        request: Request<pb::ReviewRequest>,
    ) -> Result<Response<pb::AccessRequestResponse>, Status> {
        self.approve_request_rpc(request).await
    }

    async fn deny_request(
        &self,
        request: Request<pb::ReviewRequest>,
    ) -> Result<Response<pb::AccessRequestResponse>, Status> {
        self.deny_request_rpc(request).await
    }

    async fn cancel_request(
        &self,
        request: Request<pb::CancelRequestRequest>,
    ) -> Result<Response<pb::AccessRequestResponse>, Status> {
        self.cancel_request_rpc(request).await
    }

    async fn get_request(
        &self,
        request: Request<pb::GetRequestRequest>,
    ) -> Result<Response<pb::AccessRequestResponse>, Status> {
        self.get_request_rpc(request).await
    }

    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        self.list_requests_rpc(request).await
    }

    async fn access_review(
        &self,
        request: Request<pb::AccessReviewRequest>,
    ) -> Result<Response<pb::AccessReviewResponse>, Status> {
        self.access_review_rpc(request).await
    }

    async fn ack_break_glass(
        &self,
        request: Request<pb::AckBreakGlassRequest>,
    ) -> Result<Response<pb::AckBreakGlassResponse>, Status> {
        self.ack_break_glass_rpc(request).await
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        self.create_join_token_rpc(request).await
    }

    async fn list_join_tokens(
        &self,
        request: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        self.list_join_tokens_rpc(request).await
    }

    async fn revoke_join_token(
        &self,
        request: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::RevokeJoinTokenResponse>, Status> {
        self.revoke_join_token_rpc(request).await
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.list_agents_rpc(request).await
    }

    async fn set_user_lock(
        &self,
        request: Request<pb::SetUserLockRequest>,
    ) -> Result<Response<pb::SetUserLockResponse>, Status> {
        self.set_user_lock_rpc(request).await
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.list_users_rpc(request).await
    }

    async fn remove_agent(
        &self,
        request: Request<pb::RemoveAgentRequest>,
    ) -> Result<Response<pb::RemoveAgentResponse>, Status> {
        self.remove_agent_rpc(request).await
    }

    async fn renew_certificate(
        &self,
        request: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        self.renew_certificate_rpc(request).await
    }
}

#[cfg(test)]
mod database_error_tests {
    /// A busy database (too many callers waiting, a lock wait over `lock_timeout`) is told
    /// to the client as retryable UNAVAILABLE "busy", not as an internal error; an error that
    /// is neither busy nor unavailable stays internal.
    #[test]
    fn a_busy_database_is_a_retryable_busy_status_and_other_errors_stay_internal() {
        let busy = super::internal(anyhow::Error::new(crate::store::db::Error::Busy(64)));
        assert_eq!(busy.code(), tonic::Code::Unavailable);
        assert!(
            busy.message().contains("is busy; retry"),
            "{}",
            busy.message()
        );
        let other = super::internal(anyhow::Error::new(crate::store::db::Error::OutOfRange(7)));
        assert_eq!(other.code(), tonic::Code::Internal);
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    #[test]
    fn a_duration_beyond_i64_seconds_saturates_instead_of_wrapping_to_before_now() {
        // `as i64` made this -1: `now + ttl` an instant before now.
        assert_eq!(seconds(Duration::from_secs(u64::MAX)), i64::MAX);
        assert_eq!(NOW.saturating_add(seconds(Duration::MAX)), i64::MAX);
        assert_eq!(seconds(Duration::from_secs(90)), 90);
    }

    const NOW: i64 = 1_800_000_000;
    const MAX_TTL: Duration = Duration::from_secs(8 * 3600);

    fn refused(not_before: i64, ttl: u64) -> String {
        let status = grant_window(NOW, not_before, ttl, MAX_TTL).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        status.message().to_string()
    }

    #[test]
    fn a_start_inside_the_skew_window_is_now_and_no_grant_is_expired_when_issued() {
        let skew = seconds(MAX_START_SKEW);
        // The 5-minute allowance once made these grants end before they were signed.
        for (start, ttl) in [
            (NOW - skew, 60),
            (NOW - 1, 1),
            (NOW - skew, skew.unsigned_abs()),
        ] {
            let (not_before, not_after) = grant_window(NOW, start, ttl, MAX_TTL).unwrap();
            assert_eq!(not_before, NOW, "start {start} counts as now");
            assert_eq!(
                not_after,
                NOW + i64::try_from(ttl).unwrap(),
                "start {start}, ttl {ttl}"
            );
            assert!(not_after > NOW);
        }
    }

    #[test]
    fn grant_windows_are_range_checked_whatever_the_client_sent() {
        assert_eq!(
            grant_window(NOW, 0, 3600, MAX_TTL).unwrap(),
            (NOW, NOW + 3600)
        );
        let skew = seconds(MAX_START_SKEW);
        let ahead = seconds(MAX_START_AHEAD);
        assert_eq!(
            grant_window(NOW, NOW + ahead, 60, MAX_TTL).unwrap(),
            (NOW + ahead, NOW + ahead + 60)
        );
        for past in [NOW - skew - 1, 1, -1, i64::MIN] {
            assert!(refused(past, 60).contains("in the past"), "{past}");
        }
        for future in [NOW + ahead + 1, i64::MAX, i64::MAX - 10] {
            assert!(refused(future, 60).contains("ahead"), "{future}");
        }
        for ttl in [0, MAX_TTL.as_secs() + 1, u64::MAX, 1 << 63] {
            assert!(refused(0, ttl).contains("ttl"), "{ttl}");
        }
        // The end cannot wrap even with a max_ttl near the limits of i64.
        let huge = Duration::from_secs(u64::MAX);
        let status = grant_window(NOW, NOW + ahead, i64::MAX as u64, huge).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let status = grant_window(NOW, 0, 1 << 63, huge).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}

#[cfg(test)]
mod former_labels_bound_tests {
    use super::*;
    use crate::store::agents::MAX_FORMER_LABELS;

    /// The second review of the former labels' bound, M1: an agent whose announced labels would
    /// leave it more former labels than the bound is not refused its stream (it would then be
    /// sent no revocation at all): its stream opens under the labels the registry holds, with
    /// the former labels they keep, and its new labels are not taken.
    #[tokio::test]
    async fn an_agent_past_the_former_labels_bound_streams_under_the_labels_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state.db")).unwrap());
        let log =
            loggate_core::audit::AuditLog::open(&dir.path().join("audit.jsonl"), "c").unwrap();
        let audit = Arc::new(SharedAuditLog::new(log).unwrap());
        let (_stop, stopping) = watch::channel(false);
        let service = ControllerService::new(
            store.clone(),
            loggate_core::grant::SigningKey::generate().unwrap(),
            "loggate.local".into(),
            Policy {
                admins: Default::default(),
                max_ttl: Duration::from_secs(3600),
                redaction_profiles: vec!["default".into()],
            },
            audit,
            stopping,
            "e1".into(),
        )
        .unwrap();
        // A grant of the first label, live: that former label is one a revocation must reach.
        store
            .insert_grant(|revision| {
                Ok(crate::store::testing::grant_row(
                    "g-1",
                    &[],
                    &["n=0"],
                    unix_now() + 3600,
                    revision,
                ))
            })
            .unwrap();
        let row = |label: String| AgentRow {
            id: "web-1".into(),
            labels: vec![label],
            addr: "web-1:7401".into(),
            last_seen: unix_now(),
            replica: String::new(),
        };
        for i in 0..=MAX_FORMER_LABELS {
            let opened = service.register_stream(row(format!("n={i}")), 0).await;
            assert!(opened.unwrap().is_some());
        }
        let (labels, former) = service
            .register_stream(row("n=past".into()), 0)
            .await
            .expect("the stream opens")
            .expect("not removed");
        let held = format!("n={MAX_FORMER_LABELS}");
        assert_eq!(labels, std::slice::from_ref(&held));
        assert_eq!(former, ["n=0"]);
        assert_eq!(store.agent("web-1").unwrap().unwrap().labels, [held]);
    }
}
