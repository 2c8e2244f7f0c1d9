//! `cargo xtask bench ebpf`: what the bypass audit costs a process that never touches a protected
//! file. Times `open(O_RDONLY)`+`close` of an unprotected file and `getppid` in a loop (on the
//! thread's CPU clock, so time lost to other processes on a shared machine does not count), pinned
//! to one CPU, under six setups interleaved in many short rounds (each round runs every setup once,
//! starting with a different one), and prints the medians:
//!
//! - `none`: no program attached;
//! - `empty`: do-nothing programs on the tracepoint mode's hooks (the floor of the hook itself);
//! - `tracepoint`: the agent's programs with a realistic protected set in the maps;
//! - `tracepoint-probe-read`: the same, built without the `bpf_rdonly_cast` kfunc (the agent's
//!   fallback: a grown fd table is read with `bpf_probe_read_kernel`);
//! - `empty-strict`, `strict`: the same two for strict mode's `tp_btf/sys_exit`.
//!
//! Programs are attached by `loggate-agent bench-attach` (a hidden subcommand, so xtask does not
//! build aya), one process per setup and round. With `kernel.bpf_stats_enabled=1` (set for the
//! run, restored after) the kernel also counts the time spent inside the programs, a second
//! measure of their cost that the syscall's own noise does not blur.

use crate::{cargo, run, target_dir};
use anyhow::{bail, Context};
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

#[derive(clap::Args)]
pub struct Args {
    /// Interleaved rounds; each setup runs once per round.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// open+close per setup and round (with 20 rounds: 1,000,000 per setup).
    #[arg(long, default_value_t = 50_000)]
    opens: usize,
    /// getppid calls per setup and round.
    #[arg(long, default_value_t = 200_000)]
    getppids: usize,
    /// The CPU the loops are pinned to (default: the last one).
    #[arg(long)]
    cpu: Option<usize>,
}

/// One way of running the loops: which programs are attached.
struct Setup {
    name: &'static str,
    /// `bench-attach` arguments (hooks, object); `None` = nothing attached.
    attach: Option<(&'static str, Programs)>,
}

/// Which object `bench-attach` loads.
#[derive(Clone, Copy)]
enum Programs {
    /// The do-nothing programs (`--empty`).
    Empty,
    /// The agent's, as the agent loads it (the `bpf_rdonly_cast` build on this kernel).
    Agent,
    /// The agent's build without kfuncs (`--no-kfuncs`).
    AgentWithoutKfuncs,
}

const SETUPS: [Setup; 6] = [
    Setup {
        name: "none",
        attach: None,
    },
    Setup {
        name: "empty",
        attach: Some(("tracepoint", Programs::Empty)),
    },
    Setup {
        name: "tracepoint",
        attach: Some(("tracepoint", Programs::Agent)),
    },
    Setup {
        name: "tracepoint-probe-read",
        attach: Some(("tracepoint", Programs::AgentWithoutKfuncs)),
    },
    Setup {
        name: "empty-strict",
        attach: Some(("strict", Programs::Empty)),
    },
    Setup {
        name: "strict",
        attach: Some(("strict", Programs::Agent)),
    },
];

/// One setup's figures in one round.
#[derive(Default, Clone, Copy)]
struct Sample {
    /// ns per open+close in a process whose fd table is the embedded one (64 slots).
    open_ns: f64,
    /// The same in a process whose fd table has grown (an fd above 63 was ever open).
    open_grown_ns: f64,
    getppid_ns: f64,
    /// Nanoseconds inside the programs per open+close (0 with nothing attached).
    in_program_ns: f64,
    in_program_grown_ns: f64,
}

/// Which fd table the measuring process has: the programs read the embedded one (fds 0-63 of a
/// table that never grew) with BTF-typed loads, a grown one through `bpf_probe_read_kernel`.
#[derive(Clone, Copy, PartialEq)]
enum FdTable {
    Embedded,
    Grown,
}

pub fn run_bench(args: &Args) -> anyhow::Result<()> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench ebpf loads eBPF programs and must run as root");
    }
    if args.rounds == 0 || args.opens == 0 || args.getppids == 0 {
        bail!("--rounds, --opens and --getppids must be at least 1");
    }
    run(cargo().args(["build", "-q", "-p", "loggate-agent"]))?;
    let agent = target_dir().join("debug/loggate-agent");
    let files = BenchFiles::create()?;
    let cpu = args.cpu.unwrap_or_else(|| last_cpu().unwrap_or(0));
    pin_to(cpu)?;
    close_inherited_high_fds()?;
    let stats = BpfStats::enable()?;
    println!(
        "bench ebpf: {} rounds x {} open+close and {} getppid per setup, pinned to CPU {cpu}; load {}",
        args.rounds,
        args.opens,
        args.getppids,
        loadavg()
    );
    println!("unprotected file: {}", files.unprotected.display());
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); SETUPS.len()];
    for round in 0..args.rounds {
        for k in 0..SETUPS.len() {
            let i = (round + k) % SETUPS.len();
            samples[i].push(measure(&SETUPS[i], &agent, &files, args)?);
        }
    }
    drop(stats);
    println!("load after: {}", loadavg());
    report(&samples);
    Ok(())
}

fn measure(setup: &Setup, agent: &Path, files: &BenchFiles, args: &Args) -> anyhow::Result<Sample> {
    let mut attached = match setup.attach {
        Some((hooks, programs)) => Some(Attached::start(agent, hooks, programs, &files.protected)?),
        None => None,
    };
    let in_program = |attached: &mut Option<Attached>, table: FdTable| {
        let before = attached.as_mut().map_or(Ok((0, 0)), Attached::stats)?;
        let ns = in_child(|| {
            if table == FdTable::Grown {
                grow_fd_table()?;
            }
            open_close_loop(&files.unprotected, args.opens)
        })?;
        let after = attached.as_mut().map_or(Ok((0, 0)), Attached::stats)?;
        let inside = after.0.saturating_sub(before.0) as f64 / args.opens as f64;
        anyhow::Ok((ns, inside))
    };
    let (open_ns, in_program_ns) = in_program(&mut attached, FdTable::Embedded)?;
    let (open_grown_ns, in_program_grown_ns) = in_program(&mut attached, FdTable::Grown)?;
    let getppid_ns = in_child(|| Ok(getppid_loop(args.getppids)))?;
    if let Some(a) = attached {
        a.stop()?;
    }
    Ok(Sample {
        open_ns,
        open_grown_ns,
        getppid_ns,
        in_program_ns,
        in_program_grown_ns,
    })
}

/// Runs `work` in a forked child (which gets a fresh fd table sized by this process's open fds:
/// the embedded one, since no fd above 63 is open here) and returns its result.
fn in_child(work: impl FnOnce() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let threads = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Threads:", "1"]);
    if !threads {
        bail!("the bench forks and must be single-threaded");
    }
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe(2) writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: this process is single-threaded (checked above), so the child is a full copy in
    // a consistent state; it runs `work`, writes 8 bytes and leaves with _exit, never returning
    // into the caller's frames.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        let value = work().unwrap_or(f64::NAN).to_ne_bytes();
        // SAFETY: value is 8 readable bytes; fds[1] is the pipe's write end; _exit ends the
        // child without running the parent's destructors a second time.
        unsafe {
            libc::write(fds[1], value.as_ptr().cast(), value.len());
            libc::_exit(0);
        }
    }
    let mut value = [0u8; 8];
    // SAFETY: fds[1] is ours to close; value has room for the 8 bytes read; waitpid's status
    // pointer may be null.
    let got = unsafe {
        libc::close(fds[1]);
        let got = libc::read(fds[0], value.as_mut_ptr().cast(), value.len());
        libc::close(fds[0]);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        got
    };
    let value = f64::from_ne_bytes(value);
    if got != 8 || value.is_nan() {
        bail!("the measuring child failed");
    }
    Ok(value)
}

/// Makes this process's fd table grow past the embedded 64 slots (as it has in any process
/// that once held more than 64 fds, or was forked by bash while bash held its fd 255).
fn grow_fd_table() -> anyhow::Result<()> {
    // SAFETY: dup2 and close take descriptors only; fd 0 is open in every process here.
    unsafe {
        if libc::dup2(0, 100) < 0 {
            bail!("dup2: {}", std::io::Error::last_os_error());
        }
        libc::close(100);
    }
    Ok(())
}

/// Closes descriptors above 63 inherited from whatever started the bench (a shell keeps its
/// fd 255, some harnesses more), so the forked measuring children get the embedded fd table.
fn close_inherited_high_fds() -> anyhow::Result<()> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let fd: i32 = entry?.file_name().to_string_lossy().parse().unwrap_or(0);
        if fd > 63 {
            // SAFETY: closing an fd this process does not use (none of its own is above 63).
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// This thread's CPU time in ns (user + system, and nothing while another process has the CPU:
/// on a machine shared with other work that is the steadier clock for a syscall loop).
fn thread_cpu_ns() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: t is a valid timespec for clock_gettime to fill; CLOCK_THREAD_CPUTIME_ID always
    // exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

/// CPU ns per open(O_RDONLY)+close of `path`.
fn open_close_loop(path: &Path, n: usize) -> anyhow::Result<f64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())?;
    let start = thread_cpu_ns();
    for _ in 0..n {
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            bail!(
                "opening {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: fd was just returned by open(2) and is closed exactly once.
        unsafe { libc::close(fd) };
    }
    Ok((thread_cpu_ns() - start) / n as f64)
}

/// CPU ns per getppid(2): a syscall that opens nothing, to show the cost every syscall pays.
fn getppid_loop(n: usize) -> f64 {
    let start = thread_cpu_ns();
    for _ in 0..n {
        // SAFETY: getppid(2) has no preconditions and cannot fail.
        std::hint::black_box(unsafe { libc::getppid() });
    }
    (thread_cpu_ns() - start) / n as f64
}

/// A `loggate-agent bench-attach` process holding programs attached.
struct Attached {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Attached {
    fn start(
        agent: &Path,
        hooks: &str,
        programs: Programs,
        protect: &Path,
    ) -> anyhow::Result<Attached> {
        let mut cmd = Command::new(agent);
        cmd.args(["bench-attach", "--hooks", hooks, "--protect"])
            .arg(protect)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        match programs {
            Programs::Empty => _ = cmd.arg("--empty"),
            Programs::AgentWithoutKfuncs => _ = cmd.arg("--no-kfuncs"),
            Programs::Agent => {}
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", agent.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("bench-attach has no pipes");
        };
        let mut a = Attached {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let line = a.line()?;
        if !line.starts_with("ready") {
            bail!("bench-attach --hooks {hooks}: expected `ready`, got {line:?}");
        }
        Ok(a)
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("bench-attach exited ({status}) before answering; its error is above");
        }
        Ok(line.trim().to_string())
    }

    /// Cumulative (run time ns, runs) of its programs.
    fn stats(&mut self) -> anyhow::Result<(u64, u64)> {
        writeln!(self.stdin, "stats")?;
        let line = self.line()?;
        let mut words = line.split_whitespace().skip(1).map(str::parse::<u64>);
        match (words.next(), words.next()) {
            (Some(Ok(ns)), Some(Ok(runs))) => Ok((ns, runs)),
            _ => bail!("bench-attach: expected `stats NS RUNS`, got {line:?}"),
        }
    }

    fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin);
        let status = self.child.wait()?;
        if !status.success() {
            bail!("bench-attach failed with {status}");
        }
        Ok(())
    }
}

/// The files the bench opens: a protected tree like a host's log folders (8 application
/// folders of 4 files each, all in the maps) and, on the same filesystem, one unprotected file
/// in an unprotected folder.
struct BenchFiles {
    root: PathBuf,
    protected: PathBuf,
    unprotected: PathBuf,
}

impl BenchFiles {
    fn create() -> anyhow::Result<BenchFiles> {
        let root = target_dir().join(format!("bench-ebpf-{}", std::process::id()));
        let protected = root.join("log");
        for app in 0..8 {
            let dir = protected.join(format!("app{app}"));
            std::fs::create_dir_all(&dir)?;
            for name in ["current.log", "current.log.1", "error.log", "access.log"] {
                std::fs::write(dir.join(name), "a log line\n")?;
            }
        }
        let data = root.join("data");
        std::fs::create_dir_all(&data)?;
        let unprotected = data.join("unprotected.txt");
        std::fs::write(&unprotected, "not a log\n")?;
        Ok(BenchFiles {
            root,
            protected,
            unprotected,
        })
    }
}

impl Drop for BenchFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled=1` for the bench's lifetime; the previous value is put back.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> anyhow::Result<BpfStats> {
        let before = std::fs::read_to_string(BPF_STATS).context(BPF_STATS)?;
        std::fs::write(BPF_STATS, "1").context(BPF_STATS)?;
        Ok(BpfStats(before.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.0);
    }
}

fn last_cpu() -> Option<usize> {
    std::thread::available_parallelism()
        .ok()
        .map(|n| n.get() - 1)
}

fn pin_to(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data for which all zeroes is the empty set; CPU_SET writes
    // inside it (cpu is checked against its capacity first); sched_setaffinity reads
    // size_of::<cpu_set_t>() bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            bail!("--cpu {cpu} is out of range");
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn report(samples: &[Vec<Sample>]) {
    let med = |i: usize, f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
    let open = |i| med(i, |s| s.open_ns);
    let getppid = |i| med(i, |s| s.getppid_ns);
    println!();
    let grown = |i| med(i, |s| s.open_grown_ns);
    println!(
        "{:<22} {:>14} {:>12} {:>10} {:>15} {:>15}",
        "setup", "open+close ns", "grown-table", "getppid", "in-program ns", "(grown table)"
    );
    for (i, setup) in SETUPS.iter().enumerate() {
        println!(
            "{:<22} {:>14.1} {:>12.1} {:>10.1} {:>15.1} {:>15.1}",
            setup.name,
            open(i),
            grown(i),
            getppid(i),
            med(i, |s| s.in_program_ns),
            med(i, |s| s.in_program_grown_ns)
        );
    }
    println!();
    let ratio = |what: &str, a: usize, b: usize| {
        println!(
            "{what:<32} open+close {:.3}x  (grown table {:.3}x)  getppid {:.3}x",
            open(a) / open(b),
            grown(a) / grown(b),
            getppid(a) / getppid(b)
        );
    };
    // The same, but each round's a over the same round's b (run moments apart), median over
    // rounds: drift of the shared machine between rounds cancels out.
    let paired = |f: fn(&Sample) -> f64, a: usize, b: usize| {
        let per_round = samples[a].iter().zip(&samples[b]);
        median(per_round.map(|(x, y)| f(x) / f(y)).collect())
    };
    let paired_ratio = |what: &str, a: usize, b: usize| {
        println!(
            "{what:<32} open+close {:.3}x  (grown table {:.3}x)  getppid {:.3}x",
            paired(|s| s.open_ns, a, b),
            paired(|s| s.open_grown_ns, a, b),
            paired(|s| s.getppid_ns, a, b)
        );
    };
    // What the time inside the programs alone adds to an open+close over the floor's.
    let in_program_ratio = |what: &str, a: usize, b: usize| {
        let added = |inside: fn(&Sample) -> f64, clock: fn(&Sample) -> f64| {
            (med(b, clock) + med(a, inside) - med(b, inside)) / med(b, clock)
        };
        println!(
            "{what:<32} open+close {:.3}x  (grown table {:.3}x)",
            added(|s| s.in_program_ns, |s| s.open_ns),
            added(|s| s.in_program_grown_ns, |s| s.open_grown_ns)
        );
    };
    // Indices into SETUPS.
    let (none, empty, tracepoint, probe_read, empty_strict, strict) = (0, 1, 2, 3, 4, 5);
    println!("ratios of the medians:");
    ratio("tracepoint / none", tracepoint, none);
    ratio("tracepoint / empty", tracepoint, empty);
    ratio("tracepoint-probe-read / empty", probe_read, empty);
    ratio("empty / none", empty, none);
    ratio("strict / none", strict, none);
    ratio("strict / empty-strict", strict, empty_strict);
    ratio("empty-strict / none", empty_strict, none);
    println!("medians of the per-round ratios:");
    paired_ratio("tracepoint / empty", tracepoint, empty);
    paired_ratio("tracepoint-probe-read / empty", probe_read, empty);
    paired_ratio("strict / empty-strict", strict, empty_strict);
    println!("the floor's open+close plus the extra in-program ns, over the floor's:");
    in_program_ratio("tracepoint / empty", tracepoint, empty);
    in_program_ratio("tracepoint-probe-read / empty", probe_read, empty);
    in_program_ratio("strict / empty-strict", strict, empty_strict);
    println!("target: tracepoint / empty within 1.03x on open+close (miss path close to nothing)");
}
