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

use std::collections::BTreeMap;
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

mod extract;
use extract::*;
mod gate;
pub use gate::{dir_meta_tar, forward, DirMeta, Forwarded};

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

/// The type of an entry [`list`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListedKind {
    File,
    Dir,
    Symlink,
    /// A hard link to another entry: it gets that entry's content and metadata.
    Hardlink,
    Fifo,
    Char,
    Block,
}

/// What the archive says about an entry [`list`] names: what a restore sets (the dry run compares it with what
/// is there now).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedEntry {
    pub kind: ListedKind,
    /// The file's size (the real size of a sparse file); 0 for other types.
    pub size: u64,
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
    /// Seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    /// A symlink's target.
    pub link: Option<PathBuf>,
}

/// What [`unpack`] with `opts` would write, without writing anything: the relative paths of the entries it
/// extracts (with what the archive says about each) and of the parent directories it creates for them (`None`:
/// not an entry of its own), the destination root left out. The same walk, name rules and selection as `unpack`
/// (`..`, NUL, `--strip`, `--path`, hardlinks to outside the selection), so an archive unpack refuses fails here
/// too, with the same error. The `restore --dry-run` listing.
pub fn list<R: Read>(
    tar_stream: R,
    opts: &UnpackOptions,
) -> Result<BTreeMap<PathBuf, Option<ListedEntry>>, ArchiveError> {
    let sel = Selection::new(opts.strip_components, &opts.paths);
    let mut names = BTreeMap::new();
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
                if p.as_os_str().is_empty() {
                    // The root itself: not a name below the destination.
                } else {
                    names.insert(p.clone(), listed_entry(d));
                    // Its parents, up to the first one already listed.
                    p.pop();
                    while !p.as_os_str().is_empty() && !names.contains_key(&p) {
                        names.insert(p.clone(), None);
                        p.pop();
                    }
                }
            }
        }
        drain(entry, d.data_size, &d.display, &mut buf, &opts.cancel)
    })?;
    Ok(names)
}

fn listed_entry(d: &Described) -> Option<ListedEntry> {
    let kind = match d.kind {
        Kind::File => ListedKind::File,
        Kind::Dir => ListedKind::Dir,
        Kind::Symlink => ListedKind::Symlink,
        Kind::Hardlink => ListedKind::Hardlink,
        Kind::Fifo => ListedKind::Fifo,
        Kind::Char => ListedKind::Char,
        Kind::Block => ListedKind::Block,
        Kind::Skip(_) => return None,
    };
    Some(ListedEntry {
        kind,
        size: if kind == ListedKind::File {
            d.logical_size
        } else {
            0
        },
        mode: d.mode,
        mtime: d.mtime,
        link: match kind {
            ListedKind::Symlink => d.link.as_ref().map(|l| PathBuf::from(OsStr::from_bytes(l))),
            _ => None,
        },
    })
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
        // With seek: skips go through `EndCheck`'s reused buffer (see there).
        let entries = archive
            .entries_with_seek()
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
///
/// It is also [`Seek`] for forward skips, done by reading (the stream cannot seek) into a buffer kept here, so the
/// tar crate (`entries_with_seek`) skips the padding after each entry, and the data of an entry nobody read, with
/// this instead of its own skip, which zeroes a 32 KiB stack buffer on every call: a `memset` of 32 KiB per entry,
/// 3.8% of a verify's instructions (callgrind). Every byte still passes through `read`, in order, so the layers
/// below (`PaxTap`, the decompressor) see the same stream, and a stream that ends inside a skip is the same error.
struct EndCheck<R> {
    inner: R,
    hit_eof: bool,
    /// Bytes read so far: the position [`Seek`] reports (the tar crate keeps its own count in step with it).
    pos: u64,
    /// Where skipped bytes are read to; allocated on the first skip, then reused.
    scratch: Vec<u8>,
}

/// Size of [`EndCheck`]'s skip buffer.
const SKIP_BUF: usize = 64 * 1024;

impl<R> EndCheck<R> {
    fn new(inner: R) -> Self {
        EndCheck {
            inner,
            hit_eof: false,
            pos: 0,
            scratch: Vec::new(),
        }
    }
}

impl<R: Read> Read for EndCheck<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof = true;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read> io::Seek for EndCheck<R> {
    /// Only `SeekFrom::Current` forward (what the tar crate's skip asks for); returns the new position.
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let mut left = match to {
            io::SeekFrom::Current(n) if n >= 0 => n as u64,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the archive stream can only skip forward",
                ))
            }
        };
        if left > 0 && self.scratch.is_empty() {
            self.scratch = vec![0u8; SKIP_BUF];
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let r = loop {
            if left == 0 {
                break Ok(self.pos);
            }
            let want = left.min(scratch.len() as u64) as usize;
            match self.read(&mut scratch[..want]) {
                // The tar crate's own skip says the same.
                Ok(0) => break Err(io::Error::other("unexpected EOF during skip")),
                Ok(n) => left -= n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.scratch = scratch;
        r
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `EndCheck`'s skip (what the tar crate calls between entries) reads forward, reports the position the crate
    /// keeps in step with, and fails, as the crate's own skip did, when the stream ends inside it.
    #[test]
    fn end_check_skips_forward_by_reading_and_fails_at_a_short_end() {
        use std::io::Seek;
        let data: Vec<u8> = (0..100u8).collect();
        let mut e = EndCheck::new(&data[..]);
        let mut b = [0u8; 10];
        e.read_exact(&mut b).unwrap();
        assert_eq!(e.stream_position().unwrap(), 10);
        assert_eq!(e.seek(io::SeekFrom::Current(80)).unwrap(), 90);
        e.read_exact(&mut b).unwrap();
        assert_eq!(b[0], 90);
        assert!(!e.hit_eof);
        let err = e.seek(io::SeekFrom::Current(1)).unwrap_err();
        assert!(
            err.to_string().contains("unexpected EOF during skip"),
            "{err}"
        );
        assert!(e.hit_eof);
        assert!(e.seek(io::SeekFrom::Start(0)).is_err());
    }

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
}
