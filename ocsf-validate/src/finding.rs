//! What validation found in one record: typed findings with the attribute path they concern,
//! and the record's report.
//!
//! Each kind maps to the code the OCSF server's validator (`/api/v2/validate`) gives the same
//! problem ([`FindingKind::server_code`]) and to its level there: an **error** is a record a
//! validating SIEM rejects; a **warning** is one it takes but flags (a deprecated attribute, a
//! caption that does not match its id, a value off its type's pattern). loggate's bar is stricter
//! than the server's: a conforming record has no finding of either level
//! ([`Report::is_conformant`]). Missing *recommended* attributes are not findings; they are
//! counted apart ([`Report::missing_recommended`]), because a record can be valid without them.

use serde_json::Value;
use std::fmt;

/// How a validating SIEM treats a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// The record is rejected.
    Error,
    /// The record is taken, with a warning.
    Warning,
}

impl Level {
    /// `error` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
        }
    }
}

/// What is deprecated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Deprecated {
    /// The record's class.
    Class,
    /// The object at the path.
    Object,
    /// The attribute at the path.
    Attribute,
    /// The enum value at the path.
    EnumValue,
}

/// A constraint of a class or object on which of its attributes are present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Constraint {
    /// At least one of the attributes.
    AtLeastOne,
    /// Exactly one of the attributes.
    JustOne,
}

/// One problem with a record, at [`Finding::path`].
#[derive(Debug, Clone, PartialEq)]
pub enum FindingKind {
    /// The record is not a JSON object (path is empty).
    NotAnObject,
    /// No class has this `class_uid`; nothing else is checked.
    ClassUnknown {
        /// The `class_uid` given.
        class_uid: i64,
    },
    /// `metadata.profiles` names a profile the schema does not define.
    ProfileUnknown {
        /// The name given.
        profile: String,
    },
    /// A required attribute is absent or null.
    RequiredMissing,
    /// The class or object does not define this attribute at all.
    AttributeUnknown {
        /// The class or object it was found in, e.g. `object "user"`.
        defined_in: String,
    },
    /// The attribute comes from a profile the record does not list in `metadata.profiles` (the
    /// OCSF server reports it as an unknown attribute).
    ProfileNotListed {
        /// The profiles that bring the attribute; listing any one of them allows it.
        profiles: Vec<String>,
    },
    /// The value is not of the attribute's type.
    WrongType {
        /// The type the schema asks for, e.g. `port_t (integer_t)` or `user (object)`.
        expected: String,
        /// The JSON value's type, in OCSF's words (`string_t`, `integer_t`, `array`, …).
        got: &'static str,
    },
    /// A number outside its type's range (e.g. `port_t`: 0 to 65535).
    OutOfRange {
        /// The type whose range it is.
        type_name: String,
        /// The lowest allowed value.
        low: f64,
        /// The highest allowed value.
        high: f64,
    },
    /// A string longer than its type allows (e.g. `ip_t`: 40 characters).
    TooLong {
        /// The type whose limit it is.
        type_name: String,
        /// Its length in characters.
        len: usize,
        /// The limit.
        max_len: usize,
    },
    /// A value not in its type's list of allowed values.
    NotInTypeValues {
        /// The type whose list it is.
        type_name: String,
    },
    /// A string that does not match its type's pattern (e.g. `uuid_t`, `ip_t`).
    PatternMismatch {
        /// The type whose pattern it is.
        type_name: String,
    },
    /// An enum attribute's value is not one the schema defines.
    EnumValueUnknown {
        /// The value given, as text.
        value: String,
    },
    /// The caption sibling of an enum attribute (`activity_name` of `activity_id`, `type_name`
    /// of `type_uid`, `severity` of `severity_id`, …) is not the caption of the id's value. The
    /// path is the sibling's.
    CaptionMismatch {
        /// The enum attribute's path, e.g. `activity_id`.
        enum_path: String,
        /// The caption the schema gives the value.
        expected: String,
        /// The sibling's value.
        got: Value,
        /// Whether the enum is an array (the server rejects those; others it warns about).
        in_array: bool,
    },
    /// The id is 99 "Other" and its sibling is the caption "Other": the sibling should carry the
    /// source's own label.
    OtherCaptionSuspicious {
        /// The enum attribute's path.
        enum_path: String,
    },
    /// An enum array's sibling array is shorter than the enum array.
    CaptionMissingInArray {
        /// The enum attribute's path.
        enum_path: String,
        /// The caption the schema gives the value.
        expected: String,
    },
    /// `type_uid` is not `class_uid` × 100 + `activity_id`.
    TypeUidIncorrect {
        /// `class_uid` × 100 + `activity_id`.
        expected: i64,
        /// The `type_uid` given.
        got: i64,
    },
    /// `metadata.version` is not a version (`x.y.z`, `x.y.z-dev`, `x.y.z-rc.N`).
    VersionInvalid {
        /// The version given.
        version: String,
    },
    /// `metadata.version` is newer than the schema (or older than 1.0.0).
    VersionIncompatible {
        /// The version given.
        version: String,
        /// The schema's version.
        schema: String,
    },
    /// `metadata.version` is an older release than the schema: findings may be off.
    VersionOther {
        /// The version given.
        version: String,
        /// The schema's version.
        schema: String,
    },
    /// A class's or object's constraint on which attributes are present does not hold.
    ConstraintFailed {
        /// Which constraint.
        constraint: Constraint,
        /// The attributes it is about.
        attributes: Vec<String>,
        /// How many of them are present.
        present: usize,
    },
    /// An observable's `name` does not name an attribute of the record's class.
    ObservableNameUnknown {
        /// The name given.
        name: String,
    },
    /// Something the record uses is deprecated.
    Deprecated {
        /// What is deprecated.
        what: Deprecated,
        /// The schema's advice, e.g. `Use programmatic_credentials instead.`
        message: String,
        /// The OCSF version that deprecated it.
        since: String,
    },
    /// Objects nest deeper than the validator follows; what lies deeper is not checked.
    NestingTooDeep {
        /// The depth limit.
        limit: usize,
    },
}

impl FindingKind {
    /// The level a validating SIEM gives this finding.
    pub fn level(&self) -> Level {
        match self {
            FindingKind::PatternMismatch { .. }
            | FindingKind::OtherCaptionSuspicious { .. }
            | FindingKind::VersionOther { .. }
            | FindingKind::Deprecated { .. } => Level::Warning,
            FindingKind::CaptionMismatch { in_array, .. } => {
                if *in_array {
                    Level::Error
                } else {
                    Level::Warning
                }
            }
            _ => Level::Error,
        }
    }

    /// The OCSF server validator's code for the same problem (its `error`/`warning` type).
    pub fn server_code(&self) -> &'static str {
        match self {
            FindingKind::NotAnObject => "event_wrong_type",
            FindingKind::ClassUnknown { .. } => "class_uid_unknown",
            FindingKind::ProfileUnknown { .. } => "profile_unknown",
            FindingKind::RequiredMissing => "attribute_required_missing",
            FindingKind::AttributeUnknown { .. } | FindingKind::ProfileNotListed { .. } => {
                "attribute_unknown"
            }
            FindingKind::WrongType { .. } => "attribute_wrong_type",
            FindingKind::OutOfRange { .. } => "attribute_value_exceeds_range",
            FindingKind::TooLong { .. } => "attribute_value_exceeds_max_len",
            FindingKind::NotInTypeValues { .. } => "attribute_value_not_in_type_values",
            FindingKind::PatternMismatch { .. } => "attribute_value_regex_not_matched",
            FindingKind::EnumValueUnknown { .. } => "attribute_enum_value_unknown",
            FindingKind::CaptionMismatch { in_array, .. } => {
                if *in_array {
                    "attribute_enum_array_sibling_incorrect"
                } else {
                    "attribute_enum_sibling_incorrect"
                }
            }
            FindingKind::OtherCaptionSuspicious { .. } => "attribute_enum_sibling_suspicious_other",
            FindingKind::CaptionMissingInArray { .. } => "attribute_enum_array_sibling_missing",
            FindingKind::TypeUidIncorrect { .. } => "type_uid_incorrect",
            FindingKind::VersionInvalid { .. } => "version_invalid_format",
            FindingKind::VersionIncompatible { .. } => "version_incompatible",
            FindingKind::VersionOther { .. } => "version_incorrect",
            FindingKind::ConstraintFailed { .. } => "constraint_failed",
            FindingKind::ObservableNameUnknown { .. } => "observable_name_invalid_reference",
            FindingKind::Deprecated { what, .. } => match what {
                Deprecated::Class => "class_deprecated",
                Deprecated::Object => "object_deprecated",
                Deprecated::Attribute => "attribute_deprecated",
                Deprecated::EnumValue => "attribute_enum_value_deprecated",
            },
            FindingKind::NestingTooDeep { .. } => "nesting_too_deep",
        }
    }
}

/// One problem at one attribute path (`actor.user.credential_uid`, `resources[0].name`; empty
/// for the record as a whole).
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Where: dotted attribute names, `[i]` for array elements.
    pub path: String,
    /// What.
    pub kind: FindingKind,
}

impl Finding {
    /// The level a validating SIEM gives it.
    pub fn level(&self) -> Level {
        self.kind.level()
    }

    /// Whether it reports something deprecated.
    pub fn is_deprecation(&self) -> bool {
        matches!(self.kind, FindingKind::Deprecated { .. })
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.path.is_empty() {
            "the record".to_string()
        } else {
            format!("`{}`", self.path)
        };
        write!(f, "{} {}: ", self.level().as_str(), self.kind.server_code())?;
        match &self.kind {
            FindingKind::NotAnObject => write!(f, "the record is not a JSON object"),
            FindingKind::ClassUnknown { class_uid } => {
                write!(f, "no OCSF class has class_uid {class_uid}")
            }
            FindingKind::ProfileUnknown { profile } => {
                write!(
                    f,
                    "{at} names profile {profile:?}, which OCSF does not define"
                )
            }
            FindingKind::RequiredMissing => write!(f, "required attribute {at} is missing"),
            FindingKind::AttributeUnknown { defined_in } => {
                write!(f, "{at} is not an attribute of {defined_in}")
            }
            FindingKind::ProfileNotListed { profiles } => write!(
                f,
                "{at} comes from profile {} and metadata.profiles does not list it",
                profiles.join(" or ")
            ),
            FindingKind::WrongType { expected, got } => {
                write!(f, "{at} should be {expected}, is {got}")
            }
            FindingKind::OutOfRange {
                type_name,
                low,
                high,
            } => write!(f, "{at} is outside {type_name}'s range {low} to {high}"),
            FindingKind::TooLong {
                type_name,
                len,
                max_len,
            } => write!(f, "{at} is {len} characters, {type_name} allows {max_len}"),
            FindingKind::NotInTypeValues { type_name } => {
                write!(f, "{at} is not one of {type_name}'s values")
            }
            FindingKind::PatternMismatch { type_name } => {
                write!(f, "{at} does not match {type_name}'s pattern")
            }
            FindingKind::EnumValueUnknown { value } => {
                write!(f, "{at} = {value} is not a value the schema defines")
            }
            FindingKind::CaptionMismatch {
                enum_path,
                expected,
                got,
                ..
            } => write!(
                f,
                "{at} is {got}, the caption of `{enum_path}` is {expected:?}"
            ),
            FindingKind::OtherCaptionSuspicious { enum_path } => write!(
                f,
                "{at} is \"Other\" for `{enum_path}` 99; give the source's own label instead"
            ),
            FindingKind::CaptionMissingInArray {
                enum_path,
                expected,
            } => write!(
                f,
                "{at} has no caption for `{enum_path}` (expected {expected:?})"
            ),
            FindingKind::TypeUidIncorrect { expected, got } => write!(
                f,
                "type_uid is {got}, class_uid × 100 + activity_id is {expected}"
            ),
            FindingKind::VersionInvalid { version } => {
                write!(f, "metadata.version {version:?} is not a version")
            }
            FindingKind::VersionIncompatible { version, schema } => write!(
                f,
                "metadata.version {version:?} cannot be held against the {schema} schema"
            ),
            FindingKind::VersionOther { version, schema } => write!(
                f,
                "metadata.version {version:?} is not the schema's {schema}"
            ),
            FindingKind::ConstraintFailed {
                constraint,
                attributes,
                present,
            } => {
                let rule = match constraint {
                    Constraint::AtLeastOne => "at least one",
                    Constraint::JustOne => "exactly one",
                };
                write!(
                    f,
                    "{at} needs {rule} of {}, has {present}",
                    attributes.join(", ")
                )
            }
            FindingKind::ObservableNameUnknown { name } => write!(
                f,
                "{at} = {name:?} does not name an attribute of the record's class"
            ),
            FindingKind::Deprecated {
                what,
                message,
                since,
            } => {
                let what = match what {
                    Deprecated::Class => "the class",
                    Deprecated::Object => "the object at",
                    Deprecated::Attribute => "attribute",
                    Deprecated::EnumValue => "the enum value of",
                };
                let at = if self.path.is_empty() { "" } else { &at };
                write!(
                    f,
                    "{what} {at} is deprecated since {since}: {}",
                    strip_tags(message)
                )
            }
            FindingKind::NestingTooDeep { limit } => write!(
                f,
                "{at} nests objects deeper than {limit} levels; deeper attributes were not checked"
            ),
        }
    }
}

/// The schema's messages carry HTML (`<code>x</code>`); a finding is read as text.
fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// The findings of one record and the recommended attributes it lacks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Errors and warnings, in the order they were found.
    pub findings: Vec<Finding>,
    /// Paths of recommended attributes absent (or null) from the record and from the objects it
    /// has (recursively), among those its class and listed profiles make available.
    pub missing_recommended: Vec<String>,
}

impl Report {
    /// The findings a validating SIEM rejects the record for.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.level() == Level::Error)
    }

    /// The findings a validating SIEM warns about (deprecations among them).
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.level() == Level::Warning)
    }

    /// The deprecated classes, objects, attributes and enum values the record uses.
    pub fn deprecations(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.is_deprecation())
    }

    /// loggate's bar: no error and no warning (missing recommended attributes aside).
    pub fn is_conformant(&self) -> bool {
        self.findings.is_empty()
    }

    /// Whether some finding has this kind at this path (for tests).
    pub fn has(&self, path: &str, matches: impl Fn(&FindingKind) -> bool) -> bool {
        self.findings
            .iter()
            .any(|f| f.path == path && matches(&f.kind))
    }
}

impl fmt::Display for Report {
    /// One finding a line, then the count of missing recommended attributes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        write!(
            f,
            "{} recommended attribute(s) missing",
            self.missing_recommended.len()
        )?;
        if !self.missing_recommended.is_empty() {
            write!(f, ": {}", self.missing_recommended.join(", "))?;
        }
        Ok(())
    }
}
