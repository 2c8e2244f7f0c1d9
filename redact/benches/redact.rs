//! `cargo bench -p loggate-redact --bench redact`: the redaction engine over an in-memory sample,
//! next to a plain `regex` alternation of the eight comparison patterns in the same group, so
//! the ratio shows without ripgrep installed. The single-core comparison with ripgrep and sed
//! on a 1 GiB corpus is `cargo xtask bench redact` (docs/performance.md).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loggate_redact::{Builtin, Detector, Mode, Pipeline, Redactor};
use std::hint::black_box;
use std::sync::Arc;

/// The eight patterns of `shared/notes/redaction.md` §7, as one alternation.
const ALTERNATION: &str = r#"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}|\b[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\b|[Bb]earer [A-Za-z0-9._~+/=-]+|eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+|\b(AKIA|ASIA)[A-Z0-9]{16}\b|\b[0-9]([ -]?[0-9]){12,18}\b|(password|passwd|pwd)=[^&[:space:]"]+|-----BEGIN [A-Z ]*PRIVATE KEY-----"#;

const BENCH8: [Builtin; 8] = [
    Builtin::Email,
    Builtin::Ipv4,
    Builtin::Bearer,
    Builtin::Jwt,
    Builtin::AwsAccessKey,
    Builtin::Card,
    Builtin::Secret,
    Builtin::PrivateKey,
];

/// About 4 MiB of mixed log lines, one in 25 with a sensitive value, the rest with look-alikes
/// (epoch-ms timestamps, 16-digit ids, UUIDs, version strings, trace ids).
fn sample() -> Vec<u8> {
    let benign = [
        r#"{"ts":"2026-11-27T07:49:22.123Z","level":"INFO","logger":"com.example.orders.OrderService","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","msg":"order created","order_id":"123e4567-e89b-12d3-a456-426614174000","duration_ms":37,"ts_ms":1795766400123}"#,
        "2026-11-27 07:49:22.123 INFO  [http-nio-8080-exec-7] c.e.orders.OrderController - request completed id=8812345512345678 in 12 ms (build v2.14.3, kernel 4.18.0-553.el8, commit 3f786850e387550fdab836ed7e6dc881de23001b)",
        r#"orders.example.com - - [27/Nov/2026:07:49:22 +0000] "GET /api/v1/orders/8812?page=2 HTTP/1.1" 200 5120 "-" "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36" rt=0.012"#,
        "2026-11-27 07:49:23.001 WARN  [scheduler-1] c.e.auth.SessionService - the token expired, refreshing the session",
    ];
    let sensitive = [
        "2026-11-27 07:49:24.000 INFO  [http-nio-8080-exec-2] c.e.users.UserController - signup user=jane.doe@example.com from 10.20.30.40",
        r#"{"ts":"2026-11-27T07:49:25.000Z","level":"INFO","msg":"charge card=4111111111111111 password=hunter2secret"}"#,
        "2026-11-27 07:49:26.000 DEBUG [http-nio-8080-exec-3] c.e.auth.Filter - Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U key AKIAIOSFODNN7EXAMPLE",
    ];
    let mut out = Vec::with_capacity(4 << 20);
    let mut i = 0usize;
    while out.len() < 4 << 20 {
        let line = if i % 25 == 24 {
            sensitive[(i / 25) % sensitive.len()]
        } else {
            benign[i % benign.len()]
        };
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        i += 1;
    }
    out
}

fn run_engine(redactor: &Arc<Redactor>, input: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut pipeline = Pipeline::new(Some(redactor.clone()), 64 * 1024);
    for chunk in input.chunks(64 * 1024) {
        pipeline.push(chunk, &mut |_| true, out);
    }
    pipeline.finish(&mut |_| true, out);
}

fn bench(c: &mut Criterion) {
    let input = sample();
    let default = Arc::new(Redactor::default_profile());
    let bench8 = match Redactor::new(
        BENCH8
            .iter()
            .map(|b| Detector::builtin(*b, Mode::Mask))
            .collect(),
        None,
    ) {
        Ok(r) => Arc::new(r),
        Err(e) => panic!("{e}"),
    };
    let alternation = match regex::bytes::RegexBuilder::new(ALTERNATION)
        .unicode(false)
        .build()
    {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let mut out = Vec::with_capacity(input.len() * 2);
    let mut group = c.benchmark_group("redact");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("loggate_default_profile", |b| {
        b.iter(|| run_engine(&default, black_box(&input), &mut out))
    });
    group.bench_function("loggate_8_detectors", |b| {
        b.iter(|| run_engine(&bench8, black_box(&input), &mut out))
    });
    group.bench_function("regex_alternation_8_patterns", |b| {
        b.iter(|| {
            out.clear();
            let mut last = 0;
            for m in alternation.find_iter(black_box(&input)) {
                out.extend_from_slice(&input[last..m.start()]);
                out.extend_from_slice(b"[REDACTED]");
                last = m.end();
            }
            out.extend_from_slice(&input[last..]);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
