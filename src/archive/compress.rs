//! Compression layers around the tar stream.
//!
//! Writing: [`zstd_encoder`] is the one encoder voltar produces archives with — multi-threaded zstd (the `zstdmt`
//! feature) with the frame checksum on, so that corruption anywhere in a stored object is caught when it is read
//! back, independent of the manifest's sha256.
//!
//! Reading: [`decoder`] accepts what we write (zstd) and what other tools commonly leave behind (gzip from
//! `tar -czf`, plain tar), sniffed by magic bytes rather than by file name, because restore sources such as
//! `--from-file` or a foreign bucket carry no reliable extension. The input is untrusted, so:
//!
//! * zstd is decoded with `window_log_max` capped at [`MAX_WINDOW_LOG`]: the decoder would otherwise allocate
//!   whatever window the frame header asks for (up to 2 GiB on 64-bit);
//! * errors of the decompressors are rewritten into short, specific messages ("zstd frame checksum mismatch",
//!   "zstd stream is truncated") with kind `InvalidData`/`UnexpectedEof`, so a tar reader on top reports them
//!   as corruption of a named entry instead of a generic I/O failure.
//!
//! Rejected alternative: trusting the file extension. It is wrong for renamed files and lets a crafted `.tar`
//! reach the tar parser compressed, which only produces confusing header errors.

use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;

use super::ArchiveError;

/// Largest zstd window (as log2 bytes) accepted when decoding: 2^27 = 128 MiB.
///
/// Why this value: zstd's default parameter tables never choose a window above 2^27 for levels up to 19 (level 19
/// uses window_log 27 for large inputs; levels 20–22 "ultra" go beyond and also need `--ultra` in the CLI), and
/// voltar writes with default parameters only. A hostile frame may declare a window of up to 2^31 bytes, which the
/// decoder would allocate up front; the cap bounds the decoder's memory for any input to about 128 MiB plus
/// buffers. Frames asking for more are refused with a clear error rather than decoded.
pub const MAX_WINDOW_LOG: u32 = 27;

/// zstd multithreading job size (bytes of input per job); bounds the compressor's memory. See [`zstd_encoder`].
pub const ZSTD_JOB_SIZE: u32 = 2 << 20;

/// zstd multithreading overlap between jobs (log scale: 9 = a full window, 1 = none). See [`zstd_encoder`].
pub const ZSTD_OVERLAP_LOG: u32 = 3;

/// The compression of an archive stream, recognised by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// zstd frame magic `28 b5 2f fd`.
    Zstd,
    /// gzip member magic `1f 8b`.
    Gzip,
    /// Anything else: treated as an uncompressed tar stream (the tar parser then judges it).
    Plain,
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

impl Format {
    /// Recognise the format from the first (up to four) bytes of a stream.
    pub fn sniff(prefix: &[u8]) -> Format {
        if prefix.starts_with(&ZSTD_MAGIC) {
            Format::Zstd
        } else if prefix.starts_with(&GZIP_MAGIC) {
            Format::Gzip
        } else {
            Format::Plain
        }
    }
}

/// A zstd encoder with the frame checksum on, at `level` (1..=22), using `threads` worker threads: 0 = one per core + 1
/// (`std::thread::available_parallelism`), 1 = single-threaded in the caller's thread, n > 1 = n zstd workers
/// (the fast path for large volumes). The caller must call `finish()` to write the frame epilogue (checksum).
pub fn zstd_encoder<W: Write>(
    w: W,
    level: i32,
    threads: u32,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    if !(1..=22).contains(&level) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("zstd level {level} is out of range: use 1..=22"),
        ));
    }
    let mut enc = zstd::stream::write::Encoder::new(w, level)?;
    enc.include_checksum(true)?;
    let workers = match threads {
        // One worker per core plus one: the packer thread spends much of its time in read syscalls, and the
        // extra worker keeps every core compressing meanwhile (measured on 2 cores: 4.1 s → 3.4 s for 824 MiB).
        0 => std::thread::available_parallelism()
            .map(|n| n.get() as u32 + 1)
            .unwrap_or(1),
        n => n,
    };
    // nbWorkers = 0 is zstd's synchronous mode; nbWorkers = 1 would already move compression to one background
    // thread, which costs a thread and gains nothing over the synchronous mode.
    if workers > 1 {
        enc.multithread(workers)?;
        // zstd's default job size at level 3 is 8 MiB, and it keeps several jobs' input and output buffers
        // alive per worker: ~130 MiB peak RSS measured here. 2 MiB jobs: 56 MiB peak on the (incompressible)
        // 0.5-scale dataset, same size and speed as 1 MiB jobs there. 1 MiB jobs (42 MiB) lost too much across job
        // boundaries on compressible data: 646 MB of Rust sources (~/.cargo/registry/src) came out 76.5 MB, 3.5%
        // bigger than `tar | zstd -3 -T0` (73.9 MB); 2 MiB jobs give 71.9 MB, 4 MiB jobs 69.9 MB but 84 MiB RSS.
        enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
        // Each job re-reads an overlap of the previous one to find matches across the boundary; with small jobs
        // the default overlap is a large share of the work. A 1/32-window overlap measured: 7.0 s → 6.0 s on
        // the 1.7 GiB benchmark dataset, same compressed size (1073 MB), now level with `tar | zstd -3 -T0`.
        enc.set_parameter(zstd::stream::raw::CParameter::OverlapSizeLog(
            ZSTD_OVERLAP_LOG,
        ))?;
    }
    Ok(enc)
}

/// A decompressing reader for an untrusted archive stream: sniffs the format from the first bytes (which are not
/// lost: they are replayed in front of the rest), decodes zstd with the window capped at [`MAX_WINDOW_LOG`] and all
/// concatenated gzip members (`MultiGzDecoder`, like `gzip -d`), or passes plain tar through.
///
/// Errors while reading from the returned reader are `io::Error`s with clear messages (see the module docs); the
/// tar layer turns them into [`ArchiveError::Corrupt`] naming the entry. Only a failure to read the first bytes is
/// reported here.
pub fn decoder<'a, R: Read + 'a>(r: R) -> Result<(Format, Box<dyn Read + 'a>), ArchiveError> {
    // The input buffer zstd's own `Decoder::new` would make; gzip's is smaller, and a plain stream bypasses it for
    // the large reads the tar walk makes.
    decoder_buffered(io::BufReader::with_capacity(
        zstd::zstd_safe::DCtx::in_size(),
        r,
    ))
}

/// [`decoder`] over a stream that has its own buffer (the stored object's chunks as they arrive): the decoders
/// read their input straight from it, without copying it into a buffer of their own first.
pub fn decoder_buffered<'a, R: BufRead + 'a>(
    mut r: R,
) -> Result<(Format, Box<dyn Read + 'a>), ArchiveError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    // A pipe may deliver fewer than four bytes per read: loop until four or end of stream.
    while got < prefix.len() {
        match r.read(&mut prefix[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ArchiveError::Io {
                    path: PathBuf::from("(archive stream)"),
                    cause: e,
                })
            }
        }
    }
    let format = Format::sniff(&prefix[..got]);
    let replay = io::Cursor::new(prefix[..got].to_vec()).chain(r);
    let reader: Box<dyn Read + 'a> = match format {
        Format::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(replay)
                .map_err(|e| ArchiveError::Corrupt(format!("cannot start zstd decoder: {e}")))?;
            d.window_log_max(MAX_WINDOW_LOG)
                .map_err(|e| ArchiveError::Corrupt(format!("cannot cap the zstd window: {e}")))?;
            Box::new(ZstdErrors(d))
        }
        Format::Gzip => Box::new(GzipErrors(flate2::bufread::MultiGzDecoder::new(replay))),
        Format::Plain => Box::new(replay),
    };
    Ok((format, reader))
}

/// Rewrites zstd's error names into messages that say what happened to the archive.
struct ZstdErrors<R>(R);

impl<R: Read> Read for ZstdErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(zstd_error)
    }
}

fn zstd_error(e: io::Error) -> io::Error {
    let msg = e.to_string();
    let (kind, text) = if msg.contains("checksum") {
        (
            io::ErrorKind::InvalidData,
            "zstd frame checksum mismatch: the archive is corrupt".to_string(),
        )
    } else if msg.contains("incomplete frame") {
        (
            io::ErrorKind::UnexpectedEof,
            "zstd stream is truncated (incomplete frame): the archive was cut short".to_string(),
        )
    } else if msg.contains("too much memory") || msg.contains("window") {
        (
            io::ErrorKind::InvalidData,
            format!(
                "zstd frame requires a window larger than 2^{MAX_WINDOW_LOG} bytes ({} MiB): refused \
                 (voltar never writes such frames; the archive is hostile or was not made by voltar)",
                (1u64 << MAX_WINDOW_LOG) >> 20
            ),
        )
    } else if e.kind() == io::ErrorKind::Interrupted {
        return e;
    } else {
        (
            io::ErrorKind::InvalidData,
            format!("zstd decoding failed: {msg}"),
        )
    };
    io::Error::new(kind, text)
}

/// Marks gzip failures as such (flate2's own messages are terse: "corrupt deflate stream").
struct GzipErrors<R>(R);

impl<R: Read> Read for GzipErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                e
            } else {
                io::Error::new(e.kind(), format!("gzip decoding failed: {e}"))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(data: &[u8], level: i32, threads: u32) -> Vec<u8> {
        let mut enc = zstd_encoder(Vec::new(), level, threads).unwrap();
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn decode(bytes: &[u8]) -> (Format, io::Result<Vec<u8>>) {
        let (f, mut r) = decoder(bytes).unwrap();
        let mut out = Vec::new();
        let res = r.read_to_end(&mut out).map(|_| out);
        (f, res)
    }

    #[test]
    fn sniffs_formats() {
        assert_eq!(Format::sniff(&ZSTD_MAGIC), Format::Zstd);
        assert_eq!(Format::sniff(&[0x1f, 0x8b, 8, 0]), Format::Gzip);
        assert_eq!(Format::sniff(b"ustar"), Format::Plain);
        assert_eq!(Format::sniff(&[0x28, 0xb5]), Format::Plain);
        assert_eq!(Format::sniff(&[]), Format::Plain);
    }

    #[test]
    fn zstd_round_trip_single_and_multithreaded_with_checksum() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        for threads in [0, 1, 2] {
            let z = compress(&data, 3, threads);
            // Frame header descriptor: bit 2 = Content_Checksum_flag.
            assert_eq!(z[..4], ZSTD_MAGIC);
            assert_ne!(z[4] & 0b100, 0, "checksum flag must be set");
            let (f, out) = decode(&z);
            assert_eq!(f, Format::Zstd);
            assert_eq!(out.unwrap(), data);
        }
    }

    #[test]
    fn rejects_out_of_range_level() {
        assert!(zstd_encoder(Vec::new(), 0, 1).is_err());
        assert!(zstd_encoder(Vec::new(), 23, 1).is_err());
    }

    #[test]
    fn checksum_mismatch_is_reported_as_such() {
        let data = vec![7u8; 100_000];
        let mut z = compress(&data, 3, 1);
        let n = z.len();
        z[n - 1] ^= 0xff; // last byte belongs to the 4-byte frame checksum
        let (_, out) = decode(&z);
        let err = out.unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 13) as u8).collect();
        let z = compress(&data, 3, 1);
        for cut in [5, z.len() / 2, z.len() - 1] {
            let (_, out) = decode(&z[..cut]);
            let err = out.unwrap_err();
            assert!(err.to_string().contains("truncated"), "cut {cut}: {err}");
        }
    }

    #[test]
    fn gzip_and_plain_pass_through() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"hello ").unwrap();
        let mut bytes = gz.finish().unwrap();
        // A second member, as `cat a.gz b.gz` would produce.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"world").unwrap();
        bytes.extend(gz.finish().unwrap());
        let (f, out) = decode(&bytes);
        assert_eq!(f, Format::Gzip);
        assert_eq!(out.unwrap(), b"hello world");

        let (f, out) = decode(b"ab");
        assert_eq!(f, Format::Plain);
        assert_eq!(out.unwrap(), b"ab");
    }

    /// A `BufRead` that hands out its input `step` bytes per fill (the stored object's chunks, at their smallest).
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.fill_buf()?.len().min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.consume(n);
            Ok(n)
        }
    }

    impl BufRead for Trickle<'_> {
        fn fill_buf(&mut self) -> io::Result<&[u8]> {
            Ok(&self.data[..self.step.min(self.data.len())])
        }
        fn consume(&mut self, n: usize) {
            self.data = &self.data[n..];
        }
    }

    #[test]
    fn the_buffered_decoder_reads_what_the_plain_one_reads_whatever_the_chunking() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        for (bytes, format) in [
            (compress(&data, 3, 0), Format::Zstd),
            (gz, Format::Gzip),
            (data.clone(), Format::Plain),
        ] {
            for step in [1, 3, 4096, usize::MAX] {
                let (f, mut r) = decoder_buffered(Trickle { data: &bytes, step }).unwrap();
                let mut out = Vec::new();
                r.read_to_end(&mut out).unwrap();
                assert_eq!(f, format, "step {step}");
                assert!(
                    out == data,
                    "{format:?} read {step} bytes at a time differs"
                );
            }
        }
    }

    #[test]
    fn the_buffered_decoder_reports_a_truncated_zstd_stream() {
        let z = compress(&vec![7u8; 1 << 20], 3, 0);
        let (_, mut r) = decoder_buffered(Trickle {
            data: &z[..z.len() - 5],
            step: 4096,
        })
        .unwrap();
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
