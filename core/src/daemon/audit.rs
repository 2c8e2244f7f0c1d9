//! The audit runtime of a daemon, the same for the controller and the agent: its configuration
//! keys, the checkpoint key, the `*.started` record, retention of rotated files, the SIEM sinks,
//! one timer that writes due checkpoints and rotates, and the `*.stopped` record.
//!
//! Its life in steps, so that a daemon can do its own work between them:
//! [`AuditRuntime::open`] (key, file: before anything that must be audited, such as the
//! agent's grant store, which forgets the grants it drops) → [`AuditOpened::started`]
//! (`*.started`, which may describe what was loaded meanwhile) → records written before
//! serving (the agent's `grant.dropped`, the controller's enrolled checkpoint keys) through
//! [`AuditStartup::log`] → [`AuditStartup::start`] (retention, group commit, sinks) → serve,
//! with [`AuditRuntime::run_timer`] → [`AuditRuntime::stop`] (`*.stopped`, a final checkpoint).

use crate::audit::ship::{spawn_sinks, ShipContext, SinkConfig};
use crate::audit::{
    AuditEvent, AuditLog, CheckpointKey, CheckpointPolicy, Retention, RotationPolicy,
    SharedAuditLog, VerifyKey,
};
use anyhow::bail;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Default of `audit_rotate_bytes`: 256 MiB.
pub fn default_audit_rotate_bytes() -> u64 {
    256 << 20
}

/// Default of `audit_keep_files`.
pub fn default_audit_keep_files() -> usize {
    10
}

/// `[checkpoints]` as written: a signed checkpoint after `every` records or `interval`,
/// whichever first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointsFile {
    #[serde(default = "default_checkpoint_every")]
    every: u64,
    #[serde(
        default = "default_checkpoint_interval",
        with = "crate::duration::text"
    )]
    interval: Duration,
}

fn default_checkpoint_every() -> u64 {
    CheckpointPolicy::default().every
}
fn default_checkpoint_interval() -> Duration {
    CheckpointPolicy::default().interval
}

impl Default for CheckpointsFile {
    fn default() -> Self {
        CheckpointsFile {
            every: default_checkpoint_every(),
            interval: default_checkpoint_interval(),
        }
    }
}

impl CheckpointsFile {
    fn validate(&self) -> anyhow::Result<CheckpointPolicy> {
        let interval = self.interval;
        if self.every == 0 || interval < Duration::from_secs(1) {
            bail!("checkpoints: every must be at least 1 and interval at least 1s");
        }
        Ok(CheckpointPolicy {
            every: self.every,
            interval,
        })
    }
}

/// The checked audit settings of a daemon's configuration file.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// `None`: never rotate (`audit_rotate_bytes = 0`).
    pub rotation: Option<RotationPolicy>,
    /// The audit files' disk budget in bytes (0: none; only with rotation).
    pub budget_bytes: u64,
    /// When the audit runtime writes a signed checkpoint record: after so many records or so
    /// much time (the `[checkpoints]` table).
    pub checkpoints: CheckpointPolicy,
}

impl AuditSettings {
    /// Checks the keys `audit_rotate_bytes`, `audit_keep_files`, `audit_max_bytes` and
    /// `[checkpoints]`, which mean the same in every daemon's configuration.
    pub fn validate(
        rotate_bytes: u64,
        keep_files: usize,
        max_bytes: Option<u64>,
        checkpoints: &CheckpointsFile,
    ) -> anyhow::Result<Self> {
        Ok(AuditSettings {
            budget_bytes: audit_budget(rotate_bytes, keep_files, max_bytes)?,
            checkpoints: checkpoints.validate()?,
            rotation: (rotate_bytes > 0).then_some(RotationPolicy {
                max_bytes: rotate_bytes,
                keep: keep_files,
            }),
        })
    }
}

/// The smallest default budget. Rotation is checked once a second, so with small files the
/// current one alone can pass `audit_rotate_bytes` many times over; a default must not refuse
/// audited actions for that.
const MIN_DEFAULT_AUDIT_BUDGET: u64 = 1 << 30;

/// The audit files' disk budget: `audit_max_bytes`, or by default twice the footprint of a
/// fully retained rotation (the kept files and the current one), at least 1 GiB, so a receiver
/// outage has as much again before audited actions are refused. It must hold the current file
/// and one rotated file.
fn audit_budget(
    rotate_bytes: u64,
    keep_files: usize,
    max_bytes: Option<u64>,
) -> anyhow::Result<u64> {
    if rotate_bytes == 0 {
        if max_bytes.is_some_and(|b| b > 0) {
            bail!("audit_max_bytes needs rotation: set audit_rotate_bytes above 0, or remove audit_max_bytes");
        }
        return Ok(0);
    }
    match max_bytes {
        None => Ok((keep_files as u64)
            .saturating_add(1)
            .saturating_mul(rotate_bytes)
            .saturating_mul(2)
            .max(MIN_DEFAULT_AUDIT_BUDGET)),
        Some(0) => Ok(0),
        Some(b) if b < rotate_bytes.saturating_mul(2) => bail!(
            "audit_max_bytes ({b}) must be at least twice audit_rotate_bytes ({rotate_bytes}): room for the current file and one rotated file"
        ),
        Some(b) => Ok(b),
    }
}

/// Where a daemon's audit runtime keeps its files, and who it is.
#[derive(Debug, Clone)]
pub struct AuditPlaces {
    /// The audit file (JSON lines, hash-chained); rotated files go beside it.
    pub audit_log: PathBuf,
    /// The writer's name in every record (`controller`, or the agent's id).
    pub host: String,
    /// The checkpoint signing key (created on first start, mode 0600; its public half beside it
    /// as `.pub`).
    pub checkpoint_key: PathBuf,
    /// The sinks' cursors and status files.
    pub sinks_dir: PathBuf,
    /// The program name the sinks send (`loggate-agent`, `loggate-controller`).
    pub app_name: String,
    /// Cursors of readers other than the sinks that must consume a rotated file before
    /// retention deletes it (the agent's checkpoint sender).
    pub other_cursors: Vec<PathBuf>,
}

/// The runtime after [`AuditRuntime::open`]: the checkpoint key is loaded and the file open
/// (continuing its chain), nothing written yet; [`AuditOpened::started`] writes the first
/// record of this run.
pub struct AuditOpened {
    log: AuditLog,
    verify_key: VerifyKey,
    places: AuditPlaces,
    settings: AuditSettings,
}

impl AuditOpened {
    /// Writes `started`, the first record of this run.
    pub fn started(self, started: &impl AuditEvent) -> anyhow::Result<AuditStartup> {
        let AuditOpened {
            mut log,
            verify_key,
            places,
            settings,
        } = self;
        log.append(started)?;
        Ok(AuditStartup {
            log,
            verify_key,
            places,
            settings,
        })
    }
}

/// The runtime between [`AuditOpened::started`] and [`AuditStartup::start`]: the file is open
/// and the `*.started` record written; the daemon may write more records before serving.
pub struct AuditStartup {
    log: AuditLog,
    verify_key: VerifyKey,
    places: AuditPlaces,
    settings: AuditSettings,
}

/// A daemon's running audit runtime: the timer's settings. The log itself is the
/// [`SharedAuditLog`] returned by [`AuditStartup::start`], owned by the daemon.
#[derive(Debug, Clone)]
pub struct AuditRuntime {
    rotation: Option<RotationPolicy>,
}

impl AuditRuntime {
    /// Loads (or creates) the checkpoint key and opens the audit file (continuing its chain)
    /// with the checkpoint policy. Call it before loading anything whose loading must be
    /// audited: if the audit cannot be opened, nothing has been changed yet.
    pub fn open(places: AuditPlaces, settings: &AuditSettings) -> anyhow::Result<AuditOpened> {
        let key = CheckpointKey::load_or_create(&places.checkpoint_key)?;
        let verify_key = key.verify_key();
        let log = AuditLog::open(&places.audit_log, &places.host)?
            .with_checkpoints(key, settings.checkpoints);
        Ok(AuditOpened {
            log,
            verify_key,
            places,
            settings: settings.clone(),
        })
    }

    /// One pass of the timer: a checkpoint when one is due, a rotation when one is due. Errors
    /// are logged, not returned: the next append fails closed on its own if the file is gone.
    pub fn maintain(&self, log: &SharedAuditLog) {
        if let Err(e) = tokio::task::block_in_place(|| log.checkpoint_if_due()) {
            tracing::error!("audit checkpoint failed: {e:#}");
        }
        if let Some(policy) = self.rotation {
            if let Err(e) = tokio::task::block_in_place(|| log.rotate_if_due(policy)) {
                tracing::error!("audit rotation failed: {e:#}");
            }
        }
    }

    /// The daemon's one audit timer: once a second, [`AuditRuntime::maintain`], then
    /// `each_second` (the agent's grant expiry). Runs until its task is dropped; needs the
    /// multi-threaded runtime (writes block).
    pub async fn run_timer<D>(self, daemon: Arc<D>, mut each_second: impl FnMut(&D) + Send)
    where
        D: AsRef<SharedAuditLog> + Send + Sync + 'static,
    {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.maintain(daemon.as_ref().as_ref());
            each_second(&daemon);
        }
    }

    /// Writes `stopped` and seals the chain with a last checkpoint.
    pub fn stop(log: &SharedAuditLog, stopped: &impl AuditEvent) -> anyhow::Result<()> {
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            log.append(stopped)?;
            log.checkpoint()?;
            Ok(())
        })
    }
}

impl AuditStartup {
    /// The log, for records written before serving.
    pub fn log(&mut self) -> &mut AuditLog {
        &mut self.log
    }

    /// The public half of the checkpoint key (the agent sends it with its checkpoints).
    pub fn verify_key(&self) -> VerifyKey {
        self.verify_key.clone()
    }

    /// Applies retention (with rotation: a rotated file is deleted only once every sink and
    /// every other cursor has consumed it, within the disk budget; with no sink and no other
    /// cursor, never), starts group commit, and starts one delivery thread per sink. Warns
    /// when the files are already over their budget (an upgrade from a version that never
    /// rotated): they are kept, and audited actions refused until a reader catches up.
    pub fn start(self, sinks: Vec<SinkConfig>) -> anyhow::Result<(SharedAuditLog, AuditRuntime)> {
        let AuditStartup {
            mut log,
            places,
            settings,
            ..
        } = self;
        if let Some(policy) = settings.rotation {
            let cursors = sinks
                .iter()
                .map(|s| crate::audit::ship::cursor::cursor_path(&places.sinks_dir, &s.name))
                .chain(places.other_cursors.iter().cloned())
                .collect();
            log = log.with_retention(
                Retention {
                    budget_bytes: settings.budget_bytes,
                    cursors,
                },
                policy.keep,
            );
            if !log.has_reader() {
                tracing::info!(
                    "{} has no [[audit.sinks]]: its rotated files are kept, never deleted, and audited actions are refused once they fill the budget ({} bytes; 0: none)",
                    places.audit_log.display(),
                    settings.budget_bytes
                );
            }
            if let Some((used, budget)) = log.over_budget() {
                tracing::warn!(
                    "the audit files of {} already take {used} bytes, at or over their budget of {budget} bytes: audited actions will be refused until a sink has shipped the rotated files; raise audit_max_bytes, or move old rotated files to an archive after checking them with `loggate audit verify`",
                    places.audit_log.display()
                );
            }
        }
        let log = SharedAuditLog::new(log)?;
        // The sinks follow the audit file on threads of their own: a slow SIEM never slows
        // the daemon.
        spawn_sinks(
            sinks,
            &ShipContext {
                audit_log: places.audit_log.clone(),
                state_dir: places.sinks_dir.clone(),
                host: places.host.clone(),
                app_name: places.app_name.clone(),
                durable: log.durable(),
            },
        )?;
        Ok((
            log,
            AuditRuntime {
                rotation: settings.rotation,
            },
        ))
    }
}

/// The folder holding `path` (`.` for a bare file name).
pub fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditLog;

    #[test]
    fn audit_budget_defaults_to_twice_the_retained_footprint() {
        assert_eq!(audit_budget(256 << 20, 10, None).unwrap(), 11 * (512 << 20));
        assert_eq!(
            audit_budget(100, 10, None).unwrap(),
            1 << 30,
            "at least 1 GiB"
        );
        assert_eq!(audit_budget(100, 10, Some(500)).unwrap(), 500);
        assert_eq!(audit_budget(100, 10, Some(0)).unwrap(), 0, "0: no budget");
        assert_eq!(
            audit_budget(0, 10, None).unwrap(),
            0,
            "no rotation: no budget"
        );
    }

    #[test]
    fn audit_budget_refuses_less_than_two_files_or_a_budget_without_rotation() {
        let err = audit_budget(100, 10, Some(150)).unwrap_err().to_string();
        assert!(err.contains("at least twice audit_rotate_bytes"), "{err}");
        let err = audit_budget(0, 10, Some(1000)).unwrap_err().to_string();
        assert!(err.contains("needs rotation"), "{err}");
    }

    fn policy(text: &str) -> anyhow::Result<CheckpointPolicy> {
        toml::from_str::<CheckpointsFile>(text)?.validate()
    }

    #[test]
    fn checkpoint_policy_defaults_to_1000_records_or_60s() {
        let p = policy("").unwrap();
        assert_eq!((p.every, p.interval), (1000, Duration::from_secs(60)));
        let p = policy("every = 4\ninterval = \"1s\"").unwrap();
        assert_eq!((p.every, p.interval), (4, Duration::from_secs(1)));
    }

    #[test]
    fn checkpoint_policy_refuses_zero_short_or_unknown_settings() {
        for bad in [
            "every = 0",
            "interval = \"10ms\"",
            "interval = \"soon\"",
            "evry = 3",
        ] {
            assert!(policy(bad).is_err(), "{bad}");
        }
    }

    /// Runs `f` on a multi-threaded runtime (the timer's writes block in place).
    fn on_runtime(f: impl FnOnce() + Send) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        rt.block_on(async { tokio::task::block_in_place(f) });
    }

    #[test]
    fn a_pre_existing_file_over_the_budget_is_kept_by_a_daemon_with_no_sink() {
        let dir = crate::audit::scratch_dir();
        let places = AuditPlaces {
            audit_log: dir.join("audit.jsonl"),
            host: "controller".into(),
            checkpoint_key: dir.join("audit-signing.key"),
            sinks_dir: dir.join("sinks"),
            app_name: "loggate-controller".into(),
            other_cursors: Vec::new(),
        };
        // Written by a version that never rotated: 30 KB, over a 20 KB budget.
        let mut old = AuditLog::open(&places.audit_log, "controller").unwrap();
        let big = crate::audit::events::TestEvent {
            i: 0,
            tag: Box::leak("x".repeat(1_000).into_boxed_str()),
        };
        while std::fs::metadata(&places.audit_log).unwrap().len() < 30_000 {
            old.append(&big).unwrap();
        }
        drop(old);
        let history = std::fs::read_to_string(&places.audit_log).unwrap();
        let settings =
            AuditSettings::validate(10_000, 1, Some(20_000), &CheckpointsFile::default()).unwrap();
        on_runtime(|| {
            let startup = AuditRuntime::open(places.clone(), &settings)
                .and_then(|opened| opened.started(&crate::audit::events::TestEvent::n(1)))
                .unwrap();
            let (log, runtime) = startup.start(Vec::new()).unwrap();
            // Several ticks: the first rotates the old file away, later ones would delete it.
            for _ in 0..3 {
                runtime.maintain(&log);
            }
        });
        let rotated = crate::audit::rotated_files(&places.audit_log).unwrap();
        assert_eq!(rotated.len(), 1, "{rotated:?}");
        let kept = std::fs::read_to_string(&rotated[0]).unwrap();
        assert!(
            kept.starts_with(&history),
            "the old history was not kept whole"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_checkpoint_interval_reads_the_one_duration_grammar() {
        let p = policy("interval = \"1m 30s\"").unwrap();
        assert_eq!(p.interval, Duration::from_secs(90));
        let err = format!("{:#}", policy("interval = \"-5s\"").unwrap_err());
        assert!(err.contains("\"-5s\" is negative"), "{err}");
    }

    #[test]
    fn rotation_is_off_at_zero_bytes_and_on_with_the_defaults() {
        let checkpoints = CheckpointsFile::default();
        let off = AuditSettings::validate(0, 10, None, &checkpoints).unwrap();
        assert_eq!((off.rotation, off.budget_bytes), (None, 0));
        let on = AuditSettings::validate(
            default_audit_rotate_bytes(),
            default_audit_keep_files(),
            None,
            &checkpoints,
        )
        .unwrap();
        assert_eq!(
            on.rotation,
            Some(RotationPolicy {
                max_bytes: 256 << 20,
                keep: 10
            })
        );
    }
}
