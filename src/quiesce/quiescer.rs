//! Hold and release: quiesce a plan's containers under their quiesce locks, journaled, and put them back.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::order::{stop_order, Node};
use super::{Journal, QuiesceError};
use crate::catalog::QuiesceAction;
use crate::docker::{ContainerInfo, ContainerState, DockerError, Runtime, ServiceMode};
use crate::lock::ContainerLock;

/// How long `hold` waits for another voltar run to resume a container it holds before failing that source: the
/// 10 minutes issue 8 sets as the default cap on one container's downtime (`[quiesce] max-downtime`); a run that
/// holds a container longer than that is in trouble itself, and waiting on it longer would only stack runs up.
pub const QUIESCE_WAIT: Duration = Duration::from_secs(10 * 60);

/// How often a waiting `hold` looks whether the other run has resumed the container.
const QUIESCE_POLL: Duration = Duration::from_millis(200);

/// One container to quiesce, as decided by the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub id: String,
    pub name: String,
    /// `Pause` or `Stop`; `None` is accepted and means "leave it running".
    pub action: QuiesceAction,
    /// Grace period before the engine kills a stopping container.
    pub stop_timeout: Duration,
}

/// A Swarm service to scale to 0 while a source is read (instead of stopping its task containers, which the
/// orchestrator would replace at once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHold {
    pub id: String,
    pub name: String,
    /// The task containers' stop grace period: how long their tasks may take to go down, on top of
    /// [`SERVICE_DOWN_MARGIN`].
    pub stop_timeout: Duration,
}

/// How long, beyond the tasks' stop grace period, `scale_down` waits for a service's task containers on this
/// engine to be down before it gives up (and scales the service back).
pub const SERVICE_DOWN_MARGIN: Duration = Duration::from_secs(60);

/// What `hold` did: the containers it quiesced, and the ones it found not running and left alone.
#[must_use = "containers stay paused or stopped until `Quiescer::release` is called"]
#[derive(Debug, Default)]
pub struct Held {
    held: Vec<HeldContainer>,
    skipped: Vec<Skipped>,
    services: Vec<HeldService>,
}

/// A Swarm service `scale_down` scaled to 0.
#[derive(Clone, Debug)]
pub struct HeldService {
    pub id: String,
    pub name: String,
    /// The replica count it had, and gets back.
    pub replicas: u64,
    seq: u64,
    since: Instant,
}

/// A container `hold` paused or stopped.
#[derive(Clone, Debug)]
pub struct HeldContainer {
    pub id: String,
    pub name: String,
    pub action: QuiesceAction,
    seq: u64,
    since: Instant,
}

/// A container `hold` left alone because it was not running (or its action is `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub id: String,
    pub name: String,
    pub state: ContainerState,
}

impl Held {
    /// The containers quiesced, in the order they were quiesced.
    pub fn containers(&self) -> &[HeldContainer] {
        &self.held
    }
    /// The containers left alone, with the state they were found in.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
    /// The services scaled to 0, in the order they were scaled.
    pub fn services(&self) -> &[HeldService] {
        &self.services
    }
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.services.is_empty()
    }
    /// Take over what `other` holds (released after what `self` held before).
    pub fn absorb(&mut self, mut other: Held) {
        self.held.append(&mut other.held);
        self.skipped.append(&mut other.skipped);
        self.services.append(&mut other.services);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.is_empty() {
            let names: Vec<&str> = self
                .held
                .iter()
                .map(|h| h.name.as_str())
                .chain(self.services.iter().map(|s| s.name.as_str()))
                .collect();
            tracing::error!(containers = ?names, "quiesced containers dropped without release (bug); they stay in the journal");
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Unpaused or started by us.
    Resumed,
    /// Someone else already brought it back.
    AlreadyRunning,
    /// Removed while held: nothing to resume.
    Gone,
    /// Someone else put it into another state meanwhile (e.g. stopped a paused container): left alone.
    LeftAlone(ContainerState),
}

/// One container after release.
#[derive(Clone, Debug)]
pub struct Released {
    pub id: String,
    pub name: String,
    pub action: QuiesceAction,
    /// From just before the pause/stop call to just after the unpause/start call returned.
    pub downtime: Duration,
    pub outcome: ReleaseOutcome,
}

impl Released {
    pub fn downtime_ms(&self) -> u64 {
        u64::try_from(self.downtime.as_millis()).unwrap_or(u64::MAX)
    }
}

/// One service after release.
#[derive(Clone, Debug)]
pub struct ReleasedService {
    pub id: String,
    pub name: String,
    pub replicas: u64,
    /// From just before the scale-down to just after the scale-up was accepted (its tasks start after that).
    pub downtime: Duration,
    pub outcome: ServiceOutcome,
}

/// What became of a service voltar scaled to 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceOutcome {
    /// Scaled back to its replica count.
    ScaledBack,
    /// Someone else changed its replica count meanwhile (to this): left alone.
    LeftAlone(u64),
    /// Removed meanwhile.
    Gone,
}

/// What `release` did; it tries every container, so there may be several errors.
#[derive(Debug, Default)]
pub struct ReleaseReport {
    pub released: Vec<Released>,
    pub services: Vec<ReleasedService>,
    pub errors: Vec<QuiesceError>,
}

impl ReleaseReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
    /// Downtime of a container by id, if it was released.
    pub fn downtime_of(&self, id: &str) -> Option<Duration> {
        self.released
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.downtime)
    }
}

/// Applies holds and releases them, journaling every change. See the module docs.
pub struct Quiescer<'a> {
    runtime: &'a dyn Runtime,
    journal: &'a Journal,
    /// Cuts a wait for another run's container short (SIGINT/SIGTERM).
    cancel: Option<CancellationToken>,
    /// How long to wait for another run to resume a container.
    wait: Duration,
}

/// Quiesce locks a run keeps on containers over more than one hold: a source's hooked containers, from before
/// their pre-backup hooks until after their post-backup hooks, so that another run neither runs its hooks in
/// between (one run's post hook removing what the other's pre hook wrote while it is read) nor finds the
/// container paused by this run when it wants to exec. Dropping it lets the containers go.
#[derive(Debug, Default)]
pub struct ContainerLocks(BTreeMap<String, ContainerLock>);

impl ContainerLocks {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How one hold ended.
enum Step {
    Held(HeldContainer),
    Skipped(Skipped),
}

impl<'a> Quiescer<'a> {
    pub fn new(runtime: &'a dyn Runtime, journal: &'a Journal) -> Quiescer<'a> {
        Quiescer {
            runtime,
            journal,
            cancel: None,
            wait: QUIESCE_WAIT,
        }
    }

    /// Stop waiting for other runs' containers when `token` is cancelled.
    pub fn cancel_on(mut self, token: CancellationToken) -> Quiescer<'a> {
        self.cancel = Some(token);
        self
    }

    /// Wait at most `wait` (instead of [`QUIESCE_WAIT`]) for another run to resume a container.
    pub fn wait_for_others(mut self, wait: Duration) -> Quiescer<'a> {
        self.wait = wait;
        self
    }

    /// The run's crash journal (hooks journal their commands and the post hooks they owe in it).
    pub fn journal(&self) -> &Journal {
        self.journal
    }

    /// Take the quiesce lock of every container `holds` may change, in id order, waiting (bounded) for other
    /// runs that hold one. Nothing is touched yet, so a wait never extends a pause or stop of this run.
    async fn lock_all(
        &self,
        holds: &[Hold],
        already: &ContainerLocks,
    ) -> Result<BTreeMap<String, ContainerLock>, QuiesceError> {
        let wanted: BTreeMap<&str, &str> = holds
            .iter()
            .filter(|h| h.action != QuiesceAction::None && !already.0.contains_key(&h.id))
            .map(|h| (h.id.as_str(), h.name.as_str()))
            .collect();
        let deadline = Instant::now() + self.wait;
        let mut locks = BTreeMap::new();
        for (id, name) in wanted {
            let mut announced = false;
            let lock = loop {
                match ContainerLock::try_acquire(self.journal.state_dir(), id)? {
                    Ok(l) => break l,
                    Err(pid) => {
                        if Instant::now() >= deadline {
                            return Err(QuiesceError::Busy {
                                id: id.to_string(),
                                name: name.to_string(),
                                pid,
                                waited: self.wait,
                            });
                        }
                        if !announced {
                            announced = true;
                            tracing::warn!(
                                "container {name} is held by another voltar run (pid {pid}); waiting up to {} for it to resume it",
                                humantime::format_duration(self.wait)
                            );
                        }
                        let nap = tokio::time::sleep(QUIESCE_POLL);
                        match &self.cancel {
                            Some(c) => tokio::select! {
                                _ = c.cancelled() => {
                                    return Err(QuiesceError::Interrupted { name: name.to_string() })
                                }
                                _ = nap => {}
                            },
                            None => nap.await,
                        }
                    }
                }
            };
            locks.insert(id.to_string(), lock);
        }
        Ok(locks)
    }

    /// Quiesce `holds`: dependents before what they depend on (compose `depends_on`, network mode
    /// `container:`), otherwise in the given order. Only containers running right now are touched. On the first failure the
    /// containers already quiesced are resumed (in reverse order) before the error is returned.
    pub async fn hold(&self, holds: &[Hold]) -> Result<Held, QuiesceError> {
        self.hold_locked(holds, &ContainerLocks::default()).await
    }

    /// Take the quiesce locks of `containers` (id, name) and keep them in the returned value, waiting (bounded,
    /// as `hold` does) for other runs that hold one. Nothing is touched.
    pub async fn lock_containers(
        &self,
        containers: &[(String, String)],
    ) -> Result<ContainerLocks, QuiesceError> {
        let holds: Vec<Hold> = containers
            .iter()
            .map(|(id, name)| Hold {
                id: id.clone(),
                name: name.clone(),
                action: QuiesceAction::Pause,
                stop_timeout: Duration::ZERO,
            })
            .collect();
        Ok(ContainerLocks(
            self.lock_all(&holds, &ContainerLocks::default()).await?,
        ))
    }

    /// [`hold`](Self::hold), for containers some of which this run has locked already (`locked`, kept by the
    /// caller past the release).
    pub async fn hold_locked(
        &self,
        holds: &[Hold],
        locked: &ContainerLocks,
    ) -> Result<Held, QuiesceError> {
        let mut locks = self.lock_all(holds, locked).await?;
        let ordered = self.dependency_order(holds).await;
        let mut held = Held::default();
        for h in ordered {
            match self.hold_one(h, locks.remove(&h.id)).await {
                Ok(Step::Held(c)) => held.held.push(c),
                Ok(Step::Skipped(s)) => held.skipped.push(s),
                Err(mut err) => {
                    let report = self.release(std::mem::take(&mut held)).await;
                    let mut failed: Vec<String> = report
                        .errors
                        .iter()
                        .filter_map(|e| match e {
                            QuiesceError::Resume { name, .. } => Some(name.clone()),
                            _ => None,
                        })
                        .collect();
                    for e in &report.errors {
                        tracing::error!(error = %e, "rolling back a failed hold");
                    }
                    if let QuiesceError::Hold { still_held, .. } = &mut err {
                        failed.append(still_held);
                        *still_held = failed;
                    } else if !failed.is_empty() {
                        tracing::error!(containers = ?failed, "still paused or stopped after a failed hold: run `voltar recover`");
                    }
                    return Err(err);
                }
            }
        }
        Ok(held)
    }

    /// `holds` reordered so that dependents are quiesced before what they depend on ([`super::order`]); the
    /// given order when nothing ties them, when a container cannot be inspected, or on a cycle (with a warning).
    async fn dependency_order<'h>(&self, holds: &'h [Hold]) -> Vec<&'h Hold> {
        if holds.len() < 2 {
            return holds.iter().collect();
        }
        let mut links = Vec::with_capacity(holds.len());
        for h in holds {
            match self.runtime.links(&h.id).await {
                Ok(l) => links.push(l),
                Err(e) => {
                    // hold_one looks at it again and reports what is wrong with it.
                    tracing::debug!(container = %h.name, error = %e, "no dependency information; quiesced in plan order");
                    return holds.iter().collect();
                }
            }
        }
        let nodes: Vec<Node<'_>> = holds
            .iter()
            .zip(&links)
            .map(|(h, l)| Node {
                id: &h.id,
                name: &h.name,
                labels: &l.labels,
                network_mode: l.network_mode.as_deref(),
            })
            .collect();
        match stop_order(&nodes) {
            Ok(order) => order.into_iter().map(|i| &holds[i]).collect(),
            Err(cycle) => {
                tracing::warn!(
                    containers = ?cycle,
                    "containers depend on each other in a cycle (com.docker.compose.depends_on or network mode container:); quiescing them in plan order"
                );
                holds.iter().collect()
            }
        }
    }

    async fn hold_one(&self, h: &Hold, lock: Option<ContainerLock>) -> Result<Step, QuiesceError> {
        let hold_err = |source: DockerError, still_held: Vec<String>| QuiesceError::Hold {
            id: h.id.clone(),
            name: h.name.clone(),
            action: h.action,
            source: Box::new(source),
            still_held,
        };
        // The plan's view may be minutes old: look again right before acting.
        let state = self
            .runtime
            .state(&h.id)
            .await
            .map_err(|e| hold_err(e, Vec::new()))?;
        if state != ContainerState::Running || h.action == QuiesceAction::None {
            return Ok(Step::Skipped(Skipped {
                id: h.id.clone(),
                name: h.name.clone(),
                state,
            }));
        }
        let seq = self.journal.begin(&h.id, &h.name, h.action, &state, lock)?;
        let since = Instant::now();
        let res = match h.action {
            QuiesceAction::Pause => self.runtime.pause(&h.id).await,
            QuiesceAction::Stop => {
                // Round up: a 500 ms grace period must not become "kill at once".
                let secs = h.stop_timeout.as_secs() + u64::from(h.stop_timeout.subsec_nanos() > 0);
                self.runtime
                    .stop(&h.id, u32::try_from(secs).unwrap_or(u32::MAX))
                    .await
            }
            QuiesceAction::None => Ok(()),
        };
        let Err(err) = res else {
            return Ok(Step::Held(HeldContainer {
                id: h.id.clone(),
                name: h.name.clone(),
                action: h.action,
                seq,
                since,
            }));
        };
        // The call failed: find out whether the container changed anyway before deciding what to undo.
        let changed =
            match (&err, self.runtime.state(&h.id).await) {
                (DockerError::NoSuchContainer(_), _)
                | (_, Err(DockerError::NoSuchContainer(_))) => Some(false),
                (_, Ok(ContainerState::Running)) => Some(false),
                // A refused pause of a container that is paused now means someone else paused it: never undo that.
                (DockerError::Api { .. }, Ok(ContainerState::Paused))
                    if h.action == QuiesceAction::Pause =>
                {
                    Some(false)
                }
                (_, Ok(ContainerState::Paused)) if h.action == QuiesceAction::Pause => Some(true),
                // It was running a moment ago and we asked it to stop.
                (
                    _,
                    Ok(ContainerState::Exited | ContainerState::Created | ContainerState::Dead),
                ) if h.action == QuiesceAction::Stop => Some(true),
                (_, Ok(_)) => Some(false),
                (_, Err(_)) => None,
            };
        match changed {
            Some(false) => {
                self.journal.done(seq);
                Err(hold_err(err, Vec::new()))
            }
            Some(true) => match self.resume_one(seq, &h.id, &h.name, h.action, since).await {
                Ok(_) => Err(hold_err(err, Vec::new())),
                Err(_) => Err(hold_err(err, vec![h.name.clone()])),
            },
            // Unknown: keep the journal entry so recover decides from the live state later.
            None => Err(hold_err(err, vec![h.name.clone()])),
        }
    }

    /// Resume `held` in reverse order. Tries every container even when one fails; errors are in the report.
    pub async fn release(&self, mut held: Held) -> ReleaseReport {
        let mut report = ReleaseReport::default();
        let services = std::mem::take(&mut held.services);
        let containers = std::mem::take(&mut held.held);
        for c in containers.iter().rev() {
            // release_pending may have resumed it already.
            if !self.journal.is_pending(c.seq) {
                continue;
            }
            match self
                .resume_one(c.seq, &c.id, &c.name, c.action, c.since)
                .await
            {
                Ok(r) => report.released.push(r),
                Err(e) => report.errors.push(e),
            }
        }
        for s in services.iter().rev() {
            if !self.journal.is_pending_service(s.seq) {
                continue;
            }
            match self
                .scale_back(s.seq, &s.id, &s.name, s.replicas, s.since)
                .await
            {
                Ok(r) => report.services.push(r),
                Err(e) => report.errors.push(e),
            }
        }
        report
    }

    /// Resume everything this run journaled and has not resumed yet, newest first: the backstop for a lost
    /// [`Held`] (a cancelled `hold`, a panic in the caller).
    pub async fn release_pending(&self) -> ReleaseReport {
        let mut report = ReleaseReport::default();
        for (seq, p) in self.journal.pending_entries().into_iter().rev() {
            match self
                .resume_one(seq, &p.id, &p.name, p.action, p.since)
                .await
            {
                Ok(r) => report.released.push(r),
                Err(e) => report.errors.push(e),
            }
        }
        for (seq, p) in self.journal.pending_services().into_iter().rev() {
            match self
                .scale_back(seq, &p.id, &p.name, p.replicas, p.since)
                .await
            {
                Ok(r) => report.services.push(r),
                Err(e) => report.errors.push(e),
            }
        }
        report
    }

    /// Scale `services` to 0, one after the other, each journaled ("scaled from N") before it is touched and
    /// held under its quiesce lock; wait until each one's task containers on this engine are down. A service
    /// already at 0 is left alone. A global service (or a job) cannot be scaled: refused, with the fix. On the
    /// first failure the services scaled so far are scaled back before the error is returned.
    pub async fn scale_down(&self, services: &[ServiceHold]) -> Result<Held, QuiesceError> {
        let keyed: Vec<Hold> = services
            .iter()
            .map(|s| Hold {
                id: service_lock_key(&s.id),
                name: format!("service {}", s.name),
                action: QuiesceAction::Stop,
                stop_timeout: s.stop_timeout,
            })
            .collect();
        let mut locks = self.lock_all(&keyed, &ContainerLocks::default()).await?;
        let mut held = Held::default();
        for s in services {
            let lock = locks.remove(&service_lock_key(&s.id));
            if let Err(err) = self.scale_down_one(s, lock, &mut held).await {
                let report = self.release(held).await;
                for e in &report.errors {
                    tracing::error!(error = %e, "rolling back a failed scale-down");
                }
                return Err(err);
            }
        }
        Ok(held)
    }

    async fn scale_down_one(
        &self,
        s: &ServiceHold,
        lock: Option<ContainerLock>,
        held: &mut Held,
    ) -> Result<(), QuiesceError> {
        let err = |source: DockerError| QuiesceError::Scale {
            name: s.name.clone(),
            source: Box::new(source),
        };
        // Read it now: the plan may be minutes old.
        let svc = self.runtime.service(&s.id).await.map_err(err)?;
        let replicas = match svc.mode {
            ServiceMode::Replicated { replicas: 0 } => return Ok(()),
            ServiceMode::Replicated { replicas } => replicas,
            ServiceMode::Global | ServiceMode::Other(_) => {
                return Err(QuiesceError::NotScalable {
                    name: s.name.clone(),
                    mode: svc.mode.to_string(),
                })
            }
        };
        let seq = self.journal.begin_scale(&s.id, &s.name, replicas, lock)?;
        let since = Instant::now();
        if let Err(e) = self.runtime.scale_service(&s.id, 0).await {
            // Refused, or the answer was lost: put it back if it is at 0 now.
            let _ = self.scale_back(seq, &s.id, &s.name, replicas, since).await;
            return Err(err(e));
        }
        held.services.push(HeldService {
            id: s.id.clone(),
            name: s.name.clone(),
            replicas,
            seq,
            since,
        });
        // The volume is quiet only once the task containers here are down (the orchestrator stops them with
        // their grace period).
        let waited = s.stop_timeout + SERVICE_DOWN_MARGIN;
        let deadline = Instant::now() + waited;
        loop {
            let up = self.runtime.service_tasks_up(&s.id).await.map_err(err)?;
            if up.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(QuiesceError::TasksStillUp {
                    name: s.name.clone(),
                    tasks: up,
                    waited,
                });
            }
            let nap = tokio::time::sleep(QUIESCE_POLL);
            match &self.cancel {
                Some(c) => tokio::select! {
                    _ = c.cancelled() => return Err(QuiesceError::Interrupted { name: format!("service {}", s.name) }),
                    _ = nap => {}
                },
                None => nap.await,
            }
        }
    }

    /// Scale a service back to `replicas`, if it is still at 0 (someone who changed it since is not fought).
    async fn scale_back(
        &self,
        seq: u64,
        id: &str,
        name: &str,
        replicas: u64,
        since: Instant,
    ) -> Result<ReleasedService, QuiesceError> {
        let err = |source: DockerError| QuiesceError::ScaleBack {
            name: name.to_string(),
            replicas,
            source: Box::new(source),
        };
        let outcome = match scale_back_if_untouched(self.runtime, id, replicas).await {
            Ok(o) => o,
            Err(e) => return Err(err(e)),
        };
        let downtime = since.elapsed();
        self.journal.done(seq);
        Ok(ReleasedService {
            id: id.to_string(),
            name: name.to_string(),
            replicas,
            downtime,
            outcome,
        })
    }

    async fn resume_one(
        &self,
        seq: u64,
        id: &str,
        name: &str,
        action: QuiesceAction,
        since: Instant,
    ) -> Result<Released, QuiesceError> {
        let res = match action {
            QuiesceAction::Pause => self.runtime.unpause(id).await,
            QuiesceAction::Stop => self.runtime.start(id).await,
            QuiesceAction::None => Ok(()),
        };
        let outcome = match res {
            Ok(()) => ReleaseOutcome::Resumed,
            Err(DockerError::NoSuchContainer(_)) => ReleaseOutcome::Gone,
            Err(source) => match self.runtime.state(id).await {
                Ok(ContainerState::Running) => ReleaseOutcome::AlreadyRunning,
                Err(DockerError::NoSuchContainer(_)) => ReleaseOutcome::Gone,
                Ok(s) if !still_quiesced(action, &s) => {
                    tracing::warn!(container = name, state = %s, "changed by someone else while quiesced; left alone");
                    ReleaseOutcome::LeftAlone(s)
                }
                _ => {
                    return Err(QuiesceError::Resume {
                        id: id.to_string(),
                        name: name.to_string(),
                        action,
                        source: Box::new(source),
                    })
                }
            },
        };
        let downtime = since.elapsed();
        self.journal.done(seq);
        Ok(Released {
            id: id.to_string(),
            name: name.to_string(),
            action,
            downtime,
            outcome,
        })
    }
}

/// The quiesce lock key of a service (its own namespace beside the containers' ids).
fn service_lock_key(id: &str) -> String {
    format!("service_{id}")
}

/// Scale service `id` back to `replicas` when it is still at 0 as voltar left it; a service someone scaled
/// meanwhile is left alone, a removed one is gone. Shared by release and recover.
pub(super) async fn scale_back_if_untouched(
    runtime: &dyn Runtime,
    id: &str,
    replicas: u64,
) -> Result<ServiceOutcome, DockerError> {
    let svc = match runtime.service(id).await {
        Ok(s) => s,
        Err(DockerError::NoSuchService(_)) => return Ok(ServiceOutcome::Gone),
        Err(e) => return Err(e),
    };
    match svc.mode {
        ServiceMode::Replicated { replicas: 0 } => {
            match runtime.scale_service(id, replicas).await {
                Ok(()) => Ok(ServiceOutcome::ScaledBack),
                Err(DockerError::NoSuchService(_)) => Ok(ServiceOutcome::Gone),
                Err(e) => Err(e),
            }
        }
        ServiceMode::Replicated { replicas: now } => Ok(ServiceOutcome::LeftAlone(now)),
        // Someone replaced it with a service of another mode: not ours to touch.
        _ => Ok(ServiceOutcome::LeftAlone(0)),
    }
}

/// Whether `state` is what `action` leaves behind (so it is ours to undo).
pub(super) fn still_quiesced(action: QuiesceAction, state: &ContainerState) -> bool {
    match action {
        QuiesceAction::Pause => *state == ContainerState::Paused,
        QuiesceAction::Stop => matches!(state, ContainerState::Exited | ContainerState::Created),
        QuiesceAction::None => false,
    }
}

/// At plan time: a container that another live voltar run holds paused or stopped right now (that run holds its
/// quiesce lock, or the lock of the Swarm service it is a task of) is, for its user, running — that run resumes it soon. Mark it running, so the plan quiesces it
/// again (and `hold` waits for the other run first) instead of taking that run's pause for the user's. A
/// container paused or stopped while its lock is free is left as found. Returns the names it changed.
pub fn see_through_other_runs(state_dir: &Path, containers: &mut [ContainerInfo]) -> Vec<String> {
    let mut changed = Vec::new();
    for c in containers.iter_mut() {
        if !matches!(c.state, ContainerState::Paused | ContainerState::Exited) {
            continue;
        }
        // A task of a service another run scaled to 0: that run scales it back soon, so plan the service again.
        let holder = ContainerLock::holder(state_dir, &c.id).or_else(|| {
            c.swarm_service_id()
                .and_then(|id| ContainerLock::holder(state_dir, &service_lock_key(id)))
        });
        if let Some(pid) = holder {
            tracing::info!(
                container = %c.name,
                state = %c.state,
                pid = %pid,
                "held by another voltar run: planned as running"
            );
            c.state = ContainerState::Running;
            changed.push(c.name.clone());
        }
    }
    changed
}
