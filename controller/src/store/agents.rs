//! Join tokens and enrolled agents.
//!
//! A join token is `lgj_` + 64 hex characters: 256 random bits. The store keeps only the
//! SHA-256 of the whole token: a secret of 256 random bits cannot be guessed, so no salt or
//! slow hash is needed (those protect low-entropy passwords); a copy of the database does not
//! give the tokens, and a lookup by that hash reveals nothing through its timing. Its id — the
//! first 12 hex characters of that hash — names it in listings and audit records.
//!
//! An enrolment is one transaction: the token is checked (known, not revoked, not expired,
//! uses left), the agent id is checked (not enrolled yet, unless the token allows
//! re-enrolment), the certificate is issued and the audit record written by the caller's
//! callback, then a use is taken from the token and the agent is registered with the token's
//! labels. No certificate is handed out without its record, and a failed record changes
//! nothing.

use super::db::{params, params_from_iter, OptionalExtension, Value};
use super::{from_json, to_json, Store};
use anyhow::Context;
use sha2::{Digest, Sha256};

pub(super) const AGENTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS join_tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    uses_left INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    reenrol INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS enrolled_agents (
    id TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    token_id TEXT NOT NULL,
    serial TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    enrolled_at INTEGER NOT NULL
);
";

/// Added after the first: removed agents and when (every certificate of that agent id whose
/// validity starts at or before `removed_at` is refused from then on).
pub(super) const REMOVED_AGENTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS removed_agents (
    id TEXT PRIMARY KEY,
    removed_at INTEGER NOT NULL,
    removed_by TEXT NOT NULL
);
";

/// Added in version 7 (issue 12): the labels an agent held before its labels changed (a
/// re-enrolment with a token of other labels, an agent without enrolment announcing other
/// labels, a removal), each with the time of its latest change (`since`).
///
/// Why: what is sent to an agent is decided by its *current* labels, but a revocation must
/// reach every agent that may hold its grant. An agent that received grant G under label A
/// and then holds B instead would otherwise never be sent G's revocation (it is addressed,
/// and indexed, to A): a catch-up from its position reads B's rows, the feed matches B. If
/// it then holds A again (or still serves under A: its own audience is what it loaded at its
/// start), it would serve a revoked grant. So a revocation is also sent to an agent that held
/// one of its grant's labels before; the grants themselves are sent by current labels only.
///
/// Nothing about a former label is decided at the change. A stream opened before the change
/// (a re-enrolment does not cut the agent's open stream; a stream may read the labels just
/// before the re-enrolment commits) still streams the old labels, and so may deliver grants
/// issued to them *after* the change. So a row is kept whatever the grants at the change, and
/// whether it is of use is decided when a stream opens ([`former_labels`]: a label that has a
/// grant live then). A row is forgotten ([`forget_former_labels`]) only once no grant
/// addressed to its label is live and no stream under the old labels can deliver one any
/// more: the agent opened a stream more than [`FORMER_LABELS_GRACE`] after the change (an
/// agent watches on one stream at a time: the old one is no longer read), or it was removed
/// after the change and that removal is older than the grace (its streams are cut: at once on
/// its replica, at the next revocation reload, every 10 s, on the others).
pub(super) const FORMER_LABELS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agent_former_labels (
    agent_id TEXT NOT NULL,
    label TEXT NOT NULL,
    since INTEGER NOT NULL,
    PRIMARY KEY (agent_id, label)
);
";

/// How long after a change of an agent's labels (or its removal) a stream under its old
/// labels may still be open, as far as forgetting a former label goes
/// ([`FORMER_LABELS_SCHEMA`]): well past the slowest commit (`lock_timeout`, 10 s) and the
/// other replicas' revocation reload (10 s).
pub const FORMER_LABELS_GRACE: i64 = 300;

/// The most former labels kept for one agent ([`FORMER_LABELS_SCHEMA`]): a label change that
/// would keep more is refused ([`super::db::Error::TooManyFormerLabels`]). An enrolled agent's
/// labels change only when an admin re-enrols it; an agent that announces its own labels could
/// otherwise grow the table (which every replica loads every 10 s) by reconnecting under ever
/// other labels (second review of open5, finding 2).
pub const MAX_FORMER_LABELS: usize = 128;

/// Whether a label change is held to [`MAX_FORMER_LABELS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FormerLabelsBound {
    /// Labels an agent announces itself (no enrolment): the change is refused past the bound.
    Announced,
    /// An admin's change (an enrolment's token, a removal): never refused, it adds at most
    /// the agent's current labels (a bounded list); a removal must always be possible.
    Admin,
}

/// Records that agent `agent_id`'s labels change from `old` to `new` at `now`, in the caller's
/// transaction ([`FORMER_LABELS_SCHEMA`]): each label it no longer holds is kept as a former
/// label (since `now`), the labels it holds again are no longer former, and its former labels
/// that can be of no use any more are forgotten ([`forget_former_labels`]). Nothing is written
/// when the labels did not change.
pub(super) fn record_label_change(
    conn: &super::db::Connection,
    agent_id: &str,
    old: &[String],
    new: &[String],
    now: i64,
    bound: FormerLabelsBound,
) -> super::db::Result<()> {
    if old.iter().all(|l| new.contains(l)) && new.iter().all(|l| old.contains(l)) {
        return Ok(());
    }
    // Rows that can be of no use any more go first (whether or not the change is refused).
    forget_former_labels(conn, Some(agent_id), now)?;
    let mut dropped: Vec<&String> = old.iter().filter(|l| !new.contains(l)).collect();
    dropped.sort_unstable();
    dropped.dedup();
    // The bound is checked before the change writes anything: a refused change leaves the
    // former labels as they were (SQLite writes them outside a transaction).
    if bound == FormerLabelsBound::Announced && !dropped.is_empty() {
        let kept: Vec<String> = {
            let mut stmt =
                conn.prepare_cached("SELECT label FROM agent_former_labels WHERE agent_id = ?1")?;
            let rows = stmt.query_map(params![agent_id], |r| r.get(0))?;
            rows.collect::<super::db::Result<_>>()?
        };
        let after = kept
            .iter()
            .filter(|l| !new.contains(l) && !dropped.contains(l))
            .count()
            .saturating_add(dropped.len());
        if after > MAX_FORMER_LABELS {
            return Err(super::db::Error::TooManyFormerLabels(
                agent_id.to_string(),
                after,
            ));
        }
    }
    for label in new {
        conn.execute(
            "DELETE FROM agent_former_labels WHERE agent_id = ?1 AND label = ?2",
            params![agent_id, label],
        )?;
    }
    for label in dropped {
        conn.execute(
            "INSERT INTO agent_former_labels (agent_id, label, since) VALUES (?1, ?2, ?3)
             ON CONFLICT(agent_id, label) DO UPDATE SET since =
             CASE WHEN agent_former_labels.since > ?3 THEN agent_former_labels.since ELSE ?3 END",
            params![agent_id, label, now],
        )?;
    }
    Ok(())
}

/// Whether former label row `f` can be forgotten at `?1` ([`FORMER_LABELS_SCHEMA`]): no grant
/// addressed to its label is live (`revision_targets_live`), and no stream under the old labels
/// can still deliver one: the agent opened a stream (its registry's `last_seen`) more than
/// the grace after the change, or it was removed after the change, longer than the grace ago
/// (`?3`: `?1` less the grace `?2`).
const FORGETTABLE_SQL: &str = "NOT EXISTS (SELECT 1 FROM revision_targets t \
       WHERE t.target = 'label:' || f.label AND t.grant_ends > ?1) \
     AND (EXISTS (SELECT 1 FROM agents a WHERE a.id = f.agent_id AND a.last_seen > f.since + ?2) \
       OR EXISTS (SELECT 1 FROM removed_agents r WHERE r.id = f.agent_id \
         AND r.removed_at >= f.since AND r.removed_at < ?3))";

/// Forgets the former labels ([`FORMER_LABELS_SCHEMA`]) of agent `agent_id` (of every agent:
/// `None`) that can be of no use at `now` any more; how many.
pub(super) fn forget_former_labels(
    conn: &super::db::Connection,
    agent_id: Option<&str>,
    now: i64,
) -> super::db::Result<usize> {
    match agent_id {
        Some(agent_id) => conn.execute(
            &format!(
                "DELETE FROM agent_former_labels AS f WHERE f.agent_id = ?4 AND {FORGETTABLE_SQL}"
            ),
            params![
                now,
                FORMER_LABELS_GRACE,
                now.saturating_sub(FORMER_LABELS_GRACE),
                agent_id
            ],
        ),
        None => conn.execute(
            &format!("DELETE FROM agent_former_labels AS f WHERE {FORGETTABLE_SQL}"),
            params![
                now,
                FORMER_LABELS_GRACE,
                now.saturating_sub(FORMER_LABELS_GRACE)
            ],
        ),
    }
}

/// Agents whose registrations one transaction of [`Store::register_agents`] writes at most.
pub const REGISTRATIONS_PER_WRITE: usize = 512;

/// The two statements of a transaction of [`Store::register_agents`] for `n` agents, each
/// agent's six parameters in order (id, labels, address, last seen, replica, certificate
/// start): the ids of those removed at or after their certificate's start, and the upsert of
/// the others (the labels written only for an agent not registered yet).
fn registrations_sql(n: usize) -> (String, String) {
    let rows: Vec<String> = (0..n)
        .map(|i| {
            let p = i * 6;
            format!(
                "(?{}, ?{}, ?{}, CAST(?{} AS BIGINT), ?{}, CAST(?{} AS BIGINT))",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6
            )
        })
        .collect();
    let with = format!(
        "WITH v (id, labels, addr, last_seen, replica, nb) AS (VALUES {})",
        rows.join(", ")
    );
    let removed =
        "EXISTS (SELECT 1 FROM removed_agents r WHERE r.id = v.id AND r.removed_at >= v.nb)";
    (
        format!("{with} SELECT v.id FROM v WHERE {removed}"),
        format!(
            "{with} INSERT INTO agents (id, labels, addr, last_seen, replica) \
             SELECT v.id, v.labels, v.addr, v.last_seen, v.replica FROM v WHERE NOT {removed} \
             ON CONFLICT(id) DO UPDATE SET addr = excluded.addr, \
             last_seen = excluded.last_seen, replica = excluded.replica"
        ),
    )
}

/// The registry's labels of agent `agent_id` (`None`: not registered), in the caller's
/// transaction.
pub(super) fn registered_labels(
    conn: &super::db::Connection,
    agent_id: &str,
) -> super::db::Result<Option<Vec<String>>> {
    Ok(conn
        .query_row_cached(
            "SELECT labels FROM agents WHERE id = ?1",
            params![agent_id],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .map(from_json))
}

/// The former labels of agent `agent_id` of use to a stream opening at `now`
/// ([`FORMER_LABELS_SCHEMA`]): those with a grant live at `now`. Decided now, not at the
/// change: a grant issued to a former label after the change (delivered by a stream still
/// under the old labels) counts.
pub(super) fn former_labels(
    conn: &super::db::Connection,
    agent_id: &str,
    now: i64,
) -> super::db::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT f.label FROM agent_former_labels AS f WHERE f.agent_id = ?1 \
         AND EXISTS (SELECT 1 FROM revision_targets t \
           WHERE t.target = 'label:' || f.label AND t.grant_ends > ?2) \
         ORDER BY f.label",
    )?;
    let rows = stmt.query_map(params![agent_id, now], |r| r.get(0))?;
    rows.collect()
}

/// What a stream's opening reads of its agent ([`Store::stream_registration`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRegistration {
    /// Removed (`agent remove`) at or after the start of the certificate it connects with.
    pub removed: bool,
    /// The labels its join token gave it; `None`: not enrolled (it keeps what it announces).
    pub enrolled: Option<Vec<String>>,
    /// Its labels in the registry; `None`: not registered.
    pub registered: Option<Vec<String>>,
    /// Its address in the registry (what `ResolveAgent` answers); `None`: not registered.
    pub registered_addr: Option<String>,
    /// Its former labels still of use ([`FORMER_LABELS_SCHEMA`]).
    pub former: Vec<String>,
}

/// One agent of the registry, with what enrolment knows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentListing {
    pub id: String,
    pub labels: Vec<String>,
    pub addr: String,
    pub last_seen: i64,
    /// The end of the certificate the controller issued it, `None` for an agent that did
    /// not enrol.
    pub cert_not_after: Option<i64>,
    pub cert_serial: Option<String>,
    /// The controller replica it last connected to (empty: registered before schema
    /// version 3, or never connected).
    pub replica: String,
}

/// SQLite's step to schema version 3 (`agents.replica`), idempotent like the baseline: the
/// column is added when missing. PostgreSQL's is `migrations/postgres_v3.sql`.
pub(super) fn migrate_sqlite(conn: &super::db::Connection) -> super::db::Result<()> {
    let has_replica: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('agents') WHERE name = 'replica'",
        [],
        |r| r.get(0),
    )?;
    if !has_replica {
        conn.execute_batch("ALTER TABLE agents ADD COLUMN replica TEXT NOT NULL DEFAULT ''")?;
    }
    Ok(())
}

/// The prefix of every join token.
pub const TOKEN_PREFIX: &str = "lgj_";

/// The SHA-256 (hex) the store keeps of `token`, and the token's id.
pub fn token_digest(token: &str) -> (String, String) {
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    let id = digest[..12].to_string();
    (digest, id)
}

/// A new join token: the secret to print once, and its digest and id.
pub fn new_join_token() -> (String, String, String) {
    let secret: [u8; 32] = rand::random();
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
    let (digest, id) = token_digest(&token);
    (token, digest, id)
}

/// A join token as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub labels: Vec<String>,
    pub uses_left: u32,
    pub expires_at: i64,
    /// Whether it may enrol an agent id that is already enrolled (replacing its certificate).
    pub reenrol: bool,
    pub created_by: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Why an enrolment was refused by the store's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrolRefusal {
    TokenUnknown,
    TokenRevoked,
    TokenExpired,
    TokenUsedUp,
    AlreadyEnrolled,
}

impl EnrolRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrolRefusal::TokenUnknown => "token_unknown",
            EnrolRefusal::TokenRevoked => "token_revoked",
            EnrolRefusal::TokenExpired => "token_expired",
            EnrolRefusal::TokenUsedUp => "token_used_up",
            EnrolRefusal::AlreadyEnrolled => "already_enrolled",
        }
    }

    /// The refusal in one sentence, with the next step.
    pub fn sentence(self) -> &'static str {
        match self {
            EnrolRefusal::TokenUnknown => {
                "this join token is not known to the controller; check it was copied whole, or \
                 create one with loggate agent token create"
            }
            EnrolRefusal::TokenRevoked => {
                "this join token was revoked; create a new one with loggate agent token create"
            }
            EnrolRefusal::TokenExpired => {
                "this join token has expired; create a new one with loggate agent token create"
            }
            EnrolRefusal::TokenUsedUp => {
                "this join token has been used as often as it allows; create a new one with \
                 loggate agent token create"
            }
            EnrolRefusal::AlreadyEnrolled => {
                "this agent id is already enrolled; remove it first (loggate agent remove ID) \
                 or use a token created with --reenrol"
            }
        }
    }
}

/// What an enrolment that passed the store's checks is told about its token and agent.
#[derive(Debug, Clone)]
pub struct EnrolContext {
    pub token: JoinToken,
    /// The agent id was enrolled (or registered) before.
    pub reenrol: bool,
    /// When the agent id was last removed: a new certificate must start after it.
    pub removed_at: Option<i64>,
}

/// What [`Store::renew_agent`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewal<T> {
    /// Issued and recorded.
    Renewed(T),
    /// The id is not enrolled here (its certificate came from elsewhere, or it was removed).
    NotEnrolled,
    /// The caller's certificate starts at or before the id's last removal or re-enrolment.
    Superseded,
}

/// What the caller's callback issued, to be registered.
#[derive(Debug, Clone)]
pub struct EnrolledCert {
    pub serial: String,
    pub not_after: i64,
}

fn token_from_row(r: &super::db::Row<'_>) -> super::db::Result<JoinToken> {
    Ok(JoinToken {
        id: r.get(0)?,
        labels: from_json(r.get(1)?),
        uses_left: u32::try_from(r.get::<_, i64>(2)?.max(0)).unwrap_or(u32::MAX),
        expires_at: r.get(3)?,
        reenrol: r.get::<_, i64>(4)? != 0,
        created_by: r.get(5)?,
        created_at: r.get(6)?,
        revoked_at: r.get(7)?,
    })
}

const TOKEN_COLUMNS: &str =
    "id, labels, uses_left, expires_at, reenrol, created_by, created_at, revoked_at";

impl Store {
    /// Stores a new join token by its digest. `record` (the audit event) runs inside the
    /// transaction, before the token is stored.
    pub fn create_join_token(
        &self,
        digest: &str,
        token: &JoinToken,
        record: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        record()?;
        tx.execute(
            "INSERT INTO join_tokens (id, secret_sha256, labels, uses_left, expires_at, reenrol,
             created_by, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL)",
            params![
                token.id,
                digest,
                to_json(&token.labels),
                i64::from(token.uses_left),
                token.expires_at,
                i64::from(token.reenrol),
                token.created_by,
                token.created_at,
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every join token, newest first.
    pub fn join_tokens(&self) -> anyhow::Result<Vec<JoinToken>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {TOKEN_COLUMNS} FROM join_tokens ORDER BY created_at DESC, id"
        ))?;
        let rows = stmt.query_map([], token_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes the join token `id` at `now`; `record` (the audit event, given the token) runs
    /// inside the transaction. `None` when there is no such token; a token revoked already is
    /// returned as it is, without a second record.
    pub fn revoke_join_token(
        &self,
        id: &str,
        now: i64,
        record: impl FnOnce(&JoinToken) -> anyhow::Result<()>,
    ) -> anyhow::Result<Option<JoinToken>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let token = tx
            .query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM join_tokens WHERE id = ?1"),
                params![id],
                token_from_row,
            )
            .optional()?;
        let Some(mut token) = token else {
            return Ok(None);
        };
        if token.revoked_at.is_some() {
            return Ok(Some(token));
        }
        record(&token)?;
        tx.execute(
            "UPDATE join_tokens SET revoked_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        tx.commit()?;
        token.revoked_at = Some(now);
        Ok(Some(token))
    }

    /// Enrols `agent_id` with the token whose digest is `digest`, at `now` (see the module
    /// docs). `Ok(Err(refusal, token))` when the token or the agent id is refused (the token
    /// when it is known, for the audit record); nothing changes then. `issue` runs inside the
    /// transaction once every check passed: it issues the certificate and writes the audit
    /// record; its error changes nothing.
    pub fn enrol_agent<T>(
        &self,
        digest: &str,
        agent_id: &str,
        now: i64,
        issue: impl FnOnce(&EnrolContext) -> anyhow::Result<(EnrolledCert, T)>,
    ) -> anyhow::Result<Result<T, (EnrolRefusal, Option<JoinToken>)>> {
        let mut conn = self.conn()?;
        // An unknown token (a guess; a flood of them) is refused on a plain read: the
        // transaction below takes, on PostgreSQL, the lock every writer of the cluster takes
        // (attacker review of issue #12, M1). One that is known is read again in it.
        let read = |conn: &super::db::Connection| {
            conn.query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM join_tokens WHERE secret_sha256 = ?1"),
                params![digest],
                token_from_row,
            )
            .optional()
        };
        let refusal = |token: &JoinToken| {
            if token.revoked_at.is_some() {
                Some(EnrolRefusal::TokenRevoked)
            } else if token.expires_at <= now {
                Some(EnrolRefusal::TokenExpired)
            } else if token.uses_left == 0 {
                Some(EnrolRefusal::TokenUsedUp)
            } else {
                None
            }
        };
        // A token unknown, revoked, expired or used up (a guess, an old leaked one; a flood of
        // them) is refused on a plain read (review of issue #12, M1 and its review's L4).
        match read(&conn)? {
            None => return Ok(Err((EnrolRefusal::TokenUnknown, None))),
            Some(token) => {
                if let Some(refused) = refusal(&token) {
                    return Ok(Err((refused, Some(token))));
                }
            }
        }
        // Read again in the transaction: it may have changed since.
        let tx = conn.transaction()?;
        let Some(token) = read(&tx)? else {
            return Ok(Err((EnrolRefusal::TokenUnknown, None)));
        };
        if let Some(refused) = refusal(&token) {
            return Ok(Err((refused, Some(token))));
        }
        let known: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM enrolled_agents WHERE id = ?1
                 UNION SELECT 1 FROM agents WHERE id = ?1",
                params![agent_id],
                |r| r.get(0),
            )
            .optional()?;
        if known.is_some() && !token.reenrol {
            return Ok(Err((EnrolRefusal::AlreadyEnrolled, Some(token))));
        }
        let removed_at: Option<i64> = tx
            .query_row(
                "SELECT removed_at FROM removed_agents WHERE id = ?1",
                params![agent_id],
                |r| r.get(0),
            )
            .optional()?;
        // A re-enrolment supersedes every certificate issued to the id until now, as a removal
        // does (below): the host it replaces (rebuilt, perhaps because it was compromised)
        // must not keep the identity, nor renew it (review of issue #12, H1).
        // Past an earlier cut-off: a certificate issued after it starts a second after it, so
        // two re-enrolments (or a removal and a re-enrolment) in one second each cut the
        // other's certificate (second review of the fix, M2).
        let removed_at = if known.is_some() {
            Some(removed_at.map_or(now, |r| now.max(r.saturating_add(1))))
        } else {
            removed_at
        };
        let context = EnrolContext {
            token,
            reenrol: known.is_some(),
            removed_at,
        };
        let (cert, value) = issue(&context)?;
        let token = context.token;
        if let (true, Some(cutoff)) = (context.reenrol, context.removed_at) {
            tx.execute(
                "INSERT INTO removed_agents (id, removed_at, removed_by) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET removed_at = ?2, removed_by = ?3",
                params![
                    agent_id,
                    cutoff,
                    format!("re-enrolment with join token {}", token.id)
                ],
            )?;
        }
        // One use taken, or nothing is stored: a token used up meanwhile enrols no one more.
        let taken = tx.execute(
            "UPDATE join_tokens SET uses_left = uses_left - 1 WHERE id = ?1 AND uses_left > 0",
            params![token.id],
        )?;
        if taken != 1 {
            return Err(super::db::Error::Conflict("the join token").into());
        }
        tx.execute(
            "INSERT INTO enrolled_agents (id, labels, token_id, serial, not_after, enrolled_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(id) DO UPDATE SET labels = ?2, token_id = ?3, serial = ?4,
             not_after = ?5, enrolled_at = ?6",
            params![
                agent_id,
                to_json(&token.labels),
                token.id,
                cert.serial,
                cert.not_after,
                now
            ],
        )?;
        // A re-enrolment with other labels: the old ones stay former labels while a grant
        // addressed to them may be live (its revocation must still reach this agent). An
        // agent removed (its registry row gone, its labels former) and enrolled again: the
        // labels it holds again are no longer former, or its streams under them would be cut
        // as stale at every reload (second review of open5, finding 1).
        let old = registered_labels(&tx, agent_id)?.unwrap_or_default();
        record_label_change(
            &tx,
            agent_id,
            &old,
            &token.labels,
            now,
            FormerLabelsBound::Admin,
        )?;
        // The registry `ResolveAgent` and label selectors read: the token's labels; the address
        // is learned when the agent connects. A re-enrolment forgets the address the replaced
        // host registered: `--host` reads must not be sent to it (second review of the fix, M4).
        tx.execute(
            "INSERT INTO agents (id, labels, addr, last_seen) VALUES (?1, ?2, '', ?3)
             ON CONFLICT(id) DO UPDATE SET labels = ?2, addr = '', replica = ''",
            params![agent_id, to_json(&token.labels), now],
        )?;
        tx.commit()?;
        Ok(Ok(value))
    }

    /// Removes agent `id` at `now` by `by`: it leaves the registry and every certificate of
    /// it issued until now is refused (see [`Store::removed_agents`]). `record` (the audit
    /// event) runs inside the transaction. False when no such agent is registered.
    pub fn remove_agent(
        &self,
        id: &str,
        now: i64,
        by: &str,
        record: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let known: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM agents WHERE id = ?1 UNION SELECT 1 FROM enrolled_agents WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        if known.is_none() {
            return Ok(false);
        }
        record()?;
        // Its labels stay former labels while a grant addressed to them may be live: a
        // re-enrolment under other labels (with the grants and position it kept) is still sent
        // their revocations.
        if let Some(old) = registered_labels(&tx, id)? {
            record_label_change(&tx, id, &old, &[], now, FormerLabelsBound::Admin)?;
        }
        tx.execute("DELETE FROM agents WHERE id = ?1", params![id])?;
        tx.execute("DELETE FROM enrolled_agents WHERE id = ?1", params![id])?;
        // Never below an earlier cut-off, and past it: the certificate of a re-enrolment in
        // the same second starts a second after that one's cut-off, and is refused too
        // (second review of the fix, M1).
        let earlier: Option<i64> = tx
            .query_row(
                "SELECT removed_at FROM removed_agents WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        let cutoff = earlier.map_or(now, |r| now.max(r.saturating_add(1)));
        tx.execute(
            "INSERT INTO removed_agents (id, removed_at, removed_by) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET removed_at = ?2, removed_by = ?3",
            params![id, cutoff, by],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Records a renewed certificate of enrolled agent `id`, asked for over a certificate
    /// whose validity starts at `caller_not_before`; `issue` (given the previous serial and
    /// the id's last removal or re-enrolment, after which the new certificate must start)
    /// issues it and writes the audit record inside the transaction. Nothing is issued when
    /// `id` is not enrolled, or when the caller's certificate was superseded by a removal or
    /// a re-enrolment (the transaction's check: another replica's revocation set may not have
    /// it yet).
    pub fn renew_agent<T>(
        &self,
        id: &str,
        caller_not_before: i64,
        issue: impl FnOnce(&str, Option<i64>) -> anyhow::Result<(EnrolledCert, T)>,
    ) -> anyhow::Result<Renewal<T>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let previous: Option<String> = tx
            .query_row(
                "SELECT serial FROM enrolled_agents WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(previous) = previous else {
            return Ok(Renewal::NotEnrolled);
        };
        let removed_at: Option<i64> = tx
            .query_row(
                "SELECT removed_at FROM removed_agents WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        if removed_at.is_some_and(|cutoff| caller_not_before <= cutoff) {
            return Ok(Renewal::Superseded);
        }
        let (cert, value) = issue(&previous, removed_at)?;
        tx.execute(
            "UPDATE enrolled_agents SET serial = ?2, not_after = ?3 WHERE id = ?1",
            params![id, cert.serial, cert.not_after],
        )?;
        tx.commit()?;
        Ok(Renewal::Renewed(value))
    }

    /// Every removed agent id and when it was removed: the controller's revocation set.
    pub fn removed_agents(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT id, removed_at FROM removed_agents")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The registry, by id, with the enrolment of each agent that enrolled.
    pub fn list_agents(&self) -> anyhow::Result<Vec<AgentListing>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT a.id, a.labels, a.addr, a.last_seen, e.not_after, e.serial, a.replica
             FROM agents a LEFT JOIN enrolled_agents e ON e.id = a.id ORDER BY a.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AgentListing {
                id: r.get(0)?,
                labels: from_json(r.get(1)?),
                addr: r.get(2)?,
                last_seen: r.get(3)?,
                cert_not_after: r.get(4)?,
                cert_serial: r.get(5)?,
                replica: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every agent's former labels ([`FORMER_LABELS_SCHEMA`]), for the streams still under one
    /// to be cut (`service::enrol::Relabelled`).
    pub fn former_labels_by_agent(
        &self,
    ) -> anyhow::Result<std::collections::HashMap<String, std::collections::HashSet<String>>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached("SELECT agent_id, label FROM agent_former_labels")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut by_agent = std::collections::HashMap::<_, std::collections::HashSet<_>>::new();
        for row in rows {
            let (agent, label) = row?;
            by_agent.entry(agent).or_default().insert(label);
        }
        Ok(by_agent)
    }

    /// Forgets every agent's former labels that can be of no use at `now` any more
    /// ([`FORMER_LABELS_SCHEMA`]: a removed agent's too); how many. Run by the replica that
    /// leads the singleton jobs; an agent's own are also forgotten at its next label change.
    pub fn forget_former_labels(&self, now: i64) -> anyhow::Result<usize> {
        let conn = self.conn()?;
        Ok(forget_former_labels(&conn, None, now)?)
    }

    /// What opening agent `agent_id`'s stream needs from the store, in one call and without a
    /// write: whether it was removed at or after `cert_not_before` (the start of the
    /// certificate it connects with), its enrolled labels, its registry labels and its former
    /// labels still of use at `now`. The registration itself is written later
    /// ([`Store::register_agents`]), or at once by [`super::Store::register_agent`] when the
    /// labels it will stream with differ from the registry's (a change to record first).
    pub fn stream_registration(
        &self,
        agent_id: &str,
        cert_not_before: i64,
        now: i64,
    ) -> anyhow::Result<StreamRegistration> {
        let conn = self.conn()?;
        type Read = (i64, Option<String>, Option<String>, Option<String>);
        let (removed, enrolled, registered, registered_addr): Read = conn.query_row_cached(
            "SELECT (SELECT COUNT(*) FROM removed_agents WHERE id = ?1 AND removed_at >= ?2),
             (SELECT labels FROM enrolled_agents WHERE id = ?1),
             (SELECT labels FROM agents WHERE id = ?1),
             (SELECT addr FROM agents WHERE id = ?1)",
            params![agent_id, cert_not_before],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let former = if removed > 0 {
            Vec::new()
        } else {
            former_labels(&conn, agent_id, now)?
        };
        Ok(StreamRegistration {
            removed: removed > 0,
            enrolled: enrolled.map(from_json),
            registered: registered.map(from_json),
            registered_addr,
            former,
        })
    }

    /// Writes the registrations of agents whose streams opened (address, last seen, replica;
    /// the labels only for an agent not registered yet: a change of labels is written when
    /// the stream opens, [`super::Store::register_agent`], and a queued registration must not
    /// put back labels a re-enrolment replaced meanwhile), committed without waiting for the
    /// disk as [`super::Store::upsert_agent`]. An agent removed at or after the start of the
    /// certificate it connected with is not written (security.md X2); its id is returned.
    ///
    /// At most [`REGISTRATIONS_PER_WRITE`] agents per transaction, each transaction two
    /// statements (the removed ones among them, then one multi-row upsert guarded by the same
    /// removal check): on PostgreSQL every transaction holds the cluster-wide `REVISIONS_LOCK`,
    /// so a failover's herd of 5,000 agents is written in short transactions between which
    /// the grants and revocations of every replica take their turn, rather than in one that
    /// held the lock for two round trips per agent. Stops at the first transaction that fails
    /// (those before it stay committed). The agents' ids are unique (the queue is by agent).
    pub fn register_agents(
        &self,
        agents: &[(super::AgentRow, i64)],
    ) -> anyhow::Result<Vec<String>> {
        let mut removed_ids = Vec::new();
        if agents.is_empty() {
            return Ok(removed_ids);
        }
        let mut conn = self.conn()?;
        let postgres = conn.is_postgres();
        if !postgres {
            conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        }
        let written = (|| -> anyhow::Result<()> {
            for chunk in agents.chunks(REGISTRATIONS_PER_WRITE) {
                let (removed_sql, register_sql) = registrations_sql(chunk.len());
                let values: Vec<Value> = chunk
                    .iter()
                    .flat_map(|(agent, cert_not_before)| {
                        [
                            Value::Text(agent.id.clone()),
                            Value::Text(to_json(&agent.labels)),
                            Value::Text(agent.addr.clone()),
                            Value::Int(agent.last_seen),
                            Value::Text(agent.replica.clone()),
                            Value::Int(*cert_not_before),
                        ]
                    })
                    .collect();
                let tx = conn.transaction()?;
                if postgres {
                    tx.execute_batch("SET LOCAL synchronous_commit = off")?;
                }
                {
                    let mut stmt = tx.prepare(&removed_sql)?;
                    let removed = stmt.query_map(params_from_iter(values.iter()), |r| r.get(0))?;
                    for id in removed {
                        removed_ids.push(id?);
                    }
                }
                tx.execute(&register_sql, params_from_iter(values.iter()))?;
                tx.commit()?;
            }
            Ok(())
        })();
        if !postgres {
            conn.execute_batch("PRAGMA synchronous = FULL")
                .map_err(anyhow::Error::from)
                .context("cannot restore synchronous = FULL after registering agents")?;
        }
        written?;
        Ok(removed_ids)
    }

    /// The labels an enrolled agent was given by its token; `None` for an agent that did not
    /// enrol (its certificate came from elsewhere: it keeps the labels it announces).
    #[cfg(test)]
    pub fn enrolled_labels(&self, agent_id: &str) -> anyhow::Result<Option<Vec<String>>> {
        Ok(self
            .conn()?
            .query_row_cached(
                "SELECT labels FROM enrolled_agents WHERE id = ?1",
                params![agent_id],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .map(from_json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(uses: u32, expires_at: i64, reenrol: bool) -> (String, String, JoinToken) {
        let (secret, digest, id) = new_join_token();
        let row = JoinToken {
            id,
            labels: vec!["env=prod".into()],
            uses_left: uses,
            expires_at,
            reenrol,
            created_by: "spiffe://loggate.local/user/admin".into(),
            created_at: 1,
            revoked_at: None,
        };
        (secret, digest, row)
    }

    fn cert() -> EnrolledCert {
        EnrolledCert {
            serial: "01".into(),
            not_after: 2000,
        }
    }

    #[test]
    fn a_token_enrols_as_often_as_it_allows_and_only_until_it_expires() {
        crate::store::testing::on_each_backend(|store, _dir| {
            let (secret, digest, row) = token(2, 100, false);
            assert!(secret.starts_with(TOKEN_PREFIX) && secret.len() == 68);
            assert_eq!(token_digest(&secret).0, digest);
            store.create_join_token(&digest, &row, || Ok(())).unwrap();
            let enrol = |id: &str, now: i64| {
                store
                    .enrol_agent(&digest, id, now, |c| Ok((cert(), c.token.labels.clone())))
                    .unwrap()
                    .map_err(|(r, _)| r)
            };
            assert_eq!(enrol("web-1", 10), Ok(vec!["env=prod".to_string()]));
            assert_eq!(enrol("web-1", 11), Err(EnrolRefusal::AlreadyEnrolled));
            assert_eq!(enrol("web-2", 100), Err(EnrolRefusal::TokenExpired));
            assert_eq!(enrol("web-2", 12), Ok(vec!["env=prod".to_string()]));
            assert_eq!(enrol("web-3", 13), Err(EnrolRefusal::TokenUsedUp));
            let unknown = store
                .enrol_agent(&token_digest("lgj_00").0, "web-4", 14, |_| Ok((cert(), ())))
                .unwrap();
            assert_eq!(
                unknown.map_err(|(r, t)| (r, t.is_none())),
                Err((EnrolRefusal::TokenUnknown, true))
            );
            assert_eq!(
                store.enrolled_labels("web-1").unwrap(),
                Some(vec!["env=prod".to_string()])
            );
            assert_eq!(
                store.agent("web-2").unwrap().map(|a| a.labels),
                Some(vec!["env=prod".to_string()])
            );
            assert_eq!(store.join_tokens().unwrap()[0].uses_left, 0);
        });
    }

    /// Second review of open5, finding 1: an agent removed and enrolled again under the same
    /// labels does not keep them as former labels, which would cut its every stream as stale.
    #[test]
    fn an_agent_removed_and_enrolled_again_holds_its_labels_not_as_former_ones() {
        crate::store::testing::on_each_backend(|store, _dir| {
            store
                .insert_grant(|revision| {
                    Ok(crate::store::testing::grant_row(
                        "g-1",
                        &[],
                        &["env=prod"],
                        1000,
                        revision,
                    ))
                })
                .unwrap();
            let (_, digest, row) = token(2, 100, false);
            store.create_join_token(&digest, &row, || Ok(())).unwrap();
            let enrol = |now: i64| {
                store
                    .enrol_agent(&digest, "web-1", now, |_| Ok((cert(), ())))
                    .unwrap()
                    .map_err(|(r, _)| r)
            };
            assert_eq!(enrol(10), Ok(()));
            assert!(store
                .remove_agent("web-1", 11, "spiffe://loggate.local/user/admin", || Ok(()))
                .unwrap());
            let former = store.former_labels_by_agent().unwrap();
            assert!(former["web-1"].contains("env=prod"), "{former:?}");
            assert_eq!(enrol(12), Ok(()));
            let former = store.former_labels_by_agent().unwrap();
            assert!(
                !former.get("web-1").is_some_and(|f| f.contains("env=prod")),
                "enrolled again under env=prod, still a former label: {former:?}"
            );
        });
    }

    /// Second review of open5, finding 2: an agent that announces its own labels cannot grow
    /// the former labels without bound by reconnecting under ever other labels; the change
    /// past the bound is refused and stores nothing, a change back to held labels still works.
    #[test]
    fn an_agent_keeps_at_most_max_former_labels_and_a_change_past_it_is_refused() {
        crate::store::testing::on_each_backend(|store, _dir| {
            let register = |label: String| {
                store.register_agent(
                    &crate::store::AgentRow {
                        id: "web-1".into(),
                        labels: vec![label],
                        addr: "web-1:7401".into(),
                        last_seen: 10,
                        replica: String::new(),
                    },
                    0,
                )
            };
            for i in 0..=MAX_FORMER_LABELS {
                assert!(register(format!("n={i}")).unwrap().is_some());
            }
            let held = store.former_labels_by_agent().unwrap()["web-1"].len();
            assert_eq!(held, MAX_FORMER_LABELS);
            let refused = register("n=past".into()).unwrap_err();
            assert!(
                matches!(
                    refused.downcast_ref::<crate::store::db::Error>(),
                    Some(crate::store::db::Error::TooManyFormerLabels(..))
                ),
                "{refused:#}"
            );
            assert_eq!(store.agent("web-1").unwrap().unwrap().labels, ["n=128"]);
            assert_eq!(
                store.former_labels_by_agent().unwrap()["web-1"].len(),
                MAX_FORMER_LABELS
            );
            // Back to a former label: it stops being former, the change is not refused.
            assert!(register("n=0".into()).unwrap().is_some());
            // An admin's change is never refused (second review of the bound, H1 and M3): an
            // enrolment under other labels, then the agent's removal.
            let (_, digest, row) = token(1, 100, true);
            store.create_join_token(&digest, &row, || Ok(())).unwrap();
            assert_eq!(
                store
                    .enrol_agent(&digest, "web-1", 11, |_| Ok((cert(), ())))
                    .unwrap()
                    .map_err(|(r, _)| r),
                Ok(())
            );
            assert_eq!(
                store.former_labels_by_agent().unwrap()["web-1"].len(),
                MAX_FORMER_LABELS + 1
            );
            assert!(store
                .remove_agent("web-1", 12, "spiffe://loggate.local/user/admin", || Ok(()))
                .unwrap());
            assert!(store.agent("web-1").unwrap().is_none());
            assert!(store.former_labels_by_agent().unwrap()["web-1"].contains("env=prod"));
        });
    }

    /// The second review of the bound, M2: an agent that announces its labels, removed and
    /// registered again (a later certificate) under the same labels, does not keep them as
    /// former labels (its every stream would be cut as stale at each reload).
    #[test]
    fn an_agent_removed_and_registered_again_holds_its_announced_labels_not_as_former_ones() {
        crate::store::testing::on_each_backend(|store, _dir| {
            store
                .insert_grant(|revision| {
                    Ok(crate::store::testing::grant_row(
                        "g-1",
                        &[],
                        &["env=prod"],
                        1000,
                        revision,
                    ))
                })
                .unwrap();
            let register = |now: i64| {
                store.register_agent(
                    &crate::store::AgentRow {
                        id: "web-1".into(),
                        labels: vec!["env=prod".into()],
                        addr: "web-1:7401".into(),
                        last_seen: now,
                        replica: String::new(),
                    },
                    now,
                )
            };
            assert!(register(10).unwrap().is_some());
            assert!(store
                .remove_agent("web-1", 11, "spiffe://loggate.local/user/admin", || Ok(()))
                .unwrap());
            assert!(store.former_labels_by_agent().unwrap()["web-1"].contains("env=prod"));
            assert!(register(12).unwrap().is_some());
            let former = store.former_labels_by_agent().unwrap();
            assert!(
                !former.get("web-1").is_some_and(|f| f.contains("env=prod")),
                "registered again under env=prod, still a former label: {former:?}"
            );
        });
    }

    /// Review of issue #12, H1: a re-enrolment (a rebuilt host, perhaps compromised) supersedes
    /// every certificate issued to the id before it, as a removal does: the old holder's are
    /// on the revocation list and are not renewed (before, they renewed for ever), and a
    /// renewal of the new one starts after the cut-off.
    #[test]
    fn a_re_enrolment_supersedes_the_earlier_certificates_and_they_are_not_renewed() {
        crate::store::testing::on_each_backend(|store, _dir| {
            let refused = |_: &str, _: Option<i64>| -> anyhow::Result<(EnrolledCert, ())> {
                anyhow::bail!("issued to a superseded certificate")
            };
            let (_, digest, row) = token(1, 100, false);
            store.create_join_token(&digest, &row, || Ok(())).unwrap();
            let enrolled = store.enrol_agent(&digest, "web-1", 10, |context| {
                assert_eq!(context.removed_at, None);
                Ok((cert(), ()))
            });
            assert_eq!(enrolled.unwrap().map_err(|(r, _)| r), Ok(()));
            let renewed = store.renew_agent("web-1", 9, |_, cutoff| {
                assert_eq!(cutoff, None);
                Ok((cert(), ()))
            });
            assert_eq!(renewed.unwrap(), Renewal::Renewed(()));
            let (_, digest, row) = token(1, 100, true);
            store.create_join_token(&digest, &row, || Ok(())).unwrap();
            let enrolled = store.enrol_agent(&digest, "web-1", 20, |context| {
                assert_eq!(
                    context.removed_at,
                    Some(20),
                    "the new certificate starts after it"
                );
                Ok((cert(), ()))
            });
            assert_eq!(enrolled.unwrap().map_err(|(r, _)| r), Ok(()));
            assert!(store
                .removed_agents()
                .unwrap()
                .contains(&("web-1".to_string(), 20)));
            for old in [9, 19, 20] {
                let renewed = store.renew_agent("web-1", old, refused);
                assert_eq!(renewed.unwrap(), Renewal::Superseded, "starting at {old}");
            }
            let renewed = store.renew_agent("web-1", 21, |_, cutoff| {
                assert_eq!(cutoff, Some(20), "the renewed certificate starts after it");
                Ok((cert(), ()))
            });
            assert_eq!(renewed.unwrap(), Renewal::Renewed(()));
            // Not enrolled here: nothing issued.
            let renewed = store.renew_agent("web-2", 21, refused);
            assert_eq!(renewed.unwrap(), Renewal::NotEnrolled);
            // Its new host connects (its address registered); a second re-enrolment in the
            // same second cuts past the first's certificate (which starts at 21) and forgets
            // the address the replaced host registered (the fix's review, M2 and M4).
            let row = crate::store::AgentRow {
                id: "web-1".into(),
                labels: vec!["env=prod".into()],
                addr: "web-1:7401".into(),
                last_seen: 20,
                replica: "replica-a".into(),
            };
            assert!(store.upsert_agent(&row, 21).unwrap());
            let (_, digest, row) = token(1, 100, true);
            store.create_join_token(&digest, &row, || Ok(())).unwrap();
            let enrolled = store.enrol_agent(&digest, "web-1", 20, |context| {
                assert_eq!(
                    context.removed_at,
                    Some(21),
                    "past the first re-enrolment's cut"
                );
                Ok((cert(), ()))
            });
            assert_eq!(enrolled.unwrap().map_err(|(r, _)| r), Ok(()));
            let registered = store.agent("web-1").unwrap().unwrap();
            assert_eq!(
                (registered.addr.as_str(), registered.replica.as_str()),
                ("", "")
            );
            // A removal in that same second cuts past the last re-enrolment's certificate
            // (starting at 22), never below an earlier cut (M1).
            assert!(store
                .remove_agent("web-1", 20, "spiffe://loggate.local/user/admin", || Ok(()))
                .unwrap());
            assert!(store
                .removed_agents()
                .unwrap()
                .contains(&("web-1".to_string(), 22)));
        });
    }

    #[test]
    fn a_failed_record_enrols_nothing_and_takes_no_use() {
        crate::store::testing::on_each_backend(|store, _dir| {
            let (_, digest, row) = token(1, 100, false);
            store.create_join_token(&digest, &row, || Ok(())).unwrap();
            let failed = store.enrol_agent(
                &digest,
                "web-1",
                10,
                |_| -> anyhow::Result<(EnrolledCert, ())> { anyhow::bail!("disk full") },
            );
            assert!(failed.is_err());
            assert_eq!(store.join_tokens().unwrap()[0].uses_left, 1);
            assert_eq!(store.enrolled_labels("web-1").unwrap(), None);
            // A re-enrolment token takes an enrolled id.
            let (_, digest, row) = token(2, 100, true);
            store.create_join_token(&digest, &row, || Ok(())).unwrap();
            for now in [11, 12] {
                let again = store
                    .enrol_agent(&digest, "web-1", now, |c| Ok((cert(), c.reenrol)))
                    .unwrap();
                assert_eq!(again.map_err(|(r, _)| r), Ok(now == 12));
            }
        });
    }
    /// A one-use join token presented to two controllers on one PostgreSQL database at the
    /// same moment (the first held inside its transaction while the second runs) enrols one
    /// host, never two.
    #[test]
    fn a_one_use_token_used_on_two_replicas_at_once_enrols_once() {
        use std::time::Duration;
        let t = crate::store::testing::TestStore::postgres();
        let other = Store::open_postgres(&t.server.as_ref().expect("a server").url())
            .expect("a second replica");
        for round in 0..3 {
            let (_, digest, row) = token(1, 100, false);
            t.store
                .create_join_token(&digest, &row, || Ok(()))
                .expect("a token");
            let (inside_tx, inside) = std::sync::mpsc::channel();
            let (other, digest) = (&other, digest.as_str());
            let (first, second) = std::thread::scope(|scope| {
                let first = scope.spawn(|| {
                    t.store
                        .enrol_agent(digest, &format!("web-{round}-a"), 10, |_| {
                            let _ = inside_tx.send(());
                            std::thread::sleep(Duration::from_millis(400));
                            Ok((cert(), ()))
                        })
                        .map(|r| r.map_err(|(refusal, _)| refusal))
                });
                let second = scope.spawn(move || {
                    let _ = inside.recv_timeout(Duration::from_secs(5));
                    other
                        .enrol_agent(digest, &format!("web-{round}-b"), 10, |_| Ok((cert(), ())))
                        .map(|r| r.map_err(|(refusal, _)| refusal))
                });
                (first.join().expect("first"), second.join().expect("second"))
            });
            let enrolled = [&first, &second]
                .iter()
                .filter(|r| matches!(r, Ok(Ok(()))))
                .count();
            assert_eq!(
                enrolled,
                1,
                "round {round}: {:?} / {:?}",
                first.map_err(|e| format!("{e:#}")),
                second.map_err(|e| format!("{e:#}"))
            );
        }
    }
}
