//! Holds audit records against the official OCSF schema the way a SIEM that validates OCSF does
//! (the OCSF server's `/api/v2/validate`, a data lake's custom source), driven by the schema, not
//! by a list kept by hand.
//!
//! The schema is the official OCSF 1.8.0, compiled by the official `ocsf-schema-compiler` and
//! vendored in `schema/` (gzipped, with its Apache-2.0 notice and a README saying where it came
//! from). [`Schema::official`] loads it once per process; [`Schema::validate`] (or [`validate`])
//! returns a [`Report`]: typed [`Finding`]s, each a [`FindingKind`] at an attribute path such as
//! `actor.user.credential_uid`, at the [`Level`] a validating SIEM gives it, and the paths of the
//! recommended attributes the record lacks. [`Tally`] sums reports per event kind.
//!
//! The rules (see `validate.rs`): the class exists; `category_uid` fits it; `type_uid` is
//! `class_uid` × 100 + `activity_id`; required attributes present, recursively in objects; no
//! attribute unknown to its class or object (a profile's attributes only when `metadata.profiles`
//! lists the profile; `unmapped` is free-form); values of their dictionary type (range, length,
//! pattern); enum values defined and their caption siblings (`activity_name`, `type_name`,
//! `class_name`, `category_name`, `severity`, `status`, …) matching — for 99 "Other" the sibling
//! is free, but `type_uid` ends in 99 and its caption is "<Class>: Other", so `type_name` must be
//! that; constraints; observables naming real attributes; deprecated classes, objects, attributes
//! and enum values as warnings.
//!
//! This is test tooling: it is a dependency of tests (core's unit tests, the end-to-end tests),
//! never of the agent or controller.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod finding;
mod schema;
mod tally;
mod validate;

#[cfg(test)]
mod tests;

pub use finding::{Constraint, Deprecated, Finding, FindingKind, Level, Report};
pub use schema::Schema;
pub use tally::{KindTally, Tally};
pub use validate::MAX_DEPTH;

use serde_json::Value;
use std::sync::OnceLock;

/// The vendored official schema, gzipped, exactly as compiled (see `schema/README.md`).
static OFFICIAL_1_8_0: &[u8] = include_bytes!("../schema/schema-1.8.0.compiled.json.gz");

/// Why a compiled schema could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The gzip stream is broken.
    #[error(
        "the compiled OCSF schema is not a readable gzip file; re-copy it as schema/README.md says"
    )]
    Gzip(#[source] std::io::Error),
    /// The document is not JSON of the compiled schema's shape.
    #[error("the compiled OCSF schema is not the ocsf-schema-compiler's JSON; recompile it as schema/README.md says")]
    Json(#[source] serde_json::Error),
    /// A class has no `uid`.
    #[error("class {0:?} of the compiled OCSF schema has no uid; recompile the schema")]
    ClassWithoutUid(String),
    /// Two classes share a `uid`.
    #[error("two classes of the compiled OCSF schema have uid {0}; recompile the schema")]
    DuplicateClassUid(i64),
    /// An attribute names a type or object the schema does not define.
    #[error("{at} of the compiled OCSF schema names {missing:?}, which it does not define; recompile the schema")]
    DanglingReference {
        /// The class or object attribute (or type) that names it.
        at: String,
        /// The name that is not defined.
        missing: String,
    },
    /// A dictionary type's pattern is not a regular expression this validator can run.
    #[error("type {type_name} of the compiled OCSF schema has a pattern that does not compile")]
    TypeRegex {
        /// The type.
        type_name: String,
        /// Why it does not compile.
        #[source]
        source: regex::Error,
    },
}

impl Schema {
    /// The vendored official OCSF 1.8.0 schema, loaded on first use and shared afterwards.
    pub fn official() -> Result<&'static Schema, &'static LoadError> {
        static SCHEMA: OnceLock<Result<Schema, LoadError>> = OnceLock::new();
        SCHEMA
            .get_or_init(|| Schema::from_compiled_gzip(OFFICIAL_1_8_0))
            .as_ref()
    }
}

/// Holds one record against the official OCSF 1.8.0 schema ([`Schema::official`]).
pub fn validate(record: &Value) -> Result<Report, &'static LoadError> {
    Ok(Schema::official()?.validate(record))
}
