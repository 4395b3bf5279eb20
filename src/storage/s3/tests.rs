use aws_sdk_s3::error::SdkError;

use super::client::{attempt_timeout, Inner};
use super::*;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::Client;

const MIB: u64 = 1 << 20;
const TIB: u64 = 1 << 40;

/// Bytes the schedule can hold within `max_parts` parts.
fn capacity(base: u64, hint: Option<u64>, max_parts: u32) -> u64 {
    (1..=max_parts)
        .map(|n| part_size_for(n, base, hint, max_parts, false))
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
    let first = part_size_for(1, 16 * MIB, Some(hint), 10_000, false);
    assert_eq!(first, 16 * MIB);
    assert_eq!(
        part_size_for(6400, 16 * MIB, Some(hint), 10_000, false),
        16 * MIB
    );
    // Past the hint the size grows, so an underestimate still fits.
    assert!(part_size_for(9999, 16 * MIB, Some(hint), 10_000, false) > 16 * MIB);
    // 1 TiB with 1,000 parts: at least 1.25 TiB / 1000 rounded up to a MiB.
    let p = part_size_for(1, 16 * MIB, Some(TIB), 1000, false);
    assert_eq!(p % MIB, 0);
    assert!(p as u128 * 1000 >= TIB as u128 * 5 / 4);
}

#[test]
fn sizes_never_exceed_the_s3_maximum_and_never_shrink() {
    for hint in [None, Some(MIB), Some(TIB), Some(50 * TIB)] {
        for max_parts in [1u32, 10, 1000, 10_000] {
            let mut prev = 0;
            for n in 1..=max_parts {
                let s = part_size_for(n, 16 * MIB, hint, max_parts, false);
                assert!(s <= MAX_PART_SIZE && s >= prev, "{hint:?} {max_parts} {n}");
                prev = s;
            }
        }
    }
    assert_eq!(
        part_size_for(u32::MAX, 16 * MIB, None, 10_000, false),
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
        equal_parts: false,
        parallel_parts: 2,
        policy: Backoff::default(),
        first_contact: Duration::from_secs(5),
        answered: Default::default(),
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

/// A bucket in another region: AWS answers 301 PermanentRedirect (HEAD: a bare 301) with the bucket's region in
/// `x-amz-bucket-region`. That is a setting to fix, not a server to wait for: say which region to set.
#[test]
fn wrong_region_says_which_region_to_set() {
    let s = test_inner();
    let with_region = |code: Option<&str>, status: u16, region: Option<&str>| {
        let mut meta = aws_sdk_s3::error::ErrorMetadata::builder().message("the bucket you are attempting to access must be addressed using the specified endpoint");
        if let Some(c) = code {
            meta = meta.code(c);
        }
        let err = aws_sdk_s3::operation::upload_part::UploadPartError::generic(meta.build());
        let mut raw = HttpResponse::new(
            status.try_into().unwrap(),
            aws_sdk_s3::primitives::SdkBody::empty(),
        );
        if let Some(r) = region {
            raw.headers_mut()
                .insert("x-amz-bucket-region", r.to_string());
        }
        SdkError::service_error(err, raw)
    };
    let e = s
        .classify(
            "listing",
            "",
            with_region(Some("PermanentRedirect"), 301, Some("eu-central-1")),
        )
        .err;
    assert!(matches!(e, StorageError::Permanent { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("region `eu-central-1`"), "{msg}");
    assert!(msg.contains("region = \"eu-central-1\""), "{msg}");
    // A HEAD gets no body, so no code: the status and header alone say it.
    let e = s
        .classify("checking", "", with_region(None, 301, Some("ap-south-1")))
        .err;
    assert!(matches!(e, StorageError::Permanent { .. }), "{e:?}");
    assert!(e.to_string().contains("region = \"ap-south-1\""), "{e}");
    // No header: still a region problem, named as one.
    let e = s
        .classify(
            "listing",
            "",
            with_region(Some("PermanentRedirect"), 301, None),
        )
        .err;
    assert!(matches!(e, StorageError::Permanent { .. }), "{e:?}");
    assert!(e.to_string().contains("another region"), "{e}");
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
        let e: PartErr =
            SdkError::dispatch_failure(aws_sdk_s3::error::ConnectorError::other(Box::new(e), None));
        let f = s.classify("starting upload", "b/v", e);
        assert!(matches!(f.err, StorageError::Auth { .. }), "{}", f.err);
        assert!(!f.err.is_retryable());
        let msg = f.err.to_string();
        assert!(msg.contains("credentials") && msg.contains(says), "{msg}");
        assert!(!msg.contains("cannot reach"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
}

/// A host name the resolver says does not exist (EAI_NONAME, EAI_NODATA) fails at once: waiting out the
/// retry deadline (minutes) cannot fix a mistyped endpoint. A resolver that could not answer (EAI_AGAIN) is
/// retried. Both say what they are.
#[test]
fn a_host_that_does_not_resolve_says_so() {
    let s = test_inner();
    for (lookup, retried) in [
        ("Name or service not known", false),
        ("No address associated with hostname", false),
        ("Temporary failure in name resolution", true),
    ] {
        let dns = Chain(
            "dns error",
            Some(Box::new(std::io::Error::other(format!(
                "failed to lookup address information: {lookup}"
            )))),
        );
        let e: PartErr =
            SdkError::dispatch_failure(aws_sdk_s3::error::ConnectorError::io(Box::new(dns)));
        let f = s.classify("starting upload", "b/v", e);
        assert_eq!(f.err.is_retryable(), retried, "{lookup}: {}", f.err);
        assert!(f.err.to_string().contains("does not resolve"), "{}", f.err);
    }
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

/// `equal-parts` (Cloudflare R2): every part has the first part's size, with or without a hint; the archive
/// then fits `max_parts` × that size.
#[test]
fn equal_parts_never_grow() {
    for hint in [None, Some(100 * MIB), Some(TIB)] {
        let first = part_size_for(1, 8 * MIB, hint, 10_000, true);
        for n in [2, 909, 910, 5000, 10_000] {
            assert_eq!(
                part_size_for(n, 8 * MIB, hint, 10_000, true),
                first,
                "{hint:?} {n}"
            );
        }
    }
    assert_eq!(part_size_for(10_000, 8 * MIB, None, 10_000, true), 8 * MIB);
    // A hint still picks a first size large enough for it (× 1.25).
    let p = part_size_for(1, 8 * MIB, Some(TIB), 10_000, true);
    assert!(p as u128 * 10_000 >= TIB as u128 * 5 / 4);
}
