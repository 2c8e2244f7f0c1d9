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
//! - [`init_tracing`]: one log set-up (`LOGGATE_LOG`, stderr, colour only on a terminal).

pub mod audit;
pub mod serve;

pub use audit::{AuditOpened, AuditRuntime, AuditSettings, AuditStartup, CheckpointsFile};
pub use serve::{
    peer_identity, serve_mtls, serve_pre_auth, MethodAccess, MtlsSettings, Revocations,
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

/// The one log set-up of both programs: the filter from `LOGGATE_LOG` (`info`, `debug`,
/// `loggate=debug`…; an unparsable value falls back to the default), lines on stderr, colour
/// codes only on a terminal (never in files and journald). Call it once, first.
pub fn init_tracing(default: LogDefault) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOGGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default.as_str()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
