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
//! Cost (issue 11): entries arrive in walk order, so the directories of the current path are kept open (at most
//! [`MAX_OPEN_DIRS`], the deepest; shallower ones are reopened the same way when the walk comes back up) and
//! reused by the next entry instead of being walked again from the destination: about one `openat` per entry,
//! like GNU tar (a directory is never removed or renamed by the extraction, so a kept descriptor stays the
//! directory at that path; see `Extractor::enter`). A leaf is created first and only examined when something is
//! already there (EEXIST), which an empty staging directory never has. Files are written with `pwrite` (holes
//! are skipped offsets, no `lseek`) and truncated to their size only when they end in a hole. When a new file
//! already gets the archive's owner (running as root, the owner is us and the directory gives the right group)
//! it is created with its final mode and `fchown`/`fchmod` are skipped; not when the mode has set-id or sticky
//! bits, the umask would narrow it, or the directory has a default ACL. Decompression runs on the calling
//! thread and extraction on a thread of its own (`readahead`), so the two overlap as `zstd -dc | tar -x` does.
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
//! each after everything below it, so writing children does not change a directory's mtime and a read-only directory does not
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
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustix::fs::FileType;

use super::fsat::{
    chmod_fd, chown_at, chown_fd, create_excl_at, cstr, current_umask, has_default_acl, link_at,
    mkdir_at, mknod_at, open_dir_at, open_root, proc_path, set_mtime_at, set_mtime_fd,
    set_xattr_fd, symlink_at, syncfs_fd, type_at, unlink_at, Stat,
};
pub use super::fsat::{exists_at, open_dir_beneath};
use super::names::{join, Selection};
use super::pax::{check_map, describe, read_sparse_map, Described, Kind, PaxTap, Sparse};
pub use super::pax::{MAX_META_HEADER, MAX_SPARSE_SEGMENTS};
use super::readahead::with_readahead;
use super::{ArchiveError, Counted, Counts};

/// Default header sanity limit for one entry's size: 16 TiB.
pub const DEFAULT_MAX_ENTRY_SIZE: u64 = 16 << 40;

/// Copy buffer size; also the granularity at which cancellation is checked during large files.
const BUF_SIZE: usize = 256 * 1024;

/// Directories of the current path kept open at most (the deepest ones), so a deep archive cannot exhaust the
/// process's descriptors.
const MAX_OPEN_DIRS: usize = 64;

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
    /// Make everything written durable before returning Ok: one `syncfs` of the destination's filesystem at the
    /// end (default true), so a restore swaps in, and reports, only a tree that is on disk. One call for the
    /// whole tree instead of an `fsync` per file (each a journal commit); it also waits for other dirty data on
    /// that filesystem, which is the price of the single call.
    pub durable: bool,
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
            durable: true,
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
        umask: current_umask(),
        root: Level {
            name: OsString::new(),
            fd: Some(root),
            creates: Creates::Unexamined,
        },
        open: Vec::new(),
    };
    // Decompression (and decryption) on this thread, extraction on its own: see `readahead`.
    with_readahead(tar_stream, |stream| {
        x.counts = walk(stream, opts.max_entry_size, |entry, d| {
            check_cancel(&opts.cancel)?;
            x.extract(entry, d)
        })?;
        x.open.clear();
        x.finish_dirs()?;
        if opts.durable {
            syncfs_fd(x.root_fd()).map_err(|e| x.io_err(&[], e))?;
        }
        Ok(UnpackReport {
            counts: std::mem::take(&mut x.counts),
            skipped: x.skipped,
            warnings: std::mem::take(&mut x.notes).into_vec(),
        })
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
        cause: e,
    })
}
// ---------------------------------------------------------------------------------------------------------------
// Extraction

struct DirMeta {
    comps: Vec<OsString>,
    /// Created by this extraction with the owner it should have: no `fchown`.
    owner_ok: bool,
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

/// One open directory of the path the extractor is working in (see [`Extractor::enter`]).
struct Level {
    name: OsString,
    /// Closed (None) when more than [`MAX_OPEN_DIRS`] levels are below it; reopened on the way back up.
    fd: Option<OwnedFd>,
    creates: Creates,
}

/// What a file created in a directory gets without further calls, as far as the extractor can tell.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Creates {
    /// Owned by the effective uid and this gid (the directory's own group when it has the set-group-ID bit, else
    /// the effective gid), with `mode & !umask` (no default ACL in the directory).
    Plain { gid: u32 },
    /// Not known (not root, so ownership is not restored anyway; a default ACL; the directory could not be
    /// examined): every metadata call is made.
    Unknown,
    /// Not looked at yet: done when the first leaf is made there ([`Extractor::here`]), so a directory that
    /// holds only directories costs nothing.
    Unexamined,
}

struct Extractor<'o> {
    /// The destination; its `name` is empty.
    root: Level,
    /// The directories from the destination down to the current entry's parent, each opened from the one above
    /// with `O_DIRECTORY | O_NOFOLLOW` (see [`Extractor::enter`]).
    open: Vec<Level>,
    /// The process's umask, when known: a file created with `mode` gets `mode & !umask`.
    umask: Option<u32>,
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
        ArchiveError::Io { path: p, cause: e }
    }

    /// Make `dirs` (relative to the destination) the current directory and return its descriptor, creating
    /// missing directories when `create` (with default permissions, like GNU tar's implicit parents). Each
    /// component is opened from the one above with `O_DIRECTORY | O_NOFOLLOW`, exactly as [`Self::walk`] does, but
    /// the directories of the previous entry's path are kept open and reused: entries arrive in walk order, so
    /// most entries need no open at all besides their own (GNU tar's count), where walking from the destination
    /// every time cost one open per path component per entry.
    ///
    /// Why a kept descriptor is still the directory at that path: nothing the extractor does removes or renames
    /// a directory (leaves are unlinked only when they are not directories, `unlinkat` without `AT_REMOVEDIR`
    /// cannot remove one, and a directory in the way of a leaf is an error), so a directory once opened below the
    /// destination stays where it was for the whole extraction. Another process that can rename directories
    /// inside the destination while it is extracted could redirect writes either way (staging directories are
    /// made where only their owner writes). The returned descriptor is valid until the next call.
    fn enter(
        &mut self,
        dirs: &[OsString],
        create: bool,
        entry: &str,
    ) -> Result<(RawFd, Creates), ArchiveError> {
        let keep = self
            .open
            .iter()
            .zip(dirs)
            .take_while(|(l, c)| &l.name == *c)
            .count();
        self.open.truncate(keep);
        self.reopen(entry)?;
        for i in keep..dirs.len() {
            let cur = self.top().0;
            let c = &dirs[i];
            let mut made = false;
            let fd = match open_dir_at(cur, &cstr(c)) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                    match mkdir_at(cur, c, 0o777) {
                        Ok(()) => made = true,
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(self.io_err(&dirs[..=i], e)),
                    }
                    open_dir_at(cur, &cstr(c))
                        .map_err(|e| self.classify_walk_error(&dirs[..=i], cur, e, entry))?
                }
                Err(e) => return Err(self.classify_walk_error(&dirs[..=i], cur, e, entry)),
            };
            self.push(c, fd, made);
        }
        Ok(self.top())
    }

    /// Add the directory `name` (just opened from the current one) to the current path, closing the shallowest
    /// open level when more than [`MAX_OPEN_DIRS`] would be open.
    /// `made`: it was just created by `mkdirat` in the current directory, so it inherited what matters from it
    /// (the set-group-ID bit and group, a default ACL) and files created in it get the same as there.
    fn push(&mut self, name: &OsStr, fd: OwnedFd, made: bool) {
        let creates = if made {
            self.top().1
        } else {
            Creates::Unexamined
        };
        self.open.push(Level {
            name: name.to_os_string(),
            fd: Some(fd),
            creates,
        });
        if self.open.len() > MAX_OPEN_DIRS {
            let shallowest = self.open.len() - MAX_OPEN_DIRS - 1;
            self.open[shallowest].fd = None;
        }
    }

    /// After moving up past the window of open levels: reopen the closed ones from the destination down (each
    /// from the one above, `O_NOFOLLOW`, as they were opened), keeping the window's bound.
    fn reopen(&mut self, entry: &str) -> Result<(), ArchiveError> {
        if self.open.last().is_none_or(|l| l.fd.is_some()) {
            return Ok(());
        }
        let mut cur = self
            .root
            .fd
            .as_ref()
            .expect("the root stays open")
            .try_clone();
        let names: Vec<OsString> = self.open.iter().map(|l| l.name.clone()).collect();
        let n = self.open.len();
        for (i, name) in names.iter().enumerate() {
            let parent = cur.map_err(|e| self.io_err(&names[..i], e))?;
            let fd = open_dir_at(parent.as_raw_fd(), &cstr(name)).map_err(|e| {
                self.classify_walk_error(&names[..=i], parent.as_raw_fd(), e, entry)
            })?;
            cur = fd.try_clone();
            if i + MAX_OPEN_DIRS >= n {
                self.open[i].fd = Some(fd);
            }
        }
        Ok(())
    }

    fn root_fd(&self) -> RawFd {
        self.root
            .fd
            .as_ref()
            .expect("the root stays open")
            .as_raw_fd()
    }

    /// The current directory (the deepest level, open: [`Self::reopen`]) and what files created there get.
    fn top(&self) -> (RawFd, Creates) {
        let l = self.open.last().unwrap_or(&self.root);
        (
            l.fd.as_ref()
                .expect("the current level is open")
                .as_raw_fd(),
            l.creates,
        )
    }

    /// The current directory and what files created there get, examining it if not done yet.
    fn here(&mut self) -> (RawFd, Creates) {
        let (fd, creates) = self.top();
        if creates != Creates::Unexamined {
            return (fd, creates);
        }
        let creates = self.creates_in(fd);
        self.open.last_mut().unwrap_or(&mut self.root).creates = creates;
        (fd, creates)
    }

    /// What files created in the directory `dir` get (two calls per directory, to save up to three per file).
    fn creates_in(&self, dir: RawFd) -> Creates {
        if !self.opts.same_owner || self.umask.is_none() || has_default_acl(dir) {
            return Creates::Unknown;
        }
        match Stat::of_fd(dir) {
            Ok(st) if st.0.st_mode & libc::S_ISGID != 0 => Creates::Plain { gid: st.0.st_gid },
            Ok(_) => Creates::Plain { gid: self.egid },
            Err(_) => Creates::Unknown,
        }
    }

    /// Whether a leaf created in a directory that `creates` already has `d`'s owner, and, for a file created
    /// with `d.mode`, also its mode (no set-id or sticky bits, nothing the umask removes), so that `fchown` and
    /// `fchmod` would change nothing. Only when ownership is restored (root): otherwise every call is made.
    fn born_right(&self, creates: Creates, d: &Described) -> (bool, bool) {
        let owner = match creates {
            Creates::Plain { gid } => d.uid == u64::from(self.euid) && d.gid == u64::from(gid),
            Creates::Unknown | Creates::Unexamined => false,
        };
        let mode = owner
            && d.mode & 0o7000 == 0
            && self.umask.is_some_and(|m| d.mode & m == 0)
            // Setting xattrs needs write permission on the file unless root (CAP_FOWNER).
            && (d.xattrs.is_empty() || d.mode & 0o200 != 0 || self.euid == 0);
        (owner, mode)
    }

    /// Create the leaf `comps` in `parent` with `make`; when something is already there (EEXIST), clear it (a
    /// directory is an error, anything else is removed, a symlink never followed) and try once more. Trying first
    /// saves a `stat` per entry in the usual case, an empty destination.
    fn create_leaf<T>(
        &self,
        parent: RawFd,
        comps: &[OsString],
        entry: &str,
        mut make: impl FnMut() -> io::Result<T>,
    ) -> Result<T, ArchiveError> {
        match make() {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.clear_leaf(parent, comps, entry)?;
                make().map_err(|e| self.io_err(comps, e))
            }
            r => r.map_err(|e| self.io_err(comps, e)),
        }
    }

    /// Open the directory holding `comps`' last component from the destination, creating missing parents when
    /// `create`. Refuses to pass through a symlink or a non-directory. Used for hardlink targets, which are not
    /// on the current path.
    fn walk(&self, comps: &[OsString], create: bool, entry: &str) -> Result<OwnedFd, ArchiveError> {
        let mut cur = self
            .root
            .fd
            .as_ref()
            .expect("the root stays open")
            .try_clone()
            .map_err(|e| self.io_err(&[], e))?;
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
        let mut owner_ok = false;
        let fd = if comps.is_empty() {
            self.open.clear();
            self.root_fd()
        } else {
            self.enter(&comps[..comps.len() - 1], true, &d.display)?;
            let (parent, creates) = self.here();
            let name = comps.last().expect("non-empty");
            let mut made = false;
            // Owner-only until the final pass sets the real mode, so nobody else can slip files in meanwhile.
            match mkdir_at(parent, name, 0o700) {
                Ok(()) => made = true,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    match type_at(parent, name).map_err(|e| self.io_err(comps, e))? {
                        None | Some(libc::S_IFDIR) => {}
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
                            unlink_at(parent, name).map_err(|e| self.io_err(comps, e))?;
                            match mkdir_at(parent, name, 0o700) {
                                Ok(()) => made = true,
                                Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                                    return Err(self.io_err(comps, e))
                                }
                                _ => {}
                            }
                        }
                    }
                }
                Err(e) => return Err(self.io_err(comps, e)),
            }
            let fd = open_dir_at(parent, &cstr(name))
                .map_err(|e| self.classify_walk_error(comps, parent, e, &d.display))?;
            // Its children most likely come next.
            self.push(name, fd, made);
            // Made by us here: it already has the owner a leaf made here would have.
            owner_ok = made && self.born_right(creates, d).0;
            self.top().0
        };
        for (k, v) in &d.xattrs {
            if let Err(e) = set_xattr_fd(fd, k, v) {
                self.note_xattr(k, &join(comps), &e);
            }
        }
        self.dirs.push(DirMeta {
            comps: comps.to_vec(),
            owner_ok,
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
        self.enter(&comps[..comps.len() - 1], true, &d.display)?;
        let (parent, creates) = self.here();
        let (owner_ok, mode_ok) = self.born_right(creates, d);
        let c = cstr(comps.last().expect("leaf"));
        // Owner-only while it is written, unless it is created with its final owner and mode anyway.
        let create_mode = if mode_ok { d.mode } else { 0o600 };
        let file = self.create_leaf(parent, comps, &d.display, || {
            create_excl_at(parent, &c, create_mode)
        })?;
        let mut buf = std::mem::take(&mut self.buf);
        let res = self.write_data(entry, &file, comps, d, &mut buf);
        self.buf = buf;
        // Created empty: only a file that ends in a hole needs its size set.
        if res? < d.logical_size {
            file.set_len(d.logical_size)
                .map_err(|e| self.io_err(comps, e))?;
        }
        if self.opts.same_owner && !owner_ok {
            if let Err(e) = chown_fd(file.as_raw_fd(), d.uid, d.gid) {
                bump(&mut self.notes.owner_failed, &d.display, &e);
            }
        }
        self.set_xattrs_file(&file, comps, d);
        if !mode_ok {
            chmod_fd(file.as_raw_fd(), d.mode).map_err(|e| self.io_err(comps, e))?;
        }
        set_mtime_fd(file.as_raw_fd(), d.mtime).map_err(|e| self.io_err(comps, e))?;
        Ok(())
    }

    /// Write the entry's data into the new (empty) `file`; returns the end of the last byte written, so the
    /// caller knows whether a final hole needs the size set.
    fn write_data<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        file: &File,
        comps: &[OsString],
        d: &Described,
        buf: &mut [u8],
    ) -> Result<u64, ArchiveError> {
        let cancel = &self.opts.cancel;
        let mut w = HoleWriter::new(file);
        let write =
            |w: &mut HoleWriter, data: &[u8]| w.write(data).map_err(|e| self.io_err(comps, e));
        match &d.sparse {
            None => pump(entry, d.data_size, &d.display, buf, cancel, |b| {
                write(&mut w, b)
            })?,
            Some(Sparse::V0 { realsize, map }) => {
                check_map(map, *realsize, 0, d.data_size, &d.display)?;
                for &(off, len) in map {
                    w.pos = off;
                    pump(entry, len, &d.display, buf, cancel, |b| write(&mut w, b))?;
                }
            }
            Some(Sparse::V1 { realsize }) => {
                let (map, used) = read_sparse_map(entry, d.data_size, &d.display)?;
                check_map(&map, *realsize, used, d.data_size, &d.display)?;
                for &(off, len) in &map {
                    w.pos = off;
                    pump(entry, len, &d.display, buf, cancel, |b| write(&mut w, b))?;
                }
            }
        }
        Ok(w.end)
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
        self.enter(&comps[..comps.len() - 1], true, &d.display)?;
        let (parent, creates) = self.here();
        let c = cstr(comps.last().expect("leaf"));
        // The target is stored verbatim (it may point anywhere: it is content, never followed here).
        self.create_leaf(parent, comps, &d.display, || {
            symlink_at(&target, parent, &c)
        })?;
        let owner_ok = self.born_right(creates, d).0;
        self.leaf_meta(parent, comps, d, owner_ok, false);
        Ok(())
    }

    /// Owner (unless `owner_ok`: it was created with it), xattrs, mode (unless a symlink) and mtime of a leaf that
    /// has no open fd.
    fn leaf_meta(
        &mut self,
        parent: RawFd,
        comps: &[OsString],
        d: &Described,
        owner_ok: bool,
        chmod: bool,
    ) {
        let name = comps.last().expect("leaf");
        if self.opts.same_owner && !owner_ok {
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
            Err(ArchiveError::Io { cause, .. }) if cause.raw_os_error() == Some(libc::ENOENT) => {
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
        let (parent, _) = self.enter(&comps[..comps.len() - 1], true, &d.display)?;
        let (ct, cn) = (cstr(tname), cstr(comps.last().expect("leaf")));
        // Never follows a symlink target: the symlink itself is linked.
        self.create_leaf(parent, comps, &d.display, || {
            link_at(tparent.as_raw_fd(), &ct, parent, &cn)
        })?;
        Ok(())
    }

    fn make_node(&mut self, comps: &[OsString], d: &Described) -> Result<(), ArchiveError> {
        let (parent, _) = self.enter(&comps[..comps.len() - 1], true, &d.display)?;
        let c = cstr(comps.last().expect("leaf"));
        let (ty, dev) = match d.kind {
            Kind::Fifo => (FileType::Fifo, (0, 0)),
            Kind::Char => (FileType::CharacterDevice, d.dev),
            _ => (FileType::BlockDevice, d.dev),
        };
        match self.create_leaf(parent, comps, &d.display, || mknod_at(parent, &c, ty, dev)) {
            Ok(()) => {}
            Err(ArchiveError::Io { cause: e, .. })
                if ty != FileType::Fifo && e.raw_os_error() == Some(libc::EPERM) =>
            {
                match &mut self.notes.devices_skipped {
                    Some((n, _)) => *n += 1,
                    None => self.notes.devices_skipped = Some((1, d.display.clone())),
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        self.leaf_meta(parent, comps, d, false, true);
        Ok(())
    }

    /// Owner, mode and mtime of directories, every directory after all the directories below it (so a read-only
    /// mode or an mtime is set when nothing more is written inside): in reverse order of their components, which
    /// also keeps siblings together, so [`Self::enter`] reuses the open parents.
    fn finish_dirs(&mut self) -> Result<(), ArchiveError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_unstable_by(|a, b| b.comps.cmp(&a.comps));
        for m in dirs {
            let shown = join(&m.comps);
            let fd = if m.comps.is_empty() {
                self.open.clear();
                self.root_fd()
            } else {
                self.enter(&m.comps, false, &shown)?.0
            };
            if self.opts.same_owner && !m.owner_ok {
                if let Err(e) = chown_fd(fd, m.uid, m.gid) {
                    bump(&mut self.notes.owner_failed, &shown, &e);
                }
            }
            chmod_fd(fd, m.mode).map_err(|e| self.io_err(&m.comps, e))?;
            set_mtime_fd(fd, m.mtime).map_err(|e| self.io_err(&m.comps, e))?;
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

/// Writes a new file's data at explicit offsets (`pwrite`, so holes cost no `lseek`), skipping runs of zeros
/// (whole 4 KiB pieces) instead of writing them, so holes stay holes whatever format they came in.
struct HoleWriter<'f> {
    file: &'f File,
    /// Where the next data goes.
    pos: u64,
    /// End of the last byte written.
    end: u64,
}

impl<'f> HoleWriter<'f> {
    fn new(file: &'f File) -> Self {
        HoleWriter {
            file,
            pos: 0,
            end: 0,
        }
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let zero = |s: &[u8]| s.len() == HOLE_BLOCK && s.iter().all(|&b| b == 0);
        let mut i = 0;
        while i < data.len() {
            let is_zero = zero(&data[i..(i + HOLE_BLOCK).min(data.len())]);
            let mut j = i;
            while j < data.len() && zero(&data[j..(j + HOLE_BLOCK).min(data.len())]) == is_zero {
                j = (j + HOLE_BLOCK).min(data.len());
            }
            if !is_zero {
                self.file.write_all_at(&data[i..j], self.pos + i as u64)?;
                self.end = self.pos + j as u64;
            }
            i = j;
        }
        self.pos += data.len() as u64;
        Ok(())
    }
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

    fn pack_dir(src: &Path) -> Vec<u8> {
        crate::archive::pack::pack(src, Vec::new(), &Default::default(), &mut |_| {})
            .unwrap()
            .1
    }

    /// Descriptors of this process open on something below `root`.
    fn fds_under(root: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(root)))
            .count()
    }

    /// The extractor keeps the directories of the current path open (issue 11): a deep archive must not take one
    /// descriptor per level, and coming back up through levels whose descriptors were closed must still work.
    #[test]
    fn deep_archives_keep_dir_fds_bounded_and_reopen_on_the_way_up() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        let depth = 3 * MAX_OPEN_DIRS;
        let mut p = src.clone();
        for i in 0..depth {
            p.push(format!("d{i}"));
        }
        std::fs::create_dir_all(&p).unwrap();
        // Large enough that the stream is still being read while the bottom is written.
        let bottom: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
        std::fs::write(p.join("f"), &bottom).unwrap();
        // A file at every level, after its subdirectory in the archive (`z` sorts after `d…`): written after
        // coming back up.
        let mut p = src.clone();
        for i in 0..depth {
            std::fs::write(p.join("z"), format!("level {i}")).unwrap();
            p.push(format!("d{i}"));
        }
        let tar = pack_dir(&src);
        std::fs::create_dir(&dst).unwrap();
        let r = unpack(Reader(&tar[..], &dst), &dst, &UnpackOptions::default()).unwrap();
        assert_eq!(r.counts.dirs, depth as u64 + 1);
        let mut p = dst.clone();
        for i in 0..depth {
            assert_eq!(
                std::fs::read_to_string(p.join("z")).unwrap(),
                format!("level {i}")
            );
            p.push(format!("d{i}"));
        }
        assert!(std::fs::read(p.join("f")).unwrap() == bottom);

        /// Checks, at every read, that the extraction holds no more than the window of directories below the
        /// destination, plus the destination itself, the file being written and one passing descriptor while
        /// levels are reopened.
        struct Reader<'a>(&'a [u8], &'a Path);
        impl Read for Reader<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let open = fds_under(self.1);
                assert!(open <= MAX_OPEN_DIRS + 3, "{open} descriptors open");
                self.0.read(buf)
            }
        }
    }

    /// Metadata calls skipped when a new file already has its owner and mode (issue 11) must not be skipped when
    /// it does not: a set-group-ID destination gives new files its group, and the umask narrows the mode.
    #[test]
    fn owner_and_mode_are_right_under_a_setgid_destination_and_a_umask() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPING: needs root (restoring ownership)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (src, dst, plain) = (
            d.path().join("src"),
            d.path().join("dst"),
            d.path().join("plain"),
        );
        std::fs::create_dir_all(src.join("sub")).unwrap();
        for (name, mode) in [("f", 0o644), ("sub/g", 0o666), ("sub/h", 0o640)] {
            std::fs::write(src.join(name), name).unwrap();
            std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        std::os::unix::fs::symlink("f", src.join("l")).unwrap();
        std::fs::create_dir(&dst).unwrap();
        std::os::unix::fs::chown(&dst, None, Some(4242)).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o2755)).unwrap();
        let umask = current_umask().expect("umask readable");
        assert_ne!(
            umask & 0o022,
            0,
            "the test needs a umask that removes group or other write"
        );
        std::fs::create_dir(&plain).unwrap();
        let tar = pack_dir(&src);
        for dst in [&dst, &plain] {
            unpack(&tar[..], dst, &UnpackOptions::default()).unwrap();
            for (name, mode) in [("f", 0o644), ("sub/g", 0o666), ("sub/h", 0o640)] {
                let m = std::fs::metadata(dst.join(name)).unwrap();
                assert_eq!(
                    (m.uid(), m.gid(), m.mode() & 0o7777),
                    (0, 0, mode),
                    "{name}"
                );
            }
        }
        assert_eq!(std::fs::symlink_metadata(dst.join("l")).unwrap().gid(), 0);
        assert_eq!(std::fs::metadata(dst.join("sub")).unwrap().gid(), 0);
    }

    /// Files are no longer truncated to their size after writing (issue 11): one that ends in zeros (written as
    /// a hole) must still get its full size.
    #[test]
    fn a_file_ending_in_zeros_keeps_its_size() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        let mut data = vec![7u8; 5000];
        data.resize(5000 + 64 * 1024, 0);
        std::fs::write(src.join("f"), &data).unwrap();
        std::fs::write(src.join("zeros"), vec![0u8; 3 * HOLE_BLOCK]).unwrap();
        unpack(&pack_dir(&src)[..], &dst, &UnpackOptions::default()).unwrap();
        assert_eq!(std::fs::read(dst.join("f")).unwrap(), data);
        assert_eq!(
            std::fs::read(dst.join("zeros")).unwrap(),
            vec![0u8; 3 * HOLE_BLOCK]
        );
    }

    #[test]
    fn zero_runs_become_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = File::create(&p).unwrap();
        let mut data = vec![0u8; 4 * 1024 * 1024];
        data[0] = 1;
        let n = data.len();
        data[n - 1] = 2;
        let mut w = HoleWriter::new(&f);
        w.write(&data).unwrap();
        assert_eq!(w.end, n as u64);
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), data);
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&p).unwrap().blocks();
        assert!(blocks * 512 < 1024 * 1024, "{blocks} blocks allocated");
    }
}
