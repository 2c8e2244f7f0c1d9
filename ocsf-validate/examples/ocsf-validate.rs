//! Validates the audit records in files against the official OCSF 1.8.0 schema and prints the
//! findings per event kind as Markdown.
//!
//!     cargo run -p loggate-ocsf-validate --example ocsf-validate -- FILE...
//!
//! A FILE is an audit file (JSON lines) or a Markdown page such as `docs/audit-events.md`: every
//! line that starts with `{` is read as one record, every other line is skipped. A record's event
//! kind is loggate's event name (`metadata.event_code`), else its class and activity. Exits 0
//! when every record conforms, 1 when one does not, 2 on a usage or read error.

use loggate_ocsf_validate::{Schema, Tally};
use serde_json::Value;
use std::process::ExitCode;

fn main() -> ExitCode {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: ocsf-validate FILE... (audit JSON lines or a Markdown page of examples)");
        return ExitCode::from(2);
    }
    let schema = match Schema::official() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut tally = Tally::default();
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cannot read {file}: {e}; give the path of an audit file or page");
                return ExitCode::from(2);
            }
        };
        for (n, line) in text.lines().enumerate() {
            if !line.trim_start().starts_with('{') {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(record) => tally.add(&event_kind(&record), &schema.validate(&record)),
                Err(e) => {
                    eprintln!("{file}:{}: not JSON ({e}); counted as unreadable", n + 1);
                    tally.add("(unreadable line)", &schema.validate(&Value::Null));
                }
            }
        }
    }
    print!("{}", tally.to_markdown());
    if tally.all_conformant() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// loggate's event name, else `class_uid/activity_id`.
fn event_kind(record: &Value) -> String {
    match record["metadata"]["event_code"].as_str() {
        Some(code) => code.to_string(),
        None => format!("{}/{}", record["class_uid"], record["activity_id"]),
    }
}
