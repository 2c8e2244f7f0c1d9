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
/// renewal happens at about two thirds of it (under an hour is for tests: the agents would
/// renew every few minutes); over 90 days a removed agent's certificate stays valid elsewhere
/// too long.
pub const AGENT_CERT_TTL_RANGE: (Duration, Duration) =
    (Duration::from_secs(30), Duration::from_secs(90 * 24 * 3600));

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

/// The `database` key: a SQLite file, or a PostgreSQL URL (`postgres://` or `postgresql://`).
/// Any other `scheme://` is refused at load, so a typo does not become a file named after it.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(DatabaseUrl),
}

/// A PostgreSQL URL, which may hold a password: shown with the password masked.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL itself, for the connection only (never for a log line).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the URL carries a password (`user:pw@` or a `password` parameter).
    pub fn has_password(&self) -> bool {
        let text = &self.0;
        if text.contains("password") {
            return true;
        }
        match (text.find("://"), text.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => text[scheme + 3..at].contains(':'),
            _ => false,
        }
    }
}

/// Whether a line of a configuration file may hold a secret (a URL's `user:pw@`, a password
/// key): a TOML error on it is reported without the line, which the error would otherwise
/// quote.
fn may_hold_a_secret(line: &str) -> bool {
    line.contains("://") || line.to_ascii_lowercase().contains("password")
}

/// A TOML error of the file `text`, as `toml` shows it (with the offending line quoted),
/// unless that line may hold a secret: then only its line number and the parser's message.
fn toml_error(text: &str, e: toml::de::Error) -> anyhow::Error {
    let Some(span) = e.span() else {
        return e.into();
    };
    let start = text.get(..span.start).unwrap_or_default();
    let line_no = start.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or_default();
    if may_hold_a_secret(line) {
        anyhow::anyhow!(
            "line {line_no}: {} (the line is not shown: it may hold a password)",
            e.message().trim_end()
        )
    } else {
        e.into()
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // postgres://user:secret@host/db → postgres://user:***@host/db; key=value strings and
        // query parameters (`?password=`) are masked whole.
        let text = &self.0;
        if text.contains("password") {
            return f.write_str("postgres://***");
        }
        match (text.find("://"), text.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &text[scheme + 3..at];
                match userinfo.find(':') {
                    Some(colon) => write!(
                        f,
                        "{}{}:***{}",
                        &text[..scheme + 3],
                        &userinfo[..colon],
                        &text[at..]
                    ),
                    None => f.write_str(text),
                }
            }
            _ => f.write_str(text),
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Database::Postgres(url) => f.debug_tuple("Postgres").field(url).finish(),
        }
    }
}

impl TryFrom<String> for Database {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Database::Postgres(DatabaseUrl(text)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(format!(
                "database: {scheme}:// is not supported; use a SQLite file path or a postgres:// URL"
            ));
        }
        if text.is_empty() {
            return Err("database: empty; use a SQLite file path or a postgres:// URL".into());
        }
        Ok(Database::Sqlite(PathBuf::from(text)))
    }
}

impl Database {
    /// A relative SQLite path is taken from the configuration file's folder.
    fn relative_to(self, base: &Path) -> Self {
        match self {
            Database::Sqlite(path) => Database::Sqlite(base.join(path)),
            postgres => postgres,
        }
    }
}

/// Refuses a controller configuration file that others (not its owner, not its group) can
/// read, once it holds the database's password; the service's group may read it (0640).
fn refuse_if_others_can_read(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read the mode of {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    anyhow::ensure!(
        mode & 0o007 == 0,
        "database: the URL holds a password and {} is readable by others (mode {mode:03o}); \
         chmod o-rwx {} (0640 or 0600)",
        path.display(),
        path.display()
    );
    Ok(())
}

/// `loggate controller serve --config FILE`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// gRPC listen address, e.g. "127.0.0.1:7400".
    pub listen: SocketAddr,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Where the controller's state lives: a SQLite database file (created if missing; the
    /// default), or `postgres://…` for several controller replicas sharing PostgreSQL.
    pub database: Database,
    /// This controller replica's name (default: the host's name): `loggate agent list` shows
    /// it for the agents connected to it, and the log says which replica runs the singleton
    /// jobs. Read through [`ControllerConfig::replica_name`].
    #[serde(default)]
    replica_name: Option<String>,
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
    /// Sign-in with the organisation's OpenID Provider (`loggate login`; docs/identity.md).
    #[serde(default)]
    pub oidc: Option<OidcFile>,
    /// `[oidc]`, checked by [`ControllerConfig::load`] (its secret file read).
    #[serde(skip)]
    pub oidc_settings: Option<OidcSettings>,
}

impl ControllerConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let (config, problems) = Self::load_fields(path)?;
        problems
            .into_result()
            .with_context(|| format!("controller configuration {}", path.display()))?;
        Ok(config)
    }

    /// This replica's name: `replica_name`, else the host's name (the kernel's). A name set in
    /// `replica_name` must be 1 to 64 ASCII letters, digits, `.`, `-` or `_` (it is shown to
    /// people and stored). The host's name is taken sanitised ([`sanitised_replica_name`]), so
    /// an unusual host name never keeps a controller (or `check-config` on a workstation)
    /// from starting; a host name that cannot be read is an error only with PostgreSQL, where
    /// the name tells replicas apart (SQLite's one controller is then `controller`).
    pub fn replica_name(&self) -> anyhow::Result<String> {
        if let Some(name) = &self.replica_name {
            let valid = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !valid {
                bail!(
                    "replica_name {:?} is not a valid replica name: use 1 to 64 ASCII letters, digits, '.', '-' or '_'",
                    name.chars().take(80).collect::<String>()
                );
            }
            return Ok(name.clone());
        }
        match std::fs::read("/proc/sys/kernel/hostname") {
            Ok(host) => Ok(sanitised_replica_name(&host)),
            Err(e) if matches!(self.database, Database::Postgres(_)) => Err(anyhow::Error::new(e)
                .context("cannot read the host's name for replica_name; set replica_name")),
            Err(_) => Ok(DEFAULT_REPLICA_NAME.to_owned()),
        }
    }

    /// The parsed file with its paths resolved, and the problems of its fields (every one,
    /// for `loggate controller check-config`).
    pub fn load_fields(path: &Path) -> anyhow::Result<(Self, Problems)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read controller configuration {}", path.display()))?;
        let mut config: ControllerConfig = toml::from_str(&text)
            .map_err(|e| toml_error(&text, e))
            .with_context(|| format!("invalid controller configuration {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.database = config.database.relative_to(base);
        config.signing_key = base.join(&config.signing_key);
        config.enrol_user_certs = config.enrol_user_certs.map(|p| base.join(p));
        config.enrol_checkpoint_keys = config.enrol_checkpoint_keys.map(|p| base.join(p));
        config.audit_log = base.join(&config.audit_log);
        config.policy = config.policy.map(|p| base.join(p));
        config.ca_cert = config.ca_cert.map(|p| base.join(p));
        config.ca_key = config.ca_key.map(|p| base.join(p));
        config.tls = config.tls.relative_to(base);
        config.oidc = config.oidc.take().map(|o| o.relative_to(base));
        let mut problems = Problems::default();
        if let Database::Postgres(url) = &config.database {
            if url.has_password() {
                problems.take(refuse_if_others_can_read(path));
            }
        }
        if let Some(oidc) = &config.oidc {
            config.oidc_settings = problems.take(oidc.check());
        }
        problems.take(config.replica_name());
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
        if config.oidc.is_some() && config.enrolment.is_none() {
            problems.push(anyhow::anyhow!(
                "[oidc] needs [enrolment]: people sign in on that port (listen) and get \
                 certificates from its CA (ca_cert, ca_key)"
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
                    "[enrolment] agent_cert_ttl \"{}\" is out of range; give between 30s and 90d",
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

/// The command-line client's configuration (`--config`, `$LOGGATE_CONFIG`, or `config.toml`
/// in the configuration folder: see [`ClientConfig::default_path`]). `loggate pki init` writes
/// one per user; `loggate login` writes one with `sign_in`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The controller's address, "host:port".
    pub controller: String,
    /// The controller's sign-in address ("host:port") when the certificate comes from
    /// `loggate login`: its expiry is then checked before connecting.
    #[serde(default)]
    pub sign_in: Option<String>,
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

    /// The client's configuration folder: `$LOGGATE_CONFIG_DIR`, else `~/.config/loggate`.
    pub fn config_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("LOGGATE_CONFIG_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        home.join(".config/loggate")
    }

    /// The file read when neither `--config` nor `$LOGGATE_CONFIG` names one: `config.toml`
    /// in [`ClientConfig::config_dir`], or `client.toml` (the older name) when only that exists.
    pub fn default_path() -> PathBuf {
        let dir = Self::config_dir();
        let path = dir.join("config.toml");
        let legacy = dir.join("client.toml");
        if !path.exists() && legacy.exists() {
            return legacy;
        }
        path
    }
}

// ---------------------------------------------------------------------------------------------
// `[oidc]`: sign-in with the organisation's OpenID Provider (`loggate login`; docs/identity.md).

/// The claim that names the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsernameClaim {
    /// The local part of `email` (which must then be in the one allowed domain).
    Email,
    /// `preferred_username` (Keycloak, Entra ID's UPN-like names: only if the IdP guarantees
    /// it is unique and not chosen by the user).
    PreferredUsername,
    /// `sub`, the IdP's stable id for the person.
    Sub,
}

impl UsernameClaim {
    pub fn as_str(self) -> &'static str {
        match self {
            UsernameClaim::Email => "email",
            UsernameClaim::PreferredUsername => "preferred_username",
            UsernameClaim::Sub => "sub",
        }
    }
}

/// Google's issuer, whose tokens need the `hd` check (`hosted_domain`).
const GOOGLE_ISSUER: &str = "https://accounts.google.com";

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}
fn default_true() -> bool {
    true
}
fn default_username_claim() -> UsernameClaim {
    UsernameClaim::Email
}
fn default_cert_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_jwks_refetch() -> Duration {
    Duration::from_secs(60)
}

/// The longest certificate sign-in may give (a day): a person's certificate is a session,
/// not a credential to keep.
pub const MAX_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The largest clock skew allowed between the controller and the IdP.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// `[oidc]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcFile {
    /// The IdP's issuer URL, exactly as its discovery document says (`https://…`).
    pub issuer: String,
    /// The OAuth client id of `loggate login` at the IdP: the ID token's audience.
    pub client_id: String,
    /// A file (mode 0600) holding the client secret, for IdPs that give even a native app one
    /// (Google's "Desktop app"); it is handed to `loggate login`, so never put a confidential
    /// web-application secret here.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    #[serde(default = "default_username_claim")]
    pub username_claim: UsernameClaim,
    #[serde(default = "default_true")]
    pub require_email_verified: bool,
    /// E-mail domains whose people may sign in (empty: any; required with
    /// `username_claim = "email"`).
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
    /// The claim holding the person's groups: recorded, and kept with the sign-in for the
    /// access policy's `idp:` group members (docs/policy.md).
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Validity of the certificate a sign-in gives.
    #[serde(default = "default_cert_ttl", with = "loggate_core::duration::text")]
    pub cert_ttl: Duration,
    /// How far the IdP's clock may be from ours (`exp`, `iat`, `nbf`).
    #[serde(default = "default_skew", with = "loggate_core::duration::text")]
    pub max_clock_skew: Duration,
    /// An unknown `kid` fetches the IdP's keys again at most this often.
    #[serde(
        default = "default_jwks_refetch",
        with = "loggate_core::duration::text"
    )]
    pub jwks_refetch_interval: Duration,
    /// The cached key set is replaced by the IdP's current one when older than this (a key
    /// the IdP dropped stops verifying within it).
    #[serde(
        default = "default_jwks_max_age",
        with = "loggate_core::duration::text"
    )]
    pub jwks_max_age: Duration,
    /// Accept an `http://` issuer on a loopback address (tests and local IdPs only).
    #[serde(default)]
    pub allow_http_loopback_issuer: bool,
    /// Accept ID tokens without a nonce (the device flow: IdPs do not echo one there), which
    /// cannot be bound to the request's key: each only once and within 5 minutes of its issue.
    /// Off by default (`loggate login --device` is refused): whoever starts a device flow gets
    /// the certificate of whoever approves it, which makes device-code phishing possible
    /// (RFC 8628 §5.4; docs/identity.md).
    #[serde(default)]
    pub allow_unbound_device_tokens: bool,
    /// The Google Workspace domain (`hd` claim) a token must carry: a consumer Google account
    /// can hold a verified address in any domain (a group's address, say), only `hd` proves
    /// the account is the organisation's. Required with the issuer `https://accounts.google.com`.
    #[serde(default)]
    pub hosted_domain: Option<String>,
    /// `SignIn` attempts per source address and minute, a budget of its own (an office behind
    /// one NAT address signing in at 9 a.m. must not starve agent enrolment, nor the reverse).
    #[serde(default = "default_sign_in_attempts_per_minute")]
    pub attempts_per_minute: u32,
}

fn default_jwks_max_age() -> Duration {
    Duration::from_secs(3600)
}
/// The longest a key set is kept without asking the IdP again.
const MAX_JWKS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

fn default_sign_in_attempts_per_minute() -> u32 {
    30
}

/// `[oidc]`, checked.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
    pub username_claim: UsernameClaim,
    pub require_email_verified: bool,
    /// Lowercase.
    pub allowed_email_domains: Vec<String>,
    pub groups_claim: Option<String>,
    pub cert_ttl: Duration,
    pub max_clock_skew: Duration,
    pub jwks_refetch_interval: Duration,
    pub jwks_max_age: Duration,
    pub allow_unbound_device_tokens: bool,
    /// Lowercase; the `hd` claim must equal it.
    pub hosted_domain: Option<String>,
    /// `SignIn` attempts per source address and minute.
    pub attempts_per_minute: u32,
    /// The issuer is `http://` on loopback (allowed by `allow_http_loopback_issuer`): the
    /// controller then talks to it without any proxy.
    pub loopback_issuer: bool,
}

impl OidcFile {
    /// Resolves `client_secret_file` against the configuration's folder.
    pub fn relative_to(mut self, base: &Path) -> Self {
        self.client_secret_file = self.client_secret_file.map(|p| base.join(p));
        self
    }

    /// Every check of the section; the secret file is read (and its mode checked) here.
    pub fn check(&self) -> anyhow::Result<OidcSettings> {
        let (loopback, scheme) = issuer_host_is_loopback(&self.issuer)?;
        let loopback_issuer = match scheme {
            "https" => false,
            "http" if loopback && self.allow_http_loopback_issuer => true,
            "http" if loopback => bail!(
                "oidc.issuer {:?} is http: set allow_http_loopback_issuer = true for a local \
                 test IdP, or use its https address",
                self.issuer
            ),
            _ => bail!(
                "oidc.issuer {:?} must be an https URL (the IdP's issuer exactly as its \
                 discovery document says)",
                self.issuer
            ),
        };
        if self.client_id.is_empty() || self.client_id.len() > 256 {
            bail!("oidc.client_id must be the client id registered at the IdP (1 to 256 bytes)");
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            bail!("oidc.scopes must include \"openid\"");
        }
        for scope in &self.scopes {
            if scope.is_empty() || !scope.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
                bail!("oidc.scopes: {scope:?} is not a scope name");
            }
        }
        let allowed_email_domains: Vec<String> = self
            .allowed_email_domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        for domain in &allowed_email_domains {
            if domain.is_empty() || domain.contains('@') || domain.starts_with('.') {
                bail!(
                    "oidc.allowed_email_domains: {domain:?} is not a domain (e.g. \"example.com\")"
                );
            }
        }
        if self.username_claim == UsernameClaim::Email && allowed_email_domains.len() != 1 {
            bail!(
                "oidc.username_claim = \"email\" names people by the e-mail's local part, so \
                 list exactly one domain in allowed_email_domains (alice@a.example and \
                 alice@b.example would be the same person), or use another username_claim"
            );
        }
        if self.cert_ttl < Duration::from_secs(60) || self.cert_ttl > MAX_CERT_TTL {
            bail!(
                "oidc.cert_ttl \"{}\" is out of range; give between 1m and 24h",
                loggate_core::duration::format(self.cert_ttl)
            );
        }
        if self.max_clock_skew > MAX_CLOCK_SKEW {
            bail!(
                "oidc.max_clock_skew \"{}\" is over 5m; fix the clocks (NTP) instead",
                loggate_core::duration::format(self.max_clock_skew)
            );
        }
        if self.jwks_max_age < Duration::from_secs(1) || self.jwks_max_age > MAX_JWKS_MAX_AGE {
            bail!("oidc.jwks_max_age must be between 1s and 24h");
        }
        if self.jwks_refetch_interval < Duration::from_secs(1) {
            bail!("oidc.jwks_refetch_interval must be at least 1s");
        }
        let hosted_domain = self.hosted_domain.as_ref().map(|d| d.to_ascii_lowercase());
        if let Some(domain) = &hosted_domain {
            if domain.is_empty() || domain.contains(['@', '"']) || domain.starts_with('.') {
                bail!("oidc.hosted_domain: {domain:?} is not a domain (e.g. \"example.com\")");
            }
        }
        if hosted_domain.is_none() && self.issuer.trim_end_matches('/') == GOOGLE_ISSUER {
            bail!(
                "oidc.issuer is Google: set hosted_domain to your Workspace domain (any Google \
                 account can hold a verified address in your domain; only the hd claim proves \
                 it is your organisation's)"
            );
        }
        if self.attempts_per_minute == 0 {
            bail!("oidc.attempts_per_minute must be at least 1");
        }
        let client_secret = match &self.client_secret_file {
            None => None,
            Some(path) => Some(read_secret(path)?),
        };
        Ok(OidcSettings {
            issuer: self.issuer.clone(),
            client_id: self.client_id.clone(),
            client_secret,
            scopes: self.scopes.clone(),
            username_claim: self.username_claim,
            require_email_verified: self.require_email_verified,
            allowed_email_domains,
            groups_claim: self.groups_claim.clone(),
            cert_ttl: self.cert_ttl,
            max_clock_skew: self.max_clock_skew,
            jwks_refetch_interval: self.jwks_refetch_interval,
            jwks_max_age: self.jwks_max_age,
            allow_unbound_device_tokens: self.allow_unbound_device_tokens,
            hosted_domain,
            attempts_per_minute: self.attempts_per_minute,
            loopback_issuer,
        })
    }
}

/// Whether the issuer URL's host is a loopback address, and its scheme (`https`, `http` or
/// another). Refuses a URL with a user, query or fragment. (No URL crate here: this file is
/// also compiled on its own by the `config` fuzz target.)
fn issuer_host_is_loopback(issuer: &str) -> anyhow::Result<(bool, &str)> {
    let Some((scheme, rest)) = issuer.split_once("://") else {
        bail!("oidc.issuer {issuer:?} is not a URL (https://…)");
    };
    if rest.contains(['?', '#', '@'])
        || rest.is_empty()
        || issuer.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        bail!("oidc.issuer {issuer:?} must be a plain URL without user, query or fragment");
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    if host.is_empty() {
        bail!("oidc.issuer {issuer:?} has no host");
    }
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    Ok((loopback, scheme))
}

/// The client secret: one line, from a file nobody else may read.
fn read_secret(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read oidc.client_secret_file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "oidc.client_secret_file {} is readable by others (mode {:o}); run chmod 600 on it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read oidc.client_secret_file {}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']).to_string();
    if secret.is_empty() || secret.contains('\n') {
        bail!(
            "oidc.client_secret_file {} must hold the secret on one line",
            path.display()
        );
    }
    Ok(secret)
}

/// The replica name used when the host's name cannot be used at all.
const DEFAULT_REPLICA_NAME: &str = "controller";

/// A host name (the kernel's, any bytes) as a replica name: surrounding white space trimmed,
/// every byte other than an ASCII letter, digit, `.`, `-` or `_` replaced by `-`, at most 64
/// bytes; [`DEFAULT_REPLICA_NAME`] when nothing is left.
fn sanitised_replica_name(host: &[u8]) -> String {
    let name: String = host
        .trim_ascii()
        .iter()
        .take(64)
        .map(|&b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
                char::from(b)
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        DEFAULT_REPLICA_NAME.to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {

    /// An unusual host name (any bytes the kernel accepts) gives a usable replica name rather
    /// than a controller that does not start; only an explicit `replica_name` is refused.
    #[test]
    fn an_unusual_host_name_becomes_a_sanitised_replica_name() {
        assert_eq!(
            super::sanitised_replica_name(b"web-1.example\n"),
            "web-1.example"
        );
        assert_eq!(
            super::sanitised_replica_name(b"caf\xc3\xa9 host"),
            "caf---host"
        );
        assert_eq!(super::sanitised_replica_name(b" \n"), "controller");
        assert_eq!(super::sanitised_replica_name(&[b'a'; 300]).len(), 64);
    }

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

    /// `replica_name` (shown by `agent list`, stored with registrations) takes a plain name
    /// and defaults to the host's; anything else refuses the load, naming the rule.
    #[test]
    fn replica_name_is_a_plain_name_and_defaults_to_the_hosts() {
        let named = load_with("replica_name = \"ctl-a.eu_1\"").expect("a plain name");
        assert_eq!(named.replica_name().expect("valid"), "ctl-a.eu_1");
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
        let default = load_with("").expect("no replica_name");
        assert_eq!(default.replica_name().expect("the host's"), host.trim());
        for bad in ["", "a b", "ctl\\u001b[31m", "é", &"x".repeat(65)] {
            let err = load_with(&format!("replica_name = \"{bad}\""))
                .err()
                .unwrap_or_else(|| panic!("{bad:?} was taken"));
            assert!(
                format!("{err:#}").contains("is not a valid replica name: use 1 to 64 ASCII"),
                "{bad:?}: {err:#}"
            );
        }
    }

    /// A configuration file with only `database` (a PostgreSQL URL) beside the minimum, at `mode`.
    fn load_database(database: &str, mode: u32) -> anyhow::Result<ControllerConfig> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("controller.toml");
        std::fs::write(
            &path,
            format!(
                "listen = \"127.0.0.1:7400\"\ndatabase = \"{database}\"\nsigning_key = \"k\"\n\
                 [tls]\nca = \"ca.crt\"\ncert = \"c.crt\"\nkey = \"c.key\"\n"
            ),
        )?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        ControllerConfig::load(&path)
    }

    #[test]
    fn a_misspelt_database_scheme_is_refused_without_printing_the_password() {
        let err = load_database("postgress://loggate:S3cretPw@db.internal/loggate", 0o600)
            .expect_err("a misspelt scheme");
        let text = format!("{err:#} {err:?}");
        assert!(text.contains("postgress:// is not supported"), "{text}");
        assert!(text.contains("line 2"), "{text}");
        assert!(!text.contains("S3cretPw"), "{text}");
        // A misspelt key with a password-bearing URL: not printed either.
        let err = load_with("databse = \"postgres://loggate:S3cretPw@db/loggate\"")
            .expect_err("an unknown key");
        let text = format!("{err:#} {err:?}");
        assert!(text.contains("databse"), "{text}");
        assert!(!text.contains("S3cretPw"), "{text}");
        // Lines that cannot hold a secret are still quoted.
        let err = load_with("no_such_key = 1").expect_err("an unknown key");
        assert!(format!("{err:#}").contains("no_such_key = 1"), "{err:#}");
    }

    #[test]
    fn a_database_password_in_a_file_others_can_read_is_refused_naming_the_mode() {
        let url = "postgres://loggate:S3cretPw@db.internal/loggate";
        let err = load_database(url, 0o644).expect_err("others can read the password");
        let text = format!("{err:#}");
        assert!(text.contains("readable by others (mode 644)"), "{text}");
        assert!(!text.contains("S3cretPw"), "{text}");
        assert!(load_database(url, 0o640).is_ok());
        // Without a password (a unix socket, peer or certificate authentication) any mode.
        assert!(load_database("postgres://loggate@db.internal/loggate", 0o644).is_ok());
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
                "ca_cert = \"c\"\nca_key = \"k\"\n[enrolment]\nlisten = \"127.0.0.1:7401\"\nagent_cert_ttl = \"10s\"",
                "out of range; give between 30s and 90d",
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

    #[test]
    fn oidc_without_the_sign_in_port_is_refused_by_check_config() {
        let err = format!(
            "{:#}",
            load_with(
                "[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"c\"\n\
                 allowed_email_domains = [\"example.com\"]"
            )
            .expect_err("no [enrolment]")
        );
        assert!(err.contains("[oidc] needs [enrolment]"), "{err}");
    }

    mod oidc {
        use super::*;

        fn parse(extra: &str) -> anyhow::Result<OidcSettings> {
            let domains = if extra.contains("allowed_email_domains") {
                ""
            } else {
                "allowed_email_domains = [\"Example.com\"]\n"
            };
            let file: OidcFile = toml::from_str(&format!(
                "issuer = \"https://idp.example.com\"\nclient_id = \"loggate\"\n{domains}{extra}"
            ))?;
            file.check()
        }

        #[test]
        fn oidc_defaults_are_the_safe_ones() {
            let s = parse("").expect("minimal");
            assert_eq!(s.username_claim, UsernameClaim::Email);
            assert!(s.require_email_verified);
            assert_eq!(s.cert_ttl, Duration::from_secs(8 * 3600));
            assert_eq!(s.max_clock_skew, Duration::from_secs(60));
            assert_eq!(s.allowed_email_domains, ["example.com"]);
            assert_eq!(s.scopes, ["openid", "email", "profile"]);
            assert!(!s.loopback_issuer);
            assert_eq!(s.hosted_domain, None);
            let google = parse("hosted_domain = \"Example.com\"").expect("hd");
            assert_eq!(google.hosted_domain.as_deref(), Some("example.com"));
            // Device-code phishing (RFC 8628 §5.4) needs no stolen token: opt in only.
            assert!(!s.allow_unbound_device_tokens);
            let on = parse("allow_unbound_device_tokens = true").expect("opt in");
            assert!(on.allow_unbound_device_tokens);
        }

        #[test]
        fn a_google_issuer_needs_hosted_domain() {
            let google = "issuer = \"https://accounts.google.com\"\nclient_id = \"c\"\n\
                          allowed_email_domains = [\"example.com\"]\n";
            let file: OidcFile = toml::from_str(google).expect("toml");
            let err = format!("{:#}", file.check().expect_err("no hosted_domain"));
            assert!(err.contains("set hosted_domain"), "{err}");
            let file: OidcFile =
                toml::from_str(&format!("{google}hosted_domain = \"example.com\"")).expect("toml");
            assert!(file.check().is_ok());
        }

        #[test]
        fn oidc_settings_refuse_what_would_weaken_sign_in() {
            for (extra, expect) in [
                ("cert_ttl = \"2d\"", "between 1m and 24h"),
                ("cert_ttl = \"8x\"", "is not a duration"),
                ("max_clock_skew = \"10m\"", "over 5m"),
                ("scopes = [\"email\"]", "must include \"openid\""),
                ("allowed_email_domains = []", "exactly one domain"),
                (
                    "allowed_email_domains = [\"a.com\", \"b.com\"]",
                    "exactly one domain",
                ),
                (
                    "client_secret_file = \"/nonexistent/secret\"",
                    "cannot read",
                ),
                ("username_claim = \"name\"", "unknown variant"),
            ] {
                let err = format!("{:#}", parse(extra).expect_err(extra));
                assert!(err.contains(expect), "{extra}: {err}");
            }
            let http = |extra: &str| -> anyhow::Result<OidcSettings> {
                let file: OidcFile = toml::from_str(&format!(
                    "client_id = \"c\"\nusername_claim = \"sub\"\n{extra}"
                ))?;
                file.check()
            };
            let err = format!(
                "{:#}",
                http("issuer = \"http://idp.example.com\"").expect_err("http")
            );
            assert!(err.contains("must be an https URL"), "{err}");
            let err = format!(
                "{:#}",
                http("issuer = \"http://127.0.0.1:9\"").expect_err("opt-in")
            );
            assert!(err.contains("allow_http_loopback_issuer"), "{err}");
            let ok = http("issuer = \"http://127.0.0.1:9\"\nallow_http_loopback_issuer = true")
                .expect("loopback test IdP");
            assert!(ok.loopback_issuer);
        }

        #[test]
        fn client_secret_file_must_be_private() {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("secret");
            std::fs::write(&path, "s3cret\n").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            let extra = format!("client_secret_file = {:?}", path.display().to_string());
            let err = format!("{:#}", parse(&extra).expect_err("0644"));
            assert!(
                err.contains("readable by others (mode 644); run chmod 600"),
                "{err}"
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            assert_eq!(
                parse(&extra).expect("0600").client_secret.as_deref(),
                Some("s3cret")
            );
        }
    }
}
