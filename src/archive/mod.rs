//! Archives: streaming pack (walk → PAX tar), compression layers, safe unpack, and a metadata-aware tree walker.
//! Knows nothing about Docker or storage.

pub mod compress;
mod fsat;
mod names;
pub mod pack;
mod pax;
mod readahead;
pub mod tree;
pub mod unpack;

use std::path::PathBuf;

pub use crate::catalog::Counts;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the source or writing the destination failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing the archive stream failed (the sink: storage, pipe…).
    #[error("writing archive: {0}")]
    Sink(#[source] std::io::Error),
    /// The archive tries to write outside its target or otherwise breaks the safety rules.
    #[error("unsafe archive entry `{entry}`: {reason}")]
    Unsafe { entry: String, reason: String },
    /// The archive stream is damaged (bad header, checksum, truncated, decompression error).
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    #[error("cancelled")]
    Cancelled,
}
