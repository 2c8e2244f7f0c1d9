//! `cargo xtask bench reads`: one `loggate logs cat --selector …` over many real agents, with
//! each `--parallel K` asked for (issue 13, "a 1,000-host read does not open 1,000 connections
//! at once"; docs/performance.md, "Multi-host reads").
//!
//! On loopback: one controller and `--hosts` real agents (the test harness's cluster), each on
//! its own address `127.2.x.y` with its own small log (`--size-kib`), all labelled
//! `bench=reads` and covered by one grant issued by that label. The agents run with the bypass
//! audit off (`[bypass] mode = "off"`): hundreds of eBPF loads on one kernel are not what is
//! measured here, and every agent would watch the same files. Once the first agent runs, the
//! bench measures its memory (`VmRSS`; its own anonymous memory `RssAnon` times `--hosts`, plus
//! the binary's shared pages `RssFile` once) and refuses a `--hosts` whose agents would not fit
//! in half of the memory available (`MemAvailable`).
//!
//! For each K, best of [`RUNS`] runs (by wall time), it measures the CLI: wall time; peak open
//! TCP connections to the agents, sampled every [`SAMPLE_EVERY`] from `/proc/<cli>/fd` (its
//! socket inodes) joined with `/proc/<cli>/net/tcp` (connections whose remote address is in
//! `127.2.0.0/16`, any state but LISTEN), so a connection that lives less than a sample may be
//! missed (the figure is a lower bound, the bound itself is proved by
//! tests/tests/multihost_parallel.rs); peak RSS (`ru_maxrss` of `wait4`, the kernel's VmHWM);
//! bytes written to standard output; the exit status; and whether every host's output is whole
//! (its prefixed line count equals the log's). Then one `--merge` run with `--parallel` equal to
//! the number of hosts (a merge needs every host's stream at once).
//!
//! Bounded: at most [`MAX_HOSTS`] agents, every CLI run killed after [`RUN_TIMEOUT`]; the
//! cluster (controller and agents) is stopped when the bench ends, whatever the outcome. The
//! soft `RLIMIT_NOFILE` is raised to the hard limit (`setrlimit`; the controller, agents and
//! CLI inherit it) when it is below what N agents and the largest K need. Nothing here asserts
//! a time: it prints figures, the ratio of each K's wall time to K=1's, and the machine's load.

use crate::bench_redact::load_average;
use crate::{cargo, run};
use anyhow::{bail, Context};
use loggate_tests::{text, Cluster};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Number of agents (each its own loopback address 127.2.x.y), at most 500.
    #[arg(long, default_value_t = 100)]
    hosts: usize,
    /// Values of `--parallel` to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    parallel: Vec<u16>,
    /// Size of each agent's log, in KiB.
    #[arg(long, default_value_t = 256)]
    size_kib: u64,
    /// Measure the `loggate` and `loggate-agent` binaries in this folder instead of building
    /// the release ones.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// The most agents one run starts.
const MAX_HOSTS: usize = 500;
/// The largest log a host serves, in KiB.
const MAX_SIZE_KIB: u64 = 64 * 1024;
/// Runs of each K; the fastest is reported.
const RUNS: usize = 2;
/// A CLI run still going after this is killed and reported as failed.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the CLI's connections are counted.
const SAMPLE_EVERY: Duration = Duration::from_millis(3);
/// The label the bench's agents carry and its grant and reads select.
const SELECTOR: &str = "bench=reads";

pub fn run_bench(args: &Args) -> anyhow::Result<()> {
    if args.hosts == 0 || args.hosts > MAX_HOSTS {
        bail!(
            "--hosts must be between 1 and {MAX_HOSTS} (got {})",
            args.hosts
        );
    }
    if args.size_kib == 0 || args.size_kib > MAX_SIZE_KIB {
        bail!("--size-kib must be between 1 and {MAX_SIZE_KIB}");
    }
    if args.parallel.is_empty() || args.parallel.iter().any(|&k| k == 0 || k > 1024) {
        bail!("every --parallel value must be between 1 and 1024");
    }
    let bins = match &args.bin_dir {
        Some(dir) => {
            std::path::absolute(dir).with_context(|| format!("--bin-dir {}", dir.display()))?
        }
        None => {
            run(cargo().args([
                "build",
                "--release",
                "-p",
                "loggate",
                "-p",
                "loggate-agent",
                "--bins",
            ]))?;
            crate::target_dir().join("release")
        }
    };
    let largest_k = args.parallel.iter().copied().max().unwrap_or(1);
    let nofile = raise_nofile(args.hosts.max(usize::from(largest_k)) * 2 + 256)?;

    // Set while the bench is single-threaded; the harness reads it to find the binaries.
    std::env::set_var("LOGGATE_BIN_DIR", &bins);
    let mut cluster = Cluster::new(None)?;
    let (log, lines) = write_log(&cluster.dir, args.size_kib)?;
    let ids: Vec<String> = (0..args.hosts).map(|i| format!("rb-{i:03}")).collect();
    let mut agent_rss_kib = 0;
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        place_agent(&mut cluster, id, i, log.parent().unwrap_or(Path::new("/")))?;
        if i == 0 {
            cluster.start_controller()?;
            cluster.start_agent(id)?;
            // One agent's resident memory once it holds its grant stream and is idle.
            std::thread::sleep(Duration::from_millis(500));
            let pid = cluster
                .agent_pid(id)
                .context("the first agent is not running")?;
            // Each agent adds its own anonymous memory; the binary's pages are shared.
            agent_rss_kib = status_kib(pid, "VmRSS:")?;
            let private_kib = status_kib(pid, "RssAnon:")?;
            let available = meminfo_kib("MemAvailable:")?;
            let need = private_kib * u64::try_from(args.hosts)? + status_kib(pid, "RssFile:")?;
            // Half of what is available: agents grow while they serve, and the machine is shared.
            if need > available / 2 {
                bail!(
                    "{} agents need about {} MiB ({} MiB of their own each), more than half of \
                     the {} MiB available; run with fewer --hosts",
                    args.hosts,
                    need / 1024,
                    private_kib / 1024,
                    available / 1024
                );
            }
        } else {
            cluster.start_agent(id)?;
        }
    }
    let glob = format!("{}/*.log", log.parent().unwrap_or(Path::new("/")).display());
    let out = cluster.run_cli(
        "admin",
        &[
            "grant",
            "issue",
            "--subject",
            "alice",
            "--label",
            SELECTOR,
            "--path",
            &glob,
            "--ttl",
            "2h",
            "--reason",
            "BENCH-13",
            "--redaction",
            "default",
            "--json",
        ],
    )?;
    if !out.status.success() {
        bail!("grant issue failed: {}", text(&out).1);
    }
    let grant: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let grant_id = grant["id"]
        .as_str()
        .context("no id in grant issue output")?;
    for id in &ids {
        cluster.wait_for_grant(id, grant_id)?;
    }
    wait_registered(&cluster, args.hosts)?;
    eprintln!(
        "xtask: {} agents started, granted and registered in {:.1}s",
        args.hosts,
        started.elapsed().as_secs_f64()
    );

    let path = log.display().to_string();
    let mut rows = Vec::new();
    for &k in &args.parallel {
        let mut best: Option<Measured> = None;
        for _ in 0..RUNS {
            let m = measure(&cluster, &ids, &path, lines, k, false)?;
            if best.as_ref().is_none_or(|b| m.wall < b.wall) {
                best = Some(m);
            }
        }
        if let Some(b) = best {
            rows.push((format!("{k}"), b));
        }
    }
    let all = u16::try_from(args.hosts)?;
    let merged = measure(&cluster, &ids, &path, lines, all, true)?;
    rows.push((format!("{all} --merge"), merged));

    println!(
        "\nloggate logs cat --selector {SELECTOR} over {} agents, {} KiB ({lines} lines) each, \
         best of {RUNS}; agent RSS {:.1} MiB idle; RLIMIT_NOFILE {nofile}; load average {}",
        args.hosts,
        args.size_kib,
        agent_rss_kib as f64 / 1024.0,
        load_average()
    );
    println!(
        "{:>12} {:>9} {:>8} {:>10} {:>12} {:>11} {:>6} {:>9}",
        "--parallel",
        "wall s",
        "vs K=1",
        "peak conns",
        "peak RSS MiB",
        "bytes out",
        "exit",
        "complete"
    );
    let base = rows.first().map(|(_, m)| m.wall.as_secs_f64());
    for (k, m) in &rows {
        let ratio = base
            .map(|b| format!("{:.2}x", b / m.wall.as_secs_f64()))
            .unwrap_or_default();
        println!(
            "{:>12} {:>9.2} {:>8} {:>10} {:>12.1} {:>11} {:>6} {:>9}",
            k,
            m.wall.as_secs_f64(),
            ratio,
            m.peak_conns,
            m.peak_rss_kib as f64 / 1024.0,
            m.bytes,
            m.exit,
            format!("{}/{}", m.complete_hosts, args.hosts)
        );
        if !m.stderr.is_empty() {
            eprintln!("xtask: --parallel {k}: stderr: {}", m.stderr.trim_end());
        }
    }
    println!(
        "(vs K=1: K=1's wall time over this row's; peak conns sampled every {SAMPLE_EVERY:?}, \
         a lower bound; load average after: {})",
        load_average()
    );
    Ok(())
}

/// What one CLI run measured.
struct Measured {
    wall: Duration,
    peak_conns: usize,
    peak_rss_kib: i64,
    bytes: u64,
    exit: String,
    complete_hosts: usize,
    stderr: String,
}

/// Writes the log every agent serves: `size_kib` KiB of timestamped lines, some with an e-mail
/// address for the default redaction profile to replace. Returns its path and line count.
fn write_log(dir: &Path, size_kib: u64) -> anyhow::Result<(PathBuf, usize)> {
    let logs = dir.join("logs/app");
    std::fs::create_dir_all(&logs)?;
    let want = usize::try_from(size_kib * 1024)?;
    let mut content = String::with_capacity(want + 128);
    let mut lines = 0usize;
    while content.len() < want {
        let (m, s, ms) = (lines / 60_000 % 60, lines / 1000 % 60, lines % 1000);
        content.push_str(&format!(
            "2026-12-05T03:{m:02}:{s:02}.{ms:03}Z INFO request {lines} served user=u{lines}@example.com status=200\n"
        ));
        lines += 1;
    }
    let log = logs.join("app.log");
    std::fs::write(&log, content)?;
    Ok((log, lines))
}

/// Issues agent `id`'s certificate and writes its configuration: address `127.2.x.y` (the
/// `index`th of the fleet) on a port free there, the bench's label, no bypass audit.
fn place_agent(cluster: &mut Cluster, id: &str, index: usize, root: &Path) -> anyhow::Result<()> {
    let out = Command::new(cluster.bins.join("loggate"))
        .args(["pki", "issue"])
        .arg(cluster.dir.join("pki"))
        .args(["--agent", id])
        .output()?;
    if !out.status.success() {
        bail!("pki issue {id}: {}", text(&out).1);
    }
    cluster.add_agent(id, &[root], "[bypass]\nmode = \"off\"\npin = false\n")?;
    let ip = Ipv4Addr::new(
        127,
        2,
        u8::try_from(1 + index / 250)?,
        u8::try_from(1 + index % 250)?,
    );
    let port = TcpListener::bind((ip, 0))
        .with_context(|| format!("cannot bind {ip}: is 127.0.0.0/8 routed to lo?"))?
        .local_addr()?
        .port();
    let addr = SocketAddr::from((ip, port));
    let info = cluster.agents.get_mut(id).context("unknown agent")?;
    let toml = std::fs::read_to_string(&info.config)?
        .replacen(
            &format!("\nlisten = \"{}\"\n", info.addr),
            &format!("\nlisten = \"{addr}\"\n"),
            1,
        )
        .replacen(
            "labels = [\"env=demo\"]",
            &format!("labels = [\"env=demo\", \"{SELECTOR}\"]"),
            1,
        );
    if !toml.contains(&format!("listen = \"{addr}\"")) || !toml.contains(SELECTOR) {
        bail!("the harness's agent configuration changed: cannot place {id}");
    }
    std::fs::write(&info.config, toml)?;
    info.addr = addr;
    Ok(())
}

/// Waits until the controller's registry knows `count` agents of the bench with addresses.
fn wait_registered(cluster: &Cluster, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cluster.run_cli(
            "admin",
            &["agent", "list", "--selector", SELECTOR, "--output", "json"],
        )?;
        let known = text(&out)
            .0
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|a| a["addr"].as_str().is_some_and(|s| !s.is_empty()))
            .count();
        if known >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {known} of {count} agents registered with the controller within 60s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `loggate logs cat --selector … --parallel k [--merge] PATH` once and measures it.
fn measure(
    cluster: &Cluster,
    ids: &[String],
    path: &str,
    lines: usize,
    k: u16,
    merge: bool,
) -> anyhow::Result<Measured> {
    let mut cmd = cluster.cli("alice");
    cmd.args(["logs", "cat", "--selector", SELECTOR, "--parallel"])
        .arg(k.to_string());
    if merge {
        cmd.arg("--merge");
    }
    cmd.arg(path).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting loggate")?;
    let pid = child.id();
    let stdout = child.stdout.take().context("no stdout")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let reader = std::thread::spawn(move || count_output(stdout));
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr)
            .take(64 * 1024)
            .read_to_string(&mut s);
        s
    });
    let cpid = libc::pid_t::try_from(pid).context("child pid out of range")?;
    let mut peak_conns = 0;
    let (status, rss) = loop {
        peak_conns = peak_conns.max(agent_connections(pid));
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `usage` are valid and writable for the call; `cpid` is our own
        // child, not yet reaped (std's `Child` is never waited on for it).
        let r = unsafe { libc::wait4(cpid, &mut status, libc::WNOHANG, &mut usage) };
        if r == cpid {
            break (status, usage.ru_maxrss);
        }
        if r < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).context("waiting for loggate");
            }
        }
        if start.elapsed() > RUN_TIMEOUT {
            // Not yet reaped, so the pid is still our child's.
            let _ = child.kill();
        }
        std::thread::sleep(SAMPLE_EVERY);
    };
    let wall = start.elapsed();
    let (bytes, per_host) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the output reader panicked"))??;
    let stderr = errors.join().unwrap_or_default();
    let exit = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status).to_string()
    } else {
        format!("sig {}", libc::WTERMSIG(status))
    };
    let complete_hosts = ids
        .iter()
        .filter(|id| per_host.get(id.as_str()).copied() == Some(lines))
        .count();
    Ok(Measured {
        wall,
        peak_conns,
        peak_rss_kib: rss,
        bytes,
        exit,
        complete_hosts,
        stderr,
    })
}

/// Drains the CLI's output: bytes, and lines per host prefix (`HOST: line`).
fn count_output(stdout: impl Read) -> anyhow::Result<(u64, HashMap<String, usize>)> {
    let mut reader = BufReader::with_capacity(1 << 20, stdout);
    let mut line = Vec::new();
    let mut bytes = 0u64;
    let mut per_host: HashMap<String, usize> = HashMap::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok((bytes, per_host));
        }
        bytes += u64::try_from(n)?;
        if let Some(colon) = memchr::memchr(b':', &line) {
            let host = String::from_utf8_lossy(&line[..colon]);
            if let Some(count) = per_host.get_mut(host.as_ref()) {
                *count += 1;
            } else {
                per_host.insert(host.into_owned(), 1);
            }
        }
    }
}

/// The CLI's TCP connections to the agents now: its IPv4 sockets with a remote address in
/// 127.2.0.0/16 and a state other than LISTEN. 0 when the process has gone.
fn agent_connections(pid: u32) -> usize {
    loggate_tests::sockets::open_tcp_sockets(pid, |row| {
        !row.listening
            && row
                .remote_v4()
                .is_some_and(|ip| ip.octets()[..2] == [127, 2])
    })
    .unwrap_or(0)
}

/// A `KEY: N kB` line of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    kib_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status"))?,
        key,
    )
}

/// A `KEY: N kB` line of `/proc/meminfo`, in KiB.
fn meminfo_kib(key: &str) -> anyhow::Result<u64> {
    kib_field(&std::fs::read_to_string("/proc/meminfo")?, key)
}

fn kib_field(text: &str, key: &str) -> anyhow::Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} line"))
}

/// Raises the soft `RLIMIT_NOFILE` to at least `want` (at most the hard limit) and returns
/// the soft limit now in force; the processes the bench starts inherit it.
fn raise_nofile(want: usize) -> anyhow::Result<u64> {
    // SAFETY: an all-zero `rlimit` is a valid value of this plain C struct.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `limit` is valid and writable for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    let want = libc::rlim_t::try_from(want)?;
    if limit.rlim_cur >= want {
        return Ok(limit.rlim_cur);
    }
    if limit.rlim_max < want {
        bail!(
            "the open-files limit's hard maximum ({}) is below the {want} this run needs; \
             raise it (ulimit -Hn) or run with fewer --hosts",
            limit.rlim_max
        );
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid `rlimit` whose soft value does not exceed its hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
    }
    eprintln!(
        "xtask: raised the soft RLIMIT_NOFILE to {} (setrlimit)",
        limit.rlim_cur
    );
    Ok(limit.rlim_cur)
}
