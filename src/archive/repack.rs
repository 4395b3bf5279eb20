//! Re-encode the tar the Docker Engine sends (`GET /containers/{id}/archive?path=…`) into voltar's own archive
//! format, on the fly, so that a volume read through the engine is stored, counted and hashed exactly as one read
//! from its host path, and restores with the same restore (and GNU tar).
//!
//! # What the engine sends (seen on Engine API 1.41, dockerd 20.10)
//!
//! A tar written by Go's `archive/tar` in PAX format. Every name begins with the base name of the path asked for
//! (`src`, `src/a`, `src/sub/`): the first entry is that directory itself, the rest lie beneath it, depth-first,
//! siblings sorted by name (the same order [`super::pack`] writes). Hard links are type `1` entries naming an
//! earlier entry (with the same prefix); long names and link targets are PAX `path`/`linkpath` records; owners
//! are numeric. Not carried by the engine, so not in the archive either (the caller warns once per source,
//! [`NOT_CARRIED`]):
//!
//! * sub-second mtimes: the engine truncates mtimes to whole seconds;
//! * extended attributes other than `security.capability` (`user.*`, `trusted.*`, POSIX ACLs…);
//! * sparse files' holes: a sparse file comes as its full length of data, zeros included, and is stored (and
//!   restored) as a plain file.
//!
//! # Never trust the names
//!
//! A name outside the asked-for directory, an absolute name, or one with a `..`, `.` or empty component (a
//! directory's trailing `/` aside) fails the read ([`ArchiveError::Unsafe`]); so does a hard link to such a
//! name. Nothing here touches the filesystem, but the archive written must hold only names restore accepts.
//!
//! # A stream that breaks off
//!
//! The engine's tar must end with its end-of-archive block: a stream that ends at an entry boundary without it,
//! or inside an entry, or with an error, fails the read ([`ArchiveError::Io`] naming the engine's archive); the
//! caller then aborts the uploads. The input is read once, in order, through a fixed buffer: memory does not
//! grow with the volume (the tar crate holds one entry's PAX records at a time).

use std::io::{self, Read};
use std::path::Path;

use super::pack::{EntryMeta, EntryWriter, PackOptions, PackReport};
use super::{ArchiveError, Counted};

/// What a read through the engine does not carry (for the report's one warning per source, and the docs).
pub const NOT_CARRIED: &str =
    "sub-second mtimes, extended attributes other than security.capability, sparse files' holes";

/// Read the engine's tar of the directory whose base name is `top` from `input` and write voltar's archive of
/// it into `out` (layout and counts as [`super::pack::pack`]'s). `what` names the input in errors.
pub fn repack<R: Read, W: io::Write>(
    input: R,
    top: &[u8],
    what: &Path,
    out: W,
    opts: &PackOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<(PackReport, W), ArchiveError> {
    let io_err = |cause: io::Error| ArchiveError::Io {
        path: what.to_path_buf(),
        cause,
    };
    let mut input = EofWatch {
        inner: io::BufReader::with_capacity(256 << 10, input),
        eof: false,
    };
    let mut w = EntryWriter::new(out, opts.cancel, progress);
    let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut seen_root = false;
    {
        let mut archive = tar::Archive::new(&mut input);
        for entry in archive.entries().map_err(io_err)? {
            w.check_cancel()?;
            let mut entry = entry.map_err(io_err)?;
            let raw_name = entry.path_bytes().into_owned();
            let kind = entry.header().entry_type();
            let is_dir = kind.is_dir();
            let name = match member_name(&raw_name, top, is_dir)? {
                Name::Root if !seen_root && is_dir => {
                    seen_root = true;
                    b"./".to_vec()
                }
                Name::Root => return Err(unsafe_entry(&raw_name, "the root directory again")),
                Name::Below(_) if !seen_root => {
                    return Err(unsafe_entry(&raw_name, "comes before the root directory"))
                }
                Name::Below(n) => n,
            };
            let (md, size) = meta(&mut entry, &mut xattrs).map_err(io_err)?;
            let h = entry.header();
            let rdev = (
                h.device_major().ok().flatten().unwrap_or(0) as u64,
                h.device_minor().ok().flatten().unwrap_or(0) as u64,
            );
            let flag = h.entry_type().as_byte();
            match flag {
                b'0' | b'\0' | b'7' => {
                    w.header(
                        &name,
                        b'0',
                        &md,
                        size,
                        b"",
                        (0, 0),
                        &xattrs,
                        Counted::File(size),
                    )?;
                    w.content(&mut entry, size, what)?;
                }
                b'5' => w.header(&name, b'5', &md, 0, b"", (0, 0), &xattrs, Counted::Dir)?,
                b'2' => {
                    let link = entry.link_name_bytes().unwrap_or_default().into_owned();
                    w.header(
                        &name,
                        b'2',
                        &md,
                        0,
                        &link,
                        (0, 0),
                        &xattrs,
                        Counted::Symlink,
                    )?;
                }
                b'1' => {
                    let raw_link = entry.link_name_bytes().unwrap_or_default().into_owned();
                    let Name::Below(link) = member_name(&raw_link, top, false)? else {
                        return Err(unsafe_entry(&raw_name, "a hard link to the root directory"));
                    };
                    w.header(
                        &name,
                        b'1',
                        &md,
                        0,
                        &link,
                        (0, 0),
                        &xattrs,
                        Counted::Hardlink,
                    )?;
                }
                b'3' | b'4' | b'6' => {
                    w.header(&name, flag, &md, 0, b"", rdev, &xattrs, Counted::Other)?
                }
                other => {
                    // Its data (if any) is skipped by the tar reader.
                    w.not_archived(
                        &name,
                        format_args!(
                            "entry of unknown type `{}` in the engine's archive",
                            other.escape_ascii()
                        ),
                    );
                }
            }
        }
    }
    if input.eof {
        // The tar reader stops quietly at the end of its input: only the end-of-archive block says the engine
        // sent everything.
        return Err(io_err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "ended without its end-of-archive block (the stream broke off)",
        )));
    }
    // Read the rest (the second zero block, padding): an error there is a broken stream too.
    io::copy(&mut input, &mut io::sink()).map_err(io_err)?;
    if !seen_root {
        return Err(io_err(io::Error::new(
            io::ErrorKind::InvalidData,
            "held no entry for the directory asked for",
        )));
    }
    w.finish()
}

/// A member name of the engine's tar, relative to the directory asked for.
enum Name {
    Root,
    /// Relative, no leading `./`; a directory's ends in `/`.
    Below(Vec<u8>),
}

/// Strip `top/` from `raw` and check what is left; a directory's name gets its trailing `/`.
fn member_name(raw: &[u8], top: &[u8], is_dir: bool) -> Result<Name, ArchiveError> {
    let trimmed = raw.strip_suffix(b"/").unwrap_or(raw);
    if trimmed == top {
        return Ok(Name::Root);
    }
    let rest = raw
        .strip_prefix(top)
        .and_then(|r| r.strip_prefix(b"/"))
        .ok_or_else(|| unsafe_entry(raw, "outside the directory asked for"))?;
    let rest = rest.strip_suffix(b"/").unwrap_or(rest);
    if rest
        .split(|&b| b == b'/')
        .any(|c| c.is_empty() || c == b"." || c == b"..")
    {
        return Err(unsafe_entry(raw, "an empty, `.` or `..` path component"));
    }
    if rest.contains(&0) {
        return Err(unsafe_entry(raw, "a NUL byte in the name"));
    }
    let mut name = rest.to_vec();
    if is_dir {
        name.push(b'/');
    }
    Ok(Name::Below(name))
}

fn unsafe_entry(raw: &[u8], reason: &str) -> ArchiveError {
    ArchiveError::Unsafe {
        entry: String::from_utf8_lossy(raw).into_owned(),
        reason: format!("{reason} (in the Docker Engine's archive of the volume)"),
    }
}

/// The entry's mode, owner, mtime and size (PAX records over the ustar fields), its xattrs into `xattrs`.
fn meta<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    xattrs: &mut Vec<(Vec<u8>, Vec<u8>)>,
) -> io::Result<(EntryMeta, u64)> {
    let h = entry.header();
    let mut md = EntryMeta {
        mode: h.mode()?,
        uid: u32::try_from(h.uid()?).unwrap_or(u32::MAX),
        gid: u32::try_from(h.gid()?).unwrap_or(u32::MAX),
        mtime: i64::try_from(h.mtime()?).unwrap_or(i64::MAX),
        mtime_nsec: 0,
    };
    // The reader has applied a PAX `size` already.
    let size = entry.size();
    xattrs.clear();
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            let num = || std::str::from_utf8(value).ok().map(str::trim);
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((name.to_vec(), value.to_vec()));
            } else if key == b"uid" {
                if let Some(v) = num().and_then(|v| v.parse().ok()) {
                    md.uid = v;
                }
            } else if key == b"gid" {
                if let Some(v) = num().and_then(|v| v.parse().ok()) {
                    md.gid = v;
                }
            } else if key == b"mtime" {
                if let Some((s, ns)) = num().and_then(parse_mtime) {
                    md.mtime = s;
                    md.mtime_nsec = ns;
                }
            }
        }
    }
    Ok((md, size))
}

/// A PAX `mtime` (`-?sec[.frac]`) as stat gives it: floor seconds and non-negative nanoseconds.
fn parse_mtime(v: &str) -> Option<(i64, i64)> {
    let (neg, v) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (sec, frac) = v.split_once('.').unwrap_or((v, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    while digits.len() < 9 {
        digits.push('0');
    }
    let ns: i64 = digits.parse().ok()?;
    Some(match (neg, ns) {
        (false, _) => (sec, ns),
        (true, 0) => (-sec, 0),
        (true, _) => (-sec - 1, 1_000_000_000 - ns),
    })
}

/// Notes when its reader has reached the end of its input.
struct EofWatch<R> {
    inner: R,
    eof: bool,
}

impl<R: Read> Read for EofWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header with every numeric field set, as Go's writer leaves it.
    fn hdr(gnu: bool) -> tar::Header {
        let mut h = if gnu {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h
    }

    /// A tar laid out as the engine sends it (Go's writer): `src` first, names under `src/`.
    fn engine_tar(extra: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = hdr(false);
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        b.append_data(&mut h, "src/", io::empty()).unwrap();
        let mut f = hdr(false);
        f.set_mode(0o4755);
        f.set_uid(1234);
        f.set_gid(5678);
        f.set_mtime(1_577_934_245);
        f.set_size(3);
        b.append_data(&mut f, "src/a", &b"hi\n"[..]).unwrap();
        let mut l = hdr(false);
        l.set_entry_type(tar::EntryType::Link);
        l.set_size(0);
        b.append_link(&mut l, "src/hl", "src/a").unwrap();
        let mut s = hdr(false);
        s.set_entry_type(tar::EntryType::Symlink);
        s.set_size(0);
        b.append_link(&mut s, "src/sl", "../../etc/passwd").unwrap();
        extra(&mut b);
        b.into_inner().unwrap()
    }

    fn repack_vec(input: &[u8]) -> Result<(PackReport, Vec<u8>), ArchiveError> {
        repack(
            input,
            b"src",
            Path::new("engine archive"),
            Vec::new(),
            &PackOptions::default(),
            &mut |_| {},
        )
    }

    #[test]
    fn engine_names_are_rewritten_to_the_packers_layout_and_counted_alike() {
        let (report, out) = repack_vec(&engine_tar(|_| {})).unwrap();
        let mut a = tar::Archive::new(&out[..]);
        /// Name, type flag, link name, mode, uid.
        type Row = (Vec<u8>, u8, Vec<u8>, u32, u64);
        let got: Vec<Row> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path_bytes().into_owned(),
                    h.entry_type().as_byte(),
                    e.link_name_bytes().unwrap_or_default().into_owned(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (b"./".to_vec(), b'5', vec![], 0o755, 0),
                (b"a".to_vec(), b'0', vec![], 0o4755, 1234),
                (b"hl".to_vec(), b'1', b"a".to_vec(), 0o644, 0),
                (b"sl".to_vec(), b'2', b"../../etc/passwd".to_vec(), 0o644, 0),
            ]
        );
        assert_eq!(
            (
                report.counts.entries,
                report.counts.files,
                report.counts.bytes
            ),
            (4, 1, 3)
        );
        assert_eq!(
            (
                report.counts.dirs,
                report.counts.hardlinks,
                report.counts.symlinks
            ),
            (1, 1, 1)
        );
        assert!(report.is_complete());
    }

    #[test]
    fn names_outside_the_volume_are_refused() {
        for (name, link) in [
            ("src/../x", None),
            ("/etc/x", None),
            ("other/x", None),
            ("src/a/./b", None),
            ("src/hl2", Some("src/../../etc/shadow")),
            ("src/hl3", Some("/etc/shadow")),
        ] {
            let tar = engine_tar(|b| {
                let mut h = hdr(true);
                h.set_size(0);
                match link {
                    None => {
                        // `append_data` refuses `..`: write the name into the header itself.
                        let bytes = name.as_bytes();
                        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
                        h.set_cksum();
                        b.append(&h, io::empty()).unwrap();
                    }
                    Some(l) => {
                        h.set_entry_type(tar::EntryType::Link);
                        h.set_path(name).unwrap();
                        let lb = l.as_bytes();
                        h.as_old_mut().linkname[..lb.len()].copy_from_slice(lb);
                        h.set_cksum();
                        b.append(&h, io::empty()).unwrap();
                    }
                }
            });
            match repack_vec(&tar) {
                Err(ArchiveError::Unsafe { .. }) => {}
                other => panic!("{name}: {:?}", other.map(|(r, _)| r)),
            }
        }
    }

    #[test]
    fn a_stream_that_breaks_off_fails_at_an_entry_boundary_and_inside_an_entry() {
        let full = engine_tar(|_| {});
        assert!(repack_vec(&full).is_ok());
        // Without the end-of-archive blocks: cut right after the last entry's header.
        let end = full.len() - 1024;
        let mut boundary = full[..end].to_vec();
        while boundary.ends_with(&[0u8; 512]) {
            boundary.truncate(boundary.len() - 512);
        }
        for cut in [&boundary[..], &full[..512 + 512 + 100], &full[..600]] {
            match repack_vec(cut) {
                // The cause is the tar reader's (it says "unexpected EOF" or "failed to read entire block")
                // or ours: any of them fails the read.
                Err(ArchiveError::Io { .. }) => {}
                other => panic!("cut at {}: {:?}", cut.len(), other.map(|(r, _)| r)),
            }
        }
    }

    #[test]
    fn pax_mtime_owner_and_xattrs_are_carried() {
        let tar = engine_tar(|b| {
            let mut h = hdr(false);
            h.set_mode(0o600);
            h.set_size(0);
            b.append_pax_extensions([
                ("mtime", &b"1600000000.5"[..]),
                ("uid", &b"3000000"[..]),
                ("SCHILY.xattr.security.capability", &b"\x01\x02"[..]),
            ])
            .unwrap();
            b.append_data(&mut h, "src/cap", io::empty()).unwrap();
        });
        let (_, out) = repack_vec(&tar).unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let mut e = a.entries().unwrap().nth(4).unwrap().unwrap();
        assert_eq!(e.path_bytes().as_ref(), b"cap");
        let pax: Vec<(String, Vec<u8>)> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| {
                let x = x.unwrap();
                (x.key().unwrap().to_string(), x.value_bytes().to_vec())
            })
            .collect();
        assert!(
            pax.contains(&("uid".into(), b"3000000".to_vec())),
            "{pax:?}"
        );
        assert!(
            pax.contains(&("mtime".into(), b"1600000000.500000000".to_vec())),
            "{pax:?}"
        );
        assert!(
            pax.contains(&(
                "SCHILY.xattr.security.capability".into(),
                b"\x01\x02".to_vec()
            )),
            "{pax:?}"
        );
    }

    #[test]
    fn pax_mtimes_parse_like_stat() {
        assert_eq!(parse_mtime("12"), Some((12, 0)));
        assert_eq!(parse_mtime("12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_mtime("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_mtime("x"), None);
    }
}
