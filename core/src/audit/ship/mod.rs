//! SIEM delivery: each configured sink follows the local audit file (the spool) on its own
//! thread and sends every record past its persisted cursor, at least once.
//!
//! - The sink walks the chain forward from its cursor: the rotated files after it, in order,
//!   then the current file (see [`spool`]). The audit writer deletes a rotated file only once
//!   every sink's cursor is past it (see `Retention`), so a receiver down across any number of
//!   rotations, or an agent restart meanwhile, still gets every record.
//! - The cursor (last delivered `seq`, the chain identity, an offset hint) is stored atomically
//!   after delivery (see [`cursor`]); after a restart or an outage the sink resends from it, so a
//!   SIEM may see a record twice, byte for byte the same (same `seq`, same `metadata.uid`).
//! - A sink never touches the audit writer or the gate: it only reads the file, on a thread and
//!   runtime of its own, so a slow or absent receiver cannot slow a read.
//! - While a receiver is down the sink retries with exponential back-off and jitter, logs the
//!   outage at once and then every 30 s, and keeps `<state>/<name>.status.json` current (state,
//!   delivered and written `seq`, lag in records and in bytes, last error).

pub mod config;
pub mod cursor;
mod hec;
pub mod spool;
mod syslog;

use crate::audit::DurableSeq;
use crate::backoff::Backoff;
pub use config::{validate_sinks, AuditSection, SinkConfig, SinkFile, Target};

use cursor::Cursor;
use spool::{FirstLine, Record, Spool};
use std::collections::VecDeque;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a sink looks for new records when it has caught up.
const POLL: Duration = Duration::from_millis(100);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// At most one log line per sink per this interval about the same outage or lag.
const LOG_EVERY: Duration = Duration::from_secs(30);
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// A permanently refused delivery is tried again only this often: the receiver said the request
/// itself is wrong (a refused token, a bad URL, a batch too large), so it is refused again until
/// someone changes the sink's configuration or the receiver; trying sooner only floods both
/// sides' logs. Records are never skipped: they wait in the audit file.
const PERMANENT_PAUSE: Duration = Duration::from_secs(300);

/// Whether a failed delivery can succeed by sending the same thing again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// The receiver is unreachable, slow, busy or broke the connection (a connection error, a
    /// timeout, HEC 5xx, 429 or 408): tried again after an exponential back-off.
    Retriable,
    /// The receiver refused the request for what it is (HEC 4xx other than 408 and 429, a
    /// redirect we do not follow): logged once, tried again only every [`PERMANENT_PAUSE`].
    Permanent,
}

/// Why a transport failed, typed so the delivery loop decides by [`Retry`], never by reading
/// the message. A plain `String` (a connection or I/O failure) converts to a retriable one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct TransportError {
    pub(crate) retry: Retry,
    pub(crate) message: String,
}

impl TransportError {
    pub(crate) fn permanent(message: impl Into<String>) -> Self {
        TransportError {
            retry: Retry::Permanent,
            message: message.into(),
        }
    }

    pub(crate) fn retriable(message: impl Into<String>) -> Self {
        TransportError {
            retry: Retry::Retriable,
            message: message.into(),
        }
    }
}

impl From<String> for TransportError {
    fn from(message: String) -> Self {
        TransportError::retriable(message)
    }
}

impl From<&str> for TransportError {
    fn from(message: &str) -> Self {
        TransportError::retriable(message)
    }
}

/// How a sink talks to its receiver.
pub(crate) trait Transport {
    async fn connect(&mut self) -> Result<(), TransportError>;
    fn disconnect(&mut self);
    fn is_connected(&self) -> bool;
    /// Sends one batch; `Ok` means written (and, for acknowledging receivers, acknowledged).
    async fn send(&mut self, batch: &[Record]) -> Result<(), TransportError>;
    /// How long after a successful send the connection must stay healthy before the batch
    /// counts as delivered (zero for receivers that acknowledge).
    fn confirm_after(&self) -> Duration;
    /// Without waiting: `Some(why)` when the connection is known to be broken.
    async fn broken(&mut self) -> Option<String>;
}

/// What every sink of one process shares.
#[derive(Debug, Clone)]
pub struct ShipContext {
    /// The audit file to follow.
    pub audit_log: PathBuf,
    /// Where cursors and status files live (created, mode 0700).
    pub state_dir: PathBuf,
    /// This host's name in the messages (the agent id, or `controller`).
    pub host: String,
    /// The program's name in syslog headers (`loggate-agent`).
    pub app_name: String,
    /// How far the file is on disk: nothing past it is sent (see [`DurableSeq`]).
    pub durable: DurableSeq,
}

/// Starts one thread per sink. They run until the process exits.
pub fn spawn_sinks(sinks: Vec<SinkConfig>, ctx: &ShipContext) -> anyhow::Result<()> {
    if sinks.is_empty() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&ctx.state_dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", ctx.state_dir.display()))?;
    for sink in sinks {
        let ctx = ctx.clone();
        let name = sink.name.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("sink-{name}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match sink.target {
                        Target::Syslog(t) => {
                            let transport = syslog::SyslogSink::new(t, &ctx.host, &ctx.app_name);
                            Shipper::new(&sink.name, sink.batch_size, transport, &ctx)
                                .run()
                                .await
                        }
                        Target::Hec(t) => {
                            let transport = hec::HecSink::new(t, &ctx.host);
                            Shipper::new(&sink.name, sink.batch_size, transport, &ctx)
                                .run()
                                .await
                        }
                    }
                })
            })
            .map_err(|e| anyhow::anyhow!("cannot start sink {name}: {e}"))?;
    }
    Ok(())
}

/// A batch written but not yet counted as delivered.
struct InFlight {
    seq: u64,
    end: u64,
    written: Instant,
}

/// The delivery loop of one sink.
struct Shipper<T: Transport> {
    name: String,
    batch_size: usize,
    transport: T,
    spool: Spool,
    durable: DurableSeq,
    cursor_path: PathBuf,
    status_path: PathBuf,
    /// What is persisted: delivered through `delivered.seq`.
    delivered: Cursor,
    /// The last `seq` written to the receiver (delivered or in flight).
    written: u64,
    in_flight: VecDeque<InFlight>,
    backoff: Backoff,
    health: Health,
    /// Set when the chain broke under the sink: it delivers nothing more (see
    /// [`Shipper::chain_break`]).
    halted: Option<String>,
    /// How long to wait after a permanent refusal ([`PERMANENT_PAUSE`]; shorter in tests).
    permanent_pause: Duration,
}

#[derive(Default)]
struct Health {
    down_since: Option<Instant>,
    failures: u64,
    last_error: Option<String>,
    last_log: Option<Instant>,
    /// What the last log line said, so a new kind of failure is logged at once.
    last_logged: String,
    /// The permanent refusal logged (once) and not yet followed by a delivery.
    refused: Option<String>,
    /// Permanent refusals logged (each distinct one once).
    refusals_logged: u64,
    last_status: Option<Instant>,
    head: u64,
}

impl<T: Transport> Shipper<T> {
    fn new(name: &str, batch_size: usize, transport: T, ctx: &ShipContext) -> Self {
        Shipper {
            name: name.to_string(),
            batch_size,
            transport,
            spool: Spool::new(&ctx.audit_log),
            durable: ctx.durable.clone(),
            cursor_path: cursor::cursor_path(&ctx.state_dir, name),
            status_path: ctx.state_dir.join(format!("{name}.status.json")),
            delivered: Cursor {
                chain: String::new(),
                seq: 0,
                offset: 0,
            },
            written: 0,
            in_flight: VecDeque::new(),
            backoff: Backoff::new(BACKOFF_FIRST, BACKOFF_MAX),
            health: Health::default(),
            halted: None,
            permanent_pause: PERMANENT_PAUSE,
        }
    }

    async fn run(mut self) {
        let stored = match cursor::load(&self.cursor_path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    sink = %self.name,
                    "the cursor {} is unreadable ({e}); resending every retained audit file",
                    self.cursor_path.display()
                );
                None
            }
        };
        // The file holding the record after the cursor (the oldest retained one for a new
        // sink); its first record names the chain the cursor is checked against.
        let next = stored.as_ref().map_or(1, |c| c.seq.saturating_add(1));
        let first = loop {
            match self.spool.open_holding(next) {
                Ok(true) => match self.spool.first_line() {
                    Ok(Some(first)) => break first,
                    Ok(None) => {}
                    Err(e) => self.failed(&format!("cannot read the audit file: {e}")),
                },
                Ok(false) => {}
                Err(e) => self.failed(&format!("cannot read the audit file: {e}")),
            }
            tokio::time::sleep(POLL).await;
        };
        self.adopt(&first, stored);
        while self.halted.is_none() {
            if let Err(e) = self.step().await {
                self.transport.disconnect();
                self.rewind();
                let pause = match e.retry {
                    Retry::Permanent => {
                        self.refused(&e.message);
                        self.permanent_pause
                    }
                    Retry::Retriable => {
                        self.failed(&e.message);
                        self.backoff.next_delay()
                    }
                };
                self.write_status();
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Takes up the file whose first line is `first`, given the cursor `stored` from before.
    fn adopt(&mut self, first: &FirstLine, stored: Option<Cursor>) {
        let fresh = |seq| Cursor {
            chain: first.hash.clone(),
            seq,
            offset: 0,
        };
        self.delivered = match stored {
            None => fresh(0),
            Some(c) if c.chain == first.hash => {
                let last = self.spool.last_seq().ok().flatten().unwrap_or(0);
                if last < c.seq {
                    tracing::error!(
                        sink = %self.name,
                        "the audit file ends at seq {last}, before this sink's cursor ({}): it was cut; delivering from seq {}",
                        c.seq, last.saturating_add(1)
                    );
                    fresh(last)
                } else {
                    c
                }
            }
            Some(c) if first.seq > 1 => {
                if c.seq.saturating_add(1) < first.seq {
                    tracing::error!(
                        sink = %self.name,
                        "records {} to {} are no longer in any audit file ({} starts at seq {}): they were deleted before this sink read them; delivering from seq {}",
                        c.seq.saturating_add(1), first.seq - 1, self.spool.open_path().display(), first.seq, first.seq
                    );
                }
                if c.seq >= first.seq {
                    // The cursor is in a file this one does not continue (the current file was
                    // moved aside and the chain continued from the last rotated file): the
                    // records from `first.seq` on are new, whatever their seq.
                    tracing::error!(
                        sink = %self.name,
                        "the audit chain forked: this sink delivered through seq {} of another file, {} continues from seq {}; delivering it from there (the SIEM receives a second, different record for seqs {} to {})",
                        c.seq, self.spool.open_path().display(), first.seq - 1, first.seq, c.seq
                    );
                    fresh(first.seq - 1)
                } else {
                    fresh(c.seq)
                }
            }
            Some(c) => {
                tracing::warn!(
                    sink = %self.name,
                    "the audit file holds a new chain (seq 1 differs from the cursor's; it was at seq {}); delivering it from seq 1",
                    c.seq
                );
                fresh(0)
            }
        };
        self.written = self.delivered.seq;
        self.in_flight.clear();
        self.spool.seek(self.delivered.offset);
    }

    /// One turn: connect if needed, notice a broken connection, count confirmed batches as
    /// delivered, send the next batch or wait for one.
    async fn step(&mut self) -> Result<(), TransportError> {
        if !self.transport.is_connected() {
            self.transport.connect().await?;
        }
        if let Some(why) = self.transport.broken().await {
            return Err(TransportError::retriable(why));
        }
        self.confirm();
        let batch = self
            .spool
            .read(self.written, self.durable.get(), self.batch_size)
            .map_err(|e| format!("cannot read the audit file: {e}"))?;
        self.report_unreadable();
        let Some(last) = batch.last() else {
            // Caught up with the open file. Move to the file holding the next record only once
            // the open one is fully delivered, so a rewind never needs the file left behind.
            if self.in_flight.is_empty() {
                match self.spool.advance(self.delivered.seq.saturating_add(1)) {
                    Ok(true) => {
                        let first = self.spool.first_line().ok().flatten();
                        if let Some(first) = first {
                            let current = self.delivered.clone();
                            if let Some(why) = self.chain_break(&first, &current) {
                                self.halt(why);
                                return Ok(());
                            }
                            self.adopt(&first, Some(current));
                            // Retention reads the cursor: name the file now being read.
                            self.store_cursor();
                        }
                        return Ok(());
                    }
                    Ok(false) => {}
                    Err(e) => return Err(format!("cannot follow the audit file: {e}").into()),
                }
            }
            self.write_status_if_due();
            tokio::time::sleep(POLL).await;
            return Ok(());
        };
        let (seq, end) = (last.seq, last.end);
        self.transport.send(&batch).await?;
        self.written = seq;
        self.in_flight.push_back(InFlight {
            seq,
            end,
            written: Instant::now(),
        });
        self.confirm();
        self.recovered();
        self.write_status_if_due();
        Ok(())
    }

    /// Why the file the sink moved to cannot be taken as the next one, if it cannot: it must
    /// continue the last line read (`audit.rotated` with that line's hash as `prev`), be the
    /// same chain, or be the current file starting a new chain at seq 1 (a reset, which
    /// [`Shipper::adopt`] logs). Anything else is a file of another chain found by its seq —
    /// taking it would resend, go back, and resend again, forever.
    fn chain_break(&self, first: &FirstLine, current: &Cursor) -> Option<String> {
        if first.continues_left_file
            || first.hash == current.chain
            || (first.seq == 1 && self.spool.is_current())
        {
            return None;
        }
        Some(format!(
            "the audit file {} (first record seq {}) does not continue the one delivered through seq {}: the chain was reset or files were replaced beside rotated ones; delivery stops rather than resend in a loop (check the files with `loggate audit verify`, then restart the agent)",
            self.spool.open_path().display(),
            first.seq,
            current.seq
        ))
    }

    /// Stops delivery for good (until a restart): logged, and in the status file.
    fn halt(&mut self, why: String) {
        tracing::error!(sink = %self.name, "{why}");
        self.health.last_error = Some(why.clone());
        self.halted = Some(why);
        self.write_status();
    }

    /// Counts batches whose confirmation time has passed as delivered and persists the cursor.
    fn confirm(&mut self) {
        let wait = self.transport.confirm_after();
        let mut newest = None;
        while let Some(f) = self.in_flight.front() {
            if f.written.elapsed() < wait {
                break;
            }
            newest = Some((f.seq, f.end));
            self.in_flight.pop_front();
        }
        let Some((seq, end)) = newest else {
            return;
        };
        self.delivered.seq = seq;
        self.delivered.offset = end;
        self.store_cursor();
    }

    fn store_cursor(&mut self) {
        if let Err(e) = cursor::store(&self.cursor_path, &self.delivered) {
            // Delivery goes on; after a restart the sink resends from the older cursor.
            self.log_limited(&format!(
                "cannot store the cursor {}: {e}",
                self.cursor_path.display()
            ));
        }
    }

    /// After a failure: everything not delivered is sent again, from the cursor.
    fn rewind(&mut self) {
        self.in_flight.clear();
        self.written = self.delivered.seq;
        self.spool.seek(self.delivered.offset);
    }

    fn lag(&mut self) -> u64 {
        if let Ok(Some(head)) = self.spool.head_seq() {
            self.health.head = head;
        }
        self.health.head.saturating_sub(self.delivered.seq)
    }

    /// Bytes of the audit files not yet delivered: the rest of the file open now after the
    /// delivered offset, and every file after it in the chain (the rotated files written since,
    /// then the current one). What a SIEM outage costs in disk, which the record count does not
    /// say (records range from 300 bytes to a few KiB). Includes a last line still being
    /// written. 0 when nothing can be read (no file yet).
    ///
    /// The open file is measured through the reader's handle and every other file is told
    /// apart from it by (device, inode), never by path: during an outage the reader keeps the
    /// file it had open while rotations rename it and put new files at the current path, so
    /// the path names another file (a measure by path read ~0 after the first rotation).
    fn lag_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Some(open_len) = self.spool.open_len() else {
            return 0;
        };
        let open_id = self.spool.open_id();
        // A file other than the open one, measured by path; 0 when it is gone or is the open one.
        let other = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .filter(|m| (m.dev(), m.ino()) != open_id)
                .map_or(0, |m| m.len())
        };
        let current = self.spool.current_path();
        // Rotated files are named after the last seq they hold: those after the delivered
        // record are (wholly) not delivered, except the open one counted above.
        let later = crate::audit::rotated_files(current)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                crate::audit::rotated_last_seq(p).is_some_and(|seq| seq > self.delivered.seq)
            });
        later
            .map(|p| other(&p))
            .fold(
                open_len.saturating_sub(self.delivered.offset),
                u64::saturating_add,
            )
            .saturating_add(other(current))
    }

    fn failed(&mut self, why: &str) {
        self.health.failures += 1;
        self.health.last_error = Some(why.to_string());
        if self.health.down_since.is_none() {
            self.health.down_since = Some(Instant::now());
            self.health.last_log = None;
        }
        let lag = self.lag();
        let down = self.health.down_since.map_or(0, |t| t.elapsed().as_secs());
        if self.health.last_logged != why {
            self.health.last_log = None;
        }
        self.log_limited(&format!(
            "cannot deliver: {why}; retrying (down {down}s, {lag} records waiting, delivered through seq {})",
            self.delivered.seq
        ));
        self.health.last_logged = why.to_string();
    }

    /// A permanent refusal: counted like any failure, logged once (again only when the reason
    /// changes or after a delivery), and retried only after [`PERMANENT_PAUSE`].
    fn refused(&mut self, why: &str) {
        self.health.failures += 1;
        self.health.last_error = Some(why.to_string());
        if self.health.down_since.is_none() {
            self.health.down_since = Some(Instant::now());
        }
        if self.health.refused.as_deref() == Some(why) {
            return;
        }
        self.health.refused = Some(why.to_string());
        self.health.refusals_logged += 1;
        tracing::error!(
            sink = %self.name,
            "the receiver refused delivery: {why}; sending it again cannot help until the sink's configuration or the receiver changes (token, URL, size limits); trying again every {}s and saying this again only if the reason changes ({} records waiting, delivered through seq {})",
            self.permanent_pause.as_secs(),
            self.lag(),
            self.delivered.seq
        );
    }

    fn recovered(&mut self) {
        self.backoff.reset();
        self.health.refused = None;
        if let Some(since) = self.health.down_since.take() {
            tracing::info!(
                sink = %self.name,
                "delivering again after {}s and {} failed attempts",
                since.elapsed().as_secs(),
                self.health.failures
            );
            self.health.failures = 0;
            self.health.last_log = None;
        }
    }

    fn report_unreadable(&mut self) {
        if self.spool.unreadable > 0 {
            let n = std::mem::take(&mut self.spool.unreadable);
            tracing::error!(
                sink = %self.name,
                "{n} audit line(s) without a readable seq were not sent (`loggate audit verify` names them)"
            );
        }
    }

    fn log_limited(&mut self, message: &str) {
        if self
            .health
            .last_log
            .is_some_and(|t| t.elapsed() < LOG_EVERY)
        {
            return;
        }
        self.health.last_log = Some(Instant::now());
        tracing::warn!(sink = %self.name, "{message}");
    }

    fn write_status_if_due(&mut self) {
        if self
            .health
            .last_status
            .is_none_or(|t| t.elapsed() >= STATUS_EVERY)
        {
            self.write_status();
        }
    }

    /// `<name>.status.json`: what an operator (or a test) reads to see a sink behind or down.
    fn write_status(&mut self) {
        self.health.last_status = Some(Instant::now());
        let lag = self.lag();
        let up = self.health.down_since.is_none() && self.transport.is_connected();
        if up && lag > 10 * self.batch_size as u64 {
            self.log_limited(&format!("{lag} records behind the audit file"));
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let status = serde_json::json!({
            "sink": self.name,
            "state": match (&self.halted, up, &self.health.refused) {
                (Some(_), _, _) => "chain_break",
                (None, true, _) => "up",
                (None, false, Some(_)) => "refused",
                (None, false, None) => "down",
            },
            "delivered_seq": self.delivered.seq,
            "written_seq": self.written,
            "head_seq": self.health.head,
            "lag": lag,
            "lag_bytes": self.lag_bytes(),
            "down_for_ms": self
                .health
                .down_since
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)),
            "last_error": self.health.last_error,
            "updated_ms": now_ms,
        });
        let mut tmp = self.status_path.as_os_str().to_owned();
        tmp.push(".tmp");
        let written = std::fs::write(&tmp, status.to_string())
            .and_then(|()| std::fs::rename(&tmp, &self.status_path));
        if let Err(e) = written {
            self.log_limited(&format!("cannot write {}: {e}", self.status_path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditLog;
    use std::sync::{Arc, Mutex};

    /// A receiver in memory: records what it was sent; refuses the sends numbered in `refuse`.
    #[derive(Clone, Default)]
    struct Fake {
        sent: Arc<Mutex<Vec<u64>>>,
        refuse: Vec<usize>,
        sends: Arc<Mutex<usize>>,
        connected: bool,
        /// Like syslog: sent batches count only after this long on a healthy connection.
        confirm: Duration,
        /// The connection breaks (silently) right after this send succeeds.
        break_after: Option<usize>,
        broken: bool,
        /// While set, the receiver is unreachable.
        down: Arc<std::sync::atomic::AtomicBool>,
        /// When set, every send is refused with this kind of error.
        refuse_all: Option<Retry>,
    }

    impl Transport for Fake {
        async fn connect(&mut self) -> Result<(), TransportError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("receiver down".into());
            }
            self.connected = true;
            Ok(())
        }
        fn disconnect(&mut self) {
            self.connected = false;
        }
        fn is_connected(&self) -> bool {
            self.connected
        }
        async fn send(&mut self, batch: &[Record]) -> Result<(), TransportError> {
            let n = {
                let mut sends = self.sends.lock().unwrap();
                *sends += 1;
                *sends
            };
            if let Some(retry) = self.refuse_all {
                return Err(TransportError {
                    retry,
                    message: "the collector answered 403 Forbidden".into(),
                });
            }
            if self.refuse.contains(&n) {
                return Err(format!("refused send {n}").into());
            }
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("receiver down".into());
            }
            self.sent
                .lock()
                .unwrap()
                .extend(batch.iter().map(|r| r.seq));
            self.broken = self.break_after == Some(n);
            Ok(())
        }
        fn confirm_after(&self) -> Duration {
            self.confirm
        }
        async fn broken(&mut self) -> Option<String> {
            std::mem::take(&mut self.broken).then(|| "reset".to_string())
        }
    }

    /// Runs a shipper with `fake` until it has sent `until` (`times` times), then stops it.
    fn ship_until(ctx: &ShipContext, fake: &Fake, until: u64) -> Vec<u64> {
        ship_until_n(ctx, fake, until, 1)
    }

    fn ship_until_n(ctx: &ShipContext, fake: &Fake, until: u64, times: usize) -> Vec<u64> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let shipper = Shipper::new("t", 4, fake.clone(), ctx);
        local.block_on(&runtime, async {
            let task = tokio::task::spawn_local(shipper.run());
            let deadline = Instant::now() + Duration::from_secs(20);
            while fake
                .sent
                .lock()
                .unwrap()
                .iter()
                .filter(|s| **s == until)
                .count()
                < times
            {
                assert!(Instant::now() < deadline, "{until} never sent");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            task.abort();
        });
        fake.sent.lock().unwrap().clone()
    }

    fn context(dir: &std::path::Path) -> ShipContext {
        ShipContext {
            audit_log: dir.join("audit.jsonl"),
            state_dir: dir.join("sinks"),
            host: "h".into(),
            app_name: "test".into(),
            // `append` below syncs every record.
            durable: DurableSeq::fixed(u64::MAX),
        }
    }

    fn append(ctx: &ShipContext, n: usize) {
        let mut log = AuditLog::open(&ctx.audit_log, "h").unwrap();
        for _ in 0..n {
            log.append(&crate::audit::events::TestEvent::n(0)).unwrap();
        }
    }

    #[test]
    fn refused_batches_are_resent_and_the_cursor_resumes_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        append(&ctx, 10);
        let fake = Fake {
            refuse: vec![1, 3],
            ..Fake::default()
        };
        let sent = ship_until(&ctx, &fake, 10);
        // Batches of 4: 1-4 refused, 1-4, 5-8 refused, 5-8, 9-10; nothing skipped, nothing twice.
        assert_eq!(sent, (1..=10).collect::<Vec<_>>());
        let stored = cursor::load(&cursor::cursor_path(&ctx.state_dir, "t"))
            .unwrap()
            .unwrap();
        assert_eq!(stored.seq, 10);

        // A restart resumes after the cursor.
        append(&ctx, 3);
        let fake = Fake::default();
        assert_eq!(ship_until(&ctx, &fake, 13), vec![11, 12, 13]);
    }

    /// Runs a shipper whose every send fails with `retry` for `window`; returns how many sends
    /// it tried and its status file.
    fn refused_for(retry: Retry, window: Duration) -> (usize, serde_json::Value) {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        append(&ctx, 3);
        let fake = Fake {
            refuse_all: Some(retry),
            ..Fake::default()
        };
        let mut shipper = Shipper::new("t", 4, fake.clone(), &ctx);
        // Longer than the window, as the production pause (300 s) is longer than any test.
        shipper.permanent_pause = Duration::from_secs(60);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = runtime.block_on(async { tokio::time::timeout(window, shipper.run()).await });
        let status: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ctx.state_dir.join("t.status.json")).unwrap())
                .unwrap();
        assert!(fake.sent.lock().unwrap().is_empty());
        let sends = *fake.sends.lock().unwrap();
        (sends, status)
    }

    #[test]
    fn a_permanent_refusal_is_not_retried_in_a_loop_and_a_retriable_one_is_retried() {
        let window = Duration::from_millis(1500);
        let (sends, status) = refused_for(Retry::Permanent, window);
        assert_eq!(
            sends, 1,
            "a permanent refusal was sent again within {window:?}"
        );
        assert_eq!(status["state"], "refused", "{status}");
        assert_eq!(
            status["last_error"], "the collector answered 403 Forbidden",
            "{status}"
        );
        // The same receiver failing in a retriable way is tried again after the back-off
        // (250 ms, doubling): several times in the same window.
        let (sends, status) = refused_for(Retry::Retriable, window);
        assert!(sends >= 3, "a retriable failure was tried {sends} times");
        assert_eq!(status["state"], "down", "{status}");
    }

    #[test]
    fn a_permanent_refusal_is_logged_once_per_reason_until_a_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let mut shipper = Shipper::new("t", 4, Fake::default(), &ctx);
        for _ in 0..5 {
            shipper.refused("the collector answered 403 Forbidden");
        }
        assert_eq!(shipper.health.refusals_logged, 1);
        assert_eq!(shipper.health.failures, 5);
        shipper.refused("the collector answered 400 Bad Request");
        assert_eq!(
            shipper.health.refusals_logged, 2,
            "a new reason is said at once"
        );
        shipper.recovered();
        shipper.refused("the collector answered 400 Bad Request");
        assert_eq!(
            shipper.health.refusals_logged, 3,
            "after a delivery it is news again"
        );
    }

    #[test]
    fn a_plain_transport_failure_is_retriable() {
        let e: TransportError = format!("cannot connect to {}: refused", "siem:6514").into();
        assert_eq!(e.retry, Retry::Retriable);
        assert_eq!(TransportError::permanent("x").retry, Retry::Permanent);
    }

    #[test]
    fn a_new_chain_does_not_inherit_the_old_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        append(&ctx, 5);
        assert_eq!(ship_until(&ctx, &Fake::default(), 5).len(), 5);
        // The file is replaced by a new chain (seq 1 again, different first line).
        std::fs::remove_file(&ctx.audit_log).unwrap();
        append(&ctx, 2);
        assert_eq!(ship_until(&ctx, &Fake::default(), 2), vec![1, 2]);
    }

    #[test]
    fn a_connection_broken_before_confirmation_resends_the_unconfirmed_batches() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        append(&ctx, 6);
        let fake = Fake {
            confirm: Duration::from_secs(30),
            break_after: Some(2),
            ..Fake::default()
        };
        let sent = ship_until_n(&ctx, &fake, 6, 2);
        let sent_again = ship_until(&ctx, &Fake::default(), 6);
        // 1-4 and 5-6 were written, the connection broke before either was confirmed: both
        // are sent again; nothing was counted as delivered, so a restart sends them again too.
        assert_eq!(sent, vec![1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6]);
        assert_eq!(sent_again, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_sink_cursor_on_an_old_layout_file_resumes_after_the_upgrade_without_loss_or_resend() {
        // An earlier build wrote records 1-20 (seq and prev at the top level) and its sink
        // delivered them (the cursor's format did not change).
        let old = include_str!("../testdata/old-layout.jsonl");
        let lines: Vec<&str> = old.lines().collect();
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        std::fs::write(&ctx.audit_log, format!("{}\n", lines[..20].join("\n"))).unwrap();
        assert_eq!(
            ship_until(&ctx, &Fake::default(), 20),
            (1..=20).collect::<Vec<_>>()
        );
        // The old build wrote 21-26 before it stopped; this build continues the file at 27 in
        // the new layout.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&ctx.audit_log)
            .unwrap();
        std::io::Write::write_all(
            &mut file,
            format!("{}\n", lines[20..].join("\n")).as_bytes(),
        )
        .unwrap();
        append(&ctx, 3);
        let text = std::fs::read_to_string(&ctx.audit_log).unwrap();
        assert!(text.lines().nth(26).unwrap().starts_with("{\"unmapped\""));
        assert_eq!(
            ship_until(&ctx, &Fake::default(), 29),
            (21..=29).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_rotated_file_continues_from_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        append(&ctx, 3);
        assert_eq!(ship_until(&ctx, &Fake::default(), 3), vec![1, 2, 3]);
        // Rotation: the file moves away; the new one continues the chain at seq 4.
        let mut log = AuditLog::open(&ctx.audit_log, "h").unwrap();
        log.rotate(10).unwrap();
        drop(log);
        append(&ctx, 1);
        assert_eq!(ship_until(&ctx, &Fake::default(), 5), vec![4, 5]);
    }

    #[test]
    fn a_sink_delivers_each_record_once_after_a_crash_between_rename_and_first_record() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        let mut log = AuditLog::open(&ctx.audit_log, "h").unwrap();
        append_and_rotate(&mut log, 3); // 1-3 rotated; 4 is the new file's audit.rotated
        append(&ctx, 2); // 5-6
        drop(log);
        // `rotate` renamed the file and died before the new one held a record.
        std::fs::rename(&ctx.audit_log, dir.path().join("audit.jsonl.000000000006")).unwrap();
        append(&ctx, 2); // the restart continues the chain: 7 (audit.rotated), 8-9
        let sent = ship_until(&ctx, &Fake::default(), 9);
        assert_eq!(sent, (1..=9).collect::<Vec<_>>());
    }

    #[test]
    fn a_cursor_at_the_largest_seq_is_refused_and_everything_is_resent() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        append(&ctx, 3);
        let chain = crate::audit::first_line_hash(&ctx.audit_log)
            .unwrap()
            .unwrap();
        let forged = Cursor {
            chain,
            seq: u64::MAX,
            offset: 0,
        };
        cursor::store(&cursor::cursor_path(&ctx.state_dir, "t"), &forged).unwrap();
        assert_eq!(ship_until(&ctx, &Fake::default(), 3), vec![1, 2, 3]);
    }

    #[test]
    fn a_sink_stops_at_a_chain_reset_beside_rotated_files_instead_of_looping() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        let mut log = AuditLog::open(&ctx.audit_log, "h").unwrap();
        append_and_rotate(&mut log, 10); // chain A: audit.jsonl.000000000010
        drop(log);
        // A new chain B at seq 1 beside it, as an earlier build started one (written elsewhere
        // and moved in: this build's `open` continues A instead).
        let other = tempfile::tempdir().unwrap();
        let mut b = AuditLog::open(&other.path().join("audit.jsonl"), "h").unwrap();
        for _ in 0..3 {
            b.append(&crate::audit::events::TestEvent::n(0)).unwrap();
        }
        std::fs::rename(other.path().join("audit.jsonl"), &ctx.audit_log).unwrap();
        // The sink delivers A, takes B as a reset, and at B's end is handed A's file again
        // (it holds seq 4 by its name): it must stop there, not resend A and B forever.
        let fake = Fake::default();
        let sent = fake.sent.clone();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let ctx2 = ctx.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(Shipper::new("t", 4, fake, &ctx2).run());
            let _ = done_tx.send(());
        });
        let stopped = done_rx.recv_timeout(Duration::from_secs(20)).is_ok();
        let sent = sent.lock().unwrap().clone();
        assert!(
            stopped,
            "the sink never stopped; sent {} records",
            sent.len()
        );
        let expected: Vec<u64> = (1..=10).chain(1..=3).collect();
        assert_eq!(sent, expected);
        let status: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ctx.state_dir.join("t.status.json")).unwrap())
                .unwrap();
        assert_eq!(status["state"], "chain_break", "{status}");
    }

    #[test]
    fn a_sink_delivers_the_continued_chain_after_the_audit_file_was_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        let mut log = AuditLog::open(&ctx.audit_log, "h").unwrap();
        append_and_rotate(&mut log, 3); // 1-3 rotated; 4 is the new file's audit.rotated
        drop(log);
        append(&ctx, 4); // 5-8
        assert_eq!(
            ship_until(&ctx, &Fake::default(), 8),
            (1..=8).collect::<Vec<_>>()
        );
        // The operator moves the current file aside; the restart continues from seq 3.
        std::fs::rename(&ctx.audit_log, dir.path().join("audit.jsonl.bad")).unwrap();
        append(&ctx, 2); // 4 (audit.rotated), 5-6: new records, below the cursor's seq
        assert_eq!(ship_until(&ctx, &Fake::default(), 6), vec![4, 5, 6]);
    }

    /// Appends `n` events to `log`, then rotates it.
    /// The status file of a sink whose receiver stays down, after it had time to write it.
    fn status_while_down(ctx: &ShipContext) -> serde_json::Value {
        let fake = Fake::default();
        fake.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let shipper = Shipper::new("t", 4, fake, ctx);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let status_path = ctx.state_dir.join("t.status.json");
        let _ = std::fs::remove_file(&status_path);
        let _ = runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(1500), shipper.run()).await
        });
        serde_json::from_slice(&std::fs::read(&status_path).unwrap()).unwrap()
    }

    fn file_len(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    #[test]
    fn a_down_sink_reports_its_lag_in_bytes_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        let mut log = AuditLog::open(&ctx.audit_log, "h").unwrap();
        append_and_rotate(&mut log, 3);
        append_and_rotate(&mut log, 2);
        drop(log);
        append(&ctx, 2);
        let files: Vec<_> = crate::audit::rotated_files(&ctx.audit_log)
            .unwrap()
            .into_iter()
            .chain([ctx.audit_log.clone()])
            .collect();
        assert_eq!(files.len(), 3, "{files:?}");
        // Nothing delivered: every byte of every retained file is behind.
        let status = status_while_down(&ctx);
        assert_eq!(status["state"], "down", "{status}");
        let all: u64 = files.iter().map(|f| file_len(f)).sum();
        assert_eq!(status["lag_bytes"], all, "{status}");

        // Everything delivered, then two more records while the receiver is down: their bytes.
        let head = crate::audit::ship::spool::Spool::new(&ctx.audit_log)
            .head_seq()
            .unwrap()
            .unwrap();
        ship_until(&ctx, &Fake::default(), head);
        let before = file_len(&ctx.audit_log);
        append(&ctx, 2);
        let status = status_while_down(&ctx);
        assert_eq!(status["lag"], 2, "{status}");
        assert_eq!(
            status["lag_bytes"],
            file_len(&ctx.audit_log) - before,
            "{status}"
        );
    }

    #[test]
    fn a_down_sink_counts_the_file_it_holds_and_every_rotation_since_in_its_lag_bytes() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        let mut log = AuditLog::open(&ctx.audit_log, "h").unwrap();
        for _ in 0..3 {
            log.append(&crate::audit::events::TestEvent::n(0)).unwrap();
        }
        let fake = Fake::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worker = {
            let (ctx, fake, stop) = (ctx.clone(), fake.clone(), stop.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let shipper = Shipper::new("t", 4, fake, &ctx);
                    tokio::select! {
                        _ = shipper.run() => {}
                        _ = async { while !stop.load(SeqCst) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        } } => {}
                    }
                });
            })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !fake.sent.lock().unwrap().contains(&3) {
            assert!(Instant::now() < deadline, "3 never sent");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Delivered through the end of the file the sink holds open (confirmed at once).
        let delivered = file_len(&ctx.audit_log);
        // The SIEM goes away; the file the sink holds is rotated twice meanwhile.
        fake.down.store(true, SeqCst);
        append_and_rotate(&mut log, 2);
        append_and_rotate(&mut log, 2);
        log.append(&crate::audit::events::TestEvent::n(0)).unwrap();
        let last = log.written().seq;
        let files: Vec<_> = crate::audit::rotated_files(&ctx.audit_log)
            .unwrap()
            .into_iter()
            .chain([ctx.audit_log.clone()])
            .collect();
        assert_eq!(files.len(), 3, "{files:?}");
        let behind = files.iter().map(|f| file_len(f)).sum::<u64>() - delivered;
        let status_path = ctx.state_dir.join("t.status.json");
        let read_status = || -> serde_json::Value {
            std::fs::read(&status_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut status = read_status();
        while status["head_seq"] != last || status["state"] != "down" {
            assert!(
                Instant::now() < deadline,
                "no status at head {last}: {status}"
            );
            std::thread::sleep(Duration::from_millis(20));
            status = read_status();
        }
        stop.store(true, SeqCst);
        worker.join().unwrap();
        assert_eq!(status["delivered_seq"], 3, "{status}");
        assert_eq!(status["lag_bytes"], behind, "{status}");
    }

    fn append_and_rotate(log: &mut AuditLog, n: usize) {
        for _ in 0..n {
            log.append(&crate::audit::events::TestEvent::n(0)).unwrap();
        }
        log.rotate(100).unwrap();
    }

    /// Each seq once, in order: what a sink must have delivered (resends aside).
    fn in_order_once(sent: &[u64]) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for s in sent {
            if out.last().is_none_or(|last| s > last) {
                out.push(*s);
            } else {
                assert!(out.contains(s), "seq {s} sent out of order: {sent:?}");
            }
        }
        out
    }

    #[test]
    fn a_receiver_down_across_two_rotations_gets_every_rotated_file_in_order() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        let mut log = AuditLog::open(&ctx.audit_log, "h").unwrap();
        for _ in 0..3 {
            log.append(&crate::audit::events::TestEvent::n(0)).unwrap();
        }
        let fake = Fake::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worker = {
            let (ctx, fake, stop) = (ctx.clone(), fake.clone(), stop.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let shipper = Shipper::new("t", 4, fake, &ctx);
                    tokio::select! {
                        _ = shipper.run() => {}
                        _ = async { while !stop.load(SeqCst) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        } } => {}
                    }
                });
            })
        };
        let wait_for = |seq: u64| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !fake.sent.lock().unwrap().contains(&seq) {
                assert!(Instant::now() < deadline, "{seq} never sent");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        wait_for(3);
        // The receiver goes away; the sink's open file is rotated twice meanwhile.
        fake.down.store(true, SeqCst);
        append_and_rotate(&mut log, 2);
        append_and_rotate(&mut log, 2);
        log.append(&crate::audit::events::TestEvent::n(0)).unwrap();
        let last = log.written().seq;
        std::thread::sleep(Duration::from_millis(300));
        fake.down.store(false, SeqCst);
        wait_for(last);
        stop.store(true, SeqCst);
        worker.join().unwrap();
        let sent = fake.sent.lock().unwrap().clone();
        assert_eq!(
            in_order_once(&sent),
            (1..=last).collect::<Vec<_>>(),
            "{sent:?}"
        );
    }

    #[test]
    fn a_restarted_sink_walks_the_rotated_files_from_its_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        let mut log = AuditLog::open(&ctx.audit_log, "h").unwrap();
        append_and_rotate(&mut log, 2); // seq 1-2, rotated; 3 opens the new file
        log.append(&crate::audit::events::TestEvent::n(0)).unwrap();
        let first_run = log.written().seq;
        assert_eq!(
            ship_until(&ctx, &Fake::default(), first_run),
            (1..=first_run).collect::<Vec<_>>()
        );
        // Down (no sink running) across two rotations, then started again.
        append_and_rotate(&mut log, 3);
        append_and_rotate(&mut log, 3);
        log.append(&crate::audit::events::TestEvent::n(0)).unwrap();
        let last = log.written().seq;
        assert_eq!(
            ship_until(&ctx, &Fake::default(), last),
            (first_run + 1..=last).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_new_sink_starts_at_the_oldest_retained_file() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        std::fs::create_dir_all(&ctx.state_dir).unwrap();
        let mut log = AuditLog::open(&ctx.audit_log, "h").unwrap();
        append_and_rotate(&mut log, 2);
        append_and_rotate(&mut log, 2);
        let last = log.written().seq;
        assert_eq!(
            ship_until(&ctx, &Fake::default(), last),
            (1..=last).collect::<Vec<_>>()
        );
    }
}
