//! The golden corpus: `testdata/golden.jsonl` holds, for every event type, the exact bytes the
//! shaping wrote before the OCSF objects came from the event types (issue 17): the catalogue's
//! examples chained in catalogue order, then variants that take every other branch of the
//! shaping (null and absent values, a denial without an identity, a stream cut by a read error,
//! an allow-listed finding, a peer that is not an address, control characters in a path). The
//! shaping must reproduce each line byte for byte: the audit file format is a contract.
//!
//! Each line carries its own inputs (host, log name, seq, prev, time, uid and the event's
//! fields); [`reshape`] shapes them again with the current code. The corpus only grows:
//! `LOGGATE_BLESS_GOLDEN=1` appends a line for a new event type and never rewrites one.

use super::tests::{example, journal_example, shaped, stamp, JOURNAL_SHAPED};
use super::*;
use crate::audit::record_fields;
use serde_json::json;

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/audit/testdata/golden.jsonl"
);

/// Variants of the examples that take the shaping's other branches: (event, change).
fn variants() -> Vec<(&'static str, Map<String, Value>)> {
    let with = |name: &'static str, change: Value| {
        let mut f = example(name);
        for (k, v) in change.as_object().cloned().unwrap_or_default() {
            f.insert(k, v);
        }
        (name, f)
    };
    vec![
        with(
            "read.denied",
            json!({"subject": null, "key_sha256": null, "peer": null, "path": null,
                   "path_bytes": null, "reason_code": "suppressed",
                   "reason": "12 denials left out", "suppressed_before": 12}),
        ),
        with(
            "read.denied",
            json!({"peer": "unix:/run/x.sock", "path": "/var/log/a\nb\u{1b}[31m.log",
                   "grant_id": "g-0000000000000001", "reason_code": "grant_expired",
                   "path_sha256": "00ff"}),
        ),
        with(
            "read.allowed",
            json!({"peer": null, "pattern": null, "since_ms": null, "mode": "tail_follow"}),
        ),
        with(
            "read.finished",
            json!({"end_reason": "read_error", "error": "Input/output error (os error 5)",
                   "redactions": {}, "peer": "[::1]:4000"}),
        ),
        with(
            "read.finished",
            json!({"end_reason": "grant_revoked", "redactions": {"email": 1, "jwt": 2}}),
        ),
        with(
            "bypass.finding",
            json!({"expected": true, "severity": "low", "allow_rule": "/usr/bin/vector",
                   "subject": "spiffe://loggate.local/user/alice", "tid": null}),
        ),
        with(
            "bypass.read",
            json!({"tid": null, "ppid": null, "uid": null, "gid": null, "user": null,
                   "comm": null, "exe": null, "cmdline": null, "process_exited": true,
                   "cgroup_id": null, "cgroup": null, "path": null, "fd": null, "flags": null,
                   "hook": "fanotify", "subject": "spiffe://loggate.local/user/bob",
                   "holds_grant": true, "grant_ids": ["g-1"], "finding_uid": null,
                   "severity": "low", "expected": true}),
        ),
        with(
            "bypass.read_repeated",
            json!({"uid": null, "comm": null, "path": null, "opened_name": "",
                   "read_seq": null, "severity": "low"}),
        ),
        with(
            "bypass.held_open",
            json!({"ppid": null, "uid": null, "user": null, "comm": null, "exe": null,
                   "cmdline": null, "cgroup": null, "severity": "low", "expected": true}),
        ),
        with(
            "bypass.left_roots",
            json!({"new_path": null, "move_hook": null, "move_name": null,
                   "moved_by_pid": null, "moved_by_uid": null, "moved_by_user": null,
                   "moved_by_comm": null, "moved_by_exe": null, "moved_by_cmdline": null}),
        ),
        with(
            "access.approved",
            json!({"grant_id": null, "approvals_needed": 2, "comment": ""}),
        ),
        with("grant.revoked", json!({"subject": null, "revision": null})),
        with(
            "grant.issued",
            json!({"hosts": [], "labels": ["env=prod"], "paths": []}),
        ),
        with(
            "tls.refused",
            json!({"peer": null, "reason_code": "suppressed", "claimed_subject": null,
                   "suppressed_before": 60, "service": "loggate controller"}),
        ),
        with(
            "access.break_glass",
            json!({"request_id": null, "role": null, "how": "grant_issue",
                   "issuer": "spiffe://loggate.local/user/admin"}),
        ),
        with("policy.refused", json!({"kept_sha256": null})),
        with(
            "agent.started",
            json!({"bypass_mode": "off", "bypass_hooks": [], "bypass_hooks_missing": null,
                   "bypass_fd_lookup": null, "bypass_protected": null,
                   "bypass_ia32_syscalls": null, "bypass_ia32_seen": null, "bypass_notes": [],
                   "bypass_fallback_reason": "lsm: refused; fentry: refused"}),
        ),
        with(
            "audit.checkpoint_conflict",
            json!({"conflict": "sequence_went_backwards", "held_sealed_seq": 900,
                   "held_head": null}),
        ),
        with(
            "audit.checkpoint_key_enrolled",
            json!({"how": "configured", "replaces": "ed25519:0000000000000000"}),
        ),
        with(
            "audit.checkpoint_refused",
            json!({"agent_id": "", "reason_code": "suppressed"}),
        ),
        with(
            "notify.failed",
            json!({"attempts": 0, "error": "the queue was full"}),
        ),
    ]
}

/// Variants added after the corpus was first written, each appended once by
/// `LOGGATE_BLESS_GOLDEN=1` (when no line has its event and fields) and then kept like every
/// line: the journal's shape of the `read.*` events (a `Journal Unit` resource).
fn later_variants() -> Vec<(&'static str, Map<String, Value>)> {
    JOURNAL_SHAPED
        .into_iter()
        .map(|name| (name, journal_example(name)))
        .collect()
}

/// Whether the corpus has a line of event `name` with exactly `fields` (besides the chain).
fn has_line(corpus: &str, name: &str, fields: &Map<String, Value>) -> bool {
    corpus
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|record| {
            crate::audit::event_name(&record) == Some(name)
                && record_fields(&record).is_some_and(|f| {
                    let mut f = f.clone();
                    f.remove("seq");
                    f.remove("prev");
                    &f == fields
                })
        })
}

/// Shapes one golden line's inputs again with the current code.
fn reshape(record: &Value) -> Vec<u8> {
    let mut fields = record_fields(record).expect("unmapped.loggate").clone();
    let seq = fields.remove("seq").and_then(|v| v.as_u64()).expect("seq");
    let prev = fields.remove("prev").expect("prev");
    let prev = prev.as_str().expect("prev is text");
    let name = crate::audit::event_name(record).expect("event_code");
    let host = record["device"]["hostname"].as_str().expect("host");
    let log_name = record["metadata"]["log_name"].as_str().expect("log_name");
    let stamp = Stamp {
        time_ms: record["time"].as_i64().expect("time"),
        uid: record["metadata"]["uid"].as_str().expect("uid").to_string(),
    };
    let source = Source {
        host,
        log_name: log_name.into(),
    };
    shaped(name, &source, seq, prev, fields, stamp)
}

/// The corpus as the current code writes it: the chained examples, then the variants.
fn corpus() -> String {
    let mut out: String = super::tests::example_lines()
        .into_iter()
        .map(|l| l + "\n")
        .collect();
    let mut prev = "0".repeat(64);
    for (i, (name, fields)) in variants().into_iter().enumerate() {
        let kind = event_type(name).expect("a catalogued event");
        let host = if kind.writers == "controller" {
            "controller"
        } else {
            "web-1"
        };
        let bytes = shaped(
            name,
            &Source::new(host, Path::new("audit.jsonl")),
            1000 + i as u64,
            &prev,
            fields,
            stamp(100 + i),
        );
        prev = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        out.push_str(std::str::from_utf8(&bytes).expect("utf-8"));
        out.push('\n');
    }
    out
}

/// The event names the corpus has lines of.
fn kinds_in(corpus: &str) -> std::collections::BTreeSet<String> {
    corpus
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|r| crate::audit::event_name(&r).map(str::to_string))
        .collect()
}

/// The corpus with a line appended for every catalogued event type it lacks (its example,
/// shaped by the current code). Existing lines are never rewritten: they are the contract.
fn appended(existing: &str) -> String {
    if existing.is_empty() {
        return corpus();
    }
    let have = kinds_in(existing);
    let mut out = existing.to_string();
    for (i, kind) in CATALOGUE.iter().enumerate() {
        if have.contains(kind.name) {
            continue;
        }
        let host = if kind.writers == "controller" {
            "controller"
        } else {
            "web-1"
        };
        let bytes = shaped(
            kind.name,
            &Source::new(host, Path::new("audit.jsonl")),
            2000 + i as u64,
            &"0".repeat(64),
            example(kind.name),
            stamp(200 + i),
        );
        out.push_str(std::str::from_utf8(&bytes).expect("utf-8"));
        out.push('\n');
    }
    for (i, (name, fields)) in later_variants().into_iter().enumerate() {
        if has_line(&out, name, &fields) {
            continue;
        }
        let bytes = shaped(
            name,
            &Source::new("web-1", Path::new("audit.jsonl")),
            3000 + i as u64,
            &"0".repeat(64),
            fields,
            stamp(300 + i),
        );
        out.push_str(std::str::from_utf8(&bytes).expect("utf-8"));
        out.push('\n');
    }
    out
}

/// The corpus with each line whose event gained fields since it was written given the
/// example's values of those fields, and reshaped; lines with every field are kept as they are.
/// `LOGGATE_BLESS_GOLDEN=new-fields`: for a change that adds fields to an existing event (old
/// files still verify: readers parse JSON), reviewed in the diff like any bless.
fn with_new_fields(existing: &str) -> String {
    let mut out = String::new();
    for line in existing.lines() {
        let mut record: Value = serde_json::from_str(line).unwrap();
        let name = crate::audit::event_name(&record)
            .expect("event_code")
            .to_string();
        let fields = record["unmapped"]["loggate"]
            .as_object_mut()
            .expect("unmapped.loggate");
        let mut added = false;
        for (key, value) in example(&name) {
            if !fields.contains_key(&key) {
                fields.insert(key, value);
                added = true;
            }
        }
        if added {
            out.push_str(std::str::from_utf8(&reshape(&record)).expect("utf-8"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[test]
fn golden_corpus_is_reproduced_byte_for_byte() {
    let golden = std::fs::read_to_string(GOLDEN).unwrap_or_default();
    if std::env::var("LOGGATE_BLESS_GOLDEN").as_deref() == Ok("new-fields") {
        // An event gained fields: its lines get the example's values for the fields they lack
        // (and only those), reshaped; the shaping of every field they had stays checked.
        std::fs::write(GOLDEN, with_new_fields(&golden)).unwrap();
        return;
    }
    if std::env::var_os("LOGGATE_BLESS_GOLDEN").is_some() {
        // A new event type gets its line; no existing line changes.
        std::fs::write(GOLDEN, appended(&golden)).unwrap();
        return;
    }
    let kinds = kinds_in(&golden);
    for (n, line) in golden.lines().enumerate() {
        let record: Value = serde_json::from_str(line).unwrap();
        let again = reshape(&record);
        assert!(
            again == line.as_bytes(),
            "golden line {} differs:\nwas: {line}\nnow: {}",
            n + 1,
            String::from_utf8_lossy(&again)
        );
    }
    for (name, fields) in later_variants() {
        assert!(
            has_line(&golden, name, &fields),
            "no golden line of the variant {name} {fields:?}: run `LOGGATE_BLESS_GOLDEN=1 cargo \
             test -p loggate-core golden`, which appends one, and commit it"
        );
    }
    for kind in CATALOGUE {
        assert!(
            kinds.contains(kind.name),
            "no golden line of {}: run `LOGGATE_BLESS_GOLDEN=1 cargo test -p loggate-core \
             golden`, which appends one, and commit it",
            kind.name
        );
    }
}
