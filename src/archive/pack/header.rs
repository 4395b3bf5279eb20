//! Tar header encoding: the ustar header and PAX records of one entry, with its extended attributes.

use super::*;

impl<W: Write> Packer<'_, '_, W> {
    /// Write the PAX extended header (records already in `self.pax` plus the ones this entry needs) and the
    /// ustar header. `name` goes in the header (PAX `path` when longer than 100 bytes); `log_name` names the
    /// entry in the report.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn header_simple(
        &mut self,
        name: &[u8],
        kind: u8,
        md: &impl HeaderStat,
        size: u64,
        link: &[u8],
        rdev: (u64, u64),
        xattrs: XattrSrc<'_>,
        log_name: &[u8],
    ) -> Result<(), ArchiveError> {
        let mut h = [0u8; BLOCK];
        self.ustar_fields(&mut h, name, link, md, size);
        let header_mtime = self.mtime_field(&mut h, md);
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        put_num(&mut h[329..337], rdev.0);
        put_num(&mut h[337..345], rdev.1);
        self.xattr_records(xattrs, log_name);
        if !self.pax.is_empty() {
            self.pax_header(name, header_mtime)?;
        }
        checksum(&mut h);
        self.sink(&h)
    }

    /// Name, link name, mode, owner and size into the ustar header `h`; a PAX record for each that does not fit.
    fn ustar_fields(
        &mut self,
        h: &mut [u8; BLOCK],
        name: &[u8],
        link: &[u8],
        md: &impl HeaderStat,
        size: u64,
    ) {
        if name.len() > 100 {
            pax_record(&mut self.pax, b"path", name);
            h[..100].copy_from_slice(&name[..100]);
        } else {
            h[..name.len()].copy_from_slice(name);
        }
        if link.len() > 100 {
            pax_record(&mut self.pax, b"linkpath", link);
            h[157..257].copy_from_slice(&link[..100]);
        } else {
            h[157..157 + link.len()].copy_from_slice(link);
        }
        put_octal(&mut h[100..108], u64::from(md.mode() & 0o7777));
        if !put_num(&mut h[108..116], u64::from(md.uid())) {
            pax_record_num(&mut self.pax, b"uid", u64::from(md.uid()));
        }
        if !put_num(&mut h[116..124], u64::from(md.gid())) {
            pax_record_num(&mut self.pax, b"gid", u64::from(md.gid()));
        }
        if !put_num(&mut h[124..136], size) {
            pax_record_num(&mut self.pax, b"size", size);
        }
    }

    /// The mtime into the ustar header `h` (whole seconds, clamped to the field) and, with nanoseconds or out of
    /// the field's range, as a PAX record. Returns the seconds the PAX header itself carries (0 when clamped).
    fn mtime_field(&mut self, h: &mut [u8; BLOCK], md: &impl HeaderStat) -> u64 {
        let (sec, nsec) = (md.mtime(), md.mtime_nsec());
        let sec_fits = sec >= 0 && (sec as u64) <= octal_max(12);
        put_octal(
            &mut h[136..148],
            if sec_fits {
                sec as u64
            } else if sec < 0 {
                0
            } else {
                octal_max(12)
            },
        );
        if nsec != 0 || !sec_fits {
            let mut v = Vec::with_capacity(32);
            if sec < 0 && nsec > 0 {
                // stat gives floor seconds + positive nanoseconds; PAX wants a signed decimal number.
                let _ = write!(v, "-{}.{:09}", -(sec + 1), 1_000_000_000 - nsec);
            } else {
                let _ = write!(v, "{sec}.{nsec:09}");
            }
            pax_record(&mut self.pax, b"mtime", &v);
        }
        if sec_fits {
            sec as u64
        } else {
            0
        }
    }

    /// The entry's xattrs as PAX records, unless they would make the PAX header bigger than a restore accepts;
    /// what is left out is named as not archived.
    fn xattr_records(&mut self, xattrs: XattrSrc<'_>, log_name: &[u8]) {
        let before_xattrs = self.pax.len();
        if let Err(e) = self.collect_xattrs(xattrs) {
            let e = e.to_string();
            self.not_archived(
                log_name,
                format_args!("extended attributes not archived: {e}"),
            );
        }
        if self.pax.len() as u64 > MAX_META_HEADER {
            // `voltar restore` (rightly) refuses a PAX header this big: keep the entry, without its xattrs.
            let n = self.pax.len() - before_xattrs;
            self.pax.truncate(before_xattrs);
            self.not_archived(
                log_name,
                format_args!(
                    "extended attributes not archived: {n} bytes of them, more than an archive header may hold"
                ),
            );
        }
    }

    /// Write the PAX extended header holding `self.pax` for the entry `name`, then its records.
    fn pax_header(&mut self, name: &[u8], mtime: u64) -> Result<(), ArchiveError> {
        let mut x = [0u8; BLOCK];
        let base = basename(name);
        let mut xn = Vec::with_capacity(100);
        xn.extend_from_slice(b"PaxHeaders/");
        xn.extend_from_slice(&base[..base.len().min(100 - xn.len())]);
        x[..xn.len()].copy_from_slice(&xn);
        put_octal(&mut x[100..108], 0o644);
        put_octal(&mut x[108..116], 0);
        put_octal(&mut x[116..124], 0);
        put_num(&mut x[124..136], self.pax.len() as u64);
        put_octal(&mut x[136..148], mtime);
        x[156] = b'x';
        x[257..263].copy_from_slice(b"ustar\0");
        x[263..265].copy_from_slice(b"00");
        checksum(&mut x);
        self.sink(&x)?;
        let pax = std::mem::take(&mut self.pax);
        let r = self.sink(&pax).and_then(|()| self.pad(pax.len() as u64));
        self.pax = pax;
        r
    }

    /// A path naming `name` in `dir` for the `l*xattr` calls: `/proc/self/fd/<dir>/<name>` (short whatever the
    /// depth), or, without `/proc`, the root joined with the relative path.
    pub(super) fn xattr_path(&self, dir: RawFd, name: &CStr, rel: &[u8]) -> Option<CString> {
        let mut p = Vec::with_capacity(32 + name.to_bytes().len());
        if self.proc_fd {
            let _ = write!(p, "/proc/self/fd/{dir}/");
            p.extend_from_slice(name.to_bytes());
        } else {
            p.extend_from_slice(self.root.as_os_str().as_bytes());
            p.push(b'/');
            p.extend_from_slice(rel);
        }
        CString::new(p).ok()
    }

    /// Append `SCHILY.xattr.*` records for every extended attribute of the source to `self.pax`.
    pub(super) fn collect_xattrs(&mut self, src: XattrSrc<'_>) -> io::Result<()> {
        let path;
        let at = match src {
            XattrSrc::None => return Ok(()),
            XattrSrc::Given(pairs) => {
                for (name, value) in pairs {
                    let key = xattr_key(name);
                    pax_record(&mut self.pax, &key, value);
                }
                return Ok(());
            }
            XattrSrc::Fd(fd) => XattrAt::Fd(fd),
            XattrSrc::At(dir, name, rel) => match self.xattr_path(dir, name, rel) {
                Some(p) => {
                    path = p;
                    XattrAt::Path(&path)
                }
                None => return Ok(()),
            },
        };
        let listed = list_xattrs(at, &mut self.xattr_names);
        match listed {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENOENT)) => {
                return Ok(())
            }
            Err(e) => return Err(e),
        }
        if self.xattr_names.is_empty() {
            return Ok(());
        }
        let names = std::mem::take(&mut self.xattr_names);
        let mut result = Ok(());
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            match self.read_xattr(at, name) {
                Ok(true) => {
                    let key = xattr_key(name);
                    pax_record(&mut self.pax, &key, &self.xattr_value);
                }
                Ok(false) => {} // removed since the listing
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.xattr_names = names;
        result
    }

    /// Read one attribute value into `self.xattr_value`; false when it no longer exists.
    pub(super) fn read_xattr(&mut self, at: XattrAt<'_>, name: &[u8]) -> io::Result<bool> {
        let Ok(cname) = CString::new(name) else {
            return Ok(false);
        };
        let read = get_xattr(at, &cname, &mut self.xattr_value);
        match read {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOENT)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// The PAX key of the extended attribute `name`: `SCHILY.xattr.<name>`, `%` and `=` written as `%25` and `%3D`
/// (as GNU tar does).
fn xattr_key(name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(13 + name.len());
    key.extend_from_slice(b"SCHILY.xattr.");
    for &b in name {
        match b {
            b'%' => key.extend_from_slice(b"%25"),
            b'=' => key.extend_from_slice(b"%3D"),
            b => key.push(b),
        }
    }
    key
}

/// The inode fields a header needs. A trait so that unit tests can write headers for values (sizes over
/// 8 GiB, huge ids) that no cheap test file has.
pub(super) trait HeaderStat {
    fn mode(&self) -> u32;
    fn uid(&self) -> u32;
    fn gid(&self) -> u32;
    fn mtime(&self) -> i64;
    fn mtime_nsec(&self) -> i64;
}

impl HeaderStat for Stat {
    fn mode(&self) -> u32 {
        self.0.st_mode
    }
    fn uid(&self) -> u32 {
        self.0.st_uid
    }
    fn gid(&self) -> u32 {
        self.0.st_gid
    }
    fn mtime(&self) -> i64 {
        self.0.st_mtime
    }
    fn mtime_nsec(&self) -> i64 {
        self.0.st_mtime_nsec as i64
    }
}

/// glibc's `major()`/`minor()`.
pub(super) fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    (major, minor)
}
