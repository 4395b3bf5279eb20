//! S3 backend (AWS S3 and S3-compatible stores), on aws-sdk-s3. No SDK type leaves this file.
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

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ServerSideEncryption,
    StorageClass,
};
use aws_sdk_s3::Client;
use bytes::{Buf, Bytes, BytesMut};
use tokio::task::JoinSet;

use super::retry::{retry, Backoff};
use super::{check_key, ByteStream, ObjectMeta, ObjectWriter, PutOptions, Storage, StorageError};
use crate::config::{ChecksumMode, S3Target};

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
pub fn part_size_for(part_number: u32, base: u64, size_hint: Option<u64>, max_parts: u32) -> u64 {
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
    if n <= flat {
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

/// The per-attempt timeout (see the module docs).
fn attempt_timeout(body_len: u64, remaining: Duration) -> Duration {
    remaining
        .max(MIN_ATTEMPT)
        .max(Duration::from_secs(body_len / MIN_THROUGHPUT))
}

/// An unfinished multipart upload under the prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncompleteUpload {
    /// Key relative to the prefix.
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

/// An S3 bucket + prefix. Cheap to clone. See the module docs for the contract.
#[derive(Clone)]
pub struct S3Storage {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    client: Client,
    bucket: String,
    /// Without leading or trailing `/`; empty = the whole bucket.
    prefix: String,
    region: String,
    /// For messages: the configured endpoint or the AWS one.
    endpoint: String,
    describe: String,
    storage_class: Option<StorageClass>,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
    part_size: u64,
    max_parts: u32,
    parallel_parts: usize,
    policy: Backoff,
    list_page_size: i32,
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

/// A failed attempt: the category, plus the S3 error code for the few places that branch on it.
struct Failure {
    err: StorageError,
    code: Option<String>,
}

impl From<Failure> for StorageError {
    fn from(f: Failure) -> Self {
        f.err
    }
}

impl S3Storage {
    /// Build the client from a validated target. Reads secret files; makes no request.
    pub async fn new(t: &S3Target) -> Result<S3Storage, StorageError> {
        let describe = if t.prefix.is_empty() {
            format!("s3://{}", t.bucket)
        } else {
            format!("s3://{}/{}", t.bucket, t.prefix)
        };
        let auth_err = |message: String| StorageError::Auth {
            target: describe.clone(),
            message,
        };

        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            // Our own retry loop honours the deadline (module docs); the SDK's would multiply it.
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .build(),
            );
        if let Some(p) = &t.profile {
            loader = loader.profile_name(p);
        }
        if let Some(ep) = &t.endpoint {
            loader = loader.endpoint_url(ep);
        }
        if t.checksum == ChecksumMode::WhenRequired {
            loader = loader
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        // Region: config, else environment / profile; with a custom endpoint default to us-east-1 (what most
        // S3-compatible stores expect) without asking the EC2 metadata service.
        let region = match &t.region {
            Some(r) => Some(r.clone()),
            None => {
                let mut profile = aws_config::profile::ProfileFileRegionProvider::builder();
                if let Some(p) = &t.profile {
                    profile = profile.profile_name(p);
                }
                aws_config::meta::region::RegionProviderChain::first_try(
                    aws_config::environment::EnvironmentVariableRegionProvider::new(),
                )
                .or_else(profile.build())
                .region()
                .await
                .map(|r| r.to_string())
                .or_else(|| t.endpoint.as_ref().map(|_| "us-east-1".to_string()))
            }
        };
        if let Some(r) = &region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let (Some(akf), Some(skf)) = (&t.access_key_id_file, &t.secret_access_key_file) {
            let ak = crate::config::read_secret_file(akf).map_err(|e| auth_err(e.to_string()))?;
            let sk = crate::config::read_secret_file(skf).map_err(|e| auth_err(e.to_string()))?;
            loader = loader.credentials_provider(Credentials::new(
                ak,
                sk,
                None,
                None,
                "voltar-secret-files",
            ));
        }
        let sdk = loader.load().await;
        let Some(region) = sdk.region().map(|r| r.to_string()) else {
            return Err(StorageError::Permanent {
                target: describe,
                message: "no region configured: set `region` in the target, or AWS_REGION".into(),
            });
        };
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(t.path_style)
            .build();
        let endpoint = t
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        Ok(S3Storage {
            inner: Arc::new(Inner {
                client: Client::from_conf(conf),
                bucket: t.bucket.clone(),
                prefix: t.prefix.trim_matches('/').to_string(),
                region,
                endpoint,
                describe,
                storage_class: t.storage_class.as_deref().map(StorageClass::from),
                sse: t.sse.as_deref().map(ServerSideEncryption::from),
                sse_kms_key_id: t.sse_kms_key_id.clone(),
                part_size: t.part_size,
                max_parts: t.max_parts.max(1),
                parallel_parts: t.parallel_parts.max(1) as usize,
                policy: Backoff::with_deadline(t.retry_deadline),
                list_page_size: 1000,
            }),
        })
    }

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
        let r = retry(&s.policy, |remaining| async move {
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

    /// Multipart uploads under the prefix that were started and never completed or aborted (all pages).
    pub async fn list_incomplete(&self) -> Result<Vec<IncompleteUpload>, StorageError> {
        let s = &self.inner;
        let mut out = Vec::new();
        let mut markers: (Option<String>, Option<String>) = (None, None);
        loop {
            let (km, um) = markers.clone();
            let page = retry(&s.policy, |remaining| {
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

impl Inner {
    fn full_key(&self, key: &str) -> Result<String, StorageError> {
        check_key(key).map_err(|e| match e {
            StorageError::Permanent { message, .. } => StorageError::Permanent {
                target: self.describe.clone(),
                message,
            },
            other => other,
        })?;
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    /// The S3 prefix to list for a relative `prefix` (`None` = the whole bucket).
    fn list_prefix(&self, prefix: &str) -> Option<String> {
        match (self.prefix.is_empty(), prefix.is_empty()) {
            (true, true) => None,
            (true, false) => Some(prefix.to_string()),
            (false, _) => Some(format!("{}/{prefix}", self.prefix)),
        }
    }

    fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(full)
        } else {
            full.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    fn err(&self, message: String) -> StorageError {
        StorageError::Permanent {
            target: self.describe.clone(),
            message,
        }
    }

    /// One attempt of one request, bounded by the per-attempt timeout, its error classified.
    async fn attempt<T, E>(
        &self,
        op: &str,
        key: &str,
        body_len: u64,
        remaining: Duration,
        fut: impl Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    ) -> Result<T, Failure>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let limit = attempt_timeout(body_len, remaining);
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.classify(op, key, e)),
            Err(_) => Err(Failure {
                err: StorageError::Transient {
                    target: self.describe.clone(),
                    message: format!(
                        "{op}{}: no answer from s3 endpoint {} within {}s",
                        on(key),
                        self.endpoint,
                        limit.as_secs()
                    ),
                },
                code: None,
            }),
        }
    }

    /// Map an SDK error to a category and a readable message.
    fn classify<E>(&self, op: &str, key: &str, e: SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let target = self.describe.clone();
        let what = format!("{op}{}", on(key));
        let status = e.raw_response().map(|r| r.status().as_u16());
        let (code, msg) = match e.as_service_error() {
            Some(se) => (
                se.code().map(str::to_string),
                se.message().map(str::to_string),
            ),
            None => (None, None),
        };
        let detail = match (&code, &msg, status) {
            (Some(c), Some(m), Some(s)) => format!("{c}: {m} (HTTP {s})"),
            (Some(c), None, Some(s)) => format!("{c} (HTTP {s})"),
            (None, _, Some(s)) => format!("HTTP {s}"),
            (Some(c), _, None) => c.clone(),
            (None, _, None) => root_cause(&e),
        };
        let err = match &e {
            SdkError::TimeoutError(_) => StorageError::Transient {
                target,
                message: format!("{what}: request to {} timed out", self.endpoint),
            },
            SdkError::DispatchFailure(d) => {
                let cause = root_cause(&e);
                if !d.is_io() && !d.is_timeout() && credentials_failed(&e) {
                    // Resolving the credentials failed before anything was sent: none found, the instance
                    // metadata service refused, a profile or SSO login is broken. Retrying cannot fix that.
                    StorageError::Auth {
                        target,
                        message: format!(
                            "{what}: no usable credentials ({cause}); set access-key-id-file and \
                             secret-access-key-file in the target, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                             or a profile"
                        ),
                    }
                } else if d.is_io() && does_not_resolve(&e) {
                    // Transient (resolvers fail now and then), but say what it is: "cannot reach … dns error"
                    // reads like a dead server.
                    StorageError::Transient {
                        target,
                        message: format!(
                            "{what}: the host name of s3 endpoint {} does not resolve ({cause}); check `endpoint` and DNS",
                            self.endpoint
                        ),
                    }
                } else if d.is_user() {
                    StorageError::Permanent {
                        target,
                        message: format!("{what}: {cause}"),
                    }
                } else {
                    StorageError::Transient {
                        target,
                        message: format!(
                            "{what}: cannot reach s3 endpoint {}: {cause}",
                            self.endpoint
                        ),
                    }
                }
            }
            SdkError::ConstructionFailure(_) => StorageError::Permanent {
                target,
                message: format!("{what}: cannot build the request: {}", root_cause(&e)),
            },
            _ => match (code.as_deref(), status) {
                (Some("NoSuchBucket"), _) => StorageError::Permanent {
                    target,
                    message: format!(
                        "bucket `{}` does not exist (create it, or fix `bucket` in the target)",
                        self.bucket
                    ),
                },
                (Some("NoSuchKey"), _) | (None, Some(404)) => StorageError::NotFound {
                    target,
                    key: key.to_string(),
                },
                (Some("NoSuchUpload"), _) => StorageError::Permanent {
                    target,
                    message: format!(
                        "{what}: the multipart upload no longer exists (aborted elsewhere or by a lifecycle rule)"
                    ),
                },
                // Quota codes come with 403 on some stores: check them before the generic 403.
                (
                    Some(
                        "QuotaExceeded" | "ServiceQuotaExceeded" | "InsufficientStorage"
                        | "XMinioStorageFull" | "StorageFull",
                    ),
                    _,
                )
                | (_, Some(507)) => StorageError::NoSpace {
                    target,
                    message: format!("{what}: {detail}"),
                },
                (
                    Some(
                        "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch"
                        | "ExpiredToken" | "InvalidToken" | "AllAccessDisabled"
                        | "AccountProblem" | "InvalidSecurity",
                    ),
                    _,
                )
                | (_, Some(401 | 403)) => StorageError::Auth {
                    target,
                    message: format!("{what}: {detail}"),
                },
                (
                    Some(
                        "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable"
                        | "Throttling" | "ThrottlingException" | "RequestTimeTooSkewed"
                        | "OperationAborted",
                    ),
                    _,
                )
                | (_, Some(408 | 429 | 500..=599)) => StorageError::Transient {
                    target,
                    message: format!("{what}: {detail}"),
                },
                // A 2xx whose body could not be read or parsed: most likely cut off on the way.
                (None, Some(200..=299)) => StorageError::Transient {
                    target,
                    message: format!("{what}: unreadable answer: {}", root_cause(&e)),
                },
                _ => StorageError::Permanent {
                    target,
                    message: format!("{what}: {detail}"),
                },
            },
        };
        Failure { err, code }
    }

    async fn put_object(&self, key: &str, full: &str, data: Bytes) -> Result<(), StorageError> {
        let len = data.len() as u64;
        retry(&self.policy, |remaining| {
            let req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(full)
                .content_length(len as i64)
                .body(SdkByteStream::from(data.clone()))
                .set_storage_class(self.storage_class.clone())
                .set_server_side_encryption(self.sse.clone())
                .set_ssekms_key_id(self.sse_kms_key_id.clone());
            async move {
                self.attempt("uploading", key, len, remaining, req.send())
                    .await
                    .map(|_| ())
                    .map_err(StorageError::from)
            }
        })
        .await
    }

    async fn create_upload(&self, key: &str, full: &str) -> Result<String, StorageError> {
        let out = retry(&self.policy, |remaining| {
            let req = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .set_storage_class(self.storage_class.clone())
                .set_server_side_encryption(self.sse.clone())
                .set_ssekms_key_id(self.sse_kms_key_id.clone());
            async move {
                self.attempt("starting upload", key, 0, remaining, req.send())
                    .await
                    .map_err(StorageError::from)
            }
        })
        .await?;
        out.upload_id().map(str::to_string).ok_or_else(|| {
            self.err(format!(
                "starting upload of {key}: no upload id in the answer"
            ))
        })
    }

    async fn upload_part(
        self: Arc<Self>,
        key: String,
        full: String,
        upload_id: String,
        number: u32,
        body: Bytes,
    ) -> Result<CompletedPart, StorageError> {
        let len = body.len() as u64;
        let what = format!("uploading part {number} of");
        let this = &*self;
        let out = retry(&this.policy, |remaining| {
            let req = this
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .part_number(number as i32)
                .content_length(len as i64)
                // A clone of `Bytes` shares the buffer: a retry re-sends without copying.
                .body(SdkByteStream::from(body.clone()));
            let (what, key) = (&what, &key);
            async move {
                this.attempt(what, key, len, remaining, req.send())
                    .await
                    .map_err(StorageError::from)
            }
        })
        .await?;
        Ok(CompletedPart::builder()
            .part_number(number as i32)
            .set_e_tag(out.e_tag().map(str::to_string))
            .build())
    }

    async fn complete(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        size: u64,
    ) -> Result<(), StorageError> {
        let attempts = AtomicU32::new(0);
        let upload = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        retry(&self.policy, |remaining| {
            let req = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(upload_id)
                .multipart_upload(upload.clone());
            let attempts = &attempts;
            async move {
                let earlier = attempts.fetch_add(1, Ordering::SeqCst);
                match self
                    .attempt("completing upload", key, 0, remaining, req.send())
                    .await
                {
                    Ok(_) => Ok(()),
                    // An earlier attempt may have completed the upload and lost only its answer.
                    Err(f) if earlier > 0 && f.code.as_deref() == Some("NoSuchUpload") => {
                        match self.head_size(key, full).await {
                            Ok(Some(s)) if s == size => Ok(()),
                            _ => Err(f.err),
                        }
                    }
                    Err(f) => Err(f.err),
                }
            }
        })
        .await
    }

    async fn head_size(&self, key: &str, full: &str) -> Result<Option<u64>, StorageError> {
        let req = self.client.head_object().bucket(&self.bucket).key(full);
        match self
            .attempt("checking", key, 0, self.policy.deadline, req.send())
            .await
        {
            Ok(h) => Ok(h.content_length().map(|l| l as u64)),
            Err(f) if f.err.is_not_found() => Ok(None),
            Err(f) => Err(f.err),
        }
    }

    /// Abort an upload and confirm it is gone (`ListParts` → `NoSuchUpload`), in a bounded number of rounds
    /// within the retry deadline (at most a minute).
    async fn abort_upload(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
    ) -> Result<(), StorageError> {
        let budget = self
            .policy
            .deadline
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let start = tokio::time::Instant::now();
        let mut last: Option<StorageError> = None;
        for round in 0..ABORT_ROUNDS {
            let mut abort_err = None;
            let remaining = budget.saturating_sub(start.elapsed());
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(upload_id)
                .send();
            match self
                .attempt("aborting upload", key, 0, remaining, abort)
                .await
            {
                Ok(_) => {}
                Err(f) if f.code.as_deref() == Some("NoSuchUpload") || f.err.is_not_found() => {}
                Err(f) => abort_err = Some(f.err),
            }
            let remaining = budget.saturating_sub(start.elapsed());
            let check = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(upload_id)
                .max_parts(1)
                .send();
            match self
                .attempt("confirming abort", key, 0, remaining, check)
                .await
            {
                Err(f) if f.code.as_deref() == Some("NoSuchUpload") || f.err.is_not_found() => {
                    return Ok(())
                }
                Err(f) => last = Some(f.err),
                Ok(_) => {
                    last = Some(abort_err.unwrap_or_else(|| StorageError::Transient {
                        target: self.describe.clone(),
                        message: format!("multipart upload of {key} still exists after abort"),
                    }))
                }
            }
            if start.elapsed() >= budget {
                break;
            }
            tokio::time::sleep(self.policy.delay(round)).await;
        }
        let why = last.map(|e| e.to_string()).unwrap_or_default();
        tracing::warn!(key, error = %why, "could not confirm the abort of a multipart upload; `sweep_incomplete` removes it later");
        Err(StorageError::Transient {
            target: self.describe.clone(),
            message: format!(
                "could not confirm that the multipart upload of {key} was aborted ({why}); a later sweep of incomplete uploads removes it"
            ),
        })
    }
}

/// Whether an upload started at `initiated` is older than `cutoff`. Unknown start time: no — it might be a run
/// in progress.
fn stale(initiated: Option<SystemTime>, cutoff: SystemTime) -> bool {
    initiated.is_some_and(|t| t <= cutoff)
}

fn on(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" {key}")
    }
}

/// The innermost message of an error chain, e.g. "Connection refused (os error 111)": the most specific and
/// readable part (the outer layers say "dispatch failure", "io error", "client error (Connect)"). On one line:
/// the credentials chain lists each provider it tried on a line of its own.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let s = one_line(&cur.to_string());
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => s,
    }
}

/// Lines trimmed and joined with "; " ("Attempted:" + a list reads as "Attempted: a; b").
fn one_line(s: &str) -> String {
    let mut out = String::new();
    for l in s.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(l);
    }
    out
}

/// Every message of an error chain, outermost first, lowercased.
fn chain_text(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string().to_ascii_lowercase()];
    let mut cur = e;
    while let Some(next) = cur.source() {
        out.push(next.to_string().to_ascii_lowercase());
        cur = next;
    }
    out
}

/// Whether a dispatch failure came from resolving the credentials. The SDK wraps the credential providers'
/// errors (`CredentialsError`: "the credential provider was not enabled", "an error occurred while loading
/// credentials", "credentials provider timed out", …) without a type this crate can name, so the chain's
/// messages decide; the caller has already ruled out I/O errors and timeouts of the request itself.
fn credentials_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    chain_text(e)
        .iter()
        .any(|m| m.contains("credential") || m.contains("imds"))
}

/// Whether an I/O dispatch failure is a name lookup failure (hyper: "dns error: failed to lookup address
/// information: Name or service not known").
fn does_not_resolve(e: &(dyn std::error::Error + 'static)) -> bool {
    chain_text(e)
        .iter()
        .any(|m| m.contains("dns error") || m.contains("failed to lookup address"))
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
        let part_size = part_size_for(1, s.part_size, opts.size_hint, s.max_parts);
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
        let out = retry(&s.policy, |remaining| {
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
            let page = retry(&s.policy, |remaining| {
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
            let out = retry(&s.policy, |remaining| {
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
            let out = retry(&s.policy, |remaining| {
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum WriterState {
    Open,
    /// An error happened and cleanup ran (or was attempted): nothing more to do.
    Failed,
    /// Completed or aborted.
    Done,
}

/// A streamed upload; see the module docs.
struct S3Writer {
    s3: Arc<Inner>,
    key: String,
    full: String,
    size_hint: Option<u64>,
    /// The part being filled; allocated with the part's size so filling it never reallocates.
    buf: BytesMut,
    /// Size of the part being filled.
    part_size: u64,
    /// Number of the part being filled.
    next_part: u32,
    upload_id: Option<String>,
    in_flight: JoinSet<Result<CompletedPart, StorageError>>,
    parts: Vec<CompletedPart>,
    size: u64,
    state: WriterState,
}

impl S3Writer {
    fn poisoned(&self) -> StorageError {
        self.s3.err(format!(
            "upload of {} cannot continue after an earlier error",
            self.key
        ))
    }

    /// Abort the upload after `err`, then return `err` (the cleanup's own failure is logged, not returned: the
    /// first error is the one the caller needs).
    async fn fail(&mut self, err: StorageError) -> StorageError {
        self.state = WriterState::Failed;
        // Stop the parts still in flight before aborting, so none lands after the abort.
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Some(id) = self.upload_id.take() {
            if let Err(e) = self.s3.abort_upload(&self.key, &self.full, &id).await {
                tracing::warn!(key = %self.key, error = %e, "cleanup after a failed upload");
            }
        }
        err
    }

    fn collect(
        &mut self,
        joined: Result<Result<CompletedPart, StorageError>, tokio::task::JoinError>,
    ) -> Result<(), StorageError> {
        match joined {
            Ok(Ok(p)) => {
                self.parts.push(p);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(self
                .s3
                .err(format!("upload task of {} failed: {e}", self.key))),
        }
    }

    /// Send one full part: start the multipart upload first if needed, wait for a free slot (backpressure).
    async fn ship(&mut self, part: Bytes) -> Result<(), StorageError> {
        if self.next_part > self.s3.max_parts {
            return Err(self.s3.err(format!(
                "{} is larger than {} parts can hold ({} bytes so far); pass a size hint or raise max-parts",
                self.key, self.s3.max_parts, self.size
            )));
        }
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self.s3.create_upload(&self.key, &self.full).await?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        // Surface finished parts (and their errors) early, then wait while the window is full.
        while let Some(j) = self.in_flight.try_join_next() {
            self.collect(j)?;
        }
        while self.in_flight.len() >= self.s3.parallel_parts {
            if let Some(j) = self.in_flight.join_next().await {
                self.collect(j)?;
            }
        }
        let n = self.next_part;
        self.in_flight.spawn(self.s3.clone().upload_part(
            self.key.clone(),
            self.full.clone(),
            upload_id,
            n,
            part,
        ));
        self.next_part += 1;
        self.part_size = part_size_for(
            self.next_part,
            self.s3.part_size,
            self.size_hint,
            self.s3.max_parts,
        );
        Ok(())
    }

    async fn write_inner(&mut self, mut chunk: Bytes) -> Result<(), StorageError> {
        while !chunk.is_empty() {
            let part = self.part_size as usize;
            if self.buf.is_empty() && chunk.len() >= part {
                // A whole part inside the caller's chunk: send a slice of it, no copy.
                let p = chunk.split_to(part);
                self.size += p.len() as u64;
                self.ship(p).await?;
                continue;
            }
            if self.buf.capacity() == 0 {
                self.buf.reserve(part);
            }
            let n = (part - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk[..n]);
            chunk.advance(n);
            self.size += n as u64;
            if self.buf.len() == part {
                let full = std::mem::take(&mut self.buf).freeze();
                self.ship(full).await?;
            }
        }
        Ok(())
    }

    async fn finish_inner(&mut self) -> Result<(), StorageError> {
        let Some(_) = &self.upload_id else {
            // Smaller than one part: a single PutObject, atomic by itself.
            let data = std::mem::take(&mut self.buf).freeze();
            return self.s3.put_object(&self.key, &self.full, data).await;
        };
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf).freeze();
            self.ship(last).await?;
        }
        while let Some(j) = self.in_flight.join_next().await {
            self.collect(j)?;
        }
        let mut parts = std::mem::take(&mut self.parts);
        parts.sort_by_key(|p| p.part_number());
        let id = self.upload_id.clone().expect("checked above");
        self.s3
            .complete(&self.key, &self.full, &id, parts, self.size)
            .await?;
        self.upload_id = None;
        Ok(())
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        if self.state != WriterState::Open {
            return Err(self.poisoned());
        }
        match self.write_inner(chunk).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Stop the parts in flight now, but leave the (possibly slow) abort of the upload to `abort()`
                // or `Drop`: the caller runs it in the background so a struggling server does not stall the
                // packer — and with it the containers paused for this source.
                self.state = WriterState::Failed;
                self.in_flight.abort_all();
                Err(e)
            }
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectMeta, StorageError> {
        if self.state != WriterState::Open {
            return Err(self.poisoned());
        }
        match self.finish_inner().await {
            Ok(()) => {
                self.state = WriterState::Done;
                Ok(ObjectMeta {
                    key: self.key.clone(),
                    size: self.size,
                    modified: Some(SystemTime::now()),
                })
            }
            Err(e) => Err(self.fail(e).await),
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<(), StorageError> {
        self.state = WriterState::Done;
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        match self.upload_id.take() {
            Some(id) => self.s3.abort_upload(&self.key, &self.full, &id).await,
            None => Ok(()),
        }
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // Open (never finished) or Failed in `write` (abort left to us): an upload id still held means the
        // multipart upload exists and must go.
        if self.state == WriterState::Done {
            return;
        }
        // Dropping the JoinSet cancels the parts in flight. `Drop` cannot await: the abort runs as a task.
        let Some(id) = self.upload_id.take() else {
            return;
        };
        let (s3, key, full) = (self.s3.clone(), self.key.clone(), self.full.clone());
        self.in_flight.abort_all();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                tracing::debug!(key = %key, "writer dropped unfinished; aborting its multipart upload");
                h.spawn(async move {
                    if let Err(e) = s3.abort_upload(&key, &full, &id).await {
                        tracing::warn!(key = %key, error = %e, "abort of a dropped upload");
                    }
                });
            }
            Err(_) => tracing::warn!(
                key = %key,
                "writer dropped outside a runtime; its multipart upload stays until swept"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const TIB: u64 = 1 << 40;

    /// Bytes the schedule can hold within `max_parts` parts.
    fn capacity(base: u64, hint: Option<u64>, max_parts: u32) -> u64 {
        (1..=max_parts)
            .map(|n| part_size_for(n, base, hint, max_parts))
            .sum()
    }

    #[test]
    fn without_a_hint_10000_parts_hold_5_tib_for_every_base() {
        for base in [5 * MIB, 8 * MIB, 16 * MIB, 64 * MIB, 512 * MIB] {
            let c = capacity(base, None, 10_000);
            assert!(c >= MAX_OBJECT_SIZE, "base {base}: {c}");
        }
    }

    #[test]
    fn without_a_hint_1000_parts_hold_what_the_docs_say() {
        // 1,000 × 5 GiB = 4.88 TiB is the hard ceiling: no schedule reaches 5 TiB.
        const { assert!(1000 * MAX_PART_SIZE < MAX_OBJECT_SIZE) };
        let c5 = capacity(5 * MIB, None, 1000);
        let c16 = capacity(16 * MIB, None, 1000);
        let c64 = capacity(64 * MIB, None, 1000);
        assert!(c5 >= 92 * TIB / 100, "{c5}");
        assert!(c16 >= 162 * TIB / 100, "{c16}");
        assert!(c64 >= 25 * TIB / 10, "{c64}");
        // And the 10,000-part column of the doc table.
        assert!(capacity(5 * MIB, None, 10_000) >= 88 * TIB / 10);
        assert!(capacity(16 * MIB, None, 10_000) >= 159 * TIB / 10);
    }

    #[test]
    fn with_a_hint_the_hinted_size_times_1_25_fits() {
        for max_parts in [10_000u32, 1000] {
            for hint in [
                0,
                1,
                MIB,
                100 * MIB,
                10 << 30,
                100 << 30,
                TIB,
                3 * TIB,
                // The largest hint whose × 1.25 fits: 5 TiB, or 1,000 × 5 GiB / 1.25 = 3.9 TiB.
                if max_parts == 10_000 {
                    5 * TIB
                } else {
                    1000 * MAX_PART_SIZE * 4 / 5
                },
            ] {
                for base in [5 * MIB, 16 * MIB] {
                    let c = capacity(base, Some(hint), max_parts);
                    assert!(
                        c as u128 >= hint as u128 * 5 / 4,
                        "max_parts {max_parts} hint {hint} base {base}: capacity {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn with_1000_parts_a_hint_up_to_the_ceiling_itself_fits() {
        for hint in [4 * TIB, 1000 * MAX_PART_SIZE] {
            assert!(capacity(16 * MIB, Some(hint), 1000) >= hint);
        }
    }

    #[test]
    fn an_accurate_hint_keeps_parts_small_and_constant() {
        // 100 GiB with 10,000 parts needs 12.8 MiB parts: 16 MiB (the base) for all parts within the hint.
        let hint = 100u64 << 30;
        let first = part_size_for(1, 16 * MIB, Some(hint), 10_000);
        assert_eq!(first, 16 * MIB);
        assert_eq!(part_size_for(6400, 16 * MIB, Some(hint), 10_000), 16 * MIB);
        // Past the hint the size grows, so an underestimate still fits.
        assert!(part_size_for(9999, 16 * MIB, Some(hint), 10_000) > 16 * MIB);
        // 1 TiB with 1,000 parts: at least 1.25 TiB / 1000 rounded up to a MiB.
        let p = part_size_for(1, 16 * MIB, Some(TIB), 1000);
        assert_eq!(p % MIB, 0);
        assert!(p as u128 * 1000 >= TIB as u128 * 5 / 4);
    }

    #[test]
    fn sizes_never_exceed_the_s3_maximum_and_never_shrink() {
        for hint in [None, Some(MIB), Some(TIB), Some(50 * TIB)] {
            for max_parts in [1u32, 10, 1000, 10_000] {
                let mut prev = 0;
                for n in 1..=max_parts {
                    let s = part_size_for(n, 16 * MIB, hint, max_parts);
                    assert!(s <= MAX_PART_SIZE && s >= prev, "{hint:?} {max_parts} {n}");
                    prev = s;
                }
            }
        }
        assert_eq!(
            part_size_for(u32::MAX, 16 * MIB, None, 10_000),
            MAX_PART_SIZE
        );
    }

    fn test_inner() -> Inner {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .region(Region::new("us-east-1"))
            .build();
        Inner {
            client: Client::from_conf(conf),
            bucket: "bkt".into(),
            prefix: "pre".into(),
            region: "us-east-1".into(),
            endpoint: "http://127.0.0.1:9".into(),
            describe: "s3://bkt/pre".into(),
            storage_class: None,
            sse: None,
            sse_kms_key_id: None,
            part_size: 5 * MIB,
            max_parts: 10_000,
            parallel_parts: 2,
            policy: Backoff::default(),
            list_page_size: 1000,
        }
    }

    fn service(
        code: Option<&str>,
        status: u16,
    ) -> SdkError<aws_sdk_s3::operation::upload_part::UploadPartError, HttpResponse> {
        let mut meta = aws_sdk_s3::error::ErrorMetadata::builder().message("the server says no");
        if let Some(c) = code {
            meta = meta.code(c);
        }
        let err = aws_sdk_s3::operation::upload_part::UploadPartError::generic(meta.build());
        let raw = HttpResponse::new(
            status.try_into().unwrap(),
            aws_sdk_s3::primitives::SdkBody::empty(),
        );
        SdkError::service_error(err, raw)
    }

    #[test]
    fn service_errors_map_to_categories() {
        let s = test_inner();
        let cases: &[(Option<&str>, u16, &str)] = &[
            (Some("NoSuchBucket"), 404, "permanent"),
            (Some("NoSuchKey"), 404, "not-found"),
            (None, 404, "not-found"),
            (Some("NoSuchUpload"), 404, "permanent"),
            (Some("AccessDenied"), 403, "auth"),
            (Some("InvalidAccessKeyId"), 403, "auth"),
            (Some("SignatureDoesNotMatch"), 403, "auth"),
            (Some("InvalidToken"), 400, "auth"),
            (Some("ExpiredToken"), 400, "auth"),
            (None, 403, "auth"),
            (Some("QuotaExceeded"), 403, "no-space"),
            (None, 507, "no-space"),
            (Some("SlowDown"), 503, "transient"),
            (Some("InternalError"), 500, "transient"),
            (None, 502, "transient"),
            (Some("RequestTimeout"), 400, "transient"),
            (Some("EntityTooSmall"), 400, "permanent"),
            (Some("InvalidArgument"), 400, "permanent"),
        ];
        for (code, status, want) in cases {
            let f = s.classify("uploading part 3 of", "b/v", service(*code, *status));
            let got = match f.err {
                StorageError::NotFound { .. } => "not-found",
                StorageError::Auth { .. } => "auth",
                StorageError::NoSpace { .. } => "no-space",
                StorageError::Transient { .. } => "transient",
                StorageError::Permanent { .. } => "permanent",
                StorageError::Cancelled { .. } => "cancelled",
            };
            assert_eq!(got, *want, "{code:?} {status}: {}", f.err);
            assert_eq!(f.code.as_deref(), *code);
            let msg = f.err.to_string();
            assert!(
                !msg.contains("ErrorMetadata") && !msg.contains("ServiceError"),
                "{msg}"
            );
        }
        let e = s
            .classify("listing", "", service(Some("NoSuchBucket"), 404))
            .err;
        assert!(e.to_string().contains("bucket `bkt` does not exist"), "{e}");
    }

    #[test]
    fn transport_errors_are_transient_and_readable() {
        let s = test_inner();
        let refused = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        let e: SdkError<aws_sdk_s3::operation::upload_part::UploadPartError, HttpResponse> =
            SdkError::dispatch_failure(aws_sdk_s3::error::ConnectorError::io(Box::new(refused)));
        let f = s.classify("uploading part 1 of", "b/v", e);
        assert!(f.err.is_retryable());
        assert_eq!(
            f.err.to_string(),
            "s3://bkt/pre: uploading part 1 of b/v: cannot reach s3 endpoint http://127.0.0.1:9: \
             connection refused (os error 111) (temporary error)"
        );
        let e: SdkError<aws_sdk_s3::operation::upload_part::UploadPartError, HttpResponse> =
            SdkError::timeout_error(Box::new(std::io::Error::other("slow")));
        assert!(s.classify("listing", "", e).err.is_retryable());
    }

    /// An error with a message and an optional cause, like the SDK's wrappers.
    #[derive(Debug)]
    struct Chain(
        &'static str,
        Option<Box<dyn std::error::Error + Send + Sync>>,
    );

    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    type PartErr = SdkError<aws_sdk_s3::operation::upload_part::UploadPartError, HttpResponse>;

    #[test]
    fn credentials_that_cannot_be_resolved_are_auth_errors_on_one_line() {
        let s = test_inner();
        // The instance metadata service refusing (what the SDK's IMDS provider says under its credentials
        // error), and the default chain finding nothing (one line per provider).
        let imds = Chain(
            "an error occurred while loading credentials",
            Some(Box::new(Chain(
                "request forbidden: IMDS is disabled or the caller has insufficient permissions.",
                None,
            ))),
        );
        let none = Chain(
            "the credential provider was not enabled",
            Some(Box::new(Chain(
                "no credentials found in chain. Attempted:\n  Environment: the credential provider was not enabled: environment variable not set\n  Profile: the credential provider was not enabled\n",
                None,
            ))),
        );
        for (e, says) in [
            (imds, "IMDS is disabled"),
            (none, "Attempted: Environment:"),
        ] {
            let e: PartErr = SdkError::dispatch_failure(aws_sdk_s3::error::ConnectorError::other(
                Box::new(e),
                None,
            ));
            let f = s.classify("starting upload", "b/v", e);
            assert!(matches!(f.err, StorageError::Auth { .. }), "{}", f.err);
            assert!(!f.err.is_retryable());
            let msg = f.err.to_string();
            assert!(msg.contains("credentials") && msg.contains(says), "{msg}");
            assert!(!msg.contains("cannot reach"), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn a_host_that_does_not_resolve_says_so() {
        let s = test_inner();
        let dns = Chain(
            "dns error",
            Some(Box::new(std::io::Error::other(
                "failed to lookup address information: Name or service not known",
            ))),
        );
        let e: PartErr =
            SdkError::dispatch_failure(aws_sdk_s3::error::ConnectorError::io(Box::new(dns)));
        let f = s.classify("starting upload", "b/v", e);
        assert!(f.err.is_retryable(), "{}", f.err);
        assert!(f.err.to_string().contains("does not resolve"), "{}", f.err);
    }

    #[test]
    fn only_uploads_older_than_the_cutoff_are_stale() {
        let now = SystemTime::now();
        let cutoff = now - Duration::from_secs(3600);
        assert!(stale(Some(now - Duration::from_secs(7200)), cutoff));
        assert!(!stale(Some(now), cutoff));
        assert!(!stale(None, cutoff));
    }

    #[test]
    fn memory_bound_is_window_plus_one_part() {
        assert_eq!(upload_memory_bound(2, 16 * MIB), 48 * MIB);
    }

    #[test]
    fn attempt_timeouts_scale_with_the_body() {
        assert_eq!(attempt_timeout(0, Duration::ZERO), MIN_ATTEMPT);
        assert_eq!(
            attempt_timeout(0, Duration::from_secs(300)),
            Duration::from_secs(300)
        );
        assert_eq!(
            attempt_timeout(600 * MIB, Duration::from_secs(1)),
            Duration::from_secs(600)
        );
    }
}
