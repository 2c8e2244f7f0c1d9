//! `loggate-agent`: the per-host daemon that serves local log files over mTLS under signed,
//! time-limited grants, and audits every decision.

// A cast that can silently change a number fails the build (issue 17 item 8): a negative
// length or time read as a huge unsigned one, a 64-bit size cut to 32 bits. Convert with
// `try_from` and decide what out of range means.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod anchor;
mod bypass;
mod cluster;
mod config;
mod controllers;
mod decompress;
mod enrol;
mod examples;
mod follow;
mod frames;
mod fs_access;
mod gate;
mod grants;
mod journal;
mod limits;
mod listing;
mod pull;
mod routes;
mod server;
mod status;
mod stream;
mod watch;

use anyhow::Context;
use clap::{Parser, Subcommand};
use config::AgentConfig;
use grants::GrantStore;
use loggate_core::audit::{events, AuditEvent, SharedAuditLog};
use loggate_core::daemon::audit::AuditPlaces;
use loggate_core::daemon::{announce, serve_mtls, AuditRuntime, LogFormat, MtlsSettings};
use loggate_core::grant::{unix_now, Audience, GrantVerifier};
use loggate_core::identity::Role;
use loggate_core::tls_accept::SEND_BUFFER_LIMIT;
use loggate_redact as redact;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// loggate-agent: serves this host's log files to people holding a valid grant.
#[derive(Parser)]
#[command(name = "loggate-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the systemd service's command) until SIGINT/SIGTERM.
    Run {
        /// The agent's configuration file (see docs/configuration.md).
        #[arg(long)]
        config: PathBuf,
        /// How log lines are written on stderr: `text`, or `json` (one object per line).
        #[arg(long, env = "LOGGATE_LOG_FORMAT", default_value = "text",
              value_parser = clap::builder::PossibleValuesParser::new(LogFormat::NAMES))]
        log_format: String,
    },
    /// Check a configuration file as `run` would load it and print every problem found, one
    /// per line. Exit 0 when it is valid, 2 otherwise (the systemd unit's `ExecStartPre`).
    CheckConfig {
        /// The agent's configuration file.
        file: PathBuf,
    },
    /// Join the fleet with a one-time join token: make this host's key, have the controller's
    /// CA sign its certificate, and write them where the configuration expects them.
    Enrol(enrol::EnrolArgs),
    /// Print the shell completion script for SHELL on standard output.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Redact FILE (or standard input) to standard output exactly as the agent would serve it
    /// with a grant naming PROFILE. Try a profile on a sample before you trust it.
    Redact {
        /// The redaction profile (see docs/redaction.md).
        #[arg(long, default_value = "default")]
        profile: String,
        /// The agent's configuration file, for its `[redaction]` profiles and line limit
        /// (default: built-in profiles only).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the counts per detector as JSON on standard error at the end.
        #[arg(long)]
        stats: bool,
        /// Print the built-in detectors (name, profile, what each finds, the source of its
        /// format) as tab-separated lines, and exit.
        #[arg(long)]
        list_detectors: bool,
        /// The file to redact (default: standard input).
        file: Option<PathBuf>,
    },
    /// The bypass audit's programs pinned in bpffs (see docs/security.md, "Bypass audit").
    #[command(subcommand)]
    Bypass(BypassCommand),
    /// For `cargo xtask package`: write the man pages of this command and its subcommands
    /// (roff, one file each) into DIR.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
    /// For `cargo xtask bench ebpf`: attach the bypass-audit programs and wait (see
    /// agent/src/bypass/bench.rs).
    #[command(hide = true)]
    BenchAttach {
        #[arg(long)]
        hooks: String,
        #[arg(long)]
        empty: bool,
        #[arg(long)]
        no_kfuncs: bool,
        #[arg(long)]
        protect: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BypassCommand {
    /// Remove the pinned eBPF programs and maps (they detach at once; what they queued is not
    /// reported). Refused while an agent runs with them: stop it first.
    Unpin {
        /// The pin folder (`bypass.pin_dir`).
        #[arg(long, default_value = bypass::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

/// Everything the agent's tasks share.
pub struct Shared {
    pub config: AgentConfig,
    pub verifier: GrantVerifier,
    pub audience: Audience,
    pub grants: GrantStore,
    /// The controller cluster this agent follows (`cluster.rs`).
    pub cluster: cluster::ClusterPin,
    audit_log: SharedAuditLog,
    /// The live streams' places under `limits.max_streams` and `max_streams_per_subject`.
    slots: Arc<limits::StreamSlots>,
    /// Set at shutdown: every stream ends (`agent_stopping`); each holds a receiver until its
    /// `read.finished` is written, so shutdown waits for them on `closed()`.
    stopping: tokio::sync::watch::Sender<bool>,
    /// The agent-wide cap on grep streams and each subject's grep time.
    grep: stream::GrepLimits,
    /// What the status rpc reports of the agent's start.
    facts: status::StartFacts,
    /// Where a journal read's `journalctl` is excluded from the bypass audit.
    bypass_children: bypass::ChildExclusions,
}

impl Shared {
    /// Appends one audit event and returns once it is on disk (group commit: concurrent events
    /// share a sync). Callers fail closed on error.
    pub fn audit<E: AuditEvent>(&self, event: &E) -> anyhow::Result<u64> {
        // Waiting for the disk blocks: let the runtime move its other tasks off this thread.
        let seq = tokio::task::block_in_place(|| self.audit_log.append(event))?;
        count_bypass_event::<E>();
        Ok(seq)
    }

    /// Appends one audit event that no action waits on (an eBPF observation): written now,
    /// durable with the next group sync (see `SharedAuditLog::append_deferred`).
    pub fn audit_deferred<E: AuditEvent>(&self, event: &E) -> anyhow::Result<u64> {
        let seq = self.audit_log.append_deferred(event)?;
        count_bypass_event::<E>();
        Ok(seq)
    }
}

/// Bypass-audit records are counted by kind for `/metrics` (the event names are the
/// catalogue's: a bounded set).
fn count_bypass_event<E: AuditEvent>() {
    let kind = E::TYPE.name;
    if kind.starts_with("bypass.") {
        loggate_core::metrics::agent()
            .bypass_events
            .get_or_create(&loggate_core::metrics::KindLabel { kind })
            .inc();
    }
}

async fn run(config_path: &Path) -> anyhow::Result<()> {
    // The stop signals' handlers first: a SIGTERM while starting stops the daemon once it
    // serves, with its records, instead of killing it by the signal's default action.
    loggate_core::shutdown::install();
    let mut config = AgentConfig::load(config_path)?;
    let own = config.tls.own_identity(&config.trust_domain)?;
    if own.role() != Role::Agent || own.name() != config.id {
        anyhow::bail!(
            "the agent certificate {} is for {own}, not for agent {}",
            config.tls.cert.display(),
            config.id
        );
    }
    // The metrics port before the audit starts: a taken port stops the agent before its
    // audit file records a start that never served.
    let metrics = match &config.metrics {
        Some(endpoint) => Some((endpoint.clone(), loggate_core::metrics::bind(endpoint)?)),
        None => None,
    };
    // Private from creation: it holds the grant store and the audit signing key.
    loggate_core::private_state::create_private_dir(&config.state_dir, "agent state folder")?;
    let verifier = GrantVerifier::new(config.grant_keys.clone(), config.max_clock_skew);
    let audience = Audience {
        agent_id: loggate_core::identity::AgentId::new(config.id.clone())?,
        labels: config.labels.clone(),
    };
    // The audit key and file first: the grant store forgets the grants it drops as it opens,
    // so their `grant.dropped` records must have somewhere to go. Retention deletes a rotated
    // audit file only once every sink and the checkpoint sender have consumed it (their
    // cursors), within the disk budget.
    let audit = AuditRuntime::open(
        AuditPlaces {
            audit_log: config.audit_log.clone(),
            host: config.id.clone(),
            checkpoint_key: config.state_dir.join("audit-signing.key"),
            sinks_dir: config.state_dir.join("sinks"),
            app_name: "loggate-agent".into(),
            other_cursors: vec![anchor::cursor_path(&config.state_dir)],
        },
        &config.audit_settings,
    )?;
    let loaded = GrantStore::open(&config.state_dir, &verifier, &audience, unix_now())
        .with_context(|| format!("grant store in {}", config.state_dir.display()))?;
    let roots: Vec<PathBuf> = config
        .roots
        .iter()
        .map(|r| r.path().to_path_buf())
        .collect();
    let bypass = bypass::Startup::begin(&config.bypass, &roots);
    let mut started = events::AgentStarted {
        agent_id: config.id.clone(),
        listen: config.listen.to_string(),
        roots: roots.iter().map(|r| r.display().to_string()).collect(),
        grants_loaded: loaded.store.grants_count() as u64,
        revision: loaded.store.revision(),
        bypass_mode: "off",
        bypass_fallback_reason: None,
        bypass_hooks: Vec::new(),
        bypass_hooks_missing: None,
        bypass_fd_lookup: None,
        bypass_fd_lookup_reason: None,
        bypass_protected: None,
        bypass_ia32_syscalls: None,
        bypass_ia32_seen: None,
        bypass_notes: Vec::new(),
        bypass_pins: None,
        bypass_pins_reason: None,
    };
    bypass.describe(&mut started);
    let bypass_mode = match started.bypass_mode {
        "off" if config.bypass.mode != bypass::Mode::Off => "unavailable",
        mode => mode,
    };
    let mut facts = status::StartFacts {
        started: std::time::Instant::now(),
        bypass_mode: bypass_mode.to_string(),
        bypass_note: started.bypass_fallback_reason.clone(),
        sink_names: Vec::new(),
    };
    let mut startup = audit.started(&started)?;
    let checkpoint_public = startup.verify_key();
    for (id, reason) in &loaded.dropped {
        startup.log().append(&events::GrantDropped {
            grant_id: id.clone(),
            reason: reason.clone(),
        })?;
    }
    let sink_names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
    facts.sink_names = sink_names.clone();
    let (audit_log, audit_runtime) = startup.start(std::mem::take(&mut config.sinks))?;
    let listen = config.listen;
    let max_request = config.limits.max_request_bytes;
    let max_streams_per_connection = config.limits.max_streams_per_connection;
    let cluster = cluster::ClusterPin::open(&config.state_dir)?;
    let shared = Arc::new(Shared {
        cluster,
        verifier,
        audience,
        grants: loaded.store,
        audit_log,
        slots: Arc::new(limits::StreamSlots::new(
            config.limits.max_streams,
            config.limits.max_streams_per_subject,
            config.limits.stream_queue_bytes,
        )),
        stopping: tokio::sync::watch::Sender::new(false),
        grep: stream::GrepLimits::new(
            config.limits.grep_streams(),
            Duration::from_secs(config.limits.grep_seconds_per_subject_per_minute.into()),
        ),
        config,
        facts,
        bypass_children: bypass.child_exclusions(),
    });

    tokio::spawn(watch::run(shared.clone()));
    // An enrolled agent renews its certificate at about two thirds of its lifetime and
    // reloads its server's TLS configuration (new connections to the controller read the
    // files anew); an agent whose certificate came from elsewhere has nothing to renew.
    let (renewed, reload_cert) = tokio::sync::watch::channel(0u64);
    tokio::spawn(enrol::renew_loop(shared.clone(), renewed));
    // The one audit timer: checkpoints and rotation, then grant expiry, once a second.
    tokio::spawn(audit_runtime.run_timer(shared.clone(), expire_grants));
    tokio::spawn(anchor::run(shared.clone(), checkpoint_public));
    bypass.spawn(shared.clone())?;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    if let Some((endpoint, metrics_listener)) = metrics {
        let (shared, sinks_dir) = (shared.clone(), shared.config.state_dir.join("sinks"));
        let refresh = move || {
            let held = shared.grants.grants_count();
            let m = loggate_core::metrics::agent();
            m.grants_held.set(i64::try_from(held).unwrap_or(i64::MAX));
            loggate_core::metrics::common().refresh_sinks(&sinks_dir, &sink_names);
        };
        loggate_core::metrics::spawn(
            metrics_listener,
            loggate_core::metrics::Daemon::Agent,
            endpoint,
            refresh,
            loggate_core::shutdown::signal(),
        );
    }
    announce(
        tracing::Level::INFO,
        &format!("loggate-agent {} listening on {listen}", shared.config.id),
    );
    // What the start allocated and freed (the redaction engine's compilation) goes back, and
    // later what each burst of streams freed, once streams have been quiet for a moment.
    release_freed_memory();
    let _trimmer = shared.slots.queue_budget().trim_when_idle(
        limits::TRIM_QUIET,
        limits::TRIM_AT_MOST_EVERY,
        Arc::new(release_freed_memory),
        shared.stopping.subscribe(),
    );
    // The audit file is open and the listener bound: systemd may consider the agent started.
    loggate_core::notify::ready();
    let service = server::AgentService::new(shared.clone());
    let denial_summaries = service.summaries();
    // `serve_mtls` bounds the graceful part: `GRACEFUL_STOP_WITHIN` after the stop it closes
    // the connections still open (a reader that stopped reading) and returns once nothing of
    // their requests is left (core/src/daemon/serve.rs), so the records below come last.
    let served = serve_mtls(
        listener,
        MtlsSettings {
            tls: &shared.config.tls,
            trust_domain: &shared.config.trust_domain,
            service_name: "loggate agent",
            audit: shared.clone(),
            revocations: None,
            reload_cert: Some(reload_cert),
            max_streams_per_connection: Some(max_streams_per_connection),
            // A read's message goes out in one write (checked below).
            send_buffer: Some(SEND_BUFFER_LIMIT),
        },
        routes::AgentRoutes::new(service, max_request),
        async {
            loggate_core::shutdown::signal().await;
            // End every stream now, or the graceful shutdown would wait for a `--follow` until
            // the unit's stop timeout kills the agent without its records.
            shared.stopping.send_replace(true);
        },
    )
    .await;
    if served.is_err() {
        // The server ended without a stop (its accept loop did; it closed its connections as a
        // stop does): the agent stops all the same, with its records, then exits with the
        // error. The streams still running end now, as at a stop.
        shared.stopping.send_replace(true);
    }
    // Each stream's `read.finished` before `agent.stopped` (a stream whose client already
    // left is not waited on by the server; it ends at its next check), and the end of the
    // denial-summaries ticker (server.rs `write_summaries_until_stop`), also a receiver.
    if tokio::time::timeout(STREAMS_END_WITHIN, shared.stopping.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            "some streams had not ended {}s after the stop; stopping without their read.finished",
            STREAMS_END_WITHIN.as_secs()
        );
    }
    loggate_core::notify::stopping();
    // Denial records left out by the budget are summarised now, not lost with the process.
    tokio::task::block_in_place(|| denial_summaries.write_pending());
    AuditRuntime::stop(
        &shared.audit_log,
        &events::AgentStopped {
            agent_id: shared.config.id.clone(),
        },
    )?;
    announce(tracing::Level::INFO, "loggate-agent stopped");
    served
}

// A read's message fits whole when it carries no line from the read before: a read of `CHUNK`
// made up to 1/8 longer by its tags (the ordinary case; more tags, or a carried line of up to
// `max_line_bytes`, make a longer message, which goes in two writes: a `writev` more, not more
// memory), its gRPC and message framing, and HTTP/2's 9-byte frame head.
const _: () =
    assert!(SEND_BUFFER_LIMIT >= stream::CHUNK + stream::CHUNK / 8 + frames::HEADROOM + 9);

/// How long shutdown waits for the streams it ended to write their `read.finished` (a stream
/// ends within one line's or one chunk's time of the stop).
const STREAMS_END_WITHIN: Duration = Duration::from_secs(5);

/// Audits grants whose end has passed (on the audit timer, once a second, with or without the
/// controller). Live streams cut themselves (see `stream::GrantWatch`); this keeps the store
/// and audit trail tidy.
fn expire_grants(shared: &Shared) {
    match shared.grants.sweep_expired(unix_now()) {
        Ok(expired) => {
            for g in expired {
                let c = g.claims();
                if let Err(e) = shared.audit(&events::GrantExpired {
                    grant_id: c.jti.clone(),
                    subject: c.sub.clone(),
                    paths: loggate_core::grant::resource_names(&c.paths, &c.units),
                    not_after: c.exp,
                }) {
                    tracing::error!("audit write failed: {e:#}");
                }
            }
        }
        Err(e) => tracing::error!("expiring grants: {e:#}"),
    }
}

/// The agent's audit log, for the audit timer and the TLS refusals (see `loggate_core::daemon`).
impl AsRef<SharedAuditLog> for Shared {
    fn as_ref(&self) -> &SharedAuditLog {
        &self.audit_log
    }
}

/// `loggate-agent redact`: the agent's own pipeline ([`redact::Pipeline`], what a `cat` with
/// this profile serves) between a file or standard input and standard output.
fn redact_command(
    profile: &str,
    config: Option<&Path>,
    stats: bool,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let settings = match config {
        Some(path) => config::RedactionSettings::load(path)?,
        None => config::RedactionSettings::builtin(),
    };
    let resolved = gate::resolve_profile(profile, &settings.profiles, settings.allow_raw, "here")
        .map_err(|_| {
            if profile == "raw" {
                anyhow::anyhow!(
                    "profile \"raw\" (no redaction) is only available with a configuration that sets allow_raw = true"
                )
            } else {
                anyhow::anyhow!(
                    "no redaction profile {profile:?}; available: {}",
                    settings.profiles.names().join(", ")
                )
            }
        })?;
    let mut input: Box<dyn Read> = match file {
        Some(path) => {
            let meta = std::fs::metadata(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if meta.is_dir() {
                anyhow::bail!("{} is a folder, not a file", path.display());
            }
            Box::new(
                std::fs::File::open(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            )
        }
        None => Box::new(std::io::stdin().lock()),
    };
    let name = file.map_or_else(|| "standard input".to_string(), |p| p.display().to_string());
    let mut stdout = std::io::stdout().lock();
    let redactor = resolved.redactor();
    let raw = redactor.is_none();
    let mut pipeline = redact::Pipeline::new(redactor, settings.max_line_bytes);
    let mut buf = vec![0u8; stream::CHUNK];
    let mut out = Vec::with_capacity(stream::CHUNK);
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {name}")),
        };
        out.clear();
        if raw {
            // What the agent does for `raw` without line selection: whole chunks, unchanged.
            out.extend_from_slice(&buf[..n]);
        } else {
            pipeline.push(&buf[..n], &mut |_| true, &mut out);
        }
        stdout.write_all(&out).context("writing standard output")?;
    }
    out.clear();
    pipeline.finish(&mut |_| true, &mut out);
    stdout.write_all(&out).context("writing standard output")?;
    stdout.flush().context("writing standard output")?;
    if stats {
        let json = serde_json::to_string(pipeline.counts()).context("encoding the counts")?;
        eprintln!("{json}");
    }
    Ok(())
}

/// `loggate-agent check-config FILE`: every problem on standard error, one per line; exit 0
/// when there is none, 2 otherwise.
fn check_config(path: &Path) -> ExitCode {
    match AgentConfig::check(path) {
        Ok(()) => {
            println!("{}: the agent configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in loggate_core::config_check::problem_lines(&e) {
                eprintln!("loggate-agent: {line}");
            }
            ExitCode::from(2)
        }
    }
}

/// glibc malloc arenas the agent may use. Each stream runs on its own blocking thread, and
/// glibc gives threads up to 8 arenas per core, each keeping what its threads freed: measured
/// with 64 concurrent streams (`cargo xtask bench serve`, docs/performance.md), the agent's peak
/// RSS was 202 MiB with glibc's default and 113 MiB with 2 arenas, at the same throughput.
const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas ([`MALLOC_ARENAS`]) before any thread starts; an operator's
/// `MALLOC_ARENA_MAX` in the environment is left to decide.
fn limit_malloc_arenas() {
    loggate_core::alloc::limit_arenas(MALLOC_ARENAS);
}

/// Gives the allocator's free memory back to the kernel (glibc's `malloc_trim`): what a
/// burst of streams, or the start (compiling the redaction engine), freed stays in glibc's
/// arenas otherwise, fragmented, and counts in the agent's RSS until reused (issue #15: the
/// agent's peak RSS with 64 readers, docs/performance.md). Called at start, once the engine is
/// built, and by the trimmer ([`limits::QueueBudget::trim_when_idle`]) once streams have been
/// quiet for a moment; it costs a walk of the free lists, so never on a stream's path.
pub fn release_freed_memory() {
    loggate_core::alloc::release_freed_memory();
}

/// The command tree of `loggate-agent`, with every command's examples ([`examples`]): what is
/// parsed, completed and written as man pages.
fn cli_command() -> clap::Command {
    examples::attach(<Cli as clap::CommandFactory>::command())
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = match cli_command()
        .try_get_matches()
        .and_then(|matches| <Cli as clap::FromArgMatches>::from_arg_matches(&matches))
    {
        Ok(cli) => cli,
        // Help and version to stdout with 0; bad usage to stderr with 2, as `Cli::parse` did.
        Err(e) => e.exit(),
    };
    let format = match &cli.command {
        Command::Run { log_format, .. } => LogFormat::from_name(log_format).unwrap_or_default(),
        _ => LogFormat::Text,
    };
    loggate_core::daemon::init_tracing(loggate_core::daemon::LogDefault::Daemon, format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loggate-agent: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Run { config, .. } => runtime.block_on(run(&config)),
        Command::CheckConfig { file } => return check_config(&file),
        Command::Enrol(args) => runtime.block_on(enrol::enrol(args)),
        Command::Completions { shell } => {
            let mut command = cli_command();
            clap_complete::generate(shell, &mut command, "loggate-agent", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages { dir } => clap_mangen::generate_to(cli_command(), &dir)
            .with_context(|| format!("writing man pages into {}", dir.display())),
        Command::Redact {
            list_detectors: true,
            ..
        } => {
            use std::io::Write;
            std::io::stdout()
                .lock()
                .write_all(redact::detector_table().as_bytes())
                .context("writing standard output")
        }
        Command::Redact {
            profile,
            config,
            stats,
            file,
            list_detectors: false,
        } => redact_command(&profile, config.as_deref(), stats, file.as_deref()),
        Command::Bypass(BypassCommand::Unpin { pin_dir }) => {
            bypass::unpin(&pin_dir).map(|removed| match removed {
                Some(d) => println!(
                    "removed {}; discarded {} queued bypass reads and {} lost ones not yet audited (no agent ran to report them)",
                    pin_dir.display(),
                    d.reads,
                    d.lost
                ),
                None => println!("nothing to remove in {}", pin_dir.display()),
            })
        }
        Command::BenchAttach {
            hooks,
            empty,
            no_kfuncs,
            protect,
        } => bypass::bench::attach(&hooks, empty, no_kfuncs, &protect),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            announce(tracing::Level::ERROR, &format!("loggate-agent: {e:#}"));
            ExitCode::from(1)
        }
    }
}
