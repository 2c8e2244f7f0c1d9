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
";

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
        let mut conn = self.conn();
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
        let mut conn = self.conn();
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
