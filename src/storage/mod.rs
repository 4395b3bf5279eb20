//! Storage: one narrow async trait that every backend implements, plus conveniences on top.
//!
//! A [`Storage`] is rooted at its prefix (a directory, or a bucket + key prefix): keys passed to it are relative,
//! `/`-separated, never start with `/` and never contain `..` — so no caller can name an object outside the
//! prefix. Backends document their own contract; the common one is:
//!
//! * [`Storage::put`] of a small object is atomic: readers see the old object, the new one, or none.
//! * [`Storage::put_stream`] returns an [`ObjectWriter`]. Nothing is visible under the key until
//!   [`ObjectWriter::finish`] returns Ok; [`ObjectWriter::abort`] (or an error) leaves nothing behind (local: the
//!   temp file is removed; S3: the multipart upload is aborted and confirmed gone). Dropping a writer without
//!   finishing must not publish anything either.
//! * [`Storage::get`] streams an object; [`Storage::list`] returns every object under a prefix (all pages).
//! * [`Storage::delete`] removes keys; deleting a missing key is not an error.
//! * [`Storage::check`] proves, within a short budget, that a backup can be written: it is called before a backup
//!   quiesces anything, so that a dead, hung or unauthorised target is found without a container held for it.
//!
//! Why not a filesystem-like interface: S3 has no rename, no append and no partial overwrite; everything voltar
//! needs is expressible as whole-object put/get/list/delete, which every backend can do atomically.

pub mod local;
pub mod retry;
pub mod s3;

use std::fmt;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};

/// A stream of object bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>;

/// Metadata of a stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the storage root.
    pub key: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// Options of a streamed upload.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    /// Expected size in bytes, when known (an upper bound is fine). Lets S3 pick a part size that fits the part
    /// limit from the start.
    pub size_hint: Option<u64>,
}

/// Name prefix of the object a check writes (and removes at once): `.voltar-check-<random>/probe`. Its first
/// component is never a backup id, so the catalog (which looks only at `<backup-id>/…` keys) never sees it. It
/// sits one level down, like an archive, so that the check creates a directory where a backup would (and fails
/// the same way, e.g. "Not a directory" when the target path is a file).
pub const CHECK_KEY_PREFIX: &str = ".voltar-check-";

/// A fresh key for a check.
pub fn check_probe_key() -> String {
    format!("{CHECK_KEY_PREFIX}{:016x}/probe", rand::random::<u64>())
}

/// Errors of every backend, by category: callers match the category, never the message.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {key} not found in {target}")]
    NotFound { target: String, key: String },
    /// Credentials missing or refused.
    #[error("access to {target} denied: {message} (check the credentials and the bucket/directory permissions)")]
    Auth { target: String, message: String },
    /// The target is full.
    #[error("{target} is out of space: {message}")]
    NoSpace { target: String, message: String },
    /// May succeed when retried (timeouts, 5xx, throttling, connection resets).
    #[error("{target}: {message} (temporary error)")]
    Transient { target: String, message: String },
    /// Will not succeed when retried.
    #[error("{target}: {message}")]
    Permanent { target: String, message: String },
    /// The operation was cancelled (shutdown, or another target's failure does not cancel this one).
    #[error("{target}: cancelled")]
    Cancelled { target: String },
}

impl StorageError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Transient { .. })
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }
    /// Classify a local I/O error.
    pub fn from_io(target: &str, what: &str, e: std::io::Error) -> StorageError {
        use std::io::ErrorKind::*;
        let target = target.to_string();
        let message = format!("{what}: {e}");
        match e.kind() {
            NotFound => StorageError::NotFound {
                target,
                key: what.to_string(),
            },
            PermissionDenied | ReadOnlyFilesystem => StorageError::Auth { target, message },
            StorageFull | QuotaExceeded | FileTooLarge => StorageError::NoSpace { target, message },
            Interrupted | TimedOut | WouldBlock => StorageError::Transient { target, message },
            _ => StorageError::Permanent { target, message },
        }
    }
}

/// A streamed upload in progress. See the module docs for the visibility contract.
#[async_trait]
pub trait ObjectWriter: Send {
    /// Append bytes. May wait (backpressure) while earlier parts are in flight.
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError>;
    /// Make the object visible under its key, atomically. Returns its metadata.
    async fn finish(self: Box<Self>) -> Result<ObjectMeta, StorageError>;
    /// Discard everything written; nothing stays visible or billable.
    async fn abort(self: Box<Self>) -> Result<(), StorageError>;
}

/// The minimum a backend implements. Conveniences live in [`StorageExt`].
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Human-readable name used in messages, e.g. `/var/backups/voltar` or `s3://bucket/prefix`.
    fn describe(&self) -> String;
    /// Store a small object atomically (manifests).
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError>;
    /// Begin a streamed upload of `key`.
    async fn put_stream(
        &self,
        key: &str,
        opts: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>, StorageError>;
    /// Stream an object.
    async fn get(&self, key: &str) -> Result<ByteStream, StorageError>;
    /// Every object whose key starts with `prefix` (`""` = all), in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;
    /// Delete keys (batched where the backend can). Missing keys are not an error.
    async fn delete(&self, keys: &[String]) -> Result<(), StorageError>;
    /// Remove leftovers of interrupted uploads under the root older than `older_than` (local temp files,
    /// S3 incomplete multipart uploads). Returns how many were removed.
    async fn sweep_incomplete(
        &self,
        older_than: std::time::Duration,
    ) -> Result<usize, StorageError>;
    /// The leftovers [`Storage::sweep_incomplete`] would remove with the same `older_than` right now, so that
    /// `prune --dry-run` and prune's report can list them: the key each upload was writing (local: the temp
    /// file's own path under the root), its size when known (0 otherwise), and when it was last written
    /// (local) or started (S3).
    async fn stale_uploads(
        &self,
        older_than: std::time::Duration,
    ) -> Result<Vec<ObjectMeta>, StorageError>;

    /// Prove, within about `timeout`, that a backup can be written here: the target answers, accepts the
    /// credentials, the bucket or directory exists (or can be created) and takes a write. Leaves nothing behind
    /// (a probe that could not be removed is under a [`CHECK_KEY_PREFIX`] name, which nothing lists as a backup).
    ///
    /// The default puts a tiny object and deletes it, all bounded by `timeout` (a timeout is `Transient`).
    /// Backends override it when they can bound their own retries by `timeout` (so the error is the server's last
    /// answer, not just "no answer") or have a cheaper or more telling probe.
    async fn check(&self, timeout: Duration) -> Result<(), StorageError> {
        let key = check_probe_key();
        let probe = async {
            self.put(&key, Bytes::from_static(b"voltar target check\n"))
                .await?;
            self.delete(std::slice::from_ref(&key)).await
        };
        match tokio::time::timeout(timeout, probe).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::Transient {
                target: self.describe(),
                message: format!(
                    "no answer to a test write within {}",
                    humantime::format_duration(timeout)
                ),
            }),
        }
    }
}

/// Conveniences built on [`Storage`].
#[async_trait]
pub trait StorageExt: Storage {
    /// Read a whole (small) object into memory.
    async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError> {
        let mut s = self.get(key).await?;
        let mut buf = Vec::new();
        while let Some(chunk) = s.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(Bytes::from(buf))
    }
}

impl<T: Storage + ?Sized> StorageExt for T {}

/// Check a relative key: no leading `/`, no empty, `.` or `..` components.
pub fn check_key(key: &str) -> Result<(), StorageError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        Err(StorageError::Permanent {
            target: "storage".into(),
            message: format!("invalid object key `{key}`"),
        })
    } else {
        Ok(())
    }
}

/// Open the storage of a validated target: a [`local::LocalStorage`] rooted at `path/prefix`, or an
/// [`s3::S3Storage`] (which retries each request itself, up to the target's `retry-deadline`).
pub async fn open(
    target: &crate::config::Target,
) -> Result<std::sync::Arc<dyn Storage>, StorageError> {
    use crate::config::TargetKind;
    match &target.kind {
        TargetKind::Local { path, prefix } => {
            let root = if prefix.is_empty() {
                path.clone()
            } else {
                path.join(prefix)
            };
            Ok(std::sync::Arc::new(local::LocalStorage::new(root)))
        }
        TargetKind::S3(t) => Ok(std::sync::Arc::new(s3::S3Storage::new(t).await?)),
    }
}
