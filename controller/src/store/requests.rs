//! Access requests and their reviews, and the break-glass grants awaiting review.
//!
//! A request is `pending` until enough distinct eligible approvers approve it (then `approved`,
//! with the grant issued in the same transaction), one of them denies it (`denied`: deny wins),
//! its requester cancels it (`cancelled`) or its time runs out (`expired`). Each change is made
//! in one transaction together with the caller's audit record (the `record`/`check` callbacks
//! run inside it): no change without its record, and a failed record changes nothing.

use super::db::{params, Connection, OptionalExtension};
use super::{
    from_json, grant_from_row, insert_grant_row, next_revision, to_json, unsigned, GrantRow, Store,
    GRANT_COLUMNS,
};

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
    grant_id TEXT,
    requester_groups TEXT NOT NULL DEFAULT '[]',
    units TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS requests_by_state ON requests (state, expires);
CREATE INDEX IF NOT EXISTS requests_by_requester ON requests (requester, state);
CREATE INDEX IF NOT EXISTS requests_by_grant ON requests (grant_id);
CREATE INDEX IF NOT EXISTS requests_by_state_created ON requests (state, created);
CREATE INDEX IF NOT EXISTS requests_by_requester_created ON requests (requester, created);
-- The approver groups of each pending request (and only while it is pending): an approver's
-- list of what they may review is a lookup here, never a scan of every request.
CREATE TABLE IF NOT EXISTS pending_request_groups (
    request_id TEXT NOT NULL REFERENCES requests(id),
    grp TEXT NOT NULL,
    PRIMARY KEY (grp, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS grants_by_start ON grants (not_before);
CREATE TABLE IF NOT EXISTS request_reviews (
    request_id TEXT NOT NULL REFERENCES requests(id),
    reviewer TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
    comment TEXT NOT NULL,
    at INTEGER NOT NULL,
    reviewer_groups TEXT NOT NULL DEFAULT '[]',
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
    /// The groups the reviewer's certificate named at the review: an approval counts only
    /// while its reviewer may still review under the policy in force, judged with them.
    pub reviewer_groups: Vec<String>,
}

/// The rule a request is decided under (its role, how it is approved, by how many of whom),
/// as the policy in force at the last approval has it.
#[derive(Debug, Clone)]
pub struct RequestRule {
    pub role: String,
    pub approval: String,
    pub approvals_needed: u32,
    pub approver_groups: Vec<String>,
}

/// A request as stored.
#[derive(Debug, Clone)]
pub struct RequestRow {
    pub id: String,
    /// The requester's SPIFFE id.
    pub requester: String,
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    /// systemd journal units asked for (checked unit names; empty: none).
    pub units: Vec<String>,
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
    /// The groups the requester's certificate named when they asked (see
    /// `Identity::groups`): the approval re-evaluates the request with them.
    pub requester_groups: Vec<String>,
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

/// About the most text one list of [`Store::review_grants`] holds (16 MiB): the answer stays
/// within what a client accepts.
pub const REVIEW_LIST_BYTES: usize = 16 << 20;

/// The text of a grant the review shows, roughly (its lists, reason and names).
fn shown_bytes(g: &GrantRow) -> usize {
    let lists: usize = g
        .hosts
        .iter()
        .chain(&g.labels)
        .chain(&g.paths)
        .map(|s| s.len() + 8)
        .sum();
    lists + g.reason.len() + g.subject.len() + g.issuer.len() + g.id.len() + 128
}

/// Who a list of requests is for: what [`Store::list_requests`] selects in SQL.
#[derive(Debug, Clone, Copy)]
pub enum ListScope<'a> {
    /// Every request (admins).
    All,
    /// The requests of `requester` (a SPIFFE id) and the pending requests whose approver
    /// groups include one of `groups` (those the caller is a member of now).
    Visible {
        requester: &'a str,
        groups: &'a [String],
    },
}

/// One answer of [`Store::list_requests`].
#[derive(Debug, Default)]
pub struct RequestList {
    /// Newest first, with their reviews.
    pub rows: Vec<RequestRow>,
    /// More rows matched than were returned.
    pub truncated: bool,
    /// SQLite virtual-machine steps the query took: what the list cost under the store's lock
    /// (proves in tests that one requester's many requests are not scanned for another's list).
    pub vm_steps: usize,
}

/// A requester already has as many pending requests as the policy allows
/// (`settings.max_pending_per_requester`).
#[derive(Debug, thiserror::Error)]
#[error("you already have {pending} pending requests (the policy allows {max}); cancel one (`loggate grant cancel ID`) or wait for a decision")]
pub struct TooManyPending {
    pub pending: u64,
    pub max: u32,
}

/// A grant as the access review shows it.
#[derive(Debug, Clone)]
pub struct ReviewGrantRow {
    pub grant: GrantRow,
    /// The role of the request it was issued for (None: an admin's `grant issue`).
    pub role: Option<String>,
    pub break_glass: bool,
    /// Who reviewed it, when it is a reviewed break-glass grant.
    pub reviewed_by: Option<String>,
}

/// The grants of an access review; see [`Store::review_grants`].
#[derive(Debug, Clone, Default)]
pub struct ReviewGrants {
    pub in_period: Vec<ReviewGrantRow>,
    pub unreviewed: Vec<ReviewGrantRow>,
    /// One sentence per list that was cut at its bound.
    pub truncated: Vec<String>,
}

const BREAK_GLASS_COLUMNS: &str =
    "grant_id, request_id, subject, issuer, reason, at, reviewed_by, reviewed_at, review_comment";

fn break_glass_from_row(r: &super::db::Row<'_>) -> super::db::Result<BreakGlassRow> {
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

const REQUEST_COLUMNS: &str = "id, requester, hosts, paths, ttl_seconds, profile, reason, role, approval, approvals_needed, approver_groups, state, created, expires, decided_at, grant_id, requester_groups, units";

/// Brings a database made before a column existed up to date (run at every open).
pub(super) fn migrate(conn: &Connection) -> super::db::Result<()> {
    let has_groups: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('requests') WHERE name = 'requester_groups'",
        [],
        |r| r.get(0),
    )?;
    if !has_groups {
        conn.execute_batch(
            "ALTER TABLE requests ADD COLUMN requester_groups TEXT NOT NULL DEFAULT '[]'",
        )?;
    }
    let has_reviewer_groups: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('request_reviews') WHERE name = 'reviewer_groups'",
        [],
        |r| r.get(0),
    )?;
    if !has_reviewer_groups {
        conn.execute_batch(
            "ALTER TABLE request_reviews ADD COLUMN reviewer_groups TEXT NOT NULL DEFAULT '[]'",
        )?;
    }
    // A database from before `pending_request_groups`: its pending requests' groups are
    // copied in once (a pending request always has approver groups, so an empty table next to
    // pending requests means it was just made).
    let (indexed, pending): (i64, i64) = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM pending_request_groups), (SELECT COUNT(*) FROM requests WHERE state = 'pending')",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if indexed == 0 && pending > 0 {
        let mut stmt =
            conn.prepare("SELECT id, approver_groups FROM requests WHERE state = 'pending'")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        for (id, groups) in rows {
            set_pending_groups(conn, &id, &from_json(groups))?;
        }
    }
    Ok(())
}

fn request_from_row(row: &super::db::Row<'_>) -> super::db::Result<RequestRow> {
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
        requester_groups: from_json(row.get(16)?),
        units: from_json(row.get(17)?),
        reviews: Vec::new(),
    })
}

fn load_request(conn: &Connection, id: &str) -> super::db::Result<Option<RequestRow>> {
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

fn reviews(conn: &Connection, id: &str) -> super::db::Result<Vec<ReviewRow>> {
    let mut stmt = conn.prepare(
        "SELECT reviewer, decision, comment, at, reviewer_groups FROM request_reviews WHERE request_id = ?1 ORDER BY rowid",
    )?;
    let rows = stmt
        .query_map(params![id], |r| {
            Ok(ReviewRow {
                reviewer: r.get(0)?,
                approve: r.get::<_, String>(1)? == "approve",
                comment: r.get(2)?,
                at: r.get(3)?,
                reviewer_groups: from_json(r.get(4)?),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn insert_request(conn: &Connection, r: &RequestRow) -> super::db::Result<()> {
    conn.execute(
        &format!("INSERT INTO requests ({REQUEST_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"),
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
            to_json(&r.requester_groups),
            to_json(&r.units),
        ],
    )?;
    if r.state == RequestState::Pending {
        set_pending_groups(conn, &r.id, &r.approver_groups)?;
    }
    Ok(())
}

/// Makes `groups` the approver groups of pending request `id` in `pending_request_groups`.
fn set_pending_groups(conn: &Connection, id: &str, groups: &[String]) -> super::db::Result<()> {
    conn.execute(
        "DELETE FROM pending_request_groups WHERE request_id = ?1",
        params![id],
    )?;
    for g in groups {
        conn.execute(
            "INSERT OR IGNORE INTO pending_request_groups (request_id, grp) VALUES (?1, ?2)",
            params![id, g],
        )?;
    }
    Ok(())
}

/// Moves pending request `id` to `state`; [`super::db::Error::Conflict`] when it is no longer
/// pending.
fn set_state(
    conn: &Connection,
    id: &str,
    state: RequestState,
    now: i64,
    grant_id: Option<&str>,
) -> super::db::Result<()> {
    // Exactly the one pending request, or the caller's transaction is rolled back: a request
    // decided meanwhile must not also be approved (and granted), denied or ended.
    let changed = conn.execute(
        "UPDATE requests SET state = ?2, decided_at = ?3, grant_id = ?4 WHERE id = ?1 AND state = 'pending'",
        params![id, state.as_str(), now, grant_id],
    )?;
    if changed != 1 {
        return Err(super::db::Error::Conflict("the request"));
    }
    if state != RequestState::Pending {
        conn.execute(
            "DELETE FROM pending_request_groups WHERE request_id = ?1",
            params![id],
        )?;
    }
    Ok(())
}

fn insert_break_glass(conn: &Connection, b: &BreakGlassRow) -> super::db::Result<()> {
    conn.execute(
        "INSERT INTO break_glass (grant_id, request_id, subject, issuer, reason, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![b.grant_id, b.request_id, b.subject, b.issuer, b.reason, b.at],
    )?;
    Ok(())
}

impl Store {
    /// Records a pending request; `record` (its audit record) runs inside the transaction.
    /// Refused with [`TooManyPending`] (nothing stored, `record` not run) when its requester
    /// already has `max_pending` pending requests not yet due to expire at its creation:
    /// counted in the same transaction, so concurrent requests cannot pass the cap together.
    pub fn insert_pending_request(
        &self,
        request: &RequestRow,
        max_pending: u32,
        record: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let pending: i64 = tx.query_row(
            // A pending request whose time ran out counts no more, even before the expiry
            // task has marked it.
            "SELECT COUNT(*) FROM requests WHERE requester = ?1 AND state = 'pending' AND expires > ?2",
            params![request.requester, request.created],
            |r| r.get(0),
        )?;
        if pending >= i64::from(max_pending) {
            return Err(TooManyPending {
                pending: pending.max(0).unsigned_abs(),
                max: max_pending,
            }
            .into());
        }
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
        let mut conn = self.conn()?;
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

    /// Records a grant issued without approval (an admin's `grant issue`, built by `make` from
    /// its revision) and flags it for review, in one transaction: it is stored flagged, or not
    /// at all.
    pub fn insert_break_glass_grant(
        &self,
        at: i64,
        make: impl FnOnce(u64) -> anyhow::Result<GrantRow>,
    ) -> anyhow::Result<GrantRow> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let next = next_revision(&tx)?;
        let grant = make(unsigned(next)?)?;
        insert_grant_row(&tx, &grant, next)?;
        insert_break_glass(
            &tx,
            &BreakGlassRow {
                grant_id: grant.id.clone(),
                request_id: None,
                subject: grant.subject.clone(),
                issuer: grant.issuer.clone(),
                reason: grant.reason.clone(),
                at,
                reviewed: None,
            },
        )?;
        tx.commit()?;
        Ok(grant)
    }

    /// What the access review shows of grants: those that started since `since` (oldest
    /// first) and every break-glass grant not reviewed yet, whenever it was given — a query of
    /// its own, never cut short by newer grants. Each list holds at most `bound` rows and about
    /// [`REVIEW_LIST_BYTES`] of text (tokens left out); a list cut short says so in
    /// `truncated`. Each query asks for at most `bound + 1` rows (`LIMIT`): PostgreSQL's client
    /// receives a result whole, so the limit, not the loop, bounds what is read into memory
    /// (SQLite reads the rows one at a time from a cursor either way).
    pub fn review_grants(&self, since: i64, bound: usize) -> anyhow::Result<ReviewGrants> {
        let conn = self.conn()?;
        // The review never shows a token: read an empty one in its place.
        let columns = GRANT_COLUMNS.replace(" token,", " '' AS token,");
        // One row beyond the bound tells that the list was cut.
        let limit = i64::try_from(bound.saturating_add(1)).unwrap_or(i64::MAX);
        let query = |filter: &str,
                     args: &[&dyn super::db::ToSql]|
         -> anyhow::Result<(Vec<ReviewGrantRow>, bool)> {
            let limit_mark = args.len() + 1;
            let mut args = args.to_vec();
            args.push(&limit);
            let mut stmt = conn.prepare(&format!(
                "SELECT {columns},
                    (SELECT r.role FROM requests r WHERE r.grant_id = grants.id LIMIT 1),
                    EXISTS (SELECT 1 FROM break_glass b WHERE b.grant_id = grants.id),
                    (SELECT b.reviewed_by FROM break_glass b WHERE b.grant_id = grants.id AND b.reviewed_at IS NOT NULL)
                 FROM grants WHERE {filter} ORDER BY not_before, revision LIMIT ?{limit_mark}"
            ))?;
            let n = GRANT_COLUMNS.split(',').count();
            let mut rows = stmt.query(args.as_slice())?;
            let (mut out, mut bytes) = (Vec::new(), 0usize);
            while let Some(row) = rows.next()? {
                let grant = grant_from_row(&row)?;
                bytes = bytes.saturating_add(shown_bytes(&grant));
                if out.len() >= bound || bytes > REVIEW_LIST_BYTES {
                    return Ok((out, true));
                }
                out.push(ReviewGrantRow {
                    grant,
                    role: row.get(n)?,
                    break_glass: row.get(n + 1)?,
                    reviewed_by: row.get(n + 2)?,
                });
            }
            Ok((out, false))
        };
        let (in_period, period_cut) = query("not_before >= ?1", &[&since])?;
        let (unreviewed, unreviewed_cut) = query(
            "id IN (SELECT grant_id FROM break_glass WHERE reviewed_at IS NULL)",
            &[],
        )?;
        let mut truncated = Vec::new();
        if period_cut {
            truncated.push(format!(
                "only the first {} grants of the period are listed; review a shorter --since",
                in_period.len()
            ));
        }
        if unreviewed_cut {
            truncated.push(format!(
                "only the oldest {} unreviewed break-glass grants are listed; ack them (`loggate access ack`) to see the others",
                unreviewed.len()
            ));
        }
        Ok(ReviewGrants {
            in_period,
            unreviewed,
            truncated,
        })
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
        let mut conn = self.conn()?;
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

    /// Requests made since `since`, oldest first, at most `bound`; true when more were left
    /// out.
    pub fn requests_since(
        &self,
        since: i64,
        bound: usize,
    ) -> anyhow::Result<(Vec<RequestRow>, bool)> {
        let conn = self.conn()?;
        let limit = i64::try_from(bound).unwrap_or(i64::MAX).saturating_add(1);
        let mut stmt = conn.prepare(&format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE created >= ?1 ORDER BY created, rowid LIMIT ?2"
        ))?;
        let mut rows = stmt
            .query_map(params![since, limit], request_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        let truncated = rows.len() > bound;
        rows.truncate(bound);
        Ok((rows, truncated))
    }

    pub fn request(&self, id: &str) -> anyhow::Result<Option<RequestRow>> {
        Ok(load_request(&*self.conn()?, id)?)
    }

    /// The requests `scope` selects (in SQL, by index: never a scan of others' requests) that
    /// `keep` also accepts, newest first, at most `max`: the pending ones only when
    /// `pending_only`. Reviews are read only for the rows returned. `truncated` says more
    /// matched.
    pub fn list_requests(
        &self,
        pending_only: bool,
        scope: ListScope<'_>,
        max: usize,
        mut keep: impl FnMut(&RequestRow) -> bool,
    ) -> anyhow::Result<RequestList> {
        let conn = self.conn()?;
        let limit = i64::try_from(max).unwrap_or(i64::MAX).saturating_add(1);
        let state = if pending_only {
            "AND state = 'pending'"
        } else {
            ""
        };
        let mut values: Vec<super::db::Value> = vec![limit.into()];
        let sql = match scope {
            ListScope::All => format!(
                "SELECT {REQUEST_COLUMNS} FROM requests WHERE TRUE {state} ORDER BY created DESC, rowid DESC LIMIT ?1"
            ),
            ListScope::Visible { requester, groups } => {
                values.push(requester.to_string().into());
                let marks: Vec<String> = groups
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        values.push(g.clone().into());
                        format!("?{}", i + 3)
                    })
                    .collect();
                let own = format!(
                    "SELECT * FROM (SELECT {REQUEST_COLUMNS} FROM requests WHERE requester = ?2 {state} ORDER BY created DESC LIMIT ?1) AS own"
                );
                if marks.is_empty() {
                    format!("{own} ORDER BY created DESC, id LIMIT ?1")
                } else {
                    format!(
                        "{own} UNION SELECT * FROM (SELECT {REQUEST_COLUMNS} FROM requests WHERE id IN
                           (SELECT request_id FROM pending_request_groups WHERE grp IN ({}))
                           ORDER BY created DESC LIMIT ?1) AS theirs
                         ORDER BY created DESC, id LIMIT ?1",
                        marks.join(", ")
                    )
                }
            }
        };
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = Vec::new();
        let mut truncated = false;
        let found = stmt
            .query_map(super::db::params_from_iter(values.iter()), request_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        let vm_steps = stmt.vm_steps();
        drop(stmt);
        for row in found {
            if keep(&row) {
                if rows.len() >= max {
                    truncated = true;
                    break;
                }
                rows.push(row);
            }
        }
        for row in &mut rows {
            row.reviews = reviews(&conn, &row.id)?;
        }
        Ok(RequestList {
            rows,
            truncated,
            vm_steps: usize::try_from(vm_steps).unwrap_or(usize::MAX),
        })
    }

    /// Adds an approval to request `id`. `check` sees the request as stored (with its reviews)
    /// and refuses what may not happen (an ended request, self-approval, a second review by the
    /// same person); then the review is stored and `complete` runs with the request and its
    /// reviews including this one. `complete` decides under the policy in force: it audits,
    /// and returns the rule the request stands under now (stored) and, when the approvals that
    /// still count reach what that rule needs, the grant to store (its revision from the
    /// function it is given, called at most once). Returns the request as it is afterwards.
    pub fn approve_request(
        &self,
        id: &str,
        review: &ReviewRow,
        check: impl FnOnce(&RequestRow) -> anyhow::Result<()>,
        complete: impl FnOnce(
            &RequestRow,
            &mut dyn FnMut() -> anyhow::Result<u64>,
        ) -> anyhow::Result<(RequestRule, Option<GrantRow>)>,
    ) -> anyhow::Result<Option<RequestRow>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let Some(mut request) = load_request(&tx, id)? else {
            return Ok(None);
        };
        check(&request)?;
        tx.execute(
            "INSERT INTO request_reviews (request_id, reviewer, decision, comment, at, reviewer_groups) VALUES (?1, ?2, 'approve', ?3, ?4, ?5)",
            params![id, review.reviewer, review.comment, review.at, to_json(&review.reviewer_groups)],
        )?;
        request.reviews.push(review.clone());
        let mut revision = None;
        let mut next = || -> anyhow::Result<u64> {
            let r = match revision {
                Some(r) => r,
                None => {
                    let r = next_revision(&tx)?;
                    revision = Some(r);
                    r
                }
            };
            Ok(unsigned(r)?)
        };
        let (rule, grant) = complete(&request, &mut next)?;
        tx.execute(
            "UPDATE requests SET role = ?2, approval = ?3, approvals_needed = ?4, approver_groups = ?5 WHERE id = ?1 AND state = 'pending'",
            params![
                id,
                rule.role,
                rule.approval,
                rule.approvals_needed,
                to_json(&rule.approver_groups)
            ],
        )?;
        set_pending_groups(&tx, id, &rule.approver_groups)?;
        if let Some(grant) = grant {
            let revision =
                revision.ok_or_else(|| anyhow::anyhow!("a grant was made without a revision"))?;
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
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let Some(request) = load_request(&tx, id)? else {
            return Ok(None);
        };
        check(&request)?;
        // A reviewer who approved earlier and now denies: the denial replaces the approval.
        tx.execute(
            "INSERT INTO request_reviews (request_id, reviewer, decision, comment, at, reviewer_groups) VALUES (?1, ?2, 'deny', ?3, ?4, ?5)
             ON CONFLICT(request_id, reviewer) DO UPDATE SET decision = 'deny', comment = ?3, at = ?4, reviewer_groups = ?5",
            params![id, review.reviewer, review.comment, review.at, to_json(&review.reviewer_groups)],
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
        let mut conn = self.conn()?;
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
        let conn = self.conn()?;
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
        Ok(self.conn()?.query_row(
            "SELECT MIN(expires) FROM requests WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "spiffe://loggate.local/user/alice";
    const MALLORY: &str = "spiffe://loggate.local/user/mallory";

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        (dir, store)
    }

    fn grant(id: &str, not_before: i64, revision: u64) -> GrantRow {
        GrantRow {
            id: id.to_string(),
            subject: ALICE.to_string(),
            hosts: vec!["web-1".into()],
            labels: Vec::new(),
            paths: vec!["/var/log/app/*.log".into()],
            units: vec![],
            not_before,
            not_after: not_before + 3600,
            reason: "INC-42".into(),
            issuer: "spiffe://loggate.local/user/admin".into(),
            profile: "default".into(),
            key_sha256: "0".repeat(64),
            token: "token".into(),
            revision,
            revoked: None,
        }
    }

    /// An ordinary (not break-glass) grant, as a request's approval stores it.
    fn insert_plain(store: &Store, id: &str, not_before: i64) {
        let mut conn = store.conn().expect("the store's connection");
        let tx = conn.transaction().unwrap();
        let next = next_revision(&tx).unwrap();
        insert_grant_row(&tx, &grant(id, not_before, unsigned(next).unwrap()), next).unwrap();
        tx.commit().unwrap();
    }

    fn request(id: &str, requester: &str, created: i64) -> RequestRow {
        RequestRow {
            id: id.to_string(),
            requester: requester.to_string(),
            hosts: vec!["web-1".into()],
            paths: vec!["/var/log/app/*.log".into()],
            units: vec![],
            ttl_seconds: 3600,
            profile: "default".into(),
            reason: "INC-42".into(),
            role: "payments-prod".into(),
            approval: "approvers".into(),
            approvals_needed: 1,
            approver_groups: vec!["sre".into()],
            state: RequestState::Pending,
            created,
            expires: created + 3600,
            decided_at: None,
            grant_id: None,
            requester_groups: Vec::new(),
            reviews: Vec::new(),
        }
    }

    #[test]
    fn an_unreviewed_break_glass_grant_stays_in_the_review_behind_any_number_of_newer_grants() {
        crate::store::testing::on_each_backend(|store, _dir| {
            let glass = store
                .insert_break_glass_grant(1_000, |rev| Ok(grant("g-glass", 1_000, rev)))
                .unwrap();
            for i in 0..1_100 {
                insert_plain(store, &format!("g-{i:05}"), 2_000 + i);
            }
            // The newest-1,000 list the review read before no longer holds it…
            let newest = store.list_grants(None, true, 10_000).unwrap();
            assert!(!newest.iter().any(|g| g.id == glass.id));
            // …the review's own query does, whatever the period.
            let review = store.review_grants(3_000, 10_000).unwrap();
            let unreviewed: Vec<&str> = review
                .unreviewed
                .iter()
                .map(|r| r.grant.id.as_str())
                .collect();
            assert_eq!(unreviewed, [glass.id.as_str()]);
            assert!(review.unreviewed[0].break_glass);
            assert!(review.truncated.is_empty(), "{:?}", review.truncated);
            assert_eq!(review.in_period.len(), 100);

            // A bound that cuts a list says so.
            let cut = store.review_grants(0, 50).unwrap();
            assert_eq!(cut.in_period.len(), 50);
            assert_eq!(cut.in_period[0].grant.id, glass.id, "oldest first");
            assert_eq!(cut.truncated.len(), 1, "{:?}", cut.truncated);
            assert!(
                cut.truncated[0].contains("first 50 grants"),
                "{:?}",
                cut.truncated
            );
        });
    }

    #[test]
    fn a_review_list_is_cut_at_its_text_budget_and_says_so() {
        crate::store::testing::on_each_backend(|store, _dir| {
            let paths: Vec<String> = (0..64)
                .map(|i| format!("/var/log/{i:02}{}.log", "a".repeat(1000)))
                .collect();
            for i in 0..300 {
                let mut conn = store.conn().expect("the store's connection");
                let tx = conn.transaction().unwrap();
                let next = next_revision(&tx).unwrap();
                let mut g = grant(&format!("g-big{i:03}"), 1_000 + i, unsigned(next).unwrap());
                g.paths = paths.clone();
                insert_grant_row(&tx, &g, next).unwrap();
                tx.commit().unwrap();
            }
            let review = store.review_grants(0, 10_000).unwrap();
            let shown: usize = review.in_period.iter().map(|r| shown_bytes(&r.grant)).sum();
            assert!(shown <= REVIEW_LIST_BYTES, "{shown}");
            assert!(review.in_period.len() < 300 && review.in_period.len() > 200);
            assert!(
                review.in_period.iter().all(|r| r.grant.token.is_empty()),
                "no token read"
            );
            assert_eq!(review.truncated.len(), 1, "{:?}", review.truncated);
        });
    }

    #[test]
    fn an_admins_grant_is_stored_flagged_for_review_or_not_at_all() {
        crate::store::testing::on_each_backend(|store, _dir| {
            let flagged = store
                .insert_break_glass_grant(1_000, |rev| Ok(grant("g-one", 1_000, rev)))
                .unwrap();
            let review = store.review_grants(0, 100).unwrap();
            assert_eq!(review.unreviewed.len(), 1);
            assert_eq!(review.unreviewed[0].grant.id, flagged.id);
            // The flag cannot be written (its table is gone): the grant is not stored either.
            store
                .conn()
                .expect("the store's connection")
                .execute_batch("DROP TABLE break_glass")
                .unwrap();
            let failed =
                store.insert_break_glass_grant(2_000, |rev| Ok(grant("g-two", 2_000, rev)));
            assert!(failed.is_err());
            assert!(store.grant("g-two").unwrap().is_none());
        });
    }

    #[test]
    fn pending_requests_are_capped_per_requester_in_the_transaction() {
        crate::store::testing::on_each_backend(|store, _dir| {
            for i in 0..3 {
                store
                    .insert_pending_request(&request(&format!("r-a{i}"), ALICE, 100 + i), 3, || {
                        Ok(())
                    })
                    .unwrap();
            }
            let mut recorded = false;
            let refused = store
                .insert_pending_request(&request("r-a3", ALICE, 200), 3, || {
                    recorded = true;
                    Ok(())
                })
                .unwrap_err();
            let too_many = refused.downcast::<TooManyPending>().expect("typed refusal");
            assert_eq!((too_many.pending, too_many.max), (3, 3));
            assert!(!recorded, "nothing audited as requested");
            assert!(store.request("r-a3").unwrap().is_none());
            // Another requester is not affected; a decided request frees a place.
            store
                .insert_pending_request(&request("r-m0", MALLORY, 201), 3, || Ok(()))
                .unwrap();
            store
                .end_request("r-a0", RequestState::Cancelled, 300, |_| Ok(()), |_| Ok(()))
                .unwrap();
            store
                .insert_pending_request(&request("r-a4", ALICE, 301), 3, || Ok(()))
                .unwrap();
            assert!(store
                .insert_pending_request(&request("r-a5", ALICE, 302), 3, || Ok(()))
                .is_err());
            // Pending requests past their expiry (not marked yet) no longer count.
            store
                .insert_pending_request(&request("r-late", ALICE, 4_000), 3, || Ok(()))
                .unwrap();
        });
    }

    #[test]
    fn one_requesters_flood_does_not_hide_others_requests_from_a_list() {
        crate::store::testing::on_each_backend(|store, _dir| {
            store
                .insert_pending_request(&request("r-alice", ALICE, 100), 1000, || Ok(()))
                .unwrap();
            for i in 0..600 {
                store
                    .insert_pending_request(
                        &request(&format!("r-m{i:04}"), MALLORY, 200 + i),
                        1000,
                        || Ok(()),
                    )
                    .unwrap();
            }
            // Filtered first: the caller sees what they may see.
            let visible = store
                .list_requests(
                    true,
                    ListScope::Visible {
                        requester: ALICE,
                        groups: &[],
                    },
                    500,
                    |_| true,
                )
                .unwrap();
            assert_eq!(visible.rows.len(), 1);
            assert_eq!(visible.rows[0].id, "r-alice");
            assert!(!visible.truncated);
            // An admin's list is cut at 500 and says so.
            let all = store
                .list_requests(true, ListScope::All, 500, |_| true)
                .unwrap();
            assert_eq!(all.rows.len(), 500);
            assert!(all.truncated);
        });
    }

    #[test]
    fn fifty_thousand_cancelled_requests_are_not_scanned_for_another_persons_list() {
        let (_dir, store) = store();
        const FLOOD: i64 = 50_000;
        {
            let mut conn = store.conn().expect("the store's connection");
            let tx = conn.transaction().unwrap();
            for i in 0..FLOOD {
                let mut r = request(&format!("r-{i:016x}"), MALLORY, 1_000 + i);
                r.state = RequestState::Cancelled;
                r.decided_at = Some(1_000 + i);
                insert_request(&tx, &r).unwrap();
            }
            tx.commit().unwrap();
        }
        store
            .insert_pending_request(&request("r-alice", ALICE, 500), 20, || Ok(()))
            .unwrap();
        let sre = ["sre".to_string()];
        let lists = [
            // alice's own, every state; bob's queue as an sre approver, pending and every state.
            (false, ALICE, &[][..]),
            (true, "spiffe://loggate.local/user/bob", &sre[..]),
            (false, "spiffe://loggate.local/user/bob", &sre[..]),
        ];
        for (pending_only, requester, groups) in lists {
            let list = store
                .list_requests(
                    pending_only,
                    ListScope::Visible { requester, groups },
                    500,
                    |_| true,
                )
                .unwrap();
            let ids: Vec<&str> = list.rows.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids, ["r-alice"], "{requester} {pending_only}");
            // Counted, not timed: a scan of the flood would take well over 50,000 steps; an
            // index lookup takes a few hundred. The store's lock (and a concurrent approval
            // waiting for it) is held for that long only.
            assert!(
                list.vm_steps < 5_000,
                "{requester} {pending_only}: {} VM steps",
                list.vm_steps
            );
        }
        // The list as it was read before (every request newest first from one cursor,
        // filtered in Rust): the flood is read row by row under the lock.
        {
            let conn = store.conn().expect("the store's connection");
            let mut old = conn
                .prepare(&format!(
                    "SELECT {REQUEST_COLUMNS} FROM requests ORDER BY created DESC, rowid DESC LIMIT 100000"
                ))
                .unwrap();
            let read = old
                .query_map([], request_from_row)
                .unwrap()
                .filter_map(Result::ok)
                .filter(|r| r.requester == ALICE)
                .count();
            assert_eq!(read, 1);
            assert!(old.vm_steps() > 500_000);
        }
        // An approval waiting for the lock while a list runs goes through right after it.
        let lister = std::thread::scope(|scope| {
            let listed = scope.spawn(|| {
                store
                    .list_requests(
                        true,
                        ListScope::Visible {
                            requester: "spiffe://loggate.local/user/bob",
                            groups: &sre,
                        },
                        500,
                        |_| true,
                    )
                    .unwrap()
                    .vm_steps
            });
            let review = ReviewRow {
                reviewer: "spiffe://loggate.local/user/bob".into(),
                approve: true,
                comment: String::new(),
                at: 600,
                reviewer_groups: Vec::new(),
            };
            let approved = store
                .approve_request(
                    "r-alice",
                    &review,
                    |_| Ok(()),
                    |r, _| {
                        Ok((
                            RequestRule {
                                role: r.role.clone(),
                                approval: r.approval.clone(),
                                approvals_needed: 2,
                                approver_groups: r.approver_groups.clone(),
                            },
                            None,
                        ))
                    },
                )
                .unwrap()
                .unwrap();
            assert_eq!(approved.reviews.len(), 1);
            listed.join().unwrap()
        });
        assert!(lister < 5_000, "{lister}");
    }

    #[test]
    fn a_database_from_before_requester_groups_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(Store::open(&path).unwrap());
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch("ALTER TABLE requests DROP COLUMN requester_groups")
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let mut r = request("r-x", ALICE, 1);
        r.requester_groups = vec!["payments".into()];
        store.insert_pending_request(&r, 20, || Ok(())).unwrap();
        let back = store.request("r-x").unwrap().unwrap();
        assert_eq!(back.requester_groups, ["payments"]);
    }
    /// Two controllers on one PostgreSQL database deciding one request at the same moment
    /// (approve against deny, approve against approve), the first held inside its transaction
    /// while the second runs: exactly one decision is stored, a denied request has no grant,
    /// an approved one has exactly the grant it names.
    #[test]
    fn one_decision_wins_when_two_replicas_decide_a_request_at_once() {
        use std::time::Duration;
        let t = crate::store::testing::TestStore::postgres();
        let other = Store::open_postgres(&t.server.as_ref().expect("a server").url())
            .expect("a second replica");
        let pending = |r: &RequestRow| -> anyhow::Result<()> {
            anyhow::ensure!(r.state == RequestState::Pending, "already decided");
            Ok(())
        };
        let review = |reviewer: &str, approve: bool| ReviewRow {
            reviewer: format!("spiffe://loggate.local/user/{reviewer}"),
            approve,
            comment: String::new(),
            at: 200,
            reviewer_groups: Vec::new(),
        };
        let approve = |store: &Store,
                       id: &str,
                       reviewer: &str,
                       grant_id: &str,
                       inside: Option<std::sync::mpsc::Sender<()>>| {
            store.approve_request(id, &review(reviewer, true), pending, |r, next| {
                if let Some(inside) = inside {
                    let _ = inside.send(());
                    std::thread::sleep(Duration::from_millis(400));
                }
                let revision = next()?;
                Ok((
                    RequestRule {
                        role: r.role.clone(),
                        approval: r.approval.clone(),
                        approvals_needed: 1,
                        approver_groups: r.approver_groups.clone(),
                    },
                    Some(grant(grant_id, 200, revision)),
                ))
            })
        };
        for round in 0..6 {
            let id = format!("r-{round}");
            let (first_grant, second_grant) = (format!("g-{round}-a"), format!("g-{round}-b"));
            t.store
                .insert_pending_request(&request(&id, ALICE, 100), 100, || Ok(()))
                .expect("a pending request");
            let against_deny = round % 2 == 0;
            let (inside_tx, inside) = std::sync::mpsc::channel();
            let (other, id, second_grant) = (&other, id.as_str(), second_grant.as_str());
            let (first, second) = std::thread::scope(|scope| {
                let first =
                    scope.spawn(|| approve(&t.store, id, "bob", &first_grant, Some(inside_tx)));
                let second = scope.spawn(move || {
                    // Once the first is inside its transaction (bounded: with the store lock
                    // the first may simply be done by then).
                    let _ = inside.recv_timeout(Duration::from_secs(5));
                    if against_deny {
                        other
                            .deny_request(id, &review("carol", false), pending, |_| Ok(()))
                            .map(|r| r.map(|r| r.state))
                    } else {
                        approve(other, id, "carol", second_grant, None).map(|r| r.map(|r| r.state))
                    }
                });
                (first.join().expect("first"), second.join().expect("second"))
            });
            let after = t.store.request(id).expect("read").expect("the request");
            let stored: Vec<String> = [first_grant.as_str(), second_grant]
                .into_iter()
                .filter(|g| t.store.grant(g).expect("read").is_some())
                .map(str::to_owned)
                .collect();
            let context = format!(
                "round {round}: first {:?}, second {:?}, request {:?} {:?}, grants {stored:?}",
                first
                    .as_ref()
                    .map(|r| r.as_ref().map(|r| r.state))
                    .map_err(|e| format!("{e:#}")),
                second.as_ref().map_err(|e| format!("{e:#}")),
                after.state,
                after.grant_id,
            );
            assert_eq!(
                usize::from(first.is_ok()) + usize::from(second.is_ok()),
                1,
                "exactly one decision: {context}"
            );
            match after.state {
                RequestState::Denied => assert!(stored.is_empty(), "{context}"),
                RequestState::Approved => {
                    assert_eq!(stored.len(), 1, "{context}");
                    assert_eq!(after.grant_id.as_ref(), stored.first(), "{context}");
                }
                other => panic!("undecided ({other:?}): {context}"),
            }
        }
    }
    /// The access review's lists are bounded in what is read, not only in what is shown: on
    /// PostgreSQL (whose client receives a result whole) a review of 300 grants with a bound
    /// of 50 receives at most 51 rows.
    #[test]
    fn a_review_reads_at_most_its_bound_of_rows_from_postgres() {
        let t = crate::store::testing::TestStore::postgres();
        for i in 0..300 {
            insert_plain(&t.store, &format!("g-{i}"), 1000 + i);
        }
        let before = t
            .store
            .conn()
            .expect("the store's connection")
            .rows_received();
        let review = t.store.review_grants(0, 50).expect("review");
        let received = t
            .store
            .conn()
            .expect("the store's connection")
            .rows_received()
            - before;
        assert_eq!(review.in_period.len(), 50);
        assert!(!review.truncated.is_empty());
        assert!(received <= 51, "{received} rows received for a bound of 50");
    }
}
