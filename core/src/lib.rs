//! What the loggate controller and agent share, each in one place: identities read from
//! certificates, grant signing and the one grant verifier, the audit writer, and the
//! timestamp rules used to select time ranges of log lines.

// A cast that can silently change a number fails the build here (issue 17 item 8): a u64
// that wraps to a negative i64, a negative time that becomes a huge u64, a u128 of
// milliseconds cut to u64. Convert with `try_from` and decide what out of range means.
// Every public item says what it is for and its contract (issue 17 item 8).
#![deny(missing_docs)]
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub mod alloc;
pub mod audit;
pub mod backoff;
pub mod cli_examples;
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
