//! Storage conformance: one suite of cases, each run against the local backend (a temp dir) and the S3 backend
//! (the real S3 test server, a fresh bucket per test). Plus S3 fault tests against a private S3 server that the
//! test starts, stops and kills, and retry tests through the fault-injecting wrapper over real backends.
//!
//! Acceptance rows: 1 (local atomicity), 2 (S3 complete-or-abort), 19 (part sizing, large streamed upload),
//! 20 (retry transient, not auth / no-space, within a deadline).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use voltar::config::{ChecksumMode, S3Target, Target, TargetKind};
use voltar::storage::retry::Backoff;
use voltar::storage::s3::S3Storage;
use voltar::storage::{PutOptions, Storage, StorageError, StorageExt};

use crate::support::{self, free_port, PrivateS3};

mod fault;
use fault::{FaultKind, FaultStorage, Op, RetryStorage};

const MIB: usize = 1 << 20;

/// Deterministic, non-repeating bytes: a part sent twice or out of order changes the result.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

fn secret_files(dir: &Path) -> (PathBuf, PathBuf) {
    let ak = dir.join("ak");
    let sk = dir.join("sk");
    std::fs::write(&ak, "testing-key\n").unwrap();
    std::fs::write(&sk, "testing-secret\n").unwrap();
    for p in [&ak, &sk] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    (ak, sk)
}

fn s3_target(endpoint: &str, bucket: &str, secrets: &Path, deadline: Duration) -> S3Target {
    let (ak, sk) = secret_files(secrets);
    let mut t = S3Target::new(bucket.to_string(), "pfx/sub".to_string());
    t.endpoint = Some(endpoint.to_string());
    t.region = Some("us-east-1".into());
    t.path_style = true;
    t.access_key_id_file = Some(ak);
    t.secret_access_key_file = Some(sk);
    t.part_size = 5 << 20;
    t.parallel_parts = 2;
    t.retry_deadline = deadline;
    t
}

/// One backend under test, with what the backend-specific checks need.
struct Fixture {
    storage: Arc<dyn Storage>,
    s3: Option<S3Storage>,
    /// Local: the root directory.
    root: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn local() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let target = Target {
            name: "t".into(),
            kind: TargetKind::Local {
                path: dir.path().join("backups"),
                prefix: "pfx".into(),
            },
            retention: None,
        };
        let storage = voltar::storage::open(&target).await.unwrap();
        assert_eq!(
            storage.describe(),
            dir.path().join("backups/pfx").display().to_string()
        );
        Fixture {
            storage,
            s3: None,
            root: Some(dir.path().join("backups/pfx")),
            _dir: dir,
        }
    }

    async fn s3_with(checksum: ChecksumMode) -> Option<Fixture> {
        let endpoint = support::s3_endpoint()?;
        let dir = tempfile::tempdir().unwrap();
        let bucket = support::unique("st");
        let mut t = s3_target(&endpoint, &bucket, dir.path(), Duration::from_secs(30));
        t.checksum = checksum;
        let s3 = S3Storage::new(&t).await.unwrap().with_list_page_size(7);
        s3.ensure_bucket().await.unwrap();
        assert_eq!(s3.describe(), format!("s3://{bucket}/pfx/sub"));
        Some(Fixture {
            storage: Arc::new(s3.clone()),
            s3: Some(s3),
            root: None,
            _dir: dir,
        })
    }

    async fn s3() -> Option<Fixture> {
        Fixture::s3_with(ChecksumMode::Default).await
    }

    /// Leftovers of unfinished uploads: local temp files, or S3 incomplete multipart uploads under the prefix.
    async fn leftovers(&self) -> Vec<String> {
        if let Some(s3) = &self.s3 {
            return s3
                .list_incomplete()
                .await
                .unwrap()
                .into_iter()
                .map(|u| u.key)
                .collect();
        }
        let root = self.root.as_ref().unwrap();
        walkdir::WalkDir::new(root)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".voltar-tmp-"))
            .map(|e| e.path().display().to_string())
            .collect()
    }

    /// Leftovers, waiting up to 20 s for them to go (an abort spawned from `Drop` runs in the background).
    async fn leftovers_settled(&self) -> Vec<String> {
        let start = Instant::now();
        loop {
            let l = self.leftovers().await;
            if l.is_empty() || start.elapsed() > Duration::from_secs(20) {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        self.storage
            .list(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect()
    }

    /// The key is not visible: `get` says NotFound and `list` does not show it.
    async fn assert_absent(&self, key: &str) {
        match self.storage.get(key).await {
            Err(e) => assert!(e.is_not_found(), "get {key}: {e}"),
            Ok(_) => panic!("{key} is visible"),
        }
        assert!(
            !self.keys("").await.contains(&key.to_string()),
            "{key} listed"
        );
    }

    /// Empty the bucket's prefix (the in-memory server is shared by the whole test run).
    async fn cleanup(&self) {
        let keys = self.keys("").await;
        self.storage.delete(&keys).await.unwrap();
        self.storage.sweep_incomplete(Duration::ZERO).await.unwrap();
    }
}

/// Each case runs against both backends.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod local_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let f = super::Fixture::local().await;
                    super::$case(&f).await;
                }
            )*
        }
        mod s3_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(f) = super::Fixture::s3().await else { return };
                    super::$case(&f).await;
                    f.cleanup().await;
                }
            )*
        }
    };
}

conformance!(
    put_get_round_trip,
    streamed_upload_in_many_parts,
    streamed_small_and_empty_objects,
    list_paginates_filters_and_sorts,
    delete_in_batches_and_missing_keys_are_fine,
    unfinished_uploads_are_invisible_and_abort_leaves_nothing,
    injected_write_failure_then_drop_leaves_nothing,
    crashed_upload_is_swept,
    retry_wrapper_retries_transient_not_auth_or_no_space,
);

async fn put_get_round_trip(f: &Fixture) {
    let s = &f.storage;
    s.put("b1/manifest.json", Bytes::from_static(b"{\"v\":1}"))
        .await
        .unwrap();
    assert_eq!(
        &s.get_bytes("b1/manifest.json").await.unwrap()[..],
        b"{\"v\":1}"
    );
    // Overwrite is atomic and whole.
    s.put("b1/manifest.json", Bytes::from_static(b"{\"v\":2}"))
        .await
        .unwrap();
    assert_eq!(
        &s.get_bytes("b1/manifest.json").await.unwrap()[..],
        b"{\"v\":2}"
    );
    let l = s.list("").await.unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].key, "b1/manifest.json");
    assert_eq!(l[0].size, 7);
    assert!(l[0].modified.is_some());
    let e = s.get("b1/missing.json").await.err().unwrap();
    assert!(e.is_not_found(), "{e}");
    // Keys cannot escape the root.
    for bad in ["../x", "/abs", "a//b"] {
        assert!(s.put(bad, Bytes::new()).await.is_err(), "{bad}");
    }
}

async fn streamed_upload_in_many_parts(f: &Fixture) {
    let s = &f.storage;
    // 3 full parts of 5 MiB plus a tail, written in odd-sized chunks so chunk and part edges never line up.
    let total = 3 * 5 * MIB + 123_457;
    let data = pattern(total, 1);
    let mut w = s
        .put_stream(
            "b1/vol.tar.zst",
            PutOptions {
                size_hint: Some(total as u64),
            },
        )
        .await
        .unwrap();
    for c in data.chunks(MIB + 7) {
        w.write(data.slice_ref(c)).await.unwrap();
    }
    let meta = w.finish().await.unwrap();
    assert_eq!(meta.key, "b1/vol.tar.zst");
    assert_eq!(meta.size, total as u64);
    let mut got = Vec::with_capacity(total);
    let mut stream = s.get("b1/vol.tar.zst").await.unwrap();
    let mut pieces = 0;
    while let Some(c) = stream.next().await {
        got.extend_from_slice(&c.unwrap());
        pieces += 1;
    }
    assert!(pieces > 1, "get must stream, not return one buffer");
    assert!(got == data[..], "round trip differs");
    let listed = s.list("b1/vol").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, total as u64);

    // No hint, and one write larger than two parts (sent without copying into the part buffer).
    let big = pattern(11 * MIB + 5, 2);
    let mut w = s.put_stream("b1/big", PutOptions::default()).await.unwrap();
    w.write(Bytes::from_static(b"head")).await.unwrap();
    w.write(big.clone()).await.unwrap();
    w.finish().await.unwrap();
    let got = s.get_bytes("b1/big").await.unwrap();
    assert_eq!(&got[..4], b"head");
    assert!(got[4..] == big[..]);
    assert!(f.leftovers().await.is_empty());
}

async fn streamed_small_and_empty_objects(f: &Fixture) {
    let s = &f.storage;
    let mut w = s.put_stream("small", PutOptions::default()).await.unwrap();
    w.write(Bytes::from_static(b"abc")).await.unwrap();
    w.write(Bytes::from_static(b"def")).await.unwrap();
    assert_eq!(w.finish().await.unwrap().size, 6);
    assert_eq!(&s.get_bytes("small").await.unwrap()[..], b"abcdef");
    let w = s.put_stream("empty", PutOptions::default()).await.unwrap();
    assert_eq!(w.finish().await.unwrap().size, 0);
    assert!(s.get_bytes("empty").await.unwrap().is_empty());
    assert_eq!(f.keys("").await, vec!["empty", "small"]);
}

async fn list_paginates_filters_and_sorts(f: &Fixture) {
    let s = &f.storage;
    // 25 keys: more than three pages of 7 on S3.
    let mut expected = Vec::new();
    for i in (0..25).rev() {
        let k = format!("d{}/k{i:02}", i % 2);
        s.put(&k, Bytes::from(vec![b'x'; i])).await.unwrap();
        expected.push(k);
    }
    expected.sort();
    let all = s.list("").await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.key.clone()).collect::<Vec<_>>(),
        expected
    );
    for m in &all {
        let i: usize = m.key[4..].parse().unwrap();
        assert_eq!(m.size, i as u64, "{}", m.key);
    }
    let d1 = f.keys("d1/").await;
    assert_eq!(d1.len(), 12);
    assert!(d1.iter().all(|k| k.starts_with("d1/")));
    // A prefix is a string prefix, not only a directory.
    assert_eq!(f.keys("d0/k1").await.len(), 5);
    assert!(f.keys("nothing/").await.is_empty());
}

async fn delete_in_batches_and_missing_keys_are_fine(f: &Fixture) {
    let s = f.storage.clone();
    // More than one DeleteObjects batch (1000) on S3.
    let keys: Vec<String> = (0..1205)
        .map(|i| format!("del/{:02}/k{i:04}", i % 37))
        .collect();
    futures::stream::iter(keys.clone())
        .map(|k| {
            let s = s.clone();
            async move { s.put(&k, Bytes::from_static(b"1")).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .unwrap();
    s.put("keep/me", Bytes::from_static(b"k")).await.unwrap();
    assert_eq!(f.keys("del/").await.len(), 1205);
    let mut doomed = keys.clone();
    doomed.push("del/never-existed".into());
    s.delete(&doomed).await.unwrap();
    assert!(f.keys("del/").await.is_empty());
    assert_eq!(f.keys("").await, vec!["keep/me"]);
    // Deleting again is not an error.
    s.delete(&keys[..3]).await.unwrap();
    s.delete(&[]).await.unwrap();
    if let Some(root) = &f.root {
        // Emptied directories are removed, the root stays.
        assert!(!root.join("del").exists());
        assert!(root.exists());
    }
}

async fn unfinished_uploads_are_invisible_and_abort_leaves_nothing(f: &Fixture) {
    let s = &f.storage;
    s.put("inc/other", Bytes::from_static(b"o")).await.unwrap();
    let mut w = s.put_stream("inc/x", PutOptions::default()).await.unwrap();
    // More than one part: on S3 the multipart upload exists with a part in it.
    w.write(pattern(6 * MIB, 3)).await.unwrap();
    f.assert_absent("inc/x").await;
    assert_eq!(f.keys("inc/").await, vec!["inc/other"]);
    assert_eq!(f.leftovers().await.len(), 1, "the upload in progress");
    w.abort().await.unwrap();
    f.assert_absent("inc/x").await;
    assert!(f.leftovers().await.is_empty());
}

async fn injected_write_failure_then_drop_leaves_nothing(f: &Fixture) {
    let fs = FaultStorage::new(f.storage.clone());
    fs.fail(Op::Write, 3, 1, FaultKind::Transient);
    let mut w = fs
        .put_stream("b2/vol", PutOptions::default())
        .await
        .unwrap();
    w.write(pattern(3 * MIB, 4)).await.unwrap();
    w.write(pattern(3 * MIB, 5)).await.unwrap();
    let e = w.write(pattern(3 * MIB, 6)).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    // The caller gives up without abort: dropping the writer must clean up on its own.
    drop(w);
    f.assert_absent("b2/vol").await;
    assert_eq!(f.leftovers_settled().await, Vec::<String>::new());

    // Same with a failure injected at the final step.
    fs.fail(Op::Finish, 1, 1, FaultKind::NoSpace);
    let mut w = fs
        .put_stream("b2/vol2", PutOptions::default())
        .await
        .unwrap();
    w.write(pattern(6 * MIB, 7)).await.unwrap();
    assert!(matches!(
        w.finish().await.unwrap_err(),
        StorageError::NoSpace { .. }
    ));
    f.assert_absent("b2/vol2").await;
    assert_eq!(f.leftovers_settled().await, Vec::<String>::new());
}

async fn crashed_upload_is_swept(f: &Fixture) {
    let s = &f.storage;
    let mut w = s.put_stream("b3/vol", PutOptions::default()).await.unwrap();
    w.write(pattern(6 * MIB, 8)).await.unwrap();
    // A killed process runs no destructor.
    std::mem::forget(w);
    f.assert_absent("b3/vol").await;
    assert_eq!(f.leftovers().await.len(), 1);
    // Too young to be swept: it could be a run in progress. (moto reports every upload as initiated on
    // 2010-11-10, so on moto the age rule cannot be observed; real stores report the real time.)
    let real_start_time = match &f.s3 {
        Some(s3) => {
            let u = s3.list_incomplete().await.unwrap();
            let age = u[0].initiated.and_then(|t| t.elapsed().ok());
            age.is_some_and(|a| a < Duration::from_secs(3600))
        }
        None => true,
    };
    if real_start_time {
        assert_eq!(
            s.sweep_incomplete(Duration::from_secs(3600)).await.unwrap(),
            0
        );
        assert_eq!(f.leftovers().await.len(), 1);
    } else {
        eprintln!(
            "note: the S3 server reports a fixed upload start time; age rule not observable here"
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(s.sweep_incomplete(Duration::from_secs(1)).await.unwrap(), 1);
    assert!(f.leftovers().await.is_empty());
    f.assert_absent("b3/vol").await;
}

async fn retry_wrapper_retries_transient_not_auth_or_no_space(f: &Fixture) {
    let fast = |deadline_ms| Backoff {
        initial: Duration::from_millis(5),
        max_delay: Duration::from_millis(40),
        deadline: Duration::from_millis(deadline_ms),
    };
    // Two transient failures, then the real backend: the put lands.
    let fs = Arc::new(FaultStorage::new(f.storage.clone()));
    fs.fail(Op::Put, 1, 2, FaultKind::Transient);
    let r = RetryStorage::new(fs.clone(), fast(10_000));
    r.put("r/a", Bytes::from_static(b"a")).await.unwrap();
    assert_eq!(fs.calls(Op::Put), 3);
    assert_eq!(&f.storage.get_bytes("r/a").await.unwrap()[..], b"a");
    // Lists and deletes retry too.
    fs.fail(Op::List, 1, 1, FaultKind::Transient);
    assert_eq!(r.list("r/").await.unwrap().len(), 1);
    assert_eq!(fs.calls(Op::List), 2);

    // Auth and no-space are returned at once.
    for (kind, n) in [(FaultKind::Auth, 0), (FaultKind::NoSpace, 1)] {
        let fs = Arc::new(FaultStorage::new(f.storage.clone()));
        fs.fail(Op::Put, 1, 100, kind);
        let r = RetryStorage::new(fs.clone(), fast(10_000));
        let e = r.put("r/b", Bytes::from_static(b"b")).await.unwrap_err();
        match (n, &e) {
            (0, StorageError::Auth { .. }) | (1, StorageError::NoSpace { .. }) => {}
            _ => panic!("{kind:?} became {e}"),
        }
        assert_eq!(fs.calls(Op::Put), 1, "{kind:?} must not be retried");
        f.assert_absent("r/b").await;
    }

    // A fault that never clears: retried until the deadline, then the transient error is returned.
    let fs = Arc::new(FaultStorage::new(f.storage.clone()));
    fs.fail(Op::Delete, 1, usize::MAX, FaultKind::Transient);
    let r = RetryStorage::new(fs.clone(), fast(300));
    let start = Instant::now();
    let e = r.delete(&["r/a".into()]).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("gave up after"), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(fs.calls(Op::Delete) >= 3);
    assert_eq!(f.keys("r/").await, vec!["r/a"]);
}

// -------------------------------------------------------------------------------------------------------------
// S3 only.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_when_required_checksums_round_trip() {
    // A fresh bucket per case: the cases expect an empty prefix.
    for case in 0..3 {
        let Some(f) = Fixture::s3_with(ChecksumMode::WhenRequired).await else {
            return;
        };
        match case {
            0 => put_get_round_trip(&f).await,
            1 => streamed_upload_in_many_parts(&f).await,
            _ => delete_in_batches_and_missing_keys_are_fine(&f).await,
        }
        f.cleanup().await;
    }
}

/// Row 2: the real server refuses the complete call (parts below the S3 minimum): the upload is aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_refused_complete_aborts_the_upload() {
    let Some(f) = Fixture::s3().await else { return };
    let s3 = f.s3.clone().unwrap().with_part_size(MIB as u64);
    let mut w = s3.put_stream("c/vol", PutOptions::default()).await.unwrap();
    w.write(pattern(2 * MIB + 500, 9)).await.unwrap();
    assert_eq!(f.leftovers().await.len(), 1);
    let e = w.finish().await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("EntityTooSmall"), "{e}");
    f.assert_absent("c/vol").await;
    assert!(f.leftovers().await.is_empty());
    f.cleanup().await;
}

/// Row 2: the upload vanished on the server (aborted by a sweep or a lifecycle rule) while parts were still to
/// come: the upload fails, nothing is published and nothing is left. Real S3 answers `NoSuchUpload` (permanent,
/// at once); moto answers HTTP 500 (transient, so retried until the deadline): either way the writer must fail
/// cleanly, hence the short deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_upload_aborted_behind_our_back_publishes_nothing() {
    let Some(endpoint) = support::s3_endpoint() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let t = s3_target(
        &endpoint,
        &support::unique("gone"),
        dir.path(),
        Duration::from_secs(2),
    );
    let s = S3Storage::new(&t).await.unwrap();
    s.ensure_bucket().await.unwrap();
    let mut w = s.put_stream("v/vol", PutOptions::default()).await.unwrap();
    w.write(pattern(5 * MIB, 10)).await.unwrap();
    assert_eq!(s.sweep_incomplete(Duration::ZERO).await.unwrap(), 1);
    let start = Instant::now();
    let r = async {
        w.write(pattern(5 * MIB, 11)).await?;
        w.write(pattern(100, 12)).await?;
        w.finish().await
    }
    .await;
    let e = r.unwrap_err();
    assert!(
        e.to_string().contains("no longer exists") || e.to_string().contains("gave up after"),
        "{e}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(s.get("v/vol").await.err().unwrap().is_not_found());
    assert!(s.list("").await.unwrap().is_empty());
    assert!(s.list_incomplete().await.unwrap().is_empty());
}

#[tokio::test]
async fn s3_errors_are_readable_and_categorised() {
    let Some(endpoint) = support::s3_endpoint() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A bucket that does not exist.
    let t = s3_target(
        &endpoint,
        "vt-no-such-bucket-x",
        dir.path(),
        Duration::from_secs(5),
    );
    let s = S3Storage::new(&t).await.unwrap();
    let e = s.list("").await.unwrap_err();
    assert!(matches!(e, StorageError::Permanent { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("bucket `vt-no-such-bucket-x` does not exist"),
        "{e}"
    );
    assert!(!format!("{e}").contains("ServiceError {"), "{e}");

    // Nothing listens: transient, retried until the deadline, then a readable error.
    let port = free_port();
    let ep = format!("http://127.0.0.1:{port}");
    let t = s3_target(&ep, "b", dir.path(), Duration::from_secs(2));
    let s = S3Storage::new(&t).await.unwrap();
    let start = Instant::now();
    let e = s.put("k", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("cannot reach s3 endpoint {ep}")) && msg.contains("refused"),
        "{msg}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );

    // A secrets file readable by others is refused, naming the fix.
    let (ak, _) = secret_files(dir.path());
    std::fs::set_permissions(&ak, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = S3Storage::new(&t).await.unwrap_err();
    assert!(matches!(e, StorageError::Auth { .. }), "{e}");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    assert!(!e.to_string().contains("testing-key"), "{e}");
}

#[tokio::test]
async fn open_builds_s3_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let (ak, sk) = secret_files(dir.path());
    let toml = format!(
        "[target.remote]\ntype = \"s3\"\nbucket = \"bkt\"\nprefix = \"/backups/host1/\"\nendpoint = \"http://127.0.0.1:1\"\npath-style = true\naccess-key-id-file = \"{}\"\nsecret-access-key-file = \"{}\"\n",
        ak.display(),
        sk.display()
    );
    let c = voltar::config::Config::parse(&toml).unwrap();
    let s = voltar::storage::open(&c.targets["remote"]).await.unwrap();
    assert_eq!(s.describe(), "s3://bkt/backups/host1");
    // Debug output never shows the credentials.
    let dbg = format!("{s:?}");
    assert!(
        !dbg.contains("testing-secret") && !dbg.contains("testing-key"),
        "{dbg}"
    );
}

// -------------------------------------------------------------------------------------------------------------
// A private S3 server, killed or frozen mid-upload (the shared one on 9333 is left alone).

/// Kill the server mid-upload: the upload fails within the deadline (no hang, no panic) and after a restart
/// nothing is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_killed_mid_upload_fails_within_the_deadline() {
    let port = free_port();
    let Some(mut server) = PrivateS3::start(port) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let deadline = Duration::from_secs(3);
    let t = s3_target(&server.endpoint(), "killed", dir.path(), deadline);
    let s = S3Storage::new(&t).await.unwrap();
    s.ensure_bucket().await.unwrap();
    let mut w = s.put_stream("k/vol", PutOptions::default()).await.unwrap();
    w.write(pattern(6 * MIB, 13)).await.unwrap();

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let start = Instant::now();
    let r = async {
        for i in 0..4 {
            w.write(pattern(5 * MIB, 20 + i)).await?;
        }
        w.finish().await
    }
    .await;
    let e = r.unwrap_err();
    let took = start.elapsed();
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("cannot reach s3 endpoint"), "{e}");
    // The deadline, plus the bounded abort attempts after it (each refused at once).
    assert!(took < deadline * 3, "took {took:?}");

    // Back up (moto keeps nothing across restarts, so this mainly proves the client recovers cleanly).
    let server = PrivateS3::start(port).unwrap();
    s.ensure_bucket().await.unwrap();
    assert!(s.get("k/vol").await.err().unwrap().is_not_found());
    assert!(s.list_incomplete().await.unwrap().is_empty());
    drop(server);
}

/// Freeze the server mid-upload (it accepts connections but never answers): the per-attempt timeout ends the
/// upload within a bound instead of hanging; after it thaws nothing is published and a sweep clears the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_frozen_mid_upload_times_out_and_publishes_nothing() {
    let port = free_port();
    let Some(server) = PrivateS3::start(port) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let deadline = Duration::from_secs(2);
    let t = s3_target(&server.endpoint(), "frozen", dir.path(), deadline);
    let s = S3Storage::new(&t).await.unwrap();
    s.ensure_bucket().await.unwrap();
    let mut w = s.put_stream("f/vol", PutOptions::default()).await.unwrap();
    w.write(pattern(6 * MIB, 30)).await.unwrap();

    server.signal(libc::SIGSTOP);
    let start = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(90), async {
        for i in 0..4 {
            w.write(pattern(5 * MIB, 31 + i)).await?;
        }
        w.finish().await
    })
    .await
    .expect("the upload hung on a frozen server");
    let took = start.elapsed();
    let e = r.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("no answer from s3 endpoint"), "{e}");
    // Part attempts time out after max(deadline, 5 MiB at 1 MiB/s) = 5 s; the abort gets the deadline again.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    server.signal(libc::SIGCONT);

    assert!(s.get("f/vol").await.err().unwrap().is_not_found());
    // The abort sent while frozen may or may not have landed; a sweep settles it.
    s.sweep_incomplete(Duration::ZERO).await.unwrap();
    assert!(s.list_incomplete().await.unwrap().is_empty());
    assert!(s.list("").await.unwrap().is_empty());
    drop(server);
}

/// Row 19 on a real server: the part size grows with the part number, so a stream larger than
/// `max_parts × base` still fits; past what the schedule can hold the upload fails and is aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_part_size_grows_to_fit_the_part_limit() {
    let Some(endpoint) = support::s3_endpoint() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut t = s3_target(
        &endpoint,
        &support::unique("grow"),
        dir.path(),
        Duration::from_secs(20),
    );
    // 4 parts doubling from 5 MiB: 5 + 10 + 20 + 40 MiB. 38 MiB is more than 4 × 5 MiB but fits.
    t.max_parts = 4;
    let s = S3Storage::new(&t).await.unwrap();
    s.ensure_bucket().await.unwrap();
    let data = pattern(38 * MIB, 40);
    let mut w = s.put_stream("g/big", PutOptions::default()).await.unwrap();
    for c in data.chunks(3 * MIB) {
        w.write(data.slice_ref(c)).await.unwrap();
    }
    w.finish().await.unwrap();
    assert!(s.get_bytes("g/big").await.unwrap() == data);

    // 2 parts hold 5 + 10 MiB: 16 MiB does not fit. The writer says so and leaves nothing behind.
    t.max_parts = 2;
    let s = S3Storage::new(&t).await.unwrap();
    let mut w = s
        .put_stream("g/too-big", PutOptions::default())
        .await
        .unwrap();
    let r = async {
        for _ in 0..16 {
            w.write(pattern(MIB, 41)).await?;
        }
        w.finish().await
    }
    .await;
    let e = r.unwrap_err();
    assert!(
        e.to_string().contains("larger than 2 parts can hold"),
        "{e}"
    );
    assert!(s.get("g/too-big").await.err().unwrap().is_not_found());
    assert!(s.list_incomplete().await.unwrap().is_empty());
}

/// A local target's check writes a probe and deletes it; a run interrupted in between (SIGTERM while checking,
/// then the future dropped) left `.voltar-check-*/probe` in the target for good. It is swept like a temp file:
/// listed by `stale_uploads` (so `prune --dry-run` shows it) and removed, with its directory, by the sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_local_checks_probe_is_swept() {
    let f = Fixture::local().await;
    let s = &f.storage;
    let key = voltar::storage::check_probe_key();
    s.put(&key, Bytes::from_static(b"voltar target check\n"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = s.stale_uploads(Duration::from_secs(1)).await.unwrap();
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_eq!(s.sweep_incomplete(Duration::from_secs(1)).await.unwrap(), 1);
    let dir = key.split('/').next().unwrap();
    let root = f.root.clone().expect("a local fixture has a root");
    assert!(!root.join(&key).exists() && !root.join(dir).exists());
}
