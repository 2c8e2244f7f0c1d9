//! The agent's grant store: every grant and revocation pushed by the controller, persisted in
//! redb so the agent keeps enforcing (and expiring) them across its own restarts and while the
//! controller is unreachable.
//!
//! Tokens are stored as received and re-verified at every use by the one verifier
//! ([`GrantVerifier::verify_for_use`]); the store only answers "which grants might apply" and
//! "is this grant revoked".
//!
//! The revision it resumes from belongs to the controller's **epoch** (kept beside it): when the
//! controller's epoch differs, the stream resynchronises from zero and [`GrantStore::finish_resync`]
//! replaces the grant set with what the controller sent, keeping every revocation known. A grant
//! it drops leaves a **dropped marker** behind, treated like a revocation
//! ([`GrantStore::revocation`]): its token, presented with `--grant-token`, is judged on its own
//! and would otherwise still verify, and the controller that lost it cannot revoke it. The marker
//! goes when a controller sends that grant again.
//!
//! `grants.redb` holds every grant token with its subject, paths and reason: it is created 0600
//! in a 0700 folder, and a start refuses either when others can read it.

use crate::gate::{GrantLookup, Withdrawal};
use crate::stream::GrantStatus;
use loggate_core::grant::{Audience, GrantVerifier, ReceivedGrant};
use loggate_core::private_state;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::RwLock;
use tokio::sync::watch;

const GRANTS: TableDefinition<&str, &str> = TableDefinition::new("grants");
const REVOCATIONS: TableDefinition<&str, &str> = TableDefinition::new("revocations");
/// Grants dropped by a resync (id → [`RevocationInfo`] as JSON): refused like revocations.
const DROPPED: TableDefinition<&str, &str> = TableDefinition::new("dropped");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Text metadata: `epoch`, the controller epoch the stored revision belongs to.
const META_TEXT: TableDefinition<&str, &str> = TableDefinition::new("meta_text");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationInfo {
    pub at: i64,
    pub by: String,
    pub reason: String,
}

/// Who a dropped marker names as its author, and why (see [`GrantStore::finish_resync`]).
pub const DROPPED_BY: &str = "the agent's resync";
pub const DROPPED_REASON: &str = "dropped by resync: the controller no longer holds it";

#[derive(Default)]
struct State {
    grants: HashMap<String, ReceivedGrant>,
    revoked: HashMap<String, RevocationInfo>,
    /// Dropped markers: grants a resync forgot, refused like revocations until sent again.
    dropped: HashMap<String, RevocationInfo>,
    revision: u64,
    /// The controller epoch `revision` belongs to ("" before the first resync).
    epoch: String,
    /// Expired grants already reported by `sweep_expired`.
    announced: HashSet<String>,
}

/// How long an expired grant is kept to explain denials (seconds).
pub const KEEP_EXPIRED: i64 = 24 * 3600;

pub struct GrantStore {
    db: Database,
    state: RwLock<State>,
    /// Bumped on every revocation so live streams re-check at once.
    changed: watch::Sender<u64>,
}

/// What loading the persisted store found, for the audit stream.
pub struct Loaded {
    pub store: GrantStore,
    /// Grants dropped at load: (grant id, reason).
    pub dropped: Vec<(String, String)>,
}

impl GrantStore {
    /// Opens `dir/grants.redb` and re-verifies every stored grant; invalid or expired ones are
    /// dropped and reported. The folder is created 0700 and the file 0600 when missing; either
    /// readable by others refuses the start (with the chmod that fixes it).
    pub fn open(
        dir: &Path,
        verifier: &GrantVerifier,
        audience: &Audience,
        now: i64,
    ) -> anyhow::Result<Loaded> {
        private_state::create_private_dir(dir, "agent state folder")?;
        let path = dir.join("grants.redb");
        // Created private before redb opens it: redb initialises an empty file in place.
        private_state::create_private_file(&path, "agent grant store")?;
        let db = Database::create(&path)?;
        {
            let tx = db.begin_write()?;
            tx.open_table(GRANTS)?;
            tx.open_table(REVOCATIONS)?;
            tx.open_table(DROPPED)?;
            tx.open_table(META)?;
            tx.open_table(META_TEXT)?;
            tx.commit()?;
        }
        let mut state = State::default();
        let mut dropped = Vec::new();
        {
            let tx = db.begin_read()?;
            for row in tx.open_table(GRANTS)?.iter()? {
                let (id, token) = row?;
                // Recently expired grants stay (to explain denials); older ones are dropped.
                match verifier.verify_on_receipt(token.value(), audience, now - KEEP_EXPIRED) {
                    Ok(grant) => {
                        state.grants.insert(id.value().to_string(), grant);
                    }
                    Err(e) => dropped.push((id.value().to_string(), e.to_string())),
                }
            }
            for row in tx.open_table(REVOCATIONS)?.iter()? {
                let (id, info) = row?;
                if let Ok(info) = serde_json::from_str(info.value()) {
                    state.revoked.insert(id.value().to_string(), info);
                }
            }
            for row in tx.open_table(DROPPED)?.iter()? {
                let (id, info) = row?;
                // Fail closed: a marker that does not parse still refuses the grant.
                let info = serde_json::from_str(info.value()).unwrap_or_else(|_| RevocationInfo {
                    at: 0,
                    by: DROPPED_BY.into(),
                    reason: DROPPED_REASON.into(),
                });
                state.dropped.insert(id.value().to_string(), info);
            }
            state.revision = tx
                .open_table(META)?
                .get("revision")?
                .map(|v| v.value())
                .unwrap_or(0);
            state.epoch = tx
                .open_table(META_TEXT)?
                .get("epoch")?
                .map(|v| v.value().to_string())
                .unwrap_or_default();
        }
        let store = GrantStore {
            db,
            state: RwLock::new(state),
            changed: watch::channel(0).0,
        };
        for (id, _) in &dropped {
            store.forget(id)?;
        }
        Ok(Loaded { store, dropped })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The highest controller revision applied.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// The controller epoch [`GrantStore::revision`] belongs to ("" for none yet).
    pub fn epoch(&self) -> String {
        self.read().epoch.clone()
    }

    /// True when grant `id` is held with exactly this token (a resync resends it).
    pub fn holds(&self, id: &str, token: &str) -> bool {
        self.read()
            .grants
            .get(id)
            .is_some_and(|g| g.token() == token)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Persists then installs a grant received at `revision` of the stored epoch; `None` during
    /// a resync, whose position is only stored once it completes ([`GrantStore::finish_resync`]).
    /// A controller sending the grant holds it again (a second controller, a label change): its
    /// dropped marker, if any, is removed.
    pub fn install(&self, grant: ReceivedGrant, revision: Option<u64>) -> anyhow::Result<()> {
        let id = grant.claims().jti.clone();
        let tx = self.db.begin_write()?;
        tx.open_table(GRANTS)?.insert(id.as_str(), grant.token())?;
        tx.open_table(DROPPED)?.remove(id.as_str())?;
        if let Some(revision) = revision {
            tx.open_table(META)?.insert("revision", revision)?;
        }
        tx.commit()?;
        let mut state = self.write();
        state.dropped.remove(&id);
        state.grants.insert(id, grant);
        if let Some(revision) = revision {
            state.revision = state.revision.max(revision);
        }
        Ok(())
    }

    /// Persists then records a revocation (at `revision`, `None` during a resync, as for
    /// [`GrantStore::install`]); returns false if it was already known.
    pub fn revoke(
        &self,
        id: &str,
        info: RevocationInfo,
        revision: Option<u64>,
    ) -> anyhow::Result<bool> {
        if self.read().revoked.contains_key(id) {
            if let Some(revision) = revision {
                self.set_revision(revision)?;
            }
            return Ok(false);
        }
        let tx = self.db.begin_write()?;
        tx.open_table(REVOCATIONS)?
            .insert(id, serde_json::to_string(&info)?.as_str())?;
        if let Some(revision) = revision {
            tx.open_table(META)?.insert("revision", revision)?;
        }
        tx.commit()?;
        {
            let mut state = self.write();
            state.revoked.insert(id.to_string(), info);
            if let Some(revision) = revision {
                state.revision = state.revision.max(revision);
            }
        }
        self.changed.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// Ends a resync into controller epoch `epoch`, caught up at `revision`: the grants still in
    /// effect (not ended at `now`, not revoked) that the controller did not send again (`sent`,
    /// by id) are forgotten — the controller's database no longer holds them, so nobody could
    /// revoke them — each leaving a dropped marker that refuses its token like a revocation, and
    /// the epoch and revision are stored, all in one transaction. Revocations are all kept: a
    /// restored database may have lost one, the agent has not. Returns the forgotten ids.
    pub fn finish_resync(
        &self,
        epoch: &str,
        revision: u64,
        sent: &HashSet<String>,
        now: i64,
    ) -> anyhow::Result<Vec<String>> {
        let forgotten: Vec<String> = {
            let state = self.read();
            state
                .grants
                .values()
                .map(|g| g.claims())
                .filter(|c| {
                    c.exp > now && !sent.contains(&c.jti) && !state.revoked.contains_key(&c.jti)
                })
                .map(|c| c.jti.clone())
                .collect()
        };
        let marker = RevocationInfo {
            at: now,
            by: DROPPED_BY.into(),
            reason: DROPPED_REASON.into(),
        };
        let marker_json = serde_json::to_string(&marker)?;
        let tx = self.db.begin_write()?;
        {
            let mut grants = tx.open_table(GRANTS)?;
            let mut dropped = tx.open_table(DROPPED)?;
            for id in &forgotten {
                grants.remove(id.as_str())?;
                dropped.insert(id.as_str(), marker_json.as_str())?;
            }
        }
        tx.open_table(META)?.insert("revision", revision)?;
        tx.open_table(META_TEXT)?.insert("epoch", epoch)?;
        tx.commit()?;
        {
            let mut state = self.write();
            for id in &forgotten {
                state.grants.remove(id);
                state.dropped.insert(id.clone(), marker.clone());
            }
            state.revision = revision;
            state.epoch = epoch.to_string();
        }
        if !forgotten.is_empty() {
            self.changed.send_modify(|n| *n += 1);
        }
        Ok(forgotten)
    }

    /// Records that every change up to `revision` has been seen (heartbeats, skipped changes).
    pub fn set_revision(&self, revision: u64) -> anyhow::Result<()> {
        if revision <= self.revision() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        tx.open_table(META)?.insert("revision", revision)?;
        tx.commit()?;
        let mut state = self.write();
        state.revision = state.revision.max(revision);
        Ok(())
    }

    /// The stored grants issued to `subject`.
    pub fn grants_for(&self, subject: &str) -> Vec<ReceivedGrant> {
        self.read()
            .grants
            .values()
            .filter(|g| g.claims().sub == subject)
            .cloned()
            .collect()
    }

    /// The subject of a stored grant (for the audit of its revocation).
    pub fn subject_of(&self, id: &str) -> Option<String> {
        self.read().grants.get(id).map(|g| g.claims().sub.clone())
    }

    /// Why grant `id` must be refused although its token may verify: its revocation, else its
    /// dropped marker (a resync forgot it). Every check that refuses revoked grants (the gate,
    /// live streams, bypass attribution) goes through here, so a dropped grant is refused alike.
    pub fn revocation(&self, id: &str) -> Option<RevocationInfo> {
        let state = self.read();
        state
            .revoked
            .get(id)
            .or_else(|| state.dropped.get(id))
            .cloned()
    }

    /// Why grant `id` must be refused although its token may verify, typed for the gate and
    /// live streams: its revocation, else its dropped marker (as [`GrantStore::revocation`]).
    pub fn withdrawal(&self, id: &str) -> Option<Withdrawal> {
        let state = self.read();
        if let Some(r) = state.revoked.get(id) {
            return Some(Withdrawal::Revoked {
                by: r.by.clone(),
                reason: r.reason.clone(),
            });
        }
        state.dropped.get(id).map(|r| Withdrawal::Dropped {
            by: r.by.clone(),
            reason: r.reason.clone(),
        })
    }

    /// The dropped marker of grant `id`, when a resync forgot it (for a denial that says so).
    pub fn dropped(&self, id: &str) -> Option<RevocationInfo> {
        self.read().dropped.get(id).cloned()
    }

    /// Returns the grants whose end has passed since the last call (for the `grant.expired`
    /// audit event), and forgets those that ended more than [`KEEP_EXPIRED`] seconds ago.
    /// Recently expired grants are kept so a denial can say "expired 3m ago", not "no grant".
    pub fn sweep_expired(&self, now: i64) -> anyhow::Result<Vec<ReceivedGrant>> {
        let (newly, stale): (Vec<ReceivedGrant>, Vec<String>) = {
            let mut state = self.write();
            let State {
                grants, announced, ..
            } = &mut *state;
            let newly = grants
                .values()
                .filter(|g| g.claims().exp <= now && announced.insert(g.claims().jti.clone()))
                .cloned()
                .collect();
            let stale = grants
                .values()
                .filter(|g| g.claims().exp.saturating_add(KEEP_EXPIRED) <= now)
                .map(|g| g.claims().jti.clone())
                .collect();
            (newly, stale)
        };
        for id in stale {
            self.forget(&id)?;
            self.write().announced.remove(&id);
        }
        Ok(newly)
    }

    pub fn grants_count(&self) -> usize {
        self.read().grants.len()
    }

    fn forget(&self, id: &str) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(GRANTS)?.remove(id)?;
        tx.commit()?;
        self.write().grants.remove(id);
        Ok(())
    }
}

impl GrantLookup for GrantStore {
    fn grants_for(&self, subject: &str) -> Vec<ReceivedGrant> {
        GrantStore::grants_for(self, subject)
    }
    fn withdrawal(&self, id: &str) -> Option<Withdrawal> {
        GrantStore::withdrawal(self, id)
    }
}

/// Every withdrawal ([`GrantStore::revoke`], a resync's drops) notifies the store's watch
/// channel after the state holds it, so a stream woken by the change sees it.
impl GrantStatus for GrantStore {
    fn withdrawal(&self, id: &str) -> Option<Withdrawal> {
        GrantStore::withdrawal(self, id)
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        GrantStore::subscribe(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loggate_core::grant::{GrantClaims, SigningKey};
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    const NOW: i64 = 1_800_000_000;

    struct Fixture {
        dir: tempfile::TempDir,
        key: SigningKey,
        verifier: GrantVerifier,
        audience: Audience,
    }

    impl Fixture {
        fn new() -> Fixture {
            let key = SigningKey::generate().unwrap();
            let verifier =
                GrantVerifier::new(vec![key.verifying_key().clone()], Duration::from_secs(60));
            Fixture {
                dir: tempfile::tempdir().unwrap(),
                key,
                verifier,
                audience: Audience {
                    agent_id: loggate_core::identity::AgentId::new("web-1").unwrap(),
                    labels: vec![],
                },
            }
        }

        fn open(&self) -> GrantStore {
            GrantStore::open(
                &self.dir.path().join("state"),
                &self.verifier,
                &self.audience,
                NOW,
            )
            .unwrap()
            .store
        }

        fn grant(&self, id: &str) -> ReceivedGrant {
            let claims = GrantClaims {
                jti: id.into(),
                iss: "spiffe://loggate.local/controller".into(),
                sub: "spiffe://loggate.local/user/alice".into(),
                iat: NOW,
                nbf: NOW,
                exp: NOW + 3600,
                hosts: vec!["web-1".into()],
                labels: vec![],
                paths: vec!["/var/log/*.log".into()],
                units: vec![],
                redaction: "default".into(),
                reason: "T-1".into(),
                approver: "spiffe://loggate.local/user/admin".into(),
                key_sha256: "00".repeat(32),
            };
            let token = self.key.sign(&claims).unwrap();
            self.verifier
                .verify_on_receipt(&token, &self.audience, NOW)
                .unwrap()
        }
    }

    fn revocation() -> RevocationInfo {
        RevocationInfo {
            at: NOW,
            by: "spiffe://loggate.local/user/admin".into(),
            reason: String::new(),
        }
    }

    #[test]
    fn a_resync_replaces_the_grant_set_keeps_revocations_and_stores_its_epoch() {
        let f = Fixture::new();
        let store = f.open();
        for id in ["g-a", "g-lost", "g-revoked"] {
            store.install(f.grant(id), Some(7)).unwrap();
        }
        store.revoke("g-revoked", revocation(), Some(8)).unwrap();
        assert_eq!((store.epoch(), store.revision()), (String::new(), 8));
        // The resync: the stored position stays the old epoch's until it completes.
        let again = f.grant("g-a");
        assert!(store.holds("g-a", again.token()));
        store.install(again, None).unwrap();
        store.revoke("g-other", revocation(), None).unwrap();
        assert_eq!(store.revision(), 8);
        let sent: HashSet<String> = ["g-a".to_string()].into();
        let forgotten = store.finish_resync("e2", 3, &sent, NOW).unwrap();
        assert_eq!(forgotten, vec!["g-lost".to_string()]);
        assert_eq!((store.epoch(), store.revision()), ("e2".to_string(), 3));
        drop(store);
        // All of it persisted, in the new epoch.
        let store = f.open();
        assert_eq!((store.epoch(), store.revision()), ("e2".to_string(), 3));
        assert_eq!(store.grants_count(), 2, "g-a and the revoked g-revoked");
        assert!(store.subject_of("g-lost").is_none());
        assert!(store.revocation("g-revoked").is_some());
        assert!(store.revocation("g-other").is_some());
    }

    #[test]
    fn a_grant_dropped_by_a_resync_is_refused_like_a_revocation_until_sent_again() {
        let f = Fixture::new();
        let store = f.open();
        store.install(f.grant("g-lost"), Some(1)).unwrap();
        let forgotten = store.finish_resync("e2", 1, &HashSet::new(), NOW).unwrap();
        assert_eq!(forgotten, vec!["g-lost".to_string()]);
        let marker = store
            .revocation("g-lost")
            .expect("a dropped grant is refused");
        assert_eq!(marker.reason, DROPPED_REASON);
        assert!(store.dropped("g-lost").is_some());
        drop(store);
        // The marker survives a restart, and a later resync that sends the grant removes it.
        let store = f.open();
        assert!(store.revocation("g-lost").is_some(), "marker persisted");
        store.install(f.grant("g-lost"), None).unwrap();
        store
            .finish_resync("e3", 2, &["g-lost".to_string()].into(), NOW)
            .unwrap();
        assert!(store.revocation("g-lost").is_none());
        drop(store);
        let store = f.open();
        assert!(store.revocation("g-lost").is_none(), "removal persisted");
        assert!(store.subject_of("g-lost").is_some());
    }

    #[test]
    fn the_grant_store_is_private_and_a_shared_one_is_refused() {
        let f = Fixture::new();
        drop(f.open());
        let state = f.dir.path().join("state");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("grants.redb")), 0o600);
        std::fs::set_permissions(
            state.join("grants.redb"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = GrantStore::open(&state, &f.verifier, &f.audience, NOW)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            err.contains("grants.redb") && err.contains("chmod 600"),
            "{err}"
        );
    }
}
