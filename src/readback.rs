//! The one verified read of a stored object, used by `restore` (unpack), `verify` (scan), the `restore --dry-run`
//! listing (list) and `restore --archive` (unpack, without the storage part); a dump (not a tar) is read the same
//! way up to the decompression and then copied whole into a sink ([`read_raw`]):
//!
//! get → sha256 and size of the stored bytes (on a thread of its own: `pipeline::hash_aside`) → [age decryption] → decompression (format sniffed) → tar walk
//! ([`Entries`]: scan, unpack or list) → the stream read to its end, so that the zstd frame checksum and age's
//! last chunk are checked.
//!
//! [`read`] returns what was found ([`ReadBack`]: the walk's result and the digest) and leaves the judgement
//! against the manifest to the caller: restore stops at the first mismatch, verify reports every one.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::archive::unpack::{UnpackOptions, UnpackReport};
use crate::archive::{self, ArchiveError, Counts};
use crate::catalog::{self, Manifest, SourceRecord};
use crate::crypto::Decryptor;
use crate::pipeline;
use crate::progress::Progress;
use crate::storage::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{object}: stored object does not match the manifest: sha256 {found} (expected {expected}), {found_size} bytes (expected {expected_size}); the archive is corrupt or was replaced")]
    Checksum {
        object: String,
        expected: String,
        found: String,
        expected_size: u64,
        found_size: u64,
    },
    #[error("{object}: archive content does not match the manifest: {detail}; the archive is truncated or corrupt")]
    Counts { object: String, detail: String },
    #[error("{object}: {source}")]
    Archive {
        object: String,
        source: archive::ArchiveError,
    },
    #[error("{object}: {source}")]
    Crypto {
        object: String,
        source: crate::crypto::CryptoError,
    },
    #[error("{object}: reading: {message}")]
    Read { object: String, message: String },
}

/// What to do with the entries of an archive.
#[derive(Clone, Debug)]
pub enum Entries {
    /// Count them and read all data (verify).
    Scan,
    /// Extract them into the existing directory `dest` (restore, import).
    Unpack { dest: PathBuf, opts: UnpackOptions },
    /// Collect the relative names unpacking with these options would write, by unpack's rules (the dry run's
    /// "would be removed").
    List(UnpackOptions),
}

/// The result of walking the entries, by [`Entries`].
#[derive(Clone, Debug)]
pub enum Walked {
    Scanned(Counts),
    Unpacked(UnpackReport),
    Listed(BTreeMap<PathBuf, Option<archive::unpack::ListedEntry>>),
}

impl Walked {
    /// The archive's counts (none for a listing).
    pub fn counts(&self) -> Option<&Counts> {
        match self {
            Walked::Scanned(c) => Some(c),
            Walked::Unpacked(r) => Some(&r.counts),
            Walked::Listed(_) => None,
        }
    }
}

/// Why a walk failed.
#[derive(Debug)]
pub enum WalkError {
    /// The stream could not be opened: decryption header, compression format ([`tar_stream`]).
    Open(RestoreError),
    /// An entry, a header or the data could not be read (or, unpacking, written).
    Entries(ArchiveError),
    /// The stream after the end of the archive did not read cleanly (zstd checksum, age's last chunk).
    Trailer(std::io::Error),
}

/// What one read of a stored object found.
#[derive(Debug)]
pub struct ReadBack {
    /// The object's key in the target (`<backup-id>/<source>.tar.zst`).
    pub key: String,
    pub walked: Result<Walked, WalkError>,
    /// sha256 and size of the stored bytes; `None` when the walk failed and the caller did not ask for it then.
    pub digest: Option<Result<(String, u64), std::io::Error>>,
    /// Why the stored object could not be read to its end (the target stopped answering, a download broke off):
    /// then what `walked` and `digest` found says nothing about the archive itself.
    pub unread: Option<String>,
}

/// Read `src`'s stored object of backup `manifest` (decrypting when the backup is encrypted) and do `entries`
/// with it. With `digest_on_error`, the rest of the object is still read and hashed after a failed walk (verify
/// reports every problem); otherwise a failed walk ends the read at once. Dropping the returned future stops the
/// read (the walk and the digest of the rest) at its next chunk. `Err`: the object could not be got.
pub async fn read(
    store: Arc<dyn Storage>,
    manifest: &Manifest,
    src: &SourceRecord,
    decryptor: Arc<Decryptor>,
    entries: Entries,
    digest_on_error: bool,
    progress: Progress,
) -> Result<ReadBack, StorageError> {
    let (key, walked, digest, unread) = read_with(
        store,
        manifest,
        src,
        decryptor,
        digest_on_error,
        progress,
        WalkError::Open,
        WalkError::Trailer,
        move |dec| walk(dec, entries),
    )
    .await?;
    Ok(ReadBack {
        key,
        walked,
        digest,
        unread,
    })
}

/// An object's key, what was done with its decoded stream, the stored bytes' sha256 and size, and why the stored
/// stream could not be read to its end (if so).
type ReadOutcome<T, E> = (
    String,
    Result<T, E>,
    Option<io::Result<(String, u64)>>,
    Option<String>,
);

/// The one read both [`read`] and [`read_raw`] make: get `src`'s object, hash the stored bytes on a thread of
/// their own while a blocking thread decrypts and decompresses them (`hash_aside`) and hands the decoded stream
/// to `consume`; then the stored stream's digest (also after a failed `consume` with `digest_on_error`).
/// `open_error` and `thread_error` say in `consume`'s error type that the stream could not be opened, and that a
/// thread failed.
#[allow(clippy::too_many_arguments)]
async fn read_with<T: Send + 'static, E: Send + 'static>(
    store: Arc<dyn Storage>,
    manifest: &Manifest,
    src: &SourceRecord,
    decryptor: Arc<Decryptor>,
    digest_on_error: bool,
    progress: Progress,
    open_error: fn(RestoreError) -> E,
    thread_error: fn(io::Error) -> E,
    consume: impl FnOnce(Box<dyn Read + '_>) -> Result<T, E> + Send + 'static,
) -> Result<ReadOutcome<T, E>, StorageError> {
    let key = catalog::object_key(&manifest.id, &src.object);
    let stream = store.get(&key).await?;
    let (stream, stored_digest) = match pipeline::hash_aside(stream) {
        Ok(s) => s,
        Err(e) => {
            let failed = Err(open_error(RestoreError::Read {
                object: key.clone(),
                message: format!("cannot start a thread: {e}"),
            }));
            return Ok((key, failed, None, None));
        }
    };
    let reader = pipeline::blocking_reader(stream);
    let encrypted = manifest.encryption.is_some();
    let object = key.clone();
    // Set when this future is dropped (a command stopped by a signal): the blocking read below then stops too.
    let stop = pipeline::StopFlag::new();
    let unread = Arc::new(OnceLock::new());
    let noting = Noting {
        inner: reader,
        failed: unread.clone(),
    };
    let joined = tokio::task::spawn_blocking(move || {
        let mut stored = ProgressReader::new(noting, progress).stopped_by(stop.flag());
        let done = tar_stream(&mut stored, encrypted.then_some(&*decryptor), &object)
            .map_err(open_error)
            .and_then(consume);
        let digest = (done.is_ok() || digest_on_error).then(|| stored_digest.finish(stored));
        (done, digest)
    })
    .await;
    let (done, digest) = match joined {
        Ok(r) => r,
        Err(e) => (
            Err(thread_error(io::Error::other(format!(
                "internal error: {e}"
            )))),
            None,
        ),
    };
    Ok((key, done, digest, unread.get().cloned()))
}

/// What a read that did not get to the end of the stored object says: `why` is the target's error.
pub fn not_read(why: &str) -> String {
    format!("not read to its end, so the archive was not judged: {why}")
}

/// The stored stream as it comes from the target, keeping the first error it gave: a consumer (a decoder, a tar
/// walk) reports it as its own ("zstd decoding failed: …"), and the digest of what was read differs from the
/// manifest's, yet the archive was never judged — the target stopped answering.
struct Noting<R> {
    inner: R,
    failed: Arc<OnceLock<String>>,
}

/// Keep `e` in `failed` unless one is kept already (or it is a retry signal).
fn note(failed: &OnceLock<String>, e: &io::Error) {
    if e.kind() != io::ErrorKind::Interrupted {
        let _ = failed.set(e.to_string());
    }
}

impl<R: Read> Read for Noting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| note(&self.failed, e))
    }
}

impl<R: BufRead> BufRead for Noting<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf().inspect_err(|e| note(&self.failed, e))
    }

    fn consume(&mut self, n: usize) {
        self.inner.consume(n)
    }
}

/// Why a raw read (a dump) failed.
#[derive(Debug)]
pub enum RawError {
    /// The stream could not be opened: decryption header, compression format.
    Open(RestoreError),
    /// The stored stream did not read cleanly (decryption, decompression, the zstd checksum): a bad object.
    Read(std::io::Error),
    /// The sink refused the bytes (a restore command that exited, a full disk).
    Write(std::io::Error),
}

/// What one raw read of a stored object found: how many bytes it decoded to (or why not) and the digest.
#[derive(Debug)]
pub struct RawReadBack {
    pub key: String,
    pub copied: Result<u64, RawError>,
    /// sha256 and size of the stored bytes; `None` when the copy failed and the caller did not ask for it then.
    pub digest: Option<Result<(String, u64), std::io::Error>>,
    /// As [`ReadBack::unread`].
    pub unread: Option<String>,
}

/// Read `src`'s stored object (a dump: not a tar) — decrypted and decompressed to its last byte — into `sink`,
/// on a blocking thread, hashing the stored bytes as [`read`] does. `digest_on_error` and dropping as for [`read`].
pub async fn read_raw(
    store: Arc<dyn Storage>,
    manifest: &Manifest,
    src: &SourceRecord,
    decryptor: Arc<Decryptor>,
    mut sink: Box<dyn std::io::Write + Send>,
    digest_on_error: bool,
    progress: Progress,
) -> Result<RawReadBack, StorageError> {
    let (key, copied, digest, unread) = read_with(
        store,
        manifest,
        src,
        decryptor,
        digest_on_error,
        progress,
        RawError::Open,
        RawError::Read,
        move |dec| copy_raw(dec, &mut sink),
    )
    .await?;
    Ok(RawReadBack {
        key,
        copied,
        digest,
        unread,
    })
}

/// Copy a decoded stream into `sink` to its end, telling read errors from write errors; flushes the sink.
fn copy_raw<R: Read>(mut dec: R, sink: &mut dyn std::io::Write) -> Result<u64, RawError> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RawError::Read(e)),
        };
        sink.write_all(&buf[..n]).map_err(RawError::Write)?;
        total += n as u64;
    }
    sink.flush().map_err(RawError::Write)?;
    Ok(total)
}

/// Walk an (already decrypted and decompressed) tar stream, then read the stream to its end.
pub fn walk<R: Read>(mut dec: R, entries: Entries) -> Result<Walked, WalkError> {
    let walked = match entries {
        Entries::Scan => {
            Walked::Scanned(archive::unpack::scan(&mut dec).map_err(WalkError::Entries)?)
        }
        Entries::Unpack { dest, opts } => Walked::Unpacked(
            archive::unpack::unpack(&mut dec, &dest, &opts).map_err(WalkError::Entries)?,
        ),
        Entries::List(opts) => {
            Walked::Listed(archive::unpack::list(&mut dec, &opts).map_err(WalkError::Entries)?)
        }
    };
    std::io::copy(&mut dec, &mut std::io::sink()).map_err(WalkError::Trailer)?;
    Ok(walked)
}

/// The tar stream inside a stored object: age-decrypted when `decryptor` is given (an encrypted backup), then
/// decompressed by its sniffed format (reading a plain object's bytes straight from `stored`'s buffer). Errors
/// name `object`.
pub fn tar_stream<'a, R: BufRead + 'a>(
    stored: R,
    decryptor: Option<&'a Decryptor>,
    object: &str,
) -> Result<Box<dyn Read + 'a>, RestoreError> {
    let decoded = match decryptor {
        Some(d) => {
            let plain = d.reader(stored, object).map_err(|e| RestoreError::Crypto {
                object: object.to_string(),
                source: e,
            })?;
            archive::compress::decoder(plain)
        }
        None => archive::compress::decoder_buffered(stored),
    };
    let (_format, dec) = decoded.map_err(|e| RestoreError::Archive {
        object: object.to_string(),
        source: e,
    })?;
    Ok(dec)
}

/// Human description of how two counts differ.
pub fn count_diff(expected: &Counts, found: &Counts) -> String {
    let mut d = Vec::new();
    let pairs = [
        ("entries", expected.entries, found.entries),
        ("files", expected.files, found.files),
        ("dirs", expected.dirs, found.dirs),
        ("symlinks", expected.symlinks, found.symlinks),
        ("hardlinks", expected.hardlinks, found.hardlinks),
        ("other", expected.other, found.other),
        ("bytes", expected.bytes, found.bytes),
    ];
    for (n, e, f) in pairs {
        if e != f {
            d.push(format!("{n} {f} (expected {e})"));
        }
    }
    d.join(", ")
}

/// Counts bytes read into the progress bar; fails every read once its stop flag is set.
pub struct ProgressReader<R> {
    inner: R,
    progress: Progress,
    stop: Option<Arc<AtomicBool>>,
}

impl<R> ProgressReader<R> {
    pub fn new(inner: R, progress: Progress) -> Self {
        ProgressReader {
            inner,
            progress,
            stop: None,
        }
    }

    /// Reads fail ("interrupted") once `stop` is set: whatever reads this stream stops at its next chunk.
    pub fn stopped_by(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    fn check(&self) -> std::io::Result<()> {
        match &self.stop {
            Some(s) if s.load(Ordering::Relaxed) => Err(io::Error::other("interrupted")),
            _ => Ok(()),
        }
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.check()?;
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for ProgressReader<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.check()?;
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.inner.consume(n);
        self.progress.inc(n as u64);
    }
}
