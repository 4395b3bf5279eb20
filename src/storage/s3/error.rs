//! Error classification: an SDK error becomes a `StorageError` category with one readable line.

use aws_sdk_s3::error::{ConnectorError, ProvideErrorMetadata, SdkError};

use super::super::StorageError;

use super::client::Inner;
use super::HttpResponse;

/// A failed attempt: the category, plus the S3 error code for the few places that branch on it.
pub(super) struct Failure {
    pub(super) err: StorageError,
    pub(super) code: Option<String>,
}

impl From<Failure> for StorageError {
    fn from(f: Failure) -> Self {
        f.err
    }
}

impl Inner {
    /// Map an SDK error to a category and a readable message.
    pub(super) fn classify<E>(&self, op: &str, key: &str, e: SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let target = self.describe.clone();
        let what = format!("{op}{}", on(key));
        let status = e.raw_response().map(|r| r.status().as_u16());
        // Where a bucket in another region lives (AWS says so on its redirects).
        let bucket_region = e
            .raw_response()
            .and_then(|r| r.headers().get("x-amz-bucket-region"))
            .map(str::to_string);
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
                self.not_sent(&what, target, d.as_connector_error(), &e)
            }
            SdkError::ConstructionFailure(_) => StorageError::Permanent {
                target,
                message: format!("{what}: cannot build the request: {}", root_cause(&e)),
            },
            _ => {
                let message = |detail: &str| format!("{what}: {detail}");
                match Answer::of(code.as_deref(), status) {
                    Answer::NoSuchBucket => StorageError::Permanent {
                        target,
                        message: format!(
                            "bucket `{}` does not exist (create it, or fix `bucket` in the target)",
                            self.bucket
                        ),
                    },
                    Answer::WrongRegion => StorageError::Permanent {
                        target,
                        message: match &bucket_region {
                            Some(r) => format!(
                                "{what}: bucket `{}` is in region `{r}`, not `{}`; set region = \"{r}\" in \
                                 the target (or ?region={r} in an s3:// URL)",
                                self.bucket, self.region
                            ),
                            None => format!(
                                "{what}: bucket `{}` is in another region than `{}` ({detail}); set `region` \
                                 in the target (or ?region= in an s3:// URL)",
                                self.bucket, self.region
                            ),
                        },
                    },
                    Answer::NotFound => StorageError::NotFound {
                        target,
                        key: key.to_string(),
                    },
                    Answer::NoSuchUpload => StorageError::Permanent {
                        target,
                        message: message(
                            "the multipart upload no longer exists (aborted elsewhere or by a lifecycle rule)",
                        ),
                    },
                    Answer::NoSpace => StorageError::NoSpace {
                        target,
                        message: message(&detail),
                    },
                    Answer::Auth => StorageError::Auth {
                        target,
                        message: message(&detail),
                    },
                    Answer::Transient => StorageError::Transient {
                        target,
                        message: message(&detail),
                    },
                    Answer::Unreadable => StorageError::Transient {
                        target,
                        message: message(&format!("unreadable answer: {}", root_cause(&e))),
                    },
                    Answer::Permanent => StorageError::Permanent {
                        target,
                        message: message(&detail),
                    },
                }
            }
        };
        Failure { err, code }
    }

    /// A request that was not sent, or got no answer (`c`: the connector's error). Credentials and DNS failures
    /// are named as such.
    fn not_sent(
        &self,
        what: &str,
        target: String,
        c: Option<&ConnectorError>,
        e: &(dyn std::error::Error + 'static),
    ) -> StorageError {
        let cause = root_cause(e);
        let is = |f: fn(&ConnectorError) -> bool| c.is_some_and(f);
        if !is(ConnectorError::is_io) && !is(ConnectorError::is_timeout) && credentials_failed(e) {
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
        } else if is(ConnectorError::is_io) && does_not_resolve(e) {
            // Say what it is: "cannot reach … dns error" reads like a dead server. A name the resolver says
            // does not exist is a mistyped endpoint: fail now. A resolver that could not answer may next time.
            let message = format!(
                "{what}: the host name of s3 endpoint {} does not resolve ({cause}); check `endpoint` and DNS",
                self.endpoint
            );
            if resolver_was_unsure(e) {
                StorageError::Transient { target, message }
            } else {
                StorageError::Permanent { target, message }
            }
        } else if is(ConnectorError::is_user) {
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
}

/// What an S3 answer means, by its error code and HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    NoSuchBucket,
    /// The bucket lives in another region (301 PermanentRedirect; a HEAD's bare 301).
    WrongRegion,
    NotFound,
    NoSuchUpload,
    NoSpace,
    Auth,
    Transient,
    /// A 2xx whose body could not be read or parsed: most likely cut off on the way.
    Unreadable,
    Permanent,
}

impl Answer {
    fn of(code: Option<&str>, status: Option<u16>) -> Answer {
        match (code, status) {
            (Some("NoSuchBucket"), _) => Answer::NoSuchBucket,
            (Some("PermanentRedirect"), _) | (None, Some(301)) => Answer::WrongRegion,
            (Some("NoSuchKey"), _) | (None, Some(404)) => Answer::NotFound,
            (Some("NoSuchUpload"), _) => Answer::NoSuchUpload,
            // Quota codes come with 403 on some stores: check them before the generic 403.
            (
                Some(
                    "QuotaExceeded"
                    | "ServiceQuotaExceeded"
                    | "InsufficientStorage"
                    | "XMinioStorageFull"
                    | "StorageFull",
                ),
                _,
            )
            | (_, Some(507)) => Answer::NoSpace,
            // A feature the store does not have (R2 answered a checksum header it did not know this way):
            // asking again cannot help. Before the 5xx row below.
            (Some("NotImplemented"), _) | (_, Some(501)) => Answer::Permanent,
            (
                Some(
                    "AccessDenied"
                    | "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "ExpiredToken"
                    | "InvalidToken"
                    | "AllAccessDisabled"
                    | "AccountProblem"
                    | "InvalidSecurity",
                ),
                _,
            )
            | (_, Some(401 | 403)) => Answer::Auth,
            (
                Some(
                    "SlowDown"
                    | "RequestTimeout"
                    | "InternalError"
                    | "ServiceUnavailable"
                    | "Throttling"
                    | "ThrottlingException"
                    | "RequestTimeTooSkewed"
                    | "OperationAborted",
                ),
                _,
            )
            | (_, Some(408 | 429 | 500..=599)) => Answer::Transient,
            (None, Some(200..=299)) => Answer::Unreadable,
            _ => Answer::Permanent,
        }
    }
}

pub(super) fn on(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" {key}")
    }
}

/// The innermost message of an error chain, e.g. "Connection refused (os error 111)": the most specific and
/// readable part (the outer layers say "dispatch failure", "io error", "client error (Connect)"). On one line:
/// the credentials chain lists each provider it tried on a line of its own.
pub(super) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let s = one_line(&cur.to_string());
    // The SDK's stalled-stream protection (downloads and uploads) says "minimum throughput was specified at 1 B/s,
    // but throughput of 0 B/s was observed".
    if s.contains("minimum throughput was specified") {
        return "the transfer stalled (no data for several seconds)".into();
    }
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

/// Whether a failed name lookup may succeed when asked again: the resolver could not answer (EAI_AGAIN, or no
/// reason given), rather than answering that the name does not exist (EAI_NONAME, EAI_NODATA).
fn resolver_was_unsure(e: &(dyn std::error::Error + 'static)) -> bool {
    !chain_text(e).iter().any(|m| {
        m.contains("name or service not known") || m.contains("no address associated with hostname")
    })
}

#[cfg(test)]
mod tests {
    use super::Answer;

    #[test]
    fn a_stalled_transfer_is_said_in_words() {
        let e = std::io::Error::other(
            "minimum throughput was specified at 1 B/s, but throughput of 0 B/s was observed",
        );
        assert_eq!(
            super::root_cause(&e),
            "the transfer stalled (no data for several seconds)"
        );
        let e = std::io::Error::other("Connection reset by peer");
        assert_eq!(super::root_cause(&e), "connection reset by peer");
    }

    #[test]
    fn answers_by_code_then_status() {
        for (code, status, want) in [
            (Some("NoSuchBucket"), Some(404), Answer::NoSuchBucket),
            (Some("NoSuchKey"), Some(404), Answer::NotFound),
            (None, Some(404), Answer::NotFound),
            (Some("NoSuchUpload"), Some(404), Answer::NoSuchUpload),
            // A quota code wins over its 403.
            (Some("QuotaExceeded"), Some(403), Answer::NoSpace),
            (None, Some(507), Answer::NoSpace),
            (Some("SignatureDoesNotMatch"), Some(403), Answer::Auth),
            (None, Some(401), Answer::Auth),
            (Some("SlowDown"), Some(503), Answer::Transient),
            (None, Some(500), Answer::Transient),
            (Some("NotImplemented"), Some(501), Answer::Permanent),
            (None, Some(501), Answer::Permanent),
            (None, Some(429), Answer::Transient),
            (None, Some(200), Answer::Unreadable),
            (Some("InvalidArgument"), Some(400), Answer::Permanent),
            (None, None, Answer::Permanent),
        ] {
            assert_eq!(Answer::of(code, status), want, "{code:?} {status:?}");
        }
    }
}
