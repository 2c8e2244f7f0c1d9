//! Repeated opens, counted in the kernel instead of queued one by one (eBPF modes).
//!
//! The kernel program reports the first open of a file by a process at once (`bypass.read`)
//! and counts its repeats within a second of each other in the map `seen` (logaudit.bpf.c,
//! `counted_as_repeat`). Every second the agent reads the counts and writes what grew as one
//! `bypass.read_repeated` per (process, file), so a burst of any size costs a bounded number of
//! records and none of its opens goes uncounted. Entries idle for `STALE_NS` are deleted with
//! the kernel's atomic lookup-and-delete, whose returned count is still flushed; an open after
//! that (or after a second's pause) is reported afresh by the kernel.

use aya::maps::{HashMap, IterableMap, MapData};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};

/// Key of the kernel map `seen` (`struct seen_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeenKey {
    pub ino: u64,
    pub dev: u32,
    pub tgid: u32,
}

// SAFETY: repr(C), integers only, no implicit padding (8 + 4 + 4 bytes): valid for every bit
// pattern, no uninitialised bytes.
unsafe impl aya::Pod for SeenKey {}

/// Value of the kernel map `seen` (`struct seen_val`): monotonic-clock times (the kernel's
/// `bpf_ktime_get_ns`) and the repeats counted since the entry was made.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeenVal {
    pub first_ns: u64,
    pub last_ns: u64,
    pub count: u64,
}

// SAFETY: repr(C), three u64: valid for every bit pattern, no padding.
unsafe impl aya::Pod for SeenVal {}

/// An entry whose last open is older than this, with nothing left to flush, is deleted (the
/// kernel counts a repeat only within a second of the open before, so by then no program
/// still counts into it).
const STALE_NS: u64 = 3_000_000_000;

/// What the `bypass.read` of a (process, file) said, repeated in its repeats' records.
#[derive(Clone, Debug, Default)]
pub struct FirstRead {
    pub read_seq: Option<u64>,
    pub uid: Option<u32>,
    pub comm: Option<String>,
    pub path: Option<String>,
    pub opened_name: String,
    pub expected: bool,
}

#[derive(Default)]
struct Tracked {
    /// The kernel's count already written.
    flushed: u64,
    /// Monotonic ns of the open reported or counted just before the next repeats.
    mark_ns: Option<u64>,
    first: Option<FirstRead>,
}

/// Repeats to write as one `bypass.read_repeated`.
#[derive(Debug)]
pub struct Flushed {
    pub key: SeenKey,
    pub repeats: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub first: Option<FirstRead>,
}

/// The agent's side of `seen`: how much of each count has been written.
#[derive(Default)]
pub struct Repeats {
    tracked: BTreeMap<SeenKey, Tracked>,
}

impl Repeats {
    /// Remembers the `bypass.read` just written for `key` (a first open, or one after a pause).
    pub fn reported(&mut self, key: SeenKey, first: FirstRead) {
        let t = self.tracked.entry(key).or_default();
        t.first = Some(first);
    }

    /// The repeats counted since the last flush, and deletes the entries gone stale; `now_ns`
    /// on the kernel's clock (CLOCK_MONOTONIC).
    pub fn flush(
        &mut self,
        seen: &mut HashMap<MapData, SeenKey, SeenVal>,
        now_ns: u64,
    ) -> anyhow::Result<Vec<Flushed>> {
        let entries: Vec<(SeenKey, SeenVal)> = seen.iter().filter_map(Result::ok).collect();
        let present: std::collections::BTreeSet<SeenKey> =
            entries.iter().map(|(k, _)| *k).collect();
        let mut out = Vec::new();
        for (key, val) in entries {
            let idle = now_ns.saturating_sub(val.last_ns) > STALE_NS;
            let t = self.tracked.entry(key).or_default();
            let val = if val.count == t.flushed && idle {
                // Nothing left to write and no program counting: take it out atomically, and
                // write what was counted into it meanwhile, if anything.
                match lookup_and_delete(IterableMap::map(seen), &key)? {
                    Some(last) => last,
                    None => val,
                }
            } else {
                val
            };
            let t = self.tracked.entry(key).or_default();
            if val.count > t.flushed {
                out.push(Flushed {
                    key,
                    repeats: val.count - t.flushed,
                    first_ns: t.mark_ns.unwrap_or(val.first_ns),
                    last_ns: val.last_ns,
                    first: t.first.clone(),
                });
                t.flushed = val.count;
                t.mark_ns = Some(val.last_ns);
            }
            if val.count == t.flushed && idle {
                self.tracked.remove(&key);
            }
        }
        // Forget keys the kernel does not hold (deleted above, or never made: `seen` was full).
        self.tracked.retain(|k, _| present.contains(k));
        Ok(out)
    }
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (hash maps, Linux 5.14+): the value at the moment of
/// deletion, `None` when the key was already gone. aya 0.14 does not expose it for hash maps.
fn lookup_and_delete(map: &MapData, key: &SeenKey) -> anyhow::Result<Option<SeenVal>> {
    /// The command's part of `union bpf_attr` (map_fd, key, value, flags).
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let mut value = SeenVal::default();
    let attr = ElemAttr {
        map_fd: u32::try_from(map.fd().as_fd().as_raw_fd())?,
        pad: 0,
        key: key as *const SeenKey as u64,
        value: &mut value as *mut SeenVal as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a valid prefix of `union bpf_attr` for this command (the kernel zero-
    // fills the rest of a shorter attribute); `key` and `value` point at live values of exactly
    // the map's key and value sizes (checked by aya when the map was typed), and outlive the
    // call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc == 0 {
        return Ok(Some(value));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOENT) {
        return Ok(None);
    }
    Err(anyhow::Error::new(e).context("deleting an idle entry of the bypass map `seen`"))
}

/// Now on CLOCK_MONOTONIC, the clock of the kernel's `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // The monotonic clock is never negative.
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Now in Unix ms.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Unix ms of a monotonic time `t_ns`, given both clocks now.
pub fn unix_ms(t_ns: u64, now_ns: u64, now_unix_ms: i64) -> i64 {
    let ago_ms = now_ns.saturating_sub(t_ns) / 1_000_000;
    now_unix_ms.saturating_sub(i64::try_from(ago_ms).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monotonic_time_is_placed_before_now_by_its_age() {
        assert_eq!(unix_ms(9_000_000_000, 10_000_000_000, 1_000_000), 999_000);
        // A time "after now" (clocks read in another order) is now, never later.
        assert_eq!(
            unix_ms(11_000_000_000, 10_000_000_000, 1_000_000),
            1_000_000
        );
    }
}
