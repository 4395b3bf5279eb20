//! Restore's filesystem side: the journaled staging directory and the atomic swaps (`renameat2`).

use rustix::fs::{Mode, OFlags, RenameFlags, CWD};

use super::*;

/// A staging directory beside a destination (same filesystem, so swapping it in is a rename), journaled before
/// it is created: a restore killed while it exists leaves a journal entry that `voltar recover` (and the next
/// backup or restore) acts on by removing it.
pub(super) struct Staging {
    /// Absolute (the journal is read from any working directory).
    pub(super) path: PathBuf,
    seq: u64,
}

impl Staging {
    pub(super) fn make(path: &Path, journal: &Journal) -> Result<Staging> {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let parent = std::fs::canonicalize(parent)
            .with_context(|| format!("resolving {}", parent.display()))?;
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = parent.join(format!(
            "{STAGING_PREFIX}{base}-{:08x}",
            rand::random::<u32>()
        ));
        let seq = journal.will_create(&Leftover::StagingDir {
            path: staging.clone(),
        })?;
        if let Err(e) = std::fs::create_dir(&staging) {
            journal.removed(seq);
            return Err(anyhow!(e))
                .with_context(|| format!("creating staging directory {}", staging.display()));
        }
        Ok(Staging { path: staging, seq })
    }

    /// From the swap on, the directory holds the old contents of `of`: journal it as kept (see
    /// [`Leftover::PreviousContents`]) before the swap, so that a killed run leaves it for the user.
    pub(super) fn keep_after_swap(&mut self, journal: &Journal, of: &Path) -> Result<()> {
        let seq = journal.will_create(&Leftover::PreviousContents {
            path: self.path.clone(),
            of: of.to_path_buf(),
        })?;
        journal.removed(self.seq);
        self.seq = seq;
        Ok(())
    }

    /// Leave the directory where it is, for the user (the report names it); the journal forgets it.
    pub(super) fn forget(self, journal: &Journal) {
        journal.removed(self.seq);
    }

    /// Remove the directory and everything in it; the journal entry is closed only once it is gone. The error
    /// is a warning for the report: the journal keeps the entry, so recover removes it later.
    pub(super) fn remove(self, journal: &Journal) -> Result<(), String> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "cannot remove staging directory {}: {e} (`voltar recover` removes it later)",
                    self.path.display()
                ))
            }
        }
        journal.removed(self.seq);
        Ok(())
    }
}

/// Put `--path` `p` from `staging` in place under `path`: swapped with what is there (which ends up in staging), or
/// moved in. Both sides are reached one component at a time relative to directory descriptors, never through a
/// symlink, so a path of any length works (longer than PATH_MAX too).
pub(super) fn swap_path_in(staging: &Path, path: &Path, p: &Path) -> Result<()> {
    use crate::archive::unpack::{exists_at, open_dir_beneath};
    use std::os::fd::AsRawFd;
    let not_in_backup = || anyhow!("--path {}: not in the backup", p.display());
    let name = p.file_name().ok_or_else(not_in_backup)?;
    let parent = p.parent().unwrap_or(Path::new(""));
    let from_dir = open_dir_beneath(staging, parent, false).map_err(|_| not_in_backup())?;
    if !exists_at(from_dir.as_raw_fd(), name).unwrap_or(false) {
        return Err(not_in_backup());
    }
    let to_dir = open_dir_beneath(path, parent, true).with_context(|| {
        format!(
            "--path {}: opening its directory in {}",
            p.display(),
            path.display()
        )
    })?;
    let replace = exists_at(to_dir.as_raw_fd(), name)
        .with_context(|| format!("--path {}: looking at {}", p.display(), path.display()))?;
    let flags = if replace {
        RenameFlags::EXCHANGE
    } else {
        RenameFlags::NOREPLACE
    };
    rustix::fs::renameat_with(&from_dir, name, &to_dir, name, flags).map_err(|e| {
        anyhow!(
            "--path {}: moving it into {}: {e} (the filesystem must support renameat2)",
            p.display(),
            path.display()
        )
    })?;
    // The swap is a change to both directories: on disk before the restore reports it done.
    for dir in [&to_dir, &from_dir] {
        rustix::fs::fsync(dir)
            .with_context(|| format!("--path {}: flushing {}", p.display(), path.display()))?;
    }
    Ok(())
}

/// Atomically swap two paths on one filesystem (`renameat2(RENAME_EXCHANGE)`).
pub(super) fn exchange(a: &Path, b: &Path) -> Result<()> {
    rustix::fs::renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(|e| {
        anyhow!(
            "swapping {} into {}: {e} (the filesystem must support renameat2 RENAME_EXCHANGE)",
            a.display(),
            b.display()
        )
    })?;
    // Staging is made beside its destination, so this is one directory (two when called otherwise): flush the
    // exchange there before the restore reports it done.
    let mut parents: Vec<&Path> = [a, b]
        .iter()
        .map(|p| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        })
        .collect();
    parents.dedup();
    for parent in parents {
        rustix::fs::open(
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .and_then(|d| rustix::fs::fsync(&d))
        .map_err(|e| anyhow!("flushing {} after the swap: {e}", parent.display()))?;
    }
    Ok(())
}

pub(super) fn dir_has_entries(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

pub(super) fn current_names(root: &Path) -> BTreeSet<PathBuf> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.path().strip_prefix(root).ok().map(Path::to_path_buf))
        .collect()
}
