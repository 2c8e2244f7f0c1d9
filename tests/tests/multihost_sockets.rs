//! End-to-end: `--parallel K` bounds the TCP sockets the CLI itself holds open, not only the
//! reads in flight (issue 13: `cargo xtask bench reads` counted 144 sockets at K=128). tonic
//! closes a dropped connection's socket later, on tasks of its own; a host that gave its slot
//! back when it dropped its connection let the next host connect while that socket was still
//! open, and the controller's connection (the registry lookup) was still open while the first
//! agents connected. The test samples the running CLI's sockets (`/proc/PID/fd` joined with
//! `/proc/PID/net/tcp{,6}`, every state but LISTEN, the controller's included) as fast as it
//! can, over many quick reads, and fails on any sample above K.

use loggate_tests::{sockets, Cluster};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

const AGENTS: usize = 10;
const SELECTOR: &str = "fleet=sockets";
const LINES: usize = 200;
/// Runs of the command (each reads every agent once): many hand-overs of a slot.
const RUNS: usize = 8;
/// The longest one run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

struct Fleet {
    cluster: Cluster,
    log: PathBuf,
}

fn fleet() -> anyhow::Result<Fleet> {
    let mut cluster = Cluster::new(None)?;
    let ids: Vec<String> = (1..=AGENTS).map(|i| format!("sock-{i:02}")).collect();
    let logs = cluster.dir.join("logs/app");
    std::fs::create_dir_all(&logs)?;
    let content: String = (0..LINES)
        .map(|i| format!("2026-11-27T08:00:00Z INFO line {i}\n"))
        .collect();
    let log = logs.join("small.log");
    std::fs::write(&log, content)?;
    cluster.start_labelled_agents(&ids, &[&logs], SELECTOR)?;
    let grant_id = cluster.issue_label_grant(SELECTOR, &format!("{}/*.log", logs.display()))?;
    for id in &ids {
        cluster.wait_for_grant(id, &grant_id)?;
    }
    cluster.wait_registered(AGENTS)?;
    Ok(Fleet { cluster, log })
}

/// The TCP sockets process `pid` holds open now (any state but LISTEN); `None` once it is gone.
fn open_tcp_sockets(pid: u32) -> Option<usize> {
    sockets::open_tcp_sockets(pid, |row| !row.listening)
}

impl Fleet {
    /// Runs `logs cat --selector … --parallel K` once, sampling the CLI's open TCP sockets
    /// until it ends; returns the most seen at once and how many samples saw any.
    fn cat_sampled(&self, parallel: usize) -> anyhow::Result<(usize, usize)> {
        let (most, seen, out) = self.sampled("cat", parallel, Some(&self.log))?;
        // Every host read whole.
        for i in 1..=AGENTS {
            let prefix = format!("sock-{i:02}: ");
            let lines = out.lines().filter(|l| l.starts_with(&prefix)).count();
            anyhow::ensure!(lines == LINES, "{prefix}{lines} lines of {LINES}");
        }
        Ok((most, seen))
    }

    /// [`Self::cat_sampled`] for `logs ls --selector … --parallel K`: every host lists its file.
    fn ls_sampled(&self, parallel: usize) -> anyhow::Result<(usize, usize)> {
        let (most, seen, out) = self.sampled("ls", parallel, None)?;
        for i in 1..=AGENTS {
            let prefix = format!("sock-{i:02}: ");
            anyhow::ensure!(
                out.lines()
                    .any(|l| l.starts_with(&prefix) && l.ends_with("small.log")),
                "{prefix}listed nothing: {out}"
            );
        }
        Ok((most, seen))
    }

    /// Runs `logs VERB --selector … --parallel K [PATH]` once, sampling the CLI's open TCP
    /// sockets until it ends; returns the most seen at once, how many samples saw any, and its
    /// standard output.
    fn sampled(
        &self,
        verb: &str,
        parallel: usize,
        path: Option<&PathBuf>,
    ) -> anyhow::Result<(usize, usize, String)> {
        let mut child = self
            .cluster
            .cli("alice")
            .args(["logs", verb, "--selector", SELECTOR])
            .args(["--parallel", &parallel.to_string()])
            .args(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        // Standard output is drained on a thread of its own (a full pipe would stall the CLI).
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut all).map(|_| all)
        });
        let started = Instant::now();
        let (mut most, mut seen) = (0, 0);
        while let Some(open) = open_tcp_sockets(pid) {
            most = most.max(open);
            seen += usize::from(open > 0);
            if child.try_wait()?.is_some() {
                break;
            }
            if started.elapsed() > RUN_TIMEOUT {
                let _ = child.kill();
                anyhow::bail!("the read did not end within {RUN_TIMEOUT:?}");
            }
        }
        let status = child.wait()?;
        let out = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))??;
        anyhow::ensure!(status.success(), "{verb} --parallel {parallel}: {status}");
        Ok((most, seen, out))
    }
}

#[test]
fn parallel_two_never_holds_more_than_two_sockets_open() -> anyhow::Result<()> {
    let f = fleet()?;
    let mut most = 0;
    let mut seen = 0;
    for _ in 0..RUNS {
        let (run_most, run_seen) = f.cat_sampled(2)?;
        most = most.max(run_most);
        seen += run_seen;
    }
    // The sampler does see the CLI's sockets (the check is not blind).
    assert!(seen > 0, "no sample saw an open socket");
    assert!(
        most <= 2,
        "--parallel 2 held {most} TCP sockets open at once"
    );
    Ok(())
}

#[test]
fn ls_over_many_hosts_never_holds_more_sockets_open_than_parallel() -> anyhow::Result<()> {
    let f = fleet()?;
    for parallel in [1, 2] {
        let mut most = 0;
        let mut seen = 0;
        for _ in 0..RUNS {
            let (run_most, run_seen) = f.ls_sampled(parallel)?;
            most = most.max(run_most);
            seen += run_seen;
        }
        assert!(seen > 0, "no sample saw an open socket");
        assert!(
            most <= parallel,
            "ls --parallel {parallel} held {most} TCP sockets open at once"
        );
    }
    Ok(())
}
