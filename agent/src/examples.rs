//! An example on every `loggate-agent` command's `--help` and man page: one table, attached to
//! clap's command tree at start by `loggate_core::cli_examples` (the mechanism `loggate`
//! shares), checked by tests so that every command has one and every example parses as the
//! command it illustrates.

use clap::Command;
use loggate_core::cli_examples::{self, Examples};

/// (command path below `loggate-agent`, example lines). The examples are parsed by the tests.
const EXAMPLES: &Examples = &[
    (
        "run",
        &[
            "loggate-agent run --config /etc/loggate/agent.toml",
            "loggate-agent run --config /etc/loggate/agent.toml --log-format json",
        ],
    ),
    (
        "check-config",
        &["loggate-agent check-config /etc/loggate/agent.toml"],
    ),
    (
        "enrol",
        &["LOGGATE_JOIN_TOKEN=lgj_3f9a0c2b7e1d4a5b loggate-agent enrol --controller ctl-1.example.org:7401 --controller ctl-2.example.org:7401 --ca-pin sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 --id web-7"],
    ),
    (
        "bypass",
        &["loggate-agent bypass unpin --pin-dir /sys/fs/bpf/loggate"],
    ),
    (
        "bypass unpin",
        &[
            "loggate-agent bypass unpin",
            "loggate-agent bypass unpin --pin-dir /sys/fs/bpf/loggate-staging",
        ],
    ),
    (
        "completions",
        &["loggate-agent completions bash > /etc/bash_completion.d/loggate-agent"],
    ),
    (
        "redact",
        &[
            "loggate-agent redact --profile default --stats /var/log/app/api.log",
            "loggate-agent redact --config /etc/loggate/agent.toml --profile payments < sample.log",
            "loggate-agent redact --list-detectors",
        ],
    ),
];

/// `command` (the tree of `loggate-agent`) with each command's examples after its help.
pub fn attach(command: Command) -> Command {
    cli_examples::attach(command, EXAMPLES)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible command has an example, and every example parses as the command it is
    /// listed under, down to `Cli`'s typed arguments.
    #[test]
    fn every_agent_command_has_an_example_that_parses_as_it() {
        let problems = cli_examples::problems(&crate::cli_command(), EXAMPLES, |m| {
            <crate::Cli as clap::FromArgMatches>::from_arg_matches(m).map(|_| ())
        });
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn agent_examples_are_shown_after_the_help() {
        let mut command = crate::cli_command();
        let help = command
            .find_subcommand_mut("check-config")
            .expect("check-config")
            .render_long_help()
            .to_string();
        assert!(
            help.contains("Examples:\n  loggate-agent check-config /etc/loggate/agent.toml"),
            "{help}"
        );
    }
}
