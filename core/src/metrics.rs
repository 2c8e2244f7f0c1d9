//! Prometheus metrics of both daemons: the counters, the `[metrics]` configuration and the tiny
//! HTTP/1.1 server that answers `GET /metrics` (OpenMetrics text).
//!
//! # What is counted, and what never is
//!
//! The counters live in process-wide statics ([`common`], [`agent`], [`controller`]) so that the
//! code that sees an event bumps one counter in one line, without the daemon's state threaded
//! through. **Every label has a bounded set of values fixed by the code or the configuration**:
//! a denial code, a handshake refusal reason, an audit event name, a detector name of a
//! configured profile, a sink name, a request state. There is deliberately no label for a
//! subject, a host, a path or a peer address: how often *who* was refused reading *what* is
//! exactly what the audit stream keeps behind its access controls, and a metrics endpoint is
//! read by whoever runs Prometheus. (It would also make the series count the attacker's choice.)
//!
//! # Who can scrape
//!
//! Off by default. When on (`[metrics] enabled = true`) it listens on loopback — the agent on
//! `127.0.0.1:9464`, the controller on `127.0.0.1:9465`, so both fit on one host — unless
//! `listen` says otherwise; an address that is not loopback is refused at load unless
//! `allow_remote = true` says the operator means it.
//!
//! Loopback is not a boundary between local users, and some series say what `status_readers`
//! protects: `bypass_*` is a live "was my read of the file seen?" detector, `audit_sink_up`
//! and the sink lag say whether the SIEM hears the audit right now. Those series are served
//! only to a scraper that presents the bearer token of `[metrics] token_file` (Prometheus'
//! `authorization.credentials_file`), compared in constant time; with a token configured a
//! request without it gets 401 and no series at all; without one, the endpoint serves the
//! other series only.
//!
//! # Bounds (a local user must not be able to blind the scraper)
//!
//! Connections are always accepted. A request head must arrive within [`HEAD_DEADLINE`] and
//! fit in [`MAX_REQUEST_HEAD`] bytes; one request per connection. At most [`MAX_CONNECTIONS`]
//! are served at once: when all are taken, the oldest connection still sending its head — of
//! the source holding the most connections — is dropped for the new one, and when none is
//! idle the new one gets 503 at once. A `Host` that is not an IP literal, `localhost` or a
//! name of `[metrics] hosts` gets 421 (DNS rebinding: a web page must not read the metrics
//! through the operator's browser). Anything but `GET /metrics` gets 404.

use anyhow::{bail, Context};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use serde::Deserialize;
use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The agent's endpoint when `[metrics]` names none: Prometheus' port range, loopback only.
pub const AGENT_DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);
/// The controller's: the next port, so that a controller and an agent on one host both start.
pub const CONTROLLER_DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9465);
/// The longest request head (request line and headers) read; a longer one gets its connection
/// closed.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A request head must arrive whole within this (Prometheus sends it at once).
pub const HEAD_DEADLINE: Duration = Duration::from_secs(1);
/// Writing the answer must finish within this.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; see the module docs for what happens to more.
pub const MAX_CONNECTIONS: usize = 16;
/// The shortest bearer token accepted from `token_file`.
pub const MIN_TOKEN_BYTES: usize = 16;

/// `[metrics]` as written in a daemon's configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// Serve `/metrics` (default: no).
    #[serde(default)]
    pub enabled: bool,
    /// Where (default `127.0.0.1:9464` for the agent, `127.0.0.1:9465` for the controller).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Whether `listen` may be an address other machines reach (default: no; see the module
    /// docs for why).
    #[serde(default)]
    pub allow_remote: bool,
    /// A file holding the bearer token scrapers must present; without it the bypass and sink
    /// series are not served.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Host names (besides IP literals and `localhost`) a request's `Host` may carry.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// The bearer token of `[metrics] token_file`; never printed.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Whether `presented` is this token, in time that does not depend on where they differ
    /// (both are hashed first, so not even on the presented length).
    fn matches(&self, presented: &[u8]) -> bool {
        use sha2::Digest;
        let (a, b) = (
            sha2::Sha256::digest(&self.0),
            sha2::Sha256::digest(presented),
        );
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

/// A validated `[metrics]`: where to listen and who may read what.
#[derive(Debug, Clone)]
pub struct MetricsEndpoint {
    /// Address the `/metrics` HTTP listener binds: loopback unless `allow_remote` was set.
    pub listen: SocketAddr,
    /// With a token, every series for whoever presents it and nothing for others; without,
    /// the series that say nothing of bypass or sinks.
    pub token: Option<Token>,
    /// Host names accepted in `Host` besides IP literals and `localhost` (lowercase).
    pub hosts: Vec<String>,
}

impl MetricsFile {
    /// The endpoint to serve, `None` when metrics are off; an error for a non-loopback
    /// address without `allow_remote = true`, or a token file that cannot be read or is short.
    pub fn validate(&self, daemon: Daemon) -> anyhow::Result<Option<MetricsEndpoint>> {
        if !self.enabled {
            return Ok(None);
        }
        let listen = self.listen.unwrap_or(match daemon {
            Daemon::Agent => AGENT_DEFAULT_LISTEN,
            Daemon::Controller => CONTROLLER_DEFAULT_LISTEN,
        });
        if !listen.ip().is_loopback() && !self.allow_remote {
            bail!(
                "metrics.listen {listen} is not a loopback address: listen on 127.0.0.1, or set \
                 allow_remote = true (and a token_file) once a firewall limits who can reach it"
            );
        }
        let token = match &self.token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!(
                        "metrics.token_file {}: cannot read it; create it (mode 0640, group \
                         loggate) with a random token",
                        path.display()
                    )
                })?;
                let token = text.trim();
                if token.len() < MIN_TOKEN_BYTES || token.bytes().any(|b| b.is_ascii_whitespace()) {
                    bail!(
                        "metrics.token_file {}: the token must be one word of at least \
                         {MIN_TOKEN_BYTES} bytes (e.g. `openssl rand -hex 32`)",
                        path.display()
                    );
                }
                Some(Token(Arc::from(token.as_bytes())))
            }
        };
        Ok(Some(MetricsEndpoint {
            listen,
            token,
            hosts: self.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }))
    }
}

/// One label `reason`, `event`, `detector`, … with a value from a bounded set.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The value, from a fixed set of `&'static str` so the series count stays bounded.
    pub reason: &'static str,
}

/// One label `event`: an audit event name from the catalogue.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    /// The audit event name (`read.allowed`, `grant.issued`, …), a catalogue constant.
    pub event: &'static str,
}

/// One label `kind`: a bypass-audit event name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The bypass event name (`bypass.read`, `bypass.finding`, …), a fixed constant.
    pub kind: &'static str,
}

/// One label `state`: an access request's state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state entered (`pending`, `approved`, `denied`, `cancelled`, `expired`).
    pub state: &'static str,
}

/// A name from the configuration (a sink's, a detector's): bounded by the configuration.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    /// The sink's name as configured.
    pub sink: String,
}

/// One label `detector`: a redaction detector's name, bounded by the redaction profiles.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectorLabel {
    /// The detector's name as the redaction profile defines it.
    pub detector: String,
}

/// What both daemons count.
#[derive(Default)]
pub struct CommonMetrics {
    /// Audit records appended by this process through its event log, by event name (the
    /// catalogue), counted when appended — before the group sync that makes them durable.
    /// Checkpoint and rotation records (`audit.checkpoint`, `audit.rotated`), written by the
    /// audit runtime itself, are not counted: this counts what happened, not the chain's own
    /// bookkeeping.
    pub audit_records: Family<EventLabel, Counter>,
    /// TLS handshakes refused, by [`crate::tls_accept::RefusalReason`]; those summarised
    /// (over the report rate, evicted, reset within a victim's grace) are counted too.
    pub handshake_refusals: Family<ReasonLabel, Counter>,
    /// Records of the audit file not yet delivered to each SIEM sink (from the sink's status
    /// file, refreshed at each scrape).
    pub sink_lag_records: Family<SinkLabel, Gauge>,
    /// Bytes of the audit files not yet delivered to each SIEM sink (from the sink's status
    /// file, refreshed at each scrape): what an outage costs in disk.
    pub sink_lag_bytes: Family<SinkLabel, Gauge>,
    /// 1 when the sink's receiver is connected and delivering, else 0.
    pub sink_up: Family<SinkLabel, Gauge>,
}

/// What the agent counts.
#[derive(Default)]
pub struct AgentMetrics {
    /// `ReadLog` requests received (allowed or not).
    pub read_requests: Counter,
    /// Requests refused, by denial code (`read.denied`'s `reason_code`).
    pub read_denials: Family<ReasonLabel, Counter>,
    /// Bytes sent to readers (after redaction), counted when each stream ends.
    pub bytes_served: Counter,
    /// Redactions made, by detector, counted when each stream ends.
    pub redactions: Family<DetectorLabel, Counter>,
    /// Streams open now.
    pub live_streams: Gauge,
    /// Bypass-audit records written, by event name (`bypass.read`, `bypass.finding`, …).
    pub bypass_events: Family<KindLabel, Counter>,
    /// Bypass events the kernel could not hand over (ring buffer full, fanotify overflow).
    pub bypass_events_lost: Counter,
    /// Valid grants held (refreshed at each scrape).
    pub grants_held: Gauge,
}

/// What the controller counts.
pub struct ControllerMetrics {
    /// Agents with a `WatchGrants` stream open now.
    pub connected_agents: Gauge,
    /// Grants signed and handed out, counted when issued (direct or on approval).
    pub grants_issued: Counter,
    /// Grants revoked, counted once the store has recorded the revocation.
    pub grants_revoked: Counter,
    /// Access requests entering each state (`pending`, `approved`, `denied`, `cancelled`,
    /// `expired`).
    pub access_requests: Family<StateLabel, Counter>,
    /// From a grant change's commit to its taking by each watch stream covering it (seconds):
    /// one observation per stream and live change. Observed by every stream, so lock-free
    /// ([`LatencyHistogram`]).
    pub fanout_latency: LatencyHistogram,
    /// Reads of the revision log (`changes_after`: the change feed's, and every stream's
    /// catch-up, 500 rows at most each).
    pub log_reads: Counter,
    /// Rows those reads returned (`log_rows / log_reads`: rows per query).
    pub log_rows: Counter,
    /// Commit times of recent revisions, for `fanout_latency` (bounded: [`COMMITS_KEPT`]);
    /// looked up once per change by the change feed ([`ControllerMetrics::commit_time`]).
    commits: Mutex<VecDeque<(u64, Instant)>>,
}

/// The upper bound of [`LatencyHistogram`]'s first bucket, in nanoseconds (100 µs).
const LATENCY_FIRST_BOUND_NANOS: u64 = 100_000;
/// [`LatencyHistogram`]'s buckets with a finite bound (100 µs × 2^i, i < 18: up to ~13 s);
/// one more counts the rest (`+Inf`).
pub const LATENCY_BUCKETS: usize = 18;

/// A histogram of durations whose `observe` takes no lock: a relaxed atomic add to its bucket
/// and one to its sum, so that the 10,000 watch streams of a change observing at once never
/// wait for each other (prometheus-client's `Histogram` takes one mutex per observation).
/// Its buckets are those of `exponential_buckets(0.0001, 2.0, 18)`: the upper bounds 100 µs ×
/// 2^i, inclusive, as Prometheus' `le`.
///
/// A scrape reads each bucket once and reports their sum as the count, so the buckets and the
/// count always agree; the sum (whole microseconds: 584,000 years before it wraps) may include an observation whose
/// bucket the scrape read before it landed, a difference of the few observations in flight,
/// gone at the next scrape.
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram(Arc<LatencyCounts>);

#[derive(Debug, Default)]
struct LatencyCounts {
    buckets: [std::sync::atomic::AtomicU64; LATENCY_BUCKETS + 1],
    sum_micros: std::sync::atomic::AtomicU64,
}

impl LatencyHistogram {
    /// The bucket of `nanos`: the first whose bound (100 µs × 2^i) is ≥ it, or the last
    /// (`+Inf`).
    fn bucket(nanos: u64) -> usize {
        // ⌈nanos / 100 µs⌉ ≤ 2^i ⟺ i ≥ bit length of (nanos − 1) / 100 µs.
        let steps = nanos.saturating_sub(1) / LATENCY_FIRST_BOUND_NANOS;
        ((u64::BITS - steps.leading_zeros()) as usize).min(LATENCY_BUCKETS)
    }

    /// Counts one duration.
    pub fn observe(&self, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.0.buckets[Self::bucket(nanos)].fetch_add(1, Relaxed);
        self.0
            .sum_micros
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// How many durations were observed.
    pub fn count(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }
}

impl prometheus_client::encoding::EncodeMetric for LatencyHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut count = 0u64;
        let mut bound = LATENCY_FIRST_BOUND_NANOS as f64 / 1e9;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS + 1);
        for (i, b) in self.0.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            count += n;
            let le = if i == LATENCY_BUCKETS {
                f64::INFINITY
            } else {
                bound
            };
            buckets.push((le, n));
            bound *= 2.0;
        }
        let sum = self.0.sum_micros.load(Relaxed) as f64 / 1e6;
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// Recent revisions whose commit time is kept; a change sent later than that many commits
/// after its own (an agent catching up) is not a fan-out and is not observed.
pub const COMMITS_KEPT: usize = 4096;

impl Default for ControllerMetrics {
    fn default() -> Self {
        ControllerMetrics {
            connected_agents: Gauge::default(),
            grants_issued: Counter::default(),
            grants_revoked: Counter::default(),
            access_requests: Family::default(),
            // 100 µs to ~13 s.
            fanout_latency: LatencyHistogram::default(),
            log_reads: Counter::default(),
            log_rows: Counter::default(),
            commits: Mutex::new(VecDeque::with_capacity(COMMITS_KEPT)),
        }
    }
}

impl ControllerMetrics {
    /// A grant change was committed at `revision` (call next to the revision's broadcast).
    pub fn committed(&self, revision: u64) {
        let mut commits = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        if commits.len() == COMMITS_KEPT {
            commits.pop_front();
        }
        commits.push_back((revision, Instant::now()));
    }

    /// An access request entered `state` (a request approved at once enters `approved`
    /// without passing `pending`).
    pub fn request_entered(&self, state: &'static str) {
        self.access_requests
            .get_or_create(&StateLabel { state })
            .inc();
    }

    /// When the change at `revision` was committed, if it is among the last [`COMMITS_KEPT`]
    /// recorded here ([`ControllerMetrics::committed`]): the change feed looks it up once per
    /// change, and each stream that takes the change observes `fanout_latency` from it
    /// ([`ControllerMetrics::taken`]). Unknown: a change committed by another replica, or
    /// before this process started.
    pub fn commit_time(&self, revision: u64) -> Option<Instant> {
        let commits = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        commits
            .iter()
            .rev()
            .find(|(r, _)| *r == revision)
            .map(|(_, at)| *at)
    }

    /// A live change committed at `committed` was taken by a watch stream: one observation of
    /// its fan-out latency, without a lock (a catch-up of an older change is not observed).
    pub fn taken(&self, committed: Instant) {
        self.fanout_latency.observe(committed.elapsed());
    }
}

impl AgentMetrics {
    /// A refused `ReadLog`.
    pub fn denied(&self, code: &'static str) {
        self.read_denials
            .get_or_create(&ReasonLabel { reason: code })
            .inc();
    }
}

impl CommonMetrics {
    /// One refusal report of the TLS accept loop: the refusal itself, plus the refusals it
    /// stands for (`suppressed_before`: left out of the reports before it, or summarised).
    pub fn handshake_refused(&self, refused: &crate::tls_accept::Refused) {
        use crate::tls_accept::RefusalReason as R;
        let reason = refused.reason_code.as_str();
        match refused.reason_code {
            R::Suppressed | R::Evicted | R::ResetInGrace | R::Busy | R::ConnectionLimit => {
                self.handshake_refusals
                    .get_or_create(&ReasonLabel { reason })
                    .inc_by(refused.suppressed_before);
            }
            _ => {
                self.handshake_refusals
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                if refused.suppressed_before > 0 {
                    self.handshake_refusals
                        .get_or_create(&ReasonLabel {
                            reason: R::Suppressed.as_str(),
                        })
                        .inc_by(refused.suppressed_before);
                }
            }
        }
    }

    /// Sets the sink gauges from the `<name>.status.json` files the sinks write in
    /// `sinks_dir`. A sink whose status is missing or unreadable shows as down, lag unchanged
    /// (lag in bytes too when the file, written by an older build, has none).
    pub fn refresh_sinks(&self, sinks_dir: &Path, names: &[String]) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for name in names {
            let label = SinkLabel { sink: name.clone() };
            let status = read_sink_status(sinks_dir, name);
            self.sink_up
                .get_or_create(&label)
                .set(i64::from(status.as_ref().is_some_and(|s| s.state == "up")));
            let Some(status) = status else {
                continue;
            };
            self.sink_lag_records
                .get_or_create(&label)
                .set(gauge(status.lag));
            if let Some(bytes) = status.lag_bytes {
                self.sink_lag_bytes.get_or_create(&label).set(gauge(bytes));
            }
        }
    }
}

/// The fields of a sink's status file (`core/src/audit/ship`) that are reported.
#[derive(Debug, Clone, Deserialize)]
pub struct SinkStatus {
    /// The sink's name, as configured.
    pub sink: String,
    /// `up`, `down`, `refused` or `chain_break` as written; [`STALE`] once read from an old file.
    pub state: String,
    /// Records in the audit file not yet delivered.
    pub lag: u64,
    /// Bytes of the audit files not yet delivered (absent from files of earlier builds).
    #[serde(default)]
    pub lag_bytes: Option<u64>,
    /// Sequence number of the last audit record the sink delivered (0 if absent from the file).
    #[serde(default)]
    pub delivered_seq: u64,
    /// The sink's last delivery error as its status file wrote it, if any.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When the sink wrote it (Unix milliseconds).
    #[serde(default)]
    pub updated_ms: Option<u64>,
}

/// A sink rewrites its status file every second while its loop runs; a file older than this
/// means the shipper is stuck (or gone), whatever state it last wrote.
pub const SINK_STATUS_STALE_AFTER: Duration = Duration::from_secs(10);

/// The state shown for a sink whose status file is older than [`SINK_STATUS_STALE_AFTER`].
pub const STALE: &str = "stale";

/// Sink `name`'s last status in `sinks_dir`, if it wrote one that parses. An `up` written
/// more than [`SINK_STATUS_STALE_AFTER`] before `now_ms` (or without a time) reads as
/// [`STALE`]: the shipper stopped rewriting it. The other states already say "not
/// delivering" and are kept (a halted sink stops rewriting its `chain_break` on purpose).
pub fn read_sink_status_at(sinks_dir: &Path, name: &str, now_ms: u64) -> Option<SinkStatus> {
    let bytes = std::fs::read(sinks_dir.join(format!("{name}.status.json"))).ok()?;
    let mut status: SinkStatus = serde_json::from_slice(&bytes).ok()?;
    let fresh = status.updated_ms.is_some_and(|at| {
        now_ms.saturating_sub(at)
            <= u64::try_from(SINK_STATUS_STALE_AFTER.as_millis()).unwrap_or(u64::MAX)
    });
    if !fresh && status.state == "up" {
        status.state = STALE.to_string();
    }
    Some(status)
}

/// [`read_sink_status_at`] now.
pub fn read_sink_status(sinks_dir: &Path, name: &str) -> Option<SinkStatus> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    read_sink_status_at(sinks_dir, name, now_ms)
}

static COMMON: LazyLock<CommonMetrics> = LazyLock::new(CommonMetrics::default);
static AGENT: LazyLock<AgentMetrics> = LazyLock::new(AgentMetrics::default);
static CONTROLLER: LazyLock<ControllerMetrics> = LazyLock::new(ControllerMetrics::default);

/// The counters of both daemons.
pub fn common() -> &'static CommonMetrics {
    &COMMON
}

/// The agent's counters.
pub fn agent() -> &'static AgentMetrics {
    &AGENT
}

/// The controller's counters.
pub fn controller() -> &'static ControllerMetrics {
    &CONTROLLER
}

/// Which daemon's counters a registry exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// The agent (`loggate-agent`): its series are [`CommonMetrics`] and [`AgentMetrics`].
    Agent,
    /// The controller: its series are [`CommonMetrics`] and [`ControllerMetrics`].
    Controller,
}

/// Which series a scraper may read (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Every series: the scraper presented the token.
    Trusted,
    /// No token configured: everything but the bypass and sink series.
    Anyone,
}

/// The registry of `daemon`'s metrics for `audience` (names prefixed `loggate_`; counters end
/// in `_total`).
pub fn registry(daemon: Daemon, audience: Audience) -> Registry {
    let trusted = audience == Audience::Trusted;
    let mut r = Registry::with_prefix("loggate");
    let c = common();
    r.register(
        "audit_records_written",
        "Audit records of events appended by this process, by event name (before their group sync; checkpoint and rotation records not counted)",
        c.audit_records.clone(),
    );
    r.register(
        "tls_handshake_refusals",
        "TLS handshakes refused, by reason",
        c.handshake_refusals.clone(),
    );
    if trusted {
        r.register(
            "audit_sink_lag_records",
            "Audit records not yet delivered to each SIEM sink",
            c.sink_lag_records.clone(),
        );
        r.register_with_unit(
            "audit_sink_lag",
            "Bytes of the audit files not yet delivered to each SIEM sink",
            Unit::Bytes,
            c.sink_lag_bytes.clone(),
        );
        r.register(
            "audit_sink_up",
            "1 when the SIEM sink is connected and delivering",
            c.sink_up.clone(),
        );
    }
    match daemon {
        Daemon::Agent => {
            let a = agent();
            r.register(
                "agent_read_requests",
                "ReadLog requests received",
                a.read_requests.clone(),
            );
            r.register(
                "agent_read_denials",
                "ReadLog requests refused, by denial code",
                a.read_denials.clone(),
            );
            r.register_with_unit(
                "agent_served",
                "Bytes sent to readers after redaction, counted at each stream's end",
                Unit::Bytes,
                a.bytes_served.clone(),
            );
            r.register(
                "agent_redactions",
                "Redactions made, by detector, counted at each stream's end",
                a.redactions.clone(),
            );
            r.register(
                "agent_live_streams",
                "Read streams open now",
                a.live_streams.clone(),
            );
            if trusted {
                r.register(
                    "agent_bypass_events",
                    "Bypass-audit records written, by event name",
                    a.bypass_events.clone(),
                );
                r.register(
                    "agent_bypass_events_lost",
                    "Bypass events the kernel could not hand over (ring buffer full, fanotify overflow)",
                    a.bypass_events_lost.clone(),
                );
            }
            r.register(
                "agent_grants_held",
                "Valid grants held",
                a.grants_held.clone(),
            );
        }
        Daemon::Controller => {
            let k = controller();
            r.register(
                "controller_connected_agents",
                "Agents with a grant stream open",
                k.connected_agents.clone(),
            );
            r.register(
                "controller_grants_issued",
                "Grants signed",
                k.grants_issued.clone(),
            );
            r.register(
                "controller_grants_revoked",
                "Grants revoked",
                k.grants_revoked.clone(),
            );
            r.register(
                "controller_access_requests",
                "Access requests entering each state",
                k.access_requests.clone(),
            );
            r.register_with_unit(
                "controller_fanout_latency",
                "From a grant change's commit to its send on each agent stream covering it",
                Unit::Seconds,
                k.fanout_latency.clone(),
            );
            r.register(
                "controller_revision_log_reads",
                "Reads of the revision log (the change feed's and the agents' catch-ups)",
                k.log_reads.clone(),
            );
            r.register(
                "controller_revision_log_rows",
                "Rows the reads of the revision log returned",
                k.log_rows.clone(),
            );
        }
    }
    r
}

/// What one connection may be answered with (shared by the connection tasks).
struct Served {
    daemon: Daemon,
    token: Option<Token>,
    hosts: Vec<String>,
    refresh: Box<dyn Fn() + Send + Sync>,
}

/// A connection being served, in [`Connections`].
struct Conn {
    id: u64,
    peer: IpAddr,
    /// Still reading its head.
    idle: bool,
    /// Dropping it (removing the entry) ends the connection's task.
    _cancel: tokio::sync::oneshot::Sender<()>,
}

/// The connections served now (at most [`MAX_CONNECTIONS`], oldest first).
#[derive(Default)]
struct Connections {
    conns: Vec<Conn>,
    next_id: u64,
}

impl Connections {
    /// Admits a connection from `peer`: a free place, or the place of the oldest idle
    /// connection of the source holding the most connections (which is ended). `None` when
    /// every place is taken by a connection past its head.
    fn admit(&mut self, peer: IpAddr) -> Option<(u64, tokio::sync::oneshot::Receiver<()>)> {
        if self.conns.len() >= MAX_CONNECTIONS {
            let mut per_source: Vec<(IpAddr, usize)> = Vec::new();
            for c in self.conns.iter().filter(|c| c.idle) {
                match per_source.iter_mut().find(|(p, _)| *p == c.peer) {
                    Some((_, n)) => *n += 1,
                    None => per_source.push((c.peer, 1)),
                }
            }
            let (busiest, _) = per_source.iter().max_by_key(|(_, n)| *n)?;
            let at = self
                .conns
                .iter()
                .position(|c| c.idle && c.peer == *busiest)?;
            // Dropping the sender ends that connection's task.
            self.conns.remove(at);
        }
        let (cancel, cancelled) = tokio::sync::oneshot::channel();
        self.next_id += 1;
        let id = self.next_id;
        self.conns.push(Conn {
            id,
            peer,
            idle: true,
            _cancel: cancel,
        });
        Some((id, cancelled))
    }

    /// Connection `id` has its head: it may no longer be dropped for a newcomer.
    fn busy(&mut self, id: u64) {
        if let Some(c) = self.conns.iter_mut().find(|c| c.id == id) {
            c.idle = false;
        }
    }

    fn done(&mut self, id: u64) {
        self.conns.retain(|c| c.id != id);
    }
}

/// Serves `daemon`'s metrics on `listener` as `endpoint` says until `shutdown` resolves.
/// `refresh` runs before each scrape (it sets the gauges read from elsewhere: grants held,
/// sink status).
pub async fn serve(
    listener: TcpListener,
    daemon: Daemon,
    endpoint: MetricsEndpoint,
    refresh: impl Fn() + Send + Sync + 'static,
    shutdown: impl Future<Output = ()>,
) {
    let served = Arc::new(Served {
        daemon,
        token: endpoint.token,
        hosts: endpoint.hosts,
        refresh: Box::new(refresh),
    });
    let conns = Arc::new(Mutex::new(Connections::default()));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics: accept failed: {e}");
                    // Out of file descriptors, say: let the others finish first.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admitted = conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(peer.ip());
        let Some((id, cancelled)) = admitted else {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(WRITE_DEADLINE, respond(stream, UNAVAILABLE)).await;
            });
            continue;
        };
        let (served, conns) = (served.clone(), conns.clone());
        tokio::spawn(async move {
            tokio::select! {
                answered = answer(stream, &served, || {
                    conns.lock().unwrap_or_else(|p| p.into_inner()).busy(id)
                }) => {
                    if let Err(e) = answered {
                        tracing::debug!("metrics: {e:#}");
                    }
                }
                _ = cancelled => {}
            }
            conns.lock().unwrap_or_else(|p| p.into_inner()).done(id);
        });
    }
}

/// Binds `endpoint.listen` (before anything else of the daemon starts, so that a taken port
/// stops it before its audit file records a start).
pub fn bind(endpoint: &MetricsEndpoint) -> anyhow::Result<TcpListener> {
    let listen = endpoint.listen;
    let bound = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(TcpListener::from_std)
        .with_context(|| {
            format!(
                "metrics: cannot listen on {listen}; free the port or set [metrics] listen to \
                 another"
            )
        })?;
    Ok(bound)
}

/// Serves `daemon`'s metrics on `listener` (from [`bind`]) until `shutdown`, on a task of
/// its own.
pub fn spawn(
    listener: TcpListener,
    daemon: Daemon,
    endpoint: MetricsEndpoint,
    refresh: impl Fn() + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let listen = endpoint.listen;
    tracing::info!(%listen, "metrics served on /metrics");
    tokio::spawn(serve(listener, daemon, endpoint, refresh, shutdown));
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
}

/// A parsed request head: its route and the headers that decide the answer.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    route: Route,
    host: Option<Vec<u8>>,
    authorization: Option<Vec<u8>>,
}

type Response = (&'static str, &'static str, std::borrow::Cow<'static, str>);

const TEXT: &str = "text/plain; charset=utf-8";
const UNAVAILABLE: Response = (
    "503 Service Unavailable",
    TEXT,
    std::borrow::Cow::Borrowed("too many connections to the metrics endpoint; retry\n"),
);

/// Reads one request head (within [`HEAD_DEADLINE`]), calls `has_head`, and answers it.
async fn answer(
    mut stream: TcpStream,
    served: &Served,
    has_head: impl FnOnce(),
) -> anyhow::Result<()> {
    let request = tokio::time::timeout(HEAD_DEADLINE, read_head(&mut stream))
        .await
        .map_err(|_| anyhow::anyhow!("no whole request head within {HEAD_DEADLINE:?}; closed"))??;
    has_head();
    let response = decide(&request, served);
    tokio::time::timeout(WRITE_DEADLINE, respond(stream, response))
        .await
        .map_err(|_| {
            anyhow::anyhow!("the client did not take the answer within {WRITE_DEADLINE:?}")
        })?
}

async fn read_head(stream: &mut TcpStream) -> anyhow::Result<Request> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.context("reading the request")?;
        if n == 0 {
            bail!("the client closed before its request was whole");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(request) = parse_head(&head) {
            return Ok(request);
        }
        if head.len() > MAX_REQUEST_HEAD {
            bail!("request head over {MAX_REQUEST_HEAD} bytes; closed");
        }
    }
}

/// The answer to `request`: the Host check, then the route, then the token.
fn decide(request: &Request, served: &Served) -> Response {
    use std::borrow::Cow::Borrowed;
    if let Some(host) = &request.host {
        if !host_allowed(host, &served.hosts) {
            return (
                "421 Misdirected Request",
                TEXT,
                Borrowed("this Host is not served here; scrape by IP address, localhost or a name of [metrics] hosts\n"),
            );
        }
    }
    if request.route == Route::NotFound {
        return (
            "404 Not Found",
            TEXT,
            Borrowed("only GET /metrics is served here\n"),
        );
    }
    let audience = match &served.token {
        None => Audience::Anyone,
        Some(token) => {
            let presented = request
                .authorization
                .as_deref()
                .and_then(|a| a.strip_prefix(b"Bearer "))
                .map(|t| t.trim_ascii());
            match presented {
                Some(p) if token.matches(p) => Audience::Trusted,
                _ => {
                    return (
                        "401 Unauthorized",
                        TEXT,
                        Borrowed("present the token of [metrics] token_file as a bearer token\n"),
                    )
                }
            }
        }
    };
    (served.refresh)();
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &registry(served.daemon, audience))
        .is_err()
    {
        return (
            "500 Internal Server Error",
            TEXT,
            Borrowed("encoding the metrics failed\n"),
        );
    }
    (
        "200 OK",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        std::borrow::Cow::Owned(body),
    )
}

/// Whether a `Host` value names this endpoint: an IP literal, `localhost`, or a configured
/// name (any port).
fn host_allowed(host: &[u8], names: &[String]) -> bool {
    let Ok(host) = std::str::from_utf8(host.trim_ascii()) else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    if host.parse::<SocketAddr>().is_ok() || host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host.as_str(),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.parse::<IpAddr>().is_ok()
        || name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|n| n.parse::<IpAddr>().is_ok())
    {
        return true;
    }
    name == "localhost" || names.iter().any(|n| n == name)
}

async fn respond(
    mut stream: TcpStream,
    (status, content_type, body): Response,
) -> anyhow::Result<()> {
    let extra = if status.starts_with("401") {
        "www-authenticate: Bearer\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(response.as_bytes())
        .await
        .context("writing the response")?;
    let _ = stream.shutdown().await;
    Ok(())
}

/// The request whose head (through the empty line) is in `head`; `None` while the head is
/// incomplete. Only `GET /metrics` (with or without a query) is routed to the metrics.
fn parse_head(head: &[u8]) -> Option<Request> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = &head[..end];
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(|b| *b == b' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let path = target.map(|t| t.split(|b| *b == b'?').next().unwrap_or(t));
    let is_http1 = version.is_some_and(|v| v.starts_with(b"HTTP/1."));
    let route = if method == Some(b"GET".as_slice())
        && path == Some(b"/metrics".as_slice())
        && is_http1
        && parts.next().is_none()
    {
        Route::Metrics
    } else {
        Route::NotFound
    };
    let (mut host, mut authorization) = (None, None);
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"host") {
            // Two Host headers: keep one that fails the check if either would.
            host = Some(match host {
                None => value.to_vec(),
                Some(_) => b"\0".to_vec(),
            });
        } else if name.eq_ignore_ascii_case(b"authorization") {
            authorization = Some(value.to_vec());
        }
    }
    Some(Request {
        route,
        host,
        authorization,
    })
}

/// Counts one audit record appended (called by the audit writer).
pub fn audit_record_written(event: &'static str) {
    common()
        .audit_records
        .get_or_create(&EventLabel { event })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

    #[test]
    fn metrics_are_off_by_default_and_loopback_when_on() {
        let off: MetricsFile = toml::from_str("").expect("parses");
        assert!(off.validate(Daemon::Agent).expect("valid").is_none());
        let on: MetricsFile = toml::from_str("enabled = true").expect("parses");
        let listen = |d| on.validate(d).expect("valid").expect("on").listen;
        assert_eq!(listen(Daemon::Agent), AGENT_DEFAULT_LISTEN);
        assert_eq!(listen(Daemon::Controller), CONTROLLER_DEFAULT_LISTEN);
        assert_ne!(AGENT_DEFAULT_LISTEN, CONTROLLER_DEFAULT_LISTEN);
    }

    #[test]
    fn a_remote_metrics_address_needs_allow_remote() {
        let remote: MetricsFile =
            toml::from_str("enabled = true\nlisten = \"0.0.0.0:9464\"").expect("parses");
        let err = remote.validate(Daemon::Agent).expect_err("refused");
        assert!(err.to_string().contains("allow_remote"), "{err:#}");
        let allowed: MetricsFile =
            toml::from_str("enabled = true\nlisten = \"0.0.0.0:9464\"\nallow_remote = true")
                .expect("parses");
        assert!(allowed.validate(Daemon::Agent).expect("valid").is_some());
    }

    #[test]
    fn a_sink_status_file_the_shipper_stopped_rewriting_shows_the_sink_down() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let write = |updated_ms: u64| {
            std::fs::write(
                dir.path().join("siem.status.json"),
                format!(r#"{{"sink":"siem","state":"up","lag":0,"updated_ms":{updated_ms}}}"#),
            )
        };
        let now = 1_000_000_000;
        write(now - 500)?;
        let fresh = read_sink_status_at(dir.path(), "siem", now).expect("parses");
        assert_eq!(fresh.state, "up");
        write(now - 60_000)?;
        let stale = read_sink_status_at(dir.path(), "siem", now).expect("parses");
        assert_eq!(stale.state, STALE);
        // Through the gauge: a stale "up" is not up.
        let c = CommonMetrics::default();
        c.refresh_sinks(dir.path(), &["siem".to_string()]);
        assert_eq!(
            c.sink_up
                .get_or_create(&SinkLabel {
                    sink: "siem".into()
                })
                .get(),
            0
        );
        Ok(())
    }

    fn route_of(head: &[u8]) -> Option<Route> {
        parse_head(head).map(|r| r.route)
    }

    #[test]
    fn a_host_that_is_not_an_ip_localhost_or_configured_is_refused() {
        let names = vec!["metrics.internal".to_string()];
        for ok in [
            "127.0.0.1:9464",
            "127.0.0.1",
            "[::1]:9464",
            "[::1]",
            "localhost:9464",
            "LOCALHOST",
            "metrics.internal:9464",
        ] {
            assert!(host_allowed(ok.as_bytes(), &names), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9464",
            "localhost.evil.example",
            "",
            "\0",
        ] {
            assert!(!host_allowed(bad.as_bytes(), &names), "{bad}");
        }
    }

    #[test]
    fn the_token_matches_only_itself() {
        let token = Token(Arc::from(&b"0123456789abcdef"[..]));
        assert!(token.matches(b"0123456789abcdef"));
        assert!(!token.matches(b"0123456789abcdeF"));
        assert!(!token.matches(b"0123456789abcdef0"));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "Token(..)");
    }

    #[test]
    fn a_full_table_drops_the_oldest_idle_connection_of_the_busiest_source() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut t = Connections::default();
        let mut kept = Vec::new();
        let (first_b, _rx) = t.admit(b).expect("free");
        kept.push(_rx);
        for _ in 1..MAX_CONNECTIONS {
            kept.push(t.admit(a).expect("free").1);
        }
        // Full: a newcomer from b takes the place of a's oldest, not of b's.
        let (_, _rx) = t.admit(b).expect("an idle one is dropped");
        assert!(t.conns.iter().any(|c| c.id == first_b));
        assert_eq!(t.conns.len(), MAX_CONNECTIONS);
        // Every connection past its head: the newcomer is refused.
        let ids: Vec<u64> = t.conns.iter().map(|c| c.id).collect();
        for id in ids {
            t.busy(id);
        }
        assert!(t.admit(a).is_none());
    }

    #[test]
    fn only_get_metrics_is_routed_to_the_metrics() {
        assert_eq!(route_of(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(
            route_of(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(
            route_of(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(Route::Metrics)
        );
        for other in [
            &b"POST /metrics HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET /metricsx HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert_eq!(route_of(other), Some(Route::NotFound), "{other:?}");
        }
    }

    #[test]
    fn summarised_handshake_refusals_count_every_connection_they_stand_for() {
        use crate::tls_accept::{RefusalReason, Refused};
        let c = CommonMetrics::default();
        let refused = |reason_code, suppressed_before| Refused {
            peer: None,
            reason_code,
            reason: String::new(),
            claimed: None,
            suppressed_before,
        };
        c.handshake_refused(&refused(RefusalReason::UnknownIssuer, 3));
        c.handshake_refused(&refused(RefusalReason::Suppressed, 5));
        c.handshake_refused(&refused(RefusalReason::Evicted, 7));
        c.handshake_refused(&refused(RefusalReason::ResetInGrace, 11));
        c.handshake_refused(&refused(RefusalReason::Busy, 13));
        let count = |reason| {
            c.handshake_refusals
                .get_or_create(&ReasonLabel { reason })
                .get()
        };
        assert_eq!(count("unknown_issuer"), 1);
        assert_eq!(count("suppressed"), 8);
        assert_eq!(count("evicted"), 7);
        assert_eq!(count("reset_in_grace"), 11);
        assert_eq!(count("busy"), 13);
    }

    /// The `_bucket`, `_count` and `_sum` lines of `histogram` registered as `fanout`.
    fn histogram_lines(histogram: impl prometheus_client::registry::Metric) -> Vec<String> {
        let mut r = Registry::default();
        r.register("fanout", "", histogram);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encodes");
        text.lines()
            .filter(|l| l.starts_with("fanout_"))
            .map(str::to_owned)
            .collect()
    }

    /// The lock-free histogram puts every duration in the bucket prometheus-client's
    /// `Histogram` with `exponential_buckets(0.0001, 2.0, 18)` (the fan-out metric's before)
    /// puts it in, bounds included, and is exposed with the same lines and type.
    #[test]
    fn the_lock_free_histogram_counts_as_the_classic_one_with_its_buckets() {
        let ours = LatencyHistogram::default();
        let classic = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let mut durations = vec![0u64, 1, 99_999, 100_000, 100_001, 3_600_000_000_000];
        for i in 0..20u32 {
            let bound = 100_000u64 << i;
            durations.extend([bound - 1, bound, bound + 1, bound + bound / 3]);
        }
        for nanos in &durations {
            let took = Duration::from_nanos(*nanos);
            ours.observe(took);
            classic.observe(took.as_secs_f64());
        }
        assert_eq!(ours.count(), durations.len() as u64);
        let (ours, classic) = (histogram_lines(ours), histogram_lines(classic));
        let without_sum = |lines: &[String]| -> Vec<String> {
            lines
                .iter()
                .filter(|l| !l.starts_with("fanout_sum"))
                .cloned()
                .collect()
        };
        assert_eq!(without_sum(&ours), without_sum(&classic));
        assert_eq!(without_sum(&ours).len(), 20, "19 buckets and the count");
        let sum = |lines: &[String]| -> f64 {
            lines
                .iter()
                .find_map(|l| l.strip_prefix("fanout_sum "))
                .expect("a sum")
                .parse()
                .expect("a number")
        };
        let (a, b) = (sum(&ours), sum(&classic));
        // Whole microseconds: at most 1 µs less per observation.
        assert!(
            (a - b).abs() <= 1e-6 * durations.len() as f64,
            "{a} against {b}"
        );
    }

    /// What the fan-out metric counts: one observation per taking of a change whose commit
    /// this process recorded, none for a change it did not (another replica's, or older than
    /// the last [`COMMITS_KEPT`] commits: a catch-up).
    #[test]
    fn fanout_latency_is_observed_only_for_changes_whose_commit_is_known() {
        let k = ControllerMetrics::default();
        let count = |k: &ControllerMetrics| {
            histogram_lines(k.fanout_latency.clone())
                .iter()
                .find_map(|l| l.strip_prefix("fanout_count ").map(str::to_owned))
                .unwrap_or_default()
        };
        assert_eq!(k.commit_time(1), None);
        assert_eq!(count(&k), "0");
        k.committed(2);
        let at = k.commit_time(2).expect("recorded");
        k.taken(at);
        k.taken(at);
        assert_eq!(count(&k), "2");
        for revision in 3..3 + COMMITS_KEPT as u64 {
            k.committed(revision);
        }
        assert_eq!(
            k.commit_time(2),
            None,
            "only the last COMMITS_KEPT are kept"
        );
        assert!(k.commit_time(3 + COMMITS_KEPT as u64 - 1).is_some());
    }
}
