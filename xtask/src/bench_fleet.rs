//! `cargo xtask bench fleet [--agents N] [--postgres [--replicas R]]`: grants fanned out to N
//! agents, and controller restarts under them (docs/performance.md, issue #12).
//!
//! Real controller processes (`loggate controller serve`; a debug build unless `--release`) on
//! loopback: one on embedded SQLite, or with `--postgres` R replicas (default 1) sharing a
//! PostgreSQL server the bench starts for itself (`initdb` in a scratch folder under
//! `target/bench/fleet`, a unix socket only, commits waiting for the disk as in production,
//! stopped at the end: the test helper `loggate_tests::postgres`). N simulated agents run in this
//! one process: each has its own agent certificate (issued here from the harness's development
//! CA with rcgen, written next to the harness's PKI), its own TLS connection from its own
//! loopback address (127.1.x.y: one address per host, a /24 per 250 agents, as a fleet spread
//! over networks; `--one-address` puts them all on 127.0.0.1, as behind one NAT), and a real
//! `WatchGrants` stream on which it verifies every grant it receives with the agent's verifier
//! (`GrantVerifier::verify_on_receipt`, core) and follows the epoch and revision as an agent
//! does. Each agent lists every replica (`controllers = [a, b]`), starts at a random one and
//! moves on when its stream fails with the agent's own reconnect, the same functions
//! (`loggate_core::backoff::Rounds` over `loggate_core::backoff::FLEET`, full jitter, and
//! `backoff::Failure::of`: after a refusal the addresses not yet down in the round at the
//! first pause, after a turn-away the doubling pause), after a first connect spread like the
//! agent's.
//!
//! Measured: time until every agent is connected and caught up at start, and how the agents
//! spread over the replicas; for grants addressed to a label every agent holds, issued through
//! the first replica, and for their revocations, the time from the request sent by the admin
//! until each agent holds it (p50, p99, max over agents and changes); CPU per change of every
//! replica and of this bench process itself (its simulated agents share the cores), every
//! replica's RSS (now and peak). With several replicas: one replica killed (SIGKILL), the time
//! until all its agents are back on the others and resynchronised. Then every controller process
//! killed and started again: connections per second (peak second and mean) and the time until
//! every agent is back and resynchronised, the `tls.refused` records of that restart, and how
//! long the admin's `loggate grant list` took in the middle of the herd; and for every comeback
//! its timeline, second by second: streams opened, agents caught up, attempts refused, failed in
//! the handshake, reset (before TLS completed) or cut, the back-off ceilings the failing agents
//! had reached, and the controllers' eviction summaries with how far the evicted handshakes had
//! come, and their summaries of newcomers reset within a victim's grace; then the "failed in
//! the handshake" attempts counted by cause (the simulated agent's error: the controller's
//! status when it answered `WatchGrants` with one, the agent's own connect limit, or the error
//! chain, e.g. `tls handshake eof` for a handshake the controller dropped).
//!
//! `--history N` (SQLite): before the restart, every 10th agent goes away while N grants are
//! written to the revision log, then comes back; its resync is measured (`history.rs`).
//!
//! `--nice N` runs the simulated agents' threads at that lower priority (`setpriority(2)` on
//! each of the runtime's threads; the controllers, started from the main thread, keep the
//! normal priority): the controller then goes first when they compete for the CPU, and the
//! bench's own share is measured either way.
//!
//! Bounded: at most 20,000 agents, at most `--grants` (≤ 100) grants, at most 4 replicas, every
//! wait ends after `--timeout-secs`; it stops everything it started. The open-file limit of this
//! process is raised to its hard limit (the controller raises its own): each agent holds one
//! socket. Nothing here asserts a time: it prints figures, with the machine's load.

use crate::bench_redact::load_average;
use crate::{cargo, run, target_dir};
use anyhow::{bail, Context};
use loggate_core::backoff::{self, fully_jittered, Rounds, FIRST_CONNECT_SPREAD, FLEET};
use loggate_core::grant::{unix_now, Audience, GrantVerifier, VerifyingKey};
use loggate_core::identity::AgentId;
use loggate_core::tls::{Server, TlsFiles};
use loggate_proto as pb;
use loggate_proto::controller_client::ControllerClient;
use loggate_tests::postgres::TestPostgres;
use loggate_tests::{flat_audit_record, free_addr, read_audit_file, wait_for_port, Cluster};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

mod history;

#[derive(clap::Args)]
pub struct Args {
    /// Simulated agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Grants issued to the fleet's label, one after the other, each then revoked.
    #[arg(long, default_value_t = 5)]
    grants: usize,
    /// Run a release build of the controller (default: the debug build the tests use).
    #[arg(long)]
    release: bool,
    /// Run the `loggate` binary of this folder instead of building one (e.g. another
    /// worktree's target/debug, for a before/after comparison).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Every agent connects from 127.0.0.1 (one address, as behind a NAT) instead of an
    /// address of its own.
    #[arg(long)]
    one_address: bool,
    /// Keep the controller's state in a PostgreSQL server the bench starts for itself (under
    /// target/bench/fleet) instead of embedded SQLite.
    #[arg(long)]
    postgres: bool,
    /// Controller replicas sharing the PostgreSQL database (needs --postgres); every agent
    /// lists all of them.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Run the simulated agents at this lower CPU priority (0–19; 0: the same as the
    /// controllers).
    #[arg(long, default_value_t = 0)]
    nice: i32,
    /// The longest any one phase may take.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Before the restart, every 10th agent goes away while this many revisions are written
    /// to the log (a bulk insert; SQLite only), then they come back: their resync is measured
    /// (0: not run; at most 200,000).
    #[arg(long, default_value_t = 0)]
    history: usize,
}

const MAX_AGENTS: usize = 20_000;
const MAX_GRANTS: usize = 100;
const MAX_REPLICAS: usize = 4;
const LABEL: &str = "fleet=bench";
/// A stream silent this long is dead (as the agent's SILENCE).
const SILENCE: Duration = Duration::from_secs(35);
/// The longest a connection may take to open, TCP and TLS together (as the agent's
/// `watch::CONNECT_WITHIN`): without it a simulated agent whose SYNs the controller's full
/// listen queue dropped waited out the kernel's SYN retransmissions (up to a minute).
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

pub fn run_bench(args: &Args) -> anyhow::Result<()> {
    if args.agents == 0 || args.agents > MAX_AGENTS {
        bail!("--agents must be between 1 and {MAX_AGENTS}");
    }
    if args.grants == 0 || args.grants > MAX_GRANTS {
        bail!("--grants must be between 1 and {MAX_GRANTS}");
    }
    if args.replicas == 0 || args.replicas > MAX_REPLICAS {
        bail!("--replicas must be between 1 and {MAX_REPLICAS}");
    }
    if args.replicas > 1 && !args.postgres {
        bail!(
            "--replicas {} needs --postgres: controllers on separate SQLite files are not \
             replicas of one controller",
            args.replicas
        );
    }
    if !(0..=19).contains(&args.nice) {
        bail!("--nice must be between 0 and 19");
    }
    if args.history > history::MAX_HISTORY {
        bail!("--history must be at most {}", history::MAX_HISTORY);
    }
    if args.history > 0 && args.postgres {
        bail!("--history writes its rows into the controller's SQLite file: not with --postgres");
    }
    let profile = if args.release { "release" } else { "debug" };
    let bins = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => {
            let mut build = cargo();
            build.args(["build", "-p", "loggate", "--bins"]);
            if args.release {
                build.arg("--release");
            }
            run(&mut build)?;
            target_dir().join(profile)
        }
    };
    // The harness's Cluster finds the binaries here.
    std::env::set_var("LOGGATE_BIN_DIR", &bins);
    let open_files = raise_open_file_limit()?;
    if open_files < args.agents as u64 + 256 {
        bail!(
            "this process may open {open_files} files, too few for {} agents; raise the hard \
             limit (ulimit -Hn) first",
            args.agents
        );
    }
    let dir = target_dir().join("bench").join("fleet");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove the last run's {}", dir.display()))?;
    }
    let cluster = Cluster::new(Some(dir.clone()))?;
    // Declared after the replicas' owner (the cluster) and before the replicas: dropped after
    // them, so the database outlives every controller using it.
    let postgres = if args.postgres {
        let server = TestPostgres::start_durable_in(&cluster.dir)?;
        let url = server.create_database("loggate")?;
        Some((server, url))
    } else {
        None
    };
    let mut replicas = Replicas::configure(
        &cluster,
        &bins,
        args.replicas,
        postgres.as_ref().map(|(_, url)| url.as_str()),
    )?;
    let pki = cluster.dir.join("pki");
    let started = Instant::now();
    let ids = issue_agent_certificates(&pki, args.agents)?;
    eprintln!(
        "bench fleet: {} agent certificates issued in {:.1}s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    let verifying_key = VerifyingKey::from_paserk(
        &std::fs::read_to_string(pki.join("grant-signing.pub"))
            .context("reading the grant-signing public key")?,
    )?;
    replicas.start_all()?;

    let load_before = load_average();
    let uptime_before = uptime();
    let nice = args.nice;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || lower_this_threads_priority(nice))
        .build()?;
    let report = runtime.block_on(measure(
        args,
        &cluster,
        &mut replicas,
        &pki,
        ids,
        verifying_key,
    ));
    runtime.shutdown_timeout(Duration::from_secs(5));
    replicas.kill_all();
    drop(postgres);
    let report = report?;
    print_report(args, &bins, &load_before, &uptime_before, &report);
    Ok(())
}

/// Lowers the calling thread's priority by `nice` (Linux: `setpriority(PRIO_PROCESS, 0)` is
/// the calling thread alone). A failure only leaves the normal priority: it is printed.
fn lower_this_threads_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: setpriority takes no pointers; it changes only this thread's scheduling.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        eprintln!(
            "bench fleet: cannot lower a thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The controller processes of the bench: one (SQLite, or one on PostgreSQL) or the replicas
/// of one controller on PostgreSQL; killed when dropped.
struct Replicas {
    bins: PathBuf,
    list: Vec<Replica>,
    /// Replica 0's `/metrics` address: its fan-out histogram splits a revocation's time.
    metrics: SocketAddr,
}

struct Replica {
    addr: SocketAddr,
    config: PathBuf,
    audit: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Replicas {
    /// Writes the configuration of `count` controllers: the harness's (replica 0, the address
    /// the admin's client configuration names) and copies of it that differ only by their
    /// listening address and audit file. `database`: the PostgreSQL URL they share.
    fn configure(
        cluster: &Cluster,
        bins: &Path,
        count: usize,
        database: Option<&str>,
    ) -> anyhow::Result<Replicas> {
        let text = std::fs::read_to_string(&cluster.controller_config)?;
        let text = match database {
            Some(url) => {
                let line = "\ndatabase = \"controller/state.db\"\n";
                anyhow::ensure!(text.contains(line), "the harness's database line moved");
                text.replacen(line, &format!("\ndatabase = \"{url}\"\n"), 1)
            }
            None => text,
        };
        std::fs::write(&cluster.controller_config, &text)?;
        let mut list = Vec::with_capacity(count);
        for i in 0..count {
            let (addr, config, audit) = if i == 0 {
                (
                    cluster.controller_addr,
                    cluster.controller_config.clone(),
                    cluster.dir.join("controller/audit.jsonl"),
                )
            } else {
                let addr = free_addr()?;
                let listen = format!("\nlisten = \"{}\"\n", cluster.controller_addr);
                let audit = "\naudit_log = \"controller/audit.jsonl\"\n";
                anyhow::ensure!(
                    text.contains(&listen) && text.contains(audit),
                    "the harness's listen or audit_log line moved"
                );
                let own = text
                    .replacen(&listen, &format!("\nlisten = \"{addr}\"\n"), 1)
                    .replacen(
                        audit,
                        &format!("\naudit_log = \"controller/audit-{i}.jsonl\"\n"),
                        1,
                    );
                let config = cluster.dir.join(format!("controller-{i}.toml"));
                std::fs::write(&config, own)?;
                (
                    addr,
                    config,
                    cluster.dir.join(format!("controller/audit-{i}.jsonl")),
                )
            };
            list.push(Replica {
                addr,
                config,
                audit,
                log: cluster.dir.join(format!("controller/stderr-{i}.log")),
                child: None,
            });
        }
        // Replica 0 only (the others are copies made above): its `/metrics` endpoint.
        let metrics = free_addr()?;
        std::fs::write(
            &cluster.controller_config,
            format!("{text}\n[metrics]\nenabled = true\nlisten = \"{metrics}\"\n"),
        )?;
        Ok(Replicas {
            bins: bins.to_path_buf(),
            list,
            metrics,
        })
    }

    fn addrs(&self) -> Vec<String> {
        self.list.iter().map(|r| r.addr.to_string()).collect()
    }

    /// Starts replica `i` and waits until it listens; returns its pid.
    fn start(&mut self, i: usize) -> anyhow::Result<u32> {
        let replica = &mut self.list[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&replica.log)?;
        let child = Command::new(self.bins.join("loggate"))
            .args(["controller", "serve", "--config"])
            .arg(&replica.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a controller")?;
        let pid = child.id();
        replica.child = Some(child);
        wait_for_port(replica.addr, Duration::from_secs(20)).with_context(|| {
            format!(
                "controller {i} did not listen; see {}",
                replica.log.display()
            )
        })?;
        Ok(pid)
    }

    fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.list.len() {
            self.start(i)?;
        }
        Ok(())
    }

    /// SIGKILLs replica `i` (a crash: its streams are cut, not closed) and reaps it.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.list[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn kill_all(&mut self) {
        for i in 0..self.list.len() {
            self.kill(i);
        }
    }

    fn pid(&self, i: usize) -> anyhow::Result<u32> {
        self.list[i]
            .child
            .as_ref()
            .map(Child::id)
            .with_context(|| format!("controller {i} is not running"))
    }

    /// The CPU time of every running replica (zero for one that is not).
    fn cpu(&self) -> Vec<Duration> {
        (0..self.list.len())
            .map(|i| self.pid(i).and_then(cpu_time).unwrap_or_default())
            .collect()
    }

    /// A line of /proc/PID/status of every running replica, in KiB (0 for one not running).
    fn status(&self, field: &str) -> Vec<u64> {
        (0..self.list.len())
            .map(|i| {
                self.pid(i)
                    .and_then(|pid| proc_status(pid, field))
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The number of audit records of every replica (to count what a phase added).
    fn audit_lengths(&self) -> Vec<usize> {
        self.list
            .iter()
            .map(|r| read_audit_file(&r.audit).len())
            .collect()
    }

    /// The `tls.refused` records every replica wrote after `before` ([`Replicas::audit_lengths`]),
    /// the evicted handshakes they sum, the newcomers reset within a victim's grace, and the
    /// handshakes reset for want of a turn for their cryptography (`busy`).
    fn refused_since(&self, before: &[usize]) -> (usize, u64, u64, u64) {
        let mut records = 0;
        let (mut evicted, mut reset, mut busy) = (0, 0, 0);
        for (replica, skip) in self.list.iter().zip(before) {
            for raw in read_audit_file(&replica.audit).iter().skip(*skip) {
                let e = flat_audit_record(raw);
                if e["event"] != "tls.refused" {
                    continue;
                }
                records += 1;
                if e["reason_code"] == "evicted" {
                    evicted += e["suppressed_before"].as_u64().unwrap_or(0);
                }
                if e["reason_code"] == "reset_in_grace" {
                    reset += e["suppressed_before"].as_u64().unwrap_or(0);
                }
                if e["reason_code"] == "busy" {
                    busy += e["suppressed_before"].as_u64().unwrap_or(0);
                }
            }
        }
        (records, evicted, reset, busy)
    }

    /// The eviction and reset summaries (`evicted`, `reset_in_grace`, `busy`) every replica wrote
    /// after `before`: (seconds after `since`, connections counted, reason code: reason), in
    /// time order.
    fn eviction_summaries_since(
        &self,
        before: &[usize],
        since: std::time::SystemTime,
    ) -> Vec<(f64, u64, String)> {
        let since_ms = since
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        let mut out = Vec::new();
        for (replica, skip) in self.list.iter().zip(before) {
            for raw in read_audit_file(&replica.audit).iter().skip(*skip) {
                let e = flat_audit_record(raw);
                let code = e["reason_code"].as_str().unwrap_or_default();
                if e["event"] == "tls.refused"
                    && matches!(code, "evicted" | "reset_in_grace" | "busy")
                {
                    let at = e["time"].as_f64().unwrap_or(0.0);
                    out.push((
                        (at - since_ms) / 1000.0,
                        e["suppressed_before"].as_u64().unwrap_or(0),
                        format!("{code}: {}", e["reason"].as_str().unwrap_or_default()),
                    ));
                }
            }
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A fleet coming back after controllers were killed, measured.
struct Comeback {
    took: Duration,
    /// Agents back and resynchronised when `took` was taken (all, unless it timed out).
    back: usize,
    /// How many had to come back.
    of: usize,
    rate: (f64, usize),
    /// CPU of each replica during it.
    cpu: Vec<Duration>,
    bench_cpu: Duration,
    /// Peak RSS of each replica, KiB.
    rss_peak_kib: Vec<u64>,
    refused_records: usize,
    evicted: u64,
    /// Newcomers reset at their accept within a victim's grace (`reset_in_grace` summaries).
    reset_in_grace: u64,
    /// Handshakes reset after their ClientHello for want of a turn (`busy` summaries).
    busy: u64,
    admin_cli: Option<(Duration, bool)>,
    /// Second by second from the kill: what the agents saw.
    timeline: Vec<Second>,
    /// The controllers' eviction and reset summaries (`tls.refused`, `evicted` or
    /// `reset_in_grace`): seconds after the kill the record was written, the connections it
    /// counts (those of the 10 s before it), and its code and reason (for evictions, how far
    /// they had come).
    eviction_summaries: Vec<(f64, u64, String)>,
    /// The `handshake failed` attempts of the timeline by cause ([`cause_of`]), most first.
    causes: Vec<(String, usize)>,
}

/// One second of a comeback, as the simulated agents saw it.
#[derive(Default, Clone)]
struct Second {
    /// Streams opened (the controller answered `WatchGrants`).
    connects: usize,
    /// Agents caught up in the new epoch (their first heartbeat).
    caught_up: usize,
    /// Attempts whose TCP connection was refused (no controller listening).
    refused: usize,
    /// Attempts that connected and then failed in the handshake or before the stream opened
    /// (evicted, timed out, closed), other than by a reset.
    handshake_failed: usize,
    /// Attempts that connected and were reset (`ECONNRESET`) before the stream opened: the
    /// controller's resets of newcomers within a victim's grace, and evictions of handshakes
    /// whose bytes had come unread (the controllers' summaries tell them apart).
    reset: usize,
    /// Streams that ended (cut by the kill).
    ended: usize,
    /// The largest back-off ceiling any agent reached with a failure in this second.
    max_ceiling: Duration,
    /// Failures in this second whose next pause was drawn from the full cap's range.
    at_cap: usize,
}

/// Everything measured, for the table.
struct Report {
    first_connect: Duration,
    first_connect_rate: (f64, usize),
    /// Agents caught up on each replica once all were connected.
    spread: Vec<usize>,
    rss_connected_kib: Vec<u64>,
    grant_latencies: Vec<Duration>,
    revoke_latencies: Vec<Duration>,
    cpu_per_change: Vec<Duration>,
    bench_cpu_per_change: Duration,
    rss_after_changes_kib: Vec<u64>,
    /// One replica killed, its agents back on the others (several replicas only).
    failover: Option<Comeback>,
    /// Every controller process killed and started again.
    restart: Comeback,
    rejected: usize,
    split: RevocationSplit,
    history: Option<history::HistoryReport>,
}

async fn measure(
    args: &Args,
    cluster: &Cluster,
    replicas: &mut Replicas,
    pki: &Path,
    ids: Vec<String>,
    verifying_key: VerifyingKey,
) -> anyhow::Result<Report> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let verifier = Arc::new(GrantVerifier::new(
        vec![verifying_key],
        Duration::from_secs(60),
    ));
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (stop, stopping) = watch::channel(false);
    // `--history`: sends the agents that go away off (true) and back (false).
    let (away, away_rx) = watch::channel(false);
    let controllers = Arc::new(replicas.addrs());
    let spawned = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let agent = SimAgent {
            index: i,
            id: id.clone(),
            files: TlsFiles {
                ca: pki.join("ca.crt"),
                cert: pki.join("agents").join(format!("{id}.crt")),
                key: pki.join("agents").join(format!("{id}.key")),
            },
            endpoints: vec![None; controllers.len()],
            source: (!args.one_address).then(|| source_address(i)),
            controllers: controllers.clone(),
            current: usize::try_from(rand::random::<u32>()).unwrap_or(0) % controllers.len(),
            verifier: verifier.clone(),
            events: events_tx.clone(),
            stopping: stopping.clone(),
            away: (args.history > 0 && history::goes_away(i)).then(|| away_rx.clone()),
            streamed: false,
        };
        tokio::spawn(agent.run());
    }
    drop(events_tx);
    let n = ids.len();
    let mut fleet = Fleet::default();
    let bench = std::process::id();

    // 1. The first connection of every agent.
    let none = HashSet::new();
    fleet
        .wait(&mut events, timeout, "every agent connected", |f| {
            f.caught_up_outside(&none) >= n
        })
        .await?;
    // From the agents' own timestamps: the bench may take the events later than they came.
    let first_connect = fleet
        .last_caught_up_outside(&none)
        .map_or(spawned.elapsed(), |at| {
            at.saturating_duration_since(spawned)
        });
    let first_connect_rate = rate(&fleet.connects, spawned);
    let spread = fleet.spread(replicas.list.len());
    let rss_connected_kib = replicas.status("VmRSS:");

    // 2. Grants to the fleet's label and their revocations, issued through replica 0.
    let mut admin = cluster.controller_client_as("users/admin").await?;
    let cpu_before = replicas.cpu();
    let bench_before = cpu_time(bench)?;
    let (mut grant_latencies, mut revoke_latencies) = (Vec::new(), Vec::new());
    let mut split = RevocationSplit::default();
    for g in 0..args.grants {
        let sent = Instant::now();
        let grant = admin
            .issue_grant(pb::IssueGrantRequest {
                subject: "alice".into(),
                labels: vec![LABEL.into()],
                paths: vec!["/var/log/bench/*.log".into()],
                ttl_seconds: 3600,
                reason: format!("BENCH-{g}"),
                ..Default::default()
            })
            .await?
            .into_inner()
            .grant
            .context("no grant in the response")?;
        let id = grant.id.clone();
        fleet
            .wait(&mut events, timeout, "grant at every agent", |f| {
                f.grants.get(&id).map_or(0, Vec::len) >= n
            })
            .await?;
        grant_latencies.extend(
            fleet.grants[&id]
                .iter()
                .map(|t| t.saturating_duration_since(sent)),
        );
        let handed_before = fanout_histogram(replicas.metrics)?;
        let sent = Instant::now();
        admin
            .revoke_grant(pb::RevokeGrantRequest {
                grant_id: id.clone(),
                reason: "bench".into(),
            })
            .await?;
        split.rpc.push(sent.elapsed());
        fleet
            .wait(&mut events, timeout, "revocation at every agent", |f| {
                f.revoked.get(&id).map_or(0, Vec::len) >= n
            })
            .await?;
        revoke_latencies.extend(
            fleet.revoked[&id]
                .iter()
                .map(|t| t.saturating_duration_since(sent)),
        );
        // Replica 0's streams only (all of them on SQLite).
        split.add(&handed_before, &fanout_histogram(replicas.metrics)?);
    }
    let changes = u32::try_from(2 * args.grants)?;
    let cpu_per_change = replicas
        .cpu()
        .iter()
        .zip(&cpu_before)
        .map(|(after, before)| after.saturating_sub(*before) / changes)
        .collect();
    let bench_cpu_per_change = cpu_time(bench)?.saturating_sub(bench_before) / changes;
    eprintln!(
        "bench fleet: all {n} connected in {:.1}s; grant p99 {}, revocation p99 {}",
        first_connect.as_secs_f64(),
        ms(percentile_of(&grant_latencies, 0.99)),
        ms(percentile_of(&revoke_latencies, 0.99)),
    );
    let rss_after_changes_kib = replicas.status("VmRSS:");
    drop(admin);

    // 2b. `--history`: part of the fleet away while the log grows, then back.
    let history = if args.history > 0 {
        Some(
            history::run(
                args.history,
                &cluster.dir.join("controller/state.db"),
                pki,
                &ids,
                replicas,
                &mut fleet,
                &mut events,
                &away,
                timeout,
            )
            .await?,
        )
    } else {
        None
    };

    // 3. One replica killed: its agents move to the others.
    let failover = if replicas.list.len() > 1 {
        let victim = replicas.list.len() - 1;
        let old = fleet.epochs_on(victim);
        let moving = fleet.spread(replicas.list.len())[victim];
        let comeback = comeback(
            &mut fleet,
            &mut events,
            replicas,
            &[victim],
            old,
            n,
            moving,
            timeout,
            None,
        )
        .await?;
        // Back for the whole-cluster restart below.
        replicas.start(victim)?;
        Some(comeback)
    } else {
        None
    };

    // 4. Every controller killed and started again under the fleet.
    let all: Vec<usize> = (0..replicas.list.len()).collect();
    let old = fleet.caught_up.values().cloned().collect();
    let restart = comeback(
        &mut fleet,
        &mut events,
        replicas,
        &all,
        old,
        n,
        n,
        timeout,
        Some(cluster),
    )
    .await?;
    let _ = stop.send(true);
    Ok(Report {
        first_connect,
        first_connect_rate,
        spread,
        rss_connected_kib,
        grant_latencies,
        revoke_latencies,
        cpu_per_change,
        bench_cpu_per_change,
        rss_after_changes_kib,
        failover,
        restart,
        rejected: fleet.rejected,
        split,
        history,
    })
}

/// Where a revocation's time goes, from the controller's side: the admin's RPC (its commit,
/// fsync and audit record included), then from the commit to each stream's taking the event
/// (replica 0's `loggate_controller_fanout_latency_seconds`, summed over the revocations).
#[derive(Default)]
struct RevocationSplit {
    rpc: Vec<Duration>,
    /// The histogram's increase over the revocations: (upper bound in seconds, count).
    handed: Vec<(f64, u64)>,
}

impl RevocationSplit {
    fn add(&mut self, before: &[(f64, u64)], after: &[(f64, u64)]) {
        for (i, (le, count)) in after.iter().enumerate() {
            let was = before.get(i).map_or(0, |(_, c)| *c);
            match self.handed.get_mut(i) {
                Some((_, sum)) => *sum += count.saturating_sub(was),
                None => self.handed.push((*le, count.saturating_sub(was))),
            }
        }
    }

    /// The upper bound of the bucket holding quantile `p` of the (cumulative) histogram.
    fn handed_quantile(&self, p: f64) -> String {
        let total = self.handed.last().map_or(0, |(_, c)| *c);
        if total == 0 {
            return "-".into();
        }
        let want = (p * total as f64).ceil() as u64;
        self.handed
            .iter()
            .find(|(_, c)| *c >= want)
            .map_or("-".into(), |(le, _)| {
                if le.is_infinite() {
                    "> 13 s".into()
                } else {
                    format!("≤ {:.1} ms", le * 1000.0)
                }
            })
    }
}

/// The cumulative buckets of replica 0's fan-out histogram (from the commit of a change to its
/// taking by each stream), as `/metrics` reports them: (upper bound in seconds, count).
fn fanout_histogram(addr: SocketAddr) -> anyhow::Result<Vec<(f64, u64)>> {
    let response = scrape(addr)?;
    let mut buckets = Vec::new();
    for line in response.lines() {
        let Some(rest) =
            line.strip_prefix("loggate_controller_fanout_latency_seconds_bucket{le=\"")
        else {
            continue;
        };
        let Some((le, count)) = rest.split_once("\"} ") else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse()?
        };
        buckets.push((le, count.trim().parse::<f64>()? as u64));
    }
    anyhow::ensure!(
        !buckets.is_empty(),
        "no fan-out histogram at {addr}/metrics"
    );
    Ok(buckets)
}

/// The `/metrics` answer of the controller at `addr` (headers included).
fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Kills the replicas `victims` (SIGKILL), starts them again unless others remain (a failover:
/// their agents move), and measures until every agent is caught up in an epoch outside `old`
/// (the epochs of the killed processes). `cli`: run the admin's `loggate grant list` 1 s into
/// the herd.
#[allow(clippy::too_many_arguments)]
async fn comeback(
    fleet: &mut Fleet,
    events: &mut mpsc::UnboundedReceiver<Event>,
    replicas: &mut Replicas,
    victims: &[usize],
    old: HashSet<String>,
    n: usize,
    of: usize,
    timeout: Duration,
    cli: Option<&Cluster>,
) -> anyhow::Result<Comeback> {
    let audit_before = replicas.audit_lengths();
    let restart = victims.len() == replicas.list.len();
    let killed_wall = std::time::SystemTime::now();
    let failures_before = fleet.failures.len();
    let causes_before = fleet.causes.len();
    let caught_up_before = fleet.caught_up_at.len();
    for &i in victims {
        replicas.kill(i);
    }
    let connects_before = fleet.connects.len();
    let killed = Instant::now();
    if restart {
        for &i in victims {
            replicas.start(i)?;
        }
    }
    let cpu_before = replicas.cpu();
    let bench_before = cpu_time(std::process::id())?;
    // The admin's command in the middle of the herd, from a thread of the normal priority
    // (the runtime's threads may run lowered: `--nice`).
    let admin_cli = match cli {
        Some(cluster) => {
            let mut command = cluster.cli("admin");
            command.args(["grant", "list"]);
            let _ = fleet
                .wait(events, Duration::from_secs(1), "", |_| false)
                .await;
            let (tx, rx) = oneshot::channel();
            let started = Instant::now();
            std::thread::spawn(move || {
                let _ = tx.send(command.output());
            });
            let out = rx.await.context("the admin's command's thread ended")??;
            Some((started.elapsed(), out.status.success()))
        }
        None => None,
    };
    // A fleet not all back in time is a figure too (how many were), not an error.
    let all_back = fleet
        .wait(events, timeout, "every agent back", |f| {
            f.caught_up_outside(&old) >= n
        })
        .await;
    if let Err(e) = &all_back {
        eprintln!("bench fleet: {e:#}");
    }
    let back = fleet.caught_up_outside(&old).saturating_sub(n - of);
    let took = fleet
        .last_caught_up_outside(&old)
        .map_or(killed.elapsed(), |at| at.saturating_duration_since(killed));
    let rate = rate(&fleet.connects[connects_before..], killed);
    let cpu = replicas
        .cpu()
        .iter()
        .zip(&cpu_before)
        .map(|(after, before)| after.saturating_sub(*before))
        .collect();
    let bench_cpu = cpu_time(std::process::id())?.saturating_sub(bench_before);
    let rss_peak_kib = replicas.status("VmHWM:");
    // Refusals are summarised every 10 s (tls_accept::PRESSURE_SUMMARY_INTERVAL): wait for
    // the summary of the herd's last seconds (events keep being taken meanwhile).
    let _ = fleet
        .wait(events, Duration::from_secs(11), "", |_| false)
        .await;
    let (refused_records, evicted, reset_in_grace, busy) = replicas.refused_since(&audit_before);
    let eviction_summaries = replicas.eviction_summaries_since(&audit_before, killed_wall);
    let timeline = timeline(
        fleet,
        killed,
        took,
        connects_before,
        caught_up_before,
        failures_before,
    );
    let causes = count_causes(
        &fleet.causes[causes_before.min(fleet.causes.len())..],
        killed,
        took + Duration::from_secs(2),
    );
    Ok(Comeback {
        took,
        back,
        of,
        rate,
        cpu,
        bench_cpu,
        rss_peak_kib,
        refused_records,
        evicted,
        reset_in_grace,
        busy,
        admin_cli,
        timeline,
        eviction_summaries,
        causes,
    })
}

/// The comeback second by second, from `start` until `took` after it (and one more second),
/// from what the fleet reported after the given positions of its lists.
fn timeline(
    fleet: &Fleet,
    start: Instant,
    took: Duration,
    connects_from: usize,
    caught_up_from: usize,
    failures_from: usize,
) -> Vec<Second> {
    let len = usize::try_from(took.as_secs())
        .unwrap_or(usize::MAX)
        .min(600)
        + 2;
    let mut seconds = vec![Second::default(); len];
    let slot = |at: &Instant| {
        let i = usize::try_from(at.saturating_duration_since(start).as_secs()).ok()?;
        (i < len).then_some(i)
    };
    for at in &fleet.connects[connects_from.min(fleet.connects.len())..] {
        if let Some(i) = slot(at) {
            seconds[i].connects += 1;
        }
    }
    for at in &fleet.caught_up_at[caught_up_from.min(fleet.caught_up_at.len())..] {
        if let Some(i) = slot(at) {
            seconds[i].caught_up += 1;
        }
    }
    let cap = FLEET.max_pause();
    for (at, kind, ceiling) in &fleet.failures[failures_from.min(fleet.failures.len())..] {
        let Some(i) = slot(at) else { continue };
        let second = &mut seconds[i];
        match kind {
            Failure::Refused => second.refused += 1,
            Failure::Handshake => second.handshake_failed += 1,
            Failure::Reset => second.reset += 1,
            Failure::StreamEnded => second.ended += 1,
        }
        second.max_ceiling = second.max_ceiling.max(*ceiling);
        if *ceiling >= cap {
            second.at_cap += 1;
        }
    }
    seconds
}

/// What the simulated agents reported, as it arrives.
#[derive(Default)]
struct Fleet {
    /// The epoch each agent last caught up in.
    caught_up: HashMap<usize, String>,
    /// The replica each agent last caught up on.
    replica_of: HashMap<usize, usize>,
    /// How many agents last caught up in each epoch, and when the last of them did (kept as
    /// events arrive: a wait's condition must not walk 10,000 agents per event).
    per_epoch: HashMap<String, (usize, Instant)>,
    connects: Vec<Instant>,
    /// When each catch-up came (every epoch), for the herd's timeline.
    caught_up_at: Vec<Instant>,
    /// Every failed attempt or ended stream, with the back-off ceiling of the pause after it.
    failures: Vec<(Instant, Failure, Duration)>,
    /// Every `Handshake` failure's cause ([`cause_of`]), when it came.
    causes: Vec<(Instant, String)>,
    grants: HashMap<String, Vec<Instant>>,
    revoked: HashMap<String, Vec<Instant>>,
    rejected: usize,
    /// `--history`: agents gone away so far (each time one went).
    away: usize,
    /// `--history`: the agents whose grants and catch-up are recorded one by one.
    tracked: HashSet<usize>,
    tracked_grants: HashMap<usize, HashSet<String>>,
    tracked_caught_up: HashMap<usize, Instant>,
}

impl Fleet {
    /// Agents caught up in an epoch not in `old`.
    fn caught_up_outside(&self, old: &HashSet<String>) -> usize {
        self.per_epoch
            .iter()
            .filter(|(e, _)| !old.contains(*e))
            .map(|(_, (n, _))| n)
            .sum()
    }

    /// When the last agent caught up in an epoch not in `old`.
    fn last_caught_up_outside(&self, old: &HashSet<String>) -> Option<Instant> {
        self.per_epoch
            .iter()
            .filter(|(e, _)| !old.contains(*e))
            .map(|(_, (_, at))| *at)
            .max()
    }

    /// The epochs agents caught up in on `replica` (one: a controller process's).
    fn epochs_on(&self, replica: usize) -> HashSet<String> {
        self.replica_of
            .iter()
            .filter(|(_, r)| **r == replica)
            .filter_map(|(agent, _)| self.caught_up.get(agent).cloned())
            .collect()
    }

    /// Agents caught up on each of `replicas`.
    fn spread(&self, replicas: usize) -> Vec<usize> {
        let mut counts = vec![0; replicas];
        for r in self.replica_of.values() {
            if let Some(c) = counts.get_mut(*r) {
                *c += 1;
            }
        }
        counts
    }

    fn apply(&mut self, event: Event) {
        match event.what {
            What::Connected => self.connects.push(event.at),
            What::Failed {
                kind,
                ceiling,
                cause,
            } => {
                self.failures.push((event.at, kind, ceiling));
                if let Some(cause) = cause {
                    self.causes.push((event.at, cause));
                }
            }
            What::CaughtUp { epoch, replica } => {
                if self.tracked.contains(&event.agent) {
                    self.tracked_caught_up
                        .entry(event.agent)
                        .or_insert(event.at);
                }
                self.caught_up_at.push(event.at);
                self.replica_of.insert(event.agent, replica);
                if let Some(before) = self.caught_up.insert(event.agent, epoch.clone()) {
                    if let Some((n, _)) = self.per_epoch.get_mut(&before) {
                        *n = n.saturating_sub(1);
                    }
                }
                let entry = self.per_epoch.entry(epoch).or_insert((0, event.at));
                entry.0 += 1;
                entry.1 = entry.1.max(event.at);
            }
            What::Grant(id) => {
                if self.tracked.contains(&event.agent) {
                    self.tracked_grants
                        .entry(event.agent)
                        .or_default()
                        .insert(id.clone());
                }
                self.grants.entry(id).or_default().push(event.at)
            }
            What::Away => self.away += 1,
            What::Revoked(id) => self.revoked.entry(id).or_default().push(event.at),
            What::Rejected => self.rejected += 1,
        }
    }

    /// Takes events until `done` holds (Ok) or `timeout` passes (Err naming `what`; with an
    /// empty `what`, the timeout is the point and is Ok).
    async fn wait(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Fleet) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(self) {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => self.apply(event),
                Ok(None) => bail!("every simulated agent ended"),
                Err(_) if what.is_empty() => return Ok(()),
                Err(_) => bail!("{what}: not within {timeout:?}"),
            }
        }
        Ok(())
    }
}

/// How a simulated agent's attempt ended, for the herd's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The TCP connection was refused: no controller listening (killed, not yet started).
    Refused,
    /// Connected, then the TLS handshake (or the stream's opening) failed: closed by the
    /// controller (an eviction from its handshake pool, a deadline) or timed out.
    Handshake,
    /// Connected, then reset by the controller (`ECONNRESET`) before the stream opened: a
    /// newcomer reset within a victim's grace, or an eviction whose bytes had come unread.
    Reset,
    /// The stream had been opened and then ended (the controller killed under it).
    StreamEnded,
}

impl Failure {
    /// `Refused` when the error's cause chain holds a refused TCP connection, `Reset` when it
    /// holds a reset one (classified by downcasting, not by the message), else `Handshake`;
    /// `StreamEnded` once it streamed.
    fn of(result: &anyhow::Result<()>, streamed: bool) -> Failure {
        if streamed {
            return Failure::StreamEnded;
        }
        let has = |kind: std::io::ErrorKind| {
            result.as_ref().err().is_some_and(|e| {
                e.chain().any(|cause| {
                    cause
                        .downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == kind)
                })
            })
        };
        if has(std::io::ErrorKind::ConnectionRefused) {
            Failure::Refused
        } else if has(std::io::ErrorKind::ConnectionReset) {
            Failure::Reset
        } else {
            Failure::Handshake
        }
    }
}

/// A simulated agent's connect (TCP, TLS, HTTP/2) not done within [`CONNECT_WITHIN`].
#[derive(Debug)]
struct ConnectTimedOut;

impl std::fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no TLS handshake within {CONNECT_WITHIN:?} (the agent's limit)"
        )
    }
}

impl std::error::Error for ConnectTimedOut {}

/// Longest cause kept ([`cause_of`]), in characters.
const CAUSE_LEN: usize = 160;

/// A failed attempt's cause in words a summary can count: the controller's status (code and
/// message) when it answered the RPC, else every message of the error's chain (repeats
/// dropped). Digits become `#` (addresses, ports, times differ per agent) and it is cut at
/// [`CAUSE_LEN`] characters.
fn cause_of(error: &anyhow::Error) -> String {
    let text = match error
        .chain()
        .find_map(|cause| cause.downcast_ref::<tonic::Status>())
    {
        Some(status) => format!("status {:?}: {}", status.code(), status.message()),
        None => {
            let mut parts: Vec<String> = Vec::new();
            for cause in error.chain() {
                let part = cause.to_string();
                if !parts.iter().any(|p| p.contains(&part)) {
                    parts.push(part);
                }
            }
            parts.join(": ")
        }
    };
    text.chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .take(CAUSE_LEN)
        .collect()
}

/// The causes that came from `start` until `within` after it, counted, most first (ties by
/// cause).
fn count_causes(
    causes: &[(Instant, String)],
    start: Instant,
    within: Duration,
) -> Vec<(String, usize)> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (at, cause) in causes {
        if *at >= start && at.saturating_duration_since(start) < within {
            *counts.entry(cause.as_str()).or_default() += 1;
        }
    }
    let mut counts: Vec<(String, usize)> = counts
        .into_iter()
        .map(|(cause, n)| (cause.to_owned(), n))
        .collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
}

struct Event {
    agent: usize,
    at: Instant,
    what: What,
}

enum What {
    Connected,
    CaughtUp {
        epoch: String,
        replica: usize,
    },
    /// An attempt failed or a stream ended; `ceiling` is the upper end of the back-off range
    /// the pause after it was drawn from.
    Failed {
        kind: Failure,
        ceiling: Duration,
        /// For a `Handshake` failure: its cause in words ([`cause_of`]).
        cause: Option<String>,
    },
    Grant(String),
    Revoked(String),
    Rejected,
    /// `--history`: the agent dropped its stream to go away.
    Away,
}

/// One simulated agent: the agent's grant stream without its files and audit.
struct SimAgent {
    index: usize,
    id: String,
    files: TlsFiles,
    /// One per controller address, built at its first use.
    endpoints: Vec<Option<tonic::transport::Endpoint>>,
    source: Option<IpAddr>,
    controllers: Arc<Vec<String>>,
    /// The address in use (an index of `controllers`).
    current: usize,
    verifier: Arc<GrantVerifier>,
    events: mpsc::UnboundedSender<Event>,
    stopping: watch::Receiver<bool>,
    /// `--history`, for the agents that go away: true while away (no stream; the epoch and
    /// revision kept), false to come back at once.
    away: Option<watch::Receiver<bool>>,
    /// Whether the current attempt got as far as an open stream.
    streamed: bool,
}

impl SimAgent {
    async fn run(mut self) {
        tokio::time::sleep(fully_jittered(FIRST_CONNECT_SPREAD, rand::random())).await;
        let audience = match AgentId::new(&self.id) {
            Ok(agent_id) => Audience {
                agent_id,
                labels: vec![LABEL.into()],
            },
            Err(e) => {
                eprintln!("bench fleet: agent id {:?}: {e}", self.id);
                return;
            }
        };
        // The agent's own reconnect (`agent/src/watch.rs`): the same function, not a copy.
        let mut rounds = Rounds::new(FLEET, self.controllers.len());
        let (mut revision, mut epoch) = (0u64, String::new());
        loop {
            let mut stopping = self.stopping.clone();
            let mut away = self.away.clone();
            self.streamed = false;
            let result = tokio::select! {
                result = self.stream(&audience, &mut rounds, &mut revision, &mut epoch) => Some(result),
                _ = stopping.wait_for(|s| *s) => return,
                () = until_away_is(&mut away, true) => None,
            };
            let Some(result) = result else {
                // Away (`--history`): the stream is dropped, the position kept; back at once
                // when told, resuming from it.
                self.report(What::Away);
                tokio::select! {
                    () = until_away_is(&mut away, false) => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
                continue;
            };
            let kind = Failure::of(&result, self.streamed);
            let cause = match (&result, kind) {
                (Err(e), Failure::Handshake) => Some(cause_of(e)),
                _ => None,
            };
            // As the agent, with its classification (`agent/src/watch.rs`; the bench has no
            // cluster of another id): a refusal moves to an address not yet down in this round
            // after at most the first pause; a turn-away (busy, unavailable, eof, a cut
            // stream) ends the round with the doubling back-off.
            let how = match &result {
                Ok(()) => backoff::Failure::TurnedAway,
                Err(e) => backoff::Failure::of(e),
            };
            let next = rounds.failed(self.current, how);
            self.current = next.address;
            let (ceiling, delay) = (next.ceiling, next.pause);
            self.report(What::Failed {
                kind,
                ceiling,
                cause,
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    }

    fn report(&self, what: What) {
        let _ = self.events.send(Event {
            agent: self.index,
            at: Instant::now(),
            what,
        });
    }

    /// One `WatchGrants` stream until it breaks; its error does not matter here.
    async fn stream(
        &mut self,
        audience: &Audience,
        rounds: &mut Rounds,
        revision: &mut u64,
        epoch: &mut String,
    ) -> anyhow::Result<()> {
        // Built once per agent and address (files read, key parsed), as the first connect of
        // a real agent; each reconnect clones it. The bench's own CPU is the controller's
        // neighbour.
        let current = self.current;
        let endpoint = match &self.endpoints[current] {
            Some(endpoint) => endpoint.clone(),
            None => {
                let endpoint = self
                    .files
                    .endpoint(&self.controllers[current], Server::Controller)?;
                self.endpoints[current] = Some(endpoint.clone());
                endpoint
            }
        };
        let endpoint = endpoint
            .local_address(self.source)
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(20));
        let Ok(connected) = tokio::time::timeout(CONNECT_WITHIN, endpoint.connect()).await else {
            return Err(ConnectTimedOut.into());
        };
        let channel = connected?;
        let mut client = ControllerClient::new(channel).max_decoding_message_size(1 << 20);
        let mut stream = client
            .watch_grants(pb::WatchGrantsRequest {
                agent_id: self.id.clone(),
                labels: vec![LABEL.into()],
                listen_addr: "127.0.0.1:9".into(),
                after_revision: *revision,
                after_epoch: epoch.clone(),
            })
            .await?
            .into_inner();
        self.streamed = true;
        self.report(What::Connected);
        let mut caught_up = false;
        let mut first = true;
        loop {
            let Some(event) = tokio::time::timeout(SILENCE, stream.message()).await?? else {
                return Ok(());
            };
            if first {
                // As the agent (`watch.rs`): a success once the first event has arrived (the
                // agent checks its cluster id there).
                first = false;
                rounds.connected();
            }
            match event.event {
                Some(pb::grant_event::Event::Grant(signed)) => {
                    match self
                        .verifier
                        .verify_on_receipt(&signed.token, audience, unix_now())
                    {
                        Ok(grant) => self.report(What::Grant(grant.claims().jti.clone())),
                        Err(_) => self.report(What::Rejected),
                    }
                }
                Some(pb::grant_event::Event::Revocation(r)) => {
                    self.report(What::Revoked(r.grant_id))
                }
                Some(pb::grant_event::Event::Heartbeat(_)) if !caught_up => {
                    caught_up = true;
                    *epoch = event.epoch.clone();
                    self.report(What::CaughtUp {
                        epoch: event.epoch.clone(),
                        replica: current,
                    });
                }
                _ => {}
            }
            if !caught_up && event.epoch != *epoch {
                continue; // a resync: the old position holds until it completes
            }
            *revision = event.revision;
        }
    }
}

/// Resolves when `away` (`--history`) holds `value`; never without one, or once its sender is
/// gone.
async fn until_away_is(away: &mut Option<watch::Receiver<bool>>, value: bool) {
    if let Some(away) = away {
        if away.wait_for(|v| *v == value).await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// Agent `i`'s own loopback address: 127.1.x.y, 250 to a /24.
fn source_address(i: usize) -> IpAddr {
    let (net, host) = (i / 250, i % 250 + 1);
    IpAddr::V4(Ipv4Addr::new(127, 1, (net % 256) as u8, host as u8))
}

/// Issues `n` agent certificates (`fleet-00000` …) into `pki/agents`, as `loggate pki issue
/// --agent` would (same names, SANs, usages), with the CA of `pki`. Returns their ids.
fn issue_agent_certificates(pki: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key"))?)?;
    let ca_pem = std::fs::read_to_string(pki.join("ca.crt"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let dir = pki.join("agents");
    std::fs::create_dir_all(&dir)?;
    let trust_domain = "loggate.local";
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("fleet-{i:05}");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.as_str());
        params.distinguished_name = dn;
        params.not_before = (std::time::SystemTime::now() - Duration::from_secs(300)).into();
        params.not_after = (std::time::SystemTime::now() + Duration::from_secs(86_400)).into();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.subject_alt_names = vec![
            SanType::URI(format!("spiffe://{trust_domain}/agent/{id}").try_into()?),
            SanType::DnsName(id.clone().try_into()?),
        ];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &issuer)?;
        write_private(&dir.join(format!("{id}.key")), &key.serialize_pem())?;
        std::fs::write(dir.join(format!("{id}.crt")), cert.pem())?;
        ids.push(id);
    }
    Ok(ids)
}

fn write_private(path: &PathBuf, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Raises this process's soft open-file limit to its hard limit; returns the limit in force.
fn raise_open_file_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the rlimit we own and pass by a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads only the rlimit we own and pass by a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        bail!("setrlimit: {}", std::io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// A line of /proc/PID/status in KiB (`VmRSS:`, `VmHWM:`).
fn proc_status(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// User + system CPU time of a process so far.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), i.e. 11 and 12 after the command.
    let ticks: u64 = [11, 12]
        .iter()
        .map(|&i| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    // SAFETY: sysconf has no memory effects.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_millis(ticks * 1000 / per_second))
}

/// (mean per second, most in one second) of `times` counted from `start`.
fn rate(times: &[Instant], start: Instant) -> (f64, usize) {
    let mut seconds: HashMap<u64, usize> = HashMap::new();
    let mut last = Duration::ZERO;
    for t in times {
        let since = t.saturating_duration_since(start);
        last = last.max(since);
        *seconds.entry(since.as_secs()).or_default() += 1;
    }
    let peak = seconds.values().copied().max().unwrap_or(0);
    let mean = times.len() as f64 / last.as_secs_f64().max(1e-3);
    (mean, peak)
}

fn uptime() -> String {
    std::process::Command::new("uptime")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn percentile_of(list: &[Duration], p: f64) -> Duration {
    let mut sorted = list.to_vec();
    sorted.sort();
    percentile(&sorted, p)
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// `values` of every replica, formatted, joined with " / ".
fn per_replica<T>(values: &[T], format: impl Fn(&T) -> String) -> String {
    values.iter().map(format).collect::<Vec<_>>().join(" / ")
}

/// KiB as MiB; 0 is a replica not running (killed for the failover).
fn mib(kib: &u64) -> String {
    if *kib == 0 {
        return "not running".into();
    }
    format!("{:.1} MiB", *kib as f64 / 1024.0)
}

fn seconds(d: &Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn print_comeback(what: &str, c: &Comeback) {
    println!(
        "| {} {what} | {:.1} s ({:.0} connects/s, peak second {}) |",
        if c.back >= c.of {
            format!("all {} back", c.of)
        } else {
            format!("NOT all back: {} of {}", c.back, c.of)
        },
        c.took.as_secs_f64(),
        c.rate.0,
        c.rate.1
    );
    println!(
        "| controller CPU for it (per replica) / the bench's | {} / bench {} |",
        per_replica(&c.cpu, seconds),
        seconds(&c.bench_cpu)
    );
    println!(
        "| controller peak RSS (VmHWM, per replica) | {} |",
        per_replica(&c.rss_peak_kib, mib)
    );
    println!(
        "| tls.refused records (evicted handshakes; newcomers reset in a victim's grace; reset busy, no turn) | {} ({}; {}; {}) |",
        c.refused_records, c.evicted, c.reset_in_grace, c.busy
    );
    if let Some((took, ok)) = c.admin_cli {
        println!(
            "| admin `loggate grant list` 1 s into the herd | {} ({}) |",
            ms(took),
            if ok { "ok" } else { "FAILED" }
        );
    }
}

/// A comeback's timeline, after the report's table.
fn print_timeline(what: &str, c: &Comeback) {
    println!();
    println!("timeline of the {what} (seconds after the kill):");
    println!(
        "| s | streams opened | caught up | refused (down) | handshake failed | reset | streams cut \
         | largest back-off ceiling | failures at the {} s cap |",
        FLEET.max_pause().as_secs()
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (i, s) in c.timeline.iter().enumerate() {
        println!(
            "| {i} | {} | {} | {} | {} | {} | {} | {:.2} s | {} |",
            s.connects,
            s.caught_up,
            s.refused,
            s.handshake_failed,
            s.reset,
            s.ended,
            s.max_ceiling.as_secs_f64(),
            s.at_cap
        );
    }
    println!("eviction and reset summaries (each counts the 10 s before it):");
    if c.eviction_summaries.is_empty() {
        println!("- none");
    }
    for (at, n, reason) in &c.eviction_summaries {
        println!("- +{at:.1} s: {n}: {reason}");
    }
    println!("handshake failures by cause (the simulated agent's error; digits as #):");
    if c.causes.is_empty() {
        println!("- none");
    }
    for (cause, n) in &c.causes {
        println!("- {n}: {cause}");
    }
}

fn print_report(args: &Args, bins: &Path, load: &str, uptime_before: &str, r: &Report) {
    let mut grants = r.grant_latencies.clone();
    grants.sort();
    let mut revokes = r.revoke_latencies.clone();
    revokes.sort();
    println!();
    println!(
        "bench fleet: {} agents ({}), controller {}, {}, simulated agents at nice {}",
        args.agents,
        if args.one_address {
            "all from 127.0.0.1"
        } else {
            "one loopback address each"
        },
        bins.join("loggate").display(),
        if args.postgres {
            format!("PostgreSQL, {} replica(s)", args.replicas)
        } else {
            "SQLite".to_string()
        },
        args.nice
    );
    println!("load at start: {uptime_before}");
    println!("load average at start: {load}; at end: {}", load_average());
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| first connect of all agents | {:.1} s ({:.0} connects/s, peak second {}) |",
        r.first_connect.as_secs_f64(),
        r.first_connect_rate.0,
        r.first_connect_rate.1
    );
    println!(
        "| agents per replica | {} |",
        per_replica(&r.spread, usize::to_string)
    );
    println!(
        "| controller RSS, all connected (per replica) | {} |",
        per_replica(&r.rss_connected_kib, mib)
    );
    for (name, list) in [("grant", &grants), ("revocation", &revokes)] {
        println!(
            "| {name} fan-out ({} changes × {} agents) p50 / p99 / max | {} / {} / {} |",
            args.grants,
            args.agents,
            ms(percentile(list, 0.50)),
            ms(percentile(list, 0.99)),
            ms(percentile(list, 1.0)),
        );
    }
    println!(
        "| revocation, controller side: admin's RPC p50 / max; commit → taken by each stream (replica 0, histogram bucket) p50 / p99 / max | {} / {}; {} / {} / {} |",
        ms(percentile_of(&r.split.rpc, 0.5)),
        ms(percentile_of(&r.split.rpc, 1.0)),
        r.split.handed_quantile(0.5),
        r.split.handed_quantile(0.99),
        r.split.handed_quantile(1.0),
    );
    println!(
        "| CPU per change (grant or revocation), per replica / the bench's | {} / bench {} |",
        per_replica(&r.cpu_per_change, |d| ms(*d)),
        ms(r.bench_cpu_per_change)
    );
    println!(
        "| controller RSS after the changes (per replica) | {} |",
        per_replica(&r.rss_after_changes_kib, mib)
    );
    if let Some(failover) = &r.failover {
        print_comeback(
            "on the other replicas after one replica's SIGKILL",
            failover,
        );
    }
    if let Some(history) = &r.history {
        history::print(history);
    }
    print_comeback(
        "and resynchronised after every controller's SIGKILL + start",
        &r.restart,
    );
    println!("| grants that failed verification | {} |", r.rejected);
    if let Some(failover) = &r.failover {
        print_timeline("failover", failover);
    }
    print_timeline("restart", &r.restart);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_before_the_stream_is_counted_by_its_code_and_message() {
        let error = anyhow::Error::from(tonic::Status::unavailable("store busy 42"));
        assert_eq!(cause_of(&error), "status Unavailable: store busy ##");
        assert_eq!(Failure::of(&Err(error), false), Failure::Handshake);
    }

    #[test]
    fn the_agents_own_limit_and_an_eof_are_told_apart() {
        let timed_out = anyhow::Error::from(ConnectTimedOut);
        assert_eq!(
            cause_of(&timed_out),
            "no TLS handshake within ##s (the agent's limit)"
        );
        let eof = anyhow::Error::from(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "tls handshake eof",
        ))
        .context("transport error");
        assert_eq!(cause_of(&eof), "transport error: tls handshake eof");
        assert_eq!(Failure::of(&Err(eof), false), Failure::Handshake);
    }

    #[test]
    fn causes_are_counted_within_the_window_most_first() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let causes = vec![
            (at(10), "a".to_owned()),
            (at(20), "b".to_owned()),
            (at(30), "b".to_owned()),
            (at(5_000), "b".to_owned()),
            (at(40), "c".to_owned()),
        ];
        assert_eq!(
            count_causes(&causes, start, Duration::from_secs(1)),
            vec![
                ("b".to_owned(), 2),
                ("a".to_owned(), 1),
                ("c".to_owned(), 1)
            ]
        );
    }

    #[test]
    fn a_long_cause_is_cut() {
        let error = anyhow::anyhow!("{}", "x".repeat(1000));
        assert_eq!(cause_of(&error).chars().count(), CAUSE_LEN);
    }
}
