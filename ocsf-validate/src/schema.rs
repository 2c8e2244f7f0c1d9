//! The compiled OCSF schema, read into the few things validation decides on.
//!
//! The input is the document `ocsf-schema-compiler` writes: every class and object with its
//! inherited attributes already resolved, so nothing here follows `extends` or `$include`. Loading
//! checks that the document is whole — every object an attribute names exists, every attribute's
//! type is in the dictionary, every type's regular expression compiles — so that validation never
//! meets a dangling reference and a broken vendored file fails at load with one clear error
//! instead of passing records it could not check.

use crate::LoadError;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;

/// The type name the compiler gives attributes whose value is an OCSF object.
pub(crate) const OBJECT_T: &str = "object_t";

/// An OCSF schema: its classes (by `uid`), objects (by name), data types and profiles.
#[derive(Debug)]
pub struct Schema {
    pub(crate) version: String,
    pub(crate) classes: HashMap<i64, Container>,
    pub(crate) objects: HashMap<String, Container>,
    pub(crate) types: HashMap<String, DataType>,
    pub(crate) profiles: HashSet<String>,
}

/// A class or an object: a named set of attributes, with its constraints.
#[derive(Debug)]
pub(crate) struct Container {
    /// `Some(uid)` for a class, `None` for an object.
    pub(crate) uid: Option<i64>,
    pub(crate) name: String,
    pub(crate) caption: String,
    pub(crate) attributes: BTreeMap<String, Attribute>,
    pub(crate) constraints: BTreeMap<String, Vec<String>>,
    pub(crate) deprecated: Option<Deprecation>,
}

/// One attribute of a class or object, as the compiled schema describes it.
#[derive(Debug, Deserialize)]
pub(crate) struct Attribute {
    #[serde(rename = "type")]
    pub(crate) type_name: String,
    #[serde(default)]
    pub(crate) is_array: Option<bool>,
    #[serde(default)]
    pub(crate) object_type: Option<String>,
    #[serde(default)]
    pub(crate) requirement: Requirement,
    #[serde(default, rename = "enum")]
    pub(crate) enum_values: Option<BTreeMap<String, EnumValue>>,
    #[serde(default)]
    pub(crate) sibling: Option<String>,
    /// The profiles that bring this attribute; `None` when the class or object defines it itself.
    #[serde(default)]
    pub(crate) profiles: Option<Vec<String>>,
    #[serde(default, rename = "@deprecated")]
    pub(crate) deprecated: Option<Deprecation>,
}

impl Attribute {
    pub(crate) fn is_array(&self) -> bool {
        self.is_array == Some(true)
    }

    /// Whether a record that lists `listed` in `metadata.profiles` may carry this attribute.
    pub(crate) fn available_with(&self, listed: &HashSet<String>) -> bool {
        match &self.profiles {
            None => true,
            Some(from) => from.iter().any(|p| listed.contains(p)),
        }
    }
}

/// How strongly OCSF asks for an attribute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Requirement {
    Required,
    Recommended,
    #[default]
    Optional,
}

/// One defined value of an enum attribute.
#[derive(Debug, Deserialize)]
pub(crate) struct EnumValue {
    #[serde(default)]
    pub(crate) caption: String,
    #[serde(default, rename = "@deprecated")]
    pub(crate) deprecated: Option<Deprecation>,
}

/// What the schema says about something deprecated.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Deprecation {
    #[serde(default)]
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) since: String,
}

/// A dictionary type (`string_t`, `port_t`, `timestamp_t`, …) and what it allows.
#[derive(Debug)]
pub(crate) struct DataType {
    /// The primitive type it narrows (`timestamp_t` → `long_t`); `None` for a primitive.
    pub(crate) supertype: Option<String>,
    pub(crate) values: Option<Vec<Value>>,
    pub(crate) range: Option<(f64, f64)>,
    pub(crate) max_len: Option<usize>,
    pub(crate) regex: Option<Regex>,
}

#[derive(Deserialize)]
struct RawSchema {
    version: String,
    classes: HashMap<String, RawContainer>,
    objects: HashMap<String, RawContainer>,
    dictionary: RawDictionary,
    profiles: HashMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct RawContainer {
    #[serde(default)]
    uid: Option<i64>,
    name: String,
    #[serde(default)]
    caption: String,
    #[serde(default)]
    attributes: BTreeMap<String, Attribute>,
    #[serde(default)]
    constraints: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default, rename = "@deprecated")]
    deprecated: Option<Deprecation>,
}

#[derive(Deserialize)]
struct RawDictionary {
    types: RawTypes,
}

#[derive(Deserialize)]
struct RawTypes {
    attributes: HashMap<String, RawDataType>,
}

#[derive(Deserialize)]
struct RawDataType {
    #[serde(default, rename = "type")]
    supertype: Option<String>,
    #[serde(default)]
    values: Option<Vec<Value>>,
    #[serde(default)]
    range: Option<(f64, f64)>,
    #[serde(default)]
    max_len: Option<usize>,
    #[serde(default)]
    regex: Option<String>,
}

impl Schema {
    /// Reads a gzipped compiled schema (the form it is vendored in).
    pub fn from_compiled_gzip(bytes: &[u8]) -> Result<Schema, LoadError> {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut json)
            .map_err(LoadError::Gzip)?;
        Schema::from_compiled_json(&json)
    }

    /// Reads a compiled schema (`ocsf-schema-compiler`'s output) and checks it is whole.
    pub fn from_compiled_json(bytes: &[u8]) -> Result<Schema, LoadError> {
        let raw: RawSchema = serde_json::from_slice(bytes).map_err(LoadError::Json)?;
        let mut types = HashMap::new();
        for (name, t) in raw.dictionary.types.attributes {
            let regex = match t.regex {
                Some(pattern) => {
                    Some(Regex::new(&pattern).map_err(|source| LoadError::TypeRegex {
                        type_name: name.clone(),
                        source,
                    })?)
                }
                None => None,
            };
            let data_type = DataType {
                supertype: t.supertype,
                values: t.values,
                range: t.range,
                max_len: t.max_len,
                regex,
            };
            types.insert(name, data_type);
        }
        let objects: HashMap<String, Container> = raw
            .objects
            .into_iter()
            .map(|(key, o)| (key, Container::from_raw(o, None)))
            .collect();
        let mut classes = HashMap::new();
        for (key, c) in raw.classes {
            let uid = c
                .uid
                .ok_or_else(|| LoadError::ClassWithoutUid(key.clone()))?;
            if classes
                .insert(uid, Container::from_raw(c, Some(uid)))
                .is_some()
            {
                return Err(LoadError::DuplicateClassUid(uid));
            }
        }
        let schema = Schema {
            version: raw.version,
            classes,
            objects,
            types,
            profiles: raw.profiles.into_keys().collect(),
        };
        schema.check_references()?;
        Ok(schema)
    }

    /// The OCSF version of this schema (`1.8.0`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The caption of the class with this `class_uid`, if the schema defines it.
    pub fn class_caption(&self, class_uid: i64) -> Option<&str> {
        self.classes.get(&class_uid).map(|c| c.caption.as_str())
    }

    /// Every attribute names a type the dictionary defines or an object the schema defines, and
    /// every subtype's supertype is a primitive type.
    fn check_references(&self) -> Result<(), LoadError> {
        for (name, t) in &self.types {
            if let Some(sup) = &t.supertype {
                if self.types.get(sup).is_none_or(|s| s.supertype.is_some()) {
                    return Err(LoadError::DanglingReference {
                        at: format!("type {name}"),
                        missing: sup.clone(),
                    });
                }
            }
        }
        for container in self.classes.values().chain(self.objects.values()) {
            for (attr_name, attr) in &container.attributes {
                let at = || format!("{}.{attr_name}", container.name);
                if attr.type_name == OBJECT_T {
                    let object = attr.object_type.as_deref().unwrap_or_default();
                    if !self.objects.contains_key(object) {
                        return Err(LoadError::DanglingReference {
                            at: at(),
                            missing: object.to_string(),
                        });
                    }
                } else if !self.types.contains_key(&attr.type_name) {
                    return Err(LoadError::DanglingReference {
                        at: at(),
                        missing: attr.type_name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Container {
    fn from_raw(raw: RawContainer, uid: Option<i64>) -> Container {
        Container {
            uid,
            name: raw.name,
            caption: raw.caption,
            attributes: raw.attributes,
            constraints: raw.constraints.unwrap_or_default(),
            deprecated: raw.deprecated,
        }
    }

    /// How a finding names this container: `class "api_activity" (6003)` or `object "user"`.
    pub(crate) fn describe(&self) -> String {
        match self.uid {
            Some(uid) => format!("class \"{}\" ({uid})", self.name),
            None => format!("object \"{}\"", self.name),
        }
    }
}
