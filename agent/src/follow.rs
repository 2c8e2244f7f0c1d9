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

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use std::ffi::OsString;
use std::fs::File;
use std::future::poll_fn;
use std::os::fd::AsRawFd;
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
    /// The file being read was moved or deleted (`IN_MOVE_SELF`, `IN_DELETE_SELF`): its path
    /// may already name another file, so look for it at once (`tail -F`).
    pub moved: bool,
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

/// A watch on the inode `file` holds: added through `/proc/self/fd/N`, which the kernel
/// resolves to the open file itself, whatever its path names now. `None` when that fails
/// (no `/proc`): the stream still wakes on its folder's events and its slow look.
fn watch_held(watches: &mut Watches, file: &File) -> Option<WatchDescriptor> {
    let by_descriptor = format!("/proc/self/fd/{}", file.as_raw_fd());
    watches
        .add(&by_descriptor, FILE_EVENTS)
        .map_err(|e| tracing::debug!("cannot watch the followed file by its descriptor: {e}"))
        .ok()
}

impl FileWatch {
    /// Watches `file` (the one the stream opened and reads, by its descriptor) and the folder
    /// of `path`, the name it was opened at. Must run inside a tokio runtime (the watch
    /// registers with its reactor). `None` where inotify is unavailable.
    ///
    /// By descriptor, not by path: between the gate's open and this watch the path may have
    /// been renamed away and replaced (a rotation), and a watch placed by path would then
    /// follow the new file while the stream reads the old one, never woken by its appends.
    pub fn new(file: &File, path: &Path) -> Option<FileWatch> {
        let (folder, name) = (path.parent()?, path.file_name()?.to_os_string());
        let inotify = Inotify::init()
            .map_err(|e| tracing::debug!("inotify unavailable, following by polling: {e}"))
            .ok()?;
        let mut watches = inotify.watches();
        let folder = watches.add(folder, FOLDER_EVENTS).ok()?;
        let file = watch_held(&mut watches, file);
        let events = inotify.into_event_stream(vec![0u8; EVENT_BUFFER]).ok()?;
        Some(FileWatch {
            events,
            file,
            folder,
            name,
            broken: false,
        })
    }

    /// Watches `file`, the one that replaced the old file after a rotation and is read now,
    /// instead of the old one.
    pub fn rewatch(&mut self, file: &File) {
        let mut watches = self.events.watches();
        if let Some(old) = self.file.take() {
            // Fails when the old file is gone (its watch went with it): nothing to remove.
            let _ = watches.remove(old);
        }
        self.file = watch_held(&mut watches, file);
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
                        changes.moved |= event
                            .mask
                            .intersects(EventMask::MOVE_SELF | EventMask::DELETE_SELF);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .expect("open for append");
        f.write_all(text.as_bytes()).expect("append");
    }

    /// Issue #15 review: the watch was placed by path after the gate's open. When the path
    /// was renamed away and replaced in between (logrotate's rename + create), the watch
    /// followed the new file while the stream read the old one, and appends to the old one
    /// (its writer not yet reopened) woke nothing.
    #[tokio::test]
    async fn the_watch_follows_the_file_held_not_what_its_path_names_now() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.log");
        std::fs::write(&path, "first\n").expect("write");
        let held = File::open(&path).expect("open");
        let rotated = dir.path().join("app.log.1");
        std::fs::rename(&path, &rotated).expect("rename");
        std::fs::write(&path, "new file\n").expect("create");
        let mut watch = FileWatch::new(&held, &path).expect("inotify works here");
        append(&rotated, "second, to the held file\n");
        let changes = tokio::time::timeout(Duration::from_secs(2), watch.changed())
            .await
            .expect("woken by an append to the file it reads");
        assert!(changes.file, "{changes:?}");
    }

    /// A rename of the file being read says so at once (`moved`), so that the stream looks for
    /// the file that takes its name without waiting for its slow look.
    #[tokio::test]
    async fn a_rename_of_the_followed_file_is_reported_as_moved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.log");
        std::fs::write(&path, "first\n").expect("write");
        let held = File::open(&path).expect("open");
        let mut watch = FileWatch::new(&held, &path).expect("inotify works here");
        std::fs::rename(&path, dir.path().join("app.log.1")).expect("rename");
        let changes = tokio::time::timeout(Duration::from_secs(2), watch.changed())
            .await
            .expect("woken by the rename");
        assert!(changes.moved, "{changes:?}");
    }
}
