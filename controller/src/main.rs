//! `loggate`: the controller daemon and every human-facing command.

#![forbid(unsafe_code)]
// A cast that can silently change a number fails the build (issue 17 item 8): a duration's
// seconds (u64) that wrap to a negative i64 make a grant or request end before it starts.
// Convert with `try_from` and decide what out of range means.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod check_config;
mod cli;
mod config;
mod daemon;
mod examples;
mod oidc;
mod pki;
mod pki_cmd;
mod policy;
mod service;
mod store;

use clap::{Args, Parser, Subcommand};
use cli::{CliResult, Failure};
use config::ClientConfig;
use loggate_proto::ReadMode;
use std::path::PathBuf;
use std::process::ExitCode;

/// loggate: temporary, scoped, audited access to production log files.
///
/// People read logs with `loggate logs …` using their client certificate; admins issue and
/// revoke grants with `loggate grant …`; the controller runs as `loggate controller serve`.
/// Durations ("90s", "10m", "2h", "1d", "1h30m", "1h 30m") follow one grammar in every flag
/// and configuration file.
#[derive(Parser)]
#[command(
    name = "loggate",
    version,
    propagate_version = true,
    after_help = cli::exit_codes_help()
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Development PKI: a CA, certificates and the grant-signing key.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// The controller daemon.
    #[command(subcommand)]
    Controller(ControllerCommand),
    /// Issue, list and revoke grants.
    #[command(subcommand)]
    Grant(GrantCommand),
    /// Read log files on an agent, through the gate.
    #[command(subcommand)]
    Logs(LogsCommand),
    /// Show who the controller thinks you are (and enrol your certificate key).
    Whoami(ClientOpts),
    /// Sign in with your organisation's identity provider and get a short-lived certificate
    /// (kept in the configuration folder; the next commands use it).
    Login {
        /// The controller's sign-in address, HOST:PORT (its `[enrolment] listen`); remembered
        /// in the configuration file.
        #[arg(long)]
        controller: Option<String>,
        /// The loggate CA certificate (PEM) the controller's certificate is checked with;
        /// default: the configuration file's.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Sign in on another device (a code to enter there), for a host without a browser.
        #[arg(long)]
        device: bool,
        /// Make the identity provider ask for your password again, even with a session.
        #[arg(long)]
        fresh: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Delete the key and certificate of your last sign-in.
    Logout(ClientOpts),
    /// Check audit files.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The access policy: check what it allows, reload it.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The periodic access review (admins).
    #[command(subcommand)]
    Access(AccessCommand),
    /// Agents: list, ask one about itself, remove them; join tokens for enrolment (admins).
    #[command(subcommand)]
    Agent(AgentCommand),
    /// People (admins): lock someone out everywhere, unlock them, list who signed in.
    #[command(subcommand)]
    User(UserCommand),
    /// Print the shell completion script for SHELL on standard output.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// For `cargo xtask package`: write the man pages of every command (roff) into DIR.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Lock a person out: every certificate of theirs refused by the controller at once, their
    /// grants revoked (agents cut their live streams), their pending requests cancelled, and
    /// `loggate login` refused until `loggate user unlock`.
    ///
    /// Example: loggate user lock alice --reason "laptop stolen, INC-9"
    Lock {
        /// A user name or spiffe://…/user/NAME.
        name: String,
        /// Why (recorded in user.locked).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Let a locked person sign in again; their certificates from before the lock stay
    /// refused.
    Unlock {
        name: String,
        /// Why (recorded in user.unlocked).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// The people who signed in with the IdP or were locked: last sign-in, certificate end,
    /// IdP groups, locked or not.
    List {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Join tokens for `loggate-agent enrol` (admins).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The agents the controller knows: id, connected or not, address, the controller replica
    /// it last connected to, last seen, certificate end (enrolled agents), labels.
    List {
        /// A label selector ("env=prod,team=payments").
        #[arg(long, default_value = "")]
        selector: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Remove an agent (admins): its certificates are refused by the controller from now on and
    /// its stream is cut; it may enrol again with a new join token.
    Remove {
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// An agent's version, uptime, grants held, bypass-audit mode, audit position, SIEM
    /// sinks' state and certificate end, asked of the agent itself. Only users in the agent's
    /// `status_readers` may ask (exit 3 otherwise).
    ///
    /// Example: loggate agent status web-1
    Status {
        /// The agent id.
        host: String,
        /// Dial this address instead of asking the controller where the agent is.
        #[arg(long)]
        agent_addr: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token and print it once (the controller keeps only its hash).
    Create {
        #[command(flatten)]
        args: cli::agents::TokenCreateArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List the join tokens (never their secrets).
    List {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Revoke a join token by its id (as `list` shows it); `remove` is the same command (the
    /// name DESIGN.md lists).
    #[command(alias = "remove")]
    Revoke {
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand)]
enum AccessCommand {
    /// Roles, who holds and used them, the grants of the period, break-glass grants not
    /// reviewed yet.
    Review {
        /// The period: this long until now ("30d").
        #[arg(long, value_parser = loggate_core::duration::value_parser, default_value = "30d")]
        since: std::time::Duration,
        #[arg(long, value_enum, default_value = "text")]
        output: cli::governance::ReviewOutput,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Mark a break-glass grant reviewed (never one's own).
    Ack {
        /// The grant id (`g-…`).
        id: String,
        /// The review's conclusion (required).
        #[arg(long)]
        comment: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Which role would allow an access (and with which approval rule), or why none does: the
    /// same decision `grant request` gets. Exit 0 allowed, 3 refused.
    Check {
        #[command(flatten)]
        args: cli::governance::CheckArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Load the controller's policy file again (admins); an invalid one is refused whole and
    /// the one in force stays.
    Reload {
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify an audit file's hash chain. Exit 0 when it holds; exit 5 and the first broken
    /// line otherwise.
    Verify {
        /// The audit file (JSON lines), e.g. an agent's audit.jsonl; several files are checked
        /// as one chain, in the order given (rotated files first, oldest first).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The writer's checkpoint public key file (e.g. the agent's
        /// `state/audit-signing.key.pub`); repeatable. Without it signatures are not checked.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        /// Checkpoints held off the host (`loggate audit checkpoints --host H > FILE`): catches
        /// a truncated tail and a rewrite of the whole file, even a re-signed one.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
    },
    /// Export the checkpoints the controller holds for a host (admins), oldest first, in a
    /// format `audit verify --checkpoints` reads.
    Checkpoints {
        /// The agent id.
        #[arg(long)]
        host: String,
        /// text: the exact checkpoint records; json: with the controller's id, time and status.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a development CA, controller/agent/user certificates, the grant-signing key and
    /// one client configuration per user in DIR.
    Init(pki_cmd::InitArgs),
    /// Issue one more certificate from the CA in DIR.
    Issue(pki_cmd::IssueArgs),
    /// Print the pin of a CA certificate for `loggate-agent enrol --ca-pin`: sha256 of its
    /// public key (SubjectPublicKeyInfo).
    Pin {
        /// The CA certificate (PEM), e.g. DIR/ca.crt of `loggate pki init`.
        ca: PathBuf,
    },
    /// Make a new grant-signing key alone (for a key rotation): FILE (0600) and FILE's name
    /// with `.pub` for the agents' `grant_keys`; an existing file is never overwritten.
    NewSigningKey(pki_cmd::NewSigningKeyArgs),
}

#[derive(Subcommand)]
enum ControllerCommand {
    /// Run the controller (gRPC over mTLS, state in SQLite) until SIGINT/SIGTERM.
    Serve {
        /// The controller's configuration file (see docs/configuration.md).
        #[arg(long)]
        config: PathBuf,
        /// How log lines are written on stderr: `text`, or `json` (one object per line).
        #[arg(long, env = "LOGGATE_LOG_FORMAT", default_value = "text",
              value_parser = clap::builder::PossibleValuesParser::new(loggate_core::daemon::LogFormat::NAMES))]
        log_format: String,
    },
    /// Check a configuration file as `serve` would load it and print every problem found, one
    /// per line. Exit 0 when it is valid, 2 otherwise (the systemd unit's `ExecStartPre`).
    CheckConfig {
        /// The controller's configuration file.
        file: PathBuf,
    },
}

#[derive(Args, Clone)]
struct ClientOpts {
    /// Client configuration: controller address, CA and your certificate and key (default:
    /// `config.toml` in `$LOGGATE_CONFIG_DIR` or `~/.config/loggate/`).
    #[arg(long, env = "LOGGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
}

impl ClientOpts {
    fn load(&self) -> Result<ClientConfig, Failure> {
        let path = self
            .config
            .clone()
            .unwrap_or_else(ClientConfig::default_path);
        let config = ClientConfig::load(&path).map_err(|e| Failure::error(&e))?;
        cli::config_file::check_sign_in_current(&config)?;
        Ok(config)
    }
}

#[derive(Subcommand)]
enum GrantCommand {
    /// Ask for access under the access policy: pending until approved, or granted at once
    /// (auto, break-glass).
    Request {
        #[command(flatten)]
        args: cli::governance::RequestArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Approve a pending request (an eligible approver, never its requester).
    Approve {
        /// The request id (`r-…`).
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        format: cli::Format,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Deny a pending request (an eligible approver); a denial ends it whatever approvals it had.
    Deny {
        /// The request id (`r-…`).
        id: String,
        /// Why (required).
        #[arg(long)]
        comment: String,
        #[command(flatten)]
        format: cli::Format,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Withdraw your pending request.
    Cancel {
        /// The request id (`r-…`).
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Issue a grant directly (admins only): break-glass, audited and flagged for review.
    Issue {
        /// The reader: a user name ("alice") or SPIFFE ID.
        #[arg(long)]
        subject: String,
        /// Agent id the grant covers (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Agent label ("env=prod") the grant covers (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Absolute path glob ("/var/log/app/*.log"; `**` crosses folders) (repeatable).
        #[arg(long = "path", required_unless_present = "units")]
        paths: Vec<String>,
        /// A systemd journal unit, named exactly ("nginx.service") (repeatable); a unit never
        /// covers a file, a path never covers the journal.
        #[arg(long = "unit")]
        units: Vec<String>,
        /// How long the grant lasts ("30m", "2h", "1h 30m"): at least 1s, at most the
        /// controller's max_ttl (8h unless configured; never more than 366 days).
        #[arg(long, value_parser = loggate_core::duration::value_parser, allow_hyphen_values = true)]
        ttl: std::time::Duration,
        /// Why: a ticket or incident id. Recorded in the audit stream.
        #[arg(long)]
        reason: String,
        /// Redaction profile the agent applies: one of the controller's `redaction_profiles`
        /// (default list: "default"); `raw` (none) only where both controller and agent allow it.
        #[arg(long, default_value = "default")]
        redaction: String,
        /// Let the grant start this long from now instead of now ("10m", "1d 2h"); at most
        /// 366 days ahead.
        #[arg(long, value_parser = cli::start_in_arg, allow_hyphen_values = true)]
        start_in: Option<std::time::Duration>,
        #[command(flatten)]
        format: cli::Format,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List grants: yours, or everyone's for an admin.
    List {
        /// Include expired and revoked grants.
        #[arg(long)]
        all: bool,
        /// Only this subject's grants (admins).
        #[arg(long, default_value = "")]
        subject: String,
        #[command(flatten)]
        format: cli::Format,
        /// List pending requests instead: those you can review, and your own.
        #[arg(long)]
        pending: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Revoke a grant (admins, or the grant's own subject). Agents cut its streams within 1 s.
    Revoke {
        /// The grant id (`g-…`, from `grant issue` or `grant list`).
        #[arg(value_parser = |text: &str| loggate_core::grant::GrantId::new(text))]
        id: loggate_core::grant::GrantId,
        /// Why: recorded in the audit stream.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Args)]
struct ReadOpts {
    /// The agent id (as in your grant). Repeatable, and a glob ("web-*") matches the agent ids
    /// of the controller's registry: several hosts are read in parallel, each line prefixed
    /// with its host, and a host that fails is one line on stderr while the others go on (exit
    /// 6 some hosts failed, 7 all failed).
    #[arg(
        long = "host",
        value_name = "HOST",
        required_unless_present = "selector"
    )]
    hosts: Vec<String>,
    /// Read from every agent whose labels match this selector ("env=prod,team=payments",
    /// "env in (prod,staging)"), as `loggate agent list --selector` shows them; with --host,
    /// an agent must match both.
    #[arg(long)]
    selector: Option<String>,
    /// Dial this address instead of asking the controller where the agent is (one --host only).
    #[arg(long, conflicts_with = "selector")]
    agent_addr: Option<String>,
    /// Several hosts: how many agents are connected at once (1 to 1024).
    #[arg(long, default_value_t = cli::reads::DEFAULT_PARALLEL,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(cli::reads::MAX_PARALLEL)))]
    parallel: u16,
    /// Several hosts: stop at the first host that fails, with that host's exit code.
    #[arg(long)]
    fail_fast: bool,
    /// Several hosts: write the lines of all hosts in timestamp order (always so with
    /// `tail --follow`); each host's own order is kept, a line without a time follows its
    /// predecessor. Needs every host at once (no more hosts than --parallel).
    #[arg(long)]
    merge: bool,
    /// Only lines at or after this time: a duration back from now ("10m", "1h 30m", "2d"), an
    /// RFC 3339 time ("2026-11-27T07:00:00Z"), a date-time taken as UTC ("2026-11-27 07:00")
    /// or a date ("2026-11-27").
    #[arg(long, value_parser = cli::time_arg, allow_hyphen_values = true)]
    since: Option<loggate_core::timestamp::UnixMillis>,
    /// Only lines before this time (the same forms as --since).
    #[arg(long, value_parser = cli::time_arg, allow_hyphen_values = true)]
    until: Option<loggate_core::timestamp::UnixMillis>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    /// Present this grant token (a file) instead of relying on the one pushed to the agent.
    #[arg(long)]
    grant_token: Option<PathBuf>,
    /// The path is one file's name, read as it is, even when it holds `*`, `?`, `[` or `{`
    /// (without this flag such a path is a glob: '/var/log/report[1].log' would read
    /// 'report1.log').
    #[arg(long)]
    literal: bool,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum LogsCommand {
    /// Print a whole file.
    Cat {
        /// Absolute path of the file on the agent, as the grant names it, or a glob
        /// ('/var/log/app/*.log': any path with `*?[{`; --literal reads such a name as it is):
        /// every file your grants cover that it matches, each line prefixed with its host and
        /// file.
        path: String,
        #[command(flatten)]
        read: ReadOpts,
    },
    /// Print the last lines of a file, and with --follow keep printing new ones.
    Tail {
        /// Absolute path of the file on the agent, as the grant names it, or a glob
        /// ('/var/log/app/*.log': any path with `*?[{`; --literal reads such a name as it is):
        /// every file your grants cover that it matches, each line prefixed with its host and
        /// file.
        path: String,
        /// How many of the last lines to print first (0: none, with --follow only new ones).
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
        /// Keep the stream open and print lines as they are written (until Ctrl-C, the
        /// grant's end or its revocation). With a path glob, the one live file (not rotated,
        /// not compressed) it matches on each host is followed.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        read: ReadOpts,
    },
    /// Print the lines matching a regular expression (filtered on the agent).
    Grep {
        /// A regular expression (Rust `regex` syntax), matched on the agent against each line
        /// as redacted: a redacted value cannot be searched for.
        pattern: String,
        /// Absolute path of the file on the agent, as the grant names it, or a glob
        /// ('/var/log/app/*.log': any path with `*?[{`; --literal reads such a name as it is):
        /// every file your grants cover that it matches, each line prefixed with its host and
        /// file.
        path: String,
        #[command(flatten)]
        read: ReadOpts,
    },
    /// Print the systemd journal entries of one unit a grant of yours names (`grant request
    /// --unit`), redacted on the agent: one line per entry, "TIME HOST UNIT[PID]: message".
    Journal {
        /// The agent id (as in your grant). Repeatable, and a glob ("web-*") matches the agent
        /// ids of the controller's registry: several hosts are read in parallel, each line
        /// prefixed with its host, and a host that fails is one line on stderr while the others
        /// go on (exit 6 some hosts failed, 7 all failed).
        #[arg(
            long = "host",
            value_name = "HOST",
            required_unless_present = "selector"
        )]
        hosts: Vec<String>,
        /// Read from every agent whose labels match this selector ("env=prod,team=payments"),
        /// as `loggate agent list --selector` shows them; with --host, an agent must match both.
        #[arg(long)]
        selector: Option<String>,
        /// Several hosts: how many agents are connected at once (1 to 1024).
        #[arg(long, default_value_t = cli::reads::DEFAULT_PARALLEL,
              value_parser = clap::value_parser!(u16).range(1..=i64::from(cli::reads::MAX_PARALLEL)))]
        parallel: u16,
        /// Several hosts: stop at the first host that fails, with that host's exit code.
        #[arg(long)]
        fail_fast: bool,
        /// Several hosts: write the entries of all hosts in the order of their timestamps
        /// (always so with --follow); each host's own order is kept. Needs every host at once
        /// (no more hosts than --parallel).
        #[arg(long)]
        merge: bool,
        /// The systemd unit, named exactly ("nginx.service"; no globs).
        #[arg(long)]
        unit: String,
        /// Only entries at or after this time: a duration back from now ("10m", "1h"), an RFC
        /// 3339 time, a date-time taken as UTC or a date (as `logs cat --since`).
        #[arg(long, value_parser = cli::time_arg, allow_hyphen_values = true)]
        since: Option<loggate_core::timestamp::UnixMillis>,
        /// Keep the stream open and print entries as they are written (until Ctrl-C, the
        /// grant's end or its revocation); without --since, only new entries.
        #[arg(short, long)]
        follow: bool,
        /// Only lines matching this regular expression (Rust `regex` syntax), matched on the
        /// agent against each line as redacted.
        #[arg(long = "grep", value_name = "PATTERN")]
        pattern: Option<String>,
        /// Dial this address instead of asking the controller where the agent is (one --host
        /// only).
        #[arg(long, conflicts_with = "selector")]
        agent_addr: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// Present this grant token (a file) instead of relying on the one pushed to the agent.
        #[arg(long)]
        grant_token: Option<PathBuf>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List the files your grants cover on the host: size, modification time, whether rotated
    /// or compressed (nothing outside your grants is shown, not even a name).
    Ls {
        /// Only files this absolute path glob matches ("/var/log/app/api.log*").
        glob: Option<String>,
        /// The agent id (as in your grant). Repeatable, and a glob ("web-*") over the agent ids
        /// of the controller's registry: every agent is asked, each line prefixed with its host
        /// (exit 6 some hosts failed, 7 all failed).
        #[arg(
            long = "host",
            value_name = "HOST",
            required_unless_present = "selector"
        )]
        hosts: Vec<String>,
        /// List on every agent whose labels match this selector ("env=prod,team=payments"); with
        /// --host, an agent must match both.
        #[arg(long)]
        selector: Option<String>,
        /// Dial this address instead of asking the controller where the agent is (one --host only).
        #[arg(long, conflicts_with = "selector")]
        agent_addr: Option<String>,
        /// Several hosts: how many agents are asked at once (1 to 1024).
        #[arg(long, default_value_t = cli::reads::DEFAULT_PARALLEL,
              value_parser = clap::value_parser!(u16).range(1..=i64::from(cli::reads::MAX_PARALLEL)))]
        parallel: u16,
        /// Several hosts: stop at the first host that fails, with that host's exit code.
        #[arg(long)]
        fail_fast: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// Present this grant token (a file) instead of relying on the one pushed to the agent.
        #[arg(long)]
        grant_token: Option<PathBuf>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

async fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Pki(PkiCommand::Init(args)) => pki_cmd::init(args).map_err(Failure::from),
        Command::Pki(PkiCommand::Issue(args)) => pki_cmd::issue(args).map_err(Failure::from),
        Command::Pki(PkiCommand::Pin { ca }) => pki_cmd::pin(&ca).map_err(Failure::from),
        Command::Pki(PkiCommand::NewSigningKey(args)) => {
            pki_cmd::new_signing_key(args).map_err(Failure::from)
        }
        Command::Controller(ControllerCommand::Serve { config, .. }) => {
            // Not `Failure::from`: whatever the cause, a daemon that stops on an error exits 1.
            daemon::serve(&config).await.map_err(|e| Failure::error(&e))
        }
        Command::Controller(ControllerCommand::CheckConfig { file }) => {
            match check_config::check(&file) {
                Ok(()) => {
                    println!("{}: the controller configuration is valid", file.display());
                    Ok(())
                }
                Err(e) => Err(Failure {
                    code: cli::Exit::Usage,
                    message: loggate_core::config_check::problem_lines(&e).join("\nloggate: "),
                }),
            }
        }
        Command::Completions { shell } => {
            let mut command = cli_command();
            clap_complete::generate(shell, &mut command, "loggate", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages { dir } => clap_mangen::generate_to(cli_command(), &dir)
            .map_err(|e| Failure::from(format!("writing man pages into {}: {e}", dir.display()))),
        Command::Whoami(client) => cli::whoami(&client.load()?).await,
        Command::Login {
            controller,
            ca,
            device,
            fresh,
            client,
        } => {
            cli::login::login(cli::login::LoginArgs {
                controller,
                ca,
                device,
                fresh,
                config_path: cli::login::config_path(client.config.as_deref()),
            })
            .await
        }
        Command::Logout(client) => {
            cli::config_file::logout(&cli::login::config_path(client.config.as_deref()))
        }
        Command::Agent(AgentCommand::Status {
            host,
            agent_addr,
            output,
            client,
        }) => {
            let json = matches!(output, Output::Json);
            cli::status::agent_status(&client.load()?, &host, agent_addr, json).await
        }
        Command::Audit(AuditCommand::Verify {
            files,
            keys,
            checkpoints,
        }) => cli::audit_verify(&files, &keys, checkpoints.as_deref()),
        Command::Audit(AuditCommand::Checkpoints {
            host,
            output,
            client,
        }) => cli::audit_checkpoints(&client.load()?, host, matches!(output, Output::Json)).await,
        Command::Grant(GrantCommand::Issue {
            subject,
            hosts,
            labels,
            paths,
            units,
            ttl,
            reason,
            redaction,
            start_in,
            format,
            client,
        }) => {
            let args = cli::IssueArgs {
                start_in,
                subject,
                hosts,
                labels,
                paths,
                units,
                ttl,
                reason,
                redaction,
                json: format.json(),
            };
            cli::grant_issue(&client.load()?, args).await
        }
        Command::Grant(GrantCommand::List {
            pending: true,
            format,
            client,
            ..
        }) => cli::governance::requests_list(&client.load()?, format.json()).await,
        Command::Grant(GrantCommand::List {
            all,
            subject,
            format,
            client,
            ..
        }) => cli::grant_list(&client.load()?, all, subject, format.json()).await,
        Command::Grant(GrantCommand::Request { args, client }) => {
            cli::governance::grant_request(&client.load()?, args).await
        }
        Command::Grant(GrantCommand::Approve {
            id,
            comment,
            format,
            client,
        }) => {
            cli::governance::grant_review(&client.load()?, id, comment, true, format.json()).await
        }
        Command::Grant(GrantCommand::Deny {
            id,
            comment,
            format,
            client,
        }) => {
            cli::governance::grant_review(&client.load()?, id, comment, false, format.json()).await
        }
        Command::Grant(GrantCommand::Cancel { id, client }) => {
            cli::governance::grant_cancel(&client.load()?, id).await
        }
        Command::Policy(PolicyCommand::Check { args, client }) => {
            cli::governance::policy_check(&client.load()?, args).await
        }
        Command::Access(AccessCommand::Review {
            since,
            output,
            client,
        }) => cli::governance::access_review(&client.load()?, since, output).await,
        Command::Access(AccessCommand::Ack {
            id,
            comment,
            client,
        }) => cli::governance::access_ack(&client.load()?, id, comment).await,
        Command::Agent(AgentCommand::List {
            selector,
            output,
            client,
        }) => {
            cli::agents::agent_list(&client.load()?, selector, matches!(output, Output::Json)).await
        }
        Command::User(UserCommand::Lock {
            name,
            reason,
            client,
        }) => cli::users::set_lock(&client.load()?, name, true, reason).await,
        Command::User(UserCommand::Unlock {
            name,
            reason,
            client,
        }) => cli::users::set_lock(&client.load()?, name, false, reason).await,
        Command::User(UserCommand::List { output, client }) => {
            cli::users::list(&client.load()?, matches!(output, Output::Json)).await
        }
        Command::Agent(AgentCommand::Remove { id, client }) => {
            cli::agents::agent_remove(&client.load()?, id).await
        }
        Command::Agent(AgentCommand::Token(TokenCommand::Create { args, client })) => {
            cli::agents::token_create(&client.load()?, args).await
        }
        Command::Agent(AgentCommand::Token(TokenCommand::List { output, client })) => {
            cli::agents::token_list(&client.load()?, matches!(output, Output::Json)).await
        }
        Command::Agent(AgentCommand::Token(TokenCommand::Revoke { id, client })) => {
            cli::agents::token_revoke(&client.load()?, id).await
        }
        Command::Policy(PolicyCommand::Reload { client }) => {
            cli::governance::policy_reload(&client.load()?).await
        }
        Command::Grant(GrantCommand::Revoke { id, reason, client }) => {
            cli::grant_revoke(&client.load()?, id, reason).await
        }
        Command::Logs(LogsCommand::Ls {
            glob,
            hosts,
            selector,
            agent_addr,
            parallel,
            fail_fast,
            output,
            grant_token,
            client,
        }) => {
            cli::listing::list_logs(
                client.load()?,
                cli::listing::ListArgs {
                    hosts,
                    selector,
                    parallel,
                    fail_fast,
                    agent_addr,
                    glob,
                    json: matches!(output, Output::Json),
                    grant_token,
                },
            )
            .await
        }
        Command::Logs(LogsCommand::Journal {
            hosts,
            selector,
            parallel,
            fail_fast,
            merge,
            unit,
            since,
            follow,
            pattern,
            agent_addr,
            output,
            grant_token,
            client,
        }) => {
            cli::journal::read_journal(
                client.load()?,
                cli::journal::JournalArgs {
                    hosts,
                    selector,
                    many: cli::reads::HostsArgs {
                        parallel,
                        fail_fast,
                        merge,
                    },
                    agent_addr,
                    unit,
                    since,
                    follow,
                    pattern: pattern.unwrap_or_default(),
                    json: matches!(output, Output::Json),
                    grant_token,
                },
            )
            .await
        }
        Command::Logs(logs) => {
            let (read, path, mode, follow, lines, pattern) = match logs {
                LogsCommand::Cat { path, read } => {
                    (read, path, ReadMode::Cat, false, 0, String::new())
                }
                LogsCommand::Tail {
                    path,
                    lines,
                    follow,
                    read,
                } => (read, path, ReadMode::Tail, follow, lines, String::new()),
                LogsCommand::Grep {
                    pattern,
                    path,
                    read,
                } => (read, path, ReadMode::Grep, false, 0, pattern),
                LogsCommand::Ls { .. } | LogsCommand::Journal { .. } => {
                    unreachable!("matched above")
                }
            };
            let config = read.client.load()?;
            let multi = cli::reads::is_multi_host(&read.hosts, read.selector.as_deref());
            let path_glob = !read.literal && cli::reads::is_path_glob(&path);
            if multi && read.agent_addr.is_some() {
                return Err(cli::usage(
                    "--agent-addr dials one agent; give a single --host with it",
                ));
            }
            let args = cli::ReadArgs {
                host: read.hosts.first().cloned().unwrap_or_default(),
                agent_addr: read.agent_addr,
                path,
                mode,
                follow,
                lines,
                pattern,
                since: read.since,
                until: read.until,
                json: matches!(read.output, Output::Json),
                grant_token: read.grant_token,
            };
            if multi || path_glob {
                cli::reads::read_many(
                    config,
                    cli::reads::ManyArgs {
                        hosts: read.hosts,
                        selector: read.selector,
                        parallel: read.parallel,
                        fail_fast: read.fail_fast,
                        merge: read.merge,
                        literal: read.literal,
                        read: args,
                    },
                )
                .await
            } else {
                cli::read_log(&config, args).await
            }
        }
    }
}

/// The command tree of `loggate`, with every command's examples ([`examples`]): what is
/// parsed, completed and written as man pages.
fn cli_command() -> clap::Command {
    examples::attach(<Cli as clap::CommandFactory>::command())
}

fn main() -> ExitCode {
    let parsed = cli_command()
        .try_get_matches()
        .and_then(|matches| <Cli as clap::FromArgMatches>::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => return cli::exit_on_parse_error(e),
    };
    // The `logs` commands stream: keep their freed read buffers for reuse instead of giving
    // them back to the kernel and faulting them in again (issue #15, docs/performance.md).
    // Only there: the other commands are a few small calls, and the controller's daemon
    // keeps glibc's defaults (its memory at rest is measured with them).
    if matches!(cli.command, Command::Logs(_)) {
        loggate_core::alloc::keep_freed_memory_for_streaming();
    }
    // The daemon logs as the agent does; the commands show warnings and errors only.
    let format = match &cli.command {
        Command::Controller(ControllerCommand::Serve { log_format, .. }) => {
            loggate_core::daemon::LogFormat::from_name(log_format).unwrap_or_default()
        }
        _ => loggate_core::daemon::LogFormat::Text,
    };
    loggate_core::daemon::init_tracing(
        match cli.command {
            Command::Controller(_) => loggate_core::daemon::LogDefault::Daemon,
            _ => loggate_core::daemon::LogDefault::Command,
        },
        format,
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loggate: cannot start: {e}");
            return ExitCode::from(cli::Exit::Error.code());
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // Standard output was closed by its reader (`loggate logs cat … | head`): a clean end.
        Err(failure) if failure.code == cli::Exit::Ok => ExitCode::SUCCESS,
        Err(failure) => {
            // A JSON line when the controller daemon logs JSON; the plain line otherwise.
            loggate_core::daemon::announce(
                tracing::Level::ERROR,
                &format!("loggate: {}", failure.message),
            );
            ExitCode::from(failure.code.code())
        }
    }
}
