//! `loggate controller serve`: loads the configuration, opens the store and the signing key,
//! enrols configured user certificates, and serves the Controller gRPC service over mTLS until
//! SIGINT/SIGTERM.

use crate::config::ControllerConfig;
use crate::service::ControllerService;
use crate::store::Store;
use anyhow::{bail, Context};
use loggate_core::audit::events;
use loggate_core::daemon::audit::AuditPlaces;
use loggate_core::daemon::{serve_mtls, AuditRuntime, MtlsSettings};
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
    // to its audit file (created on first start, mode 0600); the sinks' cursors and status
    // files sit there too.
    let audit_dir = loggate_core::daemon::audit::folder_of(&config.audit_log).to_path_buf();
    let settings = config.audit_settings()?;
    let mut startup = AuditRuntime::open(
        AuditPlaces {
            audit_log: config.audit_log.clone(),
            host: "controller".into(),
            checkpoint_key: audit_dir.join("audit-signing.key"),
            sinks_dir: audit_dir.join("sinks"),
            app_name: "loggate-controller".into(),
            other_cursors: Vec::new(),
        },
        &settings,
    )?
    .started(&events::ControllerStarted {
        listen: config.listen.to_string(),
        admins: config.admins.to_vec(),
        revision: store.latest_revision()?,
    })?;
    if let Some(dir) = &config.enrol_checkpoint_keys {
        crate::service::enrol_checkpoint_keys(&store, startup.log(), dir)?;
    }
    let (audit_log, audit_runtime) = startup.start(std::mem::take(&mut config.sinks))?;
    let audit = Arc::new(audit_log);
    // The access policy: an invalid one stops the start (there is none in force to keep).
    let access_policy = crate::policy::PolicyHandle::start(config.policy.clone(), audit.clone())
        .context("access policy")?;
    // Installed before serving: SIGHUP's default action would end the controller.
    crate::policy::reload_on_sighup(access_policy.clone())?;
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
    )?
    .with_access_policy(access_policy);
    tokio::spawn(audit_runtime.run_timer(audit.clone(), |_| {}));
    // Once per window, the summaries of checkpoint refusals and conflicts left out by their
    // report budget; the last ones before `controller.stopped`.
    let checkpoint_reports = service.checkpoint_reports();
    let summaries = {
        let (reports, audit) = (checkpoint_reports.clone(), audit.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(reports.policy().window);
            tick.tick().await;
            loop {
                tick.tick().await;
                reports.write_summaries(&audit);
            }
        })
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, "loggate controller serving");
    eprintln!("loggate controller listening on {}", config.listen);
    // The audit file is open and the listener bound: systemd may consider the controller started.
    loggate_core::notify::ready();
    serve_mtls(
        listener,
        MtlsSettings {
            tls: &config.tls,
            trust_domain: &config.trust_domain,
            service_name: "loggate controller",
            audit: audit.clone(),
            max_streams_per_connection: None,
        },
        ControllerServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES),
        async move {
            loggate_core::shutdown::signal().await;
            // End the agents' watch streams, or the graceful shutdown would wait for them.
            let _ = stop.send(true);
        },
    )
    .await?;
    loggate_core::notify::stopping();
    summaries.abort();
    checkpoint_reports.write_summaries(&audit);
    AuditRuntime::stop(&audit, &events::ControllerStopped {})?;
    eprintln!("loggate controller stopped");
    Ok(())
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
