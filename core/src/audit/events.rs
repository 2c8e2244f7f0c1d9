//! Every audit event loggate writes, one type each.
//!
//! An event is a struct whose fields are loggate's own fields of the record (kept, unchanged
//! in name and value, under `unmapped.loggate`), and an [`AuditEvent`] impl that names it, says
//! how it maps onto OCSF (class, activity, outcome, severity) and builds its OCSF objects and
//! summary from its own typed fields ([`AuditEvent::ocsf`]). The writer
//! ([`super::AuditLog::append`]) takes any `&impl AuditEvent`: a misspelt event is a type that
//! does not exist, a missing field a struct literal that does not compile, and a misspelt
//! field in the OCSF mapping a field access that does not compile. [`CATALOGUE`] lists every
//! type; `docs/audit-events.md` is generated from it (with each field's doc comment as its
//! meaning), and the OCSF conformance tests check every entry.
//!
//! ## Adding an event
//!
//! 1. Write it with `audit_event!` below, next to its kind: a doc comment saying when it is
//!    written (the catalogue's text), its dotted name (`area.what_happened`), writers, OCSF
//!    class, activity (its id must mean what the event is), outcome and severity; its fields,
//!    each with a doc comment (an `Option` where unknown; `seq` and `prev` are reserved).
//! 2. End it with `ocsf: |e, on| …`: the constructor of its class ([`Ocsf::read`],
//!    [`Ocsf::access`], [`Ocsf::authentication`], [`Ocsf::file_open`], [`Ocsf::event_log`])
//!    given its one-line summary (`format!` of `e`'s fields and `on.host`) and the class's typed
//!    inputs from `e`; add `.detail(Some(e.reason_code))` on a Failure outcome.
//! 3. Add the type to [`CATALOGUE`], an example of its fields to `ocsf/tests.rs` (`example`,
//!    and its type to `shaped`), then run `LOGGATE_BLESS=1 cargo test -p loggate-core
//!    audit_events_doc` (read the diff of the catalogue) and `LOGGATE_BLESS_GOLDEN=1 cargo
//!    test -p loggate-core golden` (appends its line to `testdata/golden.jsonl`; existing
//!    lines are the on-disk contract and never change).
//! 4. Write it: `log.append(&MyEvent { … })`.
//!
//! An event whose fields are another event's plus more (`bypass.finding`) is a struct with a
//! `#[serde(flatten)]` field and a hand-written impl; see [`BypassFinding`].

use super::ocsf::{list, or_unknown, who, AccessChange, Logon, Ocsf, Opener, Privileges, ReadCall};
use super::ocsf::{Class, EventType, Outcome, Severity, Source};
use serde::Serialize;
use std::collections::BTreeMap;

/// An audit event: its fields (serialized under `unmapped.loggate`) and, from its type, its
/// name and OCSF mapping.
pub trait AuditEvent: Serialize {
    /// The event's catalogue entry: name, writers, OCSF class and activity, fields.
    const TYPE: &'static EventType;

    /// The event's part of its OCSF record, from its own fields: its one-line summary, its
    /// class's objects and observables, its grant, the reason code of a failure (see
    /// [`Ocsf`]). `on` is where the record is written (the host, the audit file's name).
    fn ocsf<'a>(&'a self, on: &'a Source<'_>) -> Ocsf<'a>;
}

const INFO: Severity = Severity::Fixed(1);
const LOW: Severity = Severity::Fixed(2);
const MEDIUM: Severity = Severity::Fixed(3);
const HIGH: Severity = Severity::Fixed(4);
/// From the `severity` field: `low` is 2 Low, anything else 4 High.
const FROM_FIELD: Severity = Severity::FromField;

/// What a `read.*` record's `path` names, which decides its OCSF `resources` entry and
/// observable: a log file, or a systemd unit's entries in the journal. Set by the code that
/// served (or refused) the read, never guessed from the path's text: a refused request's path
/// is the requester's own text, which may start with `journal:`.
///
/// A file leaves the field out of the record (`resource_kind` is absent), so that a file
/// read's record is byte for byte what it was before the field existed, and every record
/// written before it reads back as a file read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadResource {
    /// A log file beneath the agent's roots; `path` is its absolute path (OCSF resource type
    /// `Log File`, a `File Path` observable).
    #[default]
    File,
    /// A systemd unit's journal entries; `path` is `journal:<unit>` (OCSF resource type
    /// `Journal Unit` named by the unit, a `Resource Details Object: name` observable).
    JournalUnit,
}

impl ReadResource {
    /// The name written in `resource_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadResource::File => "file",
            ReadResource::JournalUnit => "journal_unit",
        }
    }

    /// Whether it is a file (the field is then left out of the record).
    pub fn is_file(&self) -> bool {
        matches!(self, ReadResource::File)
    }
}

/// Declares one audit event: the struct (with `Serialize`) and its [`AuditEvent`] impl, whose
/// catalogue entry takes the event's doc comment as its description and each field's doc
/// comment as the field's meaning. See the module's documentation.
macro_rules! audit_event {
    (
        $(#[doc = $about:literal])*
        $ty:ident = $name:literal {
            writers: $writers:literal,
            class: $class:ident,
            activity: $aid:literal $aname:literal,
            outcome: $outcome:ident,
            severity: $sev:ident $(,)?
        }
        {
            $(
                $(#[doc = $fdoc:literal])*
                $(#[serde($($fserde:tt)*)])?
                $field:ident : $fty:ty
            ),* $(,)?
        }
        ocsf: |$e:ident, $on:ident| $ocsf:expr $(,)?
    ) => {
        $(#[doc = $about])*
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[cfg_attr(test, derive(serde::Deserialize))]
        pub struct $ty {
            $(
                $(#[doc = $fdoc])*
                $(#[serde($($fserde)*)])?
                pub $field: $fty,
            )*
        }

        impl AuditEvent for $ty {
            const TYPE: &'static EventType = &EventType {
                name: $name,
                writers: $writers,
                about: concat!($($about),*),
                class: Class::$class,
                activity_id: $aid,
                activity_name: $aname,
                outcome: Outcome::$outcome,
                severity: $sev,
                fields: &[$((stringify!($field), concat!($($fdoc),*))),*],
            };

            fn ocsf<'a>(&'a self, $on: &'a Source<'_>) -> Ocsf<'a> {
                let $e = self;
                $ocsf
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Reads through the gate (agent).

audit_event! {
    /// A read through the gate passed every check; written and synced before the first byte of
    /// content leaves.
    ///
    /// A journal read (`journal:<unit>` as its path, `resource_kind` `journal_unit`) names its
    /// resource as a `Journal Unit` (the unit as its name, a `Resource Details Object: name`
    /// observable) here, in `read.finished` and in `read.denied`; a file read, a `Log File`
    /// with a `File Path` observable. The kind is given by the code that served or refused the
    /// read, never taken from the path's text (a refused request's path is the requester's
    /// own).
    ReadAllowed = "read.allowed" {
        writers: "agent", class: ApiActivity, activity: 2 "Read", outcome: Success, severity: INFO,
    }
    {
        /// the person's SPIFFE id, from their certificate (`actor.user.uid`)
        subject: String,
        /// SHA-256 of the person's certificate public key, which grants are bound to
        /// (`actor.user.programmatic_credentials`)
        key_sha256: String,
        /// the client's address, `ip:port` (`src_endpoint`)
        peer: Option<String>,
        /// the grant's id (`metadata.correlation_uid`)
        grant_id: String,
        /// the file served, beneath the agent's roots, or `journal:<unit>` for a journal read
        /// (`resources`, `observables`)
        path: String,
        /// what `path` names: absent for a file (and in records written before it existed),
        /// `journal_unit` for a journal read (`resources`, `observables`)
        #[serde(default, skip_serializing_if = "ReadResource::is_file")]
        resource_kind: ReadResource,
        /// `cat`, `tail`, `tail_follow` or `grep`; for the journal `journal`, `journal_follow`
        /// or `journal_grep`
        mode: &'static str,
        /// the grep pattern, or null
        pattern: Option<String>,
        /// start of the requested time range (epoch ms), or null
        since_ms: Option<i64>,
        /// end of the requested time range (epoch ms), or null
        until_ms: Option<i64>,
        /// the grant's redaction profile
        redaction_profile: String,
        /// the opened file's inode
        inode: u64,
        /// its device number
        device: u64,
        /// its size in bytes when opened
        size: u64,
    }
    ocsf: |e, on| Ocsf::read(
        format!(
            "{} was allowed to read {} on {} ({}, grant {})",
            e.subject, e.path, on.host, e.mode, e.grant_id
        ),
        on,
        ReadCall {
            subject: Some(&e.subject),
            key_sha256: Some(&e.key_sha256),
            peer: e.peer.as_deref(),
            grant_id: Some(&e.grant_id),
            denied: false,
            path: Some(&e.path),
            resource: e.resource_kind,
            duration_ms: None,
            operation: "ReadLog",
        },
    ),
}

audit_event! {
    /// A `tail --follow` stream moved to the file that replaced the one it read
    /// (rename-and-create rotation): the path was opened again with every check of the first
    /// open; written and synced before the first byte of the new file leaves.
    ReadReopened = "read.reopened" {
        writers: "agent", class: ApiActivity, activity: 2 "Read", outcome: Success, severity: INFO,
    }
    {
        /// the person's SPIFFE id, from their certificate (`actor.user.uid`)
        subject: String,
        /// SHA-256 of the person's certificate public key, which grants are bound to
        /// (`actor.user.programmatic_credentials`)
        key_sha256: String,
        /// the client's address, `ip:port` (`src_endpoint`)
        peer: Option<String>,
        /// the grant's id (`metadata.correlation_uid`)
        grant_id: String,
        /// the path followed (`resources`, `observables`)
        path: String,
        /// the new file's inode
        inode: u64,
        /// its device number
        device: u64,
        /// its size in bytes when opened
        size: u64,
        /// the inode of the file read until then
        previous_inode: u64,
    }
    ocsf: |e, on| Ocsf::read(
        format!(
            "{}'s follow of {} on {} moved to the file that replaced it (grant {})",
            e.subject, e.path, on.host, e.grant_id
        ),
        on,
        ReadCall {
            subject: Some(&e.subject),
            key_sha256: Some(&e.key_sha256),
            peer: e.peer.as_deref(),
            grant_id: Some(&e.grant_id),
            denied: false,
            path: Some(&e.path),
            resource: ReadResource::File,
            duration_ms: None,
            operation: "ReadLog",
        },
    ),
}

audit_event! {
    /// A listing (`loggate logs ls`) was served: the files the reader's usable grants cover
    /// (and the reader's glob matches), and nothing else; written and synced before the answer
    /// leaves. A refused listing is a `read.denied`, its `path` the glob asked for.
    ReadListed = "read.listed" {
        writers: "agent", class: ApiActivity, activity: 2 "Read", outcome: Success, severity: INFO,
    }
    {
        /// the person's SPIFFE id, from their certificate (`actor.user.uid`)
        subject: String,
        /// SHA-256 of the person's certificate public key, which grants are bound to
        /// (`actor.user.programmatic_credentials`)
        key_sha256: String,
        /// the client's address, `ip:port` (`src_endpoint`)
        peer: Option<String>,
        /// the usable grants whose paths were listed (the first is `metadata.correlation_uid`)
        grant_ids: Vec<String>,
        /// the reader's path glob (`resources`, `observables`), cut to its first 256 bytes, or
        /// null: every covered file
        path_glob: Option<String>,
        /// the glob's whole length in bytes (at most 4,096: a longer one is refused); absent
        /// without a glob (and in records written before it was added)
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_glob_bytes: Option<u64>,
        /// the SHA-256 (hex) of the whole glob when `path_glob` was cut; absent otherwise
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_glob_sha256: Option<String>,
        /// how many files were listed
        files: u64,
        /// the listing was cut at the agent's bound (10,000 files, 100,000 entries looked at)
        truncated: bool,
    }
    ocsf: |e, on| Ocsf::read(
        format!(
            "{} listed {} files ({}) on {}",
            e.subject, e.files, e.path_glob.as_deref().unwrap_or("every covered path"), on.host
        ),
        on,
        ReadCall {
            subject: Some(&e.subject),
            key_sha256: Some(&e.key_sha256),
            peer: e.peer.as_deref(),
            grant_id: e.grant_ids.first().map(String::as_str),
            denied: false,
            path: e.path_glob.as_deref(),
            resource: ReadResource::File,
            duration_ms: None,
            operation: "ListLogs",
        },
    ),
}

audit_event! {
    /// A read was refused; `reason_code` says which check failed (`status_detail`).
    ReadDenied = "read.denied" {
        writers: "agent", class: ApiActivity, activity: 2 "Read", outcome: Failure, severity: LOW,
    }
    {
        /// the caller's SPIFFE id (`actor.user.uid`); null when the certificate was not a
        /// user's
        subject: Option<String>,
        /// SHA-256 of the caller's certificate public key (`actor.user.programmatic_credentials`);
        /// null when the certificate was not a user's
        key_sha256: Option<String>,
        /// the client's address, `ip:port` (`src_endpoint`)
        peer: Option<String>,
        /// the path as requested (`resources`, `observables`), cut to its first 256 bytes; null
        /// in a summary; `journal:<unit>` for a journal read
        path: Option<String>,
        /// what `path` names: absent for a file (and in records written before it existed),
        /// `journal_unit` for a journal read (`resources`, `observables`)
        #[serde(default, skip_serializing_if = "ReadResource::is_file")]
        resource_kind: ReadResource,
        /// the requested path's whole length in bytes
        path_bytes: Option<u64>,
        /// the SHA-256 (hex) of the whole requested path when `path` was cut, else null
        path_sha256: Option<String>,
        /// the grant's id (`metadata.correlation_uid`), null when none was involved
        grant_id: Option<String>,
        /// the check that failed, e.g. `no_grant`, `grant_expired`, `path_outside_roots`,
        /// `path_crosses_mount`, `identity_refused`, `too_many_streams`, `agent_busy` (the
        /// agent serves `limits.max_streams` streams; retryable), a bad argument
        /// (`invalid_mode`, `tail_lines_over_limit`, `pattern_empty`, `pattern_too_long`,
        /// `pattern_invalid`, `pattern_too_complex`), a grep refused for CPU
        /// (`grep_budget_spent`, `grep_streams_busy`); `suppressed` for the summary of denials
        /// over the audit budget (`status_detail`)
        reason_code: &'static str,
        /// the message the caller was given (cut to 1 KiB)
        reason: String,
        /// denial records of this subject or address left out by the audit budget
        /// (`limits.audit_denials_per_window`) before this one; in a summary, how many were
        /// left out
        suppressed_before: u64,
    }
    ocsf: |e, on| Ocsf::read(
        format!(
            "{} was refused reading {} on {}: {}",
            who(e.subject.as_deref()), or_unknown(&e.path), on.host, e.reason_code
        ),
        on,
        ReadCall {
            subject: e.subject.as_deref(),
            key_sha256: e.key_sha256.as_deref(),
            peer: e.peer.as_deref(),
            grant_id: e.grant_id.as_deref(),
            denied: true,
            path: e.path.as_deref(),
            resource: e.resource_kind,
            duration_ms: None,
            operation: "ReadLog",
        },
    )
    .detail(Some(e.reason_code)),
}

audit_event! {
    /// A stream ended: how many bytes, how long, why, and what was redacted.
    ReadFinished = "read.finished" {
        writers: "agent", class: ApiActivity, activity: 2 "Read", outcome: StreamEnd, severity: INFO,
    }
    {
        /// the person's SPIFFE id, from their certificate (`actor.user.uid`)
        subject: String,
        /// SHA-256 of the person's certificate public key, which grants are bound to
        /// (`actor.user.programmatic_credentials`)
        key_sha256: String,
        /// the client's address, `ip:port` (`src_endpoint`)
        peer: Option<String>,
        /// the grant's id (`metadata.correlation_uid`)
        grant_id: String,
        /// the file served, or `journal:<unit>` (`resources`, `observables`)
        path: String,
        /// what `path` names: absent for a file (and in records written before it existed),
        /// `journal_unit` for a journal read (`resources`, `observables`)
        #[serde(default, skip_serializing_if = "ReadResource::is_file")]
        resource_kind: ReadResource,
        /// bytes sent
        bytes: u64,
        /// bytes of the file's content read to serve the stream, decompressed for a `.gz` or
        /// `.zst` file, every pass counted (a `tail -n` of a compressed file decompresses it
        /// twice: to count its lines, then to serve the last ones; a plain `tail -n` counts its
        /// backward scan for the start and its look-back for a private-key block begun before
        /// it); with `bytes`, what the stream cost the agent against what it served;
        /// null for a journal stream (absent from records written before it existed)
        bytes_read: Option<u64>,
        /// how long the stream lasted (`duration`)
        duration_ms: u64,
        /// `eof`, `client_closed`, `grant_expired`, `grant_revoked`, `budget_exceeded` (the grep
        /// pattern used up `limits.grep_time_budget`), `agent_stopping` (the agent was stopped:
        /// every stream ends before `agent.stopped`), `read_error`, or `decompression_limit` (a
        /// compressed file decompresses to more than `limits.max_decompressed_bytes` or
        /// `limits.max_decompression_ratio` allow: perhaps a decompression bomb) (`status_detail`;
        /// `read_error` and `decompression_limit` are failures)
        end_reason: &'static str,
        /// the read error or the decompression limit's sentence, or null
        error: Option<String>,
        /// findings per detector, e.g. `{"email": 3}`; never values (see redaction.md)
        redactions: BTreeMap<String, u64>,
        /// lines replaced because a detector failed on them
        lines_withheld: u64,
        /// lines longer than `max_line_bytes`
        lines_cut: u64,
        /// time spent matching the grep pattern (0 without one)
        pattern_ms: u64,
        /// a `tail` start with no private-key `BEGIN`/`END` line within
        /// `limits.tail_key_lookback_bytes` before it: taken as outside any key block (a key
        /// block is shorter than the look-back)
        key_lookback_exhausted: bool,
    }
    ocsf: |e, on| Ocsf::read(
        format!(
            "{}'s read of {} on {} ended ({}) after {} bytes",
            e.subject, e.path, on.host, e.end_reason, e.bytes
        ),
        on,
        ReadCall {
            subject: Some(&e.subject),
            key_sha256: Some(&e.key_sha256),
            peer: e.peer.as_deref(),
            grant_id: Some(&e.grant_id),
            denied: false,
            path: Some(&e.path),
            resource: e.resource_kind,
            duration_ms: Some(e.duration_ms),
            operation: "ReadLog",
        },
    )
    .detail(Some(e.end_reason)),
}

// ---------------------------------------------------------------------------------------------
// The agent's own state (`loggate agent status`).

audit_event! {
    /// A person in the agent's `status_readers` was told the agent's status (`loggate agent
    /// status`): its bypass-audit mode and whether its audit reaches the SIEM, which someone
    /// planning to read around the gate wants to know. Written and synced before the answer
    /// leaves; no answer when it cannot be written. At most `limits.audit_denials_per_window`
    /// answers per reader per window: an ask over it is refused (`agent.status_denied`
    /// `too_many_asks`), never answered unrecorded.
    AgentStatusRead = "agent.status_read" {
        writers: "agent", class: ApiActivity, activity: 2 "Read", outcome: Success, severity: INFO,
    }
    {
        /// the person's SPIFFE id, from their certificate (`actor.user.uid`)
        subject: String,
        /// SHA-256 of the person's certificate public key (`actor.user.programmatic_credentials`)
        key_sha256: String,
        /// the client's address, `ip:port` (`src_endpoint`)
        peer: Option<String>,
    }
    ocsf: |e, on| Ocsf::read(
        format!("{} was told the status of agent {}", e.subject, on.host),
        on,
        ReadCall {
            subject: Some(&e.subject),
            key_sha256: Some(&e.key_sha256),
            peer: e.peer.as_deref(),
            grant_id: None,
            denied: false,
            path: None,
            resource: ReadResource::File,
            duration_ms: None,
            operation: "Status",
        },
    ),
}

audit_event! {
    /// An ask for the agent's status was refused; `reason_code` says why (`status_detail`).
    /// Refusals share the budget of `read.denied` (`limits.audit_denials_per_window` per
    /// subject, or per address prefix without one): those over it are not written one by one
    /// but counted in the next record of the same source (`suppressed_before`) or in the
    /// window's `read.denied` summary (`reason_code` `suppressed`).
    AgentStatusDenied = "agent.status_denied" {
        writers: "agent", class: ApiActivity, activity: 2 "Read", outcome: Failure, severity: LOW,
    }
    {
        /// the caller's SPIFFE id (`actor.user.uid`); null when the certificate was not a
        /// user's
        subject: Option<String>,
        /// SHA-256 of the caller's certificate public key (`actor.user.programmatic_credentials`);
        /// null when the certificate was not a user's
        key_sha256: Option<String>,
        /// the client's address, `ip:port` (`src_endpoint`)
        peer: Option<String>,
        /// `not_a_status_reader` (a user not named in `status_readers`), `identity_refused`
        /// (a certificate that is not a usable user's), or `too_many_asks` (a reader over its
        /// budget of answered asks, `limits.audit_denials_per_window` per window)
        /// (`status_detail`)
        reason_code: &'static str,
        /// the message the caller was given (cut to 1 KiB)
        reason: String,
        /// denial records (of any kind) of this subject or address left out by the audit budget
        /// before this one
        suppressed_before: u64,
    }
    ocsf: |e, on| Ocsf::read(
        format!(
            "{} was refused the status of agent {}: {}",
            who(e.subject.as_deref()), on.host, e.reason_code
        ),
        on,
        ReadCall {
            subject: e.subject.as_deref(),
            key_sha256: e.key_sha256.as_deref(),
            peer: e.peer.as_deref(),
            grant_id: None,
            denied: true,
            path: None,
            resource: ReadResource::File,
            duration_ms: None,
            operation: "Status",
        },
    )
    .detail(Some(e.reason_code)),
}

// ---------------------------------------------------------------------------------------------
// Grants and people (controller and agent).

audit_event! {
    /// A grant was issued: by an admin (`grant issue`, also recorded as `access.break_glass`),
    /// by the approval that completed a request, or at once under an `auto` or `break_glass`
    /// role.
    GrantIssued = "grant.issued" {
        writers: "controller", class: UserAccessManagement, activity: 1 "Assign Privileges",
        outcome: Success, severity: INFO,
    }
    {
        /// the grant's id (`metadata.correlation_uid`)
        grant_id: String,
        /// who may read (`user`)
        subject: String,
        /// who issued it (`actor.user`): the admin, the approver whose approval completed the
        /// request, the controller itself (`auto`), or the requester (`break_glass`)
        issuer: String,
        /// the agent ids it covers
        hosts: Vec<String>,
        /// the agent labels it covers
        labels: Vec<String>,
        /// the path globs it allows, and `journal:<unit>` for each journal unit (`privileges`)
        paths: Vec<String>,
        /// start of validity (epoch s)
        not_before: i64,
        /// end of validity (epoch s)
        not_after: i64,
        /// the reason given, e.g. a ticket
        reason: String,
        /// the redaction profile streams get
        redaction_profile: String,
    }
    ocsf: |e, _on| Ocsf::access(
        format!(
            "{} issued grant {} to {} for {}",
            e.issuer, e.grant_id, e.subject, list(&e.paths)
        ),
        AccessChange {
            subject: Some(&e.subject),
            by: Some(&e.issuer),
            privileges: Privileges::Read(&e.paths),
            grant_id: Some(&e.grant_id),
        },
    ),
}

audit_event! {
    /// A grant pushed by the controller verified and was installed.
    GrantReceived = "grant.received" {
        writers: "agent", class: UserAccessManagement, activity: 1 "Assign Privileges",
        outcome: Success, severity: INFO,
    }
    {
        /// the grant's id (`metadata.correlation_uid`)
        grant_id: String,
        /// who may read (`user`)
        subject: String,
        /// the path globs it allows, and `journal:<unit>` for each journal unit (`privileges`)
        paths: Vec<String>,
        /// start of validity (epoch s)
        not_before: i64,
        /// end of validity (epoch s)
        not_after: i64,
        /// who approved it (`actor.user`)
        approver: String,
        /// the reason given
        reason: String,
        /// the redaction profile streams get
        redaction_profile: String,
        /// the controller's grant revision this change arrived with
        revision: u64,
    }
    ocsf: |e, on| Ocsf::access(
        format!(
            "{} installed grant {} for {} on {}",
            on.host, e.grant_id, e.subject, list(&e.paths)
        ),
        AccessChange {
            subject: Some(&e.subject),
            by: Some(&e.approver),
            privileges: Privileges::Read(&e.paths),
            grant_id: Some(&e.grant_id),
        },
    ),
}

audit_event! {
    /// A pushed grant failed verification and was not stored; its subject is unknown
    /// (`user.name` = `unknown`).
    GrantRejected = "grant.rejected" {
        writers: "agent", class: UserAccessManagement, activity: 1 "Assign Privileges",
        outcome: Failure, severity: MEDIUM,
    }
    {
        /// the id the controller sent (`metadata.correlation_uid`)
        grant_id: String,
        /// why verification failed (`status_detail`)
        reason_code: &'static str,
        /// the verifier's message
        reason: String,
        /// the controller's grant revision this change arrived with
        revision: u64,
    }
    ocsf: |e, on| Ocsf::access(
        format!("{} rejected grant {}: {}", on.host, e.grant_id, e.reason_code),
        AccessChange {
            subject: None,
            by: None,
            privileges: Privileges::Grant(&e.grant_id),
            grant_id: Some(&e.grant_id),
        },
    )
    .detail(Some(e.reason_code)),
}

audit_event! {
    /// A grant was revoked (controller: when an admin revokes it; agent: when the revocation
    /// arrives).
    GrantRevoked = "grant.revoked" {
        writers: "agent, controller", class: UserAccessManagement, activity: 2 "Revoke Privileges",
        outcome: Success, severity: INFO,
    }
    {
        /// the grant's id (`metadata.correlation_uid`)
        grant_id: String,
        /// whose grant it was (`user`); null on an agent that never held it
        subject: Option<String>,
        /// who revoked it (`actor.user`)
        revoked_by: String,
        /// the reason given
        reason: String,
        /// (agent) the controller's grant revision of the revocation; null on the controller
        revision: Option<u64>,
    }
    ocsf: |e, on| Ocsf::access(
        format!(
            "grant {} was revoked by {} on {}",
            e.grant_id, e.revoked_by, on.host
        ),
        AccessChange {
            subject: e.subject.as_deref(),
            by: Some(&e.revoked_by),
            privileges: Privileges::Grant(&e.grant_id),
            grant_id: Some(&e.grant_id),
        },
    ),
}

audit_event! {
    /// A grant's validity ended (checked once a second, with or without the controller).
    GrantExpired = "grant.expired" {
        writers: "agent", class: UserAccessManagement, activity: 2 "Revoke Privileges",
        outcome: Success, severity: INFO,
    }
    {
        /// the grant's id (`metadata.correlation_uid`)
        grant_id: String,
        /// whose grant it was (`user`)
        subject: String,
        /// the path globs it allowed (`privileges`)
        paths: Vec<String>,
        /// when it ended (epoch s)
        not_after: i64,
    }
    ocsf: |e, on| Ocsf::access(
        format!("grant {} of {} expired on {}", e.grant_id, e.subject, on.host),
        AccessChange {
            subject: Some(&e.subject),
            by: None,
            privileges: Privileges::Read(&e.paths),
            grant_id: Some(&e.grant_id),
        },
    ),
}

audit_event! {
    /// A stored grant no longer verified when the agent started, and was dropped; its subject
    /// is not trusted, so `user.name` is `unknown`.
    GrantDropped = "grant.dropped" {
        writers: "agent", class: UserAccessManagement, activity: 2 "Revoke Privileges",
        outcome: Success, severity: INFO,
    }
    {
        /// the grant's id (`metadata.correlation_uid`)
        grant_id: String,
        /// why it is no longer valid
        reason: String,
    }
    ocsf: |e, on| Ocsf::access(
        format!("{} dropped stored grant {}: {}", on.host, e.grant_id, e.reason),
        AccessChange {
            subject: None,
            by: None,
            privileges: Privileges::Grant(&e.grant_id),
            grant_id: Some(&e.grant_id),
        },
    ),
}

// ---------------------------------------------------------------------------------------------
// Access requests, approvals, break-glass and the access policy (controller).

audit_event! {
    /// A person asked for read access (`loggate grant request`) and the access policy allowed it
    /// under a role: pending until approved, or granted at once (`auto`, `break_glass`).
    AccessRequested = "access.requested" {
        writers: "controller", class: UserAccessManagement, activity: 99 "Request",
        outcome: Success, severity: INFO,
    }
    {
        /// the request's id, `r-` + 16 hex digits (`metadata.correlation_uid`)
        request_id: String,
        /// who asks (`user`)
        subject: String,
        /// the agent ids asked for (a `--selector` is resolved to them)
        hosts: Vec<String>,
        /// the path globs asked for (`privileges`)
        paths: Vec<String>,
        /// how long the access lasts once granted (capped at the role's `max_ttl`), seconds
        ttl_seconds: u64,
        /// the redaction profile asked for
        redaction_profile: String,
        /// the reason given, e.g. a ticket
        reason: String,
        /// the policy role that allows it
        role: String,
        /// the role's approval rule: `auto`, `approvers` or `break_glass`
        approval: &'static str,
        /// how many approvals it needs (0: granted at once)
        approvals_needed: u32,
        /// who may approve it (`approvers`) or is notified (`break_glass`); never the requester
        approvers: Vec<String>,
        /// when it expires unless decided (epoch s)
        expires_at: i64,
        /// SHA-256 of the access policy it was decided under (as in `policy.reloaded`)
        policy_sha256: String,
    }
    ocsf: |e, _on| Ocsf::access(
        format!(
            "{} requested access to {} on {} under role {} ({})",
            e.subject, list(&e.paths), list(&e.hosts), e.role, e.approval
        ),
        AccessChange {
            subject: Some(&e.subject),
            by: None,
            privileges: Privileges::Read(&e.paths),
            grant_id: None,
        },
    ),
}

audit_event! {
    /// An eligible approver approved a pending request; with the last approval it needs, the
    /// grant is issued (`grant_id`, and a `grant.issued` record) and its clock starts now.
    AccessApproved = "access.approved" {
        writers: "controller", class: UserAccessManagement, activity: 99 "Approve",
        outcome: Success, severity: INFO,
    }
    {
        /// the request's id (`metadata.correlation_uid`)
        request_id: String,
        /// who asked (`user`)
        subject: String,
        /// who approved (`actor.user`)
        approver: String,
        /// the approver's comment (may be empty)
        comment: String,
        /// distinct approvals so far, this one included
        approvals: u32,
        /// approvals the request needs
        approvals_needed: u32,
        /// the grant issued with this approval, or null while more are needed
        grant_id: Option<String>,
        /// SHA-256 of the access policy the approval was decided under
        policy_sha256: String,
    }
    ocsf: |e, _on| Ocsf::access(
        format!(
            "{} approved request {} of {} ({} of {})",
            e.approver, e.request_id, e.subject, e.approvals, e.approvals_needed
        ),
        AccessChange {
            subject: Some(&e.subject),
            by: Some(&e.approver),
            privileges: match &e.grant_id {
                Some(grant) => Privileges::Grant(grant),
                None => Privileges::Request(&e.request_id),
            },
            grant_id: e.grant_id.as_deref(),
        },
    ),
}

audit_event! {
    /// An eligible approver denied a pending request: it ends denied, whatever approvals it
    /// had (deny wins).
    AccessDenied = "access.denied" {
        writers: "controller", class: UserAccessManagement, activity: 99 "Deny",
        outcome: Failure, severity: LOW,
    }
    {
        /// the request's id (`metadata.correlation_uid`)
        request_id: String,
        /// who asked (`user`)
        subject: String,
        /// who denied (`actor.user`)
        approver: String,
        /// why
        comment: String,
    }
    ocsf: |e, _on| Ocsf::access(
        format!("{} denied request {} of {}", e.approver, e.request_id, e.subject),
        AccessChange {
            subject: Some(&e.subject),
            by: Some(&e.approver),
            privileges: Privileges::Request(&e.request_id),
            grant_id: None,
        },
    ),
}

audit_event! {
    /// An approval or denial was refused and changed nothing: separation of duties.
    AccessReviewRefused = "access.review_refused" {
        writers: "controller", class: UserAccessManagement, activity: 99 "Review Refused",
        outcome: Failure, severity: MEDIUM,
    }
    {
        /// the request's id (`metadata.correlation_uid`)
        request_id: String,
        /// who asked (`user`)
        subject: String,
        /// who tried to approve or deny it (`actor.user`)
        approver: String,
        /// `self_review` (nobody approves their own request), `not_an_approver` (not in the
        /// role's approver groups), `already_reviewed` (each approver counts once),
        /// `policy_changed` (the policy in force no longer allows the request)
        /// (`status_detail`)
        reason_code: &'static str,
        /// refused requests and reviews of this approver left out by the audit budget before
        /// this record (the budget `access.request_refused` uses)
        suppressed_before: u64,
    }
    ocsf: |e, _on| Ocsf::access(
        format!(
            "{} was refused reviewing request {} of {}: {}",
            e.approver, e.request_id, e.subject, e.reason_code
        ),
        AccessChange {
            subject: Some(&e.subject),
            by: Some(&e.approver),
            privileges: Privileges::Request(&e.request_id),
            grant_id: None,
        },
    )
    .detail(Some(e.reason_code)),
}

audit_event! {
    /// A request for access was refused and nothing was stored: no role of the access policy
    /// allows it, its requester has too many pending requests, or its grant would be too
    /// large. Budgeted per requester (at most 60 a minute; the rest are counted and written
    /// as one record with `reason_code` `suppressed`).
    AccessRequestRefused = "access.request_refused" {
        writers: "controller", class: UserAccessManagement, activity: 99 "Request Refused",
        outcome: Failure, severity: LOW,
    }
    {
        /// who asked (`user`)
        subject: String,
        /// the agent ids asked for, the first ones that fit in 512 bytes
        hosts: Vec<String>,
        /// how many agent ids were asked for
        hosts_count: u64,
        /// the path globs asked for, each cut to its first 256 bytes, the first ones that fit
        /// in 1 KiB
        paths: Vec<String>,
        /// how many path globs were asked for
        paths_count: u64,
        /// when a host or a path was cut or left out: the SHA-256 (hex) of the hosts and then
        /// the paths as asked, each followed by a newline; else null
        lists_sha256: Option<String>,
        /// `no_role` (no role of the policy allows it), `too_many_pending` (the requester's
        /// pending requests reached `settings.max_pending_per_requester`), `grant_too_large`,
        /// `suppressed` (a summary of refusals over the budget) (`status_detail`)
        reason_code: &'static str,
        /// the refusal as the requester was told it (cut to 1 KiB), or the summary's count
        reason: String,
        /// refusals of this requester left out by the budget before this record
        suppressed_before: u64,
    }
    ocsf: |e, _on| Ocsf::access(
        format!("a request of {} was refused: {}", e.subject, e.reason_code),
        AccessChange {
            subject: Some(&e.subject),
            by: None,
            privileges: Privileges::Read(&e.paths),
            grant_id: None,
        },
    )
    .detail(Some(e.reason_code)),
}

audit_event! {
    /// The requester (or an admin) withdrew a pending request.
    AccessCancelled = "access.cancelled" {
        writers: "controller", class: UserAccessManagement, activity: 99 "Cancel",
        outcome: Success, severity: INFO,
    }
    {
        /// the request's id (`metadata.correlation_uid`)
        request_id: String,
        /// who asked (`user`)
        subject: String,
        /// who cancelled it
        cancelled_by: String,
    }
    ocsf: |e, _on| Ocsf::access(
        format!("request {} of {} was cancelled", e.request_id, e.subject),
        AccessChange {
            subject: Some(&e.subject),
            by: None,
            privileges: Privileges::Request(&e.request_id),
            grant_id: None,
        },
    ),
}

audit_event! {
    /// A pending request was not decided in time (`settings.pending_ttl`, default 1 h) and
    /// expired; no access was given.
    AccessExpired = "access.expired" {
        writers: "controller", class: UserAccessManagement, activity: 99 "Expire",
        outcome: Failure, severity: INFO,
    }
    {
        /// the request's id (`metadata.correlation_uid`)
        request_id: String,
        /// who asked (`user`)
        subject: String,
        /// approvals it had received
        approvals: u32,
        /// when it expired (epoch s)
        expired_at: i64,
    }
    ocsf: |e, _on| Ocsf::access(
        format!("request {} of {} expired undecided", e.request_id, e.subject),
        AccessChange {
            subject: Some(&e.subject),
            by: None,
            privileges: Privileges::Request(&e.request_id),
            grant_id: None,
        },
    ),
}

audit_event! {
    /// Access was granted without approval, to be reviewed afterwards: a request under a
    /// `break_glass` role (the approver groups are notified), or an admin's `grant issue`.
    AccessBreakGlass = "access.break_glass" {
        writers: "controller", class: UserAccessManagement, activity: 1 "Assign Privileges",
        outcome: Success, severity: HIGH,
    }
    {
        /// the grant's id (`metadata.correlation_uid`)
        grant_id: String,
        /// the request's id, or null for an admin's `grant issue`
        request_id: Option<String>,
        /// who may read (`user`)
        subject: String,
        /// who granted it: the requester, or the admin (`actor.user`)
        issuer: String,
        /// `request` or `grant_issue`
        how: &'static str,
        /// the policy role, or null for `grant issue`
        role: Option<String>,
        /// the agent ids it covers
        hosts: Vec<String>,
        /// the path globs it allows, and `journal:<unit>` for each journal unit (`privileges`)
        paths: Vec<String>,
        /// the mandatory reason
        reason: String,
        /// the people notified (the role's approver groups; empty for `grant_issue`, which
        /// has no role)
        notified: Vec<String>,
        /// true when a notice was queued for the policy's webhook (`[notify]`)
        webhook: bool,
        /// SHA-256 of the access policy in force, null when none is configured
        policy_sha256: Option<String>,
    }
    ocsf: |e, _on| Ocsf::access(
        format!(
            "BREAK-GLASS: {} was granted {} on {} without approval ({}, grant {})",
            e.subject, list(&e.paths), list(&e.hosts), e.how, e.grant_id
        ),
        AccessChange {
            subject: Some(&e.subject),
            by: Some(&e.issuer),
            privileges: Privileges::Read(&e.paths),
            grant_id: Some(&e.grant_id),
        },
    ),
}

audit_event! {
    /// A break-glass grant was reviewed afterwards (`loggate access ack`).
    AccessBreakGlassReviewed = "access.break_glass_reviewed" {
        writers: "controller", class: UserAccessManagement, activity: 99 "Review",
        outcome: Success, severity: INFO,
    }
    {
        /// the grant's id (`metadata.correlation_uid`)
        grant_id: String,
        /// who held it (`user`)
        subject: String,
        /// who reviewed it (`actor.user`); never the grant's holder
        approver: String,
        /// the reviewer's conclusion
        comment: String,
    }
    ocsf: |e, _on| Ocsf::access(
        format!(
            "{} reviewed break-glass grant {} of {}",
            e.approver, e.grant_id, e.subject
        ),
        AccessChange {
            subject: Some(&e.subject),
            by: Some(&e.approver),
            privileges: Privileges::Grant(&e.grant_id),
            grant_id: Some(&e.grant_id),
        },
    ),
}

audit_event! {
    /// A webhook notification (docs/policy.md, "Notifications") could not be delivered after
    /// its retries, or was dropped because the queue was full (`attempts` 0).
    NotifyFailed = "notify.failed" {
        writers: "controller", class: EventLogActivity, activity: 99 "Notification Failed",
        outcome: Failure, severity: MEDIUM,
    }
    {
        /// the audit event the notice told of, e.g. `access.requested`
        notified_event: String,
        /// the webhook's scheme, host and port (never its path, which may hold a token)
        webhook: String,
        /// how many times it was tried
        attempts: u32,
        /// the last error
        error: String,
        /// `notify.failed` records left out by their audit budget (60 a minute) before this
        /// one; in a summary (`notified_event` `suppressed`), how many
        suppressed_before: u64,
    }
    ocsf: |e, on| Ocsf::event_log(format!(
            "a notification of {} to {} failed after {} attempts: {}",
            e.notified_event, e.webhook, e.attempts, e.error
        ), on),
}

audit_event! {
    /// The access policy file was loaded (at start, on SIGHUP, or `loggate policy reload`) and
    /// is now in force.
    PolicyReloaded = "policy.reloaded" {
        writers: "controller", class: UserAccessManagement, activity: 99 "Policy Loaded",
        outcome: Success, severity: INFO,
    }
    {
        /// the policy file
        file: String,
        /// SHA-256 (hex) of its bytes
        sha256: String,
        /// how many roles it defines
        roles: u64,
        /// how many groups
        groups: u64,
        /// how many agents it gives labels
        agents: u64,
        /// `start`, `sighup`, or the admin's SPIFFE id
        triggered_by: String,
    }
    ocsf: |e, _on| Ocsf::access(
        format!(
            "the access policy {} was loaded ({} roles), by {}",
            e.file, e.roles, e.triggered_by
        ),
        AccessChange {
            subject: None,
            by: None,
            privileges: Privileges::Policy(&e.file),
            grant_id: None,
        },
    ),
}

audit_event! {
    /// A policy file was refused whole (invalid); the policy in force stays.
    PolicyRefused = "policy.refused" {
        writers: "controller", class: UserAccessManagement, activity: 99 "Policy Refused",
        outcome: Failure, severity: MEDIUM,
    }
    {
        /// the policy file
        file: String,
        /// `file:line: reason`
        reason: String,
        /// SHA-256 of the policy still in force, or null when none is
        kept_sha256: Option<String>,
        /// `start`, `sighup`, or the admin's SPIFFE id
        triggered_by: String,
    }
    ocsf: |e, _on| Ocsf::access(
        format!(
            "the access policy {} was refused, the one in force stays: {}",
            e.file, e.reason
        ),
        AccessChange {
            subject: None,
            by: None,
            privileges: Privileges::Policy(&e.file),
            grant_id: None,
        },
    )
    .detail(Some(&e.reason)),
}

audit_event! {
    /// A person's certificate key was seen for the first time and enrolled (trust on first
    /// use); grants are bound to it.
    UserKeyEnrolled = "user.key_enrolled" {
        writers: "controller", class: Authentication, activity: 1 "Logon",
        outcome: Success, severity: INFO,
    }
    {
        /// the person's SPIFFE id (`user.uid`)
        subject: String,
        /// SHA-256 of their certificate public key (`user.programmatic_credentials`)
        key_sha256: String,
        /// `first_contact`
        how: &'static str,
    }
    ocsf: |e, _on| Ocsf::authentication(
        format!("{}'s certificate key was enrolled on first contact", e.subject),
        Logon {
            subject: Some(&e.subject),
            key_sha256: Some(&e.key_sha256),
            service: None,
            peer: None,
        },
    ),
}

audit_event! {
    /// A person signed in with the organisation's OpenID Provider (`loggate login`): their ID
    /// token passed every check (issuer, audience, signature, expiry, nonce bound to their key,
    /// e-mail verified and in an allowed domain) and names a valid user. Written before the
    /// certificate is signed.
    AuthSignIn = "auth.sign_in" {
        writers: "controller", class: Authentication, activity: 1 "Logon",
        outcome: Success, severity: INFO,
    }
    {
        /// the person's SPIFFE id, from the configured claim of the token (`user.uid`)
        subject: String,
        /// SHA-256 of the public key the certificate will be for (`user.programmatic_credentials`)
        key_sha256: String,
        /// the client's address, `ip:port` (`src_endpoint`)
        peer: Option<String>,
        /// the IdP (`iss`)
        issuer: String,
        /// the IdP's id for the person (`sub`)
        idp_subject: String,
        /// the verified e-mail address, or null
        email: Option<String>,
        /// the groups the IdP reported in `groups_claim` (the policy's `idp:` members, while
        /// the certificate this sign-in gives is valid)
        groups: Vec<String>,
    }
    ocsf: |e, _on| Ocsf::authentication(
        format!("{} signed in with {}", e.subject, e.issuer),
        Logon {
            subject: Some(&e.subject),
            key_sha256: Some(&e.key_sha256),
            service: None,
            peer: e.peer.as_deref(),
        },
    )
    .openid(),
}

audit_event! {
    /// A sign-in was refused and no certificate issued; `reason_code` says which check failed
    /// (`status_detail`). The token is never recorded.
    AuthSignInRefused = "auth.sign_in_refused" {
        writers: "controller", class: Authentication, activity: 1 "Logon",
        outcome: Failure, severity: MEDIUM,
    }
    {
        /// the client's address, `ip:port` (`src_endpoint`)
        peer: Option<String>,
        /// the configured IdP
        issuer: String,
        /// `malformed_token`, `issuer`, `audience`, `expired`, `not_yet_valid`, `signature`,
        /// `algorithm` (`none`, an HMAC, or one the IdP does not advertise), `unknown_key`,
        /// `nonce` (not the one sent, not committing to the request's key, or absent from a token
        /// too old to be taken unbound, or unbound tokens not allowed), `replayed` (a token
        /// without a nonce used again, however its signature is encoded), `busy` (too many
        /// device sign-ins remembered at once), `subject_changed` (the loggate name is bound to
        /// another IdP account: `iss` + `sub`), `email_not_verified`,
        /// `domain_not_allowed`, `missing_claim`, `invalid_username`, `weak_key`, `bad_request`,
        /// `idp_unavailable`, `not_configured`, or `rate_limited` (a summary: `reason` says how
        /// many attempts from `peer` went over `[oidc] attempts_per_minute`) (`status_detail`)
        reason_code: &'static str,
        /// the refusal in one sentence (the verifier's own words for the token checks)
        reason: String,
        /// SHA-256 of the certificate request's public key, null when it could not be read
        key_sha256: Option<String>,
    }
    ocsf: |e, _on| Ocsf::authentication(
        format!(
            "a sign-in from {} was refused: {}",
            or_unknown(&e.peer),
            e.reason_code
        ),
        Logon {
            subject: None,
            key_sha256: e.key_sha256.as_deref(),
            service: None,
            peer: e.peer.as_deref(),
        },
    )
    .openid()
    .detail(Some(e.reason_code)),
}

audit_event! {
    /// The controller signed a short-lived client certificate for a person who signed in.
    AuthCertificateIssued = "auth.certificate_issued" {
        writers: "controller", class: Authentication, activity: 99 "Certificate Issued",
        outcome: Success, severity: INFO,
    }
    {
        /// the person's SPIFFE id, the certificate's only identity (`user.uid`)
        subject: String,
        /// SHA-256 of the certified public key (`user.programmatic_credentials`)
        key_sha256: String,
        /// the client's address, `ip:port` (`src_endpoint`)
        peer: Option<String>,
        /// the certificate's serial number (hex)
        serial: String,
        /// when it stops being valid (epoch ms)
        not_after_ms: i64,
    }
    ocsf: |e, _on| Ocsf::authentication(
        format!(
            "a certificate for {} was issued (serial {}), valid until {}",
            e.subject, e.serial, e.not_after_ms
        ),
        Logon {
            subject: Some(&e.subject),
            key_sha256: Some(&e.key_sha256),
            service: None,
            peer: e.peer.as_deref(),
        },
    )
    .openid(),
}

audit_event! {
    /// A connection's mutual-TLS handshake was refused before any request: a certificate from
    /// another CA, expired or not yet valid, none at all, a certificate without proof of its
    /// key, a client that refused ours, or a handshake not completed in time (its ClientHello
    /// within 5 s of the connection, the whole within those 5 s plus the time it waited for its
    /// turn for the cryptography: the client's own time is 5 s in all). At most 60 are written per
    /// minute; the number left out goes with the next one or, at the end of the minute, in a
    /// summary record (`reason_code` `suppressed`, `peer` null). A connection that sends
    /// nothing within 2 s (a port probe) is closed and not recorded. At most 1024 handshakes
    /// are in progress; when all are taken, a new connection closes the oldest one without a
    /// complete ClientHello of the /24 or /64 prefix holding most (one with a ClientHello only
    /// when no other is left), and every 10 s with any such evictions one summary record
    /// (`reason_code` `evicted`, `peer` null, `suppressed_before` the number) says how many and
    /// from which prefix most. When the one to close has sent nothing and was accepted less
    /// than 500 ms before, a newcomer from another prefix holding more than half as many places
    /// is reset at once instead, before any TLS work; those are summarised the same way
    /// (`reason_code` `reset_in_grace`). At most 64 handshakes compute the server's side of
    /// the handshake at once (key exchange and signature, done on the ClientHello; the turn
    /// goes back before the server waits for the client's answer); one whose ClientHello came
    /// and that gets no turn within 3 s is reset before any cryptography, summarised the same
    /// way (`reason_code` `busy`). Only TLS 1.3 is served; a ClientHello that would need a
    /// HelloRetryRequest (no key share for the first group it offers that the server takes) is
    /// refused (`tls_error`), and so is a client chain of more than 3 intermediate
    /// certificates (`bad_certificate`), before any of them is checked. After its handshake a
    /// connection must send the HTTP/2
    /// preface within 5 s; one identity may hold 1024 established connections, all together
    /// 65536 (or half the open-file limit); those closed over these are summarised every 10 s
    /// (`reason_code` `connection_limit`, `peer` null).
    TlsRefused = "tls.refused" {
        writers: "agent, controller", class: Authentication, activity: 1 "Logon",
        outcome: Failure, severity: LOW,
    }
    {
        /// the client's address, `ip:port` (`src_endpoint`)
        peer: Option<String>,
        /// `loggate agent` or `loggate controller` (`service.name`)
        service: String,
        /// `unknown_issuer`, `bad_signature` (chained by name to the CA but not signed by it:
        /// another CA of the same name, or a forgery), `key_not_proven` (a certificate of the
        /// CA presented without proof of its private key: a copied certificate?),
        /// `certificate_expired`, `certificate_not_valid_yet`, `certificate_revoked`,
        /// `bad_certificate`, `no_client_certificate`, `peer_refused_our_certificate`,
        /// `handshake_timeout`, `tls_error`, `suppressed` for the summary of refusals over the
        /// rate limit, `evicted` for the summary of unfinished handshakes closed to make room,
        /// `reset_in_grace` for the summary of new connections reset at their accept while the
        /// one to close was within its grace, `busy` for the summary of handshakes reset
        /// after their ClientHello for want of a turn for their cryptography, or
        /// `connection_limit` for the summary of
        /// connections closed after their handshake (no HTTP/2 preface in time, over the limit
        /// per identity or in all) (`status_detail`)
        reason_code: &'static str,
        /// rustls' description of the failure
        reason: String,
        /// the SPIFFE id in the certificate the client presented — what it claims, not
        /// verified (the OCSF `user` is Unknown); null without one
        claimed_subject: Option<String>,
        /// refusals left out before this one by the rate limit
        suppressed_before: u64,
    }
    ocsf: |e, on| Ocsf::authentication(
        format!(
            "{} on {} refused a TLS handshake from {}: {}",
            e.service, on.host, or_unknown(&e.peer), e.reason_code
        ),
        Logon {
            subject: None,
            key_sha256: None,
            service: Some(&e.service),
            peer: e.peer.as_deref(),
        },
    )
    .detail(Some(e.reason_code)),
}

audit_event! {
    /// An admin created a join token for agent enrolment. The token itself is shown to the
    /// admin once and never recorded: only its id.
    AgentTokenCreated = "agent.token_created" {
        writers: "controller", class: Authentication, activity: 99 "Join Token Created",
        outcome: Success, severity: INFO,
    }
    {
        /// the admin's SPIFFE id (`user.uid`)
        subject: String,
        /// the token's id (12 hex characters of its SHA-256)
        token_id: String,
        /// the labels agents enrolled with it get
        labels: Vec<String>,
        /// how many agents it may enrol
        uses: u32,
        /// when it expires (epoch s)
        expires_at: i64,
        /// whether it may enrol an agent id that is already enrolled
        reenrol: bool,
    }
    ocsf: |e, on| Ocsf::authentication(
        format!(
            "{} created join token {} on {} for {} enrolment(s) with labels {}",
            e.subject, e.token_id, on.host, e.uses, list(&e.labels)
        ),
        Logon {
            subject: Some(&e.subject),
            key_sha256: None,
            service: None,
            peer: None,
        },
    ),
}

audit_event! {
    /// An admin revoked a join token: no agent enrols with it from then on.
    AgentTokenRevoked = "agent.token_revoked" {
        writers: "controller", class: Authentication, activity: 99 "Join Token Revoked",
        outcome: Success, severity: INFO,
    }
    {
        /// the admin's SPIFFE id (`user.uid`)
        subject: String,
        /// the token's id
        token_id: String,
        /// the uses it had left
        uses_left: u32,
    }
    ocsf: |e, on| Ocsf::authentication(
        format!(
            "{} revoked join token {} on {} ({} uses left)",
            e.subject, e.token_id, on.host, e.uses_left
        ),
        Logon {
            subject: Some(&e.subject),
            key_sha256: None,
            service: None,
            peer: None,
        },
    ),
}

audit_event! {
    /// An enrolled agent renewed its certificate over its current identity: the controller's
    /// CA signed a new one for the key of its CSR (made on the host), same identity, a new
    /// lifetime. The controller writes it before the certificate is handed out; the agent once
    /// it has written the new files and reloaded its TLS configuration.
    AgentCertificateRenewed = "agent.certificate_renewed" {
        writers: "agent, controller", class: Authentication, activity: 3 "Authentication Ticket",
        outcome: Success, severity: INFO,
    }
    {
        /// the agent's SPIFFE id (`user.uid`)
        subject: String,
        /// the agent id
        agent_id: String,
        /// the new certificate's serial number (hex)
        serial: String,
        /// the serial of the certificate it replaces, as the controller issued it
        previous_serial: String,
        /// the new certificate's end (epoch s)
        not_after: i64,
        /// SHA-256 of the new certificate's public key (`user.programmatic_credentials`)
        key_sha256: String,
    }
    ocsf: |e, on| Ocsf::authentication(
        format!(
            "agent {} renewed its certificate on {} (serial {}, replacing {})",
            e.agent_id, on.host, e.serial, e.previous_serial
        ),
        Logon {
            subject: Some(&e.subject),
            key_sha256: Some(&e.key_sha256),
            service: None,
            peer: None,
        },
    ),
}

audit_event! {
    /// The agent's grant stream to a controller address is established and the controller
    /// proved it is the agent's cluster (its first event): which address the agent follows,
    /// from which position. Written at every (re)connection, so a SIEM sees every move between
    /// addresses; bounded by the agent's back-off.
    ControllerConnected = "controller.connected" {
        writers: "agent", class: Authentication, activity: 99 "Controller Connected",
        outcome: Success, severity: INFO,
    }
    {
        /// the controller address dialled, `host:port`
        address: String,
        /// the controller's current epoch of its revision log
        epoch: String,
        /// the revision the agent resumed after
        after_revision: u64,
        /// the epoch that revision belongs to (empty: none yet)
        after_epoch: String,
    }
    ocsf: |e, on| Ocsf::authentication(
        format!(
            "{} follows the controller at {} (epoch {}), resuming after revision {} of epoch {:?}",
            on.host, e.address, e.epoch, e.after_revision, e.after_epoch
        ),
        Logon {
            subject: None,
            key_sha256: None,
            service: Some("loggate controller"),
            peer: None,
        },
    ),
}

audit_event! {
    /// Alert: a controller address answered for another controller cluster than the one the
    /// agent is pinned to (an independent controller sharing the CA and grant key, or a
    /// migration the operator did not re-pin for). The agent dropped the connection, took
    /// nothing from it, and counts the address failed.
    ControllerRefused = "controller.refused" {
        writers: "agent", class: Authentication, activity: 99 "Controller Refused",
        outcome: Failure, severity: HIGH,
    }
    {
        /// the controller address dialled, `host:port`
        address: String,
        /// `cluster_mismatch` (`status_detail`)
        reason_code: &'static str,
        /// the cluster id the agent is pinned to
        expected_cluster_id: String,
        /// the cluster id the address presented (empty: none)
        got_cluster_id: String,
    }
    ocsf: |e, on| Ocsf::authentication(
        format!(
            "ALERT: {} refused the controller at {}: cluster {:?}, pinned to {:?}",
            on.host, e.address, e.got_cluster_id, e.expected_cluster_id
        ),
        Logon {
            subject: None,
            key_sha256: None,
            service: Some("loggate controller"),
            peer: None,
        },
    )
    .detail(Some(e.reason_code)),
}

audit_event! {
    /// The agent finished resynchronising its grants with a controller of another epoch (a
    /// controller restart, a restore, or a move to another address): it now follows the new
    /// epoch and forgot the grants the controller no longer holds (each also `grant.dropped`).
    ControllerResynced = "controller.resynced" {
        writers: "agent", class: Authentication, activity: 99 "Controller Resynced",
        outcome: Success, severity: INFO,
    }
    {
        /// the epoch the agent followed before (empty: none)
        from_epoch: String,
        /// the epoch it follows now
        to_epoch: String,
        /// its position in the new epoch
        revision: u64,
        /// how many grants it forgot
        dropped: u64,
    }
    ocsf: |e, on| Ocsf::authentication(
        format!(
            "{} resynchronised its grants to epoch {} at revision {} ({} dropped)",
            on.host, e.to_epoch, e.revision, e.dropped
        ),
        Logon {
            subject: None,
            key_sha256: None,
            service: Some("loggate controller"),
            peer: None,
        },
    ),
}

audit_event! {
    /// An admin removed an agent: every certificate of it issued until now is refused by the
    /// controller from then on (`revoked_before`), and its `WatchGrants` stream is cut. It may
    /// enrol again with a new join token.
    AgentRemoved = "agent.removed" {
        writers: "controller", class: Authentication, activity: 99 "Agent Removed",
        outcome: Success, severity: MEDIUM,
    }
    {
        /// the admin's SPIFFE id (`user.uid`)
        subject: String,
        /// the agent removed
        agent_id: String,
        /// certificates of the agent whose validity starts at or before this (epoch s) are
        /// refused
        revoked_before: i64,
        /// whether it held a `WatchGrants` stream, now cut
        was_connected: bool,
    }
    ocsf: |e, on| Ocsf::authentication(
        format!(
            "{} removed agent {} on {}: its certificates from before {} are refused",
            e.subject, e.agent_id, on.host, e.revoked_before
        ),
        Logon {
            subject: Some(&e.subject),
            key_sha256: None,
            service: None,
            peer: None,
        },
    ),
}

audit_event! {
    /// An admin locked a person out (`loggate user lock`): every certificate of theirs is
    /// refused by the controller from now on, their active grants are revoked (agents cut their
    /// streams when the revocations arrive), their pending requests cancelled, and they cannot
    /// sign in until unlocked. Written before the lock is stored.
    UserLocked = "user.locked" {
        writers: "controller", class: AccountChange, activity: 9 "Lock",
        outcome: Success, severity: MEDIUM,
    }
    {
        /// the person locked out, as a SPIFFE id (`user.uid`)
        subject: String,
        /// the admin's SPIFFE id (`actor.user.uid`)
        locked_by: String,
        /// why, as the admin gave it
        reason: String,
    }
    ocsf: |e, _on| Ocsf::account_change(
        format!("{} locked {} out: {}", e.locked_by, e.subject, e.reason),
        &e.subject,
        &e.locked_by,
    ),
}

audit_event! {
    /// An admin unlocked a person (`loggate user unlock`): they may sign in again. Their
    /// certificates from before the unlock stay refused; a new sign-in gives a new one.
    UserUnlocked = "user.unlocked" {
        writers: "controller", class: AccountChange, activity: 12 "Unlock",
        outcome: Success, severity: INFO,
    }
    {
        /// the person unlocked, as a SPIFFE id (`user.uid`)
        subject: String,
        /// the admin's SPIFFE id (`actor.user.uid`)
        unlocked_by: String,
        /// why, as the admin gave it
        reason: String,
    }
    ocsf: |e, _on| Ocsf::account_change(
        format!("{} unlocked {}: {}", e.unlocked_by, e.subject, e.reason),
        &e.subject,
        &e.unlocked_by,
    ),
}

audit_event! {
    /// An admin action that changes who gets access was refused, and changed nothing: the
    /// admin's sign-in does not meet the access policy's `settings.admin_step_up` (older than
    /// its `max_age`, not multi-factor, or no sign-in with the IdP behind the certificate at
    /// all, such as a `loggate pki issue` one). The way out is `loggate login --fresh`.
    AdminStepUpRefused = "admin.step_up_refused" {
        writers: "controller", class: Authentication, activity: 99 "Step-Up Refused",
        outcome: Failure, severity: MEDIUM,
    }
    {
        /// the admin's SPIFFE id (`user.uid`)
        subject: String,
        /// SHA-256 of the admin's certificate public key (`user.programmatic_credentials`)
        key_sha256: String,
        /// what was refused: `grant_issue`, `user_lock`, `user_unlock`, `agent_remove`,
        /// `agent_token_create` or `policy_reload`
        action: &'static str,
        /// the refusal as the admin was told it
        reason: String,
    }
    ocsf: |e, _on| Ocsf::authentication(
        format!("{} was refused {}: step-up required", e.subject, e.action),
        Logon {
            subject: Some(&e.subject),
            key_sha256: Some(&e.key_sha256),
            service: None,
            peer: None,
        },
    )
    .detail(Some("step_up_required")),
}

audit_event! {
    /// An agent enrolled with a join token on the pre-authentication port: the controller's CA
    /// signed a certificate for the key of its CSR, for the identity and with the labels the
    /// token gives (the controller's word, not the agent's claim). Written before the
    /// certificate is handed out; the token itself is never recorded, only its id.
    AgentEnrolled = "agent.enrolled" {
        writers: "controller", class: Authentication, activity: 3 "Authentication Ticket",
        outcome: Success, severity: INFO,
    }
    {
        /// the agent's SPIFFE id, as its certificate names it (`user.uid`)
        subject: String,
        /// the agent id
        agent_id: String,
        /// the client's address, `ip:port` (`src_endpoint`)
        peer: Option<String>,
        /// `loggate enrolment` (`service.name`)
        service: String,
        /// the labels the token gave the agent
        labels: Vec<String>,
        /// the certificate's serial number (hex)
        serial: String,
        /// the certificate's end (epoch s)
        not_after: i64,
        /// SHA-256 of the certificate's public key (`user.programmatic_credentials`)
        key_sha256: String,
        /// the join token's id (a fingerprint: 12 hex characters of its SHA-256)
        token_id: String,
        /// whether the agent id was enrolled before (a token that allows re-enrolment)
        reenrolled: bool,
        /// enrolment attempts from the same address refused by its budget before this one
        suppressed_before: u64,
    }
    ocsf: |e, on| Ocsf::authentication(
        format!("{} on {}", Self::TYPE.name, on.host),
        Logon {
            subject: Some(&e.subject),
            key_sha256: Some(&e.key_sha256),
            service: Some(&e.service),
            peer: e.peer.as_deref(),
        },
    ),
}

audit_event! {
    /// An enrolment was refused: an unknown, expired, used-up or revoked join token, an agent
    /// id already enrolled (without a re-enrolment token), a malformed request or CSR, or (in
    /// a summary at the end of the minute, `peer` the address) attempts over the per-address
    /// budget. Nothing was issued. The token is never recorded, only its id when it is known.
    AgentEnrolRefused = "agent.enrol_refused" {
        writers: "controller", class: Authentication, activity: 3 "Authentication Ticket",
        outcome: Failure, severity: LOW,
    }
    {
        /// the client's address, `ip:port`, or the address alone in a budget summary
        /// (`src_endpoint`)
        peer: Option<String>,
        /// `loggate enrolment` (`service.name`)
        service: String,
        /// `token_unknown`, `token_expired`, `token_used_up`, `token_revoked`,
        /// `already_enrolled`, `bad_agent_id`, `csr_unparsable`, `csr_bad_signature`,
        /// `csr_key_type`, `csr_key_too_small`, or `rate_limited` for the summary of
        /// attempts over the per-address budget (`status_detail`)
        reason_code: &'static str,
        /// the refusal in one sentence
        reason: String,
        /// the agent id asked for — what the caller claims, not verified; null when malformed
        claimed_agent_id: Option<String>,
        /// the join token's id when the token is known, else null
        token_id: Option<String>,
        /// attempts from the same address left out by its budget before this one (for the
        /// summary: how many it stands for)
        suppressed_before: u64,
    }
    ocsf: |e, on| Ocsf::authentication(
        format!("{} on {}", Self::TYPE.name, on.host),
        Logon {
            subject: None,
            key_sha256: None,
            service: Some(&e.service),
            peer: e.peer.as_deref(),
        },
    )
    .detail(Some(e.reason_code)),
}

// ---------------------------------------------------------------------------------------------
// Bypass reads (agent, eBPF or fanotify).

audit_event! {
    /// A process other than the agent opened a protected file for reading, around the gate
    /// (eBPF or fanotify); see audit.md.
    BypassRead = "bypass.read" {
        writers: "agent", class: FileSystemActivity, activity: 14 "Open",
        outcome: Success, severity: FROM_FIELD,
    }
    {
        /// the opener's process id (thread-group id)
        pid: u32,
        /// its thread id (null in `fanotify` mode)
        tid: Option<u32>,
        /// its parent's process id
        ppid: Option<u32>,
        /// its real uid
        uid: Option<u32>,
        /// its real gid
        gid: Option<u32>,
        /// the uid's name from `/etc/passwd`, or null
        user: Option<String>,
        /// the person `bypass.uid_subjects` maps the uid to, or null (`actor.user`)
        subject: Option<String>,
        /// the command name (15 bytes at most)
        comm: Option<String>,
        /// executable path from `/proc/<pid>/exe`; when the process had already exited, the
        /// path the eBPF program read at the open, walking the executable's dentries (at most 8
        /// components; `…/` marks unknown leading components: a deeper path, or a file on
        /// another mount than the opener's root; the path is as the opener saw it from its own
        /// root, e.g. inside its container; `allow_exe` is matched on the file's device and
        /// inode, never on this path); null when neither is known (fanotify mode, a reader
        /// already gone)
        exe: Option<String>,
        /// the eBPF modes: the argv the kernel program read at the open (≤ 255 bytes; a later
        /// `exec` cannot change it), else from `/proc/<pid>` (≤ 4096 bytes); fanotify: from
        /// `/proc/<pid>` when the event is read, null when the process had already exited
        cmdline: Option<String>,
        /// the opener was gone before `/proc` could be read (common for `cat`)
        process_exited: bool,
        /// the cgroup v2 id
        cgroup_id: Option<u64>,
        /// the cgroup path from `/proc/<pid>/cgroup`, or for an exited reader (eBPF modes) the
        /// cgroupfs folder whose inode is `cgroup_id`
        cgroup: Option<String>,
        /// the 64-hex container id where the cgroup path names one (docker, containerd, CRI-O,
        /// podman)
        container_id: Option<String>,
        /// the protected path (`file.path`, `observables`); null if it left the protected set
        /// meanwhile
        path: Option<String>,
        /// the basename the opener's path resolved to (`file.name`)
        opened_name: String,
        /// `file` (its (device, inode) is protected) or `directory` (its folder's is)
        matched: &'static str,
        /// the opened inode
        inode: u64,
        /// its device, `major:minor`
        device: String,
        /// the descriptor returned (null in `fanotify` mode; -1 in `lsm`/`fentry` modes, which
        /// see the open before the descriptor exists, and for an io_uring open into a direct
        /// descriptor, hook `io_uring_fixed`, which installs none)
        fd: Option<i32>,
        /// the open flags, e.g. `O_RDONLY|O_CLOEXEC` (null in `fanotify` mode)
        flags: Option<String>,
        /// how it was opened: `open`, `openat`, `openat2`, `open_by_handle_at`, the same with
        /// `_ia32` for a 32-bit syscall (`strict` mode), `io_uring` (`comm` may then be an
        /// `iou-wrk-…` worker), `io_uring_fixed` (into a direct descriptor), `lsm`, `fentry`
        /// or `fanotify`
        hook: &'static str,
        /// an allow-list rule matched (a log shipper)
        expected: bool,
        /// the matching `allow_exe`/`allow_cgroup` entry, or null
        allow_rule: Option<String>,
        /// `low` for allow-listed readers, otherwise `high` (`severity_id`)
        severity: &'static str,
        /// the mapped person holds an unrevoked grant, now, whose paths cover `path`
        holds_grant: bool,
        /// those grants
        grant_ids: Vec<String>,
        /// which subject was checked, or why none was
        grant_check: String,
        /// the `finding_info.uid` of the `bypass.finding` this open raised; null when the
        /// reader holds a grant
        finding_uid: Option<String>,
        /// the open was queued in the pinned programs' ring buffer while no agent ran and is
        /// reported by the next agent: it happened between `opened_after_ms` and
        /// `opened_before_ms`, not at this record's `time`; `holds_grant` then counts only a
        /// grant that covered that whole window, and the process fields come from the kernel
        /// alone (`process_exited` true: its pid may belong to another process by now). Absent
        /// for a live open (and in records written before it was added)
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        queued: bool,
        /// a queued open: the earliest it can have happened (Unix ms), from the time the
        /// previous agent stopped reading, stored in the pin folder at its clean stop; absent
        /// when unknown (that agent did not stop cleanly) or for a live open
        #[serde(default, skip_serializing_if = "Option::is_none")]
        opened_after_ms: Option<i64>,
        /// a queued open: the latest it can have happened (Unix ms), when this agent took the
        /// queue over; absent for a live open
        #[serde(default, skip_serializing_if = "Option::is_none")]
        opened_before_ms: Option<i64>,
    }
    ocsf: |e, on| Ocsf::file_open(
        format!(
            "{} (pid {}, uid {}) opened {} on {} around the gate",
            or_unknown(&e.comm), e.pid, or_unknown(&e.uid), or_unknown(&e.path), on.host
        ),
        e.opener(),
    )
    .severity_from(e.severity),
}

/// Written right after a `bypass.read` whose reader holds no grant covering the file (or whose
/// uid is unknown or unmapped): an alert for the SIEM. An allow-listed reader (a log shipper)
/// raises one too, with severity Low and `is_alert` false.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BypassFinding {
    /// Every field of the `bypass.read` it is about, copied unchanged.
    #[serde(flatten)]
    pub read: BypassRead,
    /// The `seq` of the `bypass.read` record it is about.
    pub read_seq: u64,
}

impl AuditEvent for BypassFinding {
    const TYPE: &'static EventType = &EventType {
        name: "bypass.finding",
        writers: "agent",
        about: "Written right after a `bypass.read` whose reader holds no grant covering the file (or whose uid is unknown or unmapped): an alert for the SIEM. An allow-listed reader (a log shipper) raises one too, with severity Low and `is_alert` false.",
        class: Class::DetectionFinding,
        activity_id: 1,
        activity_name: "Create",
        outcome: Outcome::NewFinding,
        severity: FROM_FIELD,
        // and every field of `bypass.read` (see `EventType::all_fields`).
        fields: &[(
            "read_seq",
            "the `seq` of the `bypass.read` record it is about",
        )],
    };

    fn ocsf<'a>(&'a self, on: &'a Source<'_>) -> Ocsf<'a> {
        let e = &self.read;
        Ocsf::finding(
            format!(
                "{} (pid {}, uid {}) opened {} on {} around the gate, {}",
                or_unknown(&e.comm),
                e.pid,
                or_unknown(&e.uid),
                or_unknown(&e.path),
                on.host,
                if e.expected {
                    "an allow-listed reader without a grant"
                } else {
                    "without a grant"
                }
            ),
            e.opener(),
            e.finding_uid.as_deref(),
            e.expected,
        )
        .severity_from(e.severity)
    }
}

impl BypassRead {
    /// The opener and the file, as the OCSF objects of the read and of its finding.
    fn opener(&self) -> Opener<'_> {
        Opener {
            pid: self.pid,
            tid: self.tid,
            ppid: self.ppid,
            uid: self.uid,
            user: self.user.as_deref(),
            subject: self.subject.as_deref(),
            comm: self.comm.as_deref(),
            cmdline: self.cmdline.as_deref(),
            exe: self.exe.as_deref(),
            path: self.path.as_deref(),
            opened_name: &self.opened_name,
            device: &self.device,
            inode: self.inode,
        }
    }
}

audit_event! {
    /// Repeated opens of one protected file by one process, counted in the kernel after the
    /// open reported as its `bypass.read` (eBPF modes): a burst of any size costs one such
    /// record per process, file and second instead of one record per open.
    BypassReadRepeated = "bypass.read_repeated" {
        writers: "agent", class: FileSystemActivity, activity: 14 "Open",
        outcome: Success, severity: FROM_FIELD,
    }
    {
        /// the opener's process id (thread-group id)
        pid: u32,
        /// its real uid, from the `bypass.read` these repeat (null if that record was lost)
        uid: Option<u32>,
        /// its command name, likewise
        comm: Option<String>,
        /// the protected path, likewise (null if unknown)
        path: Option<String>,
        /// the basename the opener's path resolved to, likewise (empty if unknown)
        opened_name: String,
        /// the opened inode
        inode: u64,
        /// its device, `major:minor`
        device: String,
        /// opens counted since the last record about this process and file
        repeats: u64,
        /// Unix ms of the open reported or counted just before these (their span starts after it)
        first_ms: i64,
        /// Unix ms of the last of these opens
        last_ms: i64,
        /// the `seq` of the `bypass.read` these repeat, or null when it was lost (see
        /// `bypass.events_lost`) or written before the agent restarted
        read_seq: Option<u64>,
        /// the allow-list verdict of that `bypass.read` (false if unknown)
        expected: bool,
        /// `low` for allow-listed readers, otherwise `high` (`severity_id`)
        severity: &'static str,
    }
    ocsf: |e, on| Ocsf::file_open(
        format!(
            "{} (pid {}) opened {} on {} {} more times around the gate",
            or_unknown(&e.comm), e.pid, or_unknown(&e.path), on.host, e.repeats
        ),
        Opener {
            pid: e.pid,
            tid: None,
            ppid: None,
            uid: e.uid,
            user: None,
            subject: None,
            comm: e.comm.as_deref(),
            cmdline: None,
            exe: None,
            path: e.path.as_deref(),
            opened_name: &e.opened_name,
            device: &e.device,
            inode: e.inode,
        },
    )
    .severity_from(e.severity),
}

audit_event! {
    /// At the start of the bypass audit, a process other than the agent already held a
    /// protected file open for reading (opened before the agent started or while it
    /// restarted, which the hooks cannot see): found by a sweep of `/proc/*/fd`.
    BypassHeldOpen = "bypass.held_open" {
        writers: "agent", class: FileSystemActivity, activity: 14 "Open",
        outcome: Success, severity: FROM_FIELD,
    }
    {
        /// the holder's process id
        pid: u32,
        /// its parent's process id
        ppid: Option<u32>,
        /// its real uid
        uid: Option<u32>,
        /// the uid's name from `/etc/passwd`, or null
        user: Option<String>,
        /// the command name
        comm: Option<String>,
        /// executable path from `/proc/<pid>/exe`
        exe: Option<String>,
        /// the command line from `/proc/<pid>/cmdline`
        cmdline: Option<String>,
        /// the cgroup path from `/proc/<pid>/cgroup`
        cgroup: Option<String>,
        /// the protected path (`file.path`, `observables`)
        path: String,
        /// its basename (`file.name`)
        opened_name: String,
        /// the inode
        inode: u64,
        /// its device, `major:minor`
        device: String,
        /// the descriptor that holds it
        fd: i32,
        /// its open flags, e.g. `O_RDONLY|O_CLOEXEC`
        flags: String,
        /// an allow-list rule matched (a log shipper)
        expected: bool,
        /// the matching `allow_exe`/`allow_cgroup` entry, or null
        allow_rule: Option<String>,
        /// `low` for allow-listed holders, otherwise `high` (`severity_id`)
        severity: &'static str,
    }
    ocsf: |e, on| Ocsf::file_open(
        format!(
            "{} (pid {}, uid {}) held {} open on {} when the bypass audit started",
            or_unknown(&e.comm), e.pid, or_unknown(&e.uid), e.path, on.host
        ),
        Opener {
            pid: e.pid,
            tid: None,
            ppid: e.ppid,
            uid: e.uid,
            user: e.user.as_deref(),
            subject: None,
            comm: e.comm.as_deref(),
            cmdline: e.cmdline.as_deref(),
            exe: e.exe.as_deref(),
            path: Some(&e.path),
            opened_name: &e.opened_name,
            device: &e.device,
            inode: e.inode,
        },
    )
    .severity_from(e.severity),
}

audit_event! {
    /// A protected file left the roots (renamed out of them, or linked outside and its name
    /// beneath them removed): it stays protected, under its new name, for as long as a link to
    /// it remains. Found by the agent's rescan (`bypass.rescan_interval`, or at once after a
    /// move); the eBPF modes also name who renamed or linked it there (`moved_by_*`, from the
    /// kernel at the rename or link; null in `fanotify` mode, on kernels before 6.13, and when
    /// the move was not seen). A rename within the roots (log rotation) writes nothing.
    BypassLeftRoots = "bypass.left_roots" {
        writers: "agent", class: EventLogActivity, activity: 99 "Protected File Left Roots",
        outcome: Success, severity: HIGH,
    }
    {
        /// its protected path before it left (`file.path`, `observables`)
        path: String,
        /// one of its names now, or null when the kernel gave no usable one
        new_path: Option<String>,
        /// the inode
        inode: u64,
        /// its device, `major:minor`
        device: String,
        /// its link count now
        links: u64,
        /// how the mover moved it: `rename`, `link` (`_ia32` for a 32-bit syscall), or
        /// `io_uring`; null when no move was seen
        move_hook: Option<&'static str>,
        /// the new name as the mover gave it (relative to its working folder or directory
        /// descriptor; null for io_uring)
        move_name: Option<String>,
        /// the mover's process id
        moved_by_pid: Option<u32>,
        /// its real uid
        moved_by_uid: Option<u32>,
        /// the uid's name from `/etc/passwd`, or null
        moved_by_user: Option<String>,
        /// its command name
        moved_by_comm: Option<String>,
        /// its executable, as the kernel named it at the move
        moved_by_exe: Option<String>,
        /// its command line, as the kernel read it at the move
        moved_by_cmdline: Option<String>,
    }
    ocsf: |e, on| Ocsf::event_log(format!(
            "protected file {} left the roots on {} (now {}{}); it stays protected",
            e.path, on.host, or_unknown(&e.new_path),
            match (&e.moved_by_comm, e.moved_by_pid, e.moved_by_uid) {
                (comm, Some(pid), uid) => format!(
                    ", {} by {} (pid {pid}, uid {})",
                    e.move_hook.unwrap_or("moved"), or_unknown(comm), or_unknown(&uid)
                ),
                _ => String::new(),
            }
        ), on),
}

audit_event! {
    /// The kernel could not queue bypass events: some direct opens went unaudited.
    BypassEventsLost = "bypass.events_lost" {
        writers: "agent", class: EventLogActivity, activity: 99 "Events Lost",
        outcome: Failure, severity: HIGH,
    }
    {
        /// events lost since the agent started
        lost_total: u64,
        /// events lost since the last such record
        lost_since_last: u64,
        /// `ring buffer full` (written within a second of the loss) or `fanotify queue
        /// overflow` (at once) (`status_detail`)
        reason: &'static str,
    }
    ocsf: |e, on| Ocsf::event_log(format!("{} lost {} bypass events: {}", on.host, e.lost_since_last, e.reason), on).detail(Some(e.reason)),
}

audit_event! {
    /// The bypass audit was asked for but could not start, or stopped; the agent serves
    /// anyway. Earlier builds wrote it as `bypass_audit_unavailable` (see audit.md).
    BypassUnavailable = "bypass.unavailable" {
        writers: "agent", class: EventLogActivity, activity: 7 "Stop",
        outcome: Failure, severity: HIGH,
    }
    {
        /// the configured `bypass.mode`
        requested_mode: &'static str,
        /// why it is unavailable (`status_detail`)
        reason: String,
    }
    ocsf: |e, on| Ocsf::event_log(format!("the bypass audit on {} is unavailable: {}", on.host, e.reason), on).detail(Some(&e.reason)),
}

// ---------------------------------------------------------------------------------------------
// Lifecycle of the daemons and their audit logs.

audit_event! {
    /// The agent started: its audit log is enabled.
    AgentStarted = "agent.started" {
        writers: "agent", class: EventLogActivity, activity: 6 "Start",
        outcome: Success, severity: INFO,
    }
    {
        /// the agent's id
        agent_id: String,
        /// the address it serves on
        listen: String,
        /// the folders and files it protects
        roots: Vec<String>,
        /// grants restored from its store
        grants_loaded: u64,
        /// the grant revision restored
        revision: u64,
        /// `lsm`, `fentry`, `tracepoint`, `strict`, `fanotify` or `off`
        bypass_mode: &'static str,
        /// why `auto` did not use the modes it tried first, e.g. `lsm: the kernel refused
        /// program lsm_file_open: …; fentry: …`; null when it did
        bypass_fallback_reason: Option<String>,
        /// hooks attached: `file_open`, `security_file_open`, the `sys_exit_*` tracepoints,
        /// `sys_exit`, `io_uring_complete`, or `fanotify:FAN_OPEN`; empty when off
        bypass_hooks: Vec<String>,
        /// optional hooks the kernel refused, with the reason; null unless in an eBPF mode
        bypass_hooks_missing: Option<Vec<String>>,
        /// eBPF modes: how the program turns an opened fd into its file: `rdonly_cast` (the
        /// `bpf_rdonly_cast` kfunc, plain loads) or `probe_read` (the build without kfuncs:
        /// `bpf_probe_read_kernel` for grown fd tables; sees the same opens at a higher cost);
        /// `none` in `lsm` and `fentry` mode, whose programs are handed the file; null unless in
        /// an eBPF mode
        bypass_fd_lookup: Option<&'static str>,
        /// with `probe_read`: why the kfunc build was not used (the kernel lacks or refused
        /// `bpf_rdonly_cast`, or `bypass.kfuncs = false`)
        bypass_fd_lookup_reason: Option<String>,
        /// files and folders in the kernel map; null when off
        bypass_protected: Option<u64>,
        /// whether this kernel runs 32-bit (`int 0x80`) syscalls: `enabled`, `disabled`
        /// (`ia32_emulation=0`, or off by default), `not_built` (no IA32 emulation), or
        /// `unknown` (neither its build configuration nor its command line says); null when off
        bypass_ia32_syscalls: Option<&'static str>,
        /// whether the active mode sees 32-bit opens (`tracepoint` does not); null when off
        bypass_ia32_seen: Option<bool>,
        /// what the active mode does not see or report, in a sentence each, with the way out:
        /// 32-bit opens in `tracepoint` mode on a kernel that runs them; `fanotify`'s process
        /// fields, often null for short-lived readers; empty when there is nothing to say
        bypass_notes: Vec<String>,
        /// eBPF modes: what became of the programs pinned in bpffs (`bypass.pin_dir`):
        /// `created`, `adopted` (an earlier agent's, with what they queued while no agent ran),
        /// `replaced` (other objects: an upgrade; the new programs were attached first),
        /// `refused` (the folder is not safe, or another agent holds it: not pinned), `failed`
        /// (not pinned); `off` when `bypass.pin = false` (an earlier start's pins removed),
        /// or when `mode = "off"` or `"fanotify"` removed an earlier start's pins; null in
        /// those modes when there were none
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bypass_pins: Option<&'static str>,
        /// why the pins were refused, failed or replaced (or could not be removed)
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bypass_pins_reason: Option<String>,
    }
    ocsf: |e, on| Ocsf::event_log(format!("agent {} started (bypass audit: {})", on.host, e.bypass_mode), on),
}

audit_event! {
    /// The agent stopped cleanly: its audit log is disabled.
    AgentStopped = "agent.stopped" {
        writers: "agent", class: EventLogActivity, activity: 7 "Stop",
        outcome: Success, severity: INFO,
    }
    {
        /// the agent's id
        agent_id: String,
    }
    ocsf: |_e, on| Ocsf::event_log(format!("agent {} stopped", on.host), on),
}

audit_event! {
    /// The controller started: its audit log is enabled.
    ControllerStarted = "controller.started" {
        writers: "controller", class: EventLogActivity, activity: 6 "Start",
        outcome: Success, severity: INFO,
    }
    {
        /// the address it serves on
        listen: String,
        /// the configured admins
        admins: Vec<String>,
        /// the grant revision in its store
        revision: u64,
    }
    ocsf: |e, on| Ocsf::event_log(format!("the controller started on {}", e.listen), on),
}

audit_event! {
    /// The controller stopped cleanly: its audit log is disabled.
    ControllerStopped = "controller.stopped" {
        writers: "controller", class: EventLogActivity, activity: 7 "Stop",
        outcome: Success, severity: INFO,
    }
    {}
    ocsf: |_e, on| Ocsf::event_log("the controller stopped".to_string(), on),
}

audit_event! {
    /// A signed checkpoint seals the chain as it stands (every 1000 records or 60 s); see
    /// audit.md.
    AuditCheckpoint = "audit.checkpoint" {
        writers: "agent, controller", class: EventLogActivity, activity: 99 "Checkpoint",
        outcome: Success, severity: INFO,
    }
    {
        /// the writer: the agent id, or `controller`
        origin: String,
        /// the `seq` of the last record sealed
        sealed_seq: u64,
        /// SHA-256 of that record's line
        head: String,
        /// when it was signed (epoch ms)
        ts_ms: i64,
        /// the signing key, `ed25519:<id>`
        key_id: String,
        /// Ed25519 signature over origin, sealed_seq, head and ts_ms (hex)
        sig: String,
    }
    ocsf: |e, on| Ocsf::event_log(format!("{} sealed its audit chain through seq {}", on.host, e.sealed_seq), on),
}

audit_event! {
    /// The first record of a new audit file after rotation: it continues the chain of the file
    /// renamed to `previous_file`, and names the rotated files deleted by retention.
    AuditRotated = "audit.rotated" {
        writers: "agent", class: EventLogActivity, activity: 5 "Rotate",
        outcome: Success, severity: INFO,
    }
    {
        /// the rotated file's name, `<audit file>.<its last seq, 12 digits>`
        previous_file: String,
        /// the `seq` of its last record
        previous_last_seq: u64,
        /// rotated files deleted now, beyond `audit_keep_files`
        deleted_files: Vec<String>,
    }
    ocsf: |e, on| Ocsf::event_log(format!("{} rotated its audit file to {}", on.host, e.previous_file), on),
}

audit_event! {
    /// Retention deleted rotated audit files between rotations, once every sink and the
    /// checkpoint sender had consumed them (written once they are gone, naming only those
    /// really deleted); see audit.md, Retention.
    AuditFilesDeleted = "audit.files_deleted" {
        writers: "agent", class: EventLogActivity, activity: 2 "Delete",
        outcome: Success, severity: INFO,
    }
    {
        /// the rotated files deleted, oldest first
        deleted_files: Vec<String>,
        /// `keep_files` (more than `audit_keep_files`) or `budget` (`audit_max_bytes` reached)
        reason: &'static str,
    }
    ocsf: |_e, on| Ocsf::event_log(format!("audit.files_deleted on {}", on.host), on),
}

audit_event! {
    /// The audit files reached their disk budget (`audit_max_bytes`) and no rotated file may be
    /// deleted, because a reader has not consumed it: every audited action is refused (fail
    /// closed) until `audit.budget_recovered`.
    AuditBudgetExhausted = "audit.budget_exhausted" {
        writers: "agent", class: EventLogActivity, activity: 99 "Budget Exhausted",
        outcome: Failure, severity: HIGH,
    }
    {
        /// the budget, `audit_max_bytes`
        budget_bytes: u64,
        /// what the audit file and its rotated files take
        used_bytes: u64,
        /// the readers holding the oldest rotated file: sink names, `anchor` for the checkpoint
        /// sender
        waiting_for: Vec<String>,
    }
    ocsf: |_e, on| Ocsf::event_log(format!("audit.budget_exhausted on {}", on.host), on),
}

audit_event! {
    /// The audit files are within their disk budget again (a reader caught up and rotated
    /// files were deleted): audited actions are allowed again.
    AuditBudgetRecovered = "audit.budget_recovered" {
        writers: "agent", class: EventLogActivity, activity: 99 "Budget Recovered",
        outcome: Success, severity: MEDIUM,
    }
    {
        /// the budget, `audit_max_bytes`
        budget_bytes: u64,
        /// what the audit files take now
        used_bytes: u64,
    }
    ocsf: |_e, on| Ocsf::event_log(format!("audit.budget_recovered on {}", on.host), on),
}

audit_event! {
    /// The controller enrolled an agent's checkpoint public key: on first use (the agent's
    /// first report) or from `enrol_checkpoint_keys` (an admin's decision, which may replace the
    /// old key). A different key is never taken silently; see audit.md, Off-host anchoring.
    AuditCheckpointKeyEnrolled = "audit.checkpoint_key_enrolled" {
        writers: "controller", class: EventLogActivity, activity: 99 "Checkpoint Key Enrolled",
        outcome: Success, severity: LOW,
    }
    {
        /// the agent whose key it is
        agent_id: String,
        /// the key, `ed25519:<id>`
        key_id: String,
        /// the public key as `loggate audit verify --key` reads it
        key: String,
        /// `first_use` or `configured`
        how: &'static str,
        /// the key id it replaces (configured only), null when none
        replaces: Option<String>,
    }
    ocsf: |e, on| Ocsf::event_log(format!(
            "the checkpoint key {} of agent {} was enrolled ({})",
            e.key_id, e.agent_id, e.how
        ), on),
}

audit_event! {
    /// The controller refused an agent's checkpoint report and stored none of it.
    AuditCheckpointRefused = "audit.checkpoint_refused" {
        writers: "controller", class: EventLogActivity, activity: 99 "Checkpoint Refused",
        outcome: Failure, severity: HIGH,
    }
    {
        /// the reporting agent (its verified identity); empty in a summary of agents beyond the
        /// budget's tracked limit
        agent_id: String,
        /// `other_host`, `bad_signature` or `key_changed`, or `suppressed` for the summary of
        /// refusals and conflicts over the agent's report budget (`status_detail`)
        reason_code: &'static str,
        /// the refusal in one sentence
        reason: String,
    }
    ocsf: |e, on| Ocsf::event_log(format!(
            "checkpoints of agent {} were refused: {}",
            e.agent_id, e.reason_code
        ), on).detail(Some(e.reason_code)),
}

audit_event! {
    /// Alert: an agent's checkpoint contradicts one the controller holds — its sequence went
    /// backwards (audit file reset or truncated) or a sealed seq has a new head (audit file
    /// rewritten). Both are kept as evidence.
    AuditCheckpointConflict = "audit.checkpoint_conflict" {
        writers: "controller", class: EventLogActivity, activity: 99 "Checkpoint Conflict",
        outcome: Failure, severity: HIGH,
    }
    {
        /// the agent whose chain it is
        origin: String,
        /// `sequence_went_backwards` or `head_changed`
        conflict: &'static str,
        /// the `seq` the new checkpoint seals
        sealed_seq: u64,
        /// the head it seals it with
        head: String,
        /// when it was signed (epoch ms)
        ts_ms: i64,
        /// the key that signed it
        key_id: String,
        /// sequence_went_backwards: the highest seq sealed before
        held_sealed_seq: Option<u64>,
        /// head_changed: the head held for that seq
        held_head: Option<String>,
    }
    ocsf: |e, on| Ocsf::event_log(format!(
            "ALERT: a checkpoint of {} contradicts one held: {}",
            e.origin, e.conflict
        ), on),
}

audit_event! {
    /// At start, a torn last line (a crash mid-write) was cut off; the chain continues from
    /// the last whole record.
    AuditTornTailDiscarded = "audit.torn_tail_discarded" {
        writers: "agent, controller", class: EventLogActivity, activity: 99 "Torn Tail Discarded",
        outcome: Success, severity: MEDIUM,
    }
    {
        /// how many bytes were cut
        bytes_discarded: u64,
    }
    ocsf: |e, on| Ocsf::event_log(format!(
            "{} cut a torn last line of {} bytes from its audit file",
            on.host, e.bytes_discarded
        ), on),
}

/// Every event type loggate writes, in the order of `docs/audit-events.md`.
pub const CATALOGUE: &[&EventType] = &[
    ReadAllowed::TYPE,
    ReadReopened::TYPE,
    ReadListed::TYPE,
    ReadDenied::TYPE,
    ReadFinished::TYPE,
    GrantIssued::TYPE,
    GrantReceived::TYPE,
    GrantRejected::TYPE,
    GrantRevoked::TYPE,
    GrantExpired::TYPE,
    GrantDropped::TYPE,
    AccessRequested::TYPE,
    AccessApproved::TYPE,
    AccessDenied::TYPE,
    AccessReviewRefused::TYPE,
    AccessRequestRefused::TYPE,
    AccessCancelled::TYPE,
    AccessExpired::TYPE,
    AccessBreakGlass::TYPE,
    AccessBreakGlassReviewed::TYPE,
    PolicyReloaded::TYPE,
    PolicyRefused::TYPE,
    NotifyFailed::TYPE,
    UserKeyEnrolled::TYPE,
    AuthSignIn::TYPE,
    AuthSignInRefused::TYPE,
    AuthCertificateIssued::TYPE,
    TlsRefused::TYPE,
    AgentTokenCreated::TYPE,
    AgentTokenRevoked::TYPE,
    AgentEnrolled::TYPE,
    AgentEnrolRefused::TYPE,
    AgentRemoved::TYPE,
    UserLocked::TYPE,
    UserUnlocked::TYPE,
    AdminStepUpRefused::TYPE,
    AgentCertificateRenewed::TYPE,
    ControllerConnected::TYPE,
    ControllerRefused::TYPE,
    ControllerResynced::TYPE,
    BypassRead::TYPE,
    BypassFinding::TYPE,
    BypassReadRepeated::TYPE,
    BypassHeldOpen::TYPE,
    BypassLeftRoots::TYPE,
    BypassEventsLost::TYPE,
    BypassUnavailable::TYPE,
    AgentStarted::TYPE,
    AgentStopped::TYPE,
    ControllerStarted::TYPE,
    ControllerStopped::TYPE,
    AuditCheckpoint::TYPE,
    AuditRotated::TYPE,
    AuditFilesDeleted::TYPE,
    AuditBudgetExhausted::TYPE,
    AuditBudgetRecovered::TYPE,
    AuditCheckpointKeyEnrolled::TYPE,
    AuditCheckpointRefused::TYPE,
    AuditCheckpointConflict::TYPE,
    AuditTornTailDiscarded::TYPE,
    AgentStatusRead::TYPE,
    AgentStatusDenied::TYPE,
];

/// An event for the audit module's own tests: numbered, outside the catalogue.
#[cfg(test)]
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TestEvent {
    pub i: u64,
    pub tag: &'static str,
}

#[cfg(test)]
impl TestEvent {
    /// Event number `i`, without a tag.
    pub(crate) fn n(i: u64) -> Self {
        TestEvent { i, tag: "" }
    }
}

#[cfg(test)]
impl AuditEvent for TestEvent {
    const TYPE: &'static EventType = &EventType {
        name: "test.event",
        writers: "tests",
        about: "A test's own event.",
        class: Class::Base,
        activity_id: 99,
        activity_name: "Test",
        outcome: Outcome::Success,
        severity: INFO,
        fields: &[("i", "a number"), ("tag", "a label")],
    };

    fn ocsf<'a>(&'a self, on: &'a Source<'_>) -> Ocsf<'a> {
        Ocsf::base(format!("{} on {}", Self::TYPE.name, on.host))
    }
}
