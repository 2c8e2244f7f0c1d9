//! The validator's own tests: minimal valid records of the classes loggate writes pass, and each
//! rule is caught by a record that breaks exactly that rule.

use crate::{Constraint, Deprecated, FindingKind, Level, Report, Schema, Tally};
use serde_json::{json, Value};

fn schema() -> &'static Schema {
    match Schema::official() {
        Ok(s) => s,
        Err(e) => panic!("the vendored schema does not load: {e}"),
    }
}

fn check(record: &Value) -> Report {
    schema().validate(record)
}

/// Sets `value` at a dotted `path` of `record` (objects made on the way).
fn set(mut record: Value, path: &str, value: Value) -> Value {
    let mut at = &mut record;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        at = &mut at[*part];
    }
    at[parts[parts.len() - 1]] = value;
    record
}

/// Removes the key at a dotted `path` of `record`.
fn remove(mut record: Value, path: &str) -> Value {
    let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
    let mut at = &mut record;
    for part in parent.split('.').filter(|p| !p.is_empty()) {
        at = &mut at[part];
    }
    at.as_object_mut().expect("an object").remove(key);
    record
}

fn metadata() -> Value {
    json!({"version": "1.8.0", "product": {"name": "loggate", "vendor_name": "loggate"}})
}

/// Event Log Activity, Start: only what 1008 requires, and `log_name` for its constraint.
fn event_log_start() -> Value {
    json!({
        "class_uid": 1008, "category_uid": 1, "activity_id": 6, "type_uid": 100806,
        "severity_id": 1, "time": 1_795_766_400_000_i64, "metadata": metadata(),
        "log_name": "audit.jsonl"
    })
}

/// User Access Management, Assign Privileges.
fn user_access_assign() -> Value {
    json!({
        "class_uid": 3005, "category_uid": 3, "activity_id": 1, "type_uid": 300501,
        "severity_id": 1, "time": 1_795_766_400_000_i64, "metadata": metadata(),
        "privileges": ["read /var/log/app/*.log"],
        "user": {"uid": "spiffe://loggate.local/user/alice"}
    })
}

/// API Activity, Read.
fn api_read() -> Value {
    json!({
        "class_uid": 6003, "category_uid": 6, "activity_id": 2, "type_uid": 600302,
        "severity_id": 1, "time": 1_795_766_400_000_i64, "metadata": metadata(),
        "actor": {"user": {"uid": "spiffe://loggate.local/user/alice"}},
        "api": {"operation": "ReadLog"},
        "src_endpoint": {"ip": "127.0.0.1", "port": 51234}
    })
}

fn assert_conformant(record: &Value) {
    let report = check(record);
    assert!(report.is_conformant(), "{report}\n{record}");
}

/// The report has exactly one finding, at `path`, and it is of the kind `matches` accepts.
fn assert_only(record: &Value, path: &str, matches: impl Fn(&FindingKind) -> bool) -> Report {
    let report = check(record);
    assert_eq!(report.findings.len(), 1, "{report}\n{record}");
    assert!(report.has(path, matches), "{report}");
    report
}

#[test]
fn the_vendored_schema_is_the_official_1_8_0_with_the_classes_loggate_writes() {
    let s = schema();
    assert_eq!(s.version(), "1.8.0");
    for (uid, caption) in [
        (1001, "File System Activity"),
        (1008, "Event Log Activity"),
        (2004, "Detection Finding"),
        (3002, "Authentication"),
        (3005, "User Access Management"),
        (6003, "API Activity"),
    ] {
        assert_eq!(s.class_caption(uid), Some(caption));
    }
}

#[test]
fn minimal_records_of_event_log_user_access_and_api_activity_conform() {
    assert_conformant(&event_log_start());
    assert_conformant(&user_access_assign());
    assert_conformant(&api_read());
}

#[test]
fn captions_that_match_their_ids_conform() {
    let mut r = api_read();
    for (k, v) in [
        ("class_name", "API Activity"),
        ("category_name", "Application Activity"),
        ("activity_name", "Read"),
        ("type_name", "API Activity: Read"),
        ("severity", "Informational"),
        ("status", "Success"),
    ] {
        r = set(r, k, json!(v));
    }
    r = set(r, "status_id", json!(1));
    assert_conformant(&r);
}

#[test]
fn an_attribute_the_class_does_not_define_is_an_error() {
    let r = set(api_read(), "seq", json!(1));
    let report = assert_only(
        &r,
        "seq",
        |k| matches!(k, FindingKind::AttributeUnknown { defined_in } if defined_in.contains("6003")),
    );
    assert_eq!(report.findings[0].level(), Level::Error);
    assert_eq!(report.findings[0].kind.server_code(), "attribute_unknown");
}

#[test]
fn an_attribute_an_object_does_not_define_is_an_error_at_its_path() {
    let r = set(api_read(), "actor.user.nickname", json!("al"));
    assert_only(
        &r,
        "actor.user.nickname",
        |k| matches!(k, FindingKind::AttributeUnknown { defined_in } if defined_in == "object \"user\""),
    );
}

#[test]
fn unmapped_takes_anything() {
    let r = set(
        api_read(),
        "unmapped",
        json!({"loggate": {"seq": 1, "prev": "00", "nested": [{"x": null}]}}),
    );
    assert_conformant(&r);
}

#[test]
fn a_missing_required_attribute_is_an_error_also_inside_objects_and_when_null() {
    let r = remove(user_access_assign(), "privileges");
    assert_only(&r, "privileges", |k| *k == FindingKind::RequiredMissing);
    let r = remove(api_read(), "api.operation");
    assert_only(&r, "api.operation", |k| *k == FindingKind::RequiredMissing);
    let r = set(api_read(), "time", Value::Null);
    assert_only(&r, "time", |k| *k == FindingKind::RequiredMissing);
}

#[test]
fn a_value_of_the_wrong_type_is_an_error() {
    let r = set(api_read(), "time", json!("2026-12-04T13:00:00Z"));
    assert_only(
        &r,
        "time",
        |k| matches!(k, FindingKind::WrongType { expected, got: "string_t" } if expected == "timestamp_t (long_t)"),
    );
    let r = set(user_access_assign(), "privileges", json!("read"));
    assert_only(&r, "privileges", |k| {
        matches!(k, FindingKind::WrongType { .. })
    });
    let r = set(user_access_assign(), "user", json!("alice"));
    assert_only(
        &r,
        "user",
        |k| matches!(k, FindingKind::WrongType { expected, .. } if expected == "user (object)"),
    );
    // 443.0 is a float to a validating SIEM, not an integer.
    let r = set(api_read(), "src_endpoint.port", json!(443.0));
    assert_only(
        &r,
        "src_endpoint.port",
        |k| matches!(k, FindingKind::WrongType { expected, got: "float_t" } if expected == "port_t (integer_t)"),
    );
}

#[test]
fn a_number_outside_its_types_range_is_an_error() {
    let r = set(api_read(), "src_endpoint.port", json!(70000));
    assert_only(
        &r,
        "src_endpoint.port",
        |k| matches!(k, FindingKind::OutOfRange { type_name, .. } if type_name == "port_t"),
    );
}

#[test]
fn a_string_off_its_types_pattern_is_a_warning() {
    let r = set(api_read(), "src_endpoint.ip", json!("not an address"));
    let report = assert_only(
        &r,
        "src_endpoint.ip",
        |k| matches!(k, FindingKind::PatternMismatch { type_name } if type_name == "ip_t"),
    );
    assert_eq!(report.findings[0].level(), Level::Warning);
}

#[test]
fn an_enum_value_the_schema_does_not_define_is_an_error() {
    let r = set(api_read(), "severity_id", json!(7));
    assert_only(
        &r,
        "severity_id",
        |k| matches!(k, FindingKind::EnumValueUnknown { value } if value == "7"),
    );
}

#[test]
fn a_category_that_is_not_the_classes_is_an_error() {
    let r = set(api_read(), "category_uid", json!(3));
    assert_only(
        &r,
        "category_uid",
        |k| matches!(k, FindingKind::EnumValueUnknown { value } if value == "3"),
    );
}

#[test]
fn a_type_uid_that_is_not_class_times_100_plus_activity_is_an_error() {
    // 600303 is a defined type (Update), so only the sum is wrong.
    let r = set(api_read(), "type_uid", json!(600303));
    assert_only(&r, "type_uid", |k| {
        *k == FindingKind::TypeUidIncorrect {
            expected: 600302,
            got: 600303,
        }
    });
}

#[test]
fn an_unknown_or_missing_class_stops_validation_with_one_error() {
    let r = set(api_read(), "class_uid", json!(9999));
    assert_only(&r, "class_uid", |k| {
        *k == FindingKind::ClassUnknown { class_uid: 9999 }
    });
    let r = remove(api_read(), "class_uid");
    assert_only(&r, "class_uid", |k| *k == FindingKind::RequiredMissing);
    let report = check(&json!([1, 2]));
    assert!(
        report.has("", |k| *k == FindingKind::NotAnObject),
        "{report}"
    );
}

#[test]
fn an_activity_name_that_is_not_the_activitys_caption_is_a_caption_mismatch() {
    // loggate's old `agent.started`: activity 3 is "Export" in 1.8.0, not "Enable".
    let r = set(event_log_start(), "activity_id", json!(3));
    let r = set(r, "type_uid", json!(100803));
    let r = set(r, "activity_name", json!("Enable"));
    let report = assert_only(&r, "activity_name", |k| {
        matches!(k, FindingKind::CaptionMismatch { enum_path, expected, got, in_array: false }
            if enum_path == "activity_id" && expected == "Export" && got == "Enable")
    });
    assert_eq!(report.findings[0].level(), Level::Warning);
}

#[test]
fn for_activity_other_the_type_name_must_be_the_classes_other_caption() {
    let other = set(event_log_start(), "activity_id", json!(99));
    let other = set(other, "type_uid", json!(100899));
    let other = set(other, "activity_name", json!("Checkpoint"));
    let right = set(
        other.clone(),
        "type_name",
        json!("Event Log Activity: Other"),
    );
    assert_conformant(&right);
    let wrong = set(other, "type_name", json!("Event Log Activity: Checkpoint"));
    assert_only(&wrong, "type_name", |k| {
        matches!(k, FindingKind::CaptionMismatch { enum_path, expected, .. }
            if enum_path == "type_uid" && expected == "Event Log Activity: Other")
    });
}

#[test]
fn activity_other_named_other_is_suspicious() {
    let r = set(event_log_start(), "activity_id", json!(99));
    let r = set(r, "type_uid", json!(100899));
    let r = set(r, "activity_name", json!("Other"));
    assert_only(&r, "activity_name", |k| {
        matches!(k, FindingKind::OtherCaptionSuspicious { .. })
    });
}

#[test]
fn an_enum_array_whose_caption_array_disagrees_is_an_error() {
    let url = json!({"url_string": "https://x.example/", "category_ids": [1, 3], "categories": ["Adult/Mature Content", "Sex Education"]});
    let r = set(api_read(), "http_request", json!({"url": url}));
    let report = assert_only(
        &r,
        "http_request.url.categories[1]",
        |k| matches!(k, FindingKind::CaptionMismatch { in_array: true, expected, .. } if expected == "Pornography"),
    );
    assert_eq!(report.findings[0].level(), Level::Error);
}

#[test]
fn an_attribute_of_a_profile_the_record_does_not_list_is_an_error() {
    let device = json!({"hostname": "web-1", "type_id": 1});
    let r = set(api_read(), "device", device.clone());
    let report = assert_only(
        &r,
        "device",
        |k| matches!(k, FindingKind::ProfileNotListed { profiles } if profiles == &["host"]),
    );
    assert_eq!(report.findings[0].level(), Level::Error);
    let listed = set(r, "metadata.profiles", json!(["host"]));
    assert_conformant(&listed);
    // 1008 defines `device` itself: no profile needed.
    assert_conformant(&set(event_log_start(), "device", device));
}

#[test]
fn a_profile_the_schema_does_not_define_is_an_error() {
    let r = set(api_read(), "metadata.profiles", json!(["hots"]));
    assert_only(
        &r,
        "metadata.profiles[0]",
        |k| matches!(k, FindingKind::ProfileUnknown { profile } if profile == "hots"),
    );
}

#[test]
fn a_deprecated_attribute_is_a_warning_not_an_error() {
    let r = set(api_read(), "actor.user.credential_uid", json!("5f2b0c6e"));
    let report = assert_only(&r, "actor.user.credential_uid", |k| {
        matches!(k, FindingKind::Deprecated { what: Deprecated::Attribute, since, message }
            if since == "1.6.0" && message.contains("programmatic_credentials"))
    });
    assert_eq!(report.errors().count(), 0);
    assert_eq!(report.deprecations().count(), 1);
    assert!(!report.is_conformant());
}

#[test]
fn a_deprecated_enum_value_is_a_warning() {
    let r = set(
        user_access_assign(),
        "user.account",
        json!({"name": "alice", "type_id": 3}),
    );
    assert_only(&r, "user.account.type_id", |k| {
        matches!(
            k,
            FindingKind::Deprecated {
                what: Deprecated::EnumValue,
                ..
            }
        )
    });
}

#[test]
fn an_object_without_any_of_its_constrained_attributes_is_an_error() {
    let r = set(user_access_assign(), "user", json!({"type_id": 1}));
    assert_only(&r, "user", |k| {
        matches!(k, FindingKind::ConstraintFailed { constraint: Constraint::AtLeastOne, present: 0, attributes }
            if attributes.contains(&"uid".to_string()))
    });
    let r = remove(event_log_start(), "log_name");
    assert_only(&r, "", |k| {
        matches!(k, FindingKind::ConstraintFailed { .. })
    });
}

#[test]
fn an_observable_must_name_an_attribute_of_the_class() {
    let good = json!([{"name": "actor.user.uid", "type_id": 10, "value": "spiffe://loggate.local/user/alice"}]);
    assert_conformant(&set(api_read(), "observables", good));
    let bad = json!([{"name": "actor.user.spiffe", "type_id": 10, "value": "x"}]);
    assert_only(
        &set(api_read(), "observables", bad),
        "observables[0].name",
        |k| matches!(k, FindingKind::ObservableNameUnknown { name } if name == "actor.user.spiffe"),
    );
}

#[test]
fn the_metadata_version_is_held_against_the_schemas() {
    let newer = set(api_read(), "metadata.version", json!("1.9.0"));
    assert_only(&newer, "metadata.version", |k| {
        matches!(k, FindingKind::VersionIncompatible { .. })
    });
    let dev = set(api_read(), "metadata.version", json!("1.8.0-dev"));
    assert_only(&dev, "metadata.version", |k| {
        matches!(k, FindingKind::VersionIncompatible { .. })
    });
    let older = set(api_read(), "metadata.version", json!("1.7.0"));
    let report = assert_only(&older, "metadata.version", |k| {
        matches!(k, FindingKind::VersionOther { .. })
    });
    assert_eq!(report.findings[0].level(), Level::Warning);
    let junk = set(api_read(), "metadata.version", json!("v1.8"));
    assert_only(&junk, "metadata.version", |k| {
        matches!(k, FindingKind::VersionInvalid { .. })
    });
}

#[test]
fn missing_recommended_attributes_are_counted_not_reported_as_findings() {
    let bare = check(&api_read());
    assert!(bare.is_conformant());
    for path in ["message", "observables", "status_id", "actor.user.name"] {
        assert!(
            bare.missing_recommended.iter().any(|p| p == path),
            "{path} not in {:?}",
            bare.missing_recommended
        );
    }
    let with_message = check(&set(api_read(), "message", json!("alice read api.log")));
    assert_eq!(
        with_message.missing_recommended.len(),
        bare.missing_recommended.len() - 1
    );
    // A profile's recommended attributes count only when the profile is listed.
    assert!(!bare.missing_recommended.iter().any(|p| p == "device"));
}

#[test]
fn hostile_shapes_give_findings_and_never_panic() {
    let deep = (0..100).fold(
        json!({"pid": 1}),
        |inner, _| json!({"pid": 1, "parent_process": inner}),
    );
    let hostile = [
        set(api_read(), "metadata.profiles", json!("host")),
        set(api_read(), "metadata", json!([])),
        set(api_read(), "class_uid", json!("6003")),
        set(api_read(), "class_uid", json!(u64::MAX)),
        set(api_read(), "type_uid", json!(i64::MAX)),
        set(api_read(), "activity_id", json!(i64::MIN)),
        set(api_read(), "observables", json!([null, 1, {"name": 5}])),
        set(api_read(), "resources", json!({"not": "an array"})),
        set(
            api_read(),
            "http_request",
            json!({"url": {"path": "/", "category_ids": 3}}),
        ),
        set(
            api_read(),
            "http_request",
            json!({"url": {"path": "/", "category_ids": [1], "categories": "x"}}),
        ),
        set(api_read(), "actor.process", deep),
    ];
    for r in &hostile {
        let report = check(r);
        assert!(!report.is_conformant(), "{r}");
    }
    let deep_report = check(&hostile[hostile.len() - 1]);
    assert!(
        deep_report
            .findings
            .iter()
            .any(|f| matches!(f.kind, FindingKind::NestingTooDeep { .. })),
        "{deep_report}"
    );
}

#[test]
fn a_tally_sums_findings_and_missing_recommended_per_event_kind() {
    let mut tally = Tally::default();
    tally.add("read.allowed", &check(&set(api_read(), "seq", json!(1))));
    tally.add("read.allowed", &check(&set(api_read(), "seq", json!(2))));
    tally.add("agent.started", &check(&event_log_start()));
    let read = &tally.kinds()["read.allowed"];
    assert_eq!(read.records, 2);
    assert_eq!(read.errors(), 1);
    assert_eq!(read.findings.values().copied().collect::<Vec<_>>(), [2]);
    assert!(!tally.all_conformant());
    let page = tally.to_markdown();
    assert!(page.contains("| `read.allowed` | 2 | 1 | 0 |"), "{page}");
    assert!(page.contains("(2 of 2)"), "{page}");
}

#[test]
fn listing_a_profile_makes_its_required_attributes_required() {
    // The `cloud` profile requires `cloud` in API Activity; unlisted, nothing asks for it.
    assert!(!check(&api_read())
        .findings
        .iter()
        .any(|f| f.path == "cloud"));
    let r = set(api_read(), "metadata.profiles", json!(["cloud"]));
    assert_only(&r, "cloud", |k| *k == FindingKind::RequiredMissing);
}

#[test]
fn a_deprecated_class_and_a_deprecated_object_are_warnings() {
    // Security Finding (2001) is deprecated since 1.1.0, and so is its `finding` object.
    let r = json!({
        "class_uid": 2001, "category_uid": 2, "activity_id": 1, "type_uid": 200101,
        "severity_id": 1, "time": 1_795_766_400_000_i64, "metadata": metadata(),
        "finding": {"uid": "f-1", "title": "bypass read"}
    });
    let report = check(&r);
    assert!(
        report.has("", |k| matches!(
            k,
            FindingKind::Deprecated {
                what: Deprecated::Class,
                ..
            }
        )),
        "{report}"
    );
    assert!(
        report.has("finding", |k| matches!(
            k,
            FindingKind::Deprecated {
                what: Deprecated::Object,
                ..
            }
        )),
        "{report}"
    );
    assert!(report.deprecations().all(|f| f.level() == Level::Warning));
}
