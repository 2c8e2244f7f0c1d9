//! End-to-end: the Prometheus `/metrics` endpoints of the real agent and controller, scraped
//! with real HTTP requests after real reads, denials, refused handshakes and grant changes: the
//! counters move by exactly what happened, and no subject or path ever appears in them.

use loggate_tests::{free_addr, text, Fixture};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// One HTTP/1.1 request to `addr`: the status code and the body.
fn http_get(addr: SocketAddr, target: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no end of head in {response:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The samples of a scrape: `name{labels}` → value (comments and `# EOF` left out).
fn scrape(addr: SocketAddr) -> anyhow::Result<(HashMap<String, f64>, String)> {
    let (status, body) = http_get(addr, "/metrics")?;
    anyhow::ensure!(status == 200, "scrape answered {status}: {body}");
    anyhow::ensure!(body.ends_with("# EOF\n"), "not OpenMetrics: {body}");
    let samples = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect();
    Ok((samples, body))
}

fn value(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

/// The sum of every series of `family` (`loggate_x_total{…}`).
fn family_sum(samples: &HashMap<String, f64>, family: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| *k == family || k.starts_with(&format!("{family}{{")))
        .map(|(_, v)| v)
        .sum()
}

/// Scrapes until `done` holds (at most 10 s): gauges refreshed by other tasks, records counted
/// when a stream's end is written.
fn scrape_until(
    addr: SocketAddr,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> anyhow::Result<HashMap<String, f64>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (samples, body) = scrape(addr)?;
        if done(&samples) {
            return Ok(samples);
        }
        if Instant::now() > deadline {
            anyhow::bail!("the metrics never reached the expected values:\n{body}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metrics_section(addr: SocketAddr) -> String {
    format!("[metrics]\nenabled = true\nlisten = \"{addr}\"\n")
}

#[test]
fn agent_metrics_count_requests_denials_bytes_redactions_and_refused_handshakes(
) -> anyhow::Result<()> {
    let metrics = free_addr()?;
    let f = Fixture::start_with(&metrics_section(metrics))?;
    let secret_log = f.logs.join("secret.log");
    std::fs::write(
        &secret_log,
        "INFO login ok password=hunter2hunter2\nINFO mail to someone@example.com\n",
    )?;
    let secret_path = secret_log.display().to_string();
    let (before, _) = scrape(metrics)?;

    f.grant_with_profile("alice", "30m", "default")?;
    let out = f.logs("alice", &["cat", &secret_path])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    // bob holds no grant: one denial, `no_grant`.
    let denied = f.logs("bob", &["cat", &secret_path])?;
    assert!(!denied.status.success());
    // A TLS handshake that is not one: refused and counted.
    {
        let mut raw = TcpStream::connect(f.cluster.agent_addr("web-1"))?;
        raw.write_all(b"GET / HTTP/1.1\r\n\r\n")?;
        let _ = raw.read(&mut [0u8; 64]);
    }

    let delta =
        |after: &HashMap<String, f64>, name: &str| value(after, name) - value(&before, name);
    let after = scrape_until(metrics, |s| {
        delta(
            s,
            "loggate_audit_records_written_total{event=\"read.finished\"}",
        ) >= 1.0
            && family_sum(s, "loggate_tls_handshake_refusals_total")
                > family_sum(&before, "loggate_tls_handshake_refusals_total")
    })?;
    assert_eq!(delta(&after, "loggate_agent_read_requests_total"), 2.0);
    assert_eq!(
        delta(
            &after,
            "loggate_agent_read_denials_total{reason=\"no_grant\"}"
        ),
        1.0
    );
    assert_eq!(
        family_sum(&after, "loggate_agent_read_denials_total")
            - family_sum(&before, "loggate_agent_read_denials_total"),
        1.0
    );
    assert_eq!(
        delta(&after, "loggate_agent_served_bytes_total"),
        stdout.len() as f64
    );
    assert_eq!(
        delta(
            &after,
            "loggate_agent_redactions_total{detector=\"secret\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(&after, "loggate_agent_redactions_total{detector=\"email\"}"),
        1.0
    );
    for event in ["read.allowed", "read.denied", "read.finished"] {
        assert_eq!(
            delta(
                &after,
                &format!("loggate_audit_records_written_total{{event=\"{event}\"}}")
            ),
            1.0,
            "{event}"
        );
    }
    assert_eq!(
        family_sum(&after, "loggate_tls_handshake_refusals_total")
            - family_sum(&before, "loggate_tls_handshake_refusals_total"),
        1.0
    );
    assert_eq!(value(&after, "loggate_agent_live_streams"), 0.0);
    assert_eq!(value(&after, "loggate_agent_grants_held"), 1.0);

    // Who read what never shows: no subject, no path, no peer.
    let (_, body) = scrape(metrics)?;
    for private in ["alice", "bob", "secret.log", "spiffe://", "127.0.0.1"] {
        assert!(!body.contains(private), "{private} in:\n{body}");
    }
    Ok(())
}

#[test]
fn agent_metrics_count_a_live_stream_while_it_is_open() -> anyhow::Result<()> {
    let metrics = free_addr()?;
    let f = Fixture::start_with(&metrics_section(metrics))?;
    f.grant("alice", "30m")?;
    let mut follow = f
        .cluster
        .logs_cmd("alice", "web-1", &["tail", "-f", &f.api_log()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let open = scrape_until(metrics, |s| value(s, "loggate_agent_live_streams") == 1.0);
    let _ = follow.kill();
    let _ = follow.wait();
    open?;
    scrape_until(metrics, |s| value(s, "loggate_agent_live_streams") == 0.0)?;
    Ok(())
}

#[test]
fn metrics_endpoint_answers_only_get_metrics() -> anyhow::Result<()> {
    let metrics = free_addr()?;
    let _f = Fixture::start_with(&metrics_section(metrics))?;
    assert_eq!(http_get(metrics, "/metrics")?.0, 200);
    assert_eq!(http_get(metrics, "/")?.0, 404);
    assert_eq!(http_get(metrics, "/metrics/../etc/passwd")?.0, 404);
    // A head that never ends is cut at its bound, not buffered for ever.
    let mut stream = TcpStream::connect(metrics)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let big = vec![b'a'; 64 * 1024];
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nX: ");
    let _ = stream.write_all(&big);
    let start = Instant::now();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // Closed at the bound, not at the head deadline.
    let took = start.elapsed();
    assert!(took < Duration::from_millis(900), "closed after {took:?}");
    // Still serving.
    assert_eq!(http_get(metrics, "/metrics")?.0, 200);
    Ok(())
}

#[test]
fn controller_metrics_count_agents_grants_requests_and_fanout_latency() -> anyhow::Result<()> {
    let metrics = free_addr()?;
    let mut cluster = loggate_tests::Cluster::new(None)?;
    let logs = cluster.dir.join("logs/app");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(logs.join("api.log"), "one line\n")?;
    let mut config = std::fs::read_to_string(&cluster.controller_config)?;
    config.push_str(&format!("\n{}", metrics_section(metrics)));
    std::fs::write(&cluster.controller_config, config)?;
    cluster.add_agent("web-1", &[&logs], "")?;
    cluster.start_controller()?;
    cluster.start_agent("web-1")?;

    let before = scrape_until(metrics, |s| {
        value(s, "loggate_controller_connected_agents") == 1.0
    })?;
    let glob = format!("{}/*.log", logs.display());
    let grant = cluster.issue_grant("alice", "web-1", &glob, "30m")?;
    cluster.wait_for_grant("web-1", &grant)?;
    let out = cluster.run_cli("admin", &["grant", "revoke", &grant, "--reason", "done"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    let delta =
        |after: &HashMap<String, f64>, name: &str| value(after, name) - value(&before, name);
    let after = scrape_until(metrics, |s| {
        delta(s, "loggate_controller_fanout_latency_seconds_count") >= 2.0
    })?;
    assert_eq!(delta(&after, "loggate_controller_grants_issued_total"), 1.0);
    assert_eq!(
        delta(&after, "loggate_controller_grants_revoked_total"),
        1.0
    );
    // The grant and its revocation, each sent once on web-1's stream.
    assert_eq!(
        delta(&after, "loggate_controller_fanout_latency_seconds_count"),
        2.0
    );
    assert!(value(&after, "loggate_controller_fanout_latency_seconds_sum") < 10.0);
    assert_eq!(
        delta(
            &after,
            "loggate_audit_records_written_total{event=\"grant.issued\"}"
        ),
        1.0
    );

    cluster.stop_agent("web-1");
    scrape_until(metrics, |s| {
        value(s, "loggate_controller_connected_agents") == 0.0
    })?;
    Ok(())
}

#[test]
fn a_metrics_address_other_hosts_reach_needs_allow_remote() -> anyhow::Result<()> {
    let f = Fixture::start()?;
    let info = &f.cluster.agents["web-1"];
    let config = std::fs::read_to_string(&info.config)?;
    let remote = info.dir.join("remote.toml");
    std::fs::write(
        &remote,
        config.replace(
            "[tls]",
            "[metrics]\nenabled = true\nlisten = \"0.0.0.0:9464\"\n\n[tls]",
        ),
    )?;
    let out = Command::new(f.cluster.bins.join("loggate-agent"))
        .arg("check-config")
        .arg(&remote)
        .output()?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("allow_remote = true"), "{stderr}");
    Ok(())
}

/// alice may read web-1's logs once bob (sre) approves.
const POLICY: &str = r#"
[groups]
sre = ["bob"]

[agents.web-1]
labels = { env = "prod" }

[[roles]]
name = "reads"
users = ["alice"]
hosts = ["web-1"]
paths = ["{logs}/*.log"]
max_ttl = "2h"
approval = "approvers"
approvers = 1
approver_groups = ["sre"]
"#;

#[test]
fn controller_metrics_count_access_requests_by_the_state_they_enter() -> anyhow::Result<()> {
    let metrics = free_addr()?;
    let mut cluster = loggate_tests::Cluster::new(None)?;
    let logs = cluster.dir.join("logs/app");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(logs.join("api.log"), "one line\n")?;
    cluster.set_policy(&POLICY.replace("{logs}", &logs.display().to_string()))?;
    let mut config = std::fs::read_to_string(&cluster.controller_config)?;
    config.push_str(&format!("\n{}", metrics_section(metrics)));
    std::fs::write(&cluster.controller_config, config)?;
    cluster.add_agent("web-1", &[&logs], "")?;
    cluster.start_controller()?;
    cluster.start_agent("web-1")?;
    let glob = format!("{}/*.log", logs.display());
    let request = || -> anyhow::Result<String> {
        let out = cluster.run_cli(
            "alice",
            &[
                "grant", "request", "--host", "web-1", "--path", &glob, "--reason", "INC-7",
                "--ttl", "1h", "--json",
            ],
        )?;
        anyhow::ensure!(out.status.success(), "{:?}", text(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(json["id"].as_str().unwrap_or_default().to_string())
    };
    let (before, _) = scrape(metrics)?;

    let approved = request()?;
    let out = cluster.run_cli("bob", &["grant", "approve", &approved, "--comment", "ok"])?;
    assert!(out.status.success(), "{:?}", text(&out));
    let denied = request()?;
    let out = cluster.run_cli("bob", &["grant", "deny", &denied, "--comment", "no"])?;
    assert!(out.status.success(), "{:?}", text(&out));
    let cancelled = request()?;
    let out = cluster.run_cli("alice", &["grant", "cancel", &cancelled])?;
    assert!(out.status.success(), "{:?}", text(&out));

    let (after, _) = scrape(metrics)?;
    let delta = |name: &str| value(&after, name) - value(&before, name);
    let state = |s: &str| {
        delta(&format!(
            "loggate_controller_access_requests_total{{state=\"{s}\"}}"
        ))
    };
    assert_eq!(state("pending"), 3.0);
    assert_eq!(state("approved"), 1.0);
    assert_eq!(state("denied"), 1.0);
    assert_eq!(state("cancelled"), 1.0);
    assert_eq!(delta("loggate_controller_grants_issued_total"), 1.0);
    Ok(())
}

/// One raw request to `addr` (the head as given): the status code and the body.
fn http_raw(addr: SocketAddr, head: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(head.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no end of head in {response:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

const TOKEN: &str = "4f1c0de5a7b2e9d3c6f80a1b2c3d4e5f";

#[test]
fn metrics_with_a_token_file_serve_nothing_without_the_token() -> anyhow::Result<()> {
    let metrics = free_addr()?;
    let token_dir = tempfile::tempdir()?;
    let token_file = token_dir.path().join("metrics.token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let _f = Fixture::start_with(&format!(
        "{}token_file = \"{}\"\n",
        metrics_section(metrics),
        token_file.display()
    ))?;
    let ask = |authorization: &str| {
        http_raw(
            metrics,
            &format!("GET /metrics HTTP/1.1\r\nHost: {metrics}\r\n{authorization}\r\n"),
        )
    };
    for refused in [
        String::new(),
        "Authorization: Bearer wrong-token-of-some-length\r\n".to_string(),
        format!("Authorization: Basic {TOKEN}\r\n"),
        format!("Authorization: Bearer {}\r\n", &TOKEN[..TOKEN.len() - 1]),
    ] {
        let (status, body) = ask(&refused)?;
        assert_eq!(status, 401, "{refused:?}: {body}");
        assert!(!body.contains("loggate_"), "{body}");
    }
    let (status, body) = ask(&format!("Authorization: Bearer {TOKEN}\r\n"))?;
    assert_eq!(status, 200, "{body}");
    // The series only a token holder reads.
    assert!(
        body.contains("loggate_agent_bypass_events_lost_total"),
        "{body}"
    );
    Ok(())
}

#[test]
fn metrics_without_a_token_leave_out_the_bypass_and_sink_series() -> anyhow::Result<()> {
    let metrics = free_addr()?;
    let _f = Fixture::start_with(&metrics_section(metrics))?;
    let (samples, body) = scrape(metrics)?;
    assert!(
        samples.contains_key("loggate_agent_read_requests_total"),
        "{body}"
    );
    for hidden in ["bypass", "sink_up", "sink_lag"] {
        assert!(
            !body.contains(hidden),
            "{hidden} served without a token:\n{body}"
        );
    }
    Ok(())
}

#[test]
fn metrics_refuse_a_host_that_is_not_this_endpoint() -> anyhow::Result<()> {
    let metrics = free_addr()?;
    let _f = Fixture::start_with(&metrics_section(metrics))?;
    let (status, body) = http_raw(
        metrics,
        "GET /metrics HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    )?;
    assert_eq!(status, 421, "{body}");
    assert!(!body.contains("loggate_"), "{body}");
    let (status, _) = http_raw(
        metrics,
        "GET /metrics HTTP/1.1\r\nHost: localhost:9464\r\n\r\n",
    )?;
    assert_eq!(status, 200);
    Ok(())
}

#[test]
fn idle_connections_and_a_flood_do_not_keep_the_scraper_waiting() -> anyhow::Result<()> {
    let metrics = free_addr()?;
    let _f = Fixture::start_with(&metrics_section(metrics))?;
    // Every place taken by a connection that never sends its head, then more of them.
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(TcpStream::connect(metrics)?);
    }
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let (status, _) = http_get(metrics, "/metrics")?;
    let took = start.elapsed();
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "the scrape took {took:?}");
    // An idle connection is closed once its head deadline passes.
    let mut one = TcpStream::connect(metrics)?;
    one.set_read_timeout(Some(Duration::from_secs(10)))?;
    let start = Instant::now();
    let mut answer = Vec::new();
    let _ = one.read_to_end(&mut answer);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "an idle connection stayed {took:?}"
    );
    drop(idle);
    Ok(())
}

#[test]
fn a_taken_metrics_port_stops_the_agent_before_its_audit_starts() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let metrics = taken.local_addr()?;
    let mut cluster = loggate_tests::Cluster::new(None)?;
    let logs = cluster.dir.join("logs/app");
    std::fs::create_dir_all(&logs)?;
    cluster.add_agent("web-1", &[&logs], &metrics_section(metrics))?;
    let info = &cluster.agents["web-1"];
    let mut child = Command::new(cluster.bins.join("loggate-agent"))
        .args(["run", "--config"])
        .arg(&info.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("the agent kept running with its metrics port taken");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr)?;
    }
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("metrics"), "{stderr}");
    let records = cluster.agent_audit_raw("web-1");
    assert!(
        records.is_empty(),
        "audit written before the refusal: {records:?}"
    );
    drop(taken);
    Ok(())
}

#[test]
fn fanout_latency_does_not_count_an_agent_catching_up() -> anyhow::Result<()> {
    let metrics = free_addr()?;
    let mut cluster = loggate_tests::Cluster::new(None)?;
    let logs = cluster.dir.join("logs/app");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(logs.join("api.log"), "one line\n")?;
    let mut config = std::fs::read_to_string(&cluster.controller_config)?;
    config.push_str(&format!("\n{}", metrics_section(metrics)));
    std::fs::write(&cluster.controller_config, config)?;
    cluster.add_agent("web-1", &[&logs], "")?;
    cluster.start_controller()?;
    cluster.start_agent("web-1")?;
    scrape_until(metrics, |s| {
        value(s, "loggate_controller_connected_agents") == 1.0
    })?;
    cluster.stop_agent("web-1");
    scrape_until(metrics, |s| {
        value(s, "loggate_controller_connected_agents") == 0.0
    })?;
    let (before, _) = scrape(metrics)?;
    // Issued while the agent is away: it arrives with the catch-up, seconds after its commit.
    let glob = format!("{}/*.log", logs.display());
    let grant = cluster.issue_grant("alice", "web-1", &glob, "30m")?;
    std::thread::sleep(Duration::from_secs(2));
    cluster.start_agent("web-1")?;
    cluster.wait_for_grant("web-1", &grant)?;
    let after = scrape_until(metrics, |s| {
        value(s, "loggate_controller_connected_agents") == 1.0
    })?;
    let count = "loggate_controller_fanout_latency_seconds_count";
    assert_eq!(
        value(&after, count),
        value(&before, count),
        "catch-up observed"
    );
    Ok(())
}

/// The samples of a scrape presenting the bearer token.
fn scrape_with_token(addr: SocketAddr) -> anyhow::Result<HashMap<String, f64>> {
    let (status, body) = http_raw(
        addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
    )?;
    anyhow::ensure!(status == 200, "scrape answered {status}: {body}");
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect())
}

/// Issue 14: the spool lag of each sink in bytes (what an outage costs in disk), beside the
/// records, scraped while the sink's receiver is down.
#[test]
fn metrics_report_a_down_sinks_lag_in_bytes() -> anyhow::Result<()> {
    let metrics = free_addr()?;
    let nobody = free_addr()?; // nothing listens there: the receiver is down
    let secrets = tempfile::tempdir()?;
    let token_file = secrets.path().join("metrics.token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let hec_token = secrets.path().join("hec.token");
    std::fs::write(&hec_token, "lag-test-token\n")?;
    let f = Fixture::start_with(&format!(
        "{}token_file = \"{}\"\n\
         [[audit.sinks]]\nname = \"siem\"\nkind = \"hec\"\n\
         url = \"http://{nobody}/services/collector/event\"\ntoken_file = \"{}\"\n",
        metrics_section(metrics),
        token_file.display(),
        hec_token.display()
    ))?;
    let up = "loggate_audit_sink_up{sink=\"siem\"}";
    let records = "loggate_audit_sink_lag_records{sink=\"siem\"}";
    let bytes = "loggate_audit_sink_lag_bytes{sink=\"siem\"}";
    let deadline = Instant::now() + Duration::from_secs(15);
    let samples = loop {
        let s = scrape_with_token(metrics)?;
        if s.get(up) == Some(&0.0) && value(&s, records) > 0.0 && s.contains_key(bytes) {
            break s;
        }
        anyhow::ensure!(Instant::now() < deadline, "no lag reported: {s:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Nothing was delivered: the bytes behind are the audit file's, at least a few hundred
    // bytes a record (an OCSF record is about a KiB), at most the whole file.
    let file = std::fs::metadata(f.cluster.dir.join("agents/web-1/audit.jsonl"))?.len();
    let lag_bytes = value(&samples, bytes);
    assert!(
        lag_bytes >= 200.0 * value(&samples, records),
        "{lag_bytes} bytes for {} records",
        value(&samples, records)
    );
    #[expect(clippy::cast_precision_loss, reason = "a test file of a few KiB")]
    let file = file as f64;
    assert!(lag_bytes <= file, "{lag_bytes} > {file}");
    Ok(())
}

/// The controller's log lines saying an agent's grant stream ended.
fn disconnections(cluster: &loggate_tests::Cluster) -> usize {
    std::fs::read_to_string(cluster.dir.join("controller/stderr.log"))
        .unwrap_or_default()
        .matches("agent disconnected")
        .count()
}

/// Observe review, finding 4: an agent that reconnects opens its new `WatchGrants` stream before
/// the controller has seen the old one end; the old one's end must not count it gone (nor may
/// the two streams count it twice).
#[tokio::test(flavor = "multi_thread")]
async fn connected_agents_counts_a_reconnecting_agent_once_while_its_old_stream_ends(
) -> anyhow::Result<()> {
    let metrics = free_addr()?;
    let cluster = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut cluster = loggate_tests::Cluster::new(None)?;
        let logs = cluster.dir.join("logs/app");
        std::fs::create_dir_all(&logs)?;
        let mut config = std::fs::read_to_string(&cluster.controller_config)?;
        config.push_str(&format!("\n{}", metrics_section(metrics)));
        std::fs::write(&cluster.controller_config, config)?;
        // web-1's certificate, no agent process: the test holds its streams.
        cluster.add_agent("web-1", &[&logs], "")?;
        cluster.start_controller()?;
        Ok(cluster)
    })
    .await??;
    let gauge = "loggate_controller_connected_agents";
    let wait_for = |want: f64| {
        tokio::task::spawn_blocking(move || scrape_until(metrics, |s| value(s, gauge) == want))
    };
    let watch = || loggate_proto::WatchGrantsRequest {
        agent_id: "web-1".into(),
        ..Default::default()
    };
    let mut old_client = cluster.controller_client_as("agents/web-1").await?;
    let old = old_client.watch_grants(watch()).await?.into_inner();
    wait_for(1.0).await??;
    // The reconnect: a second stream while the first is still open.
    let mut new_client = cluster.controller_client_as("agents/web-1").await?;
    let new = new_client.watch_grants(watch()).await?.into_inner();
    // Both are registered once the second has been answered; still one agent.
    let (samples, _) = tokio::task::spawn_blocking(move || scrape(metrics)).await??;
    assert_eq!(value(&samples, gauge), 1.0, "counted twice");

    // The old stream ends; wait until the controller has seen it end.
    drop(old);
    drop(old_client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while disconnections(&cluster) < 1 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the controller never saw the old stream end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (samples, _) = tokio::task::spawn_blocking(move || scrape(metrics)).await??;
    assert_eq!(
        value(&samples, gauge),
        1.0,
        "the old stream's end counted the agent gone while its new stream is open"
    );

    // The new one ends too: gone.
    drop(new);
    drop(new_client);
    wait_for(0.0).await??;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}
