//! `voltar restore`: put a volume (or a directory, or some paths) back from a backup, safely.
//!
//! Order of events, per source (architecture.md, acceptance rows 11 and 12):
//!
//! 1. Show the plan; `--dry-run` stops here (it lists the files that would be removed).
//! 2. Check each source's archive before anything is stopped: the object is in the target with the size the
//!    manifest recorded, and an encrypted one opens with the given keys. A source that fails this is reported
//!    failed and nothing is done for it. Leftovers of killed runs (journaled staging directories, containers
//!    left stopped) are recovered first.
//! 3. While the users keep running: extract into a staging directory on the same filesystem (a sibling of the
//!    volume's `_data`, journaled before it is created so that `voltar recover` or the next run removes it after
//!    a kill), checking the stored object's sha256 and the archive's counts against the manifest *while*
//!    streaming; decryption and zstd checksums are verified to the last byte, and the staged tree is made
//!    durable (one `syncfs`). A bad archive stops nobody.
//! 4. Check the targets the safety backup goes to (the one restored from and the job's), as a backup run does.
//! 5. Stop the running containers that mount the target volume (journaled, like backup's quiesce; each with its
//!    `voltar.stop-timeout` label, else the configured stop-timeout).
//! 6. Swap the staging tree in with one atomic `renameat2(RENAME_EXCHANGE)`, so the volume ends up exactly
//!    equal to the backup (no stale files); the old tree is now in the staging directory, journaled as kept.
//! 7. Start exactly the containers that were running: they were down for the stop, the swap and the start.
//! 8. Safety backup of the old tree, tagged `pre-restore` (`--no-safety-backup` skips it), then remove it. If
//!    it fails, the old tree stays on disk and the source says where (exit 1); `recover` never removes it.
//!    (`--path` restores take the safety backup of the volume before the swap, with the users stopped: the old
//!    tree does not come out of a per-path swap whole.)
//!
//! Any failure before step 6 leaves the live data byte-identical and the containers as they were found.
//! The unpacker (`archive::unpack`) refuses entries that would write outside the staging directory.

mod apply;
mod dump;
mod engine;
mod import;
mod plan;
mod swap;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::archive::unpack::{UnpackOptions, UnpackReport};
use crate::archive::{self, Counts};
use crate::backup::{self, BackupRequest};
use crate::catalog::{self, Manifest, QuiesceAction, SourceKind, SourceRecord, TAG_PRE_RESTORE};
use crate::config::{Config, Target};
use crate::crypto::Decryptor;
use crate::docker::{ContainerInfo, ContainerState, Engine};
use crate::pipeline;
use crate::plan::{PlannedContainer, PlannedSource};
use crate::progress::Progress;
use crate::quiesce::{self, Hold, Journal, Leftover, Quiescer, STAGING_PREFIX};
use crate::readback::{self, Entries, ReadBack, WalkError, Walked};
pub use crate::readback::{count_diff, ProgressReader, RestoreError};
use crate::storage::{ObjectMeta, Storage};

use self::apply::checked;
pub use self::apply::{apply, fetch_and_unpack, unpack_until_cancelled};
use self::import::import;
use self::plan::{dry_run, undo_command};
pub use self::plan::{plan, Resources, RestorePlan, SourcePlan};
use self::swap::{current_names, dir_has_entries, exchange, swap_path_in, Staging};
/// `voltar restore`: what to restore from, which sources, where to, and how.
#[derive(Clone, Debug, Default)]
pub struct RestoreRequest {
    /// The target holding the backup (`None` with `archive`).
    pub target: Option<Target>,
    /// Backup id or `latest` (`None` with `archive`).
    pub backup: Option<String>,
    /// With `latest`: the newest backup taken at or before this time.
    pub before: Option<DateTime<Utc>>,
    /// Only these sources of the backup (default: all).
    pub sources: Vec<String>,
    /// Restore into a new volume (created with the original driver, options and labels).
    pub to_volume: Option<String>,
    /// Restore into a directory on the host.
    pub to_dir: Option<PathBuf>,
    /// A dump source: stream it into the restore command in this running container.
    pub to_container: Option<String>,
    /// A dump source: write it out, decompressed, to this file.
    pub to_file: Option<PathBuf>,
    /// Restore only these files or directories (relative to the volume root).
    pub paths: Vec<PathBuf>,
    /// Plan only: say what would happen (including files that would be removed).
    pub dry_run: bool,
    /// Do not take a safety backup of the current contents first.
    pub no_safety_backup: bool,
    /// Allow a non-empty `to_dir` (its contents are replaced).
    pub force: bool,
    /// Skip the final flush to disk where the restore replaces nothing (a new or empty destination).
    pub no_sync: bool,
    /// Import this plain archive made by other tools instead of a voltar backup.
    pub archive: Option<PathBuf>,
    /// With `archive`: drop N leading path components.
    pub strip_components: usize,
    pub job: Option<String>,
    pub identities: Vec<PathBuf>,
    pub passphrase_file: Option<PathBuf>,
    /// `--wait`: wait this long for the safety backup's targets when another run holds one, before anything is
    /// extracted or stopped (and, for a whole volume, again before stopping for one taken meanwhile), instead of
    /// failing.
    pub wait: Option<crate::lock::Wait>,
}

/// What `restore` did, or (dry run) would do.
#[derive(Clone, Debug)]
pub enum RestoreOutcome {
    Report(RestoreReport),
    /// `--archive` with `--dry-run`: the file and where it would go.
    ImportPlan {
        file: PathBuf,
        destination: Destination,
    },
}

/// How one source's restore ended. Serialized (and shown) as `ok`, `dry-run` or `failed: <why>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreStatus {
    Ok,
    DryRun,
    Failed(String),
    /// Restored, but the safety copy of what was there could not be committed (it is kept on disk: the text
    /// says where). Exit code 1.
    Unprotected(String),
}

impl std::fmt::Display for RestoreStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreStatus::Ok => f.write_str("ok"),
            RestoreStatus::DryRun => f.write_str("dry-run"),
            RestoreStatus::Failed(why) => write!(f, "failed: {why}"),
            RestoreStatus::Unprotected(why) => {
                write!(f, "restored, without a safety backup: {why}")
            }
        }
    }
}

impl Serialize for RestoreStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where one source goes.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "name")]
pub enum Destination {
    Volume(String),
    Dir(PathBuf),
    /// A dump streamed into the restore command in this running container.
    Container(String),
    /// A dump written out, decompressed, to this file.
    File(PathBuf),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Volume(v) => write!(f, "volume {v}"),
            Destination::Dir(d) => write!(f, "directory {}", d.display()),
            Destination::Container(c) => write!(f, "container {c}"),
            Destination::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SourceRestore {
    pub source: String,
    pub destination: Destination,
    /// Host path whose contents are replaced.
    pub path: PathBuf,
    pub create_volume: bool,
    /// The containers that use the destination and are stopped for the swap (the plan).
    pub stop: Vec<String>,
    /// Those that were stopped (none when the restore failed before stopping anything, and in a dry run).
    pub stopped: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_remove: Option<Vec<String>>,
    /// Dry run: what would change back or come back, and where the safety backup would go (`None` for a volume
    /// still to be created).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub changes: Option<DryRunChanges>,
    pub counts: Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety_backup: Option<String>,
    /// The command that undoes this restore: a restore from the safety backup (its id a placeholder on a dry
    /// run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undo: Option<String>,
    pub restarted: Vec<String>,
    /// How long each stopped container was down (name → milliseconds), as backup reports it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub downtime_ms: BTreeMap<String, u64>,
    /// The Swarm services scaled to 0 for the swap, and back (as a backup's manifest records them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<catalog::ServiceRecord>,
    pub warnings: Vec<String>,
    pub status: RestoreStatus,
    /// A dump restored into a container: the command it was (or, dry run, would be) streamed into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Written through the engine (a helper container and the archive API), not the host path.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub through_engine: bool,
}

/// Entries listed per kind in a dry run's report; the counts are exact.
pub const DRY_RUN_LISTED: usize = 1000;

/// What a restore would change at a destination besides the removals: entries there now that differ from the
/// backup's, and entries of the backup missing there now. Lists cut at [`DRY_RUN_LISTED`].
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DryRunChanges {
    pub would_change: Vec<Changed>,
    pub would_change_count: u64,
    pub would_come_back: Vec<String>,
    pub would_come_back_count: u64,
    /// The targets the safety backup of what is there now would go to: the one restored from first, then the
    /// job's others (empty: nothing there, or `--no-safety-backup`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub safety_backup_to: Vec<String>,
}

/// An entry there now that the restore would set back to the backup's, and what differs: `type`, `size`,
/// `mode`, `mtime`, `link target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Changed {
    pub path: String,
    pub differs: Vec<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RestoreReport {
    pub backup: Option<String>,
    pub dry_run: bool,
    pub sources: Vec<SourceRestore>,
    /// What was put right before starting: containers left stopped and staging directories left behind by
    /// interrupted runs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<String>,
}

impl RestoreReport {
    /// True when no source failed.
    pub fn ok(&self) -> bool {
        !self.sources.iter().any(|s| {
            matches!(
                s.status,
                RestoreStatus::Failed(_) | RestoreStatus::Unprotected(_)
            )
        })
    }
}

/// Parse `--before`: RFC 3339, a local date/time, or an age (`2d`, `12h`).
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"] {
        if let Ok(n) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return local_to_utc(n, s);
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return local_to_utc(d.and_hms_opt(23, 59, 59).expect("valid"), s);
    }
    if let Ok(d) = crate::config::parse_duration(s) {
        return Ok(now - chrono::Duration::from_std(d)?);
    }
    bail!("--before `{s}`: not a time (use 2026-11-28T03:00:00Z, \"2026-11-28 03:00\", 2026-11-28 or an age like 2d)")
}

fn local_to_utc(n: chrono::NaiveDateTime, s: &str) -> Result<DateTime<Utc>> {
    use chrono::TimeZone;
    chrono::Local
        .from_local_datetime(&n)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| anyhow!("--before `{s}` does not exist in the local time zone"))
}

/// Sources of `m`'s job that `m` does not hold, each with the newest backup that does (older than `m`).
fn newer_elsewhere(listing: &catalog::Listing, m: &Manifest) -> Vec<(String, catalog::BackupId)> {
    let mut out: Vec<(String, catalog::BackupId)> = Vec::new();
    for other in listing.backups.iter().rev() {
        if other.job != m.job || other.is_pre_restore() {
            continue;
        }
        for s in &other.sources {
            if m.source(&s.name).is_none() && !out.iter().any(|(n, _)| *n == s.name) {
                out.push((s.name.clone(), other.id.clone()));
            }
        }
    }
    out
}

/// Normalize `--path` arguments: relative, no `..`.
fn clean_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    paths
        .iter()
        .map(|p| {
            let mut out = PathBuf::new();
            for c in p.components() {
                match c {
                    Component::Normal(x) => out.push(x),
                    Component::CurDir | Component::RootDir => {}
                    Component::ParentDir | Component::Prefix(_) => {
                        bail!("--path {}: `..` is not allowed", p.display())
                    }
                }
            }
            if out.as_os_str().is_empty() {
                bail!(
                    "--path {}: names the whole volume; leave --path out instead",
                    p.display()
                );
            }
            Ok(out)
        })
        .collect()
}

/// Restore (or, with `dry_run`, plan) what `args` asks for. Per-source failures are in the report; `Err` is a
/// fatal or usage error.
/// The targets a safety backup goes to: the one restored from, and every target of the job (`--job`, else the
/// backup's own job), once each by the target's lock key (one run cannot lock a target twice).
fn safety_targets(
    config: &Config,
    job: Option<&str>,
    backup_job: &str,
    from: &Target,
) -> Vec<Target> {
    let mut out = vec![from.clone()];
    let mut seen: Vec<Vec<u8>> = crate::lock::target_key(from)
        .map(|k| vec![k.key])
        .unwrap_or_default();
    let job = config.job(job).ok().or_else(|| config.jobs.get(backup_job));
    for name in job.map(|j| j.targets.clone()).unwrap_or_default() {
        let Some(t) = config.targets.get(&name) else {
            continue;
        };
        match crate::lock::target_key(t) {
            Ok(k) if seen.contains(&k.key) => {}
            Ok(k) => {
                seen.push(k.key);
                out.push(t.clone());
            }
            // Cannot be resolved (e.g. a local directory that is gone): the check names it.
            Err(_) => out.push(t.clone()),
        }
    }
    out
}

pub async fn run(
    config: &Config,
    args: RestoreRequest,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<RestoreOutcome> {
    if args.archive.is_some() {
        return import(config, args, progress, cancel).await;
    }
    if args.to_container.is_some() || args.to_file.is_some() {
        return Ok(RestoreOutcome::Report(
            dump::run(config, args, progress, cancel).await?,
        ));
    }
    let (plan, resources) = plan(config, &args, &progress).await?;
    let report = if args.dry_run {
        let safety_to = (!args.no_safety_backup).then(|| {
            safety_targets(
                config,
                args.job.as_deref(),
                &plan.manifest.job,
                &resources.target,
            )
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>()
        });
        let mut report = dry_run(&plan, &resources, safety_to).await?;
        for s in &mut report.sources {
            if let Destination::Volume(v) = &s.destination {
                // A volume still to be created (no path yet) is decided once it exists, except under `engine`.
                s.through_engine = match (config.data_path, s.path.as_os_str().is_empty()) {
                    (crate::config::DataPath::Engine, _) => true,
                    (_, true) => false,
                    (mode, false) => engine::through_engine(mode, v, &s.path)?,
                };
            }
        }
        report
    } else {
        if let (Some(w), false) = (&args.wait, args.no_safety_backup) {
            // The safety backup locks its targets: wait for them before anything is extracted or stopped.
            let targets = safety_targets(
                config,
                args.job.as_deref(),
                &plan.manifest.job,
                &resources.target,
            );
            let waited =
                crate::lock::wait_free(&config.state_dir, &targets, Some(w), &cancel, |h| {
                    progress.waiting(&h.waiting_line())
                });
            match waited.await {
                // Timed out: each source then fails its check of the safety backup's targets with this time-out,
                // before anything is stopped, as a busy target fails it without --wait.
                Ok(()) | Err(crate::lock::LockError::TimedOut { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        apply(config, &args, plan, resources, progress, cancel).await?
    };
    Ok(RestoreOutcome::Report(report))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plan for `restore` of one volume used by a running and a stopped container.
    pub(crate) fn sample_plan() -> RestorePlan {
        let t = DateTime::parse_from_rfc3339("2026-11-28T03:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let source: SourceRecord = serde_json::from_value(serde_json::json!({
            "name": "pgdata",
            "kind": "volume",
            "path": "/var/lib/docker/volumes/pgdata/_data",
            "object": "pgdata.tar.zst",
            "counts": {"entries": 4, "files": 3, "dirs": 1, "symlinks": 0, "hardlinks": 0, "other": 0,
                       "bytes": 3072},
            "stored-bytes": 900,
            "sha256": "00",
            "read-ms": 5,
        }))
        .unwrap();
        let user = |name: &str, action: QuiesceAction| PlannedContainer {
            id: format!("id-{name}"),
            name: name.into(),
            compose_project: None,
            compose_service: None,
            state: "running".into(),
            rw: true,
            action,
            stop_timeout: std::time::Duration::from_secs(10),
            reason: String::new(),
            hooks: None,
        };
        RestorePlan {
            manifest: Manifest {
                format: catalog::FORMAT_VERSION,
                tool: "t".into(),
                id: "20261128T030000Z-abcd".parse().unwrap(),
                job: "default".into(),
                host: "h".into(),
                started_at: t,
                finished_at: t,
                tags: vec![],
                sources: vec![source.clone()],
                failed: vec![],
                encryption: None,
                seal: None,
            },
            sources: vec![SourcePlan {
                source,
                destination: Destination::Volume("pgdata".into()),
                path: PathBuf::from("/var/lib/docker/volumes/pgdata/_data"),
                create_volume: false,
                users: vec![
                    user("db", QuiesceAction::Stop),
                    user("old", QuiesceAction::None),
                ],
                services: vec![],
            }],
            paths: vec![],
            recovered: vec![],
        }
    }

    /// Issue 9: the dry run reports the plan: the backup, each source's destination, the containers the plan
    /// stops (not the ones it leaves alone), what the backup holds and what would be removed; nothing restored.
    #[test]
    fn issue9_the_dry_run_reports_the_plan() {
        let plan = sample_plan();
        assert_eq!(plan.sources[0].stops(), vec!["db".to_string()]);
        let r = plan.dry_run_report(vec![(vec!["stale.log".into()], None)]);
        assert!(r.dry_run);
        assert!(r.ok());
        assert_eq!(r.backup.as_deref(), Some("20261128T030000Z-abcd"));
        assert_eq!(r.sources.len(), 1);
        let s = &r.sources[0];
        assert_eq!(s.source, "pgdata");
        assert_eq!(s.destination.to_string(), "volume pgdata");
        assert!(!s.create_volume);
        assert_eq!(s.stop, vec!["db".to_string()]);
        assert_eq!(s.would_remove, Some(vec!["stale.log".to_string()]));
        assert_eq!((s.counts.files, s.counts.bytes), (3, 3072));
        assert_eq!(s.status, RestoreStatus::DryRun);
        assert!(s.restarted.is_empty() && s.safety_backup.is_none());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["sources"][0]["status"], "dry-run");
    }

    #[test]
    fn before_times() {
        let now = DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_time("2026-11-27T03:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-11-27T03:00:00+00:00"
        );
        assert_eq!(
            parse_time("2d", now).unwrap(),
            now - chrono::Duration::days(2)
        );
        assert!(parse_time("yesterday-ish", now).is_err());
    }

    #[test]
    fn paths_are_cleaned_and_dotdot_refused() {
        assert_eq!(
            clean_paths(&[PathBuf::from("/etc/./app")]).unwrap(),
            vec![PathBuf::from("etc/app")]
        );
        assert!(clean_paths(&[PathBuf::from("a/../../b")]).is_err());
        assert!(clean_paths(&[PathBuf::from("/")]).is_err());
    }

    #[test]
    fn exchange_swaps_directories() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("new"), "n").unwrap();
        std::fs::write(b.join("old"), "o").unwrap();
        exchange(&a, &b).unwrap();
        assert!(b.join("new").exists() && !b.join("old").exists());
        assert!(a.join("old").exists());
    }
}
