//! The rules a validating SIEM holds one record against, driven by the schema alone.
//!
//! They follow the OCSF server's validator (`/api/v2/validate`, `Schema.Validator2`), in its
//! order: the class (`class_uid` must name one, else nothing more can be checked); the profiles
//! the record lists; then, recursively through every object, each attribute the class or object
//! makes available (those of unlisted profiles are not available): required present, the value of
//! its dictionary type or object, deprecations; every key the record has must be such an attribute
//! (an object with no attributes, `object`, as under `unmapped`, takes anything); enum values
//! defined and their caption siblings matching; the class's and objects' constraints; then
//! `metadata.version`, `type_uid` = `class_uid` × 100 + `activity_id`, and the names of
//! `observables`.
//!
//! Where this differs from the server, it is stricter or does not crash: an attribute of an
//! unlisted profile is [`FindingKind::ProfileNotListed`] (the server: `attribute_unknown`);
//! versions compare by number (the server compares the text, so it would call 1.10.0 older than
//! 1.8.0); string lengths count characters, not graphemes; an enum array whose sibling is not an
//! array is a caption mismatch; objects deeper than [`MAX_DEPTH`] are reported, not followed.
//! Every byte of the record is treated as hostile: nothing here panics on any JSON value.

use crate::finding::{Constraint, Deprecated, Finding, FindingKind, Report};
use crate::schema::{Attribute, Container, Requirement, Schema, OBJECT_T};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// How deep objects may nest before the validator stops following them (serde_json refuses
/// documents nested deeper than 128 anyway; no OCSF record needs a quarter of this).
pub const MAX_DEPTH: usize = 32;

/// The value OCSF gives every enum's "Other".
const OTHER: i64 = 99;

impl Schema {
    /// Holds one record against the schema; see the module documentation for the rules.
    pub fn validate(&self, record: &Value) -> Report {
        let mut run = Run {
            schema: self,
            profiles: HashSet::new(),
            report: Report::default(),
        };
        run.record(record);
        run.report
    }
}

struct Run<'s> {
    schema: &'s Schema,
    /// The profiles the record lists in `metadata.profiles`.
    profiles: HashSet<String>,
    report: Report,
}

impl<'s> Run<'s> {
    fn add(&mut self, path: impl Into<String>, kind: FindingKind) {
        self.report.findings.push(Finding {
            path: path.into(),
            kind,
        });
    }

    fn record(&mut self, record: &Value) {
        let Some(event) = record.as_object() else {
            self.add("", FindingKind::NotAnObject);
            return;
        };
        let Some(class) = self.class_of(event) else {
            return;
        };
        self.read_profiles(event);
        if let Some(d) = &class.deprecated {
            self.add("", deprecated(Deprecated::Class, d));
        }
        self.attributes(event, "", class, 0);
        self.version(event);
        self.type_uid(event);
        self.constraints(event, "", class);
        self.observables(event, class);
    }

    /// The record's class, or `None` (with the finding) when `class_uid` does not name one.
    fn class_of(&mut self, event: &Map<String, Value>) -> Option<&'s Container> {
        let value = event.get("class_uid").filter(|v| !v.is_null());
        let Some(value) = value else {
            self.add("class_uid", FindingKind::RequiredMissing);
            return None;
        };
        let Some(uid) = value.as_i64() else {
            self.add(
                "class_uid",
                FindingKind::WrongType {
                    expected: "integer_t".into(),
                    got: json_type(value),
                },
            );
            return None;
        };
        let class = self.schema.classes.get(&uid);
        if class.is_none() {
            self.add("class_uid", FindingKind::ClassUnknown { class_uid: uid });
        }
        class
    }

    /// Reads `metadata.profiles`; names the schema does not define are findings. A wrong type is
    /// left to the attribute checks of `metadata`.
    fn read_profiles(&mut self, event: &Map<String, Value>) {
        let listed = event
            .get("metadata")
            .and_then(|m| m.get("profiles"))
            .and_then(Value::as_array);
        for (i, p) in listed.into_iter().flatten().enumerate() {
            if let Some(name) = p.as_str() {
                if !self.schema.profiles.contains(name) {
                    self.add(
                        format!("metadata.profiles[{i}]"),
                        FindingKind::ProfileUnknown {
                            profile: name.to_string(),
                        },
                    );
                }
                self.profiles.insert(name.to_string());
            }
        }
    }

    /// Holds `item` (the record or one of its objects, at `path`) against `container`.
    fn attributes(
        &mut self,
        item: &Map<String, Value>,
        path: &str,
        container: &'s Container,
        depth: usize,
    ) {
        for (name, attr) in &container.attributes {
            if !attr.available_with(&self.profiles) {
                continue;
            }
            let at = join(path, name);
            match item.get(name) {
                None | Some(Value::Null) => match attr.requirement {
                    Requirement::Required => self.add(at, FindingKind::RequiredMissing),
                    Requirement::Recommended => self.report.missing_recommended.push(at),
                    Requirement::Optional => {}
                },
                Some(value) => {
                    if let Some(d) = &attr.deprecated {
                        self.add(at.clone(), deprecated(Deprecated::Attribute, d));
                    }
                    if attr.is_array() {
                        match value.as_array() {
                            Some(elements) => {
                                for (i, element) in elements.iter().enumerate() {
                                    self.value(element, &format!("{at}[{i}]"), attr, depth);
                                }
                            }
                            None => self.add(
                                at,
                                FindingKind::WrongType {
                                    expected: format!("array of {}", expected_type(attr)),
                                    got: json_type(value),
                                },
                            ),
                        }
                    } else {
                        self.value(value, &at, attr, depth);
                    }
                }
            }
        }
        // An object with no attributes at all (`object`, the type of `unmapped`) is open-ended.
        if !container.attributes.is_empty() {
            for key in item.keys() {
                let kind = match container.attributes.get(key) {
                    Some(attr) if attr.available_with(&self.profiles) => continue,
                    Some(attr) => FindingKind::ProfileNotListed {
                        profiles: attr.profiles.clone().unwrap_or_default(),
                    },
                    None => FindingKind::AttributeUnknown {
                        defined_in: container.describe(),
                    },
                };
                self.add(join(path, key), kind);
            }
        }
        for (name, attr) in &container.attributes {
            if attr.enum_values.is_some() && attr.available_with(&self.profiles) {
                if let Some(value) = item.get(name) {
                    self.enum_value(item, path, name, attr, value);
                }
            }
        }
    }

    /// One value (or one element of an array attribute) against the attribute's type.
    fn value(&mut self, value: &Value, at: &str, attr: &'s Attribute, depth: usize) {
        if attr.type_name != OBJECT_T {
            self.dictionary_value(value, at, &attr.type_name);
            return;
        }
        let object_type = attr.object_type.as_deref().unwrap_or_default();
        let (Some(map), Some(object)) = (value.as_object(), self.schema.objects.get(object_type))
        else {
            self.add(
                at,
                FindingKind::WrongType {
                    expected: expected_type(attr),
                    got: json_type(value),
                },
            );
            return;
        };
        if depth + 1 >= MAX_DEPTH {
            self.add(at, FindingKind::NestingTooDeep { limit: MAX_DEPTH });
            return;
        }
        if let Some(d) = &object.deprecated {
            self.add(at, deprecated(Deprecated::Object, d));
        }
        self.attributes(map, at, object, depth + 1);
        self.constraints(map, at, object);
    }

    /// A value against a dictionary type: its primitive, then the range, length, values and
    /// pattern of the type (or, where the type has none, of its supertype).
    fn dictionary_value(&mut self, value: &Value, at: &str, type_name: &str) {
        let Some(t) = self.schema.types.get(type_name) else {
            return; // Loading checked every attribute's type; unreachable with a loaded schema.
        };
        let primitive = t.supertype.as_deref().unwrap_or(type_name);
        let sup = t
            .supertype
            .as_deref()
            .and_then(|s| self.schema.types.get(s));
        let type_ok = match primitive {
            "boolean_t" => value.is_boolean(),
            "float_t" => value.is_f64(),
            "integer_t" => value.is_i64(),
            "long_t" => value.is_i64() || value.is_u64(),
            "string_t" => value.is_string(),
            "json_t" => return,
            // A primitive this validator does not know: a schema newer than the code.
            _ => false,
        };
        if !type_ok {
            let expected = match &t.supertype {
                Some(s) => format!("{type_name} ({s})"),
                None => type_name.to_string(),
            };
            self.add(
                at,
                FindingKind::WrongType {
                    expected,
                    got: json_type(value),
                },
            );
            return;
        }
        // The subtype's own limit where it has one, else its supertype's.
        let owner = |has: &dyn Fn(&crate::schema::DataType) -> bool| {
            if has(t) {
                Some((type_name.to_string(), t))
            } else {
                sup.filter(|s| has(s)).map(|s| (primitive.to_string(), s))
            }
        };
        if let Some(n) = value.as_f64().filter(|_| value.is_number()) {
            if let Some((owner_name, o)) = owner(&|d| d.range.is_some()) {
                if let Some((low, high)) = o.range {
                    if n < low || n > high {
                        self.add(
                            at,
                            FindingKind::OutOfRange {
                                type_name: owner_name,
                                low,
                                high,
                            },
                        );
                    }
                }
            }
        }
        if let Some(s) = value.as_str() {
            if let Some((owner_name, o)) = owner(&|d| d.max_len.is_some()) {
                let len = s.chars().count();
                if let Some(max_len) = o.max_len.filter(|m| len > *m) {
                    self.add(
                        at,
                        FindingKind::TooLong {
                            type_name: owner_name,
                            len,
                            max_len,
                        },
                    );
                }
            }
            if let Some((owner_name, o)) = owner(&|d| d.regex.is_some()) {
                if o.regex.as_ref().is_some_and(|r| !r.is_match(s)) {
                    self.add(
                        at,
                        FindingKind::PatternMismatch {
                            type_name: owner_name,
                        },
                    );
                }
            }
        }
        if let Some((owner_name, o)) = owner(&|d| d.values.is_some()) {
            if o.values.as_ref().is_some_and(|vs| !vs.contains(value)) {
                self.add(
                    at,
                    FindingKind::NotInTypeValues {
                        type_name: owner_name,
                    },
                );
            }
        }
    }

    /// An enum attribute present in `item`: its value(s) defined, not deprecated, and the
    /// caption sibling (if present) the value's caption.
    fn enum_value(
        &mut self,
        item: &Map<String, Value>,
        path: &str,
        name: &str,
        attr: &Attribute,
        value: &Value,
    ) {
        let Some(values) = &attr.enum_values else {
            return;
        };
        let at = join(path, name);
        let sibling_name = attr.sibling.as_deref();
        let sibling = sibling_name.and_then(|s| item.get(s).map(|v| (join(path, s), v)));
        if attr.is_array() {
            // Null is an absent array; a non-array is a wrong type, reported by the type check.
            let Some(elements) = value.as_array() else {
                return;
            };
            for (i, element) in elements.iter().enumerate() {
                let element_at = format!("{at}[{i}]");
                let Some(defined) = values.get(&enum_key(element)) else {
                    self.add(
                        element_at,
                        FindingKind::EnumValueUnknown {
                            value: enum_key(element),
                        },
                    );
                    continue;
                };
                if let Some(d) = &defined.deprecated {
                    self.add(element_at.clone(), deprecated(Deprecated::EnumValue, d));
                }
                if element.as_i64() == Some(OTHER) {
                    continue; // The sibling of "Other" carries the source's own label.
                }
                let Some((sibling_at, sibling)) = &sibling else {
                    continue;
                };
                let got = match sibling.as_array() {
                    Some(captions) => captions.get(i),
                    None => Some(*sibling),
                };
                match got {
                    None => self.add(
                        format!("{sibling_at}[{i}]"),
                        FindingKind::CaptionMissingInArray {
                            enum_path: element_at,
                            expected: defined.caption.clone(),
                        },
                    ),
                    Some(got) if got.as_str() != Some(defined.caption.as_str()) => self.add(
                        format!("{sibling_at}[{i}]"),
                        FindingKind::CaptionMismatch {
                            enum_path: element_at,
                            expected: defined.caption.clone(),
                            got: got.clone(),
                            in_array: true,
                        },
                    ),
                    Some(_) => {}
                }
            }
            return;
        }
        let Some(defined) = values.get(&enum_key(value)) else {
            self.add(
                at,
                FindingKind::EnumValueUnknown {
                    value: enum_key(value),
                },
            );
            return;
        };
        if let Some(d) = &defined.deprecated {
            self.add(at.clone(), deprecated(Deprecated::EnumValue, d));
        }
        let Some((sibling_at, sibling)) = sibling else {
            return;
        };
        let matches = sibling.as_str() == Some(defined.caption.as_str());
        if value.as_i64() == Some(OTHER) {
            if matches {
                self.add(
                    sibling_at,
                    FindingKind::OtherCaptionSuspicious { enum_path: at },
                );
            }
        } else if !matches {
            self.add(
                sibling_at,
                FindingKind::CaptionMismatch {
                    enum_path: at,
                    expected: defined.caption.clone(),
                    got: sibling.clone(),
                    in_array: false,
                },
            );
        }
    }

    /// `at_least_one` / `just_one` of the class or object; present means the key is there.
    fn constraints(&mut self, item: &Map<String, Value>, path: &str, container: &Container) {
        for (rule, attributes) in &container.constraints {
            let present = attributes.iter().filter(|a| item.contains_key(*a)).count();
            let (constraint, holds) = match rule.as_str() {
                "at_least_one" => (Constraint::AtLeastOne, present >= 1),
                "just_one" => (Constraint::JustOne, present == 1),
                // A constraint this validator does not know cannot be held: fail closed.
                _ => (Constraint::JustOne, false),
            };
            if !holds {
                self.add(
                    path,
                    FindingKind::ConstraintFailed {
                        constraint,
                        attributes: attributes.clone(),
                        present,
                    },
                );
            }
        }
    }

    /// `metadata.version`: a version, not newer than the schema; another release is a warning.
    /// Absent or of the wrong type is the attribute checks' finding.
    fn version(&mut self, event: &Map<String, Value>) {
        let Some(version) = event
            .get("metadata")
            .and_then(|m| m.get("version"))
            .and_then(Value::as_str)
        else {
            return;
        };
        let schema = self.schema.version.as_str();
        let (Some(given), Some(ours)) = (parse_version(version), parse_version(schema)) else {
            self.add(
                "metadata.version",
                FindingKind::VersionInvalid {
                    version: version.to_string(),
                },
            );
            return;
        };
        let unreleased = given.0 > ours.0 || (given.0 == ours.0 && given.1 && !ours.1);
        if unreleased || given.0 < (1, 0, 0) {
            self.add(
                "metadata.version",
                FindingKind::VersionIncompatible {
                    version: version.to_string(),
                    schema: schema.to_string(),
                },
            );
        } else if version != schema {
            self.add(
                "metadata.version",
                FindingKind::VersionOther {
                    version: version.to_string(),
                    schema: schema.to_string(),
                },
            );
        }
    }

    /// `type_uid` = `class_uid` × 100 + `activity_id`, when all three are integers.
    fn type_uid(&mut self, event: &Map<String, Value>) {
        let field = |k: &str| event.get(k).and_then(Value::as_i64);
        let (Some(class), Some(activity), Some(got)) =
            (field("class_uid"), field("activity_id"), field("type_uid"))
        else {
            return;
        };
        let expected = class.checked_mul(100).and_then(|c| c.checked_add(activity));
        if expected != Some(got) {
            self.add(
                "type_uid",
                FindingKind::TypeUidIncorrect {
                    expected: expected.unwrap_or(i64::MAX),
                    got,
                },
            );
        }
    }

    /// Each observable's `name` is the dotted path of an attribute the record's class (with the
    /// listed profiles) defines.
    fn observables(&mut self, event: &Map<String, Value>, class: &'s Container) {
        let Some(observables) = event.get("observables").and_then(Value::as_array) else {
            return;
        };
        for (i, o) in observables.iter().enumerate() {
            let Some(name) = o.get("name").and_then(Value::as_str) else {
                continue;
            };
            if !self.names_attribute(class, name) {
                self.add(
                    format!("observables[{i}].name"),
                    FindingKind::ObservableNameUnknown {
                        name: name.to_string(),
                    },
                );
            }
        }
    }

    fn names_attribute(&self, class: &'s Container, name: &str) -> bool {
        let mut container = class;
        let mut parts = name.split('.').peekable();
        while let Some(part) = parts.next() {
            let Some(attr) = container
                .attributes
                .get(part)
                .filter(|a| a.available_with(&self.profiles))
            else {
                return false;
            };
            if parts.peek().is_none() {
                return true;
            }
            let next = (attr.type_name == OBJECT_T)
                .then_some(attr.object_type.as_deref())
                .flatten()
                .and_then(|o| self.schema.objects.get(o));
            match next {
                Some(object) => container = object,
                None => return false,
            }
        }
        false
    }
}

fn deprecated(what: Deprecated, d: &crate::schema::Deprecation) -> FindingKind {
    FindingKind::Deprecated {
        what,
        message: d.message.clone(),
        since: d.since.clone(),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// What an attribute's value should be, in the words of a finding.
fn expected_type(attr: &Attribute) -> String {
    if attr.type_name == OBJECT_T {
        format!("{} (object)", attr.object_type.as_deref().unwrap_or("?"))
    } else {
        attr.type_name.clone()
    }
}

/// A JSON value's type in OCSF's words (the server's `type_of`).
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean_t",
        Value::Number(n) if n.is_f64() => "float_t",
        Value::Number(n) if n.is_i64() => "integer_t",
        Value::Number(_) => "long_t",
        Value::String(_) => "string_t",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The key an enum value is looked up by: the schema's enum keys are the values as text.
fn enum_key(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// `x.y.z`, `x.y.z-dev` or `x.y.z-rc.N` → ((x, y, z), is a pre-release).
fn parse_version(v: &str) -> Option<((u64, u64, u64), bool)> {
    let (numbers, pre) = match v.split_once('-') {
        Some((n, pre)) => (n, Some(pre)),
        None => (v, None),
    };
    let pre_ok = match pre {
        None => true,
        Some("dev") => true,
        Some(p) => p
            .strip_prefix("rc.")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
    };
    let mut parts = numbers.split('.').map(|p| {
        (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u64>().ok())
            .flatten()
    });
    let version = (parts.next()??, parts.next()??, parts.next()??);
    (parts.next().is_none() && pre_ok).then_some((version, pre.is_some()))
}
