//! Sink 2: Splunk HEC-compatible HTTP JSON batches. One `POST /services/collector/event` per
//! batch, the events concatenated (one per line), `Authorization: Splunk <token>`. A batch is
//! delivered when the collector answers 200 with `{"code":0}`; nothing is ever skipped. A
//! failure is typed by whether sending again can help ([`answer_error`]): a broken connection,
//! a timeout, 5xx, 429 and 408 are retried after a back-off; any other 4xx (a refused token, a
//! bad URL, a batch too large) or a redirect is permanent — logged once and tried again only
//! after a long pause (see `PERMANENT_PAUSE` in the parent module).
//!
//! The client is hyper's own HTTP/1.1 connection (already in the tree through tonic), kept alive
//! between batches and rebuilt after an error.

use super::config::HecTarget;
use super::spool::Record;
use super::{Transport, TransportError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of a collector's answer read (it is a short JSON object).
const MAX_ANSWER: usize = 64 * 1024;

pub struct HecSink {
    target: HecTarget,
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HecSink {
    pub fn new(target: HecTarget, host: &str) -> Self {
        HecSink {
            target,
            host: host.to_string(),
            sender: None,
        }
    }

    async fn handshake<S>(&mut self, io: S) -> Result<(), TransportError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake with {} failed: {e}", self.target.address))?;
        tokio::spawn(async move {
            // Ends when the connection closes; the next send then fails and reconnects.
            let _ = conn.await;
        });
        self.sender = Some(sender);
        Ok(())
    }
}

impl Transport for HecSink {
    async fn connect(&mut self) -> Result<(), TransportError> {
        let addr = self.target.address.clone();
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(&addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        match self.target.tls.clone() {
            Some((config, name)) => {
                let tls =
                    tokio::time::timeout(IO_TIMEOUT, TlsConnector::from(config).connect(name, tcp))
                        .await
                        .map_err(|_| format!("TLS handshake with {addr} timed out"))?
                        .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))?;
                self.handshake(tls).await
            }
            None => self.handshake(tcp).await,
        }
    }

    fn disconnect(&mut self) {
        self.sender = None;
    }

    fn is_connected(&self) -> bool {
        self.sender.as_ref().is_some_and(|s| !s.is_closed())
    }

    async fn send(&mut self, batch: &[Record]) -> Result<(), TransportError> {
        let body = Bytes::from(body(batch, &self.host));
        let path = self
            .target
            .url
            .path_and_query()
            .map_or("/services/collector/event", |p| p.as_str());
        let request = http::Request::post(path)
            .header(http::header::HOST, self.target.address.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::AUTHORIZATION,
                format!("Splunk {}", self.target.token.0),
            )
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let sender = self.sender.as_mut().ok_or("not connected")?;
        let exchange = async {
            sender
                .ready()
                .await
                .map_err(|e| format!("the connection closed: {e}"))?;
            let answer = sender
                .send_request(request)
                .await
                .map_err(|e| format!("the request failed: {e}"))?;
            let status = answer.status();
            let bytes = Limited::new(answer.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer failed: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(IO_TIMEOUT, exchange)
            .await
            .map_err(|_| "the collector did not answer in time".to_string())??;
        match answer_error(status, &bytes) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    fn confirm_after(&self) -> Duration {
        Duration::ZERO
    }

    async fn broken(&mut self) -> Option<String> {
        self.sender
            .as_ref()
            .filter(|s| s.is_closed())
            .map(|_| "the collector closed the connection".to_string())
    }
}

/// The collector's answer as a delivery result: `None` when the batch was taken (200 with
/// `{"code":0}`), else the error, retriable or permanent by the HTTP status alone (never by
/// the body's text): 4xx other than 408 (timeout) and 429 (busy) say the request itself is
/// refused (Splunk: 400 bad data, 401/403 token, 413 too large), and a 3xx would need a
/// redirect we do not follow, so both are permanent; 5xx, 429, 408 and a 200 without code 0
/// are retriable.
fn answer_error(status: http::StatusCode, body: &[u8]) -> Option<TransportError> {
    use http::StatusCode as S;
    let code = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("code").and_then(Value::as_i64));
    if status == S::OK && code == Some(0) {
        return None;
    }
    let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
    let message = format!("the collector answered {status}: {}", text.trim());
    let permanent = (status.is_client_error()
        && status != S::TOO_MANY_REQUESTS
        && status != S::REQUEST_TIMEOUT)
        || status.is_redirection();
    Some(if permanent {
        TransportError::permanent(message)
    } else {
        TransportError::retriable(message)
    })
}

/// The HEC events of a batch, one per line; `event` is the record's exact bytes.
fn body(batch: &[Record], host: &str) -> Vec<u8> {
    let host = Value::from(host).to_string();
    let mut out = Vec::with_capacity(batch.iter().map(|r| r.line.len() + 120).sum());
    for record in batch {
        let value: Option<Value> = serde_json::from_slice(&record.line).ok();
        let time = value.as_ref().and_then(epoch_ms).unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        });
        out.extend_from_slice(
            format!(
                "{{\"time\":{}.{:03},\"host\":{host},\"source\":\"loggate\",\"sourcetype\":\"ocsf\",\"event\":",
                time / 1000,
                time % 1000
            )
            .as_bytes(),
        );
        out.extend_from_slice(&record.line);
        out.extend_from_slice(b"}\n");
    }
    out
}

/// The record's `time` in ms since the epoch: a number (OCSF) or an RFC 3339 string.
fn epoch_ms(record: &Value) -> Option<u64> {
    match record.get("time")? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => humantime::parse_rfc3339_weak(s)
            .ok()?
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_millis()).ok()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ship::Retry;

    #[test]
    fn collector_answers_are_retriable_or_permanent_by_status() {
        let ok = br#"{"text":"Success","code":0}"#;
        assert_eq!(answer_error(http::StatusCode::OK, ok), None);
        for (status, retry) in [
            (400, Retry::Permanent),
            (401, Retry::Permanent),
            (403, Retry::Permanent),
            (404, Retry::Permanent),
            (413, Retry::Permanent),
            (301, Retry::Permanent),
            (408, Retry::Retriable),
            (429, Retry::Retriable),
            (500, Retry::Retriable),
            (502, Retry::Retriable),
            (503, Retry::Retriable),
            // Taken by HTTP but not by the collector: try again.
            (200, Retry::Retriable),
        ] {
            let status = http::StatusCode::from_u16(status).unwrap();
            let body = br#"{"text":"Invalid token","code":4}"#;
            let e = answer_error(status, body).expect("an error");
            assert_eq!(e.retry, retry, "{status}");
            assert!(e
                .message
                .starts_with(&format!("the collector answered {status}")));
        }
        // The body's words do not decide: a 503 saying "invalid token" is still retriable.
        let e = answer_error(http::StatusCode::SERVICE_UNAVAILABLE, b"Invalid token").unwrap();
        assert_eq!(e.retry, Retry::Retriable);
    }

    #[test]
    fn events_wrap_the_exact_record_with_its_time() {
        let line = br#"{"seq":3,"time":"2026-11-27T07:50:38.147Z","event":"e"}"#;
        let batch = [Record {
            seq: 3,
            line: line.to_vec(),
            end: 0,
        }];
        let text = String::from_utf8(body(&batch, "web-1")).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"time\":1795765838.147,\"host\":\"web-1\",\"source\":\"loggate\",\"sourcetype\":\"ocsf\",\"event\":{}}}\n",
                std::str::from_utf8(line).unwrap()
            )
        );
        let parsed: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(parsed["event"]["seq"], 3);
    }
}
