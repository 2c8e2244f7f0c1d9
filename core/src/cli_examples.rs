//! Examples after every command's `--help` and in its man page, for both binaries: each keeps
//! one table of (command path, example lines) — `loggate`'s in `controller/src/examples.rs`,
//! `loggate-agent`'s in `agent/src/examples.rs` — that [`attach`] hangs on clap's command tree
//! at start (so `--help`, the completions and the man pages, which are generated from that tree,
//! all show them). [`problems`] is what each binary's tests check: every visible command has an
//! example, every example belongs to a command, and every example line parses as the command it
//! illustrates, down to the binary's typed arguments.

use clap::{ArgMatches, Command};

/// (command path below the binary, e.g. `grant issue`; example lines, each a whole command
/// line as typed in a shell).
pub type Examples = [(&'static str, &'static [&'static str])];

/// `command` (a binary's whole tree) with each command's examples after its help, below any
/// text it already has there.
pub fn attach(command: Command, examples: &Examples) -> Command {
    attach_at(command, "", examples)
}

fn attach_at(command: Command, path: &str, examples: &Examples) -> Command {
    let command = match examples.iter().find(|(p, _)| *p == path) {
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
        attach_at(sub, &path, examples)
    })
}

/// Every command path of `command`'s tree (`grant`, `grant issue`, …), hidden commands and
/// `help` left out: the commands a person sees, each of which needs an example.
pub fn command_paths(command: &Command) -> Vec<String> {
    let mut out = Vec::new();
    paths(command, "", &mut out);
    out
}

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

/// `line` split as a POSIX shell would split it here: words separated by blanks, single quotes
/// (everything literal), double quotes (literal but for `\` before `"`, `\`, `$` or a
/// backquote), a backslash escaping the next character outside quotes, and a redirection
/// (`>` or `<`, unquoted) that ends the command. Leading `NAME=value` words (environment
/// assignments) are returned apart. The examples are checked as a reader's shell would run
/// them, so `-e "status=5.. timeout"` is one argument, as it is to the shell.
pub fn shell_words(line: &str) -> (Vec<(String, String)>, Vec<String>) {
    #[derive(Clone, Copy, PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote = Quote::None;
    let mut any = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Quote::None, '\'') => {
                quote = Quote::Single;
                any = true;
            }
            (Quote::Single, '\'') | (Quote::Double, '"') => quote = Quote::None,
            (Quote::None, '"') => {
                quote = Quote::Double;
                any = true;
            }
            (Quote::None, '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                any = true;
            }
            (Quote::Double, '\\') => match chars.peek() {
                Some(&next @ ('"' | '\\' | '$' | '`')) => {
                    word.push(next);
                    chars.next();
                }
                _ => word.push(c),
            },
            (Quote::None, ' ' | '\t') => {
                if any {
                    out.push(std::mem::take(&mut word));
                }
                any = false;
            }
            (Quote::None, '>' | '<') => break,
            _ => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    let is_assignment = |w: &String| {
        w.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
    };
    let assignments = out.iter().take_while(|w| is_assignment(w)).count();
    let words = out.split_off(assignments);
    let env = out
        .into_iter()
        .filter_map(|w| {
            w.split_once('=')
                .map(|(n, v)| (n.to_string(), v.to_string()))
        })
        .collect();
    (env, words)
}

/// The long flag of the argument that reads environment variable `name` (`#[arg(env)]`) in
/// the command the parsed words end in.
fn flag_of_env(command: &Command, words: &[String], name: &str) -> Option<String> {
    let mut at = command;
    for word in words.iter().skip(1) {
        match at.find_subcommand(word) {
            Some(sub) => at = sub,
            None => break,
        }
    }
    at.get_arguments()
        .find(|a| a.get_env().is_some_and(|e| e == name))
        .and_then(|a| a.get_long())
        .map(|long| format!("--{long}"))
}

/// Everything wrong with `examples` for `command` (the binary's tree, examples attached or
/// not), one sentence each; empty when every visible command has an example, every example
/// names a command, and every line parses as a command at or below the one it is listed
/// under and passes `typed` (the binary's own conversion of the matches, e.g.
/// `Cli::from_arg_matches`). A line's leading `NAME=value` is passed as the argument that
/// reads environment variable `NAME`, as clap would read it.
pub fn problems(
    command: &Command,
    examples: &Examples,
    typed: impl Fn(&ArgMatches) -> Result<(), clap::Error>,
) -> Vec<String> {
    let all = command_paths(command);
    let mut out: Vec<String> = all
        .iter()
        .filter(|p| !examples.iter().any(|(e, _)| e == *p))
        .map(|p| format!("`{p}` has no example"))
        .collect();
    for (path, lines) in examples {
        if !path.is_empty() && !all.iter().any(|p| p == path) {
            out.push(format!(
                "examples listed under `{path}`, which is no command"
            ));
        }
        if lines.is_empty() {
            out.push(format!("`{path}` lists no example line"));
        }
        for line in *lines {
            let (env, mut args) = shell_words(line);
            if args.first().map(String::as_str) != Some(command.get_name()) {
                out.push(format!(
                    "{line}: does not start with `{}`",
                    command.get_name()
                ));
                continue;
            }
            for (name, value) in env {
                match flag_of_env(command, &args, &name) {
                    Some(flag) => args.extend([flag, value]),
                    None => out.push(format!("{line}: no argument reads {name}")),
                }
            }
            let matches = match command.clone().try_get_matches_from(&args) {
                Ok(m) => m,
                Err(e) => {
                    out.push(format!("{line}: {e}"));
                    continue;
                }
            };
            let mut named = Vec::new();
            let mut at = &matches;
            while let Some((name, sub)) = at.subcommand() {
                named.push(name);
                at = sub;
            }
            // An example of a group shows one of its commands.
            let shown = named.join(" ");
            if !(shown == *path || shown.starts_with(&format!("{path} "))) {
                out.push(format!(
                    "{line}: parses as `{shown}`, listed under `{path}`"
                ));
            }
            if let Err(e) = typed(&matches) {
                out.push(format!("{line}: {e}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Arg;

    fn tool() -> Command {
        Command::new("tool")
            .subcommand(
                Command::new("join")
                    .arg(
                        Arg::new("token")
                            .long("token")
                            .env("TOOL_TOKEN")
                            .required(true),
                    )
                    .arg(Arg::new("id").long("id").required(true)),
            )
            .subcommand(Command::new("run"))
            .subcommand(Command::new("secret").hide(true))
    }

    /// Review O5: double quotes and backslashes were taken as ordinary characters, so an
    /// example's `"a b"` was checked as two words where the shell passes one.
    #[test]
    fn shell_words_split_double_quotes_and_backslashes_as_a_shell_does() {
        assert_eq!(
            shell_words(r#"tool run "a b""#).1,
            vec!["tool", "run", "a b"]
        );
        assert_eq!(
            shell_words(r#"tool -e "status=5.. timeout" x"#).1,
            vec!["tool", "-e", "status=5.. timeout", "x"]
        );
        assert_eq!(shell_words(r"tool a\ b c").1, vec!["tool", "a b", "c"]);
        assert_eq!(
            shell_words(r#"tool "say \"hi\" \$HOME \n" 'x\"y'"#).1,
            vec!["tool", r#"say "hi" $HOME \n"#, r#"x\"y"#]
        );
        assert_eq!(shell_words(r#"tool "" ''"#).1, vec!["tool", "", ""]);
        assert_eq!(
            shell_words(r#"tool "a > b" > out"#).1,
            vec!["tool", "a > b"]
        );
    }

    #[test]
    fn shell_words_split_quotes_redirections_and_leading_assignments() {
        let (env, words) = shell_words("A_1=x B=y tool run 'two words' --k=v > out");
        assert_eq!(shell_words("tool run < in").1, vec!["tool", "run"]);
        assert_eq!(
            env,
            vec![("A_1".into(), "x".into()), ("B".into(), "y".into())]
        );
        assert_eq!(words, vec!["tool", "run", "two words", "--k=v"]);
    }

    #[test]
    fn examples_pass_when_every_visible_command_has_one_that_parses() {
        const GOOD: &Examples = &[
            ("join", &["TOOL_TOKEN=t-1 tool join --id web-7"]),
            ("run", &["tool run"]),
        ];
        assert_eq!(problems(&tool(), GOOD, |_| Ok(())), Vec::<String>::new());
    }

    #[test]
    fn a_missing_example_one_of_no_command_and_one_that_does_not_parse_are_named() {
        const BAD: &Examples = &[("join", &["tool join --id web-7"]), ("walk", &["tool run"])];
        let found = problems(&tool(), BAD, |_| Ok(()));
        assert!(
            found.iter().any(|p| p == "`run` has no example"),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("`walk`, which is no command")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("tool join --id web-7: ")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("parses as `run`, listed under `walk`")),
            "{found:?}"
        );
        assert!(
            !found.iter().any(|p| p.contains("secret")),
            "hidden: {found:?}"
        );
    }

    #[test]
    fn examples_are_shown_after_the_help_of_their_command() {
        const SOME: &Examples = &[("run", &["tool run"])];
        let mut command = attach(tool(), SOME);
        let help = command
            .find_subcommand_mut("run")
            .expect("run")
            .render_long_help()
            .to_string();
        assert!(help.contains("Examples:\n  tool run"), "{help}");
    }
}
