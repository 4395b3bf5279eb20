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

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{ArchiveError, Counts};

/// Default header sanity limit for one entry's size: 16 TiB.
pub const DEFAULT_MAX_ENTRY_SIZE: u64 = 16 << 40;

/// Most segments a sparse map may list (16 bytes of memory each, so at most 64 MiB for the map).
pub const MAX_SPARSE_SEGMENTS: usize = 1 << 22;

/// Largest data a metadata header (PAX `x`/`g`, GNU long name `L`/long link `K`) may declare: 1 MiB. What it
/// holds is read into memory whole. Real ones are far smaller: a path is rarely more than a few KiB (PATH_MAX is
/// 4 KiB; `pack` stores deeper paths too, up to [`super::pack::MAX_PATH_LEN`], so that a path and a hardlink
/// target that long still fit) and Linux limits an inode's xattrs to 64 KiB each (ext4: about 4 KiB in all), so
/// even a PAX header carrying a long name, a link target, ACLs and every xattr of a file stays below this.
pub const MAX_META_HEADER: u64 = 1 << 20;

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
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
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
    let root = open_root(dest)?;
    let mut x = Extractor {
        root,
        dest: dest.to_path_buf(),
        opts,
        filter: opts.paths.iter().map(|p| filter_components(p)).collect(),
        dirs: Vec::new(),
        notes: Notes::default(),
        counts: Counts::default(),
        skipped: 0,
        buf: vec![0u8; BUF_SIZE],
        // SAFETY: no preconditions.
        euid: unsafe { libc::geteuid() },
        egid: unsafe { libc::getegid() },
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

// ---------------------------------------------------------------------------------------------------------------
// Reading entries

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Fifo,
    Char,
    Block,
    /// Not an entry of its own (PAX global header) or a type we do not restore; value = the type byte.
    Skip(u8),
}

#[derive(Debug)]
enum Sparse {
    /// GNU PAX sparse 1.0: the map is at the start of the data.
    V1 { realsize: u64 },
    /// GNU PAX sparse 0.0/0.1: the map came in PAX records; the data is the segments back to back.
    V0 { realsize: u64, map: Vec<(u64, u64)> },
}

/// Everything about one entry that extraction needs, read from its header and PAX records.
#[derive(Debug)]
struct Described {
    kind: Kind,
    /// Raw member name (`GNU.sparse.name` for PAX sparse files).
    path: Vec<u8>,
    /// The name for messages.
    display: String,
    link: Option<Vec<u8>>,
    /// Bytes of data stored in the archive for this entry.
    data_size: u64,
    /// Size of the file it represents (the sparse real size, or `data_size`).
    logical_size: u64,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: (i64, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: Option<Sparse>,
    dev: (u32, u32),
}

fn describe<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    raw_pax: Option<Vec<u8>>,
    max_entry_size: u64,
) -> Result<Described, ArchiveError> {
    let mut header_path = entry.path_bytes().into_owned();
    let hdisplay = String::from_utf8_lossy(&header_path).into_owned();
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        ArchiveError::Corrupt(format!("entry `{hdisplay}`: bad {what}: {e}"))
    };

    let mut pax_mtime: Option<Vec<u8>> = None;
    let mut xattrs = Vec::new();
    let mut sparse_name: Option<Vec<u8>> = None;
    let (mut major, mut minor) = (None::<Vec<u8>>, None::<Vec<u8>>);
    let mut realsize: Option<u64> = None;
    let mut size0: Option<u64> = None;
    let mut map01: Option<Vec<u8>> = None;
    let mut offsets: Vec<u64> = Vec::new();
    let mut numbytes: Vec<u64> = Vec::new();
    let num = |v: &[u8], key: &str| -> Result<u64, ArchiveError> {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ArchiveError::Corrupt(format!(
                    "entry `{hdisplay}`: PAX record {key} is not a number"
                ))
            })
    };
    // The PAX records, parsed from the raw header data captured by `PaxTap` (the tar crate's own parser splits
    // on newlines and so rejects binary xattr values, ACLs for instance, that contain a 0x0a byte).
    let records: Vec<PaxRecord> = match raw_pax {
        Some(raw) => parse_pax(&raw).map_err(|e| bad("PAX header", &e))?,
        None => match entry.pax_extensions().map_err(|e| bad("PAX header", &e))? {
            // The tap lost track of the stream (it never should): fall back to the tar crate's parser.
            Some(pax) => pax
                .map(|r| {
                    r.map(|r| (r.key_bytes().to_vec(), r.value_bytes().to_vec()))
                        .map_err(|e| bad("PAX record", &e))
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        },
    };
    let mut pax_link: Option<Vec<u8>> = None;
    let mut pax_ids: (Option<u64>, Option<u64>) = (None, None);
    {
        for (k, v) in &records {
            let (k, v) = (k.as_slice(), v.as_slice());
            match k {
                b"path" => header_path = v.to_vec(),
                b"linkpath" => pax_link = Some(v.to_vec()),
                b"uid" => pax_ids.0 = Some(num(v, "uid")?),
                b"gid" => pax_ids.1 = Some(num(v, "gid")?),
                b"size" => {
                    // The tar crate positions the stream by its own reading of `size`; a disagreement would
                    // mean reading the wrong bytes as this entry's data.
                    if num(v, "size")? != entry.size() {
                        return Err(bad(
                            "PAX header",
                            &"its size record is not the one the tar reader used",
                        ));
                    }
                }
                b"mtime" => pax_mtime = Some(v.to_vec()),
                b"GNU.sparse.name" => sparse_name = Some(v.to_vec()),
                b"GNU.sparse.major" => major = Some(v.to_vec()),
                b"GNU.sparse.minor" => minor = Some(v.to_vec()),
                b"GNU.sparse.realsize" => realsize = Some(num(v, "GNU.sparse.realsize")?),
                b"GNU.sparse.size" => size0 = Some(num(v, "GNU.sparse.size")?),
                b"GNU.sparse.map" => map01 = Some(v.to_vec()),
                b"GNU.sparse.offset" => offsets.push(num(v, "GNU.sparse.offset")?),
                b"GNU.sparse.numbytes" => numbytes.push(num(v, "GNU.sparse.numbytes")?),
                _ => {
                    if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                        xattrs.push((name.to_vec(), v.to_vec()));
                    }
                }
            }
        }
    }

    let path = sparse_name.unwrap_or(header_path);
    let display = String::from_utf8_lossy(&path).into_owned();
    let corrupt = |msg: String| ArchiveError::Corrupt(format!("entry `{display}`: {msg}"));
    let header = entry.header();
    let kind = match header.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            Kind::File
        }
        tar::EntryType::Directory => Kind::Dir,
        tar::EntryType::Symlink => Kind::Symlink,
        tar::EntryType::Link => Kind::Hardlink,
        tar::EntryType::Fifo => Kind::Fifo,
        tar::EntryType::Char => Kind::Char,
        tar::EntryType::Block => Kind::Block,
        other => Kind::Skip(other.as_byte()),
    };
    let data_size = entry.size();
    let mode = header
        .mode()
        .map_err(|e| corrupt(format!("bad mode: {e}")))?
        & 0o7777;
    let uid = match pax_ids.0 {
        Some(u) => u,
        None => header.uid().map_err(|e| corrupt(format!("bad uid: {e}")))?,
    };
    let gid = match pax_ids.1 {
        Some(g) => g,
        None => header.gid().map_err(|e| corrupt(format!("bad gid: {e}")))?,
    };
    // Ids are 32-bit on Linux and (uid_t)-1 means "leave unchanged" to chown: larger values would be truncated
    // into some other id, so they are refused rather than guessed.
    if uid >= u64::from(u32::MAX) || gid >= u64::from(u32::MAX) {
        return Err(corrupt(format!("uid/gid {uid}:{gid} out of range")));
    }
    let mtime = match pax_mtime {
        Some(v) => parse_pax_time(&v).ok_or_else(|| corrupt("bad PAX mtime".into()))?,
        None => {
            let t = header
                .mtime()
                .map_err(|e| corrupt(format!("bad mtime: {e}")))?;
            (i64::try_from(t).unwrap_or(i64::MAX), 0)
        }
    };
    let dev = if matches!(kind, Kind::Char | Kind::Block) {
        (
            header
                .device_major()
                .map_err(|e| corrupt(format!("bad device major: {e}")))?
                .unwrap_or(0),
            header
                .device_minor()
                .map_err(|e| corrupt(format!("bad device minor: {e}")))?
                .unwrap_or(0),
        )
    } else {
        (0, 0)
    };
    let link = pax_link.or_else(|| entry.link_name_bytes().map(|l| l.into_owned()));

    let sparse = if kind != Kind::File {
        None
    } else if major.as_deref() == Some(b"1") && minor.as_deref() == Some(b"0") {
        let realsize =
            realsize.ok_or_else(|| corrupt("PAX sparse 1.0 without GNU.sparse.realsize".into()))?;
        Some(Sparse::V1 { realsize })
    } else if major.is_some() {
        return Err(corrupt(format!(
            "unsupported GNU sparse format {}.{}",
            String::from_utf8_lossy(major.as_deref().unwrap_or_default()),
            String::from_utf8_lossy(minor.as_deref().unwrap_or_default())
        )));
    } else if map01.is_some() || !offsets.is_empty() {
        let realsize = size0
            .or(realsize)
            .ok_or_else(|| corrupt("PAX sparse 0.x without GNU.sparse.size".into()))?;
        let map = match map01 {
            Some(m) => {
                let nums = std::str::from_utf8(&m)
                    .ok()
                    .and_then(|s| {
                        s.split(',')
                            .map(|n| n.trim().parse::<u64>().ok())
                            .collect::<Option<Vec<u64>>>()
                    })
                    .filter(|n| n.len() % 2 == 0)
                    .ok_or_else(|| corrupt("bad GNU.sparse.map".into()))?;
                nums.chunks(2).map(|c| (c[0], c[1])).collect()
            }
            None => {
                if offsets.len() != numbytes.len() {
                    return Err(corrupt("GNU.sparse.offset/numbytes do not pair up".into()));
                }
                offsets.into_iter().zip(numbytes).collect()
            }
        };
        Some(Sparse::V0 { realsize, map })
    } else {
        None
    };
    let logical_size = match &sparse {
        Some(Sparse::V1 { realsize }) | Some(Sparse::V0 { realsize, .. }) => *realsize,
        None => data_size,
    };
    if data_size > max_entry_size || logical_size > max_entry_size {
        return Err(ArchiveError::Unsafe {
            entry: display,
            reason: format!(
                "declares {} bytes, more than the limit of {max_entry_size} bytes (max_entry_size)",
                data_size.max(logical_size)
            ),
        });
    }
    Ok(Described {
        kind,
        path,
        display,
        link,
        data_size,
        logical_size,
        mode,
        uid,
        gid,
        mtime,
        xattrs,
        sparse,
        dev,
    })
}

fn count(c: &mut Counts, d: &Described) {
    match d.kind {
        Kind::File => {
            c.files += 1;
            c.bytes += d.logical_size;
        }
        Kind::Dir => c.dirs += 1,
        Kind::Symlink => c.symlinks += 1,
        Kind::Hardlink => c.hardlinks += 1,
        Kind::Fifo | Kind::Char | Kind::Block => c.other += 1,
        Kind::Skip(_) => return,
    }
    c.entries += 1;
}

/// Parse a PAX time value `[-]secs[.fraction]` into (seconds, nanoseconds), nanoseconds always positive.
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut ns: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        ns += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if neg {
        if ns == 0 {
            Some((-secs, 0))
        } else {
            Some((-secs - 1, 1_000_000_000 - ns))
        }
    } else {
        Some((secs, ns))
    }
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

/// One PAX record: key, value (raw bytes).
type PaxRecord = (Vec<u8>, Vec<u8>);

/// Parse PAX extended header data by its length fields (`<len> <key>=<value>\n`, `len` counting the whole
/// record), so values may hold any byte, newlines included, as POSIX allows and GNU tar writes.
fn parse_pax(data: &[u8]) -> Result<Vec<PaxRecord>, String> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // Some writers pad the header data with NULs.
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or("a record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a record with a bad length")?;
        if len < sp + 3 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(format!(
                "a record whose length {len} does not match its content"
            ));
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a record without `=`")?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

/// A pass-through reader that follows the tar block structure of the bytes the tar crate consumes, exactly as
/// the crate walks it (header, GNU sparse extension blocks, data rounded up to 512 bytes, PAX `size` overrides
/// as the crate reads them), and captures the raw data of each PAX `x` header. When the header of the entry it
/// describes has been read, that data is put in `current` for [`describe`]. This exists because the crate only
/// exposes PAX records through a parser that splits on newlines. On anything it does not understand the tap stops
/// following (the crate then reports the error, or [`describe`] falls back to the crate's parser).
///
/// It also enforces [`MAX_META_HEADER`]: when a metadata header's block arrives declaring more, the read that
/// delivered it fails (and so does every later one), so the crate never gets to read that header's data; the
/// reason is put in `refused` for the caller to report instead of the crate's wrapped I/O error.
struct PaxTap<R> {
    inner: R,
    /// PAX data of the entry whose header was read last (`None` if it had none).
    current: std::rc::Rc<std::cell::Cell<Option<Vec<u8>>>>,
    /// Set once, when a metadata header over [`MAX_META_HEADER`] was seen.
    refused: std::rc::Rc<std::cell::Cell<Option<ArchiveError>>>,
    /// The message of that refusal, returned as the error of this and every later read.
    tripped: Option<String>,
    hdr: Box<[u8; 512]>,
    fill: usize,
    state: TapState,
    /// Complete `x` data not yet attached to an entry.
    pending: Option<Vec<u8>>,
    capture: Option<Vec<u8>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TapState {
    Header,
    /// GNU sparse extension blocks, then `data` bytes (already rounded).
    SparseExt {
        data: u64,
    },
    /// Entry data (padding included); the first `keep` bytes are captured when capturing.
    Data {
        left: u64,
        keep: u64,
    },
    Done,
}

impl<R> PaxTap<R> {
    fn new(inner: R) -> Self {
        PaxTap {
            inner,
            current: Default::default(),
            refused: Default::default(),
            tripped: None,
            hdr: Box::new([0; 512]),
            fill: 0,
            state: TapState::Header,
            pending: None,
            capture: None,
        }
    }

    fn feed(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            match self.state {
                TapState::Done => return,
                TapState::Header | TapState::SparseExt { .. } => {
                    let n = (512 - self.fill).min(b.len());
                    self.hdr[self.fill..self.fill + n].copy_from_slice(&b[..n]);
                    self.fill += n;
                    b = &b[n..];
                    if self.fill == 512 {
                        self.fill = 0;
                        self.block();
                    }
                }
                TapState::Data { left, keep } => {
                    let n = (left.min(b.len() as u64)) as usize;
                    if let Some(c) = &mut self.capture {
                        let k = (keep.min(n as u64)) as usize;
                        c.extend_from_slice(&b[..k]);
                    }
                    b = &b[n..];
                    let left = left - n as u64;
                    let keep = keep.saturating_sub(n as u64);
                    self.state = TapState::Data { left, keep };
                    if left == 0 {
                        self.data_done();
                    }
                }
            }
        }
    }

    fn data_done(&mut self) {
        if let Some(c) = self.capture.take() {
            self.pending = Some(c);
        }
        self.state = TapState::Header;
    }

    fn start_data(&mut self, size: u64, capture: bool) {
        let rounded = size.div_ceil(512) * 512;
        self.capture = capture.then(Vec::new);
        self.state = TapState::Data {
            left: rounded,
            keep: size,
        };
        if rounded == 0 {
            self.data_done();
        }
    }

    fn block(&mut self) {
        let h = &*self.hdr;
        if let TapState::SparseExt { data } = self.state {
            if h[504] == 0 {
                self.start_data(data, false);
            }
            return;
        }
        if h.iter().all(|&b| b == 0) {
            // End of archive (the crate stops at the first zero block).
            self.state = TapState::Done;
            return;
        }
        let Some(mut size) = tar_number(&h[124..136]) else {
            self.state = TapState::Done;
            return;
        };
        let recognized = &h[257..263] == b"ustar\0" || &h[257..263] == b"ustar ";
        let t = h[156];
        let extension = matches!(t, b'L' | b'K' | b'x' | b'g');
        if extension && size > MAX_META_HEADER {
            self.refuse(t, size);
            return;
        }
        if !extension {
            let pax = self.pending.take();
            if let Some(p) = &pax {
                // Exactly as the crate reads it (it stops at the first record it cannot parse).
                if let Some(sz) = crate_pax_size(p) {
                    size = sz;
                }
            }
            self.current.set(pax);
        }
        if t == b'S' && h[482] != 0 {
            self.state = TapState::SparseExt { data: size };
            return;
        }
        self.start_data(size, recognized && t == b'x');
    }
}

impl<R> PaxTap<R> {
    /// Stop following the stream and fail reads: the header just read (in `hdr`) is a metadata header of type `t`
    /// declaring `size` bytes, more than [`MAX_META_HEADER`].
    fn refuse(&mut self, t: u8, size: u64) {
        let h = &*self.hdr;
        let field = |f: &[u8]| f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())].to_vec();
        let mut name = field(&h[..100]);
        let prefix = field(&h[345..500]);
        if &h[257..263] == b"ustar\0" && !prefix.is_empty() {
            name = [prefix, b"/".to_vec(), name].concat();
        }
        let what = match t {
            b'x' => "PAX extended header (type `x`)",
            b'g' => "PAX global header (type `g`)",
            b'L' => "GNU long name (type `L`)",
            _ => "GNU long link name (type `K`)",
        };
        let reason = format!(
            "{what} declares {size} bytes; metadata headers are read into memory and may hold at most \
             {MAX_META_HEADER} bytes (1 MiB): the archive is corrupt or hostile"
        );
        let entry = String::from_utf8_lossy(&name).into_owned();
        self.tripped = Some(format!("unsafe archive entry `{entry}`: {reason}"));
        self.refused
            .set(Some(ArchiveError::Unsafe { entry, reason }));
        self.state = TapState::Done;
    }
}

/// The PAX `size` the tar crate uses: its own parser, stopping at the first record it cannot read.
fn crate_pax_size(data: &[u8]) -> Option<u64> {
    for r in tar::PaxExtensions::new(data) {
        let r = r.ok()?;
        if r.key() == Ok("size") {
            return r.value().ok()?.parse().ok();
        }
    }
    None
}

/// A tar numeric field: octal (space/NUL padded) or GNU base-256.
fn tar_number(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 != 0 {
        let mut v: u64 = 0;
        for (i, &b) in f.iter().enumerate() {
            let b = if i == 0 { b & 0x7f } else { b };
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s = std::str::from_utf8(f).ok()?;
    let s = s.trim_matches(|c| c == ' ' || c == '\0');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

impl<R: Read> Read for PaxTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(m) = &self.tripped {
            return Err(io::Error::new(io::ErrorKind::InvalidData, m.clone()));
        }
        let n = self.inner.read(buf)?;
        self.feed(&buf[..n]);
        match &self.tripped {
            Some(m) => Err(io::Error::new(io::ErrorKind::InvalidData, m.clone())),
            None => Ok(n),
        }
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
// Paths

/// Why a member name cannot be used.
enum NameError {
    DotDot,
    Nul,
}

/// Sanitize a member name: returns (whether a leading `/` was removed, components after stripping), or `None`
/// components when the name has fewer than `strip` components (GNU tar skips those). A directory whose name has
/// exactly `strip` components maps to the destination root (empty component list).
fn sanitize(raw: &[u8], strip: usize) -> Result<(bool, Option<Vec<OsString>>), NameError> {
    if raw.contains(&0) {
        return Err(NameError::Nul);
    }
    let had_slash = raw.first() == Some(&b'/');
    let comps: Vec<&[u8]> = raw
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    if comps.iter().any(|c| *c == b"..") {
        return Err(NameError::DotDot);
    }
    if comps.len() < strip {
        return Ok((had_slash, None));
    }
    let kept = comps[strip..]
        .iter()
        .filter(|c| **c != b".")
        .map(|c| OsString::from_vec(c.to_vec()))
        .collect();
    Ok((had_slash, Some(kept)))
}

fn filter_components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect()
}

fn join(comps: &[OsString]) -> String {
    if comps.is_empty() {
        return ".".into();
    }
    let mut p = PathBuf::new();
    for c in comps {
        p.push(c);
    }
    p.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// Filesystem primitives (all relative to directory fds, never following symlinks)

fn cstr(name: &OsStr) -> CString {
    // Components come from `sanitize`, which rejected NUL bytes.
    CString::new(name.as_bytes()).expect("NUL rejected by sanitize")
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn open_root(dest: &Path) -> Result<OwnedFd, ArchiveError> {
    let c = CString::new(dest.as_os_str().as_bytes()).map_err(|_| ArchiveError::Io {
        path: dest.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
    })?;
    // The destination itself is trusted (the caller chose it), so it may be reached through symlinks.
    // SAFETY: c is a valid C string; the returned fd is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    let fd = cvt(fd).map_err(|e| ArchiveError::Io {
        path: dest.to_path_buf(),
        source: e,
    })?;
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir_at(parent: RawFd, name: &OsStr) -> io::Result<OwnedFd> {
    let c = cstr(name);
    // SAFETY: valid fd and C string.
    let fd = cvt(unsafe {
        libc::openat(
            parent,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// File type at `name` in `parent` without following a symlink; None when nothing is there.
fn type_at(parent: RawFd, name: &OsStr) -> io::Result<Option<libc::mode_t>> {
    let c = cstr(name);
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, C string and out pointer.
    let r = unsafe { libc::fstatat(parent, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(st.st_mode & libc::S_IFMT))
}

fn unlink_at(parent: RawFd, name: &OsStr) -> io::Result<()> {
    let c = cstr(name);
    // SAFETY: valid fd and C string.
    cvt(unsafe { libc::unlinkat(parent, c.as_ptr(), 0) }).map(|_| ())
}

fn mkdir_at(parent: RawFd, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
    let c = cstr(name);
    // SAFETY: valid fd and C string.
    cvt(unsafe { libc::mkdirat(parent, c.as_ptr(), mode) }).map(|_| ())
}

fn timespec(t: (i64, u32)) -> libc::timespec {
    libc::timespec {
        tv_sec: t.0 as libc::time_t,
        tv_nsec: t.1 as _,
    }
}

/// Set mtime (atime left as is) of `name` in `parent`, not following a symlink.
fn set_mtime_at(parent: RawFd, name: &OsStr, t: (i64, u32)) -> io::Result<()> {
    let c = cstr(name);
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        timespec(t),
    ];
    // SAFETY: valid fd, C string and a two-element array.
    cvt(unsafe {
        libc::utimensat(
            parent,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(|_| ())
}

fn set_mtime_fd(fd: RawFd, t: (i64, u32)) -> io::Result<()> {
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        timespec(t),
    ];
    // SAFETY: valid fd and a two-element array.
    cvt(unsafe { libc::futimens(fd, times.as_ptr()) }).map(|_| ())
}

fn chown_at(parent: RawFd, name: &OsStr, uid: u64, gid: u64) -> io::Result<()> {
    let c = cstr(name);
    // SAFETY: valid fd and C string.
    cvt(unsafe {
        libc::fchownat(
            parent,
            c.as_ptr(),
            uid as libc::uid_t,
            gid as libc::gid_t,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(|_| ())
}

fn chown_fd(fd: RawFd, uid: u64, gid: u64) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::fchown(fd, uid as libc::uid_t, gid as libc::gid_t) }).map(|_| ())
}

fn chmod_fd(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map(|_| ())
}

/// Open the directory `rel` (relative, without `..`: `.` and empty components are dropped) below the trusted
/// directory `base`, one component at a time with `O_NOFOLLOW`, as extraction walks: so it works at any depth
/// (no call gets more than one component) and never passes through a symlink. With `create`, missing
/// directories are made (0777 & ~umask, like GNU tar's implicit parents). Restore's `--path` swap uses it.
pub fn open_dir_beneath(base: &Path, rel: &Path, create: bool) -> io::Result<OwnedFd> {
    let mut cur = match open_root(base) {
        Ok(fd) => fd,
        Err(ArchiveError::Io { source, .. }) => return Err(source),
        Err(e) => return Err(io::Error::other(e.to_string())),
    };
    for c in filter_components(rel) {
        if c.as_bytes().contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a NUL byte in a name",
            ));
        }
        cur = match open_dir_at(cur.as_raw_fd(), &c) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                match mkdir_at(cur.as_raw_fd(), &c, 0o777) {
                    Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
                    _ => {}
                }
                open_dir_at(cur.as_raw_fd(), &c)?
            }
            Err(e) => {
                if let Ok(Some(libc::S_IFLNK)) = type_at(cur.as_raw_fd(), &c) {
                    return Err(io::Error::other(format!(
                        "`{}` is a symlink: refusing to go through it",
                        c.to_string_lossy()
                    )));
                }
                return Err(e);
            }
        };
    }
    Ok(cur)
}

/// Whether anything (a symlink included, never followed) is at `name` in the directory `dir`.
pub fn exists_at(dir: RawFd, name: &OsStr) -> io::Result<bool> {
    if name.as_bytes().contains(&0) {
        return Ok(false);
    }
    type_at(dir, name).map(|t| t.is_some())
}

/// `/proc/self/fd/N/name`: reaches `name` inside the directory fd without resolving the parent path again; used
/// for the few calls that have no *at variant (lsetxattr, chmod of a FIFO without opening it).
fn proc_path(parent: RawFd, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{parent}"));
    p.push(name);
    p
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
    filter: Vec<Vec<OsString>>,
    dirs: Vec<DirMeta>,
    notes: Notes,
    counts: Counts,
    skipped: u64,
    buf: Vec<u8>,
    euid: libc::uid_t,
    egid: libc::gid_t,
}

fn unsafe_entry(entry: &str, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Unsafe {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

impl Extractor<'_> {
    fn selected(&self, comps: &[OsString]) -> bool {
        self.filter.is_empty() || self.filter.iter().any(|f| comps.starts_with(f))
    }

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
            let next = match open_dir_at(cur.as_raw_fd(), c) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                    // Implicit parent: default permissions like GNU tar (0777 & ~umask).
                    match mkdir_at(cur.as_raw_fd(), c, 0o777) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(self.io_err(&comps[..=i], e)),
                    }
                    open_dir_at(cur.as_raw_fd(), c).map_err(|e| {
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
        let (slash, comps) = match sanitize(&d.path, self.opts.strip_components) {
            Ok(v) => v,
            Err(NameError::DotDot) => {
                return Err(unsafe_entry(&d.display, "the path contains `..`"))
            }
            Err(NameError::Nul) => {
                return Err(unsafe_entry(&d.display, "the path contains a NUL byte"))
            }
        };
        self.notes.leading_slash |= slash;
        let comps = match comps {
            Some(c) => c,
            None => {
                self.skipped += 1;
                return Ok(());
            }
        };
        if comps.is_empty() && d.kind != Kind::Dir {
            // Only a directory can stand for the destination itself.
            if self.opts.strip_components > 0 {
                self.skipped += 1;
                return Ok(());
            }
            return Err(unsafe_entry(&d.display, "the path is empty"));
        }
        if !self.selected(&comps) {
            self.skipped += 1;
            return Ok(());
        }
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
            open_dir_at(parent.as_raw_fd(), name)
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
        // SAFETY: valid fd and C string; the fd is owned below.
        let fd = unsafe {
            libc::openat(
                parent.as_raw_fd(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        let fd = cvt(fd).map_err(|e| self.io_err(comps, e))?;
        // SAFETY: fresh fd.
        let mut file = unsafe { File::from_raw_fd(fd) };
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
        // SAFETY: valid C strings and fd.
        cvt(unsafe { libc::symlinkat(target.as_ptr(), parent.as_raw_fd(), c.as_ptr()) })
            .map_err(|e| self.io_err(comps, e))?;
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
        let raw = d.link.as_deref().filter(|t| !t.is_empty()).ok_or_else(|| {
            ArchiveError::Corrupt(format!("hardlink `{}` has no target", d.display))
        })?;
        let shown = String::from_utf8_lossy(raw).into_owned();
        let target = match sanitize(raw, self.opts.strip_components) {
            Ok((slash, Some(t))) if !t.is_empty() => {
                self.notes.leading_slash |= slash;
                t
            }
            Ok(_) => {
                return Err(unsafe_entry(
                    &d.display,
                    format!("hardlink target `{shown}` lies outside the extracted tree"),
                ))
            }
            Err(NameError::DotDot) => {
                return Err(unsafe_entry(
                    &d.display,
                    format!("hardlink target `{shown}` contains `..`"),
                ))
            }
            Err(NameError::Nul) => {
                return Err(unsafe_entry(
                    &d.display,
                    "hardlink target contains a NUL byte",
                ))
            }
        };
        if !self.selected(&target) {
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
        // flags 0: if the target is a symlink, link the symlink itself, never what it points to.
        // SAFETY: valid fds and C strings.
        cvt(unsafe {
            libc::linkat(
                tparent.as_raw_fd(),
                ct.as_ptr(),
                parent.as_raw_fd(),
                cn.as_ptr(),
                0,
            )
        })
        .map_err(|e| self.io_err(comps, e))?;
        Ok(())
    }

    fn make_node(&mut self, comps: &[OsString], d: &Described) -> Result<(), ArchiveError> {
        let parent = self.walk(&comps[..comps.len() - 1], true, &d.display)?;
        self.clear_leaf(parent.as_raw_fd(), comps, &d.display)?;
        let c = cstr(comps.last().expect("leaf"));
        let (ty, dev) = match d.kind {
            Kind::Fifo => (libc::S_IFIFO, 0),
            Kind::Char => (libc::S_IFCHR, libc::makedev(d.dev.0, d.dev.1)),
            _ => (libc::S_IFBLK, libc::makedev(d.dev.0, d.dev.1)),
        };
        // SAFETY: valid fd and C string.
        let r = cvt(unsafe { libc::mknodat(parent.as_raw_fd(), c.as_ptr(), ty | 0o600, dev) });
        match r {
            Ok(_) => {}
            Err(e) if ty != libc::S_IFIFO && e.raw_os_error() == Some(libc::EPERM) => {
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
                open_dir_at(parent.as_raw_fd(), m.comps.last().expect("non-empty")).map_err(
                    |e| self.classify_walk_error(&m.comps, parent.as_raw_fd(), e, &shown),
                )?
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

/// Read a GNU PAX sparse 1.0 map from the start of the entry data: decimal numbers, one per line — the segment
/// count, then offset and size of each segment — padded with NULs to a 512-byte boundary. Returns the map and the
/// number of data bytes it used.
fn read_sparse_map<R: Read>(
    entry: &mut R,
    data_size: u64,
    name: &str,
) -> Result<(Vec<(u64, u64)>, u64), ArchiveError> {
    let corrupt = |m: &str| ArchiveError::Corrupt(format!("entry `{name}`: sparse map: {m}"));
    let mut used = 0u64;
    let mut block = [0u8; 512];
    let mut digits: Vec<u8> = Vec::with_capacity(20);
    let mut count: Option<u64> = None;
    let mut nums: Vec<u64> = Vec::new();
    loop {
        if used + 512 > data_size {
            return Err(corrupt("runs past the entry's data"));
        }
        entry
            .read_exact(&mut block)
            .map_err(|e| ArchiveError::Corrupt(format!("entry `{name}`: sparse map: {e}")))?;
        used += 512;
        for &b in block.iter() {
            if count.is_some_and(|c| nums.len() as u64 == 2 * c) {
                break;
            }
            match b {
                b'0'..=b'9' if digits.len() < 20 => digits.push(b),
                b'\n' if !digits.is_empty() => {
                    let n: u64 = std::str::from_utf8(&digits)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| corrupt("number out of range"))?;
                    digits.clear();
                    match count {
                        None => {
                            if n > MAX_SPARSE_SEGMENTS as u64 {
                                return Err(corrupt(&format!(
                                    "{n} segments, more than the limit of {MAX_SPARSE_SEGMENTS}"
                                )));
                            }
                            count = Some(n);
                        }
                        Some(_) => nums.push(n),
                    }
                }
                _ => return Err(corrupt("unexpected byte")),
            }
        }
        if count.is_some_and(|c| nums.len() as u64 == 2 * c) {
            break;
        }
    }
    Ok((nums.chunks(2).map(|c| (c[0], c[1])).collect(), used))
}

/// Segments must be sorted, not overlap, end within the real size, and with the map account for all data bytes.
fn check_map(
    map: &[(u64, u64)],
    realsize: u64,
    map_bytes: u64,
    data_size: u64,
    name: &str,
) -> Result<(), ArchiveError> {
    let corrupt = |m: String| ArchiveError::Corrupt(format!("entry `{name}`: sparse map: {m}"));
    if map.len() > MAX_SPARSE_SEGMENTS {
        return Err(corrupt(format!("more than {MAX_SPARSE_SEGMENTS} segments")));
    }
    let mut end = 0u64;
    let mut total = map_bytes;
    for &(off, len) in map {
        let seg_end = off
            .checked_add(len)
            .ok_or_else(|| corrupt("segment overflows".into()))?;
        if off < end {
            return Err(corrupt("segments overlap or are out of order".into()));
        }
        if seg_end > realsize {
            return Err(corrupt(format!(
                "segment ends at {seg_end}, beyond the real size {realsize}"
            )));
        }
        end = seg_end;
        total = total
            .checked_add(len)
            .ok_or_else(|| corrupt("sizes overflow".into()))?;
    }
    if total != data_size {
        return Err(corrupt(format!(
            "segments hold {total} bytes but the entry has {data_size}"
        )));
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
    fn pax_records_are_parsed_by_length() {
        assert_eq!(
            parse_pax(b"11 k=a\nb=c\n7 x=yz\n").unwrap(),
            vec![
                (b"k".to_vec(), b"a\nb=c".to_vec()),
                (b"x".to_vec(), b"yz".to_vec())
            ]
        );
        assert!(parse_pax(b"99 k=v\n").is_err());
        assert!(parse_pax(b"6 k=vv").is_err());
        assert!(parse_pax(b"k=v\n").is_err());
    }

    #[test]
    fn pax_time_parsing() {
        assert_eq!(
            parse_pax_time(b"1795886096.975024828"),
            Some((1795886096, 975024828))
        );
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time(b"12.1234567891"), Some((12, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"-3"), Some((-3, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
        assert_eq!(parse_pax_time(b""), None);
    }

    fn comps(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn sanitize_rules() {
        let ok = |raw: &str, strip| match sanitize(raw.as_bytes(), strip) {
            Ok(v) => v,
            Err(_) => panic!("{raw} rejected"),
        };
        assert_eq!(ok("a/b", 0), (false, Some(comps(&["a", "b"]))));
        assert_eq!(ok("./a//b/", 0), (false, Some(comps(&["a", "b"]))));
        assert_eq!(ok("/etc/x", 0), (true, Some(comps(&["etc", "x"]))));
        assert_eq!(ok("///etc/x", 0), (true, Some(comps(&["etc", "x"]))));
        // GNU tar counts `.` as a component when stripping.
        assert_eq!(ok("./a/b", 1), (false, Some(comps(&["a", "b"]))));
        assert_eq!(
            ok("/backup/vol/data/x", 2),
            (true, Some(comps(&["data", "x"])))
        );
        assert_eq!(ok("/backup/vol/", 2), (true, Some(comps(&[]))));
        assert_eq!(ok("/backup/", 2), (true, None));
        assert!(matches!(sanitize(b"../x", 0), Err(NameError::DotDot)));
        assert!(matches!(sanitize(b"a/../../x", 0), Err(NameError::DotDot)));
        assert!(matches!(sanitize(b"x/../y", 1), Err(NameError::DotDot)));
        assert!(matches!(sanitize(b"a\0b", 0), Err(NameError::Nul)));
    }

    #[test]
    fn sparse_map_checks() {
        assert!(check_map(&[(0, 10), (100, 5)], 105, 512, 527, "f").is_ok());
        assert!(check_map(&[(100, 5), (0, 10)], 105, 512, 527, "f").is_err());
        assert!(check_map(&[(0, 10), (5, 10)], 105, 512, 532, "f").is_err());
        assert!(check_map(&[(0, 10), (100, 10)], 105, 512, 532, "f").is_err());
        assert!(check_map(&[(0, 10)], 105, 512, 600, "f").is_err());
        assert!(check_map(&[(u64::MAX, 10)], u64::MAX, 0, 10, "f").is_err());
    }

    #[test]
    fn sparse_map_reading() {
        let mut data = b"3\n499998720\n4096\n1073741824\n5\n1073741829\n0\n".to_vec();
        data.resize(512, 0);
        data.extend(b"payload");
        let mut r = &data[..];
        let (map, used) = read_sparse_map(&mut r, data.len() as u64, "f").unwrap();
        assert_eq!(used, 512);
        assert_eq!(
            map,
            vec![(499998720, 4096), (1073741824, 5), (1073741829, 0)]
        );
        assert_eq!(r, b"payload");

        let mut huge = format!("{}\n", MAX_SPARSE_SEGMENTS + 1).into_bytes();
        huge.resize(512, 0);
        assert!(read_sparse_map(&mut &huge[..], 512, "f").is_err());
        let mut junk = b"2\n1x\n".to_vec();
        junk.resize(512, 0);
        assert!(read_sparse_map(&mut &junk[..], 512, "f").is_err());
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
