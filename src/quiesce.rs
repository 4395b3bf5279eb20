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
//! * **Leftovers are journaled too** (row 26). A restore's staging directory is journaled before it is created
//!   and marked done when it is removed; `recover` (and so the next backup or restore) removes what a killed
//!   run left and reports it with its size. [`Leftover`] is the place for other things a run creates and must
//!   remove again (helper containers, later).
//!
//! The journal directory is `<state_dir>/journal` (mode 0700), one file `<pid>-<random>.json` (0600) per live run.
//! Journal writes are small synchronous `write` + `fdatasync` calls (milliseconds), done inline.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::catalog::QuiesceAction;
use crate::docker::{ContainerInfo, ContainerState, DockerError, Runtime};
use crate::lock::{ContainerLock, LockError};

/// Sub-directory of the state dir that holds the journals.
pub const JOURNAL_DIR: &str = "journal";

/// A temporary journal name older than this, whose lock is free, is debris of a run that died while opening it.
const STALE_TMP_AGE: Duration = Duration::from_secs(60);

/// How long `hold` waits for another voltar run to resume a container it holds before failing that source: the
/// 10 minutes issue 8 sets as the default cap on one container's downtime (`[quiesce] max-downtime`); a run that
/// holds a container longer than that is in trouble itself, and waiting on it longer would only stack runs up.
pub const QUIESCE_WAIT: Duration = Duration::from_secs(10 * 60);

/// How often a waiting `hold` looks whether the other run has resumed the container.
const QUIESCE_POLL: Duration = Duration::from_millis(200);

/// Name prefix of a restore's staging directories; recover removes nothing else.
pub const STAGING_PREFIX: &str = ".voltar-staging-";

/// Where the journals of `state_dir` live.
pub fn journal_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(JOURNAL_DIR)
}

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

#[derive(Debug, thiserror::Error)]
pub enum QuiesceError {
    /// The journal cannot be created or written: nothing is quiesced without it.
    #[error("cannot write the quiesce journal {path}: {source} (check that the state dir is writable by this user)")]
    Journal {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
}

impl QuiesceError {
    /// Whether containers may have been left paused or stopped (the caller should tell the user to recover).
    pub fn leaves_containers_quiesced(&self) -> bool {
        match self {
            QuiesceError::Hold { still_held, .. } => !still_held.is_empty(),
            QuiesceError::Resume { .. } => true,
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

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One line of a journal file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
enum Record {
    /// Written (and fsynced) before the container is paused / stopped.
    Hold {
        seq: u64,
        id: String,
        name: String,
        action: QuiesceAction,
        state_before: String,
        at: String,
    },
    /// Written (and fsynced) before a leftover is created, e.g. a restore's staging directory.
    Create {
        seq: u64,
        leftover: Leftover,
        at: String,
    },
    /// Written after the container is back (or found not to need it), or the leftover is removed.
    Done { seq: u64, at: String },
}

/// Something a run creates and removes again itself; journaled before it exists, so what a killed run leaves is
/// found and removed by [`recover`]. (Helper containers for the engine's archive API belong here later.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Leftover {
    /// A restore's staging directory beside its destination (`.voltar-staging-*`), absolute: removed with
    /// everything in it (a partial extraction, or the old contents after the swap).
    StagingDir {
        #[serde(with = "path_repr")]
        path: PathBuf,
    },
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leftover::StagingDir { path } => {
                write!(f, "restore staging directory {}", path.display())
            }
        }
    }
}

/// Paths in the journal: a string when UTF-8, else the raw bytes (a volume or `--to-dir` path need not be UTF-8).
mod path_repr {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Utf8(String),
        Bytes(Vec<u8>),
    }

    pub fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
        match p.to_str() {
            Some(t) => Repr::Utf8(t.to_string()),
            None => Repr::Bytes(p.as_os_str().as_bytes().to_vec()),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Utf8(t) => PathBuf::from(t),
            Repr::Bytes(b) => PathBuf::from(OsString::from_vec(b)),
        })
    }
}

/// A container this run journaled and has not resumed yet.
#[derive(Clone, Debug)]
struct Pending {
    id: String,
    name: String,
    action: QuiesceAction,
    since: Instant,
}

struct Inner {
    file: File,
    next_seq: u64,
    pending: BTreeMap<u64, Pending>,
    /// The quiesce locks of pending containers, released when their entry is done.
    locks: BTreeMap<u64, ContainerLock>,
    /// Leftovers journaled and not removed yet.
    leftovers: BTreeMap<u64, Leftover>,
    poisoned: bool,
    /// Tests simulate a crash: close the file (dropping the lock) without cleaning up.
    #[cfg(test)]
    abandon: bool,
}

/// The crash journal of one run. Holds an exclusive `flock` on its file for its lifetime; see the module docs.
pub struct Journal {
    path: PathBuf,
    dir: PathBuf,
    state_dir: PathBuf,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

/// Take an exclusive flock without waiting. `Ok(false)`: someone else holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Create this run's journal in `<state_dir>/journal` (created 0700 if missing) and lock it.
    pub fn open(state_dir: &Path) -> Result<Journal, QuiesceError> {
        let dir = journal_dir(state_dir);
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| QuiesceError::Journal { path, source }
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(err(&dir))?;
        let stem = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        let tmp = dir.join(format!(".{stem}.tmp"));
        let path = dir.join(format!("{stem}.json"));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err(&tmp))?;
        // Lock before the file gets a name recover looks at: recover must never find an unlocked live journal.
        match try_lock(&file) {
            Ok(true) => {}
            Ok(false) => {
                let _ = fs::remove_file(&tmp);
                return Err(QuiesceError::Journal {
                    path: tmp,
                    source: io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "a fresh journal file is locked by someone else",
                    ),
                });
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(QuiesceError::Journal {
                    path: tmp,
                    source: e,
                });
            }
        }
        fs::rename(&tmp, &path).map_err(err(&path))?;
        fsync_dir(&dir).map_err(err(&dir))?;
        Ok(Journal {
            path,
            dir,
            state_dir: state_dir.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                next_seq: 0,
                pending: BTreeMap::new(),
                locks: BTreeMap::new(),
                leftovers: BTreeMap::new(),
                poisoned: false,
                #[cfg(test)]
                abandon: false,
            }),
        })
    }

    /// This run's journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state directory the journal (and the quiesce locks) live in.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn lock_inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (each method updates after its write): keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, inner: &mut Inner, rec: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(io::Error::other)?;
        line.push(b'\n');
        inner.file.write_all(&line)?;
        inner.file.sync_data()
    }

    /// Append a new entry (fsynced); returns its sequence number.
    fn record(
        &self,
        inner: &mut Inner,
        rec: impl FnOnce(u64) -> Record,
    ) -> Result<u64, QuiesceError> {
        if inner.poisoned {
            return Err(QuiesceError::JournalPoisoned {
                path: self.path.clone(),
            });
        }
        let seq = inner.next_seq;
        if let Err(source) = self.append(inner, &rec(seq)) {
            // A half-written line would merge with the next one: write nothing more to this file.
            inner.poisoned = true;
            return Err(QuiesceError::Journal {
                path: self.path.clone(),
                source,
            });
        }
        inner.next_seq += 1;
        Ok(seq)
    }

    /// Journal `id` before it is changed; returns the entry's sequence number. The container's quiesce lock is
    /// kept with the entry until it is done.
    fn begin(
        &self,
        id: &str,
        name: &str,
        action: QuiesceAction,
        state_before: &ContainerState,
        lock: Option<ContainerLock>,
    ) -> Result<u64, QuiesceError> {
        let mut inner = self.lock_inner();
        let seq = self.record(&mut inner, |seq| Record::Hold {
            seq,
            id: id.to_string(),
            name: name.to_string(),
            action,
            state_before: state_before.to_string(),
            at: now_rfc3339(),
        })?;
        if let Some(l) = lock {
            inner.locks.insert(seq, l);
        }
        inner.pending.insert(
            seq,
            Pending {
                id: id.to_string(),
                name: name.to_string(),
                action,
                since: Instant::now(),
            },
        );
        Ok(seq)
    }

    /// Mark an entry resumed (or a leftover removed). A failure here is harmless (recover will find the
    /// container running, the leftover gone) and is logged. Releases the container's quiesce lock last.
    fn done(&self, seq: u64) {
        let mut inner = self.lock_inner();
        inner.pending.remove(&seq);
        inner.leftovers.remove(&seq);
        if !inner.poisoned {
            let rec = Record::Done {
                seq,
                at: now_rfc3339(),
            };
            if let Err(e) = self.append(&mut inner, &rec) {
                inner.poisoned = true;
                tracing::warn!(journal = %self.path.display(), error = %e, "cannot mark an entry done in the journal");
            }
        }
        inner.locks.remove(&seq);
    }

    /// Journal `what` before it is created. Call [`Journal::removed`] once it is gone again (or was never made).
    pub fn will_create(&self, what: &Leftover) -> Result<u64, QuiesceError> {
        let mut inner = self.lock_inner();
        let seq = self.record(&mut inner, |seq| Record::Create {
            seq,
            leftover: what.clone(),
            at: now_rfc3339(),
        })?;
        inner.leftovers.insert(seq, what.clone());
        Ok(seq)
    }

    /// The leftover journaled as `seq` is gone.
    pub fn removed(&self, seq: u64) {
        self.done(seq);
    }

    fn pending_entries(&self) -> Vec<(u64, Pending)> {
        self.lock_inner()
            .pending
            .iter()
            .map(|(s, p)| (*s, p.clone()))
            .collect()
    }

    fn is_pending(&self, seq: u64) -> bool {
        self.lock_inner().pending.contains_key(&seq)
    }

    /// Names of the containers journaled and not resumed yet.
    pub fn pending(&self) -> Vec<String> {
        self.lock_inner()
            .pending
            .values()
            .map(|p| p.name.clone())
            .collect()
    }

    #[cfg(test)]
    fn abandon(self) {
        self.lock_inner().abandon = true;
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let inner = self.lock_inner();
        #[cfg(test)]
        if inner.abandon {
            return;
        }
        if inner.pending.is_empty() && inner.leftovers.is_empty() {
            // Everything is back: the journal has nothing left to say. Unlink while still holding the lock, so a
            // concurrent recover that opened it sees the inode is gone and skips it.
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!(journal = %self.path.display(), error = %e, "cannot remove the finished journal");
            } else {
                let _ = fsync_dir(&self.dir);
            }
        } else if !inner.pending.is_empty() {
            let names: Vec<&str> = inner.pending.values().map(|p| p.name.as_str()).collect();
            tracing::error!(
                journal = %self.path.display(),
                containers = ?names,
                "containers were not resumed; the journal is kept so `voltar recover` (or the next run) can resume them"
            );
        } else {
            let what: Vec<String> = inner.leftovers.values().map(|l| l.to_string()).collect();
            tracing::warn!(
                journal = %self.path.display(),
                leftovers = ?what,
                "could not remove everything this run created; `voltar recover` (or the next run) removes it"
            );
        }
        // The file closes with `inner`, which releases the lock.
    }
}

/// What `hold` did: the containers it quiesced, and the ones it found not running and left alone.
#[must_use = "containers stay paused or stopped until `Quiescer::release` is called"]
#[derive(Debug, Default)]
pub struct Held {
    held: Vec<HeldContainer>,
    skipped: Vec<Skipped>,
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
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.held.is_empty() {
            let names: Vec<&str> = self.held.iter().map(|h| h.name.as_str()).collect();
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

/// What `release` did; it tries every container, so there may be several errors.
#[derive(Debug, Default)]
pub struct ReleaseReport {
    pub released: Vec<Released>,
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

    /// Take the quiesce lock of every container `holds` may change, in id order, waiting (bounded) for other
    /// runs that hold one. Nothing is touched yet, so a wait never extends a pause or stop of this run.
    async fn lock_all(
        &self,
        holds: &[Hold],
    ) -> Result<BTreeMap<String, ContainerLock>, QuiesceError> {
        let wanted: BTreeMap<&str, &str> = holds
            .iter()
            .filter(|h| h.action != QuiesceAction::None)
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

    /// Quiesce `holds` in order. Only containers running right now are touched. On the first failure the
    /// containers already quiesced are resumed (in reverse order) before the error is returned.
    pub async fn hold(&self, holds: &[Hold]) -> Result<Held, QuiesceError> {
        let mut locks = self.lock_all(holds).await?;
        let mut held = Held::default();
        for h in holds {
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
        report
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

/// Whether `state` is what `action` leaves behind (so it is ours to undo).
fn still_quiesced(action: QuiesceAction, state: &ContainerState) -> bool {
    match action {
        QuiesceAction::Pause => *state == ContainerState::Paused,
        QuiesceAction::Stop => matches!(state, ContainerState::Exited | ContainerState::Created),
        QuiesceAction::None => false,
    }
}

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
        for l in &self.leftovers {
            out.push(match &l.outcome {
                LeftoverOutcome::Removed { bytes } => format!(
                    "{}: removed ({}, left by an interrupted run)",
                    l.leftover,
                    crate::cli::human(*bytes)
                ),
                LeftoverOutcome::AlreadyGone => format!("{}: already gone", l.leftover),
                LeftoverOutcome::LeftAlone(why) => format!("{}: left alone ({why})", l.leftover),
                LeftoverOutcome::Failed(e) => format!(
                    "{}: could not be removed: {e} (journal kept; run `voltar recover` again)",
                    l.leftover
                ),
            });
        }
        out.extend(self.problems.iter().cloned());
        out
    }
}

enum Claim {
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

fn claim_opened(path: &Path, file: File) -> io::Result<Claim> {
    if !try_lock(&file)? {
        return Ok(Claim::Live);
    }
    // Between our open and our lock, another recover may have replayed the journal and unlinked it: then the path
    // no longer names the inode we locked.
    let ours = file.metadata()?;
    match fs::metadata(path) {
        Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => Ok(Claim::Claimed(file)),
        Ok(_) => Ok(Claim::Vanished),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Claim::Vanished),
        Err(e) => Err(e),
    }
}

/// A journaled change with no `done` record.
#[derive(Debug, PartialEq, Eq)]
struct OpenEntry {
    id: String,
    name: String,
    action: QuiesceAction,
}

/// What a journal's text says is still open, in journal order.
#[derive(Debug, Default, PartialEq, Eq)]
struct Parsed {
    containers: Vec<OpenEntry>,
    leftovers: Vec<Leftover>,
    /// Descriptions of unreadable lines.
    problems: Vec<String>,
}

fn parse_journal(text: &str) -> Parsed {
    let mut holds: BTreeMap<u64, OpenEntry> = BTreeMap::new();
    let mut leftovers: BTreeMap<u64, Leftover> = BTreeMap::new();
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
            Ok(Record::Done { seq, .. }) => {
                holds.remove(&seq);
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
        leftovers,
        problems,
    } = parse_journal(&text);
    let mut keep = !problems.is_empty();
    for p in problems {
        report
            .problems
            .push(format!("journal {}: unreadable {p}", path.display()));
    }
    // Newest first, like release.
    for OpenEntry { id, name, action } in entries.into_iter().rev() {
        let outcome = recover_container(runtime, &id, action).await;
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

/// Remove a leftover of a dead run, after checking it is what the journal says it is.
fn remove_leftover(leftover: &Leftover) -> LeftoverOutcome {
    match leftover {
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

/// At plan time: a container that another live voltar run holds paused or stopped right now (that run holds its
/// quiesce lock) is, for its user, running — that run resumes it soon. Mark it running, so the plan quiesces it
/// again (and `hold` waits for the other run first) instead of taking that run's pause for the user's. A
/// container paused or stopped while its lock is free is left as found. Returns the names it changed.
pub fn see_through_other_runs(state_dir: &Path, containers: &mut [ContainerInfo]) -> Vec<String> {
    let mut changed = Vec::new();
    for c in containers.iter_mut() {
        if !matches!(c.state, ContainerState::Paused | ContainerState::Exited) {
            continue;
        }
        if let Some(pid) = ContainerLock::holder(state_dir, &c.id) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    /// A recording fake of the engine. On every pause/stop it reads the journal directory, to prove the entry was
    /// on disk before the container changed.
    struct Fake {
        states: Mutex<HashMap<String, ContainerState>>,
        calls: Mutex<Vec<String>>,
        journal_dir: PathBuf,
        /// `"op:id"` → error to return, and the state the container is in afterwards (someone else acted, or
        /// the engine acted but the answer was lost). `"state2:id"` fails the second state lookup of `id`.
        fail: Mutex<HashMap<String, (DockerError, Option<ContainerState>)>>,
        state_lookups: Mutex<HashMap<String, u32>>,
    }

    impl Fake {
        fn new(state_dir: &Path, containers: &[(&str, ContainerState)]) -> Fake {
            Fake {
                states: Mutex::new(
                    containers
                        .iter()
                        .map(|(id, s)| (id.to_string(), s.clone()))
                        .collect(),
                ),
                calls: Mutex::new(Vec::new()),
                journal_dir: journal_dir(state_dir),
                fail: Mutex::new(HashMap::new()),
                state_lookups: Mutex::new(HashMap::new()),
            }
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn state_of(&self, id: &str) -> ContainerState {
            self.states.lock().unwrap()[id].clone()
        }
        fn set(&self, id: &str, s: ContainerState) {
            self.states.lock().unwrap().insert(id.to_string(), s);
        }
        fn fail_on(&self, op: &str, id: &str, e: DockerError) {
            self.fail
                .lock()
                .unwrap()
                .insert(format!("{op}:{id}"), (e, None));
        }
        fn fail_on_then(&self, op: &str, id: &str, e: DockerError, then: ContainerState) {
            self.fail
                .lock()
                .unwrap()
                .insert(format!("{op}:{id}"), (e, Some(then)));
        }
        fn journaled_before_change(&self, id: &str) -> bool {
            let Ok(rd) = fs::read_dir(&self.journal_dir) else {
                return false;
            };
            rd.flatten().any(|e| {
                fs::read_to_string(e.path()).is_ok_and(|t| {
                    t.lines().any(|l| {
                        matches!(serde_json::from_str::<Record>(l),
                            Ok(Record::Hold { id: ref i, .. }) if i == id)
                    })
                })
            })
        }
        fn op(
            &self,
            op: &str,
            id: &str,
            need: ContainerState,
            to: ContainerState,
        ) -> Result<(), DockerError> {
            if matches!(op, "pause" | "stop") {
                let j = if self.journaled_before_change(id) {
                    "journaled"
                } else {
                    "NOT-journaled"
                };
                self.calls.lock().unwrap().push(format!("{j}:{id}"));
            }
            self.calls.lock().unwrap().push(format!("{op}:{id}"));
            if let Some((e, then)) = self.fail.lock().unwrap().remove(&format!("{op}:{id}")) {
                if let Some(then) = then {
                    self.set(id, then);
                }
                return Err(e);
            }
            let mut st = self.states.lock().unwrap();
            let cur = st
                .get(id)
                .cloned()
                .ok_or_else(|| DockerError::NoSuchContainer(id.to_string()))?;
            if cur != need {
                return Err(DockerError::Api {
                    action: op.to_string(),
                    message: format!("container is {cur}"),
                });
            }
            st.insert(id.to_string(), to);
            Ok(())
        }
    }

    #[async_trait]
    impl Runtime for Fake {
        async fn state(&self, id: &str) -> Result<ContainerState, DockerError> {
            let n = {
                let mut l = self.state_lookups.lock().unwrap();
                let n = l.entry(id.to_string()).or_insert(0);
                *n += 1;
                *n
            };
            if let Some((e, _)) = self.fail.lock().unwrap().remove(&format!("state{n}:{id}")) {
                return Err(e);
            }
            self.states
                .lock()
                .unwrap()
                .get(id)
                .cloned()
                .ok_or_else(|| DockerError::NoSuchContainer(id.to_string()))
        }
        async fn pause(&self, id: &str) -> Result<(), DockerError> {
            self.op("pause", id, ContainerState::Running, ContainerState::Paused)
        }
        async fn unpause(&self, id: &str) -> Result<(), DockerError> {
            self.op(
                "unpause",
                id,
                ContainerState::Paused,
                ContainerState::Running,
            )
        }
        async fn stop(&self, id: &str, _t: u32) -> Result<(), DockerError> {
            self.op("stop", id, ContainerState::Running, ContainerState::Exited)
        }
        async fn start(&self, id: &str) -> Result<(), DockerError> {
            self.op("start", id, ContainerState::Exited, ContainerState::Running)
        }
    }

    fn hold(id: &str, action: QuiesceAction) -> Hold {
        Hold {
            id: id.to_string(),
            name: format!("{id}-name"),
            action,
            stop_timeout: Duration::from_secs(1),
        }
    }

    fn journal_files(state_dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(journal_dir(state_dir))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    use ContainerState::*;
    use QuiesceAction::{Pause, Stop};

    #[tokio::test]
    async fn hold_journals_first_and_release_resumes_in_reverse_order() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), &[("a", Running), ("b", Running)]);
        let journal = Journal::open(dir.path()).unwrap();
        let q = Quiescer::new(&fake, &journal);
        let held = q.hold(&[hold("a", Pause), hold("b", Pause)]).await.unwrap();
        assert_eq!(fake.state_of("a"), Paused);
        assert_eq!(fake.state_of("b"), Paused);
        let names: Vec<&str> = held.containers().iter().map(|c| c.id.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let report = q.release(held).await;
        assert!(report.is_ok(), "{:?}", report.errors);
        assert_eq!(
            fake.calls(),
            [
                "journaled:a",
                "pause:a",
                "journaled:b",
                "pause:b",
                "unpause:b",
                "unpause:a"
            ]
        );
        assert_eq!(fake.state_of("a"), Running);
        for r in &report.released {
            assert_eq!(r.outcome, ReleaseOutcome::Resumed);
            assert!(r.downtime >= Duration::from_millis(30), "{r:?}");
        }
        assert!(journal.pending().is_empty());
        let path = journal.path().to_path_buf();
        drop(journal);
        assert!(!path.exists(), "a clean run leaves no journal");
    }

    #[tokio::test]
    async fn stop_mode_stops_and_starts() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), &[("a", Running)]);
        let journal = Journal::open(dir.path()).unwrap();
        let q = Quiescer::new(&fake, &journal);
        let held = q.hold(&[hold("a", Stop)]).await.unwrap();
        assert_eq!(fake.state_of("a"), Exited);
        let report = q.release(held).await;
        assert!(report.is_ok());
        assert_eq!(fake.calls(), ["journaled:a", "stop:a", "start:a"]);
        assert_eq!(fake.state_of("a"), Running);
    }

    #[tokio::test]
    async fn containers_not_running_are_skipped_and_never_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(
            dir.path(),
            &[("p", Paused), ("x", Exited), ("c", Created), ("r", Running)],
        );
        let journal = Journal::open(dir.path()).unwrap();
        let q = Quiescer::new(&fake, &journal);
        let held = q
            .hold(&[
                hold("p", Pause),
                hold("x", Stop),
                hold("c", Pause),
                hold("r", QuiesceAction::None),
            ])
            .await
            .unwrap();
        assert!(held.is_empty());
        let skipped: Vec<(&str, &ContainerState)> = held
            .skipped()
            .iter()
            .map(|s| (s.id.as_str(), &s.state))
            .collect();
        assert_eq!(
            skipped,
            [
                ("p", &Paused),
                ("x", &Exited),
                ("c", &Created),
                ("r", &Running)
            ]
        );
        let report = q.release(held).await;
        assert!(report.released.is_empty());
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
        assert_eq!(fake.state_of("p"), Paused);
        assert_eq!(fake.state_of("x"), Exited);
    }

    #[tokio::test]
    async fn failure_midway_resumes_the_ones_already_held() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), &[("a", Running), ("c", Running)]);
        let journal = Journal::open(dir.path()).unwrap();
        let q = Quiescer::new(&fake, &journal);
        let err = q
            .hold(&[hold("a", Pause), hold("gone", Pause), hold("c", Pause)])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, QuiesceError::Hold { name, .. } if name == "gone-name"),
            "{err:?}"
        );
        assert!(!err.leaves_containers_quiesced(), "{err}");
        assert!(err.to_string().contains("gone-name"), "{err}");
        assert_eq!(fake.calls(), ["journaled:a", "pause:a", "unpause:a"]);
        assert_eq!(fake.state_of("a"), Running);
        assert_eq!(fake.state_of("c"), Running);
        assert!(journal.pending().is_empty());
    }

    #[tokio::test]
    async fn a_refused_pause_never_unpauses_a_user_pause() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), &[("a", Running), ("b", Running)]);
        let journal = Journal::open(dir.path()).unwrap();
        let q = Quiescer::new(&fake, &journal);
        // The user pauses b between our state check and our pause: the engine refuses ours.
        fake.fail_on_then(
            "pause",
            "b",
            DockerError::Api {
                action: "pause".into(),
                message: "container is already paused".into(),
            },
            Paused,
        );
        let err = q
            .hold(&[hold("a", Pause), hold("b", Pause)])
            .await
            .unwrap_err();
        assert!(
            matches!(err, QuiesceError::Hold { ref name, .. } if name == "b-name"),
            "{err:?}"
        );
        assert!(!err.leaves_containers_quiesced(), "{err}");
        assert_eq!(fake.state_of("a"), Running, "a is rolled back");
        assert_eq!(fake.state_of("b"), Paused, "the user's pause stays");
        assert_eq!(
            fake.calls(),
            [
                "journaled:a",
                "pause:a",
                "journaled:b",
                "pause:b",
                "unpause:a"
            ]
        );
        assert!(journal.pending().is_empty());
    }

    #[tokio::test]
    async fn a_lost_answer_is_checked_against_the_live_state_and_undone() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), &[("a", Running), ("b", Running)]);
        let journal = Journal::open(dir.path()).unwrap();
        let q = Quiescer::new(&fake, &journal);
        // The engine stopped b but the answer was lost (timeout): b is ours to start again.
        fake.fail_on_then(
            "stop",
            "b",
            DockerError::Unreachable {
                endpoint: "unix:///x".into(),
                message: "no answer in time".into(),
            },
            Exited,
        );
        let err = q
            .hold(&[hold("a", Pause), hold("b", Stop)])
            .await
            .unwrap_err();
        assert!(!err.leaves_containers_quiesced(), "{err}");
        assert_eq!(fake.state_of("a"), Running);
        assert_eq!(fake.state_of("b"), Running);
        assert_eq!(
            fake.calls(),
            [
                "journaled:a",
                "pause:a",
                "journaled:b",
                "stop:b",
                "start:b",
                "unpause:a"
            ]
        );
        assert!(journal.pending().is_empty());

        // When even the state cannot be read, the entry stays journaled and the error says so.
        let fake = Fake::new(dir.path(), &[("c", Running)]);
        let q = Quiescer::new(&fake, &journal);
        let down = || DockerError::Unreachable {
            endpoint: "unix:///x".into(),
            message: "gone".into(),
        };
        fake.fail_on_then("pause", "c", down(), Paused);
        fake.fail
            .lock()
            .unwrap()
            .insert("state2:c".into(), (down(), None));
        let err = q.hold(&[hold("c", Pause)]).await.unwrap_err();
        assert!(err.leaves_containers_quiesced(), "{err}");
        assert!(err.to_string().contains("voltar recover"), "{err}");
        assert_eq!(journal.pending(), ["c-name"]);
        assert!(q.release_pending().await.is_ok());
        assert_eq!(fake.state_of("c"), Running);
    }

    #[tokio::test]
    async fn release_tries_every_container_and_keeps_the_journal_for_recover() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), &[("a", Running), ("b", Running)]);
        let journal = Journal::open(dir.path()).unwrap();
        let q = Quiescer::new(&fake, &journal);
        let held = q.hold(&[hold("a", Pause), hold("b", Pause)]).await.unwrap();
        fake.fail_on(
            "unpause",
            "b",
            DockerError::Api {
                action: "unpause".into(),
                message: "boom".into(),
            },
        );
        let report = q.release(held).await;
        assert_eq!(report.errors.len(), 1);
        let msg = report.errors[0].to_string();
        assert!(
            msg.contains("b-name")
                && msg.contains("still paused")
                && msg.contains("voltar recover"),
            "{msg}"
        );
        assert!(report.errors[0].leaves_containers_quiesced());
        assert_eq!(
            fake.state_of("a"),
            Running,
            "a is resumed despite b failing"
        );
        assert_eq!(fake.state_of("b"), Paused);
        assert_eq!(journal.pending(), ["b-name"]);
        drop(journal);
        assert_eq!(journal_files(dir.path()).len(), 1, "journal kept");

        let rep = recover(dir.path(), &fake).await.unwrap();
        assert_eq!(rep.live, 0);
        assert_eq!(rep.replayed.len(), 1);
        assert_eq!(
            rep.containers,
            [Recovered {
                id: "b".into(),
                name: "b-name".into(),
                action: Pause,
                outcome: RecoverOutcome::Unpaused
            }]
        );
        assert_eq!(fake.state_of("b"), Running);
        assert!(journal_files(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn release_pending_resumes_what_a_lost_held_left() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), &[("a", Running), ("b", Running)]);
        let journal = Journal::open(dir.path()).unwrap();
        let q = Quiescer::new(&fake, &journal);
        let held = q.hold(&[hold("a", Pause), hold("b", Stop)]).await.unwrap();
        let report = q.release_pending().await;
        assert!(report.is_ok());
        assert_eq!(fake.state_of("a"), Running);
        assert_eq!(fake.state_of("b"), Running);
        // Releasing the Held afterwards does nothing twice.
        let again = q.release(held).await;
        assert!(again.released.is_empty() && again.is_ok());
        assert_eq!(
            fake.calls(),
            [
                "journaled:a",
                "pause:a",
                "journaled:b",
                "stop:b",
                "start:b",
                "unpause:a"
            ]
        );
    }

    #[tokio::test]
    async fn recover_replays_an_abandoned_journal_by_live_state() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(
            dir.path(),
            &[
                ("p", Running),
                ("s", Running),
                ("fine", Running),
                ("rm", Running),
                ("odd", Running),
            ],
        );
        let journal = Journal::open(dir.path()).unwrap();
        let q = Quiescer::new(&fake, &journal);
        let held = q
            .hold(&[
                hold("p", Pause),
                hold("s", Stop),
                hold("fine", Pause),
                hold("rm", Stop),
                hold("odd", Pause),
            ])
            .await
            .unwrap();
        std::mem::forget(held);
        journal.abandon(); // the process "dies": lock released, file left
        fake.set("fine", Running); // someone unpaused it
        fake.states.lock().unwrap().remove("rm"); // removed
        fake.set("odd", Exited); // stopped by the user while paused

        let rep = recover(dir.path(), &fake).await.unwrap();
        let outcomes: HashMap<&str, &RecoverOutcome> = rep
            .containers
            .iter()
            .map(|c| (c.id.as_str(), &c.outcome))
            .collect();
        assert_eq!(outcomes["p"], &RecoverOutcome::Unpaused);
        assert_eq!(outcomes["s"], &RecoverOutcome::Started);
        assert_eq!(outcomes["fine"], &RecoverOutcome::AlreadyRunning);
        assert_eq!(outcomes["rm"], &RecoverOutcome::Gone);
        assert_eq!(outcomes["odd"], &RecoverOutcome::LeftAlone(Exited));
        assert_eq!(rep.resumed(), 2);
        assert!(rep.is_clean());
        // Newest first.
        let order: Vec<&str> = rep.containers.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(order, ["odd", "rm", "fine", "s", "p"]);
        assert_eq!(fake.state_of("odd"), Exited, "never started by recover");
        assert!(journal_files(dir.path()).is_empty());
        // A second recover finds nothing.
        let rep = recover(dir.path(), &fake).await.unwrap();
        assert_eq!(rep, RecoverReport::default());
    }

    #[tokio::test]
    async fn recover_leaves_a_live_runs_journal_alone() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), &[("a", Running)]);
        let journal = Journal::open(dir.path()).unwrap();
        let q = Quiescer::new(&fake, &journal);
        let held = q.hold(&[hold("a", Pause)]).await.unwrap();
        // Same process, separate open file description: flock still excludes us.
        let rep = recover(dir.path(), &fake).await.unwrap();
        assert_eq!(rep.live, 1);
        assert!(rep.containers.is_empty());
        assert_eq!(fake.state_of("a"), Paused);
        assert!(journal.path().exists());
        assert!(q.release(held).await.is_ok());
    }

    #[tokio::test]
    async fn a_failed_recover_keeps_the_journal_for_the_next_try() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), &[("a", Running)]);
        let journal = Journal::open(dir.path()).unwrap();
        let held = Quiescer::new(&fake, &journal)
            .hold(&[hold("a", Pause)])
            .await
            .unwrap();
        std::mem::forget(held);
        journal.abandon();
        fake.fail_on(
            "unpause",
            "a",
            DockerError::Unreachable {
                endpoint: "unix:///x".into(),
                message: "down".into(),
            },
        );
        let rep = recover(dir.path(), &fake).await.unwrap();
        assert!(matches!(
            rep.containers[0].outcome,
            RecoverOutcome::Failed(_)
        ));
        assert_eq!(rep.kept.len(), 1);
        assert_eq!(journal_files(dir.path()).len(), 1);
        let rep = recover(dir.path(), &fake).await.unwrap();
        assert_eq!(rep.containers[0].outcome, RecoverOutcome::Unpaused);
        assert!(journal_files(dir.path()).is_empty());
    }

    #[test]
    fn parse_ignores_a_torn_last_line_but_reports_a_bad_middle_line() {
        let hold_a = r#"{"event":"hold","seq":0,"id":"a","name":"an","action":"pause","state_before":"running","at":"x"}"#;
        let hold_b = r#"{"event":"hold","seq":1,"id":"b","name":"bn","action":"stop","state_before":"running","at":"x"}"#;
        let done_a = r#"{"event":"done","seq":0,"at":"x"}"#;
        let text = format!("{hold_a}\n{hold_b}\n{done_a}\n{{\"event\":\"ho");
        let p = parse_journal(&text);
        assert!(p.problems.is_empty(), "{p:?}");
        assert_eq!(
            p.containers,
            [OpenEntry {
                id: "b".into(),
                name: "bn".into(),
                action: Stop
            }]
        );

        let text = format!("{hold_a}\ngarbage\n{hold_b}\n");
        let p = parse_journal(&text);
        assert_eq!(p.problems.len(), 1, "{p:?}");
        assert!(p.problems[0].starts_with("line 2"), "{p:?}");
        assert_eq!(p.containers.len(), 2, "what can be read is still acted on");
    }

    /// Row 27: a second run that wants a container the first holds waits for the first to resume it, then
    /// quiesces it itself (its own journal entry, its own downtime); it never takes the first one's pause for the
    /// user's. When the first does not let go in time, the second fails without touching anything.
    #[tokio::test]
    async fn a_second_run_waits_for_the_first_and_then_quiesces_itself() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), &[("a", Running)]);
        let j1 = Journal::open(dir.path()).unwrap();
        let j2 = Journal::open(dir.path()).unwrap();
        let q1 = Quiescer::new(&fake, &j1);
        let q2 = Quiescer::new(&fake, &j2).wait_for_others(Duration::from_millis(400));

        let held1 = q1.hold(&[hold("a", Pause)]).await.unwrap();
        assert_eq!(fake.state_of("a"), Paused);
        let t0 = Instant::now();
        match q2.hold(&[hold("a", Pause)]).await {
            Err(e @ QuiesceError::Busy { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("another voltar run"), "{msg}");
                assert!(msg.contains(&std::process::id().to_string()), "{msg}");
                assert!(!e.leaves_containers_quiesced());
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(t0.elapsed() >= Duration::from_millis(400));
        let ops = || -> Vec<String> {
            fake.calls()
                .into_iter()
                .filter(|c| !c.starts_with("journaled"))
                .collect()
        };
        assert_eq!(ops(), ["pause:a"], "the second run touched nothing");

        let q2 = q2.wait_for_others(Duration::from_secs(30));
        let holds = [hold("a", Pause)];
        let (held2, rep1) = tokio::join!(q2.hold(&holds), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            q1.release(held1).await
        });
        assert!(rep1.is_ok());
        let held2 = held2.unwrap();
        assert_eq!(
            held2.containers().len(),
            1,
            "quiesced by the second run itself"
        );
        assert!(held2.skipped().is_empty());
        assert_eq!(ops(), ["pause:a", "unpause:a", "pause:a"]);
        assert_eq!(j2.pending(), ["a-name"]);
        let rep2 = q2.release(held2).await;
        assert!(rep2.is_ok() && rep2.released[0].outcome == ReleaseOutcome::Resumed);
        assert_eq!(fake.state_of("a"), Running);
    }

    /// A cancelled run stops waiting at once.
    #[tokio::test]
    async fn waiting_for_another_run_is_cut_short_by_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), &[("a", Running)]);
        let j1 = Journal::open(dir.path()).unwrap();
        let j2 = Journal::open(dir.path()).unwrap();
        let q1 = Quiescer::new(&fake, &j1);
        let token = CancellationToken::new();
        let q2 = Quiescer::new(&fake, &j2).cancel_on(token.clone());
        let held1 = q1.hold(&[hold("a", Pause)]).await.unwrap();
        let t0 = Instant::now();
        let holds = [hold("a", Pause)];
        let (r, ()) = tokio::join!(q2.hold(&holds), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            token.cancel();
        });
        assert!(matches!(r, Err(QuiesceError::Interrupted { .. })), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(q1.release(held1).await.is_ok());
    }

    /// At plan time a container another live run holds paused or stopped counts as running; one the user paused
    /// (its quiesce lock is free) stays paused.
    #[tokio::test]
    async fn plan_sees_through_another_runs_hold_but_not_the_users() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), &[("a", Running), ("b", Running)]);
        let j = Journal::open(dir.path()).unwrap();
        let q = Quiescer::new(&fake, &j);
        let held = q.hold(&[hold("a", Pause), hold("b", Stop)]).await.unwrap();
        let info = |id: &str, state: ContainerState| ContainerInfo {
            id: id.into(),
            name: format!("{id}n"),
            image: "img".into(),
            state,
            labels: Default::default(),
            mounts: vec![],
        };
        let mut found = vec![
            info("a", Paused),
            info("b", ContainerState::Exited),
            info("user", Paused),
        ];
        let changed = see_through_other_runs(dir.path(), &mut found);
        assert_eq!(changed, ["an", "bn"]);
        assert_eq!(found[0].state, Running);
        assert_eq!(found[1].state, Running);
        assert_eq!(found[2].state, Paused, "the user's pause is the user's");
        assert!(q.release(held).await.is_ok());
        let mut again = vec![info("a", Paused)];
        assert!(see_through_other_runs(dir.path(), &mut again).is_empty());
    }

    /// Row 26: a staging directory journaled by a run that died is removed by recover and reported with its
    /// size; one marked done is not touched; a journaled path that is not a staging directory is left alone.
    #[tokio::test]
    async fn recover_removes_the_staging_directories_of_a_dead_run() {
        let dir = tempfile::tempdir().unwrap();
        let vols = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), &[]);
        let staging = vols.path().join(".voltar-staging-_data-0000abcd");
        let finished = vols.path().join(".voltar-staging-_data-0000beef");
        let not_ours = vols.path().join("_data");
        let journal = Journal::open(dir.path()).unwrap();
        for p in [&staging, &finished, &not_ours] {
            fs::create_dir_all(p.join("sub")).unwrap();
            fs::write(p.join("sub/f"), vec![0u8; 3000]).unwrap();
        }
        let seq = journal
            .will_create(&Leftover::StagingDir {
                path: staging.clone(),
            })
            .unwrap();
        assert!(seq < 10);
        let done = journal
            .will_create(&Leftover::StagingDir {
                path: finished.clone(),
            })
            .unwrap();
        journal.removed(done);
        journal
            .will_create(&Leftover::StagingDir {
                path: not_ours.clone(),
            })
            .unwrap();
        // Still alive: recover leaves it alone.
        let rep = recover(dir.path(), &fake).await.unwrap();
        assert_eq!(rep.live, 1);
        assert!(rep.leftovers.is_empty() && staging.exists());

        journal.abandon(); // the run dies
        let rep = recover(dir.path(), &fake).await.unwrap();
        assert!(rep.is_clean(), "{rep:?}");
        assert_eq!(rep.leftovers.len(), 2, "{rep:?}");
        assert_eq!(
            rep.leftovers[0].outcome,
            LeftoverOutcome::Removed { bytes: 3000 }
        );
        assert!(matches!(
            rep.leftovers[1].outcome,
            LeftoverOutcome::LeftAlone(_)
        ));
        assert!(!staging.exists());
        assert!(finished.exists(), "marked done: not recover's business");
        assert!(not_ours.join("sub/f").exists());
        let lines = rep.lines();
        assert!(
            lines[0].contains(&staging.display().to_string())
                && lines[0].contains("removed (2.9 KiB"),
            "{lines:?}"
        );
        assert!(journal_files(dir.path()).is_empty());
    }

    /// A run that removed its staging directory itself leaves no journal; one that could not keeps it for recover.
    /// Paths that are not UTF-8 survive the journal.
    #[test]
    fn a_leftover_keeps_the_journal_until_removed() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let seq = journal
            .will_create(&Leftover::StagingDir {
                path: PathBuf::from("/x/.voltar-staging-a"),
            })
            .unwrap();
        journal.removed(seq);
        drop(journal);
        assert!(journal_files(dir.path()).is_empty());

        let journal = Journal::open(dir.path()).unwrap();
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/x/\xff/.voltar-staging-b"));
        journal
            .will_create(&Leftover::StagingDir { path: odd.clone() })
            .unwrap();
        let path = journal.path().to_path_buf();
        drop(journal);
        assert!(
            path.exists(),
            "kept: the staging directory may still be there"
        );
        let p = parse_journal(&fs::read_to_string(&path).unwrap());
        assert_eq!(p.leftovers, [Leftover::StagingDir { path: odd }], "{p:?}");
    }

    #[tokio::test]
    async fn an_unreadable_line_keeps_the_journal_after_acting() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), &[("a", Paused)]);
        fs::create_dir_all(journal_dir(dir.path())).unwrap();
        let path = journal_dir(dir.path()).join("1-00.json");
        fs::write(
            &path,
            "garbage\n{\"event\":\"hold\",\"seq\":0,\"id\":\"a\",\"name\":\"an\",\"action\":\"pause\",\"state_before\":\"running\",\"at\":\"x\"}\n",
        )
        .unwrap();
        let rep = recover(dir.path(), &fake).await.unwrap();
        assert_eq!(rep.containers[0].outcome, RecoverOutcome::Unpaused);
        assert_eq!(rep.kept, std::slice::from_ref(&path));
        assert!(!rep.is_clean());
        assert!(path.exists());
    }

    #[test]
    fn journal_dir_and_file_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let journal = Journal::open(&state).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&journal_dir(&state)), 0o700);
        assert_eq!(mode(journal.path()), 0o600);
        let name = journal
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with(&format!("{}-", std::process::id())),
            "{name}"
        );
        assert!(name.ends_with(".json"));
        // No temp file remains after open.
        assert_eq!(journal_files(&state), [journal.path().to_path_buf()]);
    }

    #[tokio::test]
    async fn a_journal_replayed_between_open_and_lock_is_not_replayed_again() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path(), &[("a", Running)]);
        let journal = Journal::open(dir.path()).unwrap();
        let held = Quiescer::new(&fake, &journal)
            .hold(&[hold("a", Pause)])
            .await
            .unwrap();
        std::mem::forget(held);
        let path = journal.path().to_path_buf();
        journal.abandon();
        // Recover B has opened the journal but not locked it yet when recover A replays and deletes it.
        let opened_by_b = File::open(&path).unwrap();
        let rep = recover(dir.path(), &fake).await.unwrap();
        assert_eq!(rep.replayed, std::slice::from_ref(&path));
        // Someone pauses `a` again (e.g. the user); B must not act on the stale journal.
        fake.set("a", Paused);
        assert!(matches!(
            claim_opened(&path, opened_by_b).unwrap(),
            Claim::Vanished
        ));
    }

    #[test]
    fn two_recovers_at_once_replay_a_journal_exactly_once() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().to_path_buf();
            let fake = std::sync::Arc::new(Fake::new(&state, &[("a", Running)]));
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let journal = Journal::open(&state).unwrap();
            let held = rt
                .block_on(Quiescer::new(&*fake, &journal).hold(&[hold("a", Pause)]))
                .unwrap();
            std::mem::forget(held);
            journal.abandon();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (state, fake, barrier) = (state.clone(), fake.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .build()
                            .unwrap();
                        barrier.wait();
                        rt.block_on(recover(&state, &*fake)).unwrap()
                    })
                })
                .collect();
            let reports: Vec<RecoverReport> =
                threads.into_iter().map(|t| t.join().unwrap()).collect();
            let replayed: usize = reports.iter().map(|r| r.replayed.len()).sum();
            let acted: usize = reports.iter().map(|r| r.containers.len()).sum();
            assert_eq!(replayed, 1, "{reports:?}");
            assert_eq!(acted, 1, "{reports:?}");
            assert_eq!(fake.state_of("a"), Running);
        }
    }
}
