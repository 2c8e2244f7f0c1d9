//! The agents' registrations (address, last seen, replica), written behind their streams.
//!
//! Opening an agent's `WatchGrants` stream needs one read of the store
//! (`Store::stream_registration`: removed?, its labels, its former labels). The registry row it
//! used to write on the way (an upsert, one transaction per agent, while a herd of reconnecting
//! agents waited in line for the replica's one database connection) is soft state: `agent list`
//! shows it, nothing decides on it. So it is queued here and written by one task, every
//! [`FLUSH_EVERY`] or once [`FLUSH_AT`] are queued, in transactions of at most 512 agents, two
//! statements each (`Store::register_agents`: on PostgreSQL each transaction holds the cluster-wide
//! lock the grants and revocations of every replica wait for, so a failover's herd must not hold it
//! in one long transaction). What stays on the stream's path: the removal check (the read above,
//! and the in-memory revocation set after it), and an agent's first registration or a change of its
//! labels or address, written at once (`Store::register_agent`): its former labels must be known
//! before its catch-up reads, and `ResolveAgent` answers the registry's address.
//!
//! A removed agent is never registered again (security.md X2): the batch's transaction checks each
//! agent's removal as the upsert did, and skips it; the ids it skipped are handed to `removed`,
//! which reloads the revocation set (on the blocking pool), so a stream opened just before a
//! removal on another replica committed is cut when its registration is written (within
//! [`FLUSH_EVERY`] plus the write's time) rather than at the next periodic reload (10 s); if that
//! write fails, at the periodic reload. A crash loses at most the queued registrations (the latest
//! `last_seen` times), as a registration committed without waiting for the disk already could.

use crate::store::{AgentRow, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The longest a registration waits in the queue.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Queued registrations that wake the writer before [`FLUSH_EVERY`].
pub const FLUSH_AT: usize = 512;

/// The queue of registrations to write, by agent (a second connection of an agent replaces
/// its queued one), and its writer task.
#[derive(Default)]
pub struct Registrations {
    pending: Mutex<HashMap<String, (AgentRow, i64)>>,
    wake: Notify,
    started: std::sync::OnceLock<()>,
}

impl Registrations {
    /// Queues the registration of `agent`, connected with a certificate that starts at
    /// `cert_not_before`. The first call starts the writer (on the caller's runtime): it ends
    /// once `stopping` turns true, after writing what is queued then. `removed` is given the
    /// ids of the agents found removed when written.
    pub fn queue(
        self: &Arc<Self>,
        store: &Arc<Store>,
        stopping: &watch::Receiver<bool>,
        removed: impl Fn(Vec<String>) + Send + Sync + 'static,
        agent: AgentRow,
        cert_not_before: i64,
    ) {
        self.started.get_or_init(|| {
            tokio::spawn(write_queued(
                self.clone(),
                store.clone(),
                stopping.clone(),
                removed,
            ));
        });
        let queued = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.insert(agent.id.clone(), (agent, cert_not_before));
            pending.len()
        };
        if queued >= FLUSH_AT {
            self.wake.notify_one();
        }
    }

    /// Takes what is queued.
    fn take(&self) -> Vec<(AgentRow, i64)> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *pending).into_values().collect()
    }
}

/// The writer: every [`FLUSH_EVERY`] (or sooner, woken by a full queue) writes what is queued
/// (in transactions of at most `store::agents::REGISTRATIONS_PER_WRITE` agents), off the
/// runtime's threads, and hands the removed agents found to `removed` there too. A failed
/// write (the database unreachable) is logged and dropped: the agents' next connections
/// register them again.
async fn write_queued(
    queue: Arc<Registrations>,
    store: Arc<Store>,
    mut stopping: watch::Receiver<bool>,
    removed: impl Fn(Vec<String>) + Send + Sync + 'static,
) {
    let removed = Arc::new(removed);
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(FLUSH_EVERY) => false,
            _ = queue.wake.notified() => false,
            _ = stopping.wait_for(|stop| *stop) => true,
        };
        let batch = queue.take();
        if !batch.is_empty() {
            let (store, removed) = (store.clone(), removed.clone());
            let count = batch.len();
            // `removed` reloads the revocation set from the store: a wait for the store's
            // connection, on the blocking pool as the write, not on one of the runtime's
            // workers (2 on this machine) in the middle of a herd.
            let written = tokio::task::spawn_blocking(move || {
                let gone = store.register_agents(&batch)?;
                if !gone.is_empty() {
                    removed(gone);
                }
                anyhow::Ok(())
            })
            .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!("{count} agents' registrations were not written: {e:#}")
                }
                Err(e) => tracing::warn!("{count} agents' registrations were not written: {e}"),
            }
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> AgentRow {
        AgentRow {
            id: id.into(),
            labels: vec!["env=prod".into()],
            addr: format!("{id}:7401"),
            last_seen: 5,
            replica: "controller-b".into(),
        }
    }

    /// Waits (a bounded number of times) until `done` holds; false if it never did.
    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..200 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done()
    }

    /// The writer task: what streams queue is written without anything else waking it (its
    /// timer), an agent removed at or after its certificate's start is not registered and its
    /// id is handed to `removed` (which reloads the revocation set; here it reports on a
    /// channel), and at `stopping` what is queued then is written before the writer ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_writes_what_is_queued_and_hands_over_the_removed_agents() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state.db")).unwrap());
        assert!(store.register_agent(&row("web-2"), 0).unwrap().is_some());
        assert!(store
            .remove_agent("web-2", 100, "spiffe://loggate.local/user/admin", || Ok(()))
            .unwrap());
        let (stop, stopping) = watch::channel(false);
        let (removed_tx, mut removed_rx) = tokio::sync::mpsc::unbounded_channel();
        let queue = Arc::new(Registrations::default());
        let on_removed = move |ids: Vec<String>| {
            let _ = removed_tx.send(ids);
        };
        queue.queue(&store, &stopping, on_removed.clone(), row("web-1"), 0);
        queue.queue(&store, &stopping, on_removed, row("web-2"), 100);
        let gone = tokio::time::timeout(Duration::from_secs(10), removed_rx.recv())
            .await
            .expect("the writer reports the removed agent")
            .expect("the writer's callback");
        assert_eq!(gone, vec!["web-2".to_string()]);
        assert!(store.agent("web-1").unwrap().is_some());
        assert!(store.agent("web-2").unwrap().is_none());
        // Queued just before the stop: written as the writer ends.
        queue.queue(&store, &stopping, |_| {}, row("web-3"), 0);
        stop.send(true).unwrap();
        let store_ = store.clone();
        assert!(eventually(move || store_.agent("web-3").unwrap().is_some()).await);
    }
}
