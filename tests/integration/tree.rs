//! A metadata-aware snapshot of a directory tree, and a human-readable diff of two snapshots.
//!
//! Used by the round-trip tests (test support: it lives here, not in the library): restore an archive somewhere,
//! snapshot both, and every difference in type, mode (suid/sgid/sticky included), owner, mtime (nanoseconds, for directories
//! and symlinks too), content, link target, device number, xattrs, hardlink grouping or sparseness is a line in
//! the diff.
//!
//! Design notes:
//! * Symlinks are never followed (`fstatat(AT_SYMLINK_NOFOLLOW)`, `llistxattr`, `O_NOFOLLOW`); every call is
//!   relative to a directory descriptor, so paths longer than `PATH_MAX` are snapshotted too.
//! * Keys are paths relative to the root, as raw bytes (`PathBuf` may hold non-UTF-8); the root itself is `.`.
//! * Hardlink groups are described by the smallest relative path of the inode's links *inside the tree*, and
//!   only when at least two links are inside: a file that also has a link elsewhere compares equal to a
//!   restored copy without it.
//! * Sparseness is compared one way: a file sparse in `a` (less than half its size allocated) must still be
//!   sparse in `b`. A file that was dense may become sparse (some restorers punch holes in zero runs).
//! * Content is compared by sha256, streamed with a fixed buffer, so snapshots of big trees stay small.
//! * Directory sizes and allocated blocks of non-files depend on the filesystem and are not compared.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// File type of a [`Node`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
}

/// Everything about one tree entry that a faithful restore must reproduce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits including suid/sgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Content size for files, target length for symlinks, 0 otherwise.
    pub size: u64,
    /// sha256 of the content (files only).
    pub sha256: Option<[u8; 32]>,
    /// Symlink target as stored (raw bytes).
    pub link_target: Option<Vec<u8>>,
    /// Device number (character and block devices), `st_rdev`.
    pub rdev: u64,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For an inode with several links inside the tree: the smallest relative path among them.
    pub hardlink_group: Option<PathBuf>,
    /// Allocated 512-byte blocks (`st_blocks`), for the sparseness check.
    pub blocks: u64,
}

impl Node {
    /// Less than half of the size is allocated: the file has substantial holes.
    pub fn is_sparse(&self) -> bool {
        self.kind == Kind::File && self.blocks.saturating_mul(512) < self.size / 2
    }
}

/// What [`diff`] may ignore.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiffOptions {
    /// Do not compare the mtime of the root (`.`).
    pub ignore_root_mtime: bool,
    /// Do not compare directory mtimes (root included).
    pub ignore_dir_mtime: bool,
}

/// A tree: relative path (the root is `.`) → node.
pub type Snapshot = BTreeMap<PathBuf, Node>;

fn ctx(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// What [`snapshot_with`] records.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotOptions {
    /// Hash file contents (the default). Off, `sha256` is `None` everywhere: for trees too big to read twice,
    /// checked some other way.
    pub content: bool,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions { content: true }
    }
}

/// Snapshot the tree under `root` (the root included, as `.`), contents hashed. Fails on the first unreadable
/// entry: a tree that changes while it is snapshotted cannot be compared meaningfully.
pub fn snapshot(root: &Path) -> io::Result<Snapshot> {
    snapshot_with(root, &SnapshotOptions::default())
}

/// Directory descriptors [`snapshot_with`] keeps open at most; deeper directories are re-opened by name.
const MAX_OPEN_DIRS: usize = 64;

/// One directory on the current path of the walk.
struct Dir {
    /// None while closed (too deep); re-opened by name from the nearest open ancestor.
    fd: Option<OwnedFd>,
    name: CString,
    rel: PathBuf,
    names: Vec<CString>,
    next: usize,
}

/// [`snapshot`] with options.
///
/// Every call gets one path component, relative to a directory descriptor, and never follows a symlink
/// (`fstatat(AT_SYMLINK_NOFOLLOW)`, `openat(O_NOFOLLOW)`, `readlinkat`, `l*xattr` through
/// `/proc/self/fd/<dir>/<name>`), so trees deeper than `PATH_MAX` are snapshotted like any other; at most
/// `MAX_OPEN_DIRS` (64) directories are open at a time.
pub fn snapshot_with(root: &Path, opts: &SnapshotOptions) -> io::Result<Snapshot> {
    let mut out = Snapshot::new();
    let mut links: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut link_buf = Vec::new();
    let proc_fd = Path::new("/proc/self/fd").is_dir();

    let root_fd = File::open(root).map_err(|e| ctx(root, e))?;
    let md = root_fd.metadata().map_err(|e| ctx(root, e))?;
    if !md.is_dir() {
        return Err(ctx(root, io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    let st = fstat(root_fd.as_raw_fd()).map_err(|e| ctx(root, e))?;
    let mut node = node_from(&st);
    node.xattrs = read_xattrs(root).map_err(|e| ctx(root, e))?;
    out.insert(PathBuf::from("."), node);
    let root_fd = OwnedFd::from(root_fd);
    let names = read_sorted(root_fd.as_raw_fd()).map_err(|e| ctx(root, e))?;
    let mut stack = vec![Dir {
        fd: Some(root_fd),
        name: CString::default(),
        rel: PathBuf::new(),
        names,
        next: 0,
    }];
    let mut first_open = 1usize;

    while let Some(top) = stack.last_mut() {
        if top.next == top.names.len() {
            if stack.pop().is_some_and(|d| d.fd.is_none()) {
                first_open -= 1;
            }
            continue;
        }
        let name = std::mem::take(&mut top.names[top.next]);
        top.next += 1;
        let rel = top.rel.join(OsStr::from_bytes(name.to_bytes()));
        let abs = root.join(&rel);
        if top.fd.is_none() {
            reopen(&mut stack).map_err(|e| ctx(&abs, e))?;
            first_open -= 1;
        }
        let top = stack.last().expect("non-empty");
        let dir = top.fd.as_ref().expect("open").as_raw_fd();

        let st = fstatat(dir, &name).map_err(|e| ctx(&abs, e))?;
        let mut node = node_from(&st);
        let xpath = if proc_fd {
            let mut p = PathBuf::from(format!("/proc/self/fd/{dir}"));
            p.push(OsStr::from_bytes(name.to_bytes()));
            p
        } else {
            abs.clone()
        };
        node.xattrs = read_xattrs(&xpath).map_err(|e| ctx(&abs, e))?;
        let mut child = None;
        match node.kind {
            Kind::File => {
                node.size = st.st_size as u64;
                if opts.content {
                    let f = open_at(dir, &name, libc::O_RDONLY | libc::O_NOFOLLOW)
                        .map_err(|e| ctx(&abs, e))?;
                    node.sha256 =
                        Some(hash_file(File::from(f), &mut buf).map_err(|e| ctx(&abs, e))?);
                }
            }
            Kind::Symlink => {
                read_link_at(dir, &name, &mut link_buf).map_err(|e| ctx(&abs, e))?;
                node.size = link_buf.len() as u64;
                node.link_target = Some(link_buf.clone());
            }
            Kind::Dir => {
                let fd = open_dir_at(dir, &name).map_err(|e| ctx(&abs, e))?;
                let names = read_sorted(fd.as_raw_fd()).map_err(|e| ctx(&abs, e))?;
                if !names.is_empty() {
                    child = Some(Dir {
                        fd: Some(fd),
                        name: name.clone(),
                        rel: rel.clone(),
                        names,
                        next: 0,
                    });
                }
            }
            _ => {}
        }
        if node.kind != Kind::Dir && st.st_nlink > 1 {
            links
                .entry((st.st_dev, st.st_ino))
                .or_default()
                .push(rel.clone());
        }
        out.insert(rel, node);
        if let Some(child) = child {
            if stack.len() - first_open + 1 >= MAX_OPEN_DIRS {
                stack[first_open].fd = None;
                first_open += 1;
            }
            stack.push(child);
        }
    }
    for paths in links.into_values() {
        if paths.len() < 2 {
            continue;
        }
        let first = paths.iter().min().cloned();
        for p in &paths {
            if let Some(n) = out.get_mut(p) {
                n.hardlink_group.clone_from(&first);
            }
        }
    }
    Ok(out)
}

/// Open the last directory of `stack` (closed while deeper ones were walked) by name from the nearest open
/// ancestor, never following a symlink.
fn reopen(stack: &mut [Dir]) -> io::Result<()> {
    let idx = stack.len() - 1;
    let from = (0..idx)
        .rev()
        .find(|&i| stack[i].fd.is_some())
        .expect("the root stays open");
    let mut cur = stack[from].fd.as_ref().expect("open").try_clone()?;
    for d in &stack[from + 1..=idx] {
        cur = open_dir_at(cur.as_raw_fd(), &d.name)?;
    }
    stack[idx].fd = Some(cur);
    Ok(())
}

fn node_from(st: &libc::stat) -> Node {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFIFO => Kind::Fifo,
        libc::S_IFCHR => Kind::Char,
        libc::S_IFBLK => Kind::Block,
        _ => Kind::Socket,
    };
    Node {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
        size: 0,
        sha256: None,
        link_target: None,
        rdev: if matches!(kind, Kind::Char | Kind::Block) {
            st.st_rdev
        } else {
            0
        },
        xattrs: BTreeMap::new(),
        hardlink_group: None,
        blocks: if kind == Kind::File {
            st.st_blocks as u64
        } else {
            0
        },
    }
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid fd and out pointer.
    cvt(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: filled by fstat.
    Ok(unsafe { st.assume_init() })
}

fn fstatat(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid fd, C string and out pointer.
    cvt(unsafe {
        libc::fstatat(
            dir,
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: filled by fstatat.
    Ok(unsafe { st.assume_init() })
}

fn open_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: valid fd and C string; the fd is owned below.
    let fd = cvt(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// The `*at()` calls of the walk, one path component each, never following a symlink (the library's own layer,
// `archive::fsat`, is private to it).

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn open_dir_at(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
    )
}

fn read_link_at(dir: RawFd, name: &CStr, buf: &mut Vec<u8>) -> io::Result<()> {
    // SAFETY: `dir` is held open by the caller for the length of the call.
    let at = unsafe { BorrowedFd::borrow_raw(dir) };
    *buf = rustix::fs::readlinkat(at, name, std::mem::take(buf))?.into_bytes();
    Ok(())
}

/// The names in directory `dir` but `.` and `..`, sorted by bytes.
fn read_sorted(dir: RawFd) -> io::Result<Vec<CString>> {
    // SAFETY: `dir` is held open by the caller for the length of the call.
    let at = unsafe { BorrowedFd::borrow_raw(dir) };
    let mut names = Vec::new();
    for ent in rustix::fs::Dir::read_from(at)? {
        let name = ent?.file_name().to_owned();
        if !matches!(name.to_bytes(), b"." | b"..") {
            names.push(name);
        }
    }
    names.sort_unstable();
    Ok(names)
}

fn hash_file(mut f: File, buf: &mut [u8]) -> io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    loop {
        let n = match f.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

fn read_xattrs(p: &Path) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut m = BTreeMap::new();
    let names = match xattr::list(p) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(m),
        Err(e) => return Err(e),
    };
    for name in names {
        if let Some(v) = xattr::get(p, &name)? {
            m.insert(name.as_bytes().to_vec(), v);
        }
    }
    Ok(m)
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

fn show_bytes(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

/// Every difference between `a` and `b`, one human-readable line each; empty means equal.
pub fn diff(a: &Snapshot, b: &Snapshot, opts: &DiffOptions) -> Vec<String> {
    let mut out = Vec::new();
    for p in a.keys().filter(|p| !b.contains_key(*p)) {
        out.push(format!("{}: missing in second tree", show(p)));
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        out.push(format!("{}: only in second tree", show(p)));
    }
    for (p, x) in a {
        let Some(y) = b.get(p) else { continue };
        let s = show(p);
        if x.kind != y.kind {
            out.push(format!("{s}: type {:?} != {:?}", x.kind, y.kind));
            continue;
        }
        if x.mode != y.mode {
            out.push(format!("{s}: mode {:04o} != {:04o}", x.mode, y.mode));
        }
        if (x.uid, x.gid) != (y.uid, y.gid) {
            out.push(format!(
                "{s}: owner {}:{} != {}:{}",
                x.uid, x.gid, y.uid, y.gid
            ));
        }
        let is_root = p == Path::new(".");
        let skip_mtime =
            (x.kind == Kind::Dir && opts.ignore_dir_mtime) || (is_root && opts.ignore_root_mtime);
        if !skip_mtime && x.mtime_ns != y.mtime_ns {
            out.push(format!("{s}: mtime {} ns != {} ns", x.mtime_ns, y.mtime_ns));
        }
        if x.kind != Kind::Dir && x.size != y.size {
            out.push(format!("{s}: size {} != {}", x.size, y.size));
        }
        if x.sha256 != y.sha256 {
            out.push(format!("{s}: content differs"));
        }
        if x.link_target != y.link_target {
            let t = |v: &Option<Vec<u8>>| v.as_deref().map(show_bytes).unwrap_or_default();
            out.push(format!(
                "{s}: link target {} != {}",
                t(&x.link_target),
                t(&y.link_target)
            ));
        }
        if x.rdev != y.rdev {
            out.push(format!("{s}: device {:#x} != {:#x}", x.rdev, y.rdev));
        }
        if x.xattrs != y.xattrs {
            for (k, v) in &x.xattrs {
                match y.xattrs.get(k) {
                    None => out.push(format!(
                        "{s}: xattr {} missing in second tree",
                        show_bytes(k)
                    )),
                    Some(w) if w != v => {
                        out.push(format!("{s}: xattr {} value differs", show_bytes(k)))
                    }
                    Some(_) => {}
                }
            }
            for k in y.xattrs.keys().filter(|k| !x.xattrs.contains_key(*k)) {
                out.push(format!("{s}: xattr {} only in second tree", show_bytes(k)));
            }
        }
        if x.hardlink_group != y.hardlink_group {
            let g = |v: &Option<PathBuf>| v.as_deref().map(show).unwrap_or_else(|| "none".into());
            out.push(format!(
                "{s}: hardlink group {} != {}",
                g(&x.hardlink_group),
                g(&y.hardlink_group)
            ));
        }
        if x.is_sparse() && !y.is_sparse() {
            out.push(format!(
                "{s}: sparse in first tree ({} of {} bytes allocated), not in second ({} bytes allocated)",
                x.blocks * 512,
                x.size,
                y.blocks * 512
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn opts() -> DiffOptions {
        DiffOptions::default()
    }

    #[test]
    fn equal_copies_have_no_diff_and_changes_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path();
        fs::create_dir(a.join("sub")).unwrap();
        fs::write(a.join("sub/f"), b"hello").unwrap();
        fs::hard_link(a.join("sub/f"), a.join("h")).unwrap();
        symlink("sub/f", a.join("l")).unwrap();
        let s1 = snapshot(a).unwrap();
        assert_eq!(diff(&s1, &s1, &opts()), Vec::<String>::new());
        assert_eq!(
            s1[Path::new("h")].hardlink_group.as_deref(),
            Some(Path::new("h"))
        );
        assert_eq!(
            s1[Path::new("sub/f")].hardlink_group.as_deref(),
            Some(Path::new("h"))
        );

        fs::set_permissions(a.join("sub/f"), fs::Permissions::from_mode(0o4755)).unwrap();
        let s2 = snapshot(a).unwrap();
        let d12 = diff(&s1, &s2, &opts());
        assert!(
            d12.iter().any(|l| l == "sub/f: mode 0644 != 4755"),
            "{d12:?}"
        );

        fs::write(a.join("sub/f"), b"HELLO").unwrap();
        let s3 = snapshot(a).unwrap();
        let d23 = diff(&s2, &s3, &opts());
        assert!(d23.iter().any(|l| l == "sub/f: content differs"), "{d23:?}");
        // Creating an entry changes the directory's mtime (set to the past first: timestamps are coarse).
        filetime::set_file_mtime(
            a.join("sub"),
            filetime::FileTime::from_unix_time(1_000_000, 5),
        )
        .unwrap();
        let s3 = snapshot(a).unwrap();
        fs::write(a.join("sub/new"), b"").unwrap();
        let s4 = snapshot(a).unwrap();
        let d34 = diff(
            &s3,
            &s4,
            &DiffOptions {
                ignore_dir_mtime: true,
                ..opts()
            },
        );
        assert_eq!(d34, vec!["sub/new: only in second tree".to_string()]);
        let d34 = diff(&s3, &s4, &opts());
        assert!(d34.iter().any(|l| l.starts_with("sub: mtime")), "{d34:?}");
    }

    #[test]
    fn deeper_trees_than_the_open_directory_limit_are_snapshotted_whole() {
        let d = tempfile::tempdir().unwrap();
        let depth = 3 * MAX_OPEN_DIRS;
        let mut p = d.path().to_path_buf();
        for i in 0..depth {
            fs::write(p.join("z"), i.to_string()).unwrap();
            p.push("d");
            fs::create_dir(&p).unwrap();
        }
        symlink("z", p.join("link")).unwrap();
        let s = snapshot(d.path()).unwrap();
        // root + depth dirs + depth files + the link
        assert_eq!(s.len(), 1 + 2 * depth + 1);
        let mut rel = PathBuf::new();
        for i in 0..depth {
            let z = &s[&rel.join("z")];
            let want: [u8; 32] = Sha256::digest(i.to_string()).into();
            assert_eq!(z.sha256, Some(want), "{}", rel.display());
            rel.push("d");
        }
        assert_eq!(s[&rel.join("link")].link_target.as_deref(), Some(&b"z"[..]));
    }

    #[test]
    fn lost_sparseness_is_a_difference() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        let f = File::create(a.join("s")).unwrap();
        f.set_len(8 << 20).unwrap();
        fs::write(b.join("s"), vec![0u8; 8 << 20]).unwrap();
        let t = filetime::FileTime::from_unix_time(1_700_000_000, 123);
        filetime::set_file_mtime(a.join("s"), t).unwrap();
        filetime::set_file_mtime(b.join("s"), t).unwrap();
        let sa = snapshot(&a).unwrap();
        let sb = snapshot(&b).unwrap();
        assert!(sa[Path::new("s")].is_sparse());
        let d = diff(
            &sa,
            &sb,
            &DiffOptions {
                ignore_dir_mtime: true,
                ..opts()
            },
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d.iter().any(|l| l.starts_with("s: sparse in first tree")),
            "{d:?}"
        );
        assert!(
            !d.iter().any(|l| l.contains("content")),
            "same content: {d:?}"
        );
    }
}
