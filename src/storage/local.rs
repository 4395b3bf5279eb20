//! Local directory backend.
//!
//! Objects are plain files under the root directory (`path/prefix` of the target); a key `a/b/c` is the file
//! `root/a/b/c`, so a user can reach backups with `ls`, `tar` and `zstd` alone.
//!
//! # Contract
//!
//! * **Atomic publish.** [`Storage::put`] and [`ObjectWriter::finish`] write to a temp file in the *same*
//!   directory as the final name (`.voltar-tmp-<random>-<name>`), `fsync` it, `rename` it over the final name,
//!   then `fsync` the directory. A reader sees the old object, the new one, or none — never a partial file —
//!   also after a crash or power loss at any step. An existing object is replaced atomically.
//! * **Durability.** When `put` or `finish` returns Ok, the data and the directory entry are on stable storage
//!   (as far as the filesystem honours `fsync`).
//! * **Abort.** [`ObjectWriter::abort`], an error, or dropping the writer removes the temp file, and then the
//!   directories that this left empty (an interrupted backup leaves no empty `<backup-id>/` behind), up to (not
//!   including) the root. A process killed mid-write leaves a temp file behind: it is never listed, and
//!   [`Storage::sweep_incomplete`] removes it (and the directories it leaves empty) once it is older than the
//!   given age (the age keeps a sweep from removing the temp file of a run in progress). A writer that creates
//!   its temp file in a directory just as another removes it retries (see `create_temp`).
//! * **Listing** walks the tree, returns keys relative to the root with `/` separators, sorted, skipping temp
//!   files, directories, symlinks and names that are not UTF-8 (with a warning).
//! * **Delete** removes the files, then the directories left empty, up to (not including) the root.
//!
//! # Permissions
//!
//! Directories are created `0700` and files `0600` (before the umask): archives are copies of volume data and
//! may hold other services' secrets (database files, keys), so only the owner (normally root) may read them.
//! Loosen with ACLs or by changing the root's mode if another user must read backups.
//!
//! Blocking filesystem calls run on tokio's blocking pool; reads are streamed in [`READ_CHUNK`] pieces by a
//! blocking thread that reads [`READ_AHEAD`] pieces ahead of the consumer, into buffers recycled through a small
//! pool (a fresh zeroed buffer per piece cost a page fault per 4 KiB read).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;

use super::{check_key, ByteStream, ObjectMeta, ObjectWriter, PutOptions, Storage, StorageError};

/// Prefix of temp file names; files with it are never listed and are swept.
pub const TEMP_PREFIX: &str = ".voltar-tmp-";
/// Size of the pieces a `get` stream yields. Small enough to stay in the CPU cache between the read and the
/// decompressor (and hasher) reading it, like the backup's chunks (`pipeline::CHUNK_SIZE`).
pub const READ_CHUNK: usize = 256 << 10;
/// Pieces a `get` reads ahead of its consumer (memory: this many + 1 pieces).
pub const READ_AHEAD: usize = 2;
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// Longest file name most filesystems accept (NAME_MAX).
const NAME_MAX: usize = 255;

/// A directory of objects. See the module docs for the contract.
#[derive(Clone, Debug)]
pub struct LocalStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    describe: String,
}

impl LocalStorage {
    /// A storage rooted at `root`. Nothing is created until the first write.
    pub fn new(root: PathBuf) -> LocalStorage {
        let describe = root.display().to_string();
        LocalStorage {
            inner: Arc::new(Inner { root, describe }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }
}

impl Inner {
    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        check_key(key).map_err(|e| self.retarget(e))?;
        Ok(self.root.join(key))
    }

    /// `check_key` does not know the target's name.
    fn retarget(&self, e: StorageError) -> StorageError {
        match e {
            StorageError::Permanent { message, .. } => StorageError::Permanent {
                target: self.describe.clone(),
                message,
            },
            other => other,
        }
    }

    /// Map an I/O error of a write-side operation. ENOENT here means a directory vanished or the root is
    /// missing, not that the object is missing, so it must not become `NotFound` (callers treat that as benign).
    fn write_err(&self, what: &str, path: &Path, e: io::Error) -> StorageError {
        let what = format!("{what} {}", path.display());
        if e.kind() == io::ErrorKind::NotFound {
            return StorageError::Permanent {
                target: self.describe.clone(),
                message: format!("{what}: {e}"),
            };
        }
        StorageError::from_io(&self.describe, &what, e)
    }

    fn read_err(&self, key: &str, what: &str, e: io::Error) -> StorageError {
        if e.kind() == io::ErrorKind::NotFound {
            return StorageError::NotFound {
                target: self.describe.clone(),
                key: key.to_string(),
            };
        }
        StorageError::from_io(&self.describe, &format!("{what} {key}"), e)
    }

    /// Create `dir` and its parents with [`DIR_MODE`].
    fn create_dirs(&self, dir: &Path) -> Result<(), StorageError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| self.write_err("creating directory", dir, e))
    }

    /// Create a fresh temp file beside `path`. Retries once when a concurrent delete removed the (empty)
    /// directory between creating it and creating the file.
    fn create_temp(&self, path: &Path) -> Result<(File, PathBuf), StorageError> {
        let dir = path.parent().unwrap_or(&self.root);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut last = None;
        for _ in 0..3 {
            self.create_dirs(dir)?;
            let tmp = dir.join(temp_name(&name));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&tmp)
            {
                Ok(f) => return Ok((f, tmp)),
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.kind() == io::ErrorKind::AlreadyExists =>
                {
                    last = Some(e)
                }
                Err(e) => return Err(self.write_err("creating", &tmp, e)),
            }
        }
        Err(self.write_err(
            "creating a temp file in",
            dir,
            last.unwrap_or_else(|| io::Error::other("unknown")),
        ))
    }

    /// fsync the temp file, rename it to `path`, fsync the directory.
    fn publish(&self, file: File, tmp: &Path, path: &Path) -> Result<(), StorageError> {
        file.sync_all()
            .map_err(|e| self.write_err("syncing", tmp, e))?;
        drop(file);
        fs::rename(tmp, path).map_err(|e| self.write_err("renaming into place", path, e))?;
        let dir = path.parent().unwrap_or(&self.root);
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.write_err("syncing directory", dir, e))
    }

    fn put_blocking(&self, key: &str, data: &[u8]) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        let (mut file, tmp) = self.create_temp(&path)?;
        let r = file
            .write_all(data)
            .map_err(|e| self.write_err("writing", &tmp, e))
            .and_then(|()| self.publish(file, &tmp, &path));
        if r.is_err() {
            self.discard_temp(&tmp);
        }
        r
    }

    /// Remove a temp file that will not be published and the directories that leaves empty; errors are ignored
    /// (a leftover temp file is swept later).
    fn discard_temp(&self, tmp: &Path) {
        match fs::remove_file(tmp) {
            Ok(()) => self.remove_empty_parents(tmp),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.remove_empty_parents(tmp),
            Err(_) => {}
        }
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        // Walk only the deepest directory the prefix names ("a/b/c" -> root/a/b) instead of the whole root.
        let start = match prefix.rfind('/') {
            Some(i) => {
                let dir = &prefix[..i];
                check_key(dir).map_err(|e| self.retarget(e))?;
                self.root.join(dir)
            }
            None => self.root.clone(),
        };
        // A file where the target should be: an error, not an empty target ("no backups").
        if let Ok(m) = std::fs::metadata(&start) {
            if !m.is_dir() {
                return Err(StorageError::Permanent {
                    target: self.describe.clone(),
                    message:
                        "not a directory (a local target is the directory that holds the backups)"
                            .into(),
                });
            }
        }
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(&start).follow_links(false) {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    // A missing root (nothing written yet) or a directory removed by a concurrent delete.
                    if e.io_error().map(|i| i.kind()) == Some(io::ErrorKind::NotFound) {
                        continue;
                    }
                    let path = e.path().map(Path::to_path_buf).unwrap_or(start.clone());
                    let io = e
                        .into_io_error()
                        .unwrap_or_else(|| io::Error::other("filesystem loop"));
                    return Err(StorageError::from_io(
                        &self.describe,
                        &format!("listing {}", path.display()),
                        io,
                    ));
                }
            };
            if !entry.file_type().is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy();
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(&self.root)
                .expect("walk stays under the root");
            let Some(key) = rel.to_str() else {
                tracing::warn!(path = %entry.path().display(), "skipping a file whose name is not UTF-8");
                continue;
            };
            if !key.starts_with(prefix) {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.io_error().map(|i| i.kind()) == Some(io::ErrorKind::NotFound) => {
                    continue
                }
                Err(e) => {
                    let io = e
                        .into_io_error()
                        .unwrap_or_else(|| io::Error::other("stat"));
                    return Err(StorageError::from_io(
                        &self.describe,
                        &format!("stat {key}"),
                        io,
                    ));
                }
            };
            out.push(ObjectMeta {
                key: key.to_string(),
                size: meta.len(),
                modified: meta.modified().ok(),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete_blocking(&self, keys: &[String]) -> Result<(), StorageError> {
        for key in keys {
            let path = self.path_of(key)?;
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.write_err("deleting", &path, e)),
            }
            self.remove_empty_parents(&path);
        }
        Ok(())
    }

    /// Remove the directories above `path` that are now empty, stopping at the root or the first non-empty one.
    fn remove_empty_parents(&self, path: &Path) {
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) {
                break;
            }
            match fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Not empty (or not ours to remove): stop climbing.
                Err(_) => break,
            }
            dir = d.parent();
        }
    }

    /// A target check's probe (`<root>/.voltar-check-*/probe`), left when the check was interrupted between
    /// writing and deleting it.
    fn is_check_probe(&self, path: &Path) -> bool {
        let Ok(rel) = path.strip_prefix(&self.root) else {
            return false;
        };
        let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
        matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(dir), Some(file), None) if dir.starts_with(super::CHECK_KEY_PREFIX) && file == "probe"
        )
    }

    /// Temp files (and interrupted checks' probes) under the root last written `older_than` ago or earlier, with
    /// their metadata.
    fn stale_temps(&self, older_than: Duration) -> Vec<(PathBuf, fs::Metadata)> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(&self.root).follow_links(false) {
            let Ok(entry) = entry else { continue };
            if !entry.file_type().is_file()
                || !(entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
                    || self.is_check_probe(entry.path()))
            {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            // `<=`: with `older_than` zero, a temp file written in this same instant is stale too.
            if meta.modified().map(|m| m <= cutoff).unwrap_or(false) {
                out.push((entry.into_path(), meta));
            }
        }
        out
    }

    fn sweep_blocking(&self, older_than: Duration) -> Result<usize, StorageError> {
        let mut removed = 0;
        for (path, _) in self.stale_temps(older_than) {
            match fs::remove_file(&path) {
                Ok(()) => {
                    removed += 1;
                    self.remove_empty_parents(&path);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.write_err("removing temp file", &path, e)),
            }
        }
        Ok(removed)
    }

    fn stale_uploads_blocking(&self, older_than: Duration) -> Vec<ObjectMeta> {
        self.stale_temps(older_than)
            .into_iter()
            .map(|(path, meta)| ObjectMeta {
                key: path
                    .strip_prefix(&self.root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned(),
                size: meta.len(),
                modified: meta.modified().ok(),
            })
            .collect()
    }
}

/// `.voltar-tmp-<16 hex>-<name>`, the name cut so the whole stays within NAME_MAX bytes.
fn temp_name(name: &str) -> String {
    let rand: u64 = rand::thread_rng().gen();
    let head = format!("{TEMP_PREFIX}{rand:016x}-");
    let mut keep = NAME_MAX.saturating_sub(head.len()).min(name.len());
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{head}{}", &name[..keep])
}

async fn blocking<T: Send + 'static>(
    target: &str,
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StorageError::Permanent {
            target: target.to_string(),
            message: format!("filesystem task failed: {e}"),
        }),
    }
}

#[async_trait]
impl Storage for LocalStorage {
    fn describe(&self) -> String {
        self.inner.describe.clone()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        let key = key.to_string();
        blocking(&self.inner.describe, move || {
            inner.put_blocking(&key, &data)
        })
        .await
    }

    async fn put_stream(
        &self,
        key: &str,
        _opts: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let inner = self.inner.clone();
        let path = self.inner.path_of(key)?;
        let p = path.clone();
        let (file, tmp) = blocking(&self.inner.describe, move || inner.create_temp(&p)).await?;
        Ok(Box::new(LocalWriter {
            inner: self.inner.clone(),
            key: key.to_string(),
            path,
            tmp,
            file: Some(file),
            size: 0,
            flushed: 0,
            done: false,
        }))
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        let path = self.inner.path_of(key)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.inner.read_err(key, "opening", e))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| self.inner.read_err(key, "stat", e))?;
        if !meta.is_file() {
            return Err(StorageError::NotFound {
                target: self.inner.describe.clone(),
                key: key.to_string(),
            });
        }
        let file = file.into_std().await;
        let inner = self.inner.clone();
        let key = key.to_string();
        // One blocking thread reads the file ahead of the consumer, READ_CHUNK at a time, into buffers that come
        // back to `pool` when the consumer (and the hasher) are done with them. Reading one piece per poll instead
        // (a blocking task per piece, started only when the consumer asks) left the consumer idle for a thread
        // hand-off on every piece: on a busy machine restore spent more time waiting than decompressing.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, StorageError>>(READ_AHEAD);
        tokio::task::spawn_blocking(move || {
            let pool = crate::buffers::read_pool();
            loop {
                let mut buf = crate::buffers::pool_take(&pool, READ_CHUNK);
                // Fill the piece (short reads happen; 0 means end of file), reading into the buffer's spare
                // capacity so that nothing is zeroed first.
                while buf.len() < READ_CHUNK {
                    match rustix::io::read(&file, rustix::buffer::spare_capacity(&mut buf)) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(rustix::io::Errno::INTR) => {}
                        Err(e) => {
                            let _ =
                                tx.blocking_send(Err(inner.read_err(&key, "reading", e.into())));
                            return;
                        }
                    }
                }
                if buf.is_empty() {
                    return;
                }
                // A failed send: the consumer dropped the stream, nobody wants the rest.
                if tx
                    .blocking_send(Ok(crate::buffers::pooled(buf, &pool)))
                    .is_err()
                {
                    return;
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Box::pin(stream))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let inner = self.inner.clone();
        let prefix = prefix.to_string();
        blocking(&self.inner.describe, move || inner.list_blocking(&prefix)).await
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        let keys = keys.to_vec();
        blocking(&self.inner.describe, move || inner.delete_blocking(&keys)).await
    }

    async fn sweep_incomplete(&self, older_than: Duration) -> Result<usize, StorageError> {
        let inner = self.inner.clone();
        blocking(&self.inner.describe, move || {
            inner.sweep_blocking(older_than)
        })
        .await
    }

    async fn stale_uploads(&self, older_than: Duration) -> Result<Vec<ObjectMeta>, StorageError> {
        let inner = self.inner.clone();
        blocking(&self.inner.describe, move || {
            Ok(inner.stale_uploads_blocking(older_than))
        })
        .await
    }
}

/// A streamed write into a temp file; see the module docs.
struct LocalWriter {
    inner: Arc<Inner>,
    key: String,
    path: PathBuf,
    tmp: PathBuf,
    /// `None` while a blocking write holds it, or after a write task failed.
    file: Option<File>,
    size: u64,
    /// Bytes already handed to writeback with `sync_file_range` (see `write`).
    flushed: u64,
    /// Published or cleaned up: nothing left for `Drop`.
    done: bool,
}

/// Start writeback every this many bytes, so `finish`'s fsync has little left to do (an archive of 1 GiB would
/// otherwise be flushed all at once at the end, after the CPU work, instead of while compressing).
const WRITEBACK_EVERY: u64 = 8 << 20;

impl LocalWriter {
    fn lost_file(&self) -> StorageError {
        StorageError::Permanent {
            target: self.inner.describe.clone(),
            message: format!(
                "upload of {} cannot continue after an earlier error",
                self.key
            ),
        }
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let Some(mut file) = self.file.take() else {
            return Err(self.lost_file());
        };
        let inner = self.inner.clone();
        let tmp = self.tmp.clone();
        let len = chunk.len() as u64;
        let end = self.size + len;
        let flush_from = (end - self.flushed >= WRITEBACK_EVERY).then_some(self.flushed);
        let (file, r) = blocking(&self.inner.describe, move || {
            let r = file
                .write_all(&chunk)
                .map_err(|e| inner.write_err("writing", &tmp, e));
            if let (Ok(()), Some(from)) = (&r, flush_from) {
                use std::os::unix::io::AsRawFd;
                // SAFETY: valid fd; SYNC_FILE_RANGE_WRITE only initiates writeback (no durability claim here:
                // `finish` still fsyncs). Errors are ignored for the same reason.
                unsafe {
                    libc::sync_file_range(
                        file.as_raw_fd(),
                        from as libc::off64_t,
                        (end - from) as libc::off64_t,
                        libc::SYNC_FILE_RANGE_WRITE,
                    );
                }
            }
            Ok((file, r))
        })
        .await?;
        self.file = Some(file);
        r?;
        self.size = end;
        if flush_from.is_some() {
            self.flushed = end;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectMeta, StorageError> {
        let Some(file) = self.file.take() else {
            return Err(self.lost_file());
        };
        let inner = self.inner.clone();
        let (tmp, path) = (self.tmp.clone(), self.path.clone());
        let r = blocking(&self.inner.describe, move || {
            inner.publish(file, &tmp, &path)
        })
        .await;
        match r {
            Ok(()) => {
                self.done = true;
                Ok(ObjectMeta {
                    key: self.key.clone(),
                    size: self.size,
                    modified: Some(SystemTime::now()),
                })
            }
            // Drop removes the temp file.
            Err(e) => Err(e),
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<(), StorageError> {
        self.file = None;
        self.done = true;
        let (inner, tmp) = (self.inner.clone(), self.tmp.clone());
        blocking(&self.inner.describe, move || {
            match fs::remove_file(&tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(inner.write_err("removing temp file", &tmp, e)),
            }
            inner.remove_empty_parents(&tmp);
            Ok(())
        })
        .await
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if !self.done {
            // Unlinking, and removing the few directories above, are quick syscalls: fine to do synchronously
            // even on an async thread.
            self.inner.discard_temp(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageExt;
    use std::os::unix::fs::PermissionsExt;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|r| {
                r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[tokio::test]
    async fn final_name_appears_only_at_finish() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path().join("root"));
        let mut w = s
            .put_stream("b1/vol.tar.zst", PutOptions::default())
            .await
            .unwrap();
        w.write(Bytes::from_static(b"hello ")).await.unwrap();
        w.write(Bytes::from_static(b"world")).await.unwrap();
        // A crash now leaves only the temp file: the final name does not exist, list shows nothing.
        let dir = d.path().join("root/b1");
        let names = names_in(&dir);
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with(".voltar-tmp-") && names[0].ends_with("-vol.tar.zst"));
        assert!(!dir.join("vol.tar.zst").exists());
        assert!(s.list("").await.unwrap().is_empty());
        assert!(s.get("b1/vol.tar.zst").await.err().unwrap().is_not_found());
        let meta = w.finish().await.unwrap();
        assert_eq!(meta.size, 11);
        assert_eq!(names_in(&dir), vec!["vol.tar.zst"]);
        assert_eq!(
            &s.get_bytes("b1/vol.tar.zst").await.unwrap()[..],
            b"hello world"
        );
    }

    #[tokio::test]
    async fn modes_are_owner_only() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path().join("root"));
        s.put("a/m.json", Bytes::from_static(b"{}")).await.unwrap();
        let fm = fs::metadata(d.path().join("root/a/m.json")).unwrap();
        let dm = fs::metadata(d.path().join("root/a")).unwrap();
        assert_eq!(fm.permissions().mode() & 0o077, 0);
        assert_eq!(dm.permissions().mode() & 0o077, 0);
    }

    #[tokio::test]
    async fn failed_publish_leaves_neither_final_nor_temp() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path().to_path_buf());
        // A directory sits at the final name: rename fails at the last step.
        fs::create_dir_all(d.path().join("k/x")).unwrap();
        fs::write(d.path().join("k/x/keep"), b"1").unwrap();
        let mut w = s.put_stream("k/x", PutOptions::default()).await.unwrap();
        w.write(Bytes::from_static(b"data")).await.unwrap();
        assert!(w.finish().await.is_err());
        assert_eq!(names_in(&d.path().join("k")), vec!["x"]);
        assert!(s.put("k/x", Bytes::from_static(b"data")).await.is_err());
        assert_eq!(names_in(&d.path().join("k")), vec!["x"]);
    }

    /// An interrupted backup (abort, or the writer dropped by a failed or cancelled run) must not leave its
    /// `<backup-id>/` directory behind; a directory that still holds objects stays.
    #[tokio::test]
    async fn abort_and_drop_remove_directories_they_emptied() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let s = LocalStorage::new(root.clone());

        let mut w = s
            .put_stream("b1/deep/vol.tar.zst", PutOptions::default())
            .await
            .unwrap();
        w.write(Bytes::from_static(b"partial")).await.unwrap();
        assert!(root.join("b1/deep").is_dir());
        w.abort().await.unwrap();
        assert!(!root.join("b1").exists(), "{:?}", names_in(&root));
        assert!(root.is_dir(), "the root itself stays");

        let mut w = s
            .put_stream("b2/vol.tar.zst", PutOptions::default())
            .await
            .unwrap();
        w.write(Bytes::from_static(b"partial")).await.unwrap();
        drop(w);
        assert!(!root.join("b2").exists(), "{:?}", names_in(&root));

        // Another object in the directory: only the temp file goes.
        s.put("b3/a.tar.zst", Bytes::from_static(b"a"))
            .await
            .unwrap();
        let w = s
            .put_stream("b3/b.tar.zst", PutOptions::default())
            .await
            .unwrap();
        w.abort().await.unwrap();
        assert_eq!(names_in(&root.join("b3")), vec!["a.tar.zst"]);
        let w = s
            .put_stream("b3/sub/c.tar.zst", PutOptions::default())
            .await
            .unwrap();
        drop(w);
        assert_eq!(names_in(&root.join("b3")), vec!["a.tar.zst"]);

        // A killed process leaves its temp file; the sweep removes it and the directory it leaves empty.
        let w = s
            .put_stream("b4/x/vol.tar.zst", PutOptions::default())
            .await
            .unwrap();
        std::mem::forget(w);
        let stale = s.stale_uploads(Duration::ZERO).await.unwrap();
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert!(stale[0].key.starts_with("b4/x/.voltar-tmp-"), "{stale:?}");
        assert!(
            s.stale_uploads(Duration::from_secs(3600))
                .await
                .unwrap()
                .is_empty(),
            "a young temp file is no leftover"
        );
        assert_eq!(s.sweep_incomplete(Duration::ZERO).await.unwrap(), 1);
        assert!(!root.join("b4").exists(), "{:?}", names_in(&root));
        assert_eq!(names_in(&root), vec!["b3"]);
    }

    #[test]
    fn temp_names_fit_name_max() {
        let long = "é".repeat(200);
        let t = temp_name(&long);
        assert!(t.len() <= NAME_MAX);
        assert!(t.starts_with(TEMP_PREFIX));
        assert!(temp_name("a").ends_with("-a"));
    }

    #[tokio::test]
    async fn bad_keys_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path().to_path_buf());
        for k in ["../x", "/etc/passwd", "a//b", "a/./b", ""] {
            assert!(s.put(k, Bytes::new()).await.is_err(), "{k}");
            assert!(s.get(k).await.is_err(), "{k}");
            assert!(s.delete(&[k.to_string()]).await.is_err(), "{k}");
        }
    }
}
