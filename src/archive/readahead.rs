//! Decompression on its own thread, overlapping the extraction: [`with_readahead`] reads the (decompressing,
//! decrypting) stream on the calling thread into fixed-size chunks and hands them over a bounded channel
//! to a scoped thread that runs the consumer on a plain [`Read`] of those chunks.
//!
//! Why this shape: extraction spends most of its time in the kernel (creating files, writing data, metadata
//! calls) and decompression is pure CPU, so on two cores running them one after the other wastes one core —
//! `zstd -dc | tar -x` gets the overlap from its pipe. The stream stays on the calling thread because the layers
//! below it (age, zstd, the storage body) are not `Send`; the consumer moves instead. The consumer sees exactly
//! the bytes and the errors the stream produced, in the same order (an error is delivered at the position it
//! happened), so error messages and truncation detection do not change. When the consumer stops early (an
//! error, an unsafe entry, cancellation) it drops its end of the channel and the reader stops at its next chunk.
//!
//! Memory: at most [`CHUNKS`] + 2 chunks of [`CHUNK`] bytes exist at once (the queue, one being filled, one being
//! consumed); they are recycled through a return channel, so nothing is allocated per chunk after the first few.

use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, SyncSender};

/// Size of one hand-over chunk.
pub const CHUNK: usize = 256 * 1024;
/// Chunks queued between the reader and the consumer.
pub const CHUNKS: usize = 4;

/// Run `consume` on a thread of its own, reading what `src` produces (read here, on the calling thread, ahead of
/// the consumer by at most [`CHUNKS`] chunks). `src` is read to its end unless the consumer finishes first.
/// Returns the consumer's result; a panic in the consumer is resumed here.
pub fn with_readahead<R, T, F>(mut src: R, consume: F) -> T
where
    R: Read,
    T: Send,
    F: FnOnce(&mut ChunkReader) -> T + Send,
{
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(CHUNKS);
    let (back_tx, back_rx) = mpsc::sync_channel::<Vec<u8>>(CHUNKS + 2);
    std::thread::scope(|s| {
        let consumer = s.spawn(move || {
            let mut r = ChunkReader {
                rx,
                back: back_tx,
                cur: Vec::new(),
                pos: 0,
                failed: false,
            };
            consume(&mut r)
        });
        loop {
            let mut buf = back_rx.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
            buf.resize(CHUNK, 0);
            let (n, err) = fill(&mut src, &mut buf);
            buf.truncate(n);
            // The bytes before an error first, then the error, at the position it happened.
            if n > 0 && tx.send(Ok(buf)).is_err() {
                break; // the consumer has finished
            }
            match err {
                Some(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
                None if n < CHUNK => break, // end of stream
                None => {}
            }
        }
        drop(tx);
        match consumer.join() {
            Ok(t) => t,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Read until `buf` is full, the stream ends or it fails: the bytes read, and the error if it failed.
fn fill<R: Read>(src: &mut R, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

/// The consumer's side: a [`Read`] over the chunks, in order, then the stream's error or its end.
pub struct ChunkReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    back: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    failed: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.cur.len() {
            if self.failed {
                return Err(io::Error::other("the archive stream failed earlier"));
            }
            let done = std::mem::take(&mut self.cur);
            if done.capacity() > 0 {
                let _ = self.back.try_send(done);
            }
            self.pos = 0;
            match self.rx.recv() {
                Ok(Ok(chunk)) => self.cur = chunk,
                Ok(Err(e)) => {
                    self.failed = true;
                    return Err(e);
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
