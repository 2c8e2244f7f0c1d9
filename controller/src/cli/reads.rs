//! `loggate logs cat|tail|grep|journal` over many agents in one command (issue 13): `--host`
//! given several times or as a glob (`'web-*'`), `--selector env=prod` (the controller's agent
//! registry, `ListAgents`), read in parallel and written as whole lines prefixed with the host.
//! Files and a journal unit are one machinery ([`Source`], [`read_hosts`]).
//!
//! Contract:
//! - **Each host is judged on its own.** A host that is down, unknown, or refuses the read (no
//!   grant) is one line on stderr (`loggate: HOST: why`, the same sentence a single-host read
//!   prints) and the others go on. Exit 0 when every host was read whole,
//!   [`Exit::SomeHostsFailed`] (6) when some failed, [`Exit::AllHostsFailed`] (7) when all did;
//!   with `--fail-fast` the first failure stops the read and its own exit code (as for one host:
//!   3 denied, 1 error, 4 stream ended) is the command's.
//! - **Bounded.** At most `--parallel` agents are connected at once (1,000 hosts never open
//!   1,000 connections), counted in open sockets: a host keeps its slot until its socket is
//!   closed, and the registry lookup's socket is closed before any agent is dialled
//!   ([`socket_slot`]); each host has at most [`LINES_IN_FLIGHT`] lines waiting to be written,
//!   and its stream from the agent waits (gRPC flow control) until the writer catches up; a host
//!   gives its connection slot to the next one only once its lines are written; a line
//!   longer than [`MAX_LINE`] is written in pieces of that size, each a line of its own.
//! - **Whole lines.** Lines of different hosts are never interleaved mid-line: one writer task
//!   writes every line, the prefix and the line in one piece.
//! - **Merged order** (`--merge`, and `tail --follow` with several hosts): lines are written in
//!   the order of their timestamps across hosts (RFC 3339 / ISO 8601, `YYYY-MM-DD HH:MM:SS[.fff]`,
//!   the bracketed common log format, and syslog's `Mmm dd HH:MM:SS`), each host's own order
//!   always kept: a line without a time takes its predecessor's. Without `--follow` the merge is
//!   exact (a line is written when every host still reading has a line waiting, or has ended);
//!   with `--follow` a quiet host cannot hold the others back longer than [`FOLLOW_WINDOW`].
//!   Merging needs every host's stream at once, so it refuses more hosts than `--parallel`.
//! - **A path glob** (`'/var/log/app/*.log'`: any path holding `*?[{`, [`is_path_glob`];
//!   `--literal` reads such a path as one file's name instead) is asked of each agent with
//!   `ListLogs` (the files your grants cover there, nothing more) and every listed file is then
//!   read, one after the other on the host's one connection, oldest modification first (so
//!   `'api.log*'` reads a rotated set in the order it was written), each a read of its own that
//!   the agent gates and audits as any other. Every line is prefixed with its host and file
//!   (`web-1:/var/log/app/a.log: line`), even on one host. A glob that matches nothing on a
//!   host is that host's failure (one stderr line); a file that fails is one stderr line
//!   (`loggate: HOST:FILE: why`) and the host's other files are still read, the host then
//!   counting as failed. At most [`MAX_FILES_PER_HOST`] files a host and [`MAX_FILES_TOTAL`]
//!   in all: beyond, the host fails with a clear error rather than starting thousands of reads.
//!   `tail --follow` with a glob follows the **live** file only (not rotated, not compressed):
//!   the glob must match exactly one live file on each host.
//! - A progress line (hosts done/total, bytes) is drawn on stderr only when stderr is a
//!   terminal and standard output is not ([`progress_wanted`]), and never with `--follow`;
//!   piped, stderr holds only the failure lines.

use super::deadline::NoAnswer;
use super::listing::printable;
use super::read_stream::{Chunk, ReadClient};
use super::socket_slot::{self, Socket, CLOSE_WAIT};
use super::{agent_addr, explain_at, the_controller, usage, Exit, Failure};
use super::{CliResult, OrExplain, Peer, ReadArgs};
use crate::config::ClientConfig;
use loggate_core::tls::Server;
use loggate_proto as pb;
use loggate_proto::agent_client::AgentClient;
use loggate_proto::controller_client::ControllerClient;
use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Lines of one host received and not yet written; its stream waits beyond this.
pub const LINES_IN_FLIGHT: u16 = 256;
/// The longest line kept whole; a longer one is written in pieces of this size.
pub const MAX_LINE: usize = 1 << 20;
/// With `--follow`, how long a line may wait for a quiet host's lines before it is written.
pub const FOLLOW_WINDOW: Duration = Duration::from_millis(500);
/// The most agents `--parallel` may connect to at once.
pub const MAX_PARALLEL: u16 = 1024;
/// The default of `--parallel`.
pub const DEFAULT_PARALLEL: u16 = 32;
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// The most files a path glob may take from one host.
pub const MAX_FILES_PER_HOST: usize = 1000;
/// The most files a path glob may take across all the hosts of one command.
pub const MAX_FILES_TOTAL: usize = 10_000;

/// What a multi-host read reads, from where, and how.
pub struct ManyArgs {
    /// `--host` values: agent ids or globs over them.
    pub hosts: Vec<String>,
    /// `--selector`: a label selector for the controller's registry.
    pub selector: Option<String>,
    /// `--parallel`: agents connected at once.
    pub parallel: u16,
    /// `--fail-fast`: stop at the first host that fails.
    pub fail_fast: bool,
    /// `--merge`: interleave the hosts' lines in timestamp order.
    pub merge: bool,
    /// `--literal`: the path is one file's name even with `*?[{` in it, never a glob.
    pub literal: bool,
    /// The read itself: its `host` and `agent_addr` are the one host read when the command
    /// is not a multi-host one ([`is_multi_host`]) but its path is a glob.
    pub read: ReadArgs,
}

/// True when a path argument is a glob (the grammar of a grant's paths) to be expanded by
/// each agent's `ListLogs`, rather than one file.
pub fn is_path_glob(path: &str) -> bool {
    path.contains(['*', '?', '[', '{'])
}

/// Whether a progress display belongs on stderr: only for a person watching a terminal whose
/// output goes elsewhere (stderr a terminal, standard output not one: a bar redrawn between
/// lines written to the same terminal would garble them), and never while following (a
/// stream with no end has no progress to show). Piped or redirected stderr stays clean.
pub fn progress_wanted(follow: bool) -> bool {
    !follow && std::io::stderr().is_terminal() && !std::io::stdout().is_terminal()
}

/// The progress bar of a single-host read when [`progress_wanted`]: bytes written and the rate,
/// on stderr, redrawn five times a second; `None` otherwise. The caller adds the bytes it
/// writes and clears the bar (`finish_and_clear`) before printing anything else on stderr.
pub fn byte_progress(follow: bool) -> Option<indicatif::ProgressBar> {
    if !progress_wanted(follow) {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        None,
        indicatif::ProgressDrawTarget::stderr_with_hz(5),
    );
    // The template is a constant: it parses (the unit test `the_byte_progress_template_parses`).
    if let Ok(style) = indicatif::ProgressStyle::with_template(BYTE_PROGRESS_TEMPLATE) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(PROGRESS_EVERY);
    Some(bar)
}

/// What the single-host progress bar shows: "12.3 MiB read, 4.1 MiB/s, 3s".
const BYTE_PROGRESS_TEMPLATE: &str = "{bytes} read, {binary_bytes_per_sec}, {elapsed}";

/// True when `--host VALUE` is a glob over agent ids rather than one id.
pub fn is_host_glob(value: &str) -> bool {
    value.contains(['*', '?', '[', '{'])
}

/// True when the command line asks for the multi-host read (several `--host`, a glob, or a
/// `--selector`), whose output is prefixed and whose exit codes are 6 and 7; one plain `--host`
/// keeps the single-host read exactly as it was.
pub fn is_multi_host(hosts: &[String], selector: Option<&str>) -> bool {
    selector.is_some() || hosts.len() != 1 || hosts.iter().any(|h| is_host_glob(h))
}

/// One agent to read from: its id and where it listens, or why it cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) host: String,
    pub(super) addr: Result<String, String>,
}

/// The agents `patterns` and `selector` name, from the registry's `listing` (already filtered by
/// the selector on the controller), sorted by id, each once. A plain id that is not in the
/// listing stays a target that fails on its own (the user named it: silence would hide it).
fn select_targets(
    patterns: &[String],
    selector_given: bool,
    listing: &[pb::AgentListing],
) -> Result<Vec<Target>, Failure> {
    let mut globs = Vec::new();
    let mut literals = Vec::new();
    for p in patterns {
        if is_host_glob(p) {
            let glob = globset::Glob::new(p)
                .map_err(|e| usage(format!("--host {p:?} is not a valid glob: {e}")))?;
            globs.push(glob.compile_matcher());
        } else {
            literals.push(p.as_str());
        }
    }
    let address = |a: &pb::AgentListing| {
        if a.addr.is_empty() {
            Err(format!(
                "agent {} has not told the controller its address; read it alone with --agent-addr",
                a.agent_id
            ))
        } else {
            Ok(a.addr.clone())
        }
    };
    let mut targets: Vec<Target> = listing
        .iter()
        .filter(|a| {
            (patterns.is_empty() && selector_given)
                || literals.contains(&a.agent_id.as_str())
                || globs.iter().any(|g| g.is_match(&a.agent_id))
        })
        .map(|a| Target {
            host: a.agent_id.clone(),
            addr: address(a),
        })
        .collect();
    for name in literals {
        if !targets.iter().any(|t| t.host == name) {
            let why = if selector_given {
                format!("agent {name} does not match --selector (or has never contacted the controller)")
            } else {
                format!("agent {name} has never contacted the controller; check the id with 'loggate agent list'")
            };
            targets.push(Target {
                host: name.to_string(),
                addr: Err(why),
            });
        }
    }
    targets.sort_by(|a, b| a.host.cmp(&b.host));
    targets.dedup_by(|a, b| a.host == b.host);
    Ok(targets)
}

/// What a host's reader tells the writer.
enum Event {
    /// One whole line (without its newline) of `file` (`None`: the one path of a read without
    /// a path glob); the permit is this host's room for it and is given back when the line has
    /// been written.
    Line {
        host: usize,
        file: Option<Arc<str>>,
        line: Vec<u8>,
        _room: OwnedSemaphorePermit,
    },
    /// One file of a path glob could not be read (the host's other files go on).
    FileFailed {
        host: usize,
        file: Arc<str>,
        failure: Failure,
    },
    /// The host's read ended: whole, or with the failure to report.
    Done {
        host: usize,
        result: Result<(), Failure>,
    },
}

/// What is read on every host of one command.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// A file, or every file a path glob lists (`logs cat|tail|grep`).
    File(pb::ReadLogRequest),
    /// One journal unit's entries (`logs journal`): each line starts with the entry's own
    /// realtime timestamp (RFC 3339), which is what `--merge` orders by.
    Journal(pb::ReadJournalRequest),
}

impl Source {
    fn follow(&self) -> bool {
        match self {
            Source::File(r) => r.follow,
            Source::Journal(r) => r.follow,
        }
    }
}

/// One host's part of the command: what to read there and where its lines go.
struct HostJob {
    config: Arc<ClientConfig>,
    index: usize,
    target: Target,
    request: Source,
    /// The request is a file read whose path is a glob to expand with `ListLogs`.
    glob: bool,
    /// Stop at the first file that fails.
    fail_fast: bool,
    /// Files the path glob has taken across every host so far ([`MAX_FILES_TOTAL`]).
    files_total: Arc<AtomicUsize>,
    room: Arc<Semaphore>,
    events: mpsc::UnboundedSender<Event>,
    /// The host's one connection: the reader keeps its `--parallel` slot until it is closed.
    socket: Socket,
}

/// The writer is gone only when the command is ending (fail-fast, closed stdout): the reader
/// stops with this, which is nobody's failure.
fn writer_gone() -> Failure {
    Failure::new(Exit::Ok, "")
}

/// Reads `job`'s host: its one path or journal unit, or every file its path glob lists there,
/// one after the other on one connection, handing the lines to the writer. Returns once the
/// connection's socket is closed (at most [`CLOSE_WAIT`] after the read), so that the caller's
/// `--parallel` slot never covers two sockets.
async fn read_host(job: HostJob) -> Result<(), Failure> {
    let addr = job.target.addr.clone().map_err(Failure::from)?;
    let host = job.target.host.as_str();
    let agent = Peer {
        name: format!("agent {host}"),
        addr: addr.clone(),
        server: Server::Agent(host),
    };
    let result =
        match socket_slot::connect(&addr, &job.config, Server::Agent(host), &job.socket).await {
            Ok(channel) => {
                let mut client = AgentClient::new(channel.clone());
                let mut reads = ReadClient::new(channel);
                read_host_on(&mut client, &mut reads, &job, &agent).await
                // `client` and `reads` (the connection) are dropped here; tonic closes its
                // socket on its own
                // tasks, a moment later.
            }
            Err(failure) => Err(failure),
        };
    if !job.socket.closed(CLOSE_WAIT).await {
        tracing::warn!(
            "the connection to agent {host} was still open {} s after its read ended",
            CLOSE_WAIT.as_secs()
        );
    }
    result
}

/// [`read_host`] on its connection (`client` for listings, `reads` for the reads).
async fn read_host_on(
    client: &mut AgentClient<super::deadline::Deadline<tonic::transport::Channel>>,
    reads: &mut ReadClient<super::deadline::Deadline<tonic::transport::Channel>>,
    job: &HostJob,
    agent: &Peer<'_>,
) -> Result<(), Failure> {
    let request = match &job.request {
        Source::File(request) if job.glob => request,
        source => {
            return read_file(reads, job, agent, source.clone(), None)
                .await
                .map_err(|f| f.failure);
        }
    };
    let files = matching_files(client, job, request, agent).await?;
    let mut failed: Vec<Exit> = Vec::new();
    let mut stopped: Option<&str> = None;
    let mut tried = 0usize;
    for path in &files {
        tried += 1;
        let file: Arc<str> = Arc::from(path.as_str());
        let one = Source::File(pb::ReadLogRequest {
            path: path.clone(),
            ..request.clone()
        });
        match read_file(reads, job, agent, one, Some(Arc::clone(&file))).await {
            Ok(()) => {}
            Err(f) if f.failure.code == Exit::Ok => return Err(f.failure),
            // A refusal that reaches the host (the grant, the reader, the agent): the other
            // files would be refused alike, each an audited denial, so they are not asked for.
            Err(FileFailure { failure, reach }) => {
                failed.push(failure.code);
                job.events
                    .send(Event::FileFailed {
                        host: job.index,
                        file,
                        failure,
                    })
                    .map_err(|_| writer_gone())?;
                if reach == Reach::Host {
                    stopped = Some("the refusal holds for every file");
                    break;
                }
                if job.fail_fast {
                    stopped = Some("--fail-fast");
                    break;
                }
            }
        }
    }
    let untried = files.len().saturating_sub(tried);
    match failed.first() {
        None => Ok(()),
        Some(first) => Err(Failure::new(
            *first,
            format!(
                "{} of the {} files matching {} could not be read{}",
                failed.len(),
                files.len(),
                printable(&request.path),
                match stopped {
                    Some(why) if untried > 0 => format!(" ({why}: {untried} files not tried)"),
                    _ => String::new(),
                }
            ),
        )),
    }
}

/// The files `job`'s path glob names on its host: what the agent's `ListLogs` shows this
/// reader (only files its grants cover), oldest modification first, bounded by
/// [`MAX_FILES_PER_HOST`] and, across hosts, [`MAX_FILES_TOTAL`]; with `--follow`, the one
/// live file (neither rotated nor compressed) among them. Nothing matching is a failure.
async fn matching_files(
    client: &mut AgentClient<super::deadline::Deadline<tonic::transport::Channel>>,
    job: &HostJob,
    request: &pb::ReadLogRequest,
    agent: &Peer<'_>,
) -> Result<Vec<String>, Failure> {
    let glob = printable(&request.path).into_owned();
    let host = &job.target.host;
    let listing = match client
        .list_logs(pb::ListLogsRequest {
            path_glob: request.path.clone(),
            grant_token: request.grant_token.clone(),
        })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return Err(explain_host(&status, job, agent).await),
    };
    if listing.truncated || listing.files.len() > MAX_FILES_PER_HOST {
        return Err(Failure::from(format!(
            "{glob} matches more than {MAX_FILES_PER_HOST} files on agent {host} (the most one \
             read takes from a host); narrow the glob, and see the files with 'loggate logs ls \
             --host {host} GLOB'"
        )));
    }
    let mut files = listing.files;
    if request.follow {
        files.retain(|f| !f.rotated && f.compression.is_empty());
    }
    files.sort_by(|a, b| (a.modified_unix, &a.path).cmp(&(b.modified_unix, &b.path)));
    files.dedup_by(|a, b| a.path == b.path);
    if files.is_empty() {
        return Err(Failure::from(format!(
            "no {}file your grants cover on agent {host} matches {glob}; see the files you \
             may read with 'loggate logs ls --host {host}'",
            if request.follow { "live " } else { "" }
        )));
    }
    if request.follow && files.len() > 1 {
        let names: Vec<String> = files
            .iter()
            .take(3)
            .map(|f| printable(&f.path).into_owned())
            .collect();
        return Err(usage(format!(
            "--follow follows one live file, and {glob} matches {} on agent {host} ({}{}); \
             give the path of the one to follow",
            files.len(),
            names.join(", "),
            if files.len() > 3 { ", …" } else { "" }
        )));
    }
    let count = files.len();
    if !take_files(&job.files_total, count) {
        return Err(Failure::from(format!(
            "{glob} matches {count} files on agent {host}, which would take this read past \
             {MAX_FILES_TOTAL} files across its hosts; narrow the glob or the hosts"
        )));
    }
    Ok(files.into_iter().map(|f| f.path).collect())
}

/// Counts `count` more files against [`MAX_FILES_TOTAL`] in `total` (shared by the hosts of
/// one command) and says whether they fit; files that do not fit are not counted, so a host
/// refused for its many files does not use up the room of the hosts after it.
fn take_files(total: &AtomicUsize, count: usize) -> bool {
    total
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |sum| {
            sum.checked_add(count).filter(|sum| *sum <= MAX_FILES_TOTAL)
        })
        .is_ok()
}

/// How far a failed read of one of a glob's files reaches: whether the host's other files are
/// still worth asking for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// This file only (what it is, where it is, how it decompresses): go on with the next.
    File,
    /// The grant, the reader or the agent (revoked, expired, busy, refused identity, a broken
    /// connection): every other file would fail the same way, each an audited denial.
    Host,
}

/// The agent's refusal codes (`loggate-denial`, before a stream) and end codes (`loggate-end`,
/// a stream cut) that concern one file only. Anything else, or no code, reaches the host: the
/// glob stops there (fail closed: trying more files is what is avoided).
const PER_FILE_CODES: &[&str] = &[
    "content_binary",
    "compression_mismatch",
    "compression_unsupported",
    "compressed_not_tailable",
    "path_not_covered",
    "path_invalid",
    "path_traversal",
    "path_outside_roots",
    "path_symlink",
    "path_crosses_mount",
    "path_not_found",
    "path_not_regular_file",
    "path_hard_linked",
    "path_io_error",
    "decompression_limit",
    "read_error",
];

/// What `status` (an agent's refusal or end of one file's read) reaches, by its code.
fn reach_of(status: &tonic::Status) -> Reach {
    let code = |key: &str| {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match code("loggate-denial").or_else(|| code("loggate-end")) {
        Some(code) if PER_FILE_CODES.contains(&code.as_str()) => Reach::File,
        _ => Reach::Host,
    }
}

/// A failed read of one file, with how far it reaches.
struct FileFailure {
    failure: Failure,
    reach: Reach,
}

impl From<Failure> for FileFailure {
    /// A failure of the CLI's own (the writer gone, a connection): it reaches the host.
    fn from(failure: Failure) -> Self {
        FileFailure {
            failure,
            reach: Reach::Host,
        }
    }
}

/// The failure of `status`, explained, with its reach.
async fn file_failure(status: &tonic::Status, job: &HostJob, agent: &Peer<'_>) -> FileFailure {
    FileFailure {
        failure: explain_host(status, job, agent).await,
        reach: reach_of(status),
    }
}

/// [`explain_at`] for a host of a multi-host read: when it probes the agent with a connection
/// of its own (the read's connection was dropped without a reason), the probe waits until the
/// read's socket is closed and keeps the host to that one connection; a socket still open after
/// [`CLOSE_WAIT`] gives the explanation without the probe rather than a second connection. A
/// status that leaves the connection up ([`connection_still_up`]) is explained at once: its
/// socket will not close while the read holds it, so there is nothing to wait for.
async fn explain_host(status: &tonic::Status, job: &HostJob, agent: &Peer<'_>) -> Failure {
    explain_on(status, &job.config, &job.socket, agent).await
}

/// [`explain_host`] with the host's configuration and socket.
async fn explain_on(
    status: &tonic::Status,
    config: &ClientConfig,
    socket: &Socket,
    agent: &Peer<'_>,
) -> Failure {
    if !super::needs_probe(status) {
        return explain_at(status, config, agent).await;
    }
    if connection_still_up(status) {
        return super::explain(status, &agent.name);
    }
    match socket.hold_closed(CLOSE_WAIT).await {
        Some(_only) => explain_at(status, config, agent).await,
        None => super::explain(status, &agent.name),
    }
}

/// True when `status` ended one call but not its connection: the CLI's own deadline
/// ([`NoAnswer`]) or a reset of the one stream (h2's `RST_STREAM`), told by type along the
/// cause chain. A refused certificate never looks like this (it ends the connection).
fn connection_still_up(status: &tonic::Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        if c.is::<NoAnswer>()
            || c.downcast_ref::<h2::Error>()
                .is_some_and(h2::Error::is_reset)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Reads one file or journal unit (`request`) and hands its lines to the writer, whole,
/// holding at most [`LINES_IN_FLIGHT`] of the host's lines in flight.
async fn read_file(
    client: &mut ReadClient<super::deadline::Deadline<tonic::transport::Channel>>,
    job: &HostJob,
    agent: &Peer<'_>,
    request: Source,
    file: Option<Arc<str>>,
) -> Result<(), FileFailure> {
    let opened = match request {
        Source::File(request) => client.read_log(request).await,
        Source::Journal(request) => client.read_journal(request).await,
    };
    let mut stream = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => return Err(file_failure(&status, job, agent).await),
    };
    let mut pending: Vec<u8> = Vec::new();
    let send = |line: Vec<u8>, permit: OwnedSemaphorePermit| {
        job.events
            .send(Event::Line {
                host: job.index,
                file: file.clone(),
                line,
                _room: permit,
            })
            .map_err(|_| writer_gone())
    };
    let acquire = || async {
        Arc::clone(&job.room)
            .acquire_owned()
            .await
            .map_err(|_| writer_gone())
    };
    loop {
        let chunk = match stream.message().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(status) => {
                if !pending.is_empty() {
                    send(std::mem::take(&mut pending), acquire().await?)?;
                }
                return Err(file_failure(&status, job, agent).await);
            }
        };
        let Chunk::Data(data) = chunk else {
            continue;
        };
        let mut rest: &[u8] = &data;
        while !rest.is_empty() {
            match rest.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    pending.extend_from_slice(&rest[..i]);
                    rest = &rest[i + 1..];
                    send(std::mem::take(&mut pending), acquire().await?)?;
                }
                None => {
                    pending.extend_from_slice(rest);
                    rest = &[];
                }
            }
            while pending.len() > MAX_LINE {
                let tail = pending.split_off(MAX_LINE);
                send(std::mem::replace(&mut pending, tail), acquire().await?)?;
            }
        }
    }
    if !pending.is_empty() {
        send(pending, acquire().await?)?;
    }
    Ok(())
}

/// The order key of a log line for merging: its timestamp in Unix milliseconds — the forms of
/// [`loggate_core::timestamp::line_timestamp_ms`], and syslog's `Mmm dd HH:MM:SS` at the start
/// of the line, with the year that puts it at most a day after `now_ms` (the stamp has none; a
/// wrong year only misorders lines, it never selects or hides one).
pub fn line_order_ms(line: &[u8], now_ms: i64) -> Option<i64> {
    loggate_core::timestamp::line_timestamp_ms(line).or_else(|| syslog_ms(line, now_ms))
}

/// `Mmm dd HH:MM:SS` (RFC 3164, day space-padded or not) at the start of `line`.
fn syslog_ms(line: &[u8], now_ms: i64) -> Option<i64> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let month = MONTHS.iter().position(|m| line.get(..3) == Some(&m[..]))?;
    let rest = line.get(3..)?.strip_prefix(b" ")?;
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    let digits = |s: &[u8]| -> Option<u32> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    let day_end = rest.iter().position(|b| *b == b' ')?;
    if day_end > 2 {
        return None;
    }
    let day = digits(&rest[..day_end])?;
    let clock = rest.get(day_end + 1..day_end + 9)?;
    if clock[2] != b':' || clock[5] != b':' {
        return None;
    }
    let (h, m, s) = (
        digits(&clock[0..2])?,
        digits(&clock[3..5])?,
        digits(&clock[6..8])?,
    );
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let month = u32::try_from(month).ok()? + 1;
    let at = |year: i64| {
        let days = loggate_core::timestamp::days_from_civil(year, month, day);
        days * 86_400_000 + i64::from(h * 3600 + m * 60 + s) * 1000
    };
    let this_year = 1970 + now_ms.div_euclid(86_400_000 * 365_2425 / 10_000);
    // The year estimate above can be off by one near New Year: take the latest candidate year
    // that is not more than a day ahead of now.
    [this_year + 1, this_year, this_year - 1]
        .into_iter()
        .map(at)
        .find(|t| *t <= now_ms + 86_400_000)
}

/// A line waiting in the merge.
struct Waiting {
    key: i64,
    arrived: Instant,
    file: Option<Arc<str>>,
    line: Vec<u8>,
    _room: OwnedSemaphorePermit,
}

/// The hosts' lines not yet written, for the merge: per host, in its own order.
struct Merge {
    queues: Vec<VecDeque<Waiting>>,
    /// The key of each host's last line (inherited by a line without a time).
    last_key: Vec<i64>,
    reading: Vec<bool>,
    /// `Some(window)` with `--follow`: a line waits at most this long for quiet hosts.
    window: Option<Duration>,
}

impl Merge {
    fn new(hosts: usize, window: Option<Duration>) -> Merge {
        Merge {
            queues: (0..hosts).map(|_| VecDeque::new()).collect(),
            last_key: vec![i64::MIN; hosts],
            reading: vec![true; hosts],
            window,
        }
    }

    fn push(
        &mut self,
        host: usize,
        file: Option<Arc<str>>,
        line: Vec<u8>,
        room: OwnedSemaphorePermit,
        now_ms: i64,
    ) {
        let key = line_order_ms(&line, now_ms).unwrap_or(self.last_key[host]);
        self.last_key[host] = key;
        self.queues[host].push_back(Waiting {
            key,
            arrived: Instant::now(),
            file,
            line,
            _room: room,
        });
    }

    /// The next line to write, if one may be written now: the head with the smallest key (the
    /// lowest host index on a tie), once every host still reading has a line waiting — or,
    /// following, once some head has waited [`Merge::window`]; with `drain`, whatever waits.
    fn pop(&mut self, now: Instant, drain: bool) -> Option<(usize, Waiting)> {
        let (host, _) = self
            .queues
            .iter()
            .enumerate()
            .filter_map(|(i, q)| q.front().map(|w| (i, w.key)))
            .min_by_key(|(i, key)| (*key, *i))?;
        let complete = self
            .queues
            .iter()
            .zip(&self.reading)
            .all(|(q, reading)| !reading || !q.is_empty());
        let waited = self.window.is_some_and(|window| {
            self.queues
                .iter()
                .filter_map(VecDeque::front)
                .any(|w| now.duration_since(w.arrived) >= window)
        });
        if drain || complete || waited {
            self.queues[host].pop_front().map(|w| (host, w))
        } else {
            None
        }
    }

    /// When the oldest waiting line's window ends (following only).
    fn deadline(&self) -> Option<Instant> {
        let window = self.window?;
        self.queues
            .iter()
            .filter_map(VecDeque::front)
            .map(|w| w.arrived + window)
            .min()
    }
}

/// Writes the lines: `HOST: line`, or `HOST:FILE: line` for the files of a path glob (text),
/// or one JSON object per line with host and path.
struct Writer {
    out: std::io::BufWriter<std::io::Stdout>,
    json: bool,
    /// The JSON field naming what was read, and its value for a line of no listed file.
    json_key: (&'static str, String),
    bytes: u64,
}

impl Writer {
    fn line(&mut self, host: &str, file: Option<&str>, line: &[u8]) -> std::io::Result<()> {
        self.bytes = self
            .bytes
            .saturating_add(u64::try_from(line.len()).unwrap_or(u64::MAX));
        if self.json {
            let (key, value) = &self.json_key;
            let mut record = serde_json::Map::new();
            record.insert("host".into(), host.into());
            record.insert((*key).into(), file.unwrap_or(value).into());
            record.insert("line".into(), String::from_utf8_lossy(line).into());
            writeln!(self.out, "{}", serde_json::Value::Object(record))
        } else {
            // One buffer per line: the prefix and the line leave together.
            self.out.write_all(&prefixed_line(host, file, line))
        }
    }
}

/// `HOST: line` or `HOST:FILE: line`, with its newline. The agent's listed path is not trusted
/// to be printable (listing.rs says why); the line itself is the served content.
fn prefixed_line(host: &str, file: Option<&str>, line: &[u8]) -> Vec<u8> {
    let file = file.map(printable);
    let file_len = file.as_ref().map_or(0, |f| f.len() + 1);
    let mut whole = Vec::with_capacity(host.len() + file_len + 2 + line.len() + 1);
    whole.extend_from_slice(host.as_bytes());
    if let Some(file) = &file {
        whole.push(b':');
        whole.extend_from_slice(file.as_bytes());
    }
    whole.extend_from_slice(b": ");
    whole.extend_from_slice(line);
    whole.push(b'\n');
    whole
}

/// The progress line on stderr, when it is a terminal: `N/M hosts done, X read` (several
/// hosts), or the single-host read's byte bar ([`byte_progress`]) when one host's path glob is
/// read.
struct Progress {
    enabled: bool,
    shown: bool,
    total: usize,
    bytes_bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn draw(&mut self, done: usize, bytes: u64) {
        if let Some(bar) = &self.bytes_bar {
            // indicatif limits the redraws itself.
            bar.set_position(bytes);
            return;
        }
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{done}/{} hosts done, {} read",
            self.total,
            human_bytes(bytes)
        );
        let _ = err.flush();
        self.shown = true;
    }

    /// Writes `line` on stderr with the progress out of its way.
    fn say(&mut self, line: &str) {
        match &self.bytes_bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => {
                self.clear();
                eprintln!("{line}");
            }
        }
    }

    /// Clears the progress for good (at the end).
    fn finish(&mut self) {
        if let Some(bar) = self.bytes_bar.take() {
            bar.finish_and_clear();
        }
        self.clear();
    }

    /// Clears the line (before a failure line, and at the end).
    fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

/// `bytes` as "12.3 MiB".
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut whole = bytes;
    let mut tenths = 0;
    while whole >= 1024 && unit + 1 < UNITS.len() {
        tenths = (whole % 1024) * 10 / 1024;
        whole /= 1024;
        unit += 1;
    }
    if unit == 0 {
        format!("{whole} B")
    } else {
        format!("{whole}.{tenths} {}", UNITS[unit])
    }
}

/// The agents `hosts` (ids and globs) and `selector` name, from the controller's registry
/// (sorted by id); none is an error.
pub(super) async fn registry_targets(
    config: &ClientConfig,
    hosts: &[String],
    selector: Option<&str>,
) -> Result<Vec<Target>, Failure> {
    if let Some(selector) = selector {
        if selector.trim().is_empty() {
            return Err(usage(
                "--selector is empty; give labels such as env=prod,team=payments",
            ));
        }
    }
    // The controller's connection is closed before any agent's opens: the agents' connections
    // are then the command's only ones, at most `--parallel` of them.
    let socket = Socket::default();
    let listed =
        match socket_slot::connect(&config.controller, config, Server::Controller, &socket).await {
            Ok(channel) => {
                ControllerClient::new(channel)
                    .list_agents(pb::ListAgentsRequest {
                        selector: selector.unwrap_or_default().to_string(),
                    })
                    .await
            }
            Err(failure) => return Err(failure),
        };
    socket.closed(CLOSE_WAIT).await;
    let listing = listed
        .or_explain(config, &the_controller(config))
        .await?
        .into_inner()
        .agents;
    let targets = select_targets(hosts, selector.is_some(), &listing)?;
    if targets.is_empty() {
        return Err(Failure::from(
            "no agent matches --host/--selector; see the agents and their labels with 'loggate agent list'",
        ));
    }
    Ok(targets)
}

/// Reads from every agent `args` names, in parallel, or every file a path glob names on one
/// or more agents, and writes their lines (see the module documentation for the contract).
pub async fn read_many(config: ClientConfig, args: ManyArgs) -> CliResult {
    let request = super::read_request(&args.read)?;
    let multi = is_multi_host(&args.hosts, args.selector.as_deref());
    let glob = !args.literal && is_path_glob(&args.read.path);
    let targets = if multi {
        registry_targets(&config, &args.hosts, args.selector.as_deref()).await?
    } else {
        // One host, a path glob: the single-host read's way to the agent (--agent-addr too).
        let host = args.read.host.clone();
        let addr = agent_addr(&config, &host, args.read.agent_addr.clone()).await?;
        vec![Target {
            host,
            addr: Ok(addr),
        }]
    };
    let plan = Plan {
        source: Source::File(request),
        glob,
        multi,
        json: args.read.json,
        json_key: ("path", args.read.path.clone()),
        hosts: HostsArgs {
            parallel: args.parallel,
            fail_fast: args.fail_fast,
            merge: args.merge,
        },
    };
    read_hosts(config, targets, plan).await
}

/// How a multi-host command spreads over its hosts: `--parallel`, `--fail-fast`, `--merge`.
#[derive(Debug, Clone, Copy)]
pub struct HostsArgs {
    /// `--parallel`: agents connected at once.
    pub parallel: u16,
    /// `--fail-fast`: stop at the first host that fails.
    pub fail_fast: bool,
    /// `--merge`: interleave the hosts' lines in timestamp order (always so when following).
    pub merge: bool,
}

/// What [`read_hosts`] reads and how it writes it.
struct Plan {
    source: Source,
    /// The source is a file read whose path is a glob ([`is_path_glob`]).
    glob: bool,
    /// Several hosts (prefixed lines, exit codes 6 and 7), not one host's path glob.
    multi: bool,
    /// `--output json`: one JSON object per line.
    json: bool,
    /// The field naming what was read in a JSON line, and its value when no file is named:
    /// `("path", PATH)` for files, `("unit", UNIT)` for the journal.
    json_key: (&'static str, String),
    hosts: HostsArgs,
}

/// `loggate logs journal` over several agents (`--host` repeated or globbed, `--selector`):
/// `request` asked of every agent `hosts` and `selector` name, with the same contract as a
/// multi-host file read (the module documentation): lines prefixed with the host, each host
/// judged on its own, exit 6 or 7, `--merge` (and `--follow`) in the entries' time order.
pub async fn read_journal_many(
    config: ClientConfig,
    hosts: &[String],
    selector: Option<&str>,
    how: HostsArgs,
    request: pb::ReadJournalRequest,
    json: bool,
) -> CliResult {
    let targets = registry_targets(&config, hosts, selector).await?;
    let unit = request.unit.clone();
    let plan = Plan {
        source: Source::Journal(request),
        glob: false,
        multi: true,
        json,
        json_key: ("unit", unit),
        hosts: how,
    };
    read_hosts(config, targets, plan).await
}

/// Reads `plan` from every one of `targets`, in parallel, and writes their lines (see the
/// module documentation for the contract).
async fn read_hosts(config: ClientConfig, targets: Vec<Target>, plan: Plan) -> CliResult {
    let follow = plan.source.follow();
    let multi = plan.multi;
    let glob = plan.glob;
    let merge = plan.hosts.merge || follow;
    let parallel = usize::from(plan.hosts.parallel.max(1));
    if merge && targets.len() > parallel {
        return Err(usage(format!(
            "{} needs every host's stream at once, but {} hosts match and --parallel is {parallel}; \
             raise --parallel or narrow --host/--selector",
            if follow { "--follow" } else { "--merge" },
            targets.len()
        )));
    }
    let hosts: Vec<String> = targets.iter().map(|t| t.host.clone()).collect();
    let config = Arc::new(config);
    let files_total = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(Semaphore::new(parallel));
    let (events_tx, mut events) = mpsc::unbounded_channel();
    // Hosts start in id order: one dispatcher takes each connection slot before it starts
    // that host's task (tasks spawned at once would race for the slots in any order). With
    // `--fail-fast`, a failed host marks `stopping` before it gives its slot back, so no host
    // starts after the first failure.
    let stopping = Arc::new(AtomicBool::new(false));
    let fail_fast = plan.hosts.fail_fast;
    let request = plan.source;
    let mut tasks = tokio::task::JoinSet::new();
    let events_for_hosts = events_tx.clone();
    tasks.spawn(async move {
        let events_tx = events_for_hosts;
        let mut readers = tokio::task::JoinSet::new();
        for (index, target) in targets.into_iter().enumerate() {
            let Ok(connection) = Arc::clone(&connections).acquire_owned().await else {
                break;
            };
            if stopping.load(Ordering::Acquire) {
                break;
            }
            let config = Arc::clone(&config);
            let request = request.clone();
            let events = events_tx.clone();
            let files_total = Arc::clone(&files_total);
            let stopping = Arc::clone(&stopping);
            readers.spawn(async move {
                // The connection slot is held until `Done` is sent: with `--fail-fast`, no
                // next host starts before the writer has seen this one's failure. `read_host`
                // returns once the host's socket is closed, so a slot never covers two sockets.
                let _connection = connection;
                let room = Arc::new(Semaphore::new(usize::from(LINES_IN_FLIGHT)));
                let result = read_host(HostJob {
                    config,
                    index,
                    target,
                    request,
                    glob,
                    fail_fast,
                    files_total,
                    room: Arc::clone(&room),
                    events: events.clone(),
                    socket: Socket::default(),
                })
                .await;
                if fail_fast && result.is_err() {
                    stopping.store(true, Ordering::Release);
                }
                // Nor before its lines are written: a slow standard output cannot make finished
                // hosts pile up lines (at most --parallel × LINES_IN_FLIGHT wait, in all).
                let _written = room.acquire_many(u32::from(LINES_IN_FLIGHT)).await;
                let _ = events.send(Event::Done {
                    host: index,
                    result,
                });
            });
        }
        // The readers are this task's: aborting it (the command ending) aborts them.
        while readers.join_next().await.is_some() {}
    });
    drop(events_tx);

    let mut writer = Writer {
        out: std::io::BufWriter::new(std::io::stdout()),
        json: plan.json,
        json_key: plan.json_key,
        bytes: 0,
    };
    let mut progress = Progress {
        enabled: multi && progress_wanted(follow),
        shown: false,
        total: hosts.len(),
        // One host, a path glob: the single-host read's bar.
        bytes_bar: if multi { None } else { byte_progress(follow) },
    };
    let mut merge_state = merge.then(|| Merge::new(hosts.len(), follow.then_some(FOLLOW_WINDOW)));
    let mut done = 0usize;
    let mut ended = vec![false; hosts.len()];
    let mut failed: Vec<(usize, Failure)> = Vec::new();
    let mut stop: Option<Failure> = None;
    let mut last_draw = Instant::now();
    progress.draw(0, 0);
    while done < hosts.len() && stop.is_none() {
        let deadline = merge_state.as_ref().and_then(Merge::deadline);
        let tick = progress.enabled.then_some(last_draw + PROGRESS_EVERY);
        let wake = deadline.into_iter().chain(tick).min();
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => Some(event),
                // Every reader has ended (each sends `Done` first): nothing more can come.
                None => break,
            },
            () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => None,
        };
        match event {
            Some(Event::Line {
                host,
                file,
                line,
                _room: room,
            }) => match &mut merge_state {
                Some(m) => m.push(
                    host,
                    file,
                    line,
                    room,
                    loggate_core::timestamp::UnixMillis::now().0,
                ),
                None => {
                    if let Err(e) = writer.line(&hosts[host], file.as_deref(), &line) {
                        stop = Some(Failure::from(e));
                    }
                }
            },
            Some(Event::FileFailed {
                host,
                file,
                failure,
            }) => {
                let _ = writer.out.flush();
                progress.say(&format!(
                    "loggate: {}:{}: {}",
                    hosts[host],
                    printable(&file),
                    failure.message
                ));
            }
            Some(Event::Done { host, result }) => {
                done += 1;
                ended[host] = true;
                if let Some(m) = &mut merge_state {
                    m.reading[host] = false;
                }
                match result {
                    Ok(()) => {}
                    // The writer's own end (fail-fast, closed stdout) is not a host's failure.
                    Err(f) if f.code == Exit::Ok => {}
                    // One host (a path glob): its failure is the command's, said once, below.
                    Err(f) if !multi => failed.push((host, f)),
                    Err(f) => {
                        let _ = writer.out.flush();
                        progress.say(&format!("loggate: {}: {}", hosts[host], f.message));
                        if fail_fast {
                            stop = Some(Failure::new(
                                f.code,
                                format!(
                                    "stopped at the first failure (--fail-fast): {}",
                                    hosts[host]
                                ),
                            ));
                        }
                        failed.push((host, f));
                    }
                }
            }
            None => {}
        }
        if let Some(m) = &mut merge_state {
            while let Some((host, waiting)) = m.pop(Instant::now(), false) {
                if let Err(e) = writer.line(&hosts[host], waiting.file.as_deref(), &waiting.line) {
                    stop = Some(Failure::from(e));
                    break;
                }
            }
        }
        if events.is_empty() {
            if let Err(e) = writer.out.flush() {
                stop = Some(Failure::from(e));
            }
        }
        if progress.bytes_bar.is_some()
            || (progress.enabled && last_draw.elapsed() >= PROGRESS_EVERY)
        {
            progress.draw(done, writer.bytes);
            last_draw = Instant::now();
        }
    }
    tasks.abort_all();
    // A reader that ended without a word (it panicked) failed; it is never counted as read.
    if stop.is_none() {
        for (host, _) in ended.iter().enumerate().filter(|(_, e)| !**e) {
            progress.say(&format!(
                "loggate: {}: the read ended unexpectedly",
                hosts[host]
            ));
            failed.push((host, Failure::from("the read ended unexpectedly")));
        }
    }
    // What the hosts sent before the end is written, in order (a closed stdout writes nothing).
    if let Some(m) = &mut merge_state {
        if stop.as_ref().is_none_or(|f| f.code != Exit::Ok) {
            while let Some((host, waiting)) = m.pop(Instant::now(), true) {
                if writer
                    .line(&hosts[host], waiting.file.as_deref(), &waiting.line)
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    let flushed = writer.out.flush();
    progress.finish();
    if let Some(f) = stop {
        return Err(f);
    }
    flushed.map_err(Failure::from)?;
    if failed.is_empty() {
        return Ok(());
    }
    if !multi {
        // One host: its own failure and exit code (3 denied, 1 error, 4 ended, 2 usage), as a
        // single-host read's.
        if let Some((_, f)) = failed.into_iter().next() {
            return Err(f);
        }
        return Ok(());
    }
    failed.sort_by_key(|(host, _)| *host);
    let names: Vec<&str> = failed.iter().map(|(h, _)| hosts[*h].as_str()).collect();
    let code = if failed.len() == hosts.len() {
        Exit::AllHostsFailed
    } else {
        Exit::SomeHostsFailed
    };
    Err(Failure::new(
        code,
        format!(
            "{} of {} hosts failed ({}); the others were read whole",
            failed.len(),
            hosts.len(),
            names.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failure_that_leaves_the_connection_up_is_explained_without_waiting_for_it() {
        let config = ClientConfig {
            controller: "127.0.0.1:1".to_string(),
            sign_in: None,
            tls: loggate_core::tls::TlsFiles {
                ca: "/nonexistent/ca.crt".into(),
                cert: "/nonexistent/user.crt".into(),
                key: "/nonexistent/user.key".into(),
            },
        };
        let socket = Socket::default();
        // The read's connection is still open: its socket holds the one permit.
        let _open = socket
            .hold_closed(Duration::from_secs(1))
            .await
            .expect("free");
        let status = tonic::Status::from_error(Box::new(NoAnswer(Duration::from_secs(30))));
        assert!(super::super::needs_probe(&status));
        let agent = Peer {
            name: "agent web-1".to_string(),
            addr: "127.0.0.1:1".to_string(),
            server: Server::Agent("web-1"),
        };
        let started = std::time::Instant::now();
        let failure = explain_on(&status, &config, &socket, &agent).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "waited {:?} for a socket that stays open",
            started.elapsed()
        );
        assert_eq!(failure.code, Exit::Error);
    }

    fn listing(id: &str, addr: &str) -> pb::AgentListing {
        pb::AgentListing {
            agent_id: id.to_string(),
            addr: addr.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn one_plain_host_keeps_the_single_host_read() {
        assert!(!is_multi_host(&["web-1".into()], None));
        assert!(is_multi_host(&["web-*".into()], None));
        assert!(is_multi_host(&["web-1".into(), "web-2".into()], None));
        assert!(is_multi_host(&["web-1".into()], Some("env=prod")));
    }

    #[test]
    fn globs_and_ids_select_from_the_registry_and_an_unknown_id_fails_alone() {
        let agents = [
            listing("web-1", "127.0.0.1:1"),
            listing("web-2", ""),
            listing("db-1", "127.0.0.1:3"),
        ];
        let t = select_targets(&["web-*".into(), "db-1".into()], false, &agents).unwrap();
        let names: Vec<&str> = t.iter().map(|t| t.host.as_str()).collect();
        assert_eq!(names, ["db-1", "web-1", "web-2"]);
        assert!(t[2].addr.as_ref().unwrap_err().contains("has not told"));
        let t = select_targets(&["nosuch".into(), "web-1".into()], false, &agents).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t[0].addr.as_ref().unwrap_err().contains("never contacted"));
        // A selector alone takes every agent the controller returned for it.
        assert_eq!(select_targets(&[], true, &agents).unwrap().len(), 3);
        assert_eq!(
            select_targets(&["web-[".into()], false, &agents)
                .unwrap_err()
                .code,
            Exit::Usage
        );
    }

    #[test]
    fn syslog_stamps_order_with_a_year_not_after_tomorrow() {
        // 2026-12-04T12:00:00Z
        let now = 1_796_385_600_000;
        let dec = syslog_ms(b"Dec  4 11:59:59 host app: x", now).unwrap();
        assert_eq!(dec, now - 1000);
        // Late December seen in early January is last year's.
        let jan_now = 1_798_848_000_000; // 2027-01-02T00:00:00Z
        let late = syslog_ms(b"Dec 31 23:00:00 h a: x", jan_now).unwrap();
        assert!(late < jan_now && jan_now - late < 2 * 86_400_000);
        assert_eq!(syslog_ms(b"Dez 31 23:00:00", now), None);
        assert_eq!(syslog_ms(b"Dec 31 25:00:00", now), None);
        assert_eq!(syslog_ms(b"Dec", now), None);
        assert_eq!(
            line_order_ms(b"2026-11-27 07:00:00.250 x", now),
            Some(1_795_762_800_250)
        );
    }

    #[test]
    fn a_journal_line_is_ordered_by_its_entrys_own_realtime_timestamp() {
        // As the agent serves an entry: `TIME AGENT UNIT[PID]: message`, TIME in microseconds.
        let day = loggate_core::timestamp::days_from_civil(2026, 12, 5) * 86_400_000;
        let at = |line: &[u8]| line_order_ms(line, day);
        assert_eq!(
            at(b"2026-12-05T02:30:00.123456Z web-1 nginx.service[1234]: GET / 2026-01-01"),
            Some(day + 9_000_000 + 123)
        );
        let mut m = Merge::new(2, None);
        m.push(
            0,
            None,
            b"2026-12-05T02:30:00.500000Z web-1 nginx.service[1]: b".to_vec(),
            permit(),
            day,
        );
        m.push(
            1,
            None,
            b"2026-12-05T02:30:00.250000Z web-2 nginx.service[1]: a".to_vec(),
            permit(),
            day,
        );
        let (first, _) = m
            .pop(Instant::now(), false)
            .expect("both hosts have a line");
        assert_eq!(first, 1, "the earlier entry first, whatever the host order");
    }

    fn permit() -> OwnedSemaphorePermit {
        Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap()
    }

    #[test]
    fn the_merge_waits_for_every_reading_host_and_keeps_each_hosts_order() {
        let now_ms = 1_796_385_600_000;
        let mut m = Merge::new(2, None);
        m.push(
            0,
            None,
            b"2026-11-27T07:00:02Z a2".to_vec(),
            permit(),
            now_ms,
        );
        m.push(0, None, b"no time: follows a2".to_vec(), permit(), now_ms);
        m.push(
            0,
            None,
            b"2026-11-27T07:00:01Z a1, out of order within a".to_vec(),
            permit(),
            now_ms,
        );
        // Host 1 has nothing yet and is still reading: nothing may be written.
        assert!(m.pop(Instant::now(), false).is_none());
        m.push(
            1,
            None,
            b"2026-11-27T07:00:03Z b3".to_vec(),
            permit(),
            now_ms,
        );
        let mut order = Vec::new();
        while let Some((_, w)) = m.pop(Instant::now(), false) {
            order.push(String::from_utf8(w.line).unwrap());
        }
        // Host 0's three lines came first, in its own order; b3 waits for host 0's next line.
        assert_eq!(order.len(), 3, "{order:?}");
        assert!(order[0].ends_with("a2") && order[1].starts_with("no time"));
        m.reading[0] = false;
        let (host, _) = m.pop(Instant::now(), false).unwrap();
        assert_eq!(host, 1);
    }

    #[test]
    fn following_a_quiet_host_holds_the_others_back_one_window_at_most() {
        let mut m = Merge::new(2, Some(Duration::from_millis(500)));
        m.push(0, None, b"2026-11-27T07:00:02Z a".to_vec(), permit(), 0);
        let now = Instant::now();
        assert!(m.pop(now, false).is_none());
        assert!(m.deadline().is_some());
        assert!(m.pop(now + Duration::from_millis(600), false).is_some());
    }

    #[test]
    fn a_path_glob_takes_at_most_the_total_bound_of_files_across_hosts() {
        let total = AtomicUsize::new(0);
        assert!(take_files(&total, MAX_FILES_PER_HOST));
        assert!(take_files(&total, MAX_FILES_TOTAL - MAX_FILES_PER_HOST));
        // Full: one more file does not fit, and a refused host takes nothing.
        assert!(!take_files(&total, 1));
        assert_eq!(total.load(Ordering::SeqCst), MAX_FILES_TOTAL);
        assert!(!take_files(&total, usize::MAX));
        assert!(take_files(&total, 0));
    }

    #[test]
    fn a_listed_file_name_with_a_bidi_override_is_prefixed_escaped() {
        let line = prefixed_line("web-1", Some("/l/a\u{202e}gol.txt"), b"hello");
        let line = String::from_utf8(line).expect("utf-8");
        assert!(!line.contains('\u{202e}'), "{line:?}");
        assert_eq!(line, "web-1:/l/a\\u{202e}gol.txt: hello\n");
    }

    #[test]
    fn an_agents_refusal_message_is_shown_without_terminal_sequences() {
        let status = tonic::Status::failed_precondition("bad\u{1b}]0;x\u{7}\u{202e} file");
        let failure = super::super::explain(&status, "agent web-1");
        assert!(
            !failure.message.contains(['\u{1b}', '\u{7}', '\u{202e}']),
            "{:?}",
            failure.message
        );
        assert!(
            failure.message.contains("bad\\u{1b}]0;x\\u{7}"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn a_glob_goes_on_after_a_per_file_refusal_and_stops_at_any_other() {
        let with = |key: &str, code: &str| {
            let mut s = tonic::Status::permission_denied("refused");
            s.metadata_mut().insert(
                key.to_owned()
                    .parse::<tonic::metadata::MetadataKey<_>>()
                    .expect("key"),
                code.parse().expect("value"),
            );
            s
        };
        for code in ["content_binary", "path_not_found", "compression_mismatch"] {
            assert_eq!(
                reach_of(&with("loggate-denial", code)),
                Reach::File,
                "{code}"
            );
        }
        assert_eq!(
            reach_of(&with("loggate-end", "decompression_limit")),
            Reach::File
        );
        for code in [
            "grant_revoked",
            "grant_expired",
            "too_many_streams",
            "agent_busy",
            "identity_refused",
            "no_grant",
        ] {
            assert_eq!(
                reach_of(&with("loggate-denial", code)),
                Reach::Host,
                "{code}"
            );
        }
        // A stream cut by revocation or expiry carries no per-file code; nor does a broken
        // connection.
        assert_eq!(
            reach_of(&tonic::Status::aborted("grant revoked")),
            Reach::Host
        );
        assert_eq!(reach_of(&with("loggate-end", "grant_revoked")), Reach::Host);
    }

    #[test]
    fn path_globs_are_told_from_plain_paths() {
        assert!(is_path_glob("/var/log/app/*.log"));
        assert!(is_path_glob("/var/log/app/api.log.[0-9]"));
        assert!(is_path_glob("/var/log/{a,b}.log"));
        assert!(!is_path_glob("/var/log/app/api.log.2.gz"));
    }

    #[test]
    fn the_byte_progress_template_parses() {
        assert!(indicatif::ProgressStyle::with_template(BYTE_PROGRESS_TEMPLATE).is_ok());
        // Not on a terminal (the test's stderr is captured): no bar at all.
        if !std::io::stderr().is_terminal() {
            assert!(byte_progress(false).is_none());
        }
        assert!(byte_progress(true).is_none(), "never while following");
    }

    #[test]
    fn bytes_read_are_shown_in_binary_units() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
