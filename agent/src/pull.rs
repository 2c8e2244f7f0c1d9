//! A whole-file read (`logs cat` without a pattern or a time range) served in its response's
//! own poll (issue #15): when HTTP/2 asks the response for its next message, the file is read
//! and redacted there and then, on the runtime's thread, and the message goes out at once.
//!
//! Why a second way to serve: every other read runs [`crate::stream::run`] on a blocking
//! thread of its own that queues its messages to the response. With 64 readers on one core,
//! the hand-off between those threads and the runtime's (a context switch and a `futex` per
//! message or two, a queue, a wait for budget through a timer-armed `select`) cost the agent
//! ~10–17 % of its CPU per byte against this path (docs/performance.md, issue 15,
//! 2026-12-06). A `cat` has nothing to wait for between two messages but its reader, which is
//! exactly when HTTP/2 polls: it needs no thread. A `tail --follow` waits on its file, and a
//! grep or a time range may spend long on one chunk's lines (checked between lines): they
//! keep their thread.
//!
//! What the path keeps of the other one's rules:
//! - **The grant, the agent's stop and the client** are checked before each message is made
//!   (as the thread checks them between chunks). A reader that stops reading is not polled,
//!   so a task per stream ([`watch_for_cut`]) waits on the grant's end, its revocation and
//!   the agent's stop, and cuts the stream itself: its file is closed and its `read.finished`
//!   written when the grant ends, not when the reader reads on. The reader then gets the cut
//!   as its final status after what HTTP/2 already held.
//! - **Memory**: each message beyond the one a stream may always have out takes its size
//!   from the agent's [`QueueBudget`], and holds it until HTTP/2 has written it (the share
//!   travels in the frame's allocation, [`crate::frames::Chunk::into_frame_holding`]): what
//!   HTTP/2 holds of every stream together is bounded by the budget, not by its per-stream
//!   send buffer (400 KiB in hyper) times the streams.
//! - **Never block the runtime on the disk**: a read is a `preadv2(RWF_NOWAIT)`, served from
//!   the page cache or not at all; what is not cached is read on the blocking pool, and the
//!   response waits for it like for anything else (as does the end of the file, whose length
//!   is looked up there: a `fstat` on a network filesystem is a round trip). Where the call
//!   fails otherwise (a filesystem without the flag, a seccomp filter without `preadv2`),
//!   every read goes to the pool. Before Linux 5.9 the flag did not keep a read from starting
//!   read-ahead I/O, so there a read may still wait on the disk briefly.
//! - **Short turns**: redacting one 64 KiB read takes ~0.15 ms of the runtime's time, less
//!   than a TLS handshake's signature; a poll reads at most [`READS_PER_POLL`] times, so reads
//!   that make no message (the body of a withheld private key, a run of cut lines) yield the
//!   thread between turns rather than run through the file in one.
//! - **A truncated or rewritten file** is seen as [`crate::stream`] sees it (the same checked
//!   read, one `pread` with the bytes behind the position).

use crate::frames::Chunk;
use crate::gate::Profile;
use crate::limits::{BudgetShare, QueueBudget, Sharer};
use crate::stream::{
    self, ChunkRead, ChunkSink, EndReason, Finished, GrantWatch, Item, LineSelector, Mode, Plan,
    SinkParts, BEHIND, CHUNK,
};
use loggate_redact::Pipeline;
use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch, Notify};
use tonic::Status;

/// Messages a stream may have out (made, not yet written by HTTP/2) without a share of the
/// budget, so that every stream progresses whatever the others hold. Two rather than one: a
/// stream then makes its next message while HTTP/2 writes the last, not after (64 readers on
/// one core: 2.58–3.74 CPU s/GiB against 2.91–3.40 with one, docs/performance.md).
const FREE_OUT: usize = 2;

/// Reads one poll makes at most (of [`CHUNK`] each) before it lets other tasks run.
const READS_PER_POLL: usize = 4;

/// What a stream's end hands to the server: how it ended, what must outlive its
/// `read.finished` (the stream's receivers of the agent's stop: shutdown waits for every
/// stream's record), and a sender to drop once the record is written: a reader is told of the
/// end (clean, or the final status) only after it (as on the other path, whose response ends
/// with its thread).
pub type Done = Box<dyn FnOnce(Finished, Keep, oneshot::Sender<()>) + Send>;

/// Held until the stream's `read.finished` is written.
pub struct Keep {
    _stop: Vec<watch::Receiver<bool>>,
    _sharer: Option<Sharer>,
    /// Closed where the record is written, not on the runtime's thread (a `close` may wait
    /// on a network filesystem).
    _file: Arc<File>,
}

/// The stream's state, shared by its response and its [`watch_for_cut`] task.
struct Shared {
    /// Until the stream ends.
    work: Option<Work>,
    /// The final status, yielded after the data (a cut, a failed read); none at the end of
    /// the file.
    status: Option<Status>,
    /// The response's waker while it waits (for budget or a read), woken by a cut.
    waker: Option<Waker>,
    done: Option<Done>,
    /// Resolves once the stream's `read.finished` is written (or its writing was given up).
    recorded: Option<oneshot::Receiver<()>>,
    /// Kept for [`Keep`] until the stream ends.
    watcher_stop: Option<watch::Receiver<bool>>,
}

/// A running stream: the file, its position, the redaction, what checks the grant.
struct Work {
    /// Shared with a read on the pool.
    file: Arc<File>,
    agent: String,
    profile: Profile,
    selector: LineSelector,
    pipeline: Pipeline,
    pos: u64,
    behind: Vec<u8>,
    /// The read buffer ([`BEHIND`] + [`CHUNK`] bytes); away while a read runs on the pool.
    buf: Option<Vec<u8>>,
    sink: Checks,
    bytes_read: u64,
    sharer: Option<Sharer>,
    /// The file's end was served: the stream ends once what it made is sent.
    at_end: bool,
    /// Whether `preadv2(RWF_NOWAIT)` works on this file (not on every filesystem).
    nowait: bool,
    /// The no-wait read ([`read_nowait`]; a test's stand-in for a kernel that refuses it).
    read_nowait: fn(i32, &mut [u8], u64) -> std::io::Result<usize>,
}

/// The stream's [`ChunkSink`]: checks the grant and the agent's stop, and collects what
/// [`stream::serve_block`] makes (at most one message per read).
struct Checks {
    watch: GrantWatch,
    withdrawals: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    look_up: bool,
    bytes: u64,
    made: VecDeque<Chunk>,
    cut: Option<Status>,
}

impl ChunkSink for Checks {
    fn check(&mut self) -> Result<(), EndReason> {
        if *self.stop.borrow() {
            self.cut = Some(Status::aborted(stream::STOPPING));
            return Err(EndReason::AgentStopping);
        }
        let ended = if self.look_up || self.withdrawals.has_changed().unwrap_or(true) {
            self.look_up = false;
            self.withdrawals.borrow_and_update();
            self.watch.ended()
        } else {
            self.watch.expired()
        };
        match ended {
            Some((reason, message)) => {
                self.cut = Some(Status::aborted(message));
                Err(reason)
            }
            None => Ok(()),
        }
    }

    fn send(&mut self, chunk: Chunk) -> Result<(), EndReason> {
        self.check()?;
        self.bytes += chunk.content().len() as u64;
        self.made.push_back(chunk);
        Ok(())
    }

    fn idle(
        &mut self,
        _: Option<&mut crate::follow::FileWatch>,
        _: Instant,
    ) -> Result<crate::follow::Changes, EndReason> {
        // Never called: a pulled stream is not followed (see `Puller::serves`).
        Err(EndReason::Eof)
    }

    // `read_size` is not taken: every read is a [`CHUNK`]. What the other path's smaller reads
    // under pressure bound (its queue) does not exist here: a stream holds its read buffer and
    // at most [`FREE_OUT`] messages beyond the budget's (64 readers peaked at 41–46 MiB).

    fn fail(&mut self, status: Status) {
        self.cut = Some(status);
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The response's side of a pulled stream.
pub struct Puller {
    shared: Arc<Mutex<Shared>>,
    budget: Option<Arc<QueueBudget>>,
    /// This stream's messages HTTP/2 still holds, and a signal when one is dropped.
    out: Arc<Out>,
    /// A message made, waiting for its share of the budget.
    pending: Option<Chunk>,
    waiting: Option<Pin<Box<dyn Future<Output = Option<BudgetShare>> + Send>>>,
    /// A read running on the blocking pool (the page cache did not hold it).
    reading: Option<tokio::task::JoinHandle<(Vec<u8>, std::io::Result<Settled>)>>,
    /// Ends the stream's [`watch_for_cut`] task when the response goes.
    _gone: oneshot::Sender<()>,
    /// The status was yielded: the response ends.
    over: bool,
}

/// A stream's messages out (made, not yet dropped by HTTP/2).
#[derive(Default)]
struct Out {
    count: AtomicUsize,
    dropped: Notify,
}

/// What a message holds while HTTP/2 holds it: its share of the budget, and its place in
/// its stream's count.
struct Held {
    _share: Option<BudgetShare>,
    out: Arc<Out>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.out.count.fetch_sub(1, Ordering::AcqRel);
        self.out.dropped.notify_one();
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl Puller {
    /// Whether `plan` is served this way: a whole plain file, every line passing (no grep, no
    /// time range), not followed.
    pub fn serves(plan: &Plan) -> bool {
        !plan.follow
            && plan.tail_lines.is_none()
            && plan.compressed.is_none()
            && plan.selector.passes_everything()
    }

    /// Starts serving `plan` (see [`Puller::serves`]) from the response's poll, with what
    /// the stream's sink held; `done` writes its `read.finished`. Spawns the stream's
    /// [`watch_for_cut`] task on the current runtime.
    pub fn start(plan: Plan, parts: SinkParts, done: Done) -> Puller {
        let Plan {
            file,
            agent,
            profile,
            selector,
            max_line,
            ..
        } = plan;
        let SinkParts {
            watch,
            withdrawals,
            stop,
            budget,
            sharer,
        } = parts;
        let watcher = Watcher {
            watch: watch.clone(),
            withdrawals: withdrawals.clone(),
            stop: stop.clone(),
        };
        let pipeline = Pipeline::new(profile.redactor(), max_line);
        let shared = Arc::new(Mutex::new(Shared {
            work: Some(Work {
                file: Arc::new(file),
                agent,
                profile,
                selector,
                pipeline,
                pos: 0,
                behind: Vec::with_capacity(BEHIND),
                buf: Some(Vec::new()),
                sink: Checks {
                    watch,
                    withdrawals,
                    stop,
                    look_up: true,
                    bytes: 0,
                    made: VecDeque::new(),
                    cut: None,
                },
                bytes_read: 0,
                sharer,
                at_end: false,
                nowait: true,
                read_nowait,
            }),
            status: None,
            waker: None,
            done: Some(done),
            recorded: None,
            watcher_stop: None,
        }));
        let (gone_tx, gone) = oneshot::channel();
        tokio::spawn(watch_for_cut(Arc::downgrade(&shared), watcher, gone));
        Puller {
            shared,
            budget,
            out: Arc::new(Out::default()),
            pending: None,
            waiting: None,
            reading: None,
            _gone: gone_tx,
            over: false,
        }
    }

    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let shared = self.shared.clone();
        let mut shared = lock(&shared);
        let mut reads = 0;
        loop {
            if self.over {
                return Poll::Ready(None);
            }
            let Some(work) = shared.work.as_mut() else {
                // Ended (here or by a cut): what was made and not sent is dropped, then, once
                // the stream's record is written (as on the other path, whose response ends
                // with its thread), the final status or a clean end.
                self.pending = None;
                self.waiting = None;
                self.reading = None;
                if let Some(recorded) = shared.recorded.as_mut() {
                    // Err: the record's task is gone (the runtime stopping).
                    let _ = std::task::ready!(Pin::new(recorded).poll(cx));
                    shared.recorded = None;
                }
                self.over = true;
                return Poll::Ready(shared.status.take().map(Err));
            };
            if let Some(chunk) = self.pending.take() {
                match self.share_for(&chunk, cx) {
                    Poll::Ready(share) => {
                        // The grant may have ended while the message waited for its share.
                        if let Err(reason) = work.sink.check() {
                            end(&mut shared, reason);
                            continue;
                        }
                        self.out.count.fetch_add(1, Ordering::AcqRel);
                        let held = Held {
                            _share: share,
                            out: self.out.clone(),
                        };
                        match chunk.into_frame_holding(held) {
                            Ok(frame) => return Poll::Ready(Some(Ok(frame))),
                            Err(e) => {
                                end(&mut shared, EndReason::ReadError(e.to_string()));
                                continue;
                            }
                        }
                    }
                    Poll::Pending => {
                        self.pending = Some(chunk);
                        shared.waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                }
            }
            if let Some(chunk) = work.sink.made.pop_front() {
                self.pending = Some(chunk);
                continue;
            }
            if work.at_end {
                end(&mut shared, EndReason::Eof);
                continue;
            }
            if reads == READS_PER_POLL {
                // Reads that made no message: the next turn goes on (see the module's notes).
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // The next read: from the page cache here, or on the blocking pool.
            let read = match self.reading.as_mut() {
                Some(reading) => match Pin::new(reading).poll(cx) {
                    Poll::Pending => {
                        shared.waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    Poll::Ready(joined) => {
                        self.reading = None;
                        match joined {
                            Ok((buf, read)) => {
                                work.buf = Some(buf);
                                read
                            }
                            Err(e) => Err(std::io::Error::other(format!(
                                "the read's thread failed: {e}"
                            ))),
                        }
                    }
                },
                None => {
                    if let Err(reason) = work.sink.check() {
                        end(&mut shared, reason);
                        continue;
                    }
                    match work.read_cached() {
                        Some(read) => read,
                        None => {
                            self.reading = Some(work.read_on_pool());
                            continue;
                        }
                    }
                }
            };
            reads += 1;
            match read
                .map_err(stream::read_error)
                .and_then(|read| work.serve(read))
            {
                Ok(at_end) => work.at_end = at_end,
                Err(reason) => end(&mut shared, reason),
            }
        }
    }

    /// The share of the budget `chunk` goes with: none when this stream has fewer than
    /// [`FREE_OUT`] messages out (so every stream progresses, whatever the others hold) or no
    /// budget is set.
    fn share_for(&mut self, chunk: &Chunk, cx: &mut Context<'_>) -> Poll<Option<BudgetShare>> {
        let Some(budget) = &self.budget else {
            return Poll::Ready(None);
        };
        if self.waiting.is_none() {
            if self.out.count.load(Ordering::Acquire) < FREE_OUT {
                return Poll::Ready(None);
            }
            if let Some(share) = budget.try_take(chunk.allocated()) {
                return Poll::Ready(Some(share));
            }
            let budget = budget.clone();
            let out = self.out.clone();
            let len = chunk.allocated();
            self.waiting = Some(Box::pin(async move {
                tokio::select! {
                    share = budget.take_for(len, 1) => Some(share),
                    () = none_out(&out) => None,
                }
            }));
        }
        let Some(waiting) = self.waiting.as_mut() else {
            return Poll::Ready(None);
        };
        let share = std::task::ready!(waiting.as_mut().poll(cx));
        self.waiting = None;
        Poll::Ready(share)
    }
}

/// Resolves once the stream has fewer than [`FREE_OUT`] messages out.
async fn none_out(out: &Out) {
    loop {
        let dropped = out.dropped.notified();
        tokio::pin!(dropped);
        dropped.as_mut().enable();
        if out.count.load(Ordering::Acquire) < FREE_OUT {
            return;
        }
        dropped.await;
    }
}

/// Ends the stream: its file closed, its `read.finished` handed to the server, the response
/// woken to yield what is left and the final status.
fn end(shared: &mut Shared, reason: EndReason) {
    let Some(mut work) = shared.work.take() else {
        return;
    };
    if let EndReason::ReadError(e) = &reason {
        // An end that concerns this file only carries its code (as on the other path): a
        // reader of many files goes on with the next one.
        let mut status = Status::internal(format!("reading the file failed: {e}"));
        if let Ok(v) = reason.as_str().parse() {
            status.metadata_mut().insert("loggate-end", v);
        }
        work.sink.cut = Some(status);
    }
    shared.status = work.sink.cut.take();
    let finished = Finished {
        reason,
        bytes: work.sink.bytes,
        bytes_read: work.bytes_read,
        counts: work.pipeline.counts().clone(),
        pattern_time: Duration::ZERO,
        key_lookback_exhausted: false,
    };
    let keep = Keep {
        _stop: [Some(work.sink.stop), shared.watcher_stop.take()]
            .into_iter()
            .flatten()
            .collect(),
        _sharer: work.sharer.take(),
        _file: work.file.clone(),
    };
    if let Some(done) = shared.done.take() {
        let (recorded_tx, recorded) = oneshot::channel();
        shared.recorded = Some(recorded);
        done(finished, keep, recorded_tx);
    }
    if let Some(waker) = shared.waker.take() {
        waker.wake();
    }
}

/// What a read found, and at the end of the file its length (to tell an end from a shrink).
struct Settled {
    read: ChunkRead,
    len: Option<u64>,
}

impl Work {
    /// The next read from the page cache (`preadv2(RWF_NOWAIT)`), or `None` when it must be
    /// made on the pool: not all cached, the end of the file (its length is looked up there),
    /// or a call the filesystem or a seccomp filter refuses (then every read goes there).
    fn read_cached(&mut self) -> Option<std::io::Result<Settled>> {
        if !self.nowait {
            return None;
        }
        let buf = self.buf.as_mut()?;
        stream::fit_read_buffer(buf, BEHIND + CHUNK);
        let fd = self.file.as_raw_fd();
        let read_nowait = self.read_nowait;
        let read = stream::read_checked_at(
            |into, offset| read_nowait(fd, into, offset),
            // Only asked before the first read past a start (never for a `cat`): on the pool.
            || Err(std::io::ErrorKind::WouldBlock.into()),
            self.pos,
            &self.behind,
            buf,
        );
        match read {
            Ok(ChunkRead::Data(0)) => None,
            Ok(read) => Some(Ok(Settled { read, len: None })),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(_) => {
                // Not an answer about the file: a plain `pread` says what it has to say.
                self.nowait = false;
                None
            }
        }
    }

    /// The next read on the blocking pool (its buffer and the bytes behind the position moved
    /// there and back), with the file's length when it finds the end.
    fn read_on_pool(&mut self) -> tokio::task::JoinHandle<(Vec<u8>, std::io::Result<Settled>)> {
        let mut buf = self.buf.take().unwrap_or_default();
        let file = self.file.clone();
        let (pos, behind) = (self.pos, self.behind.clone());
        tokio::task::spawn_blocking(move || {
            stream::fit_read_buffer(&mut buf, BEHIND + CHUNK);
            let read = stream::read_checked(&file, pos, &behind, &mut buf).and_then(|read| {
                let len = match read {
                    ChunkRead::Data(0) => Some(file.metadata()?.len()),
                    _ => None,
                };
                Ok(Settled { read, len })
            });
            (buf, read)
        })
    }

    /// Serves what a read found; `true` at the stream's end.
    fn serve(&mut self, settled: Settled) -> Result<bool, EndReason> {
        let Work {
            agent,
            profile,
            selector,
            pipeline,
            pos,
            behind,
            buf,
            sink,
            bytes_read,
            ..
        } = self;
        let n = match settled.read {
            ChunkRead::Data(0) => {
                // The end, or the file shrunk under us (copytruncate): a carried line's head
                // is gone, the whole lines already served stand.
                if settled.len.is_some_and(|len| len < *pos) {
                    pipeline.abandon_partial_line();
                }
                stream::serve_rest(pipeline, selector, sink)?;
                return Ok(true);
            }
            ChunkRead::Rewritten => {
                pipeline.abandon_partial_line();
                stream::serve_rest(pipeline, selector, sink)?;
                return Ok(true);
            }
            ChunkRead::Data(n) => n,
        };
        let Some(buf) = buf.as_ref() else {
            return Err(EndReason::ReadError("the read buffer is gone".into()));
        };
        *pos += n as u64;
        *bytes_read += n as u64;
        let data = &buf[BEHIND..BEHIND + n];
        stream::remember_behind(behind, data);
        let mode = Mode::of(profile, selector, agent);
        stream::serve_block(data, &mode, pipeline, selector, sink)?;
        Ok(false)
    }
}

/// One `preadv2` of `into` at `offset` that reads only what the page cache holds: `EAGAIN`
/// (`WouldBlock`) when the first byte is not there.
fn read_nowait(fd: i32, into: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let offset =
        i64::try_from(offset).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let iov = libc::iovec {
        iov_base: into.as_mut_ptr().cast(),
        iov_len: into.len(),
    };
    // SAFETY: `iov` describes `into`, a live, writable, exclusively borrowed buffer of
    // `into.len()` bytes, for the duration of the call; the kernel writes at most that many
    // bytes into it and keeps no reference after returning. `fd` is the stream's open file
    // (borrowed by the caller for the call). One iovec, as the count says.
    let n = unsafe { libc::preadv2(fd, &iov, 1, offset, libc::RWF_NOWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    usize::try_from(n).map_err(|_| std::io::Error::other("preadv2 returned a negative count"))
}

/// What [`watch_for_cut`] waits on.
struct Watcher {
    watch: GrantWatch,
    withdrawals: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
}

/// Cuts the stream when its grant ends or is withdrawn, or the agent stops, whether or not
/// its reader reads (one that does not is not polled, see the module's notes); ends when the
/// stream has ended or the response is gone.
async fn watch_for_cut(
    shared: std::sync::Weak<Mutex<Shared>>,
    watcher: Watcher,
    mut gone: oneshot::Receiver<()>,
) {
    let Watcher {
        watch,
        mut withdrawals,
        mut stop,
    } = watcher;
    loop {
        let limit = watch.until_expiry().min(stream::SAFETY_RECHECK);
        tokio::select! {
            _ = &mut gone => return,
            () = stream::notified(&mut withdrawals) => {}
            () = stream::stopped(&mut stop) => {}
            () = tokio::time::sleep(limit) => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut shared = lock(&shared);
        let Some(work) = shared.work.as_mut() else {
            return;
        };
        if let Err(reason) = work.sink.check() {
            shared.watcher_stop = Some(stop);
            end(&mut shared, reason);
            return;
        }
    }
}

impl Drop for Puller {
    /// The client went away (or the connection broke): the stream ends as `client_closed`
    /// unless it had already ended.
    fn drop(&mut self) {
        end(&mut lock(&self.shared), EndReason::ClientClosed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::Redactor;
    use crate::stream::tests::FakeStore;
    use loggate_core::grant::unix_now;
    use loggate_proto as pb;
    use prost::Message;
    use std::io::Write;

    /// How a test stream ended, as its `done` saw it.
    #[derive(Default)]
    struct Record {
        ended: Option<(EndReason, u64, u64)>,
        /// The sender that tells the response its record is written (held until the test
        /// drops it).
        recorded: Option<oneshot::Sender<()>>,
        _keep: Option<Keep>,
    }

    struct Served {
        rt: tokio::runtime::Runtime,
        store: Arc<FakeStore>,
        puller: Option<Puller>,
        record: Arc<Mutex<Record>>,
        _file: tempfile::NamedTempFile,
    }

    fn redactor() -> Arc<Redactor> {
        Arc::new(Redactor::default_profile())
    }

    /// A pulled `cat` of a new file holding `content`, on a runtime of one worker.
    fn serve(content: &[u8], budget: Option<Arc<QueueBudget>>) -> Served {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let mut file = tempfile::NamedTempFile::new().expect("tempfile");
        file.write_all(content).expect("write");
        let store = FakeStore::valid();
        let plan = stream::tests::plan_of(&file, content.len());
        assert!(Puller::serves(&plan));
        let watch = GrantWatch {
            grants: store.clone(),
            grant_id: "g-1".into(),
            not_after: unix_now() + 3600,
            path_glob_hint: "/var/log/*.log".into(),
        };
        let parts = SinkParts {
            withdrawals: watch.grants.subscribe(),
            watch,
            stop: watch::channel(false).1,
            budget,
            sharer: None,
        };
        let record = Arc::new(Mutex::new(Record::default()));
        let seen = record.clone();
        let done: Done = Box::new(move |finished, keep, recorded| {
            let mut seen = seen.lock().expect("lock");
            seen.ended = Some((finished.reason, finished.bytes, finished.bytes_read));
            seen.recorded = Some(recorded);
            seen._keep = Some(keep);
        });
        let puller = {
            let _entered = rt.enter();
            Puller::start(plan, parts, done)
        };
        Served {
            rt,
            store,
            puller: Some(puller),
            record,
            _file: file,
        }
    }

    impl Served {
        /// One poll of the response, as HTTP/2 makes it.
        fn poll(&mut self) -> Poll<Option<Item>> {
            let puller = self.puller.as_mut().expect("the response");
            let waker = Waker::noop();
            let _entered = self.rt.enter();
            puller.poll_next(&mut Context::from_waker(waker))
        }

        /// The next item, waiting for it (a read on the pool, a share of the budget) at most
        /// `within` (`None` then).
        fn next_within(&mut self, within: Duration) -> Option<Option<Item>> {
            let puller = self.puller.as_mut().expect("the response");
            self.rt.block_on(async {
                let next = std::future::poll_fn(|cx| puller.poll_next(cx));
                tokio::time::timeout(within, next).await.ok()
            })
        }

        fn next(&mut self) -> Option<Item> {
            self.next_within(Duration::from_secs(10))
                .expect("the next item within 10 s")
        }

        /// Tells the response its record is written (if it has one yet).
        fn record_written(&self) {
            drop(self.record.lock().expect("lock").recorded.take());
        }

        /// Every message's content, and the final status; the record told written once the
        /// stream has ended.
        fn read_all(&mut self) -> (Vec<u8>, Option<Status>) {
            let mut content = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                assert!(Instant::now() < deadline, "the stream never ended");
                match self.next_within(Duration::from_millis(100)) {
                    None => {
                        if self.ended().is_some() {
                            self.record_written();
                        }
                    }
                    Some(Some(Ok(frame))) => content.extend(data_of(&frame)),
                    Some(Some(Err(status))) => {
                        assert!(self.next().is_none(), "nothing after the status");
                        return (content, Some(status));
                    }
                    Some(None) => return (content, None),
                }
            }
        }

        fn ended(&self) -> Option<(EndReason, u64, u64)> {
            self.record.lock().expect("lock").ended.clone()
        }

        fn work<R>(&self, f: impl FnOnce(&mut Work) -> R) -> R {
            let puller = self.puller.as_ref().expect("the response");
            f(lock(&puller.shared).work.as_mut().expect("running"))
        }
    }

    fn data_of(frame: &[u8]) -> Vec<u8> {
        match pb::ReadLogChunk::decode(&frame[5..])
            .expect("a ReadLogChunk")
            .item
        {
            Some(pb::read_log_chunk::Item::Data(d)) => d,
            other => panic!("not data: {other:?}"),
        }
    }

    /// What the redaction makes of `content` in one pass.
    fn redacted(content: &[u8]) -> Vec<u8> {
        let mut pipeline = Pipeline::new(Some(redactor()), 64 * 1024);
        let mut out = Vec::new();
        pipeline.push(content, &mut |_| true, &mut out);
        pipeline.finish(&mut |_| true, &mut out);
        out
    }

    /// Lines with secrets the default profile removes, and decoys it keeps, past several reads.
    fn a_log(bytes: usize) -> Vec<u8> {
        let mut log = Vec::new();
        let mut i = 0u64;
        while log.len() < bytes {
            log.extend_from_slice(
                format!(
                    "2026-12-06T06:{:02}:00Z INFO request {i} token=ghp_{:036} from 10.0.{}.{}\n",
                    i % 60,
                    i,
                    i % 250,
                    i % 200
                )
                .as_bytes(),
            );
            i += 1;
        }
        log.extend_from_slice(b"a last line without its newline");
        log
    }

    #[test]
    fn a_cat_is_served_whole_and_redacted_and_ends_cleanly_only_once_recorded() {
        let content = a_log(300 * 1024);
        let mut s = serve(&content, None);
        let mut got = Vec::new();
        // Every message, then nothing until the record is written.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match s.next_within(Duration::from_millis(100)) {
                Some(Some(Ok(frame))) => got.extend(data_of(&frame)),
                None if s.ended().is_some() => break,
                None => assert!(Instant::now() < deadline, "the stream never ended"),
                other => panic!("the end came before the record: {other:?}"),
            }
        }
        assert_eq!(
            s.ended(),
            Some((EndReason::Eof, got.len() as u64, content.len() as u64))
        );
        assert!(s.poll().is_pending(), "a clean end before the record");
        s.record_written();
        assert!(s.next().is_none(), "the clean end, once recorded");
        assert_eq!(got, redacted(&content));
        assert_ne!(got, content, "something was redacted");
    }

    /// Where `preadv2(RWF_NOWAIT)` is refused (a filesystem without the flag, a seccomp
    /// filter without the call, an old libc), every read goes to the blocking pool and the
    /// stream serves the same; where the page cache lacks a read (`EAGAIN`), that read goes
    /// there and the next tries the cache again.
    #[test]
    fn reads_the_page_cache_cannot_answer_go_to_the_pool_and_serve_the_same() {
        fn refused(_: i32, _: &mut [u8], _: u64) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::EPERM))
        }
        fn not_cached(_: i32, _: &mut [u8], _: u64) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::EAGAIN))
        }
        let content = a_log(300 * 1024);
        for (read, nowait_after) in [
            (refused as fn(i32, &mut [u8], u64) -> _, false),
            (not_cached, true),
        ] {
            let mut s = serve(&content, None);
            s.work(|work| work.read_nowait = read);
            let mut got = match s.next() {
                Some(Ok(frame)) => data_of(&frame),
                other => panic!("the first message: {other:?}"),
            };
            assert_eq!(s.work(|work| work.nowait), nowait_after);
            let (rest, status) = s.read_all();
            assert!(status.is_none(), "{status:?}");
            got.extend(rest);
            assert_eq!(got, redacted(&content));
            assert_eq!(s.ended().map(|e| e.0), Some(EndReason::Eof));
        }
    }

    /// HTTP/2 does not poll a response its reader does not read: the stream's own task cuts it
    /// at the revocation, closes it and hands over its record; the reader then gets the cut.
    #[test]
    fn a_reader_that_stops_reading_is_cut_at_revocation_without_a_poll() {
        cut_without_a_poll(FakeStore::revoke, EndReason::GrantRevoked, "was revoked");
    }

    /// The same at the grant's end (the store's clock moved past it, the task woken as by
    /// its own timer at `not_after`).
    #[test]
    fn a_reader_that_stops_reading_is_cut_at_expiry_without_a_poll() {
        cut_without_a_poll(FakeStore::expire, EndReason::GrantExpired, "expired");
    }

    fn cut_without_a_poll(cut: fn(&FakeStore), reason: EndReason, says: &str) {
        let content = a_log(4 << 20);
        let mut s = serve(&content, None);
        assert!(matches!(s.next(), Some(Ok(_))));
        cut(&s.store);
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.ended().is_none() {
            assert!(Instant::now() < deadline, "never cut");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (ended, _, read) = s.ended().expect("ended");
        assert_eq!(ended, reason);
        assert!(
            read <= (READS_PER_POLL * CHUNK) as u64,
            "read ahead: {read}"
        );
        assert!(s.poll().is_pending(), "the cut before the record");
        s.record_written();
        match s.next() {
            Some(Err(status)) => {
                assert_eq!(status.code(), tonic::Code::Aborted);
                assert!(status.message().contains(says), "{status:?}");
                assert!(status.metadata().get("loggate-end").is_none());
            }
            other => panic!("not the cut: {other:?}"),
        }
        assert!(s.next().is_none());
    }

    /// Review of the pull path, H1: reads that make no message (the body of a private key
    /// whose END never comes) ran through the whole file in one poll of the runtime's thread.
    #[test]
    fn reads_that_make_no_message_give_the_thread_back_between_turns() {
        let mut content = b"2026-12-06T06:00:00Z INFO before the key\n".to_vec();
        content.extend_from_slice(b"-----BEGIN RSA PRIVATE KEY-----\n");
        while content.len() < (2 << 20) {
            content.extend_from_slice(
                b"MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I\n",
            );
        }
        let mut s = serve(&content, None);
        assert!(matches!(s.next(), Some(Ok(_))), "the line before the key");
        assert!(
            s.work(|work| work.nowait),
            "the test's folder refuses preadv2(RWF_NOWAIT): every read goes to the pool"
        );
        assert!(s.poll().is_pending(), "one turn read the whole key");
        let read = s.work(|work| work.bytes_read);
        assert!(
            read <= ((READS_PER_POLL + 1) * CHUNK) as u64,
            "one turn read {read} bytes"
        );
        let (got, status) = s.read_all();
        assert!(status.is_none(), "{status:?}");
        assert!(
            !got.windows(8).any(|w| w == b"MIIEowIB"),
            "the key was served"
        );
        assert_eq!(
            s.ended().map(|e| (e.0, e.2)),
            Some((EndReason::Eof, content.len() as u64))
        );
    }

    /// A stream with its free messages out waits for the budget; its reader leaving then ends
    /// it as `client_closed`, with its record.
    #[test]
    fn a_stream_waiting_for_budget_ends_when_its_reader_leaves() {
        let content = a_log(1 << 20);
        let budget = Arc::new(QueueBudget::new(64 * 1024));
        let taken = budget.try_take(64 * 1024).expect("the whole budget");
        let mut s = serve(&content, Some(budget.clone()));
        assert!(
            s.work(|work| work.nowait),
            "the test's folder refuses RWF_NOWAIT"
        );
        // HTTP/2 holds the messages: they stay out.
        let mut out = Vec::new();
        for _ in 0..FREE_OUT {
            match s.poll() {
                Poll::Ready(Some(Ok(frame))) => out.push(frame),
                other => panic!("a free message: {other:?}"),
            }
        }
        assert!(
            s.poll().is_pending(),
            "a message beyond the free ones without budget"
        );
        assert!(s.ended().is_none());
        // One written: the stream goes on without budget.
        out.pop();
        match s.next() {
            Some(Ok(frame)) => out.push(frame),
            other => panic!("a message once one was written: {other:?}"),
        }
        assert!(s.poll().is_pending());
        drop(s.puller.take());
        assert_eq!(s.ended().map(|e| e.0), Some(EndReason::ClientClosed));
        drop((out, taken));
        assert_eq!(
            budget.available_bytes(),
            64 * 1024,
            "every share given back"
        );
    }

    /// Messages beyond the free ones hold their share of the budget while HTTP/2 holds them,
    /// and give it back when it drops them (written).
    #[test]
    fn messages_beyond_the_free_ones_hold_their_share_until_written() {
        let content = a_log(1 << 20);
        let budget = Arc::new(QueueBudget::new(1 << 20));
        let mut s = serve(&content, Some(budget.clone()));
        let mut out = Vec::new();
        for _ in 0..FREE_OUT + 3 {
            match s.next() {
                Some(Ok(frame)) => out.push(frame),
                other => panic!("a message: {other:?}"),
            }
        }
        let held = budget.total_bytes() - budget.available_bytes();
        // Three messages of a 64 KiB read each (their allocation, ~72 KiB).
        assert!(
            (3 * CHUNK..=3 * (CHUNK + CHUNK / 4)).contains(&held),
            "{held} bytes held by {} messages",
            out.len()
        );
        drop(out);
        assert_eq!(
            budget.available_bytes(),
            budget.total_bytes(),
            "shares given back"
        );
    }
}
