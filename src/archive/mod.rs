//! Archives: streaming pack (walk → PAX tar), compression layers, and safe unpack.
//! Knows nothing about Docker or storage.

pub mod compress;
mod fsat;
pub mod mirror;
mod names;
pub mod pack;
mod pax;
mod readahead;
pub mod repack;
pub mod unpack;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Counts of what an archive holds: the manifest records them per source (`catalog`), `verify` and `restore`
/// recompute them from the archive and compare.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Counts {
    /// All tar entries (excluding PAX/GNU metadata headers).
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// FIFOs and device nodes.
    pub other: u64,
    /// Sum of regular-file content sizes as recorded in the headers.
    pub bytes: u64,
}

/// What one archive entry counts as in [`Counts`]. The one place the counting rules (`unpack`'s module docs) are
/// applied: `pack` counts what it writes, `unpack`/`scan` what they read, verify's restore test what it restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// A regular file, with its logical size.
    File(u64),
    Dir,
    Symlink,
    Hardlink,
    /// A FIFO or a device node.
    Other,
}

impl Counts {
    /// Count one entry.
    #[inline]
    pub fn add(&mut self, kind: Counted) {
        match kind {
            Counted::File(bytes) => {
                self.files += 1;
                self.bytes += bytes;
            }
            Counted::Dir => self.dirs += 1,
            Counted::Symlink => self.symlinks += 1,
            Counted::Hardlink => self.hardlinks += 1,
            Counted::Other => self.other += 1,
        }
        self.entries += 1;
    }
}

/// Count a tree on disk as an archive of it counts (without the root itself): a file with several links in the
/// tree counts once as a file and once per extra link, bytes once per inode. Walks with `*at()` calls from
/// directory descriptors, never following a symlink, so paths of any length are counted.
pub fn count_tree(root: &std::path::Path) -> Result<Counts, String> {
    let mut found = Counts::default();
    let mut seen = std::collections::HashSet::new();
    let dir = fsat::open_root(root).map_err(|e| format!("opening {}: {e}", root.display()))?;
    count_dir(&dir, &mut found, &mut seen)
        .map_err(|e| format!("walking {}: {e}", root.display()))?;
    Ok(found)
}

fn count_dir(
    dir: &std::os::fd::OwnedFd,
    found: &mut Counts,
    seen: &mut std::collections::HashSet<(u64, u64)>,
) -> std::io::Result<()> {
    use rustix::fs::{statat, AtFlags, FileType};
    use std::os::fd::AsRawFd;
    for (name, _) in fsat::read_sorted(dir.as_raw_fd())? {
        let st = statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let sub = fsat::open_dir_at(dir.as_raw_fd(), &name)?;
                count_dir(&sub, found, seen)?;
                Counted::Dir
            }
            FileType::Symlink => Counted::Symlink,
            FileType::RegularFile if st.st_nlink > 1 && !seen.insert((st.st_dev, st.st_ino)) => {
                Counted::Hardlink
            }
            FileType::RegularFile => Counted::File(st.st_size as u64),
            _ => Counted::Other,
        };
        found.add(kind);
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the source or writing the destination failed. (Errors here that print their cause do not also
    /// chain it as `source()`: the message is the whole story, once.)
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// Writing the archive stream failed (the sink: storage, pipe…).
    #[error("writing archive: {0}")]
    Sink(std::io::Error),
    /// The archive tries to write outside its target or otherwise breaks the safety rules.
    #[error("unsafe archive entry `{entry}`: {reason}")]
    Unsafe { entry: String, reason: String },
    /// The archive stream is damaged (bad header, checksum, truncated, decompression error).
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    #[error("cancelled")]
    Cancelled,
}
