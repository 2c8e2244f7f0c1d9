//! The skeleton both daemons (`loggate controller serve`, `loggate-agent run`) stand on, so that
//! what one has the other has too:
//!
//! - [`audit`]: the audit runtime — the checkpoint key, the `*.started` record, retention,
//!   the SIEM sinks, ONE timer that checkpoints and rotates, and the `*.stopped` record — with
//!   the configuration keys (`audit_rotate_bytes`, `audit_keep_files`, `audit_max_bytes`,
//!   `[checkpoints]`) parsed and checked in one place;
//! - [`serve`]: `serve_mtls`, the gRPC server over the mTLS accept loop, with the caller's
//!   verified identity put into every request's extensions by one interceptor (handlers read it
//!   with [`peer_identity`]; a request without it is refused);
//! - [`init_tracing`]: one log set-up (`LOGGATE_LOG`, stderr, `--log-format text|json`,
//!   colour only on a terminal), and [`announce`] for a daemon's own lines.

pub mod audit;
pub mod serve;

pub use audit::{AuditOpened, AuditRuntime, AuditSettings, AuditStartup, CheckpointsFile};
pub use serve::{peer_identity, serve_mtls, serve_pre_auth, MethodAccess, MtlsSettings};

/// The log level shown when `LOGGATE_LOG` is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDefault {
    /// A daemon: `info` (starts, stops, reconnections, deliveries resumed).
    Daemon,
    /// A one-shot command: `warn`, so that its output is not mixed with progress lines.
    Command,
}

impl LogDefault {
    /// The filter directive of this default.
    pub fn as_str(self) -> &'static str {
        match self {
            LogDefault::Daemon => "info",
            LogDefault::Command => "warn",
        }
    }
}

/// How log lines are written: `text` (the default, for people) or `json` (one JSON object per
/// line, for journald-to-SIEM pipelines and log processors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// The names `--log-format` accepts.
    pub const NAMES: &'static [&'static str] = &["text", "json"];

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }

    /// The format named `name` (one of [`LogFormat::NAMES`]).
    pub fn from_name(name: &str) -> Option<LogFormat> {
        match name {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// The format chosen by [`init_tracing`], for [`announce`].
static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// The one log set-up of both programs: the filter from `LOGGATE_LOG` (`info`, `debug`,
/// `loggate=debug`…; an unparsable value falls back to the default), lines on stderr in
/// `format`, colour codes only in text on a terminal (never in files and journald). Call it
/// once, first.
///
/// What goes into a log line is the caller's contract, in JSON as in text: never a log file's
/// content, a grant token, a key or a join token (the end-to-end test `tests/tests/metrics.rs`
/// serves a file with a planted secret and greps the daemons' stderr for it).
pub fn init_tracing(default: LogDefault, format: LogFormat) {
    let _ = FORMAT.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOGGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .with_current_span(false)
            .init(),
    }
}

/// A daemon's line for the operator (listening, stopped, the error it stops on): a plain
/// stderr line in text, an event of `level` in JSON, so that every line of a JSON log parses.
pub fn announce(level: tracing::Level, line: &str) {
    if FORMAT.get().copied().unwrap_or_default() == LogFormat::Json {
        match level {
            tracing::Level::ERROR => tracing::error!("{line}"),
            tracing::Level::WARN => tracing::warn!("{line}"),
            _ => tracing::info!("{line}"),
        }
    } else {
        eprintln!("{line}");
    }
}
