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
//! Off by default. When on (`[metrics] enabled = true`) it listens on `127.0.0.1:9464` unless
//! `listen` says otherwise; an address that is not loopback is refused at load unless
//! `allow_remote = true` says the operator means it (the endpoint has no authentication: put
//! it behind a firewall or a scraping sidecar). The server reads at most [`MAX_REQUEST_HEAD`]
//! bytes of a request within [`REQUEST_TIMEOUT`], answers one request per connection, serves
//! at most [`MAX_CONNECTIONS`] at once, and answers anything but `GET /metrics` with 404.

use anyhow::{bail, Context};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde::Deserialize;
use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The address the endpoint listens on when `[metrics]` names none: Prometheus' port range,
/// loopback only.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);
/// The longest request head (request line and headers) read; a longer one gets its connection
/// closed.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A request must arrive whole within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 16;

/// `[metrics]` as written in a daemon's configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// Serve `/metrics` (default: no).
    #[serde(default)]
    pub enabled: bool,
    /// Where (default `127.0.0.1:9464`).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Whether `listen` may be an address other machines reach (default: no; see the module
    /// docs for why).
    #[serde(default)]
    pub allow_remote: bool,
}

impl MetricsFile {
    /// The address to serve on, `None` when metrics are off; an error for a non-loopback
    /// address without `allow_remote = true`.
    pub fn validate(&self) -> anyhow::Result<Option<SocketAddr>> {
        if !self.enabled {
            return Ok(None);
        }
        let listen = self.listen.unwrap_or(DEFAULT_LISTEN);
        if !listen.ip().is_loopback() && !self.allow_remote {
            bail!(
                "metrics.listen {listen} is not a loopback address: the endpoint has no \
                 authentication, so listen on 127.0.0.1 or set allow_remote = true once a \
                 firewall limits who can reach it"
            );
        }
        Ok(Some(listen))
    }
}

/// One label `reason`, `event`, `detector`, … with a value from a bounded set.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// A name from the configuration (a sink's, a detector's): bounded by the configuration.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectorLabel {
    pub detector: String,
}

/// What both daemons count.
#[derive(Default)]
pub struct CommonMetrics {
    /// Audit records appended by this process, by event name (the catalogue).
    pub audit_records: Family<EventLabel, Counter>,
    /// TLS handshakes refused, by [`crate::tls_accept::RefusalReason`]; those summarised
    /// (over the report rate, evicted) are counted too.
    pub handshake_refusals: Family<ReasonLabel, Counter>,
    /// Records of the audit file not yet delivered to each SIEM sink (from the sink's status
    /// file, refreshed at each scrape).
    pub sink_lag_records: Family<SinkLabel, Gauge>,
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
    pub grants_issued: Counter,
    pub grants_revoked: Counter,
    /// Access requests entering each state (`pending`, `approved`, `denied`, `cancelled`,
    /// `expired`).
    pub access_requests: Family<StateLabel, Counter>,
    /// From a grant change's commit to its send on each watch stream covering it (seconds).
    pub fanout_latency: Histogram,
    /// Commit times of recent revisions, for `fanout_latency` (bounded: [`COMMITS_KEPT`]).
    commits: Mutex<VecDeque<(u64, Instant)>>,
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
            fanout_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
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

    /// The change at `revision` was sent on a watch stream: observes its fan-out latency when
    /// its commit is known (a catch-up of an older change is not observed).
    pub fn sent(&self, revision: u64) {
        let commits = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, at)) = commits.iter().rev().find(|(r, _)| *r == revision) {
            self.fanout_latency.observe(at.elapsed().as_secs_f64());
        }
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
            R::Suppressed | R::Evicted | R::ConnectionLimit => {
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
    /// `sinks_dir`. A sink whose status is missing or unreadable shows as down, lag unchanged.
    pub fn refresh_sinks(&self, sinks_dir: &Path, names: &[String]) {
        for name in names {
            let label = SinkLabel { sink: name.clone() };
            let status = read_sink_status(sinks_dir, name);
            let (up, lag) = match &status {
                Some(s) => (s.state == "up", Some(s.lag)),
                None => (false, None),
            };
            self.sink_up.get_or_create(&label).set(i64::from(up));
            if let Some(lag) = lag {
                self.sink_lag_records
                    .get_or_create(&label)
                    .set(i64::try_from(lag).unwrap_or(i64::MAX));
            }
        }
    }
}

/// The fields of a sink's status file (`core/src/audit/ship`) that are reported.
#[derive(Debug, Clone, Deserialize)]
pub struct SinkStatus {
    pub sink: String,
    /// `up`, `down`, `refused` or `chain_break`.
    pub state: String,
    /// Records in the audit file not yet delivered.
    pub lag: u64,
    #[serde(default)]
    pub delivered_seq: u64,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Sink `name`'s last status in `sinks_dir`, if it wrote one that parses.
pub fn read_sink_status(sinks_dir: &Path, name: &str) -> Option<SinkStatus> {
    let bytes = std::fs::read(sinks_dir.join(format!("{name}.status.json"))).ok()?;
    serde_json::from_slice(&bytes).ok()
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
    Agent,
    Controller,
}

/// The registry of `daemon`'s metrics (names prefixed `loggate_`; counters end in `_total`).
pub fn registry(daemon: Daemon) -> Registry {
    let mut r = Registry::with_prefix("loggate");
    let c = common();
    r.register(
        "audit_records_written",
        "Audit records appended by this process, by event name",
        c.audit_records.clone(),
    );
    r.register(
        "tls_handshake_refusals",
        "TLS handshakes refused, by reason",
        c.handshake_refusals.clone(),
    );
    r.register(
        "audit_sink_lag_records",
        "Audit records not yet delivered to each SIEM sink",
        c.sink_lag_records.clone(),
    );
    r.register(
        "audit_sink_up",
        "1 when the SIEM sink is connected and delivering",
        c.sink_up.clone(),
    );
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
        }
    }
    r
}

/// Serves `registry` on `listener` until `shutdown` resolves. `refresh` runs before each
/// scrape (it sets the gauges read from elsewhere: grants held, sink status).
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    refresh: impl Fn() + Send + Sync + 'static,
    shutdown: impl Future<Output = ()>,
) {
    let registry = Arc::new(registry);
    let refresh = Arc::new(refresh);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (stream, _) = tokio::select! {
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
        let (registry, refresh) = (registry.clone(), refresh.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let answered =
                tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &registry, refresh.as_ref()))
                    .await;
            if let Ok(Err(e)) = answered {
                tracing::debug!("metrics: {e:#}");
            }
        });
    }
}

/// Binds `listen` and serves `daemon`'s metrics there until `shutdown` (on a task of its own).
pub async fn spawn(
    listen: SocketAddr,
    daemon: Daemon,
    refresh: impl Fn() + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics: cannot listen on {listen}"))?;
    tracing::info!(%listen, "metrics served on /metrics");
    tokio::spawn(serve(listener, registry(daemon), refresh, shutdown));
    Ok(())
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
}

/// Reads one request head and answers it.
async fn answer(
    mut stream: TcpStream,
    registry: &Registry,
    refresh: &(dyn Fn() + Send + Sync),
) -> anyhow::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let route = loop {
        let n = stream.read(&mut buf).await.context("reading the request")?;
        if n == 0 {
            bail!("the client closed before its request was whole");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(route) = route_of(&head) {
            break route;
        }
        if head.len() > MAX_REQUEST_HEAD {
            bail!("request head over {MAX_REQUEST_HEAD} bytes; closed");
        }
    };
    let (status, content_type, body) = match route {
        Route::Metrics => {
            refresh();
            let mut body = String::new();
            prometheus_client::encoding::text::encode(&mut body, registry)
                .map_err(|_| anyhow::anyhow!("encoding the metrics failed"))?;
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            )
        }
        Route::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only GET /metrics is served here\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(response.as_bytes())
        .await
        .context("writing the response")?;
    let _ = stream.shutdown().await;
    Ok(())
}

/// The route of a request whose head (through the empty line) is in `head`; `None` while the
/// head is incomplete. Only `GET /metrics` (with or without a query) is served.
fn route_of(head: &[u8]) -> Option<Route> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = &head[..end];
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let mut parts = head[..line_end].split(|b| *b == b' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let path = target.map(|t| t.split(|b| *b == b'?').next().unwrap_or(t));
    let is_http1 = version.is_some_and(|v| v.starts_with(b"HTTP/1."));
    Some(
        if method == Some(b"GET".as_slice())
            && path == Some(b"/metrics".as_slice())
            && is_http1
            && parts.next().is_none()
        {
            Route::Metrics
        } else {
            Route::NotFound
        },
    )
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

    #[test]
    fn metrics_are_off_by_default_and_loopback_when_on() {
        let off: MetricsFile = toml::from_str("").expect("parses");
        assert_eq!(off.validate().expect("valid"), None);
        let on: MetricsFile = toml::from_str("enabled = true").expect("parses");
        assert_eq!(on.validate().expect("valid"), Some(DEFAULT_LISTEN));
    }

    #[test]
    fn a_remote_metrics_address_needs_allow_remote() {
        let remote: MetricsFile =
            toml::from_str("enabled = true\nlisten = \"0.0.0.0:9464\"").expect("parses");
        let err = remote.validate().expect_err("refused");
        assert!(err.to_string().contains("allow_remote"), "{err:#}");
        let allowed: MetricsFile =
            toml::from_str("enabled = true\nlisten = \"0.0.0.0:9464\"\nallow_remote = true")
                .expect("parses");
        assert!(allowed.validate().expect("valid").is_some());
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
        let count = |reason| {
            c.handshake_refusals
                .get_or_create(&ReasonLabel { reason })
                .get()
        };
        assert_eq!(count("unknown_issuer"), 1);
        assert_eq!(count("suppressed"), 8);
        assert_eq!(count("evicted"), 7);
    }

    #[test]
    fn fanout_latency_is_observed_only_for_changes_whose_commit_is_known() {
        let k = ControllerMetrics::default();
        let count = |k: &ControllerMetrics| {
            let mut r = Registry::default();
            r.register("fanout", "", k.fanout_latency.clone());
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &r).expect("encodes");
            text.lines()
                .find_map(|l| l.strip_prefix("fanout_count ").map(str::to_owned))
                .unwrap_or_default()
        };
        k.sent(1);
        assert_eq!(count(&k), "0");
        k.committed(2);
        k.sent(2);
        k.sent(2);
        assert_eq!(count(&k), "2");
    }
}
