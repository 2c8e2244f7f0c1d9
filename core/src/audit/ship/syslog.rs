//! Sink 1: RFC 5424 syslog messages over TLS (RFC 5425), octet-counted (`LEN SP MSG`), mutual TLS.
//!
//! The MSG part is the audit line's exact bytes, so the SIEM's copy verifies with
//! `loggate audit verify`. The header carries PRI 110 (facility 13 "log audit", severity 6),
//! the record's time, this host, the program, its pid, `OCSF-<class_uid>` as MSGID (or the
//! event's name before the OCSF format), and `[<sd_id> seq="…" uid="…"]`.
//!
//! Every failure here is retriable (a connection, a handshake, a write): syslog has no answer
//! that could say the data itself is refused.
//!
//! TLS has no application acknowledgement. A batch counts as delivered once it was written and
//! flushed and the connection then stayed up for [`CONFIRM_AFTER`] (the receiver neither closed
//! nor reset it); a broken connection sends everything from the last delivered record again.

use super::config::SyslogTarget;
use super::spool::Record;
use super::{Transport, TransportError};
use crate::audit::event_name;
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long a written batch must be followed by a healthy connection before it counts as
/// delivered (see the module's comment).
pub const CONFIRM_AFTER: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(15);
const PRI: u8 = 110;

pub struct SyslogSink {
    target: SyslogTarget,
    host: String,
    app: String,
    pid: u32,
    conn: Option<TlsStream<TcpStream>>,
}

impl SyslogSink {
    pub fn new(target: SyslogTarget, host: &str, app: &str) -> Self {
        SyslogSink {
            target,
            host: header_token(host, 255),
            app: header_token(app, 48),
            pid: std::process::id(),
            conn: None,
        }
    }
}

impl Transport for SyslogSink {
    async fn connect(&mut self) -> Result<(), TransportError> {
        let addr = &self.target.address;
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let connector = TlsConnector::from(self.target.tls.clone());
        let tls = tokio::time::timeout(
            IO_TIMEOUT,
            connector.connect(self.target.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| format!("TLS handshake with {addr} timed out"))?
        .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))?;
        self.conn = Some(tls);
        Ok(())
    }

    fn disconnect(&mut self) {
        self.conn = None;
    }

    fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    async fn send(&mut self, batch: &[Record]) -> Result<(), TransportError> {
        let mut buf = Vec::with_capacity(batch.iter().map(|r| r.line.len() + 160).sum());
        for record in batch {
            frame(&mut buf, record, self);
        }
        let conn = self.conn.as_mut().ok_or("not connected")?;
        let written = async {
            conn.write_all(&buf).await?;
            conn.flush().await
        };
        tokio::time::timeout(IO_TIMEOUT, written)
            .await
            .map_err(|_| "writing to the receiver timed out".to_string())?
            .map_err(|e| format!("writing to the receiver failed: {e}").into())
    }

    fn confirm_after(&self) -> Duration {
        CONFIRM_AFTER
    }

    async fn broken(&mut self) -> Option<String> {
        let conn = self.conn.as_mut()?;
        let mut byte = [0u8; 256];
        // A receiver never sends anything: any completed read means it closed or reset.
        match tokio::time::timeout(Duration::ZERO, conn.read(&mut byte)).await {
            Err(_) => None,
            Ok(Ok(0)) => Some("the receiver closed the connection".into()),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("the connection broke: {e}")),
        }
    }
}

/// Appends one octet-counted RFC 5424 message for `record` to `out`.
fn frame(out: &mut Vec<u8>, record: &Record, sink: &SyslogSink) {
    let value: Option<Value> = serde_json::from_slice(&record.line).ok();
    let value = value.as_ref();
    let time = value.and_then(timestamp).unwrap_or_else(|| "-".into());
    let msgid = value
        .and_then(|v| {
            v.get("class_uid")
                .and_then(Value::as_u64)
                .map(|c| format!("OCSF-{c}"))
        })
        .or_else(|| value.and_then(event_name).map(|e| header_token(e, 32)))
        .unwrap_or_else(|| "-".into());
    let mut sd = format!("[{} seq=\"{}\"", sink.target.sd_id, record.seq);
    if let Some(uid) = value
        .and_then(|v| v.get("metadata"))
        .and_then(|m| m.get("uid"))
        .and_then(Value::as_str)
    {
        sd.push_str(" uid=\"");
        sd.push_str(&sd_escape(uid));
        sd.push('"');
    }
    sd.push(']');
    let header = format!(
        "<{PRI}>1 {time} {} {} {} {msgid} {sd} ",
        sink.host, sink.app, sink.pid
    );
    let len = header.len() + record.line.len();
    out.extend_from_slice(format!("{len} ").as_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&record.line);
}

/// The record's time as an RFC 3339 timestamp: an RFC 3339 string is kept, a number is taken
/// as milliseconds since the epoch (OCSF `time`).
fn timestamp(record: &Value) -> Option<String> {
    match record.get("time")? {
        Value::String(s) => humantime::parse_rfc3339_weak(s).ok().map(|_| s.clone()),
        Value::Number(n) => {
            let ms = n.as_u64()?;
            let t = UNIX_EPOCH.checked_add(Duration::from_millis(ms))?;
            Some(humantime::format_rfc3339_millis(t).to_string())
        }
        _ => None,
    }
    .filter(|s| s.len() <= 35 && !s.contains(' '))
    .or_else(|| Some(humantime::format_rfc3339_millis(SystemTime::now()).to_string()))
}

/// A header field: printable US-ASCII only (others become `_`), at most `max` bytes, `-` if empty.
fn header_token(text: &str, max: usize) -> String {
    let t: String = text
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if t.is_empty() {
        "-".into()
    } else {
        t
    }
}

/// An SD-PARAM value: `"`, `\` and `]` escaped with a backslash (RFC 5424 §6.3.3).
fn sd_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ship::config::{validate_sinks, SinkFile, Target};

    fn sink() -> SyslogSink {
        // A syslog target needs real TLS files; build one from a throwaway CA.
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["siem".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
        #[derive(serde::Deserialize)]
        struct Doc {
            sinks: Vec<SinkFile>,
        }
        let doc: Doc = toml::from_str(
            "[[sinks]]\nname = \"s\"\nkind = \"syslog-tls\"\naddress = \"siem:6514\"\nca = \"c.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        )
        .unwrap();
        let mut sinks = validate_sinks(&doc.sinks, dir.path()).unwrap();
        let Target::Syslog(t) = sinks.remove(0).target else {
            panic!("not syslog");
        };
        SyslogSink::new(t, "web-1", "loggate-agent")
    }

    fn framed(line: &str) -> String {
        let s = sink();
        let mut out = Vec::new();
        let record = Record {
            seq: 41,
            line: line.as_bytes().to_vec(),
            end: 0,
        };
        frame(&mut out, &record, &s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn frames_are_octet_counted_rfc5424_with_the_line_as_message_and_the_event_code_without_a_class(
    ) {
        let line = r#"{"seq":41,"prev":"00","time":"2026-11-27T07:50:38.147Z","metadata":{"event_code":"read.allowed"}}"#;
        let text = framed(line);
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        let pid = std::process::id();
        assert_eq!(
            msg,
            format!("<110>1 2026-11-27T07:50:38.147Z web-1 loggate-agent {pid} read.allowed [loggate@32473 seq=\"41\"] {line}")
        );
    }

    #[test]
    fn ocsf_records_name_their_class_and_uid() {
        let line = r#"{"seq":41,"prev":"00","class_uid":6003,"time":1795765838147,"metadata":{"uid":"0190-\"x]"}}"#;
        let text = framed(line);
        assert!(text.contains(" 2026-11-27T07:50:38.147Z web-1 "), "{text}");
        assert!(
            text.contains(r#" OCSF-6003 [loggate@32473 seq="41" uid="0190-\"x\]"] {"#),
            "{text}"
        );
        assert!(text.ends_with(line));
    }
}
