//! `--history N`: agents that come back after N revisions were written while they were away.
//!
//! Every 10th agent of the fleet goes away (drops its stream, keeps its epoch and revision, as
//! an agent whose host was down does); N grants are written to the revision log meanwhile,
//! each addressed by host to one of the away agents in turn (so each one's catch-up read all
//! N rows and kept about N / away of them until the controller indexed the log by target,
//! issue 12: now it reads its N / away); then they all come back at once and resume from
//! where they were. Measured: the time from their return until each has its catch-up's
//! heartbeat (p50/p99/max), the controller's CPU and its largest RSS meanwhile (sampled every
//! 100 ms), the revision log's reads and rows over the resync (the controller's
//! `loggate_controller_revision_log_*` counters: rows per query), and whether every returning
//! agent received, verified, every grant addressed to it and nothing else.
//!
//! **How the rows are written.** 100,000 grants through the admin's RPC would take each its
//! own commit and fsync and a fan-out to the whole present fleet: hours at 10,000 agents. They
//! are written instead by a bulk insert into the controller's SQLite file (rusqlite, one
//! transaction, the `grants` and `revisions` rows the store writes for a grant (the
//! controller's database indexes them by target itself, schema version 6), with tokens
//! signed by the controller's own grant key so that the agents verify them as any grant). The
//! controller's change feed is not woken by it (on SQLite only a commit of its own wakes it):
//! the present agents are not sent these rows, and the returning ones read them from the log
//! in their catch-up, which is what is measured. SQLite only.

use super::{cpu_time, ms, percentile, proc_status, Fleet, Replicas};
use anyhow::Context;
use loggate_core::grant::{new_grant_id, unix_now, GrantClaims, SigningKey};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The largest `--history`.
pub const MAX_HISTORY: usize = 200_000;
/// One agent in this many goes away.
pub const AWAY_EVERY: usize = 10;

/// Whether agent `index` is one of those that go away.
pub fn goes_away(index: usize) -> bool {
    index.is_multiple_of(AWAY_EVERY)
}

/// What the phase measured.
pub struct HistoryReport {
    revisions: usize,
    returning: usize,
    insert_took: Duration,
    /// From the return to each returning agent's catch-up heartbeat.
    resync: Vec<Duration>,
    controller_cpu: Duration,
    bench_cpu: Duration,
    rss_before_kib: u64,
    rss_max_kib: u64,
    reads: u64,
    rows: u64,
    /// Returning agents missing at least one grant addressed to them, and the grants missed.
    agents_missing: usize,
    missed: usize,
    /// Grants received that were not addressed to the agent (never verified by it either).
    extra: usize,
    rejected: usize,
    /// Failed attempts (a refused or failed handshake, a stream cut) during the resync.
    failures: usize,
    all_back: bool,
}

/// The phase (module docs). `ids[i]` is agent `i`'s id; `away` sends the away agents off
/// (true) and back (false).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    revisions: usize,
    state_db: &Path,
    pki: &Path,
    ids: &[String],
    replicas: &Replicas,
    fleet: &mut Fleet,
    events: &mut mpsc::UnboundedReceiver<super::Event>,
    away: &watch::Sender<bool>,
    timeout: Duration,
) -> anyhow::Result<HistoryReport> {
    let returning: Vec<usize> = (0..ids.len()).filter(|i| goes_away(*i)).collect();
    fleet.tracked = returning.iter().copied().collect();
    let away_before = fleet.away;
    away.send_replace(true);
    fleet
        .wait(events, timeout, "every returning agent away", |f| {
            f.away >= away_before + returning.len()
        })
        .await?;

    // The N rows, while they are away.
    let started = Instant::now();
    let expected = {
        let (db, key) = (state_db.to_path_buf(), pki.join("grant-signing.key"));
        let hosts: Vec<(usize, String)> = returning.iter().map(|i| (*i, ids[*i].clone())).collect();
        tokio::task::spawn_blocking(move || write_history(&db, &key, &hosts, revisions))
            .await
            .context("the bulk insert's thread")??
    };
    let insert_took = started.elapsed();
    eprintln!(
        "bench fleet: {revisions} revisions written in {:.1}s; {} agents come back",
        insert_took.as_secs_f64(),
        returning.len()
    );

    // Back, all at once; the controller's RSS sampled meanwhile.
    let pid = replicas.pid(0)?;
    let rss_before_kib = proc_status(pid, "VmRSS:")?;
    let rss_max = Arc::new(AtomicU64::new(rss_before_kib));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (rss_max, sampling) = (rss_max.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                if let Ok(kib) = proc_status(pid, "VmRSS:") {
                    rss_max.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let (reads_before, rows_before) = log_counters(replicas.metrics)?;
    let cpu_before = cpu_time(pid)?;
    let bench_before = cpu_time(std::process::id())?;
    let rejected_before = fleet.rejected;
    let failures_before = fleet.failures.len();
    fleet.tracked_grants.clear();
    fleet.tracked_caught_up.clear();
    let back = Instant::now();
    away.send_replace(false);
    let all = fleet
        .wait(events, timeout, "every returning agent caught up", |f| {
            f.tracked_caught_up.len() >= returning.len()
        })
        .await;
    if let Err(e) = &all {
        eprintln!("bench fleet: {e:#}");
    }
    let controller_cpu = cpu_time(pid)?.saturating_sub(cpu_before);
    let bench_cpu = cpu_time(std::process::id())?.saturating_sub(bench_before);
    let (reads_after, rows_after) = log_counters(replicas.metrics)?;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let mut resync: Vec<Duration> = fleet
        .tracked_caught_up
        .values()
        .map(|at| at.saturating_duration_since(back))
        .collect();
    resync.sort();

    // Nothing missed: each returning agent holds, verified, exactly what was addressed to it.
    let (mut agents_missing, mut missed, mut extra) = (0, 0, 0);
    for agent in &returning {
        let want = expected.get(agent).map_or(0, HashSet::len);
        let got = fleet.tracked_grants.get(agent);
        let held = |id: &String| got.is_some_and(|g| g.contains(id));
        let lacking = expected
            .get(agent)
            .map_or(0, |e| e.iter().filter(|id| !held(id)).count());
        if lacking > 0 {
            agents_missing += 1;
            missed += lacking;
        }
        let received = got.map_or(0, HashSet::len);
        extra += received.saturating_sub(want - lacking);
    }
    fleet.tracked.clear();
    Ok(HistoryReport {
        revisions,
        returning: returning.len(),
        insert_took,
        resync,
        controller_cpu,
        bench_cpu,
        rss_before_kib,
        rss_max_kib: rss_max.load(Ordering::Relaxed),
        reads: reads_after.saturating_sub(reads_before),
        rows: rows_after.saturating_sub(rows_before),
        agents_missing,
        missed,
        extra,
        rejected: fleet.rejected - rejected_before,
        failures: fleet.failures.len() - failures_before,
        all_back: all.is_ok(),
    })
}

/// Writes `revisions` grants into the controller's SQLite file in one transaction, grant `i`
/// addressed to host `hosts[i % len]`, each signed with the controller's grant key; returns,
/// per agent index, the grant ids addressed to it.
fn write_history(
    db: &Path,
    signing_key: &Path,
    hosts: &[(usize, String)],
    revisions: usize,
) -> anyhow::Result<HashMap<usize, HashSet<String>>> {
    let key = SigningKey::from_paserk(
        &std::fs::read_to_string(signing_key)
            .with_context(|| format!("reading {}", signing_key.display()))?,
    )?;
    let mut conn = rusqlite::Connection::open(db)
        .with_context(|| format!("opening the controller's {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let tx = conn.transaction()?;
    let first: i64 = tx.query_row(
        "SELECT COALESCE(MAX(revision), 0) + 1 FROM revisions",
        [],
        |r| r.get(0),
    )?;
    let now = unix_now();
    let mut expected: HashMap<usize, HashSet<String>> = HashMap::new();
    {
        let mut grant = tx.prepare(
            "INSERT INTO grants (id, subject, hosts, labels, paths, not_before, not_after, \
             reason, issuer, profile, key_sha256, token, revision, units) \
             VALUES (?1, ?2, ?3, '[]', ?4, ?5, ?6, ?7, ?8, 'default', ?9, ?10, ?11, '[]')",
        )?;
        let mut revision = tx
            .prepare("INSERT INTO revisions (revision, kind, grant_id) VALUES (?1, 'grant', ?2)")?;
        // The controller's index of the log by target (schema version 6, issue 12) is
        // written by its database's trigger on `revisions`; an older controller's database (a
        // before/after run with `--bin-dir`) has none and reads the whole log instead.
        let paths = vec!["/var/log/bench/*.log".to_string()];
        let paths_json = serde_json::to_string(&paths)?;
        for i in 0..revisions {
            let (agent, host) = &hosts[i % hosts.len()];
            let id = new_grant_id().to_string();
            let claims = GrantClaims {
                jti: id.clone(),
                iss: "spiffe://loggate.local/controller".into(),
                sub: "spiffe://loggate.local/user/alice".into(),
                iat: now,
                nbf: now,
                exp: now + 3600,
                hosts: vec![host.clone()],
                labels: Vec::new(),
                paths: paths.clone(),
                units: Vec::new(),
                redaction: "default".into(),
                reason: format!("HISTORY-{i}"),
                approver: "spiffe://loggate.local/user/admin".into(),
                key_sha256: "00".repeat(32),
            };
            let token = key.sign(&claims)?;
            let at = first + i64::try_from(i)?;
            grant.execute(rusqlite::params![
                id,
                claims.sub,
                serde_json::to_string(&claims.hosts)?,
                paths_json,
                claims.nbf,
                claims.exp,
                claims.reason,
                claims.approver,
                claims.key_sha256,
                token,
                at,
            ])?;
            revision.execute(rusqlite::params![at, id])?;
            expected.entry(*agent).or_default().insert(id);
        }
    }
    tx.commit()?;
    Ok(expected)
}

/// Replica 0's revision-log counters: (reads, rows).
fn log_counters(addr: std::net::SocketAddr) -> anyhow::Result<(u64, u64)> {
    let text = super::scrape(addr)?;
    let value = |name: &str| -> anyhow::Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .with_context(|| format!("no {name} in the controller's metrics"))?
            .trim()
            .parse::<f64>()
            .map(|v| v as u64)
            .with_context(|| format!("{name} is not a number"))
    };
    Ok((
        value("loggate_controller_revision_log_reads_total")?,
        value("loggate_controller_revision_log_rows_total")?,
    ))
}

pub fn print(h: &HistoryReport) {
    println!(
        "| history: {} revisions written while {} agents (every {AWAY_EVERY}th) were away (bulk SQL insert, one transaction) | {:.1} s |",
        h.revisions,
        h.returning,
        h.insert_took.as_secs_f64()
    );
    println!(
        "| history: returning agents caught up{} p50 / p99 / max (failed attempts meanwhile) | {} / {} / {} ({}) |",
        if h.all_back {
            String::new()
        } else {
            format!(" (only {} of {} in time)", h.resync.len(), h.returning)
        },
        ms(percentile(&h.resync, 0.50)),
        ms(percentile(&h.resync, 0.99)),
        ms(percentile(&h.resync, 1.0)),
        h.failures,
    );
    println!(
        "| history: controller CPU / the bench's during the resync | {} / {} |",
        ms(h.controller_cpu),
        ms(h.bench_cpu)
    );
    println!(
        "| history: controller RSS before / largest during the resync (VmRSS every 100 ms) | {:.1} / {:.1} MiB |",
        h.rss_before_kib as f64 / 1024.0,
        h.rss_max_kib as f64 / 1024.0
    );
    println!(
        "| history: revision log reads / rows read / rows per read | {} / {} / {:.0} |",
        h.reads,
        h.rows,
        if h.reads == 0 {
            0.0
        } else {
            h.rows as f64 / h.reads as f64
        }
    );
    println!(
        "| history: returning agents missing a grant (grants missed) / grants not addressed received / rejected | {} ({}) / {} / {} |",
        h.agents_missing, h.missed, h.extra, h.rejected
    );
}
