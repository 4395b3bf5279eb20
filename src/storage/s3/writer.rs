//! The multipart writer behind `put_stream`: parts cut from the stream, a bounded window in flight.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::types::CompletedPart;
use bytes::{Buf, Bytes, BytesMut};
use tokio::task::JoinSet;

use super::super::{ObjectMeta, ObjectWriter, StorageError};

use super::client::Inner;
use super::part_size_for;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum WriterState {
    Open,
    /// An error happened and cleanup ran (or was attempted): nothing more to do.
    Failed,
    /// Completed or aborted.
    Done,
}

/// A streamed upload; see the module docs.
pub(super) struct S3Writer {
    pub(super) s3: Arc<Inner>,
    pub(super) key: String,
    pub(super) full: String,
    pub(super) size_hint: Option<u64>,
    /// The part being filled; allocated with the part's size so filling it never reallocates.
    pub(super) buf: BytesMut,
    /// Size of the part being filled.
    pub(super) part_size: u64,
    /// Number of the part being filled.
    pub(super) next_part: u32,
    pub(super) upload_id: Option<String>,
    pub(super) in_flight: JoinSet<Result<CompletedPart, StorageError>>,
    pub(super) parts: Vec<CompletedPart>,
    pub(super) size: u64,
    pub(super) state: WriterState,
}

impl S3Writer {
    fn poisoned(&self) -> StorageError {
        self.s3.err(format!(
            "upload of {} cannot continue after an earlier error",
            self.key
        ))
    }

    /// Abort the upload after `err`, then return `err` (the cleanup's own failure is logged, not returned: the
    /// first error is the one the caller needs).
    async fn fail(&mut self, err: StorageError) -> StorageError {
        self.state = WriterState::Failed;
        // Stop the parts still in flight before aborting, so none lands after the abort.
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Some(id) = self.upload_id.take() {
            if let Err(e) = self.s3.abort_upload(&self.key, &self.full, &id).await {
                tracing::warn!(key = %self.key, error = %e, "cleanup after a failed upload");
            }
        }
        err
    }

    fn collect(
        &mut self,
        joined: Result<Result<CompletedPart, StorageError>, tokio::task::JoinError>,
    ) -> Result<(), StorageError> {
        match joined {
            Ok(Ok(p)) => {
                self.parts.push(p);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(self
                .s3
                .err(format!("upload task of {} failed: {e}", self.key))),
        }
    }

    /// Send one full part: start the multipart upload first if needed, wait for a free slot (backpressure).
    async fn ship(&mut self, part: Bytes) -> Result<(), StorageError> {
        if self.next_part > self.s3.max_parts {
            let fix = if self.s3.equal_parts {
                format!(
                    "parts are all one size here (equal-parts): raise part-size (now {} bytes)",
                    self.part_size
                )
            } else {
                "pass a size hint or raise max-parts".to_string()
            };
            return Err(self.s3.err(format!(
                "{} is larger than {} parts can hold ({} bytes so far); {fix}",
                self.key, self.s3.max_parts, self.size
            )));
        }
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self.s3.create_upload(&self.key, &self.full).await?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        // Surface finished parts (and their errors) early, then wait while the window is full.
        while let Some(j) = self.in_flight.try_join_next() {
            self.collect(j)?;
        }
        while self.in_flight.len() >= self.s3.parallel_parts {
            if let Some(j) = self.in_flight.join_next().await {
                self.collect(j)?;
            }
        }
        let n = self.next_part;
        self.in_flight.spawn(self.s3.clone().upload_part(
            self.key.clone(),
            self.full.clone(),
            upload_id,
            n,
            part,
        ));
        self.next_part += 1;
        self.part_size = part_size_for(
            self.next_part,
            self.s3.part_size,
            self.size_hint,
            self.s3.max_parts,
            self.s3.equal_parts,
        );
        Ok(())
    }

    async fn write_inner(&mut self, mut chunk: Bytes) -> Result<(), StorageError> {
        while !chunk.is_empty() {
            let part = self.part_size as usize;
            if self.buf.is_empty() && chunk.len() >= part {
                // A whole part inside the caller's chunk: send a slice of it, no copy.
                let p = chunk.split_to(part);
                self.size += p.len() as u64;
                self.ship(p).await?;
                continue;
            }
            if self.buf.capacity() == 0 {
                self.buf.reserve(part);
            }
            let n = (part - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk[..n]);
            chunk.advance(n);
            self.size += n as u64;
            if self.buf.len() == part {
                let full = std::mem::take(&mut self.buf).freeze();
                self.ship(full).await?;
            }
        }
        Ok(())
    }

    async fn finish_inner(&mut self) -> Result<(), StorageError> {
        let Some(_) = &self.upload_id else {
            // Smaller than one part: a single PutObject, atomic by itself.
            let data = std::mem::take(&mut self.buf).freeze();
            return self.s3.put_object(&self.key, &self.full, data).await;
        };
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf).freeze();
            self.ship(last).await?;
        }
        while let Some(j) = self.in_flight.join_next().await {
            self.collect(j)?;
        }
        let mut parts = std::mem::take(&mut self.parts);
        parts.sort_by_key(|p| p.part_number());
        let id = self.upload_id.clone().expect("checked above");
        self.s3
            .complete(&self.key, &self.full, &id, parts, self.size)
            .await?;
        self.upload_id = None;
        Ok(())
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        if self.state != WriterState::Open {
            return Err(self.poisoned());
        }
        match self.write_inner(chunk).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Stop the parts in flight now, but leave the (possibly slow) abort of the upload to `abort()`
                // or `Drop`: the caller runs it in the background so a struggling server does not stall the
                // packer — and with it the containers paused for this source.
                self.state = WriterState::Failed;
                self.in_flight.abort_all();
                Err(e)
            }
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectMeta, StorageError> {
        if self.state != WriterState::Open {
            return Err(self.poisoned());
        }
        match self.finish_inner().await {
            Ok(()) => {
                self.state = WriterState::Done;
                Ok(ObjectMeta {
                    key: self.key.clone(),
                    size: self.size,
                    modified: Some(SystemTime::now()),
                })
            }
            Err(e) => Err(self.fail(e).await),
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<(), StorageError> {
        self.state = WriterState::Done;
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        match self.upload_id.take() {
            Some(id) => self.s3.abort_upload(&self.key, &self.full, &id).await,
            None => Ok(()),
        }
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // Open (never finished) or Failed in `write` (abort left to us): an upload id still held means the
        // multipart upload exists and must go.
        if self.state == WriterState::Done {
            return;
        }
        // Dropping the JoinSet cancels the parts in flight. `Drop` cannot await: the abort runs as a task.
        let Some(id) = self.upload_id.take() else {
            return;
        };
        let (s3, key, full) = (self.s3.clone(), self.key.clone(), self.full.clone());
        self.in_flight.abort_all();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                tracing::debug!(key = %key, "writer dropped unfinished; aborting its multipart upload");
                h.spawn(async move {
                    if let Err(e) = s3.abort_upload(&key, &full, &id).await {
                        tracing::warn!(key = %key, error = %e, "abort of a dropped upload");
                    }
                });
            }
            Err(_) => tracing::warn!(
                key = %key,
                "writer dropped outside a runtime; its multipart upload stays until swept"
            ),
        }
    }
}
