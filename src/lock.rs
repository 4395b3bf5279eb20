//! One run per target at a time (acceptance row 8): an exclusive `flock` on a file in the state directory,
//! named after the target. The kernel releases the lock when the holder dies (also on SIGKILL), so a lock held
//! by a dead process is recovered simply by taking it. The holder's pid is written into the file for messages.
//!
//! This guards runs on one host. Two hosts writing to the same S3 prefix are not detected; give each host its
//! own prefix.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another voltar run (pid {pid}) is using target {target}; wait for it to finish")]
    Busy { target: String, pid: String },
    #[error("cannot create lock file {path}: {source} (set state-dir in the config to a writable directory)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held while a run uses a target; released on drop (or by the kernel when the process dies).
#[derive(Debug)]
pub struct TargetLock {
    _file: File,
    pub path: PathBuf,
}

impl TargetLock {
    /// Take the lock for `target` (its `describe()` string) without waiting.
    pub fn acquire(state_dir: &Path, target: &str) -> Result<TargetLock, LockError> {
        let dir = state_dir.join("locks");
        let io = |path: &Path, source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let h = hex::encode(Sha256::digest(target.as_bytes()));
        let path = dir.join(format!("target-{}.lock", &h[..16]));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        // SAFETY: flock on a valid, owned descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(LockError::Busy {
                target: target.to_string(),
                pid: pid.trim().to_string(),
            });
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        Ok(TargetLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let a = TargetLock::acquire(dir.path(), "/backups").unwrap();
        let e = TargetLock::acquire(dir.path(), "/backups").unwrap_err();
        assert!(
            e.to_string().contains(&std::process::id().to_string()),
            "{e}"
        );
        // Another target is independent.
        let _c = TargetLock::acquire(dir.path(), "s3://b/p").unwrap();
        drop(a);
        TargetLock::acquire(dir.path(), "/backups").unwrap();
    }
}
