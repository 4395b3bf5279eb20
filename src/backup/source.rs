//! One source of a run: check it is readable, open one streamed upload per target, quiesce its containers, pack
//! it while the chunks fan out to every target, resume the containers as soon as it is read (at the latest at
//! `max-downtime`), finish the uploads and judge what each target stored.
//!
//! Nothing here waits on a target while containers are held: the uploads are opened before the quiesce, and a
//! writer that falls behind during the read is fed from a spool file (`Pace::Spool`) after the release.

use super::*;
use crate::config::DataPath;
use crate::docker;
use crate::progress::human;

/// What the packer returns: its report, and the sha256 and size of the stored object.
pub(super) type Packed = (archive::pack::PackReport, String, u64);

/// Back up one source to every open target. Never returns early without resuming what it held.
pub(super) async fn back_up_source(ctx: &RunCtx<'_>, src: &PlannedSource) -> SourceReport {
    if let Some(spec) = &src.dump {
        // A database dump: no quiesce, no hooks, the command's stdout is the stream (`dump.rs`).
        return super::dump::back_up_dump(ctx, src, spec).await;
    }
    let mut report = SourceReport::planned(src);
    ctx.env
        .progress
        .phase(&format!("{} {}", src.kind, src.name));
    // How much a volume holds is not known before it is read (`voltar plan` measures it): open-ended count.
    ctx.env.progress.expect_bytes(None);

    // The source must be readable (here, or through the engine's helper container, created now: creating it is
    // not a read), and its hooks understood, before any container is touched.
    if let Err(why) = hook_problems(src) {
        report.error = Some(why);
        return report;
    }
    let from = match prepare_read(ctx, src).await {
        Ok(f) => f,
        Err(why) => {
            report.error = Some(why);
            return report;
        }
    };
    report.read_via = Some(from.via());
    let guard = HelperGuard::new(ctx, &from);
    let mut report = read_source(ctx, src, &from, report).await;
    end_read(ctx, from, guard, &mut report).await;
    report
}

/// [`back_up_source`] once the way of reading is settled (and a helper created): everything up to the judging.
async fn read_source(
    ctx: &RunCtx<'_>,
    src: &PlannedSource,
    from: &ReadFrom,
    mut report: SourceReport,
) -> SourceReport {
    let object = catalog::object_name(&src.name, ctx.encryptor.is_some());
    let legs = open_legs(ctx, &catalog::object_key(&ctx.id, &object), &mut report).await;
    if legs.is_empty() {
        report.error = Some(not_stored(&report.target_errors));
        return report;
    }
    // Containers with hooks stay locked against other runs from their pre hook to their post hook.
    let hook_locks = match lock_hooked(ctx, src).await {
        Ok(l) => l,
        Err(e) => {
            for leg in legs {
                let _ = leg.writer.abort().await;
            }
            report.error = Some(format!("running hooks: {e}"));
            return report;
        }
    };
    // Pre-backup hooks run in the running containers, before any is paused or stopped (a paused container
    // cannot exec). Whatever happens next, the post hook of every container whose pre hook ran runs too.
    let mut pre_ran = BTreeSet::new();
    if let Err(why) = pre_hooks(ctx, src, &mut pre_ran, &mut report).await {
        for leg in legs {
            let _ = leg.writer.abort().await;
        }
        post_hooks(ctx, src, &pre_ran, false, &mut report).await;
        report.error = Some(why);
        return report;
    }
    // Quiesce. On failure `hold` has already resumed whatever it changed.
    let held = match quiesce(ctx, src, &hook_locks).await {
        Ok(h) => h,
        Err(e) => {
            for leg in legs {
                let _ = leg.writer.abort().await;
            }
            post_hooks(ctx, src, &pre_ran, false, &mut report).await;
            report.error = Some(format!("quiescing containers: {e}"));
            return report;
        }
    };
    // `read` releases what is held on every path, then runs the post hooks.
    let read = read(ctx, src, from, legs, held, &pre_ran, &mut report).await;
    drop(hook_locks);
    let legs = settle_legs(ctx, read.legs, &mut report);
    let packed = match read.packed {
        Ok(p) => p,
        Err(e) => {
            report.error = Some(pack_failed(ctx, e, read.capped, &legs, &mut report));
            return report;
        }
    };
    take_pack_report(ctx, src, &packed, &mut report);
    record_legs(ctx, src, &object, legs, &packed, &mut report);
    report.status = status(&mut report);
    if let (Some(why), Status::Ok) = (read.post_failure, report.status) {
        // Stored whole, but a post hook that must not fail did: the app may not be back to normal.
        report.status = Status::Partial;
        report.error = Some(format!("{why} (the source itself was stored)"));
    }
    report
}

impl SourceReport {
    /// A source not backed up yet: failed until proven otherwise, its containers not touched.
    pub(super) fn planned(src: &PlannedSource) -> SourceReport {
        SourceReport {
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
            hooks: vec![],
            services: vec![],
            read_via: None,
            records: BTreeMap::new(),
            failed_targets: BTreeSet::new(),
        }
    }
}

/// Whether the source is a directory this process can read; else why not, with the likely fix.
pub(super) fn readable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
            "cannot read {}: {e} (voltar reads volumes from the host: run it as root on the Docker host, or in a container with /var/lib/docker/volumes mounted read-only at the same path)",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} does not exist (was it removed during the run? when voltar runs in a container, mount /var/lib/docker/volumes at the same path)",
            path.display()
        )),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Open one streamed upload of `key` per target that is not skipped. A target that refuses is recorded in the
/// report (and skipped by later sources when the target itself failed).
pub(super) async fn open_legs(ctx: &RunCtx<'_>, key: &str, report: &mut SourceReport) -> Vec<Leg> {
    let names = &ctx.targets.names;
    let mut legs = Vec::new();
    for (i, store) in ctx.targets.stores.iter().enumerate() {
        if let Some(why) = ctx.targets.skip.get(&i) {
            report.target_errors.insert(names[i].clone(), why.clone());
            continue;
        }
        let Some(store) = store else { continue };
        match store.put_stream(key, PutOptions::default()).await {
            Ok(writer) => legs.push(Leg::new(i, writer)),
            Err(e) => {
                if target_failed(&e) {
                    report.failed_targets.insert(i);
                }
                report.target_errors.insert(names[i].clone(), e.to_string());
            }
        }
    }
    legs
}

/// Pause or stop the containers the plan holds for this source (journaled). On failure whatever was changed has
/// already been resumed.
pub(super) async fn quiesce(
    ctx: &RunCtx<'_>,
    src: &PlannedSource,
    locked: &quiesce::ContainerLocks,
) -> Result<Held, quiesce::QuiesceError> {
    let holds: Vec<Hold> = src
        .holds()
        .map(|c| Hold {
            id: c.id.clone(),
            name: c.name.clone(),
            action: c.action,
            stop_timeout: c.stop_timeout,
        })
        .collect();
    let stops = holds.iter().any(|h| h.action == QuiesceAction::Stop);
    let pauses = holds.iter().any(|h| h.action != QuiesceAction::Stop);
    if !holds.is_empty() {
        ctx.env.progress.note(&format!(
            "{} {} container(s)",
            if stops { "stopping/pausing" } else { "pausing" },
            holds.len()
        ));
    }
    // Swarm services first (their tasks take their grace period to go down), then the containers.
    let services: Vec<quiesce::ServiceHold> = src
        .services
        .iter()
        .map(|s| quiesce::ServiceHold {
            id: s.id.clone(),
            name: s.name.clone(),
            stop_timeout: s.stop_timeout,
        })
        .collect();
    if !services.is_empty() {
        ctx.env
            .progress
            .note(&format!("scaling {} swarm service(s) to 0", services.len()));
    }
    let mut held = ctx.quiescer.scale_down(&services).await?;
    match ctx.quiescer.hold_locked(&holds, locked).await {
        Ok(h) => held.absorb(h),
        Err(e) => {
            let report = ctx.quiescer.release(held).await;
            for e in &report.errors {
                tracing::error!(error = %e, "scaling back after a failed hold");
            }
            return Err(e);
        }
    }
    if !holds.is_empty() {
        // The bar says who is held and for how long until `release`.
        ctx.env.progress.note("");
        let names: Vec<String> = holds.iter().map(|h| h.name.clone()).collect();
        let action = match (stops, pauses) {
            (true, true) => "paused/stopped",
            (true, false) => "stopped",
            _ => "paused",
        };
        ctx.env.progress.holding(&names, action);
    }
    Ok(held)
}

/// Take the quiesce locks of the source's containers whose hooks will run (waiting, bounded, for another run
/// that holds one), kept until their post hooks have run.
pub(super) async fn lock_hooked(
    ctx: &RunCtx<'_>,
    src: &PlannedSource,
) -> Result<quiesce::ContainerLocks, quiesce::QuiesceError> {
    let hooked: Vec<(String, String)> = src
        .containers
        .iter()
        .filter(|c| c.hooks.is_some() && c.state == "running")
        .map(|c| (c.id.clone(), c.name.clone()))
        .collect();
    if hooked.is_empty() {
        return Ok(quiesce::ContainerLocks::default());
    }
    ctx.quiescer.lock_containers(&hooked).await
}

/// What reading a source left: the packer's outcome (an error message when it failed or was capped) and how
/// each leg ended.
struct Read {
    packed: Result<Packed, String>,
    legs: Vec<LegResult>,
    /// The read reached `max-downtime` and was aborted.
    capped: bool,
    /// A post-backup hook with `hook-on-error = fail` failed.
    post_failure: Option<String>,
}

/// A read under way ([`start_read`]): the packer feeding the fan-out to every leg.
pub(super) struct Started {
    pub fan: tokio::task::JoinHandle<Vec<LegResult>>,
    /// Tells the fan-out whether to commit the uploads (the read succeeded) or abort them.
    pub commit_tx: oneshot::Sender<bool>,
    /// Per target, the bytes handed to its writer so far.
    pub sent: Vec<(String, Arc<AtomicU64>)>,
    pub packer: tokio::task::JoinHandle<Result<Packed, ArchiveError>>,
    /// Polled by the packer: set to stop it (the run cancelled, `max-downtime`).
    pub stop: pipeline::StopFlag,
    pub started: Instant,
}

/// Start reading `src` into its `legs`: the fan-out on this runtime, the packer on a blocking thread. While
/// containers are held (`holding`) a leg that falls behind is spooled, never waited on.
pub(super) fn start_read(
    ctx: &RunCtx<'_>,
    from: &ReadFrom,
    legs: Vec<Leg>,
    holding: bool,
) -> Started {
    let pace = if holding {
        Pace::Spool {
            dir: ctx.spool_dir.clone(),
        }
    } else {
        Pace::Backpressure
    };
    let (tx, rx) = mpsc::channel(pipeline::CHANNEL_CHUNKS);
    let (commit_tx, commit_rx) = oneshot::channel::<bool>();
    let sent: Vec<(String, Arc<AtomicU64>)> = legs
        .iter()
        .map(|l| (ctx.targets.names[l.target].clone(), l.sent.clone()))
        .collect();
    let fan = tokio::spawn(pipeline::fan_out(
        rx,
        legs,
        async move { commit_rx.await.unwrap_or(false) },
        pace,
        ctx.env.cancel.clone(),
    ));
    let stop = pipeline::StopFlag::following(&ctx.env.cancel);
    let started = Instant::now();
    let packer = spawn_packer(ctx, from, tx, stop.flag());
    Started {
        fan,
        commit_tx,
        sent,
        packer,
        stop,
        started,
    }
}

/// Read the source: pack on a blocking thread, fan out on this one, then release `held` as soon as the read
/// ends (or reaches `max-downtime`), and only then wait for the uploads. While containers are held no writer may
/// slow the read down: one that falls behind is fed from a spool file once they are resumed.
async fn read(
    ctx: &RunCtx<'_>,
    src: &PlannedSource,
    from: &ReadFrom,
    legs: Vec<Leg>,
    held: Held,
    pre_ran: &BTreeSet<String>,
    report: &mut SourceReport,
) -> Read {
    let holding = !held.is_empty();
    let Started {
        fan,
        commit_tx,
        sent,
        mut packer,
        stop,
        started,
    } = start_read(ctx, from, legs, holding);
    // The hard cap on downtime: a read that is slow by itself (a huge volume, a slow disk) is aborted at
    // `max-downtime`, and the containers are resumed right then, not when the packer has noticed.
    let packed = if holding {
        match tokio::time::timeout(ctx.max_downtime, &mut packer).await {
            Ok(p) => Some(p),
            Err(_) => {
                stop.set();
                None
            }
        }
    } else {
        Some((&mut packer).await)
    };
    let capped = packed.is_none();
    if !capped {
        report.read_ms = started.elapsed().as_millis() as u64;
    }

    // Resume right away: the source has been read (or the cap was reached). Then the post hooks, which need
    // the containers running again.
    release(ctx, held, report).await;
    let post_failure = post_hooks(ctx, src, pre_ran, true, report).await;
    let packed = match packed {
        Some(p) => p,
        None => packer.await,
    };
    if capped {
        report.read_ms = started.elapsed().as_millis() as u64;
    }
    drop(stop);

    let packed = judge_packed(packed, capped, ctx.max_downtime);
    let _ = commit_tx.send(packed.is_ok());
    let total = packed.as_ref().ok().map(|p| p.2);
    let legs = uploads_finishing(ctx, fan, &sent, total).await;
    Read {
        packed,
        legs,
        capped,
        post_failure,
    }
}

/// Wait for the uploads that go on after the read (a target slower than the disk, a spooled leg catching up);
/// meanwhile the bar says how much each target has been sent, so it never looks frozen.
pub(super) async fn uploads_finishing(
    ctx: &RunCtx<'_>,
    mut fan: tokio::task::JoinHandle<Vec<LegResult>>,
    sent: &[(String, Arc<AtomicU64>)],
    total: Option<u64>,
) -> Vec<LegResult> {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.tick().await;
    loop {
        tokio::select! {
            r = &mut fan => return r.unwrap_or_default(),
            _ = tick.tick() => {
                let now: Vec<(String, u64)> = sent
                    .iter()
                    .map(|(n, c)| (n.clone(), c.load(Ordering::Relaxed)))
                    .collect();
                ctx.env.progress.note(&uploading_note(&now, total));
            }
        }
    }
}

/// "uploading: offsite 12.0 MiB of 40.0 MiB, local done" — per target, what it was sent of the stored size.
fn uploading_note(sent: &[(String, u64)], total: Option<u64>) -> String {
    let parts: Vec<String> = sent
        .iter()
        .map(|(name, n)| match total {
            Some(t) if *n >= t => format!("{name} done"),
            Some(t) => format!("{name} {} of {}", human(*n), human(t)),
            None => format!("{name} {} sent", human(*n)),
        })
        .collect();
    format!("uploading: {}", parts.join(", "))
}

/// The first hook setting of this source's containers that could not be understood, as the source's error.
pub(super) fn hook_problems(src: &PlannedSource) -> Result<(), String> {
    match src
        .containers
        .iter()
        .find_map(|c| c.hooks.as_ref().and_then(|h| h.problem.clone()))
    {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

/// The containers of `src` whose hooks run: those with hooks that were running when planned. A container the
/// user paused cannot exec: its hooks are skipped with a warning.
fn hooked<'s>(
    ctx: &RunCtx<'_>,
    src: &'s PlannedSource,
    report: &mut SourceReport,
    phase: HookPhase,
) -> Vec<(&'s plan::PlannedContainer, &'s hooks::ContainerHooks)> {
    let mut out = Vec::new();
    for c in &src.containers {
        let Some(h) = c.hooks.as_ref() else { continue };
        if h.of(phase).is_none() {
            continue;
        }
        match c.state.as_str() {
            "running" => out.push((c, h)),
            "paused" => {
                let w = format!(
                    "container {} is paused: its {phase} hook was not run",
                    c.name
                );
                ctx.env.progress.warn(&format!("{}: {w}", src.name));
                report.warnings.push(w);
            }
            // Not running: nothing in it to make consistent.
            _ => {}
        }
    }
    out
}

/// Run the pre-backup hooks of `src`'s containers in order, noting in `ran` each container whose hook ran. A
/// failure with `hook-on-error = fail` stops there and is the source's error; with `continue` it is a warning.
pub(super) async fn pre_hooks(
    ctx: &RunCtx<'_>,
    src: &PlannedSource,
    ran: &mut BTreeSet<String>,
    report: &mut SourceReport,
) -> Result<(), String> {
    for (c, h) in hooked(ctx, src, report, HookPhase::PreBackup) {
        let Some(hook) = h.pre_backup.as_ref() else {
            continue;
        };
        let failed = run_hook(
            ctx,
            src,
            c,
            (HookPhase::PreBackup, hook),
            h,
            &ctx.env.cancel,
            report,
        )
        .await;
        ran.insert(c.id.clone());
        if let Some(why) = failed {
            if h.on_error == crate::config::OnError::Continue {
                let w = format!("{why} (hook-on-error = continue: backed up anyway)");
                ctx.env.progress.warn(&format!("{}: {w}", src.name));
                report.warnings.push(w);
            } else {
                return Err(format!(
                    "{why}; the source was not read (containers were not paused or stopped for it)"
                ));
            }
        }
    }
    Ok(())
}

/// Run the post-backup hooks of `src`'s containers: each one whose pre hook ran (`pre_ran`), and, when the
/// source was `read`, those without a pre hook. They get no cancel token: an interrupted run still puts its
/// apps back, within each hook's timeout. A failure is a warning; the first with `hook-on-error = fail` is
/// returned.
pub(super) async fn post_hooks(
    ctx: &RunCtx<'_>,
    src: &PlannedSource,
    pre_ran: &BTreeSet<String>,
    read: bool,
    report: &mut SourceReport,
) -> Option<String> {
    let mut failure = None;
    let never = CancellationToken::new();
    for (c, h) in hooked(ctx, src, report, HookPhase::PostBackup) {
        let Some(hook) = h.post_backup.as_ref() else {
            continue;
        };
        if !(pre_ran.contains(&c.id) || (read && h.pre_backup.is_none())) {
            continue;
        }
        let failed = run_hook(
            ctx,
            src,
            c,
            (HookPhase::PostBackup, hook),
            h,
            &never,
            report,
        )
        .await;
        if let Some(why) = failed {
            ctx.env.progress.warn(&format!("{}: {why}", src.name));
            report.warnings.push(why.clone());
            if h.on_error == crate::config::OnError::Fail && failure.is_none() {
                failure = Some(why);
            }
        }
    }
    failure
}

/// Run one container hook (saying so on the bar), record it and log its output; returns why it failed, if it did.
async fn run_hook(
    ctx: &RunCtx<'_>,
    src: &PlannedSource,
    c: &plan::PlannedContainer,
    (phase, hook): (HookPhase, &hooks::PlannedHook),
    h: &hooks::ContainerHooks,
    cancel: &CancellationToken,
    report: &mut SourceReport,
) -> Option<String> {
    ctx.env.progress.note(&format!(
        "{}: {phase} hook in container {}",
        src.name, c.name
    ));
    let journal = ctx.quiescer.journal();
    // A pre hook obliges its post hook: journaled before the pre hook starts, so a run killed from here on
    // leaves `recover` the post hook to run (a failed write poisons the journal: the exec below is refused).
    if let (HookPhase::PreBackup, Some(post)) = (phase, h.post_backup.as_ref()) {
        let owed = quiesce::Leftover::PostHook {
            container_id: c.id.clone(),
            container: c.name.clone(),
            command: post.command.to_string(),
            argv: post.command.to_argv(),
            user: post.user.clone(),
            timeout_ms: u64::try_from(h.timeout.as_millis()).unwrap_or(u64::MAX),
        };
        match journal.will_create(&owed) {
            Ok(seq) => {
                let mut owed = ctx
                    .owed_post_hooks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if let Some(old) = owed.insert(c.id.clone(), seq) {
                    journal.removed(old);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot journal the post-backup hook owed"),
        }
    }
    // The hook's command is journaled once the engine created it and before it starts.
    let exec_seq = std::sync::Mutex::new(None);
    let note = |exec_id: &str| -> Result<(), String> {
        let seq = journal
            .will_create(&quiesce::Leftover::HookExec {
                container_id: c.id.clone(),
                container: c.name.clone(),
                exec_id: exec_id.to_string(),
                phase: phase.to_string(),
                command: hook.command.to_string(),
            })
            .map_err(|e| e.to_string())?;
        *exec_seq.lock().unwrap_or_else(|p| p.into_inner()) = Some(seq);
        Ok(())
    };
    let run = hooks::run_container_hook(
        ctx.env.engine,
        (&c.id, &c.name),
        phase,
        hook,
        h.timeout,
        cancel,
        &note,
    )
    .await;
    if let Some(seq) = exec_seq.into_inner().unwrap_or_else(|p| p.into_inner()) {
        journal.removed(seq);
    }
    if phase == HookPhase::PostBackup {
        let owed = ctx
            .owed_post_hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&c.id);
        if let Some(seq) = owed {
            journal.removed(seq);
        }
    }
    hook_done(ctx, src, run, report)
}

/// Record a hook that ran and log its output (capped; info when it succeeded, a warning when not). Returns
/// why it failed, if it did.
fn hook_done(
    ctx: &RunCtx<'_>,
    src: &PlannedSource,
    run: hooks::HookRun,
    report: &mut SourceReport,
) -> Option<String> {
    let r = &run.record;
    let head = format!(
        "{}: {} hook in container {}",
        src.name, r.phase, r.container
    );
    if !run.output.is_empty() {
        let text = format!("{head} said:\n{}", run.output);
        if run.failure.is_some() {
            ctx.env.progress.warn(&text);
        } else {
            ctx.env.progress.note(&text);
        }
    }
    ctx.env.progress.note(&format!(
        "{head}: {} in {}",
        match (&run.failure, r.exit_code) {
            (None, _) => "ok".to_string(),
            (Some(_), Some(c)) => format!("exit code {c}"),
            (Some(_), None) => "failed".to_string(),
        },
        humantime::format_duration(Duration::from_millis(r.duration_ms))
    ));
    report.hooks.push(run.record);
    run.failure
}

/// The packer's outcome as the source sees it: its result, or why the read failed.
pub(super) fn judge_packed(
    packed: Result<Result<Packed, ArchiveError>, tokio::task::JoinError>,
    capped: bool,
    cap: Duration,
) -> Result<Packed, String> {
    match packed {
        // Even a read that ended just after the cap is discarded: the containers were already running again.
        _ if capped => Err(cap_error(cap)),
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err(e.to_string()),
        Err(join) if join.is_panic() => Err(
            "internal error: the packer panicked (containers were resumed); please report this"
                .to_string(),
        ),
        Err(join) => Err(format!("packer did not finish: {join}")),
    }
}

/// Start the packer on a blocking thread: walk (or the engine's tar, repacked) → tar → zstd → [age] → sha256 →
/// chunks into `tx`. The engine's archive is asked for when the packer first reads it: inside the hold.
pub(super) fn spawn_packer(
    ctx: &RunCtx<'_>,
    from: &ReadFrom,
    tx: mpsc::Sender<bytes::Bytes>,
    flag: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<Packed, ArchiveError>> {
    let level = ctx.archive.zstd_level;
    let threads = ctx.archive.zstd_threads;
    let progress = ctx.env.progress.clone();
    let enc = ctx.encryptor.clone();
    // Bounded memory: the bridge pulls one HTTP chunk at a time, when the repacker wants more.
    let input = match from {
        ReadFrom::Host(path) => Input::Host(path.clone()),
        ReadFrom::Engine(h) => Input::Engine {
            reader: tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(
                ctx.env.engine.helper_archive(&h.id),
            )),
            what: PathBuf::from(format!(
                "the Docker Engine's archive of volume {} (helper container {})",
                h.volume, h.name
            )),
        },
    };
    tokio::task::spawn_blocking(move || -> Result<Packed, ArchiveError> {
        let sink = ChunkSink::new(tx);
        let stored = crypto::StoredWriter::new(sink, enc.as_ref()).map_err(ArchiveError::Sink)?;
        let zw =
            archive::compress::zstd_encoder(stored, level, threads).map_err(ArchiveError::Sink)?;
        let opts = archive::pack::PackOptions {
            cancel: Some(&flag),
        };
        let (rep, zw) = match input {
            Input::Host(path) => archive::pack::pack(&path, zw, &opts, &mut |n| progress.inc(n))?,
            Input::Engine { reader, what } => {
                archive::repack::repack(reader, HELPER_TOP, &what, zw, &opts, &mut |n| {
                    progress.inc(n)
                })?
            }
        };
        let stored = zw.finish().map_err(ArchiveError::Sink)?;
        let sink = stored.finish().map_err(ArchiveError::Sink)?;
        let (sha, size) = sink.finish().map_err(ArchiveError::Sink)?;
        Ok((rep, sha, size))
    })
}

/// What the packer reads.
enum Input {
    Host(PathBuf),
    Engine {
        reader: tokio_util::io::SyncIoBridge<
            tokio_util::io::StreamReader<docker::helper::ArchiveStream, bytes::Bytes>,
        >,
        what: PathBuf,
    },
}

/// The base name of [`docker::helper::HELPER_MOUNT`]: the engine's tar names begin with it.
const HELPER_TOP: &[u8] = b"src";

/// How a source is read: its host path, or through the engine from a helper container.
pub(super) enum ReadFrom {
    Host(PathBuf),
    Engine(HelperRef),
}

/// A helper container created for one source (journaled as `seq` before it was created).
pub(super) struct HelperRef {
    pub name: String,
    pub id: String,
    pub volume: String,
    seq: u64,
}

impl ReadFrom {
    pub(super) fn via(&self) -> ReadVia {
        match self {
            ReadFrom::Host(_) => ReadVia::Host,
            ReadFrom::Engine(_) => ReadVia::Engine,
        }
    }
}

/// How `src` will be read under `data_path` (`[docker] data-path`): a bind mount and a readable host path (with
/// `auto`) from the host, a volume through the engine when its host path is not readable here (or `engine`).
/// `Err`: the host path is needed (`host`, or a bind mount) and not readable, with why and the fix.
pub fn read_via(data_path: DataPath, src: &PlannedSource) -> Result<ReadVia, String> {
    let volume = src.kind == SourceKind::Volume;
    match (data_path, volume) {
        (DataPath::Engine, true) => Ok(ReadVia::Engine),
        (DataPath::Auto, true) => Ok(if readable(&src.path).is_ok() {
            ReadVia::Host
        } else {
            ReadVia::Engine
        }),
        (DataPath::Host, true) => readable(&src.path).map(|()| ReadVia::Host).map_err(|why| {
            format!(
                "{why}; [docker] data-path = \"host\" forbids reading it through the engine (set data-path = \"auto\" \
                 or \"engine\" to read it from a helper container)"
            )
        }),
        // Bind mounts are read from the host path whatever the data path (a remote engine's host paths are not
        // here, and discovery leaves such binds out already).
        (_, false) => readable(&src.path).map(|()| ReadVia::Host),
    }
}

/// Helper containers made by this process, for unique names within a run.
static HELPERS_MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Choose how `src` is read and, through the engine, create its helper container: the image first (never
/// pulled), then the journal entry, then the container. Before anything is quiesced: a failure touches nothing.
pub(super) async fn prepare_read(
    ctx: &RunCtx<'_>,
    src: &PlannedSource,
) -> Result<ReadFrom, String> {
    match read_via(ctx.env.config.data_path, src)? {
        ReadVia::Host => return Ok(ReadFrom::Host(src.path.clone())),
        ReadVia::Engine => {}
    }
    let engine = ctx.env.engine;
    let users: Vec<String> = src.containers.iter().map(|c| c.id.clone()).collect();
    let image = engine
        .helper_image(ctx.env.config.helper_image.as_deref(), &src.name, &users)
        .await
        .map_err(|e| format!("cannot read volume {} through the engine: {e}", src.name))?;
    // The volume the helper mounts: the source's own, or the one its contents were moved to (`read_volume`).
    let volume = src.read_volume.as_deref().unwrap_or(&src.name);
    let run = ctx.id.to_string();
    let n = HELPERS_MADE.fetch_add(1, Ordering::Relaxed);
    let name = docker::helper::helper_name(&run, n);
    let journal = ctx.quiescer.journal();
    let seq = journal
        .will_create(&quiesce::Leftover::Helper {
            name: name.clone(),
            volume: volume.to_string(),
        })
        .map_err(|e| {
            format!(
                "cannot journal the helper container for volume {}: {e}",
                src.name
            )
        })?;
    let access = docker::helper::Access::Read;
    match quiesce::create_helper(engine, journal, seq, &name, volume, &image, &run, access).await {
        Ok(id) => {
            ctx.env.progress.note(&format!(
                "{}: reading through the engine (helper container {name})",
                src.name
            ));
            Ok(ReadFrom::Engine(HelperRef {
                name,
                id,
                volume: volume.to_string(),
                seq,
            }))
        }
        Err(e) => Err(format!(
            "cannot read volume {} through the engine: {e}",
            src.name
        )),
    }
}

/// Removes a helper container if the source's code path never got to ([`end_read`]): a panic unwinding
/// through it. Best effort on the runtime (a `Drop` cannot wait); the journal entry stays for `recover`.
pub(super) struct HelperGuard {
    armed: Option<(Engine, String)>,
}

impl HelperGuard {
    pub(super) fn new(ctx: &RunCtx<'_>, from: &ReadFrom) -> HelperGuard {
        HelperGuard {
            armed: match from {
                ReadFrom::Engine(h) => Some((ctx.env.engine.clone(), h.name.clone())),
                ReadFrom::Host(_) => None,
            },
        }
    }
}

impl Drop for HelperGuard {
    fn drop(&mut self) {
        if let (Some((engine, name)), Ok(rt)) =
            (self.armed.take(), tokio::runtime::Handle::try_current())
        {
            rt.spawn(async move {
                let _ = engine.remove_helper(&name).await;
            });
        }
    }
}

/// The read is over (whatever happened): remove the helper container, if any (a failure is a warning, and
/// the journal keeps it for `recover`).
pub(super) async fn end_read(
    ctx: &RunCtx<'_>,
    from: ReadFrom,
    mut guard: HelperGuard,
    report: &mut SourceReport,
) {
    guard.armed = None;
    let ReadFrom::Engine(h) = from else { return };
    let journal = ctx.quiescer.journal();
    match quiesce::remove_helper(ctx.env.engine, journal, h.seq, &h.name).await {
        Ok(()) => {}
        Err(e) => {
            let w = format!(
                "helper container {} could not be removed: {e} (`voltar recover` removes it)",
                h.name
            );
            ctx.env.progress.reported(&format!("{}: {w}", report.name));
            report.warnings.push(w);
        }
    }
}

/// Resume what was held, recording each container's action and downtime; a failure to resume is a warning.
async fn release(ctx: &RunCtx<'_>, held: Held, report: &mut SourceReport) {
    let released = ctx.quiescer.release(held).await;
    ctx.env.progress.released();
    for r in &released.released {
        if let Some(c) = report.containers.iter_mut().find(|c| c.id == r.id) {
            c.action = r.action;
            c.downtime_ms = r.downtime_ms();
        }
    }
    report
        .services
        .extend(released.services.iter().map(super::service_record));
    for e in &released.errors {
        report.warnings.push(e.to_string());
        ctx.env.progress.reported(&e.to_string());
    }
}

/// Note the streams that went through a spool file, mark the targets that failed (not the spool), and say in a
/// spool failure's error which stream was spooled and why.
pub(super) fn settle_legs(
    ctx: &RunCtx<'_>,
    mut legs: Vec<LegResult>,
    report: &mut SourceReport,
) -> Vec<LegResult> {
    let names = &ctx.targets.names;
    for l in &legs {
        if l.spooled > 0 {
            ctx.env.progress.note(&format!(
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
    legs
}

/// The error of a source whose packer failed (`e`), with each target's error recorded. When every target
/// failed, the packer only saw a closed pipe: the targets' errors are the cause.
pub(super) fn pack_failed(
    ctx: &RunCtx<'_>,
    e: String,
    capped: bool,
    legs: &[LegResult],
    report: &mut SourceReport,
) -> String {
    let mut every_target_failed = !legs.is_empty() && !capped;
    for l in legs {
        match &l.result {
            Err(le) if !matches!(le, storage::StorageError::Cancelled { .. }) => {
                report
                    .target_errors
                    .insert(ctx.targets.names[l.target].clone(), le.to_string());
            }
            _ => every_target_failed = false,
        }
    }
    if every_target_failed {
        not_stored(&report.target_errors)
    } else {
        e
    }
}

/// Take the packer's counts, size, warnings and entries not archived into the report (and say them).
pub(super) fn take_pack_report(
    ctx: &RunCtx<'_>,
    src: &PlannedSource,
    packed: &Packed,
    report: &mut SourceReport,
) {
    let progress = &ctx.env.progress;
    let (pack_report, _, size) = packed;
    report.counts = pack_report.counts.clone();
    report.stored_bytes = *size;
    report.warnings.extend(pack_report.warnings.iter().cloned());
    if pack_report.counts.files == 0 && pack_report.counts.bytes == 0 {
        // Row 10: an empty source is worth a look (a volume mounted at the wrong path, data moved away).
        let w = "source is empty: no files were found (is this the right volume?)".to_string();
        progress.reported(&format!("{}: {w}", src.name));
        report.warnings.push(w);
    }
    if report.read_via == Some(ReadVia::Engine) {
        // Once per source: what the engine's tar does not carry (`archive::repack`).
        let w = format!(
            "read through the engine: {} not carried",
            archive::repack::NOT_CARRIED
        );
        progress.reported(&format!("{}: {w}", src.name));
        report.warnings.push(w);
    }
    for w in &pack_report.warnings {
        progress.reported(&format!("{}: {w}", src.name));
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
        progress.reported(&format!("{}: NOT ARCHIVED: {w}", src.name));
    }
    // Past what the report lists: the log is the only place these are named.
    for w in pack_report.not_archived.iter().skip(NOT_ARCHIVED_LISTED) {
        progress.warn(&format!("{}: NOT ARCHIVED: {w}", src.name));
    }
}

/// Per leg: the record the target's manifest lists when the upload was stored, else the target's error.
pub(super) fn record_legs(
    ctx: &RunCtx<'_>,
    src: &PlannedSource,
    object: &str,
    legs: Vec<LegResult>,
    packed: &Packed,
    report: &mut SourceReport,
) {
    let (pack_report, sha256, size) = packed;
    for l in legs {
        let i = l.target;
        match l.result {
            Ok(_meta) => {
                let record = SourceRecord {
                    name: src.name.clone(),
                    kind: src.kind,
                    path: src.path.to_string_lossy().into_owned(),
                    driver: src.driver.clone(),
                    driver_opts: src.driver_opts.clone(),
                    labels: src.labels.clone(),
                    object: object.to_string(),
                    counts: pack_report.counts.clone(),
                    stored_bytes: *size,
                    sha256: sha256.clone(),
                    containers: report.containers.clone(),
                    read_ms: report.read_ms,
                    warnings: report.warnings.clone(),
                    not_archived: report.not_archived.clone(),
                    not_archived_count: report.not_archived_count,
                    hooks: report.hooks.clone(),
                    dump: None,
                    services: report.services.clone(),
                    read_via: report.read_via,
                };
                report.records.insert(i, record);
            }
            Err(e) => {
                report
                    .target_errors
                    .insert(ctx.targets.names[i].clone(), e.to_string());
            }
        }
    }
}

/// The source's status from what was stored where (setting its error when it is not ok or partial).
pub(super) fn status(report: &mut SourceReport) -> Status {
    if report.records.is_empty() {
        report.error = Some("not stored on any target".into());
        Status::Failed
    } else if report.not_archived_count > 0 {
        report.error = Some(incomplete(report));
        Status::Incomplete
    } else if report.target_errors.is_empty() {
        Status::Ok
    } else {
        Status::Partial
    }
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
pub(super) fn target_failed(e: &storage::StorageError) -> bool {
    !matches!(e, storage::StorageError::Cancelled { .. })
}

/// The error of a source whose read reached `[quiesce] max-downtime`.
pub(super) fn cap_error(cap: Duration) -> String {
    format!(
        "reading took longer than max-downtime ({}) while containers were held: aborted, nothing was stored, \
         the containers were resumed (raise `max-downtime` in [quiesce], or quiesce this source with `none`)",
        humantime::format_duration(cap)
    )
}

/// "not stored: <each target's error>" (the errors name their target).
pub(super) fn not_stored(target_errors: &BTreeMap<String, String>) -> String {
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

#[cfg(test)]
mod upload_note_tests {
    use super::uploading_note;

    #[test]
    fn says_what_each_target_was_sent_of_the_whole() {
        let sent = vec![
            ("offsite".to_string(), 12 << 20),
            ("local".to_string(), 40 << 20),
        ];
        assert_eq!(
            uploading_note(&sent, Some(40 << 20)),
            "uploading: offsite 12.0 MiB of 40.0 MiB, local done"
        );
        assert_eq!(
            uploading_note(&sent[..1], None),
            "uploading: offsite 12.0 MiB sent"
        );
    }
}
