//! The human-facing commands that talk to the controller and to agents: grants and log reads.
//! Every failure ends as one sentence on stderr and a non-zero exit code (see [`Failure`]).

pub mod agents;
pub mod config_file;
pub mod deadline;
pub mod governance;
pub mod journal;
pub mod listing;
pub mod login;
pub mod read_stream;
pub mod reads;
pub mod socket_slot;
pub mod status;
pub mod users;

use crate::config::ClientConfig;
use loggate_core::grant::rough_duration;
use loggate_core::timestamp::{parse_time_arg, UnixMillis};
use loggate_core::tls::Server;
use loggate_proto as pb;
use loggate_proto::controller_client::ControllerClient;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Prints one line on standard output; a full disk is an error (exit 1), a closed pipe a clean
/// end (exit 0), never a panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(Failure::from)
    };
}

/// The exit status of `loggate`, one variant per meaning (DESIGN.md's contract): scripts and
/// the end-to-end tests rely on the numbers, the `--help` text lists them ([`EXIT_CODES_HELP`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success, or a clean early end: the reader of standard output went away (`| head`).
    Ok,
    /// Any failure that is not one of the below (unreachable server, bad file, refused write).
    Error,
    /// The command was called wrongly: a bad flag or value, or an argument the server refused.
    Usage,
    /// Access denied: by the controller or agent, or our certificate refused in the handshake.
    Denied,
    /// The agent ended the stream (the grant expired or was revoked, a budget ran out).
    StreamEnded,
    /// `audit verify` found the chain or a checkpoint broken.
    AuditBroken,
    /// A read from several hosts (`logs … --host 'web-*'`, `--selector`): some hosts failed,
    /// the others were read whole.
    SomeHostsFailed,
    /// A read from several hosts: every host failed.
    AllHostsFailed,
}

impl Exit {
    /// Every code, in order (for the help text and its test).
    pub const ALL: [Exit; 8] = [
        Exit::Ok,
        Exit::Error,
        Exit::Usage,
        Exit::Denied,
        Exit::StreamEnded,
        Exit::AuditBroken,
        Exit::SomeHostsFailed,
        Exit::AllHostsFailed,
    ];

    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Error => 1,
            Exit::Usage => 2,
            Exit::Denied => 3,
            Exit::StreamEnded => 4,
            Exit::AuditBroken => 5,
            Exit::SomeHostsFailed => 6,
            Exit::AllHostsFailed => 7,
        }
    }

    /// The meaning, as `--help` states it.
    pub fn as_str(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Error => "error",
            Exit::Usage => "bad usage",
            Exit::Denied => "access denied",
            Exit::StreamEnded => "stream ended by the agent",
            Exit::AuditBroken => "audit verification failed",
            Exit::SomeHostsFailed => "some hosts of a multi-host read failed",
            Exit::AllHostsFailed => "every host of a multi-host read failed",
        }
    }
}

/// The exit codes as `loggate --help` ends with them, written from [`Exit::ALL`] so the help
/// cannot drift from the codes.
pub fn exit_codes_help() -> String {
    let codes: Vec<String> = Exit::ALL
        .iter()
        .map(|e| format!("{} {}", e.code(), e.as_str()))
        .collect();
    format!("Exit codes: {}.", codes.join(", "))
}

/// How a command ends when it does not succeed: the exit code and one sentence for stderr
/// (the whole cause chain, `{:#}`). [`Exit::Ok`] is a clean early end with nothing to say.
#[derive(Debug)]
pub struct Failure {
    pub code: Exit,
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: Exit, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// Standard output was closed by its reader: nothing is wrong, there is no one left to
    /// write for (ripgrep and the coreutils end quietly with status 0 too).
    fn output_closed() -> Failure {
        Failure::new(Exit::Ok, "")
    }

    /// An error (exit 1) with its whole cause chain: `{:#}` of `e`.
    pub fn error(e: &anyhow::Error) -> Failure {
        Failure::new(Exit::Error, format!("{e:#}"))
    }
}

/// True when `e`'s source chain holds an I/O error of kind `kind` (found by downcasting, never
/// by reading messages).
pub fn chain_has_io_kind(e: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        next = err.source();
    }
    false
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        if chain_has_io_kind(&e, std::io::ErrorKind::BrokenPipe) {
            return Failure::output_closed();
        }
        Failure::new(Exit::Error, format!("cannot write to standard output: {e}"))
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        // `{:#}`: the whole cause chain ("agent id: \"Bad\" is not a valid name …"), not only
        // the outermost context.
        Failure::error(&e)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::new(Exit::Error, message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::from(message.to_string())
    }
}

pub type CliResult = Result<(), Failure>;

/// A mistake in how the command was called (exit 2), as opposed to a failure while running it.
pub fn usage(message: impl Into<String>) -> Failure {
    Failure::new(Exit::Usage, message)
}

/// A `--since`/`--until` value: clap's value parser, so a mistake is reported as `--ttl`'s is
/// (usage, exit 2), with the duration grammar's own sentence.
pub fn time_arg(text: &str) -> Result<UnixMillis, loggate_core::timestamp::TimeArgError> {
    parse_time_arg(text, UnixMillis::now())
}

/// Why a `--start-in` value was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartInError {
    /// Not a duration in the one grammar.
    #[error(transparent)]
    Duration(loggate_core::duration::DurationError),
    /// Beyond the controller's horizon (or beyond any representable duration).
    #[error("{0} is too far ahead; a grant may start at most {days} days from now", days = crate::service::MAX_START_AHEAD.as_secs() / 86_400)]
    TooFarAhead(String),
}

/// `--start-in`: clap's value parser. A duration past the 366-day horizon, or too large for
/// the grammar at all, is "too far ahead" (usage, exit 2), before anything is sent.
pub fn start_in_arg(text: &str) -> Result<Duration, StartInError> {
    use loggate_core::duration::{parse, DurationProblem};
    match parse(text) {
        Ok(d) if d > crate::service::MAX_START_AHEAD => {
            Err(StartInError::TooFarAhead(format!("{:?}", text.trim())))
        }
        Ok(d) => Ok(d),
        Err(e) if e.problem() == DurationProblem::OutOfRange => {
            Err(StartInError::TooFarAhead(format!("{:?}", text.trim())))
        }
        Err(e) => Err(StartInError::Duration(e)),
    }
}

/// Ends the process for a command line clap refused. A value its parser refused (`--ttl 1h30x`,
/// `--since yesterday`, `--start-in -5s`) is one line, `loggate: --FLAG: <why>`, exit 2, like
/// every other usage error of the CLI; help, version and clap's other usage errors are clap's
/// own (exit 0 for help and version, 2 for mistakes).
pub fn exit_on_parse_error(e: clap::Error) -> std::process::ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() == ErrorKind::ValueValidation {
        if let Some(why) = std::error::Error::source(&e) {
            let flag = match e.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(arg)) => arg.split(' ').next().unwrap_or(arg).to_string(),
                _ => "a value".to_string(),
            };
            eprintln!("loggate: {flag}: {why}");
            return std::process::ExitCode::from(Exit::Usage.code());
        }
    }
    e.exit()
}

/// `unix` (seconds) as an RFC 3339 UTC time. Total: any `i64` gives a string, never a panic —
/// times before 1970 or after 9999 (which RFC 3339 cannot write) read `unix time N` — so no value
/// stored in a database can break a listing.
pub fn format_time(unix: i64) -> String {
    use std::fmt::Write as _;
    let fallback = || format!("unix time {unix}");
    let Ok(seconds) = u64::try_from(unix) else {
        return fallback();
    };
    let Some(t) = std::time::UNIX_EPOCH.checked_add(Duration::from_secs(seconds)) else {
        return fallback();
    };
    let mut text = String::new();
    // The Display of a year past 9999 returns an error: `write!` hands it back, `to_string`
    // would panic on it.
    match write!(text, "{}", humantime::format_rfc3339_seconds(t)) {
        Ok(()) => text,
        Err(_) => fallback(),
    }
}

/// The TLS error behind a failure, found by downcasting its source chain: a `rustls::Error`
/// itself, or one carried inside an I/O error (tokio-rustls reports an alert that way).
pub fn tls_error_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        next = err.source();
    }
    None
}

/// True for a transport failure (the connection failed or was dropped: a reset, a broken pipe,
/// h2's "connection closed") with no TLS error in its chain to say why: after a refused client
/// certificate the server's alert is lost this way in some runs, so the caller probes (see
/// [`probe_refusal`]).
fn dropped_without_reason(e: &(dyn std::error::Error + 'static)) -> bool {
    tls_error_in(e).is_none()
}

/// How a command prints what it shows: `--output text|json`, the one flag every command that
/// prints records takes (`--json`, its older spelling, stays accepted).
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct Format {
    /// Output format: text for people, json for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
    /// The same as `--output json`.
    #[arg(long, hide = true)]
    json: bool,
}

impl Format {
    /// Whether JSON was asked for, by either spelling.
    pub fn json(&self) -> bool {
        self.json || matches!(self.output, OutputFormat::Json)
    }
}

/// The values of `--output`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

/// Whom a command talks to: for messages, and to probe a dropped connection.
pub struct Peer<'a> {
    /// "the controller", "agent web-1".
    pub name: String,
    pub addr: String,
    pub server: Server<'a>,
}

/// One bare TLS handshake with our certificate that sends nothing after it and reads the
/// server's answer: a server that refuses our certificate answers with an alert, which this
/// read always receives (nothing of ours is left unread on its side, so it closes cleanly
/// rather than resetting). Returns that TLS error; `None` when the handshake and the read give
/// no TLS reason (then the drop was not a refusal of our certificate).
async fn probe_refusal(config: &ClientConfig, peer: &Peer<'_>) -> Option<rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt;
    let files = &config.tls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&files.ca).ok()? {
        roots.add(cert.ok()?).ok()?;
    }
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .ok()?
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_file(&files.key).ok()?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .ok()?;
    let name = match peer.server {
        Server::Controller => "loggate-controller",
        Server::Agent(id) => id,
    };
    let name = ServerName::try_from(name.to_string()).ok()?;
    let probe = async {
        let tcp = tokio::net::TcpStream::connect(&peer.addr).await?;
        let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
            .connect(name, tcp)
            .await?;
        let mut byte = [0u8; 1];
        stream.read(&mut byte).await.map(|_| ())
    };
    match tokio::time::timeout(Duration::from_secs(5), probe).await {
        Ok(Err(e)) => tls_error_in(&e).cloned(),
        _ => None,
    }
}

/// [`explain`], and when the connection was dropped without a reason, the reason a probe
/// handshake finds ([`probe_refusal`]): whether the server's alert or a reset reached us first,
/// a refused certificate is always exit 3 and a connection dropped for another cause exit 1.
pub async fn explain_at(status: &Status, config: &ClientConfig, peer: &Peer<'_>) -> Failure {
    let failure = explain(status, &peer.name);
    if !needs_probe(status) {
        return failure;
    }
    match probe_refusal(config, peer).await {
        Some(tls) => tls_failure(&peer.name, &tls, &tls.to_string()),
        None => failure,
    }
}

/// The failure of a call, explained with [`explain_at`]: `call(…).await.or_explain(…).await?`.
trait OrExplain<T> {
    async fn or_explain(self, config: &ClientConfig, peer: &Peer<'_>) -> Result<T, Failure>;
}

impl<T> OrExplain<T> for Result<T, Status> {
    async fn or_explain(self, config: &ClientConfig, peer: &Peer<'_>) -> Result<T, Failure> {
        match self {
            Ok(value) => Ok(value),
            Err(status) => Err(explain_at(&status, config, peer).await),
        }
    }
}

/// The controller, as [`Peer`].
fn the_controller(config: &ClientConfig) -> Peer<'static> {
    Peer {
        name: "the controller".to_string(),
        addr: config.controller.clone(),
        server: Server::Controller,
    }
}

/// Which side decided a TLS failure, by the `rustls::Error` variant: only an alert from the
/// server about our certificate is a refusal of us (access denied, exit 3); our own verifier
/// turning down the server's certificate (another name or identity, expired, another CA) means
/// we reached the wrong server or a misconfigured one (exit 1), as does any other TLS failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server refused our certificate.
    RefusedUs,
    /// Our verifier refused the server's certificate.
    UnexpectedServer,
    /// Anything else (a protocol or configuration mismatch).
    Other,
}

impl TlsFailure {
    pub fn of(e: &rustls::Error) -> TlsFailure {
        use rustls::AlertDescription as A;
        match e {
            rustls::Error::AlertReceived(
                A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateRequired
                // rustls' answer to a client certificate whose signature does not verify
                // (another CA with the same name).
                | A::DecryptError,
            ) => TlsFailure::RefusedUs,
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                TlsFailure::UnexpectedServer
            }
            _ => TlsFailure::Other,
        }
    }
}

/// The failure for TLS error `tls` with `peer`, `cause` being the whole chain as text.
fn tls_failure(peer: &str, tls: &rustls::Error, cause: &str) -> Failure {
    match TlsFailure::of(tls) {
        TlsFailure::RefusedUs => tls_refused(peer, cause),
        TlsFailure::UnexpectedServer => Failure {
            code: Exit::Error,
            message: format!(
                "the server's certificate is not the expected one for {peer} ({cause}); check the \
                 address and that the server runs with this deployment's certificate"
            ),
        },
        TlsFailure::Other => Failure {
            code: Exit::Error,
            message: format!(
                "the TLS connection to {peer} failed ({cause}); check that both sides use this \
                 deployment's TLS settings"
            ),
        },
    }
}

fn tls_refused(peer: &str, cause: &str) -> Failure {
    Failure {
        code: Exit::Denied,
        message: format!(
            "{peer} refused the TLS connection ({cause}); check that your certificate comes from \
             this deployment's CA and is still valid"
        ),
    }
}

/// Turns a gRPC status into the one sentence the user reads. A transport failure is access
/// denied (exit 3) exactly when a TLS error is in its source chain; other transport failures
/// are errors (exit 1). Classified by type, never by the text of a message.
pub fn explain(status: &Status, peer: &str) -> Failure {
    // The message is the peer's text: escaped before it can reach a terminal.
    let mut message = listing::printable(status.message()).into_owned();
    if let Some(source) = std::error::Error::source(status) {
        // Transport failures (a TLS alert from the peer, a reset) carry their cause here.
        let cause = error_chain(source);
        if !cause.starts_with(&message) {
            message = format!("{message}: {cause}");
        } else {
            message = cause;
        }
        if let Some(tls) = tls_error_in(source) {
            return tls_failure(peer, tls, &message);
        }
        if let Some(waited) = deadline::no_answer_in(source) {
            return Failure {
                code: Exit::Error,
                message: format!(
                    "{peer} gave {waited}; check that it is running and reachable, then try again"
                ),
            };
        }
        return Failure {
            code: Exit::Error,
            message: format!(
                "the connection to {peer} failed ({message}); if it keeps failing, check that \
                 your certificate comes from this deployment's CA and is still valid"
            ),
        };
    }
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => Failure {
            code: Exit::Denied,
            message: format!("access denied by {peer}: {message}"),
        },
        // The server refused an argument the user gave (a TTL, a subject, a pattern): bad usage.
        Code::InvalidArgument => usage(format!("{peer} refused the request: {message}")),
        Code::Aborted => Failure {
            code: Exit::StreamEnded,
            message: format!("{peer} ended the stream: {message}"),
        },
        Code::Unavailable => Failure {
            code: Exit::Error,
            message: format!("cannot reach {peer}: {message}"),
        },
        _ => Failure {
            code: Exit::Error,
            message: format!("{peer}: {message}"),
        },
    }
}

/// How long the CLI goes on trying a connection that the server resets before TLS's handshake
/// completed: a controller taking a fleet back after its restart resets newcomers at once
/// while its handshake pool is full of agents about to send their ClientHellos
/// (`reset_in_grace`, `core/src/tls_accept.rs`). In the herd runs this went on for 10 s
/// (SQLite) and 19 s (PostgreSQL), but a prefix is reset only while it holds more than half of
/// the victim prefix's places, and an admin whose /24 (or /64) also holds agents must get
/// through that (docs/performance.md). No retry starts past this budget.
pub const RESET_BUDGET: Duration = Duration::from_secs(15);

/// The pause before the first retry of a reset connection; each next one doubles, up to
/// [`RESET_PAUSE_MAX`], and each is drawn at random between half and all of that
/// ([`reset_pause`]), so that the retries of many commands do not arrive together.
pub const RESET_PAUSE_FIRST: Duration = Duration::from_millis(100);

/// The longest pause between two attempts of a reset connection.
pub const RESET_PAUSE_MAX: Duration = Duration::from_secs(2);

/// The pause after `made` attempts: [`RESET_PAUSE_FIRST`] doubled `made - 1` times, at most
/// [`RESET_PAUSE_MAX`], times `jitter` (kept within 0.5 to 1).
fn reset_pause(made: u32, jitter: f64) -> Duration {
    let doublings = made.saturating_sub(1).min(16);
    let pause = RESET_PAUSE_FIRST
        .saturating_mul(1 << doublings)
        .min(RESET_PAUSE_MAX);
    pause.mul_f64(jitter.clamp(0.5, 1.0))
}

/// A retry of a reset connection, as [`again_if_reset`] hands it to its `pause`.
#[derive(Clone, Copy, Debug)]
struct Retry {
    /// The number of the attempt about to be made (2 for the first retry).
    attempt: u32,
    /// The time since the first attempt started.
    elapsed: Duration,
    /// The pause before it.
    pause: Duration,
}

/// A channel to `addr` whose every call has a deadline ([`deadline`]). A connection reset
/// before TLS completed is tried again for up to [`RESET_BUDGET`], each retry said on stderr
/// with its attempt and the time since the first ([`again_if_reset`]).
async fn connect(
    addr: &str,
    config: &ClientConfig,
    server: Server<'_>,
) -> Result<deadline::Deadline<Channel>, Failure> {
    let endpoint = endpoint(addr, config, server, true)?;
    let name = match server {
        Server::Controller => "loggate-controller",
        Server::Agent(id) => id,
    };
    let started = std::time::Instant::now();
    let connected = again_if_reset(
        || within_connect_deadline(endpoint.connect()),
        || started.elapsed(),
        |retry| async move {
            eprintln!(
                "loggate: {name} at {addr} reset the connection before TLS completed (busy: \
                 a fleet reconnecting?); attempt {} in {} ms, {:.1} s since the first \
                 (trying for up to {} s)",
                retry.attempt,
                retry.pause.as_millis(),
                retry.elapsed.as_secs_f64(),
                RESET_BUDGET.as_secs(),
            );
            tokio::time::sleep(retry.pause).await;
        },
    )
    .await;
    connected
        .map(deadline::Deadline::new)
        .map_err(|(e, made, elapsed)| {
            let mut failure = connect_failure(addr, server, &e);
            if made > 1 {
                failure.message.push_str(&format!(
                    " (tried {made} times over {:.1} s)",
                    elapsed.as_secs_f64()
                ));
            }
            failure
        })
}

/// Runs `attempt` until it succeeds, fails otherwise than by a reset before TLS
/// ([`reset_before_tls`]), or fails by one when the next pause ([`reset_pause`]) would end
/// past [`RESET_BUDGET`] after the first attempt started (`elapsed`). `pause` runs before each
/// retry. The error comes with the number of attempts made and the time they took.
async fn again_if_reset<T, A, AF, E, P, PF>(
    mut attempt: A,
    elapsed: E,
    mut pause: P,
) -> Result<T, (ConnectError, u32, Duration)>
where
    A: FnMut() -> AF,
    AF: std::future::Future<Output = Result<T, ConnectError>>,
    E: Fn() -> Duration,
    P: FnMut(Retry) -> PF,
    PF: std::future::Future<Output = ()>,
{
    let mut made = 0;
    loop {
        made += 1;
        let e = match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        let spent = elapsed();
        let wait = reset_pause(made, rand::random_range(0.5..=1.0));
        if !reset_before_tls(&e) || spent.saturating_add(wait) > RESET_BUDGET {
            return Err((e, made, spent));
        }
        pause(Retry {
            attempt: made + 1,
            elapsed: spent,
            pause: wait,
        })
        .await;
    }
}

/// True when the connection was reset by the server (a reset, or a broken pipe writing after
/// one) before TLS's handshake completed: no TLS error in the chain and no HTTP/2 error
/// after a completed handshake (where a peer refusing our certificate under TLS 1.3 may end
/// the connection with its alert lost: that one is explained, not retried). Classified by the
/// I/O error kinds of the cause chain, never by text.
fn reset_before_tls(e: &ConnectError) -> bool {
    let ConnectError::Failed(inner) = e else {
        return false;
    };
    tls_error_in(inner.as_ref()).is_none()
        && !socket_slot::past_tls(e)
        && [
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::BrokenPipe,
        ]
        .into_iter()
        .any(|kind| chain_has_io_kind(inner.as_ref(), kind))
}

/// The endpoint of `addr` with the CLI's TLS identity and connection settings. With
/// `tcp_timeout`, hyper's connector bounds the TCP connect to 5 s; without it (an endpoint
/// used with a connector of one's own, which bounds TCP itself), no `connect_timeout` is set,
/// since tonic would wrap the whole connector, TLS's handshake included, in it.
fn endpoint(
    addr: &str,
    config: &ClientConfig,
    server: Server<'_>,
    tcp_timeout: bool,
) -> Result<tonic::transport::Endpoint, Failure> {
    let endpoint = config
        .tls
        .endpoint(addr, server)
        .map_err(|e| Failure::from(format!("TLS configuration: {e:#}")))?;
    let endpoint = if tcp_timeout {
        endpoint.connect_timeout(Duration::from_secs(5))
    } else {
        endpoint
    };
    Ok(http2_settings(endpoint))
}

/// The largest HTTP/2 frame the CLI accepts (its `SETTINGS_MAX_FRAME_SIZE`; HTTP/2's default
/// is 16 KiB). A server sends no DATA frame larger than what its peer advertises, so at the
/// default an agent cut every message of a read (a 64 KiB read redacted; a 16 KiB read under
/// memory pressure plus its framing is just over 16 KiB) into several frames. At this size a
/// message, or what tonic batches of smaller ones, goes as one frame: with 64 streams the
/// agent's `writev`s per GiB fell from 67,700 to 29,600 (issue #15, docs/performance.md). The
/// CLI's HTTP/2 layer buffers a frame whole before handing it on, so this bounds the CLI's
/// memory per connection, not the agent's.
pub(crate) const MAX_FRAME_SIZE: u32 = 256 * 1024;
// A redacted 64 KiB read (at most 1/8 longer) fits one frame, and HTTP/2 allows the value
// (16 KiB to 16 MiB − 1; h2 panics outside it).
const _: () = assert!(MAX_FRAME_SIZE >= 72 * 1024 + 64 && MAX_FRAME_SIZE < 1 << 24);

/// The CLI's HTTP/2 settings on `endpoint`: keep-alive pings, and [`MAX_FRAME_SIZE`].
fn http2_settings(endpoint: tonic::transport::Endpoint) -> tonic::transport::Endpoint {
    endpoint
        // A peer whose host dies mid-stream sends no FIN and no RST: an unanswered ping ends
        // the connection (and the read, with an error naming the peer) within ~35 s.
        .http2_keep_alive_interval(deadline::KEEP_ALIVE)
        .keep_alive_timeout(deadline::KEEP_ALIVE)
        .keep_alive_while_idle(true)
        .max_frame_size(MAX_FRAME_SIZE)
}

/// Why a connection could not be made: kept as a type (not yet a sentence) so that a caller
/// can tell a transient failure from a refusal by its cause ([`reads`]' one retry).
#[derive(Debug)]
pub(super) enum ConnectError {
    /// TCP's connect and TLS's handshake took longer than [`deadline::CONNECT`].
    NoHandshake,
    /// The transport's own error (tonic's), with its cause chain (an I/O error, a TLS alert).
    Failed(Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// `connecting`, bounded by [`deadline::CONNECT`]: `connect_timeout` bounds the TCP connect
/// only, and a peer that accepts and then stays silent through TLS's handshake is bounded here.
async fn within_connect_deadline(
    connecting: impl std::future::Future<Output = Result<Channel, tonic::transport::Error>>,
) -> Result<Channel, ConnectError> {
    match tokio::time::timeout(deadline::CONNECT, connecting).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(ConnectError::Failed(Box::new(e))),
        Err(_) => Err(ConnectError::NoHandshake),
    }
}

/// The sentence and exit code of a failed connection to `server` at `addr`: a refused
/// certificate is access denied (exit 3), anything else an error (exit 1).
fn connect_failure(addr: &str, server: Server<'_>, e: &ConnectError) -> Failure {
    let name = match server {
        Server::Controller => "loggate-controller",
        Server::Agent(id) => id,
    };
    match e {
        ConnectError::NoHandshake => Failure {
            code: Exit::Error,
            message: format!(
                "cannot connect to {name} at {addr}: no TLS handshake within {} s; check the \
                 address and that the server is running",
                deadline::CONNECT.as_secs()
            ),
        },
        ConnectError::Failed(e) => {
            let cause = error_chain(e.as_ref());
            if let Some(tls) = tls_error_in(e.as_ref()) {
                return tls_failure(&format!("{name} at {addr}"), tls, &cause);
            }
            Failure {
                code: Exit::Error,
                message: format!("cannot connect to {name} at {addr}: {cause}"),
            }
        }
    }
}

/// True when [`explain_at`] would probe the peer with a connection of its own for `status`
/// (a transport failure without a TLS reason): a caller that bounds its connections waits for
/// its broken one to close first.
pub(super) fn needs_probe(status: &Status) -> bool {
    std::error::Error::source(status).is_some_and(dropped_without_reason)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if parts.last() != Some(&part) {
            parts.push(part);
        }
        source = s.source();
    }
    parts.join(": ")
}

pub async fn controller(
    config: &ClientConfig,
) -> Result<ControllerClient<deadline::Deadline<Channel>>, Failure> {
    Ok(ControllerClient::new(
        connect(&config.controller, config, Server::Controller).await?,
    ))
}

pub struct IssueArgs {
    pub start_in: Option<Duration>,
    pub subject: String,
    pub hosts: Vec<String>,
    pub labels: Vec<String>,
    pub paths: Vec<String>,
    pub units: Vec<String>,
    pub ttl: Duration,
    pub reason: String,
    pub redaction: String,
    pub json: bool,
}

fn print_grant(g: &pb::GrantInfo) -> Result<(), Failure> {
    let now = loggate_core::grant::unix_now();
    let state = if g.revoked {
        format!(
            "revoked by {} at {}",
            g.revoked_by,
            format_time(g.revoked_at_unix)
        )
    } else if now >= g.not_after_unix {
        format!(
            "expired {} ago",
            rough_duration(now.saturating_sub(g.not_after_unix))
        )
    } else if now < g.not_before_unix {
        format!(
            "starts in {}",
            rough_duration(g.not_before_unix.saturating_sub(now))
        )
    } else {
        format!(
            "active, {} left",
            rough_duration(g.not_after_unix.saturating_sub(now))
        )
    };
    let mut scope: Vec<String> = g.hosts.clone();
    scope.extend(g.labels.iter().map(|l| format!("label:{l}")));
    outln!(
        "{}  {}  on {}  paths {}{}  until {}  ({})  profile {}  reason {:?}",
        g.id,
        g.subject,
        scope.join(","),
        g.paths.join(","),
        if g.units.is_empty() {
            String::new()
        } else {
            format!("  units {}", g.units.join(","))
        },
        format_time(g.not_after_unix),
        state,
        g.redaction_profile,
        g.reason
    )
}

fn grant_json(g: &pb::GrantInfo) -> serde_json::Value {
    serde_json::json!({
        "id": g.id, "subject": g.subject, "hosts": g.hosts, "labels": g.labels, "paths": g.paths,
        "units": g.units, "not_before": g.not_before_unix, "not_after": g.not_after_unix, "reason": g.reason,
        "issuer": g.issuer, "redaction_profile": g.redaction_profile, "revoked": g.revoked,
        "revoked_at": g.revoked_at_unix, "revoked_by": g.revoked_by, "revision": g.revision,
        "key_sha256": g.key_sha256, "token": g.token,
    })
}

/// The Unix time `start_in` from now, for `--start-in`; bad usage beyond the controller's
/// horizon ([`MAX_START_AHEAD`](crate::service::MAX_START_AHEAD)), so no duration can wrap
/// into a time in the past.
fn start_time(now: i64, start_in: Duration) -> Result<i64, Failure> {
    let ahead = crate::service::MAX_START_AHEAD;
    if start_in > ahead {
        return Err(usage(format!(
            "--start-in {} is too far ahead; a grant may start at most {} days from now",
            loggate_core::duration::format(start_in),
            ahead.as_secs() / 86_400
        )));
    }
    i64::try_from(start_in.as_secs())
        .ok()
        .and_then(|s| now.checked_add(s))
        .ok_or_else(|| usage("--start-in is out of range"))
}

pub async fn grant_issue(config: &ClientConfig, args: IssueArgs) -> CliResult {
    let not_before_unix = match args.start_in {
        Some(d) => start_time(loggate_core::grant::unix_now(), d)?,
        None => 0,
    };
    let mut client = controller(config).await?;
    let response = client
        .issue_grant(pb::IssueGrantRequest {
            subject: args.subject,
            hosts: args.hosts,
            labels: args.labels,
            paths: args.paths,
            ttl_seconds: args.ttl.as_secs(),
            reason: args.reason,
            redaction_profile: args.redaction,
            not_before_unix,
            units: args.units,
        })
        .await
        .or_explain(config, &the_controller(config))
        .await?;
    let grant = response
        .into_inner()
        .grant
        .ok_or("the controller returned no grant")?;
    if args.json {
        outln!("{}", grant_json(&grant))?;
    } else {
        print_grant(&grant)?;
    }
    Ok(())
}

pub async fn grant_list(
    config: &ClientConfig,
    all: bool,
    subject: String,
    json: bool,
) -> CliResult {
    let mut client = controller(config).await?;
    let grants = client
        .list_grants(pb::ListGrantsRequest {
            include_inactive: all,
            subject,
        })
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner()
        .grants;
    if json {
        let list: Vec<_> = grants.iter().map(grant_json).collect();
        outln!("{}", serde_json::Value::from(list))?;
    } else if grants.is_empty() {
        eprintln!(
            "no grants{}",
            if all {
                ""
            } else {
                " active (use --all to see ended ones)"
            }
        );
    } else {
        grants.iter().try_for_each(print_grant)?;
    }
    Ok(())
}

pub async fn grant_revoke(
    config: &ClientConfig,
    id: loggate_core::grant::GrantId,
    reason: String,
) -> CliResult {
    let mut client = controller(config).await?;
    let grant = client
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: id.into_string(),
            reason,
        })
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner()
        .grant
        .ok_or("the controller returned no grant")?;
    print_grant(&grant)?;
    Ok(())
}

pub async fn whoami(config: &ClientConfig) -> CliResult {
    let mut client = controller(config).await?;
    let me = client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner();
    outln!(
        "{}{}\ncertificate key sha256 {}",
        me.subject,
        if me.admin { " (admin)" } else { "" },
        me.key_sha256
    )?;
    if me.enrolled_key_sha256 != me.key_sha256 {
        return Err(format!(
            "grants to you are bound to another key ({}); ask an admin to re-enrol your new certificate",
            me.enrolled_key_sha256
        )
        .into());
    }
    Ok(())
}

pub struct ReadArgs {
    pub host: String,
    pub agent_addr: Option<String>,
    pub path: String,
    pub mode: pb::ReadMode,
    pub follow: bool,
    pub lines: u64,
    pub pattern: String,
    /// `--since` ([`time_arg`]).
    pub since: Option<UnixMillis>,
    /// `--until`.
    pub until: Option<UnixMillis>,
    pub json: bool,
    pub grant_token: Option<PathBuf>,
}

/// Where agent `host` listens: `given` (`--agent-addr`), or what the controller's registry says.
async fn agent_addr(
    config: &ClientConfig,
    host: &str,
    given: Option<String>,
) -> Result<String, Failure> {
    if let Some(addr) = given {
        return Ok(addr);
    }
    let mut ctl = controller(config).await?;
    let agent = ctl
        .resolve_agent(pb::ResolveAgentRequest {
            agent_id: host.to_string(),
        })
        .await
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner();
    if agent.addr.is_empty() {
        return Err(format!(
            "agent {host} has not told the controller its address; pass --agent-addr"
        )
        .into());
    }
    Ok(agent.addr)
}

/// The request a read sends to each agent: the path checked to be absolute, the grant token
/// file (`--grant-token`) read once.
pub fn read_request(args: &ReadArgs) -> Result<pb::ReadLogRequest, Failure> {
    if !args.path.starts_with('/') {
        return Err(usage(format!(
            "{:?} is not an absolute path; give the file's full path on the host",
            args.path
        )));
    }
    let grant_token = match &args.grant_token {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| format!("cannot read grant token {}: {e}", p.display()))?
            .trim()
            .to_string(),
        None => String::new(),
    };
    Ok(pb::ReadLogRequest {
        path: args.path.clone(),
        mode: args.mode as i32,
        follow: args.follow,
        tail_lines: args.lines,
        pattern: args.pattern.clone(),
        // 0: no bound, as the request's fields say.
        since_unix_ms: args.since.map_or(0, |t| t.0),
        until_unix_ms: args.until.map_or(0, |t| t.0),
        grant_token,
    })
}

pub async fn read_log(config: &ClientConfig, args: ReadArgs) -> CliResult {
    let request = read_request(&args)?;
    let addr = agent_addr(config, &args.host, args.agent_addr).await?;
    let agent = Peer {
        name: format!("agent {}", args.host),
        addr: addr.clone(),
        server: Server::Agent(&args.host),
    };
    let mut client =
        read_stream::ReadClient::new(connect(&addr, config, Server::Agent(&args.host)).await?);
    let mut stream = client
        .read_log(request)
        .await
        .or_explain(config, &agent)
        .await?
        .into_inner();
    let stdout = std::io::stdout();
    let mut out = Output {
        out: std::io::BufWriter::new(stdout.lock()),
        pending: Vec::new(),
        json: args.json,
        host: &args.host,
        path: &args.path,
    };
    // On a terminal, while the output goes elsewhere: bytes and rate on stderr (issue 14).
    let progress = reads::byte_progress(args.follow);
    let clear = || {
        if let Some(bar) = &progress {
            bar.finish_and_clear();
        }
    };
    loop {
        let chunk = match stream.message().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(status) => {
                let _ = out.flush(true);
                clear();
                return Err(explain_at(&status, config, &agent).await);
            }
        };
        match chunk {
            read_stream::Chunk::Start(start) => {
                tracing::debug!(grant = %start.grant_id, "stream started");
            }
            read_stream::Chunk::Data(data) => {
                if let Some(bar) = &progress {
                    bar.inc(u64::try_from(data.len()).unwrap_or(u64::MAX));
                }
                if let Err(e) = out.write(&data) {
                    clear();
                    return Err(e.into());
                }
            }
        }
    }
    clear();
    out.flush(true)?;
    Ok(())
}

/// Where streamed content goes: stdout as text, or as one JSON object per line.
struct Output<'a, W: Write> {
    out: W,
    /// Received bytes not yet written (JSON output only: it writes whole lines; text goes
    /// straight through, never copied here).
    pending: Vec<u8>,
    json: bool,
    host: &'a str,
    path: &'a str,
}

impl<W: Write> Output<'_, W> {
    /// Writes one received message. Text: its bytes straight to the output, one write per
    /// message (the `BufWriter` passes a message of its capacity or more through without
    /// copying it; a smaller one is copied once and flushed with it), never through `pending`
    /// (issue #15: that copied every byte the CLI printed). JSON: whole lines only, so the
    /// message joins `pending` and a line it leaves open waits for the next message.
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if !self.json {
            self.out.write_all(data)?;
            return self.out.flush();
        }
        self.pending.extend_from_slice(data);
        self.flush(false)
    }

    /// Writes complete lines (all of `pending` when `all`), and flushes the output.
    fn flush(&mut self, all: bool) -> std::io::Result<()> {
        if !self.json {
            return self.out.flush();
        }
        let end = if all {
            self.pending.len()
        } else {
            match self.pending.iter().rposition(|b| *b == b'\n') {
                Some(i) => i + 1,
                None => return Ok(()),
            }
        };
        for line in self.pending[..end].split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let record = serde_json::json!({
                "host": self.host, "path": self.path, "line": String::from_utf8_lossy(line),
            });
            writeln!(self.out, "{record}")?;
        }
        self.pending.drain(..end);
        self.out.flush()
    }
}

/// `loggate audit verify FILE… [--key PUB]… [--checkpoints FILE]`: the files are one chain, in
/// the order given.
pub fn audit_verify(
    paths: &[PathBuf],
    key_files: &[PathBuf],
    checkpoints: Option<&std::path::Path>,
) -> CliResult {
    use loggate_core::audit::{read_external_checkpoints, verify_chain_anchored, VerifyKey};
    let mut keys = Vec::new();
    for k in key_files {
        let text =
            std::fs::read_to_string(k).map_err(|e| format!("cannot read {}: {e}", k.display()))?;
        keys.push(VerifyKey::parse(&text).map_err(|e| format!("{}: {e:#}", k.display()))?);
    }
    let external = match checkpoints {
        Some(c) => {
            let file =
                std::fs::File::open(c).map_err(|e| format!("cannot open {}: {e}", c.display()))?;
            let held = read_external_checkpoints(std::io::BufReader::new(file))
                .map_err(|e| format!("{}: {e}", c.display()))?;
            if held.is_empty() {
                // Nothing to anchor against is not an anchored result.
                return Err(format!(
                    "{} holds no checkpoints; export them with 'loggate audit checkpoints --host AGENT'",
                    c.display()
                )
                .into());
            }
            if !keys.is_empty() {
                for checkpoint in &held {
                    checkpoint.verify(&keys).map_err(|e| Failure {
                        code: Exit::AuditBroken,
                        message: format!(
                            "{}: the checkpoint sealing seq {} is not genuine: {e}",
                            c.display(),
                            checkpoint.sealed_seq
                        ),
                    })?;
                }
            }
            held
        }
        None => Vec::new(),
    };
    let mut input: Box<dyn std::io::Read> = Box::new(std::io::empty());
    for path in paths {
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(format!(
                "{} is not an audit file (not a regular file)",
                path.display()
            )
            .into());
        }
        input = Box::new(std::io::Read::chain(input, file));
    }
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let s = verify_chain_anchored(std::io::BufReader::new(input), &keys, &external).map_err(
        |broken| Failure {
            code: Exit::AuditBroken,
            message: format!(
                "{}: chain broken at {broken}{}",
                names.join(" + "),
                if paths.len() > 1 {
                    " (counting lines across the files in order)"
                } else {
                    ""
                }
            ),
        },
    )?;
    if let Some(previous) = &s.continues_from {
        eprintln!(
            "note: the chain continues rotated file {previous} (seq {} onwards checked); pass it first to check it too",
            s.first_seq
        );
    }
    outln!(
        "ok: {} records, seq {}..{}, head {}; {} checkpoints, sealed through seq {}",
        s.records,
        s.first_seq,
        s.last_seq,
        s.head,
        s.checkpoints,
        s.sealed_through
    )?;
    if !s.signatures_checked && s.checkpoints > 0 {
        eprintln!("warning: checkpoint signatures were not checked; pass the writer's public key with --key");
    }
    if s.last_seq > s.sealed_through {
        eprintln!(
            "warning: {} records after the last checkpoint are not sealed yet",
            s.last_seq - s.sealed_through
        );
    }
    if checkpoints.is_none() {
        eprintln!(
            "note: truncation of the end or a re-signed rewrite of the whole file can only be detected \
             against checkpoints kept off this host (--checkpoints)"
        );
    } else {
        outln!(
            "anchored: {} checkpoints held off the host match, through seq {}",
            external.len(),
            s.anchored_through
        )?;
        if s.last_seq > s.anchored_through {
            eprintln!(
                "warning: {} records after seq {} (unsealed tail) are not anchored off the host yet",
                s.last_seq - s.anchored_through,
                s.anchored_through
            );
        }
    }
    Ok(())
}

/// `loggate audit checkpoints --host H [--output json]`: the controller's checkpoints for a
/// host, oldest first, on stdout. Text: the exact checkpoint records; JSON: one object per
/// checkpoint with the controller's `id`, `received_at` and `status`. `audit verify
/// --checkpoints` reads either.
pub async fn audit_checkpoints(config: &ClientConfig, host: String, json: bool) -> CliResult {
    let mut client = controller(config).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut after_id = 0;
    let mut conflicts = 0;
    loop {
        let page = client
            .list_checkpoints(pb::ListCheckpointsRequest {
                host: host.clone(),
                after_id,
                limit: 0,
            })
            .await
            .or_explain(config, &the_controller(config))
            .await?
            .into_inner()
            .checkpoints;
        let Some(last) = page.last() else { break };
        after_id = last.id;
        for c in &page {
            if c.status != "ok" {
                conflicts += 1;
            }
            if json {
                let record = serde_json::json!({
                    "id": c.id, "host": host, "received_at": format_time(c.received_at_unix),
                    "status": c.status, "line": c.line,
                });
                writeln!(out, "{record}")?;
            } else {
                writeln!(out, "{}", c.line)?;
            }
        }
    }
    out.flush()?;
    if conflicts > 0 {
        eprintln!("warning: {conflicts} of {host}'s checkpoints conflict with earlier ones (see their status with --output json)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connect error whose cause is an I/O error of `kind`.
    fn io_failure(kind: std::io::ErrorKind) -> ConnectError {
        ConnectError::Failed(Box::new(std::io::Error::from(kind)))
    }

    /// What [`again_if_reset`] did, on a clock of its own that only attempts (1 ms each) and
    /// pauses move: no test waits.
    #[derive(Debug)]
    struct Tried {
        /// Attempts made.
        made: u32,
        /// The retries, as handed to `pause`.
        retries: Vec<Retry>,
        /// On failure, the attempts and the time the error reports.
        failed: Option<(u32, Duration)>,
    }

    /// [`again_if_reset`] over attempts failing with `fail(attempt, clock)` until it gives none.
    async fn attempts(fail: impl Fn(u32, Duration) -> Option<ConnectError>) -> Tried {
        let clock = std::cell::Cell::new(Duration::ZERO);
        let made = std::cell::Cell::new(0);
        let retries = std::cell::RefCell::new(Vec::new());
        let result = again_if_reset(
            || {
                made.set(made.get() + 1);
                let result = match fail(made.get(), clock.get()) {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
                clock.set(clock.get() + Duration::from_millis(1));
                async move { result }
            },
            || clock.get(),
            |retry| {
                retries.borrow_mut().push(retry);
                clock.set(clock.get() + retry.pause);
                async {}
            },
        )
        .await;
        Tried {
            made: made.get(),
            retries: retries.into_inner(),
            failed: result.err().map(|(_, made, elapsed)| (made, elapsed)),
        }
    }

    #[test]
    fn the_pause_before_a_retry_doubles_from_100_ms_up_to_2_s_with_jitter() {
        let ms = Duration::from_millis;
        let full: Vec<_> = (1..=7).map(|made| reset_pause(made, 1.0)).collect();
        let expected = [
            ms(100),
            ms(200),
            ms(400),
            ms(800),
            ms(1600),
            ms(2000),
            ms(2000),
        ];
        assert_eq!(full, expected);
        assert_eq!(reset_pause(1, 0.5), ms(50));
        assert_eq!(reset_pause(3, 0.75), ms(300));
        // The jitter is kept within half to all; a long run of attempts stays at the cap.
        assert_eq!(reset_pause(1, 0.0), ms(50));
        assert_eq!(reset_pause(1, 7.0), ms(100));
        assert_eq!(reset_pause(u32::MAX, 1.0), RESET_PAUSE_MAX);
    }

    #[tokio::test]
    async fn a_connection_reset_before_tls_is_tried_again_for_a_bounded_time() {
        use std::io::ErrorKind::{BrokenPipe, ConnectionRefused, ConnectionReset};
        // Reset, broken pipe, then through: three attempts, two retries said.
        let errors = [ConnectionReset, BrokenPipe];
        let tried = attempts(|n, _| errors.get(n as usize - 1).map(|&k| io_failure(k))).await;
        assert_eq!(
            (tried.made, tried.retries.len(), tried.failed),
            (3, 2, None)
        );
        assert_eq!(tried.retries[0].attempt, 2);
        assert_eq!(tried.retries[1].attempt, 3);

        // Reset for the first 10 s (a herd's reset phase; four attempts last 1.2 s at most):
        // still through, on the first attempt after 10 s.
        let herd = Duration::from_secs(10);
        let tried = attempts(|_, clock| (clock < herd).then(|| io_failure(ConnectionReset))).await;
        assert_eq!(tried.failed, None, "{tried:?}");
        assert!(tried.made > 4, "{tried:?}");
        let last = tried.retries.last().expect("retried");
        assert!(
            last.elapsed < herd && last.elapsed + last.pause >= herd,
            "{tried:?}"
        );

        // Reset every time: no retry starts past RESET_BUDGET, and the last starts within the
        // longest pause of it. The pauses double from 50-100 ms, never above 2 s.
        let tried = attempts(|_, _| Some(io_failure(ConnectionReset))).await;
        let (made, elapsed) = tried.failed.expect("gave up");
        assert_eq!(made, tried.made);
        assert_eq!(u32::try_from(tried.retries.len()), Ok(made - 1));
        let last = tried.retries.last().expect("retried");
        assert!(last.elapsed + last.pause <= RESET_BUDGET, "{tried:?}");
        assert!(
            elapsed + RESET_PAUSE_MAX > RESET_BUDGET,
            "gave up early: {tried:?}"
        );
        let first = tried.retries[0].pause;
        assert!(
            first >= RESET_PAUSE_FIRST / 2 && first <= RESET_PAUSE_FIRST,
            "{first:?}"
        );
        for (retry, attempt) in tried.retries.iter().zip(2..) {
            assert_eq!(retry.attempt, attempt);
            assert!(retry.pause <= RESET_PAUSE_MAX, "{retry:?}");
        }

        // Not a reset: no controller listening, no handshake in time, a TLS refusal.
        for error in [
            || io_failure(ConnectionRefused),
            || ConnectError::NoHandshake,
            || {
                ConnectError::Failed(Box::new(std::io::Error::new(
                    ConnectionReset,
                    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
                )))
            },
        ] {
            let tried = attempts(|_, _| Some(error())).await;
            assert_eq!(tried.made, 1, "{tried:?}");
            assert!(tried.retries.is_empty(), "{tried:?}");
            assert_eq!(tried.failed.map(|(made, _)| made), Some(1));
        }
    }

    /// A writer that records each `write` call's bytes.
    #[derive(Debug, Default)]
    struct Writes(Vec<Vec<u8>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn output(json: bool) -> Output<'static, std::io::BufWriter<Writes>> {
        Output {
            out: std::io::BufWriter::new(Writes::default()),
            pending: Vec::new(),
            json,
            host: "web-1",
            path: "/var/log/app.log",
        }
    }

    /// Issue #15: text output writes each message's bytes as they came, in one write per
    /// message (not per line), and copies none of them into `pending` (it used to copy every
    /// message there before writing it), even a message that ends inside a line.
    #[test]
    fn text_output_writes_each_message_once_without_keeping_a_copy() {
        let big: Vec<u8> = b"a line of the log\n".repeat(4000);
        let messages: [&[u8]; 4] = [&big, b"first\nsecond\npart", b" of a line\n", &big];
        let mut out = output(false);
        for m in messages {
            out.write(m).unwrap();
            assert_eq!(out.pending.capacity(), 0, "text output copied a message");
        }
        out.flush(true).unwrap();
        let writes = out.out.into_inner().unwrap().0;
        assert_eq!(writes, messages.map(<[u8]>::to_vec));
    }

    /// JSON output writes whole lines: a line split across two messages is one record.
    #[test]
    fn json_output_joins_a_line_split_across_messages() {
        let mut out = output(true);
        out.write(b"one\ntw").unwrap();
        out.write(b"o\nthree").unwrap();
        out.flush(true).unwrap();
        let written = out.out.into_inner().unwrap().0.concat();
        let lines: Vec<serde_json::Value> = written
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let texts: Vec<&str> = lines.iter().map(|v| v["line"].as_str().unwrap()).collect();
        assert_eq!(texts, ["one", "two", "three"]);
        assert_eq!(lines[0]["host"], "web-1");
    }

    /// Issue #15: the CLI's HTTP/2 SETTINGS raise `SETTINGS_MAX_FRAME_SIZE` to
    /// [`MAX_FRAME_SIZE`], so that an agent may send a read's 64 KiB messages as one frame each
    /// (at HTTP/2's default of 16 KiB it may not). Read off the wire: the client's preface and
    /// its first frame, on a plain TCP listener standing in for the agent.
    #[tokio::test]
    async fn the_cli_accepts_http2_frames_larger_than_a_read_message() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoint = http2_settings(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap(),
        );
        let connecting = tokio::spawn(async move { endpoint.connect().await });
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut preface = [0u8; 24];
        socket.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let mut head = [0u8; 9];
        socket.read_exact(&mut head).await.unwrap();
        assert_eq!(
            head[3], 0x4,
            "the client's first frame is its SETTINGS: {head:?}"
        );
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]);
        let mut settings = vec![0u8; usize::try_from(len).unwrap()];
        socket.read_exact(&mut settings).await.unwrap();
        // SETTINGS_MAX_FRAME_SIZE is setting 0x5; absent, the peer's limit is 16 KiB.
        let max_frame_size = settings
            .chunks_exact(6)
            .find(|s| s[..2] == [0, 5])
            .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
        assert_eq!(
            max_frame_size,
            Some(MAX_FRAME_SIZE),
            "settings: {settings:?}"
        );
        connecting.abort();
    }

    #[test]
    fn format_time_is_total_over_i64() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(253_402_300_799), "9999-12-31T23:59:59Z");
        for unix in [
            i64::MIN,
            -1,
            253_402_300_800,
            3_155_760_000_000_000,
            i64::MAX,
        ] {
            assert_eq!(format_time(unix), format!("unix time {unix}"));
        }
    }

    #[test]
    fn start_in_beyond_the_horizon_or_i64_is_bad_usage() {
        let now = 1_800_000_000;
        for secs in [
            u64::MAX,
            1 << 63,
            18_446_744_073_709_548_000,
            99_999_999_999_999 * 3600,
        ] {
            let err = start_time(now, Duration::from_secs(secs)).unwrap_err();
            assert_eq!(err.code, Exit::Usage, "{secs}: {}", err.message);
            assert!(err.message.contains("too far ahead"), "{}", err.message);
        }
        let ahead = crate::service::MAX_START_AHEAD;
        assert_eq!(
            start_time(now, ahead).unwrap(),
            now + i64::try_from(ahead.as_secs()).unwrap()
        );
        assert_eq!(
            start_time(now, Duration::from_secs(600)).unwrap(),
            now + 600
        );
    }

    #[test]
    fn the_help_lists_every_exit_code_as_design_md_states_them() {
        assert_eq!(
            exit_codes_help(),
            "Exit codes: 0 ok, 1 error, 2 bad usage, 3 access denied, 4 stream ended by the \
             agent, 5 audit verification failed, 6 some hosts of a multi-host read failed, 7 \
             every host of a multi-host read failed."
        );
    }

    #[test]
    fn grpc_status_codes_map_to_exit_codes() {
        for (code, exit) in [
            (Code::PermissionDenied, Exit::Denied),
            (Code::Unauthenticated, Exit::Denied),
            (Code::InvalidArgument, Exit::Usage),
            (Code::Aborted, Exit::StreamEnded),
            (Code::Unavailable, Exit::Error),
            (Code::Internal, Exit::Error),
        ] {
            let f = explain(&Status::new(code, "why"), "agent web-1");
            assert_eq!(f.code, exit, "{code:?}: {}", f.message);
        }
        // A transport failure whose chain holds the server's alert about our certificate is
        // access denied, found by downcasting through the I/O error.
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate);
        let wrapped = std::io::Error::new(std::io::ErrorKind::InvalidData, alert);
        let f = explain(&Status::from_error(Box::new(wrapped)), "the controller");
        assert_eq!(f.code, Exit::Denied, "{}", f.message);
        // The same words in a plain message are not a TLS refusal.
        let text = std::io::Error::other("tls alert: bad certificate");
        let f = explain(&Status::from_error(Box::new(text)), "the controller");
        assert_eq!(f.code, Exit::Error, "{}", f.message);
    }

    #[test]
    fn start_in_past_the_horizon_or_the_grammar_is_too_far_ahead_and_negative_is_said() {
        assert_eq!(start_in_arg("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(start_in_arg("1d 2h").unwrap(), Duration::from_secs(93_600));
        assert_eq!(
            start_in_arg("366d").unwrap(),
            crate::service::MAX_START_AHEAD
        );
        for far in ["367d", "18446744073709551615s", "99999999999999h"] {
            let e = start_in_arg(far).unwrap_err().to_string();
            assert!(
                e.contains("is too far ahead; a grant may start at most 366 days"),
                "{e}"
            );
        }
        let e = start_in_arg("-5s").unwrap_err().to_string();
        assert!(e.starts_with("\"-5s\" is negative"), "{e}");
    }

    #[test]
    fn a_closed_standard_output_is_a_clean_end_and_other_write_errors_are_not() {
        let closed = Failure::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(closed.code, Exit::Ok);
        let full = Failure::from(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert_eq!(full.code, Exit::Error);
    }

    #[test]
    fn errors_keep_their_causes() {
        let e = anyhow::anyhow!("\"Bad\" is not a valid name").context("agent id");
        assert_eq!(
            Failure::from(e).message,
            "agent id: \"Bad\" is not a valid name"
        );
    }

    #[test]
    fn only_the_servers_alert_about_our_certificate_is_a_refusal() {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        for refused in [
            E::AlertReceived(A::BadCertificate),
            E::AlertReceived(A::CertificateExpired),
            E::AlertReceived(A::UnknownCA),
            E::AlertReceived(A::DecryptError),
        ] {
            let f = tls_failure("the controller", &refused, "x");
            assert_eq!(f.code, Exit::Denied, "{refused:?}");
            assert!(
                f.message.contains("refused the TLS connection"),
                "{}",
                f.message
            );
        }
        let wrong_server =
            E::InvalidCertificate(C::Other(rustls::OtherError(std::sync::Arc::new(
                std::io::Error::other("the server's certificate is not web-1"),
            ))));
        for ours in [
            E::InvalidCertificate(C::Expired),
            E::InvalidCertificate(C::NotValidForName),
            E::InvalidCertificate(C::UnknownIssuer),
            wrong_server,
        ] {
            let f = tls_failure("agent web-1", &ours, "x");
            assert_eq!(f.code, Exit::Error, "{ours:?}");
            assert!(f.message.contains("not the expected one"), "{}", f.message);
        }
        let other = E::AlertReceived(A::ProtocolVersion);
        assert_eq!(tls_failure("the controller", &other, "x").code, Exit::Error);
        // Found through the I/O error tokio-rustls wraps it in, as a transport failure is.
        let wrapped = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            E::InvalidCertificate(C::Expired),
        );
        let status = Status::from_error(Box::new(wrapped));
        let f = explain(&status, "agent web-1");
        assert_eq!(f.code, Exit::Error);
        assert!(f.message.contains("not the expected one"), "{}", f.message);
    }

    #[test]
    fn tls_errors_are_found_by_type_through_io_errors() {
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate);
        let wrapped = std::io::Error::new(std::io::ErrorKind::InvalidData, alert.clone());
        assert_eq!(tls_error_in(&wrapped), Some(&alert));
        // A message that merely mentions a certificate is not a TLS error.
        let text = std::io::Error::other("certificate alert in the text only");
        assert_eq!(tls_error_in(&text), None);
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(dropped_without_reason(&pipe));
        assert!(chain_has_io_kind(&pipe, std::io::ErrorKind::BrokenPipe));
        assert!(!dropped_without_reason(&wrapped));
    }
}
