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
pub use serve::{
    peer_identity, serve_mtls, serve_pre_auth, MethodAccess, MtlsSettings, Revocations,
    CLOSED_WITHIN, GRACEFUL_STOP_WITHIN,
};

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
    /// Human-readable lines (the default): what an operator reads in a terminal or `journalctl`.
    #[default]
    Text,
    /// One JSON object per line, for pipelines that parse the daemon's own log.
    Json,
}

impl LogFormat {
    /// The names `--log-format` accepts.
    pub const NAMES: &'static [&'static str] = &["text", "json"];

    /// The name `--log-format` accepts for this format (one of [`LogFormat::NAMES`]).
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
/// content, a grant token, a key or a join token (the end-to-end test
/// `tests/tests/log_format.rs` serves a file with a planted secret and greps the daemons'
/// stderr for it). In JSON a panic is one JSON line too (its message and place).
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
        LogFormat::Json => {
            builder
                .json()
                .with_ansi(false)
                .with_current_span(false)
                .init();
            std::panic::set_hook(Box::new(|info| {
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".to_string());
                let place = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                json_line("ERROR", &format!("panicked at {place}: {message}"));
            }));
        }
    }
}

/// One JSON line on stderr in the shape of the `tracing` JSON lines (timestamp, level, the
/// message in `fields`), written directly: not subject to `LOGGATE_LOG`'s filter.
fn json_line(level: &str, message: &str) {
    let line = serde_json::json!({
        "timestamp": jiff::Timestamp::now().to_string(),
        "level": level,
        "fields": { "message": message },
        "target": "loggate::announce",
    });
    // stderr gone: nowhere left to say it.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr().lock(),
        format!("{line}\n").as_bytes(),
    );
}

/// A daemon's line for the operator (listening, stopped, the error it stops on): a plain
/// stderr line in text, one JSON line in JSON (so that every line of a JSON log parses).
/// Written directly, never filtered by `LOGGATE_LOG`: an operator who narrows the log to one
/// crate must still see the daemon start, stop and the error it stops on.
pub fn announce(level: tracing::Level, line: &str) {
    if FORMAT.get().copied().unwrap_or_default() == LogFormat::Json {
        json_line(level.as_str(), line);
    } else {
        eprintln!("{line}");
    }
}
