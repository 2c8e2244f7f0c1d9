//! Typed configuration files of the controller daemon and of the command-line client.
//! Every field is documented in `docs/configuration.md`; relative paths are resolved against the
//! folder holding the configuration file.

use anyhow::{bail, Context};
use loggate_core::audit::ship::{validate_sinks, AuditSection, SinkConfig};
use loggate_core::config_check::Problems;
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

fn default_max_ttl() -> String {
    "8h".to_string()
}

fn default_redaction_profiles() -> Vec<String> {
    vec!["default".to_string()]
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
    /// Longest grant an admin may issue ("8h").
    #[serde(default = "default_max_ttl")]
    pub max_ttl: String,
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
    /// The controller's own audit file (JSON lines, hash-chained).
    #[serde(default = "default_controller_audit")]
    pub audit_log: PathBuf,
    /// Delivery of the audit file to SIEMs (`[[audit.sinks]]`).
    #[serde(default)]
    pub audit: AuditSection,
    /// `audit.sinks`, validated by [`ControllerConfig::load`].
    #[serde(skip)]
    pub sinks: Vec<SinkConfig>,
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
        config.tls = config.tls.relative_to(base);
        let mut problems = Problems::default();
        problems.take(config.max_ttl_duration());
        if let Some(sinks) = problems.take(validate_sinks(&config.audit.sinks, base)) {
            config.sinks = sinks;
        }
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
        for admin in &config.admins {
            if !loggate_core::identity::is_valid_name(admin) {
                problems.push(anyhow::anyhow!(
                    "admins: {admin:?} is not a valid user name"
                ));
            }
        }
        Ok((config, problems))
    }

    /// `max_ttl`, between 1 s and [`MAX_TTL_LIMIT`]: every grant's end stays a date the
    /// agents and the CLI can compute and print.
    pub fn max_ttl_duration(&self) -> anyhow::Result<Duration> {
        let ttl = humantime::parse_duration(&self.max_ttl)
            .with_context(|| format!("max_ttl {:?} is not a duration like \"8h\"", self.max_ttl))?;
        if ttl.is_zero() || ttl > MAX_TTL_LIMIT {
            bail!(
                "max_ttl {:?} is out of range; give between 1s and {}",
                self.max_ttl,
                humantime::format_duration(MAX_TTL_LIMIT)
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
}
