//! The policy in force, and its reloads: at start, on SIGHUP, on `loggate policy reload`.
//!
//! A reload either replaces the policy whole (audited `policy.reloaded` with the file's
//! SHA-256) or changes nothing (audited `policy.refused` with `file:line: reason`). Requests
//! already pending keep the role and rule they were accepted under; who may approve them is
//! read from the policy in force at the approval.

use super::{Policy, PolicyError};
use loggate_core::audit::{events, SharedAuditLog};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

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
    current: RwLock<Option<Arc<Policy>>>,
    audit: Arc<SharedAuditLog>,
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
            current: RwLock::new(None),
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

    /// Loads the file again; see the module's contract. `triggered_by`: `start`, `sighup`, or
    /// the admin's SPIFFE id.
    pub fn reload(&self, triggered_by: &str) -> Result<Arc<Policy>, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NotConfigured)?;
        let file = path.display().to_string();
        match Policy::load(path) {
            Ok(policy) => {
                let policy = Arc::new(policy);
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
