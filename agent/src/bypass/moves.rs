//! Who moved a protected file out of the roots. The kernel program reports every rename or link
//! of a protected inode at the moment it happens, with the mover's process and the new name as
//! the mover gave it (`report_move` in logaudit.bpf.c), but it cannot tell whether that name is
//! beneath the roots: the agent's rescan can. So the moves are kept here for a short while, a
//! move wakes the rescan at once, and when the rescan finds a file gone from the roots
//! (`inventory::Left`) its departure record names the move that took it there: the latest move
//! of that inode whose new name ends in the name the file has now, else the latest io_uring
//! move of it (io_uring's requests carry no name here). A move within the roots (logrotate's
//! `api.log` → `api.log.1`) is kept until it ages out and never written: nothing left.
//!
//! Bounded: at most `MAX_MOVES` moves are kept (the oldest are dropped first; a flood of renames
//! can then push out the move that mattered, and the record says the mover is unknown). A rename
//! is kept for `KEEP` after it was read: its departure, if any, is found by the rescan it wakes.
//! A link is kept for as long as its inode is protected: the file leaves the roots only when its
//! protected name is removed, which may be days later (a rotation deleting old logs), and the
//! record must still name who made the name outside.

use super::inventory::FileKey;
use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

/// Moves kept at most.
const MAX_MOVES: usize = 4096;
/// How long a rename is kept: several rescans after it (a rescan follows a move within
/// `MOVE_RESCAN_GAP`, and the default interval is 2 s).
pub const KEEP: Duration = Duration::from_secs(30);

/// One rename or link of a protected inode, as the kernel saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub key: FileKey,
    /// `rename`, `link`, `rename_ia32`, `link_ia32` or `io_uring`.
    pub hook: &'static str,
    /// The new name as the mover gave it; empty for io_uring.
    pub name: String,
    pub pid: u32,
    pub uid: u32,
    pub user: Option<String>,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    /// When the agent read it.
    pub at: Instant,
}

/// The recent moves of protected inodes.
#[derive(Default, Debug)]
pub struct Moves {
    recent: VecDeque<Move>,
}

impl Moves {
    /// Keeps `m`, dropping the oldest beyond `MAX_MOVES`.
    pub fn record(&mut self, m: Move) {
        if self.recent.len() == MAX_MOVES {
            self.recent.pop_front();
        }
        self.recent.push_back(m);
    }

    /// Forgets the renames read before `now - KEEP`, and the links of inodes no longer
    /// `protected`.
    pub fn prune(&mut self, now: Instant, protected: impl Fn(&FileKey) -> bool) {
        self.recent.retain(|m| {
            if m.hook.starts_with("link") {
                protected(&m.key)
            } else {
                now.duration_since(m.at) <= KEEP
            }
        });
    }

    /// The move that took `key` to `now_at` (one of its names now): the latest of its moves
    /// whose new name's last component is `now_at`'s, else (or when `now_at` is unknown) its
    /// latest io_uring move, else `None`. A rename or link to another name (a rotation within
    /// the roots before the move out) is never taken for the mover.
    pub fn mover_of(&self, key: &FileKey, now_at: Option<&Path>) -> Option<&Move> {
        let of_key = || self.recent.iter().rev().filter(move |m| m.key == *key);
        let named = now_at.and_then(|p| p.file_name()).and_then(|base| {
            of_key().find(|m| !m.name.is_empty() && Path::new(&m.name).file_name() == Some(base))
        });
        named.or_else(|| of_key().find(|m| m.hook == "io_uring"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(key: FileKey, hook: &'static str, name: &str, pid: u32, at: Instant) -> Move {
        Move {
            key,
            hook,
            name: name.to_string(),
            pid,
            uid: 0,
            user: None,
            comm: "mv".into(),
            exe: None,
            cmdline: None,
            at,
        }
    }

    #[test]
    fn the_mover_is_the_move_to_the_files_current_name_not_an_earlier_rotation() {
        let key = FileKey::new(1, 42);
        let other = FileKey::new(1, 43);
        let t = Instant::now();
        let mut moves = Moves::default();
        moves.record(mv(key, "rename", "/logs/app.log.1", 10, t));
        moves.record(mv(key, "rename", "../outside/stolen.log", 11, t));
        moves.record(mv(other, "rename", "/x/stolen.log", 12, t));
        let now = Path::new("/w/outside/stolen.log");
        assert_eq!(moves.mover_of(&key, Some(now)).map(|m| m.pid), Some(11));
        // A name that no move gave: unknown, not the rotation.
        assert_eq!(moves.mover_of(&key, Some(Path::new("/w/else.log"))), None);
        assert_eq!(moves.mover_of(&key, None), None);
        // io_uring moves carry no name: the latest of them stands in.
        moves.record(mv(key, "io_uring", "", 13, t));
        assert_eq!(
            moves
                .mover_of(&key, Some(Path::new("/w/else.log")))
                .map(|m| m.pid),
            Some(13)
        );
    }

    #[test]
    fn moves_are_bounded_in_number_and_age() {
        let t = Instant::now();
        let mut moves = Moves::default();
        for i in 0..MAX_MOVES + 10 {
            let i = u32::try_from(i).expect("a few thousand fit a u32");
            moves.record(mv(FileKey::new(1, u64::from(i)), "link", "a", i, t));
        }
        assert_eq!(moves.recent.len(), MAX_MOVES);
        assert_eq!(moves.recent.front().map(|m| m.pid), Some(10));
        // Links stay while their inode is protected; renames only for KEEP.
        let mut moves = Moves::default();
        moves.record(mv(FileKey::new(1, 1), "rename", "a", 1, t));
        moves.record(mv(FileKey::new(1, 2), "link", "b", 2, t));
        moves.record(mv(FileKey::new(1, 3), "link_ia32", "c", 3, t));
        let later = t + KEEP + Duration::from_secs(3600);
        moves.prune(later, |k| k.ino != 3);
        let left: Vec<u32> = moves.recent.iter().map(|m| m.pid).collect();
        assert_eq!(left, vec![2]);
        moves.prune(later, |_| false);
        assert!(moves.recent.is_empty());
    }
}
