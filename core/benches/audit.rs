//! Durable audit events per second on this disk, three ways in one run: the group-committing
//! writer with 64 concurrent writers that each wait for their record (reads: audit before
//! bytes); one writer of deferred events that the flusher syncs in batches (eBPF observations),
//! the round ending with a waited append so every event counted is durable; and one `fdatasync`
//! per event (the writer used by a single thread, what the audit log did before group commit). `cargo xtask bench audit` runs this pinned to
//! one core and prints the ratio.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loggate_core::audit::events::ReadAllowed;
use loggate_core::audit::{AuditLog, CheckpointKey, CheckpointPolicy, SharedAuditLog};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writers appending at once, as the agent's concurrent reads do.
const WRITERS: u64 = 64;
const GROUP_EVENTS: u64 = 8192;
const SINGLE_EVENTS: u64 = 256;
const DEFERRED_EVENTS: u64 = 100_000;

/// A `read.allowed` event.
fn event(i: u64) -> ReadAllowed {
    ReadAllowed {
        subject: "spiffe://loggate.local/user/alice".into(),
        key_sha256: "5f2b0c6e9d4a8b7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d".into(),
        peer: Some("10.0.3.17:51234".into()),
        grant_id: "01JDZ8W6Q3TQ6J5V5N9G8K2M4R".into(),
        path: "/var/log/app/api.log".into(),
        resource_kind: Default::default(),
        mode: "tail_follow",
        pattern: None,
        since_ms: None,
        until_ms: None,
        redaction_profile: "default".into(),
        inode: i,
        device: 65024,
        size: 4873,
    }
}

fn open(dir: &Path) -> AuditLog {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("bench directory");
    let key = CheckpointKey::load_or_create(&dir.join("audit.key")).expect("checkpoint key");
    AuditLog::open(&dir.join("audit.jsonl"), "bench")
        .expect("audit log")
        .with_checkpoints(key, CheckpointPolicy::default())
}

fn bench_dir(name: &str) -> PathBuf {
    // Under target/, on the disk the project lives on (not a tmpfs /tmp).
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench/audit")
        .join(name)
}

fn durable_events(c: &mut Criterion) {
    let mut group = c.benchmark_group("audit_durable_events");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));

    group.throughput(Throughput::Elements(GROUP_EVENTS));
    group.bench_function("group_commit_64_writers", |b| {
        b.iter_custom(|iters| {
            let log = Arc::new(SharedAuditLog::new(open(&bench_dir("group"))).expect("log"));
            let start = Instant::now();
            for _ in 0..iters {
                std::thread::scope(|s| {
                    for w in 0..WRITERS {
                        let log = log.clone();
                        s.spawn(move || {
                            for i in 0..GROUP_EVENTS / WRITERS {
                                log.append(&event(w * 1_000_000 + i)).expect("append");
                            }
                        });
                    }
                });
            }
            start.elapsed()
        })
    });

    group.throughput(Throughput::Elements(DEFERRED_EVENTS));
    group.bench_function("deferred_1_writer", |b| {
        b.iter_custom(|iters| {
            let log = SharedAuditLog::new(open(&bench_dir("deferred"))).expect("log");
            let start = Instant::now();
            for _ in 0..iters {
                for i in 0..DEFERRED_EVENTS - 1 {
                    log.append_deferred(&event(i)).expect("append");
                }
                // The last one waits for the disk: every event of the round is durable.
                log.append(&event(DEFERRED_EVENTS)).expect("append");
            }
            start.elapsed()
        })
    });

    group.throughput(Throughput::Elements(SINGLE_EVENTS));
    group.bench_function("fsync_per_event", |b| {
        b.iter_custom(|iters| {
            let mut log = open(&bench_dir("single"));
            let start = Instant::now();
            for _ in 0..iters {
                for i in 0..SINGLE_EVENTS {
                    log.append(&event(i)).expect("append");
                }
            }
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, durable_events);
criterion_main!(benches);
