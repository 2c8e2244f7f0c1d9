//! The agent's typed configuration (`loggate-agent run --config FILE`), validated at start.
//! Every field is documented in `docs/configuration.md`; relative paths are resolved against the
//! folder holding the configuration file.

use crate::bypass::{BypassConfig, BypassFile};
use crate::controllers::ControllerAddrs;
use crate::fs_access::LogRoot;
use anyhow::{bail, Context};
use loggate_core::audit::ship::{validate_sinks, AuditSection, SinkConfig};
use loggate_core::config_check::{ConfigProblems, Problems};
use loggate_core::daemon::audit::{default_audit_keep_files, default_audit_rotate_bytes};
use loggate_core::daemon::{AuditSettings, CheckpointsFile};
use loggate_core::grant::VerifyingKey;
use loggate_core::identity::{is_valid_name, Role};
use loggate_core::metrics::MetricsFile;
use loggate_core::tls::TlsFiles;
use loggate_redact::{Profiles, RedactionConfigFile};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn default_trust_domain() -> String {
    "loggate.local".into()
}
fn default_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_audit() -> PathBuf {
    PathBuf::from("audit.jsonl")
}
fn default_state() -> PathBuf {
    PathBuf::from("state")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfigFile {
    /// This agent's id; must equal the agent id in its certificate.
    id: String,
    #[serde(default)]
    labels: Vec<String>,
    /// Where people connect to read logs ("127.0.0.1:7501").
    listen: SocketAddr,
    /// The address published to the controller's registry (default: `listen`).
    #[serde(default)]
    advertise: Option<String>,
    /// The controller's address ("host:port"); or `controllers`, not both.
    #[serde(default)]
    controller: Option<String>,
    /// The addresses of the replicas of one controller ("host:port" each); see
    /// `controllers.rs`.
    #[serde(default)]
    controllers: Option<Vec<String>>,
    #[serde(default = "default_trust_domain")]
    trust_domain: String,
    /// Files holding the controller's grant-verification keys (PASERK `k4.public.…`).
    grant_keys: Vec<PathBuf>,
    /// The only folders this agent ever serves files from.
    roots: Vec<PathBuf>,
    /// Folder for the persisted grants and revocations.
    #[serde(default = "default_state")]
    state_dir: PathBuf,
    #[serde(default = "default_audit")]
    audit_log: PathBuf,
    /// Rotate the audit file once it is this long (bytes; 0 = never).
    #[serde(default = "default_audit_rotate_bytes")]
    audit_rotate_bytes: u64,
    /// Rotated audit files kept; older ones are deleted once every sink and the checkpoint
    /// sender have consumed them.
    #[serde(default = "default_audit_keep_files")]
    audit_keep_files: usize,
    /// Disk budget of the audit file and its rotated files together (bytes; default: twice
    /// `(audit_keep_files + 1) × audit_rotate_bytes`, at least 1 GiB; 0 = none). Reached with nothing
    /// consumed to delete, every audited action is refused until a reader catches up.
    #[serde(default)]
    audit_max_bytes: Option<u64>,
    /// Tolerated clock difference with the controller at a grant's start (at most 60s).
    #[serde(default = "default_skew", with = "loggate_core::duration::text")]
    max_clock_skew: Duration,
    /// Whether the redaction profile "raw" (no redaction) may be named by grants.
    #[serde(default)]
    allow_raw: bool,
    #[serde(default)]
    limits: Limits,
    /// The eBPF audit of direct reads of the protected files (`[bypass]`).
    #[serde(default)]
    bypass: BypassFile,
    /// Redaction profiles and the hash key (`[redaction]`); the built-in `default` profile
    /// exists without it.
    #[serde(default)]
    redaction: RedactionConfigFile,
    /// Delivery of the audit file to SIEMs (`[[audit.sinks]]`).
    #[serde(default)]
    audit: AuditSection,
    /// When the audit writer seals the chain with a signed checkpoint (`[checkpoints]`).
    #[serde(default)]
    checkpoints: CheckpointsFile,
    /// The Prometheus endpoint (`[metrics]`; off by default).
    #[serde(default)]
    metrics: MetricsFile,
    /// User names who may ask this agent's status (`loggate agent status`); none by default.
    #[serde(default)]
    status_readers: Vec<String>,
    /// How the systemd journal is read (`[journal]`, see `journal.rs`).
    #[serde(default)]
    journal: crate::journal::JournalFile,
    tls: TlsFiles,
}

/// Per-request limits. Defaults are in `Limits::default`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent streams one person may hold on this agent; one more is refused
    /// (`too_many_streams`, audited). A stream holds its place until its response is over,
    /// not only until its file is read (see `limits::StreamSlots`).
    pub max_streams_per_subject: usize,
    /// Concurrent streams on this agent, all readers together; one more is refused
    /// (`agent_busy`, retryable, audited) before `read.allowed`. Bounds the agent's memory
    /// (each stream queues one message plus its share of `stream_queue_bytes`, see
    /// docs/performance.md)
    /// and keeps streams well below the runtime's 512 blocking threads.
    pub max_streams: usize,
    /// Bytes of read content all streams together may keep queued for their responses beyond
    /// each stream's one message in flight (`limits::QueueBudget`): one stream alone queues up
    /// to `stream::CHANNEL_CAPACITY` messages, many streams share this much, and a reader that
    /// stops reading holds no more than what it had queued. Between 64 KiB and 1 GiB.
    pub stream_queue_bytes: usize,
    /// HTTP/2 streams one connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`);
    /// a client asking for more waits for one to end. Bounds what one connection can make the
    /// agent hold before any check runs.
    pub max_streams_per_connection: u32,
    /// Largest request message accepted (bytes).
    pub max_request_bytes: usize,
    /// Longest grep pattern accepted (bytes).
    pub max_pattern_bytes: usize,
    /// Size limit of a compiled grep pattern (bytes).
    pub max_regex_bytes: usize,
    /// Lines longer than this are cut in line-based modes (grep, tail, time ranges). It also
    /// sets how complex a grep pattern may be: states × `max_line_bytes` ≤
    /// `server::PATTERN_WORK_PER_LINE`, so that one line matches in well under a second.
    pub max_line_bytes: usize,
    /// Most lines `tail -n` may ask for.
    pub max_tail_lines: u64,
    /// Time one stream may spend matching its grep pattern; over it the stream ends
    /// (`budget_exceeded`) with an error saying so. Bounds the CPU a pathological pattern can
    /// burn, together with the per-line bound on the pattern's complexity.
    #[serde(with = "loggate_core::duration::text")]
    pub grep_time_budget: Duration,
    /// Matching time one subject may spend across all its grep streams, per minute (a token
    /// bucket of that size refilled at that rate): with it spent, running greps are cut, and
    /// new ones are refused (`grep_budget_spent`) until a tenth of it is back. Without it, streams re-requested as their
    /// own budget runs out keep `max_streams_per_subject` cores busy for ever.
    pub grep_seconds_per_subject_per_minute: u32,
    /// Grep streams the agent runs at once, all subjects together; more are refused
    /// (`grep_streams_busy`). Default: half the CPUs (at least 1), so that greps never take
    /// every core from the services whose logs they read.
    pub max_grep_streams: Option<usize>,
    /// How far before a `tail` start the agent looks for the `BEGIN`/`END` line that decides
    /// whether the start lies inside a private-key block; with none found that far back the
    /// start is taken as outside any block (a key block is shorter than the look-back: see
    /// `stream::prime`) and `read.finished` says `key_lookback_exhausted`.
    pub tail_key_lookback_bytes: u64,
    /// `read.denied` records one subject or one source address may cause per
    /// `audit_denial_window`; the ones over are counted and summarised, not written one by one
    /// (the refused request still gets its error).
    pub audit_denials_per_window: u32,
    #[serde(with = "loggate_core::duration::text")]
    pub audit_denial_window: Duration,
    /// Most bytes one compressed file (`.gz`, `.zst`) is decompressed to for one stream; beyond
    /// it the stream is cut (`read.finished` `decompression_limit`). Bounds a decompression
    /// bomb's CPU and bandwidth (memory is bounded by the decoders' windows anyway).
    pub max_decompressed_bytes: u64,
    /// Most bytes out per compressed byte in (above the first MiB, which is always allowed):
    /// a bomb's ratio is in the thousands, a log's in the tens.
    pub max_decompression_ratio: u64,
}

impl Limits {
    /// The bounds of the decoder of a compressed file.
    pub fn decompression(&self) -> crate::decompress::DecompressionLimits {
        crate::decompress::DecompressionLimits {
            max_bytes: self.max_decompressed_bytes,
            max_ratio: self.max_decompression_ratio,
        }
    }

    /// `max_grep_streams`, or its default: half the CPUs, at least one.
    pub fn grep_streams(&self) -> usize {
        self.max_grep_streams.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cpus / 2).max(1)
        })
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams_per_subject: 4,
            max_streams: 64,
            stream_queue_bytes: 4 << 20,
            max_streams_per_connection: 8,
            max_request_bytes: 64 * 1024,
            max_pattern_bytes: 1024,
            max_regex_bytes: 256 * 1024,
            max_line_bytes: 64 * 1024,
            max_tail_lines: 100_000,
            grep_time_budget: Duration::from_secs(30),
            grep_seconds_per_subject_per_minute: 30,
            max_grep_streams: None,
            tail_key_lookback_bytes: 16 << 20,
            audit_denials_per_window: 60,
            audit_denial_window: Duration::from_secs(60),
            max_decompressed_bytes: 16 << 30,
            max_decompression_ratio: 250,
        }
    }
}

/// The validated configuration.
pub struct AgentConfig {
    pub id: String,
    pub labels: Vec<String>,
    pub listen: SocketAddr,
    pub advertise: String,
    /// Where the controller is (one address, or its replicas') and which address is current.
    pub controllers: ControllerAddrs,
    pub trust_domain: String,
    pub grant_keys: Vec<VerifyingKey>,
    pub roots: Vec<LogRoot>,
    pub state_dir: PathBuf,
    pub audit_log: PathBuf,
    /// Rotation, retention budget and checkpoints of the audit file.
    pub audit_settings: AuditSettings,
    pub max_clock_skew: Duration,
    pub allow_raw: bool,
    pub limits: Limits,
    pub bypass: BypassConfig,
    pub profiles: Profiles,
    /// Validated `[[audit.sinks]]`.
    pub sinks: Vec<SinkConfig>,
    /// Where `/metrics` is served; `None` when off.
    pub metrics: Option<loggate_core::metrics::MetricsEndpoint>,
    /// User names who may ask this agent's status (see `status.rs`).
    pub status_readers: Vec<String>,
    /// How the systemd journal is read (`[journal]`).
    pub journal: crate::journal::JournalConfig,
    pub tls: TlsFiles,
}

/// What `loggate-agent redact` needs from a configuration file: the profiles, whether `raw` is
/// allowed and the line limit. The rest of the file is parsed (and must be valid TOML of the
/// agent's schema) but not checked against the machine: no keys, roots or certificates are read.
pub struct RedactionSettings {
    pub profiles: Profiles,
    pub allow_raw: bool,
    pub max_line_bytes: usize,
}

impl RedactionSettings {
    /// Without a configuration file: the built-in profiles and limits, `raw` not allowed.
    pub fn builtin() -> Self {
        RedactionSettings {
            profiles: Profiles::builtin(),
            allow_raw: false,
            max_line_bytes: Limits::default().max_line_bytes,
        }
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file = AgentConfig::parse(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        check_limits(&file.limits)
            .with_context(|| format!("agent configuration {}", path.display()))?;
        let profiles = Profiles::load(file.redaction, base)
            .with_context(|| format!("agent configuration {}", path.display()))?;
        Ok(RedactionSettings {
            profiles,
            allow_raw: file.allow_raw,
            max_line_bytes: file.limits.max_line_bytes,
        })
    }
}

/// The least `limits.stream_queue_bytes`: one read of a file.
const STREAM_QUEUE_FLOOR: usize = 64 * 1024;
/// The most `limits.stream_queue_bytes`: far above any host's need, and still a bound (a typo
/// does not remove it).
const STREAM_QUEUE_CEILING: usize = 1 << 30;

/// The most streams `limits.max_streams` may allow: each live stream holds one of the runtime's
/// 512 blocking threads, and the audit writer, the file opens and the eBPF loader need some.
pub(crate) const MAX_STREAMS_CEILING: usize = 256;

fn check_limits(l: &Limits) -> anyhow::Result<()> {
    if l.max_streams_per_subject == 0 || l.max_request_bytes < 1024 || l.max_line_bytes < 256 {
        bail!(
            "limits: max_streams_per_subject ≥ 1, max_request_bytes ≥ 1024, max_line_bytes ≥ 256"
        );
    }
    if !(1..=MAX_STREAMS_CEILING).contains(&l.max_streams) || l.max_streams_per_connection == 0 {
        bail!(
            "limits: max_streams must be between 1 and {MAX_STREAMS_CEILING} (below the 512 \
             blocking threads that run streams) and max_streams_per_connection ≥ 1"
        );
    }
    if !(STREAM_QUEUE_FLOOR..=STREAM_QUEUE_CEILING).contains(&l.stream_queue_bytes) {
        bail!(
            "limits: stream_queue_bytes must be between {STREAM_QUEUE_FLOOR} (64 KiB, one \
             read) and {STREAM_QUEUE_CEILING} (1 GiB); the default is 4194304 (4 MiB)"
        );
    }
    if l.grep_seconds_per_subject_per_minute == 0 || l.max_grep_streams == Some(0) {
        bail!("limits: grep_seconds_per_subject_per_minute ≥ 1 and max_grep_streams ≥ 1");
    }
    if l.grep_time_budget < Duration::from_millis(100) || l.tail_key_lookback_bytes < 64 * 1024 {
        bail!("limits: grep_time_budget ≥ 100ms and tail_key_lookback_bytes ≥ 65536");
    }
    if l.audit_denials_per_window == 0 || l.audit_denial_window < Duration::from_secs(1) {
        bail!("limits: audit_denials_per_window ≥ 1 and audit_denial_window ≥ 1s");
    }
    if l.max_decompressed_bytes < 1 << 20 || l.max_decompression_ratio < 10 {
        bail!(
            "limits: max_decompressed_bytes ≥ 1048576 (1 MiB) and max_decompression_ratio ≥ 10 \
             (ordinary logs compress 5–20 times)"
        );
    }
    Ok(())
}

impl AgentConfig {
    fn parse(path: &Path) -> anyhow::Result<AgentConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read agent configuration {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("invalid agent configuration {}", path.display()))
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file = Self::parse(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::validate(file, base)
            .with_context(|| format!("agent configuration {}", path.display()))
    }

    /// Checks every field; on failure the error is a [`ConfigProblems`] listing every problem
    /// found, not only the first (`loggate-agent check-config`).
    ///
    /// [`ConfigProblems`]: loggate_core::config_check::ConfigProblems
    fn validate(file: AgentConfigFile, base: &Path) -> anyhow::Result<Self> {
        let mut problems = Problems::default();
        if !is_valid_name(&file.id) {
            problems.push(anyhow::anyhow!(
                "id {:?} must be lowercase letters, digits and dashes",
                file.id
            ));
        }
        let roots = problems.take(validate_roots(&file.roots));
        let grant_keys = problems.take(load_grant_keys(&file.grant_keys, base));
        let controllers = problems.take(ControllerAddrs::from_config(
            file.controller,
            file.controllers,
        ));
        let max_clock_skew = file.max_clock_skew;
        if max_clock_skew > Duration::from_secs(60) {
            problems.push(anyhow::anyhow!("max_clock_skew must be at most 60s"));
        }
        problems.take(check_limits(&file.limits));
        let profiles = problems.take(Profiles::load(file.redaction, base));
        let bypass = problems.take(file.bypass.clone().validate());
        let sinks = problems.take(validate_sinks(&file.audit.sinks, base));
        let metrics = problems.take(file.metrics.validate(loggate_core::metrics::Daemon::Agent));
        let journal = problems.take(file.journal.clone().validate(base));
        for reader in &file.status_readers {
            if !is_valid_name(reader) {
                problems.push(anyhow::anyhow!(
                    "status_readers: {reader:?} is not a user name (lowercase letters, digits and dashes)"
                ));
            }
        }
        let audit_settings = problems.take(AuditSettings::validate(
            file.audit_rotate_bytes,
            file.audit_keep_files,
            file.audit_max_bytes,
            &file.checkpoints,
        ));
        let (
            Some(roots),
            Some(grant_keys),
            Some(profiles),
            Some(bypass),
            Some(sinks),
            Some(audit_settings),
            Some(metrics),
            Some(controllers),
            Some(journal),
        ) = (
            roots,
            grant_keys,
            profiles,
            bypass,
            sinks,
            audit_settings,
            metrics,
            controllers,
            journal,
        )
        else {
            problems.into_result()?;
            bail!("the agent configuration is invalid");
        };
        let state_dir = base.join(&file.state_dir);
        // An enrolled agent carries the labels its join token gave (the controller's word,
        // kept at enrolment); the configured `labels` are only the claim of an agent whose
        // certificate came from elsewhere.
        let labels = match problems.take(crate::enrol::EnrolmentRecord::load(&state_dir)) {
            Some(Some(record)) if record.agent_id == file.id => record.labels,
            _ => file.labels,
        };
        problems.into_result()?;
        Ok(AgentConfig {
            audit_settings,
            bypass,
            advertise: file.advertise.unwrap_or_else(|| file.listen.to_string()),
            id: file.id,
            labels,
            listen: file.listen,
            controllers,
            trust_domain: file.trust_domain,
            grant_keys,
            roots,
            state_dir,
            audit_log: base.join(file.audit_log),
            max_clock_skew,
            allow_raw: file.allow_raw,
            limits: file.limits,
            profiles,
            sinks,
            metrics,
            status_readers: file.status_readers,
            journal,
            tls: file.tls.relative_to(base),
        })
    }

    /// `loggate-agent check-config`: the configuration as `run` loads it, plus what `run`
    /// checks next before serving — the certificate is this agent's and its key and CA are
    /// readable. Ok, or every problem found (see [`problem_lines`]).
    ///
    /// [`problem_lines`]: loggate_core::config_check::problem_lines
    pub fn check(path: &Path) -> anyhow::Result<()> {
        let file = Self::parse(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let tls = file.tls.relative_to(base);
        let (id, trust_domain) = (file.id.clone(), file.trust_domain.clone());
        let mut problems = Problems::default();
        if let Err(e) = Self::validate(file, base) {
            match e.downcast::<ConfigProblems>() {
                Ok(list) => list.0.into_iter().for_each(|p| problems.push(p)),
                Err(e) => problems.push(e),
            }
        }
        problems.take(check_own_certificate(&tls, &trust_domain, &id));
        for (what, file) in [("tls.ca", &tls.ca), ("tls.key", &tls.key)] {
            problems.take(
                std::fs::File::open(file)
                    .map(drop)
                    .with_context(|| format!("{what}: cannot read {}", file.display())),
            );
        }
        problems
            .into_result()
            .with_context(|| format!("agent configuration {}", path.display()))
    }
}

/// The certificate in `tls.cert` must be this agent's (`spiffe://<td>/agent/<id>`).
pub fn check_own_certificate(tls: &TlsFiles, trust_domain: &str, id: &str) -> anyhow::Result<()> {
    let own = tls.own_identity(trust_domain)?;
    if own.role() != Role::Agent || own.name() != id {
        bail!(
            "the agent certificate {} is for {own}, not for agent {id}",
            tls.cert.display()
        );
    }
    Ok(())
}

fn validate_roots(roots: &[PathBuf]) -> anyhow::Result<Vec<LogRoot>> {
    if roots.is_empty() {
        bail!("roots: name at least one folder this agent may serve");
    }
    roots
        .iter()
        .map(|r| {
            if !r.is_absolute() {
                bail!("roots: {} must be an absolute path", r.display());
            }
            LogRoot::new(r).map_err(|e| anyhow::anyhow!("roots: {}: {e}", r.display()))
        })
        .collect()
}

fn load_grant_keys(files: &[PathBuf], base: &Path) -> anyhow::Result<Vec<VerifyingKey>> {
    if files.is_empty() {
        bail!("grant_keys: name at least one controller public key file");
    }
    files
        .iter()
        .map(|p| {
            let p = base.join(p);
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("grant_keys: cannot read {}", p.display()))?;
            VerifyingKey::from_paserk(&text).with_context(|| format!("grant_keys: {}", p.display()))
        })
        .collect()
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn decompression_limits_below_their_floors_are_refused_with_the_floors_named() {
        for text in [
            "max_decompressed_bytes = 1000",
            "max_decompression_ratio = 2",
        ] {
            let limits: Limits = toml::from_str(text).unwrap();
            let err = check_limits(&limits).unwrap_err().to_string();
            assert!(
                err.contains("max_decompressed_bytes ≥ 1048576")
                    && err.contains("max_decompression_ratio ≥ 10"),
                "{text}: {err}"
            );
        }
        let defaults = Limits::default();
        assert!(check_limits(&defaults).is_ok());
        assert_eq!(defaults.decompression().cap_for(1 << 20), 250 << 20);
        assert!(
            toml::from_str::<Limits>("max_decompresed_bytes = 1").is_err(),
            "a typo"
        );
    }

    #[test]
    fn a_stream_queue_budget_outside_its_bounds_is_refused_with_the_bounds_named() {
        for text in [
            "stream_queue_bytes = 1000",
            "stream_queue_bytes = 2147483648",
        ] {
            let limits: Limits = toml::from_str(text).unwrap();
            let err = check_limits(&limits).unwrap_err().to_string();
            assert!(
                err.contains("stream_queue_bytes must be between 65536")
                    && err.contains("1073741824"),
                "{text}: {err}"
            );
        }
        let limits: Limits = toml::from_str("stream_queue_bytes = 65536").unwrap();
        assert!(check_limits(&limits).is_ok());
        assert!(toml::from_str::<Limits>("stream_queue_bytes = -1").is_err());
    }

    #[test]
    fn configuration_durations_share_the_one_grammar() {
        let limits: Limits = toml::from_str("grep_time_budget = \"1m 30s\"").unwrap();
        assert_eq!(limits.grep_time_budget, Duration::from_secs(90));
        let err = toml::from_str::<Limits>("audit_denial_window = \"1x\"").unwrap_err();
        assert!(
            err.to_string().contains("\"1x\" is not a duration"),
            "{err}"
        );
    }
}
