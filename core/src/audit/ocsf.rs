//! The shape of an audit record: an OCSF 1.8.0 event, valid against the official schema.
//!
//! A line is one JSON object that starts with `unmapped.loggate`: the hash chain's `seq` and
//! `prev` (see the module above), then, unchanged in name and value, every field of the event.
//! Chain and checkpoint fields stay there until OCSF's `record_integrity` profile is released.
//! The OCSF event follows: classification (`class_uid`, `activity_id`, `type_uid`, …; the
//! activity's id means what the event is, and activity 99's `type_name` is `"<class>: Other"`),
//! `time` (epoch ms, `timezone_offset` 0), `severity_id`, `status_id`, `message` (a one-line
//! summary), `metadata` (the event's UUIDv7 `uid` for de-duplication, `sequence` = `seq`,
//! loggate's event name as `event_code`, and `profiles: ["host"]` where the class takes
//! `device` from that profile), `device` (the host), `observables` (only true values: the
//! host, the person, the client's IP, the file) and the class's own objects (`actor`, `user`,
//! `api`, `file`, `finding_info`, …).
//!
//! [`CATALOGUE`] lists every event type loggate writes (declared as types in
//! [`super::events`]): its class, activity and fields. `docs/audit-events.md` is generated from
//! it (a test fails when they differ), [`catalogue_problems`] checks a record against it, and
//! the tests check every record kind against the official OCSF 1.8.0 schema.

pub use super::events::CATALOGUE;
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
    /// 0: only for event types outside [`CATALOGUE`] (a test's own events).
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

    /// Whether the class takes `device` from OCSF's `host` profile (so a record lists it in
    /// `metadata.profiles`) rather than defining it itself.
    pub fn device_from_profile(self) -> bool {
        matches!(
            self,
            Class::ApiActivity | Class::UserAccessManagement | Class::Authentication
        )
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
}

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

impl EventType {
    /// Every field of the event: its own and, for `bypass.finding`, those of the
    /// `bypass.read` it is about (copied unchanged).
    pub fn all_fields(&self) -> impl Iterator<Item = &(&'static str, &'static str)> {
        let shared: &[(&str, &str)] = if self.class == Class::DetectionFinding {
            <super::events::BypassRead as super::events::AuditEvent>::TYPE.fields
        } else {
            &[]
        };
        self.fields.iter().chain(shared)
    }
}

/// The catalogue entry of an event name.
pub fn event_type(name: &str) -> Option<&'static EventType> {
    CATALOGUE.iter().copied().find(|e| e.name == name)
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

/// The names of the chain's fields in `unmapped.loggate`; no event may have a field of these
/// names.
pub const CHAIN_FIELDS: [&str; 2] = ["seq", "prev"];

/// The exact bytes of one record (without the newline):
/// `{"unmapped":{"loggate":{"seq":…,"prev":"…",<the event's fields>}},<OCSF event>}`.
///
/// The chain leads the line so that a reader finds `seq` without parsing the record (see
/// `ship::spool::seq_of`); it sits under `unmapped`, the one place OCSF leaves free for a
/// producer's own attributes, so the record is valid OCSF. Files written before this layout
/// have `seq` and `prev` as the line's first two top-level keys; readers take both (see
/// [`super::chain_link`]).
pub fn line(
    source: &Source,
    seq: u64,
    prev: &str,
    kind: &EventType,
    fields: Map<String, Value>,
    stamp: Stamp,
) -> Result<Vec<u8>, serde_json::Error> {
    if let Some(reserved) = CHAIN_FIELDS.iter().find(|f| fields.contains_key(**f)) {
        return Err(serde::ser::Error::custom(format!(
            "event {} has a field named {reserved:?}, which is reserved for the chain",
            kind.name
        )));
    }
    let body = serde_json::to_vec(&shape(source, seq, kind, &fields, &stamp))?;
    let own = serde_json::to_vec(&fields)?;
    let mut line = format!("{{\"unmapped\":{{\"loggate\":{{\"seq\":{seq},\"prev\":").into_bytes();
    line.extend(serde_json::to_vec(prev)?);
    // `own` is `{…}`: its members follow the chain's, in the same object.
    if own.len() > 2 {
        line.push(b',');
        line.extend_from_slice(&own[1..own.len() - 1]);
    }
    line.extend_from_slice(b"}},");
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
    /// The reason code of a failure or of a stream's end, as loggate writes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_detail: Option<&'a str>,
    time: i64,
    /// UTC: `time` is epoch milliseconds.
    timezone_offset: i32,
    message: String,
    metadata: Metadata<'a>,
    device: Device<'a>,
    observables: Vec<Observable>,
    #[serde(flatten)]
    objects: Objects<'a>,
}

/// What a SIEM indexes to pivot on: the person, the host, the reader's address, the file.
#[derive(Serialize)]
struct Observable {
    /// The attribute's dotted path in the record.
    name: &'static str,
    type_id: u8,
    #[serde(rename = "type")]
    kind: &'static str,
    value: String,
}

#[derive(Serialize)]
struct Metadata<'a> {
    version: &'static str,
    /// `host` where the class takes `device` from that profile (see [`Class::device_from_profile`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    profiles: Option<[&'static str; 1]>,
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
    /// loggate's id of the host (the agent id, or `controller`): unique in a deployment.
    uid: &'a str,
    type_id: u8,
    #[serde(rename = "type")]
    kind: &'static str,
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
    /// 2 Application: the audit log is loggate's own.
    log_type_id: u8,
    log_type: &'static str,
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
    /// The grant decided the read (it was allowed under it).
    #[serde(skip_serializing_if = "Option::is_none")]
    is_applied: Option<bool>,
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
    programmatic_credentials: Option<[Credential<'a>; 1]>,
}

/// The certificate key grants are bound to (OCSF `programmatic_credential`).
#[derive(Serialize)]
struct Credential<'a> {
    uid: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct Api {
    operation: &'static str,
    service: Service<'static>,
}

#[derive(Serialize)]
struct Service<'a> {
    name: &'a str,
    /// loggate's version: the agent and the controller are loggate's services.
    version: &'static str,
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
    svc_name: &'static str,
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
    ptid: Option<&'a Value>,
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
    kind: &'a EventType,
    fields: &'a Map<String, Value>,
    stamp: &'a Stamp,
) -> Event<'a> {
    let event = kind.name;
    let class = kind.class;
    let (activity_id, activity_name) = (kind.activity_id, kind.activity_name);
    let (category_uid, category_name) = class.category();
    let (status_id, status_detail) = status(kind.outcome, fields);
    let severity_id = match kind.severity {
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
        // Activity 99's caption is "Other"; loggate's own label stays in `activity_name`.
        type_name: format!(
            "{}: {}",
            class.name(),
            if activity_id == 99 {
                "Other"
            } else {
                activity_name
            }
        ),
        severity_id,
        severity: SEVERITY_NAMES[usize::from(severity_id)],
        status_id,
        status: status_name(class, status_id),
        status_code: status_detail,
        status_detail,
        time: stamp.time_ms,
        timezone_offset: 0,
        message: message(kind, fields, source.host),
        metadata: Metadata {
            version: OCSF_VERSION,
            profiles: class.device_from_profile().then_some(["host"]),
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
            uid: source.host,
            type_id: 1,
            kind: "Server",
        },
        observables: observables(class, fields, source.host),
        objects: class_objects(class, event, fields, source),
    }
}

/// A field as text for a summary: strings bare, other values as JSON, null or absent as
/// `unknown`; control characters (a hostile path or reason) become spaces, so the summary is
/// one line.
fn shown(fields: &Map<String, Value>, key: &str) -> String {
    let text = match fields.get(key) {
        None | Some(Value::Null) => "unknown".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The record's one-line summary (OCSF `message`), for people reading the SIEM.
fn message(kind: &EventType, f: &Map<String, Value>, host: &str) -> String {
    let v = |key: &str| shown(f, key);
    let who = if present(f, "subject").is_some() {
        v("subject")
    } else {
        "an unidentified caller".to_string()
    };
    let text = match kind.name {
        "read.allowed" => format!(
            "{who} was allowed to read {} on {host} ({}, grant {})",
            v("path"),
            v("mode"),
            v("grant_id")
        ),
        "read.reopened" => format!(
            "{who}'s follow of {} on {host} moved to the file that replaced it (grant {})",
            v("path"),
            v("grant_id")
        ),
        "read.denied" => format!(
            "{who} was refused reading {} on {host}: {}",
            v("path"),
            v("reason_code")
        ),
        "read.finished" => format!(
            "{who}'s read of {} on {host} ended ({}) after {} bytes",
            v("path"),
            v("end_reason"),
            v("bytes")
        ),
        "grant.issued" => format!(
            "{} issued grant {} to {who} for {}",
            v("issuer"),
            v("grant_id"),
            v("paths")
        ),
        "grant.received" => format!(
            "{host} installed grant {} for {who} on {}",
            v("grant_id"),
            v("paths")
        ),
        "grant.rejected" => format!(
            "{host} rejected grant {}: {}",
            v("grant_id"),
            v("reason_code")
        ),
        "grant.revoked" => format!(
            "grant {} was revoked by {} on {host}",
            v("grant_id"),
            v("revoked_by")
        ),
        "grant.expired" => format!("grant {} of {who} expired on {host}", v("grant_id")),
        "grant.dropped" => format!(
            "{host} dropped stored grant {}: {}",
            v("grant_id"),
            v("reason")
        ),
        "access.requested" => format!(
            "{who} requested access to {} on {} under role {} ({})",
            v("paths"),
            v("hosts"),
            v("role"),
            v("approval")
        ),
        "access.approved" => format!(
            "{} approved request {} of {who} ({} of {})",
            v("approver"),
            v("request_id"),
            v("approvals"),
            v("approvals_needed")
        ),
        "access.denied" => format!(
            "{} denied request {} of {who}",
            v("approver"),
            v("request_id")
        ),
        "access.review_refused" => format!(
            "{} was refused reviewing request {} of {who}: {}",
            v("approver"),
            v("request_id"),
            v("reason_code")
        ),
        "access.request_refused" => format!("a request of {who} was refused: {}", v("reason_code")),
        "access.cancelled" => format!("request {} of {who} was cancelled", v("request_id")),
        "access.expired" => format!("request {} of {who} expired undecided", v("request_id")),
        "access.break_glass" => format!(
            "BREAK-GLASS: {who} was granted {} on {} without approval ({}, grant {})",
            v("paths"),
            v("hosts"),
            v("how"),
            v("grant_id")
        ),
        "access.break_glass_reviewed" => format!(
            "{} reviewed break-glass grant {} of {who}",
            v("approver"),
            v("grant_id")
        ),
        "notify.failed" => format!(
            "a notification of {} to {} failed after {} attempts: {}",
            v("notified_event"),
            v("webhook"),
            v("attempts"),
            v("error")
        ),
        "policy.reloaded" => format!(
            "the access policy {} was loaded ({} roles), by {}",
            v("file"),
            v("roles"),
            v("triggered_by")
        ),
        "policy.refused" => format!(
            "the access policy {} was refused, the one in force stays: {}",
            v("file"),
            v("reason")
        ),
        "user.key_enrolled" => format!("{who}'s certificate key was enrolled on first contact"),
        "tls.refused" => format!(
            "{} on {host} refused a TLS handshake from {}: {}",
            v("service"),
            v("peer"),
            v("reason_code")
        ),
        "bypass.read" | "bypass.finding" => format!(
            "{} (pid {}, uid {}) opened {} on {host} around the gate{}",
            v("comm"),
            v("pid"),
            v("uid"),
            v("path"),
            match (kind.name, f.get("expected").and_then(Value::as_bool)) {
                ("bypass.finding", Some(true)) => ", an allow-listed reader without a grant",
                ("bypass.finding", _) => ", without a grant",
                _ => "",
            }
        ),
        "bypass.held_open" => format!(
            "{} (pid {}, uid {}) held {} open on {host} when the bypass audit started",
            v("comm"),
            v("pid"),
            v("uid"),
            v("path")
        ),
        "bypass.left_roots" => format!(
            "protected file {} left the roots on {host} (now {}); it stays protected",
            v("path"),
            v("new_path")
        ),
        "bypass.read_repeated" => format!(
            "{} (pid {}) opened {} on {host} {} more times around the gate",
            v("comm"),
            v("pid"),
            v("path"),
            v("repeats")
        ),
        "bypass.events_lost" => format!(
            "{host} lost {} bypass events: {}",
            v("lost_since_last"),
            v("reason")
        ),
        "bypass.unavailable" => {
            format!("the bypass audit on {host} is unavailable: {}", v("reason"))
        }
        "agent.started" => format!("agent {host} started (bypass audit: {})", v("bypass_mode")),
        "agent.stopped" => format!("agent {host} stopped"),
        "controller.started" => format!("the controller started on {}", v("listen")),
        "controller.stopped" => "the controller stopped".to_string(),
        "audit.checkpoint" => format!(
            "{host} sealed its audit chain through seq {}",
            v("sealed_seq")
        ),
        "audit.rotated" => format!("{host} rotated its audit file to {}", v("previous_file")),
        "audit.checkpoint_key_enrolled" => format!(
            "the checkpoint key {} of agent {} was enrolled ({})",
            v("key_id"),
            v("agent_id"),
            v("how")
        ),
        "audit.checkpoint_refused" => format!(
            "checkpoints of agent {} were refused: {}",
            v("agent_id"),
            v("reason_code")
        ),
        "audit.checkpoint_conflict" => format!(
            "ALERT: a checkpoint of {} contradicts one held: {}",
            v("origin"),
            v("conflict")
        ),
        "audit.torn_tail_discarded" => format!(
            "{host} cut a torn last line of {} bytes from its audit file",
            v("bytes_discarded")
        ),
        other => format!("{other} on {host}"),
    };
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The person's short name (the last segment of a SPIFFE id).
fn short_name(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

/// The record's observables: only values loggate knows to be true (no `unknown` user).
fn observables(class: Class, f: &Map<String, Value>, host: &str) -> Vec<Observable> {
    let user = |name, id: &str| Observable {
        name,
        type_id: 4,
        kind: "User Name",
        value: short_name(id).to_string(),
    };
    let file = |name, path: &str| Observable {
        name,
        type_id: 45,
        kind: "File Path",
        value: path.to_string(),
    };
    let ip = |name| {
        text(f, "peer")
            .and_then(|p| p.parse::<std::net::SocketAddr>().ok())
            .map(|a| Observable {
                name,
                type_id: 2,
                kind: "IP Address",
                value: a.ip().to_string(),
            })
    };
    let subject = text(f, "subject");
    let path = text(f, "path");
    let mut found = vec![Observable {
        name: "device.hostname",
        type_id: 1,
        kind: "Hostname",
        value: host.to_string(),
    }];
    match class {
        Class::ApiActivity => {
            found.extend(subject.map(|s| user("actor.user.name", s)));
            found.extend(ip("src_endpoint.ip"));
            found.extend(path.map(|p| file("resources.name", p)));
        }
        Class::UserAccessManagement => {
            found.extend(subject.map(|s| user("user.name", s)));
            let by = text(f, "approver")
                .or_else(|| text(f, "issuer"))
                .or_else(|| text(f, "revoked_by"));
            found.extend(by.map(|b| user("actor.user.name", b)));
        }
        Class::Authentication => {
            found.extend(subject.map(|s| user("user.name", s)));
            found.extend(ip("src_endpoint.ip"));
        }
        Class::FileSystemActivity | Class::DetectionFinding => {
            let at = |plain, nested| {
                if class == Class::FileSystemActivity {
                    plain
                } else {
                    nested
                }
            };
            found.extend(
                subject.map(|s| user(at("actor.user.name", "evidences.actor.user.name"), s)),
            );
            found.extend(text(f, "user").map(|u| {
                user(
                    at(
                        "actor.process.user.name",
                        "evidences.actor.process.user.name",
                    ),
                    u,
                )
            }));
            found.extend(text(f, "comm").map(|c| Observable {
                name: at("actor.process.name", "evidences.actor.process.name"),
                type_id: 9,
                kind: "Process Name",
                value: c.to_string(),
            }));
            found.extend(path.map(|p| file(at("file.path", "evidences.file.path"), p)));
        }
        Class::EventLogActivity | Class::Base => {}
    }
    found
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
            programmatic_credentials: key.map(|uid| {
                [Credential {
                    uid,
                    kind: "Certificate public key SHA-256",
                }]
            }),
        },
        None => User {
            uid: None,
            name: Some("unknown"),
            type_id: 0,
            kind: "Unknown",
            programmatic_credentials: None,
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
        ptid: present(f, "tid"),
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
            programmatic_credentials: None,
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
                    let denied = event == "read.denied";
                    [Authorization {
                        decision: if denied { "Denied" } else { "Allowed" },
                        policy: Policy {
                            uid,
                            name: "loggate grant",
                            is_applied: (!denied).then_some(true),
                        },
                    }]
                }),
                ..Actor::default()
            },
            api: Api {
                operation: "ReadLog",
                service: Service {
                    name: "loggate.v1.Agent",
                    version: env!("CARGO_PKG_VERSION"),
                },
            },
            src_endpoint: endpoint(text(f, "peer")),
            dst_endpoint: Host {
                hostname: source.host,
                svc_name: "loggate agent",
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
                // What was given or taken: read access to the grant's paths where the event
                // names them, else the grant itself.
                privileges: match f.get("paths").and_then(Value::as_array) {
                    Some(ps) => ps
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|p| format!("read:{p}"))
                        .collect(),
                    // A request (`access.*`) gives or withholds what it asked for; a policy
                    // load changes who may ask for what.
                    None => text(f, "grant_id")
                        .map(|g| vec![format!("grant:{g}")])
                        .or_else(|| text(f, "request_id").map(|r| vec![format!("request:{r}")]))
                        .or_else(|| text(f, "file").map(|p| vec![format!("access policy:{p}")]))
                        .unwrap_or_default(),
                },
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
                version: env!("CARGO_PKG_VERSION"),
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
            log_type_id: 2,
            log_type: "Application",
        }),
        Class::Base => Objects::None {},
    }
}

/// What is wrong with a record as loggate's catalogue sees it: an unknown event, a class,
/// activity or `type_uid` that is not the catalogue's, a field the catalogue does not document,
/// no chain link. Empty when the record is what its event type says.
///
/// Whether the record is valid OCSF is a question for the official schema, not for a list we
/// keep: the tests hold every record kind against it with `loggate-ocsf-validate` (the rules of
/// a validating SIEM), see `ocsf/tests.rs` and `tests/tests/audit_schema.rs`.
pub fn catalogue_problems(record: &Value) -> Vec<String> {
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
    if let Err(why) = super::chain_link(record) {
        problems.push(why);
    }
    let documented = |field: &str| kind.all_fields().any(|(f, _)| *f == field);
    if let Some(fields) = super::record_fields(record) {
        for field in fields
            .keys()
            .filter(|f| !documented(f) && !CHAIN_FIELDS.contains(&f.as_str()))
        {
            problems.push(format!("field {field:?} of {name} is not documented"));
        }
    } else {
        problems.push("no unmapped.loggate".into());
    }
    problems
}

#[cfg(test)]
mod tests;
