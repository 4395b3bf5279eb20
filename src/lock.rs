//! Locks in the state directory, as exclusive `flock`s. The kernel releases a lock when its holder dies (also on
//! SIGKILL), so a lock held by a dead process is recovered simply by taking it. The holder's pid is written into
//! the file for messages.
//!
//! * [`TargetLock`]: one run per target at a time (acceptance rows 8, 25). The lock is keyed by what the target
//!   *is*, not by how it was spelled: a local directory by its canonical path (`/x/bk/`, `/x/./bk`,
//!   `/x/y/../bk` and a symlink to `/x/bk` are one target, also before the directory exists), an S3 target by
//!   endpoint + bucket + prefix (without leading or trailing `/`).
//! * [`ContainerLock`]: one quiesce per container at a time (row 27), held from before a container is paused or
//!   stopped until after it is resumed (see `quiesce`). Another run that finds a container paused while its lock
//!   is held knows the pause is voltar's, not the user's.
//!
//! This guards runs on one host. Two hosts writing to the same S3 prefix are not detected; give each host its
//! own prefix (one config for many: `prefix = "nodes/{node}"`, expanded before the key is made).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::FlockOperation;
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use tokio_util::sync::CancellationToken;

use crate::config::{Target, TargetKind};

/// Sub-directory of the state dir that holds the lock files.
pub const LOCK_DIR: &str = "locks";

/// Symlinks followed while canonicalising one target path before giving up (as the kernel's `ELOOP`).
const MAX_SYMLINKS: u32 = 40;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another voltar run (pid {pid}) is using target {target}; wait for it to finish (or pass --wait)")]
    Busy {
        target: String,
        pid: String,
        /// When the holder took the lock (the lock file's time), when it can be read.
        since: Option<SystemTime>,
    },
    #[error(
        "another voltar run (pid {pid}) is still using target {target} after waiting {waited}; nothing was \
         stopped or changed (wait longer with --wait DURATION, or run again later)"
    )]
    TimedOut {
        target: String,
        pid: String,
        waited: String,
    },
    #[error("interrupted while waiting for target {target}; nothing was stopped or changed")]
    Interrupted { target: String },
    #[error("cannot create lock file {path}: {source} (set state-dir in the config to a writable directory)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot resolve target directory {path}: {source}")]
    Resolve {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held while a run uses a target; released on drop (or by the kernel when the process dies).
#[derive(Debug)]
pub struct TargetLock {
    /// Held for its lock; closed after `Drop::drop` has unlinked it.
    _file: File,
    pub path: PathBuf,
}

/// What identifies a target for locking, and how to name it in messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetKey {
    /// Hashed into the lock file name.
    pub key: Vec<u8>,
    /// The canonical form, for messages.
    pub display: String,
}

/// The lock key of a target: see the module docs.
pub fn target_key(target: &Target) -> Result<TargetKey, LockError> {
    match &target.kind {
        TargetKind::Local { path, prefix } => {
            let root = if prefix.is_empty() {
                path.clone()
            } else {
                path.join(prefix)
            };
            let canon = canonical_path(&root).map_err(|source| LockError::Resolve {
                path: root.clone(),
                source,
            })?;
            let mut key = b"local:".to_vec();
            key.extend_from_slice(canon.as_os_str().as_bytes());
            Ok(TargetKey {
                key,
                display: canon.display().to_string(),
            })
        }
        TargetKind::S3(s) => {
            let endpoint = s
                .endpoint
                .as_deref()
                .unwrap_or("")
                .trim()
                .trim_end_matches('/')
                .to_ascii_lowercase();
            let prefix = s.prefix.trim_matches('/');
            let display = if prefix.is_empty() {
                format!("s3://{}", s.bucket)
            } else {
                format!("s3://{}/{prefix}", s.bucket)
            };
            Ok(TargetKey {
                key: format!("s3:{endpoint}\n{}\n{prefix}", s.bucket).into_bytes(),
                display: if endpoint.is_empty() {
                    display
                } else {
                    format!("{display} at {endpoint}")
                },
            })
        }
    }
}

/// `path` made absolute with every symlink resolved, like `realpath -m`: the part that does not exist yet is
/// resolved lexically (a name that does not exist cannot be a symlink), so a target directory has the same key
/// before and after the run creates it. A dangling symlink is followed to where it points.
pub fn canonical_path(path: &Path) -> io::Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    if let Ok(c) = fs::canonicalize(&abs) {
        return Ok(c);
    }
    let mut todo: Vec<PathBuf> = Vec::new();
    push_components(&mut todo, &abs);
    let mut out = PathBuf::from("/");
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c.as_os_str() == ".." {
            // `out` holds no symlinks, so `..` is its parent.
            out.pop();
            continue;
        }
        let next = out.join(&c);
        match fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links at {}",
                        next.display()
                    )));
                }
                let to = fs::read_link(&next)?;
                if to.is_absolute() {
                    out = PathBuf::from("/");
                }
                push_components(&mut todo, &to);
            }
            // Existing, or not there (yet): either way a plain name from here on.
            _ => out = next,
        }
    }
    Ok(out)
}

/// Push the normal and `..` components of `p` onto the stack `todo` so that they pop in order.
fn push_components(todo: &mut Vec<PathBuf>, p: &Path) {
    for c in p.components().rev() {
        match c {
            Component::Normal(n) => todo.push(PathBuf::from(n)),
            Component::ParentDir => todo.push(PathBuf::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

fn lock_dir(state_dir: &Path) -> Result<PathBuf, LockError> {
    let dir = state_dir.join(LOCK_DIR);
    fs::create_dir_all(&dir).map_err(|source| LockError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

fn open_lock_file(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| LockError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Take an exclusive `flock` on `file` without waiting. `Ok(false)`: another open file description holds it
/// (another process, or this one through a separate `open`). The one flock call of the crate: the target lock, the
/// container lock, the quiesce journal and recover's claim on a dead run's journal all take their locks here.
pub(crate) fn try_flock(file: &File) -> io::Result<bool> {
    loop {
        match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(Errno::WOULDBLOCK) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `path` still names the inode `file` has open. A lock file that its holder unlinks on release (a
/// container lock, a finished journal) may be locked by a waiter after it is gone from its path: that lock guards
/// nothing, and the waiter must open the path again.
pub(crate) fn still_at(path: &Path, file: &File) -> io::Result<bool> {
    let ours = file.metadata()?;
    match fs::metadata(path) {
        Ok(m) => Ok(m.ino() == ours.ino() && m.dev() == ours.dev()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn read_pid(file: &mut File) -> String {
    let mut pid = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut pid);
    pid.trim().to_string()
}

fn write_pid(file: &mut File) {
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
}

impl TargetLock {
    /// Take the lock for `target` without waiting.
    ///
    /// The lock file holds the pid from the moment it can be locked at its path: it is written and locked under
    /// a temporary name first, then linked into place (or renamed over a file a killed run left behind, once
    /// that one is locked too). A run that finds the lock held therefore always reads the holder's pid; one
    /// that locked a file no longer at the path (replaced or released meanwhile) looks again.
    pub fn acquire(state_dir: &Path, target: &Target) -> Result<TargetLock, LockError> {
        let key = target_key(target)?;
        let dir = lock_dir(state_dir)?;
        let h = hex::encode(Sha256::digest(&key.key));
        let path = dir.join(format!("target-{}.lock", &h[..16]));
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        sweep_temps(&dir);
        for _ in 0..64 {
            let (file, temp) = locked_pid_file(&dir, &h[..16]).map_err(io)?;
            let placed = fs::hard_link(&temp, &path);
            if placed.is_ok() {
                let _ = fs::remove_file(&temp);
                return Ok(TargetLock { _file: file, path });
            }
            let taken = take_over(&path, &temp);
            let _ = fs::remove_file(&temp);
            match taken.map_err(io)? {
                Place::Ours => return Ok(TargetLock { _file: file, path }),
                Place::Held(pid, since) => {
                    return Err(LockError::Busy {
                        target: key.display,
                        pid,
                        since,
                    })
                }
                Place::Moved => continue,
            }
        }
        Err(io(io::Error::other(
            "the lock file keeps being replaced while it is taken",
        )))
    }
}

/// Another run's hold on a target, as [`wait_free`] reports it while waiting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The target's canonical name.
    pub target: String,
    pub pid: String,
    /// When the holder took the lock, when known.
    pub since: Option<SystemTime>,
}

impl Holder {
    /// "waiting for voltar run (pid N) on target X… (since 21:40:03)", for the progress line.
    pub fn waiting_line(&self) -> String {
        let since = self
            .since
            .map(|t| {
                let t: chrono::DateTime<chrono::Local> = t.into();
                format!(" (since {})", t.format("%H:%M:%S"))
            })
            .unwrap_or_default();
        format!(
            "waiting for voltar run (pid {}) on target {}…{since}",
            self.pid, self.target
        )
    }
}

/// The first of `targets` that another run holds now. Each is probed as [`TargetLock::acquire`] takes it, and let
/// go at once; a target whose lock cannot be made (unresolvable, no lock directory) counts as free: taking it
/// for real reports that.
pub fn holder(state_dir: &Path, targets: &[Target]) -> Option<Holder> {
    targets
        .iter()
        .find_map(|t| match TargetLock::acquire(state_dir, t) {
            Ok(_) => None,
            Err(LockError::Busy { target, pid, since }) => Some(Holder { target, pid, since }),
            Err(_) => None,
        })
}

/// First and longest pause between two looks at a busy target in [`wait_free`]. Polling, not a blocking
/// `flock`: a holder unlinks its lock file on release (the next run links a file of its own), so a blocked
/// waiter would wake on a file no longer at the path and have to look again anyway; and a sleep can be cut short
/// by a signal, a thread blocked in `flock` cannot. Two seconds at most between looks is short against a run.
const WAIT_POLL_FIRST: Duration = Duration::from_millis(100);
const WAIT_POLL_MAX: Duration = Duration::from_secs(2);

/// `--wait DURATION`: how long a command may wait for targets other runs hold, counted from its start (one
/// budget for all the waits of the command).
#[derive(Clone, Copy, Debug)]
pub struct Wait {
    pub deadline: Instant,
    /// As asked, for the message when it runs out.
    pub asked: Duration,
}

impl Wait {
    /// A budget of `asked` from now.
    pub fn new(asked: Duration) -> Wait {
        Wait {
            deadline: Instant::now() + asked,
            asked,
        }
    }
}

/// Wait until no target of `targets` is held by another run (see [`holder`]), without holding any: a run
/// waiting for one target never holds another one up. `on_wait` hears of each new holder (the first one, and
/// another run that took a target next). Gives up when `wait` runs out ([`LockError::TimedOut`], naming who
/// still holds it) or when `cancel` fires ([`LockError::Interrupted`]); `None`: no deadline.
///
/// The daemon waits this way before a job's run, and `--wait` before a run and again when its targets are taken
/// (another run may slip in between).
pub async fn wait_free(
    state_dir: &Path,
    targets: &[Target],
    wait: Option<&Wait>,
    cancel: &CancellationToken,
    mut on_wait: impl FnMut(&Holder),
) -> Result<(), LockError> {
    let mut pause = WAIT_POLL_FIRST;
    let mut last: Option<Holder> = None;
    loop {
        let Some(h) = holder(state_dir, targets) else {
            return Ok(());
        };
        if last.as_ref() != Some(&h) {
            on_wait(&h);
        }
        let now = Instant::now();
        let sleep = match wait {
            Some(w) if now >= w.deadline => {
                return Err(LockError::TimedOut {
                    target: h.target,
                    pid: h.pid,
                    waited: humantime::format_duration(w.asked).to_string(),
                })
            }
            Some(w) => pause.min(w.deadline - now),
            None => pause,
        };
        let target = h.target.clone();
        last = Some(h);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = cancel.cancelled() => return Err(LockError::Interrupted { target }),
        }
        pause = (pause * 2).min(WAIT_POLL_MAX);
    }
}

/// What is at a lock path that already exists.
enum Place {
    /// It was left by a run that is gone: our file replaced it.
    Ours,
    /// Another live run holds it, with this pid, since this time.
    Held(String, Option<SystemTime>),
    /// It went away or was replaced while we looked: look again.
    Moved,
}

/// How old a lock's temporary file must be to count as left by a killed run: its writer locks it right after
/// making it, so this only covers a writer that was descheduled in between.
const TEMP_GRACE: Duration = Duration::from_secs(60);

/// Removes the temporary pid files (`.<stem>.<pid>.<random>.tmp`, see [`locked_pid_file`]) that runs killed before
/// linking them into place left in `dir`: older than [`TEMP_GRACE`] and not locked by a live writer.
fn sweep_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let n = name.as_bytes();
        if !(n.starts_with(b".") && n.ends_with(b".tmp")) {
            continue;
        }
        let path = e.path();
        let Ok(f) = File::open(&path) else {
            continue;
        };
        let stale = f
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > TEMP_GRACE);
        if stale && try_flock(&f).unwrap_or(false) && still_at(&path, &f).unwrap_or(false) {
            let _ = fs::remove_file(&path);
        }
    }
}

/// A new file in `dir` holding this process's pid, locked (nobody else has it open yet), and its name.
fn locked_pid_file(dir: &Path, stem: &str) -> io::Result<(File, PathBuf)> {
    let temp = dir.join(format!(
        ".{stem}.{}.{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&temp)?;
    write!(file, "{}", std::process::id())?;
    if !try_flock(&file)? {
        return Err(io::Error::other(
            "a new lock file is locked by someone else",
        ));
    }
    Ok((file, temp))
}

/// The lock file at `path` exists: its holder's pid when it is held, else replace it with `ours` (locked, with
/// our pid) while holding the old one, so that nobody can lock the path in between.
fn take_over(path: &Path, ours: &Path) -> io::Result<Place> {
    let mut old = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Place::Moved),
        Err(e) => return Err(e),
    };
    if !try_flock(&old)? {
        let pid = read_pid(&mut old);
        let since = old.metadata().and_then(|m| m.modified()).ok();
        return Ok(if still_at(path, &old)? {
            Place::Held(pid, since)
        } else {
            Place::Moved
        });
    }
    if !still_at(path, &old)? {
        return Ok(Place::Moved);
    }
    fs::rename(ours, path)?;
    Ok(Place::Ours)
}

impl Drop for TargetLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock: the next run links a file of its own, pid included. A run that
        // locks this inode after us finds it no longer at the path and looks again.
        let _ = fs::remove_file(&self.path);
    }
}

/// The quiesce lock of one container: see the module docs. Released (and its file removed) on drop.
#[derive(Debug)]
pub struct ContainerLock {
    file: Option<File>,
    path: PathBuf,
}

/// The lock file of container `id`.
fn container_lock_path(state_dir: &Path, id: &str) -> Result<PathBuf, LockError> {
    let name = if !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        id.to_string()
    } else {
        hex::encode(Sha256::digest(id.as_bytes()))
    };
    Ok(lock_dir(state_dir)?.join(format!("container-{name}.lock")))
}

impl ContainerLock {
    /// Take the quiesce lock of container `id` without waiting. `Ok(Err(pid))`: another live run holds it (its
    /// pid as written in the file, possibly empty).
    pub fn try_acquire(
        state_dir: &Path,
        id: &str,
    ) -> Result<Result<ContainerLock, String>, LockError> {
        let path = container_lock_path(state_dir, id)?;
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // The file is removed by the holder on release; a waiter that locked the removed inode tries again.
        for _ in 0..16 {
            let mut file = open_lock_file(&path)?;
            if !try_flock(&file).map_err(io)? {
                return Ok(Err(read_pid(&mut file)));
            }
            if still_at(&path, &file).map_err(io)? {
                write_pid(&mut file);
                return Ok(Ok(ContainerLock {
                    file: Some(file),
                    path,
                }));
            }
        }
        Err(io(io::Error::other(
            "the lock file keeps being replaced while it is taken",
        )))
    }

    /// Whether another live run holds the quiesce lock of container `id`; `Some(pid)` when it does. Never
    /// creates anything; a lock this process holds counts as held too.
    pub fn holder(state_dir: &Path, id: &str) -> Option<String> {
        let path = container_lock_path(state_dir, id).ok()?;
        let mut file = File::open(&path).ok()?;
        match try_flock(&file) {
            // Free: closing the file drops our probe's lock at once. The file is left for its next user.
            Ok(true) => None,
            Ok(false) => Some(read_pid(&mut file)),
            Err(_) => None,
        }
    }
}

impl Drop for ContainerLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock, so the files do not pile up (one per container ever quiesced);
        // a run waiting on this inode sees the path no longer names it and opens a fresh one.
        let _ = fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::S3Target;
    use std::time::SystemTime;

    fn local(p: &str) -> Target {
        Target::from_url(p).unwrap()
    }

    #[test]
    fn second_holder_is_refused_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let bk = dir.path().join("backups");
        let t = local(bk.to_str().unwrap());
        let a = TargetLock::acquire(dir.path(), &t).unwrap();
        let e = TargetLock::acquire(dir.path(), &t).unwrap_err();
        assert!(
            e.to_string().contains(&std::process::id().to_string()),
            "{e}"
        );
        // Another target is independent.
        let _c = TargetLock::acquire(dir.path(), &local("s3://b/p")).unwrap();
        drop(a);
        TargetLock::acquire(dir.path(), &t).unwrap();
    }

    /// A run killed between writing its pid file and linking it into place leaves a `.….tmp` file behind; the
    /// next lock of that target removes it. A temporary file still locked by its writer, or only just made (its
    /// writer may not have locked it yet), is left alone.
    #[test]
    fn a_killed_writers_temporary_file_is_removed_by_the_next_lock() {
        let dir = tempfile::tempdir().unwrap();
        let t = local(dir.path().join("bk").to_str().unwrap());
        drop(TargetLock::acquire(dir.path(), &t).unwrap());
        let locks = dir.path().join(LOCK_DIR);
        let old = SystemTime::now() - Duration::from_secs(3600);
        let make = |name: &str, age: SystemTime| {
            let f = File::create(locks.join(name)).unwrap();
            f.set_modified(age).unwrap();
            f
        };
        drop(make(".0123456789abcdef.4242.0000beef.tmp", old));
        let _held = make(".0123456789abcdef.4243.0000cafe.tmp", old);
        assert!(try_flock(&_held).unwrap());
        drop(make(
            ".0123456789abcdef.4244.0000f00d.tmp",
            SystemTime::now(),
        ));
        drop(TargetLock::acquire(dir.path(), &t).unwrap());
        let mut left: Vec<String> = fs::read_dir(&locks)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".0123456789abcdef.4243.0000cafe.tmp",
                ".0123456789abcdef.4244.0000f00d.tmp"
            ]
        );
    }

    /// The refusal always names the holder's pid: it used to read "another voltar run (pid ) is using target"
    /// when the other run had taken the lock but not yet written its pid (or had just emptied the file to write
    /// it). One thread takes and releases the lock over and over; another keeps trying and checks each refusal.
    #[test]
    fn a_refusal_names_the_pid_of_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let t = local(dir.path().join("bk").to_str().unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let holder = {
            let (state, t, stop) = (dir.path().to_path_buf(), t.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    drop(TargetLock::acquire(&state, &t));
                }
            })
        };
        let me = format!("(pid {})", std::process::id());
        let (mut refused, mut bad) = (0, Vec::new());
        let start = std::time::Instant::now();
        // About 25 refusals a second here (each acquire writes the lock file); on a loaded machine (the other
        // unit tests on both cores) the two threads overlap far less often: 39 in 10 s was seen. So: 200 of them,
        // with a generous time limit.
        while refused < 200 && start.elapsed() < std::time::Duration::from_secs(60) {
            if let Err(e) = TargetLock::acquire(dir.path(), &t) {
                refused += 1;
                let msg = e.to_string();
                if !msg.contains(&me) {
                    bad.push(msg);
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        holder.join().unwrap();
        assert!(refused > 100, "the lock was hardly ever busy ({refused})");
        assert!(
            bad.is_empty(),
            "{} of {refused} refusals without the holder's pid, e.g. {:?}",
            bad.len(),
            &bad[..bad.len().min(3)]
        );
    }

    /// Row 25: the spellings of one directory are one lock, whether or not the directory exists yet.
    #[test]
    fn spellings_of_one_directory_collide() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let base = fs::canonicalize(dir.path()).unwrap();
        std::os::unix::fs::symlink(base.join("bk"), base.join("link")).unwrap();
        std::os::unix::fs::symlink("bk", base.join("rel-link")).unwrap();
        fs::create_dir(base.join("other")).unwrap();
        let b = base.display();
        let spellings = [
            format!("{b}/bk/"),
            format!("{b}/./bk"),
            format!("{b}/other/../bk"),
            format!("{b}/link"),
            format!("{b}/rel-link/"),
            format!("file://{b}/bk"),
        ];
        for exists in [false, true] {
            if exists {
                fs::create_dir(base.join("bk")).unwrap();
            }
            let held = TargetLock::acquire(&state, &local(&format!("{b}/bk"))).unwrap();
            for sp in &spellings {
                match TargetLock::acquire(&state, &local(sp)) {
                    Err(LockError::Busy { target, .. }) => {
                        assert_eq!(target, format!("{b}/bk"), "{sp}")
                    }
                    other => panic!("{sp} (exists: {exists}) got past the lock: {other:?}"),
                }
            }
            // A sibling is another target.
            drop(TargetLock::acquire(&state, &local(&format!("{b}/bk2"))).unwrap());
            drop(held);
        }
    }

    #[test]
    fn relative_spellings_resolve_against_the_working_directory() {
        let cwd = fs::canonicalize(std::env::current_dir().unwrap()).unwrap();
        assert_eq!(
            canonical_path(Path::new("no-such-dir-xyz/./a/../b")).unwrap(),
            cwd.join("no-such-dir-xyz/b")
        );
    }

    #[test]
    fn s3_keys_are_endpoint_bucket_and_prefix() {
        let s3 = |endpoint: Option<&str>, bucket: &str, prefix: &str| {
            let mut s = S3Target::new(bucket.into(), prefix.into());
            s.endpoint = endpoint.map(String::from);
            Target {
                name: "t".into(),
                kind: TargetKind::S3(s),
                retention: None,
            }
        };
        let k = |t: &Target| target_key(t).unwrap().key;
        let a = s3(Some("http://127.0.0.1:9333"), "b", "p");
        assert_eq!(k(&a), k(&s3(Some("http://127.0.0.1:9333/"), "b", "/p/")));
        assert_eq!(k(&a), k(&s3(Some("HTTP://127.0.0.1:9333"), "b", "p")));
        assert_ne!(k(&a), k(&s3(Some("http://127.0.0.1:9334"), "b", "p")));
        assert_ne!(k(&a), k(&s3(Some("http://127.0.0.1:9333"), "b", "p/q")));
        assert_ne!(k(&a), k(&s3(Some("http://127.0.0.1:9333"), "c", "p")));
        assert_ne!(k(&a), k(&s3(None, "b", "p")));
    }

    /// Issue 15: the lock key is the expanded target: two nodes sharing one config (`prefix = "nodes/{node}"`)
    /// lock different keys, the same node the same key, and a local `path` with `{node}` is keyed by the
    /// expanded directory.
    #[test]
    fn issue15_lock_key_is_the_expanded_target() {
        use crate::config::{Config, Placeholders};
        let dir = tempfile::tempdir().unwrap();
        let root = canonical_path(dir.path()).unwrap();
        let c = Config::parse(&format!(
            "[target.s3]\ntype = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9333\"\n\
             prefix = \"nodes/{{node}}\"\n[target.disk]\ntype = \"local\"\npath = \"{}/{{node}}\"\n",
            root.display()
        ))
        .unwrap();
        let on = |node: &str| {
            let mut c = c.clone();
            c.expand_targets(&Placeholders {
                node: Some((node.to_string(), "VOLTAR_NODE".to_string())),
                hostname: None,
            })
            .unwrap();
            c
        };
        let (a, b) = (on("node-a"), on("node-b"));
        let key = |c: &Config, t: &str| target_key(&c.targets[t]).unwrap();
        assert_eq!(
            key(&a, "s3").display,
            "s3://b/nodes/node-a at http://127.0.0.1:9333"
        );
        assert_ne!(key(&a, "s3").key, key(&b, "s3").key);
        assert_eq!(key(&a, "s3").key, key(&on("node-a"), "s3").key);
        assert_eq!(
            key(&a, "disk").display,
            root.join("node-a").display().to_string()
        );
        assert_ne!(key(&a, "disk").key, key(&b, "disk").key);
        // Both nodes run at once (one lock each), and node A's second run waits for its first.
        let held_a = TargetLock::acquire(dir.path(), &a.targets["s3"]).unwrap();
        let _held_b = TargetLock::acquire(dir.path(), &b.targets["s3"]).unwrap();
        assert!(TargetLock::acquire(dir.path(), &on("node-a").targets["s3"]).is_err());
        drop(held_a);
    }

    #[test]
    fn container_lock_is_exclusive_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let id = "0123abcd";
        assert_eq!(ContainerLock::holder(dir.path(), id), None);
        let held = ContainerLock::try_acquire(dir.path(), id).unwrap().unwrap();
        assert_eq!(
            ContainerLock::holder(dir.path(), id),
            Some(std::process::id().to_string())
        );
        let pid = ContainerLock::try_acquire(dir.path(), id)
            .unwrap()
            .unwrap_err();
        assert_eq!(pid, std::process::id().to_string());
        drop(held);
        assert_eq!(ContainerLock::holder(dir.path(), id), None);
        assert!(
            fs::read_dir(dir.path().join(LOCK_DIR))
                .unwrap()
                .next()
                .is_none(),
            "the lock file is removed on release"
        );
        let again = ContainerLock::try_acquire(dir.path(), id).unwrap().unwrap();
        drop(again);
    }
}
