//! `loggate logs ls --host HOST [PATH-GLOB]`: the files your grants cover on an agent, asked
//! of the agent itself over mTLS with your certificate (`ListLogs`). The agent shows only files
//! a read of yours would open (agent/src/listing.rs) and audits the listing as `read.listed`;
//! a refusal exits 3 with the agent's reason, as a read's does.
//!
//! With several `--host`, a glob over agent ids or `--selector` (the reads' way of choosing
//! agents, [`super::reads::registry_targets`]), every agent is asked, at most `--parallel` at
//! once, and the listings are written in the order of the agents' ids, each line prefixed with
//! its host (`web-1: …`; JSON records carry `host` anyway). As for a multi-host read, a host
//! that fails is one line on stderr and the others go on: exit 6 when some failed, 7 when all
//! did; `--fail-fast` stops at the first, with its own code. At most `--parallel` listings, and
//! never more than [`MAX_LISTINGS_HELD`], are held at once (each is at most 3 MiB from an honest
//! agent, 4 MiB from a hostile one: 64 MiB in all), whatever the number of hosts.

use super::reads::{is_multi_host, registry_targets, Target};
use super::socket_slot::{self, Socket, CLOSE_WAIT};
use super::{agent_addr, connect, explain, explain_at, format_time, needs_probe, usage};
use super::{CliResult, Exit, Failure, OrExplain, Peer};
use crate::config::ClientConfig;
use loggate_core::tls::Server;
use loggate_proto as pb;
use loggate_proto::agent_client::AgentClient;
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

pub struct ListArgs {
    /// `--host` values: one agent id, or several, or globs over them.
    pub hosts: Vec<String>,
    /// `--selector`: a label selector for the controller's registry.
    pub selector: Option<String>,
    /// Several hosts: agents asked at once.
    pub parallel: u16,
    /// Several hosts: stop at the first that fails.
    pub fail_fast: bool,
    pub agent_addr: Option<String>,
    /// Only files this glob matches (the grammar of a grant's paths); `None`: every one.
    pub glob: Option<String>,
    pub json: bool,
    pub grant_token: Option<PathBuf>,
}

/// Lists the files the agents `args` names serve you, one per line (size, modification time,
/// kind, path; prefixed with the host when several agents are asked) or one JSON object per
/// file.
pub async fn list_logs(config: ClientConfig, args: ListArgs) -> CliResult {
    if let Some(glob) = &args.glob {
        if !glob.starts_with('/') {
            return Err(usage(format!(
                "{glob:?} is not an absolute path glob; give it as the grant names paths \
                 (\"/var/log/app/*\")"
            )));
        }
    }
    let multi = is_multi_host(&args.hosts, args.selector.as_deref());
    if multi && args.agent_addr.is_some() {
        return Err(usage(
            "--agent-addr dials one agent; give a single --host with it",
        ));
    }
    let grant_token = match &args.grant_token {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| format!("cannot read grant token {}: {e}", p.display()))?
            .trim()
            .to_string(),
        None => String::new(),
    };
    let request = pb::ListLogsRequest {
        path_glob: args.glob.clone().unwrap_or_default(),
        grant_token,
    };
    if multi {
        return list_many(Arc::new(config), &args, request).await;
    }
    let host = args.hosts.first().cloned().unwrap_or_default();
    let addr = agent_addr(&config, &host, args.agent_addr.clone()).await?;
    let listing = fetch(&config, &host, &addr, request, None).await?;
    write_listing(&host, &listing, &args, false)
}

/// Asks agent `host` at `addr` for the listing. With `socket` (one host of several), the
/// connection is the socket slot's ([`socket_slot::connect`]: one retry of a transient connect
/// failure) and this returns only once its socket is closed, so that the window of `ls` over
/// many hosts never covers more sockets than listings; a refusal probe (a connection dropped
/// without a reason) is made only after that, never beside the listing's own socket.
async fn fetch(
    config: &ClientConfig,
    host: &str,
    addr: &str,
    request: pb::ListLogsRequest,
    socket: Option<&Socket>,
) -> Result<pb::ListLogsResponse, Failure> {
    let peer = Peer {
        name: format!("agent {host}"),
        addr: addr.to_string(),
        server: Server::Agent(host),
    };
    let Some(socket) = socket else {
        let mut client = AgentClient::new(connect(addr, config, Server::Agent(host)).await?);
        return Ok(client
            .list_logs(request)
            .await
            .or_explain(config, &peer)
            .await?
            .into_inner());
    };
    let answer = match socket_slot::connect(addr, config, Server::Agent(host), socket).await {
        // The client (the connection) is dropped at the end of this arm; tonic closes its
        // socket on its own tasks, a moment later.
        Ok(channel) => AgentClient::new(channel).list_logs(request).await,
        Err(failure) => {
            socket.closed(CLOSE_WAIT).await;
            return Err(failure);
        }
    };
    let closed = socket.closed(CLOSE_WAIT).await;
    match answer {
        Ok(response) => Ok(response.into_inner()),
        Err(status) if closed || !needs_probe(&status) => {
            Err(explain_at(&status, config, &peer).await)
        }
        Err(status) => Err(explain(&status, &peer.name)),
    }
}

/// Writes `host`'s listing on stdout (each text line prefixed with the host when `prefixed`),
/// and on stderr whether it was cut or empty.
fn write_listing(
    host: &str,
    listing: &pb::ListLogsResponse,
    args: &ListArgs,
    prefixed: bool,
) -> CliResult {
    // Straight to the locked stdout (buffered): no second copy of the listing is built.
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut text = String::new();
    for f in &listing.files {
        text.clear();
        if args.json {
            let record = serde_json::json!({
                "host": host,
                "path": f.path,
                "size": f.size,
                "modified_unix": f.modified_unix,
                "rotated": f.rotated,
                "compression": (!f.compression.is_empty()).then_some(&f.compression),
            });
            text.push_str(&format!("{record}\n"));
        } else {
            if prefixed {
                text.push_str(host);
                text.push_str(": ");
            }
            text.push_str(&entry_line(f));
        }
        out.write_all(text.as_bytes())
            .map_err(|e| Failure::from(format!("writing standard output: {e}")))?;
    }
    out.flush()
        .map_err(|e| Failure::from(format!("writing standard output: {e}")))?;
    drop(out);
    if listing.truncated {
        eprintln!("loggate: agent {host} cut the listing at its bound; give a narrower PATH-GLOB");
    }
    if listing.files.is_empty() {
        eprintln!(
            "loggate: your grants on agent {host} cover no file{}",
            args.glob
                .as_ref()
                .map(|g| format!(" matching {}", printable(g)))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// The most listings `ls` holds at once (fetched or being fetched, not yet written): each may
/// be up to 4 MiB (tonic's decode cap, what a hostile agent can send), so 16 bound the memory
/// to 64 MiB whatever `--parallel` says (1024 would allow 4 GiB).
pub const MAX_LISTINGS_HELD: usize = 16;

/// How many agents `ls` asks at once: `--parallel`, at most [`MAX_LISTINGS_HELD`].
fn listing_window(parallel: u16) -> usize {
    usize::from(parallel.max(1)).min(MAX_LISTINGS_HELD)
}

/// `ls` over several agents (see the module documentation): asked in parallel, written in
/// the agents' order. The window of listings in flight ([`listing_window`]) moves on only as
/// the oldest is written, so at most that many are held (a slow host holds the ones after it
/// back, within that bound).
async fn list_many(
    config: Arc<ClientConfig>,
    args: &ListArgs,
    request: pb::ListLogsRequest,
) -> CliResult {
    let targets = registry_targets(&config, &args.hosts, args.selector.as_deref()).await?;
    let total = targets.len();
    let parallel = listing_window(args.parallel);
    let mut pending = targets.into_iter();
    let mut in_flight: VecDeque<(
        String,
        tokio::task::JoinHandle<Result<pb::ListLogsResponse, Failure>>,
    )> = VecDeque::new();
    let spawn = |target: Target| {
        let config = Arc::clone(&config);
        let request = request.clone();
        let host = target.host.clone();
        let handle = tokio::spawn(async move {
            let addr = target.addr.map_err(Failure::from)?;
            fetch(
                &config,
                &target.host,
                &addr,
                request,
                Some(&Socket::default()),
            )
            .await
        });
        (host, handle)
    };
    let mut failed: Vec<String> = Vec::new();
    loop {
        while in_flight.len() < parallel {
            match pending.next() {
                Some(target) => in_flight.push_back(spawn(target)),
                None => break,
            }
        }
        let Some((host, handle)) = in_flight.pop_front() else {
            break;
        };
        let result = handle
            .await
            .unwrap_or_else(|_| Err(Failure::from("the listing ended unexpectedly")));
        match result {
            Ok(listing) => write_listing(&host, &listing, args, true)?,
            Err(f) => {
                eprintln!("loggate: {host}: {}", f.message);
                if args.fail_fast {
                    for (_, handle) in &in_flight {
                        handle.abort();
                    }
                    return Err(Failure::new(
                        f.code,
                        format!("stopped at the first failure (--fail-fast): {host}"),
                    ));
                }
                failed.push(host);
            }
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    let code = if failed.len() == total {
        Exit::AllHostsFailed
    } else {
        Exit::SomeHostsFailed
    };
    Err(Failure::new(
        code,
        format!(
            "{} of {total} hosts failed ({}); the others were listed",
            failed.len(),
            failed.join(", ")
        ),
    ))
}

/// One text line of the listing: size, modification time, kind, path. The agent's strings are
/// not trusted to be printable (a compromised agent could send terminal escapes that look like
/// trusted metadata): control characters are shown escaped.
fn entry_line(f: &pb::LogFileEntry) -> String {
    let kind = match (f.rotated, f.compression.as_str()) {
        (_, "invalid") => "invalid".to_string(),
        (true, "") => "rotated".to_string(),
        (true, c) => format!("rotated,{}", printable(c)),
        (false, "") => "live".to_string(),
        (false, c) => printable(c).into_owned(),
    };
    format!(
        "{:>12}  {}  {:<14}  {}\n",
        f.size,
        format_time(f.modified_unix),
        kind,
        printable(&f.path)
    )
}

/// `text` with every control character (C0, DEL, C1: what a terminal may act on) and every
/// character that changes how the text around it is shown without being visible itself (bidi
/// overrides and isolates, zero-width and line/paragraph separators:
/// [`crate::policy::text::is_hidden_or_control`]) escaped as `\u{..}`, and a backslash doubled
/// so an escape cannot be forged. For all text that comes from an agent or the controller: a
/// listed path, a refusal's message.
pub(super) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    use crate::policy::text::is_hidden_or_control;
    let escaped = |c: char| c == '\\' || is_hidden_or_control(c);
    if !text.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_path_with_control_characters_is_printed_escaped() {
        let entry = pb::LogFileEntry {
            path: "/var/log/a\u{1b}[2J\u{9b}31mb\r\\u{1b}.log".into(),
            size: 3,
            modified_unix: 0,
            rotated: true,
            compression: "gzip\u{7}".into(),
        };
        let line = entry_line(&entry);
        assert!(
            !line.trim_end_matches('\n').chars().any(char::is_control),
            "{line:?}"
        );
        assert!(
            line.contains("/var/log/a\\u{1b}[2J\\u{9b}31mb\\r\\\\u{1b}.log"),
            "{line}"
        );
        assert!(line.contains("rotated,gzip\\u{7}"), "{line}");
        assert_eq!(printable("/var/log/app/api.log"), "/var/log/app/api.log");
    }

    #[test]
    fn ls_holds_at_most_sixteen_listings_whatever_parallel_says() {
        assert_eq!(listing_window(1024), MAX_LISTINGS_HELD);
        assert_eq!(listing_window(u16::MAX), MAX_LISTINGS_HELD);
        assert_eq!(listing_window(4), 4);
        assert_eq!(listing_window(0), 1);
        const { assert!(MAX_LISTINGS_HELD * 4 * 1024 * 1024 <= 64 * 1024 * 1024) };
    }

    #[test]
    fn bidi_overrides_and_line_separators_are_printed_escaped() {
        let shown =
            printable("/l/a\u{202e}gol.txt\u{2066}x\u{2069}\u{2028}y\u{2029}\u{200f}\u{feff}");
        for c in [
            '\u{202e}', '\u{2066}', '\u{2069}', '\u{2028}', '\u{2029}', '\u{200f}', '\u{feff}',
        ] {
            assert!(!shown.contains(c), "{c:?} printed raw: {shown:?}");
        }
        assert!(shown.starts_with("/l/a\\u{202e}gol.txt"), "{shown}");
        // Letters of other scripts are text, not format characters.
        assert_eq!(printable("/l/журнал-日志.log"), "/l/журнал-日志.log");
    }
}
