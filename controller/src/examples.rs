//! An example on every command's `--help` (and man page): one table, attached to clap's
//! command tree at start, checked by tests so that every command has one and every example
//! parses as the command it illustrates.

use clap::Command;

/// (command path below `loggate`, example lines). The examples are parsed by the tests.
const EXAMPLES: &[(&str, &[&str])] = &[
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
        ],
    ),
    (
        "logs tail",
        &[
            "loggate logs tail -n 100 --host web-1 /var/log/app/api.log",
            "loggate logs tail --follow --host web-1 --host web-2 /var/log/app/api.log",
        ],
    ),
    (
        "logs grep",
        &[
            "loggate logs grep --host web-1 'timeout|refused' /var/log/app/api.log --since 30m",
            "loggate logs grep --selector team=payments --parallel 8 ERROR /var/log/app/api.log",
        ],
    ),
    (
        "logs journal",
        &[
            "loggate logs journal --host web-1 --unit nginx.service --since 1h",
            "loggate logs journal --host web-1 --unit nginx.service --follow --grep 'status=5'",
        ],
    ),
    (
        "logs ls",
        &[
            "loggate logs ls --host web-1",
            "loggate logs ls --host web-1 '/var/log/app/api.log*' --output json",
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
    attach_at(command, "")
}

fn attach_at(command: Command, path: &str) -> Command {
    let command = match EXAMPLES.iter().find(|(p, _)| *p == path) {
        Some((_, lines)) => {
            let text = lines
                .iter()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n");
            let before = command
                .get_after_help()
                .map(|h| format!("{h}\n\n"))
                .unwrap_or_default();
            command.after_help(format!("{before}Examples:\n{text}"))
        }
        None => command,
    };
    command.mut_subcommands(|sub| {
        let name = sub.get_name().to_string();
        let path = if path.is_empty() {
            name
        } else {
            format!("{path} {name}")
        };
        attach_at(sub, &path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command path of the tree, hidden ones and `help` left out.
    fn paths(command: &Command, path: &str, out: &mut Vec<String>) {
        for sub in command.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            let p = if path.is_empty() {
                sub.get_name().to_string()
            } else {
                format!("{path} {}", sub.get_name())
            };
            paths(sub, &p, out);
            out.push(p);
        }
    }

    #[test]
    fn every_command_has_an_example() {
        let mut all = Vec::new();
        paths(&crate::cli_command(), "", &mut all);
        let missing: Vec<_> = all
            .iter()
            .filter(|p| !EXAMPLES.iter().any(|(e, _)| e == p))
            .collect();
        assert!(
            missing.is_empty(),
            "commands without an example: {missing:#?}"
        );
        let unknown: Vec<_> = EXAMPLES
            .iter()
            .filter(|(e, _)| !all.iter().any(|p| p == e))
            .collect();
        assert!(unknown.is_empty(), "examples of no command: {unknown:#?}");
    }

    /// `line` split as a shell would split it here: words, single quotes, and a redirection
    /// that ends the command.
    fn words(line: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut word = String::new();
        let mut quoted = false;
        let mut any = false;
        for c in line.chars() {
            match c {
                '\'' => {
                    quoted = !quoted;
                    any = true;
                }
                ' ' if !quoted => {
                    if any {
                        out.push(std::mem::take(&mut word));
                    }
                    any = false;
                }
                '>' if !quoted => break,
                _ => {
                    word.push(c);
                    any = true;
                }
            }
        }
        if any {
            out.push(word);
        }
        out
    }

    #[test]
    fn every_example_parses_as_the_command_it_illustrates() {
        for (path, lines) in EXAMPLES {
            for line in *lines {
                let args = words(line);
                let matches = crate::cli_command()
                    .try_get_matches_from(&args)
                    .unwrap_or_else(|e| panic!("{line}: {e}"));
                let mut named = Vec::new();
                let mut at = &matches;
                while let Some((name, sub)) = at.subcommand() {
                    named.push(name);
                    at = sub;
                }
                // An example of a group shows one of its commands.
                let shown = named.join(" ");
                assert!(
                    shown == *path || shown.starts_with(&format!("{path} ")),
                    "{line}: parses as `{shown}`, listed under `{path}`"
                );
                <crate::Cli as clap::FromArgMatches>::from_arg_matches(&matches)
                    .unwrap_or_else(|e| panic!("{line}: {e}"));
            }
        }
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
