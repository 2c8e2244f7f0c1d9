//! The policy in force, and its reloads: at start, on SIGHUP, on `loggate policy reload`.
//!
//! A reload either replaces the policy whole (audited `policy.reloaded` with the file's
//! SHA-256) or changes nothing (audited `policy.refused` with `file:line: reason`). Requests
//! already pending keep the role and rule they were accepted under; who may approve them is
//! read from the policy in force at the approval.
//!
//! Reloads are serialized (one at a time, from reading the file to putting it in force): two
//! overlapping reloads (a SIGHUP and `loggate policy reload`, say) cannot install an older read
//! of the file over a newer one, and the digest in each `policy.reloaded` record is of the
//! policy in force from that record on.

use super::{Policy, PolicyError};
use loggate_core::audit::{events, SharedAuditLog};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the controller has no policy file configured (set `policy` in its configuration)")]
    NotConfigured,
    #[error("the policy was refused and the one in force stays: {0}")]
    Invalid(#[from] PolicyError),
    #[error("the controller cannot write its audit log; the policy was not changed")]
    Audit(#[source] loggate_core::audit::AuditError),
}

pub struct PolicyHandle {
    path: Option<PathBuf>,
    /// Held by a reload from reading the file to installing it (see the module's contract).
    reloading: Mutex<()>,
    current: RwLock<Option<Arc<Policy>>>,
    /// Read by a decision from its evaluation to its commit, written by a reload while it
    /// installs a policy: a decision is made and stored under one policy, never across a
    /// reload.
    decisions: RwLock<()>,
    audit: Arc<SharedAuditLog>,
}

/// The policy a decision is made under, held in force until the guard is dropped (after the
/// decision's transaction commits). Take one per decision, never two at once.
pub struct DecisionGuard<'a> {
    _held: std::sync::RwLockReadGuard<'a, ()>,
    pub policy: Arc<Policy>,
}

impl PolicyHandle {
    /// Loads the configured policy (if any) at start. An invalid policy stops the start: there
    /// is no policy in force yet to keep.
    pub fn start(
        path: Option<PathBuf>,
        audit: Arc<SharedAuditLog>,
    ) -> Result<Arc<PolicyHandle>, ReloadError> {
        let handle = Arc::new(PolicyHandle {
            path,
            reloading: Mutex::new(()),
            current: RwLock::new(None),
            decisions: RwLock::new(()),
            audit,
        });
        if handle.path.is_some() {
            handle.reload("start")?;
        }
        Ok(handle)
    }

    /// The policy file, if one is configured.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// The policy in force, if one is configured.
    pub fn current(&self) -> Option<Arc<Policy>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The policy in force, held in force (reloads wait) until the guard is dropped.
    pub fn decide(&self) -> Option<DecisionGuard<'_>> {
        let held = self.decisions.read().unwrap_or_else(|p| p.into_inner());
        let policy = self.current()?;
        Some(DecisionGuard {
            _held: held,
            policy,
        })
    }

    /// Loads the file again; see the module's contract. `triggered_by`: `start`, `sighup`, or
    /// the admin's SPIFFE id.
    pub fn reload(&self, triggered_by: &str) -> Result<Arc<Policy>, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NotConfigured)?;
        let file = path.display().to_string();
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        match Policy::load(path) {
            Ok(policy) => {
                let policy = Arc::new(policy);
                // Decisions in flight finish under the policy they started with first.
                let _no_decision = self.decisions.write().unwrap_or_else(|p| p.into_inner());
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                // Audited before it is in force: no policy change without its record.
                self.audit
                    .append(&events::PolicyReloaded {
                        file,
                        sha256: policy.digest.clone(),
                        roles: policy.roles.len() as u64,
                        groups: policy.groups.len() as u64,
                        agents: policy.agent_labels.len() as u64,
                        triggered_by: triggered_by.to_string(),
                    })
                    .map_err(ReloadError::Audit)?;
                *current = Some(policy.clone());
                tracing::info!(digest = %policy.digest, roles = policy.roles.len(), "access policy loaded");
                Ok(policy)
            }
            Err(e) => {
                let kept = self.current().map(|p| p.digest.clone());
                self.audit
                    .append(&events::PolicyRefused {
                        file,
                        reason: e.to_string(),
                        kept_sha256: kept,
                        triggered_by: triggered_by.to_string(),
                    })
                    .map_err(ReloadError::Audit)?;
                tracing::error!("access policy refused: {e}");
                Err(ReloadError::Invalid(e))
            }
        }
    }
}

/// Reloads the policy on every SIGHUP (a refused file is logged and audited; the policy in
/// force stays).
pub fn reload_on_sighup(handle: Arc<PolicyHandle>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot install the SIGHUP handler: {e}"))?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let handle = handle.clone();
            let reloaded =
                tokio::task::spawn_blocking(move || handle.reload("sighup").map(|_| ())).await;
            match reloaded {
                Ok(Ok(())) => eprintln!("loggate controller: access policy reloaded (SIGHUP)"),
                Ok(Err(e)) => eprintln!("loggate controller: {e:#}"),
                Err(e) => tracing::error!("policy reload task failed: {e}"),
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::io::Write;
    use std::time::{Duration, Instant};

    fn sha(text: &str) -> String {
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    /// A reload that read the file first but is still finishing cannot install its older read
    /// over a later reload's: the policy file is made a FIFO so the first reload's read is held
    /// open (deterministically) while the file is replaced and reloaded again.
    #[test]
    fn overlapping_reloads_never_install_the_older_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "# version 0\n").unwrap();
        let log =
            loggate_core::audit::AuditLog::open(&dir.path().join("audit.jsonl"), "c").unwrap();
        let audit = Arc::new(SharedAuditLog::new(log).unwrap());
        let handle = PolicyHandle::start(Some(path.clone()), audit).unwrap();
        assert_eq!(handle.current().unwrap().digest, sha("# version 0\n"));

        std::fs::remove_file(&path).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let older = "# version A (read first)\n";
        let newer = "# version B (on disk at the end)\n";
        let first = {
            let handle = handle.clone();
            std::thread::spawn(move || handle.reload("first").map(|p| p.digest.clone()))
        };
        // Opening the FIFO for writing waits for the first reload to open it for reading.
        let mut writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        writer.write_all(older.as_bytes()).unwrap();
        // The file is replaced while the first reload still reads the FIFO (no end of file yet).
        let staged = dir.path().join("policy.new");
        std::fs::write(&staged, newer).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        let second = {
            let handle = handle.clone();
            std::thread::spawn(move || handle.reload("second").map(|p| p.digest.clone()))
        };
        // Give the second reload time to finish if nothing holds it back (bounded).
        let until = Instant::now() + Duration::from_millis(500);
        while !second.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(writer);
        assert_eq!(first.join().unwrap().unwrap(), sha(older));
        assert_eq!(second.join().unwrap().unwrap(), sha(newer));
        assert_eq!(
            handle.current().unwrap().digest,
            sha(newer),
            "the file on disk is in force, not the older read"
        );
    }

    /// A decision holds the policy it evaluated in force until it commits: a reload waits
    /// for it, so what is stored was decided under the policy its record names.
    #[test]
    fn a_reload_waits_for_the_decision_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "# version 0\n").unwrap();
        let log =
            loggate_core::audit::AuditLog::open(&dir.path().join("audit.jsonl"), "c").unwrap();
        let audit = Arc::new(SharedAuditLog::new(log).unwrap());
        let handle = PolicyHandle::start(Some(path.clone()), audit).unwrap();
        let decision = handle.decide().unwrap();
        assert_eq!(decision.policy.digest, sha("# version 0\n"));
        std::fs::write(&path, "# version 1\n").unwrap();
        let (started, started_rx) = std::sync::mpsc::channel();
        let reload = {
            let handle = handle.clone();
            std::thread::spawn(move || {
                started.send(()).unwrap();
                handle.reload("test").map(|p| p.digest.clone())
            })
        };
        started_rx.recv().unwrap();
        // Bounded wait: the reload thread has had ample time to install, yet the policy in
        // force is still the decision's.
        std::thread::sleep(Duration::from_millis(300));
        assert!(!reload.is_finished(), "the reload waits for the decision");
        assert_eq!(handle.current().unwrap().digest, sha("# version 0\n"));
        drop(decision);
        assert_eq!(reload.join().unwrap().unwrap(), sha("# version 1\n"));
        assert_eq!(handle.current().unwrap().digest, sha("# version 1\n"));
    }
}
