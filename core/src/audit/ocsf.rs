//! The shape of an audit record: an OCSF 1.8.0 event behind the chain envelope.
//!
//! A line is one JSON object whose first two keys are `seq` and `prev` (the hash chain, see
//! the module above), followed by the OCSF event: classification (`class_uid`, `activity_id`,
//! `type_uid`, …), `time` (epoch ms), `severity_id`, `status_id`, `metadata` (with the event's
//! UUIDv7 `uid` for de-duplication, `sequence` = `seq`, and loggate's event name as
//! `event_code`), `device` (the host), the class's own objects (`actor`, `user`, `api`, `file`,
//! `finding_info`, …) and, unchanged in name and value, every field loggate's caller passed,
//! under `unmapped.loggate`. Chain and checkpoint fields stay there until OCSF's
//! `record_integrity` profile is released.
//!
//! [`EVENTS`] is the catalogue of every event type loggate writes: its class, activity and
//! fields. `docs/audit-events.md` is generated from it (a test fails when they differ), and
//! [`schema_problems`] checks a record against it and against the attributes OCSF requires of
//! its class.

use serde::Serialize;
use serde_json::{Map, Value};
use std::path::Path;

/// The OCSF schema version every record is shaped for (`metadata.version`).
pub const OCSF_VERSION: &str = "1.8.0";

/// The OCSF event classes loggate writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 1001: a process opened a protected file around the gate.
    FileSystemActivity,
    /// 1008: the audit log itself, and the agent that writes it, started, stopped, sealed.
    EventLogActivity,
    /// 2004: a bypass read by someone without a grant.
    DetectionFinding,
    /// 3002: a person's certificate was accepted (mTLS).
    Authentication,
    /// 3005: grants given and taken away.
    UserAccessManagement,
    /// 6003: a read through the gate.
    ApiActivity,
    /// 0: only for event names not in [`EVENTS`] (a bug, or a test's own events).
    Base,
}

impl Class {
    pub fn uid(self) -> u64 {
        match self {
            Class::FileSystemActivity => 1001,
            Class::EventLogActivity => 1008,
            Class::DetectionFinding => 2004,
            Class::Authentication => 3002,
            Class::UserAccessManagement => 3005,
            Class::ApiActivity => 6003,
            Class::Base => 0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::FileSystemActivity => "File System Activity",
            Class::EventLogActivity => "Event Log Activity",
            Class::DetectionFinding => "Detection Finding",
            Class::Authentication => "Authentication",
            Class::UserAccessManagement => "User Access Management",
            Class::ApiActivity => "API Activity",
            Class::Base => "Base Event",
        }
    }

    fn category(self) -> (u64, &'static str) {
        match self {
            Class::FileSystemActivity | Class::EventLogActivity => (1, "System Activity"),
            Class::DetectionFinding => (2, "Findings"),
            Class::Authentication | Class::UserAccessManagement => {
                (3, "Identity & Access Management")
            }
            Class::ApiActivity => (6, "Application Activity"),
            Class::Base => (0, "Uncategorized"),
        }
    }

    /// The attributes OCSF 1.8.0 requires of this class (dotted paths; `a|b` = at least one),
    /// beyond those of every event ([`BASE_REQUIRED`]). Written down by hand from the schema's
    /// class and object definitions, including the required attributes of the objects used.
    pub fn required(self) -> &'static [&'static str] {
        const ACTOR: &str = "actor.user|actor.process|actor.app_name";
        match self {
            Class::FileSystemActivity => &[
                "actor",
                ACTOR,
                "device",
                "device.type_id",
                "file",
                "file.name",
                "file.type_id",
            ],
            Class::EventLogActivity => &[
                "actor",
                ACTOR,
                "device",
                "device.type_id",
                "log_name|log_provider|log_file|log_type|log_type_id",
            ],
            Class::DetectionFinding => &["finding_info", "finding_info.uid", "finding_info.title"],
            Class::Authentication => &["user", "user.uid|user.name", "service|dst_endpoint"],
            Class::UserAccessManagement => &["user", "user.uid|user.name"],
            Class::ApiActivity => &[
                "actor",
                ACTOR,
                "api",
                "api.operation",
                "src_endpoint",
                "src_endpoint.ip|src_endpoint.hostname|src_endpoint.name|src_endpoint.uid",
            ],
            Class::Base => &[],
        }
    }
}

/// What every OCSF event must carry (and what loggate promises on every record besides).
pub const BASE_REQUIRED: &[&str] = &[
    "activity_id",
    "category_uid",
    "class_uid",
    "type_uid",
    "severity_id",
    "time",
    "metadata.version",
    "metadata.product.vendor_name",
    "metadata.product.name",
    "metadata.uid",
    "metadata.sequence",
    "metadata.event_code",
    "device.hostname",
];

/// How an event's `status_id` is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 1 Success.
    Success,
    /// 2 Failure, with `status_detail` = the `reason_code` field (else `reason`).
    Failure,
    /// From `end_reason`: `read_error` is a failure, any other end a success;
    /// `status_detail` = `end_reason`.
    StreamEnd,
    /// A finding's lifecycle status: 1 New.
    NewFinding,
}

/// How an event's `severity_id` is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fixed(u8),
    /// From the `severity` field: `low` is 2 Low, anything else 4 High.
    FromField,
}

/// One event type loggate writes.
#[derive(Debug)]
pub struct EventType {
    /// loggate's name for it: `metadata.event_code`, and what `event_name` returns.
    pub name: &'static str,
    /// Which daemon writes it.
    pub writers: &'static str,
    /// When it is written.
    pub about: &'static str,
    pub class: Class,
    pub activity_id: u64,
    pub activity_name: &'static str,
    pub outcome: Outcome,
    pub severity: Severity,
    /// loggate's own fields (under `unmapped.loggate`), each with its meaning.
    pub fields: &'static [(&'static str, &'static str)],
}

const INFO: Severity = Severity::Fixed(1);
const LOW: Severity = Severity::Fixed(2);
const MEDIUM: Severity = Severity::Fixed(3);
const HIGH: Severity = Severity::Fixed(4);

const SUBJECT: (&str, &str) = (
    "subject",
    "the person's SPIFFE id, from their certificate (`actor.user.uid`)",
);
const KEY: (&str, &str) = (
    "key_sha256",
    "SHA-256 of the person's certificate public key, which grants are bound to (`actor.user.credential_uid`)",
);
const PEER: (&str, &str) = ("peer", "the client's address, `ip:port` (`src_endpoint`)");
const GRANT_ID: (&str, &str) = (
    "grant_id",
    "the grant's id (`metadata.correlation_uid`), null when none was involved",
);
const REVISION: (&str, &str) = (
    "revision",
    "the controller's grant revision this change arrived with",
);

/// Fields of a bypass open, shared by `bypass.read` and `bypass.finding`.
const BYPASS_FIELDS: &[(&str, &str)] = &[
    ("pid", "the opener's process id (thread-group id)"),
    ("tid", "its thread id (null in `fanotify` mode)"),
    ("ppid", "its parent's process id"),
    ("uid", "its real uid"),
    ("gid", "its real gid"),
    ("user", "the uid's name from `/etc/passwd`, or null"),
    ("subject", "the person `bypass.uid_subjects` maps the uid to, or null (`actor.user`)"),
    ("comm", "the command name (15 bytes at most)"),
    ("exe", "executable path from `/proc/<pid>/exe`; when the process had already exited, the path the eBPF program read at the open, walking the executable's dentries (at most 8 components; `…/` marks unknown leading components: a deeper path, or a file on another mount than the opener's root; the path is as the opener saw it from its own root, e.g. inside its container; `allow_exe` is matched on the file's device and inode, never on this path); null when neither is known (fanotify mode, a reader already gone)"),
    ("cmdline", "the eBPF modes: the argv the kernel program read at the open (≤ 255 bytes; a later `exec` cannot change it), else from `/proc/<pid>` (≤ 4096 bytes); fanotify: from `/proc/<pid>` when the event is read, null when the process had already exited"),
    ("process_exited", "the opener was gone before `/proc` could be read (common for `cat`)"),
    ("cgroup_id", "the cgroup v2 id"),
    ("cgroup", "the cgroup path from `/proc/<pid>/cgroup`, or for an exited reader (eBPF modes) the cgroupfs folder whose inode is `cgroup_id`"),
    ("container_id", "the 64-hex container id where the cgroup path names one (docker, containerd, CRI-O, podman)"),
    ("path", "the protected path (`file.path`); null if it left the protected set meanwhile"),
    ("opened_name", "the basename the opener's path resolved to (`file.name`)"),
    ("matched", "`file` (its (device, inode) is protected) or `directory` (its folder's is)"),
    ("inode", "the opened inode"),
    ("device", "its device, `major:minor`"),
    ("fd", "the descriptor returned (null in `fanotify` mode; -1 in `lsm`/`fentry` modes, which see the open before the descriptor exists)"),
    ("flags", "the open flags, e.g. `O_RDONLY|O_CLOEXEC` (null in `fanotify` mode)"),
    ("hook", "how it was opened: `open`, `openat`, `openat2`, `open_by_handle_at`, the same with `_ia32` for a 32-bit syscall (`strict` mode), `io_uring` (`comm` may then be an `iou-wrk-…` worker), `lsm`, `fentry` or `fanotify`"),
    ("expected", "an allow-list rule matched (a log shipper)"),
    ("allow_rule", "the matching `allow_exe`/`allow_cgroup` entry, or null"),
    ("severity", "`low` for allow-listed readers, otherwise `high` (`severity_id`)"),
    ("holds_grant", "the mapped person holds an unrevoked grant, now, whose paths cover `path`"),
    ("grant_ids", "those grants"),
    ("grant_check", "which subject was checked, or why none was"),
    ("finding_uid", "the `finding_info.uid` of the `bypass.finding` this open raised; null when the reader holds a grant"),
];

/// Every event type loggate writes. `docs/audit-events.md` is generated from this list.
pub const EVENTS: &[EventType] = &[
    EventType {
        name: "read.allowed",
        writers: "agent",
        about: "A read through the gate passed every check; written and synced before the first byte of content leaves.",
        class: Class::ApiActivity,
        activity_id: 2,
        activity_name: "Read",
        outcome: Outcome::Success,
        severity: INFO,
        fields: &[
            SUBJECT, KEY, PEER, GRANT_ID,
            ("path", "the file served, beneath the agent's roots (`resources`)"),
            ("mode", "`cat`, `tail`, `tail_follow` or `grep`"),
            ("pattern", "the grep pattern, or null"),
            ("since_ms", "start of the requested time range (epoch ms), or null"),
            ("until_ms", "end of the requested time range (epoch ms), or null"),
            ("redaction_profile", "the grant's redaction profile"),
            ("inode", "the opened file's inode"),
            ("device", "its device number"),
            ("size", "its size in bytes when opened"),
        ],
    },
    EventType {
        name: "read.reopened",
        writers: "agent",
        about: "A `tail --follow` stream moved to the file that replaced the one it read (rename-and-create rotation): the path was opened again with every check of the first open; written and synced before the first byte of the new file leaves.",
        class: Class::ApiActivity,
        activity_id: 2,
        activity_name: "Read",
        outcome: Outcome::Success,
        severity: INFO,
        fields: &[
            SUBJECT, KEY, PEER, GRANT_ID,
            ("path", "the path followed (`resources`)"),
            ("inode", "the new file's inode"),
            ("device", "its device number"),
            ("size", "its size in bytes when opened"),
            ("previous_inode", "the inode of the file read until then"),
        ],
    },
    EventType {
        name: "read.denied",
        writers: "agent",
        about: "A read was refused; `reason_code` says which check failed (`status_detail`).",
        class: Class::ApiActivity,
        activity_id: 2,
        activity_name: "Read",
        outcome: Outcome::Failure,
        severity: LOW,
        fields: &[
            ("subject", "the caller's SPIFFE id (`actor.user.uid`); null when the certificate was not a user's"),
            KEY, PEER,
            ("path", "the path as requested (`resources`)"),
            GRANT_ID,
            ("reason_code", "the check that failed, e.g. `no_grant`, `grant_expired`, `path_outside_roots`, `identity_refused`, `too_many_streams` (`status_detail`)"),
            ("reason", "the message the caller was given"),
        ],
    },
    EventType {
        name: "read.finished",
        writers: "agent",
        about: "A stream ended: how many bytes, how long, why, and what was redacted.",
        class: Class::ApiActivity,
        activity_id: 2,
        activity_name: "Read",
        outcome: Outcome::StreamEnd,
        severity: INFO,
        fields: &[
            SUBJECT, KEY, PEER, GRANT_ID,
            ("path", "the file served (`resources`)"),
            ("bytes", "bytes sent"),
            ("duration_ms", "how long the stream lasted (`duration`)"),
            ("end_reason", "`eof`, `client_closed`, `grant_expired`, `grant_revoked` or `read_error` (`status_detail`; `read_error` is a failure)"),
            ("error", "the read error, or null"),
            ("redactions", "findings per detector, e.g. `{\"email\": 3}`; never values (see redaction.md)"),
            ("lines_withheld", "lines replaced because a detector failed on them"),
            ("lines_cut", "lines longer than `max_line_bytes`"),
        ],
    },
    EventType {
        name: "grant.issued",
        writers: "controller",
        about: "An admin issued a grant.",
        class: Class::UserAccessManagement,
        activity_id: 1,
        activity_name: "Assign Privileges",
        outcome: Outcome::Success,
        severity: INFO,
        fields: &[
            ("grant_id", "the grant's id (`metadata.correlation_uid`)"),
            ("subject", "who may read (`user`)"),
            ("issuer", "the admin who issued it (`actor.user`)"),
            ("hosts", "the agent ids it covers"),
            ("labels", "the agent labels it covers"),
            ("paths", "the path globs it allows (`privileges`)"),
            ("not_before", "start of validity (epoch s)"),
            ("not_after", "end of validity (epoch s)"),
            ("reason", "the reason given, e.g. a ticket"),
            ("redaction_profile", "the redaction profile streams get"),
        ],
    },
    EventType {
        name: "grant.received",
        writers: "agent",
        about: "A grant pushed by the controller verified and was installed.",
        class: Class::UserAccessManagement,
        activity_id: 1,
        activity_name: "Assign Privileges",
        outcome: Outcome::Success,
        severity: INFO,
        fields: &[
            ("grant_id", "the grant's id (`metadata.correlation_uid`)"),
            ("subject", "who may read (`user`)"),
            ("paths", "the path globs it allows (`privileges`)"),
            ("not_before", "start of validity (epoch s)"),
            ("not_after", "end of validity (epoch s)"),
            ("approver", "who approved it (`actor.user`)"),
            ("reason", "the reason given"),
            ("redaction_profile", "the redaction profile streams get"),
            REVISION,
        ],
    },
    EventType {
        name: "grant.rejected",
        writers: "agent",
        about: "A pushed grant failed verification and was not stored; its subject is unknown (`user.name` = `unknown`).",
        class: Class::UserAccessManagement,
        activity_id: 1,
        activity_name: "Assign Privileges",
        outcome: Outcome::Failure,
        severity: MEDIUM,
        fields: &[
            ("grant_id", "the id the controller sent (`metadata.correlation_uid`)"),
            ("reason_code", "why verification failed (`status_detail`)"),
            ("reason", "the verifier's message"),
            REVISION,
        ],
    },
    EventType {
        name: "grant.revoked",
        writers: "agent, controller",
        about: "A grant was revoked (controller: when an admin revokes it; agent: when the revocation arrives).",
        class: Class::UserAccessManagement,
        activity_id: 2,
        activity_name: "Revoke Privileges",
        outcome: Outcome::Success,
        severity: INFO,
        fields: &[
            ("grant_id", "the grant's id (`metadata.correlation_uid`)"),
            ("subject", "whose grant it was (`user`); null on an agent that never held it"),
            ("revoked_by", "who revoked it (`actor.user`)"),
            ("reason", "the reason given"),
            ("revision", "(agent) the controller's grant revision of the revocation"),
        ],
    },
    EventType {
        name: "grant.expired",
        writers: "agent",
        about: "A grant's validity ended (checked once a second, with or without the controller).",
        class: Class::UserAccessManagement,
        activity_id: 2,
        activity_name: "Revoke Privileges",
        outcome: Outcome::Success,
        severity: INFO,
        fields: &[
            ("grant_id", "the grant's id (`metadata.correlation_uid`)"),
            ("subject", "whose grant it was (`user`)"),
            ("not_after", "when it ended (epoch s)"),
        ],
    },
    EventType {
        name: "grant.dropped",
        writers: "agent",
        about: "A stored grant no longer verified when the agent started, and was dropped; its subject is not trusted, so `user.name` is `unknown`.",
        class: Class::UserAccessManagement,
        activity_id: 2,
        activity_name: "Revoke Privileges",
        outcome: Outcome::Success,
        severity: INFO,
        fields: &[
            ("grant_id", "the grant's id (`metadata.correlation_uid`)"),
            ("reason", "why it is no longer valid"),
        ],
    },
    EventType {
        name: "user.key_enrolled",
        writers: "controller",
        about: "A person's certificate key was seen for the first time and enrolled (trust on first use); grants are bound to it.",
        class: Class::Authentication,
        activity_id: 1,
        activity_name: "Logon",
        outcome: Outcome::Success,
        severity: INFO,
        fields: &[
            ("subject", "the person's SPIFFE id (`user.uid`)"),
            ("key_sha256", "SHA-256 of their certificate public key (`user.credential_uid`)"),
            ("how", "`first_contact`"),
        ],
    },
    EventType {
        name: "tls.refused",
        writers: "agent, controller",
        about: "A connection's mutual-TLS handshake was refused before any request: a certificate from another CA, expired or not yet valid, none at all, a certificate without proof of its key, a client that refused ours, or no handshake within 5 s. At most 60 are written per minute; the number left out goes with the next one or, at the end of the minute, in a summary record (`reason_code` `suppressed`, `peer` null). A connection that sends nothing within 2 s (a port probe) is closed and not recorded. At most 1024 handshakes are in progress; when all are taken, a new connection closes the oldest one without a complete ClientHello of the /24 or /64 prefix holding most (one with a ClientHello only when no other is left), and every 10 s with any such evictions one summary record (`reason_code` `evicted`, `peer` null, `suppressed_before` the number) says how many and from which prefix most. After its handshake a connection must send the HTTP/2 preface within 5 s; one identity may hold 1024 established connections, all together 65536 (or half the open-file limit); those closed over these are summarised every 10 s (`reason_code` `connection_limit`, `peer` null).",
        class: Class::Authentication,
        activity_id: 1,
        activity_name: "Logon",
        outcome: Outcome::Failure,
        severity: LOW,
        fields: &[
            PEER,
            ("service", "`loggate agent` or `loggate controller` (`service.name`)"),
            ("reason_code", "`unknown_issuer`, `bad_signature` (chained by name to the CA but not signed by it: another CA of the same name, or a forgery), `key_not_proven` (a certificate of the CA presented without proof of its private key: a copied certificate?), `certificate_expired`, `certificate_not_valid_yet`, `certificate_revoked`, `bad_certificate`, `no_client_certificate`, `peer_refused_our_certificate`, `handshake_timeout`, `tls_error`, `suppressed` for the summary of refusals over the rate limit, `evicted` for the summary of unfinished handshakes closed to make room, or `connection_limit` for the summary of connections closed after their handshake (no HTTP/2 preface in time, over the limit per identity or in all) (`status_detail`)"),
            ("reason", "rustls' description of the failure"),
            ("claimed_subject", "the SPIFFE id in the certificate the client presented — what it claims, not verified (the OCSF `user` is Unknown); null without one"),
            ("suppressed_before", "refusals left out before this one by the rate limit"),
        ],
    },
    EventType {
        name: "bypass.read",
        writers: "agent",
        about: "A process other than the agent opened a protected file for reading, around the gate (eBPF or fanotify); see audit.md.",
        class: Class::FileSystemActivity,
        activity_id: 14,
        activity_name: "Open",
        outcome: Outcome::Success,
        severity: Severity::FromField,
        fields: BYPASS_FIELDS,
    },
    EventType {
        name: "bypass.finding",
        writers: "agent",
        about: "Written right after a `bypass.read` whose reader holds no grant covering the file (or whose uid is unknown or unmapped): an alert for the SIEM. An allow-listed reader (a log shipper) raises one too, with severity Low and `is_alert` false.",
        class: Class::DetectionFinding,
        activity_id: 1,
        activity_name: "Create",
        outcome: Outcome::NewFinding,
        severity: Severity::FromField,
        // and every field of `bypass.read` (see `EventType::all_fields`).
        fields: &[("read_seq", "the `seq` of the `bypass.read` record it is about")],
    },
    EventType {
        name: "bypass.events_lost",
        writers: "agent",
        about: "The kernel could not queue bypass events: some direct opens went unaudited.",
        class: Class::EventLogActivity,
        activity_id: 99,
        activity_name: "Events Lost",
        outcome: Outcome::Failure,
        severity: HIGH,
        fields: &[
            ("lost_total", "events lost since the agent started"),
            ("lost_since_last", "events lost since the last such record"),
            ("reason", "`ring buffer full` (written within `rescan_interval` of the loss) or `fanotify queue overflow` (at once) (`status_detail`)"),
        ],
    },
    EventType {
        name: "bypass_audit_unavailable",
        writers: "agent",
        about: "The bypass audit was asked for but could not start, or stopped; the agent serves anyway.",
        class: Class::EventLogActivity,
        activity_id: 4,
        activity_name: "Disable",
        outcome: Outcome::Failure,
        severity: HIGH,
        fields: &[
            ("requested_mode", "the configured `bypass.mode`"),
            ("reason", "why it is unavailable (`status_detail`)"),
        ],
    },
    EventType {
        name: "agent.started",
        writers: "agent",
        about: "The agent started: its audit log is enabled.",
        class: Class::EventLogActivity,
        activity_id: 3,
        activity_name: "Enable",
        outcome: Outcome::Success,
        severity: INFO,
        fields: &[
            ("agent_id", "the agent's id"),
            ("listen", "the address it serves on"),
            ("roots", "the folders and files it protects"),
            ("grants_loaded", "grants restored from its store"),
            ("revision", "the grant revision restored"),
            ("bypass_mode", "`lsm`, `fentry`, `tracepoint`, `strict`, `fanotify` or `off`"),
            ("bypass_fallback_reason", "why `auto` did not use the modes it tried first, e.g. `lsm: the kernel refused program lsm_file_open: …; fentry: …`"),
            ("bypass_hooks", "hooks attached: `file_open`, `security_file_open`, the `sys_exit_*` tracepoints, `sys_exit`, `io_uring_complete`, or `fanotify:FAN_OPEN`"),
            ("bypass_hooks_missing", "optional hooks the kernel refused, with the reason"),
            ("bypass_fd_lookup", "eBPF modes: how the program turns an opened fd into its file: `rdonly_cast` (the `bpf_rdonly_cast` kfunc, plain loads) or `probe_read` (the build without kfuncs: `bpf_probe_read_kernel` for grown fd tables; sees the same opens at a higher cost); `none` in `lsm` and `fentry` mode, whose programs are handed the file"),
            ("bypass_fd_lookup_reason", "with `probe_read`: why the kfunc build was not used (the kernel lacks or refused `bpf_rdonly_cast`, or `bypass.kfuncs = false`)"),
            ("bypass_protected", "files and folders in the kernel map"),
        ],
    },
    EventType {
        name: "agent.stopped",
        writers: "agent",
        about: "The agent stopped cleanly: its audit log is disabled.",
        class: Class::EventLogActivity,
        activity_id: 4,
        activity_name: "Disable",
        outcome: Outcome::Success,
        severity: INFO,
        fields: &[("agent_id", "the agent's id")],
    },
    EventType {
        name: "controller.started",
        writers: "controller",
        about: "The controller started: its audit log is enabled.",
        class: Class::EventLogActivity,
        activity_id: 3,
        activity_name: "Enable",
        outcome: Outcome::Success,
        severity: INFO,
        fields: &[
            ("listen", "the address it serves on"),
            ("admins", "the configured admins"),
            ("revision", "the grant revision in its store"),
        ],
    },
    EventType {
        name: "controller.stopped",
        writers: "controller",
        about: "The controller stopped cleanly: its audit log is disabled.",
        class: Class::EventLogActivity,
        activity_id: 4,
        activity_name: "Disable",
        outcome: Outcome::Success,
        severity: INFO,
        fields: &[],
    },
    EventType {
        name: "audit.checkpoint",
        writers: "agent, controller",
        about: "A signed checkpoint seals the chain as it stands (every 1000 records or 60 s); see audit.md.",
        class: Class::EventLogActivity,
        activity_id: 99,
        activity_name: "Checkpoint",
        outcome: Outcome::Success,
        severity: INFO,
        fields: &[
            ("origin", "the writer: the agent id, or `controller`"),
            ("sealed_seq", "the `seq` of the last record sealed"),
            ("head", "SHA-256 of that record's line"),
            ("ts_ms", "when it was signed (epoch ms)"),
            ("key_id", "the signing key, `ed25519:<id>`"),
            ("sig", "Ed25519 signature over origin, sealed_seq, head and ts_ms (hex)"),
        ],
    },
    EventType {
        name: "audit.rotated",
        writers: "agent",
        about: "The first record of a new audit file after rotation: it continues the chain of the file renamed to `previous_file`, and names the rotated files deleted by retention.",
        class: Class::EventLogActivity,
        activity_id: 6,
        activity_name: "Rotate",
        outcome: Outcome::Success,
        severity: INFO,
        fields: &[
            ("previous_file", "the rotated file's name, `<audit file>.<its last seq, 12 digits>`"),
            ("previous_last_seq", "the `seq` of its last record"),
            ("deleted_files", "rotated files deleted now, beyond `audit_keep_files`"),
        ],
    },
    EventType {
        name: "audit.checkpoint_key_enrolled",
        writers: "controller",
        about: "The controller enrolled an agent's checkpoint public key: on first use (the agent's first report) or from `enrol_checkpoint_keys` (an admin's decision, which may replace the old key). A different key is never taken silently; see audit.md, Off-host anchoring.",
        class: Class::EventLogActivity,
        activity_id: 99,
        activity_name: "Checkpoint Key Enrolled",
        outcome: Outcome::Success,
        severity: LOW,
        fields: &[
            ("agent_id", "the agent whose key it is"),
            ("key_id", "the key, `ed25519:<id>`"),
            ("key", "the public key as `loggate audit verify --key` reads it"),
            ("how", "`first_use` or `configured`"),
            ("replaces", "the key id it replaces (configured only), null when none"),
        ],
    },
    EventType {
        name: "audit.checkpoint_refused",
        writers: "controller",
        about: "The controller refused an agent's checkpoint report and stored none of it.",
        class: Class::EventLogActivity,
        activity_id: 99,
        activity_name: "Checkpoint Refused",
        outcome: Outcome::Failure,
        severity: HIGH,
        fields: &[
            ("agent_id", "the reporting agent"),
            ("reason_code", "`other_host`, `bad_signature` or `key_changed` (`status_detail`)"),
            ("reason", "the refusal in one sentence"),
        ],
    },
    EventType {
        name: "audit.checkpoint_conflict",
        writers: "controller",
        about: "Alert: an agent's checkpoint contradicts one the controller holds — its sequence went backwards (audit file reset or truncated) or a sealed seq has a new head (audit file rewritten). Both are kept as evidence.",
        class: Class::EventLogActivity,
        activity_id: 99,
        activity_name: "Checkpoint Conflict",
        outcome: Outcome::Failure,
        severity: HIGH,
        fields: &[
            ("origin", "the agent whose chain it is"),
            ("conflict", "`sequence_went_backwards` or `head_changed`"),
            ("sealed_seq", "the `seq` the new checkpoint seals"),
            ("head", "the head it seals it with"),
            ("ts_ms", "when it was signed (epoch ms)"),
            ("key_id", "the key that signed it"),
            ("held_sealed_seq", "sequence_went_backwards: the highest seq sealed before"),
            ("held_head", "head_changed: the head held for that seq"),
        ],
    },
    EventType {
        name: "audit.torn_tail_discarded",
        writers: "agent, controller",
        about: "At start, a torn last line (a crash mid-write) was cut off; the chain continues from the last whole record.",
        class: Class::EventLogActivity,
        activity_id: 99,
        activity_name: "Torn Tail Discarded",
        outcome: Outcome::Success,
        severity: MEDIUM,
        fields: &[("bytes_discarded", "how many bytes were cut")],
    },
];

impl EventType {
    /// Every field of the event: its own and, for `bypass.finding`, those of the
    /// `bypass.read` it is about (copied unchanged).
    pub fn all_fields(&self) -> impl Iterator<Item = &(&'static str, &'static str)> {
        let shared: &[(&str, &str)] = if self.class == Class::DetectionFinding {
            BYPASS_FIELDS
        } else {
            &[]
        };
        self.fields.iter().chain(shared)
    }
}

/// The catalogue entry of an event name.
pub fn event_type(name: &str) -> Option<&'static EventType> {
    EVENTS.iter().find(|e| e.name == name)
}

/// Where records are written: the host (agent id or `controller`) and the log's name.
pub struct Source<'a> {
    pub host: &'a str,
    pub log_name: std::borrow::Cow<'a, str>,
}

impl<'a> Source<'a> {
    /// The source of the audit file at `path`, written on `host`.
    pub fn new(host: &'a str, path: &'a Path) -> Source<'a> {
        Source {
            host,
            log_name: path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
        }
    }
}

/// What differs between two otherwise equal records: when, and their unique id.
pub struct Stamp {
    pub time_ms: i64,
    /// UUIDv7 (`metadata.uid`).
    pub uid: String,
}

impl Stamp {
    pub fn now() -> Stamp {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Stamp {
            time_ms,
            uid: uid_at(time_ms),
        }
    }
}

/// A fresh UUIDv7, as OCSF `uid`s are written.
pub fn new_uid() -> String {
    Stamp::now().uid
}

/// A UUIDv7 for `time_ms` (so a record's `metadata.uid` carries its `time`) with 74 random
/// bits from the thread's generator: cheaper than a system call per record.
fn uid_at(time_ms: i64) -> String {
    let millis = u64::try_from(time_ms).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &rand::random())
        .into_uuid()
        .to_string()
}

/// The exact bytes of one record (without the newline): `{"seq":…,"prev":"…",<OCSF event>}`.
pub fn line(
    source: &Source,
    seq: u64,
    prev: &str,
    event: &str,
    fields: Map<String, Value>,
    stamp: Stamp,
) -> Result<Vec<u8>, serde_json::Error> {
    let body = serde_json::to_vec(&shape(source, seq, event, &fields, &stamp))?;
    let mut line = format!("{{\"seq\":{seq},\"prev\":").into_bytes();
    line.extend(serde_json::to_vec(prev)?);
    line.push(b',');
    line.extend_from_slice(&body[1..]);
    Ok(line)
}

/// The OCSF event (everything but `seq` and `prev`), borrowing from the fields and the source.
/// Typed, so a record is serialized without building a JSON tree first: shaping stays cheap
/// next to the write it precedes.
#[derive(Serialize)]
struct Event<'a> {
    class_uid: u64,
    class_name: &'static str,
    category_uid: u64,
    category_name: &'static str,
    activity_id: u64,
    activity_name: &'a str,
    type_uid: u64,
    type_name: String,
    severity_id: u8,
    severity: &'static str,
    status_id: u8,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_detail: Option<&'a str>,
    time: i64,
    metadata: Metadata<'a>,
    device: Device<'a>,
    #[serde(flatten)]
    objects: Objects<'a>,
    unmapped: Unmapped<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    version: &'static str,
    product: Product,
    uid: &'a str,
    sequence: u64,
    event_code: &'a str,
    log_name: &'a str,
    log_provider: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_uid: Option<&'a str>,
}

#[derive(Serialize)]
struct Product {
    name: &'static str,
    vendor_name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct Device<'a> {
    hostname: &'a str,
    name: &'a str,
    type_id: u8,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct Unmapped<'a> {
    loggate: &'a Map<String, Value>,
}

/// The class's own attributes.
#[derive(Serialize)]
#[serde(untagged)]
enum Objects<'a> {
    Api(ApiObjects<'a>),
    Access(AccessObjects<'a>),
    Authentication(AuthenticationObjects<'a>),
    File(FileObjects<'a>),
    Finding(FindingObjects<'a>),
    EventLog(EventLogObjects<'a>),
    None {},
}

#[derive(Serialize)]
struct ApiObjects<'a> {
    actor: Actor<'a>,
    api: Api,
    src_endpoint: Endpoint<'a>,
    dst_endpoint: Host<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<[Resource<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<&'a Value>,
}

#[derive(Serialize)]
struct AccessObjects<'a> {
    user: User<'a>,
    actor: Actor<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    privileges: Vec<String>,
}

#[derive(Serialize)]
struct AuthenticationObjects<'a> {
    user: User<'a>,
    auth_protocol_id: u8,
    auth_protocol: &'static str,
    is_remote: bool,
    service: Service<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_endpoint: Option<Endpoint<'a>>,
}

#[derive(Serialize)]
struct FileObjects<'a> {
    actor: Actor<'a>,
    file: File<'a>,
}

#[derive(Serialize)]
struct FindingObjects<'a> {
    finding_info: FindingInfo<'a>,
    is_alert: bool,
    evidences: [FileObjects<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<[Resource<'a>; 1]>,
}

#[derive(Serialize)]
struct EventLogObjects<'a> {
    actor: Actor<'a>,
    log_name: &'a str,
    log_provider: &'static str,
}

#[derive(Serialize, Default)]
struct Actor<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    app_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorizations: Option<[Authorization<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<Process<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User<'a>>,
}

#[derive(Serialize)]
struct Authorization<'a> {
    decision: &'static str,
    policy: Policy<'a>,
}

#[derive(Serialize)]
struct Policy<'a> {
    uid: &'a str,
    name: &'static str,
}

#[derive(Serialize)]
struct User<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    type_id: u8,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential_uid: Option<&'a str>,
}

#[derive(Serialize)]
struct Api {
    operation: &'static str,
    service: Service<'static>,
}

#[derive(Serialize)]
struct Service<'a> {
    name: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Endpoint<'a> {
    Address { ip: String, port: u16 },
    Named { name: &'a str },
}

#[derive(Serialize)]
struct Host<'a> {
    hostname: &'a str,
}

#[derive(Serialize)]
struct Resource<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
}

#[derive(Serialize)]
struct Process<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tid: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd_line: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<File<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_process: Option<Parent<'a>>,
}

#[derive(Serialize)]
struct Parent<'a> {
    pid: &'a Value,
}

#[derive(Serialize)]
struct File<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    name: &'a str,
    type_id: u8,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<String>,
}

#[derive(Serialize)]
struct FindingInfo<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
    title: &'static str,
    desc: &'static str,
    types: [&'static str; 1],
}

fn shape<'a>(
    source: &'a Source,
    seq: u64,
    event: &'a str,
    fields: &'a Map<String, Value>,
    stamp: &'a Stamp,
) -> Event<'a> {
    let kind = event_type(event);
    let class = kind.map_or(Class::Base, |k| k.class);
    let (activity_id, activity_name) =
        kind.map_or((99, event), |k| (k.activity_id, k.activity_name));
    let (category_uid, category_name) = class.category();
    let (status_id, status_detail) = status(kind.map_or(Outcome::Success, |k| k.outcome), fields);
    let severity_id = match kind.map_or(INFO, |k| k.severity) {
        Severity::Fixed(n) => n,
        Severity::FromField if text(fields, "severity") == Some("low") => 2,
        Severity::FromField => 4,
    };
    Event {
        class_uid: class.uid(),
        class_name: class.name(),
        category_uid,
        category_name,
        activity_id,
        activity_name,
        type_uid: class.uid() * 100 + activity_id,
        type_name: format!("{}: {activity_name}", class.name()),
        severity_id,
        severity: SEVERITY_NAMES[usize::from(severity_id)],
        status_id,
        status: status_name(class, status_id),
        status_detail,
        time: stamp.time_ms,
        metadata: Metadata {
            version: OCSF_VERSION,
            product: Product {
                name: "loggate",
                vendor_name: "loggate",
                version: env!("CARGO_PKG_VERSION"),
            },
            uid: &stamp.uid,
            sequence: seq,
            event_code: event,
            log_name: &source.log_name,
            log_provider: "loggate",
            correlation_uid: text(fields, "grant_id"),
        },
        device: Device {
            hostname: source.host,
            name: source.host,
            type_id: 1,
            kind: "Server",
        },
        objects: class_objects(class, event, fields, source),
        unmapped: Unmapped { loggate: fields },
    }
}

const SEVERITY_NAMES: [&str; 7] = [
    "Unknown",
    "Informational",
    "Low",
    "Medium",
    "High",
    "Critical",
    "Fatal",
];

fn status(outcome: Outcome, fields: &Map<String, Value>) -> (u8, Option<&str>) {
    match outcome {
        Outcome::Success | Outcome::NewFinding => (1, None),
        Outcome::Failure => (
            2,
            text(fields, "reason_code").or_else(|| text(fields, "reason")),
        ),
        Outcome::StreamEnd if text(fields, "end_reason") == Some("read_error") => {
            (2, text(fields, "end_reason"))
        }
        Outcome::StreamEnd => (1, text(fields, "end_reason")),
    }
}

fn status_name(class: Class, status_id: u8) -> &'static str {
    match (class, status_id) {
        (Class::DetectionFinding, 1) => "New",
        (_, 1) => "Success",
        (_, 2) => "Failure",
        _ => "Unknown",
    }
}

fn text<'a>(fields: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    fields.get(key).and_then(Value::as_str)
}

/// A field's value unless it is absent or null.
fn present<'a>(fields: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    fields.get(key).filter(|v| !v.is_null())
}

/// An OCSF `user` from a SPIFFE id (or a bare name) and, when known, the certificate key.
fn user<'a>(id: Option<&'a str>, key: Option<&'a str>) -> User<'a> {
    match id {
        Some(id) => User {
            uid: Some(id.into()),
            name: Some(id.rsplit('/').next().unwrap_or(id)),
            type_id: 1,
            kind: "User",
            credential_uid: key,
        },
        None => User {
            uid: None,
            name: Some("unknown"),
            type_id: 0,
            kind: "Unknown",
            credential_uid: None,
        },
    }
}

/// The actor that is loggate itself (lifecycle events, expiry).
fn loggate_actor<'a>() -> Actor<'a> {
    Actor {
        app_name: Some("loggate"),
        ..Actor::default()
    }
}

/// `ip:port` as an OCSF network endpoint.
fn endpoint(peer: Option<&str>) -> Endpoint<'_> {
    match peer.and_then(|p| p.parse::<std::net::SocketAddr>().ok()) {
        Some(addr) => Endpoint::Address {
            ip: addr.ip().to_string(),
            port: addr.port(),
        },
        None => Endpoint::Named {
            name: peer.unwrap_or("unknown"),
        },
    }
}

fn log_file(path: Option<&str>) -> Option<[Resource<'_>; 1]> {
    path.map(|name| {
        [Resource {
            kind: "Log File",
            name,
        }]
    })
}

/// A bypass open as OCSF objects: the opener (its process and, when mapped, the person) and
/// the protected file.
fn bypass_objects(f: &Map<String, Value>) -> FileObjects<'_> {
    let process = Process {
        pid: present(f, "pid"),
        tid: present(f, "tid"),
        name: text(f, "comm"),
        cmd_line: text(f, "cmdline"),
        file: text(f, "exe").map(|exe| File {
            path: Some(exe),
            name: exe.rsplit('/').next().unwrap_or(exe),
            type_id: 1,
            kind: "Regular File",
            uid: None,
        }),
        user: present(f, "uid").map(|uid| User {
            uid: Some(uid.to_string().into()),
            name: text(f, "user"),
            type_id: 1,
            kind: "User",
            credential_uid: None,
        }),
        parent_process: present(f, "ppid").map(|pid| Parent { pid }),
    };
    let file = File {
        path: text(f, "path"),
        name: text(f, "opened_name").unwrap_or_default(),
        type_id: 1,
        kind: "Regular File",
        uid: match (text(f, "device"), present(f, "inode")) {
            (Some(dev), Some(ino)) => Some(format!("{dev}:{ino}")),
            _ => None,
        },
    };
    FileObjects {
        actor: Actor {
            process: Some(process),
            user: text(f, "subject").map(|s| user(Some(s), None)),
            ..Actor::default()
        },
        file,
    }
}

/// The class's own objects, filled from the event's fields.
fn class_objects<'a>(
    class: Class,
    event: &str,
    f: &'a Map<String, Value>,
    source: &'a Source,
) -> Objects<'a> {
    match class {
        Class::ApiActivity => Objects::Api(ApiObjects {
            actor: Actor {
                user: Some(user(text(f, "subject"), text(f, "key_sha256"))),
                authorizations: text(f, "grant_id").map(|uid| {
                    [Authorization {
                        decision: if event == "read.denied" {
                            "Denied"
                        } else {
                            "Allowed"
                        },
                        policy: Policy {
                            uid,
                            name: "loggate grant",
                        },
                    }]
                }),
                ..Actor::default()
            },
            api: Api {
                operation: "ReadLog",
                service: Service {
                    name: "loggate.v1.Agent",
                },
            },
            src_endpoint: endpoint(text(f, "peer")),
            dst_endpoint: Host {
                hostname: source.host,
            },
            resources: log_file(text(f, "path")),
            duration: present(f, "duration_ms"),
        }),
        Class::UserAccessManagement => {
            let by = text(f, "approver")
                .or_else(|| text(f, "issuer"))
                .or_else(|| text(f, "revoked_by"));
            Objects::Access(AccessObjects {
                user: user(text(f, "subject"), None),
                actor: match by {
                    Some(by) => Actor {
                        user: Some(user(Some(by), None)),
                        ..Actor::default()
                    },
                    None => loggate_actor(),
                },
                privileges: f
                    .get("paths")
                    .and_then(Value::as_array)
                    .map(|ps| {
                        ps.iter()
                            .filter_map(Value::as_str)
                            .map(|p| format!("read:{p}"))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        }
        Class::Authentication => Objects::Authentication(AuthenticationObjects {
            // A refused handshake has no verified user: `user` is Unknown (what the certificate
            // claimed stays under unmapped.loggate, where no per-user rule reads it as a fact).
            user: user(text(f, "subject"), text(f, "key_sha256")),
            auth_protocol_id: 99,
            auth_protocol: "mTLS",
            is_remote: true,
            service: Service {
                name: text(f, "service").unwrap_or("loggate controller"),
            },
            src_endpoint: text(f, "peer").map(|p| endpoint(Some(p))),
        }),
        Class::FileSystemActivity => Objects::File(bypass_objects(f)),
        Class::DetectionFinding => Objects::Finding(FindingObjects {
            finding_info: FindingInfo {
                uid: text(f, "finding_uid"),
                title: "Protected log file read around the gate without a grant",
                desc: "A process opened a file protected by loggate directly, and the person it runs as holds no grant covering it.",
                types: ["loggate bypass read"],
            },
            is_alert: f.get("expected").and_then(Value::as_bool) != Some(true),
            evidences: [bypass_objects(f)],
            resources: log_file(text(f, "path")),
        }),
        Class::EventLogActivity => Objects::EventLog(EventLogObjects {
            actor: loggate_actor(),
            log_name: &source.log_name,
            log_provider: "loggate",
        }),
        Class::Base => Objects::None {},
    }
}

/// What is wrong with a record, as OCSF 1.8.0 and loggate's catalogue see it: an unknown
/// event, a class that does not match the catalogue, a missing required attribute, a
/// `type_uid` that is not `class_uid * 100 + activity_id`, a field the catalogue does not
/// document. Empty when the record is well formed.
pub fn schema_problems(record: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(name) = super::event_name(record) else {
        return vec!["no metadata.event_code".into()];
    };
    let Some(kind) = event_type(name) else {
        return vec![format!(
            "event {name:?} is not in the catalogue (docs/audit-events.md)"
        )];
    };
    let number = |k: &str| record.get(k).and_then(Value::as_u64);
    if number("class_uid") != Some(kind.class.uid()) {
        problems.push(format!("class_uid is not {}", kind.class.uid()));
    }
    if number("activity_id") != Some(kind.activity_id) {
        problems.push(format!("activity_id is not {}", kind.activity_id));
    }
    if number("type_uid") != Some(kind.class.uid() * 100 + kind.activity_id) {
        problems.push("type_uid is not class_uid * 100 + activity_id".into());
    }
    if record.pointer("/metadata/version").and_then(Value::as_str) != Some(OCSF_VERSION) {
        problems.push(format!("metadata.version is not {OCSF_VERSION}"));
    }
    for required in BASE_REQUIRED.iter().chain(kind.class.required()) {
        let present = required.split('|').any(|path| {
            let pointer = format!("/{}", path.replace('.', "/"));
            record.pointer(&pointer).is_some_and(|v| !v.is_null())
        });
        if !present {
            problems.push(format!("{} requires {required}", kind.class.name()));
        }
    }
    let documented = |field: &str| kind.all_fields().any(|(f, _)| *f == field);
    if let Some(fields) = super::record_fields(record) {
        for field in fields.keys().filter(|f| !documented(f)) {
            problems.push(format!("field {field:?} of {name} is not documented"));
        }
    } else {
        problems.push("no unmapped.loggate".into());
    }
    problems
}

#[cfg(test)]
mod tests;
