//! Fuzz target of configuration parsing: arbitrary text loaded and validated as the
//! controller's configuration file and as the command-line client's (`controller/src/config.rs`,
//! compiled from source against the real `loggate-core`), whose `[[audit.sinks]]` tables go
//! through `loggate_core::audit::ship::validate_sinks` — the sink validation the agent uses too.
//!
//! Invariant: nothing panics; a configuration is either loaded or refused with an error.
//!
//! Needs the `daemon-config` feature (`loggate-core`, with tonic, tokio and rustls: a much
//! longer instrumented build than the other targets). The agent's own configuration
//! (`agent/src/config.rs`) is not reachable from a library: it names the agent's bypass
//! settings, which live with the daemon's state.

#![no_main]

#[allow(dead_code)]
#[path = "../../controller/src/config.rs"]
mod controller_config;

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::LazyLock;

/// Where each input is written to be loaded (configuration is read from a file).
static FILE: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("loggate-fuzz-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir.join("config.toml")
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = &*FILE;
    std::fs::write(file, text).expect("the temporary configuration file");
    let _ = controller_config::ControllerConfig::load(file);
    let _ = controller_config::ClientConfig::load(file);
});
