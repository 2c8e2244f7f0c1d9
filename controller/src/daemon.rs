//! `loggate controller serve`: loads the configuration, opens the store and the signing key,
//! enrols configured user certificates, and serves the Controller gRPC service over mTLS until
//! SIGINT/SIGTERM.

use crate::config::ControllerConfig;
use crate::service::enrol::{EnrolmentService, MAX_ENROL_REQUEST_BYTES};
use crate::service::ControllerService;
use crate::store::Store;
use anyhow::{bail, Context};
use loggate_core::audit::events;
use loggate_core::daemon::audit::AuditPlaces;
use loggate_core::daemon::{serve_mtls, serve_pre_auth, AuditRuntime, MtlsSettings};
use loggate_core::grant::{unix_now, SigningKey};
use loggate_core::identity::{Identity, Role};
use loggate_core::tls::read_certificate_der;
use loggate_proto::enrolment_server::EnrolmentServer;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How often the set of removed agents is reloaded from the store (a removal made through
/// this controller takes effect at once).
const REVOCATIONS_REFRESH: Duration = Duration::from_secs(10);

/// Largest request message the controller decodes.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

pub async fn serve(config_path: &Path) -> anyhow::Result<()> {
    // The stop signals' handlers first: a SIGTERM while starting stops the daemon once it
    // serves, with its records, instead of killing it by the signal's default action.
    loggate_core::shutdown::install();
    let mut config = ControllerConfig::load(config_path)?;
    // The metrics port before the audit starts: a taken port stops the controller before its
    // audit file records a start that never served.
    let metrics = match config
        .metrics
        .validate(loggate_core::metrics::Daemon::Controller)?
    {
        Some(endpoint) => Some((loggate_core::metrics::bind(&endpoint)?, endpoint)),
        None => None,
    };
    let signer = load_signing_key(&config.signing_key)?;
    let store = Arc::new(Store::open_database(&config.database)?);
    // Every start may be a restore of a backup (see Store::new_epoch): a new epoch makes every
    // agent resynchronise instead of resuming at a revision number this database may reuse.
    let epoch = store.new_epoch()?;
    tracing::info!(%epoch, "new epoch of the revision log");
    let cluster_id = store.cluster_id()?;
    let replica = config.replica_name()?;
    tracing::info!(%cluster_id, %replica, "controller cluster");
    // On PostgreSQL one replica at a time runs the singleton jobs (the request expiry sweep);
    // the log says which (store::db::lead_singleton_jobs).
    store.compete_for_singleton_jobs(&replica)?;
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
    let sink_names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
    let (audit_log, audit_runtime) = startup.start(std::mem::take(&mut config.sinks))?;
    let audit = Arc::new(audit_log);
    // The access policy: an invalid one stops the start (there is none in force to keep).
    let access_policy = crate::policy::PolicyHandle::start(config.policy.clone(), audit.clone())
        .context("access policy")?;
    // Installed before serving: SIGHUP's default action would end the controller.
    crate::policy::reload_on_sighup(access_policy.clone())?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    // The pre-authentication enrolment port, when configured: its CA is loaded (and its key's
    // mode checked) before anything is served, so a bad CA stops the start.
    let enrolment = match &config.enrolment {
        None => None,
        Some(enrolment) => {
            let (Some(ca_cert), Some(ca_key)) = (&config.ca_cert, &config.ca_key) else {
                bail!("[enrolment] needs ca_cert and ca_key");
            };
            let ca =
                Arc::new(crate::pki::RuntimeCa::load(ca_cert, ca_key).context("[enrolment] CA")?);
            let service = EnrolmentService::new(
                store.clone(),
                ca.clone(),
                config.trust_domain.clone(),
                enrolment.agent_cert_ttl,
                vec![signer.verifying_key().to_paserk()],
                audit.clone(),
                enrolment.attempts_per_minute,
            )?;
            // Sign-in (`[oidc]`) is served on the same port, signed by the same CA.
            let service = Arc::new(match &config.oidc_settings {
                None => service,
                Some(settings) => service.with_sign_in(Arc::new(
                    crate::service::signin::SignInService::new(
                        crate::oidc::verify::SignInVerifier::new(Arc::new(settings.clone()))?,
                        ca.clone(),
                        store.clone(),
                        config.trust_domain.clone(),
                        audit.clone(),
                        config.listen.port(),
                    )
                    .with_policy(access_policy.clone()),
                )),
            });
            let listener = tokio::net::TcpListener::bind(enrolment.listen)
                .await
                .with_context(|| format!("cannot listen on {} ([enrolment])", enrolment.listen))?;
            Some((service, listener, ca, enrolment.agent_cert_ttl))
        }
    };
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
    .with_replica_name(replica)
    .with_access_policy(access_policy);
    let (service, enrolment) = match enrolment {
        Some((enrol, listener, ca, lifetime)) => {
            (service.with_agent_ca(ca, lifetime), Some((enrol, listener)))
        }
        None => (service, None),
    };
    // Removed agents' certificates are refused from the first request on; the set is reloaded
    // after every removal and, for removals made elsewhere, on a timer.
    service.refresh_revocations()?;
    let service = Arc::new(service);
    let revocations_refresh = {
        let service = service.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REVOCATIONS_REFRESH);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = service.refresh_revocations() {
                    tracing::error!("reloading the removed agents failed: {e:#}");
                }
            }
        })
    };
    tokio::spawn(audit_runtime.run_timer(audit.clone(), |_| {}));
    // Once per window, the summaries of checkpoint refusals and conflicts left out by their
    // report budget; the last ones before `controller.stopped`.
    let checkpoint_reports = service.checkpoint_reports();
    let governance = service.governance();
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
    if let Some((metrics_listener, endpoint)) = metrics {
        let sinks_dir = audit_dir.join("sinks");
        loggate_core::metrics::spawn(
            metrics_listener,
            loggate_core::metrics::Daemon::Controller,
            endpoint,
            move || loggate_core::metrics::common().refresh_sinks(&sinks_dir, &sink_names),
            loggate_core::shutdown::signal(),
        );
    }
    let enrolment = enrolment.map(|(service, listener)| {
        let addr = listener.local_addr().ok();
        loggate_core::daemon::announce(
            tracing::Level::INFO,
            &format!(
                "loggate controller enrolment listening on {}",
                addr.map(|a| a.to_string()).unwrap_or_default()
            ),
        );
        let mut stopping = stop.subscribe();
        let tls = config.tls.clone();
        let trust_domain = config.trust_domain.clone();
        let audit = audit.clone();
        let timer = {
            let service = service.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    service.write_summaries();
                }
            })
        };
        let server = tokio::spawn({
            let service = service.clone();
            async move {
                serve_pre_auth(
                    listener,
                    MtlsSettings {
                        tls: &tls,
                        trust_domain: &trust_domain,
                        service_name: "loggate enrolment",
                        audit,
                        revocations: None,
                        reload_cert: None,
                        max_streams_per_connection: None,
                        send_buffer: None,
                    },
                    EnrolmentServer::from_arc(service)
                        .max_decoding_message_size(MAX_ENROL_REQUEST_BYTES),
                    async move {
                        let _ = stopping.wait_for(|stop| *stop).await;
                    },
                )
                .await
            }
        });
        (service, timer, server)
    });
    tracing::info!(listen = %config.listen, "loggate controller serving");
    loggate_core::daemon::announce(
        tracing::Level::INFO,
        &format!("loggate controller listening on {}", config.listen),
    );
    // The audit file is open and the listener bound: systemd may consider the controller started.
    loggate_core::notify::ready();
    let served = serve_mtls(
        listener,
        MtlsSettings {
            tls: &config.tls,
            trust_domain: &config.trust_domain,
            service_name: "loggate controller",
            audit: audit.clone(),
            revocations: Some(service.revocations()),
            reload_cert: None,
            max_streams_per_connection: None,
            // rustls's default: a controller holds a connection per agent of the fleet.
            send_buffer: None,
        },
        // `WatchGrants` from events encoded once for every agent; the other methods as generated.
        crate::service::grant_stream::ControllerRoutes::new(service.clone(), MAX_REQUEST_BYTES),
        async {
            loggate_core::shutdown::signal().await;
            // End the agents' watch streams, or the graceful shutdown would wait for them.
            let _ = stop.send(true);
        },
    )
    .await;
    if served.is_err() {
        // The server ended without a stop (its accept loop did; it closed its connections as a
        // stop does): the controller stops all the same, the enrolment server and the watch
        // streams with it, and writes its records, then exits with the error.
        let _ = stop.send(true);
    }
    // `serve_mtls` returned once nothing of a request was left (it closes the connections still
    // open at its deadline). The shutdown above (or the error) has set `stop`: the enrolment
    // server finishes
    // its open requests, closing the rest at its own deadline, before `controller.stopped`.
    if let Some((service, timer, server)) = enrolment {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("enrolment server: {e:#}"),
            Err(e) => tracing::error!("enrolment server: {e}"),
        }
        timer.abort();
        service.write_summaries();
    }
    loggate_core::notify::stopping();
    summaries.abort();
    revocations_refresh.abort();
    checkpoint_reports.write_summaries(&audit);
    governance.write_summaries(&audit);
    AuditRuntime::stop(&audit, &events::ControllerStopped {})?;
    loggate_core::daemon::announce(tracing::Level::INFO, "loggate controller stopped");
    served
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
        match store.set_user_key(identity.spiffe_id(), &identity.key_sha256_hex(), unix_now()) {
            Ok(()) => tracing::info!(user = %identity, "enrolled user certificate"),
            // A locked person's certificate in the folder is not enrolled (and not refused
            // loudly enough to stop the controller): the lock stands until an unlock.
            Err(e) if e.downcast_ref::<crate::store::UserLocked>().is_some() => {
                tracing::warn!(user = %identity, "not enrolling a locked person's certificate: {e:#}");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
