//! How big the sources of a [`Plan`] are now, for `voltar plan` (its SIZE column and `--json` `size`). Reading the
//! filesystem is I/O, so this lives beside the pure [`crate::plan`], not in it.

use std::path::{Path, PathBuf};

use crate::plan::Plan;

/// The apparent size of each of `plan`'s sources (the sum of its regular files' lengths, symlinks not followed), in
/// the plan's order; `None` where the source's path is not a directory this host can read.
pub async fn of_sources(plan: &Plan) -> Result<Vec<Option<u64>>, tokio::task::JoinError> {
    let paths: Vec<PathBuf> = plan.sources.iter().map(|s| s.path.clone()).collect();
    tokio::task::spawn_blocking(move || paths.iter().map(|p| dir_size(p)).collect()).await
}

/// Apparent size of a directory tree (regular files).
fn dir_size(p: &Path) -> Option<u64> {
    if !p.is_dir() {
        return None;
    }
    Some(
        walkdir::WalkDir::new(p)
            .follow_links(false)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum(),
    )
}
