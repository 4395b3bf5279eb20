//! `prune` against real targets: backups are written as real manifests and objects through the `Storage` trait,
//! pruned, and the target is listed again to see what is really left. Every case is an `async fn(&dyn Storage)`
//! run unchanged against `LocalStorage` over a temp dir and the S3 backend on the S3 test server (a fresh bucket
//! per case); the `on_targets!` macro instantiates the cases per backend.
//!
//! Then end to end through the `voltar` binary and the real Docker Engine, on a local and an S3 target:
//! `voltar prune --keep-last N [--dry-run]`, and a job whose retention policy prunes after each backup but skips
//! (and says so) when the new backup is empty.
//!
//! Acceptance rows: 9 (never the newest, never foreign objects, future-dated kept, dry-run first), 10 (empty
//! backup does not trigger pruning).

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Duration, DurationRound, Utc};
use sha2::{Digest, Sha256};

use voltar::catalog::{
    self, manifest_key, object_key, object_name, BackupId, Counts, Manifest, SourceKind,
    SourceRecord, FORMAT_VERSION, TAG_PRE_RESTORE,
};
use voltar::config::{Policy, Retention};
use voltar::prune::{self, AfterBackup, PruneOptions};
use voltar::retention::Action;
use voltar::storage::{ByteStream, ObjectMeta, ObjectWriter, PutOptions, Storage, StorageError};

// ---------------------------------------------------------------------------------------------------------------
// Building a target's content.

/// Now, to the second (backup ids have second precision).
fn now() -> DateTime<Utc> {
    Utc::now().duration_trunc(Duration::seconds(1)).unwrap()
}

fn id_at(at: DateTime<Utc>, n: u16) -> BackupId {
    format!("{}-{n:04x}", at.format("%Y%m%dT%H%M%SZ"))
        .parse()
        .unwrap()
}

/// Write a well-formed backup (two archives, then the manifest) and return its id.
async fn write_backup(
    s: &dyn Storage,
    at: DateTime<Utc>,
    n: u16,
    job: &str,
    tags: &[&str],
    content_bytes: u64,
) -> BackupId {
    let id = id_at(at, n);
    let mut sources = Vec::new();
    for name in ["pgdata", "media"] {
        let object = object_name(name, false);
        let data = Bytes::from(format!("archive of {name} in {id}").repeat(20));
        let mut w = s
            .put_stream(&object_key(&id, &object), PutOptions::default())
            .await
            .unwrap();
        w.write(data.clone()).await.unwrap();
        w.finish().await.unwrap();
        sources.push(SourceRecord {
            name: name.into(),
            kind: SourceKind::Volume,
            path: format!("/var/lib/docker/volumes/{name}/_data"),
            driver: Some("local".into()),
            driver_opts: Default::default(),
            labels: Default::default(),
            object,
            counts: Counts {
                entries: 3,
                files: 2,
                dirs: 1,
                bytes: content_bytes / 2,
                ..Counts::default()
            },
            stored_bytes: data.len() as u64,
            sha256: hex::encode(Sha256::digest(&data)),
            containers: vec![],
            services: vec![],
            read_ms: 1,
            warnings: vec![],
            not_archived: vec![],
            not_archived_count: 0,
            hooks: vec![],
            dump: None,
            read_via: None,
        });
    }
    let m = Manifest {
        format: FORMAT_VERSION,
        tool: voltar::TOOL.into(),
        id: id.clone(),
        job: job.into(),
        host: "test-host".into(),
        started_at: at,
        finished_at: at + Duration::seconds(30),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        sources,
        failed: vec![],
        encryption: None,
        seal: None,
    };
    s.put(&manifest_key(&id), Bytes::from(m.to_json()))
        .await
        .unwrap();
    id
}

/// Objects that are not ours: never to be touched, whatever the policy and the clock.
const FOREIGN: &[&str] = &[
    "notes.txt",
    "other-tool/x",
    "other-tool/20200101T000000Z-abcd/manifest.json",
    "20200101T000000Z-abcd", // an id-like file, not a directory
    "20200101T000000Z-zzzz/archive.tar.zst", // not an id (bad hex)
    "2020-01-01/manifest.json",
];

async fn write_foreign(s: &dyn Storage) {
    for k in FOREIGN {
        s.put(k, Bytes::from_static(b"not voltar's")).await.unwrap();
    }
}

async fn keys(s: &dyn Storage) -> Vec<String> {
    s.list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

async fn assert_foreign_intact(s: &dyn Storage) {
    let k = keys(s).await;
    for f in FOREIGN {
        assert!(
            k.iter().any(|x| x == f),
            "foreign object {f} was deleted; left: {k:?}"
        );
    }
}

async fn listed_ids(s: &dyn Storage) -> Vec<BackupId> {
    catalog::list(s)
        .await
        .unwrap()
        .backups
        .into_iter()
        .map(|m| m.id)
        .collect()
}

fn settings(policy: Policy) -> Retention {
    Retention {
        policy,
        timezone: Some(chrono_tz::UTC),
        ..Retention::default()
    }
}

fn keep_last(n: u32) -> Policy {
    Policy {
        keep_last: Some(n),
        ..Policy::default()
    }
}

fn opts(now: DateTime<Utc>) -> PruneOptions {
    PruneOptions {
        dry_run: false,
        now,
        job: None,
    }
}

/// Six daily backups ending a day before `now`, oldest first.
async fn six_days(s: &dyn Storage, now: DateTime<Utc>) -> Vec<BackupId> {
    let mut ids = Vec::new();
    for k in (1..=6).rev() {
        ids.push(write_backup(s, now - Duration::days(k), k as u16, "nightly", &[], 1000).await);
    }
    ids
}

// ---------------------------------------------------------------------------------------------------------------
// Cases.

async fn keeps_per_policy_and_deletes_the_rest(s: &dyn Storage) {
    let now = now();
    write_foreign(s).await;
    let ids = six_days(s, now).await;

    let r = prune::prune(s, &settings(keep_last(2)), &opts(now))
        .await
        .unwrap();

    assert!(r.is_ok(), "{:?}", r.errors);
    assert_eq!(r.decisions.len(), 6);
    let mut deleted = r.deleted.clone();
    deleted.sort();
    assert_eq!(deleted, ids[..4].to_vec());
    assert_eq!(listed_ids(s).await, ids[4..].to_vec());
    let left = keys(s).await;
    for id in &ids[..4] {
        assert!(
            !left.iter().any(|k| k.starts_with(&format!("{id}/"))),
            "objects of deleted backup {id} are left: {left:?}"
        );
    }
    for id in &ids[4..] {
        let n = left
            .iter()
            .filter(|k| k.starts_with(&format!("{id}/")))
            .count();
        assert_eq!(n, 3, "kept backup {id} lost objects: {left:?}");
    }
    assert_foreign_intact(s).await;
    let d = r.decisions.iter().find(|d| d.id == ids[5]).unwrap();
    assert_eq!(d.reasons, vec!["last 1/2", "newest"]);
    // Idempotent: a second prune deletes nothing more.
    let r = prune::prune(s, &settings(keep_last(2)), &opts(now))
        .await
        .unwrap();
    assert!(r.deleted.is_empty() && r.is_ok(), "{r:?}");
    assert_eq!(listed_ids(s).await, ids[4..].to_vec());
}

async fn dry_run_deletes_nothing(s: &dyn Storage) {
    let now = now();
    write_foreign(s).await;
    six_days(s, now).await;
    // An incomplete backup that is past its grace period at the prune's clock.
    let orphan = id_at(now - Duration::days(20), 0x0f);
    s.put(
        &object_key(&orphan, "pgdata.tar.zst"),
        Bytes::from_static(b"x"),
    )
    .await
    .unwrap();
    let before = keys(s).await;

    let mut o = opts(now + Duration::days(2));
    o.dry_run = true;
    let r = prune::prune(s, &settings(keep_last(1)), &o).await.unwrap();

    assert!(r.dry_run && r.is_ok());
    assert_eq!(
        r.decisions
            .iter()
            .filter(|d| d.action == Action::Delete)
            .count(),
        5
    );
    assert_eq!(r.incomplete.len(), 1);
    assert_eq!(r.incomplete[0].action, Action::Delete);
    assert!(r.deleted.is_empty() && r.incomplete_removed.is_empty());
    assert_eq!(keys(s).await, before);
}

/// State after a prune was killed between deleting a manifest and its archives (issue 5).
async fn killed_midway_is_repaired_by_the_next_prune(s: &dyn Storage) {
    let t0 = now();
    write_foreign(s).await;
    let ids = six_days(s, t0).await;
    // The killed prune had deleted the oldest backup's manifest and one of its archives.
    s.delete(&[manifest_key(&ids[0]), object_key(&ids[0], "media.tar.zst")])
        .await
        .unwrap();
    assert_eq!(listed_ids(s).await, ids[1..].to_vec());
    let policy = settings(keep_last(3));

    // Next prune, right away: the orphan was written moments ago, so it is within the grace period (it could be
    // a backup still being written): reported, kept. The regular plan goes ahead.
    let r = prune::prune(s, &policy, &opts(t0)).await.unwrap();
    assert!(r.is_ok(), "{:?}", r.errors);
    assert_eq!(r.incomplete.len(), 1);
    assert_eq!(r.incomplete[0].id, ids[0]);
    assert_eq!(
        r.incomplete[0].action,
        Action::Keep,
        "{:?}",
        r.incomplete[0]
    );
    assert!(r.incomplete_removed.is_empty());
    assert!(keys(s)
        .await
        .contains(&object_key(&ids[0], "pgdata.tar.zst")));
    assert_eq!(listed_ids(s).await, ids[3..].to_vec());

    // A prune once the grace period (1 day) has passed removes the orphan.
    let later = t0 + Duration::days(1) + Duration::minutes(10);
    let r = prune::prune(s, &policy, &opts(later)).await.unwrap();
    assert!(r.is_ok(), "{:?}", r.errors);
    assert_eq!(r.incomplete_removed, vec![ids[0].clone()]);
    assert!(r.deleted.is_empty());
    let left = keys(s).await;
    assert!(
        !left.iter().any(|k| k.starts_with(&format!("{}/", ids[0]))),
        "orphan left: {left:?}"
    );
    assert_eq!(listed_ids(s).await, ids[3..].to_vec());
    assert!(catalog::list(s).await.unwrap().incomplete.is_empty());
    assert_foreign_intact(s).await;
}

async fn foreign_objects_are_never_deleted(s: &dyn Storage) {
    let now = now();
    write_foreign(s).await;
    six_days(s, now).await;
    // Aggressive policy, a clock far past every grace period.
    let r = prune::prune(s, &settings(keep_last(1)), &opts(now + Duration::days(400)))
        .await
        .unwrap();
    assert!(r.is_ok(), "{:?}", r.errors);
    assert_eq!(r.deleted.len(), 5);
    assert_foreign_intact(s).await;
    let mut left = keys(s).await;
    left.retain(|k| !FOREIGN.contains(&k.as_str()));
    assert_eq!(
        left.len(),
        3,
        "only the newest backup's objects remain: {left:?}"
    );
}

async fn a_future_dated_backup_survives(s: &dyn Storage) {
    let now = now();
    let ids = six_days(s, now).await;
    let future = write_backup(s, now + Duration::days(30), 0xff, "nightly", &[], 1000).await;

    let r = prune::prune(s, &settings(keep_last(1)), &opts(now))
        .await
        .unwrap();

    assert!(r.is_ok(), "{:?}", r.errors);
    let d = r.decisions.iter().find(|d| d.id == future).unwrap();
    assert_eq!(d.action, Action::Keep);
    assert!(
        d.reasons.iter().any(|x| x.contains("future-dated")),
        "{d:?}"
    );
    assert!(
        r.notes.iter().any(|n| n.contains(future.as_str())),
        "{:?}",
        r.notes
    );
    // It did not take the keep-last slot: the newest real backup is kept too.
    assert_eq!(listed_ids(s).await, vec![ids[5].clone(), future]);
}

async fn unreadable_manifests_are_reported_and_kept(s: &dyn Storage) {
    let now = now();
    let ids = six_days(s, now).await;
    s.put(&manifest_key(&ids[0]), Bytes::from_static(b"{ not json"))
        .await
        .unwrap();
    let r = prune::prune(s, &settings(keep_last(1)), &opts(now + Duration::days(30)))
        .await
        .unwrap();
    assert!(r.is_ok(), "{:?}", r.errors);
    assert_eq!(r.unreadable.len(), 1);
    assert_eq!(r.unreadable[0].id, ids[0]);
    assert_eq!(r.deleted.len(), 4);
    let left = keys(s).await;
    assert_eq!(
        left.iter()
            .filter(|k| k.starts_with(&format!("{}/", ids[0])))
            .count(),
        3,
        "{left:?}"
    );
}

async fn jobs_are_judged_separately(s: &dyn Storage) {
    let now = now();
    let a = six_days(s, now).await; // job "nightly"
    let mut b = Vec::new();
    for k in 1..=3u16 {
        b.push(
            write_backup(
                s,
                now - Duration::days(10 + i64::from(k)),
                0x100 + k,
                "weekly",
                &[],
                500,
            )
            .await,
        );
    }
    // Only the nightly job: the (older) weekly backups are not touched, and nightly keeps its own newest.
    let mut o = opts(now);
    o.job = Some("nightly".into());
    let r = prune::prune(s, &settings(keep_last(1)), &o).await.unwrap();
    assert!(r.is_ok(), "{:?}", r.errors);
    assert_eq!(r.other_jobs.len(), 3);
    let mut want: Vec<BackupId> = b.clone();
    want.push(a[5].clone());
    want.sort();
    assert_eq!(listed_ids(s).await, want);
    // All jobs: each keeps its own newest.
    let r = prune::prune(s, &settings(keep_last(1)), &opts(now))
        .await
        .unwrap();
    assert!(r.is_ok(), "{:?}", r.errors);
    let mut want = vec![b[0].clone(), a[5].clone()];
    want.sort();
    assert_eq!(listed_ids(s).await, want);
}

async fn pre_restore_backups_follow_their_own_rule(s: &dyn Storage) {
    let now = now();
    let ids = six_days(s, now).await;
    let mut pre = Vec::new();
    for k in 0..5u16 {
        let at = now - Duration::days(40) + Duration::days(i64::from(k));
        pre.push(write_backup(s, at, 0x200 + k, "nightly", &[TAG_PRE_RESTORE], 1000).await);
    }
    // Defaults: the last 3 pre-restore backups (all older than 7 days here) are kept.
    let r = prune::prune(s, &settings(keep_last(2)), &opts(now))
        .await
        .unwrap();
    assert!(r.is_ok(), "{:?}", r.errors);
    let mut want: Vec<BackupId> = pre[2..].to_vec();
    want.extend_from_slice(&ids[4..]);
    want.sort();
    assert_eq!(listed_ids(s).await, want);
}

async fn pruning_after_a_backup_is_skipped_when_it_shrank(s: &dyn Storage) {
    let now = now();
    six_days(s, now).await; // 1000 bytes each
    let policy = settings(keep_last(1)); // max-shrink 0.5 by default

    let empty = write_backup(s, now, 0x301, "nightly", &[], 0).await;
    let m = catalog::read_manifest(s, &empty).await.unwrap();
    let out = prune::prune_after_backup(s, &policy, &m, now)
        .await
        .unwrap();
    match &out {
        AfterBackup::Skipped { reason } => assert!(reason.contains("empty"), "{reason}"),
        other => panic!("pruned after an empty backup: {other:?}"),
    }
    // Compared with the last backup that had content (1000 bytes), not with the empty one: a 70% drop.
    let small = write_backup(s, now + Duration::seconds(10), 0x302, "nightly", &[], 300).await;
    let m = catalog::read_manifest(s, &small).await.unwrap();
    let out = prune::prune_after_backup(s, &policy, &m, now + Duration::seconds(20))
        .await
        .unwrap();
    match &out {
        AfterBackup::Skipped { reason } => assert!(reason.contains("70%"), "{reason}"),
        other => panic!("pruned after a 70% shrink: {other:?}"),
    }
    assert_eq!(listed_ids(s).await.len(), 8, "nothing may be deleted");
    let json = serde_json::to_value(&out).unwrap();
    assert_eq!(json["status"], "skipped");

    // The next one is close to its predecessor: pruning runs.
    let next = write_backup(s, now + Duration::seconds(30), 0x303, "nightly", &[], 290).await;
    let m = catalog::read_manifest(s, &next).await.unwrap();
    let out = prune::prune_after_backup(s, &policy, &m, now + Duration::seconds(40))
        .await
        .unwrap();
    match &out {
        AfterBackup::Pruned(r) => assert!(r.is_ok() && r.deleted.len() == 8, "{r:?}"),
        other => panic!("not pruned: {other:?}"),
    }
    assert_eq!(listed_ids(s).await, vec![next]);
}
/// Fault injection over a real store: every delete of an archive fails (as if the process died right after the
/// manifest delete). Manifests are deleted normally.
#[derive(Debug)]
struct ArchiveDeletesFail<'a>(&'a dyn Storage);

#[async_trait]
impl Storage for ArchiveDeletesFail<'_> {
    fn describe(&self) -> String {
        self.0.describe()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.0.put(key, data).await
    }
    async fn put_stream(
        &self,
        key: &str,
        opts: PutOptions,
    ) -> Result<Box<dyn ObjectWriter>, StorageError> {
        self.0.put_stream(key, opts).await
    }
    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        self.0.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.0.list(prefix).await
    }
    async fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        if keys.iter().any(|k| !k.ends_with("/manifest.json")) {
            return Err(StorageError::Transient {
                target: self.describe(),
                message: "injected failure".into(),
            });
        }
        self.0.delete(keys).await
    }
    async fn sweep_incomplete(
        &self,
        older_than: std::time::Duration,
    ) -> Result<usize, StorageError> {
        self.0.sweep_incomplete(older_than).await
    }
    async fn stale_uploads(
        &self,
        older_than: std::time::Duration,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        self.0.stale_uploads(older_than).await
    }
}

/// The manifest goes first: when deleting the archives fails, the backup is already invisible, the failure is
/// reported per backup, the other backups are still processed, and the next prune removes the orphans.
async fn manifest_goes_first_and_failures_do_not_stop_the_rest(s: &dyn Storage) {
    let now = now();
    write_foreign(s).await;
    let ids = six_days(s, now).await;
    let faulty = ArchiveDeletesFail(s);

    let r = prune::prune(&faulty, &settings(keep_last(2)), &opts(now))
        .await
        .unwrap();

    assert_eq!(r.errors.len(), 4, "{:?}", r.errors);
    assert!(
        r.errors.iter().all(|e| e.step == "delete archives"),
        "{:?}",
        r.errors
    );
    assert!(r.deleted.is_empty());
    assert_eq!(listed_ids(s).await, ids[4..].to_vec());
    let listing = catalog::list(s).await.unwrap();
    let orphans: Vec<BackupId> = listing
        .incomplete
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(orphans, ids[..4].to_vec());

    let r = prune::prune(s, &settings(keep_last(2)), &opts(now + Duration::days(2)))
        .await
        .unwrap();
    assert!(r.is_ok(), "{:?}", r.errors);
    assert_eq!(r.incomplete_removed, ids[..4].to_vec());
    let mut left = keys(s).await;
    left.retain(|k| !FOREIGN.contains(&k.as_str()));
    assert_eq!(left.len(), 6, "two backups of three objects each: {left:?}");
    assert_foreign_intact(s).await;
}

// ---------------------------------------------------------------------------------------------------------------
// Backends.

/// A real `LocalStorage` over a fresh temp dir.
fn local_target() -> (tempfile::TempDir, voltar::storage::local::LocalStorage) {
    let dir = tempfile::tempdir().unwrap();
    let s = voltar::storage::local::LocalStorage::new(dir.path().join("backups"));
    (dir, s)
}

/// The S3 backend on the S3 test server, a fresh bucket (None: no server, and not under CI).
async fn s3_target() -> Option<(tempfile::TempDir, voltar::storage::s3::S3Storage)> {
    use std::os::unix::fs::PermissionsExt;
    let endpoint = crate::support::s3_endpoint()?;
    let dir = tempfile::tempdir().unwrap();
    let (ak, sk) = (dir.path().join("ak"), dir.path().join("sk"));
    for (p, v) in [(&ak, "prune-key"), (&sk, "prune-secret")] {
        std::fs::write(p, v).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut t = voltar::config::S3Target::new(crate::support::unique("prune"), "host/a".into());
    t.endpoint = Some(endpoint);
    t.region = Some("us-east-1".into());
    t.path_style = true;
    t.access_key_id_file = Some(ak);
    t.secret_access_key_file = Some(sk);
    t.retry_deadline = std::time::Duration::from_secs(20);
    // A small list page, so listing and deleting go through several pages.
    let s = voltar::storage::s3::S3Storage::new(&t)
        .await
        .unwrap()
        .with_list_page_size(7);
    s.ensure_bucket().await.unwrap();
    Some((dir, s))
}

/// Issue 8: the leftover of an interrupted upload (a temp file or an unfinished multipart upload, under an id
/// that has nothing else) is listed by a dry run, which removes nothing, then removed by prune and listed in
/// its report.
async fn leftover_uploads_are_listed_first_then_removed(s: &dyn Storage) {
    let now = now();
    let kept = write_backup(s, now - Duration::days(1), 1, "nightly", &[], 1000).await;
    let key = "20200101T000000Z-abcd/pgdata.tar.zst";
    let mut w = s.put_stream(key, PutOptions::default()).await.unwrap();
    // More than one S3 part (8 MiB by default), so the multipart upload exists on the server.
    w.write(Bytes::from(vec![7u8; 9 << 20])).await.unwrap();
    std::mem::forget(w); // a killed process runs no destructor
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut settings = settings(keep_last(5));
    settings.incomplete_grace = std::time::Duration::from_secs(1);
    let mut o = opts(now);
    o.dry_run = true;

    let dry = prune::prune(s, &settings, &o).await.unwrap();
    assert_eq!(dry.leftover_uploads.len(), 1, "{dry:?}");
    assert!(
        dry.leftover_uploads[0]
            .key
            .starts_with("20200101T000000Z-abcd/"),
        "{dry:?}"
    );
    assert_eq!(dry.swept_uploads, 0);
    let text = voltar::cli::prune::render(&dry);
    assert!(text.contains("would be removed"), "{text}");
    assert_eq!(
        s.stale_uploads(std::time::Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1,
        "a dry run removes nothing"
    );

    o.dry_run = false;
    let r = prune::prune(s, &settings, &o).await.unwrap();
    assert!(r.is_ok(), "{:?}", r.errors);
    assert_eq!(r.leftover_uploads, dry.leftover_uploads);
    assert_eq!(r.swept_uploads, 1);
    assert!(voltar::cli::prune::render(&r).contains("1 leftover upload(s) removed"));
    assert!(s
        .stale_uploads(std::time::Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        catalog::list(s)
            .await
            .unwrap()
            .backups
            .iter()
            .map(|m| m.id.clone())
            .collect::<Vec<_>>(),
        vec![kept]
    );
}

macro_rules! on_targets {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $case() {
                    let (_dir, s) = super::local_target();
                    super::$case(&s).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some((_dir, s)) = super::s3_target().await else { return };
                    super::$case(&s).await;
                }
            )*
        }
    };
}

on_targets!(
    keeps_per_policy_and_deletes_the_rest,
    dry_run_deletes_nothing,
    killed_midway_is_repaired_by_the_next_prune,
    foreign_objects_are_never_deleted,
    a_future_dated_backup_survives,
    unreadable_manifests_are_reported_and_kept,
    jobs_are_judged_separately,
    pre_restore_backups_follow_their_own_rule,
    pruning_after_a_backup_is_skipped_when_it_shrank,
    manifest_goes_first_and_failures_do_not_stop_the_rest,
    leftover_uploads_are_listed_first_then_removed,
);

// ---------------------------------------------------------------------------------------------------------------
// End to end: the `voltar` binary, the real engine, a local and an S3 target.

mod e2e {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    use crate::support::{self, Cleanup, Out};

    /// A test's private world: state dir and HOME; a target given as `--target` (a directory, or s3://… with
    /// the standard AWS environment pointing at the S3 test server).
    struct World {
        dir: tempfile::TempDir,
        target: String,
        /// The S3 endpoint, when the target is S3.
        s3: Option<String>,
    }

    impl World {
        fn local() -> World {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("backups").display().to_string();
            World {
                dir,
                target,
                s3: None,
            }
        }

        fn s3() -> Option<World> {
            let endpoint = support::s3_endpoint()?;
            let bucket = support::unique("prune-e2e");
            let w = World {
                dir: tempfile::tempdir().unwrap(),
                target: format!("s3://{bucket}/host1"),
                s3: Some(endpoint.clone()),
            };
            let mk = Command::new("aws")
                .args([
                    "--endpoint-url",
                    &endpoint,
                    "s3api",
                    "create-bucket",
                    "--bucket",
                    &bucket,
                ])
                .envs(Self::aws_vars(&endpoint))
                .output();
            match mk {
                Ok(o) if o.status.success() => {}
                other => {
                    // Without the aws CLI: create it through the library.
                    let _ = other;
                    let rt = tokio::runtime::Runtime::new().unwrap();
                    let d = w.path("lib-keys");
                    std::fs::create_dir_all(&d).unwrap();
                    for f in ["ak", "sk"] {
                        std::fs::write(d.join(f), "x").unwrap();
                        std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o600))
                            .unwrap();
                    }
                    let mut t = voltar::config::S3Target::new(bucket, String::new());
                    t.endpoint = Some(endpoint);
                    t.region = Some("us-east-1".into());
                    t.path_style = true;
                    t.access_key_id_file = Some(d.join("ak"));
                    t.secret_access_key_file = Some(d.join("sk"));
                    rt.block_on(async {
                        voltar::storage::s3::S3Storage::new(&t)
                            .await
                            .unwrap()
                            .ensure_bucket()
                            .await
                            .unwrap()
                    });
                }
            }
            Some(w)
        }

        fn aws_vars(endpoint: &str) -> Vec<(&'static str, String)> {
            vec![
                ("AWS_ENDPOINT_URL", endpoint.to_string()),
                ("AWS_ACCESS_KEY_ID", "prune-key".into()),
                ("AWS_SECRET_ACCESS_KEY", "prune-secret".into()),
                ("AWS_REGION", "us-east-1".into()),
                ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ]
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn run(&self, args: &[&str]) -> Out {
            let mut c = Command::new(assert_cmd::cargo::cargo_bin("voltar"));
            for v in [
                "VOLTAR_CONFIG",
                "VOLTAR_LOG",
                "AWS_PROFILE",
                "AWS_ENDPOINT_URL_S3",
            ] {
                c.env_remove(v);
            }
            c.env("VOLTAR_STATE_DIR", self.path("state"))
                .env("HOME", self.path("home"))
                .env("AWS_CONFIG_FILE", self.path("no-aws-config"))
                .env("AWS_SHARED_CREDENTIALS_FILE", self.path("no-aws-creds"))
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .stdin(Stdio::null());
            if let Some(ep) = &self.s3 {
                c.envs(Self::aws_vars(ep));
            }
            let o = c.args(args).output().expect("run voltar");
            Out::from(o)
        }

        /// Backup ids in the target, oldest first.
        fn ids(&self, extra: &[&str]) -> Vec<String> {
            let mut args = vec!["--json", "list"];
            args.extend_from_slice(extra);
            let o = self.run(&args);
            assert_eq!(o.code, 0, "{o:?}");
            let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
            v["backups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["id"].as_str().unwrap().to_string())
                .collect()
        }

        /// One `voltar backup`, returning the new backup's id.
        fn backup(&self, args: &[&str]) -> (String, Out) {
            let mut a = vec!["--json", "backup"];
            a.extend_from_slice(args);
            let o = self.run(&a);
            assert!(o.code == 0, "{o:?}");
            let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
            (v["id"].as_str().unwrap().to_string(), o)
        }
    }

    fn fill(root: &Path, n: usize) {
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(
            root.join("d/file.txt"),
            format!("version {n}\n").repeat(200),
        )
        .unwrap();
    }

    /// Three backups through the binary; `prune --keep-last 2 --dry-run` lists keep/delete with reasons and
    /// deletes nothing; without `--dry-run` the oldest goes and `list` shows the two newest.
    fn prune_through_the_binary(w: &World) {
        let mut c = Cleanup::default();
        let vol = c.volume("prune-e2e");
        let src = support::mountpoint(&vol);
        let mut made = Vec::new();
        for n in 0..3 {
            fill(&src, n);
            made.push(w.backup(&["--only", &vol, "-t", &w.target]).0);
        }
        let t = ["-t", w.target.as_str()];
        assert_eq!(w.ids(&t), made, "list shows the three backups in order");

        let d = w.run(&["prune", "--keep-last", "2", "--dry-run", "-t", &w.target]);
        assert_eq!(d.code, 0, "{d:?}");
        assert!(d.stdout.starts_with("dry-run: prune"), "{d:?}");
        let line = |id: &str| {
            d.stdout
                .lines()
                .find(|l| l.starts_with(id))
                .unwrap_or_else(|| panic!("no line for {id}: {d:?}"))
                .to_string()
        };
        let oldest = line(&made[0]);
        assert!(
            oldest.contains("would delete") && oldest.contains("matches no keep rule"),
            "{d:?}"
        );
        let newest = line(&made[2]);
        assert!(
            newest.contains("keep") && newest.contains("last 1/2"),
            "{d:?}"
        );
        assert!(newest.contains("newest"), "{d:?}");
        assert!(
            line(&made[1]).contains("keep") && line(&made[1]).contains("last 2/2"),
            "{d:?}"
        );
        assert!(d.stdout.contains("1 backup(s) would be deleted"), "{d:?}");
        assert_eq!(w.ids(&t), made, "a dry run deletes nothing");

        // --json of the dry run carries the same decisions with reasons.
        let j = w.run(&[
            "--json",
            "prune",
            "--keep-last",
            "2",
            "--dry-run",
            "-t",
            &w.target,
        ]);
        assert_eq!(j.code, 0, "{j:?}");
        let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
        let decisions = v[0]["decisions"].as_array().unwrap();
        assert_eq!(decisions.len(), 3, "{j:?}");
        // `reasons` are the rules that keep a backup: every kept one has some, the deleted one none.
        for d in decisions {
            let kept = d["action"] == "keep";
            assert_eq!(kept, !d["reasons"].as_array().unwrap().is_empty(), "{j:?}");
            assert_eq!(kept, d["id"] != made[0].as_str(), "{j:?}");
        }

        let p = w.run(&["prune", "--keep-last", "2", "-t", &w.target]);
        assert_eq!(p.code, 0, "{p:?}");
        assert!(p.stdout.contains("1 backup(s) deleted"), "{p:?}");
        assert_eq!(w.ids(&t), made[1..].to_vec());
        // The survivors are intact.
        let v = w.run(&["verify", "--all", "-t", &w.target]);
        assert_eq!(v.code, 0, "{v:?}");
    }

    /// Issue 8: a directory holding only the temp file of an interrupted upload is invisible to `list`, and prune
    /// used to remove it (file and directory) without a word, also on `--dry-run`. Whatever prune removes is listed
    /// first by `--dry-run`, then in the report and `--json`; a young temp file (a run in progress) is left alone.
    #[test]
    fn issue8_dry_run_lists_the_leftover_uploads_that_prune_removes() {
        let w = World::local();
        let root = PathBuf::from(&w.target);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let kept = rt.block_on(async {
            let s = voltar::storage::local::LocalStorage::new(root.clone());
            super::write_backup(
                &s,
                super::now() - chrono::Duration::days(1),
                1,
                "default",
                &[],
                1000,
            )
            .await
        });
        let stale_dir = root.join("20200101T000000Z-abcd");
        let stale = stale_dir.join(".voltar-tmp-0123456789abcdef-pg.tar.zst");
        let young_dir = root.join("20300101T000000Z-beef");
        let young = young_dir.join(".voltar-tmp-fedcba9876543210-pg.tar.zst");
        for (d, f) in [(&stale_dir, &stale), (&young_dir, &young)] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(f, vec![7u8; 4096]).unwrap();
        }
        let old = filetime::FileTime::from_system_time(
            std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86400),
        );
        filetime::set_file_mtime(&stale, old).unwrap();
        let key = "20200101T000000Z-abcd/.voltar-tmp-0123456789abcdef-pg.tar.zst";
        let young_key = "20300101T000000Z-beef/.voltar-tmp-fedcba9876543210-pg.tar.zst";

        let d = w.run(&["prune", "--keep-last", "1", "--dry-run", "-t", &w.target]);
        assert_eq!(d.code, 0, "{d:?}");
        let line = d
            .stdout
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("the dry run does not list {key}: {d:?}"));
        assert!(line.contains("would"), "{d:?}");
        assert!(
            !d.stdout.contains(young_key),
            "a young upload is no leftover: {d:?}"
        );
        assert!(stale.exists(), "a dry run removes nothing");

        let j = w.run(&[
            "--json",
            "prune",
            "--keep-last",
            "1",
            "--dry-run",
            "-t",
            &w.target,
        ]);
        assert_eq!(j.code, 0, "{j:?}");
        let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
        assert!(
            v[0].to_string().contains(key),
            "--json of the dry run lists it: {j:?}"
        );

        let p = w.run(&["prune", "--keep-last", "1", "-t", &w.target]);
        assert_eq!(p.code, 0, "{p:?}");
        let line = p
            .stdout
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("the report does not list {key}: {p:?}"));
        assert!(line.contains("removed"), "{p:?}");
        assert!(
            !stale_dir.exists(),
            "the leftover and its directory are gone"
        );
        assert!(young.exists(), "a run in progress keeps its temp file");
        assert_eq!(w.ids(&["-t", &w.target]), vec![kept.to_string()]);
    }

    #[test]
    fn prune_keep_last_on_a_local_target() {
        crate::require_docker!();
        prune_through_the_binary(&World::local());
    }

    #[test]
    fn prune_keep_last_on_an_s3_target() {
        crate::require_docker!();
        let Some(w) = World::s3() else { return };
        prune_through_the_binary(&w);
    }

    /// Issue 8 (critical), row 22: a full backup of A and B, then two `--only A` runs, under `keep-last = 1`.
    /// Pruning after each run judged whole backups and deleted the full one: B had no backup left and
    /// `restore latest --source B` failed. Now B's newest backup stays, `latest --source B` resolves to it for
    /// restore, show and verify, and the dry run says which source keeps it.
    fn partial_backups_keep_every_source_restorable(w: &World) {
        let mut c = Cleanup::default();
        let a = c.volume("part-a");
        let b = c.volume("part-b");
        fill(&support::mountpoint(&a), 0);
        fill(&support::mountpoint(&b), 100);
        std::fs::write(support::mountpoint(&b).join("only-in-b"), "b data\n").unwrap();
        let cfg = w.path("voltar.toml");
        std::fs::write(
            &cfg,
            format!("[selection]\ninclude = [\"{a}\", \"{b}\"]\n\n[retention]\nkeep-last = 1\n"),
        )
        .unwrap();
        let cfg = cfg.to_str().unwrap();
        let t = ["-c", cfg, "-t", w.target.as_str()];
        let with_t = |args: &[&str]| -> Vec<String> {
            args.iter().chain(t.iter()).map(|s| s.to_string()).collect()
        };
        let run = |args: Vec<String>| w.run(&args.iter().map(String::as_str).collect::<Vec<_>>());

        let (full, _) = w.backup(&with_t(&[]).iter().map(String::as_str).collect::<Vec<_>>());
        let mut partial = Vec::new();
        for n in 1..=2 {
            fill(&support::mountpoint(&a), n);
            let args = with_t(&["--only", &a]);
            let (id, o) = w.backup(&args.iter().map(String::as_str).collect::<Vec<_>>());
            let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
            assert!(
                v["targets"][0]["prune"].is_object(),
                "pruned after run {n}: {o:?}"
            );
            partial.push(id);
        }
        assert_eq!(
            w.ids(&t),
            vec![full.clone(), partial[1].clone()],
            "the full backup is B's newest and stays; the older partial one goes"
        );

        // latest --source B is the full backup, for restore, show and verify.
        let out = w.path("restored-b");
        let r = run(with_t(&[
            "restore",
            "latest",
            "--source",
            &b,
            "--to-dir",
            out.to_str().unwrap(),
        ]));
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(
            std::fs::read_to_string(out.join("only-in-b")).unwrap(),
            "b data\n"
        );
        let s = run(with_t(&["--json", "show", "latest", "--source", &b]));
        assert_eq!(s.code, 0, "{s:?}");
        let v: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
        assert_eq!(v["id"], full.as_str(), "{s:?}");
        let s = run(with_t(&["--json", "show", "latest"]));
        let v: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
        assert_eq!(
            v["id"],
            partial[1].as_str(),
            "plain latest is the newest: {s:?}"
        );
        let v = run(with_t(&["verify", "latest", "--source", &b]));
        assert_eq!(v.code, 0, "{v:?}");
        assert!(
            v.all().contains(&full),
            "verify checked the full backup: {v:?}"
        );

        // The dry run says which source keeps what.
        let d = run(with_t(&["prune", "--keep-last", "1", "--dry-run"]));
        assert_eq!(d.code, 0, "{d:?}");
        let line = d
            .stdout
            .lines()
            .find(|l| l.starts_with(&full))
            .unwrap_or("");
        assert!(line.contains(&format!("{b}: last 1/1")), "{d:?}");
        assert!(!d.stdout.contains("would delete"), "{d:?}");
    }

    #[test]
    fn issue8_partial_backups_keep_every_source_restorable_local() {
        crate::require_docker!();
        partial_backups_keep_every_source_restorable(&World::local());
    }

    #[test]
    fn issue8_partial_backups_keep_every_source_restorable_s3() {
        crate::require_docker!();
        let Some(w) = World::s3() else { return };
        partial_backups_keep_every_source_restorable(&w);
    }

    /// A job with `[retention] keep-last = 2` and a local + an S3 target: every backup prunes both targets down
    /// to two; a backup of an emptied volume is committed but does not prune, and the summary says why.
    #[test]
    fn a_job_with_retention_prunes_after_each_backup_but_not_after_an_empty_one() {
        crate::require_docker!();
        let Some(w) = World::s3() else { return };
        let mut c = Cleanup::default();
        let vol = c.volume("autoprune");
        let src = support::mountpoint(&vol);
        let local = w.path("local-backups");
        let bucket_prefix = w.target.trim_start_matches("s3://").to_string();
        let (bucket, prefix) = bucket_prefix.split_once('/').unwrap();
        let cfg = w.path("voltar.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"
[selection]
include = ["{vol}"]

[retention]
keep-last = 2

[target.disk]
type = "local"
path = "{local}"

[target.offsite]
type = "s3"
bucket = "{bucket}"
prefix = "{prefix}"
path-style = true
"#,
                local = local.display()
            ),
        )
        .unwrap();
        let cfg = cfg.to_str().unwrap();
        let disk = ["-c", cfg, "-t", "disk"];
        let offsite = ["-c", cfg, "-t", "offsite"];

        let mut made = Vec::new();
        for n in 0..3 {
            fill(&src, n);
            let (id, o) = w.backup(&["-c", cfg]);
            let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
            for t in v["targets"].as_array().unwrap() {
                assert_eq!(t["committed"], true, "{o:?}");
                let deleted = t["prune"]["deleted"].as_array().unwrap().len();
                assert_eq!(deleted, usize::from(n == 2), "run {n}: {o:?}");
            }
            made.push(id);
        }
        assert_eq!(w.ids(&disk), made[1..].to_vec());
        assert_eq!(w.ids(&offsite), made[1..].to_vec());

        // Empty the volume: the backup is committed, pruning is skipped and reported.
        std::fs::remove_dir_all(src.join("d")).unwrap();
        let o = w.run(&["-c", cfg, "backup"]);
        assert_eq!(o.code, 0, "{o:?}");
        let skipped: Vec<&str> = o
            .stdout
            .lines()
            .filter(|l| l.contains("prune skipped"))
            .collect();
        assert_eq!(skipped.len(), 2, "one per target: {o:?}");
        assert!(skipped.iter().all(|l| l.contains("empty")), "{o:?}");
        assert_eq!(
            w.ids(&disk).len(),
            3,
            "nothing pruned after the empty backup"
        );
        assert_eq!(w.ids(&offsite).len(), 3);
        assert_eq!(w.ids(&disk)[..2], made[1..]);

        // --no-prune: no pruning and no skip note either.
        fill(&src, 9);
        let o = w.run(&["-c", cfg, "backup", "--no-prune"]);
        assert_eq!(o.code, 0, "{o:?}");
        assert!(
            !o.stdout.contains("pruned:") && !o.stdout.contains("prune skipped"),
            "{o:?}"
        );
        assert_eq!(w.ids(&disk).len(), 4);
    }
}
