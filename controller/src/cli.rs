//! The human-facing commands that talk to the controller and to agents: grants and log reads.
//! Every failure ends as one sentence on stderr and a non-zero exit code (see [`Failure`]).

use crate::config::ClientConfig;
use loggate_core::grant::rough_duration;
use loggate_core::timestamp::parse_time_arg;
use loggate_core::tls::Server;
use loggate_proto as pb;
use loggate_proto::agent_client::AgentClient;
use loggate_proto::controller_client::ControllerClient;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Prints one line on standard output; a closed pipe or a full disk is an error (exit 1), never
/// a panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)
            .map_err(|e| Failure::from(format!("cannot write to standard output: {e}")))
    };
}

/// Exit codes: 1 error, 3 access denied, 4 stream cut by the agent (grant ended).
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 1,
            message: e.to_string(),
        }
    }
}

pub type CliResult = Result<(), Failure>;

/// A mistake in how the command was called (exit 2), as opposed to a failure while running it.
pub fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

pub fn format_time(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Turns a gRPC status into the one sentence the user reads.
pub fn explain(status: &Status, peer: &str) -> Failure {
    let mut message = status.message().to_string();
    if let Some(source) = std::error::Error::source(status) {
        // Transport failures (a TLS alert from the peer, a reset) carry their cause here.
        let cause = error_chain(source);
        if !cause.starts_with(&message) {
            message = format!("{message}: {cause}");
        } else {
            message = cause;
        }
        if !message.contains("alert") && !message.contains("certificate") {
            return Failure {
                code: 1,
                message: format!(
                    "the connection to {peer} failed ({message}); if it keeps failing, check that \
                     your certificate comes from this deployment's CA and is still valid"
                ),
            };
        }
        {
            return Failure {
                code: 3,
                message: format!(
                    "{peer} refused the TLS connection ({message}); check that your certificate \
                     comes from this deployment's CA and is still valid"
                ),
            };
        }
    }
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => Failure {
            code: 3,
            message: format!("access denied by {peer}: {message}"),
        },
        // The server refused an argument the user gave (a TTL, a subject, a pattern): bad usage.
        Code::InvalidArgument => usage(format!("{peer} refused the request: {message}")),
        Code::Aborted => Failure {
            code: 4,
            message: format!("{peer} ended the stream: {message}"),
        },
        Code::Unavailable => Failure {
            code: 1,
            message: format!("cannot reach {peer}: {message}"),
        },
        _ => Failure {
            code: 1,
            message: format!("{peer}: {message}"),
        },
    }
}

async fn connect(
    addr: &str,
    config: &ClientConfig,
    server: Server<'_>,
) -> Result<Channel, Failure> {
    let name = match server {
        Server::Controller => "loggate-controller",
        Server::Agent(id) => id,
    };
    let endpoint = config
        .tls
        .endpoint(addr, server)
        .map_err(|e| Failure::from(format!("TLS configuration: {e:#}")))?
        .connect_timeout(Duration::from_secs(5));
    endpoint.connect().await.map_err(|e| Failure {
        code: 1,
        message: format!("cannot connect to {name} at {addr}: {}", error_chain(&e)),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if parts.last() != Some(&part) {
            parts.push(part);
        }
        source = s.source();
    }
    parts.join(": ")
}

pub async fn controller(config: &ClientConfig) -> Result<ControllerClient<Channel>, Failure> {
    Ok(ControllerClient::new(
        connect(&config.controller, config, Server::Controller).await?,
    ))
}

pub struct IssueArgs {
    pub start_in: Option<Duration>,
    pub subject: String,
    pub hosts: Vec<String>,
    pub labels: Vec<String>,
    pub paths: Vec<String>,
    pub ttl: Duration,
    pub reason: String,
    pub redaction: String,
    pub json: bool,
}

fn print_grant(g: &pb::GrantInfo) -> Result<(), Failure> {
    let now = loggate_core::grant::unix_now();
    let state = if g.revoked {
        format!(
            "revoked by {} at {}",
            g.revoked_by,
            format_time(g.revoked_at_unix)
        )
    } else if now >= g.not_after_unix {
        format!("expired {} ago", rough_duration(now - g.not_after_unix))
    } else if now < g.not_before_unix {
        format!("starts in {}", rough_duration(g.not_before_unix - now))
    } else {
        format!("active, {} left", rough_duration(g.not_after_unix - now))
    };
    let mut scope: Vec<String> = g.hosts.clone();
    scope.extend(g.labels.iter().map(|l| format!("label:{l}")));
    outln!(
        "{}  {}  on {}  paths {}  until {}  ({})  profile {}  reason {:?}",
        g.id,
        g.subject,
        scope.join(","),
        g.paths.join(","),
        format_time(g.not_after_unix),
        state,
        g.redaction_profile,
        g.reason
    )
}

fn grant_json(g: &pb::GrantInfo) -> serde_json::Value {
    serde_json::json!({
        "id": g.id, "subject": g.subject, "hosts": g.hosts, "labels": g.labels, "paths": g.paths,
        "not_before": g.not_before_unix, "not_after": g.not_after_unix, "reason": g.reason,
        "issuer": g.issuer, "redaction_profile": g.redaction_profile, "revoked": g.revoked,
        "revoked_at": g.revoked_at_unix, "revoked_by": g.revoked_by, "revision": g.revision,
        "key_sha256": g.key_sha256, "token": g.token,
    })
}

pub async fn grant_issue(config: &ClientConfig, args: IssueArgs) -> CliResult {
    let mut client = controller(config).await?;
    let response = client
        .issue_grant(pb::IssueGrantRequest {
            subject: args.subject,
            hosts: args.hosts,
            labels: args.labels,
            paths: args.paths,
            ttl_seconds: args.ttl.as_secs(),
            reason: args.reason,
            redaction_profile: args.redaction,
            not_before_unix: args
                .start_in
                .map(|d| loggate_core::grant::unix_now() + d.as_secs() as i64)
                .unwrap_or(0),
        })
        .await
        .map_err(|s| explain(&s, "the controller"))?;
    let grant = response
        .into_inner()
        .grant
        .ok_or("the controller returned no grant")?;
    if args.json {
        outln!("{}", grant_json(&grant))?;
    } else {
        print_grant(&grant)?;
    }
    Ok(())
}

pub async fn grant_list(
    config: &ClientConfig,
    all: bool,
    subject: String,
    json: bool,
) -> CliResult {
    let mut client = controller(config).await?;
    let grants = client
        .list_grants(pb::ListGrantsRequest {
            include_inactive: all,
            subject,
        })
        .await
        .map_err(|s| explain(&s, "the controller"))?
        .into_inner()
        .grants;
    if json {
        let list: Vec<_> = grants.iter().map(grant_json).collect();
        outln!("{}", serde_json::Value::from(list))?;
    } else if grants.is_empty() {
        eprintln!(
            "no grants{}",
            if all {
                ""
            } else {
                " active (use --all to see ended ones)"
            }
        );
    } else {
        grants.iter().try_for_each(print_grant)?;
    }
    Ok(())
}

pub async fn grant_revoke(config: &ClientConfig, id: String, reason: String) -> CliResult {
    let mut client = controller(config).await?;
    let grant = client
        .revoke_grant(pb::RevokeGrantRequest {
            grant_id: id,
            reason,
        })
        .await
        .map_err(|s| explain(&s, "the controller"))?
        .into_inner()
        .grant
        .ok_or("the controller returned no grant")?;
    print_grant(&grant)?;
    Ok(())
}

pub async fn whoami(config: &ClientConfig) -> CliResult {
    let mut client = controller(config).await?;
    let me = client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map_err(|s| explain(&s, "the controller"))?
        .into_inner();
    outln!(
        "{}{}\ncertificate key sha256 {}",
        me.subject,
        if me.admin { " (admin)" } else { "" },
        me.key_sha256
    )?;
    if me.enrolled_key_sha256 != me.key_sha256 {
        return Err(format!(
            "grants to you are bound to another key ({}); ask an admin to re-enrol your new certificate",
            me.enrolled_key_sha256
        )
        .into());
    }
    Ok(())
}

pub struct ReadArgs {
    pub host: String,
    pub agent_addr: Option<String>,
    pub path: String,
    pub mode: pb::ReadMode,
    pub follow: bool,
    pub lines: u64,
    pub pattern: String,
    pub since: Option<String>,
    pub until: Option<String>,
    pub json: bool,
    pub grant_token: Option<PathBuf>,
}

pub async fn read_log(config: &ClientConfig, args: ReadArgs) -> CliResult {
    if !args.path.starts_with('/') {
        return Err(usage(format!(
            "{:?} is not an absolute path; give the file's full path on the host",
            args.path
        )));
    }
    let now_ms = (loggate_core::grant::unix_seconds(std::time::SystemTime::now())) * 1000;
    let since = match &args.since {
        Some(s) => parse_time_arg(s, now_ms).map_err(|e| usage(format!("--since: {e}")))?,
        None => 0,
    };
    let until = match &args.until {
        Some(s) => parse_time_arg(s, now_ms).map_err(|e| usage(format!("--until: {e}")))?,
        None => 0,
    };
    let grant_token = match &args.grant_token {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| format!("cannot read grant token {}: {e}", p.display()))?
            .trim()
            .to_string(),
        None => String::new(),
    };
    let addr = match args.agent_addr {
        Some(a) => a,
        None => {
            let mut ctl = controller(config).await?;
            let agent = ctl
                .resolve_agent(pb::ResolveAgentRequest {
                    agent_id: args.host.clone(),
                })
                .await
                .map_err(|s| explain(&s, "the controller"))?
                .into_inner();
            if agent.addr.is_empty() {
                return Err(format!(
                    "agent {} has not told the controller its address; pass --agent-addr",
                    args.host
                )
                .into());
            }
            agent.addr
        }
    };
    let peer = format!("agent {}", args.host);
    let mut client = AgentClient::new(connect(&addr, config, Server::Agent(&args.host)).await?);
    let mut stream = client
        .read_log(pb::ReadLogRequest {
            path: args.path.clone(),
            mode: args.mode as i32,
            follow: args.follow,
            tail_lines: args.lines,
            pattern: args.pattern,
            since_unix_ms: since,
            until_unix_ms: until,
            grant_token,
        })
        .await
        .map_err(|s| explain(&s, &peer))?
        .into_inner();
    let stdout = std::io::stdout();
    let mut out = Output {
        out: std::io::BufWriter::new(stdout.lock()),
        pending: Vec::new(),
        json: args.json,
        host: &args.host,
        path: &args.path,
    };
    loop {
        let chunk = match stream.message().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(status) => {
                let _ = out.flush(true);
                return Err(explain(&status, &peer));
            }
        };
        match chunk.item {
            Some(pb::read_log_chunk::Item::Start(start)) => {
                tracing::debug!(grant = %start.grant_id, "stream started");
            }
            Some(pb::read_log_chunk::Item::Data(data)) => {
                out.pending.extend_from_slice(&data);
                out.flush(false)?;
            }
            None => {}
        }
    }
    out.flush(true)?;
    Ok(())
}

/// Where streamed content goes: stdout as text, or as one JSON object per line.
struct Output<'a, W: Write> {
    out: W,
    /// Received bytes not yet written (JSON output writes whole lines only).
    pending: Vec<u8>,
    json: bool,
    host: &'a str,
    path: &'a str,
}

impl<W: Write> Output<'_, W> {
    /// Writes complete lines (all of `pending` when `all`).
    fn flush(&mut self, all: bool) -> std::io::Result<()> {
        if !self.json {
            self.out.write_all(&self.pending)?;
            self.pending.clear();
            return self.out.flush();
        }
        let end = if all {
            self.pending.len()
        } else {
            match self.pending.iter().rposition(|b| *b == b'\n') {
                Some(i) => i + 1,
                None => return Ok(()),
            }
        };
        for line in self.pending[..end].split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let record = serde_json::json!({
                "host": self.host, "path": self.path, "line": String::from_utf8_lossy(line),
            });
            writeln!(self.out, "{record}")?;
        }
        self.pending.drain(..end);
        self.out.flush()
    }
}

/// `loggate audit verify FILE… [--key PUB]… [--checkpoints FILE]`: the files are one chain, in
/// the order given.
pub fn audit_verify(
    paths: &[PathBuf],
    key_files: &[PathBuf],
    checkpoints: Option<&std::path::Path>,
) -> CliResult {
    use loggate_core::audit::{read_external_checkpoints, verify_chain_anchored, VerifyKey};
    let mut keys = Vec::new();
    for k in key_files {
        let text =
            std::fs::read_to_string(k).map_err(|e| format!("cannot read {}: {e}", k.display()))?;
        keys.push(VerifyKey::parse(&text).map_err(|e| format!("{}: {e}", k.display()))?);
    }
    let external = match checkpoints {
        Some(c) => {
            let file =
                std::fs::File::open(c).map_err(|e| format!("cannot open {}: {e}", c.display()))?;
            let held = read_external_checkpoints(std::io::BufReader::new(file))
                .map_err(|e| format!("{}: {e}", c.display()))?;
            if held.is_empty() {
                // Nothing to anchor against is not an anchored result.
                return Err(format!(
                    "{} holds no checkpoints; export them with 'loggate audit checkpoints --host AGENT'",
                    c.display()
                )
                .into());
            }
            if !keys.is_empty() {
                for checkpoint in &held {
                    checkpoint.verify(&keys).map_err(|e| Failure {
                        code: 5,
                        message: format!(
                            "{}: the checkpoint sealing seq {} is not genuine: {e}",
                            c.display(),
                            checkpoint.sealed_seq
                        ),
                    })?;
                }
            }
            held
        }
        None => Vec::new(),
    };
    let mut input: Box<dyn std::io::Read> = Box::new(std::io::empty());
    for path in paths {
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(format!(
                "{} is not an audit file (not a regular file)",
                path.display()
            )
            .into());
        }
        input = Box::new(std::io::Read::chain(input, file));
    }
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let s = verify_chain_anchored(std::io::BufReader::new(input), &keys, &external).map_err(
        |broken| Failure {
            code: 5,
            message: format!(
                "{}: chain broken at {broken}{}",
                names.join(" + "),
                if paths.len() > 1 {
                    " (counting lines across the files in order)"
                } else {
                    ""
                }
            ),
        },
    )?;
    if let Some(previous) = &s.continues_from {
        eprintln!(
            "note: the chain continues rotated file {previous} (seq {} onwards checked); pass it first to check it too",
            s.first_seq
        );
    }
    outln!(
        "ok: {} records, seq {}..{}, head {}; {} checkpoints, sealed through seq {}",
        s.records,
        s.first_seq,
        s.last_seq,
        s.head,
        s.checkpoints,
        s.sealed_through
    )?;
    if !s.signatures_checked && s.checkpoints > 0 {
        eprintln!("warning: checkpoint signatures were not checked; pass the writer's public key with --key");
    }
    if s.last_seq > s.sealed_through {
        eprintln!(
            "warning: {} records after the last checkpoint are not sealed yet",
            s.last_seq - s.sealed_through
        );
    }
    if checkpoints.is_none() {
        eprintln!(
            "note: truncation of the end or a re-signed rewrite of the whole file can only be detected \
             against checkpoints kept off this host (--checkpoints)"
        );
    } else {
        outln!(
            "anchored: {} checkpoints held off the host match, through seq {}",
            external.len(),
            s.anchored_through
        )?;
        if s.last_seq > s.anchored_through {
            eprintln!(
                "warning: {} records after seq {} (unsealed tail) are not anchored off the host yet",
                s.last_seq - s.anchored_through,
                s.anchored_through
            );
        }
    }
    Ok(())
}

/// `loggate audit checkpoints --host H [--output json]`: the controller's checkpoints for a
/// host, oldest first, on stdout. Text: the exact checkpoint records; JSON: one object per
/// checkpoint with the controller's `id`, `received_at` and `status`. `audit verify
/// --checkpoints` reads either.
pub async fn audit_checkpoints(config: &ClientConfig, host: String, json: bool) -> CliResult {
    let mut client = controller(config).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut after_id = 0;
    let mut conflicts = 0;
    loop {
        let page = client
            .list_checkpoints(pb::ListCheckpointsRequest {
                host: host.clone(),
                after_id,
                limit: 0,
            })
            .await
            .map_err(|s| explain(&s, "the controller"))?
            .into_inner()
            .checkpoints;
        let Some(last) = page.last() else { break };
        after_id = last.id;
        for c in &page {
            if c.status != "ok" {
                conflicts += 1;
            }
            if json {
                let record = serde_json::json!({
                    "id": c.id, "host": host, "received_at": format_time(c.received_at_unix),
                    "status": c.status, "line": c.line,
                });
                writeln!(out, "{record}")?;
            } else {
                writeln!(out, "{}", c.line)?;
            }
        }
    }
    out.flush()?;
    if conflicts > 0 {
        eprintln!("warning: {conflicts} of {host}'s checkpoints conflict with earlier ones (see their status with --output json)");
    }
    Ok(())
}
