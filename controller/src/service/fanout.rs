//! The fan-out of grants and revocations to the agents' `WatchGrants` streams.
//!
//! **One change feed.** A change is read from the store once, whatever the number of agents
//! watching: one task ([`ChangeFeed`]) follows the revision log, builds each change's
//! [`pb::GrantEvent`] once (the grant's token is signed once, when it is issued), encodes it
//! once ([`EncodedEvent`]: the agents' streams write those shared bytes, see `grant_stream`)
//! and hands it, behind an `Arc`, to every watcher through a bounded `tokio::sync::broadcast`
//! channel. Each
//! watcher keeps only what is addressed to it (its agent id, or one of its labels: [`covers`]),
//! so every agent still receives exactly what it did when each stream queried the store itself.
//!
//! **The revision log stays the truth.** A watcher reads the log itself (`changes_after`) only
//! to catch up: when it connects (from the revision and epoch the agent sent), when it fell
//! behind the feed by more than the channel holds (`Lagged`: a slow agent costs the others no
//! memory, it only loses its place in the channel), and when the feed hands it a revision that
//! does not follow the last one it saw (a gap: whatever caused it, the log fills it). A watcher
//! therefore never skips a revision: it sees every revision in order, from the log or from the
//! feed, and sends the ones addressed to it.
//!
//! Revision numbers only mean something within one epoch (see `Store::new_epoch`): an agent of
//! another epoch, or none, or claiming a revision ahead of ours, is sent everything again from
//! revision 0; the first heartbeat after the catch-up tells it the resync is complete.

use super::grant_stream::EncodedEvent;
use super::internal;
use crate::store::{Change, GrantRow, Store};
use loggate_core::grant::unix_now;
use loggate_proto as pb;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

/// Changes read from the store in one query (the catch-up of one watcher, or one step of the
/// feed).
pub const CHANGES_PER_READ: u32 = 500;
/// Changes the feed's channel holds for its slowest watcher: one that falls further behind
/// resumes from the revision log. Each holds an `Arc` of one change (about the size of its
/// token, ~1 KiB), so the channel costs at most a few MiB whatever the number of agents.
pub const FEED_CAPACITY: usize = 4096;
/// Events queued for one agent's stream before its watcher waits for the agent to read.
pub const STREAM_QUEUE: usize = 64;

/// One change of the revision log as every watcher receives it: built once, shared.
#[derive(Debug)]
pub struct FeedChange {
    pub revision: u64,
    /// The agent ids the change is addressed to.
    hosts: Vec<String>,
    /// The labels the change is addressed to (an agent holding any of them is covered).
    labels: Vec<String>,
    /// For a grant: its end (a grant already ended when it would be sent is of no use to an
    /// agent); `None` for a revocation, always sent (the agent's clock may run behind ours).
    grant_ends: Option<i64>,
    /// What is sent, the same for every agent it is addressed to: built and encoded once, its
    /// bytes shared by every stream's queue and written as they are.
    pub event: EncodedEvent,
}

impl FeedChange {
    fn new(stamp: &Stamp, revision: u64, change: &Change) -> FeedChange {
        let grant: &GrantRow = match change {
            Change::Granted(g) | Change::Revoked { grant: g, .. } => g,
        };
        FeedChange {
            revision,
            hosts: grant.hosts.clone(),
            labels: grant.labels.clone(),
            grant_ends: match change {
                Change::Granted(g) => Some(g.not_after),
                Change::Revoked { .. } => None,
            },
            event: EncodedEvent::encode(&change_event(stamp, revision, change)),
        }
    }

    /// Whether agent `agent_id` holding `labels` is sent this change at `now`.
    fn is_for(&self, agent_id: &str, labels: &[String], now: i64) -> bool {
        sent_to(
            &self.hosts,
            &self.labels,
            self.grant_ends,
            agent_id,
            labels,
            now,
        )
    }
}

/// Whether agent `agent_id` holding `labels` is sent a change addressed to `hosts` and
/// `labels` at `now`: a grant (`grant_ends` its end) until it ends, a revocation (`None`)
/// always. Decided from the row's fields alone, so a catch-up encodes only what it sends.
fn sent_to(
    hosts: &[String],
    labels: &[String],
    grant_ends: Option<i64>,
    agent_id: &str,
    agent_labels: &[String],
    now: i64,
) -> bool {
    let ended = grant_ends.is_some_and(|end| end <= now);
    !ended && covers(hosts, labels, agent_id, agent_labels)
}

/// The addressing rule: a change is for the agents it names and for those holding one of its
/// labels.
pub fn covers(
    hosts: &[String],
    labels: &[String],
    agent_id: &str,
    agent_labels: &[String],
) -> bool {
    hosts.iter().any(|h| h == agent_id) || labels.iter().any(|l| agent_labels.contains(l))
}

/// What every event of this controller carries besides its change: the epoch of the revision
/// log and the cluster's id (the agent refuses a controller of another cluster before it
/// applies anything).
#[derive(Debug, Clone)]
pub struct Stamp {
    /// This run's epoch (`Store::new_epoch`).
    pub epoch: String,
    /// The controller cluster's id (`Store::cluster_id`).
    pub cluster_id: String,
}

fn change_event(stamp: &Stamp, revision: u64, change: &Change) -> pb::GrantEvent {
    let event = match change {
        Change::Granted(g) => pb::grant_event::Event::Grant(pb::SignedGrant {
            grant_id: g.id.clone(),
            token: g.token.clone(),
        }),
        Change::Revoked { grant, revoked } => pb::grant_event::Event::Revocation(pb::Revocation {
            grant_id: grant.id.clone(),
            revoked_at_unix: revoked.at,
            revoked_by: revoked.by.clone(),
            reason: revoked.reason.clone(),
        }),
    };
    pb::GrantEvent {
        revision,
        event: Some(event),
        epoch: stamp.epoch.clone(),
        cluster_id: stamp.cluster_id.clone(),
    }
}

fn heartbeat(stamp: &Stamp, revision: u64) -> EncodedEvent {
    EncodedEvent::encode(&pb::GrantEvent {
        revision,
        event: Some(pb::grant_event::Event::Heartbeat(pb::Heartbeat {})),
        epoch: stamp.epoch.clone(),
        cluster_id: stamp.cluster_id.clone(),
    })
}

/// How often the feed reads the revision log without being woken, when a NOTIFY listener
/// (PostgreSQL) wakes it: the bound on a change whose notification was missed.
pub const SAFETY_READ: Duration = Duration::from_secs(5);
/// The first wait before a failed read of the revision log is retried ...
const RETRY_MIN: Duration = Duration::from_millis(250);
/// ... doubled at each failure up to this.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Whether `e` says the database was restored under this process ([`crate::store::db::Error::DatabaseRestored`]).
fn is_restored(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<crate::store::db::Error>(),
            Some(crate::store::db::Error::DatabaseRestored(_))
        )
    })
}

/// The wait before the next retry of a failed read, after `previous` (none: the first).
fn next_retry(previous: Option<Duration>) -> Duration {
    previous.map_or(RETRY_MIN, |p| (p * 2).min(RETRY_MAX))
}

/// What a watcher queues for its agent's stream: a shared change, or an event of its own
/// (a heartbeat, an error).
pub type Outgoing = Result<EncodedEvent, Status>;

/// The one reader of the revision log for every watcher (module docs).
pub struct ChangeFeed {
    store: Arc<Store>,
    stamp: Stamp,
    /// The longest silence on a stream ([`super::HEARTBEAT`] in the service).
    heartbeat: Duration,
    changes: broadcast::Sender<Arc<FeedChange>>,
}

impl ChangeFeed {
    /// Starts the feed's task: from the latest revision of the log, it reads and publishes the
    /// new changes each time `revisions` (bumped by whoever commits a change) moves, and ends
    /// when `stopping` turns true or every sender of `revisions` is gone. `capacity` is the
    /// number of changes held for the slowest watcher ([`FEED_CAPACITY`]); a stream is sent a
    /// heartbeat after `heartbeat` without anything sent to it.
    pub fn start(
        store: Arc<Store>,
        stamp: Stamp,
        mut revisions: watch::Receiver<u64>,
        mut stopping: watch::Receiver<bool>,
        capacity: usize,
        heartbeat: Duration,
    ) -> anyhow::Result<Arc<ChangeFeed>> {
        let (changes, _) = broadcast::channel(capacity.max(1));
        let feed = Arc::new(ChangeFeed {
            store: store.clone(),
            stamp: stamp.clone(),
            heartbeat,
            changes: changes.clone(),
        });
        let mut last = store.latest_revision()?;
        // Several replicas on PostgreSQL: a change committed by another replica never moves
        // this one's `revisions`; its NOTIFY wakes the feed instead (a wake-up only: the read
        // below is the same).
        let committed = Arc::new(tokio::sync::Notify::new());
        store.wake_on_commits(Arc::downgrade(&committed))?;
        // On PostgreSQL a NOTIFY can be missed (this replica's listener away while another
        // replica commits, a wake-up that met a dead store connection): a safety read every
        // [`SAFETY_READ`] bounds how long a change can wait for the next one.
        let safety = store.is_postgres().then_some(SAFETY_READ);
        tokio::spawn(async move {
            // Set after a failed read: the read is tried again after this long (doubling up to
            // [`RETRY_MAX`]), not only at the next change.
            let mut retry: Option<Duration> = None;
            loop {
                // Marked seen before the read: a change committed during the read bumps it
                // again, and is read on the next turn.
                revisions.borrow_and_update();
                let read = {
                    let store = store.clone();
                    tokio::task::spawn_blocking(move || store.changes_after(last, CHANGES_PER_READ))
                        .await
                };
                let batch = match read {
                    Ok(Ok(batch)) => {
                        retry = None;
                        batch
                    }
                    Ok(Err(e)) if is_restored(&e) => {
                        // Revision numbers would be reused under this epoch: end the process
                        // (the service manager starts it again, with a new epoch), which ends
                        // every stream; agents resynchronise on reconnecting.
                        tracing::error!("{e:#}");
                        eprintln!("loggate controller: {e:#}");
                        std::process::exit(1);
                    }
                    Ok(Err(e)) => {
                        // Watchers are not told: each one's next gap or heartbeat is harmless,
                        // and the read is retried on a timer. The log keeps the change.
                        let wait = next_retry(retry);
                        tracing::error!(
                            "the change feed cannot read the revision log (retrying in {wait:?}): {e:#}"
                        );
                        retry = Some(wait);
                        Vec::new()
                    }
                    Err(e) => {
                        let wait = next_retry(retry);
                        tracing::error!(
                            "the change feed's read failed (retrying in {wait:?}): {e}"
                        );
                        retry = Some(wait);
                        Vec::new()
                    }
                };
                let full = batch.len() >= CHANGES_PER_READ as usize;
                for (revision, change) in &batch {
                    last = *revision;
                    // No receiver (no agent connected) is not an error.
                    let _ = changes.send(Arc::new(FeedChange::new(&stamp, *revision, change)));
                }
                if full {
                    continue;
                }
                let timer = retry.or(safety);
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { break },
                    _ = committed.notified() => {}
                    _ = stopping.changed() => break,
                    // A failed read's retry, or the periodic safety read; none on SQLite
                    // while reads succeed (its commits always bump `revisions`).
                    _ = async {
                        match timer {
                            Some(wait) => tokio::time::sleep(wait).await,
                            None => std::future::pending().await,
                        }
                    } => {}
                }
            }
        });
        Ok(feed)
    }

    /// Starts the watcher of one agent's stream: it sends to `tx` everything addressed to
    /// `agent_id` (holding `labels`) after `after_revision` of `after_epoch`, then every change
    /// addressed to it as the feed publishes it, a heartbeat when it has caught up and after
    /// every `heartbeat` of silence, until the agent goes away or `stopping` turns true.
    /// `done` runs when it ends.
    pub fn watch(
        self: &Arc<Self>,
        agent: WatchRequest,
        tx: mpsc::Sender<Outgoing>,
        stopping: watch::Receiver<bool>,
        removed: Removed,
        done: impl FnOnce() + Send + 'static,
    ) {
        // Subscribed before the catch-up: whatever is published from now on is either in the
        // channel or (published before the catch-up read it) in the log.
        let feed = self.changes.subscribe();
        let this = self.clone();
        tokio::spawn(async move {
            this.run_watcher(agent, feed, tx, stopping, removed).await;
            done();
        });
    }

    async fn run_watcher(
        &self,
        agent: WatchRequest,
        mut feed: broadcast::Receiver<Arc<FeedChange>>,
        tx: mpsc::Sender<Outgoing>,
        mut stopping: watch::Receiver<bool>,
        mut removed: Removed,
    ) {
        let store = self.store.clone();
        let latest = match tokio::task::block_in_place(|| store.latest_revision()) {
            Ok(latest) => latest,
            Err(e) => {
                let _ = tx.send(Err(internal(e))).await;
                return;
            }
        };
        let mut last = if agent.after_epoch != self.stamp.epoch || agent.after_revision > latest {
            0
        } else {
            agent.after_revision
        };
        if self.catch_up(&agent, &mut last, &tx).await.is_err() {
            return;
        }
        // The end of the catch-up (for a resync: its completion).
        if tx.send(Ok(heartbeat(&self.stamp, last))).await.is_err() {
            return;
        }
        // A heartbeat after `heartbeat` without anything sent to this agent: changes addressed
        // to others do not put it off (the agent takes a long silence for a dead stream).
        //
        // The futures the loop waits on are made once, not at every turn: at 10,000 streams a
        // change wakes every watcher, and a fresh `sleep_until` (a timer-wheel entry), a fresh
        // `tx.closed()` and `stopping.changed()` (a waiter each, registered and removed under
        // its lock) per watcher and change showed in the profile of a change
        // (docs/performance.md). Sending a change moves the one timer (`reset`): a timer left
        // to fire early and wait out the rest woke every watcher once a period while changes
        // flowed (the timer wheel's share of a change's samples rose from 1 % to 4 %).
        let beat = tokio::time::sleep(self.heartbeat);
        let closed = tx.closed();
        let stop = stopping.changed();
        tokio::pin!(beat, closed, stop);
        loop {
            tokio::select! {
                received = feed.recv() => match received {
                    Ok(change) => {
                        if change.revision <= last {
                            continue; // already read from the log
                        }
                        if change.revision != last + 1 {
                            // Something between is missing from what this watcher saw: the
                            // log has it.
                            if self.catch_up(&agent, &mut last, &tx).await.is_err() {
                                return;
                            }
                            if change.revision <= last {
                                continue;
                            }
                        }
                        last = change.revision;
                        if change.is_for(&agent.agent_id, &agent.labels, unix_now()) {
                            if tx.send(Ok(change.event.clone())).await.is_err() {
                                return;
                            }
                            // Fan-out latency is that of live changes (what a catch-up sends
                            // is not observed).
                            loggate_core::metrics::controller().sent(change.revision);
                            beat.as_mut().reset(tokio::time::Instant::now() + self.heartbeat);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::info!(
                            agent = %agent.agent_id, skipped,
                            "a slow grant stream resumes from the revision log"
                        );
                        if self.catch_up(&agent, &mut last, &tx).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = &mut beat => {
                    if tx.send(Ok(heartbeat(&self.stamp, last))).await.is_err() {
                        return;
                    }
                    beat.as_mut().reset(tokio::time::Instant::now() + self.heartbeat);
                }
                _ = &mut closed => return,
                _ = &mut stop => return,
                () = &mut removed => {
                    let _ = tx.send(Err(super::enrol::removed_status())).await;
                    return;
                }
            }
        }
    }

    /// Sends everything after `last` addressed to the agent, from the revision log, until the
    /// log has nothing more; `last` follows. `Err` when the stream is gone (or the log cannot
    /// be read: the agent was told and reconnects).
    async fn catch_up(
        &self,
        agent: &WatchRequest,
        last: &mut u64,
        tx: &mpsc::Sender<Outgoing>,
    ) -> Result<(), ()> {
        loop {
            let after = *last;
            let read =
                tokio::task::block_in_place(|| self.store.changes_after(after, CHANGES_PER_READ));
            let changes = match read {
                Ok(changes) => changes,
                Err(e) => {
                    let _ = tx.send(Err(internal(e))).await;
                    return Err(());
                }
            };
            let now = unix_now();
            for (revision, change) in &changes {
                *last = *revision;
                // Addressing first, from the row: after a restart every agent resyncs from
                // zero, and encoding the changes meant for other hosts would cost
                // agents × revisions for nothing.
                let (grant, grant_ends) = match change {
                    Change::Granted(g) => (g, Some(g.not_after)),
                    Change::Revoked { grant, .. } => (grant, None),
                };
                if !sent_to(
                    &grant.hosts,
                    &grant.labels,
                    grant_ends,
                    &agent.agent_id,
                    &agent.labels,
                    now,
                ) {
                    continue;
                }
                let event = EncodedEvent::encode(&change_event(&self.stamp, *revision, change));
                if tx.send(Ok(event)).await.is_err() {
                    return Err(());
                }
            }
            if changes.len() < CHANGES_PER_READ as usize {
                return Ok(());
            }
        }
    }
}

/// Resolves when the watching agent is removed (`agent remove`): its stream is then cut with
/// [`super::enrol::removed_status`]. Tests give one that never resolves.
pub type Removed = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Who watches, and from where: the agent's checked request.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub agent_id: String,
    pub labels: Vec<String>,
    pub after_revision: u64,
    pub after_epoch: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Revoked;

    const EPOCH: &str = "e1";

    fn stamp() -> Stamp {
        Stamp {
            epoch: EPOCH.into(),
            cluster_id: "c1".into(),
        }
    }

    /// What the agent decodes from a queued event; every event, shared or a stream's own,
    /// carries the controller's epoch and cluster id.
    fn decoded(event: Outgoing) -> pb::GrantEvent {
        let event = event
            .expect("no error")
            .decode()
            .expect("a valid GrantEvent");
        assert_eq!(
            (event.epoch.as_str(), event.cluster_id.as_str()),
            (EPOCH, "c1")
        );
        event
    }
    const WAIT: Duration = Duration::from_secs(20);

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        revisions: watch::Sender<u64>,
        _stop: watch::Sender<bool>,
        stopping: watch::Receiver<bool>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(&dir.path().join("state.db")).unwrap());
            let (stop, stopping) = watch::channel(false);
            Fixture {
                _dir: dir,
                store,
                revisions: watch::channel(0).0,
                _stop: stop,
                stopping,
            }
        }

        fn feed(&self, capacity: usize) -> Arc<ChangeFeed> {
            ChangeFeed::start(
                self.store.clone(),
                stamp(),
                self.revisions.subscribe(),
                self.stopping.clone(),
                capacity,
                Duration::from_secs(10),
            )
            .unwrap()
        }

        /// Records a grant for `labels` and bumps the revision, as the RPCs do.
        fn grant(&self, id: &str, labels: &[&str]) -> u64 {
            let now = unix_now();
            let row = self
                .store
                .insert_grant(|revision| {
                    Ok(GrantRow {
                        id: id.into(),
                        subject: "spiffe://loggate.local/user/alice".into(),
                        hosts: vec![],
                        labels: labels.iter().map(|l| l.to_string()).collect(),
                        paths: vec!["/var/log/*.log".into()],
                        units: vec![],
                        not_before: now,
                        not_after: now + 3600,
                        reason: "T-1".into(),
                        issuer: "spiffe://loggate.local/user/admin".into(),
                        profile: "default".into(),
                        key_sha256: "00".repeat(32),
                        token: format!("token-of-{id}"),
                        revision,
                        revoked: None,
                    })
                })
                .unwrap();
            self.revisions.send_replace(row.revision);
            row.revision
        }

        fn revoke(&self, id: &str) -> u64 {
            let revoked = Revoked {
                at: unix_now(),
                by: "spiffe://loggate.local/user/admin".into(),
                reason: "done".into(),
            };
            self.store.revoke(id, revoked).unwrap().unwrap();
            let latest = self.store.latest_revision().unwrap();
            self.revisions.send_replace(latest);
            latest
        }

        fn watch(
            &self,
            feed: &Arc<ChangeFeed>,
            id: &str,
            labels: &[&str],
            queue: usize,
        ) -> mpsc::Receiver<Outgoing> {
            let (tx, rx) = mpsc::channel(queue);
            feed.watch(
                WatchRequest {
                    agent_id: id.into(),
                    labels: labels.iter().map(|l| l.to_string()).collect(),
                    after_revision: 0,
                    after_epoch: EPOCH.into(),
                },
                tx,
                self.stopping.clone(),
                Box::pin(std::future::pending()),
                || {},
            );
            rx
        }
    }

    /// The next grant or revocation on a stream (heartbeats skipped), as (revision, grant id).
    async fn next_change(rx: &mut mpsc::Receiver<Outgoing>) -> (u64, String) {
        loop {
            let event = tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("an event in time")
                .expect("the stream is open");
            let event = decoded(event);
            match &event.event {
                Some(pb::grant_event::Event::Grant(g)) => {
                    return (event.revision, g.grant_id.clone())
                }
                Some(pb::grant_event::Event::Revocation(r)) => {
                    return (event.revision, r.grant_id.clone())
                }
                _ => {}
            }
        }
    }

    /// Waits for the heartbeat that ends a new stream's catch-up.
    async fn caught_up(rx: &mut mpsc::Receiver<Outgoing>) {
        loop {
            let event = tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("an event in time")
                .expect("the stream is open");
            let event = decoded(event);
            if matches!(event.event, Some(pb::grant_event::Event::Heartbeat(_))) {
                return;
            }
        }
    }

    /// A resync from zero (a foreign epoch, as after a restart) encodes only the changes
    /// addressed to the agent: 1,000 grants to other hosts are filtered on their rows, never
    /// encoded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resync_encodes_only_the_changes_addressed_to_the_agent() {
        const OWN_EPOCH: &str = "count-encodes";
        let f = Fixture::new();
        let now = unix_now();
        let grant_to = |id: String, host: &str| {
            let host = host.to_owned();
            f.store
                .insert_grant(move |revision| {
                    Ok(GrantRow {
                        id,
                        subject: "spiffe://loggate.local/user/alice".into(),
                        hosts: vec![host],
                        labels: vec![],
                        paths: vec!["/var/log/*.log".into()],
                        units: vec![],
                        not_before: now,
                        not_after: now + 3600,
                        reason: "T-1".into(),
                        issuer: "spiffe://loggate.local/user/admin".into(),
                        profile: "default".into(),
                        key_sha256: "00".repeat(32),
                        token: "token".into(),
                        revision,
                        revoked: None,
                    })
                })
                .unwrap()
        };
        for i in 0..1_000 {
            grant_to(format!("g-{i}"), &format!("other-{i}"));
        }
        grant_to("g-web".into(), "web-1");
        let feed = ChangeFeed::start(
            f.store.clone(),
            Stamp {
                epoch: OWN_EPOCH.into(),
                cluster_id: "c1".into(),
            },
            f.revisions.subscribe(),
            f.stopping.clone(),
            FEED_CAPACITY,
            Duration::from_secs(10),
        )
        .unwrap();
        let (tx, mut rx) = mpsc::channel(STREAM_QUEUE);
        feed.watch(
            WatchRequest {
                agent_id: "web-1".into(),
                labels: vec![],
                after_revision: 0,
                after_epoch: "a-foreign-epoch".into(),
            },
            tx,
            f.stopping.clone(),
            Box::pin(std::future::pending()),
            || {},
        );
        let mut changes = Vec::new();
        loop {
            let event = tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("an event in time")
                .expect("the stream is open")
                .expect("no error")
                .decode()
                .expect("a valid GrantEvent");
            match event.event {
                Some(pb::grant_event::Event::Grant(g)) => changes.push(g.grant_id),
                Some(pb::grant_event::Event::Heartbeat(_)) => break,
                other => panic!("unexpected event {other:?}"),
            }
        }
        assert_eq!(changes, vec!["g-web".to_string()]);
        let encodes = *super::super::grant_stream::ENCODES_BY_EPOCH
            .lock()
            .unwrap()
            .get(OWN_EPOCH)
            .unwrap_or(&0);
        assert_eq!(encodes, 2, "the one grant and the catch-up's heartbeat");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_change_is_read_from_the_store_once_whatever_the_number_of_watchers() {
        let f = Fixture::new();
        let feed = f.feed(FEED_CAPACITY);
        // The feed's own first read runs as its task gets a turn: on a loaded machine that can
        // be after the count below is taken. Wait for it (nothing else reads yet).
        let started = std::time::Instant::now();
        while f.store.change_reads() == 0 && started.elapsed() < WAIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(f.store.change_reads(), 1, "the feed's first read");
        for watchers in [1usize, 200] {
            let mut streams = Vec::new();
            for i in 0..watchers {
                // Half covered by the label, half not: both kinds cost no read of their own.
                let label = if i % 2 == 0 { "env=prod" } else { "env=dev" };
                streams.push((i % 2 == 0, f.watch(&feed, &format!("a-{i}"), &[label], 64)));
            }
            for (_, rx) in &mut streams {
                caught_up(rx).await;
            }
            let before = f.store.change_reads();
            let id = format!("g-{watchers}");
            let revision = f.grant(&id, &["env=prod"]);
            for (covered, rx) in &mut streams {
                if *covered {
                    assert_eq!(next_change(rx).await, (revision, id.clone()));
                }
            }
            // The uncovered ones saw it too (and sent nothing): a revocation of the grant is
            // the next thing each covered stream gets, and nothing reaches the others.
            let revoked = f.revoke(&id);
            for (covered, rx) in &mut streams {
                if *covered {
                    assert_eq!(next_change(rx).await, (revoked, id.clone()));
                }
            }
            assert_eq!(
                f.store.change_reads() - before,
                2,
                "{watchers} watchers: one read of the log per change"
            );
            for (covered, rx) in &mut streams {
                if !*covered {
                    while let Ok(event) = rx.try_recv() {
                        let event = decoded(event);
                        assert!(
                            matches!(event.event, Some(pb::grant_event::Event::Heartbeat(_))),
                            "an uncovered agent was sent {event:?}"
                        );
                    }
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lagging_watcher_resumes_from_the_log_and_misses_nothing() {
        let f = Fixture::new();
        // A channel of 4 changes; a stream queue of 1: the slow watcher falls behind at once.
        let feed = f.feed(4);
        let mut slow = f.watch(&feed, "slow", &["env=prod"], 1);
        let mut quick = f.watch(&feed, "quick", &["env=prod"], 256);
        caught_up(&mut slow).await;
        caught_up(&mut quick).await;
        let mut expected = Vec::new();
        for i in 0..40 {
            let id = format!("g-{i}");
            expected.push((f.grant(&id, &["env=prod"]), id.clone()));
            if i % 3 == 0 {
                expected.push((f.revoke(&id), id));
            }
        }
        // The quick one keeps up; the slow one is read only now, long after the channel
        // dropped what it had not taken.
        for want in &expected {
            assert_eq!(&next_change(&mut quick).await, want);
        }
        let reads_before_slow = f.store.change_reads();
        for want in &expected {
            assert_eq!(
                &next_change(&mut slow).await,
                want,
                "in order, nothing skipped"
            );
        }
        assert!(
            f.store.change_reads() > reads_before_slow,
            "the slow watcher filled its gap from the log"
        );
        // And it follows the feed again afterwards.
        let revision = f.grant("g-after", &["env=prod"]);
        assert_eq!(next_change(&mut slow).await, (revision, "g-after".into()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_reading_the_log_is_never_sent_the_token_of_a_grant_revoked_since() {
        let f = Fixture::new();
        let revoked_at_grant = f.grant("g-revoked", &["env=prod"]);
        let kept = f.grant("g-kept", &["env=prod"]);
        let revoked_at_revoke = f.revoke("g-revoked");
        // A watcher starting from zero reads all three from the log.
        let feed = f.feed(FEED_CAPACITY);
        let mut rx = f.watch(&feed, "new", &["env=prod"], 256);
        let mut seen = Vec::new();
        loop {
            let event = tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("an event in time")
                .expect("the stream is open");
            let event = decoded(event);
            match &event.event {
                Some(pb::grant_event::Event::Grant(g)) => {
                    seen.push((event.revision, "grant", g.grant_id.clone()))
                }
                Some(pb::grant_event::Event::Revocation(r)) => {
                    seen.push((event.revision, "revocation", r.grant_id.clone()))
                }
                _ => break,
            }
        }
        assert_eq!(
            seen,
            vec![
                (revoked_at_grant, "revocation", "g-revoked".to_string()),
                (kept, "grant", "g-kept".to_string()),
                (revoked_at_revoke, "revocation", "g-revoked".to_string()),
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_of_another_epoch_is_sent_everything_again_then_a_heartbeat() {
        let f = Fixture::new();
        let feed = f.feed(FEED_CAPACITY);
        let first = f.grant("g-1", &["env=prod"]);
        let second = f.grant("g-2", &["env=prod"]);
        let (tx, mut rx) = mpsc::channel(16);
        feed.watch(
            WatchRequest {
                agent_id: "a".into(),
                labels: vec!["env=prod".into()],
                after_revision: second,
                after_epoch: "an-older-epoch".into(),
            },
            tx,
            f.stopping.clone(),
            Box::pin(std::future::pending()),
            || {},
        );
        assert_eq!(next_change(&mut rx).await, (first, "g-1".into()));
        assert_eq!(next_change(&mut rx).await, (second, "g-2".into()));
        caught_up(&mut rx).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_addressed_to_others_do_not_put_off_a_streams_heartbeat() {
        let f = Fixture::new();
        let beat = Duration::from_millis(300);
        let feed = ChangeFeed::start(
            f.store.clone(),
            stamp(),
            f.revisions.subscribe(),
            f.stopping.clone(),
            FEED_CAPACITY,
            beat,
        )
        .unwrap();
        let mut idle = f.watch(&feed, "idle", &["env=dev"], 64);
        caught_up(&mut idle).await;
        // A change for others every 100 ms for 1.5 s: five heartbeat periods.
        let start = tokio::time::Instant::now();
        for i in 0..15 {
            f.grant(&format!("g-{i}"), &["env=prod"]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let elapsed = start.elapsed();
        let mut beats = 0;
        while let Ok(event) = idle.try_recv() {
            let event = decoded(event);
            assert!(
                matches!(event.event, Some(pb::grant_event::Event::Heartbeat(_))),
                "{event:?}"
            );
            beats += 1;
        }
        let expected = (elapsed.as_millis() / beat.as_millis()) as usize;
        assert!(
            beats + 1 >= expected,
            "{beats} heartbeats in {elapsed:?} (every {beat:?}: {expected} expected)"
        );
    }

    /// Two controllers on one PostgreSQL database: a grant and a revocation committed by
    /// replica A reach an agent watching replica B, whose own revision counter never moves
    /// (only A's NOTIFY can wake B's feed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_committed_by_another_replica_reaches_this_ones_agents() {
        let server = crate::store::postgres_server::TestPostgres::start().unwrap();
        let open = || Arc::new(Store::open_postgres(&server.url()).unwrap());
        let (replica_a, replica_b) = (open(), open());
        let (_stop, stopping) = watch::channel(false);
        let b = Fixture {
            _dir: tempfile::tempdir().unwrap(),
            store: replica_b,
            revisions: watch::channel(0).0,
            _stop,
            stopping,
        };
        let feed = b.feed(FEED_CAPACITY);
        let mut rx = b.watch(&feed, "web-1", &["env=prod"], 16);
        caught_up(&mut rx).await;
        let a = Fixture {
            store: replica_a,
            ..Fixture::new()
        };
        let granted = tokio::task::spawn_blocking(move || {
            let rev = a.grant("g-on-a", &["env=prod"]);
            (a, rev)
        })
        .await
        .unwrap();
        let (a, granted_rev) = granted;
        // Bounded: without the wake the stream only sees heartbeats, for ever.
        let change = tokio::time::timeout(WAIT, next_change(&mut rx)).await;
        assert_eq!(
            change.expect("the change committed on replica A in time"),
            (granted_rev, "g-on-a".to_string())
        );
        let revoked_rev = tokio::task::spawn_blocking(move || a.revoke("g-on-a"))
            .await
            .unwrap();
        // Bounded: without the wake the stream only sees heartbeats, for ever.
        let change = tokio::time::timeout(WAIT, next_change(&mut rx)).await;
        assert_eq!(
            change.expect("the change committed on replica A in time"),
            (revoked_rev, "g-on-a".to_string())
        );
        assert_eq!(*b.revisions.borrow(), 0, "B's own counter never moved");
    }
    /// A change committed by replica A while every connection of replica B (its store's and
    /// its NOTIFY listener's) is cut and cannot come back: B's listener is away when the
    /// NOTIFY is sent, and the one wake-up it gives when it is back meets B's dead store
    /// connection. The feed's retry (and its safety read) still brings the change to B's
    /// watcher within the bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_committed_while_this_replicas_connections_are_cut_reaches_its_agents() {
        let server = crate::store::postgres_server::TestPostgres::start().unwrap();
        let replica_b = Arc::new(Store::open_postgres(&server.url()).unwrap());
        let (_stop, stopping) = watch::channel(false);
        let b = Fixture {
            _dir: tempfile::tempdir().unwrap(),
            store: replica_b,
            revisions: watch::channel(0).0,
            _stop,
            stopping,
        };
        let feed = b.feed(FEED_CAPACITY);
        let mut rx = b.watch(&feed, "web-1", &["env=prod"], 16);
        caught_up(&mut rx).await;
        // B's backends: its store's connection and its listener's (psql runs on template1).
        let of_b = "SELECT pid FROM pg_stat_activity WHERE datname = 'postgres' \
                    AND backend_type = 'client backend'";
        let b_pids = server
            .psql(
                "template1",
                &format!("SELECT string_agg(pid::text, ',') FROM ({of_b}) p"),
            )
            .unwrap();
        let b_pids = b_pids.trim().to_string();
        assert_eq!(
            b_pids.split(',').count(),
            2,
            "B's store and listener: {b_pids}"
        );
        let a = Fixture {
            store: Arc::new(Store::open_postgres(&server.url()).unwrap()),
            ..Fixture::new()
        };
        server
            .psql(
                "template1",
                "ALTER DATABASE postgres ALLOW_CONNECTIONS false",
            )
            .unwrap();
        server
            .psql(
                "template1",
                &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN ({b_pids})"),
            )
            .unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        while server
            .psql(
                "template1",
                &format!("SELECT count(*) FROM pg_stat_activity WHERE pid IN ({b_pids})"),
            )
            .unwrap()
            .trim()
            != "0"
        {
            assert!(
                std::time::Instant::now() < deadline,
                "B's backends survived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (a, granted) = tokio::task::spawn_blocking(move || {
            let rev = a.grant("g-while-cut", &["env=prod"]);
            (a, rev)
        })
        .await
        .unwrap();
        // B's listener retries and fails meanwhile; then it may come back.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server
            .psql(
                "template1",
                "ALTER DATABASE postgres ALLOW_CONNECTIONS true",
            )
            .unwrap();
        // Bounded: without the retry the feed waits for a next change, for ever.
        let change = tokio::time::timeout(WAIT, next_change(&mut rx)).await;
        assert_eq!(
            change.expect("the change committed on replica A reaches B's watcher in time"),
            (granted, "g-while-cut".to_string())
        );
        drop(a);
    }
}
