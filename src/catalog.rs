//! Object naming and the manifest: what a backup *is* in a target.
//!
//! ```text
//! <backup-id>/manifest.json          written last: the commit
//! <backup-id>/<source>.tar.zst       one archive per volume or bind mount ([.age] when encrypted)
//! <backup-id>/dump@<ctr>.sql.zst     one compressed dump per dump source (`.archive`, `.rdb`, `.dump`; [.age])
//! ```
//!
//! Keys here are relative to the target's root (its directory or bucket prefix); the storage backend adds the
//! prefix, so nothing in this crate can name an object outside it. A backup id sorts by time as text (UTC), so
//! listing a target lists backups in order. A directory without a parseable `manifest.json` is *not* a backup:
//! it is invisible to `list`, `restore` and `prune` (which only removes such leftovers after a grace period).
//!
//! The catalog never deletes anything; `prune` does.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest;

pub use crate::archive::Counts;
/// What was done to a container while its source was read: the config's type, recorded here as it is.
pub use crate::config::QuiesceAction;
use crate::storage::{Storage, StorageError, StorageExt};

/// Name of the commit object inside a backup directory.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Version of the manifest format; bumped on incompatible changes. Readers refuse newer versions.
pub const FORMAT_VERSION: u32 = 1;
/// How the manifest's own checksum, its last field, starts (see [`Manifest::to_json`]).
const CHECKSUM_FIELD: &str = ",\n  \"checksum\": \"";
/// Tag carried by the safety backup taken before a restore.
pub const TAG_PRE_RESTORE: &str = "pre-restore";

/// A backup id: `YYYYMMDDTHHMMSSZ-xxxx` (UTC time, then 4 random hex digits so two runs in the same second on
/// one target cannot collide). Text order is time order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

const ID_TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

impl BackupId {
    /// A new id for a backup starting at `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        let suffix: u16 = rand::random();
        BackupId(format!("{}-{:04x}", at.format(ID_TIME_FORMAT), suffix))
    }

    /// The time encoded in the id (second precision).
    pub fn time(&self) -> DateTime<Utc> {
        let naive = NaiveDateTime::parse_from_str(&self.0[..16], ID_TIME_FORMAT)
            .expect("validated at construction");
        Utc.from_utc_datetime(&naive)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BackupId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = s.len() == 21
            && s.as_bytes()[16] == b'-'
            && s[17..].bytes().all(|b| b.is_ascii_hexdigit())
            && NaiveDateTime::parse_from_str(&s[..16], ID_TIME_FORMAT).is_ok();
        if ok {
            Ok(BackupId(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a backup id (expected e.g. 20261128T170327Z-a1b2; see `voltar list`)"
            ))
        }
    }
}

impl TryFrom<String> for BackupId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

/// Key of a backup's manifest.
pub fn manifest_key(id: &BackupId) -> String {
    format!("{id}/{MANIFEST_NAME}")
}

/// Key of one source's archive.
pub fn object_key(id: &BackupId, object: &str) -> String {
    format!("{id}/{object}")
}

/// Object file name of a dump source: `<source>.<ext>.zst` (`ext`: `sql`, `archive`, `rdb`, `dump`), plus `.age`
/// when encrypted. A dump is not a tar: the stored stream is the command's output, compressed.
pub fn dump_object_name(source: &str, ext: &str, encrypted: bool) -> String {
    if encrypted {
        format!("{source}.{ext}.zst.age")
    } else {
        format!("{source}.{ext}.zst")
    }
}

/// Object file name for a source: `<source>.tar.zst`, plus `.age` when encrypted.
pub fn object_name(source: &str, encrypted: bool) -> String {
    if encrypted {
        format!("{source}.tar.zst.age")
    } else {
        format!("{source}.tar.zst")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Volume,
    Bind,
    /// A database dump streamed out of a running container (`dump@<container>`, see `dump`).
    Dump,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Volume => "volume",
            SourceKind::Bind => "bind",
            SourceKind::Dump => "dump",
        })
    }
}

/// A Swarm service a run scaled to 0 while a source was read or restored (its task containers are never stopped
/// themselves: their records say `none`), and what became of it after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServiceRecord {
    pub id: String,
    pub name: String,
    /// The replica count it had, and was to get back.
    pub replicas: u64,
    /// What it was scaled to (0).
    pub scaled_to: u64,
    /// From the scale-down to the scale-back, in milliseconds (its tasks start after that).
    pub downtime_ms: u64,
    /// Back at `replicas`.
    pub scaled_back: bool,
    /// Why not, when it is not: someone changed its replica count meanwhile (left alone), or it was removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_back: Option<String>,
}

/// A container that used a source, and what the backup did to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_service: Option<String>,
    /// State when the run found it (`running`, `paused`, `exited`, …).
    pub state: String,
    /// Whether it mounts the source read-write.
    pub rw: bool,
    pub action: QuiesceAction,
    /// How long it was paused or stopped, in milliseconds (0 when untouched).
    pub downtime_ms: u64,
}

/// One source in a committed backup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SourceRecord {
    pub name: String,
    pub kind: SourceKind,
    /// Host path that was read (volume mountpoint or bind source).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Object file name inside the backup directory.
    pub object: String,
    pub counts: Counts,
    /// Size of the stored object in bytes.
    pub stored_bytes: u64,
    /// sha256 (hex) of the stored object bytes.
    pub sha256: String,
    #[serde(default)]
    pub containers: Vec<ContainerRecord>,
    /// Time spent reading this source, milliseconds.
    pub read_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Entries that existed when the source was read but are not in the archive, or only in part
    /// (`<path>: <why>`, a capped list): the source was reported incomplete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_archived: Vec<String>,
    /// How many entries were not archived (the list above may be shorter).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_archived_count: u64,
    /// The container hooks run around this source's read, in the order they ran (absent in older manifests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookRecord>,
    /// A `dump` source's command and its outcome (absent for volumes, bind mounts and older manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump: Option<DumpRecord>,
    /// The Swarm services scaled to 0 while this source was read (absent when none, and in older manifests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceRecord>,
    /// How a volume or bind mount was read: from its host path or through the engine (a helper container and
    /// the archive API). Absent for dumps and in older manifests (which were all read from the host path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_via: Option<ReadVia>,
}

/// Where a source's contents were read from (`[docker] data-path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadVia {
    /// The host path (`/var/lib/docker/volumes/NAME/_data`, a bind's source).
    Host,
    /// The engine's archive API, from a helper container with the volume mounted read-only.
    Engine,
}

impl std::fmt::Display for ReadVia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReadVia::Host => "host path",
            ReadVia::Engine => "through the engine",
        })
    }
}

/// What the manifest says about a dump source (absent for volumes and bind mounts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DumpRecord {
    /// The container the dump ran in.
    pub container: String,
    /// `postgres`, `mysql`, `mariadb`, `mongodb`, `redis`; absent for a `voltar.dump-command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// The dump command as configured (the preset's shell text, or the label's).
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_command: Option<String>,
    /// The dump command's exit status (0 for every stored dump; kept for the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    pub duration_ms: u64,
    /// Size of the dump itself (the command's stdout), before compression.
    pub dump_bytes: u64,
}

/// When a container hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookPhase {
    /// In the running container, before it is paused or stopped and its source is read.
    PreBackup,
    /// After the source was read and the container resumed or started again.
    PostBackup,
}

impl fmt::Display for HookPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookPhase::PreBackup => "pre-backup",
            HookPhase::PostBackup => "post-backup",
        })
    }
}

/// How a hook ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookOutcome {
    /// Exit code 0.
    Ok,
    /// A non-zero exit code.
    Failed,
    /// Ran past its timeout and was killed.
    TimedOut,
    /// Could not be run (the engine refused: no such user or program, container not running).
    Error,
    /// The run was interrupted while it ran.
    Interrupted,
}

/// One container hook that ran (or was tried): its command (never its environment), exit code and duration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HookRecord {
    /// Container name.
    pub container: String,
    pub phase: HookPhase,
    /// The command as configured: the shell string, or the argv as a JSON array.
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub outcome: HookOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    pub duration_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A source that was selected but could not be backed up in this run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FailedSource {
    pub name: String,
    pub error: String,
}

/// Encryption parameters recorded in the manifest: never a secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EncryptionRecord {
    /// `recipients` or `passphrase`.
    pub mode: String,
    /// sha256 fingerprints of the recipients (hex, first 16 bytes), for telling which key is needed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipient_fingerprints: Vec<String>,
    /// The per-backup seal key, age-encrypted to the same recipients / passphrase (armored). See `crypto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_key: Option<String>,
}

/// The commit record of one backup in one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Manifest {
    pub format: u32,
    pub tool: String,
    pub id: BackupId,
    pub job: String,
    pub host: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    pub sources: Vec<SourceRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionRecord>,
    /// HMAC-SHA256 over the manifest with this field empty, keyed by the sealed key (see `crypto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

impl Manifest {
    pub fn total_stored(&self) -> u64 {
        self.sources.iter().map(|s| s.stored_bytes).sum()
    }
    pub fn total_bytes(&self) -> u64 {
        self.sources.iter().map(|s| s.counts.bytes).sum()
    }
    pub fn source(&self, name: &str) -> Option<&SourceRecord> {
        self.sources.iter().find(|s| s.name == name)
    }
    pub fn is_pre_restore(&self) -> bool {
        self.tags.iter().any(|t| t == TAG_PRE_RESTORE)
    }

    /// The stored form: pretty JSON whose last field, `checksum`, is the sha256 of the same JSON without that
    /// field. Unencrypted manifests have no seal, and a flipped byte in, say, a source's path or a label would
    /// otherwise still parse and be trusted; with the checksum every change to the stored bytes is detected.
    pub fn to_json(&self) -> Vec<u8> {
        let body = serde_json::to_vec_pretty(self).expect("manifest serializes");
        debug_assert!(body.ends_with(b"\n}"));
        let sum = hex::encode(sha2::Sha256::digest(&body));
        let mut v = body[..body.len() - 1].to_vec();
        v.extend_from_slice(format!("{CHECKSUM_FIELD}{sum}\"\n}}\n").as_bytes());
        v
    }

    /// Parse and check a manifest read from `key`: its checksum must match (see [`Manifest::to_json`]).
    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Manifest, CatalogError> {
        let corrupt = |reason: String| CatalogError::Corrupt {
            key: key.to_string(),
            reason,
        };
        // `<body without its closing brace>,\n  "checksum": "<64 hex>"\n}\n`
        let tail = CHECKSUM_FIELD.len() + 64 + 4;
        let split = bytes.len().checked_sub(tail);
        let (body_open, sum) = match split {
            Some(at)
                if bytes[at..].starts_with(CHECKSUM_FIELD.as_bytes())
                    && bytes.ends_with(b"\"\n}\n") =>
            {
                (&bytes[..at], &bytes[at + CHECKSUM_FIELD.len()..bytes.len() - 4])
            }
            _ => {
                return Err(corrupt(
                    "it does not end with its checksum: it was cut short, edited, or not written by voltar"
                        .into(),
                ))
            }
        };
        let mut body = body_open.to_vec();
        body.push(b'}');
        let found = hex::encode(sha2::Sha256::digest(&body));
        if found.as_bytes() != sum {
            return Err(corrupt(format!(
                "checksum mismatch (sha256 {found}, recorded {}): the manifest is damaged or was edited",
                String::from_utf8_lossy(sum)
            )));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if m.format > FORMAT_VERSION {
            return Err(CatalogError::Corrupt {
                key: key.to_string(),
                reason: format!(
                    "manifest format {} is newer than this voltar understands ({FORMAT_VERSION}); upgrade voltar",
                    m.format
                ),
            });
        }
        Ok(m)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("manifest {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("manifest {key} names backup {found}, but it is stored under {expected}: the manifest was moved or swapped")]
    Misplaced {
        key: String,
        expected: String,
        found: String,
    },
    #[error("no backup `{0}` in this target (see `voltar list`)")]
    NotFound(String),
    #[error("`{0}` is neither a backup id nor `latest` (ids look like 20261128T170327Z-a1b2; see `voltar list`)")]
    NotAnId(String),
    #[error("backup {id} cannot be used: {reason}")]
    Unusable { id: String, reason: String },
    #[error("no backup `{what}` in this target (see `voltar list`); {count} backup(s) here have an unreadable manifest: {ids}")]
    NotFoundBesideUnreadable {
        what: String,
        count: usize,
        ids: String,
    },
    #[error("the sources do not share a newest backup: {common} holds them all, but there are newer backups of {newer}; restore one source at a time (--source NAME), or name a backup id")]
    Mixed { common: String, newer: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What `list` found in a target: committed backups (oldest first) and directories without a manifest.
#[derive(Debug, Default)]
pub struct Listing {
    pub backups: Vec<Manifest>,
    /// Backup ids that have objects but no manifest: incomplete or interrupted. Only prune removes them.
    pub incomplete: Vec<(BackupId, Vec<String>)>,
    /// Manifests that exist but could not be read, with the reason.
    pub unreadable: Vec<(BackupId, String)>,
}

/// List the backups of a target. Objects whose first path component is not a backup id are ignored (they are
/// not ours).
pub async fn list(storage: &dyn Storage) -> Result<Listing, CatalogError> {
    let objects = storage.list("").await?;
    let mut by_id: BTreeMap<BackupId, Vec<String>> = BTreeMap::new();
    for o in objects {
        let Some((first, _)) = o.key.split_once('/') else {
            continue;
        };
        let Ok(id) = first.parse::<BackupId>() else {
            continue;
        };
        by_id.entry(id).or_default().push(o.key);
    }
    let mut listing = Listing::default();
    for (id, keys) in by_id {
        let mkey = manifest_key(&id);
        if !keys.contains(&mkey) {
            listing.incomplete.push((id, keys));
            continue;
        }
        match read_manifest(storage, &id).await {
            Ok(m) => listing.backups.push(m),
            Err(CatalogError::Storage(e)) if !e.is_not_found() => return Err(e.into()),
            Err(e) => listing.unreadable.push((id, e.to_string())),
        }
    }
    // Ids sort by time only to the second (then by a random suffix): two backups in one second would list, and
    // resolve `latest`, in random order. The manifest's start time decides; the id breaks exact ties.
    sort_by_time(&mut listing.backups);
    Ok(listing)
}

/// Oldest first by `started_at`, then by id.
pub fn sort_by_time(backups: &mut [Manifest]) {
    backups.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
}

/// Read one manifest and check it names the id it is stored under.
pub async fn read_manifest(storage: &dyn Storage, id: &BackupId) -> Result<Manifest, CatalogError> {
    let key = manifest_key(id);
    let bytes = storage.get_bytes(&key).await.map_err(|e| {
        if e.is_not_found() {
            CatalogError::NotFound(id.to_string())
        } else {
            CatalogError::Storage(e)
        }
    })?;
    let m = Manifest::from_json(&key, &bytes)?;
    if &m.id != id {
        return Err(CatalogError::Misplaced {
            key,
            expected: id.to_string(),
            found: m.id.to_string(),
        });
    }
    Ok(m)
}

/// Resolve `latest`, an id, or `--before TIME` against a listing. Pre-restore safety backups are considered
/// only when asked for by id. The one resolver of `show`, `restore` and `verify`: a backup whose manifest exists
/// but cannot be read is named as such ("cannot be used", not "no backup"), a failed lookup lists the unreadable
/// manifests, and `latest` warns (log) when it passes over a newer backup whose manifest is unreadable.
///
/// With `sources`, `latest` is the newest backup that holds every one of them: after a partial run
/// (`backup --only A`), `latest --source B` is B's newest backup, not the partial one. When the named sources
/// have different newest backups, that is an error (restoring one of them from an older backup than its newest
/// would be a silent surprise): the message says to take them one at a time or name a backup id.
pub fn resolve<'a>(
    listing: &'a Listing,
    spec: &str,
    before: Option<DateTime<Utc>>,
    sources: &[String],
) -> Result<&'a Manifest, CatalogError> {
    if let Some((id, reason)) = listing
        .unreadable
        .iter()
        .find(|(id, _)| id.as_str() == spec)
    {
        return Err(CatalogError::Unusable {
            id: id.to_string(),
            reason: reason.clone(),
        });
    }
    let m = find(listing, spec, before, sources).map_err(|e| match e {
        CatalogError::NotFound(what) if !listing.unreadable.is_empty() => {
            CatalogError::NotFoundBesideUnreadable {
                what,
                count: listing.unreadable.len(),
                ids: listing
                    .unreadable
                    .iter()
                    .map(|(id, _)| id.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        }
        e => e,
    })?;
    if spec == "latest" {
        for (id, e) in listing
            .unreadable
            .iter()
            .filter(|(id, _)| *id > m.id && before.is_none_or(|b| id.time() <= b))
        {
            tracing::warn!("skipping newer backup {id}: {e}; using {}", m.id);
        }
    }
    Ok(m)
}

/// [`resolve`] among the readable manifests.
fn find<'a>(
    listing: &'a Listing,
    spec: &str,
    before: Option<DateTime<Utc>>,
    sources: &[String],
) -> Result<&'a Manifest, CatalogError> {
    if spec == "latest" {
        let newest_with = |names: &[String]| {
            listing
                .backups
                .iter()
                .rev()
                .filter(|m| !m.is_pre_restore())
                .filter(|m| before.is_none_or(|b| m.started_at <= b))
                .find(|m| names.iter().all(|n| m.source(n).is_some()))
        };
        let found = newest_with(sources).ok_or_else(|| {
            let mut what = match before {
                Some(b) => format!("latest before {}", b.format("%Y-%m-%d %H:%M:%S UTC")),
                None => "latest".into(),
            };
            if !sources.is_empty() {
                what.push_str(&format!(" holding {}", sources.join(", ")));
            }
            CatalogError::NotFound(what)
        })?;
        if sources.len() > 1 {
            let newer: Vec<String> = sources
                .iter()
                .filter_map(|n| {
                    newest_with(std::slice::from_ref(n))
                        .filter(|m| m.id != found.id)
                        .map(|m| format!("{n} in {}", m.id))
                })
                .collect();
            if !newer.is_empty() {
                return Err(CatalogError::Mixed {
                    common: found.id.to_string(),
                    newer: newer.join(", "),
                });
            }
        }
        return Ok(found);
    }
    let id: BackupId = spec
        .parse()
        .map_err(|_| CatalogError::NotAnId(spec.to_string()))?;
    listing
        .backups
        .iter()
        .find(|m| m.id == id)
        .ok_or_else(|| CatalogError::NotFound(spec.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flipped_or_cut_manifest_byte_is_detected() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let m = Manifest {
            format: FORMAT_VERSION,
            tool: "voltar 0".into(),
            id: BackupId::new(t),
            job: "default".into(),
            host: "h".into(),
            started_at: t,
            finished_at: t,
            tags: vec![],
            sources: vec![],
            failed: vec![],
            encryption: None,
            seal: None,
        };
        let good = m.to_json();
        assert_eq!(Manifest::from_json("k", &good).unwrap(), m);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(Manifest::from_json("k", &bad).is_err(), "flip at {i}");
            assert!(Manifest::from_json("k", &good[..i]).is_err(), "cut at {i}");
        }
    }

    /// `QuiesceAction` is defined in `config` now; the manifests already written spell it `none`/`pause`/`stop`
    /// in each container record, and must still read back and be written the same way.
    #[test]
    fn container_records_keep_their_quiesce_action_spelling() {
        for (text, action) in [
            ("none", QuiesceAction::None),
            ("pause", QuiesceAction::Pause),
            ("stop", QuiesceAction::Stop),
        ] {
            let json = format!(
                r#"{{"id":"c1","name":"db","state":"running","rw":true,"action":"{text}","downtime-ms":7}}"#
            );
            let r: ContainerRecord = serde_json::from_str(&json).unwrap();
            assert_eq!(r.action, action);
            assert_eq!(serde_json::to_string(&r).unwrap(), json);
        }
    }

    #[test]
    fn backup_ids_sort_by_time_and_round_trip() {
        let a = BackupId::new(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap());
        let b = BackupId::new(Utc.with_ymd_and_hms(2026, 11, 2, 3, 4, 5).unwrap());
        assert!(a < b);
        assert_eq!(a.time(), Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap());
        assert_eq!(a.as_str().parse::<BackupId>().unwrap(), a);
        assert!(a.as_str().starts_with("20260102T030405Z-"));
    }

    fn manifest_at(id: &str, at: DateTime<Utc>) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            tool: "t".into(),
            id: id.parse().unwrap(),
            job: "j".into(),
            host: "h".into(),
            started_at: at,
            finished_at: at,
            tags: vec![],
            sources: vec![],
            failed: vec![],
            encryption: None,
            seal: None,
        }
    }

    /// Two backups in the same second: their ids order by the random suffix, `latest` must still be the newer.
    #[test]
    fn latest_is_the_newest_even_within_one_second() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let newer = manifest_at(
            "20260102T030405Z-0001",
            t + chrono::Duration::milliseconds(700),
        );
        let older = manifest_at(
            "20260102T030405Z-ffff",
            t + chrono::Duration::milliseconds(100),
        );
        let mut backups = vec![newer.clone(), older.clone()];
        sort_by_time(&mut backups);
        let listing = Listing {
            backups,
            ..Listing::default()
        };
        assert_eq!(listing.backups[0].id, older.id);
        assert_eq!(resolve(&listing, "latest", None, &[]).unwrap().id, newer.id);
    }

    /// Issue 9: `resolve` is the one resolver of show, restore and verify: a backup whose manifest exists but
    /// cannot be read is named as such (not "no backup"), and a failed lookup says which manifests are unreadable.
    #[test]
    fn issue9_resolve_names_unreadable_manifests() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let good = manifest_at("20260102T030405Z-0001", t);
        let bad: BackupId = "20260103T030405Z-0002".parse().unwrap();
        let listing = Listing {
            backups: vec![good.clone()],
            unreadable: vec![(bad.clone(), "truncated JSON".into())],
            ..Listing::default()
        };
        let e = resolve(&listing, bad.as_str(), None, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("backup {bad} cannot be used: truncated JSON")
        );
        let e = resolve(&listing, "20010101T000000Z-abcd", None, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("no backup `20010101T000000Z-abcd` in this target (see `voltar list`); 1 backup(s) here have an unreadable manifest: {bad}")
        );
        // `latest` passes over the newer unreadable one (with a warning in the log).
        assert_eq!(resolve(&listing, "latest", None, &[]).unwrap().id, good.id);
    }

    /// Issue 8: after a full backup of a and b and a partial one of a, `latest --source b` is the full backup;
    /// a and b together have different newest backups, which is an error that says what to do.
    #[test]
    fn issue8_latest_with_sources_is_the_newest_backup_that_holds_them() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let src = |name: &str| SourceRecord {
            name: name.into(),
            kind: SourceKind::Volume,
            path: String::new(),
            driver: None,
            driver_opts: BTreeMap::new(),
            labels: BTreeMap::new(),
            object: object_name(name, false),
            counts: Counts::default(),
            stored_bytes: 0,
            sha256: String::new(),
            containers: vec![],
            read_ms: 0,
            warnings: vec![],
            not_archived: vec![],
            not_archived_count: 0,
            hooks: vec![],
            dump: None,
            services: vec![],
            read_via: None,
        };
        let mut full = manifest_at("20260102T030405Z-0001", t);
        full.sources = vec![src("a"), src("b")];
        let mut partial = manifest_at("20260102T040405Z-0002", t + chrono::Duration::hours(1));
        partial.sources = vec![src("a")];
        let listing = Listing {
            backups: vec![full.clone(), partial.clone()],
            ..Listing::default()
        };
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            resolve(&listing, "latest", None, &[]).unwrap().id,
            partial.id
        );
        assert_eq!(
            resolve(&listing, "latest", None, &names(&["a"]))
                .unwrap()
                .id,
            partial.id
        );
        assert_eq!(
            resolve(&listing, "latest", None, &names(&["b"]))
                .unwrap()
                .id,
            full.id
        );
        let e = resolve(&listing, "latest", None, &names(&["a", "b"])).unwrap_err();
        assert!(matches!(e, CatalogError::Mixed { .. }), "{e}");
        assert!(e.to_string().contains("one source at a time"), "{e}");
        let e = resolve(&listing, "latest", None, &names(&["c"])).unwrap_err();
        assert!(e.to_string().contains("holding c"), "{e}");
        // --before the partial run: the full backup, for both.
        let before = Some(t + chrono::Duration::minutes(30));
        assert_eq!(
            resolve(&listing, "latest", before, &names(&["a", "b"]))
                .unwrap()
                .id,
            full.id
        );
    }

    #[test]
    fn foreign_names_are_not_backup_ids() {
        for bad in [
            "",
            "latest",
            "20261128T170327Z",
            "20261128T170327Z-zzzz",
            "20261399T170327Z-abcd",
            "../etc/passwd",
        ] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad}");
        }
    }

    /// A source record written before dumps existed (no `dump` field) still loads; a dump's record round-trips.
    #[test]
    fn dump_records_and_older_source_records() {
        let old = serde_json::json!({
            "name": "pgdata", "kind": "volume", "path": "/v", "object": "pgdata.tar.zst",
            "counts": {"entries": 1, "files": 1, "dirs": 0, "symlinks": 0, "hardlinks": 0, "other": 0, "bytes": 3},
            "stored-bytes": 9, "sha256": "ab", "read-ms": 1
        });
        let r: SourceRecord = serde_json::from_value(old).unwrap();
        assert_eq!((r.kind, &r.dump), (SourceKind::Volume, &None));
        let mut d = r.clone();
        d.kind = SourceKind::Dump;
        d.object = dump_object_name("dump@db", "sql", true);
        d.dump = Some(DumpRecord {
            container: "db".into(),
            preset: Some("postgres".into()),
            command: "pg_dumpall".into(),
            restore_command: Some("psql".into()),
            exit_code: Some(0),
            duration_ms: 5,
            dump_bytes: 3,
        });
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["kind"], "dump");
        assert_eq!(v["object"], "dump@db.sql.zst.age");
        assert_eq!(v["dump"]["exit-code"], 0);
        assert_eq!(serde_json::from_value::<SourceRecord>(v).unwrap(), d);
    }

    /// A source record written before scaled services were recorded (no `services`) loads with none, and writes
    /// none back; a scaled service round-trips.
    #[test]
    fn service_records_and_older_source_records() {
        let old = serde_json::json!({
            "name": "web", "kind": "volume", "path": "/v", "object": "web.tar.zst",
            "counts": {"entries": 1, "files": 1, "dirs": 0, "symlinks": 0, "hardlinks": 0, "other": 0, "bytes": 3},
            "stored-bytes": 9, "sha256": "ab", "read-ms": 1,
            "containers": [{"id": "t1", "name": "web.1.x", "state": "running", "rw": true, "action": "none",
                            "downtime-ms": 0}]
        });
        let r: SourceRecord = serde_json::from_value(old).unwrap();
        assert!(r.services.is_empty());
        assert!(serde_json::to_value(&r).unwrap().get("services").is_none());
        let mut s = r.clone();
        s.services = vec![ServiceRecord {
            id: "svc1".into(),
            name: "web".into(),
            replicas: 2,
            scaled_to: 0,
            downtime_ms: 1400,
            scaled_back: false,
            not_back: Some("removed meanwhile".into()),
        }];
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["services"][0]["scaled-to"], 0);
        assert_eq!(v["services"][0]["not-back"], "removed meanwhile");
        assert_eq!(serde_json::from_value::<SourceRecord>(v).unwrap(), s);
    }
}
