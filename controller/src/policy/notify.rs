//! Webhook notifications of requests, decisions, break-glass and expiry.
//!
//! The policy's `[notify] webhook` (http or https; https verified against `ca`, a PEM bundle
//! such as `/etc/ssl/certs/ca-certificates.crt`) receives one JSON `POST` per event:
//! `{"text": "<one line>", "loggate": {…}}` — Slack incoming webhooks read `text`, a generic
//! receiver reads `loggate`. The body holds names, hosts, paths, the role and the reason: never
//! a grant token, a key or the webhook's own URL (which is itself a secret for Slack, and is
//! never logged or audited: only its scheme and host are).
//!
//! `text` is escaped for Slack's message formatting (`&`, `<`, `>` become `&amp;`, `&lt;`,
//! `&gt;`): a reason or a path is shown as written and can never become a mention such as
//! `<!channel>` or a link. The `loggate` object carries the same values unescaped (it is JSON).
//!
//! Delivery never holds up a request: notices are queued and sent by a task, each retried with
//! exponential back-off ([`ATTEMPTS`] tries, 1 s doubling), each try bounded by
//! [`TRY_TIMEOUT`]. A notice that could not be delivered is audited (`notify.failed`).
//! Break-glass notices have their own queue and their own task ([`BREAK_GLASS_QUEUE`]), so
//! that no number of ordinary notices (queued or being retried) delays or pushes one out; a
//! full queue drops the notice, audited (`attempts` 0). Requesters cannot fill the ordinary
//! queue on their own either: each has a bounded number of pending requests
//! (`settings.max_pending_per_requester`), and a budget of ordinary notices (at most
//! [`NOTICES_PER_MINUTE`] a minute each; a request/cancel loop or an `auto` role cannot flood
//! it): the excess is counted and told as one summary notice per requester a minute later.
//! `notify.failed` records are budgeted too (60 a minute; the rest counted in one record with
//! `notified_event` `suppressed`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use loggate_core::audit::budget::{Admission, BudgetPolicy, ReportBudget};
use loggate_core::audit::{events, SharedAuditLog};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Ordinary notices waiting to be sent.
pub const QUEUE: usize = 1024;
/// Break-glass notices waiting to be sent (their own queue and task).
pub const BREAK_GLASS_QUEUE: usize = 256;
/// Ordinary notices one requester may cause per minute; the rest are summarised.
pub const NOTICES_PER_MINUTE: u32 = 30;
/// The event of a summary of notices left out by the per-requester budget.
pub const SUPPRESSED_EVENT: &str = "access.notices_suppressed";
/// Tries per notice.
pub const ATTEMPTS: u32 = 5;
/// The bound on one try (connect, TLS, request and answer).
pub const TRY_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_ANSWER: usize = 16 * 1024;

/// Where notices go, validated at policy load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: http::Uri,
    pub https: bool,
    /// `host:port` to connect to.
    pub address: String,
    pub host: String,
    pub ca: Option<PathBuf>,
}

impl Webhook {
    /// Parses `[notify] webhook` and `ca`; the error is one sentence that never repeats the URL
    /// (it may hold a token).
    pub fn parse(url: &str, ca: Option<&str>) -> Result<Webhook, String> {
        let uri: http::Uri = url.parse().map_err(|_| {
            "notify.webhook is not a URL like https://hooks.example.com/…".to_string()
        })?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("notify.webhook must be an http:// or https:// URL".into()),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or("notify.webhook names no host")?
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let address = if bare.contains(':') {
            format!("[{bare}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        if https && ca.is_none() {
            return Err(
                "notify.webhook is https: set notify.ca to the PEM bundle of the CAs to trust \
                 (e.g. /etc/ssl/certs/ca-certificates.crt)"
                    .into(),
            );
        }
        Ok(Webhook {
            url: uri,
            https,
            address,
            host: bare.to_string(),
            ca: ca.map(PathBuf::from),
        })
    }

    /// What may be shown of the webhook: its scheme and host, never its path (a token).
    pub fn shown(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.address
        )
    }
}

/// The event of a break-glass notice (its own queue).
pub const BREAK_GLASS_EVENT: &str = "access.break_glass";

/// One notice: the audit event it tells of and its fields.
#[derive(Debug, Clone)]
pub struct Notice {
    pub event: &'static str,
    /// One line of plain text (escaped for Slack when sent, see [`body`]).
    pub text: String,
    pub fields: Value,
    /// The requester whose action caused an ordinary notice (its budget); none for
    /// break-glass notices, which are never budgeted.
    pub from: Option<String>,
}

/// What [`Notifier::send`] did with a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// Over its requester's budget: counted, told in a summary.
    OverBudget,
    /// The queue was full (audited `notify.failed`, `attempts` 0), or no webhook is set.
    Dropped,
}

/// `text` with Slack's control characters escaped: `&`, `<` and `>` (and only those, as
/// Slack documents), so that text someone else wrote cannot mention `<!channel>`, a user or
/// a link.
pub fn slack_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The JSON body of `notice`: `text` escaped for Slack, `loggate` as is.
pub fn body(notice: &Notice) -> String {
    serde_json::json!({ "text": slack_escape(&notice.text), "loggate": notice.fields }).to_string()
}

/// Queues notices for the webhook of the policy in force.
#[derive(Clone)]
pub struct Notifier {
    queue: mpsc::Sender<(Webhook, Notice)>,
    break_glass: mpsc::Sender<(Webhook, Notice)>,
    audit: Arc<SharedAuditLog>,
    /// Ordinary notices per requester.
    notices: Arc<ReportBudget<String>>,
    /// `notify.failed` records (one source).
    failures: Arc<ReportBudget<&'static str>>,
    /// Where summaries go: the webhook of the last notice over a budget.
    summary_hook: Arc<std::sync::Mutex<Option<Webhook>>>,
}

/// Audits a notice that was not delivered, within the `notify.failed` budget.
fn audit_failed(
    audit: &SharedAuditLog,
    failures: &ReportBudget<&'static str>,
    hook: &Webhook,
    event: &str,
    attempts: u32,
    error: String,
) {
    let Admission::Write { suppressed_before } = failures.admit(&["notify"]) else {
        return;
    };
    let appended = audit.append(&events::NotifyFailed {
        notified_event: event.to_string(),
        webhook: hook.shown(),
        attempts,
        error,
        suppressed_before,
    });
    if let Err(e) = appended {
        tracing::error!("cannot audit a failed notification: {e}");
    }
}

impl Notifier {
    /// Starts the delivery tasks: one for break-glass notices, one for the others.
    pub fn start(audit: Arc<SharedAuditLog>) -> Notifier {
        let failures = Arc::new(ReportBudget::new(BudgetPolicy::default()));
        let spawn = |capacity: usize| {
            let (queue, mut notices) = mpsc::channel::<(Webhook, Notice)>(capacity);
            let auditor = audit.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                while let Some((hook, notice)) = notices.recv().await {
                    deliver(&hook, &notice, &auditor, &failures).await;
                }
            });
            queue
        };
        let notifier = Notifier {
            queue: spawn(QUEUE),
            break_glass: spawn(BREAK_GLASS_QUEUE),
            audit,
            notices: Arc::new(ReportBudget::new(BudgetPolicy {
                per_window: NOTICES_PER_MINUTE,
                ..BudgetPolicy::default()
            })),
            failures,
            summary_hook: Arc::new(std::sync::Mutex::new(None)),
        };
        let summaries = notifier.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BudgetPolicy::default().window);
            // An interval's first tick is at once: the first summaries are due one window
            // after the start, not while the first notices are still being counted.
            tick.tick().await;
            loop {
                tick.tick().await;
                summaries.send_summaries();
            }
        });
        notifier
    }

    /// Sends one summary notice per requester whose notices the budget left out, and audits
    /// one `notify.failed` summary for the failures left out; called once a minute.
    pub fn send_summaries(&self) {
        let hook = self
            .summary_hook
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for summary in self.notices.take_summaries() {
            let Some(hook) = &hook else { continue };
            let who = summary.source.unwrap_or_else(|| "(several)".into());
            let notice = Notice {
                event: SUPPRESSED_EVENT,
                text: format!(
                    "loggate: {} more notices about requests of {who} were left out (over {NOTICES_PER_MINUTE} a minute); see `loggate grant list --pending`",
                    summary.left_out
                ),
                fields: serde_json::json!({
                    "event": SUPPRESSED_EVENT, "requester": who, "left_out": summary.left_out,
                }),
                from: None,
            };
            if self.queue.try_send((hook.clone(), notice)).is_err() {
                tracing::warn!("the notification queue is full; a summary notice was dropped");
            }
        }
        for summary in self.failures.take_summaries() {
            let appended = self.audit.append(&events::NotifyFailed {
                notified_event: "suppressed".into(),
                webhook: hook.as_ref().map(Webhook::shown).unwrap_or_default(),
                attempts: 0,
                error: format!(
                    "{} failed notifications over the audit budget were not recorded one by one",
                    summary.left_out
                ),
                suppressed_before: summary.left_out,
            });
            if let Err(e) = appended {
                tracing::error!("cannot audit a failed notification: {e}");
            }
        }
    }

    /// Queues `notice` for `hook` (none: nothing to do): a break-glass notice in its own queue.
    /// An ordinary notice counts against its requester's budget ([`NOTICES_PER_MINUTE`]).
    pub fn send(&self, hook: Option<&Webhook>, notice: Notice) -> Sent {
        let Some(hook) = hook else {
            return Sent::Dropped;
        };
        let break_glass = notice.event == BREAK_GLASS_EVENT;
        if !break_glass {
            if let Some(from) = &notice.from {
                if self.notices.admit(std::slice::from_ref(from)) == Admission::Suppressed {
                    *self.summary_hook.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(hook.clone());
                    return Sent::OverBudget;
                }
            }
        }
        let queue = if break_glass {
            &self.break_glass
        } else {
            &self.queue
        };
        match queue.try_send((hook.clone(), notice)) {
            Ok(()) => Sent::Queued,
            Err(e) => {
                let notice = match e {
                    mpsc::error::TrySendError::Full((_, n))
                    | mpsc::error::TrySendError::Closed((_, n)) => n,
                };
                audit_failed(
                    &self.audit,
                    &self.failures,
                    hook,
                    notice.event,
                    0,
                    "the notification queue is full".into(),
                );
                Sent::Dropped
            }
        }
    }
}

async fn deliver(
    hook: &Webhook,
    notice: &Notice,
    audit: &SharedAuditLog,
    failures: &ReportBudget<&'static str>,
) {
    let body = body(notice);
    let mut backoff = FIRST_BACKOFF;
    let mut last_error = String::new();
    for attempt in 1..=ATTEMPTS {
        match tokio::time::timeout(TRY_TIMEOUT, post(hook, &body)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => last_error = e,
            Err(_) => last_error = format!("no answer within {}s", TRY_TIMEOUT.as_secs()),
        }
        tracing::warn!(webhook = %hook.shown(), attempt, "notification failed: {last_error}");
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }
    tokio::task::block_in_place(|| {
        audit_failed(
            audit,
            failures,
            hook,
            notice.event,
            ATTEMPTS,
            last_error.chars().take(512).collect(),
        )
    });
}

fn tls_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("cannot read notify.ca {}: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("notify.ca {}: {e}", ca.display()))?;
        // A bundle may hold certificates rustls cannot use; the others still count.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!(
            "notify.ca {} holds no usable CA certificate",
            ca.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One `POST` of `body`; Ok on a 2xx answer.
async fn post(hook: &Webhook, body: &str) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(&hook.address)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let path = hook.url.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::post(path)
        .header(http::header::HOST, hook.host.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let status = if hook.https {
        let ca = hook.ca.as_deref().ok_or("notify.ca is not set")?;
        let name = rustls::pki_types::ServerName::try_from(hook.host.clone())
            .map_err(|e| format!("bad host name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config(ca)?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        exchange(tls, request).await?
    } else {
        exchange(tcp, request).await?
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the webhook answered {status}"))
    }
}

async fn exchange<S>(io: S, request: http::Request<Full<Bytes>>) -> Result<http::StatusCode, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| format!("the request failed: {e}"))?;
    let status = answer.status();
    // Read (a bounded part of) the answer so the connection ends cleanly; its text is not used.
    let _ = Limited::new(answer.into_body(), MAX_ANSWER).collect().await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_are_validated_and_never_shown_with_their_path() {
        let hook = Webhook::parse(
            "https://hooks.slack.com/services/T0/B0/secret",
            Some("/ca.pem"),
        )
        .unwrap();
        assert_eq!(hook.address, "hooks.slack.com:443");
        assert_eq!(hook.shown(), "https://hooks.slack.com:443");
        let plain = Webhook::parse("http://127.0.0.1:8080/hook", None).unwrap();
        assert_eq!(plain.address, "127.0.0.1:8080");
        for (bad, expect) in [
            ("ftp://x/y", "http:// or https://"),
            ("https://hooks.slack.com/services/secret", "notify.ca"),
            ("not a url at all", "is not a URL"),
        ] {
            let err = Webhook::parse(bad, None).unwrap_err();
            assert!(err.contains(expect), "{bad}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn webhook_text_escapes_slacks_control_characters_and_keeps_the_fields_as_written() {
        let reason = "INC-42 <!channel> & <https://evil.example|click> <@U123>";
        let notice = Notice {
            event: "access.requested",
            text: format!("loggate: alice asks (reason {reason:?})"),
            fields: serde_json::json!({ "reason": reason }),
            from: None,
        };
        let sent: Value = serde_json::from_str(&body(&notice)).unwrap();
        let text = sent["text"].as_str().unwrap();
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        assert!(
            text.contains(
                "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt; &lt;@U123&gt;"
            ),
            "{text}"
        );
        // A generic receiver reads the JSON fields: the reason as written.
        assert_eq!(sent["loggate"]["reason"], reason);
        assert_eq!(slack_escape("a&amp;b"), "a&amp;amp;b");
    }

    /// A local receiver answering 200 to every POST, handing each body to the test.
    async fn receiver() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            let _ = tx.send(text[end + 4..].to_string());
                            let _ = conn
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn break_glass_notices_are_delivered_while_ordinary_ones_fill_the_queue_and_stall() {
        let dir = tempfile::tempdir().unwrap();
        let log = loggate_core::audit::AuditLog::open(&dir.path().join("a.jsonl"), "c").unwrap();
        let audit = Arc::new(SharedAuditLog::new(log).unwrap());
        let notifier = Notifier::start(audit);
        // A webhook that accepts connections and never answers: every try waits its timeout.
        let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stalled_hook = Webhook::parse(
            &format!("http://{}/hook", stalled.local_addr().unwrap()),
            None,
        )
        .unwrap();
        let (addr, mut bodies) = receiver().await;
        let live_hook = Webhook::parse(&format!("http://{addr}/hook"), None).unwrap();
        let notice = |event: &'static str| Notice {
            event,
            text: format!("loggate: {event}"),
            fields: serde_json::json!({ "event": event }),
            from: None,
        };
        // A requester's flood: more ordinary notices than the queue holds.
        for _ in 0..QUEUE + 16 {
            notifier.send(Some(&stalled_hook), notice("access.requested"));
        }
        notifier.send(Some(&live_hook), notice(BREAK_GLASS_EVENT));
        let got = tokio::time::timeout(Duration::from_secs(5), bodies.recv())
            .await
            .expect("the break-glass notice arrives at once")
            .expect("a body");
        let got: Value = serde_json::from_str(&got).unwrap();
        assert_eq!(got["loggate"]["event"], BREAK_GLASS_EVENT);
        drop(stalled);
    }

    /// Ordinary notices queued for one requester in a minute are bounded, the rest counted
    /// for a summary; another requester's notices still go out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_requesters_notices_are_budgeted_and_summarised() {
        let dir = tempfile::tempdir().unwrap();
        let log = loggate_core::audit::AuditLog::open(&dir.path().join("a.jsonl"), "c").unwrap();
        let audit = Arc::new(SharedAuditLog::new(log).unwrap());
        let notifier = Notifier::start(audit);
        let (addr, mut bodies) = receiver().await;
        let hook = Webhook::parse(&format!("http://{addr}/hook"), None).unwrap();
        let from = |who: &str| Notice {
            event: "access.requested",
            text: format!("loggate: {who} asks"),
            fields: serde_json::json!({}),
            from: Some(who.to_string()),
        };
        let mut queued = 0;
        let mut over = 0;
        for _ in 0..200 {
            match notifier.send(Some(&hook), from("mallory")) {
                Sent::Queued => queued += 1,
                Sent::OverBudget => over += 1,
                Sent::Dropped => panic!("the queue is not full"),
            }
        }
        assert_eq!(queued, NOTICES_PER_MINUTE);
        assert_eq!(over, 200 - NOTICES_PER_MINUTE);
        assert_eq!(notifier.send(Some(&hook), from("alice")), Sent::Queued);
        // The excess is told once, as one summary notice for mallory.
        notifier.send_summaries();
        let mut summaries = Vec::new();
        for _ in 0..NOTICES_PER_MINUTE + 2 {
            let got = tokio::time::timeout(Duration::from_secs(10), bodies.recv())
                .await
                .expect("every notice arrives")
                .expect("a body");
            let got: Value = serde_json::from_str(&got).unwrap();
            if got["loggate"]["event"] == SUPPRESSED_EVENT {
                summaries.push(got);
            }
        }
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        assert_eq!(summaries[0]["loggate"]["requester"], "mallory");
        assert_eq!(
            summaries[0]["loggate"]["left_out"],
            200 - NOTICES_PER_MINUTE
        );
    }

    /// A queue that stays full writes at most 60 `notify.failed` records a minute.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_notices_are_audited_within_a_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let log = loggate_core::audit::AuditLog::open(&path, "c").unwrap();
        let audit = Arc::new(SharedAuditLog::new(log).unwrap());
        let notifier = Notifier::start(audit.clone());
        let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let hook = Webhook::parse(
            &format!("http://{}/hook", stalled.local_addr().unwrap()),
            None,
        )
        .unwrap();
        let mut dropped = 0;
        for i in 0..QUEUE + 300 {
            // Each from someone else: no requester's budget is reached.
            let notice = Notice {
                event: "access.requested",
                text: "loggate: asks".into(),
                fields: serde_json::json!({}),
                from: Some(format!("user-{i}")),
            };
            if notifier.send(Some(&hook), notice) == Sent::Dropped {
                dropped += 1;
            }
        }
        assert!(dropped >= 299, "{dropped}");
        drop(notifier);
        drop(audit);
        let failed = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| l.contains("notify.failed"))
            .count();
        assert!((1..=60).contains(&failed), "{failed} notify.failed records");
        drop(stalled);
    }
}
