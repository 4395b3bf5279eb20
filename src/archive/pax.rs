//! The tar formats' metadata, both directions: PAX extended records (encode and decode), GNU PAX sparse
//! (0.0/0.1 records, 1.0 map) decoding, the tar numeric fields, and [`PaxTap`], which captures each entry's raw
//! PAX data and enforces [`MAX_META_HEADER`] as the `tar` crate reads the stream. `pack` writes with the encoders
//! here, `unpack` reads every entry through [`describe`].

use std::io::{self, Read, Write};

use super::ArchiveError;

/// Most segments a sparse map may list (16 bytes of memory each, so at most 64 MiB for the map).
pub const MAX_SPARSE_SEGMENTS: usize = 1 << 22;

/// Largest data a metadata header (PAX `x`/`g`, GNU long name `L`/long link `K`) may declare: 1 MiB. What it
/// holds is read into memory whole. Real ones are far smaller: a path is rarely more than a few KiB (PATH_MAX is
/// 4 KiB; `pack` stores deeper paths too, up to [`super::pack::MAX_PATH_LEN`], so that a path and a hardlink
/// target that long still fit) and Linux limits an inode's xattrs to 64 KiB each (ext4: about 4 KiB in all), so
/// even a PAX header carrying a long name, a link target, ACLs and every xattr of a file stays below this.
pub const MAX_META_HEADER: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------------------------
// Reading entries

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
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
pub(super) enum Sparse {
    /// GNU PAX sparse 1.0: the map is at the start of the data.
    V1 { realsize: u64 },
    /// GNU PAX sparse 0.0/0.1: the map came in PAX records; the data is the segments back to back.
    V0 { realsize: u64, map: Vec<(u64, u64)> },
}

/// Everything about one entry that extraction needs, read from its header and PAX records.
#[derive(Debug)]
pub(super) struct Described {
    pub(super) kind: Kind,
    /// Raw member name (`GNU.sparse.name` for PAX sparse files).
    pub(super) path: Vec<u8>,
    /// The name for messages.
    pub(super) display: String,
    pub(super) link: Option<Vec<u8>>,
    /// Bytes of data stored in the archive for this entry.
    pub(super) data_size: u64,
    /// Size of the file it represents (the sparse real size, or `data_size`).
    pub(super) logical_size: u64,
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mtime: (i64, u32),
    pub(super) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) sparse: Option<Sparse>,
    pub(super) dev: (u32, u32),
}

pub(super) fn describe<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    raw_pax: Option<Vec<u8>>,
    max_entry_size: u64,
) -> Result<Described, ArchiveError> {
    let header_path = entry.path_bytes().into_owned();
    let hdisplay = String::from_utf8_lossy(&header_path).into_owned();
    let mut pax = PaxFields::read(entry, raw_pax, &hdisplay)?;

    let path = pax
        .sparse_name
        .take()
        .or(pax.path.take())
        .unwrap_or(header_path);
    let display = String::from_utf8_lossy(&path).into_owned();
    let corrupt = |msg: String| ArchiveError::Corrupt(format!("entry `{display}`: {msg}"));
    let header = entry.header();
    let kind = kind_of(header.entry_type());
    let data_size = entry.size();
    let mode = header
        .mode()
        .map_err(|e| corrupt(format!("bad mode: {e}")))?
        & 0o7777;
    let (uid, gid) = owner(header, &pax).map_err(corrupt)?;
    let mtime = mtime_of(header, &pax).map_err(corrupt)?;
    let dev = if matches!(kind, Kind::Char | Kind::Block) {
        device(header).map_err(corrupt)?
    } else {
        (0, 0)
    };
    let link = pax
        .link
        .take()
        .or_else(|| entry.link_name_bytes().map(|l| l.into_owned()));
    let sparse = if kind == Kind::File {
        pax.sparse(&corrupt)?
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
        xattrs: pax.xattrs,
        sparse,
        dev,
    })
}

fn kind_of(t: tar::EntryType) -> Kind {
    match t {
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
    }
}

/// uid and gid, from the PAX records or else the header. `Err`: what is wrong with them.
fn owner(header: &tar::Header, pax: &PaxFields) -> Result<(u64, u64), String> {
    let uid = match pax.uid {
        Some(u) => u,
        None => header.uid().map_err(|e| format!("bad uid: {e}"))?,
    };
    let gid = match pax.gid {
        Some(g) => g,
        None => header.gid().map_err(|e| format!("bad gid: {e}"))?,
    };
    // Ids are 32-bit on Linux and (uid_t)-1 means "leave unchanged" to chown: larger values would be truncated
    // into some other id, so they are refused rather than guessed.
    if uid >= u64::from(u32::MAX) || gid >= u64::from(u32::MAX) {
        return Err(format!("uid/gid {uid}:{gid} out of range"));
    }
    Ok((uid, gid))
}

/// The mtime (seconds, nanoseconds), from the PAX record or else the header.
fn mtime_of(header: &tar::Header, pax: &PaxFields) -> Result<(i64, u32), String> {
    match &pax.mtime {
        Some(v) => parse_pax_time(v).ok_or_else(|| "bad PAX mtime".to_string()),
        None => {
            let t = header.mtime().map_err(|e| format!("bad mtime: {e}"))?;
            Ok((i64::try_from(t).unwrap_or(i64::MAX), 0))
        }
    }
}

/// A device node's major and minor numbers.
fn device(header: &tar::Header) -> Result<(u32, u32), String> {
    let major = header
        .device_major()
        .map_err(|e| format!("bad device major: {e}"))?;
    let minor = header
        .device_minor()
        .map_err(|e| format!("bad device minor: {e}"))?;
    Ok((major.unwrap_or(0), minor.unwrap_or(0)))
}

/// The PAX records of one entry that [`describe`] uses, by key.
#[derive(Default)]
struct PaxFields {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Vec<u8>>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse_name: Option<Vec<u8>>,
    major: Option<Vec<u8>>,
    minor: Option<Vec<u8>>,
    realsize: Option<u64>,
    size0: Option<u64>,
    map01: Option<Vec<u8>>,
    offsets: Vec<u64>,
    numbytes: Vec<u64>,
}

impl PaxFields {
    /// Parse the entry's PAX records (from the raw data `PaxTap` captured, else the tar crate's parser); errors
    /// name the entry by its header name `hdisplay`.
    fn read<R: Read>(
        entry: &mut tar::Entry<'_, R>,
        raw_pax: Option<Vec<u8>>,
        hdisplay: &str,
    ) -> Result<PaxFields, ArchiveError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            ArchiveError::Corrupt(format!("entry `{hdisplay}`: bad {what}: {e}"))
        };
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
        // The PAX records, parsed from the raw header data captured by `PaxTap` (the tar crate's own parser
        // splits on newlines and so rejects binary xattr values, ACLs for instance, that contain a 0x0a byte).
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
        let mut f = PaxFields::default();
        for (k, v) in &records {
            let (k, v) = (k.as_slice(), v.as_slice());
            match k {
                b"path" => f.path = Some(v.to_vec()),
                b"linkpath" => f.link = Some(v.to_vec()),
                b"uid" => f.uid = Some(num(v, "uid")?),
                b"gid" => f.gid = Some(num(v, "gid")?),
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
                b"mtime" => f.mtime = Some(v.to_vec()),
                b"GNU.sparse.name" => f.sparse_name = Some(v.to_vec()),
                b"GNU.sparse.major" => f.major = Some(v.to_vec()),
                b"GNU.sparse.minor" => f.minor = Some(v.to_vec()),
                b"GNU.sparse.realsize" => f.realsize = Some(num(v, "GNU.sparse.realsize")?),
                b"GNU.sparse.size" => f.size0 = Some(num(v, "GNU.sparse.size")?),
                b"GNU.sparse.map" => f.map01 = Some(v.to_vec()),
                b"GNU.sparse.offset" => f.offsets.push(num(v, "GNU.sparse.offset")?),
                b"GNU.sparse.numbytes" => f.numbytes.push(num(v, "GNU.sparse.numbytes")?),
                _ => {
                    if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                        f.xattrs.push((name.to_vec(), v.to_vec()));
                    }
                }
            }
        }
        Ok(f)
    }

    /// The GNU PAX sparse format of a regular file, if its records declare one.
    fn sparse(
        &mut self,
        corrupt: &dyn Fn(String) -> ArchiveError,
    ) -> Result<Option<Sparse>, ArchiveError> {
        let (major, minor) = (self.major.as_deref(), self.minor.as_deref());
        if major == Some(b"1") && minor == Some(b"0") {
            let realsize = self
                .realsize
                .ok_or_else(|| corrupt("PAX sparse 1.0 without GNU.sparse.realsize".into()))?;
            return Ok(Some(Sparse::V1 { realsize }));
        }
        if major.is_some() {
            return Err(corrupt(format!(
                "unsupported GNU sparse format {}.{}",
                String::from_utf8_lossy(major.unwrap_or_default()),
                String::from_utf8_lossy(minor.unwrap_or_default())
            )));
        }
        if self.map01.is_none() && self.offsets.is_empty() {
            return Ok(None);
        }
        let realsize = self
            .size0
            .or(self.realsize)
            .ok_or_else(|| corrupt("PAX sparse 0.x without GNU.sparse.size".into()))?;
        let map = match self.map01.take() {
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
                if self.offsets.len() != self.numbytes.len() {
                    return Err(corrupt("GNU.sparse.offset/numbytes do not pair up".into()));
                }
                std::mem::take(&mut self.offsets)
                    .into_iter()
                    .zip(std::mem::take(&mut self.numbytes))
                    .collect()
            }
        };
        Ok(Some(Sparse::V0 { realsize, map }))
    }
}

/// Parse a PAX time value `[-]secs[.fraction]` into (seconds, nanoseconds), nanoseconds always positive.
pub(super) fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
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

/// One PAX record: key, value (raw bytes).
pub(super) type PaxRecord = (Vec<u8>, Vec<u8>);

/// Parse PAX extended header data by its length fields (`<len> <key>=<value>\n`, `len` counting the whole
/// record), so values may hold any byte, newlines included, as POSIX allows and GNU tar writes.
pub(super) fn parse_pax(data: &[u8]) -> Result<Vec<PaxRecord>, String> {
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
pub(super) struct PaxTap<R> {
    inner: R,
    /// PAX data of the entry whose header was read last (`None` if it had none).
    pub(super) current: std::rc::Rc<std::cell::Cell<Option<Vec<u8>>>>,
    /// Set once, when a metadata header over [`MAX_META_HEADER`] was seen.
    pub(super) refused: std::rc::Rc<std::cell::Cell<Option<ArchiveError>>>,
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
pub(super) enum TapState {
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
    pub(super) fn new(inner: R) -> Self {
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
pub(super) fn crate_pax_size(data: &[u8]) -> Option<u64> {
    for r in tar::PaxExtensions::new(data) {
        let r = r.ok()?;
        if r.key() == Ok("size") {
            return r.value().ok()?.parse().ok();
        }
    }
    None
}

/// A tar numeric field: octal (space/NUL padded) or GNU base-256.
pub(super) fn tar_number(f: &[u8]) -> Option<u64> {
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

/// Read a GNU PAX sparse 1.0 map from the start of the entry data: decimal numbers, one per line — the segment
/// count, then offset and size of each segment — padded with NULs to a 512-byte boundary. Returns the map and the
/// number of data bytes it used.
pub(super) fn read_sparse_map<R: Read>(
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
pub(super) fn check_map(
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

// ---------------------------------------------------------------------------------------------------------------
// Writing headers and PAX records (`pack`)

/// A tar header block.
const BLOCK: usize = 512;

/// Largest value of an octal ustar field of `len` bytes (len-1 digits and a NUL).
pub(super) const fn octal_max(len: usize) -> u64 {
    (1u64 << (3 * (len as u32 - 1))) - 1
}

/// Octal, zero-padded, NUL-terminated; the caller guarantees the value fits.
pub(super) fn put_octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let mut v = v;
    for i in (0..digits).rev() {
        field[i] = b'0' + (v & 7) as u8;
        v >>= 3;
    }
    field[digits] = 0;
}

/// Octal if it fits (returns true), else GNU base-256 (returns false: the caller adds a PAX record).
pub(super) fn put_num(field: &mut [u8], v: u64) -> bool {
    if v <= octal_max(field.len()) {
        put_octal(field, v);
        true
    } else {
        // Big-endian in the low bytes, high bit of the first byte set (values here are < 2^63).
        field.fill(0);
        let n = field.len();
        field[n - 8..].copy_from_slice(&v.to_be_bytes());
        field[0] |= 0x80;
        false
    }
}

pub(super) fn checksum(h: &mut [u8; BLOCK]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put_octal(&mut h[148..155], u64::from(sum));
    h[155] = b' ';
}

/// One PAX record: `<len> <key>=<value>\n`, where len counts the whole record including its own digits.
pub(super) fn pax_record(buf: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = base + 1;
    loop {
        let next = base + decimal_digits(len);
        if next == len {
            break;
        }
        len = next;
    }
    let _ = write!(buf, "{len} ");
    buf.extend_from_slice(key);
    buf.push(b'=');
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

pub(super) fn pax_record_num(buf: &mut Vec<u8>, key: &[u8], v: u64) {
    let mut tmp = [0u8; 20];
    let mut w = &mut tmp[..];
    let _ = write!(w, "{v}");
    let n = 20 - w.len();
    pax_record(buf, key, &tmp[..n]);
}

pub(super) fn decimal_digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn pax_record_length_counts_its_own_digits() {
        for vlen in [
            0usize, 1, 3, 4, 5, 90, 93, 94, 95, 96, 990, 995, 996, 997, 1000,
        ] {
            let mut b = Vec::new();
            pax_record(&mut b, b"path", &vec![b'a'; vlen]);
            let sp = b.iter().position(|&c| c == b' ').unwrap();
            let len: usize = std::str::from_utf8(&b[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, b.len(), "value length {vlen}");
        }
    }

    #[test]
    fn numbers_that_do_not_fit_use_base256() {
        let mut f = [0u8; 8];
        assert!(put_num(&mut f, 2_097_151));
        assert_eq!(&f, b"7777777\0");
        assert!(!put_num(&mut f, 2_097_152));
        assert_eq!(f[0], 0x80);
        assert_eq!(u64::from_be_bytes(f) & !(0x80 << 56), 2_097_152);
    }
}
