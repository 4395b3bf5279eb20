//! `voltar prune`: apply a retention plan to one target. Plan, then apply; every decision carries its reasons.
//!
//! 1. List the target through [`catalog::list`]. Only ids with a readable manifest are backups; objects whose
//!    first path component is not a backup id are not ours and are never looked at again. Unreadable manifests
//!    are reported and never deleted (a human should look at them).
//! 2. Plan with [`retention::plan`], per job: backups written by different jobs into one target are judged
//!    separately (each series keeps its own newest backup and its own buckets). Within a job, the rules run per
//!    source: a backup is kept while any of its sources needs it, so a partial run (`--only A`) never removes
//!    the newest backup of a source it did not include. With [`PruneOptions::job`] set,
//!    only that job's backups are judged; the others are left alone.
//! 3. Apply (unless `dry_run`): for each backup to delete, delete its **manifest first** — from that moment it
//!    is invisible to `list` and `restore` — then list `<id>/` and delete everything under it in one batch.
//!    A prune killed between the two steps leaves only an *incomplete* backup (objects without a manifest).
//! 4. Incomplete backups (objects under a backup id, no manifest) are removed once their last activity — the
//!    newer of the id's time and the objects' modification times — is older than `incomplete_grace`. That
//!    removes what an interrupted prune or a crashed backup left, but never the archives of a backup that is
//!    still being written (recent modification times), and never one dated in the future.
//! 5. Leftovers of interrupted uploads (temp files, S3 multipart uploads) older than the grace period are listed
//!    ([`Storage::stale_uploads`]) and then swept with the same cutoff, so everything removed is in the report —
//!    and in `--dry-run`, which removes nothing. (Before issue 8 a directory that held only a temp file vanished
//!    without a word: `list` does not see temp files, so it was no "incomplete backup" either.)
//!
//! One backup failing to delete does not stop the others: the failure goes into [`PruneReport::errors`]. Only a
//! target that cannot be listed at all is an `Err` (and then nothing was deleted).
//!
//! After a backup run, [`prune_after_backup`] prunes only when the new backup is neither empty nor has a source
//! shrunken beyond `max_shrink` compared with that source's previous backup in the same job
//! ([`should_prune_after_backup`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{self, manifest_key, BackupId, CatalogError, Listing, Manifest};
use crate::config::{Config, Policy, Retention, Target};
use crate::retention::{self, format_duration, Action, Candidate, Decision};
use crate::storage::Storage;

/// How to run a prune.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Plan and report, delete nothing.
    pub dry_run: bool,
    /// The clock the plan is made at (passed in so that it can be tested).
    pub now: DateTime<Utc>,
    /// Judge only this job's backups (the job's own retention). `None`: every job's backups, each job as its
    /// own series, all with the given settings.
    pub job: Option<String>,
}

/// An incomplete backup (objects without a manifest) and what prune does with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct IncompleteDecision {
    pub id: BackupId,
    pub action: Action,
    /// Number of objects under the id.
    pub objects: usize,
    /// The newer of the id's time and the objects' modification times.
    pub last_activity: DateTime<Utc>,
    pub reason: String,
}

/// The leftover of an interrupted upload (a local temp file, an S3 multipart upload) older than the grace period:
/// removed by prune (on a dry run: would be).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LeftoverUpload {
    /// Local: the temp file's path under the target (its directory goes too when that leaves it empty).
    /// S3: the key the upload was writing.
    pub key: String,
    /// Bytes written so far, when the backend knows (local); `None` for S3 (and an empty temp file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// When it was last written (local) or started (S3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<DateTime<Utc>>,
}

/// A manifest that exists but could not be read: never deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Unreadable {
    pub id: BackupId,
    pub reason: String,
}

/// A step that failed for one backup; the others went on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PruneFailure {
    pub id: Option<BackupId>,
    pub step: String,
    pub error: String,
}

/// Everything a prune decided and did, for the table and `--json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PruneReport {
    /// The target's description (directory or `s3://bucket/prefix`).
    pub target: String,
    pub dry_run: bool,
    /// One per judged backup, newest first.
    pub decisions: Vec<Decision>,
    /// Backups actually deleted (empty on a dry run).
    pub deleted: Vec<BackupId>,
    pub incomplete: Vec<IncompleteDecision>,
    /// Incomplete backups actually removed (empty on a dry run).
    pub incomplete_removed: Vec<BackupId>,
    pub unreadable: Vec<Unreadable>,
    /// Backups of other jobs, left alone because [`PruneOptions::job`] named another one.
    pub other_jobs: Vec<BackupId>,
    /// Leftovers of interrupted uploads older than the grace period: removed (dry run: would be removed).
    pub leftover_uploads: Vec<LeftoverUpload>,
    /// How many of them were removed (0 on a dry run).
    pub swept_uploads: usize,
    pub notes: Vec<String>,
    pub errors: Vec<PruneFailure>,
}

impl PruneReport {
    /// True when every step that was attempted succeeded.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// What happened to a target after a backup run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum AfterBackup {
    /// Pruning did not run; the reason says why.
    Skipped {
        reason: String,
    },
    Pruned(Box<PruneReport>),
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(
        "cannot list the backups{}; nothing was deleted (check the target and retry)",
        in_target(target, cause)
    )]
    List { target: String, cause: CatalogError },
}

/// ` in TARGET: CAUSE`, or `: CAUSE` for a storage error, whose message starts with its target.
fn in_target(target: &str, cause: &CatalogError) -> String {
    match cause {
        CatalogError::Storage(_) => format!(": {cause}"),
        _ => format!(" in {target}: {cause}"),
    }
}

impl PruneError {
    pub fn is_retryable(&self) -> bool {
        match self {
            PruneError::List {
                cause: CatalogError::Storage(e),
                ..
            } => e.is_retryable(),
            PruneError::List { .. } => false,
        }
    }
}

async fn list(storage: &dyn Storage) -> Result<Listing, PruneError> {
    catalog::list(storage)
        .await
        .map_err(|source| PruneError::List {
            target: storage.describe(),
            cause: source,
        })
}

/// Plan and (unless `dry_run`) apply retention to one target.
pub async fn prune(
    storage: &dyn Storage,
    settings: &Retention,
    opts: &PruneOptions,
) -> Result<PruneReport, PruneError> {
    let listing = list(storage).await?;
    Ok(prune_listing(storage, &listing, settings, opts).await)
}

/// After a backup committed `new` to this target: prune with the job's settings unless the new backup is empty
/// or one of its sources shrank by more than `settings.max_shrink` versus that source's previous backup.
pub async fn prune_after_backup(
    storage: &dyn Storage,
    settings: &Retention,
    new: &Manifest,
    now: DateTime<Utc>,
) -> Result<AfterBackup, PruneError> {
    let listing = list(storage).await?;
    if let Err(reason) = should_prune_after_backup(&listing, new, settings.max_shrink) {
        return Ok(AfterBackup::Skipped { reason });
    }
    let opts = PruneOptions {
        dry_run: false,
        now,
        job: Some(new.job.clone()),
    };
    Ok(AfterBackup::Pruned(Box::new(
        prune_listing(storage, &listing, settings, &opts).await,
    )))
}

/// Whether pruning may follow the backup `new`: compares each of its sources with that source's previous backup
/// (the newest earlier regular backup of the same job in `listing` that holds the source with content; `listing`
/// may or may not already contain `new`) — an empty source is no reference, else `1000 → 0 → 300` bytes would
/// pass as growth, and a partial run (`--only A`) is never compared with a backup that lacks its sources.
/// `Err` is the reason to report.
pub fn should_prune_after_backup(
    listing: &Listing,
    new: &Manifest,
    max_shrink: f64,
) -> Result<(), String> {
    let mut previous: BTreeMap<String, (BackupId, u64)> = BTreeMap::new();
    for src in &new.sources {
        let prev = listing
            .backups
            .iter()
            .filter(|m| {
                m.id != new.id
                    && m.job == new.job
                    && !m.is_pre_restore()
                    && m.started_at <= new.started_at
            })
            .filter_map(|m| {
                m.source(&src.name)
                    .filter(|s| s.counts.bytes > 0)
                    .map(|s| (m, s.counts.bytes))
            })
            .max_by(|(a, _), (b, _)| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        if let Some((m, bytes)) = prev {
            previous.insert(src.name.clone(), (m.id.clone(), bytes));
        }
    }
    retention::shrink_check(&Candidate::from_manifest(new), &previous, max_shrink)
}

/// Plan and apply against a listing already taken.
pub async fn prune_listing(
    storage: &dyn Storage,
    listing: &Listing,
    settings: &Retention,
    opts: &PruneOptions,
) -> PruneReport {
    let mut report = PruneReport {
        target: storage.describe(),
        dry_run: opts.dry_run,
        ..PruneReport::default()
    };

    // Group by job; each job's backups are one series.
    let mut groups: BTreeMap<&str, Vec<Candidate>> = BTreeMap::new();
    for m in &listing.backups {
        match &opts.job {
            Some(j) if *j != m.job => report.other_jobs.push(m.id.clone()),
            _ => groups
                .entry(m.job.as_str())
                .or_default()
                .push(Candidate::from_manifest(m)),
        }
    }
    if !report.other_jobs.is_empty() {
        report.notes.push(format!(
            "{} backup(s) of other jobs are left alone (they are pruned by their own job's policy)",
            report.other_jobs.len()
        ));
    }
    let several = groups.len() > 1;
    for (job, candidates) in &groups {
        let plan = retention::plan_configured(settings, candidates, opts.now);
        report.decisions.extend(plan.decisions);
        report.notes.extend(plan.notes.into_iter().map(|n| {
            if several {
                format!("job {job}: {n}")
            } else {
                n
            }
        }));
    }
    report
        .decisions
        .sort_by(|a, b| (b.time, &b.id).cmp(&(a.time, &a.id)));

    for (id, reason) in &listing.unreadable {
        report.unreadable.push(Unreadable {
            id: id.clone(),
            reason: reason.clone(),
        });
        report.notes.push(format!(
            "backup {id} has an unreadable manifest and is never deleted: inspect it, then remove it by hand"
        ));
    }

    if !opts.dry_run {
        // Oldest first: if the run is cut short, what is left is the newer part.
        let doomed: Vec<BackupId> = report
            .decisions
            .iter()
            .rev()
            .filter(|d| d.action == Action::Delete)
            .map(|d| d.id.clone())
            .collect();
        for id in doomed {
            match delete_backup(storage, &id).await {
                Ok(()) => report.deleted.push(id),
                Err(f) => report.errors.push(f),
            }
        }
    }

    prune_incomplete(storage, listing, settings, opts, &mut report).await;

    sweep_uploads(storage, settings, opts, &mut report).await;
    report
}

/// List the leftovers of interrupted uploads, then (unless a dry run) sweep exactly those: the sweep runs with the
/// listing's cutoff, so it cannot remove an upload that turned stale after the listing and is not in the report.
async fn sweep_uploads(
    storage: &dyn Storage,
    settings: &Retention,
    opts: &PruneOptions,
    report: &mut PruneReport,
) {
    let grace = settings.incomplete_grace;
    let listed_at = std::time::Instant::now();
    let stale = match storage.stale_uploads(grace).await {
        Ok(v) => v,
        Err(e) => {
            // Nothing is swept that could not be listed first.
            report.errors.push(PruneFailure {
                id: None,
                step: "list interrupted uploads".into(),
                error: e.to_string(),
            });
            return;
        }
    };
    report.leftover_uploads = stale
        .iter()
        .map(|o| LeftoverUpload {
            key: o.key.clone(),
            // 0 is "unknown" (S3 does not say how much an unfinished upload holds).
            size: (o.size > 0).then_some(o.size),
            last_activity: o.modified.map(DateTime::<Utc>::from),
        })
        .collect();
    if opts.dry_run || stale.is_empty() {
        return;
    }
    match storage
        .sweep_incomplete(grace.saturating_add(listed_at.elapsed()))
        .await
    {
        Ok(n) => {
            report.swept_uploads = n;
            if n != stale.len() {
                report.notes.push(format!(
                    "{} of {} leftover upload(s) were gone or written to again before the sweep",
                    stale.len().saturating_sub(n),
                    stale.len()
                ));
            }
        }
        Err(e) => report.errors.push(PruneFailure {
            id: None,
            step: "sweep interrupted uploads".into(),
            error: e.to_string(),
        }),
    }
}

/// Manifest first (the backup disappears from listings at once), then everything else under `<id>/`.
async fn delete_backup(storage: &dyn Storage, id: &BackupId) -> Result<(), PruneFailure> {
    let fail = |step: &str, error: String| PruneFailure {
        id: Some(id.clone()),
        step: step.to_string(),
        error,
    };
    storage
        .delete(&[manifest_key(id)])
        .await
        .map_err(|e| fail("delete manifest", format!("{e}; the backup is intact")))?;
    let left = "the manifest is gone, so the backup is no longer listed; the next prune removes its archives";
    let keys = object_keys(storage, id)
        .await
        .map_err(|e| fail("list archives", format!("{e}; {left}")))?;
    if !keys.is_empty() {
        storage
            .delete(&keys)
            .await
            .map_err(|e| fail("delete archives", format!("{e}; {left}")))?;
    }
    Ok(())
}

/// Every object under `<id>/`, checked to really be there: a backend bug must not widen a delete.
async fn object_keys(
    storage: &dyn Storage,
    id: &BackupId,
) -> Result<Vec<String>, crate::storage::StorageError> {
    let prefix = format!("{id}/");
    Ok(storage
        .list(&prefix)
        .await?
        .into_iter()
        .filter(|o| o.key.starts_with(&prefix))
        .map(|o| o.key)
        .collect())
}

async fn prune_incomplete(
    storage: &dyn Storage,
    listing: &Listing,
    settings: &Retention,
    opts: &PruneOptions,
    report: &mut PruneReport,
) {
    let grace =
        chrono::Duration::from_std(settings.incomplete_grace).unwrap_or(chrono::Duration::MAX);
    for (id, _) in &listing.incomplete {
        let prefix = format!("{id}/");
        let objects = match storage.list(&prefix).await {
            Ok(v) => v
                .into_iter()
                .filter(|o| o.key.starts_with(&prefix))
                .collect::<Vec<_>>(),
            Err(e) => {
                report.errors.push(PruneFailure {
                    id: Some(id.clone()),
                    step: "list incomplete backup".into(),
                    error: e.to_string(),
                });
                continue;
            }
        };
        if objects.is_empty() {
            continue; // gone since the listing
        }
        if objects.iter().any(|o| o.key == manifest_key(id)) {
            report.notes.push(format!(
                "backup {id} was committed while prune ran; it is judged by the next prune"
            ));
            continue;
        }
        let last_activity = objects
            .iter()
            .filter_map(|o| o.modified.map(DateTime::<Utc>::from))
            .fold(id.time(), |a, b| a.max(b));
        let age = opts.now.signed_duration_since(last_activity);
        let (action, reason) = if age > grace {
            (
                Action::Delete,
                format!(
                    "no manifest, last written {} ago (grace {}): left by an interrupted backup or prune",
                    format_duration(age),
                    format_duration(grace)
                ),
            )
        } else {
            (
                Action::Keep,
                format!(
                    "no manifest, last written {} ago: within the grace period of {} (it may still be running)",
                    format_duration(age),
                    format_duration(grace)
                ),
            )
        };
        report.incomplete.push(IncompleteDecision {
            id: id.clone(),
            action,
            objects: objects.len(),
            last_activity,
            reason,
        });
        if action == Action::Delete && !opts.dry_run {
            let keys: Vec<String> = objects.into_iter().map(|o| o.key).collect();
            match storage.delete(&keys).await {
                Ok(()) => report.incomplete_removed.push(id.clone()),
                Err(e) => report.errors.push(PruneFailure {
                    id: Some(id.clone()),
                    step: "delete incomplete backup".into(),
                    error: e.to_string(),
                }),
            }
        }
    }
}

/// `voltar prune`: which targets, whose backups, and the policy that overrides the configured one.
#[derive(Clone, Debug)]
pub struct PruneRequest {
    pub targets: Vec<Target>,
    /// Judge only this job's backups, with its retention (see [`PruneOptions::job`]); `None`: the default job's
    /// retention, every job's backups.
    pub job: Option<String>,
    /// Replaces the configured `keep-*` rules (the command line's `--keep-*` flags).
    pub policy: Option<Policy>,
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    /// `--wait`: wait this long for a target another run holds, instead of failing.
    pub wait: Option<crate::lock::Wait>,
}

/// Prune each target of `req` in turn, under its target lock: one report per target. `waiting` is told who a
/// target is waited for (with `--wait`).
pub async fn run(
    config: &Config,
    req: &PruneRequest,
    waiting: &(dyn Fn(&crate::lock::Holder) + Sync),
) -> anyhow::Result<Vec<PruneReport>> {
    use anyhow::Context;
    let job = config.job(req.job.as_deref())?;
    let mut reports = Vec::new();
    // Time spent waiting for targets moves the clock the policy is judged at.
    let mut waited = chrono::Duration::zero();
    for t in &req.targets {
        let mut settings = t.effective_retention(&job.retention);
        if let Some(p) = &req.policy {
            settings.policy = p.clone();
        }
        if settings.policy.is_empty() {
            anyhow::bail!(
                "no retention policy for {}: set [retention] keep-* in the config or pass --keep-daily N etc.",
                t.name
            );
        }
        let store = crate::storage::open(t)
            .await
            .with_context(|| format!("opening target {}", t.name))?;
        let _lock = loop {
            match crate::lock::TargetLock::acquire(&config.state_dir, t) {
                Err(crate::lock::LockError::Busy { .. }) if req.wait.is_some() => {
                    // A signal drops this command (nothing to put back), so nothing cancels the wait here.
                    let never = tokio_util::sync::CancellationToken::new();
                    let one = std::slice::from_ref(t);
                    let before = Utc::now();
                    crate::lock::wait_free(
                        &config.state_dir,
                        one,
                        req.wait.as_ref(),
                        &never,
                        waiting,
                    )
                    .await?;
                    waited += Utc::now() - before;
                }
                taken => break taken?,
            }
        };
        let opts = PruneOptions {
            dry_run: req.dry_run,
            now: req.now + waited,
            job: req.job.clone(),
        };
        reports.push(prune(store.as_ref(), &settings, &opts).await?);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageError;

    /// A listing error names its target once (storage errors start with it), never `in T: T: …`.
    #[test]
    fn a_listing_error_names_its_target_once() {
        let target = "s3://b/p".to_string();
        let cause = CatalogError::Storage(StorageError::Permanent {
            target: target.clone(),
            message: "listing: no such bucket".into(),
        });
        let e = PruneError::List { target, cause }.to_string();
        assert_eq!(e.matches("s3://b/p").count(), 1, "{e}");
        assert!(e.contains("nothing was deleted"), "{e}");
    }
}
