//! An example on every command's `--help` (and man page): one table, attached to clap's
//! command tree at start, checked by tests so that every command has one and every example
//! parses as the command it illustrates (the mechanism, shared with `loggate-agent`, is
//! `loggate_core::cli_examples`).

use clap::Command;
use loggate_core::cli_examples::{self, Examples};

/// (command path below `loggate`, example lines). The examples are parsed by the tests.
const EXAMPLES: &Examples = &[
    ("pki", &["loggate pki init ./pki --agent web-1 --user alice --user admin"]),
    (
        "pki init",
        &["loggate pki init ./pki --trust-domain example.org --agent web-1 --user admin"],
    ),
    (
        "pki issue",
        &[
            "loggate pki issue ./pki --user alice --group payments-oncall",
            "loggate pki issue ./pki --agent web-2",
        ],
    ),
    ("pki pin", &["loggate pki pin ./pki/ca.crt"]),
    (
        "pki new-signing-key",
        &["loggate pki new-signing-key --out /etc/loggate/controller/grant-signing-2.key"],
    ),
    (
        "controller",
        &["loggate controller serve --config /etc/loggate/controller.toml"],
    ),
    (
        "controller serve",
        &["loggate controller serve --config /etc/loggate/controller.toml --log-format json"],
    ),
    (
        "controller check-config",
        &["loggate controller check-config /etc/loggate/controller.toml"],
    ),
    (
        "grant",
        &[
            "loggate grant request --host web-1 --path /var/log/app/api.log --ttl 1h --reason INC-4711",
            "loggate grant list --pending",
        ],
    ),
    (
        "grant request",
        &[
            "loggate grant request --host web-1 --path /var/log/app/api.log --ttl 1h --reason INC-4711 --wait",
            "loggate grant request --selector env=prod,team=payments --path '/var/log/app/*.log' --ttl 30m --reason INC-4711 --break-glass",
            "loggate grant request --host web-1 --unit nginx.service --ttl 1h --reason INC-4711",
        ],
    ),
    ("grant approve", &["loggate grant approve r-5f2c9e1a"]),
    (
        "grant deny",
        &["loggate grant deny r-5f2c9e1a --comment 'use the staging logs first'"],
    ),
    ("grant cancel", &["loggate grant cancel r-5f2c9e1a"]),
    (
        "grant issue",
        &["loggate grant issue --subject alice --host web-1 --path '/var/log/app/*.log' --ttl 2h --reason INC-4711"],
    ),
    (
        "grant list",
        &["loggate grant list", "loggate grant list --all --subject alice --output json"],
    ),
    (
        "grant revoke",
        &["loggate grant revoke g-96b181097a6d5d37 --reason 'incident closed'"],
    ),
    (
        "logs",
        &[
            "loggate logs tail --follow --host web-1 /var/log/app/api.log",
            "loggate logs grep --selector env=prod 'status=5[0-9][0-9]' /var/log/app/api.log",
        ],
    ),
    (
        "logs cat",
        &[
            "loggate logs cat --host web-1 /var/log/app/api.log --since 1h",
            "loggate logs cat --host 'web-*' --merge /var/log/app/api.log",
            "loggate logs cat --host web-1 /var/log/app/api.log.2.gz",
            "loggate logs cat --host web-1 '/var/log/app/api.log*' --since 1d",
        ],
    ),
    (
        "logs tail",
        &[
            "loggate logs tail -n 100 --host web-1 /var/log/app/api.log",
            "loggate logs tail --follow --host web-1 --host web-2 /var/log/app/api.log",
            "loggate logs tail --follow --host 'web-*' '/var/log/app/api.log*'",
        ],
    ),
    (
        "logs grep",
        &[
            "loggate logs grep --host web-1 'timeout|refused' /var/log/app/api.log --since 30m",
            "loggate logs grep --selector team=payments --parallel 8 ERROR /var/log/app/api.log",
            "loggate logs grep --host web-1 'status=5[0-9][0-9]' '/var/log/app/*.log'",
        ],
    ),
    (
        "logs journal",
        &[
            "loggate logs journal --host web-1 --unit nginx.service --since 1h",
            "loggate logs journal --host web-1 --unit nginx.service --follow --grep 'status=5'",
            "loggate logs journal --host 'web-*' --unit nginx.service --since 1h --merge",
        ],
    ),
    (
        "logs ls",
        &[
            "loggate logs ls --host web-1",
            "loggate logs ls --host web-1 '/var/log/app/api.log*' --output json",
            "loggate logs ls --selector env=prod,team=payments '/var/log/app/*'",
        ],
    ),
    ("whoami", &["loggate whoami"]),
    (
        "login",
        &[
            "loggate login --controller loggate.example.org:7444 --ca ./ca.crt",
            "loggate login --device",
            "loggate login --fresh",
        ],
    ),
    ("logout", &["loggate logout"]),
    (
        "audit",
        &["loggate audit verify /var/lib/loggate/audit.jsonl --key /etc/loggate/audit.pub"],
    ),
    (
        "audit verify",
        &[
            "loggate audit verify /var/lib/loggate/audit.jsonl.1 /var/lib/loggate/audit.jsonl --key /etc/loggate/audit.pub",
            "loggate audit verify audit.jsonl --key audit.pub --checkpoints checkpoints.jsonl",
        ],
    ),
    (
        "audit checkpoints",
        &["loggate audit checkpoints --host web-1 --output json"],
    ),
    (
        "policy",
        &["loggate policy check --subject alice --host web-1 --path /var/log/app/api.log --ttl 1h"],
    ),
    (
        "policy check",
        &["loggate policy check --subject alice --selector env=prod --path '/var/log/app/*.log' --ttl 4h --output json"],
    ),
    ("policy reload", &["loggate policy reload"]),
    ("access", &["loggate access review --since 30d"]),
    (
        "access review",
        &["loggate access review --since 7d --output json"],
    ),
    (
        "access ack",
        &["loggate access ack g-96b181097a6d5d37 --comment 'reviewed with the on-call lead'"],
    ),
    (
        "agent",
        &["loggate agent list --selector env=prod", "loggate agent status web-1"],
    ),
    (
        "agent token",
        &["loggate agent token create --labels env=prod,team=payments --ttl 1h"],
    ),
    (
        "agent token create",
        &[
            "loggate agent token create --labels env=prod,team=payments --ttl 1h --uses 20",
            "loggate agent token create --reenrol --output json",
        ],
    ),
    ("agent token list", &["loggate agent token list"]),
    ("agent token revoke", &["loggate agent token revoke t-1c2d3e4f"]),
    (
        "agent list",
        &["loggate agent list --selector env=prod --output json"],
    ),
    ("agent remove", &["loggate agent remove web-1"]),
    ("agent status", &["loggate agent status web-1"]),
    (
        "user",
        &["loggate user lock alice --reason 'laptop stolen, INC-4712'", "loggate user list"],
    ),
    (
        "user lock",
        &["loggate user lock alice --reason 'laptop stolen, INC-4712'"],
    ),
    (
        "user unlock",
        &["loggate user unlock alice --reason 'new laptop issued'"],
    ),
    ("user list", &["loggate user list --output json"]),
    (
        "completions",
        &["loggate completions bash > /etc/bash_completion.d/loggate"],
    ),
];

/// `command` (the tree of `loggate`) with each command's examples after its help.
pub fn attach(command: Command) -> Command {
    cli_examples::attach(command, EXAMPLES)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible command has an example, and every example parses as the command it is
    /// listed under, down to `Cli`'s typed arguments.
    #[test]
    fn every_command_has_an_example_that_parses_as_it() {
        let problems = cli_examples::problems(&crate::cli_command(), EXAMPLES, |m| {
            <crate::Cli as clap::FromArgMatches>::from_arg_matches(m).map(|_| ())
        });
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn examples_are_shown_after_the_help() {
        let mut command = crate::cli_command();
        let help = command
            .find_subcommand_mut("grant")
            .and_then(|g| g.find_subcommand_mut("issue"))
            .expect("grant issue")
            .render_long_help()
            .to_string();
        assert!(
            help.contains("Examples:\n  loggate grant issue --subject alice"),
            "{help}"
        );
        // `--json`, the older spelling of `--output json`, is accepted but not shown.
        assert!(!help.contains("--json"), "{help}");
        assert!(help.contains("--output <OUTPUT>"), "{help}");
        let old = crate::cli_command()
            .try_get_matches_from(["loggate", "grant", "list", "--json"])
            .expect("--json still parses");
        let list = old
            .subcommand_matches("grant")
            .and_then(|g| g.subcommand_matches("list"))
            .expect("grant list");
        assert!(list.get_flag("json"));
        let top = crate::cli_command().render_long_help().to_string();
        assert!(
            top.contains("Exit codes: 0 ok"),
            "the exit codes stay: {top}"
        );
    }
}
