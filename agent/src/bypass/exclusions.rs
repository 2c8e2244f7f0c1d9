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
//! - **eBPF:** the kernel's `excluded_tgids` map, checked at each open: pid → the process's
//!   start time ([`start_ticks`], read while the child waits before `exec`), which the program
//!   compares with the opener's, so an entry hides only the process it was made for. Pinned
//!   maps outlive the agent: at a stop every pid is removed from it (see `ProtectedMaps`'s
//!   `Drop`), and an agent that adopts pins clears what the previous agent left (a
//!   `SIGKILL`ed agent's children die with it: `PR_SET_PDEATHSIG`); until then, the entries
//!   of a `SIGKILL`ed agent and its children hide no process given one of their pids.
//! - **fanotify:** a filter in user space, and its events are read after the fact: a release
//!   asks the reader for a `read(2)` that starts after the child's end and takes all that is
//!   queued (finds the queue empty, or leaves room in its buffer: every event of the child's
//!   has then been filtered, even under a steady flood of other opens), waits for it (at most
//!   [`DRAIN_WAIT`]), and only then reports the pid again. When the reader does not answer in
//!   time the entry is kept as a tombstone with the time of the release: an event is hidden
//!   only when the read that returned it started before the release (it happened while the
//!   child lived); later reads report that pid again (the child's own late events are then
//!   over-reported). The reader asks once per `read(2)` ([`ChildExclusions::read_filter`]):
//!   the first event of a batch takes the lock, forgets the tombstones no event of this or a
//!   later read can match, and keeps the few pids it hides; every other event of the batch is
//!   a look-up in that list. A pid that an earlier process held, with an open of that process still
//!   queued when the child was given the pid, would be hidden: the queue is read as it fills,
//!   so that needs a pid reused within that moment.

use aya::maps::{HashMap as BpfHashMap, MapData};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The kernel's `excluded_tgids` map, shared by the protected maps (the agent's own pid) and
/// [`ChildExclusions`]: tgid → the start time of the process holding it (see [`start_ticks`]).
pub type ExcludedMap = Arc<Mutex<BpfHashMap<MapData, u32, u64>>>;

/// When process `pid` started, in clock ticks since boot: field 22 of `/proc/<pid>/stat`,
/// the value `excluded_tgids` holds. The BPF program compares it with the opener's own start
/// time, so an entry hides only the process it was made for, never a later one given its pid
/// (an entry left behind by a `SIGKILL`ed agent, or one whose removal failed). Fails where
/// clock ticks are not 1/100 s (the program's scale) or `/proc` cannot say: nothing is then
/// excluded, and the process's opens are reported.
pub fn start_ticks(pid: u32) -> anyhow::Result<u64> {
    // SAFETY: sysconf(3) takes a name and returns a value; it touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz != 100 {
        anyhow::bail!("clock ticks are 1/{hz} s here, and the BPF program counts in 1/100 s");
    }
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("reading {path} for the process's start time: {e}"))?;
    parse_start_ticks(&stat)
        .ok_or_else(|| anyhow::anyhow!("{path} has no start time in field 22: {stat:?}"))
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line. The command (field 2) is in
/// parentheses and may hold spaces and parentheses itself: fields are counted after the last
/// `)`, where field 3 begins.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()
}

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
    /// The latest read that took all that was queued, and the releases waiting for one.
    drained: Mutex<Drained>,
    /// Notified when `drained` moves on, only while a release waits on it.
    drained_changed: Condvar,
    /// A release asking the reader for such a read.
    drain: Notify,
    /// What the process was at each step, for the tests of the order the caller keeps.
    #[cfg(test)]
    seen: Mutex<Vec<Seen>>,
    /// How often the children map was looked at for a read's events (tests only).
    #[cfg(test)]
    snapshots: std::sync::atomic::AtomicUsize,
    /// How often `drained_changed` was notified (tests only).
    #[cfg(test)]
    notified: std::sync::atomic::AtomicUsize,
}

/// What the fanotify reader last said about the queue, under one lock with who waits for it.
#[derive(Default)]
struct Drained {
    /// When the latest `read(2)` that took all that was queued started: every event queued
    /// before then has been filtered.
    at: Option<Instant>,
    /// Releases waiting in [`FanotifyFilter::wait_drained`]: the reader wakes them only when
    /// there are any (a read that empties the queue is the common case, a release is rare).
    waiting: usize,
}

/// A process as the fanotify filter saw it (tests only): when excluded, what it runs
/// (`/proc/<pid>/exe`); when released, its state (field 3 of `/proc/<pid>/stat`).
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Excluded while running this executable.
    Excluded(u32, Option<std::path::PathBuf>),
    /// Released in this state (`Z`: exited, not reaped).
    Released(u32, Option<String>),
}

impl FanotifyFilter {
    /// Waits (at most [`DRAIN_WAIT`]) until a read that started at or after `after` found the
    /// queue empty or left room in its buffer (it took all that was queued); whether one did.
    fn wait_drained(&self, after: Instant) -> bool {
        let mut drained = self.drained.lock().unwrap_or_else(|p| p.into_inner());
        // Counted before the reader is asked, under the lock the reader takes to say it
        // drained: its answer cannot pass unnoticed.
        drained.waiting += 1;
        self.drain.notify_one();
        let (mut drained, timeout) = self
            .drained_changed
            .wait_timeout_while(drained, DRAIN_WAIT, |d| d.at.is_none_or(|at| at < after))
            .unwrap_or_else(|p| p.into_inner());
        drained.waiting = drained.waiting.saturating_sub(1);
        !timeout.timed_out()
    }

    /// The pids a read that started at `read_started` hides (see [`ReadFilter`]), sorted;
    /// forgets the tombstones released before it, which neither it nor a later read can
    /// match.
    fn hidden_in_read(&self, read_started: Instant) -> Vec<u32> {
        #[cfg(test)]
        self.snapshots
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        children.retain(|_, released| released.is_none_or(|at| at >= read_started));
        // What is left is hidden: excluded now, or released after the read started.
        let mut hidden: Vec<u32> = children.keys().copied().collect();
        hidden.sort_unstable();
        hidden
    }
}

/// The fanotify filter for the events of one `read(2)` of the queue, which started at a
/// given time: an open by a pid is hidden when that pid is excluded, or was released after
/// the read started (see the module's contract). The children map is looked at once, at the
/// first event asked about (after the read returned, so every exclusion made before one of
/// its events was queued is seen); the batch's other events cost a search of a short sorted
/// list and take no lock. A filter serves one read: a later read asks for its own.
pub(super) struct ReadFilter<'a> {
    filter: Option<&'a FanotifyFilter>,
    read_started: Instant,
    hidden: OnceCell<Vec<u32>>,
}

impl ReadFilter<'_> {
    /// Whether the reader leaves out an open by `pid` returned by this read. Always `false`
    /// for the mechanisms other than fanotify (the kernel filters).
    pub(super) fn hides(&self, pid: u32) -> bool {
        let Some(filter) = self.filter else {
            return false;
        };
        self.hidden
            .get_or_init(|| filter.hidden_in_read(self.read_started))
            .binary_search(&pid)
            .is_ok()
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
            #[cfg(test)]
            seen: Mutex::new(Vec::new()),
            #[cfg(test)]
            snapshots: std::sync::atomic::AtomicUsize::new(0),
            #[cfg(test)]
            notified: std::sync::atomic::AtomicUsize::new(0),
            drained: Mutex::new(Drained::default()),
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
            Mechanism::Ebpf(map) => {
                let started = start_ticks(pid)?;
                map.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(pid, started, 0)
                    .map_err(|e| {
                        anyhow::anyhow!("adding pid {pid} to the kernel's excluded_tgids map: {e}")
                    })?
            }
            Mechanism::Fanotify(filter) => {
                #[cfg(test)]
                filter.seen.lock().unwrap().push(Seen::Excluded(
                    pid,
                    std::fs::read_link(format!("/proc/{pid}/exe")).ok(),
                ));
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

    /// What the fanotify filter saw of each process it excluded and released, in order.
    #[cfg(test)]
    pub fn seen(&self) -> Vec<Seen> {
        match &*self.0 {
            Mechanism::Fanotify(filter) => filter.seen.lock().unwrap().clone(),
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

    /// The filter of the opens returned by a `read(2)` of the fanotify queue that started at
    /// `read_started` (see [`ReadFilter`]): ask for one per read, before it.
    pub(super) fn read_filter(&self, read_started: Instant) -> ReadFilter<'_> {
        ReadFilter {
            filter: match &*self.0 {
                Mechanism::Fanotify(filter) => Some(filter),
                Mechanism::Off | Mechanism::Ebpf(_) => None,
            },
            read_started,
            hidden: OnceCell::new(),
        }
    }

    /// Whether a read that started at `read_started` hides an open by `pid` (a filter of its
    /// own per question: the tests ask about one pid at a time).
    #[cfg(test)]
    fn hides(&self, pid: u32, read_started: Instant) -> bool {
        self.read_filter(read_started).hides(pid)
    }

    /// How often the fanotify filter looked at its children map for a read's events.
    #[cfg(test)]
    fn snapshots(&self) -> usize {
        match &*self.0 {
            Mechanism::Fanotify(filter) => {
                filter.snapshots.load(std::sync::atomic::Ordering::Relaxed)
            }
            _ => 0,
        }
    }

    /// How often the fanotify filter woke the releases waiting for the reader.
    #[cfg(test)]
    fn notified(&self) -> usize {
        match &*self.0 {
            Mechanism::Fanotify(filter) => {
                filter.notified.load(std::sync::atomic::Ordering::Relaxed)
            }
            _ => 0,
        }
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
    /// its buffer) with a read that started at `read_started`. Wakes the releases waiting
    /// for such a read, if any: most reads have none to wake.
    pub(crate) fn drained(&self, read_started: Instant) {
        if let Mechanism::Fanotify(filter) = &*self.0 {
            let mut drained = filter.drained.lock().unwrap_or_else(|p| p.into_inner());
            if drained.at.is_none_or(|at| at < read_started) {
                drained.at = Some(read_started);
            }
            if drained.waiting > 0 {
                #[cfg(test)]
                filter
                    .notified
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                filter.drained_changed.notify_all();
            }
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
                        tracing::warn!(
                            "bypass audit: pid {pid} (an ended journalctl) could not be removed from the kernel's excluded_tgids map; it hides no other process (the entry holds the ended one's start time) and the next agent start clears it: {e}"
                        );
                    }
                }
            }
            Some(Mechanism::Fanotify(filter)) => {
                #[cfg(test)]
                filter.seen.lock().unwrap().push(Seen::Released(
                    pid,
                    std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .ok()
                        .and_then(|stat| {
                            let (_, rest) = stat.rsplit_once(')')?;
                            rest.split_ascii_whitespace().next().map(str::to_string)
                        }),
                ));
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

    /// The reader's per-event check is cheap: one look at the children map per read, however
    /// many events it returned, with the same answers as before (excluded: hidden; released
    /// after the read started: hidden; released before it: reported, and forgotten).
    #[test]
    fn a_read_looks_at_the_children_once_however_many_events_it_returned() {
        let children = ChildExclusions::fanotify();
        let excluded = children.exclude(100).expect("excluded");
        let read_started = Instant::now();
        let released = children.exclude(200).expect("excluded");
        released.release_reaped();
        let filter = children.read_filter(read_started);
        for round in 0..1000u32 {
            assert!(filter.hides(100), "excluded, event {round}");
            assert!(filter.hides(200), "released after the read started");
            assert!(!filter.hides(300 + round), "never excluded");
        }
        assert_eq!(children.snapshots(), 1, "one look for the whole read");
        // A later read: the tombstone no longer matches, and is forgotten.
        let later = children.read_filter(Instant::now());
        assert!(later.hides(100));
        assert!(!later.hides(200));
        assert_eq!(children.snapshots(), 2);
        assert_eq!(children.tracked(), vec![(100, false)]);
        // A read that returned nothing asked nothing.
        drop(children.read_filter(Instant::now()));
        assert_eq!(children.snapshots(), 2);
        // The other mechanisms hide nothing in user space.
        assert!(!ChildExclusions::off().read_filter(read_started).hides(100));
        drop(excluded);
    }

    /// The reader's reads that empty the queue wake nobody while no release waits (the
    /// common case), and do wake a waiting release at once.
    #[test]
    fn a_drained_queue_wakes_releases_only_when_one_waits() {
        let children = ChildExclusions::fanotify();
        for _ in 0..100 {
            children.drained(Instant::now());
        }
        assert_eq!(children.notified(), 0, "nobody waited: nobody woken");
        let guard = children.exclude(12).expect("excluded");
        let reader = {
            let children = children.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    std::thread::sleep(Duration::from_millis(10));
                    children.drained(Instant::now());
                    if children.notified() > 0 {
                        break;
                    }
                }
            })
        };
        let asked = Instant::now();
        guard.release();
        assert!(
            asked.elapsed() < DRAIN_WAIT,
            "the waiting release was woken"
        );
        reader.join().expect("reader");
        let woken = children.notified();
        assert!(woken >= 1, "woken {woken} times");
        for _ in 0..100 {
            children.drained(Instant::now());
        }
        assert_eq!(children.notified(), woken, "nobody waits any more");
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

    #[test]
    fn the_start_time_is_field_22_counted_after_the_command() {
        let stat = "4242 (a) (b c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 \
                    1000 10 18446744073709551615";
        assert_eq!(parse_start_ticks(stat), Some(98765));
        assert_eq!(parse_start_ticks("4242 (cut) S 1 2"), None);
        assert_eq!(parse_start_ticks("no parenthesis"), None);
        let me = start_ticks(std::process::id()).expect("our own start time");
        assert!(me > 0);
    }

    /// A child waiting on its standard input, then reading `file` (`cat`, same pid).
    fn waiting_reader(file: &std::path::Path) -> std::process::Child {
        std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("read x; exec cat \"$0\"")
            .arg(file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("sh")
    }

    fn let_read(mut child: std::process::Child) {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("write");
        drop(stdin);
        assert!(child.wait().expect("wait").success());
    }

    /// The kernel program hides an excluded pid only while it is held by the process the
    /// entry was made for: an entry with another start time (one left behind by a
    /// `SIGKILL`ed agent, whose pid a new process now has) hides nothing. Needs root (loads
    /// and attaches the agent's programs): run with `--include-ignored` as root, as CI does.
    #[test]
    #[ignore = "needs root"]
    fn an_excluded_pid_hides_only_the_process_that_started_when_the_entry_says() {
        use super::super::inventory::Inventory;
        use super::super::loader::{Hooks, Objects, Probe};
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("protected.log");
        std::fs::write(&file, "x").expect("write");
        let mut probe = Probe::load(Objects::Agent { kfuncs: true }, Hooks::Tracepoint)
            .expect("loading the programs needs root");
        let (mut maps, mut outputs) = probe.split(None).expect("maps");
        maps.sync(&Inventory::scan(&[dir.path().to_path_buf()], 100))
            .expect("protected");
        let map = maps.excluded();
        let children = ChildExclusions::ebpf(map.clone());
        let mut reported = |pid: u32| {
            let mut seen = false;
            while let Some(item) = outputs.events.next() {
                let event = super::super::event::RawEvent::parse_exact(&item).expect("event");
                seen |= event.tgid == pid;
            }
            seen
        };

        // A stale entry: this pid, but another process's start time.
        let stale = waiting_reader(&file);
        let pid = stale.id();
        let started = start_ticks(pid).expect("start time");
        map.lock()
            .unwrap()
            .insert(pid, started + 1, 0)
            .expect("inserted");
        let_read(stale);
        assert!(reported(pid), "a stale entry hid the read of pid {pid}");
        let _ = map.lock().unwrap().remove(&pid);

        // The entry made for the process itself hides it.
        let child = waiting_reader(&file);
        let pid = child.id();
        let guard = children.exclude(pid).expect("excluded");
        let_read(child);
        drop(guard);
        assert!(!reported(pid), "the excluded child's read was reported");
        drop(maps);
    }

    #[test]
    fn the_kernel_map_has_room_for_the_agent_and_a_journalctl_per_stream() {
        let object = aya_obj::Object::parse(loggate_agent_ebpf::object()).expect("object");
        let map = object
            .maps
            .get(loggate_agent_ebpf::names::EXCLUDED_TGIDS)
            .expect("excluded_tgids");
        let needed = super::super::loader::EXCLUDED_TGIDS_NEEDED;
        assert!(usize::try_from(map.max_entries()).unwrap() >= needed);
        assert!(needed > crate::config::MAX_STREAMS_CEILING);
    }

    /// Needs root (a real BPF map): run with `--include-ignored` as root, as CI does.
    #[test]
    #[ignore = "needs root"]
    fn ebpf_exclusion_is_in_the_kernel_map_until_released() {
        let map: BpfHashMap<MapData, u32, u64> =
            BpfHashMap::create(16, 0).expect("creating a BPF hash map needs root");
        let map: ExcludedMap = Arc::new(Mutex::new(map));
        let children = ChildExclusions::ebpf(map.clone());
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        let guard = children.exclude(pid).expect("excluded");
        assert_eq!(
            map.lock().unwrap().get(&pid, 0).ok(),
            Some(start_ticks(pid).expect("start time")),
            "keyed by pid, with its start time"
        );
        assert!(children.is_excluded(pid));
        guard.release();
        assert!(map.lock().unwrap().get(&pid, 0).is_err(), "released");
        assert!(!children.is_excluded(pid));
        drop(children.exclude(pid).expect("excluded"));
        assert!(map.lock().unwrap().get(&pid, 0).is_err(), "dropped");
        let _ = child.kill();
        let _ = child.wait();
    }
}
