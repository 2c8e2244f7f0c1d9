//! Access requests and their reviews, and the break-glass grants awaiting review.
//!
//! A request is `pending` until enough distinct eligible approvers approve it (then `approved`,
//! with the grant issued in the same transaction), one of them denies it (`denied`: deny wins),
//! its requester cancels it (`cancelled`) or its time runs out (`expired`). Each change is made
//! in one transaction together with the caller's audit record (the `record`/`check` callbacks
//! run inside it): no change without its record, and a failed record changes nothing.

use super::{from_json, insert_grant_row, next_revision, to_json, unsigned, GrantRow, Store};
use rusqlite::{params, Connection, OptionalExtension};

pub(super) const REQUEST_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    hosts TEXT NOT NULL,
    paths TEXT NOT NULL,
    ttl_seconds INTEGER NOT NULL,
    profile TEXT NOT NULL,
    reason TEXT NOT NULL,
    role TEXT NOT NULL,
    approval TEXT NOT NULL,
    approvals_needed INTEGER NOT NULL,
    approver_groups TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'cancelled', 'expired')),
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    decided_at INTEGER,
    grant_id TEXT
);
CREATE INDEX IF NOT EXISTS requests_by_state ON requests (state, expires);
CREATE TABLE IF NOT EXISTS request_reviews (
    request_id TEXT NOT NULL REFERENCES requests(id),
    reviewer TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
    comment TEXT NOT NULL,
    at INTEGER NOT NULL,
    UNIQUE (request_id, reviewer)
);
CREATE TABLE IF NOT EXISTS break_glass (
    grant_id TEXT PRIMARY KEY REFERENCES grants(id),
    request_id TEXT,
    subject TEXT NOT NULL,
    issuer TEXT NOT NULL,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL,
    reviewed_by TEXT,
    reviewed_at INTEGER,
    review_comment TEXT
);
";

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Pending,
    Approved,
    Denied,
    Cancelled,
    Expired,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Cancelled => "cancelled",
            RequestState::Expired => "expired",
        }
    }

    fn parse(s: &str) -> RequestState {
        match s {
            "pending" => RequestState::Pending,
            "approved" => RequestState::Approved,
            "denied" => RequestState::Denied,
            "cancelled" => RequestState::Cancelled,
            // The CHECK constraint allows nothing else; an unknown value reads as the end state
            // that gives nothing.
            _ => RequestState::Expired,
        }
    }
}

/// One approval or denial.
#[derive(Debug, Clone)]
pub struct ReviewRow {
    /// The reviewer's SPIFFE id.
    pub reviewer: String,
    /// True for an approval, false for a denial.
    pub approve: bool,
    pub comment: String,
    pub at: i64,
}

/// A request as stored.
#[derive(Debug, Clone)]
pub struct RequestRow {
    pub id: String,
    /// The requester's SPIFFE id.
    pub requester: String,
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    /// The access granted on approval lasts this long from the approval.
    pub ttl_seconds: u64,
    pub profile: String,
    pub reason: String,
    pub role: String,
    /// `auto`, `approvers` or `break_glass`.
    pub approval: String,
    pub approvals_needed: u32,
    pub approver_groups: Vec<String>,
    pub state: RequestState,
    pub created: i64,
    pub expires: i64,
    pub decided_at: Option<i64>,
    pub grant_id: Option<String>,
    pub reviews: Vec<ReviewRow>,
}

impl RequestRow {
    /// Distinct approvals received.
    pub fn approvals(&self) -> u32 {
        u32::try_from(self.reviews.iter().filter(|r| r.approve).count()).unwrap_or(u32::MAX)
    }
}

/// A grant given without approval (break-glass), and its review afterwards.
#[derive(Debug, Clone)]
pub struct BreakGlassRow {
    pub grant_id: String,
    pub request_id: Option<String>,
    pub subject: String,
    pub issuer: String,
    pub reason: String,
    pub at: i64,
    /// Who reviewed it afterwards (`access ack`), when, and what they said.
    pub reviewed: Option<(String, i64, String)>,
}

const BREAK_GLASS_COLUMNS: &str =
    "grant_id, request_id, subject, issuer, reason, at, reviewed_by, reviewed_at, review_comment";

fn break_glass_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BreakGlassRow> {
    let reviewed_at: Option<i64> = r.get(7)?;
    Ok(BreakGlassRow {
        grant_id: r.get(0)?,
        request_id: r.get(1)?,
        subject: r.get(2)?,
        issuer: r.get(3)?,
        reason: r.get(4)?,
        at: r.get(5)?,
        reviewed: match reviewed_at {
            Some(at) => Some((
                r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                at,
                r.get::<_, Option<String>>(8)?.unwrap_or_default(),
            )),
            None => None,
        },
    })
}

const REQUEST_COLUMNS: &str = "id, requester, hosts, paths, ttl_seconds, profile, reason, role, approval, approvals_needed, approver_groups, state, created, expires, decided_at, grant_id";

fn request_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RequestRow> {
    Ok(RequestRow {
        id: row.get(0)?,
        requester: row.get(1)?,
        hosts: from_json(row.get(2)?),
        paths: from_json(row.get(3)?),
        ttl_seconds: row.get::<_, i64>(4)?.max(0).unsigned_abs(),
        profile: row.get(5)?,
        reason: row.get(6)?,
        role: row.get(7)?,
        approval: row.get(8)?,
        approvals_needed: u32::try_from(row.get::<_, i64>(9)?.max(0)).unwrap_or(u32::MAX),
        approver_groups: from_json(row.get(10)?),
        state: RequestState::parse(&row.get::<_, String>(11)?),
        created: row.get(12)?,
        expires: row.get(13)?,
        decided_at: row.get(14)?,
        grant_id: row.get(15)?,
        reviews: Vec::new(),
    })
}

fn load_request(conn: &Connection, id: &str) -> rusqlite::Result<Option<RequestRow>> {
    let Some(mut request) = conn
        .query_row(
            &format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1"),
            params![id],
            request_from_row,
        )
        .optional()?
    else {
        return Ok(None);
    };
    request.reviews = reviews(conn, id)?;
    Ok(Some(request))
}

fn reviews(conn: &Connection, id: &str) -> rusqlite::Result<Vec<ReviewRow>> {
    let mut stmt = conn.prepare(
        "SELECT reviewer, decision, comment, at FROM request_reviews WHERE request_id = ?1 ORDER BY rowid",
    )?;
    let rows = stmt
        .query_map(params![id], |r| {
            Ok(ReviewRow {
                reviewer: r.get(0)?,
                approve: r.get::<_, String>(1)? == "approve",
                comment: r.get(2)?,
                at: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn insert_request(conn: &Connection, r: &RequestRow) -> rusqlite::Result<()> {
    conn.execute(
        &format!("INSERT INTO requests ({REQUEST_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
        params![
            r.id,
            r.requester,
            to_json(&r.hosts),
            to_json(&r.paths),
            i64::try_from(r.ttl_seconds).unwrap_or(i64::MAX),
            r.profile,
            r.reason,
            r.role,
            r.approval,
            r.approvals_needed,
            to_json(&r.approver_groups),
            r.state.as_str(),
            r.created,
            r.expires,
            r.decided_at,
            r.grant_id,
        ],
    )?;
    Ok(())
}

fn set_state(
    conn: &Connection,
    id: &str,
    state: RequestState,
    now: i64,
    grant_id: Option<&str>,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE requests SET state = ?2, decided_at = ?3, grant_id = ?4 WHERE id = ?1 AND state = 'pending'",
        params![id, state.as_str(), now, grant_id],
    )?;
    Ok(())
}

fn insert_break_glass(conn: &Connection, b: &BreakGlassRow) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO break_glass (grant_id, request_id, subject, issuer, reason, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![b.grant_id, b.request_id, b.subject, b.issuer, b.reason, b.at],
    )?;
    Ok(())
}

impl Store {
    /// Records a pending request; `record` (its audit record) runs inside the transaction.
    pub fn insert_pending_request(
        &self,
        request: &RequestRow,
        record: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        insert_request(&tx, request)?;
        record()?;
        tx.commit()?;
        Ok(())
    }

    /// Records a request granted at once (`auto`, `break_glass`) with its grant, built by
    /// `make` from its revision, in one transaction; a break-glass grant is flagged for review.
    pub fn insert_granted_request(
        &self,
        request: &RequestRow,
        break_glass: bool,
        make: impl FnOnce(u64) -> anyhow::Result<GrantRow>,
    ) -> anyhow::Result<(RequestRow, GrantRow)> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let next = next_revision(&tx)?;
        let grant = make(unsigned(next)?)?;
        insert_grant_row(&tx, &grant, next)?;
        let mut request = request.clone();
        request.state = RequestState::Approved;
        request.decided_at = Some(grant.not_before);
        request.grant_id = Some(grant.id.clone());
        insert_request(&tx, &request)?;
        if break_glass {
            insert_break_glass(
                &tx,
                &BreakGlassRow {
                    grant_id: grant.id.clone(),
                    request_id: Some(request.id.clone()),
                    subject: grant.subject.clone(),
                    issuer: grant.issuer.clone(),
                    reason: grant.reason.clone(),
                    at: grant.not_before,
                    reviewed: None,
                },
            )?;
        }
        tx.commit()?;
        Ok((request, grant))
    }

    /// Flags a grant issued without approval (an admin's `grant issue`) for review.
    pub fn flag_break_glass(&self, row: &BreakGlassRow) -> anyhow::Result<()> {
        insert_break_glass(&self.conn(), row)?;
        Ok(())
    }

    /// Break-glass grants given since `since` and every one not reviewed yet, oldest first.
    pub fn break_glass_for_review(&self, since: i64) -> anyhow::Result<Vec<BreakGlassRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {BREAK_GLASS_COLUMNS} FROM break_glass
             WHERE at >= ?1 OR reviewed_at IS NULL ORDER BY at, rowid LIMIT 5000"
        ))?;
        let rows = stmt
            .query_map(params![since], break_glass_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Marks break-glass grant `grant_id` reviewed: `check` refuses what may not happen (an
    /// already reviewed grant, one's own), `record` audits. `Ok(None)`: no such break-glass grant.
    pub fn ack_break_glass(
        &self,
        grant_id: &str,
        by: &str,
        comment: &str,
        now: i64,
        check: impl FnOnce(&BreakGlassRow) -> anyhow::Result<()>,
        record: impl FnOnce(&BreakGlassRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<Option<BreakGlassRow>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(row) = tx
            .query_row(
                &format!("SELECT {BREAK_GLASS_COLUMNS} FROM break_glass WHERE grant_id = ?1"),
                params![grant_id],
                break_glass_from_row,
            )
            .optional()?
        else {
            return Ok(None);
        };
        check(&row)?;
        record(&row)?;
        tx.execute(
            "UPDATE break_glass SET reviewed_by = ?2, reviewed_at = ?3, review_comment = ?4
             WHERE grant_id = ?1 AND reviewed_at IS NULL",
            params![grant_id, by, now, comment],
        )?;
        tx.commit()?;
        let mut row = row;
        row.reviewed = Some((by.to_string(), now, comment.to_string()));
        Ok(Some(row))
    }

    /// Requests made since `since`, oldest first (at most 5000).
    pub fn requests_since(&self, since: i64) -> anyhow::Result<Vec<RequestRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE created >= ?1 ORDER BY created, rowid LIMIT 5000"
        ))?;
        let rows = stmt
            .query_map(params![since], request_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn request(&self, id: &str) -> anyhow::Result<Option<RequestRow>> {
        Ok(load_request(&self.conn(), id)?)
    }

    /// Requests, newest first (at most 500): the pending ones only when `pending_only`.
    pub fn list_requests(&self, pending_only: bool) -> anyhow::Result<Vec<RequestRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE (NOT ?1 OR state = 'pending')
             ORDER BY created DESC, rowid DESC LIMIT 500"
        ))?;
        let mut rows = stmt
            .query_map(params![pending_only], request_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        for r in &mut rows {
            r.reviews = reviews(&conn, &r.id)?;
        }
        Ok(rows)
    }

    /// Adds an approval to request `id`. `check` sees the request as stored (with its reviews)
    /// and refuses what may not happen (an ended request, self-approval, a second review by the
    /// same person, a non-approver); then the review is stored and `complete` runs with the
    /// number of approvals and, when they reach what the request needs, the revision its grant
    /// gets: it audits, and returns the grant to store (required then). Returns the request as
    /// it is afterwards.
    pub fn approve_request(
        &self,
        id: &str,
        review: &ReviewRow,
        check: impl FnOnce(&RequestRow) -> anyhow::Result<()>,
        complete: impl FnOnce(&RequestRow, u32, Option<u64>) -> anyhow::Result<Option<GrantRow>>,
    ) -> anyhow::Result<Option<RequestRow>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(request) = load_request(&tx, id)? else {
            return Ok(None);
        };
        check(&request)?;
        tx.execute(
            "INSERT INTO request_reviews (request_id, reviewer, decision, comment, at) VALUES (?1, ?2, 'approve', ?3, ?4)",
            params![id, review.reviewer, review.comment, review.at],
        )?;
        let approvals = request.approvals() + 1;
        let revision = if approvals >= request.approvals_needed {
            Some(next_revision(&tx)?)
        } else {
            None
        };
        let grant = complete(&request, approvals, revision.map(unsigned).transpose()?)?;
        if let Some(revision) = revision {
            let grant = grant.ok_or_else(|| anyhow::anyhow!("no grant was made"))?;
            insert_grant_row(&tx, &grant, revision)?;
            set_state(&tx, id, RequestState::Approved, review.at, Some(&grant.id))?;
        }
        let after = load_request(&tx, id)?;
        tx.commit()?;
        Ok(after)
    }

    /// Denies request `id` (deny wins over approvals): `check` refuses what may not happen,
    /// `record` audits.
    pub fn deny_request(
        &self,
        id: &str,
        review: &ReviewRow,
        check: impl FnOnce(&RequestRow) -> anyhow::Result<()>,
        record: impl FnOnce(&RequestRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<Option<RequestRow>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(request) = load_request(&tx, id)? else {
            return Ok(None);
        };
        check(&request)?;
        // A reviewer who approved earlier and now denies: the denial replaces the approval.
        tx.execute(
            "INSERT INTO request_reviews (request_id, reviewer, decision, comment, at) VALUES (?1, ?2, 'deny', ?3, ?4)
             ON CONFLICT(request_id, reviewer) DO UPDATE SET decision = 'deny', comment = ?3, at = ?4",
            params![id, review.reviewer, review.comment, review.at],
        )?;
        record(&request)?;
        set_state(&tx, id, RequestState::Denied, review.at, None)?;
        let after = load_request(&tx, id)?;
        tx.commit()?;
        Ok(after)
    }

    /// Cancels or expires request `id` (`state`), after `check` and `record`.
    pub fn end_request(
        &self,
        id: &str,
        state: RequestState,
        now: i64,
        check: impl FnOnce(&RequestRow) -> anyhow::Result<()>,
        record: impl FnOnce(&RequestRow) -> anyhow::Result<()>,
    ) -> anyhow::Result<Option<RequestRow>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(request) = load_request(&tx, id)? else {
            return Ok(None);
        };
        check(&request)?;
        record(&request)?;
        set_state(&tx, id, state, now, None)?;
        let after = load_request(&tx, id)?;
        tx.commit()?;
        Ok(after)
    }

    /// Ids of the pending requests whose time ran out by `now`.
    pub fn pending_due(&self, now: i64) -> anyhow::Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id FROM requests WHERE state = 'pending' AND expires <= ?1 ORDER BY expires LIMIT 1000",
        )?;
        let ids = stmt
            .query_map(params![now], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    /// When the next pending request expires.
    pub fn next_pending_expiry(&self) -> anyhow::Result<Option<i64>> {
        Ok(self.conn().query_row(
            "SELECT MIN(expires) FROM requests WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }
}
