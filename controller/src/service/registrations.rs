//! The agents' registrations (address, last seen, replica), written behind their streams.
//!
//! Opening an agent's `WatchGrants` stream needs one read of the store
//! (`Store::stream_registration`: removed?, its labels, its former labels). The registry row
//! it used to write on the way (an upsert, one transaction per agent, while a herd of
//! reconnecting agents waited in line for the replica's one database connection) is soft
//! state: `agent list` shows it, nothing decides on it. So it is queued here and written by one
//! task, every [`FLUSH_EVERY`] or once [`FLUSH_AT`] are queued, all queued agents in one
//! transaction (`Store::register_agents`). What stays on the stream's path: the removal check
//! (the read above, and the in-memory revocation set after it), and an agent's first
//! registration or a change of its labels or address, written at once
//! (`Store::register_agent`): its former labels must be known before its catch-up reads, and
//! `ResolveAgent` answers the registry's address.
//!
//! A removed agent is never registered again (security.md X2): the batch's transaction checks
//! each agent's removal as the upsert did, and skips it; the ids it skipped are handed to
//! `removed`, which reloads the revocation set, so a stream opened just before a removal on
//! another replica committed is cut at once rather than at the next periodic reload. A crash
//! loses at most the queued registrations (the latest `last_seen` times), as a registration
//! committed without waiting for the disk already could.

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
/// in one transaction, off the runtime's threads. A failed write (the database unreachable) is
/// logged and dropped: the agents' next connections register them again.
async fn write_queued(
    queue: Arc<Registrations>,
    store: Arc<Store>,
    mut stopping: watch::Receiver<bool>,
    removed: impl Fn(Vec<String>) + Send + Sync + 'static,
) {
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(FLUSH_EVERY) => false,
            _ = queue.wake.notified() => false,
            _ = stopping.wait_for(|stop| *stop) => true,
        };
        let batch = queue.take();
        if !batch.is_empty() {
            let store = store.clone();
            let count = batch.len();
            let written = tokio::task::spawn_blocking(move || store.register_agents(&batch)).await;
            match written {
                Ok(Ok(gone)) if !gone.is_empty() => removed(gone),
                Ok(Ok(_)) => {}
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
