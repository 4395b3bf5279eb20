//! `voltar backup`: orchestration of one run, built from the modules below it.
//!
//! Before anything is quiesced every target is checked (`Storage::check`, a few seconds at most): a target that
//! is dead, hung, unauthorised or has no bucket is skipped for the whole run, and when none is usable the run
//! is fatal — no container is touched for a target that cannot take the backup.
//!
//! For each planned source, in order: open one streamed upload per target, quiesce the containers that mount the
//! source (journaled), pack it (blocking thread: walk → tar → zstd → [age] → sha256 → chunks) while the chunks
//! fan out to every target, resume the containers *as soon as the source is read* (before the uploads finish),
//! then finish the uploads. One failing source or target does not stop the others; a target that failed is
//! skipped by the sources after it. At the end each target gets its manifest — the commit — listing the sources
//! stored there; a target where nothing was stored gets none. Pruning runs per target only after its commit.
//!
//! A container's downtime is bounded by reading its volume at local speed (acceptance row 23): while containers
//! are held, a writer that falls behind gets the rest of its stream through a spool file (`spool-dir`, see
//! `pipeline::Pace`) and finishes after they are resumed; `[quiesce] max-downtime` caps a read that is slow by
//! itself (the source is aborted, the containers resumed).
//!
//! Containers are resumed on every path: success, error, a panic in the packer (caught as a `JoinError`) and
//! cancellation (SIGINT/SIGTERM set the cancel flag the packer polls). A SIGKILL is repaired from the journal
//! by the next run or `voltar recover`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::archive::{self, ArchiveError, Counts};
use crate::catalog::{
    self, BackupId, ContainerRecord, FailedSource, Manifest, QuiesceAction, SourceKind,
    SourceRecord,
};
use crate::config::{Archive, Config, Job, Target};
use crate::crypto::{self, Encryptor};
use crate::docker::Engine;
use crate::lock::TargetLock;
use crate::pipeline::{self, ChunkSink, Leg, Pace};
use crate::plan::{self, Plan, PlannedSource};
use crate::progress::Progress;
use crate::prune::{self, PruneReport};
use crate::quiesce::{self, Hold, Journal, Quiescer};
use crate::storage::{self, PutOptions, Storage};

/// What to back up and where.
#[derive(Clone, Debug)]
pub struct BackupRequest {
    pub job: Job,
    pub targets: Vec<Target>,
    pub only: Vec<String>,
    pub dry_run: bool,
    pub tags: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    /// Stored on some targets, failed on others.
    Partial,
    /// Stored, but entries that existed when the source was read are missing from the archive, wholly or in
    /// part (unreadable, I/O errors, …; listed in `not_archived`): not a complete backup of the source.
    Incomplete,
    Failed,
    Skipped,
}

/// Entries not archived that a source's report and manifest list by name (the count is always exact).
pub const NOT_ARCHIVED_LISTED: usize = 100;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SourceReport {
    pub name: String,
    pub kind: SourceKind,
    pub status: Status,
    pub counts: Counts,
    pub stored_bytes: u64,
    pub read_ms: u64,
    pub containers: Vec<ContainerRecord>,
    pub warnings: Vec<String>,
    /// Entries that existed but are not in the archive, or only in part (`<path>: <why>`), at most
    /// [`NOT_ARCHIVED_LISTED`]; any makes the source [`Status::Incomplete`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_archived: Vec<String>,
    #[serde(skip_serializing_if = "is_zero")]
    pub not_archived_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Target name → error, for targets where this source was not stored.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub target_errors: BTreeMap<String, String>,
    /// Target name → bytes that went through a spool file because that target fell behind while containers
    /// were held.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub spooled: BTreeMap<String, u64>,
    #[serde(skip)]
    records: BTreeMap<usize, SourceRecord>,
    /// Targets that failed while storing this source (not because of the source or the local spool): the
    /// sources after it skip them.
    #[serde(skip)]
    failed_targets: BTreeSet<usize>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl SourceReport {
    /// Longest downtime of any container of this source.
    pub fn downtime_ms(&self) -> u64 {
        self.containers
            .iter()
            .map(|c| c.downtime_ms)
            .max()
            .unwrap_or(0)
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TargetReport {
    pub name: String,
    pub location: String,
    pub committed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune: Option<PruneReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_skipped: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunReport {
    pub id: BackupId,
    pub job: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub dry_run: bool,
    pub plan: Plan,
    pub sources: Vec<SourceReport>,
    pub targets: Vec<TargetReport>,
    /// Containers put back by the journal replay at the start of the run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl RunReport {
    /// 0: everything stored everywhere; 1: something failed (a source, a target, a prune).
    pub fn exit_code(&self) -> i32 {
        if self.dry_run {
            return 0;
        }
        let sources_ok = self.sources.iter().all(|s| s.status == Status::Ok);
        let targets_ok = self.targets.iter().all(|t| {
            t.committed && t.error.is_none() && t.prune.as_ref().is_none_or(|p| p.is_ok())
        });
        if sources_ok && targets_ok && !self.sources.is_empty() {
            0
        } else {
            1
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Docker(#[from] crate::docker::DockerError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error(transparent)]
    Quiesce(#[from] quiesce::QuiesceError),
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    #[error(
        "no target to write to: pass --target DIR|s3://bucket/prefix or configure [target.NAME]"
    )]
    NoTarget,
    #[error("cannot open target {target}: {source}")]
    Storage {
        target: String,
        source: storage::StorageError,
    },
    /// Every target failed to open or failed its check: nothing was quiesced.
    #[error("no usable target, nothing was backed up and no container was touched: {0}")]
    NoUsableTarget(String),
    #[error("interrupted")]
    Cancelled,
}

/// Everything a run needs from its surroundings.
pub struct Env<'a> {
    pub config: &'a Config,
    pub engine: &'a Engine,
    pub progress: Progress,
    pub cancel: CancellationToken,
    pub now: DateTime<Utc>,
}

/// Plan only: discovery + selection, no side effects. A container another live voltar run holds paused or
/// stopped is planned as running (`quiesce::see_through_other_runs`): its pause is not the user's.
pub async fn plan_for(
    engine: &Engine,
    job: &Job,
    only: &[String],
    state_dir: &std::path::Path,
) -> Result<Plan, BackupError> {
    let mut discovery = engine.discover().await?;
    quiesce::see_through_other_runs(state_dir, &mut discovery.containers);
    Ok(plan::plan(&discovery, job, only, &plan::probe_path)?)
}

/// Run one backup job.
pub async fn run(env: &Env<'_>, req: &BackupRequest) -> Result<RunReport, BackupError> {
    let started_at = Utc::now();
    if req.targets.is_empty() {
        return Err(BackupError::NoTarget);
    }
    let mut recovered = Vec::new();
    if !req.dry_run {
        // Undo what a killed run left behind before touching anything.
        let r = quiesce::recover(&env.config.state_dir, env.engine).await?;
        recovered = r.lines();
        for line in &recovered {
            env.progress
                .warn(&format!("recovered from an interrupted run: {line}"));
        }
    }
    let plan = plan_for(env.engine, &req.job, &req.only, &env.config.state_dir).await?;
    execute(env, req, plan, started_at, recovered).await
}

/// Back up an already-made plan (restore's safety backup uses this with the containers already stopped).
pub async fn execute(
    env: &Env<'_>,
    req: &BackupRequest,
    plan: Plan,
    started_at: DateTime<Utc>,
    recovered: Vec<String>,
) -> Result<RunReport, BackupError> {
    let id = BackupId::new(started_at);
    let mut report = RunReport {
        id: id.clone(),
        job: req.job.name.clone(),
        started_at,
        finished_at: started_at,
        dry_run: req.dry_run,
        plan: plan.clone(),
        sources: vec![],
        targets: vec![],
        recovered,
        notes: vec![],
    };
    if req.dry_run {
        report.finished_at = Utc::now();
        return Ok(report);
    }
    if plan.sources.is_empty() {
        report
            .notes
            .push("no source is selected for backup (see `voltar plan`)".into());
        report.finished_at = Utc::now();
        return Ok(report);
    }

    // Spool files a killed run left behind (a live run's are unlinked at once, see `pipeline::SPOOL_PREFIX`).
    let spool_dir = env.config.spool_dir();
    match pipeline::sweep_spool(&spool_dir) {
        Ok(gone) if !gone.is_empty() => report.notes.push(format!(
            "removed {} spool file(s) left in {} by an interrupted run",
            gone.len(),
            spool_dir.display()
        )),
        Ok(_) => {}
        Err(e) => env.progress.warn(&format!(
            "cannot clean the spool directory {}: {e}",
            spool_dir.display()
        )),
    }

    // Open every target and take its lock. A target that cannot be opened fails alone.
    let mut stores: Vec<Option<Arc<dyn Storage>>> = Vec::new();
    let mut locks: Vec<TargetLock> = Vec::new();
    let mut first_error: Option<BackupError> = None;
    for t in &req.targets {
        let mut tr = TargetReport {
            name: t.name.clone(),
            location: t.name.clone(),
            committed: false,
            error: None,
            prune: None,
            prune_skipped: None,
        };
        match storage::open(t).await {
            Ok(s) => {
                tr.location = s.describe();
                match TargetLock::acquire(&env.config.state_dir, t) {
                    Ok(l) => {
                        locks.push(l);
                        stores.push(Some(s));
                    }
                    Err(e) => {
                        tr.error = Some(e.to_string());
                        stores.push(None);
                        first_error.get_or_insert(BackupError::Lock(e));
                    }
                }
            }
            Err(e) => {
                tr.error = Some(e.to_string());
                stores.push(None);
                first_error.get_or_insert(BackupError::Storage {
                    target: t.name.clone(),
                    source: e,
                });
            }
        }
        report.targets.push(tr);
    }
    if stores.iter().all(Option::is_none) {
        // No target is usable: fatal, with the first target's own error (its message names the target).
        return Err(first_error.unwrap_or(BackupError::NoTarget));
    }

    // Check every opened target before anything is quiesced, all at once, each within its check-timeout: a dead,
    // hung or unauthorised target is skipped for the whole run instead of holding containers while it is retried.
    env.progress.phase("checking targets");
    let checks = futures::future::join_all(stores.iter().zip(&req.targets).map(
        |(store, t)| async move {
            match store {
                Some(s) => Some(s.check(t.check_timeout()).await),
                None => None,
            }
        },
    ));
    let checks = tokio::select! {
        c = checks => c,
        _ = env.cancel.cancelled() => return Err(BackupError::Cancelled),
    };
    let names: Vec<String> = req.targets.iter().map(|t| t.name.clone()).collect();
    // Target index → why later sources do not write to it.
    let mut skip: BTreeMap<usize, String> = BTreeMap::new();
    for (i, c) in checks.into_iter().enumerate() {
        match c {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                let why = check_failed(&e);
                report.targets[i].error = Some(why);
                stores[i] = None;
                skip.insert(
                    i,
                    format!(
                        "skipped: target {} failed its check before the run",
                        names[i]
                    ),
                );
            }
            None => {
                skip.insert(
                    i,
                    format!("skipped: target {} could not be opened", names[i]),
                );
            }
        }
    }
    if stores.iter().all(Option::is_none) {
        let why: Vec<String> = report
            .targets
            .iter()
            .zip(&req.targets)
            .map(|(tr, t)| {
                let name = if t.name == tr.location {
                    t.name.clone()
                } else {
                    format!("{} ({})", t.name, tr.location)
                };
                format!("target {name}: {}", tr.error.clone().unwrap_or_default())
            })
            .collect();
        return Err(BackupError::NoUsableTarget(why.join("; ")));
    }

    let encryptor = Encryptor::from_config(&env.config.encryption)?;
    let journal = Journal::open(&env.config.state_dir)?;
    let quiescer = Quiescer::new(env.engine, &journal).cancel_on(env.cancel.clone());
    for src in &plan.sources {
        if env.cancel.is_cancelled() {
            break;
        }
        let r = back_up_source(
            env,
            &quiescer,
            &id,
            src,
            &stores,
            &names,
            &skip,
            &spool_dir,
            req.job.quiesce.max_downtime,
            &env.config.archive,
            encryptor.as_ref(),
        )
        .await;
        // A target that failed here (dead, out of space, credentials revoked…) would make every later source
        // wait out its retry deadline again: skip it from now on.
        for &i in &r.failed_targets {
            skip.entry(i).or_insert_with(|| {
                format!(
                    "skipped: target {} failed earlier in this run (while storing {})",
                    names[i], r.name
                )
            });
        }
        report.sources.push(r);
    }
    if env.cancel.is_cancelled() {
        // Nothing is committed after an interrupt: the run is not a backup.
        env.progress.finish();
        return Err(BackupError::Cancelled);
    }

    // Commit: one manifest per target, listing what is stored there.
    let finished_at = Utc::now();
    let mut committed: BTreeMap<usize, Manifest> = BTreeMap::new();
    for (i, store) in stores.iter().enumerate() {
        let Some(store) = store else { continue };
        let records: Vec<SourceRecord> = report
            .sources
            .iter()
            .filter_map(|s| s.records.get(&i).cloned())
            .collect();
        if records.is_empty() {
            // Say why: the first error of this target, else the first source error.
            let why = report
                .sources
                .iter()
                .find_map(|s| s.target_errors.get(&names[i]))
                .or_else(|| report.sources.iter().find_map(|s| s.error.as_ref()));
            report.targets[i].error = Some(match why {
                Some(w) => format!("nothing was stored on it ({w})"),
                None => "nothing was stored on it".into(),
            });
            continue;
        }
        let failed: Vec<FailedSource> = report
            .sources
            .iter()
            .filter(|s| !s.records.contains_key(&i))
            .map(|s| FailedSource {
                name: s.name.clone(),
                error: s
                    .target_errors
                    .get(&names[i])
                    .or(s.error.as_ref())
                    .cloned()
                    .unwrap_or_else(|| "not stored".into()),
            })
            .collect();
        let mut manifest = Manifest {
            format: catalog::FORMAT_VERSION,
            tool: crate::TOOL.to_string(),
            id: id.clone(),
            job: req.job.name.clone(),
            host: hostname(),
            started_at,
            finished_at,
            tags: req.tags.clone(),
            sources: records,
            failed,
            encryption: None,
            seal: None,
        };
        if let Some(enc) = &encryptor {
            enc.seal(&mut manifest)?;
        }
        let key = catalog::manifest_key(&id);
        match store.put(&key, manifest.to_json().into()).await {
            Ok(()) => {
                report.targets[i].committed = true;
                committed.insert(i, manifest);
            }
            Err(e) => report.targets[i].error = Some(format!("writing manifest: {e}")),
        }
    }

    // Prune each committed target by its policy, unless the new backup looks wrong.
    if req.job.prune {
        for (i, store) in stores.iter().enumerate() {
            let Some(store) = store else { continue };
            let Some(manifest) = committed.get(&i) else {
                continue;
            };
            let settings = req.targets[i].effective_retention(&req.job.retention);
            if settings.policy.is_empty() {
                continue;
            }
            env.progress
                .phase(&format!("pruning {}", report.targets[i].location));
            match prune::prune_after_backup(store.as_ref(), &settings, manifest, env.now).await {
                Ok(prune::AfterBackup::Pruned(p)) => report.targets[i].prune = Some(*p),
                Ok(prune::AfterBackup::Skipped { reason }) => {
                    env.progress.warn(&format!(
                        "not pruning {}: {reason}",
                        report.targets[i].location
                    ));
                    report.targets[i].prune_skipped = Some(reason);
                }
                Err(e) => report.targets[i].error = Some(format!("prune: {e}")),
            }
        }
    }
    drop(locks);
    report.finished_at = Utc::now();
    env.progress.finish();
    Ok(report)
}

/// Back up one source to every open target. Never returns early without resuming what it held.
#[allow(clippy::too_many_arguments)]
async fn back_up_source(
    env: &Env<'_>,
    quiescer: &Quiescer<'_>,
    id: &BackupId,
    src: &PlannedSource,
    stores: &[Option<Arc<dyn Storage>>],
    names: &[String],
    skip: &BTreeMap<usize, String>,
    spool_dir: &std::path::Path,
    max_downtime: Duration,
    archive_cfg: &Archive,
    encryptor: Option<&Encryptor>,
) -> SourceReport {
    let mut report = SourceReport {
        name: src.name.clone(),
        kind: src.kind,
        status: Status::Failed,
        counts: Counts::default(),
        stored_bytes: 0,
        read_ms: 0,
        containers: src
            .containers
            .iter()
            .map(|c| ContainerRecord {
                id: c.id.clone(),
                name: c.name.clone(),
                compose_project: c.compose_project.clone(),
                compose_service: c.compose_service.clone(),
                state: c.state.clone(),
                rw: c.rw,
                action: QuiesceAction::None,
                downtime_ms: 0,
            })
            .collect(),
        warnings: vec![],
        not_archived: vec![],
        not_archived_count: 0,
        error: None,
        target_errors: BTreeMap::new(),
        spooled: BTreeMap::new(),
        records: BTreeMap::new(),
        failed_targets: BTreeSet::new(),
    };
    env.progress.phase(&format!("{} {}", src.kind, src.name));

    // The source must be readable here, before any container is touched.
    match std::fs::metadata(&src.path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            report.error = Some(format!("{} is not a directory", src.path.display()));
            return report;
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            report.error = Some(format!(
                "cannot read {}: {e} (voltar reads volumes from the host: run it as root on the Docker host, or in a container with /var/lib/docker/volumes mounted read-only at the same path)",
                src.path.display()
            ));
            return report;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.error = Some(format!(
                "{} does not exist (was it removed during the run? when voltar runs in a container, mount /var/lib/docker/volumes at the same path)",
                src.path.display()
            ));
            return report;
        }
        Err(e) => {
            report.error = Some(format!("cannot read {}: {e}", src.path.display()));
            return report;
        }
    }

    let object = catalog::object_name(&src.name, encryptor.is_some());
    let key = catalog::object_key(id, &object);
    let mut legs = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        if let Some(why) = skip.get(&i) {
            report.target_errors.insert(names[i].clone(), why.clone());
            continue;
        }
        let Some(store) = store else { continue };
        match store.put_stream(&key, PutOptions::default()).await {
            Ok(writer) => legs.push(Leg { target: i, writer }),
            Err(e) => {
                if target_failed(&e) {
                    report.failed_targets.insert(i);
                }
                report.target_errors.insert(names[i].clone(), e.to_string());
            }
        }
    }
    if legs.is_empty() {
        report.error = Some(not_stored(&report.target_errors));
        return report;
    }

    // Quiesce. On failure `hold` has already resumed whatever it changed.
    let holds: Vec<Hold> = src
        .holds()
        .map(|c| Hold {
            id: c.id.clone(),
            name: c.name.clone(),
            action: c.action,
            stop_timeout: c.stop_timeout,
        })
        .collect();
    if !holds.is_empty() {
        env.progress.note(&format!(
            "{} {} container(s)",
            if holds.iter().any(|h| h.action == QuiesceAction::Stop) {
                "stopping/pausing"
            } else {
                "pausing"
            },
            holds.len()
        ));
    }
    let held = match quiescer.hold(&holds).await {
        Ok(h) => h,
        Err(e) => {
            for leg in legs {
                let _ = leg.writer.abort().await;
            }
            report.error = Some(format!("quiescing containers: {e}"));
            return report;
        }
    };

    // Read: pack on a blocking thread, fan out on this one. While containers are held no writer may slow the
    // read down: one that falls behind is fed from a spool file once they are resumed.
    let holding = !held.is_empty();
    let pace = if holding {
        Pace::Spool {
            dir: spool_dir.to_path_buf(),
        }
    } else {
        Pace::Backpressure
    };
    let (tx, rx) = mpsc::channel(pipeline::CHANNEL_CHUNKS);
    let (commit_tx, commit_rx) = oneshot::channel::<bool>();
    let fan = tokio::spawn(pipeline::fan_out(
        rx,
        legs,
        async move { commit_rx.await.unwrap_or(false) },
        pace,
        env.cancel.clone(),
    ));
    let cancel_flag = Arc::new(AtomicBool::new(false));
    let watcher = {
        let flag = cancel_flag.clone();
        let token = env.cancel.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            flag.store(true, Ordering::SeqCst);
        })
    };
    let path: PathBuf = src.path.clone();
    let level = archive_cfg.zstd_level;
    let threads = archive_cfg.zstd_threads;
    let progress = env.progress.clone();
    let enc = encryptor.cloned();
    let flag = cancel_flag.clone();
    let started = Instant::now();
    let mut packer = tokio::task::spawn_blocking(
        move || -> Result<(archive::pack::PackReport, String, u64), ArchiveError> {
            let sink = ChunkSink::new(tx);
            let stored =
                crypto::StoredWriter::new(sink, enc.as_ref()).map_err(ArchiveError::Sink)?;
            let zw = archive::compress::zstd_encoder(stored, level, threads)
                .map_err(ArchiveError::Sink)?;
            let opts = archive::pack::PackOptions {
                cancel: Some(&flag),
            };
            let (rep, zw) = archive::pack::pack(&path, zw, &opts, &mut |n| progress.inc(n))?;
            let stored = zw.finish().map_err(ArchiveError::Sink)?;
            let sink = stored.finish().map_err(ArchiveError::Sink)?;
            let (sha, size) = sink.finish().map_err(ArchiveError::Sink)?;
            Ok((rep, sha, size))
        },
    );
    // The hard cap on downtime: a read that is slow by itself (a huge volume, a slow disk) is aborted at
    // `max-downtime`, and the containers are resumed right then, not when the packer has noticed.
    let mut capped = false;
    let packed = if holding {
        match tokio::time::timeout(max_downtime, &mut packer).await {
            Ok(p) => Some(p),
            Err(_) => {
                capped = true;
                cancel_flag.store(true, Ordering::SeqCst);
                None
            }
        }
    } else {
        Some((&mut packer).await)
    };
    if !capped {
        report.read_ms = started.elapsed().as_millis() as u64;
    }

    // Resume right away: the source has been read (or the cap was reached).
    let released = quiescer.release(held).await;
    for r in &released.released {
        if let Some(c) = report.containers.iter_mut().find(|c| c.id == r.id) {
            c.action = r.action;
            c.downtime_ms = r.downtime_ms();
        }
    }
    for e in &released.errors {
        report.warnings.push(e.to_string());
        env.progress.warn(&e.to_string());
    }
    let packed = match packed {
        Some(p) => p,
        None => packer.await,
    };
    if capped {
        report.read_ms = started.elapsed().as_millis() as u64;
    }
    watcher.abort();

    let packed = match packed {
        // Even a read that ended just after the cap is discarded: the containers were already running again.
        _ if capped => Err(cap_error(max_downtime)),
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err(e.to_string()),
        Err(join) if join.is_panic() => Err(
            "internal error: the packer panicked (containers were resumed); please report this"
                .to_string(),
        ),
        Err(join) => Err(format!("packer did not finish: {join}")),
    };
    let _ = commit_tx.send(packed.is_ok());
    let legs = fan.await.unwrap_or_default();
    for l in &legs {
        if l.spooled > 0 {
            env.progress.note(&format!(
                "{} fell behind while containers were held: {} MiB went through the spool",
                names[l.target],
                l.spooled >> 20
            ));
            report.spooled.insert(names[l.target].clone(), l.spooled);
        }
        if let Err(e) = &l.result {
            if !l.spool_failed && target_failed(e) {
                report.failed_targets.insert(l.target);
            }
        }
    }
    let mut legs = legs;
    for l in legs.iter_mut() {
        if l.spool_failed {
            if let Err(e) = &l.result {
                // Say which stream was spooled and why: the error itself names only the spool directory.
                l.result = Err(storage::StorageError::Permanent {
                    target: names[l.target].clone(),
                    message: format!("fell behind while containers were held, and {e}"),
                });
            }
        }
    }
    let (pack_report, sha256, size) = match packed {
        Ok(p) => p,
        Err(e) => {
            let mut every_target_failed = !legs.is_empty() && !capped;
            for l in &legs {
                match &l.result {
                    Err(le) if !matches!(le, storage::StorageError::Cancelled { .. }) => {
                        report
                            .target_errors
                            .insert(names[l.target].clone(), le.to_string());
                    }
                    _ => every_target_failed = false,
                }
            }
            // When every target failed, the packer only saw a closed pipe: the targets' errors are the cause.
            report.error = Some(if every_target_failed {
                not_stored(&report.target_errors)
            } else {
                e
            });
            return report;
        }
    };
    report.counts = pack_report.counts.clone();
    report.stored_bytes = size;
    report.warnings.extend(pack_report.warnings.iter().cloned());
    if pack_report.counts.files == 0 && pack_report.counts.bytes == 0 {
        // Row 10: an empty source is worth a look (a volume mounted at the wrong path, data moved away).
        let w = "source is empty: no files were found (is this the right volume?)".to_string();
        env.progress.warn(&format!("{}: {w}", src.name));
        report.warnings.push(w);
    }
    for w in &pack_report.warnings {
        env.progress.warn(&format!("{}: {w}", src.name));
    }
    // Row 24: an entry that existed but is not in the archive is never a warning only.
    report.not_archived_count = pack_report.not_archived_count;
    report.not_archived = pack_report
        .not_archived
        .iter()
        .take(NOT_ARCHIVED_LISTED)
        .cloned()
        .collect();
    for w in &report.not_archived {
        env.progress
            .warn(&format!("{}: NOT ARCHIVED: {w}", src.name));
    }
    for l in legs {
        let i = l.target;
        match l.result {
            Ok(_meta) => {
                report.records.insert(
                    i,
                    SourceRecord {
                        name: src.name.clone(),
                        kind: src.kind,
                        path: src.path.to_string_lossy().into_owned(),
                        driver: src.driver.clone(),
                        driver_opts: src.driver_opts.clone(),
                        labels: src.labels.clone(),
                        object: object.clone(),
                        counts: pack_report.counts.clone(),
                        stored_bytes: size,
                        sha256: sha256.clone(),
                        containers: report.containers.clone(),
                        read_ms: report.read_ms,
                        warnings: report.warnings.clone(),
                        not_archived: report.not_archived.clone(),
                        not_archived_count: report.not_archived_count,
                    },
                );
            }
            Err(e) => {
                report.target_errors.insert(names[i].clone(), e.to_string());
            }
        }
    }
    report.status = if report.records.is_empty() {
        report.error = Some("not stored on any target".into());
        Status::Failed
    } else if report.not_archived_count > 0 {
        report.error = Some(incomplete(&report));
        Status::Incomplete
    } else if report.target_errors.is_empty() {
        Status::Ok
    } else {
        Status::Partial
    };
    report
}

/// Why an incomplete source is not ok, naming the first entry and the fix.
fn incomplete(report: &SourceReport) -> String {
    let n = report.not_archived_count;
    format!(
        "{n} {} could not be archived (first: {}); the backup of this source is incomplete: fix the cause \
         (permissions, I/O errors) and back up again",
        if n == 1 { "entry" } else { "entries" },
        report.not_archived.first().map(String::as_str).unwrap_or("?"),
    )
}

/// Whether a leg's error means the target itself failed (so later sources skip it), rather than the run being
/// cancelled.
fn target_failed(e: &storage::StorageError) -> bool {
    !matches!(e, storage::StorageError::Cancelled { .. })
}

/// A target's line when it failed the check before the run, with the likely fix for what is not obvious.
fn check_failed(e: &storage::StorageError) -> String {
    use storage::StorageError as E;
    let hint = match e {
        E::Transient { .. } => {
            " (is the endpoint right and the server up? a slow link may need a longer check-timeout)"
        }
        _ => "",
    };
    format!("failed its check before the run, nothing was written to it: {e}{hint}")
}

/// The error of a source whose read reached `[quiesce] max-downtime`.
fn cap_error(cap: Duration) -> String {
    format!(
        "reading took longer than max-downtime ({}) while containers were held: aborted, nothing was stored, \
         the containers were resumed (raise `max-downtime` in [quiesce], or quiesce this source with `none`)",
        humantime::format_duration(cap)
    )
}

/// "not stored: <each target's error>" (the errors name their target).
fn not_stored(target_errors: &BTreeMap<String, String>) -> String {
    if target_errors.is_empty() {
        return "not stored: no target accepted the upload".into();
    }
    format!(
        "not stored: {}",
        target_errors
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    )
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
