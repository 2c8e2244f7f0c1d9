//! The agent's own child processes the bypass audit must not report: the `journalctl` a
//! journal read runs opens the journal files, and on a packaged host they lie beneath the
//! protected roots (`/var/log/journal` under `/var/log`). Its opens are the gate's own reads,
//! audited as `read.allowed`/`read.finished`; reported as `bypass.read` they would be false
//! alarms on every journal read.
//!
//! Contract (the caller, `crate::journal`, keeps the order):
//!
//! - **Excluded only while it is ours.** A child is excluded by its pid after `fork` and
//!   before it `exec`s (it waits for the agent on a pipe, so it opens nothing before), and
//!   released once it has exited and *before* it is reaped: until the agent reaps it, its pid
//!   cannot be given to another process, so no other process is ever hidden by it.
//! - **Fail toward over-reporting.** When the exclusion cannot be added, the read goes on and
//!   its opens are reported (a false `bypass.read`), never the other way round. When the audit
//!   is off nothing is excluded (nothing would report).
//! - **eBPF:** the kernel's `excluded_tgids` map, checked at each open. Pinned maps outlive
//!   the agent: at a stop every pid is removed from it (see `ProtectedMaps`'s `Drop`), and an
//!   agent that adopts pins clears what the previous agent left (a `SIGKILL`ed agent's
//!   children die with it: `PR_SET_PDEATHSIG`).
//! - **fanotify:** a filter in user space, and its events are read after the fact: a release
//!   asks the reader for a `read(2)` that starts after the child's end and takes all that is
//!   queued (finds the queue empty, or leaves room in its buffer: every event of the child's
//!   has then been filtered, even under a steady flood of other opens), waits for it (at most
//!   [`DRAIN_WAIT`]), and only then reports the pid again. When the reader does not answer in
//!   time the entry is kept as a tombstone with the time of the release: an event is hidden
//!   only when the read that returned it started before the release (it happened while the
//!   child lived); later reads report that pid again (the child's own late events are then
//!   over-reported). A pid that an earlier process held, with an open of that process still
//!   queued when the child was given the pid, would be hidden: the queue is read as it fills,
//!   so that needs a pid reused within that moment.

use aya::maps::{HashMap as BpfHashMap, MapData};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The kernel's `excluded_tgids` map, shared by the protected maps (the agent's own pid) and
/// [`ChildExclusions`].
pub type ExcludedMap = Arc<Mutex<BpfHashMap<MapData, u32, u32>>>;

/// How long a release waits for the fanotify reader to have handled every event queued before
/// it; past it, the release over-reports rather than wait on.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// How long a released child's fanotify tombstone is kept when no event comes to purge it:
/// far longer than one batch of events takes to handle. Dropping it earlier only
/// over-reports.
const TOMBSTONE_KEPT: Duration = Duration::from_secs(60);

/// Where the agent's children are excluded from the bypass audit: the running mechanism's
/// filter, or nothing when the audit is off. Cheap to clone.
#[derive(Clone)]
pub struct ChildExclusions(Arc<Mechanism>);

enum Mechanism {
    /// The bypass audit is off: nothing reports the agent's children.
    Off,
    Ebpf(ExcludedMap),
    Fanotify(FanotifyFilter),
}

/// The fanotify reader's filter of the agent's children.
struct FanotifyFilter {
    /// pid → when it was released without the reader catching up (`None` while excluded).
    children: Mutex<HashMap<u32, Option<Instant>>>,
    /// When the latest `read(2)` that took all that was queued started: every event queued
    /// before then has been filtered.
    drained: Mutex<Option<Instant>>,
    drained_changed: Condvar,
    /// A release asking the reader for such a read.
    drain: Notify,
}

impl FanotifyFilter {
    /// Waits (at most [`DRAIN_WAIT`]) until a read that started at or after `after` found the
    /// queue empty or left room in its buffer (it took all that was queued); whether one did.
    fn wait_drained(&self, after: Instant) -> bool {
        self.drain.notify_one();
        let drained = self.drained.lock().unwrap_or_else(|p| p.into_inner());
        let waited = self
            .drained_changed
            .wait_timeout_while(drained, DRAIN_WAIT, |d| d.is_none_or(|at| at < after));
        match waited {
            Ok((_, timeout)) => !timeout.timed_out(),
            Err(_) => false,
        }
    }
}

impl ChildExclusions {
    /// Nothing to exclude from (the bypass audit is off or could not start).
    pub fn off() -> ChildExclusions {
        ChildExclusions(Arc::new(Mechanism::Off))
    }

    pub(super) fn ebpf(map: ExcludedMap) -> ChildExclusions {
        ChildExclusions(Arc::new(Mechanism::Ebpf(map)))
    }

    pub fn fanotify() -> ChildExclusions {
        ChildExclusions(Arc::new(Mechanism::Fanotify(FanotifyFilter {
            children: Mutex::new(HashMap::new()),
            drained: Mutex::new(None),
            drained_changed: Condvar::new(),
            drain: Notify::new(),
        })))
    }

    /// Excludes the agent's child `pid` until the returned guard is released or dropped.
    /// Called before the child execs; the caller releases it once the child has exited and
    /// before reaping it. An error leaves nothing excluded (the child's opens are reported).
    pub fn exclude(&self, pid: u32) -> anyhow::Result<ChildExclusion> {
        if pid == 0 || pid == std::process::id() {
            anyhow::bail!("pid {pid} is not a child of the agent");
        }
        match &*self.0 {
            Mechanism::Off => return Ok(ChildExclusion { pid, owner: None }),
            Mechanism::Ebpf(map) => map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pid, 1, 0)
                .map_err(|e| {
                    anyhow::anyhow!("adding pid {pid} to the kernel's excluded_tgids map: {e}")
                })?,
            Mechanism::Fanotify(filter) => {
                let mut children = filter.children.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                children.retain(|_, released| {
                    released.is_none_or(|at| now.saturating_duration_since(at) < TOMBSTONE_KEPT)
                });
                children.insert(pid, None);
            }
        }
        Ok(ChildExclusion {
            pid,
            owner: Some(self.0.clone()),
        })
    }

    /// The pids excluded now (not released), in the fanotify filter; empty for the other
    /// mechanisms.
    #[cfg(test)]
    pub fn excluded_now(&self) -> Vec<u32> {
        match &*self.0 {
            Mechanism::Fanotify(filter) => filter
                .children
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(_, released)| released.is_none())
                .map(|(pid, _)| *pid)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Every pid the fanotify filter still tracks, with whether it was released (a
    /// tombstone); empty for the other mechanisms.
    #[cfg(test)]
    pub fn tracked(&self) -> Vec<(u32, bool)> {
        match &*self.0 {
            Mechanism::Fanotify(filter) => filter
                .children
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(pid, released)| (*pid, released.is_some()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether `pid` is one of the agent's children excluded now (not released): in the
    /// kernel's map (eBPF) or the reader's filter (fanotify). The sweep of open files at
    /// start leaves such a process out, as it does the agent itself. A failed map lookup
    /// counts as not excluded (the process is reported).
    pub(super) fn is_excluded(&self, pid: u32) -> bool {
        match &*self.0 {
            Mechanism::Off => false,
            Mechanism::Ebpf(map) => map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&pid, 0)
                .is_ok(),
            Mechanism::Fanotify(filter) => matches!(
                filter
                    .children
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&pid),
                Some(None)
            ),
        }
    }

    /// Whether the fanotify reader hides an open by `pid` returned by a `read(2)` that
    /// started at `read_started` (see the module's contract); forgets the tombstones no later
    /// read can match. Always `false` for the other mechanisms (the kernel filters).
    pub(super) fn hides(&self, pid: u32, read_started: Instant) -> bool {
        let Mechanism::Fanotify(filter) = &*self.0 else {
            return false;
        };
        let mut children = filter.children.lock().unwrap_or_else(|p| p.into_inner());
        let hidden = match children.get(&pid) {
            Some(None) => true,
            Some(Some(released)) => read_started <= *released,
            None => false,
        };
        children.retain(|_, released| released.is_none_or(|at| at >= read_started));
        hidden
    }

    /// Resolves when a release asks the fanotify reader for a read that empties the queue
    /// (never, for the other mechanisms).
    pub(super) async fn drain_asked(&self) {
        match &*self.0 {
            Mechanism::Fanotify(filter) => filter.drain.notified().await,
            _ => std::future::pending().await,
        }
    }

    /// The fanotify reader took all that was queued (found the queue empty, or left room in
    /// its buffer) with a read that started at `read_started`.
    pub(super) fn drained(&self, read_started: Instant) {
        if let Mechanism::Fanotify(filter) = &*self.0 {
            let mut drained = filter.drained.lock().unwrap_or_else(|p| p.into_inner());
            if drained.is_none_or(|at| at < read_started) {
                *drained = Some(read_started);
            }
            filter.drained_changed.notify_all();
        }
    }
}

/// One excluded child; released (its pid reported again) by [`ChildExclusion::release`] or
/// when dropped.
pub struct ChildExclusion {
    pid: u32,
    /// `None`: nothing was excluded (the audit is off).
    owner: Option<Arc<Mechanism>>,
}

impl ChildExclusion {
    /// The excluded pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reports the pid again. Call it once the child has exited and before reaping it; in
    /// fanotify mode it blocks (at most [`DRAIN_WAIT`]) until the reader has handled the
    /// child's events.
    pub fn release(mut self) {
        self.release_now();
    }

    /// Reports the pid again at once, for a child that is already reaped (its `exec` failed
    /// and `spawn` reaped it): its pid is free, so waiting for the fanotify reader would hide
    /// whichever process is given it meanwhile. Only reads that started before now still
    /// hide it (a tombstone), so the child's own late events may be over-reported, never a
    /// new process's hidden.
    pub fn release_reaped(mut self) {
        let pid = self.pid;
        if let Some(Mechanism::Fanotify(filter)) = self.owner.as_deref() {
            filter
                .children
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pid, Some(Instant::now()));
            self.owner = None;
        }
        self.release_now();
    }

    fn release_now(&mut self) {
        let pid = self.pid;
        match self.owner.take().as_deref() {
            None | Some(Mechanism::Off) => {}
            Some(Mechanism::Ebpf(map)) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = map.remove(&pid) {
                    // Absent is fine (a stop cleared the map); anything else leaves it there.
                    if map.get(&pid, 0).is_ok() {
                        tracing::error!(
                            "bypass audit: pid {pid} (an ended journalctl) could not be removed from the kernel's excluded_tgids map, so opens by a process given that pid are not reported until the agent restarts: {e}"
                        );
                    }
                }
            }
            Some(Mechanism::Fanotify(filter)) => {
                let caught_up = filter.wait_drained(Instant::now());
                let mut children = filter.children.lock().unwrap_or_else(|p| p.into_inner());
                if caught_up {
                    children.remove(&pid);
                } else {
                    children.insert(pid, Some(Instant::now()));
                }
            }
        }
    }
}

impl Drop for ChildExclusion {
    fn drop(&mut self) {
        self.release_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanotify_hides_a_child_only_in_reads_that_started_before_its_release() {
        let children = ChildExclusions::fanotify();
        let before = Instant::now();
        let guard = children.exclude(4242).expect("excluded");
        let during = Instant::now();
        assert!(children.hides(4242, during), "alive: hidden");
        assert!(!children.hides(4243, during), "another pid: reported");
        guard.release();
        // A read that started before the release returned what the child did while alive.
        assert!(children.hides(4242, during));
        // A read that started after it may hold a new process given the same pid.
        let after = Instant::now();
        assert!(!children.hides(4242, after), "released: reported");
        // The tombstone is gone: even an older read time no longer matches.
        assert!(!children.hides(4242, before));
    }

    #[test]
    fn a_fanotify_release_waits_for_the_reader_to_catch_up_and_then_keeps_nothing() {
        let children = ChildExclusions::fanotify();
        let guard = children.exclude(11).expect("excluded");
        let during = Instant::now();
        // The reader: an empty read every 10 ms (bounded).
        let reader = {
            let children = children.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    std::thread::sleep(Duration::from_millis(10));
                    children.drained(Instant::now());
                }
            })
        };
        let asked = Instant::now();
        guard.release();
        assert!(asked.elapsed() < DRAIN_WAIT, "did not wait for the timeout");
        // Caught up: no tombstone, so not even a read older than the release hides it.
        assert!(!children.hides(11, during));
        reader.join().expect("reader");
    }

    #[test]
    fn a_dropped_guard_releases_and_the_audit_off_excludes_nothing() {
        let children = ChildExclusions::fanotify();
        drop(children.exclude(7).expect("excluded"));
        assert!(!children.hides(7, Instant::now()));
        let off = ChildExclusions::off();
        let guard = off.exclude(7).expect("nothing to exclude from");
        assert!(!off.hides(7, Instant::now()));
        assert_eq!(guard.pid(), 7);
        assert!(
            children.exclude(std::process::id()).is_err(),
            "never the agent itself"
        );
    }

    /// Needs root (a real BPF map): run with `--include-ignored` as root, as CI does.
    #[test]
    #[ignore = "needs root"]
    fn ebpf_exclusion_is_in_the_kernel_map_until_released() {
        let map: BpfHashMap<MapData, u32, u32> =
            BpfHashMap::create(16, 0).expect("creating a BPF hash map needs root");
        let map: ExcludedMap = Arc::new(Mutex::new(map));
        let children = ChildExclusions::ebpf(map.clone());
        let guard = children.exclude(4242).expect("excluded");
        assert_eq!(map.lock().unwrap().get(&4242, 0).ok(), Some(1));
        guard.release();
        assert!(map.lock().unwrap().get(&4242, 0).is_err(), "released");
        drop(children.exclude(4243).expect("excluded"));
        assert!(map.lock().unwrap().get(&4243, 0).is_err(), "dropped");
    }
}
