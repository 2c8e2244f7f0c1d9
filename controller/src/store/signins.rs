//! What sign-ins with the organisation's IdP leave in the store (`[oidc]`, `SignIn`):
//!
//! - **Used unbound tokens** (`oidc_unbound_tokens`): an ID token without a nonce (the device
//!   flow) cannot be bound to the request's key, so it is taken only once. The key is the
//!   SHA-256 of the token's signing input (`header.payload`, the exact bytes the IdP signed),
//!   never of the whole token text: the signature's encoding is malleable (unused padding bits
//!   in the last base64url character, ECDSA's `s` / `n - s`), so two different strings can
//!   carry one signed token. A row is kept until the token can no longer be accepted; kept in
//!   the database, it outlives a controller restart.
//! - **Name bindings** (`oidc_subjects`): the first sign-in under a loggate name binds that
//!   name to the IdP's `iss` + `sub` (its stable, never reassigned identifier). A later
//!   sign-in under the same name with another `sub` is refused (`subject_changed`): names come
//!   from claims that can be edited or recycled (`preferred_username`, an e-mail's local part),
//!   and the name carries admin rights, pending requests and the audit trail. Releasing a
//!   binding (a person renamed at the IdP, an account re-created on purpose) is an admin's
//!   decision; there is no command yet: `DELETE FROM oidc_subjects WHERE name = '…'` on the
//!   stopped controller's database (docs/identity.md).
//! - **Signed-in users** (`oidc_users`): per loggate name, the key its last sign-in certified,
//!   the IdP groups that sign-in's verified token carried, when, and the certificate's end.
//!   The groups count for the access policy only for a caller presenting that key (proved by
//!   the TLS handshake) and only while that sign-in's certificate is valid: they are the IdP's
//!   word kept by the controller, never something the person's certificate or request says,
//!   so nobody can claim a group they were not given.
//!
//! - **Locks** (`user_locks`): `loggate user lock` / `unlock`. A locked name's certificates
//!   are all refused (its revocation cut-off is "everything"); after an unlock the cut-off is
//!   the second before the lock, so certificates that started before it (the stolen laptop's)
//!   stay refused and a new sign-in's certificate starts no earlier than the lock (none is
//!   issued while locked).
//!
//! - **A request's sign-in** (`request_sign_ins`, schema version 4): how the requester had
//!   signed in when they made a pending request — the age of that sign-in at the request's
//!   creation, whether it was multi-factor, and the key (SHA-256 of the public key) that
//!   sign-in certified. Its approval picks the role again under the policy in force then, and
//!   judges that role's `step_up` with these facts while the requester's enrolled key is still
//!   that key (the grant binds to the enrolled key); after a new sign-in with another key the
//!   new key's own sign-in is judged instead, so the certificate that receives the grant is
//!   always one whose sign-in met the step-up. No row (a development certificate, a request
//!   from before version 4): no step-up is met. A row is kept after its request ends, as a
//!   record of what the approval was judged with (a few dozen bytes per request).
//!
//! SQL here is plain and standard (no SQLite-only functions), so it ports to PostgreSQL.

use super::db::{params, OptionalExtension};
use super::Store;

pub(super) const SIGNINS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS oidc_unbound_tokens (
    signed_sha256 TEXT PRIMARY KEY,
    forget_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS oidc_subjects (
    name TEXT PRIMARY KEY,
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    bound_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS oidc_users (
    name TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL,
    groups TEXT NOT NULL,
    last_sign_in INTEGER NOT NULL,
    cert_not_after INTEGER NOT NULL,
    auth_time INTEGER NOT NULL,
    amr TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS request_sign_ins (
    request_id TEXT PRIMARY KEY,
    age_seconds INTEGER NOT NULL,
    mfa INTEGER NOT NULL,
    key_sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS user_locks (
    name TEXT PRIMARY KEY,
    locked INTEGER NOT NULL,
    cutoff INTEGER NOT NULL,
    changed_at INTEGER NOT NULL,
    changed_by TEXT NOT NULL,
    reason TEXT NOT NULL
);
";

/// A person's lock state, as `user_locks` holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockState {
    pub locked: bool,
    /// Certificates whose validity starts at or before this (unix s) are refused (all of
    /// them while locked).
    pub cutoff: i64,
    pub changed_at: i64,
    pub changed_by: String,
    pub reason: String,
}

/// One verified sign-in, as [`Store::record_sign_in`] keeps it.
#[derive(Debug, Clone, Copy)]
pub struct SignInRecord<'a> {
    /// The loggate user name.
    pub name: &'a str,
    /// SHA-256 (hex) of the key the sign-in certified.
    pub key_sha256: &'a str,
    /// The IdP groups of its token.
    pub groups: &'a [String],
    /// When (unix s).
    pub now: i64,
    /// The end of the certificate it gave.
    pub cert_not_after: i64,
    /// When the person authenticated at the IdP (`auth_time`; 0 when the IdP did not say).
    pub auth_time: i64,
    /// The token's `amr`.
    pub amr: &'a [String],
}

/// How the sign-in behind a caller's key authenticated, for step-up rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInFacts {
    /// When the person authenticated at the IdP (unix s).
    pub auth_time: i64,
    /// The token's `amr` (RFC 8176).
    pub amr: Vec<String>,
}

/// How the requester of a pending request had signed in when they made it
/// ([`Store::record_request_sign_in`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSignIn {
    /// The sign-in's age (s) at the request's creation.
    pub age_seconds: u64,
    /// Whether the IdP reported multi-factor (`amr` holding `mfa`).
    pub mfa: bool,
    /// SHA-256 (hex) of the key that sign-in certified, the one the request was made with:
    /// the facts describe that key's sign-in only.
    pub key_sha256: String,
}

/// A lock or unlock of one person ([`Store::set_user_lock`]).
#[derive(Debug, Clone, Copy)]
pub struct LockChange<'a> {
    /// The loggate user name.
    pub name: &'a str,
    /// Its SPIFFE id (`user_keys` is keyed by it).
    pub subject: &'a str,
    /// Lock (true) or unlock.
    pub locked: bool,
    /// The admin's SPIFFE id.
    pub by: &'a str,
    pub reason: &'a str,
    /// Unix s.
    pub now: i64,
}

/// One person of `loggate user list`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserListing {
    pub name: String,
    /// Last sign-in with the IdP (unix s), if any.
    pub last_sign_in: Option<i64>,
    /// The end of the certificate that sign-in gave.
    pub cert_not_after: Option<i64>,
    pub groups: Vec<String>,
    pub lock: Option<LockState>,
}

/// Rows of `oidc_unbound_tokens` at most (each lives ~6 minutes): beyond it, device sign-ins
/// wait.
const MAX_UNBOUND_REMEMBERED: i64 = 65_536;

/// The outcome of [`Store::take_unbound_token`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnboundUse {
    /// First use: recorded.
    Taken,
    /// Used before.
    Replayed,
    /// The memory is full of live tokens.
    Full,
}

/// The outcome of [`Store::bind_subject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// The name was free and is now bound, or was bound to this `iss` + `sub` already.
    Same,
    /// The name is bound to another IdP identity (its `iss`, `sub`).
    Other { issuer: String, subject: String },
}

impl Store {
    /// Records the use of the unbound token whose signing input hashes to `signed_sha256`
    /// (hex), kept until `forget_at` (unix seconds); forgets the ones past theirs.
    pub fn take_unbound_token(
        &self,
        signed_sha256: &str,
        forget_at: i64,
        now: i64,
    ) -> anyhow::Result<UnboundUse> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM oidc_unbound_tokens WHERE forget_at < ?1",
            params![now],
        )?;
        let seen: Option<i64> = tx
            .query_row(
                "SELECT forget_at FROM oidc_unbound_tokens WHERE signed_sha256 = ?1",
                params![signed_sha256],
                |r| r.get(0),
            )
            .optional()?;
        if seen.is_some() {
            return Ok(UnboundUse::Replayed);
        }
        let live: i64 =
            tx.query_row("SELECT COUNT(*) FROM oidc_unbound_tokens", [], |r| r.get(0))?;
        if live >= MAX_UNBOUND_REMEMBERED {
            return Ok(UnboundUse::Full);
        }
        tx.execute(
            "INSERT INTO oidc_unbound_tokens (signed_sha256, forget_at) VALUES (?1, ?2)",
            params![signed_sha256, forget_at],
        )?;
        tx.commit()?;
        Ok(UnboundUse::Taken)
    }

    /// Binds `name` to the IdP identity `issuer` + `subject` unless it is bound already;
    /// says which identity it is bound to.
    pub fn bind_subject(
        &self,
        name: &str,
        issuer: &str,
        subject: &str,
        now: i64,
    ) -> anyhow::Result<Binding> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO oidc_subjects (name, issuer, subject, bound_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO NOTHING",
            params![name, issuer, subject, now],
        )?;
        let (bound_issuer, bound_subject): (String, String) = tx.query_row(
            "SELECT issuer, subject FROM oidc_subjects WHERE name = ?1",
            params![name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        tx.commit()?;
        if bound_issuer == issuer && bound_subject == subject {
            Ok(Binding::Same)
        } else {
            Ok(Binding::Other {
                issuer: bound_issuer,
                subject: bound_subject,
            })
        }
    }
}

impl Store {
    /// Records a sign-in of `name`: the key certified (SHA-256 hex of its SPKI), the IdP
    /// groups of its verified token, when (unix s) and the certificate's end. Replaces the
    /// previous sign-in's: the groups follow the latest token.
    pub fn record_sign_in(&self, r: &SignInRecord<'_>) -> anyhow::Result<()> {
        self.conn()?.execute(
            "INSERT INTO oidc_users
                 (name, key_sha256, groups, last_sign_in, cert_not_after, auth_time, amr)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(name) DO UPDATE SET key_sha256 = ?2, groups = ?3, last_sign_in = ?4,
                 cert_not_after = ?5, auth_time = ?6, amr = ?7",
            params![
                r.name,
                r.key_sha256,
                super::to_json(r.groups),
                r.now,
                r.cert_not_after,
                r.auth_time,
                super::to_json(r.amr)
            ],
        )?;
        Ok(())
    }

    /// How fresh and strong the sign-in behind `name`'s key `key_sha256` (hex) was, when its
    /// last sign-in certified that key and the certificate it gave is still valid at `now`
    /// (unix s); `None` otherwise (see [`Self::idp_groups_for`]).
    pub fn sign_in_facts(
        &self,
        name: &str,
        key_sha256: &str,
        now: i64,
    ) -> anyhow::Result<Option<SignInFacts>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT auth_time, amr FROM oidc_users
                 WHERE name = ?1 AND key_sha256 = ?2 AND cert_not_after >= ?3",
                params![name, key_sha256, now],
                |r| {
                    Ok(SignInFacts {
                        auth_time: r.get(0)?,
                        amr: super::from_json(r.get(1)?),
                    })
                },
            )
            .optional()?)
    }

    /// The IdP groups of `name`'s last sign-in when it certified the key `key_sha256` (hex)
    /// and the certificate it gave is still valid at `now` (unix s: `now <= cert_not_after`);
    /// `None` for another key (an older sign-in's certificate, a development certificate) and
    /// once that certificate has expired: another certificate for the same key (an admin's
    /// `pki issue` for the laptop's request, a client that reuses its key) would otherwise
    /// inherit the IdP's groups long after the IdP last vouched for them.
    pub fn idp_groups_for(
        &self,
        name: &str,
        key_sha256: &str,
        now: i64,
    ) -> anyhow::Result<Option<Vec<String>>> {
        let groups: Option<String> = self
            .conn()?
            .query_row(
                "SELECT groups FROM oidc_users
                 WHERE name = ?1 AND key_sha256 = ?2 AND cert_not_after >= ?3",
                params![name, key_sha256, now],
                |r| r.get(0),
            )
            .optional()?;
        Ok(groups.map(super::from_json))
    }
}

impl Store {
    /// Records how the requester of request `request_id` had signed in when they made it
    /// (written before the request is stored; see the module's contract).
    pub fn record_request_sign_in(
        &self,
        request_id: &str,
        facts: &RequestSignIn,
    ) -> anyhow::Result<()> {
        self.conn()?.execute(
            "INSERT INTO request_sign_ins (request_id, age_seconds, mfa, key_sha256)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(request_id) DO UPDATE SET age_seconds = ?2, mfa = ?3, key_sha256 = ?4",
            params![
                request_id,
                i64::try_from(facts.age_seconds).unwrap_or(i64::MAX),
                i64::from(facts.mfa),
                facts.key_sha256
            ],
        )?;
        Ok(())
    }

    /// How the requester of `request_id` had signed in when they made it; `None` when nothing
    /// was recorded (no sign-in behind their key, or a request from before schema version 4).
    pub fn request_sign_in(&self, request_id: &str) -> anyhow::Result<Option<RequestSignIn>> {
        let row: Option<(i64, i64, String)> = self
            .conn()?
            .query_row(
                "SELECT age_seconds, mfa, key_sha256 FROM request_sign_ins WHERE request_id = ?1",
                params![request_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        // A negative age is no age this code wrote: it meets nothing.
        Ok(row.and_then(|(age, mfa, key_sha256)| {
            Some(RequestSignIn {
                age_seconds: u64::try_from(age).ok()?,
                mfa: mfa != 0,
                key_sha256,
            })
        }))
    }

    /// Forgets what [`Self::record_request_sign_in`] wrote for a request that was not stored.
    pub fn forget_request_sign_in(&self, request_id: &str) -> anyhow::Result<()> {
        self.conn()?.execute(
            "DELETE FROM request_sign_ins WHERE request_id = ?1",
            params![request_id],
        )?;
        Ok(())
    }
}

impl Store {
    /// Locks (`locked`) or unlocks `name` (SPIFFE id `subject`), recording who and why;
    /// `record` runs inside the transaction before the change is committed (it writes the
    /// audit record: no change without its record). Returns false, changing nothing, when the
    /// name already is so.
    ///
    /// A lock also forgets the person's enrolled key (`user_keys`): grants are bound to it, and
    /// agents accept any certificate of the CA, so a grant issued for the locked person (an
    /// admin's `grant issue`, now or after the unlock but before their next sign-in) would
    /// otherwise be bound to the key of a certificate the lock meant to stop — the stolen
    /// laptop's. Without a key no grant can be issued for them until they contact the
    /// controller again with a certificate it accepts.
    pub fn set_user_lock(
        &self,
        change: &LockChange<'_>,
        record: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<bool> {
        let LockChange {
            name,
            subject,
            locked,
            by,
            reason,
            now,
        } = *change;
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let was: Option<(i64, i64)> = tx
            .query_row(
                "SELECT locked, changed_at FROM user_locks WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if was.map_or(0, |w| w.0) == i64::from(locked) {
            return Ok(false);
        }
        record()?;
        // Locked: every certificate refused, whatever its start. Unlocked: those that started
        // before the lock stay refused (none was issued while locked: sign-in is refused
        // then); the next sign-in's starts at the lock's second at the earliest, which is not
        // in the future.
        let cutoff = match was {
            _ if locked => i64::MAX,
            Some((_, locked_at)) => locked_at.saturating_sub(1),
            None => now.saturating_sub(1),
        };
        tx.execute(
            "INSERT INTO user_locks (name, locked, cutoff, changed_at, changed_by, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(name) DO UPDATE SET locked = ?2, cutoff = ?3, changed_at = ?4,
                 changed_by = ?5, reason = ?6",
            params![name, i64::from(locked), cutoff, now, by, reason],
        )?;
        if locked {
            tx.execute("DELETE FROM user_keys WHERE subject = ?1", params![subject])?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// `name`'s lock state; `None` when it was never locked.
    pub fn user_lock(&self, name: &str) -> anyhow::Result<Option<LockState>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT locked, cutoff, changed_at, changed_by, reason FROM user_locks
                 WHERE name = ?1",
                params![name],
                lock_from_row,
            )
            .optional()?)
    }

    /// Every name ever locked with its certificate cut-off (unix s), for the revocation set.
    pub fn user_cutoffs(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT name, cutoff FROM user_locks")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The people signed in with the IdP or locked, by name, at most `max` (and whether more
    /// there were).
    pub fn list_users(&self, max: usize) -> anyhow::Result<(Vec<UserListing>, bool)> {
        let conn = self.conn()?;
        let mut users: std::collections::BTreeMap<String, UserListing> = Default::default();
        let mut stmt =
            conn.prepare("SELECT name, last_sign_in, cert_not_after, groups FROM oidc_users")?;
        let rows = stmt.query_map([], |r| {
            Ok(UserListing {
                name: r.get(0)?,
                last_sign_in: Some(r.get(1)?),
                cert_not_after: Some(r.get(2)?),
                groups: super::from_json(r.get(3)?),
                lock: None,
            })
        })?;
        for row in rows {
            let row = row?;
            users.insert(row.name.clone(), row);
        }
        let mut stmt = conn.prepare(
            "SELECT locked, cutoff, changed_at, changed_by, reason, name FROM user_locks",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(5)?, lock_from_row(r)?)))?;
        for row in rows {
            let (name, lock) = row?;
            users
                .entry(name.clone())
                .or_insert_with(|| UserListing {
                    name,
                    ..UserListing::default()
                })
                .lock = Some(lock);
        }
        let truncated = users.len() > max;
        Ok((users.into_values().take(max).collect(), truncated))
    }
}

fn lock_from_row(r: &super::db::Row<'_>) -> super::db::Result<LockState> {
    Ok(LockState {
        locked: r.get::<_, i64>(0)? != 0,
        cutoff: r.get(1)?,
        changed_at: r.get(2)?,
        changed_by: r.get(3)?,
        reason: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unbound_token_is_taken_once_until_it_is_forgotten_and_across_a_reopen() {
        crate::store::testing::on_each_test_store(|t| {
            assert_eq!(
                t.store.take_unbound_token("aa", 100, 10).ok(),
                Some(UnboundUse::Taken)
            );
            assert_eq!(
                t.store.take_unbound_token("aa", 100, 50).ok(),
                Some(UnboundUse::Replayed)
            );
            t.reopen();
            assert_eq!(
                t.store.take_unbound_token("aa", 100, 100).ok(),
                Some(UnboundUse::Replayed)
            );
            // Past `forget_at` the token could not be accepted any more; the row goes.
            assert_eq!(
                t.store.take_unbound_token("aa", 200, 101).ok(),
                Some(UnboundUse::Taken)
            );
        });
    }

    fn record<'a>(name: &'a str, key: &'a str, groups: &'a [String], now: i64) -> SignInRecord<'a> {
        SignInRecord {
            name,
            key_sha256: key,
            groups,
            now,
            cert_not_after: now + 100,
            auth_time: now - 1,
            amr: &[],
        }
    }

    #[test]
    fn idp_groups_count_only_for_the_key_the_last_sign_in_certified() {
        crate::store::testing::on_each_test_store(|t| {
            let store = &t.store;
            let groups = vec!["payments".to_string(), "Payments On-Call".to_string()];
            store
                .record_sign_in(&record("alice", "k1", &groups, 10))
                .expect("record");
            assert_eq!(
                store.idp_groups_for("alice", "k1", 10).ok(),
                Some(Some(groups))
            );
            assert_eq!(store.idp_groups_for("alice", "k2", 20).ok(), Some(None));
            assert_eq!(store.idp_groups_for("bob", "k1", 10).ok(), Some(None));
            // A new sign-in (a new key, other groups) replaces the old one's.
            store
                .record_sign_in(&record("alice", "k2", &["dev".to_string()], 20))
                .expect("record");
            assert_eq!(store.idp_groups_for("alice", "k1", 10).ok(), Some(None));
            assert_eq!(store.sign_in_facts("alice", "k1", 20).ok(), Some(None));
            assert_eq!(
                store
                    .sign_in_facts("alice", "k2", 20)
                    .ok()
                    .flatten()
                    .map(|f| f.auth_time),
                Some(19)
            );
            assert_eq!(
                store.idp_groups_for("alice", "k2", 20).ok(),
                Some(Some(vec!["dev".to_string()]))
            );
        });
    }

    #[test]
    fn idp_groups_and_sign_in_facts_count_only_while_that_sign_ins_certificate_is_valid() {
        crate::store::testing::on_each_test_store(|t| {
            let store = &t.store;
            let groups = vec!["payments".to_string()];
            // The certificate of this sign-in ends at 110.
            store
                .record_sign_in(&record("alice", "k1", &groups, 10))
                .expect("record");
            assert_eq!(
                store.idp_groups_for("alice", "k1", 110).ok(),
                Some(Some(groups))
            );
            assert!(store
                .sign_in_facts("alice", "k1", 110)
                .is_ok_and(|f| f.is_some()));
            // Another certificate for the same key (a `pki issue` of the laptop's request)
            // after the sign-in's certificate ended inherits nothing.
            assert_eq!(store.idp_groups_for("alice", "k1", 111).ok(), Some(None));
            assert_eq!(store.sign_in_facts("alice", "k1", 111).ok(), Some(None));
        });
    }

    #[test]
    fn a_requests_sign_in_is_kept_by_request_and_forgotten_on_demand() {
        crate::store::testing::on_each_test_store(|t| {
            let store = &t.store;
            assert_eq!(store.request_sign_in("r-1").ok(), Some(None));
            let facts = RequestSignIn {
                age_seconds: 42,
                mfa: true,
                key_sha256: "k1".into(),
            };
            store.record_request_sign_in("r-1", &facts).expect("record");
            t.reopen();
            assert_eq!(t.store.request_sign_in("r-1").ok(), Some(Some(facts)));
            assert_eq!(t.store.request_sign_in("r-2").ok(), Some(None));
            t.store.forget_request_sign_in("r-1").expect("forget");
            assert_eq!(t.store.request_sign_in("r-1").ok(), Some(None));
        });
    }

    const ALICE: &str = "spiffe://loggate.local/user/alice";

    fn change(locked: bool, reason: &str, now: i64) -> LockChange<'_> {
        LockChange {
            name: "alice",
            subject: ALICE,
            locked,
            by: "admin",
            reason,
            now,
        }
    }

    #[test]
    fn while_locked_no_key_is_enrolled_and_no_grant_stored_for_the_person() {
        crate::store::testing::on_each_test_store(|t| {
            let store = &t.store;
            let ok = || Ok(());
            assert_eq!(
                store.set_user_lock(&change(true, "INC-9", 100), ok).ok(),
                Some(true)
            );
            let locked = |e: anyhow::Error| e.downcast_ref::<crate::store::UserLocked>().is_some();
            // A sign-in or a start that raced the lock cannot put the key back...
            assert!(store.set_user_key(ALICE, "stolen", 101).is_err_and(locked));
            assert!(store
                .enrol_user_key_if_absent(ALICE, "stolen", 101, ok)
                .is_err_and(locked));
            assert_eq!(store.user_key(ALICE).ok(), Some(None));
            // ...and a grant that passed the service's checks before the lock stores nothing.
            let grant = |revision| {
                Ok(crate::store::GrantRow {
                    id: "g-raced".into(),
                    subject: ALICE.into(),
                    hosts: vec!["web-1".into()],
                    labels: vec![],
                    paths: vec!["/var/log/app.log".into()],
                    units: vec![],
                    not_before: 100,
                    not_after: 200,
                    reason: "INC-9".into(),
                    issuer: "spiffe://loggate.local/user/admin".into(),
                    profile: "default".into(),
                    key_sha256: "00".repeat(32),
                    token: "token".into(),
                    revision,
                    revoked: None,
                })
            };
            assert!(store.insert_grant(grant).is_err_and(locked));
            assert_eq!(store.grant("g-raced").ok().flatten().map(|g| g.id), None);
            // Someone else is not concerned; after the unlock the person is not either.
            assert!(store
                .set_user_key("spiffe://loggate.local/user/bob", "k", 101)
                .is_ok());
            assert_eq!(
                store.set_user_lock(&change(false, "ok", 200), ok).ok(),
                Some(true)
            );
            assert!(store.set_user_key(ALICE, "new", 201).is_ok());
            assert!(store.insert_grant(grant).is_ok());
        });
    }

    #[test]
    fn a_lock_refuses_every_certificate_and_an_unlock_keeps_those_from_before_it_refused() {
        crate::store::testing::on_each_test_store(|t| {
            let store = &t.store;
            store.set_user_key(ALICE, "stolen", 1).expect("key");
            let ok = || Ok(());
            assert_eq!(
                store.set_user_lock(&change(true, "INC-9", 100), ok).ok(),
                Some(true)
            );
            // Locking twice changes nothing and writes no second record.
            let twice = store.set_user_lock(&change(true, "again", 101), || {
                anyhow::bail!("recorded twice")
            });
            assert_eq!(twice.ok(), Some(false));
            assert_eq!(
                store.user_cutoffs().ok(),
                Some(vec![("alice".to_string(), i64::MAX)])
            );
            assert!(store
                .user_lock("alice")
                .ok()
                .flatten()
                .is_some_and(|l| l.locked));
            // No grant can be bound to the key of a certificate from before the lock.
            assert_eq!(store.user_key(ALICE).ok(), Some(None));
            assert_eq!(
                store.set_user_lock(&change(false, "ok", 200), ok).ok(),
                Some(true)
            );
            // Certificates that started before the lock stay refused.
            assert_eq!(
                store.user_cutoffs().ok(),
                Some(vec![("alice".to_string(), 99)])
            );
            // A failed record changes nothing.
            let failed =
                store.set_user_lock(&change(true, "x", 300), || anyhow::bail!("audit down"));
            assert!(failed.is_err());
            assert!(store
                .user_lock("alice")
                .ok()
                .flatten()
                .is_some_and(|l| !l.locked));
            store
                .record_sign_in(&record("bob", "k", &["dev".to_string()], 5))
                .expect("record");
            let (users, truncated) = store.list_users(10).expect("list");
            assert!(!truncated);
            assert_eq!(users.len(), 2);
            assert_eq!(users[0].name, "alice");
            assert_eq!(users[1].groups, ["dev"]);
            assert_eq!(users[1].last_sign_in, Some(5));
        });
    }

    #[test]
    fn a_name_stays_bound_to_its_first_idp_subject() {
        crate::store::testing::on_each_backend(|store, _dir| {
            let iss = "https://idp.example";
            assert_eq!(
                store.bind_subject("alice", iss, "A", 1).ok(),
                Some(Binding::Same)
            );
            assert_eq!(
                store.bind_subject("alice", iss, "A", 2).ok(),
                Some(Binding::Same)
            );
            assert_eq!(
                store.bind_subject("alice", iss, "B", 3).ok(),
                Some(Binding::Other {
                    issuer: iss.to_string(),
                    subject: "A".to_string()
                })
            );
            assert_eq!(
                store
                    .bind_subject("alice", "https://other.example", "A", 4)
                    .ok(),
                Some(Binding::Other {
                    issuer: iss.to_string(),
                    subject: "A".to_string()
                })
            );
        });
    }
}
