//! Safe extraction of an untrusted tar stream into a directory, and a read-only [`scan`] for `voltar verify`.
//!
//! # Design
//!
//! The `tar` crate is used only as a *reader* of headers and data. Its own extraction (`Entry::unpack`,
//! `unpack_in`, `Archive::unpack`) is not used: `Entry::unpack` does no path checks at all, `unpack_in` silently
//! skips `..` entries (a restore would report success while dropping data), and its directory handling followed
//! symlinks (RUSTSEC-2026-0067). Instead every filesystem operation here is done relative to directory file
//! descriptors reached by walking the sanitized path from the destination one component at a time with
//! `openat(O_DIRECTORY | O_NOFOLLOW)`. A symlink anywhere in the parent path therefore cannot be followed — not
//! one planted by the archive, not one already in the destination, and not one swapped in between a check and a
//! use (there is no separate check: the open itself refuses). Leaves are created with `O_EXCL | O_NOFOLLOW`,
//! `symlinkat`, `linkat` (without `AT_SYMLINK_FOLLOW`) and `mknodat`, after removing a non-directory already at
//! that name, so an existing symlink is replaced, never written through.
//!
//! Path rules (matching GNU tar where it is safe to): a leading `/` is removed with one warning; then
//! `strip_components` leading components are removed (counted like GNU tar: split on `/`, `.` counts; an entry
//! with fewer components is skipped, a directory with exactly that many is the destination root itself); any
//! `..` component anywhere in the name is an error (GNU tar skips such members with a warning; for a restore a
//! silently dropped file is data loss, so it is an error); `.` components are dropped. Errors name the entry.
//!
//! Rejected as [`ArchiveError::Unsafe`]: `..`; writing below a path that is a symlink (`link/pwned` after
//! `link -> ../outside`); a directory entry where a symlink exists (`link` then `link/` — the RUSTSEC-2026-0067
//! chmod-outside case); hardlinks whose target contains `..`, goes through a symlink or is a directory; names with
//! NUL bytes. Symlinks whose *target* points outside (absolute or `../..`) are ordinary content: they are created
//! as links and never followed by this module. A hardlink target is sanitized like a member name (leading `/`
//! removed, components stripped), so it can only ever name something inside the destination.
//!
//! Metadata: numeric uid/gid (when [`UnpackOptions::same_owner`]; `lchown`-style for symlinks), then xattrs
//! (PAX `SCHILY.xattr.*`), then the mode including suid/sgid/sticky (after chown, which clears suid; after
//! xattrs, so a read-only mode does not block setting `user.*` xattrs), then mtime with nanoseconds from the PAX
//! `mtime` record. Directories get their xattrs when created and their owner, mode and mtime at the very end,
//! deepest first, so writing children does not change a directory's mtime and a read-only directory does not
//! block its children. Device nodes need root; otherwise they are skipped with a warning. Whatever could not be
//! restored is reported in [`UnpackReport::warnings`], aggregated (one line per kind of failure, with a count).
//!
//! Sparse files: GNU PAX sparse formats 1.0 (map at the start of the data, as `tar --sparse` writes with
//! `--format=posix`/`--xattrs`) and 0.0/0.1 (map in PAX records) are expanded by seeking over holes and
//! `set_len` to the real size; the real path comes from `GNU.sparse.name`. Old GNU sparse (`S`) entries are
//! expanded by the `tar` crate; for those and for all regular files, runs of zeros of at least 4 KiB are skipped
//! with a seek instead of written, so holes stay holes whatever format they came in.
//!
//! Hostile input: an entry whose data size or sparse real size exceeds [`UnpackOptions::max_entry_size`] is
//! refused before anything is written; sparse maps must be sorted, non-overlapping, within the real size and have
//! at most [`MAX_SPARSE_SEGMENTS`] segments; nothing is allocated based on a header's size. A stream that ends
//! without the end-of-archive marker is reported as truncated (an archive cut exactly at an entry boundary is
//! only detectable through the manifest's sha256 and counts, or through the zstd frame). After the marker the
//! rest of the stream is read to its end, so the zstd frame checksum is always verified.
//! Metadata headers — PAX extended headers (`x`, and global `g`) and GNU long names/links (`L`, `K`) — are read
//! whole into memory (by the `tar` crate, and for `x` also by [`PaxTap`]); one whose declared size exceeds
//! [`MAX_META_HEADER`] is refused as [`ArchiveError::Unsafe`] as soon as its header block has been read, before
//! anything allocates for its data. Without that, a few KiB of zstd declaring a multi-GiB PAX header followed by
//! zeros would make a restore, verify or dry run read gigabytes into one buffer.
//!
//! Counting rules (shared with `pack`, which counts what it writes the same way, so `verify` can compare):
//! PAX and GNU extension headers (`x`, `g`, `L`, `K`) are not entries. Regular/Continuous (and old GNU sparse)
//! => `files` += 1 and `bytes` += the logical size (for GNU PAX sparse entries `GNU.sparse.realsize`, or
//! `GNU.sparse.size` for 0.x); Directory => `dirs`; Symlink => `symlinks`; Link => `hardlinks` (bytes 0);
//! Fifo/Char/Block => `other`; `entries` = the sum of those. Other entry types are skipped with a warning and
//! not counted.
//!
//! `paths` filter: an entry is written when its (stripped) path equals a filter path or lies below it; parent
//! directories outside the filter are created with default permissions. A hardlink whose target lies outside
//! the filter is *not* written (its data lives in an entry that was not extracted, and linking to whatever is at
//! that name in a non-empty destination would be wrong); it is listed in the warnings so the user can widen
//! the filter.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustix::fs::FileType;

use super::fsat::{
    chmod_fd, chown_at, chown_fd, create_excl_at, cstr, link_at, mkdir_at, mknod_at, open_dir_at,
    open_root, proc_path, set_mtime_at, set_mtime_fd, symlink_at, type_at, unlink_at,
};
pub use super::fsat::{exists_at, open_dir_beneath};
use super::names::{join, Selection};
use super::pax::{check_map, describe, read_sparse_map, Described, Kind, PaxTap, Sparse};
pub use super::pax::{MAX_META_HEADER, MAX_SPARSE_SEGMENTS};
use super::{ArchiveError, Counted, Counts};

/// Default header sanity limit for one entry's size: 16 TiB.
pub const DEFAULT_MAX_ENTRY_SIZE: u64 = 16 << 40;

/// Copy buffer size; also the granularity at which cancellation is checked during large files.
const BUF_SIZE: usize = 256 * 1024;

/// A run of zeros at least this long is turned into a hole instead of being written.
const HOLE_BLOCK: usize = 4096;

/// What to extract and how.
#[derive(Clone, Debug)]
pub struct UnpackOptions {
    /// Leading path components to remove (after a leading `/`), like GNU tar's `--strip-components`.
    pub strip_components: usize,
    /// Only these relative paths (files, or whole directories); empty = everything.
    pub paths: Vec<PathBuf>,
    /// Restore numeric uid/gid. Default: true when running as root (euid 0).
    pub same_owner: bool,
    /// Refuse entries whose data or sparse real size is larger than this. Default [`DEFAULT_MAX_ENTRY_SIZE`].
    pub max_entry_size: u64,
    /// Set to true to stop at the next entry or buffer: [`ArchiveError::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        let root = rustix::process::geteuid().is_root();
        UnpackOptions {
            strip_components: 0,
            paths: Vec::new(),
            same_owner: root,
            max_entry_size: DEFAULT_MAX_ENTRY_SIZE,
            cancel: None,
        }
    }
}

/// What [`unpack`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Counts of every entry in the archive (the same as [`scan`] returns, filter or not), so a restore can compare
    /// them with the manifest.
    pub counts: Counts,
    /// Entries read but not written: outside `paths`, removed entirely by `strip_components`, or of an unknown type.
    pub skipped: u64,
    /// Things the caller should show: a leading `/` removed, metadata that could not be restored and why.
    pub warnings: Vec<String>,
}

/// Extract `tar_stream` (already decompressed, see [`super::compress::decoder`]) into the existing directory
/// `dest`. See the module docs for the rules. On error, `dest` may hold a partial extraction: callers extract
/// into a staging directory and swap only on success.
pub fn unpack<R: Read>(
    tar_stream: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport, ArchiveError> {
    let root = open_dest(dest)?;
    let mut x = Extractor {
        root,
        dest: dest.to_path_buf(),
        opts,
        sel: Selection::new(opts.strip_components, &opts.paths),
        dirs: Vec::new(),
        notes: Notes::default(),
        counts: Counts::default(),
        skipped: 0,
        buf: vec![0u8; BUF_SIZE],
        euid: rustix::process::geteuid().as_raw(),
        egid: rustix::process::getegid().as_raw(),
    };
    x.counts = walk(tar_stream, opts.max_entry_size, |entry, d| {
        check_cancel(&opts.cancel)?;
        x.extract(entry, d)
    })?;
    x.finish_dirs()?;
    Ok(UnpackReport {
        counts: x.counts,
        skipped: x.skipped,
        warnings: x.notes.into_vec(),
    })
}

/// Walk an archive without writing anything: count entries exactly like `pack` counts them (module docs), read all
/// data so that truncation and corruption surface (including the zstd frame checksum, by reading the stream to its
/// end), and return the counts.
pub fn scan<R: Read>(tar_stream: R) -> Result<Counts, ArchiveError> {
    let mut buf = vec![0u8; BUF_SIZE];
    // Verify reads what is there; size limits are a concern of writing.
    walk(tar_stream, u64::MAX, |entry, d| {
        drain(entry, d.data_size, &d.display, &mut buf, &None)
    })
}

/// What [`unpack`] with `opts` would write, without writing anything: the relative paths of the entries it
/// extracts and of the parent directories it creates for them (the destination root left out). The same walk,
/// name rules and selection as `unpack` (`..`, NUL, `--strip`, `--path`, hardlinks to outside the selection), so
/// an archive unpack refuses fails here too, with the same error. The `restore --dry-run` listing.
pub fn list<R: Read>(
    tar_stream: R,
    opts: &UnpackOptions,
) -> Result<BTreeSet<PathBuf>, ArchiveError> {
    let sel = Selection::new(opts.strip_components, &opts.paths);
    let mut names = BTreeSet::new();
    let mut buf = vec![0u8; BUF_SIZE];
    walk(tar_stream, opts.max_entry_size, |entry, d| {
        check_cancel(&opts.cancel)?;
        if !matches!(d.kind, Kind::Skip(_)) {
            let (_, comps) = sel
                .member(&d.path, d.kind == Kind::Dir)
                .map_err(|e| unsafe_entry(&d.display, e.reason()))?;
            let written = match (&comps, d.kind) {
                (None, _) => false,
                (Some(_), Kind::Hardlink) => {
                    let (_, target) = sel
                        .link_target(hardlink_target(d)?)
                        .map_err(|reason| unsafe_entry(&d.display, reason))?;
                    sel.selected(&target)
                }
                (Some(_), _) => true,
            };
            if let (true, Some(comps)) = (written, comps) {
                let mut p: PathBuf = comps.iter().collect();
                // The entry, then its parents up to the first one already listed.
                while !p.as_os_str().is_empty() && names.insert(p.clone()) {
                    p.pop();
                }
            }
        }
        drain(entry, d.data_size, &d.display, &mut buf, &opts.cancel)
    })?;
    Ok(names)
}

/// The one loop over an archive's entries that `unpack` and `scan` share: metadata headers capped (`PaxTap`),
/// a missing end-of-archive marker treated as truncation (`EndCheck`), header errors naming the last good entry,
/// every entry counted by the module's rules, then handed to `each`; the stream is read to its end.
fn walk<R: Read>(
    tar_stream: R,
    max_entry_size: u64,
    mut each: impl FnMut(
        &mut tar::Entry<'_, EndCheck<PaxTap<R>>>,
        &Described,
    ) -> Result<(), ArchiveError>,
) -> Result<Counts, ArchiveError> {
    let mut counts = Counts::default();
    let tap = PaxTap::new(tar_stream);
    let pax = tap.current.clone();
    let refused = tap.refused.clone();
    let mut archive = tar::Archive::new(EndCheck::new(tap));
    {
        let entries = archive
            .entries()
            .map_err(|e| ArchiveError::Corrupt(format!("cannot read the archive: {e}")))?;
        let mut last: Option<String> = None;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| refused.take().unwrap_or_else(|| header_error(&last, e)))?;
            let d = describe(&mut entry, pax.take(), max_entry_size)?;
            last = Some(d.display.clone());
            count(&mut counts, &d);
            each(&mut entry, &d)?;
        }
    }
    finish_stream(archive.into_inner())?;
    Ok(counts)
}

/// Wrap an (already decompressed) tar stream for a caller that walks it with the `tar` crate itself (the
/// `restore --dry-run` listing): reads fail, with a message naming the header, as soon as a metadata header
/// declaring more than [`MAX_META_HEADER`] arrives, before the crate reads its data into memory.
pub fn meta_capped<R: Read>(tar_stream: R) -> impl Read {
    PaxTap::new(tar_stream)
}

fn count(c: &mut Counts, d: &Described) {
    c.add(match d.kind {
        Kind::File => Counted::File(d.logical_size),
        Kind::Dir => Counted::Dir,
        Kind::Symlink => Counted::Symlink,
        Kind::Hardlink => Counted::Hardlink,
        Kind::Fifo | Kind::Char | Kind::Block => Counted::Other,
        Kind::Skip(_) => return,
    });
}

fn header_error(last: &Option<String>, e: io::Error) -> ArchiveError {
    match last {
        Some(name) => ArchiveError::Corrupt(format!("after entry `{name}`: {e}")),
        None => ArchiveError::Corrupt(format!("at the first entry: {e}")),
    }
}

fn check_cancel(cancel: &Option<Arc<AtomicBool>>) -> Result<(), ArchiveError> {
    match cancel {
        Some(c) if c.load(Ordering::Relaxed) => Err(ArchiveError::Cancelled),
        _ => Ok(()),
    }
}

/// Read exactly `len` bytes of entry data into `buf` chunks, handing each to `sink`. A short read is corruption.
fn pump<R: Read>(
    src: &mut R,
    len: u64,
    name: &str,
    buf: &mut [u8],
    cancel: &Option<Arc<AtomicBool>>,
    mut sink: impl FnMut(&[u8]) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    let mut left = len;
    while left > 0 {
        check_cancel(cancel)?;
        let want = left.min(buf.len() as u64) as usize;
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(ArchiveError::Corrupt(format!(
                    "entry `{name}`: data truncated ({} of {len} bytes present)",
                    len - left
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ArchiveError::Corrupt(format!("entry `{name}`: {e}"))),
        };
        sink(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn drain<R: Read>(
    src: &mut R,
    len: u64,
    name: &str,
    buf: &mut [u8],
    cancel: &Option<Arc<AtomicBool>>,
) -> Result<(), ArchiveError> {
    pump(src, len, name, buf, cancel, |_| Ok(()))
}

/// Tracks whether the underlying stream hit its end: the tar crate reports a stream that simply stops at a header
/// boundary as a clean end, which for us is a truncated archive.
struct EndCheck<R> {
    inner: R,
    hit_eof: bool,
}

impl<R> EndCheck<R> {
    fn new(inner: R) -> Self {
        EndCheck {
            inner,
            hit_eof: false,
        }
    }
}

impl<R: Read> Read for EndCheck<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof = true;
        }
        Ok(n)
    }
}

/// After the last entry: require that the end-of-archive marker was seen, then read the rest of the stream (record
/// padding) so that the decompressor reaches the end of its frame and verifies the checksum.
fn finish_stream<R: Read>(mut s: EndCheck<R>) -> Result<(), ArchiveError> {
    if s.hit_eof {
        return Err(ArchiveError::Corrupt(
            "the archive ends without its end-of-archive marker: it is truncated".into(),
        ));
    }
    io::copy(&mut s.inner, &mut io::sink())
        .map_err(|e| ArchiveError::Corrupt(format!("after the end-of-archive marker: {e}")))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// The destination

/// Open the destination directory: trusted (the caller chose it), so it may be reached through symlinks.
fn open_dest(dest: &Path) -> Result<OwnedFd, ArchiveError> {
    open_root(dest).map_err(|e| ArchiveError::Io {
        path: dest.to_path_buf(),
        source: e,
    })
}
// ---------------------------------------------------------------------------------------------------------------
// Extraction

struct DirMeta {
    comps: Vec<OsString>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: (i64, u32),
}

/// Aggregated warnings: one line per kind of problem, with a count and an example.
#[derive(Default)]
struct Notes {
    leading_slash: bool,
    owner_not_root: u64,
    owner_failed: Option<(u64, String, String)>,
    xattr_failed: BTreeMap<String, (u64, String, String)>,
    devices_skipped: Option<(u64, String)>,
    meta_failed: Option<(u64, String, String)>,
    link_outside_filter: Vec<String>,
    unknown_types: Vec<String>,
}

fn bump(slot: &mut Option<(u64, String, String)>, example: &str, err: &io::Error) {
    match slot {
        Some((n, _, _)) => *n += 1,
        None => *slot = Some((1, example.to_string(), err.to_string())),
    }
}

impl Notes {
    fn into_vec(self) -> Vec<String> {
        let mut w = Vec::new();
        if self.leading_slash {
            w.push(
                "removing leading `/` from member names (entries land inside the destination)"
                    .into(),
            );
        }
        if self.owner_not_root > 0 {
            w.push(format!(
                "ownership not restored for {} entries: not running as root (files belong to the current user)",
                self.owner_not_root
            ));
        }
        if let Some((n, ex, e)) = self.owner_failed {
            w.push(format!(
                "ownership not restored for {n} entries (e.g. `{ex}`: {e})"
            ));
        }
        for (ns, (n, ex, e)) in self.xattr_failed {
            w.push(format!(
                "xattrs in {ns}.* not restored on {n} entries (e.g. `{ex}`: {e}){}",
                if ns == "trusted" || ns == "security" {
                    "; these namespaces need root"
                } else {
                    ""
                }
            ));
        }
        if let Some((n, ex)) = self.devices_skipped {
            w.push(format!(
                "{n} device nodes not created (e.g. `{ex}`): creating device nodes needs root"
            ));
        }
        if let Some((n, ex, e)) = self.meta_failed {
            w.push(format!(
                "mode or mtime not restored on {n} entries (e.g. `{ex}`: {e})"
            ));
        }
        for l in self.link_outside_filter {
            w.push(format!(
                "hardlink `{l}` not restored: its target is outside the selected paths (select it too)"
            ));
        }
        for u in self.unknown_types {
            w.push(format!("skipped entry of unknown type: {u}"));
        }
        w
    }
}

struct Extractor<'o> {
    root: OwnedFd,
    dest: PathBuf,
    opts: &'o UnpackOptions,
    sel: Selection,
    dirs: Vec<DirMeta>,
    notes: Notes,
    counts: Counts,
    skipped: u64,
    buf: Vec<u8>,
    euid: libc::uid_t,
    egid: libc::gid_t,
}

/// The raw target of hardlink entry `d`.
fn hardlink_target(d: &Described) -> Result<&[u8], ArchiveError> {
    d.link
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ArchiveError::Corrupt(format!("hardlink `{}` has no target", d.display)))
}

fn unsafe_entry(entry: &str, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Unsafe {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

impl Extractor<'_> {
    fn io_err(&self, comps: &[OsString], e: io::Error) -> ArchiveError {
        let mut p = self.dest.clone();
        for c in comps {
            p.push(c);
        }
        ArchiveError::Io { path: p, source: e }
    }

    /// Open the directory holding `comps`' last component, creating missing parents when `create`. Refuses to
    /// pass through a symlink or a non-directory.
    fn walk(&self, comps: &[OsString], create: bool, entry: &str) -> Result<OwnedFd, ArchiveError> {
        let mut cur = self.root.try_clone().map_err(|e| self.io_err(&[], e))?;
        for (i, c) in comps.iter().enumerate() {
            let next = match open_dir_at(cur.as_raw_fd(), &cstr(c)) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                    // Implicit parent: default permissions like GNU tar (0777 & ~umask).
                    match mkdir_at(cur.as_raw_fd(), c, 0o777) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(self.io_err(&comps[..=i], e)),
                    }
                    open_dir_at(cur.as_raw_fd(), &cstr(c)).map_err(|e| {
                        self.classify_walk_error(&comps[..=i], cur.as_raw_fd(), e, entry)
                    })?
                }
                Err(e) => {
                    return Err(self.classify_walk_error(&comps[..=i], cur.as_raw_fd(), e, entry))
                }
            };
            cur = next;
        }
        Ok(cur)
    }

    fn classify_walk_error(
        &self,
        prefix: &[OsString],
        parent: RawFd,
        e: io::Error,
        entry: &str,
    ) -> ArchiveError {
        let last = prefix.last().expect("non-empty prefix");
        match type_at(parent, last) {
            Ok(Some(libc::S_IFLNK)) => unsafe_entry(
                entry,
                format!(
                    "`{}` is a symlink: refusing to write through it",
                    join(prefix)
                ),
            ),
            Ok(Some(t)) if t != libc::S_IFDIR => {
                unsafe_entry(entry, format!("`{}` is not a directory", join(prefix)))
            }
            _ => self.io_err(prefix, e),
        }
    }

    /// Make room for a new non-directory leaf: remove whatever non-directory is there (a symlink is removed, never
    /// followed). A directory in the way is an error.
    fn clear_leaf(
        &self,
        parent: RawFd,
        comps: &[OsString],
        entry: &str,
    ) -> Result<(), ArchiveError> {
        let name = comps.last().expect("leaf");
        match type_at(parent, name).map_err(|e| self.io_err(comps, e))? {
            None => Ok(()),
            Some(libc::S_IFDIR) => Err(unsafe_entry(
                entry,
                format!("a directory exists at `{}`", join(comps)),
            )),
            Some(_) => unlink_at(parent, name).map_err(|e| self.io_err(comps, e)),
        }
    }

    fn extract<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        d: &Described,
    ) -> Result<(), ArchiveError> {
        if let Kind::Skip(t) = d.kind {
            // PAX global headers carry no file; anything else is a type we do not know how to restore.
            if t != b'g' {
                self.notes
                    .unknown_types
                    .push(format!("`{}` (type {:?})", d.display, t as char));
            }
            self.skipped += 1;
            return Ok(());
        }
        let (slash, comps) = self
            .sel
            .member(&d.path, d.kind == Kind::Dir)
            .map_err(|e| unsafe_entry(&d.display, e.reason()))?;
        self.notes.leading_slash |= slash;
        let Some(comps) = comps else {
            self.skipped += 1;
            return Ok(());
        };
        if self.opts.same_owner {
            // chown failures are noted where they happen
        } else if d.uid != u64::from(self.euid) || d.gid != u64::from(self.egid) {
            self.notes.owner_not_root += 1;
        }
        match d.kind {
            Kind::Dir => self.make_dir(&comps, d),
            Kind::File => self.make_file(entry, &comps, d),
            Kind::Symlink => self.make_symlink(&comps, d),
            Kind::Hardlink => self.make_hardlink(&comps, d),
            Kind::Fifo | Kind::Char | Kind::Block => self.make_node(&comps, d),
            Kind::Skip(_) => unreachable!("handled above"),
        }
    }

    fn make_dir(&mut self, comps: &[OsString], d: &Described) -> Result<(), ArchiveError> {
        let fd = if comps.is_empty() {
            self.root.try_clone().map_err(|e| self.io_err(comps, e))?
        } else {
            let parent = self.walk(&comps[..comps.len() - 1], true, &d.display)?;
            let name = comps.last().expect("non-empty");
            match type_at(parent.as_raw_fd(), name).map_err(|e| self.io_err(comps, e))? {
                None => {}
                Some(libc::S_IFDIR) => {}
                Some(libc::S_IFLNK) => {
                    return Err(unsafe_entry(
                        &d.display,
                        format!(
                            "a symlink exists at `{}`: refusing to treat it as a directory",
                            join(comps)
                        ),
                    ))
                }
                Some(_) => {
                    unlink_at(parent.as_raw_fd(), name).map_err(|e| self.io_err(comps, e))?
                }
            }
            // Owner-only until the final pass sets the real mode, so nobody else can slip files in meanwhile.
            match mkdir_at(parent.as_raw_fd(), name, 0o700) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(self.io_err(comps, e)),
            }
            open_dir_at(parent.as_raw_fd(), &cstr(name))
                .map_err(|e| self.classify_walk_error(comps, parent.as_raw_fd(), e, &d.display))?
        };
        if !d.xattrs.is_empty() {
            let f = File::from(fd);
            self.set_xattrs_file(&f, comps, d);
        }
        self.dirs.push(DirMeta {
            comps: comps.to_vec(),
            mode: d.mode,
            uid: d.uid,
            gid: d.gid,
            mtime: d.mtime,
        });
        Ok(())
    }

    fn make_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        comps: &[OsString],
        d: &Described,
    ) -> Result<(), ArchiveError> {
        let parent = self.walk(&comps[..comps.len() - 1], true, &d.display)?;
        self.clear_leaf(parent.as_raw_fd(), comps, &d.display)?;
        let c = cstr(comps.last().expect("leaf"));
        let mut file =
            create_excl_at(parent.as_raw_fd(), &c, 0o600).map_err(|e| self.io_err(comps, e))?;
        let mut buf = std::mem::take(&mut self.buf);
        let res = self.write_data(entry, &mut file, comps, d, &mut buf);
        self.buf = buf;
        res?;
        file.set_len(d.logical_size)
            .map_err(|e| self.io_err(comps, e))?;
        if self.opts.same_owner {
            if let Err(e) = chown_fd(file.as_raw_fd(), d.uid, d.gid) {
                bump(&mut self.notes.owner_failed, &d.display, &e);
            }
        }
        self.set_xattrs_file(&file, comps, d);
        chmod_fd(file.as_raw_fd(), d.mode).map_err(|e| self.io_err(comps, e))?;
        set_mtime_fd(file.as_raw_fd(), d.mtime).map_err(|e| self.io_err(comps, e))?;
        Ok(())
    }

    fn write_data<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
        comps: &[OsString],
        d: &Described,
        buf: &mut [u8],
    ) -> Result<(), ArchiveError> {
        let cancel = &self.opts.cancel;
        let write = |f: &mut File, data: &[u8]| {
            write_skipping_zeros(f, data).map_err(|e| self.io_err(comps, e))
        };
        match &d.sparse {
            None => pump(entry, d.data_size, &d.display, buf, cancel, |b| {
                write(file, b)
            }),
            Some(Sparse::V0 { realsize, map }) => {
                check_map(map, *realsize, 0, d.data_size, &d.display)?;
                for &(off, len) in map {
                    file.seek(SeekFrom::Start(off))
                        .map_err(|e| self.io_err(comps, e))?;
                    pump(entry, len, &d.display, buf, cancel, |b| write(file, b))?;
                }
                Ok(())
            }
            Some(Sparse::V1 { realsize }) => {
                let (map, used) = read_sparse_map(entry, d.data_size, &d.display)?;
                check_map(&map, *realsize, used, d.data_size, &d.display)?;
                for &(off, len) in &map {
                    file.seek(SeekFrom::Start(off))
                        .map_err(|e| self.io_err(comps, e))?;
                    pump(entry, len, &d.display, buf, cancel, |b| write(file, b))?;
                }
                Ok(())
            }
        }
    }

    fn set_xattrs_file(&mut self, f: &File, comps: &[OsString], d: &Described) {
        use xattr::FileExt;
        for (k, v) in &d.xattrs {
            if let Err(e) = f.set_xattr(OsStr::from_bytes(k), v) {
                self.note_xattr(k, &join(comps), &e);
            }
        }
    }

    fn set_xattrs_path(&mut self, parent: RawFd, comps: &[OsString], d: &Described) {
        let p = proc_path(parent, comps.last().expect("leaf"));
        for (k, v) in &d.xattrs {
            // xattr::set does not follow symlinks (lsetxattr).
            if let Err(e) = xattr::set(&p, OsStr::from_bytes(k), v) {
                self.note_xattr(k, &join(comps), &e);
            }
        }
    }

    fn note_xattr(&mut self, key: &[u8], example: &str, e: &io::Error) {
        let ns =
            String::from_utf8_lossy(key.split(|&b| b == b'.').next().unwrap_or(key)).into_owned();
        let slot = self
            .notes
            .xattr_failed
            .entry(ns)
            .or_insert_with(|| (0, example.to_string(), e.to_string()));
        slot.0 += 1;
    }

    fn make_symlink(&mut self, comps: &[OsString], d: &Described) -> Result<(), ArchiveError> {
        let target = d.link.as_deref().filter(|t| !t.is_empty()).ok_or_else(|| {
            ArchiveError::Corrupt(format!("symlink `{}` has no target", d.display))
        })?;
        let target = CString::new(target)
            .map_err(|_| unsafe_entry(&d.display, "the symlink target contains a NUL byte"))?;
        let parent = self.walk(&comps[..comps.len() - 1], true, &d.display)?;
        self.clear_leaf(parent.as_raw_fd(), comps, &d.display)?;
        let name = comps.last().expect("leaf");
        let c = cstr(name);
        // The target is stored verbatim (it may point anywhere: it is content, never followed here).
        symlink_at(&target, parent.as_raw_fd(), &c).map_err(|e| self.io_err(comps, e))?;
        self.leaf_meta(parent.as_raw_fd(), comps, d, false);
        Ok(())
    }

    /// Owner, xattrs, mode (unless a symlink) and mtime of a leaf that has no open fd.
    fn leaf_meta(&mut self, parent: RawFd, comps: &[OsString], d: &Described, chmod: bool) {
        let name = comps.last().expect("leaf");
        if self.opts.same_owner {
            if let Err(e) = chown_at(parent, name, d.uid, d.gid) {
                bump(&mut self.notes.owner_failed, &d.display, &e);
            }
        }
        if !d.xattrs.is_empty() {
            self.set_xattrs_path(parent, comps, d);
        }
        if chmod {
            // No fchmodat(AT_SYMLINK_NOFOLLOW) on Linux; the node was just created by us in a directory reached
            // without symlinks, and a FIFO cannot be opened without blocking, so chmod it through /proc.
            let p = proc_path(parent, name);
            if let Err(e) = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(d.mode)) {
                bump(&mut self.notes.meta_failed, &d.display, &e);
            }
        }
        if let Err(e) = set_mtime_at(parent, name, d.mtime) {
            bump(&mut self.notes.meta_failed, &d.display, &e);
        }
    }

    fn make_hardlink(&mut self, comps: &[OsString], d: &Described) -> Result<(), ArchiveError> {
        let raw = hardlink_target(d)?;
        let (slash, target) = self
            .sel
            .link_target(raw)
            .map_err(|reason| unsafe_entry(&d.display, reason))?;
        self.notes.leading_slash |= slash;
        if !self.sel.selected(&target) {
            self.notes
                .link_outside_filter
                .push(format!("{} -> {}", join(comps), join(&target)));
            self.skipped += 1;
            return Ok(());
        }
        let tparent = match self.walk(&target[..target.len() - 1], false, &d.display) {
            Ok(fd) => fd,
            Err(ArchiveError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                return Err(missing_target(&d.display, &target))
            }
            Err(ArchiveError::Unsafe { entry, reason }) => {
                return Err(ArchiveError::Unsafe {
                    entry,
                    reason: format!("hardlink target `{}`: {reason}", join(&target)),
                })
            }
            Err(e) => return Err(e),
        };
        let tname = target.last().expect("non-empty");
        match type_at(tparent.as_raw_fd(), tname).map_err(|e| self.io_err(&target, e))? {
            None => return Err(missing_target(&d.display, &target)),
            Some(libc::S_IFDIR) => {
                return Err(unsafe_entry(
                    &d.display,
                    format!("hardlink target `{}` is a directory", join(&target)),
                ))
            }
            Some(_) => {}
        }
        if target == comps {
            // A link to itself: the file is already there.
            return Ok(());
        }
        let parent = self.walk(&comps[..comps.len() - 1], true, &d.display)?;
        self.clear_leaf(parent.as_raw_fd(), comps, &d.display)?;
        let (ct, cn) = (cstr(tname), cstr(comps.last().expect("leaf")));
        // Never follows a symlink target: the symlink itself is linked.
        link_at(tparent.as_raw_fd(), &ct, parent.as_raw_fd(), &cn)
            .map_err(|e| self.io_err(comps, e))?;
        Ok(())
    }

    fn make_node(&mut self, comps: &[OsString], d: &Described) -> Result<(), ArchiveError> {
        let parent = self.walk(&comps[..comps.len() - 1], true, &d.display)?;
        self.clear_leaf(parent.as_raw_fd(), comps, &d.display)?;
        let c = cstr(comps.last().expect("leaf"));
        let (ty, dev) = match d.kind {
            Kind::Fifo => (FileType::Fifo, (0, 0)),
            Kind::Char => (FileType::CharacterDevice, d.dev),
            _ => (FileType::BlockDevice, d.dev),
        };
        match mknod_at(parent.as_raw_fd(), &c, ty, dev) {
            Ok(()) => {}
            Err(e) if ty != FileType::Fifo && e.raw_os_error() == Some(libc::EPERM) => {
                match &mut self.notes.devices_skipped {
                    Some((n, _)) => *n += 1,
                    None => self.notes.devices_skipped = Some((1, d.display.clone())),
                }
                return Ok(());
            }
            Err(e) => return Err(self.io_err(comps, e)),
        }
        self.leaf_meta(parent.as_raw_fd(), comps, d, true);
        Ok(())
    }

    /// Owner, mode and mtime of directories, deepest first.
    fn finish_dirs(&mut self) -> Result<(), ArchiveError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|m| std::cmp::Reverse(m.comps.len()));
        for m in dirs {
            let shown = join(&m.comps);
            let fd = if m.comps.is_empty() {
                self.root.try_clone().map_err(|e| self.io_err(&[], e))?
            } else {
                let parent = self.walk(&m.comps[..m.comps.len() - 1], false, &shown)?;
                open_dir_at(
                    parent.as_raw_fd(),
                    &cstr(m.comps.last().expect("non-empty")),
                )
                .map_err(|e| self.classify_walk_error(&m.comps, parent.as_raw_fd(), e, &shown))?
            };
            if self.opts.same_owner {
                if let Err(e) = chown_fd(fd.as_raw_fd(), m.uid, m.gid) {
                    bump(&mut self.notes.owner_failed, &shown, &e);
                }
            }
            chmod_fd(fd.as_raw_fd(), m.mode).map_err(|e| self.io_err(&m.comps, e))?;
            set_mtime_fd(fd.as_raw_fd(), m.mtime).map_err(|e| self.io_err(&m.comps, e))?;
        }
        Ok(())
    }
}

fn missing_target(entry: &str, target: &[OsString]) -> ArchiveError {
    ArchiveError::Corrupt(format!(
        "hardlink `{entry}` points to `{}`, which does not exist in the destination \
         (a hardlink's target must come earlier in the archive)",
        join(target)
    ))
}

/// Write `data` at the file's position, seeking over runs of zeros (whole 4 KiB pieces) instead of writing them.
fn write_skipping_zeros(f: &mut File, data: &[u8]) -> io::Result<()> {
    let zero = |s: &[u8]| s.len() == HOLE_BLOCK && s.iter().all(|&b| b == 0);
    let mut i = 0;
    while i < data.len() {
        let is_zero = zero(&data[i..(i + HOLE_BLOCK).min(data.len())]);
        let mut j = i;
        while j < data.len() && zero(&data[j..(j + HOLE_BLOCK).min(data.len())]) == is_zero {
            j = (j + HOLE_BLOCK).min(data.len());
        }
        if is_zero {
            f.seek(SeekFrom::Current((j - i) as i64))?;
        } else {
            f.write_all(&data[i..j])?;
        }
        i = j;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 3 round trip): xattr values holding a newline broke the tar crate's PAX parser.
    #[test]
    fn xattr_values_with_newlines_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        let value = b"a\nb\n\n12 path=evil\n\x00\xff";
        if xattr::set(src.join("f"), "user.nl", value).is_err() {
            eprintln!("SKIPPING: no user xattrs on this filesystem");
            return;
        }
        // A long name, so the PAX header also carries a `path` record after the xattr.
        let long = "n".repeat(150);
        std::fs::write(src.join(&long), b"y").unwrap();
        xattr::set(src.join(&long), "user.nl", value).unwrap();
        let (_, tar) =
            crate::archive::pack::pack(&src, Vec::new(), &Default::default(), &mut |_| {}).unwrap();
        assert_eq!(scan(&tar[..]).unwrap().files, 2);
        unpack(&tar[..], &dst, &UnpackOptions::default()).unwrap();
        for name in ["f", long.as_str()] {
            assert_eq!(
                xattr::get(dst.join(name), "user.nl").unwrap().as_deref(),
                Some(&value[..]),
                "{name}"
            );
        }
    }

    #[test]
    fn meta_capped_stops_the_tar_crate_at_an_oversized_header() {
        let mut h = tar::Header::new_ustar();
        h.set_path("PaxHeaders/big").unwrap();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(MAX_META_HEADER + 1);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.resize(512 + 2 * MAX_META_HEADER as usize, 0);
        let mut a = tar::Archive::new(meta_capped(&bytes[..]));
        let err = a.entries().unwrap().next().unwrap().err().unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("`PaxHeaders/big`") && msg.contains(&MAX_META_HEADER.to_string()),
            "{msg}"
        );
    }

    #[test]
    fn zero_runs_become_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut f = File::create(&p).unwrap();
        let mut data = vec![0u8; 4 * 1024 * 1024];
        data[0] = 1;
        let n = data.len();
        data[n - 1] = 2;
        write_skipping_zeros(&mut f, &data).unwrap();
        f.set_len(n as u64).unwrap();
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), data);
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&p).unwrap().blocks();
        assert!(blocks * 512 < 1024 * 1024, "{blocks} blocks allocated");
    }
}
