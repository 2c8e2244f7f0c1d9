//! `loggate controller check-config FILE` (the unit's `ExecStartPre`): the configuration as
//! `serve` loads it, plus what `serve` reads next — the grant-signing key (mode 0600), a
//! certificate that is the controller's, a readable key and CA, the enrolment CA (`ca_cert`,
//! `ca_key`) — every problem at once.
//! (Apart from config.rs, which the `config` fuzz target compiles on its own.)

use crate::config::ControllerConfig;
use anyhow::{bail, Context};
use loggate_core::identity::Role;
use std::path::Path;

/// Ok, or every problem found (see [`loggate_core::config_check::problem_lines`]).
pub fn check(path: &Path) -> anyhow::Result<()> {
    let (config, mut problems) = ControllerConfig::load_fields(path)?;
    problems.take(crate::daemon::load_signing_key(&config.signing_key));
    problems.take(
        config
            .tls
            .own_identity(&config.trust_domain)
            .and_then(|own| {
                if own.role() != Role::Controller {
                    bail!(
                        "the controller certificate {} is for {own}, not for the controller",
                        config.tls.cert.display()
                    );
                }
                Ok(())
            }),
    );
    for (what, file) in [("tls.ca", &config.tls.ca), ("tls.key", &config.tls.key)] {
        problems.take(
            std::fs::File::open(file)
                .map(drop)
                .with_context(|| format!("{what}: cannot read {}", file.display())),
        );
    }
    // The enrolment CA as `serve` loads it: key mode 0600, a CA, the key its key.
    if let (Some(cert), Some(key)) = (&config.ca_cert, &config.ca_key) {
        problems.take(
            crate::pki::RuntimeCa::load(cert, key)
                .map(drop)
                .context("ca_cert/ca_key"),
        );
    }
    problems
        .into_result()
        .with_context(|| format!("controller configuration {}", path.display()))
}
