//! `cargo xtask bench audit`: durable audit events per second (criterion, `core/benches/audit.rs`),
//! pinned to one core, with the group-commit variants side by side with one fsync per event;
//! then the time from an event to its arrival at a real rsyslog over TLS at 5,000 events/s
//! (the ignored measurement `delivery_latency_to_rsyslog` of tests/tests/siem.rs).

use crate::{cargo, run, target_dir};
use std::process::Command;

const GROUP: &str = "audit_durable_events";
/// (criterion id, what it is, events per iteration).
const VARIANTS: [(&str, &str, f64); 3] = [
    (
        "group_commit_64_writers",
        "64 writers, each waits for its record",
        8192.0,
    ),
    (
        "deferred_1_writer",
        "1 writer of deferred events, flusher syncs",
        100_000.0,
    ),
    (
        "fsync_per_event",
        "1 writer, one fdatasync per event",
        256.0,
    ),
];

pub fn run_audit() -> anyhow::Result<()> {
    run(cargo().args([
        "bench",
        "-p",
        "loggate-core",
        "--bench",
        "audit",
        "--no-run",
    ]))?;
    // Pinned to one core: cargo's own work is done, only the bench binary runs on CPU 0.
    run(Command::new("taskset")
        .args(["-c", "0"])
        .arg(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["bench", "-p", "loggate-core", "--bench", "audit"])
        .current_dir(crate::workspace_root()))?;
    let mut rates = Vec::new();
    for (id, what, events) in VARIANTS {
        let path = target_dir()
            .join("criterion")
            .join(GROUP)
            .join(id)
            .join("new/estimates.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)?;
        let ns = json["mean"]["point_estimate"]
            .as_f64()
            .ok_or_else(|| anyhow::anyhow!("{}: no mean estimate", path.display()))?;
        rates.push((id, what, events / (ns / 1e9)));
    }
    let baseline = rates
        .iter()
        .find(|(id, ..)| *id == "fsync_per_event")
        .map(|(_, _, r)| *r)
        .unwrap_or(f64::NAN);
    println!("\ndurable audit events/s on one core (CPU 0), this disk:");
    for (id, what, rate) in &rates {
        println!(
            "  {id:<26} {rate:>12.0} events/s  {:>7.1}x fsync-per-event   ({what})",
            rate / baseline
        );
    }
    crate::ensure_rsyslog()?;
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    println!(
        "
delivery latency to rsyslog (syslog over mutual TLS), deferred writer on this disk:"
    );
    run(cargo()
        .args(["test", "-p", "loggate-tests", "--test", "siem", "--"])
        .args(["--ignored", "--nocapture", "delivery_latency_to_rsyslog"])
        .env("LOGGATE_BIN_DIR", target_dir().join("debug")))?;
    Ok(())
}
