//! The end of a run: the commit — one manifest per target, written after every source, listing what is stored
//! there — and pruning each committed target by its policy.

use super::*;

/// Write each usable target's manifest, the commit. A target where nothing was stored gets none (its row says
/// why). Returns the manifests written, by target index: only those targets are pruned.
pub(super) async fn commit(
    ctx: &RunCtx<'_>,
    req: &BackupRequest,
    report: &mut RunReport,
) -> Result<BTreeMap<usize, Manifest>, BackupError> {
    let finished_at = Utc::now();
    let mut committed: BTreeMap<usize, Manifest> = BTreeMap::new();
    for (i, store) in ctx.targets.stores.iter().enumerate() {
        let Some(store) = store else { continue };
        let name = &ctx.targets.names[i];
        let records: Vec<SourceRecord> = report
            .sources
            .iter()
            .filter_map(|s| s.records.get(&i).cloned())
            .collect();
        if records.is_empty() {
            report.targets[i].error = Some(nothing_stored(&report.sources, name));
            continue;
        }
        let mut manifest = Manifest {
            format: catalog::FORMAT_VERSION,
            tool: crate::TOOL.to_string(),
            id: ctx.id.clone(),
            job: req.job.name.clone(),
            host: ctx.env.config.node.clone().unwrap_or_else(hostname),
            started_at: report.started_at,
            finished_at,
            tags: req.tags.clone(),
            sources: records,
            failed: failed_sources(&report.sources, i, name),
            encryption: None,
            seal: None,
        };
        if let Some(enc) = &ctx.encryptor {
            enc.seal(&mut manifest)?;
        }
        let key = catalog::manifest_key(&ctx.id);
        match store.put(&key, manifest.to_json().into()).await {
            Ok(()) => {
                report.targets[i].committed = true;
                committed.insert(i, manifest);
            }
            Err(e) => report.targets[i].error = Some(format!("writing manifest: {e}")),
        }
    }
    Ok(committed)
}

/// Why a target got no manifest: the first error of this target, else the first source error.
fn nothing_stored(sources: &[SourceReport], target: &str) -> String {
    let why = sources
        .iter()
        .find_map(|s| s.target_errors.get(target))
        .or_else(|| sources.iter().find_map(|s| s.error.as_ref()));
    match why {
        Some(w) => format!("nothing was stored on it ({w})"),
        None => "nothing was stored on it".into(),
    }
}

/// The sources not stored on target `i` (named `target`), each with its error there.
fn failed_sources(sources: &[SourceReport], i: usize, target: &str) -> Vec<FailedSource> {
    sources
        .iter()
        .filter(|s| !s.records.contains_key(&i))
        .map(|s| FailedSource {
            name: s.name.clone(),
            error: s
                .target_errors
                .get(target)
                .or(s.error.as_ref())
                .cloned()
                .unwrap_or_else(|| "not stored".into()),
        })
        .collect()
}

/// Prune each committed target by its policy, unless the new backup looks wrong.
pub(super) async fn prune(
    ctx: &RunCtx<'_>,
    req: &BackupRequest,
    committed: &BTreeMap<usize, Manifest>,
    report: &mut RunReport,
) {
    let env = ctx.env;
    for (i, store) in ctx.targets.stores.iter().enumerate() {
        let Some(store) = store else { continue };
        let Some(manifest) = committed.get(&i) else {
            continue;
        };
        let settings = req.targets[i].effective_retention(&req.job.retention);
        if settings.policy.is_empty() {
            continue;
        }
        let row = &mut report.targets[i];
        env.progress.phase(&format!("pruning {}", row.location));
        match prune::prune_after_backup(store.as_ref(), &settings, manifest, env.now).await {
            Ok(prune::AfterBackup::Pruned(p)) => row.prune = Some(*p),
            Ok(prune::AfterBackup::Skipped { reason }) => {
                env.progress
                    .reported(&format!("not pruning {}: {reason}", row.location));
                row.prune_skipped = Some(reason);
            }
            Err(e) => row.error = Some(format!("prune: {e}")),
        }
    }
}

fn hostname() -> String {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    if name.is_empty() {
        "unknown".into()
    } else {
        name
    }
}
