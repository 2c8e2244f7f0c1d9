//! `loggate logs journal --host HOST --unit UNIT [--since T] [--follow] [--grep PATTERN]`: the
//! systemd journal entries of one unit on one agent, asked of the agent itself over mTLS with
//! your certificate (`ReadJournal`). The agent serves only entries of a unit a grant of yours
//! names (`grant request --unit`), redacted with the grant's profile, one line per entry
//! (`2026-12-05T02:30:00.123456Z web-1 nginx.service[1234]: message`), and audits the read like
//! a file's (`read.allowed`/`read.finished`, resource `journal:<unit>`). A refusal exits 3 with
//! the agent's reason; a stream the agent cuts (revocation, expiry) exits 4.
//!
//! With several hosts (`--host` repeated or a glob, `--selector`) the read is the multi-host
//! read of `logs cat` ([`super::reads`], the same machinery): every matching agent in parallel
//! under `--parallel`, each line prefixed with its host (`web-1: 2026-… web-1 nginx.service[1234]:
//! message`), a host that is down or refuses (no grant for the unit there) one line on stderr
//! while the others go on, exit 6 (some hosts failed) or 7 (all did), `--fail-fast`, and with
//! `--merge` (always with `--follow`) the hosts' entries interleaved in the order of their own
//! realtime timestamps, which start every line.

use super::read_stream::{Chunk, ReadClient};
use super::{agent_addr, connect, explain_at, usage, CliResult, Failure, OrExplain, Peer};
use crate::config::ClientConfig;
use loggate_core::grant::UnitName;
use loggate_core::timestamp::UnixMillis;
use loggate_core::tls::Server;
use loggate_proto as pb;
use std::io::Write;
use std::path::PathBuf;

pub struct JournalArgs {
    /// `--host` values: agent ids or globs over them (one plain id: the single-host read).
    pub hosts: Vec<String>,
    /// `--selector`: a label selector for the controller's registry.
    pub selector: Option<String>,
    /// `--parallel`, `--fail-fast`, `--merge` of a multi-host read.
    pub many: super::reads::HostsArgs,
    pub agent_addr: Option<String>,
    /// One unit, exactly (checked here for a clear usage error; the agent checks it again).
    pub unit: String,
    pub since: Option<UnixMillis>,
    pub follow: bool,
    /// `--grep`: matched on the agent against each redacted line (empty: none).
    pub pattern: String,
    pub json: bool,
    pub grant_token: Option<PathBuf>,
}

/// The request every agent is asked, checked here (a unit named exactly, a readable token).
fn journal_request(args: &JournalArgs) -> Result<(UnitName, pb::ReadJournalRequest), Failure> {
    let unit = UnitName::new(&args.unit).map_err(|e| usage(e.to_string()))?;
    let grant_token = match &args.grant_token {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| format!("cannot read grant token {}: {e}", p.display()))?
            .trim()
            .to_string(),
        None => String::new(),
    };
    let request = pb::ReadJournalRequest {
        unit: unit.to_string(),
        since_unix_ms: args.since.map_or(0, |t| t.0),
        follow: args.follow,
        pattern: args.pattern.clone(),
        grant_token,
    };
    Ok((unit, request))
}

/// Streams the unit's entries to standard output, as text or one JSON object per line
/// (`{"host", "unit", "line"}`); from several hosts when the command line names several
/// ([`super::reads::is_multi_host`]).
pub async fn read_journal(config: ClientConfig, args: JournalArgs) -> CliResult {
    let (unit, request) = journal_request(&args)?;
    if super::reads::is_multi_host(&args.hosts, args.selector.as_deref()) {
        if args.agent_addr.is_some() {
            return Err(usage(
                "--agent-addr dials one agent; give a single --host with it",
            ));
        }
        return super::reads::read_journal_many(
            config,
            &args.hosts,
            args.selector.as_deref(),
            args.many,
            request,
            args.json,
        )
        .await;
    }
    let Some(host) = args.hosts.first() else {
        return Err(usage(
            "give the agent with --host HOST (or --selector LABELS)",
        ));
    };
    let config = &config;
    let addr = agent_addr(config, host, args.agent_addr.clone()).await?;
    let peer = Peer {
        name: format!("agent {host}"),
        addr: addr.clone(),
        server: Server::Agent(host),
    };
    let mut client = ReadClient::new(connect(&addr, config, Server::Agent(host)).await?);
    let mut stream = client
        .read_journal(request)
        .await
        .or_explain(config, &peer)
        .await?
        .into_inner();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut pending: Vec<u8> = Vec::new();
    let write_failed = |e: std::io::Error| Failure::from(format!("writing standard output: {e}"));
    loop {
        let chunk = match stream.message().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(status) => {
                let _ = flush(&mut out, &mut pending, &args, &unit, true);
                return Err(explain_at(&status, config, &peer).await);
            }
        };
        if let Chunk::Data(data) = chunk {
            pending.extend_from_slice(&data);
            flush(&mut out, &mut pending, &args, &unit, false).map_err(write_failed)?;
        }
    }
    flush(&mut out, &mut pending, &args, &unit, true).map_err(write_failed)?;
    Ok(())
}

/// Writes what was received: as it came for text; whole lines as JSON objects (all of it when
/// `all`).
fn flush(
    out: &mut impl Write,
    pending: &mut Vec<u8>,
    args: &JournalArgs,
    unit: &UnitName,
    all: bool,
) -> std::io::Result<()> {
    if !args.json {
        out.write_all(pending)?;
        pending.clear();
        return out.flush();
    }
    let end = if all {
        pending.len()
    } else {
        match pending.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None => return Ok(()),
        }
    };
    for line in pending[..end].split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let record = serde_json::json!({
            "host": args.hosts.first(), "unit": unit.as_str(), "line": String::from_utf8_lossy(line),
        });
        writeln!(out, "{record}")?;
    }
    pending.drain(..end);
    out.flush()
}
