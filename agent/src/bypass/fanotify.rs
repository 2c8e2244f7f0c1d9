//! The fallback when the eBPF program cannot be loaded: fanotify `FAN_OPEN` marks on every
//! protected file and folder (`FAN_EVENT_ON_CHILD`, so files created in a protected folder are
//! covered). fanotify sees opens from every path into the kernel — syscalls, io_uring, 32-bit
//! compat — with the opener's pid, but not the open flags (write-only opens are reported too)
//! nor uid or command: those come from `/proc/<pid>` and are absent when the opener has already
//! exited. Needs `CAP_SYS_ADMIN`.

use super::inventory::{kernel_dev, FileKey, Inventory};
use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

pub struct Fanotify {
    fd: OwnedFd,
    marked: BTreeSet<FileKey>,
}

/// One fanotify open event, its file descriptor already closed.
pub struct FanOpen {
    pub pid: u32,
    pub dev: u32,
    pub ino: u64,
    /// The path of the opened file as the kernel names it (`/proc/self/fd/N`).
    pub path: Option<PathBuf>,
}

pub enum FanEvent {
    Open(FanOpen),
    /// The kernel's event queue overflowed: events were lost.
    Overflow,
}

impl Fanotify {
    pub fn init() -> anyhow::Result<Fanotify> {
        let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;
        let event_flags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32;
        // SAFETY: fanotify_init takes two flag words and returns a new fd or -1.
        let fd = unsafe { libc::fanotify_init(flags, event_flags) };
        if fd < 0 {
            anyhow::bail!("fanotify_init: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Fanotify {
            fd,
            marked: BTreeSet::new(),
        })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Adds a mark on every entry of `inventory` not yet marked. Marks live on inodes and go
    /// away with them, so entries that left the inventory need no removal.
    pub fn sync(&mut self, inventory: &Inventory) -> anyhow::Result<()> {
        let mut first_error = None;
        for (key, kind, path) in inventory.entries() {
            if self.marked.contains(key) {
                continue;
            }
            let mask = match kind {
                super::inventory::Kind::Dir => libc::FAN_OPEN | libc::FAN_EVENT_ON_CHILD,
                super::inventory::Kind::File => libc::FAN_OPEN,
            };
            let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
                continue;
            };
            // SAFETY: the fanotify fd is ours and open; c_path is a valid NUL-terminated
            // string alive for the call.
            let rc = unsafe {
                libc::fanotify_mark(
                    self.fd.as_raw_fd(),
                    libc::FAN_MARK_ADD,
                    mask,
                    libc::AT_FDCWD,
                    c_path.as_ptr(),
                )
            };
            if rc == 0 {
                self.marked.insert(*key);
            } else if first_error.is_none() {
                first_error = Some(format!(
                    "fanotify_mark {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                ));
            }
        }
        self.marked.retain(|k| inventory.contains(k));
        match first_error {
            Some(e) => anyhow::bail!(e),
            None => Ok(()),
        }
    }
}

/// One `read(2)` of the fanotify queue.
pub struct Batch {
    /// The events read, but those left out.
    pub events: Vec<FanEvent>,
    /// The read left room for another event, so it took every event queued when it ran: the
    /// queue was empty right after it (events are metadata only, without info records, so
    /// the kernel stops filling the buffer only when the queue is empty or the buffer full).
    pub emptied: bool,
}

/// The size of one read: room for 682 events.
const READ_BUF: usize = 16 * 1024;

/// Reads what is queued (non-blocking): `WouldBlock` when nothing is; an empty batch when all
/// it read was left out. Opens by a pid `skip` names are left out (the agent's own, and its
/// excluded children's).
pub fn read_events(fd: &OwnedFd, skip: &dyn Fn(u32) -> bool) -> std::io::Result<Batch> {
    let mut buf = vec![0u8; READ_BUF];
    // SAFETY: buf is a writable buffer of buf.len() bytes that outlives the call.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    // Negative: the read failed.
    let Ok(n) = usize::try_from(n) else {
        return Err(std::io::Error::last_os_error());
    };
    // Never seen on a fanotify descriptor; taken as an empty queue so no caller loops on it.
    if n == 0 {
        return Err(std::io::ErrorKind::WouldBlock.into());
    }
    let header = std::mem::size_of::<libc::fanotify_event_metadata>();
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + header <= n {
        // SAFETY: at + header <= n bytes were written by the kernel; the struct is plain
        // integers, valid for any bit pattern; read_unaligned needs no alignment.
        let meta: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
        let len = meta.event_len as usize;
        if len < header || at + len > n {
            break;
        }
        at += len;
        if meta.mask & libc::FAN_Q_OVERFLOW != 0 {
            out.push(FanEvent::Overflow);
        }
        if meta.fd < 0 {
            continue;
        }
        // SAFETY: the kernel installed this fd in our table for this event; we own it now.
        let file = unsafe { OwnedFd::from_raw_fd(meta.fd) };
        // A pid the kernel never gives (negative) is audited as pid 0, not skipped.
        let pid = u32::try_from(meta.pid).unwrap_or(0);
        if skip(pid) {
            continue;
        }
        let link = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let path = std::fs::read_link(&link).ok();
        let Ok(meta) = std::fs::metadata(&link) else {
            continue;
        };
        if meta.is_dir() {
            continue;
        }
        out.push(FanEvent::Open(FanOpen {
            pid,
            dev: kernel_dev(meta.dev()),
            ino: meta.ino(),
            path,
        }));
    }
    Ok(Batch {
        events: out,
        emptied: buf.len().saturating_sub(n) >= header,
    })
}
