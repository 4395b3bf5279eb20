//! File content: regular and sparse files copied with `pread` into the archive, with the checks for files that
//! grow, shrink or change while they are read.

use super::*;

impl<W: Write> Packer<'_, '_, W> {
    pub(super) fn regular(
        &mut self,
        dir: RawFd,
        name: &CStr,
        rel: &[u8],
        f: &File,
        st: &Stat,
    ) -> Result<(), ArchiveError> {
        if self.hardlink(rel, st)? {
            return Ok(());
        }
        let size = st.size();
        // Cheap test first: only a file with fewer allocated bytes than its size can have holes.
        let regions = if st.blocks().saturating_mul(512) < size {
            data_regions(f, size)
        } else {
            None
        };
        self.pax.clear();
        match regions {
            None => {
                self.header_simple(
                    rel,
                    b'0',
                    st,
                    size,
                    b"",
                    (0, 0),
                    XattrSrc::Fd(f.as_raw_fd()),
                    rel,
                )?;
                after_header_hook(dir, name);
                let change = self.copy_range(f, 0, size, true)?;
                self.pad(size)?;
                self.report_change(rel, change, size);
            }
            Some(regions) => self.sparse(dir, name, rel, f, st, &regions)?,
        }
        self.report.counts.add(Counted::File(size));
        self.remember_link(rel, st);
        Ok(())
    }

    pub(super) fn sparse(
        &mut self,
        dir: RawFd,
        name: &CStr,
        rel: &[u8],
        f: &File,
        st: &Stat,
        regions: &[(u64, u64)],
    ) -> Result<(), ArchiveError> {
        let size = st.size();
        // The map, as GNU tar writes it for format 1.0.
        self.map.clear();
        let ends_in_hole = regions.last().is_none_or(|&(o, l)| o + l < size);
        let n = regions.len() + usize::from(ends_in_hole);
        let _ = writeln!(self.map, "{n}");
        for &(o, l) in regions {
            let _ = write!(self.map, "{o}\n{l}\n");
        }
        if ends_in_hole {
            let _ = write!(self.map, "{size}\n0\n");
        }
        let map_len = self.map.len().div_ceil(BLOCK) * BLOCK;
        self.map.resize(map_len, 0);
        let stored = map_len as u64 + regions.iter().map(|r| r.1).sum::<u64>();

        pax_record_num(&mut self.pax, b"GNU.sparse.major", 1);
        pax_record_num(&mut self.pax, b"GNU.sparse.minor", 0);
        pax_record(&mut self.pax, b"GNU.sparse.name", rel);
        pax_record_num(&mut self.pax, b"GNU.sparse.realsize", size);
        let base = basename(rel);
        let mut fake = Vec::with_capacity(100);
        fake.extend_from_slice(b"GNUSparseFile.0/");
        fake.extend_from_slice(&base[..base.len().min(100 - fake.len())]);
        self.header_simple(
            &fake,
            b'0',
            st,
            stored,
            b"",
            (0, 0),
            XattrSrc::Fd(f.as_raw_fd()),
            rel,
        )?;
        after_header_hook(dir, name);

        let map = std::mem::take(&mut self.map);
        let r = self.sink(&map);
        self.map = map;
        r?;
        let mut worst = Change::Same;
        for &(o, l) in regions {
            match self.copy_range(f, o, l, false)? {
                Change::Same => {}
                // A read error outranks a size change: it is what makes the entry incomplete.
                c @ Change::ReadError(..) => worst = c,
                c => {
                    if !matches!(worst, Change::ReadError(..)) {
                        worst = c
                    }
                }
            }
        }
        self.pad(stored)?;
        if matches!(worst, Change::Same) {
            // The regions were taken at one moment; a size change since then is still worth a warning.
            if let Ok(now) = Stat::of_fd(f.as_raw_fd()) {
                if now.size() > size {
                    worst = Change::Grew;
                } else if now.size() < size {
                    worst = Change::Shrank;
                }
            }
        }
        self.report_change(rel, worst, size);
        Ok(())
    }

    pub(super) fn report_change(&mut self, rel: &[u8], change: Change, size: u64) {
        match change {
            Change::Same => {}
            Change::Grew => self.warn(
                rel,
                format_args!("file grew while being read; archived its first {size} bytes"),
            ),
            Change::Shrank => self.warn(
                rel,
                format_args!("file shrank while being read; padded with zeros to {size} bytes"),
            ),
            Change::ReadError(e, at) => self.not_archived(
                rel,
                format_args!(
                    "read error at byte {at} ({e}); the rest of the file is archived as zeros"
                ),
            ),
        }
    }

    /// Copy exactly `len` bytes from `start` into the archive: cut if the file has more, zero-pad if it has less.
    /// With `probe_end`, also find out whether the file continues past `start + len` (it grew).
    pub(super) fn copy_range(
        &mut self,
        f: &File,
        start: u64,
        len: u64,
        probe_end: bool,
    ) -> Result<Change, ArchiveError> {
        let mut done = 0u64;
        let mut probed = false;
        let mut change = Change::Same;
        while done < len {
            self.check_cancel()?;
            let remaining = len - done;
            // On the last read ask for one byte more than needed: if it comes, the file grew. This costs no
            // extra syscall in the common case.
            let want = if probe_end && remaining < self.buf.len() as u64 {
                probed = true;
                remaining as usize + 1
            } else {
                remaining.min(self.buf.len() as u64) as usize
            };
            match read_at(f, &mut self.buf[..want], start + done) {
                Ok(0) => {
                    change = Change::Shrank;
                    break;
                }
                Ok(mut n) => {
                    if n as u64 > remaining {
                        n = remaining as usize;
                        change = Change::Grew;
                    }
                    self.out
                        .write_all(&self.buf[..n])
                        .map_err(ArchiveError::Sink)?;
                    done += n as u64;
                    self.add_progress(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    change = Change::ReadError(e, start + done);
                    break;
                }
            }
        }
        if done < len {
            // Keep the header's promise: fill the rest with zeros.
            self.buf.fill(0);
            while done < len {
                let n = (len - done).min(self.buf.len() as u64) as usize;
                self.out
                    .write_all(&self.buf[..n])
                    .map_err(ArchiveError::Sink)?;
                done += n as u64;
            }
        } else if probe_end && !probed {
            let mut one = [0u8; 1];
            loop {
                match f.read_at(&mut one, start + len) {
                    Ok(1) => change = Change::Grew,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    _ => {}
                }
                break;
            }
        }
        Ok(change)
    }
}

/// `pread` (with a test seam that injects a read error).
#[cfg(not(test))]
#[inline(always)]
pub(super) fn read_at(f: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    f.read_at(buf, at)
}

#[cfg(test)]
pub(super) fn read_at(f: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    if hooks::FAIL_NEXT_READ.with(|c| c.replace(false)) {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    f.read_at(buf, at)
}

/// The data regions of a file with holes, or None when it has no hole (or the filesystem cannot tell).
pub(super) fn data_regions(f: &File, size: u64) -> Option<Vec<(u64, u64)>> {
    let mut regions = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // Only the file offset changes (content is read with pread).
        let data = match rustix::fs::seek(f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break, // only a hole from `pos` to the end
            Err(_) => return None,
        };
        if data >= size {
            break;
        }
        if regions.len() + 1 >= MAX_SPARSE_REGIONS {
            regions.push((data, size - data));
            break;
        }
        let Ok(hole) = rustix::fs::seek(f, SeekFrom::Hole(data)) else {
            return None;
        };
        let hole = hole.min(size);
        regions.push((data, hole - data));
        pos = hole;
    }
    if regions.len() == 1 && regions[0] == (0, size) {
        return None;
    }
    Some(regions)
}
