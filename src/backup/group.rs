//! A quiesce group's window (issue 13): the sources of one [`plan::QuiesceGroup`] are read inside ONE quiesce
//! window, so volumes that must agree with each other (a database and the files it points to) are one instant.
//!
//! The window, in order: every member is checked (readable, hooks understood) and gets its uploads opened; the
//! pre-backup hooks of the group's containers run once each; the containers of every member are held once (the
//! union, each with the strongest action any member asks of it, in dependency order by `quiesce::order`); the
//! members are read one after another, each into its own archive with its own uploads; then the containers are
//! resumed once, the post-backup hooks run once, and only then does each member wait for its uploads. Nothing
//! waits on a target while the window is open: as for a lone source (`source.rs`), a writer that falls behind is
//! fed from a spool file after the release.
//!
//! Failures, decided so that the group stays one instant and a member still is its own source:
//! * A member that cannot be read at all (its path, no target took its upload) fails alone before the window;
//!   the others are read.
//! * A hook setting that cannot be understood, or a pre-backup hook with `hook-on-error = fail` that fails, fails
//!   the whole group before anything is held: the hook is what makes the group's app consistent, and reading the
//!   others without it would store an instant the user did not ask for. Post hooks still run where a pre hook ran.
//! * A member whose read fails (an I/O error, every target failing) fails alone; the window goes on with the
//!   next member.
//! * `max-downtime` caps the whole window, not each read: the member being read when it is reached is aborted,
//!   the members not read yet fail without being read, the containers are resumed at once; the members read
//!   before are kept (each one is whole and was read while everything was held).
//! * A post-backup hook with `hook-on-error = fail` that fails makes every stored member `partial`.
//!
//! Each member's manifest record shows the containers of *that* member with the window's downtime, and the hooks
//! of those containers. A group with one selected source is read as a lone source (`source.rs`).

use super::source::{
    cap_error, end_read, hook_problems, judge_packed, lock_hooked, not_stored, open_legs,
    pack_failed, post_hooks, pre_hooks, prepare_read, quiesce, record_legs, settle_legs,
    start_read, status, take_pack_report, uploads_finishing, HelperGuard, Packed, ReadFrom,
    Started,
};
use super::*;

/// A member whose read has started: what the rest of the window needs to finish it.
struct Reading {
    /// Index into the group's members.
    member: usize,
    object: String,
    fan: tokio::task::JoinHandle<Vec<LegResult>>,
    commit_tx: oneshot::Sender<bool>,
    sent: Vec<(String, Arc<AtomicU64>)>,
    packer: tokio::task::JoinHandle<Result<Packed, ArchiveError>>,
    /// The packer's outcome, when it ended inside the window (`None`: the cap was reached).
    packed: Option<Result<Result<Packed, ArchiveError>, tokio::task::JoinError>>,
    /// Polled by the packer: set to stop it (the window's deadline, or the run cancelled).
    stop: pipeline::StopFlag,
    started: Instant,
}

/// Back up the `members` of `group` in one quiesce window. One report per member, in the members' order.
/// The helper containers of members read through the engine are removed after the window, on every path.
pub(super) async fn back_up_group(
    ctx: &RunCtx<'_>,
    group: &plan::QuiesceGroup,
    members: &[&PlannedSource],
) -> Vec<SourceReport> {
    let mut froms: Vec<(usize, ReadFrom, HelperGuard)> = Vec::new();
    let mut reports = window(ctx, group, members, &mut froms).await;
    for (i, from, guard) in froms {
        end_read(ctx, from, guard, &mut reports[i]).await;
    }
    reports
}

/// [`back_up_group`], with each member's way of reading (and helper container) put in `froms` as it is made.
async fn window(
    ctx: &RunCtx<'_>,
    group: &plan::QuiesceGroup,
    members: &[&PlannedSource],
    froms: &mut Vec<(usize, ReadFrom, HelperGuard)>,
) -> Vec<SourceReport> {
    let mut reports: Vec<SourceReport> = members.iter().map(|s| SourceReport::planned(s)).collect();
    ctx.env.progress.phase(&format!("group {}", group.name));
    ctx.env.progress.expect_bytes(None);

    // A hook setting that cannot be understood fails the group before anything is opened or touched.
    let everyone = window_source(group, members);
    if let Err(why) = hook_problems(&everyone) {
        for r in &mut reports {
            r.error = Some(format!("{why} (group {})", group.name));
        }
        return reports;
    }
    // Each member readable and with its uploads open, or failed on its own.
    let mut open: Vec<(usize, Vec<Leg>, String)> = Vec::new();
    for (i, src) in members.iter().enumerate() {
        let from = match prepare_read(ctx, src).await {
            Ok(f) => f,
            Err(why) => {
                reports[i].error = Some(why);
                continue;
            }
        };
        reports[i].read_via = Some(from.via());
        let guard = HelperGuard::new(ctx, &from);
        froms.push((i, from, guard));
        let object = catalog::object_name(&src.name, ctx.encryptor.is_some());
        let legs = open_legs(ctx, &catalog::object_key(&ctx.id, &object), &mut reports[i]).await;
        if legs.is_empty() {
            reports[i].error = Some(not_stored(&reports[i].target_errors));
            continue;
        }
        open.push((i, legs, object));
    }
    if open.is_empty() {
        return reports;
    }
    let readers: Vec<&PlannedSource> = open.iter().map(|(i, _, _)| members[*i]).collect();
    let window = window_source(group, &readers);
    let mut wreport = SourceReport::planned(&window);
    let fail_all =
        |reports: &mut Vec<SourceReport>, open: &[(usize, Vec<Leg>, String)], why: &str| {
            for (i, _, _) in open {
                reports[*i].error = Some(why.to_string());
            }
        };

    let hook_locks = match lock_hooked(ctx, &window).await {
        Ok(l) => l,
        Err(e) => {
            let why = format!("running hooks: {e}");
            fail_all(&mut reports, &open, &why);
            abort_all(open).await;
            return reports;
        }
    };
    let mut pre_ran = BTreeSet::new();
    if let Err(why) = pre_hooks(ctx, &window, &mut pre_ran, &mut wreport).await {
        post_hooks(ctx, &window, &pre_ran, false, &mut wreport).await;
        share(&wreport, members, &mut reports);
        let why = format!("{why} (group {}: none of its sources was read)", group.name);
        fail_all(&mut reports, &open, &why);
        abort_all(open).await;
        return reports;
    }
    let held = match quiesce(ctx, &window, &hook_locks).await {
        Ok(h) => h,
        Err(e) => {
            post_hooks(ctx, &window, &pre_ran, false, &mut wreport).await;
            share(&wreport, members, &mut reports);
            let why = format!("quiescing containers: {e}");
            fail_all(&mut reports, &open, &why);
            abort_all(open).await;
            return reports;
        }
    };

    // The window: read every member; `max-downtime` is one deadline for all of them.
    let holding = !held.is_empty();
    let deadline = tokio::time::Instant::now() + ctx.max_downtime;
    let mut capped = false;
    let mut readings = Vec::new();
    for (i, legs, object) in open {
        let interrupted = ctx.env.cancel.is_cancelled();
        if capped || interrupted {
            reports[i].error = Some(if interrupted {
                "not read: interrupted".to_string()
            } else {
                format!(
                    "not read: the group {}'s quiesce window reached max-downtime before this source: {}",
                    group.name,
                    cap_error(ctx.max_downtime)
                )
            });
            for leg in legs {
                let _ = leg.writer.abort().await;
            }
            continue;
        }
        ctx.env.progress.phase(&format!(
            "{} {} (group {})",
            members[i].kind, members[i].name, group.name
        ));
        let from = froms
            .iter()
            .find(|(m, _, _)| *m == i)
            .map(|(_, f, _)| f)
            .expect("every open member has its way of reading");
        let mut r = start_member(ctx, from, i, legs, object, holding);
        r.packed = if holding {
            match tokio::time::timeout_at(deadline, &mut r.packer).await {
                Ok(p) => Some(p),
                Err(_) => {
                    r.stop.set();
                    capped = true;
                    None
                }
            }
        } else {
            Some((&mut r.packer).await)
        };
        if r.packed.is_some() {
            reports[i].read_ms = r.started.elapsed().as_millis() as u64;
        }
        readings.push(r);
    }

    // Resume once, right away; then the post hooks (they need the containers running).
    let released = ctx.quiescer.release(held).await;
    ctx.env.progress.released();
    for (i, src) in members.iter().enumerate() {
        for r in &released.released {
            if let Some(c) = reports[i].containers.iter_mut().find(|c| c.id == r.id) {
                c.action = r.action;
                c.downtime_ms = r.downtime_ms();
            }
        }
        // A service is the member's whose volume its tasks use.
        reports[i].services.extend(
            released
                .services
                .iter()
                .filter(|s| src.services.iter().any(|p| p.id == s.id))
                .map(super::service_record),
        );
        // A container that could not be resumed is a warning of the members it belongs to.
        for e in &released.errors {
            let mine = match e {
                quiesce::QuiesceError::Resume { id, .. } => {
                    src.containers.iter().any(|c| &c.id == id)
                }
                _ => true,
            };
            if mine {
                reports[i].warnings.push(e.to_string());
            }
        }
    }
    for e in &released.errors {
        ctx.env.progress.reported(&e.to_string());
    }
    let post_failure = post_hooks(ctx, &window, &pre_ran, true, &mut wreport).await;
    share(&wreport, members, &mut reports);
    drop(hook_locks);

    // Each member's uploads finish after the window, and each is judged on its own.
    for r in readings {
        let i = r.member;
        let cut = r.packed.is_none();
        let packed = match r.packed {
            Some(p) => p,
            None => r.packer.await,
        };
        if cut {
            reports[i].read_ms = r.started.elapsed().as_millis() as u64;
        }
        drop(r.stop);
        let packed = judge_packed(packed, cut, ctx.max_downtime);
        let _ = r.commit_tx.send(packed.is_ok());
        let total = packed.as_ref().ok().map(|p| p.2);
        let legs = uploads_finishing(ctx, r.fan, &r.sent, total).await;
        let report = &mut reports[i];
        let legs = settle_legs(ctx, legs, report);
        let packed = match packed {
            Ok(p) => p,
            Err(e) => {
                report.error = Some(pack_failed(ctx, e, cut, &legs, report));
                continue;
            }
        };
        take_pack_report(ctx, members[i], &packed, report);
        record_legs(ctx, members[i], &r.object, legs, &packed, report);
        report.status = status(report);
        if let (Some(why), Status::Ok) = (&post_failure, report.status) {
            report.status = Status::Partial;
            report.error = Some(format!("{why} (the source itself was stored)"));
        }
    }
    reports
}

/// Start reading member `member` (from `from`) into its `legs` ([`start_read`]).
fn start_member(
    ctx: &RunCtx<'_>,
    from: &ReadFrom,
    member: usize,
    legs: Vec<Leg>,
    object: String,
    holding: bool,
) -> Reading {
    let Started {
        fan,
        commit_tx,
        sent,
        packer,
        stop,
        started,
    } = start_read(ctx, from, legs, holding);
    Reading {
        member,
        object,
        fan,
        commit_tx,
        sent,
        packer,
        packed: None,
        stop,
        started,
    }
}

/// The window as one source for the hooks and the hold: every container of the members, once, each with the
/// strongest action a member asks of it (stop over pause over none).
fn window_source(group: &plan::QuiesceGroup, members: &[&PlannedSource]) -> PlannedSource {
    let rank = |a: QuiesceAction| match a {
        QuiesceAction::None => 0,
        QuiesceAction::Pause => 1,
        QuiesceAction::Stop => 2,
    };
    let mut containers: Vec<plan::PlannedContainer> = Vec::new();
    for s in members {
        for c in &s.containers {
            match containers.iter_mut().find(|x| x.id == c.id) {
                Some(x) if rank(c.action) > rank(x.action) => *x = c.clone(),
                Some(_) => {}
                None => containers.push(c.clone()),
            }
        }
    }
    // Swarm services of every member, each once (scaled to 0 for the whole window).
    let mut services: Vec<plan::PlannedService> = Vec::new();
    for s in members {
        for svc in &s.services {
            if !services.iter().any(|x| x.id == svc.id) {
                services.push(svc.clone());
            }
        }
    }
    let first = members.first().copied();
    PlannedSource {
        read_volume: None,
        name: format!("group {}", group.name),
        kind: first.map(|s| s.kind).unwrap_or(SourceKind::Volume),
        path: first.map(|s| s.path.clone()).unwrap_or_default(),
        driver: None,
        driver_opts: BTreeMap::new(),
        labels: BTreeMap::new(),
        containers,
        services,
        dump: None,
        reason: group.from.clone(),
    }
}

/// Give each member the hook records of its own containers, and the window's warnings (hooks run once for the
/// whole group).
fn share(window: &SourceReport, members: &[&PlannedSource], reports: &mut [SourceReport]) {
    for (src, report) in members.iter().zip(reports.iter_mut()) {
        report.hooks = window
            .hooks
            .iter()
            .filter(|h| src.containers.iter().any(|c| c.name == h.container))
            .cloned()
            .collect();
        for w in &window.warnings {
            if !report.warnings.contains(w) {
                report.warnings.push(w.clone());
            }
        }
    }
}

/// Abort the uploads of members that will not be read.
async fn abort_all(open: Vec<(usize, Vec<Leg>, String)>) {
    for (_, legs, _) in open {
        for leg in legs {
            let _ = leg.writer.abort().await;
        }
    }
}
