//! Group commit: many threads append to one audit log and share its syncs.
//!
//! An appender writes its record (one `write` on the `O_APPEND` file, under the lock). A
//! flusher thread syncs whenever records are waiting, outside the lock, so records written
//! during a sync ride on the next one: one `fdatasync` makes a whole batch durable.
//! [`SharedAuditLog::append`] returns only once its own record is on disk ("audit before
//! action" holds for every caller); [`SharedAuditLog::append_deferred`] returns once the record
//! is written, for observations that gate nothing (eBPF bypass events), and the flusher makes it
//! durable within one sync.
//!
//! A failed sync leaves unknown bytes on disk: every record written since the last durable one
//! is cut off, the chain continues from there, and each waiting writer of a cut record gets an
//! error (its action must not happen). Writers of records that were already durable are
//! unaffected.

use super::{AuditError, AuditEvent, AuditLog, Encoded, RotationPolicy};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The seq of the last record known to be on disk, for readers of the file that pass records
/// on (the SIEM sinks, the checkpoint sender): they take nothing past it, since a failed sync
/// may still cut it off and write a different record with the same seq.
#[derive(Debug, Clone)]
pub struct DurableSeq(Arc<AtomicU64>);

impl DurableSeq {
    /// The seq of the last durable record now (0 before any).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// A fixed value: for a reader of a file nobody writes any more (and for tests).
    pub fn fixed(seq: u64) -> Self {
        DurableSeq(Arc::new(AtomicU64::new(seq)))
    }
}

/// An [`AuditLog`] shared by threads, with group commit.
pub struct SharedAuditLog {
    inner: Arc<Inner>,
    /// The audit file's path (for errors).
    path: PathBuf,
    flusher: Option<std::thread::JoinHandle<()>>,
}

struct Inner {
    state: Mutex<State>,
    /// Signalled when records are written (wakes the flusher) and when a sync ends (wakes the
    /// waiting writers).
    changed: Condvar,
    durable: DurableSeq,
}

struct State {
    /// The log; its generation ([`AuditLog::generation`]) changes with every cut of
    /// unsynced records, by the flusher or by a sync of the log's own (rotation, retention).
    log: AuditLog,
    syncs: u64,
    closing: bool,
    /// Tests: the flusher starts no sync while set, so a test can make something else (a
    /// rotation) the one that makes a waiting writer's record durable.
    #[cfg(test)]
    flusher_paused: bool,
}

impl SharedAuditLog {
    /// Shares `log` and starts its flusher thread; an error when the thread cannot start.
    pub fn new(log: AuditLog) -> Result<Self, AuditError> {
        let path = log.path().to_path_buf();
        let inner = Arc::new(Inner {
            durable: DurableSeq::fixed(log.durable_seq()),
            state: Mutex::new(State {
                log,
                syncs: 0,
                closing: false,
                #[cfg(test)]
                flusher_paused: false,
            }),
            changed: Condvar::new(),
        });
        let flusher = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("audit-flusher".into())
                .spawn(move || inner.flush_until_closed())
        }
        .map_err(|source| AuditError::Io {
            path: inner.lock().log.path().to_path_buf(),
            source,
        })?;
        Ok(SharedAuditLog {
            inner,
            path,
            flusher: Some(flusher),
        })
    }

    /// Appends one event and returns once it is on disk. Callers fail closed on error.
    pub fn append<E: AuditEvent>(&self, event: &E) -> Result<u64, AuditError> {
        let record = Encoded::new(event, &self.path)?;
        let mut state = self.inner.lock();
        let generation = state.log.generation();
        let seq = state.log.append_unsynced(record)?;
        self.inner.changed.notify_all();
        self.inner.wait_durable(state, seq, generation)?;
        Ok(seq)
    }

    /// Appends one event and returns once it is written; the flusher makes it durable with its
    /// next sync. For events that no action waits on: a crash can lose the last few
    /// milliseconds of them, never part of a record, and never a gap in the chain.
    pub fn append_deferred<E: AuditEvent>(&self, event: &E) -> Result<u64, AuditError> {
        // Encoded before the writer is locked (no other writer waits on it).
        let record = Encoded::new(event, &self.path)?;
        let seq = self.inner.lock().log.append_unsynced(record)?;
        self.inner.changed.notify_all();
        Ok(seq)
    }

    /// Writes a signed checkpoint if one is due (see [`AuditLog::checkpoint_if_due`]).
    pub fn checkpoint_if_due(&self) -> Result<(), AuditError> {
        let state = self.inner.lock();
        if state.log.checkpoint_due() {
            self.checkpoint_locked(state)?;
        }
        Ok(())
    }

    /// Rotates the file when due (see [`AuditLog::rotate_if_due`]); writers wait meanwhile.
    pub fn rotate_if_due(&self, policy: RotationPolicy) -> Result<Option<PathBuf>, AuditError> {
        let mut state = self.inner.lock();
        let rotated = state.log.rotate_if_due(policy);
        // Rotation syncs both files itself (not through the flusher): publish what is durable
        // now, or readers would hold back the sealing checkpoint until the next sync, and wake
        // the writers waiting in `wait_durable` — the flusher, finding nothing pending, would
        // not, and a writer whose record the rotation made durable would wait forever (seen as
        // a controller whose `grant issue` never returned while the timer rotated).
        self.inner.publish_durable(&state);
        self.inner.changed.notify_all();
        rotated
    }

    /// Seals the chain as it stands with a signed checkpoint (at shutdown, say).
    pub fn checkpoint(&self) -> Result<(), AuditError> {
        self.checkpoint_locked(self.inner.lock())
    }

    /// The seq of the last record on disk, kept up to date by the flusher.
    pub fn durable(&self) -> DurableSeq {
        self.inner.durable.clone()
    }

    /// How many syncs the log has run (records per sync = the group-commit factor).
    pub fn sync_count(&self) -> u64 {
        self.inner.lock().syncs
    }

    fn checkpoint_locked<'a>(&'a self, mut state: MutexGuard<'a, State>) -> Result<(), AuditError> {
        let generation = state.log.generation();
        state.log.write_checkpoint()?;
        let seq = state.log.written().seq;
        self.inner.changed.notify_all();
        self.inner.wait_durable(state, seq, generation)
    }
}

/// A daemon that owns its log directly: the same as one that holds it among its state (see
/// `daemon::AuditRuntime::run_timer` and `daemon::serve_mtls`).
impl AsRef<SharedAuditLog> for SharedAuditLog {
    fn as_ref(&self) -> &SharedAuditLog {
        self
    }
}

impl Drop for SharedAuditLog {
    /// Makes everything written durable, then stops the flusher.
    fn drop(&mut self) {
        self.inner.lock().closing = true;
        self.inner.changed.notify_all();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells lock-free readers ([`DurableSeq`]) how far the file is on disk.
    fn publish_durable(&self, state: &State) {
        self.durable
            .0
            .store(state.log.durable_seq(), Ordering::Release);
    }

    fn wait<'a>(&'a self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(state).unwrap_or_else(|p| p.into_inner())
    }

    /// The flusher: syncs whenever records wait to be made durable; when closing, syncs what
    /// is left and returns.
    fn flush_until_closed(&self) {
        let mut state = self.lock();
        loop {
            let pending = state.log.written().seq > state.log.durable_seq();
            #[cfg(test)]
            let pending = pending && !state.flusher_paused;
            if !pending {
                if state.closing {
                    return;
                }
                state = self.wait(state);
                continue;
            }
            let point = state.log.written();
            // A handle on the file as it is now (rotation replaces it), synced without the lock.
            let handle = state.log.sync_handle();
            drop(state);
            let result = handle.and_then(|file| file.sync_data());
            state = self.lock();
            state.syncs += 1;
            match result {
                Ok(()) => {
                    state.log.mark_durable(point);
                    self.publish_durable(&state);
                }
                Err(e) => state.log.cut_to_durable(&e),
            }
            self.changed.notify_all();
        }
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
            if let Some(outcome) = state.log.cut_outcome(generation, seq) {
                return outcome.map_err(|cause| AuditError::Io {
                    path: state.log.path().to_path_buf(),
                    source: io::Error::other(format!(
                        "sync failed, the record was discarded: {cause}"
                    )),
                });
            }
            if state.log.durable_seq() >= seq {
                return Ok(());
            }
            state = self.wait(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::events::TestEvent;
    use crate::audit::{verify_chain, CheckpointKey, CheckpointPolicy, RotationPolicy};

    /// Test event number `i`, encoded for `append_unsynced`.
    fn encoded(event: &TestEvent) -> Encoded<'_, TestEvent> {
        Encoded::new(event, std::path::Path::new("test")).unwrap()
    }
    use std::sync::Arc;

    #[test]
    fn concurrent_appends_form_one_intact_chain() {
        let dir = crate::audit::scratch_dir();
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
                        .map(|i| shared.append(&TestEvent::n(t * 1000 + i)).unwrap())
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
        let text = std::fs::read(&path).unwrap();
        let summary = verify_chain(&text[..], &[public]).unwrap();
        assert_eq!(summary.checkpoints, 16);
        assert_eq!(summary.records, 816);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn deferred_events_become_durable_and_keep_the_chain() {
        let dir = crate::audit::scratch_dir();
        let path = dir.join("audit.jsonl");
        let shared = SharedAuditLog::new(AuditLog::open(&path, "h").unwrap()).unwrap();
        for i in 0..500 {
            shared.append_deferred(&TestEvent::n(i)).unwrap();
        }
        assert_eq!(shared.append(&TestEvent::n(0)).unwrap(), 501);
        // The waited append returned: everything before it is durable too.
        assert_eq!(shared.inner.lock().log.durable_seq(), 501);
        shared.append_deferred(&TestEvent::n(0)).unwrap();
        drop(shared); // the flusher syncs what is left before it stops
        let text = std::fs::read(&path).unwrap();
        assert_eq!(verify_chain(&text[..], &[]).unwrap().records, 502);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn records_written_while_the_flusher_cannot_sync_share_one_sync() {
        let dir = crate::audit::scratch_dir();
        let shared =
            SharedAuditLog::new(AuditLog::open(&dir.join("a.jsonl"), "h").unwrap()).unwrap();
        {
            // Holding the writer's lock keeps the flusher from starting a sync meanwhile.
            let mut state = shared.inner.lock();
            for i in 0..500 {
                state
                    .log
                    .append_unsynced(encoded(&TestEvent::n(i)))
                    .unwrap();
            }
        }
        assert_eq!(shared.append(&TestEvent::n(0)).unwrap(), 501);
        // One sync for the 500 (and at most one more for the last record), not one each.
        assert!(
            shared.sync_count() <= 2,
            "{} syncs for 501 records",
            shared.sync_count()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rotation_under_group_commit_keeps_syncing_the_new_file() {
        let dir = crate::audit::scratch_dir();
        let path = dir.join("audit.jsonl");
        let shared = SharedAuditLog::new(AuditLog::open(&path, "h").unwrap()).unwrap();
        for i in 0..20 {
            shared.append(&TestEvent::n(i)).unwrap();
        }
        let policy = RotationPolicy {
            max_bytes: 1,
            keep: 5,
        };
        let rotated = shared.rotate_if_due(policy).unwrap().expect("rotated");
        let durable = shared.durable();
        // The new file's first record (and a sealing checkpoint, with a key) are durable, and readers
        // know it at once (they follow `durable` to pass records on).
        assert_eq!(
            durable.get(),
            21,
            "20 events + audit.rotated (no checkpoint key here)"
        );
        // The flusher now syncs the new file: waited appends return and the durable seq moves.
        let seq = shared.append(&TestEvent::n(0)).unwrap();
        assert_eq!(durable.get(), seq);
        drop(shared);
        let mut both = std::fs::read(&rotated).unwrap();
        both.extend(std::fs::read(&path).unwrap());
        let summary = verify_chain(&both[..], &[]).unwrap();
        assert_eq!(summary.last_seq, seq);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_writer_waiting_for_durability_wakes_when_a_rotation_makes_its_record_durable() {
        // The interleaving of 64f5f39: a writer's record is written and it waits in
        // `wait_durable`; before the flusher syncs it, the timer rotates the file, which syncs
        // the record itself. The flusher then finds nothing pending and wakes nobody: only
        // the rotation's own wake-up lets the writer return.
        let dir = crate::audit::scratch_dir();
        let path = dir.join("audit.jsonl");
        let shared = Arc::new(SharedAuditLog::new(AuditLog::open(&path, "h").unwrap()).unwrap());
        shared.append(&TestEvent::n(0)).unwrap(); // 1: something to rotate
        shared.inner.lock().flusher_paused = true;
        let (done, returned) = std::sync::mpsc::channel();
        let writer = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let _ = done.send(shared.append(&TestEvent::n(1)));
            })
        };
        // Bounded: the writer's record (seq 2) is written, and it waits for a sync.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while shared.inner.lock().log.written().seq < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never wrote its record"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(shared.durable().get(), 1, "the flusher is paused");
        let policy = RotationPolicy {
            max_bytes: 1,
            keep: 5,
        };
        let rotated = shared.rotate_if_due(policy).unwrap();
        assert!(rotated.is_some(), "rotated");
        let outcome = returned
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the writer still waits although the rotation made its record durable");
        assert_eq!(outcome.unwrap(), 2);
        writer.join().unwrap();
        shared.inner.lock().flusher_paused = false;
        drop(shared);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_sync_inside_retention_fails_the_waiting_writers_of_the_records_it_cut() {
        let dir = crate::audit::scratch_dir();
        let path = dir.join("audit.jsonl");
        // A reader past the rotated file: only then may retention delete it.
        let sink = dir.join("siem.cursor");
        let retention = crate::audit::Retention {
            budget_bytes: 0,
            cursors: vec![sink.clone()],
        };
        let mut log = AuditLog::open(&path, "h")
            .unwrap()
            .with_retention(retention, 0);
        log.append(&TestEvent::n(0)).unwrap(); // 1
        log.rotate(0).unwrap(); // 2 is audit.rotated; the rotated file may go (keep 0)
        let chain = crate::audit::first_line_hash(&path).unwrap().unwrap();
        crate::audit::ship::cursor::store(
            &sink,
            &crate::audit::ship::cursor::Cursor {
                chain,
                seq: 2,
                offset: 0,
            },
        )
        .unwrap();
        let shared = SharedAuditLog::new(log).unwrap();
        let mut state = shared.inner.lock();
        // A writer's record, written and waiting for a sync (the lock holds the flusher off).
        let generation = state.log.generation();
        let seq = state
            .log
            .append_unsynced(encoded(&TestEvent::n(901)))
            .unwrap();
        // A retention pass (run on the append path) writes its record and syncs: that fails
        // and cuts the waiting record off too.
        state.log.fail_syncs = 1;
        assert!(state.log.apply_retention().is_err());
        // The next record reuses the cut record's seq and becomes durable.
        let reused = state
            .log
            .append_unsynced(encoded(&TestEvent::n(2)))
            .unwrap();
        assert_eq!(reused, seq);
        state.log.sync().unwrap();
        let waited = shared.inner.wait_durable(state, seq, generation);
        assert!(
            waited.is_err(),
            "the writer of a cut record was told it is on disk"
        );
        drop(shared);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\"i\":901"), "{text}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_sync_cuts_the_unsynced_records_and_the_chain_continues() {
        let dir = crate::audit::scratch_dir();
        let path = dir.join("audit.jsonl");
        let mut log = AuditLog::open(&path, "h").unwrap();
        log.append(&TestEvent::n(1)).unwrap();
        log.append_unsynced(encoded(&TestEvent::n(901))).unwrap();
        log.append_unsynced(encoded(&TestEvent::n(902))).unwrap();
        // What the group does when fdatasync fails:
        log.cut_to_durable(&io::Error::other("test"));
        assert_eq!(log.append(&TestEvent::n(2)).unwrap(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\"i\":90"), "{text}");
        let summary = verify_chain(text.as_bytes(), &[]).unwrap();
        assert_eq!((summary.records, summary.last_seq), (2, 2));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
