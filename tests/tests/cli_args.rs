//! End-to-end: how the `loggate` binary reads its command line (issue 17, items 4 and 6). One
//! duration grammar for every flag, the same sentence for the same mistake, negative values
//! said as such, `--agent|--user` as one choice, and the exit codes in `--help`. Nothing here
//! needs a running controller: a value is refused (or accepted) before any file is read.

use loggate_tests::{bin_dir, text};
use std::process::{Command, Output};

/// A client configuration whose certificate files do not exist: a command line that parses
/// ends at loading them (exit 1, "TLS configuration"), never on the network.
fn client_config() -> anyhow::Result<std::path::PathBuf> {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    if DIR.get().is_none() {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("client.toml"),
            "controller = \"127.0.0.1:1\"\n[tls]\nca = \"missing-ca.crt\"\n\
             cert = \"missing.crt\"\nkey = \"missing.key\"\n",
        )?;
        let _ = DIR.set(dir);
    }
    let dir = DIR
        .get()
        .ok_or_else(|| anyhow::anyhow!("no temporary folder"))?;
    Ok(dir.path().join("client.toml"))
}

/// Runs `loggate ARGS` with [`client_config`].
fn loggate(args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(bin_dir()?.join("loggate"))
        .args(args)
        .env("LOGGATE_CONFIG", client_config()?)
        .env_remove("LOGGATE_LOG")
        .output()?)
}

fn issue(extra: &[&str]) -> anyhow::Result<Output> {
    let mut args = vec![
        "grant",
        "issue",
        "--subject",
        "alice",
        "--host",
        "web-1",
        "--path",
        "/var/log/app/*.log",
        "--reason",
        "TEST-17",
    ];
    args.extend_from_slice(extra);
    loggate(&args)
}

fn cat_since(since: &str) -> anyhow::Result<Output> {
    loggate(&[
        "logs",
        "cat",
        "--host",
        "web-1",
        "--agent-addr",
        "127.0.0.1:1",
        "--since",
        since,
        "/var/log/app/api.log",
    ])
}

/// Exit 2 and exactly one line on stderr; the line.
fn one_usage_line(out: &Output, what: &str) -> String {
    let stderr = text(out).1;
    assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{what}: {stderr}");
    stderr.trim_end().to_string()
}

/// Parsed, then stopped at the missing certificate files (exit 1).
fn assert_parsed(out: &Output, what: &str) {
    let stderr = text(out).1;
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert!(stderr.contains("TLS configuration"), "{what}: {stderr}");
}

#[test]
fn ttl_start_in_and_since_read_one_duration_grammar() -> anyhow::Result<()> {
    for ttl in ["1h 30m", "1h30m", "90m", "1 hour 30 minutes"] {
        assert_parsed(&issue(&["--ttl", ttl])?, &format!("--ttl {ttl}"));
        assert_parsed(&cat_since(ttl)?, &format!("--since {ttl}"));
    }
    assert_parsed(
        &issue(&["--ttl", "1h", "--start-in", "1d 2h"])?,
        "--start-in 1d 2h",
    );
    Ok(())
}

#[test]
fn the_same_duration_mistake_gets_the_same_sentence_from_every_flag() -> anyhow::Result<()> {
    for mistake in ["1h30x", "10", "1y"] {
        let ttl = one_usage_line(&issue(&["--ttl", mistake])?, "--ttl");
        let start_in = one_usage_line(
            &issue(&["--ttl", "1h", "--start-in", mistake])?,
            "--start-in",
        );
        let since = one_usage_line(&cat_since(mistake)?, "--since");
        let sentence = ttl
            .strip_prefix("loggate: --ttl: ")
            .unwrap_or_else(|| panic!("--ttl {mistake}: {ttl}"));
        assert!(sentence.starts_with(&format!("{mistake:?} ")), "{ttl}");
        assert_eq!(
            start_in.strip_prefix("loggate: --start-in: "),
            Some(sentence),
            "{start_in}"
        );
        let since = since
            .strip_prefix("loggate: --since: ")
            .unwrap_or_else(|| panic!("--since {mistake}: {since}"));
        // --since adds the time forms it also accepts.
        assert!(since.starts_with(sentence), "{since} / {sentence}");
        assert!(since.contains("RFC 3339"), "{since}");
    }
    Ok(())
}

#[test]
fn a_negative_duration_is_said_to_be_negative_not_an_unexpected_argument() -> anyhow::Result<()> {
    for (flag, out) in [
        ("--start-in", issue(&["--ttl", "1h", "--start-in", "-5s"])?),
        ("--ttl", issue(&["--ttl", "-1h"])?),
        ("--since", cat_since("-5m")?),
    ] {
        let line = one_usage_line(&out, flag);
        assert!(
            line.starts_with(&format!("loggate: {flag}: \"-")) && line.contains("is negative"),
            "{line}"
        );
        assert!(!line.contains("unexpected argument"), "{line}");
    }
    Ok(())
}

#[test]
fn a_malformed_grant_id_is_bad_usage_before_anything_is_sent() -> anyhow::Result<()> {
    for bad in ["g-BAD", "x-1", "g-a b"] {
        let line = one_usage_line(&loggate(&["grant", "revoke", bad])?, bad);
        assert_eq!(
            line,
            format!(
                "loggate: <ID>: {bad:?} is not a grant id (g- and up to 64 lowercase letters, \
                 digits or '-', e.g. g-0123456789abcdef)"
            )
        );
    }
    let out = loggate(&["grant", "revoke", "g-0123456789abcdef"])?;
    assert_parsed(&out, "a well-formed id");
    Ok(())
}

#[test]
fn help_states_the_exit_codes_and_the_duration_limits() -> anyhow::Result<()> {
    let out = loggate(&["--help"])?;
    assert!(out.status.success());
    let help = text(&out).0;
    assert!(
        help.contains(
            "Exit codes: 0 ok, 1 error, 2 bad usage, 3 access denied, 4 stream ended by the \
             agent, 5 audit verification failed, 6 some hosts of a multi-host read failed, 7 \
             every host of a multi-host read failed."
        ),
        "{help}"
    );
    let out = loggate(&["grant", "issue", "--help"])?;
    let help = text(&out).0;
    assert!(help.contains("366 days"), "{help}");
    assert!(help.contains("max_ttl"), "{help}");
    let out = loggate(&["logs", "cat", "--help"])?;
    let help = text(&out).0;
    assert!(
        help.contains("1h 30m") && help.contains("RFC 3339"),
        "{help}"
    );
    Ok(())
}

#[test]
fn pki_issue_takes_exactly_one_of_agent_or_user() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("pki");
    let dir_arg = dir.to_string_lossy().into_owned();
    let init = loggate(&[
        "pki", "init", &dir_arg, "--agent", "web-1", "--user", "admin",
    ])?;
    assert!(init.status.success(), "{}", text(&init).1);
    for (args, expect) in [
        (
            vec!["--agent", "web-9", "--user", "zoe"],
            "cannot be used with",
        ),
        (vec![], "required"),
    ] {
        let mut all = vec!["pki", "issue", &dir_arg];
        all.extend(args.iter().copied());
        let out = loggate(&all)?;
        let stderr = text(&out).1;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(
            stderr.contains("--agent") && stderr.contains("--user"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!dir.join("agents/web-9.crt").exists());
    assert!(!dir.join("users/zoe.crt").exists());
    let out = loggate(&["pki", "issue", &dir_arg, "--agent", "web-9"])?;
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(dir.join("agents/web-9.crt").exists());
    Ok(())
}

/// Issue 14: every `loggate-agent` command shows an example after its `--help` and in its man
/// page, from the one table (agent/src/examples.rs); bad usage still exits 2.
#[test]
fn every_agent_command_shows_an_example_in_its_help_and_man_page() -> anyhow::Result<()> {
    let agent = bin_dir()?.join("loggate-agent");
    let man = tempfile::tempdir()?;
    let out = Command::new(&agent)
        .arg("manpages")
        .arg(man.path())
        .output()?;
    assert!(out.status.success(), "{}", text(&out).1);
    for command in ["run", "check-config", "enrol", "completions", "redact"] {
        let out = Command::new(&agent).args([command, "--help"]).output()?;
        let help = text(&out).0;
        assert!(out.status.success(), "{command}: {}", text(&out).1);
        assert!(
            help.contains(&format!("Examples:\n  loggate-agent {command}"))
                || help.contains("Examples:\n  LOGGATE_JOIN_TOKEN="),
            "{command} --help:\n{help}"
        );
        let page = std::fs::read_to_string(man.path().join(format!("loggate-agent-{command}.1")))?;
        // After the synopsis, which names the command too: the examples' section.
        let examples = page.split_once("Examples:").map(|(_, rest)| rest);
        assert!(
            examples.is_some_and(
                |e| e.contains(&format!("loggate\\-agent {}", command.replace('-', "\\-")))
            ),
            "{command}.1:\n{page}"
        );
    }
    let out = Command::new(&agent)
        .args(["run", "--no-such-flag"])
        .output()?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
    Ok(())
}
