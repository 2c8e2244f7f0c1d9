//! The store's one seam between its SQL and the two databases it runs on: embedded SQLite (the
//! default) and PostgreSQL (`database = "postgres://…"`, several controller replicas).
//!
//! The store keeps one body of SQL, written with SQLite's numbered placeholders (`?1`); this
//! module offers the subset of rusqlite's API the store uses (`execute`, `query_row`,
//! `prepare`/`query_map`, `transaction`, `optional`, `params!`) over either backend, and makes
//! the dialect differences in one place ([`postgres_sql`]): `?N` becomes `$N`, `INSERT OR
//! IGNORE` becomes `ON CONFLICT DO NOTHING`, and a value is converted to the column type
//! PostgreSQL asks for (an integer into `BOOL`, a bool into `BIGINT`, as SQLite takes them). The
//! schemas are per backend (SQLite's in the store's modules, PostgreSQL's in
//! `postgres_schema.sql`), both versioned by [`super::migrations`].
//!
//! On SQLite every call goes straight to rusqlite, as before this seam existed: the same
//! statements, the same transactions (`BEGIN DEFERRED`), the same errors.
//!
//! **Why PostgreSQL connections live on a thread of their own.** The store's methods are
//! synchronous and are called from tokio's worker threads (as the SQLite store always was:
//! short, local, under one lock). The synchronous `postgres` client runs each call on a
//! runtime of its own and panics when called from inside a tokio runtime, and
//! `block_in_place` would panic on the current-thread runtimes of the tests. So each
//! PostgreSQL connection is owned by a plain thread; a call sends it the SQL and owned values
//! and waits for the owned rows. The caller's thread blocks as it did on SQLite's lock, but a
//! tokio worker hands its other tasks to another thread meanwhile ([`off_the_worker`]): a
//! statement waiting on the network or on another replica's lock does not stall them.

use std::collections::HashMap;
use std::sync::mpsc;

/// What a database call fails with; SQLite's and PostgreSQL's own errors are kept as causes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL's error, with the server's own message (the client's `Display` alone says
    /// only "db error").
    #[error("{}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
    /// `query_row` found no row (rusqlite's own text, so messages stay the same).
    #[error("Query returned no rows")]
    NoRows,
    #[error("column {index}: a stored {found} cannot be read as {wanted}")]
    ColumnType {
        index: usize,
        wanted: &'static str,
        found: &'static str,
    },
    /// A stored number outside the range its reader allows (a corrupt store).
    #[error("stored value {0} is out of range")]
    OutOfRange(i64),
    #[error("column {0} is of a type the store does not read ({1})")]
    UnsupportedColumn(usize, String),
    /// The connection's thread is gone (it panicked): the controller must restart.
    #[error("the PostgreSQL connection's thread has stopped; restart the controller")]
    ConnectionGone,
    /// Connecting (TCP, TLS and authentication together) took longer than its bound
    /// ([`PG_CONNECT_TOTAL`]): the server, or something in front of it, does not answer.
    #[error(
        "connecting to PostgreSQL took longer than {0:?}; check that the database server answers"
    )]
    ConnectTimedOut(std::time::Duration),
    /// Earlier connection attempts still wait on a server that does not answer: no new one is
    /// made until they end.
    #[error("{0} earlier connection attempts to PostgreSQL still wait for the server to answer; check that the database server answers")]
    ConnectStalled(usize),
    /// No thread could be started for a connection attempt (the process is out of threads).
    #[error("cannot start a thread to connect to PostgreSQL: {0}")]
    ConnectThread(std::io::Error),
    /// The PostgreSQL client panicked while connecting (it does when the process cannot
    /// create its event loop, e.g. out of file descriptors).
    #[error(
        "the PostgreSQL client failed while connecting (is the process out of file descriptors?)"
    )]
    ConnectPanicked,
    /// More callers already wait for this replica's PostgreSQL connection than it lets wait
    /// ([`MAX_STORE_WAITERS`]): the call fails at once instead of pinning another thread.
    #[error("{0} calls already wait for the database; retry shortly")]
    Busy(usize),
    /// A write that must change exactly one row changed another number: another controller
    /// changed the row first (the transaction is rolled back, nothing is stored).
    #[error("{0} was changed by another controller at the same time; nothing was stored, retry")]
    Conflict(&'static str),
    /// The labels an agent announces would give it more former labels than the store keeps
    /// for one agent (`agents::MAX_FORMER_LABELS`): the change is refused, nothing stored.
    #[error(
        "agent {0:?} announces labels that would leave it {1} former labels (at most {max} \
         are kept for one agent): its labels changed too often",
        max = super::agents::MAX_FORMER_LABELS
    )]
    TooManyFormerLabels(String, usize),
    /// After a reconnect, the database no longer holds the revision this controller last read
    /// as it read it: it was restored, or failed over to a standby that lagged. Revision
    /// numbers would be handed out again under this process's epoch, so every call fails from
    /// then on; the change feed ends the process for the service manager to start it again
    /// with a new epoch.
    #[error(
        "the PostgreSQL database no longer holds revision {0} as this controller read it (a \
         restore, or a failover to a standby that lagged); restart the controller so that its \
         agents resynchronise under a new epoch"
    )]
    DatabaseRestored(i64),
}

/// Whether `e` failed because the PostgreSQL server could not be reached or went away (it is
/// down, restarting, refusing connections, or the connection broke): a condition that passes,
/// for which the caller should retry later, unlike an error of the statement or the data.
/// Classified positively, by the error's type and SQLSTATE, never by its text: a closed
/// connection, an I/O error among the causes, SQLSTATE class 08 (connection exception) or
/// 57P01–57P03 (the server shutting down or starting). A client-side error (a value that does
/// not fit its parameter, a column read as the wrong type) is a bug of the store, not an
/// outage, and stays internal.
pub fn database_unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| match cause.downcast_ref::<Error>() {
        Some(Error::Postgres(pg)) => postgres_unavailable(pg),
        Some(Error::ConnectTimedOut(_) | Error::ConnectStalled(_)) => true,
        Some(_) => false,
        None => cause
            .downcast_ref::<postgres::Error>()
            .is_some_and(postgres_unavailable),
    })
}

/// Whether `e` failed because the database is busy rather than down: a statement waited for a
/// lock longer than [`PG_LOCK_TIMEOUT`] (SQLSTATE 55P03, another replica holds the store's
/// lock), ran longer than [`PG_STATEMENT_TIMEOUT`] (57014), or more callers already wait for
/// this replica's connection than it lets wait ([`Error::Busy`]). Retryable, as
/// [`database_unavailable`] is, but said differently: the server answers, slowly.
pub fn database_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| match cause.downcast_ref::<Error>() {
        Some(Error::Postgres(pg)) => postgres_busy(pg),
        Some(Error::Busy(_)) => true,
        Some(_) => false,
        None => cause
            .downcast_ref::<postgres::Error>()
            .is_some_and(postgres_busy),
    })
}

fn postgres_unavailable(pg: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    if pg.is_closed() {
        return true;
    }
    if let Some(db) = pg.as_db_error() {
        let code = db.code();
        return code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
            ]
            .contains(code);
    }
    // The connection failed underneath: an I/O error (refused, reset, timed out) among the
    // client error's causes.
    let mut source = std::error::Error::source(pg);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

fn postgres_busy(pg: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    pg.code()
        .is_some_and(|c| *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::QUERY_CANCELED)
}

fn postgres_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("PostgreSQL {}: {}", db.severity(), db.message()),
        None => format!("PostgreSQL: {e}"),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An owned value: a parameter on its way in, or a PostgreSQL column on its way out.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Bool(bool),
}

/// A borrowed column value, as both backends hand them to [`FromSql`].
#[derive(Debug, Clone, Copy)]
pub enum ValueRef<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
    Bool(bool),
}

impl ValueRef<'_> {
    fn kind(&self) -> &'static str {
        match self {
            ValueRef::Null => "NULL",
            ValueRef::Int(_) => "integer",
            ValueRef::Real(_) => "real",
            ValueRef::Text(_) => "text",
            ValueRef::Blob(_) => "blob",
            ValueRef::Bool(_) => "bool",
        }
    }
}

impl Value {
    fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Int(*v),
            Value::Real(v) => ValueRef::Real(*v),
            Value::Text(v) => ValueRef::Text(v),
            Value::Blob(v) => ValueRef::Blob(v),
            Value::Bool(v) => ValueRef::Bool(*v),
        }
    }
}

/// A parameter the store binds.
pub trait ToSql {
    fn to_value(&self) -> Value;
}

macro_rules! to_sql_int {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn to_value(&self) -> Value {
                Value::Int(i64::from(*self))
            }
        }
    )*};
}
to_sql_int!(i64, i32, u32, i16, u16, u8);

impl ToSql for bool {
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
}
impl ToSql for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl ToSql for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToSql for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToSql for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl ToSql for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToSql> ToSql for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

/// The parameters of one statement (rusqlite's `Params`, for the shapes the store uses).
pub trait Params {
    fn into_values(self) -> Vec<Value>;
}
impl Params for &[&dyn ToSql] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(|p| p.to_value()).collect()
    }
}
impl Params for [&dyn ToSql; 0] {
    fn into_values(self) -> Vec<Value> {
        Vec::new()
    }
}
/// Parameters from an iterator ([`params_from_iter`]).
pub struct ParamsFromIter<I>(I);
impl<I> Params for ParamsFromIter<I>
where
    I: IntoIterator,
    I::Item: ToSql,
{
    fn into_values(self) -> Vec<Value> {
        self.0.into_iter().map(|p| p.to_value()).collect()
    }
}
pub fn params_from_iter<I>(iter: I) -> ParamsFromIter<I>
where
    I: IntoIterator,
    I::Item: ToSql,
{
    ParamsFromIter(iter)
}

/// rusqlite's `params!`: `params![a, b]` is a `&[&dyn ToSql]`.
macro_rules! params {
    () => {
        &[] as &[&dyn $crate::store::db::ToSql]
    };
    ($($param:expr),+ $(,)?) => {
        &[$(&$param as &dyn $crate::store::db::ToSql),+] as &[&dyn $crate::store::db::ToSql]
    };
}
pub(crate) use params;

/// A column value the store reads.
pub trait FromSql: Sized {
    fn from_sql(value: ValueRef<'_>) -> std::result::Result<Self, &'static str>;
}

impl FromSql for i64 {
    fn from_sql(value: ValueRef<'_>) -> std::result::Result<Self, &'static str> {
        match value {
            ValueRef::Int(v) => Ok(v),
            ValueRef::Bool(b) => Ok(i64::from(b)),
            _ => Err("integer"),
        }
    }
}
macro_rules! from_sql_int {
    ($($t:ty),*) => {$(
        impl FromSql for $t {
            fn from_sql(value: ValueRef<'_>) -> std::result::Result<Self, &'static str> {
                <$t>::try_from(i64::from_sql(value)?).map_err(|_| stringify!($t))
            }
        }
    )*};
}
from_sql_int!(i32, u32, u64, usize);
impl FromSql for bool {
    fn from_sql(value: ValueRef<'_>) -> std::result::Result<Self, &'static str> {
        match value {
            ValueRef::Int(v) => Ok(v != 0),
            ValueRef::Bool(b) => Ok(b),
            _ => Err("bool"),
        }
    }
}
impl FromSql for f64 {
    fn from_sql(value: ValueRef<'_>) -> std::result::Result<Self, &'static str> {
        match value {
            ValueRef::Real(v) => Ok(v),
            _ => Err("real"),
        }
    }
}
impl FromSql for String {
    fn from_sql(value: ValueRef<'_>) -> std::result::Result<Self, &'static str> {
        match value {
            ValueRef::Text(v) => Ok(v.to_owned()),
            _ => Err("text"),
        }
    }
}
impl FromSql for Vec<u8> {
    fn from_sql(value: ValueRef<'_>) -> std::result::Result<Self, &'static str> {
        match value {
            ValueRef::Blob(v) => Ok(v.to_vec()),
            _ => Err("blob"),
        }
    }
}
impl<T: FromSql> FromSql for Option<T> {
    fn from_sql(value: ValueRef<'_>) -> std::result::Result<Self, &'static str> {
        match value {
            ValueRef::Null => Ok(None),
            v => T::from_sql(v).map(Some),
        }
    }
}

/// A column index (rusqlite's `RowIndex`, positions only).
pub trait RowIndex {
    fn index(self) -> usize;
}
impl RowIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// One row of a result, from either backend.
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Owned(&'a [Value]),
}

impl Row<'_> {
    /// The value of column `idx`, as rusqlite's `Row::get`.
    pub fn get<I: RowIndex, T: FromSql>(&self, idx: I) -> Result<T> {
        let index = idx.index();
        let value = match self {
            Row::Sqlite(row) => {
                use rusqlite::types::ValueRef as R;
                match row.get_ref(index)? {
                    R::Null => ValueRef::Null,
                    R::Integer(v) => ValueRef::Int(v),
                    R::Real(v) => ValueRef::Real(v),
                    R::Text(v) => ValueRef::Text(std::str::from_utf8(v).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            index,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?),
                    R::Blob(v) => ValueRef::Blob(v),
                }
            }
            Row::Owned(values) => values
                .get(index)
                .map(Value::as_ref)
                .ok_or(Error::Sqlite(rusqlite::Error::InvalidColumnIndex(index)))?,
        };
        T::from_sql(value).map_err(|wanted| Error::ColumnType {
            index,
            wanted,
            found: value.kind(),
        })
    }
}

/// rusqlite's `OptionalExtension`: no row is `Ok(None)`.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}
impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows | Error::Sqlite(rusqlite::Error::QueryReturnedNoRows)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A connection to either backend.
pub enum Connection {
    Sqlite(rusqlite::Connection),
    Postgres(PgConnection),
}

impl Connection {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Connection::Postgres(_))
    }

    /// Notes that `revision` (of grant `grant_id`) was read committed from the revision log:
    /// after a reconnect, the database must still hold it ([`Error::DatabaseRestored`]).
    /// Nothing on SQLite (a file restored under a running controller is out of scope: it is
    /// replaced only while the controller is stopped, and every start is a new epoch).
    pub fn note_revision_read(&self, revision: i64, grant_id: &str) -> Result<()> {
        match self {
            Connection::Sqlite(_) => Ok(()),
            Connection::Postgres(c) => {
                let grant_id = grant_id.to_owned();
                c.call(move |s| {
                    if s.last_read.as_ref().is_none_or(|(r, _)| *r < revision) {
                        s.last_read = Some((revision, grant_id));
                    }
                    Ok(())
                })
            }
        }
    }

    /// Rows PostgreSQL sent this connection so far ([`PgConnection`]'s test hook); none on
    /// SQLite, which reads rows one at a time from a cursor.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn rows_received(&self) -> u64 {
        match self {
            Connection::Sqlite(_) => 0,
            Connection::Postgres(c) => c.rows_received.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        let values = params.into_values();
        match self {
            Connection::Sqlite(c) => Ok(c.execute(sql, rusqlite::params_from_iter(values))?),
            Connection::Postgres(c) => c.execute(sql, values),
        }
    }

    /// Runs statements without parameters (a schema, `BEGIN`): on PostgreSQL as they are
    /// written, so only dialect-neutral text or PostgreSQL's own goes through here.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match self {
            Connection::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Connection::Postgres(c) => c.batch(sql),
        }
    }

    pub fn query_row<T, P, F>(&self, sql: &str, params: P, f: F) -> Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> Result<T>,
    {
        let mut stmt = self.prepare(sql)?;
        let mut rows = stmt.query(params)?;
        match rows.next()? {
            Some(row) => f(&row),
            None => Err(Error::NoRows),
        }
    }

    pub fn prepare(&self, sql: &str) -> Result<Statement<'_>> {
        match self {
            Connection::Sqlite(c) => Ok(Statement::Sqlite(c.prepare(sql)?)),
            Connection::Postgres(c) => Ok(Statement::Postgres {
                conn: c,
                sql: sql.to_owned(),
            }),
        }
    }

    /// As [`Connection::prepare`], through SQLite's per-connection statement cache (rusqlite's
    /// LRU, `SQLITE_STATEMENT_CACHE` statements, store.rs): for the statements every agent's
    /// connection runs (registration, resync), whose text SQLite would otherwise parse again at every call. `sql` must be a
    /// fixed text (a text that varies per call would only churn the cache). PostgreSQL's
    /// sessions already cache every statement they prepare ([`PgConnection`]).
    pub fn prepare_cached(&self, sql: &str) -> Result<Statement<'_>> {
        match self {
            Connection::Sqlite(c) => Ok(Statement::SqliteCached(c.prepare_cached(sql)?)),
            Connection::Postgres(c) => Ok(Statement::Postgres {
                conn: c,
                sql: sql.to_owned(),
            }),
        }
    }

    /// As [`Connection::query_row`], with the statement from the cache
    /// ([`Connection::prepare_cached`]).
    pub fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> Result<T>,
    {
        let mut stmt = self.prepare_cached(sql)?;
        let mut rows = stmt.query(params)?;
        match rows.next()? {
            Some(row) => f(&row),
            None => Err(Error::NoRows),
        }
    }

    /// As [`Connection::execute`], with the statement from the cache
    /// ([`Connection::prepare_cached`]).
    pub fn execute_cached<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        let values = params.into_values();
        match self {
            Connection::Sqlite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(values))?),
            Connection::Postgres(c) => c.execute(sql, values),
        }
    }

    /// Begins a transaction (`BEGIN DEFERRED` on SQLite, as rusqlite's `transaction`), rolled
    /// back when dropped uncommitted.
    ///
    /// On PostgreSQL every store transaction first takes the one advisory lock
    /// [`REVISIONS_LOCK`] (transaction-scoped), so the store's transactions run one at a time
    /// across every replica sharing the database, as SQLite's single writer ran them: a
    /// read-check-write (a request still pending, a join token with uses left, a pending cap)
    /// cannot interleave with another replica's under READ COMMITTED. It is the same lock the
    /// revision log's writers take ([`Connection::lock_revisions`], re-entrant within the
    /// transaction), so the two cannot deadlock. A wait longer than the session's
    /// `lock_timeout` ([`PG_LOCK_TIMEOUT`]) fails the call.
    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        match self {
            Connection::Sqlite(c) => c.execute_batch("BEGIN DEFERRED")?,
            Connection::Postgres(c) => c.begin()?,
        }
        Ok(Transaction {
            conn: self,
            done: false,
        })
    }

    /// Serialises the writers of the revision log across every controller sharing the
    /// database, until the caller's transaction ends: revisions are handed out as `MAX + 1`
    /// and must commit in order, or a change feed reading "after N" could pass over one that
    /// commits late. SQLite has one writer at a time already; PostgreSQL takes a
    /// transaction-scoped advisory lock.
    pub fn lock_revisions(&self) -> Result<()> {
        match self {
            Connection::Sqlite(_) => Ok(()),
            // The NOTIFY is delivered when the transaction commits (and dropped if it rolls
            // back): every replica's change feed wakes ([`listen_for_changes`]).
            Connection::Postgres(c) => c.batch(&format!(
                "SELECT pg_advisory_xact_lock({REVISIONS_LOCK}); NOTIFY {CHANGES_CHANNEL}"
            )),
        }
    }
}

/// The channel every replica's change feed listens on: a commit of a grant or revocation
/// notifies it. A notification is only a wake-up; the revision log stays the truth.
pub const CHANGES_CHANNEL: &str = "loggate_revisions";

/// Wakes `wake` (a change feed's) each time any controller on the PostgreSQL database at
/// `url` commits a change of the revision log (`LISTEN`), and once each time listening
/// (re)starts, so that what was committed while not listening is read too. Runs on a thread of
/// its own with a connection of its own; a lost connection is retried with backoff (100 ms up
/// to 5 s), and the thread ends within a second of the last `wake` being dropped.
pub fn listen_for_changes(
    url: &str,
    wake: std::sync::Weak<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let config: postgres::Config = url.parse().map_err(|e| {
        anyhow::anyhow!("the database URL is not a valid PostgreSQL connection string: {e}")
    })?;
    let config = with_timeouts(config);
    std::thread::Builder::new()
        .name("postgres-listen".into())
        .spawn(move || {
            let min = std::time::Duration::from_millis(100);
            let mut backoff = min;
            while wake.strong_count() > 0 {
                match listen_until_lost(&config, &wake, &mut backoff) {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(
                            "the change feed's PostgreSQL listener lost its connection \
                             (retrying in {backoff:?}): {}",
                            e
                        );
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                    }
                }
            }
        })?;
    Ok(())
}

/// Listens until the connection fails (`Err`) or nobody waits any more (`Ok`); `backoff` is
/// reset once listening.
fn listen_until_lost(
    config: &postgres::Config,
    wake: &std::sync::Weak<tokio::sync::Notify>,
    backoff: &mut std::time::Duration,
) -> Result<()> {
    use postgres::fallible_iterator::FallibleIterator;
    let mut client = connect_within(config, PG_CONNECT_TOTAL)?;
    client.batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))?;
    *backoff = std::time::Duration::from_millis(100);
    let poke = || match wake.upgrade() {
        Some(notify) => {
            notify.notify_one();
            true
        }
        None => false,
    };
    if !poke() {
        return Ok(());
    }
    loop {
        let next = {
            // A second without a notification: check that the feed still waits.
            let mut notifications = client.notifications();
            let mut within_a_second = notifications.timeout_iter(std::time::Duration::from_secs(1));
            within_a_second.next()?
        };
        if next.is_some() && !poke() {
            return Ok(());
        }
        if wake.strong_count() == 0 {
            return Ok(());
        }
        if client.is_closed() {
            // Surfaced as an error by the next query.
            client.batch_execute("SELECT 1")?;
        }
    }
}

/// The advisory lock key of the singleton jobs ("lgjobs"): the replica whose session holds it
/// runs the jobs that must run once for the whole cluster ([`lead_singleton_jobs`]).
pub const JOBS_LOCK: i64 = 0x6c67_6a6f_6273;

/// How often a replica that does not lead tries to take [`JOBS_LOCK`], and how often the
/// leader checks that the session holding it is still alive: a leader killed (its session ends
/// and PostgreSQL releases the lock) is replaced within about this long, a leader cut off from
/// the database stops leading within about this long plus the client's timeouts.
pub const JOBS_LEASE_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Keeps `leader` (a store's) true while this process holds the singleton jobs' session-scoped
/// advisory lock [`JOBS_LOCK`] on the PostgreSQL database at `url`, on a dedicated connection
/// and thread: a replica that does not lead tries `pg_try_advisory_lock` every
/// [`JOBS_LEASE_RETRY`]; the leader checks its session as often and gives the lead up
/// (`leader` false) the moment a check fails, then competes again on a new connection. The
/// lock belongs to the session, so a leader that dies, however it dies, releases it when
/// PostgreSQL sees its connection end. Who leads is logged (`replica`, with the database's
/// backend pid). The thread ends, closing its connection and so releasing the lock, within
/// [`JOBS_LEASE_RETRY`] of the last strong reference to `leader` being dropped.
pub fn lead_singleton_jobs(
    url: &str,
    leader: std::sync::Weak<std::sync::atomic::AtomicBool>,
    replica: String,
) -> anyhow::Result<()> {
    let config: postgres::Config = url.parse().map_err(|e| {
        anyhow::anyhow!("the database URL is not a valid PostgreSQL connection string: {e}")
    })?;
    let config = with_timeouts(config);
    std::thread::Builder::new()
        .name("postgres-jobs".into())
        .spawn(move || {
            // While the database is down this fails every JOBS_LEASE_RETRY: logged once a minute.
            let warning = RateLimitedWarning::new(std::time::Duration::from_secs(60));
            while leader.strong_count() > 0 {
                if let Err(e) = hold_jobs_lock(&config, &leader, &replica) {
                    if let Some(left_out) = warning.admit() {
                        tracing::warn!(
                            %replica,
                            "the singleton jobs' PostgreSQL session failed (retrying every {JOBS_LEASE_RETRY:?}; {left_out} such failures not logged since the last): {}",
                            e
                        );
                    }
                }
                set_leader(&leader, false, &replica);
                std::thread::sleep(JOBS_LEASE_RETRY);
            }
        })?;
    Ok(())
}

/// Sets the store's leader flag, logging each change of who leads.
fn set_leader(leader: &std::sync::Weak<std::sync::atomic::AtomicBool>, leads: bool, replica: &str) {
    let Some(flag) = leader.upgrade() else { return };
    let was = flag.swap(leads, std::sync::atomic::Ordering::SeqCst);
    if was && !leads {
        tracing::warn!(%replica, "this replica no longer runs the singleton jobs");
    }
}

/// One session of [`lead_singleton_jobs`]: competes for the lock, then holds it, until the
/// connection fails (`Err`) or the store is gone (`Ok`).
fn hold_jobs_lock(
    config: &postgres::Config,
    leader: &std::sync::Weak<std::sync::atomic::AtomicBool>,
    replica: &str,
) -> Result<()> {
    let mut client = connect_session(config)?;
    let backend_pid: i32 = client.query_one("SELECT pg_backend_pid()", &[])?.get(0);
    loop {
        let Some(flag) = leader.upgrade() else {
            return Ok(());
        };
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            // Leading: the lock stays held as long as this session lives.
            client.batch_execute("SELECT 1")?;
        } else {
            let taken: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&JOBS_LOCK])?
                .get(0);
            if taken {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(
                    %replica, backend_pid,
                    "this replica now runs the singleton jobs (request expiry)"
                );
            }
        }
        drop(flag);
        std::thread::sleep(JOBS_LEASE_RETRY);
    }
}

/// The advisory lock key of the revision log's writers ("lgrevs" in ASCII), which every store
/// transaction on PostgreSQL takes first ([`Connection::transaction`]).
pub const REVISIONS_LOCK: i64 = 0x6c67_7265_7673;

/// How long a connection attempt to PostgreSQL may take (a black-holed host otherwise waits
/// for the kernel's TCP timeout, about two minutes, holding the store's lock).
pub const PG_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Idle time before the client's TCP keepalives probe an established connection.
pub const PG_KEEPALIVES_IDLE: std::time::Duration = std::time::Duration::from_secs(10);
/// Time between the client's keepalive probes.
pub const PG_KEEPALIVES_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// Unanswered keepalive probes after which the client drops the connection.
pub const PG_KEEPALIVES_RETRIES: u32 = 3;
/// How long data the client sent may stay unacknowledged before its connection is closed
/// (`TCP_USER_TIMEOUT`): a leader whose database host vanished while it sent its checks stops
/// leading after this long, not after the kernel's retransmissions (about 15 minutes).
pub const PG_TCP_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// The server's side of the same bounds, set in every session ([`connect_session`]): the
/// backend of a replica whose host vanished notices within `tcp_keepalives_idle` +
/// `tcp_user_timeout` (about 25 s) and ends its session, releasing the session's locks (the
/// singleton jobs' [`JOBS_LOCK`] among them). PostgreSQL ignores the `tcp_*` settings on a
/// unix socket. `idle_in_transaction_session_timeout` ends a session that stays inside a
/// transaction without a statement for 30 s, so a replica stuck while holding
/// [`REVISIONS_LOCK`] cannot hold up every other replica's writes for longer.
pub const PG_SERVER_SESSION_SETTINGS: &str = "SET tcp_keepalives_idle = 10; \
     SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3; \
     SET tcp_user_timeout = 15000; SET idle_in_transaction_session_timeout = '30s'";
/// `statement_timeout` of every store session: the longest one statement may run. The
/// store's statements are small and indexed; one running longer is a stuck database.
pub const PG_STATEMENT_TIMEOUT: &str = "15s";
/// `lock_timeout` of every store session: the longest a statement waits for a lock, the
/// store's advisory lock included. A replica stuck while holding it fails the others' writes
/// after this long instead of hanging them for ever.
pub const PG_LOCK_TIMEOUT: &str = "10s";

/// The longest connecting to PostgreSQL may take as a whole: the TCP connect, TLS and
/// authentication together ([`connect_within`]). The client's own `connect_timeout`
/// ([`PG_CONNECT_TIMEOUT`]) bounds only the TCP connect: a server (or a proxy) that accepts the
/// connection and then never answers would otherwise hold the caller for ever.
pub const PG_CONNECT_TOTAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Connection attempts given up by [`connect_within`] whose threads still wait on a server that
/// does not answer; while this many wait, a new attempt is refused at once, so a server that
/// stalls every connection costs a bounded number of threads and sockets.
const MAX_ABANDONED_CONNECTS: usize = 4;

/// The connection attempts given up whose threads have not ended yet ([`connect_within`]).
/// An attempt stops counting when its thread ends (however it ends: a drop guard releases
/// it, a panic included), or once it is older than twice the bound it was given up after:
/// a peer that keeps a connection open for ever (a stopped server, a proxy with no backend)
/// then costs a thread, but does not keep the controller from connecting elsewhere.
#[derive(Default)]
pub(crate) struct AbandonedConnects {
    attempts: std::sync::Mutex<Vec<(u64, std::time::Instant)>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl AbandonedConnects {
    const fn new() -> Self {
        Self {
            attempts: std::sync::Mutex::new(Vec::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, std::time::Instant)>> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many still count, forgetting (and logging) those abandoned more than `max_age` ago.
    pub(crate) fn counting(&self, max_age: std::time::Duration) -> usize {
        let mut attempts = self.lock();
        let before = attempts.len();
        attempts.retain(|(_, at)| at.elapsed() < max_age);
        if attempts.len() < before {
            tracing::warn!(
                "{} connection attempts to PostgreSQL have waited for over {max_age:?}; they no longer hold up new ones",
                before - attempts.len()
            );
        }
        attempts.len()
    }

    fn add(&self, id: u64) {
        self.lock().push((id, std::time::Instant::now()));
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|(i, _)| *i != id);
    }
}

static ABANDONED_CONNECTS: AbandonedConnects = AbandonedConnects::new();

/// Connects with `config`, giving up after `total` ([`PG_CONNECT_TOTAL`]) whatever stage the
/// connection is at ([`connect_within_with`]).
fn connect_within(
    config: &postgres::Config,
    total: std::time::Duration,
) -> Result<postgres::Client> {
    let config = config.clone();
    connect_within_with(
        &ABANDONED_CONNECTS,
        move || Ok(config.connect(postgres::NoTls)?),
        total,
    )
}

/// Runs `connect`, giving up after `total`. The blocking client cannot be interrupted, so the
/// attempt runs on a thread of its own: given up, that thread is left to end when the server
/// answers or the connection fails (a client it then gets is dropped, closing it); at most
/// [`MAX_ABANDONED_CONNECTS`] given up in the last 2 × `total` are left waiting at a time
/// (`abandoned`). A `connect` that panics fails the attempt with [`Error::ConnectPanicked`]
/// and holds no place.
pub(crate) fn connect_within_with<T: Send + 'static>(
    abandoned: &'static AbandonedConnects,
    connect: impl FnOnce() -> Result<T> + Send + 'static,
    total: std::time::Duration,
) -> Result<T> {
    use std::sync::atomic::Ordering;
    if abandoned.counting(total * 2) >= MAX_ABANDONED_CONNECTS {
        return Err(Error::ConnectStalled(MAX_ABANDONED_CONNECTS));
    }
    struct Attempt<T> {
        result: Option<Result<T>>,
        abandoned: bool,
    }
    type Shared<T> = std::sync::Arc<(std::sync::Mutex<Attempt<T>>, std::sync::Condvar)>;
    /// Hands the attempt's outcome over when the thread ends, however it ends: to the waiter,
    /// or, given up, releases the attempt's place in `abandoned` (dropping a client it got).
    struct Finish<T> {
        shared: Shared<T>,
        abandoned: &'static AbandonedConnects,
        id: u64,
        result: Option<Result<T>>,
    }
    impl<T> Drop for Finish<T> {
        fn drop(&mut self) {
            let (attempt, done) = &*self.shared;
            let mut attempt = attempt.lock().unwrap_or_else(|p| p.into_inner());
            if attempt.abandoned {
                self.abandoned.remove(self.id);
            } else {
                attempt.result = Some(self.result.take().unwrap_or(Err(Error::ConnectPanicked)));
                done.notify_one();
            }
        }
    }
    let shared: Shared<T> = std::sync::Arc::new((
        std::sync::Mutex::new(Attempt {
            result: None,
            abandoned: false,
        }),
        std::sync::Condvar::new(),
    ));
    let id = abandoned.next_id.fetch_add(1, Ordering::Relaxed);
    let finish = Finish {
        shared: shared.clone(),
        abandoned,
        id,
        result: None,
    };
    std::thread::Builder::new()
        .name("postgres-connect".into())
        .spawn(move || {
            let mut finish = finish;
            let result = connect();
            // Not reached when `connect` panics: `finish` then drops while unwinding.
            finish.result = Some(result);
            drop(finish);
        })
        .map_err(Error::ConnectThread)?;
    let (attempt, done) = &*shared;
    let attempt = attempt.lock().unwrap_or_else(|p| p.into_inner());
    let (mut attempt, _) = done
        .wait_timeout_while(attempt, total, |a| a.result.is_none())
        .unwrap_or_else(|p| p.into_inner());
    match attempt.result.take() {
        Some(result) => result,
        None => {
            // Under the attempt's lock: the thread cannot finish between these two lines.
            attempt.abandoned = true;
            abandoned.add(id);
            Err(Error::ConnectTimedOut(total))
        }
    }
}

/// `config` with the store's client-side connection bounds ([`PG_CONNECT_TIMEOUT`],
/// keepalives, [`PG_TCP_USER_TIMEOUT`]).
fn with_timeouts(mut config: postgres::Config) -> postgres::Config {
    config
        .connect_timeout(PG_CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(PG_KEEPALIVES_IDLE)
        .keepalives_interval(PG_KEEPALIVES_INTERVAL)
        .keepalives_retries(PG_KEEPALIVES_RETRIES)
        .tcp_user_timeout(PG_TCP_USER_TIMEOUT);
    config
}

/// Connects with `config` and sets the session's timeouts ([`PG_STATEMENT_TIMEOUT`],
/// [`PG_LOCK_TIMEOUT`], [`PG_SERVER_SESSION_SETTINGS`]); set after connecting, so they hold
/// whatever the URL's `options` say.
fn connect_session(config: &postgres::Config) -> Result<postgres::Client> {
    let mut client = connect_within(config, PG_CONNECT_TOTAL)?;
    client.batch_execute(&format!(
        "SET statement_timeout = '{PG_STATEMENT_TIMEOUT}'; SET lock_timeout = '{PG_LOCK_TIMEOUT}'; {PG_SERVER_SESSION_SETTINGS}"
    ))?;
    Ok(client)
}

/// A warning that may repeat (the database is down: every call and every retry fails the
/// same way) logged at most once per `every`, with the number left out since.
pub struct RateLimitedWarning {
    every: std::time::Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl RateLimitedWarning {
    pub const fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(left out since the last one)` when this occurrence should be logged.
    pub fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, left_out) = &mut *state;
        if last.is_some_and(|at| at.elapsed() < self.every) {
            *left_out = left_out.saturating_add(1);
            return None;
        }
        *last = Some(std::time::Instant::now());
        Some(std::mem::take(left_out))
    }
}

/// rusqlite's `Transaction`: derefs to the connection, rolls back unless committed.
pub struct Transaction<'c> {
    conn: &'c mut Connection,
    done: bool,
}

impl Transaction<'_> {
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        self.conn.execute_batch("COMMIT")
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Best effort, as rusqlite's: a failed rollback leaves the connection to fail its
            // next BEGIN, which reports the cause.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// A prepared statement: SQLite's own, or the text PostgreSQL prepares (and caches) on its
/// connection's thread.
pub enum Statement<'c> {
    Sqlite(rusqlite::Statement<'c>),
    /// From the connection's statement cache: put back into it when dropped.
    SqliteCached(rusqlite::CachedStatement<'c>),
    Postgres {
        conn: &'c PgConnection,
        sql: String,
    },
}

impl Statement<'_> {
    pub fn query<P: Params>(&mut self, params: P) -> Result<Rows<'_>> {
        let values = params.into_values();
        match self {
            Statement::Sqlite(s) => Ok(Rows::Sqlite(s.query(rusqlite::params_from_iter(values))?)),
            Statement::SqliteCached(s) => {
                Ok(Rows::Sqlite(s.query(rusqlite::params_from_iter(values))?))
            }
            Statement::Postgres { conn, sql } => Ok(Rows::Owned {
                rows: conn.query(sql, values)?.into_iter(),
                current: None,
            }),
        }
    }

    /// rusqlite's `query_map`, read to the end (every caller collects the rows).
    pub fn query_map<T, P, F>(
        &mut self,
        params: P,
        mut f: F,
    ) -> Result<std::vec::IntoIter<Result<T>>>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> Result<T>,
    {
        let mut rows = self.query(params)?;
        let mut out = Vec::new();
        loop {
            match rows.next() {
                Ok(Some(row)) => {
                    let mapped = f(&row);
                    let failed = mapped.is_err();
                    out.push(mapped);
                    if failed {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e));
                    break;
                }
            }
        }
        Ok(out.into_iter())
    }

    /// SQLite's virtual-machine steps of this statement (the test hook that proves a query
    /// uses its index); PostgreSQL has no such count: 0.
    pub fn vm_steps(&self) -> i32 {
        match self {
            Statement::Sqlite(s) => s.get_status(rusqlite::StatementStatus::VmStep),
            Statement::SqliteCached(s) => s.get_status(rusqlite::StatementStatus::VmStep),
            Statement::Postgres { .. } => 0,
        }
    }
}

/// The rows of a query: SQLite's cursor (read one at a time), or PostgreSQL's rows as received.
pub enum Rows<'s> {
    Sqlite(rusqlite::Rows<'s>),
    Owned {
        rows: std::vec::IntoIter<Vec<Value>>,
        current: Option<Vec<Value>>,
    },
}

impl Rows<'_> {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Row<'_>>> {
        match self {
            Rows::Sqlite(rows) => Ok(rows.next()?.map(Row::Sqlite)),
            Rows::Owned { rows, current } => {
                *current = rows.next();
                Ok(current.as_deref().map(Row::Owned))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// Rewrites the store's SQLite-dialect statement for PostgreSQL: `?N` placeholders become
/// `$N` (outside quoted text), and `INSERT OR IGNORE INTO … VALUES (…)` becomes `INSERT INTO …
/// VALUES (…) ON CONFLICT DO NOTHING`. Everything else the store writes is valid in both.
pub fn postgres_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                out.push(c);
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    out.push(c);
                }
                '?' if chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
                _ => out.push(c),
            },
        }
    }
    const IGNORE: &str = "INSERT OR IGNORE INTO";
    if let Some(at) = out.find(IGNORE) {
        out.replace_range(at..at + IGNORE.len(), "INSERT INTO");
        out.push_str(" ON CONFLICT DO NOTHING");
    }
    out
}

type Job = Box<dyn FnOnce(&mut PgSession) + Send>;

/// The connection's state on its own thread: the client and its prepared statements.
pub struct PgSession {
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
    /// Between the store's BEGIN and its COMMIT or ROLLBACK: a connection lost then is not
    /// replaced (the transaction's work is gone; its next statement fails and the caller's
    /// transaction is dropped, rolled back).
    in_transaction: bool,
    /// The newest revision read from the log, with its grant ([`Connection::note_revision_read`]).
    last_read: Option<(i64, String)>,
    /// Set when a reconnect found `last_read` gone: every call fails from then on.
    restored: Option<i64>,
}

impl PgSession {
    /// After a reconnect: whether the database still holds the newest revision read as it
    /// was read. A query that fails is not a verdict (the call that follows reports it).
    fn check_not_restored(&mut self) {
        let Some((revision, grant_id)) = &self.last_read else {
            return;
        };
        let found = self.client.query(
            "SELECT grant_id FROM revisions WHERE revision = $1",
            &[revision],
        );
        if let Ok(rows) = found {
            let same = rows
                .first()
                .and_then(|r| r.try_get::<_, String>(0).ok())
                .is_some_and(|g| g == *grant_id);
            if !same {
                tracing::error!("{}", Error::DatabaseRestored(*revision));
                self.restored = Some(*revision);
            }
        }
    }
}

impl PgSession {
    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let prepared = self.client.prepare(&postgres_sql(sql))?;
        // Bounded: the store's statements are a fixed set, but a list's `IN (…)` varies.
        if self.statements.len() >= 512 {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), prepared.clone());
        Ok(prepared)
    }
}

/// Runs `wait` (a wait on a PostgreSQL connection's thread, which waits on the network, the
/// server or another replica's lock, up to [`PG_LOCK_TIMEOUT`] and [`PG_STATEMENT_TIMEOUT`])
/// without holding up the other tasks of the tokio worker thread it is called on: on a
/// multi-thread runtime's worker through `block_in_place` (the runtime hands the worker's
/// other tasks to another thread meanwhile); on a plain thread, or a current-thread runtime
/// (where `block_in_place` would panic), as it is. The store stays synchronous for its
/// callers; this is what keeps a slow database from stalling the agents' streams and the
/// CLI's calls that share the worker.
pub fn off_the_worker<R>(wait: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// How many callers may wait for one store's PostgreSQL connection at a time (each waits on
/// a thread of tokio's blocking pool, [`off_the_worker`]; tokio allows 512 by default, and the
/// runtime stalls when they are all taken). A caller beyond it fails at once with
/// [`Error::Busy`], which the client is told to retry.
pub const MAX_STORE_WAITERS: usize = 64;

/// One PostgreSQL connection, owned by a thread of its own (see the module's doc).
pub struct PgConnection {
    jobs: mpsc::Sender<Job>,
    /// Rows received from the server since connecting: the test hook that proves a query's
    /// `LIMIT` bounds what is read into memory (the client receives a result whole).
    rows_received: std::sync::atomic::AtomicU64,
}

impl PgConnection {
    /// Connects to `url` (a `postgres://` URL or key=value string) on a new thread. TLS to the
    /// database is not offered yet: a URL that asks for it (`sslmode=require`) is refused by
    /// the client, so a deployment reaches PostgreSQL over a unix socket or a protected network.
    pub fn connect(url: &str) -> anyhow::Result<Self> {
        let config: postgres::Config = url.parse().map_err(|e| {
            anyhow::anyhow!("the database URL is not a valid PostgreSQL connection string: {e}")
        })?;
        let config = with_timeouts(config);
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::sync_channel::<Result<()>>(1);
        std::thread::Builder::new()
            .name("postgres".into())
            .spawn(move || {
                let client = match connect_session(&config) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut session = PgSession {
                    client,
                    statements: HashMap::new(),
                    in_transaction: false,
                    last_read: None,
                    restored: None,
                };
                // Ends when the store (every sender) is dropped, closing the connection.
                while let Ok(job) = queue.recv() {
                    // The database restarted (or the network failed): the call that met it
                    // failed with its error; the next one, outside a transaction, connects
                    // anew. One attempt per call, no retry loop: a database still down fails
                    // the call at once with the connection error.
                    if session.client.is_closed() && !session.in_transaction {
                        match connect_session(&config) {
                            Ok(client) => {
                                tracing::info!("reconnected to PostgreSQL");
                                session.client = client;
                                session.statements.clear();
                                session.check_not_restored();
                            }
                            Err(e) => {
                                tracing::warn!("cannot reconnect to PostgreSQL: {e}")
                            }
                        }
                    }
                    job(&mut session);
                }
            })?;
        ready
            .recv()
            .map_err(|_| Error::ConnectionGone)?
            .map_err(|e| anyhow::Error::new(e).context("cannot connect to PostgreSQL"))?;
        Ok(Self {
            jobs,
            rows_received: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Runs `f` on the connection's thread and waits for its result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut PgSession) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |session| {
                let result = match session.restored {
                    Some(revision) => Err(Error::DatabaseRestored(revision)),
                    None => f(session),
                };
                let _ = tx.send(result);
            }))
            .map_err(|_| Error::ConnectionGone)?;
        off_the_worker(|| rx.recv()).map_err(|_| Error::ConnectionGone)?
    }

    fn execute(&self, sql: &str, values: Vec<Value>) -> Result<usize> {
        let sql = sql.to_owned();
        let n = self.call(move |s| {
            let stmt = s.statement(&sql)?;
            let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                values.iter().map(|v| v as _).collect();
            Ok(s.client.execute(&stmt, &refs)?)
        })?;
        usize::try_from(n).map_err(|_| Error::OutOfRange(i64::MAX))
    }

    /// Begins a store transaction and takes the store's advisory lock
    /// ([`Connection::transaction`]). The connection counts as in a transaction only once
    /// `BEGIN` succeeded: a `BEGIN` that fails (the first call after the database restarted)
    /// leaves no transaction to protect, so the next call connects anew. A lock that cannot be
    /// taken rolls the transaction back here, since the caller gets no `Transaction` to drop.
    fn begin(&self) -> Result<()> {
        self.call(|s| {
            s.client.batch_execute("BEGIN")?;
            s.in_transaction = true;
            if let Err(e) = s
                .client
                .batch_execute(&format!("SELECT pg_advisory_xact_lock({REVISIONS_LOCK})"))
            {
                let _ = s.client.batch_execute("ROLLBACK");
                s.in_transaction = false;
                return Err(e.into());
            }
            Ok(())
        })
    }

    fn batch(&self, sql: &str) -> Result<()> {
        let sql = sql.to_owned();
        self.call(move |s| {
            // The store's transactions (Connection::transaction, through `begin`) are the only
            // BEGIN, COMMIT and ROLLBACK sent; COMMIT and ROLLBACK end the transaction whether
            // they succeed or not (a failed one leaves none open on the server).
            if matches!(sql.as_str(), "COMMIT" | "ROLLBACK") {
                s.in_transaction = false;
            }
            Ok(s.client.batch_execute(&sql)?)
        })
    }

    fn query(&self, sql: &str, values: Vec<Value>) -> Result<Vec<Vec<Value>>> {
        let sql = sql.to_owned();
        self.call(move |s| {
            let stmt = s.statement(&sql)?;
            let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                values.iter().map(|v| v as _).collect();
            let rows = s.client.query(&stmt, &refs)?;
            rows.iter().map(row_values).collect::<Result<Vec<_>>>()
        })
        .inspect(|rows| {
            let n = u64::try_from(rows.len()).unwrap_or(u64::MAX);
            self.rows_received
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
    }
}

/// A PostgreSQL row as owned values, by each column's type.
fn row_values(row: &postgres::Row) -> Result<Vec<Value>> {
    use postgres::types::Type;
    let mut out = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?.map(Value::Bool)
        } else if [Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR].contains(ty) {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
        } else if *ty == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(i)?.map(Value::Real)
        } else {
            return Err(Error::UnsupportedColumn(i, ty.name().to_owned()));
        };
        out.push(value.unwrap_or(Value::Null));
    }
    Ok(out)
}

impl postgres::types::ToSql for Value {
    /// Converts to the type PostgreSQL inferred for the parameter, as SQLite's loose typing
    /// would store it: integers into `BOOL` (non-zero), bools into integers (1/0).
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use postgres::types::Type;
        let text = [
            Type::TEXT,
            Type::VARCHAR,
            Type::NAME,
            Type::BPCHAR,
            Type::UNKNOWN,
        ];
        match self {
            Value::Null => Ok(postgres::types::IsNull::Yes),
            Value::Int(v) if *ty == Type::INT8 => v.to_sql(ty, out),
            Value::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::BOOL => (*v != 0).to_sql(ty, out),
            Value::Bool(b) if *ty == Type::BOOL => b.to_sql(ty, out),
            Value::Bool(b) if *ty == Type::INT8 => i64::from(*b).to_sql(ty, out),
            Value::Bool(b) if *ty == Type::INT4 => i32::from(*b).to_sql(ty, out),
            Value::Text(s) if text.contains(ty) => s.as_str().to_sql(ty, out),
            Value::Blob(b) if *ty == Type::BYTEA => b.as_slice().to_sql(ty, out),
            Value::Real(v) if *ty == Type::FLOAT8 => v.to_sql(ty, out),
            other => Err(format!("cannot bind {other:?} to a {ty} parameter").into()),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef as R};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(R::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(R::Integer(*v)),
            Value::Real(v) => ToSqlOutput::Borrowed(R::Real(*v)),
            Value::Text(v) => ToSqlOutput::Borrowed(R::Text(v.as_bytes())),
            Value::Blob(v) => ToSqlOutput::Borrowed(R::Blob(v)),
            Value::Bool(v) => ToSqlOutput::Borrowed(R::Integer(i64::from(*v))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::postgres_sql;

    /// A server that accepts the TCP connection and then never answers (a stalled database or
    /// proxy) fails the connection after [`super::PG_CONNECT_TOTAL`], as the database being
    /// unavailable, instead of holding the controller for ever; the client's `connect_timeout`
    /// alone bounds only the TCP connect. Once the server closes the connection, the
    /// abandoned attempt ends and no longer counts.
    #[test]
    fn connecting_to_a_server_that_never_answers_fails_within_the_total_bound() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // Accepts the one connection and holds it, answering nothing, then closes it.
        let server = std::thread::spawn(move || {
            let held = listener.accept();
            std::thread::sleep(super::PG_CONNECT_TOTAL + std::time::Duration::from_secs(1));
            drop(held);
        });
        let url = format!("postgres://loggate@127.0.0.1:{port}/loggate");
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::time::Instant::now();
        std::thread::spawn(move || {
            let _ = tx.send(super::PgConnection::connect(&url).map(|_| ()));
        });
        let result = rx
            .recv_timeout(super::PG_CONNECT_TOTAL + std::time::Duration::from_secs(5))
            .expect("connecting did not end within its bound");
        let err = result.expect_err("connected to a server that never answers");
        assert!(started.elapsed() >= super::PG_CONNECT_TOTAL, "{err:#}");
        assert!(super::database_unavailable(&err), "{err:#}");
        assert!(
            format!("{err:#}").contains("took longer than 10s"),
            "{err:#}"
        );
        server.join().expect("server thread");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while super::ABANDONED_CONNECTS.counting(std::time::Duration::from_secs(600)) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the abandoned attempt still counts after its connection closed"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// A connect that panics (the `postgres` client does when it cannot create its event
    /// loop, out of file descriptors) fails its attempt and holds no place: the next attempt
    /// is made, not refused as stalled.
    #[test]
    fn a_connect_that_panics_fails_its_attempt_and_frees_its_place() {
        static ABANDONED: super::AbandonedConnects = super::AbandonedConnects::new();
        // Ample: a panicking attempt returns as soon as its thread has unwound, and a loaded
        // machine (or a backtrace captured by the panic hook) can take longer than a few
        // hundred milliseconds to unwind, which made the attempt time out instead.
        let total = std::time::Duration::from_secs(10);
        for _ in 0..super::MAX_ABANDONED_CONNECTS + 2 {
            let err = super::connect_within_with::<()>(&ABANDONED, || panic!("no epoll"), total)
                .expect_err("a panicking connect succeeded");
            assert!(matches!(err, super::Error::ConnectPanicked), "{err}");
        }
        assert_eq!(ABANDONED.counting(total * 100), 0);
        super::connect_within_with(&ABANDONED, || Ok(()), total).expect("next attempt made");
    }

    /// Attempts abandoned on a peer that never answers stop a new attempt only while they
    /// wait: they stop counting when they end (however), and once older than twice the bound
    /// even if they never end.
    #[test]
    fn stalled_connects_stop_refusing_new_ones_when_they_end_or_grow_old() {
        static ENDING: super::AbandonedConnects = super::AbandonedConnects::new();
        static NEVER: super::AbandonedConnects = super::AbandonedConnects::new();
        let total = std::time::Duration::from_millis(200);
        let stall = |registry: &'static super::AbandonedConnects| {
            let (release, wait) = std::sync::mpsc::channel::<()>();
            let err = super::connect_within_with(
                registry,
                move || {
                    let _ = wait.recv_timeout(std::time::Duration::from_secs(30));
                    Ok(())
                },
                total,
            )
            .expect_err("a stalled connect returned");
            assert!(matches!(err, super::Error::ConnectTimedOut(_)), "{err}");
            release
        };
        // At the same time, so that none is old yet when the fifth attempt comes.
        let stall_all = |registry: &'static super::AbandonedConnects| {
            std::thread::scope(|scope| {
                let stalling: Vec<_> = (0..super::MAX_ABANDONED_CONNECTS)
                    .map(|_| scope.spawn(|| stall(registry)))
                    .collect();
                stalling
                    .into_iter()
                    .map(|s| s.join().expect("stalling attempt"))
                    .collect::<Vec<_>>()
            })
        };
        let releases = stall_all(&ENDING);
        let refused = super::connect_within_with(&ENDING, || Ok(()), total)
            .expect_err("a fifth attempt was made while four stalled");
        assert!(
            matches!(refused, super::Error::ConnectStalled(_)),
            "{refused}"
        );
        drop(releases);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while ENDING.counting(std::time::Duration::from_secs(600)) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "ended attempts still count"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        super::connect_within_with(&ENDING, || Ok(()), total).expect("attempt after they ended");

        // Never released (the threads end with the test process, at most 30 s later).
        let _held = stall_all(&NEVER);
        super::connect_within_with(&NEVER, || Ok(()), total)
            .expect_err("a fifth attempt was made while four stalled");
        std::thread::sleep(total * 2);
        super::connect_within_with(&NEVER, || Ok(()), total)
            .expect("attempt after the stalled ones grew old");
    }

    /// Only a server that is gone counts as unavailable; a value that does not fit its
    /// parameter (a client-side error) is internal; a lock wait over `lock_timeout` is busy.
    #[test]
    fn unavailable_is_classified_positively_and_lock_timeouts_are_busy() {
        let server = crate::store::postgres_server::TestPostgres::start().expect("PostgreSQL");
        let conn = super::PgConnection::connect(&server.url()).expect("connect");
        let overflow = conn
            .query("SELECT ?1::int4", vec![super::Value::Int(i64::MAX)])
            .map_err(anyhow::Error::from)
            .expect_err("i64::MAX bound as INT4");
        assert!(!super::database_unavailable(&overflow), "{overflow:#}");
        assert!(!super::database_busy(&overflow), "{overflow:#}");

        let mut holder = postgres::Client::connect(&server.url(), postgres::NoTls).expect("holder");
        holder
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({})",
                super::REVISIONS_LOCK
            ))
            .expect("lock taken");
        conn.batch("SET lock_timeout = '300ms'").expect("set");
        let waited = conn
            .begin()
            .map_err(anyhow::Error::from)
            .expect_err("took a held lock");
        assert!(super::database_busy(&waited), "{waited:#}");
        assert!(!super::database_unavailable(&waited), "{waited:#}");
        holder.batch_execute("COMMIT").expect("released");

        let settings = conn
            .query("SHOW idle_in_transaction_session_timeout", Vec::new())
            .expect("show");
        assert_eq!(settings, vec![vec![super::Value::Text("30s".into())]]);
    }

    #[test]
    fn placeholders_become_postgres_ones_outside_quoted_text() {
        assert_eq!(
            postgres_sql("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $12"
        );
    }

    #[test]
    fn insert_or_ignore_becomes_on_conflict_do_nothing() {
        assert_eq!(
            postgres_sql("INSERT OR IGNORE INTO t (a) VALUES (?1)"),
            "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING"
        );
    }
}
