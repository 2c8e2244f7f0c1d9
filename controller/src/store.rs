//! The controller's state in SQLite: grants, their revocations, the revision log agents resume
//! from, the agent registry, the enrolled user keys, and the agents' audit checkpoints with the
//! keys they are signed by (append-only: triggers refuse every UPDATE and DELETE).
//!
//! Every grant and every revocation appends one row to `revisions`; its rowid is the revision
//! number pushed to agents, so an agent that reconnects asks for "everything after N". Revision
//! numbers only mean something within one **epoch** (`meta.epoch`, a random id replaced at every
//! controller start, see [`Store::new_epoch`]): a restored backup reuses numbers, and an agent
//! that resumed across it would skip the changes made since.
//!
//! The database holds every grant token, subject, path and reason and the enrolled key hashes:
//! its file is created 0600 (SQLite gives its `-wal`, `-shm` and `-journal` files the same mode)
//! and a start refuses one that others can read.

pub mod agents;
pub mod db;
pub mod migrations;
mod requests;
pub mod signins;

pub use requests::{
    ListScope, RequestRow, RequestRule, RequestState, ReviewGrantRow, ReviewRow, TooManyPending,
};

use anyhow::Context;
use db::{params, Connection, OptionalExtension};
use loggate_core::audit::Checkpoint;
use loggate_core::private_state;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The person is locked out (`loggate user lock`): no key is enrolled and no grant stored for
/// them until an unlock.
#[derive(Debug, thiserror::Error)]
#[error("{subject} is locked out (loggate user lock): nothing is enrolled or granted for them until they are unlocked")]
pub struct UserLocked {
    pub subject: String,
}

/// [`UserLocked`] when `subject` (a user's SPIFFE ID, `…/user/NAME`) is locked, read in `tx`.
/// Other identities (agents) are never locked.
fn refuse_if_locked(tx: &db::Transaction<'_>, subject: &str) -> anyhow::Result<()> {
    let Some((_, name)) = subject.rsplit_once("/user/") else {
        return Ok(());
    };
    let locked: Option<i64> = tx
        .query_row(
            "SELECT locked FROM user_locks WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()?;
    if locked.unwrap_or(0) != 0 {
        return Err(UserLocked {
            subject: subject.to_string(),
        }
        .into());
    }
    Ok(())
}

/// A grant as the controller records it.
#[derive(Debug, Clone)]
pub struct GrantRow {
    pub id: String,
    pub subject: String,
    pub hosts: Vec<String>,
    pub labels: Vec<String>,
    pub paths: Vec<String>,
    /// systemd journal units the grant covers (checked unit names; empty: none).
    pub units: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub reason: String,
    pub issuer: String,
    pub profile: String,
    pub key_sha256: String,
    pub token: String,
    pub revision: u64,
    pub revoked: Option<Revoked>,
}

#[derive(Debug, Clone)]
pub struct Revoked {
    pub at: i64,
    pub by: String,
    pub reason: String,
}

/// One entry of the revision log, as pushed to agents.
#[derive(Debug, Clone)]
pub enum Change {
    Granted(GrantRow),
    Revoked { grant: GrantRow, revoked: Revoked },
}

#[derive(Debug, Clone)]
pub struct AgentRow {
    pub id: String,
    pub labels: Vec<String>,
    pub addr: String,
    pub last_seen: i64,
    /// The controller replica the agent last connected to (`replica_name`; empty for an
    /// agent registered before schema version 3).
    pub replica: String,
}

pub struct Store {
    conn: Mutex<Connection>,
    /// PostgreSQL's URL (for the change feed's listening connection); `None` on SQLite.
    postgres_url: Option<String>,
    /// Reads of the revision log (`changes_after`) since the store was opened: the fan-out's
    /// contract is one read per change whatever the number of agents, and its tests count.
    change_reads: AtomicU64,
    /// Rows those reads handed over: what a catch-up costs, counted per store (the process's
    /// counter, `loggate_controller_revision_log_rows_total`, is shared by every store of a
    /// test binary).
    change_rows: AtomicU64,
    /// Whether this process runs the cluster's singleton jobs (the request expiry sweep):
    /// always on SQLite (one controller); on PostgreSQL while it holds the jobs' advisory lock
    /// ([`Store::compete_for_singleton_jobs`]).
    jobs_leader: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Callers waiting for `conn` on PostgreSQL now (each pins a thread of tokio's blocking
    /// pool while it waits), and how many may ([`db::MAX_STORE_WAITERS`]): above it a call
    /// fails at once with [`db::Error::Busy`].
    waiters: std::sync::atomic::AtomicUsize,
    max_waiters: usize,
    /// The turns of the agents' streams at the store ([`Store::stream_turns`]).
    stream_turns: std::sync::Arc<tokio::sync::Semaphore>,
}

/// How many of the agents' stream calls (a stream's opening read, a catch-up read) run on the
/// store at once; the others wait for a turn without a thread ([`Store::stream_turns`]). Below
/// [`db::MAX_STORE_WAITERS`], so that a herd of agents never makes the store refuse a call
/// (`Busy`), theirs or an admin's, and bounds the blocking pool's threads they take on SQLite
/// too (where nothing else bounds them).
pub const STREAM_TURNS: usize = 32;

/// How a checkpoint reported by an agent relates to the ones already held for its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// The identical line is held already: nothing changes.
    Duplicate,
    /// Extends (or repeats the state of) what is held.
    New,
    /// Seals less than a checkpoint already held (e.g. the audit file was reset).
    SequenceWentBackwards { held_sealed_seq: u64 },
    /// Another head is held for the same `sealed_seq` (the file was rewritten).
    HeadChanged { held_head: String },
}

impl Arrival {
    /// The stored status: `ok`, or the conflict.
    pub fn status(&self) -> &'static str {
        match self {
            Arrival::Duplicate | Arrival::New => "ok",
            Arrival::SequenceWentBackwards { .. } => "sequence_went_backwards",
            Arrival::HeadChanged { .. } => "head_changed",
        }
    }
}

/// A checkpoint as the controller keeps it.
#[derive(Debug, Clone)]
pub struct CheckpointRow {
    pub id: u64,
    pub line: String,
    pub received_at: i64,
    pub status: String,
}

/// The agent's checkpoint key against the one enrolled for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// None was enrolled: this one is now (trust on first use).
    Enrolled,
    Matches,
    /// Another key is enrolled (returned); the offered one is not taken.
    Differs(String),
}

/// The statements SQLite's connection keeps prepared ([`Connection::prepare_cached`];
/// rusqlite's default is 16): the fixed texts every agent's connection runs (about a dozen),
/// and the revision log's addressed and live-grant reads, one text per number of targets (an
/// agent's host and up to 64 labels: 65 of each). A fleet whose agents hold different numbers
/// of labels keeps each text it uses prepared, not parsed again at every catch-up.
const SQLITE_STATEMENT_CACHE: usize = 192;

/// The settings of every SQLite connection (not stored in the file: set at every open).
const SQLITE_PRAGMAS: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
";

/// SQLite's schema (version 1 of [`migrations`], idempotent, run at every open).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    hosts TEXT NOT NULL,
    labels TEXT NOT NULL,
    paths TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    reason TEXT NOT NULL,
    issuer TEXT NOT NULL,
    profile TEXT NOT NULL,
    key_sha256 TEXT NOT NULL,
    token TEXT NOT NULL,
    revision INTEGER NOT NULL,
    revoked_at INTEGER,
    revoked_by TEXT,
    revoke_reason TEXT,
    units TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS revisions (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('grant', 'revoke')),
    grant_id TEXT NOT NULL REFERENCES grants(id)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    addr TEXT NOT NULL,
    last_seen INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS user_keys (
    subject TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoint_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id TEXT NOT NULL,
    key TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL,
    how TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    origin TEXT NOT NULL,
    sealed_seq INTEGER NOT NULL,
    head TEXT NOT NULL,
    line TEXT NOT NULL,
    line_sha256 TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'sequence_went_backwards', 'head_changed')),
    UNIQUE (origin, line_sha256)
);
CREATE INDEX IF NOT EXISTS checkpoints_by_seq ON checkpoints (origin, sealed_seq);
CREATE TRIGGER IF NOT EXISTS checkpoints_append_only_update BEFORE UPDATE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_append_only_delete BEFORE DELETE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoint_keys_append_only_update BEFORE UPDATE ON checkpoint_keys
    BEGIN SELECT RAISE(ABORT, 'checkpoint keys are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoint_keys_append_only_delete BEFORE DELETE ON checkpoint_keys
    BEGIN SELECT RAISE(ABORT, 'checkpoint keys are append-only'); END;
";

pub(crate) fn to_json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn from_json(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}

pub(crate) const GRANT_COLUMNS: &str = "id, subject, hosts, labels, paths, not_before, not_after, reason, issuer, profile, key_sha256, token, revision, revoked_at, revoked_by, revoke_reason, units";

/// [`Store::upsert_agent`]'s statement (one text for both backends).
const UPSERT_AGENT_SQL: &str = "INSERT INTO agents (id, labels, addr, last_seen, replica) \
     VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT(id) DO UPDATE SET labels = ?2, addr = ?3, last_seen = ?4, replica = ?5";

/// [`Store::changes_after`]'s statement: [`GRANT_COLUMNS`] qualified by the grants table's
/// alias, built once (a fixed text, so the statement cache holds one entry for it).
static CHANGES_AFTER_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT r.revision, {} FROM revisions r JOIN grants g ON g.id = r.grant_id
         WHERE r.revision > ?1 ORDER BY r.revision LIMIT ?2",
        GRANT_COLUMNS
            .split(", ")
            .map(|c| format!("g.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
});

/// [`GRANT_COLUMNS`] qualified by the grants table's alias `g`.
fn grant_columns_of_g() -> String {
    GRANT_COLUMNS
        .split(", ")
        .map(|c| format!("g.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The numbers of targets whose read texts are built once, at the first read
/// ([`addressed_sql`], [`live_sql`]): 0 to an agent's host and 64 labels (`bounded_list`). An
/// agent whose former labels take it beyond (a label change of many labels) has its text built
/// at each read, as every read's was before.
const PREBUILT_TARGETS: usize = 65;

/// [`addressed_changes_sql`] of 0 to [`PREBUILT_TARGETS`] targets, by number.
static ADDRESSED_SQL: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| (0..=PREBUILT_TARGETS).map(addressed_changes_sql).collect());

/// [`live_grants_sql`] of 0 to [`PREBUILT_TARGETS`] targets, by number.
static LIVE_GRANTS_SQL: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| (0..=PREBUILT_TARGETS).map(live_grants_sql).collect());

/// The addressed read's text for `targets` targets: built once (a catch-up's read no longer
/// formats up to ~20 KiB of SQL before its statement is found in the cache).
fn addressed_sql(targets: usize) -> std::borrow::Cow<'static, str> {
    match ADDRESSED_SQL.get(targets) {
        Some(text) => std::borrow::Cow::Borrowed(text.as_str()),
        None => std::borrow::Cow::Owned(addressed_changes_sql(targets)),
    }
}

/// The live-grants read's text for `targets` targets ([`addressed_sql`]).
fn live_sql(targets: usize) -> std::borrow::Cow<'static, str> {
    match LIVE_GRANTS_SQL.get(targets) {
        Some(text) => std::borrow::Cow::Borrowed(text.as_str()),
        None => std::borrow::Cow::Owned(live_grants_sql(targets)),
    }
}

/// [`Store::visit_addressed_changes_after`]'s statement for `targets` targets (`?1` after,
/// `?2` limit, `?3` head, `?4`… the targets): per target, its first `limit` revisions after
/// `?1` up to `?3` (a range
/// of `revision_targets`' primary key), merged without duplicates (a revision addressed to
/// the agent's host and one of its labels is read once), the first `limit` of those, joined to
/// the log. One text per number of targets (an agent has at most 65), so the statement cache
/// holds a few.
fn addressed_changes_sql(targets: usize) -> String {
    let ranges = (0..targets)
        .map(|i| {
            format!(
                "SELECT revision FROM (SELECT revision FROM revision_targets \
                 WHERE target = ?{} AND revision > ?1 AND revision <= ?3 \
                 ORDER BY revision LIMIT ?2) AS t{i}",
                i + 4
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ");
    format!(
        "SELECT r.revision, {} FROM ({ranges} ORDER BY revision LIMIT ?2) AS m \
         JOIN revisions r ON r.revision = m.revision JOIN grants g ON g.id = r.grant_id \
         ORDER BY r.revision",
        grant_columns_of_g()
    )
}

/// [`Store::visit_live_grants`]' statement for `targets` targets (`?1`, `?2`: the (end,
/// revision) to read after; `?3` the head revision; `?4` limit; `?5`… the targets): per
/// target, its first `limit` grant revisions of (end, revision) after (`?1`, `?2`) (a range of
/// the `revision_targets_live` index: a revocation's row has no end and is not in it), merged
/// without duplicates, the first `limit` of those by (end, revision), joined to the grants.
fn live_grants_sql(targets: usize) -> String {
    let ranges = (0..targets)
        .map(|i| {
            format!(
                "SELECT grant_ends, revision FROM (SELECT grant_ends, revision \
                 FROM revision_targets WHERE target = ?{} AND (grant_ends, revision) > (?1, ?2) \
                 AND revision <= ?3 ORDER BY grant_ends, revision LIMIT ?4) AS t{i}",
                i + 5
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ");
    format!(
        "SELECT r.revision, {} FROM ({ranges} ORDER BY grant_ends, revision LIMIT ?4) AS m \
         JOIN revisions r ON r.revision = m.revision AND r.kind = 'grant' \
         JOIN grants g ON g.id = r.grant_id ORDER BY m.grant_ends, m.revision",
        grant_columns_of_g()
    )
}

pub(crate) fn grant_from_row(row: &db::Row<'_>) -> db::Result<GrantRow> {
    grant_at(row, 0)
}

/// Reads the `GRANT_COLUMNS` of a row, starting at column `base`.
fn grant_at(row: &db::Row<'_>, base: usize) -> db::Result<GrantRow> {
    let g = |i: usize| base + i;
    let revoked_at: Option<i64> = row.get(g(13))?;
    Ok(GrantRow {
        id: row.get(g(0))?,
        subject: row.get(g(1))?,
        hosts: from_json(row.get(g(2))?),
        labels: from_json(row.get(g(3))?),
        paths: from_json(row.get(g(4))?),
        units: from_json(row.get(g(16))?),
        not_before: row.get(g(5))?,
        not_after: row.get(g(6))?,
        reason: row.get(g(7))?,
        issuer: row.get(g(8))?,
        profile: row.get(g(9))?,
        key_sha256: row.get(g(10))?,
        token: row.get(g(11))?,
        revision: unsigned(row.get(g(12))?)?,
        revoked: match revoked_at {
            Some(at) => Some(Revoked {
                at,
                by: row.get::<_, Option<String>>(g(14))?.unwrap_or_default(),
                reason: row.get::<_, Option<String>>(g(15))?.unwrap_or_default(),
            }),
            None => None,
        },
    })
}

/// Writes agent `agent`'s registry row, after recording a change of the labels it announces
/// ([`agents::record_label_change`], held to the former labels' bound). Not registered (never,
/// or removed since): none held, but a label it holds again stops being former (second review
/// of open5, finding 1).
fn write_registration(conn: &db::Connection, agent: &AgentRow, now: i64) -> db::Result<()> {
    let old = agents::registered_labels(conn, &agent.id)?.unwrap_or_default();
    agents::record_label_change(
        conn,
        &agent.id,
        &old,
        &agent.labels,
        now,
        agents::FormerLabelsBound::Announced,
    )?;
    conn.execute_cached(
        UPSERT_AGENT_SQL,
        params![
            agent.id,
            to_json(&agent.labels),
            agent.addr,
            agent.last_seen,
            agent.replica
        ],
    )?;
    Ok(())
}

impl Store {
    /// Opens (creating it 0600, and its folder 0700, when missing) the database at `path`.
    /// Refuses a database, or one of its `-wal`, `-shm`, `-journal` files, that group or others
    /// can read (they hold every grant token), and an existing folder that others can write or
    /// own (they could replace the database); a symbolic link is refused as such.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if std::fs::symlink_metadata(dir).is_err() {
                private_state::create_private_dir(dir, "database folder")?;
            }
            private_state::refuse_if_others_can_write(dir, "database folder")?;
        }
        private_state::create_private_file(path, "controller database")?;
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            private_state::refuse_if_shared(Path::new(&side), "controller database file", "600")?;
        }
        let conn = rusqlite::Connection::open(path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        conn.set_prepared_statement_cache_capacity(SQLITE_STATEMENT_CACHE);
        let conn = Connection::Sqlite(conn);
        conn.execute_batch(SQLITE_PRAGMAS)
            .with_context(|| format!("cannot initialise database {}", path.display()))?;
        migrations::sqlite(&conn, |conn| {
            conn.execute_batch(SCHEMA)
                .with_context(|| format!("cannot initialise database {}", path.display()))?;
            conn.execute_batch(requests::REQUEST_SCHEMA)
                .with_context(|| format!("cannot initialise database {}", path.display()))?;
            conn.execute_batch(agents::AGENTS_SCHEMA)
                .with_context(|| format!("cannot initialise database {}", path.display()))?;
            conn.execute_batch(agents::REMOVED_AGENTS_SCHEMA)
                .with_context(|| format!("cannot initialise database {}", path.display()))?;
            conn.execute_batch(agents::FORMER_LABELS_SCHEMA)
                .with_context(|| format!("cannot initialise database {}", path.display()))?;
            agents::migrate_sqlite(conn)
                .with_context(|| format!("cannot update database {}", path.display()))?;
            requests::migrate(conn)
                .with_context(|| format!("cannot update database {}", path.display()))?;
            migrations::sqlite_journal_units(conn)
                .with_context(|| format!("cannot update database {}", path.display()))?;
            conn.execute_batch(signins::SIGNINS_SCHEMA)
                .with_context(|| format!("cannot initialise database {}", path.display()))?;
            Ok(())
        })
        .with_context(|| format!("database {}", path.display()))?;
        Ok(Self::with(conn))
    }

    /// Connects to PostgreSQL at `url` (several controller replicas share it) and brings its
    /// schema up to date; a schema newer than this binary is refused
    /// ([`migrations::SchemaTooNew`]). The URL's password is never printed.
    pub fn open_postgres(url: &str) -> anyhow::Result<Self> {
        let mut conn = Connection::Postgres(db::PgConnection::connect(url)?);
        migrations::postgres(&mut conn).context("cannot initialise the PostgreSQL database")?;
        let mut store = Self::with(conn);
        store.postgres_url = Some(url.to_owned());
        // Replicas share the database: none runs the singleton jobs until it holds their lock.
        store.jobs_leader.store(false, Ordering::SeqCst);
        Ok(store)
    }

    /// On PostgreSQL, wakes `wake` whenever any controller sharing the database commits a grant
    /// or a revocation ([`db::listen_for_changes`]), until `wake` is dropped: the change feed of
    /// every replica follows the one revision log. On SQLite (one controller) nothing: the
    /// service's own revision counter wakes the feed.
    pub fn wake_on_commits(
        &self,
        wake: std::sync::Weak<tokio::sync::Notify>,
    ) -> anyhow::Result<()> {
        match &self.postgres_url {
            Some(url) => db::listen_for_changes(url, wake),
            None => Ok(()),
        }
    }

    /// Whether this store is on PostgreSQL (shared by replicas whose commits this process only
    /// learns of by NOTIFY).
    pub fn is_postgres(&self) -> bool {
        self.postgres_url.is_some()
    }

    /// Opens the configured database: SQLite's file or PostgreSQL.
    pub fn open_database(database: &crate::config::Database) -> anyhow::Result<Self> {
        match database {
            crate::config::Database::Sqlite(path) => Self::open(path),
            crate::config::Database::Postgres(url) => Self::open_postgres(url.expose()),
        }
    }

    fn with(conn: Connection) -> Self {
        Self {
            conn: Mutex::new(conn),
            postgres_url: None,
            change_reads: AtomicU64::new(0),
            change_rows: AtomicU64::new(0),
            jobs_leader: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            waiters: std::sync::atomic::AtomicUsize::new(0),
            max_waiters: db::MAX_STORE_WAITERS,
            stream_turns: std::sync::Arc::new(tokio::sync::Semaphore::new(STREAM_TURNS)),
        }
    }

    /// Lets at most `n` callers wait for the PostgreSQL connection (tests).
    #[cfg(test)]
    pub(crate) fn set_max_waiters(&mut self, n: usize) {
        self.max_waiters = n;
    }

    /// The turns of the agents' stream calls ([`STREAM_TURNS`]): a stream's opening read and
    /// every catch-up read take one, waiting for it asynchronously (in a task of their own, so
    /// a stream that is not polled holds no turn up), then run off the runtime's threads. A
    /// herd of reconnecting agents (a restart, a replica's failover) so queues for the
    /// database instead of being refused with `Busy` (each refusal doubles an agent's back-off).
    pub fn stream_turns(&self) -> std::sync::Arc<tokio::sync::Semaphore> {
        self.stream_turns.clone()
    }

    /// Whether this process should run the cluster's singleton jobs now: on SQLite always; on
    /// PostgreSQL only while it holds the jobs' lock (one replica at a time), so false until
    /// [`Store::compete_for_singleton_jobs`] has won it.
    pub fn leads_singleton_jobs(&self) -> bool {
        self.jobs_leader.load(Ordering::SeqCst)
    }

    /// On PostgreSQL, starts competing with the other replicas for the singleton jobs
    /// ([`db::lead_singleton_jobs`]; `replica` names this one in the log); on SQLite nothing
    /// (this process leads). Called once, by the daemon.
    pub fn compete_for_singleton_jobs(&self, replica: &str) -> anyhow::Result<()> {
        match &self.postgres_url {
            Some(url) => db::lead_singleton_jobs(
                url,
                std::sync::Arc::downgrade(&self.jobs_leader),
                replica.to_owned(),
            ),
            None => Ok(()),
        }
    }

    /// The store's connection. Taken at once when free; on PostgreSQL a caller that must wait
    /// (the holder may be waiting on the network or on another replica's lock) waits off the
    /// tokio worker ([`db::off_the_worker`]), and only while fewer than `max_waiters` others
    /// wait: beyond that it fails at once with [`db::Error::Busy`] (retryable) rather than pin
    /// one more thread of tokio's blocking pool, whose exhaustion would stall the runtime.
    pub(crate) fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, db::Error> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is safe to reuse.
        match self.conn.try_lock() {
            Ok(guard) => return Ok(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
        let lock = || self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if self.postgres_url.is_none() {
            return Ok(lock());
        }
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let before = self.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiters);
        if before >= self.max_waiters {
            return Err(db::Error::Busy(before));
        }
        Ok(db::off_the_worker(lock))
    }

    /// Records a new grant built by `make` (which receives its revision) in one transaction:
    /// tests' direct way in (the RPCs go through the request and break-glass paths).
    #[cfg(test)]
    pub fn insert_grant(
        &self,
        make: impl FnOnce(u64) -> anyhow::Result<GrantRow>,
    ) -> anyhow::Result<GrantRow> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let next = next_revision(&tx)?;
        let grant = make(unsigned(next)?)?;
        // Checked here, in the grant's own transaction: a call that passed the service's
        // checks before a lock committed (on this replica or another) stores nothing.
        refuse_if_locked(&tx, &grant.subject)?;
        insert_grant_row(&tx, &grant, next)?;
        tx.commit()?;
        Ok(grant)
    }

    /// Revokes a grant; `Ok(None)` when no such grant exists. Revoking twice keeps the first.
    /// (The service always records its revocations: [`Self::revoke_recorded`].)
    #[cfg(test)]
    pub fn revoke(&self, id: &str, revoked: Revoked) -> anyhow::Result<Option<GrantRow>> {
        self.revoke_recorded(id, revoked, |_| Ok(()))
    }

    /// [`Self::revoke`], with `record` run inside the transaction when this call is the one
    /// that revokes the grant, given the revocation's revision: it writes the audit record.
    /// It runs last, after the revision lock is taken and every row is written, just before
    /// the commit: no revocation without its record, and no record of a revocation the store
    /// did not take (a lock timeout, a refused write, a lost connection before it); an error
    /// from `record` changes nothing. What remains is a failing commit after the record, the
    /// residue of every write audited in its transaction. A grant already revoked (by a
    /// concurrent call too) runs no `record`: one record per revocation.
    pub fn revoke_recorded(
        &self,
        id: &str,
        revoked: Revoked,
        record: impl FnOnce(u64) -> anyhow::Result<()>,
    ) -> anyhow::Result<Option<GrantRow>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE grants SET revoked_at = ?2, revoked_by = ?3, revoke_reason = ?4 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, revoked.at, revoked.by, revoked.reason],
        )?;
        let grant = tx
            .query_row(
                &format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1"),
                params![id],
                grant_from_row,
            )
            .optional()?;
        let revision = match (changed, &grant) {
            (1, Some(_)) => {
                // The revision as a grant's is taken (MAX + 1, under the revision lock), which
                // on SQLite is what AUTOINCREMENT gave: revisions are never deleted.
                let next = next_revision(&tx)?;
                tx.execute(
                    "INSERT INTO revisions (revision, kind, grant_id) VALUES (?1, 'revoke', ?2)",
                    params![next, id],
                )?;
                // Indexed by the database (`revision_targets`' trigger), addressed as its grant
                // is, with no end: a revocation is sent whatever the time.
                Some(unsigned(next)?)
            }
            _ => None,
        };
        if let Some(revision) = revision {
            record(revision)?;
        }
        tx.commit()?;
        Ok(grant)
    }

    pub fn grant(&self, id: &str) -> anyhow::Result<Option<GrantRow>> {
        Ok(self
            .conn()?
            .query_row(
                &format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1"),
                params![id],
                grant_from_row,
            )
            .optional()?)
    }

    /// Grants, newest first; only the active ones unless `include_inactive`.
    pub fn list_grants(
        &self,
        subject: Option<&str>,
        include_inactive: bool,
        now: i64,
    ) -> anyhow::Result<Vec<GrantRow>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants
             WHERE (CAST(?1 AS TEXT) IS NULL OR subject = ?1)
               AND (?2 OR (revoked_at IS NULL AND not_after > ?3))
             ORDER BY revision DESC LIMIT 1000"
        ))?;
        let rows = stmt
            .query_map(params![subject, include_inactive, now], grant_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The changes after `after`, oldest first, at most `limit`. Every agent's resync and
    /// every change fanned out reads through here, so its text is built once
    /// ([`CHANGES_AFTER_SQL`]) and its statement comes from the connection's cache.
    pub fn changes_after(&self, after: u64, limit: u32) -> anyhow::Result<Vec<(u64, Change)>> {
        let mut out: Vec<(u64, Change)> = Vec::new();
        self.visit_changes_after(after, limit, |revision, change| {
            out.push((revision, change));
            true
        })?;
        Ok(out)
    }

    /// [`Store::changes_after`] without keeping anything: each change is handed to `visit` in
    /// order, and `visit` keeps what it wants (a stream's catch-up keeps only the rows
    /// addressed to its agent, so a finished read holds those, not `limit` decoded grants).
    /// The page is decoded whole before `visit` sees its first row (`db::Statement::query_map`
    /// collects it): while the read runs it holds up to `limit` decoded rows, whatever `visit`
    /// keeps. `visit` returns `false` to stop: the rows after that one are not handed over (nor
    /// counted, nor noted as read). Returns the number of rows handed to `visit`.
    pub fn visit_changes_after(
        &self,
        after: u64,
        limit: u32,
        visit: impl FnMut(u64, Change) -> bool,
    ) -> anyhow::Result<usize> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        self.visit_log(&CHANGES_AFTER_SQL, params![after, limit], visit)
    }

    /// [`Store::visit_changes_after`] for one agent: only the revisions after `after` and up
    /// to `head` addressed to one of `targets` ([`agent_targets`]: the agent's host and each
    /// of its labels), grants and revocations alike, in order, at most `limit`. Read through
    /// `revision_targets`: one range of its primary key per target, each stopped at `limit`
    /// rows, merged; the log's rows addressed to others are never read. A catch-up from a position costs the agent's own
    /// rows, not the log's.
    pub fn visit_addressed_changes_after(
        &self,
        after: u64,
        head: u64,
        targets: &[String],
        limit: u32,
        visit: impl FnMut(u64, Change) -> bool,
    ) -> anyhow::Result<usize> {
        if targets.is_empty() {
            return Ok(0);
        }
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let head = i64::try_from(head).unwrap_or(i64::MAX);
        let mut values: Vec<db::Value> = vec![after.into(), i64::from(limit).into(), head.into()];
        values.extend(targets.iter().cloned().map(db::Value::from));
        self.visit_log(
            &addressed_sql(targets.len()),
            db::params_from_iter(values),
            visit,
        )
    }

    /// The live grants addressed to one of `targets` ([`agent_targets`]), as a resync sends
    /// them: every grant of revision at most `head` that has not ended at `now` (its end after
    /// `now`), a grant revoked since as its revocation ([`Change::Revoked`]: the agent keeps a
    /// revocation for good, where a grant a resync leaves out is only dropped). Ordered by
    /// (end, revision), not by revision, and read from `after` (the last (end, revision) of the
    /// previous page; `None` for the first), at most `limit`: the order of `revision_targets`'
    /// (target, grant_ends, revision) index, so the grants that have ended are never read, and
    /// a page reads `limit` rows per target at most. Returns the rows handed to `visit`; the
    /// (end, revision) of each row is its grant's (`not_after`, `revision`).
    pub fn visit_live_grants(
        &self,
        head: u64,
        now: i64,
        after: Option<(i64, u64)>,
        targets: &[String],
        limit: u32,
        visit: impl FnMut(u64, Change) -> bool,
    ) -> anyhow::Result<usize> {
        if targets.is_empty() {
            return Ok(0);
        }
        // From the later of the previous page's last row and `now`: a grant ended since the
        // previous page is not read.
        let (from_end, from_revision) = match after {
            Some((end, revision)) if end >= now => (end, i64::try_from(revision)?),
            _ => (now, i64::MAX),
        };
        let head = i64::try_from(head).unwrap_or(i64::MAX);
        let mut values: Vec<db::Value> = vec![
            from_end.into(),
            from_revision.into(),
            head.into(),
            i64::from(limit).into(),
        ];
        values.extend(targets.iter().cloned().map(db::Value::from));
        self.visit_log(
            &live_sql(targets.len()),
            db::params_from_iter(values),
            visit,
        )
    }

    /// Runs a read of the revision log (`sql`: a revision, then [`GRANT_COLUMNS`]) and hands
    /// each row to `visit` ([`Store::visit_changes_after`]), counted in the log's read and row
    /// counters.
    fn visit_log(
        &self,
        sql: &str,
        params: impl db::Params,
        mut visit: impl FnMut(u64, Change) -> bool,
    ) -> anyhow::Result<usize> {
        self.change_reads.fetch_add(1, Ordering::Relaxed);
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params, |row| {
            let revision = unsigned(row.get(0)?)?;
            let grant = grant_at(row, 1)?;
            Ok((revision, grant))
        })?;
        let mut decoded = 0usize;
        // The newest row handed over (its revision and grant), for the connection's record.
        let mut last: Option<(u64, String)> = None;
        for row in rows {
            let (revision, grant) = row?;
            decoded += 1;
            if last.as_ref().is_none_or(|(r, _)| *r < revision) {
                last = Some((revision, grant.id.clone()));
            }
            // A grant revoked since is sent as its revocation, even at the grant's own
            // revision: an agent resynchronising from zero must never install a token that is
            // revoked further down the log (a stream broken in between would leave it served).
            let change = match grant.revoked.clone() {
                Some(revoked) => Change::Revoked { grant, revoked },
                None => Change::Granted(grant),
            };
            if !visit(revision, change) {
                break;
            }
        }
        let metrics = loggate_core::metrics::controller();
        metrics.log_reads.inc();
        metrics.log_rows.inc_by(decoded as u64);
        self.change_rows.fetch_add(
            u64::try_from(decoded).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if let Some((revision, grant_id)) = last {
            conn.note_revision_read(i64::try_from(revision)?, &grant_id)?;
        }
        Ok(decoded)
    }

    /// The controller cluster's id: a random id made once, with the database (`meta.cluster_id`),
    /// and the same ever after, so every controller sharing this database presents the same one.
    /// Agents pin it and refuse an address that presents another (an independent controller
    /// that shares the CA and grant key). A copy of the database keeps it: a copy is the same
    /// cluster, so never copy a database to make a second, independent controller.
    pub fn cluster_id(&self) -> anyhow::Result<String> {
        let fresh = hex::encode(rand::random::<[u8; 16]>());
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('cluster_id', ?1) ON CONFLICT(key) DO NOTHING",
            params![fresh],
        )?;
        let id: String = conn.query_row(
            "SELECT value FROM meta WHERE key = 'cluster_id'",
            [],
            |row| row.get(0),
        )?;
        Ok(id)
    }

    /// Starts a new epoch of the revision log: a fresh random id, stored, returned. Called at
    /// every controller start. A restored backup cannot be told apart from the database it
    /// replaces by what it holds (a cold copy is exactly the database as it was), so every start
    /// is treated as a possible restore: agents whose epoch differs resynchronise from zero
    /// (docs/grants.md, "Epochs").
    pub fn new_epoch(&self) -> anyhow::Result<String> {
        let epoch = hex::encode(rand::random::<[u8; 16]>());
        self.conn()?.execute(
            "INSERT INTO meta (key, value) VALUES ('epoch', ?1)
             ON CONFLICT(key) DO UPDATE SET value = ?1",
            params![epoch],
        )?;
        Ok(epoch)
    }

    /// How many times the revision log was read ([`Store::changes_after`]) since `open`: the
    /// test hook of the fan-out (one read per change, whatever the number of agents).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn change_reads(&self) -> u64 {
        self.change_reads.load(Ordering::Relaxed)
    }

    /// The rows handed over by the reads of the revision log since `open`
    /// ([`Store::change_reads`]).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn change_rows(&self) -> u64 {
        self.change_rows.load(Ordering::Relaxed)
    }

    pub fn latest_revision(&self) -> anyhow::Result<u64> {
        let rev: i64 = self.conn()?.query_row_cached(
            "SELECT COALESCE(MAX(revision), 0) FROM revisions",
            [],
            |r| r.get(0),
        )?;
        Ok(unsigned(rev)?)
    }

    /// Records an agent's connection (its labels, address, the time). The registry is soft
    /// state, written again at every connection, so this one write is committed without
    /// waiting for the disk (`synchronous = NORMAL`; the next FULL commit — a grant, a
    /// revocation — makes it durable with it): a power loss may lose the latest `last_seen`
    /// times, never a grant. A fleet reconnecting after a restart then costs no fsync per
    /// agent (~7 ms each on this machine's disk: over a minute for 10,000 agents, serialised
    /// under the store's lock). Every other write stays FULL.
    ///
    /// On PostgreSQL the same: the upsert's transaction commits with `SET LOCAL
    /// synchronous_commit = off` (its WAL is written in order and flushed by the next durable
    /// commit, within `wal_writer_delay` otherwise; a crash loses at most the latest
    /// registrations, never a grant, and leaves nothing inconsistent). Measured with the fleet
    /// bench: a replica's agents moving to another one registered at ~120 a second, one fsync
    /// each (docs/performance.md).
    ///
    /// A removed agent (`agent remove`) is not registered again: when `cert_not_before` (the
    /// start of the certificate it connects with) is at or before its removal, nothing is
    /// written and the answer is false, the stream refused (its certificate is revoked; a
    /// re-enrolment's later certificate registers). On SQLite the check and the write hold
    /// the store's one connection, so a removal is wholly before or after them; on PostgreSQL
    /// the check follows the upsert in its transaction (which rolls back), so a removal that
    /// committed before the upsert, or waited for its row, is seen.
    #[cfg(test)]
    pub fn upsert_agent(&self, agent: &AgentRow, cert_not_before: i64) -> anyhow::Result<bool> {
        Ok(self.register_agent(agent, cert_not_before)?.is_some())
    }

    /// [`Store::upsert_agent`], which also records a change of the agent's labels (its labels
    /// in the registry differ from `agent.labels`: [`agents::FORMER_LABELS_SCHEMA`], at
    /// `agent.last_seen`) and answers the agent's former labels still of use then: a
    /// revocation of a grant addressed to one of them is still sent to it. `None` when the
    /// agent was removed (nothing written).
    pub fn register_agent(
        &self,
        agent: &AgentRow,
        cert_not_before: i64,
    ) -> anyhow::Result<Option<Vec<String>>> {
        const REMOVED_SQL: &str =
            "SELECT COUNT(*) FROM removed_agents WHERE id = ?1 AND removed_at >= ?2";
        let now = agent.last_seen;
        let mut conn = self.conn()?;
        if conn.is_postgres() {
            let tx = conn.transaction()?;
            tx.execute_batch("SET LOCAL synchronous_commit = off")?;
            write_registration(&tx, agent, now)?;
            let removed: i64 =
                tx.query_row_cached(REMOVED_SQL, params![agent.id, cert_not_before], |r| {
                    r.get(0)
                })?;
            if removed > 0 {
                // Dropped without a commit: rolled back.
                return Ok(None);
            }
            let former = agents::former_labels(&tx, &agent.id, now)?;
            tx.commit()?;
            return Ok(Some(former));
        }
        let removed: i64 =
            conn.query_row_cached(REMOVED_SQL, params![agent.id, cert_not_before], |r| {
                r.get(0)
            })?;
        if removed > 0 {
            return Ok(None);
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        // The former labels first, the registry's new labels after: a crash between them
        // leaves the old labels registered, and the change is found again at the next open.
        let written = (|| -> db::Result<Vec<String>> {
            write_registration(&conn, agent, now)?;
            agents::former_labels(&conn, &agent.id, now)
        })();
        conn.execute_batch("PRAGMA synchronous = FULL")
            .context("cannot restore synchronous = FULL after registering an agent")?;
        Ok(Some(written?))
    }

    pub fn agent(&self, id: &str) -> anyhow::Result<Option<AgentRow>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT id, labels, addr, last_seen, replica FROM agents WHERE id = ?1",
                params![id],
                |r| {
                    Ok(AgentRow {
                        id: r.get(0)?,
                        labels: from_json(r.get(1)?),
                        addr: r.get(2)?,
                        last_seen: r.get(3)?,
                        replica: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// Enrols `key_sha256` for `subject` unless a key is already enrolled; true if enrolled now.
    /// `record` (the audit event) runs inside the transaction, before the key is stored: no key
    /// is enrolled without its record.
    pub fn enrol_user_key_if_absent(
        &self,
        subject: &str,
        key_sha256: &str,
        now: i64,
        record: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let known: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM user_keys WHERE subject = ?1",
                params![subject],
                |r| r.get(0),
            )
            .optional()?;
        if known.is_some() {
            return Ok(false);
        }
        refuse_if_locked(&tx, subject)?;
        record()?;
        tx.execute(
            "INSERT INTO user_keys (subject, key_sha256, updated) VALUES (?1, ?2, ?3)",
            params![subject, key_sha256, now],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Enrols (or re-enrols) a key by an admin's configuration or a sign-in; refused with
    /// [`UserLocked`] while the person is locked out (checked in the same transaction, so a
    /// sign-in or a start racing a lock cannot bring the locked key back).
    pub fn set_user_key(&self, subject: &str, key_sha256: &str, now: i64) -> anyhow::Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        refuse_if_locked(&tx, subject)?;
        tx.execute(
            "INSERT INTO user_keys (subject, key_sha256, updated) VALUES (?1, ?2, ?3)
             ON CONFLICT(subject) DO UPDATE SET key_sha256 = ?2, updated = ?3",
            params![subject, key_sha256, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn user_key(&self, subject: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT key_sha256 FROM user_keys WHERE subject = ?1",
                params![subject],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Checks `key` against the checkpoint key enrolled for `agent_id`, enrolling it when there
    /// is none: `record` runs first (it writes the audit event) and an error from it enrols
    /// nothing. A key is never replaced here (see [`Store::enrol_checkpoint_key`]).
    pub fn check_checkpoint_key(
        &self,
        agent_id: &str,
        key: &str,
        now: i64,
        record: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<KeyCheck> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let check = match current_checkpoint_key(&tx, agent_id)? {
            Some(k) if k == key => KeyCheck::Matches,
            Some(k) => KeyCheck::Differs(k),
            None => {
                record()?;
                append_checkpoint_key(&tx, agent_id, key, now, "first_use")?;
                KeyCheck::Enrolled
            }
        };
        tx.commit()?;
        Ok(check)
    }

    /// Makes `key` the checkpoint key of `agent_id` by an admin's configuration, unless it is
    /// already: `record` runs first (the audit event). Earlier keys stay on record, and
    /// checkpoints they signed stay valid. True when the key was enrolled now.
    pub fn enrol_checkpoint_key(
        &self,
        agent_id: &str,
        key: &str,
        now: i64,
        record: impl FnOnce(Option<&str>) -> anyhow::Result<()>,
    ) -> anyhow::Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let current = current_checkpoint_key(&tx, agent_id)?;
        if current.as_deref() == Some(key) {
            return Ok(false);
        }
        record(current.as_deref())?;
        append_checkpoint_key(&tx, agent_id, key, now, "configured")?;
        tx.commit()?;
        Ok(true)
    }

    /// Every checkpoint key ever enrolled for `agent_id`, oldest first.
    pub fn checkpoint_keys(&self, agent_id: &str) -> anyhow::Result<Vec<String>> {
        let conn = self.conn()?;
        let mut stmt =
            conn.prepare("SELECT key FROM checkpoint_keys WHERE agent_id = ?1 ORDER BY id")?;
        let keys = stmt
            .query_map(params![agent_id], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(keys)
    }

    /// Appends a checkpoint (already verified) unless the identical line is held, and tells how
    /// it relates to those held for its origin. `record` runs before anything is stored (it
    /// writes the alert of a conflict); an error from it stores nothing.
    pub fn add_checkpoint(
        &self,
        checkpoint: &Checkpoint,
        line: &str,
        now: i64,
        record: impl FnOnce(&Arrival) -> anyhow::Result<()>,
    ) -> anyhow::Result<Arrival> {
        let line_sha256 = hex::encode(Sha256::digest(line.as_bytes()));
        let sealed = i64::try_from(checkpoint.sealed_seq).context("sealed_seq is too large")?;
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let origin = &checkpoint.origin;
        let head = &checkpoint.head;
        let exists = |sql: &str, p: &[&dyn db::ToSql]| -> db::Result<Option<String>> {
            tx.query_row(sql, p, |r| r.get(0)).optional()
        };
        let duplicate = exists(
            "SELECT head FROM checkpoints WHERE origin = ?1 AND line_sha256 = ?2",
            params![origin, line_sha256],
        )?;
        let other_head = exists(
            "SELECT head FROM checkpoints WHERE origin = ?1 AND sealed_seq = ?2 AND head != ?3 LIMIT 1",
            params![origin, sealed, head],
        )?;
        let same_state = exists(
            "SELECT head FROM checkpoints WHERE origin = ?1 AND sealed_seq = ?2 AND head = ?3 LIMIT 1",
            params![origin, sealed, head],
        )?;
        let highest: Option<i64> = tx.query_row(
            "SELECT MAX(sealed_seq) FROM checkpoints WHERE origin = ?1",
            params![origin],
            |r| r.get(0),
        )?;
        let arrival = match (duplicate, other_head, same_state, highest) {
            (Some(_), ..) => Arrival::Duplicate,
            (None, Some(held_head), ..) => Arrival::HeadChanged { held_head },
            // A second checkpoint of a state already held (same seq, same head) loses nothing.
            (None, None, None, Some(h)) if h > sealed => Arrival::SequenceWentBackwards {
                held_sealed_seq: unsigned(h)?,
            },
            _ => Arrival::New,
        };
        if arrival != Arrival::Duplicate {
            record(&arrival)?;
            tx.execute(
                "INSERT INTO checkpoints (origin, sealed_seq, head, line, line_sha256, received_at, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    checkpoint.origin,
                    sealed,
                    checkpoint.head,
                    line,
                    line_sha256,
                    now,
                    arrival.status()
                ],
            )?;
        }
        tx.commit()?;
        Ok(arrival)
    }

    /// The (sealed_seq, head) of the checkpoint received last for `origin`.
    pub fn last_checkpoint(&self, origin: &str) -> anyhow::Result<Option<(u64, String)>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT sealed_seq, head FROM checkpoints WHERE origin = ?1 ORDER BY id DESC LIMIT 1",
                params![origin],
                |r| Ok((unsigned(r.get(0)?)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The checkpoints held for `origin` stored after `after_id`, oldest first, at most `limit`.
    pub fn checkpoints(
        &self,
        origin: &str,
        after_id: u64,
        limit: u32,
    ) -> anyhow::Result<Vec<CheckpointRow>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT id, line, received_at, status FROM checkpoints
             WHERE origin = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(
                params![origin, i64::try_from(after_id).unwrap_or(i64::MAX), limit],
                |r| {
                    Ok(CheckpointRow {
                        id: unsigned(r.get(0)?)?,
                        line: r.get(1)?,
                        received_at: r.get(2)?,
                        status: r.get(3)?,
                    })
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

/// Inserts `grant` and its revision `revision` (the caller's transaction).
pub(crate) fn insert_grant_row(tx: &Connection, grant: &GrantRow, revision: i64) -> db::Result<()> {
    tx.execute(
        &format!("INSERT INTO grants ({GRANT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, NULL, NULL, NULL, ?14)"),
        params![
            grant.id,
            grant.subject,
            to_json(&grant.hosts),
            to_json(&grant.labels),
            to_json(&grant.paths),
            grant.not_before,
            grant.not_after,
            grant.reason,
            grant.issuer,
            grant.profile,
            grant.key_sha256,
            grant.token,
            revision,
            to_json(&grant.units)
        ],
    )?;
    tx.execute(
        "INSERT INTO revisions (revision, kind, grant_id) VALUES (?1, 'grant', ?2)",
        params![revision, grant.id],
    )?;
    // `revision_targets` is written by the database (its trigger, schema version 6), under
    // each of the grant's hosts and labels with its end.
    Ok(())
}

/// The target of a grant or revocation addressed to agent `agent_id` in `revision_targets`
/// (the trigger of `migrations::sqlite_revision_targets` and `postgres_v6.sql` writes the same
/// text).
pub fn host_target(agent_id: &str) -> String {
    format!("host:{agent_id}")
}

/// The target of a grant or revocation addressed to label `label` (`k=v`).
pub fn label_target(label: &str) -> String {
    format!("label:{label}")
}

/// The targets under which `revision_targets` holds what is addressed to agent `agent_id`
/// holding `labels`: its own, and one per label (the addressing rule, `fanout::covers`: a
/// host named, or any one label held, each an exact string).
pub fn agent_targets(agent_id: &str, labels: &[String]) -> Vec<String> {
    let mut targets = Vec::with_capacity(labels.len() + 1);
    targets.push(host_target(agent_id));
    for label in labels {
        let target = label_target(label);
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    targets
}

/// The revision the next change gets (the caller's transaction).
/// A stored revision, seq or row id, which is never negative: a negative one is a corrupt
/// store, an error rather than a number near `u64::MAX`.
pub(crate) fn unsigned(value: i64) -> db::Result<u64> {
    u64::try_from(value).map_err(|_| db::Error::OutOfRange(value))
}

pub(crate) fn next_revision(tx: &Connection) -> db::Result<i64> {
    tx.lock_revisions()?;
    tx.query_row(
        "SELECT COALESCE(MAX(revision), 0) + 1 FROM revisions",
        [],
        |r| r.get(0),
    )
}

fn current_checkpoint_key(conn: &Connection, agent_id: &str) -> db::Result<Option<String>> {
    conn.query_row(
        "SELECT key FROM checkpoint_keys WHERE agent_id = ?1 ORDER BY id DESC LIMIT 1",
        params![agent_id],
        |r| r.get(0),
    )
    .optional()
}

fn append_checkpoint_key(
    conn: &Connection,
    agent_id: &str,
    key: &str,
    now: i64,
    how: &str,
) -> db::Result<()> {
    conn.execute(
        "INSERT INTO checkpoint_keys (agent_id, key, enrolled_at, how) VALUES (?1, ?2, ?3, ?4)",
        params![agent_id, key, now, how],
    )?;
    Ok(())
}

#[cfg(test)]
mod checkpoint_tests {
    use super::*;
    use loggate_core::audit::{AuditLog, CheckpointKey, CheckpointPolicy};
    use std::time::Duration;

    /// The checkpoint lines of a fresh chain of `events` records by web-1, one checkpoint per
    /// `every` records.
    fn chain(dir: &Path, name: &str, every: u64, events: u64) -> Vec<(Checkpoint, String)> {
        let key = CheckpointKey::load_or_create(&dir.join(format!("{name}.key"))).unwrap();
        let path = dir.join(format!("{name}.jsonl"));
        let policy = CheckpointPolicy {
            every,
            interval: Duration::from_secs(3600),
        };
        let mut log = AuditLog::open(&path, "web-1")
            .unwrap()
            .with_checkpoints(key, policy);
        for i in 0..events {
            log.append(&loggate_core::audit::events::AuditTornTailDiscarded { bytes_discarded: i })
                .unwrap();
        }
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter_map(|l| Some((Checkpoint::parse_line(l).ok()?, l.to_string())))
            .collect()
    }

    fn add(store: &Store, (c, line): &(Checkpoint, String)) -> Arrival {
        store.add_checkpoint(c, line, 0, |_| Ok(())).unwrap()
    }

    #[test]
    fn checkpoints_are_classified_against_those_held() {
        testing::on_each_backend(|store, dir| {
            // Seals 3, 7, 11.
            let first = chain(dir, "first", 3, 9);
            assert_eq!(
                first.iter().map(|(c, _)| c.sealed_seq).collect::<Vec<_>>(),
                vec![3, 7, 11]
            );
            for c in &first {
                assert_eq!(add(store, c), Arrival::New);
            }
            assert_eq!(add(store, &first[1]), Arrival::Duplicate);
            // The file was reset: a new chain seals 2 (lower, never held) and 3 (held, other head).
            let reset = chain(dir, "reset", 2, 2);
            assert_eq!(reset[0].0.sealed_seq, 2);
            assert_eq!(
                add(store, &reset[0]),
                Arrival::SequenceWentBackwards {
                    held_sealed_seq: 11
                }
            );
            let rewrite = chain(dir, "rewrite", 3, 3);
            assert_eq!(
                add(store, &rewrite[0]),
                Arrival::HeadChanged {
                    held_head: first[0].0.head.clone()
                }
            );
            let rows = store.checkpoints("web-1", 0, 100).unwrap();
            let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
            assert_eq!(
                statuses,
                vec!["ok", "ok", "ok", "sequence_went_backwards", "head_changed"]
            );
            assert_eq!(
                store.last_checkpoint("web-1").unwrap(),
                Some((3, rewrite[0].0.head.clone()))
            );
        });
    }

    #[test]
    fn a_failed_alert_stores_nothing() {
        testing::on_each_backend(|store, dir| {
            let first = chain(dir, "first", 3, 6);
            add(store, &first[1]);
            let (c, line) = &first[0];
            let result = store.add_checkpoint(c, line, 0, |_| anyhow::bail!("audit disk full"));
            assert!(result.is_err());
            assert_eq!(store.checkpoints("web-1", 0, 100).unwrap().len(), 1);
        });
    }

    #[test]
    fn held_checkpoints_and_keys_cannot_be_changed_or_deleted() {
        testing::on_each_backend(|store, dir| {
            add(store, &chain(dir, "first", 3, 3)[0]);
            store
                .check_checkpoint_key("web-1", "ed25519:k1 00", 0, || Ok(()))
                .unwrap();
            let conn = store.conn().expect("the store's connection");
            for sql in [
                "UPDATE checkpoints SET head = 'x'",
                "DELETE FROM checkpoints",
                "UPDATE checkpoint_keys SET key = 'x'",
                "DELETE FROM checkpoint_keys",
            ] {
                let err = conn.execute(sql, []).unwrap_err();
                assert!(err.to_string().contains("append-only"), "{sql}: {err}");
            }
        });
    }

    #[test]
    fn checkpoint_key_is_enrolled_once_and_never_replaced() {
        testing::on_each_backend(|store, _dir| {
            let mut audited = 0;
            let check = |key: &str, audited: &mut i32| {
                store
                    .check_checkpoint_key("web-1", key, 0, || {
                        *audited += 1;
                        Ok(())
                    })
                    .unwrap()
            };
            assert_eq!(check("k1", &mut audited), KeyCheck::Enrolled);
            assert_eq!(check("k1", &mut audited), KeyCheck::Matches);
            assert_eq!(check("k2", &mut audited), KeyCheck::Differs("k1".into()));
            assert_eq!(check("k1", &mut audited), KeyCheck::Matches);
            assert_eq!(audited, 1, "only the enrolment is audited here");
            // An admin's configuration replaces it; the old key stays on record.
            let enrolled = store
                .enrol_checkpoint_key("web-1", "k2", 0, |old| {
                    assert_eq!(old, Some("k1"));
                    Ok(())
                })
                .unwrap();
            assert!(enrolled);
            assert!(!store
                .enrol_checkpoint_key("web-1", "k2", 0, |_| panic!("enrolled twice"))
                .unwrap());
            assert_eq!(check("k2", &mut audited), KeyCheck::Matches);
            assert_eq!(check("k1", &mut audited), KeyCheck::Differs("k2".into()));
            assert_eq!(store.checkpoint_keys("web-1").unwrap(), vec!["k1", "k2"]);
        });
    }
}

#[cfg(test)]
mod user_key_tests {
    use super::*;

    #[test]
    fn a_first_use_key_is_stored_only_with_its_record() {
        testing::on_each_backend(|store, _dir| {
            let alice = "spiffe://loggate.local/user/alice";
            // The audit record cannot be written: the key is not enrolled.
            let failed =
                store.enrol_user_key_if_absent(alice, "k1", 1, || anyhow::bail!("disk full"));
            assert!(failed.is_err());
            let mut recorded = 0;
            let enrolled = store
                .enrol_user_key_if_absent(alice, "k1", 2, || {
                    recorded += 1;
                    Ok(())
                })
                .unwrap();
            assert!(enrolled);
            // Known now: no second record, no change.
            let again = store
                .enrol_user_key_if_absent(alice, "k2", 3, || {
                    recorded += 1;
                    Ok(())
                })
                .unwrap();
            assert!(!again);
            assert_eq!(recorded, 1);
        });
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn database_and_its_wal_files_are_private_from_creation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller/state.db");
        let store = Store::open(&path).unwrap();
        store.new_epoch().unwrap();
        assert_eq!(mode(&dir.path().join("controller")), 0o700);
        assert_eq!(mode(&path), 0o600);
        for side in ["state.db-wal", "state.db-shm"] {
            assert_eq!(
                mode(&dir.path().join("controller").join(side)),
                0o600,
                "{side}"
            );
        }
    }

    #[test]
    fn a_database_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(Store::open(&path).unwrap());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", Store::open(&path).err().unwrap());
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let wal = dir.path().join("state.db-wal");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = format!("{:#}", Store::open(&path).err().unwrap());
        assert!(
            err.contains("state.db-wal") && err.contains("chmod 600"),
            "{err}"
        );
    }

    #[test]
    fn the_cluster_id_is_made_once_and_kept_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loggate.db");
        let first = Store::open(&path).unwrap().cluster_id().unwrap();
        assert_eq!(first.len(), 32, "{first}");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.cluster_id().unwrap(), first);
        store.new_epoch().unwrap();
        assert_eq!(
            store.cluster_id().unwrap(),
            first,
            "a new epoch keeps the cluster"
        );
        let other = tempfile::tempdir().unwrap();
        let elsewhere = Store::open(&other.path().join("loggate.db")).unwrap();
        assert_ne!(
            elsewhere.cluster_id().unwrap(),
            first,
            "another database, another cluster"
        );
    }

    #[test]
    fn every_start_begins_a_new_epoch() {
        testing::on_each_backend(|store, _dir| {
            let first = store.new_epoch().unwrap();
            let second = store.new_epoch().unwrap();
            assert_eq!(first.len(), 32);
            assert_ne!(first, second);
        });
    }

    #[test]
    fn registering_an_agent_leaves_every_other_write_synchronous() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let synchronous = |store: &Store| -> i64 {
            store
                .conn()
                .expect("the store's connection")
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(synchronous(&store), 2, "FULL");
        let agent = AgentRow {
            id: "web-1".into(),
            labels: vec!["env=prod".into()],
            addr: "127.0.0.1:7401".into(),
            last_seen: 1,
            replica: "controller-a".into(),
        };
        assert!(store.upsert_agent(&agent, i64::MAX).unwrap());
        store
            .upsert_agent(
                &AgentRow {
                    last_seen: 2,
                    ..agent
                },
                i64::MAX,
            )
            .unwrap();
        assert_eq!(
            synchronous(&store),
            2,
            "FULL again after the registry's write"
        );
        assert_eq!(store.agent("web-1").unwrap().unwrap().last_seen, 2);
    }

    /// The statements every agent's connection runs (the resync's `changes_after`,
    /// `latest_revision`, the enrolment check, the registration) are parsed once per
    /// connection, not per call: after 1,000 calls of each, the one cached statement of each
    /// text has run 1,000 times (a statement prepared per call would be a fresh one, run
    /// never), so the cache holds one entry per text whatever the number of calls.
    /// How many times the SQLite store's cached statement for `sql` has run (0 for a text not
    /// yet cached: preparing it here starts its count).
    fn cached_statement_runs(store: &Store, sql: &str) -> i32 {
        let conn = store.conn().unwrap();
        let Connection::Sqlite(sqlite) = &*conn else {
            panic!("a SQLite store");
        };
        let runs = sqlite
            .prepare_cached(sql)
            .unwrap()
            .get_status(rusqlite::StatementStatus::Run);
        runs
    }

    #[test]
    fn the_per_connection_statements_are_parsed_once_and_reused_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let revision = store
            .insert_grant(|revision| {
                Ok(GrantRow {
                    id: "g-1".into(),
                    subject: "spiffe://loggate.local/user/alice".into(),
                    hosts: vec!["web-1".into()],
                    labels: Vec::new(),
                    paths: vec!["/var/log/app/*.log".into()],
                    units: vec![],
                    not_before: 1,
                    not_after: 3600,
                    reason: "INC-42".into(),
                    issuer: "spiffe://loggate.local/user/admin".into(),
                    profile: "default".into(),
                    key_sha256: "0".repeat(64),
                    token: "token".into(),
                    revision,
                    revoked: None,
                })
            })
            .unwrap();
        const CALLS: i32 = 1_000;
        for i in 0..CALLS {
            assert_eq!(store.changes_after(0, 500).unwrap().len(), 1);
            assert_eq!(store.latest_revision().unwrap(), revision.revision);
            assert_eq!(store.enrolled_labels("web-1").unwrap(), None);
            store
                .upsert_agent(
                    &AgentRow {
                        id: "web-1".into(),
                        labels: vec!["env=prod".into()],
                        addr: "127.0.0.1:7401".into(),
                        last_seen: i64::from(i),
                        replica: "controller-a".into(),
                    },
                    i64::MAX,
                )
                .unwrap();
        }
        let runs = |sql: &str| cached_statement_runs(&store, sql);
        assert_eq!(runs(&CHANGES_AFTER_SQL), CALLS, "changes_after");
        assert_eq!(
            runs("SELECT COALESCE(MAX(revision), 0) FROM revisions"),
            CALLS,
            "latest_revision"
        );
        assert_eq!(
            runs("SELECT labels FROM enrolled_agents WHERE id = ?1"),
            CALLS,
            "enrolled_labels"
        );
        assert_eq!(runs(UPSERT_AGENT_SQL), CALLS, "upsert_agent");
    }

    /// The revision log's per-agent reads have one text per number of targets (the agent's
    /// host and each of its labels, up to 65): a fleet whose agents hold every number of
    /// labels from 0 to 64 reads each text from the cache the second time (each cached
    /// statement has run twice), none evicted by the others and parsed again.
    #[test]
    fn the_addressed_reads_of_every_label_count_stay_in_the_statement_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        for _ in 0..2 {
            for count in 0..=64 {
                let labels: Vec<String> = (0..count).map(|i| format!("k{i}=v")).collect();
                let targets = agent_targets("web-1", &labels);
                store
                    .visit_addressed_changes_after(0, 10, &targets, 64, |_, _| true)
                    .unwrap();
                store
                    .visit_live_grants(10, 0, None, &targets, 64, |_, _| true)
                    .unwrap();
            }
        }
        let runs = |sql: &str| cached_statement_runs(&store, sql);
        for targets in 1..=65 {
            assert_eq!(
                runs(&addressed_changes_sql(targets)),
                2,
                "{targets} targets"
            );
            assert_eq!(runs(&live_grants_sql(targets)), 2, "{targets} targets");
        }
    }

    /// The catch-up reads' texts are built once per number of targets up to an agent's host
    /// and 64 labels (the same text each time, not formatted again at every read), and still
    /// built, the same, beyond.
    #[test]
    fn the_addressed_reads_texts_are_built_once_per_number_of_targets() {
        for targets in 1..=PREBUILT_TARGETS {
            for (text, again, built) in [
                (
                    addressed_sql(targets),
                    addressed_sql(targets),
                    addressed_changes_sql(targets),
                ),
                (
                    live_sql(targets),
                    live_sql(targets),
                    live_grants_sql(targets),
                ),
            ] {
                assert!(
                    matches!(text, std::borrow::Cow::Borrowed(_)),
                    "{targets} targets: formatted at the read"
                );
                assert!(std::ptr::eq(text.as_ptr(), again.as_ptr()));
                assert_eq!(*text, built);
            }
        }
        let beyond = PREBUILT_TARGETS + 1;
        assert_eq!(*addressed_sql(beyond), addressed_changes_sql(beyond));
        assert_eq!(*live_sql(beyond), live_grants_sql(beyond));
    }

    /// PostgreSQL's registration commits with `SET LOCAL synchronous_commit = off`: the
    /// setting ends with its transaction, so the session's next commits (a grant, a
    /// revocation) still wait for the disk.
    #[test]
    fn registering_an_agent_on_postgres_leaves_later_commits_durable() {
        testing::on_each_backend(|store, _dir| {
            if !store.is_postgres() {
                return; // SQLite: registering_an_agent_leaves_every_other_write_synchronous
            }
            let setting = |store: &Store| -> String {
                store
                    .conn()
                    .expect("the store's connection")
                    .query_row("SELECT current_setting('synchronous_commit')", [], |r| {
                        r.get(0)
                    })
                    .unwrap()
            };
            // The tests' server runs without synchronous commits: the session asks for them,
            // as a production server's default.
            store
                .conn()
                .expect("the store's connection")
                .execute_batch("SET synchronous_commit = on")
                .unwrap();
            assert_eq!(setting(store), "on");
            let agent = AgentRow {
                id: "web-1".into(),
                labels: vec!["env=prod".into()],
                addr: "127.0.0.1:7401".into(),
                last_seen: 1,
                replica: "ctl-a".into(),
            };
            assert!(store.upsert_agent(&agent, i64::MAX).unwrap());
            store
                .upsert_agent(
                    &AgentRow {
                        last_seen: 2,
                        ..agent
                    },
                    i64::MAX,
                )
                .unwrap();
            assert_eq!(
                setting(store),
                "on",
                "durable again after the registry's write"
            );
            assert_eq!(store.agent("web-1").unwrap().unwrap().last_seen, 2);
        });
    }

    /// A removed agent whose stream was waiting to register when `agent remove` ran is not
    /// put back in the registry: its registration with the certificate of before the removal
    /// writes nothing and answers false; one with a later certificate (a re-enrolment)
    /// registers.
    #[test]
    fn a_removed_agent_is_not_registered_again_with_its_old_certificate() {
        testing::on_each_test_store(|t| {
            let store = &t.store;
            let agent = AgentRow {
                id: "web-1".into(),
                labels: vec!["env=prod".into()],
                addr: "127.0.0.1:7401".into(),
                last_seen: 1,
                replica: "controller-a".into(),
            };
            assert!(store.upsert_agent(&agent, 50).unwrap(), "{}", t.backend());
            assert!(store
                .remove_agent("web-1", 100, "spiffe://loggate.local/user/admin", || Ok(()))
                .unwrap());
            for not_before in [50, 100] {
                assert!(
                    !store.upsert_agent(&agent, not_before).unwrap(),
                    "{}: a certificate of {not_before}",
                    t.backend()
                );
                assert!(store.agent("web-1").unwrap().is_none(), "{}", t.backend());
            }
            assert!(store.upsert_agent(&agent, 101).unwrap(), "{}", t.backend());
            assert!(store.agent("web-1").unwrap().is_some(), "{}", t.backend());
        });
    }

    /// The registrations queued by streams' openings (`service::registrations`) are written
    /// in one call: new agents with their labels, known ones with their address, time and
    /// replica but not their labels (a re-enrolment may have replaced them since the stream
    /// read them), and an agent removed at or after its certificate's start not at all (X2),
    /// its id returned. On both backends.
    #[test]
    fn queued_registrations_are_written_together_and_a_removed_agent_is_not_registered_again() {
        testing::on_each_test_store(|t| {
            let store = &t.store;
            let row = |id: &str, labels: &[&str], last_seen: i64| AgentRow {
                id: id.into(),
                labels: labels.iter().map(|l| l.to_string()).collect(),
                addr: format!("{id}:7401"),
                last_seen,
                replica: "controller-b".into(),
            };
            assert!(store
                .upsert_agent(&row("web-1", &["env=new"], 1), 0)
                .unwrap());
            assert!(store
                .upsert_agent(&row("web-2", &["env=prod"], 1), 0)
                .unwrap());
            assert!(store
                .remove_agent("web-2", 100, "spiffe://loggate.local/user/admin", || Ok(()))
                .unwrap());
            let removed = store
                .register_agents(&[
                    (row("web-1", &["env=stale"], 5), 0),
                    (row("web-2", &["env=prod"], 5), 100),
                    (row("web-3", &["env=prod"], 5), 0),
                ])
                .unwrap();
            assert_eq!(removed, vec!["web-2".to_string()], "{}", t.backend());
            let web1 = store.agent("web-1").unwrap().expect("web-1");
            assert_eq!(
                (web1.labels, web1.last_seen, web1.replica.as_str()),
                (vec!["env=new".to_string()], 5, "controller-b"),
                "{}",
                t.backend()
            );
            assert!(store.agent("web-2").unwrap().is_none(), "{}", t.backend());
            assert_eq!(
                store.agent("web-3").unwrap().map(|a| a.labels),
                Some(vec!["env=prod".to_string()]),
                "{}",
                t.backend()
            );
            // Its later certificate registers.
            assert!(store
                .register_agents(&[(row("web-2", &["env=prod"], 6), 101)])
                .unwrap()
                .is_empty());
            assert!(store.agent("web-2").unwrap().is_some(), "{}", t.backend());
        });
    }

    /// A herd's registrations (here 1,100, a removed agent among them in the second
    /// transaction's share) are written in transactions of at most
    /// `REGISTRATIONS_PER_WRITE` agents, so the cluster-wide lock every PostgreSQL transaction
    /// takes is released between them for other writers: on PostgreSQL each row's `xmin` (the
    /// transaction that wrote it) shows 3 transactions of at most 512 rows. All but the
    /// removed one registered, on both backends. Written in one transaction, one `xmin`.
    #[test]
    fn a_herds_registrations_are_written_in_bounded_transactions() {
        use super::agents::REGISTRATIONS_PER_WRITE;
        testing::on_each_test_store(|t| {
            let store = &t.store;
            let row = |i: usize| AgentRow {
                id: format!("web-{i:04}"),
                labels: vec!["env=prod".into()],
                addr: format!("web-{i}:7401"),
                last_seen: 5,
                replica: "controller-b".into(),
            };
            assert!(store.upsert_agent(&row(700), 0).unwrap());
            assert!(store
                .remove_agent("web-0700", 100, "spiffe://loggate.local/user/admin", || Ok(
                    ()
                ))
                .unwrap());
            let herd: Vec<_> = (0..1100).map(|i| (row(i), 0)).collect();
            let removed = store.register_agents(&herd).unwrap();
            assert_eq!(removed, vec!["web-0700".to_string()], "{}", t.backend());
            let conn = store.conn().unwrap();
            let registered: i64 = conn
                .query_row("SELECT COUNT(*) FROM agents", [], |r| r.get(0))
                .unwrap();
            assert_eq!(registered, 1099, "{}", t.backend());
            if conn.is_postgres() {
                let mut stmt = conn
                    .prepare(
                        "SELECT COUNT(*) FROM agents GROUP BY xmin::text ORDER BY COUNT(*) DESC",
                    )
                    .unwrap();
                let per_transaction: Vec<i64> = stmt
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                assert_eq!(per_transaction.len(), 3, "{per_transaction:?}");
                assert!(per_transaction
                    .iter()
                    .all(|n| usize::try_from(*n).is_ok_and(|n| n <= REGISTRATIONS_PER_WRITE)));
            }
        });
    }

    /// A stream's opening reads in one call what it decides on: removal, enrolled and
    /// registry labels, the registry's address, former labels. On both backends.
    #[test]
    fn a_streams_opening_reads_removal_labels_and_former_labels_at_once() {
        use super::agents::StreamRegistration;
        testing::on_each_test_store(|t| {
            let store = &t.store;
            let agent = |labels: &[&str]| AgentRow {
                id: "web-1".into(),
                labels: labels.iter().map(|l| l.to_string()).collect(),
                addr: "web-1:7401".into(),
                last_seen: 10,
                replica: String::new(),
            };
            assert_eq!(
                store.stream_registration("web-1", 0, 10).unwrap(),
                StreamRegistration {
                    removed: false,
                    enrolled: None,
                    registered: None,
                    registered_addr: None,
                    former: vec![],
                }
            );
            store
                .insert_grant(|revision| {
                    Ok(testing::grant_row("g-1", &[], &["team=a"], 1000, revision))
                })
                .unwrap();
            store.register_agent(&agent(&["team=a"]), 0).unwrap();
            store.register_agent(&agent(&["team=b"]), 0).unwrap();
            assert_eq!(
                store.stream_registration("web-1", 0, 10).unwrap(),
                StreamRegistration {
                    removed: false,
                    enrolled: None,
                    registered: Some(vec!["team=b".into()]),
                    registered_addr: Some("web-1:7401".into()),
                    former: vec!["team=a".into()],
                },
                "{}",
                t.backend()
            );
            // The former label is kept until its last grant's end.
            assert!(store
                .stream_registration("web-1", 0, 1000)
                .unwrap()
                .former
                .is_empty());
            assert!(store
                .remove_agent("web-1", 100, "spiffe://loggate.local/user/admin", || Ok(()))
                .unwrap());
            assert!(store.stream_registration("web-1", 100, 10).unwrap().removed);
            assert!(!store.stream_registration("web-1", 101, 10).unwrap().removed);
        });
    }

    /// A former label is forgotten only once no grant of its label is live and no stream under
    /// the old labels can deliver one: the agent opened a stream more than the grace after the
    /// change, or it was removed after the change longer than the grace ago. Not while its
    /// grant is live, not before the agent reconnected. On both backends.
    #[test]
    fn former_labels_are_forgotten_once_of_no_use_and_a_removed_agents_too() {
        use super::agents::FORMER_LABELS_GRACE as GRACE;
        testing::on_each_test_store(|t| {
            let store = &t.store;
            let agent = |id: &str, labels: &[&str], last_seen: i64| AgentRow {
                id: id.into(),
                labels: labels.iter().map(|l| l.to_string()).collect(),
                addr: format!("{id}:7401"),
                last_seen,
                replica: String::new(),
            };
            let rows = |id: &str| -> i64 {
                store
                    .conn()
                    .unwrap()
                    .query_row(
                        "SELECT COUNT(*) FROM agent_former_labels WHERE agent_id = ?1",
                        params![id],
                        |r| r.get(0),
                    )
                    .unwrap()
            };
            store
                .insert_grant(|revision| {
                    Ok(testing::grant_row("g-1", &[], &["team=a"], 1000, revision))
                })
                .unwrap();
            for id in ["web-1", "web-2"] {
                store
                    .register_agent(&agent(id, &["team=a"], 10), 0)
                    .unwrap();
                store
                    .register_agent(&agent(id, &["team=b"], 10), 0)
                    .unwrap();
                assert_eq!(rows(id), 1, "{}", t.backend());
            }
            // A label without a live grant at the change is kept too: a stream still under it
            // may yet deliver a grant issued to it.
            store
                .register_agent(&agent("web-1", &["team=b", "team=c"], 10), 0)
                .unwrap();
            store
                .register_agent(&agent("web-1", &["team=b"], 10), 0)
                .unwrap();
            assert_eq!(rows("web-1"), 2, "{}", t.backend());
            // web-1 reconnects after the grace; web-2 is removed (its team=b becomes former).
            store
                .register_agents(&[(agent("web-1", &["team=b"], 10 + GRACE + 1), 0)])
                .unwrap();
            assert!(store
                .remove_agent("web-2", 900, "spiffe://loggate.local/user/admin", || Ok(()))
                .unwrap());
            assert_eq!(rows("web-2"), 2, "{}", t.backend());
            // g-1 is live: team=a is kept for both; team=c (no grant) is forgotten for web-1,
            // web-2's team=b (no grant) kept within the grace of its removal.
            assert_eq!(
                store.forget_former_labels(999).unwrap(),
                1,
                "{}",
                t.backend()
            );
            assert_eq!((rows("web-1"), rows("web-2")), (1, 2), "{}", t.backend());
            // g-1 has ended: web-1's team=a forgotten, web-2's kept until the grace is over.
            assert_eq!(store.forget_former_labels(900 + GRACE).unwrap(), 1);
            assert_eq!((rows("web-1"), rows("web-2")), (0, 2), "{}", t.backend());
            assert_eq!(store.forget_former_labels(901 + GRACE).unwrap(), 2);
            assert_eq!(rows("web-2"), 0, "{}", t.backend());
        });
    }
}

/// The test PostgreSQL server of the end-to-end tests, shared with the store's unit tests.
#[cfg(test)]
#[path = "../../tests/src/postgres.rs"]
#[allow(dead_code)] // The end-to-end tests use more of it than the unit tests.
pub(crate) mod postgres_server;

/// The store's tests run on both backends: [`testing::on_each_backend`] runs a test body on a
/// SQLite store in a scratch folder, then on a PostgreSQL store on a server of its own
/// (`tests/src/postgres.rs`, compiled in here), each torn down after.
#[cfg(test)]
pub(crate) mod testing {
    use super::Store;
    use std::path::Path;

    pub(crate) use super::postgres_server;

    /// A grant row for tests: alice's, to `hosts` and `labels`, one hour ending at `not_after`,
    /// its token a placeholder (`token-of-<id>`).
    pub(crate) fn grant_row(
        id: &str,
        hosts: &[&str],
        labels: &[&str],
        not_after: i64,
        revision: u64,
    ) -> super::GrantRow {
        super::GrantRow {
            id: id.into(),
            subject: "spiffe://loggate.local/user/alice".into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            paths: vec!["/var/log/*.log".into()],
            units: vec![],
            not_before: not_after - 3600,
            not_after,
            reason: "T-1".into(),
            issuer: "spiffe://loggate.local/user/admin".into(),
            profile: "default".into(),
            key_sha256: "00".repeat(32),
            token: format!("token-of-{id}"),
            revision,
            revoked: None,
        }
    }

    /// A store under test with what keeps it alive: its scratch folder, its server.
    pub(crate) struct TestStore {
        pub store: Store,
        pub dir: tempfile::TempDir,
        pub server: Option<postgres_server::TestPostgres>,
    }

    impl TestStore {
        pub fn sqlite() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(&dir.path().join("db.sqlite")).expect("open SQLite");
            Self {
                store,
                dir,
                server: None,
            }
        }

        pub fn postgres() -> Self {
            let server = postgres_server::TestPostgres::start().expect(
                "cannot start a test PostgreSQL (apt-get install postgresql; cargo xtask test does it)",
            );
            let store = Store::open_postgres(&server.url()).expect("open PostgreSQL");
            Self {
                store,
                dir: tempfile::tempdir().expect("tempdir"),
                server: Some(server),
            }
        }

        /// The same database opened anew (a controller restart).
        pub fn reopen(&mut self) {
            let store = match &self.server {
                Some(server) => Store::open_postgres(&server.url()).expect("reopen PostgreSQL"),
                None => Store::open(&self.dir.path().join("db.sqlite")).expect("reopen SQLite"),
            };
            self.store = store;
        }

        pub fn backend(&self) -> &'static str {
            if self.server.is_some() {
                "postgres"
            } else {
                "sqlite"
            }
        }
    }

    /// A store call waiting on PostgreSQL (here: another session holds the store's advisory
    /// lock for 1.5 s) does not stall the other tasks of the tokio worker it runs on: with a
    /// single worker thread, a ticker task keeps ticking while the call waits.
    #[test]
    fn a_store_call_waiting_on_postgres_leaves_the_other_tasks_of_its_worker_running() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::Arc;
        let t = TestStore::postgres();
        let server = t.server.as_ref().expect("a server");
        let mut holder =
            postgres::Client::connect(&server.url(), postgres::NoTls).expect("connect");
        holder
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({})",
                super::db::REVISIONS_LOCK
            ))
            .expect("lock taken");
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            holder.batch_execute("COMMIT").expect("lock released");
        });
        let store = Arc::new(t.store);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let ticks = Arc::new(AtomicU32::new(0));
        let during = runtime.block_on({
            let (store, ticks) = (store.clone(), ticks.clone());
            async move {
                let ticker = tokio::spawn({
                    let ticks = ticks.clone();
                    async move {
                        loop {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            ticks.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
                // Let the ticker start on the worker before the call takes it.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                let during = tokio::spawn(async move {
                    let before = ticks.load(Ordering::SeqCst);
                    let started = std::time::Instant::now();
                    // A store transaction takes the advisory lock first: it waits for it.
                    let mut conn = store.conn().expect("the store's connection");
                    let tx = conn.transaction().expect("transaction after the wait");
                    tx.commit().expect("commit");
                    drop(conn);
                    (ticks.load(Ordering::SeqCst) - before, started.elapsed())
                })
                .await
                .expect("the call's task");
                ticker.abort();
                during
            }
        });
        release.join().expect("holder");
        let (ticked, waited) = during;
        assert!(
            waited >= std::time::Duration::from_millis(1000),
            "the call did not wait for the lock ({waited:?})"
        );
        // 20 ms ticks over at least a second: tens of them unless the worker was stalled.
        assert!(
            ticked >= 10,
            "the worker's other task ticked {ticked} times while the store call waited {waited:?}"
        );
    }

    /// Callers that must wait for the store's PostgreSQL connection are capped: with tokio's
    /// blocking pool smaller than the callers (8 threads, 32 callers, the cap 4), the calls
    /// over the cap fail at once as busy, and the worker's other tasks keep running while the
    /// store waits on another session's lock (uncapped, the waiters take every blocking
    /// thread and the runtime stalls).
    #[test]
    fn callers_over_the_waiting_cap_fail_at_once_as_busy_and_the_runtime_keeps_running() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::Arc;
        let t = TestStore::postgres();
        let server = t.server.as_ref().expect("a server");
        let mut holder =
            postgres::Client::connect(&server.url(), postgres::NoTls).expect("connect");
        holder
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({})",
                super::db::REVISIONS_LOCK
            ))
            .expect("lock taken");
        let hold = std::time::Duration::from_millis(2000);
        let release = std::thread::spawn(move || {
            std::thread::sleep(hold);
            holder.batch_execute("COMMIT").expect("lock released");
        });
        let mut store = t.store;
        store.max_waiters = 4;
        let store = Arc::new(store);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(8)
            .enable_all()
            .build()
            .expect("runtime");
        let ticks = Arc::new(AtomicU32::new(0));
        let (ticked, busy, fast) = runtime.block_on({
            let (store, ticks) = (store.clone(), ticks.clone());
            async move {
                let ticker = tokio::spawn({
                    let ticks = ticks.clone();
                    async move {
                        loop {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            ticks.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                let before = ticks.load(Ordering::SeqCst);
                let calls: Vec<_> =
                    (0..32)
                        .map(|_| {
                            let store = store.clone();
                            tokio::spawn(async move {
                                let started = std::time::Instant::now();
                                let result = store.conn().map_err(anyhow::Error::from).and_then(
                                    |mut conn| {
                                        let tx = conn.transaction()?;
                                        tx.commit()?;
                                        Ok(())
                                    },
                                );
                                (result, started.elapsed())
                            })
                        })
                        .collect();
                // Ticks while the store waits on the held lock.
                tokio::time::sleep(hold / 2).await;
                let ticked = ticks.load(Ordering::SeqCst) - before;
                let (mut busy, mut fast) = (0, 0);
                for call in calls {
                    let (result, took) = call.await.expect("call task");
                    if let Err(e) = result {
                        assert!(super::db::database_busy(&e), "{e:#}");
                        busy += 1;
                        if took < std::time::Duration::from_millis(200) {
                            fast += 1;
                        }
                    }
                }
                ticker.abort();
                (ticked, busy, fast)
            }
        });
        release.join().expect("holder");
        assert!(
            ticked >= 10,
            "the worker's other task ticked {ticked} times in {:?}",
            hold / 2
        );
        assert!(
            busy >= 32 - 1 - 4,
            "only {busy} calls over the cap failed as busy"
        );
        assert_eq!(fast, busy, "calls over the cap waited before failing");
    }

    /// A failure because PostgreSQL is down counts as the database being unavailable (the CLI
    /// is told so, to retry); an error of the statement itself does not.
    #[test]
    fn only_a_database_that_is_down_counts_as_unavailable() {
        let mut t = TestStore::postgres();
        let bad = t
            .store
            .conn()
            .expect("the store's connection")
            .execute("INSERT INTO no_such_table (a) VALUES (1)", [])
            .map_err(anyhow::Error::from)
            .expect_err("no such table");
        assert!(!super::db::database_unavailable(&bad), "{bad:#}");
        t.server.as_mut().expect("a server").stop();
        let down = t
            .store
            .latest_revision()
            .expect_err("a stopped server answered");
        assert!(super::db::database_unavailable(&down), "{down:#}");
    }

    /// Of two replicas on one database exactly one leads the singleton jobs; when its session
    /// ends (here: the replica stops, closing it), the other takes the lead within a bounded
    /// time. SQLite's one controller always leads.
    #[test]
    fn one_replica_leads_the_singleton_jobs_and_another_takes_over_when_it_goes() {
        let sqlite = TestStore::sqlite();
        assert!(sqlite.store.leads_singleton_jobs());
        sqlite
            .store
            .compete_for_singleton_jobs("solo")
            .expect("nothing to compete for");
        assert!(sqlite.store.leads_singleton_jobs());

        let t = TestStore::postgres();
        let url = t.server.as_ref().expect("a server").url();
        let a = t.store;
        let b = Store::open_postgres(&url).expect("second replica");
        assert!(!a.leads_singleton_jobs() && !b.leads_singleton_jobs());
        a.compete_for_singleton_jobs("replica-a")
            .expect("compete a");
        b.compete_for_singleton_jobs("replica-b")
            .expect("compete b");
        let bound = super::db::JOBS_LEASE_RETRY * 4;
        let wait_until = |what: &str, f: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + bound;
            while !f() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what} not within {bound:?}"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        };
        wait_until("a leader", &|| {
            a.leads_singleton_jobs() || b.leads_singleton_jobs()
        });
        // Several rounds of the lease: never both.
        for _ in 0..60 {
            assert!(!(a.leads_singleton_jobs() && b.leads_singleton_jobs()));
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let (leader, other) = if a.leads_singleton_jobs() {
            (a, b)
        } else {
            (b, a)
        };
        assert!(!other.leads_singleton_jobs());
        drop(leader);
        wait_until("the other replica leading", &|| {
            other.leads_singleton_jobs()
        });
    }

    /// A PostgreSQL restart (a failover, an upgrade) costs the calls made while it is down,
    /// not the controller: the next call connects anew, and nothing committed is lost.
    #[test]
    fn a_postgres_store_reconnects_after_the_database_restarts() {
        let mut t = TestStore::postgres();
        t.store.new_epoch().expect("epoch");
        let epoch_before: String = t
            .store
            .conn()
            .expect("the store's connection")
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })
            .expect("epoch stored");
        t.server
            .as_mut()
            .expect("a server")
            .restart()
            .expect("restart");
        let mut failures = Vec::new();
        let mut read = None;
        for _ in 0..3 {
            match t.store.conn().expect("the store's connection").query_row(
                "SELECT value FROM meta WHERE key = 'epoch'",
                [],
                |r| r.get::<_, String>(0),
            ) {
                Ok(v) => {
                    read = Some(v);
                    break;
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        assert_eq!(read.as_deref(), Some(epoch_before.as_str()), "{failures:?}");
        assert!(failures.len() <= 1, "{failures:?}");
        // Writes work again too.
        t.store.new_epoch().expect("a write after the restart");
    }

    /// The first call after a restart being a transaction (an agent's checkpoint, a revoke)
    /// costs that call at most: a `BEGIN` that meets the dead connection leaves no transaction
    /// behind, so the next call connects anew instead of failing until the controller restarts.
    #[test]
    fn a_transaction_as_the_first_call_after_a_database_restart_fails_at_most_once() {
        let mut t = TestStore::postgres();
        t.server
            .as_mut()
            .expect("a server")
            .restart()
            .expect("restart");
        let revoke = || {
            t.store.revoke(
                "g-none",
                super::Revoked {
                    at: 1,
                    by: "spiffe://loggate.local/user/admin".into(),
                    reason: "test".into(),
                },
            )
        };
        let mut failures = Vec::new();
        let mut done = false;
        for _ in 0..4 {
            match revoke() {
                Ok(_) => {
                    done = true;
                    break;
                }
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        assert!(
            done,
            "every transaction failed after the restart: {failures:?}"
        );
        assert!(failures.len() <= 1, "{failures:?}");
    }

    /// A replica stuck while holding the store's lock (here: another session holding it)
    /// fails the others' writes after `lock_timeout`, with PostgreSQL's lock-timeout error,
    /// instead of hanging them (and the store's mutex, and the tokio worker) for ever.
    #[test]
    fn a_write_waiting_on_a_held_store_lock_fails_within_the_lock_timeout() {
        let t = TestStore::postgres();
        let url = t.server.as_ref().expect("a server").url();
        let (held_tx, held) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let mut client =
                postgres::Client::connect(&url, postgres::NoTls).expect("a second session");
            let mut tx = client.transaction().expect("begin");
            tx.batch_execute(&format!(
                "SELECT pg_advisory_xact_lock({})",
                super::db::REVISIONS_LOCK
            ))
            .expect("lock");
            held_tx.send(()).expect("tell");
            let _ = released.recv_timeout(std::time::Duration::from_secs(60));
            drop(tx);
        });
        held.recv().expect("the lock is held");
        let start = std::time::Instant::now();
        let result = t.store.revoke(
            "g-none",
            super::Revoked {
                at: 1,
                by: "spiffe://loggate.local/user/admin".into(),
                reason: "test".into(),
            },
        );
        let waited = start.elapsed();
        let _ = release.send(());
        holder.join().expect("holder");
        let err = result.expect_err("a write cannot pass a held lock");
        let code = err
            .chain()
            .find_map(|c| match c.downcast_ref::<super::db::Error>() {
                Some(super::db::Error::Postgres(e)) => e.code().cloned(),
                _ => None,
            });
        assert_eq!(
            code,
            Some(postgres::error::SqlState::LOCK_NOT_AVAILABLE),
            "{err:#}"
        );
        assert!(
            waited >= std::time::Duration::from_secs(9)
                && waited < std::time::Duration::from_secs(14),
            "waited {waited:?} (lock_timeout {})",
            super::db::PG_LOCK_TIMEOUT
        );
        // The store works again once the lock is free.
        t.store.latest_revision().expect("a read after the timeout");
    }

    /// A database restored (or failed over to a lagging standby) under a running controller:
    /// the revision it last read is gone, and numbers would be handed out again under its
    /// epoch. After the reconnect every call fails with [`super::db::Error::DatabaseRestored`]
    /// (the change feed then ends the process, for a restart with a new epoch).
    #[test]
    fn a_database_that_lost_revisions_this_store_read_is_refused_after_reconnecting() {
        let mut t = TestStore::postgres();
        for i in 1..=3 {
            t.store
                .insert_grant(|revision| Ok(test_grant(&format!("g-{i}"), revision)))
                .expect("a grant");
        }
        assert_eq!(t.store.changes_after(0, 10).expect("read").len(), 3);
        let server = t.server.as_mut().expect("a server");
        // What a dump taken after revision 1 holds: the tail is gone.
        server
            .psql(
                "postgres",
                "DELETE FROM revisions WHERE revision > 1; DELETE FROM grants WHERE revision > 1",
            )
            .expect("lose the tail");
        server.restart().expect("restart");
        let restored = |e: &anyhow::Error| {
            e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<super::db::Error>(),
                    Some(super::db::Error::DatabaseRestored(3))
                )
            })
        };
        let mut errors = Vec::new();
        for _ in 0..3 {
            match t
                .store
                .insert_grant(|revision| Ok(test_grant("g-after", revision)))
            {
                Ok(g) => panic!("revision {} handed out again: {errors:?}", g.revision),
                Err(e) => errors.push(e),
            }
        }
        // The first may meet the dead connection; every one after is refused as restored.
        assert!(errors[1..].iter().all(restored), "{errors:?}");
        let err = t.store.latest_revision().expect_err("reads too");
        assert!(restored(&err), "{err:#}");
        assert!(
            format!("{err:#}").contains("restart the controller"),
            "{err:#}"
        );
    }

    /// Revisions in order across replicas: two stores on one database commit grants from four
    /// threads while a reader follows the log "after the last one seen"; it sees every
    /// revision, 1 to the last, none skipped (a revision committing after a higher one would
    /// be passed over).
    #[test]
    fn a_reader_following_two_replicas_writing_at_once_never_skips_a_revision() {
        let t = TestStore::postgres();
        let other = super::Store::open_postgres(&t.server.as_ref().expect("a server").url())
            .expect("a second replica");
        let reader = super::Store::open_postgres(&t.server.as_ref().expect("a server").url())
            .expect("a reader");
        const PER_THREAD: usize = 25;
        let writing = std::sync::atomic::AtomicUsize::new(4);
        let seen = std::thread::scope(|scope| {
            for w in 0..4 {
                let (store, writing) = (if w % 2 == 0 { &t.store } else { &other }, &writing);
                scope.spawn(move || {
                    for i in 0..PER_THREAD {
                        store
                            .insert_grant(|revision| {
                                Ok(test_grant(&format!("g-{w}-{i}"), revision))
                            })
                            .expect("a grant");
                    }
                    writing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
            let mut seen = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let done = writing.load(std::sync::atomic::Ordering::SeqCst) == 0;
                let after = seen.last().copied().unwrap_or(0);
                seen.extend(
                    reader
                        .changes_after(after, 1000)
                        .expect("read")
                        .into_iter()
                        .map(|(r, _)| r),
                );
                if done || std::time::Instant::now() > deadline {
                    break seen;
                }
            }
        });
        let expected: Vec<u64> = (1..=u64::try_from(4 * PER_THREAD).expect("small")).collect();
        assert_eq!(seen, expected);
    }

    fn test_grant(id: &str, revision: u64) -> super::GrantRow {
        super::GrantRow {
            id: id.to_string(),
            subject: "spiffe://loggate.local/user/alice".into(),
            hosts: vec!["web-1".into()],
            labels: Vec::new(),
            paths: vec!["/var/log/app/*.log".into()],
            units: vec![],
            not_before: 1,
            not_after: 3600,
            reason: "INC-42".into(),
            issuer: "spiffe://loggate.local/user/admin".into(),
            profile: "default".into(),
            key_sha256: "0".repeat(64),
            token: "token".into(),
            revision,
            revoked: None,
        }
    }

    /// The test server (which trusts its connections) is reachable only through the unix
    /// socket in its private folder: nothing listens on its port over TCP, so no other local
    /// user can connect as its superuser.
    #[test]
    fn the_test_postgres_server_takes_no_tcp_connection() {
        let t = TestStore::postgres();
        let server = t.server.as_ref().expect("a server");
        let tcp = std::net::TcpStream::connect(("127.0.0.1", server.port()));
        assert!(
            tcp.is_err(),
            "the test server accepts TCP on {}",
            server.port()
        );
        // Its own URL (the socket) works.
        t.store.latest_revision().expect("through the socket");
    }

    /// Runs `test` with a fresh store of each backend and a scratch folder.
    pub(crate) fn on_each_backend(mut test: impl FnMut(&Store, &Path)) {
        for make in [TestStore::sqlite, TestStore::postgres] {
            let t = make();
            test(&t.store, t.dir.path());
        }
    }

    /// As [`on_each_backend`], with the whole [`TestStore`] (to reopen it).
    pub(crate) fn on_each_test_store(mut test: impl FnMut(&mut TestStore)) {
        for make in [TestStore::sqlite, TestStore::postgres] {
            let mut t = make();
            test(&mut t);
        }
    }
}
