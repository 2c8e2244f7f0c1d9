//! `cargo xtask bench fleet [--agents N]`: grants fanned out to N agents, and a controller
//! restart under them (docs/performance.md, issue #12).
//!
//! One real controller process (`loggate controller serve`, embedded SQLite; a debug build
//! unless `--release`) on loopback, and N simulated agents in this one process: each has its own
//! agent certificate (issued here from the harness's development CA with rcgen, written next to
//! the harness's PKI), its own TLS connection from its own loopback address (127.1.x.y: one
//! address per host, a /24 per 250 agents, as a fleet spread over networks; `--one-address`
//! puts them all on 127.0.0.1, as behind one NAT), and a real `WatchGrants` stream on which it
//! verifies every grant it receives with the agent's verifier (`GrantVerifier::
//! verify_on_receipt`, core) and follows the epoch and revision as an agent does. Agents
//! reconnect with the agent's own back-off (`loggate_core::backoff::FLEET`, full jitter) after
//! a first connect spread like the agent's.
//!
//! Measured: time until every agent is connected and caught up at start; for grants addressed
//! to a label every agent holds, and for their revocations, the time from the request sent by
//! the admin until each agent holds it (p50, p99, max over agents and changes); controller CPU
//! per change, its RSS (now and peak); after a SIGKILL and a new start of the controller,
//! connections per second (peak second and mean) and the time until every agent is back and
//! resynchronised, the `tls.refused` records of that restart, and how long the admin's
//! `loggate grant list` took in the middle of the herd.
//!
//! Bounded: at most 20,000 agents, at most `--grants` (≤ 100) grants, every wait ends after
//! `--timeout-secs`; it stops everything it started. The open-file limit of this process is
//! raised to its hard limit (the controller raises its own): each agent holds one socket.
//! Nothing here asserts a time: it prints figures, with the machine's load.

use crate::bench_redact::load_average;
use crate::{cargo, run, target_dir};
use anyhow::{bail, Context};
use loggate_core::backoff::{fully_jittered, FIRST_CONNECT_SPREAD, FLEET};
use loggate_core::grant::{unix_now, Audience, GrantVerifier, VerifyingKey};
use loggate_core::identity::AgentId;
use loggate_core::tls::{Server, TlsFiles};
use loggate_proto as pb;
use loggate_proto::controller_client::ControllerClient;
use loggate_tests::Cluster;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

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
    /// The longest any one phase may take.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

const MAX_AGENTS: usize = 20_000;
const MAX_GRANTS: usize = 100;
const LABEL: &str = "fleet=bench";
/// A stream silent this long is dead (as the agent's SILENCE).
const SILENCE: Duration = Duration::from_secs(35);

pub fn run_bench(args: &Args) -> anyhow::Result<()> {
    if args.agents == 0 || args.agents > MAX_AGENTS {
        bail!("--agents must be between 1 and {MAX_AGENTS}");
    }
    if args.grants == 0 || args.grants > MAX_GRANTS {
        bail!("--grants must be between 1 and {MAX_GRANTS}");
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
    let mut cluster = Cluster::new(Some(dir.clone()))?;
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
    cluster.start_controller()?;
    let controller_pid = cluster
        .controller_pid()
        .context("the controller did not start")?;

    let load_before = load_average();
    let uptime_before = uptime();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(measure(
        args,
        &mut cluster,
        controller_pid,
        &pki,
        ids,
        verifying_key,
    ));
    runtime.shutdown_timeout(Duration::from_secs(5));
    let report = report?;
    print_report(args, &bins, &load_before, &uptime_before, &report);
    Ok(())
}

/// Everything measured, for the table.
struct Report {
    first_connect: Duration,
    first_connect_rate: (f64, usize),
    rss_connected_kib: u64,
    grant_latencies: Vec<Duration>,
    revoke_latencies: Vec<Duration>,
    cpu_per_change: Duration,
    rss_after_changes_kib: u64,
    reconnect: Duration,
    /// Agents back and resynchronised when `reconnect` was taken (all, unless it timed out).
    back: usize,
    reconnect_rate: (f64, usize),
    reconnect_cpu: Duration,
    rss_peak_kib: u64,
    refused_records: usize,
    evicted: u64,
    admin_cli: Option<(Duration, bool)>,
    rejected: usize,
}

async fn measure(
    args: &Args,
    cluster: &mut Cluster,
    controller_pid: u32,
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
    let addr = cluster.controller_addr.to_string();
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
            endpoint: None,
            source: (!args.one_address).then(|| source_address(i)),
            controller: addr.clone(),
            verifier: verifier.clone(),
            events: events_tx.clone(),
            stopping: stopping.clone(),
        };
        tokio::spawn(agent.run());
    }
    drop(events_tx);
    let n = ids.len();
    let mut fleet = Fleet::default();

    // 1. The first connection of every agent.
    fleet
        .wait(&mut events, timeout, "every agent connected", |f| {
            f.caught_up_in_epoch_other_than("") >= n
        })
        .await?;
    // From the agents' own timestamps: the bench may take the events later than they came.
    let first_connect = fleet
        .last_caught_up_outside("")
        .map_or(spawned.elapsed(), |at| {
            at.saturating_duration_since(spawned)
        });
    let first_connect_rate = rate(&fleet.connects, spawned);
    let old_epoch = fleet.epoch_of_most();
    let rss_connected_kib = proc_status(controller_pid, "VmRSS:")?;

    // 2. Grants to the fleet's label and their revocations.
    let mut admin = cluster.controller_client_as("users/admin").await?;
    let cpu_before = cpu_time(controller_pid)?;
    let (mut grant_latencies, mut revoke_latencies) = (Vec::new(), Vec::new());
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
        let sent = Instant::now();
        admin
            .revoke_grant(pb::RevokeGrantRequest {
                grant_id: id.clone(),
                reason: "bench".into(),
            })
            .await?;
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
    }
    let cpu_per_change = (cpu_time(controller_pid)? - cpu_before) / (2 * args.grants) as u32;
    eprintln!(
        "bench fleet: all {n} connected in {:.1}s; grant p99 {}, revocation p99 {}",
        first_connect.as_secs_f64(),
        ms(percentile_of(&grant_latencies, 0.99)),
        ms(percentile_of(&revoke_latencies, 0.99)),
    );
    let rss_after_changes_kib = proc_status(controller_pid, "VmRSS:")?;
    drop(admin);

    // 3. A controller killed and started again under the fleet.
    let events_before_restart = cluster.controller_events().len();
    // SAFETY: kill(2) on the pid of the controller this process started and has not reaped.
    unsafe {
        libc::kill(controller_pid as libc::pid_t, libc::SIGKILL);
    }
    cluster.stop_controller(); // reaps it
    let connects_before = fleet.connects.len();
    let restarted = Instant::now();
    cluster.start_controller()?;
    let new_pid = cluster
        .controller_pid()
        .context("the controller did not restart")?;
    let cpu_before = cpu_time(new_pid)?;
    // The admin's command in the middle of the herd.
    let admin_cli = {
        let mut cli = cluster.cli("admin");
        cli.args(["grant", "list"]);
        let herd = fleet
            .wait(&mut events, Duration::from_secs(1), "", |_| false)
            .await;
        drop(herd);
        let started = Instant::now();
        let out = tokio::task::spawn_blocking(move || cli.output()).await??;
        Some((started.elapsed(), out.status.success()))
    };
    // A fleet not all back in time is a figure too (how many were), not an error.
    let all_back = fleet
        .wait(
            &mut events,
            timeout,
            "every agent back after the restart",
            |f| f.caught_up_in_epoch_other_than(&old_epoch) >= n,
        )
        .await;
    if let Err(e) = &all_back {
        eprintln!("bench fleet: {e:#}");
    }
    let back = fleet.caught_up_in_epoch_other_than(&old_epoch);
    let reconnect = fleet
        .last_caught_up_outside(&old_epoch)
        .map_or(restarted.elapsed(), |at| {
            at.saturating_duration_since(restarted)
        });
    let reconnect_rate = rate(&fleet.connects[connects_before..], restarted);
    let reconnect_cpu = cpu_time(new_pid)? - cpu_before;
    let rss_peak_kib = proc_status(new_pid, "VmHWM:")?;
    let _ = stop.send(true);
    // Refusals are summarised every 10 s (tls_accept::PRESSURE_SUMMARY_INTERVAL): wait for
    // the summary of the herd's last seconds.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let refused: Vec<_> = cluster
        .controller_events()
        .into_iter()
        .skip(events_before_restart)
        .filter(|e| e["event"] == "tls.refused")
        .collect();
    let evicted = refused
        .iter()
        .filter(|e| e["reason_code"] == "evicted")
        .map(|e| e["suppressed_before"].as_u64().unwrap_or(0))
        .sum();
    Ok(Report {
        first_connect,
        first_connect_rate,
        rss_connected_kib,
        grant_latencies,
        revoke_latencies,
        cpu_per_change,
        rss_after_changes_kib,
        reconnect,
        back,
        reconnect_rate,
        reconnect_cpu,
        rss_peak_kib,
        refused_records: refused.len(),
        evicted,
        admin_cli,
        rejected: fleet.rejected,
    })
}

/// What the simulated agents reported, as it arrives.
#[derive(Default)]
struct Fleet {
    /// The epoch each agent last caught up in.
    caught_up: HashMap<usize, String>,
    /// How many agents last caught up in each epoch, and when the last of them did (kept as
    /// events arrive: a wait's condition must not walk 10,000 agents per event).
    per_epoch: HashMap<String, (usize, Instant)>,
    connects: Vec<Instant>,
    grants: HashMap<String, Vec<Instant>>,
    revoked: HashMap<String, Vec<Instant>>,
    rejected: usize,
}

impl Fleet {
    fn caught_up_in_epoch_other_than(&self, epoch: &str) -> usize {
        self.per_epoch
            .iter()
            .filter(|(e, _)| *e != epoch)
            .map(|(_, (n, _))| n)
            .sum()
    }

    /// When the last agent caught up in an epoch other than `epoch`.
    fn last_caught_up_outside(&self, epoch: &str) -> Option<Instant> {
        self.per_epoch
            .iter()
            .filter(|(e, _)| *e != epoch)
            .map(|(_, (_, at))| *at)
            .max()
    }

    fn epoch_of_most(&self) -> String {
        let mut counts: HashMap<&String, usize> = HashMap::new();
        for e in self.caught_up.values() {
            *counts.entry(e).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(_, c)| *c)
            .map(|(e, _)| e.clone())
            .unwrap_or_default()
    }

    fn apply(&mut self, event: Event) {
        match event.what {
            What::Connected => self.connects.push(event.at),
            What::CaughtUp(epoch) => {
                if let Some(before) = self.caught_up.insert(event.agent, epoch.clone()) {
                    if let Some((n, _)) = self.per_epoch.get_mut(&before) {
                        *n = n.saturating_sub(1);
                    }
                }
                let entry = self.per_epoch.entry(epoch).or_insert((0, event.at));
                entry.0 += 1;
                entry.1 = entry.1.max(event.at);
            }
            What::Grant(id) => self.grants.entry(id).or_default().push(event.at),
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

struct Event {
    agent: usize,
    at: Instant,
    what: What,
}

enum What {
    Connected,
    CaughtUp(String),
    Grant(String),
    Revoked(String),
    Rejected,
}

/// One simulated agent: the agent's grant stream without its files and audit.
struct SimAgent {
    index: usize,
    id: String,
    files: TlsFiles,
    endpoint: Option<tonic::transport::Endpoint>,
    source: Option<IpAddr>,
    controller: String,
    verifier: Arc<GrantVerifier>,
    events: mpsc::UnboundedSender<Event>,
    stopping: watch::Receiver<bool>,
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
        let mut backoff = FLEET;
        let (mut revision, mut epoch) = (0u64, String::new());
        loop {
            let mut stopping = self.stopping.clone();
            tokio::select! {
                _ = self.stream(&audience, &mut backoff, &mut revision, &mut epoch) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            tokio::select! {
                _ = backoff.pause() => {}
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
        backoff: &mut loggate_core::backoff::Backoff,
        revision: &mut u64,
        epoch: &mut String,
    ) -> anyhow::Result<()> {
        // Built once per agent (files read, key parsed), as the first connect of a real
        // agent; each reconnect clones it. The bench's own CPU is the controller's neighbour.
        if self.endpoint.is_none() {
            self.endpoint = Some(self.files.endpoint(&self.controller, Server::Controller)?);
        }
        let endpoint = self.endpoint.clone().context("no endpoint")?;
        let channel = endpoint
            .local_address(self.source)
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .connect()
            .await?;
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
        backoff.reset();
        self.report(What::Connected);
        let mut caught_up = false;
        loop {
            let Some(event) = tokio::time::timeout(SILENCE, stream.message()).await?? else {
                return Ok(());
            };
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
                    self.report(What::CaughtUp(event.epoch.clone()));
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

fn print_report(args: &Args, bins: &Path, load: &str, uptime_before: &str, r: &Report) {
    let mut grants = r.grant_latencies.clone();
    grants.sort();
    let mut revokes = r.revoke_latencies.clone();
    revokes.sort();
    println!();
    println!(
        "bench fleet: {} agents ({}), controller {}, SQLite",
        args.agents,
        if args.one_address {
            "all from 127.0.0.1"
        } else {
            "one loopback address each"
        },
        bins.join("loggate").display()
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
        "| controller RSS, all connected | {:.1} MiB |",
        r.rss_connected_kib as f64 / 1024.0
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
        "| controller CPU per change (grant or revocation) | {} |",
        ms(r.cpu_per_change)
    );
    println!(
        "| controller RSS after the changes | {:.1} MiB |",
        r.rss_after_changes_kib as f64 / 1024.0
    );
    println!(
        "| {} after SIGKILL + start | {:.1} s ({:.0} connects/s, peak second {}) |",
        if r.back >= args.agents {
            "all back".to_string()
        } else {
            format!("NOT all back: {} of {}", r.back, args.agents)
        },
        r.reconnect.as_secs_f64(),
        r.reconnect_rate.0,
        r.reconnect_rate.1
    );
    println!(
        "| controller CPU for the reconnection | {:.1} s |",
        r.reconnect_cpu.as_secs_f64()
    );
    println!(
        "| controller peak RSS after the restart | {:.1} MiB |",
        r.rss_peak_kib as f64 / 1024.0
    );
    println!(
        "| tls.refused records after the restart (evicted handshakes) | {} ({}) |",
        r.refused_records, r.evicted
    );
    if let Some((took, ok)) = r.admin_cli {
        println!(
            "| admin `loggate grant list` 1 s into the herd | {} ({}) |",
            ms(took),
            if ok { "ok" } else { "FAILED" }
        );
    }
    println!("| grants that failed verification | {} |", r.rejected);
}
