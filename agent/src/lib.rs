//! The agent's redaction engine as a library, so that its benchmark (`benches/redact.rs`) and
//! anything else outside the daemon can drive exactly the code the daemon serves with. The
//! daemon itself is `main.rs`.

pub mod redact;
