//! Quiesce containers while their source is read, and always put them back — also after a crash.
//!
//! # Design
//!
//! * **Explicit hold / release.** [`Quiescer::hold`] pauses or stops, in order, the containers the plan names;
//!   [`Quiescer::release`] resumes them in reverse order and measures each one's downtime. `Drop` cannot await,
//!   so release is an explicit step the orchestration runs on every path (success, error, a panic caught as a
//!   `JoinError` from `spawn_blocking`, a cancelled token after SIGINT/SIGTERM). `hold` undoes its own partial work
//!   before it returns an error, so a caller only ever has to release a [`Held`] it actually got.
//!   `hold` is not cancel-safe (do not `select!` it away); [`Quiescer::release_pending`] is the backstop that
//!   resumes everything this run journaled and did not resume yet, whoever holds the `Held`.
//! * **Dependents first.** Within one hold, a container is quiesced after every container that depends on it
//!   (compose `depends_on` within its project, network mode `container:`; `order.rs`), so release, the
//!   `release_pending` backstop and `recover` (all newest first) start dependencies before their dependents.
//! * **Only what was running, only what we changed.** `hold` re-reads each container's state right before acting:
//!   a container that is not running (stopped, or paused by the user) is skipped and reported, so release never
//!   starts a container that was down and never unpauses one the user paused. A refused pause (the user paused
//!   it in between) is never undone; a call whose answer was lost (timeout) is judged by the live state afterwards.
//!   Known narrow race: the engine answers a stop of an already-stopped container with success (304), so a user
//!   stop landing in the milliseconds between our state check and our stop would be undone at release.
//! * **Journal before action.** Each change is appended to a per-run journal file and fsynced *before* the
//!   container is touched; a `done` record is appended after it is resumed. A run killed with SIGKILL leaves the
//!   journal behind, and [`recover`] (run by `voltar recover` and at the start of every run) resumes what it names.
//! * **Liveness by `flock`.** A run holds an exclusive `flock` on its journal for its whole life. The kernel drops
//!   the lock when the process dies, however it dies, so "journal whose lock I can take" means exactly "journal of a
//!   dead (or finished) run": recover never touches a live run's containers, without pid files or timestamps.
//!   Rejected alternatives: pid liveness checks (pids are reused, and a container's pid namespace hides them) and
//!   age thresholds (a long backup would look dead). Two concurrent recovers cannot replay one journal twice: the
//!   second cannot take the lock while the first works, and after the first deletes the file the second notices
//!   that the path no longer names the inode it locked.
//! * **Append-only JSON lines.** Records are appended, never rewritten: rewriting in place can tear, and
//!   write-temp-then-rename would swap the locked inode for an unlocked one. A torn last line (crash mid-write) is
//!   ignored — the container was not touched yet, since we fsync before acting. The file is created under a
//!   temporary name, locked, then renamed into place, so recover never sees a journal that is not locked yet.
//!   A failed journal write poisons the journal: no further container is quiesced by this run.
//! * **Recover acts on the live state**, not on what the journal assumed: an entry whose container is already
//!   running is reported as fine, one that is gone as gone, and one that is in some other state (e.g. stopped by
//!   the user after being paused) is left alone.
//!
//! * **One quiesce per container** (acceptance row 27). Before it changes any container, `hold` takes the
//!   container's quiesce lock ([`ContainerLock`], a `flock` in `<state_dir>/locks`) and keeps it until the
//!   container is resumed (the lock lives with the journal entry, so the [`Quiescer::release_pending`] backstop
//!   releases it too). A second run that wants the same container waits for that run to resume it — bounded by
//!   [`QUIESCE_WAIT`], and cut short by its cancel token — then looks at the live state again and quiesces the
//!   container itself; when the wait runs out, that source fails with a message naming the other run. Without
//!   the lock the second run took the first one's pause for the user's: it recorded no downtime, and if the first
//!   resumed during the second's read, that backup was silently inconsistent. The locks of one `hold` are all
//!   taken (in id order, so two runs cannot deadlock) before any container is touched, so waiting never extends
//!   a pause this run made. At plan time [`see_through_other_runs`] marks a container held by another live run as
//!   running (that is its state for the user), so the plan quiesces it again instead of leaving it "as found".
//!   A container paused while its lock is free was paused by the user (or by a dead run, which recover — run
//!   first by every backup — puts back) and stays untouched.
//!   A container with hooks is locked longer: from before its pre-backup hook until after its post-backup hook
//!   ([`Quiescer::lock_containers`], then [`Quiescer::hold_locked`]), so two runs never interleave one
//!   container's hooks and reads.
//! * **Swarm services are scaled, never their tasks stopped.** Stopping a task container makes the orchestrator
//!   start a replacement (writing to the volume while it is read), so a replicated service whose tasks use a
//!   source with quiesce `stop` is scaled to 0 ([`Quiescer::scale_down`], before the containers are held) and back
//!   to its replica count at release. The replica count is journaled ("scaled from N", a `scale` record) and
//!   fsynced before the scale-down; the service's quiesce lock (`service_<id>` beside the containers' locks) is
//!   kept until it is back. The hold waits until the service's task containers on this engine are down (stop
//!   timeout + [`SERVICE_DOWN_MARGIN`]), else scales it back and fails. Release and recover scale it back only
//!   while it is still at 0: a user who rescaled it meanwhile is not fought. A global service (or a job) cannot be
//!   scaled: `scale_down` refuses it untouched, naming the label to set (`voltar.quiesce=pause`: pausing a task
//!   does not make swarm replace it — seen on Engine 20.10 for 25 s, also with a 1 s healthcheck). Rejected: stopping
//!   the task container and racing the orchestrator; updating the service with a placement constraint that
//!   excludes this node (it rewrites the user's spec, and a crash leaves that rewrite behind).
//! * **Leftovers are journaled too** (row 26). A restore's staging directory is journaled before it is created
//!   and marked done when it is removed; `recover` (and so the next backup or restore) removes what a killed
//!   run left and reports it with its size. [`Leftover`] is the place for other things a run creates and must
//!   remove again (helper containers, later).
//!
//! The journal directory is `<state_dir>/journal` (mode 0700), one file `<pid>-<random>.json` (0600) per live run.
//! Journal writes are small synchronous `write` + `fdatasync` calls (milliseconds), done inline.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::catalog::QuiesceAction;
use crate::docker::DockerError;
use crate::lock::LockError;

mod journal;
mod order;
mod quiescer;
mod recover;

pub use journal::{journal_dir, Journal, Leftover, MirrorPhase, JOURNAL_DIR, STAGING_PREFIX};
pub use quiescer::{
    see_through_other_runs, ContainerLocks, Held, HeldContainer, HeldService, Hold, Quiescer,
    ReleaseOutcome, ReleaseReport, Released, ReleasedService, ServiceHold, ServiceOutcome, Skipped,
    QUIESCE_WAIT, SERVICE_DOWN_MARGIN,
};
pub use recover::{
    recover, recover_run, LeftoverOutcome, RecoverOutcome, RecoverReport, Recovered,
    RecoveredLeftover, RecoveredService,
};

#[derive(Debug, thiserror::Error)]
pub enum QuiesceError {
    /// The journal cannot be created or written: nothing is quiesced without it.
    #[error("cannot write the quiesce journal {path}: {cause} (check that the state dir is writable by this user)")]
    Journal { path: PathBuf, cause: io::Error },
    /// An earlier journal write failed; the run refuses to quiesce more containers.
    #[error("the quiesce journal {path} could not be written earlier; no more containers are quiesced in this run (check the state dir's disk)")]
    JournalPoisoned { path: PathBuf },
    /// Quiescing a container failed; the containers held before it were resumed (or are listed as still held).
    #[error("cannot {} container {name} ({}): {source}{}", verb(*.action), short(.id), still_note(.still_held))]
    Hold {
        id: String,
        name: String,
        action: QuiesceAction,
        #[source]
        source: Box<DockerError>,
        /// Containers that could not be put back (or whose state is unknown): `voltar recover` will retry them.
        still_held: Vec<String>,
    },
    /// A container could not be resumed: it is still paused or stopped.
    #[error("container {name} ({}) is still {}: {source}: run `voltar recover` or `docker {} {name}`", short(.id), participle(*.action), undo_cmd(*.action))]
    Resume {
        id: String,
        name: String,
        action: QuiesceAction,
        #[source]
        source: Box<DockerError>,
    },
    /// A Swarm service could not be scaled to 0; whatever this hold changed was put back.
    #[error("cannot scale swarm service {name} to 0: {source}")]
    Scale {
        name: String,
        #[source]
        source: Box<DockerError>,
    },
    /// A global service (or a job) cannot be scaled to 0, and stopping its task would only make swarm replace it.
    #[error("swarm service {name} is {mode} and cannot be scaled to 0 (stopping its task would only make swarm replace it): set the label voltar.quiesce=pause on the service (pauses its task on this node while the volume is read) or voltar.quiesce=none")]
    NotScalable { name: String, mode: String },
    /// The service was scaled to 0, but its task containers here did not go down in time; it was scaled back.
    #[error("swarm service {name} was scaled to 0 but its tasks {} were still up after {}; it was scaled back and the source not read", tasks.join(", "), humantime::format_duration(*.waited))]
    TasksStillUp {
        name: String,
        tasks: Vec<String>,
        waited: Duration,
    },
    /// A service could not be scaled back: it is still at 0 replicas.
    #[error("swarm service {name} is still scaled to 0: {source}: run `voltar recover` or `docker service scale {name}={replicas}`")]
    ScaleBack {
        name: String,
        replicas: u64,
        #[source]
        source: Box<DockerError>,
    },
    /// Another voltar run holds the container (paused or stopped) and did not resume it in time.
    #[error("container {name} ({}) is held by another voltar run (pid {pid}), which has not resumed it after {}; nothing was quiesced for this source: run it again once that run is done", short(.id), humantime::format_duration(*.waited))]
    Busy {
        id: String,
        name: String,
        pid: String,
        waited: Duration,
    },
    /// Interrupted (SIGINT/SIGTERM) while waiting for another run to resume a container.
    #[error("interrupted while waiting for another voltar run to resume container {name}; nothing was quiesced for this source")]
    Interrupted { name: String },
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The journal directory cannot be read during recover.
    #[error(
        "cannot read the quiesce journals in {path}: {source} (check the state dir's permissions)"
    )]
    JournalDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The spool directory cannot be cleaned during recover.
    #[error("cleaning the spool directory {}", path.display())]
    SpoolDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl QuiesceError {
    /// Whether containers may have been left paused or stopped (the caller should tell the user to recover).
    pub fn leaves_containers_quiesced(&self) -> bool {
        match self {
            QuiesceError::Hold { still_held, .. } => !still_held.is_empty(),
            QuiesceError::Resume { .. } | QuiesceError::ScaleBack { .. } => true,
            _ => false,
        }
    }
}

fn verb(a: QuiesceAction) -> &'static str {
    match a {
        QuiesceAction::Pause => "pause",
        QuiesceAction::Stop => "stop",
        QuiesceAction::None => "inspect",
    }
}

fn participle(a: QuiesceAction) -> &'static str {
    match a {
        QuiesceAction::Pause => "paused",
        QuiesceAction::Stop => "stopped",
        QuiesceAction::None => "untouched",
    }
}

fn undo_cmd(a: QuiesceAction) -> &'static str {
    match a {
        QuiesceAction::Pause => "unpause",
        _ => "start",
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn still_note(still: &[String]) -> String {
    if still.is_empty() {
        "; the containers quiesced before it were resumed".to_string()
    } else {
        format!(
            "; these may still be paused or stopped: {}: run `voltar recover`",
            still.join(", ")
        )
    }
}

/// Create the helper container `name` (`docker::helper`) whose journal entry `seq` (`Leftover::Helper`) the
/// caller has written: if the create fails, the container is removed by name all the same (it may exist, after a
/// timeout) and the entry is dropped only when that worked, else `recover` removes it. The one lifecycle of a
/// helper for backup's reads and restore's writes; [`remove_helper`] ends it.
#[allow(clippy::too_many_arguments)]
pub async fn create_helper(
    engine: &crate::docker::Engine,
    journal: &Journal,
    seq: u64,
    name: &str,
    volume: &str,
    image: &str,
    label: &str,
    access: crate::docker::helper::Access,
) -> Result<String, DockerError> {
    match engine
        .create_helper(name, volume, image, label, access)
        .await
    {
        Ok(id) => Ok(id),
        Err(e) => {
            match engine.remove_helper(name).await {
                Ok(_) => journal.removed(seq),
                Err(re) => tracing::warn!(helper = %name, error = %re,
                    "cannot remove a helper container whose creation failed; `voltar recover` will"),
            }
            Err(e)
        }
    }
}

/// Remove a helper container made by [`create_helper`] and drop its journal entry; on `Err` the entry stays,
/// so `recover` removes it later.
pub async fn remove_helper(
    engine: &crate::docker::Engine,
    journal: &Journal,
    seq: u64,
    name_or_id: &str,
) -> Result<(), DockerError> {
    engine.remove_helper(name_or_id).await?;
    journal.removed(seq);
    Ok(())
}

#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;
