//! Streaming packer: walk a directory and write a POSIX PAX tar of it, one entry at a time, with a fixed buffer.
//!
//! # Why headers are built here and not with `tar::Builder`
//!
//! The `tar` crate follows symlinks by default, never writes hardlinks or xattrs from `append_dir_all`, knows no
//! sparse files, and writes past the size in its header when a file grows while it is appended, which corrupts
//! the archive. A PAX writer is small: this module writes the 512-byte ustar headers, the PAX extended headers
//! and the content itself, so every byte that reaches the sink is one we decided on.
//!
//! # Archive layout (what readers — GNU tar, `voltar verify`, `voltar restore` — can rely on)
//!
//! * Entries are in depth-first order, directory entry before its contents, siblings sorted by name bytes, so two
//!   runs over the same tree give the same archive.
//! * The root directory itself is the first entry, named `./` (type directory): it carries the root's mode,
//!   owner, mtime and xattrs. GNU tar applies it to the `-C` target. Every other name is relative without a
//!   leading `./` (`a`, `a/b`); directories end in `/`. No name is absolute or contains `..`.
//! * Regular files, directories, symlinks, hardlinks, FIFOs, character and block devices are written. Sockets
//!   (and any unknown type) are skipped with a warning: they cannot be restored meaningfully.
//! * ustar fields carry mode (`& 0o7777`, suid/sgid/sticky included), numeric uid/gid (uname/gname are left
//!   empty, so extraction is by number), size and whole-second mtime. A value that does not fit the octal field
//!   is written in GNU base-256 there *and* as a PAX record (`size`, `uid`, `gid`, `mtime`), so PAX readers and
//!   GNU tar agree.
//! * PAX records (one local `x` header before the entry, only when needed): `path` for names over 100 bytes,
//!   `linkpath` for link targets over 100 bytes, `mtime=<sec>.<nsec:09>` when the mtime has nanoseconds (or
//!   does not fit ustar), `SCHILY.xattr.<name>=<raw value>` per extended attribute (all namespaces we can read;
//!   `%` and `=` in names are written as `%25` and `%3D`, as GNU tar does). Names, link targets and xattr values
//!   are raw bytes: non-UTF-8 names are stored as they are, and GNU tar extracts the same bytes (in a C or UTF-8
//!   locale). No global `g` headers and no GNU `L`/`K` headers are ever written.
//! * Hardlinks: the second and later paths of one inode (same `st_dev` + `st_ino`, non-directory, `st_nlink`
//!   > 1) are written as type `1` entries whose link name is the first path's entry name, with size 0.
//! * Sparse files (fewer allocated blocks than the size, holes found with `SEEK_DATA`/`SEEK_HOLE`) use the GNU
//!   PAX sparse format 1.0, which GNU tar restores with the holes: PAX records `GNU.sparse.major=1`,
//!   `GNU.sparse.minor=0`, `GNU.sparse.name=<real name>`, `GNU.sparse.realsize=<apparent size>`; the ustar name
//!   is `GNUSparseFile.0/<base name>` (never used by sparse-aware readers; non-aware readers extract it under
//!   that visibly different name rather than as a wrong file); there is deliberately no `path` record. The
//!   entry data starts with the map — decimal ASCII lines `<count>\n` then `<offset>\n<length>\n` per region,
//!   zero-padded to 512 bytes — followed by the data regions back to back. A file ending in a hole has a last
//!   region `<realsize>\n0\n`. The header size is map + data. A reader based on the `tar` crate must itself look
//!   at `pax_extensions()` for these records: the crate does not know this format.
//!
//! # Counts (the contract with `voltar verify`, which recounts from the archive)
//!
//! Count every tar entry except extension headers (PAX `x`/`g`, GNU `L`/`K`):
//!
//! | typeflag | counts as | `bytes` += |
//! | --- | --- | --- |
//! | `0`, NUL (`\0`), `7` (regular, contiguous) | `files` | the entry's size; for a GNU sparse entry (it has a `GNU.sparse.realsize` PAX record) that realsize |
//! | `5` | `dirs` (the root `./` included) | 0 |
//! | `2` | `symlinks` | 0 |
//! | `1` | `hardlinks` | 0 |
//! | `3`, `4`, `6` | `other` | 0 |
//!
//! `entries` is the sum of the five. `bytes` is thus the apparent size of the regular files stored, not the size
//! of the tar stream.
//!
//! # Files that change while they are read
//!
//! The archive must stay valid whatever happens to the source, so the size in a header is a promise kept:
//! a file that grew is cut at that size, one that shrank (or hit a read error) is padded with zeros, both with a
//! warning. An entry that vanishes between the directory listing and its `lstat`/`open`, or that we may not
//! read, is skipped with a warning. Only an unreadable root, a failing sink ([`ArchiveError::Sink`]) or
//! cancellation stop the run. Warnings are also logged; at most [`MAX_WARNINGS`] are kept in the report (then
//! one line saying how many more there were), so a directory that vanishes with a million files cannot
//! exhaust memory.
//!
//! # Performance and memory
//!
//! One 1 MiB read buffer, reused, content read with `pread`; one 256 KiB output buffer (content chunks bypass
//! it). Per regular file: `open` + `fstat` (+ `flistxattr`, + one 1-byte probe read only when the last read
//! could not already detect growth). The file-type from `readdir` saves the `lstat` for regular files. Memory
//! grows only with the names of the directories on the current path, the hardlink table (inodes with
//! `nlink > 1`) and the sparse map of the current file (capped at [`MAX_SPARSE_REGIONS`]; past that the rest of
//! the file is stored as data).
//!
//! Symlinks are never followed; the root path itself is resolved as given. Paths longer than `PATH_MAX` cannot
//! be opened with path-based calls and are skipped with a warning.

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::fs::{self, File, FileType, Metadata, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::ArchiveError;
use crate::catalog::Counts;

const BLOCK: usize = 512;
/// Content read buffer, reused for every file.
const READ_BUF_SIZE: usize = 1 << 20;
/// Buffer for headers and small writes in front of the sink.
const OUT_BUF_SIZE: usize = 256 << 10;
/// `progress` is called at most about once per this many bytes (and once at the end).
const PROGRESS_STEP: u64 = 1 << 20;
/// Warnings kept in the report; later ones are only counted (and logged).
pub const MAX_WARNINGS: usize = 1000;
/// Sparse regions recorded per file; past this the rest of the file is stored as one data region.
pub const MAX_SPARSE_REGIONS: usize = 1 << 16;

/// Largest value of an octal ustar field of `len` bytes (len-1 digits and a NUL).
const fn octal_max(len: usize) -> u64 {
    (1u64 << (3 * (len as u32 - 1))) - 1
}

/// Options for [`pack`].
#[derive(Default, Clone, Copy)]
pub struct PackOptions<'a> {
    /// Checked between entries and between reads of a long file; when set, [`pack`] returns
    /// [`ArchiveError::Cancelled`] (the output is then incomplete and must be discarded).
    pub cancel: Option<&'a AtomicBool>,
}

/// What [`pack`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackReport {
    /// Counted by the rules in the module docs.
    pub counts: Counts,
    /// One line per entry skipped, cut or padded ("<relative path>: <what happened>").
    pub warnings: Vec<String>,
}

/// Walk `root` and write a PAX tar of its contents into `out` (layout and count rules in the module docs).
///
/// `progress` is called with the number of content bytes read since its last call (holes of sparse files are
/// not read, so they are not reported), in steps of about 1 MiB and once at the end. Returns the report and the
/// writer (flushed, so the caller can finish a compressor or commit a file). Fails only when the root cannot be
/// read ([`ArchiveError::Io`]), the writer fails ([`ArchiveError::Sink`]) or `opts.cancel` is set
/// ([`ArchiveError::Cancelled`]); everything else becomes a warning.
pub fn pack<W: io::Write>(
    root: &Path,
    out: W,
    opts: &PackOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<(PackReport, W), ArchiveError> {
    let root_err = |source| ArchiveError::Io {
        path: root.to_path_buf(),
        source,
    };
    let root_md = fs::metadata(root).map_err(root_err)?;
    if !root_md.is_dir() {
        return Err(root_err(io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    // An unreadable root aborts (nothing useful could be archived); anything below it only warns.
    let children = read_sorted(root).map_err(root_err)?;

    let mut p = Packer::new(out, opts.cancel, progress);
    p.check_cancel()?;
    let root_c = cstring(root.as_os_str().as_bytes());
    p.pax.clear();
    p.header_simple(
        b"./",
        b'5',
        &root_md,
        0,
        b"",
        (0, 0),
        XattrSrc::Path(root_c.as_deref()),
        b"./",
    )?;
    p.report.counts.dirs += 1;
    p.report.counts.entries += 1;

    let mut abs = root.to_path_buf();
    let mut rel = Vec::with_capacity(256);
    p.walk_entries(&mut abs, &mut rel, children)?;
    p.finish()
}

/// Directory entries sorted by name bytes, with the type from `readdir` when the filesystem gives one. The
/// directory handle is closed before returning so a deep tree does not hold one descriptor per level.
fn read_sorted(dir: &Path) -> io::Result<Vec<(OsString, Option<FileType>)>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        v.push((e.file_name(), e.file_type().ok()));
    }
    v.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(v)
}

fn cstring(b: &[u8]) -> Option<CString> {
    CString::new(b).ok()
}

/// Where extended attributes are read from: the open file (no path lookup), or the path without following it.
#[derive(Clone, Copy)]
enum XattrSrc<'a> {
    Fd(RawFd),
    Path(Option<&'a std::ffi::CStr>),
    None,
}

/// What happened while copying a file range.
enum Change {
    Same,
    Grew,
    Shrank,
    ReadError(io::Error),
}

struct Packer<'o, 'p, W: Write> {
    out: BufWriter<W>,
    buf: Vec<u8>,
    pax: Vec<u8>,
    map: Vec<u8>,
    xattr_names: Vec<u8>,
    xattr_value: Vec<u8>,
    /// (dev, ino) of archived inodes with nlink > 1 → their entry name.
    links: HashMap<(u64, u64), Vec<u8>>,
    report: PackReport,
    dropped_warnings: u64,
    cancel: Option<&'o AtomicBool>,
    progress: &'p mut dyn FnMut(u64),
    pending_progress: u64,
}

impl<'o, 'p, W: Write> Packer<'o, 'p, W> {
    fn new(out: W, cancel: Option<&'o AtomicBool>, progress: &'p mut dyn FnMut(u64)) -> Self {
        Packer {
            out: BufWriter::with_capacity(OUT_BUF_SIZE, out),
            buf: vec![0; READ_BUF_SIZE],
            pax: Vec::with_capacity(BLOCK),
            map: Vec::new(),
            xattr_names: Vec::new(),
            xattr_value: Vec::new(),
            links: HashMap::new(),
            report: PackReport::default(),
            dropped_warnings: 0,
            cancel,
            progress,
            pending_progress: 0,
        }
    }

    fn check_cancel(&self) -> Result<(), ArchiveError> {
        match self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(ArchiveError::Cancelled),
            _ => Ok(()),
        }
    }

    fn warn(&mut self, rel: &[u8], what: std::fmt::Arguments<'_>) {
        let name = if rel.is_empty() {
            ".".into()
        } else {
            String::from_utf8_lossy(rel)
        };
        let line = format!("{name}: {what}");
        tracing::warn!(target: "voltar::pack", "{line}");
        if self.report.warnings.len() < MAX_WARNINGS {
            self.report.warnings.push(line);
        } else {
            self.dropped_warnings += 1;
        }
    }

    fn sink(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        self.out.write_all(data).map_err(ArchiveError::Sink)
    }

    fn pad(&mut self, written: u64) -> Result<(), ArchiveError> {
        let rem = (written % BLOCK as u64) as usize;
        if rem != 0 {
            self.out
                .write_all(&[0u8; BLOCK][..BLOCK - rem])
                .map_err(ArchiveError::Sink)?;
        }
        Ok(())
    }

    fn add_progress(&mut self, n: u64) {
        self.pending_progress += n;
        if self.pending_progress >= PROGRESS_STEP {
            (self.progress)(self.pending_progress);
            self.pending_progress = 0;
        }
    }

    fn finish(mut self) -> Result<(PackReport, W), ArchiveError> {
        if self.pending_progress > 0 {
            (self.progress)(self.pending_progress);
        }
        // End of archive: two zero blocks.
        self.sink(&[0u8; 2 * BLOCK])?;
        self.out.flush().map_err(ArchiveError::Sink)?;
        let w = self
            .out
            .into_inner()
            .map_err(|e| ArchiveError::Sink(e.into_error()))?;
        let mut report = self.report;
        if self.dropped_warnings > 0 {
            report.warnings.push(format!(
                "{} more warnings not listed here (see the log)",
                self.dropped_warnings
            ));
        }
        Ok((report, w))
    }

    fn walk_entries(
        &mut self,
        abs: &mut PathBuf,
        rel: &mut Vec<u8>,
        entries: Vec<(OsString, Option<FileType>)>,
    ) -> Result<(), ArchiveError> {
        for (name, ft) in entries {
            self.check_cancel()?;
            let rel_len = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            abs.push(&name);
            let r = self.entry(abs, rel, ft);
            abs.pop();
            rel.truncate(rel_len);
            r?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        abs: &mut PathBuf,
        rel: &mut Vec<u8>,
        hint: Option<FileType>,
    ) -> Result<(), ArchiveError> {
        // Fast path for what readdir says is a regular file: open + fstat, no lstat. The metadata then
        // describes exactly the file we read.
        if hint.is_some_and(|t| t.is_file()) {
            match open_regular(abs) {
                Ok(f) => match f.metadata() {
                    Ok(md) if md.is_file() => return self.regular(abs, rel, &f, &md),
                    Ok(_) => {} // replaced by another type since readdir: look again below
                    Err(e) => {
                        self.warn(rel, format_args!("skipped: cannot stat: {e}"));
                        return Ok(());
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.warn(rel, format_args!("skipped: vanished during backup"));
                    return Ok(());
                }
                // Became a symlink (ELOOP) or a socket (ENXIO) since readdir: look again below.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENXIO)) => {}
                Err(e) => {
                    self.warn(rel, format_args!("skipped: cannot open: {e}"));
                    return Ok(());
                }
            }
        }
        let md = match fs::symlink_metadata(&*abs) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.warn(rel, format_args!("skipped: vanished during backup"));
                return Ok(());
            }
            Err(e) => {
                self.warn(rel, format_args!("skipped: cannot stat: {e}"));
                return Ok(());
            }
        };
        let t = md.file_type();
        if t.is_dir() {
            self.directory(abs, rel, &md)
        } else if t.is_file() {
            let f = match open_regular(abs) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.warn(rel, format_args!("skipped: vanished during backup"));
                    return Ok(());
                }
                Err(e) => {
                    self.warn(rel, format_args!("skipped: cannot open: {e}"));
                    return Ok(());
                }
            };
            match f.metadata() {
                Ok(md) if md.is_file() => self.regular(abs, rel, &f, &md),
                Ok(_) => {
                    self.warn(rel, format_args!("skipped: changed type during backup"));
                    Ok(())
                }
                Err(e) => {
                    self.warn(rel, format_args!("skipped: cannot stat: {e}"));
                    Ok(())
                }
            }
        } else if t.is_symlink() {
            let target = match fs::read_link(&*abs) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.warn(rel, format_args!("skipped: vanished during backup"));
                    return Ok(());
                }
                Err(e) => {
                    self.warn(rel, format_args!("skipped: cannot read symlink: {e}"));
                    return Ok(());
                }
            };
            if self.hardlink(rel, &md)? {
                return Ok(());
            }
            let c = cstring(abs.as_os_str().as_bytes());
            self.pax.clear();
            let target = target.as_os_str().as_bytes();
            self.header_simple(
                rel,
                b'2',
                &md,
                0,
                target,
                (0, 0),
                XattrSrc::Path(c.as_deref()),
                rel,
            )?;
            self.report.counts.symlinks += 1;
            self.report.counts.entries += 1;
            self.remember_link(rel, &md);
            Ok(())
        } else if t.is_fifo() || t.is_char_device() || t.is_block_device() {
            if self.hardlink(rel, &md)? {
                return Ok(());
            }
            let kind = if t.is_fifo() {
                b'6'
            } else if t.is_char_device() {
                b'3'
            } else {
                b'4'
            };
            let rdev = if kind == b'6' {
                (0, 0)
            } else {
                split_dev(md.rdev())
            };
            let c = cstring(abs.as_os_str().as_bytes());
            self.pax.clear();
            self.header_simple(
                rel,
                kind,
                &md,
                0,
                b"",
                rdev,
                XattrSrc::Path(c.as_deref()),
                rel,
            )?;
            self.report.counts.other += 1;
            self.report.counts.entries += 1;
            self.remember_link(rel, &md);
            Ok(())
        } else if t.is_socket() {
            self.warn(rel, format_args!("skipped: sockets cannot be archived"));
            Ok(())
        } else {
            self.warn(rel, format_args!("skipped: unknown file type"));
            Ok(())
        }
    }

    fn directory(
        &mut self,
        abs: &mut PathBuf,
        rel: &mut Vec<u8>,
        md: &Metadata,
    ) -> Result<(), ArchiveError> {
        let c = cstring(abs.as_os_str().as_bytes());
        let rel_len = rel.len();
        rel.push(b'/');
        self.pax.clear();
        let r = self.header_simple(
            rel,
            b'5',
            md,
            0,
            b"",
            (0, 0),
            XattrSrc::Path(c.as_deref()),
            rel,
        );
        rel.truncate(rel_len);
        r?;
        self.report.counts.dirs += 1;
        self.report.counts.entries += 1;
        // The directory entry is already written: if its contents cannot be listed, the archive still holds the
        // (empty) directory with its metadata, and the warning says what is missing.
        let children = match read_sorted(abs) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.warn(
                    rel,
                    format_args!("contents skipped: directory vanished during backup"),
                );
                return Ok(());
            }
            Err(e) => {
                self.warn(
                    rel,
                    format_args!("contents skipped: cannot list directory: {e}"),
                );
                return Ok(());
            }
        };
        self.walk_entries(abs, rel, children)
    }

    /// If this inode was archived before under another name, write a hardlink entry and return true.
    fn hardlink(&mut self, rel: &[u8], md: &Metadata) -> Result<bool, ArchiveError> {
        if md.nlink() < 2 || md.is_dir() {
            return Ok(false);
        }
        let Some(target) = self.links.get(&(md.dev(), md.ino())) else {
            return Ok(false);
        };
        let target = target.clone();
        self.pax.clear();
        self.header_simple(rel, b'1', md, 0, &target, (0, 0), XattrSrc::None, rel)?;
        self.report.counts.hardlinks += 1;
        self.report.counts.entries += 1;
        Ok(true)
    }

    fn remember_link(&mut self, rel: &[u8], md: &Metadata) {
        if md.nlink() > 1 && !md.is_dir() {
            self.links
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| rel.to_vec());
        }
    }

    fn regular(
        &mut self,
        abs: &Path,
        rel: &[u8],
        f: &File,
        md: &Metadata,
    ) -> Result<(), ArchiveError> {
        if self.hardlink(rel, md)? {
            return Ok(());
        }
        let size = md.size();
        // Cheap test first: only a file with fewer allocated bytes than its size can have holes.
        let regions = if md.blocks().saturating_mul(512) < size {
            data_regions(f, size)
        } else {
            None
        };
        self.pax.clear();
        match regions {
            None => {
                self.header_simple(
                    rel,
                    b'0',
                    md,
                    size,
                    b"",
                    (0, 0),
                    XattrSrc::Fd(f.as_raw_fd()),
                    rel,
                )?;
                after_header_hook(abs);
                let change = self.copy_range(f, 0, size, true)?;
                self.pad(size)?;
                self.report_change(rel, change, size);
            }
            Some(regions) => self.sparse(abs, rel, f, md, &regions)?,
        }
        self.report.counts.files += 1;
        self.report.counts.entries += 1;
        self.report.counts.bytes += size;
        self.remember_link(rel, md);
        Ok(())
    }

    fn sparse(
        &mut self,
        abs: &Path,
        rel: &[u8],
        f: &File,
        md: &Metadata,
        regions: &[(u64, u64)],
    ) -> Result<(), ArchiveError> {
        let size = md.size();
        // The map, as GNU tar writes it for format 1.0.
        self.map.clear();
        let ends_in_hole = regions.last().is_none_or(|&(o, l)| o + l < size);
        let n = regions.len() + usize::from(ends_in_hole);
        let _ = writeln!(self.map, "{n}");
        for &(o, l) in regions {
            let _ = write!(self.map, "{o}\n{l}\n");
        }
        if ends_in_hole {
            let _ = write!(self.map, "{size}\n0\n");
        }
        let map_len = self.map.len().div_ceil(BLOCK) * BLOCK;
        self.map.resize(map_len, 0);
        let stored = map_len as u64 + regions.iter().map(|r| r.1).sum::<u64>();

        pax_record_num(&mut self.pax, b"GNU.sparse.major", 1);
        pax_record_num(&mut self.pax, b"GNU.sparse.minor", 0);
        pax_record(&mut self.pax, b"GNU.sparse.name", rel);
        pax_record_num(&mut self.pax, b"GNU.sparse.realsize", size);
        let base = basename(rel);
        let mut fake = Vec::with_capacity(100);
        fake.extend_from_slice(b"GNUSparseFile.0/");
        fake.extend_from_slice(&base[..base.len().min(100 - fake.len())]);
        self.header_simple(
            &fake,
            b'0',
            md,
            stored,
            b"",
            (0, 0),
            XattrSrc::Fd(f.as_raw_fd()),
            rel,
        )?;
        after_header_hook(abs);

        let map = std::mem::take(&mut self.map);
        let r = self.sink(&map);
        self.map = map;
        r?;
        let mut worst = Change::Same;
        for &(o, l) in regions {
            match self.copy_range(f, o, l, false)? {
                Change::Same => {}
                c => worst = c,
            }
        }
        self.pad(stored)?;
        if matches!(worst, Change::Same) {
            // The regions were taken at one moment; a size change since then is still worth a warning.
            if let Ok(now) = f.metadata() {
                if now.size() > size {
                    worst = Change::Grew;
                } else if now.size() < size {
                    worst = Change::Shrank;
                }
            }
        }
        self.report_change(rel, worst, size);
        Ok(())
    }

    fn report_change(&mut self, rel: &[u8], change: Change, size: u64) {
        match change {
            Change::Same => {}
            Change::Grew => self.warn(
                rel,
                format_args!("file grew while being read; archived its first {size} bytes"),
            ),
            Change::Shrank => self.warn(
                rel,
                format_args!("file shrank while being read; padded with zeros to {size} bytes"),
            ),
            Change::ReadError(e) => self.warn(
                rel,
                format_args!("read error ({e}); the rest of the file is archived as zeros"),
            ),
        }
    }

    /// Copy exactly `len` bytes from `start` into the archive: cut if the file has more, zero-pad if it has less.
    /// With `probe_end`, also find out whether the file continues past `start + len` (it grew).
    fn copy_range(
        &mut self,
        f: &File,
        start: u64,
        len: u64,
        probe_end: bool,
    ) -> Result<Change, ArchiveError> {
        let mut done = 0u64;
        let mut probed = false;
        let mut change = Change::Same;
        while done < len {
            self.check_cancel()?;
            let remaining = len - done;
            // On the last read ask for one byte more than needed: if it comes, the file grew. This costs no
            // extra syscall in the common case.
            let want = if probe_end && remaining < self.buf.len() as u64 {
                probed = true;
                remaining as usize + 1
            } else {
                remaining.min(self.buf.len() as u64) as usize
            };
            match f.read_at(&mut self.buf[..want], start + done) {
                Ok(0) => {
                    change = Change::Shrank;
                    break;
                }
                Ok(mut n) => {
                    if n as u64 > remaining {
                        n = remaining as usize;
                        change = Change::Grew;
                    }
                    self.out
                        .write_all(&self.buf[..n])
                        .map_err(ArchiveError::Sink)?;
                    done += n as u64;
                    self.add_progress(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    change = Change::ReadError(e);
                    break;
                }
            }
        }
        if done < len {
            // Keep the header's promise: fill the rest with zeros.
            self.buf.fill(0);
            while done < len {
                let n = (len - done).min(self.buf.len() as u64) as usize;
                self.out
                    .write_all(&self.buf[..n])
                    .map_err(ArchiveError::Sink)?;
                done += n as u64;
            }
        } else if probe_end && !probed {
            let mut one = [0u8; 1];
            loop {
                match f.read_at(&mut one, start + len) {
                    Ok(1) => change = Change::Grew,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    _ => {}
                }
                break;
            }
        }
        Ok(change)
    }

    /// Write the PAX extended header (records already in `self.pax` plus the ones this entry needs) and the
    /// ustar header. `name` goes in the header (PAX `path` when longer than 100 bytes); `log_name` names the
    /// entry in warnings.
    #[allow(clippy::too_many_arguments)]
    fn header_simple(
        &mut self,
        name: &[u8],
        kind: u8,
        md: &impl HeaderStat,
        size: u64,
        link: &[u8],
        rdev: (u64, u64),
        xattrs: XattrSrc<'_>,
        log_name: &[u8],
    ) -> Result<(), ArchiveError> {
        let mut h = [0u8; BLOCK];
        if name.len() > 100 {
            pax_record(&mut self.pax, b"path", name);
            h[..100].copy_from_slice(&name[..100]);
        } else {
            h[..name.len()].copy_from_slice(name);
        }
        if link.len() > 100 {
            pax_record(&mut self.pax, b"linkpath", link);
            h[157..257].copy_from_slice(&link[..100]);
        } else {
            h[157..157 + link.len()].copy_from_slice(link);
        }
        put_octal(&mut h[100..108], u64::from(md.mode() & 0o7777));
        if !put_num(&mut h[108..116], u64::from(md.uid())) {
            pax_record_num(&mut self.pax, b"uid", u64::from(md.uid()));
        }
        if !put_num(&mut h[116..124], u64::from(md.gid())) {
            pax_record_num(&mut self.pax, b"gid", u64::from(md.gid()));
        }
        if !put_num(&mut h[124..136], size) {
            pax_record_num(&mut self.pax, b"size", size);
        }
        let (sec, nsec) = (md.mtime(), md.mtime_nsec());
        let sec_fits = sec >= 0 && (sec as u64) <= octal_max(12);
        put_octal(
            &mut h[136..148],
            if sec_fits {
                sec as u64
            } else if sec < 0 {
                0
            } else {
                octal_max(12)
            },
        );
        if nsec != 0 || !sec_fits {
            let mut v = Vec::with_capacity(32);
            if sec < 0 && nsec > 0 {
                // stat gives floor seconds + positive nanoseconds; PAX wants a signed decimal number.
                let _ = write!(v, "-{}.{:09}", -(sec + 1), 1_000_000_000 - nsec);
            } else {
                let _ = write!(v, "{sec}.{nsec:09}");
            }
            pax_record(&mut self.pax, b"mtime", &v);
        }
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        put_num(&mut h[329..337], rdev.0);
        put_num(&mut h[337..345], rdev.1);

        if let Err(e) = self.collect_xattrs(xattrs) {
            let e = e.to_string();
            self.warn(
                log_name,
                format_args!("extended attributes not archived: {e}"),
            );
        }

        if !self.pax.is_empty() {
            let mut x = [0u8; BLOCK];
            let base = basename(name);
            let mut xn = Vec::with_capacity(100);
            xn.extend_from_slice(b"PaxHeaders/");
            xn.extend_from_slice(&base[..base.len().min(100 - xn.len())]);
            x[..xn.len()].copy_from_slice(&xn);
            put_octal(&mut x[100..108], 0o644);
            put_octal(&mut x[108..116], 0);
            put_octal(&mut x[116..124], 0);
            put_num(&mut x[124..136], self.pax.len() as u64);
            put_octal(&mut x[136..148], if sec_fits { sec as u64 } else { 0 });
            x[156] = b'x';
            x[257..263].copy_from_slice(b"ustar\0");
            x[263..265].copy_from_slice(b"00");
            checksum(&mut x);
            self.sink(&x)?;
            let pax = std::mem::take(&mut self.pax);
            let r = self.sink(&pax).and_then(|()| self.pad(pax.len() as u64));
            self.pax = pax;
            r?;
        }
        checksum(&mut h);
        self.sink(&h)
    }

    /// Append `SCHILY.xattr.*` records for every extended attribute of the source to `self.pax`.
    fn collect_xattrs(&mut self, src: XattrSrc<'_>) -> io::Result<()> {
        if matches!(src, XattrSrc::None | XattrSrc::Path(None)) {
            return Ok(());
        }
        // SAFETY (closure): the buffer has `cap` writable bytes; the call writes at most that many.
        let listed = fill_growing(&mut self.xattr_names, 1024, |buf, cap| unsafe {
            match src {
                XattrSrc::Fd(fd) => libc::flistxattr(fd, buf.cast(), cap),
                XattrSrc::Path(Some(p)) => libc::llistxattr(p.as_ptr(), buf.cast(), cap),
                _ => unreachable!("handled above"),
            }
        });
        match listed {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENOENT)) => {
                return Ok(())
            }
            Err(e) => return Err(e),
        }
        if self.xattr_names.is_empty() {
            return Ok(());
        }
        let names = std::mem::take(&mut self.xattr_names);
        let mut result = Ok(());
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            match self.read_xattr(src, name) {
                Ok(true) => {
                    let mut key = Vec::with_capacity(13 + name.len());
                    key.extend_from_slice(b"SCHILY.xattr.");
                    for &b in name {
                        match b {
                            b'%' => key.extend_from_slice(b"%25"),
                            b'=' => key.extend_from_slice(b"%3D"),
                            b => key.push(b),
                        }
                    }
                    pax_record(&mut self.pax, &key, &self.xattr_value);
                }
                Ok(false) => {} // removed since the listing
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.xattr_names = names;
        result
    }

    /// Read one attribute value into `self.xattr_value`; false when it no longer exists.
    fn read_xattr(&mut self, src: XattrSrc<'_>, name: &[u8]) -> io::Result<bool> {
        let Ok(cname) = CString::new(name) else {
            return Ok(false);
        };
        if matches!(src, XattrSrc::None | XattrSrc::Path(None)) {
            return Ok(false);
        }
        // SAFETY (closure): the buffer has `cap` writable bytes; the call writes at most that many.
        let read = fill_growing(&mut self.xattr_value, 256, |buf, cap| unsafe {
            match src {
                XattrSrc::Fd(fd) => libc::fgetxattr(fd, cname.as_ptr(), buf.cast(), cap),
                XattrSrc::Path(Some(p)) => {
                    libc::lgetxattr(p.as_ptr(), cname.as_ptr(), buf.cast(), cap)
                }
                _ => unreachable!("handled above"),
            }
        });
        match read {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Call a `*xattr`-style function that fills `buf` (up to `cap` bytes) and returns the length or -1, growing the
/// buffer (from at least `min`) while it answers ERANGE. On success `buf` holds exactly the returned bytes.
fn fill_growing(
    buf: &mut Vec<u8>,
    min: usize,
    mut call: impl FnMut(*mut u8, usize) -> isize,
) -> io::Result<()> {
    if buf.capacity() < min {
        buf.reserve(min);
    }
    loop {
        let cap = buf.capacity();
        buf.clear();
        let n = call(buf.as_mut_ptr(), cap);
        if n >= 0 {
            // SAFETY: the call initialised the first `n` (≤ cap) bytes.
            unsafe { buf.set_len(n as usize) };
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) {
            buf.reserve(cap * 2);
        } else {
            return Err(e);
        }
    }
}

/// The inode fields a header needs. A trait so that unit tests can write headers for values (sizes over
/// 8 GiB, huge ids) that no cheap test file has.
trait HeaderStat {
    fn mode(&self) -> u32;
    fn uid(&self) -> u32;
    fn gid(&self) -> u32;
    fn mtime(&self) -> i64;
    fn mtime_nsec(&self) -> i64;
}

impl HeaderStat for Metadata {
    fn mode(&self) -> u32 {
        MetadataExt::mode(self)
    }
    fn uid(&self) -> u32 {
        MetadataExt::uid(self)
    }
    fn gid(&self) -> u32 {
        MetadataExt::gid(self)
    }
    fn mtime(&self) -> i64 {
        MetadataExt::mtime(self)
    }
    fn mtime_nsec(&self) -> i64 {
        MetadataExt::mtime_nsec(self)
    }
}

/// Open a regular file for reading without following a symlink, without blocking on a FIFO that replaced it,
/// and without touching its atime where the kernel allows (O_NOATIME needs ownership or CAP_FOWNER).
fn open_regular(p: &Path) -> io::Result<File> {
    let base = libc::O_NOFOLLOW | libc::O_NONBLOCK;
    match OpenOptions::new()
        .read(true)
        .custom_flags(base | libc::O_NOATIME)
        .open(p)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            OpenOptions::new().read(true).custom_flags(base).open(p)
        }
        r => r,
    }
}

/// The data regions of a file with holes, or None when it has no hole (or the filesystem cannot tell).
fn data_regions(f: &File, size: u64) -> Option<Vec<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let mut regions = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on a valid descriptor; only the file offset changes (we read with pread).
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole from `pos` to the end
            }
            return None;
        }
        let data = data as u64;
        if data >= size {
            break;
        }
        if regions.len() + 1 >= MAX_SPARSE_REGIONS {
            regions.push((data, size - data));
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return None;
        }
        let hole = (hole as u64).min(size);
        regions.push((data, hole - data));
        pos = hole;
    }
    if regions.len() == 1 && regions[0] == (0, size) {
        return None;
    }
    Some(regions)
}

fn basename(name: &[u8]) -> &[u8] {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// glibc's `major()`/`minor()`.
fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    (major, minor)
}

/// Octal, zero-padded, NUL-terminated; the caller guarantees the value fits.
fn put_octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let mut v = v;
    for i in (0..digits).rev() {
        field[i] = b'0' + (v & 7) as u8;
        v >>= 3;
    }
    field[digits] = 0;
}

/// Octal if it fits (returns true), else GNU base-256 (returns false: the caller adds a PAX record).
fn put_num(field: &mut [u8], v: u64) -> bool {
    if v <= octal_max(field.len()) {
        put_octal(field, v);
        true
    } else {
        // Big-endian in the low bytes, high bit of the first byte set (values here are < 2^63).
        field.fill(0);
        let n = field.len();
        field[n - 8..].copy_from_slice(&v.to_be_bytes());
        field[0] |= 0x80;
        false
    }
}

fn checksum(h: &mut [u8; BLOCK]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put_octal(&mut h[148..155], u64::from(sum));
    h[155] = b' ';
}

/// One PAX record: `<len> <key>=<value>\n`, where len counts the whole record including its own digits.
fn pax_record(buf: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = base + 1;
    loop {
        let next = base + decimal_digits(len);
        if next == len {
            break;
        }
        len = next;
    }
    let _ = write!(buf, "{len} ");
    buf.extend_from_slice(key);
    buf.push(b'=');
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

fn pax_record_num(buf: &mut Vec<u8>, key: &[u8], v: u64) {
    let mut tmp = [0u8; 20];
    let mut w = &mut tmp[..];
    let _ = write!(w, "{v}");
    let n = 20 - w.len();
    pax_record(buf, key, &tmp[..n]);
}

fn decimal_digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

#[cfg(not(test))]
#[inline(always)]
fn after_header_hook(_: &Path) {}

#[cfg(test)]
fn after_header_hook(p: &Path) {
    hooks::after_header(p)
}

#[cfg(test)]
mod hooks {
    //! A deterministic way to change a file between writing its header and reading it.
    use std::cell::RefCell;
    use std::path::Path;

    type Hook = Box<dyn FnMut(&Path)>;
    thread_local! {
        pub static AFTER_HEADER: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    pub fn after_header(p: &Path) {
        AFTER_HEADER.with(|h| {
            if let Some(f) = h.borrow_mut().as_mut() {
                f(p)
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pack_vec(root: &Path) -> (PackReport, Vec<u8>) {
        pack(root, Vec::new(), &PackOptions::default(), &mut |_| {}).expect("pack")
    }

    fn with_hook<T>(hook: impl FnMut(&Path) + 'static, f: impl FnOnce() -> T) -> T {
        hooks::AFTER_HEADER.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
        let r = f();
        hooks::AFTER_HEADER.with(|h| *h.borrow_mut() = None);
        r
    }

    /// (name, size field, data) of every non-extension entry, read with the tar crate.
    fn entries(tar: &[u8]) -> Vec<(Vec<u8>, u64, Vec<u8>)> {
        let mut a = tar::Archive::new(tar);
        let mut v = Vec::new();
        for e in a.entries().expect("entries") {
            let mut e = e.expect("entry");
            let name = e.path_bytes().into_owned();
            let size = e.size();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read");
            v.push((name, size, data));
        }
        v
    }

    #[test]
    fn pax_record_length_counts_its_own_digits() {
        for vlen in [
            0usize, 1, 3, 4, 5, 90, 93, 94, 95, 96, 990, 995, 996, 997, 1000,
        ] {
            let mut b = Vec::new();
            pax_record(&mut b, b"path", &vec![b'a'; vlen]);
            let sp = b.iter().position(|&c| c == b' ').unwrap();
            let len: usize = std::str::from_utf8(&b[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, b.len(), "value length {vlen}");
        }
    }

    struct FakeStat;
    impl HeaderStat for FakeStat {
        fn mode(&self) -> u32 {
            0o100640
        }
        fn uid(&self) -> u32 {
            u32::MAX - 1
        }
        fn gid(&self) -> u32 {
            3_000_000
        }
        fn mtime(&self) -> i64 {
            1 << 40
        }
        fn mtime_nsec(&self) -> i64 {
            7
        }
    }

    #[test]
    fn values_beyond_ustar_fields_are_read_back_by_the_tar_crate() {
        let mut progress = |_| {};
        let mut p = Packer::new(Vec::new(), None, &mut progress);
        let size = 9 << 30; // over ustar's 8 GiB
        let name = vec![b'x'; 150];
        let link = vec![b'y'; 200];
        p.header_simple(
            b"l",
            b'2',
            &FakeStat,
            0,
            &link,
            (0, 0),
            XattrSrc::None,
            b"l",
        )
        .unwrap();
        p.header_simple(
            &name,
            b'0',
            &FakeStat,
            size,
            b"",
            (0, 0),
            XattrSrc::None,
            b"big",
        )
        .unwrap();
        let out = p.out.into_inner().unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let mut it = a.entries().unwrap();
        let l = it.next().unwrap().unwrap();
        assert_eq!(l.link_name_bytes().as_deref(), Some(&link[..]));
        let mut e = it.next().unwrap().unwrap();
        assert_eq!(e.size(), size);
        assert_eq!(e.header().size().unwrap(), size, "base-256 ustar field");
        assert_eq!(e.header().uid().unwrap(), u64::from(u32::MAX - 1));
        assert_eq!(e.header().gid().unwrap(), 3_000_000);
        assert_eq!(e.header().mode().unwrap(), 0o640);
        assert_eq!(e.path_bytes().as_ref(), &name[..]);
        let mtime = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|r| r.unwrap())
            .find(|r| r.key() == Ok("mtime"))
            .map(|r| r.value().unwrap().to_string());
        assert_eq!(mtime.as_deref(), Some("1099511627776.000000007"));
    }

    #[test]
    fn numbers_that_do_not_fit_use_base256() {
        let mut f = [0u8; 8];
        assert!(put_num(&mut f, 2_097_151));
        assert_eq!(&f, b"7777777\0");
        assert!(!put_num(&mut f, 2_097_152));
        assert_eq!(f[0], 0x80);
        assert_eq!(u64::from_be_bytes(f) & !(0x80 << 56), 2_097_152);
    }

    #[test]
    fn growing_file_is_cut_at_header_size_with_warning() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("g"), vec![7u8; 10_000]).unwrap();
        let (rep, tar) = with_hook(
            |p| {
                if p.ends_with("g") {
                    let mut f = OpenOptions::new().append(true).open(p).unwrap();
                    f.write_all(&[9u8; 5000]).unwrap();
                }
            },
            || pack_vec(d.path()),
        );
        let e = entries(&tar);
        let g = e.iter().find(|e| e.0 == b"g").expect("entry g");
        assert_eq!(g.1, 10_000);
        assert_eq!(g.2, vec![7u8; 10_000]);
        assert!(
            rep.warnings.iter().any(|w| w.starts_with("g: file grew")),
            "{:?}",
            rep.warnings
        );
        assert_eq!(rep.counts.bytes, 10_000);
    }

    #[test]
    fn growing_file_of_exact_buffer_multiple_is_detected() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("g"), vec![7u8; READ_BUF_SIZE]).unwrap();
        fs::write(d.path().join("empty"), b"").unwrap();
        let (rep, tar) = with_hook(
            |p| {
                let mut f = OpenOptions::new().append(true).open(p).unwrap();
                f.write_all(b"more").unwrap();
            },
            || pack_vec(d.path()),
        );
        let e = entries(&tar);
        assert_eq!(
            e.iter().find(|e| e.0 == b"g").unwrap().2.len(),
            READ_BUF_SIZE
        );
        assert_eq!(e.iter().find(|e| e.0 == b"empty").unwrap().2.len(), 0);
        assert!(
            rep.warnings.iter().any(|w| w.starts_with("g: file grew")),
            "{:?}",
            rep.warnings
        );
        assert!(
            rep.warnings
                .iter()
                .any(|w| w.starts_with("empty: file grew")),
            "{:?}",
            rep.warnings
        );
    }

    #[test]
    fn shrinking_file_is_padded_with_warning() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("s"), vec![7u8; 3 * READ_BUF_SIZE + 5]).unwrap();
        fs::write(d.path().join("t"), b"after").unwrap();
        let (rep, tar) = with_hook(
            |p| {
                if p.ends_with("s") {
                    OpenOptions::new()
                        .write(true)
                        .open(p)
                        .unwrap()
                        .set_len(100)
                        .unwrap();
                }
            },
            || pack_vec(d.path()),
        );
        let e = entries(&tar);
        let s = e.iter().find(|e| e.0 == b"s").unwrap();
        assert_eq!(s.1, 3 * READ_BUF_SIZE as u64 + 5);
        assert_eq!(&s.2[..100], &[7u8; 100][..]);
        assert!(s.2[100..].iter().all(|&b| b == 0));
        // The entry after it is intact: the archive stayed aligned.
        assert_eq!(e.iter().find(|e| e.0 == b"t").unwrap().2, b"after");
        assert!(
            rep.warnings.iter().any(|w| w.starts_with("s: file shrank")),
            "{:?}",
            rep.warnings
        );
    }

    #[test]
    fn sparse_file_shrinking_is_padded() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sp");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 8192], 32 << 20).unwrap();
        drop(f);
        let (rep, tar) = with_hook(
            |p| {
                if p.ends_with("sp") {
                    OpenOptions::new()
                        .write(true)
                        .open(p)
                        .unwrap()
                        .set_len(1 << 20)
                        .unwrap();
                }
            },
            || pack_vec(d.path()),
        );
        assert!(
            rep.warnings
                .iter()
                .any(|w| w.starts_with("sp: file shrank")),
            "{:?}",
            rep.warnings
        );
        assert_eq!(rep.counts.bytes, 64 << 20);
        // Valid archive: the tar crate reads every entry to the end.
        assert_eq!(entries(&tar).len(), 2);
    }

    #[test]
    fn vanished_file_is_skipped_with_warning() {
        let d = tempfile::tempdir().unwrap();
        for n in ["a", "b", "c"] {
            fs::write(d.path().join(n), n).unwrap();
        }
        let root = d.path().to_path_buf();
        let (rep, tar) = with_hook(
            move |p| {
                if p.ends_with("a") {
                    let _ = fs::remove_file(root.join("b"));
                }
            },
            || pack_vec(d.path()),
        );
        let names: Vec<_> = entries(&tar).into_iter().map(|e| e.0).collect();
        assert_eq!(names, vec![b"./".to_vec(), b"a".to_vec(), b"c".to_vec()]);
        assert!(
            rep.warnings
                .iter()
                .any(|w| w.starts_with("b: skipped: vanished")),
            "{:?}",
            rep.warnings
        );
        assert_eq!(rep.counts.files, 2);
    }

    #[test]
    fn root_that_is_not_a_directory_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"x").unwrap();
        let r = pack(&f, Vec::new(), &PackOptions::default(), &mut |_| {});
        assert!(matches!(r, Err(ArchiveError::Io { .. })));
        let r = pack(
            &d.path().join("missing"),
            Vec::new(),
            &PackOptions::default(),
            &mut |_| {},
        );
        assert!(matches!(r, Err(ArchiveError::Io { .. })));
    }

    #[test]
    fn progress_sums_to_bytes_read() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), vec![1u8; 3 << 20]).unwrap();
        fs::write(d.path().join("b"), vec![1u8; 10]).unwrap();
        let mut total = 0;
        let (rep, _) = pack(d.path(), Vec::new(), &PackOptions::default(), &mut |n| {
            total += n
        })
        .unwrap();
        assert_eq!(total, (3 << 20) + 10);
        assert_eq!(rep.counts.bytes, total);
    }
}
