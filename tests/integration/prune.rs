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
use voltar::config::Retention;
use voltar::prune::{self, AfterBackup, PruneOptions};
use voltar::retention::{Action, Policy};
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
            read_ms: 1,
            warnings: vec![],
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
);
