//! Bypass audit: every open-for-reading of a protected log file by a process other than the
//! agent, seen by eBPF in the kernel and written to the audit stream as `bypass.read`.
//!
//! The kernel side (`loggate-agent-ebpf`) matches opens on (device, inode) of the protected files
//! and directories; this side loads it, keeps its maps equal to what the configured roots hold
//! (`inventory`), reads its ring buffer, adds what `/proc` knows about the opener (`process`),
//! resolves the path, checks whether the opener holds a grant, and audits (`record`); renames
//! and links of protected files are kept (`moves`) to name who took one out of the roots. When the
//! program cannot be loaded, `auto` falls back to fanotify (`fanotify`); when nothing can start
//! the agent keeps serving and says so (`bypass.unavailable`).

pub mod bench;
mod event;
mod exclusions;
mod fanotify;
mod handle;
mod held;
mod ia32;
mod inventory;
mod kfunc;
mod loader;
mod moves;
pub mod pins;
mod process;
mod record;
mod repeats;
mod settings;

#[cfg(test)]
pub use exclusions::Seen;
pub use exclusions::{ChildExclusion, ChildExclusions};
pub use settings::{BypassConfig, BypassFile, Mode, DEFAULT_PIN_DIR};

use crate::Shared;
use event::RawEvent;
use fanotify::{FanEvent, Fanotify};
use inventory::Inventory;
use loader::{FdLookup, Hooks, Objects, OldPins, Outputs, Probe, ProtectedMaps};
use loggate_core::audit::events;
use pins::{PinDir, PinOutcome};
use record::{bypass_record, Opened, Window};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// The bypass audit as started: which mechanism is active, or none and why.
pub enum Startup {
    Ebpf(Box<EbpfAudit>),
    Fanotify {
        fan: Fanotify,
        inventory: Inventory,
        /// The agent's children its reader does not report.
        children: ChildExclusions,
        /// Why eBPF was not used (`auto` fell back), if it was tried.
        ebpf_error: Option<String>,
        /// Pins an earlier eBPF start left, removed (`mode = "fanotify"`, or `auto` fell back).
        pins: Option<PinReport>,
        /// What those pins had queued, audited before any live read.
        queue: Option<Queue>,
    },
    Inactive {
        requested: Mode,
        /// `None` when switched off by configuration.
        reason: Option<String>,
        /// Pins an earlier eBPF start left, removed (`mode = "off"`).
        pins: Option<PinReport>,
        /// What those pins had queued: counted as lost (the audit is off), never dropped
        /// uncounted.
        queue: Option<Queue>,
    },
}

pub struct EbpfAudit {
    probe: Probe,
    /// Why the hooks tried before the active one were refused (`auto`).
    fallback: Vec<String>,
    maps: ProtectedMaps,
    outputs: Outputs,
    inventory: Inventory,
    pinning: Pinning,
}

/// What became of the pin folder at start, for `agent.started`.
#[derive(Clone, Debug)]
pub struct PinReport {
    pub outcome: PinOutcome,
    /// Why the pins were refused, failed or replaced; null when created or adopted.
    pub reason: Option<String>,
}

/// The pin folder as the eBPF audit holds it.
struct Pinning {
    report: PinReport,
    /// The folder, locked for as long as the agent runs (`None` when not pinned).
    dir: Option<PinDir>,
    /// What the pinned programs queued while no agent ran, taken out of the ring buffer at
    /// start (adopted pins), or out of the replaced programs' once they were detached.
    queue: Option<Queue>,
}

impl Pinning {
    fn unpinned(outcome: PinOutcome, reason: Option<String>) -> Pinning {
        Pinning {
            report: PinReport { outcome, reason },
            dir: None,
            queue: None,
        }
    }
}

/// The reads pinned programs queued while no agent ran, audited before any live one.
pub struct Queue {
    events: Vec<RawEvent>,
    /// Records of another layout (an earlier agent's programs): counted, audited as lost.
    unreadable: u64,
    /// When they can have happened.
    window: Window,
    /// The replaced programs' losses, `(total, already audited)`, read after they were
    /// detached (`None` for adopted pins: their counter is this agent's).
    lost: Option<(u64, u64)>,
    /// Adopted pins: the generation this agent advanced them to before taking the queue. A
    /// record the live reader finds with an earlier one is of this queue too (its program
    /// read the generation before the adoption and committed the record after the drain).
    generation: Option<u32>,
}

/// A record of an open made before the adoption, read live: its program read an earlier
/// generation than `current` (see [`Queue::generation`]).
fn made_before_adoption(raw: &RawEvent, current: Option<u32>) -> bool {
    current.is_some_and(|current| raw.generation < current)
}

/// Why records of a queue could not be read.
const OTHER_LAYOUT: &str = "queued by an earlier agent in another event layout";

/// Passes over the ring that [`take_queue`] makes at most.
const QUEUE_PASSES: usize = 8;
/// The pause between two of [`take_queue`]'s passes: far longer than a program holds a record
/// reserved (it fills and commits it in microseconds, without sleeping).
const QUEUE_PASS_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// How long [`drain_old`] keeps looking at a replaced ring after detaching its programs.
const OLD_RING_SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Records one of [`take_queue`]'s passes takes at most: twice what the 512 KiB ring holds
/// (256 records of 2 KiB with their headers).
const QUEUE_PASS_RECORDS: usize = 512;

/// Takes every record out of `ring` now, without looking at /proc (the readers' pids may have
/// been reused since): the events, and how many records were not of this agent's layout (an
/// earlier agent's programs write another size; parsed as ours they would be misread).
///
/// The ring's reader stops at a record a program has reserved and not yet committed, so one
/// pass would leave the records behind it to the live reader, which would audit reads made
/// while no agent ran as live ones, judged on the grants valid at the restart. A second pass
/// after [`QUEUE_PASS_PAUSE`] takes them, and passes go on while they find records (reads
/// made during the adoption, which its window's end, taken after this, still covers), at most
/// [`QUEUE_PASSES`] of at most [`QUEUE_PASS_RECORDS`] each. A record held reserved for longer
/// than the pause still ends the drain early; it and those behind it are then told from live
/// ones by their generation ([`Queue::generation`]) when the live reader finds them.
fn take_queue(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    settle: std::time::Duration,
) -> (Vec<RawEvent>, u64) {
    let mut events = Vec::new();
    let mut unreadable = 0u64;
    let started = std::time::Instant::now();
    // Constants both: the quotient is small (50 for OLD_RING_SETTLE).
    let extra = settle.as_millis() / QUEUE_PASS_PAUSE.as_millis().max(1);
    let passes = QUEUE_PASSES + usize::try_from(extra).unwrap_or(QUEUE_PASSES);
    for pass in 0..passes {
        let mut took = 0usize;
        // A pass takes at most a ring's worth of records: a ring refilled as fast as it is
        // read (reads during the adoption) cannot hold the agent's start in one pass.
        while took < QUEUE_PASS_RECORDS {
            let Some(item) = ring.next() else { break };
            sort_queued(&item, &mut events, &mut unreadable);
            took += 1;
        }
        let settled = started.elapsed() >= settle;
        if (pass > 0 && took == 0 && settled) || pass + 1 == passes {
            break;
        }
        // A sleep, not a poll of the ring's descriptor: the ring reads as readable while a
        // record is reserved and not yet committed (its data size counts from the producer's
        // position), so a poll would return at once and the pause would be none.
        std::thread::sleep(QUEUE_PASS_PAUSE);
    }
    (events, unreadable)
}

/// Adopted pins' queue: the generation advanced first, then the queue taken (see
/// [`Queue::generation`]). In this order only: a record whose program read the generation
/// before the advance is either taken here or told by its generation when the live reader
/// finds it; advanced after the drain, a record committed in between would be neither.
fn take_adopted_queue(outputs: &mut Outputs) -> anyhow::Result<(u32, Vec<RawEvent>, u64)> {
    let generation = loader::advance_generation(&mut outputs.generation)?;
    let (events, unreadable) = take_queue(&mut outputs.events, std::time::Duration::ZERO);
    Ok((generation, events, unreadable))
}

/// One queued record: an event of this layout, or counted as unreadable (never dropped
/// uncounted).
fn sort_queued(bytes: &[u8], events: &mut Vec<RawEvent>, unreadable: &mut u64) {
    match RawEvent::parse_exact(bytes) {
        Some(raw) => events.push(raw),
        None => *unreadable += 1,
    }
}

/// Detaches replaced programs (their pins are gone) and takes their queue, then reads their
/// losses (those of the overlap included).
fn drain_old(mut old: OldPins) -> Queue {
    old.detach();
    // No program starts on the old ring any more, but one already running may still commit a
    // record it reserved, and a record held reserved stops the reader: the passes go on for
    // OLD_RING_SETTLE before one that finds nothing may end them (nothing reads this ring
    // afterwards, and no generation tells its late records).
    let (events, unreadable) = old
        .events
        .as_mut()
        .map(|ring| take_queue(ring, OLD_RING_SETTLE))
        .unwrap_or_default();
    let before_ms = repeats::unix_now_ms();
    Queue {
        events,
        unreadable,
        window: Window {
            after_ms: old.stopped_ms,
            before_ms,
        },
        lost: old.lost(),
        generation: None,
    }
}

/// Removes the pins an earlier eBPF start left in `bypass.pin_dir` (bypass off, fanotify, or
/// `pin = false`: nothing would drain their queue again), detaching their programs, and takes
/// what they queued and lost (see [`drain_old`]) for the caller to report. `None` when there
/// were none.
fn remove_pins(config: &BypassConfig) -> Option<(PinReport, Option<Queue>)> {
    if std::fs::symlink_metadata(&config.pin_dir).is_err() {
        return None;
    }
    let left = |e: &dyn std::fmt::Display| {
        Some(format!(
            "the pins in {} were left in place: {e:#}",
            config.pin_dir.display()
        ))
    };
    let (reason, queue) = match PinDir::open(&config.pin_dir) {
        Err(e) => (left(&e), None),
        Ok(dir) => {
            // Held open: still attached, and still queueing, until their pins are gone.
            let old = OldPins::open(&dir);
            match dir.remove() {
                Ok(()) => (None, Some(drain_old(old))),
                Err(e) => (left(&e), None),
            }
        }
    };
    Some((
        PinReport {
            outcome: PinOutcome::Off,
            reason,
        },
        queue,
    ))
}

/// What `bypass unpin` discarded: the queued records, and the losses not yet audited.
pub struct Discarded {
    pub reads: u64,
    pub lost: u64,
}

/// `loggate-agent bypass unpin`: removes the pins in `path` and detaches their programs;
/// `None` when there were none, else what their queue held (no agent runs to audit it: the
/// caller says how much was discarded).
pub fn unpin(path: &Path) -> anyhow::Result<Option<Discarded>> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    let dir = pins::open_for_unpin(path)?;
    let old = OldPins::open(&dir);
    dir.remove()
        .map_err(|e| anyhow::Error::new(e).context(format!("removing {}", path.display())))?;
    let queue = drain_old(old);
    let lost = queue.lost.map_or(0, |(t, r)| t.saturating_sub(r));
    let reads = u64::try_from(queue.events.len())
        .unwrap_or(u64::MAX)
        .saturating_add(queue.unreadable);
    Ok(Some(Discarded { reads, lost }))
}

impl Startup {
    /// Starts the requested mechanism (for `auto`: eBPF, else fanotify), excludes this process,
    /// and fills the protected set from `roots` — all before the agent serves, so the first
    /// read is already covered.
    pub fn begin(config: &BypassConfig, roots: &[PathBuf]) -> Startup {
        if config.mode == Mode::Off {
            let (pins, queue) = remove_pins(config).unzip();
            return Startup::Inactive {
                requested: Mode::Off,
                reason: None,
                pins,
                queue: queue.flatten(),
            };
        }
        // Scanned once, whichever mechanism takes it.
        let inventory = Inventory::scan(roots, config.max_protected);
        let ebpf_error = match config.mode {
            Mode::Off | Mode::Fanotify => None,
            Mode::Auto | Mode::Lsm | Mode::Fentry | Mode::Tracepoint | Mode::Strict => {
                match Self::load_ebpf(config, &inventory) {
                    Ok((loaded, fallback)) => {
                        let Loaded {
                            probe,
                            maps,
                            outputs,
                            pinning,
                        } = loaded;
                        return Startup::Ebpf(Box::new(EbpfAudit {
                            probe,
                            fallback,
                            maps,
                            outputs,
                            inventory,
                            pinning,
                        }));
                    }
                    Err(e) if config.mode == Mode::Auto => Some(e),
                    Err(e) => {
                        return Startup::Inactive {
                            requested: config.mode,
                            reason: Some(e),
                            pins: None,
                            queue: None,
                        }
                    }
                }
            }
        };
        match Self::start_fanotify(&inventory) {
            Ok(fan) => {
                // fanotify is up (`fanotify`, or `auto` fell back): the pinned programs are
                // detached, their queue reported, never left attached queueing for ever.
                let (pins, queue) = remove_pins(config).unzip();
                Startup::Fanotify {
                    fan,
                    inventory,
                    children: ChildExclusions::fanotify(),
                    ebpf_error,
                    pins,
                    queue: queue.flatten(),
                }
            }
            Err(e) => Startup::Inactive {
                requested: config.mode,
                reason: Some(match ebpf_error {
                    Some(ebpf) => format!("eBPF: {ebpf}; fanotify: {e:#}"),
                    None => format!("fanotify: {e:#}"),
                }),
                pins: None,
                queue: None,
            },
        }
    }

    /// Tries the mode's hooks in order (`auto`: lsm, fentry, tracepoint) and keeps the first
    /// the kernel accepts, with the reasons the ones before it were refused; the error names
    /// every hook tried and why it was refused.
    fn load_ebpf(
        config: &BypassConfig,
        inventory: &Inventory,
    ) -> Result<(Loaded, Vec<String>), String> {
        let mut refused = Vec::new();
        for &hooks in config.mode.ebpf_hooks() {
            match Self::load_hooks(config, inventory, hooks) {
                Ok(loaded) => return Ok((loaded, refused)),
                Err(e) => refused.push(format!("{}: {e:#}", hooks.name())),
            }
        }
        Err(refused.join("; "))
    }

    /// Loads the programs of `hooks`, or adopts them from the pin folder (see `pins`): pins of
    /// the same objects are adopted; others are replaced with no window (the new programs are
    /// attached before the old ones are detached, and the old queue is drained); a folder that
    /// is not safe is left alone and the programs run unpinned. When the hooks cannot be
    /// loaded at all, the pins stay as they were (still attached, still queueing).
    fn load_hooks(
        config: &BypassConfig,
        inventory: &Inventory,
        hooks: Hooks,
    ) -> anyhow::Result<Loaded> {
        if !config.pin {
            let mut loaded = Self::load_fresh(config, inventory, hooks, None)?;
            // The new programs attached first: the old ones' queue is then complete.
            let (report, queue) = remove_pins(config).unwrap_or((
                PinReport {
                    outcome: PinOutcome::Off,
                    reason: None,
                },
                None,
            ));
            loaded.pinning.report = report;
            loaded.pinning.queue = queue;
            return Ok(loaded);
        }
        let dir = match PinDir::open(&config.pin_dir) {
            Ok(dir) => dir,
            Err(refusal) => {
                let reason = refusal.to_string();
                let mut loaded = Self::load_fresh(config, inventory, hooks, None)?;
                loaded.pinning = Pinning::unpinned(PinOutcome::Refused, Some(reason));
                return Ok(loaded);
            }
        };
        let identity = pins::identity(
            hooks.name(),
            config.kfuncs,
            std::mem::size_of::<event::RawEvent>(),
        );
        let stale = match dir.marker()? {
            Some((id, lookup)) if id == identity => match Probe::adopt(&dir, hooks, &lookup) {
                Ok((probe, mut maps, mut outputs)) => {
                    // What was queued while no agent ran, taken out now, before this agent
                    // serves: those records are told from live ones, and judged as queued.
                    let after_ms = outputs
                        .lost_reported
                        .as_mut()
                        .and_then(loader::take_stop_time);
                    // The generation first: every record made before it carries an earlier
                    // one, however late it is committed. The window ends after the last
                    // pass: every record taken was made before it.
                    let (generation, events, unreadable) = take_adopted_queue(&mut outputs)?;
                    let before_ms = repeats::unix_now_ms();
                    let queue = Queue {
                        events,
                        unreadable,
                        window: Window {
                            after_ms,
                            before_ms,
                        },
                        lost: None,
                        generation: Some(generation),
                    };
                    maps.exclude_tgid(std::process::id())?;
                    maps.sync(inventory)?;
                    return Ok(Loaded {
                        probe,
                        maps,
                        outputs,
                        pinning: Pinning {
                            report: PinReport {
                                outcome: PinOutcome::Adopted,
                                reason: None,
                            },
                            dir: Some(dir),
                            queue: Some(queue),
                        },
                    });
                }
                Err(e) => Some(format!("the pins could not be adopted: {e:#}")),
            },
            Some(_) => Some(
                "the pins were made by other objects or settings (an upgrade, or another mode)"
                    .to_string(),
            ),
            None if dir.entries()?.is_empty() => None,
            None => Some("the pins were incomplete (an agent stopped while pinning)".to_string()),
        };
        // Loaded first, touching no pin: when these hooks are refused (`auto` tries several),
        // the pins stay as they are, still attached and queueing.
        let mut probe = Probe::load(Self::objects(config), hooks)?;
        // The old programs stay attached (held open here) until the new ones are pinned.
        let old = stale.is_some().then(|| OldPins::open(&dir));
        if let Err(e) = probe.check_pinnable(dir.path()) {
            // Nothing was pinned: the programs run as loaded; the old ones are detached (their
            // queue drained) all the same, since this agent's programs now see the opens.
            let mut loaded = Self::finish(probe, inventory, None)?;
            let _ = dir.clear();
            loaded.pinning = Pinning::unpinned(
                PinOutcome::Failed,
                Some(format!(
                    "{e:#}; opens while the agent restarts are not seen"
                )),
            );
            loaded.pinning.queue = old.map(drain_old);
            return Ok(loaded);
        }
        let mut loaded = match Self::finish(probe, inventory, Some(&dir)) {
            Ok(mut loaded) => match dir.mark_complete(&identity, loaded.probe.fd_lookup.name()) {
                Ok(()) => {
                    loaded.pinning = Pinning {
                        report: PinReport {
                            outcome: if stale.is_some() {
                                PinOutcome::Replaced
                            } else {
                                PinOutcome::Created
                            },
                            reason: stale,
                        },
                        dir: Some(dir),
                        queue: None,
                    };
                    loaded
                }
                Err(e) => {
                    let _ = dir.clear();
                    loaded.pinning = Pinning::unpinned(
                        PinOutcome::Failed,
                        Some(format!("marking the pins complete: {e}")),
                    );
                    loaded
                }
            },
            Err(e) => {
                // A link whose pin failed was detached with it: load afresh, unpinned.
                let _ = dir.clear();
                let mut loaded = Self::load_fresh(config, inventory, hooks, None)?;
                loaded.pinning = Pinning::unpinned(
                    PinOutcome::Failed,
                    Some(format!("pinning in {}: {e:#}", dir.path().display())),
                );
                loaded
            }
        };
        loaded.pinning.queue = old.map(drain_old);
        Ok(loaded)
    }

    fn objects(config: &BypassConfig) -> Objects {
        Objects::Agent {
            kfuncs: config.kfuncs,
        }
    }

    /// Loads and attaches the programs, unpinned unless `pin_to`.
    fn load_fresh(
        config: &BypassConfig,
        inventory: &Inventory,
        hooks: Hooks,
        pin_to: Option<&PinDir>,
    ) -> anyhow::Result<Loaded> {
        Self::finish(
            Probe::load(Self::objects(config), hooks)?,
            inventory,
            pin_to,
        )
    }

    /// Takes the loaded programs' maps; with `pin_to`, first empties that folder (an earlier
    /// agent's pins, held open by the caller) and pins the links and maps there. Then
    /// excludes this process and fills the protected set.
    fn finish(
        mut probe: Probe,
        inventory: &Inventory,
        pin_to: Option<&PinDir>,
    ) -> anyhow::Result<Loaded> {
        if let Some(dir) = pin_to {
            dir.clear()?;
        }
        if let Some(dir) = pin_to {
            probe.pin_links(dir.path())?;
        }
        let (mut maps, outputs) = probe.split(pin_to.map(PinDir::path))?;
        maps.exclude_tgid(std::process::id())?;
        maps.sync(inventory)?;
        Ok(Loaded {
            probe,
            maps,
            outputs,
            pinning: Pinning::unpinned(PinOutcome::Created, None),
        })
    }

    fn start_fanotify(inventory: &Inventory) -> anyhow::Result<Fanotify> {
        let mut fan = Fanotify::init()?;
        fan.sync(inventory)?;
        Ok(fan)
    }

    /// Where the agent's own children (a journal read's `journalctl`) are excluded from the
    /// running audit (see [`ChildExclusions`]).
    pub fn child_exclusions(&self) -> ChildExclusions {
        match self {
            Startup::Ebpf(a) => ChildExclusions::ebpf(a.maps.excluded()),
            Startup::Fanotify { children, .. } => children.clone(),
            Startup::Inactive { .. } => ChildExclusions::off(),
        }
    }

    /// The active mode's name, as reported in `agent.started`: `lsm`, `fentry`, `tracepoint`,
    /// `strict`, `fanotify`, `off`.
    pub fn mode_name(&self) -> &'static str {
        match self {
            Startup::Ebpf(a) => a.probe.hooks.name(),
            Startup::Fanotify { .. } => "fanotify",
            Startup::Inactive { .. } => "off",
        }
    }

    /// Fills the bypass fields of `agent.started`: the mode, the hooks attached, the
    /// protected entries (left null where the mode has none).
    pub fn describe(&self, started: &mut events::AgentStarted) {
        started.bypass_mode = self.mode_name();
        match self {
            Startup::Ebpf(a) => {
                started.bypass_hooks = a.probe.attached.iter().map(|h| h.to_string()).collect();
                started.bypass_hooks_missing = Some(a.probe.missing.clone());
                started.bypass_fd_lookup = Some(a.probe.fd_lookup.name());
                started.bypass_fd_lookup_reason = match &a.probe.fd_lookup {
                    FdLookup::ProbeRead { reason } => Some(reason.clone()),
                    FdLookup::Cast | FdLookup::None => None,
                };
                started.bypass_protected = Some(a.inventory.len() as u64);
                started.bypass_fallback_reason =
                    (!a.fallback.is_empty()).then(|| a.fallback.join("; "));
                started.bypass_pins = Some(a.pinning.report.outcome.as_str());
                started.bypass_pins_reason = a.pinning.report.reason.clone();
            }
            Startup::Fanotify {
                inventory,
                ebpf_error,
                pins,
                ..
            } => {
                started.bypass_hooks = vec!["fanotify:FAN_OPEN".to_string()];
                started.bypass_protected = Some(inventory.len() as u64);
                started.bypass_fallback_reason = ebpf_error.clone();
                started.bypass_pins = pins.as_ref().map(|p| p.outcome.as_str());
                started.bypass_pins_reason = pins.as_ref().and_then(|p| p.reason.clone());
            }
            Startup::Inactive { pins, .. } => {
                started.bypass_pins = pins.as_ref().map(|p| p.outcome.as_str());
                started.bypass_pins_reason = pins.as_ref().and_then(|p| p.reason.clone());
                return;
            }
        }
        let ia32 = ia32::detect();
        let seen = !matches!(self, Startup::Ebpf(a) if a.probe.hooks == Hooks::Tracepoint);
        started.bypass_ia32_syscalls = Some(ia32.as_str());
        started.bypass_ia32_seen = Some(seen);
        if !seen && matches!(ia32, ia32::Ia32::Enabled | ia32::Ia32::Unknown) {
            let runs = match ia32 {
                ia32::Ia32::Enabled => "this kernel runs 32-bit syscalls",
                _ => "whether this kernel runs 32-bit syscalls is unknown",
            };
            started.bypass_notes.push(format!(
                "32-bit (int 0x80) opens are not seen in tracepoint mode and {runs}: set bypass.mode = \"strict\", or boot with ia32_emulation=0 where nothing needs 32-bit programs"
            ));
        }
        if matches!(self, Startup::Fanotify { .. }) {
            started.bypass_notes.push(
                "fanotify reports only a pid: uid, command, executable and command line are read from /proc afterwards and are often null for short-lived readers (about 40 % of them); the eBPF modes read them in the kernel at the open".to_string(),
            );
            started.bypass_notes.push(
                "fanotify merges an open into an identical one still queued (same process, same file) and counts nothing: each bypass.read stands for one or more opens, so a burst by one process is under-counted, never hidden; the eBPF modes count every repeat".to_string(),
            );
            started.bypass_notes.push(
                "fanotify cannot outlive the agent (its marks belong to the agent's file descriptor): opens while the agent restarts are not seen; the eBPF modes pin their programs in bpffs and report them after the restart".to_string(),
            );
        }
    }

    /// Writes `bypass.unavailable` when the audit was requested but could not start, and
    /// warns on stderr; then runs the active audit's tasks.
    pub fn spawn(self, shared: Arc<Shared>) -> anyhow::Result<()> {
        match self {
            Startup::Inactive {
                requested,
                reason: Some(reason),
                queue,
                ..
            } => {
                audit_discarded(&shared, queue);
                tracing::warn!(
                    "bypass audit UNAVAILABLE: direct reads of protected files are not audited on this host: {reason}"
                );
                shared.audit(&events::BypassUnavailable {
                    requested_mode: requested.name(),
                    reason,
                })?;
            }
            Startup::Inactive {
                reason: None,
                queue,
                ..
            } => {
                tracing::info!("bypass audit is off by configuration");
                audit_discarded(&shared, queue);
            }
            Startup::Fanotify {
                fan,
                inventory,
                children,
                ebpf_error,
                queue,
                ..
            } => {
                if let Some(e) = ebpf_error {
                    tracing::warn!(
                        "bypass audit: eBPF unavailable ({e}); using fanotify: no open flags, uid and command only while the opener lives"
                    );
                }
                let inventory = Arc::new(RwLock::new(inventory));
                // fanotify sees no movers: the departures are recorded without one.
                let movers = Movers::default();
                if let Some(queue) = queue {
                    let mut names =
                        process::Names::new(Path::new("/etc/passwd"), Path::new("/sys/fs/cgroup"));
                    let mut repeats = repeats::Repeats::default();
                    tokio::task::block_in_place(|| {
                        audit_queue(
                            &shared,
                            &inventory,
                            &mut repeats,
                            &movers,
                            &mut names,
                            queue,
                        )
                    });
                }
                let fd = fan.fd().try_clone()?;
                // SAFETY: the AsyncFd owns this OwnedFd (a duplicate of the fanotify fd), which
                // stays open and the same until the AsyncFd drops it.
                let fd =
                    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
                tokio::spawn(read_fanotify(
                    shared.clone(),
                    fd,
                    inventory.clone(),
                    children.clone(),
                ));
                tokio::spawn(report_held(shared.clone(), inventory.clone(), children));
                tokio::spawn(maintain(
                    shared,
                    Maintained::Fanotify(fan),
                    inventory,
                    movers,
                ));
            }
            Startup::Ebpf(audit) => {
                let EbpfAudit {
                    probe,
                    fallback,
                    maps,
                    outputs,
                    inventory,
                    pinning,
                } = *audit;
                let Pinning { report, dir, queue } = pinning;
                match report.outcome {
                    PinOutcome::Refused | PinOutcome::Failed => tracing::warn!(
                        "bypass audit: the programs are not pinned, so opens while the agent restarts will not be seen: {}",
                        report.reason.as_deref().unwrap_or("")
                    ),
                    PinOutcome::Replaced => tracing::info!(
                        "bypass audit: replaced the pinned programs: {}",
                        report.reason.as_deref().unwrap_or("")
                    ),
                    _ => {}
                }
                for refused in &fallback {
                    tracing::warn!(
                        "bypass audit: using {} mode because the kernel refused {refused}",
                        probe.hooks.name()
                    );
                }
                if let FdLookup::ProbeRead { reason } = &probe.fd_lookup {
                    tracing::warn!(
                        "bypass audit: the kernel refused the bpf_rdonly_cast build ({reason}); using the bpf_probe_read_kernel build: the same opens are seen, at a higher cost for processes with a grown fd table"
                    );
                }
                for hook in &probe.missing {
                    tracing::warn!(
                        "bypass audit: hook not attached, its opens are not seen: {hook}"
                    );
                }
                let inventory = Arc::new(RwLock::new(inventory));
                let Outputs {
                    events,
                    lost,
                    seen,
                    lost_reported,
                    generation: _,
                } = outputs;
                // SAFETY: the ring buffer owns its map's file descriptor (an OwnedFd inside
                // MapData, never replaced), so the fd is open and the same for as long as the
                // RingBuf lives, and the AsyncFd owns the RingBuf.
                let ring = unsafe {
                    AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
                }?;
                let counters = Counters {
                    lost,
                    seen,
                    lost_reported,
                };
                // At a clean stop, the time from which the reads left queued can date.
                let last_drain = Arc::new(AtomicI64::new(repeats::unix_now_ms()));
                let stop_clock = match dir.as_ref().map(|d| loader::open_lost_reported(d.path())) {
                    Some(Ok(map)) => Some(StopClock {
                        map,
                        last_drain: last_drain.clone(),
                    }),
                    Some(Err(e)) => {
                        tracing::warn!("bypass audit: the stop time cannot be kept in the pins, reads queued after this agent stops will be judged with an unknown window: {e:#}");
                        None
                    }
                    None => None,
                };
                let movers = Movers {
                    seen: loggate_agent_ebpf::names::MOVE_PROGRAMS
                        .iter()
                        .any(|(_, tp)| probe.attached.contains(tp)),
                    ..Movers::default()
                };
                tokio::spawn(read_events(
                    shared.clone(),
                    ring,
                    counters,
                    queue,
                    last_drain,
                    inventory.clone(),
                    movers.clone(),
                ));
                tokio::spawn(report_held(
                    shared.clone(),
                    inventory.clone(),
                    ChildExclusions::ebpf(maps.excluded()),
                ));
                tokio::spawn(maintain(
                    shared,
                    Maintained::Ebpf(Box::new(EbpfMaintained {
                        _stop_clock: stop_clock,
                        _probe: probe,
                        maps,
                        _pins: dir,
                    })),
                    inventory,
                    movers,
                ));
            }
        }
        Ok(())
    }
}

/// Writes `bypass.held_open` for every process that already held a protected file open for
/// reading when the hooks were attached (they are, by the time this runs: see `held`).
/// The agent itself and its children excluded at that moment (a journal read's
/// `journalctl`, started while the sweep walks) are left out: their opens are the gate's own.
async fn report_held(
    shared: Arc<Shared>,
    inventory: Arc<RwLock<Inventory>>,
    children: ChildExclusions,
) {
    let own = std::process::id();
    let swept = tokio::task::spawn_blocking(move || {
        let inv = inventory.read().unwrap_or_else(|p| p.into_inner());
        held::sweep(Path::new("/proc"), &inv, &|pid| {
            pid == own || children.is_excluded(pid)
        })
    })
    .await;
    let held = match swept {
        Ok(held) => held,
        Err(e) => {
            tracing::error!("bypass audit: the sweep of open files at start failed: {e}");
            return;
        }
    };
    let mut names = process::Names::new(Path::new("/etc/passwd"), Path::new("/sys/fs/cgroup"));
    for h in held {
        let record = tokio::task::block_in_place(|| record::held_record(&shared, &h, &mut names));
        if let Err(e) = shared.audit(&record) {
            tracing::error!("audit write failed: {e:#}");
        }
    }
}

/// The programs as loaded or adopted, with their maps and pins.
struct Loaded {
    probe: Probe,
    maps: ProtectedMaps,
    outputs: Outputs,
    pinning: Pinning,
}

/// What the maintenance task keeps up to date.
enum Maintained {
    /// Owns the probe: the programs stay attached as long as the task runs.
    Ebpf(Box<EbpfMaintained>),
    Fanotify(Fanotify),
}

struct EbpfMaintained {
    /// Dropped first: the stop time is stored while the folder is still this agent's.
    _stop_clock: Option<StopClock>,
    _probe: Probe,
    maps: ProtectedMaps,
    /// The pin folder's lock, held while the agent runs.
    _pins: Option<PinDir>,
}

/// Leaves in the pins, at a clean stop, the time from which the reads still queued can date:
/// the start of the reader's last drain, less a second (a record reserved before a drain
/// but committed after it stays in the ring). The next agent judges them with it.
struct StopClock {
    map: aya::maps::Array<aya::maps::MapData, u64>,
    last_drain: Arc<AtomicI64>,
}

impl Drop for StopClock {
    fn drop(&mut self) {
        let at = self.last_drain.load(Ordering::Relaxed).saturating_sub(1000);
        let Ok(at) = u64::try_from(at) else { return };
        if let Err(e) = self.map.set(loader::STOPPED_SLOT, at.max(1), 0) {
            tracing::warn!("bypass audit: storing the stop time in the pins: {e}");
        }
    }
}

/// The kernel's counters the event reader flushes every second.
struct Counters {
    /// Events lost to a full ring buffer, since load.
    lost: aya::maps::Array<aya::maps::MapData, u64>,
    /// Repeated opens per (process, file), see `repeats`.
    seen: aya::maps::HashMap<aya::maps::MapData, repeats::SeenKey, repeats::SeenVal>,
    /// With pins: how much of `lost` was audited (by this agent or the ones before it).
    lost_reported: Option<aya::maps::Array<aya::maps::MapData, u64>>,
}

/// The moves of protected files the event reader has read, and the bell it rings for the
/// rescan after each.
#[derive(Clone, Default)]
struct Movers {
    moves: Arc<Mutex<moves::Moves>>,
    wake: Arc<Notify>,
    /// Whether the kernel reports moves at all (the move hooks are attached).
    seen: bool,
}

/// The least time between two rescans when moves wake it: a flood of renames costs at most
/// five walks of the roots a second.
const MOVE_RESCAN_GAP: std::time::Duration = std::time::Duration::from_millis(200);
/// How long a departure found with no mover waits for the move's event still on its way from
/// the ring buffer (the rescan can run between a rename and the agent's read of it).
const MOVE_EVENT_GRACE: std::time::Duration = std::time::Duration::from_millis(150);

/// How often counted repeats and lost events are written: within a second of happening.
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Rescans the roots into the kernel's protected set every `rescan_interval`, and soon after a
/// move of a protected file, whose departure from the roots it then records with its mover.
async fn maintain(
    shared: Arc<Shared>,
    mut target: Maintained,
    inventory: Arc<RwLock<Inventory>>,
    movers: Movers,
) {
    let config = &shared.config.bypass;
    let roots: Vec<PathBuf> = shared
        .config
        .roots
        .iter()
        .map(|r| r.path().to_path_buf())
        .collect();
    // The set was filled at start: the first rescan is one interval later, not at once (an
    // immediate one would race with files created just after start, e.g. by a rotation).
    let first = tokio::time::Instant::now() + config.rescan_interval;
    let mut tick = tokio::time::interval_at(first, config.rescan_interval);
    let mut skipped_reported = 0usize;
    let mut last_scan = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = movers.wake.notified() => {
                tokio::time::sleep_until(last_scan + MOVE_RESCAN_GAP).await;
            }
        }
        last_scan = tokio::time::Instant::now();
        // A walk of the roots blocks on the filesystem: off the runtime's workers.
        let (scan_roots, max) = (roots.clone(), config.max_protected);
        let previous = inventory.clone();
        let rescan = move || {
            let previous = previous.read().unwrap_or_else(|p| p.into_inner());
            Inventory::rescan(&scan_roots, max, &previous)
        };
        let fresh = match tokio::task::spawn_blocking(rescan).await {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!("bypass audit: scanning the protected roots failed: {e}");
                continue;
            }
        };
        let synced = match &mut target {
            Maintained::Ebpf(e) => e.maps.sync(&fresh),
            Maintained::Fanotify(fan) => fan.sync(&fresh),
        };
        if let Err(e) = synced {
            tracing::error!("bypass audit: updating the protected set: {e:#}");
        }
        if fresh.skipped > 0 && skipped_reported == 0 {
            tracing::warn!(
                "bypass audit: {} entries beneath the roots exceed bypass.max_protected and are only covered through their folder",
                fresh.skipped
            );
        }
        skipped_reported = fresh.skipped;
        let unnamed = |m: &moves::Moves| {
            fresh
                .left
                .iter()
                .any(|l| m.mover_of(&l.key, l.to.as_deref()).is_none())
        };
        if movers.seen && unnamed(&movers.moves.lock().unwrap_or_else(|p| p.into_inner())) {
            tokio::time::sleep(MOVE_EVENT_GRACE).await;
        }
        let moves = {
            let mut m = movers.moves.lock().unwrap_or_else(|p| p.into_inner());
            m.prune(std::time::Instant::now(), |k| fresh.contains(k));
            let found: Vec<Option<moves::Move>> = fresh
                .left
                .iter()
                .map(|l| m.mover_of(&l.key, l.to.as_deref()).cloned())
                .collect();
            found
        };
        for (left, mover) in fresh.left.iter().zip(moves) {
            let record = events::BypassLeftRoots {
                path: left.from.display().to_string(),
                new_path: left.to.as_ref().map(|p| p.display().to_string()),
                inode: left.key.ino,
                device: inventory::dev_text(left.key.dev),
                links: left.links,
                move_hook: mover.as_ref().map(|m| m.hook),
                move_name: mover
                    .as_ref()
                    .filter(|m| !m.name.is_empty())
                    .map(|m| m.name.clone()),
                moved_by_pid: mover.as_ref().map(|m| m.pid),
                moved_by_uid: mover.as_ref().map(|m| m.uid),
                moved_by_user: mover.as_ref().and_then(|m| m.user.clone()),
                moved_by_comm: mover.as_ref().map(|m| m.comm.clone()),
                moved_by_exe: mover.as_ref().and_then(|m| m.exe.clone()),
                moved_by_cmdline: mover.and_then(|m| m.cmdline),
            };
            if let Err(e) = shared.audit(&record) {
                tracing::error!("audit write failed: {e:#}");
            }
        }
        *inventory.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }
}

/// The queue of pins removed while the audit is off: counted and audited as lost.
fn audit_discarded(shared: &Shared, queue: Option<Queue>) {
    let Some(queue) = queue else { return };
    let reads = u64::try_from(queue.events.len())
        .unwrap_or(u64::MAX)
        .saturating_add(queue.unreadable);
    if reads > 0 {
        audit_lost(
            shared,
            reads,
            reads,
            "queued by pinned programs while no agent ran, discarded: the bypass audit is off",
        );
    }
    if let Some((total, reported)) = queue.lost {
        if total > reported {
            audit_lost(shared, total, total - reported, "ring buffer full");
        }
    }
}

fn audit_lost(shared: &Shared, total: u64, since_last: u64, reason: &'static str) {
    loggate_core::metrics::agent()
        .bypass_events_lost
        .inc_by(since_last);
    let lost = events::BypassEventsLost {
        lost_total: total,
        lost_since_last: since_last,
        reason,
    };
    if let Err(e) = shared.audit(&lost) {
        tracing::error!("audit write failed: {e:#}");
    }
}

/// Drains the ring buffer whenever the kernel signals it, inspects each opener in /proc at
/// once (before a short-lived reader is gone), then audits each open; and every second writes
/// the repeats the kernel counted (`bypass.read_repeated`) and the events it lost.
async fn read_events(
    shared: Arc<Shared>,
    mut ring: AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    mut counters: Counters,
    queue: Option<Queue>,
    last_drain: Arc<AtomicI64>,
    inventory: Arc<RwLock<Inventory>>,
    movers: Movers,
) {
    let mut names = process::Names::new(Path::new("/etc/passwd"), Path::new("/sys/fs/cgroup"));
    let mut repeats = repeats::Repeats::default();
    // Adopted pins: records of opens made before the adoption that the live reader finds
    // (committed after the drain) are audited as queued, in the queue's window.
    let late = queue
        .as_ref()
        .and_then(|q| q.generation.map(|g| (g, q.window)));
    // What was queued while no agent ran, first (taken out of the ring at start).
    if let Some(queue) = queue {
        audit_queue(
            &shared,
            &inventory,
            &mut repeats,
            &movers,
            &mut names,
            queue,
        );
    }
    // With pins, what was lost while no agent ran is reported at the first flush.
    let mut lost_reported = counters
        .lost_reported
        .as_ref()
        .and_then(|r| r.get(&0, 0).ok())
        .unwrap_or(0);
    let mut flush = tokio::time::interval(FLUSH_INTERVAL);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(e) => {
                        stopped(&shared, &format!("ring buffer poll failed: {e}"));
                        return;
                    }
                };
                last_drain.store(repeats::unix_now_ms(), Ordering::Relaxed);
                let drained = drain(guard.get_inner_mut(), &mut names, late);
                guard.clear_ready();
                audit_drained(&shared, &inventory, &mut repeats, &movers, &mut names, drained);
            }
            _ = flush.tick() => {
                // What is queued first: a repeat's record follows the read it repeats.
                last_drain.store(repeats::unix_now_ms(), Ordering::Relaxed);
                let drained = drain(ring.get_mut(), &mut names, late);
                audit_drained(&shared, &inventory, &mut repeats, &movers, &mut names, drained);
                flush_repeats(&shared, &mut repeats, &mut counters.seen);
                let total = counters.lost.get(&0, 0).unwrap_or(0);
                if total > lost_reported {
                    audit_lost(&shared, total, total - lost_reported, "ring buffer full");
                    lost_reported = total;
                    if let Some(r) = counters.lost_reported.as_mut() {
                        if let Err(e) = r.set(0, total, 0) {
                            tracing::error!("bypass audit: recording the losses reported: {e}");
                        }
                    }
                }
            }
        }
    }
}

/// Takes every queued event out of the ring buffer, with what /proc and the kernel tell about
/// its opener; and, with `late` (adopted pins: the generation and the window of their queue),
/// apart, the records of opens made before the adoption, as a queue of that window: their
/// processes are not looked up in /proc (see [`queued_info`]).
fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    names: &mut process::Names,
    late: Option<(u32, Window)>,
) -> (Vec<(RawEvent, process::ProcessInfo)>, Option<Queue>) {
    let mut batch = Vec::new();
    let mut queued = Vec::new();
    while let Some(item) = ring.next() {
        if let Some(raw) = RawEvent::parse(&item) {
            if made_before_adoption(&raw, late.map(|(g, _)| g)) {
                queued.push(raw);
                continue;
            }
            let mut info = process::inspect(Path::new("/proc"), raw.tgid);
            // What the kernel read at the open wins over /proc, read later: the process may
            // have exec'd something else since (and a reader already gone has only that).
            info.exe_id = raw.exe_id();
            if let Some(argv) = raw.cmdline_bytes() {
                info.cmdline = Some(process::cmdline_text(argv));
            }
            // …and its executable, as far as the kernel could name it.
            if info.exe.is_none() {
                info.exe = raw.exe();
                info.exe_from_kernel = info.exe.is_some();
            }
            // …and its cgroup (and container) from the cgroup id the kernel reported.
            if info.cgroup.is_none() {
                // A miss walks cgroupfs (blocking): let the runtime move other tasks away.
                info.cgroup = tokio::task::block_in_place(|| names.cgroup_path(raw.cgroup_id));
                info.container_id = info.cgroup.as_deref().and_then(process::container_id);
            }
            info.user = names.user(raw.uid);
            batch.push((raw, info));
        }
    }
    let queued = late
        .filter(|_| !queued.is_empty())
        .map(|(_, window)| Queue {
            events: queued,
            unreadable: 0,
            window,
            lost: None,
            generation: None,
        });
    (batch, queued)
}

/// Audits what [`drain`] took: the records of opens made before the adoption first (as the
/// queue they belong to), then the live ones.
fn audit_drained(
    shared: &Shared,
    inventory: &RwLock<Inventory>,
    repeats: &mut repeats::Repeats,
    movers: &Movers,
    names: &mut process::Names,
    (batch, queued): (Vec<(RawEvent, process::ProcessInfo)>, Option<Queue>),
) {
    if let Some(queued) = queued {
        audit_queue(shared, inventory, repeats, movers, names, queued);
    }
    audit_batch(shared, inventory, repeats, movers, batch, None);
}

/// Audits a queue (see [`Queue`]): each read marked queued with its window and judged on it,
/// with what the kernel read at the open only (see [`queued_info`]); then its unreadable
/// records and the replaced programs' losses as `bypass.events_lost`.
fn audit_queue(
    shared: &Shared,
    inventory: &RwLock<Inventory>,
    repeats: &mut repeats::Repeats,
    movers: &Movers,
    names: &mut process::Names,
    queue: Queue,
) {
    let batch = queue
        .events
        .into_iter()
        .map(|raw| {
            let info = queued_info(&raw, names);
            (raw, info)
        })
        .collect();
    audit_batch(
        shared,
        inventory,
        repeats,
        movers,
        batch,
        Some(queue.window),
    );
    if queue.unreadable > 0 {
        audit_lost(shared, queue.unreadable, queue.unreadable, OTHER_LAYOUT);
    }
    if let Some((total, reported)) = queue.lost {
        if total > reported {
            audit_lost(shared, total, total - reported, "ring buffer full");
        }
    }
}

/// What is known of a queued read's process: only what the kernel read at the open. Its pid
/// may have been reused by another process since (the queue can be as old as the agent's
/// downtime), so /proc is not read: the process counts as exited.
fn queued_info(raw: &RawEvent, names: &mut process::Names) -> process::ProcessInfo {
    let exe = raw.exe();
    let cgroup = tokio::task::block_in_place(|| names.cgroup_path(raw.cgroup_id));
    process::ProcessInfo {
        exe_from_kernel: exe.is_some(),
        exe,
        cmdline: raw.cmdline_bytes().map(process::cmdline_text),
        container_id: cgroup.as_deref().and_then(process::container_id),
        cgroup,
        user: names.user(raw.uid),
        exe_id: raw.exe_id(),
        exited: true,
    }
}

fn audit_batch(
    shared: &Shared,
    inventory: &RwLock<Inventory>,
    repeats: &mut repeats::Repeats,
    movers: &Movers,
    batch: Vec<(RawEvent, process::ProcessInfo)>,
    queued: Option<Window>,
) {
    for (raw, info) in batch {
        if raw.is_move() {
            let m = moves::Move {
                key: inventory::FileKey::new(raw.dev, raw.ino),
                hook: raw.hook(),
                name: raw.name(),
                pid: raw.tgid,
                uid: raw.uid,
                user: info.user,
                comm: raw.comm(),
                exe: info.exe,
                cmdline: info.cmdline,
                at: std::time::Instant::now(),
            };
            movers
                .moves
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(m);
            movers.wake.notify_one();
            continue;
        }
        let opened = {
            let inv = inventory.read().unwrap_or_else(|p| p.into_inner());
            let opened = Opened::from_kernel(&inv, &raw);
            match queued {
                Some(window) => opened.queued(window),
                None => opened,
            }
        };
        let (read, read_seq) = audit_open(shared, &opened, &info);
        let key = repeats::SeenKey {
            ino: raw.ino,
            dev: raw.dev,
            tgid: raw.tgid,
        };
        repeats.reported(
            key,
            repeats::FirstRead {
                read_seq,
                uid: read.uid,
                comm: read.comm,
                path: read.path,
                opened_name: read.opened_name,
                expected: read.expected,
            },
        );
    }
}

/// Writes the repeats counted in the kernel since the last flush.
fn flush_repeats(
    shared: &Shared,
    repeats: &mut repeats::Repeats,
    seen: &mut aya::maps::HashMap<aya::maps::MapData, repeats::SeenKey, repeats::SeenVal>,
) {
    let now_ns = repeats::monotonic_ns();
    let now_ms = repeats::unix_now_ms();
    let flushed = match repeats.flush(seen, now_ns) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("bypass audit: reading the repeat counts: {e:#}");
            return;
        }
    };
    for f in flushed {
        let first = f.first.unwrap_or_default();
        let record = events::BypassReadRepeated {
            pid: f.key.tgid,
            uid: first.uid,
            comm: first.comm,
            path: first.path,
            opened_name: first.opened_name,
            inode: f.key.ino,
            device: inventory::dev_text(f.key.dev),
            repeats: f.repeats,
            first_ms: repeats::unix_ms(f.first_ns, now_ns, now_ms),
            last_ms: repeats::unix_ms(f.last_ns, now_ns, now_ms),
            read_seq: first.read_seq,
            expected: first.expected,
            severity: if first.expected { "low" } else { "high" },
        };
        if let Err(e) = shared.audit_deferred(&record) {
            tracing::error!("audit write failed: {e:#}");
        }
    }
}

/// Audits one bypass open (`bypass.read`) and, when the reader holds no grant covering the
/// file, raises a `bypass.finding` about it (an OCSF Detection Finding for the SIEM). These
/// are observations no action waits on: they are written at once and made durable by the
/// audit log's next group sync, so a burst of direct reads never queues behind the disk.
fn audit_open(
    shared: &Shared,
    opened: &Opened,
    info: &process::ProcessInfo,
) -> (events::BypassRead, Option<u64>) {
    let read = bypass_record(shared, opened, info);
    let written = shared.audit_deferred(&read).and_then(|read_seq| {
        // The finding repeats the read's fields: copied only when there is one.
        if read.finding_uid.is_some() {
            shared.audit_deferred(&events::BypassFinding {
                read: read.clone(),
                read_seq,
            })?;
        }
        Ok(read_seq)
    });
    match written {
        Ok(seq) => (read, Some(seq)),
        Err(e) => {
            tracing::error!("audit write failed: {e:#}");
            (read, None)
        }
    }
}

/// The fanotify counterpart of `read_events`.
async fn read_fanotify(
    shared: Arc<Shared>,
    fd: AsyncFd<OwnedFd>,
    inventory: Arc<RwLock<Inventory>>,
    children: ChildExclusions,
) {
    let own = std::process::id();
    let mut overflows = 0u64;
    let mut names = process::Names::new(Path::new("/etc/passwd"), Path::new("/sys/fs/cgroup"));
    loop {
        // Woken by the kernel, or by a journal stream whose `journalctl` has ended and that
        // waits for a read taking all that is queued before it reports that pid again (see
        // `exclusions`). Readiness is cleared first, then the queue read until it is empty: an
        // event queued meanwhile makes the descriptor ready again.
        tokio::select! {
            ready = fd.readable() => match ready {
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => {
                    stopped(&shared, &format!("fanotify poll failed: {e}"));
                    return;
                }
            },
            () = children.drain_asked() => {}
        }
        let handled = drain_fanotify(&fd, &children, own, &mut |events| {
            handle_fanotify(&shared, &inventory, &mut names, &mut overflows, events);
        })
        .await;
        if let Err(e) = handled {
            stopped(&shared, &format!("fanotify read failed: {e}"));
            return;
        }
    }
}

/// Reads the fanotify queue until it is empty, handing each batch to `handle`. The agent's
/// own opens (reads through the gate), and its children's while they are excluded, are left
/// out, judged by when each read starts (see `exclusions`).
///
/// A read that left room for another event took everything queued when it started, and its
/// events are filtered by then: it answers a release waiting for the reader to catch up
/// (`ChildExclusions::drained`) even when more events came meanwhile, so that a steady flood
/// of opens does not hold every journal stream's end for the whole wait. The task yields to
/// the runtime after each batch: a flood never holds a worker.
async fn drain_fanotify(
    fd: &AsyncFd<OwnedFd>,
    children: &ChildExclusions,
    own: u32,
    handle: &mut (dyn FnMut(Vec<FanEvent>) + Send),
) -> std::io::Result<()> {
    loop {
        let read_started = std::time::Instant::now();
        let read = {
            let filter = children.read_filter(read_started);
            fanotify::read_events(fd.get_ref(), &|pid| pid == own || filter.hides(pid))
        };
        match read {
            Ok(batch) => {
                if batch.emptied {
                    children.drained(read_started);
                }
                handle(batch.events);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                children.drained(read_started);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        tokio::task::yield_now().await;
    }
}

/// Audits one batch of fanotify events (see [`read_fanotify`]).
fn handle_fanotify(
    shared: &Shared,
    inventory: &RwLock<Inventory>,
    names: &mut process::Names,
    overflows: &mut u64,
    events: Vec<FanEvent>,
) {
    let mut batch = Vec::new();
    for event in events {
        match event {
            FanEvent::Overflow => {
                *overflows += 1;
                audit_lost(shared, *overflows, 1, "fanotify queue overflow");
            }
            FanEvent::Open(open) => {
                let mut info = process::inspect(Path::new("/proc"), open.pid);
                info.exe_id = process::exe_id(Path::new("/proc"), open.pid);
                let status = process::status(Path::new("/proc"), open.pid);
                info.user = status.uid.and_then(|uid| names.user(uid));
                batch.push((open, status, info));
            }
        }
    }
    for (open, status, info) in batch {
        let opened = {
            let inv = inventory.read().unwrap_or_else(|p| p.into_inner());
            Opened::from_fanotify(&inv, &open, status, &info)
        };
        let Some(opened) = opened else {
            continue; // not (or no longer) protected
        };
        audit_open(shared, &opened, &info);
    }
}

fn stopped(shared: &Shared, reason: &str) {
    tracing::error!("bypass audit stopped: {reason}");
    let _ = shared.audit(&events::BypassUnavailable {
        requested_mode: shared.config.bypass.mode.name(),
        reason: reason.to_string(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under a steady flood of opens (one a millisecond, each batch handled in 20 ms as an
    /// fsync might take, so the queue never empties), the reader still lets other tasks of
    /// its runtime run, and a journal stream's release is answered by a short read instead of
    /// waiting out `DRAIN_WAIT`. Needs root (fanotify): run with `--include-ignored` as root,
    /// as CI does.
    #[test]
    #[ignore = "needs root"]
    fn a_fanotify_flood_neither_holds_the_runtime_nor_a_release_for_the_whole_wait() {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().expect("tempdir");
        // Many files, opened in turn: the kernel merges a queued open with a new one of the
        // same file by the same process, which would keep the queue at one event.
        let files: Vec<PathBuf> = (0..200)
            .map(|i| dir.path().join(format!("{i}.log")))
            .collect();
        for file in &files {
            std::fs::write(file, "x").expect("write");
        }
        let inventory = Inventory::scan(&[dir.path().to_path_buf()], 1000);
        let mut fan = fanotify::Fanotify::init().expect("fanotify needs CAP_SYS_ADMIN");
        fan.sync(&inventory).expect("marked");
        let children = ChildExclusions::fanotify();
        let flood_for = Duration::from_millis(2500);
        let flood = std::thread::spawn(move || {
            let end = Instant::now() + flood_for;
            let mut opens = 0u32;
            for file in files.iter().cycle() {
                if Instant::now() >= end {
                    break;
                }
                let _ = std::fs::File::open(file);
                opens += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            opens
        });
        let releaser = {
            let children = children.clone();
            std::thread::spawn(move || {
                let guard = children.exclude(4242).expect("excluded");
                std::thread::sleep(Duration::from_millis(300));
                let asked = Instant::now();
                guard.release();
                asked.elapsed()
            })
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (largest_gap, batches) = runtime.block_on(async {
            let fd = fan.fd().try_clone().expect("dup");
            // SAFETY: the AsyncFd owns this OwnedFd (a duplicate of the fanotify fd), which
            // stays open and the same until the AsyncFd drops it.
            let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .expect("fd");
            let ticker = tokio::spawn(async {
                let mut largest = Duration::ZERO;
                for _ in 0..100 {
                    let at = Instant::now();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    largest = largest.max(at.elapsed());
                }
                largest
            });
            let mut batches = 0u32;
            let end = Instant::now() + flood_for;
            while Instant::now() < end {
                tokio::select! {
                    ready = fd.readable() => ready.expect("poll").clear_ready(),
                    () = children.drain_asked() => {}
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                drain_fanotify(&fd, &children, std::process::id(), &mut |_| {
                    batches += 1;
                    std::thread::sleep(Duration::from_millis(20));
                })
                .await
                .expect("read");
            }
            (ticker.await.expect("ticker"), batches)
        });
        let opens = flood.join().expect("flood");
        let release = releaser.join().expect("releaser");
        assert!(
            opens > 200 && batches > 10,
            "a flood: {opens} opens, {batches} batches"
        );
        assert!(
            largest_gap < Duration::from_millis(300),
            "another task waited {largest_gap:?}"
        );
        assert!(
            release < Duration::from_secs(1),
            "the release waited {release:?}"
        );
    }

    #[test]
    fn a_queued_record_of_another_layout_is_counted_not_dropped() {
        let size = std::mem::size_of::<RawEvent>();
        let (mut events, mut unreadable) = (Vec::new(), 0u64);
        // An earlier agent's smaller and larger events, then one of this layout.
        sort_queued(&vec![0u8; size - 16], &mut events, &mut unreadable);
        sort_queued(&vec![0u8; size + 16], &mut events, &mut unreadable);
        sort_queued(&vec![0u8; size], &mut events, &mut unreadable);
        assert_eq!((events.len(), unreadable), (1, 2));
    }

    #[test]
    fn a_record_is_of_the_queue_only_when_its_program_read_a_generation_before_the_adoption() {
        let bytes = vec![0u8; std::mem::size_of::<RawEvent>()];
        let mut raw = RawEvent::parse(&bytes).expect("event");
        assert!(!made_before_adoption(&raw, None), "no adoption: all live");
        assert!(made_before_adoption(&raw, Some(1)));
        raw.generation = 1;
        assert!(!made_before_adoption(&raw, Some(1)));
        raw.generation = 2;
        assert!(!made_before_adoption(&raw, Some(1)), "a later one is live");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_queued_reads_process_is_taken_from_the_kernel_never_from_proc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut names = process::Names::new(&dir.path().join("passwd"), dir.path());
        let bytes = vec![0u8; std::mem::size_of::<RawEvent>()];
        let mut raw = RawEvent::parse_exact(&bytes).expect("event");
        // Our own pid: /proc/<pid> exists and is another process than the reader was.
        raw.tgid = std::process::id();
        raw.cmdline[..3].copy_from_slice(b"cat");
        raw.cmdline_len = 3;
        let info = queued_info(&raw, &mut names);
        assert!(info.exited, "a queued reader's pid may be reused: {info:?}");
        assert_eq!(info.exe, None, "no executable from /proc: {info:?}");
        assert_eq!(info.cmdline.as_deref(), Some("cat"));
    }
}
