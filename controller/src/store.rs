//! The controller's state in SQLite: grants, their revocations, the revision log agents resume
//! from, the agent registry and the enrolled user keys.
//!
//! Every grant and every revocation appends one row to `revisions`; its rowid is the revision
//! number pushed to agents, so an agent that reconnects asks for "everything after N".

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

/// A grant as the controller records it.
#[derive(Debug, Clone)]
pub struct GrantRow {
    pub id: String,
    pub subject: String,
    pub hosts: Vec<String>,
    pub labels: Vec<String>,
    pub paths: Vec<String>,
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
}

pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
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
    revoke_reason TEXT
);
CREATE TABLE IF NOT EXISTS revisions (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('grant', 'revoke')),
    grant_id TEXT NOT NULL REFERENCES grants(id)
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
";

fn to_json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

fn from_json(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}

const GRANT_COLUMNS: &str = "id, subject, hosts, labels, paths, not_before, not_after, reason, issuer, profile, key_sha256, token, revision, revoked_at, revoked_by, revoke_reason";

fn grant_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<GrantRow> {
    grant_at(row, 0)
}

/// Reads the `GRANT_COLUMNS` of a row, starting at column `base`.
fn grant_at(row: &rusqlite::Row<'_>, base: usize) -> rusqlite::Result<GrantRow> {
    let g = |i: usize| base + i;
    let revoked_at: Option<i64> = row.get(g(13))?;
    Ok(GrantRow {
        id: row.get(g(0))?,
        subject: row.get(g(1))?,
        hosts: from_json(row.get(g(2))?),
        labels: from_json(row.get(g(3))?),
        paths: from_json(row.get(g(4))?),
        not_before: row.get(g(5))?,
        not_after: row.get(g(6))?,
        reason: row.get(g(7))?,
        issuer: row.get(g(8))?,
        profile: row.get(g(9))?,
        key_sha256: row.get(g(10))?,
        token: row.get(g(11))?,
        revision: row.get::<_, i64>(g(12))? as u64,
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

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("cannot initialise database {}", path.display()))?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new grant built by `make` (which receives its revision) in one transaction.
    pub fn insert_grant(
        &self,
        make: impl FnOnce(u64) -> anyhow::Result<GrantRow>,
    ) -> anyhow::Result<GrantRow> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let next: i64 = tx.query_row(
            "SELECT COALESCE(MAX(revision), 0) + 1 FROM revisions",
            [],
            |r| r.get(0),
        )?;
        let grant = make(next as u64)?;
        tx.execute(
            &format!("INSERT INTO grants ({GRANT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, NULL, NULL, NULL)"),
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
                next
            ],
        )?;
        tx.execute(
            "INSERT INTO revisions (revision, kind, grant_id) VALUES (?1, 'grant', ?2)",
            params![next, grant.id],
        )?;
        tx.commit()?;
        Ok(grant)
    }

    /// Revokes a grant; `Ok(None)` when no such grant exists. Revoking twice keeps the first.
    pub fn revoke(&self, id: &str, revoked: Revoked) -> anyhow::Result<Option<GrantRow>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE grants SET revoked_at = ?2, revoked_by = ?3, revoke_reason = ?4 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, revoked.at, revoked.by, revoked.reason],
        )?;
        if changed == 1 {
            tx.execute(
                "INSERT INTO revisions (kind, grant_id) VALUES ('revoke', ?1)",
                params![id],
            )?;
        }
        let grant = tx
            .query_row(
                &format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1"),
                params![id],
                grant_from_row,
            )
            .optional()?;
        tx.commit()?;
        Ok(grant)
    }

    pub fn grant(&self, id: &str) -> anyhow::Result<Option<GrantRow>> {
        Ok(self
            .conn()
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
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants
             WHERE (?1 IS NULL OR subject = ?1)
               AND (?2 OR (revoked_at IS NULL AND not_after > ?3))
             ORDER BY revision DESC LIMIT 1000"
        ))?;
        let rows = stmt
            .query_map(params![subject, include_inactive, now], grant_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The changes after `after`, oldest first, at most `limit`.
    pub fn changes_after(&self, after: u64, limit: u32) -> anyhow::Result<Vec<(u64, Change)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT r.revision, r.kind, {} FROM revisions r JOIN grants g ON g.id = r.grant_id
             WHERE r.revision > ?1 ORDER BY r.revision LIMIT ?2",
            GRANT_COLUMNS
                .split(", ")
                .map(|c| format!("g.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))?;
        let rows = stmt.query_map(params![after as i64, limit], |row| {
            let revision = row.get::<_, i64>(0)? as u64;
            let kind: String = row.get(1)?;
            let grant = grant_at(row, 2)?;
            Ok((revision, kind, grant))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (revision, kind, grant) = row?;
            let change = match (kind.as_str(), grant.revoked.clone()) {
                ("revoke", Some(revoked)) => Change::Revoked { grant, revoked },
                _ => Change::Granted(grant),
            };
            out.push((revision, change));
        }
        Ok(out)
    }

    pub fn latest_revision(&self) -> anyhow::Result<u64> {
        let rev: i64 = self.conn().query_row(
            "SELECT COALESCE(MAX(revision), 0) FROM revisions",
            [],
            |r| r.get(0),
        )?;
        Ok(rev as u64)
    }

    pub fn upsert_agent(&self, agent: &AgentRow) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO agents (id, labels, addr, last_seen) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET labels = ?2, addr = ?3, last_seen = ?4",
            params![
                agent.id,
                to_json(&agent.labels),
                agent.addr,
                agent.last_seen
            ],
        )?;
        Ok(())
    }

    pub fn agent(&self, id: &str) -> anyhow::Result<Option<AgentRow>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, labels, addr, last_seen FROM agents WHERE id = ?1",
                params![id],
                |r| {
                    Ok(AgentRow {
                        id: r.get(0)?,
                        labels: from_json(r.get(1)?),
                        addr: r.get(2)?,
                        last_seen: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Enrols `key_sha256` for `subject` unless a key is already enrolled; true if enrolled now.
    pub fn enrol_user_key_if_absent(
        &self,
        subject: &str,
        key_sha256: &str,
        now: i64,
    ) -> anyhow::Result<bool> {
        let changed = self.conn().execute(
            "INSERT INTO user_keys (subject, key_sha256, updated) VALUES (?1, ?2, ?3)
             ON CONFLICT(subject) DO NOTHING",
            params![subject, key_sha256, now],
        )?;
        Ok(changed == 1)
    }

    /// Enrols (or re-enrols) a key by an admin's configuration.
    pub fn set_user_key(&self, subject: &str, key_sha256: &str, now: i64) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO user_keys (subject, key_sha256, updated) VALUES (?1, ?2, ?3)
             ON CONFLICT(subject) DO UPDATE SET key_sha256 = ?2, updated = ?3",
            params![subject, key_sha256, now],
        )?;
        Ok(())
    }

    pub fn user_key(&self, subject: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT key_sha256 FROM user_keys WHERE subject = ?1",
                params![subject],
                |r| r.get(0),
            )
            .optional()?)
    }
}
