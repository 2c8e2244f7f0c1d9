//! End-to-end: the controller stands on the same daemon skeleton as the agent
//! (`loggate_core::daemon`): its audit file rotates and keeps `audit_keep_files` rotated files
//! under the same configuration keys as the agent's, its checkpoint policy comes from its
//! `[checkpoints]`, and the rotated set verifies as one chain with `loggate audit verify`.

use loggate_core::audit::{event_name, record_field, rotated_files};
use loggate_tests::{read_audit_file, text, Cluster};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Small files (rotated every 4 KB, two kept) and a checkpoint every 5 records or second.
fn configure_small_audit_files(cluster: &Cluster) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&cluster.controller_config)?;
    // Top-level keys before the file's first table, `[checkpoints]` as a table of its own.
    std::fs::write(
        &cluster.controller_config,
        format!(
            "audit_rotate_bytes = 4000\naudit_keep_files = 2\n{text}\n\
             [checkpoints]\nevery = 5\ninterval = \"1s\"\n"
        ),
    )?;
    Ok(())
}

/// Whether the current file starts with a rotation that deleted older rotated files
/// (retention at work: more rotations than files kept).
fn rotation_deleted_files(current: &Path) -> bool {
    read_audit_file(current).first().is_some_and(|r| {
        event_name(r) == Some("audit.rotated")
            && record_field(r, "deleted_files")
                .and_then(Value::as_array)
                .is_some_and(|d| !d.is_empty())
    })
}

#[test]
fn controller_audit_file_rotates_keeps_its_files_and_the_set_verifies() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(None)?;
    configure_small_audit_files(&cluster)?;
    cluster.start_controller()?;
    let current = cluster.dir.join("controller/audit.jsonl");
    // Grants issued (each a `grant.issued` record) until the controller's once-a-second timer
    // has rotated more often than it keeps files: bounded in count and time.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut issued = 0;
    while !rotation_deleted_files(&current) {
        anyhow::ensure!(
            issued < 400 && Instant::now() < deadline,
            "no rotation deleting a file after {issued} grants; rotated: {:?}",
            rotated_files(&current)?
        );
        cluster.issue_grant("alice", "web-1", "/var/log/app/*.log", "10m")?;
        issued += 1;
    }
    cluster.stop_controller();

    let rotated = rotated_files(&current)?;
    assert_eq!(rotated.len(), 2, "audit_keep_files = 2: {rotated:?}");
    let mut records: Vec<Value> = rotated.iter().flat_map(|f| read_audit_file(f)).collect();
    records.extend(read_audit_file(&current));
    assert_eq!(
        records.last().and_then(event_name),
        Some("audit.checkpoint"),
        "the stop seals the chain"
    );
    let checkpoints_in_rotated = rotated
        .iter()
        .flat_map(|f| read_audit_file(f))
        .filter(|r| event_name(r) == Some("audit.checkpoint"))
        .count();
    assert!(
        checkpoints_in_rotated > 0,
        "[checkpoints] every = 5 seals the rotated files too (the default, 60 s, would not)"
    );

    let key = cluster.dir.join("controller/audit-signing.key.pub");
    let verify = |files: &[&PathBuf]| {
        let mut args = vec!["audit".to_string(), "verify".to_string()];
        args.extend(files.iter().map(|p| p.display().to_string()));
        args.extend(["--key".to_string(), key.display().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cluster.run_cli("admin", &args)
    };
    let out = verify(&[&rotated[0], &rotated[1], &current])?;
    assert!(out.status.success(), "{}", text(&out).1);
    // The wrong order breaks the chain: the check above is not vacuous.
    let out = verify(&[&current, &rotated[0], &rotated[1]])?;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out).1);
    Ok(())
}
