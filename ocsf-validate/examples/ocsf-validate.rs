//! Validates the audit records in files against the official OCSF 1.8.0 schema and prints the
//! findings per event kind as Markdown.
//!
//!     cargo run -p loggate-ocsf-validate --example ocsf-validate -- [--json] FILE...
//!
//! A FILE is an audit file (JSON lines) or a Markdown page such as `docs/audit-events.md`: every
//! line that starts with `{` is read as one record, every other line is skipped. A record's event
//! kind is loggate's event name (`metadata.event_code`), else its class and activity. With
//! `--json`, one JSON object per record instead (file, line, kind, findings with level, code,
//! path and text, missing recommended paths), for other tools to compare against. Exits 0
//! when every record conforms, 1 when one does not, 2 on a usage or read error.

use loggate_ocsf_validate::{Report, Schema, Tally};
use serde_json::{json, Value};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut files: Vec<String> = std::env::args().skip(1).collect();
    let json = files.first().is_some_and(|a| a == "--json");
    if json {
        files.remove(0);
    }
    if files.is_empty() {
        eprintln!(
            "usage: ocsf-validate [--json] FILE... (audit JSON lines or a Markdown page of examples)"
        );
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
                Ok(record) => {
                    let kind = event_kind(&record);
                    let report = schema.validate(&record);
                    if json {
                        let line = report_json(file, n + 1, &kind, &report);
                        // A closed pipe (`| head`) ends the run quietly.
                        if writeln!(std::io::stdout(), "{line}").is_err() {
                            return ExitCode::from(2);
                        }
                    }
                    tally.add(&kind, &report);
                }
                Err(e) => {
                    eprintln!("{file}:{}: not JSON ({e}); counted as unreadable", n + 1);
                    tally.add("(unreadable line)", &schema.validate(&Value::Null));
                }
            }
        }
    }
    if !json {
        print!("{}", tally.to_markdown());
    }
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

/// One record's report as a JSON object.
fn report_json(file: &str, line: usize, kind: &str, report: &Report) -> Value {
    let findings: Vec<Value> = report
        .findings
        .iter()
        .map(|f| {
            json!({
                "level": f.level().as_str(),
                "code": f.kind.server_code(),
                "path": f.path,
                "text": f.to_string(),
            })
        })
        .collect();
    json!({
        "file": file,
        "line": line,
        "kind": kind,
        "findings": findings,
        "missing_recommended": report.missing_recommended,
    })
}
