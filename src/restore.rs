//! `voltar restore`: put a volume (or a directory, or some paths) back from a backup, safely.
//!
//! Order of events, per source (architecture.md, acceptance rows 11 and 12):
//!
//! 1. Show the plan; `--dry-run` stops here (it lists the files that would be removed).
//! 2. Check each source's archive before anything is stopped: the object is in the target with the size the
//!    manifest recorded, and an encrypted one opens with the given keys. A source that fails this is reported
//!    failed and nothing is done for it. Leftovers of killed runs (journaled staging directories, containers
//!    left stopped) are recovered first.
//! 3. Stop the running containers that mount the target volume (journaled, like backup's quiesce; each with its
//!    `voltar.stop-timeout` label, else the configured stop-timeout).
//! 4. Take a safety backup of the current contents into the same target, tagged `pre-restore`
//!    (`--no-safety-backup` skips it).
//! 5. Extract into a staging directory on the same filesystem (a sibling of the volume's `_data`, journaled
//!    before it is created so that `voltar recover` or the next run removes it after a kill), checking the
//!    stored object's sha256 and the archive's counts against the manifest *while* streaming. Decryption and
//!    zstd checksums are verified to the last byte before anything is swapped in.
//! 6. Swap the staging tree in with one atomic `renameat2(RENAME_EXCHANGE)`, so the volume ends up exactly
//!    equal to the backup (no stale files), then delete the old tree.
//! 7. Start exactly the containers that were running.
//!
//! Any failure before step 6 leaves the live data byte-identical and the containers as they were found.
//! The unpacker (`archive::unpack`) refuses entries that would write outside the staging directory.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::archive::unpack::{UnpackOptions, UnpackReport};
use crate::archive::{self, Counts};
use crate::backup::{self, BackupRequest};
use crate::catalog::{self, Manifest, QuiesceAction, SourceKind, SourceRecord, TAG_PRE_RESTORE};
use crate::config::{Config, Target};
use crate::crypto::Decryptor;
use crate::docker::{ContainerState, Engine};
use crate::pipeline;
use crate::plan::{PlannedContainer, PlannedSource};
use crate::progress::Progress;
use crate::quiesce::{self, Hold, Journal, Leftover, Quiescer, STAGING_PREFIX};
use crate::readback::{self, Entries, ReadBack, WalkError, Walked};
pub use crate::readback::{count_diff, ProgressReader, RestoreError};
use crate::storage::{ObjectMeta, Storage};

/// `voltar restore`: what to restore from, which sources, where to, and how.
#[derive(Clone, Debug, Default)]
pub struct RestoreRequest {
    /// The target holding the backup (`None` with `archive`).
    pub target: Option<Target>,
    /// Backup id or `latest` (`None` with `archive`).
    pub backup: Option<String>,
    /// With `latest`: the newest backup taken at or before this time.
    pub before: Option<DateTime<Utc>>,
    /// Only these sources of the backup (default: all).
    pub sources: Vec<String>,
    /// Restore into a new volume (created with the original driver, options and labels).
    pub to_volume: Option<String>,
    /// Restore into a directory on the host.
    pub to_dir: Option<PathBuf>,
    /// Restore only these files or directories (relative to the volume root).
    pub paths: Vec<PathBuf>,
    /// Plan only: say what would happen (including files that would be removed).
    pub dry_run: bool,
    /// Do not take a safety backup of the current contents first.
    pub no_safety_backup: bool,
    /// Allow a non-empty `to_dir` (its contents are replaced).
    pub force: bool,
    /// Import this plain archive made by other tools instead of a voltar backup.
    pub archive: Option<PathBuf>,
    /// With `archive`: drop N leading path components.
    pub strip_components: usize,
    pub job: Option<String>,
    pub identities: Vec<PathBuf>,
    pub passphrase_file: Option<PathBuf>,
}

/// What `restore` did, or (dry run) would do.
#[derive(Clone, Debug)]
pub enum RestoreOutcome {
    Report(RestoreReport),
    /// `--archive` with `--dry-run`: the file and where it would go.
    ImportPlan {
        file: PathBuf,
        destination: Destination,
    },
}

/// How one source's restore ended. Serialized (and shown) as `ok`, `dry-run` or `failed: <why>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreStatus {
    Ok,
    DryRun,
    Failed(String),
}

impl std::fmt::Display for RestoreStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreStatus::Ok => f.write_str("ok"),
            RestoreStatus::DryRun => f.write_str("dry-run"),
            RestoreStatus::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

impl Serialize for RestoreStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where one source goes.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "name")]
pub enum Destination {
    Volume(String),
    Dir(PathBuf),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Volume(v) => write!(f, "volume {v}"),
            Destination::Dir(d) => write!(f, "directory {}", d.display()),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SourceRestore {
    pub source: String,
    pub destination: Destination,
    /// Host path whose contents are replaced.
    pub path: PathBuf,
    pub create_volume: bool,
    pub stop: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_remove: Option<Vec<String>>,
    pub counts: Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety_backup: Option<String>,
    pub restarted: Vec<String>,
    pub warnings: Vec<String>,
    pub status: RestoreStatus,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RestoreReport {
    pub backup: Option<String>,
    pub dry_run: bool,
    pub sources: Vec<SourceRestore>,
    /// What was put right before starting: containers left stopped and staging directories left behind by
    /// interrupted runs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<String>,
}

impl RestoreReport {
    /// True when no source failed.
    pub fn ok(&self) -> bool {
        !self
            .sources
            .iter()
            .any(|s| matches!(s.status, RestoreStatus::Failed(_)))
    }
}

/// Parse `--before`: RFC 3339, a local date/time, or an age (`2d`, `12h`).
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"] {
        if let Ok(n) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return local_to_utc(n, s);
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return local_to_utc(d.and_hms_opt(23, 59, 59).expect("valid"), s);
    }
    if let Ok(d) = crate::config::parse_duration(s) {
        return Ok(now - chrono::Duration::from_std(d)?);
    }
    bail!("--before `{s}`: not a time (use 2026-11-28T03:00:00Z, \"2026-11-28 03:00\", 2026-11-28 or an age like 2d)")
}

fn local_to_utc(n: chrono::NaiveDateTime, s: &str) -> Result<DateTime<Utc>> {
    use chrono::TimeZone;
    chrono::Local
        .from_local_datetime(&n)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| anyhow!("--before `{s}` does not exist in the local time zone"))
}

/// Sources of `m`'s job that `m` does not hold, each with the newest backup that does (older than `m`).
fn newer_elsewhere(listing: &catalog::Listing, m: &Manifest) -> Vec<(String, catalog::BackupId)> {
    let mut out: Vec<(String, catalog::BackupId)> = Vec::new();
    for other in listing.backups.iter().rev() {
        if other.job != m.job || other.is_pre_restore() {
            continue;
        }
        for s in &other.sources {
            if m.source(&s.name).is_none() && !out.iter().any(|(n, _)| *n == s.name) {
                out.push((s.name.clone(), other.id.clone()));
            }
        }
    }
    out
}

/// Normalize `--path` arguments: relative, no `..`.
fn clean_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    paths
        .iter()
        .map(|p| {
            let mut out = PathBuf::new();
            for c in p.components() {
                match c {
                    Component::Normal(x) => out.push(x),
                    Component::CurDir | Component::RootDir => {}
                    Component::ParentDir | Component::Prefix(_) => {
                        bail!("--path {}: `..` is not allowed", p.display())
                    }
                }
            }
            if out.as_os_str().is_empty() {
                bail!(
                    "--path {}: names the whole volume; leave --path out instead",
                    p.display()
                );
            }
            Ok(out)
        })
        .collect()
}

/// Restore (or, with `dry_run`, plan) what `args` asks for. Per-source failures are in the report; `Err` is a
/// fatal or usage error.
/// Restore (or, with `dry_run`, plan) what `args` asks for. Per-source failures are in the report; `Err` is a
/// fatal or usage error.
pub async fn run(
    config: &Config,
    args: RestoreRequest,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<RestoreOutcome> {
    if args.archive.is_some() {
        return import(config, args, progress).await;
    }
    let (plan, resources) = plan(config, &args, &progress).await?;
    let report = if args.dry_run {
        dry_run(&plan, &resources).await?
    } else {
        apply(config, &args, plan, resources, progress, cancel).await?
    };
    Ok(RestoreOutcome::Report(report))
}

/// What a restore will do, worked out before anything is stopped: the backup and, per source, where it goes and
/// which containers are stopped. `--dry-run` reports it ([`RestorePlan::dry_run_report`]); [`apply`] carries it
/// out.
#[derive(Clone, Debug)]
pub struct RestorePlan {
    pub manifest: Manifest,
    pub sources: Vec<SourcePlan>,
    /// `--path` arguments, cleaned (empty: whole volumes).
    pub paths: Vec<PathBuf>,
    /// What was put right before planning (not on a dry run): leftovers of interrupted runs.
    pub recovered: Vec<String>,
}

/// One source of a [`RestorePlan`].
#[derive(Clone, Debug)]
pub struct SourcePlan {
    pub source: SourceRecord,
    pub destination: Destination,
    /// Host path whose contents are replaced (empty while the volume is still to be created).
    pub path: PathBuf,
    pub create_volume: bool,
    /// Containers that use the destination; those to stop have [`QuiesceAction::Stop`].
    pub users: Vec<PlannedContainer>,
}

impl SourcePlan {
    /// Names of the containers stopped (and restarted) for this source.
    pub fn stops(&self) -> Vec<String> {
        self.users
            .iter()
            .filter(|u| u.action == QuiesceAction::Stop)
            .map(|u| u.name.clone())
            .collect()
    }
}

impl RestorePlan {
    /// The report of a dry run. `would_remove[i]`: the entries at source `i`'s destination now that the backup
    /// does not hold.
    pub fn dry_run_report(&self, would_remove: Vec<Vec<String>>) -> RestoreReport {
        RestoreReport {
            backup: Some(self.manifest.id.to_string()),
            dry_run: true,
            sources: self
                .sources
                .iter()
                .zip(would_remove)
                .map(|(sp, would_remove)| SourceRestore {
                    source: sp.source.name.clone(),
                    destination: sp.destination.clone(),
                    path: sp.path.clone(),
                    create_volume: sp.create_volume,
                    stop: sp.stops(),
                    would_remove: Some(would_remove),
                    counts: sp.source.counts.clone(),
                    safety_backup: None,
                    restarted: vec![],
                    warnings: vec![],
                    status: RestoreStatus::DryRun,
                })
                .collect(),
            recovered: self.recovered.clone(),
        }
    }
}

/// What a plan is applied with: the opened target, the keys, the engine.
pub struct Resources {
    store: Arc<dyn Storage>,
    target: Target,
    decryptor: Arc<Decryptor>,
    engine: Engine,
}

/// Resolve the backup, check the keys, pick the sources and work out destinations and the containers to stop.
/// Nothing is stopped or written; except on a dry run, leftovers of interrupted runs are recovered first (so that
/// the containers are seen as they should be).
pub async fn plan(
    config: &Config,
    args: &RestoreRequest,
    progress: &Progress,
) -> Result<(RestorePlan, Resources)> {
    let (Some(target), Some(spec)) = (args.target.clone(), args.backup.clone()) else {
        bail!("which backup? give a backup id or `latest` (see `voltar list`), or --archive FILE");
    };
    let before = args.before;
    let store = crate::storage::open(&target)
        .await
        .with_context(|| format!("opening target {}", target.name))?;
    let listing = catalog::list(store.as_ref()).await?;
    let manifest = catalog::resolve(&listing, &spec, before, &args.sources)?.clone();
    if spec == "latest" && args.sources.is_empty() {
        // A partial run (`backup --only`) makes a `latest` that lacks some sources: say where they are.
        for (name, id) in newer_elsewhere(&listing, &manifest) {
            tracing::warn!(
                "backup {} does not hold {name}; its newest backup is {id} (restore it with --source {name})",
                manifest.id
            );
        }
    }
    let decryptor = Arc::new(Decryptor::load(
        &args.identities,
        args.passphrase_file.as_deref(),
    )?);
    if manifest.encryption.is_some() {
        if decryptor.is_empty() {
            return Err(crate::crypto::CryptoError::NeedKey {
                what: manifest.id.to_string(),
            }
            .into());
        }
        decryptor.check_seal(&manifest)?;
    }
    let chosen: Vec<SourceRecord> = if args.sources.is_empty() {
        manifest.sources.clone()
    } else {
        args.sources
            .iter()
            .map(|n| {
                manifest.source(n).cloned().ok_or_else(|| {
                    let failed = manifest.failed.iter().find(|f| &f.name == n);
                    match failed {
                        Some(f) => {
                            anyhow!("source `{n}` failed in backup {}: {}", manifest.id, f.error)
                        }
                        None => anyhow!(
                            "backup {} has no source `{n}` (it has: {})",
                            manifest.id,
                            manifest
                                .sources
                                .iter()
                                .map(|s| s.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }
                })
            })
            .collect::<Result<_>>()?
    };
    if chosen.len() > 1 && args.to_volume.is_some() {
        bail!("--to-volume takes one source; pick it with --source NAME");
    }
    let paths = clean_paths(&args.paths)?;
    let engine = Engine::connect(config.docker_host.as_deref()).await?;
    let mut recovered = Vec::new();
    if !args.dry_run {
        // Put back what a killed run left (stopped containers, staging directories) before looking around.
        recovered = quiesce::recover(&config.state_dir, &engine).await?.lines();
        for line in &recovered {
            progress.warn(&format!("recovered from an interrupted run: {line}"));
        }
    }

    // Work out destinations and the containers to stop.
    let mut discovery = engine.discover().await?;
    // A container another voltar run holds (paused for its backup) is running for its user: stop it like one,
    // after that run lets go of it.
    quiesce::see_through_other_runs(&config.state_dir, &mut discovery.containers);
    let mut plans = Vec::new();
    for src in &chosen {
        let (destination, path, create_volume) = match (&args.to_volume, &args.to_dir) {
            (Some(v), _) => {
                if engine.inspect_volume(v).await.is_ok() {
                    bail!("volume {v} already exists: pick a new name for --to-volume, or restore into it with `--source` and no --to-volume when it is the original");
                }
                (Destination::Volume(v.clone()), PathBuf::new(), true)
            }
            (None, Some(d)) => {
                let p = if chosen.len() > 1 {
                    d.join(&src.name)
                } else {
                    d.clone()
                };
                (Destination::Dir(p.clone()), p, false)
            }
            (None, None) => match src.kind {
                SourceKind::Volume => match engine.inspect_volume(&src.name).await {
                    Ok(v) => (Destination::Volume(src.name.clone()), v.mountpoint, false),
                    Err(crate::docker::DockerError::NoSuchVolume(_)) => {
                        (Destination::Volume(src.name.clone()), PathBuf::new(), true)
                    }
                    Err(e) => return Err(e.into()),
                },
                SourceKind::Bind => (
                    Destination::Dir(PathBuf::from(&src.path)),
                    PathBuf::from(&src.path),
                    false,
                ),
            },
        };
        // Containers using the destination.
        let mut users: Vec<PlannedContainer> = Vec::new();
        for c in &discovery.containers {
            let uses = c.mounts.iter().any(|m| match &destination {
                Destination::Volume(v) => m.name.as_deref() == Some(v.as_str()),
                Destination::Dir(d) => {
                    !d.as_os_str().is_empty() && (m.source == *d || m.source.starts_with(d))
                }
            });
            if !uses {
                continue;
            }
            if let Some(svc) = c.swarm_service() {
                bail!("{destination} is used by swarm service {svc} (task {}): scale it to 0 first (`docker service scale {svc}=0`), restore, then scale it back", c.name);
            }
            if c.state == ContainerState::Paused {
                bail!(
                    "container {} uses {destination} and is paused: unpause or stop it first",
                    c.name
                );
            }
            let running = matches!(
                c.state,
                ContainerState::Running | ContainerState::Restarting
            );
            users.push(PlannedContainer {
                id: c.id.clone(),
                name: c.name.clone(),
                compose_project: c.compose_project().map(String::from),
                compose_service: c.compose_service().map(String::from),
                state: c.state.to_string(),
                rw: true,
                action: if running {
                    QuiesceAction::Stop
                } else {
                    QuiesceAction::None
                },
                // As backup does: the container's own label first, then the job's setting.
                stop_timeout: c
                    .labels
                    .get(crate::plan::LABEL_STOP_TIMEOUT)
                    .and_then(|t| crate::config::parse_duration(t).ok())
                    .unwrap_or_else(|| {
                        config
                            .job(args.job.as_deref())
                            .map(|j| j.quiesce.stop_timeout)
                            .unwrap_or(crate::config::Quiesce::default().stop_timeout)
                    }),
                reason: if running {
                    "uses the restore target".into()
                } else {
                    "not running".into()
                },
            });
        }
        if let Destination::Dir(d) = &destination {
            if args.to_dir.is_some() && !args.force && dir_has_entries(d) && paths.is_empty() {
                bail!(
                    "{} is not empty: its contents would be replaced; pass --force to allow it",
                    d.display()
                );
            }
        }
        plans.push(SourcePlan {
            source: src.clone(),
            destination,
            path,
            create_volume,
            users,
        });
    }
    let plan = RestorePlan {
        manifest,
        sources: plans,
        paths,
        recovered,
    };
    let resources = Resources {
        store,
        target,
        decryptor,
        engine,
    };
    Ok((plan, resources))
}

/// `--dry-run`: the plan, with what each destination holds now that the backup does not.
async fn dry_run(plan: &RestorePlan, res: &Resources) -> Result<RestoreReport> {
    let mut would_remove = Vec::new();
    for sp in &plan.sources {
        let archive_names = list_archive(
            res.store.clone(),
            &plan.manifest,
            &sp.source,
            res.decryptor.clone(),
        )
        .await?;
        would_remove.push(
            if sp.path.as_os_str().is_empty() || !plan.paths.is_empty() {
                vec![]
            } else {
                current_names(&sp.path)
                    .difference(&archive_names)
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect()
            },
        );
    }
    Ok(plan.dry_run_report(would_remove))
}

/// Carry out a plan: check every archive, then per source stop its users, take the safety backup, extract,
/// verify, swap in and restart them.
pub async fn apply(
    config: &Config,
    args: &RestoreRequest,
    plan: RestorePlan,
    res: Resources,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<RestoreReport> {
    let Resources {
        store,
        target,
        decryptor,
        engine,
    } = res;
    let RestorePlan {
        manifest,
        sources: plans,
        paths,
        recovered,
    } = plan;
    let mut report = RestoreReport {
        backup: Some(manifest.id.to_string()),
        dry_run: false,
        sources: vec![],
        recovered,
    };
    // Check every archive before anything is stopped (the full sha256 and counts are checked while extracting).
    let objects = store
        .list(&format!("{}/", manifest.id))
        .await
        .with_context(|| format!("listing backup {}", manifest.id))?;
    let mut checks = Vec::new();
    for sp in &plans {
        checks.push(check_archive(&store, &objects, &manifest, &sp.source, &decryptor).await);
    }

    let journal = Journal::open(&config.state_dir)?;
    let quiescer = Quiescer::new(&engine, &journal).cancel_on(cancel.clone());
    for (sp, check) in plans.into_iter().zip(checks) {
        let stop = sp.stops();
        let SourcePlan {
            source: src,
            destination,
            mut path,
            create_volume,
            users,
        } = sp;
        if cancel.is_cancelled() {
            bail!("interrupted");
        }
        if let Err(e) = check {
            report.sources.push(SourceRestore {
                source: src.name.clone(),
                destination: destination.clone(),
                path: path.clone(),
                // Not created: nothing was done for this source.
                create_volume: false,
                stop: vec![],
                would_remove: None,
                counts: Counts::default(),
                safety_backup: None,
                restarted: vec![],
                warnings: vec![],
                status: RestoreStatus::Failed(crate::error_chain(&e)),
            });
            continue;
        }
        progress.phase(&format!("restore {} -> {destination}", src.name));
        let mut sr = SourceRestore {
            source: src.name.clone(),
            destination: destination.clone(),
            path: path.clone(),
            create_volume,
            stop,
            would_remove: None,
            counts: Counts::default(),
            safety_backup: None,
            restarted: vec![],
            warnings: vec![],
            status: RestoreStatus::Failed("not restored".into()),
        };
        if create_volume {
            let Destination::Volume(name) = &destination else {
                unreachable!("only volumes are created")
            };
            let v = engine
                .create_volume(
                    name,
                    src.driver.as_deref().unwrap_or("local"),
                    &src.driver_opts,
                    &src.labels,
                )
                .await?;
            path = v.mountpoint;
            sr.path = path.clone();
        }
        if let Destination::Dir(d) = &destination {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }

        // Stop the users (journaled; `release` restarts them on every path below).
        let holds: Vec<Hold> = users
            .iter()
            .filter(|u| u.action == QuiesceAction::Stop)
            .map(|u| Hold {
                id: u.id.clone(),
                name: u.name.clone(),
                action: QuiesceAction::Stop,
                stop_timeout: u.stop_timeout,
            })
            .collect();
        let held = quiescer.hold(&holds).await?;
        let result = restore_one(
            config,
            args,
            &store,
            &target,
            &manifest,
            &src,
            &path,
            &paths,
            create_volume,
            decryptor.clone(),
            &progress,
            &cancel,
            &mut sr,
            &engine,
            &journal,
        )
        .await;
        let released = quiescer.release(held).await;
        sr.restarted = released.released.iter().map(|c| c.name.clone()).collect();
        sr.warnings
            .extend(released.errors.iter().map(|e| e.to_string()));
        match result {
            Ok(()) => sr.status = RestoreStatus::Ok,
            Err(e) => {
                sr.status = RestoreStatus::Failed(crate::error_chain(&e));
                if create_volume {
                    // Do not leave a half-made new volume behind.
                    if let Destination::Volume(v) = &destination {
                        let _ = engine.remove_volume(v).await;
                    }
                }
            }
        }
        report.sources.push(sr);
    }
    progress.finish();
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn restore_one(
    config: &Config,
    args: &RestoreRequest,
    store: &Arc<dyn Storage>,
    target: &crate::config::Target,
    manifest: &Manifest,
    src: &SourceRecord,
    path: &Path,
    paths: &[PathBuf],
    fresh: bool,
    decryptor: Arc<Decryptor>,
    progress: &Progress,
    cancel: &CancellationToken,
    sr: &mut SourceRestore,
    engine: &Engine,
    journal: &Journal,
) -> Result<()> {
    // Safety copy of what is there now.
    if !fresh && !args.no_safety_backup && dir_has_entries(path) {
        progress.note("safety backup of the current contents");
        let job = config
            .job(args.job.as_deref())
            .cloned()
            .unwrap_or_else(|_| config.jobs.values().next().cloned().expect("a job"));
        let mut job = job;
        job.prune = false;
        // Same job as the backup it protects, so that job's pruning applies the pre-restore rule to it.
        job.name = manifest.job.clone();
        let req = BackupRequest {
            job,
            targets: vec![target.clone()],
            only: vec![],
            dry_run: false,
            tags: vec![TAG_PRE_RESTORE.into()],
        };
        let plan = crate::plan::Plan {
            sources: vec![PlannedSource {
                name: src.name.clone(),
                kind: src.kind,
                path: path.to_path_buf(),
                driver: src.driver.clone(),
                driver_opts: src.driver_opts.clone(),
                labels: src.labels.clone(),
                containers: vec![],
                reason: "safety backup before restore".into(),
            }],
            skipped: vec![],
        };
        let env = backup::Env {
            config,
            engine,
            progress: progress.clone(),
            cancel: cancel.clone(),
            now: Utc::now(),
        };
        let run = backup::execute(&env, &req, plan, Utc::now(), vec![]).await?;
        if run.exit_code() != 0 {
            let why = run
                .sources
                .first()
                .and_then(|s| s.error.clone())
                .or_else(|| run.targets.first().and_then(|t| t.error.clone()))
                .unwrap_or_else(|| "unknown error".into());
            bail!("safety backup failed, nothing was changed: {why} (use --no-safety-backup to restore without one)");
        }
        sr.safety_backup = Some(run.id.to_string());
    }

    let staging = Staging::make(path, journal)?;
    let result = async {
        progress.note("extracting and verifying");
        let opts = UnpackOptions {
            paths: paths.to_vec(),
            ..UnpackOptions::default()
        };
        let rep = fetch_and_unpack(
            store.clone(),
            manifest,
            src,
            decryptor,
            staging.path.clone(),
            opts,
            progress.clone(),
        )
        .await?;
        sr.counts = rep.counts.clone();
        sr.warnings.extend(rep.warnings.iter().cloned());
        if cancel.is_cancelled() {
            bail!("interrupted before the swap: nothing was changed");
        }
        progress.note("swapping in");
        if paths.is_empty() {
            exchange(&staging.path, path)?;
        } else {
            for p in paths {
                swap_path_in(&staging.path, path, p)?;
            }
        }
        Ok(())
    }
    .await;
    // After a successful exchange, `staging` holds the old contents; after a failure, the partial extraction.
    if let Err(e) = staging.remove(journal) {
        sr.warnings.push(e);
    }
    result
}

/// A staging directory beside a destination (same filesystem, so swapping it in is a rename), journaled before
/// it is created: a restore killed while it exists leaves a journal entry that `voltar recover` (and the next
/// backup or restore) acts on by removing it.
struct Staging {
    /// Absolute (the journal is read from any working directory).
    path: PathBuf,
    seq: u64,
}

impl Staging {
    fn make(path: &Path, journal: &Journal) -> Result<Staging> {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let parent = std::fs::canonicalize(parent)
            .with_context(|| format!("resolving {}", parent.display()))?;
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = parent.join(format!(
            "{STAGING_PREFIX}{base}-{:08x}",
            rand::random::<u32>()
        ));
        let seq = journal.will_create(&Leftover::StagingDir {
            path: staging.clone(),
        })?;
        if let Err(e) = std::fs::create_dir(&staging) {
            journal.removed(seq);
            return Err(anyhow!(e))
                .with_context(|| format!("creating staging directory {}", staging.display()));
        }
        Ok(Staging { path: staging, seq })
    }

    /// Remove the directory and everything in it; the journal entry is closed only once it is gone. The error
    /// is a warning for the report: the journal keeps the entry, so recover removes it later.
    fn remove(self, journal: &Journal) -> Result<(), String> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "cannot remove staging directory {}: {e} (`voltar recover` removes it later)",
                    self.path.display()
                ))
            }
        }
        journal.removed(self.seq);
        Ok(())
    }
}

/// Before anything is stopped: `src`'s object is in the target (`objects`, the listing of the backup's prefix)
/// with the size the manifest recorded, and an encrypted one opens with the keys given. The sha256, the counts
/// and the decryption of the whole stream are checked while extracting, before the swap.
async fn check_archive(
    store: &Arc<dyn Storage>,
    objects: &[ObjectMeta],
    manifest: &Manifest,
    src: &SourceRecord,
    decryptor: &Arc<Decryptor>,
) -> Result<()> {
    let key = catalog::object_key(&manifest.id, &src.object);
    let untouched = "nothing was stopped or changed";
    match objects.iter().find(|o| o.key == key) {
        None => bail!(
            "{key} is missing from {}: this source cannot be restored from backup {} ({untouched})",
            store.describe(),
            manifest.id
        ),
        Some(o) if o.size != src.stored_bytes => bail!(
            "{key} holds {} bytes, but the manifest recorded {}: the archive is truncated or was replaced ({untouched})",
            o.size,
            src.stored_bytes
        ),
        Some(_) => {}
    }
    if manifest.encryption.is_some() {
        // The age header only: the keys must unwrap its file key.
        let stream = store
            .get(&key)
            .await
            .with_context(|| format!("reading {key} ({untouched})"))?;
        let reader = pipeline::blocking_reader(stream);
        let d = decryptor.clone();
        let k = key.clone();
        tokio::task::spawn_blocking(move || d.reader(reader, &k).map(|_| ()))
            .await?
            .with_context(|| untouched.to_string())?;
    }
    Ok(())
}

/// Put `--path` `p` from `staging` in place under `path`: swapped with what is there (which ends up in staging), or
/// moved in. Both sides are reached one component at a time relative to directory descriptors, never through a
/// symlink, so a path of any length works (longer than PATH_MAX too).
fn swap_path_in(staging: &Path, path: &Path, p: &Path) -> Result<()> {
    use crate::archive::unpack::{exists_at, open_dir_beneath};
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let not_in_backup = || anyhow!("--path {}: not in the backup", p.display());
    let name = p.file_name().ok_or_else(not_in_backup)?;
    let parent = p.parent().unwrap_or(Path::new(""));
    let from_dir = open_dir_beneath(staging, parent, false).map_err(|_| not_in_backup())?;
    if !exists_at(from_dir.as_raw_fd(), name).unwrap_or(false) {
        return Err(not_in_backup());
    }
    let to_dir = open_dir_beneath(path, parent, true).with_context(|| {
        format!(
            "--path {}: opening its directory in {}",
            p.display(),
            path.display()
        )
    })?;
    let replace = exists_at(to_dir.as_raw_fd(), name)
        .with_context(|| format!("--path {}: looking at {}", p.display(), path.display()))?;
    let c = CString::new(name.as_bytes())?;
    // SAFETY: valid descriptors and NUL-terminated names.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            from_dir.as_raw_fd(),
            c.as_ptr(),
            to_dir.as_raw_fd(),
            c.as_ptr(),
            if replace {
                libc::RENAME_EXCHANGE
            } else {
                libc::RENAME_NOREPLACE
            },
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!(
            "--path {}: moving it into {}: {e} (the filesystem must support renameat2)",
            p.display(),
            path.display()
        );
    }
    Ok(())
}

/// Atomically swap two paths on one filesystem (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated paths; AT_FDCWD.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!(
            "swapping {} into {}: {e} (the filesystem must support renameat2 RENAME_EXCHANGE)",
            a.display(),
            b.display()
        );
    }
    Ok(())
}

fn dir_has_entries(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

fn current_names(root: &Path) -> BTreeSet<PathBuf> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.path().strip_prefix(root).ok().map(Path::to_path_buf))
        .collect()
}

/// Stream one source's object from storage, verify it against the manifest and unpack it into `dest`.
/// Verification (sha256, size, decryption, zstd checksum, counts) completes before this returns Ok.
pub async fn fetch_and_unpack(
    store: Arc<dyn Storage>,
    manifest: &Manifest,
    src: &SourceRecord,
    decryptor: Arc<Decryptor>,
    dest: PathBuf,
    opts: UnpackOptions,
    progress: Progress,
) -> Result<UnpackReport> {
    let partial = !opts.paths.is_empty();
    let rb = readback::read(
        store,
        manifest,
        src,
        decryptor,
        Entries::Unpack { dest, opts },
        false,
        progress,
    )
    .await
    .with_context(|| format!("reading {}", catalog::object_key(&manifest.id, &src.object)))?;
    let Walked::Unpacked(rep) = checked(rb, src, !partial)? else {
        unreachable!("unpack unpacks")
    };
    Ok(rep)
}

/// A read-back judged against the manifest: the first problem is the error (walk, then sha256 and size, then
/// counts when `counts` is asked for).
fn checked(rb: ReadBack, src: &SourceRecord, counts: bool) -> Result<Walked, RestoreError> {
    let object = rb.key;
    let walked = rb.walked.map_err(|e| match e {
        WalkError::Open(e) => e,
        WalkError::Entries(source) => RestoreError::Archive {
            object: object.clone(),
            source,
        },
        WalkError::Trailer(e) => RestoreError::Archive {
            object: object.clone(),
            source: archive::ArchiveError::Corrupt(e.to_string()),
        },
    })?;
    let (sha, size) = rb
        .digest
        .expect("a successful walk is hashed")
        .map_err(|e| RestoreError::Read {
            object: object.clone(),
            message: e.to_string(),
        })?;
    if sha != src.sha256 || size != src.stored_bytes {
        return Err(RestoreError::Checksum {
            object,
            expected: src.sha256.clone(),
            found: sha,
            expected_size: src.stored_bytes,
            found_size: size,
        });
    }
    if let Some(c) = walked.counts().filter(|c| counts && **c != src.counts) {
        return Err(RestoreError::Counts {
            detail: count_diff(&src.counts, c),
            object,
        });
    }
    Ok(walked)
}

/// Names in an archive (for `--dry-run`), read back and checked like a restore reads it.
async fn list_archive(
    store: Arc<dyn Storage>,
    manifest: &Manifest,
    src: &SourceRecord,
    decryptor: Arc<Decryptor>,
) -> Result<BTreeSet<PathBuf>> {
    let rb = readback::read(
        store,
        manifest,
        src,
        decryptor,
        Entries::List,
        false,
        Progress::hidden(),
    )
    .await?;
    let Walked::Listed(names) = checked(rb, src, false)? else {
        unreachable!("list lists")
    };
    Ok(names)
}

/// `restore --archive FILE`: import a plain tar / tar.gz / tar.zst made by other tools.
async fn import(
    config: &Config,
    args: RestoreRequest,
    progress: Progress,
) -> Result<RestoreOutcome> {
    let file = args.archive.clone().expect("checked by caller");
    let f = std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
    let engine;
    let (destination, path, created) = match (&args.to_volume, &args.to_dir) {
        (Some(v), _) => {
            engine = Some(Engine::connect(config.docker_host.as_deref()).await?);
            let e = engine.as_ref().expect("set");
            match e.inspect_volume(v).await {
                Ok(info) => {
                    if dir_has_entries(&info.mountpoint) && !args.force {
                        bail!("volume {v} is not empty: import into a new volume, or pass --force to replace its contents (no safety backup is taken for --archive)");
                    }
                    (Destination::Volume(v.clone()), info.mountpoint, false)
                }
                Err(crate::docker::DockerError::NoSuchVolume(_)) => {
                    let info = e
                        .create_volume(v, "local", &Default::default(), &Default::default())
                        .await?;
                    (Destination::Volume(v.clone()), info.mountpoint, true)
                }
                Err(err) => return Err(err.into()),
            }
        }
        (None, Some(d)) => {
            engine = None;
            if dir_has_entries(d) && !args.force {
                bail!(
                    "{} is not empty: pass --force to replace its contents",
                    d.display()
                );
            }
            std::fs::create_dir_all(d)?;
            (Destination::Dir(d.clone()), d.clone(), false)
        }
        (None, None) => bail!("--archive needs a destination: --to-volume NAME or --to-dir PATH"),
    };
    if args.dry_run {
        return Ok(RestoreOutcome::ImportPlan { file, destination });
    }
    let journal = Journal::open(&config.state_dir)?;
    let staging = Staging::make(&path, &journal)?;
    let opts = UnpackOptions {
        strip_components: args.strip_components,
        paths: clean_paths(&args.paths)?,
        ..UnpackOptions::default()
    };
    let st = staging.path.clone();
    let p2 = progress.clone();
    let name = file.display().to_string();
    let result = tokio::task::spawn_blocking(move || -> Result<UnpackReport> {
        let r = ProgressReader::new(std::io::BufReader::with_capacity(1 << 20, f), p2);
        let (_fmt, dec) = archive::compress::decoder(r).map_err(|e| anyhow!("{name}: {e}"))?;
        let entries = Entries::Unpack { dest: st, opts };
        match readback::walk(dec, entries) {
            Ok(Walked::Unpacked(rep)) => Ok(rep),
            Ok(_) => unreachable!("unpack unpacks"),
            Err(WalkError::Entries(e)) => Err(anyhow!("{name}: {e}")),
            Err(WalkError::Trailer(e)) => Err(anyhow!("{name}: {e}")),
            Err(WalkError::Open(e)) => Err(anyhow!("{name}: {e}")),
        }
    })
    .await?;
    let result = result.and_then(|rep| {
        exchange(&staging.path, &path)?;
        Ok(rep)
    });
    let cleanup = staging.remove(&journal);
    progress.finish();
    match result {
        Ok(rep) => {
            let report = RestoreReport {
                backup: None,
                dry_run: false,
                sources: vec![SourceRestore {
                    source: file.display().to_string(),
                    destination,
                    path,
                    create_volume: created,
                    stop: vec![],
                    would_remove: None,
                    counts: rep.counts,
                    safety_backup: None,
                    restarted: vec![],
                    warnings: rep.warnings.into_iter().chain(cleanup.err()).collect(),
                    status: RestoreStatus::Ok,
                }],
                recovered: vec![],
            };
            Ok(RestoreOutcome::Report(report))
        }
        Err(e) => {
            if created {
                if let (Some(e2), Destination::Volume(v)) = (&engine, &destination) {
                    let _ = e2.remove_volume(v).await;
                }
            }
            Err(e)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plan for `restore` of one volume used by a running and a stopped container.
    pub(crate) fn sample_plan() -> RestorePlan {
        let t = DateTime::parse_from_rfc3339("2026-11-28T03:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let source: SourceRecord = serde_json::from_value(serde_json::json!({
            "name": "pgdata",
            "kind": "volume",
            "path": "/var/lib/docker/volumes/pgdata/_data",
            "object": "pgdata.tar.zst",
            "counts": {"entries": 4, "files": 3, "dirs": 1, "symlinks": 0, "hardlinks": 0, "other": 0,
                       "bytes": 3072},
            "stored-bytes": 900,
            "sha256": "00",
            "read-ms": 5,
        }))
        .unwrap();
        let user = |name: &str, action: QuiesceAction| PlannedContainer {
            id: format!("id-{name}"),
            name: name.into(),
            compose_project: None,
            compose_service: None,
            state: "running".into(),
            rw: true,
            action,
            stop_timeout: std::time::Duration::from_secs(10),
            reason: String::new(),
        };
        RestorePlan {
            manifest: Manifest {
                format: catalog::FORMAT_VERSION,
                tool: "t".into(),
                id: "20261128T030000Z-abcd".parse().unwrap(),
                job: "default".into(),
                host: "h".into(),
                started_at: t,
                finished_at: t,
                tags: vec![],
                sources: vec![source.clone()],
                failed: vec![],
                encryption: None,
                seal: None,
            },
            sources: vec![SourcePlan {
                source,
                destination: Destination::Volume("pgdata".into()),
                path: PathBuf::from("/var/lib/docker/volumes/pgdata/_data"),
                create_volume: false,
                users: vec![
                    user("db", QuiesceAction::Stop),
                    user("old", QuiesceAction::None),
                ],
            }],
            paths: vec![],
            recovered: vec![],
        }
    }

    /// Issue 9: the dry run reports the plan: the backup, each source's destination, the containers the plan
    /// stops (not the ones it leaves alone), what the backup holds and what would be removed; nothing restored.
    #[test]
    fn issue9_the_dry_run_reports_the_plan() {
        let plan = sample_plan();
        assert_eq!(plan.sources[0].stops(), vec!["db".to_string()]);
        let r = plan.dry_run_report(vec![vec!["stale.log".into()]]);
        assert!(r.dry_run);
        assert!(r.ok());
        assert_eq!(r.backup.as_deref(), Some("20261128T030000Z-abcd"));
        assert_eq!(r.sources.len(), 1);
        let s = &r.sources[0];
        assert_eq!(s.source, "pgdata");
        assert_eq!(s.destination.to_string(), "volume pgdata");
        assert!(!s.create_volume);
        assert_eq!(s.stop, vec!["db".to_string()]);
        assert_eq!(s.would_remove, Some(vec!["stale.log".to_string()]));
        assert_eq!((s.counts.files, s.counts.bytes), (3, 3072));
        assert_eq!(s.status, RestoreStatus::DryRun);
        assert!(s.restarted.is_empty() && s.safety_backup.is_none());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["sources"][0]["status"], "dry-run");
    }

    #[test]
    fn before_times() {
        let now = DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_time("2026-11-27T03:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-11-27T03:00:00+00:00"
        );
        assert_eq!(
            parse_time("2d", now).unwrap(),
            now - chrono::Duration::days(2)
        );
        assert!(parse_time("yesterday-ish", now).is_err());
    }

    #[test]
    fn paths_are_cleaned_and_dotdot_refused() {
        assert_eq!(
            clean_paths(&[PathBuf::from("/etc/./app")]).unwrap(),
            vec![PathBuf::from("etc/app")]
        );
        assert!(clean_paths(&[PathBuf::from("a/../../b")]).is_err());
        assert!(clean_paths(&[PathBuf::from("/")]).is_err());
    }

    #[test]
    fn exchange_swaps_directories() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("new"), "n").unwrap();
        std::fs::write(b.join("old"), "o").unwrap();
        exchange(&a, &b).unwrap();
        assert!(b.join("new").exists() && !b.join("old").exists());
        assert!(a.join("old").exists());
    }
}
