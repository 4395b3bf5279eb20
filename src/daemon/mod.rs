//! `voltar daemon`: runs the scheduled jobs of the config, keeps each job's last outcome (for `/healthz`,
//! `/metrics` and `voltar status`), and keeps going whatever a run does.
//!
//! One loop ([`Daemon::run`]) owns the schedule: for each job the next slot ([`crate::schedule`]) plus a random
//! jitter. At a slot the job's backup is started as a task of its own (the same `backup::run` as
//! `voltar backup --job`, with its prune), and the loop goes on waiting for the next slot of any job. Rules:
//!
//! * A slot that comes while the job's previous run is still going (or still waiting for its targets) is skipped
//!   and counted (`RunObserver::finished` with [`JobOutcome::Skipped`], a metric), never stacked: there is at most
//!   one run per job.
//! * A failed run (a failed source or target, or an error that ended the run) is recorded and reported; the
//!   daemon goes on with the next slot.
//! * Two jobs that share a target never run at once: a run waits for the other's targets ([`TargetGate`], by
//!   the same canonical key as the target lock), and the backup's own target lock still guards against a
//!   `voltar backup` started from elsewhere (the runner waits for it too).
//! * Time comes from a [`Clock`], so a test drives the loop with a clock of its own; the runs come from a
//!   [`JobRunner`] (the real one runs `backup::run`).
//! * Reload (SIGHUP): the new config replaces the old one for the next slots; a job whose schedule changed gets a
//!   new next slot, the others keep theirs. An invalid config is reported and the old one kept.
//! * Stop (SIGTERM/SIGINT, the shutdown token): no new run starts, the running ones are cancelled through their
//!   token (child of the shutdown token: the backup resumes its containers, aborts its uploads and commits
//!   nothing) and awaited, at most [`STOP_WAIT`].
//!
//! The face (`cli`) sees each run through [`RunObserver`] (start, end) and the rest through
//! [`RunObserver::event`]; it renders them, this module never prints.

mod http;
mod metrics;
mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backup::{self, BackupRequest, RunReport};
use crate::config::{Config, Job, Target};
use crate::docker::Engine;
use crate::lock;
use crate::progress::Progress;
use crate::schedule::Schedule;

pub use self::http::{healthz, serve, HttpError};
pub use self::metrics::Metrics;
pub use self::state::{
    health, read_state, state_path, write_state, Health, JobState, LastRun, RunResult, StateFile,
    TargetRun, STATE_FILE,
};

/// The longest a stop waits for the cancelled runs to put their containers back (the process must end within
/// 30 s of SIGTERM: container stop timeouts are a container runtime's usual 10 s, uploads abort at once).
pub const STOP_WAIT: Duration = Duration::from_secs(25);

/// The time source of the loop. [`SystemClock`] in the daemon, a hand-driven one in tests.
#[async_trait::async_trait]
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    /// Return at `t` or later (at once when it is past).
    async fn sleep_until(&self, t: DateTime<Utc>);
}

/// The wall clock. Sleeps in steps of at most a minute and looks at the clock again, so that a suspend or a
/// clock step (NTP) moves the slots with the wall clock rather than with the monotonic one.
pub struct SystemClock;

#[async_trait::async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    async fn sleep_until(&self, t: DateTime<Utc>) {
        loop {
            let left = (t - Utc::now()).to_std().unwrap_or_default();
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(Duration::from_secs(60))).await;
        }
    }
}

/// One run's task, done: its job, when it started, what became of it, and the telling of its start (which the
/// telling of its end waits for).
struct Ran {
    name: String,
    started: DateTime<Utc>,
    outcome: JobOutcome,
    told: tokio::task::JoinHandle<()>,
}

/// What became of one slot of a job.
#[derive(Debug)]
pub enum JobOutcome {
    /// The run ended with a report: its exit code says whether everything was stored (0) or not (1).
    Finished(Box<RunReport>),
    /// The run ended without a report (no usable target, engine unreachable, …).
    Failed { error: String },
    /// The slot was skipped: the job's previous run was still going.
    Skipped { slot: DateTime<Utc> },
    /// The daemon was stopped during the run: containers resumed, nothing committed.
    Interrupted,
}

impl JobOutcome {
    /// Whether the run stored everything (what `/healthz` calls a success).
    pub fn succeeded(&self) -> bool {
        matches!(self, JobOutcome::Finished(r) if r.exit_code() == 0)
    }
}

/// What the daemon says besides the runs themselves.
#[derive(Debug)]
pub enum Event {
    /// A job's next run times, at start and after a reload that changed them.
    Scheduled {
        job: String,
        schedule: String,
        zone: String,
        next: Vec<DateTime<Utc>>,
    },
    /// What the crash-journal replay at start put back or removed.
    Recovered(Vec<String>),
    /// The config was reloaded (the new one, for observers that act on it, e.g. notifications).
    Reloaded {
        path: Option<PathBuf>,
        config: Arc<Config>,
    },
    /// The reloaded config was invalid: the old one is kept.
    ReloadFailed { error: String },
    /// A run waits for a target that another run (of this daemon or another voltar) is using.
    WaitingForTarget { job: String, target: String },
    /// Stopping: no new runs; `running` are cancelled.
    Stopping { running: Vec<String> },
    /// Something to tell that changes nothing (the machine's zone fell back to UTC, …).
    Warning(String),
}

/// The start and end of each run, for the face (log lines) and notifiers.
#[async_trait::async_trait]
pub trait RunObserver: Send + Sync {
    async fn started(&self, job: &str);
    /// The run's report, or its error, or the skipped slot. Returns how many notifications of it could not be
    /// delivered (counted in `voltar_notifications_failed_total`).
    async fn finished(&self, job: &str, outcome: &JobOutcome) -> usize;
    async fn event(&self, _event: &Event) {}
}

/// Runs one job's backup. [`BackupRunner`] in the daemon.
#[async_trait::async_trait]
pub trait JobRunner: Send + Sync {
    async fn run(
        &self,
        config: &Config,
        job: &Job,
        now: DateTime<Utc>,
        cancel: CancellationToken,
        observer: &dyn RunObserver,
    ) -> JobOutcome;

    /// What the jobs back up now, for the source series of the metrics and `voltar_volumes_unprotected`;
    /// `None` when it cannot be known (engine unreachable; a runner in a test).
    async fn coverage(&self, _config: &Config) -> Option<Coverage> {
        None
    }
}

/// What the jobs of a config back up: each job's sources (from its plan now) and the named volumes no job
/// selects.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Coverage {
    pub sources: BTreeMap<String, Vec<String>>,
    pub unprotected: Vec<String>,
}

/// [`Coverage`] of `config`'s jobs on `engine` now. Anonymous volumes (64-hex names) are not counted as
/// unprotected: no job selects them unless labelled, by design.
pub async fn coverage(engine: &Engine, config: &Config) -> Result<Coverage, String> {
    let discovery = engine.discover().await.map_err(|e| e.to_string())?;
    let mut cov = Coverage::default();
    let mut covered = BTreeSet::new();
    for (name, job) in &config.jobs {
        let plan = crate::plan::plan(&discovery, job, &[], &crate::plan::probe_path)
            .map_err(|e| format!("job {name}: {e}"))?;
        let sources: Vec<String> = plan.sources.iter().map(|s| s.name.clone()).collect();
        covered.extend(sources.iter().cloned());
        cov.sources.insert(name.clone(), sources);
    }
    cov.unprotected = discovery
        .volumes
        .iter()
        .filter(|v| !crate::plan::is_anonymous(&v.name) && !covered.contains(&v.name))
        .map(|v| v.name.clone())
        .collect();
    cov.unprotected.sort();
    Ok(cov)
}

/// The real runner: `backup::run` of the job on its configured targets (with its prune), as
/// `voltar backup --job NAME` does.
pub struct BackupRunner;

#[async_trait::async_trait]
impl JobRunner for BackupRunner {
    async fn run(
        &self,
        config: &Config,
        job: &Job,
        now: DateTime<Utc>,
        cancel: CancellationToken,
        observer: &dyn RunObserver,
    ) -> JobOutcome {
        let targets: Vec<Target> = job
            .targets
            .iter()
            .filter_map(|n| config.targets.get(n).cloned())
            .collect();
        // Another voltar process (a `voltar backup` from cron, a restore's safety backup) may hold a target:
        // wait for it rather than fail the run. The backup takes the lock itself right after; a run that slips
        // in between fails this one with the lock's message (recorded like any failure).
        if let Some(h) = lock::holder(&config.state_dir, &targets) {
            observer
                .event(&Event::WaitingForTarget {
                    job: job.name.clone(),
                    target: h.target,
                })
                .await;
            let waited = lock::wait_free(&config.state_dir, &targets, None, &cancel, |_| {});
            if waited.await.is_err() {
                // Without a deadline only a cancel ends the waiting.
                return JobOutcome::Interrupted;
            }
        }
        let engine = match Engine::connect(config.docker_host.as_deref()).await {
            Ok(e) => e,
            Err(e) => {
                return JobOutcome::Failed {
                    error: e.to_string(),
                }
            }
        };
        let env = backup::Env {
            config,
            engine: &engine,
            progress: Progress::hidden(),
            cancel: cancel.clone(),
            now,
            // Waited for above, without a deadline.
            wait: None,
        };
        let req = BackupRequest {
            job: job.clone(),
            targets,
            only: vec![],
            dry_run: false,
            tags: vec![],
        };
        match backup::run(&env, &req).await {
            Ok(report) => JobOutcome::Finished(Box::new(report)),
            Err(_) if cancel.is_cancelled() => JobOutcome::Interrupted,
            Err(e) => JobOutcome::Failed {
                error: crate::error_chain(&anyhow::Error::new(e)),
            },
        }
    }

    async fn coverage(&self, config: &Config) -> Option<Coverage> {
        let engine = Engine::connect(config.docker_host.as_deref()).await.ok()?;
        coverage(&engine, config).await.ok()
    }
}

/// One in-process lock per target (by the target lock's canonical key): runs of jobs that share a target take
/// turns. Locks are taken in key order, so two runs never wait for each other.
#[derive(Default, Clone)]
pub struct TargetGate {
    locks: Arc<Mutex<HashMap<Vec<u8>, TurnLock>>>,
}

/// One target's turn among this daemon's runs.
type TurnLock = Arc<tokio::sync::Mutex<()>>;

impl TargetGate {
    /// The keys of `targets`, sorted, each once; a target whose key cannot be made is keyed by its name.
    fn keys(targets: &[Target]) -> Vec<(Vec<u8>, String)> {
        let mut keys: BTreeMap<Vec<u8>, String> = BTreeMap::new();
        for t in targets {
            match lock::target_key(t) {
                Ok(k) => keys.insert(k.key, k.display),
                Err(_) => keys.insert(format!("name:{}", t.name).into_bytes(), t.name.clone()),
            };
        }
        keys.into_iter().collect()
    }

    /// Wait for every target of `targets` to be free of other runs of this daemon, and hold them.
    async fn enter(
        &self,
        targets: &[Target],
        job: &str,
        observer: &dyn RunObserver,
    ) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let mut told = false;
        let mut held = Vec::new();
        for (key, display) in Self::keys(targets) {
            let m = self
                .locks
                .lock()
                .expect("gate map")
                .entry(key)
                .or_default()
                .clone();
            let guard = match m.clone().try_lock_owned() {
                Ok(g) => g,
                Err(_) => {
                    if !std::mem::replace(&mut told, true) {
                        observer
                            .event(&Event::WaitingForTarget {
                                job: job.to_string(),
                                target: display,
                            })
                            .await;
                    }
                    m.lock_owned().await
                }
            };
            held.push(guard);
        }
        held
    }
}

/// A scheduled job as the loop sees it.
struct Slotted {
    job: Job,
    schedule: Schedule,
    jitter: Duration,
    max_age: Duration,
    /// The next slot (what `status` and the metrics show) and when it starts (slot + jitter).
    slot: DateTime<Utc>,
    due: DateTime<Utc>,
    /// The first slot since the daemon started: a job that has never run is healthy until this + max-age.
    first_slot: DateTime<Utc>,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("no job has a schedule: add e.g. schedule = \"15 3 * * *\" to a [job.NAME] in {0} (see config.example.toml)")]
    NothingScheduled(String),
    #[error("job {job}: schedule: {message}")]
    Schedule { job: String, message: String },
}

/// The scheduled jobs of `config`, by name (their slots not set yet).
fn scheduled(config: &Config) -> Result<BTreeMap<String, (Job, Schedule)>, DaemonError> {
    let mut out = BTreeMap::new();
    for (name, job) in &config.jobs {
        if let Some(s) = &job.schedule {
            let schedule = Schedule::of(s).map_err(|message| DaemonError::Schedule {
                job: name.clone(),
                message,
            })?;
            out.insert(name.clone(), (job.clone(), schedule));
        }
    }
    if out.is_empty() {
        let path = config
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the config".into());
        return Err(DaemonError::NothingScheduled(path));
    }
    Ok(out)
}

/// A random delay in `0..=jitter`.
fn jitter_of(jitter: Duration) -> chrono::Duration {
    if jitter.is_zero() {
        return chrono::Duration::zero();
    }
    let ms = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=jitter.as_millis() as u64);
    chrono::Duration::milliseconds(ms as i64)
}

/// A job's max-age: as configured, else two schedule intervals.
fn max_age_of(job: &Job, schedule: &Schedule, now: DateTime<Utc>) -> Duration {
    job.schedule
        .as_ref()
        .and_then(|s| s.max_age)
        .unwrap_or_else(|| schedule.interval(now) * 2)
}

/// What the HTTP listener and `status` read while the loop runs.
pub struct Shared {
    pub state: Mutex<StateFile>,
    /// Per scheduled job: the next slot, the first slot since start and the max-age.
    pub jobs: Mutex<BTreeMap<String, JobClock>>,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
}

/// A scheduled job's times, as `/healthz` judges them.
#[derive(Clone, Debug)]
pub struct JobClock {
    /// The job's target names (the metrics' `target` label).
    pub targets: Vec<String>,
    pub next: DateTime<Utc>,
    pub first_slot: DateTime<Utc>,
    pub max_age: Duration,
}

impl Shared {
    /// The daemon's health now.
    pub fn health(&self) -> Health {
        let state = self.state.lock().expect("state");
        let jobs = self.jobs.lock().expect("jobs");
        health(&state, &jobs, self.clock.now())
    }
}

/// The daemon: its clock, runner and observer, and what it shares with the listener.
pub struct Daemon {
    pub shared: Arc<Shared>,
    runner: Arc<dyn JobRunner>,
    observer: Arc<dyn RunObserver>,
    gate: TargetGate,
    state_file: PathBuf,
    /// The jobs and their first slots, published from the start (the listener may answer before the loop runs).
    initial: BTreeMap<String, Slotted>,
}

/// How the loop is told to reload or stop.
pub struct Control {
    /// Notified on SIGHUP.
    pub reload: Arc<Notify>,
    /// Loads the config again (the file the daemon was started with).
    pub load: Box<dyn Fn() -> Result<Config, String> + Send + Sync>,
    /// Cancelled on SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
}

impl Daemon {
    /// A daemon for `config`: reads the persisted state (a missing or unreadable file starts empty, with a
    /// warning through the observer at [`Daemon::run`]), sets up the metrics for every job and target.
    pub fn new(
        config: &Config,
        clock: Arc<dyn Clock>,
        runner: Arc<dyn JobRunner>,
        observer: Arc<dyn RunObserver>,
    ) -> Result<(Daemon, Option<String>), DaemonError> {
        let state_file = state_path(&config.state_dir);
        let (state, warning) = match read_state(&state_file) {
            Ok(s) => (s, None),
            Err(e) => (StateFile::default(), Some(e)),
        };
        let metrics = Metrics::new();
        metrics.declare(config, &state);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            jobs: Mutex::new(BTreeMap::new()),
            metrics,
            clock,
        });
        let mut daemon = Daemon {
            shared,
            runner,
            observer,
            gate: TargetGate::default(),
            state_file,
            initial: BTreeMap::new(),
        };
        let now = daemon.shared.clock.now();
        daemon.initial = daemon.slot_jobs(config, &BTreeMap::new(), now)?;
        daemon.publish(&daemon.initial);
        Ok((daemon, warning))
    }

    fn slot_jobs(
        &self,
        config: &Config,
        old: &BTreeMap<String, Slotted>,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<String, Slotted>, DaemonError> {
        let mut out = BTreeMap::new();
        for (name, (job, schedule)) in scheduled(config)? {
            let cfg = job.schedule.clone().expect("scheduled");
            let same = old.get(&name).filter(|o| {
                let ocfg = o.job.schedule.as_ref().expect("scheduled");
                ocfg.expr == cfg.expr && ocfg.timezone == cfg.timezone && ocfg.jitter == cfg.jitter
            });
            let max_age = max_age_of(&job, &schedule, now);
            let s = match same {
                Some(o) => Slotted {
                    job,
                    schedule,
                    jitter: cfg.jitter,
                    max_age,
                    slot: o.slot,
                    due: o.due,
                    first_slot: o.first_slot,
                },
                None => {
                    let slot = schedule
                        .next_after(now)
                        .ok_or_else(|| DaemonError::Schedule {
                            job: name.clone(),
                            message: "no next run time".into(),
                        })?;
                    Slotted {
                        job,
                        schedule,
                        jitter: cfg.jitter,
                        max_age,
                        slot,
                        due: slot + jitter_of(cfg.jitter),
                        first_slot: old.get(&name).map(|o| o.first_slot).unwrap_or(slot),
                    }
                }
            };
            out.insert(name, s);
        }
        Ok(out)
    }

    /// Publish the jobs' times to the listener and the metrics.
    fn publish(&self, jobs: &BTreeMap<String, Slotted>) {
        let mut shared = self.shared.jobs.lock().expect("jobs");
        shared.clear();
        for (name, j) in jobs {
            shared.insert(
                name.clone(),
                JobClock {
                    targets: j.job.targets.clone(),
                    next: j.slot,
                    first_slot: j.first_slot,
                    max_age: j.max_age,
                },
            );
            self.shared.metrics.next_run(name, j.slot);
        }
    }

    async fn announce(&self, jobs: &BTreeMap<String, Slotted>, only: Option<&BTreeSet<String>>) {
        for (name, j) in jobs {
            if only.is_some_and(|o| !o.contains(name)) {
                continue;
            }
            self.observer
                .event(&Event::Scheduled {
                    job: name.clone(),
                    schedule: j.schedule.expr().to_string(),
                    zone: j.schedule.zone().name().to_string(),
                    next: j.schedule.upcoming(self.shared.clock.now(), 3),
                })
                .await;
        }
    }

    /// The loop: until `control.shutdown`, run each job at its slots. Returns after a clean stop (every run
    /// ended or [`STOP_WAIT`] passed).
    pub async fn run(mut self, config: Config, control: Control) -> Result<(), DaemonError> {
        let clock = self.shared.clock.clone();
        let mut config = Arc::new(config);
        for j in config.jobs.values() {
            if let Some(crate::config::JobSchedule {
                zone_from: crate::config::ZoneFrom::FallbackUtc(why),
                ..
            }) = &j.schedule
            {
                self.observer
                    .event(&Event::Warning(format!(
                        "job {}: {why}; its schedule is read in UTC (set timezone = \"Region/City\" in [job.{}] or TZ)",
                        j.name, j.name
                    )))
                    .await;
            }
        }
        let mut jobs = std::mem::take(&mut self.initial);
        self.refresh_coverage(&config).await;
        self.announce(&jobs, None).await;
        // Job name → the cancel token of its run (present while the run goes on, waiting for targets included).
        let mut running: HashMap<String, CancellationToken> = HashMap::new();
        let mut tasks: JoinSet<Ran> = JoinSet::new();
        let mut ids: HashMap<tokio::task::Id, String> = HashMap::new();
        // The end of each run being told (log line, notifications): job name → failed notifications.
        let mut notes: JoinSet<(String, usize)> = JoinSet::new();
        loop {
            let next_due = jobs.values().map(|j| j.due).min().expect("a scheduled job");
            tokio::select! {
                biased;
                _ = control.shutdown.cancelled() => break,
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let (name, started, outcome, told) = match done {
                        Ok((id, r)) => {
                            ids.remove(&id);
                            (r.name, r.started, r.outcome, Some(r.told))
                        }
                        // A panic in a run: recorded as its failure; the job is free again, the daemon goes on.
                        Err(e) => {
                            let name = ids.remove(&e.id()).unwrap_or_default();
                            (name, clock.now(), JobOutcome::Failed { error: format!("the run panicked: {e}") }, None)
                        }
                    };
                    running.remove(&name);
                    self.record(&name, started, &outcome).await;
                    let refresh = matches!(outcome, JobOutcome::Finished(_));
                    self.tell_finished(&mut notes, name, outcome, told);
                    if refresh {
                        self.refresh_coverage(&config).await;
                    }
                }
                Some(told) = notes.join_next(), if !notes.is_empty() => {
                    if let Ok((name, failed)) = told {
                        self.shared.metrics.notifications_failed(&name, failed);
                    }
                }
                _ = control.reload.notified() => {
                    match (control.load)() {
                        Err(error) => {
                            self.observer.event(&Event::ReloadFailed { error }).await;
                        }
                        Ok(new) => match self.slot_jobs(&new, &jobs, clock.now()) {
                            Err(e) => {
                                self.observer.event(&Event::ReloadFailed { error: e.to_string() }).await;
                            }
                            Ok(new_jobs) => {
                                let changed: BTreeSet<String> = new_jobs
                                    .iter()
                                    .filter(|(n, j)| jobs.get(*n).is_none_or(|o| o.slot != j.slot))
                                    .map(|(n, _)| n.clone())
                                    .collect();
                                self.shared.metrics.declare(&new, &self.shared.state.lock().expect("state"));
                                config = Arc::new(new);
                                self.observer
                                    .event(&Event::Reloaded {
                                        path: config.source.clone(),
                                        config: config.clone(),
                                    })
                                    .await;
                                jobs = new_jobs;
                                self.refresh_coverage(&config).await;
                                self.publish(&jobs);
                                self.announce(&jobs, Some(&changed)).await;
                            }
                        },
                    }
                }
                _ = clock.sleep_until(next_due) => {
                    let now = clock.now();
                    let due: Vec<String> = jobs.iter().filter(|(_, j)| j.due <= now).map(|(n, _)| n.clone()).collect();
                    for name in due {
                        let j = jobs.get_mut(&name).expect("due job");
                        let slot = j.slot;
                        // The next slot after this one and after now: slots missed while the machine slept are
                        // not run one after the other.
                        let next = j.schedule.next_after(now.max(slot)).unwrap_or(slot + chrono::Duration::days(366 * 100));
                        j.slot = next;
                        j.due = next + jitter_of(j.jitter);
                        if running.contains_key(&name) {
                            self.shared.metrics.skipped(&name);
                            self.tell_finished(&mut notes, name, JobOutcome::Skipped { slot }, None);
                            continue;
                        }
                        let token = control.shutdown.child_token();
                        running.insert(name.clone(), token.clone());
                        let job = j.job.clone();
                        let config = config.clone();
                        let runner = self.runner.clone();
                        let observer = self.observer.clone();
                        let gate = self.gate.clone();
                        let clock = clock.clone();
                        let task = tasks.spawn(async move {
                            let started = clock.now();
                            let run = async {
                                let targets: Vec<Target> = job
                                    .targets
                                    .iter()
                                    .filter_map(|n| config.targets.get(n).cloned())
                                    .collect();
                                let held = tokio::select! {
                                    h = gate.enter(&targets, &job.name, observer.as_ref()) => Some(h),
                                    _ = token.cancelled() => None,
                                };
                                let Some(_held) = held else {
                                    return JobOutcome::Interrupted;
                                };
                                runner.run(&config, &job, clock.now(), token.clone(), observer.as_ref()).await
                            };
                            // The start is told beside the run, not before it: a slow or dead receiver does not
                            // delay the backup (the end is told after it, see `tell_finished`).
                            let told = {
                                let (observer, name) = (observer.clone(), job.name.clone());
                                tokio::spawn(async move { observer.started(&name).await })
                            };
                            let outcome = run.await;
                            Ran { name: job.name.clone(), started, outcome, told }
                        });
                        ids.insert(task.id(), name.clone());
                    }
                    self.publish(&jobs);
                }
            }
        }
        // Stop: the runs' tokens are children of the shutdown token, so they are cancelled already.
        let names: Vec<String> = running.keys().cloned().collect();
        self.observer
            .event(&Event::Stopping {
                running: names.clone(),
            })
            .await;
        let wait = async {
            while let Some(done) = tasks.join_next().await {
                if let Ok(r) = done {
                    self.record(&r.name, r.started, &r.outcome).await;
                    self.tell_finished(&mut notes, r.name, r.outcome, Some(r.told));
                }
            }
            while let Some(told) = notes.join_next().await {
                if let Ok((name, failed)) = told {
                    self.shared.metrics.notifications_failed(&name, failed);
                }
            }
        };
        if tokio::time::timeout(STOP_WAIT, wait).await.is_err() {
            self.observer
                .event(&Event::Warning(format!(
                    "runs still going {} s after the stop; the next start replays their journal",
                    STOP_WAIT.as_secs()
                )))
                .await;
        }
        Ok(())
    }

    /// Tells the observer (log, notifications) how a run ended, on a task of its own: a receiver that hangs up to
    /// its deadline does not hold the loop, so other jobs' slots, reloads and the stop are not delayed by it. The
    /// end is told after the run's start was (`told`): healthchecks-style receivers need `/start` before the ping.
    fn tell_finished(
        &self,
        notes: &mut JoinSet<(String, usize)>,
        name: String,
        outcome: JobOutcome,
        told: Option<tokio::task::JoinHandle<()>>,
    ) {
        let observer = self.observer.clone();
        notes.spawn(async move {
            if let Some(told) = told {
                let _ = told.await;
            }
            let failed = observer.finished(&name, &outcome).await;
            (name, failed)
        });
    }

    /// Source series and the unprotected count, from what the jobs back up now.
    async fn refresh_coverage(&self, config: &Config) {
        if let Some(cov) = self.runner.coverage(config).await {
            for (job, sources) in &cov.sources {
                if let Some(j) = config.jobs.get(job).filter(|j| j.schedule.is_some()) {
                    self.shared
                        .metrics
                        .declare_sources(job, &j.targets, sources);
                }
            }
            self.shared.metrics.unprotected(cov.unprotected.len());
        }
    }

    /// Record a run's outcome: state (persisted), metrics.
    async fn record(&self, job: &str, started: DateTime<Utc>, outcome: &JobOutcome) {
        let now = self.shared.clock.now();
        let targets = self
            .shared
            .jobs
            .lock()
            .expect("jobs")
            .get(job)
            .map(|j| j.targets.clone())
            .unwrap_or_default();
        self.shared
            .metrics
            .outcome(job, &targets, started, now, outcome);
        let written = {
            let mut state = self.shared.state.lock().expect("state");
            if !state.record(job, started, now, outcome) {
                return;
            }
            write_state(&self.state_file, &state)
        };
        if let Err(e) = written {
            // Not fatal: health and metrics are in memory; the next write tries again.
            self.observer.event(&Event::Warning(e)).await;
        }
    }
}

#[cfg(test)]
mod tests;
