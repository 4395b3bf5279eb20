//! The extractor behind [`super::unpack`]: the destination directory, the walk beneath it one component at a
//! time (`O_NOFOLLOW`, the current path's directory descriptors kept), leaves created `O_EXCL`, metadata last
//! and the warnings. The design and the rules it keeps are in the parent module's docs.

use super::*;
// ---------------------------------------------------------------------------------------------------------------
// The destination

/// Open the destination directory: trusted (the caller chose it), so it may be reached through symlinks.
pub(super) fn open_dest(dest: &Path) -> Result<OwnedFd, ArchiveError> {
    open_root(dest).map_err(|e| ArchiveError::Io {
        path: dest.to_path_buf(),
        cause: e,
    })
}
// ---------------------------------------------------------------------------------------------------------------
// Extraction

pub(super) struct DirMeta {
    pub(super) comps: Vec<OsString>,
    /// Created by this extraction with the owner it should have: no `fchown`.
    pub(super) owner_ok: bool,
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mtime: (i64, u32),
}

/// Aggregated warnings: one line per kind of problem, with a count and an example.
#[derive(Default)]
pub(super) struct Notes {
    pub(super) leading_slash: bool,
    pub(super) owner_not_root: u64,
    pub(super) owner_failed: Option<(u64, String, String)>,
    pub(super) xattr_failed: BTreeMap<String, (u64, String, String)>,
    pub(super) devices_skipped: Option<(u64, String)>,
    pub(super) meta_failed: Option<(u64, String, String)>,
    pub(super) link_outside_filter: Vec<String>,
    pub(super) unknown_types: Vec<String>,
}

fn bump(slot: &mut Option<(u64, String, String)>, example: &str, err: &io::Error) {
    match slot {
        Some((n, _, _)) => *n += 1,
        None => *slot = Some((1, example.to_string(), err.to_string())),
    }
}

impl Notes {
    pub(super) fn into_vec(self) -> Vec<String> {
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
pub(super) struct Level {
    pub(super) name: OsString,
    /// Closed (None) when more than [`MAX_OPEN_DIRS`] levels are below it; reopened on the way back up.
    pub(super) fd: Option<OwnedFd>,
    pub(super) creates: Creates,
}

/// What a file created in a directory gets without further calls, as far as the extractor can tell.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Creates {
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

pub(super) struct Extractor<'o> {
    /// The destination; its `name` is empty.
    pub(super) root: Level,
    /// The directories from the destination down to the current entry's parent, each opened from the one above
    /// with `O_DIRECTORY | O_NOFOLLOW` (see [`Extractor::enter`]).
    pub(super) open: Vec<Level>,
    /// The process's umask, when known: a file created with `mode` gets `mode & !umask`.
    pub(super) umask: Option<u32>,
    pub(super) dest: PathBuf,
    pub(super) opts: &'o UnpackOptions,
    pub(super) sel: Selection,
    pub(super) dirs: Vec<DirMeta>,
    pub(super) notes: Notes,
    pub(super) counts: Counts,
    pub(super) skipped: u64,
    pub(super) buf: Vec<u8>,
    pub(super) euid: libc::uid_t,
    pub(super) egid: libc::gid_t,
}

/// The raw target of hardlink entry `d`.
pub(super) fn hardlink_target(d: &Described) -> Result<&[u8], ArchiveError> {
    d.link
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ArchiveError::Corrupt(format!("hardlink `{}` has no target", d.display)))
}

pub(super) fn unsafe_entry(entry: &str, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Unsafe {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

impl Extractor<'_> {
    pub(super) fn io_err(&self, comps: &[OsString], e: io::Error) -> ArchiveError {
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

    pub(super) fn root_fd(&self) -> RawFd {
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

    pub(super) fn extract<R: Read>(
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
        let mut w = HoleWriter::new(file, self.opts.durable);
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
        w.finish();
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
    pub(super) fn finish_dirs(&mut self) -> Result<(), ArchiveError> {
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
    /// Start writing back every [`WRITEBACK_STEP`] bytes as they are written (see [`start_writeback`]).
    writeback: bool,
    /// Where the writeback not yet asked for starts.
    written_back: u64,
}

/// How much of a large file is written before its writeback is started (see [`start_writeback`]).
const WRITEBACK_STEP: u64 = 8 << 20;

impl<'f> HoleWriter<'f> {
    fn new(file: &'f File, writeback: bool) -> Self {
        HoleWriter {
            file,
            pos: 0,
            end: 0,
            writeback,
            written_back: 0,
        }
    }

    /// Start the writeback of what was written and not yet asked for (the rest of the file).
    fn finish(&mut self) {
        if self.writeback && self.end > self.written_back {
            start_writeback(self.file, self.written_back, 0);
            self.written_back = self.end;
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
        if self.writeback && self.end >= self.written_back + WRITEBACK_STEP {
            start_writeback(self.file, self.written_back, self.end - self.written_back);
            self.written_back = self.end;
        }
        Ok(())
    }
}

/// Start writing `len` bytes of `file` from `offset` (0: to its end) to disk now, without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that the disk works while the rest of the archive is extracted
/// and the final `syncfs` finds little left to write. Only a hint: an error (a filesystem without it) changes
/// nothing, the `syncfs` still makes everything durable.
fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: a plain syscall on a valid, open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_runs_become_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = File::create(&p).unwrap();
        let mut data = vec![0u8; 4 * 1024 * 1024];
        data[0] = 1;
        let n = data.len();
        data[n - 1] = 2;
        let mut w = HoleWriter::new(&f, false);
        w.write(&data).unwrap();
        assert_eq!(w.end, n as u64);
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), data);
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&p).unwrap().blocks();
        assert!(blocks * 512 < 1024 * 1024, "{blocks} blocks allocated");
    }
}
