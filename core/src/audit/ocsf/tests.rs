//! The shaping's tests, and the generator of `docs/audit-events.md`: every event type of the
//! catalogue is shaped by the real code from an example of its fields, and the document is
//! compared with what that gives. `LOGGATE_BLESS=1 cargo test -p loggate-core audit_events_doc`
//! rewrites it.

use super::*;
use crate::audit::{event_name, record_field, record_fields, verify_chain};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::fmt::Write;

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/audit-events.md");
/// 2026-11-27T08:00:00Z, the examples' first `time`.
const T0: i64 = 1_795_766_400_000;

fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("examples are objects"),
    }
}

/// A realistic value for every field of every event type (from demo and test runs).
pub(super) fn example(name: &str) -> Map<String, Value> {
    const ALICE: &str = "spiffe://loggate.local/user/alice";
    const ADMIN: &str = "spiffe://loggate.local/user/admin";
    const KEY: &str = "5f2b0c6e9d4a8b7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d";
    const GRANT: &str = "g-d0d29c925f35dd6c";
    const LOG: &str = "/var/log/app/api.log";
    let bypass = json!({
        "pid": 6434, "tid": 6434, "ppid": 6386, "uid": 65534, "gid": 65534, "user": "nobody",
        "subject": null, "comm": "cat", "exe": "/usr/bin/cat",
        "cmdline": "cat /var/log/app/api.log", "process_exited": false, "cgroup_id": 1,
        "cgroup": "/user.slice/user-0.slice/session-3.scope", "container_id": null,
        "path": LOG, "opened_name": "api.log", "matched": "file", "inode": 10182958,
        "device": "254:0", "fd": 3, "flags": "O_RDONLY|O_LARGEFILE", "hook": "openat",
        "expected": false, "allow_rule": null, "severity": "high", "holds_grant": false,
        "grant_ids": [], "grant_check": "no subject is mapped to uid 65534 (bypass.uid_subjects)",
        "finding_uid": "019ac4a1-7c80-7000-8000-0000000000aa",
        "queued": true, "opened_after_ms": 1795762790000_i64, "opened_before_ms": 1795762800000_i64,
    });
    fields(match name {
        "read.allowed" => json!({
            "subject": ALICE, "key_sha256": KEY, "peer": "127.0.0.1:51234", "grant_id": GRANT,
            "path": LOG, "mode": "grep", "pattern": "status=5\\d\\d", "since_ms": 1795762800000_i64,
            "until_ms": null, "redaction_profile": "default", "inode": 10182958,
            "device": 65024, "size": 4873,
        }),
        "bypass.held_open" => json!({
            "pid": 812, "ppid": 1, "uid": 0, "user": "root", "comm": "less",
            "exe": "/usr/bin/less", "cmdline": "less /var/log/app/api.log",
            "cgroup": "/user.slice/user-0.slice/session-3.scope", "path": LOG,
            "opened_name": "api.log", "inode": 10182958, "device": "254:0", "fd": 4,
            "flags": "O_RDONLY|O_LARGEFILE", "expected": false, "allow_rule": null,
            "severity": "high",
        }),
        "bypass.left_roots" => json!({
            "path": LOG, "new_path": "/tmp/api.log", "inode": 10182958, "device": "254:0",
            "links": 1, "move_hook": "rename", "move_name": "/tmp/api.log",
            "moved_by_pid": 7120, "moved_by_uid": 1001, "moved_by_user": "mallory",
            "moved_by_comm": "mv", "moved_by_exe": "/usr/bin/mv",
            "moved_by_cmdline": "mv /var/log/app/api.log /tmp/api.log",
        }),
        "bypass.read_repeated" => json!({
            "pid": 6434, "uid": 65534, "comm": "cat", "path": LOG, "opened_name": "api.log",
            "inode": 10182958, "device": "254:0", "repeats": 19999,
            "first_ms": 1795762800000_i64, "last_ms": 1795762801998_i64, "read_seq": 41,
            "expected": false, "severity": "high",
        }),
        "read.listed" => json!({
            "subject": ALICE, "key_sha256": KEY, "peer": "127.0.0.1:51234", "grant_ids": [GRANT],
            "path_glob": "/var/log/app/api.log*", "path_glob_bytes": 21,
            "path_glob_sha256": "3c1f0e4b2a6d8c9e7f5a1b3d5c7e9f0a2b4d6c8e0f1a3b5c7d9e1f2a4b6c8d0e",
            "files": 3, "truncated": false,
        }),
        "read.reopened" => json!({
            "subject": ALICE, "key_sha256": KEY, "peer": "127.0.0.1:51234", "grant_id": GRANT,
            "path": LOG, "inode": 10182961, "device": 65024, "size": 0,
            "previous_inode": 10182958,
        }),
        "tls.refused" => json!({
            "peer": "203.0.113.9:50122", "service": "loggate agent",
            "reason_code": "certificate_expired",
            "reason": "invalid peer certificate: certificate expired: verification time 1795766400 (UNIX), but certificate is not valid after 1577923200 (UNIX)",
            "claimed_subject": "spiffe://loggate.local/user/carol", "suppressed_before": 0,
        }),
        "read.denied" => json!({
            "subject": "spiffe://loggate.local/user/bob", "key_sha256": KEY,
            "peer": "127.0.0.1:51240", "path": LOG, "path_bytes": 20, "path_sha256": null,
            "grant_id": null, "reason_code": "no_grant",
            "reason": "you (spiffe://loggate.local/user/bob) hold no grant on agent web-1; ask an admin to issue you one",
            "suppressed_before": 0,
        }),
        "agent.status_read" => json!({
            "subject": ALICE, "key_sha256": KEY, "peer": "127.0.0.1:51250",
        }),
        "agent.status_denied" => json!({
            "subject": "spiffe://loggate.local/user/bob", "key_sha256": KEY,
            "peer": "127.0.0.1:51252", "reason_code": "not_a_status_reader",
            "reason": "spiffe://loggate.local/user/bob may not read the status of agent web-1: add \"bob\" to status_readers in its configuration",
            "suppressed_before": 0,
        }),
        "read.finished" => json!({
            "subject": ALICE, "key_sha256": KEY, "peer": "127.0.0.1:51234", "grant_id": GRANT,
            "path": LOG, "bytes": 156, "bytes_read": 160, "duration_ms": 3, "end_reason": "eof",
            "error": null,
            "redactions": { "email": 3 }, "lines_withheld": 0, "lines_cut": 0,
            "pattern_ms": 0, "key_lookback_exhausted": false,
        }),
        "grant.issued" => json!({
            "grant_id": GRANT, "subject": ALICE, "issuer": ADMIN, "hosts": ["web-1"],
            "labels": [], "paths": ["/var/log/app/*.log"], "not_before": 1795766340_i64,
            "not_after": 1795768200_i64, "reason": "INC-42", "redaction_profile": "default",
        }),
        "grant.received" => json!({
            "grant_id": GRANT, "subject": ALICE, "paths": ["/var/log/app/*.log"],
            "not_before": 1795766340_i64, "not_after": 1795768200_i64, "approver": ADMIN,
            "reason": "INC-42", "redaction_profile": "default", "revision": 7,
        }),
        "grant.rejected" => json!({
            "grant_id": "g-0c1d2e3f40516273", "reason_code": "wrong_audience",
            "reason": "the grant is for host db-1, not for agent web-1", "revision": 8,
        }),
        "grant.revoked" => json!({
            "grant_id": GRANT, "subject": ALICE, "revoked_by": ADMIN,
            "reason": "incident closed", "revision": 9,
        }),
        "grant.expired" => json!({
            "grant_id": GRANT, "subject": ALICE, "paths": ["/var/log/app/*.log"],
            "not_after": 1795768200_i64,
        }),
        "grant.dropped" => json!({
            "grant_id": GRANT,
            "reason": "the grant expired while the agent was stopped",
        }),
        "access.requested" => json!({
            "request_id": "r-5c1f0a9e3b7d2468", "subject": ALICE, "hosts": ["web-1"],
            "paths": ["/var/log/app/*.log"], "ttl_seconds": 3600, "redaction_profile": "default",
            "reason": "INC-42", "role": "payments-prod", "approval": "approvers",
            "approvals_needed": 1, "approvers": ["bob", "carol"], "expires_at": 1795769940_i64,
            "policy_sha256": "4f6c1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7",
        }),
        "access.approved" => json!({
            "request_id": "r-5c1f0a9e3b7d2468", "subject": ALICE,
            "approver": "spiffe://loggate.local/user/bob", "comment": "ok for INC-42",
            "approvals": 1, "approvals_needed": 1, "grant_id": GRANT, "policy_sha256": "4f6c1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7",
        }),
        "access.denied" => json!({
            "request_id": "r-5c1f0a9e3b7d2468", "subject": ALICE,
            "approver": "spiffe://loggate.local/user/bob", "comment": "use staging",
        }),
        "access.review_refused" => json!({
            "request_id": "r-5c1f0a9e3b7d2468", "subject": ALICE, "approver": ALICE,
            "reason_code": "self_review", "suppressed_before": 0,
        }),
        "access.request_refused" => json!({
            "subject": ALICE, "hosts": ["web-1"], "hosts_count": 1, "paths": [LOG],
            "paths_count": 1, "lists_sha256": null, "reason_code": "no_role",
            "reason": "no role of the access policy allows alice this access: role payments-prod does not cover host web-1",
            "suppressed_before": 0,
        }),
        "access.cancelled" => json!({
            "request_id": "r-5c1f0a9e3b7d2468", "subject": ALICE, "cancelled_by": ALICE,
        }),
        "access.expired" => json!({
            "request_id": "r-5c1f0a9e3b7d2468", "subject": ALICE, "approvals": 0,
            "expired_at": 1795769940_i64,
        }),
        "access.break_glass" => json!({
            "grant_id": GRANT, "request_id": "r-5c1f0a9e3b7d2468", "subject": ALICE,
            "issuer": ALICE, "how": "request", "role": "sre-oncall", "hosts": ["web-1"],
            "paths": ["/var/log/**"], "reason": "INC-43 payments down",
            "notified": ["erin"], "webhook": true, "policy_sha256": "4f6c1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7",
        }),
        "access.break_glass_reviewed" => json!({
            "grant_id": GRANT, "subject": ALICE, "approver": ADMIN,
            "comment": "INC-43 post-mortem: justified",
        }),
        "notify.failed" => json!({
            "notified_event": "access.requested", "webhook": "https://hooks.slack.com:443",
            "attempts": 5, "error": "the webhook answered 503 Service Unavailable",
            "suppressed_before": 0,
        }),
        "policy.reloaded" => json!({
            "file": "/etc/loggate/policy.toml",
            "sha256": "8d4e1c0b7a2f5e3d9c6b4a1f0e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d",
            "roles": 4, "groups": 3, "agents": 2, "triggered_by": ADMIN,
        }),
        "policy.refused" => json!({
            "file": "/etc/loggate/policy.toml",
            "reason": "/etc/loggate/policy.toml:12: role r: approval \"sometimes\" is not \"auto\", \"approvers\" or \"break_glass\"",
            "kept_sha256": "8d4e1c0b7a2f5e3d9c6b4a1f0e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d",
            "triggered_by": "sighup",
        }),
        "agent.token_created" => json!({
            "subject": ADMIN, "token_id": "3f9a0c2b7e1d", "labels": ["env=prod", "team=payments"],
            "uses": 5, "expires_at": 1795770000_i64, "reenrol": false,
        }),
        "agent.token_revoked" => json!({
            "subject": ADMIN, "token_id": "3f9a0c2b7e1d", "uses_left": 4,
        }),
        "agent.certificate_renewed" => json!({
            "subject": "spiffe://loggate.local/agent/web-7", "agent_id": "web-7",
            "serial": "6d2f1a4b8c0e3f5a7b9d1c3e5f7a9b0c", "previous_serial": "5c1e0f3a9b7d2e4f6a8c0b1d3e5f7a9b",
            "not_after": 1795939200_i64, "key_sha256": KEY,
        }),
        "user.locked" => json!({
            "subject": "spiffe://loggate.local/user/alice",
            "locked_by": "spiffe://loggate.local/user/admin",
            "reason": "laptop stolen, INC-9",
        }),
        "user.unlocked" => json!({
            "subject": "spiffe://loggate.local/user/alice",
            "unlocked_by": "spiffe://loggate.local/user/admin",
            "reason": "new laptop",
        }),
        "admin.step_up_refused" => json!({
            "subject": ADMIN, "key_sha256": KEY, "action": "grant_issue",
            "reason": "issuing grants needs a sign-in at the IdP within the last 15m: run \
                       `loggate login --fresh` and try again",
        }),
        "controller.connected" => json!({
            "address": "ctl-b.example:7443", "epoch": "9f1c2e3d4b5a69788796a5b4c3d2e1f0",
            "after_revision": 412, "after_epoch": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        }),
        "controller.refused" => json!({
            "address": "ctl-b.example:7443", "reason_code": "cluster_mismatch",
            "expected_cluster_id": "c4e1a9b27f3d5e6081c2d3e4f5a6b7c8",
            "got_cluster_id": "7d2e3f4a5b6c7d8e9f0a1b2c3d4e5f60",
        }),
        "controller.resynced" => json!({
            "from_epoch": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
            "to_epoch": "9f1c2e3d4b5a69788796a5b4c3d2e1f0", "revision": 418, "dropped": 2,
        }),
        "agent.removed" => json!({
            "subject": ADMIN, "agent_id": "web-7", "revoked_before": 1795766400_i64,
            "was_connected": true,
        }),
        "agent.enrolled" => json!({
            "subject": "spiffe://loggate.local/agent/web-7", "agent_id": "web-7",
            "peer": "10.0.4.17:40112", "service": "loggate enrolment",
            "labels": ["env=prod", "team=payments"], "serial": "5c1e0f3a9b7d2e4f6a8c0b1d3e5f7a9b",
            "not_after": 1795852800_i64, "key_sha256": KEY, "token_id": "3f9a0c2b7e1d",
            "reenrolled": false, "suppressed_before": 0,
        }),
        "agent.enrol_refused" => json!({
            "peer": "203.0.113.9:50122", "service": "loggate enrolment",
            "reason_code": "token_used_up",
            "reason": "this join token has been used as often as it allows; create a new one with loggate agent token create",
            "claimed_agent_id": "web-8", "token_id": "3f9a0c2b7e1d", "suppressed_before": 0,
        }),
        "user.key_enrolled" => json!({
            "subject": ALICE, "key_sha256": KEY, "how": "first_contact",
        }),
        "auth.sign_in" => json!({
            "subject": ALICE, "key_sha256": KEY, "peer": "203.0.113.7:50122",
            "issuer": "https://login.example.com", "idp_subject": "00u1a2b3c4",
            "email": "alice@example.com", "groups": ["sre", "payments"],
        }),
        "auth.sign_in_refused" => json!({
            "peer": "203.0.113.7:50122", "issuer": "https://login.example.com",
            "reason_code": "nonce",
            "reason": "the nonce does not commit to the certificate request's key (a token obtained for another key): run `loggate login` again",
            "key_sha256": KEY,
        }),
        "auth.certificate_issued" => json!({
            "subject": ALICE, "key_sha256": KEY, "peer": "203.0.113.7:50122",
            "serial": "5a1f0c", "not_after_ms": 1795795200000i64,
        }),
        "bypass.read" => bypass,
        "bypass.finding" => {
            let mut finding = bypass;
            finding["read_seq"] = json!(11);
            finding
        }
        "bypass.events_lost" => json!({
            "lost_total": 12, "lost_since_last": 12, "reason": "ring buffer full",
        }),
        "bypass.unavailable" => json!({
            "requested_mode": "auto",
            "reason": "neither eBPF nor fanotify is available: the agent lacks CAP_BPF and CAP_SYS_ADMIN",
        }),
        "agent.started" => json!({
            "agent_id": "web-1", "listen": "0.0.0.0:7443", "roots": ["/var/log/app"],
            "grants_loaded": 1, "revision": 7, "bypass_mode": "tracepoint",
            "bypass_fallback_reason": null,
            "bypass_hooks": ["sys_exit_open", "sys_exit_openat", "sys_exit_openat2", "sys_exit_open_by_handle_at", "io_uring_complete"],
            "bypass_hooks_missing": [], "bypass_fd_lookup": "rdonly_cast",
            "bypass_fd_lookup_reason": null, "bypass_protected": 4,
            "bypass_ia32_syscalls": "enabled", "bypass_ia32_seen": false,
            "bypass_notes": ["32-bit (int 0x80) opens are not seen in tracepoint mode and this kernel runs 32-bit syscalls: set bypass.mode = \"strict\", or boot with ia32_emulation=0 where nothing needs 32-bit programs"],
            "bypass_pins": "replaced",
            "bypass_pins_reason": "the pins were made by other objects or settings (an upgrade, or another mode)",
        }),
        "agent.stopped" => json!({ "agent_id": "web-1" }),
        "controller.started" => json!({
            "listen": "0.0.0.0:7400", "admins": ["admin"], "revision": 7,
        }),
        "controller.stopped" => json!({}),
        "audit.checkpoint" => json!({
            "origin": "web-1", "sealed_seq": 1000, "key_id": "ed25519:3fa85f6457174562",
            "head": "95decbd9138c66888f35dd40489537cd96749bb61c3cae6506119440a585a692",
            "ts_ms": 1795766460000_i64,
            "sig": "8c1f0e5d2a4b6c8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e0f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d4e6f",
        }),
        "audit.rotated" => json!({
            "previous_file": "audit.jsonl.000000016000", "previous_last_seq": 16000,
            "deleted_files": ["audit.jsonl.000000001000"],
        }),
        "audit.torn_tail_discarded" => json!({ "bytes_discarded": 14 }),
        "audit.files_deleted" => json!({
            "deleted_files": ["audit.jsonl.000000001000"], "reason": "keep_files",
        }),
        "audit.budget_exhausted" => json!({
            "budget_bytes": 5905580032_u64, "used_bytes": 5905612800_u64, "waiting_for": ["siem"],
        }),
        "audit.budget_recovered" => json!({
            "budget_bytes": 5905580032_u64, "used_bytes": 3221225472_u64,
        }),
        "audit.checkpoint_key_enrolled" => json!({
            "agent_id": "web-1", "key_id": "ed25519:3fa85f6457174562",
            "key": "ed25519:3fa85f6457174562 5d4c1b0a99e8f7d6c5b4a3928170f6e5d4c3b2a1908f7e6d5c4b3a2918070f6e",
            "how": "first_use", "replaces": null,
        }),
        "audit.checkpoint_refused" => json!({
            "agent_id": "web-2", "reason_code": "other_host",
            "reason": "agent web-2 reported checkpoints of web-1; an agent reports only its own",
        }),
        "audit.checkpoint_conflict" => json!({
            "origin": "web-1", "conflict": "head_changed", "sealed_seq": 1000,
            "head": "0b7a6c1f5e2d4a3b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b",
            "ts_ms": 1795766460000_i64, "key_id": "ed25519:3fa85f6457174562",
            "held_sealed_seq": null,
            "held_head": "95decbd9138c66888f35dd40489537cd96749bb61c3cae6506119440a585a692",
        }),
        other => panic!("no example for {other}: add one"),
    })
}

/// Fields a record leaves out at their default, which the catalogue's (file) examples
/// therefore lack: `resource_kind` of a file read (see `ReadResource`). The journal examples
/// carry it ([`journal_example`]).
const LEFT_OUT_AT_DEFAULT: &[&str] = &["resource_kind"];

/// The journal shape of the `read.*` events a journal read writes (`read.allowed`,
/// `read.denied`, `read.finished`): the catalogue's example as a read of `nginx.service`'s
/// journal.
pub(super) fn journal_example(name: &str) -> Map<String, Value> {
    let mut f = example(name);
    f.insert("path".into(), json!("journal:nginx.service"));
    f.insert("resource_kind".into(), json!("journal_unit"));
    match name {
        "read.allowed" => {
            for (k, v) in [
                ("mode", json!("journal_grep")),
                ("until_ms", Value::Null),
                ("inode", json!(0)),
                ("device", json!(0)),
                ("size", json!(0)),
            ] {
                f.insert(k.into(), v);
            }
        }
        "read.denied" => {
            f.insert("path_bytes".into(), json!(21));
            f.insert(
                "reason".into(),
                json!("you (spiffe://loggate.local/user/bob) hold no grant for the journal of nginx.service on agent web-1; ask an admin to issue you one"),
            );
        }
        "read.finished" => {
            f.insert("bytes_read".into(), Value::Null);
        }
        other => panic!("{other} has no journal shape"),
    }
    f
}

/// The events a journal read writes, which have a journal shape.
pub(super) const JOURNAL_SHAPED: [&str; 3] = ["read.allowed", "read.denied", "read.finished"];

/// Shapes `fields` as an event of the catalogue's type `name` with the real code: the fields
/// are read into the event's type (an example that is not a valid event fails here), and the
/// typed event encodes them back exactly.
pub(super) fn shaped(
    name: &str,
    source: &Source,
    seq: u64,
    prev: &str,
    fields: Map<String, Value>,
    stamp: Stamp,
) -> Vec<u8> {
    fn parse<E: serde::Deserialize<'static>>(text: &'static str) -> E {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }
    fn typed<E: AuditEvent>(
        read: fn(&'static str) -> E,
        source: &Source,
        seq: u64,
        prev: &str,
        fields: Map<String, Value>,
        stamp: Stamp,
    ) -> Vec<u8> {
        // Events borrow their codes (`&'static str`): read them from text that lives on.
        let text: &'static str =
            Box::leak(serde_json::to_string(&fields).unwrap().into_boxed_str());
        let event = read(text);
        let encoded = serde_json::to_value(&event).unwrap();
        assert_eq!(
            encoded,
            Value::Object(fields.clone()),
            "{} round trip",
            E::TYPE.name
        );
        line(source, seq, prev, &event, &fields, stamp).unwrap()
    }
    use crate::audit::events::*;
    macro_rules! by_name {
        ($($ty:ident),* $(,)?) => {
            match name {
                $(n if n == $ty::TYPE.name => typed(parse::<$ty>, source, seq, prev, fields, stamp),)*
                // A flattened struct cannot borrow its codes: the read, then its seq.
                n if n == BypassFinding::TYPE.name => typed(
                    |text| BypassFinding {
                        read: parse(text),
                        read_seq: parse::<Map<String, Value>>(text)["read_seq"].as_u64().unwrap(),
                    },
                    source,
                    seq,
                    prev,
                    fields,
                    stamp,
                ),
                other => panic!("{other} is not in the test's list of event types: add it"),
            }
        };
    }
    by_name!(
        ReadAllowed,
        ReadReopened,
        ReadListed,
        ReadDenied,
        ReadFinished,
        AgentStatusRead,
        AgentStatusDenied,
        GrantIssued,
        GrantReceived,
        GrantRejected,
        GrantRevoked,
        GrantExpired,
        GrantDropped,
        AccessRequested,
        AccessApproved,
        AccessDenied,
        AccessReviewRefused,
        AccessRequestRefused,
        AccessCancelled,
        AccessExpired,
        AccessBreakGlass,
        AccessBreakGlassReviewed,
        PolicyReloaded,
        PolicyRefused,
        NotifyFailed,
        UserKeyEnrolled,
        AuthSignIn,
        AuthSignInRefused,
        AuthCertificateIssued,
        TlsRefused,
        AgentTokenCreated,
        AgentTokenRevoked,
        AgentEnrolled,
        AgentEnrolRefused,
        AgentRemoved,
        UserLocked,
        UserUnlocked,
        AdminStepUpRefused,
        AgentCertificateRenewed,
        ControllerConnected,
        ControllerRefused,
        ControllerResynced,
        BypassRead,
        BypassReadRepeated,
        BypassHeldOpen,
        BypassLeftRoots,
        BypassEventsLost,
        BypassUnavailable,
        AgentStarted,
        AgentStopped,
        ControllerStarted,
        ControllerStopped,
        AuditCheckpoint,
        AuditRotated,
        AuditFilesDeleted,
        AuditBudgetExhausted,
        AuditBudgetRecovered,
        AuditCheckpointKeyEnrolled,
        AuditCheckpointRefused,
        AuditCheckpointConflict,
        AuditTornTailDiscarded,
    )
}

/// The time and uid of example `i`. The uid's random bytes repeat `i` modulo 256 (the golden
/// corpus numbers appended lines from 200 on, so a catalogue of more than 55 types passes 255;
/// the time keeps them apart).
pub(super) fn stamp(i: usize) -> Stamp {
    let ms = T0 + 1000 * i64::try_from(i).unwrap();
    let uid = uuid::Builder::from_unix_timestamp_millis(
        u64::try_from(ms).unwrap(),
        &[u8::try_from(i % 256).unwrap(); 10],
    )
    .into_uuid();
    Stamp {
        time_ms: ms,
        uid: uid.to_string(),
    }
}

/// The example line of each event type, chained in catalogue order as if one file held them.
pub(super) fn example_lines() -> Vec<String> {
    let mut prev = "0".repeat(64);
    CATALOGUE
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            let host = if kind.writers == "controller" {
                "controller"
            } else {
                "web-1"
            };
            let path = if host == "controller" {
                Path::new("controller-audit.jsonl")
            } else {
                Path::new("audit.jsonl")
            };
            let mut fields = example(kind.name);
            if kind.name == "audit.checkpoint" {
                // A checkpoint seals what precedes it (its signature is not checked here).
                fields["sealed_seq"] = json!(i);
                fields["head"] = json!(prev);
            }
            let bytes = shaped(
                kind.name,
                &Source::new(host, path),
                i as u64 + 1,
                &prev,
                fields,
                stamp(i),
            );
            prev = hex::encode(Sha256::digest(&bytes));
            String::from_utf8(bytes).unwrap()
        })
        .collect()
}

const INTRO: &str = "# Audit events

<!-- Generated by `LOGGATE_BLESS=1 cargo test -p loggate-core audit_events_doc` from the event
types in core/src/audit/events.rs; a test fails when this file and the code differ. Edit the
code. -->

Every line of an audit file (an agent's `audit.jsonl`, the controller's `controller-audit.jsonl`)
is one JSON object, an [OCSF](https://schema.ocsf.io) **1.8.0** event whose first key,
`unmapped`, leads with the hash chain. See [audit.md](audit.md) for the chain, checkpoints and
verification.

| attribute | on every record |
| --- | --- |
| `unmapped.loggate.seq`, `unmapped.loggate.prev` | always the line's first two values: the sequence number (+1 per line, across restarts) and the lowercase hex SHA-256 of the previous line's exact bytes (64 zeros on the first line). Files written by earlier builds have them as the top-level `seq` and `prev` (see audit.md, Layout versions) |
| `class_uid`, `class_name`, `category_uid`, `category_name` | the OCSF class (table below) |
| `activity_id`, `activity_name`, `type_uid`, `type_name` | the activity; `type_uid` = `class_uid` × 100 + `activity_id` |
| `severity_id`, `severity` | 1 Informational … 4 High |
| `status_id`, `status`, `status_detail` | 1 Success or 2 Failure (findings: 1 New); `status_detail` holds the reason code of a failure |
| `time` | when it was written, epoch milliseconds (UTC) |
| `metadata` | `version` `1.8.0`; `product` (`loggate`, its version); `uid`, a UUIDv7 unique to the record (SIEMs de-duplicate on it); `sequence` = `seq`; `event_code`, loggate's event name; `log_name` (the audit file's name) and `log_provider`; `correlation_uid` = the grant id, when there is one |
| `device` | the host that wrote it: `hostname` = the agent id (or `controller`), `type_id` 1 Server |
| `unmapped.loggate` | the chain's `seq` and `prev`, then every field loggate records for the event, unchanged (the tables below). Chain and checkpoint fields stay here until OCSF's `record_integrity` profile is released |

The person is identified wherever loggate knows them: `actor.user` (reads; `uid` = their SPIFFE id,
`programmatic_credentials[0].uid` = the SHA-256 of their certificate key) or `user` (grants,
enrolment), and in `unmapped.loggate.subject`. Null fields are left out of the OCSF attributes
and kept as null in `unmapped.loggate`. Every record has a one-line `message` and `observables`
(only true values). Keys come in a fixed order (`unmapped` first, the chain leading it, then
loggate's own fields sorted; then the classification); the chain hashes the exact bytes, so
nothing needs to be canonicalised to verify it. Every example below conforms to the official OCSF
1.8.0 schema (a test checks it).

Code that reads records uses `loggate_core::audit::{event_name, chain_link, record_seq,
record_field, record_fields}`, never the layout.

";

fn render() -> String {
    let lines = example_lines();
    let mut doc = String::from(INTRO);
    doc.push_str("| event | written by | OCSF class | activity | status | severity |\n");
    doc.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for kind in CATALOGUE {
        let status = match kind.outcome {
            Outcome::Success => "Success",
            Outcome::Failure => "Failure",
            Outcome::StreamEnd => "Success; Failure on `read_error`, `decompression_limit`",
            Outcome::NewFinding => "New",
        };
        let severity = match kind.severity {
            Severity::Fixed(n) => SEVERITY_NAMES[usize::from(n)].to_string(),
            Severity::FromField => "Low if allow-listed, else High".to_string(),
        };
        let _ = writeln!(
            doc,
            "| [`{name}`](#{anchor}) | {} | {} {} | {} {} | {status} | {severity} |",
            kind.writers,
            kind.class.uid(),
            kind.class.name(),
            kind.activity_id,
            kind.activity_name,
            name = kind.name,
            anchor = kind.name.replace('.', ""),
        );
    }
    for (kind, line) in CATALOGUE.iter().zip(&lines) {
        let record: Value = serde_json::from_str(line).unwrap();
        const COMMON: &[&str] = &[
            "class_uid",
            "class_name",
            "category_uid",
            "category_name",
            "activity_id",
            "activity_name",
            "type_uid",
            "type_name",
            "severity_id",
            "severity",
            "status_id",
            "status",
            "status_detail",
            "time",
            "metadata",
            "device",
            "unmapped",
        ];
        let attributes: Vec<&str> = record
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|k| !COMMON.contains(k))
            .collect();
        let _ = write!(
            doc,
            "\n## `{}`\n\n{} Written by the {}. OCSF {} `{}` ({}), activity {} `{}`.",
            kind.name,
            kind.about.trim(),
            kind.writers.replace(", ", " and the "),
            kind.class.name(),
            kind.class.uid(),
            kind.class.category().1,
            kind.activity_id,
            kind.activity_name,
        );
        if !attributes.is_empty() {
            let list: Vec<String> = attributes.iter().map(|a| format!("`{a}`")).collect();
            let _ = write!(doc, " Class attributes filled: {}.", list.join(", "));
        }
        doc.push_str("\n\n| field | meaning |\n| --- | --- |\n");
        for (field, meaning) in kind.fields {
            let _ = writeln!(doc, "| `{field}` | {} |", meaning.trim());
        }
        if kind.class == Class::DetectionFinding {
            doc.push_str("| *every field of `bypass.read`* | copied from the read it is about |\n");
        }
        let _ = write!(doc, "\nExample:\n\n```json\n{line}\n```\n");
    }
    doc
}

#[test]
fn audit_events_doc_matches_the_code() {
    let generated = render();
    if std::env::var_os("LOGGATE_BLESS").is_some() {
        std::fs::write(DOC, &generated).unwrap();
        return;
    }
    let current = std::fs::read_to_string(DOC).unwrap_or_default();
    assert!(
        current == generated,
        "docs/audit-events.md differs from the event catalogue in core/src/audit/ocsf.rs; \
         run `LOGGATE_BLESS=1 cargo test -p loggate-core audit_events_doc` and review the diff"
    );
}

#[test]
fn every_example_carries_exactly_its_documented_fields_and_conforms_to_the_official_ocsf_schema() {
    let schema = loggate_ocsf_validate::Schema::official().expect("vendored OCSF 1.8.0 schema");
    let mut tally = loggate_ocsf_validate::Tally::default();
    for (kind, line) in CATALOGUE.iter().zip(example_lines()) {
        let record: Value = serde_json::from_str(&line).unwrap();
        let mut documented: Vec<&str> = kind
            .all_fields()
            .map(|(f, _)| *f)
            .filter(|f| !LEFT_OUT_AT_DEFAULT.contains(f))
            .collect();
        let mut carried: Vec<&str> = record_fields(&record)
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|f| !CHAIN_FIELDS.contains(f))
            .collect();
        documented.sort_unstable();
        carried.sort_unstable();
        assert_eq!(carried, documented, "{}", kind.name);
        assert_eq!(catalogue_problems(&record), Vec::<String>::new(), "{line}");
        let report = schema.validate(&record);
        assert!(report.is_conformant(), "{}: {report}\n{line}", kind.name);
        assert!(
            record["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty() && !m.contains('\n')),
            "{line}"
        );
        assert!(
            record["observables"]
                .as_array()
                .is_some_and(|o| !o.is_empty()),
            "{line}"
        );
        tally.add(kind.name, &report);
    }
    // The recommended attributes each kind still lacks (most have no true value for loggate).
    println!("{}", tally.summary());
    assert!(tally.all_conformant(), "{}", tally.to_markdown());
}

#[test]
fn no_event_uses_a_chain_field_name() {
    for kind in CATALOGUE {
        for (field, _) in kind.all_fields() {
            assert!(
                !CHAIN_FIELDS.contains(field),
                "{} has a field {field:?}",
                kind.name
            );
        }
    }
}

#[test]
fn activity_99_is_typed_other_and_keeps_loggates_label() {
    let lines = example_lines();
    let at = CATALOGUE
        .iter()
        .position(|k| k.name == "audit.checkpoint")
        .unwrap();
    let r: Value = serde_json::from_str(&lines[at]).unwrap();
    assert_eq!(r["type_uid"], 100899);
    assert_eq!(r["type_name"], "Event Log Activity: Other");
    assert_eq!(r["activity_name"], "Checkpoint");
}

#[test]
fn host_profile_is_listed_where_the_class_takes_device_from_it() {
    for (kind, line) in CATALOGUE.iter().zip(example_lines()) {
        let r: Value = serde_json::from_str(&line).unwrap();
        let listed = r.pointer("/metadata/profiles") == Some(&json!(["host"]));
        assert_eq!(listed, kind.class.device_from_profile(), "{line}");
        assert!(r["device"]["hostname"].is_string(), "{line}");
    }
}

#[test]
fn catalogue_names_are_unique() {
    for (i, kind) in CATALOGUE.iter().enumerate() {
        assert!(
            CATALOGUE[i + 1..].iter().all(|k| k.name != kind.name),
            "{} twice",
            kind.name
        );
    }
}

#[test]
fn a_line_starts_with_seq_and_prev_under_unmapped_and_chains_in_the_file() {
    let lines = example_lines();
    assert!(lines[1].starts_with(&format!(
        "{{\"unmapped\":{{\"loggate\":{{\"seq\":2,\"prev\":\"{}\",",
        hex::encode(Sha256::digest(lines[0].as_bytes()))
    )));
    for line in &lines {
        let record: Value = serde_json::from_str(line).unwrap();
        assert!(
            record.get("seq").is_none() && record.get("prev").is_none(),
            "{line}"
        );
    }
    let file: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let summary = verify_chain(file.as_bytes(), &[]).unwrap();
    assert_eq!(summary.records, CATALOGUE.len() as u64);
}

#[test]
fn denial_is_an_api_read_failure_with_the_reason_code_and_the_callers_identity() {
    let bytes = shaped(
        "read.denied",
        &Source::new("web-1", Path::new("/var/lib/loggate/audit.jsonl")),
        4,
        &"0".repeat(64),
        example("read.denied"),
        stamp(0),
    );
    let r: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (r["class_uid"].as_u64(), r["type_uid"].as_u64()),
        (Some(6003), Some(600302))
    );
    assert_eq!(r["status_id"], 2);
    assert_eq!(r["status_detail"], "no_grant");
    assert_eq!(r["actor"]["user"]["uid"], "spiffe://loggate.local/user/bob");
    assert_eq!(r["actor"]["user"]["name"], "bob");
    assert_eq!(r["src_endpoint"]["ip"], "127.0.0.1");
    assert_eq!(r["metadata"]["sequence"], 4);
    assert_eq!(r["metadata"]["log_name"], "audit.jsonl");
    assert_eq!(r["device"]["hostname"], "web-1");
    assert_eq!(event_name(&r), Some("read.denied"));
    assert_eq!(record_field(&r, "grant_id"), Some(&Value::Null));
    assert!(
        r.get("grant_id").is_none(),
        "loggate's fields stay under unmapped"
    );
}

/// A journal read's `read.*` records name a `Journal Unit` resource (the unit, a `Resource
/// Details Object: name` observable), not a `Log File` with a `File Path`, carry
/// `resource_kind` `journal_unit`, and conform to the official OCSF schema.
#[test]
fn a_journal_reads_records_name_a_journal_unit_not_a_file_and_conform_to_the_ocsf_schema() {
    let schema = loggate_ocsf_validate::Schema::official().expect("vendored OCSF 1.8.0 schema");
    for (i, name) in JOURNAL_SHAPED.into_iter().enumerate() {
        let kind = event_type(name).expect("catalogued");
        let bytes = shaped(
            name,
            &Source::new("web-1", Path::new("audit.jsonl")),
            1,
            &"0".repeat(64),
            journal_example(name),
            stamp(i),
        );
        let line = String::from_utf8(bytes).unwrap();
        let r: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            r["resources"],
            json!([{"type": "Journal Unit", "name": "nginx.service"}]),
            "{line}"
        );
        let observables = r["observables"].as_array().expect("observables");
        assert!(
            observables.contains(&json!({"name": "resources.name", "type_id": 38,
                "type": "Resource Details Object: name", "value": "nginx.service"})),
            "{line}"
        );
        assert!(
            !observables.iter().any(|o| o["type_id"] == 45),
            "no File Path: {line}"
        );
        assert_eq!(
            record_field(&r, "resource_kind"),
            Some(&json!("journal_unit"))
        );
        assert_eq!(
            record_field(&r, "path"),
            Some(&json!("journal:nginx.service"))
        );
        let mut documented: Vec<&str> = kind.all_fields().map(|(f, _)| *f).collect();
        let mut carried: Vec<&str> = record_fields(&r)
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|f| !CHAIN_FIELDS.contains(f))
            .collect();
        documented.sort_unstable();
        carried.sort_unstable();
        assert_eq!(carried, documented, "{name}");
        assert_eq!(catalogue_problems(&r), Vec::<String>::new(), "{line}");
        let report = schema.validate(&r);
        assert!(report.is_conformant(), "{name}: {report}\n{line}");
    }
}

/// A journal read refused for an empty unit (`path` `journal:`, the requester's own text)
/// names the whole path, never an empty resource or observable, and still conforms.
#[test]
fn a_journal_refusal_for_an_empty_unit_names_the_whole_path_and_conforms() {
    let schema = loggate_ocsf_validate::Schema::official().expect("vendored OCSF 1.8.0 schema");
    let mut f = journal_example("read.denied");
    f.insert("path".into(), json!("journal:"));
    f.insert("path_bytes".into(), json!(8));
    f.insert("reason_code".into(), json!("unit_invalid"));
    f.insert(
        "reason".into(),
        json!(r#""" is not a systemd unit name: it must be 1 to 255 characters long"#),
    );
    let bytes = shaped(
        "read.denied",
        &Source::new("web-1", Path::new("audit.jsonl")),
        1,
        &"0".repeat(64),
        f,
        stamp(0),
    );
    let line = String::from_utf8(bytes).unwrap();
    let r: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        r["resources"],
        json!([{"type": "Journal Unit", "name": "journal:"}]),
        "{line}"
    );
    let observables = r["observables"].as_array().expect("observables");
    assert!(
        observables.contains(&json!({"name": "resources.name", "type_id": 38,
            "type": "Resource Details Object: name", "value": "journal:"})),
        "{line}"
    );
    assert!(
        observables.iter().all(|o| o["value"] != ""),
        "no empty observable: {line}"
    );
    let report = schema.validate(&r);
    assert!(report.is_conformant(), "{report}\n{line}");
}

/// The kind comes from the code that refused the read, never from the path's text: a file
/// request whose path (the requester's own text) starts with `journal:` stays a `Log File`,
/// and its record leaves `resource_kind` out as every file read's does.
#[test]
fn a_file_reads_path_that_looks_like_a_journal_stays_a_log_file() {
    let mut f = example("read.denied");
    f.insert("path".into(), json!("journal:nginx.service"));
    let bytes = shaped(
        "read.denied",
        &Source::new("web-1", Path::new("audit.jsonl")),
        1,
        &"0".repeat(64),
        f,
        stamp(0),
    );
    let r: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        r["resources"],
        json!([{"type": "Log File", "name": "journal:nginx.service"}])
    );
    assert_eq!(record_field(&r, "resource_kind"), None);
    assert!(r["observables"]
        .as_array()
        .expect("observables")
        .iter()
        .any(|o| o["type_id"] == 45 && o["value"] == "journal:nginx.service"));
}

#[test]
fn finding_takes_its_uid_and_severity_from_the_bypass_fields() {
    let mut f = example("bypass.finding");
    f["expected"] = json!(true);
    f["severity"] = json!("low");
    let bytes = shaped(
        "bypass.finding",
        &Source::new("web-1", Path::new("audit.jsonl")),
        12,
        &"0".repeat(64),
        f,
        stamp(0),
    );
    let r: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(r["type_uid"], 200401);
    assert_eq!(
        r["finding_info"]["uid"],
        "019ac4a1-7c80-7000-8000-0000000000aa"
    );
    assert_eq!(r["severity_id"], 2);
    assert_eq!(r["is_alert"], false);
    assert_eq!(r["evidences"][0]["actor"]["process"]["pid"], 6434);
}

#[test]
fn stream_cut_by_a_read_error_is_a_failure() {
    let mut f = example("read.finished");
    f["end_reason"] = json!("read_error");
    let bytes = shaped(
        "read.finished",
        &Source::new("web-1", Path::new("audit.jsonl")),
        1,
        &"0".repeat(64),
        f,
        stamp(0),
    );
    let r: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (r["status_id"].as_u64(), r["status_detail"].as_str()),
        (Some(2), Some("read_error"))
    );
    assert_eq!(r["duration"], 3);
}

#[test]
fn event_outside_the_catalogue_is_shaped_as_a_base_event_and_flagged() {
    use crate::audit::events::TestEvent;
    let bytes = line(
        &Source::new("h", Path::new("a.jsonl")),
        1,
        &"0".repeat(64),
        &TestEvent::n(0),
        &Map::new(),
        Stamp::now(),
    )
    .unwrap();
    let r: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(r["class_uid"], 0);
    assert_eq!(event_name(&r), Some("test.event"));
    assert_eq!(
        catalogue_problems(&r),
        vec!["event \"test.event\" is not in the catalogue (docs/audit-events.md)".to_string()]
    );
}

#[test]
fn record_uids_are_fresh_uuid_v7s() {
    let (a, b) = (Stamp::now().uid, Stamp::now().uid);
    assert_ne!(a, b);
    for uid in [a, b] {
        let parsed = uuid::Uuid::parse_str(&uid).unwrap();
        assert_eq!(parsed.get_version_num(), 7, "{uid}");
    }
}
