//! Restore, step 2: apply a plan — check every archive, extract and verify into staging, then stop, safety
//! backup, swap, restart.

use super::engine;
use super::*;
use crate::plan::PlannedService;
use crate::quiesce::{ServiceHold, ServiceOutcome};

/// What every source of one restore shares: the request, the opened target and keys, the backup, the engine and
/// the journal (with the quiescer on them), progress and the cancel token.
pub(super) struct ApplyCtx<'a> {
    pub(super) config: &'a Config,
    pub(super) args: &'a RestoreRequest,
    pub(super) store: Arc<dyn Storage>,
    pub(super) target: Target,
    pub(super) decryptor: Arc<Decryptor>,
    pub(super) engine: &'a Engine,
    pub(super) journal: &'a Journal,
    pub(super) quiescer: Quiescer<'a>,
    pub(super) manifest: Manifest,
    /// `--path` arguments, cleaned (empty: whole volumes).
    pub(super) paths: Vec<PathBuf>,
    pub(super) progress: Progress,
    pub(super) cancel: CancellationToken,
}

/// Carry out a plan: check every archive, then per source extract and verify into staging, stop its users,
/// take the safety backup, swap in and restart them.
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
    let checks = check_archives(&store, &manifest, &plans, &decryptor).await?;

    let journal = Journal::open(&config.state_dir)?;
    let ctx = ApplyCtx {
        config,
        args,
        store,
        target,
        decryptor,
        engine: &engine,
        journal: &journal,
        quiescer: Quiescer::new(&engine, &journal).cancel_on(cancel.clone()),
        manifest,
        paths,
        progress,
        cancel,
    };
    // Owners, modes and device nodes need capabilities a hardened container may lack: say which, once.
    let caps_warning = crate::caps::restore_warning();
    for (sp, check) in plans.into_iter().zip(checks) {
        if ctx.cancel.is_cancelled() {
            bail!("interrupted");
        }
        let mut sr = match check {
            Ok(()) => restore_source(&ctx, sp).await?,
            Err(e) => SourceRestore::not_attempted(&sp, &e),
        };
        if report.sources.is_empty() {
            sr.warnings.extend(caps_warning.clone());
        }
        report.sources.push(sr);
    }
    ctx.progress.finish();
    Ok(report)
}

impl SourceRestore {
    /// A source's report before anything was restored: no counts, nothing restarted.
    fn starting(
        source: &str,
        destination: &Destination,
        path: &Path,
        create_volume: bool,
        stop: Vec<String>,
        status: RestoreStatus,
    ) -> SourceRestore {
        SourceRestore {
            source: source.to_string(),
            destination: destination.clone(),
            path: path.to_path_buf(),
            create_volume,
            stop,
            stopped: vec![],
            would_remove: None,
            changes: None,
            counts: Counts::default(),
            safety_backup: None,
            undo: None,
            restarted: vec![],
            downtime_ms: BTreeMap::new(),
            services: vec![],
            warnings: vec![],
            status,
            command: None,
            through_engine: false,
        }
    }

    /// A source whose archive failed its check: nothing was done for it.
    fn not_attempted(sp: &SourcePlan, e: &anyhow::Error) -> SourceRestore {
        // Not created, nothing stopped: nothing was done for this source.
        SourceRestore::starting(
            &sp.source.name,
            &sp.destination,
            &sp.path,
            false,
            vec![],
            RestoreStatus::Failed(crate::error_chain(e)),
        )
    }
}

/// [`check_archive`] for every source of the plan, in order (`Err` only when the backup cannot be listed).
async fn check_archives(
    store: &Arc<dyn Storage>,
    manifest: &Manifest,
    plans: &[SourcePlan],
    decryptor: &Arc<Decryptor>,
) -> Result<Vec<Result<()>>> {
    let objects = store
        .list(&format!("{}/", manifest.id))
        .await
        .with_context(|| format!("listing backup {}", manifest.id))?;
    let mut checks = Vec::new();
    for sp in plans {
        checks.push(check_archive(store, &objects, manifest, &sp.source, decryptor).await);
    }
    Ok(checks)
}

/// Restore one source whose archive passed its check: make the destination, stop its users (journaled),
/// restore, restart them on every path. A failure of the restore itself is the source's status; `Err` is fatal.
async fn restore_source(ctx: &ApplyCtx<'_>, sp: SourcePlan) -> Result<SourceRestore> {
    let stop = sp.stops();
    let SourcePlan {
        source: src,
        destination,
        mut path,
        create_volume,
        users,
        services,
    } = sp;
    ctx.progress
        .phase(&format!("restore {} -> {destination}", src.name));
    let mut sr = SourceRestore::starting(
        &src.name,
        &destination,
        &path,
        create_volume,
        stop,
        RestoreStatus::Failed("not restored".into()),
    );
    let mut new_volume = None;
    if create_volume {
        let (p, seq) = create_destination_volume(ctx, &src, &destination).await?;
        path = p;
        sr.path = path.clone();
        new_volume = Some(seq);
    }
    // A directory this restore makes is removed again if the restore fails (when it is still empty).
    let mut made_dir = None;
    if let Destination::Dir(d) = &destination {
        if !d.exists() {
            made_dir = Some(d.clone());
        }
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }

    // A volume whose host path is not usable here (or `data-path = "engine"`) is written through the engine.
    let through = match &destination {
        Destination::Volume(v) => engine::through_engine(ctx.config.data_path, v, &path),
        _ => Ok(false),
    };
    let result = match (through, &destination) {
        (Err(e), _) => Err(e),
        (Ok(true), Destination::Volume(v)) => {
            sr.through_engine = true;
            if !ctx.paths.is_empty() {
                Err(engine::not_through_engine("--path", v))
            } else if create_volume {
                engine::put_new_volume(ctx, &src, v, &mut sr)
                    .await
                    .map(|()| RestoreStatus::Ok)
            } else {
                engine::restore_in_place(ctx, &src, v, &path, (&users, &services), &mut sr).await
            }
        }
        (Ok(_), _) => {
            restore_one(
                ctx,
                &src,
                &path,
                create_volume,
                (&users, &services),
                &mut sr,
            )
            .await
        }
    };
    match result {
        // Restored: `Ok`, or `Unprotected` when the safety copy could not be committed.
        Ok(status) => {
            sr.status = status;
            if let Some(seq) = new_volume {
                ctx.journal.removed(seq);
            }
        }
        Err(e) => {
            sr.status = RestoreStatus::Failed(crate::error_chain(&e));
            if let Some(d) = &made_dir {
                // Only an empty one: whatever else is in it now is not ours to remove.
                let _ = std::fs::remove_dir(d);
            }
            if let (Some(seq), Destination::Volume(v)) = (new_volume, &destination) {
                // Do not leave a half-made new volume behind (the journal keeps it for `recover` until it is
                // gone).
                match ctx.engine.remove_volume(v).await {
                    Ok(()) | Err(crate::docker::DockerError::NoSuchVolume(_)) => {
                        ctx.journal.removed(seq)
                    }
                    Err(e) => sr.warnings.push(format!(
                        "cannot remove the new volume {v}: {e} (`voltar recover` removes it later)"
                    )),
                }
            }
        }
    }
    Ok(sr)
}

/// Create the new volume a source is restored into (with the original driver, options and labels), journaled
/// first ([`Leftover::NewVolume`]: `recover` removes it if the restore does not finish); returns its mountpoint
/// and the journal entry, closed by the caller once the restore is complete or the volume removed.
async fn create_destination_volume(
    ctx: &ApplyCtx<'_>,
    src: &SourceRecord,
    destination: &Destination,
) -> Result<(PathBuf, u64)> {
    let Destination::Volume(name) = destination else {
        unreachable!("only volumes are created")
    };
    let seq = ctx.journal.will_create(&Leftover::NewVolume {
        volume: name.clone(),
    })?;
    match ctx
        .engine
        .create_volume(
            name,
            src.driver.as_deref().unwrap_or("local"),
            &src.driver_opts,
            &src.labels,
        )
        .await
    {
        Ok(v) => Ok((v.mountpoint, seq)),
        Err(e) => {
            // Not created (or someone else's, already there): not ours to remove.
            ctx.journal.removed(seq);
            Err(e.into())
        }
    }
}

/// The holds that stop the users the plan stops.
fn stop_holds(users: &[PlannedContainer]) -> Vec<Hold> {
    users
        .iter()
        .filter(|u| u.action == QuiesceAction::Stop)
        .map(|u| Hold {
            id: u.id.clone(),
            name: u.name.clone(),
            action: QuiesceAction::Stop,
            stop_timeout: u.stop_timeout,
        })
        .collect()
}

/// Extract into a journaled staging directory and verify it while the users keep running; then stop them, swap
/// in and restart them. The safety copy of what was there:
/// - whole volume: the swap moves the old tree into the staging directory intact, so it is backed up from there
///   after the users are back (its targets checked before anything is stopped). The users are down for the stop,
///   the swap and the start only, never while the copy is read or uploaded to a slow or dying target. Until the
///   copy is committed the old tree is journaled as kept (never removed by `recover`); if the copy fails, it stays
///   on disk and the source reports where.
/// - `--path`: the old tree does not come out whole, so the safety backup of the volume is taken while the users
///   are stopped, before the swap.
///
/// A bad archive never stops the users. `Err` from stopping them is fatal for the whole restore.
async fn restore_one(
    ctx: &ApplyCtx<'_>,
    src: &SourceRecord,
    path: &Path,
    fresh: bool,
    users: (&[PlannedContainer], &[PlannedService]),
    sr: &mut SourceRestore,
) -> Result<RestoreStatus> {
    let replaces = !fresh && dir_has_entries(path);
    let wants_safety = replaces && !ctx.args.no_safety_backup;
    let safety = match (wants_safety, ctx.paths.is_empty()) {
        (false, _) => Safety::None,
        (true, true) => Safety::AfterSwap,
        (true, false) => Safety::WhileStopped,
    };
    let mut staging = Staging::make(path, ctx.journal)?;
    let durable = durable(
        ctx.args.no_sync,
        replaces,
        &sr.destination,
        &mut sr.warnings,
    );
    let result = match extract(ctx, src, &staging, durable, sr).await {
        Ok(()) => match check_safety_targets(ctx, safety).await {
            Ok(()) => stopped_for_swap(ctx, src, path, users, safety, &mut staging, sr).await,
            Err(e) => Ok(Err(e)),
        },
        Err(e) => Ok(Err(e)),
    };
    let swapped = matches!(result, Ok(Ok(())));
    if swapped && safety == Safety::AfterSwap {
        // `staging` holds the old tree now: back it up, then let it go.
        match safety_backup(ctx, src, &staging.path, None).await {
            Ok((id, warnings)) => {
                sr.undo = Some(undo_command(&id, src, &sr.destination, &ctx.target.name));
                sr.safety_backup = Some(id);
                sr.warnings.extend(warnings);
            }
            Err(e) => {
                let kept = staging.path.clone();
                staging.forget(ctx.journal);
                return result?.map(|()| {
                    RestoreStatus::Unprotected(format!(
                        "{e:#}; the previous contents are kept at {} (back them up or remove them)",
                        kept.display()
                    ))
                });
            }
        }
    }
    // After a successful exchange, `staging` holds the old contents; after a failure, the partial extraction.
    if let Err(e) = staging.remove(ctx.journal) {
        sr.warnings.push(e);
    }
    result?.map(|()| RestoreStatus::Ok)
}

/// Where a restore's safety copy of the current contents comes from (see [`restore_one`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Safety {
    None,
    AfterSwap,
    WhileStopped,
}

/// Before anything is stopped: every target the safety backup writes to opens and takes a test write, as a
/// backup run checks them first. With `AfterSwap` a safety backup that cannot be written would only be found out
/// after the swap.
pub(super) async fn check_safety_targets(ctx: &ApplyCtx<'_>, safety: Safety) -> Result<()> {
    if safety != Safety::AfterSwap {
        return Ok(());
    }
    ctx.progress.note("checking the safety backup's targets");
    backup::check_targets(&backup_env(ctx), &safety_targets(ctx))
        .await
        .map_err(|e| {
            anyhow!(
                "the safety backup cannot be written: {e}; nothing was stopped or changed \
                 (use --no-safety-backup to restore without one)"
            )
        })
}

/// With the users stopped (journaled; restarted on every path): the safety backup when it cannot wait
/// (`WhileStopped`), then the swap. The outer `Err` is a failure to stop them (fatal), the inner one this
/// source's failure. With `AfterSwap`, the staging directory is journaled as kept before the swap.
async fn stopped_for_swap(
    ctx: &ApplyCtx<'_>,
    src: &SourceRecord,
    path: &Path,
    users: (&[PlannedContainer], &[PlannedService]),
    safety: Safety,
    staging: &mut Staging,
    sr: &mut SourceRestore,
) -> Result<Result<()>> {
    while_stopped(ctx, users, sr, async |sr: &mut SourceRestore| {
        if safety == Safety::WhileStopped {
            let (id, warnings) = safety_backup(ctx, src, path, None).await.map_err(|e| {
                anyhow!(
                    "{e:#}; nothing was changed (use --no-safety-backup to restore without one)"
                )
            })?;
            sr.undo = Some(undo_command(&id, src, &sr.destination, &ctx.target.name));
            sr.safety_backup = Some(id);
            sr.warnings.extend(warnings);
        }
        if ctx.cancel.is_cancelled() {
            bail!("interrupted before the swap: nothing was changed");
        }
        if safety == Safety::AfterSwap {
            // From the swap on, the staging directory holds the only copy of the old contents until the safety
            // backup is committed: a killed run must leave it for the user, not have `recover` remove it.
            staging.keep_after_swap(ctx.journal, path)?;
        }
        ctx.progress.note("swapping in");
        swap(ctx, path, staging)
    })
    .await
}

/// `body`'s error when the users must NOT be started again: their volume is half-written and could not be put
/// right (a restore in place through the engine whose mirror failed). They stay stopped and journaled, so that
/// `voltar recover` finishes the volume before it starts them.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub(super) struct UsersStayStopped(pub(super) anyhow::Error);

/// Stop the users (Swarm services scaled to 0 first), run `body`, restart them on every path (unless `body`
/// fails with [`UsersStayStopped`]), and fill the report's `stopped`, `restarted`, `downtime_ms` and
/// `services`. The outer `Err` is a failure to stop them (fatal), the inner one `body`'s.
pub(super) async fn while_stopped(
    ctx: &ApplyCtx<'_>,
    (users, services): (&[PlannedContainer], &[PlannedService]),
    sr: &mut SourceRestore,
    body: impl AsyncFnOnce(&mut SourceRestore) -> Result<()>,
) -> Result<Result<()>> {
    let holds = stop_holds(users);
    // Swarm services first: scaled to 0 (their tasks go down with their grace period), never their tasks
    // stopped, which swarm would replace.
    let scaled: Vec<ServiceHold> = services
        .iter()
        .map(|s| ServiceHold {
            id: s.id.clone(),
            name: s.name.clone(),
            stop_timeout: s.stop_timeout,
        })
        .collect();
    if !scaled.is_empty() {
        let names: Vec<&str> = scaled.iter().map(|s| s.name.as_str()).collect();
        ctx.progress
            .note(&format!("scaling service(s) {} to 0…", names.join(", ")));
    }
    let mut held = ctx.quiescer.scale_down(&scaled).await?;
    if !holds.is_empty() {
        let stopping: Vec<String> = holds
            .iter()
            .map(|h| format!("{} (timeout {}s)", h.name, h.stop_timeout.as_secs()))
            .collect();
        ctx.progress
            .note(&format!("stopping {}…", stopping.join(", ")));
    }
    match ctx.quiescer.hold(&holds).await {
        Ok(h) => held.absorb(h),
        Err(e) => {
            let report = ctx.quiescer.release(held).await;
            for e in &report.errors {
                tracing::error!(error = %e, "scaling back after a failed stop");
            }
            return Err(e.into());
        }
    }
    if !holds.is_empty() {
        let names: Vec<String> = holds.iter().map(|h| h.name.clone()).collect();
        ctx.progress.note("");
        ctx.progress.holding(&names, "stopped");
        sr.stopped = names;
    }
    let result = body(sr).await;
    if let Err(e) = &result {
        if e.is::<UsersStayStopped>() {
            // Journaled and locked as stopped: `recover` starts them once their volume is whole.
            std::mem::forget(held);
            ctx.progress.released();
            return Ok(result);
        }
    }
    let released = ctx.quiescer.release(held).await;
    ctx.progress.released();
    sr.restarted = released
        .released
        .iter()
        .map(|c| c.name.clone())
        .chain(
            released
                .services
                .iter()
                .filter(|s| s.outcome == ServiceOutcome::ScaledBack)
                .map(|s| format!("service {}", s.name)),
        )
        .collect();
    sr.downtime_ms = released
        .released
        .iter()
        .map(|c| (c.name.clone(), c.downtime_ms()))
        .collect();
    sr.services = released
        .services
        .iter()
        .map(backup::service_record)
        .collect();
    sr.warnings
        .extend(released.errors.iter().map(|e| e.to_string()));
    Ok(result)
}

fn safety_targets(ctx: &ApplyCtx<'_>) -> Vec<Target> {
    super::safety_targets(
        ctx.config,
        ctx.args.job.as_deref(),
        &ctx.manifest.job,
        &ctx.target,
    )
}

fn backup_env<'a>(ctx: &'a ApplyCtx<'_>) -> backup::Env<'a> {
    backup::Env {
        config: ctx.config,
        engine: ctx.engine,
        progress: ctx.progress.clone(),
        cancel: ctx.cancel.clone(),
        now: Utc::now(),
        // `--wait` (`--path` restores take their safety copy with the users stopped: never wait then).
        wait: ctx.args.wait.filter(|_| ctx.paths.is_empty()),
    }
}

/// Safety copy of what is at `path` now (the volume, or the old tree the swap moved out), as the source it
/// protects, into every target of [`safety_targets`], tagged `pre-restore`; returns its backup id, and a warning
/// per target that did not take it (it is a safety backup when at least one target committed it).
pub(super) async fn safety_backup(
    ctx: &ApplyCtx<'_>,
    src: &SourceRecord,
    path: &Path,
    read_volume: Option<(&str, &str)>,
) -> Result<(String, Vec<String>)> {
    let config = ctx.config;
    // Read from another volume (a keep volume of a restore in place through the engine): no container uses it,
    // so its helper's image, unless configured, is the one the mirror ran (the engine has it).
    let with_image;
    let mut env = backup_env(ctx);
    if let Some((_, image)) = read_volume {
        with_image = Config {
            helper_image: config.helper_image.clone().or(Some(image.to_string())),
            ..config.clone()
        };
        env.config = &with_image;
    }
    ctx.progress.note("safety backup of the previous contents");
    let job = config
        .job(ctx.args.job.as_deref())
        .cloned()
        .unwrap_or_else(|_| config.jobs.values().next().cloned().expect("a job"));
    let mut job = job;
    job.prune = false;
    // Same job as the backup it protects, so that job's pruning applies the pre-restore rule to it.
    job.name = ctx.manifest.job.clone();
    let req = BackupRequest {
        job,
        targets: safety_targets(ctx),
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
            services: vec![],
            reason: "safety backup before restore".into(),
            dump: None,
            read_volume: read_volume.map(|(v, _)| v.to_string()),
        }],
        ..Default::default()
    };
    let run = backup::execute(&env, &req, plan, Utc::now(), vec![]).await?;
    // A whole copy on at least one target (`Partial`: not on every one) is a safety backup; an incomplete copy
    // (entries it could not read) is not.
    let source = run.sources.first();
    let whole =
        source.is_some_and(|s| matches!(s.status, backup::Status::Ok | backup::Status::Partial));
    if !whole || !run.targets.iter().any(|t| t.committed) {
        let why = source
            .and_then(|s| s.error.clone())
            .or_else(|| {
                source
                    .filter(|s| s.status == backup::Status::Incomplete)
                    .map(|s| format!("{} entries could not be read", s.not_archived_count))
            })
            .or_else(|| run.targets.iter().find_map(|t| t.error.clone()))
            .unwrap_or_else(|| "unknown error".into());
        bail!("safety backup failed: {why}");
    }
    let warnings = run
        .targets
        .iter()
        .filter(|t| !t.committed)
        .map(|t| {
            format!(
                "the safety backup did not reach target {}: {}",
                t.name,
                t.error.as_deref().unwrap_or("not committed")
            )
        })
        .collect();
    Ok((run.id.to_string(), warnings))
}

/// Whether the staged tree is flushed to disk before the swap: always when the restore replaces the contents of
/// `destination` (the old tree goes once the new one is in), else unless `no_sync`; `warnings` gets a line when
/// `--no-sync` was not honoured.
pub(super) fn durable(
    no_sync: bool,
    replaces: bool,
    destination: &Destination,
    warnings: &mut Vec<String>,
) -> bool {
    if no_sync && replaces {
        warnings.push(format!(
            "--no-sync not honoured: {destination} had contents, so the restored tree was flushed to disk before it \
             replaced them"
        ));
    }
    replaces || !no_sync
}

/// Extract into `staging` and verify (sha256, counts, decryption to the last byte). Nothing is stopped yet.
/// `durable`: flush the staged tree to disk at the end (see [`UnpackOptions::durable`]).
async fn extract(
    ctx: &ApplyCtx<'_>,
    src: &SourceRecord,
    staging: &Staging,
    durable: bool,
    sr: &mut SourceRestore,
) -> Result<()> {
    ctx.progress.note("extracting and verifying");
    ctx.progress.expect_bytes(Some(src.stored_bytes));
    let opts = UnpackOptions {
        paths: ctx.paths.clone(),
        durable,
        ..UnpackOptions::default()
    };
    let rep = unpack_cancellable(&ctx.cancel, opts, async |opts| {
        fetch_and_unpack(
            ctx.store.clone(),
            &ctx.manifest,
            src,
            ctx.decryptor.clone(),
            staging.path.clone(),
            opts,
            ctx.progress.clone(),
        )
        .await
    })
    .await?;
    // What the restore writes: the whole archive, or with `--path` what the selection staged.
    sr.counts = if ctx.paths.is_empty() {
        rep.counts.clone()
    } else {
        crate::archive::count_tree(&staging.path).map_err(|e| anyhow!(e))?
    };
    sr.warnings.extend(rep.warnings.iter().cloned());
    if ctx.cancel.is_cancelled() {
        bail!("interrupted before the swap: nothing was changed");
    }
    Ok(())
}

/// Unpack into staging with `opts`, stopping at the next entry or buffer when `cancel` fires (Ctrl-C / SIGTERM)
/// instead of at the end of the archive: then the error is the interruption.
pub(super) async fn unpack_cancellable<T>(
    cancel: &CancellationToken,
    opts: UnpackOptions,
    unpack: impl AsyncFnOnce(UnpackOptions) -> Result<T>,
) -> Result<T> {
    match unpack_until_cancelled(cancel, opts, unpack).await {
        Err(_) if cancel.is_cancelled() => {
            bail!("interrupted before the swap: nothing was changed")
        }
        r => r,
    }
}

/// Run `unpack` with `opts` whose cancel flag follows `cancel`: the extraction stops at the next entry or
/// buffer once it fires (the error then is the unpacker's; the caller tells it by `cancel.is_cancelled()`).
pub async fn unpack_until_cancelled<T>(
    cancel: &CancellationToken,
    mut opts: UnpackOptions,
    unpack: impl AsyncFnOnce(UnpackOptions) -> Result<T>,
) -> Result<T> {
    let stop = pipeline::StopFlag::following(cancel);
    opts.cancel = Some(stop.flag());
    unpack(opts).await
}

/// Swap the verified staging tree in for `path` (the whole tree, or each `--path`).
fn swap(ctx: &ApplyCtx<'_>, path: &Path, staging: &Staging) -> Result<()> {
    if ctx.paths.is_empty() {
        exchange(&staging.path, path)?;
    } else {
        for p in &ctx.paths {
            swap_path_in(&staging.path, path, p)?;
        }
    }
    Ok(())
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
pub(super) fn checked(
    rb: ReadBack,
    src: &SourceRecord,
    counts: bool,
) -> Result<Walked, RestoreError> {
    let object = rb.key;
    if let Some(why) = rb.unread {
        return Err(RestoreError::Read {
            object,
            message: readback::not_read(&why),
        });
    }
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
