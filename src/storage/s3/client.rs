//! The S3 client: built from a target's config, and one method per S3 request, each retried to the deadline.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass,
};
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::super::retry::{retry, Backoff};
use super::super::{check_key, StorageError};
use crate::config::{ChecksumMode, S3Target};

use super::{HttpResponse, S3Storage, ABORT_ROUNDS, MIN_ATTEMPT, MIN_THROUGHPUT};

use super::error::{on, Failure};

/// The per-attempt timeout (see the module docs).
pub(super) fn attempt_timeout(body_len: u64, remaining: Duration) -> Duration {
    remaining
        .max(MIN_ATTEMPT)
        .max(Duration::from_secs(body_len / MIN_THROUGHPUT))
}
#[derive(Clone)]
pub(super) struct Inner {
    pub(super) client: Client,
    pub(super) bucket: String,
    /// Without leading or trailing `/`; empty = the whole bucket.
    pub(super) prefix: String,
    pub(super) region: String,
    /// For messages: the configured endpoint or the AWS one.
    pub(super) endpoint: String,
    pub(super) describe: String,
    pub(super) storage_class: Option<StorageClass>,
    pub(super) sse: Option<ServerSideEncryption>,
    pub(super) sse_kms_key_id: Option<String>,
    pub(super) part_size: u64,
    pub(super) max_parts: u32,
    /// Every part but the last one size (`S3Target::equal_parts`).
    pub(super) equal_parts: bool,
    pub(super) parallel_parts: usize,
    pub(super) policy: Backoff,
    /// The budget of requests to an endpoint that has not answered yet (the target's `check-timeout`).
    pub(super) first_contact: Duration,
    /// Whether the endpoint has answered a request yet (anything with an HTTP status, error or not).
    pub(super) answered: Arc<AtomicBool>,
    pub(super) list_page_size: i32,
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
        if let Some(r) = configured_region(t).await {
            loader = loader.region(Region::new(r));
        }
        if let Some(creds) = secret_file_credentials(t).map_err(auth_err)? {
            loader = loader.credentials_provider(creds);
        }
        let sdk = loader.load().await;
        // Nothing configured anywhere: us-east-1, as the AWS CLI does (AWS redirects other regions' buckets, and
        // that error says which region to set).
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .region(Region::new(region.clone()))
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
                equal_parts: t.equal_parts(),
                parallel_parts: t.parallel_parts.max(1) as usize,
                policy: Backoff::with_deadline(t.retry_deadline),
                first_contact: t.check_timeout,
                answered: Arc::new(AtomicBool::new(false)),
                list_page_size: 1000,
            }),
        })
    }
}

/// The region when neither the target, the environment nor a profile names one.
const DEFAULT_REGION: &str = "us-east-1";

/// The region of target `t`: its `region`, else the environment / profile; with a custom endpoint default to
/// us-east-1 (what most S3-compatible stores expect) without asking the EC2 metadata service. `None`: nothing
/// configured (the SDK's own chain may still find one).
async fn configured_region(t: &S3Target) -> Option<String> {
    if let Some(r) = &t.region {
        return Some(r.clone());
    }
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
    .or_else(|| t.endpoint.as_ref().map(|_| DEFAULT_REGION.to_string()))
}

/// Credentials from `access-key-id-file` + `secret-access-key-file`, when both are set; `Err`: a file cannot be
/// used (its message names it).
fn secret_file_credentials(t: &S3Target) -> Result<Option<Credentials>, String> {
    let (Some(akf), Some(skf)) = (&t.access_key_id_file, &t.secret_access_key_file) else {
        return Ok(None);
    };
    let ak = crate::config::read_secret_file(akf).map_err(|e| e.to_string())?;
    let sk = crate::config::read_secret_file(skf).map_err(|e| e.to_string())?;
    Ok(Some(Credentials::new(
        ak,
        sk,
        None,
        None,
        "voltar-secret-files",
    )))
}

impl Inner {
    pub(super) fn full_key(&self, key: &str) -> Result<String, StorageError> {
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
    pub(super) fn list_prefix(&self, prefix: &str) -> Option<String> {
        match (self.prefix.is_empty(), prefix.is_empty()) {
            (true, true) => None,
            (true, false) => Some(prefix.to_string()),
            (false, _) => Some(format!("{}/{prefix}", self.prefix)),
        }
    }

    pub(super) fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(full)
        } else {
            full.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    pub(super) fn err(&self, message: String) -> StorageError {
        StorageError::Permanent {
            target: self.describe.clone(),
            message,
        }
    }

    /// One attempt of one request, bounded by the per-attempt timeout, its error classified.
    /// The retry policy of the next request: the target's, except that while the endpoint has never answered
    /// (nothing listens, nothing routes there) a request is retried for at most `first_contact`. A read command
    /// against a dead endpoint then fails in seconds rather than after the retry deadline (minutes); once the
    /// endpoint has answered, a failure is an interruption worth the whole deadline.
    pub(super) fn retry_policy(&self) -> Backoff {
        let mut p = self.policy.clone();
        if !self.answered.load(Ordering::Relaxed) {
            p.deadline = p.deadline.min(self.first_contact);
        }
        p
    }

    pub(super) async fn attempt<T, E>(
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
            Ok(Ok(v)) => {
                self.answered.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Ok(Err(e)) => {
                if e.raw_response().is_some() {
                    self.answered.store(true, Ordering::Relaxed);
                }
                Err(self.classify(op, key, e))
            }
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

    pub(super) async fn put_object(
        &self,
        key: &str,
        full: &str,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let len = data.len() as u64;
        retry(&self.retry_policy(), |remaining| {
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

    pub(super) async fn create_upload(
        &self,
        key: &str,
        full: &str,
    ) -> Result<String, StorageError> {
        let out = retry(&self.retry_policy(), |remaining| {
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

    pub(super) async fn upload_part(
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
        let out = retry(&this.retry_policy(), |remaining| {
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

    pub(super) async fn complete(
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
        retry(&self.retry_policy(), |remaining| {
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

    pub(super) async fn head_size(
        &self,
        key: &str,
        full: &str,
    ) -> Result<Option<u64>, StorageError> {
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
    pub(super) async fn abort_upload(
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
        tracing::warn!(key, error = %why, "could not confirm the abort of a multipart upload; `voltar prune` removes it once it is older than `incomplete-grace`");
        Err(StorageError::Transient {
            target: self.describe.clone(),
            message: format!(
                "could not confirm that the multipart upload of {key} was aborted ({why}); `voltar prune` removes it once it is older than `incomplete-grace`"
            ),
        })
    }
}
