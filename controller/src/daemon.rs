//! `loggate controller serve`: loads the configuration, opens the store and the signing key,
//! enrols configured user certificates, and serves the Controller gRPC service over mTLS until
//! SIGINT/SIGTERM.

use crate::config::ControllerConfig;
use crate::service::ControllerService;
use crate::store::Store;
use anyhow::{bail, Context};
use loggate_core::audit::{events, AuditLog, CheckpointKey, CheckpointPolicy, SharedAuditLog};
use loggate_core::grant::{unix_now, SigningKey};
use loggate_core::identity::{Identity, Role};
use loggate_core::tls::read_certificate_der;
use loggate_proto::controller_server::ControllerServer;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

/// Largest request message the controller decodes.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

pub async fn serve(config_path: &Path) -> anyhow::Result<()> {
    let mut config = ControllerConfig::load(config_path)?;
    let signer = load_signing_key(&config.signing_key)?;
    let store = Arc::new(Store::open(&config.database)?);
    // Every start may be a restore of a backup (see Store::new_epoch): a new epoch makes every
    // agent resynchronise instead of resuming at a revision number this database may reuse.
    let epoch = store.new_epoch()?;
    tracing::info!(%epoch, "new epoch of the revision log");
    if let Some(dir) = &config.enrol_user_certs {
        enrol_user_certs(&store, dir, &config.trust_domain)?;
    }
    // The controller's own chain is sealed with signed checkpoints too, with a key kept next
    // to its audit file (created on first start, mode 0600).
    let audit_dir = config.audit_log.parent().unwrap_or(Path::new("."));
    let checkpoint_key = CheckpointKey::load_or_create(&audit_dir.join("audit-signing.key"))?;
    let mut audit_log = AuditLog::open(&config.audit_log, "controller")?
        .with_checkpoints(checkpoint_key, CheckpointPolicy::default());
    audit_log.append(&events::ControllerStarted {
        listen: config.listen.to_string(),
        admins: config.admins.to_vec(),
        revision: store.latest_revision()?,
    })?;
    if let Some(dir) = &config.enrol_checkpoint_keys {
        crate::service::enrol_checkpoint_keys(&store, &mut audit_log, dir)?;
    }
    let audit = Arc::new(SharedAuditLog::new(audit_log)?);
    // Cursors and status files of the sinks sit next to the audit file they follow.
    loggate_core::audit::ship::spawn_sinks(
        std::mem::take(&mut config.sinks),
        &loggate_core::audit::ship::ShipContext {
            audit_log: config.audit_log.clone(),
            state_dir: audit_dir.join("sinks"),
            host: "controller".into(),
            app_name: "loggate-controller".into(),
            durable: audit.durable(),
        },
    )?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let service = ControllerService::new(
        store,
        signer,
        config.trust_domain.clone(),
        crate::service::Policy {
            admins: config.admins.iter().cloned().collect(),
            max_ttl: config.max_ttl_duration()?,
            redaction_profiles: config.redaction_profiles.clone(),
        },
        audit.clone(),
        stopping,
        epoch,
    )?;
    tokio::spawn(checkpoint_when_due(audit.clone()));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let auditor = audit.clone();
    let incoming = loggate_core::tls_accept::incoming(
        listener,
        &config.tls,
        &config.trust_domain,
        move |refused| {
            loggate_core::tls_accept::audit_refusal(&auditor, "loggate controller", refused)
        },
    )
    .context("TLS configuration")?;
    tracing::info!(listen = %config.listen, "loggate controller serving");
    eprintln!("loggate controller listening on {}", config.listen);
    // The audit file is open and the listener bound: systemd may consider the controller started.
    loggate_core::notify::ready();
    tonic::transport::Server::builder()
        // A peer that stops answering HTTP/2 pings is dropped (the accept loop caps the
        // connections per identity and in all, and sets TCP keepalive).
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(ControllerServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(incoming, async move {
            loggate_core::shutdown::signal().await;
            // End the agents' watch streams, or the graceful shutdown would wait for them.
            let _ = stop.send(true);
        })
        .await
        .with_context(|| format!("controller server on {}", config.listen))?;
    loggate_core::notify::stopping();
    audit.append(&events::ControllerStopped {})?;
    audit.checkpoint()?;
    eprintln!("loggate controller stopped");
    Ok(())
}

/// Seals the controller's audit chain with a checkpoint when one is due (1000 records or 60 s).
async fn checkpoint_when_due(audit: Arc<SharedAuditLog>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Err(e) = tokio::task::block_in_place(|| audit.checkpoint_if_due()) {
            tracing::error!("audit checkpoint failed: {e:#}");
        }
    }
}

/// Reads the grant-signing key, refusing a file that others can read.
pub fn load_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read grant-signing key {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "grant-signing key {} is readable by others (mode {:o}); run chmod 600 on it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read grant-signing key {}", path.display()))?;
    SigningKey::from_paserk(&text).with_context(|| format!("grant-signing key {}", path.display()))
}

fn enrol_user_certs(store: &Store, dir: &Path, trust_domain: &str) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("enrol_user_certs: cannot read {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("crt") {
            continue;
        }
        let der = read_certificate_der(&path)?;
        let identity = Identity::from_certificate(&der, trust_domain)
            .with_context(|| format!("enrol_user_certs: {}", path.display()))?;
        if identity.role() != Role::User {
            continue;
        }
        store.set_user_key(identity.spiffe_id(), &identity.key_sha256_hex(), unix_now())?;
        tracing::info!(user = %identity, "enrolled user certificate");
    }
    Ok(())
}
