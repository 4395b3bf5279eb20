//! The crash journal of one run: what it quiesced and created, fsynced before acting (see the module docs of `quiesce`).

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::QuiesceError;
use crate::catalog::QuiesceAction;
use crate::docker::ContainerState;
use crate::lock::{try_flock, ContainerLock};

/// Sub-directory of the state dir that holds the journals.
pub const JOURNAL_DIR: &str = "journal";

/// Name prefix of a restore's staging directories; recover removes nothing else.
pub const STAGING_PREFIX: &str = ".voltar-staging-";

/// Where the journals of `state_dir` live.
pub fn journal_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(JOURNAL_DIR)
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One line of a journal file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub(super) enum Record {
    /// Written (and fsynced) before the container is paused / stopped.
    Hold {
        seq: u64,
        id: String,
        name: String,
        action: QuiesceAction,
        state_before: String,
        at: String,
    },
    /// Written (and fsynced) before a Swarm service is scaled to 0: "service scaled from `replicas`". Recover
    /// scales it back to `replicas` if it is still at 0.
    Scale {
        seq: u64,
        id: String,
        name: String,
        replicas: u64,
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
    /// A restore's staging directory from its swap on: it holds the old contents of `of`, the only copy until
    /// the restore's safety backup is committed. Never removed by `recover`, which names it for the user.
    PreviousContents {
        #[serde(with = "path_repr")]
        path: PathBuf,
        #[serde(with = "path_repr")]
        of: PathBuf,
    },
    /// A container hook's command (an exec), journaled after the engine created it and before it starts, done
    /// when it ended: `recover` SIGKILLs it if it still runs (a local engine only, as the hook timeout does).
    HookExec {
        container_id: String,
        container: String,
        exec_id: String,
        /// `pre-backup` or `post-backup`, and the command, for the report.
        phase: String,
        command: String,
    },
    /// A dump source's command (an exec), journaled after the engine created it and before it starts, done when
    /// it ended: `recover` SIGKILLs it if it still runs, as a hook's (a killed run cannot end it: the dump would
    /// go on loading the database for nothing).
    DumpExec {
        container_id: String,
        container: String,
        exec_id: String,
        command: String,
    },
    /// A post-backup hook owed: journaled before the container's pre-backup hook starts, done once the post
    /// hook ran. `recover` runs it (the "after" side undoes what the "before" side did: unlock tables, leave
    /// maintenance mode) when the container runs once its containers are resumed.
    PostHook {
        container_id: String,
        container: String,
        command: String,
        argv: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        timeout_ms: u64,
    },
    /// A helper container (`docker::helper`, created and never started, reading a volume through the engine for
    /// a backup, or writing a new one for a restore), journaled by name before it is created, done once it is
    /// removed: `recover` removes it (force), only when it carries the `voltar.helper` label, and before any
    /// volume a restore left (a volume in use cannot be removed).
    Helper { name: String, volume: String },
    /// A volume a restore creates (`--to-volume`, written through the engine), journaled before it is created and
    /// done once the restore into it is complete: `recover` removes it (not forced, so never while a container
    /// uses it), since a half-restored volume must not pass for a restored one.
    NewVolume { volume: String },
    /// A restore in place through the engine (`restore/engine.rs`) while its mirror containers run with the users
    /// of `target` stopped. Phase [`MirrorPhase::Keeping`] (journaled before the old contents are copied into
    /// `keep`): `target` is untouched, so `recover` only removes what was made (helpers; staging and keep
    /// volumes, journaled as [`Leftover::NewVolume`]) and starts the users. Phase [`MirrorPhase::Applying`]
    /// (journaled once `keep` is complete, before `target` is written): `recover` mirrors `staging` into
    /// `target` again with `image` in the helper container `helper` BEFORE it starts the users (and does not start
    /// them if that fails); an `Applying` entry supersedes a `Keeping` one of the same target.
    EngineMirror {
        target: String,
        staging: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep: Option<String>,
        image: String,
        helper: String,
        phase: MirrorPhase,
    },
    /// A volume holding the previous contents of volume `of` (a restore in place through the engine), the only
    /// copy until the restore's safety backup is committed: never removed by `recover`, which names it (and a
    /// [`Leftover::NewVolume`] entry of the same volume is not removed either).
    KeptVolume { volume: String, of: String },
}

/// Where a restore in place through the engine is ([`Leftover::EngineMirror`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MirrorPhase {
    /// The old contents are being copied into the keep volume; the target is untouched.
    Keeping,
    /// The target is being made equal to the staging volume.
    Applying,
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leftover::StagingDir { path } => {
                write!(f, "restore staging directory {}", path.display())
            }
            Leftover::PreviousContents { path, of } => write!(
                f,
                "previous contents of {} kept at {}",
                of.display(),
                path.display()
            ),
            Leftover::HookExec {
                container,
                phase,
                command,
                ..
            } => write!(f, "{phase} hook `{command}` in container {container}"),
            Leftover::DumpExec {
                container, command, ..
            } => write!(f, "dump `{command}` in container {container}"),
            Leftover::PostHook {
                container, command, ..
            } => write!(
                f,
                "post-backup hook `{command}` owed to container {container}"
            ),
            Leftover::Helper { name, volume } => {
                write!(f, "helper container {name} (of volume {volume})")
            }
            Leftover::NewVolume { volume } => {
                write!(f, "volume {volume}, created by an unfinished restore")
            }
            Leftover::EngineMirror {
                target, staging, ..
            } => write!(
                f,
                "restore of volume {target} in place through the engine (from staging volume {staging})"
            ),
            Leftover::KeptVolume { volume, of } => {
                write!(f, "previous contents of volume {of} kept in volume {volume}")
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
pub(super) struct Pending {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) action: QuiesceAction,
    pub(super) since: Instant,
}

/// A Swarm service this run scaled to 0 and has not scaled back yet.
#[derive(Clone, Debug)]
pub(super) struct PendingService {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) replicas: u64,
    pub(super) since: Instant,
}

struct Inner {
    file: File,
    next_seq: u64,
    pending: BTreeMap<u64, Pending>,
    services: BTreeMap<u64, PendingService>,
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

pub(super) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Create this run's journal in `<state_dir>/journal` (created 0700 if missing) and lock it.
    pub fn open(state_dir: &Path) -> Result<Journal, QuiesceError> {
        let dir = journal_dir(state_dir);
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| QuiesceError::Journal {
                path,
                cause: source,
            }
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
        match try_flock(&file) {
            Ok(true) => {}
            Ok(false) => {
                let _ = fs::remove_file(&tmp);
                return Err(QuiesceError::Journal {
                    path: tmp,
                    cause: io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "a fresh journal file is locked by someone else",
                    ),
                });
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(QuiesceError::Journal {
                    path: tmp,
                    cause: e,
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
                services: BTreeMap::new(),
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
                cause: source,
            });
        }
        inner.next_seq += 1;
        Ok(seq)
    }

    /// Journal `id` before it is changed; returns the entry's sequence number. The container's quiesce lock is
    /// kept with the entry until it is done.
    pub(super) fn begin(
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

    /// Journal a service before it is scaled to 0 from `replicas`; its quiesce lock stays with the entry.
    pub(super) fn begin_scale(
        &self,
        id: &str,
        name: &str,
        replicas: u64,
        lock: Option<ContainerLock>,
    ) -> Result<u64, QuiesceError> {
        let mut inner = self.lock_inner();
        let seq = self.record(&mut inner, |seq| Record::Scale {
            seq,
            id: id.to_string(),
            name: name.to_string(),
            replicas,
            at: now_rfc3339(),
        })?;
        if let Some(l) = lock {
            inner.locks.insert(seq, l);
        }
        inner.services.insert(
            seq,
            PendingService {
                id: id.to_string(),
                name: name.to_string(),
                replicas,
                since: Instant::now(),
            },
        );
        Ok(seq)
    }

    pub(super) fn pending_services(&self) -> Vec<(u64, PendingService)> {
        self.lock_inner()
            .services
            .iter()
            .map(|(s, p)| (*s, p.clone()))
            .collect()
    }

    pub(super) fn is_pending_service(&self, seq: u64) -> bool {
        self.lock_inner().services.contains_key(&seq)
    }

    /// Mark an entry resumed (or a leftover removed). A failure here is harmless (recover will find the
    /// container running, the leftover gone) and is logged. Releases the container's quiesce lock last.
    pub(super) fn done(&self, seq: u64) {
        let mut inner = self.lock_inner();
        inner.pending.remove(&seq);
        inner.services.remove(&seq);
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

    pub(super) fn pending_entries(&self) -> Vec<(u64, Pending)> {
        self.lock_inner()
            .pending
            .iter()
            .map(|(s, p)| (*s, p.clone()))
            .collect()
    }

    pub(super) fn is_pending(&self, seq: u64) -> bool {
        self.lock_inner().pending.contains_key(&seq)
    }

    /// Names of the containers (and `service NAME` of the services) journaled and not resumed yet.
    pub fn pending(&self) -> Vec<String> {
        let inner = self.lock_inner();
        inner
            .pending
            .values()
            .map(|p| p.name.clone())
            .chain(
                inner
                    .services
                    .values()
                    .map(|s| format!("service {}", s.name)),
            )
            .collect()
    }

    #[cfg(test)]
    pub(super) fn abandon(self) {
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
        if inner.pending.is_empty() && inner.services.is_empty() && inner.leftovers.is_empty() {
            // Everything is back: the journal has nothing left to say. Unlink while still holding the lock, so a
            // concurrent recover that opened it sees the inode is gone and skips it.
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!(journal = %self.path.display(), error = %e, "cannot remove the finished journal");
            } else {
                let _ = fsync_dir(&self.dir);
            }
        } else if !inner.pending.is_empty() || !inner.services.is_empty() {
            let names: Vec<String> = inner
                .pending
                .values()
                .map(|p| p.name.clone())
                .chain(
                    inner
                        .services
                        .values()
                        .map(|s| format!("service {}", s.name)),
                )
                .collect();
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
