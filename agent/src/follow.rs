//! What wakes a `tail --follow` stream idle at the end of its file: the kernel's inotify, not a
//! timer. The stream sleeps until the file it reads changes (an append, a truncation) or a file
//! is created or moved into its path's name (rename-and-create rotation).
//!
//! An event is only a hint to look again: the stream reads from the descriptor it holds, and a
//! replacement file is opened by the gate's own confined open and audited before it is read. So
//! a watch that names another file than ours (the path was swapped for a symlink, say) can cause
//! a needless look, never a read of something the gate did not open. Where inotify is
//! unavailable (no instances left, a filesystem without it), [`FileWatch::new`] returns `None`
//! and the stream falls back to a slow poll ([`crate::stream`]).

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use std::ffi::OsString;
use std::future::poll_fn;
use std::path::Path;
use std::pin::Pin;
use std::task::Poll;
use tokio_stream::Stream;

/// Bytes of inotify events read at a time (each event is 16 bytes and a name).
const EVENT_BUFFER: usize = 4096;

/// What changed since the last wake-up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    /// The file being read was written, truncated, moved or deleted.
    pub file: bool,
    /// A file was created or moved into the followed name: maybe a rotation's new file.
    pub name: bool,
    /// The watch broke (the kernel's queue overflowed, or reading it failed): anything may
    /// have changed; with a broken watch the stream polls instead.
    pub lost: bool,
}

/// An inotify watch on the followed file and on its folder.
pub struct FileWatch {
    events: inotify::EventStream<Vec<u8>>,
    file: Option<WatchDescriptor>,
    folder: WatchDescriptor,
    name: OsString,
    broken: bool,
}

const FILE_EVENTS: WatchMask = WatchMask::MODIFY
    .union(WatchMask::ATTRIB)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::DELETE_SELF);
const FOLDER_EVENTS: WatchMask = WatchMask::CREATE.union(WatchMask::MOVED_TO);

impl FileWatch {
    /// Watches `path` (the file the stream opened) and its folder. Must run inside a tokio
    /// runtime (the watch registers with its reactor). `None` where inotify is unavailable.
    pub fn new(path: &Path) -> Option<FileWatch> {
        let (folder, name) = (path.parent()?, path.file_name()?.to_os_string());
        let inotify = Inotify::init()
            .map_err(|e| tracing::debug!("inotify unavailable, following by polling: {e}"))
            .ok()?;
        let mut watches = inotify.watches();
        let folder = watches.add(folder, FOLDER_EVENTS).ok()?;
        let file = watches.add(path, FILE_EVENTS).ok();
        let events = inotify.into_event_stream(vec![0u8; EVENT_BUFFER]).ok()?;
        Some(FileWatch {
            events,
            file,
            folder,
            name,
            broken: false,
        })
    }

    /// Watches the file that now has the followed path, after a rotation, instead of the old one.
    pub fn rewatch(&mut self, path: &Path) {
        let mut watches = self.events.watches();
        if let Some(old) = self.file.take() {
            // Fails when the old file is gone (its watch went with it): nothing to remove.
            let _ = watches.remove(old);
        }
        self.file = watches.add(path, FILE_EVENTS).ok();
    }

    /// True once the watch cannot be trusted to wake the stream any more.
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Waits for the next change, then takes every event already queued with it (a writer's
    /// burst of appends wakes the stream once, not once per `write`).
    pub async fn changed(&mut self) -> Changes {
        if self.broken {
            return std::future::pending().await;
        }
        let mut changes = Changes::default();
        let mut waited = false;
        poll_fn(|cx| loop {
            match Pin::new(&mut self.events).poll_next(cx) {
                Poll::Ready(Some(Ok(event))) => {
                    waited = true;
                    if event.mask.contains(EventMask::Q_OVERFLOW) {
                        changes.lost = true;
                    } else if event.wd == self.folder {
                        changes.name |= event.name.as_deref() == Some(self.name.as_os_str());
                    } else {
                        changes.file = true;
                    }
                }
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                    self.broken = true;
                    changes.lost = true;
                    return Poll::Ready(());
                }
                Poll::Pending if waited => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        })
        .await;
        changes
    }
}
