//! Reused chunk buffers: a stream of `Bytes` chunks whose buffers go back to a pool when the last reader drops
//! them, so a steady stream allocates (and page-faults) nothing. Used by the backup's chunk sink (`pipeline`)
//! and by the local target's reads; imports nothing from the crate.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Chunk buffers come back here when every writer is done with them, so the steady state allocates nothing:
/// a fresh buffer per chunk cost one page fault per 4 KiB of output (280k faults, ~1 s of system time on
/// the benchmark dataset).
pub type Pool = Arc<Mutex<Vec<Vec<u8>>>>;

/// Buffers kept for reuse: a stream's queue of chunks (4 slots, `pipeline::CHANNEL_CHUNKS`) plus the ones being
/// written and filled.
const POOL_MAX: usize = 8;

/// A chunk's storage: returns its buffer to the pool when the last `Bytes` referring to it is dropped.
struct Pooled {
    data: Vec<u8>,
    pool: Pool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut v = std::mem::take(&mut self.data);
        v.clear();
        if let Ok(mut p) = self.pool.lock() {
            if p.len() < POOL_MAX {
                p.push(v);
            }
        }
    }
}

/// Buffers for a stream of stored chunks ([`pooled`]): a reader takes one with [`pool_take`], fills it and hands
/// it on as `Bytes`; it comes back when the last `Bytes` is dropped.
pub fn read_pool() -> Pool {
    Arc::new(Mutex::new(Vec::new()))
}

/// An empty buffer with room for `len` bytes from `pool` (a recycled one when there is one). It is not zeroed:
/// callers append to it or read into its spare capacity (zeroing every piece first was a `memset` of all the
/// data a verify or a backup moves, 1.5–2.5% of a verify's CPU).
pub fn pool_take(pool: &Pool, len: usize) -> Vec<u8> {
    let mut buf = pool
        .lock()
        .ok()
        .and_then(|mut p| p.pop())
        .unwrap_or_default();
    buf.clear();
    buf.reserve(len);
    buf
}

/// `data` as `Bytes` whose buffer goes back to `pool` when the last clone is dropped.
pub fn pooled(data: Vec<u8>, pool: &Pool) -> Bytes {
    Bytes::from_owner(Pooled {
        data,
        pool: pool.clone(),
    })
}
