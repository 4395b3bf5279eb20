//! The filesystem layer: calls relative to a directory descriptor, one path component per call, never following
//! a symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`). `pack` walks the source with these and `unpack` writes the
//! destination with them, so a symlink in a path is never passed through, whoever planted it and whenever.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub(super) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub(super) fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: valid C string; the fd is owned below.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open the directory `name` in `dir`; fails (ELOOP/ENOTDIR) rather than follow a symlink or open anything else.
pub(super) fn open_dir_at(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: valid fd and C string; the fd is owned below.
    let fd = cvt(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open a regular file for reading without following a symlink, without blocking on a FIFO that replaced it,
/// and without touching its atime where the kernel allows (O_NOATIME needs ownership or CAP_FOWNER).
pub(super) fn open_regular_at(dir: RawFd, name: &CStr) -> io::Result<File> {
    let base = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let open = |flags| {
        // SAFETY: valid fd and C string; the fd is owned below.
        cvt(unsafe { libc::openat(dir, name.as_ptr(), flags) })
            // SAFETY: fresh fd.
            .map(|fd| unsafe { File::from_raw_fd(fd) })
    };
    match open(base | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(base),
        r => r,
    }
}

/// Entries of the open directory `dir` (without `.` and `..`), sorted by name bytes, with the `d_type` from
/// `readdir` (`DT_UNKNOWN` when the filesystem does not give one). Reads through a duplicate of the descriptor,
/// closed before returning.
pub(super) fn read_sorted(dir: RawFd) -> io::Result<Vec<(CString, u8)>> {
    // SAFETY: valid fd; the duplicate is handed to fdopendir, which owns it from then on.
    let dup = cvt(unsafe { libc::fcntl(dir, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `dup` is a fresh descriptor of a directory.
    let dp = unsafe { libc::fdopendir(dup) };
    if dp.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    // The duplicate shares the file offset with `dir`: start at the beginning whatever happened before.
    // SAFETY: dp is a valid DIR*.
    unsafe { libc::rewinddir(dp) };
    let mut v = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; resetting it tells "end of directory" from an error below.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: dp is a valid DIR*; the returned entry is valid until the next readdir/closedir.
        let ent = unsafe { libc::readdir64(dp) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break match e.raw_os_error() {
                Some(0) | None => Ok(()),
                Some(_) => Err(e),
            };
        }
        // SAFETY: d_name is NUL-terminated inside the entry.
        let (name, ty) = unsafe { (CStr::from_ptr((*ent).d_name.as_ptr()), (*ent).d_type) };
        let b = name.to_bytes();
        if b == b"." || b == b".." {
            continue;
        }
        v.push((name.to_owned(), ty));
    };
    // SAFETY: dp is valid and closed exactly once (this also closes `dup`).
    unsafe { libc::closedir(dp) };
    result?;
    v.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(v)
}

/// Read the target of the symlink `name` in `dir` into `buf` (grown until the target fits).
pub(super) fn read_link_at(dir: RawFd, name: &CStr, buf: &mut Vec<u8>) -> io::Result<()> {
    if buf.capacity() < 256 {
        buf.reserve(256);
    }
    loop {
        buf.clear();
        let cap = buf.capacity();
        // SAFETY: valid fd and C string; the buffer has `cap` writable bytes.
        let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), cap) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < cap {
            // SAFETY: readlinkat initialised the first n bytes.
            unsafe { buf.set_len(n) };
            return Ok(());
        }
        // Possibly truncated: try again with more room.
        buf.reserve(cap * 2);
    }
}

/// `struct stat` of an entry, from `fstat` or `fstatat(AT_SYMLINK_NOFOLLOW)`.
#[derive(Clone, Copy)]
pub(super) struct Stat(pub(super) libc::stat);

impl Stat {
    pub(super) fn of_fd(fd: RawFd) -> io::Result<Stat> {
        let mut st = MaybeUninit::<libc::stat>::uninit();
        // SAFETY: valid fd and out pointer.
        cvt(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
        // SAFETY: fstat succeeded and filled it.
        Ok(Stat(unsafe { st.assume_init() }))
    }

    pub(super) fn at(dir: RawFd, name: &CStr) -> io::Result<Stat> {
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
        // SAFETY: fstatat succeeded and filled it.
        Ok(Stat(unsafe { st.assume_init() }))
    }

    pub(super) fn kind(&self) -> libc::mode_t {
        self.0.st_mode & libc::S_IFMT
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

pub(super) fn unlink_at(parent: RawFd, name: &OsStr) -> io::Result<()> {
    let c = cstr(name);
    // SAFETY: valid fd and C string.
    cvt(unsafe { libc::unlinkat(parent, c.as_ptr(), 0) }).map(|_| ())
}

pub(super) fn mkdir_at(parent: RawFd, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
    let c = cstr(name);
    // SAFETY: valid fd and C string.
    cvt(unsafe { libc::mkdirat(parent, c.as_ptr(), mode) }).map(|_| ())
}

pub(super) fn timespec(t: (i64, u32)) -> libc::timespec {
    libc::timespec {
        tv_sec: t.0 as libc::time_t,
        tv_nsec: t.1 as _,
    }
}

/// Set mtime (atime left as is) of `name` in `parent`, not following a symlink.
pub(super) fn set_mtime_at(parent: RawFd, name: &OsStr, t: (i64, u32)) -> io::Result<()> {
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

pub(super) fn set_mtime_fd(fd: RawFd, t: (i64, u32)) -> io::Result<()> {
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

pub(super) fn chown_at(parent: RawFd, name: &OsStr, uid: u64, gid: u64) -> io::Result<()> {
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

pub(super) fn chown_fd(fd: RawFd, uid: u64, gid: u64) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::fchown(fd, uid as libc::uid_t, gid as libc::gid_t) }).map(|_| ())
}

pub(super) fn chmod_fd(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map(|_| ())
}

/// `/proc/self/fd/N/name`: reaches `name` inside the directory fd without resolving the parent path again; used
/// for the few calls that have no *at variant (lsetxattr, chmod of a FIFO without opening it).
pub(super) fn proc_path(parent: RawFd, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{parent}"));
    p.push(name);
    p
}
