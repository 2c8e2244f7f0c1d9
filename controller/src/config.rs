//! Typed configuration files of the controller daemon and of the command-line client.
//! Every field is documented in `docs/configuration.md`; relative paths are resolved against the
//! folder holding the configuration file.

use anyhow::{bail, Context};
use loggate_core::audit::ship::{validate_sinks, AuditSection, SinkConfig};
use loggate_core::config_check::Problems;
use loggate_core::daemon::audit::{default_audit_keep_files, default_audit_rotate_bytes};
use loggate_core::daemon::{AuditSettings, CheckpointsFile};
use loggate_core::tls::TlsFiles;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn default_trust_domain() -> String {
    "loggate.local".to_string()
}

fn default_controller_audit() -> PathBuf {
    PathBuf::from("controller-audit.jsonl")
}

/// The largest `max_ttl` a configuration may set (366 days).
pub const MAX_TTL_LIMIT: Duration = Duration::from_secs(366 * 24 * 3600);

fn default_max_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}

fn default_redaction_profiles() -> Vec<String> {
    vec!["default".to_string()]
}

fn default_agent_cert_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_enrol_attempts_per_minute() -> u32 {
    30
}

/// The shortest and longest agent certificate lifetime `[enrolment] agent_cert_ttl` may set:
/// renewal happens at about two thirds of it, so under 10 minutes an agent would do little
/// else; over 90 days a removed agent's certificate stays valid elsewhere too long.
pub const AGENT_CERT_TTL_RANGE: (Duration, Duration) = (
    Duration::from_secs(10 * 60),
    Duration::from_secs(90 * 24 * 3600),
);

/// `[enrolment]`: the pre-authentication listener where agents enrol with a join token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentConfig {
    /// Its listen address ("127.0.0.1:7401"): TLS with the controller's certificate, no client
    /// certificate asked, only the `Enrolment` service.
    pub listen: SocketAddr,
    /// Lifetime of the certificates issued to agents (enrolment and renewal), default "24h".
    #[serde(
        default = "default_agent_cert_ttl",
        with = "loggate_core::duration::text"
    )]
    pub agent_cert_ttl: Duration,
    /// Enrolment attempts one source address may make per minute; the ones over are refused
    /// (`resource_exhausted`) and counted in one `agent.enrol_refused` summary a minute.
    #[serde(default = "default_enrol_attempts_per_minute")]
    pub attempts_per_minute: u32,
}

/// `loggate controller serve --config FILE`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// gRPC listen address, e.g. "127.0.0.1:7400".
    pub listen: SocketAddr,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// SQLite database file (created if missing).
    pub database: PathBuf,
    /// The Ed25519 grant-signing key, PASERK `k4.secret.…` in a file (mode 0600).
    pub signing_key: PathBuf,
    /// User names allowed to issue, list all and revoke grants.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Longest grant an admin may issue ("8h"), read in the one duration grammar at parse
    /// time; checked against [`MAX_TTL_LIMIT`] by [`ControllerConfig::load`].
    #[serde(default = "default_max_ttl", with = "loggate_core::duration::text")]
    pub max_ttl: Duration,
    /// The redaction profiles a grant may name (agents define them; `raw` turns redaction off
    /// and is refused unless listed here and enabled on the agent).
    #[serde(default = "default_redaction_profiles")]
    pub redaction_profiles: Vec<String>,
    /// Optional folder of user certificates (`*.crt`) whose keys are enrolled at start, so grants
    /// can be issued to people who have not contacted the controller yet.
    #[serde(default)]
    pub enrol_user_certs: Option<PathBuf>,
    /// Optional folder of agents' checkpoint public keys (`<agent-id>.pub`, as the agent writes
    /// `state/audit-signing.key.pub`) enrolled at start, replacing a key learned on first use.
    #[serde(default)]
    pub enrol_checkpoint_keys: Option<PathBuf>,
    /// The access policy file (roles, groups, agent labels; docs/policy.md), loaded at start,
    /// on SIGHUP and on `loggate policy reload`. Without one, `grant request` is refused and
    /// only admins' break-glass `grant issue` gives access.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// The CA certificate the controller signs agents' certificates with at run time
    /// (`loggate pki init` writes `ca.crt`); needed by `[enrolment]`.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Its private key (`ca.key`, mode 0600, checked like the signing key).
    #[serde(default)]
    pub ca_key: Option<PathBuf>,
    /// The pre-authentication enrolment listener; absent, agents cannot enrol with a token.
    #[serde(default)]
    pub enrolment: Option<EnrolmentConfig>,
    /// The controller's own audit file (JSON lines, hash-chained).
    #[serde(default = "default_controller_audit")]
    pub audit_log: PathBuf,
    /// Rotate the audit file once it is this long (bytes; 0 = never). Same key, default and
    /// meaning as the agent's.
    #[serde(default = "default_audit_rotate_bytes")]
    audit_rotate_bytes: u64,
    /// Rotated audit files kept; older ones are deleted once every sink has consumed them.
    #[serde(default = "default_audit_keep_files")]
    audit_keep_files: usize,
    /// Disk budget of the audit file and its rotated files together (bytes; default: twice
    /// `(audit_keep_files + 1) × audit_rotate_bytes`, at least 1 GiB; 0 = none).
    #[serde(default)]
    audit_max_bytes: Option<u64>,
    /// When the audit writer seals the chain with a signed checkpoint (`[checkpoints]`).
    #[serde(default)]
    checkpoints: CheckpointsFile,
    /// Delivery of the audit file to SIEMs (`[[audit.sinks]]`).
    #[serde(default)]
    pub audit: AuditSection,
    /// `audit.sinks`, validated by [`ControllerConfig::load`].
    #[serde(skip)]
    pub sinks: Vec<SinkConfig>,
    /// The Prometheus endpoint (`[metrics]`; off by default).
    #[serde(default)]
    pub metrics: loggate_core::metrics::MetricsFile,
    pub tls: TlsFiles,
}

impl ControllerConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let (config, problems) = Self::load_fields(path)?;
        problems
            .into_result()
            .with_context(|| format!("controller configuration {}", path.display()))?;
        Ok(config)
    }

    /// The parsed file with its paths resolved, and the problems of its fields (every one,
    /// for `loggate controller check-config`).
    pub fn load_fields(path: &Path) -> anyhow::Result<(Self, Problems)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read controller configuration {}", path.display()))?;
        let mut config: ControllerConfig = toml::from_str(&text)
            .with_context(|| format!("invalid controller configuration {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.database = base.join(&config.database);
        config.signing_key = base.join(&config.signing_key);
        config.enrol_user_certs = config.enrol_user_certs.map(|p| base.join(p));
        config.enrol_checkpoint_keys = config.enrol_checkpoint_keys.map(|p| base.join(p));
        config.audit_log = base.join(&config.audit_log);
        config.policy = config.policy.map(|p| base.join(p));
        config.ca_cert = config.ca_cert.map(|p| base.join(p));
        config.ca_key = config.ca_key.map(|p| base.join(p));
        config.tls = config.tls.relative_to(base);
        let mut problems = Problems::default();
        problems.take(config.max_ttl_duration());
        if let Some(sinks) = problems.take(validate_sinks(&config.audit.sinks, base)) {
            config.sinks = sinks;
        }
        problems.take(config.audit_settings());
        problems.take(
            config
                .metrics
                .validate(loggate_core::metrics::Daemon::Controller),
        );
        if config.redaction_profiles.is_empty() {
            problems.push(anyhow::anyhow!(
                "redaction_profiles: name at least one profile (e.g. [\"default\"])"
            ));
        }
        for profile in &config.redaction_profiles {
            if !loggate_core::grant::is_valid_redaction_name(profile) {
                problems.push(anyhow::anyhow!(
                    "redaction_profiles: {profile:?} is not a profile name ([a-z0-9_-]{{1,64}})"
                ));
            }
        }
        if config.ca_cert.is_some() != config.ca_key.is_some() {
            problems.push(anyhow::anyhow!(
                "ca_cert and ca_key: give both (the CA certificate and its key) or neither"
            ));
        }
        if let Some(enrolment) = &config.enrolment {
            if config.ca_cert.is_none() || config.ca_key.is_none() {
                problems.push(anyhow::anyhow!(
                    "[enrolment] needs ca_cert and ca_key: the controller signs the agents' \
                     certificates with them (loggate pki init writes ca.crt and ca.key)"
                ));
            }
            let (shortest, longest) = AGENT_CERT_TTL_RANGE;
            if enrolment.agent_cert_ttl < shortest || enrolment.agent_cert_ttl > longest {
                problems.push(anyhow::anyhow!(
                    "[enrolment] agent_cert_ttl \"{}\" is out of range; give between 10m and 90d",
                    loggate_core::duration::format(enrolment.agent_cert_ttl)
                ));
            }
            if enrolment.attempts_per_minute == 0 {
                problems.push(anyhow::anyhow!(
                    "[enrolment] attempts_per_minute must be at least 1"
                ));
            }
            if enrolment.listen == config.listen {
                problems.push(anyhow::anyhow!(
                    "[enrolment] listen must differ from listen: the pre-authentication port is \
                     its own listener"
                ));
            }
        }
        for admin in &config.admins {
            if !loggate_core::identity::is_valid_name(admin) {
                problems.push(anyhow::anyhow!(
                    "admins: {admin:?} is not a valid user name"
                ));
            }
        }
        Ok((config, problems))
    }

    /// The audit keys (`audit_rotate_bytes`, `audit_keep_files`, `audit_max_bytes`,
    /// `[checkpoints]`), checked as the agent's are: checked once by [`ControllerConfig::load`].
    pub fn audit_settings(&self) -> anyhow::Result<AuditSettings> {
        AuditSettings::validate(
            self.audit_rotate_bytes,
            self.audit_keep_files,
            self.audit_max_bytes,
            &self.checkpoints,
        )
    }

    /// `max_ttl`, between 1 s and [`MAX_TTL_LIMIT`]: every grant's end stays a date the
    /// agents and the CLI can compute and print.
    pub fn max_ttl_duration(&self) -> anyhow::Result<Duration> {
        let ttl = self.max_ttl;
        if ttl.is_zero() || ttl > MAX_TTL_LIMIT {
            bail!(
                "max_ttl \"{}\" is out of range; give between 1s and {} days",
                loggate_core::duration::format(ttl),
                MAX_TTL_LIMIT.as_secs() / 86_400
            );
        }
        Ok(ttl)
    }
}

/// The command-line client's configuration (`--config`, `$LOGGATE_CONFIG`, or
/// `~/.config/loggate/client.toml`). `loggate pki init` writes one per user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The controller's address, "host:port".
    pub controller: String,
    pub tls: TlsFiles,
}

impl ClientConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read client configuration {} (pass --config FILE or set LOGGATE_CONFIG)",
                path.display()
            )
        })?;
        let mut config: ClientConfig = toml::from_str(&text)
            .with_context(|| format!("invalid client configuration {}", path.display()))?;
        config.tls = config
            .tls
            .relative_to(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    pub fn default_path() -> PathBuf {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        home.join(".config/loggate/client.toml")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(extra: &str) -> anyhow::Result<ControllerConfig> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("controller.toml");
        std::fs::write(
            &path,
            format!(
                "listen = \"127.0.0.1:7400\"\ndatabase = \"state.db\"\nsigning_key = \"k\"\n{extra}\n\
                 [tls]\nca = \"ca.crt\"\ncert = \"c.crt\"\nkey = \"c.key\"\n"
            ),
        )?;
        ControllerConfig::load(&path)
    }

    #[test]
    fn audit_keys_have_the_agents_defaults_and_checks() {
        let config = load_with("").expect("minimal configuration");
        let audit = config.audit_settings().expect("checked at load");
        let rotation = audit.rotation.expect("rotates by default");
        assert_eq!((rotation.max_bytes, rotation.keep), (256 << 20, 10));
        assert_eq!(audit.budget_bytes, 11 * (512 << 20));
        assert_eq!(
            (audit.checkpoints.every, audit.checkpoints.interval),
            (1000, Duration::from_secs(60))
        );
        let config = load_with(
            "audit_rotate_bytes = 4096\naudit_keep_files = 3\naudit_max_bytes = 65536\n\
             [checkpoints]\nevery = 5\ninterval = \"2s\"",
        )
        .expect("set audit keys");
        let audit = config.audit_settings().expect("checked at load");
        assert_eq!(
            audit.rotation.map(|r| (r.max_bytes, r.keep)),
            Some((4096, 3))
        );
        assert_eq!(audit.budget_bytes, 65536);
        assert_eq!(audit.checkpoints.every, 5);
        let off = load_with("audit_rotate_bytes = 0").expect("no rotation");
        assert!(off.audit_settings().expect("checked").rotation.is_none());
        for (bad, expect) in [
            (
                "audit_rotate_bytes = 4096\naudit_max_bytes = 4097",
                "at least twice",
            ),
            (
                "audit_rotate_bytes = 0\naudit_max_bytes = 4096",
                "needs rotation",
            ),
            ("[checkpoints]\nevery = 0", "every must be at least 1"),
            ("audit_keep = 3", "unknown field"),
        ] {
            let err = format!("{:#}", load_with(bad).expect_err(bad));
            assert!(err.contains(expect), "{bad}: {err}");
        }
    }

    #[test]
    fn enrolment_needs_the_ca_and_has_checked_defaults() {
        let config = load_with("").expect("minimal configuration");
        assert!(config.enrolment.is_none());
        let config = load_with(
            "ca_cert = \"ca.crt\"\nca_key = \"ca.key\"\n[enrolment]\nlisten = \"127.0.0.1:7401\"",
        )
        .expect("enrolment");
        let enrolment = config.enrolment.expect("set");
        assert_eq!(enrolment.agent_cert_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(enrolment.attempts_per_minute, 30);
        assert!(config.ca_key.expect("set").ends_with("ca.key"));
        for (bad, expect) in [
            (
                "[enrolment]\nlisten = \"127.0.0.1:7401\"",
                "[enrolment] needs ca_cert and ca_key",
            ),
            ("ca_cert = \"ca.crt\"", "give both"),
            (
                "ca_cert = \"c\"\nca_key = \"k\"\n[enrolment]\nlisten = \"127.0.0.1:7401\"\nagent_cert_ttl = \"1m\"",
                "out of range; give between 10m and 90d",
            ),
            (
                "ca_cert = \"c\"\nca_key = \"k\"\n[enrolment]\nlisten = \"127.0.0.1:7400\"",
                "must differ from listen",
            ),
        ] {
            let err = format!("{:#}", load_with(bad).expect_err(bad));
            assert!(err.contains(expect), "{bad}: {err}");
        }
    }

    #[test]
    fn redaction_profiles_default_to_default_and_are_checked() {
        let config = load_with("").expect("minimal configuration");
        assert_eq!(config.redaction_profiles, ["default"]);
        let config = load_with("redaction_profiles = [\"default\", \"raw\"]").expect("two names");
        assert_eq!(config.redaction_profiles, ["default", "raw"]);
        for (bad, expect) in [
            ("redaction_profiles = []", "name at least one profile"),
            (
                "redaction_profiles = [\"a b\"]",
                "\"a b\" is not a profile name",
            ),
            ("redaction_profiles = [\"\"]", "is not a profile name"),
        ] {
            let err = format!("{:#}", load_with(bad).expect_err(bad));
            assert!(err.contains(expect), "{bad}: {err}");
        }
    }

    #[test]
    fn max_ttl_is_read_in_the_one_duration_grammar_and_range_checked() {
        let config = load_with("").expect("default");
        assert_eq!(config.max_ttl, Duration::from_secs(8 * 3600));
        let config = load_with("max_ttl = \"1h 30m\"").expect("with a space");
        assert_eq!(config.max_ttl, Duration::from_secs(5400));
        let config = load_with("max_ttl = \"366d\"").expect("the limit");
        assert_eq!(config.max_ttl, MAX_TTL_LIMIT);
        for (bad, expect) in [
            (
                "max_ttl = \"8x\"",
                "\"8x\" is not a duration; write a duration such as",
            ),
            ("max_ttl = \"-8h\"", "\"-8h\" is negative"),
            (
                "max_ttl = \"0s\"",
                "out of range; give between 1s and 366 days",
            ),
            (
                "max_ttl = \"367d\"",
                "out of range; give between 1s and 366 days",
            ),
        ] {
            let err = format!("{:#}", load_with(bad).expect_err(bad));
            assert!(err.contains(expect), "{bad}: {err}");
        }
    }
}
