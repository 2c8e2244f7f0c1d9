//! What the loggate controller and agent share, each in one place: identities read from
//! certificates, grant signing and the one grant verifier, the audit writer, and the
//! timestamp rules used to select time ranges of log lines.

pub mod audit;
pub mod backoff;
pub mod config_check;
pub mod daemon;
pub mod duration;
pub mod grant;
pub mod identity;
pub mod metrics;
pub mod notify;
pub mod private_state;
pub mod shutdown;
pub mod timestamp;
pub mod tls;
pub mod tls_accept;
