//! `loggate-agent bench-attach` (hidden): holds the bypass-audit programs attached for
//! `cargo xtask bench ebpf`, so the bench measures the agent's own loader, object and map
//! contents without linking aya into xtask (whose build would then compile aya and its
//! dependencies a second time, for one developer command).
//!
//! Protocol on standard input/output, one line each: after attaching it prints `ready N` (N =
//! protected entries in the maps); on `stats` it prints `stats NS RUNS`, the kernel's cumulative
//! run time and run count of its programs (`kernel.bpf_stats_enabled` must be 1 for them to
//! grow); at end of input it detaches and exits.

use super::inventory::Inventory;
use super::loader::{FdLookup, Hooks, Objects, Probe};
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// Loads the agent's object (as the agent would; with `no_kfuncs`, its build without kfuncs;
/// with `empty`, the do-nothing one) on `hooks` (`tracepoint` or `strict`), fills the protected set from `protect`, excludes this process, and serves the
/// protocol above until standard input ends.
pub fn attach(
    hooks: &str,
    empty: bool,
    no_kfuncs: bool,
    protect: &[PathBuf],
) -> anyhow::Result<()> {
    let hooks = match hooks {
        "tracepoint" => Hooks::Tracepoint,
        "strict" => Hooks::Strict,
        other => {
            anyhow::bail!("--hooks {other:?}: the bench attaches \"tracepoint\" or \"strict\"")
        }
    };
    let objects = if empty {
        Objects::Empty
    } else {
        Objects::Agent { kfuncs: !no_kfuncs }
    };
    let mut probe = Probe::load(objects, hooks)?;
    if let FdLookup::ProbeRead { reason } = &probe.fd_lookup {
        if !no_kfuncs {
            eprintln!("bench-attach: the kfunc build was refused, measuring the other: {reason}");
        }
    }
    // The maps stay alive (and filled) until the end: the programs hold them anyway.
    let mut kept = None;
    let mut protected = 0;
    if !empty {
        let (mut maps, outputs) = probe.split(None)?;
        maps.exclude_tgid(std::process::id())?;
        let inventory = Inventory::scan(protect, usize::MAX);
        maps.sync(&inventory)?;
        protected = inventory.len();
        kept = Some((maps, outputs));
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {protected}")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        if line?.trim() == "stats" {
            let (ns, runs) = probe.run_stats();
            writeln!(out, "stats {ns} {runs}")?;
            out.flush()?;
        }
    }
    drop(kept);
    Ok(())
}
