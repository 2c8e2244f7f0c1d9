//! End-to-end: off-host anchoring. The agent sends its signed audit checkpoints to the
//! controller, which keeps them append-only and alerts on a host going backwards; `loggate audit
//! verify --checkpoints` then catches a cut tail and a re-signed rewrite of the agent's file.

use loggate_core::audit::events;
use loggate_core::audit::{
    event_name, record_field, AuditLog, Checkpoint, CheckpointKey, CheckpointPolicy,
};
use loggate_proto as pb;
use loggate_tests::{text, Fixture};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A checkpoint after every 4 records, or after 1 s.
const POLICY: &str = "[checkpoints]\nevery = 4\ninterval = \"1s\"\n";

fn start() -> Fixture {
    Fixture::start_with(POLICY).unwrap()
}

fn agent_dir(fx: &Fixture) -> PathBuf {
    fx.cluster.dir.join("agents/web-1")
}

fn audit_file(fx: &Fixture) -> PathBuf {
    agent_dir(fx).join("audit.jsonl")
}

fn public_key_file(fx: &Fixture) -> PathBuf {
    agent_dir(fx).join("state/audit-signing.key.pub")
}

/// `n` audited events on web-1: reads by bob, who holds no grant.
fn activity(fx: &Fixture, n: usize) {
    for _ in 0..n {
        let out = fx.logs("bob", &["cat", &fx.api_log()]).unwrap();
        assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    }
}

/// The checkpoint lines of an audit file.
fn checkpoint_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| Checkpoint::parse_line(l).is_ok())
        .map(String::from)
        .collect()
}

fn held_lines(fx: &Fixture) -> Vec<String> {
    try_held_lines(fx).unwrap()
}

/// The checkpoints the controller holds of web-1; an error (e.g. "no agent has ever
/// connected": agents spread their first connect over a second, and a checkpoint report can
/// come first) is for a waiting loop to retry.
fn try_held_lines(fx: &Fixture) -> anyhow::Result<Vec<String>> {
    Ok(fx
        .cluster
        .held_checkpoints("web-1")?
        .iter()
        .map(|c| c["line"].as_str().unwrap_or_default().to_string())
        .collect())
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the controller holds every checkpoint now in the agent's file (at least `min`).
fn wait_all_held(fx: &Fixture, min: usize, timeout: Duration) -> Vec<String> {
    let mut local = Vec::new();
    wait_until(
        "the controller holds the agent's checkpoints",
        timeout,
        || {
            local = checkpoint_lines(&audit_file(fx));
            let Ok(held) = try_held_lines(fx) else {
                return false;
            };
            let held: HashSet<String> = held.into_iter().collect();
            local.len() >= min && local.iter().all(|l| held.contains(l))
        },
    );
    local
}

/// Waits until the agent has sealed everything it wrote (its file ends in a checkpoint; it is
/// idle) and the controller holds all of its checkpoints.
fn wait_sealed_and_held(fx: &Fixture, min: usize) -> Vec<String> {
    let mut local = Vec::new();
    wait_until(
        "the agent is sealed and anchored",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(audit_file(fx)).unwrap_or_default();
            let sealed = text
                .lines()
                .last()
                .is_some_and(|l| Checkpoint::parse_line(l).is_ok());
            local = checkpoint_lines(&audit_file(fx));
            let Ok(held) = try_held_lines(fx) else {
                return false;
            };
            let held: HashSet<String> = held.into_iter().collect();
            sealed && local.len() >= min && local.iter().all(|l| held.contains(l))
        },
    );
    local
}

/// Writes the controller's checkpoints for web-1 to a file and runs `loggate audit verify`
/// on `file` with the agent's public key and that file.
fn verify_anchored(fx: &Fixture, file: &Path) -> std::process::Output {
    let held = fx.cluster.dir.join("web-1.checkpoints");
    let out = fx
        .cluster
        .run_cli("admin", &["audit", "checkpoints", "--host", "web-1"])
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    std::fs::write(&held, &out.stdout).unwrap();
    fx.cluster
        .run_cli(
            "admin",
            &[
                "audit",
                "verify",
                &file.display().to_string(),
                "--key",
                &public_key_file(fx).display().to_string(),
                "--checkpoints",
                &held.display().to_string(),
            ],
        )
        .unwrap()
}

fn verify_alone(fx: &Fixture, file: &Path) -> std::process::Output {
    fx.cluster
        .run_cli(
            "admin",
            &[
                "audit",
                "verify",
                &file.display().to_string(),
                "--key",
                &public_key_file(fx).display().to_string(),
            ],
        )
        .unwrap()
}

/// The seq of a raw audit line.
fn seq_of(line: &str) -> u64 {
    loggate_core::audit::record_seq(&serde_json::from_str(line).unwrap()).unwrap()
}

#[test]
fn checkpoints_reach_the_controller_and_an_intact_file_verifies_with_an_unsealed_tail_warning() {
    let mut fx = start();
    activity(&fx, 6);
    let local = wait_sealed_and_held(&fx, 2);
    let held = fx.cluster.held_checkpoints("web-1").unwrap();
    assert!(held.iter().all(|c| c["status"] == "ok"), "{held:?}");
    assert_eq!(held.len(), local.len(), "each checkpoint is held once");
    // Paging through them one at a time gives the same list, oldest first.
    let paged = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut admin = fx
            .cluster
            .controller_client_as("users/admin")
            .await
            .unwrap();
        let mut lines = Vec::new();
        let mut after_id = 0;
        loop {
            let page = admin
                .list_checkpoints(pb::ListCheckpointsRequest {
                    host: "web-1".into(),
                    after_id,
                    limit: 1,
                })
                .await
                .unwrap()
                .into_inner()
                .checkpoints;
            let Some(last) = page.last() else { break };
            assert_eq!(page.len(), 1);
            after_id = last.id;
            lines.push(last.line.clone());
        }
        lines
    });
    assert_eq!(paged, local);
    // The agent stops; its last records (agent.stopped) are after the last checkpoint.
    fx.cluster.stop_agent("web-1");
    let out = verify_anchored(&fx, &audit_file(&fx));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("anchored:"), "{stdout}");
    assert!(
        stderr.contains("are not anchored off the host yet"),
        "the unsealed tail is a warning: {stderr}"
    );
}

#[test]
fn checkpoints_missed_during_a_controller_outage_arrive_afterwards_and_a_restart_resumes_quietly() {
    let mut fx = start();
    wait_all_held(&fx, 1, Duration::from_secs(30));
    fx.cluster.stop_controller();
    activity(&fx, 9);
    let during: Vec<String> = checkpoint_lines(&audit_file(&fx));
    assert!(
        during.len() >= 3,
        "checkpoints keep being written: {during:?}"
    );
    fx.cluster.start_controller().unwrap();
    let after = wait_all_held(&fx, during.len(), Duration::from_secs(60));
    assert!(during.iter().all(|l| after.contains(l)));
    let held = held_lines(&fx);
    let distinct: HashSet<&String> = held.iter().collect();
    assert_eq!(
        distinct.len(),
        held.len(),
        "resent checkpoints are stored once"
    );

    // An ordinary agent restart resumes where the controller is: no alert, nothing stored twice.
    fx.cluster.stop_agent("web-1");
    fx.cluster.start_agent("web-1").unwrap();
    activity(&fx, 5);
    wait_all_held(&fx, after.len() + 2, Duration::from_secs(30));
    // (More may arrive meanwhile: the agent keeps checkpointing once a second.)
    let held = fx.cluster.held_checkpoints("web-1").unwrap();
    let distinct: HashSet<&str> = held.iter().filter_map(|c| c["line"].as_str()).collect();
    assert_eq!(distinct.len(), held.len(), "each checkpoint is stored once");
    let alerts: Vec<serde_json::Value> = fx
        .cluster
        .controller_audit()
        .into_iter()
        .filter(|e| event_name(e) == Some("audit.checkpoint_conflict"))
        .collect();
    assert!(
        alerts.is_empty() && held.iter().all(|c| c["status"] == "ok"),
        "alerts {alerts:?}\nheld {held:?}\nagent file {}",
        std::fs::read_to_string(audit_file(&fx)).unwrap()
    );
}

#[test]
fn truncated_agent_file_fails_verification_against_the_controllers_checkpoints() {
    let mut fx = start();
    activity(&fx, 8);
    let local = wait_all_held(&fx, 3, Duration::from_secs(30));
    fx.cluster.stop_agent("web-1");
    // Cut the file just before the line the last held checkpoint seals.
    let last_sealed = Checkpoint::parse_line(local.last().unwrap())
        .unwrap()
        .sealed_seq;
    let text_all = std::fs::read_to_string(audit_file(&fx)).unwrap();
    let kept: String = text_all
        .lines()
        .take_while(|l| seq_of(l) < last_sealed)
        .map(|l| format!("{l}\n"))
        .collect();
    let cut = fx.cluster.dir.join("truncated.jsonl");
    std::fs::write(&cut, kept).unwrap();

    // A cut tail is invisible from the file alone; the held checkpoints name the first
    // missing line.
    assert_caught_only_when_anchored(&fx, &cut, last_sealed, "the tail was cut off");
}

#[test]
fn resigned_rewrite_of_the_agent_file_fails_verification_against_the_controllers_checkpoints() {
    let mut fx = start();
    activity(&fx, 8);
    let local = wait_all_held(&fx, 3, Duration::from_secs(30));
    fx.cluster.stop_agent("web-1");
    let records = std::fs::read_to_string(audit_file(&fx))
        .unwrap()
        .lines()
        .count();

    // Root on the host rewrites the whole file, re-chained and re-signed with the agent's key.
    let forger = tempfile::tempdir().unwrap();
    let key_copy = forger.path().join("audit-signing.key");
    std::fs::copy(agent_dir(&fx).join("state/audit-signing.key"), &key_copy).unwrap();
    let key = CheckpointKey::load_or_create(&key_copy).unwrap();
    let rewritten = fx.cluster.dir.join("rewritten.jsonl");
    let mut log = AuditLog::open(&rewritten, "web-1")
        .unwrap()
        .with_checkpoints(key, CheckpointPolicy::default());
    for i in 0..records + 3 {
        log.append(&events::AgentStopped {
            agent_id: format!("nothing to see {i}"),
        })
        .unwrap();
    }
    log.checkpoint().unwrap();
    drop(log);

    // A re-signed rewrite passes on its own; the held checkpoints name the first line that
    // differs from them.
    let first_sealed = Checkpoint::parse_line(&local[0]).unwrap().sealed_seq;
    assert_caught_only_when_anchored(&fx, &rewritten, first_sealed, "the file was rewritten");
}

/// `audit verify FILE` alone passes, and with the controller's checkpoints fails (exit 5)
/// naming `line` and saying `why`.
fn assert_caught_only_when_anchored(fx: &Fixture, file: &Path, line: u64, why: &str) {
    let alone = verify_alone(fx, file);
    assert!(
        alone.status.success(),
        "passes on its own: {:?}",
        text(&alone)
    );
    let out = verify_anchored(fx, file);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains(&format!("line {line}:")), "{stderr}");
    assert!(stderr.contains(why), "{stderr}");
}

#[test]
fn reset_agent_audit_file_raises_a_controller_alert_and_keeps_both_histories() {
    let mut fx = start();
    activity(&fx, 9);
    let before = wait_all_held(&fx, 3, Duration::from_secs(30));
    fx.cluster.stop_agent("web-1");
    std::fs::remove_file(audit_file(&fx)).unwrap();
    fx.cluster.start_agent("web-1").unwrap();
    activity(&fx, 2);

    let mut alert = None;
    wait_until(
        "the controller raises an alert",
        Duration::from_secs(30),
        || {
            alert = fx.cluster.controller_audit().into_iter().find(|e| {
                event_name(e) == Some("audit.checkpoint_conflict")
                    && record_field(e, "origin").and_then(|v| v.as_str()) == Some("web-1")
            });
            alert.is_some()
        },
    );
    let alert = alert.unwrap();
    let conflict = record_field(&alert, "conflict").and_then(|v| v.as_str());
    assert!(
        matches!(
            conflict,
            Some("sequence_went_backwards") | Some("head_changed")
        ),
        "{alert}"
    );
    // Both histories are kept: the old checkpoints are untouched, the new ones stored as evidence.
    let held = fx.cluster.held_checkpoints("web-1").unwrap();
    let lines: Vec<&str> = held.iter().filter_map(|c| c["line"].as_str()).collect();
    assert!(before.iter().all(|l| lines.contains(&l.as_str())));
    assert!(held.iter().any(|c| c["status"] != "ok"), "{held:?}");
    // And the new file no longer verifies against what the controller holds.
    fx.cluster.stop_agent("web-1");
    let out = verify_anchored(&fx, &audit_file(&fx));
    assert_eq!(out.status.code(), Some(5), "{:?}", text(&out));
}

/// Checkpoint lines of a chain written as `host` with a fresh key in `dir`, and that key.
fn forged_checkpoints(dir: &Path, host: &str) -> (Vec<String>, String) {
    let key = CheckpointKey::load_or_create(&dir.join(format!("{host}.key"))).unwrap();
    let public = key.verify_key().to_text();
    let path = dir.join(format!("{host}.jsonl"));
    let mut log = AuditLog::open(&path, host).unwrap().with_checkpoints(
        key,
        CheckpointPolicy {
            every: 2,
            interval: Duration::from_secs(3600),
        },
    );
    for i in 0..4 {
        log.append(&events::AuditTornTailDiscarded { bytes_discarded: i })
            .unwrap();
    }
    (checkpoint_lines(&path), public)
}

fn refused_codes(fx: &Fixture) -> Vec<String> {
    fx.cluster
        .controller_audit()
        .iter()
        .filter(|e| event_name(e) == Some("audit.checkpoint_refused"))
        .filter_map(|e| record_field(e, "reason_code")?.as_str().map(String::from))
        .collect()
}

#[test]
fn checkpoint_signed_by_another_key_is_refused_by_the_controller() {
    let fx = start();
    wait_all_held(&fx, 1, Duration::from_secs(30));
    let real_key = std::fs::read_to_string(public_key_file(&fx)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (forged, forged_key) = forged_checkpoints(dir.path(), "web-1");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = fx
            .cluster
            .controller_client_as("agents/web-1")
            .await
            .unwrap();
        let report = |key: &str| pb::ReportCheckpointsRequest {
            agent_id: "web-1".into(),
            checkpoint_key: key.trim().to_string(),
            lines: forged.clone(),
        };
        // Signed by another key while the agent's enrolled key is named.
        let err = client
            .report_checkpoints(report(&real_key))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("does not verify"), "{err:?}");
        // Offering the other key instead: the enrolled key never changes silently.
        let err = client
            .report_checkpoints(report(&forged_key))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("is enrolled for it"), "{err:?}");
    });
    let held = held_lines(&fx);
    assert!(
        forged.iter().all(|l| !held.contains(l)),
        "nothing forged is held"
    );
    let codes = refused_codes(&fx);
    assert!(codes.contains(&"bad_signature".to_string()), "{codes:?}");
    assert!(codes.contains(&"key_changed".to_string()), "{codes:?}");
}

#[test]
fn agent_reporting_another_hosts_checkpoints_is_refused() {
    let fx = start();
    let own = wait_all_held(&fx, 1, Duration::from_secs(30));
    let real_key = std::fs::read_to_string(public_key_file(&fx))
        .unwrap()
        .trim()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let (web2, _) = forged_checkpoints(dir.path(), "web-2");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = fx
            .cluster
            .controller_client_as("agents/web-1")
            .await
            .unwrap();
        let report = |agent_id: &str, lines: &[String]| pb::ReportCheckpointsRequest {
            agent_id: agent_id.into(),
            checkpoint_key: real_key.clone(),
            lines: lines.to_vec(),
        };
        let err = client
            .report_checkpoints(report("web-2", &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        let err = client
            .report_checkpoints(report("web-1", &web2))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("by \"web-2\""), "{err:?}");
        // Its own checkpoints, resent: accepted, and stored once.
        let again = client
            .report_checkpoints(report("web-1", &own))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.stored, 0);
        // A person's certificate cannot report checkpoints at all.
        let mut alice = fx
            .cluster
            .controller_client_as("users/alice")
            .await
            .unwrap();
        let err = alice
            .report_checkpoints(report("web-1", &own))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    });
    // Nothing was stored for web-2 (which never connected: its export is refused outright).
    assert!(!matches!(fx.cluster.held_checkpoints("web-2"), Ok(held) if !held.is_empty()));
    let held = held_lines(&fx);
    assert!(own
        .iter()
        .all(|l| held.iter().filter(|h| *h == l).count() == 1));
    assert!(refused_codes(&fx).iter().all(|c| c == "other_host"));
    // Exporting checkpoints is for admins only.
    let out = fx
        .cluster
        .run_cli("alice", &["audit", "checkpoints", "--host", "web-1"])
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
}

#[test]
fn changed_agent_key_is_refused_until_an_admin_enrols_it() {
    let mut fx = start();
    let before = wait_all_held(&fx, 1, Duration::from_secs(30));
    // The agent's state is replaced: it makes a new checkpoint key at start.
    fx.cluster.stop_agent("web-1");
    std::fs::remove_file(agent_dir(&fx).join("state/audit-signing.key")).unwrap();
    fx.cluster.start_agent("web-1").unwrap();
    activity(&fx, 4);
    wait_until("the new key is refused", Duration::from_secs(30), || {
        refused_codes(&fx).contains(&"key_changed".to_string())
    });
    let new_lines: Vec<String> = checkpoint_lines(&audit_file(&fx))
        .into_iter()
        .filter(|l| !before.contains(l))
        .collect();
    assert!(!new_lines.is_empty());
    let held = held_lines(&fx);
    assert!(new_lines.iter().all(|l| !held.contains(l)));

    // An admin enrols the new key through the controller's configuration.
    let keys = fx.cluster.dir.join("checkpoint-keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(public_key_file(&fx), keys.join("web-1.pub")).unwrap();
    let config = std::fs::read_to_string(&fx.cluster.controller_config).unwrap();
    let config = config.replace(
        "[tls]",
        "enrol_checkpoint_keys = \"checkpoint-keys\"\n\n[tls]",
    );
    std::fs::write(&fx.cluster.controller_config, config).unwrap();
    fx.cluster.stop_controller();
    fx.cluster.start_controller().unwrap();
    wait_all_held(&fx, before.len() + new_lines.len(), Duration::from_secs(60));
    let enrolments: Vec<String> = fx
        .cluster
        .controller_audit()
        .iter()
        .filter(|e| event_name(e) == Some("audit.checkpoint_key_enrolled"))
        .filter_map(|e| record_field(e, "how")?.as_str().map(String::from))
        .collect();
    assert_eq!(enrolments, vec!["first_use", "configured"]);
}

#[test]
fn the_controllers_own_chain_is_sealed_with_a_signed_checkpoint_at_shutdown() -> anyhow::Result<()>
{
    let mut fx = Fixture::start()?;
    fx.grant("alice", "30m")?;
    fx.cluster.stop_controller();
    let dir = fx.cluster.dir.join("controller");
    let audit = dir.join("audit.jsonl");
    let last = std::fs::read_to_string(&audit)?
        .lines()
        .last()
        .map(String::from)
        .unwrap_or_default();
    let record: serde_json::Value = serde_json::from_str(&last)?;
    assert_eq!(
        loggate_core::audit::event_name(&record),
        Some("audit.checkpoint")
    );
    // Its lifecycle is on the record too: started first, stopped just before the seal.
    let events: Vec<String> = std::fs::read_to_string(&audit)?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|r| loggate_core::audit::event_name(&r).map(String::from))
        .collect();
    assert_eq!(
        events.first().map(String::as_str),
        Some("controller.started")
    );
    assert_eq!(
        events.iter().rev().nth(1).map(String::as_str),
        Some("controller.stopped")
    );
    let key = dir.join("audit-signing.key.pub");
    let out = fx.cluster.run_cli(
        "admin",
        &[
            "audit",
            "verify",
            &audit.display().to_string(),
            "--key",
            &key.display().to_string(),
        ],
    )?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("sealed through"), "{stdout}");
    assert!(!stderr.contains("not sealed"), "{stderr}");
    Ok(())
}

#[test]
fn an_unknown_host_or_an_empty_checkpoint_file_never_reads_as_anchored() -> anyhow::Result<()> {
    let fx = Fixture::start()?;
    let out = fx
        .cluster
        .run_cli("admin", &["audit", "checkpoints", "--host", "nosuch"])?;
    assert!(!out.status.success());
    assert!(text(&out).1.contains("nosuch"), "{}", text(&out).1);
    let empty = fx.cluster.dir.join("empty.checkpoints");
    std::fs::write(&empty, "")?;
    let audit = fx.cluster.dir.join("agents/web-1/audit.jsonl");
    let out = fx.cluster.run_cli(
        "admin",
        &[
            "audit",
            "verify",
            &audit.display().to_string(),
            "--checkpoints",
            &empty.display().to_string(),
        ],
    )?;
    assert!(!out.status.success(), "{}", text(&out).0);
    assert!(
        text(&out).1.contains("holds no checkpoints"),
        "{}",
        text(&out).1
    );
    Ok(())
}

/// Small audit files (rotated every 4 KB, one kept) and a budget too large to matter.
const SMALL_FILES: &str =
    "audit_rotate_bytes = 4000\naudit_keep_files = 1\naudit_max_bytes = 100000000\n";

/// The agent's rotated audit files, oldest first.
fn rotated(fx: &Fixture) -> Vec<PathBuf> {
    loggate_core::audit::rotated_files(&audit_file(fx)).unwrap_or_default()
}

/// The checkpoint lines of every retained audit file, oldest first.
fn all_checkpoint_lines(fx: &Fixture) -> Vec<String> {
    let mut files = rotated(fx);
    files.push(audit_file(fx));
    files.iter().flat_map(|f| checkpoint_lines(f)).collect()
}

/// Denied reads until the agent has rotated its audit file `n` more times (bounded).
fn activity_until_rotated(fx: &Fixture, n: usize) {
    let last = |fx: &Fixture| rotated(fx).last().cloned();
    for _ in 0..n {
        let before = last(fx);
        let deadline = Instant::now() + Duration::from_secs(60);
        while last(fx) == before {
            assert!(Instant::now() < deadline, "no rotation within 60 s");
            activity(fx, 1);
        }
    }
}

#[test]
fn checkpoints_of_files_rotated_during_a_controller_outage_and_an_agent_restart_all_arrive() {
    let mut fx = Fixture::start_with(&format!("{SMALL_FILES}{POLICY}")).unwrap();
    wait_all_held(&fx, 1, Duration::from_secs(30));
    fx.cluster.stop_controller();
    activity_until_rotated(&fx, 2);
    fx.cluster.kill_agent("web-1");
    fx.cluster.start_agent("web-1").unwrap();
    activity_until_rotated(&fx, 1);
    // The controller holds none of these: no rotated file may go, whatever audit_keep_files.
    std::thread::sleep(Duration::from_secs(2));
    assert!(rotated(&fx).len() >= 3, "{:?}", rotated(&fx));
    let written = all_checkpoint_lines(&fx);
    fx.cluster.start_controller().unwrap();
    let mut missing = written.len();
    wait_until(
        "the controller holds the checkpoints of every rotated file",
        Duration::from_secs(60),
        || {
            let Ok(held) = try_held_lines(&fx) else {
                return false;
            };
            let held: HashSet<String> = held.into_iter().collect();
            missing = written.iter().filter(|l| !held.contains(*l)).count();
            missing == 0
        },
    );
    // Anchored (and no sink configured): what is beyond audit_keep_files now goes.
    wait_until(
        "the anchored files are deleted",
        Duration::from_secs(30),
        || rotated(&fx).len() <= 1,
    );
    let alerts = fx
        .cluster
        .controller_audit()
        .into_iter()
        .filter(|e| event_name(e) == Some("audit.checkpoint_conflict"))
        .count();
    assert_eq!(alerts, 0, "walking forward never goes backwards");
}
