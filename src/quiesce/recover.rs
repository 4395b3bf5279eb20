//! `voltar recover`: replay the journals of dead runs by the live state, and remove their leftovers.
//!
//! A journal's containers are resumed newest first, the reverse of the order they were quiesced in. `hold`
//! quiesces dependents before what they depend on (compose `depends_on`, network mode `container:`; see
//! `order.rs`) and journals each one just before it touches it, so a replay after a SIGKILL starts (or unpauses)
//! dependencies before their dependents, exactly like `release` would have.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::journal::{fsync_dir, journal_dir, Leftover, MirrorPhase, Record, STAGING_PREFIX};
use super::quiescer::{scale_back_if_untouched, still_quiesced, ServiceOutcome};
use super::QuiesceError;
use crate::catalog::QuiesceAction;
use crate::docker::{ContainerState, DockerError, Runtime};
use crate::lock::{still_at, try_flock};

/// A temporary journal name older than this, whose lock is free, is debris of a run that died while opening it.
const STALE_TMP_AGE: Duration = Duration::from_secs(60);

/// What recover did to one container of an abandoned journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoverOutcome {
    Unpaused,
    Started,
    /// Running already: nothing to do.
    AlreadyRunning,
    /// In a state the journaled action does not explain (e.g. stopped by the user): left alone.
    LeftAlone(ContainerState),
    /// Removed since: nothing to do.
    Gone,
    /// Could not be resumed; the journal is kept for the next attempt.
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub id: String,
    pub name: String,
    pub action: QuiesceAction,
    pub outcome: RecoverOutcome,
}

/// What recover did to one Swarm service an abandoned journal says was scaled to 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredService {
    pub id: String,
    pub name: String,
    /// The replica count it had before the interrupted run scaled it to 0.
    pub replicas: u64,
    /// Back at `replicas`, left alone (changed by someone since), gone; `Err`: could not be scaled back, the
    /// journal is kept.
    pub outcome: Result<ServiceOutcome, String>,
}

/// What [`recover`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoverReport {
    /// Journals of dead runs that were fully handled and deleted.
    pub replayed: Vec<PathBuf>,
    /// Journals of dead runs that were kept: a container could not be resumed, or a line was unreadable.
    pub kept: Vec<PathBuf>,
    /// Journals of runs still alive: left alone.
    pub live: usize,
    pub containers: Vec<Recovered>,
    /// Swarm services dead runs scaled to 0.
    pub services: Vec<RecoveredService>,
    /// Leftovers of dead runs (restore staging directories) and what became of them.
    pub leftovers: Vec<RecoveredLeftover>,
    /// Problems other than containers: unreadable journal lines, files that could not be removed.
    pub problems: Vec<String>,
}

/// What recover did with one leftover of an abandoned journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeftoverOutcome {
    /// Removed; how many bytes of regular files it held.
    Removed { bytes: u64 },
    /// Not there (the run removed it and died before saying so).
    AlreadyGone,
    /// Not what the journal says it is (not a directory, or not named like a staging directory): left alone.
    LeftAlone(String),
    /// Could not be removed; the journal is kept for the next attempt.
    Failed(String),
    /// A hook's or a dump's command a dead run left running was SIGKILLed (what was killed), or had ended by
    /// itself.
    HookKilled(String),
    /// A post-backup hook a dead run owed was run: its exit code (`None`: none, e.g. killed at its timeout).
    PostHookRan(Option<i64>),
    /// A restore in place through the engine left half-made was finished from its staging volume before the
    /// users were started; the previous contents are in the keep volume, if one was made.
    MirrorFinished { keep: Option<String> },
    /// The same, but finishing it failed: the users of this journal were not started, the journal is kept.
    MirrorFailed(String),
    /// A restore in place through the engine killed before it wrote the target: the target is untouched.
    MirrorUntouched,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredLeftover {
    pub leftover: Leftover,
    pub outcome: LeftoverOutcome,
}

impl RecoverReport {
    /// Whether everything found was handled.
    pub fn is_clean(&self) -> bool {
        self.kept.is_empty() && self.problems.is_empty()
    }
    /// How many containers recover unpaused or started.
    pub fn resumed(&self) -> usize {
        self.containers
            .iter()
            .filter(|c| {
                matches!(
                    c.outcome,
                    RecoverOutcome::Unpaused | RecoverOutcome::Started
                )
            })
            .count()
    }

    /// One human line per thing done or found, for the summary and `voltar recover`.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .containers
            .iter()
            .map(|c| {
                let what = match &c.outcome {
                    RecoverOutcome::Unpaused => {
                        "unpaused (left paused by an interrupted run)".to_string()
                    }
                    RecoverOutcome::Started => {
                        "started (left stopped by an interrupted run)".to_string()
                    }
                    RecoverOutcome::AlreadyRunning => "already running".to_string(),
                    RecoverOutcome::LeftAlone(st) => {
                        format!("{st}: left alone (changed by someone else since)")
                    }
                    RecoverOutcome::Gone => "no longer exists".to_string(),
                    RecoverOutcome::Failed(e) => format!(
                        "could not be resumed: {e} (journal kept; run `voltar recover` again)"
                    ),
                };
                format!("container {}: {what}", c.name)
            })
            .collect();
        for sv in &self.services {
            let n = sv.replicas;
            out.push(match &sv.outcome {
                Ok(ServiceOutcome::ScaledBack) => format!(
                    "service {}: scaled back to {n} replica(s) (left at 0 by an interrupted run)",
                    sv.name
                ),
                Ok(ServiceOutcome::LeftAlone(now)) => format!(
                    "service {}: at {now} replica(s), not the 0 an interrupted run left: left alone (changed by someone else since; it had {n})",
                    sv.name
                ),
                Ok(ServiceOutcome::Gone) => format!("service {}: no longer exists", sv.name),
                Err(e) => format!(
                    "service {}: could not be scaled back to {n}: {e} (journal kept; run `voltar recover` again)",
                    sv.name
                ),
            });
        }
        for l in &self.leftovers {
            out.push(match &l.outcome {
                LeftoverOutcome::Removed { .. }
                    if matches!(l.leftover, Leftover::Helper { .. }) =>
                {
                    format!("{}: removed (left by an interrupted run)", l.leftover)
                }
                LeftoverOutcome::Removed { bytes } => format!(
                    "{}: removed ({}, left by an interrupted run)",
                    l.leftover,
                    crate::progress::human(*bytes)
                ),
                LeftoverOutcome::AlreadyGone => format!("{}: already gone", l.leftover),
                LeftoverOutcome::LeftAlone(why) => format!("{}: left alone ({why})", l.leftover),
                LeftoverOutcome::Failed(e) => format!(
                    "{}: could not be removed: {e} (journal kept; run `voltar recover` again)",
                    l.leftover
                ),
                LeftoverOutcome::HookKilled(what) => {
                    format!("{}: left running by an interrupted run: {what}", l.leftover)
                }
                LeftoverOutcome::PostHookRan(Some(0)) => {
                    format!("{}: run now (exit code 0)", l.leftover)
                }
                LeftoverOutcome::PostHookRan(Some(c)) => {
                    format!("{}: run now: FAILED (exit code {c})", l.leftover)
                }
                LeftoverOutcome::PostHookRan(None) => {
                    format!("{}: run now: ended without an exit code", l.leftover)
                }
                LeftoverOutcome::MirrorFinished { keep } => {
                    let Leftover::EngineMirror { target, .. } = &l.leftover else {
                        unreachable!("only a mirror is finished")
                    };
                    format!(
                        "{}: interrupted while writing the volume; finished now, before its containers were \
                         started{}",
                        l.leftover,
                        keep.as_ref().map_or(String::new(), |k| format!(
                            "; the previous contents of {target} are kept in volume {k} (back them up or remove \
                             it: docker volume rm {k})"
                        ))
                    )
                }
                LeftoverOutcome::MirrorFailed(e) => format!(
                    "{}: interrupted while writing the volume, and it could NOT be finished: {e}; the volume is \
                     half-restored, so the containers of that run were NOT started: fix the cause and run `voltar \
                     recover` again (journal kept)",
                    l.leftover
                ),
                LeftoverOutcome::MirrorUntouched => format!(
                    "{}: interrupted before the volume was written: it is unchanged",
                    l.leftover
                ),
            });
        }
        out.extend(self.problems.iter().cloned());
        out
    }
}

/// What `voltar recover` did: the journals of dead runs replayed ([`recover`]) and the spool files of killed
/// backups removed (`pipeline::sweep_spool`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoverRun {
    pub journals: RecoverReport,
    /// Spool files removed.
    pub spool_files: Vec<PathBuf>,
}

impl RecoverRun {
    /// One human line per thing done or found; none: there was nothing to recover.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = self.journals.lines();
        lines.extend(self.spool_files.iter().map(|p| {
            format!(
                "removed spool file {} left by an interrupted run",
                p.display()
            )
        }));
        lines
    }
}

/// `voltar recover`: [`recover`] the journals under `state_dir`, then remove the spool files killed runs left in
/// `spool_dir`.
pub async fn recover_run(
    state_dir: &Path,
    spool_dir: &Path,
    runtime: &dyn Runtime,
) -> Result<RecoverRun, QuiesceError> {
    let journals = recover(state_dir, runtime).await?;
    let spool_files =
        crate::pipeline::sweep_spool(spool_dir).map_err(|source| QuiesceError::SpoolDir {
            path: spool_dir.to_path_buf(),
            source,
        })?;
    Ok(RecoverRun {
        journals,
        spool_files,
    })
}

pub(super) enum Claim {
    Claimed(File),
    /// Locked by a live run.
    Live,
    /// Deleted meanwhile (another recover replayed it).
    Vanished,
}

/// Open and lock a journal; succeed only if its run is dead and nobody replayed it meanwhile.
fn claim(path: &Path) -> io::Result<Claim> {
    match File::open(path) {
        Ok(f) => claim_opened(path, f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Claim::Vanished),
        Err(e) => Err(e),
    }
}

pub(super) fn claim_opened(path: &Path, file: File) -> io::Result<Claim> {
    if !try_flock(&file)? {
        return Ok(Claim::Live);
    }
    // Between our open and our lock, another recover may have replayed the journal and unlinked it: then the path
    // no longer names the inode we locked.
    if still_at(path, &file)? {
        Ok(Claim::Claimed(file))
    } else {
        Ok(Claim::Vanished)
    }
}

/// A journaled change with no `done` record.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct OpenEntry {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) action: QuiesceAction,
}

/// A journaled scale-down with no `done` record.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct OpenService {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) replicas: u64,
}

/// What a journal's text says is still open, in journal order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Parsed {
    pub(super) containers: Vec<OpenEntry>,
    pub(super) services: Vec<OpenService>,
    pub(super) leftovers: Vec<Leftover>,
    /// Descriptions of unreadable lines.
    pub(super) problems: Vec<String>,
}

pub(super) fn parse_journal(text: &str) -> Parsed {
    let mut holds: BTreeMap<u64, OpenEntry> = BTreeMap::new();
    let mut leftovers: BTreeMap<u64, Leftover> = BTreeMap::new();
    let mut services: BTreeMap<u64, OpenService> = BTreeMap::new();
    let mut problems = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    let last = lines.len().saturating_sub(1);
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(Record::Hold {
                seq,
                id,
                name,
                action,
                ..
            }) => {
                holds.insert(seq, OpenEntry { id, name, action });
            }
            Ok(Record::Create { seq, leftover, .. }) => {
                leftovers.insert(seq, leftover);
            }
            Ok(Record::Scale {
                seq,
                id,
                name,
                replicas,
                ..
            }) => {
                services.insert(seq, OpenService { id, name, replicas });
            }
            Ok(Record::Done { seq, .. }) => {
                holds.remove(&seq);
                services.remove(&seq);
                leftovers.remove(&seq);
            }
            // A last line without its newline is a write cut short by the crash; we fsync before acting, so the
            // container it names was not touched yet.
            Err(_) if i == last => {}
            Err(e) => problems.push(format!("line {}: {e}", i + 1)),
        }
    }
    Parsed {
        containers: holds.into_values().collect(),
        services: services.into_values().collect(),
        leftovers: leftovers.into_values().collect(),
        problems,
    }
}

/// Replay the journals of dead runs under `state_dir`: unpause what they paused, start what they stopped, as far as
/// the live state says it is still needed, and remove the leftovers they journaled (restore staging directories).
/// Journals of live runs are never touched. Run by `voltar recover` and at the start of every backup and restore.
pub async fn recover(
    state_dir: &Path,
    runtime: &dyn Runtime,
) -> Result<RecoverReport, QuiesceError> {
    let dir = journal_dir(state_dir);
    let mut report = RecoverReport::default();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(source) => return Err(QuiesceError::JournalDir { path: dir, source }),
    };
    let mut journals = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| QuiesceError::JournalDir {
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') && name.ends_with(".tmp") {
            sweep_tmp(&path, &mut report);
        } else if name.ends_with(".json") && !name.starts_with('.') {
            journals.push(path);
        }
    }
    journals.sort();
    for path in journals {
        let file = match claim(&path) {
            Ok(Claim::Claimed(f)) => f,
            Ok(Claim::Live) => {
                report.live += 1;
                continue;
            }
            Ok(Claim::Vanished) => continue,
            Err(e) => {
                report
                    .problems
                    .push(format!("cannot open journal {}: {e}", path.display()));
                continue;
            }
        };
        recover_one(&path, file, runtime, &mut report).await;
    }
    Ok(report)
}

async fn recover_one(
    path: &Path,
    mut file: File,
    runtime: &dyn Runtime,
    report: &mut RecoverReport,
) {
    let mut text = String::new();
    if let Err(e) = file.read_to_string(&mut text) {
        report
            .problems
            .push(format!("cannot read journal {}: {e}", path.display()));
        report.kept.push(path.to_path_buf());
        return;
    }
    let Parsed {
        containers: entries,
        services,
        leftovers,
        problems,
    } = parse_journal(&text);
    let mut keep = !problems.is_empty();
    for p in problems {
        report
            .problems
            .push(format!("journal {}: unreadable {p}", path.display()));
    }
    // A hook's command still running first: it may hold the app in a state (a lock, a dump) the containers
    // must not be resumed into. Post-backup hooks owed last, once the containers run again.
    let (execs, leftovers): (Vec<Leftover>, Vec<Leftover>) = leftovers
        .into_iter()
        .partition(|l| matches!(l, Leftover::HookExec { .. } | Leftover::DumpExec { .. }));
    let (owed, leftovers): (Vec<Leftover>, Vec<Leftover>) = leftovers
        .into_iter()
        .partition(|l| matches!(l, Leftover::PostHook { .. }));
    for leftover in execs {
        let (Leftover::HookExec { exec_id, .. } | Leftover::DumpExec { exec_id, .. }) = &leftover
        else {
            continue;
        };
        let outcome =
            LeftoverOutcome::HookKilled(runtime.kill_left_exec(exec_id).await.to_string());
        tracing::info!(leftover = %leftover, outcome = ?outcome, "recover");
        report
            .leftovers
            .push(RecoveredLeftover { leftover, outcome });
    }
    // Helper containers a dead run left (created, never started: nothing to wait for).
    let (helpers, leftovers): (Vec<Leftover>, Vec<Leftover>) = leftovers
        .into_iter()
        .partition(|l| matches!(l, Leftover::Helper { .. }));
    for leftover in helpers {
        let Leftover::Helper { name, .. } = &leftover else {
            continue;
        };
        let outcome = match runtime.remove_left_helper(name).await {
            Ok(true) => LeftoverOutcome::Removed { bytes: 0 },
            Ok(false) => LeftoverOutcome::AlreadyGone,
            Err(e) => {
                keep = true;
                LeftoverOutcome::Failed(e.to_string())
            }
        };
        tracing::info!(leftover = %leftover, outcome = ?outcome, "recover");
        report
            .leftovers
            .push(RecoveredLeftover { leftover, outcome });
    }
    // Restores in place through the engine a dead run left with the users stopped (their helpers are gone,
    // above): one that was writing its target is finished from its staging volume BEFORE any container of this
    // journal is started; if that fails, none is.
    let (mirrors, leftovers): (Vec<Leftover>, Vec<Leftover>) = leftovers
        .into_iter()
        .partition(|l| matches!(l, Leftover::EngineMirror { .. }));
    let applying: Vec<String> = mirrors
        .iter()
        .filter_map(|l| match l {
            Leftover::EngineMirror {
                target,
                phase: MirrorPhase::Applying,
                ..
            } => Some(target.clone()),
            _ => None,
        })
        .collect();
    // Volumes that must stay: previous contents (the only copy), and the staging volume of a failed redo.
    let mut stay: Vec<String> = leftovers
        .iter()
        .filter_map(|l| match l {
            Leftover::KeptVolume { volume, .. } => Some(volume.clone()),
            _ => None,
        })
        .collect();
    let mut half_made = None;
    for leftover in mirrors {
        let Leftover::EngineMirror {
            target,
            staging,
            keep: kept,
            image,
            helper,
            phase,
        } = &leftover
        else {
            continue;
        };
        let outcome = match phase {
            MirrorPhase::Applying => {
                match runtime.redo_mirror(helper, image, staging, target).await {
                    Ok(()) => LeftoverOutcome::MirrorFinished { keep: kept.clone() },
                    Err(e) => {
                        keep = true;
                        stay.push(staging.clone());
                        half_made = Some(target.clone());
                        LeftoverOutcome::MirrorFailed(e.to_string())
                    }
                }
            }
            // Superseded: the same restore went on to write the target (its `Applying` entry, above).
            MirrorPhase::Keeping if applying.contains(target) => continue,
            MirrorPhase::Keeping => LeftoverOutcome::MirrorUntouched,
        };
        tracing::info!(leftover = %leftover, outcome = ?outcome, "recover");
        report
            .leftovers
            .push(RecoveredLeftover { leftover, outcome });
    }
    // Newest first, like release.
    for OpenEntry { id, name, action } in entries.into_iter().rev() {
        let outcome = match &half_made {
            Some(v) => RecoverOutcome::Failed(format!(
                "not started: volume {v} is half-restored and could not be finished (see above)"
            )),
            None => recover_container(runtime, &id, action).await,
        };
        if matches!(outcome, RecoverOutcome::Failed(_)) {
            keep = true;
        }
        tracing::info!(container = %name, action = %action, outcome = ?outcome, "recover");
        report.containers.push(Recovered {
            id,
            name,
            action,
            outcome,
        });
    }
    // Services after the containers: a hold scales its services before it pauses or stops containers.
    for OpenService { id, name, replicas } in services.into_iter().rev() {
        let outcome = match &half_made {
            Some(v) => Err(format!(
                "not scaled back: volume {v} is half-restored and could not be finished (see above)"
            )),
            None => scale_back_if_untouched(runtime, &id, replicas)
                .await
                .map_err(|e| e.to_string()),
        };
        if outcome.is_err() {
            keep = true;
        }
        tracing::info!(service = %name, replicas, outcome = ?outcome, "recover");
        report.services.push(RecoveredService {
            id,
            name,
            replicas,
            outcome,
        });
    }
    // A restore's new volume that it did not finish (its helpers are gone already, above).
    let (volumes, leftovers): (Vec<Leftover>, Vec<Leftover>) = leftovers
        .into_iter()
        .partition(|l| matches!(l, Leftover::NewVolume { .. }));
    for leftover in volumes {
        let outcome = match &leftover {
            Leftover::NewVolume { volume } if stay.contains(volume) => {
                if half_made.is_none() {
                    // Kept as previous contents: its own entry names it.
                    continue;
                }
                LeftoverOutcome::LeftAlone(
                    "kept: the interrupted restore is finished from it (or it holds the previous contents)"
                        .into(),
                )
            }
            _ => remove_engine_leftover(runtime, &leftover).await,
        };
        if matches!(outcome, LeftoverOutcome::Failed(_)) {
            keep = true;
        }
        tracing::info!(leftover = %leftover, outcome = ?outcome, "recover");
        report
            .leftovers
            .push(RecoveredLeftover { leftover, outcome });
    }
    for leftover in leftovers {
        let outcome = remove_leftover(&leftover);
        if matches!(outcome, LeftoverOutcome::Failed(_)) {
            keep = true;
        }
        tracing::info!(leftover = %leftover, outcome = ?outcome, "recover");
        report
            .leftovers
            .push(RecoveredLeftover { leftover, outcome });
    }
    for leftover in owed {
        let outcome = run_owed_post_hook(runtime, &leftover).await;
        tracing::info!(leftover = %leftover, outcome = ?outcome, "recover");
        report
            .leftovers
            .push(RecoveredLeftover { leftover, outcome });
    }
    if keep {
        report.kept.push(path.to_path_buf());
        return;
    }
    // Unlink while still holding the lock (see `claim`).
    match fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                let _ = fsync_dir(dir);
            }
            report.replayed.push(path.to_path_buf());
        }
        Err(e) => {
            report.problems.push(format!(
                "cannot remove replayed journal {}: {e}",
                path.display()
            ));
            report.kept.push(path.to_path_buf());
        }
    }
    drop(file);
}

async fn recover_container(
    runtime: &dyn Runtime,
    id: &str,
    action: QuiesceAction,
) -> RecoverOutcome {
    let state = match runtime.state(id).await {
        Ok(s) => s,
        Err(DockerError::NoSuchContainer(_)) => return RecoverOutcome::Gone,
        Err(e) => return RecoverOutcome::Failed(e.to_string()),
    };
    if state == ContainerState::Running {
        return RecoverOutcome::AlreadyRunning;
    }
    if !still_quiesced(action, &state) {
        return RecoverOutcome::LeftAlone(state);
    }
    let (res, done) = match action {
        QuiesceAction::Pause => (runtime.unpause(id).await, RecoverOutcome::Unpaused),
        _ => (runtime.start(id).await, RecoverOutcome::Started),
    };
    match res {
        Ok(()) => done,
        Err(DockerError::NoSuchContainer(_)) => RecoverOutcome::Gone,
        Err(e) => RecoverOutcome::Failed(e.to_string()),
    }
}

/// Run a post-backup hook a dead run owed, when its container runs (else it is left, and said so). Run once:
/// a failure is reported, not retried (the journal is not kept for it).
async fn run_owed_post_hook(runtime: &dyn Runtime, owed: &Leftover) -> LeftoverOutcome {
    let Leftover::PostHook {
        container_id,
        argv,
        user,
        timeout_ms,
        ..
    } = owed
    else {
        return LeftoverOutcome::LeftAlone("not a post-backup hook".into());
    };
    match runtime.state(container_id).await {
        Ok(ContainerState::Running) => {}
        Ok(s) => return LeftoverOutcome::LeftAlone(format!("the container is {s}: not run")),
        Err(DockerError::NoSuchContainer(_)) => {
            return LeftoverOutcome::LeftAlone("the container no longer exists: not run".into())
        }
        Err(e) => return LeftoverOutcome::LeftAlone(format!("not run: {e}")),
    }
    match runtime
        .run_command(
            container_id,
            argv,
            user.as_deref(),
            Duration::from_millis(*timeout_ms),
        )
        .await
    {
        Ok(code) => LeftoverOutcome::PostHookRan(code),
        Err(e) => LeftoverOutcome::LeftAlone(format!("could not be run: {e}")),
    }
}

/// Remove a helper container or an unfinished restore's new volume a dead run left.
async fn remove_engine_leftover(runtime: &dyn Runtime, leftover: &Leftover) -> LeftoverOutcome {
    let done = match leftover {
        Leftover::NewVolume { volume } => runtime.remove_left_volume(volume).await,
        _ => return LeftoverOutcome::LeftAlone("not an engine object".into()),
    };
    match done {
        Ok(()) => LeftoverOutcome::Removed { bytes: 0 },
        Err(DockerError::NoSuchVolume(_) | DockerError::NoSuchContainer(_)) => {
            LeftoverOutcome::AlreadyGone
        }
        Err(e) => LeftoverOutcome::Failed(e.to_string()),
    }
}

/// Remove a leftover of a dead run, after checking it is what the journal says it is.
fn remove_leftover(leftover: &Leftover) -> LeftoverOutcome {
    match leftover {
        // Handled by `recover_one` (they need the engine), never here.
        Leftover::HookExec { .. }
        | Leftover::DumpExec { .. }
        | Leftover::PostHook { .. }
        | Leftover::Helper { .. } => {
            LeftoverOutcome::LeftAlone("a command or a container, not a file".into())
        }
        Leftover::NewVolume { .. } | Leftover::EngineMirror { .. } => {
            LeftoverOutcome::LeftAlone("an engine object, not a file".into())
        }
        Leftover::KeptVolume { volume, .. } => LeftoverOutcome::LeftAlone(format!(
            "a restore ended before its safety backup was committed: this is the only copy of what was there; \
             back it up or remove it (docker volume rm {volume})"
        )),
        Leftover::PreviousContents { .. } => LeftoverOutcome::LeftAlone(
            "a restore ended before its safety backup was committed: this is the only copy of what was there; \
             back it up or remove it"
                .into(),
        ),
        Leftover::StagingDir { path } => {
            use std::os::unix::ffi::OsStrExt;
            let named = path.is_absolute()
                && path
                    .file_name()
                    .is_some_and(|n| n.as_bytes().starts_with(STAGING_PREFIX.as_bytes()));
            if !named {
                return LeftoverOutcome::LeftAlone(format!(
                    "not named {STAGING_PREFIX}*: not voltar's to remove"
                ));
            }
            match fs::symlink_metadata(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => LeftoverOutcome::AlreadyGone,
                Err(e) => LeftoverOutcome::Failed(e.to_string()),
                Ok(m) if !m.is_dir() => {
                    LeftoverOutcome::LeftAlone("not a directory: not voltar's to remove".into())
                }
                Ok(_) => {
                    let bytes = tree_bytes(path);
                    match fs::remove_dir_all(path) {
                        Ok(()) => LeftoverOutcome::Removed { bytes },
                        Err(e) => LeftoverOutcome::Failed(e.to_string()),
                    }
                }
            }
        }
    }
}

/// Bytes of the regular files under `dir` (symlinks not followed), for the report.
fn tree_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Remove a temporary journal left by a run that died between creating and naming it (it holds no entries).
fn sweep_tmp(path: &Path, report: &mut RecoverReport) {
    let old = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > STALE_TMP_AGE);
    if !old {
        return;
    }
    if let Ok(Claim::Claimed(_f)) = claim(path) {
        if let Err(e) = fs::remove_file(path) {
            report
                .problems
                .push(format!("cannot remove stale {}: {e}", path.display()));
        }
    }
}
