//! Findings summed up per event kind, for a test's output or a findings page.
//!
//! A conformance test over many records wants one line per problem and event kind ("every
//! `read.allowed` has `device` without the `host` profile"), not one per record, and the count of
//! missing recommended attributes per kind (issue 20 asks to print it and bring it down).

use crate::finding::{Level, Report};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Reports summed per event kind (loggate's event name, e.g. `read.allowed`).
#[derive(Debug, Default)]
pub struct Tally {
    kinds: BTreeMap<String, KindTally>,
}

/// What the records of one event kind had.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KindTally {
    /// How many records of this kind were validated.
    pub records: usize,
    /// Each distinct finding (its level and text) and in how many records it was.
    pub findings: BTreeMap<(Level, String), usize>,
    /// Each missing recommended attribute's path and in how many records it was missing.
    pub missing_recommended: BTreeMap<String, usize>,
    /// The most recommended attributes one record of this kind lacked.
    pub most_missing_recommended: usize,
}

impl KindTally {
    /// Distinct errors (each counted once however many records had it).
    pub fn errors(&self) -> usize {
        self.findings
            .keys()
            .filter(|(level, _)| *level == Level::Error)
            .count()
    }

    /// Distinct warnings (each counted once however many records had it).
    pub fn warnings(&self) -> usize {
        self.findings
            .keys()
            .filter(|(level, _)| *level == Level::Warning)
            .count()
    }
}

impl Tally {
    /// Adds one record's report under its event kind.
    pub fn add(&mut self, kind: &str, report: &Report) {
        let t = self.kinds.entry(kind.to_string()).or_default();
        t.records += 1;
        for f in &report.findings {
            *t.findings.entry((f.level(), f.to_string())).or_default() += 1;
        }
        for path in &report.missing_recommended {
            *t.missing_recommended.entry(path.clone()).or_default() += 1;
        }
        t.most_missing_recommended = t
            .most_missing_recommended
            .max(report.missing_recommended.len());
    }

    /// The tally of each kind seen, by kind.
    pub fn kinds(&self) -> &BTreeMap<String, KindTally> {
        &self.kinds
    }

    /// Whether every record added was conformant.
    pub fn all_conformant(&self) -> bool {
        self.kinds.values().all(|t| t.findings.is_empty())
    }

    /// One line per kind: records, distinct errors, distinct warnings, most recommended
    /// attributes missing from one record.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (kind, t) in &self.kinds {
            let _ = writeln!(
                out,
                "{kind}: {} record(s), {} error(s), {} warning(s), up to {} recommended missing",
                t.records,
                t.errors(),
                t.warnings(),
                t.most_missing_recommended
            );
        }
        out
    }

    /// A Markdown page: an overview table, then per kind its findings and the recommended
    /// attributes it lacks.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| event kind | records | errors | warnings | recommended missing (most in one record) |\n\
             | --- | --- | --- | --- | --- |\n",
        );
        for (kind, t) in &self.kinds {
            let _ = writeln!(
                out,
                "| `{kind}` | {} | {} | {} | {} |",
                t.records,
                t.errors(),
                t.warnings(),
                t.most_missing_recommended
            );
        }
        for (kind, t) in &self.kinds {
            let _ = writeln!(out, "\n## `{kind}` ({} record(s))\n", t.records);
            if t.findings.is_empty() {
                out.push_str("No error, no warning.\n");
            }
            for ((_, text), n) in &t.findings {
                let _ = writeln!(out, "- {} ({n} of {})", md_escape(text), t.records);
            }
            if !t.missing_recommended.is_empty() {
                let missing: Vec<String> = t
                    .missing_recommended
                    .iter()
                    .map(|(path, n)| {
                        if *n == t.records {
                            format!("`{path}`")
                        } else {
                            format!("`{path}` ({n} of {})", t.records)
                        }
                    })
                    .collect();
                let _ = writeln!(out, "\nRecommended, missing: {}", missing.join(", "));
            }
        }
        out
    }
}

/// Keeps a finding's text from turning into Markdown markup it did not mean.
fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}
