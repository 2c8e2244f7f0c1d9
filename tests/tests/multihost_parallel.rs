//! End-to-end: `--parallel K` bounds the reads a multi-host command has in flight (issue 13,
//! "a 1,000-host read does not open 1,000 connections at once"), proved without timing from
//! the agents' own audit records: each read lasts from its `read.allowed` time to that time
//! plus the `duration_ms` of its `read.finished`, and with `--parallel 3` over 12 agents no
//! more than 3 of those intervals overlap. The same command with `--parallel 12` must overlap
//! more than 3, so the test can see a missing bound (a control, run first).

use loggate_tests::{text, Cluster};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const AGENTS: usize = 12;
const SELECTOR: &str = "fleet=bound";
/// Lines in the file each agent searches: enough that one search takes the agent many
/// milliseconds (the audit times are in milliseconds), so that overlapping reads show.
const LINES: usize = 150_000;

struct Fleet {
    cluster: Cluster,
    log: PathBuf,
    ids: Vec<String>,
}

fn fleet() -> anyhow::Result<Fleet> {
    let mut cluster = Cluster::new(None)?;
    let ids: Vec<String> = (1..=AGENTS).map(|i| format!("bound-{i:02}")).collect();
    let logs = cluster.dir.join("logs/app");
    std::fs::create_dir_all(&logs)?;
    let mut content = String::new();
    for i in 0..LINES {
        content.push_str(&format!("2026-11-27T08:00:00Z INFO filler line {i}\n"));
    }
    let log = logs.join("big.log");
    std::fs::write(&log, content)?;
    cluster.start_labelled_agents(&ids, &[&logs], SELECTOR)?;
    // One grant for all of them, by label.
    let grant_id = cluster.issue_label_grant(SELECTOR, &format!("{}/*.log", logs.display()))?;
    for id in &ids {
        cluster.wait_for_grant(id, &grant_id)?;
    }
    cluster.wait_registered(AGENTS)?;
    Ok(Fleet { cluster, log, ids })
}

impl Fleet {
    /// Searches every agent's big file (nothing matches: the agent reads it whole and sends
    /// nothing) with `--parallel parallel`, then returns each agent's read of it as
    /// (start ms, duration ms) from its audit records, the `seen` earlier reads skipped.
    fn search(&self, parallel: &str, seen: usize) -> anyhow::Result<Vec<(i64, i64)>> {
        let path = self.log.display().to_string();
        let out = self
            .cluster
            .cli("alice")
            .args([
                "logs",
                "grep",
                "nothing matches this",
                "--selector",
                SELECTOR,
            ])
            .args(["--parallel", parallel, &path])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "--parallel {parallel}: {}",
            text(&out).1
        );
        let mut reads = Vec::new();
        for id in &self.ids {
            let of = |event: &str| -> anyhow::Result<serde_json::Value> {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let found: Vec<serde_json::Value> = self
                        .cluster
                        .agent_audit(id)
                        .into_iter()
                        .filter(|e| e["event"] == event && e["path"] == path.as_str())
                        .collect();
                    if let Some(e) = found.get(seen) {
                        return Ok(e.clone());
                    }
                    anyhow::ensure!(Instant::now() < deadline, "{id}: no {event} #{seen}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            };
            let start = of("read.allowed")?["time"].as_i64().unwrap_or(i64::MAX);
            let finished = of("read.finished")?;
            anyhow::ensure!(finished["end_reason"] == "eof", "{id}: {finished}");
            let ran = finished["duration_ms"].as_i64().unwrap_or(0);
            reads.push((start, ran));
        }
        Ok(reads)
    }
}

/// The most reads in flight at one moment: each read is the interval
/// `[start, start + duration - 1)` in milliseconds (1 ms given up at its end for the records'
/// rounding, as the single-host `--parallel 1` check does), counted at every read's start.
fn most_in_flight(reads: &[(i64, i64)]) -> usize {
    reads
        .iter()
        .map(|&(at, _)| {
            reads
                .iter()
                .filter(|&&(start, ran)| start <= at && at < start + ran - 1)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn parallel_three_keeps_at_most_three_of_twelve_agents_reading_at_once() -> anyhow::Result<()> {
    let f = fleet()?;
    // The control: without a bound below the fleet's size, the reads overlap beyond 3, so the
    // records can show a bound that is not kept.
    let unbounded = f.search("12", 0)?;
    assert!(
        unbounded.iter().all(|&(_, ran)| ran > 5),
        "the searches were too quick to tell: {unbounded:?}"
    );
    let most = most_in_flight(&unbounded);
    assert!(
        most > 3,
        "with --parallel 12 only {most} reads overlapped: the check could not see a missing bound ({unbounded:?})"
    );

    let bounded = f.search("3", 1)?;
    assert_eq!(bounded.len(), AGENTS, "every agent read once");
    assert!(
        bounded.iter().all(|&(_, ran)| ran > 5),
        "the searches were too quick to tell: {bounded:?}"
    );
    let most = most_in_flight(&bounded);
    assert!(
        most <= 3,
        "--parallel 3 had {most} reads in flight at once: {bounded:?}"
    );
    // ... and it did use its 3 connections (not one at a time).
    assert!(
        most >= 2,
        "--parallel 3 read one host at a time: {bounded:?}"
    );
    Ok(())
}
