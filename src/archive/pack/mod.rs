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
//!   leading `./` (`a`, `a/b`); directories end in `/`. No name is absolute or contains `..`. A path far beyond
//!   `PATH_MAX` is stored like any other (see "Walking" below), up to [`MAX_PATH_LEN`].
//! * Regular files, directories, symlinks, hardlinks, FIFOs, character and block devices are written. Sockets
//!   are skipped with a warning, as GNU tar does: a socket holds no data, and the program listening on it
//!   creates it again. An entry of a type we do not know is *not archived* (see below).
//! * ustar fields carry mode (`& 0o7777`, suid/sgid/sticky included), numeric uid/gid (uname/gname are left
//!   empty, so extraction is by number), size and whole-second mtime. A value that does not fit the octal field
//!   is written in GNU base-256 there *and* as a PAX record (`size`, `uid`, `gid`, `mtime`), so PAX readers and
//!   GNU tar agree.
//! * PAX records (one local `x` header before the entry, only when needed): `path` for names over 100 bytes,
//!   `linkpath` for link targets (symlink targets and hardlink targets alike) over 100 bytes,
//!   `mtime=<sec>.<nsec:09>` when the mtime has nanoseconds (or does not fit ustar),
//!   `SCHILY.xattr.<name>=<raw value>` per extended attribute (all namespaces we can read; `%` and `=` in names
//!   are written as `%25` and `%3D`, as GNU tar does). Names, link targets and xattr values are raw bytes:
//!   non-UTF-8 names are stored as they are, and GNU tar extracts the same bytes (in a C or UTF-8 locale). No
//!   global `g` headers and no GNU `L`/`K` headers are ever written.
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
//! # No silent gaps: warnings and entries not archived
//!
//! The archive must stay valid whatever happens to the source, so the size in a header is a promise kept. What
//! the packer could not store falls in one of two classes, reported separately:
//!
//! * **Warnings** ([`PackReport::warnings`]) — the source changed while it was read, which a live backup must
//!   tolerate: a file that grew is cut at its header size, one that shrank is padded with zeros, an entry (or a
//!   directory) that vanished between the listing and its `open`/`stat` is skipped. Sockets are skipped with a
//!   warning too.
//! * **Not archived** ([`PackReport::not_archived`]) — an entry that existed when it was read but is missing
//!   from the archive, wholly or in part: it could not be opened, stat'ed or read (permissions, EIO, …), a
//!   directory whose contents could not be listed (its own entry is written, its contents are missing), a file
//!   that hit a read error (the rest of its data is stored as zeros so the archive stays aligned), extended
//!   attributes that could not be read or are too big for an archive header (over [`MAX_META_HEADER`], which
//!   restore refuses), an entry of an unknown type, an entry whose path is longer than [`MAX_PATH_LEN`] (480
//!   KiB: restore refuses bigger headers; everything below it is left out too, under that one line). A backup
//!   with any such entry is not complete, and the caller must say so (`voltar backup` reports the source as
//!   `incomplete`, exit code 1).
//!
//! Only an unreadable root, a failing sink ([`ArchiveError::Sink`]) or cancellation stop the run. Both lists
//! are also logged; at most [`MAX_WARNINGS`] lines are kept in each (then [`PackReport::not_archived_count`]
//! and one line saying how many more warnings there were), so a directory that vanishes with a million files
//! cannot exhaust memory.
//!
//! # Walking: `*at()` calls relative to directory descriptors
//!
//! No system call ever receives more than one path component (the root, opened once, aside). Each directory is
//! opened with `openat(parent_fd, name, O_DIRECTORY | O_NOFOLLOW)`, its entries are listed through that
//! descriptor, and every child is reached with `openat`/`fstatat(AT_SYMLINK_NOFOLLOW)`/`readlinkat` relative to
//! it; extended attributes are read from the open file or directory (`flistxattr`/`fgetxattr`), and for
//! symlinks, FIFOs and device nodes (which must not be opened) through `/proc/self/fd/<dir>/<name>` with
//! `llistxattr`/`lgetxattr`. So a path of any length is archived (the kernel's `PATH_MAX` limits what one
//! call may be given, not how deep a tree is; `voltar restore` can create such trees), and a symlink swapped in
//! for a directory during the walk is never followed (`O_NOFOLLOW` on every open).
//!
//! Descriptors are bounded: the walk keeps an explicit stack of the directories on the current path (no
//! recursion, so a deep tree cannot overflow the thread's stack either) with at most [`MAX_OPEN_DIRS`] of them
//! open. Going deeper closes the shallowest open one (the root stays open); coming back up re-opens a closed
//! directory through `..` of its child, checked by device and inode to be the same directory, or else by name
//! from the nearest open ancestor, each step checked the same way. If neither works the directory was moved
//! during the backup: the rest of its contents is skipped with a warning, as for a vanished directory.
//!
//! # Performance and memory
//!
//! One 1 MiB read buffer, reused, content read with `pread`; one 256 KiB output buffer (content chunks bypass
//! it). Per regular file: `openat` + `fstat` (+ `flistxattr`, + one 1-byte probe read only when the last read
//! could not already detect growth). The file type from `readdir` saves the `fstatat` for regular files and
//! directories. Memory grows only with the names of the entries of the directories on the current path, the
//! hardlink table (inodes with `nlink > 1`) and the sparse map of the current file (capped at
//! [`MAX_SPARSE_REGIONS`]; past that the rest of the file is stored as data).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::SeekFrom;
use rustix::io::Errno;

use super::fsat::{
    get_xattr, is_enoent, list_xattrs, open_dir_at, open_regular_at, open_root, read_link_at,
    read_sorted, Stat, XattrAt,
};
use super::pax::{
    checksum, octal_max, pax_record, pax_record_num, put_num, put_octal, MAX_META_HEADER,
};
use super::{ArchiveError, Counted};
use crate::archive::Counts;

mod content;
mod header;
use header::split_dev;

const BLOCK: usize = 512;
/// Content read buffer, reused for every file.
const READ_BUF_SIZE: usize = 1 << 20;
/// Buffer for headers and small writes in front of the sink.
const OUT_BUF_SIZE: usize = 256 << 10;
/// `progress` is called at most about once per this many bytes (and once at the end).
const PROGRESS_STEP: u64 = 1 << 20;
/// Warnings (and, separately, entries not archived) kept in the report; later ones are only counted (and logged).
pub const MAX_WARNINGS: usize = 1000;
/// Sparse regions recorded per file; past this the rest of the file is stored as one data region.
pub const MAX_SPARSE_REGIONS: usize = 1 << 16;
/// Directory descriptors the walk keeps open at most (the root's included); deeper trees re-open on the way up.
pub const MAX_OPEN_DIRS: usize = 64;
/// Longest relative path archived (480 KiB, about 1,900 levels of 255-byte names): an entry's PAX header holds
/// its path and possibly a hardlink target as long, and `voltar restore` refuses headers over
/// [`MAX_META_HEADER`] (1 MiB). Deeper entries are reported as not archived, never written unrestorable.
pub const MAX_PATH_LEN: usize = (MAX_META_HEADER as usize - (64 << 10)) / 2;

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
    /// One line per entry skipped, cut or padded because the source changed while it was read, or a socket
    /// (`<relative path>: <what happened>`). These do not make the archive incomplete.
    pub warnings: Vec<String>,
    /// One line per entry that existed but is not in the archive, or only in part (`<relative path>: <why>`); at
    /// most [`MAX_WARNINGS`] lines.
    pub not_archived: Vec<String>,
    /// How many entries were not archived (may be more than `not_archived` lists).
    pub not_archived_count: u64,
}

impl PackReport {
    /// Every entry that existed when it was read is in the archive, whole.
    pub fn is_complete(&self) -> bool {
        self.not_archived_count == 0
    }
}

/// Walk `root` and write a PAX tar of its contents into `out` (layout and count rules in the module docs).
///
/// `progress` is called with the number of content bytes read since its last call (holes of sparse files are
/// not read, so they are not reported), in steps of about 1 MiB and once at the end. Returns the report and the
/// writer (flushed, so the caller can finish a compressor or commit a file). Fails only when the root cannot be
/// read ([`ArchiveError::Io`]), the writer fails ([`ArchiveError::Sink`]) or `opts.cancel` is set
/// ([`ArchiveError::Cancelled`]); everything else is in the report (check [`PackReport::is_complete`]).
pub fn pack<W: io::Write>(
    root: &Path,
    out: W,
    opts: &PackOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<(PackReport, W), ArchiveError> {
    let root_err = |source| ArchiveError::Io {
        path: root.to_path_buf(),
        cause: source,
    };
    // The root itself is trusted (the caller chose it) and may be reached through symlinks; nothing below it is.
    let root_fd = open_root(root).map_err(root_err)?;
    let root_st = Stat::of_fd(root_fd.as_raw_fd()).map_err(root_err)?;
    // An unreadable root aborts (nothing useful could be archived); anything below it is reported.
    let children = read_sorted(root_fd.as_raw_fd()).map_err(root_err)?;

    let mut p = Packer::new(out, opts.cancel, progress);
    p.root = root.to_path_buf();
    p.check_cancel()?;
    p.pax.clear();
    p.header_simple(
        b"./",
        b'5',
        &root_st,
        0,
        b"",
        (0, 0),
        XattrSrc::Fd(root_fd.as_raw_fd()),
        b"./",
    )?;
    p.report.counts.add(Counted::Dir);

    let mut rel = Vec::with_capacity(256);
    p.walk(
        Level {
            fd: Some(root_fd),
            dev: root_st.dev(),
            ino: root_st.ino(),
            name: CString::default(),
            children,
            next: 0,
            rel_len: 0,
        },
        &mut rel,
    )?;
    p.finish()
}

/// Where extended attributes are read from: the open file or directory, or (for entries that must not be
/// opened: symlinks, FIFOs, devices) the name in a directory, without following it.
#[derive(Clone, Copy)]
enum XattrSrc<'a> {
    Fd(RawFd),
    /// Directory fd, name in it, and the entry's relative path (only used when `/proc` is not mounted).
    At(RawFd, &'a CStr, &'a [u8]),
    /// Names and values already read (an entry of another archive: `archive::repack`).
    Given(&'a [(Vec<u8>, Vec<u8>)]),
    None,
}

/// The fields of an entry that does not come from a walk of this host's filesystem (`archive::repack`).
#[derive(Clone, Copy, Debug, Default)]
pub(in crate::archive) struct EntryMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

impl header::HeaderStat for EntryMeta {
    fn mode(&self) -> u32 {
        self.mode
    }
    fn uid(&self) -> u32 {
        self.uid
    }
    fn gid(&self) -> u32 {
        self.gid
    }
    fn mtime(&self) -> i64 {
        self.mtime
    }
    fn mtime_nsec(&self) -> i64 {
        self.mtime_nsec
    }
}

/// The packer's writer for entries that come from elsewhere (`archive::repack`: the engine's tar), so that their
/// headers, counts, warnings and report are made by the same code as [`pack`]'s.
pub(in crate::archive) struct EntryWriter<'o, 'p, W: Write>(Packer<'o, 'p, W>);

impl<'o, 'p, W: Write> EntryWriter<'o, 'p, W> {
    pub(in crate::archive) fn new(
        out: W,
        cancel: Option<&'o AtomicBool>,
        progress: &'p mut dyn FnMut(u64),
    ) -> Self {
        EntryWriter(Packer::new(out, cancel, progress))
    }

    pub(in crate::archive) fn check_cancel(&self) -> Result<(), ArchiveError> {
        self.0.check_cancel()
    }

    /// Write one entry's headers (layout as in the module docs) and count it as `counted`; a regular file's
    /// content follows with [`EntryWriter::content`].
    #[allow(clippy::too_many_arguments)]
    pub(in crate::archive) fn header(
        &mut self,
        name: &[u8],
        kind: u8,
        md: &EntryMeta,
        size: u64,
        link: &[u8],
        rdev: (u64, u64),
        xattrs: &[(Vec<u8>, Vec<u8>)],
        counted: Counted,
    ) -> Result<(), ArchiveError> {
        self.0.pax.clear();
        self.0.header_simple(
            name,
            kind,
            md,
            size,
            link,
            rdev,
            XattrSrc::Given(xattrs),
            name,
        )?;
        self.0.report.counts.add(counted);
        Ok(())
    }

    /// Copy exactly `size` bytes of content from `r` (then the padding). `r` ending early or failing is
    /// `ArchiveError::Io` naming `what`: the archive written so far is then unusable.
    pub(in crate::archive) fn content(
        &mut self,
        r: &mut impl io::Read,
        size: u64,
        what: &Path,
    ) -> Result<(), ArchiveError> {
        let mut left = size;
        while left > 0 {
            self.0.check_cancel()?;
            let want = left.min(self.0.buf.len() as u64) as usize;
            let n = match r.read(&mut self.0.buf[..want]) {
                Ok(0) => {
                    return Err(ArchiveError::Io {
                        path: what.to_path_buf(),
                        cause: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("ended inside an entry, {left} of its {size} bytes missing"),
                        ),
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(ArchiveError::Io {
                        path: what.to_path_buf(),
                        cause: e,
                    })
                }
            };
            let Packer { out, buf, .. } = &mut self.0;
            out.write_all(&buf[..n]).map_err(ArchiveError::Sink)?;
            left -= n as u64;
            self.0.add_progress(n as u64);
        }
        self.0.pad(size)
    }

    /// An entry that is missing from the archive, wholly or in part (see [`PackReport::not_archived`]).
    pub(in crate::archive) fn not_archived(&mut self, rel: &[u8], what: std::fmt::Arguments<'_>) {
        self.0.not_archived(rel, what);
    }

    /// The end-of-archive blocks; the report and the flushed writer.
    pub(in crate::archive) fn finish(self) -> Result<(PackReport, W), ArchiveError> {
        self.0.finish()
    }
}

/// What happened while copying a file range.
enum Change {
    Same,
    Grew,
    Shrank,
    ReadError(io::Error, u64),
}

/// One directory on the current path of the walk.
struct Level {
    /// None while closed to keep the number of open descriptors bounded (see the module docs).
    fd: Option<OwnedFd>,
    /// Identity, to check a re-opened descriptor is the same directory.
    dev: u64,
    ino: u64,
    /// Name in its parent (empty for the root).
    name: CString,
    /// Sorted entries with their `d_type`; `next` is the first not yet archived.
    children: Vec<(CString, u8)>,
    next: usize,
    /// Length of the relative path of this directory (children are that plus `/` plus their name).
    rel_len: usize,
}

struct Packer<'o, 'p, W: Write> {
    out: BufWriter<W>,
    buf: Vec<u8>,
    pax: Vec<u8>,
    map: Vec<u8>,
    xattr_names: Vec<u8>,
    xattr_value: Vec<u8>,
    link_buf: Vec<u8>,
    /// (dev, ino) of archived inodes with nlink > 1 → their entry name.
    links: HashMap<(u64, u64), Vec<u8>>,
    report: PackReport,
    dropped_warnings: u64,
    cancel: Option<&'o AtomicBool>,
    progress: &'p mut dyn FnMut(u64),
    pending_progress: u64,
    /// The root as given, for reaching xattrs of unopenable entries by path when `/proc` is not mounted.
    root: PathBuf,
    /// `/proc/self/fd` is there (it is wherever voltar normally runs, containers included).
    proc_fd: bool,
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
            link_buf: Vec::new(),
            links: HashMap::new(),
            report: PackReport::default(),
            dropped_warnings: 0,
            cancel,
            progress,
            pending_progress: 0,
            root: PathBuf::new(),
            proc_fd: Path::new("/proc/self/fd").is_dir(),
        }
    }

    fn check_cancel(&self) -> Result<(), ArchiveError> {
        match self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(ArchiveError::Cancelled),
            _ => Ok(()),
        }
    }

    fn line(rel: &[u8], what: std::fmt::Arguments<'_>) -> String {
        let name = if rel.is_empty() {
            ".".into()
        } else {
            String::from_utf8_lossy(rel)
        };
        format!("{name}: {what}")
    }

    /// The source changed under us (or a socket): the archive is still complete.
    fn warn(&mut self, rel: &[u8], what: std::fmt::Arguments<'_>) {
        let line = Self::line(rel, what);
        // One in the report is printed by the command (once): a debug line here. One past the cap only here.
        if self.report.warnings.len() < MAX_WARNINGS {
            tracing::debug!(target: "voltar::pack", "{line}");
            self.report.warnings.push(line);
        } else {
            tracing::warn!(target: "voltar::pack", "{line}");
            self.dropped_warnings += 1;
        }
    }

    /// An entry that exists is missing from the archive, wholly or in part: the archive is incomplete.
    fn not_archived(&mut self, rel: &[u8], what: std::fmt::Arguments<'_>) {
        let line = Self::line(rel, what);
        self.report.not_archived_count += 1;
        // As with warnings: one in the report is printed by the command, one past the cap is logged here.
        if self.report.not_archived.len() < MAX_WARNINGS {
            tracing::debug!(target: "voltar::pack", "not archived: {line}");
            self.report.not_archived.push(line);
        } else {
            tracing::warn!(target: "voltar::pack", "not archived: {line}");
        }
    }

    fn vanished(&mut self, rel: &[u8]) {
        self.warn(rel, format_args!("skipped: vanished during backup"));
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

    /// Depth-first walk from `root` with an explicit stack of the directories on the current path, at most
    /// [`MAX_OPEN_DIRS`] of them open (module docs, "Walking").
    fn walk(&mut self, root: Level, rel: &mut Vec<u8>) -> Result<(), ArchiveError> {
        let mut stack = vec![root];
        // Levels 1..first_open have their descriptor closed (always a contiguous run just below the root).
        let mut first_open = 1usize;
        while let Some(top) = stack.last_mut() {
            if top.next == top.children.len() {
                let done = stack.pop().expect("non-empty");
                if done.fd.is_none() {
                    // Only after a failed re-open (below): a closed level leaves the stack.
                    first_open -= 1;
                }
                let Some(parent) = stack.last_mut() else {
                    break;
                };
                rel.truncate(parent.rel_len);
                if parent.fd.is_none() {
                    match Self::reopen(&mut stack, done.fd.as_ref()) {
                        Ok(()) => first_open -= 1,
                        // It stays closed and is popped next, with nothing more read from it.
                        Err(e) => self.moved(stack.last_mut().expect("non-empty"), rel, &e),
                    }
                }
                continue;
            }
            self.check_cancel()?;
            let i = top.next;
            top.next += 1;
            let (name, d_type) = std::mem::take(&mut top.children[i]);
            let dir = top
                .fd
                .as_ref()
                .expect("the deepest level is open")
                .as_raw_fd();
            let base = rel.len();
            if base > 0 {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.to_bytes());
            if rel.len() > max_path_len() {
                let shown = [&rel[..200], b"...".as_slice(), &rel[rel.len() - 100..]].concat();
                self.not_archived(
                    &shown,
                    format_args!(
                        "not archived, nor anything below it: its path is {} bytes, more than the {} an archive \
                         entry may have",
                        rel.len(),
                        max_path_len()
                    ),
                );
                rel.truncate(base);
                continue;
            }
            match self.entry(dir, &name, d_type, rel)? {
                Some(mut level) => {
                    level.name = name;
                    level.rel_len = rel.len();
                    if stack.len() - first_open + 1 >= MAX_OPEN_DIRS {
                        // Too deep: close the shallowest open directory below the root.
                        stack[first_open].fd = None;
                        first_open += 1;
                    }
                    stack.push(level);
                }
                None => rel.truncate(base),
            }
        }
        Ok(())
    }

    /// The directory `level` (at `rel`) could not be re-opened: skip the rest of it, as for a vanished directory.
    fn moved(&mut self, level: &mut Level, rel: &[u8], e: &io::Error) {
        let rest = level.children.len() - level.next;
        level.next = level.children.len();
        if rest > 0 {
            let entries = if rest == 1 { "entry" } else { "entries" };
            self.warn(
                rel,
                format_args!(
                    "rest of the directory skipped ({rest} {entries}): it was moved or removed during backup ({e})"
                ),
            );
        }
    }

    /// Re-open the last level of `stack` (closed while deeper levels were walked): through `..` of `child`, its
    /// finished subdirectory, or else by name from the nearest open ancestor. Each step must land on the same
    /// directory (device and inode) as the one listed before.
    fn reopen(stack: &mut [Level], child: Option<&OwnedFd>) -> io::Result<()> {
        let idx = stack.len() - 1;
        let same = |fd: &OwnedFd, l: &Level| -> io::Result<bool> {
            let st = Stat::of_fd(fd.as_raw_fd())?;
            Ok(st.dev() == l.dev && st.ino() == l.ino)
        };
        if let Some(Ok(fd)) = child.map(|c| open_dir_at(c.as_raw_fd(), c"..")) {
            if same(&fd, &stack[idx])? {
                stack[idx].fd = Some(fd);
                return Ok(());
            }
        }
        let from = (0..idx)
            .rev()
            .find(|&i| stack[i].fd.is_some())
            .expect("the root stays open");
        let mut cur = stack[from].fd.as_ref().expect("open").try_clone()?;
        for l in &stack[from + 1..=idx] {
            let next = open_dir_at(cur.as_raw_fd(), &l.name)?;
            if !same(&next, l)? {
                return Err(io::Error::other("a different directory is at its path now"));
            }
            cur = next;
        }
        stack[idx].fd = Some(cur);
        Ok(())
    }

    /// Archive the entry `name` of the directory `dir` (relative path `rel`). Returns the directory level to walk
    /// next when the entry is a directory with contents.
    fn entry(
        &mut self,
        dir: RawFd,
        name: &CStr,
        d_type: u8,
        rel: &mut Vec<u8>,
    ) -> Result<Option<Level>, ArchiveError> {
        // Fast paths for what readdir says is a regular file or a directory: open + fstat, no fstatat. The
        // metadata then describes exactly what we read.
        if d_type == libc::DT_REG && self.regular_as_listed(dir, name, rel)? {
            return Ok(None);
        } else if d_type == libc::DT_DIR {
            match open_dir_at(dir, name) {
                Ok(fd) => return self.directory(fd, rel),
                Err(e) if is_enoent(&e) => {
                    self.vanished(rel);
                    return Ok(None);
                }
                // Replaced since readdir, or cannot be opened (its metadata is still archived): look below.
                Err(_) => {}
            }
        }
        let st = match Stat::at(dir, name) {
            Ok(st) => st,
            Err(e) if is_enoent(&e) => {
                self.vanished(rel);
                return Ok(None);
            }
            Err(e) => {
                self.not_archived(rel, format_args!("cannot stat: {e}"));
                return Ok(None);
            }
        };
        match st.kind() {
            libc::S_IFDIR => self.directory_at(dir, name, rel, &st),
            libc::S_IFREG => self.regular_at(dir, name, rel).map(|()| None),
            libc::S_IFLNK => {
                let mut target = std::mem::take(&mut self.link_buf);
                let r = self.symlink(dir, name, rel, &st, &mut target);
                self.link_buf = target;
                r.map(|()| None)
            }
            libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK => {
                self.node(dir, name, rel, &st).map(|()| None)
            }
            libc::S_IFSOCK => {
                self.warn(
                    rel,
                    format_args!(
                        "skipped: a socket (sockets hold no data; the program listening on it creates it again)"
                    ),
                );
                Ok(None)
            }
            other => {
                self.not_archived(rel, format_args!("unknown file type {:o}", other >> 12));
                Ok(None)
            }
        }
    }

    /// The fast path for what readdir listed as a regular file: open, then fstat. `false`: it is something else
    /// by now (a symlink, a socket, another type), to be looked at again with `fstatat`.
    fn regular_as_listed(
        &mut self,
        dir: RawFd,
        name: &CStr,
        rel: &[u8],
    ) -> Result<bool, ArchiveError> {
        match open_regular_at(dir, name) {
            Ok(f) => match Stat::of_fd(f.as_raw_fd()) {
                Ok(st) if st.is_file() => self.regular(dir, name, rel, &f, &st)?,
                Ok(_) => return Ok(false), // replaced by another type since readdir
                Err(e) => self.not_archived(rel, format_args!("cannot stat: {e}")),
            },
            Err(e) if is_enoent(&e) => self.vanished(rel),
            // Became a symlink (ELOOP) or a socket (ENXIO) since readdir.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENXIO)) => {
                return Ok(false)
            }
            Err(e) => self.not_archived(rel, format_args!("cannot open: {e}")),
        }
        Ok(true)
    }

    /// A regular file found by `fstatat`: open it and archive what was opened, if it is still a regular file.
    fn regular_at(&mut self, dir: RawFd, name: &CStr, rel: &[u8]) -> Result<(), ArchiveError> {
        let f = match open_regular_at(dir, name) {
            Ok(f) => f,
            Err(e) if is_enoent(&e) => {
                self.vanished(rel);
                return Ok(());
            }
            Err(e) => {
                self.not_archived(rel, format_args!("cannot open: {e}"));
                return Ok(());
            }
        };
        match Stat::of_fd(f.as_raw_fd()) {
            Ok(st) if st.is_file() => self.regular(dir, name, rel, &f, &st)?,
            Ok(_) => self.warn(rel, format_args!("skipped: changed type during backup")),
            Err(e) => self.not_archived(rel, format_args!("cannot stat: {e}")),
        }
        Ok(())
    }

    /// A directory found by `fstatat`: descend into it, or, when it cannot be opened, archive its own entry and
    /// name its contents as not archived.
    fn directory_at(
        &mut self,
        dir: RawFd,
        name: &CStr,
        rel: &mut Vec<u8>,
        st: &Stat,
    ) -> Result<Option<Level>, ArchiveError> {
        match open_dir_at(dir, name) {
            Ok(fd) => self.directory(fd, rel),
            Err(e) if is_enoent(&e) => {
                self.vanished(rel);
                Ok(None)
            }
            Err(e) => {
                // The directory's own entry (mode, owner, mtime) is archived; its contents are missing.
                let at = rel.clone();
                self.dir_header(rel, st, XattrSrc::At(dir, name, &at))?;
                rel.push(b'/');
                self.not_archived(
                    rel,
                    format_args!("contents not archived: cannot open directory: {e}"),
                );
                rel.pop();
                Ok(None)
            }
        }
    }

    /// A FIFO or a device node: a header only (or a hardlink to an earlier one).
    fn node(&mut self, dir: RawFd, name: &CStr, rel: &[u8], st: &Stat) -> Result<(), ArchiveError> {
        if self.hardlink(rel, st)? {
            return Ok(());
        }
        let kind = match st.kind() {
            libc::S_IFIFO => b'6',
            libc::S_IFCHR => b'3',
            _ => b'4',
        };
        let rdev = if kind == b'6' {
            (0, 0)
        } else {
            split_dev(st.rdev())
        };
        self.pax.clear();
        self.header_simple(
            rel,
            kind,
            st,
            0,
            b"",
            rdev,
            XattrSrc::At(dir, name, rel),
            rel,
        )?;
        self.report.counts.add(Counted::Other);
        self.remember_link(rel, st);
        Ok(())
    }

    fn symlink(
        &mut self,
        dir: RawFd,
        name: &CStr,
        rel: &[u8],
        st: &Stat,
        target: &mut Vec<u8>,
    ) -> Result<(), ArchiveError> {
        match read_link_at(dir, name, target) {
            Ok(()) => {}
            Err(e) if is_enoent(&e) => {
                self.vanished(rel);
                return Ok(());
            }
            Err(e) => {
                self.not_archived(rel, format_args!("cannot read symlink: {e}"));
                return Ok(());
            }
        }
        if self.hardlink(rel, st)? {
            return Ok(());
        }
        self.pax.clear();
        self.header_simple(
            rel,
            b'2',
            st,
            0,
            target,
            (0, 0),
            XattrSrc::At(dir, name, rel),
            rel,
        )?;
        self.report.counts.add(Counted::Symlink);
        self.remember_link(rel, st);
        Ok(())
    }

    /// The header of a directory (`rel` + `/`).
    fn dir_header(
        &mut self,
        rel: &mut Vec<u8>,
        st: &Stat,
        xattrs: XattrSrc<'_>,
    ) -> Result<(), ArchiveError> {
        let rel_len = rel.len();
        rel.push(b'/');
        self.pax.clear();
        let r = self.header_simple(rel, b'5', st, 0, b"", (0, 0), xattrs, rel);
        rel.truncate(rel_len);
        r?;
        self.report.counts.add(Counted::Dir);
        Ok(())
    }

    /// Write the entry of the open directory `fd` and list it; returns its level when it has entries.
    fn directory(&mut self, fd: OwnedFd, rel: &mut Vec<u8>) -> Result<Option<Level>, ArchiveError> {
        let st = match Stat::of_fd(fd.as_raw_fd()) {
            Ok(st) => st,
            Err(e) => {
                self.not_archived(rel, format_args!("cannot stat: {e}"));
                return Ok(None);
            }
        };
        self.dir_header(rel, &st, XattrSrc::Fd(fd.as_raw_fd()))?;
        // The directory entry is already written: if its contents cannot be listed, the archive still holds the
        // (empty) directory with its metadata, and the report says what is missing.
        let children = match read_sorted(fd.as_raw_fd()) {
            Ok(c) => c,
            Err(e) if is_enoent(&e) => {
                self.warn(
                    rel,
                    format_args!("contents skipped: directory vanished during backup"),
                );
                return Ok(None);
            }
            Err(e) => {
                rel.push(b'/');
                self.not_archived(
                    rel,
                    format_args!("contents not archived: cannot list directory: {e}"),
                );
                rel.pop();
                return Ok(None);
            }
        };
        if children.is_empty() {
            return Ok(None);
        }
        Ok(Some(Level {
            fd: Some(fd),
            dev: st.dev(),
            ino: st.ino(),
            name: CString::default(),
            children,
            next: 0,
            rel_len: 0,
        }))
    }

    /// If this inode was archived before under another name, write a hardlink entry and return true.
    fn hardlink(&mut self, rel: &[u8], st: &Stat) -> Result<bool, ArchiveError> {
        if st.nlink() < 2 || st.is_dir() {
            return Ok(false);
        }
        let Some(target) = self.links.get(&(st.dev(), st.ino())) else {
            return Ok(false);
        };
        let target = target.clone();
        self.pax.clear();
        self.header_simple(rel, b'1', st, 0, &target, (0, 0), XattrSrc::None, rel)?;
        self.report.counts.add(Counted::Hardlink);
        Ok(true)
    }

    fn remember_link(&mut self, rel: &[u8], st: &Stat) {
        if st.nlink() > 1 && !st.is_dir() {
            self.links
                .entry((st.dev(), st.ino()))
                .or_insert_with(|| rel.to_vec());
        }
    }
}

/// [`MAX_PATH_LEN`] (tests lower it: a real 480 KiB path makes an archive of hundreds of MiB of headers).
#[cfg(not(test))]
#[inline(always)]
fn max_path_len() -> usize {
    MAX_PATH_LEN
}

#[cfg(test)]
fn max_path_len() -> usize {
    hooks::MAX_PATH_LEN.with(|c| c.get())
}

const _: () = assert!(2 * MAX_PATH_LEN + (64 << 10) <= MAX_META_HEADER as usize);

fn basename(name: &[u8]) -> &[u8] {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

#[cfg(not(test))]
#[inline(always)]
fn after_header_hook(_: RawFd, _: &CStr) {}

#[cfg(test)]
fn after_header_hook(dir: RawFd, name: &CStr) {
    // Tests see the file as a path they can open, however deep it is.
    let mut p = PathBuf::from(format!("/proc/self/fd/{dir}"));
    p.push(std::ffi::OsStr::from_bytes(name.to_bytes()));
    hooks::after_header(&p)
}

#[cfg(test)]
mod hooks {
    //! Deterministic ways to change a file between writing its header and reading it, or to fail its next read.
    use std::cell::{Cell, RefCell};
    use std::path::Path;

    type Hook = Box<dyn FnMut(&Path)>;
    thread_local! {
        pub static AFTER_HEADER: RefCell<Option<Hook>> = const { RefCell::new(None) };
        /// The next content read fails with EIO (then reads work again).
        pub static FAIL_NEXT_READ: Cell<bool> = const { Cell::new(false) };
        pub static MAX_PATH_LEN: Cell<usize> = const { Cell::new(super::MAX_PATH_LEN) };
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
    use super::header::HeaderStat;
    use super::*;
    use std::ffi::OsStr;
    use std::fs::{self, OpenOptions};
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
        assert!(rep.is_complete(), "a vanished file is not a gap: {rep:?}");
    }

    #[test]
    fn read_error_is_not_archived_and_the_archive_stays_aligned() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a-bad"), vec![7u8; 3 * READ_BUF_SIZE]).unwrap();
        fs::write(d.path().join("b-good"), b"after").unwrap();
        let (rep, tar) = with_hook(
            |p| {
                if p.ends_with("a-bad") {
                    hooks::FAIL_NEXT_READ.with(|c| c.set(true));
                }
            },
            || pack_vec(d.path()),
        );
        assert!(!rep.is_complete());
        assert_eq!(rep.not_archived_count, 1);
        assert!(
            rep.not_archived[0].starts_with("a-bad: read error at byte 0 ("),
            "{:?}",
            rep.not_archived
        );
        assert!(rep.warnings.is_empty(), "{:?}", rep.warnings);
        let e = entries(&tar);
        let bad = e.iter().find(|e| e.0 == b"a-bad").expect("entry a-bad");
        assert_eq!(bad.1, 3 * READ_BUF_SIZE as u64, "the header's size is kept");
        assert!(bad.2.iter().all(|&b| b == 0), "the unread rest is zeros");
        assert_eq!(e.iter().find(|e| e.0 == b"b-good").unwrap().2, b"after");
    }

    /// mkdir + open, relative to a directory descriptor (paths here may exceed PATH_MAX).
    fn mkdir_at(dir: RawFd, name: &str) -> OwnedFd {
        let c = CString::new(name).unwrap();
        crate::archive::fsat::mkdir_at(dir, OsStr::new(name), 0o755).unwrap();
        open_dir_at(dir, &c).unwrap()
    }

    fn write_at(dir: RawFd, name: &str, data: &[u8]) {
        let c = CString::new(name).unwrap();
        let mut f = crate::archive::fsat::create_excl_at(dir, &c, 0o644).unwrap();
        f.write_all(data).unwrap();
    }

    /// `root/d/d/…/d` (`depth` levels), each level also holding a file `z` (after `d` in name order) whose
    /// content is its depth; the deepest holds `f`. Returns the entry names expected for the `z` files.
    fn chain(root: &Path, depth: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut cur = open_root(root).unwrap();
        let mut rel = Vec::new();
        let mut zs = Vec::new();
        for level in 0..depth {
            write_at(cur.as_raw_fd(), "z", level.to_string().as_bytes());
            let mut z = rel.clone();
            z.extend_from_slice(b"z");
            zs.push((z, level.to_string().into_bytes()));
            cur = mkdir_at(cur.as_raw_fd(), "d");
            rel.extend_from_slice(b"d/");
        }
        write_at(cur.as_raw_fd(), "f", b"bottom");
        zs
    }

    /// Descriptors this process has open on something under `root`.
    fn fds_under(root: &Path) -> usize {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| fs::read_link(e.path()).is_ok_and(|t| t.starts_with(root)))
            .count()
    }

    #[test]
    fn deep_tree_keeps_dir_fds_bounded_and_reopens_on_the_way_up() {
        let d = tempfile::tempdir().unwrap();
        let depth = 3 * MAX_OPEN_DIRS;
        let zs = chain(d.path(), depth);
        let root = d.path().to_path_buf();
        let at_bottom = std::rc::Rc::new(std::cell::Cell::new(None));
        let seen = at_bottom.clone();
        let (rep, tar) = with_hook(
            move |p| {
                if p.ends_with("f") {
                    seen.set(Some(fds_under(&root)));
                }
            },
            || pack_vec(d.path()),
        );
        // At the deepest file: the window of directories plus the file itself, not one per level.
        assert_eq!(at_bottom.get(), Some(MAX_OPEN_DIRS + 1));
        assert!(rep.is_complete() && rep.warnings.is_empty(), "{rep:?}");
        let e = entries(&tar);
        // Every `z` was read after coming back up through levels whose descriptors had been closed.
        for (name, content) in &zs {
            let z = e
                .iter()
                .find(|e| &e.0 == name)
                .expect("every z is archived");
            assert_eq!(&z.2, content);
        }
        assert_eq!(rep.counts.dirs, depth as u64 + 1);
        assert_eq!(rep.counts.files, depth as u64 + 1);
    }

    #[test]
    fn deep_directories_moved_during_the_walk_are_followed_or_skipped_with_warnings() {
        let d = tempfile::tempdir().unwrap();
        let depth = 3 * MAX_OPEN_DIRS;
        let zs = chain(d.path(), depth);
        let (renamed, moved) = (10, MAX_OPEN_DIRS / 2 + 1);
        let root = d.path().to_path_buf();
        // While the deepest file is read (the levels between the root and the open window are closed): the
        // subtree from level `moved` goes to the root, and level `renamed` gets another name.
        let (rep, tar) = with_hook(
            move |p| {
                if p.ends_with("f") {
                    fs::rename(root.join("d/".repeat(moved)), root.join("elsewhere")).unwrap();
                    let r = root.join("d/".repeat(renamed));
                    fs::rename(&r, r.with_file_name("e")).unwrap();
                }
            },
            || pack_vec(d.path()),
        );
        assert!(rep.is_complete(), "moved entries are not gaps: {rep:?}");
        let e = entries(&tar);
        let archived = |i: usize| e.iter().any(|e| e.0 == zs[i].0 && e.2 == zs[i].1);
        // The moved subtree was followed through `..` of the open directories.
        assert!((moved..depth).all(archived));
        // Level `moved - 1` could not be reached through `..` (that is the root now) nor by name (level
        // `renamed` is not called `d` any more), and so on up to `renamed`: skipped, each with a warning.
        assert!(!(renamed..moved).any(archived));
        let skipped = rep
            .warnings
            .iter()
            .filter(|w| {
                w.contains("rest of the directory skipped (1 entry): it was moved or removed")
            })
            .count();
        assert_eq!(skipped, moved - renamed, "{:?}", rep.warnings);
        assert_eq!(rep.warnings.len(), moved - renamed, "{:?}", rep.warnings);
        // Level `renamed - 1` was re-opened by name from the root, and everything above it.
        assert!((0..renamed).all(archived));
    }

    #[test]
    fn a_path_longer_than_an_archive_entry_may_have_is_not_archived() {
        let d = tempfile::tempdir().unwrap();
        let mut cur = open_root(d.path()).unwrap();
        let name = "n".repeat(200);
        for _ in 0..8 {
            cur = mkdir_at(cur.as_raw_fd(), &name);
        }
        write_at(cur.as_raw_fd(), "f", b"deep");
        fs::write(d.path().join("z"), b"after").unwrap();
        // 5 levels fit (1,004 bytes), the 6th does not.
        hooks::MAX_PATH_LEN.with(|c| c.set(1100));
        let (rep, tar) = pack_vec(d.path());
        hooks::MAX_PATH_LEN.with(|c| c.set(MAX_PATH_LEN));
        assert_eq!(rep.not_archived_count, 1, "{:?}", rep.not_archived);
        let line = &rep.not_archived[0];
        assert!(
            line.ends_with(
                "not archived, nor anything below it: its path is 1205 bytes, more than the 1100 an \
                 archive entry may have"
            ),
            "{line}"
        );
        assert!(
            line.len() < 500,
            "the name is shortened in the report: {line}"
        );
        let e = entries(&tar);
        assert_eq!(rep.counts.dirs, 6);
        assert_eq!(e.iter().find(|e| e.0 == b"z").unwrap().2, b"after");
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
