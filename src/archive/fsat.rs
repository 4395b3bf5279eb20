//! The filesystem layer: calls relative to a directory descriptor, one path component per call, never following
//! a symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`). `pack` walks the source with these and `unpack` writes the
//! destination with them, so a symlink in a path is never passed through, whoever planted it and whenever.
//!
//! The calls go through `rustix`, which checks their arguments and results; the one `unsafe` here is [`fd`],
//! which borrows a raw descriptor for the length of a call.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::names::filter_components;
use rustix::buffer::spare_capacity;
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};

/// Borrow a raw descriptor for one call.
#[inline]
fn fd<'a>(raw: RawFd) -> BorrowedFd<'a> {
    // SAFETY: every function here is handed a descriptor its caller holds open (an `OwnedFd`, `File` or directory
    // level of the walk) for at least the duration of the call, and the borrow does not outlive the call.
    unsafe { BorrowedFd::borrow_raw(raw) }
}

/// Open a trusted directory by path (it may be reached through symlinks: the caller chose it).
pub(super) fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    Ok(rustix::fs::open(
        c.as_c_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Open the directory `name` in `dir`; fails (ELOOP/ENOTDIR) rather than follow a symlink or open anything else.
pub(super) fn open_dir_at(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        fd(dir),
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Open a regular file for reading without following a symlink, without blocking on a FIFO that replaced it,
/// and without touching its atime where the kernel allows (O_NOATIME needs ownership or CAP_FOWNER).
pub(super) fn open_regular_at(dir: RawFd, name: &CStr) -> io::Result<File> {
    let base = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let open = |flags| rustix::fs::openat(fd(dir), name, flags, Mode::empty()).map(File::from);
    match open(base | OFlags::NOATIME) {
        Err(rustix::io::Errno::PERM) => Ok(open(base)?),
        r => Ok(r?),
    }
}

/// Create the regular file `name` in `dir` for writing: `O_EXCL | O_NOFOLLOW`, so nothing already there (a
/// symlink included) is ever written through.
pub(super) fn create_excl_at(dir: RawFd, name: &CStr, mode: u32) -> io::Result<File> {
    Ok(rustix::fs::openat(
        fd(dir),
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map(File::from)?)
}

/// Create the symlink `name` in `dir` pointing at `target`, stored verbatim (it is content, never followed here).
pub(super) fn symlink_at(target: &CStr, dir: RawFd, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::symlinkat(target, fd(dir), name)?)
}

/// Hardlink `name` in `dir` to `target` in `tdir`; flags 0: if the target is a symlink, link the symlink itself,
/// never what it points to.
pub(super) fn link_at(tdir: RawFd, target: &CStr, dir: RawFd, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::linkat(
        fd(tdir),
        target,
        fd(dir),
        name,
        AtFlags::empty(),
    )?)
}

/// A FIFO (`dev` None) or a character/block device node `name` in `dir`, mode 0600 (set properly later).
pub(super) fn mknod_at(
    dir: RawFd,
    name: &CStr,
    kind: rustix::fs::FileType,
    dev: (u32, u32),
) -> io::Result<()> {
    Ok(rustix::fs::mknodat(
        fd(dir),
        name,
        kind,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(dev.0, dev.1),
    )?)
}

/// Where extended attributes are read: an open file or directory, or a path not followed if it is a symlink
/// (pack's `XattrSrc` turned ready for the calls).
#[derive(Clone, Copy)]
pub(super) enum XattrAt<'a> {
    Fd(RawFd),
    Path(&'a CStr),
}

/// The names of the extended attributes of `at`, NUL-separated, into `buf` (reused).
pub(super) fn list_xattrs(at: XattrAt<'_>, buf: &mut Vec<u8>) -> io::Result<()> {
    fill_growing(buf, 1024, |b| match at {
        XattrAt::Fd(f) => rustix::fs::flistxattr(fd(f), spare_capacity(b)),
        XattrAt::Path(p) => rustix::fs::llistxattr(p, spare_capacity(b)),
    })
}

/// The value of the extended attribute `name` of `at` into `buf` (reused).
pub(super) fn get_xattr(at: XattrAt<'_>, name: &CStr, buf: &mut Vec<u8>) -> io::Result<()> {
    fill_growing(buf, 256, |b| match at {
        XattrAt::Fd(f) => rustix::fs::fgetxattr(fd(f), name, spare_capacity(b)),
        XattrAt::Path(p) => rustix::fs::lgetxattr(p, name, spare_capacity(b)),
    })
}

/// Call a `*xattr`-style function that fills the spare capacity of `buf`, growing the buffer (from at least
/// `min`) while it answers ERANGE. On success `buf` holds exactly the returned bytes.
fn fill_growing(
    buf: &mut Vec<u8>,
    min: usize,
    mut call: impl FnMut(&mut Vec<u8>) -> rustix::io::Result<usize>,
) -> io::Result<()> {
    if buf.capacity() < min {
        buf.reserve(min);
    }
    loop {
        buf.clear();
        match call(buf) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::RANGE) => {
                let cap = buf.capacity();
                buf.reserve(cap * 2);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Entries of the open directory `dir` (without `.` and `..`), sorted by name bytes, with the `d_type` from
/// `readdir` (`DT_UNKNOWN` when the filesystem does not give one). Reads through a descriptor of its own (the
/// directory reopened as `.`), closed before returning, so `dir`'s offset does not matter.
pub(super) fn read_sorted(dir: RawFd) -> io::Result<Vec<(CString, u8)>> {
    use rustix::fs::FileType;
    let mut d = rustix::fs::Dir::read_from(fd(dir))?;
    let mut v = Vec::new();
    while let Some(ent) = d.read() {
        let ent = ent?;
        let name = ent.file_name();
        let b = name.to_bytes();
        if b == b"." || b == b".." {
            continue;
        }
        let ty = match ent.file_type() {
            FileType::RegularFile => libc::DT_REG,
            FileType::Directory => libc::DT_DIR,
            FileType::Symlink => libc::DT_LNK,
            FileType::Fifo => libc::DT_FIFO,
            FileType::Socket => libc::DT_SOCK,
            FileType::CharacterDevice => libc::DT_CHR,
            FileType::BlockDevice => libc::DT_BLK,
            _ => libc::DT_UNKNOWN,
        };
        v.push((name.to_owned(), ty));
    }
    v.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(v)
}

/// Read the target of the symlink `name` in `dir` into `buf` (its allocation is reused).
pub(super) fn read_link_at(dir: RawFd, name: &CStr, buf: &mut Vec<u8>) -> io::Result<()> {
    let reuse = std::mem::take(buf);
    *buf = rustix::fs::readlinkat(fd(dir), name, reuse)?.into_bytes();
    Ok(())
}

/// `struct stat` of an entry, from `fstat` or `fstatat(AT_SYMLINK_NOFOLLOW)`.
#[derive(Clone, Copy)]
pub(super) struct Stat(pub(super) rustix::fs::Stat);

impl Stat {
    pub(super) fn of_fd(f: RawFd) -> io::Result<Stat> {
        Ok(Stat(rustix::fs::fstat(fd(f))?))
    }

    pub(super) fn at(dir: RawFd, name: &CStr) -> io::Result<Stat> {
        Ok(Stat(rustix::fs::statat(
            fd(dir),
            name,
            AtFlags::SYMLINK_NOFOLLOW,
        )?))
    }

    pub(super) fn kind(&self) -> libc::mode_t {
        self.0.st_mode as libc::mode_t & libc::S_IFMT
    }
    pub(super) fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
    pub(super) fn is_file(&self) -> bool {
        self.kind() == libc::S_IFREG
    }
    pub(super) fn nlink(&self) -> u64 {
        self.0.st_nlink
    }
    pub(super) fn dev(&self) -> u64 {
        self.0.st_dev
    }
    pub(super) fn ino(&self) -> u64 {
        self.0.st_ino
    }
    pub(super) fn size(&self) -> u64 {
        self.0.st_size.max(0) as u64
    }
    pub(super) fn blocks(&self) -> u64 {
        self.0.st_blocks.max(0) as u64
    }
    pub(super) fn rdev(&self) -> u64 {
        self.0.st_rdev
    }
}

pub(super) fn is_enoent(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

pub(super) fn cstr(name: &OsStr) -> CString {
    // Components come from `sanitize`, which rejected NUL bytes.
    CString::new(name.as_bytes()).expect("NUL rejected by sanitize")
}

/// File type at `name` in `parent` without following a symlink; None when nothing is there.
pub(super) fn type_at(parent: RawFd, name: &OsStr) -> io::Result<Option<libc::mode_t>> {
    match rustix::fs::statat(fd(parent), name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st.st_mode as libc::mode_t & libc::S_IFMT)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn unlink_at(parent: RawFd, name: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(fd(parent), name, AtFlags::empty())?)
}

/// Remove the empty directory `name` in `parent` (`unlinkat(AT_REMOVEDIR)`; a symlink is never followed).
pub(super) fn rmdir_at(parent: RawFd, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(fd(parent), name, AtFlags::REMOVEDIR)?)
}

/// Remove the extended attribute `name` of the open file or directory `f`.
pub(super) fn remove_xattr_fd(f: RawFd, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::fremovexattr(fd(f), name)?)
}

pub(super) fn mkdir_at(parent: RawFd, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
    Ok(rustix::fs::mkdirat(
        fd(parent),
        name,
        Mode::from_raw_mode(mode),
    )?)
}

/// mtime `t`, atime left as is.
fn mtime_only(t: (i64, u32)) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: t.0,
            tv_nsec: t.1 as _,
        },
    }
}

/// Set mtime (atime left as is) of `name` in `parent`, not following a symlink.
pub(super) fn set_mtime_at(parent: RawFd, name: &OsStr, t: (i64, u32)) -> io::Result<()> {
    Ok(rustix::fs::utimensat(
        fd(parent),
        name,
        &mtime_only(t),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

pub(super) fn set_mtime_fd(f: RawFd, t: (i64, u32)) -> io::Result<()> {
    Ok(rustix::fs::futimens(fd(f), &mtime_only(t))?)
}

pub(super) fn chown_at(parent: RawFd, name: &OsStr, uid: u64, gid: u64) -> io::Result<()> {
    Ok(rustix::fs::chownat(
        fd(parent),
        name,
        Some(rustix::fs::Uid::from_raw_unchecked(uid as u32)),
        Some(rustix::fs::Gid::from_raw_unchecked(gid as u32)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

pub(super) fn chown_fd(f: RawFd, uid: u64, gid: u64) -> io::Result<()> {
    Ok(rustix::fs::fchown(
        fd(f),
        Some(rustix::fs::Uid::from_raw_unchecked(uid as u32)),
        Some(rustix::fs::Gid::from_raw_unchecked(gid as u32)),
    )?)
}

pub(super) fn chmod_fd(f: RawFd, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(fd(f), Mode::from_raw_mode(mode))?)
}

/// `/proc/self/fd/N/name`: reaches `name` inside the directory fd without resolving the parent path again; used
/// for the few calls that have no *at variant (lsetxattr, chmod of a FIFO without opening it).
pub(super) fn proc_path(parent: RawFd, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{parent}"));
    p.push(name);
    p
}

/// Open the directory `rel` (relative, without `..`: `.` and empty components are dropped) below the trusted
/// directory `base`, one component at a time with `O_NOFOLLOW`, as extraction walks: so it works at any depth
/// (no call gets more than one component) and never passes through a symlink. With `create`, missing
/// directories are made (0777 & ~umask, like GNU tar's implicit parents). Restore's `--path` swap uses it.
pub fn open_dir_beneath(base: &Path, rel: &Path, create: bool) -> io::Result<OwnedFd> {
    let mut cur = open_root(base)?;
    for c in filter_components(rel) {
        if c.as_bytes().contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a NUL byte in a name",
            ));
        }
        cur = match open_dir_at(cur.as_raw_fd(), &cstr(&c)) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                match mkdir_at(cur.as_raw_fd(), &c, 0o777) {
                    Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
                    _ => {}
                }
                open_dir_at(cur.as_raw_fd(), &cstr(&c))?
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

/// Set the extended attribute `name` of the open file or directory `f`.
pub(super) fn set_xattr_fd(f: RawFd, name: &[u8], value: &[u8]) -> io::Result<()> {
    let name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an xattr name"))?;
    Ok(rustix::fs::fsetxattr(
        fd(f),
        name.as_c_str(),
        value,
        rustix::fs::XattrFlags::empty(),
    )?)
}

/// Flush the whole filesystem holding `f` to stable storage (`syncfs`): one call for a whole extracted tree instead
/// of an fsync per file.
pub(super) fn syncfs_fd(f: RawFd) -> io::Result<()> {
    Ok(rustix::fs::syncfs(fd(f))?)
}

/// The process's umask, read without changing it (`Umask:` in /proc/self/status, Linux 4.7+; setting and
/// restoring it would race with other threads creating files). None when it cannot be read.
pub(super) fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
}

/// Whether the directory `dir` has a default ACL, which replaces the umask for files created in it (so their
/// mode is not simply `mode & !umask`). Unknown counts as yes.
pub(super) fn has_default_acl(dir: RawFd) -> bool {
    match rustix::fs::fgetxattr(fd(dir), c"system.posix_acl_default", &mut [0u8; 0][..]) {
        Ok(_) => true,
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => false,
        Err(_) => true,
    }
}
