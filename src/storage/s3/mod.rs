//! S3 backend (AWS S3 and S3-compatible stores), on aws-sdk-s3. No SDK type leaves this module.
//!
//! # Contract
//!
//! * **Atomic publish.** [`Storage::put`] is one `PutObject`. [`Storage::put_stream`] buffers the first part; an
//!   object smaller than one part is sent as one `PutObject` at [`ObjectWriter::finish`]. Larger objects become a
//!   multipart upload that is *completed* only in `finish`, with every part in order; S3 makes the object
//!   visible only then, atomically. An existing object is replaced atomically.
//! * **Abort.** On any error, on [`ObjectWriter::abort`], and when the writer is dropped unfinished (a task is
//!   spawned from `Drop`), the multipart upload is aborted and the abort is confirmed with `ListParts` (S3 may
//!   keep parts whose upload was in flight during the abort, so abort is repeated until `ListParts` answers
//!   `NoSuchUpload`, within a bounded number of attempts). Whatever still slips through (the process was killed)
//!   is removed by [`Storage::sweep_incomplete`], which aborts uploads under the prefix older than a given age.
//!   With an empty prefix that is the whole bucket: give voltar its own prefix in a shared bucket.
//! * **Durability.** When `put`/`finish` returns Ok, S3 has acknowledged the object.
//!
//! # Part sizes and memory
//!
//! S3 allows at most 10,000 parts per upload (some providers fewer: `max-parts`), 5 MiB .. 5 GiB per part
//! (the last part may be smaller) and 5 TiB per object. The writer does not know the final size, so the part
//! size grows with the part number: see [`part_size_for`]. The writer holds the part being filled plus at most
//! `parallel_parts` parts in flight, so peak memory is [`upload_memory_bound`] = (`parallel_parts` + 1) × the
//! current part size. `write` waits (backpressure) while the window is full.
//!
//! # Retries and timeouts
//!
//! The SDK's own retries are **disabled**: each request is retried by [`super::retry::retry`] with exponential
//! backoff and jitter on transient errors (5xx, throttling, timeouts, connection errors, a host name that does
//! not resolve) until the target's `retry-deadline`, so one deadline bounds every request, parts included.
//! An endpoint that has not answered once yet (nothing listens, nothing routes there) gets the target's
//! `check-timeout` instead (`Inner::retry_policy`): a read command against a dead endpoint fails in seconds,
//! not after the deadline; after its first answer, a failure is an interruption worth the whole deadline.
//! A bucket in another region (301 `PermanentRedirect`) fails at once, naming the region to set.
//! Credentials errors — none found, the instance metadata service (IMDS) refusing them, 401/403,
//! `InvalidAccessKeyId`, `SignatureDoesNotMatch`, `AccessDenied`, `InvalidToken`, `ExpiredToken` — are
//! [`StorageError::Auth`] and, like missing buckets/keys and quota errors, returned at once, never retried.
//! A hung server is caught by a per-attempt timeout: the time left until the deadline, but at least
//! [`MIN_ATTEMPT`] and at least the body size at [`MIN_THROUGHPUT`] (so a slow link still gets to finish a part).
//!
//! [`Storage::check`] starts and aborts a multipart upload of a [`super::CHECK_KEY_PREFIX`] key with the
//! target's `check-timeout` as its deadline: it proves the endpoint answers, the credentials are accepted, the
//! bucket exists and uploads are allowed (with the configured storage class and encryption) — without needing
//! the delete permission a write-only backup key may lack, and without leaving an object behind.
//!
//! # Credentials
//!
//! From `access-key-id-file` + `secret-access-key-file` (read with [`crate::config::read_secret_file`], which
//! refuses files readable by group or others), else the SDK's standard chain (environment, `profile` /
//! `AWS_PROFILE`, SSO, web identity, ECS/IMDS). Nothing here logs the credentials or the SDK config; errors
//! carry only readable messages, never a debug dump of the SDK error.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;

use super::retry::{retry, Backoff};
use super::{ByteStream, ObjectMeta, ObjectWriter, PutOptions, Storage, StorageError};

mod client;
mod error;
mod writer;

use client::Inner;
use error::root_cause;
use writer::{S3Writer, WriterState};

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// S3's largest object.
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;
/// Without a size hint, the part size doubles every `max_parts / GROWTH_STEPS` parts. 11 (not 10) so that the
/// S3 minimum part size of 5 MiB with 10,000 parts still reaches 5 TiB (with 10 it falls 2.5% short).
pub const GROWTH_STEPS: u32 = 11;
/// Keys per `DeleteObjects` request (the S3 maximum).
pub const DELETE_BATCH: usize = 1000;
/// Floor of the per-attempt timeout.
pub const MIN_ATTEMPT: Duration = Duration::from_secs(2);
/// An attempt that sends a body is allowed at least `body / MIN_THROUGHPUT` seconds.
pub const MIN_THROUGHPUT: u64 = 1 << 20;
/// Abort + ListParts rounds when cleaning up a failed upload.
const ABORT_ROUNDS: u32 = 5;

/// Part size for part number `part_number` (1-based) of an upload.
///
/// * Start at `base` (the configured `part-size`), or, when `size_hint` is known, at the size that fits
///   `size_hint × 1.25` into `max_parts` parts (rounded up to 1 MiB), whichever is larger.
/// * With a hint, that size is kept for as many parts as the hint needs (at most 80% of `max_parts`). The parts
///   after those (the hint was too small, or there was none) double in size every
///   `remaining parts / GROWTH_STEPS` parts.
/// * Never above [`MAX_PART_SIZE`].
/// * `equal` (stores that want every part but the last one size, `equal-parts`): the first size for every part;
///   the archive then fits `max_parts` × that size.
///
/// Resulting limits without a hint (sum over all parts, pinned by the tests):
///
/// | max parts | base 5 MiB | base 16 MiB | base 64 MiB |
/// | --- | --- | --- | --- |
/// | 10,000 | 8.8 TiB | 15.9 TiB | 24.8 TiB |
/// | 1,000 | 0.92 TiB | 1.62 TiB | 2.5 TiB |
///
/// The default base (8 MiB) lies between the first two columns: over 8.8 TiB with 10,000 parts.
///
/// With 1,000 parts no schedule reaches 5 TiB (1,000 × 5 GiB = 4.88 TiB is the ceiling): give a size hint for
/// archives that large. With a hint, the hinted size × 1.25 fits whenever that is at most `max_parts` × 5 GiB
/// (any hint up to 5 TiB with 10,000 parts; up to 3.9 TiB with 1,000), and the hinted size itself fits up to
/// the ceiling.
pub fn part_size_for(
    part_number: u32,
    base: u64,
    size_hint: Option<u64>,
    max_parts: u32,
    equal: bool,
) -> u64 {
    let max_parts = max_parts.max(1) as u64;
    let n = part_number.max(1) as u64;
    let mut start = base.max(1);
    let mut flat = 0u64;
    if let Some(hint) = size_hint {
        let need = (hint as u128 * 5 / 4).div_ceil(max_parts as u128) as u64;
        let need = need.div_ceil(1 << 20).saturating_mul(1 << 20);
        start = start.max(need).min(MAX_PART_SIZE);
        flat = hint.div_ceil(start).min(max_parts);
    }
    if n <= flat || equal {
        return start;
    }
    let step = ((max_parts - flat) / GROWTH_STEPS as u64).max(1);
    let doublings = ((n - flat - 1) / step).min(63) as u32;
    start
        .checked_shl(doublings)
        .filter(|s| s >> doublings == start)
        .unwrap_or(MAX_PART_SIZE)
        .min(MAX_PART_SIZE)
}

/// Peak bytes a streamed upload holds: the part being filled plus `parallel_parts` in flight.
pub const fn upload_memory_bound(parallel_parts: u32, part_size: u64) -> u64 {
    (parallel_parts as u64 + 1) * part_size
}

/// An unfinished multipart upload under the prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncompleteUpload {
    /// Key relative to the prefix.
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

/// A bucket's S3 Object Lock setting ([`S3Storage::object_lock`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectLock {
    Off,
    /// On; the default retention applied to new objects (mode and period), if the bucket has one.
    On {
        default_retention: Option<String>,
    },
}

/// An S3 bucket + prefix. Cheap to clone. See the module docs for the contract.
#[derive(Clone)]
pub struct S3Storage {
    inner: Arc<Inner>,
}

// Manual: never print the client (it holds the credentials provider).
impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Storage")
            .field("target", &self.inner.describe)
            .field("endpoint", &self.inner.endpoint)
            .finish()
    }
}

impl S3Storage {
    /// Page size of `ListObjectsV2` / `ListMultipartUploads` (S3 caps it at 1000); small values let tests
    /// exercise pagination.
    pub fn with_list_page_size(mut self, n: i32) -> S3Storage {
        Arc::make_mut(&mut self.inner).list_page_size = n.clamp(1, 1000);
        self
    }

    /// Base part size, *without* the 5 MiB minimum that config validation enforces: tests use tiny parts to
    /// make a real server refuse the complete call (`EntityTooSmall`).
    pub fn with_part_size(mut self, bytes: u64) -> S3Storage {
        Arc::make_mut(&mut self.inner).part_size = bytes.max(1);
        self
    }

    /// Create the bucket if it does not exist (tests, and `voltar init`-style setup).
    pub async fn ensure_bucket(&self) -> Result<(), StorageError> {
        let s = &self.inner;
        let r = retry(&s.retry_policy(), |remaining| async move {
            let mut req = s.client.create_bucket().bucket(&s.bucket);
            if s.region != "us-east-1" {
                req = req.create_bucket_configuration(
                    aws_sdk_s3::types::CreateBucketConfiguration::builder()
                        .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                            s.region.as_str(),
                        ))
                        .build(),
                );
            }
            match s
                .attempt("creating bucket", "", 0, remaining, req.send())
                .await
            {
                Ok(_) => Ok(()),
                Err(f)
                    if matches!(
                        f.code.as_deref(),
                        Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                    ) =>
                {
                    Ok(())
                }
                Err(f) => Err(f.err),
            }
        })
        .await;
        r
    }

    /// The endpoint requests go to (the configured one, or AWS's for the region), for messages.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.inner.region
    }

    /// Whether the bucket has S3 Object Lock on (`GetObjectLockConfiguration`), and its default retention.
    /// `Err`: the store would not say (no permission, not implemented): callers treat that as unknown.
    pub async fn object_lock(&self) -> Result<ObjectLock, StorageError> {
        let s = &self.inner;
        let r = retry(&s.retry_policy(), |remaining| async move {
            let req = s.client.get_object_lock_configuration().bucket(&s.bucket);
            match s
                .attempt(
                    "reading the object lock configuration",
                    "",
                    0,
                    remaining,
                    req.send(),
                )
                .await
            {
                Ok(out) => Ok(Some(out)),
                Err(f) if f.code.as_deref() == Some("ObjectLockConfigurationNotFoundError") => {
                    Ok(None)
                }
                Err(f) => Err(f.err),
            }
        })
        .await?;
        let Some(conf) = r.as_ref().and_then(|o| o.object_lock_configuration()) else {
            return Ok(ObjectLock::Off);
        };
        if conf.object_lock_enabled() != Some(&aws_sdk_s3::types::ObjectLockEnabled::Enabled) {
            return Ok(ObjectLock::Off);
        }
        let default_retention = conf.rule().and_then(|r| r.default_retention()).map(|d| {
            let mode = d.mode().map(|m| m.as_str().to_string()).unwrap_or_default();
            match (d.days(), d.years()) {
                (Some(n), _) => format!("{mode} {n} day(s)"),
                (_, Some(n)) => format!("{mode} {n} year(s)"),
                _ => mode,
            }
        });
        Ok(ObjectLock::On { default_retention })
    }

    /// Multipart uploads under the prefix that were started and never completed or aborted (all pages).
    pub async fn list_incomplete(&self) -> Result<Vec<IncompleteUpload>, StorageError> {
        let s = &self.inner;
        let mut out = Vec::new();
        let mut markers: (Option<String>, Option<String>) = (None, None);
        loop {
            let (km, um) = markers.clone();
            let page = retry(&s.retry_policy(), |remaining| {
                let req = s
                    .client
                    .list_multipart_uploads()
                    .bucket(&s.bucket)
                    .set_prefix(s.list_prefix(""))
                    .max_uploads(s.list_page_size)
                    .set_key_marker(km.clone())
                    .set_upload_id_marker(um.clone());
                async move {
                    s.attempt("listing incomplete uploads", "", 0, remaining, req.send())
                        .await
                        .map_err(StorageError::from)
                }
            })
            .await?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let Some(rel) = s.relative(key) else { continue };
                out.push(IncompleteUpload {
                    key: rel.to_string(),
                    upload_id: id.to_string(),
                    initiated: u.initiated().and_then(|d| SystemTime::try_from(*d).ok()),
                });
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            let next = (
                page.next_key_marker().map(str::to_string),
                page.next_upload_id_marker().map(str::to_string),
            );
            // A server that says "truncated" without moving the marker would loop forever.
            if next == markers || next.0.is_none() {
                break;
            }
            markers = next;
        }
        Ok(out)
    }
}

/// Whether an upload started at `initiated` is older than `cutoff`. Unknown start time: no — it might be a run
/// in progress.
fn stale(initiated: Option<SystemTime>, cutoff: SystemTime) -> bool {
    initiated.is_some_and(|t| t <= cutoff)
}

#[async_trait]
impl Storage for S3Storage {
    fn describe(&self) -> String {
        self.inner.describe.clone()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let full = self.inner.full_key(key)?;
        self.inner.put_object(key, &full, data).await
    }

    async fn put_stream(
        &self,
        key: &str,
        opts: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let full = self.inner.full_key(key)?;
        let s = &self.inner;
        let part_size = part_size_for(1, s.part_size, opts.size_hint, s.max_parts, s.equal_parts);
        Ok(Box::new(S3Writer {
            s3: self.inner.clone(),
            key: key.to_string(),
            full,
            size_hint: opts.size_hint,
            buf: BytesMut::new(),
            part_size,
            next_part: 1,
            upload_id: None,
            in_flight: JoinSet::new(),
            parts: Vec::new(),
            size: 0,
            state: WriterState::Open,
        }))
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        let s = self.inner.clone();
        let full = s.full_key(key)?;
        let out = retry(&s.retry_policy(), |remaining| {
            let req = s.client.get_object().bucket(&s.bucket).key(&full);
            let s = &s;
            async move {
                s.attempt("reading", key, 0, remaining, req.send())
                    .await
                    .map_err(StorageError::from)
            }
        })
        .await?;
        let key = key.to_string();
        // The SDK body is already a stream of `Bytes`: hand its chunks on, no temp file, no extra copy.
        let stream = futures::stream::try_unfold(Some(out.body), move |body| {
            let s = s.clone();
            let key = key.clone();
            async move {
                let Some(mut body) = body else {
                    return Ok(None);
                };
                match body.next().await {
                    None => Ok(None),
                    Some(Ok(b)) => Ok(Some((b, Some(body)))),
                    Some(Err(e)) => Err(StorageError::Transient {
                        target: s.describe.clone(),
                        message: format!(
                            "reading {key}: download from {} broke off: {}",
                            s.endpoint,
                            root_cause(&e)
                        ),
                    }),
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let s = &self.inner;
        if prefix.starts_with('/') || prefix.split('/').any(|c| c == "..") {
            return Err(s.err(format!("invalid list prefix `{prefix}`")));
        }
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = retry(&s.retry_policy(), |remaining| {
                let req = s
                    .client
                    .list_objects_v2()
                    .bucket(&s.bucket)
                    .set_prefix(s.list_prefix(prefix))
                    .max_keys(s.list_page_size)
                    .set_continuation_token(token.clone());
                async move {
                    s.attempt("listing", prefix, 0, remaining, req.send())
                        .await
                        .map_err(StorageError::from)
                }
            })
            .await?;
            for o in page.contents() {
                let Some(rel) = o.key().and_then(|k| s.relative(k)) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: rel.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified: o
                        .last_modified()
                        .and_then(|d| SystemTime::try_from(*d).ok()),
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) && token.as_deref() != Some(t) => {
                    token = Some(t.to_string())
                }
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        let s = &self.inner;
        let mut full = Vec::with_capacity(keys.len());
        for k in keys {
            full.push(s.full_key(k)?);
        }
        for batch in full.chunks(DELETE_BATCH) {
            let mut ids = Vec::with_capacity(batch.len());
            for k in batch {
                ids.push(
                    ObjectIdentifier::builder()
                        .key(k)
                        .build()
                        .map_err(|e| s.err(format!("deleting {k}: {e}")))?,
                );
            }
            let del = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| s.err(format!("deleting: {e}")))?;
            let what = format!("{} objects from", batch.len());
            let out = retry(&s.retry_policy(), |remaining| {
                let req = s
                    .client
                    .delete_objects()
                    .bucket(&s.bucket)
                    .delete(del.clone());
                let what = &what;
                async move {
                    s.attempt("deleting", what, 0, remaining, req.send())
                        .await
                        .map_err(StorageError::from)
                }
            })
            .await?;
            // DeleteObjects answers 200 and lists per-key failures in the body: check them.
            let failures: Vec<String> = out
                .errors()
                .iter()
                .filter(|e| e.code() != Some("NoSuchKey"))
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.key().and_then(|k| s.relative(k)).unwrap_or("?"),
                        e.code().or(e.message()).unwrap_or("error")
                    )
                })
                .collect();
            if !failures.is_empty() {
                let auth = out
                    .errors()
                    .iter()
                    .any(|e| e.code() == Some("AccessDenied"));
                let message = format!(
                    "could not delete {} object(s): {}",
                    failures.len(),
                    failures
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                return Err(if auth {
                    StorageError::Auth {
                        target: s.describe.clone(),
                        message,
                    }
                } else {
                    StorageError::Transient {
                        target: s.describe.clone(),
                        message,
                    }
                });
            }
        }
        Ok(())
    }

    async fn sweep_incomplete(&self, older_than: Duration) -> Result<usize, StorageError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut removed = 0;
        for u in self.list_incomplete().await? {
            if !stale(u.initiated, cutoff) {
                continue;
            }
            let full = self.inner.full_key(&u.key)?;
            self.inner.abort_upload(&u.key, &full, &u.upload_id).await?;
            removed += 1;
        }
        Ok(removed)
    }

    async fn stale_uploads(&self, older_than: Duration) -> Result<Vec<ObjectMeta>, StorageError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(self
            .list_incomplete()
            .await?
            .into_iter()
            .filter(|u| stale(u.initiated, cutoff))
            .map(|u| ObjectMeta {
                key: u.key,
                size: 0,
                modified: u.initiated,
            })
            .collect())
    }

    async fn check(&self, timeout: Duration) -> Result<(), StorageError> {
        // The same requests as a real upload, under the check's budget instead of the retry deadline.
        let mut probe = (*self.inner).clone();
        probe.policy = Backoff::with_deadline(timeout);
        let s = &probe;
        let key = super::check_probe_key();
        let full = s.full_key(&key)?;
        let run = async {
            let out = retry(&s.retry_policy(), |remaining| {
                let req = s
                    .client
                    .create_multipart_upload()
                    .bucket(&s.bucket)
                    .key(&full)
                    .set_storage_class(s.storage_class.clone())
                    .set_server_side_encryption(s.sse.clone())
                    .set_ssekms_key_id(s.sse_kms_key_id.clone());
                async move {
                    s.attempt(
                        "checking that uploads are allowed",
                        "",
                        0,
                        remaining,
                        req.send(),
                    )
                    .await
                    .map_err(StorageError::from)
                }
            })
            .await?;
            let Some(id) = out.upload_id() else {
                return Err(
                    s.err("checking that uploads are allowed: no upload id in the answer".into())
                );
            };
            match s.abort_upload(&key, &full, id).await {
                Err(e @ StorageError::Auth { .. }) => Err(e),
                // The target took the upload: it is usable. A probe that could not be removed is swept later
                // like any unfinished upload.
                Err(e) => {
                    tracing::debug!(error = %e, "aborting the check's multipart upload");
                    Ok(())
                }
                Ok(()) => Ok(()),
            }
        };
        // Each attempt is bounded by the time left (at least MIN_ATTEMPT): this outer bound only catches what
        // slips past that, such as an abort that hangs.
        match tokio::time::timeout(timeout + MIN_ATTEMPT, run).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::Transient {
                target: s.describe.clone(),
                message: format!(
                    "checking that uploads are allowed: no answer from s3 endpoint {} within {}s",
                    s.endpoint,
                    timeout.as_secs()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
