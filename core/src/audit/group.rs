//! Group commit: many threads append to one audit log and share its syncs.
//!
//! An appender writes its record (one `write` on the `O_APPEND` file, under the lock) and then
//! waits until a sync covers it. Whoever finds no sync running starts one for everything
//! written so far, outside the lock, so records written meanwhile ride on the next sync. One
//! `fdatasync` thus makes a whole batch durable, and `append` still returns only once its own
//! record is on disk: "audit before action" holds for every caller.
//!
//! A failed sync leaves unknown bytes on disk: every record written since the last durable one
//! is cut off, the chain continues from there, and each writer of a cut record gets an error
//! (its action must not happen). Writers of records that were already durable are unaffected.

use super::{AuditError, AuditLog};
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard};

/// How many past failed syncs are remembered to answer late waiters. A waiter more failures
/// behind than this is told its record was lost (fail closed), which it may not have been.
const REMEMBERED_FAILURES: usize = 64;

/// An [`AuditLog`] shared by threads, with group commit.
pub struct SharedAuditLog {
    state: Mutex<State>,
    synced: Condvar,
    /// The same open file as the log's, synced without holding the lock.
    sync_handle: File,
}

struct State {
    log: AuditLog,
    syncing: bool,
    /// Bumped by every failed sync (which cuts the unsynced records off).
    generation: u64,
    /// For recent generations ended by a failed sync: (generation, last durable seq at the cut).
    ended: VecDeque<(u64, u64)>,
    last_failure: String,
    syncs: u64,
}

impl SharedAuditLog {
    pub fn new(log: AuditLog) -> Result<Self, AuditError> {
        Ok(SharedAuditLog {
            sync_handle: log.sync_handle()?,
            state: Mutex::new(State {
                log,
                syncing: false,
                generation: 0,
                ended: VecDeque::new(),
                last_failure: String::new(),
                syncs: 0,
            }),
            synced: Condvar::new(),
        })
    }

    /// Appends one event and returns once it is on disk. Callers fail closed on error.
    pub fn append(&self, event: &str, fields: Map<String, Value>) -> Result<u64, AuditError> {
        let mut state = self.lock();
        let seq = state.log.append_unsynced(event, fields)?;
        let generation = state.generation;
        self.wait_durable(state, seq, generation)?;
        Ok(seq)
    }

    /// Writes a signed checkpoint if one is due (see [`AuditLog::checkpoint_if_due`]).
    pub fn checkpoint_if_due(&self) -> Result<(), AuditError> {
        let state = self.lock();
        if state.log.checkpoint_due() {
            self.checkpoint_locked(state)?;
        }
        Ok(())
    }

    /// Seals the chain as it stands with a signed checkpoint (at shutdown, say).
    pub fn checkpoint(&self) -> Result<(), AuditError> {
        self.checkpoint_locked(self.lock())
    }

    fn checkpoint_locked<'a>(&'a self, mut state: MutexGuard<'a, State>) -> Result<(), AuditError> {
        state.log.write_checkpoint()?;
        let seq = state.log.written().seq;
        let generation = state.generation;
        self.wait_durable(state, seq, generation)
    }

    /// How many syncs the log has run (records per sync = the group-commit factor).
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once record `seq`, written in `generation`, is durable, or an error if a failed
    /// sync cut it off.
    fn wait_durable<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        seq: u64,
        generation: u64,
    ) -> Result<(), AuditError> {
        loop {
            if state.generation != generation {
                let kept = state
                    .ended
                    .iter()
                    .any(|&(g, durable)| g == generation && seq <= durable);
                return if kept {
                    Ok(())
                } else {
                    Err(AuditError::Io {
                        path: state.log.path().to_path_buf(),
                        source: io::Error::other(format!(
                            "sync failed, the record was discarded: {}",
                            state.last_failure
                        )),
                    })
                };
            }
            if state.log.durable_seq() >= seq {
                return Ok(());
            }
            if state.syncing {
                state = self.synced.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // No sync running: this thread syncs everything written so far.
            state.syncing = true;
            let point = state.log.written();
            drop(state);
            let result = self.sync_handle.sync_data();
            state = self.lock();
            state.syncing = false;
            state.syncs += 1;
            match result {
                Ok(()) => state.log.mark_durable(point),
                Err(e) => {
                    let ended = (state.generation, state.log.durable_seq());
                    state.ended.push_back(ended);
                    if state.ended.len() > REMEMBERED_FAILURES {
                        state.ended.pop_front();
                    }
                    state.generation += 1;
                    state.last_failure = e.to_string();
                    state.log.cut_to_durable();
                }
            }
            self.synced.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{verify_chain, CheckpointKey, CheckpointPolicy};
    use crate::audit_fields;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lg-group-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn concurrent_appends_form_one_intact_chain_with_shared_syncs() {
        let dir = temp_dir();
        let path = dir.join("audit.jsonl");
        let key = CheckpointKey::load_or_create(&dir.join("k")).unwrap();
        let public = key.verify_key();
        let policy = CheckpointPolicy {
            every: 50,
            interval: std::time::Duration::from_secs(3600),
        };
        let log = AuditLog::open(&path, "h")
            .unwrap()
            .with_checkpoints(key, policy);
        let shared = Arc::new(SharedAuditLog::new(log).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .map(|i| {
                            shared
                                .append("e", audit_fields!("t" => t, "i" => i))
                                .unwrap()
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), 800, "every append got its own seq");
        // Each append returned only after a sync covered it; there were never more syncs
        // than appends (and usually far fewer: that is the point).
        assert!(shared.sync_count() <= 800 + 16);
        let text = std::fs::read(&path).unwrap();
        let summary = verify_chain(&text[..], &[public]).unwrap();
        assert_eq!(summary.checkpoints, 16);
        assert_eq!(summary.records, 816);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_sync_cuts_the_unsynced_records_and_the_chain_continues() {
        let dir = temp_dir();
        let path = dir.join("audit.jsonl");
        let mut log = AuditLog::open(&path, "h").unwrap();
        log.append("durable", Map::new()).unwrap();
        log.append_unsynced("lost-1", Map::new()).unwrap();
        log.append_unsynced("lost-2", Map::new()).unwrap();
        // What the group does when fdatasync fails:
        log.cut_to_durable();
        assert_eq!(log.append("after", Map::new()).unwrap(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("lost-"), "{text}");
        let summary = verify_chain(text.as_bytes(), &[]).unwrap();
        assert_eq!((summary.records, summary.last_seq), (2, 2));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
