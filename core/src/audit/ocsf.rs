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
//! Who fills what: this module keeps the envelope (classification, time, `metadata`, `device`,
//! severity and status from the event type's rules) and the serialization; each event builds
//! its own part — summary, class objects, observables, grant, reason code — from its typed
//! fields through [`AuditEvent::ocsf`] and the class constructors of [`Ocsf`]. No field is
//! looked up by name here, so a renamed field breaks the build, not the record. The bytes
//! written are pinned by `testdata/golden.jsonl` (see `ocsf/golden.rs`).
//!
//! [`CATALOGUE`] lists every event type loggate writes (declared as types in
//! [`super::events`]): its class, activity and fields. `docs/audit-events.md` is generated from
//! it (a test fails when they differ), [`catalogue_problems`] checks a record against it, and
//! the tests check every record kind against the official OCSF 1.8.0 schema.

use super::events::ReadResource;
pub use super::events::{AuditEvent, CATALOGUE};
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
    /// 3001: a person's account was locked or unlocked.
    AccountChange,
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
    /// The class's `class_uid`.
    pub fn uid(self) -> u64 {
        match self {
            Class::FileSystemActivity => 1001,
            Class::EventLogActivity => 1008,
            Class::DetectionFinding => 2004,
            Class::AccountChange => 3001,
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
            Class::ApiActivity
                | Class::UserAccessManagement
                | Class::Authentication
                | Class::AccountChange
        )
    }

    /// The class's `class_name`, as the schema captions it.
    pub fn name(self) -> &'static str {
        match self {
            Class::FileSystemActivity => "File System Activity",
            Class::EventLogActivity => "Event Log Activity",
            Class::DetectionFinding => "Detection Finding",
            Class::AccountChange => "Account Change",
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
            Class::AccountChange | Class::Authentication | Class::UserAccessManagement => {
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
    /// 2 Failure, with `status_detail` = the reason code the event gives ([`Ocsf::detail`]:
    /// its `reason_code`, else its `reason`, else none).
    Failure,
    /// From the stream's end reason the event gives ([`Ocsf::detail`]): [`FAILED_ENDS`] are a
    /// failure, any other end a success; `status_detail` = the end reason.
    StreamEnd,
    /// A finding's lifecycle status: 1 New.
    NewFinding,
}

/// How an event's `severity_id` is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Always this `severity_id` (1 Informational … 4 High).
    Fixed(u8),
    /// From the event's `severity` field, through [`Ocsf::severity_from`]: `low` is 2 Low,
    /// anything else 4 High (and High when the event gives none: an alert is not lost).
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
    /// Its OCSF class.
    pub class: Class,
    /// Its `activity_id` in that class: it must mean what the event is (99 is "Other").
    pub activity_id: u64,
    /// Its `activity_name`: the class's caption, or loggate's own label for activity 99.
    pub activity_name: &'static str,
    /// How its `status_id` is decided.
    pub outcome: Outcome,
    /// How its `severity_id` is decided.
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
    /// The host: the agent id, or `controller` (`device`).
    pub host: &'a str,
    /// The audit file's name (`metadata.log_name`).
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
    /// When the record is written, epoch ms (`time`).
    pub time_ms: i64,
    /// UUIDv7 (`metadata.uid`).
    pub uid: String,
}

impl Stamp {
    /// The stamp of a record written now, with a fresh uid.
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
/// `fields` are the event's own fields as [`super::AuditLog`] encodes them (a JSON object with
/// sorted keys, kept under `unmapped.loggate`); the OCSF objects come from the typed event
/// itself ([`AuditEvent::ocsf`]), the envelope from its type and `source`, `seq` and `stamp`.
///
/// The chain leads the line so that a reader finds `seq` without parsing the record (see
/// `ship::spool::seq_of`); it sits under `unmapped`, the one place OCSF leaves free for a
/// producer's own attributes, so the record is valid OCSF. Files written before this layout
/// have `seq` and `prev` as the line's first two top-level keys; readers take both (see
/// [`super::chain_link`]).
pub fn line<E: AuditEvent>(
    source: &Source,
    seq: u64,
    prev: &str,
    event: &E,
    fields: &Map<String, Value>,
    stamp: Stamp,
) -> Result<Vec<u8>, serde_json::Error> {
    let kind = E::TYPE;
    if let Some(reserved) = CHAIN_FIELDS.iter().find(|f| fields.contains_key(**f)) {
        return Err(serde::ser::Error::custom(format!(
            "event {} has a field named {reserved:?}, which is reserved for the chain",
            kind.name
        )));
    }
    let body = serde_json::to_vec(&shape(source, seq, kind, event.ocsf(source), &stamp))?;
    let own = serde_json::to_vec(fields)?;
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
    Account(AccessObjects<'a>),
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
    duration: Option<u64>,
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
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    ptid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd_line: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<File<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_process: Option<Parent>,
}

#[derive(Serialize)]
struct Parent {
    pid: u32,
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

/// The envelope around an event's own OCSF parts: classification from its type, time and uid
/// from the stamp, the host from the source, severity and status from the type's rules.
fn shape<'a>(
    source: &'a Source,
    seq: u64,
    kind: &'static EventType,
    parts: Ocsf<'a>,
    stamp: &'a Stamp,
) -> Event<'a> {
    let class = kind.class;
    let (activity_id, activity_name) = (kind.activity_id, kind.activity_name);
    let (category_uid, category_name) = class.category();
    let (status_id, status_detail) = match kind.outcome {
        Outcome::Success | Outcome::NewFinding => (1, None),
        Outcome::Failure => (2, parts.status_detail),
        Outcome::StreamEnd if FAILED_ENDS.contains(&parts.status_detail.unwrap_or_default()) => {
            (2, parts.status_detail)
        }
        Outcome::StreamEnd => (1, parts.status_detail),
    };
    let severity_id = match kind.severity {
        Severity::Fixed(n) => n,
        Severity::FromField => parts.severity_id.unwrap_or(4),
    };
    let mut observables = Vec::with_capacity(parts.observables.len() + 1);
    observables.push(Observable {
        name: "device.hostname",
        type_id: 1,
        kind: "Hostname",
        value: source.host.to_string(),
    });
    observables.extend(parts.observables);
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
        severity: SEVERITY_NAMES[usize::from(severity_id).min(SEVERITY_NAMES.len() - 1)],
        status_id,
        status: status_name(class, status_id),
        status_code: status_detail,
        status_detail,
        time: stamp.time_ms,
        timezone_offset: 0,
        // Control characters (a hostile path or reason) become spaces: the summary is one line.
        message: parts
            .message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
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
            event_code: kind.name,
            log_name: &source.log_name,
            log_provider: "loggate",
            correlation_uid: parts.correlation_uid,
        },
        device: Device {
            hostname: source.host,
            name: source.host,
            uid: source.host,
            type_id: 1,
            kind: "Server",
        },
        observables,
        objects: parts.objects,
    }
}

/// The `end_reason` of a stream cut by a read error: a failure.
pub const READ_ERROR: &str = "read_error";
/// The `end_reason` of a stream cut because its compressed file decompresses to more than the
/// agent's limits (perhaps a decompression bomb): a failure.
pub const DECOMPRESSION_LIMIT: &str = "decompression_limit";
/// The stream ends that are failures (`status_id` 2); every other end is a success.
pub const FAILED_ENDS: [&str; 2] = [READ_ERROR, DECOMPRESSION_LIMIT];

// ---------------------------------------------------------------------------------------------
// What an event gives its record, from its own typed fields (see `AuditEvent::ocsf`).

/// An event's part of its OCSF record, built from its typed fields by [`AuditEvent::ocsf`]:
/// its one-line summary, its class's objects (actor, user, api, resources, file, finding, …)
/// and the values a SIEM pivots on (`observables`), its grant (`metadata.correlation_uid`), the
/// reason code of a failure (`status_detail`) and, for a type whose severity is
/// [`Severity::FromField`], its severity. The writer adds the envelope (classification, time,
/// metadata, device, status).
///
/// Start from the constructor of the event's class ([`Ocsf::read`], [`Ocsf::access`],
/// [`Ocsf::authentication`], [`Ocsf::file_open`], [`Ocsf::finding`], [`Ocsf::event_log`]),
/// then add what applies ([`Ocsf::detail`], [`Ocsf::severity_from`]).
pub struct Ocsf<'a> {
    message: String,
    status_detail: Option<&'a str>,
    severity_id: Option<u8>,
    correlation_uid: Option<&'a str>,
    observables: Vec<Observable>,
    objects: Objects<'a>,
}

/// A read through the gate as OCSF API Activity (the `read.*` events).
pub struct ReadCall<'a> {
    /// The caller's SPIFFE id, when the certificate was a person's.
    pub subject: Option<&'a str>,
    /// The SHA-256 of the caller's certificate key.
    pub key_sha256: Option<&'a str>,
    /// The client's `ip:port` (another text is kept as the endpoint's name).
    pub peer: Option<&'a str>,
    /// The grant that allowed (or was involved in) the read.
    pub grant_id: Option<&'a str>,
    /// The read was refused (the grant's authorization is `Denied`, not applied).
    pub denied: bool,
    /// The file, as served or as requested; `journal:<unit>` for a journal read.
    pub path: Option<&'a str>,
    /// What `path` names: a log file, or a unit's journal (see [`ReadResource`]).
    pub resource: ReadResource,
    /// How long the stream lasted.
    pub duration_ms: Option<u64>,
    /// The agent's RPC (`api.operation`): `ReadLog`, `ListLogs` for a listing, or `Status`.
    pub operation: &'static str,
}

/// A change of who may read what, as OCSF User Access Management (grants, requests, policy).
pub struct AccessChange<'a> {
    /// Whose access it is (`user`); unknown when the event does not trust it.
    pub subject: Option<&'a str>,
    /// Who made the change (`actor.user`); loggate itself when none.
    pub by: Option<&'a str>,
    /// What was given or taken.
    pub privileges: Privileges<'a>,
    /// The grant it is about (`metadata.correlation_uid`).
    pub grant_id: Option<&'a str>,
}

/// What an access change gives or takes (`privileges`).
pub enum Privileges<'a> {
    /// Read access to these path globs: `read:<glob>` each.
    Read(&'a [String]),
    /// A grant, where the event does not name its paths: `grant:<id>`.
    Grant(&'a str),
    /// What a request asked for: `request:<id>`.
    Request(&'a str),
    /// Who may ask for what: `access policy:<file>`.
    Policy(&'a str),
}

/// A mutual-TLS logon, accepted or refused, as OCSF Authentication.
pub struct Logon<'a> {
    /// The verified person (`user`); unknown for a refused handshake.
    pub subject: Option<&'a str>,
    /// The SHA-256 of their certificate key.
    pub key_sha256: Option<&'a str>,
    /// The service that was logged on to (`loggate controller` when none).
    pub service: Option<&'a str>,
    /// The client's `ip:port`.
    pub peer: Option<&'a str>,
}

/// A process that opened (or held) a protected file around the gate, and the file.
pub struct Opener<'a> {
    /// Its process id.
    pub pid: u32,
    /// Its thread id.
    pub tid: Option<u32>,
    /// Its parent's process id.
    pub ppid: Option<u32>,
    /// Its real uid.
    pub uid: Option<u32>,
    /// The uid's name.
    pub user: Option<&'a str>,
    /// The person the uid maps to (`actor.user`).
    pub subject: Option<&'a str>,
    /// Its command name.
    pub comm: Option<&'a str>,
    /// Its command line.
    pub cmdline: Option<&'a str>,
    /// Its executable's path.
    pub exe: Option<&'a str>,
    /// The protected path (`file.path`).
    pub path: Option<&'a str>,
    /// The basename it opened (`file.name`).
    pub opened_name: &'a str,
    /// The file's device, `major:minor`.
    pub device: &'a str,
    /// The file's inode.
    pub inode: u64,
}

impl<'a> Ocsf<'a> {
    fn new(message: String, objects: Objects<'a>, observables: Vec<Observable>) -> Self {
        Ocsf {
            message,
            status_detail: None,
            severity_id: None,
            correlation_uid: None,
            observables,
            objects,
        }
    }

    /// API Activity: a read through the gate (the agent's `loggate.v1.Agent` on `on.host`).
    pub fn read(message: String, on: &'a Source, call: ReadCall<'a>) -> Self {
        let observables = [
            call.subject.map(|s| Observable::user("actor.user.name", s)),
            Observable::ip("src_endpoint.ip", call.peer),
            call.path
                .map(|p| Observable::resource("resources.name", call.resource, p)),
        ];
        let objects = Objects::Api(ApiObjects {
            actor: Actor {
                user: Some(user(call.subject, call.key_sha256)),
                authorizations: call.grant_id.map(|uid| {
                    [Authorization {
                        decision: if call.denied { "Denied" } else { "Allowed" },
                        policy: Policy {
                            uid,
                            name: "loggate grant",
                            is_applied: (!call.denied).then_some(true),
                        },
                    }]
                }),
                ..Actor::default()
            },
            api: Api {
                operation: call.operation,
                service: Service {
                    name: "loggate.v1.Agent",
                    version: env!("CARGO_PKG_VERSION"),
                },
            },
            src_endpoint: endpoint(call.peer),
            dst_endpoint: Host {
                hostname: on.host,
                svc_name: "loggate agent",
            },
            resources: read_resource(call.resource, call.path),
            duration: call.duration_ms,
        });
        let mut parts = Ocsf::new(
            message,
            objects,
            observables.into_iter().flatten().collect(),
        );
        parts.correlation_uid = call.grant_id;
        parts
    }

    /// User Access Management: access given or taken, asked for, or the policy changed.
    pub fn access(message: String, change: AccessChange<'a>) -> Self {
        let observables = [
            change.subject.map(|s| Observable::user("user.name", s)),
            change.by.map(|b| Observable::user("actor.user.name", b)),
        ];
        let objects = Objects::Access(AccessObjects {
            user: user(change.subject, None),
            actor: match change.by {
                Some(by) => Actor {
                    user: Some(user(Some(by), None)),
                    ..Actor::default()
                },
                None => loggate_actor(),
            },
            privileges: match change.privileges {
                Privileges::Read(paths) => paths.iter().map(|p| format!("read:{p}")).collect(),
                Privileges::Grant(g) => vec![format!("grant:{g}")],
                Privileges::Request(r) => vec![format!("request:{r}")],
                Privileges::Policy(p) => vec![format!("access policy:{p}")],
            },
        });
        let mut parts = Ocsf::new(
            message,
            objects,
            observables.into_iter().flatten().collect(),
        );
        parts.correlation_uid = change.grant_id;
        parts
    }

    /// Account Change: `subject`'s account locked or unlocked by `by`.
    pub fn account_change(message: String, subject: &'a str, by: &'a str) -> Self {
        let observables = vec![
            Observable::user("user.name", subject),
            Observable::user("actor.user.name", by),
        ];
        let objects = Objects::Account(AccessObjects {
            user: user(Some(subject), None),
            actor: Actor {
                user: Some(user(Some(by), None)),
                ..Actor::default()
            },
            privileges: Vec::new(),
        });
        Ocsf::new(message, objects, observables)
    }

    /// Authentication: a mutual-TLS logon. A refused handshake has no verified user: `user` is
    /// Unknown (what the certificate claimed stays under `unmapped.loggate`, where no per-user
    /// rule reads it as a fact).
    pub fn authentication(message: String, logon: Logon<'a>) -> Self {
        let observables = [
            logon.subject.map(|s| Observable::user("user.name", s)),
            Observable::ip("src_endpoint.ip", logon.peer),
        ];
        let objects = Objects::Authentication(AuthenticationObjects {
            user: user(logon.subject, logon.key_sha256),
            auth_protocol_id: 99,
            auth_protocol: "mTLS",
            is_remote: true,
            service: Service {
                name: logon.service.unwrap_or("loggate controller"),
                version: env!("CARGO_PKG_VERSION"),
            },
            src_endpoint: logon.peer.map(|p| endpoint(Some(p))),
        });
        Ocsf::new(
            message,
            objects,
            observables.into_iter().flatten().collect(),
        )
    }

    /// File System Activity: a process opened a protected file around the gate.
    pub fn file_open(message: String, opener: Opener<'a>) -> Self {
        let observables = opener.observables(false);
        Ocsf::new(message, Objects::File(opener.objects()), observables)
    }

    /// Detection Finding: a bypass read by someone without a grant (`finding_uid`), an alert
    /// unless the reader is allow-listed (`expected`).
    pub fn finding(
        message: String,
        opener: Opener<'a>,
        finding_uid: Option<&'a str>,
        expected: bool,
    ) -> Self {
        let observables = opener.observables(true);
        let resources = log_file(opener.path);
        let objects = Objects::Finding(FindingObjects {
            finding_info: FindingInfo {
                uid: finding_uid,
                title: "Protected log file read around the gate without a grant",
                desc: "A process opened a file protected by loggate directly, and the person it runs as holds no grant covering it.",
                types: ["loggate bypass read"],
            },
            is_alert: !expected,
            evidences: [opener.objects()],
            resources,
        });
        Ocsf::new(message, objects, observables)
    }

    /// Event Log Activity: the audit log (`on.log_name`) and the daemon that writes it.
    pub fn event_log(message: String, on: &'a Source) -> Self {
        let objects = Objects::EventLog(EventLogObjects {
            actor: loggate_actor(),
            log_name: &on.log_name,
            log_provider: "loggate",
            log_type_id: 2,
            log_type: "Application",
        });
        Ocsf::new(message, objects, Vec::new())
    }

    /// A base event without class objects (only for event types outside [`CATALOGUE`]).
    pub fn base(message: String) -> Self {
        Ocsf::new(message, Objects::None {}, Vec::new())
    }

    /// The reason code of a failure, or of a stream's end (`status_detail`); ignored where the
    /// type's outcome is a success.
    pub fn detail(mut self, code: Option<&'a str>) -> Self {
        self.status_detail = code;
        self
    }

    /// Authentication by OpenID Connect (the `auth.*` sign-in events): protocol 4 `OpenID`
    /// instead of mutual TLS. No effect on another class.
    pub fn openid(mut self) -> Self {
        if let Objects::Authentication(auth) = &mut self.objects {
            auth.auth_protocol_id = 4;
            auth.auth_protocol = "OpenID";
        }
        self
    }

    /// The severity of a bypass record from its `severity` value: `low` is 2 Low, anything
    /// else 4 High. Used where the type's severity is [`Severity::FromField`].
    pub fn severity_from(mut self, severity: &str) -> Self {
        self.severity_id = Some(if severity == "low" { 2 } else { 4 });
        self
    }
}

impl<'a> Opener<'a> {
    /// The opener (its process and, when mapped, the person) and the protected file.
    fn objects(&self) -> FileObjects<'a> {
        let process = Process {
            pid: self.pid,
            ptid: self.tid,
            name: self.comm,
            cmd_line: self.cmdline,
            file: self.exe.map(|exe| File {
                path: Some(exe),
                name: exe.rsplit('/').next().unwrap_or(exe),
                type_id: 1,
                kind: "Regular File",
                uid: None,
            }),
            user: self.uid.map(|uid| User {
                uid: Some(uid.to_string().into()),
                name: self.user,
                type_id: 1,
                kind: "User",
                programmatic_credentials: None,
            }),
            parent_process: self.ppid.map(|pid| Parent { pid }),
        };
        FileObjects {
            actor: Actor {
                process: Some(process),
                user: self.subject.map(|s| user(Some(s), None)),
                ..Actor::default()
            },
            file: File {
                path: self.path,
                name: self.opened_name,
                type_id: 1,
                kind: "Regular File",
                uid: Some(format!("{}:{}", self.device, self.inode)),
            },
        }
    }

    /// The person, the process's user and name and the file; under `evidences.` in a finding.
    fn observables(&self, in_finding: bool) -> Vec<Observable> {
        let at = |plain, nested| if in_finding { nested } else { plain };
        [
            self.subject
                .map(|s| Observable::user(at("actor.user.name", "evidences.actor.user.name"), s)),
            self.user.map(|u| {
                Observable::user(
                    at(
                        "actor.process.user.name",
                        "evidences.actor.process.user.name",
                    ),
                    u,
                )
            }),
            self.comm.map(|c| Observable {
                name: at("actor.process.name", "evidences.actor.process.name"),
                type_id: 9,
                kind: "Process Name",
                value: c.to_string(),
            }),
            self.path
                .map(|p| Observable::file(at("file.path", "evidences.file.path"), p)),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

impl Observable {
    /// A person, by their short name.
    fn user(name: &'static str, id: &str) -> Observable {
        Observable {
            name,
            type_id: 4,
            kind: "User Name",
            value: short_name(id).to_string(),
        }
    }

    fn file(name: &'static str, path: &str) -> Observable {
        Observable {
            name,
            type_id: 45,
            kind: "File Path",
            value: path.to_string(),
        }
    }

    /// What a read names: a file's path, or a journal unit by its name.
    fn resource(name: &'static str, kind: ReadResource, path: &str) -> Observable {
        match kind {
            ReadResource::File => Observable::file(name, path),
            ReadResource::JournalUnit => Observable {
                name,
                type_id: 38,
                kind: "Resource Details Object: name",
                value: unit_name(path).to_string(),
            },
        }
    }

    /// The client's IP, when `peer` is an `ip:port`.
    fn ip(name: &'static str, peer: Option<&str>) -> Option<Observable> {
        peer.and_then(|p| p.parse::<std::net::SocketAddr>().ok())
            .map(|a| Observable {
                name,
                type_id: 2,
                kind: "IP Address",
                value: a.ip().to_string(),
            })
    }
}

// Helpers for events' summaries (`message`), which show values as earlier builds did.

/// Who a summary names: the SPIFFE id, or "an unidentified caller".
pub fn who(subject: Option<&str>) -> &str {
    subject.unwrap_or("an unidentified caller")
}

/// A value that may be unknown, for a summary: the value, or `unknown`.
pub fn or_unknown<T: std::fmt::Display>(value: &Option<T>) -> String {
    match value {
        Some(v) => v.to_string(),
        None => "unknown".to_string(),
    }
}

/// A list for a summary, as JSON: `["a","b"]`.
pub fn list(values: &[String]) -> String {
    serde_json::to_string(values).unwrap_or_default()
}

/// The person's short name (the last segment of a SPIFFE id).
fn short_name(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
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

fn status_name(class: Class, status_id: u8) -> &'static str {
    match (class, status_id) {
        (Class::DetectionFinding, 1) => "New",
        (_, 1) => "Success",
        (_, 2) => "Failure",
        _ => "Unknown",
    }
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

/// The `resources` entry of a read: a `Log File` by its path, or a `Journal Unit` by the
/// unit's name.
fn read_resource(kind: ReadResource, path: Option<&str>) -> Option<[Resource<'_>; 1]> {
    match kind {
        ReadResource::File => log_file(path),
        ReadResource::JournalUnit => path.map(|p| {
            [Resource {
                kind: "Journal Unit",
                name: unit_name(p),
            }]
        }),
    }
}

/// The unit a journal read's path (`journal:<unit>`) names; a path without the prefix, or
/// with nothing after it (a refused request's own text, e.g. an empty unit), is kept whole,
/// so that the resource and its observable never carry an empty name to a SIEM.
fn unit_name(path: &str) -> &str {
    match path.strip_prefix("journal:") {
        Some(unit) if !unit.is_empty() => unit,
        _ => path,
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
mod golden;
#[cfg(test)]
mod tests;
