//! `cargo xtask bench redact`: single-core throughput of the redaction engine next to ripgrep
//! and sed on one deterministic mixed log corpus, in one run (docs/performance.md).
//!
//! The corpus (nginx access lines, JSON application logs, Java lines and stack frames; about
//! 4 % of lines carry a sensitive value, many more carry look-alikes) is generated once into
//! `target/bench/` and reused while its checksum matches. Every measured command runs pinned to
//! CPU 0 (`taskset -c 0`) with its standard output drained through a pipe by this process, the
//! same way for every tool (a 1 MiB pipe, see [`PIPE_BYTES`]); rounds are interleaved and the
//! median of the rounds is reported, with wall time and CPU time (user + system).

use crate::{cargo, run, target_dir};
use anyhow::{bail, Context};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// A 64 MiB corpus instead of 1 GiB (and a 640 MiB instead of a 10 GiB memory run): a fast
    /// check that everything runs, not a measurement to quote.
    #[arg(long)]
    quick: bool,
    /// Rounds of each command (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Skip the 10 GiB bounded-memory run.
    #[arg(long)]
    no_big: bool,
    /// Another build of `loggate-agent` (an older commit's, copied aside) whose default
    /// profile runs in the same rounds, interleaved, as (a0): before/after under the same
    /// load of this shared machine.
    #[arg(long, value_name = "AGENT")]
    baseline: Option<PathBuf>,
    /// Instead: the national detectors' cost (all 13 against `default`) on three seeded
    /// inputs; with `--baseline`, that build's output must equal this one's (see
    /// `bench_national.rs`).
    #[arg(long)]
    national: bool,
}

/// The eight patterns of the comparison (`shared/notes/redaction.md`, §7), for ripgrep and sed.
pub(crate) const PATTERNS: [&str; 8] = [
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    r"\b[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\b",
    r"[Bb]earer [A-Za-z0-9._~+/=-]+",
    r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+",
    r"\b(AKIA|ASIA)[A-Z0-9]{16}\b",
    r"\b[0-9]([ -]?[0-9]){12,18}\b",
    r#"(password|passwd|pwd)=[^&[:space:]"]+"#,
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
];

/// The engine's detectors that do the work of those eight patterns: profile `bench8`.
const BENCH8: [&str; 8] = [
    "email",
    "ipv4",
    "bearer",
    "jwt",
    "aws_access_key",
    "card",
    "secret",
    "private_key",
];

pub fn run_bench(args: &Args) -> anyhow::Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "loggate-agent",
        "--bin",
        "loggate-agent",
    ]))?;
    let agent = target_dir().join("release/loggate-agent");
    if args.national {
        return crate::bench_national::run(&agent, args.baseline.as_deref(), args.rounds);
    }
    let rg = ensure_ripgrep()?;
    let size: u64 = if args.quick { 64 << 20 } else { 1 << 30 };
    let corpus = corpus::ensure(&dir, size)?;
    let config = write_bench_config(&dir)?;
    let corpus_string = corpus.display().to_string();
    let config_string = config.display().to_string();
    let agent_string = agent.display().to_string();
    let (corpus_arg, config_arg, agent_arg) = (
        corpus_string.as_str(),
        config_string.as_str(),
        agent_string.as_str(),
    );

    let mut rg_cmd = vec![rg.display().to_string()];
    rg_cmd.extend(["--passthru", "-N", "--no-unicode", "-r", "[REDACTED]"].map(String::from));
    for p in PATTERNS {
        rg_cmd.extend(["-e".to_string(), p.to_string()]);
    }
    rg_cmd.push(corpus_string.clone());
    let mut sed_cmd = vec!["sed".to_string(), "-E".to_string()];
    for p in PATTERNS {
        sed_cmd.extend(["-e".to_string(), format!("s#{p}#[REDACTED]#g")]);
    }
    sed_cmd.push(corpus_string.clone());
    let mut tools: Vec<Tool> = vec![
        Tool::new(
            "(a) loggate default profile",
            [agent_arg, "redact", corpus_arg],
        ),
        Tool::new(
            "(b) loggate bench8 (8 detectors)",
            [
                agent_arg,
                "redact",
                "--config",
                config_arg,
                "--profile",
                "bench8",
                corpus_arg,
            ],
        ),
        Tool::new("(c) rg --passthru -r, 8 patterns", rg_cmd),
        Tool::new("(d) LC_ALL=C sed -E, 8 patterns", sed_cmd).env("LC_ALL", "C"),
        Tool::new("    cat (plain reading, reference)", ["cat", corpus_arg]),
    ];
    // Appended last, so that (a)–(d) keep their indices.
    let baseline = match &args.baseline {
        Some(path) => {
            let path = std::fs::canonicalize(path)
                .with_context(|| format!("cannot find the baseline agent {}", path.display()))?;
            let path = path.display().to_string();
            tools.push(Tool::new(
                "(a0) baseline agent, default profile",
                [path.as_str(), "redact", corpus_arg],
            ));
            Some(tools.len() - 1)
        }
        None => None,
    };

    println!(
        "rg:     {}",
        first_line(Command::new(&rg).arg("--version"))?
    );
    println!(
        "sed:    {}",
        first_line(Command::new("sed").arg("--version"))?
    );
    println!("corpus: {} ({} bytes)", corpus.display(), size);
    println!("output pipe: {} KiB", PIPE_BYTES / 1024);
    println!("load at start: {}", load_average());
    let mut times: Vec<Vec<Sample>> = vec![Vec::new(); tools.len()];
    for round in 0..args.rounds {
        for (i, tool) in tools.iter().enumerate() {
            let s = tool.measure(None)?;
            eprintln!(
                "round {}: {:<36} {:>7.2} s  {:>8.1} MB/s  cpu {:>6.2} s  out {} B",
                round + 1,
                tool.label,
                s.seconds,
                mb_per_s(size, s.seconds),
                s.cpu_seconds,
                s.out_bytes
            );
            times[i].push(s);
        }
    }
    println!("load at end:   {}", load_average());
    println!();
    println!(
        "{:<36} {:>9} {:>10} {:>10} {:>12} {:>12}",
        "command (taskset -c 0)", "median s", "MB/s", "median cpu", "MB/s per CPU s", "peak RSS"
    );
    let mut medians = Vec::new();
    let mut cpu_medians = Vec::new();
    for (tool, samples) in tools.iter().zip(&times) {
        let m = median(samples.iter().map(|s| s.seconds).collect());
        let rss = samples.iter().map(|s| s.max_rss_kib).max().unwrap_or(0);
        let cpu = median(samples.iter().map(|s| s.cpu_seconds).collect());
        println!(
            "{:<36} {:>9.3} {:>10.1} {:>10.3} {:>14.1} {:>9} KiB",
            tool.label,
            m,
            mb_per_s(size, m),
            cpu,
            mb_per_s(size, cpu),
            rss
        );
        medians.push(m);
        cpu_medians.push(cpu);
    }
    println!();
    // Throughput ratios: time of ripgrep over time of the engine.
    println!("(b)/(c) = {:.2}x   (target >= 4)", medians[2] / medians[1]);
    println!("(a)/(c) = {:.2}x   (target >= 4)", medians[2] / medians[0]);
    let per_round = |engine: usize| {
        times[engine]
            .iter()
            .zip(&times[2])
            .map(|(e, rg)| format!("{:.2}", rg.seconds / e.seconds))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "per round: (b)/(c) {}; (a)/(c) {}",
        per_round(1),
        per_round(0)
    );
    println!(
        "CPU time (user + system), ratio of medians: (b)/(c) = {:.3}x, (a)/(c) = {:.3}x",
        cpu_medians[2] / cpu_medians[1],
        cpu_medians[2] / cpu_medians[0]
    );
    // Per round, to three decimals: a criterion such as "at least 4x in every round" is
    // then read off the figures, not off times rounded to two decimals.
    let (cpu_b, cpu_a) = (
        cpu_ratios(&times[1], &times[2]),
        cpu_ratios(&times[0], &times[2]),
    );
    println!(
        "CPU per round: (b)/(c) {}; (a)/(c) {}",
        three_decimals(&cpu_b),
        three_decimals(&cpu_a)
    );
    println!(
        "CPU, median of the per-round ratios: (b)/(c) = {:.3}x, (a)/(c) = {:.3}x",
        median(cpu_b),
        median(cpu_a)
    );
    if let Some(a0) = baseline {
        println!(
            "baseline: (a0)/(c) = {:.2}x wall, {:.3}x CPU; per round {}; CPU per round {}; (a0)/(a) time = {:.2}x",
            medians[2] / medians[a0],
            cpu_medians[2] / cpu_medians[a0],
            per_round(a0),
            three_decimals(&cpu_ratios(&times[a0], &times[2])),
            medians[a0] / medians[0]
        );
    }

    if !args.no_big {
        let repeat = 10;
        let s = tools[0].measure(Some((&corpus, repeat)))?;
        let total = size * repeat;
        println!();
        println!(
            "(a) over {} bytes through a pipe ({}x the corpus): {:.2} s, {:.1} MB/s, peak RSS {} KiB",
            total,
            repeat,
            s.seconds,
            mb_per_s(total, s.seconds),
            s.max_rss_kib
        );
    }
    // Last: its two 64 MiB buffers would otherwise be in this process when it forks the
    // measured commands, and a forked child's peak RSS (`wait4`) starts from its parent's.
    let floor = memcpy_mb_per_s(size);
    println!(
        "memcpy floor (this process, one thread, 64 MiB buffers, {} bytes): {:.1} MB/s",
        size.max(1 << 30),
        floor
    );
    Ok(())
}

/// The physical floor of any engine that copies its input once: `memcpy` of `total` bytes (at
/// least 1 GiB), 64 MiB at a time between two buffers (larger than the caches), on one thread.
fn memcpy_mb_per_s(total: u64) -> f64 {
    const BUF: usize = 64 << 20;
    let src: Vec<u8> = (0..BUF).map(|i| (i % 251) as u8).collect();
    let mut dst = vec![0u8; BUF];
    // Every page of both buffers touched before the clock starts (no page faults measured),
    // and at least 16 copies (1 GiB) whatever the corpus size.
    dst.copy_from_slice(&src);
    let rounds = total.div_ceil(BUF as u64).max(16);
    let start = Instant::now();
    for _ in 0..rounds {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    mb_per_s(rounds * BUF as u64, start.elapsed().as_secs_f64())
}

fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds
}

/// The CPU time of the reference over the engine's, round by round (the rounds are
/// interleaved, so each pair ran under the same load).
fn cpu_ratios(engine: &[Sample], reference: &[Sample]) -> Vec<f64> {
    engine
        .iter()
        .zip(reference)
        .map(|(e, r)| r.cpu_seconds / e.cpu_seconds)
        .collect()
}

/// Ratios as `4.000, 4.041`: three decimals, so that a bound such as 4 is decided.
fn three_decimals(ratios: &[f64]) -> String {
    ratios
        .iter()
        .map(|r| format!("{r:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn first_line(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string())
}

/// `rg` from PATH, else `cargo install ripgrep` (crates.io) into cargo's bin folder.
fn ensure_ripgrep() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("rg"))
                .find(|f| f.is_file())
        })
        .unwrap_or_default();
    if let Some(rg) = on_path {
        return Ok(rg);
    }
    run(cargo().args(["install", "ripgrep", "--locked"]))?;
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    Ok(home.join("bin/rg"))
}

/// An agent configuration whose only use is its `bench8` profile (the other fields are
/// required by the format but never opened by `loggate-agent redact`).
fn write_bench_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("agent-bench.toml");
    let detectors = BENCH8.map(|d| format!("\"{d}\"")).join(", ");
    let text = format!(
        "id = \"bench\"\nlisten = \"127.0.0.1:1\"\ncontroller = \"https://127.0.0.1:1\"\n\
         grant_keys = []\nroots = [\"/nonexistent\"]\n\
         tls = {{ ca = \"ca.pem\", cert = \"cert.pem\", key = \"key.pem\" }}\n\n\
         [redaction.profiles.bench8]\ndetectors = [{detectors}]\n"
    );
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

struct Tool {
    label: &'static str,
    argv: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
}

#[derive(Clone, Copy)]
struct Sample {
    seconds: f64,
    /// User plus system CPU time of the command (its rusage): what load on the shared VM
    /// moves much less than wall time.
    cpu_seconds: f64,
    max_rss_kib: i64,
    out_bytes: u64,
}

impl Tool {
    fn new<S: Into<String>>(label: &'static str, argv: impl IntoIterator<Item = S>) -> Tool {
        Tool {
            label,
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
        }
    }

    fn env(mut self, k: &'static str, v: &'static str) -> Tool {
        self.env.push((k, v));
        self
    }

    /// Runs the command once on CPU 0, its output drained and counted. With `feed`, the
    /// command reads `repeat` copies of that file from a pipe on its standard input instead.
    fn measure(&self, feed: Option<(&Path, u64)>) -> anyhow::Result<Sample> {
        // With `feed`, the last argument (the file) is left out: the command reads its input.
        let argv = match feed {
            Some(_) => &self.argv[..self.argv.len() - 1],
            None => &self.argv[..],
        };
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"]).args(argv);
        cmd.envs(self.env.iter().copied())
            .stdin(if feed.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {:?}", self.argv))?;
        let feeder = match (feed, child.stdin.take()) {
            (Some((file, repeat)), Some(mut stdin)) => {
                let file = file.to_path_buf();
                Some(std::thread::spawn(move || -> std::io::Result<()> {
                    let mut buf = vec![0u8; 1 << 20];
                    for _ in 0..repeat {
                        let mut f = std::fs::File::open(&file)?;
                        loop {
                            let n = f.read(&mut buf)?;
                            if n == 0 {
                                break;
                            }
                            stdin.write_all(&buf[..n])?;
                        }
                    }
                    Ok(())
                }))
            }
            _ => None,
        };
        let mut stdout = child.stdout.take().context("no stdout pipe")?;
        widen_pipe(&stdout);
        let drain = std::thread::spawn(move || -> std::io::Result<u64> {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                match stdout.read(&mut buf)? {
                    0 => return Ok(total),
                    n => total += n as u64,
                }
            }
        });
        let (status, max_rss_kib, cpu_seconds) = wait_with_rusage(child.id())?;
        let seconds = start.elapsed().as_secs_f64();
        let out_bytes = drain
            .join()
            .map_err(|_| anyhow::anyhow!("the output reader panicked"))??;
        if let Some(f) = feeder {
            f.join()
                .map_err(|_| anyhow::anyhow!("the input writer panicked"))??;
        }
        if !status {
            bail!("{} failed", self.label.trim());
        }
        Ok(Sample {
            seconds,
            cpu_seconds,
            max_rss_kib,
            out_bytes,
        })
    }
}

/// Waits for the child `pid` and returns whether it succeeded and its peak resident set (KiB),
/// from `wait4`'s resource usage of that one child.
/// Size of the pipe each command writes its output into (`F_SETPIPE_SZ`; Linux's default is
/// 64 KiB). With 64 KiB the command blocks every 64 KiB until the draining thread of this
/// process is scheduled, which on the shared 2-vCPU VM took whole time slices: the engine
/// (writing at ~400 MB/s) blocked ~11,000 times per GiB, ripgrep ~300 times.
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Widens the pipe behind `stdout` to [`PIPE_BYTES`]; the default size is kept if the kernel
/// refuses (then the run says so).
pub(crate) fn widen_pipe(stdout: &std::process::ChildStdout) {
    use std::os::fd::AsRawFd;
    // SAFETY: `F_SETPIPE_SZ` on a pipe descriptor we own changes only its capacity; the
    // descriptor stays open for the call (borrowed from `stdout`).
    let r = unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
    if r < 0 {
        eprintln!(
            "xtask: cannot widen the output pipe: {}",
            std::io::Error::last_os_error()
        );
    }
}

pub(crate) fn wait_with_rusage(pid: u32) -> anyhow::Result<(bool, i64, f64)> {
    let pid = libc::pid_t::try_from(pid).context("child pid out of range")?;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, writable and live for the call; `pid` is our
        // own child, not yet reaped (std's `Child` is never waited on for it).
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("waiting for the benchmarked command");
        }
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        ok,
        usage.ru_maxrss,
        secs(usage.ru_utime) + secs(usage.ru_stime),
    ))
}

/// The deterministic corpus.
pub(crate) mod corpus {
    use super::*;

    /// Bump when the generator's output changes, so an old corpus is not reused.
    /// 2: Entra client secrets among the sensitive values, and `~`-dense lines (issue 16).
    const GENERATOR_VERSION: u32 = 2;

    /// The corpus of `size` bytes in `dir`, generated unless a copy with a matching checksum
    /// is already there.
    pub fn ensure(dir: &Path, size: u64) -> anyhow::Result<PathBuf> {
        let path = dir.join(format!("corpus-{}MiB.log", size >> 20));
        let sum_path = path.with_extension("sum");
        let want = std::fs::read_to_string(&sum_path).unwrap_or_default();
        if !want.is_empty() && path.is_file() {
            let have = stamp(&path)?;
            if have == want.trim() {
                eprintln!("xtask: reusing {} ({have})", path.display());
                return Ok(path);
            }
            eprintln!(
                "xtask: {} does not match its checksum; generating it again",
                path.display()
            );
        }
        eprintln!("xtask: generating {} ({size} bytes)", path.display());
        generate(&path, size)?;
        std::fs::write(&sum_path, stamp(&path)?)
            .with_context(|| format!("cannot write {}", sum_path.display()))?;
        Ok(path)
    }

    /// Generator version, size and a 64-bit checksum of the file's bytes.
    fn stamp(path: &Path) -> anyhow::Result<String> {
        let mut f =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        let (mut h, mut len) = (0xcbf2_9ce4_8422_2325u64, 0u64);
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            len += n as u64;
            for w in buf[..n].chunks(8) {
                let mut word = [0u8; 8];
                word[..w.len()].copy_from_slice(w);
                h = (h ^ u64::from_le_bytes(word)).wrapping_mul(0x0000_0100_0000_01b3);
                h ^= h >> 29;
            }
        }
        Ok(format!("v{GENERATOR_VERSION} {len} {h:016x}"))
    }

    /// SplitMix64: small, fast, and the same sequence everywhere.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len() as u64) as usize]
        }
        fn hex(&mut self, n: usize) -> String {
            (0..n)
                .map(|_| char::from(b"0123456789abcdef"[self.below(16) as usize]))
                .collect()
        }
        fn alnum(&mut self, n: usize) -> String {
            const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
            (0..n)
                .map(|_| char::from(A[self.below(A.len() as u64) as usize]))
                .collect()
        }
        /// `n` bytes of a Microsoft Entra client secret's alphabet (`~` included).
        fn entra(&mut self, n: usize) -> String {
            const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_~.-";
            (0..n)
                .map(|_| char::from(A[self.below(A.len() as u64) as usize]))
                .collect()
        }
        fn digits(&mut self, n: usize) -> String {
            (0..n)
                .map(|_| char::from(b'0' + self.below(10) as u8))
                .collect()
        }
    }

    const LEVELS: [&str; 5] = ["INFO", "INFO", "INFO", "WARN", "DEBUG"];
    const SERVICES: [&str; 6] = ["orders", "billing", "users", "search", "auth", "inventory"];
    const VERBS: [&str; 5] = ["GET", "GET", "GET", "POST", "PUT"];
    const MESSAGES: [&str; 8] = [
        "order created",
        "cache miss, loading from database",
        "request completed",
        "the token expired, refreshing the session",
        "retrying upstream call",
        "user profile updated",
        "payment authorised by provider",
        "scheduled job finished",
    ];
    const AGENTS: [&str; 4] = [
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
        "curl/8.5.0",
        "okhttp/4.12.0",
    ];

    fn luhn_complete(mut d: Vec<u8>) -> String {
        for c in b'0'..=b'9' {
            d.push(c);
            let sum: u32 = d
                .iter()
                .rev()
                .enumerate()
                .map(|(i, b)| {
                    let v = u32::from(b - b'0');
                    if i % 2 == 1 {
                        if v * 2 > 9 {
                            v * 2 - 9
                        } else {
                            v * 2
                        }
                    } else {
                        v
                    }
                })
                .sum();
            if sum.is_multiple_of(10) {
                break;
            }
            d.pop();
        }
        String::from_utf8(d).unwrap_or_default()
    }

    /// A sensitive value of a random kind, as it appears in a log line.
    fn secret(r: &mut Rng) -> String {
        match r.below(13) {
            0 => format!(
                "user={}.{}@{}.example.com",
                r.pick(&["jane", "li", "omar"]),
                r.digits(3),
                r.pick(&["mail", "corp"])
            ),
            1 => format!(
                "client={}.{}.{}.{}",
                10 + r.below(200),
                r.below(256),
                r.below(256),
                1 + r.below(254)
            ),
            2 => {
                let mut d = b"4".to_vec();
                d.extend(r.digits(14).bytes());
                format!("card={}", luhn_complete(d))
            }
            3 => format!(
                "Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI{}In0.{}",
                r.alnum(12),
                r.alnum(43)
            ),
            4 => format!("aws_key=AKIA{}", r.alnum(16).to_uppercase()),
            5 => format!("password={}", r.alnum(12)),
            6 => format!("\"db_password\":\"{}\"", r.alnum(16)),
            7 => format!("token=ghp_{}", r.alnum(36)),
            8 => format!("url=postgres://app:{}@db.internal:5432/main", r.alnum(10)),
            9 => format!("bearer {}", r.alnum(24)),
            10 => {
                let mut d = b"5".to_vec();
                d.push(b'1' + r.below(5) as u8);
                d.extend(r.digits(13).bytes());
                let c = luhn_complete(d);
                format!("pan={} {} {} {}", &c[0..4], &c[4..8], &c[8..12], &c[12..16])
            }
            // A Microsoft Entra client secret (`abc8Q~` + 34): the prefilter's `~` gate.
            11 => format!("entra={}{}Q~{}", r.entra(3), r.below(10), r.entra(34)),
            _ => format!(
                "ssn={:03}-{:02}-{:04}",
                100 + r.below(500),
                1 + r.below(98),
                1 + r.below(9998)
            ),
        }
    }

    fn timestamp(r: &mut Rng, i: u64) -> (u64, String) {
        let secs = 1_795_766_400 + i / 2000;
        let ms = r.below(1000);
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        (
            secs * 1000 + ms,
            format!("2026-11-27T{h:02}:{m:02}:{s:02}.{ms:03}Z"),
        )
    }

    fn line(r: &mut Rng, i: u64, out: &mut String) {
        use std::fmt::Write as _;
        let sensitive = r.below(100) < 4;
        let (epoch_ms, ts) = timestamp(r, i);
        let svc = r.pick(&SERVICES);
        let extra = if sensitive {
            format!(" {}", secret(r))
        } else {
            String::new()
        };
        match r.below(10) {
            0..=3 => {
                let _ = writeln!(
                    out,
                    "{{\"ts\":\"{ts}\",\"level\":\"{}\",\"logger\":\"com.example.{svc}.{}Service\",\"thread\":\"http-nio-8080-exec-{}\",\"trace_id\":\"{}\",\"span_id\":\"{}\",\"msg\":\"{}{}\",\"order_id\":\"{}-{}-4{}-a{}-{}\",\"duration_ms\":{},\"ts_ms\":{epoch_ms}}}",
                    r.pick(&LEVELS), svc.to_uppercase(), r.below(200), r.hex(32), r.hex(16),
                    r.pick(&MESSAGES), extra.replace('"', "\\\""), r.hex(8), r.hex(4), r.hex(3), r.hex(3), r.hex(12), r.below(900)
                );
            }
            4..=6 => {
                let _ = writeln!(
                    out,
                    "{} {} {:<5} [http-nio-8080-exec-{}] c.e.{svc}.{}Controller - {} id={} in {} ms (build {}, kernel 4.18.0-553.el8, commit {}){extra}",
                    &ts[..10], &ts[11..23], r.pick(&LEVELS), r.below(200), svc, r.pick(&MESSAGES),
                    r.digits(16), r.below(900), r.pick(&["v2.14.3", "1.22.0.4", "3.1.0"]), r.hex(40)
                );
                if r.below(20) == 0 {
                    for f in 0..4 {
                        let _ = writeln!(
                            out,
                            "\tat com.example.{svc}.Handler.call{f}(Handler.java:{})",
                            40 + r.below(400)
                        );
                    }
                }
            }
            _ => {
                let _ = writeln!(
                    out,
                    "{svc}.example.com - - [27/Nov/2026:{}:{} +0000] \"{} /api/v1/{svc}/{}?page={} HTTP/1.1\" {} {} \"-\" \"{}\" rt=0.{:03}{extra}",
                    &ts[11..13], &ts[14..19], r.pick(&VERBS), r.below(100_000), r.below(20),
                    r.pick(&["200", "200", "200", "404", "502"]), r.below(60_000), r.pick(&AGENTS), r.below(1000)
                );
            }
        }
        // `~`-dense lines (home paths, a separator): every `~` is looked at by the prefilter's
        // `~` gate, so this slice shows what a `~` costs (issue 16).
        if r.below(200) == 0 {
            let _ = writeln!(
                out,
                "{ts} DEBUG {svc} shell: cd ~/{svc} && ls ~{}/.cache ~/tmp/~{} {}",
                r.pick(&["jane", "li", "omar"]),
                r.hex(6),
                "~".repeat(60 + r.below(100) as usize)
            );
        }
        if r.below(5000) == 0 {
            let _ = writeln!(
                out,
                "{ts} ERROR key material dumped by a misconfigured client:"
            );
            let _ = writeln!(out, "-----BEGIN RSA PRIVATE KEY-----");
            for _ in 0..8 {
                let _ = writeln!(out, "{}", r.alnum(64));
            }
            let _ = writeln!(out, "-----END RSA PRIVATE KEY-----");
        }
    }

    fn generate(path: &Path, size: u64) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut r = Rng(0x6c6f_6767_6174_6521);
        let mut written = 0u64;
        let mut buf = String::new();
        let mut i = 0u64;
        while written < size {
            buf.clear();
            line(&mut r, i, &mut buf);
            i += 1;
            let take = buf.len().min((size - written) as usize);
            // The last line is cut to the exact size and ended with a newline.
            let bytes = &buf.as_bytes()[..take];
            if take < buf.len() {
                w.write_all(&bytes[..take.saturating_sub(1)])?;
                w.write_all(b"\n")?;
            } else {
                w.write_all(bytes)?;
            }
            written += take as u64;
        }
        w.flush()?;
        drop(w);
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{corpus, cpu_ratios, three_decimals, Sample};

    /// The per-round CPU ratios pair the rounds in order and print three decimals, so that
    /// 3.996 and 4.004 are told apart.
    #[test]
    fn cpu_ratios_per_round_are_printed_to_three_decimals() {
        let sample = |cpu_seconds| Sample {
            seconds: 1.0,
            cpu_seconds,
            max_rss_kib: 0,
            out_bytes: 0,
        };
        let engine = [sample(1.69), sample(2.0)];
        let reference = [sample(6.753), sample(8.01)];
        let ratios = cpu_ratios(&engine, &reference);
        assert_eq!(three_decimals(&ratios), "3.996, 4.005");
    }

    /// The generated corpus reaches the prefilter's `~` gate: Entra client secrets of the
    /// detector's exact shape (3 bytes, a digit, `Q~`, 34 bytes, then a byte outside the
    /// alphabet), and `~`-dense lines.
    #[test]
    fn corpus_holds_entra_secrets_and_tilde_dense_lines() {
        let dir = std::env::temp_dir().join(format!("loggate-corpus-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = corpus::ensure(&dir, 4 << 20).unwrap();
        let text = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let entra_byte = |b: u8| b.is_ascii_alphanumeric() || b"_~.-".contains(&b);
        let secrets = memchr::memmem::find_iter(&text, b"entra=")
            .filter(|at| {
                let t = &text[at + 6..];
                t.len() > 40
                    && t[..3].iter().all(|b| entra_byte(*b))
                    && t[3].is_ascii_digit()
                    && &t[4..6] == b"Q~"
                    && t[6..40].iter().all(|b| entra_byte(*b))
                    && !entra_byte(t[40])
            })
            .count();
        assert!(secrets >= 20, "{secrets} Entra secrets");
        let dense = text
            .split(|b| *b == b'\n')
            .filter(|l| l.iter().filter(|b| **b == b'~').count() >= 60)
            .count();
        assert!(dense >= 50, "{dense} ~-dense lines");
    }
}
