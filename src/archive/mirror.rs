//! `voltar engine-mirror`: make one directory exactly equal to another, on one machine, with the archive code's
//! own fidelity. A restore in place through the engine runs it in a container of voltar's image with the staging
//! volume at `/voltar/src` and the target at `/voltar/dst` while the target's users are stopped (and, first, the
//! target into a keep volume for the safety copy); `restore/engine.rs` has the flow.
//!
//! How: every entry of `dst` is removed (not `dst` itself; walked with `*at()` calls, never through a symlink),
//! `dst`'s own extended attributes too; then `src` is packed (`pack`: the walk that backs up a volume) into a pipe
//! that `unpack` (a restore's extraction: beneath `dst` only, `O_NOFOLLOW` everywhere) reads on another thread.
//! The archive's `./` entry carries `src`'s root owner, mode, mtime and xattrs, so `dst`'s root gets them. What
//! `pack` keeps, the mirror keeps: owners, modes with set-ID and sticky bits, mtimes (ns), xattrs, hard links,
//! sparse files' holes, symlinks (their targets verbatim), FIFOs and device nodes. Sockets are not copied (as a
//! backup skips them). The end is one `syncfs` of `dst`'s filesystem.
//!
//! Strict: an entry `pack` could not read, or anything `unpack` could not set (it warns), fails the mirror, and the
//! counts written must equal the counts read. Idempotent: a second run over a half-made or finished `dst` gives the
//! same `dst` (everything is removed and written again), which is what `voltar recover` relies on.

use std::ffi::CStr;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::fsat::{
    list_xattrs, open_dir_at, open_root, read_sorted, remove_xattr_fd, rmdir_at, unlink_at, Stat,
    XattrAt,
};
use super::unpack::UnpackOptions;
use super::{pack, unpack, ArchiveError, Counts};

/// What [`mirror`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorReport {
    /// Entries found in `dst` and removed first (its own root not counted).
    pub removed: u64,
    /// What was copied (the archive counts of `src`, its root included).
    pub counts: Counts,
}

/// Make `dst` exactly equal to `src` (module docs). `dst` must be an existing directory that is not `src`.
pub fn mirror(src: &Path, dst: &Path) -> Result<MirrorReport, ArchiveError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| ArchiveError::Io { path, cause }
    };
    let src_fd = open_root(src).map_err(io_err(src))?;
    let dst_fd = open_root(dst).map_err(io_err(dst))?;
    let (s, d) = (
        Stat::of_fd(src_fd.as_raw_fd()).map_err(io_err(src))?,
        Stat::of_fd(dst_fd.as_raw_fd()).map_err(io_err(dst))?,
    );
    if (s.dev(), s.ino()) == (d.dev(), d.ino()) {
        return Err(ArchiveError::Unsafe {
            entry: dst.display().to_string(),
            reason: "the source and the destination of a mirror are the same directory".into(),
        });
    }
    drop(src_fd);
    let removed = clear_dir(dst_fd.as_raw_fd()).map_err(io_err(dst))?;
    clear_xattrs(dst_fd.as_raw_fd()).map_err(io_err(dst))?;

    let (reader, writer) = io::pipe().map_err(io_err(dst))?;
    let opts = UnpackOptions {
        durable: true,
        ..UnpackOptions::default()
    };
    let (packed, unpacked) = std::thread::scope(|scope| {
        let packer = scope.spawn(move || {
            let mut writer = writer;
            let r = pack::pack(src, &mut writer, &pack::PackOptions::default(), &mut |_| {});
            let r = r.and_then(|(rep, w)| w.flush().map(|()| rep).map_err(ArchiveError::Sink));
            drop(writer);
            r
        });
        let mut reader = reader;
        let unpacked = unpack::unpack(&mut reader, dst, &opts);
        // Read whatever the packer still writes (after an unpack error), so it never blocks on a full pipe.
        let _ = io::copy(&mut reader, &mut io::sink());
        let packed = packer
            .join()
            .unwrap_or_else(|_| Err(ArchiveError::Corrupt("the packing thread panicked".into())));
        (packed, unpacked)
    });
    // The source's problem first: an unpack error after a failed pack only says the stream broke.
    let packed = packed?;
    let unpacked = unpacked?;
    if !packed.is_complete() {
        return Err(ArchiveError::Io {
            path: src.to_path_buf(),
            cause: io::Error::other(format!(
                "{} entries could not be read, e.g. {}",
                packed.not_archived_count,
                packed
                    .not_archived
                    .first()
                    .map(String::as_str)
                    .unwrap_or("?")
            )),
        });
    }
    if let Some(w) = unpacked.warnings.first() {
        return Err(ArchiveError::Io {
            path: dst.to_path_buf(),
            cause: io::Error::other(format!("not copied exactly: {w}")),
        });
    }
    if packed.counts != unpacked.counts {
        return Err(ArchiveError::Corrupt(format!(
            "read {:?} from {} but wrote {:?}",
            packed.counts,
            src.display(),
            unpacked.counts
        )));
    }
    Ok(MirrorReport {
        removed,
        counts: packed.counts,
    })
}

/// Remove every entry below the open directory `dir` (never `dir` itself), depth first, never following a
/// symlink: a directory is entered with `openat(O_DIRECTORY | O_NOFOLLOW)`, everything else is unlinked as the
/// name it is. Returns how many entries were removed.
fn clear_dir(dir: RawFd) -> io::Result<u64> {
    let mut removed = 0;
    for (name, ty) in read_sorted(dir)? {
        let is_dir = match ty {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => Stat::at(dir, &name)?.is_dir(),
            _ => false,
        };
        if is_dir {
            let sub: OwnedFd = open_dir_at(dir, &name)?;
            removed += clear_dir(sub.as_raw_fd())?;
            drop(sub);
            rmdir_at(dir, &name)?;
        } else {
            unlink_at(dir, std::ffi::OsStr::from_bytes(name.to_bytes()))?;
        }
        removed += 1;
    }
    Ok(removed)
}

/// Remove every extended attribute of the open directory `dir` (the mirror's root: its own are set from the
/// source's `./` entry afterwards).
fn clear_xattrs(dir: RawFd) -> io::Result<()> {
    let mut names = Vec::new();
    match list_xattrs(XattrAt::Fd(dir), &mut names) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    }
    for name in names.split_inclusive(|&b| b == 0).filter(|n| n.len() > 1) {
        let name = CStr::from_bytes_with_nul(name).map_err(io::Error::other)?;
        remove_xattr_fd(dir, name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    use super::mirror;

    /// Everything the mirror promises to keep, per relative path (the root as `.`).
    fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut inodes: BTreeMap<u64, PathBuf> = BTreeMap::new();
        for e in walkdir::WalkDir::new(root)
            .follow_links(false)
            .sort_by_file_name()
        {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap();
            let rel = if rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                rel
            };
            let m = fs::symlink_metadata(e.path()).unwrap();
            let mut xattrs: Vec<String> = xattr::list(e.path())
                .map(|l| {
                    l.map(|n| {
                        let v = xattr::get(e.path(), &n).ok().flatten().unwrap_or_default();
                        format!("{}={v:?}", n.to_string_lossy())
                    })
                    .collect()
                })
                .unwrap_or_default();
            xattrs.sort();
            let ft = m.file_type();
            let content = if ft.is_file() {
                let data = fs::read(e.path()).unwrap();
                format!(
                    "{:x}",
                    data.iter()
                        .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(b as u64))
                )
            } else if ft.is_symlink() {
                fs::read_link(e.path()).unwrap().display().to_string()
            } else {
                String::new()
            };
            // Hard links: the first path of an inode names it for the others.
            let link = if ft.is_file() && m.nlink() > 1 {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.to_path_buf());
                format!(" link-of={}", first.display())
            } else {
                String::new()
            };
            let mtime = if ft.is_symlink() {
                0
            } else {
                m.mtime() * 1_000_000_000 + m.mtime_nsec()
            };
            // Sparse files keep their holes: allocated blocks count (the root's size depends on the fs: not it).
            let blocks = if ft.is_file() { m.blocks() } else { 0 };
            out.insert(
                rel.to_path_buf(),
                format!(
                    "mode={:o} uid={} gid={} size={} blocks={blocks} mtime={mtime} rdev={} xattrs={xattrs:?} {content}{link}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    if ft.is_dir() { 0 } else { m.size() },
                    m.rdev(),
                ),
            );
        }
        out
    }

    fn set_mtime(p: &Path, s: i64, ns: i64) {
        let t = rustix::fs::Timespec {
            tv_sec: s,
            tv_nsec: ns as _,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            p,
            &rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }

    fn varied(root: &Path) {
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::write(root.join("a/b/c/deep"), "deep").unwrap();
        fs::write(root.join("data"), vec![7u8; 100_000]).unwrap();
        fs::hard_link(root.join("data"), root.join("a/hard")).unwrap();
        symlink("../outside", root.join("rel")).unwrap();
        symlink("/etc/passwd", root.join("abs")).unwrap();
        fs::write(root.join("setuid"), "x").unwrap();
        fs::set_permissions(root.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o1750)).unwrap();
        std::os::unix::fs::chown(root.join("a/b/c/deep"), Some(1234), Some(5678)).unwrap();
        let f = fs::File::create(root.join("sparse")).unwrap();
        f.set_len(16 << 20).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, b"mid", 8 << 20).unwrap();
        drop(f);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o640),
            0,
        )
        .unwrap();
        xattr::set(root.join("data"), "user.v", b"1").unwrap();
        xattr::set(root, "user.root", b"r").unwrap();
        set_mtime(&root.join("data"), 1_600_000_000, 123_456_789);
        set_mtime(&root.join("a"), 1_500_000_000, 5);
        fs::set_permissions(root, fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::chown(root, Some(4321), Some(8765)).unwrap();
        set_mtime(root, 1_300_000_000, 7);
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// A varied tree: dst becomes equal to src in everything (owners need root), and a second run changes
    /// nothing (idempotent).
    #[test]
    fn mirror_copies_a_varied_tree_exactly_and_again() {
        if !is_root() {
            eprintln!("skipped: owners can only be set as root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        varied(&src);
        let want = snapshot(&src);
        let rep = mirror(&src, &dst).unwrap();
        assert_eq!(rep.removed, 0);
        assert_eq!(snapshot(&dst), want);
        assert_eq!(snapshot(&src), want, "the source was changed");
        let rep = mirror(&src, &dst).unwrap();
        assert_eq!(
            rep.removed as usize,
            want.len() - 1,
            "the second run replaced every entry"
        );
        assert_eq!(snapshot(&dst), want, "a second run changed the result");
    }

    /// What dst held that src does not (files, a directory tree, a root xattr) is gone; a symlink in dst that
    /// points outside is removed as a link, never followed (what it points to is untouched).
    #[test]
    fn mirror_removes_extra_entries_and_never_follows_a_symlink_in_dst() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst, outside) = (
            t.path().join("src"),
            t.path().join("dst"),
            t.path().join("outside"),
        );
        for d in [&src, &dst, &outside] {
            fs::create_dir(d).unwrap();
        }
        fs::write(src.join("keep"), "new").unwrap();
        fs::create_dir(src.join("dir")).unwrap();
        fs::write(outside.join("precious"), "do not touch").unwrap();
        fs::write(dst.join("keep"), "old").unwrap();
        fs::create_dir_all(dst.join("extra/deeper")).unwrap();
        fs::write(dst.join("extra/deeper/f"), "x").unwrap();
        symlink(&outside, dst.join("dir")).unwrap();
        symlink(&outside, dst.join("link-out")).unwrap();
        xattr::set(&dst, "user.stale", b"s").unwrap();
        mirror(&src, &dst).unwrap();
        assert_eq!(snapshot(&dst), snapshot(&src));
        assert_eq!(
            fs::read_to_string(outside.join("precious")).unwrap(),
            "do not touch"
        );
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            1,
            "something was written outside"
        );
        assert!(fs::symlink_metadata(dst.join("dir")).unwrap().is_dir());
    }

    /// The same directory twice is refused before anything is removed.
    #[test]
    fn mirror_refuses_the_same_directory() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), "x").unwrap();
        let e = mirror(t.path(), t.path()).unwrap_err();
        assert!(e.to_string().contains("same directory"), "{e}");
        assert!(t.path().join("f").exists());
    }
}
