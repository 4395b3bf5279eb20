//! Retrying transient storage errors: one backoff policy, used two ways.
//!
//! * [`retry`] runs one idempotent request again while it fails with a [`StorageError::Transient`] error, with
//!   exponential backoff and jitter, until an overall deadline. The S3 backend wraps every request in it (each
//!   `UploadPart` is re-sent with the same bytes, which is idempotent: S3 keeps the last upload of a part number).
//! * The tests' `RetryStorage` wrapper (`tests/integration/storage/fault.rs`) applies the same policy to any
//!   [`super::Storage`]'s whole-object calls, to prove the policy against faults injected into real backends.
//!   The product does not use it: S3 retries inside each request (above), and a local directory has no
//!   transient failures worth a retry.
//!
//! Only `Transient` errors are retried. Auth (refused credentials), NoSpace (full disk / quota), NotFound and
//! Permanent errors are returned at once: retrying them wastes the deadline and hides the cause.
//!
//! The deadline is the *overall* budget for one request, counted from its first attempt. A retry is not started
//! when its backoff delay would end past the deadline, so a request gives up no later than `deadline` after it
//! started plus the duration of the attempt in flight. The error it then returns is the last one, still
//! `Transient`, with the number of attempts and the time spent added to its message.
//!
//! A SIGINT/SIGTERM ([`request_shutdown`]) cuts retries short everywhere: no new retry starts, a waiting backoff
//! ends at once, and an attempt in flight gets [`SHUTDOWN_GRACE`] more to finish. Requests made after the
//! signal (the aborts that clean up an unfinished upload) get one attempt of at most that long — so an
//! interrupted command against a dead endpoint stops within seconds, not after the retry deadline.

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use rand::Rng;

use super::StorageError;

/// Exponential backoff with jitter and an overall deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Upper bound of one delay (before jitter).
    pub max_delay: Duration,
    /// Overall budget of one request, retries included.
    pub deadline: Duration,
}

impl Backoff {
    /// The default shape (100 ms doubling to at most 10 s) with the given deadline.
    pub fn with_deadline(deadline: Duration) -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            deadline,
        }
    }

    /// The un-jittered delay before retry number `retry` (0 = first retry).
    pub fn base_delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(30)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max_delay)
    }

    /// The delay before retry number `retry`, with "equal jitter": uniformly in [base/2, base]. Jitter keeps
    /// parallel part uploads that failed together from retrying in lockstep.
    pub fn delay(&self, retry: u32) -> Duration {
        let base = self.base_delay(retry);
        let half = base / 2;
        let extra = rand::thread_rng().gen_range(0..=(base - half).as_micros() as u64);
        half + Duration::from_micros(extra)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::with_deadline(Duration::from_secs(300))
    }
}

/// How long a request may still take once the process was asked to stop (see the module docs).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn shutdown_token() -> &'static CancellationToken {
    static TOKEN: OnceLock<CancellationToken> = OnceLock::new();
    TOKEN.get_or_init(CancellationToken::new)
}

/// The process is stopping (SIGINT/SIGTERM): cut every retry short from now on.
pub fn request_shutdown() {
    shutdown_token().cancel();
}

fn interrupted() -> StorageError {
    StorageError::Cancelled {
        target: "storage request (interrupted)".into(),
    }
}

/// Run `op` until it succeeds, fails with a non-retryable error, or the deadline of `policy` would be passed.
/// After [`request_shutdown`], it makes no new retry (see the module docs).
///
/// `op` receives the time left until the deadline, so it can bound an attempt that might hang.
pub async fn retry<T, F, Fut>(policy: &Backoff, mut op: F) -> Result<T, StorageError>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, StorageError>>,
{
    let start = Instant::now();
    let shutdown = shutdown_token();
    let mut attempt: u32 = 0;
    loop {
        let stopping = shutdown.is_cancelled();
        let mut remaining = policy.deadline.saturating_sub(start.elapsed());
        if stopping {
            remaining = remaining.min(SHUTDOWN_GRACE);
        }
        let fut = op(remaining);
        tokio::pin!(fut);
        // Once stopping (already, or during the attempt), the attempt gets SHUTDOWN_GRACE more and no longer.
        let result = tokio::select! {
            biased;
            r = &mut fut => r,
            _ = shutdown.cancelled() => tokio::time::timeout(SHUTDOWN_GRACE, &mut fut)
                .await
                .unwrap_or_else(|_| Err(interrupted())),
        };
        let err = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        attempt += 1;
        if !err.is_retryable() || shutdown.is_cancelled() {
            return Err(err);
        }
        let delay = policy.delay(attempt - 1);
        if start.elapsed() + delay >= policy.deadline {
            return Err(gave_up(err, attempt, start.elapsed()));
        }
        tracing::debug!(attempt, ?delay, error = %err, "transient storage error; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Err(err),
        }
    }
}

fn gave_up(err: StorageError, attempts: u32, spent: Duration) -> StorageError {
    match err {
        StorageError::Transient { target, message } => StorageError::Transient {
            target,
            message: format!(
                "{message}; gave up after {attempts} attempt{} in {:.1}s",
                if attempts == 1 { "" } else { "s" },
                spent.as_secs_f64()
            ),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn transient() -> StorageError {
        StorageError::Transient {
            target: "t".into(),
            message: "connection reset".into(),
        }
    }

    fn fast(deadline_ms: u64) -> Backoff {
        Backoff {
            initial: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            deadline: Duration::from_millis(deadline_ms),
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_and_jitter_stays_within_half_to_full() {
        let b = Backoff::with_deadline(Duration::from_secs(60));
        assert_eq!(b.base_delay(0), Duration::from_millis(100));
        assert_eq!(b.base_delay(1), Duration::from_millis(200));
        assert_eq!(b.base_delay(3), Duration::from_millis(800));
        assert_eq!(b.base_delay(20), Duration::from_secs(10));
        assert_eq!(b.base_delay(u32::MAX), Duration::from_secs(10));
        for r in 0..8 {
            for _ in 0..50 {
                let d = b.delay(r);
                assert!(d >= b.base_delay(r) / 2 && d <= b.base_delay(r), "{d:?}");
            }
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let n = AtomicU32::new(0);
        let r = retry(&fast(5_000), |_| async {
            if n.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(transient())
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(n.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn auth_no_space_and_permanent_errors_are_not_retried() {
        for e in [
            StorageError::Auth {
                target: "t".into(),
                message: "403".into(),
            },
            StorageError::NoSpace {
                target: "t".into(),
                message: "ENOSPC".into(),
            },
            StorageError::Permanent {
                target: "t".into(),
                message: "bad".into(),
            },
        ] {
            let n = AtomicU32::new(0);
            let kind = std::mem::discriminant(&e);
            let mut e = Some(e);
            let r: Result<(), _> = retry(&fast(5_000), |_| {
                n.fetch_add(1, Ordering::SeqCst);
                let e = e.take().expect("called once");
                async move { Err(e) }
            })
            .await;
            assert_eq!(std::mem::discriminant(&r.unwrap_err()), kind);
            assert_eq!(n.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn the_deadline_ends_retrying_with_the_last_transient_error() {
        let n = AtomicU32::new(0);
        let start = Instant::now();
        let r: Result<(), _> = retry(&fast(50), |_| {
            n.fetch_add(1, Ordering::SeqCst);
            async { Err(transient()) }
        })
        .await;
        let e = r.unwrap_err();
        assert!(e.is_retryable());
        assert!(e.to_string().contains("gave up after"), "{e}");
        assert!(start.elapsed() < Duration::from_millis(500));
        assert!(n.load(Ordering::SeqCst) >= 2);
    }
}
