//! `voltar target check NAME|URL`: a real round trip on one target, step by step, each step with its verdict and,
//! when it failed, the config line that fixes it.
//!
//! Where [`crate::check`] (`voltar config check`) makes the small probe a backup makes before it touches a
//! container, this goes the whole way a backup and a restore go, through the same [`Storage`] calls: a streamed
//! upload of a few parts (S3: a multipart upload at the target's part size, two full parts and a short last one),
//! read back with its sha256 compared, listed, deleted, confirmed gone, and an upload aborted half-way that must
//! leave no trace (S3: no incomplete multipart upload; local: no temp file). Around it, what S3-compatible stores
//! differ in and users trip over:
//!
//! * **Checksums.** Recent AWS SDKs send CRC32 checksums with every upload (`x-amz-checksum-crc32`,
//!   `x-amz-sdk-checksum-algorithm`); Backblaze B2, older Cloudflare R2 and other stores refuse those headers.
//!   When the upload fails with a permanent error under `checksum = "default"`, it is tried once more with
//!   checksums only where an operation requires them; if that goes through, the store is one of those, and the
//!   step says to set `checksum = "when-required"`. The rest of the round trip then uses that setting.
//! * **Part limits.** S3 allows 10,000 parts; some stores 1,000. The largest archive the part size allows at
//!   both counts (the writer's own part-size schedule, [`s3::part_size_for`]) is stated.
//! * **Object Lock.** A bucket with Object Lock wants a checksum (Content-MD5 or an SDK checksum) on uploads,
//!   and keeps deleted objects' versions until their retention ends: said, with what to set.
//! * **Addressing.** Without `path-style`, requests go to `bucket.host`: when that name does not resolve but
//!   the endpoint's host does, the fix is `path-style = true`.
//! * **Regions.** A bucket in another region is already named with its region by the S3 backend's errors.
//!
//! For a local target: the directory is created if missing, the object written to a temp name, fsync'd and
//! renamed (the backend's publish), read back, listed, deleted, and an aborted write must leave no temp file; then
//! the free space is compared with the size of the newest backup there.
//!
//! Every object is under a `.voltar-check-<random>/probe` key ([`crate::storage::CHECK_KEY_PREFIX`]): no listing
//! of backups sees it, and `prune` sweeps a local one a killed check left. The last step looks for leftovers.
//! Nothing here touches a container or takes a lock.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::catalog;
use crate::config::{ChecksumMode, S3Target, Target, TargetKind};
use crate::progress::human;
use crate::storage::s3::{self, ObjectLock, S3Storage};
use crate::storage::{self, ObjectWriter, PutOptions, Storage, StorageError};

/// Retry deadline of each request during the check (the target's own when shorter): a check is interactive,
/// and an endpoint that answered once and then hangs should not keep it for the 5 minutes a backup allows.
pub const STEP_DEADLINE: Duration = Duration::from_secs(30);
/// The short last part of the test upload.
const TAIL: u64 = 1 << 20;
/// Above this part size, the test upload uses S3's minimum part size instead (every store takes 5 MiB parts).
const LARGEST_TEST_PART: u64 = 32 << 20;

/// What became of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    Failed,
    /// Not tried: an earlier step failed.
    Skipped,
    /// Not a test: something worth knowing about this target (part limits, Object Lock).
    Info,
}

/// One step: what was done, how it went, what was found and, when it failed, how to fix it.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub step: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Step {
    fn ok(step: &str, detail: impl Into<String>) -> Step {
        Step {
            step: step.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn info(step: &str, detail: impl Into<String>) -> Step {
        Step {
            status: Status::Info,
            ..Step::ok(step, detail)
        }
    }
    fn failed(step: &str, detail: impl Into<String>, fix: Option<String>) -> Step {
        Step {
            step: step.into(),
            status: Status::Failed,
            detail: detail.into(),
            fix,
        }
    }
    fn skipped(step: &str) -> Step {
        Step {
            step: step.into(),
            status: Status::Skipped,
            detail: "not tried: an earlier step failed".into(),
            fix: None,
        }
    }
}

/// The whole check of one target.
#[derive(Clone, Debug, Serialize)]
pub struct TargetCheck {
    /// As given: a configured name or a URL / path.
    pub target: String,
    /// Where it is (`s3://bucket/prefix`, a directory) and how it is reached.
    pub location: String,
    pub ok: bool,
    pub steps: Vec<Step>,
}

/// How a fix is spelled for this target: a key of its `[target.NAME]` table, or an option of its URL.
struct Fixes<'a> {
    name: &'a str,
    configured: bool,
}

impl Fixes<'_> {
    /// "set KEY = VALUE in [target.NAME]", or, for a URL target, the URL option when there is one.
    fn set(&self, key: &str, value: &str, url_option: Option<&str>) -> String {
        match (self.configured, url_option) {
            (true, _) => format!("set {key} = {value} in [target.{}]", self.name),
            (false, Some(opt)) => format!("add {opt} to the target URL"),
            (false, None) => format!(
                "configure the target as a [target.NAME] table in the config with {key} = {value}, and check it by \
                 that name"
            ),
        }
    }

    fn table(&self) -> String {
        if self.configured {
            format!("[target.{}]", self.name)
        } else {
            "the target".into()
        }
    }

    /// The usual fix of a storage error's category (the message itself names bucket and region problems).
    fn of(&self, e: &StorageError, local: bool) -> Option<String> {
        match e {
            StorageError::Auth { .. } if local => Some(format!(
                "make the directory of {} writable by the user voltar runs as (it is read-only or owned by \
                 someone else)",
                self.table()
            )),
            StorageError::Auth { .. } => Some(format!(
                "check the credentials: access-key-id-file and secret-access-key-file of {}, or \
                 AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE, and that the key may write to the bucket",
                self.table()
            )),
            StorageError::NoSpace { .. } => Some("free space on the target, or raise its quota".into()),
            StorageError::Transient { .. } if !local => Some(format!(
                "check `endpoint` of {} and that the server is up and reachable from here (or raise its \
                 check-timeout when it is only slow to answer)",
                self.table()
            )),
            StorageError::Permanent { .. } if local => Some(format!(
                "make `path` of {} a directory voltar can create and write",
                self.table()
            )),
            _ => None,
        }
    }
}

/// Check `target` (`configured`: it is a `[target.NAME]` of the config, so fixes name its keys).
pub async fn run(target: &Target, configured: bool) -> TargetCheck {
    let fixes = Fixes {
        name: &target.name,
        configured,
    };
    let (location, steps) = match &target.kind {
        TargetKind::S3(t) => s3_check(t, &fixes).await,
        TargetKind::Local { .. } => local_check(target, &fixes).await,
    };
    TargetCheck {
        target: target.name.clone(),
        location,
        ok: steps.iter().all(|s| s.status != Status::Failed),
        steps,
    }
}

/// A fresh probe key and the directory it is in (`.voltar-check-<random>`).
fn probe() -> (String, String) {
    let key = storage::check_probe_key();
    let dir = key
        .split_once('/')
        .map(|(d, _)| d)
        .unwrap_or(&key)
        .to_string();
    (key, dir)
}

/// `n` random bytes (incompressible, so no store or proxy shortens them).
fn random_bytes(n: u64) -> Bytes {
    let mut v = vec![0u8; n as usize];
    rand::thread_rng().fill_bytes(&mut v);
    Bytes::from(v)
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Stream `data` into a new object `key` in 1 MiB writes, as a backup does; abort on error.
async fn upload(store: &dyn Storage, key: &str, data: &Bytes) -> Result<(), StorageError> {
    let mut w = store
        .put_stream(
            key,
            PutOptions {
                size_hint: Some(data.len() as u64),
            },
        )
        .await?;
    let mut rest = data.clone();
    while !rest.is_empty() {
        let chunk = rest.split_to(rest.len().min(1 << 20));
        if let Err(e) = w.write(chunk).await {
            let _ = w.abort().await;
            return Err(e);
        }
    }
    w.finish().await.map(|_| ())
}

/// Start an upload of `key`, write `n` bytes (for S3, more than one part, so that a multipart upload with a part
/// in it exists), then abort it.
async fn aborted_upload(store: &dyn Storage, key: &str, n: u64) -> Result<(), StorageError> {
    let mut w: Box<dyn ObjectWriter> = store.put_stream(key, PutOptions::default()).await?;
    let data = random_bytes(n);
    let written = w.write(data).await;
    let aborted = w.abort().await;
    written.and(aborted)
}

/// Read `key` whole: its size and sha256.
async fn read_back(store: &dyn Storage, key: &str) -> Result<(u64, String), StorageError> {
    let mut s = store.get(key).await?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        n += chunk.len() as u64;
        h.update(&chunk);
    }
    Ok((n, hex::encode(h.finalize())))
}

/// The steps every backend shares after the upload: read back, list, delete, confirm gone, pushed onto `steps`
/// (a failed delete leaves the object to the leftovers step, which names it).
async fn round_trip_rest(
    store: &dyn Storage,
    key: &str,
    dir: &str,
    data: &Bytes,
    steps: &mut Vec<Step>,
    fixes: &Fixes<'_>,
    local: bool,
) {
    let want = sha256(data);
    steps.push(match read_back(store, key).await {
        Ok((n, sum)) if n == data.len() as u64 && sum == want => Step::ok(
            "read back",
            format!("{} read back, sha256 matches ({}…)", human(n), &want[..12]),
        ),
        Ok((n, sum)) => Step::failed(
            "read back",
            format!(
                "read back {n} bytes with sha256 {sum}, but {} bytes with sha256 {want} were written: the store \
                 changed the object",
                data.len()
            ),
            Some("do not use this store (or this endpoint, e.g. a caching proxy) for backups".into()),
        ),
        Err(e) => Step::failed("read back", e.to_string(), fixes.of(&e, local)),
    });

    let prefix = format!("{dir}/");
    steps.push(match store.list(&prefix).await {
        Ok(objs) if objs.iter().any(|o| o.key == key && o.size == data.len() as u64) => {
            Step::ok("list", format!("listed with its size ({} bytes)", data.len()))
        }
        Ok(objs) => Step::failed(
            "list",
            format!(
                "the object is not listed with its size under {prefix} (found: {})",
                if objs.is_empty() {
                    "nothing".to_string()
                } else {
                    objs.iter()
                        .map(|o| format!("{} {} bytes", o.key, o.size))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            Some("a store whose listing misses objects cannot hold backups: voltar finds backups by listing".into()),
        ),
        Err(e) => Step::failed("list", e.to_string(), fixes.of(&e, local)),
    });

    let deleted = store.delete(&[key.to_string()]).await;
    let delete_ok = deleted.is_ok();
    steps.push(match deleted {
        Ok(()) => Step::ok("delete", "deleted"),
        Err(e) => Step::failed(
            "delete",
            e.to_string(),
            Some(
                "`voltar prune` needs to delete: give the credentials the delete permission (a write-only key can \
                 back up, but never prune)"
                    .into(),
            ),
        ),
    });

    if !delete_ok {
        steps.push(Step::skipped("gone"));
        return;
    }
    let listed = store.list(&prefix).await;
    let got = store.get(key).await;
    steps.push(match (listed, got) {
        (Ok(objs), Err(e)) if e.is_not_found() && objs.is_empty() => {
            Step::ok("gone", "neither listed nor readable after the delete")
        }
        (Ok(objs), _) if !objs.is_empty() => Step::failed(
            "gone",
            format!("still listed after the delete: {}", objs[0].key),
            Some("the store's listing lags behind deletes: prune may report objects it already removed".into()),
        ),
        (Err(e), _) => Step::failed("gone", e.to_string(), fixes.of(&e, local)),
        (Ok(_), Ok(_)) => Step::failed(
            "gone",
            "still readable after the delete",
            Some("the store serves deleted objects (a cache in front of it?): do not rely on prune's deletes".into()),
        ),
        (Ok(_), Err(e)) => Step::failed("gone", e.to_string(), fixes.of(&e, local)),
    });
}

// ----------------------------------------------------------------------------------------------------------------
// S3

/// The largest archive the writer can store with `part_size` as its base and `max_parts` parts, without a size
/// hint (a backup does not know the compressed size in advance): the sum of [`s3::part_size_for`] over every
/// part, at most S3's object limit.
pub fn largest_archive(part_size: u64, max_parts: u32) -> u64 {
    let mut total = 0u64;
    for n in 1..=max_parts.max(1) {
        total = total.saturating_add(s3::part_size_for(n, part_size, None, max_parts, false));
    }
    total.min(s3::MAX_OBJECT_SIZE)
}

/// How large an archive gets while every part has the same size (the writer doubles the part size every
/// `max_parts / GROWTH_STEPS` parts): stores that want equal parts (Cloudflare R2) take archives up to this.
pub fn equal_parts_up_to(part_size: u64, max_parts: u32) -> u64 {
    let first = s3::part_size_for(1, part_size, None, max_parts, false);
    let same = (1..=max_parts.max(1))
        .take_while(|&n| s3::part_size_for(n, part_size, None, max_parts, false) == first)
        .count() as u64;
    first.saturating_mul(same)
}

async fn s3_check(t: &S3Target, fixes: &Fixes<'_>) -> (String, Vec<Step>) {
    let mut t = t.clone();
    t.retry_deadline = t.retry_deadline.min(STEP_DEADLINE);
    let describe = if t.prefix.is_empty() {
        format!("s3://{}", t.bucket)
    } else {
        format!("s3://{}/{}", t.bucket, t.prefix)
    };
    let mut steps = Vec::new();

    let store = match S3Storage::new(&t).await {
        Ok(s) => s,
        Err(e) => {
            steps.push(Step::failed("open", e.to_string(), fixes.of(&e, false)));
            return (describe, steps);
        }
    };
    let location = format!(
        "{describe} at {} (region {}, {}, checksums {})",
        store.endpoint(),
        store.region(),
        if t.path_style {
            "path-style"
        } else {
            "virtual-host style"
        },
        match t.checksum {
            ChecksumMode::Default => "sdk default",
            ChecksumMode::WhenRequired => "when required",
        }
    );

    const ROUND_TRIP: [&str; 7] = [
        "upload",
        "read back",
        "list",
        "delete",
        "gone",
        "abort",
        "leftovers",
    ];
    let addressing = addressing(&t, fixes).await;
    if addressing.status == Status::Failed {
        steps.push(addressing);
        steps.extend(ROUND_TRIP.iter().map(|s| Step::skipped(s)));
        steps.push(part_limits(&t, fixes));
        return (location, steps);
    }
    steps.push(addressing);

    // Two full parts and a short last one, at the part size a backup starts with.
    let part = if t.part_size > LARGEST_TEST_PART {
        s3::MIN_PART_SIZE
    } else {
        t.part_size
    };
    let data = random_bytes(2 * part + TAIL);
    let (key, dir) = probe();
    let what = format!(
        "multipart upload of {} in 3 parts of {} (the last {})",
        human(data.len() as u64),
        human(part),
        human(TAIL)
    );
    let sized = |s: S3Storage| Arc::new(s.with_part_size(part)) as Arc<dyn Storage>;
    let mut store_used = sized(store.clone());
    let uploaded = upload(&*store_used, &key, &data).await;
    // Object Lock explains some refused uploads; ask only a store that answers (a dead endpoint would cost
    // another check-timeout for nothing).
    let lock = match &uploaded {
        Err(StorageError::Transient { .. } | StorageError::Auth { .. }) => None,
        _ => Some(store.object_lock().await),
    };
    match uploaded {
        Ok(()) => steps.push(Step::ok("upload", format!("{what}: completed"))),
        Err(first) => {
            // A store that refuses the SDK's default checksums answers with a permanent error (400
            // InvalidArgument "Unsupported header 'x-amz-checksum-crc32'", 501 NotImplemented): try once without.
            let mut retried = None;
            if t.checksum == ChecksumMode::Default
                && matches!(first, StorageError::Permanent { .. })
            {
                let mut plain = t.clone();
                plain.checksum = ChecksumMode::WhenRequired;
                if let Ok(s) = S3Storage::new(&plain).await {
                    let s = sized(s);
                    if upload(&*s, &key, &data).await.is_ok() {
                        retried = Some(s);
                    }
                }
            }
            match retried {
                Some(s) => {
                    steps.push(Step::failed(
                        "upload",
                        format!(
                            "the store refused the upload with the AWS SDK's default CRC32 checksums ({first}); \
                             without them ({what}) it went through"
                        ),
                        Some(fixes.set("checksum", "\"when-required\"", None)),
                    ));
                    store_used = s;
                }
                None => {
                    let fix = lock
                        .as_ref()
                        .and_then(|l| object_lock_fix(l, &t, fixes))
                        .or_else(|| fixes.of(&first, false));
                    steps.push(Step::failed("upload", first.to_string(), fix));
                    steps.extend(ROUND_TRIP[1..].iter().map(|s| Step::skipped(s)));
                    steps.push(match &lock {
                        Some(l) => object_lock_step(l, &t, fixes),
                        None => Step::skipped("object lock"),
                    });
                    steps.push(part_limits(&t, fixes));
                    return (location, steps);
                }
            }
        }
    }
    round_trip_rest(&*store_used, &key, &dir, &data, &mut steps, fixes, false).await;

    // An upload aborted after its first part: nothing may stay (no object, no incomplete upload).
    let (akey, adir) = probe();
    steps.push(match aborted_upload(&*store_used, &akey, part + 1).await {
        Ok(()) => Step::ok(
            "abort",
            "a multipart upload aborted after its first part: abort confirmed (the upload's parts are gone)",
        ),
        Err(e) => Step::failed(
            "abort",
            e.to_string(),
            Some(
                "a backup that fails aborts its upload the same way; without the abort permission unfinished \
                 uploads stay (and are billed) until `voltar prune` or a lifecycle rule removes them"
                    .into(),
            ),
        ),
    });

    // Leftovers: objects or incomplete uploads under either probe directory.
    let mut left = Vec::new();
    let mut errors = Vec::new();
    for d in [&dir, &adir] {
        match store.list(&format!("{d}/")).await {
            Ok(objs) => left.extend(objs.into_iter().map(|o| o.key)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    match store.list_incomplete().await {
        Ok(ups) => left.extend(
            ups.into_iter()
                .filter(|u| {
                    u.key.starts_with(&format!("{dir}/")) || u.key.starts_with(&format!("{adir}/"))
                })
                .map(|u| format!("{} (incomplete upload)", u.key)),
        ),
        Err(e) => errors.push(e.to_string()),
    }
    let lock = match lock {
        Some(l) => l,
        None => store.object_lock().await,
    };
    steps.push(leftovers_step(left, errors, &lock));
    steps.push(object_lock_step(&lock, &t, fixes));
    steps.push(part_limits(&t, fixes));
    (location, steps)
}

fn leftovers_step(
    left: Vec<String>,
    errors: Vec<String>,
    lock: &Result<ObjectLock, StorageError>,
) -> Step {
    if !errors.is_empty() {
        return Step::failed("leftovers", errors.join("; "), None);
    }
    if !left.is_empty() {
        return Step::failed(
            "leftovers",
            format!("left behind: {}", left.join(", ")),
            Some("remove them by hand; `voltar prune` sweeps incomplete uploads older than incomplete-grace".into()),
        );
    }
    let mut d =
        "nothing left: no object and no incomplete upload under the check's keys".to_string();
    if matches!(lock, Ok(ObjectLock::On { .. })) {
        d.push_str(" (with Object Lock the deleted versions stay until their retention ends)");
    }
    Step::ok("leftovers", d)
}

/// Virtual-host addressing puts the bucket in the host name: check that `bucket.host` resolves where `host` does.
async fn addressing(t: &S3Target, fixes: &Fixes<'_>) -> Step {
    const STEP: &str = "addressing";
    if t.path_style {
        return Step::ok(STEP, "path-style requests (endpoint/bucket/key)");
    }
    let Some(ep) = &t.endpoint else {
        return Step::ok(
            STEP,
            "virtual-host requests to AWS (bucket.s3.region.amazonaws.com)",
        );
    };
    let Ok(url) = url::Url::parse(ep) else {
        return Step::failed(
            STEP,
            format!("endpoint `{ep}` is not a URL"),
            Some(format!(
                "write `endpoint` of {} as https://host[:port]",
                fixes.table()
            )),
        );
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Step::failed(
            STEP,
            format!("endpoint `{ep}` names no host"),
            Some(format!(
                "write `endpoint` of {} as https://host[:port]",
                fixes.table()
            )),
        );
    };
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        // The SDK cannot put a bucket into an IP address: it sends path-style requests there by itself.
        return Step::ok(
            STEP,
            format!("path-style requests (the endpoint {host} is an address)"),
        );
    }
    let virtual_host = format!("{}.{host}", t.bucket);
    let resolves = |h: String| async move {
        match tokio::time::timeout(t.check_timeout, tokio::net::lookup_host((h.as_str(), port)))
            .await
        {
            Ok(Ok(addrs)) => addrs.count() > 0,
            _ => false,
        }
    };
    match (resolves(virtual_host.clone()).await, resolves(host.to_string()).await) {
        (true, _) => Step::ok(STEP, format!("virtual-host requests: {virtual_host} resolves")),
        (false, true) => Step::failed(
            STEP,
            format!(
                "virtual-host requests go to {virtual_host}, which does not resolve (the endpoint's host {host} \
                 does): this store wants path-style requests"
            ),
            Some(fixes.set("path-style", "true", Some("&path-style=1"))),
        ),
        (false, false) => Step::failed(
            STEP,
            format!("neither {virtual_host} nor the endpoint's host {host} resolves"),
            Some(format!("check `endpoint` of {} and DNS", fixes.table())),
        ),
    }
}

/// The largest archive at the configured part size, at 1,000 and 10,000 parts.
fn part_limits(t: &S3Target, fixes: &Fixes<'_>) -> Step {
    let text = if t.equal_parts() {
        format!(
            "part-size {}: every part one size (equal-parts{}), so archives up to {} with max-parts = {} (not \
             tested: it would take {} parts); raise part-size for larger ones",
            human(t.part_size),
            if t.equal_parts.is_none() {
                ", the default for Cloudflare R2"
            } else {
                ""
            },
            human(t.part_size.saturating_mul(t.max_parts as u64).min(s3::MAX_OBJECT_SIZE)),
            t.max_parts,
            t.max_parts as u64 + 1,
        )
    } else {
        format!(
            "part-size {}: archives up to {} at 10,000 parts (AWS), {} at 1,000; max-parts = {} here (not \
             tested: it would take 1,001 parts); parts stay one size up to {} (for stores that want every part \
             one size, set equal-parts = true)",
            human(t.part_size),
            human(largest_archive(t.part_size, 10_000)),
            human(largest_archive(t.part_size, 1_000)),
            t.max_parts,
            human(equal_parts_up_to(t.part_size, t.max_parts)),
        )
    };
    let mut step = Step::info("part limits", text);
    if t.max_parts > 1_000 {
        step.fix = Some(format!(
            "on a store that allows only 1,000 parts per upload, {}",
            fixes.set("max-parts", "1000", None)
        ));
    }
    step
}

fn object_lock_step(
    lock: &Result<ObjectLock, StorageError>,
    t: &S3Target,
    fixes: &Fixes<'_>,
) -> Step {
    const STEP: &str = "object lock";
    match lock {
        Ok(ObjectLock::Off) => Step::ok(STEP, "off"),
        Ok(ObjectLock::On { default_retention }) => {
            let retention = match default_retention {
                Some(r) => format!("default retention {r}"),
                None => "no default retention".into(),
            };
            let mut d = format!(
                "on ({retention}): uploads must carry a checksum (Content-MD5 or an SDK checksum), and deleted \
                 objects' versions stay until their retention ends, so prune frees no space before then"
            );
            if t.checksum == ChecksumMode::WhenRequired {
                d.push_str(&format!(
                    "; with checksum = \"when-required\" uploads carry none: if they are refused, {}",
                    fixes.set("checksum", "\"default\"", None)
                ));
            }
            Step::info(STEP, d)
        }
        Err(e) => Step::info(STEP, format!("unknown (the store would not say: {e})")),
    }
}

/// When an upload failed on an Object Lock bucket without checksums, that is the likely cause.
fn object_lock_fix(
    lock: &Result<ObjectLock, StorageError>,
    t: &S3Target,
    fixes: &Fixes<'_>,
) -> Option<String> {
    (matches!(lock, Ok(ObjectLock::On { .. })) && t.checksum == ChecksumMode::WhenRequired).then(
        || {
            format!(
                "Object Lock buckets refuse uploads without a checksum: {}",
                fixes.set("checksum", "\"default\"", None)
            )
        },
    )
}

// ----------------------------------------------------------------------------------------------------------------
// Local

async fn local_check(target: &Target, fixes: &Fixes<'_>) -> (String, Vec<Step>) {
    let mut steps = Vec::new();
    let store = match storage::open(target).await {
        Ok(s) => s,
        Err(e) => {
            steps.push(Step::failed("open", e.to_string(), fixes.of(&e, true)));
            return (target.name.clone(), steps);
        }
    };
    let location = store.describe();
    let root = std::path::PathBuf::from(&location);

    let data = random_bytes(4 << 20);
    let (key, dir) = probe();
    match upload(&*store, &key, &data).await {
        Ok(()) => steps.push(Step::ok(
            "write",
            format!(
                "{} written to a temp name, fsync'd, renamed into place",
                human(data.len() as u64)
            ),
        )),
        Err(e) => {
            steps.push(Step::failed("write", e.to_string(), fixes.of(&e, true)));
            for s in ["read back", "list", "delete", "gone", "abort", "leftovers"] {
                steps.push(Step::skipped(s));
            }
            steps.push(free_space(&*store, &root).await);
            return (location, steps);
        }
    }
    round_trip_rest(&*store, &key, &dir, &data, &mut steps, fixes, true).await;

    let (akey, adir) = probe();
    steps.push(match aborted_upload(&*store, &akey, 1 << 20).await {
        Ok(()) => Step::ok("abort", "a write aborted half-way: its temp file is gone"),
        Err(e) => Step::failed("abort", e.to_string(), fixes.of(&e, true)),
    });

    let mut left: Vec<String> = Vec::new();
    for d in [&dir, &adir] {
        if root.join(d).exists() {
            left.push(format!("{}/", root.join(d).display()));
        }
    }
    match store.stale_uploads(Duration::ZERO).await {
        Ok(temps) => left.extend(
            temps
                .into_iter()
                .filter(|m| m.key.starts_with(dir.as_str()) || m.key.starts_with(adir.as_str()))
                .map(|m| m.key),
        ),
        Err(e) => left.push(format!("(could not look for temp files: {e})")),
    }
    steps.push(leftovers_step(left, Vec::new(), &Ok(ObjectLock::Off)));
    steps.push(free_space(&*store, &root).await);
    (location, steps)
}

/// Free space where the backups go against the newest backup's size there.
async fn free_space(store: &dyn Storage, root: &std::path::Path) -> Step {
    const STEP: &str = "free space";
    // The root may not exist yet: measure the nearest directory that does.
    let mut at = root.to_path_buf();
    while !at.exists() {
        if !at.pop() {
            break;
        }
    }
    let free = match rustix::fs::statvfs(&at) {
        Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
        Err(e) => {
            return Step::failed(
                STEP,
                format!("cannot read the free space of {}: {e}", at.display()),
                None,
            )
        }
    };
    let last = match catalog::list(store).await {
        Ok(l) => l
            .backups
            .last()
            .map(|m| (m.id.as_str().to_string(), m.total_stored())),
        Err(e) => {
            return Step::info(
                STEP,
                format!("{} free; backups could not be listed: {e}", human(free)),
            )
        }
    };
    match last {
        None => Step::info(STEP, format!("{} free; no backup here yet to compare with", human(free))),
        Some((id, size)) if size <= free => Step::ok(
            STEP,
            format!("{} free, the newest backup ({id}) is {}", human(free), human(size)),
        ),
        Some((id, size)) => Step::failed(
            STEP,
            format!(
                "{} free, but the newest backup ({id}) is {}: the next one of that size will not fit",
                human(free),
                human(size)
            ),
            Some("free space there (voltar prune with a retention policy), or move the target to a larger disk".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_archives_follow_the_writers_part_schedule() {
        // Pinned in `storage::s3::part_size_for`'s docs: 5 MiB base, 10,000 parts → 8.8 TiB of parts, capped at
        // S3's 5 TiB object limit; 1,000 parts → 0.92 TiB.
        assert_eq!(largest_archive(5 << 20, 10_000), s3::MAX_OBJECT_SIZE);
        let tib = (1u64 << 40) as f64;
        let k = largest_archive(5 << 20, 1_000) as f64 / tib;
        assert!((0.9..0.95).contains(&k), "{k}");
        // The default 8 MiB lies between the 5 and 16 MiB columns (0.92 and 1.62 TiB).
        let k = largest_archive(8 << 20, 1_000) as f64 / tib;
        assert!((0.92..1.62).contains(&k), "{k}");
        // One part: the part itself.
        assert_eq!(largest_archive(8 << 20, 1), 8 << 20);
    }

    #[test]
    fn parts_stay_one_size_for_the_first_growth_step() {
        // 10,000 parts in 11 growth steps: 909 parts of the base size before the first doubling.
        assert_eq!(equal_parts_up_to(8 << 20, 10_000), 909 * (8 << 20));
        assert_eq!(equal_parts_up_to(64 << 20, 1_000), 90 * (64 << 20));
        assert_eq!(equal_parts_up_to(5 << 20, 1), 5 << 20);
    }

    #[test]
    fn fixes_name_the_table_key_or_the_url_option() {
        let named = Fixes {
            name: "offsite",
            configured: true,
        };
        assert_eq!(
            named.set("path-style", "true", Some("&path-style=1")),
            "set path-style = true in [target.offsite]"
        );
        let url = Fixes {
            name: "s3://b/p",
            configured: false,
        };
        assert_eq!(
            url.set("path-style", "true", Some("&path-style=1")),
            "add &path-style=1 to the target URL"
        );
        assert!(url
            .set("checksum", "\"when-required\"", None)
            .contains("[target.NAME]"));
    }
}
