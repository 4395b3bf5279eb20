//! [`forward`]: pass an untrusted tar stream on, byte for byte, to someone else's extractor (the Docker Engine's
//! `PUT /containers/{id}/archive`), letting through only entries that unpack's rules accept.
//!
//! # Why a gate and not a re-encoding
//!
//! The engine extracts what it is given with its own tar reader (Go's `archive/tar`); it is not our safety net.
//! Re-encoding each entry into a fresh tar would lose whatever our writer does not reproduce (PAX records we do
//! not model, sparse maps, xattrs we cannot name), so the original bytes are passed on instead, gated: every byte
//! read from the stream is *held* until the walk has read and judged the header(s) of the entry it belongs to.
//! Only then are the held bytes (the entry's headers, PAX and GNU long-name records included) released to the
//! sink, and its data flows straight through. Bytes after the last entry (the end-of-archive marker, record
//! padding) are released at the end. What is held at any time is at most one entry's metadata headers, which the
//! walk caps ([`super::MAX_META_HEADER`] each), so memory stays bounded.
//!
//! # Rules (refused as [`ArchiveError::Unsafe`] before any byte of the entry leaves)
//!
//! - unpack's name rules (`..`, NUL, an empty name for a non-directory), for every name a reader might take for
//!   the entry: the raw ustar name, the long name (PAX `path`, GNU `L`) and the GNU sparse name. Two tar readers
//!   can disagree on which one wins; none of them may be unsafe.
//! - no absolute name (a leading `/`): unpack strips it with a warning, but another extractor may not.
//! - a name below a symlink the archive created earlier (`link -> /`, then `link/etc/x`), and a directory entry at
//!   such a symlink's name: unpack refuses them through `O_NOFOLLOW`; here there is no filesystem to ask, so the
//!   archive's own symlinks are tracked (the destination is an empty new volume: nothing else is there).
//! - a hardlink whose target contains `..`, is absolute, or lies below one of those symlinks.
//!
//! Symlinks whose *target* points outside are content, as in unpack: created, never followed by us.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::rc::Rc;

use super::*;

/// What [`Gate`] and the walk's callback share: the sink, the held bytes and whether bytes flow straight through.
struct Shared<W> {
    sink: W,
    held: Vec<u8>,
    open: bool,
    /// The sink's first error (the walk sees a read error; this is the real cause).
    sink_error: Option<io::Error>,
}

impl<W: Write> Shared<W> {
    fn pass(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Err(e) = self.sink.write_all(bytes) {
            let shown = io::Error::new(e.kind(), e.to_string());
            self.sink_error.get_or_insert(e);
            return Err(shown);
        }
        Ok(())
    }

    fn release(&mut self) -> io::Result<()> {
        let held = std::mem::take(&mut self.held);
        let r = self.pass(&held);
        self.held = held;
        self.held.clear();
        r
    }
}

/// The stream as the walk reads it: every byte is held (closed) or passed on (open).
struct Gate<R, W> {
    inner: R,
    shared: Rc<RefCell<Shared<W>>>,
}

impl<R: Read, W: Write> Read for Gate<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.shared.borrow_mut();
        if s.open {
            s.pass(&buf[..n])?;
        } else {
            s.held.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

/// What [`forward`] passed on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// The archive's counts (the same rules as [`scan`]).
    pub counts: Counts,
    /// The metadata of the archive's root directory entry (`.` or `./`), if it has one: an extractor that
    /// skips that entry (the engine's does) can be given it separately ([`dir_meta_tar`]).
    pub root: Option<DirMeta>,
    /// Regular files with a set-user-ID or set-group-ID bit that have further hard links in the archive (their
    /// names as the archive gives them, once each). The engine's extraction (Engine 20.10) drops those bits: it
    /// chowns each link name, which clears them, and its chmod of a link entry looks for the link's target in
    /// the wrong directory, so they are never set back.
    pub setid_linked: Vec<String>,
}

/// A directory's metadata as the archive states it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirMeta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A tar of one directory entry `name` carrying `meta` (PAX `mtime` with nanoseconds and `SCHILY.xattr.*`), to
/// set a directory's metadata through an extractor that merges a directory entry into an existing directory.
pub fn dir_meta_tar(name: &str, meta: &DirMeta) -> Vec<u8> {
    use super::super::pax::pax_record;
    let mut pax = Vec::new();
    let (secs, ns) = meta.mtime;
    pax_record(&mut pax, b"mtime", format!("{secs}.{ns:09}").as_bytes());
    for (k, v) in &meta.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(k);
        pax_record(&mut pax, &key, v);
    }
    let header = |kind: tar::EntryType, path: &str, size: usize, mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_path(path).expect("a short ASCII name");
        h.set_size(size as u64);
        h.set_mode(mode);
        h.set_uid(meta.uid);
        h.set_gid(meta.gid);
        h.set_mtime(secs.max(0) as u64);
        h.set_cksum();
        h
    };
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &header(tar::EntryType::XHeader, "PaxHeaders/root", pax.len(), 0o644),
        &pax[..],
    )
    .expect("writing to memory");
    b.append(
        &header(tar::EntryType::Directory, &format!("{name}/"), 0, meta.mode),
        io::empty(),
    )
    .expect("writing to memory");
    b.into_inner().expect("writing to memory")
}

/// Pass `tar_stream` (decompressed) on to `sink`, entry by entry, each only after it passed the rules in the
/// module docs; returns the archive's counts and its root's metadata. On `Err`, the sink got a prefix of the
/// archive that ends before the refused entry's first byte (or wherever the stream broke): the caller must
/// discard what the sink made of it. The sink is flushed at the end.
pub fn forward<R: Read, W: Write>(tar_stream: R, sink: W) -> Result<Forwarded, ArchiveError> {
    let shared = Rc::new(RefCell::new(Shared {
        sink,
        held: Vec::new(),
        open: false,
        sink_error: None,
    }));
    let gate = Gate {
        inner: tar_stream,
        shared: shared.clone(),
    };
    let mut symlinks: BTreeSet<Vec<OsString>> = BTreeSet::new();
    let mut root = None;
    // Set-ID regular files by name (without a leading `./`), and those found hard-linked.
    let mut setid: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    let mut setid_linked = Vec::new();
    let mut buf = vec![0u8; BUF_SIZE];
    let walked = walk(gate, u64::MAX, |entry, d| {
        if d.kind == Kind::File && d.mode & 0o6000 != 0 {
            let name = entry.path_bytes();
            setid.insert(unprefixed(&name).to_vec(), d.display.clone());
        } else if d.kind == Kind::Hardlink {
            if let Some(target) = hardlink_target(d)
                .ok()
                .and_then(|t| setid.remove(unprefixed(t)))
            {
                setid_linked.push(target);
            }
        }
        if judge(entry, d, &mut symlinks)? {
            root = Some(DirMeta {
                mode: d.mode,
                uid: d.uid,
                gid: d.gid,
                mtime: d.mtime,
                xattrs: d.xattrs.clone(),
            });
        }
        let mut s = shared.borrow_mut();
        s.release().map_err(ArchiveError::Sink)?;
        s.open = true;
        drop(s);
        let r = drain(entry, d.data_size, &d.display, &mut buf, &None);
        shared.borrow_mut().open = false;
        r
    });
    let mut s = shared.borrow_mut();
    if let Some(e) = s.sink_error.take() {
        return Err(ArchiveError::Sink(e));
    }
    let counts = walked?;
    s.release().map_err(ArchiveError::Sink)?;
    s.sink.flush().map_err(ArchiveError::Sink)?;
    Ok(Forwarded {
        counts,
        root,
        setid_linked,
    })
}

/// A member name without its leading `./` (a hardlink's target and its file may differ only in that).
fn unprefixed(name: &[u8]) -> &[u8] {
    let mut n = name;
    while let Some(rest) = n.strip_prefix(b"./") {
        n = rest;
    }
    n
}

/// The rules of the module docs for one entry; records the symlinks it creates. `true`: the entry is the root
/// directory.
fn judge<R: Read>(
    entry: &tar::Entry<'_, R>,
    d: &Described,
    symlinks: &mut BTreeSet<Vec<OsString>>,
) -> Result<bool, ArchiveError> {
    let is_dir = d.kind == Kind::Dir;
    let mut names: Vec<Vec<u8>> = vec![d.path.clone(), entry.header().path_bytes().into_owned()];
    names.push(entry.path_bytes().into_owned());
    let mut all = Vec::new();
    for raw in &names {
        all.push(checked_name(raw, &d.display, is_dir)?);
    }
    let below_symlink =
        |comps: &[OsString]| (1..comps.len()).any(|i| symlinks.contains(&comps[..i]));
    for comps in &all {
        if below_symlink(comps) {
            return Err(unsafe_entry(
                &d.display,
                "its path goes through a symlink in the archive",
            ));
        }
        if is_dir && symlinks.contains(comps) {
            return Err(unsafe_entry(
                &d.display,
                "a directory entry where the archive made a symlink",
            ));
        }
    }
    if d.kind == Kind::Hardlink {
        let mut targets: Vec<Vec<u8>> = vec![hardlink_target(d)?.to_vec()];
        if let Some(l) = entry.header().link_name_bytes() {
            targets.push(l.into_owned());
        }
        if let Some(l) = entry.link_name_bytes() {
            targets.push(l.into_owned());
        }
        for raw in targets {
            if raw.first() == Some(&b'/') {
                return Err(unsafe_entry(&d.display, "its hardlink target is absolute"));
            }
            let (_, comps) = Selection::new(0, &[])
                .link_target(&raw)
                .map_err(|reason| unsafe_entry(&d.display, reason))?;
            if below_symlink(&comps) {
                return Err(unsafe_entry(
                    &d.display,
                    "its hardlink target goes through a symlink in the archive",
                ));
            }
        }
    }
    let is_root = is_dir && all.iter().all(|c| c.is_empty());
    // A later entry at a symlink's name replaces it; a symlink entry makes one.
    for comps in all {
        if d.kind == Kind::Symlink {
            symlinks.insert(comps);
        } else if !matches!(d.kind, Kind::Skip(_)) {
            symlinks.remove(&comps);
        }
    }
    Ok(is_root)
}

/// One candidate name of an entry by unpack's rules, absolute names refused: its components.
fn checked_name(raw: &[u8], display: &str, is_dir: bool) -> Result<Vec<OsString>, ArchiveError> {
    if raw.first() == Some(&b'/') {
        return Err(unsafe_entry(display, "the path is absolute"));
    }
    let (_, comps) = Selection::new(0, &[])
        .member(raw, is_dir)
        .map_err(|e| unsafe_entry(display, e.reason()))?;
    Ok(comps.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1);
            h.set_size(data.len() as u64);
            // Raw names: the builder's own checks would refuse the hostile ones.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if !link.is_empty() {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A good archive passes through byte for byte, counted like `scan` counts it.
    #[test]
    fn a_good_archive_passes_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), vec![7u8; 300_000]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("abs")).unwrap();
        std::fs::hard_link(src.join("sub/f"), src.join("h")).unwrap();
        std::fs::write(src.join("n".repeat(200)), b"long").unwrap();
        let (_, tar) =
            crate::archive::pack::pack(&src, Vec::new(), &Default::default(), &mut |_| {}).unwrap();
        let mut out = Vec::new();
        let fw = forward(&tar[..], &mut out).unwrap();
        assert!(out == tar, "forwarded bytes differ");
        assert_eq!(fw.counts, scan(&tar[..]).unwrap());
        let root = fw.root.expect("the root entry");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&src).unwrap().permissions().mode() & 0o7777;
        assert_eq!(root.mode, mode);
    }

    /// Set-ID files with further hard links are named (the engine drops their set-ID bits); a set-ID file
    /// without links, and a plain file with links, are not.
    #[test]
    fn setid_files_with_hard_links_are_named_once() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        for (name, mode) in [("sub/suid", 0o4750), ("lone", 0o4755), ("plain", 0o644)] {
            std::fs::write(src.join(name), name).unwrap();
            std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        std::fs::hard_link(src.join("sub/suid"), src.join("link1")).unwrap();
        std::fs::hard_link(src.join("sub/suid"), src.join("link2")).unwrap();
        std::fs::hard_link(src.join("plain"), src.join("plain-link")).unwrap();
        let (_, tar) =
            crate::archive::pack::pack(&src, Vec::new(), &Default::default(), &mut |_| {}).unwrap();
        let fw = forward(&tar[..], Vec::new()).unwrap();
        assert_eq!(fw.setid_linked.len(), 1, "{:?}", fw.setid_linked);
        let named = &fw.setid_linked[0];
        assert!(
            ["sub/suid", "link1", "link2"]
                .iter()
                .any(|n| named.ends_with(n)),
            "{named}"
        );
    }

    /// Hostile entries are refused, and nothing of the refused entry has reached the sink.
    #[test]
    fn hostile_entries_are_refused_before_they_reach_the_sink() {
        use tar::EntryType as T;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "dotdot",
                tar_of(&[
                    ("ok", T::Regular, "", b"a"),
                    ("../escape", T::Regular, "", b"x"),
                ]),
            ),
            (
                "absolute",
                tar_of(&[
                    ("ok", T::Regular, "", b"a"),
                    ("/etc/x", T::Regular, "", b"x"),
                ]),
            ),
            (
                "through a symlink",
                tar_of(&[
                    ("l", T::Symlink, "/etc", b""),
                    ("l/passwd", T::Regular, "", b"x"),
                ]),
            ),
            (
                "dir at a symlink",
                tar_of(&[
                    ("l", T::Symlink, "/etc", b""),
                    ("l/", T::Directory, "", b""),
                ]),
            ),
            (
                "hardlink dotdot",
                tar_of(&[
                    ("ok", T::Regular, "", b"a"),
                    ("h", T::Link, "../../etc/passwd", b""),
                ]),
            ),
            (
                "hardlink absolute",
                tar_of(&[
                    ("ok", T::Regular, "", b"a"),
                    ("h", T::Link, "/etc/passwd", b""),
                ]),
            ),
            (
                "hardlink through a symlink",
                tar_of(&[
                    ("l", T::Symlink, "/etc", b""),
                    ("h", T::Link, "l/passwd", b""),
                ]),
            ),
        ];
        for (what, tar) in cases {
            let mut out = Vec::new();
            let err = forward(&tar[..], &mut out).unwrap_err();
            assert!(matches!(err, ArchiveError::Unsafe { .. }), "{what}: {err}");
            // Only the first entry (512 header + 512 data, or a bare symlink header) went out.
            assert!(
                out.len() <= 1024,
                "{what}: {} bytes reached the sink",
                out.len()
            );
            assert!(tar.starts_with(&out), "{what}");
        }
        // A symlink replaced by a directory entry of its own first is no longer a symlink.
        let tar = tar_of(&[("l", T::Symlink, "/etc", b""), ("l", T::Regular, "", b"x")]);
        forward(&tar[..], &mut Vec::new()).unwrap();
    }

    /// A sink that fails ends the walk with the sink's error.
    #[test]
    fn a_failing_sink_is_the_error() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("the engine hung up"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let tar = tar_of(&[("f", tar::EntryType::Regular, "", &[1u8; 2000])]);
        let err = forward(&tar[..], Full).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::Sink(e) if e.to_string().contains("hung up")),
            "{err}"
        );
    }
}
