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
//!
//! Layout: this file holds the request and report types and the run ([`execute`]: targets, sources, commit,
//! prune); `targets` opens, locks and checks the targets and keeps the ones later sources skip; `source` backs up
//! one source (quiesce, pack, fan out, resume, judge each target's upload); `group` backs up the sources of one
//! quiesce group (`plan::QuiesceGroup`) in one window (hold once, read each, resume once); `commit` writes the
//! manifests and prunes.

mod commit;
mod dump;
mod group;
mod source;

pub use source::read_via;
mod targets;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::archive::{self, ArchiveError, Counts};
use crate::catalog::{
    self, BackupId, ContainerRecord, FailedSource, HookPhase, HookRecord, Manifest, QuiesceAction,
    ReadVia, ServiceRecord, SourceKind, SourceRecord,
};
use crate::config::{Archive, Config, Job, Target};
use crate::crypto::{self, Encryptor};
use crate::docker::Engine;
use crate::hooks;
use crate::lock::TargetLock;
use crate::pipeline::{self, ChunkSink, Leg, LegResult, Pace};
use crate::plan::{self, Plan, PlannedSource};
use crate::progress::Progress;
use crate::prune::{self, PruneReport};
use crate::quiesce::{self, Held, Hold, Journal, Quiescer};
use crate::storage::{self, PutOptions, Storage};

use self::targets::Targets;

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
    /// The container hooks run around this source's read, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookRecord>,
    /// The Swarm services scaled to 0 while this source was read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceRecord>,
    /// How the source was read (`[docker] data-path`); none for a dump, or a source not read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_via: Option<ReadVia>,
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

    /// The run's result for the host hooks (`VOLTAR_RESULT`): `ok` (exit 0), `partial` (something was
    /// committed, not everything, or a source is incomplete) or `failed` (nothing committed).
    pub fn result(&self) -> &'static str {
        if self.exit_code() == 0 {
            "ok"
        } else if self.targets.iter().any(|t| t.committed) {
            "partial"
        } else {
            "failed"
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
    /// The job's `before` host hook failed: the run did not start.
    #[error("{0}; the run was not started and no container was touched (fix the hook, or remove `before` from [hooks])")]
    BeforeHook(String),
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
    /// `--wait`: wait this long for targets another run holds, instead of failing at once; nothing is touched
    /// while waiting (the targets are locked before anything is quiesced).
    pub wait: Option<crate::lock::Wait>,
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
    let mut plan = plan::plan(&discovery, job, only, &plan::probe_path)?;
    if let Some(own) = crate::docker::own_container(&discovery.containers) {
        plan::leave_out_own(&mut plan, own);
    }
    Ok(plan)
}

/// Run one backup job, between its host hooks: `before` first (a failure is fatal, before anything is touched),
/// then `after` (always) and `on-failure` (when the result is not ok), each with the run's result in `VOLTAR_*`
/// variables; their failures are warnings. A dry run runs no hook, an interrupted run no after hook (it stops
/// at once).
pub async fn run(env: &Env<'_>, req: &BackupRequest) -> Result<RunReport, BackupError> {
    if req.targets.is_empty() {
        return Err(BackupError::NoTarget);
    }
    let waited_env;
    let env = match (&env.wait, req.dry_run) {
        (Some(w), false) => {
            // Before anything (hooks, recovery, the plan, the backup's id and time): the run starts when its
            // turn comes, and its clock moves on by the time waited. The targets are locked for real later; one
            // that another run takes meanwhile is waited for there.
            let before = Utc::now();
            match wait_for_targets(env, &req.targets, w).await {
                // Waited it out: the targets still held fail alone when they are taken (all of them: the run).
                Ok(()) | Err(BackupError::Lock(crate::lock::LockError::TimedOut { .. })) => {}
                Err(e) => return Err(e),
            }
            waited_env = Env {
                config: env.config,
                engine: env.engine,
                progress: env.progress.clone(),
                cancel: env.cancel.clone(),
                now: env.now + (Utc::now() - before),
                wait: env.wait,
            };
            &waited_env
        }
        _ => env,
    };
    let started_at = Utc::now();
    let id = BackupId::new(started_at);
    let hooks = &req.job.hooks;
    let vars = |result: Option<(&str, i32)>| {
        let mut v = vec![
            ("VOLTAR_JOB".to_string(), req.job.name.clone()),
            ("VOLTAR_BACKUP_ID".to_string(), id.to_string()),
            (
                "VOLTAR_TARGETS".to_string(),
                req.targets
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ];
        if let Some((result, code)) = result {
            v.push(("VOLTAR_RESULT".to_string(), result.to_string()));
            v.push(("VOLTAR_EXIT_CODE".to_string(), code.to_string()));
        }
        v
    };
    let host_hook = |name: &'static str, cmd: Option<&String>, vars: Vec<(String, String)>| {
        let cmd = cmd.cloned();
        let progress = env.progress.clone();
        async move {
            let cmd = cmd?;
            progress.note(&format!("running the {name} hook"));
            let (outcome, output) = hooks::run_host_hook(name, &cmd, &vars, hooks.timeout).await;
            let said = |o: &str| format!("{name} hook said:\n{o}");
            match outcome {
                hooks::HostHookOutcome::Ok => {
                    if !output.is_empty() {
                        progress.note(&said(&output));
                    }
                    None
                }
                hooks::HostHookOutcome::Failed(why) => {
                    if !output.is_empty() {
                        progress.warn(&said(&output));
                    }
                    Some(why)
                }
            }
        }
    };
    if req.dry_run {
        return run_unhooked(env, req, started_at, id.clone()).await;
    }
    if let Some(why) = host_hook("before", hooks.before.as_ref(), vars(None)).await {
        if let Some(w) = host_hook(
            "on-failure",
            hooks.on_failure.as_ref(),
            vars(Some(("failed", 2))),
        )
        .await
        {
            env.progress.warn(&w);
        }
        return Err(BackupError::BeforeHook(why));
    }
    let result = run_unhooked(env, req, started_at, id.clone()).await;
    let (outcome, code) = match &result {
        Err(BackupError::Cancelled) => return result,
        Err(_) => ("failed", 2),
        Ok(r) => (r.result(), r.exit_code()),
    };
    let mut warnings = Vec::new();
    warnings.extend(host_hook("after", hooks.after.as_ref(), vars(Some((outcome, code)))).await);
    if outcome != "ok" {
        warnings.extend(
            host_hook(
                "on-failure",
                hooks.on_failure.as_ref(),
                vars(Some((outcome, code))),
            )
            .await,
        );
    }
    for w in &warnings {
        env.progress.warn(w);
    }
    result.map(|mut r| {
        r.notes.extend(warnings);
        r
    })
}

/// What the manifest and the reports say about a service a hold scaled to 0 and its release scaled back (or not).
pub fn service_record(s: &quiesce::ReleasedService) -> ServiceRecord {
    let (scaled_back, not_back) = match s.outcome {
        quiesce::ServiceOutcome::ScaledBack => (true, None),
        quiesce::ServiceOutcome::LeftAlone(now) => (
            false,
            Some(format!(
                "its replica count was changed to {now} meanwhile: left alone"
            )),
        ),
        quiesce::ServiceOutcome::Gone => (false, Some("removed meanwhile".to_string())),
    };
    ServiceRecord {
        id: s.id.clone(),
        name: s.name.clone(),
        replicas: s.replicas,
        scaled_to: 0,
        downtime_ms: u64::try_from(s.downtime.as_millis()).unwrap_or(u64::MAX),
        scaled_back,
        not_back,
    }
}

/// `--wait`: until no target of `targets` is held by another run, saying who is waited for.
async fn wait_for_targets(
    env: &Env<'_>,
    targets: &[Target],
    w: &crate::lock::Wait,
) -> Result<(), BackupError> {
    crate::lock::wait_free(&env.config.state_dir, targets, Some(w), &env.cancel, |h| {
        env.progress.waiting(&h.waiting_line())
    })
    .await
    .map_err(|e| match e {
        crate::lock::LockError::Interrupted { .. } => BackupError::Cancelled,
        e => BackupError::Lock(e),
    })
}

/// The run itself: recover what a killed run left, plan, back up.
async fn run_unhooked(
    env: &Env<'_>,
    req: &BackupRequest,
    started_at: DateTime<Utc>,
    id: BackupId,
) -> Result<RunReport, BackupError> {
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
    execute_as(env, req, plan, started_at, recovered, id).await
}

/// What every source of one run shares: the surroundings, the quiescer, the backup id, the targets (with the ones
/// later sources skip), where spool files go and the settings of the read.
struct RunCtx<'r> {
    env: &'r Env<'r>,
    quiescer: Quiescer<'r>,
    id: BackupId,
    targets: Targets,
    spool_dir: PathBuf,
    max_downtime: Duration,
    archive: &'r Archive,
    encryptor: Option<Encryptor>,
    /// Container id → journal entry of the post-backup hook its pre hook obliges (done once the post hook ran).
    owed_post_hooks: std::sync::Mutex<BTreeMap<String, u64>>,
}

/// Back up an already-made plan (restore's safety backup uses this with the containers already stopped).
///
/// The run, in order: clean up leftover spool files, open and lock every target, check them (before anything is
/// quiesced), back up each source ([`source`]), commit a manifest per target ([`commit`]), prune the committed
/// targets, then let go of the target locks.
/// Open, lock and check `targets` as a run does before it touches anything, then let them go: a restore checks
/// where its safety backup goes before it stops anyone. `Err` when none is usable (the message names why).
pub async fn check_targets(env: &Env<'_>, targets: &[Target]) -> Result<(), BackupError> {
    let mut rows = Vec::new();
    let mut opened = Targets::open(env, targets, &mut rows).await?;
    opened.check(env, targets, &mut rows).await
}

pub async fn execute(
    env: &Env<'_>,
    req: &BackupRequest,
    plan: Plan,
    started_at: DateTime<Utc>,
    recovered: Vec<String>,
) -> Result<RunReport, BackupError> {
    let id = BackupId::new(started_at);
    execute_as(env, req, plan, started_at, recovered, id).await
}

/// [`execute`] under a backup id chosen before (the host hooks are told it).
async fn execute_as(
    env: &Env<'_>,
    req: &BackupRequest,
    plan: Plan,
    started_at: DateTime<Utc>,
    recovered: Vec<String>,
    id: BackupId,
) -> Result<RunReport, BackupError> {
    let mut report = RunReport::new(req, &plan, started_at, recovered, id);
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

    // In a hardened container a missing capability would otherwise show only as "permission denied" per file.
    report.notes.extend(crate::caps::backup_warning());
    let spool_dir = env.config.spool_dir();
    sweep_spool(env, &spool_dir, &mut report.notes);
    let mut targets = Targets::open(env, &req.targets, &mut report.targets).await?;
    targets
        .check(env, &req.targets, &mut report.targets)
        .await?;

    let encryptor = Encryptor::from_config(&env.config.encryption)?;
    let journal = Journal::open(&env.config.state_dir)?;
    let mut ctx = RunCtx {
        env,
        quiescer: Quiescer::new(env.engine, &journal).cancel_on(env.cancel.clone()),
        id: report.id.clone(),
        targets,
        spool_dir,
        max_downtime: req.job.quiesce.max_downtime,
        archive: &env.config.archive,
        encryptor,
        owed_post_hooks: Default::default(),
    };
    let mut in_windows = BTreeSet::new();
    for src in &plan.sources {
        if env.cancel.is_cancelled() {
            break;
        }
        if in_windows.contains(&src.name) {
            continue;
        }
        // The first source of a quiesce group brings the whole group: one window for all of them.
        let reports = match plan.window_of(&src.name) {
            Some(g) => {
                let members: Vec<&PlannedSource> = plan
                    .sources
                    .iter()
                    .filter(|s| g.sources.contains(&s.name))
                    .collect();
                in_windows.extend(members.iter().map(|s| s.name.clone()));
                group::back_up_group(&ctx, g, &members).await
            }
            None => vec![source::back_up_source(&ctx, src).await],
        };
        for r in reports {
            ctx.targets.skip_failed_by(&r);
            report.sources.push(r);
        }
    }
    if env.cancel.is_cancelled() {
        // Nothing is committed after an interrupt: the run is not a backup.
        env.progress.finish();
        return Err(BackupError::Cancelled);
    }

    let committed = commit::commit(&ctx, req, &mut report).await?;
    if req.job.prune {
        commit::prune(&ctx, req, &committed, &mut report).await;
    }
    // Lets go of the target locks.
    drop(ctx);
    report.finished_at = Utc::now();
    env.progress.finish();
    Ok(report)
}

impl RunReport {
    /// The report of a run that has not started: no source, no target yet.
    fn new(
        req: &BackupRequest,
        plan: &Plan,
        started_at: DateTime<Utc>,
        recovered: Vec<String>,
        id: BackupId,
    ) -> RunReport {
        RunReport {
            id,
            job: req.job.name.clone(),
            started_at,
            finished_at: started_at,
            dry_run: req.dry_run,
            plan: plan.clone(),
            sources: vec![],
            targets: vec![],
            recovered,
            notes: vec![],
        }
    }
}

/// Remove the spool files a killed run left behind (a live run's are unlinked at once, see
/// `pipeline::SPOOL_PREFIX`).
fn sweep_spool(env: &Env<'_>, spool_dir: &Path, notes: &mut Vec<String>) {
    match pipeline::sweep_spool(spool_dir) {
        Ok(gone) if !gone.is_empty() => notes.push(format!(
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
}
