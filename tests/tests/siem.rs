//! End-to-end: the agent delivers its audit stream to a real rsyslog (RFC 5425 syslog over
//! mutual TLS, `gtls` driver) and to a HEC collector, at least once: every record arrives,
//! through a receiver outage and through the agent's own SIGKILL, and the SIEM's copy verifies
//! with `loggate audit verify`. These tests need `rsyslogd` (`cargo xtask test` installs it).

use loggate_core::audit::{event_name, record_field};
use loggate_tests::{free_addr, text, Fixture, HecReceiver, Rsyslog};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The agent's side of the syslog sink (its own certificate is its client identity).
fn syslog_sink(addr: std::net::SocketAddr) -> String {
    format!(
        "[[audit.sinks]]\n\
         name = \"siem\"\n\
         kind = \"syslog-tls\"\n\
         address = \"{addr}\"\n\
         server_name = \"siem\"\n\
         ca = \"../../pki/ca.crt\"\n\
         cert = \"../../pki/agents/web-1.crt\"\n\
         key = \"../../pki/agents/web-1.key\"\n\
         batch_size = 50\n"
    )
}

fn loggate(f: &Fixture, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(f.cluster.bins.join("loggate"))
        .args(args)
        .output()?;
    anyhow::ensure!(out.status.success(), "loggate {args:?}: {}", text(&out).1);
    Ok(())
}

/// A cluster whose agent ships to an rsyslog on loopback. The receiver's certificate comes
/// from the cluster's CA, or (`trusted = false`) from a CA the agent does not know.
fn start(trusted: bool) -> anyhow::Result<(Fixture, Rsyslog)> {
    start_permitting(trusted, "web-1")
}

/// Like [`start`], rsyslog accepting only the client named `peer`.
fn start_permitting(trusted: bool, peer: &str) -> anyhow::Result<(Fixture, Rsyslog)> {
    start_configured(trusted, peer, "")
}

/// Like [`start`], with `settings` (top-level agent configuration keys) added.
fn start_configured(
    trusted: bool,
    peer: &str,
    settings: &str,
) -> anyhow::Result<(Fixture, Rsyslog)> {
    let addr = free_addr()?;
    let f = Fixture::start_with(&format!("{settings}\n{}", syslog_sink(addr)))?;
    let pki = f.cluster.dir.join("pki");
    let issuer = if trusted {
        loggate(
            &f,
            &[
                "pki",
                "issue",
                &pki.display().to_string(),
                "--agent",
                "siem",
            ],
        )?;
        pki.clone()
    } else {
        let other = f.cluster.dir.join("other-pki");
        loggate(
            &f,
            &[
                "pki",
                "init",
                &other.display().to_string(),
                "--agent",
                "siem",
            ],
        )?;
        other
    };
    let mut rsyslog = Rsyslog::new(
        &f.cluster.dir.join("siem"),
        addr,
        &pki.join("ca.crt"),
        &issuer.join("agents/siem.crt"),
        &issuer.join("agents/siem.key"),
        &[peer],
    )?;
    rsyslog.start()?;
    Ok((f, rsyslog))
}

fn agent_dir(f: &Fixture) -> PathBuf {
    f.cluster.dir.join("agents/web-1")
}

/// The agent's audit file, line by line, exactly.
fn audit_lines(f: &Fixture) -> Vec<String> {
    std::fs::read_to_string(agent_dir(f).join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn seq(line: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| loggate_core::audit::record_seq(&v))
        .unwrap_or(0)
}

/// The received copy de-duplicated by `seq`. At-least-once delivery resends what was in flight
/// when a connection broke; such duplicates must be byte-for-byte the same record.
fn dedup(received: &[String]) -> BTreeMap<u64, String> {
    let mut by_seq = BTreeMap::new();
    for line in received {
        let s = seq(line);
        assert!(s > 0, "a received message is not an audit record: {line}");
        if let Some(old) = by_seq.insert(s, line.clone()) {
            assert_eq!(&old, line, "two different records with seq {s}");
        }
    }
    if by_seq.len() < received.len() {
        eprintln!(
            "received {} messages, {} records: {} duplicates",
            received.len(),
            by_seq.len(),
            received.len() - by_seq.len()
        );
    }
    by_seq
}

/// Waits until every record now in the agent's audit file has been received.
fn wait_all_delivered(
    f: &Fixture,
    received: impl Fn() -> Vec<String>,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<u64, String>> {
    let want = audit_lines(f);
    let deadline = Instant::now() + timeout;
    loop {
        let got = dedup(&received());
        let missing: Vec<u64> = want
            .iter()
            .filter(|l| got.get(&seq(l)) != Some(*l))
            .map(|l| seq(l))
            .collect();
        if missing.is_empty() {
            return Ok(got);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{} of {} records not received after {timeout:?}, first {:?}; agent log:\n{}",
                missing.len(),
                want.len(),
                &missing[..missing.len().min(10)],
                std::fs::read_to_string(agent_dir(f).join("stderr.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether each record first arrived after every record before it in the chain: resends after
/// an outage repeat earlier records, but nothing new may arrive ahead of a missing one.
fn first_arrivals_in_order(received: &[String]) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    let mut newest = 0;
    for line in received {
        let s = seq(line);
        if seen.insert(s) {
            if s < newest {
                return false;
            }
            newest = s;
        }
    }
    true
}

/// The agent's rotated audit files, oldest first.
fn rotated(f: &Fixture) -> Vec<PathBuf> {
    loggate_core::audit::rotated_files(&agent_dir(f).join("audit.jsonl")).unwrap_or_default()
}

/// Every record of the agent's retained audit files (rotated ones, then the current one).
fn all_audit_records(f: &Fixture) -> Vec<serde_json::Value> {
    let mut files = rotated(f);
    files.push(agent_dir(f).join("audit.jsonl"));
    files
        .iter()
        .flat_map(|p| loggate_tests::read_audit_file(p))
        .collect()
}

/// Reads as alice until the agent has rotated its audit file `n` more times (bounded).
fn read_until_rotated(f: &Fixture, n: usize) -> anyhow::Result<()> {
    let rotations = |f: &Fixture| {
        all_audit_records(f)
            .iter()
            .filter(|r| event_name(r) == Some("audit.rotated"))
            .count()
    };
    let want = rotations(f) + n;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rotations(f) < want {
        anyhow::ensure!(Instant::now() < deadline, "not {n} rotations within 60 s");
        let out = f.logs("alice", &["cat", &f.api_log()])?;
        anyhow::ensure!(out.status.success(), "read refused: {}", text(&out).1);
    }
    Ok(())
}

/// Small audit files (rotated every 4 KB, one kept) and a budget too large to matter.
const SMALL_FILES: &str =
    "audit_rotate_bytes = 4000\naudit_keep_files = 1\naudit_max_bytes = 100000000";

#[test]
fn rsyslog_down_across_two_rotations_and_an_agent_restart_gets_every_record_in_order(
) -> anyhow::Result<()> {
    let (mut f, mut rsyslog) = start_configured(true, "web-1", SMALL_FILES)?;
    f.grant("alice", "30m")?;
    for _ in 0..3 {
        assert!(f.logs("alice", &["cat", &f.api_log()])?.status.success());
    }
    wait_all_delivered(&f, || rsyslog.received(), Duration::from_secs(30))?;
    rsyslog.stop();
    read_until_rotated(&f, 2)?;
    f.cluster.kill_agent("web-1");
    f.cluster.start_agent("web-1")?;
    read_until_rotated(&f, 1)?;
    // Nothing the sink has not delivered was deleted, however many rotations passed.
    let first_kept = all_audit_records(&f)
        .first()
        .and_then(loggate_core::audit::record_seq);
    rsyslog.start()?;
    let copy = wait_all_delivered(&f, || rsyslog.received(), Duration::from_secs(60))?;
    assert!(
        first_arrivals_in_order(&rsyslog.received()),
        "records arrived out of order"
    );
    assert!(
        copy.len() as u64 >= first_kept.expect("a retained record"),
        "the copy reaches back to where the retained files start"
    );
    verify_copy(&f, &copy)?;
    Ok(())
}

#[test]
fn an_agent_killed_between_a_rotations_rename_and_its_first_record_continues_the_chain(
) -> anyhow::Result<()> {
    let (mut f, rsyslog) = start_configured(true, "web-1", SMALL_FILES)?;
    f.grant("alice", "30m")?;
    for _ in 0..3 {
        assert!(f.logs("alice", &["cat", &f.api_log()])?.status.success());
    }
    f.cluster.kill_agent("web-1");
    // `rotate` renamed the file and the agent died before the new one held a record.
    let current = agent_dir(&f).join("audit.jsonl");
    let last = audit_lines(&f).last().map(|l| seq(l)).expect("records");
    std::fs::rename(
        &current,
        agent_dir(&f).join(format!("audit.jsonl.{last:012}")),
    )?;
    f.cluster.start_agent("web-1")?;
    for _ in 0..3 {
        assert!(f.logs("alice", &["cat", &f.api_log()])?.status.success());
    }
    // The restart continued the chain (not a new one at seq 1 beside the rotated files)…
    let continued = all_audit_records(&f)
        .into_iter()
        .find(|r| loggate_core::audit::record_seq(r) == Some(last + 1))
        .expect("the record after the renamed file's last");
    assert_eq!(event_name(&continued), Some("audit.rotated"), "{continued}");
    // …and the SIEM gets every record once: one record per seq, 1..n, verifying as a chain.
    let copy = wait_all_delivered(&f, || rsyslog.received(), Duration::from_secs(60))?;
    verify_copy(&f, &copy)?;
    Ok(())
}

#[test]
fn a_rotated_audit_file_is_kept_while_the_sink_is_behind_and_deleted_once_it_caught_up(
) -> anyhow::Result<()> {
    let (f, mut rsyslog) = start_configured(true, "web-1", SMALL_FILES)?;
    f.grant("alice", "30m")?;
    wait_all_delivered(&f, || rsyslog.received(), Duration::from_secs(30))?;
    rsyslog.stop();
    read_until_rotated(&f, 3)?;
    // One file is to be kept, but the sink has delivered none of them: all stay.
    std::thread::sleep(Duration::from_secs(2)); // a few retention passes
    let behind = rotated(&f);
    assert!(
        behind.len() >= 3,
        "rotated files deleted before delivery: {behind:?}"
    );
    assert!(
        !all_audit_records(&f)
            .iter()
            .any(|r| event_name(r) == Some("audit.files_deleted")),
        "a deletion while the sink was behind"
    );
    rsyslog.start()?;
    let copy = wait_all_delivered(&f, || rsyslog.received(), Duration::from_secs(60))?;
    verify_copy(&f, &copy)?;
    // Caught up: the next passes delete what is beyond `audit_keep_files`, and say so.
    wait_until(
        Duration::from_secs(20),
        "the delivered files deleted",
        || rotated(&f).len() <= 1,
    )?;
    assert!(!behind[0].exists(), "{} still there", behind[0].display());
    let deleted: Vec<serde_json::Value> = all_audit_records(&f)
        .into_iter()
        .filter(|r| event_name(r) == Some("audit.files_deleted"))
        .collect();
    let names = deleted
        .iter()
        .filter_map(|r| record_field(r, "deleted_files"))
        .map(|d| d.to_string())
        .collect::<String>();
    let oldest = behind[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(names.contains(&oldest), "{oldest} not named in {deleted:?}");
    Ok(())
}

#[test]
fn a_full_audit_budget_refuses_reads_until_the_sink_catches_up() -> anyhow::Result<()> {
    let (f, mut rsyslog) = start_configured(
        true,
        "web-1",
        // Rotation is checked once a second, so the current file can pass 4 KB by tens of KB.
        "audit_rotate_bytes = 4000\naudit_keep_files = 10\naudit_max_bytes = 100000",
    )?;
    f.grant("alice", "30m")?;
    wait_all_delivered(&f, || rsyslog.received(), Duration::from_secs(30))?;
    rsyslog.stop();
    // Reads go on until the undelivered files fill the budget; then they are refused. Bounded
    // by count (each read adds at least ~1 KB of records: 100 KB takes far fewer than the
    // bound), with a deadline generous enough for a loaded 2-core CI, where one CLI process
    // can take seconds.
    const MAX_READS: usize = 1_000;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut reads = 0;
    let refused = loop {
        anyhow::ensure!(
            reads < MAX_READS && Instant::now() < deadline,
            "the budget never refused a read ({reads} reads served)"
        );
        let out = f.logs("alice", &["cat", &f.api_log()])?;
        if !out.status.success() {
            break text(&out);
        }
        reads += 1;
        // Slow enough for the once-a-second rotation to cut the growth into files.
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        refused.1.contains("cannot write its audit log"),
        "{refused:?}"
    );
    let records = all_audit_records(&f);
    let exhausted = records
        .iter()
        .find(|r| event_name(r) == Some("audit.budget_exhausted"))
        .expect("audit.budget_exhausted recorded");
    assert_eq!(
        record_field(exhausted, "budget_bytes"),
        Some(&100000.into())
    );
    let waiting = record_field(exhausted, "waiting_for").and_then(|w| w.as_array());
    assert!(
        waiting.is_some_and(|w| w.contains(&"siem".into())),
        "{exhausted}"
    );
    let log = std::fs::read_to_string(agent_dir(&f).join("stderr.log"))?;
    assert!(log.contains("fill their budget"), "{log}");
    // Still refused a moment later: nothing was delivered, nothing may go.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!f.logs("alice", &["cat", &f.api_log()])?.status.success());
    rsyslog.start()?;
    wait_until(Duration::from_secs(180), "reads served again", || {
        f.logs("alice", &["cat", &f.api_log()])
            .is_ok_and(|o| o.status.success())
    })?;
    assert!(
        all_audit_records(&f)
            .iter()
            .any(|r| event_name(r) == Some("audit.budget_recovered")),
        "audit.budget_recovered recorded"
    );
    let log = std::fs::read_to_string(agent_dir(&f).join("stderr.log"))?;
    assert!(log.contains("within their budget again"), "{log}");
    let copy = wait_all_delivered(&f, || rsyslog.received(), Duration::from_secs(60))?;
    verify_copy(&f, &copy)?;
    Ok(())
}

/// Runs `loggate audit verify` on the SIEM's de-duplicated copy.
fn verify_copy(f: &Fixture, copy: &BTreeMap<u64, String>) -> anyhow::Result<()> {
    let seqs: Vec<u64> = copy.keys().copied().collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "the copy is not seq 1..n without gaps");
    let path = f.cluster.dir.join("siem-copy.jsonl");
    let text_copy: String = copy.values().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text_copy)?;
    let out = f
        .cluster
        .cli("admin")
        .args(["audit", "verify"])
        .arg(&path)
        .output()?;
    assert!(
        out.status.success(),
        "verify failed on the SIEM copy: {:?}",
        text(&out)
    );
    Ok(())
}

/// Reads through the gate in a loop (every read writes audit records) until `stop`.
fn busy_reads(f: &Fixture, stop: Arc<AtomicBool>) -> JoinHandle<usize> {
    let bin = f.cluster.bins.join("loggate");
    let config = f.cluster.client_config("alice");
    let addr = f.cluster.agent_addr("web-1");
    let path = f.api_log();
    std::thread::spawn(move || {
        let mut ok = 0;
        while !stop.load(Ordering::Relaxed) {
            let out = Command::new(&bin)
                .env("LOGGATE_CONFIG", &config)
                .args([
                    "logs",
                    "cat",
                    &path,
                    "--host",
                    "web-1",
                    "--agent-addr",
                    &addr,
                ])
                .output();
            if out.is_ok_and(|o| o.status.success()) {
                ok += 1;
            } else {
                std::thread::sleep(Duration::from_millis(100)); // the agent is restarting
            }
        }
        ok
    })
}

fn status(f: &Fixture) -> serde_json::Value {
    std::fs::read(agent_dir(f).join("state/sinks/siem.status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn cursor_seq(f: &Fixture) -> Option<u64> {
    let bytes = std::fs::read(agent_dir(f).join("state/sinks/siem.cursor")).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["seq"].as_u64()
}

fn wait_until(timeout: Duration, what: &str, cond: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        anyhow::ensure!(Instant::now() < deadline, "{what} not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn rsyslog_receives_every_event_and_its_copy_verifies() -> anyhow::Result<()> {
    let (f, rsyslog) = start(true)?;
    f.grant("alice", "30m")?;
    for _ in 0..10 {
        let out = f.logs("alice", &["cat", &f.api_log()])?;
        assert!(out.status.success(), "{}", text(&out).1);
    }
    // A grant naming 8 path globs of ~900 bytes: its `grant.received` record is larger than
    // rsyslog's 8 KB default limit. (Denied paths are recorded cut to 256 bytes since the
    // denial-flood fix, so a long denied path no longer makes a large record.)
    let globs: Vec<String> = (0..8)
        .map(|i| format!("{}/{i:02}{}.log", f.logs.display(), "x".repeat(900)))
        .collect();
    let mut args = vec!["grant", "issue", "--subject", "bob", "--host", "web-1"];
    for g in &globs {
        args.extend(["--path", g.as_str()]);
    }
    args.extend(["--ttl", "10m", "--reason", "TEST-LARGE", "--json"]);
    let out = f.cluster.run_cli("admin", &args)?;
    assert!(out.status.success(), "{}", text(&out).1);
    let issued: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = issued["id"].as_str().unwrap_or_default();
    // On the agent (and so in its audit file) before waiting for delivery.
    f.cluster.wait_for_grant("web-1", id)?;
    let copy = wait_all_delivered(&f, || rsyslog.received(), Duration::from_secs(30))?;
    assert!(
        copy.values().any(|l| l.len() > 8_192),
        "the large record arrived whole"
    );
    verify_copy(&f, &copy)?;
    // The cursor follows delivery (2 s after the write, syslog having no acknowledgement).
    let last = *copy.keys().last().unwrap_or(&0);
    wait_until(Duration::from_secs(10), "cursor at the last record", || {
        cursor_seq(&f) >= Some(last)
    })?;
    Ok(())
}

#[test]
fn rsyslog_down_for_30s_during_busy_reads_loses_nothing() -> anyhow::Result<()> {
    outage_loses_nothing(Rsyslog::stop, Duration::from_secs(30))
}

/// A receiver crash: whatever rsyslog had read but not written out dies with it, so only a
/// sender that resends what it cannot know was kept loses nothing.
#[test]
fn rsyslog_killed_during_busy_reads_loses_nothing() -> anyhow::Result<()> {
    outage_loses_nothing(Rsyslog::kill, Duration::from_secs(5))
}

/// Busy reads; the receiver goes away (`end`) for `down`, comes back; every record arrives.
fn outage_loses_nothing(end: fn(&mut Rsyslog), down: Duration) -> anyhow::Result<()> {
    let (f, mut rsyslog) = start(true)?;
    f.grant("alice", "30m")?;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = busy_reads(&f, stop.clone());
    std::thread::sleep(Duration::from_secs(4));
    end(&mut rsyslog);
    let down_at = audit_lines(&f).len();
    std::thread::sleep(down);
    let during = audit_lines(&f).len() - down_at;
    // The outage is visible: the sink says it is down and how far behind it is.
    let st = status(&f);
    assert_eq!(st["state"], "down", "{st}");
    assert!(st["lag"].as_u64() > Some(0), "{st}");
    let log = std::fs::read_to_string(agent_dir(&f).join("stderr.log"))?;
    assert!(log.contains("cannot deliver"), "{log}");
    rsyslog.start()?;
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let ok_reads = reads
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    assert!(
        during > 10,
        "reads went on during the outage ({during} records)"
    );
    assert!(ok_reads > 20, "{ok_reads} reads");
    let copy = wait_all_delivered(&f, || rsyslog.received(), Duration::from_secs(60))?;
    verify_copy(&f, &copy)?;
    Ok(())
}

#[test]
fn agent_killed_while_forwarding_loses_nothing_after_restart() -> anyhow::Result<()> {
    let (mut f, rsyslog) = start(true)?;
    f.grant("alice", "30m")?;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = busy_reads(&f, stop.clone());
    std::thread::sleep(Duration::from_secs(4));
    f.cluster.kill_agent("web-1");
    let before = audit_lines(&f).len();
    let got_before = dedup(&rsyslog.received()).len();
    f.cluster.start_agent("web-1")?;
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    reads
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    assert!(
        got_before > 0 && before > 20,
        "forwarding was under way when killed"
    );
    let copy = wait_all_delivered(&f, || rsyslog.received(), Duration::from_secs(30))?;
    verify_copy(&f, &copy)?;
    Ok(())
}

#[test]
fn untrusted_receiver_gets_nothing_and_the_cursor_stays() -> anyhow::Result<()> {
    let (f, rsyslog) = start(false)?;
    f.grant("alice", "30m")?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert!(out.status.success(), "{}", text(&out).1);
    let log_path = agent_dir(&f).join("stderr.log");
    let waited = wait_until(
        Duration::from_secs(10),
        "a TLS error in the agent log",
        || std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("TLS handshake")),
    );
    if let Err(e) = waited {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        anyhow::bail!(
            "{e}: agent log:\n{log}\nrsyslog:\n{}",
            rsyslog.internal_log()
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let log = std::fs::read_to_string(&log_path)?;
    // The foreign CA has the same name as ours, so rustls reports its signature as bad.
    assert!(log.contains("invalid peer certificate"), "{log}");
    assert!(rsyslog.received().is_empty(), "{:?}", rsyslog.received());
    assert_eq!(cursor_seq(&f), None, "no cursor: nothing was delivered");
    let st = status(&f);
    assert_eq!(st["state"], "down", "{st}");
    assert_eq!(st["delivered_seq"], 0, "{st}");
    assert!(st["lag"].as_u64() >= Some(3), "{st}");
    Ok(())
}

/// rsyslog refuses our client name (`permittedPeer`) only after the TLS handshake has completed
/// on our side, by closing the connection: nothing may count as delivered.
#[test]
fn receiver_refusing_our_name_gets_nothing_and_the_cursor_stays() -> anyhow::Result<()> {
    let (f, rsyslog) = start_permitting(true, "someone-else")?;
    f.grant("alice", "30m")?;
    for _ in 0..3 {
        let out = f.logs("alice", &["cat", &f.api_log()])?;
        assert!(out.status.success(), "{}", text(&out).1);
    }
    std::thread::sleep(Duration::from_secs(8));
    assert!(rsyslog.received().is_empty(), "{:?}", rsyslog.received());
    let said = rsyslog.internal_log();
    assert!(
        said.contains("not permitted") || said.contains("not authorized"),
        "rsyslog says why: {said}"
    );
    assert_eq!(cursor_seq(&f), None, "no cursor: nothing was delivered");
    let st = status(&f);
    assert_eq!(st["delivered_seq"], 0, "{st}");
    Ok(())
}

/// The record inside one HEC event line (`…,"event":<record>}`).
fn hec_record(event_line: &str) -> String {
    let start = event_line.find(",\"event\":").map_or(0, |i| i + 9);
    event_line[start..event_line.len() - 1].to_string()
}

/// The audit records the collector received (only from requests it answered 200 with
/// `accepted_only`), in arrival order.
fn hec_records(hec: &HecReceiver, accepted_only: bool) -> Vec<String> {
    hec.requests()
        .iter()
        .filter(|r| !accepted_only || r.status == 200)
        .flat_map(|r| {
            String::from_utf8_lossy(&r.body)
                .lines()
                .map(hec_record)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn hec_collector_gets_every_event_in_batches_after_a_503() -> anyhow::Result<()> {
    let hec = HecReceiver::start(2)?;
    let token = "0d4c-test-token-7f1e";
    // The token file must exist before the agent validates its configuration.
    let secrets = tempfile::tempdir()?;
    let token_file = secrets.path().join("hec.token");
    std::fs::write(&token_file, format!("{token}\n"))?;
    let sink = format!(
        "[[audit.sinks]]\n\
         name = \"splunk\"\n\
         kind = \"hec\"\n\
         url = \"http://{}/services/collector/event\"\n\
         token_file = {:?}\n\
         batch_size = 5\n",
        hec.addr,
        token_file.display().to_string()
    );
    let f = Fixture::start_with(&sink)?;
    f.grant("alice", "30m")?;
    for _ in 0..6 {
        let out = f.logs("alice", &["cat", &f.api_log()])?;
        assert!(out.status.success(), "{}", text(&out).1);
    }
    let received = || hec_records(&hec, true);
    let copy = wait_all_delivered(&f, received, Duration::from_secs(30))?;
    verify_copy(&f, &copy)?;
    let requests = hec.requests();
    assert_eq!(requests[0].status, 503);
    assert_eq!(requests[1].status, 503);
    assert_eq!(requests[2].status, 200);
    // The refused batch is sent again, from its first record (with what was written since).
    let (refused, resent) = (
        String::from_utf8_lossy(&requests[0].body),
        String::from_utf8_lossy(&requests[2].body),
    );
    assert!(resent.starts_with(&*refused), "{refused}\n---\n{resent}");
    for r in &requests {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/services/collector/event")
        );
        assert_eq!(
            r.authorization.as_deref(),
            Some(&*format!("Splunk {token}"))
        );
        let events = String::from_utf8_lossy(&r.body).lines().count();
        assert!((1..=5).contains(&events), "{events} events in one batch");
        for line in String::from_utf8_lossy(&r.body).lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            assert_eq!(v["source"], "loggate");
            assert_eq!(v["sourcetype"], "ocsf");
            assert_eq!(v["host"], "web-1");
            assert!(v["time"].as_f64() > Some(1.7e9), "{line}");
        }
    }
    let accepted: Vec<usize> = requests
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| String::from_utf8_lossy(&r.body).lines().count())
        .collect();
    assert!(
        accepted.len() >= 3 && accepted.contains(&5),
        "several batches, full ones of 5: {accepted:?}"
    );
    let log = std::fs::read_to_string(agent_dir(&f).join("stderr.log"))?;
    assert!(log.contains("503"), "the refusal is logged: {log}");
    assert!(!log.contains(token), "the token is never logged");
    Ok(())
}

#[test]
fn hec_over_https_delivers_every_event() -> anyhow::Result<()> {
    let addr = free_addr()?;
    let secrets = tempfile::tempdir()?;
    let token_file = secrets.path().join("hec.token");
    std::fs::write(&token_file, "https-token\n")?;
    let f = Fixture::start_with(&format!(
        "[[audit.sinks]]\nname = \"splunk\"\nkind = \"hec\"\n\
         url = \"https://{addr}/services/collector/event\"\n\
         token_file = {:?}\nca = \"../../pki/ca.crt\"\n",
        token_file.display().to_string()
    ))?;
    let pki = f.cluster.dir.join("pki");
    loggate(
        &f,
        &[
            "pki",
            "issue",
            &pki.display().to_string(),
            "--agent",
            "splunk",
        ],
    )?;
    let hec = HecReceiver::start_at(
        addr,
        0,
        Some((
            &pki.join("agents/splunk.crt"),
            &pki.join("agents/splunk.key"),
        )),
    )?;
    f.grant("alice", "30m")?;
    let out = f.logs("alice", &["cat", &f.api_log()])?;
    assert!(out.status.success(), "{}", text(&out).1);
    let received = || hec_records(&hec, false);
    let copy = wait_all_delivered(&f, received, Duration::from_secs(30))?;
    verify_copy(&f, &copy)?;
    Ok(())
}

#[test]
fn controller_ships_its_own_audit_stream_too() -> anyhow::Result<()> {
    let hec = HecReceiver::start(0)?;
    let secrets = tempfile::tempdir()?;
    let token_file = secrets.path().join("hec.token");
    std::fs::write(&token_file, "controller-token\n")?;
    let mut cluster = loggate_tests::Cluster::new(None)?;
    let mut config = std::fs::read_to_string(&cluster.controller_config)?;
    config.push_str(&format!(
        "\n[[audit.sinks]]\nname = \"splunk\"\nkind = \"hec\"\n\
         url = \"http://{}/services/collector/event\"\ntoken_file = {:?}\n",
        hec.addr,
        token_file.display().to_string()
    ));
    std::fs::write(&cluster.controller_config, config)?;
    let logs = cluster.dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    cluster.add_agent("web-1", &[&logs], "")?;
    cluster.start_controller()?;
    cluster.start_agent("web-1")?;
    let id = cluster.grant(
        "alice",
        "web-1",
        &format!("{}/*.log", logs.display()),
        "10m",
    )?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let issued = hec.requests().iter().any(|r| {
            String::from_utf8_lossy(&r.body).lines().any(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                let record = &v["event"];
                v["host"] == "controller"
                    && event_name(record) == Some("grant.issued")
                    && record_field(record, "grant_id").and_then(|g| g.as_str()) == Some(&*id)
            })
        });
        if issued {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "grant.issued never reached the collector"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Measurement, not a check (run with `--ignored --nocapture`): the agent's real writer appends
/// (and syncs) events at a fixed rate for `LOGGATE_BENCH_SECS` (default 10) seconds while a
/// syslog-tls sink in the same process delivers them to rsyslog; prints the delay from an
/// append's return (the record durable) to its arrival in rsyslog's output file, p50/p99/max.
/// `LOGGATE_BENCH_RATE` sets the rate (default 5000 events/s).
#[test]
#[ignore]
fn delivery_latency_to_rsyslog() -> anyhow::Result<()> {
    use loggate_core::audit::ship::{spawn_sinks, validate_sinks, ShipContext, SinkFile};
    use loggate_core::audit::{AuditLog, SharedAuditLog};
    let rate: u64 = std::env::var("LOGGATE_BENCH_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5000);
    let secs: u64 = std::env::var("LOGGATE_BENCH_SECS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let cluster = loggate_tests::Cluster::new(None)?;
    let pki = cluster.dir.join("pki");
    let out = Command::new(cluster.bins.join("loggate"))
        .args([
            "pki",
            "issue",
            &pki.display().to_string(),
            "--agent",
            "siem",
        ])
        .output()?;
    anyhow::ensure!(out.status.success(), "{}", text(&out).1);
    let addr = free_addr()?;
    let mut rsyslog = Rsyslog::new(
        &cluster.dir.join("siem"),
        addr,
        &pki.join("ca.crt"),
        &pki.join("agents/siem.crt"),
        &pki.join("agents/siem.key"),
        &["web-1"],
    )?;
    rsyslog.start()?;
    let sink: SinkFile = serde_json::from_value(serde_json::json!({
        "name": "siem", "kind": "syslog-tls", "address": addr.to_string(),
        "server_name": "siem", "ca": "ca.crt", "cert": "agents/web-1.crt",
        "key": "agents/web-1.key",
    }))?;
    // LOGGATE_BENCH_AUDIT_DIR=/dev/shm takes the disk's fsync out of the measurement, to see
    // the delivery path alone at the target rate.
    let audit_dir = std::env::var_os("LOGGATE_BENCH_AUDIT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cluster.dir.clone());
    let audit_path = audit_dir.join(format!("loggate-bench-{}.jsonl", std::process::id()));
    // The agent's writer: deferred appends, made durable in batches by the flusher; the sink
    // sends nothing before it is on disk.
    let log = SharedAuditLog::new(AuditLog::open(&audit_path, "web-1")?)?;
    spawn_sinks(
        validate_sinks(&[sink], &pki)?,
        &ShipContext {
            audit_log: audit_path.clone(),
            state_dir: cluster.dir.join("sinks"),
            host: "web-1".into(),
            app_name: "loggate-agent".into(),
            durable: log.durable(),
        },
    )?;
    let total = rate * secs;
    let written = Arc::new(std::sync::Mutex::new(vec![
        None::<Instant>;
        total as usize + 1
    ]));
    let writer_times = written.clone();
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> anyhow::Result<Duration> {
        for i in 1..=total {
            let due = start + Duration::from_micros(i * 1_000_000 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let seq = log.append_deferred(&loggate_core::audit::events::ReadDenied {
                subject: Some("spiffe://loggate.local/user/alice".into()),
                key_sha256: None,
                peer: None,
                path: Some("/var/log/app/api.log".into()),
                resource_kind: Default::default(),
                path_bytes: Some(20),
                path_sha256: None,
                grant_id: None,
                reason_code: "no_grant",
                reason: format!("load record {i}"),
                suppressed_before: 0,
            })?;
            if let Ok(mut w) = writer_times.lock() {
                if let Some(slot) = w.get_mut(seq as usize) {
                    *slot = Some(Instant::now());
                }
            }
        }
        Ok(start.elapsed())
    });
    // Watch rsyslog's output file grow and note when each seq first appears.
    let received_path = rsyslog.dir.join("received.log");
    let mut seen = vec![None::<Instant>; total as usize + 1];
    let (mut partial, mut count, mut file) = (String::new(), 0u64, None);
    let deadline = Instant::now() + Duration::from_secs(secs + 60);
    while count < total && Instant::now() < deadline {
        use std::io::Read;
        if file.is_none() {
            file = std::fs::File::open(&received_path).ok();
        }
        let mut bytes = Vec::new();
        if let Some(f) = file.as_mut() {
            f.read_to_end(&mut bytes)?;
        }
        let now = Instant::now();
        if !bytes.is_empty() {
            partial.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(nl) = partial.find('\n') {
                let s = seq(&partial[..nl]) as usize;
                if s > 0 && s < seen.len() && seen[s].is_none() {
                    seen[s] = Some(now);
                    count += 1;
                }
                partial.drain(..=nl);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let written = written.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut delays: Vec<Duration> = (1..=total as usize)
        .filter_map(|s| Some(seen[s]?.saturating_duration_since(written[s]?)))
        .collect();
    delays.sort();
    anyhow::ensure!(
        delays.len() as u64 == total,
        "{} of {total} arrived",
        delays.len()
    );
    let pct = |p: f64| delays[((delays.len() as f64 * p) as usize).min(delays.len() - 1)];
    let _ = std::fs::remove_file(&audit_path);
    println!(
        "delivery to rsyslog: {total} events at {rate}/s target ({:.0}/s achieved by the writer): p50 {:?}, p99 {:?}, max {:?}",
        total as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}

#[test]
fn agent_refuses_to_start_with_an_incomplete_sink() -> anyhow::Result<()> {
    let mut cluster = loggate_tests::Cluster::new(None)?;
    let logs = cluster.dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    cluster.add_agent(
        "web-1",
        &[&logs],
        "[[audit.sinks]]\nname = \"siem\"\nkind = \"syslog-tls\"\naddress = \"127.0.0.1:6514\"\n",
    )?;
    let config = cluster.dir.join("agents/web-1/agent.toml");
    let out = Command::new(cluster.bins.join("loggate-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out).1;
    assert!(
        err.contains("audit.sinks \"siem\"")
            && err.contains("ca, cert and key are required: syslog-tls is always mutual TLS"),
        "{err}"
    );
    Ok(())
}
