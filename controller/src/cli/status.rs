//! `loggate agent status HOST`: asks the agent itself (over mTLS, with your certificate) for its
//! version, uptime, grants held, bypass-audit mode, audit position and SIEM sinks' state, and
//! its certificate's end. The agent answers only users named in its `status_readers`
//! (agent/src/status.rs); a refusal exits 3 with the agent's next step.

use super::{agent_addr, connect, format_time, CliResult, Failure, OrExplain, Peer};
use crate::config::ClientConfig;
use loggate_core::grant::rough_duration;
use loggate_core::tls::Server;
use loggate_proto as pb;
use loggate_proto::agent_client::AgentClient;
use std::io::Write;

/// Asks agent `host` (at `given`, or where the controller says it is) for its status and
/// prints it as text or one JSON object.
pub async fn agent_status(
    config: &ClientConfig,
    host: &str,
    given: Option<String>,
    json: bool,
) -> CliResult {
    let addr = agent_addr(config, host, given).await?;
    let peer = Peer {
        name: format!("agent {host}"),
        addr: addr.clone(),
        server: Server::Agent(host),
    };
    let mut client = AgentClient::new(connect(&addr, config, Server::Agent(host)).await?);
    let status = client
        .status(pb::AgentStatusRequest {})
        .await
        .or_explain(config, &peer)
        .await?
        .into_inner();
    let now = loggate_core::grant::unix_now();
    let text = if json {
        format!("{}\n", as_json(&status, now))
    } else {
        as_text(&status, now)
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| Failure::from(format!("writing standard output: {e}")))
}

/// The status as one JSON object (field names as in the proto).
fn as_json(s: &pb::AgentStatusResponse, now: i64) -> serde_json::Value {
    serde_json::json!({
        "agent_id": s.agent_id,
        "version": s.version,
        "uptime_seconds": s.uptime_seconds,
        "grants_held": s.grants_held,
        "grant_revision": s.grant_revision,
        "live_streams": s.live_streams,
        "bypass_mode": s.bypass_mode,
        "bypass_note": (!s.bypass_note.is_empty()).then_some(&s.bypass_note),
        "audit_seq": s.audit_seq,
        "audit_lag_records": s.sinks.iter().map(|k| k.lag_records).max(),
        // Unknown (null) when any sink's is: an agent of an earlier build sends none.
        "audit_lag_bytes": s
            .sinks
            .iter()
            .map(|k| k.lag_bytes)
            .collect::<Option<Vec<u64>>>()
            .and_then(|b| b.into_iter().max()),
        "sinks": s.sinks.iter().map(|k| serde_json::json!({
            "name": k.name,
            "state": k.state,
            "lag_records": k.lag_records,
            "lag_bytes": k.lag_bytes,
            "delivered_seq": k.delivered_seq,
            "last_error": (!k.last_error.is_empty()).then_some(&k.last_error),
        })).collect::<Vec<_>>(),
        "certificate_not_after_unix": (s.certificate_not_after_unix != 0)
            .then_some(s.certificate_not_after_unix),
        "certificate_seconds_left": (s.certificate_not_after_unix != 0)
            .then_some(s.certificate_not_after_unix.saturating_sub(now)),
    })
}

/// `text` with every control character (ESC, C1, newlines, …) written as `\u{…}`: the
/// strings of a status come from the agent and from SIEM answers (`last_error` carries an
/// HTTP body), and must not drive the reader's terminal (OSC 52 writes its clipboard).
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// The status for people, one fact per line (every string from the agent made printable).
fn as_text(s: &pb::AgentStatusResponse, now: i64) -> String {
    let p = printable;
    let mut out = format!(
        "agent {} (loggate-agent {})\n",
        p(&s.agent_id),
        p(&s.version)
    );
    let up = i64::try_from(s.uptime_seconds).unwrap_or(i64::MAX);
    out.push_str(&format!("  up:           {}\n", rough_duration(up)));
    out.push_str(&format!(
        "  grants held:  {} (revision {})\n",
        s.grants_held, s.grant_revision
    ));
    out.push_str(&format!("  live streams: {}\n", s.live_streams));
    out.push_str(&format!("  bypass audit: {}", p(&s.bypass_mode)));
    if !s.bypass_note.is_empty() {
        out.push_str(&format!(" ({})", p(&s.bypass_note)));
    }
    out.push('\n');
    out.push_str(&format!("  audit:        seq {} on disk\n", s.audit_seq));
    if s.sinks.is_empty() {
        out.push_str("  sinks:        none configured\n");
    }
    for k in &s.sinks {
        // An agent of an earlier build sends no byte count: unknown, not 0.
        let bytes = k
            .lag_bytes
            .map_or_else(|| "bytes unknown".to_string(), |b| format!("{b} bytes"));
        out.push_str(&format!(
            "  sink {}: {}, {} records ({bytes}) behind",
            p(&k.name),
            p(&k.state),
            k.lag_records,
        ));
        if !k.last_error.is_empty() {
            out.push_str(&format!(" (last error: {})", p(&k.last_error)));
        }
        out.push('\n');
    }
    if s.certificate_not_after_unix == 0 {
        out.push_str("  certificate:  unreadable on the agent\n");
    } else {
        let left = s.certificate_not_after_unix.saturating_sub(now);
        let when = if left > 0 {
            format!("in {}", rough_duration(left))
        } else {
            format!("EXPIRED {} ago", rough_duration(left.saturating_neg()))
        };
        out.push_str(&format!(
            "  certificate:  ends {} ({when})\n",
            format_time(s.certificate_not_after_unix)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> pb::AgentStatusResponse {
        pb::AgentStatusResponse {
            agent_id: "web-1".into(),
            version: "0.1.0".into(),
            uptime_seconds: 7200,
            grants_held: 3,
            grant_revision: 17,
            live_streams: 1,
            bypass_mode: "fanotify".into(),
            bypass_note: "eBPF: no BTF".into(),
            audit_seq: 1234,
            sinks: vec![pb::SinkState {
                name: "siem".into(),
                state: "down".into(),
                lag_records: 42,
                lag_bytes: Some(51_234),
                delivered_seq: 1192,
                last_error: "connection refused".into(),
            }],
            certificate_not_after_unix: 1_000_000 + 86_400,
        }
    }

    #[test]
    fn status_text_names_every_fact_and_the_audit_lag() {
        let text = as_text(&sample(), 1_000_000);
        for fact in [
            "agent web-1 (loggate-agent 0.1.0)",
            "grants held:  3 (revision 17)",
            "bypass audit: fanotify (eBPF: no BTF)",
            "seq 1234 on disk",
            "sink siem: down, 42 records (51234 bytes) behind (last error: connection refused)",
            "(in ",
        ] {
            assert!(text.contains(fact), "{fact:?} missing in:\n{text}");
        }
    }

    #[test]
    fn status_text_escapes_control_characters_from_the_agent_and_the_siem() {
        let mut s = sample();
        s.sinks[0].last_error = "HEC 400: \u{1b}]52;c;ZWNobyBwd25lZA==\u{7}\r\nfake line".into();
        s.bypass_note = "\u{9b}31m".into();
        s.agent_id = "web-1\u{1b}[2J".into();
        let text = as_text(&s, 1_000_000);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("\\u{1b}]52;c;"), "{text}");
        assert_eq!(
            text.lines().count(),
            as_text(&sample(), 1_000_000).lines().count()
        );
    }

    #[test]
    fn status_survives_any_certificate_end_the_agent_sends() {
        for end in [i64::MIN, i64::MIN + 1, -1, i64::MAX] {
            let mut s = sample();
            s.certificate_not_after_unix = end;
            for now in [0, 1_000_000, i64::MAX, i64::MIN] {
                let text = as_text(&s, now);
                assert!(text.contains("certificate:"), "{text}");
                let _ = as_json(&s, now);
            }
        }
    }

    /// Review O4: an agent of an earlier build sends no byte count; it was shown as "0
    /// bytes" behind (and `audit_lag_bytes` 0) while records lagged.
    #[test]
    fn an_older_agents_missing_lag_bytes_are_shown_unknown_not_zero() {
        let mut s = sample();
        s.sinks[0].lag_bytes = None;
        let text = as_text(&s, 1_000_000);
        assert!(
            text.contains("sink siem: down, 42 records (bytes unknown) behind"),
            "{text}"
        );
        let json = as_json(&s, 1_000_000);
        assert!(json["audit_lag_bytes"].is_null(), "{json}");
        assert!(json["sinks"][0]["lag_bytes"].is_null(), "{json}");
        assert_eq!(json["audit_lag_records"], 42);
        // An agent of this build with nothing behind says 0 bytes.
        s.sinks[0].lag_bytes = Some(0);
        assert!(as_text(&s, 1_000_000).contains("(0 bytes) behind"));
        assert_eq!(as_json(&s, 1_000_000)["audit_lag_bytes"], 0);
    }

    #[test]
    fn status_json_gives_the_largest_sink_lag_and_seconds_left() {
        let json = as_json(&sample(), 1_000_000);
        assert_eq!(json["audit_lag_records"], 42);
        assert_eq!(json["audit_lag_bytes"], 51_234);
        assert_eq!(json["sinks"][0]["lag_bytes"], 51_234);
        assert_eq!(json["certificate_seconds_left"], 86_400);
        assert_eq!(json["sinks"][0]["state"], "down");
    }
}
