//! A real systemd journal for the end-to-end tests: entries in the journal export format,
//! written into a scratch folder by `systemd-journal-remote` (`cargo xtask test` installs the
//! `systemd-journal-remote` package; without it these tests fail, they do not skip), which the
//! agent's `journalctl --directory` (`[journal] directory`) then reads. And the grant for a
//! journal unit the tests read under.

use crate::{text, Cluster};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// systemd's journal writer, fed the export format on stdin.
pub const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// Now, in µs since the epoch (an entry's `__REALTIME_TIMESTAMP`).
pub fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros()
}

/// One entry in the journal export format, of boot `0123…` on `host`: its time (µs since the
/// epoch), its monotonic time `seq`, then `fields` (`_SYSTEMD_UNIT`, `_PID`, `MESSAGE`, …) as
/// text.
pub fn entry(at_micros: u128, seq: u64, host: &str, fields: &[(&str, &str)]) -> String {
    let mut e = format!(
        "__REALTIME_TIMESTAMP={at_micros}\n__MONOTONIC_TIMESTAMP={seq}\n\
         _BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME={host}\n"
    );
    for (k, v) in fields {
        e.push_str(&format!("{k}={v}\n"));
    }
    e.push('\n');
    e
}

/// One entry of `unit` (pid 77) on `host` whose `MESSAGE` is `message` in the export format's
/// binary form (any bytes, newlines kept, as a native-protocol sender gets them into the
/// journal).
pub fn binary_entry(at_micros: u128, seq: u64, host: &str, unit: &str, message: &[u8]) -> Vec<u8> {
    let mut e = format!(
        "__REALTIME_TIMESTAMP={at_micros}\n__MONOTONIC_TIMESTAMP={seq}\n\
         _BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME={host}\n\
         _SYSTEMD_UNIT={unit}\n_PID=77\nMESSAGE\n"
    )
    .into_bytes();
    e.extend_from_slice(&(message.len() as u64).to_le_bytes());
    e.extend_from_slice(message);
    e.extend_from_slice(b"\n\n");
    e
}

/// Appends `export` (journal export format, any bytes) to the journal file `remote.journal`
/// in `dir` (made when missing); returns that file.
pub fn write_journal(dir: &Path, export: &[u8]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join("remote.journal");
    let mut child = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", file.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("cannot run {JOURNAL_REMOTE} (install systemd-journal-remote): {e}")
        })?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(export)?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(file)
}

impl Cluster {
    /// Issues `subject` a grant (by `admin`, 30 minutes, default redaction) for journal unit
    /// `unit` on `hosts`, checks that it names that unit and no path, and returns its id. The
    /// caller waits for the agents that must hold it.
    pub fn issue_unit_grant(
        &self,
        subject: &str,
        hosts: &[&str],
        unit: &str,
    ) -> anyhow::Result<String> {
        let mut args = vec!["grant", "issue", "--subject", subject];
        for h in hosts {
            args.extend(["--host", h]);
        }
        args.extend([
            "--unit", unit, "--ttl", "30m", "--reason", "TEST-13", "--json",
        ]);
        let out = self.run_cli("admin", &args)?;
        anyhow::ensure!(out.status.success(), "grant issue: {}", text(&out).1);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        anyhow::ensure!(v["units"] == serde_json::json!([unit]), "{v}");
        anyhow::ensure!(v["paths"] == serde_json::json!([]), "{v}");
        let id = v["id"].as_str().unwrap_or_default().to_string();
        anyhow::ensure!(!id.is_empty(), "no id in {v}");
        Ok(id)
    }
}
